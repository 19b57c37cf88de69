/* Unit tests: the qcow2 driver, over images built byte by byte in memory
 * by a small builder below, written to temporary files and opened through
 * the image layer like any other image. */
#include "config.h"

#include <fcntl.h>
#include <pthread.h>
#include <zlib.h>
#include <zstd.h>

#include "unit.h"
#include "vmfs/cache.h"
#include "vmfs/image.h"
#include "vmfs/report.h"
#include "../../src/fmt/qcow2.h"

extern const struct vfmt_driver vfmt_qcow2;

/* ------------------------------------------------------------------------
 * The builder: a growing file image plus the disk it should read as.
 * ---------------------------------------------------------------------- */

struct qb {
    struct unit_buf f;         /* the file */
    uint8_t *exp;              /* expected virtual disk */
    unsigned version, cbits;
    uint64_t cs, vsize;
    bool ext;
    uint64_t l1_off;
    uint32_t l1_size;
    uint64_t incompat, compat, autoclear;
    uint32_t crypt;
    uint8_t compression;
    uint32_t nb_snap;
    uint64_t snap_off;
    uint8_t exts[4096];
    size_t extlen;
    char backing[512];
};

static void put64(struct qb *b, uint64_t off, uint64_t v) { unit_put_be(&b->f, off, v, 8); }
static void put32(struct qb *b, uint64_t off, uint32_t v) { unit_put_be(&b->f, off, v, 4); }
static void put16(struct qb *b, uint64_t off, uint16_t v) { unit_put_be(&b->f, off, v, 2); }
static uint64_t get64(struct qb *b, uint64_t off) { return get_be64(b->f.d + off); }

/* n new zeroed clusters at the end of the file. */
static uint64_t qb_alloc(struct qb *b, uint64_t n)
{
    return unit_append(&b->f, n * b->cs, b->cs);
}

static uint64_t l2_entries(const struct qb *b) { return b->cs / (b->ext ? 16 : 8); }
static uint64_t l1_span(const struct qb *b) { return b->cs * l2_entries(b); }

static struct qb *qb_new(unsigned version, unsigned cbits, uint64_t vsize, bool ext)
{
    struct qb *b = calloc(1, sizeof(*b));
    ck_assert_ptr_nonnull(b);
    b->version = version;
    b->cbits = cbits;
    b->cs = 1ull << cbits;
    b->vsize = vsize;
    b->ext = ext;
    if (ext)
        b->incompat |= QCOW2_INCOMPAT_EXTL2;
    b->exp = calloc(1, vsize ? (size_t)vsize : 1);
    ck_assert_ptr_nonnull(b->exp);
    unit_grow(&b->f, (size_t)b->cs);
    b->l1_size = (uint32_t)((vsize + l1_span(b) - 1) / l1_span(b));
    uint64_t l1_clusters = ((uint64_t)b->l1_size * 8 + b->cs - 1) / b->cs;
    b->l1_off = qb_alloc(b, l1_clusters ? l1_clusters : 1);
    return b;
}

static void qb_free(struct qb *b)
{
    free(b->f.d);
    free(b->exp);
    free(b);
}

/* The L2 table of guest offset g, allocated on first use. */
static uint64_t qb_l2(struct qb *b, uint64_t g)
{
    uint64_t slot = b->l1_off + g / l1_span(b) * 8;
    uint64_t e = get64(b, slot) & QCOW2_L1E_OFFSET_MASK;
    if (!e) {
        e = qb_alloc(b, 1);
        put64(b, slot, e | QCOW2_OFLAG_COPIED);
    }
    return e;
}

static void qb_set(struct qb *b, uint64_t g, uint64_t entry, uint64_t bitmap)
{
    uint64_t l2 = qb_l2(b, g);
    uint64_t idx = (g / b->cs) % l2_entries(b);
    put64(b, l2 + idx * (b->ext ? 16 : 8), entry);
    if (b->ext)
        put64(b, l2 + idx * 16 + 8, bitmap);
}

/* The bytes guest cluster g should hold (clipped to the disk). */
static void exp_pattern(struct qb *b, uint64_t g, uint8_t tag)
{
    uint64_t n = VMFS_MIN(b->cs, b->vsize - g);
    unit_fill(b->exp + g, (size_t)n, tag, g);
}

/* A data cluster for guest offset g at a new host cluster; returns it. */
static uint64_t qb_data(struct qb *b, uint64_t g, uint8_t tag)
{
    qb_l2(b, g);
    uint64_t host = qb_alloc(b, 1);
    unit_fill(b->f.d + host, (size_t)b->cs, tag, g);
    qb_set(b, g, host | QCOW2_OFLAG_COPIED, b->ext ? 0xffffffffu : 0);
    exp_pattern(b, g, tag);
    return host;
}

static void qb_ext(struct qb *b, uint32_t type, const void *data, uint32_t len)
{
    uint8_t hdr[8];
    for (unsigned i = 0; i < 4; i++) {
        hdr[i] = (uint8_t)(type >> (24 - 8 * i));
        hdr[4 + i] = (uint8_t)(len >> (24 - 8 * i));
    }
    ck_assert_uint_le(b->extlen + 8 + len + 8, sizeof(b->exts));
    memcpy(b->exts + b->extlen, hdr, 8);
    memcpy(b->exts + b->extlen + 8, data, len);
    b->extlen += 8 + ((len + 7u) & ~7u);
}

static void qb_feature(struct qb *b, uint8_t type, uint8_t bit, const char *name)
{
    uint8_t e[48] = {type, bit};
    memcpy(e + 2, name, strlen(name));
    qb_ext(b, QCOW2_EXT_FEATURES, e, sizeof(e));
}

/* Writes the header and its extensions into the first cluster. */
static void qb_finish(struct qb *b)
{
    uint32_t hl = b->version == 2 ? 72 : (b->compression ? 112 : 104);
    put32(b, 0, QCOW2_MAGIC);
    put32(b, 4, b->version);
    put32(b, 20, b->cbits);
    put64(b, 24, b->vsize);
    put32(b, 32, b->crypt);
    put32(b, 36, b->l1_size);
    put64(b, 40, b->l1_off);
    put32(b, 60, b->nb_snap);
    put64(b, 64, b->snap_off);
    if (b->version >= 3) {
        put64(b, 72, b->incompat);
        put64(b, 80, b->compat);
        put64(b, 88, b->autoclear);
        put32(b, 96, 4);
        put32(b, 100, hl);
        b->f.d[104] = b->compression;
    }
    ck_assert_uint_le(hl + b->extlen + 8 + strlen(b->backing), b->cs);
    memcpy(b->f.d + hl, b->exts, b->extlen);
    memset(b->f.d + hl + b->extlen, 0, 8);
    if (b->backing[0]) {
        uint64_t off = hl + b->extlen + 8;
        put64(b, 8, off);
        put32(b, 16, (uint32_t)strlen(b->backing));
        memcpy(b->f.d + off, b->backing, strlen(b->backing));
    }
}

static char *qb_file(struct qb *b)
{
    return unit_tmpfile(b->f.d, b->f.len, "qcow2");
}

static struct vimage *open_img(const char *path, long snap)
{
    struct vopen_opts o = {.root = NULL, .allow_external = true, .max_chain = 16};
    return vimage_open(path, &o, snap, false);
}

/* Builds, writes and opens b; the caller unlinks *path. */
static struct vimage *qb_open(struct qb *b, char **path)
{
    qb_finish(b);
    *path = qb_file(b);
    struct vimage *img = open_img(*path, -1);
    ck_assert_ptr_nonnull(img);
    return img;
}

/* The whole disk in one read, then in odd-sized pieces. */
static void check_all(struct vimage *img, const struct qb *b)
{
    ck_assert_uint_eq(img->size, b->vsize);
    unit_check_range(img, b->exp, 0, (size_t)b->vsize);
    for (uint64_t off = 0; off < b->vsize; off += 3000)
        unit_check_range(img, b->exp, off, (size_t)VMFS_MIN(4096, b->vsize - off));
}

/* A raw file of n bytes of the given pattern; its path. */
static char *raw_file(uint64_t n, uint8_t tag)
{
    uint8_t *p = malloc((size_t)n);
    ck_assert_ptr_nonnull(p);
    unit_fill(p, (size_t)n, tag, 0);
    char *path = unit_tmpfile(p, (size_t)n, "raw");
    free(p);
    return path;
}

