//! ns-oci driven directly, as containerd's shim drives it (create, start, state, kill,
//! delete, exec, ps, pause/resume, update), and `ns-run --oci-bundle`. The containerd and
//! CRI runs are in oci.rs and tests/cri.
//!
//! A created container outlives `ns-oci create` and is reparented to the nearest subreaper,
//! as under containerd's shim: this test process makes itself one, and reaps by pid.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_tests::{bin, cgroup_dirs, host_mounts_under, reap, s, OciBundle as Bundle, Tree};
use serde_json::{json, Value};

/// The container's cgroups on the host (v1 controllers and cgroup2), found by path.
fn cgroups_named(rel: &str) -> Vec<PathBuf> {
    cgroup_dirs()
        .into_iter()
        .filter(|d| d.to_string_lossy().ends_with(rel))
        .collect()
}

#[test]
fn create_waits_for_start_then_runs_with_stdio_passed_through() {
    let life_id = ns_tests::unique("life");
    let b = Bundle::new(
        "oci-life",
        &["sh", "-c", "echo out; echo err >&2; touch /out/ran; exit 7"],
        |_| {},
    );
    let (code, err) = b.create(&life_id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&life_id);
    assert_eq!(b.status(&life_id), "created");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!b.out.join("ran").exists(), "the process ran before start");
    assert!(
        !cgroups_named(&format!("ns-oci/{life_id}")).is_empty(),
        "no cgroup"
    );
    let (code, _, err) = b.oci(&["start", &life_id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reap(pid), 7);
    assert!(b.out.join("ran").exists());
    assert_eq!(b.stdout_of(&life_id), "out\n");
    assert!(fs::read_to_string(b.out.join(format!("{life_id}.stderr")))
        .unwrap()
        .ends_with("err\n"));
    assert_eq!(b.status(&life_id), "stopped");
    let (code, _, err) = b.oci(&["start", &life_id]);
    assert_eq!(
        (code, err.trim()),
        (
            1,
            format!("ns-oci: container {life_id} is stopped: cannot start it").as_str()
        )
    );
    let (code, _, err) = b.oci(&["delete", &life_id]);
    assert_eq!(code, 0, "{err}");
    assert!(!b.root.join(&life_id).exists());
    assert!(
        cgroups_named(&format!("ns-oci/{life_id}")).is_empty(),
        "cgroups left"
    );
}

#[test]
fn kill_exec_ps_pause_update_delete() {
    let verbs_id = ns_tests::unique("verbs");
    let b = Bundle::new("oci-verbs", &["sleep", "1000"], |_| {});
    let (code, err) = b.create(&verbs_id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&verbs_id);
    let (code, _, err) = b.oci(&["start", &verbs_id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.status(&verbs_id), "running");
    // exec, waiting: its exit code; detached: its pid in the file.
    let proc_file = b.out.join("p.json");
    fs::write(
        &proc_file,
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/out", "env": ["PATH=/bin", "X=y"],
               "args": ["sh", "-c", "echo $X $PWD; cat /proc/1/comm; exit 3"]})
        .to_string(),
    )
    .unwrap();
    let (code, out, err) = b.oci(&["exec", "--process", s(&proc_file), &verbs_id]);
    assert_eq!((code, out.as_str()), (3, "y /out\nsleep\n"), "{err}");
    // oomScoreAdj, as containerd's CRI sends it with every exec (0 included): written before
    // the process joins the container (its /proc has no /proc/self for the joining process).
    for adj in [0, 321] {
        fs::write(
            &proc_file,
            json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "oomScoreAdj": adj,
                   "args": ["cat", "/proc/self/oom_score_adj"]})
            .to_string(),
        )
        .unwrap();
        let (code, out, err) = b.oci(&["exec", "--process", s(&proc_file), &verbs_id]);
        assert_eq!((code, out.trim()), (0, adj.to_string().as_str()), "{err}");
    }
    fs::write(
        &proc_file,
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["sleep", "1000"]}).to_string(),
    )
    .unwrap();
    let epid_file = b.out.join("exec.pid");
    // Detached, it keeps its stdio: not our pipes, or we would wait for it.
    assert!(b.quiet(&[
        "exec",
        "--process",
        s(&proc_file),
        "--detach",
        "--pid-file",
        s(&epid_file),
        &verbs_id,
    ]));
    let epid: i32 = fs::read_to_string(&epid_file).unwrap().parse().unwrap();
    let (_, out, _) = b.oci(&["ps", "--format", "json", &verbs_id]);
    let mut pids: Vec<i32> = serde_json::from_str(&out).unwrap();
    pids.sort();
    assert_eq!(pids, {
        let mut v = vec![pid, epid];
        v.sort();
        v
    });
    // pause/resume: the freezer.
    assert_eq!(b.oci(&["pause", &verbs_id]).0, 0);
    assert_eq!(b.status(&verbs_id), "paused");
    assert_eq!(b.oci(&["resume", &verbs_id]).0, 0);
    assert_eq!(b.status(&verbs_id), "running");
    // update: a memory limit from stdin.
    let mut c = Command::new(bin("ns-oci"));
    c.arg("--root")
        .arg(&b.root)
        .args(["update", "--resources", "-", &verbs_id]);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory":{"limit":67108864},"pids":{"limit":50}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    // As CRI sends it (swap = limit: no swap), up and back down.
    let res = b.out.join("res.json");
    for limit in [134217728, 67108864] {
        fs::write(
            &res,
            json!({"memory": {"limit": limit, "swap": limit}}).to_string(),
        )
        .unwrap();
        let (code, _, err) = b.oci(&["update", "--resources", s(&res), &verbs_id]);
        assert_eq!(code, 0, "{limit}: {err}");
    }
    let mem = cgroups_named(&format!("ns-oci/{verbs_id}"))
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists())
        .expect("memory cgroup");
    let limit = fs::read_to_string(mem.join("memory.limit_in_bytes"))
        .or_else(|_| fs::read_to_string(mem.join("memory.max")))
        .unwrap();
    assert_eq!(limit.trim(), "67108864");
    // delete refuses a running container; kill --all kills everything; both are repeatable.
    let (code, _, err) = b.oci(&["delete", &verbs_id]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!(
            "ns-oci: container {verbs_id} is running: stop it first, or delete it with --force"
        )
        .as_str()
    );
    assert_eq!(b.oci(&["kill", "--all", &verbs_id, "KILL"]).0, 0);
    // The exec'd one first: a dying PID 1 waits until every process of its namespace is
    // reaped (the shim reaps whatever comes first).
    assert_eq!(reap(epid), 137);
    assert_eq!(reap(pid), 137);
    assert_eq!(b.oci(&["kill", "--all", &verbs_id, "9"]).0, 0);
    let (code, _, err) = b.oci(&["kill", &verbs_id, "SIGTERM"]);
    // runc's words, which containerd's shim looks for.
    assert_eq!(
        (code, err.trim()),
        (
            1,
            format!("ns-oci: cannot signal {verbs_id}: container not running").as_str()
        )
    );
    assert_eq!(b.oci(&["delete", "--force", &verbs_id]).0, 0);
    assert_eq!(b.oci(&["delete", "--force", &verbs_id]).0, 0);
    let (code, _, err) = b.oci(&["delete", &verbs_id]);
    assert_eq!(
        (code, err.trim()),
        (
            1,
            format!("ns-oci: container {verbs_id} does not exist").as_str()
        )
    );
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let bad_id = ns_tests::unique("bad");
    let bad2_id = ns_tests::unique("bad2");
    let dup_id = ns_tests::unique("dup");
    let b = Bundle::new("oci-bad", &["true"], |v| {
        // Not namespaced: refused as runc refuses it.
        v["linux"]["sysctl"] = json!({"vm.swappiness": "1"});
    });
    let log = b.out.join("log.json");
    let o = Command::new(bin("ns-oci"))
        .arg("--root")
        .arg(&b.root)
        .args([
            "--log",
            s(&log),
            "--log-format",
            "json",
            "create",
            "--bundle",
            b.dir(),
            &bad_id,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    let msg = "config.json: linux.sysctl: vm.swappiness: not in a separate kernel namespace";
    assert_eq!(err, format!("ns-oci: {msg}\n"));
    let line: Value = serde_json::from_str(fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert_eq!(line["msg"], msg);
    assert!(!b.root.join(&bad_id).exists());
    // An SELinux mount label on a host without SELinux: refused, never ignored.
    let label_id = ns_tests::unique("label");
    let bl = Bundle::new("oci-label", &["true"], |v| {
        v["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0:c1,c2");
    });
    let (code, err) = bl.create(&label_id);
    assert_eq!(
        (code, err.as_str()),
        (1, "ns-oci: config.json: linux.mountLabel: not supported\n")
    );
    assert!(!bl.root.join(&label_id).exists());
    // A bundle without config.json; an id that is not a file name; a duplicate id.
    let empty = b.tree.host_dir("empty");
    let (code, _, err) = b.oci(&["create", "--bundle", s(&empty), "x"]);
    assert_eq!(
        (code, err.trim().to_string()),
        (
            1,
            format!("ns-oci: --bundle={}: no config.json in it", empty.display())
        )
    );
    let (code, _, err) = b.oci(&["create", "--bundle", b.dir(), "a/b"]);
    assert_eq!(
        (code, err.trim()),
        (1, "ns-oci: container id=a/b: not a valid container id")
    );
    // A setup failure inside the chain (a bind source that does not exist): reported, and
    // the cgroups and the record are gone.
    let b2 = Bundle::new("oci-bad2", &["true"], |v| {
        v["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/x", "type": "bind", "source": "/nonexistent-ns-oci", "options": ["rbind"]}),
        );
    });
    let (code, err) = b2.create(&bad2_id);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent-ns-oci"), "{err}");
    assert!(!b2.root.join(&bad2_id).exists());
    assert!(
        cgroups_named(&format!("ns-oci/{bad2_id}")).is_empty(),
        "cgroups left"
    );
    let b3 = Bundle::new("oci-dup", &["sleep", "100"], |_| {});
    let (code, err) = b3.create(&dup_id);
    assert_eq!(code, 0, "{err}");
    let (code, err) = b3.create(&dup_id);
    assert_eq!(
        (code, err.trim()),
        (
            1,
            format!("ns-oci: container {dup_id} already exists").as_str()
        )
    );
    let pid = b3.pid(&dup_id);
    // Deleting a created container kills it (runc's rule).
    assert_eq!(b3.oci(&["delete", &dup_id]).0, 0);
    assert_eq!(reap(pid), 137);
}

