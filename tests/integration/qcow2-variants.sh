#!/bin/bash
# vmfs: every qcow2 variant and raw images read byte-identical to
# `qemu-img convert -O raw`, with st_size, holes (SEEK_DATA/SEEK_HOLE,
# st_blocks) and info.json right; writes fail with EROFS; SOURCE untouched.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq
need_fuse

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC/df" "$REF"

# The same writes, with patterns that differ per image, into every qcow2:
# byte-odd offsets, writes across cluster boundaries, zero writes over
# allocated clusters (kept preallocated, and unmapped), zero writes over
# unallocated space, a discard, and the last byte.
scribble() {
    local img=$1 n=$2 fmt=${3:-qcow2}
    (cd "$(dirname "$img")" && qemu-io -f "$fmt" \
        -c "write -P $(pat "$n") 0 512" \
        -c "write -P $(pat $((n + 1))) 1234 5000" \
        -c "write -P $(pat $((n + 2))) 70001 333" \
        -c "write -P $(pat $((n + 3))) 1048575 70000" \
        -c "write -P $(pat $((n + 4))) 2097152 262144" \
        -c "write -z 2162688 65536" \
        -c "write -z -u 2228224 32768" \
        -c "write -P $(pat $((n + 5))) 3000000 4096" \
        -c "write -z 3500000 100000" \
        -c "discard 2097152 65536" \
        -c "write -P $(pat $((n + 6))) 1900000 70000" \
        -c "write -P $(pat $((n + 7))) 4194303 1" \
        "$(basename "$img")" >/dev/null)
}

# A 4 MiB raw file of mixed compressible and incompressible data, the input
# of the compressed images.
probe mkraw "$WORK/mixed.raw" 4M 0:1M:text 1M:512K:rand 2M:256K:0x5a 3M:1M:text ||
    hard_error "mkraw failed"

QCOW2=()    # image names below SRC
n=0
newq() {    # newq NAME SIZE CREATE-OPTIONS: create and scribble a qcow2
    local name=$1 size=$2 opts=$3
    (cd "$SRC/$(dirname "$name")" &&
        qemu-img create -q -f qcow2 -o "$opts" "$(basename "$name")" "$size") ||
        hard_error "qemu-img create $name -o $opts"
    n=$((n + 8))
    scribble "$SRC/$name" "$n" || hard_error "qemu-io on $name"
    QCOW2+=("$name")
}
newc() {    # newc NAME CONVERT-OPTIONS: a compressed qcow2, then some plain writes
    local name=$1 opts=$2
    qemu-img convert -c -f raw -O qcow2 -o "$opts" "$WORK/mixed.raw" "$SRC/$name" ||
        hard_error "qemu-img convert -c $name -o $opts"
    n=$((n + 8))
    qemu-io -f qcow2 -c "write -P $(pat "$n") 1234 5000" -c "write -z 3M 64K" \
        -c "write -P $(pat $((n + 1))) 1572864 65536" "$SRC/$name" >/dev/null ||
        hard_error "qemu-io on $name"
    QCOW2+=("$name")
}

newq v2.qcow2 4M compat=0.10
newq v2-c4k.qcow2 4M compat=0.10,cluster_size=4096
for cs in 512 1024 4096 16384 65536 262144 2097152; do
    newq "v3-c$cs.qcow2" 4M "compat=1.1,cluster_size=$cs"
done
newq v3-c2m-8m.qcow2 8M cluster_size=2M
newq refcount1.qcow2 4M refcount_bits=1
newq refcount64.qcow2 4M refcount_bits=64
newq lazy.qcow2 4M lazy_refcounts=on
newq xl2-c16k.qcow2 4M extended_l2=on,cluster_size=16384
newq xl2-c64k.qcow2 4M extended_l2=on
newq xl2-c2m.qcow2 4M extended_l2=on,cluster_size=2M
newq prealloc-metadata.qcow2 4M preallocation=metadata
newq prealloc-falloc.qcow2 4M preallocation=falloc
newq prealloc-full.qcow2 4M preallocation=full
newq df/raw-on.qcow2 4M data_file=raw-on.data,data_file_raw=on
newq df/raw-off.qcow2 4M data_file=raw-off.data,data_file_raw=off
newq big.qcow2 5G cluster_size=65536
(cd "$SRC" && qemu-io -f qcow2 -c "write -P 0x99 4G 1M" -c "write -P 0x98 5367660544 4096" \
    big.qcow2 >/dev/null) || hard_error "qemu-io on big.qcow2"
