/* vmfs — the VHD driver (qemu calls the format "vpc"): fixed, dynamic and
 * differencing disks.
 *
 * A VHD ends in a 512-byte footer.  A fixed disk is the raw disk followed by
 * that footer; dynamic and differencing disks start with a copy of the
 * footer, then a dynamic header, the block allocation table (BAT) and the
 * blocks, each a sector bitmap followed by the block's data.  A differencing
 * disk takes the sectors its bitmaps do not mark from its parent, which it
 * names through parent locators.  docs/formats/vhd.md describes the layout
 * and every choice made here (the size rule, the footer copy, checksums).
 *
 * Threads: open and close run alone.  map, map_alloc and report run on many
 * threads at once; they read state fixed at open, BAT slices and sector
 * bitmaps come from the shared cache, and the list of damage already
 * reported has its own lock (damage.h, taken on error paths). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fmt/damage.h"
#include "fmt/table.h"
#include "vmfs/fmt.h"
#include "vmfs/report.h"

#define VHD_SECTOR 512u
#define VHD_FOOTER_LEN 512u
#define VHD_OLD_FOOTER_LEN 511u            /* Virtual PC before 2004 */
#define VHD_DYN_LEN 1024u
#define VHD_TYPE_FIXED 2u
#define VHD_TYPE_DYNAMIC 3u
#define VHD_TYPE_DIFF 4u
#define VHD_BAT_UNUSED 0xffffffffu
#define VHD_MAX_GEOMETRY (65535ull * 16 * 255)  /* sectors: "use current size" */
#define VHD_MAX_SIZE (64ull << 40)          /* larger virtual sizes are refused */
#define VHD_MAX_BLOCK (1u << 31)
#define VHD_ENTRY 4u                        /* bytes per BAT entry */
#define VHD_NLOC 8u
#define VHD_MAX_LOCATOR 65536u              /* bytes of one parent locator */
#define VHD_EPOCH 946684800                 /* 2000-01-01 00:00:00 UTC */

/* Cache keys: BAT slices and sector bitmaps by file offset. */
#define VHD_KEY_BAT (1ull << 62)
#define VHD_KEY_BITMAP (2ull << 62)

/* Platform codes of parent locators. */
#define VHD_PLAT_W2RU 0x57327275u   /* "W2ru": relative UTF-16LE Windows path */
#define VHD_PLAT_W2KU 0x57326b75u   /* "W2ku": absolute UTF-16LE Windows path */
#define VHD_PLAT_WI2R 0x57693272u   /* "Wi2r": relative path, deprecated */
#define VHD_PLAT_WI2K 0x5769326bu   /* "Wi2k": absolute path, deprecated */
#define VHD_PLAT_MACX 0x4d616358u   /* "MacX": UTF-8 file URL */
#define VHD_PLAT_MAC 0x4d616320u    /* "Mac ": Mac OS alias blob */

enum footer_src { FOOTER_END, FOOTER_END_OLD, FOOTER_HEAD };

struct vhd_footer {
    uint32_t features, version;
    uint64_t data_off;
    uint32_t timestamp;
    char app[4];
    uint32_t app_version;
    char os[4];
    uint64_t orig_size, cur_size;
    uint16_t cyls;
    uint8_t heads, spt;
    uint32_t type;
    uint32_t checksum, computed;
    uint8_t uuid[16];
    uint8_t saved_state;
};

struct vhd_loc {
    uint32_t code, space, len;
    uint64_t off;
    char *path;        /* decoded, or NULL */
};

struct vhd {
    struct vlayer *l;
    struct vhd_footer f;
    enum footer_src fsrc;
    bool footer_sum_ok;
    bool size_from_chs;
    uint64_t data_end;          /* fixed: end of the data before the footer */

    /* Dynamic and differencing disks. */
    uint64_t dyn_off, bat_off;
    uint32_t dyn_version, max_entries, block_size, bitmap_size;
    unsigned block_bits;
    bool dyn_sum_ok;
    struct vtab bat;            /* the BAT; count: entries the virtual size needs
                                   that lie inside the file */
    uint8_t parent_uuid[16];
    uint32_t parent_ts;
    char *parent_name;
    struct vhd_loc loc[VHD_NLOC];
    bool no_parent;             /* differencing, but no parent is named */

    struct vdamage damage;   /* problems met while mapping, each reported once */
};

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

