//! `exec`: a process (config.json's process format, from `--process`) in a running
//! container. A child joins its cgroups and namespaces (ns_enter::attach, as `ns-ctl shell`
//! does) and forks the process inside its PID namespace, which execs ns-caps with the
//! container's system call filter and the process's own identity, capabilities and
//! environment. With `--detach` we return once its pid is known (its parent exits, so it is
//! reparented to the nearest subreaper: containerd's shim); else we wait and return its
//! exit code. Nothing the container's processes can reach leads to a host file of ours: we
//! run from a sealed copy of ns-oci, the process from a sealed copy of ns-caps.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::wait::waitpid;
use ns_core::exec::{state_argv, StageFds};
use ns_core::stage::{exit_code_of, fail};
use ns_core::state::{ExecPlan, State, STATE_VERSION};
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{fork, Forked};
use ns_core::{Context, Error, Result};
use ns_enter::attach;

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

pub fn exec(g: &Global, r: &Request) -> Result<i32> {
    // The process forked inside the container's PID namespace is seen by its processes: a
    // copy of a sealed memfd (we re-execute ourselves from one now, before anything else),
    // which execs a sealed copy of ns-caps (design constraint 9, runc's CVE-2019-5736).
    ns_core::exec::reexec_sealed("ns-oci")?;
    let (dir, saved) = container::load(&g.root, r.id)?;
    match saved.status(&dir) {
        Status::Running | Status::Created => {}
        st => {
            return Err(Error::setup(format!(
                "container {} is {}: cannot exec in it",
                r.id,
                st.name()
            )))
        }
    }
    let plan = plan_of(r, saved.syscall_filter.clone())?;
    let state = State {
        version: STATE_VERSION,
        machine: r.id.to_string(),
        enter: Default::default(),
        net: Default::default(),
        mount: Default::default(),
        exec: plan,
        monitor: Default::default(),
    };
    let state_fd = state.to_sealed_memfd()?;
    let mut fds = StageFds::default();
    fds.open_sealed(&["ns-caps"])?;
    let ns = attach::namespaces(saved.pid)?;
    let cgroups: Vec<_> = saved.cgroups.iter().map(|c| c.dir.clone()).collect();
    let console = r
        .console_socket
        .map(crate::create::connect_console)
        .transpose()?;
    let (ours, theirs) = SyncSocket::pair()?;
    match fork().ctx(|| "cannot fork".into())? {
        Forked::Child => {
            drop(ours);
            let e = inside(r, &cgroups, &ns, console.as_ref(), &theirs, &state_fd, &fds);
            fail("ns-oci", &e)
        }
        Forked::Parent(child) => {
            drop(theirs);
            drop(fds);
            drop(state_fd);
            // The process's host pid, or EOF when the child failed (it said why).
            let pid = match ours.recv()? {
                Some(Msg::Pid(p)) => p,
                _ => {
                    let code = waitpid(child, None).ok().and_then(exit_code_of);
                    return Err(Error::setup(format!(
                        "cannot exec in container {} (exit {})",
                        r.id,
                        code.unwrap_or(-1)
                    )));
                }
            };
            if let Some(f) = r.pid_file {
                crate::create::write_pid_file(f, pid)?;
            }
            let code = waitpid(child, None).ok().and_then(exit_code_of);
            Ok(if r.detach { 0 } else { code.unwrap_or(1) })
        }
    }
}

/// In the child: into the container, the pty to the console socket (with a terminal), then
/// the process forked inside the PID namespace. Returns only on failure.
fn inside(
    r: &Request,
    cgroups: &[std::path::PathBuf],
    ns: &[(std::fs::File, nix::sched::CloneFlags)],
    console: Option<&std::os::unix::net::UnixStream>,
    sock: &SyncSocket,
    state_fd: &OwnedFd,
    fds: &StageFds,
) -> Error {
    let run = || -> Result<std::convert::Infallible> {
        // We stay in the container while the process runs (without --detach): not
        // ptrace-able or reachable through /proc/PID/exe by its processes.
        nix::sys::prctl::set_dumpable(false).ctx(|| "cannot make ns-oci non-dumpable".into())?;
        attach::join(r.id, cgroups, ns)?;
        let pty = match console {
            Some(c) => {
                let (master, n) = attach::open_pty(r.id)?;
                crate::create::send_console(c, &master)?;
                Some(n)
            }
            None => None,
        };
        match fork().ctx(|| "cannot fork in the container".into())? {
            Forked::Child => Err(attach::exec_command(
                pty,
                &state_argv("ns-caps", state_fd.as_raw_fd(), None),
                fds,
            )),
            Forked::Parent(p) => {
                sock.send(&Msg::Pid(p.as_raw()))?;
                if r.detach {
                    std::process::exit(0);
                }
                let code = waitpid(p, None).ok().and_then(exit_code_of);
                std::process::exit(code.unwrap_or(1))
            }
        }
    };
    match run() {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
