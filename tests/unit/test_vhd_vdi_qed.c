/* Unit tests: the VHD ("vpc"), VDI and QED drivers, over images built byte by
 * byte in memory by the small builders below, written to a temporary
 * directory and opened through the image layer like any other image.  Each
 * builder also computes the disk its image should read as. */
#include "config.h"

#include <pthread.h>
#include <sys/stat.h>

#include "unit.h"
#include "vmfs/image.h"
#include "vmfs/report.h"

/* ------------------------------------------------------------------------
 * Shared helpers: a temporary directory, opening
 * ---------------------------------------------------------------------- */

static char *tmpdir;

static char *write_file(const char *name, const void *data, size_t len)
{
    return unit_write(tmpdir, name, data, len);
}

static struct vimage *open_img(const char *path)
{
    struct vopen_opts o = {0};
    return vimage_open(path, &o, -1, false);
}

static void setup(void)
{
    tmpdir = unit_tmpdir("vvq");
}

static void teardown(void)
{
    unit_rmtree(tmpdir);
}

/* A header field set to a bad value, and the problem that must say so. */
struct bad_field {
    uint64_t off;
    uint64_t val;
    unsigned n;
    const char *problem;
};

/* The image at path must be listed but refused, with c's problem. */
static void expect_refused(const char *path, const struct bad_field *c)
{
    struct vimage *img = open_img(path);
    unit_check_refused(img, c->problem);
    vimage_unref(img);
}

/* ------------------------------------------------------------------------
 * VHD builder
 * ---------------------------------------------------------------------- */

#define VHD_FIXED 2
#define VHD_DYNAMIC 3
#define VHD_DIFF 4

struct vhdb {
    struct unit_buf f;
    uint32_t type;
    uint64_t size;          /* virtual size */
    uint64_t cur_size;      /* current size field */
    uint16_t cyls;
    uint8_t heads, spt;
    char app[4];
    uint32_t bs, bm, entries;
    uint64_t bat_off;
    const uint8_t *parent;  /* differencing: the parent's disk */
    uint64_t parent_size;
    uint8_t *exp;
};

static uint32_t checksum(const uint8_t *p, size_t n, size_t skip)
{
    uint32_t s = 0;
    for (size_t i = 0; i < n; i++)
        if (i < skip || i >= skip + 4)
            s += p[i];
    return ~s;
}

/* A footer for b at off (len 512, or 511 for the old layout). */
static void vhd_footer(struct vhdb *b, uint64_t off, size_t len)
{
    struct unit_buf t = {0};
    unit_grow(&t, 512);
    memcpy(t.d, "conectix", 8);
    unit_put_be(&t, 8, 2, 4);
    unit_put_be(&t, 12, 0x10000, 4);
    unit_put_be(&t, 16, b->type == VHD_FIXED ? UINT64_MAX : 512, 8);
    unit_put_be(&t, 24, 0x2a000000, 4);
    memcpy(t.d + 28, b->app, 4);
    unit_put_be(&t, 32, 0x50003, 4);
    memcpy(t.d + 36, "Wi2k", 4);
    unit_put_be(&t, 40, b->cur_size, 8);
    unit_put_be(&t, 48, b->cur_size, 8);
    unit_put_be(&t, 56, b->cyls, 2);
    t.d[58] = b->heads;
    t.d[59] = b->spt;
    unit_put_be(&t, 60, b->type, 4);
    for (int i = 0; i < 16; i++)
        t.d[68 + i] = (uint8_t)(0xa0 + i);
    unit_put_be(&t, 64, checksum(t.d, len, 64), 4);
    unit_put_bytes(&b->f, off, t.d, len);
    free(t.d);
}

/* A builder for a disk of cyls*heads*spt sectors, sized by geometry
 * (creator "qemu") unless app says otherwise; cur_size is the field. */
static struct vhdb *vhd_new(uint32_t type, uint16_t cyls, uint8_t heads, uint8_t spt,
                            uint64_t cur_size, const char *app, uint32_t bs)
{
    struct vhdb *b = calloc(1, sizeof(*b));
    b->type = type;
    b->cyls = cyls;
    b->heads = heads;
    b->spt = spt;
    b->cur_size = cur_size;
    memcpy(b->app, app, 4);
    bool cur = !memcmp(app, "win ", 4) || !memcmp(app, "qem2", 4) || !memcmp(app, "d2v ", 4);
    b->size = cur ? cur_size / 512 * 512 : (uint64_t)cyls * heads * spt * 512;
    b->exp = calloc(1, (size_t)b->size + 1);
    if (type == VHD_FIXED) {
        unit_grow(&b->f, (size_t)b->size);
        return b;
    }
    b->bs = bs;
    b->bm = ((bs / 512 + 7) / 8 + 511) / 512 * 512;
    b->entries = (uint32_t)((b->size + bs - 1) / bs);
    b->bat_off = 1536;
    uint64_t bat_len = ((uint64_t)b->entries * 4 + 511) / 512 * 512;
    unit_grow(&b->f, (size_t)(b->bat_off + bat_len));
    memset(b->f.d + b->bat_off, 0xff, (size_t)bat_len);
    struct unit_buf *f = &b->f;
    memcpy(f->d + 512, "cxsparse", 8);
    unit_put_be(f, 520, UINT64_MAX, 8);
    unit_put_be(f, 528, b->bat_off, 8);
    unit_put_be(f, 536, 0x10000, 4);
    unit_put_be(f, 540, b->entries, 4);
    unit_put_be(f, 544, bs, 4);
    return b;
}

static void vhd_free(struct vhdb *b)
{
    free(b->f.d);
    free(b->exp);
    free(b);
}

static uint32_t bat_get(struct vhdb *b, uint64_t blk)
{
    return get_be32(b->f.d + b->bat_off + blk * 4);
}

/* The file offset of block blk's bitmap, allocating the block. */
static uint64_t vhd_block(struct vhdb *b, uint64_t blk)
{
    uint32_t e = bat_get(b, blk);
    if (e != 0xffffffff)
        return (uint64_t)e * 512;
    uint64_t off = unit_append(&b->f, b->bm + b->bs, 512);
    unit_put_be(&b->f, b->bat_off + blk * 4, off / 512, 4);
    return off;
}

/* Writes pattern tag to [off, off+len) of the disk; differencing and
 * dynamic disks mark the touched sectors in the bitmaps. */
static void vhd_write(struct vhdb *b, uint64_t off, uint64_t len, uint8_t tag)
{
    for (uint64_t i = 0; i < len; i++) {
        uint64_t g = off + i;
        if (b->type == VHD_FIXED) {
            b->f.d[g] = unit_pat(tag, g);
            continue;
        }
        uint64_t base = vhd_block(b, g / b->bs), in = g % b->bs, s = in / 512;
        b->f.d[base + b->bm + in] = unit_pat(tag, g);
        b->f.d[base + s / 8] |= (uint8_t)(0x80 >> (s % 8));
    }
}

/* Computes the expected disk from the image as built. */
static void vhd_expect(struct vhdb *b)
{
    if (b->type == VHD_FIXED) {
        memcpy(b->exp, b->f.d, (size_t)b->size);
        return;
    }
    for (uint64_t g = 0; g < b->size; g++) {
        uint32_t e = bat_get(b, g / b->bs);
        uint8_t parent = b->parent && g < b->parent_size ? b->parent[g] : 0;
        if (e == 0xffffffff) {
            b->exp[g] = b->type == VHD_DIFF ? parent : 0;
            continue;
        }
        uint64_t base = (uint64_t)e * 512, in = g % b->bs, s = in / 512;
        bool bit = b->f.d[base + s / 8] >> (7 - s % 8) & 1;
        b->exp[g] = b->type == VHD_DIFF && !bit ? parent : b->f.d[base + b->bm + in];
    }
}

