//! ns-init: stub PID 1. See lib.rs for the contract.
#![forbid(unsafe_code)]

use std::convert::Infallible;

use nix::unistd::Pid;
use ns_core::exec::{args_utf8, exec_program};
use ns_core::stage::{parse_args, run};
use ns_core::sys::{fork, kill_raw, Forked, SignalSet};
use ns_core::{Context, Result};
use ns_init::{handled_signals, is_poweroff, Args};

const STAGE: &str = "ns-init";

fn main() {
    run(STAGE, || {
        let args: Args = parse_args(STAGE, &args_utf8()?);
        nix::sys::prctl::set_dumpable(false).ctx(|| "cannot make PID 1 non-dumpable".into())?;
        let set = SignalSet::new(&handled_signals());
        let old = set.block().ctx(|| "cannot block signals".into())?;
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        match fork().ctx(|| "cannot fork the payload".into())? {
            Forked::Child => {
                old.set_mask()
                    .ctx(|| "cannot restore the signal mask".into())?;
                nix::unistd::setsid().ctx(|| "cannot start a session".into())?;
                // On a terminal (the container's console), make it ours: job control.
                if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
                    let _ = ns_core::sys::set_controlling_tty(std::os::fd::AsFd::as_fd(
                        &std::io::stdin(),
                    ));
                }
                if let Some(label) = &args.selinux_context {
                    ns_core::exec::set_exec_label(Some(label))?;
                }
                let mut argv = args.rest.clone();
                if let Some(a0) = &args.argv0 {
                    argv[0] = a0.clone();
                }
                Err(exec_program(&args.rest[0], &argv, &env))
            }
            Forked::Parent(payload) => supervise(payload, &set),
        }
    })
}

/// Reap until the payload exits; pass signals on.
fn supervise(payload: Pid, set: &SignalSet) -> Result<Infallible> {
    let code = ns_core::reap::until(payload, set, |sig| {
        if is_poweroff(sig) {
            let _ = kill_raw(payload, libc::SIGTERM);
            let _ = kill_raw(payload, libc::SIGHUP);
        } else {
            let _ = kill_raw(payload, sig);
        }
    })?;
    std::process::exit(code)
}
