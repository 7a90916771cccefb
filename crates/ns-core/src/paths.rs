//! Where the toolkit keeps its host-side state: /run/ns-run for root; for a user without
//! root (rootless `-U`), `$XDG_RUNTIME_DIR/ns-run`, else /tmp/ns-run-UID. Every directory
//! there is made with an explicit mode and checked (a directory of ours that nobody else can
//! write, reached without a symlink) before anything in it is trusted; the files read from
//! it are opened without following symlinks and checked the same way.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};

/// Are we root on the host (not merely uid 0 in a user namespace)?
pub fn host_root() -> bool {
    nix::unistd::geteuid().is_root() && !crate::sys::in_user_namespace()
}

/// The entries of `dir` named `PREFIX<pid>` whose ns-run is gone: host-side state named by a
/// monitor's pid (cleanup journals, notify sockets, template copies) is stale then. The
/// process name is checked too, so that a reused pid does not keep stale state alive (it
/// goes a start later).
pub fn of_dead_monitors(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    // One read of a small buffer (comm is at most 16 bytes): every running container's
    // monitor is looked at by every start, so this is 3 system calls, not read_to_string's 5
    // (openat: musl's open, which std's File::open calls, adds an fcntl for O_CLOEXEC).
    let alive = |pid: &str| {
        use nix::fcntl::{openat, OFlag, AT_FDCWD};
        let mut b = [0u8; 32];
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        openat(
            AT_FDCWD,
            format!("/proc/{pid}/comm").as_str(),
            flags,
            nix::sys::stat::Mode::empty(),
        )
        .and_then(|f| nix::unistd::read(&f, &mut b))
        .is_ok_and(|n| b[..n].trim_ascii() == b"ns-run")
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix)
                .is_some_and(|pid| pid.parse::<u32>().is_ok() && !alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// The state directory, created if needed (0755 for root, 0700 for a user) and checked
/// before it is trusted (see [`private_dir`]).
pub fn runtime_dir() -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return private_dir(Path::new("/run/ns-run"), 0o755);
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(x) if x.is_dir() => x.join("ns-run"),
        _ => PathBuf::from(format!("/tmp/ns-run-{uid}")),
    };
    private_dir(&dir, 0o700)
}

/// `name` in the state directory (machines, cleanup, zones, notify, uid, scratch, trees), created
/// and checked as the state directory itself.
pub fn runtime_subdir(name: &str) -> Result<PathBuf> {
    let mode = if nix::unistd::geteuid().is_root() {
        0o755
    } else {
        0o700
    };
    private_dir(&runtime_dir()?.join(name), mode)
}

/// A directory of ours that nobody else can change: made with exactly `mode` when missing
/// (whatever the umask), then checked through an fd opened without following a symlink. It
/// must be a directory, owned by our effective uid, and writable by nobody else; anything
/// else is refused, naming the path, its owner and its mode (another user may have made it
/// first and planted entries in it).
pub fn private_dir(path: &Path, mode: u32) -> Result<PathBuf> {
    checked_dir(path, mode, false)
}

/// A directory that is only a mount point (its content never matters: something is
/// mounted over it, through an fd opened without following a symlink), made and checked as
/// [`private_dir`], except that one of ours with too open a mode gets `mode` again instead
/// of being refused: older versions made the scratch directory under umask 0 (0777), and a
/// host upgraded without a reboot must still start containers.
pub fn mount_point_dir(path: &Path, mode: u32) -> Result<PathBuf> {
    checked_dir(path, mode, true)
}

/// Directories this process has already made or checked, with the euid that checked them
/// and what the check found (device, inode): a monitor asks for /run/ns-run several times per
/// start. A second look is one lstat: the same directory, still ours. Their parents belong to
/// the same user (or /run, /tmp's sticky bit), so nobody else can swap them, but their owner
/// (or tmpfiles' ageing of /tmp) can remove one while a monitor runs, and another local user
/// make it again: that one is checked afresh (and refused).
static CHECKED: std::sync::Mutex<Vec<Checked>> = std::sync::Mutex::new(Vec::new());

/// A directory checked, the euid that checked it, its (device, inode) then.
type Checked = (PathBuf, u32, (u64, u64));