/* Appends a parent locator's data and its entry i in the dynamic header. */
static void vhd_locator(struct vhdb *b, unsigned i, const char *code, const void *data,
                        size_t len)
{
    uint64_t off = unit_append(&b->f, (len + 511) / 512 * 512, 512);
    unit_put_bytes(&b->f, off, data, len);
    uint64_t e = 512 + 576 + 24 * i;
    memcpy(b->f.d + e, code, 4);
    unit_put_be(&b->f, e + 4, (len + 511) / 512, 4);
    unit_put_be(&b->f, e + 8, len, 4);
    unit_put_be(&b->f, e + 16, off, 8);
}

static size_t utf16(const char *s, uint8_t *out, bool be)
{
    size_t n = 0;
    for (; *s; s++, n += 2) {
        out[n + (be ? 0 : 1)] = 0;
        out[n + (be ? 1 : 0)] = (uint8_t)*s;
    }
    return n;
}

static void vhd_w2ru(struct vhdb *b, unsigned i, const char *code, const char *path)
{
    uint8_t u[1024];
    vhd_locator(b, i, code, u, utf16(path, u, false));
}

static void vhd_parent_name(struct vhdb *b, const char *name)
{
    uint8_t u[512] = {0};
    utf16(name, u, true);
    unit_put_bytes(&b->f, 512 + 64, u, sizeof(u));
}

/* Footer copy, header checksum, footer at the end; the expected disk. */
static void vhd_finish(struct vhdb *b)
{
    if (b->type != VHD_FIXED) {
        vhd_footer(b, 0, 512);
        unit_put_be(&b->f, 512 + 36, 0, 4);
        unit_put_be(&b->f, 512 + 36, checksum(b->f.d + 512, 1024, 36), 4);
    }
    vhd_expect(b);
    vhd_footer(b, unit_append(&b->f, 0, 512), 512);
}

static char *vhd_file(struct vhdb *b, const char *name)
{
    return write_file(name, b->f.d, b->f.len);
}

/* ------------------------------------------------------------------------
 * VHD tests
 * ---------------------------------------------------------------------- */

START_TEST(vhd_fixed_chs)
{
    /* qemu sizes a "qemu" disk by its geometry: 20*4*17 sectors. */
    struct vhdb *b = vhd_new(VHD_FIXED, 20, 4, 17, 20 * 4 * 17 * 512 + 4096, "qemu", 0);
    vhd_write(b, 0, 3000, 1);
    vhd_write(b, 300000, 40000, 2);
    vhd_finish(b);
    char *p = vhd_file(b, "fixed.vhd");
    struct vimage *img = open_img(p);
    ck_assert_ptr_nonnull(img);
    ck_assert_str_eq(vimage_format(img), "vpc");
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, 20 * 4 * 17 * 512);
    unit_check_report(img, false, "\"subformat\": \"fixed\"", "\"size_from\": \"geometry\"");
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_fixed_current_size)
{
    /* Hyper-V ("win ") and qemu with force_size ("qem2") use current size. */
    const char *apps[] = {"win ", "qem2"};
    for (int i = 0; i < 2; i++) {
        struct vhdb *b = vhd_new(VHD_FIXED, 20, 4, 17, 500000 + 300, apps[i], 0);
        ck_assert_uint_eq(b->size, 500224);
        vhd_write(b, 1000, 200000, 3);
        vhd_finish(b);
        char *p = vhd_file(b, "cur.vhd");
        struct vimage *img = open_img(p);
        ck_assert_uint_eq(unit_nproblems(img), 0);
        unit_check_disk(img, b->exp, 500224);
        vimage_unref(img);
        vhd_free(b);
        free(p);
    }
}
END_TEST

START_TEST(vhd_fixed_max_geometry)
{
    /* The maximum geometry means "use the current size", whoever wrote it. */
    struct vhdb *b = vhd_new(VHD_FIXED, 16, 16, 8, 1 << 20, "win ", 0);
    memcpy(b->app, "vpc ", 4);
    b->cyls = 65535;
    b->heads = 16;
    b->spt = 255;
    vhd_write(b, 5, 100, 4);
    vhd_finish(b);
    char *p = vhd_file(b, "maxgeo.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, 1 << 20);
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_fixed_old_footer)
{
    /* Virtual PC before 2004 wrote a 511-byte footer. */
    struct vhdb *b = vhd_new(VHD_FIXED, 10, 4, 17, 10 * 4 * 17 * 512, "vpc ", 0);
    vhd_write(b, 0, b->size, 5);
    vhd_expect(b);
    vhd_footer(b, b->f.len, 511);
    char *p = vhd_file(b, "old.vhd");
    struct vimage *img = open_img(p);
    ck_assert_ptr_nonnull(img);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_fixed_truncated)
{
    /* The footer claims more data than the file holds before it. */
    struct vhdb *b = vhd_new(VHD_FIXED, 20, 4, 17, 20 * 4 * 17 * 512, "qemu", 0);
    vhd_write(b, 0, b->size, 6);
    vhd_finish(b);
    uint64_t keep = 100 * 512;
    memmove(b->f.d + keep, b->f.d + b->f.len - 512, 512);
    char *p = write_file("short.vhd", b->f.d, (size_t)keep + 512);
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "holds only 51200 bytes"));
    unit_check_range(img, b->exp, 0, keep);
    ck_assert_int_eq(unit_read_err(img, keep - 512, 1024), -EIO);
    ck_assert_int_eq(unit_read_err(img, b->size - 512, 512), -EIO);
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_dynamic)
{
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 40, 16, 63, 40 * 16 * 63 * 512, "qemu", 64 << 10);
    vhd_write(b, 0, 512, 1);
    vhd_write(b, 70000, 100000, 2);      /* blocks 1 and 2 */
    vhd_write(b, 5 << 20, 1, 3);
    vhd_write(b, b->size - 100, 100, 4);
    vhd_finish(b);
    char *p = vhd_file(b, "dyn.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    unit_extent_at(img, 0, true, 192 << 10);
    unit_extent_at(img, 192 << 10, false, (5 << 20) - (192 << 10));
    /* One run per block: bitmaps lie between blocks. */
    unit_run_at(img, 100, 1 << 20, VRUN_DATA, (64 << 10) - 100);
    unit_run_at(img, 192 << 10, img->size - (192 << 10), VRUN_ZERO, (5 << 20) - (192 << 10));
    unit_check_report(img, false, "\"subformat\": \"dynamic\"", "\"block_size\": 65536");
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_dynamic_small_blocks)
{
    /* 512-byte blocks still carry a whole sector of bitmap. */
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 4, 2, 3, 0, "qemu", 512);
    ck_assert_uint_eq(b->bm, 512);
    vhd_write(b, 100, 2000, 7);
    vhd_finish(b);
    char *p = vhd_file(b, "small.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

/* A parent disk (dynamic, 64 KiB blocks) with a pattern almost everywhere. */
static struct vhdb *vhd_parent(void)
{
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 20 * 16 * 63 * 512, "qemu", 64 << 10);
    vhd_write(b, 0, b->size - (200 << 10), 0x40);
    vhd_finish(b);
    return b;
}

/* A differencing child of parent with writes across bitmap boundaries. */
static struct vhdb *vhd_child(const struct vhdb *parent, uint32_t bs)
{
    struct vhdb *b = vhd_new(VHD_DIFF, 20, 16, 63, 20 * 16 * 63 * 512, "win ", bs);
    b->size = parent->size;
    b->cur_size = parent->size;
    b->parent = parent->exp;
    b->parent_size = parent->size;
    vhd_write(b, 512, 512, 0x80);               /* one sector */
    vhd_write(b, 4096, 8192 + 100, 0x81);       /* sectors 8..24, the last partly */
    vhd_write(b, (64 << 10) - 1024, 2048, 0x82); /* across a block boundary */
    vhd_write(b, 300 << 10, 64 << 10, 0x83);
    vhd_write(b, b->size - 512, 512, 0x84);
    return b;
}

