//! Locks the monitor holds for a container's lifetime: one container per tree (the image
//! lock, as nspawn's), and membership of a network zone. Both are flocks on 0600 files of
//! ours in the runtime directory, released by the kernel with a killed monitor; their files
//! are taken again by the next one.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use ns_core::{Context, Error, Result};

/// One container per tree, as nspawn: an exclusive lock for a container that writes to the
/// tree, shared for those that never do (read-only, ephemeral, volatile), never waited for.
/// The lock is a file of ours, `trees/DEV:INO` in the runtime directory (0600, like every
/// lock file: see [`ns_core::paths::lock_current`]), named by the device and inode of the
/// tree's root directory, so that the tree reached by another path (a symlink, after a
/// rename) is the same tree. (A flock on the directory itself could be held by any user who
/// may open the tree, keeping every container off it.) The last user removes the file while
/// it holds it exclusively; a monitor killed with SIGKILL leaves it (empty, for the next
/// container to take).
///
/// Older versions locked the directory itself: that lock is still taken, in the same mode,
/// so that their containers, still running after an upgrade, and ours keep apart, and so
/// that a rootless user's containers keep off a tree root's use; when it is refused, the
/// tree is busy only if an `ns-run` of our uid or root's holds it (see [`ns_run_holds`]),
/// and otherwise used without it.
pub struct ImageLock {
    lock: Flock<File>,
    path: PathBuf,
    /// The tree's root directory, locked as older versions did (None: held by another user).
    dir: Option<Flock<File>>,
    /// The tree's device and inode.
    id: (u64, u64),
    /// The monitor: a forked child that returns never removes the file.
    owner: u32,
}

fn busy(option: &str, root: &Path) -> Error {
    let what = match option {
        "--image" => "disk image",
        _ => "directory tree",
    };
    Error::invalid(
        option,
        &root.to_string_lossy(),
        &format!(
            "{what} is currently busy (another container uses it; -x or --read-only can share it)"
        ),
    )
}

