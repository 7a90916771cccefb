//! ns-oci: an OCI runtime with runc's command line, composed from the ns-* stages, for
//! containerd (and so Kubernetes) to drive.
//!
//! `create` runs the chain ns-enter → ns-mount → ns-caps as ns-run does, from the state
//! ns-run's OCI reader builds out of config.json, and returns when ns-caps waits on the start
//! fifo (create.rs). `start` opens that fifo. The other verbs read `ROOT/ID/state.json` and
//! act on the container's process and cgroups (container.rs); `exec` joins a running
//! container (exec.rs). Errors are one line on stderr and, with `--log`, a line of the log
//! (JSON with `--log-format json`, which containerd's shim reads); the exit code is then 1.
#![forbid(unsafe_code)]

mod container;
mod create;
mod exec;
mod hooks;
mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use ns_core::{Context, Error, Result};

use container::Status;

// Cli, Cmd and Handles: clap's definitions only, in a file of their own that ns-doc includes
// too (man pages and completions are generated from them).
include!("cli.rs");

impl Handles {
    /// The pid file and console socket, once no extra fd is asked for.
    fn checked(&self) -> Result<(Option<&Path>, Option<&Path>)> {
        if self.preserve_fds > 0 {
            return Err(Error::invalid(
                "--preserve-fds",
                &self.preserve_fds.to_string(),
                "passing extra fds is not supported",
            ));
        }
        Ok((self.pid_file.as_deref(), self.console_socket.as_deref()))
    }
}

/// The global options every verb sees.
pub struct Global {
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    rootless: Option<String>,
}

impl Global {
    /// `--rootless` true, or auto (the default) without root.
    pub fn rootless(&self) -> bool {
        match self.rootless.as_deref() {
            Some("true") => true,
            Some("false") => false,
            _ => !nix::unistd::geteuid().is_root(),
        }
    }
}

fn main() {
    ns_core::stage::quiet_on_closed_pipe();
    let argv = match ns_core::exec::args_utf8() {
        Ok(a) => a,
        Err(e) => {
            ns_core::errln!("ns-oci: {}", e.msg);
            std::process::exit(1)
        }
    };
    let cli: Cli = ns_core::stage::parse_args("ns-oci", &argv);
    if cli.debug {
        std::env::set_var("NS_DEBUG", "1");
    }
    let g = Global {
        root: cli.root.clone().unwrap_or_else(|| {
            default_root(
                nix::unistd::geteuid().is_root(),
                std::env::var_os("XDG_RUNTIME_DIR"),
            )
        }),
        systemd_cgroup: cli.systemd_cgroup,
        rootless: cli.rootless.clone(),
    };
    match run(&g, &cli.cmd) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            ns_core::errln!("ns-oci: {}", e.msg);
            if let Some(log) = &cli.log {
                log_error(log, &cli.log_format, &e.msg);
            }
            std::process::exit(1)
        }
    }
}

/// Where the state lives without `--root`, as runc decides it: a caller without root has
/// no /run of its own, so its $XDG_RUNTIME_DIR (when set) holds an `ns-oci` directory.
fn default_root(root: bool, xdg_runtime_dir: Option<std::ffi::OsString>) -> PathBuf {
    match xdg_runtime_dir.filter(|d| !root && !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("ns-oci"),
        None => PathBuf::from("/run/ns-oci"),
    }
}

