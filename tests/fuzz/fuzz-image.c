/* fuzz-image — damages a seed image over and over and reads each damaged
 * copy the way the daemon would: info and info.json, every snapshot, the
 * partitions and logical volumes, reads, read plans, holes and allocation.
 * Built with the sanitizers, a crash, an overflow or a leak of a read past
 * a buffer stops it; a copy that takes longer than the time limit is a hang
 * and stops it too.  The copy being read is left in DIR when it stops, so
 * the case can be replayed with vmfs-info or a mount.
 *
 * Usage: fuzz-image [-w] DIR SEED ITERATIONS RANDOM-SEED [SECONDS]
 *   DIR   a directory holding SEED (and any backing files it names);
 *         damaged copies are written there as fuzz-N.EXT and removed after
 *   SEED  the image file name inside DIR
 *   -w    only write the copies and leave them, for a mount to read
 *
 * Reads stay within the first few MiB of each view and a few places further
 * on, so that a damaged size of exabytes costs no more than a small one.
 * Exit status: 0 when every copy was read, 1 on a usage or setup error;
 * a sanitizer report or an abort otherwise. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fmt/vhdx.h"
#include "vmfs/tree.h"
#include "vol/vol_internal.h"

#define READ_CHUNK (64u << 10)
#define READ_HEAD ((uint64_t)4 << 20)   /* bytes read from the start of a view */
#define EXTENT_STEPS 4096
#define PROBES 16                        /* reads at random places further on */

static uint64_t rng_state;

static uint64_t rnd(void)              /* xorshift64*, reproducible from the seed */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

static unsigned long n_open, n_reads, n_failed, n_problems, slowest;
static double slowest_ms;
static const char *current;            /* the copy being read, for the alarm */

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "fuzz-image: hang: a damaged copy took too long: ";
    ssize_t r = write(2, msg, sizeof msg - 1);
    if (current)
        r = write(2, current, strlen(current));
    r = write(2, "\n", 1);
    (void)r;
    abort();
}

static void *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(path);
        exit(1);
    }
    *len = (size_t)st.st_size;
    uint8_t *buf = xmalloc(*len + 1);
    size_t got = 0;
    while (got < *len) {
        ssize_t r = read(fd, buf + got, *len - got);
        if (r <= 0) {
            perror(path);
            exit(1);
        }
        got += (size_t)r;
    }
    close(fd);
    return buf;
}

static void spit(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) < 0) {
        perror(path);
        exit(1);
    }
}

/* Values that make parsers go wrong: edges of every width. */
static uint64_t interesting(void)
{
    static const uint64_t v[] = {0, 1, 0x7f, 0x80, 0xff, 0x100, 0x1ff, 0x200, 0x7fff,
                                 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000,
                                 0xffffffff, 0x100000000ull, 0x7fffffffffffffffull,
                                 0x8000000000000000ull, 0xffffffffffffffffull,
                                 0xfffffffffffffe00ull, 0x0000010000000000ull};
    return v[below(sizeof v / sizeof v[0])];
}

/* Places in the seed where metadata lives, found once: structures with a
 * magic at a sector boundary, and the tables the common headers point at.
 * Damage lands near one of them a third of the time. */
#define MAX_MARKS 512
static uint64_t marks[MAX_MARKS];
static size_t nmarks;

static void mark(uint64_t off, size_t len)
{
    if (off < len && nmarks < MAX_MARKS)
        marks[nmarks++] = off;
}


static void find_marks(const uint8_t *b, size_t len)
{
    static const char *const magic[] = {"LABELONE", " LVM2 x[5A%r0N*>", "EFI PART", "head",
                                        "regi", "loge", "metadata", "conectix", "cxsparse",
                                        "KDMV", "# Disk Desc", "<<< ", "QED", "QFI"};
    for (size_t at = 0; at + 16 <= len; at += 512)
        for (size_t k = 0; k < sizeof magic / sizeof magic[0]; k++)
            if (!memcmp(b + at, magic[k], strlen(magic[k])))
                mark(at, len);
    if (len >= 72 && !memcmp(b, "QFI\xfb", 4)) {       /* qcow2: L1, refcounts, snapshots */
        uint64_t l1 = get_be64(b + 40), l1n = get_be32(b + 36);
        mark(l1, len);
        mark(get_be64(b + 48), len);
        mark(get_be64(b + 64), len);
        for (uint64_t i = 0; i < l1n && i < 64 && l1 + 8 * i + 8 <= len; i++)
            mark(get_be64(b + l1 + 8 * i) & 0x00fffffffffffe00ull, len);
    }
    if (len >= 64 && !memcmp(b, "KDMV", 4)) {          /* VMDK: grain directories */
        mark(get_le64(b + 48) * 512, len);
        mark(get_le64(b + 56) * 512, len);
    }
    if (len >= 0x160 && get_le32(b + 0x40) == 0xbeda107f)  /* VDI: the block map */
        mark(get_le32(b + 0x158), len);
    if (len >= 40 && !memcmp(b, "QED", 3))             /* QED: the L1 table */
        mark(get_le64(b + 32), len);
}

