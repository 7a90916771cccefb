//! Tar archives in and out of a tree, fd-relative. Unpacking never leaves the new tree: a
//! leading `/` is dropped (as GNU tar drops it), an entry with a `..` component is refused,
//! and every directory on an entry's way is opened with O_NOFOLLOW from the one before, so
//! an entry that would pass through a symlink (the archive's own, made a moment before) is
//! refused instead of followed; hard links are made from a target found the same way.
//! Owners, modes, times, extended attributes (PAX `SCHILY.xattr.`), device nodes, FIFOs,
//! hard links and symlinks are kept. Packing walks the tree as `copy` does.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use ns_core::walk::{self, kind};
use tar::{EntryType, Header};

use super::copy::{apply, fd_path, Attrs};

/// An entry's components below the top, checked.
fn components(raw: &[u8]) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("has a '..' component".into()),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Open the directory `comps` below `top`, never through a symlink; with `make`, missing
/// directories are made (0755, as tar makes them).
fn walk_to(top: BorrowedFd<'_>, comps: &[&OsStr], make: bool) -> Result<OwnedFd, String> {
    let mut cur = walk::reopen_dir(top).map_err(|e| e.desc().to_string())?;
    for c in comps {
        let next = match walk::open_dir_at(cur.as_fd(), c) {
            Err(Errno::ENOENT) if make => {
                nix::sys::stat::mkdirat(cur.as_fd(), *c, Mode::from_bits_truncate(0o755))
                    .map_err(|e| e.desc().to_string())?;
                walk::open_dir_at(cur.as_fd(), c)
            }
            r => r,
        };
        cur = next.map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => format!(
                "goes through {} (a symlink or not a directory): refused",
                c.to_string_lossy()
            ),
            e => e.desc().to_string(),
        })?;
    }
    Ok(cur)
}

fn attrs(h: &Header, symlink: bool) -> Attrs {
    let t = TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0);
    Attrs {
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mode: h.mode().unwrap_or(0o644),
        atime: t,
        mtime: t,
        symlink,
    }
}

/// Remove what is at `name` unless it is a directory (tar replaces files it unpacks again).
fn clear(dir: BorrowedFd<'_>, name: &OsStr) {
    let _ = nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
}

/// Whether an archive's extended attribute `name` is set on import: file capabilities
/// (`security.capability`: ping's cap_net_raw) and `user.*`, as importd's tar can set them
/// (it runs without CAP_SYS_ADMIN) and as OCI layers are applied. Others are left out: an
/// SELinux label of the build host means nothing here, and `trusted.*` is root's namespace
/// (`trusted.overlay.*` would change what an overlay mount of the image shows).
pub fn xattr_kept(name: &[u8]) -> bool {
    name == b"security.capability" || name.starts_with(b"user.")
}

fn set_xattrs(fd: BorrowedFd<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    let p = fd_path(fd);
    for (k, v) in xattrs.iter().filter(|(k, _)| xattr_kept(k)) {
        let _ = xattr::set_deref(&p, OsStr::from_bytes(k), v);
    }
}

/// Unpack the tar stream `r` into the empty directory `top`. Errors name the entry.
pub fn unpack(r: impl Read, top: BorrowedFd<'_>) -> Result<(), String> {
    let _headroom = walk::FdHeadroom::raise();
    let mut ar = tar::Archive::new(EndSeen {
        inner: r,
        end: false,
    });
    let mut dirs: Vec<(Vec<u8>, Attrs, Xattrs)> = Vec::new();
    let entries = ar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for e in entries {
        let mut e = e.map_err(|e| format!("bad archive: {e}"))?;
        let path = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let xattrs = xattrs_of(&mut e).map_err(|m| format!("entry {shown}: {m}"))?;
        let kind = e.header().entry_type();
        if kind == EntryType::Directory {
            let comps = components(&path).map_err(|m| format!("entry {shown} {m}"))?;
            if let Some((last, up)) = comps.split_last() {
                let d = walk_to(top, up, true).map_err(|m| format!("entry {shown} {m}"))?;
                match nix::sys::stat::mkdirat(d, *last, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("entry {shown}: {}", e.desc())),
                }
            }
            dirs.push((path, attrs(e.header(), false), xattrs));
            continue;
        }
        unpack_one(&mut e, top, &path, &xattrs).map_err(|m| format!("entry {shown}: {m}"))?;
    }
    // The tar crate ends quietly at the end of the stream as at the zero block that ends an
    // archive; only the latter is a whole archive (one cut at an entry's boundary is not).
    if ar.into_inner().end {
        return Err("the archive ends before its end-of-archive block: truncated".into());
    }
    // An archive without a `./` entry: the top gets what importd gives it.
    if !dirs
        .iter()
        .any(|(p, _, _)| components(p).is_ok_and(|c| c.is_empty()))
    {
        nix::sys::stat::fchmod(top, Mode::from_bits_truncate(0o755))
            .map_err(|e| e.desc().to_string())?;
    }
    // Directories last, deepest first: their modes may forbid what came inside them, and
    // every entry made inside changed their times.
    for (path, a, x) in dirs.iter().rev() {
        let comps = components(path).expect("checked");
        let shown = String::from_utf8_lossy(path);
        let d = walk_to(top, &comps, false).map_err(|m| format!("entry {shown} {m}"))?;
        set_xattrs(d.as_fd(), x);
        apply(d.as_fd(), None, a).map_err(|e| format!("entry {shown}: {}", e.desc()))?;
    }
    Ok(())
}

