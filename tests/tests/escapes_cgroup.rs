//! Escapes through the container's cgroups (issue 15, items 3 and 6), attempted from inside
//! as an attacker would: container root mounts a cgroup hierarchy of its own (its cgroup
//! namespace's root) and writes the device policy or a limit there, or detaches the eBPF
//! device program; then makes and opens the node of a host block device (a loop device the
//! test made, never a disk). The policy and the limits sit one level above what the
//! container can see, so every attempt fails; default mode and `-U`. And every container
//! gets nspawn's unit default `TasksMax=16384`, overridable with `--property=TasksMax=`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ns_tests::{bin, ns_run, run_cmd, LoopDevice, Tree};

/// A tree with ns-probe, and the node of a fresh loop device made in it from the host
/// (`/blk`, mode 0666, so that only the device policy can refuse opening it).
fn tree_with_node(name: &str) -> (Tree, LoopDevice, (u32, u32)) {
    let t = Tree::rootfs(name);
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    let dev = LoopDevice::new(&t);
    let rdev = std::fs::metadata(&dev.0).unwrap().rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let node = t.path().join("blk");
    let out = Command::new("mknod")
        .arg(&node)
        .args(["b", &major.to_string(), &minor.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "mknod: {out:?}");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    (t, dev, (major, minor))
}

/// The shell lines that report, after an attack, whether the block device `major:minor`
/// can be made (`mknod=`) and whether the node made by the host opens for reading and
/// writing (`open=`): `ok`, `EPERM`, or the error text.
fn device_probe((major, minor): (u32, u32)) -> String {
    format!(
        "if mknod /blk2 b {major} {minor} 2>/tmp/err; then echo mknod=ok; rm -f /blk2; \
         elif grep -q 'not permitted' /tmp/err; then echo mknod=EPERM; \
         else echo mknod=$(cat /tmp/err); fi; \
         if dd if=/blk of=/blk conv=notrunc bs=512 count=1 2>/tmp/err; then echo open=ok; \
         elif grep -q 'not permitted' /tmp/err; then echo open=EPERM; \
         else echo open=$(cat /tmp/err); fi"
    )
}

fn run_in(t: &Tree, opts: &[&str], env: &[(&str, &str)], script: &str) -> String {
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .args(opts)
        .args(["sh", "-c", script]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{opts:?} {env:?}: {out}");
    out.stdout
}

/// The options of a mode, by name.
fn mode(m: &str) -> &'static [&'static str] {
    match m {
        "default" => &[],
        _ => &["-U"],
    }
}

/// Whether the host mounts the v1 hierarchy with `controller`.
fn host_has_v1(controller: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" - cgroup "))
        .any(|(_, r)| r.split([' ', ',']).any(|o| o == controller))
}

#[test]
fn container_root_cannot_lift_the_v1_device_policy() {
    if !host_has_v1("devices") {
        eprintln!("skipped: this host has no v1 devices hierarchy");
        return;
    }
    let (t, _dev, num) = tree_with_node("esc-v1dev");
    // The attack: the devices hierarchy mounted inside shows the container's own level as
    // its root; allow everything there, then use the host's block device.
    let script = format!(
        "mkdir -p /tmp/d; mount -t cgroup -o devices none /tmp/d 2>/dev/null \
           && echo mounted=yes || echo mounted=no; \
         (echo 'a *:* rwm' > /tmp/d/devices.allow) 2>/dev/null \
           && echo allow=ok || echo allow=denied; \
         {}",
        device_probe(num)
    );
    for m in ["default", "-U"] {
        let out = run_in(&t, mode(m), &[], &script);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1..],
            ["allow=denied", "mknod=EPERM", "open=EPERM"],
            "{m}: {out}"
        );
        if m == "default" {
            // The attack's first step works (the container may mount its own hierarchy):
            // only the policy's level refuses.
            assert_eq!(lines[0], "mounted=yes", "{m}: {out}");
        }
    }
}

#[test]
fn container_root_cannot_detach_the_ebpf_device_program() {
    let (t, _dev, num) = tree_with_node("esc-bpfdev");
    // The eBPF program (what cgroup2-only hosts get), forced; the bpf() call let through by
    // `--system-call-filter=bpf` or with no filter at all (SYSTEMD_SECCOMP=0). The attack:
    // mount cgroup2, find the device programs in force at its root, detach them.
    let script = format!(
        "mkdir -p /tmp/c2; mount -t cgroup2 none /tmp/c2 2>/dev/null; \
         echo detach=$(ns-probe bpf-detach-devices /tmp/c2); {}",
        device_probe(num)
    );
    for m in ["default", "-U"] {
        for no_filter in [false, true] {
            let mut opts = mode(m).to_vec();
            let mut env = vec![("NS_RUN_DEVICE_FILTER", "ebpf")];
            if no_filter {
                env.push(("SYSTEMD_SECCOMP", "0"));
            } else {
                opts.push("--system-call-filter=bpf");
            }
            let out = run_in(&t, &opts, &env, &script);
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 3, "{m} {opts:?}: {out}");
            assert_ne!(lines[0], "detach=ok", "{m} {opts:?}: {out}");
            assert_eq!(
                lines[1..],
                ["mknod=EPERM", "open=EPERM"],
                "{m} {opts:?}: {out}"
            );
        }
    }
    // Where the program is in force at all: without the policy the same node opens (the
    // probe tells a refusal from the policy apart from any other failure).
    let out = run_in(
        &t,
        &[
            "--property=DeviceAllow=block-* rwm",
            "--system-call-filter=bpf",
        ],
        &[("NS_RUN_DEVICE_FILTER", "ebpf")],
        &device_probe(num),
    );
    assert_eq!(out, "mknod=ok\nopen=ok\n");
}

