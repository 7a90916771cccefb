//! Where an image is built: a hidden directory `.#NAME.XXXXXXXX` (0700) in
//! /var/lib/machines, held with a flock while it is built (the mark by which `ns-ctl clean`
//! tells a directory in the making from a leftover), renamed into place (RENAME_NOREPLACE)
//! with its settings file only when complete. Dropped before that, on any error, it is
//! removed; a SIGINT, SIGTERM or SIGHUP makes the job fail at its next read, and if it has
//! not finished within two seconds (a stalled connection), the signal's thread removes the
//! directory itself and exits.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use ns_core::{Context, Error, Result};

pub const MACHINES: &str = "/var/lib/machines";

/// The hidden directory being built, for the signal thread: (dir fd of /var/lib/machines,
/// its name, the settings file's temporary name).
static BUILDING: Mutex<Option<(OwnedFd, String, String)>> = Mutex::new(None);

pub struct Staging {
    machines: OwnedFd,
    name: String,
    hidden: String,
    settings_tmp: String,
    root: Flock<File>,
}

impl Staging {
    /// A new hidden directory for the image NAME, refused when NAME is taken (an image or
    /// a settings file of that name in any image directory).
    pub fn new(name: &str) -> Result<Staging> {
        check_name(name)?;
        if let Some(p) =
            ns_core::paths::find_image(name).or_else(|| ns_core::paths::find_raw_image(name))
        {
            return Err(Error::setup(format!(
                "image {name} already exists: {}",
                p.display()
            )));
        }
        let settings = format!("{MACHINES}/{name}.nspawn");
        if std::path::Path::new(&settings).symlink_metadata().is_ok() {
            return Err(Error::setup(format!("{settings} already exists")));
        }
        match nix::unistd::mkdir(MACHINES, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(Error::setup(format!(
                    "cannot create {MACHINES}: {}",
                    e.desc()
                )))
            }
        }
        let machines = nix::fcntl::open(
            MACHINES,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("cannot open {MACHINES}"))?;
        let tag: String = ns_core::random_bytes::<4>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let hidden = format!(".#{name}.{tag}");
        let settings_tmp = format!(".#{name}.nspawn.{tag}");
        let mut building = BUILDING
            .lock()
            .map_err(|_| Error::setup("lock poisoned".into()))?;
        nix::sys::stat::mkdirat(&machines, hidden.as_str(), Mode::from_bits_truncate(0o700))
            .ctx(|| format!("cannot create {MACHINES}/{hidden}"))?;
        *building = Some((
            machines.try_clone().ctx(|| "cannot dup an fd".into())?,
            hidden.clone(),
            settings_tmp.clone(),
        ));
        drop(building);
        let root = ns_core::walk::open_dir_at(machines.as_fd(), OsStr::new(&hidden))
            .ctx(|| format!("cannot open {MACHINES}/{hidden}"))
            .and_then(|fd| {
                Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                    Error::setup(format!("cannot lock {MACHINES}/{hidden}: {}", e.desc()))
                })
            })
            .inspect_err(|_| remove_building())?;
        Ok(Staging {
            machines,
            name: name.to_string(),
            hidden,
            settings_tmp,
            root,
        })
    }

    /// The image's directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Put the image in place as NAME with its settings file `settings`: the file first (an
    /// image never runs without its settings), each renamed without replacing anything.
    pub fn commit(self, settings: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut building = BUILDING
            .lock()
            .map_err(|_| Error::setup("lock poisoned".into()))?;
        super::interrupted().map_err(|e| Error::setup(e.to_string()))?;
        nix::sys::stat::fchmod(self.root(), Mode::from_bits_truncate(0o755))
            .ctx(|| format!("cannot chmod {MACHINES}/{}", self.hidden))?;
        // On disk before it has its name: a crash after the rename must not leave an image
        // of empty files (systemd's pulls sync too).
        nix::unistd::syncfs(self.root()).ctx(|| format!("cannot sync {MACHINES}"))?;
        let tmp = format!("{MACHINES}/{}", self.settings_tmp);
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .ctx(|| format!("cannot create {tmp}"))?;
        let mut f = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::setup(format!("cannot lock {tmp}: {}", e.desc())))?;
        f.write_all(settings.as_bytes())
            .and_then(|()| f.sync_data())
            .ctx(|| format!("cannot write {tmp}"))?;
        let file = format!("{}.nspawn", self.name);
        rename(&self.machines, &self.settings_tmp, &file)?;
        if let Err(e) = rename(&self.machines, &self.hidden, &self.name) {
            let _ = nix::unistd::unlinkat(
                &self.machines,
                file.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(e);
        }
        // Done: nothing for the drop (or a late signal) to remove.
        *building = None;
        Ok(())
    }
}

fn rename(dir: &OwnedFd, from: &str, to: &str) -> Result<()> {
    match ns_core::sys::renameat2(dir, from, dir, to, libc::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => {
            Err(Error::setup(format!("{MACHINES}/{to} already exists")))
        }
        Err(e) => Err(Error::setup(format!(
            "cannot rename {MACHINES}/{from} to {to}: {}",
            e.desc()
        ))),
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        remove_building();
    }
}

/// Remove the hidden directory and temporary settings file, if any.
pub fn remove_building() {
    let mut b = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((dir, hidden, tmp)) = b.take() {
        let _ = ns_core::walk::remove_at(dir.as_fd(), OsStr::new(&hidden));
        let _ = nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

/// Remove the hidden directory and exit, the lock held (no commit can follow).
pub fn abandon(code: i32) -> ! {
    remove_building();
    let _hold = BUILDING.lock();
    std::process::exit(code)
}

/// systemd's rule for machine names (importctl's): a valid hostname, at most 64
/// characters: letters, digits and `-`, in `.`-separated labels.
pub fn check_name(s: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if s.len() <= 64 && s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(Error::setup(format!(
            "not a valid machine name: {s} (letters, digits, - and ., at most 64; give NAME)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn machine_names() {
        for ok in ["a", "web-1", "a.b", "x1"] {
            assert!(super::check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "my_app",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(super::check_name(bad).is_err(), "{bad}");
        }
    }
}
