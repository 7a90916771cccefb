//! Attacks on ns-run's registration with systemd-machined (issue 18's review), in a booted
//! Debian guest with systemd, D-Bus and machined ([`ns_tests::Guest`]): what any user on the
//! system bus, or systemd itself, can send the monitor's bus connection must neither cost it
//! memory nor make it deaf to systemd's stop requests.

use ns_tests::{Guest, GuestCgroups};

/// A pure cgroup2 guest with its own network and the busybox fixture at /srv/bb.
fn guest(tag: &str) -> Guest {
    let bb = format!("--bind-ro={}:/srv/bb", ns_tests::fixture().display());
    Guest::boot(tag, GuestCgroups::Unified, &["--private-network", &bb])
}

/// Shell: the busybox fixture copied to /var/lib/machines/bb (a tmpfs of its own).
const BB: &str = "mkdir -p /var/lib/machines/bb && mount -t tmpfs tmpfs /var/lib/machines/bb &&
    cp -a /srv/bb/. /var/lib/machines/bb/ || exit 1
";

/// Perl (the guest's perl-base): `perl /tmp/sig.pl l|B DEST PATH IFACE MEMBER [N]` connects
/// to the system bus as the caller, and sends DEST one signal in that byte order (`l` little,
/// `B` big-endian), its body an `ay` of N bytes (none without N); then a call to the bus, so
/// that the signal is through when it prints `sent`.
const SIG_PL: &str = r#"
use strict; use IO::Socket::UNIX;
my ($e, $dest, $path, $iface, $member, $n) = @ARGV;
my $u32 = $e eq 'l' ? 'V' : 'N';
my $s = IO::Socket::UNIX->new(Peer => '/run/dbus/system_bus_socket') or die "connect: $!";
print $s "\0AUTH EXTERNAL " . unpack('H*', "$<") . "\r\n";
my $l = <$s>; $l =~ /^OK/ or die "auth: $l";
print $s "BEGIN\r\n";
sub pad { my ($b, $a) = @_; $$b .= "\0" x ((-length $$b) % $a) }
sub msg {
    my ($type, $serial, $fields, $body) = @_;
    my $f = '';
    for my $fd (@$fields) {
        my ($code, $sig, $val) = @$fd;
        pad(\$f, 8); $f .= chr($code) . chr(length $sig) . $sig . "\0";
        $f .= $sig eq 'g' ? chr(length $val) . $val . "\0" : pack($u32, length $val) . $val . "\0";
    }
    my $m = $e . chr($type) . "\0\1" . pack($u32, length $body) . pack($u32, $serial)
        . pack($u32, length $f) . $f;
    pad(\$m, 8); $m . $body
}
my @bus = ([1, 'o', '/org/freedesktop/DBus'], [2, 's', 'org.freedesktop.DBus'],
    [6, 's', 'org.freedesktop.DBus']);
print $s msg(1, 1, [@bus, [3, 's', 'Hello']], '');
my @f = ([1, 'o', $path], [2, 's', $iface], [3, 's', $member], [6, 's', $dest]);
my $body = '';
if (defined $n) { push @f, [8, 'g', 'ay']; $body = pack($u32, $n) . ('A' x $n) }
print $s msg(4, 2, \@f, $body);
print $s msg(1, 3, [@bus, [3, 's', 'GetId']], '');
my ($buf, $got) = ('', '');
while (sysread($s, $buf, 65536)) { $got .= $buf; last if $got =~ /[0-9a-f]{32}/ }
print "sent\n";
"#;

