//! ns-ctl-images: ns-ctl's image verbs (list-images, image-status, show-image, clone, rename,
//! read-only, remove, clean, set-limit, import-*, export-*, pull-*, pull-oci, import-oci),
//! which ns-ctl executes with its own arguments. A binary of their own, so that ns-ctl, which
//! `shell` copies whole into a sealed memfd at every call, does not carry their crates (HTTP,
//! TLS, archives, compression). Errors are ns-ctl's: one line, exit code 125.
#![forbid(unsafe_code)]

#[path = "../images/mod.rs"]
mod images;
#[path = "../oci/mod.rs"]
mod oci;

use clap::Parser;
use ns_core::exec::args_utf8;
use ns_core::stage::{parse_args, run};

const STAGE: &str = "ns-ctl";

/// ns-ctl's image verbs
#[derive(Parser, Debug)]
#[command(name = "ns-ctl", version)]
struct Args {
    /// Output format of list-images and image-status: text or json
    #[arg(short = 'o', long, default_value = "text", global = true)]
    output: String,
    #[command(subcommand)]
    verb: images::ImageVerb,
}

fn main() {
    run(STAGE, || {
        let args: Args = parse_args(STAGE, &args_utf8()?);
        let json = ns_core::output_is_json(&args.output)?;
        let code = images::run(args.verb, json)?;
        std::process::exit(code)
    })
}