#[test]
fn config_json_is_honoured() {
    let cfg_id = ns_tests::unique("cfg");
    let hook_out = Tree::empty("oci-hook-out");
    let hook_file = hook_out.path().join("prestart.json");
    let b = Bundle::new(
        "oci-config",
        &["sh", "-c", "id; echo $FOO; hostname; cat /proc/self/status | grep -E '^(CapInh|CapPrm|CapEff|CapBnd|NoNewPrivs)'; \
           (cat /secret 2>/dev/null | grep -q s3cret) || echo masked; touch /proc/sys/kernel/domainname 2>/dev/null || echo sys-ro; \
           cat /proc/self/oom_score_adj; mkdir /tmp/d 2>/dev/null || echo mkdir-denied; \
           (ulimit -n 100 2>&1) | grep -q 'Permission denied' && echo setting-nofile-eacces; \
           (ulimit -s 100 2>&1) && echo setting-stack-ok; \
           echo > /dev/null && echo null-ok; head -c1 /dev/zero >/dev/null 2>&1 || echo zero-denied; ulimit -n"],
        |v| {
            v["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
            v["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
            v["process"]["noNewPrivileges"] = json!(true);
            v["process"]["capabilities"] = json!({
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                "inheritable": [], "ambient": []});
            v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
            v["hostname"] = json!("ocibox");
            v["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
            v["linux"]["maskedPaths"].as_array_mut().unwrap().push(json!("/secret"));
            v["process"]["oomScoreAdj"] = json!(500);
            v["linux"]["resources"] = json!({"pids": {"limit": 64},
                "cpu": {"quota": 12345, "period": 100000},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 0}], "devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]});
            v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["prlimit64"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [
                    {"index": 1, "value": 7, "op": "SCMP_CMP_EQ"},
                    {"index": 2, "value": 0, "op": "SCMP_CMP_NE"}]}]});
            v["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", hook_file.display())]}]});
        },
    );
    fs::write(b.tree.path().join("rootfs/secret"), "s3cret").unwrap();
    let (code, err) = b.create(&cfg_id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&cfg_id);
    let hook: Value = serde_json::from_str(&fs::read_to_string(&hook_file).unwrap()).unwrap();
    assert_eq!(
        (hook["id"].as_str(), hook["pid"].as_i64()),
        (Some(cfg_id.as_str()), Some(pid as i64))
    );
    let pids_max = cgroups_named(&format!("ns-oci/{cfg_id}"))
        .into_iter()
        .find_map(|d| fs::read_to_string(d.join("pids.max")).ok())
        .unwrap();
    assert_eq!(pids_max.trim(), "64");
    let quota = cgroups_named(&format!("ns-oci/{cfg_id}"))
        .into_iter()
        .find_map(|d| {
            fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .or_else(|_| fs::read_to_string(d.join("cpu.max")))
                .ok()
        })
        .expect("a cpu quota");
    assert!(quota.starts_with("12345"), "{quota}");
    let huge = cgroups_named(&format!("ns-oci/{cfg_id}"))
        .into_iter()
        .find_map(|d| {
            fs::read_to_string(d.join("hugetlb.2MB.max"))
                .or_else(|_| fs::read_to_string(d.join("hugetlb.2MB.limit_in_bytes")))
                .ok()
        })
        .expect("a hugetlb limit");
    assert_eq!(huge.trim(), "0");
    let (code, _, err) = b.oci(&["start", &cfg_id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reap(pid), 0);
    let out = b.stdout_of(&cfg_id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "uid=1000 gid=1000 groups=5");
    assert_eq!(lines[1..3], ["bar", "ocibox"]);
    // A user other than root keeps no capability across exec without ambient ones (as with
    // runc); the bounding set is AUDIT_WRITE, KILL, NET_BIND_SERVICE.
    assert_eq!(
        lines[3..8],
        [
            "CapInh:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000020000420",
            "NoNewPrivs:\t1"
        ],
        "{out}"
    );
    assert!(lines.contains(&"masked"), "{out}");
    assert!(lines.contains(&"sys-ro"), "{out}");
    for want in [
        "500",
        "mkdir-denied",
        "setting-nofile-eacces",
        "setting-stack-ok",
        "null-ok",
    ] {
        assert!(lines.contains(&want), "{want}: {out}");
    }
    // runc's default devices follow the config's deny-all.
    assert!(!lines.contains(&"zero-denied"), "{out}");
    assert_eq!(lines.last(), Some(&"256"));
    assert_eq!(b.oci(&["delete", &cfg_id]).0, 0);
}