/* ------------------------------------------------------------------------
 * Compressed clusters
 * ---------------------------------------------------------------------- */

static size_t deflate_raw(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    ck_assert_int_eq(deflateInit2(&s, Z_BEST_COMPRESSION, Z_DEFLATED, -12, 9,
                                  Z_DEFAULT_STRATEGY), Z_OK);
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)n;
    s.next_out = out;
    s.avail_out = (uInt)cap;
    ck_assert_int_eq(deflate(&s, Z_FINISH), Z_STREAM_END);
    size_t got = s.total_out;
    deflateEnd(&s);
    return got;
}

/* Puts len bytes of compressed data at the end of the file, at an offset
 * that is not sector aligned, and points guest cluster g at it. */
static void qb_put_compressed(struct qb *b, uint64_t g, const uint8_t *data, size_t len)
{
    uint64_t coff = b->f.len + 100;
    unit_put_bytes(&b->f, coff, data, len);
    uint64_t extra = ((coff + len - 1) >> 9) - (coff >> 9);
    unsigned shift = 62 - (b->cbits - 8);
    qb_set(b, g, QCOW2_OFLAG_COMPRESSED | extra << shift | coff, 0);
}

/* A compressed cluster (zlib or zstd as the builder says) for guest g. */
static void qb_compressed(struct qb *b, uint64_t g, uint8_t tag)
{
    qb_l2(b, g);
    size_t cs = (size_t)b->cs;
    uint8_t *plain = malloc(cs), *out = malloc(cs * 2 + 1024);
    ck_assert_ptr_nonnull(plain);
    ck_assert_ptr_nonnull(out);
    unit_fill(plain, cs, tag, g);
    size_t n;
    if (b->compression == QCOW2_COMPRESSION_ZSTD) {
        n = ZSTD_compress(out, cs * 2 + 1024, plain, cs, 3);
        ck_assert(!ZSTD_isError(n));
    } else {
        n = deflate_raw(plain, cs, out, cs * 2 + 1024);
    }
    ck_assert_uint_lt(n, cs);
    qb_put_compressed(b, g, out, n);
    exp_pattern(b, g, tag);
    free(plain);
    free(out);
}

/* ------------------------------------------------------------------------
 * Pure functions
 * ---------------------------------------------------------------------- */

START_TEST(test_classify)
{
    struct qcow2_geom g = {.cluster_bits = 16, .v3 = true};
    uint64_t host;
    const char *why;
    ck_assert_int_eq(qcow2_classify(&g, 0, 0, 0, 0, &host, &why), QCOW2_UNALLOC);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30000 | QCOW2_OFLAG_COPIED, 0, 0, &host, &why),
                     QCOW2_DATA);
    ck_assert_uint_eq(host, 0x30000);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30200, 0, 0, &host, &why), QCOW2_INVALID);
    ck_assert_ptr_nonnull(why);
    ck_assert_int_eq(qcow2_classify(&g, 0, 1, 0, 0, &host, &why), QCOW2_ZERO);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30001, 0, 0, &host, &why), QCOW2_ZERO);
    ck_assert_int_eq(qcow2_classify(&g, 0, QCOW2_OFLAG_COMPRESSED | 5, 0, 0, &host, &why),
                     QCOW2_COMPRESSED);
    /* Version 2 has no zero flag. */
    g.v3 = false;
    ck_assert_int_eq(qcow2_classify(&g, 0, 1, 0, 0, &host, &why), QCOW2_INVALID);
    /* External data file: offset 0 with the copied flag is data. */
    g.v3 = true;
    g.data_file = true;
    ck_assert_int_eq(qcow2_classify(&g, 0, QCOW2_OFLAG_COPIED, 0, 0, &host, &why), QCOW2_DATA);
    ck_assert_int_eq(qcow2_classify(&g, 0x10000, 0x20000 | QCOW2_OFLAG_COPIED, 0, 0, &host,
                                    &why), QCOW2_INVALID);
    ck_assert_int_eq(qcow2_classify(&g, 0, QCOW2_OFLAG_COMPRESSED, 0, 0, &host, &why),
                     QCOW2_INVALID);
    /* Extended L2: allocation bits 0-31, zero bits 32-63. */
    g.data_file = false;
    g.ext_l2 = true;
    uint64_t bm = 0x3ull | 0xcull << 32;
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30000, bm, 0, &host, &why), QCOW2_DATA);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30000, bm, 2, &host, &why), QCOW2_ZERO);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30000, bm, 4, &host, &why), QCOW2_UNALLOC);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0, 0xcull << 32, 3, &host, &why), QCOW2_ZERO);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0, 1, 5, &host, &why), QCOW2_INVALID);
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30000, 1 | 1ull << 32, 5, &host, &why),
                     QCOW2_INVALID);
    /* With extended L2 entries bit 0 is not a zero flag. */
    ck_assert_int_eq(qcow2_classify(&g, 0, 0x30001, 1, 0, &host, &why), QCOW2_DATA);
}
END_TEST

START_TEST(test_compressed_desc)
{
    uint64_t coff, clen;
    /* 64 KiB clusters: offset in bits 0-53, extra sectors in 54-61. */
    qcow2_compressed(16, QCOW2_OFLAG_COMPRESSED | 3ull << 54 | 0x12345, &coff, &clen);
    ck_assert_uint_eq(coff, 0x12345);
    ck_assert_uint_eq(clen, 4 * 512 - 0x145);
    /* 512-byte clusters: one bit of extra sectors at bit 61. */
    qcow2_compressed(9, 1ull << 61 | 0x1000, &coff, &clen);
    ck_assert_uint_eq(coff, 0x1000);
    ck_assert_uint_eq(clen, 1024);
    /* 2 MiB clusters: offset in bits 0-48. */
    qcow2_compressed(21, 0x1fffull << 49 | 0x200, &coff, &clen);
    ck_assert_uint_eq(coff, 0x200);
    ck_assert_uint_eq(clen, 0x2000ull * 512);
}
END_TEST

START_TEST(test_l1_entries)
{
    ck_assert_uint_eq(qcow2_l1_entries_for(0, 16, false), 0);
    ck_assert_uint_eq(qcow2_l1_entries_for(1, 16, false), 1);
    ck_assert_uint_eq(qcow2_l1_entries_for(512ull << 20, 16, false), 1);
    ck_assert_uint_eq(qcow2_l1_entries_for((512ull << 20) + 1, 16, false), 2);
    ck_assert_uint_eq(qcow2_l1_entries_for(256ull << 20, 16, true), 1);
    ck_assert_uint_eq(qcow2_l1_entries_for(UINT64_MAX, 21, false), 1ull << 25);
    ck_assert_uint_eq(qcow2_l1_entries_for(UINT64_MAX, 9, false), 1ull << 49);
}
END_TEST

static int parse(struct qb *b, char *msg, size_t msglen)
{
    struct qcow2_header h;
    qb_finish(b);
    int r = qcow2_parse_header(b->f.d, (size_t)b->cs, b->f.len, &h, msg, msglen);
    if (r == 0)
        qcow2_header_free(&h);
    return r;
}

