#!/usr/bin/env bash
# Density: N containers running `sleep` at once; the time until all N run, and the memory
# each container keeps resident on the host (every process of the tool's own, the payload's
# `sleep` excluded), from /proc/PID/smaps_rollup: Private_Clean+Private_Dirty and Pss.
# Compared with bwrap, crun/runc (if installed) and systemd-nspawn; then the private memory
# of one ns-run monitor by mapping (binary relocated data, heap, stack, anonymous, memfds).
#
# Usage (as root):  bench/density.sh
# Environment knobs:
#   N=50           containers at once (each tool)
#   ROOT=DIR       busybox tree (default: one made in a temp dir in /tmp, removed after); shared read-only by ns-run
#                  (-x), bwrap and runc/crun; copied (hard links) once per systemd-nspawn
#                  instance (it locks its directory); so ROOT and /tmp share a file system
#   TOOLS="..."    subset of: ns-run bwrap crun runc nspawn (default: those installed)
#   NSRUN=PATH     the ns-run binary (default: this tree's release build)
#   SETTLE=0.5     seconds between "all run" and the measurement (an ns-run monitor gives
#                  back its start-up memory once idle for 100 ms after its payload started)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
export N=${N:-50}
if [[ -z ${ROOT:-} ]]; then
    made=$(mktemp -d /tmp/ns-bench-density.XXXXXX)
    trap 'rm -rf -- "$made"' EXIT
    "$REPO/scripts/mkrootfs-busybox" "$made/root" >/dev/null
    ROOT=$made/root
fi
export ROOT
if [[ -z ${NSRUN:-} ]]; then
    # This tree's build, freshly written first (bench/lib.sh says why).
    # shellcheck source=bench/lib.sh
    source "$SCRIPT_DIR/lib.sh"
    fresh_binaries
fi
export NSRUN=${NSRUN:-$REPO/target/x86_64-unknown-linux-musl/release/ns-run}
if [[ -z ${TOOLS:-} ]]; then
    TOOLS="ns-run"
    for t in bwrap crun runc; do command -v "$t" >/dev/null && TOOLS+=" $t"; done
    command -v systemd-nspawn >/dev/null && TOOLS+=" nspawn"
fi
export TOOLS

[[ $(id -u) -eq 0 ]] || { echo "error: must run as root" >&2; exit 1; }
[[ -x $NSRUN ]] || { echo "error: no ns-run at $NSRUN (cargo build --release)" >&2; exit 1; }
[[ -x $ROOT/bin/sleep ]] || { echo "error: no busybox tree at $ROOT" >&2; exit 1; }

python3 - <<'PY'
import json, os, shutil, signal, subprocess, sys, tempfile, time

