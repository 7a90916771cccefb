//! `-a`'s ns-init, one copy per host: every container runs ns-init as its PID 1 from a
//! sealed memfd copy (design constraint 9: /proc/1/exe leads to no host file), ~1.4 MB of
//! shmem that would otherwise be resident once per container (issue 19). A monitor keeps its
//! copy open (close-on-exec) for the container's life and records it in its registry entry
//! ([`InitCopy`]: its fd number, the memfd's inode, the host ns-init it was made from). A
//! later start whose own ns-init is that same file takes the copy from that monitor
//! (pidfd_getfd: a host process of ours, never a container's) and runs it only after
//! checking what it got ([`usable`]); anything else gives a fresh copy, silently, as does
//! `--register=no` (no entry to find or record).
//!
//! An entry shows its copy only once its container's PID 1 exists: a burst of starts would
//! each make a copy before any is shown (18 copies for 20 -a containers started at once,
//! release build, 2 CPUs). So the start that makes a build's copy holds a lock of that
//! build ([`Making`]) until its entry is published; the others wait for it (polling, at
//! most [`WAIT_FOR_MAKER`]) and take its copy.
//!
//! Sharing gives no container a hold on another: the copy's content is sealed (write, grow,
//! shrink, seal) and so are its exec bits (F_SEAL_EXEC, kernel 6.3), and only containers with
//! a user namespace of their own share (the monitor decides, ns-run's `shares_init_copy`):
//! their root has no power over a file of host root's. Container root without -U could
//! change the copy's other mode bits, owner, times or attributes, a channel between the
//! containers that share it; those containers each get a copy of their own. Should a copy be
//! changed all the same (host root, an ACL past the exec seal), a later start that finds it
//! changed makes its own, and one that finds it changed between the check and its exec runs
//! a private copy of it (`ns_core::exec::exec_stage_with`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;
use ns_core::exec::{stage_source, FileId, StageCopy, COPY_SEALS, INIT_COPY_MODE};
use ns_core::Result;
use serde::{Deserialize, Serialize};

use crate::registry::{self, Machine};

/// What a monitor records of the ns-init copy it holds, for later starts to take.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InitCopy {
    /// The copy's fd number in the monitor (open, close-on-exec, for the container's life).
    pub fd: i32,
    /// The memfd's device and inode.
    pub dev: u64,
    pub ino: u64,
    /// The host's ns-init binary it was copied from.
    pub source: FileId,
}

/// The copy a monitor runs its container's ns-init from and keeps.
pub struct HeldCopy {
    /// Close-on-exec: it reaches nothing the monitor execs (the chain gets a duplicate).
    pub fd: OwnedFd,
    /// What to record in the registry entry, for later starts to take (shared copies only).
    pub record: Option<InitCopy>,
    /// The machine whose monitor it was taken from (None: made here).
    pub from: Option<String>,
    /// Made here for others to take: dropped once the entry shows it.
    pub making: Option<Making>,
}

/// How long a start waits for another start of its build that is making a copy (from its
/// copy to its entry published: ~10 ms) before it makes its own.
pub const WAIT_FOR_MAKER: Duration = Duration::from_millis(500);

/// Held by the start that makes the copy of a build, until its entry shows it (or the start
/// failed): `<runtime dir>/init/<build>.lock`. Removed while held when dropped, so that the
/// directory keeps no file per build ever run.
pub struct Making {
    lock: Option<Flock<File>>,
    path: PathBuf,
    /// The holder: a forked child that drops its copy removes nothing.
    owner: u32,
}

impl Drop for Making {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.lock.take());
    }
}

/// The lock of the build whose ns-init is `source`.
fn maker_lock(source: &FileId) -> Option<PathBuf> {
    let d = ns_core::paths::runtime_subdir("init").ok()?;
    let FileId {
        dev,
        ino,
        size,
        mtime_sec,
        mtime_nsec,
    } = source;
    Some(d.join(format!(
        "ns-init-{dev:x}-{ino:x}-{size:x}-{mtime_sec:x}-{mtime_nsec:x}.lock"
    )))
}

