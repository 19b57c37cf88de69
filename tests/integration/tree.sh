#!/bin/bash
# vmfs: the tree as the contract draws it — NAME, NAME.d/info, info.json,
# snapshots/ only with snapshots, subdirectories mirrored, non-images
# hidden — modes and sizes that ls -l shows right, vmfs-info printing the
# same report, and images added, removed and replaced while mounted showing
# at the next listing with fresh content.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq
need_fuse
need_vmfs_info

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
NEW=$WORK/new
mkdir -p "$SRC/sub/deeper" "$SRC/emptydir" "$REF" "$NEW"

qio() { qemu-io -f qcow2 "${@:2}" "$1" >/dev/null || hard_error "qemu-io $*"; }

qemu-img create -q -f qcow2 "$SRC/a.qcow2" 2M || hard_error "qemu-img create"
qio "$SRC/a.qcow2" -c "write -P 0x0a 0 64K"
qemu-img snapshot -c s1 "$SRC/a.qcow2" || hard_error "qemu-img snapshot"
qio "$SRC/a.qcow2" -c "write -P 0x1a 64K 64K"
qemu-img create -q -f qcow2 "$SRC/b.qcow2" 1M || hard_error "qemu-img create"
qio "$SRC/b.qcow2" -c "write -P 0x0b 4096 512"
qemu-img create -q -f qcow2 "$SRC/q.img" 3M || hard_error "qemu-img create"   # qcow2 named .img
qio "$SRC/q.img" -c "write -P 0x0c 1M 4096"
probe mkraw "$SRC/r.img" 1M 0:4K:0x0d 512K:4K:text || hard_error mkraw
qemu-img create -q -f qcow2 "$SRC/sub/c.qcow2" 1M || hard_error "qemu-img create"
qio "$SRC/sub/c.qcow2" -c "write -P 0x0e 0 4096"
probe mkraw "$SRC/sub/deeper/d.raw" 64K 0:64K:rand || hard_error mkraw
echo "not an image" >"$SRC/notes.txt"
head -c 4096 /dev/urandom >"$SRC/data.bin"
printf 'QFI' >"$SRC/README"
# Images that arrive while mounted.
qemu-img create -q -f qcow2 "$NEW/e.qcow2" 4M || hard_error "qemu-img create"
qio "$NEW/e.qcow2" -c "write -P 0x0f 3M 4096"
probe mkraw "$NEW/r2.img" 2M 1M:1M:text || hard_error mkraw
qemu-img create -q -f qcow2 "$NEW/q2.qcow2" 5M || hard_error "qemu-img create"
qio "$NEW/q2.qcow2" -c "write -P 0x1c 4M 8192"
for f in "$SRC"/a.qcow2 "$SRC"/b.qcow2 "$SRC"/q.img "$SRC"/r.img "$SRC"/sub/c.qcow2 \
    "$SRC"/sub/deeper/d.raw "$NEW"/e.qcow2 "$NEW"/r2.img "$NEW"/q2.qcow2; do
    ref_raw "$f" "$REF/$(basename "$f")" || hard_error "qemu-img convert $f"
done

vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }

