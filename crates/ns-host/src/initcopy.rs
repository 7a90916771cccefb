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
//! Sharing gives no container a hold on another: the copy's content is sealed (write, grow,
//! shrink, seal) and so are its exec bits (F_SEAL_EXEC, kernel 6.3); container root without
//! -U owns the copy and may still change its other mode bits, owner or attributes (and an
//! ACL can take its exec bits past the seal): a running container has exec'd it already, a
//! later start that finds it changed makes its own, and one that finds it changed between
//! the check and its exec runs a private copy of it (`ns_core::exec::exec_stage_with`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::unistd::Pid;
use ns_core::exec::{stage_source, FileId, StageCopy, COPY_MODE, COPY_SEALS};
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
    /// What to record in the registry entry.
    pub record: InitCopy,
    /// The machine whose monitor it was taken from (None: made here).
    pub from: Option<String>,
}

/// ns-init for a new container: with `look` (a registered container), the copy of a running
/// registered container of the same ns-init build, when one passes every check; else a
/// fresh copy.
pub fn obtain(look: bool) -> Result<HeldCopy> {
    let taken = if look { take_shared() } else { None };
    let (fd, source, from) = match taken {
        Some((fd, source, from)) => (fd, source, Some(from)),
        None => {
            let c = StageCopy::make("ns-init")?;
            (c.fd, c.source, None)
        }
    };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| ns_core::Error::setup(format!("cannot stat ns-init's copy: {}", e.desc())))?;
    let record = InitCopy {
        fd: fd.as_raw_fd(),
        dev: st.st_dev,
        ino: st.st_ino,
        source,
    };
    Ok(HeldCopy { fd, record, from })
}

/// The copy of the first running registered container whose record names our own ns-init
/// (the file [`ns_core::exec::locate`] finds, as it is now) and passes every check.
fn take_shared() -> Option<(OwnedFd, FileId, String)> {
    let (_, ours) = stage_source("ns-init").ok()?;
    registry::find_map(|m| {
        let rec = m.init_copy.as_ref().filter(|c| c.source == ours)?;
        take(m, rec).map(|fd| (fd, ours, m.name.clone()))
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
/// its content ([`COPY_SEALS`]), mode [`COPY_MODE`] and our owner (no container root
/// changed them), no access ACL (which could deny a user its execution).
pub fn usable(fd: &OwnedFd, rec: &InitCopy) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return false;
    };
    let seals = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS);
    let name = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    (st.st_dev, st.st_ino) == (rec.dev, rec.ino)
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_mode & 0o7777 == COPY_MODE
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
