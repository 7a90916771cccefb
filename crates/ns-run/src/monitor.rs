//! The monitor: the one process that stays on the host for the container's lifetime. It
//! starts the chain, answers the sync protocol, relays termination requests, reaps, and
//! returns the payload's exit status.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use ns_core::exec::StageFds;
use ns_core::stage::{debug, exit_code_of};
use ns_core::state::{IdBase, Namespace, Ownership, RootMode, Runtime, State};
use ns_host::cgroups::{Cgroup, Hierarchy};
use ns_host::chain::{Chain, Maps, Report, RootMount};
use ns_host::initcopy::HeldCopy;
use ns_host::machined::Machined;
use ns_host::registry::{Machine, Registration};

use ns_core::console;
use ns_core::sys::{fork, kill_raw, Forked, SignalSet};
use ns_core::{Context, Error, Result};
use ns_host::{journal, locks, notify};

const STAGE: &str = "ns-run";

/// The signals the monitor takes (through a signalfd): blocked before the fork, none lost.
const SIGNALS: [i32; 5] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGWINCH,
];

/// Run the container described by `state`; returns the exit code for ns-run. `hierarchies`:
/// the host's cgroup hierarchies if planning read them (not read again). `image_lock`: the
/// lock of `-i`'s disk image, taken when it was mounted: the container's lock (its tree is
/// that image's, in our own mount namespace).
pub fn run(
    state: &State,
    hierarchies: Option<Vec<Hierarchy>>,
    image_lock: Option<locks::ImageLock>,
) -> Result<Ended> {
    let Started {
        mut monitor,
        signals,
        cgroups,
        range,
    } = start(state, hierarchies, image_lock)?;
    let code = monitor.supervise(&signals);
    monitor.finish(code, &cgroups, range)
}

/// The container's end: its exit status, and its cgroups, still to be removed.
pub struct Ended {
    pub code: i32,
    cgroups: Option<journal::CgroupsLeft>,
}

impl Ended {
    /// Exit with the container's status. Its cgroups are removed by a child of ours after
    /// we exit (`in_background`), the caller does not wait for their rmdirs (issue 19): all
    /// that names the container (registry entry, machined's machine, locks, paths on its
    /// tree) and its mount namespace are gone by now, the cgroups (named for this monitor)
    /// are nobody else's, and their journal stays until they are gone, so that a child
    /// killed (or failing) leaves them to the next ns-run, as a monitor killed would. Not
    /// `in_background` (a disk image mounted in our own mount namespace, which the child
    /// would keep mounted), or PID 1 of a PID namespace: removed first.
    pub fn exit(self, in_background: bool) -> ! {
        let Some(left) = self.cgroups else {
            std::process::exit(self.code)
        };
        // PID 1 of its PID namespace (`unshare -fp ns-run`, a container's entry point): our
        // exit kills every other process in it, a remover forked now with them.
        if in_background && std::process::id() != 1 {
            match ns_core::sys::fork() {
                Ok(ns_core::sys::Forked::Parent(_)) => std::process::exit(self.code),
                // No remover (the caller's cgroup at its pids.max, RLIMIT_NPROC): removed
                // here, before the exit.
                Err(_) => {
                    left.remove();
                    std::process::exit(self.code)
                }
                Ok(ns_core::sys::Forked::Child) => {}
            }
            // The child: nothing of the caller's (its terminal, pipes, working directory)
            // nor ours held; out of the caller's session and process group (its terminal's
            // signals, a kill of the group), the monitor's termination signals still
            // blocked (signalfd). Its rmdirs wait for idle CPUs (SCHED_IDLE): never in the
            // way of the next container's start.
            let _ = nix::unistd::setsid();
            let _ = nix::unistd::chdir("/");
            let _ = ns_core::sys::close_from_except(0, &[]);
            let _ = ns_core::sys::idle_priority();
            let mut left = left;
            left.hand_to(std::process::id());
            left.remove();
            std::process::exit(0)
        }
        left.remove();
        std::process::exit(self.code)
    }
}

/// A container started: what the monitor's loop and its end need.
struct Started<'a> {
    monitor: Monitor<'a>,
    signals: SignalFd,
    cgroups: Vec<Cgroup>,
    /// The id range reserved under -U (held until we exit).
    range: Option<ns_host::userns::RangeLock>,
}

