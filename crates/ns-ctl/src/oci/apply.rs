//! Applying a layer (a tar stream) to the image directory being built, as the image-spec
//! says: entries in order, a `.wh.NAME` removes NAME of the layers below, `.wh..wh..opq`
//! hides everything the layers below had in its directory.
//!
//! Nothing is ever written outside the image: an entry with a `..` component is refused,
//! and every path is resolved from the image's directory fd with `openat2(RESOLVE_IN_ROOT)`
//! (the kernel resolves a symlink an earlier layer planted, `etc -> /` say, inside the
//! image, as the container will see it, never on the host), then the entry is made with an
//! `*at` call on its last component that does not follow a symlink (O_NOFOLLOW,
//! AT_SYMLINK_NOFOLLOW, mkdirat, symlinkat, mknodat; a hard link's target is resolved in
//! the image the same way, and linkat does not follow it).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use ns_core::walk;
use ns_core::{Context, Error, Result};

/// What one layer wrote, to tell the layers below from this one at its opaque whiteouts.
#[derive(Default)]
struct Layer {
    written: HashSet<Vec<u8>>,
    opaque: Vec<Vec<u8>>,
}

/// Apply the tar stream `tar` to the image directory `root`. `what` names the layer in
/// errors.
pub fn apply_layer(root: BorrowedFd<'_>, tar: impl Read, what: &str) -> Result<()> {
    let mut layer = Layer::default();
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| Error::setup(format!("{what}: {}", ns_core::error::io_desc(&e))))?;
    for entry in entries {
        super::interrupted().map_err(|e| Error::setup(format!("{what}: {e}")))?;
        let mut entry = entry.map_err(|e| {
            Error::setup(format!("{what}: bad tar: {}", ns_core::error::io_desc(&e)))
        })?;
        let path = entry.path_bytes().into_owned();
        apply_entry(root, &mut entry, &mut layer).map_err(|e| {
            Error::setup(format!("{what}: {}: {e}", String::from_utf8_lossy(&path)))
        })?;
    }
    // The tar's end: read on so that the stream below sees all of it.
    drop(archive);
    for dir in &layer.opaque {
        hide_lower(root, dir, &layer.written).map_err(|e| {
            Error::setup(format!(
                "{what}: opaque directory {}: {e}",
                String::from_utf8_lossy(dir)
            ))
        })?;
    }
    Ok(())
}

/// The components of an entry's path: `.`, empty ones and a leading `/` dropped; `..`
/// refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::setup("a .. component: refused".into())),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(c: &[&[u8]]) -> Vec<u8> {
    c.join(&b'/')
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS)
    .union(ResolveFlag::RESOLVE_NO_XDEV);

/// The directory `rel` of the image, resolved inside it.
fn open_in_root(root: BorrowedFd<'_>, rel: &[u8]) -> nix::Result<OwnedFd> {
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(RESOLVE);
    nix::fcntl::openat2(root, OsStr::from_bytes(rel), how)
}

/// The directory `dir` of the image, resolved inside it, made (0755, root's) where
/// missing, as tar does for an entry whose directories the archive does not list first.
pub fn make_dirs(root: BorrowedFd<'_>, dir: &[&[u8]]) -> Result<OwnedFd> {
    match open_in_root(root, &join(dir)) {
        Err(Errno::ENOENT) if !dir.is_empty() => {}
        r => return r.ctx(|| "cannot open its directory".into()),
    }
    let parent = make_dirs(root, &dir[..dir.len() - 1])?;
    let last = OsStr::from_bytes(dir[dir.len() - 1]);
    match nix::sys::stat::mkdirat(&parent, last, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(Error::setup(format!(
                "cannot make its directory: {}",
                e.desc()
            )))
        }
    }
    open_in_root(root, &join(dir)).ctx(|| "cannot open its directory".into())
}

