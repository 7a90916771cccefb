//! Chaining: how a stage execs the next program.
//!
//! The next program is the rest of argv after `--`. If its name is a stage of this toolkit
//! (ns-enter, ns-mount, ns-caps, ns-init) it is executed through an fd opened before any
//! namespace change, because after pivot_root our binaries are no longer reachable by path.
//! Those fds travel down the chain in `NS_STAGE_FDS=ns-mount=5,ns-caps=6`; the stage that
//! execs the payload marks every fd above stderr close-on-exec, so the payload receives
//! exactly stdin, stdout and stderr, and drops the variable from the payload's environment.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP};

/// The stage binaries, in chain order.
pub const STAGES: [&str; 4] = ["ns-enter", "ns-mount", "ns-caps", "ns-init"];
/// Environment variable carrying the stage fds down the chain.
pub const STAGE_FDS_ENV: &str = "NS_STAGE_FDS";

/// Is `prog` (a path or a bare name) one of our stages? Returns its canonical name.
pub fn stage_name(prog: &str) -> Option<&'static str> {
    let base = Path::new(prog).file_name()?.to_str()?;
    STAGES.iter().copied().find(|s| *s == base)
}

/// The stage names a rest-of-argv chain will exec, in order:
/// `ns-mount -D r -- ns-caps -- sh` gives [ns-mount, ns-caps]; `ns-caps -a` brings ns-init.
pub fn chain_stages(rest: &[String]) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut cur = rest;
    while let Some(name) = cur.first().and_then(|p| stage_name(p)) {
        out.push(name);
        let end = cur.iter().position(|a| a == "--").unwrap_or(cur.len());
        if name == "ns-caps" && cur[1..end].iter().any(|a| a == "-a" || a == "--as-pid2") {
            out.push("ns-init");
        }
        match cur.iter().position(|a| a == "--") {
            Some(i) => cur = &cur[i + 1..],
            None => break,
        }
    }
    out
}

/// argv of a stage that reads its plan from the state: `ns-mount --state-fd 3 --sync-fd 4`.
pub fn state_argv(stage: &str, state_fd: RawFd, sync_fd: Option<RawFd>) -> Vec<String> {
    let mut v = vec![stage.to_string(), "--state-fd".into(), state_fd.to_string()];
    if let Some(s) = sync_fd {
        v.extend(["--sync-fd".into(), s.to_string()]);
    }
    v
}

/// The program a stage execs next: the rest of its argv, else (in state mode) the `next`
/// stage reading the same state.
pub fn next_program(
    rest: &[String],
    state_fd: Option<RawFd>,
    sync_fd: Option<RawFd>,
    next: &str,
) -> Result<Vec<String>> {
    match (rest.is_empty(), state_fd) {
        (false, _) => Ok(rest.to_vec()),
        (true, Some(fd)) => Ok(state_argv(next, fd, sync_fd)),
        (true, None) => Err(Error::setup("no program to run: give one after --".into())),
    }
}

/// Stage name → fd of its binary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StageFds(Vec<(&'static str, RawFd)>);

impl StageFds {
    /// What the previous stage handed down, if anything.
    pub fn from_env() -> Result<StageFds> {
        let Some(v) = std::env::var_os(STAGE_FDS_ENV) else {
            return Ok(StageFds::default());
        };
        let v = v.to_string_lossy().into_owned();
        Self::parse(&v).ok_or_else(|| Error::setup(format!("{STAGE_FDS_ENV}={v}: malformed")))
    }

    fn parse(v: &str) -> Option<StageFds> {
        let mut out = Vec::new();
        for item in v.split(',').filter(|s| !s.is_empty()) {
            let (name, fd) = item.split_once('=')?;
            out.push((stage_name(name)?, fd.parse().ok()?));
        }
        Some(StageFds(out))
    }

    pub fn get(&self, name: &str) -> Option<RawFd> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, fd)| *fd)
    }

    /// Open each named stage binary that is not open yet. Must run before any namespace or
    /// root change. Binaries are found next to the running executable first, then in PATH.
    pub fn open_missing(&mut self, names: &[&'static str]) -> Result<()> {
        for &name in names {
            if self.get(name).is_some() {
                continue;
            }
            let path = locate(name).ok_or_else(|| {
                Error::setup(format!(
                    "cannot find the {name} binary next to this program or in PATH \
                     (a stage running after pivot_root can only reach stages opened before it)"
                ))
            })?;
            let fd = if name == "ns-init" {
                sealed_copy(&path)?
            } else {
                nix::fcntl::open(
                    &path,
                    nix::fcntl::OFlag::O_PATH,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| {
                    Error::setup(format!("cannot open {}: {}", path.display(), e.desc()))
                })?
            };
            self.0.push((name, fd.into_raw_fd()));
        }
        Ok(())
    }

    /// Close every stage fd (the monitor, once the chain has them).
    pub fn close_all(self) {
        for (_, fd) in self.0 {
            let _ = nix::unistd::close(fd);
        }
    }

    pub fn to_env_value(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(n, fd)| format!("{n}={fd}")).collect();
        parts.join(",")
    }
}

