//! dm-verity (`-i` with `--root-hash=`, `--root-hash-sig=`, `--verity-data=` and the sidecar
//! files) in a VM: the hosts CI runs on have no device-mapper, so `tests/vm/verity.sh`
//! boots Debian's stock kernel under qemu with the toolkit's binaries and images it made,
//! runs each case there and prints what happened; this reads it. On the host itself (no
//! device-mapper) the same options fail with one line (`images.rs`).

/// Case `name` of the VM's console (see [`ns_tests::vm_case`]).
fn case<'a>(console: &'a str, name: &str) -> (i32, Vec<&'a str>, &'a str) {
    ns_tests::vm_case(console, name, "  dm: ")
}

#[test]
fn verity_images_run_checked_and_bad_ones_fail_in_a_vm() {
    let console = ns_tests::vm_console("verity.sh");
    let ok = |name: &str, want: &[&str]| {
        let (rc, lines, left) = case(&console, name);
        assert_eq!((rc, lines.as_slice()), (0, want), "{name}:\n{console}");
        assert_eq!(left, "0 loop: 0", "{name}: left behind\n{console}");
    };
    let fails = |name: &str, rc: i32, needle: &str| {
        let (got, lines, left) = case(&console, name);
        assert_eq!(got, rc, "{name}:\n{console}");
        assert_eq!(lines.len(), 1, "{name}: not one line\n{console}");
        assert!(lines[0].contains(needle), "{name}: {lines:?}");
        assert_eq!(left, "0 loop: 0", "{name}: left behind\n{console}");
    };
    // NAME.roothash and NAME.verity beside a plain squashfs image.
    ok("sidecars", &["verified content"]);
    // A GPT image: root and root-verity partitions, --root-hash= on the command line.
    ok("gpt", &["verified content"]);
    // -x puts a writable layer on top; the image itself stays read-only.
    ok("ephemeral", &["x", "verified content"]);
    fails("readonly", 1, "Read-only file system");
    // A block changed after the hash tree was made: reading it fails, as dm-verity does.
    fails("tampered", 125, "I/O error");
    fails("wronghash", 125, "does not match the root hash");
    fails(
        "nohashdata",
        125,
        "--verity-data=/img/missing: No such file or directory",
    );
    fails("badsig", 125, "the kernel refuses the root hash signature");
    // Partitions verity does not cover, a superblock that overflows, a FIFO for the data.
    fails(
        "withusr",
        125,
        "only the root partition is verified, and its /usr partition",
    );
    fails("huge", 125, "describes more blocks than the partition has");
    fails(
        "fifo",
        125,
        "/img/fifo: not a regular file or a block device",
    );
    // A start killed with its verity device made but not yet mounted leaves it (and its
    // loop devices); the next one removes it.
    assert!(console.contains("after kill: dm 1"), "{console}");
    ok("collected", &["verified content"]);
}
