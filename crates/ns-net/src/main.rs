//! ns-net: wire a container's network namespace from the host. See lib.rs for the contract.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;

use ns_core::exec::args_utf8;
use ns_core::stage::{parse_args, run};
use ns_core::state::State;
use ns_core::{Context, Error};
use ns_net::Args;

const STAGE: &str = "ns-net";

fn main() {
    run(STAGE, || {
        let args: Args = parse_args(STAGE, &args_utf8()?);
        if let Some(zone) = &args.remove_zone {
            ns_net::wire::remove_zone(zone)?;
            std::process::exit(0);
        }
        let plan = match args.state_fd {
            Some(fd) => State::from_state_fd(fd)?.net,
            None => args.to_plan()?,
        };
        if !plan.ports.is_empty() {
            return Err(Error::setup(
                "--port: only ns-run forwards ports (its monitor removes the rules at exit)".into(),
            ));
        }
        let path = match (&args.pid, &args.netns) {
            (Some(pid), _) => format!("/proc/{pid}/ns/net"),
            (None, Some(p)) => p.clone(),
            (None, None) => return Err(Error::setup("--pid or --netns is required".into())),
        };
        let netns =
            std::fs::File::open(&path).ctx(|| format!("cannot open network namespace {path}"))?;
        ns_net::wire::setup(&plan, netns.as_fd())?;
        std::process::exit(0)
    })
}
