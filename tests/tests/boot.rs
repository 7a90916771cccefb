//! `-b`: the image's init as PID 1, systemd's container interface, and nspawn's exit codes
//! for reboot (133) and poweroff (0). Booted here with busybox's init, whose inittab the tests
//! write; booting systemd needs the cgroup set-up of a later change.

use std::path::Path;

use ns_tests::{booting_tree, our_mounts, run, wait_no_procs_in, Tree};

fn assert_clean(t: &Tree, before: &[String]) {
    let left = wait_no_procs_in(t.path(), std::time::Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
    assert_eq!(our_mounts(), before, "host mount table changed");
}

#[test]
fn reboot_inside_gives_133_and_the_container_interface_is_there() {
    let t = booting_tree(
        "boot-reboot",
        "echo pid=$$\n\
         echo manager=$(cat /run/host/container-manager)\n\
         echo uuid=$(cat /run/host/container-uuid)\n\
         echo machine-id=$(cat /etc/machine-id)\n\
         echo os=$(grep -c . /run/host/os-release)\n\
         touch /run/host/x 2>/dev/null || echo run-host-ro\n\
         tr '\\0' '\\n' < /proc/1/environ | grep -c ^LANG= || true\n\
         reboot -f\n",
    );
    let before = our_mounts();
    let out = run(&[
        "-D",
        t.arg(),
        "-b",
        "--uuid=0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(out.code, 133, "{out}");
    // Without a terminal the boot shows on nspawn's read-only console: a pty, CRLF.
    let s = &out.stdout.replace("\r\n", "\n");
    assert!(s.contains("pid="), "{out}");
    assert!(s.contains("manager=systemd-nspawn\n"), "{out}");
    assert!(
        s.contains("uuid=01234567-89ab-cdef-0123-456789abcdef\n"),
        "{out}"
    );
    assert!(
        s.contains("machine-id=0123456789abcdef0123456789abcdef\n"),
        "transient machine id: {out}"
    );
    assert!(
        s.contains("run-host-ro\n"),
        "/run/host must be read-only: {out}"
    );
    assert!(s.contains("\n0\n"), "a booted init gets no LANG: {out}");
    assert!(
        !t.path().join("etc/machine-id").exists(),
        "machine id mount point left in the image"
    );
    assert_clean(&t, &before);
}

#[test]
fn poweroff_and_halt_inside_give_0() {
    for cmd in ["poweroff -f", "halt -f"] {
        let t = booting_tree("boot-poweroff", &format!("{cmd}\n"));
        let out = run(&["-D", t.arg(), "-b"]);
        assert_eq!(out.code, 0, "{cmd}: {out}");
    }
}

#[test]
fn boot_without_an_init_and_bad_combinations() {
    let t = Tree::rootfs("boot-noinit");
    assert!(!Path::new(&t.path().join("sbin/init")).exists());
    let out = run(&["-D", t.arg(), "-b"]);
    assert_eq!(out.code, 127, "{out}");
    // Without a terminal: on the read-only console (stdout), as nspawn's execv error.
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
    assert!(
        out.stdout
            .contains("/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init"),
        "{out}"
    );
    let out = run(&["-D", t.arg(), "-b", "-P"]);
    assert_eq!(out.code, 127, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    let out = run(&["-D", t.arg(), "-b", "-a"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr
            .contains("--boot and --as-pid2 may not be combined"),
        "{out}"
    );
}

// ---- systemd as the guest's init -------------------------------------------------------

/// Debian bookworm with systemd and dbus (cached; containers run on it with -x).
fn debian_tree() -> &'static Path {
    static TREE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(|| ns_tests::debian_cache("debian-systemd", "systemd,dbus"))
}

/// The container's PID 1 (host pid): the monitor's child.
fn pid1_of(monitor: i32) -> Option<i32> {
    let kids = std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children")).ok()?;
    kids.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd")
        })
}

fn in_container(pid1: i32, cmd: &[&str]) -> String {
    // Joining one's own user namespace is EINVAL: -U only when the container has its own.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let userns = ns(&pid1.to_string()) != ns("self");
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid1.to_string(), "-m", "-u", "-i", "-p", "-C"])
        .args(userns.then_some("-U"))
        .arg("--")
        .args(cmd)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Boot with `env`, wait (bounded) for systemd to report running; returns the monitor and
/// PID 1. A degraded system fails the test with its failed units.
fn boot(name: &str, env: &[(&str, &str)]) -> (ns_tests::Running, i32) {
    let mut c = ns_tests::ns_run();
    for (k, v) in env {
        c.env(k, v);
    }
    boot_with(c, name)
}

/// [`boot`] with `c` as ns-run (registered or not).
fn boot_with(mut c: std::process::Command, name: &str) -> (ns_tests::Running, i32) {
    c.args(["-q", "-x", "-b", "-M", name, "-D"])
        .arg(debian_tree());
    let r = ns_tests::spawn(c, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(p) = pid1_of(r.pid()) {
            let state = in_container(p, &["systemctl", "is-system-running"]);
            match state.as_str() {
                "running" => return (r, p),
                "degraded" => panic!(
                    "degraded; failed units:\n{}",
                    in_container(p, &["systemctl", "--failed", "--no-legend"])
                ),
                _ => {}
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "systemd never reached running"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn no_cgroup_left(name: &str) {
    for h in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"] {
        let left: Vec<String> = ns_tests::settled(|| {
            std::fs::read_dir(h)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("ns-run-{name}-")))
                .collect()
        });
        assert!(left.is_empty(), "cgroups left in {h}: {left:?}");
    }
}

#[test]
fn systemd_boots_hybrid_and_sigterm_powers_off() {
    let name = ns_tests::unique("sd-hybrid");
    let (r, pid1) = boot(&name, &[]);
    let mounts = in_container(pid1, &["cat", "/proc/mounts"]);
    assert!(
        mounts.contains("/sys/fs/cgroup/systemd cgroup rw"),
        "{mounts}"
    );
    assert!(
        mounts.contains("/sys/fs/cgroup/unified cgroup2 rw"),
        "{mounts}"
    );
    assert!(
        mounts.contains("/sys/fs/cgroup/memory cgroup ro"),
        "{mounts}"
    );
    r.signal(libc::SIGTERM);
    let out = r
        .wait_for(std::time::Duration::from_secs(20))
        .expect("no orderly poweroff");
    assert_eq!(out.code, 0, "{out}");
    no_cgroup_left(&name);
}

#[test]
fn systemd_boots_on_pure_cgroup2_and_poweroff_inside_exits_0() {
    let name = ns_tests::unique("sd-unified");
    let (r, pid1) = boot(&name, &[("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")]);
    let mounts = in_container(pid1, &["cat", "/proc/mounts"]);
    assert!(
        mounts.contains("cgroup2 /sys/fs/cgroup cgroup2 rw"),
        "{mounts}"
    );
    in_container(pid1, &["systemctl", "poweroff"]);
    let out = r
        .wait_for(std::time::Duration::from_secs(20))
        .expect("poweroff");
    assert_eq!(out.code, 0, "{out}");
    no_cgroup_left(&name);
}

#[test]
fn systemd_boots_legacy_and_reboot_inside_gives_133() {
    let name = ns_tests::unique("sd-legacy");
    let (r, pid1) = boot(&name, &[("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "0")]);
    let mounts = in_container(pid1, &["cat", "/proc/mounts"]);
    assert!(
        !mounts.contains("cgroup2"),
        "legacy has no cgroup2: {mounts}"
    );
    in_container(pid1, &["systemctl", "reboot"]);
    let out = r
        .wait_for(std::time::Duration::from_secs(20))
        .expect("reboot");
    assert_eq!(out.code, 133, "{out}");
    no_cgroup_left(&name);
}

#[test]
fn notify_ready_passes_the_guests_readiness_on() {
    notify_ready(&[], "sd-notify");
}

#[test]
fn systemd_boots_in_a_user_namespace() {
    // Under -U the container's cgroups and /run/host/notify belong to container root (the
    // range's base on the host), as with nspawn: else systemd cannot make init.scope.
    notify_ready(&["-U"], "sd-userns");
}

fn notify_ready(extra: &[&str], machine: &str) {
    let machine = &ns_tests::unique(machine);
    let tree = debian_tree();
    let dir = Tree::empty(machine);
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut c = ns_tests::ns_run();
    c.args(extra)
        .args(["-q", "-x", "-b", "--notify-ready=yes", "-M", machine, "-D"])
        .arg(tree);
    c.env("NOTIFY_SOCKET", &sock_path);
    let r = ns_tests::spawn(c, None);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 from ns-run");
    assert_eq!(&buf[..n], b"READY=1\n");
    // By then systemd is up: the guest reported it through /run/host/notify.
    let pid1 = pid1_of(r.pid()).expect("PID 1");
    assert_eq!(
        in_container(pid1, &["systemctl", "is-system-running"]),
        "running"
    );
    r.signal(libc::SIGTERM);
    let out = r
        .wait_for(std::time::Duration::from_secs(20))
        .expect("poweroff");
    assert_eq!(out.code, 0, "{out}");
    no_cgroup_left(machine);
}

#[test]
fn ns_ctl_shell_poweroff_and_reboot_a_booted_container() {
    let ctl = |args: &[&str]| {
        let mut c = std::process::Command::new(ns_tests::bin("ns-ctl"));
        c.args(args);
        ns_tests::run_cmd(c, None)
    };
    for (verb, code) in [("poweroff", 0), ("reboot", 133)] {
        let name = ns_tests::unique(&format!("sd-ctl-{verb}"));
        let (r, _) = boot_with(ns_tests::ns_run_registered(), &name);
        let out = ctl(&["shell", &name, "--", "systemctl", "is-system-running"]);
        assert_eq!((out.code, out.stdout.trim()), (0, "running"), "{out}");
        assert_eq!(ctl(&[verb, &name]).code, 0);
        let out = r
            .wait_for(std::time::Duration::from_secs(20))
            .unwrap_or_else(|o| panic!("no {verb}: {o}"));
        assert_eq!(out.code, code, "{verb}: {out}");
        no_cgroup_left(&name);
    }
}

/// `--set-credential=`: a booted systemd imports the container's credentials as system
/// credentials (`systemd-creds --system list`, and `cat` shows the value).
#[test]
fn a_booted_systemd_sees_the_credentials() {
    let name = ns_tests::unique("sd-creds");
    let mut c = ns_tests::ns_run();
    c.arg("--set-credential=ns-test-cred:s3cr3t");
    let (r, pid1) = boot_with(c, &name);
    let list = in_container(pid1, &["systemd-creds", "--system", "list", "--no-legend"]);
    let value = in_container(pid1, &["systemd-creds", "--system", "cat", "ns-test-cred"]);
    r.signal(libc::SIGTERM);
    let out = r
        .wait_for(std::time::Duration::from_secs(20))
        .expect("no orderly poweroff");
    assert_eq!(out.code, 0, "{out}");
    assert!(
        list.lines().any(|l| l.starts_with("ns-test-cred ")),
        "{list}"
    );
    assert_eq!(value, "s3cr3t");
}
