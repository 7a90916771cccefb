//! Helpers for the end-to-end tests: the built binaries, a busybox root file system, a
//! runner with a timeout, and leak checks (host mount table, processes left in a rootfs).
//!
//! Tests need root and real namespaces. Containers run on a busybox tree built from the
//! host's /usr/bin/busybox (busybox-static).
//!
//! ns-run holds nspawn's image lock on a tree for a container's lifetime: exclusive, or
//! shared with `--read-only`, `-x` and `--volatile`. Tests run in parallel, so every test
//! that runs a container which may write to its tree uses its own [`Tree`] (cheap: busybox
//! is hard-linked from the fixture). [`fixture`], one shared tree per test process, serves
//! only tests that never start a container or that start it with `-x`/`--read-only`.
//! Snapshots ([`snapshot`]) tell whether a tree was left exactly as it was.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any single command may run before it is killed and the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// nspawn's default retained capability set (26 capabilities).
pub const NSPAWN_DEFAULT_CAPS: u64 = 0xfdec_afff;
/// CAP_NET_ADMIN, added by `--private-network`.
pub const CAP_NET_ADMIN: u64 = 1 << 12;
/// CAP_NET_RAW.
pub const CAP_NET_RAW: u64 = 1 << 13;
/// CAP_SYS_ADMIN.
pub const CAP_SYS_ADMIN: u64 = 1 << 21;

/// nspawn's PATH for the payload.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const BUSYBOX: &str = "/usr/bin/busybox";
const PREFIX: &str = "ns-tests-";
const FIXTURE_PREFIX: &str = "ns-tests-rootfs-";

// ---------------------------------------------------------------------------------------
// Binaries

/// Directory of the built binaries: the test executable is target/<triple>/debug/deps/xxx,
/// the binaries are in target/<triple>/debug.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable is not in target/<triple>/<profile>/deps")
        .to_path_buf()
}

/// A built binary of the workspace (ns-run, ns-enter, ns-mount, ns-caps, ns-init).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    if !p.is_file() {
        panic!(
            "{} does not exist: run cargo build --workspace first",
            p.display()
        );
    }
    p
}

/// `ns-run` as a Command, without debug or chain variables inherited from our environment.
/// Not registered (`--register=no`): tests run many containers of one tree at once, and a
/// registered name is taken while its container runs. `tests/tests/machines.rs` covers the
/// registry with [`ns_run_registered`].
pub fn ns_run() -> Command {
    let mut c = stage("ns-run");
    c.arg("--register=no");
    c
}

/// systemd-nspawn on `tree`, for a comparison: quiet, output through pipes (no pty),
/// unregistered, in our own cgroup; options and the command follow.
pub fn nspawn_in(tree: &Tree) -> Command {
    let mut c = Command::new("systemd-nspawn");
    c.args(["-q", "--pipe", "--register=no", "--keep-unit", "-D"])
        .arg(tree.path());
    c
}

/// ns-run as users run it: registered under its machine name.
pub fn ns_run_registered() -> Command {
    stage("ns-run")
}

/// A registered container of tree `t` named `name`, with `opts`, running `sh -c script`.
pub fn registered_sh(t: &Tree, name: &str, opts: &[&str], script: &str) -> Command {
    let mut c = ns_run_registered();
    t.tag(&mut c)
        .args(["-q", "-M", name, "-D", t.arg()])
        .args(opts)
        .args(["sh", "-c", script]);
    c
}

/// [`registered_sh`] of a container that prints `ready` and sleeps (for [`spawn_until`] or
/// [`while_running`] with "ready").
pub fn registered_sleeper(t: &Tree, name: &str, opts: &[&str]) -> Command {
    registered_sh(t, name, opts, "echo ready; exec sleep 100")
}

/// Whether the monitor of the registered machine `name` still holds its entry's `starting`:
/// a write lock on the first byte of its lock file (an OFD lock, see the registry), which
/// it drops once the payload runs. False when there is no entry.
pub fn machine_starting(name: &str) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(format!("/run/ns-run/machines/{name}.lock")) else {
        return false;
    };
    let mut l = first_byte_lock(libc::F_RDLCK);
    // SAFETY: F_OFD_GETLK on an open fd with a pointer to a live flock it writes.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    assert_eq!(r, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    l.l_type != libc::F_UNLCK as libc::c_short
}

/// Hold the registered machine `name`'s `starting` as its monitor does while its stages
/// run (a write lock on its lock file's first byte), until the file is dropped.
pub fn hold_machine_starting(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let path = format!("/run/ns-run/machines/{name}.lock");
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let l = first_byte_lock(libc::F_WRLCK);
    // SAFETY: F_OFD_SETLK on an open fd with a pointer to a live flock it reads.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) };
    assert_eq!(r, 0, "F_OFD_SETLK: {}", std::io::Error::last_os_error());
    f
}

fn first_byte_lock(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 1,
        l_pid: 0,
    }
}

/// `TAG-<our pid>`: a name that is host-wide (a registered machine, an ns-oci id in the
/// shared root, a zone, a slice, a settings file, a machine whose cgroups a test looks up by
/// name), so that two suites on one host never share it. Keep `TAG` short where the name
/// ends up in an interface name (15 bytes: `ve-NAME`, `vz-ZONE`).
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// A stage binary as a Command (see [`ns_run`]).
pub fn stage(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    c.env_remove("NS_DEBUG").env_remove("NS_STAGE_FDS");
    c
}

// ---------------------------------------------------------------------------------------
// Root file systems

/// Write a busybox root file system into `dir` (created if needed): the usual top-level
/// directories, /bin/busybox (a copy of the host's) and one symlink per applet, /etc/passwd
/// and /etc/group.
pub fn build_rootfs(dir: &Path) {
    check_busybox();
    populate_rootfs(dir, |dst| {
        fs::copy(BUSYBOX, dst).unwrap_or_else(|e| panic!("cannot copy {BUSYBOX}: {e}"));
    });
}

/// Fail with a clear message unless /usr/bin/busybox is a static binary.
fn check_busybox() {
    let bb = Path::new(BUSYBOX);
    if !bb.is_file() {
        panic!("{BUSYBOX} is missing: install busybox-static (apt-get install busybox-static)");
    }
    if has_interpreter(bb) {
        panic!(
            "{BUSYBOX} is dynamically linked and cannot run in a bare rootfs: install \
             busybox-static (apt-get install busybox-static)"
        );
    }
}