START_TEST(test_parse_header)
{
    char msg[256];
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    strcpy(b->backing, "base.raw");
    qb_ext(b, QCOW2_EXT_BACKING_FMT, "raw", 3);
    qb_finish(b);
    struct qcow2_header h;
    ck_assert_int_eq(qcow2_parse_header(b->f.d, (size_t)b->cs, b->f.len, &h, msg, sizeof(msg)), 0);
    ck_assert_str_eq(h.backing_name, "base.raw");
    ck_assert_str_eq(h.backing_fmt, "raw");
    ck_assert_uint_eq(h.size, 1 << 20);
    ck_assert_uint_eq(h.header_len, 104);
    qcow2_header_free(&h);

    put32(b, 100, 96);      /* header length below 104 */
    ck_assert_int_eq(qcow2_parse_header(b->f.d, (size_t)b->cs, b->f.len, &h, msg, sizeof(msg)),
                     -EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "header length"));
    qb_free(b);

    b = qb_new(3, 16, 1 << 20, false);
    b->incompat |= QCOW2_INCOMPAT_COMPRESSION;   /* bit set, type zlib */
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), -EINVAL);
    b->incompat = 0;
    b->compression = 1;                          /* zstd without the bit */
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), -EINVAL);
    b->compression = 0;
    b->incompat = QCOW2_INCOMPAT_DATA_FILE;      /* data file, no name */
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "data file"));
    b->incompat = 0;
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), 0);
    put32(b, 96, 7);                             /* refcount order */
    ck_assert_int_eq(qcow2_parse_header(b->f.d, (size_t)b->cs, b->f.len, &h, msg, sizeof(msg)),
                     -EINVAL);
    b->cbits = 22;
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), -EINVAL);
    b->cbits = 8;
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), -EINVAL);
    b->cbits = 16;
    b->version = 4;
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), -ENOTSUP);
    b->version = 3;
    b->l1_off += 512;               /* the L1 table is the driver's to judge */
    ck_assert_int_eq(parse(b, msg, sizeof(msg)), 0);
    b->l1_off -= 512;
    /* A backing name that cannot be read is noted, not refused. */
    qb_finish(b);
    put64(b, 8, 70000);                          /* outside cluster 0 */
    put32(b, 16, 4);
    ck_assert_int_eq(qcow2_parse_header(b->f.d, (size_t)b->cs, b->f.len, &h, msg, sizeof(msg)), 0);
    ck_assert_ptr_null(h.backing_name);
    ck_assert_ptr_nonnull(strstr(h.backing_problem, "outside the first cluster"));
    qcow2_header_free(&h);
    put64(b, 8, 60000);
    put32(b, 16, 2000);                          /* too long */
    ck_assert_int_eq(qcow2_parse_header(b->f.d, (size_t)b->cs, b->f.len, &h, msg, sizeof(msg)), 0);
    ck_assert_ptr_nonnull(strstr(h.backing_problem, "too long"));
    qcow2_header_free(&h);
    /* Too short for any header. */
    ck_assert_int_eq(qcow2_parse_header(b->f.d, 40, 40, &h, msg, sizeof(msg)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "truncated"));
    qb_free(b);
}
END_TEST

/* ------------------------------------------------------------------------
 * Reading images
 * ---------------------------------------------------------------------- */

/* Versions 2 and 3: data, unallocated and (v3) zero clusters, and runs
 * that coalesce. */
START_TEST(test_basic_versions)
{
    unsigned version = (unsigned)_i;
    struct qb *b = qb_new(version, 16, 1 << 20, false);
    qb_data(b, 0, 0x11);
    qb_data(b, 0x10000, 0x22);        /* host contiguous with the first */
    qb_data(b, 0x30000, 0x33);
    qb_data(b, 0xf0000, 0x44);        /* the last cluster */
    if (version == 3) {
        qb_set(b, 0x50000, QCOW2_OFLAG_ZERO, 0);
        uint64_t pre = qb_alloc(b, 1);
        memset(b->f.d + pre, 0x99, (size_t)b->cs);  /* preallocated, reads as zero */
        qb_set(b, 0x60000, pre | QCOW2_OFLAG_ZERO | QCOW2_OFLAG_COPIED, 0);
    }
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    ck_assert_str_eq(vimage_format(img), "qcow2");
    check_all(img, b);
    ck_assert_uint_eq(unit_nproblems(img), 0);

    unit_run_at(img, 0, b->vsize, VRUN_DATA, 0x20000);
    unit_run_at(img, 0x1000, 0x8000, VRUN_DATA, 0x8000);
    unit_run_at(img, 0x20000, b->vsize - 0x20000, VRUN_BACKING, 0x10000);
    if (version == 3)
        unit_run_at(img, 0x50000, b->vsize - 0x50000, VRUN_ZERO, 0x20000);
    unit_check_report(img, false,
                      version == 2 ? "\"format_version\": 2" : "\"format_version\": 3",
                      "\"cluster_size\": 65536", "\"compression\": \"zlib\"");
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* 512 B, 4 KiB and 2 MiB clusters, a disk that ends inside a cluster, and
 * data spread over several L1 entries. */
START_TEST(test_cluster_sizes)
{
    static const unsigned bits[] = {9, 12, 21};
    unsigned cb = bits[_i];
    uint64_t cs = 1ull << cb;
    uint64_t nclusters = cb == 21 ? 8 : 300;
    uint64_t vsize = nclusters * cs - (cs > 512 ? 512 : 0);  /* ends inside a cluster */
    struct qb *b = qb_new(3, cb, vsize, false);
    uint64_t picks[] = {0, 1, 2, 4, nclusters / 2 + 1, (vsize - 1) / cs};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(picks); i++)
        qb_data(b, picks[i] * cs, (uint8_t)(0x10 * (i + 1)));
    qb_set(b, 3 * cs, QCOW2_OFLAG_ZERO, 0);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    check_all(img, b);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_extent_at(img, 0, true, 3 * cs);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* The L1 table written last, the file ending with its last entry. */
START_TEST(test_l1_at_end)
{
    struct qb *b = qb_new(3, 12, 3 << 20, false);   /* 2 L1 entries of 2 MiB */
    qb_data(b, 0, 0x51);
    qb_data(b, 0x200000, 0x52);
    qb_data(b, 0x2ff000, 0x53);
    uint64_t newoff = (b->f.len + b->cs - 1) & ~(b->cs - 1);
    size_t bytes = b->l1_size * 8u;
    ck_assert_uint_eq(b->l1_size, 2);
    unit_put_bytes(&b->f, newoff, b->f.d + b->l1_off, bytes);
    memset(b->f.d + b->l1_off, 0, bytes);
    b->l1_off = newoff;
    b->f.len = (size_t)(newoff + bytes);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    check_all(img, b);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* L1 and L2 entries pointing past the end of the file. */
START_TEST(test_past_eof)
{
    struct qb *b = qb_new(3, 9, 128 << 10, false);  /* 4 L1 entries of 32 KiB */
    qb_data(b, 0, 0x61);
    qb_data(b, 0x8000, 0x62);
    qb_data(b, 0x11000, 0x63);
    qb_data(b, 0x18000, 0x64);
    uint64_t eof = b->f.len;
    put64(b, b->l1_off + 8, ((eof + 0x10000) & ~511ull) | QCOW2_OFLAG_COPIED);
    qb_set(b, 0x200, ((eof + 0x20000) & ~511ull) | QCOW2_OFLAG_COPIED, 0);
    qb_set(b, 0x11200, ((eof - 256) & ~511ull) | QCOW2_OFLAG_COPIED, 0);  /* last sector */
    b->f.len = (size_t)eof - 256;                                            /* cut in half */
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    unit_check_range(img, b->exp, 0, 512);
    ck_assert_int_eq(unit_read_err(img, 0x200, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0, 4096), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x8000, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0xffff, 2), -EIO);
    unit_check_range(img, b->exp, 0x11000, 512);
    ck_assert_int_eq(unit_read_err(img, 0x11200, 512), -EIO);
    unit_check_range(img, b->exp, 0x400, 0x7c00);
    ck_assert(unit_has_problem(img, "L1 entry 1"));
    ck_assert(unit_has_problem(img, "guest offset 0x200: data cluster"));
    ck_assert(unit_has_problem(img, "guest offset 0x11200: data cluster"));
    unit_run_at(img, 0x8000, 0x18000, VRUN_ERROR, 0x8000);
    /* Each problem is listed once however often it is hit. */
    size_t n = unit_nproblems(img);
    ck_assert_int_eq(unit_read_err(img, 0x8000, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x200, 512), -EIO);
    ck_assert_uint_eq(unit_nproblems(img), n);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Opens b's file after poking one header field. */
static struct vimage *open_poked(struct qb *b, uint64_t off, uint64_t v, unsigned n,
                                 char **path)
{
    qb_finish(b);
    unit_put_be(&b->f, off, v, n);
    *path = qb_file(b);
    struct vimage *img = open_img(*path, -1);
    ck_assert_ptr_nonnull(img);
    return img;
}

/* Walks the allocation of the whole disk (as info does): must not hang. */
static void walk_allocation(struct vimage *img)
{
    unit_check_report(img, false, "\"data_size\"");
}

/* Absurd L1 sizes and virtual sizes are reported; what the L1 table that
 * the file holds maps stays readable; nothing huge is allocated. */
START_TEST(test_absurd_sizes)
{
    char *path;
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    qb_data(b, 0x10000, 0x5a);

    /* An L1 size of 4 Gi entries: only the one needed is read. */
    struct vimage *img = open_poked(b, 36, 0xffffffffu, 4, &path);
    ck_assert(!img->top_failed);
    ck_assert(unit_has_problem(img, "L1 table claims 4294967295 entries"));
    check_all(img, b);
    vimage_unref(img);
    unlink_free(path);

    /* 4 EiB on one L1 entry: the first 512 MiB read, the rest fails. */
    img = open_poked(b, 24, 1ull << 62, 8, &path);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 1ull << 62);
    ck_assert(unit_has_problem(img, "maps only the first 536870912 bytes"));
    unit_check_range(img, b->exp, 0, 1 << 20);
    ck_assert_int_eq(unit_read_err(img, 512ull << 20, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, img->size - 512, 512), -EIO);
    walk_allocation(img);
    vimage_unref(img);
    unlink_free(path);

    img = open_poked(b, 24, UINT64_MAX, 8, &path);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, UINT64_MAX & ~511ull);
    unit_check_range(img, b->exp, 0, 1 << 20);
    ck_assert_int_eq(unit_read_err(img, img->size - 512, 512), -EIO);
    walk_allocation(img);
    vimage_unref(img);
    unlink_free(path);

    /* 2 PiB with a 4 Mi-entry L1 table the small file does not hold. */
    qb_finish(b);
    put32(b, 36, 4u << 20);
    put64(b, 24, (4ull << 20) << 29);
    path = qb_file(b);
    img = open_img(path, -1);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, (4ull << 20) << 29);
    ck_assert(unit_has_problem(img, "past the end of the file"));
    unit_check_range(img, b->exp, 0, 1 << 20);          /* entries the file holds */
    ck_assert_int_eq(unit_read_err(img, img->size - 512, 512), -EIO);
    walk_allocation(img);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* An L1 table too short for the disk: what it maps reads, the rest fails. */
