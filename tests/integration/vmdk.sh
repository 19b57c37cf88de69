#!/bin/bash
# vmfs: VMDK images.  Every subformat and option qemu-img offers
# (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat,
# streamOptimized; compat6, hwversion, toolsversion, adapter types,
# zeroed grains, preallocation), a stream-optimized file with its grain
# directory in the footer, a hand-written vmfs descriptor with an ESX
# snapshot (vmfsSparse, a COWD delta) over it, ZERO / RDONLY /
# NOACCESS extents and delta chains through parentFileNameHint read
# byte-identical to `qemu-img convert -O raw` (and to libyal's vmdkmount
# where it reads the image); extent files are not listed on their own;
# damaged images are listed with info saying what is wrong and fail with
# EIO only where the damage is.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq sha256sum truncate
need_fuse

SRC=$WORK/src
BAD=$WORK/src/bad
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$BAD" "$REF"
TOOL=$WORK/vmdktool.py

# ---- a small tool to build and damage VMDK files --------------------------
cat >"$TOOL" <<'EOF'
import struct, sys, zlib

SEC = 512

def header(f):
    f.seek(0)
    h = f.read(512)
    (magic, version, flags, cap, grain, doff, dsize, gtes, rgd, gd, over) = \
        struct.unpack_from("<4sIIQQQQIQQQ", h)
    return dict(version=version, flags=flags, cap=cap, grain=grain, gtes=gtes,
                rgd=rgd, gd=gd, doff=doff, dsize=dsize)

FIELDS = {"magic": (0, "4s"), "version": (4, "<I"), "flags": (8, "<I"),
          "capacity": (12, "<Q"), "grain": (20, "<Q"), "gtes": (44, "<I"),
          "rgd": (48, "<Q"), "gd": (56, "<Q")}

def gte_pos(f, guest):
    """File offset of the grain table entry of a guest offset."""
    h = header(f)
    g = guest // SEC // h["grain"]
    f.seek(h["gd"] * SEC + (g // h["gtes"]) * 4)
    gt = struct.unpack("<I", f.read(4))[0]
    return gt * SEC + (g % h["gtes"]) * 4

def cmd_hdr(path, field, val):
    off, fmt = FIELDS[field]
    v = val.encode() if fmt == "4s" else int(val, 0)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, v))

def cmd_gd(path, index, val):
    with open(path, "r+b") as f:
        h = header(f)
        f.seek(h["gd"] * SEC + int(index) * 4)
        f.write(struct.pack("<I", int(val, 0)))

def cmd_gte(path, guest, val=None):
    with open(path, "r+b") as f:
        pos = gte_pos(f, int(guest, 0))
        if val is None:
            f.seek(pos)
            print(struct.unpack("<I", f.read(4))[0])
        else:
            f.seek(pos)
            f.write(struct.pack("<I", int(val, 0)))

def cmd_corrupt_grain(path, guest):
    """Overwrites the deflate data of the compressed grain holding guest."""
    with open(path, "r+b") as f:
        f.seek(gte_pos(f, int(guest, 0)))
        sector = struct.unpack("<I", f.read(4))[0]
        f.seek(sector * SEC + 12 + 2)
        f.write(b"\xff" * 64)

def cmd_set_parent(path, name):
    """Adds parentFileNameHint to the embedded descriptor."""
    with open(path, "r+b") as f:
        h = header(f)
        f.seek(h["doff"] * SEC)
        text = f.read(h["dsize"] * SEC).split(b"\0")[0]
        line = b'parentFileNameHint="' + name.encode() + b'"\n'
        text = text.replace(b'createType="monolithicSparse"\n',
                            b'createType="monolithicSparse"\n' + line)
        f.seek(h["doff"] * SEC)
        f.write(text)

