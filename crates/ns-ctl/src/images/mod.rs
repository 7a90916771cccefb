//! machinectl's image verbs without systemd-machined or systemd-importd: images are the
//! directories, btrfs subvolumes, `.raw` files and block devices of the image directories
//! ([`ns_core::paths::IMAGE_DIRS`], machinectl's search path); new ones (clone, import,
//! pull) go to /var/lib/machines. Everything is made under a hidden `.#NAME.XXXXXXXX` name
//! that its maker holds a flock on, and renamed into place (RENAME_NOREPLACE) only when
//! complete; `clean` (and every import) removes such leftovers nobody holds.
//!
//! These verbs run in a binary of their own, ns-ctl-images (src/bin), which ns-ctl executes
//! for them: their crates (tar, compression, HTTP with TLS) would triple ns-ctl, and
//! `ns-ctl shell` copies ns-ctl whole into a sealed memfd at every call.

mod cli;
mod copy;
pub mod hidden;
mod ops;
mod progress;
mod pull;
mod show;
pub mod tarball;
mod transfer;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use ns_core::{Context, Error, Result};

pub use cli::ImageVerb;
pub use hidden::Hidden;
pub use ops::{clean, clone, read_only, remove, rename, set_limit};
pub use progress::Progress;
pub use pull::{pull, Verify};
pub use show::{list, show, status};
use transfer::Compression;
pub use transfer::{export, import, import_fs, Format};

/// Where new images go (machinectl's pool).
pub const POOL: &str = "/var/lib/machines";

/// What an image is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Directory,
    Subvolume,
    Raw,
    Block,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::Subvolume => "subvolume",
            Kind::Raw => "raw",
            Kind::Block => "block",
        }
    }

    /// A tree (directory or subvolume), not a file.
    pub fn is_tree(self) -> bool {
        matches!(self, Kind::Directory | Kind::Subvolume)
    }
}

/// One image found in an image directory.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    /// The image directory that has it.
    pub dir: PathBuf,
    /// Its entry there: NAME, or NAME.raw.
    pub entry: OsString,
    pub kind: Kind,
    pub read_only: bool,
    /// Bytes on disk (raw files: their blocks; block devices: their size); None for trees
    /// (walking a tree costs: `image-status` does, `list-images` does not).
    pub usage: Option<u64>,
    /// Last modification, µs since the epoch (a tree's: its top directory's).
    pub mtime: u64,
    /// The entry is a symlink to the image (as /etc/machines holds them).
    pub symlink: bool,
}

impl Image {
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.entry)
    }

    /// Images under /usr are the vendor's: never changed (machinectl's rule).
    pub fn vendor(&self) -> bool {
        self.dir.starts_with("/usr")
    }
}

/// The flag `read-only` sets on a directory image's top (chattr +i).
pub const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// An image name as machinectl takes it: a file name that is not hidden, without `/`,
/// control characters or spaces, at most 200 bytes (room for `.raw` and a hidden prefix).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.starts_with('.') {
        Some("starts with '.' (hidden names are ns-ctl's temporary ones)")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.len() > 200 {
        Some("longer than 200 bytes")
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("contains a space or control character")
    } else if name.ends_with('~') {
        Some("ends with '~'")
    } else {
        None
    };
    match why {
        Some(w) => Err(Error::invalid(
            what,
            name,
            &format!("not a valid image name: {w}"),
        )),
        None => Ok(()),
    }
}

/// Open a directory of the host to work in (the image directories are root's).
pub fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The pool, made (0700, as machined makes it) when missing.
pub fn open_pool() -> Result<OwnedFd> {
    match nix::unistd::mkdir(POOL, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(Error::setup(format!("cannot create {POOL}: {}", e.desc()))),
    }
    open_dir(Path::new(POOL)).ctx(|| format!("cannot open {POOL}"))
}

