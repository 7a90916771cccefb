#!/usr/bin/env bash
# Benchmark the variants of issue 19's second goal: start+exit of /bin/true with -U, with
# --private-network and with -n (veth), each within 1.5x of bwrap's or the unshare floor's
# equivalent. One hyperfine invocation times all of them (and the plain starts) on the same
# busybox tree. Everything runs inside a throwaway network namespace made here (the veth of
# -n lands there, so no interface of the machine is touched).
#
# Usage (as root):  bench/variants.sh     (uses the release binaries as they are; build first
#                                          with cargo build --release --workspace)
# Environment knobs:
#   MIN_RUNS=100    hyperfine --min-runs
#   WARMUP=10       hyperfine --warmup
set -euo pipefail

MIN_RUNS=${MIN_RUNS:-100}
WARMUP=${WARMUP:-10}
TARGET_RATIO=1.5        # issue 19: each variant within 1.5x bwrap's or the floor's equivalent

# shellcheck source=bench/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------
# Cleanup: the network namespace (and with it every link left in it), mounts below the temp
# dir (there should be none), then the temp dir.
# ---------------------------------------------------------------------------------------
TMP=""
NS="ns-bench-variants-$$"
NS_MADE=0


cleanup() {
    local rc=$? m
    trap - EXIT INT TERM
    if ((NS_MADE)); then
        ip netns del "$NS" 2>/dev/null || echo "warning: could not delete network namespace $NS" >&2
        NS_MADE=0
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        remove_tmp_dir "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

print_environment

need_packages busybox-static hyperfine bubblewrap iproute2 util-linux

fresh_binaries
NSRUN="$BIN/ns-run"
[[ -x $NSRUN ]] || die "$NSRUN missing (cargo build --release --workspace first)"

note "hyperfine: $(hyperfine --version)"
note "bwrap:     $(bwrap --version)"
note "unshare:   $(unshare --version)"
note "ns-run:    $NSRUN ($(stat -c %s "$NSRUN") bytes)"

# ---------------------------------------------------------------------------------------
section "Root file system and network namespace"
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/ns-bench-variants.XXXXXX)
ROOT="$TMP/root"
"$REPO/scripts/mkrootfs-busybox" "$ROOT"
note "busybox rootfs: $ROOT ($(ls "$ROOT/bin" | wc -l) entries in /bin)"

ip netns add "$NS"
NS_MADE=1
# nsenter, not `ip netns exec` (as bench/network.sh): the latter also makes a new mount
# namespace and remounts /sys, which changes what the runtimes find there.
IN=(nsenter "--net=/run/netns/$NS")
note "network namespace: $NS; every command below runs in it (${IN[*]} ...)"

# ---------------------------------------------------------------------------------------
section "Checking commands (each run once, in the network namespace)"
# ---------------------------------------------------------------------------------------
TRY_IN=("${IN[@]}")

# The floor: unshare's namespaces, /proc mounted, chroot into the tree. Without --root
# support for --mount-proc, ROOT/proc is named instead; failing that, no /proc at all.
FLOOR_CORE=(--fork --pid --mount --uts --ipc)
floor_try() { # $1 = name, rest = extra unshare options
    local name=$1
    shift
    if try "$name" unshare "${FLOOR_CORE[@]}" "$@" --mount-proc --root "$ROOT" /bin/true; then
        return 0
    fi
    if try "$name" unshare "${FLOOR_CORE[@]}" "$@" "--mount-proc=$ROOT/proc" --root "$ROOT" /bin/true; then
        note "$name: --mount-proc with --root failed; using --mount-proc=ROOT/proc instead"
        return 0
    fi
    if try "$name" unshare "${FLOOR_CORE[@]}" "$@" --root "$ROOT" /bin/true; then
        note "$name: proc cannot be mounted by unshare; it runs WITHOUT a /proc mount"
        return 0
    fi
    note "skipping $name"
    return 1
}
floor_try "floor" || true
floor_try "floor -U" --user --map-root-user || true
floor_try "floor netns" --net || true

BWRAP_CORE=(--bind "$ROOT" / --proc /proc --dev /dev --unshare-pid --unshare-uts --unshare-ipc --unshare-cgroup)
if ! bwrap "${BWRAP_CORE[@]}" /bin/true </dev/null >/dev/null 2>&1; then
    BWRAP_CORE=(--bind "$ROOT" / --proc /proc --dev /dev --unshare-pid --unshare-uts --unshare-ipc --unshare-cgroup-try)
    note "bwrap: using --unshare-cgroup-try (plain --unshare-cgroup failed)"
fi
try "bwrap" bwrap "${BWRAP_CORE[@]}" /bin/true || note "skipping bwrap"
try "bwrap -U" bwrap "${BWRAP_CORE[@]}" --unshare-user --uid 0 --gid 0 /bin/true || note "skipping bwrap -U"
try "bwrap netns" bwrap "${BWRAP_CORE[@]}" --unshare-net /bin/true || note "skipping bwrap netns"

