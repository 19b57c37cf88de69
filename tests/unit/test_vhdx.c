/* Unit tests: the VHDX driver over images built here byte by byte — every
 * block state, 512 and 4096-byte sectors, differencing chains with sector
 * bitmaps and parent locators, pending logs replayed in memory, and every
 * kind of damage the driver must survive. */
#include "config.h"

#include "unit.h"
#include "fmt/vhdx.h"
#include "vmfs/image.h"
#include "vmfs/report.h"

#define MB (UINT64_C(1) << 20)
#define LOG_OFF (1 * MB)
#define MD_OFF (2 * MB)
#define BAT_OFF (3 * MB)
#define DATA_OFF (4 * MB)

static void put16(uint8_t *p, uint16_t v) { unit_le(p, v, 2); }
static void put32(uint8_t *p, uint32_t v) { unit_le(p, v, 4); }
static void put64(uint8_t *p, uint64_t v) { unit_le(p, v, 8); }

static void guid(uint8_t g[16], const char *s) { ck_assert(vhdx_guid_parse(s, g)); }

/* ------------------------------------------------------------------------
 * An image builder: header area, log at 1 MiB, metadata at 2 MiB, BAT at
 * 3 MiB, payload from 4 MiB.  vb_finish writes the structures from the
 * fields; tests damage bytes afterwards.
 * ---------------------------------------------------------------------- */

struct vb {
    uint8_t *buf;
    size_t size;
    uint32_t bs, lss;
    uint64_t vsize, cr, next;
    bool diff, fixed, unknown_required;
    uint64_t hseq[2];
    uint8_t dwg[16], logguid[16];
    const char *pl_key[6], *pl_val[6];
    int npl;
    uint8_t *exp;          /* the expected disk (its first exp_len bytes) */
    uint64_t exp_len;
};

static void vb_grow(struct vb *b, size_t size)
{
    if (size <= b->size)
        return;
    b->buf = realloc(b->buf, size);
    memset(b->buf + b->size, 0, size - b->size);
    b->size = size;
}

static void vb_init(struct vb *b, uint64_t vsize, uint32_t bs, uint32_t lss, bool diff)
{
    memset(b, 0, sizeof *b);
    vb_grow(b, DATA_OFF);
    b->bs = bs;
    b->lss = lss;
    b->vsize = vsize;
    b->diff = diff;
    b->cr = ((UINT64_C(1) << 23) * lss) / bs;
    b->next = DATA_OFF;
    b->hseq[0] = 5;
    b->hseq[1] = 6;
    guid(b->dwg, "{11111111-2222-3333-4455-66778899AABB}");
    b->exp_len = vsize <= 64 * MB ? vsize : MB;
    b->exp = calloc(1, b->exp_len);
}

static void vb_free(struct vb *b)
{
    free(b->buf);
    free(b->exp);
}

static uint64_t vb_alloc(struct vb *b, uint64_t n)
{
    uint64_t off = b->next;
    b->next += (n + MB - 1) / MB * MB;
    vb_grow(b, b->next);
    return off;
}

static void vb_bat(struct vb *b, uint64_t idx, unsigned state, uint64_t off)
{
    put64(b->buf + BAT_OFF + idx * 8, state | off);
}

static void vb_block(struct vb *b, uint64_t blk, unsigned state, uint64_t off)
{
    vb_bat(b, blk + blk / b->cr, state, off);
}

/* Block blk fully present with pattern tag, also in the expected disk. */
static uint64_t vb_data(struct vb *b, uint64_t blk, uint8_t tag)
{
    uint64_t off = vb_alloc(b, b->bs);
    for (uint64_t i = 0; i < b->bs; i++)
        b->buf[off + i] = unit_pat(tag, blk * b->bs + i);
    for (uint64_t i = blk * b->bs; i < (blk + 1) * b->bs && i < b->vsize && i < b->exp_len; i++)
        b->exp[i] = unit_pat(tag, i);
    vb_block(b, blk, 6, off);
    return off;
}

static void utf16(uint8_t *p, const char *s)
{
    for (size_t i = 0; s[i]; i++)
        put16(p + 2 * i, (uint8_t)s[i]);
}

static void vb_header(struct vb *b, int i)
{
    uint8_t *h = b->buf + (i ? 0x20000 : 0x10000);
    memset(h, 0, 4096);
    memcpy(h, "head", 4);
    put64(h + 8, b->hseq[i]);
    guid(h + 16, "{AAAAAAAA-0000-0000-0000-000000000001}");
    memcpy(h + 32, b->dwg, 16);
    memcpy(h + 48, b->logguid, 16);
    put16(h + 66, 1);
    put32(h + 68, (uint32_t)MB);
    put64(h + 72, LOG_OFF);
    put32(h + 4, vhdx_struct_crc(h, 4096, 4));
}

static void vb_regions(struct vb *b)
{
    for (int i = 0; i < 2; i++) {
        uint8_t *t = b->buf + (i ? 0x40000 : 0x30000);
        memset(t, 0, 65536);
        memcpy(t, "regi", 4);
        put32(t + 8, 2);
        guid(t + 16, "{2DC27766-F623-4200-9D64-115E9BFD4A08}");
        put64(t + 32, BAT_OFF);
        put32(t + 40, (uint32_t)MB);
        put32(t + 44, 1);
        guid(t + 48, "{8B7CA206-4790-4B9A-B8FE-575F050F886E}");
        put64(t + 64, MD_OFF);
        put32(t + 72, (uint32_t)MB);
        put32(t + 76, 1);
        put32(t + 4, vhdx_struct_crc(t, 65536, 4));
    }
}

static void md_entry(uint8_t *t, int i, const char *g, uint32_t off, uint32_t len, uint32_t flags)
{
    uint8_t *e = t + 32 + 32 * i;
    guid(e, g);
    put32(e + 16, off);
    put32(e + 20, len);
    put32(e + 24, flags);
}

static uint32_t vb_locator(struct vb *b, uint8_t *p)
{
    guid(p, "{B04AEFB7-D19E-4A81-B789-25B8E9445913}");
    put16(p + 18, (uint16_t)b->npl);
    uint32_t at = 20 + 12 * (uint32_t)b->npl;
    for (int i = 0; i < b->npl; i++) {
        uint8_t *e = p + 20 + 12 * i;
        size_t kl = strlen(b->pl_key[i]) * 2, vl = strlen(b->pl_val[i]) * 2;
        put32(e, at);
        put16(e + 8, (uint16_t)kl);
        utf16(p + at, b->pl_key[i]);
        at += (uint32_t)kl;
        put32(e + 4, at);
        put16(e + 10, (uint16_t)vl);
        utf16(p + at, b->pl_val[i]);
        at += (uint32_t)vl;
    }
    return at;
}