newc zlib.qcow2 compression_type=zlib
newc zstd.qcow2 compression_type=zstd
newc zlib-c4k.qcow2 compression_type=zlib,cluster_size=4096
newc zstd-c2m.qcow2 compression_type=zstd,cluster_size=2M
newc zlib-c512.qcow2 compression_type=zlib,cluster_size=512
newc v2-zlib.qcow2 compat=0.10
newc xl2-zstd.qcow2 compression_type=zstd,extended_l2=on

# A compressed base under an overlay of 4 KiB clusters that rewrites parts
# of one of its compressed clusters.
mkdir -p "$SRC/fill"
qemu-img convert -c -f raw -O qcow2 "$WORK/mixed.raw" "$SRC/fill/base.qcow2" ||
    hard_error "qemu-img convert -c fill/base.qcow2"
(cd "$SRC/fill" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o cluster_size=4096 \
    top.qcow2 && qemu-io -f qcow2 -c "write -P 0x77 80K 4K" -c "write -P 0x78 104000 100" \
    top.qcow2 >/dev/null) || hard_error "creating fill/top.qcow2"
ref_raw "$SRC/fill/top.qcow2" "$REF/fill-top" || hard_error "qemu-img convert fill/top.qcow2"

RAW=(disk.img whole.raw cd.iso sda.dd empty.img)
{ probe mkraw "$SRC/disk.img" 8M 0:4K:0x11 1048589:100000:rand 5M:1M:text 8388607:1:0x7e &&
    probe mkraw "$SRC/whole.raw" 1M 0:1M:rand &&
    probe mkraw "$SRC/cd.iso" 2M 32K:2K:text 1M:64K:0x43 &&
    probe mkraw "$SRC/sda.dd" 3M 0:512:0x55 2M:1M:rand; } || hard_error "mkraw failed"
: >"$SRC/empty.img"

ALL=("${QCOW2[@]}" "${RAW[@]}")
for img in "${ALL[@]}"; do
    key=${img//\//_}
    ref_raw "$SRC/$img" "$REF/$key" || hard_error "qemu-img convert $img"
    qemu_map "$SRC/$img" "$REF/$key.map" || hard_error "qemu-img map $img"
    qemu_vsize "$SRC/$img" >"$REF/$key.size" || hard_error "qemu-img info $img"
done

src_state "$SRC" >"$WORK/src.state"
vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }

# has_holes MAP: qemu-img map shows some range without data.
has_holes() { jq -e 'any(.[]; .data == false)' "$1" >/dev/null; }

