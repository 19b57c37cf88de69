#!/bin/bash
# vmfs: VHD ("vpc"), VDI and QED images.  Every variant qemu-img makes
# (vpc dynamic and fixed, with and without force_size; vdi dynamic and
# static; qed with every cluster and table size, zero clusters, backing
# files of raw, qcow2, qed and vpc format) reads byte-identical to
# `qemu-img convert -O raw`, with the size qemu-img reports.  VHDs made by
# other creators and differencing VHDs come from tests/vhdgen.py with a
# known pattern; the differencing chains (which qemu 7.2 reads without
# their parents) are checked against that pattern and against libyal's
# vhdimount.  Damaged copies of each format stay listed, say what is wrong
# in info, fail with EIO where they are damaged and read right elsewhere.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq truncate
need_fuse

GEN=$top_srcdir/tests/vhdgen.py
SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC"/{base,vpc,gen,diff/kids,vdi,qed,dmg} "$REF"

# gen ARGS...: the VHD generator.
gen() { python3 "$GEN" "$@" || hard_error "vhdgen.py $*"; }

# qio FMT IMAGE CMD...: qemu-io commands on an image.
qio() {
    local fmt=$1 img=$2 args=()
    shift 2
    for c in "$@"; do args+=(-c "$c"); done
    (cd "$(dirname "$img")" && qemu-io -f "$fmt" "${args[@]}" "$(basename "$img")" >/dev/null) ||
        hard_error "qemu-io $img $*"
}

# mk FMT IMAGE SIZE [CREATE-OPTIONS]: qemu-img create.
mk() {
    (cd "$(dirname "$2")" && qemu-img create -q -f "$1" ${4:+-o "$4"} "$(basename "$2")" "$3") ||
        hard_error "qemu-img create $2"
}

