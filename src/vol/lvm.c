/* vmfs — LVM2 physical volumes, volume groups and logical volumes.
 *
 * PV labels are looked for on the whole disk (when it has no partition
 * table) and in every partition: "LABELONE" in one of the first four
 * 512-byte sectors, with the PV header (uuid, size, data and metadata
 * areas) after it.  Each metadata area holds a header and a circular
 * buffer with the VG's metadata text; every copy found is checked (CRC) and
 * the newest good copy of each VG (by seqno) is parsed.  A VG's PVs are
 * matched by uuid to the places where labels were found, so a VG spread
 * over several partitions of the disk works.
 *
 * Logical volumes become volumes when every extent can be mapped to disk
 * bytes: linear and striped segments directly, raid1 and mirror segments
 * through one leg whose own segments are linear or striped (one level, no
 * recursion).  Everything else (thin, cache, VDO, snapshots' copy-on-write
 * stores, raid levels with parity, PVs not on this disk) is listed with its
 * reason and gets no volume. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>

#include "vol/vol_internal.h"

#define LVM_LABEL_SECTORS 4
#define LVM_MAX_AREAS 8              /* data or metadata areas in a PV header */
#define LVM_MAX_TEXT (4u << 20)      /* metadata text bytes */
#define LVM_MAX_COPIES 256           /* metadata copies considered */
#define LVM_MAX_PVS 1024
#define LVM_MAX_LVS 8192
#define LVM_MAX_SEGS 65536           /* segments of one LV */
#define LVM_MAX_LEGS 16
#define LVM_MAX_EXTENT_SECTORS (1ull << 32)
#define LVM_MAX_PE_START (1ull << 48)    /* sectors: 128 PiB */
static const char mda_magic[16] = " LVM2 x[5A%r0N*>";

/* A place where a PV label may be: the whole disk or a partition. */
struct lvm_dev {
    char name[16];
    uint64_t base, size;
    bool labelled;
    char uuid[33];                   /* from the PV header, without dashes */
    uint64_t label_dev_size;
    uint64_t da_off, da_size;
    bool has_da;
    unsigned nmda;
    uint64_t mda_off[LVM_MAX_AREAS], mda_size[LVM_MAX_AREAS];
};

/* One metadata copy found in a metadata area. */
struct lvm_copy {
    size_t dev;
    uint64_t mda_off, mda_size, rl_off, rl_size;
    uint32_t rl_crc;
    bool crc_ok;
    uint64_t seqno;
    char *vgname, *vgid;
};

struct lvm_area {
    char *name;                      /* PV ("pv0") or LV name */
    size_t pv;                       /* index in vg->pvs, or SIZE_MAX */
    uint64_t start;                  /* extent in that PV or LV */
};

struct lvm_seg {
    uint64_t start_extent, extent_count;
    char *type;
    uint64_t stripe_size;            /* sectors */
    struct lvm_area *areas;
    size_t nareas;
    char *cow;                       /* snapshot: the copy-on-write LV */
    const char *used_leg;            /* raid1/mirror: the leg read */
};

struct lvm_lv {
    char *name, *uuid;
    bool visible;
    struct lvm_seg *segs;
    size_t nsegs;
    uint64_t extents;
    char *reason;                    /* NULL when readable */
    size_t vol;                      /* SIZE_MAX when none */
    struct vcontent content;
};

struct lvm_pv {
    char *name, *uuid;
    size_t dev;                      /* SIZE_MAX: not on this disk */
    uint64_t pe_start, pe_count;     /* sectors, extents */
};

struct lvm_vg {
    char *name, *uuid;
    uint64_t seqno, extent_size;     /* extent_size in sectors */
    const char *source;              /* device whose copy was used */
    struct lvm_pv *pvs;
    size_t npvs;
    struct lvm_lv *lvs;
    size_t nlvs;
    char *reason;                    /* not usable at all */
};

struct lvm_state {
    struct lvm_dev *devs;
    size_t ndevs;
    struct lvm_vg *vgs;
    size_t nvgs;
};

/* ---- labels ------------------------------------------------------------- */

bool lvm_has_label(const uint8_t *head, size_t len)
{
    for (size_t s = 0; s < LVM_LABEL_SECTORS && (s + 1) * 512 <= len; s++)
        if (!memcmp(head + s * 512, "LABELONE", 8) && !memcmp(head + s * 512 + 24, "LVM2 001", 8))
            return true;
    return false;
}

/* Reads a disk_locn list (offset 0 ends it) at *p inside [.., end). */
static unsigned read_locns(const uint8_t **p, const uint8_t *end, uint64_t *off,
                           uint64_t *size)
{
    unsigned n = 0;
    while (*p + 16 <= end) {
        uint64_t o = get_le64(*p), s = get_le64(*p + 8);
        *p += 16;
        if (!o)
            break;
        if (n < LVM_MAX_AREAS) {
            off[n] = o;
            size[n] = s;
            n++;
        }
    }
    return n;
}

static void parse_pv_header(struct lvm_dev *d, const uint8_t *sec, uint32_t off)
{
    const uint8_t *ph = sec + off, *end = sec + 512, *p = ph + 40;
    for (int i = 0; i < 32; i++)
        d->uuid[i] = ph[i] > 0x20 && ph[i] < 0x7f ? (char)ph[i] : '?';
    d->uuid[32] = 0;
    d->label_dev_size = get_le64(ph + 32);
    uint64_t o[LVM_MAX_AREAS], s[LVM_MAX_AREAS];
    if (read_locns(&p, end, o, s)) {
        d->has_da = true;
        d->da_off = o[0];
        d->da_size = s[0];
    }
    d->nmda = read_locns(&p, end, d->mda_off, d->mda_size);
}

