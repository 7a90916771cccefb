//! /sys/fs/cgroup where users run ns-run (issue 18, items 2 and 3): every container gets
//! nspawn's cgroup file systems (so payloads read their limits, and ns-run runs inside a
//! plain ns-run container), and ns-run makes its cgroups only where the hierarchies are
//! writable: on a read-only cgroupfs (a container's, a CI runner's) it runs, says in one
//! line that the container has no device policy of its own, and fails with one line only
//! for a `--property=` whose controller is not writable.

use std::collections::BTreeSet;
use std::process::Command;

use ns_tests::{bin, bin_dir, container_cgroups, s, spawn, unique, Output, Tree, TIMEOUT};

/// `ns-run ARGS` in a mount namespace of its own where every cgroup hierarchy of the host
/// is remounted read-only (as a container or a CI runner sees them).
fn ns_run_on_read_only_cgroupfs(t: &Tree, args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "for m in $(awk '$9 ~ /^cgroup2?$/ {{print $5}}' /proc/self/mountinfo); do \
           mount -o bind,remount,ro $m $m || exit 99; done; \
         awk '$9 ~ /^cgroup2?$/ && $6 ~ /^rw/ {{exit 1}}' /proc/self/mountinfo || exit 98; \
         exec {} --register=no {}",
        s(&bin("ns-run")),
        quoted.join(" ")
    );
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    t.tag(&mut c);
    match spawn(c, None).wait_for(TIMEOUT) {
        Ok(o) => o,
        Err(o) => panic!("ns-run hung on a read-only cgroupfs:\n{o}"),
    }
}

const NO_POLICY: &str = "ns-run: no device policy of its own for the container";

#[test]
fn on_a_read_only_cgroupfs_the_payload_runs_without_a_policy_of_its_own() {
    let t = Tree::rootfs("cgfs-ro");
    let name = unique("cgfs-ro");
    let out = ns_run_on_read_only_cgroupfs(&t, &["-M", &name, "-D", t.arg(), "/bin/echo", "RAN"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "RAN\n"), "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with(NO_POLICY), "{out}");
    assert!(
        lines[0].contains("neither a writable v1 devices controller nor cgroup2"),
        "{out}"
    );
    // -q: not a word.
    let quiet = ns_run_on_read_only_cgroupfs(&t, &["-q", "-D", t.arg(), "/bin/echo", "RAN"]);
    assert_eq!(quiet.ok(), "RAN\n");
    assert!(ns_tests::settled(|| container_cgroups(&name)).is_empty());
}

#[test]
fn on_a_read_only_cgroupfs_a_property_fails_with_one_line_naming_its_controller() {
    let t = Tree::rootfs("cgfs-prop");
    let name = unique("cgfs-prop");
    for (prop, ctl) in [("MemoryMax=64M", "memory"), ("TasksMax=20", "pids")] {
        let p = format!("--property={prop}");
        let out =
            ns_run_on_read_only_cgroupfs(&t, &["-M", &name, &p, "-D", t.arg(), "/bin/echo", "RAN"]);
        assert_eq!(out.code, 125, "{out}");
        assert_eq!(out.stdout, "", "{out}");
        let key = prop.split('=').next().unwrap();
        assert_eq!(
            out.stderr_lines(),
            [format!(
                "ns-run: --property={key}: no {ctl} controller is writable here"
            )],
            "{out}"
        );
    }
    // A device policy asked for is not skipped either.
    let out = ns_run_on_read_only_cgroupfs(
        &t,
        &[
            "-M",
            &name,
            "--property=DevicePolicy=strict",
            "-D",
            t.arg(),
            "/bin/true",
        ],
    );
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        ["ns-run: device policy: neither a writable v1 devices controller nor cgroup2 here"],
        "{out}"
    );
    assert!(ns_tests::settled(|| container_cgroups(&name)).is_empty());
}

