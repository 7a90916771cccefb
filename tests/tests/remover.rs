//! The child of ns-run's that removes the container's cgroups after ns-run exits (issue 19):
//! forked while the container runs, it holds nothing of the monitor's or the caller's, and
//! what becomes of the cgroups when it or the monitor is killed. And the chain's first
//! process, started without a copy of ns-run's memory: its exec failing is ns-run's error.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_tests::{
    bin, cgroups_of_monitor, registered_sh, settled, spawn_until, Running, Stopping, Tree,
};

/// The tests here take turns: each ns-run's start collects the journals of dead monitors,
/// among them the one a test killed on purpose to see its journal stay (it failed so).
static TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURNS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered container of `t` that prints `ready`, then exits 7 once /go exists (at
/// most 30 s).
fn waiting_running(t: &Tree, tag: &str) -> Running {
    let script =
        "echo ready; i=0; while [ ! -e /go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 7";
    spawn_until(
        registered_sh(t, &ns_tests::unique(tag), &[], script),
        "ready",
    )
}

/// [`waiting_running`], stopped (/go written) when it goes.
fn waiting(t: &Tree, tag: &str) -> Stopping {
    let go = t.path().join("go");
    Stopping::with(waiting_running(t, tag), move |_| {
        let _ = fs::write(&go, "");
    })
}

fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The monitor's remover: its child that is ns-run (the other is the container's PID 1).
fn remover_of(r: &Running) -> i32 {
    let found = settled(|| {
        let v: Vec<i32> = children(r.pid())
            .into_iter()
            .filter(|p| comm(*p) == "ns-run")
            .collect();
        if v.is_empty() {
            vec![()]
        } else {
            Vec::new()
        }
    });
    assert!(found.is_empty(), "no remover among {:?}", children(r.pid()));
    let v: Vec<i32> = children(r.pid())
        .into_iter()
        .filter(|p| comm(*p) == "ns-run")
        .collect();
    assert_eq!(v.len(), 1, "removers: {v:?}");
    v[0]
}

fn existing(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter().filter(|d| d.exists()).cloned().collect()
}

