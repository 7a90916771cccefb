//! `--template=DIR`: create a missing root directory as a copy of a template tree
//! (directories, files, symlinks, device nodes, fifos; modes, owners and times kept). A copy
//! that fails half-way is removed: bad input leaves nothing behind.
//!
//! The copy is made beside the directory, in a parent another user may own, so every step
//! is fd-relative (design rule 11): the hidden directory is made 0700 and opened with
//! O_NOFOLLOW, and everything below it is made with mkdirat, openat(O_CREAT|O_EXCL|
//! O_NOFOLLOW), symlinkat, mknodat, fchownat, fchmodat relative to directory fds we hold,
//! which only root can write into until the copy is complete. The template is read the
//! same way. A racer who swaps the hidden directory for a symlink only makes the copy
//! fail: the rename into place is checked to have moved our directory, or undone.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use ns_core::walk;
use ns_core::{Context, Error, Result};

/// Copy `template` to `dir`, which must not exist. Returns whether a copy was made (false
/// when `dir` already exists: nspawn then ignores the template). SIGINT, SIGTERM and SIGHUP
/// during the copy stop it, remove it and exit 128+N (as nspawn removes its copy).
pub fn instantiate(template: &Path, dir: &Path) -> Result<bool> {
    if dir.symlink_metadata().is_ok() {
        return Ok(false);
    }
    crate::check_root(
        &crate::RootFacts::probe(&template.to_string_lossy(), false),
        ns_core::state::RootMode::Directory,
        true,
    )
    .map_err(|e| Error::setup(e.msg.replacen("--directory", "--template", 1)))?;
    // Copy beside `dir` and rename when complete, so that a copy cut short (even by SIGKILL)
    // is never taken for the root directory by the next start.
    let name = dir.file_name().ok_or_else(|| {
        Error::invalid("--directory", &dir.to_string_lossy(), "names no directory")
    })?;
    let parent_path = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = nix::fcntl::open(
        parent_path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", parent_path.display()))?;
    let src = nix::fcntl::open(
        template,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("--template: cannot open {}", template.display()))?;
    sweep_dead_copies(parent.as_fd(), parent_path, &name.to_string_lossy());
    let job = Copy {
        template,
        dir,
        parent: parent.as_fd(),
        tmp: format!(".#{}.ns-run-{}", name.to_string_lossy(), std::process::id()).into(),
        name,
        stop: ns_core::sys::SignalSet::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]),
        progress: ns_core::progress::Progress::new(
            format!("--template: copying {}", template.display()),
            None,
        ),
    };
    // Held back while we copy, taken in the walk (then the copy is removed); one that
    // comes after is delivered when the old mask is back.
    let old = job.stop.block().ctx(|| "cannot block signals".into())?;
    let r = {
        let _headroom = walk::FdHeadroom::raise();
        job.make(src.as_fd())
    };
    let _ = old.set_mask();
    r.map(|()| true)
}

/// Remove copies of a template into `dir` left by ns-runs that were killed (named by pid).
fn sweep_dead_copies(parent: BorrowedFd<'_>, parent_path: &Path, name: &str) {
    let prefix = format!(".#{name}.ns-run-");
    for p in ns_core::paths::of_dead_monitors(parent_path, &prefix) {
        if let Some(n) = p.file_name() {
            let _ = walk::remove_at(parent, n);
        }
    }
}

struct Copy<'a> {
    template: &'a Path,
    dir: &'a Path,
    parent: BorrowedFd<'a>,
    /// The hidden name of the copy in the making, and the final one.
    tmp: OsString,
    name: &'a OsStr,
    /// The signals that stop the copy.
    stop: ns_core::sys::SignalSet,
    /// A line on a terminal while the copy takes more than a second.
    progress: ns_core::progress::Progress,
}

/// A directory being copied: its source and copy, its source's stat (applied to the copy
/// when its entries are done), the names left, its path below the template's top.
struct Level {
    src: OwnedFd,
    dst: OwnedFd,
    st: FileStat,
    left: Vec<OsString>,
    rel: PathBuf,
}

