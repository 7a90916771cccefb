//! Resource control: every container's own cgroups, `--property=` written into them (v1
//! controllers on hybrid hosts like these, cgroup2 where it has the controller), limits that
//! hold inside (an OOM kill, a fork bomb stopped), bad and unavailable properties refused
//! with one line and nothing left, and the cgroups removed after exit.

use std::path::{Path, PathBuf};
use std::process::Command;

use ns_tests::{
    assert_journals_collected, assert_no_leak, cgroups_of_monitor, ns_run, our_mounts, run_cmd,
    ForgetJournal, LoopDevice, Tree,
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
    let before = our_mounts();
    let opts = [
        "--property=MemoryMax=64M",
        "--property=MemorySwapMax=0",
        "--property=TasksMax=20",
        "--property=CPUQuota=50%",
        "--property=CPUWeight=50",
        "--property=AllowedCPUs=0",
    ];
    let mut opts = opts.to_vec();
    let name = ns_tests::unique("resfiles");
    opts.extend(["-M", &name]);
    let mut cgroups = Vec::new();
    ns_tests::while_running(cmd(&t, &opts, "echo ready; exec sleep 100"), || {
        cgroups = ns_tests::container_cgroups(&name);
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
        // The payload is in their payload level (its own view: the root of its cgroup
        // namespace), below the limits.
        let payload = cgroups[0].join("payload");
        let pid1 = std::fs::read_to_string(payload.join("cgroup.procs")).unwrap();
        assert!(!pid1.trim().is_empty(), "nothing in {}", payload.display());
    });
    let left = ns_tests::settled(|| cgroups.iter().filter(|c| c.exists()).collect::<Vec<_>>());
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
    if !Path::new("/sys/fs/cgroup/blkio/blkio.weight_device").exists() && v1_host() {
        cases.push((
            "--property=IODeviceWeight=/ 200",
            "--property=IODeviceWeight: this host's blkio controller has no blkio.weight_device",
        ));
    }
    for (opt, want) in cases {
        let before = our_mounts();
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
        let left = ns_tests::settled(|| {
            ns_tests::cgroup_dirs()
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("/ns-run-resbad-"))
                .collect::<Vec<_>>()
        });
        assert!(left.is_empty(), "{opt}: cgroups left: {left:?}");
    }
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
    let left = ns_tests::settled(|| cgroups.iter().filter(|c| c.exists()).collect::<Vec<_>>());
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// The processes named ns-run whose command line names `tree`, but `not`.
fn ns_runs_on(tree: &str, not: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != not)
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ns-run")
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == tree.as_bytes()))
        })
        .collect()
}

#[test]
fn the_exit_status_comes_before_the_cgroups_go_and_a_killed_remover_leaves_them_to_the_next_run() {
    let t = Tree::rootfs("res-remover");
    let go = t.path().join("go");
    let r = ns_tests::spawn_until(
        cmd(
            &t,
            &[],
            "echo ready; while [ ! -e /go ]; do sleep 0.05; done",
        ),
        "ready",
    );
    let monitor = r.pid();
    let _journal = ForgetJournal(monitor);
    let cgroups = cgroups_of_monitor(monitor);
    // A process of ours (not the container's) in a cgroup below the container's keeps it
    // busy: its removal retries for a second, then gives up, leaving the journal.
    let cg = cgroups
        .iter()
        .find(|c| !c.starts_with("/sys/fs/cgroup/unified") && c.join("payload").is_dir())
        .or_else(|| cgroups.first())
        .expect("a cgroup journaled")
        .join("payload/hold");
    std::fs::create_dir(&cg).unwrap();
    let mut holder = Command::new("sleep").arg("100").spawn().unwrap();
    let holder_pid = holder.id().to_string();
    let _holder = ns_tests::Defer::new(move || {
        let _ = holder.kill();
        let _ = holder.wait();
    });
    std::fs::write(cg.join("cgroup.procs"), &holder_pid).unwrap();
    std::fs::write(&go, "").unwrap();
    let out = r.wait();
    assert_eq!(out.code, 0, "{out}");
    // The caller has the status; the cgroups are still being removed, by a child of the
    // monitor's, which we kill: what it did not remove is journaled still.
    let removers = ns_runs_on(t.arg(), monitor);
    assert_eq!(removers.len(), 1, "one remover running: {removers:?}");
    let remover = removers[0];
    let _journal2 = ForgetJournal(remover);
    assert!(cg.is_dir(), "{} removed", cg.display());
    // The journal is the remover's while it works: named for the monitor (dead), every start
    // would take it for a dead monitor's, and a monitor given the same pid would adopt it
    // (its own entries removed with it by the remover).
    let named_for_monitor = || ns_tests::cleanup_journal(monitor).exists();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
    while named_for_monitor() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        !named_for_monitor(),
        "the journal is still named for the dead monitor"
    );
    assert!(
        ns_tests::cleanup_journal(remover).exists(),
        "no journal for the remover"
    );
    // SAFETY: kill(2) on a pid of ours; no memory is passed.
    assert_eq!(unsafe { libc::kill(remover, libc::SIGKILL) }, 0);
    assert!(ns_tests::settled(|| ns_runs_on(t.arg(), monitor)).is_empty());
    // Reaped (by init: a zombie's pid still names an ns-run, whose journal is not collected).
    let proc = format!("/proc/{remover}/comm");
    assert!(
        ns_tests::settled(|| std::fs::metadata(&proc).into_iter().collect::<Vec<_>>()).is_empty()
    );
    assert!(
        ns_tests::cleanup_journal(remover).exists(),
        "journal removed"
    );
    drop(_holder);
    assert_journals_collected(t.path(), &[monitor, remover]);
    let left = ns_tests::settled(|| cgroups.iter().filter(|c| c.exists()).collect::<Vec<_>>());
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
            out.stderr, "ns-run: the payload was killed by the OOM killer (its memory limit)\n",
            "{extra:?}: {out}"
        );
    }
}