/// Shell: `attacked 'CMD'` starts a registered ns-run container r1 whose PID 1 prints
/// `asked` on SIGTERM (`--kill-signal=SIGTERM`: systemd's stop request becomes that signal),
/// runs CMD with $conn (the monitor's bus name) and $monitor set, then `machinectl terminate
/// r1` and prints: `asked` once PID 1 got the request (bounded), `connected` if the monitor
/// still has its bus connection, how much the monitor's peak memory grew (kB), and ns-run's
/// exit code once the container is killed.
const ATTACKED: &str = r#"
wait_for() {
    i=0; until "$@"; do sleep 0.1; i=$((i+1)); [ $i -gt 200 ] && { echo "never: $*"; return 1; }; done
    return 0
}
attacked() {
    BB
    cat > /tmp/sig.pl <<'EOF'
SIG_PL
EOF
    ( ns-run -q -M r1 --kill-signal=SIGTERM -D /var/lib/machines/bb sh -c \
        'trap "echo asked" TERM; echo up; while :; do sleep 1 & wait $!; done' > /tmp/r1.log 2>&1
      echo $? > /tmp/r1.rc ) &
    wait_for grep -q up /tmp/r1.log && wait_for machinectl show r1 >/dev/null 2>&1 || { cat /tmp/r1.log; return 1; }
    monitor=$(tr -d ' \n' < /run/ns-run/machines/r1.json | sed 's/.*"monitor":\([0-9]*\).*/\1/')
    conn=$(busctl --system list --no-pager --no-legend | awk -v p=$monitor '$2 == p {print $1; exit}')
    hwm() { awk '/^VmHWM/ {print $2}' /proc/$monitor/status; }
    before=$(hwm)
    eval "$1"
    machinectl terminate r1
    wait_for grep -q asked /tmp/r1.log && echo asked
    busctl --system list --no-pager --no-legend | grep -q "^$conn " && echo connected
    echo "grew $(( $(hwm) - before )) kB"
    machinectl kill --signal=KILL r1; wait_for test -s /tmp/r1.rc; echo "exit $(cat /tmp/r1.rc)"
}
"#;

/// `attacked` with `attack` (shell, run as root in the guest): its output lines.
fn attacked(tag: &str, attack: &str) -> Vec<String> {
    let g = guest(tag);
    let script = format!(
        "{}\n{attack}",
        (ATTACKED.replace("SIG_PL\n", SIG_PL.trim_start())).replace("BB\n", BB)
    );
    let out = g.sh_ok(&script);
    out.lines().map(str::to_string).collect()
}

/// `attacked` by a signal from nobody to the monitor, in byte order `order` (`l`, `B`), its
/// body `bytes` long: the output after `sent`, `asked` and `connected` (checked), and how
/// much the monitor's peak memory grew (kB; it may read negative: the kernel syncs VmHWM
/// lazily, and the monitor gives its start-up memory back once it is idle).
fn signalled_by_nobody(tag: &str, order: &str, bytes: u32) -> (Vec<String>, i64) {
    let out = attacked(
        tag,
        &format!(
            "attacked 'setpriv --reuid=nobody --regid=nogroup --clear-groups \
             perl /tmp/sig.pl {order} $conn /x a.b Noise {bytes}'"
        ),
    );
    assert_eq!(out[..3], ["sent", "asked", "connected"], "{out:?}");
    let grew: i64 = (out.get(3).and_then(|g| g.strip_prefix("grew ")))
        .and_then(|g| g.strip_suffix(" kB"))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    (out[4..].to_vec(), grew)
}

/// Any user may send a signal to the monitor's connection (the system bus's policy), up to
/// the bus's 32 MiB: one `ay` of 30 MB from nobody made the monitor's peak memory grow by
/// 870 MB (every byte a decoded value) before. Now a message that big is read past in small
/// pieces: the monitor's peak grows by less than 16 MiB, and systemd's stop request after it
/// still arrives.
#[test]
fn a_huge_signal_from_any_user_costs_the_monitor_no_memory() {
    let (rest, grew) = signalled_by_nobody("sdh", "l", 30_000_000);
    assert!(grew < 16 * 1024, "grew {grew} kB");
    assert_eq!(rest, ["exit 137"]);
}

/// A message in big-endian order is valid D-Bus (the bus passes it on as sent), and any user
/// may send one to the monitor's connection: the monitor took it for a broken bus and dropped
/// its connection, so systemd's stop request (`machinectl terminate`) no longer reached it
/// (systemd sent SIGTERM to the scope instead, which a PID 1 without a handler ignores: the
/// scope waited its 90 s stop timeout, seen by hand). Now it reads it like any other message.
#[test]
fn a_big_endian_signal_from_any_user_leaves_machinectl_terminate_working() {
    let (rest, _) = signalled_by_nobody("sde", "B", 100);
    assert_eq!(rest, ["exit 137"]);
}

/// `systemctl daemon-reexec` (what an upgrade of systemd runs) gives systemd a new name on
/// the bus, and the monitor believed stop requests only from the old one: `machinectl
/// terminate` then waited for the scope's 90 s stop timeout. Now the monitor follows the
/// owner of org.freedesktop.systemd1 as the bus announces it.
#[test]
fn machinectl_terminate_works_after_systemd_reexecutes() {
    let out = attacked(
        "sdx",
        "attacked 'systemctl daemon-reexec &&
         wait_for busctl --system status org.freedesktop.systemd1 >/dev/null 2>&1'",
    );
    assert_eq!(out[..2], ["asked", "connected"], "{out:?}");
    assert_eq!(out[3..], ["exit 137"], "{out:?}");
}

