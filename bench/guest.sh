# Shared by the benchmarks that run inside booted guests (nested.sh, machined.sh): sourced,
# with BIN (the toolkit's binaries), TREE (a tree bound at /srv/bb) and GUEST (the Debian
# tree to boot) set.

# boot NAME LAYOUT: boot GUEST as NAME (LAYOUT 1: pure cgroup2, empty: the host's) in the
# background, and wait (bounded) until its systemd reports running.
boot() {
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$2 "$BIN/ns-run" -q -x -b -M "$1" -D "$GUEST" \
        --bind-ro="$BIN":/opt/ns/bin --bind-ro="$TREE":/srv/bb >/dev/null 2>&1 &
    n=0
    until [ "$("$BIN/ns-ctl" shell "$1" -- /bin/systemctl is-system-running 2>/dev/null)" = running ]; do
        n=$((n + 1))
        [ $n -lt 300 ] || { echo "guest $1 did not boot" >&2; exit 1; }
        sleep 0.2
    done
}

# median N...: the median of the numbers.
median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
