//! The user mounts (`MountOp`, applied in command-line order) and /etc/resolv.conf and
//! /etc/localtime (`EtcFile`).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use ns_core::state::{EtcFile, MountOp, Source};
use ns_core::{Context, Error, Result};

use crate::inroot::{bind_mount, fd_path, make_read_only, open_in_root, Kind};
use crate::root::ovl_escape;
use crate::scratch::Scratch;

/// A source, opened: its path usable in mount(2) and options while the fd lives.
struct Opened {
    _fd: Option<OwnedFd>,
    path: String,
    kind: SFlag,
}

fn file_kind(st: &nix::sys::stat::FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)
}

/// Resolve a source: host paths as they are, image paths inside the root (never leaving
/// it), temporary ones as a fresh directory on the scratch tmpfs.
fn open_source(root: &OwnedFd, scratch: &Scratch, s: &Source, what: &str) -> Result<Opened> {
    match s {
        Source::Host(p) => {
            let st = nix::sys::stat::stat(p).ctx(|| format!("cannot {what} {}", p.display()))?;
            Ok(Opened {
                _fd: None,
                path: p.to_string_lossy().into_owned(),
                kind: file_kind(&st),
            })
        }
        Source::Image(p) => {
            let fd = open_in_root(root, p, None)?;
            let st = nix::sys::stat::fstat(fd.as_fd())
                .ctx(|| format!("cannot {what} +{}", p.display()))?;
            Ok(Opened {
                path: fd_path(&fd),
                kind: file_kind(&st),
                _fd: Some(fd),
            })
        }
        Source::Temp => Ok(Opened {
            _fd: None,
            path: scratch.dir("temp")?.to_string_lossy().into_owned(),
            kind: SFlag::S_IFDIR,
        }),
    }
}

/// User mount number `index`. `sync` reaches the monitor, which makes the mounts the plan
/// leaves to it (idmapped binds; with `host_by_fd` every host-sourced bind and overlay).
pub fn apply(
    root: &OwnedFd,
    scratch: &Scratch,
    op: &MountOp,
    index: usize,
    sync: Option<&ns_core::sync::SyncSocket>,
    host_by_fd: bool,
) -> Result<()> {
    if op.made_on_host(host_by_fd) {
        return attach_from_host(root, op, index, sync);
    }
    match op {
        MountOp::Bind {
            source,
            dest,
            read_only,
            recursive,
            ..
        } => {
            let src = open_source(root, scratch, source, "bind")?;
            let kind = if src.kind == SFlag::S_IFDIR {
                Kind::Dir
            } else {
                Kind::File
            };
            let target = open_in_root(root, dest, Some(kind))?;
            let mut flags = MsFlags::MS_BIND;
            if *recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(src.path.as_str()),
                fd_path(&target).as_str(),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .ctx(|| format!("cannot bind {} on {}", src.path, dest.display()))?;
            if *read_only {
                make_read_only(root, dest, true)?;
            }
            Ok(())
        }
        MountOp::Tmpfs { dest, options } => {
            let target = open_in_root(root, dest, Some(Kind::Dir))?;
            mount(
                Some("tmpfs"),
                fd_path(&target).as_str(),
                Some("tmpfs"),
                MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
                Some(options.as_str()),
            )
            .ctx(|| {
                format!(
                    "cannot mount tmpfs on {} with \"{options}\"",
                    dest.display()
                )
            })
        }
        MountOp::Overlay {
            lower,
            upper,
            dest,
            read_only,
        } => overlay(root, scratch, lower, upper, dest, *read_only),
        MountOp::Inaccessible { dest } => inaccessible(root, scratch, dest),
    }
}

/// SYNC-5: user mount `index` (a bind or an overlay), made by the monitor on the host from
/// host paths only it may reach, attached on its destination.
fn attach_from_host(
    root: &OwnedFd,
    op: &MountOp,
    index: usize,
    sync: Option<&ns_core::sync::SyncSocket>,
) -> Result<()> {
    let (dest, read_only, what) = match op {
        MountOp::Bind {
            source: Source::Host(p),
            dest,
            read_only,
            ..
        } => (dest, *read_only, p.display().to_string()),
        MountOp::Overlay { dest, .. } => (dest, false, "the overlay".to_string()),
        _ => {
            return Err(Error::setup(format!(
                "mount {index} is not made on the host"
            )))
        }
    };
    let sync = sync.ok_or_else(|| {
        Error::setup(format!(
            "{what}: made on the host, so it needs a monitor (ns-run)"
        ))
    })?;
    let tree = from_host(sync, &ns_core::sync::Msg::NeedMount { op: index })?;
    let st = nix::sys::stat::fstat(tree.as_fd()).ctx(|| format!("cannot stat {what}"))?;
    let kind = match file_kind(&st) {
        SFlag::S_IFDIR => Kind::Dir,
        _ => Kind::File,
    };
    let target = open_in_root(root, dest, Some(kind))?;
    ns_core::sys::move_mount_to(tree.as_fd(), target.as_fd())
        .ctx(|| format!("cannot attach {what} on {}", dest.display()))?;
    if read_only {
        make_read_only(root, dest, true)?;
    }
    Ok(())
}

