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

// ---------------------------------------------------------------------------------------
// Host paths under -U (issue 18, item 1) in the guest: its /var/lib/machines is 0700, as on
// systemd hosts; the tree, a bind source and overlay layers live below it. The guest's root
// is an overlayfs (-x), which takes no idmapped mount: ownership auto falls back to chown,
// as nspawn's. Its /proc has masked files, so the kernel refuses a new procfs in a user
// namespace: the monitor makes one for the container (nspawn fails there).

/// `key=value` lines of a script's output, the value of `key`.
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

fn user_namespaces_on_0700_paths_in_the_guest(cgroups: GuestCgroups) {
    let bb = Tree::rootfs("nest-bb");
    let g = Guest::boot(
        "nest-u",
        cgroups,
        &[&format!("--bind-ro={}:/srv/bb", bb.arg())],
    );
    // The upper of an overlay cannot be on the guest's overlayfs root (the kernel refuses
    // it, nspawn's as ours): a tmpfs in the 0700 directory holds it and its work directory.
    g.sh_ok(
        "M=/var/lib/machines; mkdir -p $M; chmod 0700 $M; cp -a /srv/bb $M/t; \
         cp -a /srv/bb $M/t0; mkdir -p $M/src $M/lower $M/ovl; chmod 1777 $M/src; \
         echo low > $M/lower/l; mount -t tmpfs tmpfs $M/ovl; mkdir -m 1777 $M/ovl/upper",
    );
    // (Inside single quotes: the first line of uid_map, its second field.)
    let base = "set -- $(head -1 /proc/self/uid_map); echo base=$2";
    let run = |opts: &str, script: &str| {
        g.sh(&format!(
            "ns-run -q -U {opts} -D /var/lib/machines/t /bin/sh -c '{base}; {script}'"
        ))
    };
    let owner = |p: &str| g.sh_ok(&format!("stat -c %u {p}")).trim().to_string();
    // The tree alone, under every ownership mode: auto shifts it into the range (chown);
    // then off and chown start in that range, the tree as it is (nspawn's pick).
    let mut shifted = None;
    for own in ["auto", "off", "chown"] {
        let out = run(
            &format!("--private-users-ownership={own}"),
            "echo root=$(stat -c %u /); test -x /bin/busybox && echo ran=yes",
        );
        assert!(out.code == 0 && out.stderr.is_empty(), "{own}: {out}");
        assert_eq!(value(&out.stdout, "ran"), "yes", "{own}: {out}");
        assert_eq!(value(&out.stdout, "root"), "0", "{own}: {out}");
        let b = value(&out.stdout, "base").to_string();
        assert_ne!(b, "0", "{own}: {out}");
        assert_eq!(
            owner("/var/lib/machines/t"),
            b,
            "{own}: the tree in the guest"
        );
        assert_eq!(shifted.get_or_insert(b.clone()), &b, "{own}: shifted again");
    }
    // With a network namespace of its own: a fresh sysfs (which the kernel grants: the
    // guest's /sys is fully visible), showing only its own interfaces.
    let out = run("--private-network", "echo net=$(ls /sys/class/net)");
    assert!(
        out.code == 0 && out.stderr.is_empty(),
        "--private-network: {out}"
    );
    assert_eq!(value(&out.stdout, "net"), "lo", "{out}");
    // A writable bind: the file lands owned by the range's base in the guest.
    let out = run("--bind=/var/lib/machines/src:/mnt", "echo hi > /mnt/f");
    assert!(out.code == 0 && out.stderr.is_empty(), "bind: {out}");
    let b = value(&out.stdout, "base");
    assert_eq!(owner("/var/lib/machines/src/f"), b, "bind: {out}");
    // Overlay layers and -x.
    let out = run(
        "-x --overlay=/var/lib/machines/lower:/var/lib/machines/ovl/upper:/o",
        "echo o=$(cat /o/l); echo up > /o/u",
    );
    assert!(out.code == 0 && out.stderr.is_empty(), "overlay: {out}");
    assert_eq!(value(&out.stdout, "o"), "low", "{out}");
    let b = value(&out.stdout, "base");
    assert_eq!(g.sh_ok("cat /var/lib/machines/ovl/upper/u"), "up\n");
    assert_eq!(owner("/var/lib/machines/ovl/upper/u"), b, "overlay upper");
    assert_eq!(
        g.sh_ok("ls -A /var/lib/machines/lower; ls -A /var/lib/machines/ovl"),
        "l\nupper\n",
        "lower unchanged, no work directory left"
    );
    // An explicit map: refused in one line, the tree as it was; nspawn refuses it too.
    let out = g.sh("ns-run -q -U --private-users-ownership=map -D /var/lib/machines/t0 /bin/true");
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        ["ns-run: cannot idmap /var/lib/machines/t0 (does its file system support idmapped mounts?): Invalid argument"],
        "{out}"
    );
    assert_eq!(owner("/var/lib/machines/t0"), "0");
    let nspawn = "systemd-nspawn --register=no --keep-unit -q -U -D /var/lib/machines/t0";
    let out = g.sh(&format!("{nspawn} --private-users-ownership=map /bin/true"));
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr
            .contains("ID mapped mounts are apparently not available, sorry."),
        "{out}"
    );
    // nspawn's auto chowns the tree too, then fails where we do better: proc.
    let out = g.sh(&format!("{nspawn} /bin/true"));
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr
            .contains("Failed to mount proc (type proc) on /proc (MS_NOSUID|MS_NODEV|MS_NOEXEC \"\"): Operation not permitted"),
        "{out}"
    );
    assert_ne!(owner("/var/lib/machines/t0"), "0", "nspawn chowns");
    let off = g.poweroff();
    assert_eq!(off.code, 0, "{off}");
}

#[test]
fn user_namespaces_on_0700_paths_in_a_hybrid_guest() {
    user_namespaces_on_0700_paths_in_the_guest(GuestCgroups::Host);
}

#[test]
fn user_namespaces_on_0700_paths_in_a_pure_cgroup2_guest() {
    user_namespaces_on_0700_paths_in_the_guest(GuestCgroups::Unified);
}
