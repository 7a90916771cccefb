//! `exec`: a process (config.json's process format, from `--process`) in a running
//! container. A child joins its cgroups and namespaces (ns_host::attach, as `ns-ctl shell`
//! does) but stays outside its PID namespace, out of its processes' sight, and execs ns-caps
//! `--fork` with the container's system call filter and the process's own identity,
//! capabilities and environment: ns-caps drops every privilege, then forks the process, the
//! first one inside the PID namespace, as our child (CLONE_PARENT), reports its pid and
//! exits. So nothing the container can see is ever more privileged than the process asked
//! for (container root holds CAP_SYS_PTRACE over the host's user namespace without a user
//! namespace: it could attach to anything it sees). With `--detach` we return once its pid
//! is known and written: the process is reparented to the nearest subreaper (containerd's
//! shim, which reaps it and reads its exit status, as with runc); else we wait and return
//! its exit code. Nothing the container's processes can reach leads to a host file of ours:
//! we run from a sealed copy of ns-oci, the process from a sealed copy of ns-caps, holding
//! stdio only.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::wait::{waitpid, WaitPidFlag};
use ns_core::exec::{state_argv, StageFds};
use ns_core::stage::{exit_code_of, fail};
use ns_core::state::{ExecPlan, State};
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{fork, Forked};
use ns_core::{Context, Error, Result};
use ns_host::attach;

use crate::container::{self, Status};
use crate::Global;

pub struct Request<'a> {
    pub id: &'a str,
    pub process: &'a Path,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
}

fn plan_of(r: &Request, filter: Option<ns_core::state::SyscallFilter>) -> Result<ExecPlan> {
    let shown = r.process.display().to_string();
    let text = std::fs::read_to_string(r.process).ctx(|| format!("--process={shown}"))?;
    let p: oci_spec::runtime::Process = serde_json::from_str(&text)
        .map_err(|e| Error::invalid("--process", &shown, &e.to_string()))?;
    let mut plan = ExecPlan {
        argv: p.args().clone().unwrap_or_default(),
        chdir: Some(p.cwd().to_string_lossy().into_owned()),
        syscall_filter: filter,
        ..Default::default()
    };
    if plan.argv.is_empty() {
        return Err(Error::invalid("--process", &shown, "args is empty"));
    }
    ns_run::oci::process_into(&p, &mut plan, true)?;
    if p.terminal().unwrap_or(false) && r.console_socket.is_none() {
        return Err(Error::setup(
            "process.terminal needs --console-socket".into(),
        ));
    }
    Ok(plan)
}

/// The saved state of container `id`, which must be created or running.
fn running(g: &Global, id: &str) -> Result<container::Saved> {
    let (dir, saved) = container::load(&g.root, id)?;
    match saved.status(&dir) {
        Status::Running | Status::Created => Ok(saved),
        st => Err(Error::setup(format!(
            "container {id} is {}: cannot exec in it",
            st.name()
        ))),
    }
}

pub fn exec(g: &Global, r: &Request) -> Result<i32> {
    // The process forked inside the container's PID namespace is seen by its processes: a
    // copy of a sealed memfd (we re-execute ourselves from one now, before anything else),
    // which execs a sealed copy of ns-caps (design constraint 9, runc's CVE-2019-5736).
    ns_core::exec::reexec_sealed("ns-oci")?;
    let saved = running(g, r.id)?;
    let mut plan = plan_of(r, saved.syscall_filter.clone())?;
    // Written by the joining process before it enters the mount namespace, as runc does:
    // ns-caps --fork runs outside the container's PID namespace, where the container's
    // /proc has no /proc/self; the value is inherited by the process it forks.
    let oom_score_adj = plan.oom_score_adjust.take();
    // A seccomp agent gets this process's listener too, with the container's state.
    plan.seccomp_listener = saved.seccomp_listener.as_ref().map(|(_, meta)| {
        serde_json::json!({"ociVersion": "1.0.2", "fds": ["seccompFd"], "metadata": meta,
            "state": saved.state_json("running")})
        .to_string()
    });
    let listener = crate::create::listener_socket(&saved)?;
    let mut state = State::exec_only(r.id, plan);
    state.runtime.seccomp_listener_fd = listener.as_ref().map(|s| s.as_raw_fd());
    let state_fd = state.to_sealed_memfd()?;
    let mut fds = StageFds::default();
    fds.open_sealed(&["ns-caps"])?;
    let ns = attach::namespaces(saved.pid)?;
    let root = attach::root_of(saved.pid, &ns)?;
    let cgroups: Vec<_> = saved.cgroups.iter().map(|c| c.dir.clone()).collect();
    let console = r
        .console_socket
        .map(crate::create::connect_console)
        .transpose()?;
    let (ours, theirs) = SyncSocket::pair()?;
    theirs.set_inheritable()?;
    match fork().ctx(|| "cannot fork".into())? {
        Forked::Child => {
            drop(ours);
            let e = inside(
                r,
                oom_score_adj,
                &cgroups,
                (&ns, root.as_ref()),
                console.as_ref(),
                &theirs,
                &state_fd,
                &fds,
            );
            fail("ns-oci", &e)
        }
        Forked::Parent(child) => {
            drop((theirs, fds, state_fd, listener));
            let pid = process_pid(r, child, ours)?;
            if let Some(f) = r.pid_file {
                crate::create::write_pid_file(f, pid)?;
            }
            if r.detach {
                return Ok(0);
            }
            let code = waitpid(nix::unistd::Pid::from_raw(pid), None)
                .ok()
                .and_then(exit_code_of);
            Ok(code.unwrap_or(1))
        }
    }
}