#[test]
fn a_container_joins_namespaces_given_by_path() {
    let pod_id = ns_tests::unique("pod");
    let member_id = ns_tests::unique("member");
    let pod = Bundle::new("oci-pod", &["sleep", "1000"], |_| {});
    let (code, err) = pod.create(&pod_id);
    assert_eq!(code, 0, "{err}");
    let ppid = pod.pid(&pod_id);
    let (code, _, err) = pod.oci(&["start", &pod_id]);
    assert_eq!(code, 0, "{err}");
    let ns = |pid: i32, kind: &str| fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let member = Bundle::new("oci-member", &["sleep", "1000"], |v| {
        v["linux"]["namespaces"] = json!([
            {"type": "pid"}, {"type": "mount"},
            {"type": "network", "path": format!("/proc/{ppid}/ns/net")},
            {"type": "ipc", "path": format!("/proc/{ppid}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{ppid}/ns/uts")},
        ]);
        v["hostname"] = Value::Null;
    });
    let (code, err) = member.create(&member_id);
    assert_eq!(code, 0, "{err}");
    let mpid = member.pid(&member_id);
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns(mpid, kind), ns(ppid, kind), "{kind}");
    }
    for kind in ["pid", "mnt"] {
        assert_ne!(ns(mpid, kind), ns(ppid, kind), "{kind}");
    }
    for (b, id, pid) in [
        (&member, member_id.as_str(), mpid),
        (&pod, pod_id.as_str(), ppid),
    ] {
        assert_eq!(b.oci(&["delete", "--force", id]).0, 0);
        assert_eq!(reap(pid), 137);
    }
}

#[test]
fn ns_run_runs_a_stock_bundle_in_the_foreground() {
    // nspawn 252 fails on this one (reference §4): maskedPaths, readonlyPaths, resources and
    // the cgroup mount of a stock spec.
    let b = Bundle::new(
        "oci-nsrun",
        &["sh", "-c", "echo $FOO; hostname; exit 5"],
        |v| {
            v["process"]["env"] = json!(["PATH=/bin", "FOO=from-bundle"]);
            v["hostname"] = json!("bundled");
        },
    );
    let o = Command::new(bin("ns-run"))
        .args(["--register=no", "--oci-bundle", b.dir()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from-bundle\nbundled\n");
    // The command line wins: its command and options replace the bundle's.
    let o = Command::new(bin("ns-run"))
        .args([
            "--register=no",
            "--oci-bundle",
            b.dir(),
            "--hostname=cli",
            "hostname",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "cli\n", "{o:?}");
    let o = Command::new(bin("ns-run"))
        .args(["--register=no", "--oci-bundle", b.dir(), "-D", "/"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "ns-run: --oci-bundle= may not be combined with --directory= or --image=\n"
    );
}

#[test]
fn features_and_spec() {
    let t = Tree::empty("oci-spec");
    let o = Command::new(bin("ns-oci"))
        .arg("features")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("pid")));
    let spec = |dir: &Path| {
        Command::new(bin("ns-oci"))
            .args(["spec", "--bundle", s(dir)])
            .output()
            .unwrap()
    };
    assert!(spec(t.path()).status.success());
    let v: Value =
        serde_json::from_slice(&fs::read(t.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    let o = spec(t.path());
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!(
            "ns-oci: {} exists already",
            t.path().join("config.json").display()
        )
    );
}

#[test]
fn run_is_create_start_wait_delete() {
    let fg_id = ns_tests::unique("fg");
    let caps_id = ns_tests::unique("caps");
    let b = Bundle::new("oci-run", &["sh", "-c", "echo ran; exit 9"], |_| {});
    let (code, out, err) = b.oci(&["run", "--bundle", b.dir(), &fg_id]);
    assert_eq!((code, out.as_str()), (9, "ran\n"), "{err}");
    // Root gets each capability set as given (what runc 1.1 gives for this config too).
    let b = Bundle::new(
        "oci-run-caps",
        &["grep", "^Cap", "/proc/self/status"],
        |v| {
            v["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
            "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
            "inheritable": [], "ambient": []});
        },
    );
    let (code, out, err) = b.oci(&["run", "--bundle", b.dir(), &caps_id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000020\nCapEff:\t0000000000000020\n\
         CapBnd:\t0000000020000420\nCapAmb:\t0000000000000000\n"
    );
    assert!(!b.root.join(&fg_id).exists());
    assert!(
        cgroups_named(&format!("ns-oci/{fg_id}")).is_empty(),
        "cgroups left"
    );
}

/// A console socket: a thread accepts one connection and returns the fd that comes with it.
fn console_socket(path: &Path) -> std::thread::JoinHandle<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut cbuf = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr pointing at our buffers; recvmsg fills them.
        let fd = unsafe {
            let mut m: libc::msghdr = std::mem::zeroed();
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            m.msg_control = cbuf.as_mut_ptr().cast();
            m.msg_controllen = cbuf.len() as _;
            assert!(libc::recvmsg(c.as_raw_fd(), &mut m, 0) > 0);
            let cm = libc::CMSG_FIRSTHDR(&m);
            assert!(!cm.is_null() && (*cm).cmsg_type == libc::SCM_RIGHTS);
            std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const i32)
        };
        // SAFETY: the fd just received is ours.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    })
}

/// Read a pty master until `needle` shows (bounded).
fn read_until(master: &std::os::fd::OwnedFd, needle: &str) -> String {
    use std::io::Read;
    let mut f = fs::File::from(master.try_clone().unwrap());
    let mut out = String::new();
    let mut buf = [0u8; 1024];
    let t = std::time::Instant::now();
    while !out.contains(needle) && t.elapsed() < Duration::from_secs(10) {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    out
}

#[test]
fn terminal_mode_sends_the_pty_to_the_console_socket() {
    let tty_id = ns_tests::unique("tty");
    let b = Bundle::new("oci-tty", &["sh", "-c", "tty; read x; echo got-$x"], |v| {
        v["process"]["terminal"] = json!(true);
    });
    let sock = b.out.join("console.sock");
    let listener = console_socket(&sock);
    let pid_file = b.out.join(format!("{tty_id}.pid"));
    assert!(b.quiet(&[
        "create",
        "--bundle",
        b.dir(),
        "--pid-file",
        s(&pid_file),
        "--console-socket",
        s(&sock),
        &tty_id,
    ]));
    let master = listener.join().unwrap();
    let pid = b.pid(&tty_id);
    let (code, _, err) = b.oci(&["start", &tty_id]);
    assert_eq!(code, 0, "{err}");
    assert!(read_until(&master, "/dev/console").contains("/dev/console"));
    // exec with its own pty of the container's devpts.
    let sock2 = b.out.join("exec.sock");
    let listener = console_socket(&sock2);
    let p = b.out.join("p.json");
    fs::write(
        &p,
        json!({"terminal": true, "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["tty"]})
            .to_string(),
    )
    .unwrap();
    let (code, _, err) = b.oci(&[
        "exec",
        "--process",
        s(&p),
        "--console-socket",
        s(&sock2),
        &tty_id,
    ]);
    assert_eq!(code, 0, "{err}");
    let exec_master = listener.join().unwrap();
    assert!(read_until(&exec_master, "/dev/pts/").contains("/dev/pts/"));
    // Keystrokes reach the container's process through its console.
    fs::File::from(master.try_clone().unwrap())
        .write_all(b"abc\n")
        .unwrap();
    assert!(read_until(&master, "got-abc").contains("got-abc"));
    assert_eq!(reap(pid), 0);
    assert_eq!(b.oci(&["delete", &tty_id]).0, 0);
}

#[test]
fn a_created_container_holds_nothing_of_the_host() {
    let fds_id = ns_tests::unique("fds");
    let b = Bundle::new("oci-fds", &["true"], |_| {});
    let (code, err) = b.create(&fds_id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&fds_id);
    // While it waits for start: stdio and the start fifo only (no stage binary, state or
    // socket that a process of the container could reopen through /proc/1/fd).
    let mut fds: Vec<(String, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = fs::read_link(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into(),
                target.to_string_lossy().into(),
            )
        })
        .collect();
    fds.sort();
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 4, "{fds:?}");
    assert!(
        fds[3].1.ends_with(&format!("/{fds_id}/exec.fifo")),
        "{fds:?}"
    );
    assert_eq!(b.oci(&["delete", &fds_id]).0, 0);
    assert_eq!(reap(pid), 137);
}

#[test]
fn missing_program_fails_create_and_no_pid_namespace_works() {
    let noexec_id = ns_tests::unique("noexec");
    let hostpid_id = ns_tests::unique("hostpid");
    let b = Bundle::new("oci-noexec", &["/nonexistent-program"], |_| {});
    let (code, err) = b.create(&noexec_id);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent-program"), "{err}");
    assert!(!b.root.join(&noexec_id).exists());
    assert!(
        cgroups_named(&format!("ns-oci/{noexec_id}")).is_empty(),
        "cgroups left"
    );
    // Without a PID namespace of its own (hostPID), the container is ns-enter's process.
    let b = Bundle::new("oci-hostpid", &["sh", "-c", "echo $$ > /out/pid"], |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let (code, err) = b.create(&hostpid_id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&hostpid_id);
    let (code, _, err) = b.oci(&["start", &hostpid_id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reap(pid), 0);
    assert_eq!(
        fs::read_to_string(b.out.join("pid")).unwrap().trim(),
        pid.to_string()
    );
    assert_eq!(b.oci(&["delete", &hostpid_id]).0, 0);
}

#[test]
fn delete_force_cleans_up_after_a_killed_create() {
    let killed_id = ns_tests::unique("killed");
    let b = Bundle::new("oci-killed", &["true"], |v| {
        v["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 1"]}]});
    });
    let mut create = Command::new(bin("ns-oci"))
        .arg("--root")
        .arg(&b.root)
        .args(["create", "--bundle", b.dir(), &killed_id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(b.out.join("killed.stderr")).unwrap())
        .spawn()
        .unwrap();
    // Killed while its prestart hook runs: the record is there, with its cgroups.
    let t = std::time::Instant::now();
    while b.status_if_any(&killed_id).is_none()
        || cgroups_named(&format!("ns-oci/{killed_id}")).is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "create did not get going: {:?}",
            fs::read_to_string(b.out.join("killed.stderr"))
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    create.kill().unwrap();
    create.wait().unwrap();
    let (code, _, err) = b.oci(&["delete", "--force", &killed_id]);
    assert_eq!(code, 0, "{err}");
    assert!(!b.root.join(&killed_id).exists());
    assert!(
        cgroups_named(&format!("ns-oci/{killed_id}")).is_empty(),
        "cgroups left"
    );
}

// ---------------------------------------------------------------------------------------
// procs (issue 17): the filter as the last step before exec, namespaces not listed are
// inherited, id maps as given.

/// A profile that denies everything a static busybox `grep`/`sleep` does not need: no
/// close_range, fcntl, prctl, capget/capset, set*id, setsid, chdir, clone or socket call,
/// so whatever the runtime still did after installing it would fail; plus `extra`.
fn strict_seccomp(extra: &[&str]) -> Value {
    let mut names = vec![
        "execve",
        "arch_prctl",
        "brk",
        "mmap",
        "munmap",
        "mprotect",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "getrandom",
        "getuid",
        "readlink",
        "openat",
        "read",
        "write",
        "close",
        "newfstatat",
        "fstat",
        "clock_nanosleep",
        "exit_group",
        "exit",
    ];
    names.extend(extra);
    json!({"defaultAction": "SCMP_ACT_ERRNO",
           "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": names}]})
}

