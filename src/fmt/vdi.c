/* vmfs — the VDI driver (VirtualBox disk images, version 1.1): static and
 * dynamic images.
 *
 * A VDI starts with a 512-byte header; a block map of 32-bit little-endian
 * entries says where each block of the disk lies among the data blocks
 * (0xFFFFFFFF never allocated, 0xFFFFFFFE discarded: both read as zeros).
 * docs/formats/vdi.md describes the layout and vmfs's choices.
 *
 * Threads: open and close run alone.  map and report run on many threads
 * at once; they read state fixed at open, block map slices come from the
 * shared cache, and the list of damage already reported has its own lock
 * (damage.h, taken on error paths). */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "fmt/damage.h"
#include "fmt/table.h"
#include "vmfs/fmt.h"
#include "vmfs/report.h"

#define VDI_SIGNATURE 0xbeda107fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_PRE_HEADER 0x48u             /* text and signature before the header */
#define VDI_HEADER_MIN 0x180u            /* header size of version 1.1 up to the UUIDs */
#define VDI_HEADER_END (VDI_PRE_HEADER + VDI_HEADER_MIN)
#define VDI_HEADER_READ 512u
#define VDI_SECTOR 512u
#define VDI_UNALLOCATED 0xffffffffu
#define VDI_DISCARDED 0xfffffffeu
#define VDI_MAX_BLOCK (1u << 30)
#define VDI_MAX_EXTRA (1u << 30)
#define VDI_MAX_SIZE (64ull << 40)        /* larger virtual sizes are refused */
#define VDI_ENTRY 4u                      /* bytes per block map entry */

enum vdi_type { VDI_NORMAL = 1, VDI_FIXED = 2, VDI_UNDO = 3, VDI_DIFF = 4 };

struct vdi_header {
    char text[65];
    uint32_t version, header_size, type, flags;
    char description[257];
    uint32_t off_bmap, off_data;
    uint32_t cyls, heads, sectors, sector_size;
    uint64_t disk_size;
    uint32_t block_size, block_extra, blocks, blocks_allocated;
    uint8_t uuid_image[16], uuid_modify[16], uuid_link[16], uuid_parent_modify[16];
};

struct vdi {
    struct vlayer *l;
    struct vdi_header h;
    unsigned block_bits;
    uint64_t stride;          /* block_size + block_extra */
    struct vtab map;          /* the block map; count: entries the virtual size
                                 needs that lie inside the file */
    bool has_parent;

    struct vdamage damage;   /* problems met while mapping, each reported once */
};

static bool uuid_null(const uint8_t u[16])
{
    for (int i = 0; i < 16; i++)
        if (u[i])
            return false;
    return true;
}

/* VirtualBox stores UUIDs with their first three fields little-endian. */
static void uuid_text(const uint8_t u[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], u[8], u[9], u[10], u[11],
             u[12], u[13], u[14], u[15]);
}

/* Printable text from a fixed-size field, cut at the first NUL or newline. */
static void field_text(char *out, const uint8_t *p, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && p[i] && p[i] != '\n'; i++)
        out[o++] = p[i] >= 0x20 && p[i] != 0x7f ? (char)p[i] : '?';
    out[o] = 0;
}

static void parse_header(const uint8_t *b, struct vdi_header *h)
{
    field_text(h->text, b, 64);
    h->version = get_le32(b + 0x44);
    h->header_size = get_le32(b + 0x48);
    h->type = get_le32(b + 0x4c);
    h->flags = get_le32(b + 0x50);
    field_text(h->description, b + 0x54, 256);
    h->off_bmap = get_le32(b + 0x154);
    h->off_data = get_le32(b + 0x158);
    h->cyls = get_le32(b + 0x15c);
    h->heads = get_le32(b + 0x160);
    h->sectors = get_le32(b + 0x164);
    h->sector_size = get_le32(b + 0x168);
    h->disk_size = get_le64(b + 0x170);
    h->block_size = get_le32(b + 0x178);
    h->block_extra = get_le32(b + 0x17c);
    h->blocks = get_le32(b + 0x180);
    h->blocks_allocated = get_le32(b + 0x184);
    memcpy(h->uuid_image, b + 0x188, 16);
    memcpy(h->uuid_modify, b + 0x198, 16);
    memcpy(h->uuid_link, b + 0x1a8, 16);
    memcpy(h->uuid_parent_modify, b + 0x1b8, 16);
}

