/* vmfs — the volume layout of a disk: which partition table it has, the
 * partitions and LVM volumes as segment maps, the signature scan that says
 * what each volume holds, and the facts rendered into info.
 *
 * vlayout_scan reads the disk through a struct vdisk only; every value read
 * is checked before use.  The scan order is: sector 0 (MBR or protective
 * MBR), GPT when the MBR or a header signature calls for it, the bounds and
 * overlaps of what the table gave, a signature scan of every partition (or
 * of the whole disk when there is no table), then LVM. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>

#include "vol/vol_internal.h"

/* ---- problems and reads ------------------------------------------------ */

void vl_problem(struct vl *vl, const char *fmt, ...)
{
    if (vl->pub.nproblems >= VL_MAX_PROBLEMS) {
        vl->dropped_problems++;
        return;
    }
    if (vl->pub.nproblems == vl->probcap) {
        vl->probcap = vl->probcap ? vl->probcap * 2 : 8;
        vl->pub.problems = xrealloc(vl->pub.problems, vl->probcap * sizeof(char *));
    }
    va_list ap;
    char *s;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    vl->pub.problems[vl->pub.nproblems++] = s;
}

int vl_read(struct vl *vl, void *buf, size_t len, uint64_t off)
{
    if (!range_in(off, len, vl->disk->size))
        return -1;
    if (len == 0)
        return 0;
    int r = vl->disk->read(vl->disk->ctx, buf, len, off);
    if (r < 0) {
        if (!vl->read_error_reported)
            vl_problem(vl, "volumes: reading the disk at byte %" PRIu64 " failed: %s",
                       off, strerror(-r));
        vl->read_error_reported = true;
        return -1;
    }
    return 0;
}

