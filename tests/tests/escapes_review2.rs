//! Issue 15, a second review of its fixes: ns-caps `--fork` and the processes that enter a
//! running container (`ns-ctl shell`, `ns-oci exec`).
//!
//! The entering process stays outside the container's PID namespace but is inside its
//! mount namespace: the /proc it sees there is the container's, one the container's root can
//! replace (a tmpfs over /proc). Nothing it reads through that /proc may weaken what it
//! drops.

use std::process::Command;

use ns_tests::{bin, in_fresh_run, run_cmd, spawn_until, Tree};

/// Container root puts a tmpfs over its /proc with `self/setgroups` saying `deny`, then the
/// host's root runs `ns-ctl shell` with supplementary groups of its own (here 4242; a
/// login's are usually 0): the command must not keep them (`id -G` shows them as 4242, or
/// as the overflow gid 65534 under -U, where they are host groups the container does not
/// have: files of a bound host directory, readable by that group, would open).
#[test]
fn a_fake_proc_self_setgroups_does_not_keep_the_callers_groups() {
    for (opts, tag) in [(&["-U"][..], "u"), (&[][..], "d")] {
        let t = Tree::rootfs(&format!("rv2-groups-{tag}"));
        let name = ns_tests::unique(&format!("rv2-groups-{tag}"));
        let c = ns_tests::registered_sh(
            &t,
            &name,
            opts,
            "mount -t tmpfs none /proc && mkdir /proc/self && \
                 echo deny > /proc/self/setgroups && echo ready; exec sleep 100",
        );
        let running = spawn_until(c, "ready");
        let mut shell = Command::new("setpriv");
        shell
            .args(["--groups=4242", "--"])
            .arg(bin("ns-ctl"))
            .args(["shell", &name, "--", "id", "-G"])
            .env_remove("NS_DEBUG");
        let out = run_cmd(shell, None);
        running.signal(libc::SIGKILL);
        let _ = running.wait();
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        let groups: Vec<&str> = out.stdout.split_whitespace().collect();
        assert!(!groups.is_empty(), "{opts:?}: {out}");
        assert!(
            !groups.iter().any(|g| *g == "4242" || *g == "65534"),
            "{opts:?}: the shell kept the caller's groups: {out}"
        );
    }
}

