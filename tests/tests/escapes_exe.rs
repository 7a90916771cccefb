//! Design constraint 9: no process that a container can see ever has a host file of ours as
//! its exe or in its fd table (runc's CVE-2019-5736). A container process runs the attack
//! (`ns-probe grab`: every /proc/PID/exe and /proc/PID/fd/N opened O_PATH, reopened for
//! writing through /proc/self/fd, again while the file is busy) while the host enters the
//! container again and again: `ns-ctl shell` into ns-run containers (plain and `-a`, default
//! and `-U`), `ns-oci exec` into a running container, a created OCI container waiting for
//! `start` (default and with a user namespace), and members joining a pod's PID namespace
//! (ns-oci and `ns-run --oci-bundle`). Also here: `ns-ctl shell` waits for the payload
//! (`starting`) and enters the namespaces PID 1 started in after it left them; and no
//! process of `ns-ctl shell` or `ns-oci exec` that the container can see (and ptrace, as
//! container root can without -U) is ever more privileged than the container, or holds
//! more than stdio (`ns-probe ptrace`: stop, look, detach; default and -U).
//!
//! On the code before the fix the attack writes into the binaries it grabs. So the binaries
//! under test are copies in the test's own directory (never target/'s), the probe writes only
//! there (any other file it reaches is only opened, never changed), and every test ends by
//! checking that the copies are byte for byte what was built, that nothing could be opened
//! for writing, and that the loop did see a process of ours (or the test would prove nothing).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ns_tests::{bin, build_rootfs_linked, run_cmd, s, spawn_until, Defer, Stopping, Tree};
use serde_json::{json, Value};

/// How many times at most the host enters the container: enough for the loop to see a
/// process of ours (it usually does at the first).
const MAX_ROUNDS: usize = 40;
/// At least this many rounds, so that later processes (after the first seen) are tried too.
const MIN_ROUNDS: usize = 4;

/// Copies of the binaries under test, in the tree's directory.
struct Copies {
    dir: PathBuf,
    names: Vec<&'static str>,
}

impl Copies {
    fn new(t: &Tree, names: &[&'static str]) -> Copies {
        let dir = t.host_dir("bin");
        for n in names {
            fs::copy(bin(n), dir.join(n)).unwrap();
        }
        Copies {
            dir,
            names: names.to_vec(),
        }
    }

    fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(self.dir.join(name));
        c.env_remove("NS_DEBUG").env_remove("NS_STAGE_FDS");
        c
    }

    /// Every copy is still what was built.
    fn assert_unchanged(&self) {
        for n in &self.names {
            let copy = fs::read(self.dir.join(n)).unwrap();
            assert!(
                copy == fs::read(bin(n)).unwrap(),
                "the container wrote into the host's {n}"
            );
        }
    }
}

/// What the loop reported: no host file opened for writing (out/ holds the container's own:
/// its bound directory, its stdio files); see [`assert_no_binary_reached`].
fn assert_attack_failed(report: &str, bins: &Copies, out: &Path) {
    let theirs = format!("-> {}/", out.display());
    let opened: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("WROTE") || l.starts_with("OPENED-RW"))
        .filter(|l| !l.contains(&theirs))
        .collect();
    assert!(
        opened.is_empty(),
        "host files opened for writing: {opened:?}\n{report}"
    );
    assert_no_binary_reached(report, bins);
}

/// No copy of our binaries reached at all (under a user namespace the container's root cannot
/// write a file of host root's, but the rule is that it never reaches one) or changed; at
/// least one process of ours seen, or the test proves nothing.
fn assert_no_binary_reached(report: &str, bins: &Copies) {
    let ours = format!("-> {}/", bins.dir.display());
    let reached: Vec<&str> = report.lines().filter(|l| l.contains(&ours)).collect();
    assert!(
        reached.is_empty(),
        "host binaries reached: {reached:?}\n{report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with("seen ")),
        "the loop saw no process of ours: the test proves nothing\n{report}"
    );
    bins.assert_unchanged();
}

