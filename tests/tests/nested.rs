//! The toolkit on hosts of other kinds, built here: a booted Debian with systemd as PID 1,
//! the system bus and machined ([`ns_tests::Guest`]), with the cgroup layout nspawn picks
//! for this host (hybrid) or pure cgroup2, and the toolkit's binaries bound read-only.

use ns_tests::{booting_tree, Guest, GuestCgroups, Tree, GUEST_BIN};

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

// ---------------------------------------------------------------------------------------
// cgroupfs (issue 18, items 2 and 3): ns-run inside the guest, which sees nspawn's layout
// (hybrid: v1 controllers read-only, name=systemd and cgroup2 writable; unified: cgroup2
// writable) under the guest's system call filter (no bpf). Each case is asserted as the
// guest's /sys/fs/cgroup says it must go.

/// Whether the guest offers controller `ctl` writable to the cgroup ns-run makes beside its
/// own: its v1 hierarchy is writable, or cgroup2 is and has it.
fn guest_writable(g: &Guest, ctl: &str) -> bool {
    let out = g.sh_ok(&format!(
        "v2=/sys/fs/cgroup; [ -e $v2/cgroup.controllers ] || v2=/sys/fs/cgroup/unified; \
         if [ -d /sys/fs/cgroup/{ctl} ] && [ -w /sys/fs/cgroup/{ctl} ]; then echo yes; \
         elif [ -w $v2 ] && grep -qw {ctl} $v2/cgroup.controllers; then echo yes; \
         else echo no; fi"
    ));
    out.trim() == "yes"
}

/// The cgroups ns-run left in the guest (none once its containers are gone).
fn ns_run_cgroups_in(g: &Guest) -> String {
    g.sh_ok("find /sys/fs/cgroup -maxdepth 3 -type d -name 'ns-run-*'")
}

/// `--property=prop` (`ctl`'s `file`, read back as `want`) for a container in the guest: in
/// force while it runs where the guest has `ctl` writable, else refused with one line.
fn guest_property(g: &Guest, prop: &str, ctl: &str, file: &str, want: &str) {
    let key = prop.split('=').next().unwrap();
    if !guest_writable(g, ctl) {
        let out = g.sh(&format!("ns-run -q --property={prop} -D /srv/bb /bin/true"));
        assert_eq!(out.code, 125, "{prop}: {out}");
        assert_eq!(
            out.stderr_lines(),
            [format!(
                "ns-run: --property={key}: no {ctl} controller is writable here"
            )],
            "{out}"
        );
        return;
    }
    let wait = |f: &str| {
        format!("i=0; while [ ! -e {f} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done")
    };
    let out = g.sh_ok(&format!(
        "rm -rf /run/lim; mkdir /run/lim; \
         ns-run -q -M lim --property={prop} --bind=/run/lim:/out -D /srv/bb /bin/sh -c \
           'touch /out/up; {}' & \
         {}; cat /sys/fs/cgroup/ns-run-lim-*/{file} /sys/fs/cgroup/*/ns-run-lim-*/{file} \
           2>/dev/null | head -1; touch /run/lim/stop; wait $!; echo rc=$?",
        wait("/out/stop"),
        wait("/run/lim/up")
    ));
    assert_eq!(out, format!("{want}\nrc=0\n"), "{prop}");
}

fn ns_run_works_in_the_guest(cgroups: GuestCgroups) {
    let bb = Tree::rootfs("nest-bb");
    let booting = booting_tree("nest-boot", "reboot -f\n");
    let g = Guest::boot(
        "nest-cg",
        cgroups,
        &[
            &format!("--bind={}:/srv/bb", bb.arg()),
            &format!("--bind={}:/srv/boot", booting.arg()),
        ],
    );
    // A payload runs, under the guest's device policy: the guest's filter refuses bpf(),
    // and its v1 devices controller (hybrid) is read-only. One line says so; -q none.
    let out = g.sh("ns-run -D /srv/bb /bin/echo RAN");
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "RAN\n", "{out}");
    assert_eq!(
        out.stderr_lines(),
        ["ns-run: no device policy of its own for the container (BPF_PROG_LOAD of its eBPF filter: Operation not permitted): it has the one ns-run runs under"],
        "{out}"
    );
    assert_eq!(g.sh("ns-run -q -D /srv/bb /bin/echo RAN").ok(), "RAN\n");
    assert_eq!(ns_run_cgroups_in(&g), "");
    guest_property(&g, "MemoryMax=64M", "memory", "memory.max", "67108864");
    guest_property(&g, "TasksMax=20", "pids", "pids.max", "20");
    assert_eq!(ns_run_cgroups_in(&g), "");
    // An init booted inside: its cgroup in name=systemd (hybrid) or cgroup2 (unified), which
    // the guest has writable; `reboot -f` gives 133.
    let out = g.sh("ns-run -q -b -D /srv/boot >/dev/null; echo rc=$?");
    assert_eq!(out.stdout, "rc=133\n", "{out}");
    assert_eq!(ns_run_cgroups_in(&g), "");
    let off = g.poweroff();
    assert_eq!(off.code, 0, "{off}");
}

#[test]
fn ns_run_works_in_a_hybrid_guest() {
    ns_run_works_in_the_guest(GuestCgroups::Host);
}

#[test]
fn ns_run_works_in_a_pure_cgroup2_guest() {
    ns_run_works_in_the_guest(GuestCgroups::Unified);
}
