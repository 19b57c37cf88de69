#!/usr/bin/env python3
"""vmfs integration tests: the checks that are awkward in shell.

Every subcommand prints one line per problem it finds and exits 1 when it
found any, 0 otherwise (2 for a usage error).  Sizes and offsets accept a
K/M/G suffix (powers of 1024) and 0x prefixes.

  extents FILE                  print the data extents lseek(SEEK_DATA/SEEK_HOLE)
                                reports, one "START END" line each
  holes FLAT REF MAP.json       the hole map of FLAT against `qemu-img map
                                --output=json` of the image (MAP) and the raw
                                reference REF: every hole FLAT reports reads
                                as zeros in REF, and every range MAP calls
                                "data": false is a hole in FLAT
  sparse FLAT                   st_blocks * 512 < st_size
  same FLAT REF                 FLAT equals REF, without reading long holes
                                whole: the data extents FLAT reports are
                                compared, REF must be zero in FLAT's holes,
                                and samples of each hole must read as zeros
  erofs FILE DIR                every way of writing FILE or creating in DIR
                                fails with EROFS
  ranges FLAT REF SPEC...       SPEC is ok:OFF:LEN (FLAT equals REF there),
                                eio:OFF:LEN (reading FLAT there fails with EIO)
                                or okeio:OFF:LEN (either, never other bytes)
  parallel FLAT REF NPROC NREADS SEED
                                NPROC processes each pread NREADS random ranges
                                of FLAT, dropped from the page cache first, and
                                compare them with REF
  fill FLAT REF OFF LO HI yes|no
                                drop FLAT from the page cache, read the page
                                at OFF as a random reader would (FLAT equals
                                REF there), then: yes, every page of [LO, HI)
                                comes into the page cache within 10 s and
                                then reads as REF; no, none but the one read
                                does within a second
  mkraw FILE SIZE [OFF:LEN:FILL]...
                                create a sparse raw file; FILL is a byte (0xNN),
                                "rand" (seeded by the offset) or "text"
  qcow2-header IMG              the qcow2 header fields as JSON
  qcow2-poke IMG OFF BITS VAL   store VAL big-endian (BITS 8/16/32/64) at OFF
  qcow2-l1 IMG INDEX [VAL]      print, or set, an L1 entry
  qcow2-l2 IMG GUEST_OFF [VAL]  print, or set, the L2 entry of a guest offset
  qcow2-host IMG GUEST_OFF      print the host offset of a data cluster
  qcow2-corrupt-compressed IMG GUEST_OFF
                                overwrite the start of the compressed cluster
                                holding GUEST_OFF with bytes no decoder accepts
"""

import ctypes
import errno
import json
import multiprocessing
import os
import random
import struct
import sys
import time

CHUNK = 1 << 20


def u64(text):
    """A 64-bit table entry; negative input is bash's two's complement."""
    return num(text) & 0xffffffffffffffff


def num(text):
    """Parses 4096, 0x1000, 4K, 1M, 2G."""
    text = text.strip()
    mult = 1
    suffixes = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1].upper() in suffixes:
        mult = suffixes[text[-1].upper()]
        text = text[:-1]
    return int(text, 0) * mult


class Report:
    """Counts problems; each is printed once."""

    def __init__(self):
        self.problems = 0

    def bad(self, msg):
        self.problems += 1
        print(msg)
        sys.stdout.flush()

    def exit(self):
        sys.exit(1 if self.problems else 0)


