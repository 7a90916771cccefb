//! Copying a tree (clone, import-fs) fd-relative (design rule 11): every step an `*at` call
//! from a directory fd we hold, with O_NOFOLLOW, so a tree that changes under us (a
//! running container's) can only make the copy fail or miss something, never reach outside
//! it. Owners, modes, times, extended attributes, hard links, symlinks, device nodes, FIFOs
//! and sockets are kept; regular files are reflinked where the file system can (FICLONE:
//! btrfs, xfs), else copied in the kernel (copy_file_range). Directories on another file
//! system (mount points) are copied empty.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use ns_core::walk::{self, kind};

/// A directory being copied: its source and copy, its source's stat (applied to the copy
/// once its entries are done), the names left, its path below the top.
struct Level {
    src: OwnedFd,
    dst: OwnedFd,
    st: FileStat,
    left: Vec<OsString>,
    rel: PathBuf,
}

/// What a copy did: bytes of file data, and how many files were reflinked.
#[derive(Default)]
pub struct Copied {
    pub bytes: u64,
    pub reflinked: u64,
}

/// Copy what is in the directory `src` into the empty directory `dst`, then `src`'s own
/// owner, mode, extended attributes and times onto `dst`. `progress` hears the bytes so far.
pub fn copy_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied, (PathBuf, Errno)> {
    let _headroom = walk::FdHeadroom::raise();
    let top = nix::sys::stat::fstat(src).map_err(|e| (PathBuf::new(), e))?;
    // The copy itself, when it is made inside what it copies (import-fs of /): skipped.
    let me = nix::sys::stat::fstat(dst).map_err(|e| (PathBuf::new(), e))?;
    let level = |src: OwnedFd, dst: OwnedFd, st: FileStat, rel: PathBuf| {
        let left = walk::names(src.as_fd()).map_err(|e| (rel.clone(), e))?;
        Ok::<_, (PathBuf, Errno)>(Level {
            src,
            dst,
            st,
            left,
            rel,
        })
    };
    let first = walk::reopen_dir(src).map_err(|e| (PathBuf::new(), e))?;
    let dst_top = walk::reopen_dir(dst).map_err(|e| (PathBuf::new(), e))?;
    let mut stack = vec![level(
        first,
        walk::reopen_dir(dst).map_err(|e| (PathBuf::new(), e))?,
        top,
        PathBuf::new(),
    )?];
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut done = Copied::default();
    while let Some(l) = stack.last_mut() {
        if super::hidden::interrupted().is_err() {
            return Err((l.rel.clone(), Errno::EINTR));
        }
        let Some(name) = l.left.pop() else {
            let l = stack.pop().expect("not empty");
            finish_dir(&l).map_err(|e| (l.rel.clone(), e))?;
            continue;
        };
        let rel = l.rel.join(&name);
        let st = match nix::sys::stat::fstatat(
            l.src.as_fd(),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => continue, // gone meanwhile (a running tree)
            r => r.map_err(|e| (rel.clone(), e))?,
        };
        if walk::is_dir(&st) {
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino) {
                continue;
            }
            if stack.len() >= walk::MAX_DEPTH {
                return Err((rel, Errno::ENAMETOOLONG));
            }
            let l = stack.last().expect("not empty");
            let (s, d) = enter_dir(l, &name, &st, top.st_dev).map_err(|e| (rel.clone(), e))?;
            let next = level(s, d, st, rel)?;
            stack.push(next);
            continue;
        }
        let l = stack.last().expect("not empty");
        if st.st_nlink > 1 && kind(&st) != SFlag::S_IFDIR {
            if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
                nix::unistd::linkat(
                    dst_top.as_fd(),
                    first.as_path(),
                    l.dst.as_fd(),
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| (rel.clone(), e))?;
                continue;
            }
            links.insert((st.st_dev, st.st_ino), rel.clone());
        }
        copy_entry(l.src.as_fd(), l.dst.as_fd(), &name, &st, &mut done)
            .map_err(|e| (rel.clone(), e))?;
        progress(done.bytes);
    }
    Ok(done)
}

/// Make the copy of directory `name` (0700 until it is done) and open both.
fn enter_dir(l: &Level, name: &OsStr, st: &FileStat, dev: u64) -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::sys::stat::mkdirat(l.dst.as_fd(), name, Mode::from_bits_truncate(0o700))?;
    let d = walk::open_dir_at(l.dst.as_fd(), name)?;
    let s = if st.st_dev == dev {
        walk::open_dir_at(l.src.as_fd(), name)?
    } else {
        // A mount point: its content is another file system's; copied empty (as the
        // directory under it), with the mount point's own attributes.
        walk::reopen_dir(d.as_fd())?
    };
    Ok((s, d))
}

