//! Waiting for children: the one reap loop of every process that waits (the monitor, ns-enter
//! alone, ns-init, `ns-oci run`, `ns-ctl shell`). The signals it waits for are blocked first
//! ([`SignalSet::block`], before the fork: none is lost), then taken synchronously, by
//! [`until`] or, for a process that polls other fds too, through [`SignalSet::signalfd`] and
//! [`exited`].

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Context, Result};
use crate::stage::exit_code_of;
use crate::sys::SignalSet;

/// Reap every child that has ended, without blocking: `on_exit(status, code)` for each one
/// (code as [`exit_code_of`] gives it); stops early with what `on_exit` returns once it is
/// `Some`. `None` when no ended child is left.
pub fn exited<T>(mut on_exit: impl FnMut(WaitStatus, i32) -> Option<T>) -> Result<Option<T>> {
    loop {
        let st = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            r => r.ctx(|| "cannot wait for the container".into())?,
        };
        if let Some(t) = exit_code_of(st).and_then(|code| on_exit(st, code)) {
            return Ok(Some(t));
        }
    }
}

/// Whether this process has any child left, ended or not (`waitid` without reaping).
pub fn any_child() -> bool {
    let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT | WaitPidFlag::WEXITED;
    !matches!(
        nix::sys::wait::waitid(nix::sys::wait::Id::All, flags),
        Err(nix::errno::Errno::ECHILD)
    )
}

/// Wait until `child` ends and return its exit code, reaping any other child on the way.
/// `signals` (blocked by the caller) must hold SIGCHLD; every other one that arrives goes to
/// `on_signal`.
pub fn until(child: Pid, signals: &SignalSet, mut on_signal: impl FnMut(i32)) -> Result<i32> {
    loop {
        let sig = signals.wait().ctx(|| "cannot wait for signals".into())?;
        if sig != libc::SIGCHLD {
            on_signal(sig);
        } else if let Some(code) = exited(|st, code| (st.pid() == Some(child)).then_some(code))? {
            return Ok(code);
        }
    }
}
