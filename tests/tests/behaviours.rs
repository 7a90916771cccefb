//! nspawn behaviours users notice (issue 18, item 5): a booted container's console without a
//! terminal, `NAME.nspawn` with `-x -M NAME`, port forwards on every local address, and which
//! process the OOM killer took.

use std::time::{Duration, Instant};

use ns_tests::{
    booting_tree, our_mounts, run, spawn_until, wait_no_procs_in, Stopping, TestNetns, Tree,
};

fn assert_clean(t: &Tree, before: &[String]) {
    let left = wait_no_procs_in(t.path(), std::time::Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
    assert_eq!(our_mounts(), before, "host mount table changed");
}

// ---------------------------------------------------------------------------------------
// 1. `-b` without a terminal: nspawn's read-only console (a pty copied to stdout)

/// What an init does at boot: write to /dev/console (systemd's status lines go there).
const BOOT: &str = "[ -c /dev/console ] && echo on-console > /dev/console\n\
                    echo to-stderr >&2\n\
                    poweroff -f\n";

#[test]
fn boot_without_a_terminal_shows_the_boot_on_stdout() {
    let t = booting_tree("beh-boot-ro", BOOT);
    let before = our_mounts();
    // stdin /dev/null, stdout and stderr pipes: no terminal.
    let out = run(&["-q", "-D", t.arg(), "-b"]);
    assert_eq!(out.code, 0, "{out}");
    // As nspawn's read-only mode: the console pty, stdout and stderr merged, CRLF.
    assert!(out.stdout.contains("on-console\r\n"), "{out}");
    assert!(out.stdout.contains("to-stderr\r\n"), "{out}");
    assert!(!out.stderr.contains("to-stderr"), "{out}");
    assert_clean(&t, &before);
}

#[test]
fn boot_with_console_pipe_keeps_the_pipes() {
    let t = booting_tree("beh-boot-pipe", BOOT);
    let before = our_mounts();
    for pipe in ["--console=pipe", "-P"] {
        let out = run(&["-q", "-D", t.arg(), "-b", pipe]);
        assert_eq!(out.code, 0, "{pipe}: {out}");
        // No /dev/console, the payload's own stdout and stderr, no CR.
        assert!(!out.stdout.contains("on-console"), "{pipe}: {out}");
        assert!(out.stderr.contains("to-stderr\n"), "{pipe}: {out}");
        assert!(!out.stderr.contains('\r'), "{pipe}: {out}");
    }
    // A plain payload keeps our autopipe default: pipes without a terminal.
    let out = run(&["-q", "-D", t.arg(), "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    assert_clean(&t, &before);
}

// ---------------------------------------------------------------------------------------
// 2. `NAME.nspawn` with `-x`: nspawn 252 looks it up by `-M`, else by the directory's name
//    (before the random suffix), in /etc and /run/systemd/nspawn (trusted) and next to the
//    image (untrusted); `-x` changes nothing else.

/// A settings file, removed on drop (also when the test fails).
struct SettingsFile(std::path::PathBuf);

impl SettingsFile {
    fn write(path: std::path::PathBuf, text: &str) -> SettingsFile {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        SettingsFile(path)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const SHOW: &str = "echo FOO=$FOO; hostname; ls /mnt/marker 2>&1; true";

fn settings_text(t: &Tree, value: &str) -> String {
    let src = t.host_dir("bindsrc");
    std::fs::write(src.join("marker"), "").unwrap();
    format!(
        "[Exec]\nEnvironment=FOO={value}\nHostname=h-{value}\n[Files]\nBind={}:/mnt\n",
        src.display()
    )
}

#[test]
fn ephemeral_applies_the_settings_file_next_to_the_image() {
    // The tree's directory is the name the file is looked up by.
    let t = Tree::rootfs(&ns_tests::unique("behx"));
    let name = t.path().file_name().unwrap().to_string_lossy().into_owned();
    let _f = SettingsFile::write(
        t.base().join(format!("{name}.nspawn")),
        &settings_text(&t, "beside"),
    );
    let before = our_mounts();
    for opts in [&["-x"][..], &["-x", "-M", &name], &[]] {
        let out = run(&[&["-q", "-D", t.arg()], opts, &["sh", "-c", SHOW]].concat());
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        // Untrusted: Environment= and Hostname= apply, Bind= is ignored with nspawn's line.
        assert!(
            out.stdout.starts_with("FOO=beside\nh-beside\n"),
            "{opts:?}: {out}"
        );
        assert!(out.stdout.contains("No such file"), "{opts:?}: {out}");
        assert!(
            out.stderr
                .contains("Ignoring TemporaryFileSystem=, Bind= and BindReadOnly="),
            "{opts:?}: {out}"
        );
    }
    assert_clean(&t, &before);
}

#[test]
fn ephemeral_applies_a_trusted_settings_file() {
    let t = Tree::rootfs(&ns_tests::unique("behxt"));
    let name = t.path().file_name().unwrap().to_string_lossy().into_owned();
    let _f = SettingsFile::write(
        format!("/run/systemd/nspawn/{name}.nspawn").into(),
        &settings_text(&t, "trusted"),
    );
    let before = our_mounts();
    for opts in [&["-x"][..], &["-x", "-M", &name]] {
        let out = run(&[&["-q", "-D", t.arg()], opts, &["sh", "-c", SHOW]].concat());
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        // Trusted: Bind= applies too.
        assert_eq!(
            out.stdout, "FOO=trusted\nh-trusted\n/mnt/marker\n",
            "{opts:?}: {out}"
        );
    }
    // --settings=no ignores it, with -x as without.
    let out = run(&["-q", "-x", "--settings=no", "-D", t.arg(), "sh", "-c", SHOW]);
    assert!(out.stdout.starts_with("FOO=\n"), "{out}");
    assert_clean(&t, &before);
}

// ---------------------------------------------------------------------------------------
// 3. `-p`: the forward answers on every local address, for the host's own connections and
//    for those from elsewhere, without --network-gateway.

/// Connect to ADDR:PORT from inside `ns` and read what the server sends; retried (the
/// container's server restarts between connections) for at most 10 s.
fn answer_in(ns: &TestNetns, addr: &str, port: &str, want: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.exec(&["timeout", "2", "busybox", "nc", "-w", "1", addr, port]);
        if out.stdout.contains(want) || Instant::now() >= end {
            return out.stdout;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn port_forward_answers_on_every_local_address() {
    let ns = TestNetns::new("bp");
    let peer = TestNetns::new("bq");
    // A second address of the "host" (on lo: this kernel has no dummy links), and a peer
    // machine on a veth whose default route is the host; the host forwards, as a router
    // (networkd's IPForward=).
    ns.ok(&["ip", "addr", "add", "10.232.72.1/32", "dev", "lo"]);
    ns.ok(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ]);
    ns.ok(&["ip", "link", "set", "p1", "netns", &peer.path()]);
    ns.ok(&["ip", "addr", "add", "10.232.73.1/24", "dev", "p0"]);
    ns.ok(&["ip", "link", "set", "p0", "up"]);
    peer.ok(&["ip", "addr", "add", "10.232.73.2/24", "dev", "p1"]);
    peer.ok(&["ip", "link", "set", "p1", "up"]);
    peer.ok(&["ip", "route", "add", "default", "via", "10.232.73.1"]);
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let t = Tree::rootfs("beh-port");
    let before = our_mounts();
    let server = "echo ready\nwhile true; do echo hello-from-beh | nc -l -p 80; done";
    let opts = [
        "-n",
        "-M",
        "t-behport",
        "--network-address=10.232.71.2/24",
        "--network-host-address=10.232.71.1/24",
        "-p",
        "8080:80",
    ];
    let r = Stopping::new(spawn_until(
        ns.ns_run(&t, &opts, &["sh", "-c", server]),
        "ready",
    ));
    // From the host: loopback and the veth's host end (as before), and its other addresses.
    for addr in ["127.0.0.1", "10.232.71.1", "10.232.72.1", "10.232.73.1"] {
        let got = answer_in(&ns, addr, "8080", "hello-from-beh");
        assert!(got.contains("hello-from-beh"), "host to {addr}: {got:?}");
    }
    // From the peer, to the host's addresses.
    for addr in ["10.232.73.1", "10.232.72.1"] {
        let got = answer_in(&peer, addr, "8080", "hello-from-beh");
        assert!(got.contains("hello-from-beh"), "peer to {addr}: {got:?}");
    }
    let out = r.stop();
    assert_eq!(out.code, 137, "{out}");
    assert!(!out.stderr.contains("ip_forward"), "{out}");
    let tables = ns.ok(&["nft", "list", "tables"]);
    assert!(!tables.contains("ns-run-"), "tables left: {tables}");
    assert_clean(&t, &before);
}

#[test]
fn port_forward_says_when_the_host_does_not_forward() {
    // A fresh namespace does not forward: connections from elsewhere cannot reach the
    // container, and ns-run says so (unless -q).
    let ns = TestNetns::new("bf");
    let t = Tree::rootfs("beh-portfw");
    let opts = [
        "-n",
        "-M",
        "t-behfw",
        "--network-address=10.232.74.2/24",
        "-p",
        "8080:80",
    ];
    let out = ns_tests::run_cmd(ns.ns_run(&t, &opts, &["true"]), None);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stderr,
        "ns-run: --port: net.ipv4.ip_forward is 0 here: only connections made on this host \
         reach the container\n",
        "{out}"
    );
    let out = ns_tests::run_cmd(
        ns.ns_run(&t, &[&["-q"][..], &opts].concat(), &["true"]),
        None,
    );
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let out = ns_tests::run_cmd(ns.ns_run(&t, &opts, &["true"]), None);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
}

// ---------------------------------------------------------------------------------------
// 4. The OOM notice says whom the OOM killer took: the payload, or another process of the
//    container (named as the kernel's log names it, when ns-run can read it: root here).

const MEMORY: [&str; 2] = ["--property=MemoryMax=32M", "--property=MemorySwapMax=0"];

fn oom_run(t: &Tree, extra: &[&str], payload: &[&str]) -> ns_tests::Output {
    run(&[&["-q", "-D", t.arg()], &MEMORY[..], extra, payload].concat())
}

#[test]
fn oom_notice_names_a_killed_child_not_the_payload() {
    let t = Tree::rootfs("beh-oom");
    let before = our_mounts();
    // A child (`tail`, buffering an endless line) is killed; the shell carries on and exits
    // 3, or exits 137 itself with the child's status (what a signal would give).
    for (script, code) in [
        ("tail /dev/zero; echo status=$?; exit 3", 3),
        ("tail /dev/zero; exit $?", 137),
    ] {
        let out = oom_run(&t, &[], &["sh", "-c", script]);
        assert_eq!(out.code, code, "{script}: {out}");
        let line = "ns-run: a process of the container (not the payload) was killed by the OOM \
                    killer (its memory limit): host pid ";
        // (busybox sh says "Killed" first.)
        let named: Vec<&str> = out
            .stderr_lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(line))
            .collect();
        assert_eq!(named.len(), 1, "{out}");
        let (pid, name) = named[0].split_once(' ').unwrap_or_else(|| panic!("{out}"));
        assert!(pid.parse::<u32>().is_ok(), "{out}");
        assert_eq!(name, "(tail)", "{out}");
    }
    assert_clean(&t, &before);
}

#[test]
fn oom_notice_says_when_the_payload_itself_was_killed() {
    let t = Tree::rootfs("beh-oom1");
    for extra in [&[][..], &["-a"]] {
        let out = oom_run(&t, extra, &["tail", "/dev/zero"]);
        assert_eq!(out.code, 137, "{extra:?}: {out}");
        assert_eq!(
            out.stderr, "ns-run: the payload was killed by the OOM killer (its memory limit)\n",
            "{extra:?}: {out}"
        );
    }
    // An exit with no OOM kill says nothing, with a limit or without.
    let out = oom_run(&t, &[], &["sh", "-c", "exit 137"]);
    assert_eq!((out.code, out.stderr.as_str()), (137, ""), "{out}");
}