/// A sealed memfd holding a copy of the binary at `path`. ns-init stays resident as the
/// container's PID 1; run from this copy, /proc/1/exe leads to no host file that could be
/// written through it.
fn sealed_copy(path: &Path) -> Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let what = || format!("cannot copy {} into a sealed memfd", path.display());
    let memfd = memfd_create(c"ns-init", MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| Error::setup(format!("{}: {}", what(), e.desc())))?;
    let mut src =
        std::fs::File::open(path).map_err(|e| Error::setup(format!("{}: {e}", what())))?;
    let mut dst = std::fs::File::from(memfd);
    std::io::copy(&mut src, &mut dst).map_err(|e| Error::setup(format!("{}: {e}", what())))?;
    let memfd = std::os::fd::OwnedFd::from(dst);
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(
        std::os::fd::AsFd::as_fd(&memfd),
        FcntlArg::F_ADD_SEALS(seals),
    )
    .map_err(|e| Error::setup(format!("{}: {}", what(), e.desc())))?;
    Ok(memfd)
}

/// A program in PATH.
pub fn locate_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Find a stage binary: beside our own executable, else in PATH.
pub fn locate(name: &str) -> Option<PathBuf> {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    locate_in_path(name)
}

fn cstring(s: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(s).map_err(|_| Error::setup("argument contains a NUL byte".into()))
}

/// Exec stage `name` through its fd, with our environment plus the updated stage fds.
pub fn exec_stage(name: &str, argv: &[String], fds: &StageFds) -> Error {
    let mut env: Vec<String> = std::env::vars_os()
        .filter(|(k, _)| k != STAGE_FDS_ENV)
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    env.push(format!("{STAGE_FDS_ENV}={}", fds.to_env_value()));
    exec_stage_with(name, argv, fds, &env)
}

/// Exec stage `name` as the last one of the chain: with the payload's environment and only
/// stdin, stdout and stderr open (ns-caps → ns-init).
pub fn exec_last_stage(name: &str, argv: &[String], fds: &StageFds, env: &[String]) -> Error {
    if let Err(e) = crate::sys::cloexec_from(3) {
        return Error::setup(format!("cannot mark fds close-on-exec: {}", e.desc()));
    }
    exec_stage_with(name, argv, fds, env)
}

fn exec_stage_with(name: &str, argv: &[String], fds: &StageFds, env: &[String]) -> Error {
    let Some(fd) = fds.get(name) else {
        return Error::setup(format!("{name} was not opened before the chain started"));
    };
    let (args, envc) = match (cstrings(argv), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let e = crate::sys::exec_fd(fd, &args, &envc);
    Error::setup(format!("cannot execute {name} (fd {fd}): {}", e.desc()))
}

fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter().map(|a| cstring(a.as_bytes())).collect()
}

/// Exec the next program of a rest-of-argv: a stage through its fd, anything else as the
/// payload with the current environment (less `NS_STAGE_FDS`).
pub fn exec_next(rest: &[String], fds: &StageFds) -> Error {
    if let Some(name) = rest.first().and_then(|p| stage_name(p)) {
        if fds.get(name).is_some() {
            return exec_stage(name, rest, fds);
        }
    }
    let env: Vec<String> = std::env::vars_os()
        .filter(|(k, _)| k != STAGE_FDS_ENV)
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    exec_payload(rest, &env)
}

/// Exec the payload as execvpe does: a name without `/` is searched in the PATH of `env`
/// (the container's), not ours. Before exec every fd above stderr is marked close-on-exec.
/// Returns only on failure: 127 when the program does not exist, 126 when it cannot be
/// executed.
pub fn exec_payload(argv: &[String], env: &[String]) -> Error {
    let Some(prog) = argv.first() else {
        return Error::setup("no program to execute".into());
    };
    exec_program(prog, argv, env)
}

