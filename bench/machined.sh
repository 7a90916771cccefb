#!/bin/sh
# Start-up with systemd-machined registration against without (issue 18): inside a Debian
# guest booted by ns-run (systemd, D-Bus and machined running), times
# `ns-run -q -D TREE /bin/true` registered (the default: machined reached over D-Bus, a scope
# machine-bb.scope made, the container registered, then unregistered) and with
# --register=no, round by round in the same run, in a guest with the host's cgroup layout
# (hybrid here) and one with pure cgroup2, and prints each median and the difference;
# systemd-nspawn 252 likewise in the pure cgroup2 guest, for comparison (it makes a scope
# of its own with --register=no too).
#
#   BIN=target/x86_64-unknown-linux-musl/release TREE=/work/wt/benchroot \
#   GUEST=/var/cache/ns-run/debian-machined ROUNDS=7 RUNS=20 bench/machined.sh
set -eu
BIN=$(realpath "${BIN:-target/x86_64-unknown-linux-musl/release}")
TREE=$(realpath "${TREE:-/work/wt/benchroot}")
GUEST=${GUEST:-/var/cache/ns-run/debian-machined}
ROUNDS=${ROUNDS:-7}
RUNS=${RUNS:-20}
TAG=bench-md-$$
GUEST_PATH=/opt/ns/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# One round of RUNS starts of MANAGER (ns-run or systemd-nspawn) with REGISTER (yes|no):
# the mean in microseconds.
loop() {
    echo "i=0; s=\$(date +%s%N); while [ \$i -lt $RUNS ]; do \
      $1 -q --register=$2 -D /srv/bb /bin/true || exit 1; i=\$((i+1)); done; \
      e=\$(date +%s%N); echo \$(( (e - s) / $RUNS / 1000 ))"
}

. "$(dirname "$0")/guest.sh"
in_guest() { "$BIN/ns-ctl" shell -E PATH=$GUEST_PATH "$1" -- /bin/sh -c "$(loop "$2" "$3")"; }
stop() { "$BIN/ns-ctl" poweroff "$TAG-h" 2>/dev/null || true; "$BIN/ns-ctl" poweroff "$TAG-u" 2>/dev/null || true; wait; }
trap stop EXIT

boot "$TAG-h" ""
boot "$TAG-u" 1
hy="" hn="" uy="" un="" ny="" nn=""
r=0
while [ $r -lt "$ROUNDS" ]; do
    hy="$hy $(in_guest "$TAG-h" ns-run yes)"
    hn="$hn $(in_guest "$TAG-h" ns-run no)"
    un="$un $(in_guest "$TAG-u" ns-run no)"
    uy="$uy $(in_guest "$TAG-u" ns-run yes)"
    ny="$ny $(in_guest "$TAG-u" systemd-nspawn yes)"
    nn="$nn $(in_guest "$TAG-u" systemd-nspawn no)"
    r=$((r + 1))
done
report() { # NAME REGISTERED-ROUNDS UNREGISTERED-ROUNDS
    awk -v n="$1" -v y="$(median $2)" -v no="$(median $3)" -v r="$ROUNDS" -v k="$RUNS" 'BEGIN {
        printf "%-21s registered %6.2f ms, --register=no %6.2f ms: %+.2f ms (median of %s rounds x %s runs)\n",
            n, y / 1000, no / 1000, (y - no) / 1000, r, k }'
}
report "hybrid guest" "$hy" "$hn"
report "pure cgroup2 guest" "$uy" "$un"
report "nspawn, pure cgroup2" "$ny" "$nn"
