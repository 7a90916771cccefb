//! `-b`: the image's init as PID 1, systemd's container interface, and nspawn's exit codes
//! for reboot (133) and poweroff (0). Booted here with busybox's init, whose inittab the tests
//! write; booting systemd needs the cgroup set-up of a later change.

use std::path::Path;

use ns_tests::{host_mounts, run, wait_no_procs_in, Tree};

/// A busybox tree whose /sbin/init runs `script` once at boot.
fn booting_tree(name: &str, script: &str) -> Tree {
    let t = Tree::rootfs(name);
    std::fs::create_dir_all(t.path().join("sbin")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", t.path().join("sbin/init")).unwrap();
    std::fs::write(
        t.path().join("etc/inittab"),
        "::sysinit:/bin/sh /etc/boot.sh\n",
    )
    .unwrap();
    std::fs::write(t.path().join("etc/boot.sh"), script).unwrap();
    t
}

fn assert_clean(t: &Tree, before: &[String]) {
    let left = wait_no_procs_in(t.path(), std::time::Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
    assert_eq!(host_mounts(), before, "host mount table changed");
}

#[test]
fn reboot_inside_gives_133_and_the_container_interface_is_there() {
    let t = booting_tree(
        "boot-reboot",
        "echo pid=$$\n\
         echo manager=$(cat /run/host/container-manager)\n\
         echo uuid=$(cat /run/host/container-uuid)\n\
         echo machine-id=$(cat /etc/machine-id)\n\
         echo os=$(grep -c . /run/host/os-release)\n\
         touch /run/host/x 2>/dev/null || echo run-host-ro\n\
         tr '\\0' '\\n' < /proc/1/environ | grep -c ^LANG= || true\n\
         reboot -f\n",
    );
    let before = host_mounts();
    let out = run(&[
        "-D",
        t.arg(),
        "-b",
        "--uuid=0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(out.code, 133, "{out}");
    let s = &out.stdout;
    assert!(s.contains("pid="), "{out}");
    assert!(s.contains("manager=systemd-nspawn\n"), "{out}");
    assert!(
        s.contains("uuid=01234567-89ab-cdef-0123-456789abcdef\n"),
        "{out}"
    );
    assert!(
        s.contains("machine-id=0123456789abcdef0123456789abcdef\n"),
        "transient machine id: {out}"
    );
    assert!(
        s.contains("run-host-ro\n"),
        "/run/host must be read-only: {out}"
    );
    assert!(s.contains("\n0\n"), "a booted init gets no LANG: {out}");
    assert!(
        !t.path().join("etc/machine-id").exists(),
        "machine id mount point left in the image"
    );
    assert_clean(&t, &before);
}

#[test]
fn poweroff_and_halt_inside_give_0() {
    for cmd in ["poweroff -f", "halt -f"] {
        let t = booting_tree("boot-poweroff", &format!("{cmd}\n"));
        let out = run(&["-D", t.arg(), "-b"]);
        assert_eq!(out.code, 0, "{cmd}: {out}");
    }
}

#[test]
fn boot_without_an_init_and_bad_combinations() {
    let t = Tree::rootfs("boot-noinit");
    assert!(!Path::new(&t.path().join("sbin/init")).exists());
    let out = run(&["-D", t.arg(), "-b"]);
    assert_eq!(out.code, 127, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    assert!(
        out.stderr
            .contains("/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init"),
        "{out}"
    );
    let out = run(&["-D", t.arg(), "-b", "-a"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr
            .contains("--boot and --as-pid2 may not be combined"),
        "{out}"
    );
}