/* The one's complement of the byte sum, the checksum field (4 bytes at
 * skip) counting as zeros. */
static uint32_t vhd_checksum(const uint8_t *b, size_t len, size_t skip)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < skip || i >= skip + 4)
            sum += b[i];
    return ~sum;
}

static void put_utf8(char *out, size_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        out[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*o)++] = (char)(0xc0 | cp >> 6);
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xe0 | cp >> 12);
        out[(*o)++] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*o)++] = (char)(0xf0 | cp >> 18);
        out[(*o)++] = (char)(0x80 | (cp >> 12 & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    }
}

/* UTF-16 (big- or little-endian) to UTF-8, up to the first NUL; unpaired
 * surrogates become U+FFFD.  NULL when the string is empty. */
static char *utf16_to_utf8(const uint8_t *p, size_t nbytes, bool be)
{
    size_t n = nbytes / 2, o = 0;
    char *out = xmalloc(n * 3 + 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = be ? get_be16(p + 2 * i) : get_le16(p + 2 * i);
        if (u == 0)
            break;
        if (u >= 0xd800 && u < 0xdc00 && i + 1 < n) {
            uint32_t lo = be ? get_be16(p + 2 * i + 2) : get_le16(p + 2 * i + 2);
            if (lo >= 0xdc00 && lo < 0xe000) {
                put_utf8(out, &o, 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00));
                i++;
                continue;
            }
        }
        put_utf8(out, &o, u >= 0xd800 && u < 0xe000 ? 0xfffd : u);
    }
    out[o] = 0;
    if (o == 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* Bytes up to the first NUL as a string; NULL when empty. */
static char *bytes_to_str(const uint8_t *p, size_t n)
{
    const uint8_t *nul = memchr(p, 0, n);
    size_t len = nul ? (size_t)(nul - p) : n;
    if (len == 0)
        return NULL;
    char *s = xmalloc(len + 1);
    memcpy(s, p, len);
    s[len] = 0;
    return s;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A file URL ("file://host/path%20x") as a path; other text unchanged. */
static char *file_url_to_path(const char *url)
{
    const char *p = url;
    if (!strncmp(p, "file://", 7)) {
        p += 7;
        const char *slash = strchr(p, '/');
        p = slash ? slash : p + strlen(p);
    }
    char *out = xmalloc(strlen(p) + 1);
    size_t o = 0;
    for (; *p; p++) {
        int hi, lo;
        if (p[0] == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0 &&
            (hi || lo)) {
            out[o++] = (char)(hi << 4 | lo);
            p += 2;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = 0;
    return out;
}

/* A relative Windows path as a POSIX one: "\\" becomes "/", a leading
 * ".\\" goes. */
static void windows_relative(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\\')
            *p = '/';
    size_t skip = 0;
    while (s[skip] == '.' && s[skip + 1] == '/')
        skip += 2;
    memmove(s, s + skip, strlen(s + skip) + 1);
}

static void uuid_text(const uint8_t u[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
             u[12], u[13], u[14], u[15]);
}

/* Four bytes of a code ("W2ru", "vpc ") as printable text. */
static void code_text(const char c[4], char out[5])
{
    for (int i = 0; i < 4; i++)
        out[i] = c[i] >= 0x20 && c[i] < 0x7f ? c[i] : '.';
    out[4] = 0;
    for (int i = 3; i >= 0 && (out[i] == ' ' || out[i] == '.'); i--)
        out[i] = 0;
}

/* ------------------------------------------------------------------------
 * The footer
 * ---------------------------------------------------------------------- */

static void parse_footer(const uint8_t *b, size_t len, struct vhd_footer *f)
{
    f->features = get_be32(b + 8);
    f->version = get_be32(b + 12);
    f->data_off = get_be64(b + 16);
    f->timestamp = get_be32(b + 24);
    memcpy(f->app, b + 28, 4);
    f->app_version = get_be32(b + 32);
    memcpy(f->os, b + 36, 4);
    f->orig_size = get_be64(b + 40);
    f->cur_size = get_be64(b + 48);
    f->cyls = get_be16(b + 56);
    f->heads = b[58];
    f->spt = b[59];
    f->type = get_be32(b + 60);
    f->checksum = get_be32(b + 64);
    f->computed = vhd_checksum(b, len, 64);
    memcpy(f->uuid, b + 68, 16);
    f->saved_state = b[84];
}

/* One place a footer may be: its bytes, and whether they look right. */
struct fcand {
    uint8_t b[VHD_FOOTER_LEN];
    size_t len;
    bool present;      /* inside the file and read */
    bool cookie;
    bool sum_ok;
};

static int read_cand(struct vlayer *l, uint64_t off, size_t len, struct fcand *c)
{
    memset(c, 0, sizeof(*c));
    c->len = len;
    if (!range_in(off, len, l->file->size))
        return 0;
    int r = vsrc_pread(l->file, c->b, len, off);
    if (r < 0)
        return r;
    c->present = true;
    c->cookie = !memcmp(c->b, "conectix", 8);
    c->sum_ok = c->cookie && get_be32(c->b + 64) == vhd_checksum(c->b, len, 64);
    return 0;
}

static const char *cand_damage(const struct fcand *c)
{
    if (!c->present)
        return "is missing";
    return c->cookie ? "has a wrong checksum" : "has no \"conectix\" cookie";
}

/* Uses a footer that fails its checksum, saying so. */
static void use_unverified(struct vhd *v, const struct fcand *c, enum footer_src src)
{
    struct vhd_footer f;
    parse_footer(c->b, c->len, &f);
    vlayer_problem(v->l, "the footer %s has checksum 0x%08" PRIx32 ", computed 0x%08" PRIx32
                   ", and no intact copy exists: its fields are used unverified",
                   src == FOOTER_HEAD ? "copy at offset 0" : "at the end of the file",
                   f.checksum, f.computed);
    v->fsrc = src;
    v->f = f;
}

/* Picks the footer: the one at the end of the file when intact (512 bytes,
 * or 511 as Virtual PC once wrote), else the copy at offset 0. */
static int choose_footer(struct vhd *v)
{
    struct vlayer *l = v->l;
    uint64_t fsize = l->file->size;
    struct fcand end, old, head;
    if (fsize < VHD_OLD_FOOTER_LEN) {
        vlayer_problem(l, "the file is %" PRIu64 " bytes, too short for a VHD footer (512 bytes)",
                       fsize);
        return -EINVAL;
    }
    int r = read_cand(l, fsize - VHD_OLD_FOOTER_LEN, VHD_OLD_FOOTER_LEN, &old);
    if (r == 0 && fsize >= VHD_FOOTER_LEN)
        r = read_cand(l, fsize - VHD_FOOTER_LEN, VHD_FOOTER_LEN, &end);
    else
        memset(&end, 0, sizeof(end));
    if (r == 0)
        r = read_cand(l, 0, VHD_FOOTER_LEN, &head);
    if (r < 0) {
        vlayer_problem(l, "cannot read the footer: %s", strerror(-r));
        return r;
    }
    v->footer_sum_ok = true;
    if (end.sum_ok || (old.sum_ok && !end.cookie)) {
        const struct fcand *c = end.sum_ok ? &end : &old;
        v->fsrc = end.sum_ok ? FOOTER_END : FOOTER_END_OLD;
        parse_footer(c->b, c->len, &v->f);
        return 0;
    }
    if (head.sum_ok) {
        vlayer_problem(l, "the footer at the end of the file %s (the file may be truncated): "
                       "using its copy at offset 0", cand_damage(&end));
        v->fsrc = FOOTER_HEAD;
        parse_footer(head.b, head.len, &v->f);
        return 0;
    }
    v->footer_sum_ok = false;
    if (end.cookie || head.cookie) {
        use_unverified(v, end.cookie ? &end : &head, end.cookie ? FOOTER_END : FOOTER_HEAD);
        return 0;
    }
    vlayer_problem(l, "no VHD footer: neither the end of the file nor offset 0 holds the "
                   "\"conectix\" cookie");
    return -EINVAL;
}

/* qemu 7.2 sizes a disk by its CHS geometry unless the creator is one of
 * the applications known to use the current size field. */
static bool creator_uses_current_size(const char app[4])
{
    static const char apps[5][4] = {"win ", "qem2", "d2v ", "CTXS", {'t', 'a', 'p', 0}};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(apps); i++)
        if (!memcmp(app, apps[i], 4))
            return true;
    return false;
}

static int set_size(struct vhd *v)
{
    const struct vhd_footer *f = &v->f;
    uint64_t chs = (uint64_t)f->cyls * f->heads * f->spt;
    v->size_from_chs = !creator_uses_current_size(f->app) && chs != VHD_MAX_GEOMETRY;
    uint64_t size = v->size_from_chs ? chs * VHD_SECTOR : f->cur_size / VHD_SECTOR * VHD_SECTOR;
    if (size > VHD_MAX_SIZE) {
        vlayer_problem(v->l, "virtual size %" PRIu64 " bytes is absurd (the format holds at most "
                       "2040 GiB; vmfs accepts up to 64 TiB)", size);
        return -EINVAL;
    }
    v->l->size = size;
    return 0;
}

/* ------------------------------------------------------------------------
 * The dynamic header and parent locators
 * ---------------------------------------------------------------------- */

static const char *plat_name(uint32_t code)
{
    switch (code) {
    case VHD_PLAT_W2RU: return "W2ru";
    case VHD_PLAT_W2KU: return "W2ku";
    case VHD_PLAT_WI2R: return "Wi2r";
    case VHD_PLAT_WI2K: return "Wi2k";
    case VHD_PLAT_MACX: return "MacX";
    case VHD_PLAT_MAC: return "Mac";
    default: return NULL;
    }
}

/* Reads and decodes one parent locator; damage is reported and leaves
 * the locator without a path. */
static void read_locator(struct vhd *v, unsigned i, const uint8_t *e)
{
    struct vhd_loc *loc = &v->loc[i];
    loc->code = get_be32(e);
    loc->space = get_be32(e + 4);
    loc->len = get_be32(e + 8);
    loc->off = get_be64(e + 16);
    if (!loc->code || loc->code == VHD_PLAT_MAC || !plat_name(loc->code) || !loc->len)
        return;
    if (loc->len > VHD_MAX_LOCATOR || !range_in(loc->off, loc->len, v->l->file->size)) {
        vlayer_problem(v->l, "parent locator %u (%s, %" PRIu32 " bytes at 0x%" PRIx64
                       ") lies past the end of the file or is too long", i,
                       plat_name(loc->code), loc->len, loc->off);
        return;
    }
    CLEANUP_FREE uint8_t *b = xmalloc(loc->len);
    if (vsrc_pread(v->l->file, b, loc->len, loc->off) < 0) {
        vlayer_problem(v->l, "cannot read parent locator %u", i);
        return;
    }
    if (loc->code == VHD_PLAT_W2RU || loc->code == VHD_PLAT_W2KU) {
        loc->path = utf16_to_utf8(b, loc->len, false);
    } else if (loc->code == VHD_PLAT_MACX) {
        CLEANUP_FREE char *url = bytes_to_str(b, loc->len);
        loc->path = url ? file_url_to_path(url) : NULL;
    } else {
        loc->path = bytes_to_str(b, loc->len);
    }
}

static const char *loc_path(const struct vhd *v, uint32_t code)
{
    for (unsigned i = 0; i < VHD_NLOC; i++)
        if (v->loc[i].code == code && v->loc[i].path)
            return v->loc[i].path;
    return NULL;
}

/* Names the parent from the locators, relative paths first, then absolute
 * ones, then the parent name of the dynamic header. */
static void set_parent(struct vhd *v)
{
    static const uint32_t order[] = {VHD_PLAT_W2RU, VHD_PLAT_WI2R, VHD_PLAT_MACX,
                                     VHD_PLAT_W2KU, VHD_PLAT_WI2K};
    char *names[8];
    size_t n = 0;
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(order); i++) {
        const char *p = loc_path(v, order[i]);
        if (!p)
            continue;
        names[n] = xstrdup(p);
        if (order[i] == VHD_PLAT_W2RU || order[i] == VHD_PLAT_WI2R)
            windows_relative(names[n]);
        n++;
    }
    if (v->parent_name)
        names[n++] = xstrdup(v->parent_name);
    const char *mac = loc_path(v, VHD_PLAT_MACX);
    if (mac && strrchr(mac, '/') && strrchr(mac, '/')[1])
        names[n++] = xstrdup(strrchr(mac, '/') + 1);
    if (n == 0) {
        v->no_parent = true;
        vlayer_problem(v->l, "differencing disk names no parent (no parent locator and no "
                       "parent name): sectors it does not hold cannot be read");
        return;
    }
    vlayer_set_backing_candidates(v->l, (const char *const *)names, n);
    v->l->backing_fmt = xstrdup("vpc");
    for (size_t i = 0; i < n; i++)
        free(names[i]);
}

static int check_block_size(struct vhd *v, uint32_t bs)
{
    if (bs < VHD_SECTOR || !is_pow2_u64(bs)) {
        vlayer_problem(v->l, "block size %" PRIu32 " is not a power of two of at least 512 bytes",
                       bs);
        return -EINVAL;
    }
    v->block_size = bs;
    v->block_bits = (unsigned)__builtin_ctz(bs);
    /* One bit per sector, padded to whole sectors. */
    uint32_t bytes = (bs / VHD_SECTOR + 7) / 8;
    v->bitmap_size = (bytes + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
    return 0;
}

/* Works out which BAT entries the disk needs and which the file holds. */
static void check_bat(struct vhd *v)
{
    struct vlayer *l = v->l;
    uint64_t used = vtab_used(l, "block table", v->max_entries, v->block_size, l->size);
    /* 32-bit big-endian sector numbers. */
    v->bat = (struct vtab){
        .off = v->bat_off, .width = VHD_ENTRY, .order = VTAB_BE, .key_tag = VHD_KEY_BAT,
        .count = vtab_in_file(l, "block table", v->bat_off, used, VHD_ENTRY)};
}

static int read_dyn_header(struct vhd *v, uint8_t *b)
{
    struct vlayer *l = v->l;
    v->dyn_off = v->f.data_off;
    if (!range_in(v->dyn_off, VHD_DYN_LEN, l->file->size)) {
        vlayer_problem(l, "the dynamic disk header offset 0x%" PRIx64
                       " lies past the end of the file", v->dyn_off);
        return -EINVAL;
    }
    int r = vsrc_pread(l->file, b, VHD_DYN_LEN, v->dyn_off);
    if (r < 0) {
        vlayer_problem(l, "cannot read the dynamic disk header: %s", strerror(-r));
        return r;
    }
    if (memcmp(b, "cxsparse", 8)) {
        vlayer_problem(l, "no dynamic disk header at 0x%" PRIx64 " (no \"cxsparse\" cookie)",
                       v->dyn_off);
        return -EINVAL;
    }
    uint32_t stored = get_be32(b + 36), computed = vhd_checksum(b, VHD_DYN_LEN, 36);
    v->dyn_sum_ok = stored == computed;
    if (!v->dyn_sum_ok)
        vlayer_problem(l, "the dynamic disk header has checksum 0x%08" PRIx32 ", computed 0x%08"
                       PRIx32 ": its fields are used unverified", stored, computed);
    return 0;
}

static int open_dynamic(struct vhd *v)
{
    uint8_t b[VHD_DYN_LEN];
    int r = read_dyn_header(v, b);
    if (r < 0)
        return r;
    v->bat_off = get_be64(b + 16);
    v->dyn_version = get_be32(b + 24);
    v->max_entries = get_be32(b + 28);
    r = check_block_size(v, get_be32(b + 32));
    if (r < 0)
        return r;
    check_bat(v);
    if (v->f.type != VHD_TYPE_DIFF)
        return 0;
    memcpy(v->parent_uuid, b + 40, 16);
    v->parent_ts = get_be32(b + 56);
    v->parent_name = utf16_to_utf8(b + 64, 512, true);
    for (unsigned i = 0; i < VHD_NLOC; i++)
        read_locator(v, i, b + 576 + 24 * i);
    set_parent(v);
    return 0;
}

/* ------------------------------------------------------------------------
 * Opening
 * ---------------------------------------------------------------------- */

static void vhd_close(struct vlayer *l)
{
    struct vhd *v = l->priv;
    if (!v)
        return;
    free(v->parent_name);
    for (unsigned i = 0; i < VHD_NLOC; i++)
        free(v->loc[i].path);
    vdamage_destroy(&v->damage);
    free(v);
    l->priv = NULL;
}

static int open_fixed(struct vhd *v)
{
    uint64_t fsize = v->l->file->size;
    uint64_t flen = v->fsrc == FOOTER_END_OLD ? VHD_OLD_FOOTER_LEN : VHD_FOOTER_LEN;
    v->data_end = fsize - flen;
    if (v->l->size > v->data_end)
        vlayer_problem(v->l, "the disk is %" PRIu64 " bytes but the file holds only %" PRIu64
                       " bytes before its footer (truncated?): reads past that fail",
                       v->l->size, v->data_end);
    return 0;
}

static int vhd_open(struct vlayer *l)
{
    struct vhd *v = xcalloc(1, sizeof(*v));
    v->l = l;
    vdamage_init(&v->damage);
    l->priv = v;
    int r = choose_footer(v);
    if (r == 0 && v->f.type != VHD_TYPE_FIXED && v->f.type != VHD_TYPE_DYNAMIC &&
        v->f.type != VHD_TYPE_DIFF) {
        vlayer_problem(l, "disk type %" PRIu32 " is not fixed (2), dynamic (3) or "
                       "differencing (4)", v->f.type);
        r = -ENOTSUP;
    }
    if (r == 0)
        r = set_size(v);
    if (r == 0)
        r = v->f.type == VHD_TYPE_FIXED ? open_fixed(v) : open_dynamic(v);
    if (r < 0)
        vhd_close(l);
    return r;
}

static int vhd_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    if (len >= 8 && !memcmp(head, "conectix", 8))
        return 100;
    /* A fixed disk has its footer at the end only. */
    if (file_size < VHD_FOOTER_LEN)
        return 0;
    uint8_t b[VHD_FOOTER_LEN];
    if (file_size <= len) {
        memcpy(b, head + file_size - VHD_FOOTER_LEN, VHD_FOOTER_LEN);
    } else {
        if (!path)
            return 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
            return 0;
        ssize_t n = pread(fd, b, sizeof(b), (off_t)(file_size - VHD_FOOTER_LEN));
        close(fd);
        if (n != (ssize_t)sizeof(b))
            return 0;
    }
    /* The footer is 512 bytes, or 511 as Virtual PC once wrote it. */
    size_t skip = memcmp(b, "conectix", 8) ? 1 : 0;
    if (skip && memcmp(b + 1, "conectix", 8))
        return 0;
    const uint8_t *f = b + skip;
    uint32_t type = get_be32(f + 60);
    if (type != VHD_TYPE_FIXED && type != VHD_TYPE_DYNAMIC && type != VHD_TYPE_DIFF)
        return 0;
    return get_be32(f + 64) == vhd_checksum(f, VHD_FOOTER_LEN - skip, 64) ? 100 : 60;
}

/* ------------------------------------------------------------------------
 * Mapping
 * ---------------------------------------------------------------------- */

static void set_run(struct vrun *run, enum vrun_kind kind, uint64_t len)
{
    run->kind = kind;
    run->len = len;
    run->src = NULL;
    run->src_off = 0;
    run->err = kind == VRUN_ERROR ? EIO : 0;
}

static void set_data(struct vrun *run, struct vsrc *src, uint64_t off, uint64_t len)
{
    set_run(run, VRUN_DATA, len);
    run->src = src;
    run->src_off = off;
}

static int fixed_map(struct vhd *v, uint64_t off, uint64_t len, struct vrun *run)
{
    if (off >= v->data_end)
        set_run(run, VRUN_ERROR, len);
    else
        set_data(run, v->l->file, off, VMFS_MIN(len, v->data_end - off));
    return 0;
}

enum bat_state { BAT_OK, BAT_BAD };

/* The BAT entry of block blk: BAT_BAD (already reported at open) when the
 * table does not cover it or it lies past the end of the file. */
static int bat_entry(struct vhd *v, struct vtab_cur *c, uint64_t blk, uint32_t *e,
                     enum bat_state *st)
{
    uint64_t val;
    bool ok;
    int r = vtab_entry(v->l, c, &v->bat, blk, &val, &ok);
    *e = (uint32_t)val;    /* 32-bit entries */
    *st = r == 0 && ok ? BAT_OK : BAT_BAD;
    return r;
}

/* Unallocated blocks from blk on (in at the first), up to len bytes. */
static int unused_run(struct vhd *v, struct vtab_cur *c, uint64_t blk, uint64_t in, uint64_t len,
                      struct vrun *run)
{
    uint64_t n = v->block_size - in;
    while (n < len) {
        uint32_t e;
        enum bat_state st;
        int r = bat_entry(v, c, ++blk, &e, &st);
        if (r < 0)
            return r;
        if (st != BAT_OK || e != VHD_BAT_UNUSED)
            break;
        n += v->block_size;
    }
    enum vrun_kind kind = VRUN_ZERO;
    if (v->f.type == VHD_TYPE_DIFF)
        kind = v->no_parent ? VRUN_ERROR : VRUN_BACKING;
    set_run(run, kind, VMFS_MIN(n, len));
    return 0;
}

/* Data of block blk at file offset pos, want bytes of it: what lies past
 * the end of the file is an error. */
static void block_data(struct vhd *v, uint64_t blk, uint64_t pos, uint64_t want,
                       struct vrun *run)
{
    uint64_t fsize = v->l->file->size;
    if (pos < fsize) {
        set_data(run, v->l->file, pos, VMFS_MIN(want, fsize - pos));
        return;
    }
    if (vdamage_first(&v->damage, v->l, blk))
        vlayer_problem(v->l, "block %" PRIu64 " (guest offset 0x%" PRIx64 "): its data lies "
                       "past the end of the file", blk, blk << v->block_bits);
    set_run(run, VRUN_ERROR, want);
}

static bool bit_at(const uint8_t *bm, uint64_t sector)
{
    return bm[sector / 8] >> (7 - sector % 8) & 1;
}

/* The first sector from s (below end) whose bit differs from s's. */
static uint64_t bits_same_until(const uint8_t *bm, uint64_t s, uint64_t end)
{
    bool bit = bit_at(bm, s);
    uint8_t all = bit ? 0xff : 0x00;
    uint64_t i = s + 1;
    while (i < end) {
        if (i % 8 == 0 && end - i >= 8 && bm[i / 8] == all) {
            i += 8;
            continue;
        }
        if (bit_at(bm, i) != bit)
            break;
        i++;
    }
    return i;
}

/* A differencing block: sectors its bitmap marks are here, the others in
 * the parent. */
static int diff_block(struct vhd *v, struct vtab_cur *c, uint64_t blk, uint64_t base, uint64_t in,
                      uint64_t want, struct vrun *run)
{
    if (!range_in(base, v->bitmap_size, v->l->file->size)) {
        if (vdamage_first(&v->damage, v->l, blk))
            vlayer_problem(v->l, "block %" PRIu64 " (guest offset 0x%" PRIx64 "): its sector "
                           "bitmap lies past the end of the file", blk, blk << v->block_bits);
        set_run(run, VRUN_ERROR, want);
        return 0;
    }
    int r = vtab_cur_get(v->l, c, VHD_KEY_BITMAP | base, base, v->bitmap_size);
    if (r < 0)
        return r;
    uint64_t s = in / VHD_SECTOR;
    uint64_t end_sector = (in + want + VHD_SECTOR - 1) / VHD_SECTOR;
    uint64_t stop = bits_same_until(c->data, s, end_sector) * VHD_SECTOR;
    uint64_t n = VMFS_MIN(stop, in + want) - in;
    if (bit_at(c->data, s))
        block_data(v, blk, base + v->bitmap_size + in, n, run);
    else
        set_run(run, v->no_parent ? VRUN_ERROR : VRUN_BACKING, n);
    return 0;
}

static int dyn_map_cur(struct vhd *v, struct vtab_cur *c, uint64_t off, uint64_t len,
                       struct vrun *run)
{
    uint64_t blk = off >> v->block_bits;
    uint64_t in = off & (v->block_size - 1);
    uint32_t e = 0;
    enum bat_state st;
    int r = bat_entry(v, c, blk, &e, &st);
    if (r < 0)
        return r;
    if (st != BAT_OK) {
        set_run(run, VRUN_ERROR, len);
        return 0;
    }
    if (e == VHD_BAT_UNUSED)
        return unused_run(v, c, blk, in, len, run);
    uint64_t base = (uint64_t)e * VHD_SECTOR;
    uint64_t want = VMFS_MIN(len, v->block_size - in);
    if (v->f.type == VHD_TYPE_DIFF) {
        vtab_cur_release(c);
        return diff_block(v, c, blk, base, in, want, run);
    }
    /* Like qemu, a dynamic disk reads the whole block as stored. */
    block_data(v, blk, base + v->bitmap_size + in, want, run);
    return 0;
}

static int vhd_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct vhd *v = l->priv;
    if (v->f.type == VHD_TYPE_FIXED)
        return fixed_map(v, off, len, run);
    struct vtab_cur c = {0};
    int r = dyn_map_cur(v, &c, off, len, run);
    vtab_cur_release(&c);
    return r;
}

/* For allocation questions a fixed disk's data area is asked for its
 * holes, like a raw file. */
static int vhd_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct vhd *v = l->priv;
    int r = vhd_map(l, off, len, run);
    if (r < 0 || v->f.type != VHD_TYPE_FIXED)
        return r;
    return vrun_refine_holes(run);
}

