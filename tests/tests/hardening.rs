//! The system call filter, from inside real containers: `ns-probe` (tests/probe.rs, copied
//! into the tree) attempts each call and prints what the kernel answered. nspawn's allow-list
//! answers EPERM for a known call it leaves out, ENOSYS for an unknown number, EAFNOSUPPORT
//! for an audit socket; capabilities and `--system-call-filter=` change the set;
//! `SYSTEMD_SECCOMP=0` turns it off; `ns-ctl shell` runs under the container's filter.

use ns_tests::{bin, ns_run, run_cmd, Tree};

fn tree(name: &str) -> Tree {
    let t = Tree::rootfs(name);
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    t
}

/// `ns-probe ARGS` in a container with `opts`; its one line of output.
/// Our own session keyring's serial (made if we have none yet).
fn own_session_keyring() -> i64 {
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create): integers.
    unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 1) }
}

fn probe(t: &Tree, opts: &[&str], env: &[(&str, &str)], args: &[&str]) -> String {
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .args(opts)
        .arg("ns-probe")
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{opts:?} {args:?}: {out}");
    out.stdout.trim().to_string()
}

/// What the default filter answers (the same with -U): (probe, answer). A call that the
/// filter lets through answers with the kernel's own complaint about the zero arguments.
const DEFAULT: &[(&[&str], &str)] = &[
    (&["syscall", "getpid"], "ok"),
    (&["syscall", "keyctl"], "EPERM"),
    (&["syscall", "add_key"], "EPERM"),
    (&["syscall", "bpf"], "EPERM"),
    (&["syscall", "perf_event_open"], "EPERM"),
    (&["syscall", "open_by_handle_at"], "EPERM"),
    (&["syscall", "kexec_load"], "EPERM"),
    (&["syscall", "init_module"], "EPERM"),
    (&["syscall", "finit_module"], "EPERM"),
    (&["syscall", "clock_settime"], "EPERM"),
    (&["syscall", "swapon"], "EPERM"),
    (&["nr", "1000"], "ENOSYS"),
    (&["socket", "16", "3", "9"], "EAFNOSUPPORT"), // AF_NETLINK, SOCK_RAW, NETLINK_AUDIT
    (&["socket", "16", "3", "0"], "ok"),           // NETLINK_ROUTE
];

#[test]
fn the_default_filter_answers_as_nspawns() {
    let t = tree("sc-default");
    for opts in [&[][..], &["-U"][..]] {
        let status = {
            let mut c = ns_run();
            t.tag(&mut c).args(["-q", "-D", t.arg()]).args(opts).args([
                "grep",
                "^Seccomp:",
                "/proc/self/status",
            ]);
            run_cmd(c, None).stdout
        };
        assert_eq!(
            status.split_whitespace().last(),
            Some("2"),
            "{opts:?}: {status}"
        );
        for (args, want) in DEFAULT {
            assert_eq!(probe(&t, opts, &[], args), *want, "{opts:?} {args:?}");
        }
    }
}

#[test]
fn capabilities_options_and_the_knob_change_the_filter() {
    let t = tree("sc-options");
    // CAP_SYS_TIME brings @clock: clock_settime(0, NULL) reaches the kernel (EFAULT).
    assert_eq!(
        probe(
            &t,
            &["--capability=CAP_SYS_TIME"],
            &[],
            &["syscall", "clock_settime"]
        ),
        "EFAULT"
    );
    // --system-call-filter= adds a group and takes a call away.
    let opts = [
        "--system-call-filter=@keyring",
        "--system-call-filter=~getpid",
    ];
    assert_ne!(probe(&t, &opts, &[], &["syscall", "keyctl"]), "EPERM");
    assert_eq!(probe(&t, &opts, &[], &["syscall", "getpid"]), "EPERM");
    // Where keyctl is let through, the payload's session keyring is a new one, not ours
    // (nor another container's): nothing of the caller's session (a root login's keys) to read.
    let mine = own_session_keyring();
    let theirs = probe(&t, &opts[..1], &[], &["session-keyring"]);
    let again = probe(&t, &opts[..1], &[], &["session-keyring"]);
    assert!(theirs.parse::<i64>().is_ok(), "{theirs}");
    assert_ne!(theirs, mine.to_string());
    assert_ne!(theirs, again);
    // SYSTEMD_SECCOMP=0: no filter (perf_event_open(NULL) gets the kernel's EFAULT).
    assert_eq!(
        probe(
            &t,
            &[],
            &[("SYSTEMD_SECCOMP", "0")],
            &["syscall", "perf_event_open"]
        ),
        "EFAULT"
    );
    // A group that does not exist is refused before anything runs.
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg(), "--system-call-filter=@nosuch", "true"]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr.trim_end(),
        "ns-run: --system-call-filter=@nosuch: no such group @nosuch"
    );
}

#[test]
fn ns_ctl_shell_runs_under_the_containers_filter() {
    let t = tree("sc-shell");
    let name = ns_tests::unique("sc-shell");
    let mut c = ns_tests::ns_run_registered();
    t.tag(&mut c).args([
        "-q",
        "-M",
        &name,
        "--system-call-filter=~getpid",
        "-D",
        t.arg(),
        "sh",
        "-c",
        "echo ready; exec sleep 100",
    ]);
    let r = ns_tests::spawn_until(c, "ready");
    let mut c = std::process::Command::new(bin("ns-ctl"));
    c.args([
        "shell",
        &name,
        "--",
        "sh",
        "-c",
        "ns-probe syscall keyctl; ns-probe syscall getpid",
    ]);
    let out = run_cmd(c, None);
    assert_eq!(out.stdout, "EPERM\nEPERM\n", "{out}");
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait().code, 137);
}

