#!/bin/bash
# vmfs: many readers at once.  Eight processes pread random ranges of a
# 272 MiB qcow2 mixing compressed, plain, zero and unallocated clusters, while
# another image is read whole; every byte must match qemu-img convert.  Then
# again with a cache far smaller than the working set.  The daemon's memory
# stays bounded by its cache budget, not by what was read.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq cmp
need_fuse

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$REF"

# The input: per MiB, in turn random (incompressible), text, a hole, a
# repeated byte, text.
specs=()
for ((i = 0; i < 272; i++)); do
    case $((i % 5)) in
    0) specs+=("${i}M:1M:rand") ;;
    1 | 4) specs+=("${i}M:1M:text") ;;
    3) specs+=("${i}M:1M:$(pat "$i")") ;;
    esac
done
probe mkraw "$WORK/big.raw" 272M "${specs[@]}" || hard_error mkraw
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$WORK/big.raw" "$SRC/big.qcow2" ||
    hard_error "qemu-img convert -c"
rm -f "$WORK/big.raw"
# Plain writes over compressed and unallocated clusters, zeroes, discards,
# all at odd offsets.
writes=()
for ((i = 0; i < 272; i += 7)); do
    writes+=(-c "write -P $(pat $((i + 100))) $((i * 1048576 + i * 4099)) $((65536 + i * 1000))")
    writes+=(-c "write -z $(((i + 3) * 1048576 + 12345)) 200000")
    writes+=(-c "discard $(((i + 5) * 1048576)) 131072")
done
qemu-io -f qcow2 "${writes[@]}" "$SRC/big.qcow2" >/dev/null || hard_error "qemu-io"

qemu-img create -q -f qcow2 -o cluster_size=4096 "$SRC/small.qcow2" 32M || hard_error "qemu-img create"
qemu-io -f qcow2 -c "write -P 0x61 0 8M" -c "write -P 0x62 12345678 5000000" \
    -c "write -z 1M 1M" "$SRC/small.qcow2" >/dev/null || hard_error "qemu-io"

ref_raw "$SRC/big.qcow2" "$REF/big" || hard_error "qemu-img convert"
ref_raw "$SRC/small.qcow2" "$REF/small" || hard_error "qemu-img convert"

# Peak resident memory of a process, in KiB.
peak_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
# With sanitizers the shadow memory swamps the figure: no memory checks then.
sanitized=
if grep -qa '__asan_init' "$VMFS" || ldd "$VMFS" 2>/dev/null | grep -q libasan; then
    sanitized=1
fi

# readers ROUND READS: 8 random readers of big, while small is read whole.
readers() {
    local small_pid status=0
    t cmp "$MNT/small.qcow2" "$REF/small" &
    small_pid=$!
    TMO=300 probe parallel "$MNT/big.qcow2" "$REF/big" 8 "$2" "$1" || status=1
    wait "$small_pid" || { echo "the concurrent whole read of small.qcow2 failed"; status=1; }
    return "$status"
}

# under_kib LIMIT: the daemon's peak memory stays under LIMIT KiB.
under_kib() {
    local peak
    peak=$(peak_kib "$VMFS_PID")
    echo "vmfs peak resident memory: ${peak} KiB"
    [ -n "$peak" ] && [ "$peak" -lt "$1" ]
}

if vmfs_mount "$SRC" "$MNT"; then
    check "big.qcow2 (272 MiB) read whole equals qemu-img convert" same_file "$MNT/big.qcow2" "$REF/big"
    check "8 parallel readers of random ranges all match" readers 1000 200
    if [ -z "$sanitized" ]; then
        check "memory stays bounded (default cache)" under_kib 196608
    fi
    check "vmfs is still running" daemon_alive
    check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
else
    not_ok "vmfs mounts $SRC"
fi

if vmfs_mount "$SRC" "$MNT" -o cache_size=256K; then
    check "with -o cache_size=256K, 8 parallel readers all match" readers 2000 120
    if [ -z "$sanitized" ]; then
        check "memory stays bounded (256 KiB cache)" under_kib 98304
    fi
    check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
else
    not_ok "vmfs -o cache_size=256K mounts $SRC"
fi
finish
