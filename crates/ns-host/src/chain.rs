//! The chain, started and answered: fork (straight into the container's cgroup2 directory
//! when there is one), exec ns-enter with the state and the chain's end of the sync socket,
//! then the host's half of the sync protocol (see `ns_core::sync`) as intent-named methods.
//! ns-run's monitor and `ns-oci create` both start their container through [`Chain::start`];
//! what differs between them (hooks, pid file, start fifo, registration, network, console)
//! stays with them.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::Pid;
use ns_core::exec::{state_argv, StageFds};
use ns_core::state::{
    BoundUser, IdBase, IdMaps, Idmap, MountOp, MountPlan, Ownership, Runtime, Source, State, UserNs,
};
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{spawn, SignalSet, SpawnError};
use ns_core::{Context, Error, Result};

/// The host's end of a started chain.
pub struct Chain {
    /// ns-enter's pid (our child).
    pub enter: Pid,
    sync: SyncSocket,
    /// A sysfs made and locked with the image at SYNC-1 ([`Chain::map_userns`]), for the
    /// `NeedSys` to come ([`Chain::host_sys`]).
    sys_ahead: std::cell::Cell<Option<OwnedFd>>,
}

/// What the chain reports, in the order it may come (the SYNC numbers of `ns_core::sync`).
#[derive(Debug)]
pub enum Report {
    /// SYNC-1: ns-enter's user namespace exists: write its maps ([`Chain::map_userns`]).
    UserNs,
    /// SYNC-2: the container's PID 1 exists (host pid): host-side setup, then [`Chain::go`].
    Pid(Pid),
    /// SYNC-4: a host-visible path the chain is about to create, to remove after exit.
    Created { path: PathBuf, recursive: bool },
    /// SYNC-5: user mount number `op` is made on the host ([`Chain::host_mount`]).
    NeedMount { op: usize },
    /// SYNC-5: the container's procfs is made on the host ([`Chain::host_proc`]).
    NeedProc,
    /// SYNC-5: the container's sysfs is made on the host ([`Chain::host_sys`]).
    NeedSys,
    /// SYNC-6: the master of the container's pty.
    Console(OwnedFd),
    /// SYNC-7: set up, waiting for `start` (OCI create only).
    Waiting,
    /// SYNC-8: a stage failed (it printed why, and exits with `code`).
    Failed {
        stage: String,
        code: i32,
        message: String,
    },
}

impl Report {
    fn of(msg: Msg, fd: Option<OwnedFd>) -> Result<Report> {
        Ok(match msg {
            Msg::UserNs => Report::UserNs,
            Msg::Pid(p) => Report::Pid(Pid::from_raw(p)),
            Msg::Created { path, recursive } => Report::Created { path, recursive },
            Msg::NeedMount { op } => Report::NeedMount { op },
            Msg::NeedProc => Report::NeedProc,
            Msg::NeedSys => Report::NeedSys,
            Msg::Console => {
                Report::Console(fd.ok_or_else(|| Error::setup("Console without its pty".into()))?)
            }
            Msg::Waiting => Report::Waiting,
            Msg::Failed {
                stage,
                code,
                message,
            } => Report::Failed {
                stage,
                code,
                message,
            },
            m @ (Msg::Go | Msg::Mapped | Msg::Mount | Msg::NoMount | Msg::Cgroups) => {
                return Err(Error::setup(format!("unexpected {m:?} from the chain")))
            }
        })
    }
}

/// How the host maps the chain's user namespace (SYNC-1).
pub enum Maps<'a> {
    /// Started without root: our own ids (and our subordinate ranges where the tools are).
    Rootless,
    /// Container ids 0..count to host ids base.., bound users to their own host ids.
    Range {
        base: u32,
        count: u32,
        bound: &'a [BoundUser],
    },
    /// Exactly these ranges (ns-oci: config.json's).
    Given(&'a IdMaps),
}

