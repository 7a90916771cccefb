//! Host-side objects the monitor owns: the image lock, and the paths the chain created on the
//! host (SYNC-4) that it removes once the container is gone. Both survive a killed monitor
//! gracefully: the lock is a flock (released by the kernel; its file is taken again), and
//! the cleanup list is journaled under /run/ns-run/cleanup, collected by the next ns-run.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use ns_core::{Context, Error, Result};
use serde::{Deserialize, Serialize};

fn cleanup_dir() -> Result<PathBuf> {
    ns_core::paths::runtime_subdir("cleanup")
}

/// Largest journal read back.
const MAX_JOURNAL: u64 = 1 << 20;

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

fn busy(root: &Path) -> Error {
    Error::invalid(
        "--directory",
        &root.to_string_lossy(),
        "directory tree is currently busy (another container uses it; -x or --read-only can share it)",
    )
}

impl ImageLock {
    pub fn acquire(root: &Path, shared: bool) -> Result<ImageLock> {
        let dir = File::open(root).ctx(|| format!("cannot open {} to lock it", root.display()))?;
        let st = nix::sys::stat::fstat(&dir).ctx(|| format!("cannot stat {}", root.display()))?;
        let id = (st.st_dev, st.st_ino);
        let path = ns_core::paths::runtime_subdir("trees")?.join(format!("{}:{}", id.0, id.1));
        let arg = if shared {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let lock = ns_core::paths::lock_current(&path, arg)?.ok_or_else(|| busy(root))?;
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
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if ns_run_holds(id) => return Err(busy(root)),
            Err(_) => {}
        }
        Ok(me)
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
/// so has no users).
fn unused_tree(root: &Path) -> Option<Option<ImageLock>> {
    if std::fs::metadata(root).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Some(None);
    }
    ImageLock::acquire(root, false).ok().map(Some)
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The tree whose container created it (removal waits until nobody uses the tree).
    root: PathBuf,
    path: PathBuf,
    recursive: bool,
    /// A cgroup: removed with the cgroups below it, deepest first.
    #[serde(default)]
    cgroup: bool,
    /// A level of a `-S` slice this container made (shared with others): removed after the
    /// cgroups, only while empty.
    #[serde(default)]
    slice: bool,
}

impl Entry {
    /// Only what a monitor creates may be removed: a cgroup (plainly below /sys/fs/cgroup,
    /// and a cgroup directory while it exists), an overlay work directory (`.#…`, the only
    /// thing removed with its content), or a mount point plainly inside the tree.
    fn plausible(&self) -> bool {
        use ns_core::paths::{is_cgroup_dir, plainly_below};
        if self.cgroup {
            return plainly_below(&self.path, Path::new("/sys/fs/cgroup"))
                && (is_cgroup_dir(&self.path) || std::fs::symlink_metadata(&self.path).is_err());
        }
        if self.recursive {
            return plainly_below(&self.path, Path::new("/"))
                && self
                    .path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".#"));
        }
        plainly_below(&self.path, &self.root)
    }
}

/// Paths to remove after the container, journaled as they are announced.
pub struct Cleanup {
    root: PathBuf,
    journal: Option<(PathBuf, File)>,
    entries: Vec<Entry>,
    /// Our journal is a dead monitor's that had our pid and still lists what could not be
    /// removed yet: left for a later collection, not removed with our entries.
    adopted: bool,
}

impl Cleanup {
    pub fn new(root: &Path) -> Cleanup {
        Cleanup {
            root: root.to_path_buf(),
            journal: None,
            entries: Vec::new(),
            adopted: false,
        }
    }

    /// SYNC-4 received: remember and journal before the stage creates it.
    pub fn add(&mut self, path: PathBuf, recursive: bool) -> Result<()> {
        self.journal(Entry {
            root: self.root.clone(),
            path,
            recursive,
            cgroup: false,
            slice: false,
        })
    }

    /// The container's own cgroup (or a level of its slice), made by the monitor.
    pub fn add_cgroup(&mut self, path: PathBuf, slice: bool) -> Result<()> {
        self.journal(Entry {
            root: self.root.clone(),
            path,
            recursive: false,
            cgroup: true,
            slice,
        })
    }