fn checked_dir(path: &Path, mode: u32, repair: bool) -> Result<PathBuf> {
    let me = nix::unistd::geteuid().as_raw();
    let now = || {
        nix::sys::stat::lstat(path)
            .ok()
            .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_uid == me)
    };
    let seen = |c: &Vec<Checked>| {
        c.iter()
            .find(|(p, u, _)| p == path && *u == me)
            .map(|(_, _, id)| *id)
    };
    if let Some(id) = CHECKED.lock().ok().and_then(|c| seen(&c)) {
        if now().is_some_and(|st| (st.st_dev, st.st_ino) == id) {
            return Ok(path.to_path_buf());
        }
    }
    let dir = check_dir(path, mode, repair)?;
    if let (Some(st), Ok(mut c)) = (now(), CHECKED.lock()) {
        c.retain(|(p, u, _)| !(p == &dir && *u == me));
        c.push((dir.clone(), me, (st.st_dev, st.st_ino)));
    }
    Ok(dir)
}

fn check_dir(path: &Path, mode: u32, repair: bool) -> Result<PathBuf> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let created = match nix::unistd::mkdir(path, Mode::from_bits_truncate(mode)) {
        Ok(()) => true,
        Err(nix::errno::Errno::EEXIST) => false,
        Err(e) => {
            return Err(Error::setup(format!(
                "cannot create {}: {}",
                path.display(),
                e.desc()
            )))
        }
    };
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
            let st = nix::sys::stat::lstat(path).ok();
            return Err(untrusted(
                path,
                st.map(|s| s.st_uid),
                st.map(|s| s.st_mode),
                if st.is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK) {
                    "a symlink"
                } else {
                    "not a directory"
                },
            ));
        }
        Err(e) => {
            return Err(Error::setup(format!(
                "cannot open {}: {}",
                path.display(),
                e.desc()
            )))
        }
    };
    let ours_too_open = || {
        nix::sys::stat::fstat(&fd).is_ok_and(|st| {
            st.st_mode & libc::S_IFMT == libc::S_IFDIR
                && st.st_uid == nix::unistd::geteuid().as_raw()
                && st.st_mode & 0o7777 != mode
        })
    };
    if created || (repair && ours_too_open()) {
        // mkdir honoured the umask: the mode is what we say.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
            .ctx(|| format!("cannot chmod {}", path.display()))?;
    }
    let st = nix::sys::stat::fstat(&fd).ctx(|| format!("cannot stat {}", path.display()))?;
    check_ours(path, &st, "a directory")?;
    Ok(path.to_path_buf())
}

/// Check that an object we opened (without following symlinks) is ours: owned by our
/// effective uid and writable by nobody else. `what`: "a directory" or "a file".
pub fn check_ours(path: &Path, st: &libc::stat, what: &str) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let kind = st.st_mode & libc::S_IFMT;
    let want = if what == "a directory" {
        libc::S_IFDIR
    } else {
        libc::S_IFREG
    };
    if kind != want {
        return Err(untrusted(
            path,
            Some(st.st_uid),
            Some(st.st_mode),
            &format!("not {what}"),
        ));
    }
    if st.st_uid != me || st.st_mode & 0o022 != 0 {
        return Err(untrusted(
            path,
            Some(st.st_uid),
            Some(st.st_mode),
            &format!("not {what} of uid {me} that only it can write"),
        ));
    }
    Ok(())
}

/// "PATH is owned by uid N (NAME) with mode 0777: not ...; refusing to use it".
fn untrusted(path: &Path, uid: Option<u32>, mode: Option<u32>, why: &str) -> Error {
    let owner = match uid {
        Some(u) => match user_name(u) {
            Some(n) => format!("uid {u} ({n})"),
            None => format!("uid {u}"),
        },
        None => "?".into(),
    };
    let mode = mode.map_or("?".into(), |m| format!("{:04o}", m & 0o7777));
    Error::setup(format!(
        "{} is owned by {owner} with mode {mode}: {why}; refusing to use it",
        path.display()
    ))
}

/// The name of host user `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == uid.to_string())
        .map(|f| f[0].to_string())
}

/// A file of a runtime directory of ours, opened to read: without following a symlink,
/// without blocking on a FIFO, and only if it is a regular file of ours ([`check_ours`]).
pub fn open_ours(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ctx(|| format!("cannot open {}", path.display()))?;
    let st = nix::sys::stat::fstat(&f).ctx(|| format!("cannot stat {}", path.display()))?;
    check_ours(path, &st, "a file")?;
    Ok(f)
}