impl<'a> Maps<'a> {
    /// The maps `u` asks for, in the range reserved at `base` (`Runtime::userns_base`), with
    /// `bound` users mapped through.
    pub fn of(u: &UserNs, base: Option<u32>, bound: &'a [BoundUser]) -> Result<Maps<'a>> {
        match (u.rootless, base) {
            (true, _) => Ok(Maps::Rootless),
            (false, Some(base)) => Ok(Maps::Range {
                base,
                count: u.count,
                bound,
            }),
            (false, None) => Err(Error::setup("id range not reserved".into())),
        }
    }

    /// The maps `u` gives, as given, without bound users (ns-oci: config.json's, whoever
    /// runs it).
    pub fn given(u: &'a UserNs) -> Result<Maps<'a>> {
        if let Some(m) = &u.maps {
            return Ok(Maps::Given(m));
        }
        match u.base {
            IdBase::Fixed(base) => Ok(Maps::Range {
                base,
                count: u.count,
                bound: &[],
            }),
            IdBase::Pick => Err(Error::setup("no id range for the user namespace".into())),
        }
    }
}

impl Chain {
    /// Start ns-enter (from `fds`, which are closed here once it runs) with the plan `state`
    /// and what the host decided at start (`runtime`: the one place it enters the document)
    /// and the chain's end of the sync socket; the child goes straight into `cgroup2` when
    /// given (no cgroup.procs write) and takes `mask` as its signal mask when given. Its
    /// exec failing fails this.
    pub fn start(
        state: &State,
        runtime: Runtime,
        fds: StageFds,
        cgroup2: Option<BorrowedFd<'_>>,
        mask: Option<&SignalSet>,
    ) -> Result<Chain> {
        let document = State {
            runtime: Runtime {
                decided: true,
                ..runtime
            },
            ..state.clone()
        };
        let state_fd = document.to_sealed_memfd()?;
        let (sync, chain_end) = SyncSocket::pair()?;
        let argv = state_argv("ns-enter", state_fd.as_raw_fd(), Some(chain_end.raw()));
        let exec = ns_core::exec::prepare_stage("ns-enter", &argv, &fds)?;
        // Not a fork: the child shares our memory until its exec (ns_core::sys::spawn).
        let enter = spawn(&exec, cgroup2, mask, Some(chain_end.raw())).map_err(|e| match e {
            SpawnError::Clone(e) if cgroup2.is_some() => Error::setup(format!(
                "cannot fork into the container's cgroup2 directory: {}",
                e.desc()
            )),
            SpawnError::Clone(e) => Error::setup(format!("cannot fork: {}", e.desc())),
            SpawnError::Exec(e) => Error::setup(format!("cannot execute ns-enter: {}", e.desc())),
        })?;
        fds.close_all();
        Ok(Chain {
            enter,
            sync,
            sys_ahead: std::cell::Cell::new(None),
        })
    }

    /// The socket, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sync.fd()
    }

    /// SYNC-0: the container's v1 cgroups are ready: ns-enter joins them and goes on.
    /// ns-enter already gone is not an error here: it may fail before SYNC-0 (it makes the
    /// namespaces but the cgroup one while the v1 cgroups are made) and said so in its own
    /// line; the caller's next report, its `Failed` or EOF, and its exit status tell the rest.
    pub fn cgroups_ready(&self) -> Result<()> {
        self.sync.send_if_open(&Msg::Cgroups).map(drop)
    }

    /// The next report, waiting for it; `None` at EOF (the payload's exec succeeded, ns-caps
    /// waits for `start`, or the chain is gone).
    pub fn next_report(&self) -> Result<Option<Report>> {
        self.sync
            .recv_any(nix::sys::socket::MsgFlags::empty())?
            .map(|(m, fd)| Report::of(m, fd))
            .transpose()
    }

    /// A report already queued, without waiting; `None` when there is none (now, or ever).
    pub fn try_next_report(&self) -> Result<Option<Report>> {
        self.sync
            .try_recv_any()?
            .map(|(m, fd)| Report::of(m, fd))
            .transpose()
    }

    /// SYNC-1 answered: write the maps of ns-enter's user namespace; with `root`, hand the
    /// image down as a detached mount, idmapped through the new user namespace or as it is
    /// (`MountPlan::host_by_fd`). The one answer of ns-run and ns-oci. Returns the ownership
    /// in force with `root` (`auto` decided, see [`RootMount`]). `sys_too`: ns-mount will
    /// ask for a sysfs (`NeedSys`: the container shares our network namespace), made and
    /// locked here with the image, one child for both, and handed down by [`Chain::host_sys`].
    pub fn map_userns(
        &self,
        maps: &Maps,
        root: Option<RootMount>,
        sys_too: bool,
    ) -> Result<Option<Ownership>> {
        let pid = self.enter.as_raw();
        match maps {
            Maps::Rootless => crate::userns::write_rootless_maps(pid)?,
            Maps::Range { base, count, bound } => {
                crate::userns::write_maps(pid, *base, *count, bound)?
            }
            Maps::Given(m) => crate::userns::write_id_maps(pid, m)?,
        }
        let Some(root) = root else {
            self.sync.send(&Msg::Mapped)?;
            return Ok(None);
        };
        let (tree, ownership) = root.make(pid)?;
        let userns = File::open(format!("/proc/{pid}/ns/user"))
            .ctx(|| "cannot open the container's user namespace".into())?;
        // With the sysfs ns-mount will ask for (`sys_too`): one child locks both.
        let sys = sys_too.then(new_sysfs).flatten();
        let trees = std::iter::once(tree).chain(sys).collect();
        let mut locked = crate::hostpaths::locked_all(trees, userns.as_fd())?.into_iter();
        let tree = locked
            .next()
            .ok_or_else(|| Error::setup("no tree locked".into()))?;
        self.sys_ahead.set(locked.next());
        self.sync.send_fd(&Msg::Mapped, tree.as_fd())?;
        Ok(Some(ownership))
    }

    /// SYNC-5 answered: user mount `op` of `plan`, made on the host (only what the plan
    /// says: [`MountOp::made_on_host`]) and sent as a detached mount. A bind's source is
    /// cloned, idmapped through PID 1's user namespace for `idmap`, or for `rootidmap`
    /// through one that maps its owner to container root (the id range's `base`); an
    /// overlay is assembled from its layers ([`crate::hostpaths::overlay`]; `announce`:
    /// its work directory, to remove after exit).
    pub fn host_mount(
        &self,
        op: usize,
        plan: &MountPlan,
        base: Option<u32>,
        pid1: Option<Pid>,
        announce: &mut dyn FnMut(PathBuf) -> Result<()>,
    ) -> Result<()> {
        let tree = match plan.ops.get(op) {
            Some(m) if !m.made_on_host(plan.host_by_fd) => None,
            Some(MountOp::Bind {
                source: Source::Host(p),
                recursive,
                idmap,
                read_only,
                ..
            }) => Some(bind_source(p, *recursive, *idmap, *read_only, base, pid1)?),
            Some(MountOp::Overlay {
                lower,
                upper,
                read_only,
                dest,
            }) => Some(crate::hostpaths::overlay(
                lower, upper, dest, *read_only, base, announce,
            )?),
            _ => None,
        };
        let tree =
            tree.ok_or_else(|| Error::setup(format!("mount {op} is not made on the host")))?;
        let tree = crate::hostpaths::locked(tree, userns_of(pid1)?.as_fd())?;
        self.sync.send_fd(&Msg::Mount, tree.as_fd())
    }

    /// SYNC-5 answered (`NeedProc`): a procfs of PID 1's PID namespace, made here (proc's
    /// `pidns` option, Linux 6.17), as the kernel refuses ns-mount one: in its user namespace
    /// it takes a new procfs only where the mount namespace shows one fully, which a /proc
    /// with masked files (as inside another container) is not. `pid1`: our child, as
    /// ns-enter reported it (SYNC-2); its namespace is open only while the mount is made.
    pub fn host_proc(&self, pid1: Option<Pid>) -> Result<()> {
        use ns_core::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID};
        let pid1 = pid1.ok_or_else(|| Error::setup("NeedProc before PID 1".into()))?;
        let pidns = File::open(format!("/proc/{pid1}/ns/pid"))
            .ctx(|| "cannot open the container's PID namespace".into())?;
        let attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
        let params = [
            ns_core::sys::FsParam::Str("source", "proc"),
            ns_core::sys::FsParam::Fd("pidns", pidns.as_fd()),
        ];
        let proc = ns_core::sys::fs_mount(c"proc", &params, attrs).map_err(|e| {
            Error::setup(format!(
                "cannot mount proc on /proc: the kernel refuses it inside the user namespace \
                 (this /proc is not fully visible), and on the host: {} (proc's pidns= needs \
                 Linux 6.17)",
                e.msg
            ))
        })?;
        drop(pidns);
        self.sync.send_fd(&Msg::Mount, proc.as_fd())
    }

