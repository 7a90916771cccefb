//! An OCI runtime's root (`MountPlan::oci`): config.json's mounts as listed and nothing
//! else, in runc's order: the mounts, /dev's nodes, /dev/ptmx and links (unless /dev is a
//! bind mount), the console, /dev and the root read-only, pivot_root, the root's
//! propagation; then, inside, the sysctls, the read-only paths and the masked paths.
//!
//! Without a mount namespace (`OciMounts::chroot`), as runc: the mounts are made in the
//! caller's namespace on the rootfs itself (each target opened inside it, so none lands
//! outside), and the container chroots into it; nothing is done to the caller's other
//! mounts (no rslave, no bind of the root, no propagation change). ns-oci unmounts them at
//! delete.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use ns_core::state::{DeviceNode, MountPlan, OciMount, OciMounts};
use ns_core::{Context, Error, Result};

use crate::inroot::{bind_mount, fd_path, make_read_only, open_existing, open_in_root, Kind};

/// Build the root from `oci` and pivot into it. On return the process's root is the
/// container.
pub fn build_root(
    plan: &MountPlan,
    oci: &OciMounts,
    sync: Option<&ns_core::sync::SyncSocket>,
    root_fd: Option<OwnedFd>,
) -> Result<()> {
    let (root, _scratch) = match oci.chroot {
        true => (chroot_root(plan)?, None),
        false => crate::setup::prepare(plan, root_fd).map(|(r, s)| (r, Some(s)))?,
    };
    ns_core::stage::fault("ns-mount:mid");
    for (i, m) in oci.mounts.iter().enumerate() {
        mount_one(&root, plan, m)
            .map_err(|e| Error::setup(format!("mounts[{i}] ({}): {}", m.dest.display(), e.msg)))?;
    }
    if oci.setup_dev {
        let userns = ns_core::sys::in_user_namespace();
        for d in &oci.devices {
            make_node(&root, d, userns)?;
        }
        dev_links(&root)?;
    }
    if plan.console {
        crate::setup::make_console(&root, sync)?;
    }
    let dev_ro = |m: &OciMount| m.dest == Path::new("/dev") && m.flags & MS_RDONLY != 0;
    if oci.mounts.iter().any(dev_ro) {
        make_read_only(&root, Path::new("/dev"), false)?;
    }
    if oci.chroot {
        // (a read-only root, the root's propagation: refused by ns-run's plan)
        crate::setup::create_hooks(plan)?;
        chroot_into(&root)?;
        return inside(oci);
    }
    crate::root::finish(&root, plan)?;
    crate::setup::hooks_then_pivot(&root, plan)?;
    if let Some(p) = oci.root_propagation {
        mount(None::<&str>, "/", None::<&str>, ms(p), None::<&str>)
            .ctx(|| "cannot set the root's propagation (linux.rootfsPropagation)".into())?;
    }
    inside(oci)
}

use libc::MS_RDONLY;

/// The rootfs itself, to mount on (no mount namespace: it stays the caller's).
fn chroot_root(plan: &MountPlan) -> Result<OwnedFd> {
    nix::sys::stat::umask(Mode::empty());
    let root = nix::fcntl::open(
        &plan.root,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", plan.root.display()))?;
    let st = nix::sys::stat::fstat(root.as_fd())
        .ctx(|| format!("cannot stat {}", plan.root.display()))?;
    crate::scratch::set_image_dev(st.st_dev);
    Ok(root)
}

/// Enter the root by chroot (pivot_root needs a mount namespace of our own).
fn chroot_into(root: &OwnedFd) -> Result<()> {
    nix::unistd::fchdir(root.as_fd()).ctx(|| "cannot enter the new root".into())?;
    nix::unistd::chroot(".").ctx(|| "cannot chroot".into())?;
    nix::unistd::chdir("/").ctx(|| "cannot chdir to /".into())
}

fn ms(bits: u64) -> MsFlags {
    MsFlags::from_bits_truncate(bits as _)
}

/// After pivot_root, as runc does them: the sysctls, read-only paths, masked paths (each
/// skipped when it is not there, as an earlier mask may have hidden it).
fn inside(oci: &OciMounts) -> Result<()> {
    for (key, value) in &oci.sysctl {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes())
            .ctx(|| format!("linux.sysctl: cannot write {value:?} to {}", path.display()))?;
    }
    let root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "cannot open the new root".into())?;
    for p in &oci.readonly_paths {
        if let Some(fd) = open_existing(&root, p)? {
            crate::setup::bind_self_read_only(&root, &fd, &p.to_string_lossy(), false)?;
        }
    }
    // /dev/null, opened once, at the first file masked.
    let mut null = None;
    for p in &oci.masked_paths {
        if let Some(fd) = open_existing(&root, p)? {
            mask(&root, &fd, p, &mut null)?;
        }
    }
    Ok(())
}

