//! The OCI runtime under containerd: `ctr run --runc-binary RUNTIME`, so that containerd's
//! runc shim (containerd-shim-runc-v2) drives the runtime with runc's command line (create,
//! start, exec, ps, pause, resume, kill, update, delete).
//!
//! The runtime is `$NS_OCI_TEST_RUNTIME` when set (e.g. `$(command -v runc)` to check the
//! harness), else the built `ns-oci`. Every test starts its own containerd
//! (`tests/oci/containerd start`, about 0.1 s) in its own temporary directory, with its own
//! namespace (so its containers' cgroups, `/NAMESPACE/ID`, are its own), imports the busybox
//! image that `tests/oci/mkimage` builds once per test process, and stops it on drop
//! (`tests/oci/containerd stop`: shims killed, mounts undone, the directory removed), also
//! when the test fails. Before that, each test deletes its containers and checks that
//! nothing is left: no task, no container, no active snapshot, no mount, no cgroup of its
//! containers, no state in the runtime's root.
//!
//! ctr 1.6 has no `task update`: [`Containerd::update`] sends the Update request to the
//! task's shim itself (ttrpc on the shim's socket), which runs `RUNTIME update --resources -`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ns_tests::{mount_points, run_cmd, spawn, Output, Tree};

const IMAGE: &str = "localhost/ns-tests-busybox:1";
const WAIT: Duration = Duration::from_secs(10);
const PAYLOAD_SLEEP: &str = "sleep 1000";

// ---------------------------------------------------------------------------------------
// The runtime, the harness, the image

/// The runtime under test.
fn runtime() -> PathBuf {
    match std::env::var_os("NS_OCI_TEST_RUNTIME") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.is_absolute() && p.is_file(),
                "NS_OCI_TEST_RUNTIME={} is not an absolute path to a file",
                p.display()
            );
            p
        }
        _ => ns_tests::bin("ns-oci"),
    }
}

/// A script of the harness (tests/oci).
fn harness(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oci").join(name)
}

/// Fail with a clear message unless containerd and ctr are installed.
fn check_containerd() {
    static OK: OnceLock<()> = OnceLock::new();
    OK.get_or_init(|| {
        for tool in ["containerd", "ctr"] {
            let ok = Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                ok,
                "{tool} is not installed: the OCI tests need containerd (apt-get install containerd)"
            );
        }
    });
}

/// The image tarball (OCI layout), built once per test process next to the binaries.
fn image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let out = ns_tests::bin_dir().join("ns-tests-oci-busybox.tar");
        let mut c = Command::new(harness("mkimage"));
        c.arg(&out).arg(IMAGE).arg("/bin/sh");
        let o = run_cmd(c, None);
        assert!(o.code == 0 && out.is_file(), "mkimage failed: {o}");
        out
    })
}

// ---------------------------------------------------------------------------------------
// One containerd per test

/// A private containerd, stopped (and its directory removed) on drop.
struct Containerd {
    dir: PathBuf,
    ns: String,
    snapshotter: String,
    runtime: PathBuf,
    // Last: removed after the Drop of Containerd stopped containerd.
    _tree: Tree,
}

