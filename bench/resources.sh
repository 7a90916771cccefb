#!/usr/bin/env bash
# Benchmark --property: start+exit of ns-run with three properties against without, and
# systemd-nspawn (which, with --keep-unit and no systemd, ignores them) and bwrap, in one
# hyperfine run; then the difference, interleaved (issue 7 target: under 0.5 ms extra).
# Usage (as root): bench/resources.sh        RUNS=40 SKIP_BUILD=1 as knobs
set -euo pipefail
RUNS=${RUNS:-40}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
[[ $(id -u) -eq 0 ]] || { echo "must run as root" >&2; exit 1; }
for p in busybox-static hyperfine systemd-container bubblewrap; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] ||
        { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)
TMP=$(mktemp -d /tmp/ns-bench-r.XXXXXX)
trap 'rm -rf --one-file-system -- "$TMP"' EXIT
"$REPO/scripts/mkrootfs-busybox" "$TMP/box"
PROPS="--property=MemoryMax=256M --property=TasksMax=100 --property=CPUWeight=50"
json=$TMP/r.json
hyperfine -N --warmup 5 --min-runs "$RUNS" --export-json "$json" \
    -n "ns-run" "$BIN/ns-run -q -D $TMP/box /bin/true" \
    -n "ns-run +3 properties" "$BIN/ns-run -q $PROPS -D $TMP/box /bin/true" \
    -n "nspawn +3 properties" "systemd-nspawn --register=no --keep-unit -q $PROPS -D $TMP/box /bin/true" \
    -n "bwrap" "bwrap --bind $TMP/box / --proc /proc --dev /dev --unshare-all /bin/true" >/dev/null
python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x["mean"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in r.items():
    print(f"{k:22} {v:8.2f} ms")
p = r["ns-run +3 properties"]
print(f"nspawn / ns-run (+3 properties): {r['nspawn +3 properties'] / p:.1f}x; bwrap / ns-run: {r['bwrap'] / p:.2f}x")
PY
echo "ns-run, interleaved ($((RUNS * 5)) runs each); the target for three properties is under +0.5 ms:"
python3 "$REPO/bench/interleave.py" $((RUNS * 5)) "$BIN/ns-run -q -D $TMP/box /bin/true" "$BIN/ns-run -q $PROPS -D $TMP/box /bin/true"