START_TEST(vhd_diff_w2ru)
{
    struct vhdb *par = vhd_parent();
    char *pp = vhd_file(par, "parent.vhd");
    struct vhdb *b = vhd_child(par, 64 << 10);
    vhd_w2ru(b, 0, "W2ku", "C:\\vms\\elsewhere\\nothere.vhd");
    vhd_w2ru(b, 1, "W2ru", ".\\parent.vhd");
    vhd_parent_name(b, "wrong.vhd");
    vhd_finish(b);
    char *p = vhd_file(b, "child.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_uint_eq(img->nlayers, 2);
    unit_check_disk(img, b->exp, b->size);
    unit_check_report(img, false, "\"platform\": \"W2ru\"", "\"path\": \".\\\\parent.vhd\"");
    vimage_unref(img);
    vhd_free(b);
    vhd_free(par);
    free(p);
    free(pp);
}
END_TEST

START_TEST(vhd_diff_parent_candidates)
{
    /* Each way of naming the parent on its own: a relative path in a
     * subdirectory, an absolute Windows path (its file name beside the
     * child), a Mac file URL, the parent name of the header, a deprecated
     * relative path in bytes. */
    struct vhdb *par = vhd_parent();
    char sub[512];
    snprintf(sub, sizeof(sub), "%s/sub", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    char *pp = vhd_file(par, "sub/base.vhd");
    char *pp2 = vhd_file(par, "base.vhd");
    char macurl[600];
    snprintf(macurl, sizeof(macurl), "file://localhost%s/sub/base%%2Evhd", tmpdir);
    for (int way = 0; way < 5; way++) {
        struct vhdb *b = vhd_child(par, 32 << 10);
        if (way == 0)
            vhd_w2ru(b, 3, "W2ru", ".\\sub\\..\\sub\\base.vhd");
        else if (way == 1)
            vhd_w2ru(b, 0, "W2ku", "D:\\Hyper-V\\disks\\base.vhd");
        else if (way == 2)
            vhd_locator(b, 5, "MacX", macurl, strlen(macurl));
        else if (way == 3)
            vhd_parent_name(b, "base.vhd");
        else
            vhd_locator(b, 7, "Wi2r", "sub\\base.vhd", 12);
        vhd_finish(b);
        char *p = vhd_file(b, "kid.vhd");
        struct vimage *img = open_img(p);
        ck_assert_msg(unit_nproblems(img) == 0, "way %d", way);
        ck_assert_uint_eq(img->nlayers, 2);
        unit_check_disk(img, b->exp, b->size);
        vimage_unref(img);
        vhd_free(b);
        free(p);
    }
    vhd_free(par);
    free(pp);
    free(pp2);
}
END_TEST

START_TEST(vhd_diff_chain_of_three)
{
    /* base (fixed) <- mid (differencing) <- top (differencing). */
    struct vhdb *base = vhd_new(VHD_FIXED, 10, 16, 63, 10 * 16 * 63 * 512, "qemu", 0);
    vhd_write(base, 0, base->size, 0x10);
    vhd_finish(base);
    char *p0 = vhd_file(base, "base.vhd");
    struct vhdb *mid = vhd_new(VHD_DIFF, 10, 16, 63, base->size, "qemu", 4096);
    mid->parent = base->exp;
    mid->parent_size = base->size;
    vhd_write(mid, 10000, 30000, 0x20);
    vhd_w2ru(mid, 0, "W2ru", "base.vhd");
    vhd_finish(mid);
    char *p1 = vhd_file(mid, "mid.vhd");
    struct vhdb *top = vhd_new(VHD_DIFF, 10, 16, 63, base->size, "qemu", 2 << 20);
    top->parent = mid->exp;
    top->parent_size = mid->size;
    vhd_write(top, 20000, 700, 0x30);
    vhd_w2ru(top, 0, "W2ru", "mid.vhd");
    vhd_finish(top);
    char *p2 = vhd_file(top, "top.vhd");
    struct vimage *img = open_img(p2);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_uint_eq(img->nlayers, 3);
    unit_check_disk(img, top->exp, top->size);
    vimage_unref(img);
    vhd_free(base);
    vhd_free(mid);
    vhd_free(top);
    free(p0);
    free(p1);
    free(p2);
}
END_TEST

START_TEST(vhd_diff_missing_parent)
{
    struct vhdb *par = vhd_parent();
    struct vhdb *b = vhd_child(par, 64 << 10);
    vhd_w2ru(b, 0, "W2ru", "gone.vhd");
    vhd_finish(b);
    char *p = vhd_file(b, "orphan.vhd");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "gone.vhd"));
    unit_check_range(img, b->exp, 512, 512);          /* the child's own sector */
    unit_check_range(img, b->exp, 300 << 10, 64 << 10);
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);          /* the parent's */
    ck_assert_int_eq(unit_read_err(img, 1 << 20, 4096), -EIO);
    vimage_unref(img);
    vhd_free(b);
    vhd_free(par);
    free(p);
}
END_TEST

START_TEST(vhd_diff_no_parent_named)
{
    struct vhdb *par = vhd_parent();
    struct vhdb *b = vhd_child(par, 64 << 10);
    vhd_finish(b);
    char *p = vhd_file(b, "anon.vhd");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "names no parent"));
    unit_check_range(img, b->exp, 512, 512);
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 2 << 20, 512), -EIO);    /* an unallocated block */
    vimage_unref(img);
    vhd_free(b);
    vhd_free(par);
    free(p);
}
END_TEST

START_TEST(vhd_diff_loop)
{
    /* a -> b -> a */
    struct vhdb *par = vhd_parent();
    struct vhdb *a = vhd_child(par, 64 << 10), *b = vhd_child(par, 64 << 10);
    vhd_w2ru(a, 0, "W2ru", "loop-b.vhd");
    vhd_w2ru(b, 0, "W2ru", "loop-a.vhd");
    vhd_finish(a);
    vhd_finish(b);
    char *pa = vhd_file(a, "loop-a.vhd"), *pb = vhd_file(b, "loop-b.vhd");
    struct vimage *img = open_img(pa);
    ck_assert(unit_has_problem(img, "loop"));
    unit_check_range(img, a->exp, 512, 512);
    ck_assert_int_eq(unit_read_err(img, 2 << 20, 512), -EIO);
    vimage_unref(img);
    vhd_free(a);
    vhd_free(b);
    vhd_free(par);
    free(pa);
    free(pb);
}
END_TEST

START_TEST(vhd_footer_damaged_uses_copy)
{
    for (int how = 0; how < 3; how++) {
        struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
        vhd_write(b, 1000, 100000, 9);
        vhd_finish(b);
        size_t len = b->f.len;
        if (how == 0)
            b->f.d[len - 512 + 3] ^= 0xff;             /* the cookie */
        else if (how == 1)
            b->f.d[len - 512 + 48] ^= 0x01;            /* a field: the checksum fails */
        else
            len -= 512;                                /* no footer at all */
        char *p = write_file("dmg.vhd", b->f.d, len);
        struct vimage *img = open_img(p);
        ck_assert_ptr_nonnull(img);
        ck_assert(unit_has_problem(img, "using its copy at offset 0"));
        unit_check_disk(img, b->exp, b->size);
        unit_check_report(img, false, "\"footer\": \"copy at offset 0\"");
        vimage_unref(img);
        vhd_free(b);
        free(p);
    }
}
END_TEST

START_TEST(vhd_footer_both_bad_checksums)
{
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
    vhd_write(b, 0, 5000, 9);
    vhd_finish(b);
    b->f.d[b->f.len - 512 + 84] ^= 1;      /* saved state: harmless, but the sum fails */
    b->f.d[84] ^= 1;
    char *p = vhd_file(b, "sums.vhd");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "used unverified"));
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_no_footer)
{
    /* No cookie anywhere: a .vhd that is not a VHD is listed as damaged. */
    struct unit_buf f = {0};
    unit_grow(&f, 8192);
    memset(f.d, 0x5a, 8192);
    char *p = write_file("junk.vhd", f.d, f.len);
    struct vimage *img = open_img(p);
    unit_check_refused(img, "not a disk image");
    /* A cookie at offset 0 but nothing else right. */
    memcpy(f.d, "conectix", 8);
    char *p2 = write_file("junk2.vhd", f.d, f.len);
    struct vimage *img2 = open_img(p2);
    ck_assert(img2->top_failed);
    ck_assert(unit_has_problem(img2, "used unverified") || unit_has_problem(img2, "disk type"));
    /* Shorter than a footer. */
    char *p3 = write_file("tiny.vhd", "conectix", 8);
    struct vimage *img3 = open_img(p3);
    unit_check_refused(img3, "too short");
    vimage_unref(img);
    vimage_unref(img2);
    vimage_unref(img3);
    free(f.d);
    free(p);
    free(p2);
    free(p3);
}
END_TEST

