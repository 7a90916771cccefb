//! Termination: SIGTERM/SIGINT/SIGHUP to ns-run, --kill-signal, the monitor killed outright,
//! and ns-enter alone as a minimal monitor. Every test checks that no process is left in the
//! container's tree and that the host mount table is unchanged.

use std::process::Command;
use std::time::{Duration, Instant};

use ns_tests::{
    assert_no_leak, ns_run, our_mounts, procs_in, spawn, stage, wait_no_procs_in, Output, Running,
    Tree,
};

const READY: Duration = Duration::from_secs(10);

fn ns_run_in(tree: &Tree, opts: &[&str], payload: &[&str]) -> Command {
    let mut c = ns_run();
    tree.tag(&mut c)
        .args(["-D", tree.arg()])
        .args(opts)
        .args(payload);
    c
}

/// Start a container that prints `ready` once its payload runs.
fn start_ready(cmd: Command) -> Running {
    let mut r = spawn(cmd, None);
    assert!(
        r.wait_stdout("ready", READY),
        "container did not start: {}",
        r.stdout_so_far()
    );
    r
}

fn finish(r: Running, within: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = r
        .wait_for(within)
        .unwrap_or_else(|o| panic!("ns-run did not exit within {within:?}\n{o}"));
    (out, t0.elapsed())
}

#[test]
fn leak_check_sees_a_running_container() {
    // The leak check of the other tests must be able to fail.
    let t = Tree::rootfs("seen");
    let r = start_ready(ns_run_in(&t, &[], &["sh", "-c", "echo ready; sleep 100"]));
    let seen = procs_in(t.path());
    assert!(
        seen.iter().any(|p| p.contains("sleep 100")),
        "payload not found by procs_in: {seen:?}"
    );
    let monitor = r.pid();
    let _journal = ns_tests::ForgetJournal(monitor);
    r.signal(libc::SIGKILL);
    let _ = r.wait_for(Duration::from_secs(5));
    assert!(wait_no_procs_in(t.path(), Duration::from_secs(5)).is_empty());
    ns_tests::assert_journals_collected(t.path(), &[monitor]);
}

#[test]
fn sigterm_kills_the_container_at_once() {
    let t = Tree::rootfs("term");
    for opts in [&[][..], &["-a"][..], &["-u", "daemon"][..]] {
        let before = our_mounts();
        let r = start_ready(ns_run_in(&t, opts, &["sh", "-c", "echo ready; sleep 100"]));
        r.signal(libc::SIGTERM);
        let (out, took) = finish(r, Duration::from_secs(5));
        assert_eq!((out.code, out.signal), (137, None), "{opts:?}: {out}");
        assert!(took < Duration::from_secs(2), "{opts:?}: took {took:?}");
        assert_eq!(out.stdout, "ready\n", "{opts:?}: {out}");
        assert_eq!(out.stderr, "", "{opts:?}: {out}");
        assert_no_leak(t.path(), &before);
    }
}