#[test]
fn the_filter_is_the_last_step_before_exec() {
    for nnp in [false, true] {
        let id = ns_tests::unique(if nnp { "scnnp" } else { "sc" });
        let b = Bundle::new("oci-seccomp-last", &["sleep", "1000"], |v| {
            v["process"]["noNewPrivileges"] = json!(nnp);
            v["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            v["process"]["capabilities"] = json!({"bounding": ["CAP_KILL"],
                "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]});
            // `exec`'s process is forked by ns-caps under the filter (the container sees
            // it), which then reports its pid and, without no_new_privs, gives back
            // CAP_SYS_ADMIN: what the second round allows beyond the strict profile.
            v["linux"]["seccomp"] = if nnp {
                strict_seccomp(&["clone", "sendto", "capget", "capset"])
            } else {
                strict_seccomp(&[])
            };
        });
        let (code, err) = b.create(&id);
        assert_eq!(code, 0, "nnp {nnp}: {err}");
        let pid = b.pid(&id);
        assert_eq!(b.status(&id), "created");
        let (code, _, err) = b.oci(&["start", &id]);
        assert_eq!(code, 0, "{err}");
        // (start returns once the fifo is read; the exec follows.)
        let t = std::time::Instant::now();
        let status = loop {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            if status.starts_with("Name:\tsleep") || t.elapsed() > Duration::from_secs(10) {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.contains("Seccomp:\t2\n"), "nnp {nnp}: {status}");
        // What installing the filter took (CAP_SYS_ADMIN without no_new_privs) is gone.
        for set in ["CapPrm", "CapEff"] {
            assert!(
                status.contains(&format!("{set}:\t0000000000000000\n")),
                "nnp {nnp}: {status}"
            );
        }
        if nnp {
            // A process exec'd into it (without no_new_privs) runs under the same filter.
            let proc_file = b.out.join("grep.json");
            fs::write(
                &proc_file,
                json!({"user": {"uid": 1000, "gid": 1000}, "cwd": "/",
                       "args": ["grep", "-E", "^(Seccomp|CapPrm):", "/proc/self/status"]})
                .to_string(),
            )
            .unwrap();
            let (code, out, err) = b.oci(&["exec", "--process", s(&proc_file), &id]);
            assert_eq!(
                (code, out.as_str()),
                (0, "CapPrm:\t0000000000000000\nSeccomp:\t2\n"),
                "{err}"
            );
        }
        assert_eq!(b.oci(&["delete", "--force", &id]).0, 0);
        assert_eq!(reap(pid), 137);
    }
}

/// A bundle with a user namespace of `uid` and `gid` maps (containerID, hostID, size).
fn userns_bundle(name: &str, uid: &[(u32, u32, u32)], gid: &[(u32, u32, u32)]) -> Bundle {
    let map = |m: &[(u32, u32, u32)]| -> Value {
        m.iter()
            .map(|(c, h, n)| json!({"containerID": c, "hostID": h, "size": n}))
            .collect()
    };
    let b = Bundle::new(name, &["sleep", "1000"], |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        v["linux"]["uidMappings"] = map(uid);
        v["linux"]["gidMappings"] = map(gid);
    });
    // (Container root may not create it in a tree host root owns.)
    fs::create_dir_all(b.tree.path().join("rootfs/out")).unwrap();
    b
}

#[test]
fn id_maps_of_several_ranges_differing_for_uids_and_gids() {
    let id = ns_tests::unique("maps");
    let uid = [(0, 210000, 1000), (1000, 320000, 10), (5000, 330000, 1)];
    let gid = [(0, 440000, 500), (500, 450000, 600)];
    let b = userns_bundle("oci-maps", &uid, &gid);
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    let lines = |f: &str| -> Vec<Vec<u32>> {
        fs::read_to_string(format!("/proc/{pid}/{f}"))
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
            .collect()
    };
    let want = |m: &[(u32, u32, u32)]| -> Vec<Vec<u32>> {
        m.iter().map(|(c, h, n)| vec![*c, *h, *n]).collect()
    };
    assert_eq!(lines("uid_map"), want(&uid));
    assert_eq!(lines("gid_map"), want(&gid));
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    assert_eq!(reap(pid), 137);
    // Maps the kernel would refuse, or that leave container root unmapped: one line each,
    // nothing left behind.
    let bad_id = ns_tests::unique("badmaps");
    for (uid, gid, why) in [
        (
            vec![(0, 210000, 1000), (500, 320000, 10)],
            vec![(0, 440000, 500)],
            "linux.uidMappings: container ids 500-509 are mapped twice",
        ),
        (
            vec![(0, 210000, 1000), (1000, 210500, 10)],
            vec![(0, 440000, 500)],
            "linux.uidMappings: host ids 210500-210509 are mapped twice",
        ),
        (
            vec![(0, 210000, 1000)],
            vec![(1, 440000, 500)],
            "linux.gidMappings: container id 0 is not mapped",
        ),
        (
            vec![(0, 210000, 0)],
            vec![(0, 440000, 500)],
            "linux.uidMappings[0]: size 0",
        ),
    ] {
        let b = userns_bundle("oci-badmaps", &uid, &gid);
        let (code, err) = b.create(&bad_id);
        assert_eq!(
            (code, err.as_str()),
            (1, format!("ns-oci: config.json: {why}\n").as_str())
        );
        assert!(!b.root.join(&bad_id).exists());
        assert!(cgroups_named(&format!("ns-oci/{bad_id}")).is_empty());
    }
}

#[test]
fn a_mount_namespace_given_by_path_is_joined() {
    let id = ns_tests::unique("joinmnt");
    /// The namespace's holder, killed however the test ends.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let hpid = holder.0.id();
    let ns = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    let t = std::time::Instant::now();
    while ns(hpid) == ns(std::process::id()) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "unshare did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _no_host_mounts = host_mounts_lock(); // (their mounts are ours too)
    let mounts_before = ns_tests::our_mounts();
    let b = Bundle::new("oci-joinmnt", &["sleep", "1000"], |v| {
        let list = v["linux"]["namespaces"].as_array_mut().unwrap();
        list.retain(|n| n["type"] != "mount");
        list.push(json!({"type": "mount", "path": format!("/proc/{hpid}/ns/mnt")}));
    });
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    assert_eq!(ns(pid as u32), ns(hpid));
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    assert_eq!(reap(pid), 137);
    ns_tests::assert_mounts_unchanged(&mounts_before);
    drop(holder);
    // The runtime's own mount namespace is the host's: ns-mount would build the root there.
    let own_id = ns_tests::unique("ownmnt");
    let b = Bundle::new("oci-ownmnt", &["true"], |v| {
        let list = v["linux"]["namespaces"].as_array_mut().unwrap();
        list.retain(|n| n["type"] != "mount");
        list.push(json!({"type": "mount", "path": "/proc/self/ns/mnt"}));
    });
    let (code, err) = b.create(&own_id);
    assert_eq!(
        (code, err.lines().last()),
        (
            1,
            Some("ns-oci: ns-enter: cannot join mount namespace /proc/self/ns/mnt: it is the runtime's own (the host's mounts would be the container's)")
        )
    );
    assert!(!b.root.join(&own_id).exists());
    ns_tests::assert_mounts_unchanged(&mounts_before);
}

#[test]
fn namespaces_not_listed_are_inherited() {
    let id = ns_tests::unique("inherit");
    let b = Bundle::new("oci-inherit", &["sleep", "1000"], |v| {
        v["linux"]["namespaces"] = json!([{"type": "mount"}]);
        v["hostname"] = Value::Null;
    });
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    let ns = |pid: u32, kind: &str| fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let me = std::process::id();
    for kind in ["pid", "net", "ipc", "uts", "cgroup", "user"] {
        assert_eq!(ns(pid as u32, kind), ns(me, kind), "{kind}");
    }
    assert_ne!(ns(pid as u32, "mnt"), ns(me, "mnt"));
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    assert_eq!(reap(pid), 137);
}

// ---------------------------------------------------------------------------------------
// Resources, the device cgroup and the hooks in the container (issue 17, "cgroups")

/// A deny-all config, root with CAP_MKNOD: what the container may open.
const DEVICES_SCRIPT: &str = "echo x > /dev/null && echo null-ok; \
    head -c1 /dev/zero | wc -c; exec 3<>/dev/ptmx && echo ptmx-ok; exec 3<&-; \
    mknod /dev/mem2 c 1 1 && echo mknod-ok; (: < /dev/mem2) 2>/dev/null || echo mem-denied";

fn devices_bundle(name: &str) -> Bundle {
    Bundle::new(name, &["sh", "-c", DEVICES_SCRIPT], |v| {
        let mknod = json!(["CAP_MKNOD"]);
        v["process"]["capabilities"] = json!({"bounding": mknod, "effective": mknod,
            "permitted": mknod});
        v["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]});
    })
}

#[test]
fn deny_all_devices_get_runc_defaults_after_the_rules() {
    let want = ["null-ok", "1", "ptmx-ok", "mknod-ok", "mem-denied"];
    // The v1 devices controller: the config's rules, then runc's, in order.
    let id = ns_tests::unique("devdef");
    let b = devices_bundle("oci-devdef");
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let list = cgroups_named(&format!("ns-oci/{id}"))
        .into_iter()
        .find_map(|d| fs::read_to_string(d.join("devices.list")).ok())
        .expect("a v1 devices cgroup");
    let mut expected = vec!["c 10:229 rwm"];
    expected.extend([
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:8 rwm",
        "c 1:7 rwm",
        "c 5:0 rwm",
        "c 1:5 rwm",
        "c 1:9 rwm",
        "c 136:* rwm",
        "c 5:2 rwm",
        "c 10:200 rwm",
    ]);
    assert_eq!(list.lines().collect::<Vec<_>>(), expected);
    let (code, _, err) = b.oci(&["start", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reap(b.pid(&id)), 0);
    assert_eq!(b.stdout_of(&id).lines().collect::<Vec<_>>(), want);
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    // The eBPF program allows the same.
    let id = ns_tests::unique("devbpf");
    let b = devices_bundle("oci-devbpf");
    let o = b
        .cmd(&["run", "--bundle", b.dir(), &id])
        .env("NS_RUN_DEVICE_FILTER", "ebpf")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}

/// A whole disk of this host (`MAJ:MIN`): one with a device behind it, else a loop device.
fn a_disk() -> (i64, i64) {
    let mut disks: Vec<_> = fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    disks.sort_by_key(|d| !d.join("device").exists());
    let dev = fs::read_to_string(disks[0].join("dev")).unwrap();
    let (maj, min) = dev.trim().split_once(':').unwrap();
    (maj.parse().unwrap(), min.parse().unwrap())
}

/// The first of `files` found in the container's cgroups.
fn cgroup_file(id: &str, files: &[&str]) -> String {
    cgroups_named(&format!("ns-oci/{id}"))
        .into_iter()
        .find_map(|d| {
            files
                .iter()
                .find_map(|f| fs::read_to_string(d.join(f)).ok())
        })
        .unwrap_or_else(|| panic!("none of {files:?}"))
}

#[test]
fn memory_reservation_and_blkio_throttles_are_written() {
    let id = ns_tests::unique("blkio");
    let (major, minor) = a_disk();
    let b = Bundle::new("oci-blkio", &["true"], |v| {
        v["linux"]["resources"] = json!({
            "memory": {"limit": 67108864, "reservation": 33554432, "kernelTCP": 16777216,
                "swappiness": 10, "disableOOMKiller": true},
            "blockIO": {
                "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}});
    });
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let low = cgroup_file(&id, &["memory.low", "memory.soft_limit_in_bytes"]);
    assert_eq!(low.trim(), "33554432");
    // What only v1 has (this host's memory controller is v1).
    let v1 = |f: &str| cgroup_file(&id, &[f]);
    assert_eq!(v1("memory.kmem.tcp.limit_in_bytes").trim(), "16777216");
    assert_eq!(v1("memory.swappiness").trim(), "10");
    assert!(v1("memory.oom_control").contains("oom_kill_disable 1"));
    let dev = format!("{major}:{minor}");
    let rbps = cgroup_file(&id, &["io.max", "blkio.throttle.read_bps_device"]);
    assert!(
        rbps.lines().any(|l| l == format!("{dev} 1048576") || l.starts_with(&format!("{dev} rbps=1048576"))),
        "{rbps}"
    );
    let wiops = cgroup_file(&id, &["io.max", "blkio.throttle.write_iops_device"]);
    assert!(
        wiops
            .lines()
            .any(|l| l == format!("{dev} 100") || l.contains("wiops=100")),
        "{wiops}"
    );
    assert_eq!(b.oci(&["delete", "--force", &id]).0, 0);
    // A weight: written where the host's scheduler has weights, else one line naming it.
    let id = ns_tests::unique("blkiow");
    let b = Bundle::new("oci-blkiow", &["true"], |v| {
        v["linux"]["resources"] = json!({"blockIO": {"weight": 300}});
    });
    let weights = Path::new("/sys/fs/cgroup/blkio/blkio.weight").exists()
        || Path::new("/sys/fs/cgroup/io.weight").exists();
    let (code, err) = b.create(&id);
    if weights {
        assert_eq!(code, 0, "{err}");
        let w = cgroup_file(&id, &["blkio.weight", "io.weight"]);
        assert!(w.trim() == "300" || w.contains("default 2021"), "{w}");
        assert_eq!(b.oci(&["delete", "--force", &id]).0, 0);
    } else {
        assert_eq!(code, 1, "{err}"); // ns-oci fails as runc does
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("blkio.weight") || err.contains("io.weight"),
            "{err}"
        );
        assert!(cgroups_named(&format!("ns-oci/{id}")).is_empty());
        assert!(!b.root.join(&id).exists());
    }
}

#[test]
fn network_class_and_priorities_go_to_net_cls_and_net_prio() {
    let network = json!({"classID": 1048577, "priorities": [{"name": "lo", "priority": 7}]});
    // This host mounts neither controller: one line, nothing left.
    let id = ns_tests::unique("netcg");
    let b = Bundle::new("oci-netcg", &["true"], |v| {
        v["linux"]["resources"] = json!({ "network": network });
    });
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.contains("net_cls"));
    if !mounted {
        let (code, err) = b.create(&id);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("no net_cls controller"), "{err}");
        assert!(cgroups_named(&format!("ns-oci/{id}")).is_empty());
        assert!(!b.root.join(&id).exists());
    }
    // Where they are mounted (here in a mount namespace of our own), written: a prestart
    // hook reads them from the container's cgroup.
    let id = ns_tests::unique("netcg2");
    let mnt = Tree::empty("oci-netcg-mnt");
    let cg = mnt.path().join("cg");
    let seen = mnt.path().join("net.txt");
    let hook = format!(
        "p=$(find {cg} -type d -name {id}); cat $p/net_cls.classid $p/net_prio.ifpriomap > {}",
        seen.display(),
        cg = cg.display()
    );
    let b = Bundle::new("oci-netcg2", &["true"], |v| {
        v["linux"]["resources"] = json!({ "network": network });
        v["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", hook],
            "env": ["PATH=/usr/bin:/bin"]}]});
    });
    let script = format!(
        "mkdir -p {cg}; mount -t cgroup -o net_cls,net_prio ns-tests {cg}; \
         {oci} --root {root} run --bundle {dir} {id}; rc=$?; umount {cg}; exit $rc",
        cg = cg.display(),
        oci = bin("ns-oci").display(),
        root = b.root.display(),
        dir = b.dir(),
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let seen = fs::read_to_string(&seen).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "1048577", "{seen}");
    assert!(lines[1..].contains(&"lo 7"), "{seen}");
}

