#!/bin/bash
# vmfs: VHDX images.  Every subformat and option qemu-img offers reads
# byte-identical to `qemu-img convert -O raw`; what qemu cannot make or read
# (4096-byte sectors, .avhdx chains, logs that wrap, damaged copies) comes
# from tests/vhdxgen.py with known patterns and is checked against those,
# against libyal's vhdimount, and for pending logs against qemu-img convert
# of a copy that `qemu-img check -r all` replayed.  Damaged images show
# their problems and fail with EIO only where the damage is.  SOURCE is
# never written, dirty logs included.
# shellcheck source=tests/integration/lib.sh disable=SC1091
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq cmp
need_fuse

GENPY=$top_srcdir/tests/vhdxgen.py
[ -f "$GENPY" ] || hard_error "$GENPY is missing"
SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
GEN=$WORK/gen
mkdir -p "$SRC/gen" "$REF"
MB=1048576

# ---- images made by qemu ---------------------------------------------------

# The same kind of writes into every image, patterns differing per image:
# odd offsets, writes across block boundaries, zero writes over data and
# over nothing, the last byte.
scribble() {
    local img=$1 n=$2 size=$3
    qemu-io -f vhdx \
        -c "write -P $(pat "$n") 0 512" \
        -c "write -P $(pat $((n + 1))) 1234 5000" \
        -c "write -P $(pat $((n + 2))) 1048000 200000" \
        -c "write -P $(pat $((n + 3))) 8388000 70001" \
        -c "write -z 8400000 4096" \
        -c "write -z 12582912 1048576" \
        -c "write -P $(pat $((n + 4))) 13000001 333" \
        -c "write -P $(pat $((n + 5))) $((size - 1)) 1" \
        "$img" >/dev/null
}

QEMU=()
n=0
newv() {    # newv NAME BYTES CREATE-OPTIONS
    local name=$1 size=$2 opts=$3
    qemu-img create -q -f vhdx -o "$opts" "$SRC/$name" "$size" ||
        hard_error "qemu-img create $name -o $opts"
    n=$((n + 8))
    [ "$name" = empty.vhdx ] || scribble "$SRC/$name" "$n" "$size" || hard_error "qemu-io on $name"
    QEMU+=("$name")
}

newv dynamic.vhdx $((20 * MB)) subformat=dynamic
newv dyn-b1m.vhdx $((20 * MB)) subformat=dynamic,block_size=1M
newv dyn-b8m.vhdx $((40 * MB)) subformat=dynamic,block_size=8M
newv dyn-b32m.vhdx $((72 * MB)) subformat=dynamic,block_size=32M
newv dyn-odd.vhdx $((20 * MB + 512)) subformat=dynamic,block_size=8M
newv fixed.vhdx $((20 * MB)) subformat=fixed
newv fixed-b1m.vhdx $((20 * MB)) subformat=fixed,block_size=1M
newv zero-off.vhdx $((20 * MB)) subformat=dynamic,block_state_zero=off
newv zero-on.vhdx $((20 * MB)) subformat=dynamic,block_state_zero=on
newv fixed-zero-off.vhdx $((16 * MB)) subformat=fixed,block_state_zero=off,block_size=1M
newv log4m.vhdx $((20 * MB)) log_size=4M
newv empty.vhdx $((10 * MB)) subformat=dynamic
probe mkraw "$WORK/mixed.raw" 24M 0:1M:text 3M:2M:rand 9000000:5M:0x5a 23M:1M:text ||
    hard_error "mkraw failed"
qemu-img convert -f raw -O vhdx -o subformat=dynamic "$WORK/mixed.raw" "$SRC/converted.vhdx" ||
    hard_error "qemu-img convert to vhdx"
QEMU+=(converted.vhdx)

for img in "${QEMU[@]}"; do
    ref_raw "$SRC/$img" "$REF/$img" || hard_error "qemu-img convert $img"
    qemu_map "$SRC/$img" "$REF/$img.map" || hard_error "qemu-img map $img"
    qemu_vsize "$SRC/$img" >"$REF/$img.size" || hard_error "qemu-img info $img"
done

# ---- images made by vhdxgen.py ---------------------------------------------