/* One to eight changes; offsets favour the first 64 KiB, where headers and
 * the first tables live, and the marks, over the rest of the file. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap)
{
    unsigned n = 1 + (unsigned)below(8);
    for (unsigned i = 0; i < n && len > 0; i++) {
        size_t at;
        uint64_t pick = below(3);
        if (pick == 0 && nmarks) {
            at = (size_t)(marks[below(nmarks)] + below(8192));
            if (at >= len)
                at = (size_t)below(len);
        } else {
            at = (size_t)below(pick == 1 ? (len < 65536 ? len : 65536) : len);
        }
        switch (below(16) == 0 ? 6 : below(6)) {
        case 0: case 1:                  /* flip a bit */
            buf[at] ^= (uint8_t)(1u << below(8));
            break;
        case 2:                          /* a random byte */
            buf[at] = (uint8_t)rnd();
            break;
        case 3: {                        /* an edge value, either byte order */
            unsigned w = 1u << below(4); /* 1, 2, 4, 8 bytes */
            uint64_t val = interesting();
            bool big = below(2);
            for (unsigned k = 0; k < w && at + k < len; k++)
                buf[at + k] = (uint8_t)(big ? val >> (8 * (w - 1 - k)) : val >> (8 * k));
            break;
        }
        case 4:                          /* nudge a 32-bit number */
            if (at + 4 <= len) {
                uint32_t x;
                memcpy(&x, buf + at, 4);
                x += (uint32_t)(below(33)) - 16u;
                memcpy(buf + at, &x, 4);
            }
            break;
        case 5:                          /* copy a run from elsewhere */
            if (len > 16) {
                size_t from = (size_t)below(len), run = 1 + (size_t)below(64);
                if (from + run > len) run = len - from;
                if (at + run > len) run = len - at;
                memmove(buf + at, buf + from, run);
            }
            break;
        case 6:                          /* cut the file short, or grow it */
            if (below(2))
                len = at;         /* (rarely: most damage is in place) */
            else if (len < cap) {
                size_t grow = (size_t)below(cap - len) + 1;
                memset(buf + len, (int)(rnd() & 0xff) * (int)below(2), grow);
                len += grow;
            }
            break;
        }
    }
    return len;
}

static void count_read(int r)
{
    n_reads++;
    if (r < 0)
        n_failed++;
}

/* ---- checksums made right again after damage ----
 * Most damage to a checksummed structure (VHD footers, VHDX headers,
 * region tables and log entries, GPT, LVM labels and metadata) is caught
 * by its checksum, which keeps the parser behind it out of reach.  So for
 * most copies the checksums are recomputed after the damage. */

/* The checksums are computed as vmfs checks them (vol_internal.h,
 * vhdx.h); the seed check in main shows they match the seed's writers. */
static uint32_t crc_lvm(const uint8_t *p, size_t n) { return vol_crc32(LVM_INITIAL_CRC, p, n); }

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * (3 - i)));
}

static bool fits(size_t len, uint64_t off, uint64_t n) { return off <= len && n <= len - off; }

/* A VHDX structure of n bytes at off with a CRC-32C at off + 4. */
static void fix_crc32c_at(uint8_t *b, size_t len, uint64_t off, uint64_t n, const char *magic)
{
    if (!fits(len, off, n) || memcmp(b + off, magic, 4))
        return;
    put_le32(b + off + 4, vhdx_struct_crc(b + off, (size_t)n, 4));
}

