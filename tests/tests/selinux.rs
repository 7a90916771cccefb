//! `-Z`/`--selinux-context=` and `-L`/`--selinux-apifs-context=` on a host without SELinux
//! (these): one line naming the reason, exit 125, before anything is set up; nspawn fails
//! on them here too (at the first label it applies). Where SELinux runs, the labels are
//! applied: `selinux_vm.rs` tests that in a VM.

use ns_tests::{ns_run, run_cmd, Tree};
use std::process::Command;

#[test]
fn selinux_labels_fail_with_one_line_where_selinux_is_off() {
    let t = Tree::rootfs("selinux");
    if std::path::Path::new("/sys/fs/selinux/enforce").exists() {
        // SELinux runs here: the labels are applied (whether this host's policy knows this
        // one is its own business); selinux_vm.rs tests that.
        return;
    }
    for (opt, long) in [
        ("-Z", "--selinux-context"),
        ("-L", "--selinux-apifs-context"),
    ] {
        let label = "system_u:object_r:container_file_t:s0";
        let mut c = ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg(), opt, label, "/bin/true"]);
        let out = run_cmd(c, None);
        let why = "SELinux is not enabled on this host (no /sys/fs/selinux)";
        assert_eq!(out.code, 125, "{opt}: {out}");
        assert_eq!(
            out.stderr_lines(),
            [format!("ns-run: {long}={label}: {why}")],
            "{opt}: {out}"
        );
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "-q",
                "--register=no",
                "--keep-unit",
                "-D",
                t.arg(),
                opt,
                label,
            ])
            .arg("/bin/true")
            .output()
            .expect("systemd-nspawn runs");
        assert!(!nspawn.status.success(), "nspawn {opt}: {nspawn:?}");
    }
}

/// A label that would end the quoted mount option or the line it is written as is refused
/// before anything else (on any host).
#[test]
fn labels_with_quotes_or_control_characters_are_refused() {
    let t = Tree::rootfs("selinux-bad");
    for (opt, label) in [
        ("--selinux-apifs-context", "x\",mode=777"),
        ("--selinux-context", "a:b:c:s0\nx"),
        ("--selinux-context", ""),
    ] {
        let mut c = ns_run();
        t.tag(&mut c)
            .args(["-q", "-D", t.arg(), &format!("{opt}={label}"), "/bin/true"]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{opt}: {out}");
        assert!(out.stderr.contains("not an SELinux label"), "{opt}: {out}");
    }
}