/// Start the container. Its own frame (not inlined into `run`), so that start-up's locals
/// and what it decided are gone, not under the loop, for the container's lifetime (issue
/// 19's memory goal: the stack the loop keeps, the heap).
#[inline(never)]
fn start(
    state: &State,
    hierarchies: Option<Vec<Hierarchy>>,
    image_lock: Option<locks::ImageLock>,
) -> Result<Started<'_>> {
    journal::collect_stale(true)?;
    if !state.net.ports.is_empty() {
        // Port-forwarding tables of monitors that were killed.
        for pid in ns_net::ports::stale_monitors() {
            let _ = ns_net::ports::remove(pid);
        }
    }
    let held = Held::take(state, image_lock)?;
    if let Some(link) = &state.monitor.link_journal {
        // --link-journal's host side, under the image lock (kept after exit, as nspawn's).
        ns_host::guestjournal::prepare(link, &state.mount.root)?;
    }
    let (fds, init_copy) = stage_fds(state)?;
    let mut systemd = Systemd::reach(state)?;
    let hierarchies = match systemd.machined {
        // In our unit now: the hierarchies as they are from there.
        Some(_) => Some(ns_host::cgroups::supervise_in_unit()?),
        None => hierarchies,
    };
    let mut decided = decide(state, hierarchies, systemd.machined.is_some())?;
    let chown = state.enter.userns.as_ref().map(|u| u.ownership) == Some(Ownership::Chown);
    if let (true, Some(base)) = (chown, decided.runtime.userns_base) {
        // `chown` ownership: shift the tree into the range now (under the image lock).
        ns_host::userns::shift_tree(&state.mount.root, base)?;
    }
    // Anything failing from here to the fork removes what was made.
    let mut cleanup = journal::Cleanup::new(&state.mount.root);
    let cg = CgroupMaker::new(state, &decided);
    let started = start_chain(state, fds, &cg, &mut cleanup);
    let (chain, cgroups, signals) = match started {
        Ok(s) => s,
        Err(e) => {
            cleanup.run(Some(&held.lock));
            return Err(e);
        }
    };
    let cgroups = match cg.finish(&chain, cgroups, &mut cleanup) {
        Ok(c) => c,
        Err(e) => {
            let _ = kill(chain.enter, Signal::SIGKILL);
            let _ = waitpid(chain.enter, None);
            cleanup.run(Some(&held.lock));
            held.release_registration();
            return Err(e);
        }
    };
    let mut monitor = Monitor::new(state, chain, cleanup, held, &cgroups, &mut decided);
    if let Some(c) = init_copy {
        monitor.machine.init_copy = c.record;
        monitor.init_copy = Some(c.fd);
        monitor.init_making = c.making;
    }
    monitor.machined = systemd.machined.take();
    monitor.origin = systemd.origin.take();
    Ok(Started {
        monitor,
        signals,
        cgroups,
        range: decided.range,
    })
}

/// Once the payload runs (and the loop was idle a while), the monitor only waits: what
/// start-up used and the loop will not goes back to the kernel, for the container's lifetime
/// (issue 19's memory goal): the stack below the loop's frames, the heap's free pages.
fn shed_startup_memory() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let low = maps
        .lines()
        .find(|l| l.ends_with(" [stack]"))
        .and_then(|l| l.split('-').next())
        .and_then(|a| usize::from_str_radix(a, 16).ok());
    drop(maps);
    if let Some(low) = low {
        let _ = ns_core::sys::discard_stack_below_here(low);
    }
    ns_core::sys::finish_startup_heap();
    ns_core::sys::trim_heap();
}

/// What is held for the container's lifetime, taken before anything is made.
struct Held {
    registration: Option<Registration>,
    lock: locks::ImageLock,
    zone: Option<locks::ZoneLock>,
}

impl Held {
    /// `image_lock`: the tree's lock, already held (`-i`'s image's); else it is taken here.
    fn take(state: &State, image_lock: Option<locks::ImageLock>) -> Result<Held> {
        let m = &state.mount;
        let shared = m.read_only || m.root_mode != RootMode::Directory;
        // The machine's name first: a second container of the same name is refused before
        // anything is made.
        let registration = state
            .monitor
            .register
            .then(|| Registration::claim(&state.machine))
            .transpose()?;
        let lock = match image_lock {
            Some(l) => l,
            None => locks::ImageLock::acquire(&m.root, shared)?,
        };
        let zone = state
            .net
            .zone
            .as_deref()
            .map(locks::ZoneLock::acquire)
            .transpose()?;
        Ok(Held {
            registration,
            lock,
            zone,
        })
    }

    fn release_registration(self) {
        if let Some(r) = self.registration {
            r.release();
        }
    }
}

/// The stage binaries. Constraint 9: no process a container can see runs a host file of
/// ours. In a PID namespace of its own, PID 1 is alone while it runs ns-enter's copy,
/// ns-mount and ns-caps (the registry entry, through which `ns-ctl shell` comes in, is
/// published before Go, but ns-ctl waits until PID 1 runs the payload), and ns-init is always
/// a sealed copy: the host's files serve, with no copy to pay for. A PID namespace joined (an
/// OCI pod member) or the host's own is seen by others from the start: sealed copies there.
/// ns-init's copy is shared with the running registered containers of the same build
/// (`ns_host::initcopy`) where [`shares_init_copy`]: returned too, for the monitor to keep
/// and record.
fn stage_fds(state: &State) -> Result<(StageFds, Option<HeldCopy>)> {
    let stages = ["ns-enter", "ns-mount", "ns-caps"];
    let mut fds = StageFds::default();
    let init_copy = match state.exec.as_pid2 {
        true => Some(ns_host::initcopy::obtain(shares_init_copy(state))?),
        false => None,
    };
    if let Some(c) = &init_copy {
        debug(STAGE, || match (&c.from, &c.record) {
            (Some(m), Some(r)) => format!("ns-init: the copy of machine {m} ({})", r.ino),
            (None, Some(r)) => format!("ns-init: a new copy, shared ({})", r.ino),
            _ => "ns-init: a copy of its own".into(),
        });
        fds.add("ns-init", c.fd.as_fd())?;
    }
    let e = &state.enter;
    let own_pid_ns =
        e.namespaces.contains(&Namespace::Pid) && !e.join.iter().any(|j| j.ns == Namespace::Pid);
    if own_pid_ns {
        fds.open_missing(&stages)?;
    } else {
        fds.open_sealed(&stages)?;
    }
    Ok((fds, init_copy))
}

