//! ns-ctl: machinectl without systemd. It reads the registry that every ns-run monitor writes
//! (`/run/ns-run/machines`, see `ns_host::registry`) and acts on the containers there: list
//! and show them, run a shell or command inside one (all its namespaces, root, cgroups,
//! capabilities and environment; booted or not), power off, reboot, terminate or signal them,
//! and start an image of /var/lib/machines in the background as `machinectl start` does.
//! It also manages the images themselves, as machinectl does through machined and importd
//! (list, clone, rename, read-only, remove, import, export, pull), through ns-ctl-images.
//! Errors are one line on stderr with exit code 125, as in the rest of the toolkit; `shell`
//! exits with the status of what it ran.
#![forbid(unsafe_code)]

mod enter;
#[path = "images/cli.rs"]
mod image_cli;
mod log;
mod show;

use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ns_core::exec::args_utf8;
use ns_core::stage::{parse_args, run};
use ns_core::{Error, Result};
use ns_host::registry::{self, Machine};

const STAGE: &str = "ns-ctl";

// Args and Verb: clap's definitions only, in a file of their own that ns-doc includes too
// (man pages and completions are generated from them).
include!("cli.rs");

fn main() {
    run(STAGE, || {
        let args: Args = parse_args(STAGE, &args_utf8()?);
        let json = ns_core::output_is_json(&args.output)?;
        let code = match args.verb.unwrap_or(Verb::List) {
            Verb::List => show::list(json)?,
            Verb::Status { names } => {
                needs_names(&names)?;
                for n in &names {
                    show::status(&registry::get(n)?, json)?;
                }
                0
            }
            Verb::Shell {
                name,
                user,
                uid,
                setenv,
                command,
            } => {
                let (user_at, name) = match name.split_once('@') {
                    Some((u, n)) => (Some(u.to_string()), n.to_string()),
                    None => (None, name),
                };
                let user = uid.or(user).or(user_at).filter(|u| !u.is_empty());
                let m = registry::get(&name)?;
                enter::shell(&m, user.as_deref(), &setenv, &command)?
            }
            Verb::Login { name } => {
                let m = registry::get(&name)?;
                enter::shell(&m, None, &[], &["/bin/login".to_string()])?
            }
            Verb::Poweroff { names } | Verb::Stop { names } => each(&names, poweroff)?,
            Verb::Reboot { names } => each(&names, reboot)?,
            Verb::Terminate { names } => each(&names, |m| signal_leader(m, libc::SIGKILL))?,
            Verb::Kill {
                names,
                kill_whom,
                signal,
            } => {
                let sig = ns_core::parse_signal("--signal", &signal)?;
                let all = match kill_whom.as_str() {
                    "all" => true,
                    "leader" => false,
                    w => return Err(Error::invalid("--kill-whom", w, "not leader or all")),
                };
                each(&names, |m| {
                    if all {
                        signal_all(m, sig)
                    } else {
                        signal_leader(m, sig)
                    }
                })?
            }
            Verb::Start { names } => {
                needs_names(&names)?;
                for n in &names {
                    enter::start(n)?;
                }
                0
            }
            Verb::Log { name, follow } => log::show(&name, follow)?,
            Verb::Image(_) => return Err(exec_images()),
        };
        std::process::exit(code)
    })
}

/// The image verbs run in ns-ctl-images (beside us, else in PATH), with our arguments.
fn exec_images() -> Error {
    use std::os::unix::process::CommandExt;
    let Some(helper) = ns_core::exec::locate("ns-ctl-images") else {
        return Error::setup("cannot find ns-ctl-images beside ns-ctl or in PATH".into());
    };
    let args = ns_core::sys::args_os();
    let e = std::process::Command::new(&helper)
        .args(args.iter().skip(1))
        .exec();
    Error::setup(format!("cannot execute {}: {e}", helper.display()))
}

fn needs_names(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Err(Error::setup("name a machine".into()));
    }
    Ok(())
}

/// Look every name up first (an unknown one fails before anything is done), then act.
fn each(names: &[String], f: impl Fn(&Machine) -> Result<()>) -> Result<i32> {
    needs_names(names)?;
    let machines = names
        .iter()
        .map(|n| registry::get(n))
        .collect::<Result<Vec<_>>>()?;
    for m in &machines {
        f(m)?;
    }
    Ok(0)
}

fn signal_leader(m: &Machine, sig: i32) -> Result<()> {
    ns_core::sys::kill_raw(Pid::from_raw(m.leader), sig).map_err(|e| {
        Error::setup(format!(
            "cannot signal {}'s leader {}: {}",
            m.name,
            m.leader,
            e.desc()
        ))
    })
}

/// Every process of the container: those in its cgroup (the pids of any hierarchy list them
/// all), else the leader.
fn signal_all(m: &Machine, sig: i32) -> Result<()> {
    let pids = show::processes(m);
    if pids.is_empty() {
        return signal_leader(m, sig);
    }
    for p in pids {
        let _ = ns_core::sys::kill_raw(Pid::from_raw(p), sig);
    }
    Ok(())
}

/// A booted container's init powers off on SIGRTMIN+4 (systemd's convention, which
/// machinectl uses); ns-run exits 0 then. Other containers are stopped by their monitor, as
/// on SIGTERM (their `--kill-signal`, else SIGKILL: exit 137).
fn poweroff(m: &Machine) -> Result<()> {
    if m.boot {
        signal_leader(m, ns_core::SIGRTMIN + 4)
    } else {
        kill(Pid::from_raw(m.monitor), Signal::SIGTERM).map_err(|e| {
            Error::setup(format!(
                "cannot stop {} (monitor {}): {}",
                m.name,
                m.monitor,
                e.desc()
            ))
        })
    }
}

/// A booted container's init reboots on SIGINT (ns-run exits 133); others cannot reboot.
fn reboot(m: &Machine) -> Result<()> {
    if !m.boot {
        return Err(Error::setup(format!(
            "{} was not booted (-b): it has no init to reboot it",
            m.name
        )));
    }
    signal_leader(m, libc::SIGINT)
}