START_TEST(test_l1_too_small)
{
    struct qb *b = qb_new(3, 12, 8 << 20, false);   /* 4 L1 entries of 2 MiB */
    qb_data(b, 0, 0x15);
    qb_data(b, 0x1ff000, 0x16);
    qb_data(b, 0x200000, 0x17);
    char *path;
    struct vimage *img = open_poked(b, 36, 1, 4, &path);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 8 << 20);
    ck_assert(unit_has_problem(img, "L1 table (1 entries) maps only the first 2097152 bytes"));
    unit_check_range(img, b->exp, 0, 2 << 20);
    ck_assert_int_eq(unit_read_err(img, 2 << 20, 4096), -EIO);
    ck_assert_int_eq(unit_read_err(img, 6 << 20, 4096), -EIO);
    unit_run_at(img, 2 << 20, 6 << 20, VRUN_ERROR, 6 << 20);
    walk_allocation(img);
    vimage_unref(img);
    unlink_free(path);

    /* An L1 table offset off cluster alignment: nothing maps. */
    img = open_poked(b, 40, b->l1_off + 512, 8, &path);
    ck_assert(!img->top_failed);
    ck_assert(unit_has_problem(img, "no data can be read"));
    ck_assert_int_eq(unit_read_err(img, 0, 4096), -EIO);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* A backing name the header cannot hold: the image opens, its own clusters
 * read, reads that need the backing file fail. */
START_TEST(test_bad_backing_name)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    qb_data(b, 0, 0x25);
    qb_set(b, 0x10000, QCOW2_OFLAG_ZERO, 0);
    qb_finish(b);
    put64(b, 8, 1ull << 40);
    put32(b, 16, 10);
    char *path = qb_file(b);
    struct vimage *img = open_img(path, -1);
    ck_assert(!img->top_failed);
    ck_assert(unit_has_problem(img, "backing file name offset"));
    unit_check_range(img, b->exp, 0, 0x20000);
    ck_assert_int_eq(unit_read_err(img, 0x20000, 512), -EIO);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Offsets that are not cluster aligned. */
START_TEST(test_unaligned)
{
    struct qb *b = qb_new(3, 12, 4 << 20, false);  /* 2 L1 entries */
    qb_data(b, 0, 0x71);
    uint64_t h = qb_data(b, 0x1000, 0x72);
    qb_data(b, 0x200000, 0x73);
    qb_set(b, 0x1000, (h + 512) | QCOW2_OFLAG_COPIED, 0);
    uint64_t l2 = get64(b, b->l1_off + 8) & QCOW2_L1E_OFFSET_MASK;
    char *path;
    put64(b, b->l1_off + 8, (l2 + 1024) | QCOW2_OFLAG_COPIED);
    struct vimage *img = qb_open(b, &path);
    unit_check_range(img, b->exp, 0, 0x1000);
    ck_assert_int_eq(unit_read_err(img, 0x1000, 0x1000), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x200000, 0x1000), -EIO);
    unit_check_range(img, b->exp, 0x2000, 0x1000);
    ck_assert(unit_has_problem(img, "not cluster aligned"));
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Version 2 images have no zero flag: such an entry is damage. */
START_TEST(test_v2_zero_flag)
{
    struct qb *b = qb_new(2, 16, 1 << 20, false);
    qb_data(b, 0, 0x21);
    qb_set(b, 0x10000, QCOW2_OFLAG_ZERO, 0);
    char *path;
    struct vimage *img = qb_open(b, &path);
    unit_check_range(img, b->exp, 0, 0x10000);
    ck_assert_int_eq(unit_read_err(img, 0x10000, 512), -EIO);
    ck_assert(unit_has_problem(img, "version 2"));
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Extended L2 entries over a backing file. */
START_TEST(test_subclusters)
{
    uint64_t vsize = 512 << 10;
    char *base = raw_file(vsize, 0xe0);
    struct qb *b = qb_new(3, 16, vsize, true);       /* 2 KiB subclusters */
    snprintf(b->backing, sizeof(b->backing), "%s", base);
    qb_ext(b, QCOW2_EXT_BACKING_FMT, "raw", 3);
    unit_fill(b->exp, (size_t)vsize, 0xe0, 0);
    /* Cluster 0: subclusters 0-3 data, 4-5 zero, 6.. backing. */
    qb_l2(b, 0);
    uint64_t host = qb_alloc(b, 1);
    unit_fill(b->f.d + host, 0x2000, 0x81, 0);
    unit_fill(b->exp, 0x2000, 0x81, 0);
    memset(b->exp + 0x2000, 0, 0x1000);
    qb_set(b, 0, host | QCOW2_OFLAG_COPIED, 0xfull | 0x30ull << 32);
    /* Cluster 1: no host cluster, every subcluster zero but 31. */
    qb_set(b, 0x10000, 0, 0x7fffffffull << 32);
    memset(b->exp + 0x10000, 0, 0xf800);
    /* Cluster 2: subcluster 0 both allocated and zero; cluster 3:
     * allocated subcluster without a host cluster. */
    uint64_t h2 = qb_alloc(b, 1);
    qb_set(b, 0x20000, h2 | QCOW2_OFLAG_COPIED, 1 | 1ull << 32);
    qb_set(b, 0x30000, 0, 2);
    /* Cluster 4: subclusters 1-2 data, and the file ends right after
     * them, as qemu leaves a file whose last cluster is partly written. */
    uint64_t last = qb_alloc(b, 1);
    unit_fill(b->f.d + last + 0x800, 0x1000, 0x82, 0x40800);
    unit_fill(b->exp + 0x40800, 0x1000, 0x82, 0x40800);
    qb_set(b, 0x40000, last | QCOW2_OFLAG_COPIED, 0x6);
    b->f.len = (size_t)(last + 0x1800);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->nlayers, 2);
    unit_check_range(img, b->exp, 0, 0x20000);
    unit_check_range(img, b->exp, 0x40000, 0x10000);
    unit_check_range(img, b->exp, 0x50000, (size_t)vsize - 0x50000);
    ck_assert_int_eq(unit_read_err(img, 0x20000, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x2f000, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x30000, 512), -EIO);
    ck_assert(unit_has_problem(img, "both allocated and zero"));
    ck_assert(unit_has_problem(img, "without a host cluster"));
    unit_run_at(img, 0, vsize, VRUN_DATA, 0x2000);
    struct vrun run = unit_top_map(img, 0x800, vsize - 0x800);
    ck_assert_uint_eq(run.len, 0x1800);
    ck_assert_uint_eq(run.src_off, host + 0x800);
    unit_run_at(img, 0x2000, vsize - 0x2000, VRUN_ZERO, 0x1000);
    unit_run_at(img, 0x3000, vsize - 0x3000, VRUN_BACKING, 0xd000);
    unit_check_report(img, false, "\"extended_l2\": true", "\"subcluster_size\": 2048");
    vimage_unref(img);
    unlink_free(path);
    unlink_free(base);
    qb_free(b);
}
END_TEST

