//! `create`: the bundle becomes the chain's state (through ns-run's OCI reader, so
//! `ns-run --oci-bundle` and ns-oci build the same container), the cgroups are made at
//! cgroupsPath with the resources, and the chain ns-enter → ns-mount → ns-caps runs up to
//! the last step before the payload's exec. There ns-caps sends `waiting` (SYNC-7) and closes
//! the sync socket (we return: the container is created, its pid file written), keeps only
//! stdio and the fifo, and blocks on `ROOT/ID/exec.fifo` until `start` opens it. Our own exit
//! does not touch it: its parent-death signal is cleared before, and it is reparented to the
//! nearest subreaper (containerd's shim), which reaps it. We hold the lock on `ROOT/ID`
//! meanwhile, and record what we make as we make it (for `delete --force` after a crash).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use ns_core::exec::{exec_stage, state_argv, StageFds};
use ns_core::stage::{debug, fail};
use ns_core::state::{IdBase, State};
use ns_core::sync::{Msg, SyncSocket};
use ns_core::sys::{fork, fork_into_cgroup, Forked};
use ns_core::{Context, Error, Result};
use ns_host::cgroups::Cgroup;
use ns_run::oci;

use crate::container::{self, Saved, SavedCgroup};
use crate::hooks;
use crate::Global;

const STAGE: &str = "ns-oci";

/// Where a container without cgroupsPath goes, in every hierarchy: `ns-oci/ID`.
const DEFAULT_PARENT: &str = "ns-oci";

pub struct Request<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
}

/// What a failed create leaves to undo: nothing may stay behind.
struct Undo {
    dir: Option<PathBuf>,
    cgroups: Vec<Cgroup>,
    levels: Vec<PathBuf>,
    pids: Vec<Pid>,
    created: Vec<(PathBuf, bool)>,
}

impl Undo {
    fn run(self) {
        for p in &self.pids {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGKILL);
        }
        for p in &self.pids {
            let _ = waitpid(*p, None);
        }
        remove_created(&self.created);
        for c in self.cgroups.iter().rev() {
            ns_host::cgroups::remove(&c.dir);
        }
        ns_host::cgroups::remove_levels(&self.levels);
        if let Some(d) = self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn remove_created(paths: &[(PathBuf, bool)]) {
    for (p, recursive) in paths.iter().rev() {
        let _ = if *recursive {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_dir(p).or_else(|_| std::fs::remove_file(p))
        };
    }
}

/// The chain's state for the bundle: nspawn's options from config.json, parsed as ns-run
/// parses its command line, then the process exactly as config.json gives it.
pub fn state_of(b: &oci::Bundle, id: &str, terminal: bool) -> Result<State> {
    let name = if ns_run::plan::hostname_is_valid(id) {
        id.to_string()
    } else {
        ns_run::plan::hostname_cleanup(id)
    };
    let mut argv = vec![
        STAGE.to_string(),
        format!("--oci-bundle={}", b.dir.display()),
    ];
    argv.extend(oci::options(b, &name)?);
    // Leave /etc alone (runc does not touch it), no registry entry (the runtime's root is
    // the registry), stdio passed through.
    argv.extend(
        [
            "--register=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=pipe",
            "--",
        ]
        .map(String::from),
    );
    argv.extend(oci::argv_of(b));
    ns_run::cli::reject_unknown_options(&argv)?;
    let cli: ns_run::cli::Cli = ns_core::stage::parse_args(STAGE, &argv);
    let facts = ns_run::plan::HostFacts::gather(&cli);
    let input = oci::OciInput {
        bundle: b,
        runtime: Some(oci::Runtime { terminal }),
    };
    ns_run::plan::build(&cli, &facts, Some(&input))
}

/// cgroupsPath (`given`), as a path below each hierarchy's root. With `--systemd-cgroup` it
/// is `slice:prefix:name`, placed where systemd puts `prefix-name.scope`.
fn cgroup_path(given: Option<PathBuf>, id: &str, systemd: bool) -> Result<PathBuf> {
    match (given, systemd) {
        (None, _) => Ok(PathBuf::from(DEFAULT_PARENT).join(id)),
        (Some(p), false) => Ok(p),
        (Some(p), true) => {
            let text = p.to_string_lossy().into_owned();
            let parts: Vec<&str> = text.split(':').collect();
            let [slice, prefix, name] = parts[..] else {
                return Err(Error::invalid(
                    "cgroupsPath",
                    &text,
                    "with --systemd-cgroup it is slice:prefix:name",
                ));
            };
            let slice = if slice.is_empty() {
                String::new()
            } else {
                ns_host::cgroups::slice_path(slice)?
            };
            Ok(PathBuf::from(slice).join(format!("{prefix}-{name}.scope")))
        }
    }
}

pub fn create(g: &Global, r: &Request) -> Result<()> {
    let dir = container::dir_of(&g.root, r.id)?;
    // 0700, as runc: the records and the start fifo are root's business. Checked like our
    // other runtime directories: a root someone else made or may write is refused.
    if let Some(parent) = g.root.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .ctx(|| format!("cannot create {}", parent.display()))?;
    }
    ns_core::paths::private_dir(&g.root, 0o700)?;
    let b = oci::load("--bundle", r.bundle)?;
    let process = b
        .spec
        .process()
        .clone()
        .ok_or_else(|| Error::setup("config.json has no process".into()))?;
    let terminal = process.terminal().unwrap_or(false);
    if terminal && r.console_socket.is_none() {
        return Err(Error::setup(
            "process.terminal needs --console-socket".into(),
        ));
    }
    hooks::check(b.spec.hooks())?;
    let mut state = state_of(&b, r.id, terminal)?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::setup(format!("container {} already exists", r.id)))
        }
        r => r.ctx(|| format!("cannot create {}", dir.display()))?,
    }
    // Held until we return: start and delete wait for a container being made.
    let _lock = container::lock(&dir).inspect_err(|_| {
        let _ = std::fs::remove_dir(&dir);
    })?;
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroups: Vec::new(),
        levels: Vec::new(),
        pids: Vec::new(),
        created: Vec::new(),
    };
    let made = run_chain(g, r, &b, &dir, &mut state, &mut undo).and_then(|saved| {
        container::save(&dir, &saved)?;
        match r.pid_file {
            Some(p) => write_pid_file(p, saved.pid),
            None => Ok(()),
        }
    });
    // Anything failing, up to the pid file, takes the container down with it.
    made.inspect_err(|_| undo.run())
}