/// Whether this container takes and offers a shared ns-init copy: registered (others find
/// it), and with a user namespace of its own whose ids leave out host root's (-U with a
/// picked or given range above 0, not rootless, no maps given), where container root has no
/// power over the copy, a file of host root's: where it owns it (no -U, `identity`, a range
/// from 0, rootless) it could set the copy's attributes, times or mode bits, a channel
/// between the containers that share it.
fn shares_init_copy(state: &State) -> bool {
    let excludes_root = state.enter.userns.as_ref().is_some_and(|u| {
        !u.rootless
            && u.maps.is_none()
            && match u.base {
                IdBase::Pick => true,
                IdBase::Fixed(b) => b > 0,
            }
    });
    state.monitor.register && excludes_root
}

/// systemd's side of a container: machined, and the monitor's cgroups before it made a
/// scope of its own. Until the monitor takes them over, dropping it undoes what was done
/// (back to those cgroups, the scope stopped), so that a start failing before the container
/// runs leaves no scope behind.
struct Systemd {
    machined: Option<Machined>,
    origin: Option<Vec<Hierarchy>>,
}

impl Systemd {
    /// systemd-machined, when the system bus has it and the container registers (as root):
    /// reached, and the unit the container goes in made (a scope of its own, unless
    /// `--keep-unit`; then also the monitor's cgroups before, to go back to once the
    /// container holds the scope). Nothing where there is no bus (one failed connect).
    fn reach(state: &State) -> Result<Systemd> {
        let m = &state.monitor;
        let mut sd = Systemd {
            machined: None,
            origin: None,
        };
        if !m.register || !nix::unistd::geteuid().is_root() {
            return Ok(sd);
        }
        sd.machined = Machined::reach(&state.machine)?;
        let Some(machined) = sd.machined.as_mut().filter(|_| !m.keep_unit) else {
            return Ok(sd);
        };
        sd.origin = Some(ns_host::cgroups::hierarchies());
        let slice = (m.slice.as_deref()).map_or("machine.slice", |s| {
            s.rsplit('/').next().unwrap_or("-.slice")
        });
        machined.own_scope(slice)?;
        Ok(sd)
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if let Some(origin) = self.origin.take() {
            let _ = leave_scope(&origin, self.machined.as_mut());
        }
        if let Some(m) = self.machined.take() {
            m.release(false);
        }
    }
}

/// Back to the monitor's cgroups of `origin`, out of its scope (before PID 1 runs, or before
/// the scope is stopped at exit: it cannot stop while the monitor is in it). Where they are
/// gone (ns-run alone in a scope of the caller's, which systemd removed once the monitor left
/// it) the monitor stays in the scope's `supervisor`, as with --keep-unit.
fn leave_scope(origin: &[Hierarchy], machined: Option<&mut Machined>) -> Result<()> {
    if let (false, Some(m)) = (ns_host::cgroups::leave_unit(origin)?, machined) {
        m.stay_in_scope();
    }
    Ok(())
}

/// What the host decided at start, and holds while the container runs.
struct Decided {
    /// The decisions the chain gets (the state's runtime section).
    runtime: Runtime,
    /// The id range reserved under -U (held until we exit).
    range: Option<ns_host::userns::RangeLock>,
    /// The guest's notify socket (booted, or --notify-ready).
    notify: Option<notify::NotifySocket>,
    /// The cgroup hierarchies (read once: the v1 cgroups are named now, made after the fork);
    /// empty without cgroups of the container's own.
    hierarchies: Vec<Hierarchy>,
    cgroup_name: String,
    /// The slice the container's cgroups go under (`-S`), none in a unit of ours (which is
    /// in the slice already).
    slice: Option<String>,
}

/// The decisions only the host makes at start (the state's runtime section, which
/// `Chain::start` writes into the document the chain gets), and what holds them. `in_unit`:
/// the monitor is in a systemd unit of its own (registered with machined).
fn decide(state: &State, hierarchies: Option<Vec<Hierarchy>>, in_unit: bool) -> Result<Decided> {
    let mut runtime = Runtime::default();
    // -U: reserve the id range (held until we exit).
    let range = match &state.enter.userns {
        Some(u) if !u.rootless => {
            let r = ns_host::userns::reserve(u.base, u.count, &state.machine)?;
            runtime.userns_base = Some(r.base);
            Some(r)
        }
        _ => None,
    };
    // The guest's init reports readiness on /run/host/notify (booted, or --notify-ready),
    // a socket owned by container root (the range's base under -U).
    let notify = if state.monitor.boot || state.monitor.notify_ready {
        let n = notify::NotifySocket::bind(runtime.userns_base)?;
        runtime.notify_socket = Some(n.path.clone());
        Some(n)
    } else {
        None
    };
    // The container's own cgroups (every container started by root: its device policy and
    // --property limits live there, one level above its processes, which the cgroup
    // namespace shows it as its root). cgroup2's are made before the fork, to fork straight
    // into its payload level; the v1 ones while ns-enter starts, which joins their payload
    // levels when told (SYNC-0), before it creates the cgroup namespace (so that a booted
    // init finds a subtree of its own).
    // Only where we may make them (not a read-only cgroupfs, as in a container or a CI
    // runner): the properties say what they miss.
    let cgroup_name = format!("{}-{}", state.machine, std::process::id());
    let slice = state.monitor.slice.clone().filter(|_| !in_unit);
    let want_cgroups = state.monitor.boot || !state.monitor.properties.is_empty();
    let mut hierarchies = match hierarchies {
        _ if !want_cgroups => Vec::new(),
        Some(known) => known,
        None => ns_host::cgroups::hierarchies(),
    };
    hierarchies.retain(|h| h.writable);
    if want_cgroups {
        runtime.cgroups = Some(ns_host::cgroups::planned(
            &hierarchies,
            &cgroup_name,
            slice.as_deref(),
            false,
        ));
    }
    Ok(Decided {
        runtime,
        range,
        notify,
        hierarchies,
        cgroup_name,
        slice,
    })
}