int vl_vol_read(struct vl *vl, const struct vvolume *v, void *buf, size_t len,
                uint64_t off)
{
    uint8_t *p = buf;
    if (!range_in(off, len, v->size))
        return -1;
    while (len > 0) {
        uint64_t d, n;
        vvol_map(v, off, len, &d, &n);
        if (n == 0 || vl_read(vl, p, (size_t)n, d) < 0)
            return -1;
        p += n;
        off += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- CRC and GUIDs ------------------------------------------------------ */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t vol_crc32(uint32_t crc, const void *buf, size_t len)
{
    const uint32_t *table = crc_table;
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return crc;
}

void guid_to_str(const uint8_t g[16], char out[37])
{
    snprintf(out, 37, "%08" PRIX32 "-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X",
             get_le32(g), get_le16(g + 4), get_le16(g + 6), g[8], g[9], g[10], g[11],
             g[12], g[13], g[14], g[15]);
}

bool guid_is_zero(const uint8_t g[16])
{
    for (int i = 0; i < 16; i++)
        if (g[i])
            return false;
    return true;
}

/* ---- volumes and partitions --------------------------------------------- */

struct vpart *vl_add_part(struct vl *vl)
{
    if (vl->nparts == vl->partcap) {
        vl->partcap = vl->partcap ? vl->partcap * 2 : 8;
        vl->parts = xrealloc(vl->parts, vl->partcap * sizeof *vl->parts);
    }
    struct vpart *p = &vl->parts[vl->nparts++];
    memset(p, 0, sizeof *p);
    p->vol = SIZE_MAX;
    return p;
}

size_t vl_add_volume(struct vl *vl, enum vvol_kind kind, char *path, uint64_t size,
                     struct vvol_seg *segs, size_t nsegs)
{
    if (vl->pub.nvols == vl->volcap) {
        vl->volcap = vl->volcap ? vl->volcap * 2 : 8;
        vl->pub.vols = xrealloc(vl->pub.vols, vl->volcap * sizeof *vl->pub.vols);
    }
    struct vvolume *v = &vl->pub.vols[vl->pub.nvols];
    v->kind = kind;
    v->path = path;
    v->size = size;
    v->segs = segs;
    v->nsegs = nsegs;
    return vl->pub.nvols++;
}

struct vvol_seg *vl_linear_seg(uint64_t size, uint64_t disk_off)
{
    struct vvol_seg *s = xcalloc(1, sizeof *s);
    s->len = size;
    s->nstripes = 1;
    s->area = xmalloc(sizeof *s->area);
    s->area[0] = disk_off;
    return s;
}

static const char *part_name(const struct vpart *p, char buf[16])
{
    snprintf(buf, 16, "p%" PRIu32, p->number);
    return buf;
}

/* Clips or drops what lies past the end of the disk (avail). */
static void check_bounds(struct vl *vl, struct vpart *p)
{
    char nb[16];
    uint64_t dsize = vl->disk->size;
    if (p->start >= dsize) {
        vl_problem(vl, "partition %s starts at byte %" PRIu64 ", past the end of the disk "
                   "(%" PRIu64 " bytes); not shown", part_name(p, nb), p->start, dsize);
        p->avail = 0;
    } else if (p->size > dsize - p->start) {
        p->avail = dsize - p->start;
        vl_problem(vl, "partition %s ends %" PRIu64 " bytes past the end of the disk; "
                   "shown clipped to %" PRIu64 " bytes", part_name(p, nb),
                   p->size - p->avail, p->avail);
    } else {
        p->avail = p->size;
    }
}

static int cmp_part_start(const void *a, const void *b)
{
    const struct vpart *x = *(struct vpart *const *)a, *y = *(struct vpart *const *)b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->number < y->number ? -1 : x->number > y->number;
}

static bool nested_ok(const struct vpart *a, const struct vpart *b)
{
    /* Logical partitions live inside their extended partition. */
    return (a->kind == VP_EXTENDED && b->kind == VP_LOGICAL) ||
           (b->kind == VP_EXTENDED && a->kind == VP_LOGICAL);
}

/* Reports each partition that overlaps one that starts before it: one
 * sweep over the partitions sorted by start, O(n log n). */
static void check_overlaps(struct vl *vl)
{
    if (vl->nparts < 2)
        return;
    struct vpart **s = xcalloc(vl->nparts, sizeof *s);
    for (size_t i = 0; i < vl->nparts; i++)
        s[i] = &vl->parts[i];
    qsort(s, vl->nparts, sizeof *s, cmp_part_start);
    const struct vpart *far = NULL, *far_ext = NULL; /* furthest-reaching so far */
    for (size_t i = 0; i < vl->nparts; i++) {
        struct vpart *p = s[i];
        const struct vpart *o = far;
        if (o && p->start < o->start + o->size && nested_ok(o, p))
            o = NULL;
        if (!o && far_ext && p->kind != VP_LOGICAL && p->start < far_ext->start + far_ext->size)
            o = far_ext;
        if (o && p->start < o->start + o->size && !nested_ok(o, p)) {
            char a[16], b[16];
            vl_problem(vl, "partitions %s and %s overlap", part_name(o, a), part_name(p, b));
        }
        if (p->kind == VP_EXTENDED) {
            if (!far_ext || p->start + p->size > far_ext->start + far_ext->size)
                far_ext = p;
        } else if (!far || p->start + p->size > far->start + far->size) {
            far = p;
        }
    }
    free(s);
}

/* Shows the partitions as volumes and scans what is in them. */
static void add_partition_volumes(struct vl *vl)
{
    for (size_t i = 0; i < vl->nparts; i++) {
        struct vpart *p = &vl->parts[i];
        check_bounds(vl, p);
        if (p->avail == 0)
            continue;
        p->vol = vl_add_volume(vl, VVOL_PARTITION, xasprintf("p%" PRIu32, p->number),
                               p->avail, vl_linear_seg(p->avail, p->start), 1);
    }
    check_overlaps(vl);
    for (size_t i = 0; i < vl->nparts; i++) {
        struct vpart *p = &vl->parts[i];
        if (p->vol != SIZE_MAX && p->kind != VP_EXTENDED)
            vl_probe_content(vl, &vl->pub.vols[p->vol], &p->content);
    }
}

/* ---- the scan ----------------------------------------------------------- */

static bool has_sig(struct vl *vl, uint64_t off, const char *sig, size_t len)
{
    uint8_t b[16];
    return len <= sizeof b && vl_read(vl, b, len, off) == 0 && !memcmp(b, sig, len);
}

static void scan_table(struct vl *vl)
{
    uint8_t s0[512];
    struct mbr_info mi = {0};
    if (vl_read(vl, s0, sizeof s0, 0) == 0)
        mbr_inspect(s0, &mi);
    bool h512 = has_sig(vl, 512, "EFI PART", 8);
    bool h4k = !h512 && has_sig(vl, 4096, "EFI PART", 8);
    bool mbr_wins = mi.signature && mi.sane && mi.nother > 0 && !mi.has_ee;

    if (mi.has_ee || h512 || h4k) {
        if (mbr_wins) {
            /* A GPT header but an MBR without a protective entry: Linux
             * reads the MBR, and so do we. */
            vl_problem(vl, "a GPT header is present but the MBR has no protective (0xEE) "
                       "entry; the MBR is used and the GPT ignored");
        } else if (gpt_scan(vl, h4k)) {
            vl->pt = VPT_GPT;
            if (!mi.has_ee)
                vl_problem(vl, "GPT found but the MBR is not protective (no 0xEE entry)");
            else if (mi.nother > 0)
                vl->hybrid_mbr = true;
            return;
        } else if (mi.has_ee) {
            vl->pt = VPT_GPT;
            vl_problem(vl, "the MBR is protective (0xEE entry) so it is not read as a table "
                       "of its own; no partitions shown");
            return;
        }
    }
    if (mi.signature && mi.sane && mi.nused > 0) {
        struct vcontent c = {0};
        struct vvolume whole = {.size = VMFS_MIN(vl->disk->size, 8192)};
        struct vvol_seg seg = {.len = whole.size, .nstripes = 1, .area = (uint64_t[1]){0}};
        whole.segs = &seg;
        whole.nsegs = 1;
        vl_probe_content(vl, &whole, &c);
        /* A FAT, exFAT or NTFS boot sector carries 0x55AA too. */
        if (c.type && (!strcmp(c.type, "vfat") || !strcmp(c.type, "exfat") ||
                       !strcmp(c.type, "ntfs") || !strcmp(c.type, "BitLocker")))
            return;
        vl->pt = VPT_MBR;
        vl->sector_size = 512;
        mbr_scan(vl, s0);
    }
}

struct vlayout *vlayout_scan(const struct vdisk *disk)
{
    struct vl *vl = xcalloc(1, sizeof *vl);
    vl->disk = disk;
    vl->sector_size = 512;
    scan_table(vl);
    add_partition_volumes(vl);
    if (vl->pt == VPT_NONE) {
        struct vvolume whole = {.size = disk->size};
        struct vvol_seg seg = {.len = disk->size, .nstripes = 1, .area = (uint64_t[1]){0}};
        whole.segs = &seg;
        whole.nsegs = 1;
        vl_probe_content(vl, &whole, &vl->disk_content);
    }
    lvm_scan(vl);
    if (vl->dropped_problems) {
        size_t n = vl->dropped_problems;
        vl->dropped_problems = 0;
        vl->pub.nproblems--;
        free(vl->pub.problems[vl->pub.nproblems]);
        vl_problem(vl, "volumes: %zu more problems not listed", n + 1);
    }
    vl->pub.facts = rep_new_object();
    vlayout_report(&vl->pub, vl->pub.facts);
    vl->disk = NULL;
    return &vl->pub;
}

void vlayout_free(struct vlayout *lay)
{
    if (!lay)
        return;
    struct vl *vl = vl_of(lay);
    for (size_t i = 0; i < lay->nvols; i++) {
        struct vvolume *v = &lay->vols[i];
        for (size_t k = 0; k < v->nsegs; k++)
            free(v->segs[k].area);
        free(v->segs);
        free(v->path);
    }
    free(lay->vols);
    rep_free(lay->facts);
    for (size_t i = 0; i < lay->nproblems; i++)
        free(lay->problems[i]);
    free(lay->problems);
    for (size_t i = 0; i < vl->nparts; i++)
        free(vl->parts[i].name);
    free(vl->parts);
    lvm_free(vl->lvm);
    free(vl);
}

const struct vvolume *vlayout_find(const struct vlayout *lay, const char *path)
{
    for (size_t i = 0; lay && path && i < lay->nvols; i++)
        if (!strcmp(lay->vols[i].path, path))
            return &lay->vols[i];
    return NULL;
}

void vvol_map(const struct vvolume *v, uint64_t off, uint64_t maxlen,
              uint64_t *disk_off, uint64_t *len)
{
    *disk_off = 0;
    *len = 0;
    if (!v->nsegs || off >= v->size)
        return;
    size_t lo = 0, hi = v->nsegs; /* the last segment with loff <= off */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->segs[mid].loff <= off)
            lo = mid;
        else
            hi = mid;
    }
    const struct vvol_seg *s = &v->segs[lo];
    uint64_t rel = off - s->loff;
    if (rel >= s->len)
        return;
    uint64_t n = VMFS_MIN(maxlen, s->len - rel);
    if (s->nstripes <= 1 || s->stripe_size == 0) {
        *disk_off = s->area[0] + rel;
    } else {
        uint64_t chunk = rel / s->stripe_size, within = rel % s->stripe_size;
        uint64_t row = chunk / s->nstripes;
        *disk_off = s->area[chunk % s->nstripes] + row * s->stripe_size + within;
        n = VMFS_MIN(n, s->stripe_size - within);
    }
    *len = n;
}