    /// SYNC-5 answered (`NeedSys`): a sysfs of our network namespace (the container's: it
    /// has none of its own, so the kernel refuses ns-mount one), read-only and locked for
    /// PID 1's user namespace, with nothing mounted below it, as nspawn's outer child mounts
    /// it. Where the kernel refuses us one too (inside a guest that shares its host's
    /// network namespace), `NoMount`: ns-mount binds the /sys it sees, as before.
    pub fn host_sys(&self, pid1: Option<Pid>) -> Result<()> {
        if let Some(sys) = self.sys_ahead.take() {
            return self.sync.send_fd(&Msg::Mount, sys.as_fd());
        }
        let Some(sys) = new_sysfs() else {
            return self.sync.send(&Msg::NoMount);
        };
        let sys = crate::hostpaths::locked(sys, userns_of(pid1)?.as_fd())?;
        self.sync.send_fd(&Msg::Mount, sys.as_fd())
    }

    /// SYNC-3: host-side setup for PID 1 is done: the chain goes on.
    pub fn go(&self) -> Result<()> {
        self.sync.send(&Msg::Go)
    }
}

/// A sysfs of our network namespace, read-only, detached (None where the kernel refuses it).
fn new_sysfs() -> Option<OwnedFd> {
    use ns_core::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    let params = [ns_core::sys::FsParam::Str("source", "sysfs")];
    ns_core::sys::fs_mount(c"sysfs", &params, attrs).ok()
}

