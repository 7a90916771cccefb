#!/usr/bin/env bash
# tests/vm/selinux.sh BIN_DIR: run `ns-run -Z`/`-L` where SELinux is enabled, in a throwaway VM.
#
# The hosts CI runs on have no SELinux, so the labels are tested in a VM, as dm-verity is
# (tests/vm/verity.sh): Debian's stock kernel (CONFIG_SECURITY_SELINUX=y, unpacked into
# /var/cache/ns-run/vm) booted by qemu with `security=selinux`, and an initramfs made here:
# busybox, the toolkit's static binaries from BIN_DIR, a busybox tree, and a minimal MLS
# policy compiled here by secilc from tests/vm/selinux.cil. /init2 mounts selinuxfs, loads the
# policy (the kernel starts permissive: CONFIG_SECURITY_SELINUX_DEVELOP, no enforcing=1),
# runs each case and prints `CASE <name> rc=<exit code>`, the case's output and what it left
# (processes of ours, mounts); this script prints that console. tests/tests/selinux_vm.rs
# reads it.
set -euo pipefail
BIN=$(realpath "$1")
HERE=$(dirname "$(realpath "$0")")
WORK=$(mktemp -d /tmp/ns-selinux-vm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

source "$(dirname "$(realpath "$0")")/lib.sh"
vm_kernel

R=$WORK/initramfs
vm_base "$R" "$BIN"
mkdir -p "$R"/{mods,img,tree}
secilc -M true -c 31 -o "$R/etc/policy.31" -f /dev/null "$HERE/selinux.cil"

# A busybox tree as the container's root.
T=$R/tree
mkdir -p "$T"/{bin,etc,proc,sys,dev,run,tmp,var,usr}
cp "$(command -v busybox)" "$T/bin/busybox"
for a in sh cat echo ls true awk tr; do ln -s busybox "$T/bin/$a"; done
printf 'ID=tree\n' > "$T/etc/os-release"

# The initramfs is rootfs, where pivot_root is refused: /init moves everything to a tmpfs
# and switches to it, then /init2 runs the cases.
cat > "$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mkdir -p /mnt
mount -t tmpfs -o size=300m root /mnt
for d in bin etc opt tree; do cp -a /$d /mnt/; done
mkdir -p /mnt/proc /mnt/sys /mnt/dev /mnt/tmp /mnt/run
cp /init2 /mnt/init2
exec switch_root /mnt /init2
INIT
cat > "$R/init2" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "LSM $(cat /sys/kernel/security/lsm 2>/dev/null || mount -t securityfs s /sys/kernel/security && cat /sys/kernel/security/lsm)"
mount -t selinuxfs selinuxfs /sys/fs/selinux
cat /etc/policy.31 > /sys/fs/selinux/load && echo "POLICY loaded enforce=$(cat /sys/fs/selinux/enforce)"
N="/opt/ns/bin/ns-run --register=no -q"
base=$(wc -l < /proc/mounts)
# The output without the NUL that ends /proc/*/attr/current; then what is left: processes of
# ours (stages or payload) and mounts beyond those before.
case_() {
    name=$1; shift
    "$@" > /tmp/out 2>&1; rc=$?
    echo "CASE $name rc=$rc"; printf '%s\n' "$(tr -d '\000' < /tmp/out)" | sed 's/^/  | /'
    sleep 0.2
    procs=$(ps -o comm | grep -c -e '^ns-' -e '^cat$')
    mounts=$(( $(wc -l < /proc/mounts) - base ))
    echo "  left: procs=$procs mounts=$mounts"
}
C=system_u:system_r:container_t:s0:c1,c2
F=system_u:object_r:container_file_t:s0:c1,c2
MI='$5 ~ /^\/(dev|dev\/shm|dev\/pts|dev\/mqueue|run|tmp)$/ { s = $0; sub(/.* - /, "", s); split(s, a, " "); c = "none"; if (match(a[3], /context="[^"]*"/)) c = substr(a[3], RSTART, RLENGTH); print $5, a[1], c }'
case_ context $N -Z $C -D /tree cat /proc/self/attr/current
case_ aspid2 $N -a -Z $C -D /tree cat /proc/self/attr/current
case_ nolabel $N -D /tree cat /proc/self/attr/current
case_ apifs $N -L $F -D /tree awk "$MI" /proc/self/mountinfo
case_ both $N -Z $C -L $F -D /tree sh -c 'cat /proc/self/attr/current; echo; awk '"'$MI'"' /proc/self/mountinfo'
case_ bogus $N -Z bogus_u:bogus_r:bogus_t:s0 -D /tree cat /proc/self/attr/current
case_ bogusaspid2 $N -a -Z bogus_u:bogus_r:bogus_t:s0 -D /tree cat /proc/self/attr/current
case_ bogusfs $N -L bogus_u:object_r:bogus_t:s0 -D /tree true
echo "VM-DONE"
poweroff -f
INIT
chmod +x "$R/init" "$R/init2"
vm_boot "$R" security=selinux