/* ------------------------------------------------------------------------
 * Opening
 * ---------------------------------------------------------------------- */

static int check_version(struct vdi *d)
{
    const struct vdi_header *h = &d->h;
    if (h->version != VDI_VERSION_1_1) {
        vlayer_problem(d->l, "VDI version %" PRIu32 ".%" PRIu32 " is not supported "
                       "(vmfs reads version 1.1)", h->version >> 16, h->version & 0xffff);
        return -ENOTSUP;
    }
    if (h->header_size < VDI_HEADER_MIN || h->header_size > VDI_HEADER_READ - VDI_PRE_HEADER) {
        vlayer_problem(d->l, "header size %" PRIu32 " is outside %u..%u", h->header_size,
                       VDI_HEADER_MIN, VDI_HEADER_READ - VDI_PRE_HEADER);
        return -EINVAL;
    }
    if (h->type < VDI_NORMAL || h->type > VDI_DIFF) {
        vlayer_problem(d->l, "image type %" PRIu32 " is not dynamic (1), static (2), undo (3) "
                       "or differencing (4)", h->type);
        return -ENOTSUP;
    }
    return 0;
}

static int check_geometry(struct vdi *d)
{
    struct vdi_header *h = &d->h;
    if (h->block_size < VDI_SECTOR || h->block_size > VDI_MAX_BLOCK ||
        !is_pow2_u64(h->block_size)) {
        vlayer_problem(d->l, "block size %" PRIu32 " is not a power of two from 512 bytes "
                       "to 1 GiB", h->block_size);
        return -EINVAL;
    }
    if (h->block_extra > VDI_MAX_EXTRA) {
        vlayer_problem(d->l, "block extra data of %" PRIu32 " bytes is absurd", h->block_extra);
        return -EINVAL;
    }
    /* Odd sizes (VBoxManage convertfromraw) round up to a sector, as qemu does. */
    if (h->disk_size > VDI_MAX_SIZE) {
        vlayer_problem(d->l, "disk size %" PRIu64 " bytes is absurd (vmfs accepts up to 64 TiB)",
                       h->disk_size);
        return -EINVAL;
    }
    h->disk_size = (h->disk_size + VDI_SECTOR - 1) / VDI_SECTOR * VDI_SECTOR;
    d->block_bits = (unsigned)__builtin_ctz(h->block_size);
    d->stride = (uint64_t)h->block_size + h->block_extra;
    return 0;
}

/* Works out which block map entries the disk needs and which the file holds. */
static void check_map(struct vdi *d)
{
    const struct vdi_header *h = &d->h;
    uint64_t used = vtab_used(d->l, "block map", h->blocks, h->block_size, h->disk_size);
    /* 32-bit little-endian block indexes; the only table in the cache. */
    d->map = (struct vtab){
        .off = h->off_bmap, .width = VDI_ENTRY, .order = VTAB_LE,
        .count = vtab_in_file(d->l, "block map", h->off_bmap, used, VDI_ENTRY)};
}

static void check_parent(struct vdi *d)
{
    const struct vdi_header *h = &d->h;
    char link[37];
    if (uuid_null(h->uuid_link) && h->type != VDI_DIFF && h->type != VDI_UNDO)
        return;
    d->has_parent = true;
    uuid_text(h->uuid_link, link);
    vlayer_problem(d->l, "differencing image: its parent has UUID %s, and vmfs does not "
                   "look parents up by UUID; blocks it does not hold cannot be read", link);
}

