//! Issue 15, the runtime directory and what is read from it or from a container: attacks by
//! another host user through /run/ns-run (planted directories, cleanup journals, registry
//! entries), a container's os-release and machine-id symlinks, lock files left behind, and
//! tools that must die quietly on a closed pipe.
//!
//! "First run after boot" is simulated in a private mount namespace with a fresh tmpfs on
//! /run (`unshare -m`): the real /run/ns-run, which parallel tests use, is never touched.

use std::process::Command;

use ns_tests::{bin, in_fresh_run, run_cmd, Output, Tree};

/// The one error line of a refused run (exit 125, nothing else on stderr).
fn refused(out: &Output, what: &[&str]) {
    assert_eq!(out.code, 125, "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    for w in what {
        assert!(lines[0].contains(w), "{w:?} not in the error: {out}");
    }
}

/// ns-mount used to make /run/ns-run/scratch (and /run/ns-run with it) under umask 0: 0777
/// when it was the first to need them. Every runtime directory gets an explicit mode now,
/// whatever the caller's umask.
#[test]
fn runtime_dirs_of_a_first_run_are_not_writable_by_others() {
    let t = Tree::rootfs("rt-modes");
    let out = in_fresh_run(
        &t,
        r#"umask 0
"$NS_RUN" --register=no -q -D "$TREE" --inaccessible=/etc/passwd true
"$NS_RUN" -q -M rt-modes -D "$TREE" --read-only true
echo "open: $(find /run/ns-run -perm /022 -printf '%p %m,')"
echo "dirs: $(find /run/ns-run -type d -printf '%P,' | tr -d '\n')"
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("open: \n"), "{out}");
    for d in ["scratch", "machines", "cleanup"] {
        assert!(out.stdout.contains(&format!("{d},")), "{d} not made: {out}");
    }
}

/// A directory of /run/ns-run that another user made, or that anyone may write, or that is a
/// symlink, is refused in one line naming it, its owner and its mode; nothing it holds is
/// obeyed (here: a cleanup journal naming a victim directory).
#[test]
fn planted_runtime_dirs_are_refused() {
    let t = Tree::rootfs("rt-planted");
    let plant_journal = r#"
mkdir -p "$BASE/victim" /run/ns-run/cleanup
touch "$BASE/victim/precious"
printf '{"root":"%s","path":"%s/victim","recursive":true}\n' "$BASE" "$BASE" > /run/ns-run/cleanup/999999999
"#;
    let cases: [(&str, &[&str]); 4] = [
        (
            "chown 65534 /run/ns-run /run/ns-run/cleanup /run/ns-run/cleanup/999999999",
            &["/run/ns-run", "uid 65534", "0755"],
        ),
        ("chmod 0777 /run/ns-run", &["/run/ns-run", "uid 0", "0777"]),
        (
            "chown -R 65534 /run/ns-run/cleanup",
            &["/run/ns-run/cleanup", "uid 65534"],
        ),
        (
            "mv /run/ns-run /run/elsewhere; ln -s /run/elsewhere /run/ns-run",
            &["/run/ns-run", "symlink"],
        ),
    ];
    for (how, what) in cases {
        let script = format!(
            "{plant_journal}{how}\n\
             rc=0; \"$NS_RUN\" --register=no -q -D \"$TREE\" true || rc=$?\n\
             test -e \"$BASE/victim/precious\" && echo victim-alive\n\
             exit $rc\n"
        );
        let out = in_fresh_run(&t, &script);
        refused(&out, what);
        assert!(out.stdout.contains("victim-alive"), "{how}: {out}");
    }
}

