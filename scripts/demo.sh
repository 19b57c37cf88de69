#!/bin/bash
# vmfs demo: makes a directory of sample disk images, mounts it with vmfs,
# and prints what to look at.  Run from a built source tree:
#
#   ./scripts/demo.sh [DEMO-DIR]        (default /tmp/vmfs-demo)
#
# DEMO-DIR/images gets the images, DEMO-DIR/mnt the mount.  Running it again
# unmounts the previous demo and starts afresh.  VMFS=/path/to/vmfs picks
# another build (default: ./vmfs in the current directory, else beside this
# script's source tree).
set -euo pipefail

DEMO=${1:-/tmp/vmfs-demo}
IMAGES=$DEMO/images
MNT=$DEMO/mnt
top=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${VMFS:-}" ]; then
    if [ -x ./vmfs ]; then VMFS=$PWD/vmfs; else VMFS=$top/vmfs; fi
fi

die() { echo "demo.sh: $*" >&2; exit 1; }
[ -x "$VMFS" ] || die "no vmfs at $VMFS: build first (autoreconf -fi && ./configure && make)"
for tool in qemu-img qemu-io sfdisk mkfs.ext4 fusermount3; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-deps.sh"
done
[ -c /dev/fuse ] || die "/dev/fuse is missing: FUSE is not available here"

# Unmount an earlier demo.
if grep -qs " $MNT fuse" /proc/mounts; then
    echo "unmounting the previous demo at $MNT"
    fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT"
fi
rm -rf "$IMAGES"
mkdir -p "$IMAGES/chain" "$MNT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "making sample images in $IMAGES"

# gpt.qcow2: a GPT disk, an ext4 file system with a few files in partition
# 1 and an empty partition 2, converted from raw to qcow2.
mkdir -p "$work/files/etc"
echo "hello from inside the guest" >"$work/files/hello.txt"
echo "vmfs-demo" >"$work/files/etc/hostname"
truncate -s 64M "$work/gpt.raw"
sfdisk -q "$work/gpt.raw" <<'EOF'
label: gpt
start=2048, size=40M, type=linux, name="root"
size=20M, type=swap, name="swap"
EOF
mkfs.ext4 -q -F -L demo-root -d "$work/files" -E offset=$((2048 * 512)) "$work/gpt.raw" 40M
qemu-img convert -f raw -O qcow2 "$work/gpt.raw" "$IMAGES/gpt.qcow2"

# mbr.qcow2: an MBR disk with a primary, an extended and two logical
# partitions.
truncate -s 32M "$work/mbr.raw"
sfdisk -q "$work/mbr.raw" <<'EOF'
label: dos
start=2048, size=8M, type=83, bootable
type=5
size=8M, type=83
size=8M, type=82
EOF
qemu-img convert -f raw -O qcow2 "$work/mbr.raw" "$IMAGES/mbr.qcow2"

# snap.qcow2: two internal snapshots with different data before and after.
qemu-img create -q -f qcow2 "$IMAGES/snap.qcow2" 16M
qemu-io -f qcow2 -c "write -P 0x11 0 1M" "$IMAGES/snap.qcow2" >/dev/null
qemu-img snapshot -c before-upgrade "$IMAGES/snap.qcow2"
qemu-io -f qcow2 -c "write -P 0x22 0 1M" -c "write -P 0x33 8M 1M" "$IMAGES/snap.qcow2" >/dev/null
qemu-img snapshot -c after-upgrade "$IMAGES/snap.qcow2"
qemu-io -f qcow2 -c "write -P 0x44 4M 64K" "$IMAGES/snap.qcow2" >/dev/null

# chain/: base.qcow2 <- overlay.qcow2, the overlay changing part of the base.
qemu-img convert -f raw -O qcow2 "$work/gpt.raw" "$IMAGES/chain/base.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$IMAGES/chain/overlay.qcow2"
qemu-io -f qcow2 -c "write -P 0x55 60M 1M" "$IMAGES/chain/overlay.qcow2" >/dev/null

# zstd.qcow2: the GPT disk again, every cluster zstd-compressed.
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$work/gpt.raw" "$IMAGES/zstd.qcow2"

# plain.img: a raw image (raw images are recognized by extension).
cp --sparse=always "$work/mbr.raw" "$IMAGES/plain.img"

# A file that is no image, and so is not shown.
echo "vmfs shows only disk images" >"$IMAGES/README.txt"

echo "mounting: $VMFS $IMAGES $MNT"
"$VMFS" "$IMAGES" "$MNT"

cat <<EOF

vmfs is serving $IMAGES at $MNT (read-only).  Things to try:

  ls -l $MNT $MNT/chain $MNT/gpt.qcow2.d
  cat $MNT/gpt.qcow2.d/info
  jq '.partitions[] | {number, start, size, type_name, name}' $MNT/gpt.qcow2.d/info.json
  sfdisk -d $MNT/gpt.qcow2
  debugfs -R 'cat /hello.txt' $MNT/gpt.qcow2.d/p1
  cat $MNT/gpt.qcow2.d/fs/p1/hello.txt      # starts a libguestfs appliance: up to a minute
  ls $MNT/mbr.qcow2.d
  jq '.backing_chain' $MNT/chain/overlay.qcow2.d/info.json
  ls $MNT/snap.qcow2.d/snapshots/
  cmp $MNT/snap.qcow2.d/snapshots/before-upgrade $MNT/snap.qcow2.d/snapshots/after-upgrade | head -1
  qemu-img convert -O raw $IMAGES/zstd.qcow2 /tmp/zstd.raw && cmp /tmp/zstd.raw $MNT/zstd.qcow2 && echo identical
  cp --sparse=always $MNT/gpt.qcow2 /tmp/gpt.raw && du -h --apparent-size /tmp/gpt.raw && du -h /tmp/gpt.raw
  cat $MNT/README.txt        # not there: only images are shown

Unmount with:

  fusermount3 -u $MNT
EOF
