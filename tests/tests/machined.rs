//! Registration with systemd-machined and the real machinectl, in a booted Debian guest with
//! systemd, D-Bus and machined ([`ns_tests::Guest`]): ns-run's containers are registered
//! (leader, root, class, service, interfaces) in a scope of their own or in the unit ns-run
//! runs in, machinectl's verbs give systemd-nspawn's results (nspawn runs the same way in the
//! same guest), `machinectl start` boots an image through the shipped ns-run@.service, and a
//! name machined already has fails with one line, leaving nothing.

use std::path::PathBuf;

use ns_tests::{Guest, GuestCgroups};

/// A guest with its own network (inner veths stay in it), the busybox fixture at /srv/bb
/// and `extra` ns-run options.
fn guest(tag: &str, cgroups: GuestCgroups, extra: &[&str]) -> Guest {
    let bb = format!("--bind-ro={}:/srv/bb", ns_tests::fixture().display());
    let mut args = vec!["--private-network", bb.as_str()];
    args.extend(extra);
    Guest::boot(tag, cgroups, &args)
}

/// Shell: a fresh busybox image /var/lib/machines/$1 (on a tmpfs of its own).
const IMAGE: &str = r#"
image() {
    mkdir -p /var/lib/machines/$1 && mount -t tmpfs tmpfs /var/lib/machines/$1 &&
    cp -a /srv/bb/. /var/lib/machines/$1/ && echo 'ID=busybox' > /var/lib/machines/$1/etc/os-release
}
# The guest's cgroup2 hierarchy (pure cgroup2, or hybrid's unified).
cg2=/sys/fs/cgroup; [ "$(stat -f -c %T $cg2)" = cgroup2fs ] || cg2=/sys/fs/cgroup/unified
# wait_for CONDITION...: poll (bounded, 20 s) until it holds.
wait_for() {
    i=0; until "$@"; do sleep 0.1; i=$((i+1)); [ $i -gt 200 ] && { echo "never: $*"; return 1; }; done
    return 0
}
"#;

/// Shell: `verbs NAME MANAGER...` starts MANAGER (nspawn or ns-run) in the background running
/// a PID 1 with no signal handlers, applies machinectl's poweroff, reboot and kill (which such
/// a PID 1 ignores), then terminate, and prints what each did.
const VERBS: &str = r#"
verbs() {
    n=$1; shift
    rm -f /tmp/$n.rc
    ( "$@" > /tmp/$n.log 2>&1; echo $? > /tmp/$n.rc ) &
    wait_for machinectl show $n >/dev/null 2>&1 || { cat /tmp/$n.log; return 1; }
    leader=$(machinectl show -p Leader --value $n)
    for v in poweroff reboot kill; do
        machinectl $v $n; rc=$?
        echo "$v: rc=$rc $(machinectl show -p State --value $n) leader-alive=$(kill -0 $leader && echo yes)"
    done
    machinectl terminate $n; echo "terminate: rc=$?"
    wait_for sh -c "! machinectl show $n >/dev/null 2>&1" && wait_for test -e /tmp/$n.rc
    echo "gone: $(machinectl list --no-legend | grep -c "^$n ") listed"
    echo "exit $(cat /tmp/$n.rc)"
}
"#;

