//! The machine registry and ns-ctl: containers started in the background are listed (text
//! and JSON) and shown; `shell` runs commands inside with the container's PID namespace,
//! hostname, root, capabilities and environment; poweroff, terminate and kill end them with
//! ns-run's exit codes; a second container of a running name is refused; the entry of a
//! SIGKILLed monitor is removed by the next reader.
//!
//! Containers with a veth run under `unshare --net`: a throwaway network namespace that
//! disappears with them, so no host link is touched.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ns_tests::{bin, ns_run_registered, our_mounts, run_cmd, spawn_until, Output, Running, Tree};

fn ctl(args: &[&str]) -> Output {
    let mut c = Command::new(bin("ns-ctl"));
    c.args(args).env_remove("NS_DEBUG");
    run_cmd(c, None)
}

fn start(t: &Tree, name: &str, opts: &[&str], script: &str) -> Running {
    let mut c = ns_run_registered();
    t.tag(&mut c)
        .args(["-q", "--read-only", "-M", name, "-D", t.arg()])
        .args(opts)
        .args(["sh", "-c", script]);
    spawn_until(c, "ready")
}

fn entry(name: &str) -> std::path::PathBuf {
    Path::new("/run/ns-run/machines").join(format!("{name}.json"))
}

#[test]
fn list_status_and_shell_see_the_running_container() {
    let t = Tree::rootfs("ctl-list");
    // Registered: names of this test process. b's is short: `ve-NAME` must fit 15 bytes.
    let (na, nb) = (ns_tests::unique("ctl-a"), ns_tests::unique("cb"));
    let a = start(&t, &na, &[], "echo ready; exec sleep 100");
    // With a veth, in a throwaway network namespace.
    let mut c = Command::new("unshare");
    c.args(["--net", "--"]).arg(bin("ns-run"));
    t.tag(&mut c).env_remove("NS_DEBUG").args([
        "-q",
        "--read-only",
        "-M",
        &nb,
        "-n",
        "--network-address=10.231.7.2/24",
        "-D",
        t.arg(),
        "sh",
        "-c",
        "echo ready; exec sleep 100",
    ]);
    let b = spawn_until(c, "ready");

    let out = ctl(&["list"]);
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        head,
        ["MACHINE", "CLASS", "SERVICE", "OS", "VERSION", "ADDRESSES"],
        "{out}"
    );
    let row = |n: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{n} ")))
            .copied()
    };
    assert!(
        row(&na).is_some_and(|r| r.contains("container ns-run")),
        "{out}"
    );
    assert!(row(&nb).is_some_and(|r| r.ends_with("10.231.7.2")), "{out}");
    assert!(out.stdout.contains(" machines listed."), "{out}");

    let out = ctl(&["list", "--output=json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect(&out.stdout);
    let b_json = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == nb.as_str())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(b_json["class"], "container");
    assert_eq!(b_json["addresses"], "10.231.7.2");

    let out = ctl(&["status", &nb]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.starts_with(&format!("{nb}(")), "{out}");
    for want in [
        "Leader: ".to_string(),
        format!("Root: {}", t.arg()),
        format!("Iface: ve-{nb}"),
        "Address: 10.231.7.2".into(),
        "sleep 100".into(),
    ] {
        assert!(out.stdout.contains(&want), "{want}: {out}");
    }
    let out = ctl(&["status", &na, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect(&out.stdout);
    let leader = v["leader"].as_i64().unwrap();
    assert_eq!(v["root"], t.arg());
    assert!(v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == leader));

    // shell: inside the PID namespace (PID 1 is the container's sleep), the container's
    // hostname, root and capability bounding set, not ours.
    let out = ctl(&[
        "shell",
        &na,
        "--",
        "sh",
        "-c",
        "echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; \
         grep CapBnd /proc/self/status; echo container=$container; \
         test -e /etc/ctl-marker && echo marker; ls /proc/self/fd | wc -l",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let leader_bnd = std::fs::read_to_string(format!("/proc/{leader}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapBnd"))
        .unwrap()
        .to_string();
    let l: Vec<&str> = out.stdout.lines().collect();
    let pid: u32 = l[0].strip_prefix("pid=").unwrap().parse().unwrap();
    assert!(pid < 100, "not in the container's PID namespace: {out}");
    assert_eq!(l[1].trim_end(), "sleep 100", "{out}");
    assert_eq!(l[2], na, "{out}");
    assert_eq!(l[3], leader_bnd, "{out}");
    assert_eq!(l[4], "container=systemd-nspawn", "{out}");
    // stdin, stdout, stderr and ls's own directory fd: nothing of the toolkit's.
    assert_eq!(l.last(), Some(&"4"), "{out}");
    assert_eq!(ctl(&["shell", &na, "--", "sh", "-c", "exit 7"]).code, 7);
    let out = ctl(&["shell", &na, "daemon", "--", "id", "-u"]);
    assert_eq!(out.stdout.trim(), "1", "{out}");

    // Ended by ns-ctl: poweroff of a container that was not booted stops it as SIGTERM to
    // ns-run does (137); terminate kills it (137).
    assert_eq!(ctl(&["poweroff", &na]).code, 0);
    assert_eq!(a.wait().code, 137);
    assert_eq!(ctl(&["terminate", &nb]).code, 0);
    assert_eq!(b.wait().code, 137);
    assert!(!entry(&na).exists() && !entry(&nb).exists());
    let out = ctl(&["list"]);
    assert!(
        !out.stdout.contains(&na) && !out.stdout.contains(&nb),
        "{out}"
    );
}

#[test]
fn kill_sends_the_signal_and_unknown_names_fail() {
    let t = Tree::rootfs("ctl-kill");
    let k = ns_tests::unique("ctl-k");
    let a = start(
        &t,
        &k,
        &[],
        "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.1; done",
    );
    let out = ctl(&["kill", "--kill-whom=leader", "--signal=SIGUSR1", &k]);
    assert_eq!(out.code, 0, "{out}");
    let mut a = a;
    assert!(
        a.wait_stdout("got-usr1", Duration::from_secs(5)),
        "{}",
        a.stdout_so_far()
    );
    assert_eq!(ctl(&["kill", "-s", "KILL", &k]).code, 0);
    assert_eq!(a.wait().code, 137);
    for (args, want) in [
        (
            &["status", "nosuch"][..],
            "ns-ctl: no machine called nosuch",
        ),
        (
            &["kill", "--signal=SIGNOPE", "x"][..],
            "ns-ctl: --signal=SIGNOPE: cannot parse signal",
        ),
        (
            &["shell", "no/such"][..],
            "ns-ctl: not a valid machine name: no/such",
        ),
        (
            &["reboot", "nosuch"][..],
            "ns-ctl: no machine called nosuch",
        ),
    ] {
        let out = ctl(args);
        assert_eq!(out.code, 125, "{args:?}: {out}");
        assert_eq!(out.stderr.trim_end(), want, "{args:?}");
    }
}

#[test]
fn a_running_name_is_refused_and_a_killed_monitors_entry_goes() {
    let t = Tree::rootfs("ctl-dup");
    let before = our_mounts();
    let dup = ns_tests::unique("ctl-dup");
    let a = start(&t, &dup, &[], "echo ready; exec sleep 100");
    // Another container under the same name, registered.
    let another = || {
        let mut c = ns_run_registered();
        t.tag(&mut c).env_remove("NS_DEBUG").args([
            "-q",
            "--read-only",
            "-M",
            &dup,
            "-D",
            t.arg(),
            "true",
        ]);
        run_cmd(c, None)
    };
    let out = another();
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr.trim_end(),
        format!("ns-run: machine {dup} is already running (choose another name with -M, or --register=no)")
    );
    // SIGKILL of the monitor: the entry stays until someone reads the registry.
    let monitor = a.pid();
    let _journal = ns_tests::ForgetJournal(monitor);
    a.signal(libc::SIGKILL);
    let _ = a.wait();
    assert!(entry(&dup).exists());
    let out = ctl(&["list"]);
    assert!(!out.stdout.contains(&dup), "{out}");
    assert!(!entry(&dup).exists());
    assert!(!Path::new(&format!("/run/ns-run/machines/{dup}.lock")).exists());
    // And the name is free again.
    assert_eq!(another().code, 0);
    let left = ns_tests::wait_no_procs_in(t.path(), Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
    ns_tests::assert_mounts_unchanged(&before);
}

/// A busybox image in /var/lib/machines; on drop its machine is terminated (if a failed
/// test left it running) and the image removed.
struct Image(std::path::PathBuf);

impl Image {
    /// A busybox image `PREFIX<our pid>` whose init is busybox's: its name, and it.
    fn booting(prefix: &str) -> (String, Image) {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        let img = Image(Path::new("/var/lib/machines").join(&name));
        std::fs::create_dir_all(&img.0).unwrap();
        ns_tests::build_rootfs(&img.0);
        let _ = std::fs::create_dir_all(img.0.join("sbin"));
        std::os::unix::fs::symlink("/bin/busybox", img.0.join("sbin/init")).unwrap();
        (name, img)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let name = self.0.file_name().unwrap().to_string_lossy().into_owned();
        if ctl(&["terminate", &name]).code == 0 {
            let _ = ns_tests::wait_no_procs_in(&self.0, Duration::from_secs(5));
        }
        ns_tests::remove_tree(&self.0);
    }
}

#[test]
fn images_are_found_by_name_and_start_boots_one_in_the_background() {
    let (name, img) = Image::booting("nst");
    // -M NAME without -D.
    let mut c = ns_tests::ns_run();
    c.args(["-q", "-M", &name, "sh", "-c", "hostname"]);
    let out = run_cmd(c, None);
    assert_eq!((out.code, out.stdout.trim()), (0, name.as_str()), "{out}");
    let mut c = ns_tests::ns_run();
    c.args(["-q", "-M", "nst-none", "true"]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr.starts_with(
            "ns-run: -M nst-none without -D: no image nst-none in /etc/machines, /run/machines, /var/lib/machines, "
        ),
        "{out}"
    );

    // start: booted (busybox init), -U, with a veth: in a throwaway network namespace.
    let mut c = Command::new("unshare");
    c.args(["--net", "--"])
        .arg(bin("ns-ctl"))
        .args(["start", &name]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    let status = ctl(&["status", &name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect(&status.stdout);
    assert_eq!(v["boot"], true, "{status}");
    assert_eq!(v["interfaces"][0], format!("ve-{name}"), "{status}");
    let leader = v["leader"].as_i64().unwrap();
    let uid_map = std::fs::read_to_string(format!("/proc/{leader}/uid_map")).unwrap();
    assert!(
        !uid_map.trim().starts_with("0 0 "),
        "not in a user namespace: {uid_map}"
    );
    let out = ctl(&["shell", &name, "--", "sh", "-c", "cat /proc/1/comm"]);
    assert_eq!(out.stdout.trim(), "init", "{out}");
    assert_eq!(ctl(&["start", &name]).code, 125, "started twice");
    assert_eq!(ctl(&["terminate", &name]).code, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while entry(&name).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} still registered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = ns_tests::wait_no_procs_in(&img.0, Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

/// Wait until `f` holds (10 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_started_machines_console_is_kept_bounded_and_shown_by_log_and_status() {
    let (name, img) = Image::booting("nsl");
    // ~1.2 MiB of console output: two rotations (at 512 KiB), the first lines gone.
    std::fs::write(
        img.0.join("etc/inittab"),
        "::sysinit:/bin/sh /etc/boot.sh\n",
    )
    .unwrap();
    std::fs::write(
        img.0.join("etc/boot.sh"),
        "echo hello-from-the-console\n\
         pad=$(printf '%090d' 0); i=0\n\
         while [ $i -lt 12000 ]; do echo \"line $i $pad\"; i=$((i+1)); done\n\
         echo done-writing\n\
         exec sleep 1000\n",
    )
    .unwrap();
    let mut c = Command::new("unshare");
    c.args(["--net", "--"])
        .arg(bin("ns-ctl"))
        .args(["start", &name]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    let log = Path::new("/run/ns-run/logs").join(format!("{name}.log"));
    let older = Path::new("/run/ns-run/logs").join(format!("{name}.log.1"));
    eventually("the boot script's end in the log", || {
        ctl(&["log", &name]).stdout.contains("done-writing")
    });
    // Rotated once: the first lines are gone with the first file, the log stays bounded.
    let shown = ctl(&["log", &name]);
    assert_eq!(shown.code, 0, "{shown}");
    assert!(
        !shown.stdout.contains("hello-from-the-console"),
        "not rotated"
    );
    assert!(
        shown.stdout.contains("line 6999 "),
        "{}",
        shown.stdout.len()
    );
    let sizes = (
        std::fs::metadata(&older).unwrap().len(),
        std::fs::metadata(&log).unwrap().len(),
    );
    assert!(
        sizes.0 <= 520 << 10 && sizes.0 + sizes.1 <= 1 << 20,
        "{sizes:?}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // status ends with the console's last lines.
    let status = ctl(&["status", &name]);
    assert!(
        status.stdout.trim_end().ends_with("done-writing"),
        "{status}"
    );
    // -f follows what comes, and ends when the machine does.
    let mut f = Command::new(bin("ns-ctl"));
    f.args(["log", "-f", &name]);
    let follower = ns_tests::spawn(f, None);
    let said = ctl(&[
        "shell",
        &name,
        "--",
        "sh",
        "-c",
        "echo said-later > /dev/console",
    ]);
    assert_eq!(said.code, 0, "{said}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ctl(&["terminate", &name]).code, 0);
    let out = follower.wait();
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("said-later"),
        "{}",
        &out.stdout[out.stdout.len().saturating_sub(300)..]
    );
    // The log stays after the machine (until it is started again); unknown names: one line.
    assert!(ctl(&["log", &name]).stdout.contains("done-writing"));
    let none = ctl(&["log", "nsl-none"]);
    assert_eq!((none.code, none.stderr.lines().count()), (125, 1), "{none}");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&older);
}

#[test]
fn a_log_file_is_never_a_hard_link_a_fifo_or_someone_elses() {
    let t = Tree::rootfs("logfile-attacks");
    let dir = t.host_dir("logs");
    let victim = dir.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    let link = dir.join("hard.log");
    std::fs::hard_link(&victim, &link).unwrap();
    let fifo = dir.join("fifo.log");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let theirs = dir.join("theirs.log");
    std::fs::write(&theirs, "").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    for log in [&link, &fifo, &theirs] {
        let mut c = ns_tests::ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg()])
            .arg(format!("--log-file={}", log.display()))
            .args(["echo", "INJECTED"]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{}: {out}", log.display());
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains("--log-file: cannot open"), "{out}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "");
    // A log of its own: the payload's output lands there, appended.
    let ok = dir.join("ok.log");
    std::fs::write(&ok, "before\n").unwrap();
    let mut c = ns_tests::ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .arg(format!("--log-file={}", ok.display()))
        .args(["echo", "LOGGED"]);
    let out = run_cmd(c, None);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out}");
    let text = std::fs::read_to_string(&ok).unwrap();
    assert!(
        text.starts_with("before\n") && text.contains("LOGGED"),
        "{text:?}"
    );
}

/// The inodes (`dev:ino`) any process of the container has open, as seen inside it.
const OPEN_INODES: &str =
    "for f in /proc/[0-9]*/fd/*; do stat -L -c '%d:%i' \"$f\" 2>/dev/null; done; echo scanned";

#[test]
fn a_log_file_is_written_by_the_monitor_alone_never_the_containers_fd() {
    use std::os::unix::fs::MetadataExt;
    let t = Tree::rootfs("logfile-reach");
    let log = t.host_dir("logs").join("c.log");
    std::fs::write(&log, "").unwrap();
    let m = std::fs::metadata(&log).unwrap();
    let ours = format!("{}:{}", m.dev(), m.ino());
    // Nor the directory the monitor holds for the rotations.
    let d = std::fs::metadata(log.parent().unwrap()).unwrap();
    let dir = format!("{}:{}", d.dev(), d.ino());
    // The default with a log file (and autopipe, which would be a pipe without a terminal):
    // the relayed read-only console; no process of the container holds the log.
    for extra in [&[][..], &["--console=autopipe"][..]] {
        let mut c = ns_tests::ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg()])
            .arg(format!("--log-file={}", log.display()))
            .args(extra)
            .args(["sh", "-c", OPEN_INODES]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 0, "{extra:?}: {out}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("scanned"), "{extra:?}: {text:?}");
        assert!(
            !text.lines().any(|l| l.trim() == ours || l.trim() == dir),
            "{extra:?}: the container holds the log {ours} or its directory {dir}: {text:?}"
        );
        std::fs::write(&log, "").unwrap();
    }
    // A pipe would hand the payload the log itself (written unbounded, past the monitor's
    // rotation, and reopened through /proc/self/fd): refused, nothing run or written.
    for extra in [&["--console=pipe"][..], &["-P"][..]] {
        let mut c = ns_tests::ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg()])
            .arg(format!("--log-file={}", log.display()))
            .args(extra)
            .args(["sh", "-c", OPEN_INODES]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{extra:?}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains("--log-file"), "{out}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "{extra:?}");
    }
}

#[test]
fn log_takes_a_machine_name_never_a_path() {
    // A file of root's that is not a machine's log, reached by a name with `..` or `/`.
    let name = ns_tests::unique("nsl-path");
    let outside = Path::new("/run/ns-run").join(format!("{name}.log"));
    std::fs::write(&outside, "NOT-A-MACHINES-LOG\n").unwrap();
    let _gone = ns_tests::Defer::new(|| {
        let _ = std::fs::remove_file(&outside);
    });
    for bad in [format!("../{name}"), format!("x/../../{name}")] {
        let out = ctl(&["log", &bad]);
        assert_eq!(out.code, 125, "{bad}: {out}");
        assert!(!out.stdout.contains("NOT-A-MACHINES-LOG"), "{bad}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains("not a valid machine name"), "{out}");
    }
}

#[test]
fn a_log_rotates_in_its_directory_even_when_the_container_swaps_the_path() {
    // The log's directory is in a directory the container writes (bound in): it moves the
    // directory away and puts a symlink to another (a machine's logs) in its place before
    // the monitor rotates. The monitor rotates where the log is, never through the path.
    let t = Tree::rootfs("logfile-swap");
    let shared = t.host_dir("shared");
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    let victim = t.host_dir("victim");
    std::fs::write(victim.join("c.log"), "VICTIM\n").unwrap();
    let script = format!(
        "mv /shared/sub /shared/old && ln -s {} /shared/sub && \
         head -c 700000 /dev/zero | tr '\\0' x; echo; echo end",
        victim.display()
    );
    let mut c = ns_tests::ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .arg(format!("--bind={}:/shared", shared.display()))
        .arg(format!("--log-file={}", shared.join("sub/c.log").display()))
        .args(["sh", "-c", &script]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    let theirs = std::fs::read_to_string(victim.join("c.log")).unwrap();
    assert!(
        theirs == "VICTIM\n",
        "the victim's log replaced by the container's"
    );
    assert!(!victim.join("c.log.1").exists(), "rotated in the victim");
    assert!(shared.join("old/c.log.1").exists(), "not rotated");
    let now = std::fs::read_to_string(shared.join("old/c.log")).unwrap();
    assert!(now.ends_with("end\r\n"), "the log went on elsewhere");
}

#[test]
fn a_log_stays_bounded_when_its_rotation_is_blocked() {
    use std::os::unix::fs::PermissionsExt;
    // A log in a directory others write (/tmp): someone puts a directory where the rotation
    // would rename the log to. The log must stay bounded all the same.
    let t = Tree::rootfs("logfile-blocked");
    let dir = t.host_dir("tmp");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let blocker = dir.join("c.log.1");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), "").unwrap();
    std::os::unix::fs::chown(&blocker, Some(65534), Some(65534)).unwrap();
    let log = dir.join("c.log");
    let mut c = ns_tests::ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .arg(format!("--log-file={}", log.display()))
        .args([
            "sh",
            "-c",
            "head -c 2000000 /dev/zero | tr '\\0' x; echo; echo end",
        ]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(len <= 600 << 10, "the log grew to {len} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with("end\r\n"), "the log's end lost");
}

#[test]
fn a_booted_container_does_not_hold_its_log_either() {
    use std::os::unix::fs::MetadataExt;
    let t = ns_tests::booting_tree("logfile-boot", &format!("{OPEN_INODES}\npoweroff -f\n"));
    let log = t.host_dir("logs").join("b.log");
    std::fs::write(&log, "").unwrap();
    let m = std::fs::metadata(&log).unwrap();
    let d = std::fs::metadata(log.parent().unwrap()).unwrap();
    let held = [
        format!("{}:{}", m.dev(), m.ino()),
        format!("{}:{}", d.dev(), d.ino()),
    ];
    for opts in [&["-b"][..], &["-b", "-U"][..]] {
        let mut c = ns_tests::ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg()])
            .args(opts)
            .arg(format!("--log-file={}", log.display()));
        let out = run_cmd(c, None);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("scanned"), "{opts:?}: {out}\n{text:?}");
        assert!(
            !text.lines().any(|l| held.iter().any(|h| l.trim() == h)),
            "{opts:?}: the container holds the log or its directory {held:?}: {text:?}"
        );
        std::fs::write(&log, "").unwrap();
    }
}

/// ns-run under strace, the monitor's renames (the registry entry's publication) slowed down
/// by `delay` µs: a monitor descheduled there, as on a busy host. Only the monitor is traced.
fn with_slow_publish(t: &Tree, name: &str, delay: u32, opts: &[&str], script: &str) -> Command {
    let mut c = Command::new("strace");
    c.args(["-qq", "-o", "/dev/null"])
        .args(["-e", "trace=rename,renameat,renameat2"])
        .arg("-e")
        .arg(format!(
            "inject=rename,renameat,renameat2:delay_enter={delay}"
        ))
        .arg(bin("ns-run"))
        .args(["-q", "--read-only", "-M", name, "-D", t.arg()])
        .args(opts)
        .args(["sh", "-c", script])
        .env_remove("NS_DEBUG")
        .env_remove("NS_STAGE_FDS");
    t.tag(&mut c);
    c
}

/// Once the payload runs, its machine is listed: the entry is published before SYNC-3 (go),
/// however long the monitor takes over it (issue 19 had it published after go, while PID 1
/// went on: a payload that printed `ready` could find `ns-ctl status`, `list` and `shell`
/// saying there is no such machine).
#[test]
fn a_running_payloads_machine_is_listed_however_slow_its_monitor() {
    let t = Tree::rootfs("mach-slowpub");
    let name = ns_tests::unique("slowpub");
    let r = spawn_until(
        with_slow_publish(&t, &name, 1_000_000, &[], "echo ready; exec sleep 100"),
        "ready",
    );
    let status = ctl(&["status", &name]);
    let list = ctl(&["list"]);
    let shell = ctl(&["shell", &name, "--", "true"]);
    // The monitor (strace would only detach on a signal of its own), once it is listed.
    eventually("poweroff", || ctl(&["poweroff", &name]).code == 0);
    let _ = r.wait();
    assert_eq!(status.code, 0, "{status}");
    assert!(list.stdout.contains(&name), "{list}");
    assert_eq!(shell.code, 0, "{shell}");
}

/// The entry cannot be published (its path is a directory): one line, 125, nothing left,
/// and the payload never ran (it did with the entry published after go).
#[test]
fn an_entry_that_cannot_be_published_stops_the_container_before_its_payload() {
    let t = Tree::rootfs("mach-pubfail");
    let name = ns_tests::unique("pubfail");
    let marks = t.host_dir("marks");
    std::fs::create_dir(t.path().join("marks")).unwrap();
    std::fs::create_dir(entry(&name)).unwrap();
    let _gone = ns_tests::Defer::new(|| {
        let _ = std::fs::remove_dir(entry(&name));
    });
    let out = run_cmd(
        with_slow_publish(
            &t,
            &name,
            300_000,
            &[&format!("--bind={}:/marks", marks.display())],
            "touch /marks/ran",
        ),
        None,
    );
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        [format!(
            "ns-run: cannot write {}: Is a directory",
            entry(&name).display()
        )],
        "{out}"
    );
    assert!(!marks.join("ran").exists(), "the payload ran");
    assert!(
        !Path::new(&format!("/run/ns-run/machines/{name}.lock")).exists(),
        "lock file left"
    );
    assert_eq!(
        ns_tests::settled(|| ns_tests::container_cgroups(&name)),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(ns_tests::wait_no_procs_in(t.path(), Duration::from_secs(5)).is_empty());
}
