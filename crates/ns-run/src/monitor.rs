//! The monitor: the one process that stays on the host for the container's lifetime. It
//! starts the chain, answers the sync protocol, relays termination requests, reaps, and
//! returns the payload's exit status.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use ns_core::exec::{exec_stage, state_argv, StageFds};
use ns_core::stage::{debug, exit_code_of, fail};
use ns_core::state::{IdBase, NetPlan, RootMode, State, UserNs};
use ns_host::registry::{Machine, Registration};

use ns_core::console;
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{fork, fork_into_cgroup, kill_raw, Forked};
use ns_core::{Context, Error, Result};
use ns_host::{journal, locks, notify};

const STAGE: &str = "ns-run";

/// Run the container described by `state`; returns the exit code for ns-run.
pub fn run(state: &State) -> Result<i32> {
    journal::collect_stale(true)?;
    if !state.net.ports.is_empty() {
        // Port-forwarding tables of monitors that were killed.
        for pid in ns_net::ports::stale_monitors() {
            let _ = ns_net::ports::remove(pid);
        }
    }
    let m = &state.mount;
    let shared = m.read_only || m.root_mode != RootMode::Directory;
    // The machine's name first: a second container of the same name is refused before
    // anything is made.
    let registration = state
        .monitor
        .register
        .then(|| Registration::claim(&state.machine))
        .transpose()?;
    let lock = locks::ImageLock::acquire(&m.root, shared)?;
    let zone = state
        .net
        .zone
        .as_deref()
        .map(locks::ZoneLock::acquire)
        .transpose()?;
    let mut stages = vec!["ns-enter", "ns-mount", "ns-caps"];
    if state.exec.as_pid2 {
        stages.push("ns-init");
    }
    // Constraint 9: no process a container can see runs a host file of ours. In a PID
    // namespace of its own, PID 1 is alone while it runs ns-enter's copy, ns-mount and
    // ns-caps (the registry entry, through which `ns-ctl shell` comes in, is published before
    // Go, but ns-ctl waits until PID 1 runs the payload), and ns-init is always a sealed
    // copy: the host's files serve, with no copy to pay for. A PID namespace joined (an OCI
    // pod member) or the host's own is seen by others from the start: sealed copies there.
    let mut fds = StageFds::default();
    let own_pid_ns = state
        .enter
        .namespaces
        .contains(&ns_core::state::Namespace::Pid)
        && !state
            .enter
            .join
            .iter()
            .any(|j| j.ns == ns_core::state::Namespace::Pid);
    if own_pid_ns {
        fds.open_missing(&stages)?;
    } else {
        fds.open_sealed(&stages)?;
    }
    // -U: reserve the id range (held until we exit) and put the chosen base in the state.
    let mut state = state.clone();
    let range = match &mut state.enter.userns {
        Some(u) if !u.rootless => {
            let r = ns_host::userns::reserve(u.base, u.count, &state.machine)?;
            u.base = IdBase::Fixed(r.base);
            Some(r)
        }
        _ => None,
    };
    // The guest's init reports readiness on /run/host/notify (booted, or --notify-ready).
    let notify = if state.monitor.boot || state.monitor.notify_ready {
        let n = notify::NotifySocket::bind(container_root(&state))?;
        state.mount.notify_socket = Some(n.path.clone());
        state.exec.notify = true;
        Some(n)
    } else {
        None
    };
    // The container's own cgroups (every container started by root: its device policy and
    // --property limits live there, one level above its processes, which the cgroup
    // namespace shows it as its root). cgroup2's are made now, to fork straight into its
    // payload level; the v1 ones while ns-enter starts, which joins their payload levels when
    // told (SYNC-0), before it creates the cgroup namespace (so that a booted init finds a
    // subtree of its own).
    let cgroup_name = format!("{}-{}", state.machine, std::process::id());
    let want_cgroups = m.cgroups.is_some() || !state.monitor.properties.is_empty();
    // Read once: the v1 cgroups are named now, made after the fork.
    let hierarchies = if want_cgroups {
        ns_host::cgroups::hierarchies()
    } else {
        Vec::new()
    };
    if want_cgroups {
        state.enter.cgroups = Some(ns_host::cgroups::planned(
            &hierarchies,
            &cgroup_name,
            state.monitor.slice.as_deref(),
            false,
        ));
    }
    let state = &state;
    if let Some(u) = state
        .enter
        .userns
        .as_ref()
        .filter(|u| u.ownership == ns_core::state::Ownership::Chown)
    {
        // `chown` ownership: shift the tree into the range now (under the image lock).
        if let IdBase::Fixed(base) = u.base {
            ns_host::userns::shift_tree(&m.root, base)?;
        }
    }
    // Anything failing from here to the fork removes what was made.
    let mut cleanup = journal::Cleanup::new(&m.root);
    let create_cgroups = |v2: bool, cleanup: &mut journal::Cleanup| {
        ns_host::cgroups::create(
            &hierarchies,
            &cgroup_name,
            state.monitor.slice.as_deref(),
            v2,
            &mut |dir, slice| cleanup.add_cgroup(dir.to_path_buf(), slice),
        )
    };
    let create_payloads = |cgroups: &[ns_host::cgroups::Cgroup]| {
        ns_host::cgroups::create_payloads(
            cgroups,
            m.cgroups.as_ref().map(|c| c.layout),
            container_root(state),
        )
    };
    let setup = (|| {
        let cgroups = if want_cgroups {
            let v2 = create_cgroups(true, &mut cleanup)?;
            create_payloads(&v2)?;
            v2
        } else {
            Vec::new()
        };
        let v2_dir = ns_host::cgroups::v2_dir(&cgroups)?;
        let state_fd = state.to_sealed_memfd()?;
        let (sync, chain_end) = SyncSocket::pair()?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGWINCH,
        ] {
            mask.add(s);
        }
        let old = mask
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .ctx(|| "cannot block signals".into())?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .ctx(|| "cannot create signalfd".into())?;
        // Straight into cgroup2 (no cgroup.procs write); v1 is joined by the child.
        let forked = match &v2_dir {
            Some(dir) => fork_into_cgroup(dir.as_fd())
                .ctx(|| "cannot fork into the container's cgroup2 directory".into())?,
            None => fork().ctx(|| "cannot fork".into())?,
        };
        Ok((cgroups, state_fd, sync, chain_end, old, signals, forked))
    })();
    let (mut cgroups, state_fd, sync, chain_end, old, signals, forked) = match setup {
        Ok(s) => s,
        Err(e) => {
            cleanup.run(Some(&lock));
            return Err(e);
        }
    };
    let argv = state_argv("ns-enter", state_fd.as_raw_fd(), Some(chain_end.raw()));
    match forked {
        Forked::Child => {
            let r = old
                .thread_set_mask()
                .ctx(|| "cannot restore the signal mask".into());
            let e = match r.and_then(|_| chain_end.set_inheritable()) {
                Ok(()) => exec_stage("ns-enter", &argv, &fds),
                Err(e) => e,
            };
            fail(STAGE, &e)
        }
        Forked::Parent(enter) => {
            drop(chain_end);
            drop(state_fd);
            fds.close_all();
            // While ns-enter execs: the v1 cgroups, then every limit and the device policy,
            // then their payload levels (which inherit the policy), then SYNC-0. ns-enter
            // waits for it before it does anything.
            let made = if want_cgroups {
                create_cgroups(false, &mut cleanup).and_then(|v1| {
                    let first_v1 = cgroups.len();
                    cgroups.extend(v1);
                    ns_core::stage::fault("ns-run:cgroups");
                    ns_host::resources::apply(&state.monitor.properties, &cgroups)?;
                    create_payloads(&cgroups[first_v1..])?;
                    sync.send(&Msg::Cgroups)
                })
            } else {
                Ok(())
            };
            if let Err(e) = made {
                let _ = kill(enter, Signal::SIGKILL);
                let _ = waitpid(enter, None);
                cleanup.run(Some(&lock));
                if let Some(r) = registration {
                    r.release();
                }
                return Err(e);
            }
            ns_core::sys::trim_heap();
            let mut monitor = Monitor {
                enter,
                pid1: None,
                kill_signal: state.monitor.kill_signal,
                requests: 0,
                failed: None,
                enter_status: None,
                cleanup,
                net: &state.net,
                userns: state.enter.userns.clone(),
                ops: state.mount.ops.clone(),
                bind_users: state.mount.bind_users.clone(),
                registration,
                machine: Machine {
                    name: state.machine.clone(),
                    uuid: state.exec.uuid.replace('-', ""),
                    class: "container".into(),
                    service: "ns-run".into(),
                    leader: 0,
                    monitor: std::process::id() as i32,
                    root: m.root.clone(),
                    since_usec: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64),
                    interfaces: state
                        .net
                        .veth
                        .iter()
                        .chain(&state.net.veth_extra)
                        .map(|v| v.host.clone())
                        .collect(),
                    boot: state.monitor.boot,
                    cgroups: cgroups.iter().map(|c| c.procs_dir()).collect(),
                    syscall_filter: state.exec.syscall_filter.clone(),
                    starting: true,
                    namespaces: Vec::new(),
                },
                held_namespaces: Vec::new(),
                // Cloned now, while ns-enter execs on the other CPU.
                root_clone: match &state.enter.userns {
                    Some(u) if u.ownership == ns_core::state::Ownership::Map => {
                        ns_core::sys::open_tree_clone(&m.root, false).ok()
                    }
                    _ => None,
                },
                root: m.root.clone(),
                netns: None,
                net_failed: false,
                ports_installed: false,
                console_mode: state.monitor.console,
                notify,
                notify_ready: state.monitor.notify_ready,
                boot: state.monitor.boot,
                console: None,
            };
            let code = monitor.supervise(&sync, &signals);
            if code.is_err() || monitor.pid1.is_none() {
                // The monitor cannot go on, or ns-enter died without announcing a PID 1 it
                // may have cloned (ours, by CLONE_PARENT): nothing may outlive us, nor keep
                // the cgroups busy while they are removed.
                monitor.kill_and_reap();
            }
            // Killed (137) while nobody asked for it, and the OOM killer was at work there.
            if matches!(code, Ok(137))
                && monitor.requests == 0
                && ns_host::resources::oom_kills(&cgroups) > 0
            {
                ns_core::errln!(
                    "{STAGE}: the container was killed by the OOM killer (its memory limit)"
                );
            }
            monitor.release_network(zone);
            monitor.cleanup.run(Some(&lock));
            if let Some(r) = monitor.registration.take() {
                r.release();
            }
            drop(range);
            code
        }
    }
}

