//! Chaining: how a stage execs the next program.
//!
//! The next program is the rest of argv after `--`. If its name is a stage of this toolkit
//! (ns-enter, ns-mount, ns-caps, ns-init) it is executed through an fd opened before any
//! namespace change, because after pivot_root our binaries are no longer reachable by path.
//! Those fds travel down the chain in `NS_STAGE_FDS=ns-mount=5,ns-caps=6`; the stage that
//! execs the payload marks every fd above stderr close-on-exec, so the payload receives
//! exactly stdin, stdout and stderr, and drops the variable from the payload's environment.
//!
//! A process that a container can see (same PID namespace) must never have a host file of
//! ours as its exe or in its fd table (design constraint 9, runc's CVE-2019-5736): the
//! container's root could reopen it through /proc/PID/exe or /proc/PID/fd/N and write it.
//! So the stages such a process runs are opened as sealed memfd copies
//! ([`StageFds::open_sealed`]), and a host tool that forks into a container's PID namespace
//! first re-executes itself from one ([`reexec_sealed`]).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Context, Error, Result, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP};

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

/// The inverse of [`state_argv`]: (state fd, sync fd) when `argv` is exactly what it
/// writes (fds in decimal digits), else None.
pub fn parse_state_argv(argv: &[String]) -> Option<(RawFd, Option<RawFd>)> {
    let fd = |s: &String| -> Option<RawFd> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    match argv {
        [_, s, n] if s == "--state-fd" => Some((fd(n)?, None)),
        [_, s, n, y, m] if s == "--state-fd" && y == "--sync-fd" => Some((fd(n)?, Some(fd(m)?))),
        _ => None,
    }
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
    /// ns-init, which stays resident in the container, is a sealed copy; the others are the
    /// host's files, for chains that no container process can see while they run (PID 1 of
    /// a new PID namespace: nothing else is in there before the payload).
    pub fn open_missing(&mut self, names: &[&'static str]) -> Result<()> {
        self.open(names, false)
    }

    /// [`StageFds::open_missing`], every stage a sealed memfd copy: for chains that run where
    /// container processes can see them (an exec into a running container, a created
    /// container waiting for start, a PID namespace shared with others).
    pub fn open_sealed(&mut self, names: &[&'static str]) -> Result<()> {
        self.open(names, true)
    }

    fn open(&mut self, names: &[&'static str], sealed: bool) -> Result<()> {
        for &name in names {
            if self.get(name).is_some() {
                continue;
            }
            let path = locate_stage(name)?;
            let fd = if sealed || name == "ns-init" {
                let what = || format!("cannot copy {} into a sealed memfd", path.display());
                let mut src = std::fs::File::open(&path).ctx(what)?;
                sealed_copy(&mut src, name, false, &what)?
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
            let fd = crate::sys::above_stdio(fd).ctx(|| format!("cannot hand {name} down"))?;
            self.0.push((name, fd.into_raw_fd()));
        }
        Ok(())
    }

    /// Hand `fd` (a copy the caller keeps, [`StageCopy`]) down the chain as stage `name`:
    /// a duplicate that exec keeps open, closed with the others ([`StageFds::close_all`]).
    pub fn add(&mut self, name: &'static str, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        let dup = nix::unistd::dup(fd)
            .and_then(crate::sys::above_stdio)
            .ctx(|| format!("cannot hand {name} down the chain"))?;
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, dup.into_raw_fd()));
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

/// The seals every sealed copy carries: its content can never change again. A copy that is
/// shared (`-a`'s ns-init, between containers) must carry at least these.
pub const COPY_SEALS: i32 =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// The mode of a sealed copy: readable and executable by all, writable by none (so that a
/// container whose root is not its owner cannot even set a `user.` attribute on it).
pub const COPY_MODE: u32 = 0o555;

/// The mode of ns-init's copies: executable only. One copy is shared by the containers of a
/// build (`ns_host::initcopy`); a container root that is not its owner can then not even
/// open it (nor readlink or stat /proc/1/exe: the kernel makes a process run from a file it
/// may not read non-dumpable), so no lock, inotify watch or access time on the shared file
/// reaches it to signal another container. Exec needs no read permission.
pub const INIT_COPY_MODE: u32 = 0o111;

/// The mode of a sealed copy of `name`.
pub fn copy_mode(name: &str) -> u32 {
    match name {
        "ns-init" => INIT_COPY_MODE,
        _ => COPY_MODE,
    }
}

/// A sealed memfd holding a copy of `src` (a binary), named `name` (/proc/PID/exe shows
/// `/memfd:NAME (deleted)`): run from it, a process leads to no host file that could be
/// written through /proc/PID/exe or its fd. `cloexec` for a copy only we exec; a stage's
/// copy travels down the chain. Mode [`copy_mode`], sealed with [`COPY_SEALS`] and, where
/// the kernel has it (6.3), F_SEAL_EXEC: its exec bits cannot be taken either (a copy
/// is shared between containers, whose root may be its owner).
fn sealed_copy(
    src: &mut dyn std::io::Read,
    name: &str,
    cloexec: bool,
    what: &dyn Fn() -> String,
) -> Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let mut flags = MFdFlags::MFD_ALLOW_SEALING;
    if cloexec {
        flags |= MFdFlags::MFD_CLOEXEC;
    }
    let memfd = memfd_create(cstring(name)?.as_c_str(), flags).ctx(what)?;
    let mut dst = std::fs::File::from(memfd);
    std::io::copy(src, &mut dst).ctx(what)?;
    let memfd = std::os::fd::OwnedFd::from(dst);
    nix::sys::stat::fchmod(
        &memfd,
        nix::sys::stat::Mode::from_bits_truncate(copy_mode(name)),
    )
    .ctx(what)?;
    let seals = SealFlag::from_bits_retain(COPY_SEALS);
    let add = |s: SealFlag| fcntl(std::os::fd::AsFd::as_fd(&memfd), FcntlArg::F_ADD_SEALS(s));
    match add(seals | SealFlag::from_bits_retain(libc::F_SEAL_EXEC)) {
        // A kernel before 6.3 knows no F_SEAL_EXEC.
        Err(Errno::EINVAL) => add(seals),
        r => r,
    }
    .ctx(what)?;
    Ok(memfd)
}

/// Reads a file from its start with pread, leaving its offset alone (a copy's fd is shared
/// with other processes: its offset is theirs too).
struct ReadAt<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What a stage binary is on the host: a copy made of it is known by this, so that a copy
/// of another build (the binary replaced or rewritten since) is never taken for it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_sec: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

/// Where stage `name` is ([`locate`]), or the error that says it cannot be found.
fn locate_stage(name: &str) -> Result<PathBuf> {
    locate(name).ok_or_else(|| {
        Error::setup(format!(
            "cannot find the {name} binary next to this program or in PATH \
             (a stage running after pivot_root can only reach stages opened before it)"
        ))
    })
}

/// Where stage `name` is ([`locate`]) and what it is now.
pub fn stage_source(name: &str) -> Result<(PathBuf, FileId)> {
    let path = locate_stage(name)?;
    let m = std::fs::metadata(&path).ctx(|| format!("cannot stat {}", path.display()))?;
    Ok((path, FileId::of(&m)))
}

/// A sealed memfd copy of a stage binary that the host keeps (close-on-exec), and the file
/// it was made from.
pub struct StageCopy {
    pub fd: std::os::fd::OwnedFd,
    pub source: FileId,
}

impl StageCopy {
    /// Copy stage `name` ([`locate`]) into a sealed memfd; `source` is what was read (the
    /// opened file, not a path looked at before).
    pub fn make(name: &str) -> Result<StageCopy> {
        let path = locate_stage(name)?;
        let what = || format!("cannot copy {} into a sealed memfd", path.display());
        let mut src = std::fs::File::open(&path).ctx(what)?;
        let source = FileId::of(&src.metadata().ctx(what)?);
        let fd = sealed_copy(&mut src, name, true, &what)?;
        Ok(StageCopy { fd, source })
    }
}

/// Whether `f` is a memfd sealed against writes.
fn is_sealed(f: &std::fs::File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    fcntl(std::os::fd::AsFd::as_fd(f), FcntlArg::F_GET_SEALS)
        .is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_WRITE))
}

/// Where a sealed re-exec came from: its stages are beside that program, not the memfd.
const SEALED_FROM_ENV: &str = "NS_SEALED_FROM";
static SEALED_FROM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// For a host tool about to fork into a container's PID namespace (`ns-ctl shell`,
/// `ns-oci exec`): unless it already runs from a sealed memfd copy of itself, make one and
/// execute it with the same argv and environment (main starts again, from the copy). The
/// child that joins the container is then a copy of the memfd, not of the host's binary
/// (runc's cloned binary). Must run before any thread or namespace change; returns once
/// running from the copy.
pub fn reexec_sealed(name: &str) -> Result<()> {
    let what = || "cannot re-execute from a sealed copy of this program".to_string();
    let me = std::fs::File::open("/proc/self/exe").ctx(what)?;
    if is_sealed(&me) {
        if let Some(from) = std::env::var_os(SEALED_FROM_ENV) {
            let _ = SEALED_FROM.set(PathBuf::from(from));
            std::env::remove_var(SEALED_FROM_ENV);
        }
        return Ok(());
    }
    let from = std::env::current_exe().ctx(what)?;
    let copy = sealed_copy(&mut &me, name, true, &what)?;
    let args: Vec<CString> = crate::sys::args_os()
        .into_iter()
        .map(|a| cstring(a.into_vec()))
        .collect::<Result<_>>()?;
    let from_var = [
        SEALED_FROM_ENV.as_bytes(),
        b"=",
        from.as_os_str().as_bytes(),
    ]
    .concat();
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != SEALED_FROM_ENV)
        .map(|(k, v)| cstring([k.as_bytes(), b"=", v.as_bytes()].concat()))
        .chain([cstring(from_var)])
        .collect::<Result<_>>()?;
    let e = crate::sys::exec_fd(std::os::fd::AsRawFd::as_raw_fd(&copy), &args, &env);
    Err(Error::setup(format!("{}: {}", what(), e.desc())))
}

