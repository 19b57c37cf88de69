/* Unit tests: the VMDK driver and its descriptor parser, over sparse files
 * and descriptors built byte by byte in memory by the small builder below,
 * written to temporary files and opened through the image layer. */
#include "config.h"

#include <libgen.h>
#include <pthread.h>
#include <zlib.h>

#include "unit.h"
#include "vmfs/image.h"
#include "vmfs/report.h"
#include "../../src/fmt/vmdk.h"

extern const struct vfmt_driver vfmt_vmdk;

#define SEC 512u

/* ------------------------------------------------------------------------
 * The builder: a hosted sparse file, grain by grain
 * ---------------------------------------------------------------------- */

enum gk { G_NONE, G_DATA, G_ZERO, G_COMP, G_COMP_BAD };

struct sb {
    struct unit_buf f;            /* the file */
    uint64_t capacity, grain;     /* sectors */
    uint32_t gtes, flags, version;
    uint16_t compress;
    const char *desc;             /* embedded descriptor, or NULL */
    bool gd_at_end;               /* streamOptimized layout with a footer */
    uint8_t tag;
    uint64_t gd_sector, rgd_sector;
    uint64_t ngd;
};

/* n zeroed sectors at the end of the file; returns the first. */
static uint64_t sb_sectors(struct sb *b, uint64_t n)
{
    return unit_append(&b->f, n * SEC, SEC) / SEC;
}

static void sb_header(struct sb *b, uint64_t at, uint64_t gd_sector)
{
    memcpy(b->f.d + at, "KDMV", 4);
    unit_put_le(&b->f, at + 4, b->version, 4);
    unit_put_le(&b->f, at + 8, b->flags, 4);
    unit_put_le(&b->f, at + 12, b->capacity, 8);
    unit_put_le(&b->f, at + 20, b->grain, 8);
    unit_put_le(&b->f, at + 28, b->desc ? 1 : 0, 8);
    unit_put_le(&b->f, at + 36, b->desc ? 20 : 0, 8);
    unit_put_le(&b->f, at + 44, b->gtes, 4);
    unit_put_le(&b->f, at + 48, b->rgd_sector, 8);
    unit_put_le(&b->f, at + 56, gd_sector, 8);
    unit_put_le(&b->f, at + 64, 128, 8);
    memcpy(b->f.d + at + 73, "\n \r\n", 4);
    unit_put_le(&b->f, at + 77, b->compress, 2);
}

/* A compressed grain (marker + zlib stream) at the end; returns its sector. */
static uint64_t sb_comp_grain(struct sb *b, uint64_t gi, bool corrupt)
{
    size_t gb = (size_t)(b->grain * SEC);
    uint8_t *raw = malloc(gb);
    for (size_t i = 0; i < gb; i++)
        raw[i] = unit_pat(b->tag, gi * gb + i);
    uLongf clen = compressBound(gb);
    uint8_t *c = malloc(clen);
    ck_assert_int_eq(compress2(c, &clen, raw, gb, 6), Z_OK);
    if (corrupt)
        memset(c + 2, 0xff, VMFS_MIN((size_t)clen - 2, 16));
    bool markers = b->flags & VMDK4_FLAG_MARKERS;
    size_t total = clen + (markers ? 12 : 0);
    uint64_t s = sb_sectors(b, (total + SEC - 1) / SEC);
    uint64_t at = s * SEC;
    if (markers) {
        unit_put_le(&b->f, at, gi * b->grain, 8);
        unit_put_le(&b->f, at + 8, clen, 4);
        at += 12;
    }
    memcpy(b->f.d + at, c, clen);
    free(raw);
    free(c);
    return s;
}

static uint64_t sb_data_grain(struct sb *b, uint64_t gi)
{
    uint64_t s = sb_sectors(b, b->grain);
    for (uint64_t i = 0; i < b->grain * SEC; i++)
        b->f.d[s * SEC + i] = unit_pat(b->tag, gi * b->grain * SEC + i);
    return s;
}

/* Builds the file; kinds[i] says what grain i is (beyond nk: none). */
static void sb_build(struct sb *b, const enum gk *kinds, size_t nk)
{
    uint64_t span = b->grain * b->gtes;
    b->ngd = (b->capacity + span - 1) / span;
    uint64_t gd_sectors = (b->ngd * 4 + SEC - 1) / SEC;
    uint64_t gt_sectors = ((uint64_t)b->gtes * 4 + SEC - 1) / SEC;
    sb_sectors(b, 1);
    if (b->desc) {
        uint64_t s = sb_sectors(b, 20);
        memcpy(b->f.d + s * SEC, b->desc, strlen(b->desc));
    } else {
        sb_sectors(b, 1);   /* no grain at sector 1: it means "zeroed" */
    }
    uint32_t *gtes = calloc(b->ngd * b->gtes, 4);
    for (size_t i = 0; i < nk; i++) {
        if (kinds[i] == G_DATA)
            gtes[i] = (uint32_t)sb_data_grain(b, i);
        else if (kinds[i] == G_ZERO)
            gtes[i] = VMDK_GTE_ZEROED;
        else if (kinds[i] == G_COMP || kinds[i] == G_COMP_BAD)
            gtes[i] = (uint32_t)sb_comp_grain(b, i, kinds[i] == G_COMP_BAD);
    }
    for (int copy = 0; copy < 2; copy++) {
        if (copy == 1 && !(b->flags & VMDK4_FLAG_RGD))
            break;
        uint64_t gts = sb_sectors(b, b->ngd * gt_sectors);
        uint64_t gd = sb_sectors(b, gd_sectors);
        for (uint64_t t = 0; t < b->ngd; t++) {
            bool any = false;
            for (uint32_t e = 0; e < b->gtes; e++) {
                unit_put_le(&b->f, (gts + t * gt_sectors) * SEC + e * 4, gtes[t * b->gtes + e], 4);
                any |= gtes[t * b->gtes + e] != 0;
            }
            unit_put_le(&b->f, gd * SEC + t * 4, any ? gts + t * gt_sectors : 0, 4);
        }
        if (copy == 0)
            b->gd_sector = gd;
        else
            b->rgd_sector = gd;
    }
    free(gtes);
    if (b->gd_at_end) {
        uint64_t fm = sb_sectors(b, 3);
        unit_put_le(&b->f, fm * SEC, 1, 8);
        unit_put_le(&b->f, fm * SEC + 12, VMDK_MARKER_FOOTER, 4);
        sb_header(b, (fm + 1) * SEC, b->gd_sector);
        sb_header(b, 0, VMDK4_GD_AT_END);
    } else {
        sb_header(b, 0, b->gd_sector);
    }
}

static void sb_init(struct sb *b, uint64_t capacity, uint64_t grain, uint32_t gtes)
{
    memset(b, 0, sizeof(*b));
    b->capacity = capacity;
    b->grain = grain;
    b->gtes = gtes;
    b->version = 1;
    b->flags = VMDK4_FLAG_NL_DETECT;
    b->tag = 1;
}

/* The disk the kinds describe, with unallocated grains read from base
 * (NULL: zeros). */
