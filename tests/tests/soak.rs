//! Soak: 1,000 containers one after the other, then 50 at once with veth networking, in a
//! throwaway network namespace of the test. Before and after, the host's mount table, the
//! namespace's links, the cgroups, the test's own open fds and ns-run's state under /run
//! must be the same: nothing accumulates.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_tests::{bin, mount_points, TestNetns, Tree};

/// Everything a run could leave: mounts, links of `netns`, cgroups, our fds, /run/ns-run.
fn host_state(netns: &TestNetns) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = mount_points()
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    for l in netns.links() {
        s.insert(format!("link {l}"));
    }
    for d in ns_tests::cgroup_dirs() {
        s.insert(format!("cgroup {}", d.display()));
    }
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        // The directory read for this listing itself differs by nature.
        if !target.starts_with("/proc") {
            s.insert(format!(
                "fd {} {}",
                e.file_name().to_string_lossy(),
                target.display()
            ));
        }
    }
    let mut todo = vec![std::path::PathBuf::from("/run/ns-run")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            s.insert(format!("run {}", e.path().display()));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    s
}

fn ns_run_in(netns: &TestNetns, t: &Tree, opts: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(netns.nsenter_arg()).arg(bin("ns-run"));
    t.tag(&mut c)
        .env_remove("NS_DEBUG")
        .args(["-q", "-D", t.arg()])
        .args(opts)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

#[test]
fn a_thousand_in_a_row_then_fifty_at_once_leave_nothing() {
    let t = Tree::rootfs("soak");
    let netns = TestNetns::new("s");
    // One run first: /run/ns-run's directories exist from then on.
    assert!(ns_run_in(&netns, &t, &["--register=no", "true"])
        .status()
        .unwrap()
        .success());
    let before = host_state(&netns);

    for i in 0..1000 {
        let st = ns_run_in(&netns, &t, &["--register=no", "true"])
            .status()
            .unwrap();
        assert!(st.success(), "run {i}: {st}");
    }
    // (The last run's cgroups go just after it exits.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut after_sequential = host_state(&netns);
    while after_sequential != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after_sequential = host_state(&netns);
    }
    assert_eq!(
        before
            .symmetric_difference(&after_sequential)
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "after 1,000 in a row"
    );

    // 50 at once, each with its veth and registered under its own name.
    let children: Vec<_> = (0..50)
        .map(|i| {
            let name = ns_tests::unique(&format!("s{i}")); // registered; `ve-NAME` fits
            ns_run_in(
                &netns,
                &t,
                &["--read-only", "-M", &name, "-n", "sh", "-c", "sleep 1"],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for mut c in children {
        let st = c.wait().unwrap();
        assert!(st.success(), "{st}");
    }
    // Veths go with their namespaces, which the kernel tears down in the background (and
    // the cgroups just after each ns-run exits).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = host_state(&netns);
    while after != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = host_state(&netns);
    }
    assert_eq!(
        before.symmetric_difference(&after).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "after 50 at once"
    );
    assert!(ns_tests::procs_in(Path::new(t.path())).is_empty());
}