/* A v3 image of 64 KiB clusters whose compressed clusters use zstd or
 * zlib. */
static struct qb *qb_new_compressed(bool zstd, uint64_t vsize)
{
    struct qb *b = qb_new(3, 16, vsize, false);
    if (zstd) {
        b->compression = QCOW2_COMPRESSION_ZSTD;
        b->incompat |= QCOW2_INCOMPAT_COMPRESSION;
    }
    return b;
}

/* Compressed clusters, zlib (_i == 0) or zstd (_i == 1): good ones, a
 * corrupt one, one whose last sector runs past the end of the file. */
START_TEST(test_compressed)
{
    bool zstd = _i == 1;
    struct qb *b = qb_new_compressed(zstd, 1 << 20);
    qb_compressed(b, 0, 0x91);
    qb_compressed(b, 0x10000, 0x92);
    qb_data(b, 0x20000, 0x93);
    uint8_t junk[700];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(0xff - i * 7);
    qb_put_compressed(b, 0x30000, junk, sizeof(junk));
    qb_compressed(b, 0x40000, 0x94);     /* ends the file mid-sector */
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    unit_check_range(img, b->exp, 0, 0x30000);
    unit_check_range(img, b->exp, 0x40000, 0x10000);
    for (uint64_t off = 0; off < 0x20000; off += 4096)
        unit_check_range(img, b->exp, off, 4096);
    unit_check_range(img, b->exp, 0x50000, 0x10000);
    ck_assert_int_eq(unit_read_err(img, 0x30000, 4096), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x3f000, 4096), -EIO);
    ck_assert(unit_has_problem(img, zstd ? "corrupt zstd data" : "corrupt deflate data"));
    ck_assert_uint_eq(unit_nproblems(img), 1);
    unit_run_at(img, 0x1000, b->vsize - 0x1000, VRUN_DECODE, 0x1f000);
    unit_check_report(img, false, zstd ? "\"compression\": \"zstd\"" : "\"compression\": \"zlib\"");
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Whole compressed clusters in a row are fetched with one read: a damaged
 * one among them fails the read that covers it and no other; data far
 * apart, out of order, or past the end of the file still read right. */
