#!/usr/bin/env bash
# mkimage.sh OUT.tar NAME:TAG [CMD...]
#
# Writes an OCI image layout tar that `ctr -n k8s.io images import OUT.tar` names NAME:TAG:
# one uncompressed layer holding the host's static busybox as /bin/busybox with a symlink
# per applet, Cmd CMD (default /bin/sh), Env PATH. No registry needed.
# Needs GNU tar, sha256sum and busybox-static (/bin/busybox, or $BUSYBOX).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: mkimage.sh OUT.tar NAME:TAG [CMD...]" >&2; exit 2; }
out=$(realpath -m "$1") ref=$2
shift 2
[ $# -gt 0 ] || set -- /bin/sh
busybox=${BUSYBOX:-/bin/busybox}
"$busybox" --list >/dev/null 2>&1 || { echo "mkimage.sh: $busybox: need busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/blobs/sha256"
for d in dev proc sys; do mkdir "$work/rootfs/$d"; done
chmod 1777 "$work/rootfs/tmp"
cp "$busybox" "$work/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$work/rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$work/rootfs/etc/group"

# blob FILE MEDIATYPE: stores FILE as a blob, prints its descriptor.
blob() {
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$work/blobs/sha256/$digest"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}
json_str() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer" .
diffid=sha256:$(sha256sum "$work/layer" | cut -d' ' -f1)
layer=$(blob "$work/layer" application/vnd.oci.image.layer.v1.tar)

cmd=$(for a in "$@"; do json_str "$a"; echo ,; done | tr -d '\n')
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":[%s],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "${cmd%,}" "$diffid" >"$work/config"
config=$(blob "$work/config" application/vnd.oci.image.config.v1+json)

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config" "$layer" >"$work/manifest"
manifest=$(blob "$work/manifest" application/vnd.oci.image.manifest.v1+json)

printf '{"schemaVersion":2,"manifests":[%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}]}' \
    "${manifest%\}}" "$(json_str "$ref")" "$(json_str "${ref##*:}")" >"$work/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out" oci-layout index.json blobs