/* ---- facts -------------------------------------------------------------- */

static void content_facts(struct rep *o, const char *key, const struct vcontent *c)
{
    rep_set_str(o, key, c->type);
    if (c->label[0])
        rep_set_str(o, strcmp(key, "content") ? "disk_label" : "label", c->label);
    if (c->uuid[0])
        rep_set_str(o, strcmp(key, "content") ? "disk_uuid" : "uuid", c->uuid);
    if (c->note)
        rep_set_str(o, strcmp(key, "content") ? "disk_content_note" : "content_note", c->note);
}

static const char *kind_name(enum vpart_kind k)
{
    switch (k) {
    case VP_PRIMARY: return "primary";
    case VP_EXTENDED: return "extended";
    case VP_LOGICAL: return "logical";
    case VP_GPT: break;
    }
    return NULL;
}

static void attr_facts(struct rep *o, uint64_t a)
{
    rep_set_strf(o, "attributes", "0x%016" PRIx64, a);
    if (!a)
        return;
    struct rep *arr = rep_set_array(o, "attribute_flags");
    static const char *const names[3] = {"RequiredPartition", "NoBlockIOProtocol",
                                         "LegacyBIOSBootable"};
    for (unsigned b = 0; b < 64; b++) {
        if (!(a >> b & 1))
            continue;
        if (b < 3)
            rep_add_str(arr, names[b]);
        else
            rep_add_strf(arr, "GUID:%u", b);
    }
}

