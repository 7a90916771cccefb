//! Assembling the root from the directory, by mode (`MountPlan::root_mode`), and what is done
//! to it last (read-only).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use ns_core::state::{MountPlan, PivotRoot, RootMode};
use ns_core::{Context, Result};

use crate::inroot::{fd_path, make_read_only, mount_tmpfs, open_in_root, Kind};
use crate::scratch::Scratch;
use crate::tmpfs::TMPFS_ROOT;

/// Bind the root directory on itself so that it is a mount point (pivot_root needs one);
/// returns an fd of the new mount's root.
pub fn bind_root(dir: &Path) -> Result<OwnedFd> {
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("cannot bind {} on itself", dir.display()))?;
    nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", dir.display()))
}

/// Escape a path for overlayfs's option string (`:` separates layers, `,` options).
pub fn ovl_escape(p: &str) -> String {
    p.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        p,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", p.display()))
}

/// Attach the image's mount made by the monitor (SYNC-1: only a process in the host's user
/// namespace may idmap a host file system, or enter a directory only host root may) on the
/// scratch tmpfs. Returns where.
pub fn attach_image(image: &Path, scratch: &Scratch, fd: OwnedFd) -> Result<PathBuf> {
    let at = scratch.dir("image")?;
    ns_core::sys::move_mount_to(fd.as_fd(), open_dir(&at)?.as_fd())
        .ctx(|| format!("cannot attach the mount of {}", image.display()))?;
    crate::scratch::set_host_alias(&at, image);
    Ok(at)
}

/// The root directory as its own mount, to build on. The host's own root (`-D /` with
/// `--volatile=state`) is cloned without its submounts and attached on the scratch tmpfs: a
/// bind on `/` would leave our root and its /proc, /sys, /dev in the way.
fn own_mount(dir: &Path, scratch: &Scratch) -> Result<OwnedFd> {
    if dir != Path::new("/") {
        return bind_root(dir);
    }
    let tree =
        ns_core::sys::open_tree_clone(dir, false).ctx(|| "cannot clone the mount of /".into())?;
    let at = scratch.dir("hostroot")?;
    ns_core::sys::move_mount_to(tree.as_fd(), open_dir(&at)?.as_fd())
        .ctx(|| "cannot attach the clone of /".into())?;
    open_dir(&at)
}

/// The root mount, by mode, from `dir` (the image, or its idmapped mount); returns an fd of
/// its top.
pub fn assemble(plan: &MountPlan, dir: &Path, scratch: &Scratch) -> Result<OwnedFd> {
    match plan.root_mode {
        RootMode::Directory => own_mount(dir, scratch),
        RootMode::Overlay => {
            // `-x`: the directory is only read; every write lands on the scratch tmpfs, so
            // start-up costs the same whatever the tree's size, and nothing survives the
            // container, not even after SIGKILL.
            let (upper, work, top) = (
                scratch.dir("root-upper")?,
                scratch.dir("root-work")?,
                scratch.dir("root")?,
            );
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                ovl_escape(&dir.to_string_lossy()),
                upper.display(),
                work.display()
            );
            mount(
                Some("overlay"),
                &top,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .ctx(|| format!("cannot mount an overlay of {}", dir.display()))?;
            open_dir(&top)
        }
        RootMode::Volatile => {
            // `--volatile=yes`: a tmpfs root with only the image's /usr, read-only.
            let top = scratch.dir("root")?;
            mount(
                Some("tmpfs"),
                &top,
                Some("tmpfs"),
                MsFlags::MS_STRICTATIME,
                Some(format!("mode=0755,{TMPFS_ROOT}").as_str()),
            )
            .ctx(|| "cannot mount the volatile root tmpfs".into())?;
            let root = open_dir(&top)?;
            let usr = open_in_root(&root, Path::new("/usr"), Some(Kind::Dir))?;
            // The image's /usr, resolved inside the image (a symlink there stays inside).
            let image = open_dir(dir)?;
            let image_usr = open_in_root(&image, Path::new("/usr"), None)?;
            mount(
                Some(fd_path(&image_usr).as_str()),
                fd_path(&usr).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("cannot bind {}/usr", dir.display()))?;
            make_read_only(&root, Path::new("/usr"), true)?;
            for link in ["bin", "sbin", "lib", "lib64"] {
                let is_dir =
                    nix::sys::stat::fstatat(&image_usr, link, nix::fcntl::AtFlags::empty())
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                if is_dir {
                    nix::unistd::symlinkat(format!("usr/{link}").as_str(), root.as_fd(), link)
                        .ctx(|| format!("cannot create /{link}"))?;
                }
            }
            Ok(root)
        }
        RootMode::State => {
            // `--volatile=state`: the image read-only, a tmpfs /var.
            let root = own_mount(dir, scratch)?;
            mount_tmpfs(
                &root,
                "/var",
                &crate::tmpfs::with_context(
                    &format!("mode=0755,{TMPFS_ROOT}"),
                    plan.selinux_apifs_context.as_deref(),
                ),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            )?;
            ns_core::sys::mount_setattr_rdonly(root.as_fd(), false)
                .ctx(|| "cannot make the root read-only".into())?;
            Ok(root)
        }
    }
}

/// `--pivot-root=NEW[:OLD]`: NEW (inside the image) becomes the root; the image's own root is
/// bound at OLD inside it, or left out.
pub fn pivot_inside(root: OwnedFd, p: &PivotRoot) -> Result<OwnedFd> {
    let new = open_in_root(&root, &p.new, None)?;
    let newp = fd_path(&new);
    mount(
        Some(newp.as_str()),
        newp.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("--pivot-root: cannot bind {} on itself", p.new.display()))?;
    // Re-open: the path now ends in the new mount.
    let new_root = open_in_root(&root, &p.new, None)?;
    if let Some(old) = &p.old {
        let target = open_in_root(&new_root, old, Some(Kind::Dir))?;
        mount(
            Some(fd_path(&root).as_str()),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| {
            format!(
                "--pivot-root: cannot bind the old root on {}",
                old.display()
            )
        })?;
    }
    Ok(new_root)
}

/// Last touches before pivot_root: `--read-only`.
pub fn finish(root: &OwnedFd, plan: &MountPlan) -> Result<()> {
    if plan.read_only && plan.root_mode != RootMode::State {
        ns_core::sys::mount_setattr_rdonly(root.as_fd(), false)
            .ctx(|| "cannot make the root read-only".into())?;
    }
    Ok(())
}
