//! ns-enter: unshare the container's namespaces and start PID 1. See lib.rs for the contract.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), no_main)]

use std::convert::Infallible;
use std::os::fd::AsFd;

use nix::sys::signal::{kill, Signal};
use ns_core::exec::{chain_stages, exec_next, next_program, StageFds};
use ns_core::stage::{adopt_sync, debug, run, stage_args};
use ns_core::state::{Namespace, Runtime, State};
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{clone_parent, fork, loopback_up, Forked, SignalSet};
use ns_core::{Context, Error, Result};
use ns_enter::{clone_flags, Args};

const STAGE: &str = "ns-enter";

ns_core::stage_main!(stage);

/// dlmalloc, not musl's allocator: fewer system calls for a program that runs once per start
/// (see ns_core::sys::Heap).
#[cfg(not(test))]
#[global_allocator]
static HEAP: ns_core::sys::Heap = ns_core::sys::Heap;

fn stage() -> ! {
    run(STAGE, || {
        let args: Args = stage_args(STAGE, &ns_core::exec::args_utf8()?, Args::set_fds);
        let sync = adopt_sync(args.sync_fd)?;
        let (plan, runtime) = match args.state_fd {
            Some(fd) => {
                let state = State::from_state_fd(fd)?;
                (state.enter, state.runtime)
            }
            None => (args.to_plan(), Runtime::default()),
        };
        let rest = next_program(&args.rest, args.state_fd, args.sync_fd, "ns-mount")?;
        // Stage binaries are opened now, before any namespace or root change.
        let mut fds = StageFds::from_env()?;
        fds.open_missing(&chain_stages(&rest))?;

        // Without a user namespace or namespaces to join, the new namespaces but the cgroup
        // one are made while the monitor still makes our v1 cgroups (SYNC-0): only the
        // cgroup namespace must be rooted where we join them (issue 19: ~0.1 ms).
        let early = runtime.cgroups.is_some()
            && !plan.namespaces.contains(&Namespace::User)
            && plan.join.is_empty()
            && plan.netns_path.is_none();
        if early {
            let others: Vec<Namespace> = plan
                .namespaces
                .iter()
                .copied()
                .filter(|n| *n != Namespace::Cgroup)
                .collect();
            unshare_and_set_up(&plan, &others)?;
        }
        if let Some(cgroups) = &runtime.cgroups {
            // SYNC-0: the monitor made our v1 cgroups while we started; join them while we
            // are still in the host's cgroup namespace (and user namespace).
            let s = sync
                .as_ref()
                .ok_or_else(|| Error::setup("joining cgroups needs a monitor (ns-run)".into()))?;
            match s.recv()? {
                Some(Msg::Cgroups) => ns_enter::cgroups::join_v1(cgroups)?,
                // The monitor failed (and said why) or is gone.
                _ => std::process::exit(ns_core::error::EXIT_SETUP),
            }
        }
        ns_core::stage::fault("ns-enter:start");
        for j in &plan.join {
            join(j)?;
        }
        if let Some(p) = &plan.netns_path {
            let f = std::fs::File::open(p)
                .ctx(|| format!("--network-namespace-path={}", p.display()))?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .ctx(|| format!("cannot join network namespace {}", p.display()))?;
        }
        let mut rest = rest;
        if plan.namespaces.contains(&Namespace::User) {
            if let Some(root) = enter_user_namespace(plan.userns.is_some(), sync.as_ref())? {
                // Hand the image's mount (idmapped, or opened by the host) to ns-mount.
                use std::os::fd::IntoRawFd;
                nix::fcntl::fcntl(
                    &root,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )
                .ctx(|| "cannot pass the root mount on".into())?;
                let fd = root.into_raw_fd();
                rest.extend(["--root-fd".into(), fd.to_string()]);
            }
        }
        let others: Vec<Namespace> = plan
            .namespaces
            .iter()
            .copied()
            .filter(|n| *n != Namespace::User)
            .filter(|n| !early || *n == Namespace::Cgroup)
            .collect();
        if early {
            // The cgroup namespace, rooted at the cgroups just joined.
            if !others.is_empty() {
                nix::sched::unshare(clone_flags(&others))
                    .ctx(|| "cannot unshare the cgroup namespace".into())?;
            }
        } else {
            unshare_and_set_up(&plan, &others)?;
        }
        let joined_pid = plan.join.iter().any(|j| j.ns == Namespace::Pid);
        if !plan.namespaces.contains(&Namespace::Pid) && !joined_pid {
            if let Some(s) = &sync {
                s.send(&Msg::Pid(std::process::id() as i32))?;
                wait_go(s)?;
            }
            return Err(exec_next(&rest, &fds));
        }
        match &sync {
            Some(s) => start_under_monitor(s, &rest, &fds),
            None => start_and_wait(&rest, &fds),
        }
    })
}