static uint8_t *expect(const struct sb *b, const enum gk *kinds, size_t nk, const uint8_t *base)
{
    size_t size = (size_t)(b->capacity * SEC), gb = (size_t)(b->grain * SEC);
    uint8_t *e = calloc(1, size);
    for (size_t i = 0; i < size; i++) {
        enum gk k = i / gb < nk ? kinds[i / gb] : G_NONE;
        if (k == G_DATA || k == G_COMP)
            e[i] = unit_pat(b->tag, i);
        else if (k == G_NONE && base)
            e[i] = base[i];
    }
    return e;
}

/* ------------------------------------------------------------------------
 * Opening and reading
 * ---------------------------------------------------------------------- */

static struct vimage *open_img(const char *path)
{
    struct vopen_opts o = {.root = NULL, .allow_external = true, .max_chain = 16};
    return vimage_open(path, &o, -1, false);
}

/* The whole disk reads as exp: in one read, in pieces of many sizes,
 * and in overlapping reads of 7777 bytes every 3001. */
static void check_disk(struct vimage *img, const uint8_t *exp, size_t size)
{
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, size);
    unit_check_range(img, exp, 0, size);
    unit_check_disk(img, exp, size);
    for (size_t off = 0; off < size; off += 3001)
        unit_check_range(img, exp, off, VMFS_MIN((size_t)7777, size - off));
}

static char *write_sb(struct sb *b)
{
    char *path = unit_tmpfile(b->f.d, b->f.len, "vmdk");
    free(b->f.d);
    b->f.d = NULL;
    return path;
}

static char *base_name(const char *path)
{
    char *c = strdup(path);
    char *r = strdup(basename(c));
    free(c);
    return r;
}

/* ------------------------------------------------------------------------
 * Descriptor parser
 * ---------------------------------------------------------------------- */

START_TEST(desc_parses_keys_and_extents)
{
    const char *t =
        "# Disk DescriptorFile\r\n"
        "version=1\r\n"
        "encoding=\"UTF-8\"\r\n"
        "CID=fffffffe\r\n"
        "parentCID = ffffffff\r\n"
        "createType=\"twoGbMaxExtentSparse\"\r\n"
        "parentFileNameHint=\"C:\\\\vms\\\\base.vmdk\"\r\n"
        "changeTrackPath=\"disk-ctk.vmdk\"\r\n"
        "\r\n"
        "# Extent description\r\n"
        "RW 4192256 SPARSE \"disk name-s001.vmdk\"\r\n"
        "RDONLY 100 FLAT \"x=y-flat.vmdk\" 2048\r\n"
        "NOACCESS 7 VMFS \"v-flat.vmdk\"\r\n"
        "  RW 50 ZERO  \r\n"
        "RW 9 FUNNY \"f\"\r\n"
        "this is not a line of a descriptor\r\n"
        "ddb.adapterType = \"lsilogic\"\r\n"
        "ddb.geometry.cylinders = \"16383\"\r\n";
    struct vmdk_desc d;
    vmdk_desc_parse(t, strlen(t), &d);
    ck_assert_uint_eq(d.version, 1);
    ck_assert(d.has_cid && d.cid == 0xfffffffe);
    ck_assert(d.has_parent_cid && d.parent_cid == 0xffffffff);
    ck_assert_str_eq(d.create_type, "twoGbMaxExtentSparse");
    ck_assert_str_eq(d.parent_hint, "C:\\\\vms\\\\base.vmdk");
    ck_assert_str_eq(d.ctk_path, "disk-ctk.vmdk");
    ck_assert_uint_eq(d.next, 5);
    ck_assert_uint_eq(d.next_total, 5);
    ck_assert_int_eq(d.ext[0].type, VMDK_ET_SPARSE);
    ck_assert_uint_eq(d.ext[0].sectors, 4192256);
    ck_assert_str_eq(d.ext[0].file, "disk name-s001.vmdk");
    ck_assert_int_eq(d.ext[1].access, VMDK_RDONLY);
    ck_assert_int_eq(d.ext[1].type, VMDK_ET_FLAT);
    ck_assert_str_eq(d.ext[1].file, "x=y-flat.vmdk");
    ck_assert_uint_eq(d.ext[1].offset, 2048);
    ck_assert_int_eq(d.ext[2].access, VMDK_NOACCESS);
    ck_assert_int_eq(d.ext[2].type, VMDK_ET_VMFS);
    ck_assert_uint_eq(d.ext[2].offset, 0);
    ck_assert_int_eq(d.ext[3].type, VMDK_ET_ZERO);
    ck_assert_ptr_null(d.ext[3].file);
    ck_assert_uint_eq(d.ext[3].sectors, 50);
    ck_assert_int_eq(d.ext[4].type, VMDK_ET_UNKNOWN);
    ck_assert_str_eq(d.ext[4].type_name, "FUNNY");
    ck_assert(!d.ext[4].malformed);
    ck_assert_uint_eq(d.bad_lines, 1);
    ck_assert_uint_eq(d.first_bad_line, 16);
    ck_assert_uint_eq(d.nddb, 2);
    ck_assert_str_eq(d.ddb[0].key, "ddb.adapterType");
    ck_assert_str_eq(d.ddb[0].val, "lsilogic");
    vmdk_desc_free(&d);
}
END_TEST

START_TEST(desc_rejects_malformed_lines)
{
    static const char *const bad[] = {
        "RW\n", "RW abc SPARSE \"a\"\n", "RW 10\n", "RW 10 FLAT\n",
        "RW 10 FLAT \"unterminated\n", "RW 10 FLAT \"a\" notanumber\n",
        "RW 99999999999999999999999 FLAT \"a\" 0\n", "RW 10 SPARSE \"\"\n",
        "RW -5 FLAT \"a\" 0\n", "RW 10 FLAT a-flat.vmdk 0\n",
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++) {
        struct vmdk_desc d;
        vmdk_desc_parse(bad[i], strlen(bad[i]), &d);
        ck_assert_msg(d.next == 1 && d.ext[0].malformed, "accepted: %s", bad[i]);
        ck_assert_uint_eq(d.bad_lines, 1);
        vmdk_desc_free(&d);
    }
    /* Bad values of known keys are counted, the rest still parses. */
    const char *t = "CID=xyz\nparentCID=123456789\nversion=abc\nRW 1 ZERO\n";
    struct vmdk_desc d;
    vmdk_desc_parse(t, strlen(t), &d);
    ck_assert(!d.has_cid && !d.has_parent_cid);
    ck_assert_uint_eq(d.bad_lines, 3);
    ck_assert_uint_eq(d.next, 1);
    vmdk_desc_free(&d);
}
END_TEST

