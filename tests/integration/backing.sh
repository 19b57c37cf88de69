#!/bin/bash
# vmfs: backing chains resolve as qemu resolves them (relative to the image's
# directory, across subdirectories of SOURCE); loops, chains deeper than
# max_chain, missing backing files and backing files outside SOURCE leave the
# image listed with info saying why, reads needing them fail with EIO, and
# the daemon keeps running.  -o allow_external_backing,max_chain=N lift the
# limits.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq
need_fuse

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
OUT=$WORK/outside
mkdir -p "$SRC/base" "$SRC/vms/mid" "$SRC/loop" "$SRC/deep" "$SRC/miss" "$SRC/ext" "$REF" "$OUT"

qio() { (cd "$(dirname "$1")" && qemu-io -f qcow2 "${@:2}" "$(basename "$1")" >/dev/null) ||
    hard_error "qemu-io $*"; }
# overlay IMAGE BACKING BACKING-FORMAT [CREATE-OPTIONS]: BACKING as written
# into the header, relative to IMAGE's directory.
overlay() {
    (cd "$(dirname "$1")" && qemu-img create -q -f qcow2 -b "$2" -F "$3" ${4:+-o "$4"} \
        "$(basename "$1")") || hard_error "qemu-img create -b $2 $1"
}

# A chain of three across subdirectories: a 3 MiB raw base <- a 4 MiB
# qcow2 with 4 KiB clusters <- a qcow2 with 64 KiB clusters.
probe mkraw "$SRC/base/base.raw" 3M 0:1M:text 1M:64K:0x11 2M:1M:rand || hard_error mkraw
overlay "$SRC/vms/mid/mid.qcow2" ../../base/base.raw raw cluster_size=4096
qemu-img resize -q "$SRC/vms/mid/mid.qcow2" 4M || hard_error "qemu-img resize"
qio "$SRC/vms/mid/mid.qcow2" -c "write -P 0x22 4097 10000" -c "write -z 1M 64K" \
    -c "write -P 0x23 3M 4096"
overlay "$SRC/vms/top.qcow2" mid/mid.qcow2 qcow2
qio "$SRC/vms/top.qcow2" -c "write -P 0x33 0 512" -c "write -P 0x34 2500000 70000" \
    -c "write -z 2M 64K"
CHAIN=(base/base.raw vms/mid/mid.qcow2 vms/top.qcow2)

# A loop: a -> b -> a.  Each holds its own first cluster.
qemu-img create -q -f qcow2 "$SRC/loop/b.qcow2" 1M || hard_error "qemu-img create"
qio "$SRC/loop/b.qcow2" -c "write -P 0x42 64K 64K"
overlay "$SRC/loop/a.qcow2" b.qcow2 qcow2
qio "$SRC/loop/a.qcow2" -c "write -P 0x41 0 64K"
qemu-img rebase -u -f qcow2 -b a.qcow2 -F qcow2 "$SRC/loop/b.qcow2" || hard_error "qemu-img rebase"

# A chain of 20 images (c00 <- … <- c19), each writing its own 64 KiB.
qemu-img create -q -f qcow2 "$SRC/deep/c00.qcow2" 2M || hard_error "qemu-img create"
qio "$SRC/deep/c00.qcow2" -c "write -P $(pat 0) 0 64K"
for i in $(seq 1 19); do
    cur=$(printf 'c%02d.qcow2' "$i")
    overlay "$SRC/deep/$cur" "$(printf 'c%02d.qcow2' $((i - 1)))" qcow2
    qio "$SRC/deep/$cur" -c "write -P $(pat "$i") $((i * 65536)) 64K"
done

# A backing file that is gone.
qemu-img create -q -f qcow2 "$SRC/miss/gone.qcow2" 1M || hard_error "qemu-img create"
overlay "$SRC/miss/m.qcow2" gone.qcow2 qcow2
qio "$SRC/miss/m.qcow2" -c "write -P 0x51 0 64K"
ref_raw "$SRC/miss/m.qcow2" "$REF/m" || hard_error "qemu-img convert"
rm "$SRC/miss/gone.qcow2"

# Backing files outside SOURCE: by a relative path, an absolute path, and a
# symbolic link inside SOURCE that points outside.
probe mkraw "$OUT/o.raw" 1M 0:1M:text || hard_error mkraw
ln -s "$OUT/o.raw" "$SRC/ext/link-to-outside"
overlay "$SRC/ext/rel.qcow2" ../../outside/o.raw raw
overlay "$SRC/ext/abs.qcow2" "$OUT/o.raw" raw
overlay "$SRC/ext/sym.qcow2" link-to-outside raw
for e in rel abs sym; do
    qio "$SRC/ext/$e.qcow2" -c "write -P 0x61 0 64K"
done
EXT=(ext/rel.qcow2 ext/abs.qcow2 ext/sym.qcow2)

for img in "${CHAIN[@]}" deep/c10.qcow2 deep/c19.qcow2 "${EXT[@]}"; do
    ref_raw "$SRC/$img" "$REF/${img//\//_}" || hard_error "qemu-img convert $img"
done

src_state "$SRC" >"$WORK/src.state"
src_state "$OUT" >"$WORK/out.state"
vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }

# ---- the healthy chain, through subdirectories ------------------------------
check "subdirectories of SOURCE are mirrored" \
    diff -u <(printf '%s\n' base deep ext loop miss vms) <(t ls "$MNT" | sort)
