#!/usr/bin/env python3
"""lvmseed: a small raw disk with LVM2 on it, a seed for fuzz.sh.

    lvmseed.py OUT

16 MiB: an MBR with two partitions of type 0x8e at 1 MiB and 7 MiB, each a
PV (label in sector 1, one metadata area at 4 KiB, extents from 1 MiB on,
64 KiB each) of one VG "vg" with three LVs: "lin" (linear on pv0), "two"
(two segments, one on each PV) and "str" (striped over both, 64 KiB
stripes).  Every sector outside the metadata holds a pattern.  Made here
because host LVM tools cannot run without device-mapper.
"""

import struct
import sys

MIB = 1 << 20
DISK = 16 * MIB
PVS = [(1 * MIB, "A" * 31 + "0", "pv0"), (7 * MIB, "B" * 31 + "1", "pv1")]
PV_SIZE = 6 * MIB
MDA_OFF = 4096
MDA_SIZE = MIB - 4096
PE_START = MIB
TEXT_OFF = 512                 # of the text, inside the metadata area


def crc_lvm(data):
    crc = 0xF597A6CF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def dashed(uuid):
    return "-".join(uuid[a:b] for a, b in ((0, 6), (6, 10), (10, 14), (14, 18), (18, 22),
                                            (22, 26), (26, 32)))


def segment(n, start, count, stripes, stripe_size=None):
    text = "segment%d {\nstart_extent = %d\nextent_count = %d\n\ntype = \"striped\"\n" % (
        n, start, count)
    text += "stripe_count = %d\n" % len(stripes)
    if stripe_size:
        text += "stripe_size = %d\n" % stripe_size
    text += "\nstripes = [\n%s\n]\n}\n" % ",\n".join('"%s", %d' % s for s in stripes)
    return text


def lv(name, segments):
    body = "".join(segments)
    return ("\n%s {\nid = \"lvlvlv-lvlv-lvlv-lvlv-lvlv-lvlv-%s\"\n"
            "status = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\n"
            "creation_time = 1700000000\ncreation_host = \"seed\"\n"
            "segment_count = %d\n\n%s}\n" % (name, name[:6].ljust(6, "x"), len(segments), body))


def vg_text():
    pe_count = (PV_SIZE - PE_START) // (64 << 10)
    pvs = "".join("\n%s {\nid = \"%s\"\ndevice = \"/dev/sda%d\"\nstatus = [\"ALLOCATABLE\"]\n"
                  "flags = []\ndev_size = %d\npe_start = %d\npe_count = %d\n}\n"
                  % (name, dashed(uuid), i + 1, PV_SIZE // 512, PE_START // 512, pe_count)
                  for i, (_, uuid, name) in enumerate(PVS))
    lvs = (lv("lin", [segment(1, 0, 8, [("pv0", 0)])])
           + lv("two", [segment(1, 0, 4, [("pv0", 8)]), segment(2, 4, 4, [("pv1", 0)])])
           + lv("str", [segment(1, 0, 16, [("pv0", 12), ("pv1", 4)], 128)]))
    return ("# made by lvmseed.py\n\nvg {\nid = \"vgvgvg-vgvg-vgvg-vgvg-vgvg-vgvg-vgvgvg\"\n"
            "seqno = 3\nformat = \"lvm2\"\nstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\n"
            "flags = []\nextent_size = 128\nmax_lv = 0\nmax_pv = 0\nmetadata_copies = 0\n\n"
            "physical_volumes {\n%s}\n\nlogical_volumes {\n%s}\n}\n"
            "contents = \"Text Format Volume Group\"\nversion = 1\n\n"
            "description = \"\"\n\ncreation_host = \"seed\"\ncreation_time = 1700000000\n"
            % (pvs, lvs)).encode() + b"\0"


def main():
    out = sys.argv[1]
    disk = bytearray(DISK)
    for sector in range(DISK // 512):
        disk[sector * 512:sector * 512 + 8] = struct.pack("<Q", sector * 0x9E3779B1 + 1)
    mbr = bytearray(512)
    for slot, (start, _, _) in enumerate(PVS):
        mbr[446 + 16 * slot:462 + 16 * slot] = struct.pack(
            "<B3sB3sII", 0, b"\0\0\0", 0x8E, b"\0\0\0", start // 512, PV_SIZE // 512)
    mbr[510:512] = b"\x55\xaa"
    disk[0:512] = mbr
    text = vg_text()
    for start, uuid, _ in PVS:
        disk[start:start + PE_START] = bytes(PE_START)
        label = bytearray(512)
        label[0:8] = b"LABELONE"
        struct.pack_into("<QII8s", label, 8, 1, 0, 32, b"LVM2 001")
        label[32:64] = uuid.encode()
        struct.pack_into("<QQQQQQQ", label, 64, PV_SIZE, PE_START, 0, 0, 0, MDA_OFF, MDA_SIZE)
        struct.pack_into("<I", label, 16, crc_lvm(label[20:]))
        disk[start + 512:start + 1024] = label
        mda = bytearray(512)
        mda[4:20] = b" LVM2 x[5A%r0N*>"
        struct.pack_into("<IQQQQII", mda, 20, 1, MDA_OFF, MDA_SIZE, TEXT_OFF, len(text),
                         crc_lvm(text), 0)
        struct.pack_into("<I", mda, 0, crc_lvm(mda[4:]))
        base = start + MDA_OFF
        disk[base:base + 512] = mda
        disk[base + TEXT_OFF:base + TEXT_OFF + len(text)] = text
    with open(out, "wb") as f:
        f.write(disk)


if __name__ == "__main__":
    main()