/// The pid file, written atomically (containerd reads it as soon as we return).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, pid.to_string()).ctx(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("cannot write {}", path.display()))
}

fn run_chain(
    g: &Global,
    r: &Request,
    b: &oci::Bundle,
    dir: &Path,
    state: &mut State,
    undo: &mut Undo,
) -> Result<Saved> {
    // Sealed copies: a created container's PID 1 (ns-caps, waiting for start) is seen by
    // what `exec` runs in it, and the whole chain by the other members of a PID namespace it
    // joins (a pod): no host file of ours may be reachable through /proc/PID/exe or fd.
    let mut fds = StageFds::default();
    fds.open_sealed(&["ns-enter", "ns-mount", "ns-caps"])?;
    // The record exists from the start (pid 0: creating), so that `delete --force` finds
    // what a killed `create` made: written again as cgroups and the process appear.
    let mut saved = Saved {
        id: r.id.to_string(),
        bundle: b.dir.clone(),
        rootfs: b.root.clone(),
        pid: 0,
        start_time: 0,
        created: container::now_rfc3339(),
        cgroups: Vec::new(),
        cgroup_levels: Vec::new(),
        annotations: b
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        created_paths: Vec::new(),
        syscall_filter: state.exec.syscall_filter.clone(),
        hooks: b.spec.hooks().clone(),
    };
    container::save(dir, &saved)?;
    // Cgroups: only root has any to give (rootless containers live in their caller's).
    let with_cgroups = nix::unistd::geteuid().is_root() && !g.rootless();
    if with_cgroups {
        let given = b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone());
        let rel = cgroup_path(given, r.id, g.systemd_cgroup)?;
        let hs = ns_host::cgroups::hierarchies();
        for v2 in [true, false] {
            let (made, levels) = ns_host::cgroups::create_at(&hs, &rel, v2)?;
            undo.cgroups.extend(made);
            undo.levels.extend(levels);
        }
        if rel.starts_with(DEFAULT_PARENT) {
            // Our own parent, shared by every container without a cgroupsPath: whoever
            // deletes the last one removes it.
            for c in &undo.cgroups {
                if let Some(p) = c
                    .dir
                    .parent()
                    .filter(|p| !undo.levels.iter().any(|l| l == p))
                {
                    undo.levels.push(p.to_path_buf());
                }
            }
        }
        saved.cgroups = undo.cgroups.iter().map(SavedCgroup::of).collect();
        saved.cgroup_levels = undo.levels.clone();
        container::save(dir, &saved)?;
        ns_host::resources::apply(&state.monitor.properties, &undo.cgroups)?;
        state.enter.cgroups = Some(
            undo.cgroups
                .iter()
                .filter(|c| !c.v2)
                .map(|c| c.procs_dir())
                .collect(),
        );
    } else if !state.monitor.properties.is_empty() {
        return Err(Error::setup(
            "linux.resources: a rootless container has no cgroup to limit".into(),
        ));
    }
    // The start fifo: world-writable, as the payload's user (maybe not root, maybe in a
    // user namespace) opens it; passed down the chain as an O_PATH fd.
    let fifo = container::fifo_of(dir);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .ctx(|| format!("cannot create {}", fifo.display()))?;
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .ctx(|| format!("cannot set the mode of {}", fifo.display()))?;
    let fifo_fd: OwnedFd = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", fifo.display()))?;
    state.exec.start_fd = Some(fifo_fd.as_raw_fd());
    let state_fd = state.to_sealed_memfd()?;
    let (sync, chain_end) = SyncSocket::pair()?;
    let v2_dir = ns_host::cgroups::v2_dir(&undo.cgroups)?;
    let forked = match &v2_dir {
        Some(d) => fork_into_cgroup(d.as_fd())
            .ctx(|| "cannot fork into the container's cgroup2 directory".into())?,
        None => fork().ctx(|| "cannot fork".into())?,
    };
    let enter = match forked {
        Forked::Child => {
            let argv = state_argv("ns-enter", state_fd.as_raw_fd(), Some(chain_end.raw()));
            let e = match chain_end.set_inheritable() {
                Ok(()) => exec_stage("ns-enter", &argv, &fds),
                Err(e) => e,
            };
            fail("ns-oci", &e)
        }
        Forked::Parent(p) => p,
    };
    undo.pids.push(enter);
    drop(chain_end);
    drop(state_fd);
    drop(fifo_fd);
    fds.close_all();
    if state.enter.cgroups.is_some() {
        sync.send(&Msg::Cgroups)?; // SYNC-0: made before the fork
    }
    let mut failed: Option<String> = None;
    let mut waiting = false;
    loop {
        let (msg, fd) = match sync.recv_any(nix::sys::socket::MsgFlags::empty())? {
            Some(m) => m,
            None => break, // EOF: ns-caps is waiting for start, or the chain is gone
        };
        match msg {
            Msg::Pid(p) => {
                // SYNC-2: PID 1 exists (our child, by CLONE_PARENT).
                let pid = Pid::from_raw(p);
                undo.pids.push(pid);
                saved.pid = p;
                saved.start_time = container::stat_of(p).map_or(0, |(t, _)| t);
                container::save(dir, &saved)?;
                debug(STAGE, || format!("container process is {p}"));
                let hs = b.spec.hooks().clone().unwrap_or_default();
                let st = saved.state_json("creating");
                hooks::run("createRuntime", hs.create_runtime(), &st)?;
                hooks::run("prestart", hs.prestart(), &st)?;
                sync.send(&Msg::Go)?; // SYNC-3
            }
            Msg::UserNs => {
                // SYNC-1: the id map config.json gives (one range, checked by oci::options).
                let u = state
                    .enter
                    .userns
                    .as_ref()
                    .ok_or_else(|| Error::setup("unexpected user namespace".into()))?;
                let IdBase::Fixed(base) = u.base else {
                    return Err(Error::setup("no id range for the user namespace".into()));
                };
                ns_host::userns::write_maps(enter.as_raw(), base, u.count, &[])?;
                sync.send(&Msg::Mapped)?;
            }
            Msg::Console => {
                // SYNC-6: the master of the container's /dev/console, for the caller.
                let master = fd.ok_or_else(|| Error::setup("Console without its pty".into()))?;
                let socket = r.console_socket.expect("checked: terminal needs a socket");
                send_console(&connect_console(socket)?, &master)?;
            }
            Msg::Created { path, recursive } => {
                undo.created.push((path.clone(), recursive));
                saved.created_paths.push((path, recursive));
            }
            Msg::Failed { stage, message, .. } => {
                failed = Some(format!("{stage}: {message}"));
            }
            Msg::Waiting => waiting = true, // SYNC-7
            m => return Err(Error::setup(format!("unexpected {m:?} from the chain"))),
        }
    }
    // ns-enter exits once PID 1 is reported; without a PID namespace it is the container.
    if saved.pid != enter.as_raw() {
        let _ = waitpid(enter, None);
        undo.pids.retain(|p| *p != enter);
    }
    if !waiting {
        // The chain ended before it was set up: its own line says why (stderr), and so does
        // its report when it made one; else its exit status.
        let status = match saved.pid {
            0 => None,
            p => {
                let st = waitpid(Pid::from_raw(p), None).ok();
                undo.pids.retain(|q| q.as_raw() != p); // reaped: never signal its number
                st.and_then(ns_core::stage::exit_code_of)
            }
        };
        return Err(Error::setup(failed.unwrap_or_else(|| {
            format!(
                "the container's setup ended before it was created (exit {})",
                status.map_or("unknown".into(), |c| c.to_string())
            )
        })));
    }
    Ok(saved)
}

/// The console socket, connected (before any namespace is joined: it is a host path).
pub fn connect_console(socket: &Path) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(socket)
        .ctx(|| format!("--console-socket={}", socket.display()))
}

/// Hand the pty master to whoever listens on the console socket (SCM_RIGHTS, with the
/// terminal's name as payload, as runc sends it).
pub fn send_console(s: &std::os::unix::net::UnixStream, master: &OwnedFd) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "cannot send the console to --console-socket".into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        let p = |given: Option<&str>, systemd| cgroup_path(given.map(PathBuf::from), "c1", systemd);
        assert_eq!(p(None, false).unwrap(), PathBuf::from("ns-oci/c1"));
        assert_eq!(
            p(Some("/default/c1"), false).unwrap(),
            PathBuf::from("/default/c1")
        );
        assert_eq!(
            p(Some("kubepods-besteffort.slice:cri-containerd:abc"), true).unwrap(),
            PathBuf::from("kubepods.slice/kubepods-besteffort.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            p(Some("a/b"), true).unwrap_err().msg,
            "cgroupsPath=a/b: with --systemd-cgroup it is slice:prefix:name"
        );
    }
}