static void find_label(struct vl *vl, struct lvm_dev *d)
{
    uint8_t head[LVM_LABEL_SECTORS * 512];
    size_t n = (size_t)VMFS_MIN(d->size, sizeof head) / 512 * 512;
    if (n < 512 || vl_read(vl, head, n, d->base) < 0)
        return;
    for (size_t s = 0; s * 512 < n; s++) {
        const uint8_t *l = head + s * 512;
        if (memcmp(l, "LABELONE", 8))
            continue;
        uint32_t off = get_le32(l + 20);
        if (get_le64(l + 8) != s) {
            vl_problem(vl, "LVM: the label in sector %zu of %s names sector %" PRIu64
                       " as its own; ignored", s, d->name, get_le64(l + 8));
        } else if (vol_crc32(LVM_INITIAL_CRC, l + 20, 512 - 20) != get_le32(l + 16)) {
            vl_problem(vl, "LVM: the label in sector %zu of %s has a bad checksum; ignored",
                       s, d->name);
        } else if (memcmp(l + 24, "LVM2 001", 8) || off < 32 || off > 512 - 40) {
            vl_problem(vl, "LVM: the label in sector %zu of %s is not an LVM2 PV label; "
                       "ignored", s, d->name);
        } else {
            d->labelled = true;
            parse_pv_header(d, l, off);
            return;
        }
    }
}

/* ---- metadata areas and copies ----------------------------------------- */

/* Reads a copy's text (malloc'ed, rl_size bytes; the circular buffer
 * continues after the area's 512-byte header). */
static char *read_text(struct vl *vl, const struct lvm_dev *d, const struct lvm_copy *c)
{
    uint64_t first = VMFS_MIN(c->rl_size, c->mda_size - c->rl_off);
    uint64_t at = d->base + c->mda_off;
    char *t = xmalloc((size_t)c->rl_size + 1);
    if (vl_read(vl, t, (size_t)first, at + c->rl_off) < 0 ||
        vl_read(vl, t + first, (size_t)(c->rl_size - first), at + 512) < 0) {
        free(t);
        return NULL;
    }
    t[c->rl_size] = 0;
    return t;
}

/* The VG section of a metadata text: the first section with a seqno. */
static const struct lt_node *vg_section(const struct lt_doc *doc)
{
    uint64_t v;
    for (const struct lt_node *n = lt_first(doc, lt_root(doc)); n; n = lt_next(doc, n))
        if (n->type == LT_SECTION && lt_u64(doc, n, "seqno", &v))
            return n;
    return NULL;
}

/* Parses a copy's text; NULL with a problem said when it cannot. */
static const struct lt_node *parse_copy(struct vl *vl, const struct lvm_dev *d,
                                        const struct lvm_copy *c, struct lt_doc *doc)
{
    char *err = NULL;
    CLEANUP_FREE char *text = read_text(vl, d, c);
    memset(doc, 0, sizeof *doc);
    if (!text)
        return NULL;
    if (lt_parse(doc, text, (size_t)c->rl_size, &err) < 0) {
        vl_problem(vl, "LVM: the metadata text in %s (area at byte %" PRIu64 ") is malformed: %s",
                   d->name, c->mda_off, err);
        free(err);
        return NULL;
    }
    const struct lt_node *vg = vg_section(doc);
    if (!vg)
        vl_problem(vl, "LVM: the metadata text in %s (area at byte %" PRIu64 ") holds no "
                   "volume group", d->name, c->mda_off);
    return vg;
}

static void read_mda(struct vl *vl, struct lvm_dev *d, size_t di, unsigned k,
                     struct lvm_copy *copies, size_t *ncopies)
{
    uint64_t off = d->mda_off[k];
    uint8_t h[512];
    if (!range_in(off, 512, d->size) || vl_read(vl, h, 512, d->base + off) < 0) {
        vl_problem(vl, "LVM: metadata area %u of %s (byte %" PRIu64 ") lies outside it",
                   k + 1, d->name, off);
        return;
    }
    uint64_t start = get_le64(h + 24), size = get_le64(h + 32);
    const char *bad = NULL;
    if (memcmp(h + 4, mda_magic, 16))
        bad = "has no metadata area header";
    else if (vol_crc32(LVM_INITIAL_CRC, h + 4, 512 - 4) != get_le32(h))
        bad = "has a bad header checksum";
    else if (get_le32(h + 20) != 1)
        bad = "has an unknown version";
    else if (start != off || size < 1024 || !range_in(off, size, d->size))
        bad = "has an impossible position or size";
    if (bad) {
        vl_problem(vl, "LVM: metadata area %u of %s (byte %" PRIu64 ") %s; ignored", k + 1,
                   d->name, off, bad);
        return;
    }
    uint64_t rl_off = get_le64(h + 40), rl_size = get_le64(h + 48);
    if (rl_off == 0 || (get_le32(h + 60) & 1))
        return; /* empty, or marked ignored */
    if (rl_off < 512 || rl_off >= size || rl_size == 0 || rl_size > size - 512 ||
        rl_size > LVM_MAX_TEXT) {
        vl_problem(vl, "LVM: metadata area %u of %s points at an impossible text (offset "
                   "%" PRIu64 ", %" PRIu64 " bytes); ignored", k + 1, d->name, rl_off, rl_size);
        return;
    }
    if (*ncopies == LVM_MAX_COPIES) {
        vl_problem(vl, "LVM: more than %d metadata copies; the rest are ignored",
                   LVM_MAX_COPIES);
        return;
    }
    struct lvm_copy *c = &copies[(*ncopies)++];
    memset(c, 0, sizeof *c);
    c->dev = di;
    c->mda_off = off;
    c->mda_size = size;
    c->rl_off = rl_off;
    c->rl_size = rl_size;
    c->rl_crc = get_le32(h + 56);
}