/* ------------------------------------------------------------------------
 * Report
 * ---------------------------------------------------------------------- */

static const char *type_name(uint32_t type)
{
    return type == VHD_TYPE_FIXED ? "fixed" : type == VHD_TYPE_DYNAMIC ? "dynamic"
                                                                       : "differencing";
}

static void report_time(struct rep *o, const char *key, uint32_t ts)
{
    char date[64] = "";
    time_t t = (time_t)VHD_EPOCH + ts;
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &tm);
    rep_set_str(o, key, date);
}

static void report_footer(struct vhd *v, struct rep *o)
{
    const struct vhd_footer *f = &v->f;
    char app[5], os[5], uuid[37];
    code_text(f->app, app);
    code_text(f->os, os);
    uuid_text(f->uuid, uuid);
    rep_set_str(o, "subformat", type_name(f->type));
    rep_set_strf(o, "format_version", "%u.%u", f->version >> 16, f->version & 0xffff);
    rep_set_str(o, "creator_app", app);
    rep_set_strf(o, "creator_version", "%u.%u", f->app_version >> 16, f->app_version & 0xffff);
    rep_set_str(o, "creator_os", os);
    report_time(o, "timestamp", f->timestamp);
    rep_set_strf(o, "geometry", "%u/%u/%u", f->cyls, f->heads, f->spt);
    rep_set_size(o, "geometry_size", (uint64_t)f->cyls * f->heads * f->spt * VHD_SECTOR);
    rep_set_size(o, "current_size", f->cur_size);
    rep_set_size(o, "original_size", f->orig_size);
    rep_set_str(o, "size_from", v->size_from_chs ? "geometry" : "current size");
    rep_set_str(o, "footer", v->fsrc == FOOTER_HEAD      ? "copy at offset 0"
                             : v->fsrc == FOOTER_END_OLD ? "end of file (511 bytes)"
                                                         : "end of file");
    rep_set_bool(o, "footer_checksum_ok", v->footer_sum_ok);
    rep_set_str(o, "unique_id", uuid);
    rep_set_bool(o, "saved_state", f->saved_state != 0);
    rep_set_bool(o, "temporary", f->features & 1);
}

