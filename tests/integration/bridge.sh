#!/bin/bash
# vmfs: formats read through the qemu-nbd bridge (parallels and qcow
# version 1 made by qemu-img; bochs, cloop and dmg written by the Python
# writer below): each flat file equals `qemu-img convert -O raw`, holes
# agree with qemu-img map, info names the format and the bridge, a qcow
# backing file is opened by vmfs (and refused outside SOURCE), a qemu-nbd
# that dies is started again, damaged or encrypted images show with a
# problem, and after unmount no qemu-nbd of this test is left.  Without
# qemu-nbd (VMFS_QEMU_NBD pointing nowhere, or a qemu-nbd that cannot run)
# the images still show and info says what to install.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io qemu-nbd python3 jq pgrep
need_fuse

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
RUN=$WORK/run           # XDG_RUNTIME_DIR of the daemons: their qemu-nbd sockets
MK=$WORK/mkbridged.py
mkdir -p "$SRC/sub" "$REF" "$RUN" "$WORK/outside"
chmod 700 "$RUN"

qio() { qemu-io -f "$1" "${@:3}" "$2" >/dev/null || hard_error "qemu-io $*"; }

# parallels, default and 64 KiB clusters
qemu-img create -q -f parallels "$SRC/p1.hds" 64M || hard_error "qemu-img create parallels"
qio parallels "$SRC/p1.hds" -c "write -P 0x11 0 1M" -c "write -P 0x12 5M 64K" \
    -c "write -P 0x13 63M 1M"
qemu-img create -q -f parallels -o cluster_size=64K "$SRC/p2.hds" 20M ||
    hard_error "qemu-img create parallels 64K"
qio parallels "$SRC/p2.hds" -c "write -P 0x21 4096 100000" -c "write -P 0x22 19M 512"

# qcow version 1: plain, odd size, backing files inside and outside
# SOURCE (qemu 7.2 writes no compressed qcow version 1 clusters)
qemu-img create -q -f qcow "$SRC/q1.qcow" 32M || hard_error "qemu-img create qcow"
qio qcow "$SRC/q1.qcow" -c "write -P 0x31 0 512" -c "write -P 0x32 1M 3M" \
    -c "write -P 0x33 31M 1M"
qemu-img create -q -f qcow "$SRC/odd.qcow" 10000000 || hard_error "qemu-img create odd"
qio qcow "$SRC/odd.qcow" -c "write -P 0x34 9000000 999424"
probe mkraw "$SRC/sub/base.raw" 16M 0:16M:rand || hard_error mkraw
(cd "$SRC" && qemu-img create -q -f qcow -b sub/base.raw -F raw over.qcow 16M) ||
    hard_error "qemu-img create -b"
qio qcow "$SRC/over.qcow" -c "write -P 0x35 64K 64K" -c "write -P 0x36 10M 1M"
probe mkraw "$WORK/outside/base.raw" 4M 0:4M:0x77 || hard_error mkraw
(cd "$SRC" && qemu-img create -q -f qcow -b ../outside/base.raw -F raw escape.qcow 4M) ||
    hard_error "qemu-img create -b outside"
qio qcow "$SRC/escape.qcow" -c "write -P 0x37 1M 64K"

# bochs, cloop, dmg: qemu-img cannot create them, this writer can.
cat >"$MK" <<'PYEOF'
"""Writes small images of formats qemu reads but qemu-img cannot create, for
the qemu-nbd bridge tests: bochs (growing redolog), cloop (V2.0) and dmg
(UDIF with an XML property list: raw, zero, ignored and zlib chunks).

    mkbridged.py bochs|cloop|dmg OUT

The content is a pattern with holes; the test compares vmfs with
qemu-img convert of the same file, so this writer only has to produce
files qemu accepts."""
import base64
import struct
import sys
import zlib

MiB = 1 << 20


