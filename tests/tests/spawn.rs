//! The chain's first process, started without a copy of ns-run's memory
//! (`ns_core::sys::spawn`, issue 19): its exec failing is ns-run's one error line, a failed
//! clone kills nothing, and where a system call filter refuses clone3 (a runtime nested in
//! a Docker or containerd container) the container starts all the same.

use std::fs;
use std::path::Path;

use ns_tests::{bin, Tree};

/// The tests here take turns: each ns-run's start collects the journals of dead monitors,
/// among them the one a test killed on purpose to see its journal stay (it failed so).
static TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURNS.lock().unwrap_or_else(|e| e.into_inner())
}

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