#[test]
fn sigterm_during_startup_leaves_no_cgroup() {
    // Stopped at every moment of its start (and so, sometimes, killed by SIGTERM before it
    // blocks signals): what a monitor did not remove itself, the next run collects.
    let t = Tree::rootfs("res-race");
    let name = ns_tests::unique("resrace");
    for i in 0..60u64 {
        let mut c = ns_run();
        t.tag(&mut c).args([
            "-q",
            "-M",
            &name,
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
    let out = run_cmd(cmd(&t, &["-M", &name], "true"), None);
    assert_eq!(out.code, 0, "{out}");
    let left = ns_tests::settled(|| {
        ns_tests::cgroup_dirs()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&format!("/ns-run-{name}-")))
            .collect::<Vec<_>>()
    });
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[test]
fn the_default_device_policy_refuses_device_nodes_and_device_allow_lets_one_through() {
    // Nodes made in the tree by a container allowed to (so that they stay): loop-control
    // (c 10:237) and loop0 (b 7:0), both harmless to open.
    let t = Tree::rootfs("res-dev");
    let anything = [
        "--property=DeviceAllow=char-* rwm",
        "--property=DeviceAllow=block-* rwm",
    ];
    let made = run_cmd(
        cmd(&t, &anything, "mknod /lc c 10 237 && mknod /blk b 7 0"),
        None,
    );
    assert_eq!(made.code, 0, "{made}");
    let probe = "for n in lc blk; do \
                   if cat /$n 2>&1 | grep -q 'not permitted'; then echo $n=denied; \
                   else echo $n=open; fi; \
                 done; \
                 mknod /new c 10 237 2>/dev/null && echo mknod=ok || echo mknod=denied; \
                 rm -f /new; (echo x > /dev/null) 2>/dev/null && echo null=ok || echo null=denied";
    // The v1 devices controller (used where it is mounted, as here), then the eBPF program
    // that cgroup2-only hosts get, forced.
    for filter in ["auto", "ebpf"] {
        let probe_with = |opts: &[&str]| {
            let mut c = cmd(&t, opts, probe);
            c.env("NS_RUN_DEVICE_FILTER", filter);
            let out = run_cmd(c, None);
            assert_eq!(out.code, 0, "{filter} {opts:?}: {out}");
            out.stdout
        };
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &[],
                "lc=denied\nblk=denied\nmknod=denied\nnull=ok\n",
                "nspawn's unit policy by default",
            ),
            (
                &["--property=DevicePolicy=closed"],
                "lc=denied\nblk=denied\nmknod=denied\nnull=ok\n",
                "closed",
            ),
            (
                &["--property=DeviceAllow=/dev/loop-control rwm"],
                "lc=open\nblk=denied\nmknod=ok\nnull=ok\n",
                "one node allowed",
            ),
            (
                &["--bind-ro=/dev/loop-control:/mnt/lc"],
                "lc=open\nblk=denied\nmknod=denied\nnull=ok\n",
                "a bound node: read, no mknod",
            ),
            (
                &[
                    "--property=DeviceAllow=block-loop r",
                    "--property=DevicePolicy=strict",
                ],
                "lc=denied\nblk=open\nmknod=denied\nnull=denied\n",
                "strict: not even /dev/null",
            ),
            (
                &anything,
                "lc=open\nblk=open\nmknod=ok\nnull=ok\n",
                "everything: what nspawn gives without its unit",
            ),
        ];
        for (opts, want, why) in cases {
            assert_eq!(probe_with(opts), *want, "{filter}: {why}");
        }
    }
}

