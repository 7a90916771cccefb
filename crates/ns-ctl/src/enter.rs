//! Entering a running container (`shell`, `login`) and starting one (`start`).
//!
//! shell: a child joins the container's cgroups, then its namespaces through the leader's
//! /proc/PID/ns files (user first, so that it owns the rest; the mount namespace's root,
//! which pivot_root made the container's, becomes ours), and forks once more so that the
//! command is inside the PID namespace. That grandchild execs ns-caps (opened before any
//! setns, like every stage) with flags for the user, the leader's capability bounding set and
//! no_new_privs, so the command gets the identity, capabilities and environment (`container=`,
//! `container_uuid`, HOME, USER...) of the container's own processes. Not being PID 1's child
//! does not matter: it is reaped by us, and killed when the container's PID 1 dies.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use ns_caps::caps_spec;
use ns_core::exec::{exec_stage, StageFds};
use ns_core::registry::Machine;
use ns_core::stage::{exit_code_of, fail};
use ns_core::sys::{fork, Forked};
use ns_core::{Context, Error, Result};

const STAGE: &str = "ns-ctl";

/// The leader's namespaces that differ from ours, in the order to join them.
fn namespaces(leader: i32) -> Result<Vec<(File, CloneFlags)>> {
    use std::os::unix::fs::MetadataExt;
    let kinds = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut out = Vec::new();
    for (kind, flag) in kinds {
        let theirs = format!("/proc/{leader}/ns/{kind}");
        let f = File::open(&theirs).ctx(|| format!("cannot open {theirs}"))?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{kind}")).map(|m| m.ino());
        if f.metadata().map(|m| m.ino()).ok() != ours.ok() {
            out.push((f, flag));
        }
    }
    Ok(out)
}