/// A systemd-nspawn@.service of the user's own in /etc/systemd/system (what `systemctl edit
/// --full systemd-nspawn@.service` writes) is theirs: `systemd/install` refuses with one line
/// naming it, before writing anything (it left ns-run@.service behind, its `enable` failing),
/// and `systemd/install --remove` keeps it (it deleted it: failed before). Without one, the
/// alias is made and removed as before.
#[test]
fn install_leaves_a_users_own_systemd_nspawn_unit_alone() {
    let units = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let bind = format!("--bind-ro={}:/srv/systemd", units.display());
    let g = Guest::boot("sdi", GuestCgroups::Unified, &[&bind]);
    let out = g.sh_ok(
        "cd /etc/systemd/system
        sed 's/^Description=.*/Description=mine %i/' /lib/systemd/system/systemd-nspawn@.service \
            > systemd-nspawn@.service
        systemctl daemon-reload
        sh /srv/systemd/install /opt/ns/bin 2>&1; echo \"install: rc=$?\"
        ls | grep -c '^ns-run@'
        sh /srv/systemd/install --remove 2>&1; echo \"remove: rc=$?\"
        grep -c '^Description=mine' systemd-nspawn@.service
        rm systemd-nspawn@.service
        sh /srv/systemd/install /opt/ns/bin >/dev/null 2>&1; echo \"install: rc=$?\"
        readlink systemd-nspawn@.service
        sh /srv/systemd/install --remove; ls | grep -c 'nspawn@\\|ns-run@'; true",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "systemd/install: /etc/systemd/system/systemd-nspawn@.service is a unit of your own \
             (move it away first: ns-run@.service takes its name)",
            "install: rc=1",
            "0",
            "remove: rc=0",
            "1",
            "install: rc=0",
            "/etc/systemd/system/ns-run@.service",
            "0",
        ],
        "{out}"
    );
}

/// ns-run alone in a scope of the caller's (`systemd-run --scope ns-run ...`): once the
/// monitor moves to the container's scope, systemd stops the caller's empty scope and
/// removes its cgroup, so the monitor could not move back: `cannot move the monitor back to
/// .../run-XXX.scope: No such file or directory`, 125, in most starts (failed before). It now
/// stays in the container's scope, in `supervisor` (as with --keep-unit), and nothing is left.
#[test]
fn ns_run_alone_in_a_scope_of_its_own_runs() {
    let g = guest("sds");
    let out = g.sh_ok(&format!(
        "{BB}
        for i in 1 2 3 4 5; do
            systemd-run -q --scope ns-run -q -M sc -D /var/lib/machines/bb sh -c 'echo ran' 2>&1
            echo \"rc=$?\"
        done
        systemctl list-units --all --no-legend 'machine-*' | wc -l; ls /run/ns-run/machines | wc -l"
    ));
    let mut expect = ["ran", "rc=0"].repeat(5);
    expect.extend(["0", "0"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), expect, "{out}");
}

/// A start failing after the monitor joined its scope but before PID 1 was registered (here
/// a --network-interface that does not exist) fails at once with its one line and leaves no
/// scope: the monitor stopped its scope from inside it, and waited 25 s for a stop that
/// could not end while it was there (failed before).
#[test]
fn a_start_failing_in_its_scope_fails_at_once() {
    let g = guest("sdf");
    let out = g.sh_ok(&format!(
        "{BB}
        s=$(date +%s)
        ns-run -q -M nif --network-interface=nope0 -D /var/lib/machines/bb true 2>&1
        echo \"rc=$? $(( $(date +%s) - s ))s\"
        systemctl list-units --all --no-legend 'machine-*' | wc -l"
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "ns-net: --network-interface=nope0: no such network interface",
        "{out}"
    );
    let (rc, took) = lines[lines.len() - 2].split_once(' ').expect(&out);
    let took: u64 = took.trim_end_matches('s').parse().expect(&out);
    assert_eq!(rc, "rc=125", "{out}");
    assert!(took < 10, "{out}");
    assert_eq!(lines[lines.len() - 1], "0", "{out}");
}
