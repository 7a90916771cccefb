//! The start path (issue 19's start-up goal): what the monitor does per start, counted in
//! system calls under strace (deterministic, unlike timings on a shared machine). Figures for
//! release builds come from bench/run.sh; these tests check the mechanisms that keep the
//! counts small, and that doing less leaves nothing behind.

use ns_tests::{bin, Tree};
use std::path::Path;
use std::process::Command;

/// One system call of a trace: its name and the rest of the line.
struct Call {
    name: String,
    line: String,
}

/// The trace of each process of a plain run of `/bin/true` in `t` with `opts` (strace -ff
/// writes one file per process).
fn traces(t: &Tree, opts: &[&str]) -> Vec<String> {
    let out = t.host_dir("strace");
    let mut c = Command::new("strace");
    c.args(["-f", "-ff", "-qq", "-s", "200", "-o"])
        .arg(out.join("t"))
        .arg(bin("ns-run"))
        .args(["--register=no", "-q"])
        .args(opts)
        .args(["-D", t.arg(), "/bin/true"])
        .env_remove("NS_DEBUG")
        .env_remove("NS_STAGE_FDS");
    let r = ns_tests::run_cmd(c, None);
    r.ok();
    std::fs::read_dir(&out)
        .expect("strace output")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

fn parse(trace: &str) -> Vec<Call> {
    trace
        .lines()
        .filter_map(|l| {
            let name = l.split('(').next()?;
            (!name.is_empty() && !name.starts_with(['+', '-', ' ', '<'])).then(|| Call {
                name: name.to_string(),
                line: l.to_string(),
            })
        })
        .collect()
}

/// The monitor's system calls (its trace is the one that runs ns-run).
fn monitor_calls(t: &Tree, opts: &[&str]) -> Vec<Call> {
    let exec = format!("execve(\"{}\"", bin("ns-run").display());
    let monitor = traces(t, opts)
        .into_iter()
        .find(|s| s.starts_with(&exec))
        .expect("a trace of the monitor");
    parse(&monitor)
}

/// The system calls of stage `stage` (from its exec to the next one).
fn stage_calls(t: &Tree, stage: &str) -> Vec<Call> {
    stage_calls_with(t, &[], stage)
}

/// [`stage_calls`] of a run with `opts`.
fn stage_calls_with(t: &Tree, opts: &[&str], stage: &str) -> Vec<Call> {
    let exec = format!("[\"{stage}\", ");
    let trace = traces(t, opts)
        .into_iter()
        .find(|s| s.contains(&exec))
        .expect("a trace of the stage");
    let calls = parse(&trace);
    let at = calls
        .iter()
        .position(|c| c.name.starts_with("execve") && c.line.contains(&exec))
        .expect("its exec");
    let mut rest: Vec<Call> = calls.into_iter().skip(at + 1).collect();
    if let Some(end) = rest.iter().position(|c| c.name.starts_with("execve")) {
        rest.truncate(end);
    }
    rest
}

/// The cgroups the monitor made (mkdir under /sys/fs/cgroup that succeeded).
fn cgroups_made(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.name == "mkdir" && c.line.ends_with("= 0"))
        .filter_map(|c| c.line.split('"').nth(1))
        .filter(|p| p.starts_with("/sys/fs/cgroup/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn cgroups_are_removed_after_the_caller_has_the_status_with_one_rmdir_each() {
    let t = Tree::rootfs("startpath-rm");
    let exec = format!("execve(\"{}\"", bin("ns-run").display());
    let all = traces(&t, &[]);
    let calls = parse(
        all.iter()
            .find(|s| s.starts_with(&exec))
            .expect("the monitor"),
    );
    let made = cgroups_made(&calls);
    assert!(!made.is_empty(), "no cgroup made: {}", made.len());
    // strace waits for every process it follows: the remover too.
    for d in &made {
        assert!(!Path::new(d).exists(), "{d} left behind");
    }
    // From the payload's end (the last child reaped) to the monitor's exit: the registry,
    // journal and locks, and a fork; no cgroup removed while the caller waits.
    let last_wait = calls
        .iter()
        .rposition(|c| c.name == "wait4" && !c.line.ends_with("= 0"))
        .expect("the payload reaped");
    let tail = &calls[last_wait + 1..];
    let rmdirs = tail.iter().filter(|c| c.name == "rmdir").count();
    assert_eq!(rmdirs, 0, "cgroups removed before the exit: {rmdirs}");
    assert!(
        tail.len() <= 40,
        "{} system calls after the payload's end: {:?}",
        tail.len(),
        tail.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()
    );
    assert!(
        tail.iter().any(|c| c.name == "fork" || c.name == "clone"),
        "no remover forked"
    );
    // The remover (a child of the monitor, its own trace): one rmdir per cgroup, no walk.
    let remover = all
        .iter()
        .map(|s| parse(s))
        .find(|c| {
            c.iter()
                .any(|c| c.name == "rmdir" && c.line.contains(made[0].as_str()))
        })
        .expect("the remover's trace");
    let walks = remover.iter().filter(|c| c.name == "getdents64").count();
    assert_eq!(walks, 0, "directories read to remove cgroups: {walks}");
    let rmdirs = remover.iter().filter(|c| c.name == "rmdir").count();
    assert_eq!(rmdirs, made.len(), "rmdirs for {} cgroups", made.len());
    assert!(
        remover.iter().any(|c| c.name == "setsid"),
        "the remover stays in the caller's session"
    );
    // Nor its working directory (`cd MNT; ns-run ...; cd /; umount MNT` would meet EBUSY
    // while it works), and its work waits for idle CPUs.
    let before_rmdir = remover
        .iter()
        .position(|c| c.name == "rmdir")
        .expect("rmdir");
    let early = &remover[..before_rmdir];
    assert!(
        early.iter().any(|c| c.line.starts_with("chdir(\"/\")")),
        "the remover keeps the caller's working directory"
    );
    assert!(
        early.iter().any(|c| c.line.contains("SCHED_IDLE")),
        "the remover is not SCHED_IDLE"
    );
}

#[test]
fn a_new_cgroup_is_looked_up_once_before_it_is_made() {
    let t = Tree::rootfs("startpath-mk");
    let calls = monitor_calls(&t, &[]);
    let made = cgroups_made(&calls);
    assert!(!made.is_empty(), "no cgroup made");
    for d in made.iter().filter(|d| !d.ends_with("/payload")) {
        let quoted = format!("\"{d}\"");
        let mk = calls
            .iter()
            .position(|c| c.name == "mkdir" && c.line.contains(&quoted))
            .expect("its mkdir");
        let looks: Vec<&str> = calls[..mk]
            .iter()
            .filter(|c| c.line.contains(&quoted))
            .map(|c| c.name.as_str())
            .collect();
        // The cleanup journal's check that it is a cgroup or not there yet: one lstat.
        assert!(
            looks.len() <= 1,
            "{d} looked up before its mkdir: {looks:?}"
        );
    }
}

#[test]
fn ns_mount_opens_each_proc_entry_it_covers_twice_at_most() {
    let t = Tree::rootfs("startpath-proc");
    let calls = stage_calls(&t, "ns-mount");
    let opened = |e: &str| {
        let quoted = format!("\"proc/{e}\"");
        calls
            .iter()
            .filter(|c| c.name == "openat2" && c.line.contains(&quoted))
            .count()
    };
    assert_eq!(opened("sys"), 2, "the check of the trace itself");
    // Existing ones: found (and bound through that fd), then the new mount made read-only.
    for e in ["fs", "irq", "bus", "kallsyms", "keys", "timer_list"] {
        let n = opened(e);
        assert!(n <= 2, "/proc/{e} opened {n} times");
    }
}

#[test]
fn the_payload_level_gets_its_cpus_from_the_container_cgroup_unasked() {
    let t = Tree::rootfs("startpath-cpuset");
    let calls = monitor_calls(&t, &[]);
    let made = cgroups_made(&calls);
    let Some(payload) = made
        .iter()
        .find(|d| d.contains("/cpuset/") && d.ends_with("/payload"))
    else {
        eprintln!("no v1 cpuset hierarchy here: nothing to check");
        return;
    };
    // The payload ran (a cpuset without CPUs takes no process), with no file of its own
    // written: cgroup.clone_children on the container's level gave it its CPUs.
    let touched: Vec<&str> = calls
        .iter()
        .filter(|c| c.line.contains(&format!("\"{payload}/")))
        .map(|c| c.line.as_str())
        .collect();
    assert!(touched.is_empty(), "payload's cpuset written: {touched:?}");
}

/// Every start looks at the monitor of each running container (is its cleanup journal
/// stale?): a few system calls each, as that is paid per start times containers running.
#[test]
fn a_running_containers_monitor_costs_a_start_three_system_calls() {
    let t = Tree::rootfs("startpath-alive");
    let name = ns_tests::unique("spalive");
    let r = ns_tests::Stopping::new(ns_tests::spawn_until(
        ns_tests::registered_sleeper(&t, &name, &[]),
        "ready",
    ));
    let other = Tree::rootfs("startpath-alive2");
    let calls = monitor_calls(&other, &[]);
    let comm = format!("\"/proc/{}/comm\"", r.pid());
    let open = calls
        .iter()
        .position(|c| c.name == "openat" && c.line.contains(&comm))
        .expect("the running monitor looked at");
    let fd = calls[open]
        .line
        .rsplit("= ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let close = calls[open..]
        .iter()
        .position(|c| c.name == "close" && c.line.starts_with(&format!("close({fd})")))
        .expect("closed");
    // A debug build's std checks an fd it closes (F_GETFD): not counted.
    let made: Vec<&str> = calls[open..=open + close]
        .iter()
        .filter(|c| !c.line.starts_with(&format!("fcntl({fd}, F_GETFD)")))
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        made.len() <= 3,
        "{} system calls for it: {made:?}",
        made.len()
    );
    drop(r);
}

/// Under -U without a network namespace of its own, the monitor hands down the image and a
/// sysfs, each locked for the container's user namespace by a short-lived child (a fork and
/// two copies of the mount namespace): one child locks both. Counted as the processes that
/// unshare a mount namespace and then join the container's user namespace.
#[test]
fn one_child_locks_the_image_and_the_sysfs_under_userns() {
    let t = Tree::rootfs("lockers");
    let lockers: Vec<Vec<Call>> = traces(&t, &["-U"])
        .iter()
        .map(|s| parse(s))
        .filter(|calls| {
            calls
                .iter()
                .any(|c| c.name == "setns" && c.line.contains("CLONE_NEWUSER"))
                && calls.iter().any(|c| c.name == "open_tree")
        })
        .collect();
    assert_eq!(
        lockers.len(),
        1,
        "children that lock mounts: {}",
        lockers.len()
    );
    let clones = lockers[0].iter().filter(|c| c.name == "open_tree").count();
    assert_eq!(clones, 2, "the image and the sysfs, locked together");
}

/// The chain's stages take heap memory from the kernel in segments and reuse what they free
/// (ns_core::sys::Heap, dlmalloc): musl's own allocator maps and unmaps a group per size
/// class as it fills and empties, ~100 mmap and munmap calls in the three (release). ns-run
/// has dlmalloc over one arena while it starts (ns_core::sys::StartupHeap; see the next
/// test).
#[test]
fn the_heap_is_mapped_in_segments_not_per_allocation() {
    let t = Tree::rootfs("startpath-heap");
    let ours = ["[\"ns-enter\", ", "[\"ns-mount\", ", "[\"ns-caps\", "];
    let mut maps = 0;
    for trace in traces(&t, &[]) {
        // Each process's calls from the exec of one of ours to the next exec.
        let mut counting = false;
        for c in parse(&trace) {
            if c.name.starts_with("execve") {
                counting = ours.iter().any(|o| c.line.contains(o));
            } else if counting && (c.name == "mmap" || c.name == "munmap" || c.name == "brk") {
                maps += 1;
            }
        }
    }
    assert!(maps > 0, "the check of the trace itself");
    assert!(
        maps <= 20,
        "{maps} mmap, munmap and brk calls in the stages"
    );
}

/// ns-run's start-up heap is dlmalloc over one arena (ns_core::sys::StartupHeap): on musl's
/// allocator alone the monitor made ~75 mmap and munmap calls per start (release), most of
/// them clap's command line growing and 64 KiB receive buffers; now 14 (the arena, musl's
/// own start-up and what libc allocates inside itself, opendir's buffers).
#[test]
fn the_monitor_takes_its_start_up_heap_in_one_mapping() {
    let t = Tree::rootfs("startpath-monheap");
    let maps = monitor_calls(&t, &[])
        .iter()
        .filter(|c| c.name == "mmap" || c.name == "munmap" || c.name == "brk")
        .count();
    assert!(maps > 0, "the check of the trace itself");
    assert!(
        maps <= 24,
        "{maps} mmap, munmap and brk calls in the monitor"
    );
}

/// ns-enter makes the container's namespaces while the monitor makes its v1 cgroups: all
/// but the cgroup namespace before SYNC-0 (`cgroups`), the cgroup namespace once it has
/// joined them, rooted there. With a user namespace (which must be made after the join: the
/// host's cgroup files are not its root's) everything waits, as before.
#[test]
fn ns_enter_unshares_while_the_v1_cgroups_are_made() {
    let t = Tree::rootfs("startpath-early");
    let v1 = ns_tests::cgroup_dirs()
        .iter()
        .any(|d| d.parent() == Some(Path::new("/sys/fs/cgroup")) && d.ends_with("pids"));
    let at = |calls: &[Call], what: &dyn Fn(&Call) -> bool| calls.iter().position(what);
    let sync0 = |c: &Call| c.name.starts_with("recv") && c.line.contains("cgroups");
    let unshare = |c: &Call| c.name == "unshare";
    let calls = stage_calls(&t, "ns-enter");
    let unshares: Vec<&Call> = calls.iter().filter(|c| unshare(c)).collect();
    if !v1 {
        assert_eq!(unshares.len(), 1, "no v1 cgroups: one unshare");
        return;
    }
    let (first, got) = (at(&calls, &unshare), at(&calls, &sync0));
    assert!(first < got, "unshare after SYNC-0");
    assert_eq!(
        unshares.len(),
        2,
        "{:?}",
        unshares.iter().map(|c| &c.line).collect::<Vec<_>>()
    );
    assert!(
        !unshares[0].line.contains("CLONE_NEWCGROUP"),
        "{}",
        unshares[0].line
    );
    assert!(
        unshares[1].line.contains("unshare(CLONE_NEWCGROUP)"),
        "{}",
        unshares[1].line
    );
    let last_join = calls.iter().rposition(|c| c.line.contains("/tasks"));
    assert!(last_join < at(&calls, &|c: &Call| std::ptr::eq(c, unshares[1])));
    // With -U: the join first (a tree of its own: traces go to the tree's directory).
    let t = Tree::rootfs("startpath-early-u");
    let calls = stage_calls_with(&t, &["-U"], "ns-enter");
    let (first, got) = (at(&calls, &unshare), at(&calls, &sync0));
    assert!(
        got.is_some() && got < first,
        "-U: unshare before SYNC-0: {:?}",
        calls.iter().map(|c| &c.line).collect::<Vec<_>>()
    );
}

/// ns-enter failing in its early unshare (here ENOSPC, as at a full
/// user.max_*_namespaces), while the monitor still makes the v1 cgroups (each mkdir slowed
/// down, so that it does not send SYNC-0 first): one line, ns-enter's, and its exit code;
/// the monitor finds ns-enter gone at SYNC-0 and says nothing of a broken pipe. Nothing is
/// left: cgroups, journal, registry entry.
#[test]
fn ns_enter_failing_before_sync0_says_so_in_one_line() {
    let t = Tree::rootfs("startpath-early-fail");
    let name = ns_tests::unique("early");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null"])
        .args(["-e", "trace=unshare,mkdir,mkdirat"])
        .args(["-e", "inject=unshare:error=ENOSPC"])
        .args(["-e", "inject=mkdir,mkdirat:delay_exit=20000"])
        .arg(bin("ns-run"))
        .args([
            "-q",
            "-M",
            &name,
            "--property=TasksMax=50",
            "-D",
            t.arg(),
            "/bin/true",
        ])
        .env_remove("NS_DEBUG")
        .env_remove("NS_STAGE_FDS");
    t.tag(&mut c);
    let out = ns_tests::run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    assert!(
        out.stderr
            .starts_with("ns-enter: cannot unshare namespaces")
            && out.stderr.contains("No space left on device"),
        "{out}"
    );
    assert_eq!(
        ns_tests::settled(|| ns_tests::container_cgroups(&name)),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(
        !Path::new(&format!("/run/ns-run/machines/{name}.lock")).exists(),
        "registry entry left"
    );
    assert!(ns_tests::procs_in(t.path()).is_empty());
}
