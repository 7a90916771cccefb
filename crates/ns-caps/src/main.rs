//! ns-caps: become the payload's user, drop capabilities, exec. See lib.rs for the contract.
#![forbid(unsafe_code)]

use std::convert::Infallible;

use caps::CapSet;
use ns_caps::caps_spec::{mask_of_names, names, to_set, upper};
use ns_caps::identity::{build_env, login_shells, lookup_user, User};
use ns_caps::Args;
use ns_core::exec::{args_utf8, exec_last_stage, exec_payload, exec_program, StageFds};
use ns_core::stage::{adopt_sync, debug, parse_args, run};
use ns_core::state::{ExecPlan, State};
use ns_core::sync::SyncSocket;
use ns_core::{Context, Error, Result};

const STAGE: &str = "ns-caps";

fn main() {
    run(STAGE, || {
        let args: Args = parse_args(STAGE, &args_utf8()?);
        let sync = adopt_sync(args.sync_fd)?;
        let plan = match args.state_fd {
            Some(fd) => {
                let mut plan = State::from_state_fd(fd)?.exec;
                if !args.rest.is_empty() {
                    plan.argv = args.rest.clone();
                }
                plan
            }
            None => args.to_plan()?,
        };
        let fds = StageFds::from_env()?;
        if plan.as_pid2 && fds.get("ns-init").is_none() {
            return Err(Error::setup(
                "--as-pid2: ns-init was not opened before pivot_root (start the chain with ns-enter or ns-mount)".into(),
            ));
        }
        let user = match &plan.ids {
            Some(ids) => {
                ids.check()?;
                with_ids(lookup_user(Some(&ids.uid.to_string()))?, ids)
            }
            None => lookup_user(plan.user.as_deref())?,
        };
        let env = if plan.exact_env {
            ns_caps::identity::exact_env(&plan.setenv, &user)
        } else {
            build_env(&plan, &user, std::env::var("TERM").ok())
        };
        if args.fork && (plan.as_pid2 || plan.console || plan.start_fd.is_some()) {
            return Err(Error::setup(
                "--fork: only for a process entering a running container (no --as-pid2, \
                 --console or start fifo)"
                    .into(),
            ));
        }
        if args.fork && plan.oom_score_adjust.is_some() {
            // Outside the container's PID namespace its /proc has no /proc/self (and the
            // container could put a file there): the caller writes it before joining.
            return Err(Error::setup(
                "--fork: --oom-score-adjust must be set by the caller before it joins the \
                 container"
                    .into(),
            ));
        }
        if plan.console {
            take_console(!plan.as_pid2)?;
        }
        ns_caps::limits::apply(&plan)?;
        drop_privileges(&plan, &user, sync.as_ref())?;
        let sync = if args.fork {
            fork_payload(sync)?;
            None
        } else {
            sync
        };
        if args.setsid {
            new_session()?;
        }
        match &plan.chdir {
            Some(d) => nix::unistd::chdir(d.as_str()).ctx(|| format!("--chdir={d}"))?,
            None if plan.argv.is_empty() => {
                let _ = nix::unistd::chdir(user.home.as_deref().unwrap_or("/root"));
            }
            None => {}
        }
        if let Some(m) = plan.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
        }
        if let Some(fd) = plan.start_fd {
            wait_for_start(&plan, &env, fd, sync)?;
            if let (Some(f), true) = (&plan.syscall_filter, plan.no_new_privileges) {
                // As runc: with no_new_privs the filter comes last, so that it need not allow
                // what waiting for start takes.
                ns_caps::seccomp::install(0, f)?;
            }
        }
        exec(&plan, &user, &env, &fds)
    })
}

