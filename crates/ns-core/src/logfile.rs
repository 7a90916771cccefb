//! `--log-file=PATH`: the console's output and the monitor's messages appended to PATH,
//! kept to about 1 MiB: at 512 KiB the file becomes `PATH.1` (replacing the one before) and
//! a new PATH takes stdout and stderr. The monitor's console relay counts what it writes
//! ([`LogFile::wrote`]); `ns-ctl log` reads PATH.1 then PATH, and follows a rotation by the
//! inode.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where a log is rotated.
pub const ROTATE_AT: u64 = 512 << 10;

/// PATH.1: the log before the last rotation.
pub fn older(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The log's directory, held from [`redirect`] on (before the container starts), and its
/// name in it: a rotation renames and creates there, never through the path again (a
/// directory of the log's path that the container can write, bound in, could be made a
/// symlink to another by then).
static DIR: std::sync::OnceLock<(std::os::fd::OwnedFd, std::ffi::OsString)> =
    std::sync::OnceLock::new();

/// Open `name` in `dir` for appending (made 0600 if missing; `new`: made now, never one
/// that is there). Never through a symlink, never a FIFO (that would hang the monitor), and
/// only a regular file of ours with one link: in a directory others can write (`/tmp`),
/// someone else's file, or a hard link to one (`/etc/shadow`), is not appended to.
fn open_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    new: bool,
) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::MetadataExt;
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK
        | if new { OFlag::O_EXCL } else { OFlag::empty() };
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let f = std::fs::File::from(nix::fcntl::openat(dir, name, flags, mode)?);
    let m = f.metadata()?;
    if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() || m.nlink() != 1 {
        return Err(std::io::Error::other(
            "not a regular file of ours with a single link",
        ));
    }
    Ok(f)
}

/// Point stdout and stderr at `path` (appended); its directory is held for the rotations.
pub fn redirect(path: &Path) -> crate::Result<()> {
    use crate::Context;
    use nix::fcntl::OFlag;
    let ctx = || format!("--log-file: cannot open {}", path.display());
    let name = path.file_name().ok_or_else(|| {
        crate::Error::invalid("--log-file", &path.to_string_lossy(), "no file name")
    })?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = nix::fcntl::open(
        parent.unwrap_or(Path::new(".")),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(ctx)?;
    let f = open_at(std::os::fd::AsFd::as_fd(&dir), name, false).ctx(ctx)?;
    for to in [1, 2] {
        crate::sys::dup_to(f.as_raw_fd(), to)
            .ctx(|| format!("--log-file: cannot use {}", path.display()))?;
    }
    let _ = DIR.set((dir, name.to_owned()));
    Ok(())
}

/// The log the console relay writes ([`redirect`]'s): how much it holds.
pub struct LogFile {
    size: u64,
}

impl LogFile {
    /// The log [`redirect`] made stdout and stderr, as long as stdout is.
    pub fn of_stdout() -> LogFile {
        let size = nix::sys::stat::fstat(std::io::stdout()).map_or(0, |st| st.st_size as u64);
        LogFile { size }
    }

    /// `n` bytes were written to stdout: rotate once the log holds [`ROTATE_AT`]. A rotation
    /// that cannot be made (a directory at PATH.1, a file someone made at PATH since the
    /// rename: in a directory others write) empties the log instead: bounded all the same
    /// (growing where it is, it grew without end, or an unlinked PATH.1 did, out of sight).
    pub fn wrote(&mut self, n: u64) {
        self.size += n;
        if self.size < ROTATE_AT {
            return;
        }
        let Some((dir, name)) = DIR.get() else {
            return;
        };
        let mut old = name.clone();
        old.push(".1");
        let _ = nix::fcntl::renameat(dir, name.as_os_str(), dir, old.as_os_str());
        // A new file only (someone's, put there since the rename, is not used).
        match open_at(std::os::fd::AsFd::as_fd(dir), name, true) {
            Ok(f) => {
                let _ = crate::sys::dup_to(f.as_raw_fd(), 1);
                let _ = crate::sys::dup_to(f.as_raw_fd(), 2);
            }
            _ => {
                let _ = nix::unistd::ftruncate(std::io::stdout(), 0);
            }
        }
        self.size = 0;
    }
}
