//! The runner every stage's `main` goes through: parse flags (one-line errors), run the job,
//! and on failure print exactly one line `STAGE: message`, report it on the sync socket when
//! there is one, and exit with the error's code.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};
use crate::sync::Msg;

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Failures from now on are also sent as `Failed` on this sync socket (SYNC-8).
pub fn report_to(fd: i32) {
    REPORT_FD.store(fd, Ordering::Relaxed);
}

/// Adopt the `--sync-fd` a stage was given, and report failures on it from now on: through
/// a close-on-exec duplicate, so that a failure is still reported after the job dropped its
/// socket (and the monitor reads EOF only after it), while the next stage inherits only the
/// socket itself.
pub fn adopt_sync(fd: Option<i32>) -> Result<Option<crate::sync::SyncSocket>> {
    let sync = fd.map(crate::sync::SyncSocket::from_raw).transpose()?;
    if let Some(s) = &sync {
        let dup = nix::fcntl::fcntl(s.fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
            .map_err(|e| Error::setup(format!("cannot duplicate the sync socket: {}", e.desc())))?;
        report_to(dup);
    }
    Ok(sync)
}

/// The fd failures are reported on, if any (a stage that closes its fds keeps it).
pub fn report_fd() -> Option<i32> {
    Some(REPORT_FD.load(Ordering::Relaxed)).filter(|fd| *fd >= 0)
}

/// No more reports (the stage lets go of the sync socket while it lives on): close the
/// duplicate [`adopt_sync`] made.
pub fn stop_reporting() {
    let fd = REPORT_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        let _ = nix::unistd::close(fd);
    }
}

/// SYNC-4: tell the monitor, if there is one, that `path` is about to be created on the host
/// and must be removed after the container is gone.
pub fn report_created(path: &std::path::Path, recursive: bool) -> Result<()> {
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return Ok(());
    }
    let msg = Msg::Created {
        path: path.to_path_buf(),
        recursive,
    };
    let bytes = serde_json::to_vec(&msg).expect("message serializes");
    nix::sys::socket::send(fd, &bytes, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
        .map(drop)
        .map_err(|e| {
            Error::setup(format!(
                "cannot report {} to the monitor: {}",
                path.display(),
                e.desc()
            ))
        })
}

/// Run a stage's job; it returns only with an error (on success it has exec'd).
pub fn run(stage: &str, job: impl FnOnce() -> Result<Infallible>) -> ! {
    quiet_on_closed_pipe();
    // Executed through an fd, our comm would be the fd number; name ourselves for ps.
    if let Ok(name) = std::ffi::CString::new(stage) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let e = match job() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fail(stage, &e)
}

/// A `println!` somewhere (ours use [`crate::outln!`]) that meets a closed pipe panics
/// with "failed printing to stdout: Broken pipe": die of SIGPIPE instead, quietly, as
/// coreutils do (exit 134 and a panic message are not what `| head -1` should give).
pub fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            crate::sys::die_of_sigpipe();
        }
        default(info)
    }));
}

/// Print the one error line, report it, exit.
pub fn fail(stage: &str, e: &Error) -> ! {
    crate::errln!("{stage}: {}", e.msg);
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let msg = Msg::Failed {
            stage: stage.to_string(),
            code: e.code,
            message: e.msg.clone(),
        };
        let bytes = serde_json::to_vec(&msg).expect("message serializes");
        // Best effort: the monitor may be gone; the exit code still tells.
        let _ = nix::sys::socket::send(fd, &bytes, nix::sys::socket::MsgFlags::MSG_NOSIGNAL);
    }
    std::process::exit(e.code)
}

/// A chain stage's flags. The chain's own command line (`STAGE --state-fd N --sync-fd M`,
/// [`crate::exec::state_argv`]) is read directly into `T::default()` by `set_fds`: clap
/// would first build the stage's whole standalone Command (every flag, its help and
/// conflicts), which costs more than the rest of the stage's start in user space. Any other
/// command line goes to [`parse_args`], so the standalone CLI and its errors are unchanged.
pub fn stage_args<T: clap::Parser + Default>(
    stage: &str,
    argv: &[String],
    set_fds: impl FnOnce(&mut T, i32, Option<i32>),
) -> T {
    match crate::exec::parse_state_argv(argv) {
        Some((state, sync)) => {
            let mut args = T::default();
            set_fds(&mut args, state, sync);
            args
        }
        None => parse_args(stage, argv),
    }
}

/// Parse a stage's flags with clap, turning clap's multi-line errors into our one line and
/// exit code 125. `--help` and `--version` print and exit 0.
pub fn parse_args<T: clap::Parser>(stage: &str, argv: &[String]) -> T {
    parse_args_with(stage, &mut T::command(), argv)
}

/// [`parse_args`] with a command line already built (`cmd`), for a caller that keeps one.
pub fn parse_args_with<T: clap::FromArgMatches>(
    stage: &str,
    cmd: &mut clap::Command,
    argv: &[String],
) -> T {
    let parsed = match cmd.try_get_matches_from_mut(argv) {
        Ok(mut m) => T::from_arg_matches_mut(&mut m).map_err(|e| e.format(cmd)),
        Err(e) => Err(e),
    };
    match parsed {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            fail(stage, &Error::setup(line.to_string()))
        }
    }
}

/// Fault injection for the tests: with `NS_FAULT=POINT` in the environment, the process
/// kills itself with SIGKILL when it reaches POINT (`ns-mount:mid`...), as a crash or an
/// OOM kill would. The payload never sees the variable (its environment is built anew).
pub fn fault(point: &str) {
    if std::env::var_os("NS_FAULT").is_some_and(|v| v == point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // Still here: we are a PID namespace's init, which ignores signals it sends itself.
        // Crash instead (abort ends in a fault the kernel forces on us).
        std::process::abort();
    }
}

/// Per-stage traces on stderr when NS_DEBUG is set.
pub fn debug(stage: &str, what: impl FnOnce() -> String) {
    if std::env::var_os("NS_DEBUG").is_some() {
        crate::errln!("{stage}[{}]: {}", std::process::id(), what());
    }
}

/// Exit code for a child's wait status: the code itself, or 128+N for a signal.
pub fn exit_code_of(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}