/// runc's mask: /dev/null over a file, an empty read-only tmpfs over a directory. `null`:
/// the container's /dev/null once opened (`Some(None)`: it has none).
fn mask(root: &OwnedFd, fd: &OwnedFd, p: &Path, null: &mut Option<Option<OwnedFd>>) -> Result<()> {
    let st = nix::sys::stat::fstat(fd.as_fd()).ctx(|| format!("cannot stat {}", p.display()))?;
    let made = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            Some("tmpfs"),
            fd_path(fd).as_str(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        let null = match null {
            Some(n) => n,
            None => null.insert(open_existing(root, Path::new("/dev/null"))?),
        };
        match null {
            Some(null) => bind_mount(fd_path(null), fd_path(fd)),
            None => return Ok(()), // as runc: nothing to mask with
        }
    };
    made.ctx(|| format!("linux.maskedPaths: cannot mask {}", p.display()))
}

/// One of config.json's mounts.
fn mount_one(root: &OwnedFd, plan: &MountPlan, m: &OciMount) -> Result<()> {
    match m.fstype.as_str() {
        "bind" => bind(root, m)?,
        "cgroup" | "cgroup2" if m.dest == Path::new("/sys/fs/cgroup") => cgroup(root, plan, m)?,
        _ => fs(root, m)?,
    }
    for p in &m.propagation {
        let target = open_in_root(root, &m.dest, None)?;
        mount(
            None::<&str>,
            fd_path(&target).as_str(),
            None::<&str>,
            ms(*p),
            None::<&str>,
        )
        .ctx(|| "cannot change its propagation".into())?;
    }
    Ok(())
}

/// A file system. As runc: a tmpfs (and /dev) is mounted writable and made read-only
/// after (its content may need to be made first); a tmpfs without `mode=` keeps the mode
/// of the directory it covers.
fn fs(root: &OwnedFd, m: &OciMount) -> Result<()> {
    let target = open_in_root(root, &m.dest, Some(Kind::Dir))?;
    let tmpfs = m.fstype == "tmpfs";
    let mut flags = ms(m.flags);
    if tmpfs || m.dest == Path::new("/dev") {
        flags.remove(MsFlags::MS_RDONLY);
    }
    let keep_mode = (tmpfs && !m.data.split(',').any(|o| o.starts_with("mode=")))
        .then(|| nix::sys::stat::fstat(target.as_fd()).map(|st| st.st_mode & 0o7777))
        .transpose()
        .ctx(|| format!("cannot stat {}", m.dest.display()))?;
    let source = if m.source.is_empty() {
        &m.fstype
    } else {
        &m.source
    };
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    let at = fd_path(&target);
    match mount(
        Some(source.as_str()),
        at.as_str(),
        Some(m.fstype.as_str()),
        flags,
        data,
    ) {
        Ok(()) => {}
        // A user namespace without its own network namespace may not mount sysfs: the
        // host's, read-only (as for ns-run).
        Err(Errno::EPERM) if m.fstype == "sysfs" => {
            return crate::setup::bind_host_read_only(root, &target, "/sys", &m.dest)
        }
        Err(e) => {
            return Err(Error::setup(format!(
                "cannot mount {}: {}",
                m.fstype,
                e.desc()
            )))
        }
    }
    if let Some(mode) = keep_mode {
        use std::os::unix::fs::PermissionsExt;
        let top = open_in_root(root, &m.dest, None)?;
        std::fs::set_permissions(fd_path(&top), std::fs::Permissions::from_mode(mode))
            .ctx(|| format!("cannot chmod {}", m.dest.display()))?;
    }
    if tmpfs && m.dest != Path::new("/dev") && m.flags & MS_RDONLY != 0 {
        make_read_only(root, &m.dest, false)?;
    }
    Ok(())
}

