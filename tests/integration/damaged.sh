#!/bin/bash
# vmfs: damaged images never crash or hang the daemon.  Each stays listed
# with NAME.d/info saying what is wrong, reads of the damaged part fail with
# EIO, the rest reads right, every problem is logged once, and SOURCE is
# left as it was.  Files named as qcow2 images that hold no qcow2 header at
# all (empty, random bytes) are listed as damaged too.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq
need_fuse
need_vmfs_info

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$REF"
TIB=0x10000000000        # 1 TiB: far past the end of every file here
COPIED=0x8000000000000000

# The undamaged original: 8 MiB, 4 KiB clusters (one L2 table maps 2 MiB,
# so the L1 table has 4 entries), every MiB written with its own pattern.
# Clusters are allocated in guest order, so host offsets grow with guest
# offsets.
ORIG=$WORK/orig.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$ORIG" 8M || hard_error "qemu-img create"
writes=()
for i in 0 1 2 3 4 5 6 7; do
    writes+=(-c "write -P $(pat $((i + 16))) ${i}M 1M")
done
qemu-io -f qcow2 "${writes[@]}" "$ORIG" >/dev/null || hard_error "qemu-io"
ref_raw "$ORIG" "$REF/orig" || hard_error "qemu-img convert"
header() { probe qcow2-header "$ORIG" | jq -r ".$1"; }

damage() {  # damage NAME PROBE-SUBCOMMAND ARG...: a copy of ORIG, patched
    cp "$ORIG" "$SRC/$1"
    probe "$2" "$SRC/$1" "${@:3}" || hard_error "patching $1"
}

# Named .qcow2, but no header at all.
: >"$SRC/empty.qcow2"
head -c 65536 /dev/urandom >"$SRC/random.qcow2"
# The magic and half a header.
head -c 50 "$ORIG" >"$SRC/header-only.qcow2"
# Cut in the middle of the cluster holding guest offset 4 MiB.
cut=$(($(probe qcow2-host "$ORIG" 4M) + 2048))
cp "$ORIG" "$SRC/truncated.qcow2"
truncate -s "$cut" "$SRC/truncated.qcow2"
# The L1 entry of [2 MiB, 4 MiB) and the L2 entry of [1 MiB, +4 KiB) past EOF.
damage l1-past-eof.qcow2 qcow2-l1 1 $((COPIED | TIB))
damage l2-past-eof.qcow2 qcow2-l2 1M $((COPIED | TIB))
# Absurd header fields: L1 size (byte 36), virtual size (byte 24), cluster
# bits (byte 20), a snapshot table and a backing file name past EOF.
damage l1-size-huge.qcow2 qcow2-poke 36 32 0x7fffffff
damage l1-size-small.qcow2 qcow2-poke 36 32 1
damage vsize-huge.qcow2 qcow2-poke 24 64 0x4000000000000000
damage cluster-bits.qcow2 qcow2-poke 20 32 63
cp "$ORIG" "$SRC/snapshots-past-eof.qcow2"
{ probe qcow2-poke "$SRC/snapshots-past-eof.qcow2" 60 32 3 &&
    probe qcow2-poke "$SRC/snapshots-past-eof.qcow2" 64 64 "$TIB"; } || hard_error patching
cp "$ORIG" "$SRC/backing-name-past-eof.qcow2"
{ probe qcow2-poke "$SRC/backing-name-past-eof.qcow2" 8 64 "$TIB" &&
    probe qcow2-poke "$SRC/backing-name-past-eof.qcow2" 16 32 10; } || hard_error patching
# An L1 entry (for [4M, 6M)) and an L2 entry (for 6M) off cluster alignment.
l1_2=$(probe qcow2-l1 "$ORIG" 2) || hard_error "reading the L1 table"
l2_6m=$(probe qcow2-l2 "$ORIG" 6M) || hard_error "reading an L2 table"
damage l1-unaligned.qcow2 qcow2-l1 2 $((l1_2 + 512))
damage l2-unaligned.qcow2 qcow2-l2 6M $((l2_6m + 512))
# Compressed clusters whose data no decoder accepts, at guest 3 MiB.
for c in zlib zstd; do
    qemu-img convert -c -f raw -O qcow2 -o "compression_type=$c" "$REF/orig" "$SRC/bad-$c.qcow2" ||
        hard_error "qemu-img convert -c"
    probe qcow2-corrupt-compressed "$SRC/bad-$c.qcow2" 3M || hard_error "corrupting bad-$c"