/// Collectors of what dead monitors left ([`crate::journal::collect_stale`], run by every
/// ns-run) lock a tree exclusively for a moment, whoever's container it was. A container
/// starting on that tree in that moment must not be told that it is busy: collectors hold
/// `trees/.collect` exclusively while they hold trees, and a container refused its lock
/// takes `.collect` shared (waiting for a collector to finish) and tries once more while it
/// holds it, when no collector can hold a tree. So a refusal is a container's, never a
/// collector's.
pub struct CollectorLock(#[allow(dead_code)] Flock<File>);

fn collect_lock(arg: FlockArg) -> Result<Flock<File>> {
    let path = ns_core::paths::runtime_subdir("trees")?.join(".collect");
    ns_core::paths::lock_current(&path, arg)?
        .ok_or_else(|| Error::setup(format!("cannot lock {}", path.display())))
}

impl CollectorLock {
    /// Wait until no other collector runs, and keep starting containers from mistaking this
    /// one's tree locks for a container's.
    pub(crate) fn acquire() -> Result<CollectorLock> {
        collect_lock(FlockArg::LockExclusive).map(CollectorLock)
    }
}

impl ImageLock {
    pub fn acquire(root: &Path, shared: bool) -> Result<ImageLock> {
        Self::acquire_as("--directory", root, shared)
    }

    /// [`ImageLock::acquire`] of `root` given as `option`.
    fn acquire_as(option: &str, root: &Path, shared: bool) -> Result<ImageLock> {
        let open = || File::open(root).ctx(|| format!("cannot open {} to lock it", root.display()));
        Self::acquire_opened(option, root, &open, shared)
    }

    /// The lock of the disk image `file` (opened from `path`: the file locked is the one
    /// the caller reads, whatever is at the path by now).
    pub fn acquire_image(path: &Path, file: &File, shared: bool) -> Result<ImageLock> {
        let open = || {
            file.try_clone()
                .ctx(|| format!("cannot lock {}", path.display()))
        };
        Self::acquire_opened("--image", path, &open, shared)
    }

    fn acquire_opened(
        option: &str,
        root: &Path,
        open: &dyn Fn() -> Result<File>,
        shared: bool,
    ) -> Result<ImageLock> {
        if let Some(lock) = Self::try_acquire(root, open()?, shared)? {
            return Ok(lock);
        }
        // Held: by a container, or by a collector for a moment (see CollectorLock).
        let _no_collector = collect_lock(FlockArg::LockShared)?;
        Self::try_acquire(root, open()?, shared)?.ok_or_else(|| busy(option, root))
    }

    /// The lock of `dir` (the tree's root directory, or an image file, opened), or None
    /// when another holds it.
    fn try_acquire(root: &Path, dir: File, shared: bool) -> Result<Option<ImageLock>> {
        let st = nix::sys::stat::fstat(&dir).ctx(|| format!("cannot stat {}", root.display()))?;
        let id = (st.st_dev, st.st_ino);
        // A block device (`-i /dev/…`) is the device, whichever node names it.
        let name = match st.st_mode & libc::S_IFMT == libc::S_IFBLK {
            true => format!(
                "blk-{}:{}",
                nix::sys::stat::major(st.st_rdev),
                nix::sys::stat::minor(st.st_rdev)
            ),
            false => format!("{}:{}", id.0, id.1),
        };
        let path = ns_core::paths::runtime_subdir("trees")?.join(name);
        let arg = if shared {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let Some(lock) = ns_core::paths::lock_current(&path, arg)? else {
            return Ok(None);
        };
        let mut me = ImageLock {
            lock,
            path,
            dir: None,
            id,
            owner: std::process::id(),
        };
        match Flock::lock(dir, arg) {
            Ok(d) => me.dir = Some(d),
            // Dropping `me` removes the lock file when it was ours alone.
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if ns_run_holds(id) => return Ok(None),
            Err(_) => {}
        }
        Ok(Some(me))
    }

    /// Is this monitor now the tree's only user? (Then the lock is now exclusive.)
    pub fn sole_user(&self) -> bool {
        if self.lock.relock(FlockArg::LockExclusiveNonblock).is_err() {
            return false;
        }
        match &self.dir {
            Some(d) => d.relock(FlockArg::LockExclusiveNonblock).is_ok() || !ns_run_holds(self.id),
            None => !ns_run_holds(self.id),
        }
    }
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        // Removed only while held exclusively: a container that opened the file meanwhile
        // finds, once it has locked it, that it is no longer the file at the path
        // (lock_current looks) and takes a new one.
        if std::process::id() == self.owner
            && self.lock.relock(FlockArg::LockExclusiveNonblock).is_ok()
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Does an `ns-run` other than this process hold a flock on the directory `id` (device,
/// inode), as /proc/locks lists them, with real and effective uid both ours or both root's?
/// Such a holder is an older version's monitor (ours hold the lock file as well), or, for a
/// rootless user, one of root's containers (root's lock files are out of its reach). Another
/// user's process, even one named `ns-run` or one that ran a set-uid program after locking,
/// never counts, so a user cannot keep root's containers off a tree.
fn ns_run_holds(id: (u64, u64)) -> bool {
    use nix::sys::stat::{major, minor};
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let inode = format!("{:02x}:{:02x}:{}", major(id.0), minor(id.0), id.1);
    let me = std::process::id().to_string();
    let uid = nix::unistd::geteuid().as_raw().to_string();
    locks.lines().any(|l| {
        // "1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INO 0 EOF"; waiters have "->" after the id.
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" || f[5] != inode || f[4] == me {
            return false;
        }
        let pid = f[4];
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ids: Vec<&str> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|u| u.split_whitespace().take(2).collect())
            .unwrap_or_default();
        comm.trim() == "ns-run"
            && ids.len() == 2
            && ids[0] == ids[1]
            && (ids[0] == uid || ids[0] == "0")
            && has_open(pid, id)
    })
}

/// Has process `pid` the directory `id` (device, inode) open? /proc/locks names the process
/// that took a flock even after it died (the lock lives on in whoever inherited the file),
/// and pids are reused: a user's stale lock must not count for a later `ns-run` of root's
/// given its pid. The holder of an older version's lock (its monitor) keeps the directory
/// open. A process whose fds we may not read (root's, for a rootless user) still counts.
fn has_open(pid: &str, id: (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) => return e.kind() == std::io::ErrorKind::PermissionDenied,
    };
    fds.flatten()
        .any(|f| std::fs::metadata(f.path()).is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == id))
}

/// Is the tree at `root` unused (no container runs on it)? Then Some: the lock that keeps
/// containers off it while what the dead ones left is removed (None when the tree is gone,
/// so has no users). Only for a holder of the [`CollectorLock`].
pub(crate) fn unused_tree(_collector: &CollectorLock, root: &Path) -> Option<Option<ImageLock>> {
    if std::fs::metadata(root).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Some(None);
    }
    let dir = File::open(root).ok()?;
    ImageLock::try_acquire(root, dir, false)
        .ok()
        .flatten()
        .map(Some)
}

/// Membership of a network zone: every container of zone Z holds a shared flock on
/// /run/ns-run/zones/Z for its lifetime. The one that can upgrade it to exclusive at exit was
/// the last: it deletes the bridge, then the lock file. A container joining meanwhile blocks
/// on its shared lock until then, and re-checks that it locked the current file.
pub struct ZoneLock {
    lock: Flock<File>,
    path: PathBuf,
    pub zone: String,
}

impl ZoneLock {
    pub fn acquire(zone: &str) -> Result<ZoneLock> {
        let dir = ns_core::paths::runtime_subdir("zones")?;
        let path = dir.join(zone);
        // Blocking: the last member may be deleting the bridge; then we get the new file.
        let lock = ns_core::paths::lock_current(&path, FlockArg::LockShared)?
            .ok_or_else(|| Error::setup(format!("cannot lock {}", path.display())))?;
        Ok(ZoneLock {
            lock,
            path,
            zone: zone.to_string(),
        })
    }

    /// Was this the zone's last container? Then the lock is now exclusive.
    pub fn last_member(&self) -> bool {
        self.lock.relock(FlockArg::LockExclusiveNonblock).is_ok()
    }

    /// After the bridge is gone: remove the lock file while still holding it.
    pub fn retire(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