START_TEST(test_compressed_batch)
{
    bool zstd = _i == 1;
    struct qb *b = qb_new_compressed(zstd, 2 << 20);
    for (uint64_t i = 0; i < 3; i++)
        qb_compressed(b, i << 16, (uint8_t)(0x40 + i));
    uint8_t junk[900];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(0x5a ^ i * 13);
    qb_put_compressed(b, 3 << 16, junk, sizeof(junk));
    for (uint64_t i = 4; i < 7; i++)
        qb_compressed(b, i << 16, (uint8_t)(0x40 + i));
    /* 200 KiB of other bytes before cluster 7's data: too far to join */
    static uint8_t gap[200 << 10];
    unit_put_bytes(&b->f, b->f.len, gap, sizeof(gap));
    qb_compressed(b, 7 << 16, 0x47);
    /* clusters 8..9 stored in reverse order, then 10..20 in order up to
     * the end of the file (the last one ends it mid-sector) */
    qb_compressed(b, 9 << 16, 0x49);
    qb_compressed(b, 8 << 16, 0x48);
    for (uint64_t i = 10; i <= 20; i++)
        qb_compressed(b, i << 16, (uint8_t)(0x40 + i));
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    unit_check_range(img, b->exp, 0, 3 << 16);
    ck_assert_int_eq(unit_read_err(img, 0, 6 << 16), -EIO);
    ck_assert_int_eq(unit_read_err(img, 2 << 16, 2 << 16), -EIO);
    unit_check_range(img, b->exp, 4 << 16, 3 << 16);
    unit_check_range(img, b->exp, 4 << 16, 17 << 16);
    unit_check_range(img, b->exp, 7 << 16, 14 << 16);
    unit_check_range(img, b->exp, 19 << 16, 2 << 16);
    unit_check_range(img, b->exp, (4 << 16) + 512, (16 << 16) - 1024);
    unit_check_range(img, b->exp, 21 << 16, b->vsize - (21 << 16));
    ck_assert(unit_has_problem(img, zstd ? "corrupt zstd data" : "corrupt deflate data"));
    ck_assert_uint_eq(unit_nproblems(img), 1);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Compressed clusters in a row map as one run, in one step per table;
 * the run ends at one whose data would start past the end of the file,
 * which alone is an error, and the next run starts after it. */
START_TEST(test_compressed_runs)
{
    struct qb *b = qb_new_compressed(false, 1 << 20);
    for (uint64_t i = 0; i < 4; i++)
        qb_compressed(b, i << 16, (uint8_t)(0x60 + i));
    qb_l2(b, 4 << 16);
    qb_set(b, 4 << 16, QCOW2_OFLAG_COMPRESSED | 1ull << 40, 0);
    for (uint64_t i = 5; i < 7; i++)
        qb_compressed(b, i << 16, (uint8_t)(0x60 + i));
    qb_data(b, 7 << 16, 0x67);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    unit_run_at(img, 0, b->vsize, VRUN_DECODE, 4 << 16);
    unit_run_at(img, 0x1234, b->vsize - 0x1234, VRUN_DECODE, (4 << 16) - 0x1234);
    unit_run_at(img, 4 << 16, b->vsize - (4 << 16), VRUN_ERROR, 1 << 16);
    unit_run_at(img, 5 << 16, b->vsize - (5 << 16), VRUN_DECODE, 2 << 16);
    unit_run_at(img, 6 << 16, 0x800, VRUN_DECODE, 0x800);
    unit_check_range(img, b->exp, 0, 4 << 16);
    unit_check_range(img, b->exp, 5 << 16, 3 << 16);
    ck_assert_int_eq(unit_read_err(img, 0, 5 << 16), -EIO);
    ck_assert_int_eq(unit_read_err(img, (4 << 16) + 0x800, 4096), -EIO);
    ck_assert(unit_has_problem(img, "lies past the end of the file"));
    ck_assert_uint_eq(unit_nproblems(img), 1);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* A compressed run names the cluster its first byte is in, and a read the
 * first cluster it decoded whole but used only part of; the disk's last
 * cluster, cut short by its end, is a unit that short. */
START_TEST(test_compressed_units)
{
    uint64_t vsize = (3 << 16) + 0x3000;
    struct qb *b = qb_new_compressed(false, vsize);
    qb_compressed(b, 0, 0x31);
    qb_data(b, 1 << 16, 0x32);
    qb_compressed(b, 2 << 16, 0x33);
    qb_compressed(b, 3 << 16, 0x34);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    struct vrun run = unit_run_at(img, 0x1234, vsize - 0x1234, VRUN_DECODE, 0x10000 - 0x1234);
    ck_assert_uint_eq(run.unit_off, 0);
    ck_assert_uint_eq(run.unit_len, 1 << 16);
    run = unit_run_at(img, (2 << 16) + 0x800, vsize - (2 << 16) - 0x800, VRUN_DECODE,
                      vsize - (2 << 16) - 0x800);
    ck_assert_uint_eq(run.unit_off, 2 << 16);
    ck_assert_uint_eq(run.unit_len, 1 << 16);
    run = unit_run_at(img, (3 << 16) + 0x1000, 0x1000, VRUN_DECODE, 0x1000);
    ck_assert_uint_eq(run.unit_off, 3 << 16);
    ck_assert_uint_eq(run.unit_len, 0x3000);
    run = unit_run_at(img, 1 << 16, 4096, VRUN_DATA, 4096);
    ck_assert_uint_eq(run.unit_len, 0);

    uint8_t buf[0x20000];
    struct vunit u;
    ck_assert_int_eq(vimage_read_unit(img, buf, 4096, 0x2000, &u), 0);
    ck_assert_mem_eq(buf, b->exp + 0x2000, 4096);
    ck_assert_uint_eq(u.off, 0);
    ck_assert_uint_eq(u.len, 1 << 16);
    /* A whole cluster read, or plain data: nothing decoded was left over. */
    ck_assert_int_eq(vimage_read_unit(img, buf, 1 << 16, 0, &u), 0);
    ck_assert_uint_eq(u.len, 0);
    ck_assert_int_eq(vimage_read_unit(img, buf, 4096, (1 << 16) + 4096, &u), 0);
    ck_assert_uint_eq(u.len, 0);
    /* From plain data into a compressed cluster: that one. */
    ck_assert_int_eq(vimage_read_unit(img, buf, 0x11000, (1 << 16) + 0x1000, &u), 0);
    ck_assert_mem_eq(buf, b->exp + (1 << 16) + 0x1000, 0x11000);
    ck_assert_uint_eq(u.off, 2 << 16);
    ck_assert_uint_eq(u.len, 1 << 16);
    /* The short last cluster read to the end of the disk: whole. */
    ck_assert_int_eq(vimage_read_unit(img, buf, 0x3000, 3 << 16, &u), 0);
    ck_assert_uint_eq(u.len, 0);
    ck_assert_int_eq(vimage_read_unit(img, buf, 0x1000, (3 << 16) + 0x1000, &u), 0);
    ck_assert_uint_eq(u.off, 3 << 16);
    ck_assert_uint_eq(u.len, 0x3000);
    /* A failed read tells nothing. */
    ck_assert_int_eq(vimage_read_unit(img, buf, 0x2000, vsize - 0x1000, &u), -EINVAL);
    ck_assert_uint_eq(u.len, 0);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Many 512-byte clusters in a row: more than one batch per read. */
START_TEST(test_compressed_small_clusters)
{
    struct qb *b = qb_new(3, 9, 64 << 10, false);
    for (uint64_t g = 0; g < 100; g++)
        qb_compressed(b, g << 9, (uint8_t)g);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    unit_check_range(img, b->exp, 0, b->vsize);
    unit_check_range(img, b->exp, 3 << 9, 70 << 9);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

struct thr {
    struct vimage *img;
    struct qb *b;
    unsigned seed;
    int bad;
};

static void *reader_thread(void *arg)
{
    struct thr *t = arg;
    uint8_t buf[8192];
    for (int i = 0; i < 400; i++) {
        t->seed = t->seed * 1103515245u + 12345u;
        uint64_t off = (t->seed >> 8) % (t->b->vsize - sizeof(buf));
        if (vimage_read(t->img, buf, sizeof(buf), off) != 0 ||
            memcmp(buf, t->b->exp + off, sizeof(buf)))
            t->bad++;
    }
    return NULL;
}

/* Many threads decompressing at once, each with its own decompressor. */
START_TEST(test_compressed_threads)
{
    struct qb *b = qb_new(3, 14, 1 << 20, false);
    b->compression = _i ? QCOW2_COMPRESSION_ZSTD : 0;
    b->incompat |= _i ? QCOW2_INCOMPAT_COMPRESSION : 0;
    for (uint64_t g = 0; g < b->vsize; g += b->cs)
        if ((g / b->cs) % 5 == 4)
            qb_data(b, g, (uint8_t)g);
        else
            qb_compressed(b, g, (uint8_t)(g >> 14));
    char *path;
    struct vimage *img = qb_open(b, &path);
    struct thr t[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (struct thr){img, b, (unsigned)i * 7919u + 1, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, reader_thread, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(t[i].bad, 0);
    }
    check_all(img, b);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

START_TEST(test_unknown_feature)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    b->incompat |= 1ull << 5 | 1ull << 40;
    qb_feature(b, 0, 5, "frobnication");
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "frobnication (bit 5)"));
    ck_assert(unit_has_problem(img, "bit 40"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

START_TEST(test_encrypted)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    b->crypt = (uint32_t)_i + 1;
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, _i ? "encrypted (LUKS)" : "encrypted (AES)"));
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

START_TEST(test_dirty_corrupt)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    b->incompat |= QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
    b->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    qb_data(b, 0x10000, 0xa1);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    check_all(img, b);
    unit_check_report(img, false, "\"dirty\": true", "\"corrupt\": true",
                      "\"lazy_refcounts\": true", "\"dirty bit\"");
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* An external data file: host offsets are guest offsets, 0 included. */
START_TEST(test_data_file)
{
    uint64_t vsize = 1 << 20;
    char *raw = raw_file(vsize, 0xb0);
    struct qb *b = qb_new(3, 16, vsize, false);
    b->incompat |= QCOW2_INCOMPAT_DATA_FILE;
    b->autoclear |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    bool missing = _i == 1;
    const char *name = missing ? "/nonexistent/vmfs-data.raw" : raw;
    qb_ext(b, QCOW2_EXT_DATA_FILE, name, (uint32_t)strlen(name));
    qb_set(b, 0, QCOW2_OFLAG_COPIED, 0);
    qb_set(b, 0x10000, 0x10000 | QCOW2_OFLAG_COPIED, 0);
    qb_set(b, 0x30000, 0x40000 | QCOW2_OFLAG_COPIED, 0);  /* not its guest offset */
    qb_set(b, 0x50000, QCOW2_OFLAG_ZERO | QCOW2_OFLAG_COPIED, 0);
    unit_fill(b->exp, 0x20000, 0xb0, 0);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    if (missing) {
        ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
        ck_assert(unit_has_problem(img, "external data file"));
        unit_check_range(img, b->exp, 0x20000, 0x10000);
    } else {
        unit_check_range(img, b->exp, 0, 0x30000);
        unit_check_range(img, b->exp, 0x40000, (size_t)vsize - 0x40000);
        ck_assert_int_eq(unit_read_err(img, 0x30000, 512), -EIO);
        ck_assert(unit_has_problem(img, "differs from the guest offset"));
        unit_check_report(img, false, "\"data_file_raw\": true", raw);
    }
    vimage_unref(img);
    unlink_free(path);
    unlink_free(raw);
    qb_free(b);
}
END_TEST

/* Writes one snapshot table entry at *pos; extra is 0 or 16 bytes. */
static void put_snapshot(struct qb *b, uint64_t *pos, uint64_t l1_off, uint32_t l1_size,
                         const char *id, const char *name, uint32_t extra, uint64_t disk)
{
    uint64_t p = *pos;
    put64(b, p, l1_off);
    put32(b, p + 8, l1_size);
    put16(b, p + 12, (uint16_t)strlen(id));
    put16(b, p + 14, (uint16_t)strlen(name));
    put32(b, p + 16, 1700000000u);
    put32(b, p + 20, 5);
    put64(b, p + 24, 123456789);
    put32(b, p + 32, 0);
    put32(b, p + 36, extra);
    if (extra >= 16) {
        put64(b, p + 40, 0);
        put64(b, p + 48, disk);
    }
    unit_put_bytes(&b->f, p + 40 + extra, id, strlen(id));
    unit_put_bytes(&b->f, p + 40 + extra + strlen(id), name, strlen(name));
    *pos = p + ((40 + extra + strlen(id) + strlen(name) + 7) & ~7ull);
}

START_TEST(test_snapshots)
{
    struct qb *b = qb_new(3, 12, 64 << 10, false);
    qb_data(b, 0, 0xc1);
    /* Snapshot "before": its own L1 and L2, a 32 KiB disk. */
    uint64_t cur_l1 = b->l1_off;
    uint64_t sl1 = qb_alloc(b, 1);
    b->l1_off = sl1;
    uint8_t *keep = malloc((size_t)b->vsize);
    memcpy(keep, b->exp, (size_t)b->vsize);
    qb_data(b, 0, 0xd1);
    qb_data(b, 0x1000, 0xd2);
    uint8_t *snap_exp = malloc(32 << 10);
    memcpy(snap_exp, b->exp, 32 << 10);
    memcpy(b->exp, keep, (size_t)b->vsize);
    b->l1_off = cur_l1;
    b->nb_snap = 3;
    b->snap_off = qb_alloc(b, 1);
    uint64_t pos = b->snap_off;
    put_snapshot(b, &pos, sl1, 1, "1", "before", 16, 32 << 10);
    put_snapshot(b, &pos, cur_l1, 1, "2", "", 0, 0);
    put_snapshot(b, &pos, sl1 + 8, 1, "3", "bad l1", 16, 32 << 10);
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    check_all(img, b);
    ck_assert_uint_eq(vimage_snapshot_count(img), 3);
    const struct vsnap *s = vimage_snapshot(img, 0);
    ck_assert_str_eq(s->id, "1");
    ck_assert_str_eq(s->name, "before");
    ck_assert_uint_eq(s->disk_size, 32 << 10);
    ck_assert_int_eq(s->date_sec, 1700000000);
    ck_assert_uint_eq(s->date_nsec, 5);
    ck_assert_uint_eq(s->vm_clock_nsec, 123456789);
    s = vimage_snapshot(img, 1);
    ck_assert_str_eq(s->name, "");
    ck_assert_uint_eq(s->disk_size, 64 << 10);   /* no extra data: the header's */
    unit_check_report(img, false, "\"snapshot_table\"");
    vimage_unref(img);

    img = open_img(path, 0);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 32 << 10);
    uint8_t buf[32 << 10];
    ck_assert_int_eq(vimage_read(img, buf, sizeof(buf), 0), 0);
    ck_assert(!memcmp(buf, snap_exp, sizeof(buf)));
    vimage_unref(img);

    img = open_img(path, 1);
    ck_assert(!img->top_failed);
    check_all(img, b);
    vimage_unref(img);

    img = open_img(path, 2);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "L1 table of snapshot 3"));
    vimage_unref(img);
    unlink_free(path);
    free(keep);
    free(snap_exp);
    qb_free(b);
}
END_TEST

/* A damaged snapshot table hides the snapshots, not the disk. */
START_TEST(test_bad_snapshot_table)
{
    static const char *const want[] = {
        "past the end of the file", "more than 65536", "extra data", "past the end of the file",
    };
    struct qb *b = qb_new(3, 12, 64 << 10, false);
    qb_data(b, 0, 0xe1);
    switch (_i) {
    case 0:
        b->nb_snap = 1;
        b->snap_off = (b->f.len + 0x10000) & ~0xfffull;
        break;
    case 1:
        b->nb_snap = 70000;
        b->snap_off = qb_alloc(b, 1);
        break;
    case 2: {
        b->nb_snap = 1;
        b->snap_off = qb_alloc(b, 1);
        uint64_t pos = b->snap_off;
        put_snapshot(b, &pos, b->l1_off, 1, "1", "x", 16, 0);
        put32(b, b->snap_off + 36, 5000);
        break;
    }
    default: {
        b->nb_snap = 2;           /* the second entry is cut off */
        b->snap_off = qb_alloc(b, 1);
        uint64_t pos = b->snap_off;
        put_snapshot(b, &pos, b->l1_off, 1, "1", "x", 16, 0);
        b->f.len = (size_t)pos + 20;
        break;
    }
    }
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    ck_assert(unit_has_problem(img, want[_i]));
    ck_assert_uint_eq(vimage_snapshot_count(img), 0);
    check_all(img, b);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

START_TEST(test_header_extensions)
{
    struct qb *b = qb_new(3, 12, 64 << 10, false);
    qb_data(b, 0, 0xf1);
    char *path;
    /* An extension longer than the header cluster. */
    qb_ext(b, 0x12345678, "abc", 3);
    qb_finish(b);
    put32(b, 104 + 4, 0xfffffff0u);
    path = qb_file(b);
    struct vimage *img = open_img(path, -1);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "header extension"));
    vimage_unref(img);
    unlink_free(path);

    /* The cluster full of empty unknown extensions and no end marker. */
    for (uint64_t off = 104; off < b->cs; off += 8) {
        put32(b, off, 0x7777);
        put32(b, off + 4, 0);
    }
    path = qb_file(b);
    img = open_img(path, -1);
    ck_assert(!img->top_failed);
    check_all(img, b);
    vimage_unref(img);
    unlink_free(path);

    /* A backing format name too long to be one: the backing file is
     * unusable, the image's own clusters read. */
    memset(b->f.d + 104, 0, (size_t)b->cs - 104);
    b->extlen = 0;
    strcpy(b->backing, "base.raw");
    qb_ext(b, QCOW2_EXT_BACKING_FMT, "a-very-long-format-name", 23);
    qb_finish(b);
    path = qb_file(b);
    img = open_img(path, -1);
    ck_assert(!img->top_failed);
    ck_assert(unit_has_problem(img, "backing format"));
    unit_check_range(img, b->exp, 0, 0x1000);
    ck_assert_int_eq(unit_read_err(img, 0x1000, 512), -EIO);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

START_TEST(test_truncated_header)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    qb_finish(b);
    static const size_t cuts[] = {8, 50, 90};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(cuts); i++) {
        char *path = unit_tmpfile(b->f.d, cuts[i], "qcow2");
        struct vimage *img = open_img(path, -1);
        ck_assert_ptr_nonnull(img);
        ck_assert(img->top_failed);
        ck_assert(unit_has_problem(img, "truncated"));
        ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
        vimage_unref(img);
        unlink_free(path);
    }
    char *path = unit_tmpfile("", 0, "qcow2");
    struct vimage *img = open_img(path, -1);
    if (img) {
        ck_assert(img->top_failed || img->size == 0);
        vimage_unref(img);
    }
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* qemu sees the virtual size in whole 512-byte sectors. */
START_TEST(test_size_rounding)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    qb_data(b, 0, 0x31);
    qb_finish(b);
    put64(b, 24, 1000);
    char *path = qb_file(b);
    struct vimage *img = open_img(path, -1);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 512);
    unit_check_range(img, b->exp, 0, 512);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Data clusters stored in a hole of the host file are holes for the
 * allocation view (SEEK_DATA/SEEK_HOLE) and zeros for reads. */
