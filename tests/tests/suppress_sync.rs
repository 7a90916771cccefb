//! `--suppress-sync=yes` (and `SuppressSync=` in a .nspawn file): the sync calls succeed
//! without doing anything, opens asking for synchronous writes fail, as nspawn 252 does it.
//! `ns-probe sync` (tests/probe.rs) makes each call and prints what the kernel answered;
//! nspawn runs the same probe on the same tree.

use ns_tests::{bin, ns_run, run_cmd, Tree};

fn tree(name: &str) -> Tree {
    let t = Tree::rootfs(name);
    std::fs::copy(bin("ns-probe"), t.path().join("bin/ns-probe")).unwrap();
    t
}

/// `ns-probe sync`'s lines under ns-run with `opts`.
fn ours(t: &Tree, opts: &[&str]) -> String {
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .args(opts)
        .args(["ns-probe", "sync"]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{opts:?}: {out}");
    out.stdout
}

/// The same under systemd-nspawn.
fn nspawns(t: &Tree, opts: &[&str]) -> String {
    let mut c = ns_tests::nspawn_in(t);
    c.args(opts).args(["/bin/ns-probe", "sync"]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "nspawn {opts:?}: {out}");
    out.stdout
}

#[test]
fn sync_calls_answer_as_under_nspawn() {
    let t = tree("suppress-sync");
    let suppressed = ours(&t, &["--suppress-sync=yes"]);
    for line in [
        "fsync ok",
        "fsync-closed-fd ok",
        "msync-bad-address ok",
        "open-O_SYNC EINVAL",
        "openat-O_DSYNC EINVAL",
        "openat-plain ok",
        "openat2-O_SYNC ENOSYS",
    ] {
        assert!(
            suppressed.lines().any(|l| l == line),
            "{line}:\n{suppressed}"
        );
    }
    assert_eq!(suppressed, nspawns(&t, &["--suppress-sync=yes"]));
    // Off (the default, and said so): the kernel's own answers.
    let plain = ours(&t, &[]);
    assert!(
        plain.lines().any(|l| l == "fsync-closed-fd EBADF"),
        "{plain}"
    );
    assert!(plain.lines().any(|l| l == "open-O_SYNC ok"), "{plain}");
    assert_eq!(ours(&t, &["--suppress-sync=no"]), plain);
    assert_eq!(plain, nspawns(&t, &[]));
}

#[test]
fn without_a_filter_it_does_nothing_as_in_nspawn() {
    let t = tree("suppress-sync-nofilter");
    let mut c = ns_run();
    t.tag(&mut c).env("SYSTEMD_SECCOMP", "0").args([
        "-q",
        "-D",
        t.arg(),
        "--suppress-sync=yes",
        "ns-probe",
        "sync",
    ]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.lines().any(|l| l == "fsync-closed-fd EBADF"),
        "{out}"
    );
}

#[test]
fn a_settings_file_suppresses_sync_too() {
    let t = tree("suppress-sync-file");
    let name = t.path().file_name().unwrap().to_string_lossy().into_owned();
    let file = t.path().parent().unwrap().join(format!("{name}.nspawn"));
    std::fs::write(&file, "[Exec]\nSuppressSync=yes\n").unwrap();
    let out = ours(&t, &["--settings=trusted"]);
    let _ = std::fs::remove_file(&file);
    assert!(out.lines().any(|l| l == "fsync-closed-fd ok"), "{out}");
}

#[test]
fn a_bad_value_is_one_line() {
    let t = tree("suppress-sync-bad");
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg(), "--suppress-sync=maybe"])
        .arg("/bin/true");
    let out = run_cmd(c, None);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        ["ns-run: --suppress-sync=maybe: not a boolean"],
        "{out}"
    );
}