/// The image as the monitor hands it down at SYNC-1 ([`Chain::map_userns`]).
pub struct RootMount<'a> {
    /// The plan's root.
    pub path: &'a Path,
    /// A clone of its mount made earlier ([`clone_root`]), if any.
    pub clone: Option<OwnedFd>,
    /// `map` and `auto` idmap it through the container's user namespace; `auto`, where its
    /// file system refuses that, shifts the tree into the range at `chown_base` instead (as
    /// nspawn falls back to `chown`), or without one (a tree that is not rewritten,
    /// `MountPlan::rewrites_tree`) hands it down as it is (`off`).
    pub ownership: Ownership,
    pub chown_base: Option<u32>,
    /// The tree is seen read-only (`MountPlan::read_only_tree`): these mount points are
    /// made in it first (each announced to `announce`, removed after exit), and the mount
    /// is made read-only here, before [`crate::hostpaths::locked`] locks the flag (as
    /// nspawn's outer child makes it read-only before the user namespace's copy).
    pub read_only: Option<&'a [&'a str]>,
    pub announce: &'a mut dyn FnMut(PathBuf) -> Result<()>,
}

impl RootMount<'_> {
    /// The detached mount for the user namespace of `pid`, and the ownership in force.
    fn make(self, pid: i32) -> Result<(OwnedFd, Ownership)> {
        let (path, read_only) = (self.path, self.read_only);
        if let Some(points) = read_only {
            crate::hostpaths::make_mount_points(path, points, self.announce)?;
        }
        let (tree, ownership) = self.tree(pid)?;
        if read_only.is_some() {
            ns_core::sys::mount_setattr_rdonly(tree.as_fd(), true)
                .ctx(|| format!("cannot make {} read-only", path.display()))?;
        }
        Ok((tree, ownership))
    }

    /// [`RootMount::make`]'s mount, idmapped (or shifted) as `ownership` says.
    fn tree(self, pid: i32) -> Result<(OwnedFd, Ownership)> {
        let idmap = idmaps(self.ownership);
        let tree = match self.clone {
            Some(t) => t,
            None => clone_root(self.path, idmap)?,
        };
        if !idmap {
            return Ok((tree, self.ownership));
        }
        let userns = File::open(format!("/proc/{pid}/ns/user"))
            .ctx(|| "cannot open the container's user namespace".into())?;
        let e = match ns_core::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd()) {
            Ok(()) => return Ok((tree, Ownership::Map)),
            Err(e) => e,
        };
        // nspawn's test: the kernel, or the file system, cannot idmap (it says EINVAL for
        // a file system that does not take idmapped mounts, as overlayfs).
        let unsupported = matches!(e, Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS);
        if self.ownership != Ownership::Auto || !unsupported {
            return Err(Error::setup(format!(
                "cannot idmap {} (does its file system support idmapped mounts?): {}",
                self.path.display(),
                e.desc()
            )));
        }
        drop(tree);
        let ownership = match self.chown_base {
            Some(base) => {
                crate::userns::shift_tree(self.path, base)?;
                Ownership::Chown
            }
            None => Ownership::Off,
        };
        Ok((clone_root(self.path, false)?, ownership))
    }
}

