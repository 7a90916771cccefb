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

/// Container root (under `-U`) tries to get around /proc's masks and read-only parts: unmount
/// the masks over kcore and sysrq-trigger and use them, lift /proc/sys's read-only flag,
/// write a global sysctl (its own value back: harmless if it worked); and lists the sockets
/// it holds (the chain's sync socket must be gone at the payload's exec: no NeedProc after
/// setup). Prints what worked.
const TRY_PROC: &str = "\
    umount /proc/kcore 2>/dev/null; head -c 1 /proc/kcore >/dev/null 2>&1 && echo kcore_read\n\
    umount /proc/sysrq-trigger 2>/dev/null; echo h 2>/dev/null >/proc/sysrq-trigger && echo sysrq_written\n\
    mount -o remount,bind,rw /proc/sys 2>/dev/null && echo sys_lifted\n\
    umount /proc/sys 2>/dev/null\n\
    v=$(cat /proc/sys/kernel/printk_ratelimit)\n\
    echo \"$v\" 2>/dev/null >/proc/sys/kernel/printk_ratelimit && echo sysctl_written\n\
    for f in /proc/self/fd/*; do case $(readlink $f) in socket:*) echo \"socket=$f\";; esac; done\n\
    echo \"pid1=$(cat /proc/1/comm)\"\n\
    echo done";

/// `ns-run -q -U -D ROOT -- sh -c SCRIPT` in a mount namespace of its own where `setup`
/// (shell) ran first.
fn userns_in_own_ns(root: &Path, setup: &str, script: &str) -> Output {
    let before = ns_tests::our_mounts();
    let mut c = std::process::Command::new("unshare");
    c.env("NS_TESTS_TREE", root)
        .args(["-m", "--propagation", "slave", "sh", "-c"])
        .arg(format!("{setup} && exec \"$@\""))
        .arg("sh")
        .arg(ns_tests::bin("ns-run"))
        .args(["--register=no", "-q", "-U", "-D", ns_tests::s(root)])
        .args(["--", "/bin/sh", "-c", script]);
    let out = ns_tests::run_cmd(c, None);
    ns_tests::assert_no_leak(root, &before);
    out
}

/// NeedProc: the procfs the monitor makes (proc's pidns=, where the kernel refuses ns-mount
/// one: a /proc with a covered file, as inside another container) gives container root
/// nothing a procfs of its own does not: the same masks and read-only /proc/sys, and what
/// is under them stays out of reach (kcore, sysrq-trigger and global sysctls are host
/// root's). Both ways, the payload holds no socket of the chain.
#[test]
fn the_monitors_procfs_is_no_stronger_than_the_containers_own() {
    let t = Tree::rootfs("pcgu");
    let mut seen = Vec::new();
    for setup in ["true", "mount --bind /dev/null /proc/uptime"] {
        let out = userns_in_own_ns(t.path(), setup, TRY_PROC);
        assert_none_of(
            setup,
            &out,
            &["kcore_read", "sysrq_written", "sysctl_written", "socket="],
        );
        assert!(out.stdout.contains("pid1=sh"), "{setup}: {out}");
        seen.push(out.stdout);
    }
    // The same either way (/proc/sys's read-only flag is lifted in both, as under nspawn
    // -U: the bind is made inside the user namespace; what is under it stays host root's).
    assert_eq!(seen[0], seen[1]);
}

/// `pick` takes the range a tree's top is owned by (a tree chowned before): whoever owns a
/// tree's top (host root, or container root of an earlier container that could chown it
/// within its own range) steers a start into that range. While another container holds
/// the range, the start fails in one line and runs nothing: the range's lock is taken as
/// for any fixed range, never shared.
#[test]
fn a_tree_owned_into_a_running_containers_range_does_not_share_it() {
    let base = 0x6800_0000 + (std::process::id() % 0x200) * 0x10000;
    let a = Tree::rootfs("lkagu");
    let mut c = ns_tests::ns_run();
    a.tag(&mut c)
        .args([
            "-q",
            "-D",
            a.arg(),
            &format!("--private-users={base}:65536"),
        ])
        .args(["--", "sh", "-c", "echo ready; exec sleep 100"]);
    let b = Tree::rootfs("lkbgu");
    std::os::unix::fs::chown(b.path(), Some(base + 7), Some(base + 7)).unwrap();
    ns_tests::while_running(c, || {
        let out = sh_in(&b, &["-q", "-U"], "echo ran; cat /proc/self/uid_map");
        assert_eq!(out.code, 125, "{out}");
        assert!(!out.stdout.contains("ran"), "{out}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].contains("used by another container"), "{out}");
    });
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(b.path()).unwrap().uid(), base + 7);
}