/// Every image, the first of each name in search order; hidden ones (`.`) only with `all`.
pub fn discover(all: bool) -> Vec<Image> {
    let mut out: Vec<Image> = Vec::new();
    for dir in ns_core::paths::IMAGE_DIRS {
        let Ok(fd) = open_dir(Path::new(dir)) else {
            continue;
        };
        let Ok(mut names) = ns_core::walk::names(fd.as_fd()) else {
            continue;
        };
        names.sort();
        for n in names {
            if n.as_bytes().starts_with(b".") && !all {
                continue;
            }
            if let Some(img) = make(fd.as_fd(), Path::new(dir), &n) {
                if !out.iter().any(|i| i.name == img.name) {
                    out.push(img);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The image NAME (NAME, else NAME.raw, in each directory in search order).
pub fn find(name: &str) -> Result<Image> {
    check_name("NAME", name)?;
    lookup(name).ok_or_else(|| Error::setup(format!("no image called {name}")))
}

fn lookup(name: &str) -> Option<Image> {
    ns_core::paths::IMAGE_DIRS.iter().find_map(|dir| {
        let fd = open_dir(Path::new(dir)).ok()?;
        [name.to_string(), format!("{name}.raw")]
            .iter()
            .find_map(|e| make(fd.as_fd(), Path::new(dir), OsStr::new(e)))
    })
}

/// Is the name taken (by an image of any kind, in any image directory)?
pub fn taken(name: &str) -> bool {
    lookup(name).is_some()
}

/// The image at entry `name` of `dir` (symlinks followed, as machinectl follows them), or
/// None when it is not one: a directory, a regular `.raw` file, a block device.
fn make(dirfd: std::os::fd::BorrowedFd<'_>, dir: &Path, name: &OsStr) -> Option<Image> {
    use nix::fcntl::AtFlags;
    let lst = nix::sys::stat::fstatat(dirfd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    let symlink = lst.st_mode & libc::S_IFMT == libc::S_IFLNK;
    let st = nix::sys::stat::fstatat(dirfd, name, AtFlags::empty()).ok()?;
    let s = name.to_str()?;
    let fmt = st.st_mode & libc::S_IFMT;
    let (pretty, kind) = match fmt {
        libc::S_IFDIR => (s, Kind::Directory),
        libc::S_IFREG => (s.strip_suffix(".raw")?, Kind::Raw),
        libc::S_IFBLK => (s, Kind::Block),
        _ => return None,
    };
    if pretty.is_empty() {
        return None;
    }
    let mut img = Image {
        name: pretty.to_string(),
        dir: dir.to_path_buf(),
        entry: name.to_os_string(),
        kind,
        read_only: dir.starts_with("/usr"),
        usage: None,
        mtime: (st.st_mtime as u64) * 1_000_000 + (st.st_mtime_nsec as u64) / 1000,
        symlink,
    };
    let fd =
        nix::fcntl::openat(dirfd, name, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    if nix::sys::statvfs::fstatvfs(&fd)
        .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    {
        img.read_only = true;
    }
    match kind {
        Kind::Directory => {
            let d = ns_core::walk::reopen_dir(fd.as_fd()).ok();
            if st.st_ino == 256
                && nix::sys::statfs::fstatfs(&fd)
                    .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
            {
                img.kind = Kind::Subvolume;
            }
            let flags = d.and_then(|d| ns_core::sys::inode_flags(d.as_fd()).ok());
            img.read_only |= flags.is_some_and(|f| f & FS_IMMUTABLE_FL != 0);
        }
        Kind::Raw => {
            img.read_only |= st.st_mode & 0o222 == 0;
            img.usage = Some(st.st_blocks as u64 * 512);
        }
        Kind::Block => img.usage = block_size(&fd),
        Kind::Subvolume => {}
    }
    Some(img)
}

fn block_size(fd: &OwnedFd) -> Option<u64> {
    use std::io::Seek;
    let f = reopen(fd.as_fd(), OFlag::O_RDONLY | OFlag::O_NONBLOCK).ok()?;
    std::fs::File::from(f).seek(std::io::SeekFrom::End(0)).ok()
}

/// A random hidden name for something in the making: `.#NAME.XXXXXXXX`.
pub fn temp_name(name: &str) -> String {
    let b = ns_core::random_bytes::<4>();
    format!(".#{name}.{:08x}", u32::from_ne_bytes(b))
}

/// Open the inode an O_PATH fd holds, with `flags` (through /proc/self/fd: that inode,
/// whatever its path now is).
pub fn reopen(fd: std::os::fd::BorrowedFd<'_>, flags: OFlag) -> nix::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
}

fn needs(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Err(Error::setup("name an image".into()));
    }
    Ok(())
}

fn format(f: Option<String>) -> Result<Option<Compression>> {
    f.map(|f| Compression::parse(&f)).transpose()
}

/// Run an image verb; one that makes something in the pool stops cleanly at a SIGINT,
/// SIGTERM or SIGHUP, leaving nothing ([`hidden`]).
pub fn run(verb: ImageVerb, json: bool) -> Result<i32> {
    use ImageVerb as V;
    let makes = matches!(
        verb,
        V::Clone { .. }
            | V::PullOci { .. }
            | V::ImportOci { .. }
            | V::ImportTar { .. }
            | V::ImportRaw { .. }
            | V::ImportFs { .. }
            | V::PullTar { .. }
            | V::PullRaw { .. }
    );
    if makes {
        hidden::watch_signals()?;
    }
    run_verb(verb, json).map_err(hidden::signal_code)
}

fn run_verb(verb: ImageVerb, json: bool) -> Result<i32> {
    use ImageVerb as V;
    match verb {
        V::ListImages { all } => list(json, all),
        V::ImageStatus { names } => needs(&names).and_then(|()| status(&names, json)),
        V::ShowImage { names } => needs(&names).and_then(|()| show(&names)),
        V::Clone {
            name,
            new,
            read_only,
        } => clone(&name, &new, read_only),
        V::Rename { name, new } => rename(&name, &new),
        V::ReadOnly { name, value } => {
            let on = match value {
                None => true,
                Some(v) => ns_core::parse_boolean(&v)
                    .ok_or_else(|| Error::invalid("BOOL", &v, "not a boolean"))?,
            };
            read_only(&name, on)
        }
        V::Remove { names } => needs(&names).and_then(|()| remove(&names)),
        V::Clean => clean(),
        V::PullOci {
            reference,
            name,
            tls_verify,
        } => {
            let verify = ns_core::parse_boolean(&tls_verify)
                .ok_or_else(|| Error::invalid("--tls-verify", &tls_verify, "not a boolean"))?;
            crate::oci::pull(&reference, name.as_deref(), verify).map(|()| 0)
        }
        V::ImportOci { path, name } => crate::oci::import(&path, &name).map(|()| 0),
        V::SetLimit { args } => match args.as_slice() {
            [bytes] => set_limit(None, bytes),
            [name, bytes] => set_limit(Some(name), bytes),
            _ => Err(Error::setup("set-limit takes [NAME] BYTES".into())),
        },
        V::ImportTar {
            file,
            name,
            read_only,
        } => import(Format::Tar, &file, &name, read_only),
        V::ImportRaw {
            file,
            name,
            read_only,
        } => import(Format::Raw, &file, &name, read_only),
        V::ImportFs {
            dir,
            name,
            read_only,
        } => import_fs(&dir, &name, read_only),
        V::ExportTar {
            name,
            file,
            format: f,
        } => export(Format::Tar, &name, &file, format(f)?),
        V::ExportRaw {
            name,
            file,
            format: f,
        } => export(Format::Raw, &name, &file, format(f)?),
        V::PullTar {
            url,
            name,
            verify,
            read_only,
        } => pull(
            Format::Tar,
            &url,
            name.as_deref(),
            Verify::parse(&verify)?,
            read_only,
        ),
        V::PullRaw {
            url,
            name,
            verify,
            read_only,
        } => pull(
            Format::Raw,
            &url,
            name.as_deref(),
            Verify::parse(&verify)?,
            read_only,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_as_machinectl_takes_them() {
        assert!(check_name("NAME", "debian-12").is_ok());
        assert!(check_name("NAME", "web_1.v2").is_ok());
        for bad in ["", ".hidden", ".#x", "a/b", "a b", "a\nb", "x~"] {
            assert!(check_name("NAME", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("NAME", &"x".repeat(201)).is_err());
        assert!(temp_name("web").starts_with(".#web."));
        assert_eq!(temp_name("web").len(), ".#web.".len() + 8);
    }
}
