//! Real containers on busybox trees: PID 1, identity, mounts, /dev, capabilities,
//! environment, exit statuses, stdio and fds, read-only root and user mounts.
//!
//! ns-run takes an exclusive lock on the tree of a container that may write to it, so every
//! test that runs such a container has its own tree ([`tree`]); the shared fixture serves
//! only `--read-only` runs, which share the lock.

use std::collections::BTreeSet;
use std::path::Path;

use ns_tests::{
    assert_mounts_unchanged, fixture, host_cap_bnd, host_os_release, is_uuid, ns_run, our_mounts,
    run, run_cmd, run_stdin, s, sh_ok, status_dec, status_hex, Output, Tree, CAP_NET_ADMIN,
    CAP_NET_RAW, DEFAULT_PATH, NSPAWN_DEFAULT_CAPS,
};

/// A private busybox tree for one test.
fn tree() -> Tree {
    Tree::rootfs("box")
}

/// `ns-run -D ROOT OPTS... sh -c SCRIPT`, checking the host mount table is unchanged.
fn sh_with(root: &Path, opts: &[&str], script: &str) -> Output {
    let before = our_mounts();
    let mut args = vec!["-D", s(root)];
    args.extend_from_slice(opts);
    args.extend(["sh", "-c", script]);
    let out = run(&args);
    assert_mounts_unchanged(&before);
    out
}

/// /proc/self/status of the payload itself (`cat` is the payload, exec'd directly).
fn payload_status(root: &Path, opts: &[&str]) -> String {
    let mut args = vec!["-D", s(root)];
    args.extend_from_slice(opts);
    args.extend(["cat", "/proc/self/status"]);
    let out = run(&args);
    out.ok().to_string()
}

fn cap(status: &str, field: &str) -> u64 {
    status_hex(status, field).unwrap_or_else(|| panic!("no {field} in\n{status}"))
}

// ---------------------------------------------------------------------------------------
// PID, identity

#[test]
fn payload_is_pid_1() {
    let t = tree();
    assert_eq!(sh_ok(&t, &[], "echo $$"), "1\n");
}

#[test]
fn short_options_take_attached_values_as_getopt_does() {
    // `-D/srv/box -udaemon` is `-D /srv/box -u daemon` to nspawn's getopt; clap alone read
    // `-D/...` as the start of the command.
    let t = tree();
    let dir = format!("-D{}", t.arg());
    let out = run(&[
        &dir,
        "-udaemon",
        "-qMattached",
        "sh",
        "-c",
        "id -u; hostname",
    ]);
    assert_eq!(out.ok(), "1\nattached\n");
}
#[test]
fn hostname_is_the_directory_name() {
    let t = Tree::rootfs("named-box");
    let name = "named-box";
    assert_eq!(sh_ok(&t, &[], "hostname"), format!("{name}\n"));
    // The container has its own UTS namespace: the host's name is untouched.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), name);
}

#[test]
fn hostname_is_cleaned_up_like_nspawn() {
    let t = Tree::rootfs("My_Root.v2");
    let out = run(&["-D", t.arg(), "hostname"]);
    assert_eq!(out.ok(), "MyRoot.v2\n");
    let state = run(&["-D", t.arg(), "--print-state"]);
    let v: serde_json::Value = serde_json::from_str(state.ok()).unwrap();
    assert_eq!(v["machine"], "MyRoot.v2");
}

#[test]
fn machine_name_and_hostname_options() {
    let t = tree();
    assert_eq!(sh_ok(&t, &["-M", "box"], "hostname"), "box\n");
    assert_eq!(sh_ok(&t, &["--hostname=other"], "hostname"), "other\n");
    assert_eq!(
        sh_ok(&t, &["-M", "box", "--hostname=other"], "hostname"),
        "other\n"
    );
    assert_eq!(
        sh_ok(
            &t,
            &["--machine=box.example"],
            "cat /proc/sys/kernel/hostname"
        ),
        "box.example\n"
    );
}

// ---------------------------------------------------------------------------------------
// Mounts and /dev

struct MountEntry {
    source: String,
    target: String,
    fstype: String,
    options: Vec<String>,
}

fn container_mounts(root: &Path, opts: &[&str]) -> Vec<MountEntry> {
    sh_with(root, opts, "cat /proc/mounts")
        .ok()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            MountEntry {
                source: f[0].into(),
                target: f[1].into(),
                fstype: f[2].into(),
                options: f[3].split(',').map(String::from).collect(),
            }
        })
        .collect()
}

