//! ns-mount: build the container's root and pivot into it. See lib.rs for the contract.
#![forbid(unsafe_code)]

use ns_core::exec::{args_utf8, chain_stages, exec_next, state_argv, StageFds};
use ns_core::stage::{debug, parse_matches, report_to, run};
use ns_core::state::State;
use ns_core::sync::SyncSocket;
use ns_core::Error;
use ns_mount::Args;

const STAGE: &str = "ns-mount";

fn main() {
    run(STAGE, || {
        let argv = args_utf8()?;
        let (args, matches): (Args, _) = parse_matches(STAGE, &argv);
        if let Some(fd) = args.sync_fd {
            report_to(SyncSocket::from_raw(fd)?.into_raw());
        }
        let (plan, rest) = match args.state_fd {
            Some(fd) => {
                let state = State::from_state_fd(fd)?;
                let rest = if args.rest.is_empty() {
                    state_argv("ns-caps", fd, args.sync_fd)
                } else {
                    args.rest.clone()
                };
                (state.mount, rest)
            }
            None => (args.to_plan(&matches)?, args.rest.clone()),
        };
        if rest.is_empty() {
            return Err(Error::setup("no program to run: give one after --".into()));
        }
        // Open the stages still to come while our binaries are reachable.
        let mut fds = StageFds::from_env()?;
        fds.open_missing(&chain_stages(&rest))?;
        debug(STAGE, || format!("building root {}", plan.root.display()));
        ns_mount::setup::build_root(&plan)?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        Err(exec_next(&rest, &fds))
    })
}