# lists DIR NAME...: DIR lists exactly these names.
lists() {
    diff -u <([ $# -lt 2 ] || printf '%s\n' "${@:2}" | sort) <(t ls -A "$1" | sort)
}
check "the root lists images, their .d directories and subdirectories only" \
    lists "$MNT" a.qcow2 a.qcow2.d b.qcow2 b.qcow2.d emptydir q.img q.img.d r.img r.img.d sub
check "a subdirectory is mirrored" lists "$MNT/sub" c.qcow2 c.qcow2.d deeper
check "a nested subdirectory is mirrored" lists "$MNT/sub/deeper" d.raw d.raw.d
check "an empty subdirectory is an empty directory" lists "$MNT/emptydir"
check "NAME.d with snapshots holds info, info.json, snapshots" lists "$MNT/a.qcow2.d" info info.json snapshots
check "NAME.d without snapshots holds info, info.json" lists "$MNT/b.qcow2.d" info info.json
check "a raw image's NAME.d holds info, info.json" lists "$MNT/r.img.d" info info.json
check "snapshots/ holds SNAP and SNAP.d" lists "$MNT/a.qcow2.d/snapshots" s1 s1.d
check "SNAP.d holds info, info.json" lists "$MNT/a.qcow2.d/snapshots/s1.d" info info.json

# kind_mode PATH TYPE MODE: stat's file type and octal permissions.
kind_mode() {
    local got
    got=$(t stat -c '%F %a' "$1") || return 1
    [ "$got" = "$2 $3" ] || { echo "$1: '$got', expected '$2 $3'"; return 1; }
}
for f in a.qcow2 q.img r.img sub/deeper/d.raw a.qcow2.d/snapshots/s1; do
    check "$f: a regular file, mode 0444" kind_mode "$MNT/$f" "regular file" 444
done
for f in a.qcow2.d/info a.qcow2.d/info.json a.qcow2.d/snapshots/s1.d/info.json; do
    check "$f: a regular file, mode 0444" kind_mode "$MNT/$f" "regular file" 444
done
is_dir() { t test -d "$1"; }
for d in a.qcow2.d a.qcow2.d/snapshots a.qcow2.d/snapshots/s1.d sub emptydir; do
    check "$d: a directory" is_dir "$MNT/$d"
done

# Flat files: size and content.
for f in a.qcow2 b.qcow2 q.img r.img sub/c.qcow2 sub/deeper/d.raw; do
    check "$f: content equals qemu-img convert" same_file "$MNT/$f" "$REF/$(basename "$f")"
done
check "q.img (qcow2 content, .img name) is decoded as qcow2" \
    jq_true "$MNT/q.img.d/info.json" '.format == "qcow2" and .virtual_size == 3145728'
check "ls -l works on the root" t ls -l "$MNT"
check "ls -lR works on the whole tree" t ls -lR "$MNT"
ls_shows_size() { t ls -l "$MNT" | grep -qE " $1 .* $2\$"; }
check "ls -l shows the virtual size" ls_shows_size 3145728 q.img

# info and info.json: st_size matches what reads return, JSON valid, numbers.
size_matches_content() {
    local st n
    st=$(t stat -c %s "$1") && n=$(t cat "$1" | wc -c) || return 1
    [ "$st" = "$n" ] || { echo "$1: st_size $st, read $n bytes"; return 1; }
}
for f in a.qcow2.d/info a.qcow2.d/info.json r.img.d/info.json a.qcow2.d/snapshots/s1.d/info; do
    check "$f: st_size equals the bytes read" size_matches_content "$MNT/$f"
done
check "info.json: sizes are JSON numbers" jq_true "$MNT/a.qcow2.d/info.json" \
    '[.virtual_size, .file_size, .allocated_size, .data_size] | all(type == "number")'
check "info.json: qcow2 facts are numbers" jq_true "$MNT/a.qcow2.d/info.json" \
    '(.qcow2.cluster_size | type) == "number" and (.qcow2.format_version | type) == "number"'
check "info.json: snapshot sizes are numbers" jq_true "$MNT/a.qcow2.d/info.json" \
    'all(.snapshots[]; (.virtual_size | type) == "number" and (.vm_state_size | type) == "number")'
check "info.json: the keys of the contract" jq_true "$MNT/a.qcow2.d/info.json" \
    'has("file") and has("format") and has("virtual_size") and has("file_size") and
     has("allocated_size") and has("data_size") and (.backing_chain | type) == "array" and
     (.snapshots | type) == "array" and (.problems | type) == "array" and .status == "ok" and
     (.qcow2 | type) == "object"'
check "info: the virtual size line" t grep -qE '^ *virtual size: 2097152 bytes \(2\.0 MiB\)' "$MNT/a.qcow2.d/info"
check "info: names the format" t grep -qi 'qcow2' "$MNT/a.qcow2.d/info"
check "info: names the snapshot" t grep -q 's1' "$MNT/a.qcow2.d/info"

# vmfs-info prints the same report as NAME.d/info and info.json.
# The data size counts host-file holes as holes, as qemu-img map does, and
# the host answers that from its page cache for preallocated extents: it
# may grow once the image has been read.  Every other fact must be equal,
# and the data size must lie between what qemu-img map calls data and
# the virtual size (qemu-img map: data that is not zero).
same_report() {     # same_report IMAGE-PATH-BELOW-SRC
    t "$VMFS_INFO" "$SRC/$1" >"$WORK/vi.txt" || { echo "vmfs-info $1 failed"; return 1; }
    t "$VMFS_INFO" --json "$SRC/$1" >"$WORK/vi.json" || { echo "vmfs-info --json $1 failed"; return 1; }
    diff -u <(grep -v '^data size:' "$WORK/vi.txt") <(t cat "$MNT/$1.d/info" | grep -v '^data size:') ||
        return 1
    diff -u <(jq -S 'del(.data_size)' "$WORK/vi.json") \
        <(t jq -S 'del(.data_size)' "$MNT/$1.d/info.json") || return 1
    local lo hi
    lo=$(qemu-img map --output=json "$SRC/$1" | jq '[.[] | select(.data and (.zero | not)) | .length] | add // 0')
    for f in "$WORK/vi.json" "$MNT/$1.d/info.json"; do
        hi=$(t jq .virtual_size "$f")
        t jq -e --argjson lo "$lo" --argjson hi "$hi" \
            '.data_size >= $lo and .data_size <= $hi' "$f" >/dev/null ||
            { echo "$f: data_size outside [$lo, $hi]"; return 1; }
    done
}
for f in a.qcow2 r.img sub/c.qcow2 q.img; do
    check "vmfs-info $f prints NAME.d/info and --json NAME.d/info.json" same_report "$f"
done

# ---- changes while mounted -----------------------------------------------------
cp "$NEW/e.qcow2" "$SRC/e.qcow2"
check "an added image shows at the next listing" \
    lists "$MNT" a.qcow2 a.qcow2.d b.qcow2 b.qcow2.d e.qcow2 e.qcow2.d emptydir q.img q.img.d r.img r.img.d sub
check "the added image reads right" same_file "$MNT/e.qcow2" "$REF/e.qcow2"
rm "$SRC/b.qcow2"
check "a removed image is gone at the next listing" \
    lists "$MNT" a.qcow2 a.qcow2.d e.qcow2 e.qcow2.d emptydir q.img q.img.d r.img r.img.d sub
mkdir "$SRC/later"
cp "$NEW/e.qcow2" "$SRC/later/e.qcow2"
check "an added subdirectory shows with its image" lists "$MNT/later" e.qcow2 e.qcow2.d
# Replaced by rename (a new inode), and rewritten in place (the same inode),
# each time with another size and content.
cp "$NEW/r2.img" "$SRC/r.img.tmp"
mv "$SRC/r.img.tmp" "$SRC/r.img"
t ls -l "$MNT" >/dev/null
check "a replaced raw image has its new size" size_is "$MNT/r.img" 2097152
check "a replaced raw image has its new content" same_file "$MNT/r.img" "$REF/r2.img"
check "a replaced raw image has a new info.json" jq_true "$MNT/r.img.d/info.json" '.virtual_size == 2097152'
cat "$NEW/q2.qcow2" >"$SRC/q.img"
t ls -l "$MNT" >/dev/null
check "an image rewritten in place has its new size" size_is "$MNT/q.img" 5242880
check "an image rewritten in place has its new content" same_file "$MNT/q.img" "$REF/q2.qcow2"
check "an image rewritten in place has a new info.json" jq_true "$MNT/q.img.d/info.json" '.virtual_size == 5242880'
qio "$SRC/e.qcow2" -c "write -P 0x2f 0 4096"
ref_raw "$SRC/e.qcow2" "$REF/e2" || hard_error "qemu-img convert"
t ls -l "$MNT" >/dev/null
check "an image written to while mounted is re-read" same_file "$MNT/e.qcow2" "$REF/e2"
mv "$SRC/notes.txt" "$SRC/notes.img"
check "a file renamed to a raw extension shows as an image" t test -f "$MNT/notes.img"

check "vmfs is still running" daemon_alive
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
finish