fn find<'a>(m: &'a [MountEntry], target: &str) -> &'a MountEntry {
    // The last mount on a path is the visible one.
    m.iter()
        .rev()
        .find(|e| e.target == target)
        .unwrap_or_else(|| panic!("nothing mounted on {target}"))
}

#[test]
fn api_file_systems_are_mounted() {
    let t = tree();
    let m = container_mounts(t.path(), &[]);
    let expect: [(&str, &str, Option<&str>); 9] = [
        ("/proc", "proc", Some("rw")),
        ("/proc/sys", "proc", Some("ro")),
        ("/sys", "sysfs", Some("ro")),
        ("/dev", "tmpfs", None),
        ("/dev/pts", "devpts", None),
        ("/dev/shm", "tmpfs", None),
        ("/dev/mqueue", "mqueue", None),
        ("/run", "tmpfs", Some("rw")),
        ("/tmp", "tmpfs", Some("rw")),
    ];
    for (target, fstype, mode) in expect {
        let e = find(&m, target);
        assert_eq!(e.fstype, fstype, "{target}");
        if let Some(mode) = mode {
            assert_eq!(e.options[0], mode, "{target}: {:?}", e.options);
        }
    }
    let root = find(&m, "/");
    assert_eq!(root.options[0], "rw", "root: {:?}", root.options);
    for t in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        assert!(
            find(&m, t).options.iter().any(|o| o == "nosuid"),
            "{t} is not nosuid"
        );
    }
    assert!(find(&m, "/proc").options.iter().any(|o| o == "noexec"));
    // No host mount is visible: only the root, the API file systems (with nspawn's cgroup
    // file systems at /sys/fs/cgroup) and proc's read-only sub-directories.
    let allowed = [
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/run",
        "/run/host",
        "/tmp",
    ];
    // systemd's container interface, as nspawn: /run/host read-only.
    assert_eq!(find(&m, "/run/host").options[0], "ro");
    // The kernel-internals files of /proc masked (those this kernel has).
    let masked = ["kallsyms", "kcore", "keys", "sysrq-trigger", "timer_list"];
    for e in &m {
        let masked_proc_file = e
            .target
            .strip_prefix("/proc/")
            .is_some_and(|f| masked.contains(&f))
            && e.fstype == "tmpfs";
        assert!(
            allowed.contains(&e.target.as_str())
                || masked_proc_file
                || (e.target.starts_with("/proc/") && e.source == "proc")
                || (e.target.starts_with("/sys/fs/cgroup")
                    && ["tmpfs", "cgroup", "cgroup2"].contains(&e.fstype.as_str())),
            "unexpected mount in the container: {} on {} ({})",
            e.source,
            e.target,
            e.fstype
        );
    }
}

#[test]
fn proc_kernel_internals_are_masked() {
    use std::os::unix::fs::PermissionsExt;
    // kallsyms, keys and timer_list exist on every kernel we run on; kcore and sysrq-trigger
    // only with their config options: each that the host has is an empty, mode-0000,
    // read-only node in the container (nspawn skips this on hosts without systemd).
    let t = tree();
    for f in ["kallsyms", "kcore", "keys", "sysrq-trigger", "timer_list"] {
        let p = format!("/proc/{f}");
        if !std::path::Path::new(&p).exists() {
            continue;
        }
        assert!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777 != 0,
            "{p} is already masked on the host"
        );
        let out = sh_ok(
            &t,
            &[],
            &format!("stat -c %a {p}; wc -c < {p}; echo x 2>/dev/null > {p} || echo refused"),
        );
        assert_eq!(out, "0\n0\nrefused\n", "{p}");
    }
}

#[test]
fn proc_sys_is_read_only() {
    let t = tree();
    let out = sh_with(t.path(), &[], "echo x > /proc/sys/kernel/hostname");
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
}