/* Checks a copy's CRC and learns its VG's name, id and seqno. */
static void identify_copy(struct vl *vl, struct lvm_state *st, struct lvm_copy *c)
{
    const struct lvm_dev *d = &st->devs[c->dev];
    CLEANUP_FREE char *text = read_text(vl, d, c);
    if (!text)
        return;
    c->crc_ok = vol_crc32(LVM_INITIAL_CRC, text, (size_t)c->rl_size) == c->rl_crc;
    struct lt_doc doc;
    char *err = NULL;
    if (lt_parse(&doc, text, (size_t)c->rl_size, &err) == 0) {
        const struct lt_node *vg = vg_section(&doc);
        if (vg && lt_u64(&doc, vg, "seqno", &c->seqno)) {
            c->vgname = xstrdup(vg->key);
            const char *id = lt_str(&doc, vg, "id");
            c->vgid = xstrdup(id ? id : vg->key);
        }
    }
    lt_free(&doc);
    if (!c->vgname)
        vl_problem(vl, "LVM: the metadata text in %s (area at byte %" PRIu64 ")%s %s; ignored",
                   d->name, c->mda_off, c->crc_ok ? "" : " has a bad checksum and",
                   err ? err : "holds no volume group");
    free(err);
}

/* ---- the VG model ------------------------------------------------------- */

static char *dashless(const char *s)
{
    char *o = xmalloc(strlen(s) + 1), *q = o;
    for (; *s; s++)
        if (*s != '-')
            *q++ = *s;
    *q = 0;
    return o;
}

static void parse_pvs(struct vl *vl, struct lvm_state *st, struct lvm_vg *vg,
                      const struct lt_doc *doc, const struct lt_node *sec)
{
    size_t n = 0;
    for (const struct lt_node *p = lt_first(doc, sec); p; p = lt_next(doc, p))
        n += p->type == LT_SECTION;
    if (n > LVM_MAX_PVS) {
        vl_problem(vl, "LVM: VG %s lists %zu PVs; only %d are read", vg->name, n, LVM_MAX_PVS);
        n = LVM_MAX_PVS;
    }
    vg->pvs = xcalloc(n, sizeof *vg->pvs);
    for (const struct lt_node *p = lt_first(doc, sec); p && vg->npvs < n; p = lt_next(doc, p)) {
        if (p->type != LT_SECTION)
            continue;
        struct lvm_pv *pv = &vg->pvs[vg->npvs++];
        const char *id = lt_str(doc, p, "id");
        pv->name = xstrdup(p->key);
        pv->uuid = xstrdup(id ? id : "");
        pv->dev = SIZE_MAX;
        bool has_pe_start = lt_u64(doc, p, "pe_start", &pv->pe_start);
        lt_u64(doc, p, "pe_count", &pv->pe_count);
        if (pv->pe_start > LVM_MAX_PE_START) {
            vl_problem(vl, "LVM: VG %s: PV %s has an impossible pe_start (%" PRIu64
                       " sectors); treated as missing", vg->name, pv->name, pv->pe_start);
            pv->pe_start = 0;
            continue;
        }
        CLEANUP_FREE char *u = dashless(pv->uuid);
        for (size_t i = 0; i < st->ndevs; i++)
            if (st->devs[i].labelled && !strcmp(st->devs[i].uuid, u)) {
                pv->dev = i;
                break;
            }
        /* Old metadata may lack pe_start: the label's data area says it. */
        if (!has_pe_start && pv->dev != SIZE_MAX && st->devs[pv->dev].has_da)
            pv->pe_start = st->devs[pv->dev].da_off / 512;
    }
}

static size_t find_pv(const struct lvm_vg *vg, const char *name)
{
    for (size_t i = 0; i < vg->npvs; i++)
        if (!strcmp(vg->pvs[i].name, name))
            return i;
    return SIZE_MAX;
}

/* Reads an array of ("name", extent) pairs, or of names when pairs is
 * false, into the segment's areas. */
static bool read_areas(const struct lt_doc *doc, const struct lt_node *arr, bool pairs,
                       const struct lvm_vg *vg, bool pv_names, struct lvm_seg *s)
{
    size_t n = 0;
    if (!arr || arr->type != LT_ARRAY)
        return false;
    for (const struct lt_node *e = lt_first(doc, arr); e; e = lt_next(doc, e))
        n++;
    if (pairs && n % 2)
        return false;
    n = pairs ? n / 2 : n;
    if (n == 0 || n > VVOL_MAX_STRIPES)
        return false;
    s->areas = xcalloc(n, sizeof *s->areas);
    const struct lt_node *e = lt_first(doc, arr);
    for (size_t i = 0; i < n; i++) {
        if (e->type != LT_STR)
            return false;
        struct lvm_area *a = &s->areas[s->nareas++];
        a->name = xstrdup(e->str);
        a->pv = pv_names ? find_pv(vg, e->str) : SIZE_MAX;
        e = lt_next(doc, e);
        if (pairs) {
            if (e->type != LT_INT || e->num < 0)
                return false;
            a->start = (uint64_t)e->num;
            e = lt_next(doc, e);
        }
    }
    return true;
}