fn stat_field(pid: i32, n: usize) -> i64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after
        .split_whitespace()
        .nth(n - 3)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_remover_holds_nothing_but_its_pipe_and_removes_the_cgroups_after_the_exit() {
    let _turn = turn();
    let t = Tree::rootfs("remover-holds");
    let r = waiting(&t, "rm-holds");
    let remover = remover_of(&r);
    let cgroups = cgroups_of_monitor(r.pid());
    assert!(!cgroups.is_empty(), "no cgroups journaled");
    // Settled once it waits: the last thing it does first is to take the idle policy
    // (SCHED_IDLE, 5: stat's field 41).
    let policy = settled(|| match stat_field(remover, 41) {
        5 => Vec::new(),
        p => vec![p],
    });
    assert!(policy.is_empty(), "remover's scheduling policy: {policy:?}");
    // Its fds: one pipe, nothing else (no stdio of the caller's, no lock, no namespace).
    let fds: Vec<String> = fs::read_dir(format!("/proc/{remover}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(fds.len(), 1, "remover fds: {fds:?}");
    assert!(fds[0].starts_with("pipe:"), "remover fds: {fds:?}");
    // Not the caller's working directory (ours, the package's): it outlives the caller's
    // wait, and a mount it is on could not be unmounted meanwhile (EBUSY).
    assert_eq!(
        fs::read_link(format!("/proc/{remover}/cwd")).unwrap(),
        Path::new("/"),
        "remover's working directory"
    );
    assert_ne!(std::env::current_dir().unwrap(), Path::new("/"));
    // Its own session and process group (field 6 session, 5 process group).
    assert_eq!(
        stat_field(remover, 6),
        remover as i64,
        "not a session leader"
    );
    assert_ne!(stat_field(remover, 5), stat_field(r.pid(), 5));
    // Not in the container's cgroups (it would keep them busy).
    let own = fs::read_to_string(format!("/proc/{remover}/cgroup")).unwrap();
    assert!(!own.contains("ns-run-"), "remover in {own}");
    let o = r.stop();
    assert_eq!(o.code, 7, "{o}");
    assert_eq!(settled(|| existing(&cgroups)), Vec::<PathBuf>::new());
}

/// A remover that dies while the container runs is replaced by one forked at the end (as
/// when the container ends before its payload runs): the cgroups still go, with their
/// journal.
#[test]
fn with_its_remover_killed_the_cgroups_still_go() {
    let _turn = turn();
    let t = Tree::rootfs("remover-killed");
    let r = waiting(&t, "rm-killed");
    let monitor = r.pid();
    let remover = remover_of(&r);
    let cgroups = cgroups_of_monitor(monitor);
    // SAFETY: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(remover, libc::SIGKILL) }, 0);
    // The monitor reaps it (its child).
    let left = settled(|| {
        children(monitor)
            .into_iter()
            .filter(|p| *p == remover)
            .collect()
    });
    assert!(left.is_empty(), "remover {remover} not reaped");
    let o = r.stop();
    assert_eq!(o.code, 7, "{o}");
    assert_eq!(settled(|| existing(&cgroups)), Vec::<PathBuf>::new());
    let journals = |p: i32| ns_tests::cleanup_journal(p).exists();
    assert!(!journals(monitor) && !journals(remover), "journal left");
}

#[test]
fn with_the_monitor_killed_the_remover_leaves_the_cgroups_to_the_next_start() {
    let _turn = turn();
    let t = Tree::rootfs("remover-orphan");
    let r = waiting_running(&t, "rm-orphan");
    let monitor = r.pid();
    let _forget = ns_tests::ForgetJournal(monitor);
    let remover = remover_of(&r);
    let cgroups = cgroups_of_monitor(monitor);
    r.signal(libc::SIGKILL);
    let o = r.wait();
    assert_eq!(o.code, 137, "{o}");
    // The remover ends without a word from the monitor, and touches nothing.
    let alive = settled(|| {
        if Path::new(&format!("/proc/{remover}")).exists() && comm(remover) == "ns-run" {
            vec![remover]
        } else {
            Vec::new()
        }
    });
    assert!(alive.is_empty(), "remover {remover} still runs");
    // Its journal is the dead monitor's (any start on this host may have collected it by
    // now: the container died with its monitor); the next start collects its cgroups.
    assert!(ns_tests::wait_no_procs_in(t.path(), Duration::from_secs(5)).is_empty());
    ns_tests::assert_journals_collected(t.path(), &[monitor]);
    assert_eq!(existing(&cgroups), Vec::<PathBuf>::new());
}

/// ns-enter that cannot be executed: one line naming it, exit 125, nothing left (no
/// cgroup, journal, registry entry or process).
#[test]
fn ns_enter_that_cannot_be_executed_is_one_error_and_leaves_nothing() {
    let _turn = turn();
    let t = Tree::rootfs("remover-noexec");
    let dir = t.host_dir("bin");
    for b in [
        "ns-run", "ns-enter", "ns-mount", "ns-caps", "ns-init", "ns-net",
    ] {
        fs::copy(bin(b), dir.join(b)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("ns-enter"), fs::Permissions::from_mode(0o644)).unwrap();
    let name = ns_tests::unique("rm-noexec");
    let before = ns_tests::our_mounts();
    let mut c = std::process::Command::new(dir.join("ns-run"));
    c.env_remove("NS_DEBUG")
        .args(["-q", "-M", &name, "-D", t.arg(), "true"]);
    let o = ns_tests::run_cmd(c, None);
    assert_eq!(o.code, 125, "{o}");
    assert_eq!(
        o.stderr, "ns-run: cannot execute ns-enter: Permission denied\n",
        "{o}"
    );
    ns_tests::assert_no_leak(t.path(), &before);
    assert!(!Path::new(&format!("/run/ns-run/machines/{name}.json")).exists());
    assert!(ns_tests::container_cgroups(&name).is_empty());
}

/// Where clone3 is refused (a runtime nested in a container whose seccomp profile answers
/// ENOSYS for it, as containerd's default does, or EPERM), ns-enter is forked instead and
/// moves itself into the container's cgroup2 directory: the container starts as anywhere,
/// rooted at its own cgroup.
#[test]
fn without_clone3_ns_enter_is_forked_and_joins_the_cgroup_itself() {
    let t = Tree::rootfs("remover-noclone3");
    for errno in ["ENOSYS", "EPERM"] {
        let mut c = std::process::Command::new(bin("ns-probe"));
        c.env_remove("NS_DEBUG")
            .args(["no-clone3", errno])
            .arg(bin("ns-run"))
            .args(["--register=no", "-q", "-D", t.arg(), "sh", "-c"])
            .arg("grep -c . /proc/self/cgroup; grep '^0::' /proc/self/cgroup; exit 4");
        let o = ns_tests::run_cmd(c, None);
        assert_eq!(o.code, 4, "{errno}: {o}");
        let lines: Vec<&str> = o.stdout.lines().collect();
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            || Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        {
            assert_eq!(lines.get(1), Some(&"0::/"), "{errno}: {o}");
        }
    }
}

/// `c` under a seccomp filter that fails clone3, and clone with CLONE_VM (a vfork: never a
/// plain fork, which `sh` and `unshare` make), with `errno`: a sandbox that has no clone3
/// (Docker's default profile answers ENOSYS, for the C library to fall back to clone), or
/// a clone that fails (EAGAIN at pids.max) with an errno we choose.
#[cfg(target_arch = "x86_64")]
fn failing_vm_clones(c: &mut std::process::Command, errno: u32, clone_too: bool) {
    use std::os::unix::process::CommandExt;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jeq, jset, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    let clone = if clone_too {
        libc::SYS_clone as u32
    } else {
        u32::MAX
    };
    let filter = [
        stmt(ld, 0),                                // 0: the system call's number
        jump(jeq, libc::SYS_clone3 as u32, 4, 0),   // 1: clone3 -> 6
        jump(jeq, clone, 0, 2),                     // 2: not clone -> 5
        stmt(ld, 16),                               // 3: clone's flags (low half)
        jump(jset, libc::CLONE_VM as u32, 1, 0),    // 4: CLONE_VM -> 6
        stmt(ret, libc::SECCOMP_RET_ALLOW),         // 5
        stmt(ret, libc::SECCOMP_RET_ERRNO | errno), // 6
    ];
    // SAFETY: between fork and exec: two prctl calls on `filter`, which the closure owns.
    unsafe {
        c.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The chain's first process is started with a raw clone: its failure is -errno, which was
/// taken for a pid (Errno::result looks for -1): ns-run went on with ns-enter "-2", failed
/// at the sync socket, and its clean-up killed process group 2 (kill(-2, SIGKILL)): here a
/// `setsid sleep` of a PID namespace's, elsewhere whatever group has the errno's number
/// (EAGAIN at pids.max: 11). It must be one line naming the failure, and kill nothing.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_clone_that_fails_is_one_error_and_kills_no_process_group() {
    let _turn = turn();
    let t = Tree::rootfs("remover-clonefail");
    let before = ns_tests::our_mounts();
    let mut c = std::process::Command::new("unshare");
    c.env_remove("NS_DEBUG")
        .env("NS_RUN", bin("ns-run"))
        .env("TREE", t.path())
        .args(["-fp", "--mount-proc", "sh", "-c"])
        .arg(
            r#"setsid sleep 100 & [ $! = 2 ] || echo "sleeper is $!"
"$NS_RUN" -q --register=no -D "$TREE" true; echo "rc=$?"
kill -0 2 && echo alive; kill 2"#,
        );
    t.tag(&mut c);
    failing_vm_clones(&mut c, libc::ENOENT as u32, true);
    let o = ns_tests::run_cmd(c, None);
    assert_eq!(o.stdout, "rc=125\nalive\n", "{o}");
    let lines = o.stderr_lines();
    assert!(
        lines.len() == 1
            && lines[0].starts_with("ns-run: cannot fork")
            && lines[0].ends_with(": No such file or directory"),
        "{o}"
    );
    ns_tests::assert_no_leak(t.path(), &before);
}

/// Without a cgroup2 directory to start it in, ns-enter is started with clone (a vfork on
/// its own stack), not clone3: under a seccomp profile that has no clone3 (Docker's
/// default: ENOSYS), ns-run runs, as it did with fork.
#[cfg(target_arch = "x86_64")]
#[test]
fn without_cgroup2_a_sandbox_without_clone3_still_runs_containers() {
    let _turn = turn();
    let t = Tree::rootfs("remover-noclone3");
    let before = ns_tests::our_mounts();
    let mut c = std::process::Command::new("unshare");
    c.env_remove("NS_DEBUG")
        .env("NS_RUN", bin("ns-run"))
        .env("TREE", t.path())
        .args(["-m", "sh", "-c"])
        .arg(
            r#"for m in $(awk '$3 == "cgroup2" { print $2 }' /proc/self/mounts); do umount -l "$m"; done
exec "$NS_RUN" -q --register=no -D "$TREE" echo in"#,
        );
    t.tag(&mut c);
    failing_vm_clones(&mut c, libc::ENOSYS as u32, false);
    let o = ns_tests::run_cmd(c, None);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (0, "in\n", ""),
        "{o}"
    );
    ns_tests::assert_no_leak(t.path(), &before);
}
