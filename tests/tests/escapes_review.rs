//! Issue 15, a review of its fixes: what an attacker, or a user upgrading from an older
//! version, still meets after them.
//!
//! "First run after boot" (or after an upgrade) is simulated in a private mount namespace
//! with a fresh tmpfs on /run (`unshare -m`): the real /run/ns-run is never touched.

use std::process::Command;

use ns_tests::{bin, in_fresh_run, run_cmd, Tree};

/// An older ns-mount made /run/ns-run/scratch under umask 0: 0777, root's. After an upgrade
/// (no reboot), ns-run must still start: the scratch directory is only a mount point (the
/// tmpfs goes over it inside the container, through an O_NOFOLLOW fd), so ours with too
/// open a mode is put right, not refused. One of another user, or a symlink, still is.
#[test]
fn scratch_left_0777_by_an_older_version_is_repaired() {
    let t = Tree::rootfs("rv-scratch");
    let out = in_fresh_run(
        &t,
        "mkdir -m 0755 /run/ns-run\n\
         mkdir /run/ns-run/scratch; chmod 0777 /run/ns-run/scratch\n\
         touch /run/ns-run/scratch/planted\n\
         \"$NS_RUN\" --register=no -q -x -D \"$TREE\" sh -c 'echo ran'\n\
         stat -c 'mode=%a' /run/ns-run/scratch\n\
         chown 65534 /run/ns-run/scratch\n\
         if \"$NS_RUN\" --register=no -q -x -D \"$TREE\" true; then echo nobody-ok; fi\n\
         rmdir /run/ns-run/scratch 2>/dev/null || rm -rf /run/ns-run/scratch\n\
         mkdir -m 0700 \"$BASE/elsewhere\"; ln -s \"$BASE/elsewhere\" /run/ns-run/scratch\n\
         if \"$NS_RUN\" --register=no -q -x -D \"$TREE\" true; then echo symlink-ok; fi\n\
         stat -c 'elsewhere=%a' \"$BASE/elsewhere\"\n",
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("ran\n"), "{out}");
    assert!(out.stdout.contains("mode=700\n"), "{out}");
    assert!(!out.stdout.contains("nobody-ok"), "{out}");
    assert!(!out.stdout.contains("symlink-ok"), "{out}");
    assert!(out.stdout.contains("elsewhere=700\n"), "{out}");
}