/// The host's environment of whoever runs `ns-ctl shell` (tokens, agent sockets, proxy
/// credentials...) must not reach the container: the command gets TERM and its `-E` only,
/// and so must the process the container sees before the command's exec (ns-caps, forked
/// inside), whose /proc/PID/environ container root can read (here: stopped with ptrace, as
/// `ns-probe ptrace` does, and read). Default and -U.
#[test]
fn ns_ctl_shell_does_not_show_the_callers_environment() {
    for (opts, tag) in [(&[][..], "d"), (&["-U"][..], "u")] {
        let (_t, name, mut r) = ns_tests::ptrace_watcher(&format!("rv2-env-{tag}"), opts);
        let mut report = String::new();
        // Until the loop has stopped a process of ours before its command's exec (its
        // environment is then ns-caps's, not /bin/true's), at most 60 rounds.
        let stopped_one = (0..60).any(|_| {
            let mut sh = Command::new(bin("ns-ctl"));
            sh.env_remove("NS_DEBUG")
                .env("RV2_HOST_SECRET", "hunter2")
                .args(["shell", &name, "--", "/bin/true"]);
            let o = run_cmd(sh, None);
            assert_eq!(o.code, 0, "ns-ctl shell: {o}");
            r.wait_stdout("\0", std::time::Duration::from_millis(50));
            report = r.stdout_so_far();
            let before_exec = report
                .lines()
                .filter(|l| l.starts_with("environ ") && !l.starts_with("environ 1 "))
                .any(|l| l.split_whitespace().nth(2) != Some("true"));
            before_exec || report.contains("hunter2")
        });
        assert!(
            stopped_one,
            "the loop never stopped a process of ours before its exec:\n{report}"
        );
        let o = r.stop();
        assert!(
            !o.stdout.contains("hunter2"),
            "{opts:?}: the container read the caller's environment: {}",
            o.stdout
                .lines()
                .filter(|l| l.contains("hunter2"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The same code path, rootless: a user's own container (its user namespace maps one id and
/// denies setgroups). The entering process cannot read /proc/self/setgroups there (that
/// /proc is the container's, without it), so it must not need to: `ns-ctl shell` of the
/// user's container works, as the user.
#[test]
fn a_rootless_users_shell_enters_its_container() {
    let t = Tree::rootfs("rv2-rlshell");
    let out = in_fresh_run(
        &t,
        r#"B="$BASE/bins"; mkdir -p "$B"; for b in ns-run ns-enter ns-mount ns-caps ns-init ns-ctl; do cp "$BIN/$b" "$B/"; done
chmod 0755 "$BASE" "$B"; chown -R 65534:65534 "$TREE"
X="$BASE/xdg"; mkdir -m 0700 "$X"; chown 65534:65534 "$X"
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups env XDG_RUNTIME_DIR="$X" "$@"; }
as_user "$B/ns-run" -q -U -M rv2rl -D "$TREE" sh -c 'touch /ready; i=0; while [ ! -e /stop ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done' </dev/null >"$BASE/out" 2>&1 & first=$!
i=0; until [ -e "$TREE/ready" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
rc=0; as_user "$B/ns-ctl" shell rv2rl -- sh -c 'echo inside-$(id -u)' </dev/null || rc=$?; echo "shell: $rc"
touch "$TREE/stop"; wait $first || true
cat "$BASE/out"
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("inside-0\n"), "{out}");
    assert!(out.stdout.contains("shell: 0\n"), "{out}");
}

/// The fallback for older versions' directory lock counts a flock on the tree's directory
/// when /proc/locks names an `ns-run` of root's as its holder. But /proc/locks names the
/// process that *took* the lock, even once it has died (the lock lives on in whoever
/// inherited the file), and pids are reused: another user flocks the tree directory, hands
/// the file to a child and exits; once any root `ns-run` (any other container's monitor)
/// gets that pid, root's containers on the tree are "busy". (A user who holds such stale
/// locks over the whole pid range keeps root off the tree while any container runs.) Here
/// the pid is given to a root process named ns-run through ns_last_pid.
#[test]
fn a_stale_pid_in_proc_locks_does_not_make_a_tree_busy() {
    let t = Tree::rootfs("rv2-stalelock");
    let out = in_fresh_run(
        &t,
        r#"chmod 0755 "$BASE" "$TREE"
cleanup() { [ -n "$p" ] && kill "$p" 2>/dev/null; [ -s "$BASE/holder" ] && kill "$(cat "$BASE/holder")" 2>/dev/null; true; }
trap cleanup EXIT
p=
setpriv --reuid=65534 --regid=65534 --clear-groups flock -s "$TREE" sh -c 'echo $$; exec sleep 120' </dev/null >"$BASE/holder" 2>/dev/null &
locker=$!
ino=$(stat -c %i "$TREE")
i=0; until grep -q ":$ino " /proc/locks && [ -s "$BASE/holder" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
kill -9 "$locker"; wait "$locker" 2>/dev/null || true
grep ":$ino " /proc/locks | sed "s/^/lock: /"
cp /bin/sleep "$BASE/ns-run"
i=0
while [ $i -lt 300 ]; do
  echo $((locker - 1)) > /proc/sys/kernel/ns_last_pid
  "$BASE/ns-run" 120 </dev/null >/dev/null 2>&1 & p=$!
  [ "$p" = "$locker" ] && break
  kill "$p"; wait "$p" 2>/dev/null || true; p=; i=$((i+1))
done
echo "reused: ${p:-no}"
rc=0; "$NS_RUN" --register=no -q -D "$TREE" true </dev/null 2>"$BASE/err" || rc=$?
echo "root: $rc $(cat "$BASE/err")"
"#,
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(
        !out.stdout.contains("reused: no"),
        "the pid was never reused: {out}"
    );
    assert!(out.stdout.contains("root: 0 \n"), "{out}");
}

/// The container's /etc/passwd is a FIFO when the host's root runs `ns-ctl shell NAME USER`
/// (or `ns-oci exec` with a `process.user`, which always looks the user up): ns-caps reads
/// it before forking the command, in a process outside the container's PID namespace that
/// still holds the host's privileges: blocked there, nothing in the container can kill it,
/// ns-ctl never returns, and the container's cgroups can never be removed. The FIFO (and
/// /dev/zero, and a huge file) must be refused without blocking.
#[test]
fn a_fifo_as_etc_passwd_does_not_hang_the_entering_process() {
    let t = Tree::rootfs("rv2-fifo");
    let name = ns_tests::unique("rv2-fifo");
    let c = ns_tests::registered_sh(
        &t,
        &name,
        &[],
        "rm -f /etc/passwd && mkfifo /etc/passwd && echo ready; exec sleep 100",
    );
    let running = spawn_until(c, "ready");
    let mut shell = Command::new(bin("ns-ctl"));
    shell
        .args(["shell", &name, "root", "--", "true"])
        .env_remove("NS_DEBUG");
    let res = ns_tests::spawn(shell, None).wait_for(std::time::Duration::from_secs(20));
    // A reader still blocked in there is set free (a writer comes and goes), so that the
    // container can end.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(t.path().join("etc/passwd"));
    }
    running.signal(libc::SIGKILL);
    let _ = running.wait();
    let out = res.unwrap_or_else(|o| panic!("ns-ctl shell hung on the FIFO: {o}"));
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("--user=root"), "{out}");
}

/// Container root mounts cgroup2 (its cgroup namespace's root is its payload cgroup) and
/// makes a child cgroup called `tasks` there: the entering process must still join through
/// cgroup.procs (a cgroup2 directory has no `tasks` file of its own), or `ns-ctl shell`
/// fails for good ("cannot join cgroup"). Only where the host mounts cgroup2 (hybrid or
/// unified).
#[test]
fn a_cgroup_named_tasks_does_not_keep_ns_ctl_shell_out() {
    let has_v2 = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    if !has_v2 {
        eprintln!("skipped: no cgroup2 hierarchy on this host");
        return;
    }
    let t = Tree::rootfs("rv2-tasks");
    let name = ns_tests::unique("rv2-tasks");
    let c = ns_tests::registered_sh(
        &t,
        &name,
        &[],
        "mkdir -p /tmp/u && mount -t cgroup2 none /tmp/u && mkdir /tmp/u/tasks && \
             echo ready; exec sleep 100",
    );
    let running = spawn_until(c, "ready");
    let mut shell = Command::new(bin("ns-ctl"));
    shell
        .args(["shell", &name, "--", "echo", "inside"])
        .env_remove("NS_DEBUG");
    let out = run_cmd(shell, None);
    running.signal(libc::SIGKILL);
    let _ = running.wait();
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "inside\n", "{out}");
}

/// What the command gets of the caller's environment is still what it asks for: `-E VAR`
/// (its value from the caller), `-E VAR=VALUE`, and TERM, with the stage's environment
/// scrubbed.
#[test]
fn ns_ctl_shell_passes_what_is_asked_of_the_callers_environment() {
    let t = Tree::rootfs("rv2-envok");
    let name = ns_tests::unique("rv2-envok");
    let c = ns_tests::registered_sleeper(&t, &name, &[]);
    let running = spawn_until(c, "ready");
    let mut shell = Command::new(bin("ns-ctl"));
    shell
        .env_remove("NS_DEBUG")
        .env("RV2_ASKED", "from-caller")
        .env("RV2_NOT_ASKED", "hidden")
        .env("TERM", "vt220")
        .args([
            "shell",
            &name,
            "-E",
            "RV2_ASKED",
            "-E",
            "RV2_SET=given",
            "--",
        ])
        .args([
            "sh",
            "-c",
            "echo $RV2_ASKED $RV2_SET $TERM x${RV2_NOT_ASKED}x",
        ]);
    let out = run_cmd(shell, None);
    running.signal(libc::SIGKILL);
    let _ = running.wait();
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "from-caller given vt220 xx\n", "{out}");
}
