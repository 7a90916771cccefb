#!/usr/bin/env bash
# e2e.sh [RUNTIME]   CRI end-to-end check of an OCI runtime through containerd's CRI plugin.
#
# RUNTIME: the runc-compatible binary (path or name in PATH; default $CRI_RUNTIME, else runc:
# `CRI_RUNTIME=runc e2e.sh` checks the checks). It is the BinaryName of the
# io.containerd.runc.v2 runtime handler "nsoci", behind a wrapper that logs every command line
# the shim runs to $E2E_RUNTIME_LOG (default: inside the temp dir, shown on failure).
#
# Starts a private containerd with tests/oci/containerd start DIR --cri (config, root, state,
# sockets, runtime root all in one temp dir; CRI with no CNI: pods use the host network),
# imports two busybox images built by tests/oci/mkimage (localhost/pause:1 and
# localhost/busybox:1), then with ns-cri: runs a pod, creates and starts containers in it,
# checks namespaces shared with the pause process, exec-sync output and exit code, a memory
# limit update in the memory cgroup, stop/rm, stopp/rmp. Then what Kubernetes does too, each
# section named in $E2E_SECTIONS (default all: "tty devnull privileged sysctl"):
#   tty         `exec -t -i` (kubectl exec -it): a shell on a pty, fed from stdin;
#   devnull     a container whose command writes /dev/null, and an exec that does;
#   privileged  a privileged pod and container: every host device, every capability;
#   sysctl      a pod with safe sysctls (net.ipv4.ip_unprivileged_port_start,
#               kernel.shm_rmid_forced) in its own network namespace; the host's stay.
# That pod's network namespace comes from a test CNI plugin (in the temp dir): lo, and eth0
# (a veth pair kept inside it).
# Exits non-zero at the first failing check. On exit everything is cleaned up (pods through
# the CRI, then tests/oci/containerd stop DIR: containers, containerd, shims by pid, mounts,
# shim sockets, DIR; then the pod cgroups), and checked: anything left is a failure.
#
# Needs root, containerd 1.6 (+ containerd-shim-runc-v2), ctr, busybox-static, and ns-cri
# built (cargo build --release in tests/cri; its k8s-cri dependency needs protoc:
# apt-get install protobuf-compiler) or its path in $NS_CRI.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
oci=$(cd "$here/../oci" && pwd)
say() { echo "e2e: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

runtime=${1:-${CRI_RUNTIME:-runc}}
runtime=$(command -v "$runtime") || fail "runtime $runtime not found"
runtime=$(realpath "$runtime")
ns_cri=${NS_CRI:-$here/target/x86_64-unknown-linux-musl/release/ns-cri}
[ -x "$ns_cri" ] || fail "$ns_cri missing: (cd $here && cargo build --release) or set NS_CRI"
[ "$(id -u)" = 0 ] || fail "must run as root"
for tool in containerd containerd-shim-runc-v2 ctr; do
    command -v $tool >/dev/null || fail "$tool not found (apt-get install containerd)"
done

dir=$(mktemp -d /tmp/ns-cri-e2e.XXXXXX)
sock=$dir/containerd.sock
runtime_root=$dir/nsoci # the nsoci handler's Root (tests/oci/containerd --cri)
cgroup_parent=/$(basename "$dir")
runtime_log=${E2E_RUNTIME_LOG:-$dir/runtime.log}
run_containerd_existed=$([ -e /run/containerd ] && echo 1 || echo 0)

# What is left of this run: shims or other processes naming $dir, mounts under it, $dir,
# the pod cgroups, the shim sockets of the pods. Prints one line per thing.
shim_sockets=
# note_shim POD: the pod's shim (one per pod, id = pod id) listens on this socket.
note_shim() {
    shim_sockets+=" /run/containerd/s/$(printf %s "$sock/k8s.io/$1" | sha256sum | cut -d' ' -f1)"
}
leftovers() {
    local f cg s
    # (the pattern from a file: not in grep's own command line)
    for f in $(grep -lasF -f <(echo "$dir/") /proc/[0-9]*/cmdline); do
        echo "process ${f#/proc/}: $(tr '\0' ' ' <"$f" 2>/dev/null)"
    done
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print "mount " $5 }' /proc/self/mountinfo
    [ -e "$dir" ] && echo "directory $dir"
    for cg in /sys/fs/cgroup"$cgroup_parent" /sys/fs/cgroup/*"$cgroup_parent"; do
        [ -d "$cg" ] && echo "cgroup $cg"
    done
    for s in $shim_sockets; do
        [ -e "$s" ] && echo "shim socket $s"
    done
    return 0
}

# --- cleanup: CRI first (orderly), then tests/oci/containerd stop (force, by pid), cgroups.
cleanup() {
    local rc=$? id cg left
    set +e
    trap '' INT TERM # not to be cut short: a second ^C would leave things behind
    if [ $rc -ne 0 ] && [ -f "$dir/containerd.log" ]; then
        say "--- containerd.log (tail)"; tail -n 30 "$dir/containerd.log" >&2
        [ -f "$runtime_log" ] && { say "--- runtime command lines"; cat "$runtime_log" >&2; }
    fi
    if [ -f "$dir/containerd.pid" ] && kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
        for id in $("$ns_cri" --address "$sock" pods 2>/dev/null | sed -n 's/^    "id": "\(.*\)",$/\1/p'); do
            note_shim "$id"
            timeout 20 "$ns_cri" --address "$sock" stopp "$id"
            timeout 20 "$ns_cri" --address "$sock" rmp "$id"
        done
    fi
    # Containers, containerd, shims (by pid), mounts, shim sockets, $dir.
    "$oci/containerd" stop "$dir" || say "tests/oci/containerd stop $dir failed"
    for cg in /sys/fs/cgroup"$cgroup_parent" /sys/fs/cgroup/*"$cgroup_parent"; do
        [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    if [ "$run_containerd_existed" = 0 ]; then
        rmdir /run/containerd/s /run/containerd 2>/dev/null
    fi
    left=$(leftovers)
    if [ -n "$left" ]; then
        say "left behind:"; sed 's/^/    /' <<<"$left" >&2
        [ $rc -eq 0 ] && rc=1
    fi
    [ $rc -eq 0 ] && say "PASS" || say "exit $rc"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cri ARGS...: ns-cri against our containerd; fails the test with its message.
cri() {
    "$ns_cri" --address "$sock" "$@" || fail "ns-cri $* (exit $?)"
}
ns() { readlink "/proc/$1/ns/$2" || echo "unreadable /proc/$1/ns/$2"; }
state() { cri inspect "$1" | sed -n 's/^  "state": "\(.*\)",$/\1/p'; }
pstate() { cri inspectp "$1" | sed -n 's/^  "state": "\(.*\)",$/\1/p'; }
expect() { # expect WHAT GOT WANT
    [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
    say "ok: $1 = $3"
}

# --- runtime wrapper: log each command line, then exec the runtime.
cat >"$dir/runtime-wrapper" <<EOF
#!/bin/bash
printf '%s\n' "\$*" >>'$runtime_log'
exec '$runtime' "\$@"
EOF
chmod +x "$dir/runtime-wrapper"
: >"$runtime_log"

# --- a CNI plugin for pods with a network namespace of their own: "loopback" (containerd
# always adds it) sets lo up; "e2e-netns" adds eth0 with 10.88.0.2/24, one end of a veth pair
# whose other end stays in the namespace too (no dummy driver everywhere). Both answer in the
# config's cniVersion; DEL is a no-op (the namespace goes with the pod).
mkdir -p "$dir/cni/bin" "$dir/cni/net.d"
cat >"$dir/cni/bin/e2e-netns" <<'PLUGIN'
#!/bin/sh
conf=$(cat)
ver=$(printf '%s' "$conf" | sed -n 's/.*"cniVersion": *"\([^"]*\)".*/\1/p' | head -n 1)
case $CNI_COMMAND in
VERSION) echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}'; exit 0 ;;
ADD) ;;
*) exit 0 ;;
esac
in_ns() { nsenter --net="$CNI_NETNS" "$@" >&2; }
if [ "$(basename "$0")" = loopback ]; then
    in_ns ip link set lo up || exit 1
    addr=127.0.0.1/8
