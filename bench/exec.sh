#!/usr/bin/env bash
# What one exec costs on this machine before a program does its own work (issue 19).
#
# Every start of ns-run runs five programs (ns-run, ns-enter, ns-mount, ns-caps, the payload)
# where the floor (`unshare ... /bin/true`) runs two. This times, in one hyperfine run: a
# static program that only exits (no libc), an empty static and dynamic glibc program, an
# empty static musl program (Rust, `main` as our stages have it, linked as they are), and
# each stage failing at once on the chain's command line (exec, libc, our start-up, one
# error line); and it times the CPUID instruction, which glibc's start-up executes many
# times (x86 cache detection) and which a virtual machine may trap. The toolkit is built
# against musl for that reason (.cargo/config.toml).
#
# Usage (as root or not): bench/exec.sh        SKIP_BUILD=1: use the release binaries as built.
set -euo pipefail
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"
TMP=$(mktemp -d /tmp/ns-bench-exec.XXXXXX)
trap 'rm -rf -- "$TMP"' EXIT
[[ -n ${SKIP_BUILD:-} ]] || (cd "$REPO" && cargo build --release --workspace --quiet)
command -v gcc >/dev/null && command -v hyperfine >/dev/null ||
    { echo "bench/exec.sh: needs gcc and hyperfine" >&2; exit 1; }

printf '.globl _start\n_start: mov $60, %%eax\nxor %%edi, %%edi\nsyscall\n' >"$TMP/exit.S"
gcc -nostdlib -static "$TMP/exit.S" -o "$TMP/no-libc"
echo 'int main(void) { return 0; }' >"$TMP/empty.c"
gcc -O2 -static "$TMP/empty.c" -o "$TMP/glibc-static"
gcc -O2 "$TMP/empty.c" -o "$TMP/glibc-dynamic"
printf '#![no_main]\n#[unsafe(no_mangle)]\nextern "C" fn main() -> i32 { 0 }\n' >"$TMP/empty.rs"
rustc -O --target x86_64-unknown-linux-musl -C relocation-model=static -C panic=abort \
    "$TMP/empty.rs" -o "$TMP/musl-static"
cat >"$TMP/cpuid.c" <<'C'
#include <cpuid.h>
#include <stdio.h>
#include <time.h>
int main(void) {
    unsigned a, b, c, d;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 10000; i++) __cpuid_count(4, i & 3, a, b, c, d);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("one CPUID instruction: %.2f us (10000 of leaf 4)\n", ns / 10000 / 1000);
    return 0;
}
C
gcc -O2 "$TMP/cpuid.c" -o "$TMP/cpuid"
"$TMP/cpuid"

cmds=(-n no-libc "$TMP/no-libc" -n glibc-static "$TMP/glibc-static"
    -n glibc-dynamic "$TMP/glibc-dynamic" -n musl-static "$TMP/musl-static")
for s in ns-enter ns-mount ns-caps; do
    # fds 99/98 are not open: the stage reads its command line and fails with one line.
    cmds+=(-n "$s" "$BIN/$s --state-fd 99 --sync-fd 98")
done
cmds+=(-n "ns-run --version" "$BIN/ns-run --version")
hyperfine -N -i --warmup 20 --min-runs 500 --export-json "$TMP/hf.json" "${cmds[@]}" >/dev/null 2>&1
python3 - "$TMP/hf.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
base = r["no-libc"]["median"]
print(f"  {'program':<18} {'median ms':>9} {'over no-libc':>13}")
for name, x in r.items():
    print(f"  {name:<18} {x['median']*1e3:>9.3f} {(x['median']-base)*1e3:>12.3f}")
glibc = (r["glibc-static"]["median"] - base) * 1e3
musl = (r["musl-static"]["median"] - base) * 1e3
print(f"\n  libc start-up per program: glibc {glibc:.3f} ms, musl {musl:.3f} ms; a start of"
      f" ns-run runs 3 programs more than the floor: {3*glibc:.2f} ms if they were glibc's,"
      f" {3*musl:.2f} ms as musl's")
PY