for img in "${ALL[@]}"; do
    key=${img//\//_}
    flat=$MNT/$img
    check "$img: st_size is the virtual size" size_is "$flat" "$(cat "$REF/$key.size")"
    if [ "$img" = big.qcow2 ]; then    # 5 GiB, nearly all holes
        check "$img: content equals qemu-img convert" probe same "$flat" "$REF/$key"
    else
        check "$img: content equals qemu-img convert" same_file "$flat" "$REF/$key"
    fi
    check "$img: SEEK_DATA/SEEK_HOLE match qemu-img map" probe holes "$flat" "$REF/$key" "$REF/$key.map"
    if has_holes "$REF/$key.map" && [ -s "$REF/$key" ]; then
        check "$img: st_blocks shows a sparse file" probe sparse "$flat"
    fi
    info=$MNT/$img.d/info.json
    jq_checks "$info" "$img: info.json" \
        "virtual_size" ".virtual_size == $(cat "$REF/$key.size")" \
        "status ok, no problems" '.status == "ok" and .problems == []' \
        "file is the absolute path" ".file == \"$SRC/$img\"" \
        "file_size" ".file_size == $(stat -c %s "$SRC/$img")" \
        "allocated_size is the host allocation" ".allocated_size == $(($(stat -c '%b * %B' "$SRC/$img")))" \
        "data_size is a number within the disk" '(.data_size | type) == "number" and .data_size <= .virtual_size'
    check "$img: info text states the virtual size" \
        t grep -q "virtual size: $(cat "$REF/$key.size") bytes" "$MNT/$img.d/info"
done

for img in "${RAW[@]}"; do
    check "$img: format raw" jq_true "$MNT/$img.d/info.json" '.format == "raw" and (has("qcow2") | not)'
done

for img in "${QCOW2[@]}"; do
    cs=$(jq -r '."cluster-size"' <(cd "$SRC/$(dirname "$img")" &&
        qemu-img info -U --output=json "$(basename "$img")"))
    case $img in v2*) v=2 ;; *) v=3 ;; esac
    case $img in *zstd*) c=zstd ;; *) c=zlib ;; esac
    case $img in xl2*) x=true ;; *) x=false ;; esac
    case $img in
    df/*) df='.qcow2.data_file | type == "string" and endswith(".data")' ;;
    *) df='(.qcow2.data_file // null) == null' ;;
    esac
    jq_checks "$MNT/$img.d/info.json" "$img: info.json" \
        "format qcow2" '.format == "qcow2"' \
        "qcow2.cluster_size $cs" ".qcow2.cluster_size == $cs" \
        "qcow2.format_version $v" ".qcow2.format_version == $v" \
        "qcow2.compression $c" ".qcow2.compression == \"$c\"" \
        "qcow2.extended_l2 $x" ".qcow2.extended_l2 == $x" \
        "qcow2.data_file" "$df" \
        "no backing chain, no snapshots" '.backing_chain == [] and .snapshots == []'
done

# A small read of a compressed cluster decodes all of it: the rest goes to
# the page cache, read through the chain as any read is; nothing more is
# stored for plain clusters or clusters no larger than a page.
for img in zlib.qcow2 zstd.qcow2 xl2-zstd.qcow2 v2-zlib.qcow2; do
    check "$img: a page read from a compressed cluster brings the cluster into the page cache" \
        probe fill "$MNT/$img" "$REF/$img" 72K 64K 128K yes
done
check "fill/top.qcow2: the cluster of its compressed base comes into the page cache as the chain reads" \
    probe fill "$MNT/fill/top.qcow2" "$REF/fill-top" 72K 64K 128K yes
for img in zlib-c4k.qcow2 zlib-c512.qcow2 v3-c65536.qcow2; do
    check "$img: a page read brings no other page into the page cache" \
        probe fill "$MNT/$img" "$REF/$img" 72K 64K 128K no
done

check "writes to a flat file and mkdir/create in the root fail with EROFS" \
    probe erofs "$MNT/v2.qcow2" "$MNT"
check "writes to info and create in NAME.d fail with EROFS" \
    probe erofs "$MNT/v2.qcow2.d/info" "$MNT/v2.qcow2.d"
check "writes to a raw image fail with EROFS" probe erofs "$MNT/disk.img" "$MNT/df"
check "cp --sparse=always of a flat file copies it" \
    t cp --sparse=always "$MNT/big.qcow2" "$WORK/big.copy"
check "the sparse copy equals qemu-img convert" probe same "$WORK/big.copy" "$REF/big.qcow2"
check "the sparse copy is sparse" test "$(stat -c %b "$WORK/big.copy")" -lt 20000
rm -f "$WORK/big.copy"
check "vmfs is still running" daemon_alive

check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
check "SOURCE files unchanged (sha256, size, mtime, ctime)" unchanged "$SRC" "$WORK/src.state"
finish