/// ns-run's state for `opts` on `t` as machine `m` (--print-state), or the failure.
fn print_state(t: &Tree, m: &str, opts: &[&str]) -> serde_json::Value {
    let mut c = ns_tests::ns_run();
    t.tag(&mut c)
        .args(["-D", t.arg(), "-M", m, "--print-state"])
        .args(["--uuid=0123456789abcdef0123456789abcdef"])
        .args(opts);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{opts:?}: {out}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// `--settings=override` with an untrusted file's `DropCapability=` (which nspawn keeps):
/// nspawn drops the file's capabilities from what the command line left
/// (`arg_caps_retain &= ~settings->drop_capability`); the command line's own
/// `--drop-capability` must not come back because the file also drops one. (`ns-ctl start`
/// runs with --settings=override.)
#[test]
fn an_untrusted_drop_capability_does_not_undo_the_command_lines() {
    let t = Tree::rootfs("rv-caps");
    let m = ns_tests::unique("rv-caps");
    let want = print_state(
        &t,
        &m,
        &["--settings=no", "--drop-capability=CAP_NET_RAW,CAP_CHOWN"],
    );
    let file = t.path().parent().unwrap().join(format!("{m}.nspawn"));
    std::fs::write(&file, "[Exec]\nDropCapability=CAP_CHOWN\n").unwrap();
    let got = print_state(
        &t,
        &m,
        &["--settings=override", "--drop-capability=CAP_NET_RAW"],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(got["exec"], want["exec"]);
    assert_eq!(got, want);
}

/// The registry's lock files were 0644: any local user could open one and flock it. A
/// monitor killed with SIGKILL leaves its entry (its JSON names the old leader and
/// monitor pids); a user holding the lock then keeps that dead entry "running" for
/// `ns-ctl`, which would signal (`terminate`, `kill`) or enter (`shell`) whatever process
/// gets those pids next. Likewise a user could hold the id-range slots (`-U` refused: "no
/// free id range") or a zone's lock (`--network-zone` hangs). Lock files are for their owner only.
#[test]
fn another_user_cannot_hold_a_registry_lock() {
    let t = Tree::rootfs("rv-lock");
    let out = in_fresh_run(
        &t,
        r#"M=/run/ns-run/machines
# As an older version left it (its lock files were 0644, or 0666 under umask 0).
mkdir -p -m 0755 /run/ns-run $M; touch $M/rv-stale.lock; chmod 0666 $M/rv-stale.lock
"$NS_RUN" -q -M rv-stale -D "$TREE" sh -c 'sleep 100' </dev/null & first=$!
i=0; until [ -e $M/rv-stale.json ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
[ -e $M/rv-stale.json ] || { echo "never registered"; exit 1; }
stat -c 'lock=%a' $M/rv-stale.lock
kill -9 $first; wait $first 2>/dev/null || true
i=0; while [ -n "$(cat /sys/fs/cgroup/ns-run-rv-stale*/cgroup.procs 2>/dev/null)" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups flock -n -x $M/rv-stale.lock -c 'echo held; sleep 30' > "$BASE/held" 2>/dev/null & holder=$!
i=0; until [ -s "$BASE/held" ] || ! kill -0 $holder 2>/dev/null || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done
echo "holder: $(cat "$BASE/held")"
"$NS_CTL" list 2>&1 | sed 's/^/list: /' || true
kill $holder 2>/dev/null || true; wait $holder 2>/dev/null || true
"$NS_CTL" list >/dev/null 2>&1 || true
"$NS_RUN" --register=no -q -D "$TREE" true
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("lock=600"), "{out}");
    assert!(!out.stdout.contains("holder: held"), "{out}");
    assert!(!out.stdout.contains("list: rv-stale"), "{out}");
}

/// The "one container per tree" lock was a flock on the tree's root directory itself: any
/// user who may open that directory (a 0755 tree) could hold it, and no container could
/// start on the tree ("directory tree is currently busy"). Now, as nspawn's
/// (/run/systemd/nspawn/locks/inode-DEV:INO), it is a 0600 file of the runtime directory
/// named by the tree's device and inode: another user's flock on the directory is ignored,
/// cannot reach the lock file, the same tree reached through a symlink is still busy, and the
/// file goes with the last container (the collectors' `.collect` stays: see locks.rs).
#[test]
fn another_user_cannot_hold_a_trees_lock() {
    let t = Tree::rootfs("rv-treelock");
    let out = in_fresh_run(
        &t,
        r#"L=/run/ns-run/trees
setsid setpriv --reuid=65534 --regid=65534 --clear-groups flock -n -x "$TREE" -c 'echo held; sleep 30' > "$BASE/held" 2>/dev/null & holder=$!
i=0; until [ -s "$BASE/held" ] || ! kill -0 $holder 2>/dev/null || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done
echo "holder: $(cat "$BASE/held")"
rc=0; "$NS_RUN" --register=no -q -D "$TREE" true || rc=$?
echo "run: $rc"
kill -- -$holder 2>/dev/null || true; wait $holder 2>/dev/null || true
ln -s "$TREE" "$BASE/link"
"$NS_RUN" --register=no -q -D "$TREE" sh -c 'touch /ready; i=0; while [ ! -e /stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done' </dev/null & first=$!
i=0; until [ -e "$TREE/ready" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
[ -e "$TREE/ready" ] || { echo "never started"; kill -9 $first; exit 1; }
for f in $L/*; do echo "file: $(stat -c '%a %u %F' "$f")"; done
if setpriv --reuid=65534 --regid=65534 --clear-groups flock -n -x $L/* true 2>/dev/null; then echo "nobody-locked"; fi
rc=0; "$NS_RUN" --register=no -q -D "$BASE/link" true 2>"$BASE/err" || rc=$?
echo "link: $rc $(cat "$BASE/err")"
touch "$TREE/stop"; wait $first
echo "left: $(ls -A $L | grep -vx .collect | wc -l)"
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("holder: held"), "{out}");
    assert!(out.stdout.contains("run: 0"), "{out}");
    assert!(
        out.stdout.contains("file: 600 0 regular empty file\n"),
        "{out}"
    );
    assert!(!out.stdout.contains("nobody-locked"), "{out}");
    assert!(
        out.stdout.contains("link: 125 ns-run: --directory=")
            && out.stdout.contains("directory tree is currently busy"),
        "{out}"
    );
    assert!(out.stdout.contains("left: 0\n"), "{out}");
}

/// Containers of an older version, still running after an upgrade, lock the tree's root
/// directory itself: that lock is still taken and respected, but only when an `ns-run` of our
/// uid holds it (an `ns-run`-named flock(1) here). Held by another user, even under that
/// name, or by another program, it is ignored. And a running container holds it, so that an
/// older version's start is refused.
#[test]
fn an_older_versions_directory_lock_keeps_containers_apart() {
    let t = Tree::rootfs("rv-oldlock");
    let out = in_fresh_run(
        &t,
        r#"cp "$(command -v flock)" "$BASE/ns-run"; chmod 0755 "$BASE" "$BASE/ns-run"
hold() { # NAME UID: a flock -x on the tree by program NAME as UID, then run a container
    cp "$BASE/ns-run" "$BASE/$1" 2>/dev/null || true
    rm -f "$BASE/held"
    setsid setpriv --reuid=$2 --regid=$2 --clear-groups "$BASE/$1" -n -x "$TREE" -c 'echo held; sleep 30' > "$BASE/held" 2>/dev/null & holder=$!
    i=0; until [ -s "$BASE/held" ] || ! kill -0 $holder 2>/dev/null || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done
    rc=0; "$NS_RUN" --register=no -q -D "$TREE" true 2>"$BASE/err" || rc=$?
    echo "$1 $2: $(cat "$BASE/held") $rc $(cat "$BASE/err")"
    kill -- -$holder 2>/dev/null || true; wait $holder 2>/dev/null || true
}
hold ns-run 0
hold ns-run 65534
hold flock 0
"$NS_RUN" --register=no -q -D "$TREE" sh -c 'touch /ready; i=0; while [ ! -e /stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done' </dev/null & first=$!
i=0; until [ -e "$TREE/ready" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
if flock -n -s "$TREE" true; then echo "old-started"; fi
touch "$TREE/stop"; wait $first
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("ns-run 0: held 125 ns-run: --directory=")
            && out.stdout.contains("directory tree is currently busy"),
        "{out}"
    );
    assert!(out.stdout.contains("ns-run 65534: held 0 \n"), "{out}");
    assert!(out.stdout.contains("flock 0: held 0 \n"), "{out}");
    assert!(!out.stdout.contains("old-started"), "{out}");
}

/// A rootless user's lock files are in its own runtime directory, out of reach of root's:
/// the directory lock still keeps its containers off a tree that one of root's uses (an
/// `ns-run` of uid 0 holds it, which no user can fake). (Root's are not kept off by a user's:
/// see `an_older_versions_directory_lock_keeps_containers_apart`.)
#[test]
fn a_rootless_container_keeps_off_a_tree_roots_container_uses() {
    let t = Tree::rootfs("rv-rllock");
    let out = in_fresh_run(
        &t,
        r#"B="$BASE/bins"; mkdir -p "$B"; for b in ns-run ns-enter ns-mount ns-caps ns-init; do cp "$BIN/$b" "$B/"; done
chmod 0755 "$BASE" "$B"
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups env -u XDG_RUNTIME_DIR "$B/ns-run" -q -U -D "$TREE" "$@" 2>"$BASE/err" </dev/null; }
rc=0; as_user true || rc=$?; echo "user alone: $rc $(cat "$BASE/err")"
"$NS_RUN" --register=no -q -D "$TREE" sh -c 'touch /ready; i=0; while [ ! -e /stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done' </dev/null & first=$!
i=0; until [ -e "$TREE/ready" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
rc=0; as_user true || rc=$?; echo "user next to root: $rc $(cat "$BASE/err")"
rc=0; as_user -x true || rc=$?; echo "user -x next to root: $rc"
touch "$TREE/stop"; wait $first
rm -rf /tmp/ns-run-65534
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("user alone: 0 \n"), "{out}");
    assert!(
        out.stdout
            .contains("user next to root: 125 ns-run: --directory=")
            && out.stdout.contains("directory tree is currently busy"),
        "{out}"
    );
    assert!(out.stdout.contains("user -x next to root: 125\n"), "{out}");
}

/// `--private-users-ownership=chown` that fails half-way is "undone" by shifting the whole
/// tree back to the range it came from, every id keeping its low 16 bits. On a fresh tree
/// (owned by root: range 0) that turns a set-uid file of any other range into a set-uid
/// root file, its set-id bits given back: e.g. one an earlier `-U` container wrote with
/// `--private-users-ownership=off` (its root is host uid 0x1D0000 on disk), which can also
/// make the next shift fail (a chain deeper than 2048 directories). Before the fix, only
/// ids of the two ranges were ever changed.
#[test]
fn a_failed_shift_never_makes_a_file_of_another_range_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = Tree::bare("rv-shift");
    let planted = t.path().join("tmp/suid");
    std::fs::create_dir_all(t.path().join("tmp")).unwrap();
    std::fs::write(&planted, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::lchown(&planted, Some(0x1D0000), Some(0x1D0000)).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o6755)).unwrap();
    // 2049 levels, made fd-relative (their path is past PATH_MAX).
    let mut at = std::fs::File::open(t.path().join("tmp")).unwrap();
    for _ in 0..2049 {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: mkdirat and openat on a valid dir fd with a C string literal; the new fd
        // is ours.
        let fd = unsafe {
            assert_eq!(libc::mkdirat(at.as_raw_fd(), c"d".as_ptr(), 0o755), 0);
            libc::openat(
                at.as_raw_fd(),
                c"d".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0);
        // SAFETY: a new fd nothing else owns.
        at = unsafe { std::fs::File::from_raw_fd(fd) };
    }
    drop(at);
    let mut c = ns_tests::ns_run();
    t.tag(&mut c).args([
        "-q",
        "-D",
        t.arg(),
        "--private-users=1048576:65536",
        "--private-users-ownership=chown",
        "/bin/true",
    ]);
    let out = run_cmd(c, None);
    let md = std::fs::symlink_metadata(&planted).unwrap();
    assert_ne!(out.code, 0, "{out}");
    assert!(
        !(md.uid() == 0 && md.mode() & 0o4000 != 0),
        "a set-uid root file now: uid {} mode {:o}; {out}",
        md.uid(),
        md.mode()
    );
    assert!(
        !(md.gid() == 0 && md.mode() & 0o2000 != 0),
        "a set-gid root file now: gid {} mode {:o}; {out}",
        md.gid(),
        md.mode()
    );
}

/// A monitor killed with SIGKILL leaves its cleanup journal, named by its pid. The next
/// ns-run that gets the same pid took that journal for a live monitor's (its own pid is
/// alive and called ns-run) and then replaced it with its own: the dead container's cgroups
/// were never removed. Pids are made to repeat with two fresh pid namespaces (ns-run is
/// pid 2 in each).
#[test]
fn a_dead_monitors_journal_with_our_pid_is_collected() {
    let first = Tree::rootfs("rv-pidreuse");
    let second = Tree::rootfs("rv-pidreuse-other");
    let out = in_fresh_run(
        &first,
        &format!(
            r#"unshare -p -f --mount-proc sh -c '"$NS_RUN" --register=no -q -D "$TREE" sleep 100 </dev/null & p=$!
i=0; until [ -s /run/ns-run/cleanup/$p ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
sleep 0.3; kill -9 $p; wait $p || true; echo "first=$p"'
sed -n 's/.*"path":"\([^"]*\)".*"cgroup":true.*/\1/p' /run/ns-run/cleanup/2 > "$BASE/cgroups"
echo "cgroups: $(wc -l < "$BASE/cgroups")"
unshare -p -f --mount-proc sh -c '"$NS_RUN" --register=no -q -D {second} true; echo "second=$$ rc=$?"'
left=0
for c in $(cat "$BASE/cgroups"); do
  if [ -d "$c" ]; then echo "left: $c"; left=1; rmdir "$c" 2>/dev/null || true; fi
done
"#,
            second = second.arg()
        ),
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("first=2\n"), "{out}");
    assert!(!out.stdout.contains("cgroups: 0"), "{out}");
    assert!(out.stdout.contains("rc=0"), "{out}");
    assert!(!out.stdout.contains("left: "), "{out}");
}

/// An OCI hook gets the container's state on stdin, annotations included. A hook that does
/// not read it, with a state larger than a pipe holds, blocked ns-oci in that write, before
/// the timeout was ever looked at: `timeout: 1` did not stop a hook that slept 20 s (runc
/// writes stdin beside its timer). The hook must be killed after its timeout.
#[test]
fn an_oci_hook_that_does_not_read_its_state_still_times_out() {
    use serde_json::json;
    use std::time::{Duration, Instant};
    let t = Tree::empty("rv-hook-stdin");
    let path = ns_tests::spec_bundle(&t, &["true"], |v| {
        v["annotations"] = json!({"big": "x".repeat(256 * 1024)});
        v["hooks"] = json!({"prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "exec sleep 20"], "timeout": 1}]});
    });
    let root = t.host_dir("oci-root");
    // ns-oci's cgroups (ns-oci/ID) are host-wide: ids of this test process.
    let (id, id2) = (
        ns_tests::unique("rv-hook-stdin"),
        ns_tests::unique("rv-hook-stdin2"),
    );
    let mut c = Command::new(bin("ns-oci"));
    c.arg("--root")
        .arg(&root)
        .args(["run", "--bundle", t.arg(), &id])
        .stdin(std::process::Stdio::null());
    let t0 = Instant::now();
    let out = ns_tests::spawn(c, None).wait();
    let took = t0.elapsed();
    let mut d = Command::new(bin("ns-oci"));
    d.arg("--root").arg(&root).args(["delete", "--force", &id]);
    let _ = run_cmd(d, None);
    assert!(took < Duration::from_secs(10), "took {took:?}: {out}");
    assert_ne!(out.code, 0, "{out}");
    // A hook that reads its state still gets all of it.
    let got = t.host_dir("hook").join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["hooks"] = json!({"prestart": [{"path": "/bin/sh",
        "args": ["sh", "-c", format!("cat > {}", got.display())], "timeout": 10}]});
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let mut c = Command::new(bin("ns-oci"));
    c.arg("--root")
        .arg(&root)
        .args(["run", "--bundle", t.arg(), &id2])
        .stdin(std::process::Stdio::null());
    let out = ns_tests::spawn(c, None).wait();
    assert_eq!(out.code, 0, "{out}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&got).unwrap()).unwrap();
    assert_eq!(
        state["annotations"]["big"].as_str().map(str::len),
        Some(256 * 1024)
    );
}

/// TIOCLINUX was filtered because a VT's select-and-paste types into a host VT given as
/// stdin. The keyboard ioctls do the same, one key press later: KDSKBSENT gives a function
/// key a string, KDSKBENT (or KDSETKEYCODE, or an accent table) makes a key send it. The
/// keymap is the console's, shared by every VT: the next Enter the host user presses on
/// any VT types the container's command. The kernel lets a task do it on a VT that is not
/// its controlling terminal with CAP_SYS_TTY_CONFIG, which a container keeps by default
/// (as nspawn's). The filter answers EPERM before the terminal sees the request (without
/// it: ENOTTY on a non-VT stdin).
#[test]
fn keymap_ioctls_are_denied_like_tioclinux() {
    let t = Tree::rootfs("rv-keymap");
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    let mut bad = Vec::new();
    for opts in [&[][..], &["-U"][..]] {
        // KDSKBENT, KDSKBSENT, KDSKBDIACR, KDSKBDIACRUC, KDSETKEYCODE
        for req in [0x4B47u32, 0x4B49, 0x4B4B, 0x4BFB, 0x4B4D] {
            let mut c = ns_tests::ns_run();
            t.tag(&mut c).args(["-q", "-D", t.arg()]).args(opts).args([
                "ns-probe",
                "ioctl",
                &req.to_string(),
            ]);
            let out = run_cmd(c, None);
            if out.code != 0 || out.stdout.trim() != "EPERM" {
                bad.push(format!("{opts:?} {req:#x}: {out}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