/// `-U`'s chown (ownership `chown`, or `auto` where the file system takes no idmapped
/// mount) rewrote every inode met in the tree, hard links too: a file of the tree hard
/// linked from outside it (a host file linked in by whoever could, a `cp -al` clone's, an
/// ostree checkout's) took container root's ids outside the tree as well (nspawn's shift
/// does the same). Now such a file is left alone and the start fails in one line naming it;
/// the host file keeps its owner.
#[test]
fn chown_leaves_a_file_hard_linked_from_outside_the_tree() {
    use std::os::unix::fs::MetadataExt;
    let t = Tree::rootfs("hlgu");
    // The tree's busybox is a hard link to the shared fixture's: a copy of its own.
    let bb = t.path().join("bin/busybox");
    let copy = t.host_dir("bb").join("busybox");
    fs::copy(&bb, &copy).unwrap();
    fs::remove_file(&bb).unwrap();
    fs::rename(&copy, &bb).unwrap();
    let host_file = t.host_dir("host").join("secret");
    fs::write(&host_file, "host").unwrap();
    fs::hard_link(&host_file, t.path().join("etc/linked")).unwrap();
    let out = sh_in(
        &t,
        &["-q", "-U", "--private-users-ownership=chown"],
        "echo ran",
    );
    assert_eq!(out.code, 125, "{out}");
    assert!(!out.stdout.contains("ran"), "{out}");
    assert_eq!(
        out.stderr_lines(),
        [format!(
            "ns-run: cannot shift {}: {} has hard links outside the tree (1 of 2 inside): \
             shifting it would change the owner of those too",
            t.arg(),
            t.path().join("etc/linked").display()
        )],
        "{out}"
    );
    let md = fs::metadata(&host_file).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0), "the host file was chowned");
    assert_eq!(fs::metadata(t.path()).unwrap().uid(), 0);
}

/// `-U --read-only` with a mount point the tree lacks (a bind's destination): the tree is
/// read-only from the start, so it is not made: one line naming it, exit 125, and the API
/// mount points the monitor made for the start are gone again (nspawn 252 says "Failed to
/// create mount point …: Read-only file system", with or without -U).
#[test]
fn read_only_tree_without_a_binds_mount_point_fails_in_one_line_under_userns() {
    let t = Tree::rootfs("bdgu");
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        fs::remove_dir(t.path().join(d)).unwrap();
    }
    let src = t.host_dir("src");
    let before = snapshot(t.path());
    let bind = format!("--bind={}:/newdir", src.display());
    let out = sh_in(&t, &["-q", "-U", "--read-only", &bind], "echo ran");
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        ["ns-mount: cannot create mount point /newdir: Read-only file system"],
        "{out}"
    );
    ns_tests::assert_snapshot_unchanged(t.path(), &before);
}

/// `-U` without a network namespace of its own: the kernel refuses ns-mount a sysfs (it
/// belongs to the host's network namespace), and ns-mount bound the host's /sys instead,
/// read-only but not locked (made inside the user namespace) and with the host's mounts
/// below it: container root lifted the read-only flag and, unmounting its own
/// /sys/fs/cgroup, saw the host's cgroup hierarchies (other containers' cgroups and their
/// processes). nspawn mounts a sysfs of its own outside the user namespace, read-only:
/// locked, nothing below it. The monitor now makes that sysfs (SYNC-5 NeedSys).
#[test]
fn sys_under_userns_without_a_network_namespace_is_locked_and_hides_the_hosts_cgroups() {
    let t = Tree::rootfs("sygu");
    let out = sh_in(
        &t,
        &["-q", "-U"],
        "mount -o remount,bind,rw /sys 2>/dev/null && echo sys_lifted\n\
         touch /sys/x 2>/dev/null && echo sys_written\n\
         ls /sys/class/net | grep -q . && echo net_shown\n\
         umount -l /sys/fs/cgroup 2>/dev/null && echo cgroup_unmounted\n\
         echo \"below=$(ls /sys/fs/cgroup | tr '\\n' ' ')\"\n\
         echo done",
    );
    assert_none_of("-U", &out, &["sys_lifted", "sys_written"]);
    assert!(out.stdout.contains("net_shown"), "{out}");
    assert!(out.stdout.contains("cgroup_unmounted"), "{out}");
    assert!(
        out.stdout.contains("below=\n"),
        "the host's cgroups are shown: {out}"
    );
}