/// Makes the container's cgroups (none when it has none of its own), journaling each.
struct CgroupMaker<'a> {
    state: &'a State,
    decided: &'a Decided,
}

impl<'a> CgroupMaker<'a> {
    fn new(state: &'a State, decided: &'a Decided) -> CgroupMaker<'a> {
        CgroupMaker { state, decided }
    }

    /// Whether the container has cgroups of its own: planned (`runtime.cgroups`, which
    /// ns-enter waits for with SYNC-0) even where no hierarchy is mounted, so that their
    /// making fails with its reason instead of leaving ns-enter waiting.
    fn wanted(&self) -> bool {
        self.decided.runtime.cgroups.is_some()
    }

    fn create(&self, v2: bool, cleanup: &mut journal::Cleanup) -> Result<Vec<Cgroup>> {
        ns_host::cgroups::create(
            &self.decided.hierarchies,
            &self.decided.cgroup_name,
            self.decided.slice.as_deref(),
            v2,
            &mut |dir, slice| cleanup.add_cgroup(dir.to_path_buf(), slice),
        )
    }

    fn create_payloads(&self, cgroups: &[Cgroup]) -> Result<()> {
        let booted = self
            .state
            .mount
            .cgroups
            .as_ref()
            .filter(|_| self.state.monitor.boot);
        ns_host::cgroups::create_payloads(
            cgroups,
            booted.map(|c| c.layout),
            self.decided.runtime.userns_base,
        )
    }

    /// cgroup2's, with its payload level (to fork into).
    fn v2(&self, cleanup: &mut journal::Cleanup) -> Result<Vec<Cgroup>> {
        if !self.wanted() {
            return Ok(Vec::new());
        }
        let v2 = self.create(true, cleanup)?;
        self.create_payloads(&v2)?;
        Ok(v2)
    }

    /// While ns-enter execs: the v1 cgroups, then every limit and the device policy, then
    /// their payload levels (which inherit the policy), then SYNC-0. ns-enter waits for it
    /// before it does anything. Returns every cgroup made.
    fn finish(
        &self,
        chain: &Chain,
        mut cgroups: Vec<Cgroup>,
        cleanup: &mut journal::Cleanup,
    ) -> Result<Vec<Cgroup>> {
        if !self.wanted() {
            return Ok(cgroups);
        }
        let first_v1 = cgroups.len();
        cgroups.extend(self.create(false, cleanup)?);
        ns_core::stage::fault("ns-run:cgroups");
        let notice = ns_host::resources::apply(&self.state.monitor.properties, &cgroups)?;
        if let Some(n) = notice.filter(|_| !self.state.monitor.quiet) {
            ns_core::errln!("{STAGE}: {n}");
        }
        self.create_payloads(&cgroups[first_v1..])?;
        chain.cgroups_ready()?;
        Ok(cgroups)
    }
}

/// cgroup2 first, then the chain, forked straight into it (no cgroup.procs write; v1 is
/// joined by the child), with the monitor's signals blocked (and unblocked in the child).
fn start_chain(
    state: &State,
    fds: StageFds,
    cg: &CgroupMaker,
    cleanup: &mut journal::Cleanup,
) -> Result<(Chain, Vec<Cgroup>, SignalFd)> {
    let cgroups = cg.v2(cleanup)?;
    let v2_dir = ns_host::cgroups::v2_dir(&cgroups)?;
    let set = SignalSet::new(&SIGNALS);
    let old = set.block().ctx(|| "cannot block signals".into())?;
    let signals = set.signalfd().ctx(|| "cannot create signalfd".into())?;
    let chain = Chain::start(
        state,
        cg.decided.runtime.clone(),
        fds,
        v2_dir.as_ref().map(|d| d.as_fd()),
        Some(&old),
    )?;
    Ok((chain, cgroups, signals))
}

/// The registry entry, as published once PID 1 exists (`starting`).
fn machine_entry(state: &State, cgroups: &[Cgroup]) -> Machine {
    Machine {
        name: state.machine.clone(),
        uuid: state.exec.uuid.replace('-', ""),
        class: "container".into(),
        service: "ns-run".into(),
        leader: 0,
        monitor: std::process::id() as i32,
        root: state.mount.root.clone(),
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
        start_lock: true,
        namespaces: Vec::new(),
        init_copy: None,
        log: state.monitor.log_file.clone(),
    }
}