/// A program in PATH.
pub fn locate_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Find a stage binary: beside our own executable (the one a sealed copy was made of),
/// else in PATH.
pub fn locate(name: &str) -> Option<PathBuf> {
    let me = SEALED_FROM
        .get()
        .cloned()
        .or_else(|| std::env::current_exe().ok());
    if let Some(me) = me {
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
    exec_stage_with(name, argv, fds, &stage_env(fds))
}

/// Our environment, with the stage fds `fds` in it.
fn stage_env(fds: &StageFds) -> Vec<String> {
    let mut env: Vec<String> = std::env::vars_os()
        .filter(|(k, _)| k != STAGE_FDS_ENV)
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    env.push(format!("{STAGE_FDS_ENV}={}", fds.to_env_value()));
    env
}

/// Stage `name`'s fd, opened before the chain started.
fn stage_fd(name: &str, fds: &StageFds) -> Result<RawFd> {
    fds.get(name)
        .ok_or_else(|| Error::setup(format!("{name} was not opened before the chain started")))
}

/// What [`exec_stage`] execs, made for a child that may not allocate
/// ([`crate::sys::spawn`]).
pub fn prepare_stage(name: &str, argv: &[String], fds: &StageFds) -> Result<crate::sys::Exec> {
    let fd = stage_fd(name, fds)?;
    Ok(crate::sys::Exec::new(
        fd,
        cstrings(argv)?,
        cstrings(&stage_env(fds))?,
    ))
}

/// What a stage run where a container's processes can read /proc/PID/environ (ns-caps
/// `--fork`) keeps of our environment: nothing of the host user's but our own switches.
pub const STAGE_ENV_KEPT: &[&str] = &[
    "NS_DEBUG",
    "NS_FAULT",
    "TERM",
    "SYSTEMD_NSPAWN_CONTAINER_SERVICE",
];

/// [`exec_stage`] with only [`STAGE_ENV_KEPT`] of our environment (and the stage fds): for a
/// stage whose process the container sees before it execs the command.
pub fn exec_stage_scrubbed(name: &str, argv: &[String], fds: &StageFds) -> Error {
    let mut env: Vec<String> = STAGE_ENV_KEPT
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| format!("{k}={}", v.to_string_lossy())))
        .collect();
    env.push(format!("{STAGE_FDS_ENV}={}", fds.to_env_value()));
    exec_stage_with(name, argv, fds, &env)
}

