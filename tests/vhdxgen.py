#!/usr/bin/env python3
"""vhdxgen: VHDX images qemu-img cannot make, for vmfs's tests.

    vhdxgen.py all OUTDIR

writes OUTDIR/img/ (the images, as a directory vmfs can mount),
OUTDIR/expect/NAME.raw (the disk each readable image must show, built from
known patterns) and OUTDIR/MANIFEST (one "NAME KIND" line per image: good,
bad (cannot be opened) or damaged (opens, with reads failing somewhere)).

Images (all small):
  dyn4k.vhdx          dynamic, 4096-byte logical sectors, every block state
  base.vhdx           a parent (512-byte sectors, 2 MiB blocks)
  child.avhdx         its differencing child: partially present blocks with
                      sector bitmaps, parent locator with relative path
  grand.avhdx         a child of child.avhdx named by a Windows path only
  base4k.vhdx, child4k.avhdx   the same with 4096-byte sectors
  dirty.vhdx          a pending log of three entries (BAT, metadata, payload
                      and zero descriptors, data past the end of the file)
  dirty-wrap.vhdx     the same log wrapping around the end of the log area,
                      with an older, stale sequence elsewhere in it
  dirty-badentry.vhdx the last entry of the log fails its checksum
  hdr2bad.vhdx        the newer header damaged: the older one is used
  region1bad.vhdx     region table 1 damaged: table 2 is used
  bat-eof.vhdx        a BAT entry past the end of the file (damaged)
  trunc.vhdx          the file cut inside a payload block (damaged)
  orphan.avhdx        a child whose parent does not exist (damaged)
  loop-a.avhdx, loop-b.avhdx   children naming each other (damaged)
  linkage.avhdx       parent_linkage does not match the parent (damaged)
  hdrbad.vhdx         both headers damaged (bad)
  huge.vhdx           a virtual size of 1 PiB (bad)
  bs3m.vhdx           a 3 MiB block size (bad)
  badmagic.vhdx       no "vhdxfile" identifier (bad)

Python 3 standard library only.  Every structure is written from the
MS-VHDX layout; docs/formats/vhdx.md describes it.
"""

import os
import struct
import sys
import uuid

MB = 1 << 20
LOG_OFF, MD_OFF, BAT_OFF, DATA_OFF = 1 * MB, 2 * MB, 3 * MB, 4 * MB
LOG_LEN = MB

G_BAT = "2DC27766-F623-4200-9D64-115E9BFD4A08"
G_METADATA = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
G_PARAMS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
G_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
G_DISK_ID = "BECA12AB-B2E6-4523-93EF-C309E000C746"
G_LOGICAL = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
G_PHYSICAL = "CDA348C7-445D-4471-9CC9-E9885251C556"
G_PARENT = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
G_LOCATOR_VHDX = "B04AEFB7-D19E-4A81-B789-25B8E9445913"

NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULL, PARTIAL = 0, 1, 2, 3, 6, 7


def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


CRC_TABLE = _crc_table()


def crc32c(data, crc=0):
    c = crc ^ 0xFFFFFFFF
    t = CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def guid(text):
    """A GUID in the on-disk (mixed-endian) layout."""
    return uuid.UUID(text).bytes_le


def guid_text(raw):
    return "{%s}" % str(uuid.UUID(bytes_le=bytes(raw)))


def sector_pattern(tag, sector, lss):
    """A sector no other (tag, sector) pair shares."""
    return struct.pack("<II", tag, sector) + bytes([(tag * 31 + sector) & 0xFF]) * (lss - 8)


def utf16(text):
    return text.encode("utf-16-le")


def write_sparse(path, data):
    """Writes data leaving runs of zeros as holes (less I/O, small files)."""
    step = 65536
    zero = bytes(step)
    view = memoryview(data)
    with open(path, "wb") as f:
        for off in range(0, len(data), step):
            piece = view[off:off + step]
            if piece == zero[:len(piece)]:
                f.seek(len(piece), os.SEEK_CUR)
            else:
                f.write(piece)
        f.truncate(len(data))