struct Monitor<'a> {
    state: &'a State,
    chain: Chain,
    pid1: Option<Pid>,
    /// PID 1 died of SIGKILL (the OOM killer's signal).
    pid1_sigkill: bool,
    /// Termination requests received (SIGTERM/SIGINT/SIGHUP).
    requests: u32,
    /// Exit code a stage reported with `Failed` (SYNC-8).
    failed: Option<i32>,
    enter_status: Option<i32>,
    /// Host paths the chain created (SYNC-4).
    cleanup: journal::Cleanup,
    /// The container's network namespace, kept to give moved links back at exit.
    netns: Option<File>,
    /// ns-net failed: PID 1 was killed before it started.
    net_failed: bool,
    /// Port-forwarding tables to remove at exit.
    ports_installed: bool,
    notify: Option<notify::NotifySocket>,
    console: Option<console::Console>,
    /// The registry entry (if registered), published once PID 1 exists (`starting` while
    /// the entry's start lock is held, dropped once it runs the payload); the locks.
    held: Held,
    machine: Machine,
    /// PID 1's namespaces as it started, kept open for `ns-ctl shell` (registered only).
    held_namespaces: Vec<File>,
    /// `-a`: the sealed copy of ns-init PID 1 runs (close-on-exec), kept for later starts to
    /// share while the container runs (recorded in the entry).
    init_copy: Option<OwnedFd>,
    /// Held from making that copy until the entry shows it: other starts of the build wait
    /// for it rather than make copies of their own.
    init_making: Option<ns_host::initcopy::Making>,
    /// The image's mount, cloned while ns-enter starts (idmapped at SYNC-1).
    root_clone: Option<OwnedFd>,
    /// The -U id range's base, reserved at start.
    userns_base: Option<u32>,
    /// systemd-machined, reached at start: the container is registered with it at SYNC-2;
    /// then its connection is polled for systemd's stop requests.
    machined: Option<Machined>,
    /// The monitor's cgroups before it made a scope of its own: it goes back there once
    /// PID 1 holds the scope.
    origin: Option<Vec<Hierarchy>>,
    /// Registered with machined: unregistered at exit.
    in_machined: bool,
    /// Our supervisor's watchdog (`WatchdogSec=` of ns-run@.service), pinged from the loop.
    watchdog: Option<notify::Watchdog>,
    /// The payload runs: start-up memory is given back once the loop has been idle for
    /// [`SHED_AFTER_MS`] (a payload gone by then, as `/bin/true`, costs nothing).
    shed: bool,
}

/// How long the monitor waits, idle, after the payload started before shedding.
const SHED_AFTER_MS: u16 = 100;

/// What a poll found ready.
struct Ready {
    sync: bool,
    console: Vec<RawFd>,
    notify: bool,
    /// systemd-machined's connection (a stop request).
    bus: bool,
}

