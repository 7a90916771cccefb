//! The toolkit on hosts of other kinds, built here: a booted Debian with systemd as PID 1,
//! the system bus and machined ([`ns_tests::Guest`]), with the cgroup layout nspawn picks
//! for this host (hybrid) or pure cgroup2, and the toolkit's binaries bound read-only.

use ns_tests::{Guest, GuestCgroups, GUEST_BIN};

fn guest_has_systemd_and_the_toolkit(cgroups: GuestCgroups, fs: &str) {
    let g = Guest::boot("nest-fix", cgroups, &[]);
    let out = g.sh_ok(&format!(
        "ns-run --version; stat -f -c %T /sys/fs/cgroup; \
         touch {GUEST_BIN}/x 2>/dev/null || echo bin-ro; machinectl list --no-legend | wc -l"
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ns-run "), "{out}");
    assert_eq!(lines[1..], [fs, "bin-ro", "0"], "{out}");
    let off = g.poweroff();
    assert_eq!(off.code, 0, "{off}");
}

#[test]
fn a_hybrid_guest_boots_with_the_toolkit_read_only() {
    guest_has_systemd_and_the_toolkit(GuestCgroups::Host, "tmpfs");
}

#[test]
fn a_pure_cgroup2_guest_boots_with_the_toolkit_read_only() {
    guest_has_systemd_and_the_toolkit(GuestCgroups::Unified, "cgroup2fs");
}
