#!/usr/bin/env bash
# Benchmark --network-veth: start+exit of ns-run against systemd-nspawn, and the extra cost of
# a veth over --private-network (issue 4 target: under 1 ms). Everything runs inside a
# throwaway network namespace made here, so no interface of the machine is touched.
#
# Usage (as root):  bench/network.sh        RUNS=40 SKIP_BUILD=1 as knobs
set -euo pipefail
RUNS=${RUNS:-40}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
[[ $(id -u) -eq 0 ]] || { echo "must run as root" >&2; exit 1; }
for p in busybox-static hyperfine systemd-container iproute2; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] ||
        { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)

NS=ns-bench-$$
TMP=$(mktemp -d /tmp/ns-bench-net.XXXXXX)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf --one-file-system -- "$TMP"; }
trap cleanup EXIT
ip netns add "$NS"
"$REPO/scripts/mkrootfs-busybox" "$TMP/box"
# nsenter, not `ip netns exec`: the latter remounts /sys, where nspawn then finds no cgroups.
IN="nsenter --net=/run/netns/$NS"
NSPAWN="systemd-nspawn --register=no --keep-unit -q -D $TMP/box"
json=$TMP/n.json
$IN hyperfine -N --warmup 5 --min-runs "$RUNS" --export-json "$json" \
    -n "ns-run -x --private-network" "$BIN/ns-run -q -x -D $TMP/box --private-network /bin/true" \
    -n "ns-run -x -n" "$BIN/ns-run -q -x -D $TMP/box -n /bin/true" \
    -n "ns-run -n (same name each run)" "$BIN/ns-run -q -D $TMP/box -n /bin/true" \
    -n "nspawn --private-network" "$NSPAWN --private-network /bin/true" \
    -n "nspawn -n" "$NSPAWN -n /bin/true" >/dev/null
python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x["mean"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in r.items():
    print(f"{k:34} {v:8.2f} ms")
extra = r["ns-run -x -n"] - r["ns-run -x --private-network"]
print(f"veth over --private-network (ns-run, -x gives every run its own name): {extra:+.2f} ms "
      f"(target < 1 ms: {'MET' if extra < 1 else 'MISSED'})")
print(f"nspawn: veth over --private-network {r['nspawn -n'] - r['nspawn --private-network']:+.2f} ms; "
      f"nspawn -n / ns-run -x -n: {r['nspawn -n'] / r['ns-run -x -n']:.1f}x")
PY
left=$(ip netns exec "$NS" ip -o link | grep -v ' lo:' || true)
[[ -z $left ]] && echo "no link left in the test namespace" || { echo "links left:"; echo "$left"; }
