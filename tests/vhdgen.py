#!/usr/bin/env python3
"""vmfs tests: builds VHD images that qemu-img cannot make (differencing
disks with parent locators, other creator applications, damaged copies),
with a known pattern, and writes the raw disk they must read as.

  vhdgen.py make OUT --type fixed|dynamic|diff --size BYTES
        [--block-size BYTES] [--creator APP] [--parent PARENT.vhd]
        [--parent-raw PARENT.raw] [--locator CODE:TEXT]... [--parent-name NAME]
        [--write OFF:LEN:TAG]... [--raw-out EXPECTED.raw]

Writes are OFF:LEN:TAG (sizes take K/M/G suffixes); TAG picks the
pattern.  In a differencing disk every touched sector is marked in its
block's bitmap, and the untouched sectors of its allocated blocks hold
0xEE garbage that a reader honouring the bitmap never shows (qemu 7.2 does
show it).  --parent-raw is the parent's expected raw disk (made by an
earlier run with --raw-out); --raw-out writes this image's.  Locator codes:
W2ru, W2ku (UTF-16LE Windows paths), MacX (a file URL), Wi2r, Wi2k.

  vhdgen.py corrupt IMG WHAT       damage a VHD in place: end-cookie,
        end-checksum, head-checksum, dyn-checksum, bat-past-eof:BLOCK,
        truncate:BYTES, size:BYTES (the current size field of both footers,
        checksums kept right)
"""

import argparse
import os
import struct
import sys
import uuid

SECTOR = 512
UNUSED = 0xFFFFFFFF


def num(text):
    text = text.strip()
    mult = 1
    suffixes = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in suffixes:
        mult = suffixes[text[-1].upper()]
        text = text[:-1]
    return int(text, 0) * mult


# One 512-byte sector of pattern per starting byte value.
_SECTORS = [bytes((b + 7 * i) & 0xFF for i in range(SECTOR)) for b in range(256)]


def pattern(tag, off, length):
    """The pattern bytes of disk range [off, off+length) for tag: each
    sector differs, so a sector read from the wrong place shows."""
    out = bytearray()
    pos = off
    end = off + length
    while pos < end:
        s = pos // SECTOR
        base = (tag * 29 + s * 13 + 1) & 0xFF
        start = pos - s * SECTOR
        n = min(SECTOR - start, end - pos)
        out += _SECTORS[base][start:start + n]
        pos += n
    return bytes(out)


def checksum(buf, skip):
    total = sum(buf[:skip]) + sum(buf[skip + 4:])
    return (~total) & 0xFFFFFFFF