/// The applet names of the host's busybox (`busybox --list`, run once per test process).
pub fn applets() -> &'static [String] {
    static APPLETS: OnceLock<Vec<String>> = OnceLock::new();
    APPLETS.get_or_init(|| {
        check_busybox();
        let list = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {BUSYBOX} --list: {e}"));
        assert!(list.status.success(), "{BUSYBOX} --list failed");
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
            .map(String::from)
            .collect()
    })
}

/// Put a busybox binary at `dst`: a hard link to the fixture's (no copy of 2 MB per tree;
/// trees and the fixture share $TMPDIR), or a copy where linking is impossible.
fn install_busybox(dst: &Path) {
    let src = fixture().join("bin/busybox");
    if fs::hard_link(&src, dst).is_err() {
        fs::copy(&src, dst).unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
    }
}

/// One symlink `busybox` per applet in `bin`.
fn link_applets(bin: &Path) {
    for applet in applets() {
        match std::os::unix::fs::symlink("busybox", bin.join(applet)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("cannot link applet {applet}: {e}"),
        }
    }
}

fn write_users(dir: &Path) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         daemon:x:1:1:daemon:/usr/sbin:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        dir.join("etc/group"),
        "root:x:0:\ndaemon:x:1:\nwheel:x:10:daemon\nnobody:x:65534:\n",
    )
    .unwrap();
}

/// The busybox layout of [`build_rootfs`], with `busybox` putting the binary in place.
fn populate_rootfs(dir: &Path, busybox: impl FnOnce(&Path)) {
    for d in [
        "bin", "usr/bin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "mnt",
    ] {
        fs::create_dir_all(dir.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    let dst = dir.join("bin/busybox");
    busybox(&dst);
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
    link_applets(&dir.join("bin"));
    write_users(dir);
}

/// A busybox rootfs like [`build_rootfs`], cheaply: busybox hard-linked from the fixture.
pub fn build_rootfs_linked(dir: &Path) {
    populate_rootfs(dir, install_busybox);
}

/// A merged-/usr tree: /usr/bin holds busybox and its applets, /bin is a symlink to usr/bin,
/// /etc has passwd and group; nothing else (no API directories).
pub fn build_merged_usr_rootfs(dir: &Path) {
    let bin = dir.join("usr/bin");
    fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("mkdir {}: {e}", bin.display()));
    let dst = bin.join("busybox");
    install_busybox(&dst);
    link_applets(&bin);
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    write_users(dir);
}

/// Does this ELF file ask for a program interpreter (i.e. is it dynamically linked)?
fn has_interpreter(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false; // not a 64-bit ELF: let the container run tell
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) == 3
    })
}

static FIXTURE: OnceLock<PathBuf> = OnceLock::new();

/// The shared busybox rootfs of this test process, built once under
/// `$TMPDIR/ns-tests-rootfs-<pid>` and removed when the process exits. Tests must not change
/// it (use a [`Tree`] for that). Trees of earlier test processes that are gone (killed before
/// they could remove theirs) are removed first.
pub fn fixture() -> &'static Path {
    FIXTURE.get_or_init(|| {
        remove_stale_trees();
        let dir = std::env::temp_dir().join(format!("{FIXTURE_PREFIX}{}", std::process::id()));
        if dir.exists() {
            remove_tree(&dir);
        }
        // SAFETY: registers a plain function, which touches only FIXTURE (set by then) and
        // the file system; every test binary is single-process and exits through exit(3)
        // (libtest returns from main or calls process::exit), which runs it once.
        let registered = unsafe { libc::atexit(remove_fixture) } == 0;
        assert!(registered, "atexit failed");
        build_rootfs(&dir);
        dir
    })
}

/// At exit: the fixture goes with the test process that built it (a statics' Drop never runs).
extern "C" fn remove_fixture() {
    if let Some(dir) = FIXTURE.get() {
        remove_tree(dir);
    }
}

/// The pid a tree directory name of ours carries, if it is one.
fn tree_owner(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(FIXTURE_PREFIX)
        .or_else(|| name.strip_prefix(PREFIX))?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &rest[digits.len()..];
    if digits.is_empty() || !(after.is_empty() || after.starts_with('-')) {
        return None;
    }
    digits.parse().ok()
}

/// Remove `ns-tests-*` trees left by test processes that no longer exist.
fn remove_stale_trees() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = tree_owner(&name) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                remove_tree(&e.path());
            }
        }
    }
}

/// remove_dir_all, unless something is mounted at or below `dir` on the host: removing
/// through a leaked bind mount could delete host files.
pub fn remove_tree(dir: &Path) {
    let mounted: Vec<String> = mount_points()
        .into_iter()
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    if !mounted.is_empty() {
        eprintln!(
            "ns-tests: not removing {}: mounts below it on the host: {mounted:?}",
            dir.display()
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("ns-tests: cannot remove {}: {e}", dir.display());
        }
    }
}

static TREE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A private directory tree `$TMPDIR/ns-tests-<pid>-<n>/<name>`, removed on drop.
pub struct Tree {
    base: PathBuf,
    root: PathBuf,
}

impl Tree {
    /// An empty directory named `name` (create what the test needs in it).
    pub fn empty(name: &str) -> Tree {
        remove_stale_trees_once();
        let n = TREE_SEQ.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("{PREFIX}{}-{n}", std::process::id()));
        if base.exists() {
            remove_tree(&base);
        }
        let root = base.join(name);
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        Tree { base, root }
    }

    /// A full busybox rootfs named `name` (busybox hard-linked from the fixture: cheap).
    pub fn rootfs(name: &str) -> Tree {
        let t = Tree::empty(name);
        build_rootfs_linked(&t.root);
        t
    }

    /// A merged-/usr busybox tree named `name` (see [`build_merged_usr_rootfs`]).
    pub fn merged_usr(name: &str) -> Tree {
        let t = Tree::empty(name);
        build_merged_usr_rootfs(&t.root);
        t
    }

    /// A tree that passes the checks on the root directory but has no programs: only usr/.
    pub fn bare(name: &str) -> Tree {
        let t = Tree::empty(name);
        fs::create_dir_all(t.root.join("usr")).unwrap();
        t
    }

    /// The tree's root (pass it to -D).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The root as a &str for argument lists.
    pub fn arg(&self) -> &str {
        self.root.to_str().expect("temp dir path is UTF-8")
    }

    /// Mark `cmd` as working on this tree: the stages inherit the variable, so
    /// [`procs_in`] finds them by their environment even before they enter the tree.
    pub fn tag<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("NS_TESTS_TREE", &self.root)
    }

    /// A scratch directory beside the root, for host-side files (bind sources, files
    /// that must not be a tree). Removed with the tree.
    pub fn host_dir(&self, name: &str) -> PathBuf {
        let d = self.base.join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// The directory holding the root and the host dirs (`$TMPDIR/ns-tests-<pid>-<n>`).
    pub fn base(&self) -> &Path {
        &self.base
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        remove_tree(&self.base);
    }
}

