//! Where an image is built: a hidden directory `.#NAME.XXXXXXXX` (0700) in
//! /var/lib/machines, held with a flock while it is built (the image verbs' [`Hidden`]: the
//! mark by which `ns-ctl clean` tells a directory in the making from a leftover), renamed
//! into place (RENAME_NOREPLACE) with its settings file only when complete. Dropped before
//! that, on any error, it is removed; a SIGINT, SIGTERM or SIGHUP makes the job fail at its
//! next read, and if it has not finished within two seconds (a stalled connection), the
//! signal's thread removes the directory itself and exits.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use nix::sys::stat::Mode;
use ns_core::{Context, Error, Result};

use crate::images::Hidden;

pub const MACHINES: &str = crate::images::POOL;

/// What is being built, for the signal thread: (dir fd of /var/lib/machines, the hidden
/// directory's name, the settings file's temporary name once there is one).
type Building = (OwnedFd, String, Option<String>);
static BUILDING: Mutex<Option<Building>> = Mutex::new(None);

pub struct Staging {
    name: String,
    root: Hidden,
    _registered: Registered,
}

/// The entry in [`BUILDING`], taken out when dropped (the hidden directory goes with the
/// [`Hidden`]; the signal thread then has nothing left to do).
struct Registered;

impl Drop for Registered {
    fn drop(&mut self) {
        BUILDING.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
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
        let mut building = BUILDING
            .lock()
            .map_err(|_| Error::setup("lock poisoned".into()))?;
        let root = Hidden::dir(name)?;
        let pool = root
            .parent()
            .try_clone_to_owned()
            .ctx(|| "cannot dup an fd".into())?;
        *building = Some((pool, root.name.clone(), None));
        Ok(Staging {
            name: name.to_string(),
            root,
            _registered: Registered,
        })
    }

    /// The image's directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.fd()
    }

    /// Put the image in place as NAME with its settings file `settings`: the file first (an
    /// image never runs without its settings), each renamed without replacing anything.
    pub fn commit(self, settings: &str) -> Result<()> {
        let mut building = BUILDING
            .lock()
            .map_err(|_| Error::setup("lock poisoned".into()))?;
        super::interrupted().map_err(|e| Error::setup(e.to_string()))?;
        let hidden = &self.root.name;
        nix::sys::stat::fchmod(self.root(), Mode::from_bits_truncate(0o755))
            .ctx(|| format!("cannot chmod {MACHINES}/{hidden}"))?;
        // On disk before it has its name: a crash after the rename must not leave an image
        // of empty files (systemd's pulls sync too).
        nix::unistd::syncfs(self.root()).ctx(|| format!("cannot sync {MACHINES}"))?;
        let file = format!("{}.nspawn", self.name);
        let mut tmp = Hidden::file(&file)?;
        if let Some(b) = building.as_mut() {
            b.2 = Some(tmp.name.clone());
        }
        let what = format!("cannot write {MACHINES}/{}", tmp.name);
        nix::sys::stat::fchmod(tmp.fd(), Mode::from_bits_truncate(0o644)).ctx(|| what.clone())?;
        let f = tmp.file_mut();
        f.write_all(settings.as_bytes())
            .and_then(|()| f.sync_data())
            .ctx(|| what)?;
        tmp.commit(&file)?;
        if let Err(e) = self.root.commit(&self.name) {
            let pool = building.as_ref().map(|b| b.0.as_fd());
            if let Some(pool) = pool {
                let _ = nix::unistd::unlinkat(
                    pool,
                    file.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
            return Err(e);
        }
        // Done: nothing for the drop (or a late signal) to remove.
        *building = None;
        Ok(())
    }
}

/// Remove the hidden directory and temporary settings file, if any.
pub fn remove_building() {
    let mut b = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((dir, hidden, tmp)) = b.take() {
        let _ = ns_core::walk::remove_at(dir.as_fd(), OsStr::new(&hidden));
        if let Some(tmp) = tmp {
            let _ =
                nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
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