/// ns-init for a new container: with `share` (see ns-run's `shares_init_copy`), the copy of
/// a running registered container of the same ns-init build, when one passes every check
/// (waiting for one being made, see [`Making`]), recorded for later starts; else a fresh
/// copy of its own, recorded nowhere.
pub fn obtain(share: bool) -> Result<HeldCopy> {
    if !share {
        let c = StageCopy::make("ns-init")?;
        return Ok(HeldCopy {
            fd: c.fd,
            record: None,
            from: None,
            making: None,
        });
    }
    let (fd, source, from, making) = shared_or_made()?;
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| ns_core::Error::setup(format!("cannot stat ns-init's copy: {}", e.desc())))?;
    let record = Some(InitCopy {
        fd: fd.as_raw_fd(),
        dev: st.st_dev,
        ino: st.st_ino,
        source,
    });
    Ok(HeldCopy {
        fd,
        record,
        from,
        making,
    })
}

type Obtained = (OwnedFd, FileId, Option<String>, Option<Making>);

/// A copy taken from a running container; else, while another start of this build makes
/// one, that one once its entry shows it; else one made here, with the build's lock held
/// (none when it cannot be had).
fn shared_or_made() -> Result<Obtained> {
    let (_, ours) = stage_source("ns-init")?;
    let lock = maker_lock(&ours);
    let deadline = Instant::now() + WAIT_FOR_MAKER;
    let made = |making: Option<Making>| -> Result<Obtained> {
        let c = StageCopy::make("ns-init")?;
        Ok((c.fd, c.source, None, making))
    };
    loop {
        if let Some((fd, from)) = take_shared(&ours) {
            return Ok((fd, ours, Some(from), None));
        }
        let Some(path) = &lock else {
            return made(None);
        };
        match ns_core::paths::lock_current(path, FlockArg::LockExclusiveNonblock) {
            Ok(Some(l)) => {
                let making = Making {
                    lock: Some(l),
                    path: path.clone(),
                    owner: std::process::id(),
                };
                // Shown between our look and the lock: no copy to make.
                if let Some((fd, from)) = take_shared(&ours) {
                    return Ok((fd, ours, Some(from), None));
                }
                return made(Some(making));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => return made(None),
        }
    }
}

/// The copy of the first running registered container whose record names our own ns-init
/// (the file [`ns_core::exec::locate`] finds, as it is now) and passes every check.
fn take_shared(ours: &FileId) -> Option<(OwnedFd, String)> {
    registry::find_map(|m| {
        let rec = m.init_copy.as_ref().filter(|c| c.source == *ours)?;
        take(m, rec).map(|fd| (fd, m.name.clone()))
    })
}

/// The copy `rec` of machine `m`, from its monitor, if it is what the record says.
fn take(m: &Machine, rec: &InitCopy) -> Option<OwnedFd> {
    let pidfd = ns_core::sys::pidfd_open(Pid::from_raw(m.monitor)).ok()?;
    // The pidfd is the entry's monitor: the entry is still held (its monitor alive) and
    // unchanged now that the pidfd exists; a pid reused after the monitor died would not
    // hold it.
    let now = registry::get(&m.name).ok()?;
    if now.monitor != m.monitor || now.init_copy.as_ref() != Some(rec) {
        return None;
    }
    let fd = ns_core::sys::pidfd_getfd(pidfd.as_fd(), rec.fd).ok()?;
    usable(&fd, rec).then_some(fd)
}

/// Whether `fd` is the copy `rec` describes, as it was made: that inode, a regular file
/// named `ns-init` in memfd's file system, the source's size, sealed against any change of
/// its content ([`COPY_SEALS`]), mode [`INIT_COPY_MODE`] and our owner (no container root
/// changed them), no access ACL (which could deny a user its execution).
pub fn usable(fd: &OwnedFd, rec: &InitCopy) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return false;
    };
    let seals = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS);
    let name = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    (st.st_dev, st.st_ino) == (rec.dev, rec.ino)
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_mode & 0o7777 == INIT_COPY_MODE
        && (st.st_uid, st.st_gid)
            == (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        && u64::try_from(st.st_size) == Ok(rec.source.size)
        && seals.is_ok_and(|s| s & COPY_SEALS == COPY_SEALS)
        && name.is_ok_and(|n| n.as_os_str() == "/memfd:ns-init (deleted)")
        && ns_core::sys::has_xattr(fd.as_fd(), c"system.posix_acl_access") == Ok(false)
}
