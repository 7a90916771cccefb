//! Issue 15, a review of its fixes: what an attacker, or a user upgrading from an older
//! version, still meets after them.
//!
//! "First run after boot" (or after an upgrade) is simulated in a private mount namespace
//! with a fresh tmpfs on /run (`unshare -m`): the real /run/ns-run is never touched.

use std::process::Command;

use ns_tests::{bin, bin_dir, run_cmd, Output, Tree};

/// `script` (sh -e) in a private mount namespace whose /run is a fresh, empty tmpfs, with
/// $NS_RUN, $NS_CTL and the tree in $TREE, $BASE beside it.
fn in_fresh_run(t: &Tree, script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("unshare");
    c.process_group(0);
    c.args(["-m", "--propagation", "private", "sh", "-ec"])
        .arg(format!(
            "mount -t tmpfs -o mode=0755,size=8m ns-tests /run\n{script}"
        ))
        .env_remove("NS_DEBUG")
        .env_remove("NS_STAGE_FDS")
        .env("NS_RUN", bin("ns-run"))
        .env("NS_CTL", bin("ns-ctl"))
        .env("BIN", bin_dir())
        .env("TREE", t.path())
        .env("BASE", t.base());
    run_cmd(c, None)
}

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
    let m = format!("rv-caps-{}", std::process::id());
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
