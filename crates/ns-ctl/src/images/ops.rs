//! The verbs that change images in place: clone, rename, read-only, remove, clean,
//! set-limit. Each that changes an existing image takes the lock a running container holds
//! on it ([`ns_host::locks::ImageLock`], exclusive), so none acts under a container.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use ns_core::{Context, Error, Result};
use ns_host::locks::ImageLock;

use super::hidden::Hidden;
use super::progress::Progress;
use super::{check_name, find, open_dir, taken, Image, Kind, FS_IMMUTABLE_FL, POOL};

/// Where machinectl looks for NAME.nspawn besides the image's own directory.
const SETTINGS_DIRS: &[&str] = &["/etc/systemd/nspawn", "/run/systemd/nspawn"];
/// Files beside an image that belong to it: settings and verity data.
const SIDECARS: &[&str] = &[".nspawn", ".roothash", ".roothash.p7s", ".verity"];

/// Lock `img` as a container writing to it would: refused while one runs on it.
fn lock(img: &Image) -> Result<ImageLock> {
    let path = img.path();
    let r = if img.kind.is_tree() {
        ImageLock::acquire(&path, false)
    } else {
        let f = File::open(&path).ctx(|| format!("cannot open {}", path.display()))?;
        ImageLock::acquire_image(&path, &f, false)
    };
    r.map_err(|e| match e.msg.contains("busy") {
        true => Error::setup(format!(
            "image {} is in use by a running container",
            img.name
        )),
        false => e,
    })
}

fn not_vendor(img: &Image, verb: &str) -> Result<()> {
    if img.vendor() {
        return Err(Error::setup(format!(
            "cannot {verb} {}: images under /usr are the vendor's and never changed",
            img.path().display()
        )));
    }
    Ok(())
}

fn must_be_free(new: &str) -> Result<()> {
    check_name("NEW", new)?;
    if taken(new) {
        return Err(Error::setup(format!(
            "an image called {new} already exists"
        )));
    }
    Ok(())
}

/// The entry an image called `name` of `kind` has in its directory.
fn entry_for(name: &str, kind: Kind) -> String {
    match kind {
        Kind::Raw => format!("{name}.raw"),
        _ => name.to_string(),
    }
}

fn sys(what: impl FnOnce() -> String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::setup(format!("{}: {}", what(), e.desc()))
}

/// `clone NAME NEW`: a copy in the pool (reflinked where the file system can), with the
/// image's settings and verity files.
pub fn clone(name: &str, new: &str, read_only: bool) -> Result<i32> {
    let img = find(name)?;
    must_be_free(new)?;
    let path = img.path();
    match img.kind {
        Kind::Directory | Kind::Subvolume => {
            let src = open_dir(&path).ctx(|| format!("cannot open {}", path.display()))?;
            let h = Hidden::dir(new)?;
            let p = Progress::new(format!("Cloning {name}"), None);
            super::copy::copy_tree(src.as_fd(), h.fd(), &mut |n| p.update(n)).map_err(
                |(rel, e)| {
                    Error::setup(format!(
                        "cannot copy {}: {}",
                        path.join(rel).display(),
                        e.desc()
                    ))
                },
            )?;
            p.finish();
            h.commit(new)?;
            if read_only {
                set_immutable(Path::new(POOL).join(new).as_path(), true)?;
            }
        }
        Kind::Raw => {
            let mut h = Hidden::file(new)?;
            let mut src = File::open(&path).ctx(|| format!("cannot open {}", path.display()))?;
            let st = nix::sys::stat::fstat(src.as_fd())
                .ctx(|| format!("cannot stat {}", path.display()))?;
            if ns_core::sys::reflink(h.fd(), src.as_fd()).is_err() {
                let p = Progress::new(format!("Cloning {name}"), Some(st.st_size as u64));
                super::progress::copy(&mut src, h.file_mut(), &p)
                    .ctx(|| format!("cannot copy {}", path.display()))?;
            }
            let mode = st.st_mode & 0o7777 & if read_only { !0o222 } else { !0 };
            nix::sys::stat::fchmod(h.fd().as_fd(), Mode::from_bits_truncate(mode))
                .ctx(|| "cannot chmod the clone".into())?;
            h.commit(&format!("{new}.raw"))?;
        }
        Kind::Block => {
            return Err(Error::setup(format!("cannot clone {name}: a block device")));
        }
    }
    copy_sidecars(&img, new);
    Ok(0)
}

/// The settings of /etc and /run are cloned beside themselves, the files beside the image
/// beside the clone. One that exists already is left as it is.
fn copy_sidecars(img: &Image, new: &str) {
    for d in SETTINGS_DIRS {
        copy_aux(
            Path::new(d),
            &format!("{}.nspawn", img.name),
            Path::new(d),
            &format!("{new}.nspawn"),
        );
    }
    for s in SIDECARS {
        copy_aux(
            &img.dir,
            &format!("{}{s}", img.name),
            Path::new(POOL),
            &format!("{new}{s}"),
        );
    }
}