/// Unshare the namespaces `ns` (the user namespace is made before), then set the hostname
/// and bring `lo` up in a new network namespace.
fn unshare_and_set_up(plan: &ns_core::state::EnterPlan, ns: &[Namespace]) -> Result<()> {
    ns_core::stage::fault("ns-enter:before-unshare");
    debug(STAGE, || format!("unshare {ns:?}"));
    nix::sched::unshare(clone_flags(ns))
        .ctx(|| format!("cannot unshare namespaces {:?}", names(ns)))?;
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).ctx(|| format!("cannot set hostname {h}"))?;
    }
    if ns.contains(&Namespace::Net) {
        loopback_up().ctx(|| "cannot bring up lo in the new network namespace".into())?;
    }
    Ok(())
}

/// Create the user namespace first (it must own every other one), have its maps written,
/// and become its root: uid and gid 0 inside, with a full capability set there.
/// Returns the image's mount, when the monitor sent one with the maps (SYNC-1).
fn enter_user_namespace(
    ranged: bool,
    sync: Option<&SyncSocket>,
) -> Result<Option<std::os::fd::OwnedFd>> {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .ctx(|| "cannot create a user namespace".into())?;
    match (ranged, sync) {
        (true, Some(s)) => {
            s.send(&Msg::UserNs)?; // SYNC-1
            let (msg, root) = match s.recv_any(nix::sys::socket::MsgFlags::empty())? {
                Some((m, fd)) => (Some(m), fd),
                None => (None, None),
            };
            if msg != Some(Msg::Mapped) {
                return Err(Error::setup(format!(
                    "the monitor did not map the user namespace: {msg:?}"
                )));
            }
            become_root(ranged)?;
            return Ok(root);
        }
        (true, None) => {
            return Err(Error::setup(
                "an id range for the user namespace needs a monitor (ns-run)".into(),
            ))
        }
        (false, _) => {
            // Alone: map our own ids only, the one mapping a process may write itself.
            std::fs::write("/proc/self/setgroups", "deny")
                .ctx(|| "cannot write /proc/self/setgroups".into())?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))
                .ctx(|| "cannot write uid_map".into())?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))
                .ctx(|| "cannot write gid_map".into())?;
        }
    }
    become_root(ranged)?;
    Ok(None)
}

/// uid and gid 0 inside the new user namespace (its maps are written).
fn become_root(ranged: bool) -> Result<()> {
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .ctx(|| "cannot become gid 0 in the user namespace".into())?;
    if ranged {
        ns_core::sys::clear_groups().ctx(|| "cannot clear supplementary groups".into())?;
    }
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .ctx(|| "cannot become uid 0 in the user namespace".into())
}

