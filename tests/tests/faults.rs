//! Fault injection: a container with a veth, an overlay whose work directory and a bind whose
//! mount point are made on the host, its cgroups and its registry entry, killed at each step
//! of its start (`NS_FAULT=POINT`: the process at POINT kills itself, see
//! `ns_core::stage::fault`): each stage at each step, ns-net mid-way, and the monitor. Then
//! nothing may be left once the next ns-run has collected what a dead monitor journaled:
//! no mount, process, link, cgroup, registry entry, lock, journal, work directory or mount
//! point.
//!
//! The container runs in a throwaway network namespace of the test (`ip netns add`, entered
//! with nsenter --net), so its veth never touches the host's links.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ns_tests::{bin, mount_points, run_cmd, Tree};

const POINTS: &[&str] = &[
    "ns-enter:start",
    "ns-enter:before-unshare",
    "ns-enter:after-fork",
    "ns-run:cgroups",
    "ns-net:mid",
    "ns-run:registered",
    "ns-enter:pid1",
    "ns-mount:mid",
    "ns-mount:before-pivot",
    "ns-caps:before-exec",
];

fn cgroups_named(prefix: &str) -> Vec<String> {
    ns_tests::cgroup_dirs()
        .iter()
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(|d| d.display().to_string())
        .collect()
}

fn dir_entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn killed_at_every_step_leaves_nothing() {
    let t = Tree::rootfs("faults");
    let ns = ns_tests::TestNetns::new("f");
    let lower = t.host_dir("lower");
    let upper = t.host_dir("upper");
    let beside = dir_entries(upper.parent().unwrap());
    let before = mount_points();
    // Registered: a name of this test process, short enough for `ve-NAME`.
    let name = ns_tests::unique("f");
    for point in POINTS {
        let mut c = Command::new("nsenter");
        c.arg(ns.nsenter_arg()).arg(bin("ns-run"));
        t.tag(&mut c)
            .env_remove("NS_DEBUG")
            .env("NS_FAULT", point)
            .args(["-q", "-M", &name, "-n", "-D", t.arg()])
            .arg(format!(
                "--overlay={}:{}:/srv/ov",
                lower.display(),
                upper.display()
            ))
            .arg(format!("--bind={}:/new/point", lower.display()))
            .args(["--property=TasksMax=50", "true"]);
        let out = run_cmd(c, None);
        assert_ne!(out.code, 0, "{point}: it was not killed: {out}");
        let left = ns_tests::wait_no_procs_in(t.path(), Duration::from_secs(5));
        assert!(left.is_empty(), "{point}: processes left: {left:?}");
        ns_tests::assert_host_mounts_unchanged(&before);
        // The next run collects what a dead monitor journaled; the next reader of the
        // registry removes its entry.
        let mut c = ns_tests::ns_run();
        t.tag(&mut c).args(["-q", "-D", t.arg(), "true"]);
        assert_eq!(run_cmd(c, None).code, 0, "{point}");
        let list = run_cmd(Command::new(bin("ns-ctl")), None);
        assert!(!list.stdout.contains(&name), "{point}: {list}");
        assert!(
            !Path::new(&format!("/run/ns-run/machines/{name}.lock")).exists()
                && !Path::new(&format!("/run/ns-run/machines/{name}.json")).exists(),
            "{point}: registry entry left"
        );
        // Journals of dead monitors are all collected; those left belong to monitors that
        // run (other containers on a busy host).
        // (The cgroups of a run that ended go, with their journal, just after it.)
        let stale: Vec<String> = ns_tests::settled(|| {
            dir_entries(Path::new("/run/ns-run/cleanup"))
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map_or(true, |c| c.trim() != "ns-run")
                })
                .collect()
        });
        assert_eq!(stale, Vec::<String>::new(), "{point}");
        assert_eq!(
            ns_tests::settled(|| cgroups_named(&format!("ns-run-{name}-"))),
            Vec::<String>::new(),
            "{point}"
        );
        assert_eq!(
            dir_entries(upper.parent().unwrap()),
            beside,
            "{point}: work directory left"
        );
        assert!(!t.path().join("new").exists(), "{point}: mount point left");
        // The veth went with the container's network namespace.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while ns.links() != ["lo"] && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(ns.links(), ["lo"], "{point}: links left");
    }
}