class Vhdx:
    """An image under construction: headers, log at 1 MiB, metadata at
    2 MiB, BAT at 3 MiB, payload from 4 MiB.  expect is the disk it must
    show (the parent's bytes where it has none of its own)."""

    def __init__(self, size, bs=2 * MB, lss=512, parent=None, fixed=False, name="x"):
        self.size, self.bs, self.lss = size, bs, lss
        self.has_parent = parent is not None
        self.fixed = fixed
        self.cr = (1 << 23) * lss // bs
        self.f = bytearray(DATA_OFF)
        self.next = DATA_OFF
        self.dwg = uuid.uuid5(uuid.NAMESPACE_URL, "vmfs-dwg-" + name).bytes_le
        self.log_guid = bytes(16)
        self.hseq = [7, 8]
        self.locator = []
        self.expect = bytearray(parent.expect) if parent else bytearray(size)
        self.md_size = size      # the virtual size the metadata states

    def grow(self, size):
        if size > len(self.f):
            self.f.extend(bytes(size - len(self.f)))

    def put(self, off, data):
        self.grow(off + len(data))
        self.f[off:off + len(data)] = data

    def alloc(self, n):
        off = self.next
        self.next += -(-n // MB) * MB
        self.grow(self.next)
        return off

    def set_bat(self, idx, state, off=0):
        struct.pack_into("<Q", self.f, BAT_OFF + idx * 8, state | off)

    def block(self, b, state, off=0):
        self.set_bat(b + b // self.cr, state, off)

    def block_bytes(self, b, tag):
        lss = self.lss
        first = b * self.bs // lss
        return b"".join(sector_pattern(tag, first + i, lss) for i in range(self.bs // lss))

    def data_block(self, b, tag):
        """Block b fully present with pattern tag."""
        off = self.alloc(self.bs)
        data = self.block_bytes(b, tag)
        self.put(off, data)
        self.block(b, FULL, off)
        start = b * self.bs
        n = min(self.bs, self.size - start)
        self.expect[start:start + n] = data[:n]
        return off

    def partial_block(self, b, tag, runs):
        """Block b partially present: sectors [s, s+n) of each run (block
        relative) are this image's, the rest the parent's."""
        lss = self.lss
        chunk = b // self.cr
        sb_idx = chunk * (self.cr + 1) + self.cr
        sb_off = struct.unpack_from("<Q", self.f, BAT_OFF + sb_idx * 8)[0] & ~0xFFFFF
        if sb_off == 0:
            sb_off = self.alloc(MB)
            self.set_bat(sb_idx, 6, sb_off)
        off = self.alloc(self.bs)
        junk = bytes([0xDD]) * self.bs      # what clear bits hide
        self.put(off, junk)
        data = self.block_bytes(b, tag)
        base = (b % self.cr) * (self.bs // lss)
        for s, n in runs:
            for k in range(s, s + n):
                bit = base + k
                self.f[sb_off + bit // 8] |= 1 << (bit % 8)
                self.put(off + k * lss, data[k * lss:(k + 1) * lss])
                v = b * self.bs + k * lss
                self.expect[v:v + lss] = data[k * lss:(k + 1) * lss]
        self.block(b, PARTIAL, off)

    def zero_block(self, b, state=ZERO):
        self.block(b, state)
        start = b * self.bs
        n = min(self.bs, self.size - start)
        self.expect[start:start + n] = bytes(n)

    # ---- the structures ------------------------------------------------

    def header(self, i):
        h = bytearray(4096)
        h[0:4] = b"head"
        struct.pack_into("<Q", h, 8, self.hseq[i])
        h[16:32] = uuid.uuid5(uuid.NAMESPACE_URL, "vmfs-fwg").bytes_le
        h[32:48] = self.dwg
        h[48:64] = self.log_guid
        struct.pack_into("<HHIQ", h, 64, 0, 1, LOG_LEN, LOG_OFF)
        struct.pack_into("<I", h, 4, crc32c(h))
        return h

    def region_table(self):
        t = bytearray(65536)
        t[0:4] = b"regi"
        struct.pack_into("<I", t, 8, 2)
        t[16:32] = guid(G_BAT)
        struct.pack_into("<QII", t, 32, BAT_OFF, MB, 1)
        t[48:64] = guid(G_METADATA)
        struct.pack_into("<QII", t, 64, MD_OFF, MB, 1)
        struct.pack_into("<I", t, 4, crc32c(t))
        return t

    def locator_item(self):
        n = len(self.locator)
        head = bytearray(20 + 12 * n)
        head[0:16] = guid(G_LOCATOR_VHDX)
        struct.pack_into("<H", head, 18, n)
        strings = bytearray()
        at = len(head)
        for i, (k, v) in enumerate(self.locator):
            kb, vb = utf16(k), utf16(v)
            struct.pack_into("<IIHH", head, 20 + 12 * i, at, at + len(kb), len(kb), len(vb))
            strings += kb + vb
            at += len(kb) + len(vb)
        return bytes(head + strings)

    def metadata(self):
        t = bytearray(MB)
        t[0:8] = b"metadata"
        items = [
            (G_PARAMS, struct.pack("<II", self.bs, (1 if self.fixed else 0) |
                                   (2 if self.has_parent else 0)), 4),
            (G_SIZE, struct.pack("<Q", self.md_size), 6),
            (G_LOGICAL, struct.pack("<I", self.lss), 6),
            (G_PHYSICAL, struct.pack("<I", 4096), 6),
            (G_DISK_ID, uuid.uuid5(uuid.NAMESPACE_URL, "vmfs-disk").bytes_le, 6),
        ]
        if self.has_parent:
            items.append((G_PARENT, self.locator_item(), 4))
        at = 65536
        for i, (g, data, flags) in enumerate(items):
            struct.pack_into("<16sIII", t, 32 + 32 * i, guid(g), at, len(data), flags)
            t[at:at + len(data)] = data
            at += -(-len(data) // 8) * 8
        struct.pack_into("<H", t, 10, len(items))
        return t

    def finish(self):
        ident = bytearray(65536)
        ident[0:8] = b"vhdxfile"
        c = utf16("vmfs vhdxgen")
        ident[8:8 + len(c)] = c
        self.put(0, ident)
        self.put(0x10000, self.header(0))
        self.put(0x20000, self.header(1))
        self.put(0x30000, self.region_table())
        self.put(0x40000, self.region_table())
        self.put(MD_OFF, self.metadata())

    def save(self, path, finish=True):
        if finish:
            self.finish()
        write_sparse(path, self.f)


# ---- logs ---------------------------------------------------------------

def log_entry(seq, tail, log_guid, ops, flushed, last):
    """A log entry: ops are ("data", off, 4096 bytes) or ("zero", off, len)."""
    ndata = sum(1 for o in ops if o[0] == "data")
    dsect = (64 + 32 * len(ops) + 4095) // 4096
    e = bytearray((dsect + ndata) * 4096)
    e[0:4] = b"loge"
    struct.pack_into("<IIQI4x16sQQ", e, 8, len(e), tail * 4096, seq, len(ops),
                     log_guid, flushed, last)
    k = 0
    for i, o in enumerate(ops):
        at = 64 + 32 * i
        if o[0] == "zero":
            struct.pack_into("<4sIQQQ", e, at, b"zero", 0, o[2], o[1], seq)
            continue
        data = o[2]
        struct.pack_into("<4s4s8sQQ", e, at, b"desc", data[4092:4096], data[0:8], o[1], seq)
        s = (dsect + k) * 4096
        e[s:s + 4] = b"data"
        struct.pack_into("<I", e, s + 4, seq >> 32)
        e[s + 8:s + 4092] = data[8:4092]
        struct.pack_into("<I", e, s + 4092, seq & 0xFFFFFFFF)
        k += 1
    struct.pack_into("<I", e, 4, crc32c(e))
    return e


def put_log(img, at, entry):
    """Writes an entry at log sector at, wrapping at the end of the log."""
    n = LOG_LEN // 4096
    for i in range(len(entry) // 4096):
        s = (at + i) % n
        img.put(LOG_OFF + s * 4096, entry[i * 4096:(i + 1) * 4096])
    return at + len(entry) // 4096


def apply_ops(buf, ops):
    for o in ops:
        if o[0] == "data":
            buf[o[1]:o[1] + 4096] = o[2]
        else:
            buf[o[1]:o[1] + o[2]] = bytes(o[2])


def dirty(name, wrap=False, bad_last=False):
    """A dynamic image whose last changes sit in a pending log.  On disk:
    blocks 0 and 3 present, virtual size 12 MiB, block 1's payload written
    but not yet in the BAT.  The log: entry 1 puts block 1 in the BAT and
    grows the virtual size to 14 MiB; entry 2 zeros 16 KiB of block 0 and
    rewrites a sector of block 3; entry 3 puts block 6 in the BAT and
    writes its first and last sectors, past the end of the file (the last
    one ends the block, so that qemu, which does not extend the file to
    LastFileOffset, finds the whole block in the file too)."""
    img = Vhdx(12 * MB, name=name)
    img.data_block(0, 0x31)
    img.data_block(3, 0x32)
    b1 = img.alloc(img.bs)
    img.put(b1, img.block_bytes(1, 0x33))
    img.log_guid = uuid.uuid5(uuid.NAMESPACE_URL, "vmfs-log-" + name).bytes_le
    img.finish()
    file_end = len(img.f)
    b6 = file_end + MB
    last = b6 + img.bs

    def sector(buf, off):
        return bytes(buf[off:off + 4096])

    work = bytearray(img.f)
    size_item = MD_OFF + 65536 + 8
    struct.pack_into("<Q", work, BAT_OFF + 1 * 8, FULL | b1)
    struct.pack_into("<Q", work, size_item, 14 * MB)
    e1 = [("data", BAT_OFF, sector(work, BAT_OFF)),
          ("data", MD_OFF + 65536, sector(work, MD_OFF + 65536))]
    blk0 = struct.unpack_from("<Q", img.f, BAT_OFF)[0] & ~0xFFFFF
    blk3 = struct.unpack_from("<Q", img.f, BAT_OFF + 3 * 8)[0] & ~0xFFFFF
    e2 = [("zero", blk0 + 0x3000, 0x4000),
          ("data", blk3 + 0x7000, sector_pattern(0x34, 9, 512) * 8)]
    struct.pack_into("<Q", work, BAT_OFF + 6 * 8, FULL | b6)
    b6_data = img.block_bytes(6, 0x35)
    e3 = [("data", BAT_OFF, sector(work, BAT_OFF)),
          ("data", b6, b6_data[0:4096]),
          ("data", b6 + img.bs - 4096, b6_data[-4096:])]
    entries = [(e1, file_end), (e2, file_end), (e3, last)]
    applied = entries[:2] if bad_last else entries

    first = 252 if wrap else 0
    seq0 = 0x1_0000_0005             # sequence numbers above 32 bits
    if wrap:
        # An older, complete sequence elsewhere in the log, superseded.
        stale = log_entry(seq0 - 10, 40, img.log_guid,
                          [("zero", blk0, 0x100000)], file_end, file_end)
        put_log(img, 40, stale)
    at = first
    for i, (ops, last_off) in enumerate(entries):
        e = log_entry(seq0 + i, first, img.log_guid, ops, file_end, last_off)
        if bad_last and i == len(entries) - 1:
            e[200] ^= 0x20
        at = put_log(img, at, e)

    # The disk after replay: the file as it was, the applied entries over it.
    final = bytearray(img.f)
    final.extend(bytes(applied[-1][1] - len(final)) if applied[-1][1] > len(final) else b"")
    for ops, _ in applied:
        for o in ops:
            end = o[1] + (4096 if o[0] == "data" else o[2])
            if end > len(final):
                final.extend(bytes(end - len(final)))
        apply_ops(final, ops)
    size = struct.unpack_from("<Q", final, size_item)[0]
    exp = bytearray(size)
    for b in range(-(-size // img.bs)):
        e = struct.unpack_from("<Q", final, BAT_OFF + (b + b // img.cr) * 8)[0]
        if e & 7 == FULL:
            off = e & ~0xFFFFF
            n = min(img.bs, size - b * img.bs)
            exp[b * img.bs:b * img.bs + n] = final[off:off + n].ljust(n, b"\0")
    img.expect = exp
    return img


# ---- the set ------------------------------------------------------------

def build(out):
    imgdir = os.path.join(out, "img")
    expdir = os.path.join(out, "expect")
    os.makedirs(imgdir, exist_ok=True)
    os.makedirs(expdir, exist_ok=True)
    manifest = []

    def save(img, name, kind="good", finish=True):
        img.save(os.path.join(imgdir, name), finish)
        if kind != "bad":
            write_sparse(os.path.join(expdir, name + ".raw"), img.expect)
        manifest.append("%s %s" % (name, kind))

    # Dynamic, 4 KiB sectors, every payload state; 1 MiB blocks, the
    # last one partial.
    d = Vhdx(9 * MB + 12288, bs=MB, lss=4096, name="dyn4k")
    d.data_block(0, 0x11)
    d.data_block(1, 0x12)
    d.zero_block(2, ZERO)
    d.zero_block(3, UNMAPPED)
    d.zero_block(4, UNDEFINED)
    d.data_block(5, 0x13)
    d.data_block(9, 0x14)
    save(d, "dyn4k.vhdx")

    for lss, sfx in ((512, ""), (4096, "4k")):
        base = Vhdx(10 * MB + 2 * lss, lss=lss, name="base" + sfx)
        for b in range(6):
            base.data_block(b, 0x20 + b)
        save(base, "base%s.vhdx" % sfx)
        spb = base.bs // lss
        child = Vhdx(base.size, lss=lss, parent=base, name="child" + sfx)
        child.partial_block(0, 0x40, [(0, 8), (100, 1), (spb - 3, 3)])
        child.data_block(1, 0x41)
        child.zero_block(2)
        child.partial_block(3, 0x42, [(1, spb - 2)])
        child.block(4, NOT_PRESENT)
        child.partial_block(5, 0x43, [(0, 1)])
        child.locator = [("parent_linkage", guid_text(base.dwg)),
                         ("relative_path", ".\\base%s.vhdx" % sfx),
                         ("volume_path", "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}"
                                         "\\VMs\\base%s.vhdx" % sfx),
                         ("absolute_win32_path", "C:\\VMs\\base%s.vhdx" % sfx)]
        save(child, "child%s.avhdx" % sfx)
        if lss == 512:
            grand = Vhdx(base.size, lss=lss, parent=child, name="grand")
            grand.partial_block(3, 0x50, [(10, 20)])
            grand.data_block(4, 0x51)
            grand.locator = [("parent_linkage", guid_text(child.dwg)),
                             ("absolute_win32_path",
                              "E:\\Hyper-V\\Snapshots\\child.avhdx")]
            save(grand, "grand.avhdx")
            linkage = Vhdx(base.size, lss=lss, parent=base, name="linkage")
            linkage.data_block(2, 0x52)
            linkage.locator = [("parent_linkage", "{00000000-1111-2222-3333-444444444444}"),
                               ("relative_path", "base.vhdx")]
            save(linkage, "linkage.avhdx", "damaged")

    save(dirty("dirty"), "dirty.vhdx")
    save(dirty("dirty-wrap", wrap=True), "dirty-wrap.vhdx")
    save(dirty("dirty-badentry", bad_last=True), "dirty-badentry.vhdx", "damaged")

    def plain(name, tags=(0x61, 0x62, 0x63)):
        img = Vhdx(8 * MB, name=name)
        for b, t in enumerate(tags):
            img.data_block(b, t)
        img.hseq = [3, 4]
        img.finish()
        return img

    img = plain("hdr2bad")
    img.f[0x20000 + 100] ^= 1
    save(img, "hdr2bad.vhdx", "damaged", finish=False)
    img = plain("region1bad")
    img.f[0x30000 + 20] ^= 1
    save(img, "region1bad.vhdx", "damaged", finish=False)
    img = plain("bat-eof")
    img.block(2, FULL, 500 * MB)
    img.expect[4 * MB:6 * MB] = bytes(2 * MB)    # block 2 fails (EIO), not zeros
    save(img, "bat-eof.vhdx", "damaged")
    img = plain("trunc")
    img.f = img.f[:len(img.f) - MB]              # block 2 cut in half
    save(img, "trunc.vhdx", "damaged", finish=False)
    img = plain("hdrbad")
    img.f[0x10000 + 100] ^= 1
    img.f[0x20000 + 100] ^= 1
    save(img, "hdrbad.vhdx", "bad", finish=False)
    img = plain("badmagic")
    img.f[0:8] = b"vhdxfilz"
    save(img, "badmagic.vhdx", "bad", finish=False)
    img = plain("huge")
    img.md_size = 1 << 50
    save(img, "huge.vhdx", "bad")
    img = plain("bs3m")
    img.bs = 3 * MB
    save(img, "bs3m.vhdx", "bad")

    base = Vhdx(8 * MB, name="orphanbase")
    orphan = Vhdx(8 * MB, parent=base, name="orphan")
    orphan.data_block(1, 0x71)
    orphan.locator = [("relative_path", "no-such-parent.vhdx"),
                      ("absolute_win32_path", "C:\\VMs\\no-such-parent.vhdx")]
    save(orphan, "orphan.avhdx", "damaged")
    for me, other in (("loop-a", "loop-b"), ("loop-b", "loop-a")):
        img = Vhdx(8 * MB, parent=base, name=me)
        img.data_block(1, 0x72)
        img.locator = [("relative_path", other + ".avhdx")]
        save(img, me + ".avhdx", "damaged")

    with open(os.path.join(out, "MANIFEST"), "w") as f:
        f.write("\n".join(manifest) + "\n")


def main(argv):
    if len(argv) != 3 or argv[1] != "all":
        sys.stderr.write("usage: vhdxgen.py all OUTDIR\n")
        return 2
    build(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