SETTLE = float(os.environ.get("SETTLE", "0.5"))
N, ROOT, NSRUN, TOOLS = int(os.environ["N"]), os.environ["ROOT"], os.environ["NSRUN"], os.environ["TOOLS"].split()
TAG = f"dens{os.getpid()}"
DEADLINE = 30.0  # seconds for all N to run, and again for all N to stop


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid):
    """pid and all its descendants."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def rollup(pid):
    """(private KiB, Pss KiB) of one process."""
    priv = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Private_Clean", "Private_Dirty"):
                    priv += int(v.split()[0])
                elif k == "Pss":
                    pss = int(v.split()[0])
    except OSError:
        pass
    return priv, pss


def runc_bundle(tmp, runtime):
    b = os.path.join(tmp, runtime)
    os.makedirs(b)
    subprocess.run([runtime, "spec", "--bundle", b], check=True)
    with open(os.path.join(b, "config.json")) as f:
        spec = json.load(f)
    spec["root"] = {"path": ROOT, "readonly": True}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sleep", "600"]
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(spec, f)
    return b


def command(tool, i, tmp):
    if tool == "ns-run":
        return [NSRUN, "-q", "-x", "-M", f"{TAG}-{i}", "-D", ROOT, "/bin/sleep", "600"]
    if tool == "bwrap":
        return ["bwrap", "--unshare-all", "--share-net", "--die-with-parent", "--ro-bind", ROOT, "/",
                "--proc", "/proc", "--dev", "/dev", "/bin/sleep", "600"]
    if tool in ("runc", "crun"):
        return [tool, "run", "--bundle", os.path.join(tmp, tool), f"{TAG}-{i}"]
    r = os.path.join(tmp, f"nspawn-{i}")
    shutil.copytree(ROOT, r, symlinks=True, copy_function=os.link)  # hard links: no space
    return ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", r, "/bin/sleep", "600"]


def sleeping(pid):
    return any(comm(p) == "sleep" for p in tree(pid)[1:])


def start(tool, tmp):
    cmds = [command(tool, i, tmp) for i in range(N)]
    errs = [open(os.path.join(tmp, f"{tool}.{i}.err"), "w") for i in range(N)]
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e)
             for c, e in zip(cmds, errs)]
    waiting = {p.pid for p in procs}
    while waiting and time.monotonic() - t0 < DEADLINE:
        waiting = {p for p in waiting if not sleeping(p)}
        for i, p in enumerate(procs):
            if p.pid in waiting and p.poll() is not None:
                stop(tool, procs)
                raise SystemExit(f"{tool} #{i} exited ({p.returncode}): " + open(errs[i].name).read()[:300])
    if waiting:
        stop(tool, procs)
        raise SystemExit(f"{tool}: {len(waiting)} containers not running after {DEADLINE} s")
    return procs, time.monotonic() - t0


def measure(procs):
    """Per container: (private, pss) summed over the tool's own processes."""
    rows = []
    for p in procs:
        ours = [q for q in tree(p.pid) if comm(q) != "sleep"]
        priv = [rollup(q) for q in ours]
        rows.append((sum(a for a, _ in priv), sum(b for _, b in priv), len(ours)))
    return rows


def stop(tool, procs):
    if tool in ("runc", "crun"):
        for i in range(N):
            subprocess.run([tool, "delete", "-f", f"{TAG}-{i}"], stderr=subprocess.DEVNULL)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    end = time.monotonic() + DEADLINE
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in reversed(tree(p.pid)):
                try:
                    os.kill(q, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
            print(f"  {tool}: pid {p.pid} SIGKILLed after {DEADLINE} s")
    if tool == "nspawn":  # its propagation directories, when /run is no tmpfs (if empty)
        for i in range(N):
            try:
                os.rmdir(f"/run/systemd/nspawn/propagate/nspawn-{i}")
            except OSError:
                pass


def breakdown(pid):
    """Private KiB of one process by mapping, as lines."""
    sizes, name = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                path = head[5] if len(head) > 5 else "[anon]"
                name = f"{head[1]} {os.path.basename(path)}"
            elif head[0] in ("Private_Clean:", "Private_Dirty:"):
                sizes[name] = sizes.get(name, 0) + int(head[1])
    return [f"    {kib:6d} KiB  {n}" for n, kib in sorted(sizes.items(), key=lambda x: -x[1]) if kib]


def main():
    tmp = tempfile.mkdtemp(prefix="density.")
    try:
        for t in ("runc", "crun"):
            if t in TOOLS:
                runc_bundle(tmp, t)
        print(f"{N} containers running /bin/sleep at once, tree {ROOT}; per container: the tool's own processes")
        print(f"| {'':8} | {'all run (s)':>11} | {'private KiB mean':>16} | {'max':>5} | {'Pss KiB mean':>12} | {'processes':>9} |")
        print(f"|{'-' * 10}|{'-' * 12}:|{'-' * 17}:|{'-' * 6}:|{'-' * 13}:|{'-' * 10}:|")
        detail = None
        for tool in TOOLS:
            procs, took = start(tool, tmp)
            time.sleep(SETTLE)
            rows = measure(procs)
            if tool == "ns-run":
                detail = (procs[0].pid, breakdown(procs[0].pid))
            n = len(rows)
            print(f"| {tool:8} | {took:11.3f} | {sum(r[0] for r in rows) / n:16.0f} | "
                  f"{max(r[0] for r in rows):5d} | {sum(r[1] for r in rows) / n:12.0f} | {rows[0][2]:9d} |")
            stop(tool, procs)
        if detail:
            print(f"\nns-run monitor (pid {detail[0]}): private KiB by mapping (perms, file)")
            print("\n".join(detail[1]))
    finally:
        left = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
        if tmp in left:
            print(f"mounts left under {tmp}; not removed", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


main()
PY