/// Bounding set, identity, then the capability sets, in the only order the kernel allows:
/// dropping from the bounding set and changing ids both need capabilities we give up last.
fn drop_privileges(plan: &ExecPlan, user: &User, sync: Option<&SyncSocket>) -> Result<()> {
    let caps_err = |what: &str| {
        let what = what.to_string();
        move |e: caps::errors::CapsError| Error::setup(format!("cannot {what}: {e}"))
    };
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
    let bounding = bounding.iter().fold(0u64, |m, c| m | c.bitmask());
    // nspawn: capabilities missing from the host's bounding set are silently not retained.
    let retain = mask_of_names(&plan.capabilities) & bounding;
    let ambient = mask_of_names(&plan.ambient);
    if ambient & !retain != 0 {
        return Err(Error::invalid(
            "--ambient-capability",
            &upper(&names(ambient & !retain)),
            "not in the bounding set",
        ));
    }
    debug(STAGE, || {
        format!("retain {retain:#x} ambient {ambient:#x} uid {}", user.uid)
    });
    // Supplementary groups before the filter, so that only the user namespace can refuse
    // them: a rootless one with one mapped id denies setgroups, and there is nothing to
    // clear then (never judged from /proc/self: under --fork that is the container's /proc).
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    if groups.is_empty() {
        ns_core::sys::clear_groups().ctx(|| "cannot clear supplementary groups".into())?;
    } else {
        nix::unistd::setgroups(&groups)
            .ctx(|| format!("cannot set supplementary groups {:?}", user.groups))?;
    }
    // The filter first, while we hold CAP_SYS_ADMIN (it needs that or no_new_privs); what
    // follows here uses only calls it allows (@setuid, capset, prctl of @process).
    if let Some(f) = plan
        .syscall_filter
        .as_ref()
        .filter(|_| plan.start_fd.is_none() || !plan.no_new_privileges)
    {
        ns_caps::seccomp::install(retain, f)?;
    }
    for c in caps::all() {
        if bounding & c.bitmask() != 0 && retain & c.bitmask() == 0 {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(caps_err("drop from the bounding set"))?;
        }
    }

    let pdeath =
        nix::sys::prctl::get_pdeathsig().ctx(|| "cannot read the parent-death signal".into())?;
    // The sets the payload ends with: OCI's as given, else nspawn's rule.
    let (effective, permitted, inheritable) = match &plan.cap_sets {
        Some(c) => (
            mask_of_names(&c.effective),
            mask_of_names(&c.permitted),
            mask_of_names(&c.inheritable),
        ),
        None => {
            let keep = if user.uid == 0 { retain } else { ambient };
            (keep, keep, keep)
        }
    };
    if user.uid != 0 && (ambient != 0 || permitted != 0) {
        nix::sys::prctl::set_keepcaps(true).ctx(|| "cannot keep capabilities".into())?;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("cannot set gid {}", user.gid))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("cannot set uid {}", user.uid))?;

    caps::set(None, CapSet::Inheritable, &to_set(inheritable))
        .map_err(caps_err("set inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &to_set(effective))
        .map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &to_set(permitted))
        .map_err(caps_err("set permitted capabilities"))?;
    for c in to_set(ambient) {
        caps::raise(None, CapSet::Ambient, c).map_err(caps_err("raise ambient capabilities"))?;
    }
    if user.uid != 0 {
        nix::sys::prctl::set_keepcaps(false).ctx(|| "cannot reset keep-capabilities".into())?;
    }
    // Any change of uid or gid cleared the parent-death signal: set it again, then make sure
    // the monitor did not die in between (it holds the other end of the sync socket).
    if let Some(sig) = pdeath {
        nix::sys::prctl::set_pdeathsig(sig).ctx(|| "cannot set the parent-death signal".into())?;
        if let Some(s) = sync {
            let mut p = [nix::poll::PollFd::new(
                s.fd(),
                nix::poll::PollFlags::empty(),
            )];
            let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO);
            if p[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
            {
                return Err(Error::setup("monitor went away".into()));
            }
        }
    }
    if plan.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().ctx(|| "cannot set no_new_privs".into())?;
    }
    Ok(())
}

/// `--fork` (see Args): returns in the child, which holds stdio only; the parent reports
/// the child's pid and exits 0.
fn fork_payload(sync: Option<SyncSocket>) -> Result<()> {
    use ns_core::sys::{clone_parent, close_from_except, Forked};
    let keep: Vec<i32> = sync
        .iter()
        .map(SyncSocket::raw)
        .chain(ns_core::stage::report_fd())
        .collect();
    close_from_except(3, &keep).ctx(|| "cannot close inherited fds".into())?;
    match clone_parent().ctx(|| "cannot fork the program's process".into())? {
        Forked::Child => {
            drop(sync);
            ns_core::stage::stop_reporting();
            Ok(())
        }
        Forked::Parent(child) => {
            if let Some(s) = &sync {
                s.send(&ns_core::sync::Msg::Pid(child.as_raw()))?;
            }
            std::process::exit(0)
        }
    }
}

/// `--setsid`: a new session; stdin, if a terminal, its controlling terminal.
fn new_session() -> Result<()> {
    nix::unistd::setsid().ctx(|| "cannot start a session".into())?;
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        ns_core::sys::set_controlling_tty(std::os::fd::AsFd::as_fd(&stdin))
            .ctx(|| "cannot take the terminal on stdin as controlling terminal".into())?;
    }
    Ok(())
}

/// OCI `process.user`: the numbers as given; name, home and the groups /etc/group gives the
/// name from the image when it has them (as runc), then `additionalGids`.
fn with_ids(mut user: User, ids: &ns_core::state::Ids) -> User {
    user.uid = ids.uid;
    user.gid = ids.gid;
    user.groups.extend(&ids.groups);
    user.groups.sort_unstable();
    user.groups.dedup();
    user
}