#[test]
fn on_a_read_only_cgroupfs_boot_says_the_init_has_no_cgroup() {
    let t = ns_tests::booting_tree("cgfs-boot", "poweroff -f\n");
    let out = ns_run_on_read_only_cgroupfs(&t, &["-q", "-b", "-D", t.arg()]);
    assert_eq!(out.code, 125, "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with(
            "ns-run: -b: the guest's init needs a cgroup of its own in the name=systemd hierarchy, and /sys/fs/cgroup/systemd"
        ) && lines[0].ends_with("is not writable here"),
        "{out}"
    );
}

/// The cgroup file systems a process sees at /sys/fs/cgroup (those not hidden under
/// another mount there), each as `mountpoint per-mount-rw fstype super-options` with the
/// tmpfs's owner left out (the -U range's base, picked at random), sorted.
fn visible_cgroupfs(mountinfo: &str) -> BTreeSet<String> {
    let rows: Vec<Vec<&str>> = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() > 9)
        .collect();
    let at = |r: &Vec<&str>, p: &str| r[4] == p;
    // The top mount on /sys/fs/cgroup: no other mount on it is mounted over it.
    let tops: Vec<&Vec<&str>> = rows.iter().filter(|r| at(r, "/sys/fs/cgroup")).collect();
    let Some(top) = tops.iter().find(|r| !tops.iter().any(|o| o[1] == r[0])) else {
        return BTreeSet::new();
    };
    let mut ids = vec![top[0]];
    let mut out = BTreeSet::new();
    for r in &rows {
        if r[0] == top[0] || ids.contains(&r[1]) {
            ids.push(r[0]);
            let sep = r.iter().position(|f| *f == "-").unwrap();
            let per_mount = r[5].split(',').next().unwrap();
            let sup: Vec<&str> = r[sep + 3]
                .split(',')
                .filter(|o| !o.starts_with("uid=") && !o.starts_with("gid="))
                .collect();
            out.insert(format!(
                "{} {per_mount} {} {}",
                r[4],
                r[sep + 1],
                sup.join(",")
            ));
        }
    }
    out
}

#[test]
fn a_plain_container_sees_the_cgroupfs_as_nspawns_does() {
    let t = Tree::rootfs("cgfs-layout");
    // The host's layout, the same under -U, and pure cgroup2 as asked.
    for (userns, unified) in [(false, ""), (true, ""), (false, "1")] {
        let u: &[&str] = if userns { &["-U"] } else { &[] };
        let mut ours = ns_tests::ns_run();
        t.tag(&mut ours)
            .args(["-q", "-D", t.arg()])
            .args(u)
            .args(["/bin/cat", "/proc/self/mountinfo"]);
        let mut nspawn = Command::new("systemd-nspawn");
        nspawn
            .args(["-q", "--register=no", "--keep-unit", "-D", t.arg()])
            .args(u)
            .args(["/bin/cat", "/proc/self/mountinfo"]);
        for c in [&mut ours, &mut nspawn] {
            c.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", unified);
        }
        let ours = ns_tests::run_cmd(ours, None);
        assert_eq!(ours.code, 0, "{ours}");
        let theirs = ns_tests::run_cmd(nspawn, None);
        assert_eq!(theirs.code, 0, "{theirs}");
        // nspawn also mounts a v1 hierarchy that exists but is mounted nowhere here (one a
        // test made in a namespace of its own, say): we show the host's mounted ones only.
        let on_host = |set: BTreeSet<String>| -> BTreeSet<String> {
            let mounted = |l: &String| std::path::Path::new(l.split(' ').next().unwrap()).exists();
            set.into_iter().filter(mounted).collect()
        };
        let ours = on_host(visible_cgroupfs(&ours.stdout));
        let theirs = on_host(visible_cgroupfs(&theirs.stdout));
        assert!(!ours.is_empty(), "-U {userns}: {ours:#?}");
        assert_eq!(ours, theirs, "-U {userns}, unified {unified:?}");
    }
}