/// Join a namespace given by path (a pod's, for an OCI container). A joined PID namespace
/// takes effect for PID 1, which is forked after.
fn join(j: &ns_core::state::JoinNs) -> Result<()> {
    if j.ns == Namespace::User {
        return Err(Error::invalid(
            "join",
            &j.path.display().to_string(),
            "joining a user namespace is not supported",
        ));
    }
    let f = std::fs::File::open(&j.path)
        .ctx(|| format!("cannot open {} namespace {}", j.ns.name(), j.path.display()))?;
    if j.ns == Namespace::Mount && same_file(&f, "/proc/self/ns/mnt")? {
        // ns-mount would make the host's / a slave and pivot the host into the image.
        return Err(Error::setup(format!(
            "cannot join mount namespace {}: it is the runtime's own (the host's mounts would be the container's)",
            j.path.display()
        )));
    }
    nix::sched::setns(f.as_fd(), clone_flags(&[j.ns]))
        .ctx(|| format!("cannot join {} namespace {}", j.ns.name(), j.path.display()))
}

/// Is `f` the file at `path` (same device and inode)?
fn same_file(f: &std::fs::File, path: &str) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let a = f.metadata().ctx(|| "cannot stat a namespace".into())?;
    let b = std::fs::metadata(path).ctx(|| format!("cannot stat {path}"))?;
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

fn names(ns: &[Namespace]) -> Vec<&'static str> {
    ns.iter().map(|n| n.name()).collect()
}

/// SYNC-3: block until the monitor says go. EOF means the monitor died: stop here.
fn wait_go(sync: &SyncSocket) -> Result<()> {
    match sync.recv()? {
        Some(Msg::Go) => Ok(()),
        Some(m) => Err(Error::setup(format!(
            "unexpected message from monitor: {m:?}"
        ))),
        None => Err(Error::setup(
            "monitor went away before the container started".into(),
        )),
    }
}

/// PID 1 is cloned as the monitor's child; we report its pid and leave.
fn start_under_monitor(sync: &SyncSocket, rest: &[String], fds: &StageFds) -> Result<Infallible> {
    match clone_parent().ctx(|| "cannot fork PID 1".into())? {
        Forked::Child => {
            // Die with the monitor. Set before waiting for Go, so a monitor that died
            // earlier shows up as EOF below rather than being missed.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .ctx(|| "cannot set parent-death signal".into())?;
            wait_go(sync)?;
            ns_core::stage::fault("ns-enter:pid1");
            Err(exec_next(rest, fds))
        }
        Forked::Parent(pid) => {
            ns_core::stage::fault("ns-enter:after-fork");
            sync.send(&Msg::Pid(pid.as_raw()))?; // SYNC-2
            std::process::exit(0)
        }
    }
}

/// Alone: fork PID 1 and stay as its minimal monitor.
fn start_and_wait(rest: &[String], fds: &StageFds) -> Result<Infallible> {
    let signals = SignalSet::new(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let old = signals.block().ctx(|| "cannot block signals".into())?;
    // Our death is seen by the child as EOF on this pipe (closes the pdeathsig race).
    let (alive_r, alive_w) = nix::unistd::pipe().ctx(|| "cannot create pipe".into())?;
    match fork().ctx(|| "cannot fork PID 1".into())? {
        Forked::Child => {
            drop(alive_w);
            old.set_mask().ctx(|| "cannot restore signal mask".into())?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .ctx(|| "cannot set parent-death signal".into())?;
            let mut pfd = [nix::poll::PollFd::new(
                alive_r.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).ctx(|| "poll".into())? > 0 {
                return Err(Error::setup(
                    "parent went away before the container started".into(),
                ));
            }
            drop(alive_r);
            Err(exec_next(rest, fds))
        }
        Forked::Parent(child) => {
            drop(alive_r);
            let code = ns_core::reap::until(child, &signals, |sig| {
                let name = Signal::try_from(sig).map_or(sig.to_string(), |s| s.to_string());
                debug(STAGE, || format!("{name} received: killing the container"));
                let _ = kill(child, Signal::SIGKILL);
            })?;
            std::process::exit(code)
        }
    }
}
