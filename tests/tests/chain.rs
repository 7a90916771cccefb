//! The stages as a chain: `--print-state`, `--print-chain` (whose output, run by a shell,
//! must behave as ns-run itself), hand-composed chains, a printed state run as is, and the
//! stages' own error handling.
//!
//! Tests that run a container use their own tree (ns-run locks a tree a container may write
//! to); the shared fixture serves only `--print-state` and stages that fail before running.

use std::os::fd::AsRawFd;
use std::process::Command;

use ns_tests::{
    assert_mounts_unchanged, fixture, host_cap_bnd, our_mounts, pass_fd, path_with_bins, run,
    run_cmd, s, stage, status_hex, Output, Tree, CAP_SYS_ADMIN, NSPAWN_DEFAULT_CAPS,
};

fn d() -> &'static str {
    s(fixture())
}

fn state(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--print-state"];
    a.extend_from_slice(args);
    let out = run(&a);
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn assert_one_line(out: &Output, code: i32, prefix: &str) {
    assert_eq!(out.code, code, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.starts_with(prefix), "{out}");
    assert_eq!(out.stdout, "", "{out}");
}

#[test]
fn print_state_prints_json_and_runs_nothing() {
    let name = fixture().file_name().unwrap().to_str().unwrap();
    let before = our_mounts();
    // Were the command run, `RAN` would follow the JSON and the parse would fail.
    let v = state(&["-D", d(), "--", "echo", "RAN"]);
    assert_eq!(v["version"], 2);
    assert_eq!(v["machine"], name);
    assert_eq!(v["enter"]["hostname"], name);
    assert_eq!(v["mount"]["root"], d());
    assert_eq!(v["exec"]["argv"], serde_json::json!(["echo", "RAN"]));
    assert_eq!(v["exec"]["container"], "systemd-nspawn");
    assert!(ns_tests::is_uuid(v["exec"]["uuid"].as_str().unwrap()));
    let ns: Vec<&str> = v["enter"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(ns, ["mount", "uts", "ipc", "cgroup", "pid"]);
    assert_mounts_unchanged(&before);

    let v = state(&[
        "-D",
        d(),
        "-M",
        "box",
        "--private-network",
        "-a",
        "-u",
        "daemon",
        "--kill-signal=SIGRTMIN+3",
        "--tmpfs=/mnt/t",
    ]);
    assert_eq!(v["machine"], "box");
    assert!(v["enter"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&"net".into()));
    assert_eq!(v["exec"]["as_pid2"], true);
    assert_eq!(v["exec"]["user"], "daemon");
    assert_eq!(v["exec"]["argv"], serde_json::json!([]));
    assert!(v["exec"]["capabilities"]
        .as_array()
        .unwrap()
        .contains(&"net_admin".into()));
    // glibc's (and systemd's) SIGRTMIN is 34.
    assert_eq!(v["monitor"]["kill_signal"], 34 + 3);
    assert_eq!(v["mount"]["ops"].as_array().unwrap().len(), 1);
    assert_eq!(v["mount"]["private_network"], true);
}

/// Run a printed chain line with `sh -c`, the built binaries first in PATH.
fn run_chain_line(line: &str) -> Output {
    let mut c = Command::new("/bin/sh");
    c.env("PATH", path_with_bins()).args(["-c", line]);
    run_cmd(c, None)
}

fn print_chain(args: &[&str]) -> String {
    let mut a = vec!["--print-chain"];
    a.extend_from_slice(args);
    let out = run(&a);
    let line = out.ok().trim_end().to_string();
    assert_eq!(line.lines().count(), 1, "{out}");
    line
}

#[test]
fn print_chain_runs_like_ns_run() {
    let t = Tree::rootfs("chained-box");
    let args = [
        "-D",
        t.arg(),
        "-u",
        "daemon",
        "--",
        "sh",
        "-c",
        "id -u; hostname",
    ];
    let line = print_chain(&args);
    assert!(line.starts_with("ns-enter "), "{line}");
    assert!(line.contains(" -- ns-mount "), "{line}");
    assert!(line.contains(" -- ns-caps "), "{line}");
    let before = our_mounts();
    let via_chain = run_chain_line(&line);
    let direct = run(&args);
    assert_eq!(direct.ok(), "1\nchained-box\n");
    assert_eq!(via_chain, direct, "chain: {line}");
    assert_mounts_unchanged(&before);
}

#[test]
fn print_chain_carries_every_option() {
    let t = Tree::rootfs("chainopts");
    let host = t.host_dir("ro");
    std::fs::write(host.join("f"), "hostfile\n").unwrap();
    let bind = format!("--bind-ro={}:/mnt/ro", s(&host));
    let script = "echo $$ $A; pwd; cat /mnt/ro/f; grep -E '^Cap|NoNew' /proc/self/status; \
                  env | sort; grep -E ' /mnt/| / ' /proc/mounts | cut -d' ' -f2-4; \
                  cat /proc/net/dev | wc -l; touch /x 2>&1; touch /mnt/t/z && echo tmpfs-ok";
    let args = [
        "-D",
        t.arg(),
        "-M",
        "chained",
        "--private-network",
        "--read-only",
        &bind,
        "--tmpfs=/mnt/t:mode=0700",
        "-a",
        "-E",
        "A=1",
        "--chdir=/tmp",
        "--no-new-privileges=yes",
        "--uuid=0123456789abcdef0123456789abcdef",
        "--drop-capability=CAP_MKNOD",
        "--capability=CAP_SYS_TIME",
        "--",
        "sh",
        "-c",
        script,
    ];
    let line = print_chain(&args);
    let via_chain = run_chain_line(&line);
    let direct = run(&args);
    assert_eq!(direct.code, 0, "{direct}");
    assert!(direct.stdout.contains("hostfile\n"), "{direct}");
    assert!(direct.stdout.contains("tmpfs-ok\n"), "{direct}");
    assert_eq!(via_chain, direct, "chain: {line}");
}

#[test]
fn hand_composed_chain() {
    let t = Tree::rootfs("hand");
    let before = our_mounts();
    let mut c = stage("ns-enter");
    c.args([
        "--pid",
        "--mount",
        "--uts",
        "--ipc",
        "--",
        "ns-mount",
        "-D",
        t.arg(),
        "--",
        "ns-caps",
        "--drop-capability=CAP_SYS_ADMIN",
        "--",
        "/bin/sh",
        "-c",
        "echo $$; grep CapBnd /proc/self/status",
    ]);
    let out = run_cmd(c, None);
    let text = out.ok();
    assert!(text.starts_with("1\n"), "{text}");
    let bnd = status_hex(text, "CapBnd").unwrap();
    assert_eq!(
        bnd & CAP_SYS_ADMIN,
        0,
        "CAP_SYS_ADMIN still there: {bnd:#x}"
    );
    assert_eq!(bnd, NSPAWN_DEFAULT_CAPS & host_cap_bnd() & !CAP_SYS_ADMIN);
    assert_mounts_unchanged(&before);
}

#[test]
fn chain_with_ns_init() {
    let t = Tree::rootfs("init");
    let mut c = stage("ns-enter");
    c.args([
        "--",
        "ns-mount",
        "-D",
        t.arg(),
        "--",
        "ns-caps",
        "-a",
        "--",
        "sh",
        "-c",
        "echo $$; cat /proc/1/comm; exit 9",
    ]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 9, "{out}");
    assert_eq!(out.stdout, "2\nns-init\n");
}

/// A state file as fd 3 of `ns-enter --state-fd 3`.
fn enter_with_state(json: &str) -> Output {
    let t = Tree::empty("state");
    let f = t.host_dir("s").join("state.json");
    std::fs::write(&f, json).unwrap();
    let file = std::fs::File::open(&f).unwrap();
    let mut c = stage("ns-enter");
    c.args(["--state-fd", "3"]);
    pass_fd(&mut c, file.as_raw_fd(), 3);
    run_cmd(c, None)
}

#[test]
fn a_printed_state_runs_as_is() {
    let t = Tree::rootfs("state");
    let out = run(&[
        "--print-state",
        "-D",
        t.arg(),
        "-u",
        "daemon",
        "-M",
        "fromstate",
        "--",
        "sh",
        "-c",
        "id -u; hostname; echo $$",
    ]);
    let res = enter_with_state(out.ok());
    assert_eq!(res.ok(), "1\nfromstate\n1\n");
}

#[test]
fn stages_refuse_a_bad_state() {
    let json = run(&["--print-state", "-D", d(), "true"]).ok().to_string();
    let v99 = json.replacen("\"version\": 2", "\"version\": 99", 1);
    assert_ne!(v99, json);
    let out = enter_with_state(&v99);
    assert_one_line(&out, 125, "ns-enter: --state-fd=3: ");
    assert!(out.stderr.contains("version 99"), "{out}");
    let out = enter_with_state("{}");
    assert_one_line(&out, 125, "ns-enter: --state-fd=3: ");
    let out = enter_with_state("not json");
    assert_one_line(&out, 125, "ns-enter: --state-fd=3: ");
}

#[test]
fn bad_state_fd() {
    for name in ["ns-enter", "ns-mount", "ns-caps"] {
        let mut c = stage(name);
        c.args(["--state-fd", "99"]);
        let out = run_cmd(c, None);
        assert_one_line(&out, 125, &format!("{name}: "));
        assert!(out.stderr.contains("--state-fd=99"), "{out}");
    }
}

#[test]
fn bad_sync_fd() {
    let mut c = stage("ns-enter");
    c.args(["--sync-fd", "99", "--", "true"]);
    let out = run_cmd(c, None);
    assert_one_line(&out, 125, "ns-enter: ");
    assert!(out.stderr.contains("--sync-fd=99"), "{out}");
    // An open fd that is not a socket (stdin is /dev/null).
    let mut c = stage("ns-enter");
    c.args(["--sync-fd", "0", "--", "true"]);
    let out = run_cmd(c, None);
    assert_one_line(&out, 125, "ns-enter: ");
    assert!(out.stderr.contains("--sync-fd=0: not a socket"), "{out}");
}

#[test]
fn stages_fail_in_one_line() {
    let cases: [(&str, &[&str]); 6] = [
        ("ns-enter", &[]),
        ("ns-enter", &["--state-fd", "3", "--pid"]),
        ("ns-enter", &["--frobnicate"]),
        ("ns-mount", &["--", "true"]),
        ("ns-caps", &["--capability=CAP_FOO", "--", "true"]),
        ("ns-init", &[]),
    ];
    for (name, args) in cases {
        let mut c = stage(name);
        c.args(args);
        let out = run_cmd(c, None);
        assert_one_line(&out, 125, &format!("{name}: "));
    }
}