def chs(size):
    """The CHS geometry of the VHD specification for a disk of size bytes."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def footer(dtype, size, creator, data_off, uid):
    cyls, heads, spt = chs(size)
    f = bytearray(SECTOR)
    f[0:8] = b"conectix"
    struct.pack_into(">IIQI", f, 8, 2, 0x10000, data_off, 0x2A000000)
    f[28:32] = creator.encode("latin-1")[:4].ljust(4, b"\0")
    struct.pack_into(">I4sQQHBBI", f, 32, 0x60001, b"Wi2k", size, size, cyls, heads, spt,
                     dtype)
    f[68:84] = uid
    struct.pack_into(">I", f, 64, checksum(f, 64))
    return bytes(f)


def locator_data(code, text):
    if code in ("W2ru", "W2ku"):
        return text.encode("utf-16-le")
    return text.encode("utf-8")


def parent_info(path):
    """The unique id and modification time of a parent VHD (its footer)."""
    with open(path, "rb") as f:
        f.seek(-SECTOR, os.SEEK_END)
        foot = f.read(SECTOR)
    return foot[68:84], struct.unpack_from(">I", foot, 24)[0]


class Image:
    def __init__(self, args):
        self.type = {"fixed": 2, "dynamic": 3, "diff": 4}[args.type]
        self.size = args.size
        self.bs = args.block_size
        self.bitmap = ((self.bs // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
        self.entries = (self.size + self.bs - 1) // self.bs
        self.bat_off = 3 * SECTOR
        self.blocks = {}          # block -> [bitmap bytearray, data bytearray]
        self.fixed = bytearray(self.size) if self.type == 2 else None
        if args.parent_raw:
            with open(args.parent_raw, "rb") as f:
                self.parent = f.read()
        else:
            self.parent = b""

    def block(self, b):
        if b not in self.blocks:
            fill = 0xEE if self.type == 4 else 0
            self.blocks[b] = [bytearray(self.bitmap), bytearray([fill]) * self.bs]
        return self.blocks[b]

    def write(self, off, length, tag):
        data = pattern(tag, off, length)
        if self.fixed is not None:
            self.fixed[off:off + length] = data
            return
        pos = off
        while pos < off + length:
            b, inb = divmod(pos, self.bs)
            n = min(self.bs - inb, off + length - pos)
            bm, blk = self.block(b)
            blk[inb:inb + n] = data[pos - off:pos - off + n]
            for s in range(inb // SECTOR, (inb + n - 1) // SECTOR + 1):
                if self.type == 4 and not bm[s // 8] >> (7 - s % 8) & 1:
                    # A newly marked sector: its untouched bytes are zeros.
                    lo, hi = s * SECTOR, (s + 1) * SECTOR
                    keep = blk[max(lo, inb):min(hi, inb + n)]
                    blk[lo:hi] = bytes(SECTOR)
                    blk[max(lo, inb):min(hi, inb + n)] = keep
                bm[s // 8] |= 0x80 >> (s % 8)
            pos += n

    def expected(self):
        if self.fixed is not None:
            return bytes(self.fixed)
        out = bytearray(self.size)
        par = self.parent[:self.size].ljust(self.size, b"\0")
        for b in range(self.entries):
            lo, hi = b * self.bs, min((b + 1) * self.bs, self.size)
            if b not in self.blocks:
                out[lo:hi] = par[lo:hi] if self.type == 4 else bytes(hi - lo)
                continue
            bm, blk = self.blocks[b]
            if self.type != 4:
                out[lo:hi] = blk[:hi - lo]
                continue
            for s in range((hi - lo) // SECTOR):
                a = lo + s * SECTOR
                src = blk if bm[s // 8] >> (7 - s % 8) & 1 else None
                out[a:a + SECTOR] = src[s * SECTOR:(s + 1) * SECTOR] if src else par[a:a + SECTOR]
        return bytes(out)


def dyn_header(img, args, bat_len, locs):
    h = bytearray(1024)
    h[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", h, 8, 0xFFFFFFFFFFFFFFFF, img.bat_off, 0x10000, img.entries,
                     img.bs)
    if img.type == 4:
        puid, pts = parent_info(args.parent) if args.parent else (bytes(16), 0)
        h[40:56] = puid
        struct.pack_into(">I", h, 56, pts)
        name = (args.parent_name or "").encode("utf-16-be")[:510]
        h[64:64 + len(name)] = name
        for i, (code, off, data) in enumerate(locs):
            struct.pack_into(">4sIIIQ", h, 576 + 24 * i, code.encode(), (len(data) + 511) // 512,
                             len(data), 0, off)
    struct.pack_into(">I", h, 36, checksum(h, 36))
    return bytes(h)


def build(args):
    img = Image(args)
    for w in args.write:
        off, length, tag = w.split(":")
        img.write(num(off), num(length), int(tag, 0))
    uid = uuid.uuid4().bytes
    if img.type == 2:
        return bytes(img.fixed) + footer(2, img.size, args.creator, 0xFFFFFFFFFFFFFFFF, uid), img
    bat_len = (img.entries * 4 + SECTOR - 1) // SECTOR * SECTOR
    pos = img.bat_off + bat_len
    locs = []
    for spec in args.locator:
        code, text = spec.split(":", 1)
        data = locator_data(code, text)
        locs.append((code, pos, data))
        pos += (len(data) + SECTOR - 1) // SECTOR * SECTOR
    bat = [UNUSED] * img.entries
    body = bytearray()
    for b in sorted(img.blocks, reverse=True):     # blocks out of guest order
        bat[b] = (pos + len(body)) // SECTOR
        bm, blk = img.blocks[b]
        body += bm + blk
    foot = footer(img.type, img.size, args.creator, SECTOR, uid)
    out = bytearray(foot)
    out += dyn_header(img, args, bat_len, locs)
    out += struct.pack(">%dI" % img.entries, *bat).ljust(bat_len, b"\xff")
    for _code, _off, data in locs:
        out += data.ljust((len(data) + SECTOR - 1) // SECTOR * SECTOR, b"\0")
    out += body + foot
    return bytes(out), img


def corrupt(path, what):
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if what == "end-cookie":
            f.seek(size - SECTOR)
            f.write(b"XXXXXXXX")
        elif what == "end-checksum":
            f.seek(size - SECTOR + 64)
            f.write(b"\x12\x34\x56\x78")
        elif what == "head-checksum":
            f.seek(64)
            f.write(b"\x12\x34\x56\x78")
        elif what == "dyn-checksum":
            f.seek(SECTOR + 36)
            f.write(b"\x12\x34\x56\x78")
        elif what.startswith("bat-past-eof:"):
            block = int(what.split(":")[1])
            f.seek(SECTOR + 16)
            bat_off = struct.unpack(">Q", f.read(8))[0]
            f.seek(bat_off + 4 * block)
            f.write(struct.pack(">I", 0x7FFFFF00))
        elif what.startswith("size:"):
            for off in (0, size - SECTOR):
                f.seek(off)
                foot = bytearray(f.read(SECTOR))
                if foot[:8] != b"conectix":
                    continue
                struct.pack_into(">Q", foot, 48, num(what.split(":")[1]))
                struct.pack_into(">I", foot, 64, checksum(foot, 64))
                f.seek(off)
                f.write(foot)
        elif what.startswith("truncate:"):
            f.truncate(num(what.split(":")[1]))
        else:
            sys.exit("unknown damage " + what)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("out")
    mk.add_argument("--type", required=True, choices=["fixed", "dynamic", "diff"])
    mk.add_argument("--size", required=True, type=num)
    mk.add_argument("--block-size", type=num, default=2 << 20)
    mk.add_argument("--creator", default="win ")
    mk.add_argument("--parent")
    mk.add_argument("--parent-raw")
    mk.add_argument("--parent-name")
    mk.add_argument("--locator", action="append", default=[])
    mk.add_argument("--write", action="append", default=[])
    mk.add_argument("--raw-out")
    co = sub.add_parser("corrupt")
    co.add_argument("img")
    co.add_argument("what")
    args = ap.parse_args()
    if args.cmd == "corrupt":
        corrupt(args.img, args.what)
        return
    data, img = build(args)
    with open(args.out, "wb") as f:
        f.write(data)
    if args.raw_out:
        with open(args.raw_out, "wb") as f:
            f.write(img.expected())


if __name__ == "__main__":
    main()
