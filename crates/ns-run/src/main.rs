//! ns-run: systemd-nspawn's command line, composed from the ns-* stages.
//!
//! Parses nspawn's options into one state (plan.rs), then either prints it (`--print-state`),
//! prints the equivalent chain of stages (`--print-chain`), or becomes the monitor and runs
//! the chain ns-enter → ns-mount → ns-caps [→ ns-init] → payload (monitor.rs).
#![forbid(unsafe_code)]

mod host;
mod monitor;

use ns_core::exec::args_utf8;
use ns_core::stage::{parse_matches, run};
use ns_run::{cli, plan, settings};

const STAGE: &str = "ns-run";

fn main() {
    run(STAGE, || {
        let argv = args_utf8()?;
        cli::reject_unknown_options(&argv)?;
        let (cli, matches): (cli::Cli, _) = parse_matches(STAGE, &argv);
        // A .nspawn file adds options (or replaces some): parse the merged line again.
        let merged = settings::merge(&argv, &cli)?;
        let (cli, matches): (cli::Cli, _) = if merged == argv {
            (cli, matches)
        } else {
            ns_core::stage::debug(STAGE, || format!("with settings: {merged:?}"));
            parse_matches(STAGE, &merged)
        };
        let state = plan::build(&cli, &matches)?;
        if cli.print_state {
            println!("{}", state.to_json_pretty());
            std::process::exit(0);
        }
        if cli.print_chain {
            println!("{}", plan::chain(&state));
            std::process::exit(0);
        }
        if let Some(t) = &cli.template {
            // nspawn: a missing -D directory is created from the template (checked by build).
            ns_mount::template::instantiate(std::path::Path::new(t), &state.mount.root)?;
        }
        let code = monitor::run(&state)?;
        std::process::exit(code)
    })
}
