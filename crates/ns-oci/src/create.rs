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
use ns_core::exec::StageFds;
use ns_core::stage::debug;
use ns_core::state::{Runtime, State};
use ns_core::{Context, Error, Result};
use ns_host::cgroups::Cgroup;
use ns_host::chain::{Chain, Maps, Report};
use ns_host::hostmounts::{self, HostMount};
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
    /// The bundle's rootfs: what was made below it is removed walking from it.
    rootfs: PathBuf,
    /// Without a mount namespace: the rootfs and the mounts it had before.
    mounts: Option<(PathBuf, Vec<HostMount>)>,
}

impl Undo {
    /// SIGKILL to the chain's processes (reaped by [`Undo::run`]).
    fn kill(&self) {
        for p in &self.pids {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn run(self) {
        self.kill();
        for p in &self.pids {
            let _ = waitpid(*p, None);
        }
        if let Some((root, before)) = &self.mounts {
            if let Err(e) = hostmounts::unmount_since(root, before) {
                ns_core::errln!("ns-oci: {}", e.msg);
            }
        }
        remove_created(&self.rootfs, &self.created);
        for c in self.cgroups.iter().rev() {
            ns_host::cgroups::remove(&c.dir);
        }
        ns_host::cgroups::remove_levels(&self.levels);
        if let Some(d) = self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Remove what the chain and the host made, never through a symlink: the container (or
/// another sharing the image) may have renamed a directory we made and put a symlink to a
/// host path in its place. A path under `rootfs` as named is walked from it fd-relative;
/// any other (a stage names what it made by its resolved path, which a `--bundle` reached
/// through a symlink does not prefix; an overlay work directory) as ns-run's cleanup
/// removes it, with no symlink anywhere on its path.
pub fn remove_created(rootfs: &Path, paths: &[(PathBuf, bool)]) {
    for (p, recursive) in paths.iter().rev() {
        match p.strip_prefix(rootfs) {
            Ok(rel) => drop(remove_below(rootfs, rel, *recursive)),
            Err(_) => ns_host::mountpoints::remove_no_symlinks(p, *recursive),
        }
    }
}

/// `rel` below `rootfs`, each component opened with O_NOFOLLOW from the root's fd.
fn remove_below(rootfs: &Path, rel: &Path, recursive: bool) -> nix::Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    use ns_core::walk;
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Ok(n),
            _ => Err(nix::errno::Errno::EINVAL),
        })
        .collect::<nix::Result<_>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(nix::errno::Errno::EINVAL);
    };
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY;
    let mut fd = nix::fcntl::open(
        rootfs,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    for name in dirs {
        fd = walk::open_dir_at(fd.as_fd(), name)?;
    }
    if recursive {
        return walk::remove_at(fd.as_fd(), last);
    }
    // A mount point: an empty directory, or a file we made empty (as ns-run's journal: what
    // was written to it stays).
    let st = nix::sys::stat::fstatat(&fd, *last, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => unlinkat(&fd, *last, UnlinkatFlags::RemoveDir),
        libc::S_IFREG if st.st_size == 0 => unlinkat(&fd, *last, UnlinkatFlags::NoRemoveDir),
        _ => Ok(()),
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
    let mut cmd = ns_run::cli::command();
    ns_run::cli::reject_unknown_options(&cmd, &argv)?;
    let cli: ns_run::cli::Cli = ns_core::stage::parse_args_with(STAGE, &mut cmd, &argv);
    let facts = ns_run::plan::HostFacts::gather(&cli);
    let input = oci::OciInput {
        bundle: b,
        oci_runtime: Some(oci::OciRuntime {
            terminal,
            id: id.to_string(),
        }),
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
    let state = state_of(&b, r.id, terminal)?;
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
        rootfs: b.root.clone(),
        mounts: None,
    };
    let made = run_chain(g, r, &b, &dir, &state, &mut undo).and_then(|saved| {
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
    state: &State,
    undo: &mut Undo,
) -> Result<Saved> {
    // Sealed copies: a created container's PID 1 (ns-caps, waiting for start) is seen by
    // what `exec` runs in it, and the whole chain by the other members of a PID namespace it
    // joins (a pod): no host file of ours may be reachable through /proc/PID/exe or fd.
    let mut fds = StageFds::default();
    fds.open_sealed(&["ns-enter", "ns-mount", "ns-caps"])?;
    // The record exists from the start (pid 0: creating), so that `delete --force` finds
    // what a killed `create` made: written again as cgroups and the process appear.
    let mut saved = first_record(r, b, state);
    container::save(dir, &saved)?;
    // What only the host decides at start: the cgroups to join, the start fifo.
    let cgroups = own_cgroups(g, r, b, dir, state, &mut saved, undo)?;
    mount_points(b, dir, state, &mut saved, undo)?;
    if state.mount.oci.as_ref().is_some_and(|o| o.chroot) {
        let before = hostmounts::under(&b.root)?;
        saved.mounts_before = Some(before.clone());
        container::save(dir, &saved)?;
        undo.mounts = Some((b.root.clone(), before));
    }
    let fifo_fd = start_fifo(dir)?;
    let listener = listener_socket(&saved)?;
    let runtime = Runtime {
        cgroups,
        start_fd: Some(fifo_fd.as_raw_fd()),
        seccomp_listener_fd: listener.as_ref().map(|s| s.as_raw_fd()),
        ..Default::default()
    };
    let joined = runtime.cgroups.is_some();
    let v2_dir = ns_host::cgroups::v2_dir(&undo.cgroups)?;
    let v2_dir = v2_dir.as_ref().map(|d| d.as_fd());
    let chain = Chain::start(state, runtime, fds, v2_dir, None)?;
    undo.pids.push(chain.enter);
    drop((fifo_fd, listener));
    if joined {
        chain.cgroups_ready()?; // SYNC-0: made before the fork
    }
    let mut c = Creating {
        r,
        b,
        dir,
        state,
        chain: &chain,
        saved,
        undo,
        failed: None,
        waiting: false,
    };
    // A failure of ours takes the chain down before its socket closes: no stage reads that
    // EOF and says so in a second line.
    answer(&chain, &mut c).inspect_err(|_| c.undo.kill())?;
    let mut saved = c.created()?;
    if let Some((root, before)) = &undo.mounts {
        saved.host_mounts = hostmounts::made_since(before, hostmounts::under(root)?);
        saved.mounts_before = None;
    }
    Ok(saved)
}

/// The chain's reports answered until EOF: ns-caps is waiting for start, or the chain is gone.
fn answer(chain: &Chain, c: &mut Creating) -> Result<()> {
    while let Some(report) = chain.next_report()? {
        c.on_report(report)?;
    }
    Ok(())
}

/// In a user namespace (the image's ownership as it is), the missing mount points of
/// config.json's mounts, made by the host and recorded (removed with the container).
fn mount_points(
    b: &oci::Bundle,
    dir: &Path,
    state: &State,
    saved: &mut Saved,
    undo: &mut Undo,
) -> Result<()> {
    let Some(oci) = &state.mount.oci else {
        return Ok(());
    };
    if state.enter.userns.is_none() || state.mount.idmapped_root {
        return Ok(());
    }
    let mut made = Vec::new();
    let done = ns_host::mountpoints::make_missing(&b.root, oci, &mut made);
    if made.is_empty() {
        return done; // nothing new to record
    }
    undo.created.extend(made.iter().cloned());
    saved.created_paths.extend(made);
    done.and_then(|()| container::save(dir, saved))
}

/// The container's record as `create` starts (pid 0: creating).
fn first_record(r: &Request, b: &oci::Bundle, state: &State) -> Saved {
    Saved {
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
        host_mounts: Vec::new(),
        mounts_before: None,
        syscall_filter: state.exec.syscall_filter.clone(),
        hooks: b.spec.hooks().clone(),
        seccomp_listener: b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .and_then(|sc| {
                let meta = sc.listener_metadata().clone().unwrap_or_default();
                Some((sc.listener_path().clone()?, meta))
            }),
    }
}

/// Cgroups: only root has any to give (rootless containers live in their caller's). Made
/// and recorded, with the resources written, before the fork; returns the v1 ones ns-enter
/// joins (None: no cgroups).
fn own_cgroups(
    g: &Global,
    r: &Request,
    b: &oci::Bundle,
    dir: &Path,
    state: &State,
    saved: &mut Saved,
    undo: &mut Undo,
) -> Result<Option<Vec<PathBuf>>> {
    if !nix::unistd::geteuid().is_root() || g.rootless() {
        if state.monitor.properties.is_empty() {
            return Ok(None);
        }
        return Err(Error::setup(
            "linux.resources: a rootless container has no cgroup to limit".into(),
        ));
    }
    make_cgroups(g, r, b, undo)?;
    saved.cgroups = undo.cgroups.iter().map(SavedCgroup::of).collect();
    saved.cgroup_levels = undo.levels.clone();
    container::save(dir, saved)?;
    ns_host::resources::apply(&state.monitor.properties, &undo.cgroups)?;
    Ok(Some(
        undo.cgroups
            .iter()
            .filter(|c| !c.v2)
            .map(|c| c.procs_dir())
            .collect(),
    ))
}

/// The container's cgroups at cgroupsPath, in every hierarchy (recorded in `undo`).
fn make_cgroups(g: &Global, r: &Request, b: &oci::Bundle, undo: &mut Undo) -> Result<()> {
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
    Ok(())
}

/// OCI seccomp notify: a connection to `linux.seccomp.listenerPath` (a host path, so made
/// here), inherited by the chain: ns-caps sends the filter's listener through it.
pub fn listener_socket(saved: &Saved) -> Result<Option<std::os::unix::net::UnixStream>> {
    let Some((path, _)) = &saved.seccomp_listener else {
        return Ok(None);
    };
    let s = std::os::unix::net::UnixStream::connect(path)
        .ctx(|| format!("linux.seccomp.listenerPath {}", path.display()))?;
    nix::fcntl::fcntl(
        std::os::fd::AsFd::as_fd(&s),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .ctx(|| "cannot pass the seccomp listener socket on".into())?;
    Ok(Some(s))
}

/// The start fifo: world-writable, as the payload's user (maybe not root, maybe in a user
/// namespace) opens it; passed down the chain as an O_PATH fd.
fn start_fifo(dir: &Path) -> Result<OwnedFd> {
    let fifo = container::fifo_of(dir);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .ctx(|| format!("cannot create {}", fifo.display()))?;
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .ctx(|| format!("cannot set the mode of {}", fifo.display()))?;
    nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("cannot open {}", fifo.display()))
}

/// A container being created: the chain's reports answered until it waits for `start`.
struct Creating<'a> {
    r: &'a Request<'a>,
    b: &'a oci::Bundle,
    dir: &'a Path,
    state: &'a State,
    chain: &'a Chain,
    saved: Saved,
    undo: &'a mut Undo,
    /// What a stage reported before it failed (SYNC-8).
    failed: Option<String>,
    /// SYNC-7 received.
    waiting: bool,
}

impl Creating<'_> {
    fn on_report(&mut self, report: Report) -> Result<()> {
        match report {
            Report::Pid(pid) => self.on_pid1(pid)?,
            Report::UserNs => {
                // SYNC-1: the id maps config.json gives (checked by oci::options), as
                // given; the image's ownership as it is (no idmapped root).
                let u = self.state.enter.userns.as_ref();
                let u = u.ok_or_else(|| Error::setup("unexpected user namespace".into()))?;
                self.chain.map_userns(&Maps::given(u)?, None, false)?;
            }
            Report::Console(master) => {
                // SYNC-6: the master of the container's /dev/console, for the caller.
                let socket = self
                    .r
                    .console_socket
                    .expect("checked: terminal needs a socket");
                send_console(&connect_console(socket)?, &master)?;
            }
            Report::Created { path, recursive } => {
                self.undo.created.push((path.clone(), recursive));
                self.saved.created_paths.push((path, recursive));
            }
            Report::Failed { stage, message, .. } => {
                self.failed = Some(format!("{stage}: {message}"));
            }
            Report::Waiting => self.waiting = true, // SYNC-7
            r @ (Report::NeedMount { .. } | Report::NeedProc | Report::NeedSys) => {
                return Err(Error::setup(format!("unexpected {r:?} from the chain")));
            }
        }
        Ok(())
    }

    /// SYNC-2: PID 1 exists (our child, by CLONE_PARENT): recorded, its hooks run, SYNC-3.
    fn on_pid1(&mut self, pid: Pid) -> Result<()> {
        let p = pid.as_raw();
        self.undo.pids.push(pid);
        self.saved.pid = p;
        self.saved.start_time = container::stat_of(p).map_or(0, |(t, _)| t);
        container::save(self.dir, &self.saved)?;
        debug(STAGE, || format!("container process is {p}"));
        let hs = self.b.spec.hooks().clone().unwrap_or_default();
        let st = self.saved.state_json("creating");
        hooks::run("createRuntime", hs.create_runtime(), &st)?;
        hooks::run("prestart", hs.prestart(), &st)?;
        self.chain.go() // SYNC-3
    }

    /// The chain's end: created (waiting for start), or failed before.
    fn created(self) -> Result<Saved> {
        let (saved, undo, enter) = (self.saved, self.undo, self.chain.enter);
        // ns-enter exits once PID 1 is reported; without a PID namespace it is the container.
        if saved.pid != enter.as_raw() {
            let _ = waitpid(enter, None);
            undo.pids.retain(|p| *p != enter);
        }
        if self.waiting {
            return Ok(saved);
        }
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
        Err(Error::setup(self.failed.unwrap_or_else(|| {
            format!(
                "the container's setup ended before it was created (exit {})",
                status.map_or("unknown".into(), |c| c.to_string())
            )
        })))
    }
}

/// The console socket, connected (before any namespace is joined: it is a host path).
pub fn connect_console(socket: &Path) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(socket)
        .ctx(|| format!("--console-socket={}", socket.display()))
}

/// Hand the pty master to whoever listens on the console socket (SCM_RIGHTS, with the
/// terminal's name as payload, as runc sends it).
pub fn send_console(s: &std::os::unix::net::UnixStream, master: &OwnedFd) -> Result<()> {
    ns_core::sync::send_with_fd(s.as_raw_fd(), b"/dev/ptmx", master.as_fd())
        .ctx(|| "cannot send the console to --console-socket".into())
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