/// A loop device (`/dev/loopN`, its path) over a 1 MiB file of zeros in the tree's host
/// directory `loop`, detached on drop.
pub struct LoopDevice(pub String);

impl LoopDevice {
    pub fn new(t: &Tree) -> LoopDevice {
        // Inside the tree's directory, so that it goes with the tree (after the loop device,
        // which is declared after the tree and so dropped first).
        let file = t.host_dir("loop").join("disk.img");
        std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn remove_stale_trees_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(remove_stale_trees);
}

/// A path as &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("path is UTF-8")
}

// ---------------------------------------------------------------------------------------
// Running

/// What a finished command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code, or 128+N when killed by signal N.
    pub code: i32,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Fail unless the command exited 0 with an empty stderr; returns stdout.
    pub fn ok(&self) -> &str {
        assert!(
            self.code == 0 && self.stderr.is_empty(),
            "command failed: {self}"
        );
        &self.stdout
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} (signal {:?})\n--- stdout ---\n{}--- stderr ---\n{}---",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// `ns-run ARGS` with stdin from /dev/null; fails the test if it runs longer than
/// [`TIMEOUT`].
pub fn run(args: &[&str]) -> Output {
    let mut c = ns_run();
    c.args(args);
    run_cmd(c, None)
}

/// `ns-run ARGS` with `input` on stdin.
pub fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut c = ns_run();
    c.args(args);
    run_cmd(c, Some(input.as_bytes()))
}

/// Run any command (stdin from `input`, else /dev/null) with the timeout.
pub fn run_cmd(cmd: Command, input: Option<&[u8]>) -> Output {
    spawn(cmd, input).wait()
}

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
    OutEof,
    ErrEof,
}

/// A command running in the background, its output collected as it comes.
pub struct Running {
    child: Option<Child>,
    rx: Receiver<Chunk>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open: u8,
    cmdline: String,
}

/// Start `cmd` with stdout and stderr piped (stdin from `input`, else /dev/null).
pub fn spawn(mut cmd: Command, input: Option<&[u8]>) -> Running {
    let cmdline = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    if let (Some(data), Some(mut w)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let (tx, rx) = channel();
    let mut out = child.stdout.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx2.send(Chunk::Out(buf[..n].to_vec())).is_err() {
                break;
            }
        }
        let _ = tx2.send(Chunk::OutEof);
    });
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 || tx.send(Chunk::Err(buf[..n].to_vec())).is_err() {
                break;
            }
        }
        let _ = tx.send(Chunk::ErrEof);
    });
    Running {
        child: Some(child),
        rx,
        stdout: Vec::new(),
        stderr: Vec::new(),
        open: 2,
        cmdline,
    }
}

fn code_of(st: ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        (None, None) => (-1, None),
    }
}

impl Running {
    /// Host pid of the command.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("still running").id() as i32
    }

    /// Send signal `sig` to the command.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; the pid is our unreaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn pump(&mut self, wait: Duration) {
        match self.rx.recv_timeout(wait) {
            Ok(c) => self.take(c),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(c) = self.rx.try_recv() {
            self.take(c);
        }
    }

    fn take(&mut self, c: Chunk) {
        match c {
            Chunk::Out(b) => self.stdout.extend(b),
            Chunk::Err(b) => self.stderr.extend(b),
            Chunk::OutEof | Chunk::ErrEof => self.open -= 1,
        }
    }

    /// Stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Wait until stdout contains `needle`; false after `timeout` or at end of output.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if String::from_utf8_lossy(&self.stdout).contains(needle) {
                return true;
            }
            let now = Instant::now();
            if now >= end || self.open == 0 {
                return false;
            }
            self.pump((end - now).min(Duration::from_millis(20)));
        }
    }

    /// Is the command still running (not yet exited)?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Wait for the exit; after `timeout`, kill the command (SIGKILL) and return what it
    /// wrote as `Err`. Output still held open by leftover processes is not waited for
    /// beyond two seconds after the exit.
    pub fn wait_for(mut self, timeout: Duration) -> Result<Output, Output> {
        let end = Instant::now() + timeout;
        let mut child = self.child.take().expect("waited once");
        let (status, timed_out) = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break (st, false);
            }
            if Instant::now() >= end {
                let _ = child.kill();
                break (child.wait().expect("wait"), true);
            }
            self.pump(Duration::from_millis(5));
        };
        let grace = Instant::now() + Duration::from_secs(2);
        while self.open > 0 && Instant::now() < grace {
            self.pump(Duration::from_millis(20));
        }
        let (code, signal) = code_of(status);
        let out = Output {
            code,
            signal,
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
        };
        if timed_out {
            Err(out)
        } else {
            Ok(out)
        }
    }

    /// Wait for the exit; a command running longer than [`TIMEOUT`] fails the test.
    pub fn wait(self) -> Output {
        let cmdline = self.cmdline.clone();
        match self.wait_for(TIMEOUT) {
            Ok(o) => o,
            Err(o) => panic!("timed out after {TIMEOUT:?} (killed): {cmdline}\n{o}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Leak checks and host facts

/// Mount points of the host (this process's mount namespace), from
/// /proc/self/mountinfo, sorted.
pub fn mount_points() -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_octal))
        .collect();
    v.sort();
    v
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Processes (other than us) whose root directory is `root`, or whose command line or
/// environment names it: "PID: cmdline" for each.
pub fn procs_in(root: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let id = fs::metadata(root).ok().map(|m| (m.dev(), m.ino()));
    let needle = root.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        let p = e.path();
        let cmdline = fs::read(p.join("cmdline")).unwrap_or_default();
        let environ = fs::read(p.join("environ")).unwrap_or_default();
        let rooted = id.is_some()
            && fs::metadata(p.join("root"))
                .map(|m| Some((m.dev(), m.ino())) == id)
                .unwrap_or(false);
        let named = contains(&cmdline, needle) || contains(&environ, needle);
        if rooted || named {
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Wait up to `timeout` for no process to be left in `root`; returns those still there.
pub fn wait_no_procs_in(root: &Path, timeout: Duration) -> Vec<String> {
    let end = Instant::now() + timeout;
    loop {
        let left = procs_in(root);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Assert that nothing of a container is left: no process in `root` (after a short grace
/// period) and none of the mounts a test can make or leak ([`our_mounts`]) other than those
/// in `mounts_before` (taken with [`our_mounts`]).
pub fn assert_no_leak(root: &Path, mounts_before: &[String]) {
    let left = wait_no_procs_in(root, Duration::from_secs(3));
    assert!(
        left.is_empty(),
        "processes left in {}: {left:#?}",
        root.display()
    );
    assert_mounts_unchanged(mounts_before);
}

/// Assert that the mounts a test can make or leak ([`our_mounts`]) are what they were
/// (`before`, taken with [`our_mounts`]). What the rest of the host mounts meanwhile (a
/// container engine running beside the tests) does not count.
pub fn assert_mounts_unchanged(before: &[String]) {
    diff_mounts("mounts of the tests' objects", before, &our_mounts());
}

/// Assert the whole host mount table is what it was (`before`, taken with
/// [`mount_points`]): for the soak and fault tests, run where nothing else runs. Mounts
/// that tests make on the host on purpose ([`HostTmpfs`], possibly in a test running in
/// parallel) do not count, nor do named network namespaces (`/run/netns/*`, made by `ip
/// netns add`, e.g. by network tests running at the same time): no container of ours mounts
/// anything there.
pub fn assert_host_mounts_unchanged(before: &[String]) {
    let keep = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|m| !on_purpose(m))
            .filter(|m| !m.starts_with("/run/netns/"))
            .cloned()
            .collect()
    };
    diff_mounts("host mount table", &keep(before), &keep(&mount_points()));
}

fn diff_mounts(what: &str, before: &[String], after: &[String]) {
    let added: Vec<&String> = after.iter().filter(|m| !before.contains(m)).collect();
    let removed: Vec<&String> = before.iter().filter(|m| !after.contains(m)).collect();
    assert!(
        after == before,
        "{what} changed: added {added:?}, removed {removed:?}"
    );
}

/// Is `m` where a test of this process mounts a [`HostTmpfs`] on purpose?
fn on_purpose(m: &str) -> bool {
    HOST_MOUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|o| Path::new(m) == o)
}

/// The mounts (mount points, sorted) that a test of this process made or could leave on
/// the host: those whose mount point, root (what a bind mount shows) or source names one of
/// our trees (`$TMPDIR/ns-tests-<our pid>-*`, the roots and their host dirs) or the
/// toolkit's own state (`/run/ns-run`, rootless `ns-run-UID`, ns-oci's). Not in it: what
/// anything else mounts meanwhile (a container engine beside the tests, other test
/// processes' trees), named network namespaces, [`HostTmpfs`]es (mounted on purpose, perhaps
/// by a test running in parallel). The leak checks compare this; the soak and fault tests
/// compare the whole table ([`assert_host_mounts_unchanged`]).
pub fn our_mounts() -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (root, target) = (unescape_octal(f.get(3)?), unescape_octal(f.get(4)?));
            let sep = f.iter().position(|x| *x == "-")?;
            let source = unescape_octal(f.get(sep + 2).unwrap_or(&""));
            let named = [&root, &target, &source].iter().any(|x| names_ours(x));
            (named && !on_purpose(&target) && !target.starts_with("/run/netns/")).then_some(target)
        })
        .collect();
    v.sort();
    v
}