#[test]
fn create_container_and_start_container_hooks_run_in_the_container() {
    let id = ns_tests::unique("inhooks");
    let host = Tree::empty("oci-inhooks-host");
    let h = host.path().display().to_string();
    // createContainer: a host path, in the container's mount namespace before pivot_root,
    // after prestart. startContainer: a path of the image, once start comes, before the
    // payload.
    let create = format!(
        "cat > {h}/create.json; readlink /proc/self/ns/mnt > {h}/create.ns; \
         test -e {h}/prestart && echo after-prestart >> {h}/create.ns"
    );
    let prestart = format!("touch {h}/prestart");
    let b = Bundle::new(
        "oci-inhooks",
        &[
            "sh",
            "-c",
            "test -e /out/start.json && echo after-start-hook",
        ],
        |v| {
            v["hooks"] = json!({
                "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", prestart]}],
                "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", create],
                    "env": ["PATH=/usr/bin:/bin"]}],
                "startContainer": [{"path": "/bin/sh",
                    "args": ["sh", "-c", "cat > /out/start.json"], "timeout": 5}]});
        },
    );
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    let ns = fs::read_to_string(host.path().join("create.ns")).unwrap();
    let own = fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(ns.lines().collect::<Vec<_>>(), [s(&own), "after-prestart"]);
    assert_ne!(own, fs::read_link("/proc/self/ns/mnt").unwrap());
    let state: Value =
        serde_json::from_str(&fs::read_to_string(host.path().join("create.json")).unwrap())
            .unwrap();
    assert_eq!(
        (state["id"].as_str(), state["status"].as_str()),
        (Some(id.as_str()), Some("creating"))
    );
    assert_eq!(state["bundle"].as_str(), Some(b.dir()));
    assert!(
        !b.out.join("start.json").exists(),
        "startContainer before start"
    );
    let (code, _, err) = b.oci(&["start", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reap(pid), 0);
    assert_eq!(b.stdout_of(&id), "after-start-hook\n");
    let state: Value =
        serde_json::from_str(&fs::read_to_string(b.out.join("start.json")).unwrap()).unwrap();
    assert_eq!(
        (state["id"].as_str(), state["status"].as_str()),
        (Some(id.as_str()), Some("created"))
    );
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    let (code, out, _) = b.oci(&["features"]);
    assert_eq!(code, 0);
    let features: Value = serde_json::from_str(&out).unwrap();
    let kinds = features["hooks"].as_array().unwrap();
    assert!(kinds.contains(&json!("createContainer")) && kinds.contains(&json!("startContainer")));
    // A failing startContainer hook: the payload never runs.
    let id = ns_tests::unique("inhooks2");
    let b = Bundle::new("oci-inhooks2", &["sh", "-c", "echo ran"], |v| {
        v["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]});
    });
    let (code, out, err) = b.oci(&["run", "--bundle", b.dir(), &id]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("ran"), "{out}");
    assert!(
        err.contains("hooks.startContainer[0] (/bin/false)"),
        "{err}"
    );
}

#[test]
fn seccomp_notify_sends_the_listener_to_listener_path() {
    // Installed after start (no_new_privs) or while created (without).
    for nnp in [true, false] {
        notify_once(nnp);
    }
    // Notify without a listenerPath: one line.
    let b = Bundle::new("oci-notify2", &["true"], |v| {
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
    });
    let (code, err) = b.create(&ns_tests::unique("notify2"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("without listenerPath"), "{err}");
}

/// A container whose mkdir goes to a seccomp agent (this test): the listener arrives at
/// listenerPath; the agent leaves without answering.
fn notify_once(nnp: bool) {
    let id = ns_tests::unique(&format!("notify{nnp}"));
    let agent = Tree::empty("oci-notify-agent");
    let path = agent.path().join("agent.sock");
    let b = Bundle::new(
        "oci-notify",
        &["sh", "-c", "mkdir /tmp/x 2>&1; echo done; exec sleep 30"],
        |v| {
            v["process"]["noNewPrivileges"] = json!(nnp);
            v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "listenerPath": path, "listenerMetadata": "meta",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]});
        },
    );
    let listener = console_socket(&path);
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    let (code, _, err) = b.oci(&["start", &id]);
    assert_eq!(code, 0, "{err}");
    let fd = join_within(listener);
    use std::os::fd::AsRawFd;
    let what = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    assert_eq!(s(&what), "anon_inode:seccomp notify");
    // The agent goes away without answering: the calls it was to answer fail with ENOSYS.
    drop(fd);
    let t = std::time::Instant::now();
    while !b.stdout_of(&id).ends_with("done\n") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = b.stdout_of(&id);
    assert!(out.contains("Function not implemented"), "{out}");
    // A process exec'd into the container: its own listener, to the same agent.
    fs::remove_file(&path).unwrap();
    let listener = console_socket(&path);
    let process = b.out.join("process.json");
    let script = "mkdir /tmp/y 2>&1; echo exec-done";
    let p = json!({"args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}});
    fs::write(&process, p.to_string()).unwrap();
    let exec = b
        .cmd(&["exec", "--process", s(&process), &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fd = join_within(listener);
    let what = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    assert_eq!(s(&what), "anon_inode:seccomp notify");
    drop(fd);
    let o = exec.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Function not implemented") && out.ends_with("exec-done\n"),
        "{o:?}"
    );
    assert_eq!(b.oci(&["kill", &id, "KILL"]).0, 0);
    assert_eq!(reap(pid), 128 + libc::SIGKILL);
    assert_eq!(b.oci(&["delete", &id]).0, 0);
}

/// The listener `h` received (a test that never gets one fails, rather than hangs).
fn join_within(h: std::thread::JoinHandle<std::os::fd::OwnedFd>) -> std::os::fd::OwnedFd {
    let t = std::time::Instant::now();
    while !h.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no seccomp listener came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    h.join().unwrap()
}

// ---- Validation (issue 17): runc's default spec; small ns-oci fixes found by runtime-tools ----

/// `runc spec ARGS` and `ns-oci spec ARGS`, each in a fresh bundle: the two documents.
fn runc_and_ns_oci_spec(args: &[&str]) -> (Value, Value) {
    let t = Tree::empty("oci-spec-runc");
    let write = |program: PathBuf, sub: &str| {
        let dir = t.host_dir(sub);
        let o = Command::new(program)
            .args(["spec", "--bundle", s(&dir)])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let text = fs::read(dir.join("config.json")).unwrap();
        serde_json::from_slice::<Value>(&text).unwrap()
    };
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("runc is needed (apt-get install runc)");
    (write(runc, "runc"), write(bin("ns-oci"), "ns-oci"))
}

#[test]
fn spec_is_runcs_spec() {
    let (runc, ours) = runc_and_ns_oci_spec(&[]);
    assert_eq!(ours["hostname"], "runc");
    assert_eq!(ours, runc);
    let (runc, ours) = runc_and_ns_oci_spec(&["--rootless"]);
    assert_eq!(ours, runc);
}

/// runc's default spec lists ambient capabilities but no inheritable ones: the kernel raises
/// none of them and runc runs the container with the others; with CAP_KILL inheritable, that
/// one is raised (what runc 1.1 gives for these configs).
#[test]
fn ambient_capabilities_not_inheritable_are_left_out() {
    for (inheritable, want) in [
        (json!([]), "0000000000000000"),
        (json!(["CAP_KILL"]), "0000000000000020"),
    ] {
        let id = ns_tests::unique("ambient");
        let b = Bundle::new(
            "oci-ambient",
            &["grep", "^CapAmb", "/proc/self/status"],
            |v| {
                v["process"]["capabilities"]["inheritable"] = inheritable.clone();
            },
        );
        let (code, out, err) = b.oci(&["run", "--bundle", b.dir(), &id]);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("CapAmb:\t{want}\n").as_str()),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Mounts, device nodes and sysctls as config.json lists them (issue 17, items 2, 4, 5, 7)

/// Run `args` in a bundle edited by `edit` (`prepare` gets the rootfs first): create, start,
/// reap; its exit code and stdout.
fn run_bundle(
    tag: &str,
    args: &[&str],
    prepare: impl FnOnce(&Path),
    edit: impl FnOnce(&mut Value),
) -> (i32, String) {
    let id = ns_tests::unique(tag);
    let b = Bundle::new(&format!("oci-{tag}"), args, edit);
    prepare(&b.tree.path().join("rootfs"));
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    let (code, _, err) = b.oci(&["start", &id]);
    assert_eq!(code, 0, "{err}");
    let status = reap(pid);
    let out = b.stdout_of(&id);
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    (status, out)
}

/// /proc/self/mountinfo's lines as (mount point, mount options, fs type, source, super
/// options, optional fields), in order.
fn mountinfo(text: &str) -> Vec<[String; 6]> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some([
                f[4].into(),
                f[5].into(),
                r[0].into(),
                r[1].into(),
                r.get(2).copied().unwrap_or("").into(),
                f[6..].join(" "),
            ])
        })
        .collect()
}

