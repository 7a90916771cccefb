//! `--log-file=PATH`: the console's output and the monitor's messages appended to PATH,
//! kept to about 1 MiB: at 512 KiB the file becomes `PATH.1` (replacing the one before) and
//! a new PATH takes stdout and stderr. The monitor's console relay counts what it writes
//! ([`LogFile::wrote`]); `ns-ctl log` reads PATH.1 then PATH, and follows a rotation by the
//! inode.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where a log is rotated.
pub const ROTATE_AT: u64 = 512 << 10;

/// PATH.1: the log before the last rotation.
pub fn older(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Open `path` for appending (made 0600 if missing; `new`: made now, never one that is
/// there). Never through a symlink, never a FIFO (that would hang the monitor), and only a
/// regular file of ours with one link: in a directory others can write (`/tmp`), someone
/// else's file, or a hard link to one (`/etc/shadow`), is not appended to.
fn open(path: &Path, new: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::options()
        .append(true)
        .create(!new)
        .create_new(new)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() || m.nlink() != 1 {
        return Err(std::io::Error::other(
            "not a regular file of ours with a single link",
        ));
    }
    Ok(f)
}

/// Point stdout and stderr at `path` (appended).
pub fn redirect(path: &Path) -> crate::Result<()> {
    use crate::Context;
    let f = open(path, false).ctx(|| format!("--log-file: cannot open {}", path.display()))?;
    for to in [1, 2] {
        crate::sys::dup_to(f.as_raw_fd(), to)
            .ctx(|| format!("--log-file: cannot use {}", path.display()))?;
    }
    Ok(())
}

/// The log the console relay writes: its path and how much it holds.
pub struct LogFile {
    path: PathBuf,
    size: u64,
}

impl LogFile {
    /// The log at `path`, already stdout and stderr ([`redirect`]), as long as stdout is.
    pub fn of_stdout(path: PathBuf) -> LogFile {
        let size = nix::sys::stat::fstat(std::io::stdout()).map_or(0, |st| st.st_size as u64);
        LogFile { path, size }
    }

    /// `n` bytes were written to stdout: rotate once the log holds [`ROTATE_AT`]. A rotation
    /// that fails leaves the log growing where it is (tried again at the next write).
    pub fn wrote(&mut self, n: u64) {
        self.size += n;
        if self.size < ROTATE_AT {
            return;
        }
        if std::fs::rename(&self.path, older(&self.path)).is_err() {
            return;
        }
        // A new file (someone's, put there since the rename, is not used: the log goes on
        // in the old one, tried again at the next write).
        if let Ok(f) = open(&self.path, true) {
            let _ = crate::sys::dup_to(f.as_raw_fd(), 1);
            let _ = crate::sys::dup_to(f.as_raw_fd(), 2);
            self.size = 0;
        }
    }
}
