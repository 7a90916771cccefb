//! OCI hooks that run on the host, in the runtime's namespaces: createRuntime and prestart
//! (once the container's process exists, before its setup goes on), poststart (after
//! `start`), poststop (at `delete`). Each gets the container's state on stdin; a failing
//! hook fails the verb, except poststop ones, which are only reported (as runc does).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ns_core::{Error, Result};
use oci_spec::runtime::{Hook, Hooks};

/// Refused at create, before anything is made: createContainer and startContainer hooks,
/// which run inside the container's namespaces (not supported, rather than skipped), and a
/// timeout of 0 or less (the OCI spec: "If set, timeout MUST be greater than zero"; runc
/// arms a timer that fires at once, so such a hook is killed and the verb fails).
pub fn check(hooks: &Option<Hooks>) -> Result<()> {
    let Some(h) = hooks else { return Ok(()) };
    for (name, list) in [
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(Error::setup(format!(
                "config.json: hooks.{name}: not supported"
            )));
        }
    }
    for (name, list) in [
        ("createRuntime", h.create_runtime()),
        ("prestart", h.prestart()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ] {
        for (i, hook) in list.iter().flatten().enumerate() {
            if let Some(t) = hook.timeout().filter(|t| *t <= 0) {
                return Err(Error::invalid(
                    &format!("config.json: hooks.{name}[{i}].timeout"),
                    &t.to_string(),
                    "must be greater than zero",
                ));
            }
        }
    }
    Ok(())
}

/// Run the hooks of one kind in order; the first failure stops them.
pub fn run(kind: &str, hooks: &Option<Vec<Hook>>, state: &serde_json::Value) -> Result<()> {
    for (i, h) in hooks.iter().flatten().enumerate() {
        run_one(h, state).map_err(|why| {
            Error::setup(format!("hooks.{kind}[{i}] ({}): {why}", h.path().display()))
        })?;
    }
    Ok(())
}

fn run_one(h: &Hook, state: &serde_json::Value) -> std::result::Result<(), String> {
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear()
        .envs(h.env().iter().flatten().filter_map(|kv| kv.split_once('=')))
        .stdin(Stdio::piped());
    // Not the signals we block to relay them, nor any ignored ones: a hook starts clean.
    ns_core::sys::clean_signals_on_exec(&mut cmd);
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
    // Positive (checked at create); a timeout too far away to reckon is none.
    let deadline = h
        .timeout()
        .and_then(|t| Instant::now().checked_add(Duration::from_secs(t.try_into().ok()?)));
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