/// Does the path `p` name an object of this test process or of the toolkit?
fn names_ours(p: &str) -> bool {
    let tree = format!("/{PREFIX}{}-", std::process::id());
    p.contains(&tree)
        || Path::new(p).components().any(|c| {
            let c = c.as_os_str().to_string_lossy();
            c == "ns-run" || c == "ns-oci" || c.starts_with("ns-run-") || c.starts_with("ns-oci-")
        })
}

/// What is in a tree, entry by entry (symlinks not followed): relative path → type, mode,
/// owner, and size plus a content hash for files or the target for symlinks. Two equal
/// snapshots mean nothing was added, removed or changed (times are left out).
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use std::hash::{Hash, Hasher};
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let head = format!("{:o} {}:{}", md.mode(), md.uid(), md.gid());
            let desc = if md.file_type().is_symlink() {
                format!("{head} -> {}", fs::read_link(&p).unwrap().display())
            } else if md.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&p).unwrap_or_default().hash(&mut h);
                format!("{head} {} {:016x}", md.len(), h.finish())
            } else {
                head
            };
            out.insert(rel, desc);
            if md.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Assert that `dir` holds exactly what `before` recorded (see [`snapshot`]).
pub fn assert_snapshot_unchanged(dir: &Path, before: &std::collections::BTreeMap<String, String>) {
    let after = snapshot(dir);
    if &after != before {
        let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
            .map(|(k, v)| format!("{k}: {} => {v}", before[k]))
            .collect();
        panic!(
            "{} changed: added {added:?}, removed {removed:?}, changed {changed:?}",
            dir.display()
        );
    }
}

/// Where tests of this process mount on the host on purpose (never forgotten, so that a
/// parallel test's mount coming or going is no leak for the others).
static HOST_MOUNTS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A tmpfs mounted on the host for the duration of a test (a submount of a bind source);
/// unmounted (lazily) on drop, also when the test fails. The host mount table checks ignore
/// it.
pub struct HostTmpfs(PathBuf);

impl HostTmpfs {
    /// Not a tmpfs: `source` (a block device) mounted at `at` the same way, ignored by the
    /// mount table checks and unmounted on drop.
    pub fn mount_device(source: &str, at: &Path) -> HostTmpfs {
        HostTmpfs::mount_with(&[source], at)
    }

    pub fn mount(at: &Path) -> HostTmpfs {
        HostTmpfs::mount_with(&["-t", "tmpfs", "-o", "mode=0755,size=1m", "ns-tests"], at)
    }

