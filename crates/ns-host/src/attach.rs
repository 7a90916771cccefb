//! Joining a running container (ns-ctl's `shell`, ns-oci's `exec`): its cgroups, then its
//! namespaces through the leader's /proc/PID/ns files (user first, so that it owns the rest;
//! the mount namespace's root, which pivot_root made the container's, becomes ours). The
//! joined process stays outside the container's PID namespace (setns affects only
//! children), out of sight of its processes while it holds the host's privileges; it execs
//! ns-caps `--fork`, which drops them and only then forks the command's process into the
//! PID namespace: no process the container can see is ever more privileged than the
//! container (nor has a host file of ours as exe or fd: design constraint 9).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use ns_core::{Context, Error, Result};

/// Namespaces to join, in order, with the kind of each.
pub type Joinable = Vec<(File, CloneFlags)>;

/// The leader's namespaces that differ from ours, in the order to join them.
pub fn namespaces(leader: i32) -> Result<Joinable> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for kind in crate::registry::NAMESPACE_KINDS {
        let theirs = format!("/proc/{leader}/ns/{kind}");
        let f = File::open(&theirs).ctx(|| format!("cannot open {theirs}"))?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{kind}")).map(|m| m.ino());
        if f.metadata().map(|m| m.ino()).ok() != ours.ok() {
            out.push((f, flag_of(kind)));
        }
    }
    Ok(out)
}

/// Where the leader's mount namespace is ours (an OCI container without one, which chroots
/// into its rootfs): its root, to chroot into once joined ([`enter_root`]).
pub fn root_of(leader: i32, ns: &Joinable) -> Result<Option<OwnedFd>> {
    use nix::fcntl::OFlag;
    if ns.iter().any(|(_, f)| *f == CloneFlags::CLONE_NEWNS) {
        return Ok(None);
    }
    let p = format!("/proc/{leader}/root");
    let fd = nix::fcntl::open(
        p.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("cannot open {p}"))?;
    let (theirs, ours) = (nix::sys::stat::fstat(fd.as_fd()), nix::sys::stat::stat("/"));
    let same = |a: nix::sys::stat::FileStat, b: nix::sys::stat::FileStat| {
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    };
    match (theirs, ours) {
        (Ok(a), Ok(b)) if same(a, b) => Ok(None),
        _ => Ok(Some(fd)),
    }
}

/// Into the root [`root_of`] found.
pub fn enter_root(root: &OwnedFd) -> Result<()> {
    nix::unistd::fchdir(root.as_fd()).ctx(|| "cannot enter the container's root".into())?;
    nix::unistd::chroot(".").ctx(|| "cannot chroot into the container's root".into())?;
    nix::unistd::chdir("/").ctx(|| "cannot chdir to /".into())
}

/// setns's flag for a namespace kind of [`crate::registry::NAMESPACE_KINDS`].
fn flag_of(kind: &str) -> CloneFlags {
    match kind {
        "user" => CloneFlags::CLONE_NEWUSER,
        "cgroup" => CloneFlags::CLONE_NEWCGROUP,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "net" => CloneFlags::CLONE_NEWNET,
        "pid" => CloneFlags::CLONE_NEWPID,
        "mnt" => CloneFlags::CLONE_NEWNS,
        _ => CloneFlags::empty(),
    }
}

/// The namespaces `recorded` (kind, inode) when the container started, that differ from
/// ours, in the order to join them: the leader's where it is still in them, else the one the
/// monitor keeps open (found among /proc/MONITOR/fd). Also the kinds the leader has left.
pub fn recorded_namespaces(
    name: &str,
    leader: i32,
    monitor: i32,
    recorded: &[(String, u64)],
) -> Result<(Joinable, Vec<&'static str>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut left = Vec::new();
    for kind in crate::registry::NAMESPACE_KINDS {
        let Some(&(_, want)) = recorded.iter().find(|(k, _)| k == kind) else {
            return Err(Error::setup(format!(
                "{name}'s entry records no {kind} namespace"
            )));
        };
        let theirs = format!("/proc/{leader}/ns/{kind}");
        let f = File::open(&theirs).ctx(|| format!("cannot open {theirs}"))?;
        let f = if f.metadata().map(|m| m.ino()).ok() == Some(want) {
            f
        } else {
            left.push(kind);
            held_namespace(monitor, kind, want).ok_or_else(|| {
                Error::setup(format!(
                    "{name}'s PID 1 has left the {kind} namespace it started in, and its \
                     monitor ({monitor}) no longer holds that one"
                ))
            })?
        };
        let ours = std::fs::metadata(format!("/proc/self/ns/{kind}")).map(|m| m.ino());
        if ours.ok() != Some(want) {
            out.push((f, flag_of(kind)));
        }
    }
    Ok((out, left))
}