/* Fills a segment; returns a reason it cannot be used, or NULL. */
static const char *parse_seg(const struct lt_doc *doc, const struct lt_node *sec,
                             const struct lvm_vg *vg, struct lvm_seg *s)
{
    const char *type = lt_str(doc, sec, "type");
    s->type = xstrdup(type ? type : "?");
    if (!lt_u64(doc, sec, "start_extent", &s->start_extent) ||
        !lt_u64(doc, sec, "extent_count", &s->extent_count) || !s->extent_count)
        return "a segment has no valid start_extent or extent_count";
    if (!strcmp(s->type, "striped")) {
        uint64_t n = 1;
        lt_u64(doc, sec, "stripe_count", &n);
        if (!read_areas(doc, lt_get(doc, sec, "stripes"), true, vg, true, s) || s->nareas != n)
            return "a striped segment has a malformed stripes list";
        if (n > 1 && (!lt_u64(doc, sec, "stripe_size", &s->stripe_size) || !s->stripe_size ||
                      s->stripe_size > LVM_MAX_EXTENT_SECTORS))
            return "a striped segment has no valid stripe_size";
        if (s->extent_count % n)
            return "a striped segment's extent count is not a multiple of its stripe count";
    } else if (!strcmp(s->type, "mirror")) {
        if (!read_areas(doc, lt_get(doc, sec, "mirrors"), true, vg, false, s))
            return "a mirror segment has a malformed mirrors list";
    } else if (!strcmp(s->type, "raid1")) {
        if (!read_areas(doc, lt_get(doc, sec, "raids"), false, vg, false, s))
            return "a raid1 segment has a malformed raids list";
    } else if (!strcmp(s->type, "snapshot")) {
        const char *cow = lt_str(doc, sec, "cow_store");
        s->cow = cow ? xstrdup(cow) : NULL;
    }
    return NULL;
}

static int cmp_seg(const void *a, const void *b)
{
    const struct lvm_seg *x = a, *y = b;
    return x->start_extent < y->start_extent ? -1 : x->start_extent > y->start_extent;
}

static void parse_lv(struct vl *vl, const struct lt_doc *doc, const struct lt_node *sec,
                     struct lvm_vg *vg, struct lvm_lv *lv)
{
    const char *id = lt_str(doc, sec, "id");
    lv->name = xstrdup(sec->key);
    lv->uuid = xstrdup(id ? id : "");
    lv->visible = lt_has(doc, sec, "status", "VISIBLE");
    lv->vol = SIZE_MAX;
    size_t n = 0;
    for (const struct lt_node *p = lt_first(doc, sec); p; p = lt_next(doc, p))
        n += p->type == LT_SECTION;
    if (n > LVM_MAX_SEGS) {
        lv->reason = xasprintf("it has %zu segments (more than %d)", n, LVM_MAX_SEGS);
        vl_problem(vl, "LVM: LV %s of VG %s cannot be read: %s", lv->name, vg->name, lv->reason);
        return;
    }
    lv->segs = xcalloc(n, sizeof *lv->segs);
    const char *why = NULL;
    for (const struct lt_node *p = lt_first(doc, sec); p; p = lt_next(doc, p)) {
        if (p->type != LT_SECTION)
            continue;
        const char *w = parse_seg(doc, p, vg, &lv->segs[lv->nsegs++]);
        why = why ? why : w;
    }
    qsort(lv->segs, lv->nsegs, sizeof *lv->segs, cmp_seg);
    uint64_t next = 0;
    for (size_t i = 0; i < lv->nsegs && !why; i++) {
        if (lv->segs[i].start_extent != next)
            why = "its segments leave a gap or overlap";
        else if (ckd_add_u64(&next, next, lv->segs[i].extent_count))
            why = "its segments are impossibly large";
    }
    lv->extents = next;
    if (!why && !lv->nsegs)
        why = "it has no segments";
    if (why) {
        lv->reason = xstrdup(why);
        vl_problem(vl, "LVM: LV %s of VG %s cannot be read: %s", lv->name, vg->name, why);
    }
}

static void parse_lvs(struct vl *vl, struct lvm_vg *vg, const struct lt_doc *doc,
                      const struct lt_node *sec)
{
    size_t n = 0;
    for (const struct lt_node *p = lt_first(doc, sec); p; p = lt_next(doc, p))
        n += p->type == LT_SECTION;
    if (n > LVM_MAX_LVS) {
        vl_problem(vl, "LVM: VG %s lists %zu LVs; only %d are read", vg->name, n, LVM_MAX_LVS);
        n = LVM_MAX_LVS;
    }
    vg->lvs = xcalloc(n, sizeof *vg->lvs);
    for (const struct lt_node *p = lt_first(doc, sec); p && vg->nlvs < n; p = lt_next(doc, p))
        if (p->type == LT_SECTION)
            parse_lv(vl, doc, p, vg, &vg->lvs[vg->nlvs++]);
}

static void parse_vg(struct vl *vl, struct lvm_state *st, struct lvm_vg *vg,
                     const struct lt_doc *doc, const struct lt_node *sec)
{
    lt_u64(doc, sec, "seqno", &vg->seqno);
    if (!lt_u64(doc, sec, "extent_size", &vg->extent_size) || !vg->extent_size ||
        vg->extent_size > LVM_MAX_EXTENT_SECTORS) {
        vg->reason = xstrdup("the metadata has no valid extent_size");
        vl_problem(vl, "LVM: VG %s: %s; not shown", vg->name, vg->reason);
        return;
    }
    parse_pvs(vl, st, vg, doc, lt_get(doc, sec, "physical_volumes"));
    parse_lvs(vl, vg, doc, lt_get(doc, sec, "logical_volumes"));
}

/* ---- mapping LVs to the disk -------------------------------------------- */

struct segbuf {
    struct vvol_seg *v;
    size_t n, cap;
};

static void push(struct segbuf *b, uint64_t loff, uint64_t len, uint32_t n, uint64_t ss,
                 const uint64_t *area)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 4;
        b->v = xrealloc(b->v, b->cap * sizeof *b->v);
    }
    struct vvol_seg *s = &b->v[b->n++];
    s->loff = loff;
    s->len = len;
    s->nstripes = n;
    s->stripe_size = n > 1 ? ss : 0;
    s->area = xmalloc(n * sizeof *s->area);
    memcpy(s->area, area, n * sizeof *area);
}

static void truncate_to(struct segbuf *b, size_t n)
{
    while (b->n > n)
        free(b->v[--b->n].area);
}

/* Maps extents [rel, rel+cnt) of striped segment s to volume bytes from
 * loff.  Returns NULL, or why it cannot (malloc'ed). */
