#!/bin/sh
# Start-up of a container on the host and inside a booted guest (issue 18): times
# `ns-run -q -D TREE /bin/true` on the host, inside a Debian guest booted by ns-run with the
# host's cgroup layout (hybrid here) and inside one with pure cgroup2, in the same run,
# round by round (host, hybrid, unified, ...), and prints each one's median and its ratio to
# the host's. Inside a guest ns-run makes its cgroups where the guest's cgroupfs is writable
# and runs under the guest's device policy (the guest's filter refuses bpf()).
#
#   BIN=target/x86_64-unknown-linux-musl/release TREE=/work/wt/benchroot \
#   GUEST=/var/cache/ns-run/debian-machined ROUNDS=7 RUNS=30 bench/nested.sh
set -eu
BIN=$(realpath "${BIN:-target/x86_64-unknown-linux-musl/release}")
TREE=$(realpath "${TREE:-/work/wt/benchroot}")
GUEST=${GUEST:-/var/cache/ns-run/debian-machined}
ROUNDS=${ROUNDS:-7}
RUNS=${RUNS:-30}
TAG=bench-nest-$$
GUEST_PATH=/opt/ns/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# One round: RUNS starts in a row, the mean in microseconds (run by sh where it is timed).
loop="i=0; s=\$(date +%s%N); while [ \$i -lt $RUNS ]; do \
  ns-run -q --register=no -D /srv/bb /bin/true; i=\$((i+1)); done; \
  e=\$(date +%s%N); echo \$(( (e - s) / $RUNS / 1000 ))"
host_loop=$(echo "$loop" | sed "s|ns-run|$BIN/ns-run|; s|/srv/bb|$TREE|")

. "$(dirname "$0")/guest.sh"
in_guest() { "$BIN/ns-ctl" shell -E PATH=$GUEST_PATH "$1" -- /bin/sh -c "$loop"; }
stop() { "$BIN/ns-ctl" poweroff "$TAG-h" 2>/dev/null || true; "$BIN/ns-ctl" poweroff "$TAG-u" 2>/dev/null || true; wait; }
trap stop EXIT

boot "$TAG-h" ""
boot "$TAG-u" 1
host="" hybrid="" unified=""
r=0
while [ $r -lt "$ROUNDS" ]; do
    host="$host $(sh -c "$host_loop")"
    hybrid="$hybrid $(in_guest "$TAG-h")"
    unified="$unified $(in_guest "$TAG-u")"
    r=$((r + 1))
done
h=$(median $host)
for pair in "host:$host" "hybrid guest:$hybrid" "pure cgroup2 guest:$unified"; do
    name=${pair%%:*}
    m=$(median ${pair#*:})
    awk -v n="$name" -v m="$m" -v h="$h" -v r="$ROUNDS" -v k="$RUNS" \
        'BEGIN {printf "%-20s %7.2f ms median of %s rounds x %s runs  x%.2f of the host\n", n, m / 1000, r, k, m / h}'
done