/// The process's host pid, as ns-caps reports it once it has forked the process (and exited:
/// `child` is reaped here), or why the child failed (a failure message, or EOF: it said why).
fn process_pid(r: &Request, child: nix::unistd::Pid, ours: SyncSocket) -> Result<i32> {
    let failed = |code: Option<i32>| {
        Error::setup(format!(
            "cannot exec in container {} (exit {})",
            r.id,
            code.unwrap_or(-1)
        ))
    };
    let pid = match ours.recv()? {
        Some(Msg::Pid(p)) => p,
        // The stage's own words (containerd shows the last line of our log).
        Some(Msg::Failed { message, .. }) => {
            let _ = waitpid(child, None);
            return Err(Error::setup(format!(
                "cannot exec in container {}: {message}",
                r.id
            )));
        }
        _ => return Err(failed(waitpid(child, None).ok().and_then(exit_code_of))),
    };
    drop(ours);
    // ns-caps exits once it has forked the process.
    match waitpid(child, None).ok().and_then(exit_code_of) {
        Some(0) => {}
        code => return Err(failed(code)),
    }
    // Only a child of ours may be named: the process held the sync socket until its first
    // step, and a pid from anyone else must not reach the pid file.
    let ours_only = nix::sys::wait::waitid(
        nix::sys::wait::Id::Pid(nix::unistd::Pid::from_raw(pid)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    );
    if pid == child.as_raw() || ours_only.is_err() {
        return Err(Error::setup(format!(
            "cannot exec in container {}: pid {pid} reported is not the process's",
            r.id
        )));
    }
    Ok(pid)
}

/// In the child: into the container, the pty to the console socket (with a terminal), then
/// ns-caps `--fork`, which forks the process inside the PID namespace once it has dropped
/// every privilege. Returns only on failure.
#[allow(clippy::too_many_arguments)]
fn inside(
    r: &Request,
    oom_score_adj: Option<i32>,
    cgroups: &[std::path::PathBuf],
    (ns, root): (&[(std::fs::File, nix::sched::CloneFlags)], Option<&OwnedFd>),
    console: Option<&std::os::unix::net::UnixStream>,
    sock: &SyncSocket,
    state_fd: &OwnedFd,
    fds: &StageFds,
) -> Error {
    let run = || -> Result<Option<u32>> {
        // Out of the container's sight (its PID namespace holds only our children);
        // non-dumpable all the same, until it execs ns-caps.
        nix::sys::prctl::set_dumpable(false).ctx(|| "cannot make ns-oci non-dumpable".into())?;
        if let Some(n) = oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", n.to_string()).ctx(|| {
                format!("process.oomScoreAdj={n}: cannot write /proc/self/oom_score_adj")
            })?;
        }
        attach::join(r.id, cgroups, ns)?;
        if let Some(root) = root {
            attach::enter_root(root)?; // no mount namespace: its chroot
        }
        match console {
            Some(c) => {
                let (master, n) = attach::open_pty(r.id)?;
                crate::create::send_console(c, &master)?;
                Ok(Some(n))
            }
            None => Ok(None),
        }
    };
    match run() {
        Ok(pty) => attach::exec_command(
            pty,
            &state_argv("ns-caps", state_fd.as_raw_fd(), Some(sock.raw())),
            fds,
        ),
        Err(e) => e,
    }
}