else
    in_ns ip link add "$CNI_IFNAME" type veth peer name e2e-peer &&
        in_ns ip addr add 10.88.0.2/24 dev "$CNI_IFNAME" &&
        in_ns ip link set "$CNI_IFNAME" up || exit 1
    addr=10.88.0.2/24
fi
printf '{"cniVersion":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],' \
    "${ver:-0.4.0}" "$CNI_IFNAME" "$CNI_NETNS"
printf '"ips":[{"version":"4","address":"%s","interface":0}]}\n' "$addr"
PLUGIN
chmod +x "$dir/cni/bin/e2e-netns"
ln -s e2e-netns "$dir/cni/bin/loopback"
echo '{"cniVersion": "0.4.0", "name": "e2e", "type": "e2e-netns"}' >"$dir/cni/net.d/10-e2e.conf"

# --- containerd: everything under $dir; CRI with the test CNI, local images only; handler nsoci.
NS_OCI_BINARY=$dir/runtime-wrapper "$oci/containerd" start "$dir" --cri || fail "containerd start"
# The CRI service may still be initializing after the gRPC server answers.
for _ in $(seq 100); do
    "$ns_cri" --address "$sock" version >/dev/null 2>&1 && break
    sleep 0.1
done
cri version >/dev/null
say "containerd up (pid $(cat "$dir/containerd.pid"), dir $dir, runtime $runtime)"