fn install_probe(root: &Path) {
    fs::copy(bin("ns-probe"), root.join("bin/ns-probe")).unwrap();
}

/// Run `enter` (one host entry into the container) until `seen()` says the loop saw a process
/// of ours, at least MIN_ROUNDS and at most MAX_ROUNDS times.
fn rounds(mut enter: impl FnMut(), mut seen: impl FnMut() -> bool) {
    for i in 0..MAX_ROUNDS {
        enter();
        if i + 1 >= MIN_ROUNDS && seen() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// ns-run + ns-ctl shell

/// The loop saw a process other than PID 1 (with -a, ns-init's sealed copy): one that
/// `ns-ctl shell` brought in.
fn seen_entry(report: &str) -> bool {
    report
        .lines()
        .any(|l| l.starts_with("seen ") && !l.starts_with("seen /proc/1/"))
}

fn ns_run_and_shell(tag: &str, opts: &[&str]) {
    let t = Tree::rootfs(&format!("exe-{tag}"));
    install_probe(t.path());
    let bins = Copies::new(
        &t,
        &[
            "ns-run", "ns-enter", "ns-mount", "ns-caps", "ns-init", "ns-ctl",
        ],
    );
    let out = t.host_dir("out");
    let name = ns_tests::unique(&format!("exe-{tag}"));
    let mut c = bins.cmd("ns-run");
    t.tag(&mut c)
        .args(["-q", "-M", &name, "-D", t.arg()])
        .arg(format!("--bind={}:/out", out.display()))
        .args(opts)
        .args(["ns-probe", "grab", "/out/stop"])
        .arg(&bins.dir);
    let r = spawn_until(c, "ready");
    let stop = out.join("stop");
    let mut r = Stopping::with(r, move |_| {
        let _ = fs::write(&stop, "");
    });
    rounds(
        || {
            let mut sh = bins.cmd("ns-ctl");
            sh.args(["shell", &name, "--", "/bin/true"]);
            let o = run_cmd(sh, None);
            assert_eq!(o.code, 0, "ns-ctl shell: {o}");
        },
        || {
            // Collects what came meanwhile (the loop never prints a NUL).
            r.wait_stdout("\0", Duration::from_millis(50));
            seen_entry(&r.stdout_so_far())
        },
    );
    let o = r.stop();
    assert!(o.stdout.contains("done"), "{o}");
    assert!(seen_entry(&o.stdout), "no process of ns-ctl seen: {o}");
    assert_attack_failed(&o.stdout, &bins, &out);
}

#[test]
fn ns_ctl_shell_exposes_no_host_binary() {
    ns_run_and_shell("plain", &[]);
}

#[test]
fn ns_ctl_shell_exposes_no_host_binary_userns() {
    ns_run_and_shell("plain-u", &["-U"]);
}

#[test]
fn ns_ctl_shell_exposes_no_host_binary_as_pid2() {
    ns_run_and_shell("pid2", &["-a"]);
}

#[test]
fn ns_ctl_shell_exposes_no_host_binary_as_pid2_userns() {
    ns_run_and_shell("pid2-u", &["-a", "-U"]);
}

// ---------------------------------------------------------------------------------------
// ns-oci

fn subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: prctl with integer arguments only.
    ONCE.call_once(|| assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0));
}