static void vdi_close(struct vlayer *l)
{
    struct vdi *d = l->priv;
    if (!d)
        return;
    vdamage_destroy(&d->damage);
    free(d);
    l->priv = NULL;
}

static int read_header(struct vdi *d)
{
    uint8_t b[VDI_HEADER_READ] = {0};
    uint64_t fsize = d->l->file->size;
    if (fsize < VDI_HEADER_END) {
        vlayer_problem(d->l, "the file is %" PRIu64 " bytes, too short for a VDI header", fsize);
        return -EINVAL;
    }
    int r = vsrc_pread(d->l->file, b, (size_t)VMFS_MIN(fsize, (uint64_t)sizeof(b)), 0);
    if (r < 0) {
        vlayer_problem(d->l, "cannot read the header: %s", strerror(-r));
        return r;
    }
    if (get_le32(b + 0x40) != VDI_SIGNATURE) {
        vlayer_problem(d->l, "no VDI signature (0x%08" PRIx32 ")", get_le32(b + 0x40));
        return -EINVAL;
    }
    parse_header(b, &d->h);
    return 0;
}

static int vdi_open(struct vlayer *l)
{
    struct vdi *d = xcalloc(1, sizeof(*d));
    d->l = l;
    vdamage_init(&d->damage);
    l->priv = d;
    int r = read_header(d);
    if (r == 0)
        r = check_version(d);
    if (r == 0)
        r = check_geometry(d);
    if (r < 0) {
        vdi_close(l);
        return r;
    }
    l->size = d->h.disk_size;
    check_map(d);
    check_parent(d);
    return 0;
}

static int vdi_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    return len >= 0x44 && get_le32(head + 0x40) == VDI_SIGNATURE ? 100 : 0;
}

/* ------------------------------------------------------------------------
 * Mapping
 * ---------------------------------------------------------------------- */

/* The block map entry of block blk; false (reported at open) when the map
 * does not cover it or it lies past the end of the file. */
static int map_entry(struct vdi *d, struct vtab_cur *c, uint64_t blk, uint32_t *e, bool *ok)
{
    uint64_t v;
    int r = vtab_entry(d->l, c, &d->map, blk, &v, ok);
    *e = (uint32_t)v;    /* 32-bit entries */
    return r;
}

static bool is_hole(uint32_t e) { return e >= VDI_DISCARDED; }

static enum vrun_kind hole_kind(const struct vdi *d, uint32_t e)
{
    if (e == VDI_UNALLOCATED && d->has_parent)
        return VRUN_ERROR;       /* would come from a parent vmfs cannot find */
    return VRUN_ZERO;
}

/* Holes from block blk on (in bytes into the first), up to len bytes. */
static int hole_run(struct vdi *d, struct vtab_cur *c, uint64_t blk, uint32_t e, uint64_t in,
                    uint64_t len, struct vrun *run)
{
    enum vrun_kind kind = hole_kind(d, e);
    uint64_t n = d->h.block_size - in;
    while (n < len) {
        uint32_t next;
        bool ok;
        int r = map_entry(d, c, blk + 1, &next, &ok);
        if (r < 0)
            return r;
        if (!ok || !is_hole(next) || hole_kind(d, next) != kind)
            break;
        blk++;
        n += d->h.block_size;
    }
    run->kind = kind;
    run->err = EIO;
    run->len = VMFS_MIN(n, len);
    return 0;
}

/* File offset of the data of a block stored at index e, or false when
 * that lies outside the file. */
static bool block_pos(const struct vdi *d, uint32_t e, uint64_t *pos)
{
    uint64_t p;
    if (ckd_mul_u64(&p, (uint64_t)e, d->stride) || ckd_add_u64(&p, p, d->h.off_data) ||
        ckd_add_u64(&p, p, d->h.block_extra))
        return false;
    *pos = p;
    return range_in(p, d->h.block_size, d->l->file->size);
}