    fn journal(&mut self, e: Entry) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if !e.plausible() {
            return Err(Error::setup(format!(
                "refusing to remove {} after the container: not a path its setup creates",
                e.path.display()
            )));
        }
        if self.journal.is_none() {
            let dir = cleanup_dir()?;
            let p = dir.join(std::process::id().to_string());
            // A dead monitor's journal with our pid was collected at our start
            // (collect_stale(true)); one still there lists what was busy then: we append to
            // it and leave it to be collected after us.
            self.adopted = std::fs::symlink_metadata(&p).is_ok();
            let f = File::options()
                .append(true)
                .create_new(!self.adopted)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&p)
                .ctx(|| format!("cannot create {}", p.display()))?;
            let st = nix::sys::stat::fstat(&f).ctx(|| format!("cannot stat {}", p.display()))?;
            ns_core::paths::check_ours(&p, &st, "a file")?;
            self.journal = Some((p, f));
        }
        let (p, f) = self.journal.as_mut().expect("journal opened");
        let mut line = serde_json::to_vec(&e).expect("entry serializes");
        line.push(b'\n');
        f.write_all(&line)
            .ctx(|| format!("cannot write {}", p.display()))?;
        self.entries.push(e);
        Ok(())
    }

    /// The container is gone: remove what it created, unless another container still uses
    /// the tree (then the journal stays for a later ns-run to collect).
    pub fn run(self, lock: Option<&ImageLock>) {
        let Some((journal, _)) = self.journal else {
            return;
        };
        // The container's cgroups are its alone: always removed now.
        let gone = remove_cgroups(&self.entries);
        let paths = self.entries.iter().any(|e| !e.cgroup);
        if paths && lock.is_some_and(|l| !l.sole_user()) {
            // Paths on a tree others still use: left to the last of them (below).
            return;
        }
        remove_paths(&self.entries);
        if gone && !self.adopted {
            let _ = std::fs::remove_file(journal);
        }
        if paths {
            // The last user of a shared tree also removes what the earlier ones left.
            let _ = collect_stale(false);
        }
    }
}

/// Remove the cgroups `entries` name; false when one could not be removed (still busy), so
/// that the journal stays for the next ns-run.
fn remove_cgroups(entries: &[Entry]) -> bool {
    let gone = entries
        .iter()
        .filter(|e| e.cgroup && !e.slice)
        .map(|e| ns_host::cgroups::remove(&e.path)) // every one tried
        .filter(|gone| !gone)
        .count()
        == 0;
    // Slice levels, deepest first; one still holding another container's cgroup stays.
    for e in entries.iter().rev().filter(|e| e.slice) {
        let _ = std::fs::remove_dir(&e.path);
    }
    gone
}

/// Remove the paths `entries` name (not cgroups), last first.
fn remove_paths(entries: &[Entry]) {
    for e in entries.iter().rev().filter(|e| !e.cgroup) {
        remove_no_symlinks(&e.path, e.recursive);
    }
}