struct Monitor<'a> {
    enter: Pid,
    pid1: Option<Pid>,
    kill_signal: Option<i32>,
    /// Termination requests received (SIGTERM/SIGINT/SIGHUP).
    requests: u32,
    /// Exit code a stage reported with `Failed` (SYNC-8).
    failed: Option<i32>,
    enter_status: Option<i32>,
    /// Host paths the chain created (SYNC-4).
    cleanup: journal::Cleanup,
    net: &'a NetPlan,
    /// The container's network namespace, kept to give moved links back at exit.
    netns: Option<File>,
    /// ns-net failed: PID 1 was killed before it started.
    net_failed: bool,
    /// Port-forwarding tables to remove at exit.
    ports_installed: bool,
    console_mode: ns_core::state::Console,
    notify: Option<notify::NotifySocket>,
    notify_ready: bool,
    boot: bool,
    console: Option<console::Console>,
    userns: Option<UserNs>,
    /// The user mounts (an idmap request must name one of them).
    ops: Vec<ns_core::state::MountOp>,
    bind_users: Vec<ns_core::state::BoundUser>,
    /// The registry entry, published once PID 1 exists (`starting`), again once it runs the
    /// payload.
    registration: Option<Registration>,
    machine: Machine,
    /// PID 1's namespaces as it started, kept open for `ns-ctl shell` (registered only).
    held_namespaces: Vec<File>,
    /// The image's mount, cloned while ns-enter starts (idmapped at SYNC-1).
    root_clone: Option<std::os::fd::OwnedFd>,
    root: std::path::PathBuf,
}