static void fix_vhdx(uint8_t *b, size_t len)
{
    for (uint64_t h = 64 << 10; h <= 128 << 10; h += 64 << 10) {
        if (!fits(len, h, 4096) || memcmp(b + h, "head", 4))
            continue;
        fix_crc32c_at(b, len, h, 4096, "head");
        /* log entries: 4 KiB aligned in [log_offset, + log_length) */
        uint64_t loff = get_le64(b + h + 72), llen = get_le32(b + h + 68);
        for (uint64_t e = loff; llen <= (1u << 28) && e < loff + llen && fits(len, e, 64);
             e += 4096) {
            uint64_t elen = get_le32(b + e + 8);
            if (!memcmp(b + e, "loge", 4) && elen >= 64 && elen <= (1u << 26))
                fix_crc32c_at(b, len, e, elen, "loge");
        }
    }
    fix_crc32c_at(b, len, 192 << 10, 64 << 10, "regi");
    fix_crc32c_at(b, len, 256 << 10, 64 << 10, "regi");
}

/* VHD: a footer (or its copy) or a dynamic header, checksummed by a
 * one's complement byte sum with the checksum field left out. */
static void fix_vhd_sum(uint8_t *b, size_t len, uint64_t off, size_t n, size_t field,
                        const char *cookie)
{
    if (!fits(len, off, n) || memcmp(b + off, cookie, 8))
        return;
    uint32_t sum = 0;
    for (size_t i = 0; i < n; i++)
        if (i < field || i >= field + 4)
            sum += b[off + i];
    put_be32(b + off + field, ~sum);
}

static void fix_vhd(uint8_t *b, size_t len)
{
    uint64_t foot[2] = {0, len >= 512 ? len - 512 : 0};
    for (int i = 0; i < 2; i++) {
        if (!fits(len, foot[i], 512) || memcmp(b + foot[i], "conectix", 8))
            continue;
        fix_vhd_sum(b, len, get_be64(b + foot[i] + 16), 1024, 36, "cxsparse");
        fix_vhd_sum(b, len, foot[i], 512, 64, "conectix");
    }
}

/* GPT with 512 or 4096-byte sectors: entries first, then the header,
 * for the primary header and the backup it names. */
static void fix_gpt_at(uint8_t *b, size_t len, uint64_t off, uint64_t ss)
{
    if (!fits(len, off, 92) || memcmp(b + off, "EFI PART", 8))
        return;
    uint8_t *h = b + off;
    uint64_t hsize = get_le32(h + 12), ent = get_le64(h + 72) * ss;
    uint64_t n = get_le32(h + 80), esz = get_le32(h + 84);
    if (n <= 4096 && esz <= 4096 && ent / ss == get_le64(h + 72) && fits(len, ent, n * esz))
        put_le32(h + 88, gpt_crc32(b + ent, (size_t)(n * esz)));
    if (hsize >= 92 && hsize <= ss && fits(len, off, hsize)) {
        memset(h + 16, 0, 4);
        put_le32(h + 16, gpt_crc32(h, (size_t)hsize));
    }
}

static void fix_gpt(uint8_t *b, size_t len)
{
    for (uint64_t ss = 512; ss <= 4096; ss *= 8) {
        if (!fits(len, ss, 92) || memcmp(b + ss, "EFI PART", 8))
            continue;
        uint64_t alt = get_le64(b + ss + 32);
        fix_gpt_at(b, len, ss, ss);
        if (alt < UINT64_MAX / ss)
            fix_gpt_at(b, len, alt * ss, ss);
    }
}

/* LVM: every label ("LABELONE" in the first four sectors of a PV, PVs
 * found at any 512-byte boundary of the file) and the metadata areas it
 * names: the label's CRC, each area header's, and the text's. */
