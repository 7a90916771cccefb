//! Something in the making under a hidden name in the pool, `.#NAME.XXXXXXXX`: an image
//! being imported, pulled or cloned, a settings file being written. Its maker holds a flock
//! on it (the mark by which `clean` tells it from a leftover) until it is renamed into
//! place (RENAME_NOREPLACE); dropped before that, on any error, it is removed.
//!
//! A SIGINT, SIGTERM or SIGHUP ([`watch_signals`]) makes the job fail at its next read
//! ([`interrupted`]), unwinding through the drops; if it has not exited within two seconds
//! (a stalled connection), the signal's thread removes every hidden entry still in the
//! making and exits 128+N. Only a SIGKILL leaves one, for `clean`.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use ns_core::{Error, Result};

use super::{open_pool, POOL};

/// The hidden entries in the making, for the signal's thread: (the pool, the name).
static MAKING: Mutex<Vec<(OwnedFd, String)>> = Mutex::new(Vec::new());

/// The signal that interrupted us, 0 if none.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

fn making() -> MutexGuard<'static, Vec<(OwnedFd, String)>> {
    MAKING.lock().unwrap_or_else(|e| e.into_inner())
}

fn sys(what: impl FnOnce() -> String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::setup(format!("{}: {}", what(), e.desc()))
}

pub struct Hidden {
    parent: OwnedFd,
    pub name: String,
    held: Option<Flock<File>>,
}

impl Hidden {
    /// A new directory `.#NAME.XXXXXXXX` in the pool (0700 until done).
    pub fn dir(name: &str) -> Result<Hidden> {
        Self::make(name, |parent, tmp| {
            nix::sys::stat::mkdirat(parent, tmp, Mode::from_bits_truncate(0o700))?;
            ns_core::walk::open_dir_at(parent, tmp.as_ref())
        })
    }

    /// A new regular file `.#NAME.XXXXXXXX` in the pool (0600 until done).
    pub fn file(name: &str) -> Result<Hidden> {
        Self::make(name, |parent, tmp| {
            nix::fcntl::openat(
                parent,
                tmp,
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        })
    }

    /// Make the entry with `make` and hold it; it is in [`MAKING`] from before it exists
    /// until it is renamed or removed.
    fn make(
        name: &str,
        make: impl FnOnce(BorrowedFd<'_>, &str) -> nix::Result<OwnedFd>,
    ) -> Result<Hidden> {
        interrupted().map_err(|e| Error::setup(e.to_string()))?;
        let parent = open_pool()?;
        let tmp = super::temp_name(name);
        let mut list = making();
        let dup = parent
            .try_clone()
            .map_err(|_| Error::setup("cannot dup an fd".into()))?;
        list.push((dup, tmp.clone()));
        let mut h = Hidden {
            parent,
            name: tmp,
            held: None,
        };
        drop(list);
        // Made and locked within the pool's gate: a sweep never finds it unlocked.
        let _gate = gate(h.parent.as_fd(), FlockArg::LockShared)?;
        let fd = make(h.parent.as_fd(), &h.name)
            .map_err(sys(|| format!("cannot create {POOL}/{}", h.name)))?;
        let l =
            Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                Error::setup(format!("cannot lock {POOL}/{}: {}", h.name, e.desc()))
            })?;
        h.held = Some(l);
        Ok(h)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.held.as_ref().expect("held until dropped").as_fd()
    }

    pub fn file_mut(&mut self) -> &mut File {
        self.held.as_mut().expect("held until dropped")
    }

    /// Rename it to `entry` (never over anything), then let go of it; refused once a
    /// signal has come.
    pub fn commit(self, entry: &str) -> Result<()> {
        Self::commit_all(vec![(self, entry)])
    }

    /// Rename each to its entry, in order, all or none: a failure (or a signal) removes
    /// those renamed already and drops the rest.
    pub fn commit_all(all: Vec<(Hidden, &str)>) -> Result<()> {
        let mut list = making();
        interrupted().map_err(|e| Error::setup(e.to_string()))?;
        let mut done: Vec<(&Hidden, &str)> = Vec::new();
        for (h, entry) in &all {
            if let Err(e) = h.rename_to(entry) {
                for (d, entry) in done {
                    let _ = ns_core::walk::remove_at(d.parent.as_fd(), entry.as_ref());
                }
                return Err(e);
            }
            done.push((h, entry));
        }
        for (mut h, _) in all {
            list.retain(|(_, n)| *n != h.name);
            h.held = None;
            h.name.clear();
        }
        Ok(())
    }

    fn rename_to(&self, entry: &str) -> Result<()> {
        ns_core::sys::renameat2(
            self.parent.as_fd(),
            self.name.as_str(),
            self.parent.as_fd(),
            entry,
            libc::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            Errno::EEXIST => {
                Error::setup(format!("{POOL}/{entry} appeared meanwhile: not replaced"))
            }
            e => Error::setup(format!(
                "cannot rename {POOL}/{} to {entry}: {}",
                self.name,
                e.desc()
            )),
        })
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = ns_core::walk::remove_at(self.parent.as_fd(), self.name.as_ref());
            making().retain(|(_, n)| *n != self.name);
        }
    }
}

/// The gate of the image directory `dir`: a flock on the directory itself, held shared by a
/// maker from before its hidden entry exists until it holds the entry's own flock, and
/// exclusive by [`super::ops::sweep`] while it tries an entry's flock. So a sweep (`clean`,
/// another import of the name) never takes an entry for a leftover in the moment between
/// its mkdir and its maker's flock.
pub fn gate(dir: BorrowedFd<'_>, how: FlockArg) -> Result<Flock<File>> {
    let d = ns_core::walk::reopen_dir(dir).map_err(sys(|| format!("cannot open {POOL}")))?;
    Flock::lock(File::from(d), how)
        .map_err(|(_, e)| Error::setup(format!("cannot lock {POOL}: {}", e.desc())))
}

/// An error once SIGINT, SIGTERM or SIGHUP has come: every read and every entry asks.
pub fn interrupted() -> std::io::Result<()> {
    match SIGNALLED.load(Ordering::Relaxed) {
        0 => Ok(()),
        s => Err(std::io::Error::other(format!(
            "interrupted by {}",
            nix::sys::signal::Signal::try_from(s).map_or("a signal", |s| s.as_str())
        ))),
    }
}

/// A job stopped by a signal exits 128+N, as the signal's thread does when it has to.
pub fn signal_code(e: Error) -> Error {
    match SIGNALLED.load(Ordering::Relaxed) {
        0 => e,
        s => Error { code: 128 + s, ..e },
    }
}

/// Take SIGINT, SIGTERM and SIGHUP on a thread of their own: the job stops at its next
/// read and cleans up; if it has not within two seconds (a read that waits on a silent
/// peer), the thread removes what is in the making and exits with the one line, holding
/// the list (no rename can follow).
pub fn watch_signals() -> Result<()> {
    let set = ns_core::sys::SignalSet::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    set.block()
        .map_err(|e| Error::setup(format!("cannot block signals: {}", e.desc())))?;
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        SIGNALLED.store(sig, Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let list = making();
        for (pool, name) in list.iter() {
            let _ = ns_core::walk::remove_at(pool.as_fd(), name.as_ref());
        }
        if let Err(e) = interrupted() {
            ns_core::write_stderr(format_args!("ns-ctl: {e}\n"));
        }
        std::process::exit(128 + sig)
    });
    Ok(())
}