/// Open a file of a runtime directory of ours to read it: without following a symlink,
/// without blocking on a FIFO, and only if it is a regular file of ours (see
/// [`check_ours`]); at most `max` bytes are read.
pub fn read_ours(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_ours(path)?;
    let mut buf = Vec::new();
    f.take(max)
        .read_to_end(&mut buf)
        .ctx(|| format!("cannot read {}", path.display()))?;
    Ok(buf)
}

/// A small regular file of a tree that is not ours (an image, a running container's root
/// through /proc/PID/root), read without leaving it: openat2 RESOLVE_IN_ROOT (a symlink in
/// there is resolved in there, never on the host), O_NONBLOCK (a FIFO does not hang us),
/// regular files only, at most `max` bytes.
pub fn read_in_root(root: &Path, rel: &str, max: u64) -> Option<Vec<u8>> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(&rootfd, rel, how).ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(max)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// Is `path` a plain absolute path (no `.`, `..` or empty components, not `/`) strictly
/// below `dir`?
pub fn plainly_below(path: &Path, dir: &Path) -> bool {
    use std::path::Component;
    let plain = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    plain(path) && plain(dir) && path != dir && path.starts_with(dir)
}

/// Is `path` a cgroup directory: plainly below /sys/fs/cgroup, reached without a final
/// symlink, on a cgroup file system? (What a registry entry or a journal names as a cgroup
/// is written to or removed only then.)
pub fn is_cgroup_dir(path: &Path) -> bool {
    use nix::fcntl::OFlag;
    use nix::sys::statfs::{fstatfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    if !plainly_below(path, Path::new("/sys/fs/cgroup")) {
        return false;
    }
    let Ok(fd) = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    fstatfs(&fd).is_ok_and(|s| {
        s.filesystem_type() == CGROUP_SUPER_MAGIC || s.filesystem_type() == CGROUP2_SUPER_MAGIC
    })
}

/// Where nspawn's `-M NAME` (without `-D`), `machinectl start` and `machinectl list-images`
/// find machine images, in their order (/etc/machines and /run/machines are meant for
/// symlinks to images kept elsewhere).
pub const IMAGE_DIRS: &[&str] = &[
    "/etc/machines",
    "/run/machines",
    "/var/lib/machines",
    "/var/lib/container",
    "/usr/local/lib/machines",
    "/usr/lib/machines",
];

/// The directory image NAME in the first of [`IMAGE_DIRS`] that has it.
pub fn find_image(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    IMAGE_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_dir())
}

/// The disk image NAME.raw in the first of [`IMAGE_DIRS`] that has it (`-M NAME` without a
/// directory image NAME, as nspawn finds one).
pub fn find_raw_image(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    IMAGE_DIRS
        .iter()
        .map(|d| Path::new(d).join(format!("{name}.raw")))
        .find(|p| p.metadata().is_ok_and(|m| !m.is_dir()))
}

/// Is the image at `path` (found by [`find_image`] or [`find_raw_image`]) read-only as
/// machinectl marks it: under /usr, a directory with the immutable flag on its top
/// (`machinectl read-only`, `ns-ctl read-only`), a file without write bits. nspawn runs
/// such an image `-M NAME` read-only; so does ns-run.
pub fn image_read_only(path: &Path) -> bool {
    use nix::fcntl::OFlag;
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;
    if path.starts_with("/usr") {
        return true;
    }
    let Ok(fd) = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    match nix::sys::stat::fstat(&fd) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            use std::os::fd::AsFd;
            crate::sys::inode_flags(fd.as_fd()).is_ok_and(|f| f & FS_IMMUTABLE_FL != 0)
        }
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => st.st_mode & 0o222 == 0,
        _ => false,
    }
}