static void fix_lvm(uint8_t *b, size_t len)
{
    for (uint64_t at = 0; at + 512 <= len; at += 512) {
        uint8_t *l = b + at;
        if (memcmp(l, "LABELONE", 8))
            continue;
        uint64_t pv = at - 512 * (get_le64(l + 8) <= 3 ? get_le64(l + 8) : 1);
        if (pv > at)
            pv = at - 512;
        uint64_t hoff = get_le32(l + 20);
        if (hoff < 32 || hoff > 512 - 40 - 16)
            hoff = 32;
        /* data areas, then metadata areas: (offset, size) lists ending in 0 */
        const uint8_t *d = l + hoff + 40;
        int list = 0;
        for (; d + 16 <= l + 512 && list < 2; d += 16) {
            uint64_t o = get_le64(d), sz = get_le64(d + 8);
            if (!o) {
                list++;
                continue;
            }
            if (list != 1 || !fits(len, pv + o, 512) || o > len)
                continue;
            uint8_t *m = b + pv + o;
            if (memcmp(m + 4, " LVM2 x[5A%r0N*>", 16))
                continue;
            for (uint8_t *rl = m + 40; rl + 24 <= m + 512; rl += 24) {
                uint64_t toff = get_le64(rl), tlen = get_le64(rl + 8);
                if (!toff)
                    break;
                if (fits(len, pv + o + toff, tlen) && toff + tlen <= sz && tlen <= (1u << 24))
                    put_le32(rl + 16, crc_lvm(m + toff, (size_t)tlen));
            }
            put_le32(m, crc_lvm(m + 4, 512 - 4));
        }
        put_le32(l + 16, crc_lvm(l + 20, 512 - 20));
    }
}

static void fix_checksums(uint8_t *b, size_t len)
{
    if (len >= 8 && !memcmp(b, "vhdxfile", 8))
        fix_vhdx(b, len);
    fix_vhd(b, len);
    fix_gpt(b, len);
    fix_lvm(b, len);
}

static void read_view(const struct vview *v, uint8_t *buf)
{
    uint64_t size = vview_size(v);
    uint64_t head = size < READ_HEAD ? size : READ_HEAD;
    for (uint64_t off = 0; off < head; off += READ_CHUNK) {
        size_t len = head - off < READ_CHUNK ? (size_t)(head - off) : READ_CHUNK;
        count_read(vview_read(v, buf, len, off));
    }
    for (int i = 0; i < PROBES && size > 0; i++) {
        uint64_t off = below(size);
        size_t len = 1 + (size_t)below(READ_CHUNK);
        if (len > size - off)
            len = (size_t)(size - off);
        count_read(vview_read(v, buf, len, off));
        struct vplan plan = VPLAN_INIT;
        (void)vview_plan(v, off, len, &plan);
        vplan_free(&plan);
    }
    /* Holes from the start, as SEEK_DATA / SEEK_HOLE walk them. */
    uint64_t off = 0;
    for (int steps = 0; off < size && steps < EXTENT_STEPS; steps++) {
        bool data;
        uint64_t len;
        if (vview_extent(v, off, &data, &len) < 0 || len == 0)
            break;
        off = len > size - off ? size : off + len;
    }
    (void)vview_allocated(v);
}

/* Several threads at once on one damaged view: the problems they find,
 * the caches they fill and the tables they load meet under the locks. */
#define THREADS 3

struct par {
    const struct vview *v;
    int k;
};

static void *par_read(void *arg)
{
    struct par *p = arg;
    uint64_t size = vview_size(p->v);
    uint64_t head = size < READ_HEAD ? size : READ_HEAD;
    uint64_t chunks = (head + READ_CHUNK - 1) / READ_CHUNK;
    uint8_t *buf = xmalloc(READ_CHUNK);
    for (uint64_t i = 0; i < chunks; i++) {
        uint64_t off = (i + chunks * (uint64_t)p->k / THREADS) % chunks * READ_CHUNK;
        size_t len = head - off < READ_CHUNK ? (size_t)(head - off) : READ_CHUNK;
        (void)vview_read(p->v, buf, len, off);
        bool data;
        uint64_t elen;
        (void)vview_extent(p->v, off, &data, &elen);
    }
    (void)vview_allocated(p->v);
    free(buf);
    return NULL;
}

static void read_parallel(const struct vview *v)
{
    pthread_t tid[THREADS];
    struct par p[THREADS];
    int started = 0;
    for (int k = 0; k < THREADS; k++) {
        p[k] = (struct par){v, k};
        if (pthread_create(&tid[k], NULL, par_read, &p[k]) == 0)
            started |= 1 << k;
    }
    for (int k = 0; k < THREADS; k++)
        if (started & 1 << k)
            pthread_join(tid[k], NULL);
}