static void vb_metadata(struct vb *b)
{
    uint8_t *t = b->buf + MD_OFF;
    memset(t, 0, MB);
    memcpy(t, "metadata", 8);
    uint8_t *it = t + 65536;
    put32(it, b->bs);
    put32(it + 4, (b->fixed ? 1 : 0) | (b->diff ? 2 : 0));
    put64(it + 8, b->vsize);
    put32(it + 16, b->lss);
    put32(it + 20, 4096);
    guid(it + 24, "{01020304-0506-0708-090A-0B0C0D0E0F10}");
    int n = 0;
    md_entry(t, n++, "{CAA16737-FA36-4D43-B3B6-33F0AA44E76B}", 65536, 8, 4);
    md_entry(t, n++, "{2FA54224-CD1B-4876-B211-5DBED83BF4B8}", 65536 + 8, 8, 6);
    md_entry(t, n++, "{8141BF1D-A96F-4709-BA47-F233A8FAAB5F}", 65536 + 16, 4, 6);
    md_entry(t, n++, "{CDA348C7-445D-4471-9CC9-E9885251C556}", 65536 + 20, 4, 6);
    md_entry(t, n++, "{BECA12AB-B2E6-4523-93EF-C309E000C746}", 65536 + 24, 16, 6);
    if (b->diff) {
        uint32_t len = vb_locator(b, it + 4096);
        md_entry(t, n++, "{A8D35F2D-B30B-454D-ABF7-D3D84834AB0C}", 65536 + 4096, len, 4);
    }
    if (b->unknown_required)
        md_entry(t, n++, "{DEADBEEF-0000-0000-0000-000000000000}", 65536 + 40, 4, 4);
    md_entry(t, n++, "{DEADBEEF-0000-0000-0000-000000000001}", 65536 + 40, 4, 0);
    put16(t + 10, (uint16_t)n);
}

static void vb_finish(struct vb *b)
{
    memset(b->buf, 0, 65536);
    memcpy(b->buf, "vhdxfile", 8);
    utf16(b->buf + 8, "vmfs unit test");
    vb_header(b, 0);
    vb_header(b, 1);
    vb_regions(b);
    vb_metadata(b);
}

static char *vb_write(struct vb *b, const char *ext)
{
    vb_finish(b);
    return unit_tmpfile(b->buf, b->size, ext);
}

static void rewrite(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* ------------------------------------------------------------------------
 * Log entries
 * ---------------------------------------------------------------------- */

struct lspec {
    bool data;
    uint64_t off, zlen;
    uint8_t fill;         /* data: the sector's bytes are unit_pat(fill, i) */
};

static void sector_of(const struct lspec *o, uint8_t *s)
{
    for (int i = 0; i < 4096; i++)
        s[i] = unit_pat(o->fill, (uint64_t)i);
}

/* Writes one entry at log sector `at` (wrapping at nsect); returns its
 * length in sectors. */
static uint32_t log_entry(uint8_t *log, uint32_t nsect, uint32_t at, const uint8_t g[16],
                          uint64_t seq, uint32_t tail, const struct lspec *ops, int n,
                          uint64_t last_off, bool corrupt)
{
    uint32_t ndata = 0;
    for (int i = 0; i < n; i++)
        ndata += ops[i].data;
    uint32_t dsect = (64 + 32 * (uint32_t)n + 4095) / 4096;
    uint32_t total = dsect + ndata;
    uint8_t *e = calloc(total, 4096);
    memcpy(e, "loge", 4);
    put32(e + 8, total * 4096);
    put32(e + 12, tail * 4096);
    put64(e + 16, seq);
    put32(e + 24, (uint32_t)n);
    memcpy(e + 32, g, 16);
    put64(e + 48, 0);
    put64(e + 56, last_off);
    uint32_t k = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *d = e + 64 + 32 * i;
        put64(d + 16, ops[i].off);
        put64(d + 24, seq);
        if (!ops[i].data) {
            memcpy(d, "zero", 4);
            put64(d + 8, ops[i].zlen);
            continue;
        }
        uint8_t s[4096];
        sector_of(&ops[i], s);
        memcpy(d, "desc", 4);
        memcpy(d + 4, s + 4092, 4);
        memcpy(d + 8, s, 8);
        uint8_t *ds = e + (dsect + k++) * 4096;
        memcpy(ds + 8, s + 8, 4084);
        memcpy(ds, "data", 4);
        put32(ds + 4, (uint32_t)(seq >> 32));
        put32(ds + 4092, (uint32_t)seq);
    }
    put32(e + 4, vhdx_crc32c(0, e, (size_t)total * 4096));
    if (corrupt)
        e[100] ^= 0x40;
    for (uint32_t i = 0; i < total; i++)
        memcpy(log + ((at + i) % nsect) * 4096, e + i * 4096, 4096);
    free(e);
    return total;
}

/* Applies an operation to a byte array standing for the file. */
static void apply_op(uint8_t *file, const struct lspec *o)
{
    if (o->data)
        sector_of(o, file + o->off);
    else
        memset(file + o->off, 0, o->zlen);
}

/* ------------------------------------------------------------------------
 * Checking
 * ---------------------------------------------------------------------- */

static const struct vopen_opts opts = {.root = NULL, .allow_external = true};

static struct vimage *open_ok(const char *path)
{
    struct vimage *img = vimage_open(path, &opts, -1, false);
    ck_assert_ptr_nonnull(img);
    ck_assert(!img->top_failed);
    return img;
}

/* The whole disk in one read, in pieces of many sizes, and a few odd
 * slices read as expected. */
static void check_bytes(struct vimage *img, const uint8_t *exp, uint64_t size)
{
    unit_check_range(img, exp, 0, (size_t)size);
    unit_check_disk(img, exp, size);
    static const uint64_t offs[][2] = {{1, 511}, {1048575, 2}, {1048000, 100000}, {7, 4096}};
    for (size_t k = 0; k < VMFS_ARRAY_SIZE(offs); k++) {
        if (offs[k][0] + offs[k][1] > size)
            continue;
        unit_check_range(img, exp, offs[k][0], (size_t)offs[k][1]);
    }
}

static void expect_eio(struct vimage *img, uint64_t off, size_t len)
{
    ck_assert_int_eq(unit_read_err(img, off, len), -EIO);
}

static struct vimage *open_failed(const char *path, const char *problem)
{
    struct vimage *img = vimage_open(path, &opts, -1, false);
    unit_check_refused(img, problem);
    return img;
}

/* ------------------------------------------------------------------------
 * Pure helpers
 * ---------------------------------------------------------------------- */