def cmd_stream(raw, out, grain_sectors="128"):
    import os
    """A stream-optimized file the way VMware writes it: grains behind
    markers, then the tables, the directory and a footer holding the real
    header; the header at the start says the directory is at the end."""
    gs = int(grain_sectors)
    gb = gs * SEC
    data = open(raw, "rb").read()
    cap = len(data) // SEC
    gtes = 512
    ngt = -(-cap // (gs * gtes))
    desc = ('# Disk DescriptorFile\nversion=1\nCID=5eed5eed\nparentCID=ffffffff\n'
            'createType="streamOptimized"\n\n# Extent description\n'
            'RW %d SPARSE "%s"\n\n# The Disk Data Base\n#DDB\n\n'
            'ddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "4"\n'
            % (cap, os.path.basename(out))).encode()
    def hdr(gd):
        return struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", 3, 0x30001, cap, gs, 1, 20,
                           gtes, 0, gd, 128, 0, b"\n \r\n", 1).ljust(SEC, b"\0")
    out_b = bytearray(hdr(0xffffffffffffffff))
    out_b += desc.ljust(127 * SEC, b"\0")
    gt = [0] * (ngt * gtes)
    for g in range(-(-cap // gs)):
        chunk = data[g * gb:(g + 1) * gb]
        if not chunk.strip(b"\0"):
            continue
        z = zlib.compress(chunk.ljust(gb, b"\0"), 6)
        gt[g] = len(out_b) // SEC
        m = struct.pack("<QI", g * gs, len(z)) + z
        out_b += m.ljust(-(-len(m) // SEC) * SEC, b"\0")
    gd = []
    for t in range(ngt):
        out_b += struct.pack("<QII", 4, 0, 1).ljust(SEC, b"\0")
        gd.append(len(out_b) // SEC)
        out_b += struct.pack("<512I", *gt[t * gtes:(t + 1) * gtes])
    gd_bytes = struct.pack("<%dI" % ngt, *gd)
    gd_secs = -(-len(gd_bytes) // SEC)
    out_b += struct.pack("<QII", gd_secs, 0, 2).ljust(SEC, b"\0")
    gd_at = len(out_b) // SEC
    out_b += gd_bytes.ljust(gd_secs * SEC, b"\0")
    out_b += struct.pack("<QII", 1, 0, 3).ljust(SEC, b"\0")
    out_b += hdr(gd_at)
    out_b += b"\0" * SEC
    open(out, "wb").write(out_b)

def cmd_cowd(out, capacity, grain, *fills):
    """An ESX sparse (COWD) extent: CAPACITY sectors, GRAIN-sector grains,
    4096 entries per table; each fill OFF:LEN:BYTE (bytes, whole grains)
    allocates those grains filled with BYTE."""
    cap, gs = int(capacity), int(grain)
    gb = gs * SEC
    span = 4096 * gs
    ngd = -(-cap // span)
    gd_at = 4
    gt_at = gd_at + -(-ngd * 4 // SEC)
    data_at = gt_at + ngd * 32
    gt = [0] * (ngd * 4096)
    grains = bytearray()
    for spec in fills:
        off, length, byte = (int(x, 0) for x in spec.split(":"))
        for g in range(off // gb, (off + length) // gb):
            gt[g] = data_at + len(grains) // SEC
            grains += bytes([byte]) * gb
    hdr = struct.pack("<4sIIIIIII", b"COWD", 1, 3, cap, gs, gd_at, ngd, data_at)
    f = bytearray(hdr.ljust(gd_at * SEC, b"\0"))
    f += struct.pack("<%dI" % ngd, *[gt_at + t * 32 for t in range(ngd)]).ljust(
        (gt_at - gd_at) * SEC, b"\0")
    f += struct.pack("<%dI" % len(gt), *gt)
    f += grains
    open(out, "wb").write(f)

cmd = sys.argv[1].replace("-", "_")
globals()["cmd_" + cmd](*sys.argv[2:])
EOF
tool() { python3 "$TOOL" "$@" || hard_error "vmdktool $*"; }

# sha256 FILE: its sha256 (openssl's is several times faster than
# coreutils' on big files), under a timeout long enough for 4 GiB.
if command -v openssl >/dev/null 2>&1; then
    sha256() { timeout -k 5 600 openssl dgst -sha256 -r <"$1" | cut -d' ' -f1; }
else
    sha256() { timeout -k 5 600 sha256sum <"$1" | cut -d' ' -f1; }
fi

# qio IMAGE COMMAND...: qemu-io writes on a VMDK (in its directory).
qio() {
    local img=$1 c args=()
    shift
    for c in "$@"; do args+=(-c "$c"); done
    (cd "$(dirname "$img")" && qemu-io -f vmdk "${args[@]}" "$(basename "$img")" >/dev/null) ||
        hard_error "qemu-io $img $*"
}
mk() {   # mk IMAGE SIZE [OPTIONS]
    (cd "$(dirname "$1")" && qemu-img create -q -f vmdk ${3:+-o "$3"} "$(basename "$1")" "$2") ||
        hard_error "qemu-img create $1 $3"
}
write_small() {   # data at the start, unaligned in the middle, at the end
    qio "$1" "write -P 0x11 0 1M" "write -P 0x22 1049088 70000" "write -P 0x33 33554432 65536" \
        "write -P 0x44 66977792 131072"
}
BIG_SIZE=4160M    # two 2 GiB extents and a third past 4 GiB
write_big() {     # across the 2 GiB extent boundary, past 4 GiB, at the end
    qio "$1" "write -P 0x51 0 1M" "write -P 0x52 2147479552 8192" \
        "write -P 0x53 3221225472 65536" "write -P 0x54 4295000000 70000" \
        "write -P 0x55 4362010624 65536"
}

# ---- images qemu-img writes -------------------------------------------------
mk "$SRC/sparse.vmdk" 64M
write_small "$SRC/sparse.vmdk"
mk "$SRC/sparse-zg.vmdk" 64M zeroed_grain=on
write_small "$SRC/sparse-zg.vmdk"
qio "$SRC/sparse-zg.vmdk" "write -z 0 65536" "write -z 2097152 1048576"
mk "$SRC/compat6.vmdk" 64M compat6=on
write_small "$SRC/compat6.vmdk"
mk "$SRC/tools.vmdk" 64M toolsversion=10304,hwversion=undefined
write_small "$SRC/tools.vmdk"
for a in ide lsilogic buslogic legacyESX; do
    mk "$SRC/adapter-$a.vmdk" 64M "adapter_type=$a"
    write_small "$SRC/adapter-$a.vmdk"
done
mk "$SRC/prealloc.vmdk" 64M preallocation=full
write_small "$SRC/prealloc.vmdk"
mk "$SRC/flat.vmdk" 64M subformat=monolithicFlat
write_small "$SRC/flat.vmdk"
mk "$SRC/flat-falloc.vmdk" 64M subformat=monolithicFlat,preallocation=falloc
write_small "$SRC/flat-falloc.vmdk"
(cd "$SRC" && qemu-img convert -O vmdk -o subformat=streamOptimized sparse.vmdk stream.vmdk) ||
    hard_error "qemu-img convert streamOptimized"
mk "$SRC/twogbs.vmdk" "$BIG_SIZE" subformat=twoGbMaxExtentSparse
write_big "$SRC/twogbs.vmdk"
mk "$SRC/twogbf.vmdk" "$BIG_SIZE" subformat=twoGbMaxExtentFlat
write_big "$SRC/twogbf.vmdk"

# Stream-optimized with the directory in the footer (as VMware writes it).
ref_raw "$SRC/sparse.vmdk" "$WORK/sparse.raw" || hard_error "qemu-img convert"
tool stream "$WORK/sparse.raw" "$SRC/stream-footer.vmdk"

# A delta chain: base <- child (monolithicSparse) <- grandchild (twoGb sparse).
mk "$SRC/base.vmdk" 64M
write_small "$SRC/base.vmdk"
(cd "$SRC" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk) ||
    hard_error "qemu-img create child"
qio "$SRC/child.vmdk" "write -P 0x61 65536 65536" "write -P 0x62 33619968 4096"
(cd "$SRC" && qemu-img create -q -f vmdk -b child.vmdk -F vmdk \
    -o subformat=twoGbMaxExtentSparse grandchild.vmdk) || hard_error "qemu-img create grandchild"
qio "$SRC/grandchild.vmdk" "write -P 0x71 131072 4096"

# A hand-written ESX descriptor over a flat file, and one with ZERO,
# RDONLY and NOACCESS extents (qemu skips those lines: see below).
probe mkraw "$SRC/esx-flat.vmdk" 8M 0:1M:rand 6M:100K:text || hard_error mkraw
cat >"$SRC/esx.vmdk" <<'EOF'
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
isNativeSnapshot="no"
createType="vmfs"

# Extent description
RW 16384 VMFS "esx-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "1"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.thinProvisioned = "1"
ddb.virtualHWVersion = "13"
EOF
probe mkraw "$SRC/mixed-f001.vmdk" 2M 0:2M:rand || hard_error mkraw
cat >"$SRC/mixed.vmdk" <<'EOF'
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 2048 FLAT "mixed-f001.vmdk" 0
RW 3000 ZERO
RDONLY 1024 FLAT "mixed-f001.vmdk" 2048
NOACCESS 512 FLAT "mixed-f001.vmdk" 100
EOF
python3 - "$SRC/mixed-f001.vmdk" "$REF/mixed.vmdk" <<'EOF' || hard_error "mixed reference"
import sys
f = open(sys.argv[1], "rb").read()
out = f[:2048 * 512] + bytes(3000 * 512) + f[2048 * 512:3072 * 512] + f[100 * 512:612 * 512]
open(sys.argv[2], "wb").write(out)
EOF

# An ESX snapshot over it: a vmfsSparse descriptor and a COWD delta.
tool cowd "$SRC/esxsnap-delta.vmdk" 16384 8 0:8192:0xa1 1048576:65536:0xa2 8384512:4096:0xa3
cat >"$SRC/esxsnap.vmdk" <<'EOF'
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=0badcafe
parentCID=fffffffe
isNativeSnapshot="no"
createType="vmfsSparse"
parentFileNameHint="esx.vmdk"
# Extent description
RW 16384 VMFSSPARSE "esxsnap-delta.vmdk"

# The Disk Data Base
#DDB

ddb.longContentID = "0123456789abcdef0123456789abcdef"
EOF

GOOD=(sparse sparse-zg compat6 tools adapter-ide adapter-lsilogic adapter-buslogic
    adapter-legacyESX prealloc flat flat-falloc stream stream-footer twogbs twogbf base child
    grandchild esx esxsnap)
for g in "${GOOD[@]}"; do
    ref_raw "$SRC/$g.vmdk" "$REF/$g.vmdk" || hard_error "qemu-img convert $g"
done
EXTENTS=(flat-flat.vmdk flat-falloc-flat.vmdk twogbs-s001.vmdk twogbs-s002.vmdk twogbs-s003.vmdk
    twogbf-f001.vmdk twogbf-f002.vmdk twogbf-f003.vmdk grandchild-s001.vmdk esx-flat.vmdk
    mixed-f001.vmdk esxsnap-delta.vmdk)
for e in "${EXTENTS[@]}"; do
    [ -f "$SRC/$e" ] || hard_error "expected extent file $e was not created"
done

# ---- damaged images -----------------------------------------------------------
cp "$SRC/sparse.vmdk" "$BAD/magic.vmdk"
tool hdr "$BAD/magic.vmdk" magic KDMX
for f in capacity grain gtes; do cp "$SRC/sparse.vmdk" "$BAD/absurd-$f.vmdk"; done
tool hdr "$BAD/absurd-capacity.vmdk" capacity 0x4000000000000000
tool hdr "$BAD/absurd-grain.vmdk" grain 0x10000000
tool hdr "$BAD/absurd-gtes.vmdk" gtes 100000
cp "$SRC/sparse.vmdk" "$BAD/gd-past-eof.vmdk"
tool hdr "$BAD/gd-past-eof.vmdk" gd 0x7fffffff
tool hdr "$BAD/gd-past-eof.vmdk" flags 1          # no redundant directory
cp "$SRC/sparse.vmdk" "$BAD/gd-rgd.vmdk"          # the redundant copy saves it
tool hdr "$BAD/gd-rgd.vmdk" gd 0x7fffffff
cp "$SRC/sparse.vmdk" "$BAD/gt-past-eof.vmdk"
tool gd "$BAD/gt-past-eof.vmdk" 0 0x7fffffff      # the table of [0, 32M)
tool hdr "$BAD/gt-past-eof.vmdk" flags 1
cp "$SRC/sparse.vmdk" "$BAD/grain-past-eof.vmdk"
tool gte "$BAD/grain-past-eof.vmdk" 1048576 0x7ffffff0
cp "$SRC/sparse.vmdk" "$BAD/trunc.vmdk"
last=$(tool gte "$BAD/trunc.vmdk" 66977792)       # the last grain written
truncate -s $((last * 512 + 32768)) "$BAD/trunc.vmdk"
cp "$SRC/stream.vmdk" "$BAD/stream-corrupt.vmdk"
tool corrupt-grain "$BAD/stream-corrupt.vmdk" 33554432
cp "$SRC/stream-footer.vmdk" "$BAD/footer-cut.vmdk"
truncate -s -1024 "$BAD/footer-cut.vmdk"
# A descriptor naming a missing extent between two present ones.
probe mkraw "$BAD/miss-f001.vmdk" 1M 0:1M:rand || hard_error mkraw
probe mkraw "$BAD/miss-f003.vmdk" 1M 0:1M:text || hard_error mkraw
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="twoGbMaxExtentFlat"\n%s\n%s\n%s\n' \
    'RW 2048 FLAT "miss-f001.vmdk" 0' 'RW 2048 FLAT "miss-f002.vmdk" 0' \
    'RW 2048 FLAT "miss-f003.vmdk" 0' >"$BAD/miss.vmdk"
cat "$BAD/miss-f001.vmdk" >"$REF/miss"
head -c 1M /dev/zero >>"$REF/miss"
cat "$BAD/miss-f003.vmdk" >>"$REF/miss"
# Thousands of extents, beyond the limit.
{
    printf '# Disk DescriptorFile\ncreateType="vmfs"\n'
    for ((i = 0; i < 5000; i++)); do echo 'RW 8 ZERO'; done
} >"$BAD/many.vmdk"
# An absurd 300 KB line before a good extent: ignored, the disk reads.
{
    printf '# Disk DescriptorFile\ncreateType="monolithicFlat"\n'
    head -c 300000 /dev/zero | tr '\0' 'x'
    printf '\nRW 2048 FLAT "miss-f001.vmdk" 0\n'
} >"$BAD/longline.vmdk"
# Parents: missing, and a loop (a -> b -> a).
mk "$BAD/gone.vmdk" 64M
(cd "$BAD" && qemu-img create -q -f vmdk -b gone.vmdk -F vmdk orphan.vmdk) || hard_error create
qio "$BAD/orphan.vmdk" "write -P 0x81 1M 64K"
rm "$BAD/gone.vmdk"
probe mkraw "$REF/orphan" 64M 1M:64K:0x81 || hard_error mkraw
mk "$BAD/loop-b.vmdk" 64M
(cd "$BAD" && qemu-img create -q -f vmdk -b loop-b.vmdk -F vmdk loop-a.vmdk) || hard_error create
qio "$BAD/loop-a.vmdk" "write -P 0x91 0 64K"
tool set-parent "$BAD/loop-b.vmdk" loop-a.vmdk
probe mkraw "$REF/loop-a" 64M 0:64K:0x91 || hard_error mkraw

src_state "$SRC" >"$WORK/src.state"
echo "images made in $SECONDS s"

# ---- mount and compare ----------------------------------------------------------
vmfs_mount "$SRC" "$MNT" || { not_ok "vmfs mounts $SRC"; finish; }
ok "vmfs mounts $SRC"

listed() { t ls -1 "$1" | grep -qxF "$2"; }   # listed DIR NAME
for g in "${GOOD[@]}" mixed; do
    check "$g.vmdk is listed" listed "$MNT" "$g.vmdk"
done
for e in "${EXTENTS[@]}"; do
    check_not "extent $e is not listed on its own" listed "$MNT" "$e"
done

# The two big disks and their references are read while the small ones
# are compared.
BIG=(twogbs twogbf)
SHA_PIDS=()
for g in "${BIG[@]}"; do
    sha256 "$MNT/$g.vmdk" >"$WORK/$g.got" 2>&1 &
    SHA_PIDS+=($!)
    sha256 "$REF/$g.vmdk" >"$WORK/$g.want" &
    SHA_PIDS+=($!)
done
same_sha() {   # same_sha IMAGE: the flat file's sha256 is the reference's
    local got want
    got=$(sha256 "$MNT/$1.vmdk") || return 1
    want=$(sha256 "$REF/$1.vmdk")
    if [ -z "$got" ] || [ "$got" != "$want" ]; then
        echo "$1.vmdk: sha256 $got, qemu-img convert: $want"
        return 1
    fi
}
for g in "${GOOD[@]}"; do
    [[ " ${BIG[*]} " == *" $g "* ]] && continue
    check "$g.vmdk: size is qemu's" size_is "$MNT/$g.vmdk" "$(qemu_vsize "$SRC/$g.vmdk")"
    check "$g.vmdk: sha256 equals qemu-img convert's" same_sha "$g"
done
same_saved() {   # same_saved IMAGE: the two sums computed in the background
    [ -s "$WORK/$1.got" ] && cmp "$WORK/$1.got" "$WORK/$1.want"
}
wait "${SHA_PIDS[@]}"
for g in "${BIG[@]}"; do
    check "$g.vmdk: size is qemu's" size_is "$MNT/$g.vmdk" "$(qemu_vsize "$SRC/$g.vmdk")"
    check "$g.vmdk: sha256 equals qemu-img convert's" same_saved "$g"
done
qemu_map "$SRC/sparse.vmdk" "$WORK/sparse.map"
check "sparse.vmdk: holes as qemu maps them" probe holes "$MNT/sparse.vmdk" "$REF/sparse.vmdk" \
    "$WORK/sparse.map"
qemu_map "$SRC/sparse-zg.vmdk" "$WORK/sparse-zg.map"
check "sparse-zg.vmdk: zeroed grains are holes" probe holes "$MNT/sparse-zg.vmdk" \
    "$REF/sparse-zg.vmdk" "$WORK/sparse-zg.map"
check "mixed.vmdk (ZERO, RDONLY, NOACCESS extents) reads as its extents say" \
    same_file "$MNT/mixed.vmdk" "$REF/mixed.vmdk"

echo "good images compared after $SECONDS s"

# info: facts of the format, the chain.
I=$MNT/sparse.vmdk.d/info.json
check "sparse: info.json is valid" json_valid "$I"
check "sparse: subformat, grain size, header" jq_true "$I" \
    '.format == "vmdk" and .vmdk.create_type == "monolithicSparse" and
     .vmdk.grain_size == 65536 and .vmdk.grain_table_entries == 512 and .status == "ok"'
check "stream: compression and markers" jq_true "$MNT/stream.vmdk.d/info.json" \
    '.vmdk.create_type == "streamOptimized" and .vmdk.compression == "deflate" and .vmdk.grain_markers'
check "stream: a page read from a compressed grain brings the grain into the page cache" \
    probe fill "$MNT/stream.vmdk" "$REF/stream.vmdk" 72K 64K 128K yes
check "sparse: a page read brings no other page into the page cache" \
    probe fill "$MNT/sparse.vmdk" "$REF/sparse.vmdk" 72K 64K 128K no
check "stream-footer: the footer is used" jq_true "$MNT/stream-footer.vmdk.d/info.json" \
    '.vmdk.footer and .status == "ok"'
check "compat6: hardware version 6" jq_true "$MNT/compat6.vmdk.d/info.json" \
    '.vmdk.ddb.virtual_hw_version == "6"'
check "adapter type in info" jq_true "$MNT/adapter-buslogic.vmdk.d/info.json" \
    '.vmdk.ddb.adapter_type == "buslogic"'
check "twogbs: three sparse extents" jq_true "$MNT/twogbs.vmdk.d/info.json" \
    '.vmdk.create_type == "twoGbMaxExtentSparse" and (.vmdk.extents | length) == 3 and
     all(.vmdk.extents[]; .type == "SPARSE" and .status == "ok")'
check "esx: a VMFS extent" jq_true "$MNT/esx.vmdk.d/info.json" \
    '.vmdk.create_type == "vmfs" and .vmdk.extents[0].type == "VMFS"'
check "esxsnap: a COWD delta over esx.vmdk" jq_true "$MNT/esxsnap.vmdk.d/info.json" \
    '.vmdk.create_type == "vmfsSparse" and .vmdk.extents[0].sparse.header == "COWD (ESX sparse)" and
     (.backing_chain | map(.file | split("/") | last)) == ["esx.vmdk"] and .status == "ok"'
check "grandchild: its chain is child, base" jq_true "$MNT/grandchild.vmdk.d/info.json" \
    '(.backing_chain | map(.file | split("/") | last)) == ["child.vmdk", "base.vmdk"] and
     .vmdk.parent_file_name_hint == "child.vmdk" and .status == "ok"'
check "mixed: sizes of all four extents" jq_true "$MNT/mixed.vmdk.d/info.json" \
    '[.vmdk.extents[].access] == ["RW", "RW", "RDONLY", "NOACCESS"] and
     .virtual_size == 6584 * 512'

# libyal's reader, where it reads the image.  libvmdk 20200926 reads a
# zeroed-grain entry as data at sector 1 and a delta's own grains from its
# parent, where qemu and vmfs agree: those images (sparse-zg, child) are
# not compared.  It cannot open monolithicFlat descriptors.
vmdkmount_cmp() {
    local g=$1 m=$WORK/vm-$1
    mkdir -p "$m"
    if ! timeout 30 vmdkmount "$SRC/$g.vmdk" "$m" >/dev/null 2>&1; then
        echo "vmdkmount cannot read $g.vmdk: not compared"
        return 0
    fi
    VMDKMOUNTS+=("$m")
    local r=0
    same_file "$MNT/$g.vmdk" "$m/vmdk1" || r=1
    timeout 30 fusermount3 -u "$m" || timeout 30 fusermount3 -uz "$m"
    return "$r"
}
VMDKMOUNTS=()
trap 'for m in "${VMDKMOUNTS[@]}"; do is_mounted "$m" && fusermount3 -uz "$m"; done; cleanup' EXIT
if command -v vmdkmount >/dev/null 2>&1; then
    for g in sparse compat6 tools adapter-lsilogic prealloc stream stream-footer esx base; do
        check "$g.vmdk equals vmdkmount's view" vmdkmount_cmp "$g"
    done
else
    echo "vmdkmount not installed: libyal comparison skipped"
fi

# ---- damaged images -------------------------------------------------------------
D=$MNT/bad
for b in magic absurd-capacity absurd-grain absurd-gtes gd-past-eof gd-rgd gt-past-eof \
    grain-past-eof trunc stream-corrupt footer-cut miss many longline orphan loop-a loop-b; do
    check "bad/$b.vmdk is listed" listed "$D" "$b.vmdk"
done
for e in miss-f001.vmdk miss-f003.vmdk; do
    check_not "extent bad/$e is not listed" listed "$D" "$e"
done
damaged() {   # damaged NAME REGEX
    check "bad/$1: info says \"$2\"" problem_named "$D/$1.vmdk.d/info.json" "$2"
}
damaged magic "not a disk image"
damaged absurd-capacity "absurd capacity"
damaged absurd-grain "absurd grain size"
damaged absurd-gtes "entries per grain table"
unopened() {   # shown with st_size 0, or reads fail with EIO
    local size
    size=$(t stat -c %s "$1") || return 1
    [ "$size" = 0 ] || read_fails "$1" 0 512
}
for b in magic absurd-capacity absurd-grain absurd-gtes footer-cut many; do
    check "bad/$b: shown empty, or reads fail with EIO" unopened "$D/$b.vmdk"
done
damaged gd-past-eof "grain directory .* not inside the file"
check "bad/gd-past-eof: reads fail" read_fails "$D/gd-past-eof.vmdk" 0 4096
damaged gd-rgd "redundant copy is used"
check "bad/gd-rgd: reads through the redundant directory" same_file "$D/gd-rgd.vmdk" \
    "$REF/sparse.vmdk"
damaged gt-past-eof "grain table for disk offset 0x0 .* past the end"
check "bad/gt-past-eof: EIO in the span of the bad table only" \
    probe ranges "$D/gt-past-eof.vmdk" "$REF/sparse.vmdk" eio:0:4096 eio:1M:64K \
    eio:32767K:1K ok:32M:64K ok:63M:1M
damaged grain-past-eof "grain at disk offset 0x100000 .* past the end"
check "bad/grain-past-eof: EIO in that grain only" \
    probe ranges "$D/grain-past-eof.vmdk" "$REF/sparse.vmdk" ok:0:1M eio:1M:4K \
    eio:1110016:4K ok:1088K:64K ok:32M:64K
damaged trunc "past the end of the file"
check "bad/trunc: EIO past the cut, data before it" \
    probe ranges "$D/trunc.vmdk" "$REF/sparse.vmdk" ok:0:1M ok:32M:64K eio:66977792:131072
# (compressed grains are inflated when read: read first, then ask info)
check "bad/stream-corrupt: EIO in the corrupt grain, the rest reads" \
    probe ranges "$D/stream-corrupt.vmdk" "$REF/sparse.vmdk" ok:0:1M eio:32M:64K \
    ok:1024K:128K ok:66977792:131072
damaged stream-corrupt "corrupt compressed data"
damaged footer-cut "footer"
damaged miss "miss-f002.vmdk"
check "bad/miss: EIO in the missing extent, the others read" \
    probe ranges "$D/miss.vmdk" "$REF/miss" ok:0:1M eio:1M:4K eio:2096640:512 ok:2M:1M
check "bad/miss: info marks the extent missing" jq_true "$D/miss.vmdk.d/info.json" \
    '.vmdk.extents[1].status == "missing" and .vmdk.extents[1].file == "miss-f002.vmdk"'
damaged many "at most 4096"
check "bad/longline: an absurd line is ignored, the disk reads" \
    same_file "$D/longline.vmdk" "$BAD/miss-f001.vmdk"
check "bad/longline: info counts the line" jq_true "$D/longline.vmdk.d/info.json" \
    '.vmdk.unrecognized_descriptor_lines == 1'
damaged orphan "gone.vmdk"
check "bad/orphan: its own grain reads, the parent's part fails" \
    probe ranges "$D/orphan.vmdk" "$REF/orphan" eio:0:4096 ok:1M:64K eio:2M:4096
damaged loop-a "backing loop"
check "bad/loop-a: its own grain reads, unallocated parts fail" \
    probe ranges "$D/loop-a.vmdk" "$REF/loop-a" ok:0:64K eio:1M:4096
check "the daemon survived the damaged images" daemon_alive
check "SOURCE is untouched" unchanged "$SRC" "$WORK/src.state"

finish
