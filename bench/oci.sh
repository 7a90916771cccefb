#!/usr/bin/env bash
# Benchmark ns-oci as an OCI runtime (issue 10 target: `ctr run --rm` of /bin/true faster than
# runc, and within 1.2x of crun), in one run on this machine:
#   1. through containerd: `ctr run --rm --runc-binary RUNTIME IMAGE ID /bin/true`, with
#      ns-oci, runc and crun (crun only when it accepts this host's cgroup layout), on a
#      private containerd (tests/oci/containerd), interleaved, medians;
#   2. the runtime alone: `RUNTIME run --bundle B ID` (create, start, wait, delete) of the same
#      bundle (busybox, runc's default spec running /bin/true), with hyperfine.
# Usage (as root): bench/oci.sh        RUNS=30 SKIP_BUILD=1 as knobs
set -euo pipefail
RUNS=${RUNS:-30}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
[[ $(id -u) -eq 0 ]] || { echo "must run as root" >&2; exit 1; }
for p in busybox-static hyperfine containerd runc crun; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] ||
        { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)
TMP=$(mktemp -d /tmp/ns-bench-oci.XXXXXX)
cleanup() {
    "$REPO/tests/oci/containerd" stop "$TMP/ctd" >/dev/null 2>&1 || true
    find /sys/fs/cgroup -maxdepth 2 -type d -name ns-bench-oci -exec rmdir {} + 2>/dev/null || true
    for rt in runc crun; do "$rt" --root "$TMP/root-$rt" delete --force bench >/dev/null 2>&1 || true; done
    "$BIN/ns-oci" --root "$TMP/root-ns-oci" delete --force bench >/dev/null 2>&1 || true
    rm -rf --one-file-system -- "$TMP"
}
trap cleanup EXIT

# The bundle: busybox, runc's default spec, /bin/true, no terminal.
mkdir -p "$TMP/bundle"
"$REPO/scripts/mkrootfs-busybox" "$TMP/bundle/rootfs" >/dev/null
(cd "$TMP/bundle" && runc spec)
python3 - "$TMP/bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
json.dump(c, open(sys.argv[1], "w"))
PY
runtimes=("$BIN/ns-oci" "$(command -v runc)")
crun_bin=$(command -v crun)
if crun --root "$TMP/root-crun" run --bundle "$TMP/bundle" bench >/dev/null 2>"$TMP/crun.err"; then
    runtimes+=("$crun_bin")
else
    echo "crun skipped: it fails on this host: $(head -c 200 "$TMP/crun.err")"
fi

echo "== through containerd: ctr run --rm of /bin/true ($RUNS runs each, interleaved) =="
"$REPO/tests/oci/containerd" start "$TMP/ctd" >/dev/null
"$REPO/tests/oci/mkimage" "$TMP/img.tar" localhost/bench:1 >/dev/null
# A namespace of our own: its cgroups (/ns-bench-oci/ID) are removed with it.
CTR="ctr --address $TMP/ctd/containerd.sock --namespace ns-bench-oci"
$CTR images import "$TMP/img.tar" >/dev/null
SNAP=$(cat "$TMP/ctd/snapshotter")
cmds=()
for rt in "${runtimes[@]}"; do
    cmds+=("$CTR run --rm --snapshotter $SNAP --runc-binary $rt localhost/bench:1 bench-$(basename "$rt") /bin/true")
done
python3 "$REPO/bench/interleave.py" "$RUNS" "${cmds[@]}" | tee "$TMP/ctr.txt"

echo "== the runtime alone: RUNTIME run --bundle B ID (create, start, wait, delete) =="
args=()
for rt in "${runtimes[@]}"; do
    n=$(basename "$rt")
    args+=(-n "$n" "$rt --root $TMP/root-$n run --bundle $TMP/bundle bench")
done
hyperfine -N --warmup 5 --min-runs "$((RUNS * 2))" --export-json "$TMP/run.json" "${args[@]}" >/dev/null
names=()
for rt in "${runtimes[@]}"; do names+=("$(basename "$rt")"); done
python3 - "$TMP/run.json" "$TMP/ctr.txt" "${names[@]}" <<'PY'
import json, sys
r = {x["command"]: (x["median"] * 1000, x["mean"] * 1000) for x in json.load(open(sys.argv[1]))["results"]}
for k, (med, mean) in r.items():
    print(f"{k:8} {med:8.2f} ms median {mean:8.2f} ms mean")
base = r["ns-oci"][0]
for k, (med, _) in r.items():
    if k != "ns-oci":
        print(f"{k} / ns-oci (runtime alone, medians): {med / base:.2f}x")
# interleave.py prints one line per command, in the order given.
ctr = {n: float(l.split()[0]) for n, l in zip(sys.argv[3:], open(sys.argv[2]))}
for k, v in ctr.items():
    if k != "ns-oci":
        print(f"ctr run --rm: ns-oci / {k} = {ctr['ns-oci'] / v:.2f}x (medians; below 1: ns-oci faster)")
PY