/// Remove `path` (a created mount point, or a work directory when `recursive`) only if no
/// component of it is a symlink now: the container may have replaced a directory on the way
/// with a link to somewhere else on the host. A mount point goes only while empty.
fn remove_no_symlinks(path: &Path, recursive: bool) {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let Ok(dir) = nix::fcntl::openat2(nix::fcntl::AT_FDCWD, parent, how) else {
        return;
    };
    let Ok(st) = nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
    else {
        return;
    };
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFDIR {
        if recursive {
            // Our own uniquely named work directory; reached without symlinks.
            let _ = std::fs::remove_dir_all(format!(
                "/proc/self/fd/{}/{}",
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                name.to_string_lossy()
            ));
        } else {
            let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::RemoveDir);
        }
    } else if kind == libc::S_IFREG && st.st_size == 0 && !recursive {
        // A mount point file we created empty; anything written to it stays.
        let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

/// Remove what dead monitors left behind (killed before they could clean up): what their
/// cleanup journals list. (Their notify sockets go when the next socket is bound.) A journal
/// that is not ours (another owner, writable by others, a symlink, not a regular file) is
/// left alone, and of the entries of ours only what a monitor creates is removed.
/// `at_start`: a monitor that has no journal yet; one named with its pid is a dead
/// monitor's (of_dead_monitors takes it for a live one: the pid is ours, and ns-run).
pub fn collect_stale(at_start: bool) -> Result<()> {
    let dir = cleanup_dir()?;
    let mut journals = ns_core::paths::of_dead_monitors(&dir, "");
    let own = dir.join(std::process::id().to_string());
    if at_start && std::fs::symlink_metadata(&own).is_ok() {
        journals.push(own);
    }
    for journal in journals {
        let Ok(text) = ns_core::paths::read_ours(&journal, MAX_JOURNAL) else {
            continue;
        };
        let entries: Vec<Entry> = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
            .filter(Entry::plausible)
            .collect();
        // The cgroups were the dead container's alone; its paths wait until nobody runs on
        // their tree.
        let gone = remove_cgroups(&entries);
        // Their trees, locked while the paths go (a journal names one).
        let mut roots: Vec<&Path> = Vec::new();
        for e in entries.iter().filter(|e| !e.cgroup) {
            if !roots.contains(&e.root.as_path()) {
                roots.push(&e.root);
            }
        }
        let Some(_locks) = roots
            .into_iter()
            .map(unused_tree)
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        remove_paths(&entries);
        if gone {
            let _ = std::fs::remove_file(&journal);
        }
    }
    Ok(())
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

/// A user namespace that maps only `uid`/`gid` (as ids inside it) to host id `base`: the id
/// mapping of a `rootidmap` bind, where the source's owner is container root and every other
/// id is nobody. A short-lived child creates it; we keep an fd and let the child go.
pub fn mapping_userns(uid: u32, gid: u32, base: u32) -> Result<File> {
    use ns_core::sys::{fork, Forked};
    let (ready_r, ready_w) = nix::unistd::pipe().ctx(|| "cannot create a pipe".into())?;
    match fork().ctx(|| "cannot fork".into())? {
        Forked::Child => {
            drop(ready_r);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_w, if ok { b"1" } else { b"0" });
            // Wait to be killed (the parent holds the namespace by then).
            loop {
                nix::unistd::pause();
            }
        }
        Forked::Parent(child) => {
            drop(ready_w);
            let mut b = [0u8; 1];
            let r = nix::unistd::read(&ready_r, &mut b);
            let result = if r == Ok(1) && b[0] == b'1' {
                std::fs::write(
                    format!("/proc/{child}/uid_map"),
                    format!("{uid} {base} 1\n"),
                )
                .and_then(|_| {
                    std::fs::write(
                        format!("/proc/{child}/gid_map"),
                        format!("{gid} {base} 1\n"),
                    )
                })
                .and_then(|_| File::open(format!("/proc/{child}/ns/user")))
                .ctx(|| "cannot set up the rootidmap mapping".into())
            } else {
                Err(Error::setup(
                    "cannot create the rootidmap user namespace".into(),
                ))
            };
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// The guest's sd_notify socket (`/run/host/notify` inside): a datagram socket in our runtime
/// dir, removed when dropped. Like nspawn's, only container root may send to it: the socket
/// is mode 0600 and owned by `owner` (container root on the host, for user namespaces).
pub struct NotifySocket {
    pub socket: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
}

impl NotifySocket {
    pub fn bind(owner: Option<u32>) -> Result<NotifySocket> {
        use std::os::unix::fs::PermissionsExt;
        let dir = ns_core::paths::runtime_subdir("notify")?;
        // Sockets of monitors that were killed: collected here, off the path of other starts.
        for p in ns_core::paths::of_dead_monitors(&dir, "") {
            let _ = std::fs::remove_file(p);
        }
        let path = dir.join(std::process::id().to_string());
        let _ = std::fs::remove_file(&path); // a dead monitor's, with our pid
        let socket = std::os::unix::net::UnixDatagram::bind(&path)
            .ctx(|| format!("cannot bind {}", path.display()))?;
        socket
            .set_nonblocking(true)
            .ctx(|| "cannot make the notify socket non-blocking".into())?;
        let n = NotifySocket { socket, path };
        std::fs::set_permissions(&n.path, std::fs::Permissions::from_mode(0o600))
            .ctx(|| format!("cannot chmod {}", n.path.display()))?;
        if let Some(id) = owner {
            std::os::unix::fs::lchown(&n.path, Some(id), Some(id))
                .ctx(|| format!("cannot chown {} to {id}", n.path.display()))?;
        }
        Ok(n)
    }

    /// The guest said READY=1 (in what it sent now)?
    pub fn ready(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Ok(n) = self.socket.recv(&mut buf) {
            ready |= String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1");
        }
        ready
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// sd_notify(READY=1) to our own supervisor, if it gave us a NOTIFY_SOCKET.
pub fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let addr = match target.strip_prefix('@') {
        Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&target),
    };
    if let Ok(a) = addr {
        let _ = sock.send_to_addr(b"READY=1\n", &a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, recursive: bool, cgroup: bool) -> Entry {
        Entry {
            root: PathBuf::from("/srv/tree"),
            path: PathBuf::from(path),
            recursive,
            cgroup,
            slice: false,
        }
    }

    #[test]
    fn only_what_a_monitor_creates_is_plausible() {
        assert!(entry("/srv/tree/mnt", false, false).plausible());
        assert!(!entry("/srv/other", false, false).plausible());
        assert!(!entry("/srv/tree/../etc", false, false).plausible());
        assert!(!entry("/srv/tree", false, false).plausible());
        assert!(entry("/srv/.#upper0123456789abcdef", true, false).plausible());
        assert!(!entry("/srv/tree/upper", true, false).plausible());
        assert!(!entry("/home", true, false).plausible());
        // A cgroup that no longer exists is plausible (nothing to do); a path outside the
        // cgroup file system never is.
        assert!(entry("/sys/fs/cgroup/ns-run-gone-4242424242", false, true).plausible());
        assert!(!entry("/tmp/x", false, true).plausible());
        assert!(!entry("/sys/fs/cgroup/../../tmp", false, true).plausible());
    }
}