/// machinectl's view of a running ns-run container, its cgroups, then every verb against
/// nspawn's results for the same PID 1 in the same guest.
fn machinectl_drives_ns_run_as_nspawn(cgroups: GuestCgroups) {
    let g = guest("mdv", cgroups, &[]);
    let script = format!(
        "{IMAGE}{VERBS}
        image bb >/dev/null || exit 1
        (ns-run -q -M r1 -D /var/lib/machines/bb sleep 1000 > /tmp/r1.log 2>&1 &)
        wait_for machinectl show r1 >/dev/null 2>&1 || {{ cat /tmp/r1.log; exit 1; }}
        machinectl list --no-legend | awk '{{print $1, $2, $3}}'
        machinectl status r1 --no-pager | grep -E 'Service:|Root:|Unit:'
        leader=$(machinectl show -p Leader --value r1)
        reg=$(tr -d ' \n' < /run/ns-run/machines/r1.json)
        echo \"$reg\" | grep -q \"\\\"leader\\\":$leader,\" && echo leader-in-registry
        echo \"$reg\" | grep -q \"\\\"uuid\\\":\\\"$(machinectl show -p Id --value r1)\\\"\" && echo id-in-registry
        monitor=$(echo \"$reg\" | sed 's/.*\"monitor\":\\([0-9]*\\).*/\\1/')
        grep '^0::' /proc/$leader/cgroup | sed 's/-r1-[0-9]*/-r1-PID/'
        grep -c 'machine-r1.scope' /proc/$monitor/cgroup
        ls $cg2/machine.slice/machine-r1.scope | grep -v '^cgroup\\.\\|\\.' | sed 's/-r1-[0-9]*/-r1-PID/'
        ns-ctl terminate r1 >/dev/null; wait_for sh -c '! machinectl show r1 >/dev/null 2>&1'
        ok=0; for i in 1 2 3 4 5; do ns-run -q -M again -D /var/lib/machines/bb true && ok=$((ok+1)); done
        echo \"back to back: $ok\"
        echo ==nspawn; verbs n1 systemd-nspawn -q -M n1 -D /var/lib/machines/bb sleep 1000
        echo ==ns-run; verbs r2 ns-run -q -M r2 -D /var/lib/machines/bb sleep 1000
        ls $cg2/machine.slice | grep -c scope; ls /run/ns-run/machines | wc -l"
    );
    let out = g.sh_ok(&script);
    let (own, rest) = out.split_once("==nspawn\n").expect(&out);
    let (nspawn, ns_run) = rest.split_once("==ns-run\n").expect(&out);
    let own: Vec<&str> = own.lines().map(str::trim).collect();
    assert_eq!(
        own,
        [
            "r1 container ns-run",
            "Service: ns-run; class container",
            "Root: /var/lib/machines/bb",
            "Unit: machine-r1.scope",
            "leader-in-registry",
            "id-in-registry",
            "0::/machine.slice/machine-r1.scope/ns-run-r1-PID/payload",
            "0",
            "ns-run-r1-PID",
            "back to back: 5",
        ],
        "{out}"
    );
    // The same results as nspawn's, verb by verb; only the exit code differs (nspawn's 1,
    // ns-run's 137 for a container killed by SIGKILL: see Exit codes).
    let nspawn: Vec<&str> = nspawn.lines().collect();
    let ns_run: Vec<&str> = ns_run.lines().collect();
    assert_eq!(nspawn.len(), 6, "{out}");
    assert_eq!(ns_run[..5], nspawn[..5], "{out}");
    assert_eq!(
        ns_run[..5],
        [
            "poweroff: rc=0 running leader-alive=yes",
            "reboot: rc=0 running leader-alive=yes",
            "kill: rc=0 running leader-alive=yes",
            "terminate: rc=0",
            "gone: 0 listed",
        ],
        "{out}"
    );
    assert_eq!((nspawn[5], ns_run[5]), ("exit 1", "exit 137"), "{out}");
    // Nothing left: no scope, no registry entry.
    assert_eq!(ns_run[6..], ["0", "0"], "{out}");
}

#[test]
fn machinectl_drives_ns_run_as_nspawn_in_pure_cgroup2() {
    machinectl_drives_ns_run_as_nspawn(GuestCgroups::Unified);
}

#[test]
fn machinectl_drives_ns_run_as_nspawn_in_hybrid() {
    machinectl_drives_ns_run_as_nspawn(GuestCgroups::Host);
}

#[test]
fn a_booted_debian_has_machinectl_shell_login_poweroff_and_reboot_in_pure_cgroup2() {
    a_booted_debian_has_machinectl_shell_login_poweroff_and_reboot(GuestCgroups::Unified);
}

#[test]
fn a_booted_debian_has_machinectl_shell_login_poweroff_and_reboot_in_hybrid() {
    a_booted_debian_has_machinectl_shell_login_poweroff_and_reboot(GuestCgroups::Host);
}

/// A booted Debian under ns-run: machinectl shell and login reach it, as under nspawn;
/// poweroff stops it (0) and reboot ends ns-run with 133 (a unit restarts it).
fn a_booted_debian_has_machinectl_shell_login_poweroff_and_reboot(cgroups: GuestCgroups) {
    let deb = format!(
        "--bind-ro={}:/var/lib/machines/deb",
        ns_tests::debian_machined().display()
    );
    let g = guest("mdb", cgroups, &[&deb]);
    let boot = r#"
        boot() {
            n=$1; shift; rm -f /tmp/$n.rc
            ( "$@" -q -b --volatile=overlay -M $n -D /var/lib/machines/deb > /tmp/$n.log 2>&1; echo $? > /tmp/$n.rc ) &
            wait_for sh -c "machinectl shell $n /bin/systemctl is-system-running 2>/dev/null | grep -q '^running'" || { cat /tmp/$n.log; return 1; }
            machinectl shell $n /bin/sh -c 'echo in-$(hostname) pid1=$(cat /proc/1/comm)' 2>&1 | tr -d '\r' | grep '^in-'
            timeout 5 machinectl login $n </dev/null 2>&1 | tr -d '\r' | grep -c '^Debian GNU/Linux 12'
            machinectl status $n --no-pager | grep -E 'Service:|OS:' | sed 's/^[[:space:]]*//'
        }
        stop() {
            machinectl $2 $1; echo "$2: rc=$?"
            wait_for test -e /tmp/$1.rc && echo "exit $(cat /tmp/$1.rc)"
        }
    "#;
    let out = g.sh_ok(&format!(
        "{IMAGE}{boot}
        echo ==nspawn; boot d1 systemd-nspawn; stop d1 poweroff
        echo ==ns-run; boot d2 ns-run; stop d2 poweroff; boot d3 ns-run; stop d3 reboot"
    ));
    let (_, rest) = out.split_once("==nspawn\n").expect(&out);
    let (nspawn, ns_run) = rest.split_once("==ns-run\n").expect(&out);
    let expect = |service: &str| {
        [
            "in-vm pid1=systemd".to_string(),
            "1".into(),
            format!("Service: {service}; class container"),
            "OS: Debian GNU/Linux 12 (bookworm)".into(),
            "poweroff: rc=0".into(),
            "exit 0".into(),
        ]
    };
    assert_eq!(
        nspawn.lines().collect::<Vec<_>>(),
        expect("systemd-nspawn"),
        "{out}"
    );
    let ns_run: Vec<&str> = ns_run.lines().collect();
    assert_eq!(ns_run[..6], expect("ns-run"), "{out}");
    assert_eq!(ns_run[10..], ["reboot: rc=0", "exit 133"], "{out}");
}

/// A name machined already has (an nspawn container's): one line, 125, nothing made; with
/// --register=no the same name runs (unregistered). A start failing after its scope was made
/// (a property this guest cannot apply) leaves no scope.
#[test]
fn a_name_machined_has_fails_with_one_line_and_leaves_nothing() {
    let g = guest("mdn", GuestCgroups::Unified, &[]);
    let out = g.sh_ok(&format!(
        "{IMAGE}
        image bb >/dev/null; image bb2 >/dev/null
        (systemd-nspawn -q -M taken -D /var/lib/machines/bb sleep 1000 > /dev/null 2>&1 &)
        wait_for machinectl show taken >/dev/null 2>&1 || exit 1
        before=$(find /sys/fs/cgroup -name '*taken*' | sort)
        ns-run -q -M taken -D /var/lib/machines/bb2 true 2>/tmp/err; echo \"rc=$?\"; cat /tmp/err
        [ \"$(find /sys/fs/cgroup -name '*taken*' | sort)\" = \"$before\" ] && echo cgroups-unchanged
        ls /run/ns-run/machines | wc -l
        ns-run -q -M bad --property=MemoryHigh=1M -D /var/lib/machines/bb2 true 2>/dev/null
        echo \"rc=$? $(systemctl show -p LoadState --value machine-bad.scope)\"
        ns-run -q --register=no -M taken -D /var/lib/machines/bb2 sh -c 'echo ran'; echo \"rc=$?\"
        machinectl show -p Service --value taken
        machinectl terminate taken"
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "rc=125",
            "ns-run: machine taken is already registered with systemd-machined (choose another \
             name with -M, or --register=no)",
            "cgroups-unchanged",
            "0",
            "rc=125 not-found",
            "ran",
            "rc=0",
            "systemd-nspawn",
        ],
        "{out}"
    );
}

/// The repository's systemd/ directory (ns-run@.service, install).
fn units_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

#[test]
fn machinectl_start_boots_an_image_through_ns_run_at_service_in_pure_cgroup2() {
    machinectl_start_boots_an_image_through_ns_run_at_service(GuestCgroups::Unified);
}

#[test]
fn machinectl_start_boots_an_image_through_ns_run_at_service_in_hybrid() {
    machinectl_start_boots_an_image_through_ns_run_at_service(GuestCgroups::Host);
}

/// `systemd/install` in the guest, then `machinectl start` of a busybox image that boots:
/// through ns-run@.service (alias systemd-nspawn@.service), ready (Type=notify), listed, its
/// NAME.nspawn honoured; reboot restarts it through the unit (exit 133), poweroff stops it,
/// nothing left; `systemd/install --remove` gives systemd-nspawn@.service back. The unit's
/// -U boots in this guest (the monitor makes the nested procfs), where nspawn's own -U fails
/// to mount proc: the container's PID 1 runs shifted, and a .nspawn file written after a
/// poweroff is read by the next start.
fn machinectl_start_boots_an_image_through_ns_run_at_service(cgroups: GuestCgroups) {
    let units = format!("--bind-ro={}:/srv/systemd", units_dir().display());
    let g = guest("mds", cgroups, &[&units]);
    let init = r#"#!/bin/sh
trap 'poweroff -f' 38
trap 'reboot -f' INT
echo "booted as $(hostname) pid1=$$"
while :; do sleep 1 & wait $!; done
"#;
    let out = g.sh_ok(&format!(
        "{IMAGE}
        image web >/dev/null && mkdir -p /var/lib/machines/web/sbin
        cat > /var/lib/machines/web/sbin/init <<'EOF'
{init}EOF
        chmod +x /var/lib/machines/web/sbin/init
        # nspawn's own unit, with its -U, first: the same failure as ours below.
        systemd-nspawn -q -U -b -M web -D /var/lib/machines/web 2>&1 | head -1
        sh /srv/systemd/install /opt/ns/bin 2>&1
        machinectl start web; echo \"start: rc=$?\"
        wait_for sh -c '[ \"$(machinectl show -p State --value web 2>/dev/null)\" = running ]'
        awk '{{print $1, ($2 != 0 ? \"shifted\" : \"identity\")}}' \
            /proc/$(machinectl show -p Leader --value web)/uid_map
        machinectl poweroff web; echo \"poweroff: rc=$?\"
        wait_for sh -c '! systemctl is-active -q ns-run@web'
        journalctl -u ns-run@web --no-pager -o cat | grep -c 'booted as web'
        mkdir -p /etc/systemd/nspawn
        printf '[Exec]\\nHostname=fromfile\\n' > /etc/systemd/nspawn/web.nspawn
        machinectl start web; echo \"start: rc=$?\"
        machinectl list --no-legend | awk '{{print $1, $2, $3}}'
        machinectl status web --no-pager | grep -E 'Unit:|Iface:' | sed 's/^[[:space:]]*//'
        first=$(machinectl show -p Leader --value web)
        machinectl reboot web; echo \"reboot: rc=$?\"
        wait_for sh -c '[ \"$(systemctl show -p NRestarts --value ns-run@web)\" = 1 ] &&
            [ \"$(machinectl show -p State --value web 2>/dev/null)\" = running ]' && echo back
        leader=$(machinectl show -p Leader --value web)
        [ \"$leader\" != 0 ] && [ \"$leader\" != \"$first\" ] && echo new-leader
        machinectl poweroff web; echo \"poweroff: rc=$?\"
        wait_for sh -c '! systemctl is-active -q ns-run@web' && systemctl show -p Result --value ns-run@web
        journalctl -u ns-run@web --no-pager -o cat | grep -c 'booted as fromfile'
        machinectl list --no-legend | wc -l; ls /run/ns-run/machines | wc -l
        ls $cg2/machine.slice | grep -c 'ns-run@'; ls /sys/class/net | grep -c ve-web
        sh /srv/systemd/install --remove
        systemctl cat systemd-nspawn@web.service | grep -c '^ExecStart=systemd-nspawn '; true"
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Failed to mount proc (type proc) on /proc (MS_NOSUID|MS_NODEV|MS_NOEXEC \"\"): Operation not permitted",
            "Created symlink /etc/systemd/system/systemd-nspawn@.service → /etc/systemd/system/ns-run@.service.",
            "start: rc=0",
            "0 shifted",
            "poweroff: rc=0",
            "1",
            "start: rc=0",
            "web container ns-run",
            "Iface: ve-web",
            "Unit: ns-run@web.service",
            "reboot: rc=0",
            "back",
            "new-leader",
            "poweroff: rc=0",
            "success",
            "2",
            "0",
            "0",
            "0",
            "0",
            "1",
        ],
        "{out}"
    );
}

/// `--keep-unit` under a unit of Type=notify with a watchdog (as ns-run@.service): machined
/// names that unit, the monitor sits in its `supervisor` beside the container, READY=1 comes
/// once the payload runs and the watchdog is pinged; without `--keep-unit`, `-S` puts the
/// scope in that slice.
#[test]
fn keep_unit_registers_the_unit_it_runs_in_is_ready_and_pings_the_watchdog() {
    let g = guest("mdk", GuestCgroups::Unified, &[]);
    let out = g.sh_ok(&format!(
        "{IMAGE}
        image bb >/dev/null
        systemd-run -q -p Type=notify -p WatchdogSec=1s --unit=kept \
            /opt/ns/bin/ns-run -q --keep-unit -M kept -D /var/lib/machines/bb sleep 4
        echo \"run: rc=$?\"
        machinectl status kept --no-pager | grep -E 'Unit:' | sed 's/^[[:space:]]*//'
        ls $cg2/system.slice/kept.service | grep -v '^cgroup\\.\\|\\.' | sed 's/-kept-[0-9]*/-kept-PID/'
        wait_for sh -c '! systemctl is-active -q kept' && systemctl show -p Result --value kept
        (ns-run -q -S tenants.slice -M sliced -D /var/lib/machines/bb sleep 100 > /dev/null 2>&1 &)
        wait_for machinectl show sliced >/dev/null 2>&1
        systemctl show -p Slice --value machine-sliced.scope
        machinectl terminate sliced"
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "run: rc=0",
            "Unit: kept.service",
            "ns-run-kept-PID",
            "supervisor",
            "success",
            "tenants.slice",
        ],
        "{out}"
    );
}

/// On a host without a system bus (this one), registration costs one failed connect and
/// changes nothing; `--register=no` does not even try.
#[test]
fn without_a_bus_one_connect_is_tried_and_nothing_changes() {
    let bus = format!("/nonexistent-ns-tests-{}/bus", std::process::id());
    let connects = |register: &str| {
        let log = std::env::temp_dir().join(format!("ns-tests-strace-{}", std::process::id()));
        let mut c = std::process::Command::new("strace");
        c.args(["-f", "-qq", "-e", "trace=connect", "-o"])
            .arg(&log)
            .arg(ns_tests::bin("ns-run"))
            .args(["-q", register, "-D"])
            .arg(ns_tests::fixture())
            .args(["sh", "-c", "echo ran"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={bus}"));
        let out = ns_tests::run_cmd(c, None);
        assert_eq!((out.code, out.stdout.as_str()), (0, "ran\n"), "{out}");
        let trace = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        trace
            .lines()
            .filter(|l| l.contains(&bus))
            .map(|l| l.split_once("connect(").map_or(l, |(_, r)| r).to_string())
            .collect::<Vec<_>>()
    };
    let tried = connects("--register=yes");
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert!(
        tried[0].ends_with("= -1 ENOENT (No such file or directory)"),
        "{tried:?}"
    );
    assert_eq!(connects("--register=no"), Vec::<String>::new());
}

/// Only systemd may stop a container's scope: a RequestStop signal sent straight to the
/// monitor's bus connection by another client (any user may send signals on the system bus)
/// is ignored, and the container keeps running until systemd itself asks.
#[test]
fn a_stop_request_not_from_systemd_is_ignored() {
    let g = guest("mdr", GuestCgroups::Unified, &[]);
    let out = g.sh_ok(&format!(
        "{IMAGE}
        image bb >/dev/null
        (ns-run -q -M r1 -D /var/lib/machines/bb sleep 1000 > /dev/null 2>&1 &)
        wait_for machinectl show r1 >/dev/null 2>&1 || exit 1
        monitor=$(tr -d ' \\n' < /run/ns-run/machines/r1.json | sed 's/.*\"monitor\":\\([0-9]*\\).*/\\1/')
        conn=$(busctl --system list --no-pager --no-legend | awk -v p=$monitor '$2 == p {{print $1; exit}}')
        [ -n \"$conn\" ] && echo has-a-connection
        for who in root nobody; do
            setpriv --reuid=$who --regid=nogroup --clear-groups dbus-send --system --type=signal \
                --dest=$conn /org/freedesktop/systemd1/unit/machine_2dr1_2escope \
                org.freedesktop.systemd1.Scope.RequestStop && echo \"sent as $who\"
        done
        busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId >/dev/null
        machinectl show -p State --value r1
        machinectl terminate r1 && wait_for sh -c '! machinectl show r1 >/dev/null 2>&1' && echo terminated"
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "has-a-connection",
            "sent as root",
            "sent as nobody",
            "running",
            "terminated"
        ],
        "{out}"
    );
}