# A small helper for patching bytes of a file in place.
cat >"$WORK/poke.py" <<'EOF'
import struct, sys
def main():
    cmd, path = sys.argv[1], sys.argv[2]
    with open(path, "r+b") as f:
        def rd(off, fmt):
            f.seek(off); return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
        def wr(off, fmt, val):
            f.seek(off); f.write(struct.pack(fmt, val))
        if cmd == "poke":                      # poke FILE OFF FMT VAL
            wr(int(sys.argv[3], 0), sys.argv[4], int(sys.argv[5], 0))
        elif cmd == "or":                      # or FILE OFF FMT VAL
            off, fmt = int(sys.argv[3], 0), sys.argv[4]
            wr(off, fmt, rd(off, fmt) | int(sys.argv[5], 0))
        elif cmd in ("qed-l1", "qed-l2"):      # qed-lN FILE GUEST VAL
            guest, val = int(sys.argv[3], 0), int(sys.argv[4], 0)
            cs, ts, l1 = rd(4, "<I"), rd(8, "<I"), rd(40, "<Q")
            n = cs * ts // 8
            l1e = l1 + guest // (n * cs) * 8
            if cmd == "qed-l1":
                wr(l1e, "<Q", val)
            else:
                wr(rd(l1e, "<Q") + (guest // cs % n) * 8, "<Q", val)
        elif cmd == "vdi-bmap":                # vdi-bmap FILE BLOCK VAL
            wr(rd(0x154, "<I") + 4 * int(sys.argv[3], 0), "<I", int(sys.argv[4], 0))
        elif cmd == "last-data":               # last-data FILE: the end of the last VDI block
            print(rd(0x158, "<I") + rd(0x184, "<I") * rd(0x178, "<I"))
main()
EOF
poke() { python3 "$WORK/poke.py" "$@" || hard_error "poke $*"; }

# ---- qemu-made images -----------------------------------------------------

probe mkraw "$SRC/base/base.raw" 48M 0:16M:text 16M:1M:0x21 20M:8M:rand 40M:8M:0x22 ||
    hard_error mkraw
mk qcow2 "$SRC/base/base.qcow2" 48M
qio qcow2 "$SRC/base/base.qcow2" "write -P 0x31 0 40M" "write -z 4M 1M"

# vpc: dynamic and fixed, geometry-sized (creator "qemu") or exactly
# sized (force_size: creator "qem2"), writes at odd offsets.
mk vpc "$SRC/vpc/dyn.vhd" 64M
qio vpc "$SRC/vpc/dyn.vhd" "write -P 0x11 1000 3M" "write -P 0x12 34603015 77777" \
    "write -P 0x13 63M 1M"
mk vpc "$SRC/vpc/dyn-force.vhd" 52432384 force_size=on
qio vpc "$SRC/vpc/dyn-force.vhd" "write -P 0x14 512 1M" "write -P 0x15 52400000 32384"
mk vpc "$SRC/vpc/dyn-odd.vhd" 7777K
qio vpc "$SRC/vpc/dyn-odd.vhd" "write -P 0x16 0 7777K"
mk vpc "$SRC/vpc/fixed.vhd" 32M subformat=fixed
qio vpc "$SRC/vpc/fixed.vhd" "write -P 0x17 4097 2M" "write -P 0x18 30M 2M"
mk vpc "$SRC/vpc/fixed-force.vhd" 20973056 subformat=fixed,force_size=on
qio vpc "$SRC/vpc/fixed-force.vhd" "write -P 0x19 0 20973056"

# vdi: dynamic, static, a size that is no multiple of the 1 MiB block.
mk vdi "$SRC/vdi/dyn.vdi" 64M
qio vdi "$SRC/vdi/dyn.vdi" "write -P 0x41 1000 3M" "write -P 0x42 40M 1" "write -P 0x43 5M 1M"
mk vdi "$SRC/vdi/static.vdi" 24M static=on
qio vdi "$SRC/vdi/static.vdi" "write -P 0x44 12345 5M"
mk vdi "$SRC/vdi/odd.vdi" 10487296
qio vdi "$SRC/vdi/odd.vdi" "write -P 0x45 10000000 487296"

# qed: cluster and table sizes, zero clusters, backing files of every kind.
mk qed "$SRC/qed/plain.qed" 64M
qio qed "$SRC/qed/plain.qed" "write -P 0x51 1000 3M" "write -z 8M 1M" "write -z 100K 1000" \
    "write -P 0x52 67108352 512"
mk qed "$SRC/qed/c4k.qed" 24M cluster_size=4096,table_size=2
qio qed "$SRC/qed/c4k.qed" "write -P 0x53 0 1M" "write -P 0x54 5000 3" "write -P 0x55 20M 3M"
mk qed "$SRC/qed/c1m.qed" 200M cluster_size=1M,table_size=16
qio qed "$SRC/qed/c1m.qed" "write -P 0x56 199M 1M" "write -P 0x57 7 3M"
(cd "$SRC/qed" && qemu-img create -q -f qed -b ../base/base.raw -F raw over-raw.qed 56M) ||
    hard_error "qemu-img create over-raw"
qio qed "$SRC/qed/over-raw.qed" "write -P 0x58 3M 100K" "write -z 17M 128K" "write -P 0x59 50M 1M"
(cd "$SRC/qed" && qemu-img create -q -f qed -b ../base/base.qcow2 -F qcow2 \
    -o cluster_size=8192 over-qcow2.qed 48M) || hard_error "qemu-img create over-qcow2"
qio qed "$SRC/qed/over-qcow2.qed" "write -P 0x5a 4000 10000"
(cd "$SRC/qed" && qemu-img create -q -f qed -b over-raw.qed -F qed over-qed.qed 56M) ||
    hard_error "qemu-img create over-qed"
qio qed "$SRC/qed/over-qed.qed" "write -P 0x5b 3100K 8K"
(cd "$SRC/qed" && qemu-img create -q -f qed -b ../vpc/dyn.vhd -F vpc over-vhd.qed 64M) ||
    hard_error "qemu-img create over-vhd"
qio qed "$SRC/qed/over-vhd.qed" "write -P 0x5c 2M 4K"
cp "$SRC/qed/plain.qed" "$SRC/qed/need-check.qed"
poke or "$SRC/qed/need-check.qed" 16 "<Q" 2
# One-cluster tables: qemu 7.2 refuses to open these ("QED table offset is
# invalid"); vmfs reads them (all zeros: nothing could be written).
mk qed "$SRC/qed/table1.qed" 3M cluster_size=4096,table_size=1

QEMU_IMGS=(vpc/dyn.vhd:vpc vpc/dyn-force.vhd:vpc vpc/dyn-odd.vhd:vpc vpc/fixed.vhd:vpc
    vpc/fixed-force.vhd:vpc vdi/dyn.vdi:vdi vdi/static.vdi:vdi vdi/odd.vdi:vdi qed/plain.qed:qed
    qed/c4k.qed:qed qed/c1m.qed:qed qed/over-raw.qed:qed qed/over-qcow2.qed:qed
    qed/over-qed.qed:qed qed/over-vhd.qed:qed qed/need-check.qed:qed)

# ---- generated VHDs: creators qemu does not write -------------------------

# qemu reads these right (no parents): the generator's pattern and qemu agree.
gen make "$SRC/gen/creator-vpc.vhd" --type dynamic --size 10000384 --creator "vpc " \
    --block-size 512K --write 0:9M:1 --raw-out "$REF/gen-creator-vpc"
gen make "$SRC/gen/creator-d2v.vhd" --type dynamic --size 10000384 --creator "d2v " \
    --write 100:5M:2 --raw-out "$REF/gen-creator-d2v"
gen make "$SRC/gen/creator-tap.vhd" --type dynamic --size 10000384 --creator "tap" \
    --block-size 4K --write 9000000:1000384:3 --raw-out "$REF/gen-creator-tap"
gen make "$SRC/gen/fixed-win.vhd" --type fixed --size 6292992 --creator "win " \
    --write 0:6292992:4 --raw-out "$REF/gen-fixed-win"
QEMU_IMGS+=(gen/creator-vpc.vhd:vpc gen/creator-d2v.vhd:vpc gen/creator-tap.vhd:vpc
    gen/fixed-win.vhd:vpc)

# ---- differencing VHDs: the pattern is the oracle -------------------------

D=$SRC/diff
gen make "$D/base.vhd" --type dynamic --size 12M --block-size 1M \
    --write 0:11M:0x61 --write 11800K:100K:0x62 --raw-out "$REF/diff-base"
# In a subdirectory, the parent by a relative path (W2ru) first.
gen make "$D/kids/child.vhd" --type diff --size 12M --block-size 512K --parent "$D/base.vhd" \
    --parent-raw "$REF/diff-base" --parent-name base.vhd --locator 'W2ku:C:\vms\base.vhd' \
    --locator 'W2ru:..\base.vhd' --write 1000:3000:0x63 --write 2M:1M:0x64 \
    --write 5241000:5000:0x65 --write 12582400:512:0x66 --raw-out "$REF/diff-child"
gen make "$D/kids/grandchild.vhd" --type diff --size 12M --block-size 2M \
    --parent "$D/kids/child.vhd" --parent-raw "$REF/diff-child" --parent-name child.vhd \
    --locator 'W2ru:.\child.vhd' --write 1500:100:0x67 --write 2500K:3M:0x68 \
    --raw-out "$REF/diff-grandchild"
# Each other way of naming the parent on its own.
gen make "$D/by-name.vhd" --type diff --size 12M --block-size 512K --parent "$D/base.vhd" \
    --parent-raw "$REF/diff-base" --parent-name base.vhd --write 4M:700K:0x69 \
    --raw-out "$REF/diff-by-name"
gen make "$D/by-w2ku.vhd" --type diff --size 12M --block-size 512K --parent "$D/base.vhd" \
    --parent-raw "$REF/diff-base" --locator 'W2ku:D:\Hyper-V\disks\base.vhd' \
    --write 0:1M:0x6a --raw-out "$REF/diff-by-w2ku"
gen make "$D/by-macx.vhd" --type diff --size 12M --block-size 512K --parent "$D/base.vhd" \
    --parent-raw "$REF/diff-base" --locator "MacX:file://localhost$D/kids/../base%2Evhd" \
    --write 3M:9K:0x6b --raw-out "$REF/diff-by-macx"
# Parents qemu made: a fixed and a dynamic VHD (their disks from qemu).
for p in fixed dyn; do
    ref_raw "$SRC/vpc/$p.vhd" "$REF/vpc-$p" -f vpc || hard_error "qemu-img convert $p"
    gen make "$D/over-$p.vhd" --type diff --size "$(stat -c %s "$REF/vpc-$p")" \
        --block-size 2M --parent "$SRC/vpc/$p.vhd" --parent-raw "$REF/vpc-$p" \
        --locator "W2ru:..\\vpc\\$p.vhd" --write 1M:1M:0x6c --write 29M:1500K:0x6d \
        --raw-out "$REF/diff-over-$p"
done
# For vhdimount: libvhdi 20210425 reads the sector after a run of marked
# sectors that ends inside a bitmap byte from the child, not the parent
# (bitmap 0xfe: sector 7 comes out as the child's garbage).  This chain's
# runs all end on a byte of the bitmap (a multiple of 4 KiB), where it is
# right; the chains above, with odd ends, have the pattern alone.
mkdir -p "$D/vh"
gen make "$D/vh/base.vhd" --type dynamic --size 12M --block-size 1M --write 0:11M:0x81 \
    --raw-out "$REF/diff-vh-base"
gen make "$D/vh/child.vhd" --type diff --size 12M --block-size 512K --parent "$D/vh/base.vhd" \
    --parent-raw "$REF/diff-vh-base" --parent-name base.vhd --locator 'W2ru:.\base.vhd' \
    --write 512:3584:0x82 --write 2M:1M:0x83 --write 5238784:8192:0x84 \
    --write 12578816:4096:0x85 --raw-out "$REF/diff-vh-child"
gen make "$D/vh/grandchild.vhd" --type diff --size 12M --block-size 2M \
    --parent "$D/vh/child.vhd" --parent-raw "$REF/diff-vh-child" --parent-name child.vhd \
    --locator 'W2ru:.\child.vhd' --write 1536:2560:0x86 --write 2560K:3M:0x87 \
    --raw-out "$REF/diff-vh-grandchild"
DIFF_IMGS=(kids/child kids/grandchild by-name by-w2ku by-macx over-fixed over-dyn vh/child
    vh/grandchild)

# ---- damaged copies -------------------------------------------------------

ref_raw "$SRC/vpc/dyn.vhd" "$REF/vpc-dyn-orig" -f vpc || hard_error "qemu-img convert"
dmgcp() { cp "$SRC/$1" "$SRC/dmg/$2" || hard_error "cp $1"; }
dmgcp vpc/dyn.vhd vhd-end-cookie.vhd
gen corrupt "$SRC/dmg/vhd-end-cookie.vhd" end-cookie
dmgcp vpc/dyn.vhd vhd-end-checksum.vhd
gen corrupt "$SRC/dmg/vhd-end-checksum.vhd" end-checksum
dmgcp vpc/dyn.vhd vhd-no-footer.vhd
truncate -s -512 "$SRC/dmg/vhd-no-footer.vhd"
dmgcp vpc/dyn.vhd vhd-dyn-checksum.vhd
gen corrupt "$SRC/dmg/vhd-dyn-checksum.vhd" dyn-checksum
# Cut in the middle of the last block (guest [62M, 64M), written last).
dmgcp vpc/dyn.vhd vhd-cut.vhd
truncate -s -$((512 + 1048576)) "$SRC/dmg/vhd-cut.vhd"
dmgcp vpc/dyn.vhd vhd-bat-eof.vhd
gen corrupt "$SRC/dmg/vhd-bat-eof.vhd" bat-past-eof:16
gen make "$SRC/dmg/vhd-absurd.vhd" --type dynamic --size 1M --creator "win " --write 0:4K:1
gen corrupt "$SRC/dmg/vhd-absurd.vhd" size:0x1000000000000000
head -c 1M /dev/urandom >"$SRC/dmg/vhd-bad-magic.vhd"
gen make "$SRC/dmg/vhd-orphan.vhd" --type diff --size 12M --block-size 512K \
    --locator 'W2ru:.\gone.vhd' --parent-name gone.vhd --write 1M:512K:0x71 \
    --raw-out "$REF/dmg-orphan"
gen make "$SRC/dmg/loop-a.vhd" --type diff --size 12M --block-size 512K \
    --locator 'W2ru:loop-b.vhd' --write 0:4K:0x72 --raw-out "$REF/dmg-loop-a"
gen make "$SRC/dmg/loop-b.vhd" --type diff --size 12M --block-size 512K \
    --locator 'W2ru:loop-a.vhd' --write 8K:4K:0x73
ref_raw "$SRC/vdi/dyn.vdi" "$REF/vdi-dyn-orig" || hard_error "qemu-img convert"
dmgcp vdi/dyn.vdi vdi-bad-signature.vdi
poke poke "$SRC/dmg/vdi-bad-signature.vdi" 0x40 "<I" 0x12345678
dmgcp vdi/dyn.vdi vdi-bmap-eof.vdi
poke vdi-bmap "$SRC/dmg/vdi-bmap-eof.vdi" 1 0x7ffffff0
dmgcp vdi/dyn.vdi vdi-cut.vdi
# Blocks are stored in write order (0, 1, 2, 3, 40, 5): cut inside block
# 40, so that block 5 is gone too.
truncate -s $(($(poke last-data "$SRC/vdi/dyn.vdi") - 1048576 - 4096)) "$SRC/dmg/vdi-cut.vdi"
dmgcp vdi/dyn.vdi vdi-absurd.vdi
poke poke "$SRC/dmg/vdi-absurd.vdi" 0x170 "<Q" 0x4000000000000000
ref_raw "$SRC/qed/c4k.qed" "$REF/qed-c4k-orig" || hard_error "qemu-img convert"
dmgcp qed/c4k.qed qed-l2-eof.qed
poke qed-l1 "$SRC/dmg/qed-l2-eof.qed" $((20 * 1048576)) 0x10000000000
dmgcp qed/c4k.qed qed-data-eof.qed
poke qed-l2 "$SRC/dmg/qed-data-eof.qed" 4096 0x10000000000
dmgcp qed/c4k.qed qed-cut.qed
truncate -s -$((3 * 1048576 + 2048)) "$SRC/dmg/qed-cut.qed"
dmgcp qed/c4k.qed qed-absurd.qed
poke poke "$SRC/dmg/qed-absurd.qed" 48 "<Q" 0x4000000000000000
head -c 64K /dev/urandom >"$SRC/dmg/qed-bad-magic.qed"
(cd "$SRC/dmg" && qemu-img create -q -f raw gone.raw 1M &&
    qemu-img create -q -f qed -b gone.raw -F raw qed-orphan.qed 1M) || hard_error "qed-orphan"
qio qed "$SRC/dmg/qed-orphan.qed" "write -P 0x74 0 64K"
ref_raw "$SRC/dmg/qed-orphan.qed" "$REF/dmg-qed-orphan" || hard_error "qemu-img convert"
rm "$SRC/dmg/gone.raw"
mk qed "$SRC/dmg/qed-loop-a.qed" 1M
mk qed "$SRC/dmg/qed-loop-b.qed" 1M
qio qed "$SRC/dmg/qed-loop-a.qed" "write -P 0x75 0 64K"
for x in a:b b:a; do
    (cd "$SRC/dmg" && qemu-img rebase -u -f qed -b "qed-loop-${x#*:}.qed" -F qed \
        "qed-loop-${x%%:*}.qed") || hard_error "qemu-img rebase"
done

# qemu reads these damaged ones itself (the footer copy at offset 0; the
# dynamic header checksum it does not check): it is the oracle there too.
for n in vhd-end-cookie vhd-end-checksum vhd-no-footer vhd-dyn-checksum; do
    ref_raw "$SRC/dmg/$n.vhd" "$REF/dmg-$n" -f vpc || hard_error "qemu-img convert $n"
    cmp -s "$REF/dmg-$n" "$REF/vpc-dyn-orig" || hard_error "qemu reads $n differently"
done

# ---- references -------------------------------------------------------------

for e in "${QEMU_IMGS[@]}"; do
    img=${e%%:*} fmt=${e##*:}
    ref_raw "$SRC/$img" "$REF/${img//\//_}" -f "$fmt" || hard_error "qemu-img convert $img"
    (cd "$SRC/$(dirname "$img")" && qemu-img info -U -f "$fmt" --output=json "$(basename "$img")") |
        jq -r '."virtual-size"' >"$REF/${img//\//_}.size" || hard_error "qemu-img info $img"
done
for e in vpc/dyn.vhd vdi/dyn.vdi qed/plain.qed qed/over-raw.qed; do
    qemu_map "$SRC/$e" "$REF/${e//\//_}.map" || hard_error "qemu-img map $e"
done
# The generator and qemu agree where qemu is right (qemu sizes creator
# "vpc " by its geometry, a little below the current size field).
for n in creator-vpc creator-d2v creator-tap fixed-win; do
    truncate -s "$(cat "$REF/gen_$n.vhd.size")" "$REF/gen-$n"
    cmp -s "$REF/gen-$n" "$REF/gen_$n.vhd" || hard_error "qemu and the generator differ on $n"
done
# qemu 7.2 reads a differencing disk without its parent: not the oracle.
ref_raw "$D/kids/child.vhd" "$WORK/qemu-child" -f vpc || hard_error "qemu-img convert child"
cmp -s "$WORK/qemu-child" "$REF/diff-child" && hard_error "qemu unexpectedly reads the child right"

src_state "$SRC" >"$WORK/src.state"

# ---- the mount ----------------------------------------------------------------

vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }

for e in "${QEMU_IMGS[@]}"; do
    img=${e%%:*}
    check "$img: st_size is qemu's virtual size" size_is "$MNT/$img" "$(cat "$REF/${img//\//_}.size")"
    check "$img: equals qemu-img convert" same_file "$MNT/$img" "$REF/${img//\//_}"
done
for n in "${DIFF_IMGS[@]}"; do
    check "diff/$n.vhd: equals the generator's pattern" same_file "$MNT/diff/$n.vhd" \
        "$REF/diff-$(echo "${n#kids/}" | tr / -)"
done
check "diff/base.vhd: equals the generator's pattern" same_file "$MNT/diff/base.vhd" "$REF/diff-base"
zeros() { cmp -s "$1" <(head -c "$2" /dev/zero) && size_is "$1" "$2"; }
check "qed/table1.qed (qemu refuses it): all zeros, 3 MiB" zeros "$MNT/qed/table1.qed" 3145728
for e in vpc/dyn.vhd vdi/dyn.vdi qed/plain.qed qed/over-raw.qed; do
    check "$e: holes agree with qemu-img map" probe holes "$MNT/$e" "$REF/${e//\//_}" \
        "$REF/${e//\//_}.map"
done
check "vpc/dyn.vhd: sparse (st_blocks)" probe sparse "$MNT/vpc/dyn.vhd"
check "parallel readers of diff/kids/grandchild.vhd" probe parallel \
    "$MNT/diff/kids/grandchild.vhd" "$REF/diff-grandchild" 4 200 7

# info facts.
I=$MNT/diff/kids/grandchild.vhd.d/info.json
jq_checks "$I" "grandchild info" \
    "format vpc, differencing" '.format == "vpc" and .vpc.subformat == "differencing"' \
    "chain of child then base" '[.backing_chain[].file | split("/") | .[-1]] == ["child.vhd", "base.vhd"]' \
    "parent locator W2ru" '.vpc.parent.locators[0].platform == "W2ru"' \
    "block size 2 MiB" '.vpc.block_size == 2097152' \
    "no problems" '.status == "ok"'
jq_checks "$MNT/vpc/dyn.vhd.d/info.json" "vpc/dyn.vhd info" \
    "dynamic, geometry size" '.vpc.subformat == "dynamic" and .vpc.size_from == "geometry"' \
    "creator qemu" '.vpc.creator_app == "qemu"'
jq_checks "$MNT/vpc/fixed-force.vhd.d/info.json" "vpc/fixed-force.vhd info" \
    "fixed, current size" '.vpc.subformat == "fixed" and .vpc.size_from == "current size"' \
    "creator qem2" '.vpc.creator_app == "qem2"'
jq_checks "$MNT/vdi/static.vdi.d/info.json" "vdi/static.vdi info" \
    "static, 1 MiB blocks" '.vdi.image_type == "static" and .vdi.block_size == 1048576' \
    "24 blocks" '.vdi.blocks_in_image == 24 and .vdi.blocks_allocated == 24'
jq_checks "$MNT/qed/over-raw.qed.d/info.json" "qed/over-raw.qed info" \
    "64 KiB clusters, 4-cluster tables" '.qed.cluster_size == 65536 and .qed.table_size == 4' \
    "backing base.raw as raw" '.backing_chain[0].format == "raw" and .qed.backing_format == "raw"'
jq_checks "$MNT/qed/over-vhd.qed.d/info.json" "qed/over-vhd.qed info" \
    "a vpc backing file, probed" '.backing_chain[0].format == "vpc" and .qed.backing_format == "probed"'
jq_checks "$MNT/qed/need-check.qed.d/info.json" "qed/need-check.qed info" \
    "need check, still ok" '.qed.need_check == true and .status == "ok"'

# ---- damaged images ---------------------------------------------------------

dmg() { echo "$MNT/dmg/$1"; }
damaged() { problem_named "$MNT/dmg/$1.d/info.json" "${2:-.}"; }
for n in vhd-end-cookie vhd-end-checksum vhd-no-footer; do
    check "dmg/$n.vhd: reads as qemu reads it (the footer copy)" same_file "$(dmg $n.vhd)" \
        "$REF/dmg-$n"
    check "dmg/$n.vhd: info says the copy at offset 0 is used" damaged "$n.vhd" "copy at offset 0"
done
check "dmg/vhd-dyn-checksum.vhd: reads as qemu reads it" same_file "$(dmg vhd-dyn-checksum.vhd)" \
    "$REF/dmg-vhd-dyn-checksum"
check "dmg/vhd-dyn-checksum.vhd: info names the checksum" damaged vhd-dyn-checksum.vhd checksum
check "dmg/vhd-cut.vhd: the cut block fails, the rest reads" probe ranges "$(dmg vhd-cut.vhd)" \
    "$REF/vpc-dyn-orig" ok:0:62M eio:63M:4K eio:$((64 * 1048576 - 4096)):4K \
    ok:64M:$(($(stat -c %s "$REF/vpc-dyn-orig") - 64 * 1048576))
check "dmg/vhd-cut.vhd: info says truncated" damaged vhd-cut.vhd "truncated"
check "dmg/vhd-bat-eof.vhd: block 16 fails, the rest reads" probe ranges "$(dmg vhd-bat-eof.vhd)" \
    "$REF/vpc-dyn-orig" ok:0:32M eio:32M:4K eio:34603015:512 ok:34M:30M
check "dmg/vhd-bat-eof.vhd: info names block 16" damaged vhd-bat-eof.vhd "block 16"
check "dmg/vhd-absurd.vhd: info says absurd" damaged vhd-absurd.vhd absurd
check "dmg/vhd-bad-magic.vhd: info says not a disk image" damaged vhd-bad-magic.vhd "disk image"
# unopened FILE: an image vmfs cannot open shows as empty or fails reads.
unopened() { [ "$(t stat -c %s "$1")" = 0 ] || read_fails "$1" 0 4096; }
check "dmg/vhd-bad-magic.vhd: empty or reads fail" unopened "$(dmg vhd-bad-magic.vhd)"
check "dmg/vhd-absurd.vhd: empty or reads fail" unopened "$(dmg vhd-absurd.vhd)"
check "dmg/vhd-orphan.vhd: its own sectors read, the parent's fail" probe ranges \
    "$(dmg vhd-orphan.vhd)" "$REF/dmg-orphan" ok:1M:512K eio:0:4K eio:2M:4K
check "dmg/vhd-orphan.vhd: info names the missing parent" damaged vhd-orphan.vhd "gone.vhd"
check "dmg/loop-a.vhd: its own sectors read, the rest fails" probe ranges "$(dmg loop-a.vhd)" \
    "$REF/dmg-loop-a" ok:0:4K eio:1M:4K
check "dmg/loop-a.vhd: info names the loop" damaged loop-a.vhd loop
check "dmg/vdi-bad-signature.vdi: info says not a disk image" damaged vdi-bad-signature.vdi "disk image"
check "dmg/vdi-bmap-eof.vdi: block 1 fails, the rest reads" probe ranges \
    "$(dmg vdi-bmap-eof.vdi)" "$REF/vdi-dyn-orig" ok:0:1M eio:1M:4K eio:2096640:512 ok:2M:62M
check "dmg/vdi-bmap-eof.vdi: info names block 1" damaged vdi-bmap-eof.vdi "block 1 "
check "dmg/vdi-cut.vdi: the cut block fails, the rest reads" probe ranges "$(dmg vdi-cut.vdi)" \
    "$REF/vdi-dyn-orig" ok:0:5M eio:5M:4K ok:6M:34M eio:40M:512 ok:41M:23M
check "dmg/vdi-absurd.vdi: info says absurd" damaged vdi-absurd.vdi absurd
check "dmg/qed-l2-eof.qed: the L2 span fails, the rest reads" probe ranges "$(dmg qed-l2-eof.qed)" \
    "$REF/qed-c4k-orig" ok:0:16M eio:20M:4K eio:23M:4K
check "dmg/qed-l2-eof.qed: info names the L1 entry" damaged qed-l2-eof.qed "L1 entry"
check "dmg/qed-data-eof.qed: one cluster fails, the rest reads" probe ranges \
    "$(dmg qed-data-eof.qed)" "$REF/qed-c4k-orig" ok:0:4K eio:4K:4K ok:8K:24568K
check "dmg/qed-data-eof.qed: info names the cluster" damaged qed-data-eof.qed "data cluster"
check "dmg/qed-cut.qed: clusters past the cut fail, the rest reads" probe ranges \
    "$(dmg qed-cut.qed)" "$REF/qed-c4k-orig" ok:0:1M eio:23M:4K eio:$((24 * 1048576 - 4096)):4K
check "dmg/qed-absurd.qed: info says absurd" damaged qed-absurd.qed absurd
check "dmg/qed-bad-magic.qed: info says not a disk image" damaged qed-bad-magic.qed "disk image"
check "dmg/qed-orphan.qed: its clusters read, the backing's fail" probe ranges \
    "$(dmg qed-orphan.qed)" "$REF/dmg-qed-orphan" ok:0:64K eio:64K:4K
check "dmg/qed-orphan.qed: info names the backing file" damaged qed-orphan.qed "gone.raw"
check "dmg/qed-loop-a.qed: info names the loop" damaged qed-loop-a.qed loop
check "dmg/qed-loop-a.qed: its clusters read" probe ranges "$(dmg qed-loop-a.qed)" /dev/null \
    okeio:0:1M
check "vmfs is still running" daemon_alive
check "vmfs unmounts and exits cleanly" vmfs_umount "$MNT"
check "SOURCE files unchanged" unchanged "$SRC" "$WORK/src.state"

# ---- vhdimount, an independent reader of differencing chains -----------------

# vhdi_same NAME FILE...: vhdimount reads the last FILE (a differencing
# chain copied into one directory: vhdimount finds a parent by its name
# beside the child) as $VHDI_REF.  The mount is tracked for the EXIT trap
# until it is unmounted.
vhdi_same() {
    local dir=$WORK/vhdi/$1 top idx r=0
    shift
    mkdir -p "$dir/m" && cp "$@" "$dir/" || return 1
    t vhdimount "$dir/$(basename "${@: -1}")" "$dir/m" >/dev/null || return 1
    idx=${#MNTS[@]}
    MNTS+=("$dir/m") PIDS+=("") LOGS+=(-)
    for _ in $(seq 50); do [ -n "$(ls "$dir/m" 2>/dev/null)" ] && break; sleep 0.1; done
    top=$(ls "$dir/m" | sort -V | tail -1)
    same_file "$dir/m/$top" "$VHDI_REF" || r=1
    timeout 30 fusermount3 -u "$dir/m" && MNTS[idx]=""
    return $r
}
if command -v vhdimount >/dev/null 2>&1; then
    VHDI_REF=$REF/diff-vh-child
    check "vhdimount reads diff/vh/child.vhd as vmfs and the pattern" vhdi_same child \
        "$D/vh/base.vhd" "$D/vh/child.vhd"
    VHDI_REF=$REF/diff-vh-grandchild
    check "vhdimount reads diff/vh/grandchild.vhd as vmfs and the pattern" vhdi_same \
        grandchild "$D/vh/base.vhd" "$D/vh/child.vhd" "$D/vh/grandchild.vhd"
    VHDI_REF=$REF/diff-by-name
    check "vhdimount reads diff/by-name.vhd as the pattern" vhdi_same by-name \
        "$D/base.vhd" "$D/by-name.vhd"
else
    echo "SKIP: vhdimount not found: the pattern alone is the oracle for differencing disks"
fi

finish