START_TEST(test_crc32c)
{
    ck_assert_uint_eq(vhdx_crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(vhdx_crc32c(vhdx_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
    ck_assert_uint_eq(vhdx_crc32c(0, "", 0), 0);
    uint8_t b[16] = "abcdXXXXefghijkl";
    uint8_t z[16] = "abcd\0\0\0\0efghijkl";
    ck_assert_uint_eq(vhdx_struct_crc(b, 16, 4), vhdx_crc32c(0, z, 16));
}
END_TEST

START_TEST(test_guid)
{
    uint8_t g[16];
    char s[39];
    ck_assert(vhdx_guid_parse("{2DC27766-F623-4200-9D64-115E9BFD4A08}", g));
    ck_assert_uint_eq(g[0], 0x66);
    ck_assert_uint_eq(g[3], 0x2d);
    ck_assert_uint_eq(g[4], 0x23);
    ck_assert_uint_eq(g[8], 0x9d);
    ck_assert_uint_eq(g[15], 0x08);
    vhdx_guid_format(g, s);
    ck_assert_str_eq(s, "{2DC27766-F623-4200-9D64-115E9BFD4A08}");
    ck_assert(vhdx_guid_parse("2dc27766-f623-4200-9d64-115e9bfd4a08", g));
    ck_assert(!vhdx_guid_parse("{2DC27766-F623-4200-9D64-115E9BFD4A0}", g));
    ck_assert(!vhdx_guid_parse("{2DC27766F623-4200-9D64-115E9BFD4A08}", g));
    ck_assert(!vhdx_guid_parse("{2DC27766-F623-4200-9D64-115E9BFD4A08", g));
    ck_assert(!vhdx_guid_parse("{2DC27766-F623-4200-9D64-115E9BFD4A0G}", g));
    ck_assert(!vhdx_guid_parse("", g));
}
END_TEST

START_TEST(test_utf16)
{
    uint8_t in[16] = {'C', 0, ':', 0, 0x3d, 0xd8, 0x00, 0xde, 0xe9, 0, 0x00, 0xdc, 0, 0, 'x', 0};
    char *s = vhdx_utf16_to_utf8(in, sizeof in);
    ck_assert_str_eq(s, "C:\xf0\x9f\x98\x80\xc3\xa9\xef\xbf\xbd");
    free(s);
    s = vhdx_utf16_to_utf8(in, 3);
    ck_assert_str_eq(s, "C");
    free(s);
}
END_TEST

/* The pure replay: stale entries, an entry of another log, a sequence that
 * wraps around the end of the log, later writes over earlier ones. */
START_TEST(test_log_replay_pure)
{
    const uint32_t nsect = 16;
    uint8_t *log = calloc(nsect, 4096);
    uint8_t g[16], other[16];
    guid(g, "{12345678-1234-1234-1234-123456789ABC}");
    guid(other, "{87654321-1234-1234-1234-123456789ABC}");
    struct lspec stale[] = {{true, 0x10000, 0, 0x01}};
    log_entry(log, nsect, 4, g, 3, 4, stale, 1, 0, false);
    log_entry(log, nsect, 8, other, 50, 8, stale, 1, 0, false);
    struct lspec e1[] = {{true, 0x20000, 0, 0x21}, {false, 0x30000, 0x4000, 0},
                         {true, 0x31000, 0, 0x22}};
    struct lspec e2[] = {{true, 0x20000, 0, 0x23}, {false, 0x31000, 0x1000, 0}};
    uint32_t l1 = log_entry(log, nsect, 14, g, 40, 14, e1, 3, 8 * MB, false);
    log_entry(log, nsect, (14 + l1) % nsect, g, 41, 14, e2, 2, 9 * MB, false);

    struct vhdx_overlay ovl;
    struct vhdx_log_result res;
    vhdx_log_replay(log, nsect * 4096, g, UINT64_C(1) << 48, &ovl, &res);
    ck_assert_uint_eq(res.entries, 2);
    ck_assert_uint_eq(res.first_seq, 40);
    ck_assert_uint_eq(res.last_seq, 41);
    ck_assert_str_eq(res.damage, "");
    ck_assert_uint_eq(res.last_file_offset, 9 * MB);
    ck_assert_uint_eq(ovl.end, 9 * MB);

    uint8_t *file = malloc(0x40000), *want = malloc(0x40000);
    memset(file, 0xee, 0x40000);
    memcpy(want, file, 0x40000);
    for (int i = 0; i < 3; i++)
        apply_op(want, &e1[i]);
    for (int i = 0; i < 2; i++)
        apply_op(want, &e2[i]);
    vhdx_overlay_apply(&ovl, file, 0x40000, 0);
    ck_assert(!memcmp(file, want, 0x40000));
    ck_assert(vhdx_overlay_touches(&ovl, 0x20fff, 1));
    ck_assert(!vhdx_overlay_touches(&ovl, 0x21000, 0xf000));
    ck_assert(vhdx_overlay_touches(&ovl, 0x2ffff, 2));
    /* A window in the middle of a zeroed range. */
    memset(file, 0xee, 0x100);
    vhdx_overlay_apply(&ovl, file, 0x100, 0x30100);
    for (int i = 0; i < 0x100; i++)
        ck_assert_uint_eq(file[i], 0);
    vhdx_overlay_free(&ovl);

    /* The second entry damaged: only the first is replayed, and said so. */
    log_entry(log, nsect, (14 + l1) % nsect, g, 41, 14, e2, 2, 9 * MB, true);
    vhdx_log_replay(log, nsect * 4096, g, UINT64_C(1) << 48, &ovl, &res);
    ck_assert_uint_eq(res.entries, 1);
    ck_assert_uint_eq(res.last_seq, 40);
    ck_assert_ptr_nonnull(strstr(res.damage, "checksum mismatch"));
    ck_assert_ptr_nonnull(strstr(res.damage, "sequence 40 only"));
    vhdx_overlay_free(&ovl);

    /* A log of another GUID replays nothing and is no damage. */
    uint8_t third[16];
    guid(third, "{00000000-0000-0000-0000-0000000000FF}");
    vhdx_log_replay(log, nsect * 4096, third, UINT64_C(1) << 48, &ovl, &res);
    ck_assert_uint_eq(res.entries, 0);
    ck_assert_str_eq(res.damage, "");
    ck_assert_uint_eq(ovl.n, 0);
    vhdx_overlay_free(&ovl);

    /* A head whose tail leads through a hole is no sequence. */
    memset(log, 0, nsect * 4096);
    log_entry(log, nsect, 0, g, 7, 0, e2, 2, 0, false);
    log_entry(log, nsect, 5, g, 9, 0, e2, 2, 0, false);
    vhdx_log_replay(log, nsect * 4096, g, UINT64_C(1) << 48, &ovl, &res);
    ck_assert_uint_eq(res.entries, 1);
    ck_assert_uint_eq(res.last_seq, 7);
    ck_assert_ptr_nonnull(strstr(res.damage, "sequence 9"));
    vhdx_overlay_free(&ovl);

    /* Writes past the limit make the entry invalid. */
    memset(log, 0, nsect * 4096);
    struct lspec far[] = {{false, 0, UINT64_C(1) << 50, 0}};
    log_entry(log, nsect, 0, g, 7, 0, far, 1, 0, false);
    vhdx_log_replay(log, nsect * 4096, g, UINT64_C(1) << 48, &ovl, &res);
    ck_assert_uint_eq(res.entries, 0);
    ck_assert_ptr_nonnull(strstr(res.damage, "malformed descriptor"));
    vhdx_overlay_free(&ovl);
    free(file);
    free(want);
    free(log);
}
END_TEST

/* ------------------------------------------------------------------------
 * Whole images
 * ---------------------------------------------------------------------- */

/* A dynamic image with every payload state; the last block is partial. */
static void build_dynamic(struct vb *b, uint32_t lss)
{
    vb_init(b, 5 * MB + 4096, (uint32_t)MB, lss, false);
    vb_data(b, 0, 0x10);
    vb_data(b, 1, 0x20);          /* right after block 0 in the file */
    vb_block(b, 2, 0, 0);         /* not present */
    vb_block(b, 3, 2, 0);         /* zero */
    uint64_t junk = vb_alloc(b, MB);
    memset(b->buf + junk, 0x77, MB);
    vb_block(b, 4, 1, junk);      /* undefined: zeros, whatever the file holds */
    vb_data(b, 5, 0x30);
}

static void test_dynamic_lss(uint32_t lss)
{
    struct vb b;
    build_dynamic(&b, lss);
    char *path = vb_write(&b, "vhdx");
    struct vimage *img = open_ok(path);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    check_bytes(img, b.exp, b.vsize);

    /* Runs: blocks 0-1 contiguous data as one run, 2-4 one hole. */
    struct vrun run;
    run = unit_run_at(img, 100, b.vsize - 100, VRUN_DATA, 2 * MB - 100);
    ck_assert_uint_eq(run.src_off, DATA_OFF + 100);
    unit_run_at(img, 2 * MB, b.vsize - 2 * MB, VRUN_ZERO, 3 * MB);
    unit_run_at(img, 5 * MB, 4096, VRUN_DATA, 4096);
    unit_extent_at(img, 0, true, 2 * MB);
    ck_assert_uint_eq(vimage_allocated(img), 2 * MB + 4096);

    unit_check_report(img, false, "\"subformat\": \"dynamic\"");
    unit_check_report(img, false, "\"block_size\": 1048576");
    unit_check_report(img, false, lss == 512 ? "\"logical_sector_size\": 512"
                                         : "\"logical_sector_size\": 4096");
    unit_check_report(img, false, "\"log\": \"clean\"");
    unit_check_report(img, false, "\"header_used\": 2");
    unit_check_report(img, false, "\"creator\": \"vmfs unit test\"");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}

START_TEST(test_dynamic_512) { test_dynamic_lss(512); }
END_TEST

START_TEST(test_dynamic_4k) { test_dynamic_lss(4096); }
END_TEST

/* Big blocks, chunk ratio crossings: with 256 MiB blocks and 512-byte
 * sectors a chunk is 16 blocks, so block 16's entry (index 17) follows the
 * first sector bitmap entry.  It points at 1 MiB of data where 256 MiB are
 * needed: past the end of the file. */
START_TEST(test_big_blocks)
{
    struct vb b;
    vb_init(&b, 17 * 256 * MB, 256 * (uint32_t)MB, 512, false);
    b.fixed = true;
    uint64_t off = vb_alloc(&b, MB);
    for (uint64_t i = 0; i < MB; i++)
        b.buf[off + i] = unit_pat(0x44, i);
    char *path = vb_write(&b, "vhdx");
    /* Patch the BAT: block 16's entry is at index 17. */
    uint8_t e[8];
    put64(e, 6 | off);
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, (long)(BAT_OFF + 17 * 8), SEEK_SET);
    fwrite(e, 1, 8, f);
    fclose(f);
    struct vimage *img = open_ok(path);
    uint8_t buf[4096];
    ck_assert_int_eq(vimage_read(img, buf, sizeof buf, 16 * 256 * MB), -EIO);  /* block past EOF */
    ck_assert(unit_has_problem(img, "past the end of the file"));
    ck_assert_int_eq(vimage_read(img, buf, sizeof buf, 15 * 256 * MB), 0);
    unit_check_report(img, false, "\"chunk_ratio\": 16");
    unit_check_report(img, false, "\"subformat\": \"fixed\"");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

/* A present block in a hole of the host file is a hole for SEEK_HOLE and
 * st_blocks, and reads as zeros. */
START_TEST(test_host_holes)
{
    struct vb b;
    build_dynamic(&b, 512);
    vb_block(&b, 4, 6, b.size);         /* just past what is written */
    char *path = vb_write(&b, "vhdx");
    ck_assert_int_eq(truncate(path, (off_t)(b.size + MB)), 0);
    struct vimage *img = open_ok(path);
    check_bytes(img, b.exp, b.vsize);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    bool data;
    uint64_t len;
    unit_extent_at(img, 2 * MB, false, 3 * MB);
    ck_assert_int_eq(vimage_extent(img, 5 * MB, &data, &len), 0);
    ck_assert(data);
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_header_damage)
{
    struct vb b;
    build_dynamic(&b, 512);
    vb_finish(&b);
    b.buf[0x20000 + 200] ^= 1;          /* header 2 (the newer) damaged */
    char *path = unit_tmpfile(b.buf, b.size, "vhdx");
    struct vimage *img = open_ok(path);
    check_bytes(img, b.exp, b.vsize);
    ck_assert(unit_has_problem(img, "header 2 is damaged (checksum mismatch); header 1"));
    unit_check_report(img, false, "\"header_used\": 1");
    vimage_unref(img);

    b.buf[0x10000] = 'X';               /* and header 1's signature */
    rewrite(path, b.buf, b.size);
    img = open_failed(path, "both headers are damaged");
    ck_assert_int_eq(vimage_read(img, b.exp, 512, 0), -EIO);
    vimage_unref(img);

    vb_finish(&b);                      /* a version 2 header */
    put16(b.buf + 0x20000 + 66, 2);
    put32(b.buf + 0x20000 + 4, vhdx_struct_crc(b.buf + 0x20000, 4096, 4));
    rewrite(path, b.buf, b.size);
    img = open_failed(path, "version 2 is not supported");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_region_damage)
{
    struct vb b;
    build_dynamic(&b, 512);
    vb_finish(&b);
    b.buf[0x30000 + 40] ^= 1;
    char *path = unit_tmpfile(b.buf, b.size, "vhdx");
    struct vimage *img = open_ok(path);
    check_bytes(img, b.exp, b.vsize);
    ck_assert(unit_has_problem(img, "region table 1 is damaged (checksum mismatch)"));
    vimage_unref(img);
    b.buf[0x40000 + 40] ^= 1;
    rewrite(path, b.buf, b.size);
    img = open_failed(path, "both region tables are damaged");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_bad_magic)
{
    struct vb b;
    build_dynamic(&b, 512);
    vb_finish(&b);
    memcpy(b.buf, "vhdxfilf", 8);
    char *path = unit_tmpfile(b.buf, b.size, "vhdx");
    struct vimage *img = vimage_open(path, &opts, -1, false);
    ck_assert(img == NULL || img->top_failed);
    vimage_unref(img);
    /* Too short to hold the headers. */
    memcpy(b.buf, "vhdxfile", 8);
    rewrite(path, b.buf, 0x30000);
    img = open_failed(path, "truncated");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_absurd)
{
    static const struct { uint64_t vsize; uint32_t bs, lss; const char *problem; } cases[] = {
        {UINT64_C(1) << 50, (uint32_t)MB, 512, "absurd"},
        {4 * MB, 3 * (uint32_t)MB, 512, "block size 3145728 is invalid"},
        {4 * MB, (uint32_t)MB / 2, 512, "block size 524288 is invalid"},
        {4 * MB, 512 * (uint32_t)MB, 512, "block size 536870912 is invalid"},
        {4 * MB, (uint32_t)MB, 1024, "logical sector size 1024 is invalid"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(cases); i++) {
        struct vb b;
        vb_init(&b, 4 * MB, (uint32_t)MB, 512, false);
        b.vsize = cases[i].vsize;
        b.bs = cases[i].bs;
        b.lss = cases[i].lss;
        char *path = vb_write(&b, "vhdx");
        struct vimage *img = open_failed(path, cases[i].problem);
        vimage_unref(img);
        unlink_free(path);
        vb_free(&b);
    }
    /* A BAT region too small for the disk: the blocks it lacks fail. */
    struct vb b;
    vb_init(&b, 200 * 1024 * MB, (uint32_t)MB, 512, false);
    vb_data(&b, 0, 0x55);
    char *path = vb_write(&b, "vhdx");
    struct vimage *img = open_ok(path);
    ck_assert(unit_has_problem(img, "the BAT region holds 131072 entries"));
    unit_check_range(img, b.exp, 0, MB);
    expect_eio(img, 199 * 1024 * MB, 512);
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_metadata_items)
{
    struct vb b;
    build_dynamic(&b, 512);
    b.unknown_required = true;
    char *path = vb_write(&b, "vhdx");
    struct vimage *img = open_failed(path, "is marked required but vmfs does not know it");
    vimage_unref(img);
    b.unknown_required = false;
    vb_finish(&b);
    memcpy(b.buf + MD_OFF, "metadatX", 8);
    rewrite(path, b.buf, b.size);
    img = open_failed(path, "metadata table has a bad signature");
    vimage_unref(img);
    vb_finish(&b);
    put32(b.buf + MD_OFF + 32 + 16, 0xfff0000);      /* file parameters far away */
    rewrite(path, b.buf, b.size);
    img = open_failed(path, "lies outside the metadata region");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_bad_blocks)
{
    struct vb b;
    build_dynamic(&b, 512);
    vb_block(&b, 1, 6, 200 * MB);       /* past the end of the file */
    vb_block(&b, 2, 7, DATA_OFF);       /* partially present, not a differencing image */
    vb_block(&b, 3, 4, 0);              /* reserved state */
    vb_block(&b, 4, 6, 0);              /* present at offset 0 */
    char *path = vb_write(&b, "vhdx");
    struct vimage *img = open_ok(path);
    unit_check_range(img, b.exp, 0, MB);
    unit_check_range(img, b.exp, 5 * MB, 4096);
    expect_eio(img, MB + 12345, 100);
    expect_eio(img, 2 * MB, 512);
    expect_eio(img, 3 * MB + 4096, 512);
    expect_eio(img, 4 * MB, 512);
    expect_eio(img, 0, (size_t)b.vsize);
    ck_assert(unit_has_problem(img, "block 1 (virtual offset 1048576) lies at file offset 209715200, "
                               "past the end of the file"));
    ck_assert(unit_has_problem(img, "block 2 (virtual offset 2097152) is partially present"));
    ck_assert(unit_has_problem(img, "reserved state 4"));
    ck_assert(unit_has_problem(img, "inside the header area"));
    vimage_unref(img);

    /* A truncated file: block 5 is cut, the rest reads. */
    vb_free(&b);
    build_dynamic(&b, 512);
    vb_finish(&b);
    rewrite(path, b.buf, (size_t)(b.size - MB + 100));
    img = open_ok(path);
    unit_check_range(img, b.exp, 0, 5 * MB);
    expect_eio(img, 5 * MB, 512);
    ck_assert(unit_has_problem(img, "past the end of the file"));
    vimage_unref(img);
    /* Cut inside the BAT: blocks whose entries are gone fail, the rest of
     * what the file still holds reads. */
    rewrite(path, b.buf, (size_t)(BAT_OFF + 32));
    img = open_ok(path);
    ck_assert(unit_has_problem(img, "runs past the end of the file"));
    unit_check_range(img, b.exp, 2 * MB, 2 * MB);   /* entries 2 and 3 are in the file */
    expect_eio(img, 0, 512);                 /* data past the end */
    expect_eio(img, 4 * MB, 512);            /* entry past the end */
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------
 * Differencing images
 * ---------------------------------------------------------------------- */

static const char *base_name(const char *path) { return strrchr(path, '/') + 1; }

/* A parent with patterns over its whole 4 MiB disk. */
static char *write_parent(struct vb *p, uint32_t lss)
{
    vb_init(p, 4 * MB, (uint32_t)MB, lss, false);
    guid(p->dwg, "{CAFEBABE-0000-1111-2222-333344445555}");
    for (uint64_t k = 0; k < 4; k++)
        vb_data(p, k, (uint8_t)(0x60 + k));
    return vb_write(p, "vhdx");
}

/* A child of parent: block 0 partially present, 1 fully present, 2 not
 * present, 3 zero. */
static void build_child(struct vb *c, const struct vb *p, uint32_t lss)
{
    vb_init(c, 4 * MB, (uint32_t)MB, lss, true);
    memcpy(c->exp, p->exp, 4 * MB);
    uint64_t off = vb_alloc(c, MB);
    uint64_t sb = vb_alloc(c, MB);
    vb_block(c, 0, 7, off);
    vb_bat(c, c->cr, 6, sb);
    uint64_t secs[][2] = {{0, 8}, {100, 1}, {MB / lss - 3, 3}};
    for (size_t k = 0; k < 3; k++) {
        for (uint64_t s = secs[k][0]; s < secs[k][0] + secs[k][1]; s++) {
            c->buf[sb + s / 8] |= (uint8_t)(1 << (s % 8));
            for (uint64_t i = s * lss; i < (s + 1) * lss; i++)
                c->exp[i] = c->buf[off + i] = unit_pat(0x90, i);
        }
    }
    /* Bytes whose bit is 0 must not show: fill them with junk. */
    for (uint64_t i = 8 * lss; i < 100 * lss; i++)
        c->buf[off + i] = 0xdd;
    vb_data(c, 1, 0xa0);
    vb_block(c, 2, 0, 0);
    vb_block(c, 3, 2, 0);
    memset(c->exp + 3 * MB, 0, MB);
    c->hseq[0] = 9;
    c->hseq[1] = 3;
}

static void set_locator(struct vb *c, const char *rel, const char *abs, const char *link)
{
    c->npl = 0;
    c->pl_key[c->npl] = "parent_linkage";
    c->pl_val[c->npl++] = link;
    if (rel) {
        c->pl_key[c->npl] = "relative_path";
        c->pl_val[c->npl++] = rel;
    }
    c->pl_key[c->npl] = "volume_path";
    c->pl_val[c->npl++] = "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\nowhere\\x.vhdx";
    if (abs) {
        c->pl_key[c->npl] = "absolute_win32_path";
        c->pl_val[c->npl++] = abs;
    }
}

static void test_diff_lss(uint32_t lss)
{
    struct vb p, c;
    char *ppath = write_parent(&p, lss);
    build_child(&c, &p, lss);
    char rel[128];
    snprintf(rel, sizeof rel, ".\\%s", base_name(ppath));
    set_locator(&c, rel, "C:\\VMs\\nowhere.vhdx", "{CAFEBABE-0000-1111-2222-333344445555}");
    char *cpath = vb_write(&c, "avhdx");
    struct vimage *img = open_ok(cpath);
    ck_assert_uint_eq(img->nlayers, 2);
    check_bytes(img, c.exp, c.vsize);
    ck_assert_uint_eq(unit_nproblems(img), 0);

    unit_run_at(img, 0, 4 * MB, VRUN_DATA, 8 * lss);
    unit_run_at(img, 8 * lss + 3, 4 * MB - 8 * lss - 3, VRUN_BACKING, 92 * lss - 3);
    unit_run_at(img, 2 * MB, 2 * MB, VRUN_BACKING, MB);

    unit_check_report(img, false, "\"subformat\": \"differencing\"");
    unit_check_report(img, false, "\"parent_linkage_check\": \"matches the parent\"");
    unit_check_report(img, false, "\"absolute_win32_path\": \"C:\\\\VMs\\\\nowhere.vhdx\"");
    unit_check_report(img, false, "\"header_used\": 1");
    vimage_unref(img);
    unlink_free(cpath);
    unlink_free(ppath);
    vb_free(&p);
    vb_free(&c);
}

START_TEST(test_diff_512) { test_diff_lss(512); }
END_TEST

START_TEST(test_diff_4k) { test_diff_lss(4096); }
END_TEST

/* Only a Windows path names the parent: found beside the child; a wrong
 * parent_linkage is reported. */
/* A BAT slice of the cache holds 8192 entries.  With 1 MiB blocks and
 * 512-byte sectors a chunk has 4096 blocks and its sector bitmap entry
 * comes after them: block 8190's entry (8191) is in the first slice, its
 * chunk's bitmap entry (8193) and block 8191's entry (8192) in the second.
 * Reads across the two blocks go back and forth between the slices. */
START_TEST(test_diff_bitmap_entry_next_slice)
{
    const uint64_t vsize = 8192 * MB;
    struct vb p, c;
    vb_init(&p, vsize, (uint32_t)MB, 512, false);
    guid(p.dwg, "{CAFEBABE-0000-1111-2222-333344445555}");
    char *ppath = vb_write(&p, "vhdx");
    vb_init(&c, vsize, (uint32_t)MB, 512, true);
    ck_assert_uint_eq(c.cr, 4096);
    uint64_t off = vb_alloc(&c, MB), off2 = vb_alloc(&c, MB), sb = vb_alloc(&c, MB);
    vb_block(&c, 8190, 7, off);
    vb_bat(&c, 2 * c.cr + 1, 6, sb);
    /* Sectors 0-7 and the last one of block 8190 are the child's. */
    uint64_t first_bit = (8190 % c.cr) * (MB / 512);
    for (uint64_t s = 0; s < 8; s++)
        c.buf[sb + (first_bit + s) / 8] |= (uint8_t)(1 << ((first_bit + s) % 8));
    uint64_t last = first_bit + MB / 512 - 1;
    c.buf[sb + last / 8] |= (uint8_t)(1 << (last % 8));
    for (uint64_t i = 0; i < MB; i++)
        c.buf[off + i] = unit_pat(0x31, i);
    vb_block(&c, 8191, 6, off2);
    for (uint64_t i = 0; i < MB; i++)
        c.buf[off2 + i] = unit_pat(0x42, i);
    set_locator(&c, base_name(ppath), NULL, "{CAFEBABE-0000-1111-2222-333344445555}");
    char *cpath = vb_write(&c, "avhdx");
    struct vimage *img = open_ok(cpath);
    ck_assert_uint_eq(img->nlayers, 2);

    struct vrun run;
    const uint64_t at = 8190 * MB;
    run = unit_run_at(img, at, 2 * MB, VRUN_DATA, 4096);
    ck_assert_uint_eq(run.src_off, off);
    unit_run_at(img, at + 4096, 2 * MB - 4096, VRUN_BACKING, MB - 4096 - 512);
    /* The last sector of block 8190 and all of block 8191 lie back to
     * back in the file: one run across the slice change. */
    run = unit_run_at(img, at + MB - 512, MB + 512, VRUN_DATA, MB + 512);
    ck_assert_uint_eq(run.src_off, off + MB - 512);

    uint8_t *exp = calloc(1, 2 * MB), *buf = malloc(2 * MB);
    for (uint64_t i = 0; i < 4096; i++)
        exp[i] = unit_pat(0x31, i);
    for (uint64_t i = MB - 512; i < MB; i++)
        exp[i] = unit_pat(0x31, i);
    for (uint64_t i = 0; i < MB; i++)
        exp[MB + i] = unit_pat(0x42, i);
    ck_assert_int_eq(vimage_read(img, buf, 2 * MB, at), 0);
    ck_assert(!memcmp(buf, exp, 2 * MB));
    for (uint64_t o = 0; o < 2 * MB; o += 3 * 4096 + 512) {
        size_t n = (size_t)VMFS_MIN((uint64_t)8192, 2 * MB - o);
        ck_assert_int_eq(vimage_read(img, buf, n, at + o), 0);
        ck_assert(!memcmp(buf, exp + o, n));
    }
    ck_assert_uint_eq(unit_nproblems(img), 0);
    free(exp);
    free(buf);
    vimage_unref(img);
    unlink_free(cpath);
    unlink_free(ppath);
    vb_free(&p);
    vb_free(&c);
}
END_TEST

START_TEST(test_diff_windows_path)
{
    struct vb p, c;
    char *ppath = write_parent(&p, 512);
    build_child(&c, &p, 512);
    char abs[160];
    snprintf(abs, sizeof abs, "D:\\Hyper-V\\Virtual Hard Disks\\%s", base_name(ppath));
    set_locator(&c, "..\\elsewhere\\missing.vhdx", abs, "{00000000-0000-1111-2222-333344445555}");
    char *cpath = vb_write(&c, "avhdx");
    struct vimage *img = open_ok(cpath);
    ck_assert_uint_eq(img->nlayers, 2);
    check_bytes(img, c.exp, c.vsize);
    ck_assert(unit_has_problem(img, "parent_linkage {00000000-0000-1111-2222-333344445555} does not "
                               "match the DataWriteGuid {CAFEBABE-0000-1111-2222-333344445555}"));
    unit_check_report(img, false, "\"parent_linkage_check\": \"differs from the parent\"");
    vimage_unref(img);
    unlink_free(cpath);
    unlink_free(ppath);
    vb_free(&p);
    vb_free(&c);
}
END_TEST

START_TEST(test_diff_missing_parent)
{
    struct vb p, c;
    char *ppath = write_parent(&p, 512);
    build_child(&c, &p, 512);
    set_locator(&c, "missing-parent.vhdx", NULL, "{CAFEBABE-0000-1111-2222-333344445555}");
    char *cpath = vb_write(&c, "avhdx");
    struct vimage *img = open_ok(cpath);
    ck_assert_uint_eq(img->nlayers, 1);
    ck_assert(unit_has_problem(img, "missing-parent.vhdx"));
    unit_check_range(img, c.exp, 0, 8 * 512);
    unit_check_range(img, c.exp, MB, MB);
    unit_check_range(img, c.exp, 3 * MB, MB);
    expect_eio(img, 8 * 512, 512);
    expect_eio(img, 2 * MB, 4096);
    vimage_unref(img);

    /* No locator at all. */
    c.npl = 0;
    c.pl_key[0] = "other";
    c.pl_val[0] = "x";
    c.npl = 1;
    vb_finish(&c);
    rewrite(cpath, c.buf, c.size);
    img = open_ok(cpath);
    ck_assert(unit_has_problem(img, "names no parent path"));
    unit_check_range(img, c.exp, MB, MB);
    expect_eio(img, 2 * MB, 4096);
    vimage_unref(img);
    unlink_free(cpath);
    unlink_free(ppath);
    vb_free(&p);
    vb_free(&c);
}
END_TEST

/* Two children naming each other. */
START_TEST(test_diff_loop)
{
    struct vb p, a, b2;
    char *ppath = write_parent(&p, 512);
    build_child(&a, &p, 512);
    build_child(&b2, &p, 512);
    set_locator(&a, "placeholder.vhdx", NULL, "{CAFEBABE-0000-1111-2222-333344445555}");
    char *apath = vb_write(&a, "avhdx");
    set_locator(&b2, base_name(apath), NULL, "{CAFEBABE-0000-1111-2222-333344445555}");
    char *bpath = vb_write(&b2, "avhdx");
    set_locator(&a, base_name(bpath), NULL, "{CAFEBABE-0000-1111-2222-333344445555}");
    vb_finish(&a);
    rewrite(apath, a.buf, a.size);
    struct vimage *img = open_ok(apath);
    ck_assert(unit_has_problem(img, "loop"));
    unit_check_range(img, a.exp, MB, MB);
    expect_eio(img, 2 * MB, 4096);
    vimage_unref(img);
    unlink_free(apath);
    unlink_free(bpath);
    unlink_free(ppath);
    vb_free(&p);
    vb_free(&a);
    vb_free(&b2);
}
END_TEST

START_TEST(test_diff_bad_bitmap)
{
    struct vb p, c;
    char *ppath = write_parent(&p, 512);
    build_child(&c, &p, 512);
    char rel[128];
    snprintf(rel, sizeof rel, "%s", base_name(ppath));
    set_locator(&c, rel, NULL, "{CAFEBABE-0000-1111-2222-333344445555}");
    vb_bat(&c, c.cr, 0, 0);             /* bitmap not present */
    char *cpath = vb_write(&c, "avhdx");
    struct vimage *img = open_ok(cpath);
    expect_eio(img, 0, 512);
    unit_check_range(img, c.exp, MB, 3 * MB);
    ck_assert(unit_has_problem(img, "sector bitmap of its chunk is not"));
    vimage_unref(img);
    vb_bat(&c, c.cr, 6, 300 * MB);      /* bitmap past the end */
    vb_finish(&c);
    rewrite(cpath, c.buf, c.size);
    img = open_ok(cpath);
    expect_eio(img, 0, 512);
    ck_assert(unit_has_problem(img, "outside the file"));
    vimage_unref(img);
    unlink_free(cpath);
    unlink_free(ppath);
    vb_free(&p);
    vb_free(&c);
}
END_TEST

/* ------------------------------------------------------------------------
 * Pending logs
 * ---------------------------------------------------------------------- */

/* A dirty image: the on-disk BAT knows blocks 0 and 5 only; the log
 * allocates block 2 (its data sectors written through the log past the end
 * of the file), zeroes part of block 0, rewrites one of its sectors, and
 * grows the virtual size from 5 MiB + 4 KiB to 7 MiB. */
static void build_dirty(struct vb *b, bool corrupt_second)
{
    build_dynamic(b, 512);
    vb_block(b, 1, 0, 0);
    memset(b->exp + MB, 0, MB);
    guid(b->logguid, "{0BADF00D-0000-0000-0000-00000000D1E7}");
    vb_finish(b);
    uint64_t file_end = b->size;
    uint64_t newblk = file_end + MB;            /* beyond the end of the file */

    /* The BAT sector with block 2 present at newblk, and a new size. */
    uint8_t *batsec = b->buf + BAT_OFF;
    uint8_t savebat[4096], savemd[4096];
    memcpy(savebat, batsec, 4096);
    memcpy(savemd, b->buf + MD_OFF + 65536, 4096);
    put64(batsec + 2 * 8, 6 | newblk);
    put64(b->buf + MD_OFF + 65536 + 8, 7 * MB);
    /* Log data sectors hold patterns; to log the real sectors, the entry
     * is built from the sectors themselves below. */
    uint32_t nsect = (uint32_t)(MB / 4096);
    uint8_t *log = b->buf + LOG_OFF;

    /* Entry 1 (sequence 20): the BAT and metadata sectors, two sectors of
     * block 2's payload, a zeroed range of block 0. */
    uint8_t *e = calloc(8, 4096);
    int nd = 0;
    const uint8_t *secs[4] = {batsec, b->buf + MD_OFF + 65536, NULL, NULL};
    uint64_t offs[4] = {BAT_OFF, MD_OFF + 65536, newblk, newblk + 8192};
    uint8_t pay[2][4096];
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 4096; i++)
            pay[k][i] = unit_pat((uint8_t)(0xb0 + k), (uint64_t)i);
        secs[2 + k] = pay[k];
    }
    uint32_t ndesc = 5, dsect = 1, total = dsect + 4;
    memcpy(e, "loge", 4);
    put32(e + 8, total * 4096);
    put32(e + 12, 0);
    put64(e + 16, 20);
    put32(e + 24, ndesc);
    memcpy(e + 32, b->logguid, 16);
    put64(e + 48, file_end);
    put64(e + 56, newblk + MB);
    for (int k = 0; k < 4; k++, nd++) {
        uint8_t *d = e + 64 + 32 * nd;
        memcpy(d, "desc", 4);
        memcpy(d + 4, secs[k] + 4092, 4);
        memcpy(d + 8, secs[k], 8);
        put64(d + 16, offs[k]);
        put64(d + 24, 20);
        uint8_t *ds = e + (dsect + (uint32_t)k) * 4096;
        memcpy(ds, "data", 4);
        put32(ds + 4, 0);
        memcpy(ds + 8, secs[k] + 8, 4084);
        put32(ds + 4092, 20);
    }
    uint8_t *d = e + 64 + 32 * nd;
    memcpy(d, "zero", 4);
    put64(d + 8, 3 * 4096);
    put64(d + 16, DATA_OFF + 4096);
    put64(d + 24, 20);
    put32(e + 4, vhdx_crc32c(0, e, (size_t)total * 4096));
    memcpy(log, e, (size_t)total * 4096);
    free(e);
    /* The file keeps the old BAT and metadata. */
    memcpy(batsec, savebat, 4096);
    memcpy(b->buf + MD_OFF + 65536, savemd, 4096);

    /* Entry 2 (sequence 21): one sector of block 0 rewritten. */
    struct lspec e2[] = {{true, DATA_OFF + 5 * 4096, 0, 0xc7}};
    log_entry(log, nsect, total, b->logguid, 21, 0, e2, 1, newblk + MB, corrupt_second);

    /* What the disk holds after replay. */
    uint8_t *exp = calloc(1, 7 * MB);
    memcpy(exp, b->exp, b->vsize);
    for (uint64_t i = b->vsize; i < 6 * MB; i++)   /* block 5 grows whole */
        exp[i] = unit_pat(0x30, i);
    free(b->exp);
    b->exp = exp;
    b->vsize = b->exp_len = 7 * MB;
    memset(exp + 4096, 0, 3 * 4096);
    memset(exp + 2 * MB, 0, MB);
    memcpy(exp + 2 * MB, pay[0], 4096);
    memcpy(exp + 2 * MB + 8192, pay[1], 4096);
    if (!corrupt_second)
        sector_of(&e2[0], exp + 5 * 4096);
}

START_TEST(test_log_pending)
{
    struct vb b;
    build_dirty(&b, false);
    char *path = unit_tmpfile(b.buf, b.size, "vhdx");
    struct vimage *img = open_ok(path);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    check_bytes(img, b.exp, b.vsize);
    unit_check_report(img, false, "\"log\": \"replayed 2 entries (sequence 20 to 21)\"");
    /* Block 2 lives past the end of the file: its runs are not spliced
     * from the file; block 5's untouched data is. */
    struct vlayer *l = img->layers[0];
    struct vrun run;
    ck_assert_int_eq(l->drv->map(l, 2 * MB, MB, &run), 0);
    ck_assert_int_eq(run.kind, VRUN_DATA);
    ck_assert_int_eq(run.src->fd, -1);
    ck_assert_int_eq(l->drv->map(l, 5 * MB, 4096, &run), 0);
    ck_assert_int_ge(run.src->fd, 0);
    vimage_unref(img);

    /* The second entry damaged: the first alone is replayed. */
    vb_free(&b);
    build_dirty(&b, true);
    rewrite(path, b.buf, b.size);
    img = open_ok(path);
    check_bytes(img, b.exp, b.vsize);
    ck_assert(unit_has_problem(img, "checksum mismatch: the log is replayed up to sequence 20 only"));
    unit_check_report(img, false, "\"log\": \"replayed 1 entry (sequence 20 to 20)\"");
    vimage_unref(img);

    /* Both damaged: nothing replayed, the on-disk state is served. */
    b.buf[LOG_OFF + 200] ^= 1;
    rewrite(path, b.buf, b.size);
    img = open_ok(path);
    ck_assert(unit_has_problem(img, "nothing is replayed"));
    ck_assert_uint_eq(img->size, 5 * MB + 4096);
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

START_TEST(test_log_bad_region)
{
    struct vb b;
    build_dynamic(&b, 512);
    guid(b.logguid, "{0BADF00D-0000-0000-0000-00000000D1E7}");
    vb_finish(&b);
    put64(b.buf + 0x20000 + 72, 900 * MB);        /* log past the end */
    put32(b.buf + 0x20000 + 4, vhdx_struct_crc(b.buf + 0x20000, 4096, 4));
    char *path = unit_tmpfile(b.buf, b.size, "vhdx");
    struct vimage *img = open_failed(path, "pending log");
    vimage_unref(img);
    unlink_free(path);
    vb_free(&b);
}
END_TEST

static Suite *vhdx_suite(void)
{
    Suite *s = suite_create("vhdx");
    TCase *t = tcase_create("vhdx");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_crc32c);
    tcase_add_test(t, test_guid);
    tcase_add_test(t, test_utf16);
    tcase_add_test(t, test_log_replay_pure);
    tcase_add_test(t, test_dynamic_512);
    tcase_add_test(t, test_dynamic_4k);
    tcase_add_test(t, test_big_blocks);
    tcase_add_test(t, test_host_holes);
    tcase_add_test(t, test_header_damage);
    tcase_add_test(t, test_region_damage);
    tcase_add_test(t, test_bad_magic);
    tcase_add_test(t, test_absurd);
    tcase_add_test(t, test_metadata_items);
    tcase_add_test(t, test_bad_blocks);
    tcase_add_test(t, test_diff_512);
    tcase_add_test(t, test_diff_4k);
    tcase_add_test(t, test_diff_bitmap_entry_next_slice);
    tcase_add_test(t, test_diff_windows_path);
    tcase_add_test(t, test_diff_missing_parent);
    tcase_add_test(t, test_diff_loop);
    tcase_add_test(t, test_diff_bad_bitmap);
    tcase_add_test(t, test_log_pending);
    tcase_add_test(t, test_log_bad_region);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return unit_run(vhdx_suite());
}