/// A reader that remembers whether its end was reached.
struct EndSeen<R> {
    inner: R,
    end: bool,
}

impl<R: Read> Read for EndSeen<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.end |= k == 0 && !buf.is_empty();
        Ok(k)
    }
}

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn xattrs_of<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Xattrs, String> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(|e| e.to_string())? {
        for x in exts.flatten() {
            if let Some(k) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((k.to_vec(), x.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// One entry that is not a directory.
fn unpack_one<R: Read>(
    e: &mut tar::Entry<'_, R>,
    top: BorrowedFd<'_>,
    path: &[u8],
    xattrs: &Xattrs,
) -> Result<(), String> {
    let comps = components(path)?;
    let Some((name, up)) = comps.split_last() else {
        return Err("names the top directory but is not a directory".into());
    };
    let dir = walk_to(top, up, true)?;
    let d = dir.as_fd();
    let h = e.header().clone();
    let ty = h.entry_type();
    let errno = |e: Errno| e.desc().to_string();
    match ty {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            clear(d, name);
            let f = ns_core::walk::create_new_at(d, name).map_err(errno)?;
            let mut file = std::fs::File::from(f);
            std::io::copy(e, &mut file).map_err(|e| format!("cannot read it: {e}"))?;
            apply(file.as_fd(), None, &attrs(&h, false)).map_err(errno)?;
            set_xattrs(file.as_fd(), xattrs);
        }
        EntryType::Symlink => {
            let target = e
                .link_name_bytes()
                .ok_or("a symlink without a target")?
                .into_owned();
            clear(d, name);
            nix::unistd::symlinkat(OsStr::from_bytes(&target), d, *name).map_err(errno)?;
            apply(d, Some(name), &attrs(&h, true)).map_err(errno)?;
        }
        EntryType::Link => {
            let target = e
                .link_name_bytes()
                .ok_or("a hard link without a target")?
                .into_owned();
            let tc = components(&target).map_err(|m| format!("its link target {m}"))?;
            let Some((tname, tup)) = tc.split_last() else {
                return Err("a hard link to the top directory".into());
            };
            let td = walk_to(top, tup, false).map_err(|m| format!("its link target {m}"))?;
            clear(d, name);
            nix::unistd::linkat(td, *tname, d, *name, AtFlags::empty()).map_err(|e| {
                format!(
                    "cannot link it to {}: {}",
                    String::from_utf8_lossy(&target),
                    e.desc()
                )
            })?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let k = match ty {
                EntryType::Char => SFlag::S_IFCHR,
                EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let dev = nix::sys::stat::makedev(
                h.device_major().ok().flatten().unwrap_or(0) as u64,
                h.device_minor().ok().flatten().unwrap_or(0) as u64,
            );
            clear(d, name);
            nix::sys::stat::mknodat(d, *name, k, Mode::from_bits_truncate(0o600), dev)
                .map_err(errno)?;
            apply(d, Some(name), &attrs(&h, false)).map_err(errno)?;
            if let Ok(fd) = walk::open_entry_at(d, name) {
                set_xattrs(fd.as_fd(), xattrs);
            }
        }
        // Global headers and the like carry nothing to make.
        _ => {}
    }
    Ok(())
}

/// Write the tree `top` as a tar stream to `w` (GNU headers, PAX records for extended
/// attributes), calling `progress` with the bytes of file data so far.
pub fn pack<W: Write>(
    top: BorrowedFd<'_>,
    w: W,
    progress: &mut dyn FnMut(u64),
) -> Result<W, String> {
    let _headroom = walk::FdHeadroom::raise();
    let mut b = tar::Builder::new(w);
    let st = nix::sys::stat::fstat(top.as_fd()).map_err(|e| e.desc().to_string())?;
    let top_dev = st.st_dev;
    put_xattrs(&mut b, top).map_err(io(std::path::Path::new(".")))?;
    b.append_data(
        &mut header(&st, EntryType::Directory),
        "./",
        std::io::empty(),
    )
    .map_err(io(std::path::Path::new(".")))?;
    let first = walk::reopen_dir(top).map_err(|e| e.desc().to_string())?;
    let names = walk::names(first.as_fd()).map_err(|e| e.desc().to_string())?;
    let mut stack = vec![(first, names, PathBuf::new())];
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut bytes = 0u64;
    while let Some((dir, left, rel)) = stack.last_mut() {
        let Some(name) = left.pop() else {
            stack.pop();
            continue;
        };
        let path = rel.join(&name);
        let d = dir.as_fd();
        let st = match nix::sys::stat::fstatat(d, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => continue,
            r => r.map_err(|e| format!("{}: {}", path.display(), e.desc()))?,
        };
        let errno = |e: Errno| format!("{}: {}", path.display(), e.desc());
        match kind(&st) {
            SFlag::S_IFDIR => {
                let sub = walk::open_dir_at(d, &name).map_err(errno)?;
                put_xattrs(&mut b, sub.as_fd()).map_err(io(&path))?;
                b.append_data(
                    &mut header(&st, EntryType::Directory),
                    &path,
                    std::io::empty(),
                )
                .map_err(io(&path))?;
                if st.st_dev == top_dev {
                    let names = walk::names(sub.as_fd()).map_err(errno)?;
                    stack.push((sub, names, path));
                }
            }
            SFlag::S_IFREG => {
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
                        b.append_link(&mut header(&st, EntryType::Link), &path, first)
                            .map_err(io(&path))?;
                        continue;
                    }
                    links.insert((st.st_dev, st.st_ino), path.clone());
                }
                pack_file(&mut b, d, &name, &path, &st)?;
                bytes += st.st_size as u64;
                progress(bytes);
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(d, name.as_os_str()).map_err(errno)?;
                b.append_link(&mut header(&st, EntryType::Symlink), &path, &target)
                    .map_err(io(&path))?;
            }
            k @ (SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO) => {
                pack_node(&mut b, d, &name, &path, &st, k)?;
            }
            // Sockets have no tar form (GNU tar skips them too).
            _ => {}
        }
    }
    b.into_inner()
        .map_err(|e| format!("cannot finish the archive: {e}"))
}

fn io(p: &std::path::Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

fn pack_file<W: Write>(
    b: &mut tar::Builder<W>,
    d: BorrowedFd<'_>,
    name: &OsStr,
    path: &std::path::Path,
    st: &FileStat,
) -> Result<(), String> {
    let f = match super::copy::open_regular(d, name) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()), // not a file any more: changed meanwhile, as if gone
        Err(e) => return Err(format!("{}: {}", path.display(), e.desc())),
    };
    put_xattrs(b, f.as_fd()).map_err(io(path))?;
    let mut h = header(st, EntryType::Regular);
    h.set_size(st.st_size as u64);
    // Exactly the size announced, whatever the file does meanwhile.
    let data = std::fs::File::from(f)
        .take(st.st_size as u64)
        .chain(std::io::repeat(0));
    b.append_data(&mut h, path, data.take(st.st_size as u64))
        .map_err(io(path))
}

fn pack_node<W: Write>(
    b: &mut tar::Builder<W>,
    d: BorrowedFd<'_>,
    name: &OsStr,
    path: &std::path::Path,
    st: &FileStat,
    k: SFlag,
) -> Result<(), String> {
    let ty = match k {
        SFlag::S_IFCHR => EntryType::Char,
        SFlag::S_IFBLK => EntryType::Block,
        _ => EntryType::Fifo,
    };
    if let Ok(fd) = walk::open_entry_at(d, name) {
        put_xattrs(b, fd.as_fd()).map_err(io(path))?;
    }
    let mut h = header(st, ty);
    h.set_device_major(nix::sys::stat::major(st.st_rdev) as u32)
        .map_err(io(path))?;
    h.set_device_minor(nix::sys::stat::minor(st.st_rdev) as u32)
        .map_err(io(path))?;
    b.append_data(&mut h, path, std::io::empty())
        .map_err(io(path))
}

fn header(st: &FileStat, ty: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// The extended attributes of the object `fd` is open on, as a PAX record before it.
fn put_xattrs<W: Write>(b: &mut tar::Builder<W>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let p = fd_path(fd);
    let Ok(names) = xattr::list_deref(&p) else {
        return Ok(());
    };
    let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
    for n in names {
        if let Ok(Some(v)) = xattr::get_deref(&p, &n) {
            recs.push((format!("SCHILY.xattr.{}", n.to_string_lossy()), v));
        }
    }
    if recs.is_empty() {
        return Ok(());
    }
    b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn entry_paths_stay_below_the_top() {
        let c = |p: &str| components(p.as_bytes()).map(|v| v.len());
        assert_eq!(c("./etc/passwd"), Ok(2));
        assert_eq!(c("/etc//passwd"), Ok(2));
        assert_eq!(c("./"), Ok(0));
        assert!(c("../x").is_err());
        assert!(c("a/../../x").is_err());
        assert!(c("a/..").is_err());
    }
}