/// The directories of every mounted hierarchy (v1 controllers, name=systemd, cgroup2).
fn hierarchies() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .map(|l| PathBuf::from(l.split_whitespace().nth(4).unwrap()))
        .collect()
}

#[test]
fn every_container_gets_its_own_cgroup_in_every_hierarchy() {
    let t = Tree::rootfs("res-own");
    let name = ns_tests::unique("resown");
    let mut cgroups = Vec::new();
    ns_tests::while_running(
        cmd(&t, &["-M", &name], "echo ready; exec sleep 100"),
        || {
            cgroups = ns_tests::container_cgroups(&name);
            for h in hierarchies() {
                let mine: Vec<_> = cgroups.iter().filter(|c| c.starts_with(&h)).collect();
                assert_eq!(mine.len(), 1, "{}: {cgroups:?}", h.display());
                // The payload is in its payload level (cgroup2 through clone3, v1 through
                // `tasks`), nothing in the level above.
                let procs = read(&mine[0].join("payload"), "cgroup.procs");
                assert!(
                    !procs.is_empty(),
                    "nothing in {}/payload",
                    mine[0].display()
                );
                assert_eq!(read(mine[0], "cgroup.procs"), "", "{}", mine[0].display());
            }
        },
    );
    assert!(!cgroups.is_empty());
    let left = ns_tests::settled(|| cgroups.iter().filter(|c| c.exists()).collect::<Vec<_>>());
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[test]
fn slice_puts_the_cgroup_under_systemds_path_and_its_last_container_removes_it() {
    let t = Tree::rootfs("res-slice");
    let h = hierarchies();
    let pids = h
        .iter()
        .find(|p| {
            p.ends_with("pids")
                || std::fs::read_to_string(p.join("cgroup.controllers"))
                    .is_ok_and(|c| c.contains("pids"))
        })
        .expect("a hierarchy with pids");
    // nstPID.slice/nstPID-a.slice: this test process's.
    let top = format!("nst{}", std::process::id());
    let sub = format!("{top}-a");
    let slice = pids.join(format!("{top}.slice/{sub}.slice"));
    assert!(
        !pids.join(format!("{top}.slice")).exists(),
        "left by an earlier run"
    );
    // Two containers in the slice: the first to leave keeps it for the second.
    let inner = cmd(
        &t,
        &["-S", &sub, "-M", "slice2", "--read-only"],
        "echo ready; exec sleep 100",
    );
    ns_tests::while_running(inner, || {
        let outer = run_cmd(
            cmd(
                &t,
                &[
                    &format!("--slice={sub}.slice"),
                    "--property=TasksMax=33",
                    "--read-only",
                    "-M",
                    "slice1",
                ],
                "cat /proc/self/cgroup",
            ),
            None,
        );
        assert_eq!(outer.code, 0, "{outer}");
        let ours = || -> Vec<String> {
            std::fs::read_dir(&slice)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ns-run-"))
                .collect()
        };
        // (slice1's cgroups go just after its exit, removed by a child of its ns-run.)
        let left = ns_tests::settled(|| {
            let mut v = ours();
            v.retain(|n| !n.starts_with("ns-run-slice2-"));
            v
        });
        assert!(left.is_empty(), "{left:?}");
        let mine = ours();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert!(mine[0].starts_with("ns-run-slice2-"), "{mine:?}");
    });
    let top_slice = pids.join(format!("{top}.slice"));
    assert!(
        ns_tests::settled(|| [&top_slice].into_iter().filter(|p| p.exists()).collect()).is_empty(),
        "the slice outlived its containers"
    );
    for bad in ["-a.slice", "a--b", "x/y", ""] {
        let mut c = cmd(&t, &["-S", bad], "true");
        c.env_remove("NS_DEBUG");
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{bad}: {out}");
        assert!(
            out.stderr.starts_with(&format!("ns-run: --slice={bad}: ")),
            "{out}"
        );
    }
}

#[test]
fn io_limits_land_on_the_whole_disk() {
    use std::os::unix::fs::MetadataExt;
    let t = Tree::rootfs("res-io");
    let dev = LoopDevice::new(&t);
    let rdev = std::fs::metadata(&dev.0).unwrap().rdev();
    let num = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let opts = [
        format!("--property=IOReadBandwidthMax={} 1M", dev.0),
        format!("--property=IOWriteIOPSMax={} 100", dev.0),
        format!("--property=IOWriteBandwidthMax={} infinity", dev.0),
        "-M".into(),
        ns_tests::unique("resio"),
    ];
    let opts: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
    ns_tests::while_running(cmd(&t, &opts, "echo ready; exec sleep 100"), || {
        let cgroups = ns_tests::container_cgroups(opts[4]);
        if Path::new("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device").exists() {
            let b = cgroup_of(&cgroups, "blkio");
            assert_eq!(
                read(&b, "blkio.throttle.read_bps_device"),
                format!("{num} 1048576")
            );
            assert_eq!(
                read(&b, "blkio.throttle.write_iops_device"),
                format!("{num} 100")
            );
            assert_eq!(read(&b, "blkio.throttle.write_bps_device"), "");
        } else {
            let d = cgroups
                .iter()
                .find(|c| c.join("io.max").exists())
                .expect("io.max");
            assert_eq!(
                read(d, "io.max"),
                format!("{num} rbps=1048576 wbps=max riops=max wiops=100")
            );
        }
    });
    // A file means its file system's disk; a path on no block device is refused.
    let mut c = cmd(&t, &["--property=IOReadIOPSMax=/proc/self 5"], "true");
    c.env_remove("NS_DEBUG");
    let out = run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr.starts_with(
            "ns-run: --property=IOReadIOPSMax=/proc/self 5: /proc/self is not on a block device"
        ),
        "{out}"
    );
}