/// Even in a directory of ours, a journal is obeyed only if it is ours, a regular file (not a
/// symlink), and only for what a monitor creates: a mount point inside its tree, an overlay
/// work directory `.#…`, a cgroup.
#[test]
fn planted_or_forged_journals_are_not_obeyed() {
    let t = Tree::rootfs("rt-journal");
    let out = in_fresh_run(
        &t,
        r#"
"$NS_RUN" --register=no -q -D "$TREE" true
mkdir -p "$BASE/victim1" "$BASE/victim2" "$BASE/victim3"
touch "$BASE/victim1/x" "$BASE/victim2/x" "$BASE/victim3/x"
J=/run/ns-run/cleanup
# Another user's journal.
printf '{"root":"%s","path":"%s/victim1","recursive":true}\n' "$BASE" "$BASE" > $J/999999991
chown 65534 $J/999999991
# A symlink to a journal elsewhere.
printf '{"root":"%s","path":"%s/victim2","recursive":true}\n' "$BASE" "$BASE" > "$BASE/j"
ln -s "$BASE/j" $J/999999992
# Ours, but naming a directory that no monitor creates: not a work directory, and outside
# the tree it names as its root.
printf '{"root":"%s","path":"%s/victim3","recursive":true}\n' "$TREE" "$BASE" > $J/999999993
printf '{"root":"%s","path":"%s/victim3","recursive":false}\n' "$TREE" "$BASE" >> $J/999999993
printf '{"root":"%s","path":"/sys/fs/cgroup/../../%s/victim3","cgroup":true}\n' "$TREE" "$BASE" >> $J/999999993
"$NS_RUN" --register=no -q -D "$TREE" true
for v in 1 2 3; do test -e "$BASE/victim$v/x" && echo "victim$v-alive"; done
true
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    for v in 1..=3 {
        assert!(
            out.stdout.contains(&format!("victim{v}-alive")),
            "victim{v}: {out}"
        );
    }
}

/// A registry entry that another user planted (held by a flock, naming an unrelated
/// process as its leader and a "cgroup" whose cgroup.procs is a symlink to a host file) is
/// refused by `ns-ctl terminate` and `ns-ctl shell`; so is an entry of ours whose cgroups
/// are not cgroups.
#[test]
fn planted_registry_entries_are_refused() {
    let t = Tree::rootfs("rt-registry");
    let out = in_fresh_run(
        &t,
        r#"
"$NS_CTL" list >/dev/null
M=/run/ns-run/machines
sleep 100 & victim=$!
mkdir -p "$BASE/fakecg"
echo precious > "$BASE/file"
ln -s "$BASE/file" "$BASE/fakecg/cgroup.procs"
cat > $M/evil.json <<EOF
{"name":"evil","uuid":"0123456789abcdef0123456789abcdef","class":"container",
 "service":"ns-run","leader":$victim,"monitor":$victim,"root":"/","since_usec":0,
 "interfaces":[],"boot":false,"cgroups":["$BASE/fakecg"],"syscall_filter":null}
EOF
touch $M/evil.lock
chown 65534 $M/evil.json $M/evil.lock
flock $M/evil.lock sleep 100 & holder=$!
sleep 0.3
rc1=0; "$NS_CTL" shell evil -- /bin/true </dev/null || rc1=$?
rc2=0; "$NS_CTL" terminate evil || rc2=$?
# The same entry owned by root: its cgroup is no cgroup.
chown 0 $M/evil.json $M/evil.lock
rc3=0; "$NS_CTL" shell evil -- /bin/true </dev/null || rc3=$?
rc4=0; "$NS_CTL" kill evil || rc4=$?
grep -q "^State:.*[RS] (" /proc/$victim/status && echo victim-alive
echo "file: $(cat "$BASE/file")"
echo "rc: $rc1 $rc2 $rc3 $rc4"
kill $victim $holder 2>/dev/null || true
wait 2>/dev/null || true
"#,
    );
    assert!(out.stdout.contains("victim-alive"), "{out}");
    assert!(out.stdout.contains("file: precious"), "{out}");
    assert!(out.stdout.contains("rc: 125 125 125 125"), "{out}");
    assert!(out.stderr.contains("uid 65534"), "{out}");
    assert!(out.stderr.contains("not a cgroup"), "{out}");
}

/// A start refused because the tree is busy leaves no `NAME.lock` in the registry (the
/// claim is released on every exit path), and a `--private-users` range too large to lock
/// leaves none of the lock files it made.
#[test]
fn refused_starts_leave_no_lock_files() {
    let t = Tree::rootfs("rt-locks");
    let out = in_fresh_run(
        &t,
        r#"
"$NS_RUN" -q -M rt-busy1 -D "$TREE" sh -c 'sleep 100' & first=$!
i=0; until [ -e /run/ns-run/machines/rt-busy1.json ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
rc=0; "$NS_RUN" -q -M rt-busy2 -D "$TREE" true 2>/dev/null || rc=$?
echo "busy: $rc"
ls /run/ns-run/machines | grep rt-busy2 || echo "no rt-busy2 entry"
kill $first; wait $first || true
rc=0; "$NS_RUN" --register=no -q --private-users=0:4294967295 -D "$TREE" true 2>/dev/null || rc=$?
echo "huge: $rc"
echo "uid locks: $(ls /run/ns-run/uid | wc -l)"
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("busy: 125"), "{out}");
    assert!(out.stdout.contains("no rt-busy2 entry"), "{out}");
    assert!(out.stdout.contains("uid locks: 0"), "{out}");
}

/// `ns-ctl status NAME | head -1` and the other printing verbs of our tools meet a closed
/// pipe: they die of SIGPIPE, quietly, as coreutils do (no panic, no message).
#[test]
fn printing_into_a_closed_pipe_is_quiet() {
    use std::os::unix::process::ExitStatusExt;
    let t = Tree::rootfs("rt-pipe");
    let name = ns_tests::unique("rt-pipe");
    let running = ns_tests::spawn_until(
        ns_tests::registered_sleeper(&t, &name, &["--read-only"]),
        "ready",
    );
    let cmds: Vec<(&str, Vec<&str>)> = vec![
        ("ns-ctl", vec!["status", &name]),
        ("ns-ctl", vec!["list"]),
        ("ns-run", vec!["--print-state", "-D", t.arg(), "true"]),
        ("ns-run", vec!["--print-chain", "-D", t.arg(), "true"]),
        ("ns-oci", vec!["features"]),
    ];
    let mut bad = Vec::new();
    for (tool, args) in &cmds {
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let out = ns_tests::stage(tool)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(w)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        if out.status.signal() != Some(libc::SIGPIPE) || !out.stderr.is_empty() {
            bad.push(format!(
                "{tool} {args:?}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    running.signal(libc::SIGTERM);
    let _ = running.wait();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// `ns-ctl status` reads the container's os-release inside the container's root: a symlink
/// there to a host path shows nothing of the host file, and a FIFO does not hang it.
#[test]
fn os_release_is_read_inside_the_container() {
    let t = Tree::rootfs("rt-osrel");
    let secret = t.host_dir("host").join("os-release");
    std::fs::write(&secret, "PRETTY_NAME=\"HOST SECRET\"\nID=hostsecret\n").unwrap();
    let os_release = t.path().join("etc/os-release");
    let _ = std::fs::remove_file(&os_release);
    std::os::unix::fs::symlink(&secret, &os_release).unwrap();
    let name = ns_tests::unique("rt-osrel");
    let mut c = ns_tests::ns_run_registered();
    t.tag(&mut c).args([
        "-q",
        "-M",
        &name,
        "-D",
        t.arg(),
        "sh",
        "-c",
        "echo ready; exec sleep 100",
    ]);
    let running = ns_tests::spawn_until(c, "ready");
    let status = || {
        let mut ctl = ns_tests::stage("ns-ctl");
        ctl.args(["status", &name]);
        run_cmd(ctl, None)
    };
    let through_symlink = status();
    // Now a FIFO that nobody writes (run_cmd fails the test if status hangs on it).
    std::fs::remove_file(&os_release).unwrap();
    let made = Command::new("mkfifo").arg(&os_release).status().unwrap();
    let on_fifo = status();
    running.signal(libc::SIGTERM);
    let _ = running.wait();
    assert!(made.success());
    assert_eq!(through_symlink.code, 0, "{through_symlink}");
    assert!(
        !through_symlink.stdout.contains("HOST SECRET"),
        "{through_symlink}"
    );
    assert_eq!(on_fifo.code, 0, "{on_fifo}");
}

/// `-b` on an image whose /etc/machine-id is a symlink to a host path: the answer (a
/// transient machine id or not) must not depend on whether that host path exists.
#[test]
fn machine_id_symlink_does_not_probe_the_host() {
    let mut seen = Vec::new();
    for (userns, exists) in [(false, true), (false, false), (true, true), (true, false)] {
        let t = ns_tests::booting_tree(
            "rt-mid",
            "echo machine-id=$(cat /etc/machine-id 2>/dev/null || echo none)\npoweroff -f\n",
        );
        let host = t.host_dir("host").join("machine-id");
        if exists {
            std::fs::write(&host, "fedcba9876543210fedcba9876543210\n").unwrap();
        }
        let _ = std::fs::remove_file(t.path().join("etc/machine-id"));
        std::os::unix::fs::symlink(&host, t.path().join("etc/machine-id")).unwrap();
        let mut args = vec![
            "-q",
            "-D",
            t.arg(),
            "-b",
            "--uuid=0123456789abcdef0123456789abcdef",
        ];
        if userns {
            args.push("-U");
        }
        let out = ns_tests::run(&args);
        assert_eq!(out.code, 0, "{out}");
        // The boot shows on the read-only console (a pty: CRLF).
        seen.push(out.stdout.replace("\r\n", "\n"));
    }
    // The same answer, whether the host path exists or not, with or without -U.
    for s in &seen {
        assert_eq!(
            s, "machine-id=0123456789abcdef0123456789abcdef\n",
            "{seen:?}"
        );
    }
}

/// A user's runtime directory that another user made first is refused, saying whose it is.
#[test]
fn squatted_rootless_runtime_dir_says_whose_it_is() {
    let t = Tree::empty("rt-squat");
    let xdg = t.host_dir("xdg");
    let squatted = xdg.join("ns-run");
    std::fs::create_dir(&squatted).unwrap();
    let chown = |p: &std::path::Path, uid: &str| {
        let st = Command::new("chown").arg(uid).arg(p).status().unwrap();
        assert!(st.success());
    };
    chown(&squatted, "1");
    chown(&xdg, "65534");
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("ns-ctl"))
        .arg("list")
        .env("XDG_RUNTIME_DIR", &xdg);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    let line = out.stderr.trim();
    assert!(line.contains(squatted.to_str().unwrap()), "{out}");
    assert!(line.contains("uid 1"), "{out}");
}

/// ns-oci's state root made by another user: its records (here one naming an unrelated
/// process, with the right start time) are not believed.
#[test]
fn ns_oci_refuses_a_state_root_of_another_user() {
    let t = Tree::empty("rt-oci-root");
    let out = in_fresh_run(
        &t,
        r#"
R="$BASE/oci-root"
mkdir -p "$R/evil"
sleep 100 & victim=$!
start=$(awk '{print $22}' /proc/$victim/stat)
printf '{"id":"evil","bundle":"/","rootfs":"/","pid":%s,"start_time":%s,' $victim $start > "$R/evil/state.json"
printf '"created":"2026-01-01T00:00:00Z","cgroups":[],"cgroup_levels":[],"annotations":{},' >> "$R/evil/state.json"
printf '"created_paths":[],"syscall_filter":null,"hooks":null}' >> "$R/evil/state.json"
chown -R 65534 "$R"
rc=0; "$BIN/ns-oci" --root "$R" kill evil KILL || rc=$?
grep -q "^State:.*[RS] (" /proc/$victim/status && echo victim-alive
echo "rc: $rc"
kill $victim 2>/dev/null || true
wait 2>/dev/null || true
"#,
    );
    assert!(out.stdout.contains("victim-alive"), "{out}");
    assert!(out.stdout.contains("rc: 1"), "{out}");
    assert!(out.stderr.contains("uid 65534"), "{out}");
}