#[test]
fn mounts_are_config_json_s_in_its_order_and_nothing_else() {
    let (code, out) = run_bundle(
        "mounts",
        &["cat", "/proc/self/mountinfo"],
        |_| {},
        |v| v["linux"]["rootfsPropagation"] = json!("rshared"),
    );
    assert_eq!(code, 0, "{out}");
    let m = mountinfo(&out);
    let at = |p: &str| m.iter().position(|l| l[0] == p);
    let shm = &m[at("/dev/shm").expect("/dev/shm")];
    assert_eq!(
        (shm[2].as_str(), shm[3].as_str()),
        ("tmpfs", "shm"),
        "{out}"
    );
    assert!(shm[1].split(',').any(|o| o == "noexec"), "{out}");
    assert!(shm[4].contains("size=65536k"), "{out}");
    let dev = &m[at("/dev").expect("/dev")];
    assert!(
        dev[4].contains("size=65536k") && dev[4].contains("mode=755"),
        "{out}"
    );
    // In config.json's order: /dev before /sys; nspawn's /run, /tmp, /run/host are not made.
    assert!(at("/dev") < at("/sys"), "{out}");
    for p in ["/run", "/tmp", "/run/host"] {
        assert_eq!(at(p), None, "{p}: {out}");
    }
    // linux.rootfsPropagation.
    assert!(m[at("/").expect("/")][5].contains("shared:"), "{out}");
}

