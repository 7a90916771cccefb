//! The scratch tmpfs: a private tmpfs mounted in the container's own mount namespace, holding
//! what must not outlive the container (temporary bind sources, overlay upper and work dirs,
//! the `-x` upper layer, inaccessible nodes). It needs no cleanup: it is freed with the mount
//! namespace, also when everything is killed with SIGKILL. Its limits are those nspawn gives
//! a volatile root (25% of RAM, 1M inodes): it holds the upper layer of `-x`.

use std::cell::Cell;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use ns_core::{Context, Result};

/// Where the scratch tmpfs is mounted by default (inside the container's mount namespace
/// only; on the host this stays an empty directory, 0700, made and checked here, on the
/// host, with the rest of the runtime directory). Rootless: under the user's runtime dir.
/// A stage run by hand inside a user namespace cannot check host ownership: it names the
/// directory, made by whoever ran ns-run or ns-oci on the host before.
pub fn default_dir() -> ns_core::Result<PathBuf> {
    if nix::unistd::geteuid().is_root() && !ns_core::paths::host_root() {
        return Ok(PathBuf::from("/run/ns-run/scratch"));
    }
    // Only a mount point: an older version's 0777 one is made 0700 again, not refused.
    ns_core::paths::mount_point_dir(&ns_core::paths::runtime_dir()?.join("scratch"), 0o700)
}

static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Mounted on first use only: a plain container never pays for it.
pub struct Scratch {
    dir: PathBuf,
    mounted: Cell<bool>,
    counter: Cell<u32>,
}

impl Scratch {
    /// Must be created inside the container's mount namespace, after make_rslave.
    pub fn new(dir: &Path) -> Scratch {
        let _ = DIR.set(dir.to_path_buf());
        Scratch {
            dir: dir.to_path_buf(),
            mounted: Cell::new(false),
            counter: Cell::new(0),
        }
    }

    fn ensure_mounted(&self) -> Result<()> {
        if self.mounted.get() {
            return Ok(());
        }
        let d = &self.dir;
        // Normally made on the host already (default_dir); else made here with explicit modes
        // (ns-mount works under umask 0): never writable by others.
        if let Some(parent) = d.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .ctx(|| format!("cannot create {}", parent.display()))?;
        }
        match nix::unistd::mkdir(d, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("cannot create {}", d.display())),
        }
        // Mounted on what is there now, never through a symlink.
        let at = nix::fcntl::open(
            d,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("cannot open {}", d.display()))?;
        mount(
            Some("tmpfs"),
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&at)).as_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode=0700,{}", crate::tmpfs::TMPFS_ROOT).as_str()),
        )
        .ctx(|| format!("cannot mount the scratch tmpfs on {}", d.display()))?;
        self.mounted.set(true);
        Ok(())
    }

    /// A new, empty directory on the scratch tmpfs, named after its use.
    pub fn dir(&self, what: &str) -> Result<PathBuf> {
        self.ensure_mounted()?;
        let n = self.counter.get();
        self.counter.set(n + 1);
        let p = self.dir.join(format!("{what}-{n}"));
        nix::unistd::mkdir(&p, Mode::from_bits_truncate(0o755))
            .ctx(|| format!("cannot create {}", p.display()))?;
        Ok(p)
    }

    /// An inaccessible node of the given file type (mode 0000, nothing behind it), created on
    /// first use. Hosts without systemd have no /run/systemd/inaccessible; we bring our own.
    pub fn inaccessible(&self, kind: SFlag) -> Result<PathBuf> {
        self.ensure_mounted()?;
        let dir = self.dir.join("inaccessible");
        if !dir.exists() {
            nix::unistd::mkdir(&dir, Mode::from_bits_truncate(0o755))
                .ctx(|| "cannot create inaccessible nodes".into())?;
        }
        let name = match kind {
            SFlag::S_IFDIR => "dir",
            SFlag::S_IFCHR => "chr",
            SFlag::S_IFBLK => "blk",
            SFlag::S_IFIFO => "fifo",
            SFlag::S_IFSOCK => "sock",
            _ => "reg",
        };
        let p = dir.join(name);
        if p.symlink_metadata().is_err() {
            let none = Mode::empty();
            match kind {
                SFlag::S_IFDIR => nix::unistd::mkdir(&p, none),
                SFlag::S_IFREG => nix::fcntl::open(
                    &p,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    none,
                )
                .map(drop),
                k => nix::sys::stat::mknod(&p, k, none, 0),
            }
            .ctx(|| format!("cannot create {}", p.display()))?;
            // mkdir and open honour the umask; mode 0000 is the point.
            nix::sys::stat::fchmodat(
                nix::fcntl::open(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY, none)
                    .ctx(|| "cannot open inaccessible nodes".into())?
                    .as_fd(),
                name,
                none,
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .ctx(|| format!("cannot chmod {}", p.display()))?;
        }
        Ok(p)
    }
}

static HOST_ALIAS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();

/// The image is attached on the scratch tmpfs (an idmapped mount): paths below `at` are the
/// image's `host` paths, for what ns-mount reports to the monitor.
pub fn set_host_alias(at: &Path, host: &Path) {
    let _ = HOST_ALIAS.set((at.to_path_buf(), host.to_path_buf()));
}

/// Where `p` (as seen in our mount namespace) is on the host, or None when it is on the
/// scratch tmpfs and goes away by itself.
pub fn host_path(p: &Path) -> Option<PathBuf> {
    if let Some((at, host)) = HOST_ALIAS.get() {
        if let Ok(rest) = p.strip_prefix(at) {
            return Some(host.join(rest));
        }
    }
    let scratch = DIR
        .get()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("/nonexistent"));
    (!p.starts_with(scratch)).then(|| p.to_path_buf())
}

static IMAGE_DEV: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The device of the image's file system: only nodes created there persist in the image.
pub fn set_image_dev(dev: u64) {
    let _ = IMAGE_DEV.set(dev);
}

/// Is a directory on device `dev` part of the image (and not one of the file systems mounted
/// over it: our tmpfs /dev, /run, /tmp, user tmpfs, ...)?
pub fn on_image(dev: u64) -> bool {
    IMAGE_DEV.get() == Some(&dev)
}