python3 "$GENPY" all "$GEN" || hard_error "vhdxgen.py failed"
cp "$GEN"/img/* "$SRC/gen/"

# Oracles for the pending logs: qemu replays a copy's log when it may write.
for img in dirty.vhdx dirty-badentry.vhdx; do
    cp "$GEN/img/$img" "$WORK/$img"
    qemu-img check -q -r all "$WORK/$img" >/dev/null 2>&1
    qemu-img convert -O raw "$WORK/$img" "$REF/qemu-$img" ||
        hard_error "qemu-img convert of the replayed copy of $img"
done
qemu-img convert -U -O raw "$GEN/img/base.vhdx" "$REF/qemu-base.vhdx" ||
    hard_error "qemu-img convert base.vhdx"
qemu-img convert -U -O raw "$GEN/img/hdr2bad.vhdx" "$REF/qemu-hdr2bad.vhdx" ||
    hard_error "qemu-img convert hdr2bad.vhdx"

src_state "$SRC" >"$WORK/src.state"
vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }

# ---- qemu images: content, size, holes, facts --------------------------------

for img in "${QEMU[@]}"; do
    flat=$MNT/$img
    info=$MNT/$img.d/info.json
    check "$img: st_size is the virtual size" size_is "$flat" "$(cat "$REF/$img.size")"
    check "$img: content equals qemu-img convert" same_file "$flat" "$REF/$img"
    check "$img: holes read as zeros in qemu's output" \
        probe holes "$flat" "$REF/$img" "$REF/$img.map"
    check "$img: info.json status ok, no problems" jq_true "$info" \
        '.status == "ok" and .problems == [] and .format == "vhdx"'
    bs=$(qemu-img info --output=json "$SRC/$img" | jq '."cluster-size"')
    check "$img: block size $bs" jq_true "$info" ".vhdx.block_size == $bs"
    check "$img: log clean, 512-byte sectors, no parent" jq_true "$info" \
        '.vhdx.log == "clean" and .vhdx.logical_sector_size == 512 and .vhdx.has_parent == false'
    case $img in
    fixed*) want=fixed ;;
    *) want=dynamic ;;
    esac
    check "$img: subformat $want" jq_true "$info" ".vhdx.subformat == \"$want\""
done
check "log4m.vhdx: 4 MiB log" jq_true "$MNT/log4m.vhdx.d/info.json" ".vhdx.log_size == 4194304"
check "empty.vhdx: no data" jq_true "$MNT/empty.vhdx.d/info.json" ".data_size == 0"
check "empty.vhdx: all one hole" probe sparse "$MNT/empty.vhdx"
check "fixed.vhdx: the host file's holes are holes (st_blocks)" probe sparse "$MNT/fixed.vhdx"
check "dyn-b32m.vhdx: parallel reads equal qemu-img convert" \
    probe parallel "$MNT/dyn-b32m.vhdx" "$REF/dyn-b32m.vhdx" 4 200 7

# ---- generated images: known patterns and independent readers ----------------

G=$MNT/gen
for img in $(awk '$2 == "good" { print $1 }' "$GEN/MANIFEST"); do
    check "gen/$img: content equals the known pattern" same_file "$G/$img" "$GEN/expect/$img.raw"
    check "gen/$img: status ok" jq_true "$G/$img.d/info.json" '.status == "ok" and .problems == []'
done
check "gen/base.vhdx: equals qemu-img convert" same_file "$G/base.vhdx" "$REF/qemu-base.vhdx"
check "gen/dirty.vhdx: equals qemu-img convert of a copy replayed by qemu-img check" \
    same_file "$G/dirty.vhdx" "$REF/qemu-dirty.vhdx"
check "gen/dirty-badentry.vhdx: equals qemu's replay, which also stops at the bad entry" \
    same_file "$G/dirty-badentry.vhdx" "$REF/qemu-dirty-badentry.vhdx"
check "gen/dirty-badentry.vhdx: equals the known pattern" \
    same_file "$G/dirty-badentry.vhdx" "$GEN/expect/dirty-badentry.vhdx.raw"
check "gen/hdr2bad.vhdx: equals qemu-img convert" same_file "$G/hdr2bad.vhdx" "$REF/qemu-hdr2bad.vhdx"

gi() {   # gi IMAGE FILTER: a check on the info.json of a generated image
    check "gen/$1: info.json $2" jq_true "$G/$1.d/info.json" "$2"
}
gi dyn4k.vhdx '.vhdx.logical_sector_size == 4096 and .vhdx.block_size == 1048576'
gi base4k.vhdx '.vhdx.logical_sector_size == 4096'
gi child.avhdx '.vhdx.subformat == "differencing" and .vhdx.has_parent'
gi child.avhdx '.vhdx.parent_locator.relative_path == ".\\base.vhdx"'
gi child.avhdx '.vhdx.parent_locator.absolute_win32_path == "C:\\VMs\\base.vhdx"'
gi child.avhdx '.vhdx.parent_locator | has("volume_path") and has("parent_linkage")'
gi child.avhdx '.vhdx.parent_linkage_check == "matches the parent"'
gi child.avhdx "[.backing_chain[] | .file] == [\"$SRC/gen/base.vhdx\"]"
gi child4k.avhdx "[.backing_chain[] | .file] == [\"$SRC/gen/base4k.vhdx\"]"
gi grand.avhdx "[.backing_chain[] | .file] == [\"$SRC/gen/child.avhdx\", \"$SRC/gen/base.vhdx\"]"
gi grand.avhdx '.vhdx.parent_locator.absolute_win32_path | endswith("\\child.avhdx")'
gi dirty.vhdx '.vhdx.log | startswith("replayed 3 entries")'
gi dirty-wrap.vhdx '.vhdx.log | startswith("replayed 3 entries")'
gi dirty.vhdx ".virtual_size == $((14 * MB))"
gi base.vhdx '.vhdx.log == "clean" and .vhdx.header_used == 2'

# libyal's reader: whole disks, and the differencing ones outside their
# PAYLOAD_BLOCK_ZERO block (2 MiB at 4 MiB), which libvhdi reads from the
# parent and vmfs (like the specification) as zeros.
if command -v vhdimount >/dev/null 2>&1; then
    vhdi() {   # vhdi IMAGE RANGE...: vhdimount's top layer equals vmfs there
        local img=$1 m=$WORK/vhdi-${1%.*} top rc pid
        shift
        mkdir -p "$m"
        (cd "$GEN/img" && exec timeout 60 vhdimount "$img" "$m" >"$m.log" 2>&1) &
        pid=$!
        for _ in $(seq 50); do [ -e "$m/vhdi1" ] && break; sleep 0.1; done
        top=$(ls "$m" | sort -V | tail -1)
        if [ -z "$top" ]; then
            echo "vhdimount $img did not mount:"
            sed 's/^/  | /' "$m.log"
            kill "$pid" 2>/dev/null
            wait "$pid"
            return 1
        fi
        probe ranges "$G/$img" "$m/$top" "$@"
        rc=$?
        timeout 30 fusermount3 -u "$m"
        wait "$pid"
        return $rc
    }
    for img in dyn4k.vhdx base.vhdx base4k.vhdx hdr2bad.vhdx; do
        size=$(stat -c %s "$GEN/expect/$img.raw")
        check "gen/$img: equals vhdimount" vhdi "$img" "ok:0:$size"
    done
    for img in child.avhdx child4k.avhdx grand.avhdx; do
        size=$(stat -c %s "$GEN/expect/$img.raw")
        check "gen/$img: equals vhdimount outside the zero block" \
            vhdi "$img" "ok:0:4M" "ok:6M:$((size - 6 * MB))"
    done
else
    echo "SKIP: vhdimount not found: no libvhdi comparison"
fi

# ---- damaged images: problems named, EIO only where the damage is ------------

gd() {   # gd IMAGE REGEX: damaged, a problem matches REGEX
    check "gen/$1: problem /$2/" problem_named "$G/$1.d/info.json" "$2"
}
gd hdr2bad.vhdx 'header 2 is damaged .*header 1'
gd region1bad.vhdx 'region table 1 is damaged'
check "gen/region1bad.vhdx: reads the known pattern (qemu refuses it)" \
    same_file "$G/region1bad.vhdx" "$GEN/expect/region1bad.vhdx.raw"
gd dirty-badentry.vhdx 'checksum mismatch.*replayed up to sequence'
gd linkage.avhdx 'parent_linkage .* does not match'
check "gen/linkage.avhdx: still reads" same_file "$G/linkage.avhdx" "$GEN/expect/linkage.avhdx.raw"
gd bat-eof.vhdx 'block 2 .*past the end of the file'
check "gen/bat-eof.vhdx: EIO in block 2 only" probe ranges "$G/bat-eof.vhdx" \
    "$GEN/expect/bat-eof.vhdx.raw" ok:0:4M eio:4M:4096 eio:6291455:1 ok:6M:2M
gd trunc.vhdx 'past the end of the file'
check "gen/trunc.vhdx: EIO in the cut block only" probe ranges "$G/trunc.vhdx" \
    "$GEN/expect/trunc.vhdx.raw" ok:0:4M eio:4M:2M ok:6M:2M
gd orphan.avhdx 'no-such-parent.vhdx'
check "gen/orphan.avhdx: its own block reads, the parent's fail" probe ranges \
    "$G/orphan.avhdx" "$GEN/expect/orphan.avhdx.raw" ok:2M:2M eio:0:512 eio:4M:1M
gd loop-a.avhdx 'loop'
check "gen/loop-a.avhdx: its own block reads, the rest fails" probe ranges \
    "$G/loop-a.avhdx" "$GEN/expect/loop-a.avhdx.raw" ok:2M:2M eio:0:4096
gd hdrbad.vhdx 'both headers are damaged'
gd huge.vhdx 'virtual size .* is absurd'
gd bs3m.vhdx 'block size 3145728 is invalid'
gd badmagic.vhdx 'not a disk image'
for img in hdrbad.vhdx huge.vhdx bs3m.vhdx; do
    check "gen/$img: info text names the problem" t grep -qi 'problem' "$G/$img.d/info"
done
check "gen/dirty-wrap.vhdx: log applied across the end of the log area" \
    same_file "$G/dirty-wrap.vhdx" "$GEN/expect/dirty-wrap.vhdx.raw"

check "writes to a VHDX flat file fail with EROFS" probe erofs "$MNT/gen/dirty.vhdx" "$MNT/gen"
check "vmfs is still running" daemon_alive
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
check "SOURCE unchanged, pending logs included (sha256, size, mtime, ctime)" \
    unchanged "$SRC" "$WORK/src.state"
finish