done
[ "$(header l1_size)" = 4 ] || hard_error "unexpected layout: l1_size $(header l1_size)"

LISTED=(empty random header-only truncated l1-past-eof l2-past-eof l1-size-huge l1-size-small vsize-huge
    cluster-bits snapshots-past-eof backing-name-past-eof l1-unaligned l2-unaligned bad-zlib bad-zstd)

src_state "$SRC" >"$WORK/src.state"
vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }
PID=$VMFS_PID

expected=$(for n in "${LISTED[@]}"; do echo "$n.qcow2"; echo "$n.qcow2.d"; done | sort)
check "every damaged image is listed" \
    diff -u <(echo "$expected") <(t ls -A "$MNT" | sort)

# ranges NAME SPEC...: reads of the flat file against the original.
ranges() { probe ranges "$MNT/$1.qcow2" "$REF/orig" "${@:2}"; }
damaged() { problem_named "$MNT/$1.qcow2.d/info.json" "${2:-.}"; }
# text_lists_problems NAME: the text info shows the first problem of info.json.
text_lists_problems() {
    local p
    p=$(t jq -r '.problems[0] // empty' "$MNT/$1.qcow2.d/info.json") || return 1
    [ -n "$p" ] || { echo "$1: no problems in info.json"; return 1; }
    t grep -qiF "$p" "$MNT/$1.qcow2.d/info" || { echo "$1: info lacks '$p'"; return 1; }
}
# unopened NAME SPEC...: an image whose header makes it unreadable: either
# shown with st_size 0, or every read SPEC names fails with EIO.
unopened() {
    local size
    size=$(t stat -c %s "$MNT/$1.qcow2") || return 1
    [ "$size" = 0 ] || ranges "$1" "${@:2}"
}

check "empty: reads fail with EIO (or it shows as empty)" unopened empty eio:0:4K
check "random: reads fail with EIO (or it shows as empty)" unopened random eio:0:4K
check "header-only: reads fail with EIO (or it shows as empty)" unopened header-only eio:0:4K
check "truncated: data before the cut reads right" ranges truncated ok:0:4M
check "truncated: the cut cluster fails with EIO" ranges truncated eio:4M:4K
check "truncated: data past the cut fails with EIO" ranges truncated eio:5M:64K eio:7M:64K
check "l1-past-eof: [2M, 4M) fails with EIO" ranges l1-past-eof eio:2M:4K eio:3M:64K
check "l1-past-eof: the rest reads right" ranges l1-past-eof ok:0:2M ok:4M:4M
check "l2-past-eof: the cluster at 1M fails with EIO" ranges l2-past-eof eio:1M:4K
check "l2-past-eof: the rest reads right" ranges l2-past-eof ok:0:1M ok:$((1048576 + 4096)):$((7340032 - 4096))
check "l1-size-huge: reads give the right data or EIO (or it shows as empty)" unopened l1-size-huge okeio:0:2M okeio:6M:2M
check "l1-size-small: the range the one entry maps reads right" ranges l1-size-small ok:0:2M
check "l1-size-small: the ranges past the L1 table fail with EIO" ranges l1-size-small eio:2M:4K eio:6M:4K
check "vsize-huge: stat works" t stat "$MNT/vsize-huge.qcow2"
check "vsize-huge: reads give the right data or EIO (or it shows as empty)" unopened vsize-huge okeio:0:1M okeio:7M:1M
check "cluster-bits: reads fail with EIO (or it shows as empty)" unopened cluster-bits eio:0:4K
check "snapshots-past-eof: the current disk reads right" ranges snapshots-past-eof ok:0:8M
check "backing-name-past-eof: allocated data reads right or fails with EIO" \
    ranges backing-name-past-eof okeio:0:8M
