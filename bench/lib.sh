# bench/lib.sh: what the benchmark scripts share (sourced, not run):
#   source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
# sets REPO and BIN (the release binaries), stops unless root, and gives the helpers below.

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/x86_64-unknown-linux-musl/release"

# Rewrite the release binaries in place (same bytes, same times) before timing them: on a VM
# whose kernel pages cold page cache out (a DAMON kdamond here), a binary read back from disk
# execs slower than one just written, by up to 0.5 ms per start (docs/design.md, issue 19),
# and builds of different ages would not compare.
fresh_binaries() {
    local b
    for b in ns-run ns-enter ns-mount ns-caps ns-init ns-net; do
        [[ -f $BIN/$b ]] || continue
        cp -a -- "$BIN/$b" "$BIN/.$b.fresh" && mv -f -- "$BIN/.$b.fresh" "$BIN/$b"
    done
}

section() { printf '\n=== %s ===\n' "$*"; }
note() { printf '  %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

mounts_under() { # print mount points below $1 (host mount namespace)
    awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo
}

# Unmount what is below the temp dir $1 (deepest first), then remove it; never across a
# mount: with a mount left the dir stays and a warning says so.
remove_tmp_dir() {
    local m
    [[ -n $1 && -d $1 ]] || return 0
    for m in $(mounts_under "$1" | sort -r); do umount -l "$m" 2>/dev/null || true; done
    if [[ -n $(mounts_under "$1") ]]; then
        echo "warning: mounts remain under $1; not removing it" >&2
    else
        rm -rf --one-file-system -- "$1"
    fi
}

# Install the Debian packages named that are missing.
need_packages() {
    local p missing=()
    for p in "$@"; do
        if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]})); then
        note "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

print_environment() {
    section "Environment"
    note "date:    $(date -Is)"
    note "kernel:  $(uname -r)"
    note "cpus:    $(nproc)"
    note "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other builds may be running)"
}

# The commands to time, filled by try: their names and command lines.
NAMES=()
CMDS=()
# What each command runs under (variants.sh: nsenter into its network namespace).
TRY_IN=()

# try NAME COMMAND...: run it once (under TRY_IN); keep it for timing if it exits 0.
try() {
    local name=$1 out rc=0
    shift
    out=$("${TRY_IN[@]}" timeout 30 "$@" </dev/null 2>&1) || rc=$?
    if ((rc == 0)); then
        note "ok      $name: $*"
        [[ -n $out ]] && note "        (its output: $(printf '%s' "$out" | head -c 300 | tr '\n' ' '))"
        NAMES+=("$name")
        CMDS+=("$*")
        return 0
    fi
    note "FAILED  $name (exit $rc): $*"
    [[ -n $out ]] && note "        $(printf '%s' "$out" | head -c 500 | tr '\n' ' ')"
    return 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root"
