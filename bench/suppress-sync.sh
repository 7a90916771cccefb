#!/usr/bin/env bash
# --suppress-sync=yes against the default, for a write-heavy payload (issue 20): in the
# Debian tree the tests cache (/var/cache/ns-run/debian-machined; made with debootstrap when
# missing), read-only, the shell writes N small files to a host directory on the host's disk
# bound at /mnt and `sync` makes each durable (one fsync per file, as package managers do).
# One hyperfine run: ns-run and systemd-nspawn, each with and without.
#
# Usage (as root): bench/suppress-sync.sh      N=300 RUNS=10 SKIP_BUILD=1 as knobs
set -euo pipefail
N=${N:-300}
RUNS=${RUNS:-10}
# shellcheck source=bench/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
[[ $(id -u) -eq 0 ]] || die "must run as root"
need_packages hyperfine systemd-container debootstrap
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)
TREE=/var/cache/ns-run/debian-machined
if [[ ! -x $TREE/usr/lib/systemd/systemd ]]; then
    note "making $TREE (debootstrap, a few minutes)"
    mkdir -p /var/cache/ns-run
    rm -rf "$TREE.tmp"
    debootstrap --variant=minbase --include=systemd,dbus,systemd-container bookworm "$TREE.tmp" >/dev/null
    mv "$TREE.tmp" "$TREE"
fi
# On the host's disk (not a tmpfs, where fsync costs nothing).
OUT=$(mktemp -d /var/tmp/ns-bench-sync.XXXXXX)
trap 'rm -rf --one-file-system -- "$OUT"' EXIT
payload="i=0; while [ \$i -lt $N ]; do echo x >/mnt/f\$i; i=\$((i+1)); done; sync /mnt/f*"
print_environment
section "$N files written and synced, each run (hyperfine, runs $RUNS)"
hyperfine -N --warmup 1 --runs "$RUNS" --style basic \
    --prepare "rm -f $OUT/f*" \
    -n "ns-run" "$BIN/ns-run -q --register=no --read-only -D $TREE --bind=$OUT:/mnt /bin/sh -c '$payload'" \
    -n "ns-run --suppress-sync=yes" "$BIN/ns-run -q --register=no --read-only -D $TREE --bind=$OUT:/mnt --suppress-sync=yes /bin/sh -c '$payload'" \
    -n "nspawn" "systemd-nspawn -q --register=no --keep-unit --read-only -D $TREE --bind=$OUT:/mnt /bin/sh -c '$payload'" \
    -n "nspawn --suppress-sync=yes" "systemd-nspawn -q --register=no --keep-unit --read-only -D $TREE --bind=$OUT:/mnt --suppress-sync=yes /bin/sh -c '$payload'"
