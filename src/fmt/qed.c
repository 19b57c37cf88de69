/* vmfs — the QED driver (the QEMU Enhanced Disk format).
 *
 * A QED file is a little-endian header, an L1 table and L2 tables of 64-bit
 * cluster offsets (0 unallocated: the backing file shows through; 1 a zero
 * cluster), and data clusters.  docs/formats/qed.md describes the layout
 * and vmfs's choices.
 *
 * Threads: open and close run alone.  map and report run on many threads
 * at once; they read state fixed at open, L1 and L2 table slices come from
 * the shared cache, and the list of damage already reported has its own
 * lock (damage.h, taken on error paths). */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "fmt/damage.h"
#include "fmt/table.h"
#include "vmfs/fmt.h"
#include "vmfs/report.h"

#define QED_MAGIC 0x00444551u            /* "QED\0" */
#define QED_HEADER_LEN 64u
#define QED_F_BACKING_FILE 0x01u
#define QED_F_NEED_CHECK 0x02u
#define QED_F_BACKING_NO_PROBE 0x04u
#define QED_F_KNOWN 0x07u
#define QED_MIN_CLUSTER (4u << 10)
#define QED_MAX_CLUSTER (64u << 20)
#define QED_MAX_TABLE 16u                 /* clusters */
#define QED_MAX_BACKING_NAME 4095u
#define QED_MAX_SIZE (1ull << 56)          /* larger virtual sizes are refused */
#define QED_CLUSTER_ZERO 1u
#define QED_ENTRY 8u                      /* bytes per table entry */
#define QED_KEY_L1 (1ull << 62)

struct qed_header {
    uint32_t cluster_size, table_size, header_size;
    uint64_t features, compat, autoclear;
    uint64_t l1_off, image_size;
    uint32_t bf_off, bf_size;
};

struct qed {
    struct vlayer *l;
    struct qed_header h;
    uint64_t cs;             /* cluster size */
    unsigned cbits;
    uint64_t nelems;         /* entries per table */
    unsigned ebits;
    uint64_t table_bytes;
    uint64_t header_end;     /* clusters below this hold the header */
    uint64_t file_end;       /* file size rounded down to a cluster */
    struct vtab l1;          /* count: L1 entries the virtual size needs that lie
                                inside the file */

    struct vdamage damage;   /* problems met while mapping, each reported once */
};

static void parse_header(const uint8_t *b, struct qed_header *h)
{
    h->cluster_size = get_le32(b + 4);
    h->table_size = get_le32(b + 8);
    h->header_size = get_le32(b + 12);
    h->features = get_le64(b + 16);
    h->compat = get_le64(b + 24);
    h->autoclear = get_le64(b + 32);
    h->l1_off = get_le64(b + 40);
    h->image_size = get_le64(b + 48);
    h->bf_off = get_le32(b + 56);
    h->bf_size = get_le32(b + 60);
}

/* ------------------------------------------------------------------------
 * Opening
 * ---------------------------------------------------------------------- */

static int check_sizes(struct qed *q)
{
    const struct qed_header *h = &q->h;
    struct vlayer *l = q->l;
    if (h->cluster_size < QED_MIN_CLUSTER || h->cluster_size > QED_MAX_CLUSTER ||
        !is_pow2_u64(h->cluster_size)) {
        vlayer_problem(l, "cluster size %" PRIu32 " is not a power of two from 4 KiB to 64 MiB",
                       h->cluster_size);
        return -EINVAL;
    }
    if (h->table_size < 1 || h->table_size > QED_MAX_TABLE || !is_pow2_u64(h->table_size)) {
        vlayer_problem(l, "table size %" PRIu32 " is not a power of two from 1 to 16 clusters",
                       h->table_size);
        return -EINVAL;
    }
    if (h->header_size < 1 || h->header_size > UINT32_MAX / h->cluster_size) {
        vlayer_problem(l, "header size of %" PRIu32 " clusters is absurd", h->header_size);
        return -EINVAL;
    }
    q->cs = h->cluster_size;
    q->cbits = (unsigned)__builtin_ctz(h->cluster_size);
    q->table_bytes = (uint64_t)h->table_size * h->cluster_size;
    q->nelems = q->table_bytes / QED_ENTRY;
    q->ebits = (unsigned)__builtin_ctzll(q->nelems);
    q->header_end = (uint64_t)h->header_size * h->cluster_size;
    q->file_end = l->file->size & ~(q->cs - 1);
    return 0;
}