impl Monitor<'_> {
    fn supervise(&mut self, sync: &SyncSocket, signals: &SignalFd) -> Result<i32> {
        let mut sync_open = true;
        loop {
            let mut pfds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if sync_open {
                pfds.push(PollFd::new(sync.fd(), PollFlags::POLLIN));
            }
            let console_fds: Vec<std::os::fd::RawFd> = self
                .console
                .as_ref()
                .map(|c| c.fds().iter().map(|f| f.as_raw_fd()).collect())
                .unwrap_or_default();
            for fd in self.console.as_ref().map(|c| c.fds()).unwrap_or_default() {
                pfds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            let notify_fd = self.notify.as_ref().map(|n| n.socket.as_raw_fd());
            if let Some(n) = &self.notify {
                pfds.push(PollFd::new(n.socket.as_fd(), PollFlags::POLLIN));
            }
            let timeout = self
                .console
                .as_ref()
                .map_or(PollTimeout::NONE, |c| c.poll_timeout());
            match poll(&mut pfds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r.ctx(|| "poll".into())?,
            };
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            let sync_ready = sync_open && ready(&pfds[1]);
            let first_console = if sync_open { 2 } else { 1 };
            let console_ready: Vec<std::os::fd::RawFd> = console_fds
                .iter()
                .zip(&pfds[first_console..])
                .filter(|(_, p)| ready(p))
                .map(|(fd, _)| *fd)
                .collect();
            let notify_ready = notify_fd.is_some() && pfds.last().is_some_and(ready);
            drop(pfds);
            if notify_ready {
                let n = self.notify.as_ref().expect("polled");
                if n.ready() && self.notify_ready {
                    // --notify-ready=yes: we are ready when the guest is.
                    notify::notify_ready();
                }
            }
            if sync_ready {
                sync_open = match sync.recv_any(nix::sys::socket::MsgFlags::empty())? {
                    Some((m, fd)) => self.on_message(Some(m), fd, sync)?,
                    None => self.on_message(None, None, sync)?,
                };
            }
            for fd in console_ready {
                self.on_console(fd);
            }
            if let Some(c) = self.console.as_mut() {
                c.tick();
            }
            while let Some(si) = signals
                .read_signal()
                .ctx(|| "cannot read signalfd".into())?
            {
                let sig = si.ssi_signo as i32;
                if sig == libc::SIGCHLD {
                    if let Some(code) = self.reap()? {
                        // What the chain announced before it ended is queued: take it all
                        // (SYNC-4 paths must reach the cleanup list).
                        while sync_open {
                            match sync.try_recv_any()? {
                                Some((m, fd)) => sync_open = self.on_message(Some(m), fd, sync)?,
                                None => break,
                            }
                        }
                        if let Some(c) = self.console.as_mut() {
                            c.finish();
                        }
                        return Ok(code);
                    }
                } else if sig == libc::SIGWINCH {
                    if let Some(c) = &self.console {
                        c.sync_window_size();
                    }
                } else {
                    self.on_termination_request(sig);
                }
            }
            // ns-enter is gone without having reported PID 1 (it failed, or was killed). What
            // it sent before exiting is already queued: drain it. If there is still no PID 1,
            // stop; a PID 1 it may have cloned dies with us (parent-death signal, or EOF while
            // it waits for Go).
            if let (Some(code), None) = (self.enter_status, self.pid1) {
                while sync_open && self.pid1.is_none() {
                    match sync.try_recv_any()? {
                        Some((m, fd)) => sync_open = self.on_message(Some(m), fd, sync)?,
                        None => break,
                    }
                }
                if self.pid1.is_none() {
                    return Ok(match (code, self.failed) {
                        (0, Some(f)) => f,
                        (0, None) => ns_core::error::EXIT_SETUP,
                        (c, _) => c,
                    });
                }
            }
        }
    }

    /// Kill the chain (ns-enter, PID 1) and wait for it, before cleaning up.
    fn kill_and_reap(&mut self) {
        // Every child: PID 1 may exist before ns-enter reported it (CLONE_PARENT).
        let me = std::process::id();
        let kids =
            std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
        for p in kids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        while waitpid(None, None).is_ok() {}
    }

    /// A booted init that called reboot(2) is killed by the kernel with SIGHUP (reboot: 133,
    /// nspawn's convention, which its unit restarts on) or SIGINT (poweroff, halt: 0).
    fn boot_exit_code(&self, st: WaitStatus) -> Option<i32> {
        match st {
            WaitStatus::Signaled(_, Signal::SIGHUP, _) if self.boot => Some(133),
            WaitStatus::Signaled(_, Signal::SIGINT, _) if self.boot => Some(0),
            _ => None,
        }
    }

    /// The console has something (container output, or the user's keystrokes).
    fn on_console(&mut self, fd: std::os::fd::RawFd) {
        let Some(c) = self.console.as_mut() else {
            return;
        };
        if c.is_master(fd) {
            let _ = c.on_master();
        } else if let console::Action::Kill = c.on_stdin() {
            // Ctrl-] three times within a second.
            if let Some(p) = self.pid1 {
                let _ = kill(p, Signal::SIGKILL);
            }
        }
    }

    /// Returns whether the sync socket is still open. `fd`: one attached to the message.
    fn on_message(
        &mut self,
        msg: Option<Msg>,
        fd: Option<std::os::fd::OwnedFd>,
        sync: &SyncSocket,
    ) -> Result<bool> {
        match msg {
            Some(Msg::Console) => {
                // SYNC-6: the master of the container's /dev/console.
                let master = fd.ok_or_else(|| Error::setup("Console without its pty".into()))?;
                self.console = Some(console::Console::start(master, self.console_mode));
                Ok(true)
            }
            Some(Msg::Pid(p)) => {
                // SYNC-2 received. Host-side setup for PID 1 goes here; then SYNC-3.
                let pid = Pid::from_raw(p);
                self.pid1 = Some(pid);
                debug(STAGE, || format!("container PID 1 is {p}"));
                if self.requests > 0 {
                    let _ = kill(pid, Signal::SIGKILL);
                } else if !self.wire_network(pid)? {
                    self.net_failed = true;
                    let _ = kill(pid, Signal::SIGKILL);
                } else {
                    if self.registration.is_some() {
                        self.machine.leader = p;
                        self.hold_namespaces(p)?;
                    }
                    if let Some(r) = &self.registration {
                        r.publish(&self.machine)?;
                        ns_core::stage::fault("ns-run:registered");
                    }
                    sync.send(&Msg::Go)?; // SYNC-3
                }
                Ok(true)
            }
            Some(Msg::Failed { stage, code, .. }) => {
                debug(STAGE, || format!("{stage} failed with {code}"));
                self.failed = Some(code);
                Ok(true)
            }
            Some(Msg::Created { path, recursive }) => {
                self.cleanup.add(path, recursive)?;
                Ok(true)
            }
            Some(Msg::UserNs) => {
                // SYNC-1: ns-enter's user namespace exists.
                let u = self
                    .userns
                    .as_ref()
                    .ok_or_else(|| Error::setup("unexpected user namespace".into()))?;
                let IdBase::Fixed(base) = u.base else {
                    return Err(Error::setup("id range not reserved".into()));
                };
                if u.rootless {
                    ns_host::userns::write_rootless_maps(self.enter.as_raw())?;
                } else {
                    ns_host::userns::write_maps(
                        self.enter.as_raw(),
                        base,
                        u.count,
                        &self.bind_users,
                    )?;
                }
                if u.ownership == ns_core::state::Ownership::Map {
                    // The image as an idmapped mount, for ns-mount (via ns-enter).
                    let userns = File::open(format!("/proc/{}/ns/user", self.enter))
                        .ctx(|| "cannot open the container's user namespace".into())?;
                    let tree = match self.root_clone.take() {
                        Some(t) => t,
                        None => ns_core::sys::open_tree_clone(&self.root, false)
                            .ctx(|| format!("cannot clone the mount of {}", self.root.display()))?,
                    };
                    ns_core::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd()).ctx(|| {
                        format!(
                            "cannot idmap {} (does its file system support idmapped mounts?)",
                            self.root.display()
                        )
                    })?;
                    sync.send_fd(&Msg::Mapped, tree.as_fd())?;
                } else {
                    sync.send(&Msg::Mapped)?;
                }
                Ok(true)
            }
            Some(Msg::NeedIdmap { op }) => {
                // SYNC-5 for a bind: only what the plan says may be idmapped.
                let (path, recursive, idmap) = match self.ops.get(op) {
                    Some(ns_core::state::MountOp::Bind {
                        source: ns_core::state::Source::Host(p),
                        recursive,
                        idmap,
                        ..
                    }) if *idmap != ns_core::state::Idmap::No => (p.clone(), *recursive, *idmap),
                    _ => return Err(Error::setup(format!("mount {op} is not an idmapped bind"))),
                };
                let pid1 = self
                    .pid1
                    .ok_or_else(|| Error::setup("NeedIdmap before PID 1".into()))?;
                let userns = match idmap {
                    ns_core::state::Idmap::Root => {
                        use std::os::unix::fs::MetadataExt;
                        let md = std::fs::metadata(&path)
                            .ctx(|| format!("cannot bind {}", path.display()))?;
                        let base = match self.userns.as_ref().map(|u| u.base) {
                            Some(IdBase::Fixed(b)) => b,
                            _ => {
                                return Err(Error::setup("rootidmap needs a user namespace".into()))
                            }
                        };
                        ns_host::userns::mapping_userns(md.uid(), md.gid(), base)?
                    }
                    _ => File::open(format!("/proc/{pid1}/ns/user"))
                        .ctx(|| "cannot open the container's user namespace".into())?,
                };
                let tree = ns_core::sys::open_tree_clone(&path, recursive)
                    .ctx(|| format!("cannot clone the mount of {}", path.display()))?;
                ns_core::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd())
                    .ctx(|| format!("cannot idmap {}", path.display()))?;
                sync.send_fd(&Msg::Root, tree.as_fd())?;
                Ok(true)
            }
            Some(m @ (Msg::Go | Msg::Mapped | Msg::Root | Msg::Cgroups | Msg::Waiting)) => {
                Err(Error::setup(format!("unexpected {m:?} from the chain")))
            }
            // EOF: the payload's exec succeeded, or the chain is gone.
            None => {
                if let (Some(r), Some(_), None) = (&self.registration, self.pid1, self.failed) {
                    self.machine.starting = false;
                    r.publish(&self.machine)?;
                }
                Ok(false)
            }
        }
    }

    /// Open and keep PID 1's namespaces, and record them in the entry (SYNC-2: ns-enter made
    /// them all; no later stage makes another).
    fn hold_namespaces(&mut self, pid1: i32) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        for kind in ns_host::registry::NAMESPACE_KINDS {
            let path = format!("/proc/{pid1}/ns/{kind}");
            let f = File::open(&path).ctx(|| format!("cannot open {path}"))?;
            let ino = f.metadata().ctx(|| format!("cannot stat {path}"))?.ino();
            self.machine.namespaces.push((kind.to_string(), ino));
            self.held_namespaces.push(f);
        }
        Ok(())
    }

    /// Reap every exited child; returns the exit code once PID 1 is gone.
    fn reap(&mut self) -> Result<Option<i32>> {
        loop {
            let st = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
                r => r.ctx(|| "cannot wait for the container".into())?,
            };
            let Some(code) = exit_code_of(st) else {
                continue;
            };
            if st.pid() == Some(self.enter) {
                self.enter_status = Some(code);
            } else if st.pid().is_some() && st.pid() == self.pid1 {
                return Ok(Some(if self.net_failed {
                    ns_core::error::EXIT_SETUP
                } else {
                    self.boot_exit_code(st).unwrap_or(code)
                }));
            }
        }
    }

    /// ns-net's work, in a forked helper (the monitor itself never starts the executor):
    /// returns false when it failed (it printed why).
    fn wire_network(&mut self, pid: Pid) -> Result<bool> {
        if self.net.is_empty() {
            return Ok(true);
        }
        let path = format!("/proc/{pid}/ns/net");
        let netns = File::open(&path).ctx(|| format!("cannot open {path}"))?;
        let net = self.net;
        let monitor = std::process::id();
        let ok = helper(|| {
            ns_net::wire::setup(net, netns.as_fd())?;
            ns_net::ports::apply(net, monitor)
        })?;
        if !net.interfaces.is_empty() {
            self.netns = Some(netns);
        }
        self.ports_installed = ok && !net.ports.is_empty();
        Ok(ok)
    }

    /// After the container: give moved links back; the last container of a zone deletes
    /// its bridge. (veths need nothing: they go with the network namespace.)
    fn release_network(&mut self, zone: Option<locks::ZoneLock>) {
        if let Some(netns) = self.netns.take() {
            let names = &self.net.interfaces;
            let _ = helper(|| ns_net::wire::return_interfaces(names, netns.as_fd()));
        }
        if self.ports_installed {
            let monitor = std::process::id();
            let _ = helper(|| ns_net::ports::remove(monitor));
        }
        if let Some(z) = zone {
            if z.last_member() {
                let name = z.zone.clone();
                let _ = helper(|| ns_net::wire::remove_zone(&name));
                z.retire();
            }
        }
    }

    /// nspawn's rules: without --kill-signal, the container is killed at once; with it, the
    /// first request sends that signal to PID 1 and a second one kills.
    fn on_termination_request(&mut self, sig: i32) {
        self.requests += 1;
        debug(STAGE, || {
            format!("signal {sig}: termination request {}", self.requests)
        });
        match (self.pid1, self.kill_signal) {
            // Not started yet: PID 1 is killed as soon as ns-enter reports it (SYNC-2).
            (None, _) => {}
            (Some(p), Some(ks)) if self.requests == 1 => {
                let _ = kill_raw(p, ks);
            }
            (Some(p), _) => {
                let _ = kill(p, Signal::SIGKILL);
            }
        }
    }
}

/// Run `job` in a forked child (ns-net's netlink work needs an executor, which must never
/// live in the monitor) and wait for it. Returns whether it succeeded; on failure the child
/// printed the one error line.
fn helper(job: impl FnOnce() -> Result<()>) -> Result<bool> {
    match fork().ctx(|| "cannot fork the network helper".into())? {
        Forked::Child => {
            let code = match job() {
                Ok(()) => 0,
                Err(e) => {
                    ns_core::errln!("ns-net: {}", e.msg);
                    e.code
                }
            };
            std::process::exit(code)
        }
        Forked::Parent(child) => loop {
            match waitpid(child, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(st) => return Ok(exit_code_of(st) == Some(0)),
                Err(e) => {
                    return Err(Error::setup(format!(
                        "cannot wait for the network helper: {}",
                        e.desc()
                    )))
                }
            }
        },
    }
}

/// Container root's host uid (and gid) when it is not ours: the range's base under -U, once
/// reserved. None without -U, and rootless (where container root is us).
fn container_root(state: &State) -> Option<u32> {
    match &state.enter.userns {
        Some(u) if !u.rootless => match u.base {
            IdBase::Fixed(b) => Some(b),
            _ => None,
        },
        _ => None,
    }
}
