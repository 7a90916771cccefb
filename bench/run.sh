#!/usr/bin/env bash
# Benchmark ns-run against systemd-nspawn, bubblewrap and a bare `unshare` floor:
#   1. container startup time (hyperfine, one invocation for all commands);
#   2. memory of the host-side monitor process with many containers running.
#
# Usage (as root):  bench/run.sh
# Environment knobs:
#   MIN_RUNS=30     hyperfine --min-runs
#   WARMUP=5        hyperfine --warmup
#   N_NSRUN=50      number of concurrent ns-run containers for the memory test
#   N_OTHER=5       number of concurrent systemd-nspawn / bwrap instances
#   SKIP_BUILD=1    do not run cargo build
set -euo pipefail

MIN_RUNS=${MIN_RUNS:-30}
WARMUP=${WARMUP:-5}
N_NSRUN=${N_NSRUN:-50}
N_OTHER=${N_OTHER:-5}
TARGET_RATIO=2.5        # ns-run startup at most 2.5x the unshare floor (issue 19)
TARGET_PRIV_KIB=512     # ns-run monitor private memory per container

# shellcheck source=bench/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------
# Cleanup: everything we start is recorded in LAUNCHED; the temp dir is removed only
# after checking nothing is mounted below it (rm never crosses a file system either).
# ---------------------------------------------------------------------------------------
TMP=""
LAUNCHED=()