static int check_image_size(struct qed *q)
{
    uint64_t size = q->h.image_size, max;
    if (ckd_mul_u64(&max, q->nelems * q->nelems, q->cs))
        max = UINT64_MAX;
    if (size % 512) {
        vlayer_problem(q->l, "image size %" PRIu64 " is not a multiple of 512 bytes", size);
        return -EINVAL;
    }
    if (size > max || size > QED_MAX_SIZE) {
        vlayer_problem(q->l, "image size %" PRIu64 " is absurd (the tables address %" PRIu64
                       " bytes; vmfs accepts up to 64 PiB)", size, max);
        return -EINVAL;
    }
    q->l->size = size;
    return 0;
}

static int check_features(struct qed *q)
{
    uint64_t unknown = q->h.features & ~(uint64_t)QED_F_KNOWN;
    if (unknown) {
        vlayer_problem(q->l, "unsupported feature bits 0x%" PRIx64, unknown);
        return -ENOTSUP;
    }
    return 0;
}

/* An L1 or L2 table: 64-bit little-endian cluster offsets.  L1 slices are
 * told apart from L2 slices in the cache by key_tag. */
static struct vtab qed_table(uint64_t off, uint64_t count, uint64_t key_tag)
{
    return (struct vtab){.off = off, .count = count, .width = QED_ENTRY, .order = VTAB_LE,
                         .key_tag = key_tag};
}

/* The L1 table must start on a cluster after the header; entries the file
 * does not hold become error runs. */
static int check_l1(struct qed *q)
{
    uint64_t off = q->h.l1_off;
    if ((off & (q->cs - 1)) || off < q->header_end) {
        vlayer_problem(q->l, "L1 table offset 0x%" PRIx64 " is not a cluster boundary after "
                       "the header", off);
        return -EINVAL;
    }
    uint64_t span_bits = q->cbits + q->ebits;
    uint64_t used = span_bits >= 64 ? 1 : (q->l->size + (1ull << span_bits) - 1) >> span_bits;
    q->l1 = qed_table(off, vtab_in_file(q->l, "L1 table", off, used, QED_ENTRY), QED_KEY_L1);
    return 0;
}

static int read_backing(struct qed *q)
{
    const struct qed_header *h = &q->h;
    struct vlayer *l = q->l;
    if (!(h->features & QED_F_BACKING_FILE) || h->bf_size == 0)
        return 0;
    if (h->bf_size > QED_MAX_BACKING_NAME ||
        (uint64_t)h->bf_off + h->bf_size > q->header_end ||
        !range_in(h->bf_off, h->bf_size, l->file->size)) {
        vlayer_problem(l, "backing file name (%" PRIu32 " bytes at %" PRIu32 ") lies outside "
                       "the header or is too long", h->bf_size, h->bf_off);
        return -EINVAL;
    }
    char *name = xcalloc(1, (size_t)h->bf_size + 1);
    int r = vsrc_pread(l->file, name, h->bf_size, h->bf_off);
    if (r < 0 || !name[0]) {
        if (r < 0)
            vlayer_problem(l, "cannot read the backing file name: %s", strerror(-r));
        free(name);
        return r;
    }
    l->backing_name = name;
    if (h->features & QED_F_BACKING_NO_PROBE)
        l->backing_fmt = xstrdup("raw");
    return 0;
}

static void qed_close(struct vlayer *l)
{
    struct qed *q = l->priv;
    if (!q)
        return;
    vdamage_destroy(&q->damage);
    free(q);
    l->priv = NULL;
}

static int read_header(struct qed *q)
{
    uint8_t b[QED_HEADER_LEN];
    uint64_t fsize = q->l->file->size;
    if (fsize < QED_HEADER_LEN) {
        vlayer_problem(q->l, "the file is %" PRIu64 " bytes, too short for a QED header (%u)",
                       fsize, QED_HEADER_LEN);
        return -EINVAL;
    }
    int r = vsrc_pread(q->l->file, b, sizeof(b), 0);
    if (r < 0) {
        vlayer_problem(q->l, "cannot read the header: %s", strerror(-r));
        return r;
    }
    if (get_le32(b) != QED_MAGIC) {
        vlayer_problem(q->l, "no QED magic");
        return -EINVAL;
    }
    parse_header(b, &q->h);
    return 0;
}