/// A bind mount of a host path; its other flags by a remount (keeping what the kernel
/// locks in a user namespace).
fn bind(root: &OwnedFd, m: &OciMount) -> Result<()> {
    let st = nix::sys::stat::stat(m.source.as_str()).ctx(|| format!("cannot bind {}", m.source))?;
    let kind = match st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        true => Kind::Dir,
        false => Kind::File,
    };
    let target = open_in_root(root, &m.dest, Some(kind))?;
    let flags = ms(m.flags);
    let rec = flags & MsFlags::MS_REC;
    mount(
        Some(m.source.as_str()),
        fd_path(&target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .ctx(|| format!("cannot bind {}", m.source))?;
    let extra = flags - (MsFlags::MS_REC | MsFlags::MS_REMOUNT | MsFlags::MS_BIND);
    if extra.is_empty() {
        return Ok(());
    }
    let top = open_in_root(root, &m.dest, None)?;
    let remount = |f: MsFlags| {
        let f = f | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
        mount(
            None::<&str>,
            fd_path(&top).as_str(),
            None::<&str>,
            f,
            None::<&str>,
        )
    };
    match remount(extra) {
        Err(Errno::EPERM) => remount(extra | locked_flags(&top)?),
        r => r,
    }
    .ctx(|| format!("cannot remount {} with its options", m.dest.display()))
}

/// The flags of the mount at `fd` that a user namespace may not clear.
fn locked_flags(fd: &OwnedFd) -> Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::fstatvfs(fd).ctx(|| "cannot statvfs a bind mount".into())?;
    let mut f = MsFlags::empty();
    for (s, m) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        // ST_RELATIME (nix names it on glibc only): the kernel's MNT_RELATIME, 1 << 12.
        (FsFlags::from_bits_retain(1 << 12), MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(s) {
            f |= m;
        }
    }
    Ok(f)
}

/// /sys/fs/cgroup: the hierarchies as nspawn lays them out for this host (inside the
/// container's cgroup namespace, each shows the container's own cgroup); where the kernel
/// refuses that (a user namespace without a cgroup namespace), the host's, read-only.
fn cgroup(root: &OwnedFd, plan: &MountPlan, m: &OciMount) -> Result<()> {
    let made = match &plan.cgroups {
        Some(cg) => crate::setup::mount_cgroups(root, cg, None),
        None => Err(Error::setup("no cgroup layout was planned".into())),
    };
    if made.is_err() {
        let target = open_in_root(root, &m.dest, Some(Kind::Dir))?;
        return crate::setup::bind_host_read_only(root, &target, "/sys/fs/cgroup", &m.dest);
    }
    match m.flags & MS_RDONLY != 0 {
        true => make_read_only(root, &m.dest, true),
        false => Ok(()),
    }
}

/// A node as runc makes it: mknod (an existing one is kept) and chown; in a user namespace
/// (where mknod is not allowed), or where the device policy already refuses mknod, the
/// host's node of the same path bound on an empty file.
fn make_node(root: &OwnedFd, d: &DeviceNode, userns: bool) -> Result<()> {
    let what = || format!("linux.devices: cannot create {}", d.path.display());
    let parent = open_in_root(
        root,
        d.path.parent().unwrap_or(Path::new("/")),
        Some(Kind::Dir),
    )?;
    let name = d.path.file_name().ok_or_else(|| Error::setup(what()))?;
    let kind = match d.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let dev = nix::sys::stat::makedev(d.major as u64, d.minor as u64);
    let mode = Mode::from_bits_truncate(d.mode);
    let made = match userns {
        true => Err(Errno::EPERM),
        false => nix::sys::stat::mknodat(parent.as_fd(), name, kind, mode, dev),
    };
    match made {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Ok(()),
        Err(Errno::EPERM) => {
            let target = open_in_root(root, &d.path, Some(Kind::File))?;
            return bind_mount(&d.path, fd_path(&target))
                .ctx(|| format!("linux.devices: cannot bind the host's {}", d.path.display()));
        }
        Err(e) => return Err(Error::setup(format!("{}: {}", what(), e.desc()))),
    }
    nix::unistd::fchownat(
        parent.as_fd(),
        name,
        Some(d.uid.into()),
        Some(d.gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(what)
}

/// /dev/ptmx to the devpts instance's, and the /dev/fd, stdin, stdout, stderr links (and
/// /dev/core where the kernel has /proc/kcore), as runc makes them.
fn dev_links(root: &OwnedFd) -> Result<()> {
    let dev = open_in_root(root, Path::new("/dev"), Some(Kind::Dir))?;
    match nix::unistd::unlinkat(dev.as_fd(), "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::setup(format!(
                "cannot remove /dev/ptmx: {}",
                e.desc()
            )))
        }
    }
    let mut links = vec![
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    for (link, to) in links {
        match nix::unistd::symlinkat(to, dev.as_fd(), link) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(Error::setup(format!(
                    "cannot create /dev/{link}: {}",
                    e.desc()
                )))
            }
        }
    }
    Ok(())
}