#[test]
fn dev_holds_only_the_safe_nodes() {
    let t = tree();
    let got: BTreeSet<String> = sh_ok(&t, &[], "ls -A /dev")
        .lines()
        .map(String::from)
        .collect();
    let want: BTreeSet<String> = [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
        "stdin", "stdout", "stderr", "char",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
    // The nodes work and are what they claim to be.
    let out = sh_ok(
        &t,
        &[],
        "echo x > /dev/null && head -c 5 /dev/zero | wc -c && head -c 8 /dev/urandom | wc -c; \
         stat -c '%F %t:%T %a' /dev/null /dev/zero /dev/tty; readlink /dev/ptmx; readlink /dev/fd",
    );
    assert_eq!(
        out,
        "5\n8\ncharacter special file 1:3 666\ncharacter special file 1:5 666\n\
         character special file 5:0 666\npts/ptmx\n/proc/self/fd\n"
    );
}

// ---------------------------------------------------------------------------------------
// Capabilities and privileges

#[test]
fn default_capabilities_are_nspawns_within_the_host_bounding_set() {
    let t = tree();
    let want = NSPAWN_DEFAULT_CAPS & host_cap_bnd();
    let st = payload_status(t.path(), &[]);
    for f in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(cap(&st, f), want, "{f}: {:#x} != {want:#x}", cap(&st, f));
    }
    assert_eq!(cap(&st, "CapAmb"), 0);
    assert_eq!(status_dec(&st, "NoNewPrivs"), Some(0));
}

#[test]
fn private_network_adds_net_admin_and_only_lo() {
    let t = tree();
    let want = (NSPAWN_DEFAULT_CAPS | CAP_NET_ADMIN) & host_cap_bnd();
    let st = payload_status(t.path(), &["--private-network"]);
    assert_eq!(cap(&st, "CapBnd"), want);
    assert_eq!(cap(&st, "CapEff"), want);

    let out = sh_ok(&t, &["--private-network"], "cat /proc/net/dev");
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    let link = sh_ok(&t, &["--private-network"], "ip link show");
    let heads: Vec<&str> = link.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 1, "{link}");
    assert!(heads[0].starts_with("1: lo: <"), "{link}");
    let flags = heads[0].split(['<', '>']).nth(1).unwrap();
    assert!(flags.split(',').any(|f| f == "UP"), "lo is not up: {link}");
    // 127.0.0.1 answers.
    let ping = sh_with(
        t.path(),
        &["--private-network"],
        "ping -c 1 -W 2 127.0.0.1 >/dev/null",
    );
    assert_eq!(ping.code, 0, "{ping}");
}

#[test]
fn shared_network_sees_the_host_interfaces() {
    let t = tree();
    let host: BTreeSet<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect();
    let inside: BTreeSet<String> = sh_ok(&t, &[], "cat /proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(inside, host);
    let st = payload_status(t.path(), &[]);
    assert_eq!(cap(&st, "CapEff") & CAP_NET_ADMIN, 0);
}

#[test]
fn drop_all_capabilities() {
    let t = tree();
    let st = payload_status(t.path(), &["--drop-capability=all"]);
    for f in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(cap(&st, f), 0, "{f}");
    }
}

#[test]
fn capability_options_adjust_the_set() {
    let t = tree();
    let host = host_cap_bnd();
    let st = payload_status(t.path(), &["--drop-capability=CAP_SYS_ADMIN,CAP_MKNOD"]);
    let want = NSPAWN_DEFAULT_CAPS & host & !(1 << 21) & !(1 << 27);
    assert_eq!(cap(&st, "CapBnd"), want);
    assert_eq!(cap(&st, "CapEff"), want);
    // CAP_SYS_TIME (25) is not in the default set; --capability adds it when the host has it.
    let st = payload_status(t.path(), &["--capability=CAP_SYS_TIME"]);
    assert_eq!(cap(&st, "CapEff"), (NSPAWN_DEFAULT_CAPS | 1 << 25) & host);
}

#[test]
fn user_daemon_has_no_capabilities() {
    let t = tree();
    let st = payload_status(t.path(), &["-u", "daemon"]);
    assert_eq!(cap(&st, "CapEff"), 0);
    assert_eq!(cap(&st, "CapPrm"), 0);
    assert_eq!(cap(&st, "CapAmb"), 0);
    assert_eq!(cap(&st, "CapBnd"), NSPAWN_DEFAULT_CAPS & host_cap_bnd());
    let uid = st.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().skip(1).collect::<Vec<_>>(), ["1"; 4]);
    let gid = st.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert_eq!(gid.split_whitespace().skip(1).collect::<Vec<_>>(), ["1"; 4]);
    let groups = st.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(
        groups.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["10"]
    );
    assert_eq!(sh_ok(&t, &["-u", "daemon"], "id -u; id -g"), "1\n1\n");
    assert_eq!(sh_ok(&t, &["-u", "1"], "id -un"), "daemon\n");
}

