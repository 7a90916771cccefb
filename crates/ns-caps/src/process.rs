//! The program's process: its terminal and session, `--fork`'s child, the wait for an OCI
//! `start`, and the exec itself.

use std::convert::Infallible;

use ns_core::exec::{exec_prepared, exec_stage_with, StageFds};
use ns_core::state::ExecPlan;
use ns_core::sync::SyncSocket;
use ns_core::{Context, Error, Result};

use crate::identity::{login_shells, User};
use crate::privileges::PendingFilter;

/// `--fork` (see Args): installs the filter first (the child must be born under it), then
/// returns in the child, which holds stdio only; the parent reports the child's pid and
/// exits 0.
pub fn fork_payload(sync: Option<SyncSocket>, filter: &mut PendingFilter) -> Result<()> {
    use ns_core::sys::{clone_parent, close_from_except, Forked};
    // (The seccomp listener's socket, if any, stays for the filter installed below.)
    let keep: Vec<i32> = sync
        .iter()
        .map(SyncSocket::raw)
        .chain(ns_core::stage::report_fd())
        .chain(filter.listener_socket())
        .collect();
    close_from_except(3, &keep).ctx(|| "cannot close inherited fds".into())?;
    filter.install_before_fork()?;
    match clone_parent().ctx(|| "cannot fork the program's process".into())? {
        Forked::Child => {
            drop(sync);
            ns_core::stage::stop_reporting();
            Ok(())
        }
        Forked::Parent(child) => {
            if let Some(s) = &sync {
                s.send(&ns_core::sync::Msg::Pid(child.as_raw()))?;
            }
            std::process::exit(0)
        }
    }
}

/// `--setsid`: a new session; stdin, if a terminal, its controlling terminal.
pub fn new_session() -> Result<()> {
    nix::unistd::setsid().ctx(|| "cannot start a session".into())?;
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        ns_core::sys::set_controlling_tty(std::os::fd::AsFd::as_fd(&stdin))
            .ctx(|| "cannot take the terminal on stdin as controlling terminal".into())?;
    }
    Ok(())
}

/// /dev/console (the container's pty) becomes stdin, stdout, stderr and the controlling
/// terminal of a new session: Ctrl-C and Ctrl-Z then reach the payload's foreground job.
/// (Under ns-init, its payload does this in its own session.)
pub fn take_console(controlling: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tty = nix::fcntl::open(
        "/dev/console",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| "cannot open /dev/console".into())?;
    if controlling {
        nix::unistd::setsid().ctx(|| "cannot start a session".into())?;
        ns_core::sys::set_controlling_tty(std::os::fd::AsFd::as_fd(&tty))
            .ctx(|| "cannot make /dev/console the controlling terminal".into())?;
    }
    for target in 0..3 {
        ns_core::sys::dup_to(tty.as_raw_fd(), target)
            .ctx(|| format!("cannot make /dev/console fd {target}"))?;
    }
    Ok(())
}

/// OCI create/start: everything is set up. The payload must exist (checked as its user, from
/// its directory: a missing one fails `create`, as with runc). Then detach from the runtime's
/// `create` (it returns on SYNC-7 and the socket's EOF; its exit must not kill us), keep only
/// stdio and the fifo, become non-dumpable (nothing in the container may reach our fds or
/// memory while we wait; exec makes the payload dumpable again), and block until `start`
/// opens the fifo for reading. The fifo was opened O_PATH on the host; it is reopened for
/// writing through our own /proc (the host path is out of reach after pivot_root).
pub fn wait_for_start(
    plan: &ExecPlan,
    env: &[String],
    fd: i32,
    sync: Option<SyncSocket>,
    listener: Option<i32>,
) -> Result<()> {
    if let Some(prog) = plan.argv.first() {
        ns_core::exec::check_program(prog, env)?;
    }
    nix::sys::prctl::set_pdeathsig(None).ctx(|| "cannot clear the parent-death signal".into())?;
    // Only stdio and the fifo are left when the runtime returns (the seccomp listener's
    // socket stays too, for the filter installed after start).
    let keep: Vec<i32> = std::iter::once(fd)
        .chain(listener)
        .chain(sync.as_ref().map(SyncSocket::raw))
        .chain(ns_core::stage::report_fd())
        .collect();
    ns_core::sys::close_from_except(3, &keep).ctx(|| "cannot close inherited fds".into())?;
    if let Some(s) = &sync {
        s.send(&ns_core::sync::Msg::Waiting)?; // SYNC-7
    }
    // From here on a failure is ours alone: the runtime has returned.
    ns_core::stage::stop_reporting();
    drop(sync);
    nix::sys::prctl::set_dumpable(false).ctx(|| "cannot make ns-caps non-dumpable".into())?;
    let path = format!("/proc/self/fd/{fd}");
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .ctx(|| "cannot open the start fifo".into())?;
    nix::unistd::close(fd).ctx(|| "cannot close the start fifo's path".into())?;
    std::io::Write::write_all(&mut &fifo, b"0").ctx(|| "cannot write the start fifo".into())
}

/// Exec the payload, its login shell, or ns-init in front of either, with `filter` installed
/// as the last step before: after it come only the execve calls.
pub fn exec(
    plan: &ExecPlan,
    user: &User,
    env: &[String],
    fds: &StageFds,
    filter: &mut PendingFilter,
) -> Result<Infallible> {
    ns_core::stage::fault("ns-caps:before-exec");
    if let Some(label) = &plan.selinux_context {
        // The payload is executed with it (nspawn's setexeccon() before its exec). With
        // --as-pid2, ns-init (PID 1, like nspawn's stub init) keeps our context and labels
        // the payload's exec: the label is checked here, then cleared.
        ns_core::exec::set_exec_label(Some(label))?;
        if plan.as_pid2 {
            ns_core::exec::set_exec_label(None)?;
        }
    }
    filter.install()?;
    if plan.as_pid2 {
        let mut argv = vec!["ns-init".to_string()];
        if let Some(label) = &plan.selinux_context {
            argv.push(format!("--selinux-context={label}"));
        }
        if plan.argv.is_empty() {
            let (path, argv0) = login_shells(user)
                .into_iter()
                .find(|(p, _)| {
                    nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
                })
                .ok_or_else(|| Error {
                    code: ns_core::error::EXIT_NOT_FOUND,
                    msg: "no login shell found".into(),
                })?;
            argv.extend([format!("--argv0={argv0}"), "--".into(), path]);
        } else {
            argv.push("--".into());
            argv.extend(plan.argv.iter().cloned());
        }
        return Err(exec_stage_with("ns-init", &argv, fds, env));
    }
    if plan.boot {
        // The image's init, with the command line's words as its arguments.
        for init in crate::identity::INITS {
            let mut argv = vec![init.to_string()];
            argv.extend(plan.argv.iter().cloned());
            let e = exec_prepared(init, &argv, env);
            if e.code != ns_core::error::EXIT_NOT_FOUND {
                return Err(e);
            }
        }
        return Err(Error {
            code: ns_core::error::EXIT_NOT_FOUND,
            msg: format!(
                "--boot: cannot execute {}: No such file or directory",
                crate::identity::INITS.join(", ")
            ),
        });
    }
    if !plan.argv.is_empty() {
        return Err(exec_prepared(&plan.argv[0], &plan.argv, env));
    }
    let mut last = None;
    for (path, argv0) in login_shells(user) {
        let e = exec_prepared(&path, &[argv0], env);
        if e.code != ns_core::error::EXIT_NOT_FOUND {
            return Err(e);
        }
        last = Some(e);
    }
    Err(last.expect("at least one shell was tried"))
}