static void part_facts(const struct vl *vl, const struct vpart *p, struct rep *o)
{
    char g[37];
    rep_set_u64(o, "number", p->number);
    if (p->vol != SIZE_MAX)
        rep_set_str(o, "path", vl->pub.vols[p->vol].path);
    else
        rep_set_null(o, "path");
    if (kind_name(p->kind))
        rep_set_str(o, "kind", kind_name(p->kind));
    rep_set_u64(o, "start", p->start);
    rep_set_u64(o, "end", p->start + p->size - 1);
    rep_set_size(o, "size", p->size);
    rep_set_u64(o, "start_sector", p->start / 512);
    rep_set_u64(o, "end_sector", (p->start + p->size) / 512 - 1);
    rep_set_u64(o, "size_sectors", p->size / 512);
    if (p->sector_size != 512) {
        rep_set_u64(o, "start_lba", p->start / p->sector_size);
        rep_set_u64(o, "end_lba", (p->start + p->size) / p->sector_size - 1);
    }
    if (p->avail != p->size) {
        rep_set_bool(o, "beyond_end", true);
        rep_set_size(o, "available_size", p->avail);
    }
    if (p->kind == VP_GPT) {
        guid_to_str(p->type_guid, g);
        rep_set_str(o, "type", g);
        rep_set_str(o, "type_name", gpt_type_name(p->type_guid));
        rep_set_str(o, "name", p->name ? p->name : "");
        guid_to_str(p->uniq_guid, g);
        rep_set_str(o, "guid", g);
        attr_facts(o, p->attrs);
    } else {
        rep_set_strf(o, "type", "0x%02x", p->mbr_type);
        rep_set_str(o, "type_name", mbr_type_name(p->mbr_type));
        rep_set_bool(o, "bootable", p->bootable);
    }
    if (p->kind != VP_EXTENDED)
        content_facts(o, "content", &p->content);
}