START_TEST(desc_bounds_extents_and_length)
{
    size_t n = VMDK_MAX_EXTENTS + 100;
    char *t = malloc(n * 12 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(t + o, "RW 1 ZERO\n");
    struct vmdk_desc d;
    vmdk_desc_parse(t, o, &d);
    ck_assert_uint_eq(d.next, VMDK_MAX_EXTENTS);
    ck_assert_uint_eq(d.next_total, n);
    vmdk_desc_free(&d);
    free(t);
    /* One absurd 2 MiB line: cut at the descriptor limit, not kept. */
    size_t big = 2u << 20;
    t = malloc(big);
    memset(t, 'A', big);
    vmdk_desc_parse(t, big, &d);
    ck_assert(d.truncated);
    ck_assert_uint_eq(d.bad_lines, 1);
    ck_assert_uint_lt(strlen(d.first_bad), sizeof(d.first_bad));
    vmdk_desc_free(&d);
    free(t);
}
END_TEST

START_TEST(desc_probe_by_content)
{
    static const char *const yes[] = {
        "# Disk DescriptorFile\nversion=1\n",
        "\xef\xbb\xbf# Disk DescriptorFile\n",
        "# comment\n\nversion=1\nCID=1\n",
        "CID=12345678\ncreateType=\"vmfs\"\n",
        "  # hello\r\n  createType = \"monolithicFlat\"\r\n",
    };
    static const char *const no[] = {
        "", "hello world\ncreateType=\"vmfs\"\n", "#!/bin/sh\necho hi\n",
        "KEY=1\nOTHER=2\n", "\x01\x02\x03createType=\n",
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(yes); i++)
        ck_assert_msg(vmdk_desc_probe((const uint8_t *)yes[i], strlen(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(no); i++)
        ck_assert_msg(!vmdk_desc_probe((const uint8_t *)no[i], strlen(no[i])), "%s", no[i]);
    ck_assert_int_eq(vfmt_vmdk.probe((const uint8_t *)"KDMV", 4, 4, "x"), 100);
    ck_assert_int_eq(vfmt_vmdk.probe((const uint8_t *)"COWD", 4, 4, "x"), 100);
    ck_assert_int_eq(vfmt_vmdk.probe((const uint8_t *)"QFI\xfb", 4, 4, "x.vmdk"), 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * Hosted sparse files
 * ---------------------------------------------------------------------- */

START_TEST(sparse_reads_all_grain_kinds)
{
    /* 4 KiB grains, 4 entries per table, a capacity that ends mid-grain,
     * a redundant directory and zeroed-grain entries. */
    struct sb b;
    sb_init(&b, 203, 8, 4);
    b.flags |= VMDK4_FLAG_RGD | VMDK4_FLAG_ZERO_GRAIN;
    b.desc = "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n"
             "createType=\"monolithicSparse\"\nRW 203 SPARSE \"x.vmdk\"\n"
             "ddb.virtualHWVersion = \"4\"\n";
    enum gk k[] = {G_DATA, G_DATA, G_NONE, G_ZERO, G_NONE, G_NONE, G_NONE, G_NONE,
                   G_DATA, G_ZERO, G_DATA, G_DATA, G_NONE, G_NONE, G_NONE, G_NONE,
                   G_NONE, G_NONE, G_NONE, G_NONE, G_NONE, G_NONE, G_NONE, G_NONE,
                   G_DATA};
    sb_build(&b, k, VMFS_ARRAY_SIZE(k));
    uint8_t *exp = expect(&b, k, VMFS_ARRAY_SIZE(k), NULL);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_ptr_nonnull(img);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    check_disk(img, exp, 203 * SEC);
    ck_assert_uint_eq(vimage_allocated(img), 6 * 4096);

    /* Grains 0 and 1 lie back to back in the file: one data run. */
    unit_run_at(img, 100, 203 * SEC - 100, VRUN_DATA, 8192 - 100);
    unit_run_at(img, 8192, 203 * SEC - 8192, VRUN_BACKING, 4096);
    /* Grains 4-7: no table at all, one unallocated run. */
    unit_run_at(img, 4 * 4096, 203 * SEC - 4 * 4096, VRUN_BACKING, 4 * 4096);

    unit_check_report(img, false,
                      "\"create_type\": \"monolithicSparse\"",
                      "\"cid\": \"0000abcd\"",
                      "\"grain_size\": 4096",
                      "\"virtual_hw_version\": \"4\"",
                      "\"zeroed_grain_entries\": true");
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

START_TEST(sparse_value_one_without_zero_flag_is_data)
{
    /* Without the zeroed-grain flag, an entry of 1 is sector 1 (qemu). */
    struct sb b;
    sb_init(&b, 24, 8, 4);
    enum gk k[] = {G_ZERO, G_DATA, G_DATA};
    sb_build(&b, k, 3);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    uint8_t got[4096];
    ck_assert_int_eq(vimage_read(img, got, sizeof(got), 0), 0);
    struct vsrc *f = img->layers[0]->file;
    uint8_t want[4096];
    ck_assert_int_eq(vsrc_pread(f, want, sizeof(want), SEC), 0);
    ck_assert(!memcmp(got, want, sizeof(got)));
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

static void stream_case(bool markers, bool at_end)
{
    struct sb b;
    sb_init(&b, 130, 16, 8);
    b.version = 3;
    b.compress = VMDK_COMPRESS_DEFLATE;
    b.flags |= VMDK4_FLAG_COMPRESSED | (markers ? VMDK4_FLAG_MARKERS : 0);
    b.gd_at_end = at_end;
    enum gk k[] = {G_COMP, G_NONE, G_COMP, G_COMP, G_NONE, G_NONE, G_NONE, G_NONE, G_COMP};
    sb_build(&b, k, VMFS_ARRAY_SIZE(k));
    uint8_t *exp = expect(&b, k, VMFS_ARRAY_SIZE(k), NULL);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    check_disk(img, exp, 130 * SEC);
    unit_check_report(img, false,
                      "\"create_type\": \"streamOptimized\"",
                      at_end ? "\"footer\": true" : "\"footer\": false");
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}

START_TEST(stream_optimized_with_markers) { stream_case(true, false); }
END_TEST
START_TEST(stream_optimized_footer) { stream_case(true, true); }
END_TEST
START_TEST(compressed_without_markers) { stream_case(false, false); }
END_TEST

/* Many threads reading random ranges of a stream-optimized disk at once
 * (shared cache, per-thread decompressors) all get the right bytes. */
struct par {
    struct vimage *img;
    const uint8_t *exp;
    size_t size;
    unsigned seed;
    int bad;
};

static void *par_reader(void *arg)
{
    struct par *p = arg;
    uint8_t *buf = malloc(40000);
    for (int i = 0; i < 1500 && !p->bad; i++) {
        size_t off = (size_t)rand_r(&p->seed) % p->size;
        size_t n = 1 + (size_t)rand_r(&p->seed) % 40000;
        n = VMFS_MIN(n, p->size - off);
        if (vimage_read(p->img, buf, n, off) != 0 || memcmp(buf, p->exp + off, n))
            p->bad = 1;
    }
    free(buf);
    return NULL;
}

START_TEST(parallel_readers)
{
    struct sb b;
    sb_init(&b, 64 * 16, 16, 8);
    b.version = 3;
    b.compress = VMDK_COMPRESS_DEFLATE;
    b.flags |= VMDK4_FLAG_COMPRESSED | VMDK4_FLAG_MARKERS;
    enum gk k[64];
    for (size_t i = 0; i < 64; i++)
        k[i] = i % 5 == 3 ? G_NONE : G_COMP;
    sb_build(&b, k, 64);
    uint8_t *exp = expect(&b, k, 64, NULL);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    struct par p[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        p[i] = (struct par){img, exp, 64 * 16 * SEC, (unsigned)i * 7919 + 1, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, par_reader, &p[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(p[i].bad, 0);
    }
    ck_assert_uint_eq(unit_nproblems(img), 0);
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

START_TEST(corrupt_compressed_grain_fails_alone)
{
    struct sb b;
    sb_init(&b, 64, 16, 8);
    b.compress = VMDK_COMPRESS_DEFLATE;
    b.flags |= VMDK4_FLAG_COMPRESSED | VMDK4_FLAG_MARKERS;
    enum gk k[] = {G_COMP, G_COMP_BAD, G_COMP};
    sb_build(&b, k, 3);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert(!img->top_failed);
    uint8_t buf[8192];
    ck_assert_int_eq(vimage_read(img, buf, 8192, 0), 0);
    ck_assert_uint_eq(buf[5], unit_pat(1, 5));
    ck_assert_int_eq(unit_read_err(img, 8192, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 8192 + 4000, 100), -EIO);
    ck_assert_int_eq(vimage_read(img, buf, 8192, 16384), 0);
    ck_assert_uint_eq(buf[7], unit_pat(1, 16384 + 7));
    ck_assert(unit_has_problem(img, "corrupt compressed data"));
    ck_assert(unit_has_problem(img, "disk offset 0x2000"));
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

START_TEST(bad_compressed_sizes)
{
    /* A marker whose size is 0 or larger than two grains. */
    for (int i = 0; i < 2; i++) {
        struct sb b;
        sb_init(&b, 32, 16, 8);
        b.compress = VMDK_COMPRESS_DEFLATE;
        b.flags |= VMDK4_FLAG_COMPRESSED | VMDK4_FLAG_MARKERS;
        enum gk k[] = {G_COMP, G_COMP};
        sb_build(&b, k, 2);
        uint64_t gt = get_le32(b.f.d + b.gd_sector * SEC) * (uint64_t)SEC;
        uint64_t g1 = get_le32(b.f.d + gt + 4) * (uint64_t)SEC;
        unit_put_le(&b.f, g1 + 8, i == 0 ? 0 : 3 * 8192, 4);
        char *path = write_sb(&b);
        struct vimage *img = open_img(path);
        ck_assert_int_eq(unit_read_err(img, 0, 8192), 0);
        ck_assert_int_eq(unit_read_err(img, 8192, 8192), -EIO);
        ck_assert(unit_has_problem(img, "absurd compressed size"));
        vimage_unref(img);
        unlink_free(path);
    }
}
END_TEST

START_TEST(footer_damaged_is_refused)
{
    struct sb b;
    sb_init(&b, 64, 16, 8);
    b.compress = VMDK_COMPRESS_DEFLATE;
    b.flags |= VMDK4_FLAG_COMPRESSED | VMDK4_FLAG_MARKERS;
    b.gd_at_end = true;
    enum gk k[] = {G_COMP};
    sb_build(&b, k, 1);
    b.f.d[b.f.len - 2 * SEC] = 'X';   /* the footer's magic */
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_ptr_nonnull(img);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "footer"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

START_TEST(bad_magic_is_not_vmdk)
{
    struct sb b;
    sb_init(&b, 64, 8, 4);
    enum gk k[] = {G_DATA};
    sb_build(&b, k, 1);
    memcpy(b.f.d, "KDMX", 4);
    char *path = write_sb(&b);
    ck_assert_ptr_null(vimage_probe_file(path, false));
    struct vimage *img = open_img(path);
    ck_assert_ptr_nonnull(img);   /* a .vmdk: listed, damaged */
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "not a disk image"));
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

/* One header field set to an absurd value: the file is refused with why. */
static void absurd_case(unsigned off, unsigned width, uint64_t val, const char *why)
{
    struct sb b;
    sb_init(&b, 64, 8, 4);
    enum gk k[] = {G_DATA};
    sb_build(&b, k, 1);
    unit_put_le(&b.f, off, val, width);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_ptr_nonnull(img);
    ck_assert_msg(img->top_failed, "accepted %s", why);
    ck_assert_msg(unit_has_problem(img, why), "no problem naming %s", why);
    vimage_unref(img);
    unlink_free(path);
}

START_TEST(absurd_header_values)
{
    absurd_case(12, 8, 1ull << 62, "absurd capacity");
    absurd_case(20, 8, 0, "absurd grain size");
    absurd_case(20, 8, 1ull << 40, "absurd grain size");
    absurd_case(44, 4, 0, "entries per grain table");
    absurd_case(44, 4, 1u << 20, "entries per grain table");
    absurd_case(4, 4, 4, "unsupported sparse header version 4");
    absurd_case(77, 2, 7, "unknown compression algorithm 7");
}
END_TEST

START_TEST(grain_directory_past_eof)
{
    struct sb b;
    sb_init(&b, 64, 8, 4);
    enum gk k[] = {G_DATA, G_DATA, G_DATA, G_DATA, G_DATA};
    sb_build(&b, k, 5);
    unit_put_le(&b.f, 56, 1u << 30, 8);     /* GD far past the end, no redundant copy */
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert(!img->top_failed);
    ck_assert(unit_has_problem(img, "grain directory"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    vimage_unref(img);
    unlink_free(path);

    /* With a redundant directory, it is used instead. */
    sb_init(&b, 64, 8, 4);
    b.flags |= VMDK4_FLAG_RGD;
    sb_build(&b, k, 5);
    uint8_t *exp = expect(&b, k, 5, NULL);
    unit_put_le(&b.f, 56, 1u << 30, 8);
    path = write_sb(&b);
    img = open_img(path);
    ck_assert(unit_has_problem(img, "redundant copy is used"));
    check_disk(img, exp, 64 * SEC);
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

START_TEST(grain_table_past_eof_fails_its_span)
{
    struct sb b;
    sb_init(&b, 128, 8, 4);      /* 4 tables of 4 grains */
    enum gk k[] = {G_DATA, G_NONE, G_NONE, G_NONE, G_DATA, G_DATA, G_NONE, G_NONE, G_DATA};
    sb_build(&b, k, VMFS_ARRAY_SIZE(k));
    uint8_t *exp = expect(&b, k, VMFS_ARRAY_SIZE(k), NULL);
    unit_put_le(&b.f, b.gd_sector * SEC + 4, 0x7fffffff, 4);   /* table 1 */
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert(!img->top_failed);
    ck_assert_int_eq(unit_read_err(img, 4 * 4096, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 7 * 4096 + 100, 512), -EIO);
    uint8_t buf[4096];
    ck_assert_int_eq(vimage_read(img, buf, 4096, 0), 0);
    ck_assert(!memcmp(buf, exp, 4096));
    ck_assert_int_eq(vimage_read(img, buf, 4096, 8 * 4096), 0);
    ck_assert(!memcmp(buf, exp + 8 * 4096, 4096));
    ck_assert(unit_has_problem(img, "grain table for disk offset 0x4000"));
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

START_TEST(grain_past_eof_fails_alone)
{
    struct sb b;
    sb_init(&b, 64, 8, 4);
    enum gk k[] = {G_DATA, G_DATA, G_DATA};
    sb_build(&b, k, 3);
    uint64_t gt = get_le32(b.f.d + b.gd_sector * SEC) * (uint64_t)SEC;
    unit_put_le(&b.f, gt + 4, 0x00ffffff, 4);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_int_eq(unit_read_err(img, 0, 4096), 0);
    ck_assert_int_eq(unit_read_err(img, 4096, 4096), -EIO);
    ck_assert_int_eq(unit_read_err(img, 8192, 4096), 0);
    ck_assert(unit_has_problem(img, "lies past the end of the file"));
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

/* Sets the entry of grain i in the first grain table. */
static void sb_set_gte(struct sb *b, unsigned i, uint32_t val)
{
    uint64_t gt = get_le32(b->f.d + b->gd_sector * SEC) * (uint64_t)SEC;
    unit_put_le(&b->f, gt + 4 * i, val, 4);
}

/* Grains alike in a row map as one run, in one step per grain table: data
 * back to back in the file, zeroed, unallocated.  A run ends at a table's
 * end, and a data run whose tail leaves the file is judged grain by
 * grain. */
START_TEST(grain_runs)
{
    struct sb b;
    sb_init(&b, 128, 8, 8);
    b.flags |= VMDK4_FLAG_ZERO_GRAIN;
    enum gk k[] = {G_DATA, G_DATA, G_DATA, G_DATA, G_ZERO, G_ZERO, G_NONE, G_NONE,
                   G_NONE, G_DATA, G_DATA};
    sb_build(&b, k, VMFS_ARRAY_SIZE(k));
    uint8_t *exp = expect(&b, k, VMFS_ARRAY_SIZE(k), NULL);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    check_disk(img, exp, 128 * SEC);
    uint64_t size = 128 * SEC;
    unit_run_at(img, 0, size, VRUN_DATA, 4 * 4096);
    unit_run_at(img, 100, size - 100, VRUN_DATA, 4 * 4096 - 100);
    unit_run_at(img, 4096, 2 * 4096 + 10, VRUN_DATA, 2 * 4096 + 10);
    unit_run_at(img, 4 * 4096, size - 4 * 4096, VRUN_ZERO, 2 * 4096);
    unit_run_at(img, 6 * 4096, size - 6 * 4096, VRUN_BACKING, 3 * 4096);
    unit_run_at(img, 9 * 4096, size - 9 * 4096, VRUN_DATA, 2 * 4096);
    ck_assert_uint_eq(vimage_allocated(img), 6 * 4096);
    vimage_unref(img);
    unlink_free(path);

    /* Grain 1 holds the file's last grain; grains 2 and 3 would follow it
     * past the end. */
    sb_init(&b, 128, 8, 8);
    sb_build(&b, k, 4);
    uint32_t last = (uint32_t)(b.f.len / SEC - 8);
    sb_set_gte(&b, 1, last);
    sb_set_gte(&b, 2, last + 8);
    sb_set_gte(&b, 3, last + 16);
    path = write_sb(&b);
    img = open_img(path);
    unit_run_at(img, 0, size, VRUN_DATA, 4096);
    unit_run_at(img, 4096, size - 4096, VRUN_DATA, 4096);
    unit_run_at(img, 2 * 4096, size - 2 * 4096, VRUN_ERROR, 2 * 4096);
    unit_run_at(img, 3 * 4096, size - 3 * 4096, VRUN_ERROR, 4096);
    ck_assert_int_eq(unit_read_err(img, 0, 2 * 4096), 0);
    ck_assert_int_eq(unit_read_err(img, 4096, 2 * 4096), -EIO);
    ck_assert(unit_has_problem(img, "lies past the end of the file"));
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

/* Compressed grains in a row are one run; one whose data would start past
 * the end of the file ends it and fails alone. */
START_TEST(compressed_grain_runs)
{
    struct sb b;
    sb_init(&b, 64, 16, 8);
    b.version = 3;
    b.compress = VMDK_COMPRESS_DEFLATE;
    b.flags |= VMDK4_FLAG_COMPRESSED | VMDK4_FLAG_MARKERS;
    enum gk k[] = {G_COMP, G_COMP, G_COMP, G_COMP};
    sb_build(&b, k, VMFS_ARRAY_SIZE(k));
    uint8_t *exp = expect(&b, k, VMFS_ARRAY_SIZE(k), NULL);
    sb_set_gte(&b, 2, 0x00ffffff);
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    uint64_t g = 16 * SEC, size = 64 * SEC;
    struct vrun run = unit_run_at(img, 0, size, VRUN_DECODE, 2 * g);
    ck_assert_uint_eq(run.unit_off, 0);
    ck_assert_uint_eq(run.unit_len, g);
    unit_run_at(img, 2 * g, size - 2 * g, VRUN_ERROR, g);
    run = unit_run_at(img, 3 * g + 100, size - 3 * g - 100, VRUN_DECODE, g - 100);
    ck_assert_uint_eq(run.unit_off, 3 * g);
    ck_assert_uint_eq(run.unit_len, g);
    struct vunit u;
    uint8_t buf[512];
    ck_assert_int_eq(vimage_read_unit(img, buf, sizeof(buf), g + 1024, &u), 0);
    ck_assert_mem_eq(buf, exp + g + 1024, sizeof(buf));
    ck_assert_uint_eq(u.off, g);
    ck_assert_uint_eq(u.len, g);
    unit_check_range(img, exp, 0, 2 * g);
    unit_check_range(img, exp, 3 * g, g);
    ck_assert_int_eq(unit_read_err(img, 2 * g + 100, 100), -EIO);
    ck_assert(unit_has_problem(img, "lies past the end of the file"));
    ck_assert_uint_eq(unit_nproblems(img), 1);
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

START_TEST(truncated_file_fails_past_the_cut)
{
    /* Tables first, grains after them: cut the file in the grains. */
    struct sb b;
    sb_init(&b, 64, 8, 16);
    enum gk k[] = {G_DATA, G_DATA, G_DATA, G_DATA, G_DATA, G_DATA};
    sb_build(&b, k, 6);
    uint8_t *exp = expect(&b, k, 6, NULL);
    /* Move the tables before the grains: rebuild with the grains last is
     * what real files do; here tables come last, so cut inside them. */
    size_t full = b.f.len;
    b.f.len = full - 700;
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert_ptr_nonnull(img);
    ck_assert(!img->top_failed);
    ck_assert(unit_nproblems(img) > 0);
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    vimage_unref(img);
    free(exp);
    unlink_free(path);

    /* Cut in the middle of the grains (tables kept whole at the front, in
     * the room of the descriptor). */
    sb_init(&b, 64, 8, 16);
    b.desc = "#";
    sb_build(&b, k, 6);
    exp = expect(&b, k, 6, NULL);
    uint64_t gt = get_le32(b.f.d + b.gd_sector * SEC) * (uint64_t)SEC;
    uint8_t table[64];
    memcpy(table, b.f.d + gt, sizeof(table));
    uint8_t gd[4];
    memcpy(gd, b.f.d + b.gd_sector * SEC, 4);
    /* Place GD and GT in sectors 1-2. */
    memcpy(b.f.d + SEC, gd, 4);
    unit_put_le(&b.f, SEC, 2, 4);
    memcpy(b.f.d + 2 * SEC, table, sizeof(table));
    unit_put_le(&b.f, 56, 1, 8);
    uint64_t g3 = get_le32(table + 12) * (uint64_t)SEC;
    b.f.len = (size_t)g3 + 1000;    /* grain 3 cut short, 4 and 5 gone */
    path = write_sb(&b);
    img = open_img(path);
    ck_assert(!img->top_failed);
    uint8_t buf[3 * 4096];
    ck_assert_int_eq(vimage_read(img, buf, sizeof(buf), 0), 0);
    ck_assert(!memcmp(buf, exp, sizeof(buf)));
    ck_assert_int_eq(unit_read_err(img, 3 * 4096, 512), 0);
    ck_assert_int_eq(unit_read_err(img, 3 * 4096, 4096), -EIO);
    ck_assert_int_eq(unit_read_err(img, 5 * 4096, 4096), -EIO);
    ck_assert_int_eq(unit_read_err(img, 6 * 4096, 4096), 0);   /* unallocated */
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

START_TEST(tiny_and_empty_files)
{
    static const uint8_t kdmv[] = {'K', 'D', 'M', 'V', 1, 0, 0, 0};
    char *path = unit_tmpfile(kdmv, sizeof(kdmv), "vmdk");
    struct vimage *img = open_img(path);
    ck_assert_ptr_nonnull(img);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "too short"));
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

START_TEST(newline_check_bytes_altered)
{
    struct sb b;
    sb_init(&b, 16, 8, 4);
    enum gk k[] = {G_DATA};
    sb_build(&b, k, 1);
    uint8_t *exp = expect(&b, k, 1, NULL);
    b.f.d[75] = '\n';   /* "\r\n" turned into "\n\n" */
    char *path = write_sb(&b);
    struct vimage *img = open_img(path);
    ck_assert(unit_has_problem(img, "newline check bytes"));
    check_disk(img, exp, 16 * SEC);
    vimage_unref(img);
    free(exp);
    unlink_free(path);
}
END_TEST

/* ------------------------------------------------------------------------
 * Descriptors with extents
 * ---------------------------------------------------------------------- */

static char *write_text(const char *text) { return unit_tmpfile(text, strlen(text), "vmdk"); }

static char *write_pattern(size_t size, uint8_t tag)
{
    uint8_t *d = malloc(size);
    for (size_t i = 0; i < size; i++)
        d[i] = unit_pat(tag, i);
    char *p = unit_tmpfile(d, size, "vmdk");
    free(d);
    return p;
}

START_TEST(descriptor_flat_zero_and_sparse_extents)
{
    char *flat = write_pattern(64 * SEC, 7);
    struct sb b;
    sb_init(&b, 32, 8, 4);
    b.tag = 9;
    enum gk k[] = {G_DATA, G_NONE, G_ZERO, G_DATA};
    b.flags |= VMDK4_FLAG_ZERO_GRAIN;
    sb_build(&b, k, 4);
    uint8_t *sexp = expect(&b, k, 4, NULL);
    char *sparse = write_sb(&b);
    char *fb = base_name(flat), *spb = base_name(sparse);
    char *text = xasprintf("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
                           "createType=\"vmfs\"\nchangeTrackPath=\"x-ctk.vmdk\"\n\n"
                           "RW 16 FLAT \"%s\" 8\n"
                           "RW 10 ZERO\n"
                           "RDONLY 32 SPARSE \"%s\"\n"
                           "NOACCESS 8 VMFS \"%s\"\n", fb, spb, fb);
    char *desc = write_text(text);
    struct vimage *img = open_img(desc);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    size_t size = (16 + 10 + 32 + 8) * SEC;
    uint8_t *exp = calloc(1, size);
    for (size_t i = 0; i < 16 * SEC; i++)
        exp[i] = unit_pat(7, 8 * SEC + i);
    memcpy(exp + 26 * SEC, sexp, 32 * SEC);
    for (size_t i = 0; i < 8 * SEC; i++)
        exp[58 * SEC + i] = unit_pat(7, i);
    check_disk(img, exp, size);

    char **names;
    uint8_t head[512];
    size_t n = vfmt_vmdk.related_files(desc, (const uint8_t *)text,
                                       VMFS_MIN(strlen(text), sizeof(head)), &names);
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(names[0], fb);
    ck_assert_str_eq(names[1], spb);
    ck_assert_str_eq(names[3], "x-ctk.vmdk");
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    int fd = open(sparse, O_RDONLY);
    ck_assert_int_eq(read(fd, head, sizeof(head)), (ssize_t)sizeof(head));
    close(fd);
    ck_assert_uint_eq(vfmt_vmdk.related_files(sparse, head, sizeof(head), &names), 0);

    vimage_unref(img);
    free(text);
    free(exp);
    free(sexp);
    free(fb);
    free(spb);
    unlink_free(desc);
    unlink_free(flat);
    unlink_free(sparse);
}
END_TEST

START_TEST(descriptor_missing_extent_fails_there_only)
{
    char *a = write_pattern(16 * SEC, 3);
    char *ab = base_name(a);
    char *text = xasprintf("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
                           "createType=\"twoGbMaxExtentFlat\"\n"
                           "RW 16 FLAT \"%s\" 0\nRW 16 FLAT \"gone-f002.vmdk\" 0\n"
                           "RW 16 FLAT \"%s\" 0\n", ab, ab);
    char *desc = write_text(text);
    struct vimage *img = open_img(desc);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 48 * SEC);
    ck_assert(unit_has_problem(img, "gone-f002.vmdk"));
    uint8_t buf[16 * SEC];
    ck_assert_int_eq(vimage_read(img, buf, sizeof(buf), 0), 0);
    ck_assert_uint_eq(buf[100], unit_pat(3, 100));
    ck_assert_int_eq(unit_read_err(img, 16 * SEC, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 15 * SEC, 1024), -EIO);
    ck_assert_int_eq(vimage_read(img, buf, sizeof(buf), 32 * SEC), 0);
    ck_assert_uint_eq(buf[100], unit_pat(3, 100));
    unit_check_report(img, false, "\"status\": \"missing\"");
    vimage_unref(img);
    free(text);
    free(ab);
    unlink_free(desc);
    unlink_free(a);
}
END_TEST

START_TEST(descriptor_short_flat_extent)
{
    char *a = write_pattern(10 * SEC, 3);
    char *ab = base_name(a);
    char *text = xasprintf("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"
                           "RW 16 FLAT \"%s\" 2\n", ab);
    char *desc = write_text(text);
    struct vimage *img = open_img(desc);
    ck_assert_uint_eq(img->size, 16 * SEC);
    ck_assert(unit_has_problem(img, "holds 4096 of its 8192 bytes"));
    ck_assert_int_eq(unit_read_err(img, 0, 8 * SEC), 0);
    ck_assert_int_eq(unit_read_err(img, 7 * SEC, 2 * SEC), -EIO);
    vimage_unref(img);
    free(text);
    free(ab);
    unlink_free(desc);
    unlink_free(a);
}
END_TEST

START_TEST(descriptor_limits)
{
    /* Too many extents: refused with a clear problem. */
    size_t n = VMDK_MAX_EXTENTS + 1;
    char *t = malloc(n * 12 + 64);
    size_t o = (size_t)sprintf(t, "# Disk DescriptorFile\ncreateType=\"vmfs\"\n");
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(t + o, "RW 1 ZERO\n");
    char *desc = unit_tmpfile(t, o, "vmdk");
    struct vimage *img = open_img(desc);
    ck_assert(img->top_failed);
    ck_assert(unit_has_problem(img, "vmfs reads at most 4096"));
    vimage_unref(img);
    unlink_free(desc);
    free(t);

    /* Thousands of small extents within the limit are fine. */
    t = malloc(4000 * 12 + 64);
    o = (size_t)sprintf(t, "# Disk DescriptorFile\ncreateType=\"vmfs\"\n");
    for (size_t i = 0; i < 4000; i++)
        o += (size_t)sprintf(t + o, "RW 1 ZERO\n");
    desc = unit_tmpfile(t, o, "vmdk");
    img = open_img(desc);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 4000 * SEC);
    uint8_t *zero = calloc(1, 4000 * SEC);
    check_disk(img, zero, 4000 * SEC);
    free(zero);
    vimage_unref(img);
    unlink_free(desc);
    free(t);

    static const char *const bad[] = {
        "# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 1000000000000000 ZERO\n",
        "# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 10 FLAT\n",
        "# Disk DescriptorFile\ncreateType=\"vmfs\"\n",
        "# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 0 ZERO\n",
        "# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 274877906943 ZERO\nRW 274877906943 ZERO\n"
        "RW 274877906943 ZERO\n",
    };
    static const char *const why[] = {
        "absurd extent size", "not a valid extent line", "lists no extents",
        "only empty extents", "absurd disk size",
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++) {
        desc = write_text(bad[i]);
        img = open_img(desc);
        ck_assert(img->top_failed);
        ck_assert_msg(unit_has_problem(img, why[i]), "%s", why[i]);
        vimage_unref(img);
        unlink_free(desc);
    }
}
END_TEST

START_TEST(descriptor_unsupported_extent_type)
{
    char *a = write_pattern(8 * SEC, 3);
    char *ab = base_name(a);
    char *text = xasprintf("# Disk DescriptorFile\ncreateType=\"vmfs\"\n"
                           "RW 8 FLAT \"%s\" 0\nRW 8 SESPARSE \"%s\"\nRW 8 VMFS \"%s\"\n",
                           ab, ab, ab);
    char *desc = write_text(text);
    struct vimage *img = open_img(desc);
    ck_assert_uint_eq(img->size, 24 * SEC);
    ck_assert(unit_has_problem(img, "SESPARSE"));
    ck_assert_int_eq(unit_read_err(img, 0, 8 * SEC), 0);
    ck_assert_int_eq(unit_read_err(img, 8 * SEC, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 16 * SEC, 8 * SEC), 0);
    vimage_unref(img);
    free(text);
    free(ab);
    unlink_free(desc);
    unlink_free(a);
}
END_TEST

/* A COWD (ESX sparse) file: 4096 entries per table, 32-bit fields. */
START_TEST(cowd_extent)
{
    size_t grain = 2 * SEC, ngd = 1;
    size_t gt_off = 4 * SEC, gd_off = 2 * SEC, data_off = gt_off + 4096 * 4;
    size_t size = data_off + 3 * grain;
    uint8_t *d = calloc(1, size);
    memcpy(d, "COWD", 4);
    unit_le(d + 4, 1, 4);
    unit_le(d + 12, 40, 4);                  /* 40 sectors */
    unit_le(d + 16, 2, 4);                   /* grain: 2 sectors */
    unit_le(d + 20, gd_off / SEC, 4);
    unit_le(d + 24, ngd, 4);
    unit_le(d + gd_off, gt_off / SEC, 4);
    unit_le(d + gt_off + 0 * 4, data_off / SEC, 4);
    unit_le(d + gt_off + 5 * 4, (data_off + grain) / SEC, 4);
    for (size_t i = 0; i < grain; i++) {
        d[data_off + i] = unit_pat(4, i);
        d[data_off + grain + i] = unit_pat(4, 5 * grain + i);
    }
    char *cowd = unit_tmpfile(d, size, "vmdk");
    free(d);
    char *cb = base_name(cowd);
    char *text = xasprintf("# Disk DescriptorFile\nCID=2\nparentCID=ffffffff\n"
                           "createType=\"vmfsSparse\"\nRW 40 VMFSSPARSE \"%s\"\n", cb);
    char *desc = write_text(text);
    struct vimage *img = open_img(desc);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    uint8_t *exp = calloc(1, 40 * SEC);
    for (size_t i = 0; i < grain; i++) {
        exp[i] = unit_pat(4, i);
        exp[5 * grain + i] = unit_pat(4, 5 * grain + i);
    }
    check_disk(img, exp, 40 * SEC);
    vimage_unref(img);
    /* The COWD file on its own reads the same. */
    img = open_img(cowd);
    check_disk(img, exp, 40 * SEC);
    vimage_unref(img);
    free(exp);
    free(text);
    free(cb);
    unlink_free(desc);
    unlink_free(cowd);
}
END_TEST

/* ------------------------------------------------------------------------
 * Parents
 * ---------------------------------------------------------------------- */

static char *make_sparse(uint8_t tag, const enum gk *k, size_t nk, const char *desc,
                         uint8_t **exp, const uint8_t *base)
{
    struct sb b;
    sb_init(&b, 64, 8, 4);
    b.tag = tag;
    b.desc = desc;
    b.flags |= VMDK4_FLAG_ZERO_GRAIN;
    sb_build(&b, k, nk);
    if (exp)
        *exp = expect(&b, k, nk, base);
    return write_sb(&b);
}

START_TEST(delta_reads_parent_where_unallocated)
{
    enum gk kb[] = {G_DATA, G_DATA, G_DATA, G_NONE, G_DATA};
    uint8_t *bexp;
    char *base = make_sparse(1, kb, 5, "# Disk DescriptorFile\nCID=11111111\n"
                             "parentCID=ffffffff\ncreateType=\"monolithicSparse\"\n",
                             &bexp, NULL);
    char *bb = base_name(base);
    enum gk kc[] = {G_NONE, G_DATA, G_ZERO, G_DATA};
    char *cdesc = xasprintf("# Disk DescriptorFile\nCID=22222222\nparentCID=11111111\n"
                            "createType=\"monolithicSparse\"\nparentFileNameHint=\"%s\"\n", bb);
    uint8_t *cexp;
    char *child = make_sparse(2, kc, 4, cdesc, &cexp, bexp);
    struct vimage *img = open_img(child);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_uint_eq(img->nlayers, 2);
    ck_assert_str_eq(img->layers[0]->backing_name, bb);
    ck_assert_str_eq(img->layers[0]->backing_fmt, "vmdk");
    check_disk(img, cexp, 64 * SEC);
    vimage_unref(img);
    free(cdesc);

    /* A parentCID that does not match: a problem, read anyway. */
    cdesc = xasprintf("# Disk DescriptorFile\nCID=22222222\nparentCID=abcdef01\n"
                      "createType=\"monolithicSparse\"\nparentFileNameHint=\"/elsewhere/%s\"\n",
                      bb);
    char *child2 = make_sparse(2, kc, 4, cdesc, NULL, NULL);
    img = open_img(child2);
    ck_assert(unit_has_problem(img, "parentCID abcdef01 does not match the CID 11111111"));
    ck_assert_str_eq(img->layers[0]->backing_name, bb);   /* found beside it */
    check_disk(img, cexp, 64 * SEC);
    vimage_unref(img);
    free(cdesc);

    /* The parent is gone: reads that need it fail, the rest reads. */
    cdesc = xasprintf("# Disk DescriptorFile\nCID=22222222\nparentCID=11111111\n"
                      "createType=\"monolithicSparse\"\nparentFileNameHint=\"gone.vmdk\"\n");
    char *child3 = make_sparse(2, kc, 4, cdesc, NULL, NULL);
    img = open_img(child3);
    ck_assert(unit_has_problem(img, "gone.vmdk"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    uint8_t buf[4096];
    ck_assert_int_eq(vimage_read(img, buf, 4096, 4096), 0);
    ck_assert(!memcmp(buf, cexp + 4096, 4096));
    ck_assert_int_eq(vimage_read(img, buf, 4096, 8192), 0);   /* zeroed grain */
    ck_assert(!memcmp(buf, cexp + 8192, 4096));
    vimage_unref(img);
    free(cdesc);

    free(bexp);
    free(cexp);
    free(bb);
    unlink_free(base);
    unlink_free(child);
    unlink_free(child2);
    unlink_free(child3);
}
END_TEST

START_TEST(parent_loop_is_cut)
{
    char dir[] = "/tmp/vmfs-unit-vmdkloop-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *a = xasprintf("%s/a.vmdk", dir), *b = xasprintf("%s/b.vmdk", dir);
    enum gk k[] = {G_DATA};
    const char *da = "# Disk DescriptorFile\nCID=1\nparentCID=2\nparentFileNameHint=\"b.vmdk\"\n";
    const char *db = "# Disk DescriptorFile\nCID=2\nparentCID=1\nparentFileNameHint=\"a.vmdk\"\n";
    char *ta = make_sparse(1, k, 1, da, NULL, NULL), *tb = make_sparse(2, k, 1, db, NULL, NULL);
    ck_assert_int_eq(rename(ta, a), 0);
    ck_assert_int_eq(rename(tb, b), 0);
    struct vimage *img = open_img(a);
    ck_assert_ptr_nonnull(img);
    ck_assert(unit_has_problem(img, "backing loop"));
    ck_assert_int_eq(unit_read_err(img, 0, 4096), 0);
    ck_assert_int_eq(unit_read_err(img, 4096, 512), -EIO);
    vimage_unref(img);
    /* A file that names itself. */
    const char *ds = "# Disk DescriptorFile\nCID=1\nparentCID=1\nparentFileNameHint=\"a.vmdk\"\n";
    char *ts = make_sparse(1, k, 1, ds, NULL, NULL);
    ck_assert_int_eq(rename(ts, a), 0);
    img = open_img(a);
    ck_assert(unit_has_problem(img, "backing loop"));
    vimage_unref(img);
    unlink(a);
    unlink(b);
    rmdir(dir);
    free(a);
    free(b);
    free(ta);
    free(tb);
    free(ts);
}
END_TEST

START_TEST(embedded_descriptor_without_capacity)
{
    /* A sparse file with no capacity whose embedded descriptor lists the
     * extents (qemu reads these the same way). */
    char *flat = write_pattern(8 * SEC, 5);
    char *fb = base_name(flat);
    char *text = xasprintf("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"
                           "RW 8 FLAT \"%s\" 0\n", fb);
    uint8_t d[4096] = {0};
    memcpy(d, "KDMV", 4);
    unit_le(d + 4, 1, 4);
    unit_le(d + 20, 8, 8);
    unit_le(d + 28, 1, 8);
    unit_le(d + 36, 7, 8);
    unit_le(d + 44, 512, 4);
    memcpy(d + SEC, text, strlen(text));
    char *path = unit_tmpfile(d, sizeof(d), "vmdk");
    struct vimage *img = open_img(path);
    unit_nproblems(img);
    uint8_t *exp = malloc(8 * SEC);
    for (size_t i = 0; i < 8 * SEC; i++)
        exp[i] = unit_pat(5, i);
    check_disk(img, exp, 8 * SEC);
    char **names;
    ck_assert_uint_eq(vfmt_vmdk.related_files(path, d, sizeof(d), &names), 1);
    free(names[0]);
    free(names);
    vimage_unref(img);
    free(exp);
    free(text);
    free(fb);
    unlink_free(path);
    unlink_free(flat);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("vmdk");
    TCase *t = tcase_create("descriptor");
    tcase_add_test(t, desc_parses_keys_and_extents);
    tcase_add_test(t, desc_rejects_malformed_lines);
    tcase_add_test(t, desc_bounds_extents_and_length);
    tcase_add_test(t, desc_probe_by_content);
    suite_add_tcase(s, t);
    t = tcase_create("sparse");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, sparse_reads_all_grain_kinds);
    tcase_add_test(t, sparse_value_one_without_zero_flag_is_data);
    tcase_add_test(t, stream_optimized_with_markers);
    tcase_add_test(t, stream_optimized_footer);
    tcase_add_test(t, compressed_without_markers);
    tcase_add_test(t, parallel_readers);
    tcase_add_test(t, corrupt_compressed_grain_fails_alone);
    tcase_add_test(t, bad_compressed_sizes);
    tcase_add_test(t, footer_damaged_is_refused);
    tcase_add_test(t, bad_magic_is_not_vmdk);
    tcase_add_test(t, absurd_header_values);
    tcase_add_test(t, grain_directory_past_eof);
    tcase_add_test(t, grain_table_past_eof_fails_its_span);
    tcase_add_test(t, grain_past_eof_fails_alone);
    tcase_add_test(t, grain_runs);
    tcase_add_test(t, compressed_grain_runs);
    tcase_add_test(t, truncated_file_fails_past_the_cut);
    tcase_add_test(t, tiny_and_empty_files);
    tcase_add_test(t, newline_check_bytes_altered);
    suite_add_tcase(s, t);
    t = tcase_create("extents");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, descriptor_flat_zero_and_sparse_extents);
    tcase_add_test(t, descriptor_missing_extent_fails_there_only);
    tcase_add_test(t, descriptor_short_flat_extent);
    tcase_add_test(t, descriptor_limits);
    tcase_add_test(t, descriptor_unsupported_extent_type);
    tcase_add_test(t, cowd_extent);
    tcase_add_test(t, embedded_descriptor_without_capacity);
    suite_add_tcase(s, t);
    t = tcase_create("parents");
    tcase_add_test(t, delta_reads_parent_where_unallocated);
    tcase_add_test(t, parent_loop_is_cut);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return unit_run(suite()); }