/// The source of a bind, opened on the host and cloned (see [`Chain::host_mount`]).
/// A read-only bind is made read-only here, before [`crate::hostpaths::locked`] locks it.
fn bind_source(
    path: &Path,
    recursive: bool,
    idmap: Idmap,
    read_only: bool,
    base: Option<u32>,
    pid1: Option<Pid>,
) -> Result<OwnedFd> {
    let fd = crate::hostpaths::open_host(path, "bind")?;
    let tree = ns_core::sys::open_tree_clone_fd(fd.as_fd(), recursive)
        .ctx(|| format!("cannot bind {}", path.display()))?;
    if read_only {
        ns_core::sys::mount_setattr_rdonly(tree.as_fd(), true)
            .ctx(|| format!("cannot make {} read-only", path.display()))?;
    }
    let userns = match idmap {
        Idmap::No => return Ok(tree),
        Idmap::Root => {
            let st = nix::sys::stat::fstat(fd.as_fd())
                .ctx(|| format!("cannot bind {}", path.display()))?;
            let Some(base) = base else {
                return Err(Error::setup("rootidmap needs a user namespace".into()));
            };
            crate::userns::mapping_userns(st.st_uid, st.st_gid, base)?
        }
        Idmap::Container => userns_of(pid1)?,
    };
    ns_core::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd())
        .ctx(|| format!("cannot idmap {}", path.display()))?;
    Ok(tree)
}

/// The user namespace of the container's PID 1 (`pid1`: known once SYNC-2 came).
fn userns_of(pid1: Option<Pid>) -> Result<File> {
    let pid1 = pid1.ok_or_else(|| Error::setup("NeedMount before PID 1".into()))?;
    File::open(format!("/proc/{pid1}/ns/user"))
        .ctx(|| "cannot open the container's user namespace".into())
}

/// A detached clone of the image's mount, opened on the host (made while ns-enter starts,
/// for [`Chain::map_userns`]): alone for `idmap` (an idmapped mount is set on one mount),
/// else with its submounts, as ns-mount binds a directory root.
pub fn clone_root(path: &Path, idmap: bool) -> Result<OwnedFd> {
    crate::hostpaths::clone_host(path, !idmap, "clone the mount of")
}

/// Whether the monitor hands the image down at SYNC-1 (idmapped, or as it is).
pub fn root_by_fd(state: &State) -> bool {
    idmapped_root(state.enter.userns.as_ref()) || state.mount.host_by_fd
}

/// Whether `u` wants the image as an idmapped mount (`auto`: where it can be).
pub fn idmapped_root(u: Option<&UserNs>) -> bool {
    u.is_some_and(|u| idmaps(u.ownership))
}

fn idmaps(o: Ownership) -> bool {
    matches!(o, Ownership::Map | Ownership::Auto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userns(rootless: bool, base: IdBase) -> UserNs {
        UserNs {
            base,
            count: 65536,
            ownership: Ownership::Off,
            rootless,
            maps: None,
        }
    }

    #[test]
    fn maps_follow_the_reserved_range() {
        let u = userns(false, IdBase::Pick);
        assert!(matches!(
            Maps::of(&u, Some(524288), &[]).unwrap(),
            Maps::Range {
                base: 524288,
                count: 65536,
                ..
            }
        ));
        assert_eq!(
            Maps::of(&u, None, &[]).err().unwrap().msg,
            "id range not reserved"
        );
        let rootless = userns(true, IdBase::Fixed(1000));
        assert!(matches!(
            Maps::of(&rootless, None, &[]).unwrap(),
            Maps::Rootless
        ));
        // ns-oci: the range as given, rootless or not.
        assert!(matches!(
            Maps::given(&rootless).unwrap(),
            Maps::Range { base: 1000, .. }
        ));
        assert!(Maps::given(&u).is_err());
    }

    #[test]
    fn reports_refuse_what_only_the_host_sends() {
        for m in [Msg::Go, Msg::Mapped, Msg::Mount, Msg::Cgroups] {
            let e = Report::of(m.clone(), None).unwrap_err();
            assert_eq!(e.msg, format!("unexpected {m:?} from the chain"));
        }
        assert!(Report::of(Msg::NoMount, None).is_err());
        let e = Report::of(Msg::Console, None).unwrap_err();
        assert_eq!(e.msg, "Console without its pty");
        assert!(matches!(
            Report::of(Msg::Pid(7), None).unwrap(),
            Report::Pid(p) if p.as_raw() == 7
        ));
    }
}