void vlayout_report(const struct vlayout *lay, struct rep *root)
{
    const struct vl *vl = vl_of(lay);
    static const char *const pt[] = {"none", "mbr", "gpt"};
    char g[37];
    rep_set_str(root, "partition_table", pt[vl->pt]);
    rep_set_u64(root, "sector_size", vl->sector_size);
    if (vl->pt == VPT_MBR) {
        rep_set_strf(root, "disk_id", "0x%08" PRIx32, vl->mbr_disk_id);
    } else if (vl->pt == VPT_GPT && vl->gpt_nentries) {
        guid_to_str(vl->disk_guid, g);
        rep_set_str(root, "disk_guid", g);
        rep_set_str(root, "gpt_header", vl->gpt_backup_used ? "backup" : "primary");
        rep_set_u64(root, "gpt_header_lba", vl->gpt_header_lba);
        rep_set_u64(root, "first_usable_lba", vl->gpt_first_usable);
        rep_set_u64(root, "last_usable_lba", vl->gpt_last_usable);
        rep_set_u64(root, "gpt_entries", vl->gpt_nentries);
        rep_set_u64(root, "gpt_entry_size", vl->gpt_entry_size);
        rep_set_bool(root, "hybrid_mbr", vl->hybrid_mbr);
    }
    if (vl->pt == VPT_NONE)
        content_facts(root, "disk_content", &vl->disk_content);
    struct rep *arr = rep_set_array(root, "partitions");
    for (size_t i = 0; i < vl->nparts; i++)
        part_facts(vl, &vl->parts[i], rep_add_object(arr));
    if (vl->lvm)
        lvm_report(vl, root);
}

/* ---- the signature table ------------------------------------------------ */

/* The bytes a signature scan looks at: three windows of a volume. */
struct probe {
    uint8_t head[8192];         /* [0, 8192) */
    uint8_t iso[4096];          /* [32768, 36864) */
    uint8_t btr[4096];          /* [65536, 69632) */
    size_t nhead;
    bool has_iso, has_btr;
};

/* len bytes at volume offset off, or NULL when the probe did not read them. */
static const uint8_t *at(const struct probe *pb, uint64_t off, size_t len)
{
    if (off + len <= pb->nhead)
        return pb->head + off;
    if (pb->has_iso && off >= 32768 && off + len <= 32768 + sizeof pb->iso)
        return pb->iso + (off - 32768);
    if (pb->has_btr && off >= 65536 && off + len <= 65536 + sizeof pb->btr)
        return pb->btr + (off - 65536);
    return NULL;
}

static bool magic_at(const struct probe *pb, uint64_t off, const char *m, size_t len)
{
    const uint8_t *p = at(pb, off, len);
    return p && !memcmp(p, m, len);
}

/* Copies a fixed-size, maybe NUL-padded label: printable bytes (and
 * UTF-8), trailing spaces trimmed. */
static void set_label(struct vcontent *c, const uint8_t *p, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && p[i] && n + 1 < sizeof c->label; i++)
        c->label[n++] = p[i] < 0x20 || p[i] == 0x7f ? '?' : (char)p[i];
    while (n > 0 && c->label[n - 1] == ' ')
        n--;
    c->label[n] = 0;
}

static void set_uuid16(struct vcontent *c, const uint8_t *u)
{
    bool zero = true;
    for (int i = 0; i < 16; i++)
        zero = zero && !u[i];
    if (zero)
        return;
    snprintf(c->uuid, sizeof c->uuid,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
             u[13], u[14], u[15]);
}