/// SYNC-5: ask the monitor for a mount made on the host (`request`); returns it, detached.
pub(crate) fn from_host(
    sync: &ns_core::sync::SyncSocket,
    request: &ns_core::sync::Msg,
) -> Result<OwnedFd> {
    from_host_if_made(sync, request)?
        .ok_or_else(|| Error::setup("unexpected message from the monitor: NoMount".into()))
}

/// [`from_host`], where the monitor may answer that it cannot make it either (`NoMount`).
pub(crate) fn from_host_if_made(
    sync: &ns_core::sync::SyncSocket,
    request: &ns_core::sync::Msg,
) -> Result<Option<OwnedFd>> {
    use ns_core::sync::Msg;
    sync.send(request)?;
    match sync.recv_any(nix::sys::socket::MsgFlags::empty())? {
        Some((Msg::Mount, Some(tree))) => Ok(Some(tree)),
        Some((Msg::NoMount, _)) => Ok(None),
        Some((m, _)) => Err(Error::setup(format!(
            "unexpected message from the monitor: {m:?}"
        ))),
        None => Err(Error::setup("the sync socket closed".into())),
    }
}

/// Cover `dest` with an inaccessible node of its own file type (mode 0000, read-only).
pub(crate) fn inaccessible(root: &OwnedFd, scratch: &Scratch, dest: &Path) -> Result<()> {
    inaccessible_at(root, scratch, &open_in_root(root, dest, None)?, dest)
}

/// [`inaccessible`] of `dest`, already open as `target`.
pub(crate) fn inaccessible_at(
    root: &OwnedFd,
    scratch: &Scratch,
    target: &OwnedFd,
    dest: &Path,
) -> Result<()> {
    let st =
        nix::sys::stat::fstat(target.as_fd()).ctx(|| format!("cannot stat {}", dest.display()))?;
    let node = scratch.inaccessible(file_kind(&st))?;
    bind_mount(&node, fd_path(target).as_str())
        .ctx(|| format!("cannot make {} inaccessible", dest.display()))?;
    make_read_only(root, dest, false)
}

/// An overlay on `dest`. overlayfs lists lowers top first; ours are bottom first. A host
/// upper gets a work directory beside it (announced to the monitor, which removes it after
/// exit); a temporary upper lives on the scratch tmpfs.
fn overlay(
    root: &OwnedFd,
    scratch: &Scratch,
    lower: &[Source],
    upper: &Source,
    dest: &Path,
    read_only: bool,
) -> Result<()> {
    let mut layers = Vec::new();
    for l in lower {
        let o = open_source(root, scratch, l, "use as overlay layer")?;
        if o.kind != SFlag::S_IFDIR {
            return Err(Error::setup(format!(
                "overlay layer {} is not a directory",
                o.path
            )));
        }
        layers.push(o);
    }
    let up = open_source(root, scratch, upper, "use as overlay upper")?;
    if up.kind != SFlag::S_IFDIR {
        return Err(Error::setup(format!(
            "overlay upper {} is not a directory",
            up.path
        )));
    }
    let mut tops: Vec<String> = layers.iter().rev().map(|o| ovl_escape(&o.path)).collect();
    let opts = if read_only {
        tops.insert(0, ovl_escape(&up.path));
        format!("lowerdir={}", tops.join(":"))
    } else {
        let work = match upper {
            Source::Temp => scratch.dir("work")?,
            _ => host_workdir(&up.path)?,
        };
        format!(
            "lowerdir={},upperdir={},workdir={}",
            tops.join(":"),
            ovl_escape(&up.path),
            ovl_escape(&work.to_string_lossy())
        )
    };
    let target = open_in_root(root, dest, Some(Kind::Dir))?;
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        Some("overlay"),
        fd_path(&target).as_str(),
        Some("overlay"),
        flags,
        Some(opts.as_str()),
    )
    .ctx(|| format!("cannot mount overlay on {}", dest.display()))
}

/// `.#<name><16 hex>` beside the upper directory, as nspawn names it; the monitor removes it.
fn host_workdir(upper: &str) -> Result<PathBuf> {
    let up = std::fs::canonicalize(upper).ctx(|| format!("cannot resolve {upper}"))?;
    let name = up
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hex: String = ns_core::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let work = up.with_file_name(format!(".#{name}{hex}"));
    // The monitor removes it on the host: name it as the host sees it (an upper inside an
    // idmapped root is reached here through the root's alias on our scratch tmpfs).
    if let Some(host) = crate::scratch::host_path(&work) {
        ns_core::stage::report_created(&host, true)?;
    }
    nix::unistd::mkdir(&work, Mode::from_bits_truncate(0o700))
        .ctx(|| format!("cannot create overlay workdir {}", work.display()))?;
    Ok(work)
}