check "vms/ lists mid/ and top.qcow2" \
    diff -u <(printf '%s\n' mid top.qcow2 top.qcow2.d) <(t ls "$MNT/vms" | sort)
for img in "${CHAIN[@]}"; do
    check "$img: equals qemu-img convert" same_file "$MNT/$img" "$REF/${img//\//_}"
    check "$img: healthy" jq_true "$MNT/$img.d/info.json" '.status == "ok" and .problems == []'
done
info=$MNT/vms/top.qcow2.d/info.json
check "top.qcow2: backing_chain lists mid.qcow2 (qcow2) then base.raw (raw)" jq_true "$info" \
    '(.backing_chain | length) == 2 and
     (.backing_chain[0].file | endswith("mid/mid.qcow2")) and .backing_chain[0].format == "qcow2" and
     (.backing_chain[1].file | endswith("base/base.raw")) and .backing_chain[1].format == "raw" and
     .backing_chain[0].virtual_size == 4194304 and .backing_chain[1].virtual_size == 3145728'
check "top.qcow2: info names the backing files" t grep -q 'base.raw' "$MNT/vms/top.qcow2.d/info"
check "top.qcow2: data_size counts data through the chain" jq_true "$info" \
    '.data_size > 1500000 and .data_size <= .virtual_size'

# ---- a loop -------------------------------------------------------------------
for x in a b; do
    info=$MNT/loop/$x.qcow2.d/info.json
    check "loop/$x.qcow2: listed" t test -f "$MNT/loop/$x.qcow2"
    check "loop/$x.qcow2: reads needing the looping chain fail with EIO" read_fails "$MNT/loop/$x.qcow2" 512K 64K
    check "loop/$x.qcow2: info.json reports the loop" problem_named "$info" 'loop|cycle|backing'
    check "loop/$x.qcow2: info lists the problem" t grep -qi 'problems' "$MNT/loop/$x.qcow2.d/info"
done
probe mkraw "$WORK/a-own" 64K 0:64K:0x41
check "loop/a.qcow2: its own cluster still reads" \
    probe ranges "$MNT/loop/a.qcow2" "$WORK/a-own" ok:0:64K
check "vmfs survives the loop" daemon_alive

# ---- deeper than max_chain (16) ----------------------------------------------
check "deep/c10.qcow2 (11 images) equals qemu-img convert" \
    same_file "$MNT/deep/c10.qcow2" "$REF/deep_c10.qcow2"
info=$MNT/deep/c19.qcow2.d/info.json
check "deep/c19.qcow2 (20 images): listed" t test -f "$MNT/deep/c19.qcow2"
check "deep/c19.qcow2: reads of the deepest layer fail with EIO" read_fails "$MNT/deep/c19.qcow2" 0 64K
check "deep/c19.qcow2: reads of unallocated space fail with EIO" read_fails "$MNT/deep/c19.qcow2" 1536K 64K
check "deep/c19.qcow2: its own data reads right or fails with EIO" \
    probe ranges "$MNT/deep/c19.qcow2" "$REF/deep_c19.qcow2" okeio:$((19 * 65536)):64K
check "deep/c19.qcow2: info.json reports the chain length" problem_named "$info" 'chain|deep|depth|backing'
check "vmfs survives the deep chain" daemon_alive

# ---- a missing backing file --------------------------------------------------
info=$MNT/miss/m.qcow2.d/info.json
check "miss/m.qcow2: listed" t test -f "$MNT/miss/m.qcow2"
check "miss/m.qcow2: its own data reads" probe ranges "$MNT/miss/m.qcow2" "$REF/m" ok:0:64K
check "miss/m.qcow2: reads needing the backing file fail with EIO" read_fails "$MNT/miss/m.qcow2" 64K 64K
check "miss/m.qcow2: info.json reports the missing backing file" problem_named "$info" 'gone.qcow2'

# ---- outside SOURCE -----------------------------------------------------------
for img in "${EXT[@]}"; do
    info=$MNT/$img.d/info.json
    check "$img: listed" t test -f "$MNT/$img"
    check "$img: its own data reads" probe ranges "$MNT/$img" "$REF/${img//\//_}" ok:0:64K
    check "$img: reads of the outside backing file fail with EIO" read_fails "$MNT/$img" 64K 64K
    check "$img: info.json says the backing file is refused" problem_named "$info" 'outside|external|refus|backing'
done
check "vmfs is still running" daemon_alive
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"

# ---- -o allow_external_backing,max_chain=32 -------------------------------------
vmfs_mount "$SRC" "$MNT" -o allow_external_backing,max_chain=32 ||
    { not_ok "vmfs -o allow_external_backing,max_chain=32 mounts"; finish; }
for img in "${EXT[@]}" deep/c19.qcow2; do
    check "with the limits lifted, $img equals qemu-img convert" \
        same_file "$MNT/$img" "$REF/${img//\//_}"
    check "with the limits lifted, $img is healthy" jq_true "$MNT/$img.d/info.json" \
        '.status == "ok" and .problems == []'
done
check "with the limits lifted, deep/c19.qcow2 lists 19 backing files" \
    jq_true "$MNT/deep/c19.qcow2.d/info.json" '.backing_chain | length == 19'
check "loop/a.qcow2 is still refused" read_fails "$MNT/loop/a.qcow2" 512K 64K
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"

check "SOURCE files unchanged (sha256, size, mtime, ctime)" unchanged "$SRC" "$WORK/src.state"
check "backing files outside SOURCE unchanged" unchanged "$OUT" "$WORK/out.state"
finish
