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
    // (The kernel's own record names `tail`, unless its rate limit left it out.)
    assert!(
        out.stderr
            .contains("ns-run: a process of the container (not the payload) was killed"),
        "{out}"
    );
    let left = wait_no_procs_in(t.path(), Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// The cgroup2 mount point of the host.
fn v2_mount() -> PathBuf {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .map(|l| PathBuf::from(l.split_whitespace().nth(4).unwrap()))
        .expect("a cgroup2 hierarchy")
}

/// A cgroup2 cgroup delegated to a user (nobody), as systemd delegates user@UID.service's;
/// removed on drop.
struct Delegated(PathBuf);

impl Delegated {
    fn new() -> Delegated {
        let d = v2_mount().join(ns_tests::unique("r18cg-deleg"));
        fs::create_dir(&d).unwrap();
        for f in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
        ] {
            std::os::unix::fs::chown(d.join(f), Some(65534), Some(65534)).unwrap();
        }
        Delegated(d)
    }

    /// As that user, move `pid` into it.
    fn take(&self, pid: &str) {
        let _ = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["sh", "-c"])
            .arg(format!("echo {pid} > {}/cgroup.procs", self.0.display()))
            .output()
            .unwrap();
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// A node `/blk` in `t` for the block device of a loop device (returned: detached on drop).
fn block_node(t: &Tree) -> ns_tests::LoopDevice {
    let dev = ns_tests::LoopDevice::new(t);
    let rdev = std::os::unix::fs::MetadataExt::rdev(&fs::metadata(&dev.0).unwrap());
    let (major, minor) = (libc::major(rdev).to_string(), libc::minor(rdev).to_string());
    let out = std::process::Command::new("mknod")
        .arg(t.path().join("blk"))
        .args(["b", &major, &minor])
        .output()
        .unwrap();
    assert!(out.status.success(), "mknod: {out:?}");
    dev
}

/// Finding 2: ns-run made the container's cgroup2 level (where its eBPF device policy and
/// its limits live) inside the monitor's own cgroup whoever owned it. `sudo ns-run` from a
/// desktop's terminal runs in a cgroup systemd delegated to the user (user@UID.service's
/// subtree): cgroup2 lets the owner of a common ancestor move any process between its
/// cgroups, so that user moved the container's processes out of the policy's level (and
/// could have dropped its controllers from the subtree_control above it): the container
/// (here with the eBPF policy, what pure cgroup2 hosts have) then opened a host disk.
#[test]
fn a_user_owning_the_monitors_cgroup_cannot_take_the_container_out_of_its_policy() {
    let t = Tree::rootfs("r18cg-deleg");
    let _dev = block_node(&t);
    let deleg = Delegated::new();
    let payload = "echo ready; i=0; while [ ! -e /go ] && [ $i -lt 300 ]; do sleep 0.1; \
                   i=$((i+1)); done; \
                   if dd if=/blk of=/dev/null bs=512 count=1 2>/dev/null; then echo open=ok; \
                   else echo open=refused; fi";
    // The monitor starts in the user's cgroup.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "d=$1; shift; echo $$ > \"$d\"/cgroup.procs && exec \"$@\"",
    ])
    .args(["sh", deleg.0.to_str().unwrap()])
    .arg(ns_tests::bin("ns-run"))
    .args([
        "--register=no",
        "-q",
        "-D",
        t.arg(),
        "--",
        "sh",
        "-c",
        payload,
    ])
    .env("NS_RUN_DEVICE_FILTER", "ebpf");
    t.tag(&mut cmd);
    let go = t.path().join("go");
    let r = Stopping::with(spawn_until(cmd, "ready"), move |_| {
        let _ = fs::write(&go, "");
    });
    // The user moves every process of the container into its own cgroup.
    let v2 = ns_tests::cgroups_of_monitor(r.pid())
        .into_iter()
        .find(|d| d.starts_with(v2_mount()))
        .expect("the container's cgroup2 level");
    let procs = fs::read_to_string(v2.join("payload/cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty(), "{}", v2.display());
    procs.split_whitespace().for_each(|pid| deleg.take(pid));
    let out = r.stop();
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout, "ready\nopen=refused\n",
        "the user took the container out of its device policy"
    );
    let left = wait_no_procs_in(t.path(), Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// The directory of the monitor's own cgroup in the v1 hierarchy `name=NAME` (ours: the
/// monitor is our child).
fn own_v1(name: &str) -> PathBuf {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = own
        .lines()
        .find_map(|l| {
            l.split_once(&format!(":name={name}:"))
                .map(|(_, p)| p.to_string())
        })
        .expect("a name= hierarchy");
    PathBuf::from(format!("/sys/fs/cgroup/{name}")).join(rel.trim_start_matches('/'))
}

/// Finding 3: a booted container under -U owns the cgroup its init manages (name=systemd,
/// delegated as nspawn does). There it made a chain of cgroups deeper than a path can
/// name (a `cd` into each new one), and the monitor, removing them by path, left them
/// behind, with the container's own level, on the host at every exit.
#[test]
fn a_booted_containers_deep_cgroup_tree_is_removed_at_exit() {
    let boot = "cd /sys/fs/cgroup/systemd || exit 1\n\
                i=0; while [ $i -lt 2200 ]; do mkdir a && cd a || break; i=$((i+1)); done\n\
                echo depth=$i > /dev/console\n\
                poweroff -f\n";
    let t = ns_tests::booting_tree("r18cg-deep", boot);
    let name = ns_tests::unique("r18cg-deep");
    let mut cmd = ns_run();
    t.tag(&mut cmd)
        .args(["-q", "-U", "-b", "-M", &name, "-D", t.arg()]);
    let r = ns_tests::spawn(cmd, None);
    let pid = r.pid();
    let out = r.wait();
    assert_eq!(out.code, 0, "{out}");
    // (busybox's `cd` stops where the container's own path would be too long: the host's,
    // longer by the levels above the container's, is too long by then.)
    let depth = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("depth="))
        .and_then(|d| d.trim().parse::<u32>().ok());
    assert!(depth.is_some_and(|d| d > 2000), "{out}");
    let level = own_v1("systemd").join(format!("ns-run-{name}-{pid}"));
    // (Removed by the monitor's child once we have the status.)
    let left = ns_tests::settled(|| {
        Some(level.clone())
            .filter(|l| l.exists())
            .into_iter()
            .collect()
    });
    assert!(
        left.is_empty(),
        "the container's cgroups are left: {}",
        level.display()
    );
}