/// Reap our (adopted) child `pid`, and every other adopted child of a container on the way:
/// a process exec'd with --detach, reparented to us when PID 1 dies, which PID 1's exit
/// waits for. Only processes of another PID namespace (two ids in NSpid): tests run in
/// parallel in this process, and waitpid(-1) would take the child another test's Command is
/// waiting for (ECHILD there).
fn reap(pid: i32) {
    let me = std::process::id().to_string();
    let end = Instant::now() + Duration::from_secs(20);
    let wait = |p: i32| {
        let mut st = 0;
        // SAFETY: waitpid with a valid status pointer.
        unsafe { libc::waitpid(p, &mut st, libc::WNOHANG) }
    };
    while Instant::now() < end {
        let r = wait(pid);
        if r == pid || r < 0 {
            return;
        }
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.split_whitespace().count()))
            };
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_string()));
            if ppid.as_deref() == Some(me.as_str()) && field("NSpid:").unwrap_or(0) > 1 {
                wait(p);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A bundle (busybox and ns-probe, /out bound from the host) run by copies of ns-oci and its
/// stages; with `userns`, in a user namespace of its own (host ids 200000-265535).
struct Oci {
    t: Tree,
    bins: Copies,
    out: PathBuf,
    root: PathBuf,
}

/// In a process's args: the directory of the binaries under test (the probe writes only there).
const BINS: &str = "@bins";

/// The default capabilities of `ns-oci spec` plus CAP_SYS_PTRACE (as the issue's attack).
const CAPS: [&str; 4] = [
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_PTRACE",
];

impl Oci {
    fn new(tag: &str, args: &[&str], userns: bool) -> Oci {
        subreaper();
        let t = Tree::empty(&format!("exe-{tag}"));
        let rootfs = t.path().join("rootfs");
        build_rootfs_linked(&rootfs);
        install_probe(&rootfs);
        // Made here: under a user namespace the container's root cannot create it in a
        // tree of host root's.
        fs::create_dir(rootfs.join("out")).unwrap();
        let bins = Copies::new(
            &t,
            &["ns-oci", "ns-enter", "ns-mount", "ns-caps", "ns-init"],
        );
        let out = t.host_dir("out");
        let root = t.host_dir("oci-root");
        let o = bins
            .cmd("ns-oci")
            .args(["spec", "--bundle", t.arg()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let path = t.path().join("config.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                BINS => bins.dir.display().to_string(),
                a => a.to_string(),
            })
            .collect();
        v["process"]["args"] = json!(args);
        v["process"]["terminal"] = json!(false);
        v["process"]["capabilities"] = caps();
        v["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]}),
        );
        if userns {
            ns_tests::oci_userns(&mut v);
        }
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        Oci { t, bins, out, root }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.bins.cmd("ns-oci");
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `create ID` (the container's stdout in out/ID.stdout); its pid.
    fn create(&self, id: &str) -> i32 {
        let pid_file = self.out.join(format!("{id}.pid"));
        // Files, not pipes: the container outlives the command and keeps them.
        let log = |n: &str| fs::File::create(self.out.join(format!("{id}.{n}"))).unwrap();
        let st = self
            .cmd(&[
                "create",
                "--bundle",
                self.t.arg(),
                "--pid-file",
                s(&pid_file),
                id,
            ])
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .status()
            .unwrap();
        assert!(
            st.success(),
            "create: {}",
            self.report(&format!("{id}.stderr"))
        );
        fs::read_to_string(pid_file).unwrap().parse().unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let o = self.cmd(args).stdout(Stdio::null()).output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    }

    /// A process.json for `exec`, written to out/NAME.json.
    fn process(&self, name: &str, args: &[&str]) -> PathBuf {
        let p = self.out.join(format!("{name}.json"));
        let v = json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
                       "args": args, "capabilities": caps()});
        fs::write(&p, v.to_string()).unwrap();
        p
    }

    fn report(&self, file: &str) -> String {
        fs::read_to_string(self.out.join(file)).unwrap_or_default()
    }

    /// Wait until out/FILE has a line `needle` (at most 10 s).
    fn wait_report(&self, file: &str, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.report(file).lines().any(|l| l.starts_with(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn caps() -> Value {
    json!({"bounding": CAPS, "effective": CAPS, "permitted": CAPS})
}

fn oci_exec(tag: &str, userns: bool) {
    let b = Oci::new(tag, &["ns-probe", "grab", "/out/stop", BINS], userns);
    let id = format!("exe-{tag}");
    let pid = b.create(&id);
    b.ok(&["start", &id]);
    let cleanup = Defer::new(|| {
        let _ = fs::write(b.out.join("stop"), "");
        reap(pid);
        let _ = b.cmd(&["delete", "--force", &id]).output();
    });
    assert!(b.wait_report(&format!("{id}.stdout"), "ready"));
    let p = b.process("true", &["/bin/true"]);
    rounds(
        || {
            let o = b.cmd(&["exec", "--process", s(&p), &id]).output().unwrap();
            assert!(o.status.success(), "exec: {o:?}");
        },
        || b.report(&format!("{id}.stdout")).contains("seen "),
    );
    cleanup.now();
    let report = b.report(&format!("{id}.stdout"));
    assert!(report.contains("done"), "{report}");
    assert_attack_failed(&report, &b.bins, &b.out);
}

#[test]
fn ns_oci_exec_exposes_no_host_binary() {
    oci_exec("exec", false);
}

#[test]
fn ns_oci_exec_exposes_no_host_binary_userns() {
    oci_exec("exec-u", true);
}

/// A created container waits for `start` in PID 1: a process exec'd into it (with
/// CAP_SYS_PTRACE) grabs /proc/1/exe, and writes once `start` has made PID 1 the payload.
fn oci_created(tag: &str, userns: bool) {
    let b = Oci::new(tag, &["sleep", "1000"], userns);
    let id = format!("exe-{tag}");
    let pid = b.create(&id);
    let bins = b.bins.dir.display().to_string();
    let grab = b.process("grab", &["ns-probe", "grab", "/out/stop", &bins]);
    let log = "grab.stdout";
    let cleanup = Defer::new(|| {
        let _ = fs::write(b.out.join("stop"), "");
        let _ = b.wait_report(log, "done");
        let _ = b.cmd(&["delete", "--force", &id]).output();
        reap(pid);
    });
    let st = b
        .cmd(&["exec", "--detach", "--process", s(&grab), &id])
        .stdout(fs::File::create(b.out.join(log)).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(b.wait_report(log, "ready"), "{}", b.report(log));
    assert!(
        b.wait_report(log, "seen /proc/1/exe"),
        "PID 1 not seen: {}",
        b.report(log)
    );
    b.ok(&["start", &id]);
    // PID 1 is the payload now: what was grabbed of it is written or refused.
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end
        && !b
            .report(log)
            .lines()
            .any(|l| l.starts_with("WROTE /proc/1/exe") || l.starts_with("denied /proc/1/exe"))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    cleanup.now();
    let report = b.report(log);
    assert!(report.contains("done"), "{report}");
    assert_attack_failed(&report, &b.bins, &b.out);
}

#[test]
fn a_created_oci_container_exposes_no_host_binary() {
    oci_created("created", false);
}

#[test]
fn a_created_oci_container_exposes_no_host_binary_userns() {
    oci_created("created-u", true);
}

// ---------------------------------------------------------------------------------------
// PID 1 leaving its namespaces

/// PID 1 moves to new user and mount namespaces (`exec unshare -U -m`): `ns-ctl shell` still
/// enters those the container started in, and says that PID 1 has left them.
fn shell_after_unshare(tag: &str, opts: &[&str]) {
    let t = Tree::rootfs(&format!("exe-{tag}"));
    let name = ns_tests::unique(&format!("exe-{tag}"));
    let c = ns_tests::registered_sh(
        &t,
        &name,
        opts,
        "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; echo ready; \
             exec unshare -U -m sleep 100",
    );
    let r = spawn_until(c, "ready");
    let started = r.stdout_so_far().replace("ready\n", "");
    let r = Stopping::new(r);
    let entry: Value =
        serde_json::from_slice(&fs::read(format!("/run/ns-run/machines/{name}.json")).unwrap())
            .unwrap();
    let leader = entry["leader"].as_i64().unwrap();
    // Until PID 1 runs `sleep` in its new namespaces.
    let end = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{leader}/exe"))
        .is_ok_and(|e| !e.ends_with("busybox") || cmdline(leader) != "sleep100")
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cmdline(leader), "sleep100");
    let now = fs::read_link(format!("/proc/{leader}/ns/user")).unwrap();
    assert_ne!(now.to_string_lossy(), started.lines().next().unwrap());
    let mut sh = Command::new(bin("ns-ctl"));
    sh.env_remove("NS_DEBUG").args([
        "shell",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt",
    ]);
    let o = run_cmd(sh, None);
    assert_eq!((o.code, o.stdout.as_str()), (0, started.as_str()), "{o}");
    assert!(
        o.stderr
            .contains("PID 1 has left the user, mnt namespace(s) it started in"),
        "{o}"
    );
    let o = r.stop();
    assert_eq!(o.code, 137, "{o}");
}

/// /proc/PID/cmdline without its NULs.
fn cmdline(pid: i64) -> String {
    fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', "")
}

#[test]
fn ns_ctl_shell_enters_the_namespaces_pid1_started_in() {
    shell_after_unshare("unshare", &[]);
}

#[test]
fn ns_ctl_shell_enters_the_namespaces_pid1_started_in_userns() {
    shell_after_unshare("unshare-u", &["-U"]);
}

// ---------------------------------------------------------------------------------------
// ns-ctl shell during the container's setup

/// While the entry says PID 1 still runs our stages (`starting`), `ns-ctl shell` waits: what
/// it runs would see ns-mount or ns-caps (the host's files, on the plain ns-run path) and a
/// root not yet built. The monitor holds `starting` as a lock on its lock file's first byte
/// and drops it when the payload runs; here the test takes that lock on a running
/// container's entry, then drops it.
#[test]
fn ns_ctl_shell_waits_for_the_payload() {
    let t = Tree::rootfs("exe-starting");
    let name = ns_tests::unique("exe-starting");
    let c = ns_tests::registered_sleeper(&t, &name, &[]);
    let r = spawn_until(c, "ready");
    let r = Stopping::new(r);
    let path = PathBuf::from(format!("/run/ns-run/machines/{name}.json"));
    // The monitor drops it once the payload runs (it may print before that).
    let end = Instant::now() + Duration::from_secs(10);
    while (!path.exists() || ns_tests::machine_starting(&name)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    // Written once, at SYNC-2: the lock says whether it still holds.
    assert_eq!(
        (&v["starting"], &v["start_lock"]),
        (&json!(true), &json!(true)),
        "{v}"
    );
    let held = ns_tests::hold_machine_starting(&name);
    let mut sh = Command::new(bin("ns-ctl"));
    sh.env_remove("NS_DEBUG")
        .args(["shell", &name, "--", "/bin/echo", "in"]);
    let mut waiting = ns_tests::spawn(sh, None);
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiting.is_running(), "ns-ctl did not wait");
    drop(held);
    let o = waiting.wait();
    assert_eq!((o.code, o.stdout.as_str()), (0, "in\n"), "{o}");
    let o = r.stop();
    assert_eq!(o.code, 137, "{o}");
}

// ---------------------------------------------------------------------------------------
// A pod: containers sharing a PID namespace

/// The members of a pod see each other's processes: a member's whole chain (ns-enter's
/// child, ns-mount, ns-caps waiting for start) runs in the pod's PID namespace, in view of
/// the pod's first container, which runs the attack. Members started by ns-oci, then by
/// `ns-run --oci-bundle`.
///
/// Only our binaries are checked here: until its pivot_root, a member's ns-mount works on
/// the host's tree (its root, transient fds of host files such as /etc/os-release), which
/// a neighbour holding CAP_SYS_PTRACE over the host's user namespace (as this one) can reach
/// through /proc (runc's init has the same window; see the report of issue 15).
#[test]
fn a_pod_member_exposes_no_host_binary() {
    let member = Oci::new("member", &["true"], false);
    let bins = member.bins.dir.display().to_string();
    let pod = Oci::new("pod", &["ns-probe", "grab", "/out/stop", &bins], false);
    let id = "exe-pod";
    let ppid = pod.create(id);
    pod.ok(&["start", id]);
    let path = member.t.path().join("config.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "pid" {
            ns["path"] = json!(format!("/proc/{ppid}/ns/pid"));
        }
    }
    v["process"]["args"] = json!(["true"]);
    fs::write(&path, v.to_string()).unwrap();
    let ns_run = Copies::new(&member.t, &["ns-run"]);
    let log = format!("{id}.stdout");
    let cleanup = Defer::new(|| {
        let _ = fs::write(pod.out.join("stop"), "");
        reap(ppid);
        let _ = pod.cmd(&["delete", "--force", id]).output();
    });
    assert!(pod.wait_report(&log, "ready"));
    let mut n = 0;
    rounds(
        || {
            n += 1;
            let mid = format!("exe-member-{n}");
            let mpid = member.create(&mid);
            let _ = member.cmd(&["delete", "--force", &mid]).output();
            reap(mpid);
        },
        || pod.report(&log).contains("seen "),
    );
    let seen = pod
        .report(&log)
        .lines()
        .filter(|l| l.starts_with("seen "))
        .count();
    rounds(
        || {
            let o = ns_run
                .cmd("ns-run")
                .args(["--register=no", "-q", "--oci-bundle", member.t.arg()])
                .output()
                .unwrap();
            assert!(o.status.success(), "ns-run --oci-bundle: {o:?}");
        },
        || {
            pod.report(&log)
                .lines()
                .filter(|l| l.starts_with("seen "))
                .count()
                > seen
        },
    );
    cleanup.now();
    let report = pod.report(&log);
    assert!(report.contains("done"), "{report}");
    assert_no_binary_reached(&report, &member.bins);
    ns_run.assert_unchanged();
    pod.bins.assert_unchanged();
}

// ---------------------------------------------------------------------------------------
// ptrace: the process that enters the container is never more privileged than it
//
// Without -U the container's root holds CAP_SYS_PTRACE over the host's user namespace (as
// under nspawn), so it may attach to any process it can see, non-dumpable or not. A process
// of `ns-ctl shell` or `ns-oci exec` that it can see while that process still holds the
// host's capabilities (or no system call filter) would be an escape: made to load a module,
// mount the host's disk... The loop (`ns-probe ptrace`) seizes every process that appears,
// stops it, reads its /proc/PID/status and detaches: it never changes anything, so the host
// is safe on the code before the fix too. Every process it stopped must hold no capability
// beyond the container's bounding set (the loop's own) and its system call filter.

/// The loop's lines for processes it stopped, other than PID 1 (-a's ns-init).
fn attached(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|l| l.starts_with("attached ") && !l.starts_with("attached 1 "))
        .collect()
}

/// Enter until the loop has stopped a few processes of ours (or seen a privileged one): at
/// least MIN_ROUNDS times, at most MAX_ROUNDS.
fn ptrace_rounds(mut enter: impl FnMut(), mut report: impl FnMut() -> String) {
    for i in 0..MAX_ROUNDS {
        enter();
        let r = report();
        if r.contains("PRIVILEGED") || (i + 1 >= MIN_ROUNDS && attached(&r).len() >= 3) {
            return;
        }
    }
}

fn assert_never_privileged(report: &str) {
    let privileged: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("PRIVILEGED"))
        .collect();
    assert!(
        privileged.is_empty(),
        "the container stopped a process of ours holding more than its own privileges: \
         {privileged:?}\n{report}"
    );
    assert!(
        !attached(report).is_empty(),
        "the loop stopped no process of ours: the test proves nothing\n{report}"
    );
}

fn shell_ptrace(tag: &str, opts: &[&str]) {
    let (_t, name, mut r) = ns_tests::ptrace_watcher(&format!("exe-{tag}"), opts);
    ptrace_rounds(
        || {
            let mut sh = Command::new(bin("ns-ctl"));
            sh.env_remove("NS_DEBUG")
                .args(["shell", &name, "--", "/bin/true"]);
            let o = run_cmd(sh, None);
            assert_eq!(o.code, 0, "ns-ctl shell: {o}");
        },
        || {
            r.wait_stdout("\0", Duration::from_millis(50));
            r.stdout_so_far()
        },
    );
    let o = r.stop();
    assert!(o.stdout.contains("done"), "{o}");
    assert_never_privileged(&o.stdout);
    assert_stdio_only(&o.stdout, false);
}

/// What a process of ours that the loop stopped held: stdio only, but (`sync`: ns-oci's)
/// the sync socket, which the process closes first thing (ns-oci trusts no pid from it but
/// its own child's).
fn assert_stdio_only(report: &str, sync: bool) {
    for l in attached(report) {
        let fds = l.split_once("fds=").unwrap().1;
        let beyond_stdio = fds
            .split('"')
            .filter_map(|f| f.split_once(':'))
            .filter(|(n, _)| n.parse::<u32>().is_ok_and(|n| n > 2))
            .any(|(_, link)| !(sync && link.starts_with("socket:")));
        assert!(!beyond_stdio, "a process of ours held more than stdio: {l}");
    }
}

#[test]
fn ns_ctl_shell_is_never_more_privileged_than_the_container() {
    shell_ptrace("ptrace", &[]);
}

#[test]
fn ns_ctl_shell_is_never_more_privileged_than_the_container_userns() {
    shell_ptrace("ptrace-u", &["-U"]);
}

fn oci_exec_ptrace(tag: &str, userns: bool) {
    let b = Oci::new(tag, &["ns-probe", "ptrace", "/out/stop"], userns);
    let id = format!("exe-{tag}");
    let pid = b.create(&id);
    b.ok(&["start", &id]);
    let log = format!("{id}.stdout");
    let cleanup = Defer::new(|| {
        let _ = fs::write(b.out.join("stop"), "");
        reap(pid);
        let _ = b.cmd(&["delete", "--force", &id]).output();
    });
    assert!(b.wait_report(&log, "ready"));
    let p = b.process("true", &["/bin/true"]);
    ptrace_rounds(
        || {
            let o = b.cmd(&["exec", "--process", s(&p), &id]).output().unwrap();
            assert!(o.status.success(), "exec: {o:?}");
        },
        || b.report(&log),
    );
    cleanup.now();
    let report = b.report(&log);
    assert!(report.contains("done"), "{report}");
    assert_never_privileged(&report);
    assert_stdio_only(&report, true);
}

#[test]
fn ns_oci_exec_is_never_more_privileged_than_the_container() {
    oci_exec_ptrace("ptrace-oci", false);
}

#[test]
fn ns_oci_exec_is_never_more_privileged_than_the_container_userns() {
    oci_exec_ptrace("ptrace-oci-u", true);
}

/// ns-run started with stdio closed where /dev/null cannot be opened (a daemonizer's closed
/// fds, in a chroot without /dev or a /dev/null that is no device): a stage binary's O_PATH fd,
/// which travels down the chain, would take number 0, 1 or 2 and reach the payload as its
/// stdio, and container root could write our host binary through /proc/self/fd/N. The start
/// aborts instead, before anything is made (as the Rust runtime's start-up did: the stages
/// now start without it). Run in a private mount namespace whose /dev/null is a char device
/// 0:0 (opening it fails with ENXIO).
#[test]
fn closed_stdio_without_dev_null_aborts_and_reaches_no_binary() {
    let t = Tree::rootfs("stdio");
    let bins = Copies::new(&t, &["ns-run", "ns-enter", "ns-mount", "ns-caps"]);
    let out = t.host_dir("out");
    let node = t.host_dir("node").join("null");
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            r#"mknod "$1" c 0 0 && mount --bind "$1" /dev/null || exit 99
            "$2" --register=no -q -D "$3" --bind="$4":/out sh -c \
                'readlink /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2 > /out/fds
                 for n in 0 1 2; do printf x >> /proc/self/fd/$n && echo wrote $n >> /out/fds; done' \
                0<&- 1>&- 2>&-"#,
        )
        .args(["sh", s(&node)])
        .arg(bins.dir.join("ns-run"))
        .args([s(t.path()), s(&out)])
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGABRT),
        "ns-run without stdio and /dev/null: {status:?}; the payload saw: {:?}",
        fs::read_to_string(out.join("fds")).ok()
    );
    assert!(!out.join("fds").exists(), "the payload ran");
    bins.assert_unchanged();
}