static char *map_striped(const struct lvm_state *st, const struct lvm_vg *vg,
                         const struct lvm_seg *s, uint64_t rel, uint64_t cnt, uint64_t loff,
                         struct segbuf *out)
{
    uint64_t E = vg->extent_size * 512, n = s->nareas, per = s->extent_count / n;
    uint64_t ss = s->stripe_size * 512, len, skip, row, width;
    uint64_t area[VVOL_MAX_STRIPES];
    if (ckd_mul_u64(&len, cnt, E) || ckd_mul_u64(&skip, rel, E) || ckd_mul_u64(&width, per, E))
        return xstrdup("its size overflows");
    if (n > 1) {
        if (ckd_mul_u64(&row, ss, n) || width % ss || skip % row)
            return xasprintf("a striped segment's geometry is not supported (stripe size "
                             "%" PRIu64 " bytes)", ss);
        skip /= n;
    }
    for (size_t i = 0; i < n; i++) {
        const struct lvm_area *a = &s->areas[i];
        if (a->pv == SIZE_MAX)
            return xasprintf("it names an unknown PV %s", a->name);
        const struct lvm_pv *pv = &vg->pvs[a->pv];
        if (pv->dev == SIZE_MAX)
            return xasprintf("PV %s (%s) is not on this disk", pv->name, pv->uuid);
        const struct lvm_dev *d = &st->devs[pv->dev];
        uint64_t pvoff, end;
        if (ckd_mul_u64(&pvoff, a->start, E) || ckd_add_u64(&pvoff, pvoff, pv->pe_start * 512) ||
            ckd_add_u64(&end, width, pvoff) || end > d->size)
            return xasprintf("its extents on PV %s lie past the end of %s", pv->name, d->name);
        area[i] = d->base + pvoff + skip;
    }
    push(out, loff, len, (uint32_t)n, ss, area);
    return NULL;
}

static const struct lvm_lv *find_lv(const struct lvm_vg *vg, const char *name)
{
    for (size_t i = 0; i < vg->nlvs; i++)
        if (!strcmp(vg->lvs[i].name, name))
            return &vg->lvs[i];
    return NULL;
}

/* Maps extents [le, le+cnt) of a leg LV (linear or striped segments only)
 * to volume bytes from loff. */
static char *map_leg(const struct lvm_state *st, const struct lvm_vg *vg,
                     const struct lvm_lv *leg, uint64_t le, uint64_t cnt, uint64_t loff,
                     struct segbuf *out)
{
    uint64_t E = vg->extent_size * 512, end = le + cnt, at = le;
    if (leg->reason)
        return xasprintf("leg %s: %s", leg->name, leg->reason);
    if (end < le || end > leg->extents)
        return xasprintf("leg %s is shorter than the LV", leg->name);
    for (size_t i = 0; i < leg->nsegs && at < end; i++) {
        const struct lvm_seg *s = &leg->segs[i];
        if (s->start_extent + s->extent_count <= at)
            continue;
        if (strcmp(s->type, "striped"))
            return xasprintf("leg %s has a %s segment", leg->name, s->type);
        uint64_t k = VMFS_MIN(end, s->start_extent + s->extent_count) - at;
        char *r = map_striped(st, vg, s, at - s->start_extent, k, loff + (at - le) * E, out);
        if (r) {
            char *w = xasprintf("leg %s: %s", leg->name, r);
            free(r);
            return w;
        }
        at += k;
    }
    return NULL;
}

/* raid1 lists rmeta/rimage pairs, mirror lists images: the data legs. */
static bool is_data_leg(const struct lvm_seg *s, size_t i)
{
    if (strcmp(s->type, "raid1"))
        return true;
    bool paired = s->nareas % 2 == 0 && strstr(s->areas[0].name, "_rmeta_");
    return !paired || i % 2 == 1;
}

static char *map_mirrored(const struct lvm_state *st, struct lvm_vg *vg, struct lvm_seg *s,
                          uint64_t loff, struct segbuf *out)
{
    char *why = NULL;
    size_t mark = out->n;
    for (size_t i = 0; i < s->nareas; i++) {
        if (!is_data_leg(s, i))
            continue;
        const struct lvm_lv *leg = find_lv(vg, s->areas[i].name);
        char *r = leg ? map_leg(st, vg, leg, s->areas[i].start, s->extent_count, loff, out)
                      : xasprintf("leg %s is not in the metadata", s->areas[i].name);
        if (!r) {
            free(why);
            s->used_leg = leg->name;
            return NULL;
        }
        truncate_to(out, mark);
        free(why);
        why = r;
    }
    if (!why)
        return xstrdup("it has no data legs");
    char *w = xasprintf("no leg can be read (%s)", why);
    free(why);
    return w;
}