    /// `mount ARGS AT`, registered first as made on purpose.
    fn mount_with(args: &[&str], at: &Path) -> HostTmpfs {
        fs::create_dir_all(at).unwrap();
        HOST_MOUNTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(at.to_path_buf());
        let out = Command::new("mount")
            .args(args)
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount {args:?} on {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        HostTmpfs(at.to_path_buf())
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Where ns-run journals what the monitor with pid `pid` must remove after its container.
pub fn cleanup_journal(pid: i32) -> PathBuf {
    Path::new("/run/ns-run/cleanup").join(pid.to_string())
}

/// The cleanup journal of a monitor that a test killed, removed on drop: also when the test
/// fails before an ns-run collected it (the tree it names goes with its [`Tree`]; declare the
/// guard after the tree). The (empty) cgroups it still names go with it, deepest first, so
/// that a failed test leaves none behind.
pub struct ForgetJournal(pub i32);

impl Drop for ForgetJournal {
    fn drop(&mut self) {
        let path = cleanup_journal(self.0);
        for line in fs::read_to_string(&path).unwrap_or_default().lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if e["cgroup"] == true {
                if let Some(dir) = e["path"].as_str() {
                    remove_cgroup_tree(Path::new(dir));
                }
            }
        }
        let _ = fs::remove_file(path);
    }
}

/// rmdir a cgroup and the cgroups below it, deepest first (only empty ones go).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// After monitors were killed (SIGKILL): run one more container on `root`, whose ns-run
/// collects what the dead monitors journaled, and assert that no journal of theirs is left.
pub fn assert_journals_collected(root: &Path, pids: &[i32]) {
    let out = run(&["-D", s(root), "true"]);
    assert_eq!(out.code, 0, "{out}");
    let left: Vec<PathBuf> = pids
        .iter()
        .map(|p| cleanup_journal(*p))
        .filter(|j| j.exists())
        .collect();
    assert!(left.is_empty(), "cleanup journals left: {left:?}");
}

/// `left()` once it is empty, else what it still gives after 5 s: what a container leaves
/// to be removed after ns-run exits (its cgroups, which a child of ns-run's removes once the
/// caller has the exit status, with their cleanup journal) goes soon after, not at once.
pub fn settled<T>(mut left: impl FnMut() -> Vec<T>) -> Vec<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let l = left();
        if l.is_empty() || std::time::Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The cgroups a monitor made (`ns-run-NAME-PID` in each hierarchy), from its journal.
pub fn cgroups_of_monitor(pid: i32) -> Vec<PathBuf> {
    fs::read_to_string(cleanup_journal(pid))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["cgroup"] == true)
        .filter_map(|v| v["path"].as_str().map(PathBuf::from))
        .collect()
}

/// Start `cmd` and wait until its stdout contains `needle` (the container runs); fails the
/// test after 10 s.
pub fn spawn_until(cmd: Command, needle: &str) -> Running {
    let mut r = spawn(cmd, None);
    assert!(
        r.wait_stdout(needle, Duration::from_secs(10)),
        "container did not print {needle:?}: {}; stderr: {}",
        r.stdout_so_far(),
        r.stderr_so_far()
    );
    r
}

/// `ns-run -D TREE OPTS -- sh -c SCRIPT`, tagged with the tree, to its end; nothing of it
/// may be left ([`assert_no_leak`]).
pub fn sh_in(t: &Tree, opts: &[&str], script: &str) -> Output {
    let before = our_mounts();
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-D", t.arg()])
        .args(opts)
        .args(["--", "sh", "-c", script]);
    let out = run_cmd(c, None);
    assert_no_leak(t.path(), &before);
    out
}

/// [`sh_in`] that must exit 0 with nothing on stderr; returns stdout.
pub fn sh_ok(t: &Tree, opts: &[&str], script: &str) -> String {
    let out = sh_in(t, opts, script);
    assert!(
        out.code == 0 && out.stderr.is_empty(),
        "ns-run {opts:?} sh -c {script:?} failed\n{out}"
    );
    out.stdout
}

/// A started container that is stopped when the guard goes, also when the test fails
/// (SIGTERM by default, or what [`Stopping::with`] says), and waited for: ns-run cleans up
/// as after any exit, where dropping the [`Running`] would SIGKILL the monitor and leave its
/// cleanup to the next start. [`Stopping::stop`] stops it and returns what it printed.
pub struct Stopping {
    running: Option<Running>,
    how: Box<dyn Fn(&Running)>,
}

impl Stopping {
    /// Stopped with SIGTERM.
    pub fn new(r: Running) -> Stopping {
        Stopping::with(r, |r| {
            // SAFETY: kill takes plain integers; the pid is our unreaped child.
            unsafe { libc::kill(r.pid(), libc::SIGTERM) };
        })
    }

    /// Stopped by `how` (e.g. writing the file its payload waits for). `how` must not
    /// panic: it also runs while a failed test unwinds.
    pub fn with(r: Running, how: impl Fn(&Running) + 'static) -> Stopping {
        Stopping {
            running: Some(r),
            how: Box::new(how),
        }
    }

    /// Stop it now and wait for its exit (longer than [`TIMEOUT`] fails the test).
    pub fn stop(mut self) -> Output {
        let r = self.running.take().expect("stopped once");
        (self.how)(&r);
        r.wait()
    }
}

impl std::ops::Deref for Stopping {
    type Target = Running;
    fn deref(&self) -> &Running {
        self.running.as_ref().expect("not stopped yet")
    }
}

impl std::ops::DerefMut for Stopping {
    fn deref_mut(&mut self) -> &mut Running {
        self.running.as_mut().expect("not stopped yet")
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            (self.how)(&r);
            let _ = r.wait_for(TIMEOUT);
        }
    }
}

/// Runs `F` when it goes, also when the test fails (cleanup of what a test started that is
/// no [`Running`]: an OCI container to reap and delete); [`Defer::now`] runs it at once.
/// `F` must not panic: it also runs while a failed test unwinds.
pub struct Defer<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Defer<F> {
    pub fn new(f: F) -> Defer<F> {
        Defer(Some(f))
    }

    /// Run it now.
    pub fn now(mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl<F: FnOnce()> Drop for Defer<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Run `cmd`, whose payload prints `ready` once set up and then sleeps; call `check` while
/// it runs (host-side checks), then stop the container with SIGTERM (ns-run exits 137 and
/// cleans up as after any exit). The container is stopped also when `check` fails.
pub fn while_running(cmd: Command, check: impl FnOnce()) -> Output {
    let r = Stopping::new(spawn_until(cmd, "ready"));
    check();
    let out = r.stop();
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    out
}

/// A hexadecimal field of /proc/PID/status text (`CapEff`, `CapBnd`...).
pub fn status_hex(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        u64::from_str_radix(v.trim(), 16).ok()
    })
}

/// A decimal field of /proc/PID/status text (`NoNewPrivs`...).
pub fn status_dec(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// The bounding set of this (host) process: what a container can keep at most.
pub fn host_cap_bnd() -> u64 {
    let st = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status_hex(&st, "CapBnd").expect("CapBnd in /proc/self/status")
}

/// `ID` and `VERSION_ID` of the host's os-release, as the runtime reads them.
pub fn host_os_release() -> (Option<String>, Option<String>) {
    let text = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
        })
    };
    (get("ID"), get("VERSION_ID"))
}

/// Is `s` a UUID as 8-4-4-4-12 lower-case hex digits?
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

