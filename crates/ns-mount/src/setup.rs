//! The mount sequence, one function per kernel effect, applied by [`build_root`] in order.
//! Targets inside the image are opened and mounted on through [`crate::inroot`].

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::inroot::{
    bind_mount, fd_path, make_read_only, mount_fs, mount_tmpfs, open_in_root, Kind,
};
use crate::scratch::Scratch;
use crate::tmpfs::{with_context, TMPFS_ALMOST_EMPTY, TMPFS_DEV, TMPFS_NESTED, TMPFS_RUN};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use ns_core::state::{MountPlan, RootMode};
use ns_core::{Context, Error, Result};

/// The root as a mount of its own (by `plan.root_mode`, after `--pivot-root`), in our
/// mount namespace cut off from the host's (recursively slave); returns it and the scratch
/// tmpfs. Modes below are meant as written (device nodes 0666, mount points 0755):
/// ns-mount's main sets the payload's 0022 again before it execs.
pub fn prepare(plan: &MountPlan, root_fd: Option<OwnedFd>) -> Result<(OwnedFd, Scratch)> {
    nix::sys::stat::umask(Mode::empty());
    make_rslave()?;
    let scratch = crate::scratch::Scratch::new(&plan.scratch);
    let image = match (plan.idmapped_root || plan.host_by_fd, root_fd) {
        (_, Some(fd)) => crate::root::attach_image(&plan.root, &scratch, fd)?,
        (true, None) => {
            return Err(Error::setup(
                "this root needs its mount from the monitor (--root-fd)".into(),
            ))
        }
        (false, None) => plan.root.clone(),
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
    Ok((root, scratch))
}

/// Build the whole root, nspawn's way, and pivot into it (with what the host decided at
/// start: `runtime`). On return the process's root is the container.
pub fn build_root(
    plan: &MountPlan,
    runtime: &ns_core::state::Runtime,
    sync: Option<&ns_core::sync::SyncSocket>,
    root_fd: Option<OwnedFd>,
) -> Result<()> {
    let (root, scratch) = prepare(plan, root_fd)?;
    let label = plan.selinux_apifs_context.as_deref();
    ns_core::stage::fault("ns-mount:mid");
    mount_proc(&root, &scratch, plan.private_network, sync)?;
    mount_sys(&root, plan.private_network, sync)?;
    if let Some(cg) = &plan.cgroups {
        mount_cgroups(&root, cg, label)?;
    }
    mount_dev(&root, label)?;
    if plan.console {
        make_console(&root, sync)?;
    }
    mount_tmpfs(
        &root,
        "/run",
        &with_context(&format!("mode=0755,{TMPFS_RUN}"), label),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    mount_tmpfs(
        &root,
        "/tmp",
        &with_context(&format!("mode=01777,{TMPFS_NESTED}"), label),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    crate::ops::bind_users(&root, &plan.bind_users)?;
    run_host(&root, plan, runtime.notify_socket.as_ref())?;
    if let Some(id) = &plan.machine_id {
        transient_machine_id(&root, id)?;
    }
    let writable = !plan.read_only && plan.root_mode != RootMode::State;
    crate::ops::etc_file(&root, "/etc/resolv.conf", &plan.resolv_conf, true, writable)?;
    crate::ops::etc_file(&root, "/etc/localtime", &plan.timezone, false, writable)?;
    for (i, op) in plan.ops.iter().enumerate() {
        crate::ops::apply(&root, &scratch, op, i, sync, plan.host_by_fd)?;
    }
    crate::root::finish(&root, plan)?;
    hooks_then_pivot(&root, plan)
}

/// The root is built: OCI createContainer hooks (in the container's namespaces, before
/// pivot_root), then pivot into it.
pub fn hooks_then_pivot(root: &std::os::fd::OwnedFd, plan: &MountPlan) -> Result<()> {
    create_hooks(plan)?;
    pivot_into(root)
}

/// The createContainer hooks, last before the root is entered.
pub fn create_hooks(plan: &MountPlan) -> Result<()> {
    if let Some(h) = &plan.create_hooks {
        ns_core::hook::run_in_stage("createContainer", h, "creating")?;
    }
    ns_core::stage::fault("ns-mount:before-pivot");
    Ok(())
}

/// Cut propagation: nothing mounted from here on reaches the host, while host mounts still
/// propagate in.
pub fn make_rslave() -> Result<()> {
    ns_core::sys::make_rslave().ctx(|| "cannot make / a recursive slave mount".into())
}

/// Bind `dest` on itself and make it read-only.
fn bind_read_only(root: &OwnedFd, dest: &str) -> Result<()> {
    let fd = open_in_root(root, Path::new(dest), None)?;
    bind_self_read_only(root, &fd, dest, false)
}

/// Bind `dest` (open as `fd`) on itself, recursively, and make the new mount read-only (and
/// those below it, if `recursive`).
pub(crate) fn bind_self_read_only(
    root: &OwnedFd,
    fd: &OwnedFd,
    dest: &str,
    recursive: bool,
) -> Result<()> {
    let p = fd_path(fd);
    mount(
        Some(p.as_str()),
        p.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("cannot bind {dest} on itself"))?;
    make_read_only(root, Path::new(dest), recursive)
}

/// A fresh proc for the new PID namespace; /proc/sys and hardware directories read-only as
/// nspawn sets them, but /proc/sys/net writable when the network is private; the files that
/// leak kernel memory, keys and timers or reach the host kernel (sysrq) masked with our own
/// inaccessible nodes (nspawn skips these masks on hosts without /run/systemd/inaccessible).
pub fn mount_proc(
    root: &OwnedFd,
    scratch: &Scratch,
    private_network: bool,
    sync: Option<&ns_core::sync::SyncSocket>,
) -> Result<()> {
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let target = open_in_root(root, Path::new("/proc"), Some(Kind::Dir))?;
    let p = fd_path(&target);
    match (
        mount(Some("proc"), p.as_str(), Some("proc"), f, None::<&str>),
        sync,
    ) {
        (Ok(()), _) => {}
        // In a user namespace the kernel takes a new procfs only where the mount namespace
        // shows one fully (inside another container, whose /proc has masked files, it does
        // not): the monitor makes one for our PID namespace outside and hands it down.
        (Err(Errno::EPERM), Some(sync)) if ns_core::sys::in_user_namespace() => {
            let proc = crate::ops::from_host(sync, &ns_core::sync::Msg::NeedProc)?;
            ns_core::sys::move_mount_to(proc.as_fd(), target.as_fd())
                .ctx(|| "cannot attach proc on /proc".into())?;
        }
        (Err(e), _) => {
            return Err(Error::setup(format!(
                "cannot mount proc on /proc: {}",
                e.desc()
            )))
        }
    }
    if private_network {
        let fd = open_in_root(root, Path::new("/proc/sys/net"), None)?;
        let p = fd_path(&fd);
        bind_mount(p.as_str(), p.as_str()).ctx(|| "cannot bind /proc/sys/net on itself".into())?;
    }
    bind_read_only(root, "/proc/sys")?;
    for d in ["acpi", "apm", "asound", "bus", "fs", "irq", "scsi"] {
        let dest = format!("/proc/{d}");
        match open_in_root(root, Path::new(&dest), None) {
            Ok(fd) => bind_self_read_only(root, &fd, &dest, false)?,
            Err(_) => continue, // absent on this kernel
        }
    }
    for f in ["kallsyms", "kcore", "keys", "sysrq-trigger", "timer_list"] {
        let dest = PathBuf::from(format!("/proc/{f}"));
        if let Ok(fd) = open_in_root(root, &dest, None) {
            crate::ops::inaccessible_at(root, scratch, &fd, &dest)?;
        }
    }
    Ok(())
}

/// sysfs, read-only.
pub fn mount_sys(
    root: &OwnedFd,
    private_network: bool,
    sync: Option<&ns_core::sync::SyncSocket>,
) -> Result<()> {
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
        // sysfs (it belongs to the host's network namespace): the monitor makes one outside,
        // read-only and locked, as nspawn's. Where it cannot either (a guest sharing its
        // host's network namespace), the host's is shown, read-only (recursively: a user
        // namespace may not bind it without its locked submounts).
        Err(Errno::EPERM) => {
            if let (Some(sync), false) = (sync, private_network) {
                if let Some(sys) =
                    crate::ops::from_host_if_made(sync, &ns_core::sync::Msg::NeedSys)?
                {
                    return ns_core::sys::move_mount_to(sys.as_fd(), target.as_fd())
                        .ctx(|| "cannot attach sysfs on /sys".into());
                }
            }
            bind_host_read_only(root, &target, "/sys", Path::new("/sys"))
        }
        Err(e) => Err(Error::setup(format!(
            "cannot mount sysfs on /sys: {}",
            e.desc()
        ))),
    }
}

/// The host's `host` (with what is mounted below it) bound on `target` (`dest` in the
/// container), read-only: what a user namespace may show of /sys where it may not mount one.
pub(crate) fn bind_host_read_only(
    root: &OwnedFd,
    target: &OwnedFd,
    host: &str,
    dest: &Path,
) -> Result<()> {
    mount(
        Some(host),
        fd_path(target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("cannot bind {host}"))?;
    make_read_only(root, dest, true)
}

/// Device nodes of the minimal /dev: (name, major, minor); runc's default nodes too.
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// A tmpfs /dev holding only the harmless nodes, its own devpts instance, shm, mqueue and
/// the usual links. No host device node is reachable. `label`: `-L`'s SELinux context for
/// the tmpfs mounts and devpts (not mqueue, as nspawn).
pub fn mount_dev(root: &OwnedFd, label: Option<&str>) -> Result<()> {
    mount_tmpfs(
        root,
        "/dev",
        &with_context(&format!("mode=0755,{TMPFS_DEV}"), label),
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
    let with_tty_group = with_context("newinstance,ptmxmode=0666,mode=620,gid=5", label);
    if mount_fs(root, "/dev/pts", "devpts", pts_flags, Some(&with_tty_group)).is_err() {
        // A user namespace that maps one id only (rootless) has no gid 5 (tty).
        mount_fs(
            root,
            "/dev/pts",
            "devpts",
            pts_flags,
            Some(&with_context("newinstance,ptmxmode=0666,mode=620", label)),
        )?;
    }
    mount_tmpfs(
        root,
        "/dev/shm",
        &with_context(&format!("mode=01777,{TMPFS_NESTED}"), label),
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
pub(crate) fn make_console(root: &OwnedFd, sync: Option<&ns_core::sync::SyncSocket>) -> Result<()> {
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
/// os-release, the container manager and the container's uuid, the credentials; then
/// /run/host read-only.
fn run_host(root: &OwnedFd, plan: &MountPlan, notify: Option<&PathBuf>) -> Result<()> {
    let rh = &plan.run_host;
    // None planned (an OCI container's): no uuid. An empty manager name is a user's
    // (SYSTEMD_NSPAWN_CONTAINER_SERVICE=), and nspawn still makes /run/host then.
    if rh.uuid.is_empty() {
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
    crate::credentials::mount(root, &plan.credentials)?;
    bind_self_read_only(root, &dir, "/run/host", true)
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

/// /sys/fs/cgroup, as nspawn sets it for the layout. Mounted inside the cgroup namespace,
/// each hierarchy shows the container's own cgroup as its root: the v1 controllers and the
/// tmpfs under them read-only (writable under -U, as nspawn: container root owns nothing
/// there), the hierarchies systemd manages (name=systemd, cgroup2) writable.
pub(crate) fn mount_cgroups(
    root: &OwnedFd,
    cg: &ns_core::state::CgroupMounts,
    label: Option<&str>,
) -> Result<()> {
    use ns_core::state::CgroupLayout;
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if cg.layout == CgroupLayout::Unified {
        return mount_cgroup2(root, f);
    }
    mount_tmpfs(
        root,
        "/sys/fs/cgroup",
        &with_context(&format!("mode=0755,{TMPFS_ALMOST_EMPTY}"), label),
        f,
    )?;
    // Our fresh tmpfs, which nothing else sees yet: its mount points made fd-relative.
    let dir = open_in_root(root, Path::new("/sys/fs/cgroup"), None)?;
    let ro = match cg.controllers_writable {
        true => MsFlags::empty(),
        false => MsFlags::MS_RDONLY,
    };
    for c in &cg.controllers {
        mount_hierarchy(&dir, c, "cgroup", f | ro, c)?;
        // nspawn's links for co-mounted controllers: cpu -> cpu,cpuacct.
        if c.contains(',') {
            for part in c.split(',') {
                let _ = nix::unistd::symlinkat(c.as_str(), dir.as_fd(), part);
            }
        }
    }
    mount_hierarchy(&dir, "systemd", "cgroup", f, "none,name=systemd")?;
    if cg.layout == CgroupLayout::Hybrid {
        mount_hierarchy(&dir, "unified", "cgroup2", f, "")?;
    }
    if cg.controllers_writable {
        return Ok(());
    }
    // The tmpfs's superblock read-only too, as nspawn remounts it.
    mount(
        None::<&str>,
        fd_path(&dir).as_str(),
        None::<&str>,
        f | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_STRICTATIME,
        Some("mode=0755"),
    )
    .ctx(|| "cannot make /sys/fs/cgroup read-only".into())
}

/// cgroup2 on /sys/fs/cgroup. Where /sys is the host's, bound (in a user namespace without
/// a network namespace of its own, see [`mount_sys`]), /sys/fs/cgroup is the host's cgroup2
/// mount, on which the kernel refuses a mount of the same superblock (EBUSY): there the new
/// one is made detached and moved on top.
fn mount_cgroup2(root: &OwnedFd, f: MsFlags) -> Result<()> {
    use ns_core::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID};
    let target = open_in_root(root, Path::new("/sys/fs/cgroup"), Some(Kind::Dir))?;
    let p = fd_path(&target);
    let what = || "cannot mount cgroup2 on /sys/fs/cgroup".to_string();
    match mount(
        Some("cgroup2"),
        p.as_str(),
        Some("cgroup2"),
        f,
        None::<&str>,
    ) {
        Err(Errno::EBUSY) => {
            let attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
            let params = [ns_core::sys::FsParam::Str("source", "cgroup2")];
            let fs = ns_core::sys::fs_mount(c"cgroup2", &params, attrs)?;
            ns_core::sys::move_mount_to(fs.as_fd(), target.as_fd()).ctx(what)
        }
        r => r.ctx(what),
    }
}

/// Mount the cgroup file system `fstype` (with `data`, the hierarchy's options) on a new
/// directory `name` of the /sys/fs/cgroup tmpfs `dir` is open on.
fn mount_hierarchy(
    dir: &OwnedFd,
    name: &str,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<()> {
    let dest = || format!("/sys/fs/cgroup/{name}");
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o755))
        .ctx(|| format!("cannot create {}", dest()))?;
    let target = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", dest()))?;
    mount(
        Some("cgroup"),
        fd_path(&target).as_str(),
        Some(fstype),
        flags,
        (!data.is_empty()).then_some(data),
    )
    .ctx(|| format!("cannot mount {fstype} {data} on {}", dest()))
}
