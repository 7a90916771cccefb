//! Where an image is built: a hidden directory `.#NAME.XXXXXXXX` (0700) in
//! /var/lib/machines, the image verbs' [`Hidden`] (held with a flock while it is built,
//! removed when dropped, and by the signal's thread at a SIGINT, SIGTERM or SIGHUP), renamed
//! into place (RENAME_NOREPLACE) with its settings file only when complete.

use std::io::Write;
use std::os::fd::BorrowedFd;

use nix::sys::stat::Mode;
use ns_core::{Context, Error, Result};

use crate::images::Hidden;

pub const MACHINES: &str = crate::images::POOL;

pub struct Staging {
    name: String,
    root: Hidden,
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
        Ok(Staging {
            name: name.to_string(),
            root: Hidden::dir(name)?,
        })
    }

    /// The image's directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.fd()
    }

    /// Put the image in place as NAME with its settings file `settings`: the file first (an
    /// image never runs without its settings), each renamed without replacing anything,
    /// both or neither.
    pub fn commit(self, settings: &str) -> Result<()> {
        let hidden = &self.root.name;
        nix::sys::stat::fchmod(self.root(), Mode::from_bits_truncate(0o755))
            .ctx(|| format!("cannot chmod {MACHINES}/{hidden}"))?;
        // On disk before it has its name: a crash after the rename must not leave an image
        // of empty files (systemd's pulls sync too).
        nix::unistd::syncfs(self.root()).ctx(|| format!("cannot sync {MACHINES}"))?;
        let file = format!("{}.nspawn", self.name);
        let mut tmp = Hidden::file(&file)?;
        let what = format!("cannot write {MACHINES}/{}", tmp.name);
        nix::sys::stat::fchmod(tmp.fd(), Mode::from_bits_truncate(0o644)).ctx(|| what.clone())?;
        let f = tmp.file_mut();
        f.write_all(settings.as_bytes())
            .and_then(|()| f.sync_data())
            .ctx(|| what)?;
        Hidden::commit_all(vec![(tmp, &file), (self.root, &self.name)])
    }
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
