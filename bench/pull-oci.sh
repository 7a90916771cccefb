#!/usr/bin/env bash
# bench/pull-oci.sh: what `ns-ctl pull-oci` of a busybox-sized image from a registry on this
# host costs, and the first start of what it made (`ns-run -M NAME /bin/true`). Builds an OCI
# layout of a busybox tree (one gzip layer, a config, a manifest), pushes it with skopeo to
# Debian's docker-registry on 127.0.0.1, then ROUNDS times: pull (time), first start
# (time), remove the image; and import-oci of the same layout (time: the part of a pull that
# is not the registry's). Prints the medians.
#
#   ROUNDS=10 bench/pull-oci.sh     (BIN_OVERRIDE=DIR: binaries other than the release ones)
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
BIN=${BIN_OVERRIDE:-$BIN}
ROUNDS=${ROUNDS:-10}
[[ $(id -u) == 0 ]] || die "run as root"
need_packages docker-registry skopeo busybox-static
for b in ns-ctl ns-run; do [[ -x $BIN/$b ]] || die "$BIN/$b missing: cargo build --release"; done

tmp=$(mktemp -d /tmp/pull-oci-bench.XXXXXX)
name=pullbench$$
reg=""
cleanup() {
    [[ -n $reg ]] && kill "$reg" 2>/dev/null && wait "$reg" 2>/dev/null
    rm -rf --one-file-system -- "/var/lib/machines/$name" "/var/lib/machines/$name.nspawn"
    rm -rf --one-file-system -- "/var/lib/machines/$name-i" "/var/lib/machines/$name-i.nspawn"
    remove_tmp_dir "$tmp"
}
trap cleanup EXIT

# A busybox tree: the binary and one symlink per applet, passwd and group.
root=$tmp/rootfs
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,usr/bin,sbin,usr/sbin,run,var}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list-full); do
    [[ -e $root/$a ]] || ln -s /bin/busybox "$root/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# The layout: blobs named by their sha256.
lay=$tmp/layout
mkdir -p "$lay/blobs/sha256"
blob() { # FILE: store it; print "DIGEST SIZE"
    local d
    d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$lay/blobs/sha256/$d"
    echo "sha256:$d $(stat -c %s "$1")"
}
tar -C "$root" --numeric-owner -cf - . | gzip -6 >"$tmp/layer.tar.gz"
read -r layer_d layer_s < <(blob "$tmp/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[]}}' >"$tmp/config.json"
read -r conf_d conf_s < <(blob "$tmp/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$conf_d" "$conf_s" "$layer_d" "$layer_s" >"$tmp/manifest.json"
read -r man_d man_s < <(blob "$tmp/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
    "$man_d" "$man_s" >"$lay/index.json"

# The registry, on a free port of 127.0.0.1.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$tmp/storage" "$port" >"$tmp/registry.yml"
docker-registry serve "$tmp/registry.yml" >/dev/null 2>&1 &
reg=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
printf '{"default":[{"type":"insecureAcceptAnything"}]}' >"$tmp/policy.json"
skopeo --policy "$tmp/policy.json" copy -q --preserve-digests --dest-tls-verify=false \
    "oci:$lay:latest" "docker://127.0.0.1:$port/bench/busybox:latest"

ns_now() { date +%s%N; }
pulls="" starts="" imports=""
for _ in $(seq "$ROUNDS"); do
    t0=$(ns_now)
    "$BIN/ns-ctl" pull-oci "127.0.0.1:$port/bench/busybox" "$name"
    t1=$(ns_now)
    "$BIN/ns-run" --register=no -q -M "$name" /bin/true
    t2=$(ns_now)
    "$BIN/ns-ctl" import-oci "$lay" "$name-i"
    t3=$(ns_now)
    pulls="$pulls $(((t1 - t0) / 1000))" starts="$starts $(((t2 - t1) / 1000))"
    imports="$imports $(((t3 - t2) / 1000))"
    rm -rf --one-file-system -- "/var/lib/machines/$name" "/var/lib/machines/$name.nspawn"
    rm -rf --one-file-system -- "/var/lib/machines/$name-i" "/var/lib/machines/$name-i.nspawn"
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
p=$(echo "$pulls" | median) s=$(echo "$starts" | median) i=$(echo "$imports" | median)
awk -v p="$p" -v s="$s" -v i="$i" -v l="$layer_s" -v u="$(du -sk "$root" | cut -f1)" -v r="$ROUNDS" 'BEGIN {
    printf "busybox image (%.0f KiB gzip layer, %d KiB tree) from docker-registry on 127.0.0.1:\n", l / 1024, u
    printf "  pull-oci %.1f ms, first start (ns-run -M NAME /bin/true) %.1f ms, together %.1f ms (median of %d)\n",
        p / 1000, s / 1000, (p + s) / 1000, r
    printf "  import-oci of the same layout from disk %.1f ms\n", i / 1000 }'