static int qed_open(struct vlayer *l)
{
    struct qed *q = xcalloc(1, sizeof(*q));
    q->l = l;
    vdamage_init(&q->damage);
    l->priv = q;
    int r = read_header(q);
    if (r == 0)
        r = check_features(q);
    if (r == 0)
        r = check_sizes(q);
    if (r == 0)
        r = check_image_size(q);
    if (r == 0)
        r = check_l1(q);
    if (r == 0)
        r = read_backing(q);
    if (r < 0)
        qed_close(l);
    return r;
}

static int qed_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    return len >= 4 && get_le32(head) == QED_MAGIC ? 100 : 0;
}

/* ------------------------------------------------------------------------
 * Mapping
 * ---------------------------------------------------------------------- */

/* What a stretch of the disk is: kind, length from the asked position, and
 * for data the file offset there. */
struct piece {
    enum vrun_kind kind;
    uint64_t len;
    uint64_t src_off;
};

static bool cluster_ok(const struct qed *q, uint64_t off)
{
    return !(off & (q->cs - 1)) && off >= q->header_end && off < q->file_end;
}

/* The L2 table of L1 entry i: *l2 = 0 when unallocated; false when the
 * entry is damaged (reported once) or past the end of the file. */
static int l1_lookup(struct qed *q, struct vtab_cur *c, uint64_t i, uint64_t *l2, bool *ok)
{
    bool read;
    int r = vtab_entry(q->l, c, &q->l1, i, l2, &read);
    *ok = false;
    if (r < 0 || !read)
        return r;
    uint64_t end = *l2 + q->table_bytes - q->cs;
    if (*l2 == 0 || (cluster_ok(q, *l2) && end >= *l2 && cluster_ok(q, end))) {
        *ok = true;
    } else if (vdamage_first(&q->damage, q->l, QED_KEY_L1 | i)) {
        vlayer_problem(q->l, "L1 entry %" PRIu64 " (guest offset 0x%" PRIx64 "): L2 table "
                       "offset 0x%" PRIx64 " is not a cluster inside the file", i,
                       i << (q->cbits + q->ebits), *l2);
    }
    return 0;
}

static void cluster_piece(struct qed *q, uint64_t ci, uint64_t e, uint64_t in,
                          struct piece *p)
{
    p->len = q->cs - in;
    if (e == 0) {
        p->kind = VRUN_BACKING;
    } else if (e == QED_CLUSTER_ZERO) {
        p->kind = VRUN_ZERO;
    } else if (cluster_ok(q, e)) {
        p->kind = VRUN_DATA;
        p->src_off = e + in;
    } else {
        p->kind = VRUN_ERROR;
        if (vdamage_first(&q->damage, q->l, ci))
            vlayer_problem(q->l, "guest offset 0x%" PRIx64 ": data cluster offset 0x%" PRIx64
                           " is not a cluster inside the file", ci << q->cbits, e);
    }
}

/* How many clusters from L2 index idx on (entry e, of kind k; at least 1)
 * in the slice c2 holds are alike: unallocated, zero, or data clusters back
 * to back inside the file.  One step for what would be one piece each. */
static uint64_t same_clusters(const struct qed *q, const struct vtab_cur *c2,
                              const struct vtab *t2, uint64_t idx, uint64_t e,
                              enum vrun_kind k)
{
    const uint8_t *p;
    uint64_t max = vtab_run(q->l, c2, t2, idx, &p), n = 1;
    p += 8;
    if (k == VRUN_BACKING)      /* a sparse table is mostly zeros: 8 at a time */
        for (; n + 8 <= max && all_zero64(p, 64); n += 8)
            p += 64;
    for (; n < max; n++, p += 8) {
        uint64_t x = get_le64(p);
        if (k == VRUN_DATA ? x != e + n * q->cs || !cluster_ok(q, x)
                           : x != (k == VRUN_ZERO ? QED_CLUSTER_ZERO : 0))
            break;
    }
    return n;
}