/// The namespace `kind:[ino]` among the monitor's open fds.
fn held_namespace(monitor: i32, kind: &str, ino: u64) -> Option<File> {
    let want = format!("{kind}:[{ino}]");
    let dir = format!("/proc/{monitor}/fd");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
        .and_then(|e| File::open(e.path()).ok())
        // The fd may have been closed and its number reused since it was read.
        .filter(|f| {
            use std::os::unix::fs::MetadataExt;
            f.metadata().is_ok_and(|m| m.ino() == ino)
        })
}

/// Fields of /proc/PID/status (`CapBnd` in hex, `NoNewPrivs` in decimal), as text, from
/// one read of the file.
pub fn status_fields<const N: usize>(pid: i32, keys: [&str; N]) -> Result<[String; N]> {
    let p = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&p).ctx(|| format!("cannot read {p}"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
            .ok_or_else(|| Error::setup(format!("{p} has no {key}")))
    };
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (o, key) in out.iter_mut().zip(keys) {
        *o = field(key)?;
    }
    Ok(out)
}

/// Into the container `name`'s cgroups (from the host's view, so before its cgroup
/// namespace), then its namespaces `ns`; under a user namespace, become its root.
pub fn join(name: &str, cgroups: &[PathBuf], ns: &[(File, CloneFlags)]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for dir in cgroups {
        if !ns_core::paths::is_cgroup_dir(dir) {
            return Err(Error::setup(format!(
                "cannot join {name}'s cgroup {}: not a cgroup",
                dir.display()
            )));
        }
        // v1 through `tasks` (this process has one thread), cgroup2 through cgroup.procs;
        // never through a symlink, never creating a file. Which by the file system, not by
        // what is there: in cgroup2 the container's root may make a child cgroup `tasks`.
        let v2 = nix::sys::statfs::statfs(dir.as_path())
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        let f = if v2 {
            dir.join("cgroup.procs")
        } else {
            dir.join("tasks")
        };
        std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&f)
            .and_then(|mut w| w.write_all(b"0"))
            .ctx(|| format!("cannot join cgroup {}", dir.display()))?;
    }
    for (f, flag) in ns {
        nix::sched::setns(f.as_fd(), *flag)
            .ctx(|| format!("cannot join {name}'s {flag:?} namespace"))?;
    }
    if ns.iter().any(|(_, f)| *f == CloneFlags::CLONE_NEWUSER) {
        // Our host ids mean nothing in there: become its root, or exec would drop every
        // capability (ns-caps then becomes the user asked for).
        use nix::unistd::{setresgid, setresuid, Gid, Uid};
        // (Our /proc/self is gone: that /proc is the container's.)
        ns_core::sys::clear_groups().ctx(|| "cannot clear supplementary groups".into())?;
        let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
        setresgid(g, g, g).ctx(|| format!("cannot become root of {name}"))?;
        setresuid(u, u, u).ctx(|| format!("cannot become root of {name}"))?;
    }
    Ok(())
}

/// Once joined: a new pty of the container's own devpts; its master and slave number.
pub fn open_pty(name: &str) -> Result<(OwnedFd, u32)> {
    let master = nix::fcntl::open(
        "/dev/pts/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("cannot open a pty in {name}"))?;
    let n = ns_core::sys::pty_unlock(master.as_fd())
        .ctx(|| format!("cannot unlock a pty in {name}"))?;
    Ok((master, n))
}

/// In the entering process: pty `n` as stdin, stdout and stderr (the command, forked by
/// ns-caps, makes it its controlling terminal in a session of its own: `--setsid`).
pub fn pty_as_stdio(n: u32) -> Result<()> {
    let slave = nix::fcntl::open(
        format!("/dev/pts/{n}").as_str(),
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("cannot open /dev/pts/{n}"))?;
    for target in 0..3 {
        ns_core::sys::dup_to(slave.as_raw_fd(), target)
            .ctx(|| format!("cannot make the pty fd {target}"))?;
    }
    Ok(())
}

/// In the entering process, once joined (still outside the container's PID namespace, so
/// out of its processes' sight, with the host's privileges): its pty (if any) as stdio, the
/// signal mask and handlers reset, then ns-caps (opened before any setns) with `argv` and
/// `--fork`: ns-caps drops every privilege first, then forks the command's process, the
/// first one inside the PID namespace, as the child of our parent (which waits for it).
/// Returns only on failure.
pub fn exec_command(pty: Option<u32>, argv: &[String], fds: &ns_core::exec::StageFds) -> Error {
    let r = pty.map_or(Ok(()), pty_as_stdio).and_then(|()| {
        ns_core::sys::reset_signals_for_exec().ctx(|| "cannot unblock signals".into())
    });
    match r {
        Ok(()) => {
            let _ = nix::unistd::chdir("/");
            let mut argv = argv.to_vec();
            let mut flags = vec!["--fork".to_string()];
            if pty.is_some() {
                flags.push("--setsid".into());
            }
            argv.splice(1.min(argv.len())..1.min(argv.len()), flags);
            // ns-caps's environ is in sight of the container's processes once it has
            // forked (until the command's exec): none of the host's environment.
            ns_core::exec::exec_stage_scrubbed("ns-caps", &argv, fds)
        }
        Err(e) => e,
    }
}