static void report_parent(struct vhd *v, struct rep *o)
{
    char uuid[37];
    struct rep *p = rep_set_object(o, "parent");
    uuid_text(v->parent_uuid, uuid);
    rep_set_str(p, "name", v->parent_name ? v->parent_name : "");
    rep_set_str(p, "unique_id", uuid);
    report_time(p, "timestamp", v->parent_ts);
    struct rep *arr = rep_set_array(p, "locators");
    for (unsigned i = 0; i < VHD_NLOC; i++) {
        const struct vhd_loc *loc = &v->loc[i];
        if (!loc->code)
            continue;
        struct rep *e = rep_add_object(arr);
        const char *name = plat_name(loc->code);
        if (name)
            rep_set_str(e, "platform", name);
        else
            rep_set_strf(e, "platform", "0x%08" PRIx32, loc->code);
        rep_set_u64(e, "offset", loc->off);
        rep_set_u64(e, "length", loc->len);
        rep_set_str(e, "path", loc->path ? loc->path : "");
    }
}

static void vhd_report(struct vlayer *l, struct rep *o)
{
    struct vhd *v = l->priv;
    if (!v)
        return;
    report_footer(v, o);
    if (v->f.type == VHD_TYPE_FIXED)
        return;
    rep_set_size(o, "block_size", v->block_size);
    rep_set_u64(o, "bat_offset", v->bat_off);
    rep_set_u64(o, "bat_entries", v->max_entries);
    rep_set_size(o, "sector_bitmap_size", v->bitmap_size);
    rep_set_bool(o, "dynamic_header_checksum_ok", v->dyn_sum_ok);
    if (v->f.type == VHD_TYPE_DIFF)
        report_parent(v, o);
}

const struct vfmt_driver vfmt_vhd = {
    .name = "vpc",
    .probe = vhd_probe,
    .open = vhd_open,
    .map = vhd_map,
    .map_alloc = vhd_map_alloc,
    .report = vhd_report,
    .close = vhd_close,
};
