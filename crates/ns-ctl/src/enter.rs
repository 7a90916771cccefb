//! Entering a running container (`shell`, `login`) and starting one (`start`).
//!
//! shell: a child joins the container's cgroups, then its namespaces through the leader's
//! /proc/PID/ns files (user first, so that it owns the rest; the mount namespace's root,
//! which pivot_root made the container's, becomes ours). It stays outside the container's
//! PID namespace (setns affects only children), where no process of the container can see
//! it, and execs ns-caps (opened before any setns) `--fork` with flags for the user, the
//! leader's capability bounding set, its system call filter and no_new_privs: ns-caps drops
//! every privilege there, then forks the command's process, the first one inside the PID
//! namespace, as our child (CLONE_PARENT), so the command gets the identity, capabilities
//! and environment (`container=`, `container_uuid`, HOME, USER...) of the container's own
//! processes and is never seen holding more (container root holds CAP_SYS_PTRACE over the
//! host's user namespace without -U: it could attach to anything it sees). Not being PID
//! 1's child does not matter: it is reaped by us, and killed when the container's PID 1
//! dies.
//!
//! The command's process, which the container's processes see (/proc/PID/exe,
//! /proc/PID/fd), is a copy of a sealed copy of ns-caps holding stdio only, until it execs
//! the command; nothing there leads to a host file of ours (design constraint 9). (ns-ctl
//! also re-executes itself from a sealed memfd first.)

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;
use nix::sys::signalfd::SignalFd;
use ns_caps::caps_spec;
use ns_core::console::Console;
use ns_core::exec::{state_argv, StageFds};
use ns_core::stage::fail;
use ns_core::state::{Console as Mode, State};
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{fork, Forked, SignalSet};
use ns_core::{Context, Error, Result};
use ns_host::attach;
use ns_host::registry::Machine;
use std::os::fd::AsRawFd;

const STAGE: &str = "ns-ctl";

/// Run `command` (empty: the user's login shell) in `m` as `user`; returns its exit code.
pub fn shell(
    m: &Machine,
    user: Option<&str>,
    setenv: &[String],
    command: &[String],
) -> Result<i32> {
    // No host file of ours is in reach of the container's processes: ns-caps is a sealed
    // copy, and so are we (re-executed now).
    ns_core::exec::reexec_sealed(STAGE)?;
    let m = &wait_started(m)?;
    let mut fds = StageFds::default();
    fds.open_sealed(&["ns-caps"])?;
    let ns = namespaces_of(m)?;
    let plan = exec_plan_of(m, user, setenv, command)?;
    // ns-caps reads its section of the state, as in the chain (no flags round trip).
    let state = State::exec_only(&m.name, plan);
    let state_fd = state.to_sealed_memfd()?;
    let argv = state_argv("ns-caps", state_fd.as_raw_fd(), None);
    // On a terminal the command gets a pty of the container's own devpts, relayed here, so
    // that it cannot reach our terminal (TIOCSTI); else our stdio as they are.
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (ours, theirs) = SyncSocket::pair()?;
    // Blocked before the fork (no SIGCHLD or SIGWINCH lost; the terminal's ^C and ^\ are for
    // the command, not for us); the command unblocks them.
    let blocked = [libc::SIGCHLD, libc::SIGWINCH, libc::SIGINT, libc::SIGQUIT];
    SignalSet::new(&blocked)
        .block()
        .ctx(|| "cannot block signals".into())?;
    let signals = SignalSet::new(&blocked[..2])
        .signalfd()
        .ctx(|| "cannot create signalfd".into())?;
    match fork().ctx(|| "cannot fork".into())? {
        Forked::Child => {
            drop(ours);
            let e = match inside(m, &ns, tty, &theirs) {
                Ok(pty) => attach::exec_command(pty, &argv, &fds),
                Err(e) => e,
            };
            fail(STAGE, &e)
        }
        Forked::Parent(child) => {
            drop(fds);
            drop(state_fd);
            drop(theirs);
            let mut console = if tty {
                match ours.recv_fd() {
                    Ok((_, master)) => Some(Console::start(master, Mode::Interactive)),
                    // The child failed before (and said why): its status tells.
                    Err(_) => None,
                }
            } else {
                None
            };
            relay(child, console.as_mut(), &signals)
        }
    }
}

