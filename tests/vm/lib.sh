# tests/vm/lib.sh: what the VM tests (verity.sh, selinux.sh) share. Sourced; needs $WORK.
#
# vm_kernel: Debian's stock kernel, its package fetched and unpacked (not installed) into
#   /var/cache/ns-run/vm once; sets KERNEL (vmlinuz) and MODS (its modules' kernel/ dir).
# vm_base DIR BIN: an initramfs tree in DIR: busybox with every applet, the toolkit's static
#   binaries from BIN in /opt/ns/bin, an os-release, a hostname, a machine id.
# vm_boot DIR [KERNEL ARGS...]: pack DIR (its /init runs the cases) and boot it under qemu
#   (KVM where the CPU offers it, else TCG), printing the serial console.

vm_kernel() {
    local cache=/var/cache/ns-run/vm pkg
    mkdir -p "$cache"
    if ! ls "$cache"/k/boot/vmlinuz-* >/dev/null 2>&1; then
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        (cd "$cache" && apt-get download "$pkg" >/dev/null 2>&1)
        rm -rf "$cache/k.tmp" && mkdir "$cache/k.tmp"
        dpkg-deb -x "$cache/$pkg"_*.deb "$cache/k.tmp"
        mv "$cache/k.tmp" "$cache/k"
    fi
    KERNEL=$(ls "$cache"/k/boot/vmlinuz-* | head -1)
    MODS=$(ls -d "$cache"/k/lib/modules/*/kernel | head -1)
}

vm_base() {
    local r=$1 bin=$2 a b
    mkdir -p "$r"/{bin,proc,sys,dev,tmp,run,etc,opt/ns/bin}
    cp "$(command -v busybox)" "$r/bin/busybox"
    for a in $("$r/bin/busybox" --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
    for b in ns-run ns-enter ns-mount ns-caps ns-init; do cp "$bin/$b" "$r/opt/ns/bin/"; done
    echo "ns-vm" > "$r/etc/hostname"
    printf 'ID=nsvm\nVERSION_ID=1\n' > "$r/etc/os-release"
    printf '0123456789abcdef0123456789abcdef\n' > "$r/etc/machine-id"
}

vm_boot() {
    local r=$1 accel=tcg
    shift
    (cd "$r" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$WORK/initrd.gz"
    [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo && accel=kvm
    timeout 300 qemu-system-x86_64 -accel "$accel" -nographic -m 768 -no-reboot \
        -kernel "$KERNEL" -initrd "$WORK/initrd.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init $*" </dev/null 2>&1 |
        tr -d '\r'
}
