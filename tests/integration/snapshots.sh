#!/bin/bash
# vmfs: internal qcow2 snapshots appear as NAME.d/snapshots/SNAP, each equal
# to `qemu-img convert -l snapshot.id=ID`, at the snapshot's own disk size,
# with SNAP.d/info(.json); empty, repeated and unusable names show as IDs.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq
need_fuse

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$REF"

qio() { qemu-io -f qcow2 "${@:2}" "$1" >/dev/null || hard_error "qemu-io $*"; }
snap() { qemu-img snapshot -c "$2" "$1" || hard_error "qemu-img snapshot -c '$2' $1"; }

# s.qcow2: six snapshots, each after different writes; the disk grows from
# 1 MiB to 3 MiB after the first.  Names: "one", "two" twice, "", "a/b", "..".
S=$SRC/s.qcow2
qemu-img create -q -f qcow2 "$S" 1M || hard_error "qemu-img create"
qio "$S" -c "write -P 0x01 0 64K" -c "write -P 0x21 300001 5000"
snap "$S" one
qio "$S" -c "write -P 0x02 0 64K" -c "write -z 300000 4096"
qemu-img resize -q "$S" 3M || hard_error "qemu-img resize"
qio "$S" -c "write -P 0x03 2M 64K" -c "write -P 0x23 3145727 1"
snap "$S" two
qio "$S" -c "write -P 0x04 65536 4096"
snap "$S" two
qio "$S" -c "write -P 0x05 1M 12345"
snap "$S" ""
qio "$S" -c "write -P 0x06 1500000 100"
snap "$S" a/b
qio "$S" -c "discard 0 64K"
snap "$S" ..
qio "$S" -c "write -P 0x07 2M 4096"

# v2.qcow2 (compat=0.10): snapshot entries without the v3 extra data.
V2=$SRC/v2.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 "$V2" 2M || hard_error "qemu-img create"
qio "$V2" -c "write -P 0x31 4096 4096"
snap "$V2" before
qio "$V2" -c "write -P 0x32 4096 8192"
snap "$V2" after
qio "$V2" -c "write -P 0x33 1M 4096"

# plain.qcow2: no snapshots, so no snapshots/ directory.
qemu-img create -q -f qcow2 "$SRC/plain.qcow2" 1M || hard_error "qemu-img create"

# The shown name of each snapshot and its ID, its disk size, and its name.
# "two" repeats, "" is empty, "a/b" and ".." cannot be file names: all IDs.
S_SHOWN=(one 2 3 4 5 6)
S_IDS=(1 2 3 4 5 6)
S_NAMES=(one two two "" a/b ..)
S_SIZES=(1048576 3145728 3145728 3145728 3145728 3145728)

for i in "${!S_IDS[@]}"; do
    ref_raw "$S" "$REF/s.${S_IDS[$i]}" -l "snapshot.id=${S_IDS[$i]}" || hard_error "qemu-img convert -l"
    # qemu serves an older snapshot at the current disk size; the snapshot's
    # own disk is the prefix of that, and the rest reads as zeros.
    if [ "$(stat -c %s "$REF/s.${S_IDS[$i]}")" -gt "${S_SIZES[$i]}" ]; then
        tail -c +"$((S_SIZES[i] + 1))" "$REF/s.${S_IDS[$i]}" | cmp -s - <(head -c \
            "$(($(stat -c %s "$REF/s.${S_IDS[$i]}") - S_SIZES[i]))" /dev/zero) ||
            hard_error "qemu shows data past the disk size of snapshot ${S_IDS[$i]}"
        truncate -s "${S_SIZES[$i]}" "$REF/s.${S_IDS[$i]}"
    fi
done
ref_raw "$S" "$REF/s.current" || hard_error "qemu-img convert"
for a in "$REF"/s.*; do
    for b in "$REF"/s.*; do
        [ "$a" = "$b" ] || ! cmp -s "$a" "$b" || hard_error "$a and $b are equal: the test proves nothing"
    done