/* The piece at pos: a cluster, or the rest of an L1 span that has no (or
 * a damaged) L2 table. */
static int piece_at(struct qed *q, struct vtab_cur *c1, struct vtab_cur *c2, uint64_t pos,
                    struct piece *p)
{
    uint64_t span_bits = q->cbits + q->ebits;
    uint64_t i = span_bits >= 64 ? 0 : pos >> span_bits;
    uint64_t l2;
    bool ok;
    int r = l1_lookup(q, c1, i, &l2, &ok);
    if (r < 0)
        return r;
    if (!ok || l2 == 0) {
        uint64_t span_end = span_bits >= 64 ? UINT64_MAX : (i + 1) << span_bits;
        p->kind = ok ? VRUN_BACKING : VRUN_ERROR;
        p->len = span_end - pos;
        return 0;
    }
    /* l1_lookup checked that the whole L2 table lies inside the file. */
    struct vtab t2 = qed_table(l2, q->nelems, 0);
    uint64_t ci = pos >> q->cbits, in = pos & (q->cs - 1), e;
    r = vtab_entry(q->l, c2, &t2, ci & (q->nelems - 1), &e, &ok);
    if (r < 0)
        return r;
    if (ok) {
        cluster_piece(q, ci, e, in, p);
        if (p->kind != VRUN_ERROR)
            p->len += (same_clusters(q, c2, &t2, ci & (q->nelems - 1), e, p->kind) - 1) * q->cs;
    } else {
        p->kind = VRUN_ERROR;
        p->len = q->cs - in;
    }
    return 0;
}

static bool extends(const struct vrun *run, const struct piece *p)
{
    if (p->kind != run->kind)
        return false;
    return p->kind != VRUN_DATA || p->src_off == run->src_off + run->len;
}

static int qed_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct qed *q = l->priv;
    struct vtab_cur c1 = {0}, c2 = {0};
    struct piece p;
    int r = piece_at(q, &c1, &c2, off, &p);
    if (r == 0) {
        run->kind = p.kind;
        run->len = VMFS_MIN(p.len, len);
        run->src = p.kind == VRUN_DATA ? l->file : NULL;
        run->src_off = p.src_off;
        run->err = EIO;
    }
    while (r == 0 && run->len < len) {
        r = piece_at(q, &c1, &c2, off + run->len, &p);
        if (r < 0 || !extends(run, &p))
            break;
        run->len += VMFS_MIN(p.len, len - run->len);
    }
    vtab_cur_release(&c1);
    vtab_cur_release(&c2);
    return r;
}

/* ------------------------------------------------------------------------
 * Report
 * ---------------------------------------------------------------------- */

static void qed_report(struct vlayer *l, struct rep *o)
{
    struct qed *q = l->priv;
    if (!q)
        return;
    const struct qed_header *h = &q->h;
    rep_set_size(o, "cluster_size", q->cs);
    rep_set_u64(o, "table_size", h->table_size);
    rep_set_u64(o, "header_size", h->header_size);
    rep_set_u64(o, "l1_offset", h->l1_off);
    rep_set_u64(o, "table_entries", q->nelems);
    struct rep *f = rep_set_array(o, "features");
    if (h->features & QED_F_BACKING_FILE)
        rep_add_str(f, "backing file");
    if (h->features & QED_F_NEED_CHECK)
        rep_add_str(f, "need check");
    if (h->features & QED_F_BACKING_NO_PROBE)
        rep_add_str(f, "backing format raw (no probe)");
    rep_set_bool(o, "need_check", h->features & QED_F_NEED_CHECK);
    if (h->compat)
        rep_set_u64(o, "compat_features", h->compat);
    if (h->autoclear)
        rep_set_u64(o, "autoclear_features", h->autoclear);
    if (h->features & QED_F_BACKING_FILE)
        rep_set_str(o, "backing_format", h->features & QED_F_BACKING_NO_PROBE ? "raw" : "probed");
}

const struct vfmt_driver vfmt_qed = {
    .name = "qed",
    .probe = qed_probe,
    .open = qed_open,
    .map = qed_map,
    .report = qed_report,
    .close = qed_close,
};
