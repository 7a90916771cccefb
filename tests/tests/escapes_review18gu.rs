//! Review of issue 18's `-U` inside a guest and of the tree the monitor hands down under
//! `-U` (ownership `auto`, `pick` on a shifted tree, the monitor's procfs): what container
//! root, or a local user who lays out a tree, can do with it.

use std::fs;
use std::path::Path;

use ns_tests::{sh_in, snapshot, Output, Tree};

/// Container root tries to lift the read-only flag of `/` (and of `/usr`) and to write
/// there. Prints what worked.
const TRY_WRITE_ROOT: &str = "\
    mount -o remount,bind,rw / 2>/dev/null && echo root_lifted\n\
    touch /written 2>/dev/null && echo root_written\n\
    mount -o remount,bind,rw /usr 2>/dev/null && echo usr_lifted\n\
    touch /usr/written 2>/dev/null && echo usr_written\n\
    echo done";

fn assert_nothing_lifted(what: &str, out: &Output) {
    assert_none_of(
        what,
        out,
        &["root_lifted", "root_written", "usr_lifted", "usr_written"],
    );
}

fn assert_none_of(what: &str, out: &Output, lifts: &[&str]) {
    assert_eq!(out.code, 0, "{what}: {out}");
    assert!(out.stdout.contains("done"), "{what}: {out}");
    for lifted in lifts {
        assert!(!out.stdout.contains(lifted), "{what}: {lifted}\n{out}");
    }
}

/// Part B: with `-U --read-only` the tree was handed down writable and made read-only by
/// ns-mount inside the user namespace, where the kernel does not lock a flag: container root
/// lifted it (`mount -o remount,bind,rw /`) and wrote the tree. nspawn makes the root
/// read-only before the user namespace's mount namespace is copied: refused there.
#[test]
fn read_only_root_stays_read_only_under_userns() {
    let t = Tree::rootfs("rogu");
    let before = snapshot(t.path());
    let out = sh_in(&t, &["-U", "--read-only"], TRY_WRITE_ROOT);
    assert_nothing_lifted("-U --read-only", &out);
    ns_tests::assert_snapshot_unchanged(t.path(), &before);
}

/// `--volatile=state` (the tree read-only, a tmpfs /var) and `--volatile=yes` (a tmpfs root,
/// writable, with the tree's /usr, read-only): the same under `-U`, as nspawn's.
#[test]
fn volatile_read_only_parts_stay_read_only_under_userns() {
    let t = Tree::rootfs("vogu");
    let before = snapshot(t.path());
    let out = sh_in(&t, &["-U", "--volatile=state"], TRY_WRITE_ROOT);
    assert_nothing_lifted("-U --volatile=state", &out);
    ns_tests::assert_snapshot_unchanged(t.path(), &before);
    let m = Tree::merged_usr("vygu");
    let before = snapshot(m.path());
    let out = sh_in(&m, &["-U", "--volatile=yes"], TRY_WRITE_ROOT);
    assert_none_of("-U --volatile=yes", &out, &["usr_lifted", "usr_written"]);
    ns_tests::assert_snapshot_unchanged(m.path(), &before);
}

/// A tree without the API directories (/proc, /sys, /dev, /run, /tmp) runs `-U --read-only`:
/// the monitor makes them on the host before the tree is read-only (as nspawn's outer child
/// does) and removes them after exit; nothing else of the tree changes.
#[test]
fn read_only_tree_without_mount_points_runs_under_userns_and_is_left_as_it_was() {
    let t = Tree::rootfs("mpgu");
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        fs::remove_dir(t.path().join(d)).unwrap();
    }
    let before = snapshot(t.path());
    let out = sh_in(
        &t,
        &["-U", "--read-only"],
        "ls -d /proc/self /sys/kernel /dev/null /run /tmp && touch /tmp/ok && echo ran",
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("ran"), "{out}");
    ns_tests::assert_snapshot_unchanged(t.path(), &before);
    assert!(!Path::new(&t.path().join("proc")).exists());
}

/// Without `-U` container root holds the host's CAP_SYS_ADMIN: `--read-only` protects the
/// tree from the payload's mistakes, not from container root, which remounts `/` read-write
/// as under nspawn (seen: `systemd-nspawn --read-only` lets it, `-U --read-only` not).
#[test]
fn read_only_without_userns_is_not_a_boundary_as_with_nspawn() {
    let t = Tree::rootfs("ronu");
    let out = sh_in(&t, &["--read-only"], TRY_WRITE_ROOT);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("root_lifted"), "{out}");
}
