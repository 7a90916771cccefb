//! ns-caps: become the payload's user, drop capabilities, exec. See lib.rs for the contract.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), no_main)]

use ns_caps::identity::{build_env, lookup_user, User};
use ns_caps::privileges::{drop_privileges, with_ids};
use ns_caps::process::{exec, fork_payload, new_session, take_console, wait_for_start};
use ns_caps::{Args, STAGE};
use ns_core::exec::{args_utf8, StageFds};
use ns_core::stage::{adopt_sync, run, stage_args};
use ns_core::state::{ExecPlan, Runtime, State};
use ns_core::{Context, Error, Result};

ns_core::stage_main!(stage);

/// dlmalloc, not musl's allocator: fewer system calls for a program that runs once per start
/// (see ns_core::sys::Heap).
#[cfg(not(test))]
#[global_allocator]
static HEAP: ns_core::sys::Heap = ns_core::sys::Heap;

fn stage() -> ! {
    run(STAGE, || {
        let args: Args = stage_args(STAGE, &args_utf8()?, Args::set_fds);
        let sync = adopt_sync(args.sync_fd)?;
        let (plan, runtime) = match args.state_fd {
            Some(fd) => {
                let state = State::from_state_fd(fd)?;
                let mut plan = state.exec;
                if !args.rest.is_empty() {
                    plan.argv = args.rest.clone();
                }
                (plan, state.runtime)
            }
            None => (args.to_plan()?, Runtime::default()),
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
            build_env(&plan, &runtime, &user, std::env::var("TERM").ok())
        };
        if args.fork {
            check_fork(&plan, &runtime)?;
        }
        if plan.console {
            take_console(!plan.as_pid2)?;
        }
        ns_caps::limits::apply(&plan)?;
        let listener = ns_caps::seccomp::Listener::of(&plan, &runtime);
        let mut filter = drop_privileges(&plan, &user, sync.as_ref(), listener)?;
        enter_directory(&plan, &user)?;
        let sync = if args.fork {
            fork_payload(sync, &mut filter)?;
            None
        } else {
            sync
        };
        if args.setsid {
            new_session()?;
        }
        if let Some(fd) = runtime.start_fd {
            wait_for_start(&plan, &env, fd, sync, runtime.seccomp_listener_fd)?;
            if let Some(h) = &plan.start_hooks {
                ns_core::hook::run_in_stage("startContainer", h, "created")?;
            }
        }
        exec(&plan, &user, &env, &fds, &mut filter)
    })
}

/// `--fork` is for entering a running container only.
fn check_fork(plan: &ExecPlan, runtime: &Runtime) -> Result<()> {
    if plan.as_pid2 || plan.console || runtime.start_fd.is_some() {
        return Err(Error::setup(
            "--fork: only for a process entering a running container (no --as-pid2, \
             --console or start fifo)"
                .into(),
        ));
    }
    if plan.oom_score_adjust.is_some() {
        // Outside the container's PID namespace its /proc has no /proc/self (and the
        // container could put a file there): the caller writes it before joining.
        return Err(Error::setup(
            "--fork: --oom-score-adjust must be set by the caller before it joins the \
             container"
                .into(),
        ));
    }
    Ok(())
}

/// `--chdir` (or the user's home for a login shell), then the umask, as the payload's user.
fn enter_directory(plan: &ExecPlan, user: &User) -> Result<()> {
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
    Ok(())
}