/// The namespaces of `m`'s PID 1 to join: those it started in, even if it has left some
/// since (`exec unshare -U`).
fn namespaces_of(m: &Machine) -> Result<Vec<(File, CloneFlags)>> {
    if m.namespaces.is_empty() {
        attach::namespaces(m.leader) // an entry of an older monitor
    } else {
        let (ns, left) = attach::recorded_namespaces(&m.name, m.leader, m.monitor, &m.namespaces)?;
        if !left.is_empty() {
            eprintln!(
                "{STAGE}: {}'s PID 1 has left the {} namespace(s) it started in: entering those",
                m.name,
                left.join(", ")
            );
        }
        Ok(ns)
    }
}

/// ns-caps' plan for `command` in `m`: the user, the container's bounding set, system call
/// filter and no_new_privs, TERM and `setenv`.
fn exec_plan_of(
    m: &Machine,
    user: Option<&str>,
    setenv: &[String],
    command: &[String],
) -> Result<ns_core::state::ExecPlan> {
    let [cap_bnd, no_new_privs] = attach::status_fields(m.leader, ["CapBnd", "NoNewPrivs"])?;
    let bounding = u64::from_str_radix(&cap_bnd, 16)
        .map_err(|_| Error::setup(format!("cannot read {}'s capabilities", m.leader)))?;
    let nnp = no_new_privs == "1";
    let mut env: Vec<String> = std::env::var("TERM")
        .map(|t| vec![format!("TERM={t}")])
        .unwrap_or_default();
    env.extend(setenv.iter().cloned());
    let args = ns_caps::ExecArgs {
        user: user.map(str::to_string),
        setenv: env,
        uuid: Some(m.uuid.clone()), // 32 hex digits; ns-caps formats them
        no_new_privileges: nnp.then(|| "yes".into()),
        ..Default::default()
    };
    let mut plan = args.plan(&ns_caps::ExecContext {
        argv: command.to_vec(),
        ..args.facts(std::path::Path::new("/"))
    })?;
    // Exactly the container's bounding set and system call filter (the registry's, as
    // planned: no round trip through --system-call-filter= values, which would lose an OCI
    // profile's base, default action and argument rules).
    plan.capabilities = caps_spec::names(bounding & caps_spec::all_mask());
    plan.syscall_filter = m.syscall_filter.clone();
    Ok(plan)
}