/// A hexadecimal field of /proc/PID/status (`CapBnd`), or a decimal one (`NoNewPrivs`).
fn status_field(pid: i32, key: &str) -> Result<String> {
    let p = format!("/proc/{pid}/status");
    std::fs::read_to_string(&p)
        .ctx(|| format!("cannot read {p}"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| Error::setup(format!("{p} has no {key}")))
}

/// 32 hex digits as 8-4-4-4-12.
fn dashed(uuid: &str) -> String {
    if uuid.len() != 32 {
        return uuid.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &uuid[..8],
        &uuid[8..12],
        &uuid[12..16],
        &uuid[16..20],
        &uuid[20..]
    )
}

/// Run `command` (empty: the user's login shell) in `m` as `user`; returns its exit code.
pub fn shell(
    m: &Machine,
    user: Option<&str>,
    setenv: &[String],
    command: &[String],
) -> Result<i32> {
    let mut fds = StageFds::default();
    fds.open_missing(&["ns-caps"])?;
    let ns = namespaces(m.leader)?;
    let bounding = u64::from_str_radix(&status_field(m.leader, "CapBnd")?, 16)
        .map_err(|_| Error::setup(format!("cannot read {}'s capabilities", m.leader)))?;
    let nnp = status_field(m.leader, "NoNewPrivs")? == "1";
    let mut env: Vec<String> = std::env::var("TERM")
        .map(|t| vec![format!("TERM={t}")])
        .unwrap_or_default();
    env.extend(setenv.iter().cloned());
    let uuid = dashed(&m.uuid);
    let mut plan = ns_caps::exec_plan(&ns_caps::ExecOptions {
        argv: command,
        user,
        chdir: None,
        setenv: &env,
        uuid: Some(&uuid),
        root: std::path::Path::new("/"),
        capability: &[],
        drop_capability: &[],
        ambient_capability: &[],
        private_network: false,
        userns: false,
        boot: false,
        no_new_privileges: nnp,
        as_pid2: false,
        console: false,
        rlimit: &[],
        oom_score_adjust: None,
        cpu_affinity: None,
        personality: None,
    })?;
    // Exactly the container's bounding set (ns-caps computes the flags against its default).
    plan.capabilities = caps_spec::names(bounding & caps_spec::all_mask());
    let mut argv = vec!["ns-caps".to_string()];
    argv.extend(ns_caps::plan_to_flags(&plan));
    argv.push("--".into());
    argv.extend(command.iter().cloned());
    match fork().ctx(|| "cannot fork".into())? {
        Forked::Child => {
            let e = match join(m, &ns) {
                Ok(()) => match fork() {
                    Ok(Forked::Child) => {
                        let _ = nix::unistd::chdir("/");
                        exec_stage("ns-caps", &argv, &fds)
                    }
                    Ok(Forked::Parent(child)) => {
                        drop(fds);
                        let code = waitpid(child, None).ok().and_then(exit_code_of);
                        std::process::exit(code.unwrap_or(125))
                    }
                    Err(e) => Error::setup(format!("cannot fork inside {}: {}", m.name, e.desc())),
                },
                Err(e) => e,
            };
            fail(STAGE, &e)
        }
        Forked::Parent(child) => {
            drop(fds);
            // The terminal's ^C and ^\ are for the command inside, not for us.
            let _ = ns_core::sys::SignalSet::new(&[libc::SIGINT, libc::SIGQUIT]).block();
            let status = waitpid(child, None).ctx(|| "cannot wait".into())?;
            Ok(exit_code_of(status).unwrap_or(125))
        }
    }
}

/// Into the container's cgroups (from the host's view, so before its cgroup namespace), then
/// its namespaces.
fn join(m: &Machine, ns: &[(File, CloneFlags)]) -> Result<()> {
    for dir in &m.cgroups {
        // v1 through `tasks` (this process has one thread), cgroup2 through cgroup.procs.
        let f = if dir.join("tasks").exists() {
            dir.join("tasks")
        } else {
            dir.join("cgroup.procs")
        };
        std::fs::write(&f, "0").ctx(|| format!("cannot join cgroup {}", dir.display()))?;
    }
    for (f, flag) in ns {
        nix::sched::setns(f.as_fd(), *flag)
            .ctx(|| format!("cannot join {}'s {flag:?} namespace", m.name))?;
    }
    if ns.iter().any(|(_, f)| *f == CloneFlags::CLONE_NEWUSER) {
        // Our host ids mean nothing in there: become its root, or exec would drop every
        // capability (ns-caps then becomes the user asked for).
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        if !ns_core::sys::setgroups_denied() {
            setgroups(&[]).ctx(|| "cannot clear supplementary groups".into())?;
        }
        let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
        setresgid(g, g, g).ctx(|| format!("cannot become root of {}", m.name))?;
        setresuid(u, u, u).ctx(|| format!("cannot become root of {}", m.name))?;
    }
    Ok(())
}

/// Boot /var/lib/machines/NAME in the background as systemd-nspawn@NAME.service would
/// (`--boot --network-veth -U --settings=override`, here without a unit), then wait until it
/// is registered (or has failed: its stderr is shown).
pub fn start(name: &str) -> Result<()> {
    if ns_core::registry::get(name).is_ok() {
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
    let log = ns_core::paths::runtime_dir()?
        .join("machines")
        .join(format!("{name}.log"));
    let err = File::create(&log).ctx(|| format!("cannot create {}", log.display()))?;
    let mut child = Command::new(ns_run)
        .args(["--quiet", "--keep-unit", "--boot", "--network-veth", "-U"])
        .args(["--settings=override", &format!("--machine={name}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0)
        .spawn()
        .ctx(|| "cannot start ns-run".into())?;
    for _ in 0..200 {
        if ns_core::registry::get(name).is_ok() {
            let _ = std::fs::remove_file(&log);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let msg = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            return Err(Error::setup(format!(
                "{name} did not start ({status}): {}",
                msg.lines().last().unwrap_or("no message")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::setup(format!(
        "{name} did not register within 10 s (ns-run's stderr: {})",
        log.display()
    )))
}
