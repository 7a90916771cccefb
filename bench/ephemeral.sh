#!/usr/bin/env bash
# Benchmark `-x/--ephemeral` start time: ns-run (an overlay with a tmpfs upper) against
# systemd-nspawn (a full copy of the tree on ext4), on a busybox tree and on a debootstrapped
# Debian bookworm tree (about 250 MB), in one hyperfine invocation.
#
# Targets (issue 3): ns-run's Debian/busybox ratio for -x at most 1.3; ns-run -x at most 1.2x
# a plain ns-run start.
#
# Usage (as root):  bench/ephemeral.sh
#   RUNS=20          hyperfine --min-runs for every command (nspawn on Debian takes seconds)
#   SKIP_BUILD=1     do not run cargo build
# The Debian tree is cached in /var/cache/ns-run/debian-bookworm (debootstrap, minbase).
set -euo pipefail

RUNS=${RUNS:-20}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
DEBIAN=/var/cache/ns-run/debian-bookworm

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

need=()
for p in busybox-static hyperfine systemd-container debootstrap; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || need+=("$p")
done
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)

if [[ ! -d $DEBIAN ]]; then
    echo "building the Debian tree (debootstrap --variant=minbase bookworm; cached)"
    rm -rf "$DEBIAN.tmp"
    mkdir -p "$(dirname "$DEBIAN")"
    debootstrap --variant=minbase bookworm "$DEBIAN.tmp" >/dev/null
    mv "$DEBIAN.tmp" "$DEBIAN"
fi

TMP=$(mktemp -d /tmp/ns-bench-x.XXXXXX)
trap 'rm -rf --one-file-system -- "$TMP"' EXIT
"$REPO/scripts/mkrootfs-busybox" "$TMP/busybox"
BB=$TMP/busybox

echo "trees: busybox $(du -sh "$BB" | cut -f1), debian $(du -sh "$DEBIAN" | cut -f1)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
NSPAWN="systemd-nspawn --register=no --keep-unit -q"
json=$TMP/x.json
hyperfine -N --warmup 3 --min-runs "$RUNS" --export-json "$json" \
    -n "ns-run plain busybox" "$BIN/ns-run -q -D $BB /bin/true" \
    -n "ns-run -x busybox" "$BIN/ns-run -q -x -D $BB /bin/true" \
    -n "ns-run plain debian" "$BIN/ns-run -q -D $DEBIAN /bin/true" \
    -n "ns-run -x debian" "$BIN/ns-run -q -x -D $DEBIAN /bin/true" \
    -n "nspawn -x busybox" "$NSPAWN -x -D $BB /bin/true" \
    -n "nspawn -x debian" "$NSPAWN -x -D $DEBIAN /bin/true" >/dev/null

python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
m = lambda k: r[k]["mean"] * 1000
print(f"{'command':24} {'mean ms':>9} {'± ms':>7} {'runs':>5}")
for k, x in r.items():
    print(f"{k:24} {m(k):9.2f} {x['stddev']*1000:7.2f} {len(x['times']):5}")
deb = m("ns-run -x debian") / m("ns-run -x busybox")
xplain = max(m("ns-run -x busybox") / m("ns-run plain busybox"), m("ns-run -x debian") / m("ns-run plain debian"))
nsp = m("nspawn -x debian") / m("nspawn -x busybox")
print(f"ns-run -x debian/busybox: {deb:.2f} (target <= 1.3: {'MET' if deb <= 1.3 else 'MISSED'})")
print(f"ns-run -x vs plain (worst tree): {xplain:.2f} (target <= 1.2: {'MET' if xplain <= 1.2 else 'MISSED'})")
print(f"nspawn -x debian/busybox: {nsp:.1f}; nspawn -x debian vs ns-run -x debian: {m('nspawn -x debian')/m('ns-run -x debian'):.0f}x")
PY
leftover=$(find "$DEBIAN/.." -maxdepth 1 -name '.#machine.*' 2>/dev/null | head -1)
[[ -z $leftover ]] || echo "note: nspawn left $leftover"
