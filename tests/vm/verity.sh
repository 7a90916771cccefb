#!/usr/bin/env bash
# tests/vm/verity.sh BIN_DIR: run `ns-run -i` with dm-verity inside a throwaway VM.
#
# The kernels CI runs on have no device-mapper, so dm-verity is tested in a VM: Debian's
# stock kernel (linux-image-amd64, unpacked from its package into /var/cache/ns-run/vm, not
# installed) booted by qemu (TCG when there is no KVM) with an initramfs made here: busybox,
# the toolkit's static binaries from BIN_DIR, the kernel modules dm-verity needs, and disk
# images made here (mksquashfs, veritysetup format, sfdisk). Its /init runs each case and
# prints `CASE <name> rc=<exit code>` and the case's output on the serial console; this
# script prints that console. tests/tests/verity.rs reads it.
set -euo pipefail
BIN=$(realpath "$1")
WORK=$(mktemp -d /tmp/ns-verity-vm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

source "$(dirname "$(realpath "$0")")/lib.sh"
vm_kernel

R=$WORK/initramfs
vm_base "$R" "$BIN"
mkdir -p "$R"/{mods,img,tree}
for m in drivers/block/loop fs/squashfs/squashfs fs/overlayfs/overlay drivers/md/dm-mod \
    drivers/md/dm-bufio lib/reed_solomon/reed_solomon drivers/md/dm-verity; do
    cp "$MODS/$m.ko" "$R/mods/"
done

# A busybox tree as the image's root, with a marker.
T=$WORK/tree
mkdir -p "$T"/{bin,etc,proc,sys,dev,run,tmp,var,usr}
cp "$(command -v busybox)" "$T/bin/busybox"
for a in sh cat echo ls true mount; do ln -s busybox "$T/bin/$a"; done
printf 'ID=tree\n' > "$T/etc/os-release"
echo "verified content" > "$T/etc/marker"
mksquashfs "$T" "$WORK/root.sqfs" -quiet -noappend -no-progress -all-root
roothash() { veritysetup format "$1" "$2" | awk '/^Root hash:/ {print $3}'; }
# 1. A plain image with its hash tree beside it (NAME.verity, NAME.roothash).
cp "$WORK/root.sqfs" "$R/img/plain.raw"
roothash "$R/img/plain.raw" "$R/img/plain.verity" > "$R/img/plain.roothash"
# 2. The same content, one block changed after the hash tree was made.
cp "$R/img/plain.raw" "$R/img/tampered.raw"
cp "$R/img/plain.verity" "$R/img/tampered.verity"
cp "$R/img/plain.roothash" "$R/img/tampered.roothash"
printf 'X' | dd of="$R/img/tampered.raw" bs=1 seek=$((4096 * 3 + 17)) conv=notrunc status=none
# 3. A GPT image: root and root-verity partitions, the root hash given on the command line.
veritysetup format "$WORK/root.sqfs" "$WORK/root.hash" > "$WORK/format.txt"
awk '/^Root hash:/ {print $3}' "$WORK/format.txt" > "$R/img/gpt.hash"
dsec=$(( ($(stat -c %s "$WORK/root.sqfs") + 511) / 512 ))
hsec=$(( ($(stat -c %s "$WORK/root.hash") + 511) / 512 ))
truncate -s $(( (2048 + dsec + 2048 + hsec + 2048) * 512 )) "$R/img/gpt.raw"
printf 'label: gpt\nstart=2048, size=%s, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\nstart=%s, size=%s, type=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5\n' \
    "$dsec" $((2048 + dsec + 2048 - (2048 + dsec) % 2048)) "$hsec" | sfdisk -q "$R/img/gpt.raw"
hstart=$(sfdisk -d "$R/img/gpt.raw" | awk -F'[=,]' '/type=2C7357ED/ {gsub(/ /,"",$2); print $2}')
dd if="$WORK/root.sqfs" of="$R/img/gpt.raw" bs=512 seek=2048 conv=notrunc status=none
dd if="$WORK/root.hash" of="$R/img/gpt.raw" bs=512 seek="$hstart" conv=notrunc status=none

# The initramfs is rootfs, where pivot_root is refused: /init moves everything to a tmpfs
# and switches to it (as a real init's initramfs does), then /init2 runs the cases.
# 4. A GPT image with a /usr partition beside root and root-verity: refused (/usr would not
#    be verified).
mkdir -p "$WORK/usrsrc" && echo unverified > "$WORK/usrsrc/marker"
mksquashfs "$WORK/usrsrc" "$WORK/usr.sqfs" -quiet -noappend -no-progress
usec=$(( ($(stat -c %s "$WORK/usr.sqfs") + 511) / 512 ))
truncate -s $(( (2048 + dsec + 2048 + hsec + 2048 + usec + 4096) * 512 )) "$R/img/withusr.raw"
printf 'label: gpt\nsize=%s, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\nsize=%s, type=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5\nsize=%s, type=8484680c-9521-48c6-9c11-b0720656f69e\n' \
    "$dsec" "$hsec" "$usec" | sfdisk -q "$R/img/withusr.raw"
starts=($(sfdisk -d "$R/img/withusr.raw" | awk -F'[=,]' '/start=/ {gsub(/ /,"",$2); print $2}'))
dd if="$WORK/root.sqfs" of="$R/img/withusr.raw" bs=512 seek="${starts[0]}" conv=notrunc status=none
dd if="$WORK/root.hash" of="$R/img/withusr.raw" bs=512 seek="${starts[1]}" conv=notrunc status=none
dd if="$WORK/usr.sqfs" of="$R/img/withusr.raw" bs=512 seek="${starts[2]}" conv=notrunc status=none
# 5. A hash tree whose superblock claims 2^61+1 data blocks.
cp "$R/img/plain.raw" "$R/img/huge.raw"
cp "$R/img/plain.roothash" "$R/img/huge.roothash"
cp "$R/img/plain.verity" "$R/img/huge.verity"
printf '\001\000\000\000\000\000\000\040' | dd of="$R/img/huge.verity" bs=1 seek=72 conv=notrunc status=none

cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mkdir -p /mnt
mount -t tmpfs -o size=400m root /mnt
for d in bin etc mods opt img tree; do cp -a /$d /mnt/; done
mkdir -p /mnt/proc /mnt/sys /mnt/dev /mnt/tmp /mnt/run
cp /init2 /mnt/init2
exec switch_root /mnt /init2
EOF
cat > "$R/init2" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in loop squashfs overlay dm-mod dm-bufio reed_solomon dm-verity; do insmod /mods/$m.ko; done
N="/opt/ns/bin/ns-run --register=no -q"
case_() { name=$1; shift; out=$("$@" 2>&1); echo "CASE $name rc=$?"; echo "$out" | sed 's/^/  | /'; echo "  dm: $(ls -d /sys/block/dm-* 2>/dev/null | wc -l) loop: $(losetup -a | grep -c img)"; }
case_ sidecars $N -i /img/plain.raw cat /etc/marker
case_ tampered $N -i /img/tampered.raw cat /etc/marker
case_ gpt $N -i /img/gpt.raw --root-hash=$(cat /img/gpt.hash) cat /etc/marker
case_ wronghash $N -i /img/gpt.raw --root-hash=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff cat /etc/marker
case_ readonly $N -i /img/gpt.raw --root-hash=$(cat /img/gpt.hash) sh -c 'echo x > /x'
case_ ephemeral $N -x -i /img/gpt.raw --root-hash=$(cat /img/gpt.hash) sh -c 'echo x > /x && cat /x /etc/marker'
case_ nohashdata $N -i /img/gpt.raw --root-hash=$(cat /img/gpt.hash) --verity-data=/img/missing cat /etc/marker
case_ badsig $N -i /img/gpt.raw --root-hash=$(cat /img/gpt.hash) --root-hash-sig=base64:MIIBbm90YXNpZw== cat /etc/marker
case_ withusr $N -i /img/withusr.raw --root-hash=$(cat /img/gpt.hash) cat /usr/marker
case_ huge $N -i /img/huge.raw cat /etc/marker
mkfifo /img/fifo
case_ fifo timeout 20 $N -i /img/plain.raw --verity-data=/img/fifo cat /etc/marker
# Killed between making its verity device and mounting it: the next ns-run removes it.
NS_FAULT=ns-run:verity $N -i /img/plain.raw true
echo "after kill: dm $(ls -d /sys/block/dm-* 2>/dev/null | wc -l)"
case_ collected $N -i /img/plain.raw cat /etc/marker
echo "VM-DONE"
poweroff -f
EOF
chmod +x "$R/init" "$R/init2"
vm_boot "$R"