#[test]
fn a_masked_path_below_a_masked_directory_is_skipped() {
    let (code, out) = run_bundle(
        "masks",
        &["sh", "-c", "ls -A /masked-dir; echo listed"],
        |root| fs::create_dir_all(root.join("masked-dir/sub")).unwrap(),
        |v| {
            let masked = v["linux"]["maskedPaths"].as_array_mut().unwrap();
            masked.extend([json!("/masked-dir"), json!("/masked-dir/sub")]);
        },
    );
    assert_eq!((code, out.as_str()), (0, "listed\n"));
}

#[test]
fn linux_devices_are_made_as_listed() {
    let (code, out) = run_bundle(
        "nodes",
        &[
            "stat",
            "-c",
            "%F %t:%T %a %u:%g",
            "/dev/ns-null",
            "/dev/sub/fifo",
            "/dev/zero",
        ],
        |_| {},
        |v| {
            v["linux"]["devices"] = json!([
                {"path": "/dev/ns-null", "type": "c", "major": 1, "minor": 3,
                 "fileMode": 0o620, "uid": 7, "gid": 8},
                {"path": "/dev/sub/fifo", "type": "p", "fileMode": 0o600}]);
        },
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "character special file 1:3 620 7:8",
            "fifo 0:0 600 0:0",
            "character special file 1:5 666 0:0"
        ]
    );
}

#[test]
fn namespaced_sysctls_are_written_before_read_only_paths() {
    let (code, out) = run_bundle(
        "sysctl",
        &[
            "cat",
            "/proc/sys/kernel/shm_rmid_forced",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
        |_| {},
        |v| {
            v["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1",
                "net.ipv4.ip_unprivileged_port_start": "42"});
        },
    );
    assert_eq!((code, out.as_str()), (0, "1\n42\n"));
}

