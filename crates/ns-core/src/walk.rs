//! Walking directory trees that someone else may change while we walk them (design rule
//! 11): a template's copy in a directory another user owns, a container's tree being
//! shifted, leftovers being removed. Every step is an `*at` call relative to a directory fd
//! we hold, with `O_NOFOLLOW`, never a path resolved again, so a directory swapped for a
//! symlink mid-walk can only make the walk fail. Walks keep an explicit stack (no
//! recursion), at most [`MAX_DEPTH`] directories deep, with the soft fd limit raised to the
//! hard one meanwhile ([`FdHeadroom`]): one fd per level and tree is what they hold.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

/// How deep a walk goes before it gives up (nspawn's copy stops at 2048 too).
pub const MAX_DEPTH: usize = 2048;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK);

/// Open the directory `name` of `dir`, not following a symlink (ELOOP or ENOTDIR then).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// An O_PATH fd of the entry `name` of `dir` itself (a symlink is not followed): to stat
/// and chown exactly the inode we looked at.
pub fn open_entry_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// A new regular file `name` in `dir`, opened to write (0600 until its owner and mode are
/// applied): O_EXCL, so never one that is there, nor through a symlink.
pub fn create_new_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
}

/// A second fd of the directory `dir` is open on, with its own read position.
pub fn reopen_dir(dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(dir, ".", DIR_FLAGS, Mode::empty())
}

/// The names in the directory `dir` is open on, but `.` and `..`, in reverse order of
/// reading (pop them to go in order).
pub fn names(dir: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
    let mut d = nix::dir::Dir::from_fd(reopen_dir(dir)?)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    out.reverse();
    Ok(out)
}

/// The file type bits of a stat.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Is this stat a directory's?
pub fn is_dir(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFDIR
}

/// The soft RLIMIT_NOFILE raised to the hard limit while this lives (a deep walk holds an
/// fd per level), put back on drop so that what we start later inherits the usual limit.
pub struct FdHeadroom(Option<(u64, u64)>);

impl FdHeadroom {
    pub fn raise() -> FdHeadroom {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let old = getrlimit(Resource::RLIMIT_NOFILE).ok();
        let raised = old.filter(|(soft, hard)| {
            soft < hard && { setrlimit(Resource::RLIMIT_NOFILE, *hard, *hard).is_ok() }
        });
        FdHeadroom(raised)
    }
}

impl Drop for FdHeadroom {
    fn drop(&mut self) {
        if let Some((soft, hard)) = self.0 {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                soft,
                hard,
            );
        }
    }
}

/// Remove everything in the directory `dir` is open on: fd-relative, symlinks removed
/// rather than followed, never into another file system (a mount point is left, and so
/// is its parent). Stops at the first error.
pub fn remove_contents(dir: BorrowedFd<'_>) -> nix::Result<()> {
    let dev = nix::sys::stat::fstat(dir)?.st_dev;
    // (directory, names left in it, its name in the level above)
    let mut stack: Vec<(OwnedFd, Vec<OsString>, Option<OsString>)> =
        vec![(reopen_dir(dir)?, names(dir)?, None)];
    while let Some((fd, left, _)) = stack.last_mut() {
        let Some(name) = left.pop() else {
            let (_, _, name) = stack.pop().expect("not empty");
            if let (Some(name), Some((parent, _, _))) = (name, stack.last()) {
                ignore_gone(nix::unistd::unlinkat(
                    parent.as_fd(),
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::RemoveDir,
                ))?;
            }
            continue;
        };
        let st = match nix::sys::stat::fstatat(
            fd.as_fd(),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => continue,
            r => r?,
        };
        if !is_dir(&st) {
            ignore_gone(nix::unistd::unlinkat(
                fd.as_fd(),
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ))?;
        } else if st.st_dev == dev {
            let sub = open_dir_at(fd.as_fd(), &name)?;
            let left = names(sub.as_fd())?;
            if stack.len() >= MAX_DEPTH {
                return Err(Errno::ENAMETOOLONG);
            }
            stack.push((sub, left, Some(name)));
        } else {
            return Err(Errno::EXDEV);
        }
    }
    Ok(())
}

/// Remove the entry `name` of `parent` (with all below it if it is a directory, as
/// [`remove_contents`] does). Nothing there is no error. `name` is one entry: `.`, `..`,
/// an empty name or one with a `/` is refused (EINVAL), never resolved to `parent` itself
/// or a directory above it.
pub fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let b = name.as_encoded_bytes();
    if matches!(b, b"" | b"." | b"..") || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    let st = match nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r?,
    };
    if is_dir(&st) {
        let d = open_dir_at(parent, name)?;
        remove_contents(d.as_fd())?;
        ignore_gone(nix::unistd::unlinkat(
            parent,
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        ))
    } else {
        ignore_gone(nix::unistd::unlinkat(
            parent,
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ))
    }
}

fn ignore_gone(r: nix::Result<()>) -> nix::Result<()> {
    match r {
        Err(Errno::ENOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_a_tree_but_not_what_its_symlinks_point_to() {
        let base = std::env::temp_dir().join(format!("ns-walk-rm-{}", std::process::id()));
        let keep = base.join("keep");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(keep.join("f"), "x").unwrap();
        let t = base.join("t");
        std::fs::create_dir_all(t.join("a/b/c")).unwrap();
        std::fs::write(t.join("a/b/c/f"), "x").unwrap();
        symlink(&keep, t.join("a/link")).unwrap();
        let parent = nix::fcntl::open(&base, DIR_FLAGS, Mode::empty()).unwrap();
        remove_at(parent.as_fd(), OsStr::new("t")).unwrap();
        assert!(!t.exists());
        assert!(keep.join("f").exists());
        // A symlink at the top is removed, not followed; nothing there is fine.
        symlink(&keep, base.join("l")).unwrap();
        remove_at(parent.as_fd(), OsStr::new("l")).unwrap();
        remove_at(parent.as_fd(), OsStr::new("l")).unwrap();
        assert!(keep.join("f").exists());
        // Never the directory itself, one above it, or a path.
        let kp = nix::fcntl::open(&keep, DIR_FLAGS, Mode::empty()).unwrap();
        for n in ["..", ".", "", "f/"] {
            assert_eq!(
                remove_at(kp.as_fd(), OsStr::new(n)),
                Err(Errno::EINVAL),
                "{n}"
            );
        }
        assert!(keep.join("f").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
