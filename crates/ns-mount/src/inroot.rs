//! Opening and mounting on paths inside the image.
//!
//! Every target inside the image is opened with openat2(RESOLVE_IN_ROOT) and mounted on
//! through its `/proc/self/fd/N` path, so a symlink in the image can never redirect a mount
//! onto the host. A mount point that is missing in the image is created (as nspawn does).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use ns_core::{Context, Error, Result};

/// What to create when a mount point is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// A plain (non-recursive) bind mount of `src` on `dst`.
pub(crate) fn bind_mount(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> nix::Result<()> {
    mount(
        Some(src.as_ref()),
        dst.as_ref(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

pub(crate) fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Open `path` (absolute, inside the container) without leaving the root; create it, and its
/// missing parents as directories, when `create` says what it should be. A dangling symlink
/// on the way is followed inside the image, as nspawn does, and its target created.
pub fn open_in_root(root: &OwnedFd, path: &Path, create: Option<Kind>) -> Result<OwnedFd> {
    open_in_root_depth(root, path, create, 0)
}

/// Open `path` inside the root if it is there: `None` when it (or a directory on the way) is
/// missing, or something on the way is not a directory.
pub fn open_existing(root: &OwnedFd, path: &Path) -> Result<Option<OwnedFd>> {
    match nix::fcntl::openat2(root.as_fd(), &relative(path), in_root()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(Error::setup(format!(
            "cannot open {} in the container: {}",
            path.display(),
            e.desc()
        ))),
    }
}

/// An O_PATH open that never leaves the root.
fn in_root() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn open_in_root_depth(
    root: &OwnedFd,
    path: &Path,
    create: Option<Kind>,
    depth: u32,
) -> Result<OwnedFd> {
    let rel = relative(path);
    let how = in_root();
    let cannot = |e: Errno| {
        Error::setup(format!(
            "cannot open {} in the container: {}",
            path.display(),
            e.desc()
        ))
    };
    match nix::fcntl::openat2(root.as_fd(), &rel, how) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) if create.is_some() && rel != Path::new(".") && depth < 40 => {
            let parent_path = path.parent().unwrap_or(Path::new("/"));
            let parent = open_in_root_depth(root, parent_path, Some(Kind::Dir), depth + 1)?;
            let Some(name) = rel.file_name() else {
                return Err(Error::setup(format!(
                    "cannot create mount point {}: not a plain path",
                    path.display()
                )));
            };
            if let Ok(target) = nix::fcntl::readlinkat(parent.as_fd(), name) {
                // A dangling symlink: create what it points to, inside the image.
                let target = Path::new(&target);
                let next = if target.is_absolute() {
                    target.to_path_buf()
                } else {
                    parent_path.join(target)
                };
                return open_in_root_depth(root, &next, create, depth + 1);
            }
            report_creation(&parent, name.as_ref())?;
            let r = match create {
                Some(Kind::Dir) => {
                    nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755))
                }
                _ => nix::sys::stat::mknodat(
                    parent.as_fd(),
                    name,
                    SFlag::S_IFREG,
                    Mode::from_bits_truncate(0o644),
                    0,
                ),
            };
            match r {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(Error::setup(format!(
                        "cannot create mount point {}: {}",
                        path.display(),
                        e.desc()
                    )))
                }
            }
            nix::fcntl::openat2(root.as_fd(), &rel, how).map_err(cannot)
        }
        Err(e) => Err(cannot(e)),
    }
}

/// SYNC-4: a node is about to be created in `parent`. Unless that is our own scratch tmpfs
/// (gone with the container anyway), tell the monitor its host path, so that it removes it
/// after the container is gone (nspawn leaves such mount points behind, systemd#17536).
fn report_creation(parent: &OwnedFd, name: &Path) -> Result<()> {
    // Only a node on the image's own file system persists; one on a file system mounted over
    // it (our /dev, /run, /tmp tmpfs) goes away by itself, and reporting its path would make
    // the monitor remove the image's entry of the same name.
    let dev = nix::sys::stat::fstat(parent.as_fd())
        .ctx(|| "cannot stat a mount point's parent".into())?
        .st_dev;
    if !crate::scratch::on_image(dev) {
        return Ok(());
    }
    let dir = nix::fcntl::readlink(fd_path(parent).as_str())
        .ctx(|| "cannot resolve a mount point's parent".into())?;
    match crate::scratch::host_path(&Path::new(&dir).join(name)) {
        Some(path) => ns_core::stage::report_created(&path, false),
        None => Ok(()),
    }
}

/// `/a/b` → `a/b`, `/` → `.`; `..` components are kept for RESOLVE_IN_ROOT to clamp.
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

pub(crate) fn mount_fs(
    root: &OwnedFd,
    dest: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let target = open_in_root(root, Path::new(dest), Some(Kind::Dir))?;
    mount(
        Some(fstype),
        fd_path(&target).as_str(),
        Some(fstype),
        flags,
        data,
    )
    .ctx(|| {
        // -L's label is the likeliest reason a labelled mount is refused: name it.
        match data.and_then(|d| d.find("context=").map(|i| &d[i..])) {
            Some(label) => format!("cannot mount {fstype} on {dest} with {label}"),
            None => format!("cannot mount {fstype} on {dest}"),
        }
    })
}

/// Make the mount at `dest` (and below, if `recursive`) read-only.
pub(crate) fn make_read_only(root: &OwnedFd, dest: &Path, recursive: bool) -> Result<()> {
    // Re-open after mounting: the path walk now ends in the new mount, not the one below.
    let fd = open_in_root(root, dest, None)?;
    ns_core::sys::mount_setattr_rdonly(fd.as_fd(), recursive)
        .ctx(|| format!("cannot make {} read-only", dest.display()))
}

pub fn mount_tmpfs(root: &OwnedFd, dest: &str, opts: &str, flags: MsFlags) -> Result<()> {
    mount_fs(
        root,
        dest,
        "tmpfs",
        flags | MsFlags::MS_STRICTATIME,
        Some(opts),
    )
}