# --- images (unpacked for the snapshotter the CRI uses)
"$oci/mkimage" "$dir/pause.tar" localhost/pause:1 /bin/sleep 2147483647
"$oci/mkimage" "$dir/busybox.tar" localhost/busybox:1 /bin/sh
for img in pause busybox; do
    ctr --address "$sock" -n k8s.io images import --snapshotter "$(cat "$dir/snapshotter")" \
        "$dir/$img.tar" >/dev/null || fail "import $img"
done

# --- pod: host network (no CNI), a PID namespace for the pod
pod=$(cri runp --handler nsoci --name e2e --host-network --pid-mode pod --cgroup-parent "$cgroup_parent")
note_shim "$pod"
expect "pod state" "$(pstate "$pod")" SANDBOX_READY
pause=$(cri inspectp "$pod" --pid)
[ "$pause" -gt 0 ] || fail "no pause pid"

# --- container 1: joins the pod's ipc, uts (host's: host network), net and pid namespaces
c1=$(cri create "$pod" --image localhost/busybox:1 --name c1 --memory $((128 << 20)) -- /bin/sleep 1000)
expect "c1 state after create" "$(state "$c1")" CONTAINER_CREATED
cri start "$c1"
expect "c1 state after start" "$(state "$c1")" CONTAINER_RUNNING
p1=$(cri inspect "$c1" --pid)
[ "$p1" -gt 0 ] && [ "$p1" != "$pause" ] || fail "bad c1 pid '$p1' (pause $pause)"
for t in ipc uts net pid; do
    expect "c1 $t ns == pause's" "$(ns "$p1" $t)" "$(ns "$pause" $t)"
done
[ "$(ns "$p1" ipc)" != "$(ns $$ ipc)" ] || fail "c1 ipc ns is the host's"
[ "$(ns "$p1" pid)" != "$(ns $$ pid)" ] || fail "c1 pid ns is the host's"
[ "$(ns "$p1" mnt)" != "$(ns "$pause" mnt)" ] || fail "c1 mnt ns is the pause's"
expect "c1 net ns == host's" "$(ns "$p1" net)" "$(ns $$ net)"

# --- exec-sync: stdout and exit code; pid 1 seen inside is the pause process
out=$("$ns_cri" --address "$sock" exec-sync "$c1" -- sh -c 'echo hello; echo oops >&2; exit 3' 2>/dev/null) && rc=0 || rc=$?
expect "exec-sync stdout" "$out" hello
expect "exec-sync exit code" "$rc" 3
expect "exec-sync uid:PATH" "$(cri exec-sync "$c1" -- sh -c 'echo $(id -u):$PATH')" "0:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
expect "pid 1 in c1" "$(cri exec-sync "$c1" -- cat /proc/1/cmdline | tr '\0' ' ')" "/bin/sleep 2147483647 "