impl Containerd {
    fn start() -> Containerd {
        check_containerd();
        let runtime = runtime();
        let tar = image_tar();
        let tree = Tree::empty("ctd");
        let dir = tree.path().to_path_buf();
        // The namespace names the containers' cgroups (/NS/ID): one per test, as the tree.
        let ns = tree
            .base()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut c = Command::new(harness("containerd"));
        c.arg("start").arg(&dir);
        let t0 = Instant::now();
        let o = run_cmd(c, None);
        let took = t0.elapsed();
        let mut d = Containerd {
            snapshotter: String::new(),
            dir,
            ns,
            runtime,
            _tree: tree,
        };
        assert_eq!(o.code, 0, "containerd start failed: {o}");
        eprintln!("containerd started in {took:?} ({})", d.dir.display());
        d.snapshotter = fs::read_to_string(d.dir.join("snapshotter"))
            .expect("DIR/snapshotter")
            .trim()
            .to_string();
        let o = d.ctr(&["images", "import", "--snapshotter", &d.snapshotter, s(tar)]);
        assert_eq!(o.code, 0, "image import: {o}");
        let o = d.ctr(&["images", "ls", "-q"]);
        assert!(
            o.stdout.lines().any(|l| l == IMAGE),
            "image not imported: {o}"
        );
        d
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `ctr --address SOCK -n NS` as a Command.
    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        for v in [
            "CONTAINERD_ADDRESS",
            "CONTAINERD_NAMESPACE",
            "CONTAINERD_SNAPSHOTTER",
        ] {
            c.env_remove(v);
        }
        c.arg("--address")
            .arg(self.sock())
            .args(["-n", &self.ns])
            .args(args);
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run_cmd(self.ctr_cmd(args), None)
    }

    fn ctr_stdin(&self, args: &[&str], input: &str) -> Output {
        run_cmd(self.ctr_cmd(args), Some(input.as_bytes()))
    }

