//! Mount points an OCI runtime's container cannot make itself: inside a user namespace the
//! container's root may not write to an image owned by ids it does not map, so the host
//! makes the missing ones (walked fd-relative from the root, never through a symlink of the
//! image: such a path is left to ns-mount, which resolves it inside the root) and returns
//! them, to be removed after the container is gone. Also the removal of what was made (by
//! the host or by a stage, SYNC-4) once the container is gone, never through a symlink.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use ns_core::state::OciMounts;
use ns_core::{Context, Error, Result};

/// Make the missing mount points of `oci`'s mounts under `root` (those not below an earlier
/// mount, which ns-mount makes on that mount), adding what it made to `made` (first
/// first; also what it made before it failed).
pub fn make_missing(root: &Path, oci: &OciMounts, made: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    for (i, m) in oci.mounts.iter().enumerate() {
        let below_earlier = oci.mounts[..i]
            .iter()
            .any(|e| m.dest != e.dest && m.dest.starts_with(&e.dest));
        if below_earlier {
            continue;
        }
        let dir = m.fstype != "bind" || Path::new(&m.source).is_dir();
        make_one(root, &m.dest, dir, made)?;
    }
    Ok(())
}

fn open_dir(at: Option<&OwnedFd>, name: &Path) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(fd) => nix::fcntl::openat(fd, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

/// `dest` below `root`: its missing components made (directories, the last a file unless
/// `dir`); stops at anything that is not a plain directory on the way.
fn make_one(root: &Path, dest: &Path, dir: bool, made: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    let cannot = |p: &Path, e: Errno| {
        Error::setup(format!(
            "cannot create mount point {}: {}",
            p.display(),
            e.desc()
        ))
    };
    let names: Vec<&std::ffi::OsStr> = match dest
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    {
        true => dest.iter().skip(1).collect(),
        false => return Ok(()), // `..` or `.`: ns-mount resolves it inside the root
    };
    let mut fd = open_dir(None, root).map_err(|e| cannot(root, e))?;
    let mut host = root.to_path_buf();
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        host.push(name);
        match nix::sys::stat::fstatat(&fd, *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
            Ok(_) => return Ok(()), // a file, or a symlink: ns-mount's business
            Err(Errno::ENOENT) => {
                let r = match last && !dir {
                    true => nix::sys::stat::mknodat(
                        &fd,
                        *name,
                        SFlag::S_IFREG,
                        Mode::from_bits_truncate(0o644),
                        0,
                    ),
                    false => nix::sys::stat::mkdirat(&fd, *name, Mode::from_bits_truncate(0o755)),
                };
                r.map_err(|e| cannot(&host, e))?;
                made.push((host.clone(), false));
            }
            Err(e) => return Err(cannot(&host, e)),
        }
        if !last {
            fd = open_dir(Some(&fd), Path::new(name))
                .ctx(|| format!("cannot open {}", host.display()))?;
        }
    }
    Ok(())
}

/// Remove `path` (a created mount point, or a work directory when `recursive`) only if no
/// component of it is a symlink now: the container may have replaced a directory on the way
/// with a link to somewhere else on the host. A mount point goes only while empty.
pub fn remove_no_symlinks(path: &Path, recursive: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ns_core::state::OciMount;

    fn at(dest: &str, fstype: &str, source: &str) -> OciMount {
        OciMount {
            fstype: fstype.into(),
            source: source.into(),
            dest: dest.into(),
            flags: 0,
            propagation: Vec::new(),
            data: String::new(),
        }
    }

    #[test]
    fn makes_what_is_missing_and_never_follows_the_image_s_symlinks() {
        let root = std::env::temp_dir().join(format!("ns-mountpoints-{}", std::process::id()));
        let outside = root.with_extension("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let oci = OciMounts {
            mounts: vec![
                at("/dev", "tmpfs", "tmpfs"),
                at("/dev/pts", "devpts", "devpts"),
                at("/a/b", "tmpfs", "tmpfs"),
                at("/f", "bind", "/etc/hostname"),
                at("/link/x", "tmpfs", "tmpfs"),
                at("/../up", "tmpfs", "tmpfs"),
            ],
            ..Default::default()
        };
        let mut made = Vec::new();
        make_missing(&root, &oci, &mut made).unwrap();
        let names: Vec<_> = made
            .iter()
            .map(|(p, _)| p.strip_prefix(&root).unwrap())
            .collect();
        // /dev/pts is below an earlier mount: ns-mount makes it there.
        assert_eq!(names, ["dev", "a", "a/b", "f"].map(Path::new));
        assert!(root.join("f").is_file());
        assert!(!outside.join("x").exists(), "followed the image's symlink");
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