impl Copy<'_> {
    fn hidden(&self) -> PathBuf {
        self.dir.with_file_name(&self.tmp)
    }

    fn replaced(&self) -> Error {
        Error::setup(format!(
            "--template: {} was replaced during the copy; no directory was made",
            self.hidden().display()
        ))
    }

    /// Make the hidden directory, copy into it, rename it into place; on any failure
    /// remove what we copied.
    fn make(&self, src: BorrowedFd<'_>) -> Result<()> {
        let mkdir = || nix::sys::stat::mkdirat(self.parent, self.tmp.as_os_str(), Mode::S_IRWXU);
        match mkdir() {
            // Left by a dead ns-run that had our pid: ours to remove.
            Err(Errno::EEXIST) => {
                walk::remove_at(self.parent, &self.tmp)
                    .and_then(|()| mkdir())
                    .ctx(|| format!("cannot create {}", self.hidden().display()))?;
            }
            r => r.ctx(|| format!("cannot create {}", self.hidden().display()))?,
        }
        // Ours only if it is a directory of our uid that nobody else may enter, as we just
        // made it (a racer who owns the parent can put one of theirs, or a symlink, there).
        let dst = walk::open_dir_at(self.parent, &self.tmp).map_err(|_| self.replaced())?;
        let st = nix::sys::stat::fstat(&dst).ctx(|| "cannot stat the copy".into())?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(self.replaced());
        }
        let r = self
            .copy_into(src, dst.as_fd())
            .and_then(|()| self.rename(&st));
        if r.is_err() {
            let _ = walk::remove_contents(dst.as_fd());
            let ours = nix::sys::stat::fstatat(
                self.parent,
                self.tmp.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|s| (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino));
            if ours {
                let _ = nix::unistd::unlinkat(
                    self.parent,
                    self.tmp.as_os_str(),
                    nix::unistd::UnlinkatFlags::RemoveDir,
                );
            }
        }
        r
    }

    /// Rename the copy into place (never over something), then check that what is there
    /// now is our directory: a racer may have swapped the hidden name just before.
    fn rename(&self, ours: &FileStat) -> Result<()> {
        ns_core::sys::renameat2(
            self.parent,
            self.tmp.as_os_str(),
            self.parent,
            self.name,
            libc::RENAME_NOREPLACE,
        )
        .ctx(|| {
            format!(
                "cannot rename the copy of --template to {}",
                self.dir.display()
            )
        })?;
        let now = nix::sys::stat::fstatat(self.parent, self.name, AtFlags::AT_SYMLINK_NOFOLLOW);
        match now {
            Ok(s) if (s.st_dev, s.st_ino) == (ours.st_dev, ours.st_ino) => Ok(()),
            Ok(s) => {
                // What we moved there is the racer's: take a non-directory away again (a
                // directory is theirs to keep; nothing of ours runs on it).
                if !walk::is_dir(&s) {
                    let _ = nix::unistd::unlinkat(
                        self.parent,
                        self.name,
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                }
                Err(self.replaced())
            }
            Err(_) => Err(self.replaced()),
        }
    }

    /// Check for a signal that stops the copy.
    fn check_stop(&self) -> Result<()> {
        match self.stop.poll() {
            None => Ok(()),
            Some(sig) => Err(Error {
                code: 128 + sig,
                msg: format!(
                    "--template: interrupted by {}; the partial copy {} was removed",
                    nix::sys::signal::Signal::try_from(sig).map_or("a signal", |s| s.as_str()),
                    self.hidden().display()
                ),
            }),
        }
    }

    /// Copy the tree `src` is open on into the directory `dst` is open on.
    fn copy_into(&self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<()> {
        let top = || format!("--template: cannot read {}", self.template.display());
        let mut stack = vec![Level {
            src: walk::reopen_dir(src).ctx(top)?,
            dst: walk::reopen_dir(dst).ctx(top)?,
            st: nix::sys::stat::fstat(src).ctx(top)?,
            left: walk::names(src).ctx(top)?,
            rel: PathBuf::new(),
        }];
        let (mut entries, mut bytes) = (0u64, 0u64);
        loop {
            let depth = stack.len();
            let Some(level) = stack.last_mut() else {
                break;
            };
            self.check_stop()?;
            self.progress.update_entries(entries, Some(bytes));
            let Some(name) = level.left.pop() else {
                let done = stack.pop().expect("not empty");
                self.finish(done.dst.as_fd(), None, &done.st, &done.rel)?;
                continue;
            };
            let rel = level.rel.join(&name);
            entries += 1;
            let what = || {
                format!(
                    "--template: cannot copy {} to {}",
                    self.template.join(&rel).display(),
                    self.dir.join(&rel).display()
                )
            };
            let (src, dst) = (level.src.as_fd(), level.dst.as_fd());
            let st = nix::sys::stat::fstatat(src, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .ctx(what)?;
            match walk::kind(&st) {
                SFlag::S_IFDIR => {
                    if depth >= walk::MAX_DEPTH {
                        return Err(Error::setup(format!(
                            "--template: {} is more than {} directories deep",
                            self.template.join(&rel).display(),
                            walk::MAX_DEPTH
                        )));
                    }
                    let s = walk::open_dir_at(src, &name).ctx(what)?;
                    let sst = nix::sys::stat::fstat(&s).ctx(what)?;
                    nix::sys::stat::mkdirat(dst, name.as_os_str(), Mode::S_IRWXU).ctx(what)?;
                    let d = walk::open_dir_at(dst, &name).ctx(what)?;
                    let left = walk::names(s.as_fd()).ctx(what)?;
                    stack.push(Level {
                        src: s,
                        dst: d,
                        st: sst,
                        left,
                        rel,
                    });
                }
                SFlag::S_IFREG => bytes += self.copy_file(src, dst, &name, &rel, &what)?,
                SFlag::S_IFLNK => {
                    let target = nix::fcntl::readlinkat(src, name.as_os_str()).ctx(what)?;
                    nix::unistd::symlinkat(target.as_os_str(), dst, name.as_os_str()).ctx(what)?;
                    self.finish(dst, Some(&name), &st, &rel)?;
                }
                k @ (SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO) => {
                    nix::sys::stat::mknodat(dst, name.as_os_str(), k, Mode::empty(), st.st_rdev)
                        .ctx(what)?;
                    self.finish(dst, Some(&name), &st, &rel)?;
                }
                _ => {} // sockets are not copied
            }
        }
        Ok(())
    }

    /// Copy the regular file `name` of `src` into `dst` (given its source's owner, mode and
    /// times); returns its size. `what` names it in an error.
    fn copy_file(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        what: &dyn Fn() -> String,
    ) -> Result<u64> {
        let s = nix::fcntl::openat(
            src,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY
                | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ctx(what)?;
        let sst = nix::sys::stat::fstat(&s).ctx(what)?;
        if walk::kind(&sst) != SFlag::S_IFREG {
            return Err(Error::setup(format!("{}: changed while copied", what())));
        }
        let d = ns_core::walk::create_new_at(dst, name).ctx(what)?;
        let (mut from, mut to) = (std::fs::File::from(s), std::fs::File::from(d));
        let n = std::io::copy(&mut from, &mut to).ctx(what)?;
        self.finish(to.as_fd(), None, &sst, rel)?;
        Ok(n)
    }

    /// Give a copied entry its source's owner, mode and times: the inode `fd` is open on,
    /// or the entry `name` of the directory `fd` (a symlink or a node: the directory is
    /// ours, writable only by root, so the name still is what we made).
    fn finish(
        &self,
        fd: BorrowedFd<'_>,
        name: Option<&OsStr>,
        st: &FileStat,
        rel: &Path,
    ) -> Result<()> {
        let what = || {
            format!(
                "--template: cannot set the owner, mode and times of {}",
                self.dir.join(rel).display()
            )
        };
        let (uid, gid) = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let (atime, mtime) = (
            TimeSpec::new(st.st_atime, st.st_atime_nsec),
            TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        );
        match name {
            None => {
                nix::unistd::fchown(fd, uid, gid).ctx(what)?;
                nix::sys::stat::fchmod(fd, mode).ctx(what)?;
                nix::sys::stat::futimens(fd, &atime, &mtime).ctx(what)
            }
            Some(n) => {
                nix::unistd::fchownat(fd, n, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).ctx(what)?;
                if walk::kind(st) != SFlag::S_IFLNK {
                    nix::sys::stat::fchmodat(
                        fd,
                        n,
                        mode,
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                    .ctx(what)?;
                }
                nix::sys::stat::utimensat(
                    fd,
                    n,
                    &atime,
                    &mtime,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .ctx(what)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    #[test]
    fn copies_a_tree_and_refuses_a_non_os_template() {
        let base = std::env::temp_dir().join(format!("ns-template-{}", std::process::id()));
        let t = base.join("t");
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/bin/x"), "hi").unwrap();
        std::fs::set_permissions(t.join("usr/bin/x"), std::fs::Permissions::from_mode(0o751))
            .unwrap();
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        // Owners, set-id bits, times, links and nodes are kept.
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &t.join("usr/bin/x"),
            Some(Uid::from_raw(1000)),
            Some(Gid::from_raw(1001)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        std::fs::write(t.join("usr/bin/s"), "").unwrap();
        std::fs::set_permissions(t.join("usr/bin/s"), std::fs::Permissions::from_mode(0o4711))
            .unwrap();
        nix::unistd::mkfifo(&t.join("usr/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        let d = base.join("d");
        assert!(instantiate(&t, &d).unwrap());
        let md = |p: &str| std::fs::symlink_metadata(d.join(p)).unwrap();
        let tm = |p: &str| std::fs::symlink_metadata(t.join(p)).unwrap();
        assert_eq!((md("usr/bin/x").uid(), md("usr/bin/x").gid()), (1000, 1001));
        assert_eq!(md("usr/bin/s").mode() & 0o7777, 0o4711);
        assert!(md("usr/fifo").file_type().is_fifo());
        assert_eq!(md("usr/fifo").mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_link(d.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        for p in ["usr/bin/x", "usr", "bin", "."] {
            assert_eq!(
                (md(p).mtime(), md(p).mtime_nsec()),
                (tm(p).mtime(), tm(p).mtime_nsec()),
                "{p}"
            );
        }
        assert_eq!(std::fs::read_to_string(d.join("bin/x")).unwrap(), "hi");
        assert_eq!(
            d.join("usr/bin/x").metadata().unwrap().mode() & 0o777,
            0o751
        );
        assert!(
            !instantiate(&t, &d).unwrap(),
            "an existing directory is kept"
        );
        let e = instantiate(&base.join("nope"), &base.join("d2")).unwrap_err();
        assert!(e.msg.starts_with("--template="), "{}", e.msg);
        assert!(!base.join("d2").exists());
        // A copy cut short by a killed run (its pid is gone) is swept, never taken as done.
        let stale = base.join(format!(".#d3.ns-run-{}", i32::MAX));
        std::fs::create_dir(&stale).unwrap();
        assert!(instantiate(&t, &base.join("d3")).unwrap());
        assert!(!stale.exists());
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".#"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