START_TEST(test_alloc_holes)
{
    struct qb *b = qb_new(3, 16, 1 << 20, false);
    qb_data(b, 0, 0x41);
    uint64_t hole = qb_data(b, 0x10000, 0x42);
    qb_data(b, 0x20000, 0x43);
    memset(b->f.d + hole, 0, (size_t)b->cs);
    memset(b->exp + 0x10000, 0, (size_t)b->cs);
    qb_finish(b);
    char *path = qb_file(b);
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    bool punched = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)hole,
                             (off_t)b->cs) == 0;
    close(fd);
    struct vimage *img = open_img(path, -1);
    check_all(img, b);
    unit_run_at(img, 0, b->vsize, VRUN_DATA, 0x30000);          /* reads: one data run */
    bool data;
    uint64_t len;
    ck_assert_int_eq(vimage_extent(img, 0, &data, &len), 0);
    ck_assert(data);
    if (punched) {
        ck_assert_uint_eq(len, 0x10000);
        unit_extent_at(img, 0x10000, false, 0x10000);
        unit_extent_at(img, 0x20000, true, 0x10000);
    }
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Guest offset of entry i of slice si of L2 table t, for 16 KiB clusters:
 * 512 entries (8 MiB) per 4 KiB slice, 4 slices per table. */
#define WT_CS (16u << 10)
static uint64_t wt_off(unsigned t, unsigned si, unsigned i)
{
    return ((uint64_t)t * 4 + si) * 512 * WT_CS + (uint64_t)i * WT_CS;
}

/* Allocation walks read tables ahead and remember slices that hold only
 * zero entries; runs of contiguous clusters are one step.  Whatever the
 * order of walks and reads, the answers stay those of the entries. */