def pattern(size, seed):
    """Bytes that differ per 512-byte sector, with zero stretches."""
    out = bytearray(size)
    for sec in range(size // 512):
        if (sec // 64) % 3 == 1:          # every third 32 KiB stays zero
            continue
        v = (sec * 7 + seed) % 251 + 1
        out[sec * 512:(sec + 1) * 512] = bytes([v]) * 500 + struct.pack("<Q", sec) + b"\0" * 4
    return bytes(out)


def bochs(path):
    size, extent = 4 * MiB, 64 * 1024
    data = pattern(size, 3)
    nextents = size // extent
    bitmap = 512                                  # one bit per 512 bytes: 128 bits used
    hdr = bytearray(512)
    hdr[0:32] = b"Bochs Virtual HD Image".ljust(32, b"\0")
    hdr[32:48] = b"Redolog".ljust(16, b"\0")
    hdr[48:64] = b"Growing".ljust(16, b"\0")
    struct.pack_into("<IIIII", hdr, 64, 0x00020000, 512, nextents, bitmap, extent)
    struct.pack_into("<IQ", hdr, 84, 0, size)
    catalog, blobs = [], []
    for e in range(nextents):
        chunk = data[e * extent:(e + 1) * extent]
        if e % 5 == 2 or not any(chunk):          # unallocated extents
            catalog.append(0xFFFFFFFF)
            continue
        bits = bytearray(bitmap)
        for s in range(extent // 512):
            if any(chunk[s * 512:(s + 1) * 512]) or s % 2:
                bits[s // 8] |= 1 << (s % 8)
        catalog.append(len(blobs))
        blobs.append(bytes(bits) + chunk)
    cat = b"".join(struct.pack("<I", c) for c in catalog)
    with open(path, "wb") as f:
        f.write(bytes(hdr) + cat + b"".join(blobs))


CLOOP_MAGIC = (b"#!/bin/sh\n#V2.0 Format\n"
               b"modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n")


def cloop(path):
    block, nblocks = 64 * 1024, 40
    data = pattern(block * nblocks, 5)
    head = bytearray(128)
    head[:len(CLOOP_MAGIC)] = CLOOP_MAGIC
    head += struct.pack(">II", block, nblocks)
    comp = [zlib.compress(data[i * block:(i + 1) * block], 9) for i in range(nblocks)]
    off = len(head) + 8 * (nblocks + 1)
    offsets = []
    for c in comp:
        offsets.append(off)
        off += len(c)
    offsets.append(off)
    with open(path, "wb") as f:
        f.write(bytes(head) + b"".join(struct.pack(">Q", o) for o in offsets) + b"".join(comp))


def dmg(path):
    sectors = 8192                                # 4 MiB
    data = pattern(sectors * 512, 9)
    fork = bytearray()
    chunks = []                                   # type, sector, count, offset, length
    step = 256                                    # 128 KiB chunks
    for i, s in enumerate(range(0, sectors, step)):
        piece = data[s * 512:(s + step) * 512]
        if not any(piece):
            chunks.append((0 if i % 2 else 2, s, step, len(fork), 0))
        elif i % 2:
            c = zlib.compress(piece, 6)
            chunks.append((0x80000005, s, step, len(fork), len(c)))
            fork += c
        else:
            chunks.append((1, s, step, len(fork), len(piece)))
            fork += piece
    chunks.append((0xFFFFFFFF, sectors, 0, len(fork), 0))
    mish = bytearray(204)
    mish[0:4] = b"mish"
    struct.pack_into(">IQQQII", mish, 4, 1, 0, sectors, 0, 0, 0)
    struct.pack_into(">I", mish, 200, len(chunks))
    for t, s, n, o, ln in chunks:
        mish += struct.pack(">IIQQQQ", t, 0, s, n, o, ln)
    b64 = base64.b64encode(bytes(mish)).decode()
    plist = ('<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n<dict>\n'
             '<key>resource-fork</key>\n<dict>\n<key>blkx</key>\n<array>\n<dict>\n'
             '<key>Name</key><string>whole disk</string>\n'
             f'<key>Data</key>\n<data>\n{b64}\n</data>\n</dict>\n</array>\n</dict>\n'
             '</dict>\n</plist>\n').encode()
    xml_off = len(fork)
    koly = bytearray(512)
    koly[0:4] = b"koly"
    struct.pack_into(">III", koly, 4, 4, 512, 1)
    struct.pack_into(">QQQQQ", koly, 0x10, 0, 0, len(fork), xml_off, 0)
    struct.pack_into(">QQ", koly, 0xd8, xml_off, len(plist))
    struct.pack_into(">IQ", koly, 0x1e8, 1, sectors)
    with open(path, "wb") as f:
        f.write(bytes(fork) + plist + bytes(koly))


if __name__ == "__main__":
    {"bochs": bochs, "cloop": cloop, "dmg": dmg}[sys.argv[1]](sys.argv[2])
PYEOF
for f in bochs cloop dmg; do
    python3 "$MK" "$f" "$SRC/x.$f" || hard_error "mkbridged $f"
done

GOOD=(p1.hds p2.hds q1.qcow odd.qcow over.qcow x.bochs x.cloop x.dmg)
declare -A FMT=([p1.hds]=parallels [p2.hds]=parallels [q1.qcow]=qcow [odd.qcow]=qcow [over.qcow]=qcow [x.bochs]=bochs [x.cloop]=cloop [x.dmg]=dmg)
for f in "${GOOD[@]}"; do
    ref_raw "$SRC/$f" "$REF/$f.raw" || hard_error "qemu-img convert $f"
    qemu_map "$SRC/$f" "$REF/$f.map" || hard_error "qemu-img map $f"
done 2>/dev/null    # qemu asks for its dmg-bz2 and dmg-lzfse modules

# damaged and refused ones
head -c 512 "$SRC/p1.hds" >"$SRC/trunc.hds"       # qemu reads it (zeros): so do we
ref_raw "$SRC/trunc.hds" "$REF/trunc.hds.raw" || hard_error "qemu-img convert trunc.hds"
cp "$SRC/p1.hds" "$SRC/bigbat.hds"                  # qemu refuses it: "Catalog too large"
printf '\377\377\377\377' | dd of="$SRC/bigbat.hds" bs=1 seek=32 conv=notrunc status=none
head -c 8192 "$SRC/x.dmg" >"$SRC/nokoly.dmg"                   # no trailer
if qemu-img create -q -f qcow --object secret,id=s0,data=vmfs-test \
    -o encrypt.format=aes,encrypt.key-secret=s0 "$SRC/enc.qcow" 1M 2>/dev/null; then
    HAVE_ENC=1
fi
src_state "$SRC" >"$WORK/src.state"

# ours ...: the qemu-nbd processes of this test (their sockets are in RUN)
ours() { pgrep -f "qemu-nbd.*$RUN" || true; }

if XDG_RUNTIME_DIR=$RUN vmfs_mount "$SRC" "$MNT"; then
    # vmfs opens images ahead at mount, but not bridged ones: no qemu-nbd
    # runs before an image is used.
    sleep 0.5
    check "no qemu-nbd before an image is used" test -z "$(ours)"
    for f in "${GOOD[@]}"; do
        check "$f: listed" test -f "$MNT/$f"
        check "$f: st_size is qemu's virtual size" size_is "$MNT/$f" "$(qemu_vsize "$SRC/$f")"
        check "$f: bytes equal qemu-img convert -O raw" same_file "$MNT/$f" "$REF/$f.raw"
        check "$f: holes agree with qemu-img map" \
            probe holes "$MNT/$f" "$REF/$f.raw" "$REF/$f.map"
        t cat "$MNT/$f.d/info.json" >"$WORK/$f.json"
        name="${FMT[$f]} via qemu-nbd"
        check "$f: info says $name, status ok" \
            jq_true "$WORK/$f.json" ".format == \"$name\" and .status == \"ok\""
        check "$f: info names the bridge and the qemu format" \
            jq_true "$WORK/$f.json" ".[\"$name\"].bridge == \"qemu-nbd\" and
                                     .[\"$name\"].qemu_format == \"${FMT[$f]}\""
        check "$f: info text shows the format" \
            t grep -q "^format: $name" "$MNT/$f.d/info"
    done
    check "over.qcow: the backing file is in the chain" \
        jq_true "$WORK/over.qcow.json" '.backing_chain[0].file | endswith("sub/base.raw")'

    # A backing file outside SOURCE is refused: its reads fail, the rest works.
    t cat "$MNT/escape.qcow.d/info.json" >"$WORK/escape.json"
    check "escape.qcow: the outside backing file is refused" \
        problem_named "$WORK/escape.json" "outside the source directory"
    check "escape.qcow: its own cluster reads" \
        t cmp -n 65536 <(t dd if="$MNT/escape.qcow" bs=64K skip=16 count=1 status=none) \
        <(head -c 65536 /dev/zero | tr '\0' '\067')
    check "escape.qcow: reads that need the backing file fail with EIO" \
        read_fails "$MNT/escape.qcow" 0 4096

    # Damaged and refused images are listed, with a problem.
    check "trunc.hds: bytes equal qemu-img convert -O raw" \
        same_file "$MNT/trunc.hds" "$REF/trunc.hds.raw"
    t cat "$MNT/bigbat.hds.d/info.json" >"$WORK/bigbat.json"
    check "bigbat.hds: qemu-nbd's refusal is in info" \
        problem_named "$WORK/bigbat.json" "qemu-nbd cannot open it: Catalog too large"
    check "bigbat.hds: reads fail with EIO" read_fails "$MNT/bigbat.hds" 0 512
    t cat "$MNT/nokoly.dmg.d/info.json" >"$WORK/nokoly.json"
    check "nokoly.dmg: info says the trailer is missing" \
        problem_named "$WORK/nokoly.json" "no dmg trailer"
    if [ -n "${HAVE_ENC:-}" ]; then
        t cat "$MNT/enc.qcow.d/info.json" >"$WORK/enc.json"
        check "enc.qcow: info says it is encrypted" problem_named "$WORK/enc.json" "encrypted"
    fi

    # Parallel readers through one qemu-nbd.
    check "p1.hds: 4 processes of random reads" \
        probe parallel "$MNT/p1.hds" "$REF/p1.hds.raw" 4 200 7

    # A qemu-nbd that dies is started again by the next read.
    victim=$(pgrep -f "qemu-nbd.*$RUN.*x\\.cloop" | head -n 1)
    if [ -n "$victim" ]; then
        kill -KILL "$victim"
        sleep 0.2
        drop=$(t python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
print("ok")' "$MNT/x.cloop")
        check "x.cloop: page cache dropped" test "$drop" = ok
        check "x.cloop: reads work after its qemu-nbd was killed" \
            same_file "$MNT/x.cloop" "$REF/x.cloop.raw"
    else
        not_ok "x.cloop: its qemu-nbd is running (pgrep)"
    fi
    check "the daemon stays up" daemon_alive
    check "qemu-nbd processes run while mounted" test -n "$(ours)"
    check "vmfs at $MNT unmounts and exits cleanly" vmfs_umount "$MNT"
    check "no qemu-nbd of this test is left after unmount" test -z "$(ours)"
    check "no socket or directory is left in the runtime directory" \
        test -z "$(ls -A "$RUN")"
else
    not_ok "vmfs mounts $SRC"
fi

# Without qemu-nbd: the images still show, info says what to install.
M2=$WORK/m2
if VMFS_QEMU_NBD=/nonexistent/qemu-nbd XDG_RUNTIME_DIR=$RUN vmfs_mount "$SRC" "$M2"; then
    check "no qemu-nbd: p1.hds is listed" test -f "$M2/p1.hds"
    check "no qemu-nbd: its size comes from the header" \
        size_is "$M2/p1.hds" "$(qemu_vsize "$SRC/p1.hds")"
    t cat "$M2/p1.hds.d/info.json" >"$WORK/noqemu.json"
    check "no qemu-nbd: info names the Debian package qemu-utils" \
        problem_named "$WORK/noqemu.json" "qemu-utils"
    check "no qemu-nbd: info still says parallels via qemu-nbd" \
        jq_true "$WORK/noqemu.json" '.format == "parallels via qemu-nbd"'
    check "no qemu-nbd: reads fail with EIO" read_fails "$M2/p1.hds" 0 4096
    check "no qemu-nbd: x.dmg is listed too" test -f "$M2/x.dmg"
    check "no qemu-nbd: the daemon stays up" daemon_alive
    check "vmfs at $M2 unmounts and exits cleanly" vmfs_umount "$M2"
else
    not_ok "vmfs mounts $SRC with VMFS_QEMU_NBD=/nonexistent/qemu-nbd"
fi

# A qemu-nbd first in PATH that cannot run (exits 127).
mkdir -p "$WORK/fakebin"
printf '#!/bin/sh\nexit 127\n' >"$WORK/fakebin/qemu-nbd"
chmod +x "$WORK/fakebin/qemu-nbd"
M3=$WORK/m3
if PATH=$WORK/fakebin:$PATH XDG_RUNTIME_DIR=$RUN vmfs_mount "$SRC" "$M3"; then
    t cat "$M3/q1.qcow.d/info.json" >"$WORK/fake.json"
    check "a qemu-nbd that exits 127: info says it could not be run" \
        problem_named "$WORK/fake.json" "could not be run"
    check "a qemu-nbd that exits 127: reads fail with EIO" read_fails "$M3/q1.qcow" 0 4096
    check "vmfs at $M3 unmounts and exits cleanly" vmfs_umount "$M3"
else
    not_ok "vmfs mounts $SRC with a failing qemu-nbd in PATH"
fi

check "SOURCE is unchanged" unchanged "$SRC" "$WORK/src.state"
check "no qemu-nbd of this test is left" test -z "$(ours)"
finish