fn apply_entry<R: Read>(
    root: BorrowedFd<'_>,
    e: &mut tar::Entry<'_, R>,
    l: &mut Layer,
) -> Result<()> {
    let raw = e.path_bytes().into_owned();
    let comps = components(&raw)?;
    let Some((&base, parent)) = comps.split_last() else {
        return Ok(()); // the image's root itself: its mode is set when it is complete
    };
    if base == b".wh..wh..opq" {
        l.opaque.push(join(parent));
        return Ok(());
    }
    if let Some(hidden) = base.strip_prefix(b".wh.") {
        // Other .wh..wh. names are aufs's bookkeeping, not whiteouts.
        if hidden.starts_with(b".wh.") || hidden.is_empty() {
            return Ok(());
        }
        // `.wh..` and `.wh...` would remove the directory itself or its parent (at the
        // top: the pool, /var/lib/machines).
        if hidden == b"." || hidden == b".." {
            return Err(Error::setup("a whiteout of . or ..: refused".into()));
        }
        let mut full = parent.to_vec();
        full.push(hidden);
        // A whiteout hides only what the layers below have (in a directory they have).
        let dir = match open_in_root(root, &join(parent)) {
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            r => r.ctx(|| "cannot open its directory".into())?,
        };
        if !l.written.contains(&join(&full)) {
            walk::remove_at(dir.as_fd(), OsStr::from_bytes(hidden))
                .ctx(|| "cannot remove what it hides".into())?;
        }
        return Ok(());
    }
    let dir = make_dirs(root, parent)?;
    let name = OsStr::from_bytes(base);
    let kind = e.header().entry_type();
    let existing = nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW);
    match existing {
        Ok(st) if walk::is_dir(&st) && kind.is_dir() => {}
        Ok(_) => walk::remove_at(dir.as_fd(), name).ctx(|| "cannot replace it".into())?,
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::setup(format!("cannot stat it: {}", e.desc()))),
    }
    make_entry(root, dir.as_fd(), name, e)?;
    l.written.insert(join(&comps));
    Ok(())
}

/// Make the entry `name` in `dir` as the tar header says, with its owner, mode and time.
fn make_entry<R: Read>(
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    e: &mut tar::Entry<'_, R>,
) -> Result<()> {
    use tar::EntryType as T;
    let h = e.header();
    let mode = h.mode().ctx_tar("mode")? & 0o7777;
    let (uid, gid) = (h.uid().ctx_tar("uid")?, h.gid().ctx_tar("gid")?);
    let mtime = h.mtime().unwrap_or(0);
    let kind = h.entry_type();
    let perm = Mode::from_bits_truncate(mode);
    match kind {
        T::Regular | T::Continuous | T::GNUSparse => {
            let fd = ns_core::walk::create_new_at(dir, name).ctx(|| "cannot create it".into())?;
            let mut w = std::io::BufWriter::with_capacity(1 << 17, std::fs::File::from(fd));
            std::io::copy(e, &mut w).ctx(|| "cannot write it".into())?;
            let f = w.into_inner().map_err(|e| {
                Error::setup(format!(
                    "cannot write it: {}",
                    ns_core::error::io_desc(e.error())
                ))
            })?;
            // chown before chmod: chown clears the set-id bits.
            nix::unistd::fchown(&f, Some(uid_of(uid)?), Some(gid_of(gid)?))
                .ctx(|| "cannot chown it".into())?;
            nix::sys::stat::fchmod(&f, perm).ctx(|| "cannot chmod it".into())?;
            set_xattrs(&f, e)?;
            return set_time(dir, name, mtime);
        }
        T::Directory => match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::setup(format!("cannot make it: {}", e.desc()))),
        },
        T::Symlink => {
            let target = link_name(e)?;
            nix::unistd::symlinkat(OsStr::from_bytes(&target), dir, name)
                .ctx(|| "cannot make the symlink".into())?;
        }
        T::Link => {
            let target = link_name(e)?;
            let comps = components(&target)?;
            let Some((&tbase, tparent)) = comps.split_last() else {
                return Err(Error::setup("a hard link to the image's root".into()));
            };
            let tdir = open_in_root(root, &join(tparent))
                .ctx(|| format!("hard link target {}", String::from_utf8_lossy(&target)))?;
            nix::unistd::linkat(&tdir, OsStr::from_bytes(tbase), dir, name, AtFlags::empty())
                .ctx(|| format!("cannot link it to {}", String::from_utf8_lossy(&target)))?;
            return Ok(()); // a hard link shares its target's inode, owner and mode
        }
        T::Char | T::Block | T::Fifo => {
            let k = match kind {
                T::Char => SFlag::S_IFCHR,
                T::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let dev = nix::sys::stat::makedev(
                u64::from(h.device_major().ctx_tar("device")?.unwrap_or(0)),
                u64::from(h.device_minor().ctx_tar("device")?.unwrap_or(0)),
            );
            nix::sys::stat::mknodat(dir, name, k, perm, dev)
                .ctx(|| "cannot make the node".into())?;
        }
        // pax and GNU long-name headers are read by the tar crate; others carry no file.
        _ => return Ok(()),
    }
    nix::unistd::fchownat(
        dir,
        name,
        Some(uid_of(uid)?),
        Some(gid_of(gid)?),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| "cannot chown it".into())?;
    if kind != T::Symlink {
        nix::sys::stat::fchmodat(
            dir,
            name,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .ctx(|| "cannot chmod it".into())?;
    }
    set_time(dir, name, mtime)
}