    /// Where runc-compatible runtimes keep the state of this namespace's containers
    /// (`--runc-root`; the shim passes `--root ROOT/NS`).
    fn runtime_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// `run` with our runtime, snapshotter, runtime root and fifo directory, then `opts`,
    /// the image, `id` and the command.
    fn run_args(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--snapshotter".into(),
            self.snapshotter.clone(),
            "--runc-binary".into(),
            s(&self.runtime).into(),
            "--runc-root".into(),
            s(&self.runtime_root()).into(),
            "--fifo-dir".into(),
            s(&self.dir.join("fifo")).into(),
        ];
        a.extend(opts.iter().map(|o| o.to_string()));
        a.push(IMAGE.into());
        a.push(id.into());
        a.extend(cmd.iter().map(|o| o.to_string()));
        a
    }

    /// `ctr run` in the foreground (attached): its output and exit code.
    fn run(&self, opts: &[&str], id: &str, cmd: &[&str], stdin: Option<&str>) -> Output {
        let a = self.run_args(opts, id, cmd);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_cmd(self.ctr_cmd(&a), stdin.map(str::as_bytes))
    }

    /// The log file of a detached container (its stdout and stderr).
    fn log(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// `ctr run -d` (stdout and stderr to [`Self::log`]); waits until the log holds
    /// `ready`; returns the task's host pid.
    fn run_detached(&self, opts: &[&str], id: &str, script: &str) -> i32 {
        let uri = format!("file://{}", self.log(id).display());
        let mut all = vec!["-d", "--log-uri", &uri];
        all.extend(opts);
        let a = self.run_args(&all, id, &["sh", "-c", script]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = run_cmd(self.ctr_cmd(&a), None);
        assert_eq!(o.code, 0, "ctr run -d: {o}");
        self.wait_log(id, "ready");
        let (pid, status) = self.task(id).unwrap_or_else(|| panic!("no task {id}"));
        assert_eq!(status, "RUNNING", "{id} after ctr run -d");
        assert!(pid > 0, "task pid {pid}");
        pid
    }

    fn wait_log(&self, id: &str, needle: &str) {
        let end = Instant::now() + WAIT;
        loop {
            let text = fs::read_to_string(self.log(id)).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{id} did not log {needle:?}: {text:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ctr task ls`: id → (pid, status).
    fn tasks(&self) -> Vec<(String, i32, String)> {
        let o = self.ctr(&["tasks", "ls"]);
        assert_eq!(o.code, 0, "ctr tasks ls: {o}");
        o.stdout
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[0].to_string(), f[1].parse().unwrap_or(-1), f[2].into()))
            })
            .collect()
    }

    fn task(&self, id: &str) -> Option<(i32, String)> {
        self.tasks()
            .into_iter()
            .find(|t| t.0 == id)
            .map(|t| (t.1, t.2))
    }

    /// Wait until `ctr task ls` shows `id` with `status`.
    fn wait_status(&self, id: &str, status: &str) {
        let end = Instant::now() + WAIT;
        loop {
            let t = self.task(id);
            if t.as_ref().is_some_and(|t| t.1 == status) {
                return;
            }
            assert!(
                Instant::now() < end,
                "task {id} not {status}: {t:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ctr task delete ID` of a stopped task: its stderr (which names a non-zero exit code).
    fn delete_task(&self, id: &str) -> String {
        let o = self.ctr(&["tasks", "delete", id]);
        assert_eq!(o.code, 0, "ctr tasks delete {id}: {o}");
        assert!(
            self.task(id).is_none(),
            "task {id} still listed after delete"
        );
        o.stderr
    }

    /// `ctr container delete ID`, then check that the runtime kept no state of it.
    /// SIGKILL the task `id`, wait until it is stopped, delete it and its container.
    fn kill_and_remove(&self, id: &str) {
        let o = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        assert_eq!(o.code, 0, "{o}");
        self.wait_status(id, "STOPPED");
        self.delete_task(id);
        self.delete_container(id);
    }

    fn delete_container(&self, id: &str) {
        let o = self.ctr(&["containers", "delete", id]);
        assert_eq!(o.code, 0, "ctr containers delete {id}: {o}");
        let o = self.ctr(&["containers", "ls", "-q"]);
        assert!(
            !o.stdout.lines().any(|l| l == id),
            "container {id} still listed: {o}"
        );
        let root = self.runtime_root().join(&self.ns);
        let left: Vec<String> = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(id))
            .collect();
        assert!(
            left.is_empty(),
            "runtime state left in {}: {left:?}",
            root.display()
        );
    }

    /// Nothing of any container left: no task, no container, no active snapshot, no mount
    /// under our directory.
    fn assert_clean(&self) {
        assert!(self.tasks().is_empty(), "tasks left: {:?}", self.tasks());
        let o = self.ctr(&["containers", "ls", "-q"]);
        assert!(o.stdout.trim().is_empty(), "containers left: {o}");
        let o = self.ctr(&["snapshots", "--snapshotter", &self.snapshotter, "ls"]);
        assert_eq!(o.code, 0, "ctr snapshots ls: {o}");
        let active: Vec<&str> = o
            .stdout
            .lines()
            .skip(1)
            .filter(|l| !l.trim_end().ends_with("Committed"))
            .collect();
        assert!(active.is_empty(), "snapshots left: {active:?}");
        let mounts: Vec<String> = mount_points()
            .into_iter()
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }

    /// The end of containerd's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!("--- containerd.log (end) ---\n{}", lines[from..].join("\n"))
    }

    /// The task's shim socket (`unix://...` in the bundle's `address` file).
    fn shim_socket(&self, id: &str) -> PathBuf {
        let f = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
            .join("address");
        let a = fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        PathBuf::from(a.trim().strip_prefix("unix://").unwrap_or(a.trim()))
    }

    /// Update the task's resources (a JSON `LinuxResources`) through its shim, as
    /// containerd's Tasks.Update would: the shim runs `RUNTIME update --resources - ID`.
    fn update(&self, id: &str, resources_json: &str) -> Result<(), String> {
        let any = [
            ttrpc::string(
                1,
                "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            ),
            ttrpc::bytes(2, resources_json.as_bytes()),
        ]
        .concat();
        let req = [ttrpc::string(1, id), ttrpc::bytes(2, &any)].concat();
        ttrpc::call(
            &self.shim_socket(id),
            "containerd.task.v2.Task",
            "Update",
            &req,
            &self.ns,
        )
        .map(|_| ())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut c = Command::new(harness("containerd"));
        c.arg("stop").arg(&self.dir);
        let t0 = Instant::now();
        let o = run_cmd(c, None);
        if o.code != 0 {
            eprintln!("containerd stop {}: {o}", self.dir.display());
        } else {
            eprintln!("containerd stopped in {:?}", t0.elapsed());
        }
        // The runtime made /NS in each hierarchy for our containers' cgroups: remove it
        // (empty once the containers are deleted; rmdir never removes a populated cgroup).
        for h in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(h.path().join(&self.ns));
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.ns));
        if !std::thread::panicking() {
            assert_eq!(o.code, 0, "containerd stop failed: {o}");
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------
// Host views of a container

/// The host's cgroup directories of `pid`, one per hierarchy that has one (not the root).
fn cgroup_dirs_of(pid: i32) -> Vec<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    let v2_root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let rel = path.trim_start_matches('/');
            if rel.is_empty() {
                return None;
            }
            let base = if ctrls.is_empty() {
                v2_root.clone()
            } else {
                Path::new("/sys/fs/cgroup").join(ctrls.trim_start_matches("name="))
            };
            Some(base.join(rel))
        })
        .filter(|d| d.is_dir())
        .collect()
}

/// The directory of `pid`'s cgroup that has `file` (a v1 hierarchy of the controller or
/// the cgroup2 tree).
fn cgroup_file(pid: i32, files: &[&str]) -> PathBuf {
    let dirs = cgroup_dirs_of(pid);
    dirs.iter()
        .flat_map(|d| files.iter().map(move |f| d.join(f)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("none of {files:?} in the cgroups of {pid}: {dirs:?}"))
}

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// `pid`'s memory limit: memory.limit_in_bytes (v1) or memory.max (v2).
fn memory_limit(pid: i32) -> String {
    read_trim(&cgroup_file(pid, &["memory.limit_in_bytes", "memory.max"]))
}

/// Is `pid`'s cgroup frozen (v1 freezer.state FROZEN, v2 cgroup.freeze 1)?
fn frozen(pid: i32) -> bool {
    let p = cgroup_file(pid, &["freezer.state", "cgroup.freeze"]);
    matches!(read_trim(&p).as_str(), "FROZEN" | "1")
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// Wait until none of `dirs` exists (the runtime removes a container's cgroups on delete).
fn assert_gone(dirs: &[PathBuf]) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "cgroups left after delete: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_pid_gone(pid: i32) {
    let end = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if st
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            return;
        }
        assert!(Instant::now() < end, "process {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// A minimal ttrpc client (containerd's shim protocol): 10-byte header (length, stream id,
// type, flags; big-endian) and protobuf messages, encoded by hand.

mod ttrpc {
    use super::*;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A length-delimited field.
    pub fn bytes(field: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, field << 3 | 2);
        varint(&mut out, data.len() as u64);
        out.extend_from_slice(data);
        out
    }

    pub fn string(field: u64, s: &str) -> Vec<u8> {
        bytes(field, s.as_bytes())
    }

    /// A field's value: a varint or length-delimited bytes (other wire types are unused).
    enum Value {
        Varint(u64),
        Bytes(Vec<u8>),
    }

    /// The fields of a message: (number, value).
    fn parse(mut b: &[u8]) -> Result<Vec<(u64, Value)>, String> {
        fn rd(b: &mut &[u8]) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (&x, rest) = b.split_first().ok_or("truncated varint")?;
                *b = rest;
                v |= u64::from(x & 0x7f) << shift;
                if x & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("varint too long".into())
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = rd(&mut b)?;
            match key & 7 {
                0 => out.push((key >> 3, Value::Varint(rd(&mut b)?))),
                2 => {
                    let n = rd(&mut b)? as usize;
                    if n > b.len() {
                        return Err("truncated field".into());
                    }
                    out.push((key >> 3, Value::Bytes(b[..n].to_vec())));
                    b = &b[n..];
                }
                w => return Err(format!("wire type {w} unexpected")),
            }
        }
        Ok(out)
    }

    /// Call `service`/`method` with `payload` on the ttrpc server at `socket`; the
    /// response's payload, or its status as an error.
    pub fn call(
        socket: &Path,
        service: &str,
        method: &str,
        payload: &[u8],
        namespace: &str,
    ) -> Result<Vec<u8>, String> {
        let md = [
            string(1, "containerd-namespace-ttrpc"),
            string(2, namespace),
        ]
        .concat();
        let req = [
            string(1, service),
            string(2, method),
            bytes(3, payload),
            bytes(5, &md),
        ]
        .concat();
        let mut conn = UnixStream::connect(socket)
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut msg = Vec::with_capacity(10 + req.len());
        msg.extend_from_slice(&(req.len() as u32).to_be_bytes());
        msg.extend_from_slice(&1u32.to_be_bytes()); // stream 1
        msg.extend_from_slice(&[1, 0]); // request, no flags
        msg.extend_from_slice(&req);
        conn.write_all(&msg).map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 10];
        conn.read_exact(&mut head)
            .map_err(|e| format!("read response header: {e}"))?;
        let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        if head[8] != 2 {
            return Err(format!("message type {} is not a response", head[8]));
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .map_err(|e| format!("read response: {e}"))?;
        let mut payload = Vec::new();
        for (n, v) in parse(&body)? {
            match (n, v) {
                (1, Value::Bytes(status)) => {
                    let mut code = 0;
                    let mut message = String::new();
                    for (n, v) in parse(&status)? {
                        match (n, v) {
                            (1, Value::Varint(c)) => code = c,
                            (2, Value::Bytes(m)) => {
                                message = String::from_utf8_lossy(&m).into_owned()
                            }
                            _ => {}
                        }
                    }
                    if code != 0 {
                        return Err(format!("{service}.{method}: code {code}: {message}"));
                    }
                }
                (2, Value::Bytes(p)) => payload = p,
                _ => {}
            }
        }
        Ok(payload)
    }
}

// ---------------------------------------------------------------------------------------
// The tests

/// `ctr run` to completion: the payload's exit code is ctr's, stdout and stderr pass
/// through, stdin too; `--rm` leaves nothing.
#[test]
fn run_to_completion() {
    let d = Containerd::start();
    let t0 = Instant::now();
    let o = d.run(
        &["--rm"],
        "exit7",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        None,
    );
    eprintln!("ctr run --rm (exit 7) took {:?}", t0.elapsed());
    assert_eq!(o.code, 7, "{o}");
    assert_eq!(o.stdout, "out\n", "{o}");
    assert!(o.stderr.contains("err"), "{o}");

    // Stdin reaches the payload. Only a line: ctr 1.6 closes the task's stdin at EOF only
    // when the EOF comes after the task started (a race in ctr), so no payload may wait
    // for EOF.
    let o = d.run(
        &["--rm"],
        "stdin",
        &["sh", "-c", "read l; echo \"$l\" | tr a-z A-Z"],
        Some("hello\n"),
    );
    assert_eq!((o.code, o.stdout.as_str()), (0, "HELLO\n"), "{o}");

    // The image's default command (/bin/sh) reads its script from stdin.
    let o = d.run(&["--rm"], "default", &[], Some("echo $0 $$; exit 3\n"));
    assert_eq!((o.code, o.stdout.as_str()), (3, "/bin/sh 1\n"), "{o}");

    // Without --rm, the stopped container stays until deleted.
    let o = d.run(&[], "keep", &["true"], None);
    assert_eq!(o.code, 0, "{o}");
    assert!(d.task("keep").is_none(), "ctr run deletes its task");
    d.delete_container("keep");
    d.assert_clean();
}

/// `ctr run -d`: the task runs (RUNNING, a host pid running the payload, in the cgroup
/// /NS/ID), is killed, deleted, and its cgroups go with it.
#[test]
fn detached_run_and_delete() {
    let d = Containerd::start();
    let pid = d.run_detached(
        &[],
        "detached",
        &format!("echo ready; exec {PAYLOAD_SLEEP}"),
    );
    assert_eq!(cmdline(pid), PAYLOAD_SLEEP);
    let cgroups = cgroup_dirs_of(pid);
    let suffix = Path::new(&d.ns).join("detached");
    assert!(
        !cgroups.is_empty() && cgroups.iter().all(|c| c.ends_with(&suffix)),
        "cgroups of the task: {cgroups:?}"
    );
    assert_eq!(fs::read_to_string(d.log("detached")).unwrap(), "ready\n");
    // A container's id is taken while it exists.
    let a = d.run_args(&["-d"], "detached", &["true"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = d.ctr(&a);
    assert_ne!(o.code, 0, "second container with the same id: {o}");

    let o = d.ctr(&["tasks", "kill", "-s", "SIGKILL", "detached"]);
    assert_eq!(o.code, 0, "{o}");
    d.wait_status("detached", "STOPPED");
    assert_pid_gone(pid);
    let err = d.delete_task("detached");
    assert!(err.contains("exit code 137"), "task delete: {err}");
    assert_gone(&cgroups);
    d.delete_container("detached");
    d.assert_clean();
}

/// `ctr task exec`: a process in the container's namespaces (same files, the payload as
/// pid 1), its output and exit code; stdin; an exec id in use is refused.
#[test]
fn exec_in_running_task() {
    let d = Containerd::start();
    d.run_detached(
        &[],
        "exec",
        &format!("echo from-init > /tmp/marker; echo ready; exec {PAYLOAD_SLEEP}"),
    );
    let fifo = d.dir.join("fifo");
    let o = d.ctr(&[
        "tasks",
        "exec",
        "--fifo-dir",
        s(&fifo),
        "--exec-id",
        "e1",
        "exec",
        "sh",
        "-c",
        "cat /tmp/marker; tr '\\0' ' ' </proc/1/cmdline; echo; echo err >&2; exit 5",
    ]);
    assert_eq!(o.code, 5, "{o}");
    assert_eq!(o.stdout, format!("from-init\n{PAYLOAD_SLEEP} \n"), "{o}");
    assert!(o.stderr.contains("err"), "{o}");

    let o = d.ctr_stdin(
        &[
            "tasks",
            "exec",
            "--fifo-dir",
            s(&fifo),
            "--exec-id",
            "e2",
            "exec",
            "sh",
            "-c",
            "read line; echo got $line; id -u",
        ],
        "data\n",
    );
    assert_eq!((o.code, o.stdout.as_str()), (0, "got data\n0\n"), "{o}");

    // A running exec holds its id.
    let c = d.ctr_cmd(&[
        "tasks",
        "exec",
        "--fifo-dir",
        s(&fifo),
        "--exec-id",
        "long",
        "exec",
        "sh",
        "-c",
        "echo ready; exec sleep 1001",
    ]);
    let mut long = spawn(c, None);
    assert!(
        long.wait_stdout("ready", WAIT),
        "exec did not start: {}",
        long.stdout_so_far()
    );
    let o = d.ctr(&[
        "tasks",
        "exec",
        "--fifo-dir",
        s(&fifo),
        "--exec-id",
        "long",
        "exec",
        "true",
    ]);
    assert_ne!(o.code, 0, "exec id in use was accepted: {o}");
    // Killing the exec process ends its ctr with the signal's status.
    let o = d.ctr(&[
        "tasks",
        "kill",
        "--exec-id",
        "long",
        "-s",
        "SIGKILL",
        "exec",
    ]);
    assert_eq!(o.code, 0, "{o}");
    let o = long.wait();
    assert_eq!(o.code, 137, "{o}");
    assert_eq!(d.task("exec").map(|t| t.1), Some("RUNNING".into()));

    d.kill_and_remove("exec");
    d.assert_clean();
}

/// `ctr task exec -t` (the shim runs `exec --detach --console-socket`, ctr here under
/// `script` for a terminal of its own): the process gets a pty, leads a session of its own
/// with it as controlling terminal, in the container's PID namespace; its exit code comes
/// back through the shim, which reaps it.
#[test]
fn exec_with_a_terminal() {
    let d = Containerd::start();
    d.run_detached(
        &[],
        "exec-tty",
        &format!("echo ready; exec {PAYLOAD_SLEEP}"),
    );
    let ctr = d.ctr_cmd(&[
        "tasks",
        "exec",
        "-t",
        "--exec-id",
        "t1",
        "exec-tty",
        "sh",
        "-c",
        "tty; echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$ pgrp=$(cut -d' ' -f8 /proc/$$/stat); exit 3",
    ]);
    let line: Vec<String> = std::iter::once(ctr.get_program())
        .chain(ctr.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect();
    let mut c = Command::new("script");
    c.args(["-qec", &line.join(" "), "/dev/null"]);
    let o = run_cmd(c, None);
    assert_eq!(o.code, 3, "ctr exec -t: {o}");
    assert!(o.stdout.contains("/dev/pts/"), "{o}");
    let ids = o
        .stdout
        .lines()
        .find_map(|l| Some(l.split_once("sid=")?.1))
        .unwrap_or_else(|| panic!("no ids: {o}"));
    let ids: Vec<&str> = ids
        .split(|c: char| c == '=' || c.is_whitespace())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(ids.len(), 3, "{o}");
    assert!(ids.iter().all(|i| *i == ids[0]), "not its own session: {o}");
    assert_ne!(ids[0], "1", "{o}");
    d.kill_and_remove("exec-tty");
    d.assert_clean();
}

/// `ctr task ps`: every process of the container, by host pid; `kill --all` ends them all.
#[test]
fn ps_and_kill_all() {
    let d = Containerd::start();
    let pid = d.run_detached(&[], "ps", "sleep 1001 & sleep 1002 & echo ready; wait");
    let end = Instant::now() + WAIT;
    let pids: Vec<i32> = loop {
        let o = d.ctr(&["tasks", "ps", "ps"]);
        assert_eq!(o.code, 0, "{o}");
        assert!(o.stdout.starts_with("PID"), "{o}");
        let pids: Vec<i32> = o
            .stdout
            .lines()
            .skip(1)
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bad ps line {l:?}"))
            })
            .collect();
        if pids.len() >= 3 || Instant::now() >= end {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut cmds: Vec<String> = pids.iter().map(|p| cmdline(*p)).collect();
    cmds.sort();
    assert_eq!(
        cmds,
        [
            "sh -c sleep 1001 & sleep 1002 & echo ready; wait",
            "sleep 1001",
            "sleep 1002"
        ],
        "pids {pids:?}"
    );
    assert!(pids.contains(&pid), "task pid {pid} not in {pids:?}");

    let o = d.ctr(&["tasks", "kill", "--all", "-s", "SIGKILL", "ps"]);
    assert_eq!(o.code, 0, "{o}");
    d.wait_status("ps", "STOPPED");
    for p in &pids {
        assert_pid_gone(*p);
    }
    let err = d.delete_task("ps");
    assert!(err.contains("exit code 137"), "task delete: {err}");
    d.delete_container("ps");
    d.assert_clean();
}

/// `ctr task pause` / `resume`: PAUSED with the cgroup frozen and the payload not running,
/// then RUNNING again.
#[test]
fn pause_and_resume() {
    let d = Containerd::start();
    let pid = d.run_detached(
        &[],
        "pause",
        "i=0; while :; do i=$((i+1)); echo $i >/tmp/n; [ $i = 3 ] && echo ready; sleep 0.02; done",
    );
    let counter = PathBuf::from(format!("/proc/{pid}/root/tmp/n"));
    let count = || -> u64 { read_trim(&counter).parse().unwrap_or(0) };

    let o = d.ctr(&["tasks", "pause", "pause"]);
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(d.task("pause").map(|t| t.1), Some("PAUSED".into()));
    assert!(frozen(pid), "cgroup of {pid} not frozen");
    let n = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), n, "the payload ran while paused");

    let o = d.ctr(&["tasks", "resume", "pause"]);
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(d.task("pause").map(|t| t.1), Some("RUNNING".into()));
    assert!(!frozen(pid), "cgroup of {pid} still frozen");
    let end = Instant::now() + WAIT;
    while count() <= n {
        assert!(
            Instant::now() < end,
            "the payload did not run on after resume"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    d.kill_and_remove("pause");
    d.assert_clean();
}

/// `ctr task kill`: SIGTERM (the default) reaches the payload's handler, whose exit code
/// the attached `ctr run` returns; SIGKILL stops a payload that ignores SIGTERM (137).
#[test]
fn kill_signals() {
    let d = Containerd::start();
    let a = d.run_args(
        &[],
        "term",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut attached = spawn(d.ctr_cmd(&a), None);
    assert!(
        attached.wait_stdout("ready", WAIT),
        "container did not start: {}\n{}",
        attached.stdout_so_far(),
        d.log_tail()
    );
    let o = d.ctr(&["tasks", "kill", "term"]);
    assert_eq!(o.code, 0, "{o}");
    let o = attached.wait();
    assert_eq!(o.code, 42, "{o}");
    assert_eq!(o.stdout, "ready\ngot-term\n", "{o}");
    d.delete_container("term");

    // sh as pid 1 without a handler ignores SIGTERM; SIGKILL cannot be ignored.
    let pid = d.run_detached(&[], "kill", "echo ready; while :; do sleep 0.05; done");
    let o = d.ctr(&["tasks", "kill", "-s", "SIGTERM", "kill"]);
    assert_eq!(o.code, 0, "{o}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.task("kill").map(|t| t.1), Some("RUNNING".into()));
    let o = d.ctr(&["tasks", "kill", "-s", "SIGKILL", "kill"]);
    assert_eq!(o.code, 0, "{o}");
    d.wait_status("kill", "STOPPED");
    assert_pid_gone(pid);
    let err = d.delete_task("kill");
    assert!(err.contains("exit code 137"), "task delete: {err}");
    d.delete_container("kill");
    d.assert_clean();
}

/// `ctr run --memory-limit` sets the container's memory cgroup; an Update of the task's
/// resources (through its shim: `RUNTIME update --resources -`) changes it and the pids
/// limit, seen in the task's cgroups on the host.
#[test]
fn update_resources() {
    let d = Containerd::start();
    let pid = d.run_detached(
        &["--memory-limit", "268435456"],
        "update",
        &format!("echo ready; exec {PAYLOAD_SLEEP}"),
    );
    assert_eq!(memory_limit(pid), "268435456");

    let t0 = Instant::now();
    let r = d.update(
        "update",
        r#"{"memory":{"limit":67108864},"pids":{"limit":99}}"#,
    );
    eprintln!("update took {:?}", t0.elapsed());
    r.unwrap_or_else(|e| panic!("update: {e}\n{}", d.log_tail()));
    assert_eq!(memory_limit(pid), "67108864");
    assert_eq!(read_trim(&cgroup_file(pid, &["pids.max"])), "99");
    assert_eq!(d.task("update").map(|t| t.1), Some("RUNNING".into()));

    // An update of a container that does not exist fails.
    let err = ttrpc::call(
        &d.shim_socket("update"),
        "containerd.task.v2.Task",
        "Update",
        &[ttrpc::string(1, "nonexistent"), ttrpc::bytes(2, &[])].concat(),
        &d.ns,
    );
    assert!(err.is_err(), "update of an unknown container: {err:?}");

    d.kill_and_remove("update");
    d.assert_clean();
}

#[test]
fn containerds_default_seccomp_profile() {
    let d = Containerd::start();
    // `ctr run --seccomp`: containerd's own default profile (errno by default, an allow
    // list, calls allowed by their arguments: clone without namespace flags).
    let o = d.run(
        &["--rm", "--seccomp"],
        "seccomp",
        &[
            "sh",
            "-c",
            "grep ^Seccomp: /proc/self/status; unshare -U true 2>/dev/null || echo unshare-denied; \
             echo forked $(echo child)",
        ],
        None,
    );
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "Seccomp:\t2\nunshare-denied\nforked child\n"),
        "{o}"
    );
    d.assert_clean();
}