#[test]
fn ambient_capability_for_a_user() {
    let t = tree();
    let st = payload_status(
        t.path(),
        &["-u", "daemon", "--ambient-capability=CAP_NET_RAW"],
    );
    assert_eq!(cap(&st, "CapAmb"), CAP_NET_RAW);
    assert_eq!(cap(&st, "CapEff"), CAP_NET_RAW);
    assert_eq!(cap(&st, "CapPrm"), CAP_NET_RAW);
}

#[test]
fn no_new_privileges() {
    let t = tree();
    let st = payload_status(t.path(), &["--no-new-privileges=yes"]);
    assert_eq!(status_dec(&st, "NoNewPrivs"), Some(1));
    let st = payload_status(t.path(), &["--no-new-privileges=no"]);
    assert_eq!(status_dec(&st, "NoNewPrivs"), Some(0));
}

// ---------------------------------------------------------------------------------------
// Environment

/// The payload's environment (`env` exec'd directly), ns-run started with exactly `host`.
fn payload_env(root: &Path, host: &[(&str, &str)], opts: &[&str]) -> Vec<String> {
    let mut c = ns_run();
    c.env_clear();
    for (k, v) in host {
        c.env(k, v);
    }
    c.args(["-D", s(root)]).args(opts).arg("env");
    let out = run_cmd(c, None);
    out.ok().lines().map(String::from).collect()
}

fn host_env_lines() -> Vec<String> {
    let (id, version) = host_os_release();
    let mut v = Vec::new();
    if let Some(x) = version {
        v.push(format!("container_host_version_id={x}"));
    }
    if let Some(x) = id {
        v.push(format!("container_host_id={x}"));
    }
    v
}

#[test]
fn environment_is_nspawns() {
    let t = tree();
    let env = payload_env(t.path(), &[("TERM", "vt100"), ("FOO_LEAK", "1")], &[]);
    let uuid = env
        .iter()
        .find_map(|l| l.strip_prefix("container_uuid="))
        .unwrap_or_else(|| panic!("no container_uuid in {env:?}"));
    assert!(is_uuid(uuid), "{uuid}");
    let mut want: Vec<String> = [
        format!("PATH={DEFAULT_PATH}"),
        "container=systemd-nspawn".into(),
        "TERM=vt100".into(),
        "HOME=/root".into(),
        "USER=root".into(),
        "LOGNAME=root".into(),
        format!("container_uuid={uuid}"),
        "LANG=C.UTF-8".into(),
    ]
    .to_vec();
    want.extend(host_env_lines());
    assert_eq!(env, want);
    assert!(!env.iter().any(|l| l.contains("FOO_LEAK")));

    // No TERM on our side: none inside.
    let env = payload_env(t.path(), &[], &[]);
    assert!(!env.iter().any(|l| l.starts_with("TERM=")), "{env:?}");
    assert_eq!(env.len(), want.len() - 1, "{env:?}");
}

#[test]
fn environment_of_a_user() {
    let t = tree();
    let env = payload_env(t.path(), &[], &["-u", "daemon"]);
    for kv in ["HOME=/usr/sbin", "USER=daemon", "LOGNAME=daemon"] {
        assert!(env.iter().any(|l| l == kv), "{kv} missing: {env:?}");
    }
}

#[test]
fn setenv_overrides_and_adds() {
    let t = tree();
    let env = payload_env(
        t.path(),
        &[("FOO_COPY", "from-host")],
        &[
            "-E",
            "A=1",
            "-E",
            "PATH=/bin",
            "--setenv=B=x=y",
            "-E",
            "FOO_COPY",
        ],
    );
    for kv in ["A=1", "PATH=/bin", "B=x=y", "FOO_COPY=from-host"] {
        assert!(env.iter().any(|l| l == kv), "{kv} missing: {env:?}");
    }
    assert_eq!(env.iter().filter(|l| l.starts_with("PATH=")).count(), 1);
    // PATH is where the payload is looked up.
    let out = sh_ok(&t, &["-E", "PATH=/bin"], "echo $PATH; which cat");
    assert_eq!(out, "/bin\n/bin/cat\n");
}

