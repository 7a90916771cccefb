//! Escapes through what the container's owner or its image may choose (issue 15): an
//! untrusted `.nspawn` file next to the image, huge user ids, forwarded ports reaching the
//! host's loopback, TIOCLINUX on a host VT, unsized tmpfs.

use std::path::PathBuf;

use ns_tests::{bin, ns_run, run_cmd, Output, Stopping, Tree};

// ---------------------------------------------------------------------------------------
// Untrusted .nspawn files (critical 4)

const UUID: &str = "--uuid=0123456789abcdef0123456789abcdef";

/// A settings file, removed on drop.
struct SettingsFile(PathBuf);

impl SettingsFile {
    /// Next to the image: untrusted.
    fn next_to(t: &Tree, machine: &str, text: &str) -> SettingsFile {
        let p = t.path().parent().unwrap().join(format!("{machine}.nspawn"));
        std::fs::write(&p, text).unwrap();
        SettingsFile(p)
    }

    /// In /run/systemd/nspawn: trusted.
    fn trusted(machine: &str, text: &str) -> SettingsFile {
        std::fs::create_dir_all("/run/systemd/nspawn").unwrap();
        let p = PathBuf::from(format!("/run/systemd/nspawn/{machine}.nspawn"));
        std::fs::write(&p, text).unwrap();
        SettingsFile(p)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// ns-run on `t` as `machine`, `opts` first.
fn ns(t: &Tree, machine: &str, opts: &[&str]) -> Output {
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-D", t.arg(), "-M", machine])
        .args(opts);
    run_cmd(c, None)
}

/// The state ns-run would run with, and its warnings; or the failure.
fn try_state(
    t: &Tree,
    machine: &str,
    opts: &[&str],
) -> Result<(serde_json::Value, String), String> {
    let out = ns(t, machine, &[&["--print-state"][..], opts].concat());
    if out.code != 0 {
        return Err(format!("{opts:?}: {out}"));
    }
    Ok((serde_json::from_str(&out.stdout).unwrap(), out.stderr))
}

fn state(t: &Tree, machine: &str, opts: &[&str]) -> (serde_json::Value, String) {
    try_state(t, machine, opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Every key nspawn 252 ignores in an untrusted file (its merge_settings; checked against
/// `systemd-nspawn` 252 on this host): (file text, what the warning names, options the case
/// needs on the command line).
const UNTRUSTED: &[(&str, &str, &[&str])] = &[
    ("[Exec]\nEphemeral=yes\n", "ephemeral setting", &[]),
    (
        "[Exec]\nCapability=CAP_SYS_MODULE\n",
        "Capability= setting",
        &[],
    ),
    (
        "[Exec]\nAmbientCapability=CAP_CHOWN\n",
        "AmbientCapability= setting",
        &[],
    ),
    (
        "[Exec]\nMachineID=fedcba9876543210fedcba9876543210\n",
        "MachineID= setting",
        &[],
    ),
    (
        "[Exec]\nPrivateUsers=no\n",
        "PrivateUsers= and PrivateUsersChown= settings",
        &[],
    ),
    (
        "[Files]\nPrivateUsersChown=yes\n",
        "PrivateUsers= and PrivateUsersChown= settings",
        &[],
    ),
    (
        "[Files]\nPrivateUsersOwnership=chown\n",
        "PrivateUsers= and PrivateUsersChown= settings",
        &[],
    ),
    (
        "[Exec]\nSystemCallFilter=@keyring\n",
        "SystemCallFilter= settings",
        &[],
    ),
    // A deny line goes with the allow line next to it (nspawn keeps one pair of lists).
    (
        "[Exec]\nSystemCallFilter=@keyring\nSystemCallFilter=~@clock\n",
        "SystemCallFilter= settings",
        &[],
    ),
    ("[Exec]\nLimitNOFILE=100000\n", "LimitNOFILE= setting", &[]),
    ("[Exec]\nLimitNPROC=infinity\n", "LimitNPROC= setting", &[]),
    (
        "[Exec]\nOOMScoreAdjust=-1000\n",
        "OOMScoreAdjust= setting",
        &[],
    ),
    ("[Exec]\nCPUAffinity=0\n", "CPUAffinity= setting", &[]),
    ("[Exec]\nLinkJournal=host\n", "journal link setting", &[]),
    ("[Files]\nBindUser=root\n", "bind user setting", &[]),
    (
        "[Files]\nBind=/etc:/mnt\n",
        "TemporaryFileSystem=, Bind= and BindReadOnly= settings",
        &[],
    ),
    (
        "[Files]\nBindReadOnly=/etc:/mnt\n",
        "TemporaryFileSystem=, Bind= and BindReadOnly= settings",
        &[],
    ),
    (
        "[Files]\nTemporaryFileSystem=/mnt\n",
        "TemporaryFileSystem=, Bind= and BindReadOnly= settings",
        &[],
    ),
    (
        "[Files]\nInaccessible=/etc/hostname\n",
        "TemporaryFileSystem=, Bind= and BindReadOnly= settings",
        &[],
    ),
    (
        "[Files]\nOverlay=/etc:/mnt\n",
        "TemporaryFileSystem=, Bind= and BindReadOnly= settings",
        &[],
    ),
    ("[Network]\nPrivate=yes\n", "network settings", &[]),
    ("[Network]\nVirtualEthernet=yes\n", "network settings", &[]),
    (
        "[Network]\nPort=tcp:8080:80\n",
        "Port= setting",
        &["-n", "--network-address=10.231.9.2/24"],
    ),
];

/// Each untrusted key is ignored with nspawn's warning, even with `--settings=override` and
/// `-U` (what `ns-ctl start` passes), while the same file in /run/systemd/nspawn is obeyed.
#[test]
fn untrusted_settings_files_are_ignored_for_every_key_nspawn_ignores() {
    let t = Tree::rootfs("trust-keys");
    let mut failures = Vec::new();
    for (i, (text, what, extra)) in UNTRUSTED.iter().enumerate() {
        let m = format!("esc-trust-{}-{i}", std::process::id());
        let opts = [&["-U", UUID][..], extra].concat();
        let (plain, _) = state(&t, &m, &[&["--settings=no"][..], &opts].concat());
        let opts = [&["--settings=override"][..], &opts].concat();
        let from_untrusted = {
            let _f = SettingsFile::next_to(&t, &m, text);
            try_state(&t, &m, &opts)
        };
        let warning = format!("Ignoring {what}, file ");
        match from_untrusted {
            Err(e) => failures.push(format!("{text:?}: untrusted: {e}")),
            Ok((s, _)) if s != plain => {
                failures.push(format!("{text:?}: an untrusted file changed the state"))
            }
            Ok((_, w)) if !w.contains(&warning) => {
                failures.push(format!("{text:?}: no warning {warning:?}: {w}"))
            }
            Ok(_) => {}
        }
        // A trusted file is obeyed: the state changes, or ns-run refuses the value as it
        // refuses the option's value.
        let _f = SettingsFile::trusted(&m, text);
        match try_state(&t, &m, &opts) {
            Ok((s, _)) if s == plain => {
                failures.push(format!("{text:?}: a trusted file changed nothing"))
            }
            Err(e) if !e.contains("--") => failures.push(format!("{text:?}: trusted: {e}")),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What nspawn keeps from an untrusted file: a deny-only system call filter, and keys that
/// cannot widen the container (hostname, environment, read-only...).
#[test]
fn untrusted_settings_files_keep_what_only_restricts() {
    let t = Tree::rootfs("trust-kept");
    let m = ns_tests::unique("esc-trust-kept");
    let (want, _) = state(
        &t,
        &m,
        &[
            &[UUID][..],
            &[
                "--settings=no",
                "--system-call-filter=~@clock",
                "--hostname=kept",
                "--read-only",
                "--drop-capability=CAP_CHOWN",
            ],
        ]
        .concat(),
    );
    let _f = SettingsFile::next_to(
        &t,
        &m,
        "[Exec]\nSystemCallFilter=~@clock\nHostname=kept\nDropCapability=CAP_CHOWN\n\
         [Files]\nReadOnly=yes\n",
    );
    let (got, warnings) = state(&t, &m, &["--settings=override", UUID]);
    assert_eq!(got, want);
    assert!(!warnings.contains("not trusted"), "{warnings}");
}

/// The attack itself: `PrivateUsers=no` and `SystemCallFilter=@keyring` next to the image,
/// started as `ns-ctl start` starts it (`-U --settings=override`). The container keeps its
/// user namespace and keyctl stays denied.
#[test]
fn an_untrusted_file_cannot_drop_the_user_namespace_or_allow_keyctl() {
    let t = Tree::rootfs("trust-run");
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    let m = ns_tests::unique("esc-trust-run");
    let _f = SettingsFile::next_to(
        &t,
        &m,
        "[Exec]\nPrivateUsers=no\nSystemCallFilter=@keyring\n",
    );
    let out = ns(
        &t,
        &m,
        &[
            "-q",
            "-U",
            "--settings=override",
            "sh",
            "-c",
            "cat /proc/self/uid_map; ns-probe syscall keyctl",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let map: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(map[0], "0", "{out}");
    assert_ne!(
        map[1], "0",
        "the container runs in the host's user namespace: {out}"
    );
    assert_ne!(map[2], "4294967295", "{out}");
    assert_eq!(lines[1], "EPERM", "keyctl: {out}");
}

// ---------------------------------------------------------------------------------------
// Huge user and group ids (medium 9): setresuid(-1) means "unchanged", so uid 4294967295
// would leave the payload root with all its capabilities. Ids from 2^31 - 1 up are refused
// before anything runs, wherever they come from.

const HUGE: &[&str] = &["4294967295", "2147483647", "4294967296"];

/// ns-run `-u ID` (and a name whose /etc/passwd or /etc/group entry has such an id): exit
/// 125, one line naming the value, and the payload never runs.
#[test]
fn huge_user_ids_are_refused() {
    let t = Tree::rootfs("trust-ids");
    let etc = t.path().join("etc");
    let mut passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    passwd.push_str("bigu:x:4294967295:100::/:/bin/sh\nbigg:x:1000:4294967295::/:/bin/sh\n");
    passwd.push_str("member:x:1001:1001::/:/bin/sh\n");
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    let mut group = std::fs::read_to_string(etc.join("group")).unwrap();
    group.push_str("huge:x:4294967295:member\n");
    std::fs::write(etc.join("group"), group).unwrap();
    let mut cases: Vec<(String, &str)> = HUGE.iter().map(|u| (u.to_string(), *u)).collect();
    cases.push(("bigu".into(), "4294967295"));
    cases.push(("bigg".into(), "4294967295"));
    cases.push(("member".into(), "4294967295"));
    for opts in [&[][..], &["-U"][..]] {
        for (user, shown) in &cases {
            let mut c = ns_run();
            t.tag(&mut c).args(["-q", "-D", t.arg()]).args(opts).args([
                "-u",
                user,
                "sh",
                "-c",
                "echo RAN; id -u",
            ]);
            let out = run_cmd(c, None);
            assert_eq!(out.code, 125, "{opts:?} -u {user}: {out}");
            assert!(!out.stdout.contains("RAN"), "{opts:?} -u {user}: {out}");
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "{opts:?} -u {user}: {out}");
            assert!(lines[0].contains(shown), "{opts:?} -u {user}: {out}");
        }
    }
    // --private-users=yes takes its base from the root directory's owner: a range that
    // would run past the largest id is refused too.
    let high = Tree::rootfs("trust-ids-yes");
    std::os::unix::fs::lchown(high.path(), Some(4294967200), Some(4294967200)).unwrap();
    let mut c = ns_run();
    high.tag(&mut c)
        .args(["-q", "-D", high.arg(), "--private-users=yes", "true"]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr,
        "ns-run: --private-users=yes: the range goes past the largest id\n"
    );
    // The largest id that is still allowed runs as itself.
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg(), "-u", "2147483646", "id", "-u"]);
    let out = run_cmd(c, None);
    assert_eq!((out.code, out.stdout.trim()), (0, "2147483646"), "{out}");
}

/// `ns-ctl shell --uid=ID` into a running container: the same refusal, nothing run.
#[test]
fn huge_user_ids_are_refused_by_ns_ctl_shell() {
    let t = Tree::rootfs("trust-ids-shell");
    let etc = t.path().join("etc");
    let mut passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    passwd.push_str("bigu:x:4294967295:100::/:/bin/sh\n");
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    let m = ns_tests::unique("esc-trust-shell");
    let mut c = ns_tests::ns_run_registered();
    t.tag(&mut c).args(["-q", "-D", t.arg(), "-M", &m]).args([
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    ns_tests::while_running(c, || {
        for (uid, shown) in [("4294967295", "4294967295"), ("bigu", "4294967295")] {
            let mut c = std::process::Command::new(bin("ns-ctl"));
            c.args([
                "shell",
                &format!("--uid={uid}"),
                &m,
                "--",
                "/bin/sh",
                "-c",
                "echo RAN",
            ]);
            let out = run_cmd(c, None);
            assert_eq!(out.code, 125, "--uid={uid}: {out}");
            assert!(!out.stdout.contains("RAN"), "--uid={uid}: {out}");
            let lines = out.stderr_lines();
            assert!(
                lines.len() == 1 && lines[0].contains(shown),
                "--uid={uid}: {out}"
            );
        }
    });
}

/// config.json's process.user (uid, gid, additionalGids) with a huge id: `ns-oci run` and
/// `ns-run --oci-bundle` refuse it with one line naming it, and leave no state.
#[test]
fn huge_oci_user_ids_are_refused() {
    for (field, value) in [
        ("uid", serde_json::json!(4294967295u32)),
        ("gid", serde_json::json!(4294967295u32)),
        ("additionalGids", serde_json::json!([4294967295u32])),
        ("uid", serde_json::json!(2147483647u32)),
    ] {
        let t = Tree::empty("trust-oci-ids");
        let root = t.host_dir("oci-root");
        ns_tests::spec_bundle(&t, &["sh", "-c", "echo RAN; id -u"], |v| {
            v["process"]["user"][field] = value.clone();
        });
        let o = std::process::Command::new(bin("ns-oci"))
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle", t.arg(), &ns_tests::unique("huge")])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_ne!(o.status.code(), Some(0), "{field}={value}: {out} {err}");
        assert!(!out.contains("RAN"), "{field}={value}: {out} {err}");
        assert_eq!(err.lines().count(), 1, "{field}={value}: {err}");
        assert!(
            err.contains(value.to_string().trim_matches(['[', ']'])),
            "{err}"
        );
        assert!(
            !root.join("huge").exists(),
            "state left for {field}={value}"
        );
        let mut c = ns_run();
        c.args(["-q", "--oci-bundle", t.arg()]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{field}={value}: {out}");
        assert!(!out.stdout.contains("RAN"), "{field}={value}: {out}");
    }
}

// ---------------------------------------------------------------------------------------
// TIOCLINUX (medium 11): a VT's select-and-paste types into the terminal, like TIOCSTI; a
// host VT given as stdin would take the container's input as the host user's. The filter
// answers EPERM before the terminal sees the request (without it: ENOTTY on a non-VT).

#[test]
fn tioclinux_is_denied_like_tiocsti() {
    let t = Tree::rootfs("trust-tioclinux");
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    for opts in [&[][..], &["-U"][..], &["--capability=all"][..]] {
        for probe in ["tioclinux", "tiocsti"] {
            let mut c = ns_run();
            t.tag(&mut c)
                .args(["-q", "-D", t.arg()])
                .args(opts)
                .args(["ns-probe", probe]);
            let out = run_cmd(c, None);
            assert_eq!(out.code, 0, "{opts:?} {probe}: {out}");
            assert_eq!(out.stdout.trim(), "EPERM", "{opts:?} {probe}: {out}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// tmpfs sizes (medium 12): nspawn 252's limits (systemd's TMPFS_LIMITS_*): /tmp and /dev/shm
// 10% of RAM and 400k inodes, /run 20% and 800k; the volatile root, volatile /var and the
// scratch tmpfs holding -x's upper layer 25% and 1M inodes (nspawn's volatile limits). Read
// with statfs inside the container (an overlay reports its upper layer's file system).

/// The host's RAM in pages, as the kernel counts it for `size=N%` (MemTotal / page size).
fn ram_pages() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // SAFETY: sysconf takes an integer.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    kb * 1024 / page
}

/// `size=pct%` in blocks of a page, as the kernel rounds it.
fn pct_blocks(pct: u64) -> u64 {
    (ram_pages() * pct).div_ceil(100)
}

#[test]
fn tmpfs_mounts_have_nspawns_limits() {
    let t = Tree::rootfs("trust-tmpfs");
    let merged = Tree::merged_usr("trust-tmpfs-usr");
    // (options, path inside, blocks, inodes); --volatile=yes runs on a merged-/usr tree.
    let cases: &[(&[&str], &str, u64, u64)] = &[
        (&[], "/tmp", pct_blocks(10), 400 * 1024),
        (&[], "/dev/shm", pct_blocks(10), 400 * 1024),
        (&[], "/run", pct_blocks(20), 800 * 1024),
        (&["-U"], "/tmp", pct_blocks(10), 400 * 1024),
        (&["-U"], "/dev/shm", pct_blocks(10), 400 * 1024),
        (&["-x"], "/", pct_blocks(25), 1024 * 1024),
        (&["-x", "-U"], "/", pct_blocks(25), 1024 * 1024),
        (&["--volatile=yes"], "/", pct_blocks(25), 1024 * 1024),
        (&["--volatile=state"], "/var", pct_blocks(25), 1024 * 1024),
    ];
    let mut failures = Vec::new();
    for (opts, path, blocks, inodes) in cases {
        let t = if opts.contains(&"--volatile=yes") {
            &merged
        } else {
            &t
        };
        let mut c = ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg()])
            .args(*opts)
            .args(["stat", "-f", "-c", "%b %c", path]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 0, "{opts:?} {path}: {out}");
        let got: Vec<u64> = out
            .stdout
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        if got != [*blocks, *inodes] {
            failures.push(format!(
                "{opts:?} {path}: {got:?} blocks and inodes, want [{blocks}, {inodes}]"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// -p and the host's loopback (medium 10): forwarding the host's own connections to
// 127.0.0.1:PORT needs route_localnet on the veth's host end, which also lets the container
// send to the host's 127.0.0.1 (and with a 127.0.0.1 source). Its frames, built by hand with
// a packet socket (ns-probe udp-frame), must not reach the host; -p to localhost still works.
// The "host" is a network namespace of the test.

/// A UDP socket bound to 0.0.0.0:`port` in the network namespace `netns` (bound from a
/// thread that entered it; the socket stays there).
fn udp_socket_in(netns: &str, port: u16) -> std::net::UdpSocket {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on an fd we hold; it changes this thread's network namespace only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn a_container_cannot_reach_the_hosts_loopback_through_port_forwarding() {
    let netns = ns_tests::TestNetns::new("lnet");
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(["-n", &netns.name])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "ip {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    ip(&["link", "set", "lo", "up"]);
    let sock = udp_socket_in(&netns.name, 5999);
    sock.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
        .unwrap();
    let t = Tree::rootfs("trust-lnet");
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    let script = "i=0; while [ ! -s /mac ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
        M=$(cat /mac); \
        ns-probe udp-frame host0 $M 10.231.41.2 10.231.41.1 5999 control; \
        ns-probe udp-frame host0 $M 10.231.41.2 127.0.0.1 5999 to-loopback; \
        ns-probe udp-frame host0 $M 127.0.0.2 10.231.41.1 5999 from-loopback; \
        echo sent; while true; do echo hello-localnet | nc -l -p 80; done";
    let mut c = std::process::Command::new("nsenter");
    c.arg(netns.nsenter_arg()).arg(bin("ns-run"));
    t.tag(&mut c).args([
        "--register=no",
        "-q",
        "-D",
        t.arg(),
        "-M",
        "esc-lnet",
        "-n",
        "--network-address=10.231.41.2/24",
        "--network-host-address=10.231.41.1/24",
        "-p",
        "8080:80",
        "sh",
        "-c",
        script,
    ]);
    let mut r = Stopping::new(ns_tests::spawn(c, None));
    // The host end's Ethernet address, for the container's frames.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mac = loop {
        let links = std::process::Command::new("ip")
            .args(["-n", &netns.name, "-o", "link", "show", "ve-esc-lnet"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout).to_string();
        if let Some(m) = links
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
        {
            break m.to_string();
        }
        assert!(std::time::Instant::now() < end, "no host end: {links}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::fs::write(t.path().join("mac"), &mac).unwrap();
    assert!(
        r.wait_stdout("sent", std::time::Duration::from_secs(20)),
        "{}",
        r.stdout_so_far()
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert_eq!(got, ["control"], "{}", r.stdout_so_far());
    // The host's own connection to 127.0.0.1:8080 still reaches the container.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = std::process::Command::new("nsenter")
            .arg(netns.nsenter_arg())
            .args([
                "timeout",
                "2",
                "busybox",
                "nc",
                "-w",
                "1",
                "127.0.0.1",
                "8080",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).contains("hello-localnet") {
            break;
        }
        assert!(std::time::Instant::now() < end, "-p to 127.0.0.1: {o:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = r.stop();
    assert_eq!(out.code, 137, "{out}");
}