/// The hierarchy (v1 `pids`, else cgroup2 with the pids controller) that holds pids.max.
fn pids_hierarchy() -> PathBuf {
    if host_has_v1("pids") {
        return PathBuf::from("/sys/fs/cgroup/pids");
    }
    v2_hierarchy()
}

/// The cgroup2 mount point.
fn v2_hierarchy() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .map(|l| PathBuf::from(l.split_whitespace().nth(4).unwrap()))
        .expect("a cgroup2 hierarchy")
}

/// The container's level (`ns-run-MACHINE-PID`) in `hierarchy`: the one above its cgroup
/// namespace's root.
fn container_level(hierarchy: &Path, machine: &str) -> PathBuf {
    // (A run of the same name just before may still have its level: its ns-run's child
    // removes it after that run's exit.)
    let mut found: Vec<PathBuf> = Vec::new();
    let _ = ns_tests::settled(|| {
        found = ns_tests::container_cgroups(machine)
            .into_iter()
            .filter(|p| p.starts_with(hierarchy))
            .collect();
        if found.len() > 1 {
            vec![()]
        } else {
            vec![]
        }
    });
    assert_eq!(
        found.len(),
        1,
        "{machine} in {}: {found:?}",
        hierarchy.display()
    );
    found[0].clone()
}

#[test]
fn container_root_cannot_raise_its_limits() {
    // TasksMax=40, then the attack: `max` into pids.max at the root of a pids hierarchy
    // mounted inside (v1 pids where it exists, else cgroup2), and 60 sleepers forked.
    let t = Tree::rootfs("esc-pids");
    let script = "mkdir -p /tmp/p; \
                  mount -t cgroup -o pids none /tmp/p 2>/dev/null \
                    || mount -t cgroup2 none /tmp/p 2>/dev/null; \
                  (echo max > /tmp/p/pids.max) 2>/dev/null; \
                  (for i in $(seq 60); do sleep 5 & done) 2>/dev/null; \
                  n=0; for d in /proc/[0-9]*; do n=$((n+1)); done; echo $n; kill -9 -1";
    for m in ["default", "-U"] {
        let mut opts = vec!["--property=TasksMax=40"];
        opts.extend(mode(m));
        let out = run_in(&t, &opts, &[], script);
        let n: u32 = out.trim().parse().unwrap_or_else(|_| panic!("{m}: {out}"));
        assert!(
            (2..=40).contains(&n),
            "{m}: {n} processes under TasksMax=40"
        );
    }
}

/// The hierarchy that holds the memory limit (v1 `memory`, else cgroup2) and its file.
fn memory_hierarchy() -> (PathBuf, &'static str) {
    if host_has_v1("memory") {
        return (
            PathBuf::from("/sys/fs/cgroup/memory"),
            "memory.limit_in_bytes",
        );
    }
    (v2_hierarchy(), "memory.max")
}

#[test]
fn the_limits_stay_where_the_container_wrote_over_them() {
    // The same attack on the memory limit (not then used: a lifted limit would let a hog
    // eat the host's memory), read from the host: the container's level keeps its limits.
    let t = Tree::rootfs("esc-mem");
    let (mem_h, mem_file) = memory_hierarchy();
    let pids_h = pids_hierarchy();
    let script = "for c in memory pids; do mkdir -p /tmp/$c; \
                    mount -t cgroup -o $c none /tmp/$c 2>/dev/null \
                      || mount -t cgroup2 none /tmp/$c 2>/dev/null; done; \
                  for f in /tmp/memory/memory.limit_in_bytes /tmp/memory/memory.memsw.limit_in_bytes; do \
                    [ -e $f ] && (echo -1 > $f) 2>/dev/null; done; \
                  [ -e /tmp/memory/memory.max ] && (echo max > /tmp/memory/memory.max) 2>/dev/null; \
                  (echo max > /tmp/pids/pids.max) 2>/dev/null; \
                  echo ready; exec sleep 100";
    for (i, m) in ["default", "-U"].iter().enumerate() {
        let machine = ns_tests::unique(&format!("escmem{i}"));
        let mut c = ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg(), "-M", &machine])
            .args(["--property=MemoryMax=64M", "--property=TasksMax=40"])
            .args(mode(m))
            .args(["sh", "-c", script]);
        ns_tests::while_running(c, || {
            let mem = container_level(&mem_h, &machine).join(mem_file);
            let got = std::fs::read_to_string(&mem).unwrap();
            assert_eq!(got.trim(), "67108864", "{m}: {}", mem.display());
            let pids = container_level(&pids_h, &machine).join("pids.max");
            let got = std::fs::read_to_string(&pids).unwrap();
            assert_eq!(got.trim(), "40", "{m}: {}", pids.display());
        });
    }
}