/// One line in the log: `{"level":"error","msg":…,"time":…}` in JSON, else plain text.
fn log_error(path: &Path, format: &str, msg: &str) {
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": msg, "time": container::now_rfc3339()})
            .to_string()
    } else {
        format!("{} error: {msg}", container::now_rfc3339())
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn run(g: &Global, cmd: &Cmd) -> Result<i32> {
    match cmd {
        Cmd::Create { bundle, io, id, .. } => {
            let (pid_file, console_socket) = io.checked()?;
            let r = create::Request {
                id,
                bundle,
                pid_file,
                console_socket,
            };
            create::create(g, &r).map(|()| 0)
        }
        Cmd::Run {
            bundle,
            pid_file,
            id,
        } => run_foreground(g, id, bundle, pid_file.as_deref()),
        Cmd::Start { id } => start(g, id).map(|()| 0),
        Cmd::State { id } => state(g, id).map(|()| 0),
        Cmd::Kill { all, id, signal } => kill(g, id, *all, signal.as_deref()).map(|()| 0),
        Cmd::Delete { force, id } => delete(g, id, *force).map(|()| 0),
        Cmd::Exec {
            process,
            detach,
            io,
            id,
        } => {
            let (pid_file, console_socket) = io.checked()?;
            let r = exec::Request {
                id,
                process,
                detach: *detach,
                pid_file,
                console_socket,
            };
            exec::exec(g, &r)
        }
        Cmd::Ps { format, id } => ps(g, id, format).map(|()| 0),
        Cmd::Pause { id } => set_frozen(g, id, true).map(|()| 0),
        Cmd::Resume { id } => set_frozen(g, id, false).map(|()| 0),
        Cmd::Update { resources, id } => update(g, id, resources).map(|()| 0),
        Cmd::Features => {
            ns_core::outln!(
                "{}",
                serde_json::to_string_pretty(&features()).expect("json")
            );
            Ok(0)
        }
        Cmd::Spec { bundle, rootless } => spec::write(bundle, *rootless).map(|()| 0),
    }
}

/// `state ID`: the OCI state document (pid 0 once stopped).
fn state(g: &Global, id: &str) -> Result<()> {
    let (dir, s) = container::load(&g.root, id)?;
    let st = s.status(&dir);
    let mut v = s.state_json(st.name());
    if st == Status::Stopped {
        v["pid"] = 0.into();
    }
    ns_core::outln!("{}", serde_json::to_string_pretty(&v).expect("json"));
    Ok(())
}

/// `kill [--all] ID [SIGNAL]`.
fn kill(g: &Global, id: &str, all: bool, signal: Option<&str>) -> Result<()> {
    let sig = match signal {
        Some(s) => ns_core::parse_signal("signal", s)?,
        None => libc::SIGTERM,
    };
    let (dir, s) = container::load(&g.root, id)?;
    if all && s.status(&dir) == Status::Stopped {
        return Ok(()); // nothing left: done, as often as asked
    }
    s.signal(sig, all)
}

/// `ps --format table|json ID`.
fn ps(g: &Global, id: &str, format: &str) -> Result<()> {
    let (_, s) = container::load(&g.root, id)?;
    let pids = s.pids();
    match format {
        "json" => ns_core::outln!("{}", serde_json::to_string(&pids).expect("json")),
        "table" => {
            ns_core::outln!("PID CMD");
            for p in pids {
                let cmd = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                ns_core::outln!("{p} {}", cmd.trim());
            }
        }
        f => return Err(Error::invalid("--format", f, "not table or json")),
    }
    Ok(())
}

/// `pause ID` (`pause`) and `resume ID`.
fn set_frozen(g: &Global, id: &str, pause: bool) -> Result<()> {
    let (dir, s) = container::load(&g.root, id)?;
    match (s.status(&dir), pause) {
        (Status::Running | Status::Created, true) | (Status::Paused, false) => s.set_frozen(pause),
        (st, _) => Err(Error::setup(format!(
            "container {id} is {}: cannot {}",
            st.name(),
            if pause { "pause" } else { "resume" }
        ))),
    }
}

/// `update --resources FILE|- ID`: new limits on a running container's cgroups.
fn update(g: &Global, id: &str, resources: &str) -> Result<()> {
    let (dir, s) = container::load(&g.root, id)?;
    if s.status(&dir) == Status::Stopped {
        return Err(Error::setup(format!(
            "cannot update {id}: container not running"
        )));
    }
    let text = if resources == "-" {
        std::io::read_to_string(std::io::stdin()).ctx(|| "cannot read stdin".into())?
    } else {
        std::fs::read_to_string(resources).ctx(|| format!("--resources={resources}"))?
    };
    let r: oci_spec::runtime::LinuxResources = serde_json::from_str(&text)
        .map_err(|e| Error::invalid("--resources", resources, &e.to_string()))?;
    // As runc: the device rules are set at create only (containerd sends its
    // deny-all again with every update).
    let props: Vec<_> = ns_run::oci::properties(&r)?
        .into_iter()
        .filter(|p| {
            !matches!(
                p,
                ns_core::state::Property::DevicePolicy(_)
                    | ns_core::state::Property::DeviceAllow(_)
            )
        })
        .collect();
    let cgroups: Vec<_> = s.cgroups.iter().map(|c| c.cgroup()).collect();
    // (No nspawn default among them: nothing to tell.)
    ns_host::resources::apply(&props, &cgroups).map(|_| ())
}

/// `run`: create, start, wait, delete. The container's process is our child (ns-enter
/// clones it as such), so we reap it and return its status (128+N for signal N). SIGTERM,
/// SIGINT and SIGHUP to us are passed on to it meanwhile.
fn run_foreground(g: &Global, id: &str, bundle: &Path, pid_file: Option<&Path>) -> Result<i32> {
    let relayed =
        ns_core::sys::SignalSet::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    relayed.block().ctx(|| "cannot block signals".into())?;
    create::create(
        g,
        &create::Request {
            id,
            bundle,
            pid_file,
            console_socket: None,
        },
    )?;
    let (_, s) = container::load(&g.root, id)?;
    let pid = nix::unistd::Pid::from_raw(s.pid);
    if let Err(e) = start(g, id) {
        let _ = delete(g, id, true);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(e);
    }
    let code = ns_core::reap::until(pid, &relayed, |sig| {
        let _ = ns_core::sys::kill_raw(pid, sig);
    })?;
    delete(g, id, true)?;
    Ok(code)
}

/// `start`: open the fifo the container waits on; it execs its process when it can write.
fn start(g: &Global, id: &str) -> Result<()> {
    use nix::fcntl::OFlag;
    let dir = container::dir_of(&g.root, id)?;
    let lock = if dir.is_dir() {
        Some(container::lock(&dir)?)
    } else {
        None
    };
    let (dir, s) = container::load(&g.root, id)?;
    match s.status(&dir) {
        Status::Created => {}
        st => {
            return Err(Error::setup(format!(
                "container {id} is {}: cannot start it",
                st.name()
            )))
        }
    }
    let fifo = container::fifo_of(&dir);
    let f = nix::fcntl::open(
        &fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", fifo.display()))?;
    // The container opens its end (it may still be on its way there), writes one byte and
    // execs. Checked every 100 ms: a container that died meanwhile is an error, not a hang.
    loop {
        let mut p = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&f),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = match nix::poll::poll(&mut p, nix::poll::PollTimeout::from(100u16)) {
            Err(nix::errno::Errno::EINTR) => 0,
            r => r.ctx(|| "poll".into())?,
        };
        if n > 0 {
            let mut b = [0u8; 1];
            if nix::unistd::read(&f, &mut b).unwrap_or(0) == 1 {
                break;
            }
        }
        if !s.alive() {
            return Err(Error::setup(format!(
                "container {id} ended before it started"
            )));
        }
    }
    std::fs::remove_file(&fifo).ctx(|| format!("cannot remove {}", fifo.display()))?;
    drop(lock);
    let hs = s.hooks.clone().unwrap_or_default();
    hooks::run("poststart", hs.poststart(), &s.state_json("running"))
}

/// `delete`: a stopped container's cgroups, created paths and record go; a created one is
/// killed first (runc's rule); any other needs --force. A container that does not exist is
/// deleted already, for --force.
fn delete(g: &Global, id: &str, force: bool) -> Result<()> {
    let dir = container::dir_of(&g.root, id)?;
    if !dir.is_dir() {
        return match force {
            true => Ok(()),
            false => Err(Error::setup(format!("container {id} does not exist"))),
        };
    }
    // After a `create` at work is done (or dead: then its record says what it made).
    let _lock = container::lock(&dir)?;
    let s = match container::load(&g.root, id) {
        Ok((_, s)) => s,
        Err(_) if force || !dir.join("state.json").exists() => {
            // Gone meanwhile, or a create killed before it recorded anything.
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match s.status(&dir) {
        Status::Stopped | Status::Created | Status::Creating => {}
        st if !force => {
            return Err(Error::setup(format!(
                "container {id} is {}: stop it first, or delete it with --force",
                st.name()
            )))
        }
        _ => {}
    }
    s.kill_all();
    let hs = s.hooks.clone().unwrap_or_default();
    if let Err(e) = hooks::run("poststop", hs.poststop(), &s.state_json("stopped")) {
        ns_core::errln!("ns-oci: {}", e.msg);
    }
    // Reported, not fatal: one its processes covered would keep it from being deleted.
    // (A killed `create` recorded only the mounts before it: what appeared since is its.)
    let unmounted = match &s.mounts_before {
        Some(before) => ns_host::hostmounts::unmount_since(&s.rootfs, before),
        None => ns_host::hostmounts::unmount(&s.rootfs, &s.host_mounts),
    };
    if let Err(e) = unmounted {
        ns_core::errln!("ns-oci: container {id}: {}", e.msg);
    }
    create::remove_created(&s.rootfs, &s.created_paths);
    for c in s.cgroups.iter().rev() {
        if !ns_host::cgroups::remove(&c.dir) {
            return Err(Error::setup(format!(
                "cannot remove cgroup {} of container {id}",
                c.dir.display()
            )));
        }
    }
    ns_host::cgroups::remove_levels(&s.cgroup_levels);
    std::fs::remove_dir_all(&dir).ctx(|| format!("cannot remove {}", dir.display()))
}

/// What `features` reports (the OCI runtime features document).
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "size", "mode", "nr_inodes", "uid", "gid"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                            "SCMP_ACT_NOTIFY"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                              "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.ns-run.stages": "ns-enter ns-mount ns-caps"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_is_xdg_runtime_dir_only_without_root() {
        let xdg = || Some(std::ffi::OsString::from("/run/user/1000"));
        assert_eq!(
            default_root(false, xdg()),
            Path::new("/run/user/1000/ns-oci")
        );
        assert_eq!(default_root(true, xdg()), Path::new("/run/ns-oci"));
        assert_eq!(
            default_root(false, Some("".into())),
            Path::new("/run/ns-oci")
        );
        assert_eq!(default_root(false, None), Path::new("/run/ns-oci"));
    }
}