/* Allocated blocks from blk on whose data follow each other in the file. */
static int data_run(struct vdi *d, struct vtab_cur *c, uint64_t blk, uint32_t e, uint64_t in,
                    uint64_t len, struct vrun *run)
{
    uint64_t pos;
    if (!block_pos(d, e, &pos)) {
        if (vdamage_first(&d->damage, d->l, blk))
            vlayer_problem(d->l, "block %" PRIu64 " (guest offset 0x%" PRIx64 "): data block %"
                           PRIu32 " lies past the end of the file", blk, blk << d->block_bits, e);
        run->kind = VRUN_ERROR;
        run->err = EIO;
        run->len = VMFS_MIN(len, d->h.block_size - in);
        return 0;
    }
    uint64_t n = d->h.block_size - in;
    uint32_t prev = e;
    while (n < len && d->h.block_extra == 0) {
        uint32_t next;
        bool ok;
        uint64_t npos;
        int r = map_entry(d, c, blk + 1, &next, &ok);
        if (r < 0)
            return r;
        if (!ok || is_hole(next) || next != prev + 1 || !block_pos(d, next, &npos))
            break;
        blk++;
        prev = next;
        n += d->h.block_size;
    }
    run->kind = VRUN_DATA;
    run->src = d->l->file;
    run->src_off = pos + in;
    run->len = VMFS_MIN(n, len);
    return 0;
}

static int vdi_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct vdi *d = l->priv;
    struct vtab_cur c = {0};
    uint64_t blk = off >> d->block_bits;
    uint64_t in = off & (d->h.block_size - 1);
    uint32_t e = 0;
    bool ok;
    int r = map_entry(d, &c, blk, &e, &ok);
    if (r == 0 && !ok) {
        run->kind = VRUN_ERROR;
        run->err = EIO;
        run->len = len;
    } else if (r == 0) {
        r = is_hole(e) ? hole_run(d, &c, blk, e, in, len, run)
                       : data_run(d, &c, blk, e, in, len, run);
    }
    vtab_cur_release(&c);
    return r;
}

/* ------------------------------------------------------------------------
 * Report
 * ---------------------------------------------------------------------- */

static const char *type_name(uint32_t type)
{
    switch (type) {
    case VDI_NORMAL: return "dynamic";
    case VDI_FIXED: return "static";
    case VDI_UNDO: return "undo";
    default: return "differencing";
    }
}

static void report_uuid(struct rep *o, const char *key, const uint8_t u[16])
{
    char text[37];
    uuid_text(u, text);
    rep_set_str(o, key, text);
}

static void vdi_report(struct vlayer *l, struct rep *o)
{
    struct vdi *d = l->priv;
    if (!d)
        return;
    const struct vdi_header *h = &d->h;
    rep_set_str(o, "image_type", type_name(h->type));
    rep_set_strf(o, "format_version", "%u.%u", h->version >> 16, h->version & 0xffff);
    rep_set_str(o, "signature_text", h->text);
    if (h->description[0])
        rep_set_str(o, "description", h->description);
    rep_set_size(o, "block_size", h->block_size);
    rep_set_size(o, "block_extra_data", h->block_extra);
    rep_set_u64(o, "blocks_in_image", h->blocks);
    rep_set_u64(o, "blocks_allocated", h->blocks_allocated);
    rep_set_size(o, "sector_size", h->sector_size);
    rep_set_strf(o, "geometry", "%" PRIu32 "/%" PRIu32 "/%" PRIu32, h->cyls, h->heads,
                 h->sectors);
    rep_set_u64(o, "block_map_offset", h->off_bmap);
    rep_set_u64(o, "data_offset", h->off_data);
    rep_set_u64(o, "image_flags", h->flags);
    report_uuid(o, "uuid", h->uuid_image);
    report_uuid(o, "modification_uuid", h->uuid_modify);
    report_uuid(o, "parent_uuid", h->uuid_link);
    report_uuid(o, "parent_modification_uuid", h->uuid_parent_modify);
}

const struct vfmt_driver vfmt_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .map = vdi_map,
    .report = vdi_report,
    .close = vdi_close,
};