/// The file's extended attributes from its pax header (`SCHILY.xattr.NAME`), those an
/// archive's import keeps (`images::tarball::xattr_kept`).
fn set_xattrs<R: Read>(f: &std::fs::File, e: &mut tar::Entry<'_, R>) -> Result<()> {
    use xattr::FileExt;
    let Ok(Some(exts)) = e.pax_extensions() else {
        return Ok(());
    };
    for ext in exts.flatten() {
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if crate::images::tarball::xattr_kept(name) {
            f.set_xattr(OsStr::from_bytes(name), ext.value_bytes())
                .ctx(|| format!("cannot set its {}", String::from_utf8_lossy(name)))?;
        }
    }
    Ok(())
}

fn link_name<R: Read>(e: &tar::Entry<'_, R>) -> Result<Vec<u8>> {
    match e.link_name_bytes() {
        Some(t) if !t.is_empty() => Ok(t.into_owned()),
        _ => Err(Error::setup("a link without a target".into())),
    }
}

fn uid_of(id: u64) -> Result<nix::unistd::Uid> {
    Ok(nix::unistd::Uid::from_raw(ns_core::check_id("uid", id)?))
}

fn gid_of(id: u64) -> Result<nix::unistd::Gid> {
    Ok(nix::unistd::Gid::from_raw(ns_core::check_id("gid", id)?))
}

fn set_time(dir: BorrowedFd<'_>, name: &OsStr, mtime: u64) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        dir,
        name,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx(|| "cannot set its time".into())
}

trait TarField<T> {
    fn ctx_tar(self, field: &str) -> Result<T>;
}

impl<T> TarField<T> for std::io::Result<T> {
    fn ctx_tar(self, field: &str) -> Result<T> {
        self.map_err(|_| Error::setup(format!("bad {field} in its header")))
    }
}

/// Remove from the opaque directory `dir` whatever this layer did not write (the layers
/// below's content), at every depth: a directory this layer wrote keeps only what this
/// layer put in it.
fn hide_lower(root: BorrowedFd<'_>, dir: &[u8], written: &HashSet<Vec<u8>>) -> Result<()> {
    let fd = match open_in_root(root, dir) {
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        r => r.ctx(|| "cannot open it".into())?,
    };
    let mut stack = vec![(fd, dir.to_vec())];
    while let Some((fd, path)) = stack.pop() {
        for name in walk::names(fd.as_fd()).ctx(|| "cannot list it".into())? {
            let mut full = path.clone();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(name.as_bytes());
            if !written.contains(&full) {
                walk::remove_at(fd.as_fd(), &name).ctx(|| "cannot remove what it hides".into())?;
                continue;
            }
            let st = nix::sys::stat::fstatat(&fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .ctx(|| "cannot stat an entry".into())?;
            if walk::is_dir(&st) {
                if stack.len() >= walk::MAX_DEPTH {
                    return Err(Error::setup("too deep".into()));
                }
                let sub =
                    walk::open_dir_at(fd.as_fd(), &name).ctx(|| "cannot open an entry".into())?;
                stack.push((sub, full));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_dotdot() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(
            components(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert!(components(b"a/../../etc").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