START_TEST(test_walk_tables)
{
    struct qb *b = qb_new(3, 14, 3 * 4 * 512 * (uint64_t)WT_CS, false);   /* 96 MiB */
    /* Table 0: five contiguous data clusters and two lone ones in slice
     * 0, slice 1 empty, a run of zero clusters in slice 2, one data
     * cluster at the end of slice 3. */
    uint64_t host = qb_alloc(b, 5);
    for (unsigned i = 0; i < 5; i++) {
        uint64_t g = wt_off(0, 0, 10 + i);
        qb_set(b, g, (host + i * WT_CS) | QCOW2_OFLAG_COPIED, 0);
        unit_fill(b->f.d + host + i * WT_CS, WT_CS, 0x31, g);
        exp_pattern(b, g, 0x31);
    }
    qb_data(b, wt_off(0, 0, 100), 0x32);
    qb_data(b, wt_off(0, 0, 511), 0x33);
    for (unsigned i = 0; i < 7; i++)
        qb_set(b, wt_off(0, 2, 3 + i), QCOW2_OFLAG_ZERO, 0);
    qb_data(b, wt_off(0, 3, 511), 0x34);
    /* Table 1 unallocated; table 2 allocated and all zero. */
    qb_l2(b, wt_off(2, 0, 0));
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(unit_nproblems(img), 0);

    /* Reads first (slices come one at a time), then the walk. */
    unit_check_range(img, b->exp, 0, 4 * 512 * WT_CS);
    ck_assert_uint_eq(vimage_allocated(img), 8 * WT_CS);
    struct vrun run = unit_run_at(img, wt_off(0, 0, 10), 8 * WT_CS, VRUN_DATA, 5 * WT_CS);
    ck_assert_uint_eq(run.src_off, host);
    run = unit_run_at(img, wt_off(0, 0, 12) + 100, 8 * WT_CS, VRUN_DATA, 3 * WT_CS - 100);
    ck_assert_uint_eq(run.src_off, host + 2 * WT_CS + 100);
    unit_run_at(img, wt_off(0, 2, 0), b->vsize - wt_off(0, 2, 0), VRUN_BACKING, 3 * WT_CS);
    unit_run_at(img, wt_off(0, 2, 3), b->vsize - wt_off(0, 2, 3), VRUN_ZERO, 7 * WT_CS);
    /* From the end of slice 0 over the empty slice 1 to the zero run. */
    unit_run_at(img, wt_off(0, 0, 511) + WT_CS, b->vsize, VRUN_BACKING,
                wt_off(0, 2, 3) - wt_off(0, 1, 0));
    unit_extent_at(img, wt_off(0, 3, 511) + WT_CS, false, b->vsize - wt_off(1, 0, 0));
    unit_extent_at(img, wt_off(0, 1, 7), false, wt_off(0, 3, 511) - wt_off(0, 1, 7));
    check_all(img, b);
    vimage_unref(img);

    /* The walk first, on a fresh opening: then the reads.  The walk
     * reads tables in place and caches no slice; reads cache the three
     * that hold entries, not the empty ones. */
    img = open_img(path, -1);
    ck_assert_uint_eq(vimage_allocated(img), 8 * WT_CS);
    struct vcache_stats cs;
    vcache_get_stats(&cs);
    ck_assert_uint_eq(cs.entries, 0);
    ck_assert_uint_eq(vimage_count_data(img, wt_off(0, 0, 12), wt_off(0, 3, 0)), 5 * WT_CS);
    check_all(img, b);
    vcache_get_stats(&cs);
    ck_assert_uint_eq(cs.entries, 3);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

/* Runs of unallocated entries of every length and alignment inside a
 * slice (a walk skips them 64 bytes at a time where it can), with normal
 * and extended L2 entries: the count and every extent stay exact. */
static void walk_gaps(bool ext)
{
    static const unsigned at[] = {0, 1, 2, 7, 8, 9, 15, 16, 31, 33, 63, 64, 65, 100, 127,
                                  128, 200, 255, 256, 257, 400, 500, 509};
    unsigned n = sizeof at / sizeof at[0];
    unsigned per = ext ? 256 : 512;          /* entries per 4 KiB slice */
    struct qb *b = qb_new(3, 14, 2 * (uint64_t)per * WT_CS, ext);
    for (unsigned i = 0; i < n; i++)
        if (at[i] < per)
            qb_data(b, (uint64_t)at[i] * WT_CS, (uint8_t)(0x40 + i));
    qb_data(b, (uint64_t)(2 * per - 1) * WT_CS, 0x3f);     /* last of slice 1 */
    char *path;
    struct vimage *img = qb_open(b, &path);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    uint64_t want = 1;
    for (unsigned i = 0; i < n; i++)
        want += at[i] < per;
    ck_assert_uint_eq(vimage_allocated(img), want * WT_CS);
    /* Every hole ends exactly at the next data cluster. */
    for (unsigned i = 0; i + 1 < n && at[i + 1] < per; i++) {
        uint64_t end = (uint64_t)at[i] * WT_CS + WT_CS, next = (uint64_t)at[i + 1] * WT_CS;
        if (next > end)
            unit_extent_at(img, end, false, next - end);
        ck_assert_uint_eq(vimage_count_data(img, end, b->vsize - end), (want - 1 - i) * WT_CS);
    }
    check_all(img, b);
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}

START_TEST(test_walk_gaps)
{
    walk_gaps(false);
    walk_gaps(true);
}
END_TEST

/* A run of contiguous clusters whose end lies past the end of the file:
 * the clusters inside stay readable, the others fail, each once listed. */
START_TEST(test_run_past_eof)
{
    struct qb *b = qb_new(3, 12, 1 << 20, false);
    qb_l2(b, 0);
    uint64_t host = qb_alloc(b, 4);
    for (unsigned i = 0; i < 4; i++) {
        qb_set(b, 0x2000 + i * 0x1000, (host + i * 0x1000) | QCOW2_OFLAG_COPIED, 0);
        unit_fill(b->f.d + host + i * 0x1000, 0x1000, 0x71, 0x2000 + i * 0x1000);
        exp_pattern(b, 0x2000 + i * 0x1000, 0x71);
    }
    b->f.len = (size_t)(host + 2 * 0x1000 + 512);      /* the third cluster is cut */
    char *path;
    struct vimage *img = qb_open(b, &path);
    unit_check_range(img, b->exp, 0x2000, 0x2000);
    ck_assert_int_eq(unit_read_err(img, 0x4000, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x5000, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0x2000, 0x4000), -EIO);
    ck_assert(unit_has_problem(img, "guest offset 0x4000: data cluster"));
    ck_assert(unit_has_problem(img, "guest offset 0x5000: data cluster"));
    unit_run_at(img, 0x2000, 0x4000, VRUN_DATA, 0x2000);
    ck_assert_uint_eq(vimage_allocated(img), 4 * 0x1000);   /* errors count as data */
    vimage_unref(img);
    unlink_free(path);
    qb_free(b);
}
END_TEST

START_TEST(test_probe)
{
    uint8_t h[8] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    ck_assert_int_eq(vfmt_qcow2.probe(h, 8, 1 << 20, "x"), 100);
    h[7] = 1;   /* qcow version 1: not ours */
    ck_assert_int_eq(vfmt_qcow2.probe(h, 8, 1 << 20, "x"), 0);
    h[0] = 'X';
    ck_assert_int_eq(vfmt_qcow2.probe(h, 8, 1 << 20, "x"), 0);
    ck_assert_int_eq(vfmt_qcow2.probe(h, 0, 0, "x"), 0);
}
END_TEST

static Suite *qcow2_suite(void)
{
    Suite *s = suite_create("qcow2");
    TCase *t = tcase_create("pure");
    tcase_add_test(t, test_classify);
    tcase_add_test(t, test_compressed_desc);
    tcase_add_test(t, test_l1_entries);
    tcase_add_test(t, test_parse_header);
    tcase_add_test(t, test_probe);
    suite_add_tcase(s, t);

    t = tcase_create("images");
    tcase_set_timeout(t, 60);
    tcase_add_loop_test(t, test_basic_versions, 2, 4);
    tcase_add_loop_test(t, test_cluster_sizes, 0, 3);
    tcase_add_test(t, test_l1_at_end);
    tcase_add_test(t, test_past_eof);
    tcase_add_test(t, test_absurd_sizes);
    tcase_add_test(t, test_l1_too_small);
    tcase_add_test(t, test_bad_backing_name);
    tcase_add_test(t, test_unaligned);
    tcase_add_test(t, test_v2_zero_flag);
    tcase_add_test(t, test_subclusters);
    tcase_add_loop_test(t, test_compressed, 0, 2);
    tcase_add_loop_test(t, test_compressed_batch, 0, 2);
    tcase_add_test(t, test_compressed_runs);
    tcase_add_test(t, test_compressed_units);
    tcase_add_test(t, test_compressed_small_clusters);
    tcase_add_loop_test(t, test_compressed_threads, 0, 2);
    tcase_add_test(t, test_unknown_feature);
    tcase_add_loop_test(t, test_encrypted, 0, 2);
    tcase_add_test(t, test_dirty_corrupt);
    tcase_add_loop_test(t, test_data_file, 0, 2);
    tcase_add_test(t, test_snapshots);
    tcase_add_loop_test(t, test_bad_snapshot_table, 0, 4);
    tcase_add_test(t, test_header_extensions);
    tcase_add_test(t, test_truncated_header);
    tcase_add_test(t, test_size_rounding);
    tcase_add_test(t, test_alloc_holes);
    tcase_add_test(t, test_walk_tables);
    tcase_add_test(t, test_walk_gaps);
    tcase_add_test(t, test_run_past_eof);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return unit_run(qcow2_suite());
}