static const char *unsupported(const char *type)
{
    static const struct { const char *type, *why; } t[] = {
        {"thin", "thin LV: its blocks are mapped by the thin pool's metadata, which vmfs "
                 "does not read"},
        {"thin-pool", "thin pool: it holds thin LVs' blocks, not a volume of its own"},
        {"cache", "cached LV: not supported"},
        {"cache-pool", "cache pool: not a volume of its own"},
        {"writecache", "writecache LV: not supported"},
        {"vdo", "VDO LV (compressed and deduplicated): not supported"},
        {"vdo-pool", "VDO pool: not a volume of its own"},
        {"snapshot", "snapshot mapping: not a volume of its own"},
        {"integrity", "integrity LV: not supported"},
        {"error", "error segment: reads fail by design"},
        {"zero", "zero segment: not supported"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(t); i++)
        if (!strcmp(t[i].type, type))
            return t[i].why;
    return NULL;
}

/* Maps a whole LV; on success its segments are in out. */
static char *map_lv(const struct lvm_state *st, struct lvm_vg *vg, struct lvm_lv *lv,
                    struct segbuf *out)
{
    uint64_t E = vg->extent_size * 512, loff = 0, size;
    if (lv->reason)
        return xstrdup(lv->reason);
    if (ckd_mul_u64(&size, lv->extents, E))
        return xstrdup("its size overflows");
    for (size_t i = 0; i < lv->nsegs; i++) {
        struct lvm_seg *s = &lv->segs[i];
        const char *u = unsupported(s->type);
        char *r;
        if (u)
            r = xstrdup(u);
        else if (!strcmp(s->type, "striped"))
            r = map_striped(st, vg, s, 0, s->extent_count, loff, out);
        else if (!strcmp(s->type, "raid1") || !strcmp(s->type, "mirror"))
            r = map_mirrored(st, vg, s, loff, out);
        else
            r = xasprintf("segment type %s is not supported", s->type);
        if (r)
            return r;
        loff += s->extent_count * E;
    }
    return NULL;
}

/* An LVM name usable as a path component. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 127 || !strcmp(s, ".") || !strcmp(s, "..") || s[0] == '-')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("+_.-", *s)))
            return false;
    return true;
}

static void mark_snapshots(struct lvm_vg *vg)
{
    for (size_t i = 0; i < vg->nlvs; i++)
        for (size_t k = 0; k < vg->lvs[i].nsegs; k++) {
            const struct lvm_seg *s = &vg->lvs[i].segs[k];
            struct lvm_lv *cow = s->cow ? (struct lvm_lv *)find_lv(vg, s->cow) : NULL;
            if (cow && !cow->reason)
                cow->reason = xstrdup("snapshot: the LV holds only the copy-on-write "
                                      "exceptions; the snapshot's view is not rebuilt");
        }
}

static void free_segbuf(struct segbuf *b)
{
    truncate_to(b, 0);
    free(b->v);
}

/* Maps every LV; the readable visible ones become volumes lvm/VG/LV. */
static void add_lv_volumes(struct vl *vl, struct lvm_state *st, struct lvm_vg *vg)
{
    uint64_t E = vg->extent_size * 512;
    bool named = valid_name(vg->name);
    if (!named)
        vl_problem(vl, "LVM: VG name \"%s\" cannot be a directory name; its LVs are not shown",
                   vg->name);
    mark_snapshots(vg);
    for (size_t i = 0; i < vg->nlvs; i++) {
        struct lvm_lv *lv = &vg->lvs[i];
        struct segbuf b = {0};
        char *why = map_lv(st, vg, lv, &b);
        if (why) {
            if (lv->reason)
                free(why);
            else
                lv->reason = why;
            free_segbuf(&b);
            continue;
        }
        if (!lv->visible || !named) {
            free_segbuf(&b);
            continue;
        }
        char *path = xasprintf("lvm/%s/%s", vg->name, lv->name);
        if (!valid_name(lv->name) || vlayout_find(&vl->pub, path)) {
            vl_problem(vl, "LVM: LV \"%s\" of VG %s %s; not shown", lv->name, vg->name,
                       valid_name(lv->name) ? "repeats another's name" : "cannot be a file name");
            free(path);
            free_segbuf(&b);
            continue;
        }
        lv->vol = vl_add_volume(vl, VVOL_LV, path, lv->extents * E, b.v, b.n);
        vl_probe_content(vl, &vl->pub.vols[lv->vol], &lv->content);
        if (lv->content.type && (!strcmp(lv->content.type, "LVM2 PV") ||
                                 strstr(lv->content.type, "partition table")))
            lv->content.note = "not followed: vmfs reads one level of volumes";
    }
}

static void report_missing(struct vl *vl, const struct lvm_vg *vg)
{
    size_t miss = 0;
    const struct lvm_pv *first = NULL;
    for (size_t i = 0; i < vg->npvs; i++)
        if (vg->pvs[i].dev == SIZE_MAX) {
            first = first ? first : &vg->pvs[i];
            miss++;
        }
    if (miss)
        vl_problem(vl, "LVM: VG %s: %zu of its %zu PVs %s not on this disk (%s, uuid %s%s); LVs "
                   "using them are not shown", vg->name, miss, vg->npvs, miss > 1 ? "are" : "is",
                   first->name, first->uuid, miss > 1 ? ", …" : "");
}

/* ---- the scan ----------------------------------------------------------- */

static void add_dev(struct lvm_state *st, const char *name, uint64_t base, uint64_t size)
{
    struct lvm_dev *d = &st->devs[st->ndevs++];
    snprintf(d->name, sizeof d->name, "%s", name);
    d->base = base;
    d->size = size;
}

static void find_devices(struct vl *vl, struct lvm_state *st)
{
    st->devs = xcalloc(vl->nparts + 1, sizeof *st->devs);
    if (vl->pt == VPT_NONE)
        add_dev(st, "disk", 0, vl->disk->size);
    for (size_t i = 0; i < vl->nparts; i++) {
        const struct vpart *p = &vl->parts[i];
        if (p->vol != SIZE_MAX && p->kind != VP_EXTENDED)
            add_dev(st, vl->pub.vols[p->vol].path, p->start, p->avail);
    }
    for (size_t i = 0; i < st->ndevs; i++) {
        struct lvm_dev *d = &st->devs[i];
        find_label(vl, d);
        for (size_t k = 0; d->labelled && k < i; k++)
            if (st->devs[k].labelled && !strcmp(st->devs[k].uuid, d->uuid)) {
                vl_problem(vl, "LVM: %s has the same PV uuid as %s (a copy?); %s is ignored",
                           d->name, st->devs[k].name, d->name);
                d->labelled = false;
            }
    }
}

/* Builds one VG from the copies of it (all with the same VG id). */
static void build_vg(struct vl *vl, struct lvm_state *st, const struct lvm_copy *c,
                     const size_t *idx, size_t n)
{
    if (!n)
        return;
    struct lvm_vg *vg = &st->vgs[st->nvgs++];
    const struct lvm_copy *best = NULL, *newest = NULL, *older = NULL;
    for (size_t k = 0; k < n; k++) {
        const struct lvm_copy *x = &c[idx[k]];
        if (!newest || x->seqno > newest->seqno)
            newest = x;
        if (x->crc_ok && (!best || x->seqno > best->seqno))
            best = x;
    }
    for (size_t k = 0; best && k < n; k++)
        if (c[idx[k]].crc_ok && c[idx[k]].seqno < best->seqno)
            older = &c[idx[k]];
    vg->name = xstrdup(newest->vgname);
    vg->uuid = xstrdup(newest->vgid);
    vg->seqno = newest->seqno;
    if (!best) {
        vg->reason = xstrdup("every metadata copy has a bad checksum");
        vl_problem(vl, "LVM: VG %s: every metadata copy has a bad checksum; not shown", vg->name);
        return;
    }
    if (newest->seqno > best->seqno)
        vl_problem(vl, "LVM: VG %s: the newest metadata (seqno %" PRIu64 " in %s) has a bad "
                   "checksum; the older seqno %" PRIu64 " from %s is used", vg->name,
                   newest->seqno, st->devs[newest->dev].name, best->seqno,
                   st->devs[best->dev].name);
    else if (older)
        vl_problem(vl, "LVM: VG %s: metadata copies disagree (seqno %" PRIu64 " in %s, %" PRIu64
                   " in %s); the newest is used", vg->name, best->seqno,
                   st->devs[best->dev].name, older->seqno, st->devs[older->dev].name);
    struct lt_doc doc;
    const struct lt_node *sec = parse_copy(vl, &st->devs[best->dev], best, &doc);
    vg->seqno = best->seqno;
    vg->source = st->devs[best->dev].name;
    free(vg->name);
    vg->name = xstrdup(best->vgname);
    if (!sec) {
        vg->reason = xstrdup("its metadata cannot be read");
    } else {
        parse_vg(vl, st, vg, &doc, sec);
        if (!vg->reason) {
            report_missing(vl, vg);
            add_lv_volumes(vl, st, vg);
        }
    }
    lt_free(&doc);
}

static void build_vgs(struct vl *vl, struct lvm_state *st, struct lvm_copy *c, size_t nc)
{
    bool *done = xcalloc(nc, sizeof *done);
    size_t *idx = xcalloc(nc, sizeof *idx);
    st->vgs = xcalloc(nc, sizeof *st->vgs);
    for (size_t i = 0; i < nc; i++) {
        if (done[i] || !c[i].vgid)
            continue;
        size_t n = 0;
        for (size_t j = i; j < nc; j++)
            if (!done[j] && c[j].vgid && !strcmp(c[j].vgid, c[i].vgid)) {
                done[j] = true;
                idx[n++] = j;
            }
        build_vg(vl, st, c, idx, n);
    }
    free(idx);
    free(done);
}

void lvm_scan(struct vl *vl)
{
    struct lvm_state *st = xcalloc(1, sizeof *st);
    find_devices(vl, st);
    size_t nlab = 0;
    for (size_t i = 0; i < st->ndevs; i++)
        nlab += st->devs[i].labelled;
    if (!nlab) {
        lvm_free(st);
        return;
    }
    vl->lvm = st;
    struct lvm_copy *c = xcalloc(LVM_MAX_COPIES, sizeof *c);
    size_t nc = 0;
    for (size_t i = 0; i < st->ndevs; i++)
        for (unsigned k = 0; st->devs[i].labelled && k < st->devs[i].nmda; k++)
            read_mda(vl, &st->devs[i], i, k, c, &nc);
    for (size_t i = 0; i < nc; i++)
        identify_copy(vl, st, &c[i]);
    build_vgs(vl, st, c, nc);
    for (size_t i = 0; i < nc; i++) {
        free(c[i].vgname);
        free(c[i].vgid);
    }
    free(c);
}

/* ---- facts -------------------------------------------------------------- */

static void dashed_uuid(const char *u, char out[40])
{
    static const int grp[] = {6, 4, 4, 4, 4, 4, 6};
    size_t n = 0, k = 0;
    for (size_t g = 0; g < VMFS_ARRAY_SIZE(grp); g++) {
        for (int i = 0; i < grp[g] && u[k]; i++)
            out[n++] = u[k++];
        if (g + 1 < VMFS_ARRAY_SIZE(grp))
            out[n++] = '-';
    }
    out[n] = 0;
}

static void report_labels(const struct lvm_state *st, struct rep *arr)
{
    for (size_t i = 0; i < st->ndevs; i++) {
        const struct lvm_dev *d = &st->devs[i];
        if (!d->labelled)
            continue;
        char u[40];
        struct rep *o = rep_add_object(arr);
        rep_set_str(o, "device", d->name);
        dashed_uuid(d->uuid, u);
        rep_set_str(o, "uuid", u);
        rep_set_size(o, "device_size", d->label_dev_size);
        if (d->has_da)
            rep_set_u64(o, "data_offset", d->da_off);
        struct rep *m = rep_set_array(o, "metadata_areas");
        for (unsigned k = 0; k < d->nmda; k++) {
            struct rep *a = rep_add_object(m);
            rep_set_u64(a, "offset", d->mda_off[k]);
            rep_set_size(a, "size", d->mda_size[k]);
        }
    }
}

static void report_seg(const struct lvm_state *st, const struct lvm_vg *vg,
                       const struct lvm_seg *s, struct rep *o)
{
    uint64_t E = vg->extent_size * 512;
    bool striped = !strcmp(s->type, "striped");
    rep_set_str(o, "type", striped && s->nareas == 1 ? "linear" : s->type);
    rep_set_u64(o, "start_extent", s->start_extent);
    rep_set_u64(o, "extent_count", s->extent_count);
    if (striped) {
        struct rep *arr = rep_set_array(o, "stripes");
        for (size_t i = 0; i < s->nareas; i++) {
            const struct lvm_area *a = &s->areas[i];
            struct rep *x = rep_add_object(arr);
            rep_set_str(x, "pv", a->name);
            rep_set_u64(x, "start_pe", a->start);
            const struct lvm_pv *pv = a->pv != SIZE_MAX ? &vg->pvs[a->pv] : NULL;
            uint64_t off;
            if (!pv || ckd_mul_u64(&off, a->start, E) || ckd_add_u64(&off, off, pv->pe_start * 512))
                continue;
            rep_set_u64(x, "pv_offset", off);
            if (pv->dev != SIZE_MAX)
                rep_set_u64(x, "disk_offset", st->devs[pv->dev].base + off);
        }
        if (s->nareas > 1)
            rep_set_size(o, "stripe_size", s->stripe_size * 512);
    } else if (s->nareas) {
        struct rep *arr = rep_set_array(o, "legs");
        for (size_t i = 0; i < s->nareas; i++)
            if (is_data_leg(s, i))
                rep_add_str(arr, s->areas[i].name);
        if (s->used_leg)
            rep_set_str(o, "used_leg", s->used_leg);
    }
}

static void report_lv(const struct lvm_state *st, const struct lvm_vg *vg,
                      const struct lvm_lv *lv, const struct vl *vl, struct rep *o)
{
    rep_set_str(o, "name", lv->name);
    rep_set_str(o, "uuid", lv->uuid);
    if (lv->vol != SIZE_MAX)
        rep_set_str(o, "path", vl->pub.vols[lv->vol].path);
    else
        rep_set_null(o, "path");
    rep_set_bool(o, "visible", lv->visible);
    uint64_t size;
    if (!ckd_mul_u64(&size, lv->extents, vg->extent_size * 512))
        rep_set_size(o, "size", size);
    rep_set_bool(o, "readable", !lv->reason);
    if (lv->reason)
        rep_set_str(o, "reason", lv->reason);
    if (lv->vol != SIZE_MAX) {
        rep_set_str(o, "content", lv->content.type);
        if (lv->content.label[0])
            rep_set_str(o, "label", lv->content.label);
        if (lv->content.uuid[0])
            rep_set_str(o, "fs_uuid", lv->content.uuid);
        if (lv->content.note)
            rep_set_str(o, "content_note", lv->content.note);
    }
    struct rep *arr = rep_set_array(o, "segments");
    for (size_t i = 0; i < lv->nsegs; i++)
        report_seg(st, vg, &lv->segs[i], rep_add_object(arr));
}

static void report_vg(const struct lvm_state *st, const struct lvm_vg *vg, const struct vl *vl,
                      struct rep *o)
{
    rep_set_str(o, "name", vg->name);
    rep_set_str(o, "uuid", vg->uuid);
    rep_set_u64(o, "seqno", vg->seqno);
    rep_set_size(o, "extent_size", vg->extent_size * 512);
    if (vg->source)
        rep_set_str(o, "metadata_from", vg->source);
    rep_set_bool(o, "readable", !vg->reason);
    if (vg->reason)
        rep_set_str(o, "reason", vg->reason);
    struct rep *pvs = rep_set_array(o, "pvs");
    for (size_t i = 0; i < vg->npvs; i++) {
        const struct lvm_pv *pv = &vg->pvs[i];
        struct rep *p = rep_add_object(pvs);
        rep_set_str(p, "name", pv->name);
        rep_set_str(p, "uuid", pv->uuid);
        rep_set_str(p, "device", pv->dev != SIZE_MAX ? st->devs[pv->dev].name : NULL);
        rep_set_u64(p, "pe_start", pv->pe_start * 512);
        rep_set_u64(p, "pe_count", pv->pe_count);
        if (pv->dev != SIZE_MAX)
            rep_set_u64(p, "disk_offset", st->devs[pv->dev].base + pv->pe_start * 512);
        rep_set_bool(p, "missing", pv->dev == SIZE_MAX);
    }
    struct rep *lvs = rep_set_array(o, "lvs");
    for (size_t i = 0; i < vg->nlvs; i++)
        report_lv(st, vg, &vg->lvs[i], vl, rep_add_object(lvs));
}

void lvm_report(const struct vl *vl, struct rep *root)
{
    const struct lvm_state *st = vl->lvm;
    struct rep *l = rep_set_object(root, "lvm");
    report_labels(st, rep_set_array(l, "physical_volumes"));
    struct rep *vgs = rep_set_array(l, "volume_groups");
    for (size_t i = 0; i < st->nvgs; i++)
        report_vg(st, &st->vgs[i], vl, rep_add_object(vgs));
}

void lvm_free(struct lvm_state *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->nvgs; i++) {
        struct lvm_vg *vg = &st->vgs[i];
        for (size_t k = 0; k < vg->npvs; k++) {
            free(vg->pvs[k].name);
            free(vg->pvs[k].uuid);
        }
        free(vg->pvs);
        for (size_t k = 0; k < vg->nlvs; k++) {
            struct lvm_lv *lv = &vg->lvs[k];
            for (size_t j = 0; j < lv->nsegs; j++) {
                struct lvm_seg *s = &lv->segs[j];
                for (size_t a = 0; a < s->nareas; a++)
                    free(s->areas[a].name);
                free(s->areas);
                free(s->type);
                free(s->cow);
            }
            free(lv->segs);
            free(lv->name);
            free(lv->uuid);
            free(lv->reason);
        }
        free(vg->lvs);
        free(vg->name);
        free(vg->uuid);
        free(vg->reason);
    }
    free(st->vgs);
    free(st->devs);
    free(st);
}