#[test]
fn uuid_option_and_machine_id() {
    let t = tree();
    let env = payload_env(t.path(), &[], &["--uuid=0123456789ABCDEF0123456789ABCDEF"]);
    assert!(
        env.iter()
            .any(|l| l == "container_uuid=01234567-89ab-cdef-0123-456789abcdef"),
        "{env:?}"
    );
    // Without --uuid, the image's /etc/machine-id.
    let t = Tree::rootfs("mid");
    std::fs::write(
        t.path().join("etc/machine-id"),
        "fedcba9876543210fedcba9876543210\n",
    )
    .unwrap();
    let out = run(&["-D", t.arg(), "sh", "-c", "echo $container_uuid"]);
    assert_eq!(out.ok(), "fedcba98-7654-3210-fedc-ba9876543210\n");
}

// ---------------------------------------------------------------------------------------
// Working directory and the login shell

#[test]
fn working_directory() {
    let t = tree();
    assert_eq!(sh_ok(&t, &[], "pwd"), "/\n");
    assert_eq!(sh_ok(&t, &["--chdir=/tmp"], "pwd"), "/tmp\n");
    assert_eq!(sh_ok(&t, &["--chdir=/proc/sys"], "pwd"), "/proc/sys\n");
}

#[test]
fn no_command_runs_a_login_shell_in_home() {
    let t = tree();
    let out = run_stdin(&["-D", t.arg()], "echo $0; pwd; echo $$\n");
    assert_eq!(out.ok(), "-sh\n/root\n1\n");
    // An empty command after `--` is the same.
    let out = run_stdin(&["-D", t.arg(), "--"], "echo $0; pwd\n");
    assert_eq!(out.ok(), "-sh\n/root\n");
}

#[test]
fn no_command_under_as_pid2_runs_a_login_shell() {
    let t = tree();
    let out = run_stdin(&["-D", t.arg(), "-a"], "echo $0; pwd; echo $$\n");
    assert_eq!(out.ok(), "-sh\n/root\n2\n");
}

// ---------------------------------------------------------------------------------------
// --as-pid2 and exit statuses

#[test]
fn as_pid2_runs_ns_init_from_a_memfd() {
    let t = tree();
    let out = sh_ok(
        &t,
        &["-a"],
        "echo $$; readlink /proc/1/exe; cat /proc/1/comm; exit 0",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "2");
    assert!(lines[1].contains("memfd:"), "/proc/1/exe is {}", lines[1]);
    assert_eq!(lines[2], "ns-init");
}

#[test]
fn exit_status_is_relayed() {
    let t = tree();
    assert_eq!(sh_with(t.path(), &[], "exit 3").code, 3);
    assert_eq!(sh_with(t.path(), &[], "exit 200").code, 200);
    assert_eq!(sh_with(t.path(), &["-a"], "exit 7").code, 7);
    let out = sh_with(t.path(), &["-a"], "kill -9 $$");
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    let out = sh_with(t.path(), &["-a"], "kill -TERM $$");
    assert_eq!((out.code, out.signal), (143, None), "{out}");
    assert_eq!(sh_with(t.path(), &["-u", "daemon"], "exit 4").code, 4);
}

#[test]
fn as_pid2_reaps_orphans() {
    let t = tree();
    // A grandchild orphaned to PID 1 exits; PID 1 here never waits for it unless it is
    // ns-init (the payload execs sleep, which reaps nothing). Count zombies meanwhile.
    let script = "(sleep 0.5; ps -o stat,comm | grep -c '^Z'; true) & \
                  sh -c 'sleep 0.1 & exit 0'; exec sleep 1.5";
    // Control: with sleep as PID 1, the orphan stays a zombie.
    assert_eq!(sh_ok(&t, &[], script), "1\n");
    assert_eq!(sh_ok(&t, &["-a"], script), "0\n");
}

// ---------------------------------------------------------------------------------------
// Stdio and fds

#[test]
fn stdin_is_piped_through() {
    let t = tree();
    let out = run_stdin(&["-D", t.arg(), "cat"], "hi\n");
    assert_eq!(out.ok(), "hi\n");
    let out = run_stdin(&["-D", t.arg(), "-a", "cat"], "hi\nthere\n");
    assert_eq!(out.ok(), "hi\nthere\n");
    let out = run_stdin(&["-D", t.arg(), "-u", "daemon", "wc", "-c"], "12345");
    assert_eq!(out.ok().trim(), "5");
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let t = tree();
    let out = sh_with(t.path(), &[], "echo out; echo err >&2; echo out2");
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, "out\nout2\n");
    assert_eq!(out.stderr, "err\n");
    assert!(!out.stdout.contains('\r') && !out.stderr.contains('\r'));
}