sections=" ${E2E_SECTIONS:-tty devnull privileged sysctl} "
for section in $sections; do
    case $section in tty | devnull | privileged | sysctl) ;; *) fail "unknown section $section" ;; esac
done
want() { [[ $sections == *" $1 "* ]]; }

# --- exec -t -i (kubectl exec -it): a shell on a pty of the container, fed from our stdin;
# the pty echoes the input, so the checks look for what only the shell's work prints.
if want tty; then
    out=$(printf 'tty\necho sum-$((40 + 2))\nexit 7\n' |
        timeout 30 "$ns_cri" --address "$sock" exec -t -i "$c1" -- sh) && rc=0 || rc=$?
    expect "exec -t exit code" "$rc" 7
    [[ $out == *sum-42* ]] || fail "exec -t: no sum-42 in: $out"
    [[ $out == *$'\n'/dev/pts/* ]] || fail "exec -t: tty is not a /dev/pts pty: $out"
    say "ok: exec -t -i ran a shell on $(grep -o '^/dev/pts/[0-9]*' <<<"$out" | head -n 1)"
fi

# --- /dev/null: an exec and a container's own command write it
if want devnull; then
    expect "exec writes /dev/null" "$(cri exec-sync "$c1" -- sh -c 'echo x >/dev/null && echo written')" written
    c3=$(cri create "$pod" --image localhost/busybox:1 --name c3 -- \
        sh -c 'echo x >/dev/null || exit 1; exec sleep 1000')
    cri start "$c3"
    sleep 1
    expect "c3 (wrote /dev/null) state" "$(state "$c3")" CONTAINER_RUNNING
    cri stop "$c3" --timeout 1
    cri rm "$c3"
fi

# --- update: memory limit in c1's memory cgroup (v1: memory.limit_in_bytes; v2: memory.max)
memfile() {
    local path
    path=$(awk -F: '$2 == "memory" { print $3 }' "/proc/$1/cgroup")
    if [ -n "$path" ]; then echo "/sys/fs/cgroup/memory$path/memory.limit_in_bytes"
    else echo "/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3 }' "/proc/$1/cgroup")/memory.max"; fi
}
# the container's cgroups are under the pod's cgroup parent (CreateContainer got the pod's config)
cg1=$(awk -F: '$2 == "memory" || $1 == "0" { print $3; exit }' "/proc/$p1/cgroup")
case $cg1 in "$cgroup_parent"/*) say "ok: c1 cgroup $cg1" ;; *) fail "c1 cgroup $cg1 not under $cgroup_parent" ;; esac
mf=$(memfile "$p1")
[ -f "$mf" ] || fail "no memory limit file $mf"
expect "c1 memory limit at create" "$(cat "$mf")" $((128 << 20))
cri update "$c1" --memory $((64 << 20))
expect "c1 memory limit after update" "$(cat "$mf")" $((64 << 20))
expect "c1 inspect memory limit" \
    "$(cri inspect "$c1" | sed -n '/^  "status": {/,/^  }/s/^ *"memory_limit_in_bytes": \([0-9]*\),$/\1/p')" $((64 << 20))

# --- container 2: its own PID namespace (pid mode CONTAINER), same ipc as the pod
c2=$(cri create "$pod" --image localhost/busybox:1 --name c2 --pid-mode container -- /bin/sleep 1000)
cri start "$c2"
p2=$(cri inspect "$c2" --pid)
[ "$p2" -gt 0 ] || fail "no c2 pid"
expect "c2 ipc ns == pause's" "$(ns "$p2" ipc)" "$(ns "$pause" ipc)"
[ "$(ns "$p2" pid)" != "$(ns "$pause" pid)" ] || fail "c2 pid ns is the pod's"
expect "pid 1 in c2" "$(cri exec-sync "$c2" -- cat /proc/1/cmdline | tr '\0' ' ')" "/bin/sleep 1000 "

# --- stop / rm containers (c2's sleep is PID 1 there and ignores SIGTERM: killed at timeout)
cri stop "$c1" --timeout 5
expect "c1 state after stop" "$(state "$c1")" CONTAINER_EXITED
kill -0 "$p1" 2>/dev/null && fail "c1 process $p1 still alive"
cri stop "$c2" --timeout 1
expect "c2 state after stop" "$(state "$c2")" CONTAINER_EXITED
for c in "$c1" "$c2"; do
    cri rm "$c"
    "$ns_cri" --address "$sock" inspect "$c" >/dev/null 2>&1 && fail "container $c still there after rm"
done
say "ok: containers stopped and removed"

# --- stopp / rmp
cri stopp "$pod"
expect "pod state after stopp" "$(pstate "$pod")" SANDBOX_NOTREADY
kill -0 "$pause" 2>/dev/null && fail "pause process $pause still alive"
cri rmp "$pod"
"$ns_cri" --address "$sock" inspectp "$pod" >/dev/null 2>&1 && fail "pod still there after rmp"
[ -z "$(ls "$runtime_root/k8s.io" 2>/dev/null)" ] || fail "runtime state left: $(ls "$runtime_root/k8s.io")"
say "ok: pod stopped and removed"

# one_container POD NAME [CREATE OPTIONS] -- COMMAND: create and start it; prints its id.
one_container() {
    local pod=$1 name=$2 c
    shift 2
    c=$(cri create "$pod" --image localhost/busybox:1 --name "$name" "$@")
    cri start "$c"
    expect "$name state after start" "$(state "$c")" CONTAINER_RUNNING
    echo "$c"
}
# remove_pod POD CONTAINER: both gone, and the runtime's state with them.
remove_pod() {
    cri stop "$2" --timeout 1
    cri rm "$2"
    cri stopp "$1"
    cri rmp "$1"
    [ -z "$(ls "$runtime_root/k8s.io" 2>/dev/null)" ] || fail "runtime state left: $(ls "$runtime_root/k8s.io")"
}

# --- privileged: the pod and its container; every host device (one the default set lacks,
# with its numbers), every capability of ours.
if want privileged; then
    pp=$(cri runp --handler nsoci --name e2e-priv --host-network --privileged --cgroup-parent "$cgroup_parent")
    note_shim "$pp"
    pc=$(one_container "$pp" priv --privileged -- /bin/sleep 1000)
    hostdev=
    for d in /dev/btrfs-control /dev/loop-control /dev/fuse /dev/kmsg /dev/mem; do
        [ -c "$d" ] && { hostdev=$d; break; }
    done
    [ -n "$hostdev" ] || fail "no host device to look for"
    expect "privileged: $hostdev" "$(cri exec-sync "$pc" -- stat -c '%F %t:%T' "$hostdev")" \
        "$(stat -c '%F %t:%T' "$hostdev")"
    expect "privileged: capabilities" "$(cri exec-sync "$pc" -- grep CapEff /proc/self/status)" \
        "$(sed -n 's/^CapBnd:/CapEff:/p' /proc/self/status)"
    remove_pod "$pp" "$pc"
    say "ok: privileged pod"
fi

# --- sysctls: set in the pod's namespaces (net: its own network namespace), the host's kept
if want sysctl; then
    port=/proc/sys/net/ipv4/ip_unprivileged_port_start rmid=/proc/sys/kernel/shm_rmid_forced
    host_port=$(cat $port) host_rmid=$(cat $rmid)
    sp=$(cri runp --handler nsoci --name e2e-sysctl --cgroup-parent "$cgroup_parent" \
        --sysctl net.ipv4.ip_unprivileged_port_start=100 --sysctl kernel.shm_rmid_forced=1)
    note_shim "$sp"
    sc=$(one_container "$sp" sysctl -- /bin/sleep 1000)
    expect "sysctl in the pod: $port" "$(cri exec-sync "$sc" -- cat $port)" 100
    expect "sysctl in the pod: $rmid" "$(cri exec-sync "$sc" -- cat $rmid)" 1
    expect "host's $port" "$(cat $port)" "$host_port"
    expect "host's $rmid" "$(cat $rmid)" "$host_rmid"
    remove_pod "$sp" "$sc"
    say "ok: pod with sysctls"
fi

grep -q -- ' create ' "$runtime_log" || fail "runtime log shows no create"
say "runtime command lines (from the shim):"
sed 's/^/    /' "$runtime_log" >&2