/// Lock the file at `path` (created if missing, never through a symlink, refused unless it
/// is ours: see [`check_ours`]) with `how`; None when a non-blocking lock is held by someone
/// else. Lock files are 0600 (an older version's 0644 ones are made so): flock needs only an
/// fd, so a user who could open one could hold it (keep a dead container's registry entry
/// "running", take every id range, hang a zone's next member). Re-checks that the file locked is still the one at `path`: whoever
/// held it last may have unlinked it meanwhile (the last member of a zone, the remover of a
/// stale registry entry), and a lock on an unlinked file guards nothing.
pub fn lock_current(
    path: &Path,
    how: nix::fcntl::FlockArg,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::Flock;
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        let f = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .ctx(|| format!("cannot open {}", path.display()))?;
        let mut st = nix::sys::stat::fstat(&f).ctx(|| format!("cannot stat {}", path.display()))?;
        // A lock file's content is nothing: one of ours that others could open (an older
        // version's, made under some umask) is only made 0600.
        let ours = st.st_uid == nix::unistd::geteuid().as_raw();
        if ours && st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o077 != 0 {
            nix::sys::stat::fchmod(
                &f,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .ctx(|| format!("cannot chmod {}", path.display()))?;
            st = nix::sys::stat::fstat(&f).ctx(|| format!("cannot stat {}", path.display()))?;
        }
        check_ours(path, &st, "a file")?;
        let lock = match Flock::lock(f, how) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => {
                return Err(Error::setup(format!(
                    "cannot lock {}: {}",
                    path.display(),
                    e.desc()
                )))
            }
        };
        let held = lock.metadata().map(|m| m.ino()).ok();
        let current = std::fs::metadata(path).map(|m| m.ino()).ok();
        if held.is_some() && held == current {
            return Ok(Some(lock));
        }
    }
}

/// `value` of `option` as an absolute path (a relative one from the working directory), for
/// a path used after the working directory may have changed; an empty one refused.
pub fn absolute(option: &str, value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::invalid(option, value, "an empty path"));
    }
    std::path::absolute(value).map_err(|e| Error::invalid(option, value, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plainly_below_wants_plain_absolute_paths_strictly_inside() {
        let below = |p: &str, d: &str| plainly_below(Path::new(p), Path::new(d));
        assert!(below("/srv/tree/mnt", "/srv/tree"));
        assert!(below("/srv/tree/a/b", "/srv/tree"));
        assert!(!below("/srv/tree", "/srv/tree"));
        assert!(!below("/srv/treeX/a", "/srv/tree"));
        assert!(!below("/srv/tree/../etc", "/srv/tree"));
        assert!(!below("srv/tree/a", "srv/tree"));
        assert!(below("/etc", "/"));
        assert!(!below("/", "/"));
        assert!(below("/sys/fs/cgroup/x", "/sys/fs/cgroup"));
        assert!(!below("/sys/fs/cgroup/../../tmp", "/sys/fs/cgroup"));
    }

    #[test]
    fn a_private_dir_is_made_with_its_mode_and_refused_when_open_to_others() {
        let base = std::env::temp_dir().join(format!("ns-core-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let d = base.join("d");
        let made = private_dir(&d, 0o700);
        nix::sys::stat::umask(old);
        assert!(made.is_ok(), "{made:?}");
        let mode = |p: &Path| nix::sys::stat::lstat(p).unwrap().st_mode & 0o7777;
        assert_eq!(mode(&d), 0o700);
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &d,
            nix::sys::stat::Mode::from_bits_truncate(0o777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .unwrap();
        // Checked once per process: a new check (as the next process would make) refuses it.
        assert!(private_dir(&d, 0o700).is_ok());
        let e = check_dir(&d, 0o700, false).unwrap_err();
        assert!(e.msg.contains("with mode 0777"), "{}", e.msg);
        let link = base.join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = private_dir(&link, 0o700).unwrap_err();
        assert!(e.msg.contains("a symlink"), "{}", e.msg);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_checked_dir_removed_and_made_again_by_another_user_is_refused() {
        // /tmp/ns-run-UID removed (its user, tmpfiles' ageing) while a monitor runs, and made
        // again by another local user: the monitor's next look must not trust it from memory.
        if !nix::unistd::geteuid().is_root() {
            return; // making a directory of another user's takes root
        }
        let base = std::env::temp_dir().join(format!("ns-core-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let d = base.join("d");
        assert!(private_dir(&d, 0o700).is_ok());
        std::fs::remove_dir(&d).unwrap();
        std::fs::create_dir(&d).unwrap();
        let other = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&d, Some(other), None).unwrap();
        let e = private_dir(&d, 0o700).unwrap_err();
        assert!(e.msg.contains("uid 65534"), "{}", e.msg);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