/// Make `fd` (of this process) fd number `target` in the child, open across its exec.
pub fn pass_fd(cmd: &mut Command, fd: std::os::fd::RawFd, target: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only the child's fd table.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// PATH with the built binaries first (to run a printed chain of stages).
pub fn path_with_bins() -> std::ffi::OsString {
    let mut dirs = vec![bin_dir()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).expect("PATH")
}

/// Every cgroup directory of the host, four levels deep (the containers' sit beside the
/// tests' own, or under a slice).
pub fn cgroup_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                if depth < 3 {
                    todo.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

/// The levels of the running container `machine` (`ns-run-MACHINE-PID`, one per hierarchy):
/// where its limits and device policy are; its processes are in `payload` below each.
pub fn container_cgroups(machine: &str) -> Vec<PathBuf> {
    let prefix = format!("ns-run-{machine}-");
    cgroup_dirs()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

static NETNS_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of a test (`ip netns add ns-TAG-<our pid>-<n>`), with `lo` up,
/// deleted on drop (also when the test fails); containers whose network is wired run in it
/// ([`TestNetns::ns_run`]), never on the host's links.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    /// A fresh namespace; those that killed test processes left are deleted first.
    pub fn new(tag: &str) -> TestNetns {
        remove_stale_netns();
        let n = NETNS_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("ns-{tag}-{}-{n}", std::process::id());
        let out = Command::new(which("ip"))
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = TestNetns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `--net=/run/netns/NAME`, for nsenter.
    pub fn nsenter_arg(&self) -> String {
        format!("--net={}", self.path())
    }

    /// `ARGV` run inside the namespace (`nsenter --net=PATH ARGV`).
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new(which("nsenter"));
        c.arg(self.nsenter_arg()).args(argv);
        c
    }

    /// Run `ARGV` inside the namespace (with the tests' timeout).
    pub fn exec(&self, argv: &[&str]) -> Output {
        run_cmd(self.cmd(argv), None)
    }

    /// Run `ARGV` inside the namespace; it must succeed. Returns stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert_eq!(out.code, 0, "{argv:?} in {}: {out}", self.name);
        out.stdout
    }

    /// `ns-run -D TREE OPTS -- PAYLOAD` inside the namespace, as [`ns_run`] (unregistered)
    /// and tagged with the tree.
    pub fn ns_run(&self, tree: &Tree, opts: &[&str], payload: &[&str]) -> Command {
        let mut c = self.cmd(&[]);
        c.arg(bin("ns-run"))
            .arg("--register=no")
            .env_remove("NS_DEBUG")
            .env_remove("NS_STAGE_FDS");
        tree.tag(&mut c)
            .args(["-D", tree.arg()])
            .args(opts)
            .arg("--")
            .args(payload);
        c
    }

    /// The names of its links.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new(which("ip"))
            .args(["-n", &self.name, "-o", "link", "show"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        match Command::new(which("ip"))
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ns-tests: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("ns-tests: ip netns del {}: {e}", self.name),
        }
    }
}

/// Delete the namespaces of test processes that are gone (killed before their guards ran):
/// `ns-TAG-<pid>-<n>` with no process `pid`. Once per test process.
fn remove_stale_netns() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(dir) = fs::read_dir("/run/netns") else {
            return;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.rsplitn(3, '-');
            let (Some(n), Some(pid), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if tag.starts_with("ns-")
                && numeric(pid)
                && numeric(n)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = Command::new(which("ip"))
                    .args(["netns", "del", &name])
                    .status();
            }
        }
    });
}

/// A program of the host, by its absolute path (for commands run with another PATH).
pub fn which(prog: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/sbin".into(),
            "/bin".into(),
        ])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{prog} not found"))
}

/// A busybox tree whose /sbin/init runs `script` once at boot.
pub fn booting_tree(name: &str, script: &str) -> Tree {
    let t = Tree::rootfs(name);
    std::fs::create_dir_all(t.path().join("sbin")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", t.path().join("sbin/init")).unwrap();
    std::fs::write(
        t.path().join("etc/inittab"),
        "::sysinit:/bin/sh /etc/boot.sh\n",
    )
    .unwrap();
    std::fs::write(t.path().join("etc/boot.sh"), script).unwrap();
    t
}

/// A registered container `NAME` (returned; tagged `tag` and our pid) on a tree of its own
/// with ns-probe installed and a host directory bound at /out, run with `opts` and running
/// `ns-probe ptrace /out/stop`, up once it printed `ready`; stopped (the probe told to stop
/// through /out/stop) by [`Stopping::stop`] or on drop. Return the tree too: it must outlive
/// the container.
pub fn ptrace_watcher(tag: &str, opts: &[&str]) -> (Tree, String, Stopping) {
    let t = Tree::rootfs(tag);
    fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    let out = t.host_dir("out");
    let name = unique(tag);
    let mut c = ns_run_registered();
    t.tag(&mut c)
        .args(["-q", "-M", &name, "-D", t.arg()])
        .arg(format!("--bind={}:/out", out.display()))
        .args(opts)
        .args(["ns-probe", "ptrace", "/out/stop"]);
    let r = spawn_until(c, "ready");
    let stop = out.join("stop");
    let r = Stopping::with(r, move |_| {
        let _ = fs::write(&stop, "");
    });
    (t, name, r)
}

// ---------------------------------------------------------------------------------------
// OCI bundles and a fresh /run

/// An OCI bundle in `t`: busybox in `rootfs`, config.json from `ns-oci spec` running `args`
/// without a terminal, then `edit`. Returns config.json's path.
pub fn spec_bundle(t: &Tree, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    build_rootfs_linked(&t.path().join("rootfs"));
    let o = Command::new(bin("ns-oci"))
        .args(["spec", "--bundle", t.arg()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let path = t.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    v["process"]["args"] = serde_json::json!(args);
    v["process"]["terminal"] = serde_json::json!(false);
    edit(&mut v);
    fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    path
}

/// A user namespace in config.json `v`: container ids 0-65535 as host ids 200000 and up.
pub fn oci_userns(v: &mut serde_json::Value) {
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    v["linux"]["uidMappings"] = map.clone();
    v["linux"]["gidMappings"] = map;
}

/// `script` (sh -e) in a private mount namespace whose /run is a fresh, empty tmpfs (a
/// first run after boot, without touching the host's /run/ns-run), with $NS_RUN, $NS_CTL,
/// $BIN, the tree in $TREE and $BASE beside it. The script is a process group of its own:
/// what a fooled tool signals as "process 0" (a planted registry entry) stays inside it.
pub fn in_fresh_run(t: &Tree, script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("unshare");
    c.process_group(0);
    c.args(["-m", "--propagation", "private", "sh", "-ec"])
        .arg(format!(
            "mount -t tmpfs -o mode=0755,size=8m ns-tests /run\n{script}"
        ))
        .env_remove("NS_DEBUG")
        .env_remove("NS_STAGE_FDS")
        .env("NS_RUN", bin("ns-run"))
        .env("NS_CTL", bin("ns-ctl"))
        .env("BIN", bin_dir())
        .env("TREE", t.path())
        .env("BASE", t.base());
    run_cmd(c, None)
}

// ---------------------------------------------------------------------------------------
// Host users

/// A host user made for one test, removed again (with `userdel`) when dropped.
pub struct HostUser {
    pub name: String,
    pub uid: u32,
}

impl HostUser {
    pub fn new(tag: &str, home: &Path) -> HostUser {
        let name = format!("ns{tag}{}", std::process::id() % 100_000);
        let st = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", "-d"])
            .arg(home)
            .arg(&name)
            .status()
            .expect("run useradd");
        assert!(st.success(), "useradd {name} failed");
        let out = Command::new("id")
            .args(["-u", &name])
            .output()
            .expect("run id");
        let uid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("uid");
        HostUser { name, uid }
    }
}

impl Drop for HostUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

// ---------------------------------------------------------------------------------------
// OCI bundles driven through ns-oci (oci_runtime.rs, escapes_review17.rs)

/// The mount points on `dir` or below it, in this process's mount namespace (an OCI
/// container without a mount namespace makes its mounts there).
pub fn host_mounts_under(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(&dir))
        .map(String::from)
        .collect()
}

/// Reap our (adopted) child `pid`: its exit code, or 128+signal.
pub fn reap(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: waitpid on a pid, with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(r, pid, "waitpid {pid}");
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    }
}

/// Make this test process a child subreaper (a created container outlives `ns-oci create`
/// and is reparented to it, as under containerd's shim).
pub fn subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: prctl with integer arguments only.
    ONCE.call_once(|| assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0));
}