START_TEST(vhd_bad_fields)
{
    static const struct bad_field cases[] = {
        {60, 7, 4, "disk type 7"},
        {512 + 32, 3000, 4, "block size 3000"},
        {512 + 32, 0, 4, "block size 0"},
        {512, 0x6e6f7065, 4, "cxsparse"},
        {16, 1ull << 50, 8, "dynamic disk header offset"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(cases); i++) {
        struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
        vhd_write(b, 0, 5000, 9);
        if (cases[i].off >= 512)      /* the header checksum stays right */
            unit_put_be(&b->f, cases[i].off, cases[i].val, cases[i].n);
        vhd_finish(b);
        if (cases[i].off < 512) {     /* both footers, checksums right */
            unit_put_be(&b->f, cases[i].off, cases[i].val, cases[i].n);
            unit_put_be(&b->f, 64, 0, 4);
            unit_put_be(&b->f, 64, checksum(b->f.d, 512, 64), 4);
            memcpy(b->f.d + b->f.len - 512, b->f.d, 512);
        }
        char *p = vhd_file(b, "bad.vhd");
        expect_refused(p, &cases[i]);
        vhd_free(b);
        free(p);
    }
}
END_TEST

START_TEST(vhd_absurd_size)
{
    struct vhdb *b = vhd_new(VHD_FIXED, 20, 4, 17, 20 * 4 * 17 * 512, "win ", 0);
    vhd_finish(b);
    b->cur_size = 1ull << 60;
    vhd_footer(b, b->f.len - 512, 512);
    char *p = vhd_file(b, "huge.vhd");
    struct vimage *img = open_img(p);
    unit_check_refused(img, "absurd");
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_dyn_header_checksum)
{
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
    vhd_write(b, 0, 5000, 9);
    vhd_finish(b);
    b->f.d[512 + 800] ^= 0x10;             /* reserved bytes: the sum fails */
    char *p = vhd_file(b, "hsum.vhd");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "dynamic disk header has checksum"));
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_bat_damage)
{
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
    vhd_write(b, 0, 200 << 10, 9);            /* blocks 0..3 */
    vhd_finish(b);
    unit_put_be(&b->f, b->bat_off + 4, 0x7fffff00, 4);   /* block 1 far past the end */
    char *p = vhd_file(b, "bat.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_range(img, b->exp, 0, 64 << 10);
    ck_assert_int_eq(unit_read_err(img, 64 << 10, 512), -EIO);
    ck_assert(unit_has_problem(img, "block 1 "));
    unit_check_range(img, b->exp, 128 << 10, 72 << 10);
    unit_check_range(img, b->exp, 1 << 20, 1 << 20);
    vimage_unref(img);
    /* The whole table past the end of the file. */
    unit_put_be(&b->f, 512 + 16, 1ull << 40, 8);
    unit_put_be(&b->f, 512 + 36, 0, 4);
    unit_put_be(&b->f, 512 + 36, checksum(b->f.d + 512, 1024, 36), 4);
    char *p2 = vhd_file(b, "bat2.vhd");
    img = open_img(p2);
    ck_assert(unit_has_problem(img, "lie past the end of the file"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    vimage_unref(img);
    /* Too few entries for the disk. */
    unit_put_be(&b->f, 512 + 16, b->bat_off, 8);
    unit_put_be(&b->f, 512 + 28, 3, 4);
    unit_put_be(&b->f, 512 + 36, 0, 4);
    unit_put_be(&b->f, 512 + 36, checksum(b->f.d + 512, 1024, 36), 4);
    char *p3 = vhd_file(b, "bat3.vhd");
    img = open_img(p3);
    ck_assert(unit_has_problem(img, "too few"));
    unit_check_range(img, b->exp, 0, 3000);
    ck_assert_int_eq(unit_read_err(img, 3 * (64 << 10), 512), -EIO);
    vimage_unref(img);
    vhd_free(b);
    free(p);
    free(p2);
    free(p3);
}
END_TEST

START_TEST(vhd_truncated_dynamic)
{
    /* Cut inside the last block: the footer goes, the copy serves, the
     * blocks before the cut read, the cut one fails where it is gone. */
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
    vhd_write(b, 0, 64 << 10, 1);
    vhd_write(b, 1 << 20, 64 << 10, 2);
    vhd_finish(b);
    uint64_t bm1 = (uint64_t)bat_get(b, 16) * 512;
    size_t cut = (size_t)(bm1 + 512 + 8192);
    char *p = write_file("cut.vhd", b->f.d, cut);
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "copy at offset 0"));
    unit_check_range(img, b->exp, 0, 64 << 10);
    unit_check_range(img, b->exp, 1 << 20, 8192);
    ck_assert_int_eq(unit_read_err(img, (1 << 20) + 8192, 512), -EIO);
    ck_assert(unit_has_problem(img, "past the end of the file"));
    unit_check_range(img, b->exp, 2 << 20, 4096);   /* unallocated: zeros */
    vimage_unref(img);
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_probe_fixed_by_footer)
{
    /* A fixed disk has no magic at offset 0: the footer finds it, whatever
     * its name. */
    struct vhdb *b = vhd_new(VHD_FIXED, 20, 4, 17, 20 * 4 * 17 * 512, "qemu", 0);
    vhd_write(b, 0, b->size, 8);
    vhd_finish(b);
    char *p = vhd_file(b, "disk.bin");
    ck_assert_ptr_nonnull(vimage_probe_file(p, false));
    ck_assert_str_eq(vimage_probe_file(p, false)->name, "vpc");
    vhd_free(b);
    free(p);
}
END_TEST

START_TEST(vhd_huge_counts)
{
    /* A table claiming 4 Gi entries of 2 GiB blocks: nothing is read or
     * allocated for it beyond what the disk needs. */
    struct vhdb *b = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
    vhd_write(b, 0, 5000, 9);
    unit_put_be(&b->f, 512 + 28, 0xffffffff, 4);
    vhd_finish(b);
    char *p = vhd_file(b, "many.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    unit_put_be(&b->f, 512 + 32, 1u << 31, 4);           /* 2 GiB blocks */
    unit_put_be(&b->f, 512 + 36, 0, 4);
    unit_put_be(&b->f, 512 + 36, checksum(b->f.d + 512, 1024, 36), 4);
    char *p2 = vhd_file(b, "bigblocks.vhd");
    img = open_img(p2);
    ck_assert_ptr_nonnull(img);
    ck_assert(!img->top_failed);
    /* Block 0's bitmap is now 512 KiB, past the end of this small file:
     * its data offset moved, so it reads what lies there or fails. */
    uint8_t buf[512];
    int r = vimage_read(img, buf, sizeof(buf), 0);
    ck_assert(r == 0 || r == -EIO);
    vimage_unref(img);
    vhd_free(b);
    free(p);
    free(p2);
}
END_TEST

struct par_arg {
    struct vimage *img;
    const uint8_t *exp;
    uint64_t size;
    unsigned seed;
    int bad;
};

static void *par_reader(void *arg)
{
    struct par_arg *a = arg;
    uint8_t *buf = malloc(200000);
    for (int i = 0; i < 400; i++) {
        a->seed = a->seed * 1103515245u + 12345u;
        uint64_t off = (a->seed >> 4) % a->size;
        a->seed = a->seed * 1103515245u + 12345u;
        size_t n = (size_t)VMFS_MIN((uint64_t)((a->seed >> 8) % 200000 + 1), a->size - off);
        if (vimage_read(a->img, buf, n, off) != 0 || memcmp(buf, a->exp + off, n))
            a->bad++;
    }
    free(buf);
    return NULL;
}

START_TEST(vhd_parallel_readers)
{
    struct vhdb *par = vhd_parent();
    char *pp = vhd_file(par, "parent.vhd");
    struct vhdb *b = vhd_child(par, 4096);
    vhd_w2ru(b, 0, "W2ru", "parent.vhd");
    vhd_finish(b);
    char *p = vhd_file(b, "child.vhd");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    pthread_t th[6];
    struct par_arg args[6];
    for (int i = 0; i < 6; i++) {
        args[i] = (struct par_arg){img, b->exp, b->size, (unsigned)i * 7919u + 1, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, par_reader, &args[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].bad, 0);
    }
    vimage_unref(img);
    vhd_free(b);
    vhd_free(par);
    free(p);
    free(pp);
}
END_TEST

/* ------------------------------------------------------------------------
 * VDI builder
 * ---------------------------------------------------------------------- */

struct vdib {
    struct unit_buf f;
    uint64_t size;
    uint32_t bs, extra, blocks, nalloc;
    uint32_t off_bmap, off_data;
    uint8_t *exp;
};

static struct vdib *vdi_new(uint32_t type, uint64_t disk_size, uint32_t bs, uint32_t extra)
{
    struct vdib *b = calloc(1, sizeof(*b));
    b->size = (disk_size + 511) / 512 * 512;
    b->bs = bs;
    b->extra = extra;
    b->blocks = (uint32_t)((b->size + bs - 1) / bs);
    b->off_bmap = 512;
    b->off_data = (uint32_t)((512 + (uint64_t)b->blocks * 4 + 511) / 512 * 512);
    b->exp = calloc(1, (size_t)b->size + 1);
    struct unit_buf *f = &b->f;
    unit_grow(f, b->off_data);
    memset(f->d + 512, 0xff, (size_t)b->blocks * 4);
    memcpy(f->d, "<<< Oracle VM VirtualBox Disk Image >>>\n", 40);
    unit_put_le(f, 0x40, 0xbeda107f, 4);
    unit_put_le(f, 0x44, 0x00010001, 4);
    unit_put_le(f, 0x48, 0x190, 4);
    unit_put_le(f, 0x4c, type, 4);
    memcpy(f->d + 0x54, "a test disk", 11);
    unit_put_le(f, 0x154, b->off_bmap, 4);
    unit_put_le(f, 0x158, b->off_data, 4);
    unit_put_le(f, 0x168, 512, 4);
    unit_put_le(f, 0x170, disk_size, 8);
    unit_put_le(f, 0x178, bs, 4);
    unit_put_le(f, 0x17c, extra, 4);
    unit_put_le(f, 0x180, b->blocks, 4);
    for (int i = 0; i < 16; i++)
        f->d[0x188 + i] = (uint8_t)(0x10 + i);
    return b;
}

static void vdi_free(struct vdib *b)
{
    free(b->f.d);
    free(b->exp);
    free(b);
}

static uint64_t vdi_block(struct vdib *b, uint64_t blk)
{
    uint32_t e = get_le32(b->f.d + b->off_bmap + blk * 4);
    if (e >= 0xfffffffe) {
        e = b->nalloc++;
        unit_put_le(&b->f, b->off_bmap + blk * 4, e, 4);
        unit_put_le(&b->f, 0x184, b->nalloc, 4);
    }
    uint64_t pos = b->off_data + (uint64_t)e * (b->bs + b->extra) + b->extra;
    unit_grow(&b->f, (size_t)(pos + b->bs));
    return pos;
}

static void vdi_write(struct vdib *b, uint64_t off, uint64_t len, uint8_t tag)
{
    for (uint64_t g = off; g < off + len; g++) {
        uint64_t pos = vdi_block(b, g / b->bs);
        b->f.d[pos + g % b->bs] = unit_pat(tag, g);
        b->exp[g] = unit_pat(tag, g);
    }
}

/* Allocates block blk at the next index, left as zeros. */
static void vdi_alloc(struct vdib *b, uint64_t blk)
{
    vdi_block(b, blk);
}

static char *vdi_file(struct vdib *b, const char *name)
{
    return write_file(name, b->f.d, b->f.len);
}

/* ------------------------------------------------------------------------
 * VDI tests
 * ---------------------------------------------------------------------- */

START_TEST(vdi_dynamic)
{
    struct vdib *b = vdi_new(1, 3 << 20, 64 << 10, 0);
    vdi_write(b, 2 << 20, 100000, 1);       /* allocated first, stored first */
    vdi_write(b, 0, 1000, 2);
    vdi_write(b, 70000, 200, 3);
    unit_put_le(&b->f, b->off_bmap + 10 * 4, 0xfffffffe, 4);   /* discarded */
    char *p = vdi_file(b, "dyn.vdi");
    struct vimage *img = open_img(p);
    ck_assert_ptr_nonnull(img);
    ck_assert_str_eq(vimage_format(img), "vdi");
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    unit_extent_at(img, 0, true, 128 << 10);
    unit_extent_at(img, 128 << 10, false, (2 << 20) - (128 << 10));
    unit_check_report(img, false, "\"image_type\": \"dynamic\"", "\"blocks_allocated\": 4",
                      "\"uuid\": \"13121110-1514-1716-1819-1a1b1c1d1e1f\"");
    vimage_unref(img);
    vdi_free(b);
    free(p);
}
END_TEST

START_TEST(vdi_static_one_run)
{
    struct vdib *b = vdi_new(2, 5 << 20, 1 << 20, 0);
    for (uint64_t i = 0; i < 5; i++)
        vdi_alloc(b, i);
    vdi_write(b, 12345, 3 << 20, 4);
    char *p = vdi_file(b, "static.vdi");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    unit_run_at(img, 100, (5 << 20) - 100, VRUN_DATA, (5 << 20) - 100);
    unit_check_report(img, false, "\"image_type\": \"static\"");
    vimage_unref(img);
    vdi_free(b);
    free(p);
}
END_TEST

START_TEST(vdi_block_extra_and_odd_size)
{
    /* Each block preceded by 512 bytes of extra data; a size that is not a
     * multiple of 512 rounds up. */
    struct vdib *b = vdi_new(1, 300000 + 7, 4096, 512);
    ck_assert_uint_eq(b->size, 300032);
    vdi_write(b, 0, 10000, 5);
    vdi_write(b, 299000, 1032, 6);
    memset(b->f.d + b->off_data, 0xee, 512);  /* extra data of the first block */
    char *p = vdi_file(b, "extra.vdi");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    vdi_free(b);
    free(p);
}
END_TEST

START_TEST(vdi_bad_headers)
{
    static const struct bad_field cases[] = {
        {0x44, 0x00010000, 4, "version 1.0"},
        {0x4c, 9, 4, "image type 9"},
        {0x178, 3000, 4, "block size 3000"},
        {0x178, 0, 4, "block size 0"},
        {0x170, 1ull << 62, 8, "absurd"},
        {0x48, 16, 4, "header size"},
        {0x17c, 1u << 31, 4, "extra"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(cases); i++) {
        struct vdib *b = vdi_new(1, 1 << 20, 64 << 10, 0);
        vdi_write(b, 0, 100, 1);
        unit_put_le(&b->f, cases[i].off, cases[i].val, cases[i].n);
        char *p = vdi_file(b, "bad.vdi");
        expect_refused(p, &cases[i]);
        vdi_free(b);
        free(p);
    }
    /* Bad signature: not claimed at all (an unknown file), or as damaged
     * by its extension. */
    struct vdib *b = vdi_new(1, 1 << 20, 64 << 10, 0);
    unit_put_le(&b->f, 0x40, 0x12345678, 4);
    char *p = vdi_file(b, "nosig.bin");
    ck_assert_ptr_null(open_img(p));
    char *p2 = vdi_file(b, "nosig.vdi");
    struct vimage *img = open_img(p2);
    ck_assert(img->top_failed);
    vimage_unref(img);
    /* Truncated header. */
    unit_put_le(&b->f, 0x40, 0xbeda107f, 4);
    char *p3 = write_file("trunc.vdi", b->f.d, 300);
    img = open_img(p3);
    unit_check_refused(img, "too short");
    vimage_unref(img);
    vdi_free(b);
    free(p);
    free(p2);
    free(p3);
}
END_TEST

START_TEST(vdi_map_damage)
{
    struct vdib *b = vdi_new(1, 1 << 20, 64 << 10, 0);
    vdi_write(b, 0, 200 << 10, 1);            /* blocks 0..3 */
    unit_put_le(&b->f, b->off_bmap + 4, 0x7ffffff0, 4);   /* block 1 far away */
    char *p = vdi_file(b, "dmg.vdi");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_range(img, b->exp, 0, 64 << 10);
    ck_assert_int_eq(unit_read_err(img, 64 << 10, 512), -EIO);
    ck_assert(unit_has_problem(img, "block 1 "));
    unit_check_range(img, b->exp, 128 << 10, 72 << 10);
    vimage_unref(img);
    /* The block map past the end of the file. */
    unit_put_le(&b->f, 0x154, 0x7ffffe00, 4);
    char *p2 = vdi_file(b, "dmg2.vdi");
    img = open_img(p2);
    ck_assert(unit_has_problem(img, "lie past the end of the file"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    vimage_unref(img);
    /* Fewer blocks than the disk needs. */
    unit_put_le(&b->f, 0x154, b->off_bmap, 4);
    unit_put_le(&b->f, 0x180, 2, 4);
    char *p3 = vdi_file(b, "dmg3.vdi");
    img = open_img(p3);
    ck_assert(unit_has_problem(img, "too few"));
    unit_check_range(img, b->exp, 0, 1000);
    ck_assert_int_eq(unit_read_err(img, 128 << 10, 512), -EIO);
    vimage_unref(img);
    /* Truncated in the middle of the data. */
    unit_put_le(&b->f, 0x180, b->blocks, 4);
    unit_put_le(&b->f, b->off_bmap + 4, 1, 4);
    char *p4 = write_file("dmg4.vdi", b->f.d, b->off_data + (100 << 10));
    img = open_img(p4);
    unit_check_range(img, b->exp, 0, 64 << 10);
    ck_assert_int_eq(unit_read_err(img, 64 << 10, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 128 << 10, 512), -EIO);
    unit_check_range(img, b->exp, 256 << 10, 64 << 10);
    vimage_unref(img);
    vdi_free(b);
    free(p);
    free(p2);
    free(p3);
    free(p4);
}
END_TEST

START_TEST(vdi_huge_counts)
{
    /* 4 Gi blocks in the header: only the entries the disk needs count. */
    struct vdib *b = vdi_new(1, 1 << 20, 64 << 10, 0);
    vdi_write(b, 0, 70000, 1);
    unit_put_le(&b->f, 0x180, 0xffffffff, 4);
    unit_put_le(&b->f, 0x184, 0xffffffff, 4);
    char *p = vdi_file(b, "many.vdi");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    vimage_unref(img);
    vdi_free(b);
    free(p);
}
END_TEST

START_TEST(vdi_differencing)
{
    struct vdib *b = vdi_new(4, 1 << 20, 64 << 10, 0);
    vdi_write(b, 0, 5000, 1);
    unit_put_le(&b->f, b->off_bmap + 5 * 4, 0xfffffffe, 4);
    for (int i = 0; i < 16; i++)
        b->f.d[0x1a8 + i] = (uint8_t)(0x30 + i);
    char *p = vdi_file(b, "diff.vdi");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "differencing image"));
    unit_check_range(img, b->exp, 0, 5000);
    unit_check_range(img, b->exp, 5 << 16, 1 << 16);   /* discarded: zeros */
    ck_assert_int_eq(unit_read_err(img, 2 << 16, 512), -EIO);      /* from the parent */
    vimage_unref(img);
    vdi_free(b);
    free(p);
}
END_TEST

/* ------------------------------------------------------------------------
 * QED builder
 * ---------------------------------------------------------------------- */

struct qedb {
    struct unit_buf f;
    uint64_t size, cs, nelems;
    uint32_t ts;
    uint64_t l1_off;
    uint8_t *exp;
};

static struct qedb *qed_new(uint64_t size, uint32_t cs, uint32_t ts)
{
    struct qedb *b = calloc(1, sizeof(*b));
    b->size = size;
    b->cs = cs;
    b->ts = ts;
    b->nelems = (uint64_t)cs * ts / 8;
    b->exp = calloc(1, (size_t)size + 1);
    struct unit_buf *f = &b->f;
    unit_grow(f, cs);
    unit_put_le(f, 0, 0x00444551, 4);
    unit_put_le(f, 4, cs, 4);
    unit_put_le(f, 8, ts, 4);
    unit_put_le(f, 12, 1, 4);
    unit_put_le(f, 48, size, 8);
    b->l1_off = unit_append(f, (uint64_t)cs * ts, cs);
    unit_put_le(f, 40, b->l1_off, 8);
    return b;
}

static void qed_free(struct qedb *b)
{
    free(b->f.d);
    free(b->exp);
    free(b);
}

static uint64_t l2_slot(struct qedb *b, uint64_t g)
{
    uint64_t span = b->nelems * b->cs;
    uint64_t l1e = b->l1_off + g / span * 8;
    uint64_t l2 = get_le64(b->f.d + l1e);
    if (!l2) {
        l2 = unit_append(&b->f, b->cs * b->ts, b->cs);
        unit_put_le(&b->f, l1e, l2, 8);
    }
    return l2 + (g / b->cs % b->nelems) * 8;
}

static void qed_write(struct qedb *b, uint64_t off, uint64_t len, uint8_t tag)
{
    for (uint64_t g = off; g < off + len; g++) {
        uint64_t slot = l2_slot(b, g);
        uint64_t c = get_le64(b->f.d + slot);
        if (c <= 1) {   /* a new cluster hides the backing file: zeros */
            c = unit_append(&b->f, b->cs, b->cs);
            unit_put_le(&b->f, slot, c, 8);
            uint64_t start = g / b->cs * b->cs;
            memset(b->exp + start, 0, (size_t)VMFS_MIN(b->cs, b->size - start));
        }
        b->f.d[c + g % b->cs] = unit_pat(tag, g);
        b->exp[g] = unit_pat(tag, g);
    }
}

/* Marks whole clusters of [off, off+len) as zero clusters. */
static void qed_zero(struct qedb *b, uint64_t off, uint64_t len)
{
    for (uint64_t g = off; g < off + len; g += b->cs) {
        unit_put_le(&b->f, l2_slot(b, g), 1, 8);
        memset(b->exp + g, 0, (size_t)b->cs);
    }
}

static void qed_backing(struct qedb *b, const char *name, bool raw)
{
    unit_put_le(&b->f, 16, 0x01 | (raw ? 0x04 : 0), 8);
    unit_put_le(&b->f, 56, 64, 4);
    unit_put_le(&b->f, 60, strlen(name), 4);
    unit_put_bytes(&b->f, 64, name, strlen(name));
}

static char *qed_file(struct qedb *b, const char *name)
{
    return write_file(name, b->f.d, b->f.len);
}

/* ------------------------------------------------------------------------
 * QED tests
 * ---------------------------------------------------------------------- */

START_TEST(qed_basic)
{
    /* One-cluster tables (qemu 7.2 cannot open those) and four. */
    for (uint32_t ts = 1; ts <= 4; ts *= 4) {
        struct qedb *b = qed_new(6 << 20, 4096, ts);
        qed_write(b, 0, 10000, 1);             /* three contiguous clusters */
        qed_write(b, 3 << 20, 5, 2);
        qed_write(b, (2 << 20) + 4000, 300, 3);
        qed_zero(b, 5 << 20, 8192);
        qed_write(b, b->size - 1, 1, 4);
        char *p = qed_file(b, "basic.qed");
        struct vimage *img = open_img(p);
        ck_assert_ptr_nonnull(img);
        ck_assert_str_eq(vimage_format(img), "qed");
        ck_assert_uint_eq(unit_nproblems(img), 0);
        unit_check_disk(img, b->exp, b->size);
        unit_extent_at(img, 0, true, 12288);
        unit_run_at(img, 100, 20000, VRUN_DATA, 12288 - 100);
        unit_run_at(img, 5 << 20, 20000, VRUN_ZERO, 8192);
        vimage_unref(img);
        qed_free(b);
        free(p);
    }
}
END_TEST

/* Alike clusters in a row are one run, across the slices of a table:
 * unallocated, zero, data back to back in the file.  Data out of order,
 * or whose next cluster would lie past the end of the file, ends a run. */
START_TEST(qed_runs)
{
    struct qedb *b = qed_new(16 << 20, 4096, 4);
    uint64_t cs = 4096;
    qed_write(b, 0, 3 * cs, 1);                /* clusters 0-2, in a row */
    qed_write(b, 701 * cs, 10, 2);             /* 701 before 700 */
    qed_write(b, 700 * cs, 10, 3);
    qed_zero(b, 900 * cs, 4 * cs);
    qed_write(b, 1000 * cs, 2 * cs, 4);        /* 1000-1001, the last clusters of the file */
    char *p = qed_file(b, "runs.qed");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_disk(img, b->exp, b->size);
    unit_run_at(img, 0, b->size, VRUN_DATA, 3 * cs);
    unit_run_at(img, 3 * cs, b->size, VRUN_BACKING, 697 * cs);
    unit_run_at(img, 700 * cs, b->size, VRUN_DATA, cs);
    unit_run_at(img, 701 * cs, b->size, VRUN_DATA, cs);
    unit_run_at(img, 702 * cs, b->size, VRUN_BACKING, 198 * cs);
    unit_run_at(img, 900 * cs, b->size, VRUN_ZERO, 4 * cs);
    unit_run_at(img, 1000 * cs, b->size, VRUN_DATA, 2 * cs);
    unit_run_at(img, 1002 * cs, 8 * cs, VRUN_BACKING, 8 * cs);
    vimage_unref(img);
    free(p);

    /* Cluster 1002 as if it followed 1001 in the file, which ends first. */
    uint64_t last = get_le64(b->f.d + l2_slot(b, 1001 * cs));
    unit_put_le(&b->f, l2_slot(b, 1002 * cs), last + cs, 8);
    p = qed_file(b, "runs.qed");
    img = open_img(p);
    unit_run_at(img, 1000 * cs, b->size, VRUN_DATA, 2 * cs);
    unit_run_at(img, 1002 * cs, b->size, VRUN_ERROR, cs);
    ck_assert_int_eq(unit_read_err(img, 1002 * cs, 512), -EIO);
    unit_check_range(img, b->exp, 990 * cs, 12 * cs);
    ck_assert(unit_has_problem(img, "is not a cluster inside the file"));
    vimage_unref(img);
    qed_free(b);
    free(p);
}
END_TEST

START_TEST(qed_backing_raw_and_probed)
{
    /* A raw base (the no-probe bit), then a QED base found by probing; a
     * zero cluster hides the base. */
    uint64_t size = 2 << 20;
    uint8_t *base = malloc((size_t)size);
    for (uint64_t i = 0; i < size; i++)
        base[i] = unit_pat(0x55, i);
    char *pb = write_file("base.raw", base, (size_t)size - 4096);   /* shorter: zeros past */
    memset(base + size - 4096, 0, 4096);
    struct qedb *mid = qed_new(size, 4096, 4);
    qed_backing(mid, "base.raw", true);
    memcpy(mid->exp, base, (size_t)size);
    qed_write(mid, 100000, 5000, 1);
    qed_zero(mid, 1 << 20, 4096);
    char *pm = qed_file(mid, "mid.qed");
    struct qedb *top = qed_new(size, 8192, 2);
    qed_backing(top, "mid.qed", false);
    memcpy(top->exp, mid->exp, (size_t)size);
    qed_write(top, 103000, 10, 2);
    char *pt = qed_file(top, "top.qed");
    struct vimage *img = open_img(pt);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_uint_eq(img->nlayers, 3);
    ck_assert_str_eq(img->layers[1]->drv->name, "qed");
    ck_assert_str_eq(img->layers[2]->drv->name, "raw");
    unit_check_disk(img, top->exp, size);
    vimage_unref(img);
    qed_free(mid);
    qed_free(top);
    free(base);
    free(pb);
    free(pm);
    free(pt);
}
END_TEST

START_TEST(qed_over_vhd)
{
    /* Mixed chain: a QED over a dynamic VHD. */
    struct vhdb *v = vhd_new(VHD_DYNAMIC, 20, 16, 63, 0, "qemu", 64 << 10);
    vhd_write(v, 0, v->size, 0x61);
    vhd_finish(v);
    char *pv = vhd_file(v, "under.vhd");
    struct qedb *q = qed_new(v->size + (1 << 20), 65536, 4);
    qed_backing(q, "under.vhd", false);
    memcpy(q->exp, v->exp, (size_t)v->size);
    qed_write(q, 77777, 3333, 0x62);
    qed_write(q, v->size + 1000, 10, 0x63);
    char *pq = qed_file(q, "over.qed");
    struct vimage *img = open_img(pq);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_str_eq(img->layers[1]->drv->name, "vpc");
    unit_check_disk(img, q->exp, q->size);
    vimage_unref(img);
    vhd_free(v);
    qed_free(q);
    free(pv);
    free(pq);
}
END_TEST

START_TEST(qed_need_check_and_missing_backing)
{
    struct qedb *b = qed_new(1 << 20, 4096, 4);
    qed_backing(b, "nowhere.raw", true);
    unit_put_le(&b->f, 16, 0x01 | 0x02 | 0x04, 8);
    qed_write(b, 0, 4096, 1);
    char *p = qed_file(b, "needcheck.qed");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "nowhere.raw"));
    unit_check_range(img, b->exp, 0, 4096);
    ck_assert_int_eq(unit_read_err(img, 4096, 512), -EIO);
    unit_check_report(img, false, "\"need_check\": true");
    vimage_unref(img);
    qed_free(b);
    free(p);
}
END_TEST

START_TEST(qed_backing_loop)
{
    struct qedb *b = qed_new(1 << 20, 4096, 4);
    qed_backing(b, "self.qed", false);
    qed_write(b, 0, 4096, 1);
    char *p = qed_file(b, "self.qed");
    struct vimage *img = open_img(p);
    ck_assert(unit_has_problem(img, "loop"));
    unit_check_range(img, b->exp, 0, 4096);
    ck_assert_int_eq(unit_read_err(img, 8192, 512), -EIO);
    vimage_unref(img);
    qed_free(b);
    free(p);
}
END_TEST

START_TEST(qed_bad_headers)
{
    static const struct bad_field cases[] = {
        {16, 0x10, 8, "unsupported feature"},
        {4, 3000, 4, "cluster size 3000"},
        {4, 1u << 30, 4, "cluster size"},
        {8, 3, 4, "table size 3"},
        {8, 32, 4, "table size 32"},
        {12, 0, 4, "header size"},
        {12, 1u << 30, 4, "header size"},
        {48, 1000, 8, "not a multiple of 512"},
        {48, 1ull << 62, 8, "absurd"},
        {40, 4097, 8, "L1 table offset"},
        {40, 0, 8, "L1 table offset"},
        {60, 8000, 4, "backing file name"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(cases); i++) {
        struct qedb *b = qed_new(1 << 20, 4096, 4);
        qed_backing(b, "x.raw", true);
        qed_write(b, 0, 100, 1);
        unit_put_le(&b->f, cases[i].off, cases[i].val, cases[i].n);
        char *p = qed_file(b, "bad.qed");
        expect_refused(p, &cases[i]);
        qed_free(b);
        free(p);
    }
    struct qedb *b = qed_new(1 << 20, 4096, 4);
    unit_put_le(&b->f, 0, 0x00444552, 4);
    char *p = qed_file(b, "magic.bin");
    ck_assert_ptr_null(open_img(p));
    char *p2 = write_file("short.qed", "QED\0", 4);
    struct vimage *img = open_img(p2);
    unit_check_refused(img, "too short");
    vimage_unref(img);
    qed_free(b);
    free(p);
    free(p2);
}
END_TEST

START_TEST(qed_table_damage)
{
    struct qedb *b = qed_new(8 << 20, 4096, 1);   /* an L2 table spans 2 MiB */
    qed_write(b, 0, 8192, 1);
    qed_write(b, 2 << 20, 8192, 2);
    qed_write(b, 4 << 20, 8192, 3);
    qed_write(b, 6 << 20, 8192, 4);
    /* L2 table of the second span past the end; a data cluster past the
     * end; an unaligned data cluster. */
    unit_put_le(&b->f, b->l1_off + 8, 1ull << 40, 8);
    uint64_t slot = l2_slot(b, 4 << 20);
    unit_put_le(&b->f, slot, 1ull << 40, 8);
    unit_put_le(&b->f, l2_slot(b, 6 << 20), 4097, 8);
    char *p = qed_file(b, "tables.qed");
    struct vimage *img = open_img(p);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    unit_check_range(img, b->exp, 0, 8192);
    ck_assert_int_eq(unit_read_err(img, 2 << 20, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, (3 << 20) + 5, 1), -EIO);   /* the whole span */
    ck_assert_int_eq(unit_read_err(img, 4 << 20, 512), -EIO);
    unit_check_range(img, b->exp, (4 << 20) + 4096, 4096);
    ck_assert_int_eq(unit_read_err(img, 6 << 20, 4096), -EIO);
    unit_check_range(img, b->exp, (6 << 20) + 4096, 4096);
    ck_assert(unit_has_problem(img, "L1 entry 1"));
    ck_assert(unit_has_problem(img, "data cluster offset"));
    vimage_unref(img);
    /* The L1 table cut off by the end of the file. */
    char *p2 = write_file("cut.qed", b->f.d, 4096 + 8);
    img = open_img(p2);
    ck_assert(unit_has_problem(img, "L1 table at"));
    ck_assert_int_eq(unit_read_err(img, 2 << 20, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);     /* its L2 table is gone too */
    vimage_unref(img);
    qed_free(b);
    free(p);
    free(p2);
}
END_TEST

START_TEST(qed_huge_tables)
{
    /* 64 MiB clusters, 16-cluster tables: a 1 GiB L1 table the small file
     * cannot hold.  Nothing that size is read or allocated. */
    struct unit_buf f = {0};
    unit_grow(&f, 8192);
    unit_put_le(&f, 0, 0x00444551, 4);
    unit_put_le(&f, 4, 64u << 20, 4);
    unit_put_le(&f, 8, 16, 4);
    unit_put_le(&f, 12, 1, 4);
    unit_put_le(&f, 40, 64u << 20, 8);
    unit_put_le(&f, 48, 1ull << 40, 8);
    char *p = write_file("huge.qed", f.d, f.len);
    struct vimage *img = open_img(p);
    ck_assert(!img->top_failed);
    ck_assert_uint_eq(img->size, 1ull << 40);
    ck_assert(unit_has_problem(img, "past the end of the file"));
    ck_assert_int_eq(unit_read_err(img, 0, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, (1ull << 40) - 512, 512), -EIO);
    vimage_unref(img);
    free(f.d);
    free(p);
}
END_TEST

START_TEST(qed_truncated)
{
    struct qedb *b = qed_new(1 << 20, 4096, 4);
    qed_write(b, 0, 64 << 10, 1);
    size_t cut = b->f.len - (20 << 10) - 100;   /* mid-cluster */
    char *p = write_file("trunc.qed", b->f.d, cut);
    struct vimage *img = open_img(p);
    unit_check_range(img, b->exp, 0, 40 << 10);
    ck_assert_int_eq(unit_read_err(img, (64 << 10) - 512, 512), -EIO);
    ck_assert_int_eq(unit_read_err(img, (44 << 10), 4096), -EIO);
    unit_check_range(img, b->exp, 128 << 10, 4096);    /* unallocated */
    vimage_unref(img);
    qed_free(b);
    free(p);
}
END_TEST

/* ------------------------------------------------------------------------ */

static void add(Suite *s, const char *name, const TTest *t)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, t);
    suite_add_tcase(s, tc);
}

int main(void)
{
    Suite *s = suite_create("vhd_vdi_qed");
    add(s, "vhd_fixed_chs", vhd_fixed_chs);
    add(s, "vhd_fixed_current_size", vhd_fixed_current_size);
    add(s, "vhd_fixed_max_geometry", vhd_fixed_max_geometry);
    add(s, "vhd_fixed_old_footer", vhd_fixed_old_footer);
    add(s, "vhd_fixed_truncated", vhd_fixed_truncated);
    add(s, "vhd_dynamic", vhd_dynamic);
    add(s, "vhd_dynamic_small_blocks", vhd_dynamic_small_blocks);
    add(s, "vhd_diff_w2ru", vhd_diff_w2ru);
    add(s, "vhd_diff_parent_candidates", vhd_diff_parent_candidates);
    add(s, "vhd_diff_chain_of_three", vhd_diff_chain_of_three);
    add(s, "vhd_diff_missing_parent", vhd_diff_missing_parent);
    add(s, "vhd_diff_no_parent_named", vhd_diff_no_parent_named);
    add(s, "vhd_diff_loop", vhd_diff_loop);
    add(s, "vhd_footer_damaged_uses_copy", vhd_footer_damaged_uses_copy);
    add(s, "vhd_footer_both_bad_checksums", vhd_footer_both_bad_checksums);
    add(s, "vhd_no_footer", vhd_no_footer);
    add(s, "vhd_bad_fields", vhd_bad_fields);
    add(s, "vhd_absurd_size", vhd_absurd_size);
    add(s, "vhd_dyn_header_checksum", vhd_dyn_header_checksum);
    add(s, "vhd_bat_damage", vhd_bat_damage);
    add(s, "vhd_truncated_dynamic", vhd_truncated_dynamic);
    add(s, "vhd_probe_fixed_by_footer", vhd_probe_fixed_by_footer);
    add(s, "vhd_huge_counts", vhd_huge_counts);
    add(s, "vhd_parallel_readers", vhd_parallel_readers);
    add(s, "vdi_dynamic", vdi_dynamic);
    add(s, "vdi_static_one_run", vdi_static_one_run);
    add(s, "vdi_block_extra_and_odd_size", vdi_block_extra_and_odd_size);
    add(s, "vdi_bad_headers", vdi_bad_headers);
    add(s, "vdi_map_damage", vdi_map_damage);
    add(s, "vdi_huge_counts", vdi_huge_counts);
    add(s, "vdi_differencing", vdi_differencing);
    add(s, "qed_basic", qed_basic);
    add(s, "qed_runs", qed_runs);
    add(s, "qed_backing_raw_and_probed", qed_backing_raw_and_probed);
    add(s, "qed_over_vhd", qed_over_vhd);
    add(s, "qed_need_check_and_missing_backing", qed_need_check_and_missing_backing);
    add(s, "qed_backing_loop", qed_backing_loop);
    add(s, "qed_bad_headers", qed_bad_headers);
    add(s, "qed_table_damage", qed_table_damage);
    add(s, "qed_huge_tables", qed_huge_tables);
    add(s, "qed_truncated", qed_truncated);
    return unit_run(s);
}
