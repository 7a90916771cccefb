//! The mount sequence, one function per kernel effect, applied by [`build_root`] in order.
//!
//! Every target inside the image is opened with openat2(RESOLVE_IN_ROOT) and mounted on
//! through its `/proc/self/fd/N` path, so a symlink in the image can never redirect a mount
//! onto the host. A mount point that is missing in the image is created (as nspawn does).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::scratch::Scratch;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use ns_core::state::{MountPlan, RootMode};
use ns_core::{Context, Error, Result};

/// What to create when a mount point is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Build the whole root and pivot into it (with what the host decided at start:
/// `runtime`). On return the process's root is the container.
pub fn build_root(
    plan: &MountPlan,
    runtime: &ns_core::state::Runtime,
    sync: Option<&ns_core::sync::SyncSocket>,
    root_fd: Option<OwnedFd>,
) -> Result<()> {
    // Modes below are meant as written (device nodes 0666, mount points 0755); ns-mount's
    // main sets the payload's 0022 again before it execs.
    nix::sys::stat::umask(Mode::empty());
    make_rslave()?;
    let scratch = crate::scratch::Scratch::new(&plan.scratch);
    let image = match (plan.idmapped_root, root_fd) {
        (true, Some(fd)) => crate::root::attach_idmapped(&plan.root, &scratch, fd)?,
        (true, None) => {
            return Err(Error::setup(
                "an idmapped root needs its mount from the monitor (--root-fd)".into(),
            ))
        }
        (false, _) => plan.root.clone(),
    };
    crate::scratch::set_image_dev(
        nix::sys::stat::stat(&image)
            .ctx(|| format!("cannot stat {}", image.display()))?
            .st_dev,
    );
    let mut root = crate::root::assemble(plan, &image, &scratch)?;
    if let Some(p) = &plan.pivot_root {
        root = crate::root::pivot_inside(root, p)?;
    }
    ns_core::stage::fault("ns-mount:mid");
    mount_proc(&root, &scratch, plan.private_network)?;
    mount_sys(&root)?;
    if let Some(cg) = &plan.cgroups {
        mount_cgroups(&root, cg)?;
    }
    mount_dev(&root)?;
    if plan.console {
        make_console(&root, sync)?;
    }
    mount_tmpfs(
        &root,
        "/run",
        &format!("mode=0755,{TMPFS_RUN}"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    mount_tmpfs(
        &root,
        "/tmp",
        &format!("mode=01777,{TMPFS_NESTED}"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    crate::ops::bind_users(&root, &plan.bind_users)?;
    run_host(&root, &plan.run_host, runtime.notify_socket.as_ref())?;
    if let Some(id) = &plan.machine_id {
        transient_machine_id(&root, id)?;
    }
    let writable = !plan.read_only && plan.root_mode != RootMode::State;
    crate::ops::etc_file(&root, "/etc/resolv.conf", &plan.resolv_conf, true, writable)?;
    crate::ops::etc_file(&root, "/etc/localtime", &plan.timezone, false, writable)?;
    for (i, op) in plan.ops.iter().enumerate() {
        crate::ops::apply(&root, &scratch, op, i, sync)?;
    }
    crate::root::finish(&root, plan)?;
    ns_core::stage::fault("ns-mount:before-pivot");
    pivot_into(&root)
}

/// Cut propagation: nothing mounted from here on reaches the host, while host mounts still
/// propagate in.
pub fn make_rslave() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .ctx(|| "cannot make / a recursive slave mount".into())
}

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

/// A plain (non-recursive) bind mount of `src` on `dst`.
pub(crate) fn bind_mount(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> nix::Result<()> {
    mount(
        Some(src.as_ref()),
        dst.as_ref(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

pub(crate) fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Open `path` (absolute, inside the container) without leaving the root; create it, and its
/// missing parents as directories, when `create` says what it should be. A dangling symlink
/// on the way is followed inside the image, as nspawn does, and its target created.
pub fn open_in_root(root: &OwnedFd, path: &Path, create: Option<Kind>) -> Result<OwnedFd> {
    open_in_root_depth(root, path, create, 0)
}

fn open_in_root_depth(
    root: &OwnedFd,
    path: &Path,
    create: Option<Kind>,
    depth: u32,
) -> Result<OwnedFd> {
    let rel = relative(path);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let cannot = |e: Errno| {
        Error::setup(format!(
            "cannot open {} in the container: {}",
            path.display(),
            e.desc()
        ))
    };
    match nix::fcntl::openat2(root.as_fd(), &rel, how) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) if create.is_some() && rel != Path::new(".") && depth < 40 => {
            let parent_path = path.parent().unwrap_or(Path::new("/"));
            let parent = open_in_root_depth(root, parent_path, Some(Kind::Dir), depth + 1)?;
            let Some(name) = rel.file_name() else {
                return Err(Error::setup(format!(
                    "cannot create mount point {}: not a plain path",
                    path.display()
                )));
            };
            if let Ok(target) = nix::fcntl::readlinkat(parent.as_fd(), name) {
                // A dangling symlink: create what it points to, inside the image.
                let target = Path::new(&target);
                let next = if target.is_absolute() {
                    target.to_path_buf()
                } else {
                    parent_path.join(target)
                };
                return open_in_root_depth(root, &next, create, depth + 1);
            }
            report_creation(&parent, name.as_ref())?;
            let r = match create {
                Some(Kind::Dir) => {
                    nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755))
                }
                _ => nix::sys::stat::mknodat(
                    parent.as_fd(),
                    name,
                    SFlag::S_IFREG,
                    Mode::from_bits_truncate(0o644),
                    0,
                ),
            };
            match r {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(Error::setup(format!(
                        "cannot create mount point {}: {}",
                        path.display(),
                        e.desc()
                    )))
                }
            }
            nix::fcntl::openat2(root.as_fd(), &rel, how).map_err(cannot)
        }
        Err(e) => Err(cannot(e)),
    }
}

/// SYNC-4: a node is about to be created in `parent`. Unless that is our own scratch tmpfs
/// (gone with the container anyway), tell the monitor its host path, so that it removes it
/// after the container is gone (nspawn leaves such mount points behind, systemd#17536).
fn report_creation(parent: &OwnedFd, name: &Path) -> Result<()> {
    // Only a node on the image's own file system persists; one on a file system mounted over
    // it (our /dev, /run, /tmp tmpfs) goes away by itself, and reporting its path would make
    // the monitor remove the image's entry of the same name.
    let dev = nix::sys::stat::fstat(parent.as_fd())
        .ctx(|| "cannot stat a mount point's parent".into())?
        .st_dev;
    if !crate::scratch::on_image(dev) {
        return Ok(());
    }
    let dir = nix::fcntl::readlink(fd_path(parent).as_str())
        .ctx(|| "cannot resolve a mount point's parent".into())?;
    match crate::scratch::host_path(&Path::new(&dir).join(name)) {
        Some(path) => ns_core::stage::report_created(&path, false),
        None => Ok(()),
    }
}

/// `/a/b` → `a/b`, `/` → `.`; `..` components are kept for RESOLVE_IN_ROOT to clamp.
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

pub(crate) fn mount_fs(
    root: &OwnedFd,
    dest: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let target = open_in_root(root, Path::new(dest), Some(Kind::Dir))?;
    mount(
        Some(fstype),
        fd_path(&target).as_str(),
        Some(fstype),
        flags,
        data,
    )
    .ctx(|| format!("cannot mount {fstype} on {dest}"))
}

/// Make the mount at `dest` (and below, if `recursive`) read-only.
pub(crate) fn make_read_only(root: &OwnedFd, dest: &Path, recursive: bool) -> Result<()> {
    // Re-open after mounting: the path walk now ends in the new mount, not the one below.
    let fd = open_in_root(root, dest, None)?;
    ns_core::sys::mount_setattr_rdonly(fd.as_fd(), recursive)
        .ctx(|| format!("cannot make {} read-only", dest.display()))
}

/// Bind `dest` on itself and make it read-only.
fn bind_read_only(root: &OwnedFd, dest: &str) -> Result<()> {
    let fd = open_in_root(root, Path::new(dest), None)?;
    let p = fd_path(&fd);
    mount(
        Some(p.as_str()),
        p.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("cannot bind {dest} on itself"))?;
    make_read_only(root, Path::new(dest), false)
}

/// A fresh proc for the new PID namespace; /proc/sys and hardware directories read-only as
/// nspawn sets them, but /proc/sys/net writable when the network is private; the files that
/// leak kernel memory, keys and timers or reach the host kernel (sysrq) masked with our own
/// inaccessible nodes (nspawn skips these masks on hosts without /run/systemd/inaccessible).
pub fn mount_proc(root: &OwnedFd, scratch: &Scratch, private_network: bool) -> Result<()> {
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(root, "/proc", "proc", f, None)?;
    if private_network {
        let fd = open_in_root(root, Path::new("/proc/sys/net"), None)?;
        let p = fd_path(&fd);
        bind_mount(p.as_str(), p.as_str()).ctx(|| "cannot bind /proc/sys/net on itself".into())?;
    }
    bind_read_only(root, "/proc/sys")?;
    for d in ["acpi", "apm", "asound", "bus", "fs", "irq", "scsi"] {
        let dest = format!("/proc/{d}");
        match open_in_root(root, Path::new(&dest), None) {
            Ok(_) => bind_read_only(root, &dest)?,
            Err(_) => continue, // absent on this kernel
        }
    }
    for f in ["kallsyms", "kcore", "keys", "sysrq-trigger", "timer_list"] {
        let dest = PathBuf::from(format!("/proc/{f}"));
        if open_in_root(root, &dest, None).is_ok() {
            crate::ops::inaccessible(root, scratch, &dest)?;
        }
    }
    Ok(())
}

/// sysfs, read-only.
pub fn mount_sys(root: &OwnedFd) -> Result<()> {
    let f = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let target = open_in_root(root, Path::new("/sys"), Some(Kind::Dir))?;
    match mount(
        Some("sysfs"),
        fd_path(&target).as_str(),
        Some("sysfs"),
        f,
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        // In a user namespace without its own network namespace the kernel refuses a new
        // sysfs (it belongs to the host's network namespace): show the host's, read-only
        // (recursively: a user namespace may not bind it without its locked submounts).
        Err(Errno::EPERM) => {
            mount(
                Some("/sys"),
                fd_path(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| "cannot bind /sys".into())?;
            make_read_only(root, Path::new("/sys"), true)
        }
        Err(e) => Err(Error::setup(format!(
            "cannot mount sysfs on /sys: {}",
            e.desc()
        ))),
    }
}

/// The size and inode limits of our tmpfs mounts: nspawn 252's (systemd's TMPFS_LIMITS_*), so
/// that no single one can take half the host's RAM (the kernel's default). /tmp and /dev/shm.
pub const TMPFS_NESTED: &str = "size=10%,nr_inodes=400k";
/// /run.
pub const TMPFS_RUN: &str = "size=20%,nr_inodes=800k";
/// What holds a container's writes to its root: the volatile root, volatile=state's /var and
/// the scratch tmpfs (the upper layer of -x and of --volatile=overlay).
pub const TMPFS_ROOT: &str = "size=25%,nr_inodes=1m";
/// /dev (nodes and links only).
pub const TMPFS_DEV: &str = "size=4m,nr_inodes=64k";
/// /sys/fs/cgroup of a v1 layout (mount points only).
pub const TMPFS_ALMOST_EMPTY: &str = "size=4m,nr_inodes=1k";

pub fn mount_tmpfs(root: &OwnedFd, dest: &str, opts: &str, flags: MsFlags) -> Result<()> {
    mount_fs(
        root,
        dest,
        "tmpfs",
        flags | MsFlags::MS_STRICTATIME,
        Some(opts),
    )
}

/// Device nodes of the minimal /dev: (name, major, minor).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// A tmpfs /dev holding only the harmless nodes, its own devpts instance, shm, mqueue and
/// the usual links. No host device node is reachable.
pub fn mount_dev(root: &OwnedFd) -> Result<()> {
    mount_tmpfs(
        root,
        "/dev",
        &format!("mode=0755,{TMPFS_DEV}"),
        MsFlags::MS_NOSUID,
    )?;
    let dev = open_in_root(root, Path::new("/dev"), None)?;
    let devp = fd_path(&dev);
    nix::sys::stat::mkdirat(dev.as_fd(), "char", Mode::from_bits_truncate(0o755))
        .ctx(|| "cannot create /dev/char".into())?;
    let mut try_mknod = true;
    for (name, major, minor) in DEVICES {
        try_mknod = make_device(&dev, &devp, name, major, minor, try_mknod)?;
        let link = format!("char/{major}:{minor}");
        nix::unistd::symlinkat(format!("../{name}").as_str(), dev.as_fd(), link.as_str())
            .ctx(|| format!("cannot create /dev/{link}"))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        nix::unistd::symlinkat(to, dev.as_fd(), link)
            .ctx(|| format!("cannot create /dev/{link}"))?;
    }
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let with_tty_group = "newinstance,ptmxmode=0666,mode=620,gid=5";
    if mount_fs(root, "/dev/pts", "devpts", pts_flags, Some(with_tty_group)).is_err() {
        // A user namespace that maps one id only (rootless) has no gid 5 (tty).
        mount_fs(
            root,
            "/dev/pts",
            "devpts",
            pts_flags,
            Some("newinstance,ptmxmode=0666,mode=620"),
        )?;
    }
    mount_tmpfs(
        root,
        "/dev/shm",
        &format!("mode=01777,{TMPFS_NESTED}"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    mount_fs(
        root,
        "/dev/mqueue",
        "mqueue",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

/// mknod the node (the umask is 0 while ns-mount works); where that is not allowed (user
/// namespaces) bind the host's node instead. Returns whether mknod may be tried next time.
fn make_device(
    dev: &OwnedFd,
    devp: &str,
    name: &str,
    major: u64,
    minor: u64,
    try_mknod: bool,
) -> Result<bool> {
    let mode = Mode::from_bits_truncate(0o666);
    let rdev = nix::sys::stat::makedev(major, minor);
    let made = match try_mknod {
        true => nix::sys::stat::mknodat(dev.as_fd(), name, SFlag::S_IFCHR, mode, rdev),
        false => Err(Errno::EPERM),
    };
    match made {
        Ok(()) => Ok(true),
        Err(Errno::EPERM) => {
            nix::sys::stat::mknodat(dev.as_fd(), name, SFlag::S_IFREG, mode, 0)
                .ctx(|| format!("cannot create /dev/{name}"))?;
            let host = format!("/dev/{name}");
            bind_mount(host.as_str(), format!("{devp}/{name}").as_str())
                .ctx(|| format!("cannot bind {host} into the container"))?;
            Ok(false)
        }
        Err(e) => Err(Error::setup(format!(
            "cannot create /dev/{name}: {}",
            e.desc()
        ))),
    }
}

/// pivot_root into the prepared root and detach the old one (the `pivot_root(".", ".")`
/// idiom: no put_old directory is needed in the image).
pub fn pivot_into(root: &OwnedFd) -> Result<()> {
    nix::unistd::fchdir(root.as_fd()).ctx(|| "cannot enter the new root".into())?;
    nix::unistd::pivot_root(".", ".").ctx(|| "cannot pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "cannot detach the old root".into())?;
    nix::unistd::chdir("/").ctx(|| "cannot chdir to /".into())
}

/// SYNC-6: a pty from the container's own devpts instance, its slave bound on /dev/console
/// (where ns-caps opens it), its master sent to the monitor, which relays it to the user's
/// terminal.
fn make_console(root: &OwnedFd, sync: Option<&ns_core::sync::SyncSocket>) -> Result<()> {
    let sync =
        sync.ok_or_else(|| Error::setup("a console needs a monitor to relay it (ns-run)".into()))?;
    let ptmx = open_in_root(root, Path::new("/dev/pts/ptmx"), None)?;
    let master = nix::fcntl::open(
        fd_path(&ptmx).as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "cannot open /dev/pts/ptmx".into())?;
    let n =
        ns_core::sys::pty_unlock(master.as_fd()).ctx(|| "cannot unlock the console pty".into())?;
    let slave = open_in_root(root, &Path::new("/dev/pts").join(n.to_string()), None)?;
    let console = open_in_root(root, Path::new("/dev/console"), Some(Kind::File))?;
    bind_mount(fd_path(&slave).as_str(), fd_path(&console).as_str())
        .ctx(|| "cannot bind the console pty on /dev/console".into())?;
    sync.send_fd(&ns_core::sync::Msg::Console, master.as_fd())
}

/// systemd's container interface in /run/host (on the container's /run tmpfs): the host's
/// os-release, the container manager and the container's uuid; then /run/host read-only.
fn run_host(root: &OwnedFd, rh: &ns_core::state::RunHost, notify: Option<&PathBuf>) -> Result<()> {
    if rh.manager.is_empty() {
        return Ok(());
    }
    let dir = open_in_root(root, Path::new("/run/host"), Some(Kind::Dir))?;
    if let Some(sock) = notify {
        // The monitor's notification socket, where the guest's init reports READY=1.
        let target = open_in_root(root, Path::new("/run/host/notify"), Some(Kind::File))?;
        bind_mount(sock.as_path(), fd_path(&target).as_str())
            .ctx(|| "cannot bind the notification socket on /run/host/notify".into())?;
    }
    let os = std::fs::read("/etc/os-release")
        .or_else(|_| std::fs::read("/usr/lib/os-release"))
        .unwrap_or_default();
    for (name, data) in [
        ("os-release", os),
        (
            "container-manager",
            format!("{}\n", rh.manager).into_bytes(),
        ),
        ("container-uuid", format!("{}\n", rh.uuid).into_bytes()),
    ] {
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o444),
        )
        .ctx(|| format!("cannot write /run/host/{name}"))?;
        use std::io::Write;
        std::fs::File::from(fd)
            .write_all(&data)
            .ctx(|| format!("cannot write /run/host/{name}"))?;
    }
    let p = fd_path(&dir);
    mount(
        Some(p.as_str()),
        p.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| "cannot bind /run/host on itself".into())?;
    make_read_only(root, Path::new("/run/host"), true)
}

/// `-b` on an image without a machine id: a transient one, read-only over /etc/machine-id
/// (from the container's uuid), kept on the container's /run tmpfs: nothing is written to the
/// image but a mount point when the file is missing (removed after exit).
fn transient_machine_id(root: &OwnedFd, id: &str) -> Result<()> {
    if open_in_root(root, Path::new("/etc"), None).is_err() {
        return Ok(());
    }
    // Resolved inside the tree (a symlink there never tells whether a host path exists).
    // A machine id of its own, or something else than a file there: the image's business.
    let current = open_in_root(root, Path::new("/etc/machine-id"), None).and_then(|f| {
        nix::sys::stat::fstat(f.as_fd()).ctx(|| "cannot stat /etc/machine-id".into())
    });
    if current.is_ok_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size > 0) {
        return Ok(());
    }
    let run = open_in_root(root, Path::new("/run"), None)?;
    let name = ".ns-machine-id";
    let fd = nix::fcntl::openat(
        run.as_fd(),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o444),
    )
    .ctx(|| "cannot write the transient machine id".into())?;
    use std::io::Write;
    std::fs::File::from(fd)
        .write_all(format!("{id}\n").as_bytes())
        .ctx(|| "cannot write the transient machine id".into())?;
    let target = open_in_root(root, Path::new("/etc/machine-id"), Some(Kind::File))?;
    let src = open_in_root(root, &Path::new("/run").join(name), None)?;
    bind_mount(fd_path(&src).as_str(), fd_path(&target).as_str())
        .ctx(|| "cannot bind the transient machine id on /etc/machine-id".into())?;
    make_read_only(root, Path::new("/etc/machine-id"), false)
}

/// /sys/fs/cgroup for a booted init, as nspawn sets it for the layout. Mounted inside the
/// cgroup namespace, each hierarchy shows the container's own cgroup as its root: the v1
/// controllers read-only, the hierarchies systemd manages (name=systemd, cgroup2) writable.
fn mount_cgroups(root: &OwnedFd, cg: &ns_core::state::CgroupMounts) -> Result<()> {
    use ns_core::state::CgroupLayout;
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if cg.layout == CgroupLayout::Unified {
        return mount_fs(root, "/sys/fs/cgroup", "cgroup2", f, None);
    }
    mount_tmpfs(
        root,
        "/sys/fs/cgroup",
        &format!("mode=0755,{TMPFS_ALMOST_EMPTY}"),
        f,
    )?;
    for c in &cg.controllers {
        let dest = format!("/sys/fs/cgroup/{c}");
        let target = open_in_root(root, Path::new(&dest), Some(Kind::Dir))?;
        mount(
            Some("cgroup"),
            fd_path(&target).as_str(),
            Some("cgroup"),
            f | MsFlags::MS_RDONLY,
            Some(c.as_str()),
        )
        .ctx(|| format!("cannot mount cgroup {c} on {dest}"))?;
        // nspawn's links for co-mounted controllers: cpu -> cpu,cpuacct.
        if c.contains(',') {
            let cg_dir = open_in_root(root, Path::new("/sys/fs/cgroup"), None)?;
            for part in c.split(',') {
                let _ = nix::unistd::symlinkat(c.as_str(), cg_dir.as_fd(), part);
            }
        }
    }
    let target = open_in_root(root, Path::new("/sys/fs/cgroup/systemd"), Some(Kind::Dir))?;
    mount(
        Some("cgroup"),
        fd_path(&target).as_str(),
        Some("cgroup"),
        f,
        Some("none,name=systemd"),
    )
    .ctx(|| "cannot mount the name=systemd hierarchy".into())?;
    if cg.layout == CgroupLayout::Hybrid {
        mount_fs(root, "/sys/fs/cgroup/unified", "cgroup2", f, None)?;
    }
    make_read_only(root, Path::new("/sys/fs/cgroup"), false)
}