impl<'a> Monitor<'a> {
    fn new(
        state: &'a State,
        chain: Chain,
        cleanup: journal::Cleanup,
        held: Held,
        cgroups: &[Cgroup],
        decided: &mut Decided,
    ) -> Monitor<'a> {
        // Cloned now, while ns-enter execs on the other CPU.
        let idmap = ns_host::chain::idmapped_root(state.enter.userns.as_ref());
        let root_clone = ns_host::chain::root_by_fd(state)
            .then(|| ns_host::chain::clone_root(&state.mount.root, idmap).ok())
            .flatten();
        Monitor {
            state,
            chain,
            pid1: None,
            pid1_sigkill: false,
            requests: 0,
            failed: None,
            enter_status: None,
            cleanup,
            netns: None,
            net_failed: false,
            ports_installed: false,
            notify: decided.notify.take(),
            console: None,
            held,
            machine: machine_entry(state, cgroups),
            held_namespaces: Vec::new(),
            init_copy: None,
            init_making: None,
            root_clone,
            userns_base: decided.runtime.userns_base,
            machined: None,
            origin: None,
            in_machined: false,
            watchdog: notify::Watchdog::from_env(),
            shed: false,
        }
    }

    fn supervise(&mut self, signals: &SignalFd) -> Result<i32> {
        let mut sync_open = true;
        loop {
            let ready = self.poll(signals, sync_open)?;
            if ready.notify {
                let n = self.notify.as_ref().expect("polled");
                if n.ready() && self.state.monitor.notify_ready {
                    // --notify-ready=yes: we are ready when the guest is.
                    notify::notify_ready();
                }
            }
            if ready.bus {
                self.on_bus();
            }
            if ready.sync {
                let report = self.chain.next_report()?;
                sync_open = self.on_report(report)?;
            }
            for fd in ready.console {
                self.on_console(fd);
            }
            if let Some(c) = self.console.as_mut() {
                c.tick();
            }
            if let Some(code) = self.on_signals(signals, &mut sync_open)? {
                return Ok(code);
            }
            if let Some(code) = self.without_pid1(&mut sync_open)? {
                return Ok(code);
            }
        }
    }

    /// Wait for a signal, a report, the console or the notify socket.
    fn poll(&mut self, signals: &SignalFd, sync_open: bool) -> Result<Ready> {
        loop {
            let mut pfds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if sync_open {
                pfds.push(PollFd::new(self.chain.fd(), PollFlags::POLLIN));
            }
            let console = self.console.as_ref().map(|c| c.fds()).unwrap_or_default();
            let console_fds: Vec<RawFd> = console.iter().map(|f| f.as_raw_fd()).collect();
            pfds.extend(
                console
                    .into_iter()
                    .map(|f| PollFd::new(f, PollFlags::POLLIN)),
            );
            if let Some(n) = &self.notify {
                pfds.push(PollFd::new(n.socket.as_fd(), PollFlags::POLLIN));
            }
            let first_bus = pfds.len();
            if let Some(m) = self.machined.as_ref().filter(|_| self.in_machined) {
                pfds.push(PollFd::new(m.fd(), PollFlags::POLLIN));
            }
            let mut timeout = self
                .console
                .as_ref()
                .map_or(PollTimeout::NONE, |c| c.poll_timeout());
            if let Some(w) = self.watchdog.as_mut() {
                let due = PollTimeout::from(w.tick());
                // NONE (-1) orders first: it means "no limit".
                if timeout == PollTimeout::NONE || due < timeout {
                    timeout = due;
                }
            }
            if self.shed && (timeout == PollTimeout::NONE || timeout > SHED_AFTER_MS.into()) {
                timeout = SHED_AFTER_MS.into();
            }
            let n = match poll(&mut pfds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r.ctx(|| "poll".into())?,
            };
            if n == 0 && std::mem::take(&mut self.shed) {
                shed_startup_memory();
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            let first_console = if sync_open { 2 } else { 1 };
            return Ok(Ready {
                sync: sync_open && ready(&pfds[1]),
                console: console_fds
                    .iter()
                    .zip(&pfds[first_console..])
                    .filter(|(_, p)| ready(p))
                    .map(|(fd, _)| *fd)
                    .collect(),
                notify: self.notify.is_some() && first_bus > 0 && ready(&pfds[first_bus - 1]),
                bus: pfds.get(first_bus).is_some_and(ready),
            });
        }
    }

    /// Take the pending signals; the exit code once PID 1 is gone.
    fn on_signals(&mut self, signals: &SignalFd, sync_open: &mut bool) -> Result<Option<i32>> {
        while let Some(si) = signals
            .read_signal()
            .ctx(|| "cannot read signalfd".into())?
        {
            let sig = si.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                if let Some(code) = self.reap()? {
                    // What the chain announced before it ended is queued: take it all
                    // (SYNC-4 paths must reach the cleanup list).
                    self.drain(sync_open, false)?;
                    if let Some(c) = self.console.as_mut() {
                        c.finish();
                    }
                    return Ok(Some(code));
                }
            } else if sig == libc::SIGWINCH {
                if let Some(c) = &self.console {
                    c.sync_window_size();
                }
            } else {
                self.on_termination_request(sig);
            }
        }
        Ok(None)
    }

    /// ns-enter is gone without having reported PID 1 (it failed, or was killed). What it
    /// sent before exiting is already queued: drain it. If there is still no PID 1, stop
    /// (the exit code); a PID 1 it may have cloned dies with us (parent-death signal, or EOF
    /// while it waits for Go).
    fn without_pid1(&mut self, sync_open: &mut bool) -> Result<Option<i32>> {
        let (Some(code), None) = (self.enter_status, self.pid1) else {
            return Ok(None);
        };
        self.drain(sync_open, true)?;
        if self.pid1.is_some() {
            return Ok(None);
        }
        Ok(Some(match (code, self.failed) {
            (0, Some(f)) => f,
            (0, None) => ns_core::error::EXIT_SETUP,
            (c, _) => c,
        }))
    }

    /// Handle the reports already queued (`until_pid1`: up to the one naming PID 1).
    fn drain(&mut self, sync_open: &mut bool, until_pid1: bool) -> Result<()> {
        while *sync_open && !(until_pid1 && self.pid1.is_some()) {
            match self.chain.try_next_report()? {
                Some(r) => *sync_open = self.on_report(Some(r))?,
                None => break,
            }
        }
        Ok(())
    }

    /// After the container: kill what may be left, say why it died when the OOM killer did
    /// it, give the network back, remove what was made, unregister, free the id range.
    fn finish(
        mut self,
        code: Result<i32>,
        cgroups: &[Cgroup],
        range: Option<ns_host::userns::RangeLock>,
    ) -> Result<Ended> {
        if code.is_err() || self.pid1.is_none() {
            // The monitor cannot go on, or ns-enter died without announcing a PID 1 it
            // may have cloned (ours, by CLONE_PARENT): nothing may outlive us, nor keep
            // the cgroups busy while they are removed.
            self.kill_and_reap();
        }
        // The OOM killer was at work there: say whom it took.
        if let Ok(c) = code {
            let as_pid2 = self.state.exec.as_pid2;
            let end = ns_host::oom::PayloadEnd {
                // With the stub init, its 137 relays the payload's SIGKILL.
                killed: self.pid1_sigkill || (as_pid2 && c == 137),
                requested: self.requests > 0,
                pid: self.pid1.filter(|_| !as_pid2).map(Pid::as_raw),
                limited: ns_host::oom::memory_limited(&self.state.monitor.properties),
            };
            if let Some(line) = ns_host::oom::notice(cgroups, end) {
                ns_core::errln!("{STAGE}: {line}");
            }
        }
        let zone = self.held.zone.take();
        self.release_network(zone);
        let Monitor {
            held,
            cleanup,
            console,
            notify,
            mut machined,
            origin,
            ..
        } = self;
        let left = cleanup.run_but_cgroups(Some(&held.lock));
        if let Some(origin) = origin {
            // Failed before PID 1 was registered: out of the scope before it is stopped.
            let _ = leave_scope(&origin, machined.as_mut());
        }
        match machined {
            Some(m) => m.release(self.in_machined),
            None if self.in_machined => ns_host::machined::unregister_by_name(&self.state.machine),
            None => {}
        }
        held.release_registration();
        drop(range);
        drop((console, notify));
        let code = match code {
            Ok(c) => c,
            Err(e) => {
                if let Some(l) = left {
                    l.remove();
                }
                return Err(e);
            }
        };
        Ok(Ended {
            code,
            cgroups: left,
        })
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

    /// systemd-machined's connection has something: systemd asking us to stop our scope is a
    /// termination request (as nspawn takes it); a connection gone is dropped.
    fn on_bus(&mut self) {
        let Some(m) = self.machined.as_mut() else {
            return;
        };
        match m.stop_requested() {
            Ok(true) => self.on_termination_request(libc::SIGTERM),
            Ok(false) => {}
            Err(_) => self.machined = None,
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

    /// Returns whether the sync socket is still open (`None`: EOF).
    fn on_report(&mut self, report: Option<Report>) -> Result<bool> {
        let state = self.state;
        match report {
            Some(Report::Console(master)) => {
                // SYNC-6: the master of the container's /dev/console.
                let log = (state.monitor.log_file.as_ref())
                    .map(|_| ns_core::logfile::LogFile::of_stdout());
                self.console =
                    Some(console::Console::start(master, state.monitor.console).logging_to(log));
            }
            Some(Report::Pid(pid)) => self.on_pid1(pid)?,
            Some(Report::Failed { stage, code, .. }) => {
                debug(STAGE, || format!("{stage} failed with {code}"));
                self.failed = Some(code);
            }
            Some(Report::Created { path, recursive }) => self.cleanup.add(path, recursive)?,
            Some(Report::UserNs) => {
                // SYNC-1: ns-enter's user namespace exists.
                let u = state.enter.userns.as_ref();
                let u = u.ok_or_else(|| Error::setup("unexpected user namespace".into()))?;
                let maps = Maps::of(u, self.userns_base, &state.mount.bind_users)?;
                // The image as a detached (idmapped) mount, for ns-mount (via ns-enter).
                let cleanup = &mut self.cleanup;
                let mut announce = |p: std::path::PathBuf| cleanup.add(p, false);
                let root = ns_host::chain::root_by_fd(state).then(|| RootMount {
                    path: &state.mount.root,
                    clone: self.root_clone.take(),
                    ownership: u.ownership,
                    chown_base: self.userns_base.filter(|_| state.mount.rewrites_tree()),
                    read_only: state.mount.read_only_tree(),
                    announce: &mut announce,
                });
                // Sharing our network namespace, ns-mount will ask for a sysfs (NeedSys):
                // the fact it decides that on.
                let sys_too = !state.mount.private_network;
                let ownership = self.chain.map_userns(&maps, root, sys_too)?;
                if u.ownership == Ownership::Auto {
                    self.on_auto_ownership(ownership);
                }
            }
            Some(Report::NeedMount { op }) => {
                // SYNC-5: only what the plan says is made here.
                // `rootidmap` maps the source's owner to container root: the range's base,
                // or (rootless) our own uid, the plan's.
                let planned = match state.enter.userns.as_ref().map(|u| u.base) {
                    Some(IdBase::Fixed(b)) => Some(b),
                    _ => None,
                };
                let base = self.userns_base.or(planned);
                let cleanup = &mut self.cleanup;
                let mut announce = |p: std::path::PathBuf| cleanup.add(p, true);
                self.chain
                    .host_mount(op, &state.mount, base, self.pid1, &mut announce)?;
            }
            // SYNC-5: the kernel refuses ns-mount a procfs in its user namespace.
            Some(Report::NeedProc) => self.chain.host_proc(self.pid1)?,
            // SYNC-5: the kernel refuses ns-mount a sysfs (no network namespace of its own).
            Some(Report::NeedSys) => self.chain.host_sys(self.pid1)?,
            Some(Report::Waiting) => {
                return Err(Error::setup("unexpected Waiting from the chain".into()))
            }
            // EOF: the payload's exec succeeded, or the chain is gone.
            None => {
                if let (Some(r), Some(_), None) = (&self.held.registration, self.pid1, self.failed)
                {
                    // The entry stays as published (`starting`, `start_lock`).
                    r.started()?;
                }
                if self.pid1.is_some() && self.failed.is_none() && !state.monitor.notify_ready {
                    // As nspawn under Type=notify: ready once the payload runs.
                    notify::notify_ready();
                }
                self.shed = true;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What `-U`'s ownership `auto` came to at SYNC-1: `map`, else (the tree's file system
    /// takes no idmapped mount) `chown`, as nspawn; or, for a tree that is not rewritten, its
    /// ids as they are, which the container sees unlike nspawn's (it chowns a copy for -x):
    /// said in one line.
    fn on_auto_ownership(&self, ownership: Option<Ownership>) {
        debug(STAGE, || format!("ownership auto: {ownership:?}"));
        if ownership == Some(Ownership::Off) && !self.state.monitor.quiet {
            ns_core::errln!(
                "{STAGE}: {} takes no idmapped mount here, and -x, --read-only and --volatile do not chown it: its files keep their ids (host root's are nobody's inside)",
                self.state.mount.root.display()
            );
        }
    }

    /// SYNC-2 received: host-side setup for PID 1 (network, registration); then SYNC-3.
    fn on_pid1(&mut self, pid: Pid) -> Result<()> {
        self.pid1 = Some(pid);
        debug(STAGE, || format!("container PID 1 is {pid}"));
        if self.requests > 0 {
            let _ = kill(pid, Signal::SIGKILL);
        } else if !self.wire_network(pid)? {
            self.net_failed = true;
            let _ = kill(pid, Signal::SIGKILL);
        } else {
            if self.held.registration.is_some() {
                self.machine.leader = pid.as_raw();
                // PID 1's namespaces before it goes on (the payload may leave them).
                self.hold_namespaces(pid.as_raw())?;
            }
            if let Some(r) = &self.held.registration {
                // Published before go, `starting` until the payload runs: once the payload
                // runs, its machine is listed, and a container that cannot be listed never
                // runs its payload. (Published after go, while PID 1 went on, a descheduled
                // monitor left a running payload unlisted: `ns-ctl shell NAME` said there
                // was no such machine.)
                r.hold_starting()?;
                r.publish(&self.machine)?;
                // The entry shows ns-init's copy: the next starts take it.
                drop(self.init_making.take());
                ns_core::stage::fault("ns-run:registered");
            }
            self.register_with_machined(pid)?;
            if self.requests > 0 {
                // systemd asked to stop the scope while it was being set up.
                let _ = kill(pid, Signal::SIGKILL);
            } else {
                self.chain.go()?; // SYNC-3
            }
        }
        Ok(())
    }

    /// Register PID 1 as the leader with machined, if reached (its root, uuid, and the
    /// host side of its veths).
    fn register_with_machined(&mut self, pid: Pid) -> Result<()> {
        if let Some(origin) = self.origin.take() {
            leave_scope(&origin, self.machined.as_mut())?;
        }
        let Some(m) = self.machined.as_mut() else {
            return Ok(());
        };
        let net = &self.state.net;
        let names: Vec<String> = (net.veth.iter().chain(&net.veth_extra))
            .map(|v| v.host.clone())
            .collect();
        let root = self.state.mount.root.to_string_lossy();
        let ifindices = ns_host::machined::ifindices(&names);
        m.register(pid.as_raw(), &self.state.exec.uuid, &root, &ifindices)?;
        self.in_machined = true;
        if m.stop_pending() {
            self.requests += 1;
        }
        Ok(())
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
        let (enter, pid1) = (self.chain.enter, self.pid1);
        let (net_failed, boot) = (self.net_failed, self.state.monitor.boot);
        let mut enter_status = None;
        let mut sigkill = false;
        let code = ns_core::reap::exited(|st, code| {
            if st.pid() == Some(enter) {
                enter_status = Some(code);
                None
            } else if st.pid().is_some() && st.pid() == pid1 {
                sigkill = matches!(st, WaitStatus::Signaled(_, Signal::SIGKILL, _));
                Some(match net_failed {
                    true => ns_core::error::EXIT_SETUP,
                    false => boot_exit_code(boot, st).unwrap_or(code),
                })
            } else {
                None
            }
        })?;
        self.enter_status = enter_status.or(self.enter_status);
        self.pid1_sigkill |= sigkill;
        Ok(code)
    }

    /// ns-net's work, in a forked helper (the monitor itself never starts the executor):
    /// returns false when it failed (it printed why).
    fn wire_network(&mut self, pid: Pid) -> Result<bool> {
        let net = &self.state.net;
        if net.is_empty() {
            return Ok(true);
        }
        let path = format!("/proc/{pid}/ns/net");
        let netns = File::open(&path).ctx(|| format!("cannot open {path}"))?;
        let monitor = std::process::id();
        let ok = helper(|| {
            ns_net::wire::setup(net, netns.as_fd())?;
            ns_net::ports::apply(net, monitor)
        })?;
        if !net.interfaces.is_empty() {
            self.netns = Some(netns);
        }
        self.ports_installed = ok && !net.ports.is_empty();
        if let Some(note) = ns_net::ports::forwarding_note(net).filter(|_| ok) {
            if !self.state.monitor.quiet {
                ns_core::errln!("{STAGE}: {note}");
            }
        }
        Ok(ok)
    }

    /// After the container: give moved links back; the last container of a zone deletes
    /// its bridge. (veths need nothing: they go with the network namespace.)
    fn release_network(&mut self, zone: Option<locks::ZoneLock>) {
        if let Some(netns) = self.netns.take() {
            let names = &self.state.net.interfaces;
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
        match (self.pid1, self.state.monitor.kill_signal) {
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

/// A booted init that called reboot(2) is killed by the kernel with SIGHUP (reboot: 133,
/// nspawn's convention, which its unit restarts on) or SIGINT (poweroff, halt: 0).
fn boot_exit_code(boot: bool, st: WaitStatus) -> Option<i32> {
    match st {
        WaitStatus::Signaled(_, Signal::SIGHUP, _) if boot => Some(133),
        WaitStatus::Signaled(_, Signal::SIGINT, _) if boot => Some(0),
        _ => None,
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