static bool sig_ext(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *sb = at(pb, 1024, 256);
    if (!sb || get_le16(sb + 0x38) != 0xEF53)
        return false;
    uint32_t compat = get_le32(sb + 0x5c), incompat = get_le32(sb + 0x60);
    uint32_t ro = get_le32(sb + 0x64);
    if (incompat & 0x0008)
        c->type = "jbd";
    else if ((incompat & ~0x001Eu) || (ro & ~0x0007u))
        c->type = "ext4";
    else
        c->type = compat & 0x0004 ? "ext3" : "ext2";
    set_uuid16(c, sb + 0x68);
    set_label(c, sb + 0x78, 16);
    return true;
}

static bool sig_xfs(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *sb = at(pb, 0, 120);
    if (!sb || memcmp(sb, "XFSB", 4))
        return false;
    c->type = "xfs";
    set_uuid16(c, sb + 32);
    set_label(c, sb + 108, 12);
    return true;
}

static bool sig_btrfs(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *sb = at(pb, 65536, 0x12b + 256);
    if (!sb || memcmp(sb + 0x40, "_BHRfS_M", 8))
        return false;
    c->type = "btrfs";
    set_uuid16(c, sb + 0x20);
    set_label(c, sb + 0x12b, 256);
    return true;
}

static bool sig_swap(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *h = at(pb, 0, 4096);
    if (!h || (memcmp(h + 4086, "SWAPSPACE2", 10) && memcmp(h + 4086, "SWAP-SPACE", 10)))
        return false;
    c->type = "swap";
    if (!memcmp(h + 4086, "SWAPSPACE2", 10)) {
        set_uuid16(c, h + 1036);
        set_label(c, h + 1052, 16);
    }
    return true;
}

static bool sig_luks(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *h = at(pb, 0, 208);
    if (!h || memcmp(h, "LUKS\xba\xbe", 6))
        return false;
    c->type = "LUKS";
    set_label(c, h + 168, 40);
    memcpy(c->uuid, c->label, sizeof c->uuid - 1);
    c->uuid[sizeof c->uuid - 1] = 0;
    c->label[0] = 0;
    if (get_be16(h + 6) == 2)
        set_label(c, h + 24, 48);
    return true;
}

static bool sig_lvm(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *h = at(pb, 0, 2048);
    if (!h || !lvm_has_label(h, 2048))
        return false;
    c->type = "LVM2 PV";
    for (unsigned s = 0; s < 4; s++) {
        const uint8_t *l = h + 512 * s;
        uint32_t o = get_le32(l + 20);
        if (memcmp(l, "LABELONE", 8) || o < 32 || o > 512 - 32)
            continue;
        const uint8_t *u = l + o;
        static const int grp[] = {6, 4, 4, 4, 4, 4, 6};
        size_t n = 0, k = 0;
        for (size_t g = 0; g < VMFS_ARRAY_SIZE(grp); g++) {
            for (int i = 0; i < grp[g]; i++, k++)
                c->uuid[n++] = u[k] > 0x20 && u[k] < 0x7f ? (char)u[k] : '?';
            if (g + 1 < VMFS_ARRAY_SIZE(grp))
                c->uuid[n++] = '-';
        }
        c->uuid[n] = 0;
        break;
    }
    return true;
}

static bool fat_bpb_sane(const uint8_t *b)
{
    uint16_t bps = get_le16(b + 11);
    uint8_t spc = b[13], fats = b[16];
    return (bps == 512 || bps == 1024 || bps == 2048 || bps == 4096) && spc &&
           !(spc & (spc - 1)) && get_le16(b + 14) > 0 && (fats == 1 || fats == 2);
}

static void set_serial32(struct vcontent *c, uint32_t v)
{
    snprintf(c->uuid, sizeof c->uuid, "%04X-%04X", (unsigned)(v >> 16), (unsigned)(v & 0xffff));
}

