//! Review of issue 17 (ns-oci follows config.json): what an image or a container process
//! can do to the host through the new host-side code.

use std::fs;
use std::path::Path;
use std::process::Command;

use ns_tests::{host_mounts_under, reap, s, OciBundle, Tree};
use serde_json::{json, Value};

/// Finding 1: the missing mount points (/data/a and /data/a/victim) made for the
/// container (by the host in a user namespace, by ns-mount and reported (SYNC-4) without
/// one) were removed by `delete` by path. A container root owning /data (an image chowned to
/// its range; any image root owns without a user namespace) renames /data/a away and puts a
/// symlink to a host directory in its place: delete then removed the host's file `victim`
/// there.
#[test]
fn delete_never_removes_through_a_symlink_the_container_put_in_place_of_a_mount_point() {
    for userns in [false, true] {
        let outside = Tree::empty("r17-mp-outside");
        let target = outside.host_dir("etc");
        fs::write(target.join("victim"), "host file\n").unwrap();
        let script = format!(
            "mv /data/a /data/a2 && ln -s {} /data/a && echo swapped",
            target.display()
        );
        let b = OciBundle::plain("r17-mp", &["sh", "-c", &script], |v| {
            if userns {
                ns_tests::oci_userns(v);
            }
            v["root"]["readonly"] = json!(false); // as docker and containerd give it
            v["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/data/a/victim", "type": "tmpfs", "source": "tmpfs"}));
        });
        let rootfs = b.tree.path().join("rootfs");
        fs::create_dir(rootfs.join("data")).unwrap();
        if userns {
            // The image's /data belongs to the container's root (host id 200000).
            std::os::unix::fs::chown(rootfs.join("data"), Some(200000), Some(200000)).unwrap();
        }
        let id = ns_tests::unique("r17-mp");
        let (status, out, err) = b.run_to_end(&id);
        assert_eq!((status, out.as_str()), (0, "swapped\n"), "{err}");
        assert_eq!(b.oci(&["delete", &id]).0, 0);
        assert!(
            Path::new(&target.join("victim")).exists(),
            "userns {userns}: delete removed a host file through the container's symlink"
        );
    }
}

/// The same swap with the bundle named through a symlink (`--bundle` as the caller gives it,
/// e.g. under a symlinked /var/run): ns-mount reports the mount points it made by their
/// resolved host path, which is not below the rootfs as config.json names it, and delete
/// removed those by path: through the container's symlink, the host's file `victim`.
#[test]
fn delete_never_removes_through_a_symlink_with_the_bundle_reached_through_one() {
    let outside = Tree::empty("r17-mpl-outside");
    let target = outside.host_dir("etc");
    fs::write(target.join("victim"), "host file\n").unwrap();
    let script = format!(
        "mv /data/a /data/a2 && ln -s {} /data/a && echo swapped",
        target.display()
    );
    let b = OciBundle::plain("r17-mpl", &["sh", "-c", &script], |v| {
        v["root"]["readonly"] = json!(false);
        v["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/data/a/victim", "type": "tmpfs", "source": "tmpfs"}));
    });
    fs::create_dir(b.tree.path().join("rootfs/data")).unwrap();
    let link = outside.path().join("bundle");
    std::os::unix::fs::symlink(b.tree.path(), &link).unwrap();
    let id = ns_tests::unique("r17-mpl");
    let pid_file = b.out.join(format!("{id}.pid"));
    let out = fs::File::create(b.out.join(format!("{id}.stdout"))).unwrap();
    let st = b
        .cmd(&[
            "create",
            "--bundle",
            s(&link),
            "--pid-file",
            s(&pid_file),
            &id,
        ])
        .stdout(out)
        .status()
        .unwrap();
    assert!(st.success());
    let pid = b.pid(&id);
    assert_eq!(b.oci(&["start", &id]).0, 0);
    assert_eq!(reap(pid), 0);
    assert_eq!(b.stdout_of(&id), "swapped\n");
    assert_eq!(b.oci(&["delete", &id]).0, 0);
    assert!(
        target.join("victim").exists(),
        "delete removed a host file through the container's symlink"
    );
}

