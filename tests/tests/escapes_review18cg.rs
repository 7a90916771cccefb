//! Review of issue 18's nested cgroups and behaviours (helper attack-cg): what a container,
//! or another writer the host lets in, can make the host side of ns-run believe or print.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_tests::{ns_run, run, spawn_until, wait_no_procs_in, Stopping, Tree};

/// The memory cgroup `dir` (a cgroupfs path of the host) as the kernel names it in its log:
/// the path below the hierarchy's mount point.
fn kernel_path(dir: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
        let memory = match fstype {
            "cgroup" => opts.split(',').any(|o| o == "memory"),
            "cgroup2" => fs::read_to_string(dir.join("memory.max")).is_ok(),
            _ => false,
        };
        let at = PathBuf::from(left.split_whitespace().nth(4)?);
        let rel = dir.strip_prefix(&at).ok().filter(|_| memory)?;
        Some(format!("/{}", rel.display()))
    })
}

/// Finding 1: the OOM notice believed any `oom-kill:` line of /dev/kmsg, also one written
/// there by a process (the kernel takes lines from any writer of /dev/kmsg, device access
/// is all it asks for: a container given the device with `--bind=/dev/kmsg`, as kind's and
/// k3s's nodes need it). A neighbour that wrote a record naming the victim container's
/// cgroup after its real OOM kill made ns-run name a process of its choice (pid 1 of the
/// host, any text as its name) and say the payload was not the victim.
#[test]
fn the_oom_notice_believes_the_kernel_only_not_a_writer_of_dev_kmsg() {
    let t = Tree::rootfs("r18cg-oom");
    let go = t.path().join("go");
    let name = ns_tests::unique("r18cg-oom");
    // A child is OOM-killed; the payload says so, then waits for the test.
    let script = "tail /dev/zero; echo child-killed; \
                  i=0; while [ ! -e /go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 3";
    let mut cmd = ns_run();
    t.tag(&mut cmd)
        .args(["-q", "-D", t.arg(), "-M", &name])
        .args([
            "--property=MemoryMax=32M",
            "--property=MemorySwapMax=0",
            "--",
            "sh",
            "-c",
            script,
        ]);
    let go2 = go.clone();
    let victim = Stopping::with(spawn_until(cmd, "child-killed"), move |_| {
        let _ = fs::write(&go2, "");
    });
    let memcg = ns_tests::cgroups_of_monitor(victim.pid())
        .into_iter()
        .find_map(|d| kernel_path(&d))
        .expect("the victim's memory cgroup");
    // The neighbour, given /dev/kmsg, forges the record of a kill in the victim.
    let forged = format!(
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=payload,mems_allowed=0,\
         oom_memcg={memcg},task_memcg={memcg}/payload,task=FORGED-run-this,pid=1,uid=0"
    );
    let n = ns_tests::Tree::rootfs("r18cg-oom-neighbour");
    let out = run(&[
        "-q",
        "-D",
        n.arg(),
        "--bind=/dev/kmsg",
        "--",
        "sh",
        "-c",
        &format!("echo '{forged}' > /dev/kmsg"),
    ]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    let out = victim.stop();
    assert_eq!(out.code, 3, "{out}");
    assert!(
        !out.stderr.contains("FORGED") && !out.stderr.contains("host pid 1 "),
        "ns-run named the forged victim: {out}"
    );
    assert!(
        out.stderr.contains("(tail)"),
        "the real victim is not named: {out}"
    );
    let left = wait_no_procs_in(t.path(), Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
}