#[test]
fn ns_ctl_shell_runs_under_an_oci_bundles_profile() {
    // `ns-run --oci-bundle` with a profile that allows everything but getpid: the shell's
    // command answers as the payload does (keyctl passes the filter), not as nspawn's
    // allow-list with getpid taken away would.
    let t = Tree::empty("sc-bundle");
    let script = "ns-probe syscall keyctl; ns-probe syscall getpid; echo ready; exec sleep 100";
    ns_tests::spec_bundle(&t, &["sh", "-c", script], |v| {
        v["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}],
        });
    });
    std::fs::copy(bin("ns-probe"), t.path().join("rootfs/bin/ns-probe")).unwrap();
    let name = ns_tests::unique("sc-bundle");
    let mut c = ns_tests::ns_run_registered();
    t.tag(&mut c)
        .args(["-q", "-M", &name, "--oci-bundle", t.arg()]);
    let r = ns_tests::spawn_until(c, "ready");
    let payload = r.stdout_so_far().replace("ready\n", "");
    assert_ne!(payload, "EPERM\nEPERM\n", "{payload}");
    let mut c = std::process::Command::new(bin("ns-ctl"));
    c.args(["shell", &name, "--", "sh", "-c"])
        .arg("ns-probe syscall keyctl; ns-probe syscall getpid");
    let out = run_cmd(c, None);
    assert_eq!(out.stdout, payload, "{out}");
    r.signal(libc::SIGTERM);
    r.wait();
}

/// Escape attempts from a container with default options and with `-U`: (what, shell test
/// printing the outcome, outcome by default, outcome with -U). Each outcome is asserted here
/// and listed in README's table.
const ESCAPES: &[(&str, &str, &str, &str)] = &[
    (
        "mount a tmpfs (in its own mount namespace)",
        "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m && echo ok || echo denied",
        "ok",
        "ok",
    ),
    (
        "remount /sys read-write",
        "mount -o remount,rw /sys 2>/dev/null && echo ok || echo denied",
        "ok", // CAP_SYS_ADMIN of the host's user namespace: see README
        "denied",
    ),
    (
        "write a sysctl of the host (its own value back to kernel.printk_ratelimit)",
        "mount -o remount,rw /proc/sys 2>/dev/null; \
         (v=$(cat /proc/sys/kernel/printk_ratelimit); echo $v > /proc/sys/kernel/printk_ratelimit) 2>/dev/null && echo ok || echo denied",
        "ok", // likewise
        "denied",
    ),
    (
        "write /proc/sysrq-trigger",
        "(echo h > /proc/sysrq-trigger) 2>/dev/null && echo ok || echo denied",
        "denied",
        "denied",
    ),
    (
        "read /proc/kcore, kallsyms, keys, timer_list (bytes read)",
        "for f in kcore kallsyms keys timer_list; do head -c 16 /proc/$f 2>/dev/null; done | wc -c | tr -d ' '",
        "0", // empty inaccessible nodes (CAP_DAC_OVERRIDE may open them: nothing in them)
        "0",
    ),
    (
        "mknod and open the host's disk",
        "mknod /tmp/disk b 254 0 2>/dev/null; head -c1 /tmp/disk >/dev/null 2>&1 && echo ok || echo denied",
        "denied",
        "denied",
    ),
    ("load a kernel module", "ns-probe syscall init_module", "EPERM", "EPERM"),
    ("kexec", "ns-probe syscall kexec_load", "EPERM", "EPERM"),
    ("open_by_handle_at", "ns-probe syscall open_by_handle_at", "EPERM", "EPERM"),
    ("keyctl", "ns-probe syscall keyctl", "EPERM", "EPERM"),
    ("bpf", "ns-probe syscall bpf", "EPERM", "EPERM"),
    ("perf_event_open", "ns-probe syscall perf_event_open", "EPERM", "EPERM"),
    ("TIOCSTI", "ns-probe tiocsti", "EPERM", "EPERM"),
    (
        "see a host process (ptrace needs one to see)",
        "[ $(ls -d /proc/[0-9]* | wc -l) -lt 6 ] && echo only-its-own || echo host",
        "only-its-own", // the shell (PID 1) and its pipeline
        "only-its-own",
    ),
    (
        "reach the host's root or network namespace through /proc/1",
        "[ \"$(readlink /proc/1/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && \
         [ \"$(stat -c %i /proc/1/root/)\" = \"$(stat -c %i /)\" ] && echo own || echo host",
        "own",
        "own",
    ),
];

#[test]
fn escape_attempts_fail_as_documented() {
    let t = tree("sc-escape");
    let before = ns_tests::our_mounts();
    for (userns, opts) in [(false, &[][..]), (true, &["-U"][..])] {
        for (what, script, default, with_u) in ESCAPES {
            let mut c = ns_run();
            t.tag(&mut c)
                .args(["-q", "-D", t.arg()])
                .args(opts)
                .args(["sh", "-c", script]);
            let out = run_cmd(c, None);
            let want = if userns { with_u } else { default };
            assert_eq!(out.stdout.trim(), *want, "{what} {opts:?}: {out}");
        }
    }
    // Without CAP_SYS_ADMIN, /sys and /proc/sys stay read-only even without -U.
    let mut c = ns_run();
    t.tag(&mut c)
        .args([
            "-q",
            "-D",
            t.arg(),
            "--drop-capability=CAP_SYS_ADMIN",
            "sh",
            "-c",
        ])
        .arg(
            "mount -o remount,rw /sys 2>/dev/null && echo sys-rw; \
         mount -o remount,rw /proc/sys 2>/dev/null && echo procsys-rw; echo done",
        );
    assert_eq!(run_cmd(c, None).stdout, "done\n");
    ns_tests::assert_mounts_unchanged(&before);
}