static bool sig_fat(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *b = at(pb, 0, 512);
    if (!b || get_le16(b + 510) != 0xAA55 || !fat_bpb_sane(b))
        return false;
    int lab, ser;
    if (!memcmp(b + 82, "FAT32   ", 8)) {
        lab = 71, ser = 67;
    } else if (!memcmp(b + 54, "FAT12   ", 8) || !memcmp(b + 54, "FAT16   ", 8) ||
               !memcmp(b + 54, "FAT     ", 8)) {
        lab = 43, ser = 39;
    } else {
        return false;
    }
    c->type = "vfat";
    if (b[lab - 5] == 0x29) {
        set_serial32(c, get_le32(b + ser));
        set_label(c, b + lab, 11);
        if (!strcmp(c->label, "NO NAME"))
            c->label[0] = 0;
    }
    return true;
}

static bool sig_ntfs(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *b = at(pb, 0, 512);
    if (!b || memcmp(b + 3, "NTFS    ", 8))
        return false;
    c->type = "ntfs";
    snprintf(c->uuid, sizeof c->uuid, "%016" PRIX64, get_le64(b + 0x48));
    return true;
}

static bool sig_exfat(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *b = at(pb, 0, 512);
    if (!b || memcmp(b + 3, "EXFAT   ", 8))
        return false;
    c->type = "exfat";
    set_serial32(c, get_le32(b + 100));
    return true;
}

static bool sig_iso(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *d = at(pb, 32768, 72);
    if (!d || memcmp(d + 1, "CD001", 5))
        return false;
    c->type = "iso9660";
    set_label(c, d + 40, 32);
    return true;
}

static bool sig_md(const struct probe *pb, struct vcontent *c)
{
    for (uint64_t off = 0; off <= 4096; off += 4096) { /* v1.1 at 0, v1.2 at 4 KiB */
        const uint8_t *s = at(pb, off, 256);
        if (s && get_le32(s) == 0xa92b4efc && get_le32(s + 4) == 1) {
            c->type = "linux_raid_member";
            set_uuid16(c, s + 16);
            set_label(c, s + 32, 32);
            return true;
        }
    }
    return false;
}

static bool sig_simple(const struct probe *pb, struct vcontent *c)
{
    static const struct { const char *type; uint32_t off; const char *magic; size_t len; } t[] = {
        {"squashfs", 0, "hsqs", 4},
        {"BitLocker", 3, "-FVE-FS-", 8},
        {"GPT partition table", 512, "EFI PART", 8},
        {"GPT partition table", 4096, "EFI PART", 8},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(t); i++) {
        if (magic_at(pb, t[i].off, t[i].magic, t[i].len)) {
            c->type = t[i].type;
            return true;
        }
    }
    return false;
}

static bool sig_mbr(const struct probe *pb, struct vcontent *c)
{
    const uint8_t *b = at(pb, 0, 512);
    struct mbr_info mi;
    if (!b)
        return false;
    mbr_inspect(b, &mi);
    if (!mi.signature || !mi.sane || !mi.nused)
        return false;
    c->type = "MBR partition table";
    return true;
}

/* The signature table, tried in order; the first match wins.  Boot-sector
 * file systems come before the MBR test, which they would also pass. */
static bool (*const signatures[])(const struct probe *, struct vcontent *) = {
    sig_luks, sig_lvm, sig_xfs, sig_ext, sig_btrfs, sig_swap, sig_ntfs, sig_exfat,
    sig_fat, sig_md, sig_iso, sig_simple, sig_mbr,
};

void vl_probe_content(struct vl *vl, const struct vvolume *v, struct vcontent *c)
{
    struct probe *pb = xcalloc(1, sizeof *pb);
    memset(c, 0, sizeof *c);
    pb->nhead = (size_t)VMFS_MIN(v->size, sizeof pb->head);
    if (vl_vol_read(vl, v, pb->head, pb->nhead, 0) < 0)
        pb->nhead = 0;
    pb->has_iso = vl_vol_read(vl, v, pb->iso, sizeof pb->iso, 32768) == 0;
    pb->has_btr = vl_vol_read(vl, v, pb->btr, sizeof pb->btr, 65536) == 0;
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(signatures); i++)
        if (signatures[i](pb, c))
            break;
    free(pb);
}