fn copy_aux(from_dir: &Path, from: &str, to_dir: &Path, to: &str) {
    let copy = || -> std::io::Result<()> {
        let src = open_dir(from_dir)?;
        let dst = open_dir(to_dir)?;
        let f = nix::fcntl::openat(
            src.as_fd(),
            from,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(f.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let tmp = super::temp_name(to);
        let t = nix::fcntl::openat(
            dst.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(st.st_mode & 0o777),
        )?;
        let r = std::io::copy(&mut File::from(f), &mut File::from(t))
            .map(drop)
            .and_then(|()| {
                Ok(ns_core::sys::renameat2(
                    dst.as_fd(),
                    tmp.as_str(),
                    dst.as_fd(),
                    to,
                    libc::RENAME_NOREPLACE,
                )?)
            });
        if r.is_err() {
            let _ = nix::unistd::unlinkat(
                dst.as_fd(),
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        r
    };
    let _ = copy();
}

/// Rename (never over anything) or remove the image's settings and verity files.
fn each_sidecar(img: &Image, f: &dyn Fn(BorrowedFd<'_>, &str, &str)) {
    let own = [(img.dir.clone(), SIDECARS)];
    let settings = SETTINGS_DIRS.iter().map(|d| (d.into(), &SIDECARS[..1]));
    for (dir, suffixes) in own.into_iter().chain(settings) {
        let Ok(fd) = open_dir(&dir) else { continue };
        for s in suffixes.iter() {
            f(fd.as_fd(), &img.name, s);
        }
    }
}

/// `rename NAME NEW`, in its directory, with its settings and verity files.
pub fn rename(name: &str, new: &str) -> Result<i32> {
    let img = find(name)?;
    not_vendor(&img, "rename")?;
    must_be_free(new)?;
    let _lock = lock(&img)?;
    let parent = open_dir(&img.dir).ctx(|| format!("cannot open {}", img.dir.display()))?;
    let target = entry_for(new, img.kind);
    let immutable = img.kind.is_tree() && !img.symlink && immutable(&img.path()).unwrap_or(false);
    if immutable {
        set_immutable(&img.path(), false)?;
    }
    let r = ns_core::sys::renameat2(
        parent.as_fd(),
        img.entry.as_os_str(),
        parent.as_fd(),
        target.as_str(),
        libc::RENAME_NOREPLACE,
    );
    let now = if r.is_ok() {
        img.dir.join(&target)
    } else {
        img.path()
    };
    if immutable {
        set_immutable(&now, true)?;
    }
    r.map_err(sys(|| {
        format!("cannot rename {} to {target}", img.path().display())
    }))?;
    each_sidecar(&img, &|dir, old, s| {
        let _ = ns_core::sys::renameat2(
            dir,
            format!("{old}{s}").as_str(),
            dir,
            format!("{new}{s}").as_str(),
            libc::RENAME_NOREPLACE,
        );
    });
    Ok(0)
}

/// `remove NAME...`: the image (a symlink to one: the symlink), its settings and verity
/// files. A tree is first renamed to a hidden name, so a removal cut short leaves no half
/// image under the name, only a leftover for `clean`.
pub fn remove(names: &[String]) -> Result<i32> {
    let imgs = names.iter().map(|n| find(n)).collect::<Result<Vec<_>>>()?;
    for img in &imgs {
        not_vendor(img, "remove")?;
    }
    for img in &imgs {
        let lock = lock(img)?;
        let parent = open_dir(&img.dir).ctx(|| format!("cannot open {}", img.dir.display()))?;
        let what = || format!("cannot remove {}", img.path().display());
        if img.symlink || !img.kind.is_tree() {
            nix::unistd::unlinkat(
                parent.as_fd(),
                img.entry.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .map_err(sys(what))?;
        } else {
            set_immutable(&img.path(), false)?;
            let tmp = super::temp_name(&img.name);
            ns_core::sys::renameat2(
                parent.as_fd(),
                img.entry.as_os_str(),
                parent.as_fd(),
                tmp.as_str(),
                libc::RENAME_NOREPLACE,
            )
            .map_err(sys(what))?;
            ns_core::walk::remove_at(parent.as_fd(), tmp.as_ref())
                .map_err(sys(|| format!("cannot remove {}/{tmp}", img.dir.display())))?;
        }
        drop(lock);
        each_sidecar(img, &|dir, n, s| {
            let _ = nix::unistd::unlinkat(
                dir.as_fd(),
                format!("{n}{s}").as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        });
    }
    Ok(0)
}

fn immutable(path: &Path) -> Result<bool> {
    let d = open_dir(path).ctx(|| format!("cannot open {}", path.display()))?;
    let f = ns_core::sys::inode_flags(d.as_fd())
        .ctx(|| format!("cannot read the flags of {}", path.display()))?;
    Ok(f & FS_IMMUTABLE_FL != 0)
}

/// Set or clear the immutable flag of the directory at `path` (its top only).
fn set_immutable(path: &Path, on: bool) -> Result<()> {
    let d = open_dir(path).ctx(|| format!("cannot open {}", path.display()))?;
    let what = || format!("cannot change the immutable flag of {}", path.display());
    let f = match ns_core::sys::inode_flags(d.as_fd()) {
        // A file system without inode flags has no immutable one to clear.
        Err(Errno::ENOTTY | Errno::EOPNOTSUPP) if !on => return Ok(()),
        r => r.map_err(sys(what))?,
    };
    let want = if on {
        f | FS_IMMUTABLE_FL
    } else {
        f & !FS_IMMUTABLE_FL
    };
    if want != f {
        ns_core::sys::set_inode_flags(d.as_fd(), want).map_err(sys(what))?;
    }
    Ok(())
}

/// `read-only NAME [BOOL]`: a tree's top gets the immutable flag (nothing can be created,
/// removed or renamed there, and machinectl and ns-ctl see it read-only); a raw file loses
/// its write bits (machinectl's way for both).
pub fn read_only(name: &str, on: bool) -> Result<i32> {
    let img = find(name)?;
    not_vendor(&img, "change")?;
    let _lock = lock(&img)?;
    let path = img.path();
    match img.kind {
        Kind::Directory | Kind::Subvolume => set_immutable(&path, on)?,
        Kind::Raw => {
            let f = File::open(&path).ctx(|| format!("cannot open {}", path.display()))?;
            let st = nix::sys::stat::fstat(f.as_fd())
                .ctx(|| format!("cannot stat {}", path.display()))?;
            let mode = (st.st_mode & 0o444) | if on { 0 } else { 0o200 };
            nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(mode))
                .ctx(|| format!("cannot chmod {}", path.display()))?;
        }
        Kind::Block => {
            return Err(Error::setup(format!(
                "cannot change {name}: a block device (use blockdev --setro)"
            )));
        }
    }
    Ok(0)
}

/// `set-limit`: machinectl sets a btrfs quota group's limit on a subvolume image; nothing
/// else limits the size of a directory or a file, so ns-ctl refuses with the reason.
pub fn set_limit(name: Option<&str>, _bytes: &str) -> Result<i32> {
    let what = match name {
        Some(n) => {
            let img = find(n)?;
            format!("{n} is a {} image", img.kind.as_str())
        }
        None => "the pool is a plain directory".into(),
    };
    Err(Error::setup(format!(
        "set-limit needs btrfs quota groups, which ns-ctl does not manage ({what}; a directory or raw image has no size limit to set)"
    )))
}

/// `clean`: remove the hidden `.#` leftovers of cut-short imports, clones and removals
/// from the writable image directories; one whose maker still runs (it holds a flock on
/// it, or it is a running ns-run's template copy) is left.
pub fn clean() -> Result<i32> {
    for dir in ns_core::paths::IMAGE_DIRS
        .iter()
        .filter(|d| !d.starts_with("/usr"))
    {
        let Ok(fd) = open_dir(Path::new(dir)) else {
            continue;
        };
        for n in sweep(fd.as_fd(), None) {
            ns_core::write_stdout(format_args!("Removed {dir}/{n}.\n"));
        }
    }
    Ok(0)
}

/// Remove the `.#` entries of `dir` (those of image `only`, with Some) that nobody holds;
/// their names.
pub fn sweep(dir: BorrowedFd<'_>, only: Option<&str>) -> Vec<String> {
    use nix::fcntl::AtFlags;
    let mut out = Vec::new();
    let Ok(names) = ns_core::walk::names(dir) else {
        return out;
    };
    for n in names {
        let Some(s) = n.to_str() else { continue };
        let Some(rest) = s.strip_prefix(".#") else {
            continue;
        };
        if only.is_some_and(|o| {
            !rest.starts_with(&format!("{o}.")) && !rest.starts_with(&format!("{o}.raw."))
        }) {
            continue;
        }
        if ns_run_copy_alive(rest) {
            continue;
        }
        let Ok(st) = nix::sys::stat::fstatat(dir, s, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let fmt = st.st_mode & libc::S_IFMT;
        let held = if fmt == libc::S_IFDIR || fmt == libc::S_IFREG {
            let Ok(_gate) = super::hidden::gate(dir, FlockArg::LockExclusive) else {
                continue;
            };
            let Ok(fd) = nix::fcntl::openat(
                dir,
                s,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
                Ok(l) => Some(l),
                Err(_) => continue, // its maker is at work
            }
        } else {
            None
        };
        if fmt == libc::S_IFDIR {
            if let Some(l) = &held {
                let _ = ns_core::sys::inode_flags(l.as_fd())
                    .and_then(|f| ns_core::sys::set_inode_flags(l.as_fd(), f & !FS_IMMUTABLE_FL));
            }
        }
        if ns_core::walk::remove_at(dir, n.as_os_str()).is_ok() {
            out.push(s.to_string());
        }
    }
    out
}

/// `.#NAME.ns-run-PID`: ns-run's copy of a template, in use while that ns-run lives.
fn ns_run_copy_alive(rest: &str) -> bool {
    let Some((_, pid)) = rest.rsplit_once(".ns-run-") else {
        return false;
    };
    pid.parse::<u32>().is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ns-run")
}