#[test]
fn ns_run_runs_inside_a_plain_ns_run_container() {
    let outer = Tree::rootfs("cgfs-outer");
    let inner = Tree::rootfs("cgfs-inner");
    let name = unique("cgfs-outer");
    let nested = |quiet: bool, inner_args: &str| {
        let mut c = ns_tests::ns_run();
        outer
            .tag(&mut c)
            .args(["-q", "-M", &name, "-D", outer.arg()])
            .arg(format!("--bind-ro={}:/opt/ns/bin", bin_dir().display()))
            .arg(format!("--bind-ro={}:/srv/bb", inner.arg()))
            .args(["/bin/sh", "-c"])
            .arg(format!(
                "/opt/ns/bin/ns-run {} -D /srv/bb {inner_args}; echo rc=$?",
                if quiet { "-q" } else { "" }
            ));
        let out = ns_tests::run_cmd(c, None);
        assert_eq!(out.code, 0, "{out}");
        out
    };
    let out = nested(
        false,
        "/bin/sh -c 'echo inner; cat /sys/fs/cgroup/pids/pids.max'",
    );
    assert_eq!(out.stdout, "inner\nmax\nrc=0\n", "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with(NO_POLICY), "{out}");
    let quiet = nested(true, "/bin/echo inner");
    assert_eq!(
        (quiet.stdout.as_str(), quiet.stderr.as_str()),
        ("inner\nrc=0\n", "")
    );
    // The outer container's v1 memory controller is read-only to it: a memory limit is
    // refused there, with its one line.
    let out = nested(true, "--property=MemoryMax=64M /bin/true");
    assert_eq!(out.stdout, "rc=125\n", "{out}");
    assert_eq!(
        out.stderr_lines(),
        ["ns-run: --property=MemoryMax: no memory controller is writable here"]
    );
    assert!(ns_tests::settled(|| container_cgroups(&name)).is_empty());
}

/// The cgroup file system types mounted under /sys/fs/cgroup in a container of `t`.
fn cgroup_mounts_in(t: &Tree) -> Vec<String> {
    let mut c = ns_tests::ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg(), "/bin/cat", "/proc/self/mountinfo"]);
    let out = ns_tests::run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    out.stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-")?;
            f[4].starts_with("/sys/fs/cgroup/")
                .then(|| format!("{} {}", f[4], f[sep + 1]))
        })
        .collect()
}

/// nspawn's choice on a hybrid host: a tree with systemd 233 or later gets hybrid (cgroup2
/// at /sys/fs/cgroup/unified), others legacy. The tree's systemd is looked up inside the
/// tree: a symlink there that leads to a host directory holding a newer libsystemd-shared
/// is resolved in the tree (found nothing), not on the host.
#[test]
fn the_layout_follows_the_trees_systemd_looked_up_inside_it() {
    let hybrid_host = std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        && std::path::Path::new("/sys/fs/cgroup/systemd").is_dir();
    if !hybrid_host || std::env::var_os("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY").is_some() {
        return; // pure cgroup2 or v1: no choice to make
    }
    let unified = "/sys/fs/cgroup/unified cgroup2".to_string();
    let t = Tree::rootfs("cgfs-sd");
    assert!(!cgroup_mounts_in(&t).contains(&unified));
    let lib = t.path().join("usr/lib/x86_64-linux-gnu/systemd");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libsystemd-shared-252.so"), "").unwrap();
    assert!(cgroup_mounts_in(&t).contains(&unified));
    // A planted symlink to a host directory with a newer systemd: not followed out.
    let decoy = Tree::empty("cgfs-sd-decoy");
    std::fs::create_dir_all(decoy.path().join("systemd")).unwrap();
    std::fs::write(decoy.path().join("systemd/libsystemd-shared-999.so"), "").unwrap();
    let t2 = Tree::rootfs("cgfs-sd2");
    let _ = std::fs::remove_dir_all(t2.path().join("lib64"));
    let _ = std::fs::remove_file(t2.path().join("lib64"));
    std::os::unix::fs::symlink(decoy.path(), t2.path().join("lib64")).unwrap();
    assert!(!cgroup_mounts_in(&t2).contains(&unified));
}