/// OCI create/start: everything is set up. The payload must exist (checked as its user, from
/// its directory: a missing one fails `create`, as with runc). Then detach from the runtime's
/// `create` (it returns on SYNC-7 and the socket's EOF; its exit must not kill us), keep only
/// stdio and the fifo, become non-dumpable (nothing in the container may reach our fds or
/// memory while we wait; exec makes the payload dumpable again), and block until `start`
/// opens the fifo for reading. The fifo was opened O_PATH on the host; it is reopened for
/// writing through our own /proc (the host path is out of reach after pivot_root).
fn wait_for_start(
    plan: &ExecPlan,
    env: &[String],
    fd: i32,
    sync: Option<SyncSocket>,
) -> Result<()> {
    if let Some(prog) = plan.argv.first() {
        ns_core::exec::check_program(prog, env)?;
    }
    nix::sys::prctl::set_pdeathsig(None).ctx(|| "cannot clear the parent-death signal".into())?;
    if let Some(s) = &sync {
        s.send(&ns_core::sync::Msg::Waiting)?; // SYNC-7
    }
    // From here on a failure is ours alone: the runtime has returned.
    ns_core::stage::stop_reporting();
    drop(sync);
    ns_core::sys::close_from_except(3, &[fd]).ctx(|| "cannot close inherited fds".into())?;
    nix::sys::prctl::set_dumpable(false).ctx(|| "cannot make ns-caps non-dumpable".into())?;
    let path = format!("/proc/self/fd/{fd}");
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .ctx(|| "cannot open the start fifo".into())?;
    nix::unistd::close(fd).ctx(|| "cannot close the start fifo's path".into())?;
    std::io::Write::write_all(&mut &fifo, b"0").ctx(|| "cannot write the start fifo".into())
}

/// Exec the payload, its login shell, or ns-init in front of either.
fn exec(plan: &ExecPlan, user: &User, env: &[String], fds: &StageFds) -> Result<Infallible> {
    ns_core::stage::fault("ns-caps:before-exec");
    if plan.as_pid2 {
        let mut argv = vec!["ns-init".to_string()];
        if plan.argv.is_empty() {
            let (path, argv0) = login_shells(user)
                .into_iter()
                .find(|(p, _)| {
                    nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
                })
                .ok_or_else(|| Error {
                    code: ns_core::error::EXIT_NOT_FOUND,
                    msg: "no login shell found".into(),
                })?;
            argv.extend([format!("--argv0={argv0}"), "--".into(), path]);
        } else {
            argv.push("--".into());
            argv.extend(plan.argv.iter().cloned());
        }
        return Err(exec_last_stage("ns-init", &argv, fds, env));
    }
    if plan.boot {
        // The image's init, with the command line's words as its arguments.
        for init in ns_caps::identity::INITS {
            let mut argv = vec![init.to_string()];
            argv.extend(plan.argv.iter().cloned());
            let e = exec_program(init, &argv, env);
            if e.code != ns_core::error::EXIT_NOT_FOUND {
                return Err(e);
            }
        }
        return Err(Error {
            code: ns_core::error::EXIT_NOT_FOUND,
            msg: format!(
                "--boot: cannot execute {}: No such file or directory",
                ns_caps::identity::INITS.join(", ")
            ),
        });
    }
    if !plan.argv.is_empty() {
        return Err(exec_payload(&plan.argv, env));
    }
    let mut last = None;
    for (path, argv0) in login_shells(user) {
        let e = exec_program(&path, &[argv0], env);
        if e.code != ns_core::error::EXIT_NOT_FOUND {
            return Err(e);
        }
        last = Some(e);
    }
    Err(last.expect("at least one shell was tried"))
}

/// /dev/console (the container's pty) becomes stdin, stdout, stderr and the controlling
/// terminal of a new session: Ctrl-C and Ctrl-Z then reach the payload's foreground job.
/// (Under ns-init, its payload does this in its own session.)
fn take_console(controlling: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tty = nix::fcntl::open(
        "/dev/console",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| "cannot open /dev/console".into())?;
    if controlling {
        nix::unistd::setsid().ctx(|| "cannot start a session".into())?;
        ns_core::sys::set_controlling_tty(std::os::fd::AsFd::as_fd(&tty))
            .ctx(|| "cannot make /dev/console the controlling terminal".into())?;
    }
    for target in 0..3 {
        ns_core::sys::dup_to(tty.as_raw_fd(), target)
            .ctx(|| format!("cannot make /dev/console fd {target}"))?;
    }
    Ok(())
}
