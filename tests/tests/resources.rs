//! Resource control: every container's own cgroups, `--property=` written into them (v1
//! controllers on hybrid hosts like these, cgroup2 where it has the controller), limits that
//! hold inside (an OOM kill, a fork bomb stopped), bad and unavailable properties refused
//! with one line and nothing left, and the cgroups removed after exit.

use std::path::{Path, PathBuf};
use std::process::Command;

use ns_tests::{
    assert_journals_collected, assert_no_leak, cgroups_of_monitor, mount_points, ns_run, run_cmd,
    ForgetJournal, Tree,
};

fn cmd(t: &Tree, opts: &[&str], script: &str) -> Command {
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .args(opts)
        .args(["sh", "-c", script]);
    c
}

/// The container's cgroup in the hierarchy whose mount point ends in `controller`.
fn cgroup_of(cgroups: &[PathBuf], controller: &str) -> PathBuf {
    cgroups
        .iter()
        .find(|c| {
            let rel = c.strip_prefix("/sys/fs/cgroup").unwrap_or(c);
            rel.iter().next().is_some_and(|h| h == controller)
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cgroups:?}"))
        .clone()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn v1_host() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

#[test]
fn properties_land_in_the_containers_cgroups_and_go_with_it() {
    let t = Tree::rootfs("res-files");
    let before = mount_points();
    let opts = [
        "--property=MemoryMax=64M",
        "--property=MemorySwapMax=0",
        "--property=TasksMax=20",
        "--property=CPUQuota=50%",
        "--property=CPUWeight=50",
        "--property=AllowedCPUs=0",
    ];
    let mut opts = opts.to_vec();
    opts.extend(["-M", "resfiles"]);
    let mut cgroups = Vec::new();
    ns_tests::while_running(cmd(&t, &opts, "echo ready; exec sleep 100"), || {
        cgroups = walk_cgroups()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/ns-run-resfiles-"))
            .collect();
        if v1_host() {
            // systemd's v1 mapping: limit and memory+swap, pids, CFS quota of a 100 ms
            // period, shares = weight * 1024 / 100, the cpuset.
            let mem = cgroups
                .iter()
                .find(|c| c.starts_with("/sys/fs/cgroup/memory"))
                .expect("memory cgroup");
            assert_eq!(read(mem, "memory.limit_in_bytes"), "67108864");
            assert_eq!(read(mem, "memory.memsw.limit_in_bytes"), "67108864");
            assert_eq!(read(&cgroup_of(&cgroups, "pids"), "pids.max"), "20");
            let cpu = cgroup_of(&cgroups, "cpu");
            assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
            assert_eq!(read(&cpu, "cpu.shares"), "512");
            assert_eq!(read(&cgroup_of(&cgroups, "cpuset"), "cpuset.cpus"), "0");
        } else {
            let d = cgroups
                .iter()
                .find(|c| c.starts_with("/sys/fs/cgroup"))
                .unwrap();
            assert_eq!(read(d, "memory.max"), "67108864");
            assert_eq!(read(d, "memory.swap.max"), "0");
            assert_eq!(read(d, "pids.max"), "20");
            assert_eq!(read(d, "cpu.max"), "50000 100000");
            assert_eq!(read(d, "cpu.weight"), "50");
            assert_eq!(read(d, "cpuset.cpus"), "0");
        }
        // The payload is in them (its own view: the root of its cgroup namespace).
        let pid1 = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
        assert!(
            !pid1.trim().is_empty(),
            "nothing in {}",
            cgroups[0].display()
        );
    });
    let left: Vec<_> = cgroups.iter().filter(|c| c.exists()).collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    assert_no_leak(t.path(), &before);
}

#[test]
fn a_memory_hog_is_oom_killed_inside_and_the_host_survives() {
    // `tail /dev/zero` buffers an endless line: killed at 32M (no swap to escape to); the
    // container's shell, and the host, carry on.
    let t = Tree::rootfs("res-oom");
    let out = run_cmd(
        cmd(
            &t,
            &["--property=MemoryMax=32M", "--property=MemorySwapMax=0"],
            "tail /dev/zero; echo status=$?",
        ),
        None,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("status=137"), "{out}");
}

#[test]
fn a_fork_bomb_stops_at_tasks_max() {
    // A subshell forks sleepers until the kernel refuses (busybox sh then gives up); the
    // container's processes are counted with shell builtins only (no fork left to spare).
    let t = Tree::rootfs("res-pids");
    let script = "(for i in $(seq 30); do sleep 5 & done) 2>/dev/null; \
                  n=0; for d in /proc/[0-9]*; do n=$((n+1)); done; echo $n; kill -9 -1";
    let count = |opts: &[&str]| -> u32 {
        let out = run_cmd(cmd(&t, opts, script), None);
        assert_eq!(out.code, 0, "{out}");
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{out}"))
    };
    let limited = count(&["--property=TasksMax=10"]);
    assert!(
        (2..=10).contains(&limited),
        "{limited} processes under TasksMax=10"
    );
    assert_eq!(count(&[]), 31, "without a limit all 30 sleepers run");
}

#[test]
fn bad_or_unavailable_properties_fail_with_one_line_and_leave_nothing() {
    let t = Tree::rootfs("res-bad");
    let mut cases = vec![
        (
            "--property=MemoryMax=lots",
            "--property=MemoryMax=lots: not a size",
        ),
        (
            "--property=Bogus=1",
            "--property=Bogus=1: unknown or unsupported property",
        ),
        (
            "--property=CPUQuota=50",
            "--property=CPUQuota=50: not a percentage",
        ),
    ];
    if v1_host() {
        cases.push((
            "--property=MemoryHigh=1G",
            "--property=MemoryHigh: needs the cgroup2 memory controller",
        ));
    }
    if !Path::new("/sys/fs/cgroup/blkio/blkio.weight").exists() && v1_host() {
        cases.push((
            "--property=IOWeight=200",
            "--property=IOWeight: this host's blkio controller has no blkio.weight",
        ));
    }
    for (opt, want) in cases {
        let before = mount_points();
        let mut c = cmd(&t, &[opt, "-M", "resbad"], "true");
        c.env_remove("NS_DEBUG");
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{opt}: {out}");
        assert_eq!(out.stderr_lines().len(), 1, "{opt}: {out}");
        assert!(
            out.stderr.starts_with(&format!("ns-run: {want}")),
            "{opt}: {out}"
        );
        assert_no_leak(t.path(), &before);
        let left: Vec<_> = walk_cgroups()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/ns-run-resbad-"))
            .collect();
        assert!(left.is_empty(), "{opt}: cgroups left: {left:?}");
    }
}

/// Every cgroup directory of the host, three levels deep (ours sit beside the tests').
fn walk_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                if depth < 3 {
                    todo.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

#[test]
fn a_killed_monitors_cgroups_are_collected_by_the_next_run() {
    let t = Tree::rootfs("res-killed");
    let r = ns_tests::spawn_until(
        cmd(
            &t,
            &["--property=TasksMax=50"],
            "echo ready; exec sleep 100",
        ),
        "ready",
    );
    let monitor = r.pid();
    let _journal = ForgetJournal(monitor);
    let cgroups = cgroups_of_monitor(monitor);
    assert!(!cgroups.is_empty(), "no cgroup journaled");
    r.signal(libc::SIGKILL);
    let _ = r.wait();
    let left = ns_tests::wait_no_procs_in(t.path(), std::time::Duration::from_secs(5));
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert_journals_collected(t.path(), &[monitor]);
    let left: Vec<_> = cgroups.iter().filter(|c| c.exists()).collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[test]
fn an_oom_killed_payload_is_reported_and_gives_137() {
    let t = Tree::rootfs("res-oom1");
    for extra in [&[][..], &["-a"][..]] {
        let mut opts = vec!["--property=MemoryMax=32M", "--property=MemorySwapMax=0"];
        opts.extend_from_slice(extra);
        let mut c = ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg()])
            .args(&opts)
            .args(["tail", "/dev/zero"]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 137, "{extra:?}: {out}");
        assert_eq!(
            out.stderr, "ns-run: the container was killed by the OOM killer (its memory limit)\n",
            "{extra:?}: {out}"
        );
    }
}

#[test]
fn sigterm_during_startup_leaves_no_cgroup() {
    // Stopped at every moment of its start (and so, sometimes, killed by SIGTERM before it
    // blocks signals): what a monitor did not remove itself, the next run collects.
    let t = Tree::rootfs("res-race");
    for i in 0..60u64 {
        let mut c = ns_run();
        t.tag(&mut c).args([
            "-q",
            "-M",
            "resrace",
            "-D",
            t.arg(),
            "--property=TasksMax=50",
            "sleep",
            "100",
        ]);
        let r = ns_tests::spawn(c, None);
        std::thread::sleep(std::time::Duration::from_micros((i % 30) * 200));
        r.signal(libc::SIGTERM);
        assert!(
            r.wait_for(std::time::Duration::from_secs(5)).is_ok(),
            "hung"
        );
    }
    let left = ns_tests::wait_no_procs_in(t.path(), std::time::Duration::from_secs(5));
    assert!(left.is_empty(), "processes left: {left:#?}");
    let out = run_cmd(cmd(&t, &["-M", "resrace"], "true"), None);
    assert_eq!(out.code, 0, "{out}");
    let left: Vec<_> = walk_cgroups()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/ns-run-resrace-"))
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[test]
fn device_policy_closed_refuses_device_nodes_and_device_allow_lets_one_through() {
    // Nodes a container made while it had no policy (on the tree, so that they stay):
    // loop-control (c 10:237) and loop0 (b 7:0), both harmless to open.
    let t = Tree::rootfs("res-dev");
    let made = run_cmd(cmd(&t, &[], "mknod /lc c 10 237 && mknod /blk b 7 0"), None);
    assert_eq!(made.code, 0, "{made}");
    let probe = "for n in lc blk; do \
                   if cat /$n 2>&1 | grep -q 'not permitted'; then echo $n=denied; \
                   else echo $n=open; fi; \
                 done; \
                 mknod /new c 10 237 2>/dev/null && echo mknod=ok || echo mknod=denied; \
                 rm -f /new; (echo x > /dev/null) 2>/dev/null && echo null=ok || echo null=denied";
    let probe_with = |opts: &[&str]| {
        let out = run_cmd(cmd(&t, opts, probe), None);
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        out.stdout
    };
    assert_eq!(
        probe_with(&[]),
        "lc=open\nblk=open\nmknod=ok\nnull=ok\n",
        "no policy: what nspawn gives without its unit"
    );
    assert_eq!(
        probe_with(&["--property=DevicePolicy=closed"]),
        "lc=denied\nblk=denied\nmknod=denied\nnull=ok\n"
    );
    assert_eq!(
        probe_with(&["--property=DeviceAllow=/dev/loop-control rwm"]),
        "lc=open\nblk=denied\nmknod=ok\nnull=ok\n",
        "DeviceAllow alone: auto, so closed plus the rule"
    );
    assert_eq!(
        probe_with(&[
            "--property=DeviceAllow=block-loop r",
            "--property=DevicePolicy=strict"
        ]),
        "lc=denied\nblk=open\nmknod=denied\nnull=denied\n",
        "strict: not even /dev/null"
    );
}