/// `m` once its PID 1 has left our stages for the payload (at most 10 s): until then the
/// container's root is not built, and what we ran in there would see our stages.
fn wait_started(m: &Machine) -> Result<Machine> {
    let mut m = m.clone();
    for _ in 0..1000 {
        if !m.starting {
            return Ok(m);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        m = ns_host::registry::get(&m.name)?;
    }
    Err(Error::setup(format!(
        "machine {} is still starting (its payload did not start within 10 s)",
        m.name
    )))
}

/// Our children: the entering process (`child`), which exits 0 once ns-caps has forked the
/// command's process as our child too (CLONE_PARENT), or with its failure's code; and that
/// process. Reaps whichever ends; returns the code to exit with once it is known.
struct Children {
    child: nix::unistd::Pid,
    entered: Option<i32>,
    command: Option<i32>,
}

impl Children {
    /// Reap what has ended (ns_core's one reap loop); the final exit code once known.
    fn reap(&mut self) -> Result<Option<i32>> {
        if let Some(code) = ns_core::reap::exited(|st, code| self.ended(st.pid(), code))? {
            return Ok(Some(code));
        }
        // No child left and no code: the command's process is not ours (cannot be: it is
        // forked only by an entering process that exits 0).
        if !ns_core::reap::any_child() {
            return Ok(Some(self.entered.unwrap_or(ns_core::error::EXIT_SETUP)));
        }
        Ok(None)
    }

    fn ended(&mut self, pid: Option<nix::unistd::Pid>, code: i32) -> Option<i32> {
        if pid == Some(self.child) {
            self.entered = Some(code);
        } else {
            self.command = Some(code);
        }
        match (self.entered, self.command) {
            (Some(0), command) => command,
            (failed, _) => failed,
        }
    }
}

/// Wait for the command, relaying the pty meanwhile; returns its exit code.
fn relay(
    child: nix::unistd::Pid,
    mut console: Option<&mut Console>,
    signals: &SignalFd,
) -> Result<i32> {
    let mut kids = Children {
        child,
        entered: None,
        command: None,
    };
    loop {
        if let Some(code) = kids.reap()? {
            if let Some(c) = console {
                c.finish();
            }
            return Ok(code);
        }
        wait_and_relay(console.as_deref_mut(), signals);
    }
}

/// Wait for a signal (SIGCHLD, SIGWINCH), relaying the pty meanwhile when there is one.
fn wait_and_relay(console: Option<&mut Console>, signals: &SignalFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let timeout = console
        .as_ref()
        .map_or(PollTimeout::NONE, |c| c.poll_timeout());
    let ready: Vec<bool> = {
        let fds = console.as_ref().map(|c| c.fds()).unwrap_or_default();
        let mut pfds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        pfds.extend(fds.iter().map(|f| PollFd::new(*f, PollFlags::POLLIN)));
        let _ = poll(&mut pfds, timeout);
        let hit = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        let c = console.as_ref();
        fds.iter()
            .zip(&pfds[1..])
            .filter(|(_, p)| hit(p))
            .map(|(f, _)| c.is_some_and(|c| c.is_master(f.as_raw_fd())))
            .collect()
    };
    let Some(c) = console else {
        while let Ok(Some(_)) = signals.read_signal() {}
        return;
    };
    for master in ready {
        if master {
            c.on_master();
        } else {
            let _ = c.on_stdin();
        }
    }
    c.tick();
    while let Ok(Some(info)) = signals.read_signal() {
        if info.ssi_signo == libc::SIGWINCH as u32 {
            c.sync_window_size();
        }
    }
}

/// In the child: into the container; on a terminal, open a pty in its devpts and hand the
/// master to the parent. Returns the pty's slave number.
fn inside(
    m: &Machine,
    ns: &[(File, CloneFlags)],
    tty: bool,
    sock: &SyncSocket,
) -> Result<Option<u32>> {
    // Out of the container's sight (its PID namespace holds only our children); non-dumpable
    // all the same, until it execs ns-caps.
    nix::sys::prctl::set_dumpable(false).ctx(|| "cannot make ns-ctl non-dumpable".into())?;
    attach::join(&m.name, &m.cgroups, ns)?;
    if !tty {
        return Ok(None);
    }
    let (master, n) = attach::open_pty(&m.name)?;
    sock.send_fd(&Msg::Console, master.as_fd())?;
    Ok(Some(n))
}

/// Boot /var/lib/machines/NAME in the background as systemd-nspawn@NAME.service would
/// (`--boot --network-veth -U --settings=override`, here without a unit), then wait until it
/// is registered (or has failed: its stderr is shown).
pub fn start(name: &str) -> Result<()> {
    if ns_host::registry::get(name).is_ok() {
        return Err(Error::setup(format!("machine {name} is already running")));
    }
    if ns_core::paths::find_image(name).is_none() {
        return Err(Error::setup(format!(
            "no image {name} in {}",
            ns_core::paths::IMAGE_DIRS.join(", ")
        )));
    }
    let ns_run = ns_core::exec::locate("ns-run")
        .ok_or_else(|| Error::setup("cannot find ns-run beside ns-ctl or on PATH".into()))?;
    // The machine's console log (`ns-ctl log`), new at every start: a new file of ours (the
    // last run's is replaced; a symlink is never followed).
    let log = crate::log::path_for(name)?;
    let _ = std::fs::remove_file(ns_core::logfile::older(&log));
    let _ = std::fs::remove_file(&log);
    let err = {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&log)
            .ctx(|| format!("cannot create {}", log.display()))?
    };
    let out = err
        .try_clone()
        .ctx(|| "cannot duplicate the log's fd".into())?;
    let mut child = Command::new(ns_run)
        .args(["--quiet", "--keep-unit", "--boot", "--network-veth", "-U"])
        .args(["--settings=override", &format!("--machine={name}")])
        .arg(format!("--log-file={}", log.display()))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .ctx(|| "cannot start ns-run".into())?;
    for _ in 0..200 {
        if ns_host::registry::get(name).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            // (The log stays, for ns-ctl log.)
            let msg = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(Error::setup(format!(
                "{name} did not start ({status}): {}",
                msg.lines().last().unwrap_or("no message")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::setup(format!(
        "{name} did not register within 10 s (its log: {})",
        log.display()
    )))
}