/// A bundle: busybox in `rootfs`, config.json from `ns-oci spec` with `args`, a writable
/// host directory bound at /out, then `edit`.
pub struct OciBundle {
    pub tree: Tree,
    /// A host directory for pid files and stdio (bound at /out, but by [`OciBundle::plain`]).
    pub out: PathBuf,
    /// The runtime's state root (`--root`).
    pub root: PathBuf,
}

/// A test that fails leaves no container behind: whatever its runtime root still knows is
/// deleted with --force (the created one waiting for start, its cgroups, its state).
impl Drop for OciBundle {
    fn drop(&mut self) {
        let ids = fs::read_dir(&self.root).into_iter().flatten().flatten();
        for id in ids.filter(|e| e.path().is_dir()) {
            let id = id.file_name().to_string_lossy().into_owned();
            let _ = self.cmd(&["delete", "--force", &id]).output();
        }
    }
}

impl OciBundle {
    pub fn new(name: &str, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> OciBundle {
        subreaper();
        let tree = Tree::empty(name);
        let out = tree.host_dir("out");
        let root = tree.host_dir("oci-root");
        spec_bundle(&tree, args, |v| {
            v["mounts"].as_array_mut().unwrap().push(
                serde_json::json!({"destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]}),
            );
            edit(v);
        });
        OciBundle { tree, out, root }
    }

    /// Like [`OciBundle::new`], without the /out mount.
    pub fn plain(
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> OciBundle {
        subreaper();
        let tree = Tree::empty(name);
        let out = tree.host_dir("out");
        let root = tree.host_dir("oci-root");
        spec_bundle(&tree, args, edit);
        OciBundle { tree, out, root }
    }

    pub fn dir(&self) -> &str {
        self.tree.arg()
    }

    /// `ns-oci --root R ARGS`, stdin from /dev/null.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("ns-oci"));
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// [`Bundle::cmd`] with no stdio of ours (for what outlives the command: it would hold
    /// our pipes); whether it succeeded.
    pub fn quiet(&self, args: &[&str]) -> bool {
        let mut c = self.cmd(args);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c.status().unwrap().success()
    }

    /// `ns-oci --root R ARGS`, stdout and stderr collected (for verbs that return).
    pub fn oci(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.cmd(args).output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into(),
            String::from_utf8_lossy(&o.stderr).into(),
        )
    }

    /// `create`: the container's stdio goes to files (it outlives the command).
    pub fn create(&self, id: &str) -> (i32, String) {
        let pid_file = self.out.join(format!("{id}.pid"));
        let log = |n: &str| fs::File::create(self.out.join(format!("{id}.{n}"))).unwrap();
        let st = Command::new(bin("ns-oci"))
            .arg("--root")
            .arg(&self.root)
            .args([
                "create",
                "--bundle",
                self.dir(),
                "--pid-file",
                s(&pid_file),
                id,
            ])
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .status()
            .unwrap();
        let err = fs::read_to_string(self.out.join(format!("{id}.stderr"))).unwrap();
        (st.code().unwrap_or(-1), err)
    }

    pub fn pid(&self, id: &str) -> i32 {
        fs::read_to_string(self.out.join(format!("{id}.pid")))
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        let (code, out, err) = self.oci(&["state", id]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    /// The status, or None while there is no record.
    pub fn status_if_any(&self, id: &str) -> Option<String> {
        let (code, out, _) = self.oci(&["state", id]);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        v["status"].as_str().map(String::from)
    }

    pub fn stdout_of(&self, id: &str) -> String {
        fs::read_to_string(self.out.join(format!("{id}.stdout"))).unwrap_or_default()
    }

    /// Create, start and reap container `id`: its exit status, stdout and stderr.
    pub fn run_to_end(&self, id: &str) -> (i32, String, String) {
        let (code, err) = self.create(id);
        assert_eq!(code, 0, "{err}");
        let pid = self.pid(id);
        assert_eq!(self.oci(&["start", id]).0, 0);
        let status = reap(pid);
        let err = fs::read_to_string(self.out.join(format!("{id}.stderr"))).unwrap_or_default();
        (status, self.stdout_of(id), err)
    }
}

// ---------------------------------------------------------------------------------------
// Nested guests: a booted Debian with systemd, D-Bus and machined, to run the toolkit inside

/// A Debian bookworm tree (`--variant=minbase --include=INCLUDE`) made with debootstrap once
/// and cached in /var/cache/ns-run/NAME (outside the repository). Containers run on it with
/// -x, so it never changes.
pub fn debian_cache(name: &str, include: &str) -> PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from("/var/cache/ns-run").join(name);
    if !dir.join("usr/lib/systemd/systemd").exists() {
        let tmp = dir.with_extension("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let st = Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={include}"),
                "bookworm",
            ])
            .arg(&tmp)
            .stdout(Stdio::null())
            .status()
            .expect("run debootstrap (apt-get install debootstrap)");
        assert!(st.success(), "debootstrap of {name} failed");
        fs::rename(&tmp, &dir).unwrap();
    }
    dir
}

/// Debian with systemd, dbus and systemd-container (machined, machinectl).
pub fn debian_machined() -> PathBuf {
    debian_cache("debian-machined", "systemd,dbus,systemd-container")
}

/// Where a [`Guest`] finds the toolkit's binaries (bound read-only from [`bin_dir`]).
pub const GUEST_BIN: &str = "/opt/ns/bin";

/// The cgroup layout a [`Guest`] gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestCgroups {
    /// As nspawn picks it for this host (hybrid here).
    Host,
    /// Pure cgroup2 (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`).
    Unified,
}

/// A booted Debian ([`debian_machined`], -x) under a registered `ns-run -b`: systemd as PID 1,
/// the system bus and machined inside, the toolkit's binaries at [`GUEST_BIN`] (read-only).
/// A host of another kind, for running the toolkit nested. Powered off on drop.
pub struct Guest {
    name: String,
    monitor: Option<Running>,
}

impl Guest {
    /// Boot a guest named `unique(tagN)` with `cgroups` and extra ns-run `args` (binds of the
    /// trees the test needs, say), and wait (bounded) until systemd reports `running`. A
    /// degraded guest fails the test with its failed units.
    pub fn boot(tag: &str, cgroups: GuestCgroups, args: &[&str]) -> Guest {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = unique(&format!("{tag}{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let mut c = ns_run_registered();
        match cgroups {
            GuestCgroups::Host => c.env_remove("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"),
            GuestCgroups::Unified => c.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1"),
        };
        c.args(["-q", "-x", "-b", "-M", &name, "-D"])
            .arg(debian_machined())
            .arg(format!("--bind-ro={}:{GUEST_BIN}", bin_dir().display()))
            .args(args);
        let mut g = Guest {
            name,
            monitor: Some(spawn(c, None)),
        };
        g.wait_running(Duration::from_secs(90));
        g
    }

    fn wait_running(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.sh("systemctl is-system-running 2>/dev/null");
            match state.stdout.trim() {
                "running" => return,
                "degraded" => panic!(
                    "guest {} degraded; failed units:\n{}",
                    self.name,
                    self.sh("systemctl --failed --no-legend").stdout
                ),
                _ => {}
            }
            let m = self.monitor.as_mut().expect("booting");
            if !m.is_running() {
                let out = self.monitor.take().unwrap().wait();
                panic!("guest {} exited while booting: {out}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "guest {} never reached running (last: {state})",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The machine name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host pid of the guest's monitor (ns-run).
    pub fn monitor_pid(&self) -> i32 {
        self.monitor.as_ref().expect("running").pid()
    }

    /// `sh -c script` as root inside the guest (through `ns-ctl shell`), with the toolkit on
    /// PATH; bounded by [`TIMEOUT`]·3.
    pub fn sh(&self, script: &str) -> Output {
        let mut c = stage("ns-ctl");
        c.args(["shell", "-E"])
            .arg(format!("PATH={GUEST_BIN}:{DEFAULT_PATH}"))
            .args([&self.name, "--", "/bin/sh", "-c", script]);
        match spawn(c, None).wait_for(TIMEOUT * 3) {
            Ok(o) => o,
            Err(o) => panic!("timed out in guest {}: {script}\n{o}", self.name),
        }
    }

    /// [`Guest::sh`] that must exit 0; its stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(out.code, 0, "in guest {}: {script}\n{out}", self.name);
        out.stdout
    }

    /// Power the guest off (as `ns-ctl poweroff`) and wait for its monitor: its output.
    pub fn poweroff(mut self) -> Output {
        self.stop()
    }

    fn stop(&mut self) -> Output {
        let Some(m) = self.monitor.take() else {
            return Output {
                code: 0,
                signal: None,
                stdout: String::new(),
                stderr: String::new(),
            };
        };
        let _ = stage("ns-ctl")
            .args(["poweroff", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match m.wait_for(Duration::from_secs(60)) {
            Ok(o) => o,
            Err(o) => panic!("guest {} did not power off: {o}", self.name),
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.monitor.is_some() && !std::thread::panicking() {
            self.stop();
        } else if let Some(m) = self.monitor.take() {
            let _ = stage("ns-ctl").args(["terminate", &self.name]).status();
            let _ = m.wait_for(Duration::from_secs(30));
        }
    }
}

// ---------------------------------------------------------------------------------------
// VM tests: what these kernels lack (device-mapper, SELinux), in Debian's kernel under qemu

/// Run `tests/vm/SCRIPT` (it boots a VM with the toolkit's binaries, runs its cases and
/// prints the serial console) and return the console; fails the test unless the VM got to
/// `VM-DONE`.
pub fn vm_console(script: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vm")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .arg(bin_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && console.contains("VM-DONE"),
        "the VM did not finish: {}\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    console
}

/// Case `name` of a VM console: its exit code (`CASE name rc=N`), its output lines (`  | `)
/// and what the line starting with `left` said after them (what the case left behind).
pub fn vm_case<'a>(console: &'a str, name: &str, left: &str) -> (i32, Vec<&'a str>, &'a str) {
    let head = format!("CASE {name} rc=");
    // (The console may hold terminal escapes before a line.)
    let mut lines = console.lines().skip_while(|l| !l.contains(&head));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no case {name}:\n{console}"));
    let after = &first[first.find(&head).expect("found") + head.len()..];
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    let rc = digits.parse().unwrap_or_else(|_| panic!("{first:?}"));
    let mut out = Vec::new();
    let mut rest = "";
    for l in lines {
        if let Some(o) = l.strip_prefix("  | ") {
            out.push(o);
        } else if let Some(d) = l.strip_prefix(left) {
            rest = d;
            break;
        }
    }
    (rc, out, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_owner_parses_our_names() {
        assert_eq!(tree_owner("ns-tests-rootfs-123"), Some(123));
        assert_eq!(tree_owner("ns-tests-45-7"), Some(45));
        assert_eq!(tree_owner("ns-tests-x"), None);
        assert_eq!(tree_owner("ns-tests-12x"), None);
        assert_eq!(tree_owner("other"), None);
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn status_fields() {
        let st = "CapEff:\t00000000fdecafff\nNoNewPrivs:\t1\n";
        assert_eq!(status_hex(st, "CapEff"), Some(0xfdecafff));
        assert_eq!(status_dec(st, "NoNewPrivs"), Some(1));
        assert_eq!(status_hex(st, "CapBnd"), None);
    }
}