#[test]
fn sigterm_kills_a_bare_sleep_payload() {
    let t = Tree::rootfs("sleep");
    let before = our_mounts();
    let r = spawn(ns_run_in(&t, &[], &["sleep", "100"]), None);
    // Wait for the payload to be running in the tree.
    let end = Instant::now() + READY;
    while !procs_in(t.path())
        .iter()
        .any(|p| p.ends_with(": sleep 100 "))
    {
        assert!(Instant::now() < end, "sleep did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    r.signal(libc::SIGTERM);
    let (out, took) = finish(r, Duration::from_secs(5));
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_no_leak(t.path(), &before);
}

#[test]
fn sigint_and_sighup_kill_too() {
    let t = Tree::rootfs("inthup");
    for sig in [libc::SIGINT, libc::SIGHUP] {
        let before = our_mounts();
        let r = start_ready(ns_run_in(&t, &[], &["sh", "-c", "echo ready; sleep 100"]));
        r.signal(sig);
        let (out, _) = finish(r, Duration::from_secs(5));
        assert_eq!((out.code, out.signal), (137, None), "signal {sig}: {out}");
        assert_no_leak(t.path(), &before);
    }
}

#[test]
fn kill_signal_goes_to_ns_init_which_forwards_it() {
    let t = Tree::rootfs("killsig");
    let before = our_mounts();
    let r = start_ready(ns_run_in(
        &t,
        &["-a", "--kill-signal=SIGTERM"],
        &["sh", "-c", "echo ready; exec sleep 100"],
    ));
    r.signal(libc::SIGTERM);
    let (out, took) = finish(r, Duration::from_secs(5));
    // The payload died of SIGTERM; ns-init passes that on as 128+15.
    assert_eq!((out.code, out.signal), (143, None), "{out}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(out.stderr, "", "{out}");
    assert_no_leak(t.path(), &before);
}

#[test]
fn kill_signal_then_a_second_request_kills() {
    let t = Tree::rootfs("twice");
    let before = our_mounts();
    let mut r = start_ready(ns_run_in(
        &t,
        &["-a", "--kill-signal=SIGTERM"],
        &[
            "sh",
            "-c",
            "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done",
        ],
    ));
    r.signal(libc::SIGTERM);
    assert!(
        r.wait_stdout("got-term", Duration::from_secs(5)),
        "payload did not get SIGTERM: {}",
        r.stdout_so_far()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(r.is_running(), "the first request must not kill");
    r.signal(libc::SIGTERM);
    let (out, _) = finish(r, Duration::from_secs(5));
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    assert_no_leak(t.path(), &before);
}

#[test]
fn kill_signal_rtmin3_is_a_poweroff_request() {
    let t = Tree::rootfs("poweroff");
    let before = our_mounts();
    let r = start_ready(ns_run_in(
        &t,
        &["-a", "--kill-signal=SIGRTMIN+3"],
        &["sh", "-c", "echo ready; exec sleep 100"],
    ));
    r.signal(libc::SIGTERM);
    let (out, _) = finish(r, Duration::from_secs(5));
    assert_eq!((out.code, out.signal), (143, None), "{out}");
    assert_no_leak(t.path(), &before);
}

#[test]
fn killing_the_monitor_takes_the_container_down() {
    let t = Tree::rootfs("sigkill");
    let mut monitors = Vec::new();
    let mut _journals = Vec::new();
    for opts in [
        &[][..],
        &["-a"][..],
        &["-u", "daemon"][..],
        &["-a", "-u", "daemon"][..],
    ] {
        let before = our_mounts();
        let r = start_ready(ns_run_in(&t, opts, &["sh", "-c", "echo ready; sleep 100"]));
        assert!(!procs_in(t.path()).is_empty());
        monitors.push(r.pid());
        _journals.push(ns_tests::ForgetJournal(r.pid()));
        r.signal(libc::SIGKILL);
        let (out, _) = finish(r, Duration::from_secs(5));
        assert_eq!(out.signal, Some(libc::SIGKILL), "{opts:?}: {out}");
        let left = wait_no_procs_in(t.path(), Duration::from_secs(5));
        assert!(left.is_empty(), "{opts:?}: processes left: {left:#?}");
        assert_no_leak(t.path(), &before);
    }
    // What the killed monitors could not clean up, the next ns-run does.
    ns_tests::assert_journals_collected(t.path(), &monitors);
}

#[test]
fn ns_enter_alone_kills_on_sigterm() {
    let t = Tree::rootfs("enter");
    let before = our_mounts();
    let mut c = stage("ns-enter");
    t.tag(&mut c).env("PATH", ns_tests::path_with_bins()).args([
        "--pid",
        "--mount",
        "--",
        "ns-mount",
        "-D",
        t.arg(),
        "--",
        "ns-caps",
        "--",
        "sh",
        "-c",
        "echo ready; sleep 100",
    ]);
    let r = start_ready(c);
    r.signal(libc::SIGTERM);
    let (out, _) = finish(r, Duration::from_secs(5));
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    assert_no_leak(t.path(), &before);
}

#[test]
fn killing_ns_enter_alone_takes_the_container_down() {
    let t = Tree::rootfs("enterkill");
    let before = our_mounts();
    let mut c = stage("ns-enter");
    t.tag(&mut c).env("PATH", ns_tests::path_with_bins()).args([
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
        "echo ready; sleep 100",
    ]);
    let r = start_ready(c);
    r.signal(libc::SIGKILL);
    let _ = finish(r, Duration::from_secs(5));
    assert_no_leak(t.path(), &before);
}

/// What a SIGTERM sent while the container starts leads to.
enum Startup {
    /// ns-run exited: its output.
    Exited(Output),
    /// ns-run was still running seconds later (then killed).
    Hung,
}

/// Send SIGTERM to ns-run at delays sweeping its start-up, `n` times.
fn sigterm_during_startup(t: &Tree, n: u32) -> Vec<(Duration, Startup)> {
    let mut v = Vec::new();
    for i in 0..n {
        let delay = Duration::from_micros(u64::from(i % 60) * 100);
        let before = our_mounts();
        let r = spawn(ns_run_in(t, &[], &["sleep", "100"]), None);
        std::thread::sleep(delay);
        r.signal(libc::SIGTERM);
        let res = match r.wait_for(Duration::from_secs(3)) {
            Ok(o) => Startup::Exited(o),
            Err(_) => Startup::Hung,
        };
        assert_no_leak(t.path(), &before);
        v.push((delay, res));
    }
    v
}

#[test]
fn sigterm_during_startup_never_hangs() {
    let t = Tree::rootfs("race1");
    let hung: Vec<Duration> = sigterm_during_startup(&t, 240)
        .into_iter()
        .filter_map(|(d, r)| matches!(r, Startup::Hung).then_some(d))
        .collect();
    assert!(
        hung.is_empty(),
        "ns-run hung after SIGTERM sent {hung:?} after start"
    );
}

#[test]
fn sigterm_during_startup_is_a_clean_kill() {
    let t = Tree::rootfs("race2");
    let bad: Vec<String> = sigterm_during_startup(&t, 240)
        .into_iter()
        .filter_map(|(d, r)| match r {
            // Before ns-run blocks signals, SIGTERM kills it by default: fine too.
            Startup::Exited(o)
                if (o.code == 137 && o.signal.is_none() || o.signal == Some(libc::SIGTERM))
                    && o.stderr.is_empty() =>
            {
                None
            }
            Startup::Exited(o) => Some(format!("after {d:?}: {o}")),
            Startup::Hung => None, // the other test's bug
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Signals the caller ignores (`nohup` ignores SIGHUP, a shell's `trap ''`) do not reach the
/// payload ignored: an ignored disposition survives exec, and systemd-nspawn (as runc) puts
/// every one back to its default. The payload's SigIgn is nspawn's for the same caller.
/// Real-time ones too, 32 to 34 included (the numbers the C libraries keep for their own use,
/// which their sigaction refuses to touch: nspawn, through glibc, leaves 32 and 33 ignored;
/// ours resets them with the system call itself) and 64, the last.
#[test]
fn signals_the_caller_ignored_are_not_ignored_in_the_payload() {
    let t = Tree::rootfs("sigign");
    let ignoring = |cmd: &[&str]| -> String {
        let out = Command::new("sh")
            .args([
                "-c",
                r#"trap '' HUP INT TERM USR1 PIPE 32 33 34 40 64; exec "$@""#,
                "sh",
            ])
            .args(cmd)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        text.lines()
            .find(|l| l.starts_with("SigIgn:"))
            .unwrap_or_else(|| panic!("{cmd:?} printed {text:?}"))
            .to_string()
    };
    let ns_run = ns_tests::bin("ns-run");
    let payload = [
        "-q",
        "-D",
        t.arg(),
        "/bin/sh",
        "-c",
        "grep SigIgn /proc/self/status",
    ];
    let ours = ignoring(&[&[ns_tests::s(&ns_run), "--register=no"][..], &payload].concat());
    let mask = u64::from_str_radix(ours.trim_start_matches("SigIgn:").trim(), 16).unwrap();
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGPIPE,
        32,
        33,
        34,
        40,
        64,
    ] {
        assert_eq!(mask & (1 << (sig - 1)), 0, "signal {sig} ignored: {ours}");
    }
    let nspawn = ignoring(
        &[
            &["systemd-nspawn", "--register=no", "--keep-unit"][..],
            &payload,
        ]
        .concat(),
    );
    let nspawn = u64::from_str_radix(nspawn.trim_start_matches("SigIgn:").trim(), 16).unwrap();
    let glibc_keeps = (1 << (32 - 1)) | (1 << (33 - 1));
    assert_eq!(
        nspawn & glibc_keeps,
        glibc_keeps,
        "nspawn leaves 32 and 33 ignored"
    );
    assert_eq!(
        mask,
        nspawn & !glibc_keeps,
        "{ours} against nspawn's {nspawn:x}"
    );
}

/// A caller that ignores SIGCHLD (`trap '' CHLD`, inherited across exec): the kernel would
/// reap the monitor's children itself and send it no SIGCHLD, and ns-run waited forever.
/// It gets the payload's status, with and without ns-init.
#[test]
fn a_caller_ignoring_sigchld_still_gets_the_status() {
    use std::os::unix::process::CommandExt;
    let t = Tree::rootfs("sigchld-ign");
    for opts in [&[][..], &["-a"][..]] {
        let mut c = ns_run_in(&t, opts, &["/bin/sh", "-c", "exit 7"]);
        // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                Ok(())
            });
        }
        let out = ns_tests::spawn(c, None)
            .wait_for(Duration::from_secs(20))
            .unwrap_or_else(|o| panic!("{opts:?}: ns-run never returned: {o}"));
        assert_eq!(out.code, 7, "{opts:?}: {out}");
    }
}