#[test]
fn a_missing_mount_point_is_made_in_a_user_namespace_and_removed_after() {
    let id = ns_tests::unique("mp-userns");
    let b = Bundle::new("oci-mp-userns", &["sh", "-c", "ls -d /new-mp/sub"], |v| {
        ns_tests::oci_userns(v);
        v["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/new-mp/sub", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
        );
    });
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    assert_eq!(b.oci(&["start", &id]).0, 0);
    assert_eq!(reap(pid), 0);
    assert_eq!(b.stdout_of(&id), "/new-mp/sub\n");
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    assert!(!b.tree.path().join("rootfs/new-mp").exists(), "left behind");
}

// ---- No mount namespace (issue 17, item 6): runc's chroot, with the mounts undone ----

/// Held by a test whose containers mount on the host (no mount namespace) and by one that
/// compares this process's mounts before and after: they run one at a time.
fn host_mounts_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bundle whose linux.namespaces lists no mount namespace (and none of what needs one).
fn no_mount_ns_bundle(tag: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> Bundle {
    Bundle::new(tag, args, |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "mount");
        v["linux"]["maskedPaths"] = json!([]);
        v["linux"]["readonlyPaths"] = json!([]);
        v["root"]["readonly"] = json!(false);
        edit(v);
    })
}

#[test]
fn without_a_mount_namespace_the_mounts_are_on_the_rootfs_and_gone_after_delete() {
    let _host_mounts = host_mounts_lock();
    let id = ns_tests::unique("nomnt");
    let outside = ns_tests::Tree::empty("oci-nomnt-outside");
    let args = ["sh", "-c", "readlink /proc/self/ns/mnt; exec sleep 1000"];
    let b = no_mount_ns_bundle("oci-nomnt", &args, |v| {
        // Through the image's symlink to a host path: it stays inside the rootfs.
        v["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/escape/t", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
        );
    });
    let rootfs = b.tree.path().join("rootfs");
    std::os::unix::fs::symlink(outside.path(), rootfs.join("escape")).unwrap();
    fs::write(rootfs.join("nomnt-marker"), "inside\n").unwrap();
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    let mounted = host_mounts_under(&rootfs);
    let moved = fs::canonicalize(outside.path()).unwrap().join("t");
    assert!(mounted.iter().any(|p| p.ends_with("/proc")), "{mounted:?}");
    assert!(
        mounted
            .iter()
            .any(|p| Path::new(p).ends_with(moved.strip_prefix("/").unwrap())),
        "{mounted:?}"
    );
    assert_eq!(host_mounts_under(outside.path()), Vec::<String>::new());
    assert_eq!(b.oci(&["start", &id]).0, 0);
    // exec chroots into the container's root too.
    let p = b.out.join("p.json");
    let process =
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["cat", "/nomnt-marker"]});
    fs::write(&p, process.to_string()).unwrap();
    let (code, out, err) = b.oci(&["exec", "--process", s(&p), &id]);
    assert_eq!((code, out.as_str()), (0, "inside\n"), "{err}");
    assert_eq!(b.oci(&["kill", &id, "KILL"]).0, 0);
    assert_eq!(reap(pid), 128 + libc::SIGKILL);
    let ours = fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_eq!(b.stdout_of(&id).trim(), s(&ours));
    let (code, _, err) = b.oci(&["delete", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(host_mounts_under(&rootfs), Vec::<String>::new());
}

#[test]
fn without_a_mount_namespace_a_failed_create_leaves_no_mount() {
    let _host_mounts = host_mounts_lock();
    let id = ns_tests::unique("nomnt-fail");
    let b = no_mount_ns_bundle("oci-nomnt-fail", &["true"], |v| {
        v["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/late", "type": "bind", "source": "/nonexistent-ns-oci", "options": ["rbind"]}),
        );
    });
    let rootfs = b.tree.path().join("rootfs");
    let (code, err) = b.create(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent-ns-oci"), "{err}");
    assert_eq!(host_mounts_under(&rootfs), Vec::<String>::new());
    assert_eq!(b.status_if_any(&id), None);
}

#[test]
fn without_a_mount_namespace_masked_and_read_only_paths_are_refused() {
    let _host_mounts = host_mounts_lock();
    let id = ns_tests::unique("nomnt-masked");
    let b = no_mount_ns_bundle("oci-nomnt-masked", &["true"], |v| {
        v["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
    });
    let (code, err) = b.create(&id);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("linux.maskedPaths"), "{err}");
    assert_eq!(
        host_mounts_under(&b.tree.path().join("rootfs")),
        Vec::<String>::new()
    );
    assert_eq!(b.status_if_any(&id), None);
}

#[test]
fn without_a_mount_namespace_its_cgroup_mounts_are_not_taken_for_the_hosts() {
    let _host_mounts = host_mounts_lock();
    // Its cgroup file systems are mounted in our namespace while it lives: another
    // container's cgroups are made in the host's hierarchies all the same.
    let (a, b) = (ns_tests::unique("nomnt-a"), ns_tests::unique("nomnt-b"));
    let ba = no_mount_ns_bundle("oci-nomnt-a", &["true"], |_| {});
    let bb = Bundle::new("oci-nomnt-b", &["true"], |_| {});
    assert_eq!(ba.create(&a).0, 0);
    let (code, err) = bb.create(&b);
    assert_eq!(code, 0, "{err}");
    let (pa, pb) = (ba.pid(&a), bb.pid(&b));
    let (code, _, err) = ba.oci(&["delete", &a]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = bb.oci(&["delete", &b]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((reap(pa), reap(pb)), (137, 137));
    assert!(cgroups_named(&format!("ns-oci/{b}")).is_empty());
}

#[test]
fn without_a_mount_namespace_what_covers_its_mounts_goes_with_them() {
    let _host_mounts = host_mounts_lock();
    let id = ns_tests::unique("nomnt-cover");
    let args = ["sh", "-c", "mount -t tmpfs cover /dev/shm && echo covered"];
    let b = no_mount_ns_bundle("oci-nomnt-cover", &args, |v| {
        for set in ["bounding", "effective", "permitted"] {
            let caps = v["process"]["capabilities"][set].as_array_mut().unwrap();
            caps.push(json!("CAP_SYS_ADMIN"));
        }
    });
    let rootfs = b.tree.path().join("rootfs");
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    assert_eq!(b.oci(&["start", &id]).0, 0);
    assert_eq!(reap(pid), 0);
    assert_eq!(b.stdout_of(&id), "covered\n");
    let (code, _, err) = b.oci(&["delete", &id]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(host_mounts_under(&rootfs), Vec::<String>::new());
}

#[test]
fn without_a_mount_namespace_delete_force_after_a_killed_create_leaves_no_mount() {
    let _host_mounts = host_mounts_lock();
    let id = ns_tests::unique("nomnt-killed");
    let marker = ns_tests::Tree::empty("oci-nomnt-killed-marker");
    let ready = marker.path().join("ready");
    // createContainer runs once the mounts are made: create is killed while it waits.
    let hook = format!("touch {}; exec sleep 30", ready.display());
    let b = no_mount_ns_bundle("oci-nomnt-killed", &["true"], |v| {
        v["hooks"] = json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]});
    });
    let rootfs = b.tree.path().join("rootfs");
    let mut create = b
        .cmd(&["create", "--bundle", b.dir(), &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !ready.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ready.exists(), "the createContainer hook never ran");
    assert!(!host_mounts_under(&rootfs).is_empty());
    create.kill().unwrap();
    create.wait().unwrap();
    let (code, _, err) = b.oci(&["delete", "--force", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(host_mounts_under(&rootfs), Vec::<String>::new());
    assert_eq!(b.status_if_any(&id), None);
}