done
for id in 1 2; do
    ref_raw "$V2" "$REF/v2.$id" -l "snapshot.id=$id" || hard_error "qemu-img convert -l"
done
ref_raw "$V2" "$REF/v2.current" || hard_error "qemu-img convert"
echo '[]' >"$REF/empty.map"

src_state "$SRC" >"$WORK/src.state"
vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }

SD=$MNT/s.qcow2.d/snapshots
check "s.qcow2: current state equals qemu-img convert" same_file "$MNT/s.qcow2" "$REF/s.current"

# The listing of snapshots/ is exactly the shown names and their .d dirs.
expected=$(for s in "${S_SHOWN[@]}"; do echo "$s"; echo "$s.d"; done | sort)
listing() { t ls -A "$SD" | sort; }
check "s.qcow2: snapshots/ lists: ${S_SHOWN[*]} (and .d directories)" \
    diff -u <(echo "$expected") <(listing)

info=$MNT/s.qcow2.d/info.json
check "s.qcow2: info.json lists 6 snapshots" jq_true "$info" '.snapshots | length == 6'
for i in "${!S_IDS[@]}"; do
    id=${S_IDS[$i]} shown=${S_SHOWN[$i]} name=${S_NAMES[$i]} size=${S_SIZES[$i]}
    flat=$SD/$shown
    check "snapshot $id ('$name') is $flat, a regular file" t test -f "$flat"
    check "snapshot $id: st_size is its disk size $size" size_is "$flat" "$size"
    check "snapshot $id: content equals qemu-img convert -l snapshot.id=$id" same_file "$flat" "$REF/s.$id"
    check "snapshot $id: holes read as zeros" probe holes "$flat" "$REF/s.$id" "$REF/empty.map"
    check "snapshot $id: SNAP.d/info exists" t test -s "$flat.d/info"
    check "snapshot $id: SNAP.d/info.json names it" jq_true "$flat.d/info.json" \
        ".snapshot.id == \"$id\" and .snapshot.name == $(jq -n --arg n "$name" '$n')"
    check "snapshot $id: SNAP.d/info.json virtual_size" jq_true "$flat.d/info.json" ".virtual_size == $size"
    check "snapshot $id: SNAP.d has no snapshots/" check_absent "$flat.d/snapshots"
    check "snapshot $id: listed in NAME.d/info.json" jq_true "$info" \
        "any(.snapshots[]; .id == \"$id\" and .name == $(jq -n --arg n "$name" '$n') and .virtual_size == $size)"
done
check "snapshot entries carry id, name, virtual_size, vm_state_size, date, vm_clock" \
    jq_true "$info" 'all(.snapshots[]; has("id") and has("name") and has("virtual_size")
        and has("vm_state_size") and has("date") and has("vm_clock"))'
check "NAME.d/info lists the snapshots" t grep -q 'a/b' "$MNT/s.qcow2.d/info"
check "a snapshot is read-only (EROFS)" probe erofs "$SD/one" "$SD"

for id in 1 2; do
    shown=$([ "$id" = 1 ] && echo before || echo after)
    check "v2.qcow2 snapshot '$shown' equals qemu-img convert -l" \
        same_file "$MNT/v2.qcow2.d/snapshots/$shown" "$REF/v2.$id"
done
check "v2.qcow2: current state equals qemu-img convert" same_file "$MNT/v2.qcow2" "$REF/v2.current"
check "plain.qcow2: no snapshots/ without snapshots" check_absent "$MNT/plain.qcow2.d/snapshots"
check "plain.qcow2: info.json snapshots is empty" jq_true "$MNT/plain.qcow2.d/info.json" '.snapshots == []'

check "vmfs is still running" daemon_alive
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
check "SOURCE files unchanged (sha256, size, mtime, ctime)" unchanged "$SRC" "$WORK/src.state"
finish