/// [`exec_payload`] with a program distinct from argv[0] (a login shell's `-sh`).
pub fn exec_program(prog: &str, argv: &[String], env: &[String]) -> Error {
    if let Err(e) = crate::sys::cloexec_from(3) {
        return Error::setup(format!("cannot mark fds close-on-exec: {}", e.desc()));
    }
    if let Err(e) = crate::sys::reset_signals_for_exec() {
        return Error::setup(format!("cannot reset signals: {}", e.desc()));
    }
    let (args, envc) = match (cstrings(argv), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    exec_error(prog, search(prog, env, |p| try_exec(p, &args, &envc)))
}

/// Check that `prog` would be found and may be executed by [`exec_program`] (as we are, from
/// here), without executing it: an OCI runtime's create fails on a missing program.
pub fn check_program(prog: &str, env: &[String]) -> Result<()> {
    let access = |p: &Path| match nix::unistd::access(p, nix::unistd::AccessFlags::X_OK) {
        Ok(()) => Errno::UnknownErrno, // found: stop here
        Err(e) => e,
    };
    match search(prog, env, access) {
        Errno::UnknownErrno => Ok(()),
        e => Err(exec_error(prog, e)),
    }
}

/// execvpe's search: `prog` itself when it holds a `/`, else each PATH directory of `env`
/// (the container's) in turn, trying `attempt` until it fails other than ENOENT/ENOTDIR;
/// EACCES on the way wins over a final ENOENT. Returns the last errno.
fn search(prog: &str, env: &[String], mut attempt: impl FnMut(&Path) -> Errno) -> Errno {
    if prog.contains('/') {
        return attempt(Path::new(prog));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut seen_eacces = false;
    let mut last = Errno::ENOENT;
    for dir in std::env::split_paths(OsStr::new(path)) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        match attempt(&dir.join(prog)) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => seen_eacces = true,
            e => {
                last = e;
                break;
            }
        }
    }
    if seen_eacces && last == Errno::ENOENT {
        Errno::EACCES
    } else {
        last
    }
}

fn try_exec(path: &Path, args: &[CString], env: &[CString]) -> Errno {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return Errno::EINVAL;
    };
    match nix::unistd::execve(&p, args, env).unwrap_err() {
        // As execvpe: an executable file without a #! line is a script for /bin/sh.
        Errno::ENOEXEC => {
            let mut sh = vec![c"/bin/sh".to_owned(), p];
            sh.extend(args.iter().skip(1).cloned());
            match nix::unistd::execve(c"/bin/sh", &sh, env).unwrap_err() {
                Errno::ENOENT => Errno::ENOEXEC,
                e => e,
            }
        }
        e => e,
    }
}

/// The error for a failed payload exec, with the exit code users can tell apart.
pub fn exec_error(prog: &str, e: Errno) -> Error {
    let code = match e {
        Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
        Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR | Errno::EPERM | Errno::ETXTBSY => {
            EXIT_CANNOT_EXEC
        }
        _ => EXIT_SETUP,
    };
    Error {
        code,
        msg: format!("cannot execute {prog}: {}", e.desc()),
    }
}

/// Our own argv as Strings (non-UTF-8 arguments are refused rather than mangled).
pub fn args_utf8() -> Result<Vec<String>> {
    std::env::args_os()
        .map(|a: OsString| {
            a.into_string().map_err(|a| {
                Error::setup(format!("argument is not UTF-8: {}", a.to_string_lossy()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn chain_stages_walks_double_dashes() {
        let rest = v(&[
            "ns-mount",
            "-D",
            "r",
            "--",
            "/usr/bin/ns-caps",
            "-u",
            "x",
            "--",
            "ns-init",
            "--",
            "sh",
        ]);
        assert_eq!(chain_stages(&rest), vec!["ns-mount", "ns-caps", "ns-init"]);
        assert_eq!(
            chain_stages(&v(&["sh", "--", "ns-caps"])),
            Vec::<&str>::new()
        );
        assert_eq!(chain_stages(&v(&["ns-caps"])), vec!["ns-caps"]);
        assert_eq!(
            chain_stages(&v(&["ns-caps", "-a", "--", "sh"])),
            vec!["ns-caps", "ns-init"]
        );
    }

    #[test]
    fn stage_fds_env_round_trip() {
        let f = StageFds::parse("ns-mount=5,ns-caps=6").unwrap();
        assert_eq!(f.get("ns-caps"), Some(6));
        assert_eq!(f.get("ns-init"), None);
        assert_eq!(f.to_env_value(), "ns-mount=5,ns-caps=6");
        assert!(StageFds::parse("ns-bogus=5").is_none());
        assert!(StageFds::parse("ns-mount=x").is_none());
    }

    #[test]
    fn exec_errors_map_to_documented_codes() {
        assert_eq!(exec_error("x", Errno::ENOENT).code, 127);
        assert_eq!(exec_error("x", Errno::EACCES).code, 126);
        assert_eq!(
            exec_error("/bin/nope", Errno::ENOENT).msg,
            "cannot execute /bin/nope: No such file or directory"
        );
    }
}
