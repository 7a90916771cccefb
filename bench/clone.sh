#!/bin/sh
# `ns-ctl clone` of a Debian tree against `cp -a` of the same tree (issue 21), on an ext4
# file system (copies: copy_file_range) and on a btrfs one (reflinks: FICLONE; GNU cp -a
# reflinks there too, coreutils >= 9 defaulting to --reflink=auto). Each file system is a
# loop image mounted on /var/lib/machines in a mount namespace of this script's own (the
# host's /var/lib/machines is not touched); the tree is imported into it first (ns-ctl
# import-fs, untimed), then ROUNDS rounds each time `ns-ctl clone` and `cp -a` (each followed
# by sync, so written data counts), and `cp -a --reflink=never` (a full copy, what reflinks
# save), alternating. Prints each median, and clone/cp.
#
#   BIN=target/x86_64-unknown-linux-musl/release SRC=/var/cache/ns-run/debian-systemd \
#   ROUNDS=5 bench/clone.sh
set -eu
BIN=$(realpath "${BIN:-target/x86_64-unknown-linux-musl/release}")
SRC=$(realpath "${SRC:-/var/cache/ns-run/debian-systemd}")
ROUNDS=${ROUNDS:-5}
FSLIST=${FSLIST:-ext4 btrfs}
WORK=$(mktemp -d /var/tmp/ns-bench-clone.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[ -d "$SRC/usr" ] || { echo "bench/clone.sh: no tree at $SRC" >&2; exit 1; }

for fs in $FSLIST; do
    img=$WORK/$fs.img
    truncate -s 6G "$img"
    case $fs in
        ext4) mkfs.ext4 -q -F "$img" ;;
        btrfs) mkfs.btrfs -q -f "$img" >/dev/null ;;
        xfs) mkfs.xfs -q -f "$img" ;;
    esac
    unshare -m sh -eu -c '
        ctl=$1/ns-ctl src=$2 rounds=$3 fs=$4 img=$5
        mount --make-rprivate /
        mount -o loop "$img" /var/lib/machines
        chmod 0700 /var/lib/machines
        "$ctl" import-fs "$src" bench-src
        sync
        now() { date +%s%N; }
        median() { sort -n | awk "{ a[NR] = \$1 } END { print a[int((NR + 1) / 2)] }"; }
        : > /tmp/ns-bench-clone.$$.clone
        : > /tmp/ns-bench-clone.$$.cp
        : > /tmp/ns-bench-clone.$$.full
        i=0
        while [ $i -lt "$rounds" ]; do
            s=$(now); "$ctl" clone bench-src bench-c; sync; e=$(now)
            echo $(( (e - s) / 1000 )) >> /tmp/ns-bench-clone.$$.clone
            "$ctl" remove bench-c; sync
            s=$(now); cp -a /var/lib/machines/bench-src /var/lib/machines/bench-cp; sync; e=$(now)
            echo $(( (e - s) / 1000 )) >> /tmp/ns-bench-clone.$$.cp
            rm -rf /var/lib/machines/bench-cp; sync
            s=$(now); cp -a --reflink=never /var/lib/machines/bench-src /var/lib/machines/bench-cp; sync; e=$(now)
            echo $(( (e - s) / 1000 )) >> /tmp/ns-bench-clone.$$.full
            rm -rf /var/lib/machines/bench-cp; sync
            i=$((i + 1))
        done
        c=$(median < /tmp/ns-bench-clone.$$.clone)
        p=$(median < /tmp/ns-bench-clone.$$.cp)
        f=$(median < /tmp/ns-bench-clone.$$.full)
        rm -f /tmp/ns-bench-clone.$$.clone /tmp/ns-bench-clone.$$.cp /tmp/ns-bench-clone.$$.full
        size=$(du -sh /var/lib/machines/bench-src | cut -f1)
        files=$(find /var/lib/machines/bench-src | wc -l)
        awk -v fs="$fs" -v c="$c" -v p="$p" -v f="$f" -v size="$size" -v files="$files" "BEGIN {
            printf \"%s (%s, %d entries): ns-ctl clone %.1f ms, cp -a %.1f ms, clone/cp %.2f; cp -a --reflink=never %.1f ms\n\",
                fs, size, files, c / 1000, p / 1000, c / p, f / 1000 }"
        umount /var/lib/machines
    ' sh "$BIN" "$SRC" "$ROUNDS" "$fs" "$img"
    rm -f "$img"
done
