//! Review of issue 18's host paths under `-U` (the monitor opens the tree, bind sources and
//! overlay layers on the host and hands them down as mounts): what a container root can do
//! with what it is handed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ns_tests::{run_cmd, s, sh_in, HostTmpfs, Output, Tree};

/// A tmpfs on the host at `at`, writable by anyone, then made read-only as a mount (the
/// file system itself stays writable): a host mount whose read-only flag is all that keeps
/// a container from writing there.
fn host_read_only_mount(at: &Path) -> HostTmpfs {
    let m = HostTmpfs::mount(at);
    fs::set_permissions(at, fs::Permissions::from_mode(0o1777)).unwrap();
    let st = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "remount {} read-only", at.display());
    m
}

/// A fixed 64K-aligned id range for ownership `off` (the tree keeps its ids, so the root
/// is cloned with its submounts), apart from hostpaths.rs's and from this process's others
/// (ns-run refuses a range in use: a clash shows as a clear failure).
fn fixed_range() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
    let base = 0x5000_0000 + ((std::process::id() % 0x200) * 8 + n) * 0x10000;
    format!("--private-users={base}:65536")
}

/// Tries, in a container, to undo what keeps it from host files: unmount a host submount
/// (to see what it covers), lift a host mount's read-only flag, lift the read-only flag of a
/// `--bind-ro`. Prints what worked.
const TRY_UNLOCK: &str = "\
    umount /b/sub 2>/dev/null && echo sub_unmounted; echo \"sub=$(ls /b/sub)\"\n\
    mount -o remount,bind,rw /b/ro 2>/dev/null && echo hostro_lifted\n\
    touch /b/ro/x 2>/dev/null && echo hostro_written\n\
    mount -o remount,bind,rw /r 2>/dev/null && echo bindro_lifted\n\
    touch /r/w/x 2>/dev/null && echo bindro_written\n\
    echo done";

fn assert_still_locked(what: &str, out: &Output) {
    assert_eq!(out.code, 0, "{what}: {out}");
    assert!(out.stdout.contains("done"), "{what}: {out}");
    for lifted in [
        "sub_unmounted",
        "hostro_lifted",
        "hostro_written",
        "bindro_lifted",
        "bindro_written",
    ] {
        assert!(!out.stdout.contains(lifted), "{what}: {lifted}\n{out}");
    }
    assert!(
        out.stdout.contains("sub=shown"),
        "{what}: the host's submount is not what /b/sub shows\n{out}"
    );
}

/// Finding 1: a bind source's clone, made by host root in the host's mount namespace and
/// attached in the container's, carried none of the kernel's locks: container root could
/// unmount the host's submounts below an rbind (and see what they cover), lift the
/// read-only flag of a host mount below it and write there, and lift a `--bind-ro`'s. Before
/// the change, ns-mount bound the source in its own mount namespace, a copy the kernel
/// locks for the user namespace (only `--bind-ro` could be lifted); nspawn's binds are made
/// before its user namespace's mount namespace is copied: all locked.
#[test]
fn binds_handed_down_under_userns_keep_the_kernel_s_locks() {
    let t = Tree::rootfs("r18-lock-bind");
    let src = t.host_dir("src");
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/hidden"), "").unwrap();
    let w = src.join("w");
    fs::create_dir(&w).unwrap();
    fs::set_permissions(&w, fs::Permissions::from_mode(0o1777)).unwrap();
    let _sub = HostTmpfs::mount(&src.join("sub"));
    fs::write(src.join("sub/shown"), "").unwrap();
    let _ro = host_read_only_mount(&src.join("ro"));
    // Mount points made beforehand: with ownership off, container root may not create them
    // in a tree host root owns (nspawn's outer child does, as host root).
    for d in ["b", "r"] {
        fs::create_dir(t.path().join(d)).unwrap();
    }
    let b = format!("--bind={}:/b", src.display());
    let r = format!("--bind-ro={}:/r", src.display());
    for opts in [vec!["-U"], vec![fixed_range().leak() as &str]] {
        let mut all = opts.clone();
        all.extend([b.as_str(), r.as_str(), "-q"]);
        let out = sh_in(&t, &all, TRY_UNLOCK);
        assert_still_locked(&format!("{opts:?}"), &out);
        assert!(
            !src.join("ro/x").exists(),
            "{opts:?}: wrote below a host ro mount"
        );
        assert!(!w.join("x").exists(), "{opts:?}: wrote through --bind-ro");
    }
    // nspawn: the same refusals.
    let mut c = Command::new("systemd-nspawn");
    c.args(["-q", "--register=no", "--keep-unit", "-D", t.arg()])
        .args([fixed_range().as_str(), b.as_str(), r.as_str()])
        .args(["/bin/sh", "-c", TRY_UNLOCK]);
    assert_still_locked("nspawn", &run_cmd(c, None));
}

/// Finding 1 for the tree: cloned with its submounts by host root (ownership off), a host
/// read-only mount inside the tree could be made writable, or unmounted.
#[test]
fn the_tree_handed_down_under_userns_keeps_the_kernel_s_locks() {
    let t = Tree::rootfs("r18-lock-tree");
    let ro = t.path().join("srv/ro");
    let _ro = host_read_only_mount(&ro);
    fs::write(t.path().join("srv/marker"), "").unwrap();
    let script = "\
        mount -o remount,bind,rw /srv/ro 2>/dev/null && echo hostro_lifted\n\
        touch /srv/ro/x 2>/dev/null && echo hostro_written\n\
        umount /srv/ro 2>/dev/null && echo unmounted\n\
        echo done";
    let out = sh_in(&t, &[&fixed_range(), "-q"], script);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("done"), "{out}");
    for lifted in ["hostro_lifted", "hostro_written", "unmounted"] {
        assert!(!out.stdout.contains(lifted), "{lifted}\n{out}");
    }
    assert!(
        !ro.join("x").exists(),
        "wrote below a host ro mount: {}",
        s(&ro)
    );
}
