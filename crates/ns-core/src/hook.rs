//! OCI hooks (config.json's `hooks`): a program run with the container's state on its
//! stdin, within a timeout. ns-oci runs the host's (createRuntime, prestart, poststart,
//! poststop); the stages run those of the container: ns-mount createContainer (in the
//! container's namespaces, before pivot_root), ns-caps startContainer (in the container,
//! after `start`, before the payload).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::state::{Hook, StageHooks};
use crate::{Error, Result};

/// Run `hooks` of one `kind` in order, each with `state` on stdin; the first failure stops
/// them.
pub fn run(kind: &str, hooks: &[Hook], state: &serde_json::Value) -> Result<()> {
    for (i, h) in hooks.iter().enumerate() {
        run_one(h, state).map_err(|why| {
            Error::setup(format!("hooks.{kind}[{i}] ({}): {why}", h.path.display()))
        })?;
    }
    Ok(())
}

/// A stage's hooks of `kind`: the state as planned, with this process's pid (in its PID
/// namespace, as runc gives it) and `status`.
pub fn run_in_stage(kind: &str, h: &StageHooks, status: &str) -> Result<()> {
    let mut state = with_own_pid(&h.state, &format!("hooks.{kind}"))?;
    state["status"] = status.into();
    run(kind, &h.hooks, &state)
}

/// A state planned as JSON `text`, with this process's pid put in (`what` names it for
/// errors).
pub fn with_own_pid(text: &str, what: &str) -> Result<serde_json::Value> {
    let mut state: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::setup(format!("{what}: bad state: {e}")))?;
    state["pid"] = std::process::id().into();
    Ok(state)
}

fn run_one(h: &Hook, state: &serde_json::Value) -> std::result::Result<(), String> {
    let mut cmd = Command::new(&h.path);
    if let Some((argv0, rest)) = h.args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear()
        .envs(h.env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(Stdio::piped());
    // Not the signals we block to relay them, nor any ignored ones: a hook starts clean.
    crate::sys::clean_signals_on_exec(&mut cmd);
    // Nor any fd of ours but stdio (as runc): a stage's sync socket, state memfd, stage
    // copies, ns-oci's locks and fifo stay with us, not with a process the hook leaves.
    // SAFETY: the closure runs between fork and exec and makes one syscall (close_range),
    // which allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| crate::sys::cloexec_from(3).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    // The state is written as the hook takes it, between looks at its timeout (runc writes
    // it beside its timer): a hook that does not read it must not block us in a write
    // larger than the pipe holds. What it has not read when it is gone is dropped.
    let mut stdin = child.stdin.take();
    if let Some(s) = &stdin {
        use std::os::fd::AsFd;
        let _ = nix::fcntl::fcntl(
            s.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let text = state.to_string().into_bytes();
    let mut written = 0;
    // A timeout too far away to reckon is none.
    let deadline = h
        .timeout
        .and_then(|t| Instant::now().checked_add(Duration::from_secs(t)));
    loop {
        if let Some(s) = stdin.as_mut() {
            match s.write(&text[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // A hook that does not read its state may close stdin early: not an error.
                Err(_) => written = text.len(),
            }
            if written == text.len() {
                stdin = None; // closed: EOF for the hook
            }
        }
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => return Err(format!("exited with {st}")),
            None if deadline.is_some_and(|d| Instant::now() > d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out".into());
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