/// Exec stage `name` through its fd with exactly `env`, and nothing else first: as the last
/// stage of the chain (ns-caps → ns-init, with the payload's environment), call
/// [`prepare_exec`] before.
pub fn exec_stage_with(name: &str, argv: &[String], fds: &StageFds, env: &[String]) -> Error {
    let fd = match stage_fd(name, fds) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let (args, envc) = match (cstrings(argv), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut e = crate::sys::exec_fd(fd, &args, &envc);
    if e == Errno::EACCES {
        // A sealed copy shared with other containers (`-a`'s ns-init) whose exec bits were
        // taken since the host checked it (host root's ACL can, past F_SEAL_EXEC; no
        // container that shares a copy owns it). Run a private copy of it instead.
        if let Some(copy) = private_copy(fd, name) {
            e = crate::sys::exec_fd(std::os::fd::AsRawFd::as_raw_fd(&copy), &args, &envc);
        }
    }
    Error::setup(format!("cannot execute {name} (fd {fd}): {}", e.desc()))
}

/// A private sealed copy (close-on-exec) of the sealed copy at `fd`, read with pread; None
/// when `fd` is no sealed copy or the copy cannot be made.
fn private_copy(fd: RawFd, name: &str) -> Option<std::os::fd::OwnedFd> {
    let shared = std::fs::File::from(crate::sys::dup_cloexec(fd).ok()?);
    if !is_sealed(&shared) {
        return None;
    }
    let mut src = ReadAt {
        file: &shared,
        pos: 0,
    };
    sealed_copy(&mut src, name, true, &String::new).ok()
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
    match prepare_exec() {
        Ok(()) => exec_prepared(prog, argv, env),
        Err(e) => e,
    }
}

/// What [`exec_program`] does before it execs: every fd above stderr close-on-exec, SIGPIPE
/// and the signal mask back to their defaults. For a caller with a step of its own between
/// this and the exec (ns-caps's system call filter).
pub fn prepare_exec() -> Result<()> {
    crate::sys::cloexec_from(3)
        .map_err(|e| Error::setup(format!("cannot mark fds close-on-exec: {}", e.desc())))?;
    crate::sys::reset_signals_for_exec()
        .map_err(|e| Error::setup(format!("cannot reset signals: {}", e.desc())))
}

/// [`exec_program`] after [`prepare_exec`]: nothing but the execve calls of the PATH search.
pub fn exec_prepared(prog: &str, argv: &[String], env: &[String]) -> Error {
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
    crate::sys::args_os()
        .into_iter()
        .map(|a: OsString| {
            a.into_string().map_err(|a| {
                Error::setup(format!("argument is not UTF-8: {}", a.to_string_lossy()))
            })
        })
        .collect()
}

/// `-Z`: the SELinux context of this thread's next execve (libselinux's setexeccon(), which
/// nspawn calls right before it execs the payload). The kernel checks the label (EINVAL when
/// the policy has no such context) and forgets it at the exec; a fork inherits it. `None`
/// clears it. The error names the label (`--selinux-context=LABEL: ...`).
pub fn set_exec_label(label: Option<&str>) -> Result<()> {
    use std::io::Write;
    let name = label.unwrap_or_default();
    let what = || format!("--selinux-context={name}: cannot set the exec label");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/thread-self/attr/exec")
        .ctx(what)?;
    // A lone newline resets it to the default (no label).
    f.write_all(label.unwrap_or("\n").as_bytes()).ctx(what)
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
    fn a_sealed_copy_cannot_be_written_even_reopened() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let me = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(!is_sealed(&me));
        let len = me.metadata().unwrap().len();
        let copy = std::fs::File::from(sealed_copy(&mut &me, "t", true, &|| "x".into()).unwrap());
        assert!(is_sealed(&copy));
        assert_eq!(copy.metadata().unwrap().len(), len);
        // As the attack does it: reopened for writing through /proc/self/fd.
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy));
        let wrote = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"x"));
        assert!(wrote.is_err());
        assert!(std::fs::File::create(&path).is_err(), "truncated");
        assert_eq!(copy.metadata().unwrap().len(), len);
        // Its exec bits stay, where the kernel has F_SEAL_EXEC (6.3).
        let mode = |f: &std::fs::File| f.metadata().unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&copy), COPY_MODE);
        let seals = nix::fcntl::fcntl(&copy, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
        if seals & libc::F_SEAL_EXEC != 0 {
            let chmod = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444));
            assert!(chmod.is_err(), "exec bits taken");
            assert_eq!(mode(&copy), COPY_MODE);
        }
    }

    #[test]
    fn a_stage_copy_that_cannot_be_executed_is_run_from_a_private_copy() {
        // A shared copy whose exec bits a container took (an ACL can, past F_SEAL_EXEC)
        // after the host checked it: the stage execs a private copy of its content.
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use std::os::fd::AsRawFd;
        let memfd = nix::sys::memfd::memfd_create(
            c"ns-init",
            nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING | nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .unwrap();
        let mut dst = std::fs::File::from(memfd);
        std::io::copy(&mut std::fs::File::open("/bin/true").unwrap(), &mut dst).unwrap();
        nix::sys::stat::fchmod(&dst, nix::sys::stat::Mode::from_bits_truncate(0o444)).unwrap();
        fcntl(
            &dst,
            FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(COPY_SEALS)),
        )
        .unwrap();
        // Its offset is at the end (as a copy's is, shared by every holder): left there.
        let fds = StageFds(vec![("ns-init", dst.as_raw_fd())]);
        let status = match crate::sys::fork().unwrap() {
            crate::sys::Forked::Child => {
                let e = exec_stage_with("ns-init", &["true".into()], &fds, &[]);
                eprintln!("{}", e.msg);
                std::process::exit(99)
            }
            crate::sys::Forked::Parent(child) => nix::sys::wait::waitpid(child, None).unwrap(),
        };
        assert_eq!(crate::stage::exit_code_of(status), Some(0), "{status:?}");
        let end = nix::unistd::lseek(&dst, 0, nix::unistd::Whence::SeekCur).unwrap();
        assert_eq!(end as u64, dst.metadata().unwrap().len());
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

    #[test]
    fn parse_state_argv_reads_exactly_what_state_argv_writes() {
        assert_eq!(
            parse_state_argv(&state_argv("s", 3, Some(4))),
            Some((3, Some(4)))
        );
        assert_eq!(
            parse_state_argv(&state_argv("s", 13, None)),
            Some((13, None))
        );
        for other in [
            &["s", "--sync-fd", "4", "--state-fd", "3"][..],
            &["s", "--state-fd", "+3"],
            &["s", "--state-fd", "-3"],
            &["s", "--state-fd", ""],
            &["s", "--state-fd", "99999999999"],
            &["s", "--state-fd=3"],
            &["s", "--state-fd", "3", "--sync-fd", "4", "--"],
            &["s", "--state-fd", "3", "--root-fd", "4"],
        ] {
            assert_eq!(parse_state_argv(&v(other)), None, "{other:?}");
        }
    }
}