#[test]
fn a_monitor_that_is_pid_1_of_its_namespace_removes_the_cgroups_before_it_exits() {
    // Its exit kills every other process of its PID namespace: a remover forked then would
    // die with it, leaving the cgroups (and a journal named 1) to some later ns-run.
    let t = Tree::rootfs("res-pid1");
    let name = ns_tests::unique("res-pid1");
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--kill-child"])
        .arg(ns_tests::bin("ns-run"))
        .args(["-q", "--register=no", "-M", &name, "-D", t.arg(), "true"]);
    let _collect = ns_tests::Defer::new(|| {
        // What a killed remover left: collected by the next ns-run.
        let _ = run_cmd(cmd(&t, &["--register=no"], "true"), None);
    });
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    // A remover that lived would be done in a moment; a killed one never is.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let left = ns_tests::container_cgroups(&name);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[test]
fn a_monitor_that_cannot_fork_its_remover_removes_the_cgroups_itself() {
    // The caller's cgroup at its pids.max when the container ends (a unit's TasksMax): the
    // fork fails, the cgroups are removed before the exit all the same.
    let pids = Path::new("/sys/fs/cgroup/pids");
    if !pids.join("cgroup.procs").exists() {
        eprintln!("skipped: no cgroup v1 pids hierarchy");
        return;
    }
    let cg = pids.join(ns_tests::unique("ns-tests-forkfail"));
    std::fs::create_dir(&cg).unwrap();
    let _cg = ns_tests::Defer::new({
        let cg = cg.clone();
        move || {
            let _ = std::fs::remove_dir(&cg);
        }
    });
    let t = Tree::rootfs("res-forkfail");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            cg.display()
        ))
        .arg("sh")
        .arg(ns_tests::bin("ns-run"));
    t.tag(&mut c)
        .args(["-q", "--register=no", "-D", t.arg()])
        .args(["sh", "-c", "echo ready; exec sleep 1"]);
    let r = ns_tests::spawn_until(c, "ready");
    let monitor = r.pid();
    let _journal = ForgetJournal(monitor);
    let cgroups = cgroups_of_monitor(monitor);
    assert!(!cgroups.is_empty());
    std::fs::write(cg.join("pids.max"), "1").unwrap();
    let out = r.wait();
    assert_eq!(out.code, 0, "{out}");
    let left: Vec<_> = cgroups.iter().filter(|c| c.exists()).collect();
    assert!(left.is_empty(), "cgroups left at the exit: {left:?}");
    assert!(!ns_tests::cleanup_journal(monitor).exists(), "journal left");
}