# The first -U run may chown the tree (ownership "auto"); this check is that untimed run.
try "ns-run" "$NSRUN" -q -D "$ROOT" /bin/true || note "skipping ns-run"
try "ns-run -U" "$NSRUN" -q -U -D "$ROOT" /bin/true || note "skipping ns-run -U"
try "ns-run --private-network" "$NSRUN" -q --private-network -D "$ROOT" /bin/true ||
    note "skipping ns-run --private-network"
# -x: a new machine name, so a new veth name, at every run. With one name every run waits for
# the kernel to finish deleting the previous run's veth (ns-net retries while the name exists,
# see Networking in the README): that measures the kernel's teardown, not a start.
try "ns-run -x -n" "$NSRUN" -q -x -n -D "$ROOT" /bin/true || note "skipping ns-run -x -n"
try "ns-run -x --private-network" "$NSRUN" -q -x --private-network -D "$ROOT" /bin/true ||
    note "skipping ns-run -x --private-network"
note "the -n references are 'bwrap netns' and 'floor netns': a network namespace, but no veth"
note "(making and deleting a veth pair from outside around the floor does not fit one command)"
note "tree owner after the checks: $(stat -c %u:%g "$ROOT/bin/busybox") (uid:gid of bin/busybox)"

((${#CMDS[@]})) || die "no command works; nothing to benchmark"

# ---------------------------------------------------------------------------------------
section "Startup time: hyperfine (one invocation, in $NS, warmup $WARMUP, min runs $MIN_RUNS)"
# ---------------------------------------------------------------------------------------
HF_JSON="$TMP/hyperfine.json"
HF_ARGS=(-N --warmup "$WARMUP" --min-runs "$MIN_RUNS" --style basic --export-json "$HF_JSON")
for i in "${!CMDS[@]}"; do
    HF_ARGS+=(-n "${NAMES[$i]}" "${CMDS[$i]}")
done
note "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"${IN[@]}" hyperfine "${HF_ARGS[@]}"
note "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------
section "Summary"
# ---------------------------------------------------------------------------------------
python3 - "$HF_JSON" "$TARGET_RATIO" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))["results"]
target = float(sys.argv[2])
r = {x["command"]: x for x in data}
print(f"  {'command':<26} {'median':>8} {'mean ± stddev':>17} {'min':>7} {'runs':>5}")
for x in data:
    print(f"  {x['command']:<26} {x['median']*1e3:>8.2f} {x['mean']*1e3:>8.2f} ± {x['stddev']*1e3:<6.2f}"
          f" {x['min']*1e3:>7.2f} {len(x['times']):>5}")
print("  (times in ms)")

# (variant, bwrap's equivalent, the floor's equivalent)
pairs = [
    ("ns-run -U", "bwrap -U", "floor -U"),
    ("ns-run --private-network", "bwrap netns", "floor netns"),
    ("ns-run -x -n", "bwrap netns", "floor netns"),
    ("ns-run", "bwrap", "floor"),
]
print(f"\n  ratios (target: within {target:g}x of the better of bwrap's and the floor's equivalent;"
      f" verdict on the median, the mean's in brackets)")
print(f"  {'ratio':<40} {'median':>7} {'mean':>7}")
for variant, *refs in pairs:
    if variant not in r:
        print(f"  {variant}: not measured (its check failed)")
        continue
    best = None
    for ref in refs:
        if ref not in r:
            print(f"  {variant + ' / ' + ref:<40} {'n/a':>7} {'n/a':>7}  (reference not measured)")
            continue
        med = r[variant]["median"] / r[ref]["median"]
        mean = r[variant]["mean"] / r[ref]["mean"]
        print(f"  {variant + ' / ' + ref:<40} {med:>6.2f}x {mean:>6.2f}x")
        if best is None or med < best[1]:
            best = (ref, med, mean)
    if best is None:
        print(f"    -> no reference measured")
        continue
    ref, med, mean = best
    v_med = "MET" if med <= target else "NOT MET"
    v_mean = "MET" if mean <= target else "NOT MET"
    print(f"    -> within {target:g}x: {v_med} ({med:.2f}x against {ref}; mean {mean:.2f}x: {v_mean})")
if "ns-run -x -n" in r:
    print("  (-n against netns references that make no veth: the veth's cost counts against ns-run)")
EOF

# ---------------------------------------------------------------------------------------
section "Leftovers"
# ---------------------------------------------------------------------------------------
left=$("${IN[@]}" ip -o link | awk -F': ' '$2 != "lo" { print $2 }')
if [[ -n $left ]]; then note "links left in $NS: $(echo $left)"; else note "no link left in $NS but lo"; fi
m=$(mounts_under "$TMP")
if [[ -n $m ]]; then note "mounts under $TMP: $m"; else note "no mounts under $TMP"; fi
ip netns del "$NS"
NS_MADE=0
if ip netns list | grep -qw -- "$NS"; then note "WARNING: $NS still listed"; else note "network namespace $NS deleted"; fi
note "temp dir $TMP is removed on exit"