/// /etc/resolv.conf or /etc/localtime. Images without /etc are left alone, as by nspawn; a
/// missing file is created only for an explicit mode on a writable root.
/// `follow`: a symlink in the image is followed (resolv.conf usually points into /run, our
/// tmpfs); otherwise a symlink means the image manages the file itself and is left alone.
/// A read-only root gets a bind instead of a copy, as with nspawn.
pub fn etc_file(
    root: &OwnedFd,
    path: &str,
    what: &EtcFile,
    follow: bool,
    writable: bool,
) -> Result<()> {
    if *what == EtcFile::Off {
        return Ok(());
    }
    let Ok(etc) = open_in_root(root, Path::new("/etc"), None) else {
        return Ok(());
    };
    let name = Path::new(path).file_name().expect("a file name");
    let current =
        nix::sys::stat::fstatat(etc.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok();
    let is_link = current.is_some_and(|st| file_kind(&st) == SFlag::S_IFLNK);
    let bind = |src: &Path, create: bool| -> Result<()> {
        if (is_link && !follow) || (current.is_none() && (!create || !writable)) {
            return Ok(());
        }
        let target = open_in_root(root, Path::new(path), Some(Kind::File))?;
        bind_mount(src, fd_path(&target).as_str())
            .ctx(|| format!("cannot bind {} on {path}", src.display()))?;
        make_read_only(root, Path::new(path), false)
    };
    match what {
        EtcFile::Off => Ok(()),
        EtcFile::Bind { source, create } => bind(source, *create),
        EtcFile::Copy { source, .. } if !writable => bind(source, false),
        EtcFile::Copy { source, replace } => {
            let regular = current.is_some_and(|st| file_kind(&st) == SFlag::S_IFREG);
            if current.is_some() && !regular {
                if !replace {
                    return Ok(()); // copy-* leaves a symlink or special file alone
                }
                unlink(&etc, name, path)?;
            }
            let data = std::fs::read(source).ctx(|| format!("cannot read {}", source.display()))?;
            let fd = nix::fcntl::openat(
                etc.as_fd(),
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_TRUNC
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .ctx(|| format!("cannot write {path}"))?;
            std::fs::File::from(fd)
                .write_all(&data)
                .ctx(|| format!("cannot write {path}"))
        }
        EtcFile::Symlink(_) | EtcFile::Delete if !writable => Ok(()),
        EtcFile::Symlink(to) => {
            if current.is_some() {
                unlink(&etc, name, path)?;
            }
            nix::unistd::symlinkat(to.as_path(), etc.as_fd(), name)
                .ctx(|| format!("cannot create {path}"))
        }
        EtcFile::Delete => match current {
            Some(_) => unlink(&etc, name, path),
            None => Ok(()),
        },
    }
}

fn unlink(dir: &OwnedFd, name: &std::ffi::OsStr, path: &str) -> Result<()> {
    match nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::setup(format!("cannot remove {path}: {}", e.desc()))),
    }
}

/// `--bind-user`: each user's host home at /run/host/home/NAME and its JSON user and group
/// records in /run/host/userdb (what nss-systemd in the guest reads), all on the container's
/// /run tmpfs, so nothing is written to the image.
pub fn bind_users(root: &OwnedFd, users: &[ns_core::state::BoundUser]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let userdb = open_in_root(root, Path::new("/run/host/userdb"), Some(Kind::Dir))?;
    for u in users {
        let home = PathBuf::from("/run/host/home").join(&u.name);
        let target = open_in_root(root, &home, Some(Kind::Dir))?;
        if u.home.is_dir() {
            mount(
                Some(&u.home),
                fd_path(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("--bind-user={}: cannot bind {}", u.name, u.home.display()))?;
        }
        let user = serde_json::json!({
            "userName": u.name,
            "uid": u.uid,
            "gid": u.gid,
            "realName": u.real_name,
            "homeDirectory": home,
            "shell": u.shell,
            "disposition": "regular",
            "service": "io.systemd.NSpawn",
        });
        let group = serde_json::json!({
            "groupName": u.name,
            "gid": u.gid,
            "disposition": "regular",
            "service": "io.systemd.NSpawn",
        });
        for (file, value, link) in [
            (format!("{}.user", u.name), user, format!("{}.user", u.uid)),
            (
                format!("{}.group", u.name),
                group,
                format!("{}.group", u.gid),
            ),
        ] {
            let fd = nix::fcntl::openat(
                userdb.as_fd(),
                file.as_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .ctx(|| format!("cannot write /run/host/userdb/{file}"))?;
            std::fs::File::from(fd)
                .write_all(format!("{value}\n").as_bytes())
                .ctx(|| format!("cannot write /run/host/userdb/{file}"))?;
            nix::unistd::symlinkat(file.as_str(), userdb.as_fd(), link.as_str())
                .ctx(|| format!("cannot create /run/host/userdb/{link}"))?;
        }
    }
    Ok(())
}
