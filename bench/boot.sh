#!/usr/bin/env bash
# Benchmark booting Debian bookworm (systemd): time from start until `systemctl
# is-system-running` says running, ns-run against systemd-nspawn, on the same tree (a copy
# of the cached debootstrap tree), alternating, in one run. Issue 6 target: not slower.
# Usage (as root): bench/boot.sh      RUNS=5 SKIP_BUILD=1 as knobs
set -euo pipefail
RUNS=${RUNS:-5}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
CACHE=/var/cache/ns-run/debian-systemd
[[ $(id -u) -eq 0 ]] || { echo "must run as root" >&2; exit 1; }
for p in systemd-container debootstrap; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] ||
        { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)
if [[ ! -x $CACHE/usr/lib/systemd/systemd ]]; then
    rm -rf "$CACHE.tmp"; mkdir -p "$(dirname "$CACHE")"
    debootstrap --variant=minbase --include=systemd,dbus bookworm "$CACHE.tmp" >/dev/null
    mv "$CACHE.tmp" "$CACHE"
fi
TMP=$(mktemp -d /tmp/ns-bench-boot.XXXXXX)
trap 'rm -rf --one-file-system -- "$TMP"' EXIT
cp -a "$CACHE" "$TMP/deb"

# until_running CMD...: start CMD in the background, print ms until the guest is running,
# then stop it with SIGTERM (an orderly poweroff for both) and wait.
until_running() {
    local start pid1 state ms
    start=$(date +%s%N)
    "$@" </dev/null >/dev/null 2>&1 &
    local launcher=$!
    for _ in $(seq 1 600); do
        pid1=$(pgrep -f '^/usr/lib/systemd/systemd' | head -n1 || true)
        if [[ -n $pid1 ]]; then
            state=$(nsenter -t "$pid1" -m -u -i -p -C systemctl is-system-running 2>/dev/null || true)
            [[ $state == running || $state == degraded ]] && break
        fi
        sleep 0.01
    done
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    kill -TERM "$launcher"; wait "$launcher" || true
    echo "$ms $state"
}

declare -a NS NSP
for i in $(seq 1 "$RUNS"); do
    NS+=("$(until_running "$BIN/ns-run" -q -b -D "$TMP/deb")")
    NSP+=("$(until_running systemd-nspawn --register=no --keep-unit -q -b -D "$TMP/deb")")
done
python3 - "${NS[@]}" -- "${NSP[@]}" <<'PY'
import statistics, sys
a = sys.argv[1:]; i = a.index("--")
ns, nsp = a[:i], a[i + 1:]
ms = lambda v: [int(x.split()[0]) for x in v]
print("ns-run states:", sorted(set(x.split()[1] for x in ns)), " nspawn states:", sorted(set(x.split()[1] for x in nsp)))
m1, m2 = statistics.median(ms(ns)), statistics.median(ms(nsp))
print(f"start to running, median of {len(ns)}: ns-run {m1:.0f} ms, systemd-nspawn {m2:.0f} ms "
      f"(target: not slower: {'MET' if m1 <= m2 else 'MISSED'})")
PY
