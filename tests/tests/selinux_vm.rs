//! `-Z`/`--selinux-context=` and `-L`/`--selinux-apifs-context=` where SELinux is enabled, in
//! a VM: the hosts CI runs on have no SELinux, so `tests/vm/selinux.sh` boots Debian's stock
//! kernel under qemu with `security=selinux`, loads a minimal policy (tests/vm/selinux.cil,
//! compiled by secilc; permissive), runs each case there and prints what happened; this
//! reads it. On the host itself (no SELinux) the same options fail with one line
//! (`selinux.rs`).

/// Case `name` of the VM's console (see [`ns_tests::vm_case`]).
fn case<'a>(console: &'a str, name: &str) -> (i32, Vec<&'a str>, &'a str) {
    ns_tests::vm_case(console, name, "  left: ")
}

const CONTEXT: &str = "system_u:system_r:container_t:s0:c1,c2";

#[test]
fn selinux_labels_apply_and_bad_ones_fail_in_a_vm() {
    let console = ns_tests::vm_console("selinux.sh");
    assert!(
        console.contains("POLICY loaded enforce=0"),
        "SELinux did not start with the policy:\n{console}"
    );
    let nothing_left = "procs=0 mounts=0";
    let ok = |name: &str, want: &[&str]| {
        let (rc, lines, left) = case(&console, name);
        assert_eq!((rc, lines.as_slice()), (0, want), "{name}:\n{console}");
        assert_eq!(left, nothing_left, "{name}: left behind\n{console}");
    };
    let fails = |name: &str, needle: &str| {
        let (rc, lines, left) = case(&console, name);
        assert_eq!(rc, 125, "{name}:\n{console}");
        assert_eq!(lines.len(), 1, "{name}: not one line\n{console}");
        assert!(lines[0].contains(needle), "{name}: {lines:?}");
        assert_eq!(left, nothing_left, "{name}: left behind\n{console}");
    };
    // -Z: the payload runs with the label (and with -a too, ns-init labels its exec).
    ok("context", &[CONTEXT]);
    ok("aspid2", &[CONTEXT]);
    // Without -Z it keeps ours (the VM's init: the kernel's context).
    let (rc, lines, _) = case(&console, "nolabel");
    assert_eq!(rc, 0, "{console}");
    assert!(
        lines[0].starts_with("system_u:system_r:kernel_t:"),
        "{lines:?}"
    );
    // -L: the API tmpfs mounts and devpts carry context="..." (mqueue does not, as nspawn).
    let file = r#"context="system_u:object_r:container_file_t:s0:c1,c2""#;
    let mounts = [
        format!("/dev tmpfs {file}"),
        format!("/dev/pts devpts {file}"),
        format!("/dev/shm tmpfs {file}"),
        "/dev/mqueue mqueue none".to_string(),
        format!("/run tmpfs {file}"),
        format!("/tmp tmpfs {file}"),
    ];
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    ok("apifs", &mounts);
    let both: Vec<&str> = std::iter::once(CONTEXT).chain(mounts).collect();
    ok("both", &both);
    // A label the policy does not know: one line naming it, nothing left.
    fails(
        "bogus",
        "--selinux-context=bogus_u:bogus_r:bogus_t:s0: cannot set the exec label: Invalid argument",
    );
    fails(
        "bogusaspid2",
        "--selinux-context=bogus_u:bogus_r:bogus_t:s0: cannot set the exec label: Invalid argument",
    );
    fails(
        "bogusfs",
        r#"cannot mount tmpfs on /dev with context="bogus_u:object_r:bogus_t:s0": Invalid argument"#,
    );
}
