#!/usr/bin/env bash
# Benchmark -U: start+exit of ns-run with a user namespace against a plain ns-run and
# systemd-nspawn -U, in one hyperfine run (issue 5 target: userns adds under 0.5 ms).
# Usage (as root): bench/userns.sh        RUNS=40 SKIP_BUILD=1 as knobs
set -euo pipefail
RUNS=${RUNS:-40}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
[[ $(id -u) -eq 0 ]] || { echo "must run as root" >&2; exit 1; }
for p in busybox-static hyperfine systemd-container; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] ||
        { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)
TMP=$(mktemp -d /tmp/ns-bench-u.XXXXXX)
trap 'rm -rf --one-file-system -- "$TMP"' EXIT
"$REPO/scripts/mkrootfs-busybox" "$TMP/box"
json=$TMP/u.json
hyperfine -N --warmup 5 --min-runs "$RUNS" --export-json "$json" \
    -n "ns-run" "$BIN/ns-run -q -D $TMP/box /bin/true" \
    -n "ns-run -U" "$BIN/ns-run -q -U -D $TMP/box /bin/true" \
    -n "nspawn" "systemd-nspawn --register=no --keep-unit -q -D $TMP/box /bin/true" \
    -n "nspawn -U" "systemd-nspawn --register=no --keep-unit -q -U -D $TMP/box /bin/true" >/dev/null
python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x["mean"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in r.items():
    print(f"{k:12} {v:8.2f} ms")
print(f"nspawn: -U over a plain start {r['nspawn -U'] - r['nspawn']:+.2f} ms; nspawn -U / ns-run -U: {r['nspawn -U'] / r['ns-run -U']:.1f}x")
PY
# The difference that matters is small against this machine's drift: measure it interleaved.
echo "ns-run, interleaved ($((RUNS * 5)) runs each); the target for -U is under +0.5 ms:"
python3 "$REPO/bench/interleave.py" $((RUNS * 5)) "$BIN/ns-run -q -D $TMP/box /bin/true" "$BIN/ns-run -q -U -D $TMP/box /bin/true"
