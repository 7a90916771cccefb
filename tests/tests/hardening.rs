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
    let mut c = ns_tests::ns_run_registered();
    t.tag(&mut c).args([
        "-q",
        "-M",
        "sc-shell",
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
        "sc-shell",
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