fn finish_dir(l: &Level) -> nix::Result<()> {
    copy_xattrs(l.src.as_fd(), l.dst.as_fd());
    apply_stat(l.dst.as_fd(), None, &l.st)
}

/// Copy one entry that is not a directory.
fn copy_entry(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &OsStr,
    st: &FileStat,
    done: &mut Copied,
) -> nix::Result<()> {
    let k = kind(st);
    match k {
        SFlag::S_IFREG => {
            let Some(from) = open_regular(src, name)? else {
                return Ok(()); // not a file any more: changed meanwhile, as if gone
            };
            let to = ns_core::walk::create_new_at(dst, name)?;
            if ns_core::sys::reflink(to.as_fd(), from.as_fd()).is_ok() {
                done.reflinked += 1;
            } else {
                let mut f = std::fs::File::from(from.try_clone().map_err(|_| Errno::EMFILE)?);
                let mut t = std::fs::File::from(to.try_clone().map_err(|_| Errno::EMFILE)?);
                std::io::copy(&mut f, &mut t).map_err(io_errno)?;
            }
            done.bytes += st.st_size as u64;
            copy_xattrs(from.as_fd(), to.as_fd());
            apply_stat(to.as_fd(), None, st)
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(src, name)?;
            nix::unistd::symlinkat(target.as_os_str(), dst.as_fd(), name)?;
            apply_stat(dst, Some(name), st)
        }
        SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
            nix::sys::stat::mknodat(dst, name, k, Mode::from_bits_truncate(0o600), st.st_rdev)?;
            let from = walk::open_entry_at(src, name)?;
            let to = walk::open_entry_at(dst, name)?;
            copy_xattrs(from.as_fd(), to.as_fd());
            apply_stat(dst, Some(name), st)
        }
        _ => Ok(()),
    }
}

/// Open the regular file `name` of `dir` for reading, or None when it is something else
/// by now: a running tree can swap a device node in for a file between our stat and our
/// open, and a device is never opened (its open alone can act), never read into a copy or
/// an archive. Held with O_PATH first, then reopened once it is known to be a file.
pub fn open_regular(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<OwnedFd>> {
    let path = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if kind(&nix::sys::stat::fstat(path.as_fd())?) != SFlag::S_IFREG {
        return Ok(None);
    }
    super::reopen(path.as_fd(), OFlag::O_RDONLY | OFlag::O_NONBLOCK).map(Some)
}

pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The attributes a copy or an unpacked entry gets.
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
    pub symlink: bool,
}

impl Attrs {
    fn of(st: &FileStat) -> Attrs {
        Attrs {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            symlink: kind(st) == SFlag::S_IFLNK,
        }
    }
}

fn apply_stat(fd: BorrowedFd<'_>, name: Option<&OsStr>, st: &FileStat) -> nix::Result<()> {
    apply(fd, name, &Attrs::of(st))
}

/// Owner, then mode (chown clears set-id bits), then times, of the object `fd` is open on
/// (`name` of directory `fd` for a symlink or a node: never followed, never opened).
pub fn apply(fd: BorrowedFd<'_>, name: Option<&OsStr>, a: &Attrs) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid};
    let (uid, gid) = (Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)));
    let mode = Mode::from_bits_truncate(a.mode & 0o7777);
    match name {
        None => {
            nix::unistd::fchown(fd.as_fd(), uid, gid)?;
            nix::sys::stat::fchmod(fd.as_fd(), mode)?;
            nix::sys::stat::futimens(fd.as_fd(), &a.atime, &a.mtime)
        }
        Some(n) => {
            nix::unistd::fchownat(fd.as_fd(), n, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if !a.symlink {
                // A node we just made in a directory only we write: the name is still it.
                nix::sys::stat::fchmodat(
                    fd.as_fd(),
                    n,
                    mode,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?;
            }
            nix::sys::stat::utimensat(
                fd.as_fd(),
                n,
                &a.atime,
                &a.mtime,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
        }
    }
}

/// /proc/self/fd/N of an fd: the inode itself for the *xattr calls, whatever its path.
pub fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Copy every extended attribute the kernel lets us read and write (a file system without
/// them, or one refusing a name, loses that attribute, as `cp -a` does).
fn copy_xattrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let (f, t) = (fd_path(from), fd_path(to));
    let Ok(names) = xattr::list_deref(&f) else {
        return;
    };
    for n in names {
        if let Ok(Some(v)) = xattr::get_deref(&f, &n) {
            let _ = xattr::set_deref(&t, &n, &v);
        }
    }
}
