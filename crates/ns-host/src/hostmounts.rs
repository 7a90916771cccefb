//! The mounts an OCI container without a mount namespace has on its rootfs, in the
//! caller's mount namespace (ns-mount makes them there, as runc does): listed from
//! /proc/self/mountinfo (`under`), recorded by ns-oci, and unmounted at delete or on a
//! failed create (`unmount`), last first, each reached from the rootfs without following a
//! symlink (the image's, or one its processes made), so that nothing outside it is touched.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{umount2, MntFlags};
use nix::sys::stat::Mode;
use ns_core::{Context, Error, Result};

/// A mount: its id and where it is mounted (a host path).
pub type HostMount = (u64, PathBuf);

/// The mounts on `root` or below it, in mountinfo's order (a mount after those it covers).
pub fn under(root: &Path) -> Result<Vec<HostMount>> {
    listed(&canonical(root)?)
}

/// `root` with no symlink left, as mountinfo names mount points.
fn canonical(root: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(root).ctx(|| format!("cannot resolve {}", root.display()))
}

/// [`under`] for a root already [`canonical`].
fn listed(root: &Path) -> Result<Vec<HostMount>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx(|| "cannot read /proc/self/mountinfo".into())?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let point = PathBuf::from(unescape(f.nth(3)?));
            point.starts_with(root).then_some((id, point))
        })
        .collect())
}

/// The mounts of `now` that `before` did not have.
pub fn made_since(before: &[HostMount], now: Vec<HostMount>) -> Vec<HostMount> {
    now.into_iter().filter(|m| !before.contains(m)).collect()
}

/// mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount `mounts` (as `under` listed them), last first. Each one still there (the same
/// id, now at a path below `root`) is opened from `root` with no symlink followed and
/// detached through its fd, with whatever the container mounted over it first. Tries them
/// all; the first failure is returned.
pub fn unmount(root: &Path, mounts: &[HostMount]) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let root = canonical(root)?;
    unmount_of(&root, &listed(&root)?, mounts)
}

/// [`unmount`] what is on `root` or below now and was not in `before` (as [`under`] listed
/// it then): one read of mountinfo to find them and where they are.
pub fn unmount_since(root: &Path, before: &[HostMount]) -> Result<()> {
    let root = canonical(root)?;
    let current = listed(&root)?;
    let made = made_since(before, current.clone());
    if made.is_empty() {
        return Ok(());
    }
    unmount_of(&root, &current, &made)
}

/// [`unmount`] with `root` [`canonical`] and its mounts `current`ly there listed.
fn unmount_of(root: &Path, current: &[HostMount], mounts: &[HostMount]) -> Result<()> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", root.display()))?;
    let mut first = None;
    for (id, _) in mounts.iter().rev() {
        let Some((_, now)) = current.iter().find(|(i, _)| i == id) else {
            continue; // gone already
        };
        if let Err(e) = unmount_one(&dir, root, *id, now) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn unmount_one(dir: &OwnedFd, root: &Path, id: u64, at: &Path) -> Result<()> {
    let rel = at.strip_prefix(root).unwrap_or(at);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    // The top mount there, until ours is (a few covering ones at most).
    for _ in 0..16 {
        let fd = nix::fcntl::openat2(dir.as_fd(), rel, how)
            .ctx(|| format!("cannot open the mount point {}", at.display()))?;
        let top = mount_id(&fd)?;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        umount2(path.as_str(), MntFlags::MNT_DETACH)
            .ctx(|| format!("cannot unmount {}", at.display()))?;
        if top == id {
            return Ok(());
        }
    }
    Err(Error::setup(format!(
        "cannot unmount {}: too many mounts over it",
        at.display()
    )))
}

/// The id of the mount `fd` is on (/proc/self/fdinfo).
fn mount_id(fd: &OwnedFd) -> Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ctx(|| "cannot read an fd's mount id".into())?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::setup("no mnt_id in /proc/self/fdinfo".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape(r"/a\040b\134c\011"), "/a b\\c\t");
        assert_eq!(unescape(r"/x\0"), r"/x\0");
    }

    #[test]
    fn new_mounts() {
        let before = vec![(1, PathBuf::from("/r"))];
        let now = vec![(1, "/r".into()), (7, "/r/proc".into())];
        assert_eq!(
            made_since(&before, now),
            vec![(7, PathBuf::from("/r/proc"))]
        );
    }
}