def data_extents(path):
    """The data extents of path as [start, end) pairs, from SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            if end <= start:
                raise OSError(errno.EINVAL, "SEEK_HOLE at %d returned %d" % (start, end))
            out.append((start, min(end, size)))
            pos = end
        return out
    finally:
        os.close(fd)


def holes_of(extents, size):
    out = []
    pos = 0
    for start, end in extents:
        if start > pos:
            out.append((pos, start))
        pos = end
    if pos < size:
        out.append((pos, size))
    return out


def is_zero(fd, start, end):
    """[start, end) of fd reads as zeros; fd is a local file, whose own holes
    are skipped."""
    pos = start
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return os.fstat(fd).st_size >= end
            raise
        if pos >= end:
            return True
        n = min(CHUNK, end - pos)
        buf = os.pread(fd, n, pos)
        if len(buf) != n or buf.count(0) != n:
            return False
        pos += n
    return True


def cmd_extents(args):
    for start, end in data_extents(args[0]):
        print(start, end)
    return 0


def cmd_holes(args):
    flat, ref, mapfile = args
    rep = Report()
    size = os.stat(flat).st_size
    try:
        extents = data_extents(flat)
    except OSError as e:
        rep.bad("%s: lseek failed: %s" % (flat, e))
        rep.exit()
    holes = holes_of(extents, size)
    rfd = os.open(ref, os.O_RDONLY)
    for start, end in holes:
        if not is_zero(rfd, start, end):
            rep.bad("%s: hole [%d, %d) is not all zeros in the reference" % (flat, start, end))
    os.close(rfd)
    with open(mapfile) as f:
        qmap = json.load(f)
    for ent in qmap:
        if ent.get("data"):
            continue
        start, end = ent["start"], ent["start"] + ent["length"]
        for dstart, dend in extents:
            if dstart < end and dend > start:
                rep.bad("%s: [%d, %d) is unallocated or zero for qemu but data extent "
                        "[%d, %d) overlaps it" % (flat, start, end, dstart, dend))
                break
    rep.exit()


def cmd_sparse(args):
    st = os.stat(args[0])
    if st.st_blocks * 512 >= st.st_size:
        print("%s: st_blocks %d (x512 = %d) is not below st_size %d"
              % (args[0], st.st_blocks, st.st_blocks * 512, st.st_size))
        return 1
    return 0


def cmd_same(args):
    flat, ref = args
    rep = Report()
    size = os.stat(flat).st_size
    if os.stat(ref).st_size != size:
        rep.bad("%s: size %d, reference %d" % (flat, size, os.stat(ref).st_size))
        rep.exit()
    extents = data_extents(flat)
    ffd = os.open(flat, os.O_RDONLY)
    rfd = os.open(ref, os.O_RDONLY)
    for start, end in extents:
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            got, want = os.pread(ffd, n, pos), os.pread(rfd, n, pos)
            if got != want:
                rep.bad("%s: differs from the reference at %d" % (flat, pos + first_diff(got, want)))
                break
            pos += n
    rng = random.Random(size)
    for start, end in holes_of(extents, size):
        if not is_zero(rfd, start, end):
            rep.bad("%s: the reference has data in the hole [%d, %d)" % (flat, start, end))
        samples = [start, max(start, end - CHUNK)]
        samples += [rng.randrange(start, end) for _ in range(16)]
        for off in samples:
            n = min(CHUNK, end - off)
            if os.pread(ffd, n, off).count(0) != n:
                rep.bad("%s: the hole [%d, %d) reads non-zero near %d" % (flat, start, end, off))
                break
    os.close(ffd)
    os.close(rfd)
    rep.exit()


def cmd_erofs(args):
    path, directory = args
    rep = Report()
    new = os.path.join(directory, "vmfs-test-new")
    attempts = [
        ("open O_WRONLY", lambda: os.open(path, os.O_WRONLY)),
        ("open O_RDWR", lambda: os.open(path, os.O_RDWR)),
        ("open O_TRUNC", lambda: os.open(path, os.O_RDONLY | os.O_TRUNC)),
        ("create", lambda: os.open(new, os.O_WRONLY | os.O_CREAT, 0o644)),
        ("truncate", lambda: os.truncate(path, 0)),
        ("mkdir", lambda: os.mkdir(new)),
        ("unlink", lambda: os.unlink(path)),
        ("rename", lambda: os.rename(path, new)),
        ("chmod", lambda: os.chmod(path, 0o644)),
        ("utime", lambda: os.utime(path, (0, 0))),
        ("symlink", lambda: os.symlink("x", new)),
        ("link", lambda: os.link(path, new)),
        ("setxattr", lambda: os.setxattr(path, "user.vmfs", b"x")),
    ]
    for what, fn in attempts:
        try:
            res = fn()
        except OSError as e:
            if e.errno != errno.EROFS:
                rep.bad("%s %s: failed with %s, not EROFS" % (what, path, errno.errorcode.get(e.errno, e.errno)))
            continue
        if isinstance(res, int):
            os.close(res)
        rep.bad("%s %s: succeeded on a read-only mount" % (what, path))
    rep.exit()


def read_range(fd, off, length):
    """Returns the bytes at [off, off+length) or raises OSError."""
    parts = []
    pos = off
    end = off + length
    while pos < end:
        buf = os.pread(fd, min(CHUNK, end - pos), pos)
        if not buf:
            break
        parts.append(buf)
        pos += len(buf)
    return b"".join(parts)


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(len(a), len(b))


def cmd_ranges(args):
    flat, ref = args[0], args[1]
    rep = Report()
    ffd = os.open(flat, os.O_RDONLY)
    rfd = os.open(ref, os.O_RDONLY)
    for spec in args[2:]:
        kind, off, length = spec.split(":")
        off, length = num(off), num(length)
        want = read_range(rfd, off, length)
        try:
            got = read_range(ffd, off, length)
        except OSError as e:
            if kind in ("eio", "okeio") and e.errno == errno.EIO:
                continue
            rep.bad("%s [%d, +%d): read failed: %s" % (flat, off, length, e))
            continue
        if kind == "eio":
            rep.bad("%s [%d, +%d): read succeeded, expected EIO" % (flat, off, length))
        elif got != want:
            rep.bad("%s [%d, +%d): %d bytes differ from the reference (got %d of %d bytes), "
                    "first at +%d" % (flat, off, length, sum(1 for x, y in zip(got, want) if x != y),
                                      len(got), len(want), first_diff(got, want)))
    os.close(ffd)
    os.close(rfd)
    rep.exit()


def parallel_worker(flat, ref, nreads, seed, size, queue):
    rng = random.Random(seed)
    bad = 0
    msgs = []
    ffd = os.open(flat, os.O_RDONLY)
    rfd = os.open(ref, os.O_RDONLY)
    for _ in range(nreads):
        kind = rng.random()
        if kind < 0.4:
            length = rng.randint(1, 4096)
        elif kind < 0.8:
            length = rng.randint(4096, 256 << 10)
        else:
            length = rng.randint(256 << 10, 2 << 20)
        off = rng.randrange(0, size)
        length = min(length, size - off)
        try:
            # Drop the range from the kernel's page cache, so the read
            # reaches vmfs rather than pages an earlier read left behind.
            os.posix_fadvise(ffd, off, length, os.POSIX_FADV_DONTNEED)
            got = os.pread(ffd, length, off)
        except OSError as e:
            bad += 1
            msgs.append("pread(%d, %d): %s" % (off, length, e))
            continue
        want = os.pread(rfd, length, off)
        if got != want:
            bad += 1
            msgs.append("pread(%d, %d): differs from the reference at +%d (got %d bytes)"
                        % (off, length, first_diff(got, want), len(got)))
    os.close(ffd)
    os.close(rfd)
    queue.put((seed, bad, msgs[:5]))


def cmd_parallel(args):
    flat, ref = args[0], args[1]
    nproc, nreads, seed = int(args[2]), int(args[3]), int(args[4])
    size = os.stat(ref).st_size
    if os.stat(flat).st_size != size:
        print("%s: size %d, reference %d" % (flat, os.stat(flat).st_size, size))
        return 1
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=parallel_worker,
                                     args=(flat, ref, nreads, seed + i, size, queue))
             for i in range(nproc)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    rep = Report()
    for wseed, bad, msgs in sorted(results):
        if bad:
            rep.bad("reader %d: %d of %d reads wrong" % (wseed - seed, bad, nreads))
            for m in msgs:
                print("  " + m)
    for p in procs:
        if p.exitcode != 0:
            rep.bad("a reader exited with status %s" % p.exitcode)
    print("%d readers x %d reads: %s" % (nproc, nreads, "all matched" if not rep.problems else "MISMATCH"))
    rep.exit()


PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_pages(fd, lo, hi):
    """Which pages of [lo, hi) of fd are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    length = hi - lo
    addr = libc.mmap(None, length, 1, 1, fd, lo)      # PROT_READ, MAP_SHARED
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    try:
        vec = ctypes.create_string_buffer((length + PAGE - 1) // PAGE)
        if libc.mincore(addr, length, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return [lo + i * PAGE for i, b in enumerate(vec.raw) if b & 1]
    finally:
        libc.munmap(addr, length)


def cmd_fill(args):
    flat, ref = args[0], args[1]
    off, lo, hi = num(args[2]), num(args[3]), num(args[4])
    want = args[5] == "yes"
    rep = Report()
    fd = os.open(flat, os.O_RDONLY)
    rfd = os.open(ref, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    before = resident_pages(fd, lo, hi)
    if before:
        rep.bad("%s: %d pages of [%d, %d) still cached after POSIX_FADV_DONTNEED"
                % (flat, len(before), lo, hi))
        rep.exit()
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)   # no read-ahead: one page asked
    if os.pread(fd, PAGE, off) != os.pread(rfd, PAGE, off):
        rep.bad("%s: the page at %d differs from the reference" % (flat, off))
    deadline = time.monotonic() + (10 if want else 1)
    others = []
    while time.monotonic() < deadline:
        res = resident_pages(fd, lo, hi)
        others = [p for p in res if p != off - off % PAGE]
        if want and len(res) == (hi - lo) // PAGE:
            break
        time.sleep(0.02)
    if want:
        missing = (hi - lo) // PAGE - len(resident_pages(fd, lo, hi))
        if missing:
            rep.bad("%s: %d pages of [%d, %d) not in the page cache after a read at %d"
                    % (flat, missing, lo, hi, off))
        got, exp = read_range(fd, lo, hi - lo), read_range(rfd, lo, hi - lo)
        if got != exp:
            rep.bad("%s: [%d, %d) from the page cache differs from the reference, first at +%d"
                    % (flat, lo, hi, first_diff(got, exp)))
    elif others:
        rep.bad("%s: %d pages of [%d, %d) besides the one read came into the page cache"
                % (flat, len(others), lo, hi))
    os.close(fd)
    os.close(rfd)
    rep.exit()


def fill_bytes(fill, off, length):
    if fill == "rand":
        return random.Random(off).randbytes(length)
    if fill == "text":
        line = b"vmfs test data: offset %016x: the quick brown fox jumps over the lazy dog\n" % off
        return (line * (length // len(line) + 1))[:length]
    return bytes([num(fill)]) * length


def cmd_mkraw(args):
    path, size = args[0], num(args[1])
    with open(path, "wb") as f:
        f.truncate(size)
        for spec in args[2:]:
            off, length, fill = spec.split(":")
            off, length = num(off), num(length)
            pos = off
            while pos < off + length:
                n = min(8 * CHUNK, off + length - pos)
                f.seek(pos)
                f.write(fill_bytes(fill, pos, n))
                pos += n
    return 0


HEADER = [("magic", 0, ">I"), ("version", 4, ">I"), ("backing_file_offset", 8, ">Q"),
          ("backing_file_size", 16, ">I"), ("cluster_bits", 20, ">I"), ("size", 24, ">Q"),
          ("crypt_method", 32, ">I"), ("l1_size", 36, ">I"), ("l1_table_offset", 40, ">Q"),
          ("refcount_table_offset", 48, ">Q"), ("refcount_table_clusters", 56, ">I"),
          ("nb_snapshots", 60, ">I"), ("snapshots_offset", 64, ">Q")]
HEADER_V3 = [("incompatible_features", 72, ">Q"), ("compatible_features", 80, ">Q"),
             ("autoclear_features", 88, ">Q"), ("refcount_order", 96, ">I"),
             ("header_length", 100, ">I")]
OFFSET_MASK = 0x00fffffffffffe00
COMPRESSED = 1 << 62


class Qcow2:
    """Just enough of a qcow2 reader to find and patch table entries."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            raw = f.read(104)
        self.h = {}
        fields = HEADER + (HEADER_V3 if struct.unpack(">I", raw[4:8])[0] >= 3 else [])
        for name, off, fmt in fields:
            self.h[name] = struct.unpack(fmt, raw[off:off + struct.calcsize(fmt)])[0]
        self.cluster_bits = self.h["cluster_bits"]
        self.cluster_size = 1 << self.cluster_bits
        self.extended_l2 = bool(self.h.get("incompatible_features", 0) & 16)
        self.l2_entry_size = 16 if self.extended_l2 else 8
        self.l2_entries = self.cluster_size // self.l2_entry_size

    def read_u64(self, off):
        with open(self.path, "rb") as f:
            f.seek(off)
            return struct.unpack(">Q", f.read(8))[0]

    def write(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def l1_entry_offset(self, index):
        return self.h["l1_table_offset"] + 8 * index

    def l2_entry_offset(self, guest):
        cluster = guest >> self.cluster_bits
        l1 = self.read_u64(self.l1_entry_offset(cluster // self.l2_entries))
        if not l1 & OFFSET_MASK:
            raise SystemExit("%s: no L2 table for guest offset %d" % (self.path, guest))
        return (l1 & OFFSET_MASK) + self.l2_entry_size * (cluster % self.l2_entries)

    def compressed_extent(self, entry):
        x = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return host, sectors * 512 - (host & 511)


def cmd_qcow2_header(args):
    print(json.dumps(Qcow2(args[0]).h))
    return 0


def cmd_qcow2_poke(args):
    path, off, bits, val = args[0], num(args[1]), int(args[2]), u64(args[3])
    fmt = {8: ">B", 16: ">H", 32: ">I", 64: ">Q"}[bits]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, val))
    return 0


def cmd_qcow2_l1(args):
    q = Qcow2(args[0])
    off = q.l1_entry_offset(num(args[1]))
    if len(args) > 2:
        q.write(off, struct.pack(">Q", u64(args[2])))
    else:
        print("0x%016x" % q.read_u64(off))
    return 0


def cmd_qcow2_l2(args):
    q = Qcow2(args[0])
    off = q.l2_entry_offset(num(args[1]))
    if len(args) > 2:
        q.write(off, struct.pack(">Q", u64(args[2])))
    else:
        print("0x%016x" % q.read_u64(off))
    return 0


def cmd_qcow2_host(args):
    q = Qcow2(args[0])
    entry = q.read_u64(q.l2_entry_offset(num(args[1])))
    if entry & COMPRESSED:
        print(q.compressed_extent(entry)[0])
    else:
        print(entry & OFFSET_MASK)
    return 0


def cmd_qcow2_corrupt_compressed(args):
    q = Qcow2(args[0])
    entry = q.read_u64(q.l2_entry_offset(num(args[1])))
    if not entry & COMPRESSED:
        print("%s: guest offset %s is not in a compressed cluster (L2 entry 0x%016x)"
              % (args[0], args[1], entry))
        return 1
    host, length = q.compressed_extent(entry)
    # 0xff bytes: a deflate block of the reserved type 3 and no valid zstd
    # frame magic, so every decoder rejects the cluster at its first byte.
    # Only four: compressed clusters are packed, and a cluster of one
    # repeated byte compresses to a dozen bytes.
    q.write(host, b"\xff" * min(4, length))
    return 0


COMMANDS = {
    "extents": (cmd_extents, 1), "holes": (cmd_holes, 3), "sparse": (cmd_sparse, 1), "same": (cmd_same, 2),
    "erofs": (cmd_erofs, 2), "ranges": (cmd_ranges, -3), "parallel": (cmd_parallel, 5),
    "fill": (cmd_fill, 6), "mkraw": (cmd_mkraw, -2), "qcow2-header": (cmd_qcow2_header, 1),
    "qcow2-poke": (cmd_qcow2_poke, 4), "qcow2-l1": (cmd_qcow2_l1, -2),
    "qcow2-l2": (cmd_qcow2_l2, -2), "qcow2-host": (cmd_qcow2_host, 2),
    "qcow2-corrupt-compressed": (cmd_qcow2_corrupt_compressed, 2),
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.stderr.write(__doc__)
        return 2
    fn, nargs = COMMANDS[sys.argv[1]]
    args = sys.argv[2:]
    if (nargs >= 0 and len(args) != nargs) or (nargs < 0 and len(args) < -nargs):
        sys.stderr.write("probe.py %s: wrong number of arguments\n" % sys.argv[1])
        return 2
    return fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