check "l1-unaligned: [4M, 6M) fails with EIO" ranges l1-unaligned eio:4M:4K eio:5M:64K
check "l1-unaligned: the rest reads right" ranges l1-unaligned ok:0:4M ok:6M:2M
check "l2-unaligned: the cluster at 6M fails with EIO" ranges l2-unaligned eio:6M:4K
check "l2-unaligned: the rest reads right" ranges l2-unaligned ok:0:6M ok:$((6291456 + 4096)):$((2097152 - 4096))
for c in zlib zstd; do
    # info is made before the read that finds the damage: it must not stay so.
    check "bad-$c: info.json is made before the damage is found" t test -s "$MNT/bad-$c.qcow2.d/info.json"
    check "bad-$c: the corrupt compressed cluster fails with EIO" ranges "bad-$c" eio:3M:64K
    check "bad-$c: info.json then names the corrupt cluster" damaged "bad-$c" "compressed cluster"
    check "bad-$c: so does info" text_lists_problems "bad-$c"
    check "bad-$c: the rest reads right" ranges "bad-$c" ok:0:3M ok:$((3145728 + 65536)):$((5242880 - 65536))
done
# The damaged reads again: each problem is still logged only once.
for n in "${LISTED[@]}"; do
    probe ranges "$MNT/$n.qcow2" /dev/null okeio:0:8M >/dev/null 2>&1
done

check "vmfs is still running" daemon_alive
for n in "${LISTED[@]}"; do
    check "$n: listed, st_size readable" t stat -c %s "$MNT/$n.qcow2"
    check "$n: info.json is valid JSON" json_valid "$MNT/$n.qcow2.d/info.json"
done
check "empty: info.json says damaged" damaged empty
check "random: info.json says damaged" damaged random
check "header-only: info.json says damaged" damaged header-only
check "truncated: info.json says damaged" damaged truncated
check "l1-past-eof: info.json says damaged" damaged l1-past-eof
check "l2-past-eof: info.json says damaged" damaged l2-past-eof
check "l1-size-huge: info.json names the L1 table" damaged l1-size-huge 'L1'
check "l1-size-small: info.json names the L1 table" damaged l1-size-small 'L1'
check "vsize-huge: info.json says damaged" damaged vsize-huge
check "cluster-bits: info.json names the cluster size" damaged cluster-bits 'cluster'
check "snapshots-past-eof: info.json names the snapshot table" damaged snapshots-past-eof 'snapshot'
check "backing-name-past-eof: info.json names the backing file" damaged backing-name-past-eof 'backing'
check "l1-unaligned: info.json says damaged" damaged l1-unaligned
check "l2-unaligned: info.json says damaged" damaged l2-unaligned
check "bad-zlib: info.json says damaged" damaged bad-zlib
check "bad-zstd: info.json says damaged" damaged bad-zstd
for n in truncated l1-past-eof bad-zlib; do
    check "$n: the text info lists problems" text_lists_problems "$n"
done
check "the healthy part of truncated still reads after the failures" ranges truncated ok:0:1M

# logged_once NAME: the daemon logged the image's problems, each once.
logged_once() {
    local lines problems
    lines=$(grep -cF "$1.qcow2" "$VMFS_LOG")
    problems=$(jq '.problems | length' "$MNT/$1.qcow2.d/info.json")
    if [ "$lines" -lt 1 ] || [ "$lines" -gt "$problems" ]; then
        echo "$1: $lines log lines for $problems problems"
        return 1
    fi
}
for n in "${LISTED[@]}"; do
    check "$n: the daemon logged each problem once" logged_once "$n"
done

# vmfs-info reports damage, exits 0, and prints what info.json shows.
info_damaged() {
    t "$VMFS_INFO" --json "$SRC/$1.qcow2" >"$WORK/$1.json" || { echo "vmfs-info exited $?"; return 1; }
    jq_true "$WORK/$1.json" '.status == "damaged" and (.problems | length) > 0' &&
        diff -u <(jq -S . "$WORK/$1.json") <(t jq -S . "$MNT/$1.qcow2.d/info.json")
}
for n in empty random header-only l1-size-huge l1-size-small vsize-huge cluster-bits snapshots-past-eof; do
    check "vmfs-info --json $n.qcow2 exits 0, says damaged, equals info.json" info_damaged "$n"
done
check_not "vmfs-info on a missing file exits non-zero" t "$VMFS_INFO" "$SRC/no-such.qcow2"

check "vmfs is still running (pid $PID)" kill -0 "$PID"
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
check "SOURCE files unchanged (sha256, size, mtime, ctime)" unchanged "$SRC" "$WORK/src.state"
finish