static void read_image(struct timg *t, uint8_t *buf)
{
    for (int json = 0; json < 2; json++) {
        size_t n = tree_report_size(t, json);
        char *r = xmalloc(n + 1);
        (void)tree_report_read(t, json, r, n, 0);
        free(r);
    }
    struct vview whole = {t, -1};
    read_view(&whole, buf);
    const struct vlayout *lay = tree_layout(t);
    for (size_t i = 0; lay && i < lay->nvols; i++) {
        struct vview vol = {t, (long)i};
        read_view(&vol, buf);
    }
    /* info again: reads may have found problems that join the report */
    size_t n = tree_report_size(t, true);
    char *r = xmalloc(n + 1);
    (void)tree_report_read(t, true, r, n, 0);
    free(r);
}

int main(int argc, char **argv)
{
    bool write_only = argc > 1 && !strcmp(argv[1], "-w");
    if (write_only) {
        argc--;
        argv++;
    }
    if (argc < 5 || argc > 6) {
        fputs("usage: fuzz-image [-w] DIR SEED ITERATIONS RANDOM-SEED [SECONDS]\n", stderr);
        return 1;
    }
    char *dir = realpath(argv[1], NULL);
    if (!dir) {
        perror(argv[1]);
        return 1;
    }
    const char *seed = argv[2];
    unsigned long iters = strtoul(argv[3], NULL, 10);
    rng_state = strtoull(argv[4], NULL, 10) * 0x9e3779b97f4a7c15ull + 1;
    unsigned limit = argc > 5 ? (unsigned)strtoul(argv[5], NULL, 10) : 30;
    const char *dot = strrchr(seed, '.');
    const char *ext = dot ? dot : ".img";

    char *seed_path = xasprintf("%s/%s", dir, seed);
    size_t seed_len;
    uint8_t *orig = slurp(seed_path, &seed_len);
    size_t cap = seed_len + (64u << 10);
    uint8_t *work = xmalloc(cap);
    uint8_t *rbuf = xmalloc(READ_CHUNK);

    find_marks(orig, seed_len);
    /* The fixups must leave an undamaged image as it was, or they damage
     * it themselves. */
    memcpy(work, orig, seed_len);
    fix_checksums(work, seed_len);
    for (size_t i = 0; i < seed_len; i++)
        if (work[i] != orig[i]) {
            fprintf(stderr, "fuzz-image: %s: recomputing checksums changed byte %zu\n", seed, i);
            return 1;
        }

    struct tree_opts o = {.source = dir, .max_open = 4};
    o.open.root = dir;
    tree_init(&o);
    signal(SIGALRM, on_alarm);

    for (unsigned long i = 0; i < iters; i++) {
        memcpy(work, orig, seed_len);
        size_t len = mutate(work, seed_len, cap);
        if (below(4))
            fix_checksums(work, len);
        char *path = xasprintf("%s/fuzz-%lu%s", dir, i, ext);
        spit(path, work, len);
        if (write_only) {
            free(path);
            continue;
        }
        current = path;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        alarm(limit);
        struct timg *t = tree_get(path, -1);
        if (t && i % 8 == 7) {   /* threads first, while every cache is cold */
            struct vview whole = {t, -1};
            read_parallel(&whole);
        }
        if (t) {
            n_open++;
            read_image(t, rbuf);
            n_problems += vimage_problem_count(t->img) > 0;
            size_t nsnap = vimage_snapshot_count(t->img);
            tree_put(t);
            for (size_t s = 0; s < nsnap && s < 8; s++) {
                struct timg *st = tree_get(path, (long)s);
                if (st) {
                    read_image(st, rbuf);
                    tree_put(st);
                }
            }
        }
        alarm(0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (ms > slowest_ms) {
            slowest_ms = ms;
            slowest = i;
        }
        current = NULL;
        unlink(path);
        free(path);
    }
    tree_shutdown();
    if (write_only)
        printf("fuzz-image: %s: %lu damaged copies written\n", seed, iters);
    else
        printf("fuzz-image: %s: %lu damaged copies, %lu opened, %lu with problems found; "
           "%lu reads, %lu failed; slowest copy %.0f ms (#%lu)\n", seed, iters, n_open,
           n_problems, n_reads, n_failed, slowest_ms, slowest);
    free(seed_path);
    free(orig);
    free(work);
    free(rbuf);
    free(dir);
    return 0;
}
