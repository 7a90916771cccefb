//! ns-init: a stub PID 1 (`--as-pid2`). Starts the payload as PID 2 in its own session,
//! reaps every orphan, forwards termination signals to the payload, and exits with the
//! payload's status (128+N when it was killed by signal N).
//!
//! It is the only toolkit binary that stays resident inside the container, so it runs from a
//! sealed memfd copy (the chain opens it that way) and makes itself non-dumpable: /proc/1/exe
//! never leads to a host file.
#![forbid(unsafe_code)]

use clap::Parser;

/// ns-init [--argv0 NAME] [--selinux-context LABEL] -- PROGRAM [ARGS...]
///
/// Reads no state and no fds: it gets only stdin, stdout and stderr.
#[derive(Parser, Debug)]
#[command(
    name = "ns-init",
    version,
    about = "Stub PID 1: run PROGRAM as PID 2, reap, relay"
)]
pub struct Args {
    /// argv[0] for PROGRAM (e.g. `-sh` for a login shell).
    #[arg(long, value_name = "NAME")]
    pub argv0: Option<String>,
    /// Execute PROGRAM with this SELinux context (ns-run's -Z with --as-pid2).
    #[arg(long, value_name = "SECLABEL")]
    pub selinux_context: Option<String>,
    /// The payload.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

/// Signals passed on to the payload unchanged.
pub const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Everything ns-init waits for: children, forwarded and poweroff signals.
pub fn handled_signals() -> Vec<i32> {
    let mut v = vec![libc::SIGCHLD];
    v.extend(FORWARDED);
    v.extend([ns_core::SIGRTMIN + 3, ns_core::SIGRTMIN + 4]);
    v
}

/// SIGRTMIN+3 / +4 (poweroff, halt: what `--kill-signal=SIGRTMIN+3` sends): like nspawn's
/// stub, the payload gets SIGTERM then SIGHUP.
pub fn is_poweroff(signo: i32) -> bool {
    signo == ns_core::SIGRTMIN + 3 || signo == ns_core::SIGRTMIN + 4
}