/// The capability sets of a payload run with a seccomp filter and no_new_privs off (the
/// filter takes CAP_SYS_ADMIN, kept permitted until just before exec): a config that does
/// not grant CAP_SYS_ADMIN never leaves it to the payload, root or not, nor to what it runs
/// setuid-root (the bounding set).
#[test]
fn a_filter_without_no_new_privs_leaves_no_cap_sys_admin_to_the_payload() {
    const ADMIN: u64 = 1 << 21;
    for (uid, ambient) in [(0, false), (1000, false), (1000, true)] {
        let args = ["sh", "-c", "grep ^Cap /proc/self/status"];
        let b = OciBundle::plain("r17-caps", &args, |v| {
            v["process"]["noNewPrivileges"] = json!(false);
            v["process"]["user"] = json!({"uid": uid, "gid": uid});
            if ambient {
                let c = v["process"]["capabilities"]["bounding"].clone();
                v["process"]["capabilities"]["ambient"] = c.clone();
                v["process"]["capabilities"]["inheritable"] = c.clone();
                v["process"]["capabilities"]["permitted"] = c.clone();
                v["process"]["capabilities"]["effective"] = c;
            }
            v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"action": "SCMP_ACT_ERRNO", "names": ["acct"]}]});
        });
        let id = ns_tests::unique("r17-caps");
        let (code, err) = b.create(&id);
        assert_eq!(code, 0, "{err}");
        let pid = b.pid(&id);
        assert_eq!(b.oci(&["start", &id]).0, 0);
        assert_eq!(reap(pid), 0);
        let out = fs::read_to_string(b.out.join(format!("{id}.stdout"))).unwrap();
        let sets: Vec<(String, u64)> = out
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.into(), u64::from_str_radix(v.trim(), 16).ok()?))
            })
            .collect();
        assert_eq!(sets.len(), 5, "{out}");
        let eff = sets.iter().find(|(k, _)| k == "CapEff").unwrap().1;
        assert_eq!(
            eff != 0,
            uid == 0 || ambient,
            "the config's own sets: {out}"
        );
        for (k, v) in &sets {
            assert_eq!(v & ADMIN, 0, "uid {uid}: {k} has CAP_SYS_ADMIN: {out}");
        }
        assert_eq!(b.oci(&["delete", &id]).0, 0);
    }
}

/// Finding 2: a createContainer hook (a host program, run in the container's namespaces
/// before pivot_root) inherited ns-mount's fds: the sync socket to ns-oci, the state memfd,
/// the sealed stage copies, the exec fifo. A hook that leaves a process behind (in the
/// container's PID namespace) kept them, where a container process that may ptrace it
/// reaches them. runc gives a hook its stdio only; so do we now, for every kind of hook.
#[test]
fn hooks_get_their_stdio_and_nothing_else() {
    let b = OciBundle::plain("r17-hook", &["true"], |_| {});
    let list = |f: &str| format!("ls -l /proc/self/fd/ > {}/{f}", b.out.display());
    let cfg = b.tree.path().join("config.json");
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    v["hooks"] = json!({
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", list("create")]}],
        "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", list("prestart")]}],
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", list("poststart")]}],
    });
    fs::write(&cfg, v.to_string()).unwrap();
    let id = ns_tests::unique("r17-hook");
    let (code, err) = b.create(&id);
    assert_eq!(code, 0, "{err}");
    let pid = b.pid(&id);
    assert_eq!(b.oci(&["start", &id]).0, 0);
    assert_eq!(reap(pid), 0);
    for kind in ["create", "prestart", "poststart"] {
        let fds = fs::read_to_string(b.out.join(kind)).unwrap();
        // (less ls's own fd of the directory it lists)
        let fds: Vec<&str> = fds
            .lines()
            .filter_map(|l| l.split_once(" -> "))
            .filter(|(_, to)| !to.ends_with("/fd"))
            .filter_map(|(l, _)| l.split_whitespace().last())
            .collect();
        assert_eq!(fds, ["0", "1", "2"], "hooks.{kind} inherited more: {fds:?}");
    }
    assert_eq!(b.oci(&["delete", &id]).0, 0);
}

/// Without a mount namespace the container's mounts are on its rootfs in our namespace. Its
/// process renames the directory holding one and puts a symlink to a host directory with a
/// mount of its own in its place: delete unmounts the container's (where it now is), and
/// nothing of the host's.
#[test]
fn without_a_mount_namespace_delete_follows_no_swap_of_the_container() {
    let outside = Tree::empty("r17-nomnt-outside");
    let host = outside.host_dir("host");
    fs::create_dir(host.join("a")).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "r17host", s(&host.join("a"))])
        .status()
        .unwrap();
    assert!(st.success());
    let script = format!(
        "mv /data /data2 && ln -s {} /data && echo swapped",
        host.display()
    );
    let b = OciBundle::plain("r17-nomnt", &["sh", "-c", &script], |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "mount");
        v["linux"]["maskedPaths"] = json!([]);
        v["linux"]["readonlyPaths"] = json!([]);
        v["root"]["readonly"] = json!(false);
        v["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/data/a", "type": "tmpfs", "source": "tmpfs"}));
    });
    let rootfs = b.tree.path().join("rootfs");
    fs::create_dir_all(rootfs.join("data/a")).unwrap();
    let id = ns_tests::unique("r17-nomnt");
    let (status, out, err) = b.run_to_end(&id);
    assert_eq!((status, out.as_str()), (0, "swapped\n"), "{err}");
    let (code, _, err) = b.oci(&["delete", &id]);
    let host_left = host_mounts_under(&host);
    let ours_left = host_mounts_under(&rootfs);
    let _ = Command::new("umount").arg(host.join("a")).status();
    assert_eq!(code, 0, "{err}");
    assert_eq!(host_left.len(), 1, "the host's mount was touched");
    assert!(ours_left.is_empty(), "left behind: {ours_left:?}");
}