/// The pids in cgroup `dir` and below it.
fn procs_below(dir: &Path) -> Vec<String> {
    let mut pids: Vec<String> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(procs_below(&e.path()));
        }
    }
    pids
}

#[test]
fn every_container_gets_tasks_max_16384_unless_told_otherwise() {
    let t = Tree::rootfs("esc-tasks");
    let h = pids_hierarchy();
    let cases: &[(&[&str], &str)] = &[
        (&[], "16384"),
        (&["-U"], "16384"),
        (&["--property=TasksMax=100"], "100"),
        (&["--property=TasksMax=infinity"], "max"),
    ];
    for (i, (opts, want)) in cases.iter().enumerate() {
        let machine = ns_tests::unique(&format!("esctasks{i}"));
        let mut all = vec!["-M", &machine, "--read-only"];
        all.extend(opts.iter());
        let mut c = ns_run();
        t.tag(&mut c).args(["-q", "-D", t.arg()]).args(&all).args([
            "sh",
            "-c",
            "echo ready; exec sleep 100",
        ]);
        ns_tests::while_running(c, || {
            let level = container_level(&h, &machine);
            let got = std::fs::read_to_string(level.join("pids.max")).unwrap();
            assert_eq!(got.trim(), *want, "{opts:?}: {}", level.display());
            // The processes are below it, in the cgroup namespace's root.
            let procs = procs_below(&level);
            assert!(
                !procs.is_empty(),
                "{opts:?}: nothing below {}",
                level.display()
            );
        });
    }
}

#[test]
fn ns_ctl_shell_joins_the_containers_level_below_its_limits() {
    // What reads the container's cgroup follows it: `ns-ctl shell` joins the payload level
    // (the shell sees itself at the root of the container's cgroup namespace in every
    // hierarchy), so the container's limits hold for it too; status lists its processes.
    let t = Tree::rootfs("esc-shell");
    let name = ns_tests::unique("escshell");
    let c = ns_tests::registered_sleeper(&t, &name, &["--read-only", "--property=TasksMax=7"]);
    ns_tests::while_running(c, || {
        let ctl = |args: &[&str]| {
            let mut c = Command::new(bin("ns-ctl"));
            c.args(args).env_remove("NS_DEBUG");
            run_cmd(c, None)
        };
        let out = ctl(&["shell", &name, "--", "/bin/cat", "/proc/self/cgroup"]);
        assert_eq!(out.code, 0, "{out}");
        for l in out.stdout.lines() {
            assert!(
                l.ends_with(":/"),
                "not at its cgroup namespace's root: {out}"
            );
        }
        let bomb = "(for i in $(seq 20); do sleep 5 & done) 2>/dev/null; \
                    n=0; for d in /proc/[0-9]*; do n=$((n+1)); done; echo $n; \
                    kill -9 $(jobs -p) 2>/dev/null; true";
        let out = ctl(&["shell", &name, "--", "/bin/sh", "-c", bomb]);
        assert_eq!(out.code, 0, "{out}");
        let n: u32 = out
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{out}"));
        assert!(
            (2..=7).contains(&n),
            "{n} processes under TasksMax=7: {out}"
        );
        let out = ctl(&["status", &name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect(&out.stdout);
        let leader = v["leader"].as_i64().unwrap();
        let procs = v["processes"].as_array().unwrap();
        assert!(procs.iter().any(|p| p == leader), "{out}");
    });
}

#[test]
fn an_oci_bundle_run_by_ns_run_gets_the_default_unless_it_sets_a_pids_limit() {
    // `ns-run --oci-bundle`: nspawn's unit keeps its TasksMax for a bundle too; the bundle's
    // linux.resources.pids.limit overrides it. (ns-oci gives none of its own, as runc.)
    let t = Tree::empty("esc-bundle");
    let config = ns_tests::spec_bundle(&t, &["sh", "-c", "echo ready; exec sleep 100"], |_| {});
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let h = pids_hierarchy();
    let name = ns_tests::unique("escbundle");
    for (limit, want) in [(None, "16384"), (Some(50), "50")] {
        let mut v = spec.clone();
        if let Some(n) = limit {
            v["linux"]["resources"]["pids"] = serde_json::json!({ "limit": n });
        }
        std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let mut c = ns_run();
        c.args(["-q", "-M", &name, "--oci-bundle", t.arg()]).args([
            "sh",
            "-c",
            "echo ready; exec sleep 100",
        ]);
        ns_tests::while_running(c, || {
            let level = container_level(&h, &name);
            let got = std::fs::read_to_string(level.join("pids.max")).unwrap();
            assert_eq!(
                got.trim(),
                want,
                "pids.limit {limit:?}: {}",
                level.display()
            );
        });
    }
}