#[test]
fn payload_gets_only_stdin_stdout_stderr() {
    let t = tree();
    // The shell's own fds (`; true` keeps it from exec'ing ls in its place).
    assert_eq!(sh_ok(&t, &[], "ls /proc/$$/fd; true"), "0\n1\n2\n");
    // ls of its own fds also sees the directory it reads.
    let out = sh_ok(&t, &[], "ls /proc/self/fd");
    let fds: Vec<&str> = out.lines().collect();
    assert!(
        fds.len() <= 4 && fds[..3] == ["0", "1", "2"],
        "payload fds: {fds:?}"
    );
    // Under -a: PID 1 (ns-init) and the payload alike.
    assert_eq!(
        sh_ok(&t, &["-a"], "ls /proc/1/fd /proc/$$/fd; true"),
        "/proc/1/fd:\n0\n1\n2\n\n/proc/2/fd:\n0\n1\n2\n"
    );
}

#[test]
fn inherited_host_fds_do_not_reach_the_payload() {
    let t = tree();
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/proc/self/mountinfo").unwrap();
    // Control: on the host, the fd does arrive.
    let mut c = std::process::Command::new("/bin/sh");
    c.args(["-c", "ls /proc/$$/fd; true"]);
    ns_tests::pass_fd(&mut c, f.as_raw_fd(), 7);
    assert!(run_cmd(c, None).ok().lines().any(|l| l == "7"));
    for opts in [&[][..], &["-a"][..]] {
        let mut c = ns_run();
        c.args(["-D", t.arg()])
            .args(opts)
            .args(["sh", "-c", "ls /proc/$$/fd; true"]);
        ns_tests::pass_fd(&mut c, f.as_raw_fd(), 7);
        let out = run_cmd(c, None);
        assert_eq!(out.ok(), "0\n1\n2\n", "with {opts:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Read-only root and user mounts

#[test]
fn read_only_root() {
    // --read-only shares the image lock: the shared fixture serves.
    let before = ns_tests::snapshot(fixture());
    let out = sh_with(
        fixture(),
        &["--read-only"],
        "touch /x; echo rc=$?; touch /etc/x; echo etc-rc=$?; touch /tmp/y && echo tmp-ok; \
         touch /run/z && echo run-ok; touch /dev/shm/s && echo shm-ok",
    );
    assert_eq!(
        out.stdout, "rc=1\netc-rc=1\ntmp-ok\nrun-ok\nshm-ok\n",
        "{out}"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    ns_tests::assert_snapshot_unchanged(fixture(), &before);
    let m = container_mounts(fixture(), &["--read-only"]);
    assert_eq!(find(&m, "/").options[0], "ro");
    for t in ["/tmp", "/run", "/dev/shm"] {
        assert_eq!(find(&m, t).options[0], "rw", "{t}");
    }
}

#[test]
fn read_only_root_with_writable_user_mounts() {
    // User mounts stay writable on a read-only root; their mount points are created before
    // the root turns read-only, and removed after exit.
    let t = tree();
    let src = t.host_dir("src");
    let before = ns_tests::snapshot(t.path());
    let out = sh_with(
        t.path(),
        &[
            "--read-only",
            &format!("--bind={}:/srv/data", s(&src)),
            "--tmpfs=/srv/scratch",
        ],
        "echo d > /srv/data/f && echo bind-ok; echo t > /srv/scratch/f && echo tmpfs-ok; \
         touch /srv/x; echo rc=$?",
    );
    assert_eq!(out.stdout, "bind-ok\ntmpfs-ok\nrc=1\n", "{out}");
    assert_eq!(std::fs::read_to_string(src.join("f")).unwrap(), "d\n");
    ns_tests::assert_snapshot_unchanged(t.path(), &before);
}

#[test]
fn bind_and_bind_ro() {
    let t = Tree::rootfs("binds");
    let rw = t.host_dir("rw");
    let ro = t.host_dir("ro");
    std::fs::write(rw.join("f"), "rw-file\n").unwrap();
    std::fs::write(ro.join("f"), "ro-file\n").unwrap();
    let before = our_mounts();
    let out = run(&[
        "-D",
        t.arg(),
        &format!("--bind={}:/mnt/rw", s(&rw)),
        &format!("--bind-ro={}:/mnt/ro", s(&ro)),
        "sh",
        "-c",
        "cat /mnt/rw/f /mnt/ro/f; echo new > /mnt/rw/new && echo rw-ok; \
         echo bad > /mnt/ro/bad; echo ro-rc=$?",
    ]);
    assert_eq!(out.stdout, "rw-file\nro-file\nrw-ok\nro-rc=1\n", "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    assert_eq!(std::fs::read_to_string(rw.join("new")).unwrap(), "new\n");
    assert!(!ro.join("bad").exists());
    assert_mounts_unchanged(&before);
    // Without a destination, the source path is used inside too.
    let out = run(&[
        "-D",
        t.arg(),
        &format!("--bind-ro={}", s(&ro)),
        "cat",
        &format!("{}/f", s(&ro)),
    ]);
    assert_eq!(out.ok(), "ro-file\n");
    // A file on a file.
    let file = t.host_dir("files").join("single");
    std::fs::write(&file, "single\n").unwrap();
    let out = run(&[
        "-D",
        t.arg(),
        &format!("--bind-ro={}:/etc/single", s(&file)),
        "cat",
        "/etc/single",
    ]);
    assert_eq!(out.ok(), "single\n");
    assert_mounts_unchanged(&before);
}

#[test]
fn tmpfs_option() {
    let t = Tree::rootfs("tmpfs");
    let before = our_mounts();
    let out = run(&[
        "-D",
        t.arg(),
        "--tmpfs=/mnt/t",
        "--tmpfs=/mnt/p:mode=0700",
        "sh",
        "-c",
        "grep -E ' /mnt/(t|p) ' /proc/mounts | cut -d' ' -f1-3; stat -c %a /mnt/t /mnt/p; \
         echo x > /mnt/t/x && echo ok",
    ]);
    assert_eq!(
        out.ok(),
        "tmpfs /mnt/t tmpfs\ntmpfs /mnt/p tmpfs\n755\n700\nok\n"
    );
    // The file went to the tmpfs, not into the image; the mount points ns-mount created in
    // the image are removed after exit.
    assert!(!t.path().join("mnt/t").exists());
    assert!(!t.path().join("mnt/p").exists());
    assert!(
        t.path().join("mnt").is_dir(),
        "the image's own /mnt was removed"
    );
    assert_mounts_unchanged(&before);
}

#[test]
fn user_mounts_apply_in_command_line_order() {
    let t = Tree::rootfs("order");
    let src = t.host_dir("src");
    std::fs::write(src.join("f"), "bound\n").unwrap();
    let bind = format!("--bind={}:/mnt/o", s(&src));
    // tmpfs, then the bind on top: the bind is visible.
    let out = run(&["-D", t.arg(), "--tmpfs=/mnt/o", &bind, "ls", "/mnt/o"]);
    assert_eq!(out.ok(), "f\n");
    // bind, then the tmpfs on top: an empty tmpfs.
    let out = run(&["-D", t.arg(), &bind, "--tmpfs=/mnt/o", "ls", "-A", "/mnt/o"]);
    assert_eq!(out.ok(), "");
}

#[test]
fn symlinks_in_the_image_cannot_redirect_mounts_to_the_host() {
    let t = Tree::rootfs("escape");
    // A host directory, and an absolute link in the image naming it. Followed on the host,
    // the link leads out of the image; resolved in the image, to the same path inside.
    // (Not under /tmp: the container has its own tmpfs there.)
    let victim = Path::new("/var/tmp").join(ns_tests::unique("ns-tests-victim"));
    std::fs::create_dir_all(&victim).unwrap();
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&victim);
    let inside = t.path().join(victim.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    std::os::unix::fs::symlink(&victim, t.path().join("mnt/esc")).unwrap();
    // A relative link climbing above the image's root.
    std::os::unix::fs::symlink("../../../../../../..", t.path().join("mnt/up")).unwrap();
    let src = t.host_dir("src");
    std::fs::write(src.join("f"), "bound\n").unwrap();
    let escaped = ns_tests::unique("ns-tests-escaped");
    let before = our_mounts();
    let mut c = ns_run();
    t.tag(&mut c).args([
        "-D",
        t.arg(),
        "--tmpfs=/mnt/esc/sub",
        &format!("--bind={}:/mnt/up/{escaped}", s(&src)),
        "sh",
        "-c",
        &format!("echo x > /mnt/esc/sub/x && cat /{escaped}/f && echo ready; sleep 100"),
    ]);
    let on_host = Path::new("/").join(&escaped);
    let out = ns_tests::while_running(c, || {
        assert!(
            !on_host.exists(),
            "{} was created on the host",
            on_host.display()
        );
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            0,
            "a mount point was created outside the image"
        );
        assert!(
            inside.join("sub").is_dir(),
            "the link was not resolved in the image"
        );
        assert!(!inside.join("sub/x").exists(), "the tmpfs was not mounted");
        assert!(
            t.path().join(&escaped).is_dir(),
            "the link was not clamped to the image"
        );
    });
    let leaked = on_host.exists();
    let _ = std::fs::remove_dir(&on_host);
    assert!(!leaked, "{} was created on the host", on_host.display());
    assert_eq!(out.stdout, "bound\nready\n", "{out}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    // The mount points created in the image are gone after exit; the image's own are kept.
    assert!(!inside.join("sub").exists());
    assert!(inside.is_dir());
    assert!(!t.path().join(&escaped).exists());
    assert_mounts_unchanged(&before);
}

#[test]
fn dangling_symlink_mount_point_is_created_inside_the_image() {
    let t = Tree::rootfs("dangling");
    std::os::unix::fs::symlink("/srv/data", t.path().join("mnt/dangling")).unwrap();
    let host_sub = Path::new("/srv/data/sub");
    let host_had = host_sub.exists();
    let mut c = ns_run();
    t.tag(&mut c).args([
        "-D",
        t.arg(),
        "--tmpfs=/mnt/dangling/sub",
        "sh",
        "-c",
        "grep -q ' /srv/data/sub ' /proc/self/mountinfo && echo ready; sleep 100",
    ]);
    ns_tests::while_running(c, || {
        assert!(t.path().join("srv/data/sub").is_dir());
        assert_eq!(host_sub.exists(), host_had, "created on the host");
    });
    // Created mount points are removed after exit, the image's symlink stays.
    assert!(!t.path().join("srv").exists());
    assert!(t.path().join("mnt/dangling").is_symlink());
    assert_eq!(host_sub.exists(), host_had);
}

#[test]
fn quiet_and_pipe_are_accepted() {
    let t = tree();
    assert_eq!(sh_ok(&t, &["-q"], "echo a"), "a\n");
    assert_eq!(sh_ok(&t, &["-P"], "echo b"), "b\n");
    assert_eq!(sh_ok(&t, &["--console=pipe"], "echo c"), "c\n");
}

#[test]
fn rlimit_oom_cpu_affinity_and_personality_as_nspawn() {
    // The values nspawn 252 gives for the same options (reference §2.10): limits in place,
    // the OOM score, the last CPU only, and `uname -m` = i686 for --personality=x86. (Lowering
    // the OOM score needs CAP_SYS_RESOURCE, which this VM's root does not have: a raise.)
    let t = tree();
    let last_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let affinity = format!("--cpu-affinity={last_cpu}");
    let out = sh_ok(
        &t,
        &[
            "--rlimit=NOFILE=100:200",
            "--rlimit=RLIMIT_NPROC=50",
            "--rlimit=CORE=0:infinity",
            "--oom-score-adjust=500",
            &affinity,
            "--personality=x86",
        ],
        "ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hc; cat /proc/self/oom_score_adj; \
         sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status; uname -m",
    );
    assert_eq!(
        out,
        format!("100\n200\n50\nunlimited\n500\n{last_cpu}\ni686\n")
    );
    // Bad values: one line naming the option and value, before anything is set up.
    for (opt, why) in [
        (
            "--rlimit=NOFILE=9:8",
            "the soft limit is above the hard limit",
        ),
        ("--rlimit=BOGUS=1", "unknown resource"),
        ("--oom-score-adjust=2000", "not a number from -1000 to 1000"),
        ("--cpu-affinity=3-1", "empty range"),
        ("--personality=arm", "unknown or unsupported personality"),
    ] {
        let out = sh_with(t.path(), &[opt], "true");
        assert_eq!(out.code, 125, "{opt}: {out}");
        assert!(
            out.stderr.starts_with(&format!("ns-run: {opt}: ")) && out.stderr.contains(why),
            "{opt}: {out}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{opt}: {out}");
    }
}