cleanup() {
    local rc=$? pid m i r left
    trap - EXIT INT TERM
    if ((${#LAUNCHED[@]})); then # interrupted: SIGTERM, up to 3 s grace, then SIGKILL
        kill -TERM "${LAUNCHED[@]}" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do
            left=""
            for pid in "${LAUNCHED[@]}"; do
                [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && left+=" $pid"
            done
            [[ -z $left ]] && break
            sleep 0.1
        done
        [[ -z $left ]] || kill -KILL $left 2>/dev/null || true
        for pid in "${LAUNCHED[@]}"; do wait "$pid" 2>/dev/null || true; done
        LAUNCHED=()
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        # Last resort: any sleep still running in one of our roots.
        ROOT_IDS=()
        for r in "$TMP"/root "$TMP"/nspawn-*; do
            [[ -d $r ]] && ROOT_IDS+=("$(stat -L -c %d:%i "$r/")")
        done
        if ((${#ROOT_IDS[@]})) && declare -F sleeps_in_roots >/dev/null; then
            left=$(sleeps_in_roots)
            [[ -z $left ]] || { echo "cleanup: killing leftover sleeps:" $left >&2; kill -KILL $left 2>/dev/null || true; }
        fi
        remove_tmp_dir "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

print_environment

need_packages busybox-static hyperfine bubblewrap systemd-container runc

if [[ -z ${SKIP_BUILD:-} ]]; then
    command -v cargo >/dev/null || PATH="$HOME/.cargo/bin:$PATH"
    note "building: cargo build --release --workspace"
    (cd "$REPO" && cargo build --release --workspace --quiet) ||
        die "cargo build failed (SKIP_BUILD=1 benchmarks the binaries already in $BIN)"
fi
for b in ns-run ns-enter ns-mount ns-caps; do
    [[ -x $BIN/$b ]] || die "$BIN/$b missing (build failed?)"
done
fresh_binaries
NSRUN="$BIN/ns-run"

note "hyperfine:      $(hyperfine --version)"
note "bwrap:          $(bwrap --version)"
note "runc:           $(runc --version 2>/dev/null | head -n1)"
note "systemd-nspawn: $(systemd-nspawn --version | head -n1)"
note "unshare:        $(unshare --version)"
note "ns-run:         $NSRUN ($(stat -c %s "$NSRUN") bytes)"

# ---------------------------------------------------------------------------------------
section "Root file system"
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/ns-bench.XXXXXX)
ROOT="$TMP/root"
make_rootfs() { "$REPO/scripts/mkrootfs-busybox" "$1"; }
make_rootfs "$ROOT"
note "busybox rootfs: $ROOT ($(ls "$ROOT/bin" | wc -l) entries in /bin)"

# ---------------------------------------------------------------------------------------
section "Startup time: checking commands"
# ---------------------------------------------------------------------------------------

try ns-run "$NSRUN" -q -D "$ROOT" /bin/true || die "ns-run does not work; nothing to benchmark"

HAVE_NSPAWN=0
if try systemd-nspawn systemd-nspawn --register=no --keep-unit -q -D "$ROOT" /bin/true; then
    HAVE_NSPAWN=1
else
    note "skipping systemd-nspawn"
fi

HAVE_BWRAP=0
BWRAP_ARGS=(--bind "$ROOT" / --proc /proc --dev /dev --unshare-pid --unshare-uts --unshare-ipc --unshare-cgroup)
if try bwrap bwrap "${BWRAP_ARGS[@]}" /bin/true; then
    HAVE_BWRAP=1
else
    BWRAP_ARGS=(--bind "$ROOT" / --proc /proc --dev /dev --unshare-pid --unshare-uts --unshare-ipc --unshare-cgroup-try)
    if try bwrap bwrap "${BWRAP_ARGS[@]}" /bin/true; then
        HAVE_BWRAP=1
        note "bwrap: using --unshare-cgroup-try (plain --unshare-cgroup failed)"
    else
        note "skipping bwrap"
    fi
fi

# The OCI runtimes on the same tree: runc's default spec (its namespaces, /proc, /dev,
# capabilities, seccomp off, cgroups), /bin/true without a terminal; crun where it runs here.
mkdir -p "$TMP/bundle"
(cd "$TMP/bundle" && runc spec)
python3 - "$TMP/bundle/config.json" "$ROOT" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["root"] = {"path": sys.argv[2], "readonly": True}
json.dump(c, open(sys.argv[1], "w"))
PY
for rt in runc crun; do
    if command -v "$rt" >/dev/null; then
        try "$rt" "$rt" --root "$TMP/$rt-state" run --bundle "$TMP/bundle" "bench-$rt" ||
            note "skipping $rt"
    fi
done

FLOOR_ARGS=(--fork --pid --mount --uts --ipc --mount-proc --root "$ROOT")
if ! try unshare-floor unshare "${FLOOR_ARGS[@]}" /bin/true; then
    FLOOR_ARGS=(--fork --pid --mount --uts --ipc "--mount-proc=$ROOT/proc" --root "$ROOT")
    if try unshare-floor unshare "${FLOOR_ARGS[@]}" /bin/true; then
        note "floor: --mount-proc with --root failed; using --mount-proc=ROOT/proc instead"
    else
        FLOOR_ARGS=(--fork --pid --mount --uts --ipc --root "$ROOT")
        try unshare-floor unshare "${FLOOR_ARGS[@]}" /bin/true ||
            die "no working unshare floor"
        note "floor: proc cannot be mounted by unshare; floor runs WITHOUT a /proc mount"
    fi
fi

# ---------------------------------------------------------------------------------------
section "Startup time: hyperfine (one invocation, warmup $WARMUP, min runs $MIN_RUNS)"
# ---------------------------------------------------------------------------------------
HF_JSON="$TMP/hyperfine.json"
HF_ARGS=(--warmup "$WARMUP" --min-runs "$MIN_RUNS" --style basic --export-json "$HF_JSON")
# --shell=none (-N) exists since hyperfine 1.13; without it a shell start is included.
if hyperfine --help 2>/dev/null | grep -q -- 'shell=none'; then
    HF_ARGS+=(--shell=none)
else
    note "this hyperfine has no --shell=none: times include a shell start"
fi
for i in "${!CMDS[@]}"; do
    HF_ARGS+=(-n "${NAMES[$i]}" "${CMDS[$i]}")
done
note "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine "${HF_ARGS[@]}"
note "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"

section "Startup time: summary"
python3 - "$HF_JSON" "$TARGET_RATIO" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))["results"]
target = float(sys.argv[2])
floor = next(r for r in data if r["command"] == "unshare-floor")
print(f"  {'command':<16} {'mean ± stddev (ms)':>20} {'median':>8} {'min':>7} {'runs':>5}"
      f" {'mean/floor':>11} {'median/floor':>13}")
for r in data:
    print(f"  {r['command']:<16} {r['mean']*1e3:>10.2f} ± {r['stddev']*1e3:<7.2f}"
          f" {r['median']*1e3:>8.2f} {r['min']*1e3:>7.2f} {len(r['times']):>5}"
          f" {r['mean']/floor['mean']:>10.2f}x {r['median']/floor['median']:>12.2f}x")
print("  (times in ms; the median is less sensitive to a busy machine than the mean)")
ns = next(r for r in data if r["command"] == "ns-run")
ratio = ns["mean"] / floor["mean"]
verdict = "MET" if ratio <= target else "NOT MET"
print(f"\n  target: ns-run mean <= {target:g}x the unshare floor mean -> {ratio:.2f}x: {verdict}"
      f" (median ratio {ns['median']/floor['median']:.2f}x)")
EOF

leftover=$(mounts_under "$ROOT")
[[ -z $leftover ]] || note "WARNING: mounts left under ROOT after the startup runs: $leftover"

# ---------------------------------------------------------------------------------------
# Memory helpers
# ---------------------------------------------------------------------------------------
# smaps_rollup fields of one PID: "private_kib rss_kib anon_kib pss_kib"
mem_of() {
    awk '/^Private_Clean:|^Private_Dirty:/ { p += $2 }
         /^Rss:/ { r = $2 } /^Anonymous:/ { a = $2 } /^Pss:/ { s = $2 }
         END { print p, r, a, s }' "/proc/$1/smaps_rollup"
}

# PID of a descendant of $1 whose comm is "sleep", or nothing
sleep_below() {
    ps -e -o pid=,ppid=,comm= | awk -v root="$1" '
        { ppid[$1] = $2; comm[$1] = $3 }
        END {
            for (p in comm) {
                if (comm[p] != "sleep") continue
                q = p
                for (i = 0; i < 64 && q > 1; i++) { q = ppid[q]; if (q == root) { print p; exit } }
            }
        }'
}

# Wait (bounded) until each launcher PID has a sleep below it.
wait_for_sleeps() { # args: PIDs
    local pid i s
    for pid in "$@"; do
        for ((i = 0; i < 200; i++)); do # 200 x 50 ms = 10 s per container
            s=$(sleep_below "$pid")
            [[ -n $s ]] && break
            kill -0 "$pid" 2>/dev/null || die "launcher $pid exited before its container's sleep started"
            sleep 0.05
        done
        [[ -n $s ]] || die "no sleep appeared below $pid within 10 s"
    done
}

# Print min/mean/max of each column for the given PIDs.
report_mem() { # $1 = label, rest = PIDs
    local label=$1 pid
    shift
    for pid in "$@"; do mem_of "$pid"; done | awk -v label="$label" '
        { n++; for (i = 1; i <= 4; i++) { v = $i; s[i] += v
              if (n == 1 || v < mn[i]) mn[i] = v; if (n == 1 || v > mx[i]) mx[i] = v } }
        END {
            split("Private (Clean+Dirty),Rss,Anonymous,Pss", name, ",")
            printf "  %s: %d processes\n", label, n
            printf "    %-22s %8s %8s %8s  (KiB)\n", "", "min", "mean", "max"
            for (i = 1; i <= 4; i++)
                printf "    %-22s %8d %8.0f %8d\n", name[i], mn[i], s[i] / n, mx[i]
        }'
}

# Roots (dev:inode) whose sleeps must be gone afterwards.
ROOT_IDS=()
root_id() { stat -L -c %d:%i "$1/"; }

# Sleep processes whose root directory is one of ROOT_IDS (also works after pivot_root,
# where /proc/PID/root no longer reads as the host path).
sleeps_in_roots() {
    local p id r
    for p in $(pgrep -x sleep || true); do
        id=$(stat -L -c %d:%i "/proc/$p/root/" 2>/dev/null) || continue
        for r in "${ROOT_IDS[@]}"; do
            if [[ $id == "$r" ]]; then echo "$p"; fi
        done
    done
    return 0
}

# SIGKILL the PIDs in FIRST_KILL (processes that would outlive their launcher: bwrap's
# PID 1), SIGTERM the launchers, wait for them, check no sleep remains in the roots.
FIRST_KILL=()
stop_all() { # $1 = label, rest = PIDs
    local label=$1 pid rc=0 codes=() left
    shift
    if ((${#FIRST_KILL[@]})); then
        note "$label: SIGKILL to the namespaces' PID 1 first: ${FIRST_KILL[*]}"
        kill -KILL "${FIRST_KILL[@]}" 2>/dev/null || true
        # Let the launchers reap them (else they would end up as zombies of our PID 1).
        for ((i = 0; i < 100; i++)); do
            left=""
            for pid in "${FIRST_KILL[@]}"; do [[ -e /proc/$pid ]] && left+=" $pid"; done
            [[ -z $left ]] && break
            sleep 0.05
        done
        FIRST_KILL=()
    fi
    kill -TERM "$@" 2>/dev/null || true
    for pid in "$@"; do
        rc=0
        wait "$pid" 2>/dev/null || rc=$?
        codes+=("$rc")
    done
    note "$label: all $# launchers exited (exit codes: $(printf '%s\n' "${codes[@]}" | sort | uniq -c | awk '{printf "%s x%s ", $2, $1}'))"
    LAUNCHED=()
    for ((i = 0; i < 50; i++)); do
        left=$(sleeps_in_roots)
        [[ -z $left ]] && break
        sleep 0.1
    done
    if [[ -n $left ]]; then
        note "ERROR: sleep processes still running in the container roots: $left"
        return 1
    fi
    note "$label: no sleep process left in the container roots"
}

# ---------------------------------------------------------------------------------------
section "Memory: $N_NSRUN concurrent ns-run containers (--read-only: one tree takes many; /bin/sleep 60)"
# ---------------------------------------------------------------------------------------
ROOT_IDS=("$(root_id "$ROOT")")
PIDS=()
for ((i = 0; i < N_NSRUN; i++)); do
    "$NSRUN" -q --read-only -M "bench-$i" -D "$ROOT" /bin/sleep 60 </dev/null >/dev/null 2>"$TMP/nsrun.$i.err" &
    PIDS+=("$!")
    LAUNCHED+=("$!")
done
wait_for_sleeps "${PIDS[@]}"
note "all $N_NSRUN containers running; load: $(cut -d' ' -f1-3 /proc/loadavg)"
report_mem "ns-run monitor (host side)" "${PIDS[@]}"
NSRUN_MEAN=$(for p in "${PIDS[@]}"; do mem_of "$p"; done | awk '{ s += $1 } END { printf "%.0f", s / NR }')
NSRUN_MAX=$(for p in "${PIDS[@]}"; do mem_of "$p"; done | awk 'BEGIN { m = 0 } $1 > m { m = $1 } END { print m }')
if ((NSRUN_MAX < TARGET_PRIV_KIB)); then
    note "target: monitor private memory < $TARGET_PRIV_KIB KiB -> max $NSRUN_MAX KiB, mean $NSRUN_MEAN KiB: MET"
else
    note "target: monitor private memory < $TARGET_PRIV_KIB KiB -> max $NSRUN_MAX KiB, mean $NSRUN_MEAN KiB: NOT MET"
fi
# Breakdown of one monitor by mapping (private KiB), to see what dominates.
note "private KiB by mapping, monitor PID ${PIDS[0]}:"
awk '/^[0-9a-f]+-[0-9a-f]+ /{ name = ($6 == "" ? "[anon]" : $6) " " $2 }
     /^Private_(Clean|Dirty):/ { priv[name] += $2 }
     END { for (n in priv) if (priv[n] > 0) printf "    %6d  %s\n", priv[n], n }' \
    "/proc/${PIDS[0]}/smaps" | sort -rn
stop_all "ns-run" "${PIDS[@]}"
for ((i = 0; i < N_NSRUN; i++)); do
    if [[ -s $TMP/nsrun.$i.err ]]; then
        note "stderr of ns-run #$i: $(head -c 300 "$TMP/nsrun.$i.err" | tr '\n' ' ')"
    fi
done

# ---------------------------------------------------------------------------------------
# systemd-nspawn locks its directory (one instance per tree), so each instance gets its
# own copy of the rootfs.
if ((HAVE_NSPAWN)); then
    section "Memory: $N_OTHER concurrent systemd-nspawn instances (/bin/sleep 60)"
    PIDS=()
    ROOT_IDS=()
    for ((i = 0; i < N_OTHER; i++)); do
        r="$TMP/nspawn-$i"
        cp -a "$ROOT" "$r"
        ROOT_IDS+=("$(root_id "$r")")
        systemd-nspawn --register=no --keep-unit -q -D "$r" /bin/sleep 60 \
            </dev/null >/dev/null 2>"$TMP/nspawn.$i.err" &
        PIDS+=("$!")
        LAUNCHED+=("$!")
    done
    wait_for_sleeps "${PIDS[@]}"
    report_mem "systemd-nspawn process (host side)" "${PIDS[@]}"
    stop_all "systemd-nspawn" "${PIDS[@]}"
    for ((i = 0; i < N_OTHER; i++)); do
        # nspawn cannot rm -rf its propagation dir when /run is not tmpfs; remove it if empty.
        d="/run/systemd/nspawn/propagate/nspawn-$i"
        [[ -d $d ]] && { rmdir "$d" 2>/dev/null || note "left behind: $d"; }
        if [[ -s $TMP/nspawn.$i.err ]]; then
            note "stderr of systemd-nspawn #$i: $(sort -u "$TMP/nspawn.$i.err" | head -c 300 | tr '\n' ' ')"
        fi
    done
fi

# ---------------------------------------------------------------------------------------
if ((HAVE_BWRAP)); then
    section "Memory: $N_OTHER concurrent bwrap instances (/bin/sleep 60)"
    PIDS=()
    ROOT_IDS=("$(root_id "$ROOT")")
    for ((i = 0; i < N_OTHER; i++)); do
        bwrap "${BWRAP_ARGS[@]}" /bin/sleep 60 </dev/null >/dev/null 2>"$TMP/bwrap.$i.err" &
        PIDS+=("$!")
        LAUNCHED+=("$!")
    done
    wait_for_sleeps "${PIDS[@]}"
    # bwrap's second process (PID 1 in the namespace) also stays for the lifetime. A
    # SIGTERM to the first one does not reach it (no --die-with-parent here): the sandbox
    # and its sleep would survive, orphaned. So it is SIGKILLed first, which also makes the
    # first bwrap exit.
    INNER=()
    for p in "${PIDS[@]}"; do
        c=$(ps -o pid= --ppid "$p" | head -n1 | tr -d ' ')
        if [[ -n $c && $(ps -o comm= -p "$c") == bwrap ]]; then
            INNER+=("$c")
            LAUNCHED+=("$c")
        fi
    done
    report_mem "bwrap process (host side)" "${PIDS[@]}"
    if ((${#INNER[@]})); then
        report_mem "bwrap's PID 1 inside the namespace (for information)" "${INNER[@]}"
        FIRST_KILL=("${INNER[@]}")
    fi
    stop_all "bwrap" "${PIDS[@]}"
fi

# ---------------------------------------------------------------------------------------
section "Leftovers"
# ---------------------------------------------------------------------------------------
m=$(mounts_under "$TMP")
if [[ -n $m ]]; then note "mounts under $TMP: $m"; else note "no mounts under $TMP"; fi
ROOT_IDS=("$(root_id "$ROOT")")
for ((i = 0; i < N_OTHER; i++)); do
    [[ -d $TMP/nspawn-$i ]] && ROOT_IDS+=("$(root_id "$TMP/nspawn-$i")")
done
left=$(sleeps_in_roots)
if [[ -n $left ]]; then note "processes still in the roots: $left"; else note "no processes left in the roots"; fi
note "temp dir $TMP is removed on exit"
