/* vmfs — the VMDK format driver.
 *
 * Reads hosted sparse files (monolithicSparse, streamOptimized with
 * compressed grains and markers, the grain directory in the footer), text
 * descriptors with any mix of FLAT, VMFS, VMFSRDM, SPARSE, VMFSSPARSE (KDMV
 * or COWD) and ZERO extents (monolithicFlat, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat, vmfs, vmfsThin, vmfsSparse), and delta disks that name
 * their parent with parentFileNameHint.  docs/formats/vmdk.md describes the
 * layout and where vmfs departs from qemu.
 *
 * Threads: open and close run alone.  map, map_alloc, decode and report run
 * on many threads at once and only read state fixed at open; grain
 * directory slices, grain tables and decompressed grains come from the
 * shared cache, the deflate decompressor is per thread.  The only lock, plock, guards the
 * set of problems already reported and is taken on the error path alone. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>

#include <libdeflate.h>

#include "vmfs/cache.h"
#include "vmfs/fmt.h"
#include "vmfs/image.h"   /* the layer list, for the parentCID check */
#include "vmfs/report.h"
#include "vmdk.h"

#define GD_SLICE 4096u          /* bytes of grain directory per cache entry */
#define MAX_REPORTED 64         /* distinct damage reports per layer */

/* Cache keys: kind in bits 62-63, extent index in 50-61, a sector or slice
 * number below. */
enum ckind { CK_GD = 0, CK_RGD = 1, CK_GT = 2, CK_GRAIN = 3 };

static uint64_t ckey(enum ckind k, unsigned ext, uint64_t n)
{
    return (uint64_t)k << 62 | (uint64_t)ext << 50 | (n & ((1ull << 50) - 1));
}

/* One sparse extent's geometry, fixed at open. */
struct vsparse {
    struct vmdk_sparse_hdr h;
    bool footer;             /* the header came from the footer (GD at end) */
    bool compressed, markers, zero_grain;
    uint64_t grain_bytes;    /* bytes per grain */
    uint64_t span;           /* bytes of disk one grain table covers */
    uint64_t gd[2];          /* byte offsets of the GD and redundant GD (0: none) */
    uint64_t gd_avail[2];    /* entries of each inside the file */
};

struct vext {
    enum vmdk_access access;
    enum vmdk_etype type;
    char type_name[16];
    unsigned idx, line;
    uint64_t start, size;    /* bytes of the virtual disk */
    uint64_t desc_sectors;   /* as the descriptor says (0: none) */
    char *name;              /* file as the descriptor names it, or NULL */
    char *prefix;            /* "extent NAME: ", or NULL for the layer's file */
    struct vsrc *src;        /* NULL: missing or not needed */
    bool own_src;            /* false when src is the layer's own file */
    uint64_t flat_off;       /* flat types: byte offset in src */
    uint64_t file_end;       /* flat types: disk offset where src ends */
    struct vsparse *sp;      /* sparse types */
    const char *state;       /* NULL when readable, else why not */
};

struct vmdk {
    struct vlayer *l;
    bool sparse_file;        /* the layer's file is a sparse extent itself */
    bool have_desc;
    struct vmdk_desc desc;
    struct vext *ext;
    size_t next;

    pthread_mutex_t plock;   /* guards rep, nrep, rep_full */
    uint64_t rep[MAX_REPORTED];
    size_t nrep;
    bool rep_full;
};

/* ------------------------------------------------------------------------
 * Problems: each distinct damage once, a bounded number of them
 * ---------------------------------------------------------------------- */

enum pkind { P_GD = 1, P_GT, P_GRAIN, P_DECODE, P_READ };

static uint64_t pkey(enum pkind k, unsigned ext, uint64_t n)
{
    return (uint64_t)k << 56 | (uint64_t)ext << 44 | (n & ((1ull << 44) - 1));
}

static bool first_report(struct vmdk *v, uint64_t key)
{
    bool first = true, overflow = false;
    pthread_mutex_lock(&v->plock);
    for (size_t i = 0; i < v->nrep && first; i++)
        if (v->rep[i] == key)
            first = false;
    if (first && v->nrep < MAX_REPORTED) {
        v->rep[v->nrep++] = key;
    } else if (first) {
        first = false;
        overflow = !v->rep_full;
        v->rep_full = true;
    }
    pthread_mutex_unlock(&v->plock);
    if (overflow)
        vlayer_problem(v->l, "more damage found; further problems are not listed");
    return first;
}

/* How an extent is named in messages: its file name. */
static const char *ext_label(const struct vext *x)
{
    return x->name ? x->name : x->type == VMDK_ET_ZERO ? "(zero extent)" : "(no file)";
}

/* What messages about an extent start with: nothing for the layer's own
 * file, "extent NAME: " for an extent named by a descriptor. */
static const char *ext_prefix(const struct vext *x)
{
    return x->prefix ? x->prefix : "";
}

/* ------------------------------------------------------------------------
 * Per-thread decompressor
 * ---------------------------------------------------------------------- */

static __thread struct libdeflate_decompressor *tls_dec;
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static bool tls_key_ok;

static void tls_free(void *p) { libdeflate_free_decompressor(p); }

static void tls_make_key(void) { tls_key_ok = pthread_key_create(&tls_key, tls_free) == 0; }

/* This thread's decompressor (freed when the thread exits), or NULL. */
static struct libdeflate_decompressor *decompressor(void)
{
    if (!tls_dec) {
        pthread_once(&tls_once, tls_make_key);
        tls_dec = libdeflate_alloc_decompressor();
        if (tls_dec && tls_key_ok)
            pthread_setspecific(tls_key, tls_dec);
    }
    return tls_dec;
}

/* ------------------------------------------------------------------------
 * Cached tables: a cursor holds the last GD slice and grain table used
 * ---------------------------------------------------------------------- */

struct held {
    struct vcache_entry *ent;
    const uint8_t *data;
    uint64_t key;
};

struct cursor {
    struct held gd, gt;
};

static void held_release(struct held *h)
{
    if (h->ent)
        vcache_release(h->ent);
    h->ent = NULL;
}

static void cursor_release(struct cursor *c)
{
    held_release(&c->gd);
    held_release(&c->gt);
}

struct read_fill {
    struct vsrc *src;
    uint64_t off;
};

static int fill_read(void *arg, void *buf, size_t size)
{
    struct read_fill *a = arg;
    return vsrc_pread(a->src, buf, size, a->off);
}

/* Makes h hold size bytes at off of src under key. */
static int hold(struct vmdk *v, struct held *h, uint64_t key, struct vsrc *src,
                uint64_t off, size_t size)
{
    if (h->ent && h->key == key)
        return 0;
    held_release(h);
    struct read_fill a = {src, off};
    const void *data;
    int r = vcache_get(v->l->cache_owner, key, size, fill_read, &a, &data, &h->ent);
    if (r < 0) {
        h->ent = NULL;
        return r;
    }
    h->data = data;
    h->key = key;
    return 0;
}

/* ------------------------------------------------------------------------
 * Grain lookup
 * ---------------------------------------------------------------------- */

/* G_NOTABLE: no grain table, the whole span is unallocated; G_BAD: the span
 * cannot be read (reported). */
enum gstate { G_NOTABLE, G_UNALLOC, G_ZERO, G_DATA, G_COMPRESSED, G_BAD };

/* Entry gi of grain directory copy w (0 primary, 1 redundant), in sectors. */
static int gd_entry(struct vmdk *v, struct cursor *c, struct vext *x, int w, uint64_t gi,
                    uint32_t *val)
{
    struct vsparse *sp = x->sp;
    uint64_t slice = gi * 4 / GD_SLICE;
    uint64_t soff = sp->gd[w] + slice * GD_SLICE;
    size_t size = (size_t)VMFS_MIN((uint64_t)GD_SLICE, (sp->gd_avail[w] * 4) - slice * GD_SLICE);
    int r = hold(v, &c->gd, ckey(w ? CK_RGD : CK_GD, x->idx, slice), x->src, soff, size);
    if (r < 0)
        return r;
    *val = get_le32(c->gd.data + (gi * 4) % GD_SLICE);
    return 0;
}

/* The grain table of directory entry gi: *gt_off is its byte offset, 0 when
 * the whole span is unallocated.  Returns false when the span is damaged
 * (reported once). */
static bool gt_lookup(struct vmdk *v, struct cursor *c, struct vext *x, uint64_t gi,
                      uint64_t *gt_off)
{
    struct vsparse *sp = x->sp;
    uint64_t gt_bytes = (uint64_t)sp->h.gtes * 4;
    uint32_t first_bad = 0;
    bool seen = false;
    int rerr = 0;
    for (int w = 0; w < 2; w++) {
        uint32_t e;
        if (!sp->gd[w] || gi >= sp->gd_avail[w])
            continue;   /* outside the file: said once at open */
        int r = gd_entry(v, c, x, w, gi, &e);
        if (r < 0) {
            rerr = r;
            continue;
        }
        if (e == 0) {
            *gt_off = 0;
            return true;
        }
        if (range_in((uint64_t)e * VMDK_SECTOR, gt_bytes, x->src->size)) {
            *gt_off = (uint64_t)e * VMDK_SECTOR;
            return true;
        }
        if (!seen)
            first_bad = e;
        seen = true;
    }
    if ((seen || rerr) && first_report(v, pkey(P_GD, x->idx, gi))) {
        uint64_t at = x->start + gi * sp->span;
        if (seen)
            vlayer_problem(v->l, "%sthe grain table for disk offset 0x%" PRIx64
                           " (at sector %" PRIu32 ") lies past the end of the file",
                           ext_prefix(x), at, first_bad);
        else
            vlayer_problem(v->l, "%scannot read the grain directory entry for disk offset 0x%"
                           PRIx64 ": %s", ext_prefix(x), at, strerror(-rerr));
    }
    return false;
}

/* What a grain table entry says of its grain. */
static enum gstate gte_state(const struct vsparse *sp, uint32_t gte)
{
    if (gte == 0)
        return G_UNALLOC;
    if (gte == VMDK_GTE_ZEROED && sp->zero_grain)
        return G_ZERO;
    return sp->compressed ? G_COMPRESSED : G_DATA;
}

/* Whether a compressed grain's data (at sector gte) start inside the file. */
static bool comp_in_file(const struct vext *x, uint32_t gte)
{
    return (uint64_t)gte * VMDK_SECTOR < x->src->size;
}

/* The grain table entry of grain gr (index in the extent). */
static enum gstate grain_lookup(struct vmdk *v, struct cursor *c, struct vext *x, uint64_t gr,
                                uint32_t *gte)
{
    struct vsparse *sp = x->sp;
    uint64_t gi = gr / sp->h.gtes, gt_off;
    if (!gt_lookup(v, c, x, gi, &gt_off))
        return G_BAD;
    if (!gt_off)
        return G_NOTABLE;
    int r = hold(v, &c->gt, ckey(CK_GT, x->idx, gt_off / VMDK_SECTOR), x->src, gt_off,
                 (size_t)sp->h.gtes * 4);
    if (r < 0) {
        if (first_report(v, pkey(P_READ, x->idx, gi)))
            vlayer_problem(v->l, "%scannot read the grain table at 0x%" PRIx64 ": %s",
                           ext_prefix(x), gt_off, strerror(-r));
        return G_BAD;
    }
    *gte = get_le32(c->gt.data + (gr % sp->h.gtes) * 4);
    return gte_state(sp, *gte);
}

/* How many grains from gr on (at least 1, at most max, all in gr's grain
 * table, which c holds) are like gr, state s and entry gte: unallocated or
 * zero alike, compressed grains whose data start inside the file, data
 * grains that follow one another in the file.  One step for what would be
 * one piece per grain. */
static uint64_t same_grains(struct cursor *c, struct vext *x, uint64_t gr, enum gstate s,
                            uint32_t gte, uint64_t max)
{
    struct vsparse *sp = x->sp;
    uint64_t idx = gr % sp->h.gtes, n = 1;
    uint64_t gsec = sp->grain_bytes / VMDK_SECTOR;
    max = VMFS_MIN(max, sp->h.gtes - idx);
    const uint8_t *e = c->gt.data + (idx + 1) * 4;
    for (; n < max; n++, e += 4) {
        uint32_t g = get_le32(e);
        if (gte_state(sp, g) != s)
            break;
        if (s == G_DATA && (uint64_t)g != gte + n * gsec)
            break;
        if (s == G_COMPRESSED && !comp_in_file(x, g))
            break;
    }
    return n;
}

/* ------------------------------------------------------------------------
 * Mapping
 * ---------------------------------------------------------------------- */

struct piece {
    enum vrun_kind kind;
    uint64_t len;
    struct vsrc *src;
    uint64_t src_off;
};

static void piece_set(struct piece *p, enum vrun_kind kind, uint64_t len)
{
    p->kind = kind;
    p->len = len;
    p->src = NULL;
    p->src_off = 0;
}

/* The extent holding disk offset pos (pos < disk size). */
static struct vext *find_ext(struct vmdk *v, uint64_t pos)
{
    size_t lo = 0, hi = v->next;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->ext[mid].start <= pos)
            lo = mid;
        else
            hi = mid;
    }
    return &v->ext[lo];
}

/* A flat extent: the file's bytes, errors past the end of a short file.
 * (Host holes are found by map_alloc only.) */
static void flat_piece(struct vext *x, uint64_t pos, uint64_t stop, struct piece *p)
{
    if (pos >= x->file_end) {
        piece_set(p, VRUN_ERROR, stop - pos);
        return;
    }
    piece_set(p, VRUN_DATA, VMFS_MIN(stop, x->file_end) - pos);
    p->src = x->src;
    p->src_off = x->flat_off + (pos - x->start);
}

static void grain_problem(struct vmdk *v, struct vext *x, uint64_t gr, const char *what,
                          uint32_t gte)
{
    if (first_report(v, pkey(P_GRAIN, x->idx, gr)))
        vlayer_problem(v->l, "%sthe grain at disk offset 0x%" PRIx64 " (file sector %" PRIu32
                       ") %s", ext_prefix(x), x->start + gr * x->sp->grain_bytes, gte, what);
}

static void compressed_piece(struct vmdk *v, struct vext *x, uint64_t gr, uint32_t gte,
                             uint64_t pos, uint64_t gend, struct piece *p)
{
    if (!comp_in_file(x, gte)) {
        grain_problem(v, x, gr, "lies past the end of the file", gte);
        piece_set(p, VRUN_ERROR, gend - pos);
    } else {
        piece_set(p, VRUN_DECODE, gend - pos);
    }
}

/* A sparse extent, from pos up to stop (both inside x). */
static void sparse_piece(struct vmdk *v, struct cursor *c, struct vext *x, uint64_t pos,
                         uint64_t stop, struct piece *p)
{
    struct vsparse *sp = x->sp;
    uint64_t rel = pos - x->start;
    uint64_t gr = rel / sp->grain_bytes;
    uint64_t in = rel % sp->grain_bytes;
    uint64_t gend = VMFS_MIN(stop, pos + (sp->grain_bytes - in));
    uint64_t span_end = VMFS_MIN(stop, x->start + (gr / sp->h.gtes + 1) * sp->span);
    uint32_t gte = 0;
    enum gstate s = grain_lookup(v, c, x, gr, &gte);
    if (s != G_NOTABLE && s != G_BAD &&
        (s != G_COMPRESSED || comp_in_file(x, gte))) {
        uint64_t grains = (stop - x->start - 1) / sp->grain_bytes + 1 - gr;
        uint64_t n = same_grains(c, x, gr, s, gte, grains);
        uint64_t run_end = VMFS_MIN(stop, x->start + (gr + n) * sp->grain_bytes);
        /* A data run that leaves the file is judged grain by grain. */
        if (s != G_DATA || range_in((uint64_t)gte * VMDK_SECTOR + in, run_end - pos, x->src->size))
            gend = run_end;
    }
    switch (s) {
    case G_NOTABLE:
        piece_set(p, VRUN_BACKING, span_end - pos);
        return;
    case G_BAD:
        piece_set(p, VRUN_ERROR, span_end - pos);
        return;
    case G_UNALLOC:
        piece_set(p, VRUN_BACKING, gend - pos);
        return;
    case G_ZERO:
        piece_set(p, VRUN_ZERO, gend - pos);
        return;
    case G_COMPRESSED:
        compressed_piece(v, x, gr, gte, pos, gend, p);
        return;
    case G_DATA:
        break;
    }
    uint64_t host = (uint64_t)gte * VMDK_SECTOR;
    if (!range_in(host + in, gend - pos, x->src->size)) {
        grain_problem(v, x, gr, "lies past the end of the file", gte);
        piece_set(p, VRUN_ERROR, gend - pos);
        return;
    }
    piece_set(p, VRUN_DATA, gend - pos);
    p->src = x->src;
    p->src_off = host + in;
}

/* Describes the disk from pos up to at most end as one piece. */
static void piece_at(struct vmdk *v, struct cursor *c, uint64_t pos, uint64_t end,
                     struct piece *p)
{
    struct vext *x = find_ext(v, pos);
    uint64_t stop = VMFS_MIN(end, x->start + x->size);
    if (x->type == VMDK_ET_ZERO)
        piece_set(p, VRUN_ZERO, stop - pos);
    else if (x->state)
        piece_set(p, VRUN_ERROR, stop - pos);
    else if (x->sp)
        sparse_piece(v, c, x, pos, stop, p);
    else
        flat_piece(x, pos, stop, p);
}

static bool run_extends(const struct vrun *run, const struct piece *p)
{
    if (run->kind != p->kind)
        return false;
    if (p->kind == VRUN_DATA)
        return run->src == p->src && run->src_off + run->len == p->src_off;
    return true;
}

static int vmdk_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct vmdk *v = l->priv;
    struct cursor c = {0};
    uint64_t pos = off, end = off + len;
    memset(run, 0, sizeof(*run));
    while (pos < end) {
        struct piece p;
        piece_at(v, &c, pos, end, &p);
        if (pos == off) {
            run->kind = p.kind;
            run->src = p.src;
            run->src_off = p.src_off;
            run->err = p.kind == VRUN_ERROR ? EIO : 0;
        } else if (!run_extends(run, &p)) {
            break;
        }
        run->len += p.len;
        pos += p.len;
    }
    cursor_release(&c);
    if (run->kind == VRUN_DECODE) {       /* only sparse extents decode */
        struct vext *x = find_ext(v, off);
        uint64_t gb = x->sp->grain_bytes;
        run->unit_off = x->start + (off - x->start) / gb * gb;
        run->unit_len = VMFS_MIN(gb, x->start + x->size - run->unit_off);
    }
    return 0;
}

/* For allocation questions: data runs narrowed to what the host file holds
 * (a flat extent on a sparse host file has holes). */
static int vmdk_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    int r = vmdk_map(l, off, len, run);
    return r < 0 ? r : vrun_refine_holes(run);
}

/* ------------------------------------------------------------------------
 * Compressed grains
 * ---------------------------------------------------------------------- */

struct grain_fill {
    struct vext *x;
    uint64_t host;       /* byte offset of the grain (its marker) */
    uint64_t need;       /* bytes the grain must inflate to */
    char why[112];
};

/* Reads and inflates one compressed grain (a zlib stream, behind a grain
 * marker when the extent has markers). */
static int fill_grain(void *arg, void *buf, size_t size)
{
    struct grain_fill *a = arg;
    struct vsrc *src = a->x->src;
    uint64_t max_in = 2 * a->x->sp->grain_bytes, data_off = a->host, data_len;
    if (a->x->sp->markers) {
        uint8_t m[12];
        if (!range_in(a->host, sizeof(m), src->size) ||
            vsrc_pread(src, m, sizeof(m), a->host) < 0) {
            snprintf(a->why, sizeof(a->why), "grain marker lies past the end of the file");
            return -EIO;
        }
        data_off += sizeof(m);
        data_len = get_le32(m + 8);
    } else {
        data_len = VMFS_MIN(max_in, src->size - a->host);
    }
    if (data_len == 0 || data_len > max_in) {
        snprintf(a->why, sizeof(a->why), "absurd compressed size %" PRIu64, data_len);
        return -EIO;
    }
    if (!range_in(data_off, data_len, src->size)) {
        snprintf(a->why, sizeof(a->why), "compressed data runs past the end of the file");
        return -EIO;
    }
    CLEANUP_FREE uint8_t *in = xmalloc((size_t)data_len);
    int r = vsrc_pread(src, in, (size_t)data_len, data_off);
    if (r < 0) {
        snprintf(a->why, sizeof(a->why), "cannot read the compressed data: %s", strerror(-r));
        return r;
    }
    struct libdeflate_decompressor *d = decompressor();
    if (!d)
        return -ENOMEM;
    size_t used = 0, got = 0;
    enum libdeflate_result res = libdeflate_zlib_decompress_ex(d, in, (size_t)data_len, buf,
                                                               size, &used, &got);
    if (res != LIBDEFLATE_SUCCESS) {
        snprintf(a->why, sizeof(a->why), "corrupt compressed data (%" PRIu64 " bytes at 0x%"
                 PRIx64 ")", data_len, data_off);
        return -EIO;
    }
    if (got < a->need) {
        snprintf(a->why, sizeof(a->why), "inflates to %zu bytes instead of %" PRIu64, got,
                 a->need);
        return -EIO;
    }
    memset((uint8_t *)buf + got, 0, size - got);
    return 0;
}

/* Copies n bytes from disk offset off (inside one compressed grain of x). */
static int decode_grain(struct vmdk *v, struct cursor *c, struct vext *x, uint64_t off,
                        uint8_t *out, size_t n)
{
    struct vsparse *sp = x->sp;
    uint64_t rel = off - x->start, gr = rel / sp->grain_bytes;
    uint32_t gte;
    if (grain_lookup(v, c, x, gr, &gte) != G_COMPRESSED)
        return -EIO;
    uint64_t gstart = gr * sp->grain_bytes;
    struct grain_fill a = {x, (uint64_t)gte * VMDK_SECTOR,
                           VMFS_MIN(sp->grain_bytes, x->size - gstart), ""};
    const void *data;
    struct vcache_entry *ent;
    int r = vcache_get(v->l->cache_owner, ckey(CK_GRAIN, x->idx, gte), (size_t)sp->grain_bytes,
                       fill_grain, &a, &data, &ent);
    if (r < 0) {
        if (r != -ENOMEM)
            grain_problem(v, x, gr, a.why[0] ? a.why : strerror(-r), gte);
        return r == -ENOMEM ? r : -EIO;
    }
    memcpy(out, (const uint8_t *)data + (rel - gstart), n);
    vcache_release(ent);
    return 0;
}

static int vmdk_decode(struct vlayer *l, void *buf, size_t len, uint64_t off)
{
    struct vmdk *v = l->priv;
    struct cursor c = {0};
    uint8_t *out = buf;
    int r = 0;
    while (len > 0 && r == 0) {
        struct vext *x = find_ext(v, off);
        if (!x->sp || x->state) {
            r = -EIO;
            break;
        }
        uint64_t in = (off - x->start) % x->sp->grain_bytes;
        uint64_t left = VMFS_MIN(x->sp->grain_bytes - in, x->start + x->size - off);
        size_t n = (size_t)VMFS_MIN((uint64_t)len, left);
        r = decode_grain(v, &c, x, off, out, n);
        out += n;
        off += n;
        len -= n;
    }
    cursor_release(&c);
    return r;
}

/* ------------------------------------------------------------------------
 * Opening sparse extents
 * ---------------------------------------------------------------------- */

/* Reads the footer of a stream-optimized file: marker, header copy,
 * end-of-stream marker in the last three sectors. */
static int read_footer(struct vsrc *src, struct vmdk_sparse_hdr *h, const char **why)
{
    uint64_t end = src->size & ~(uint64_t)(VMDK_SECTOR - 1);
    uint8_t f[3 * VMDK_SECTOR];
    *why = "the grain directory is at the end of the file, but the footer there is "
           "missing or damaged";
    if (end < 4 * VMDK_SECTOR || vsrc_pread(src, f, sizeof(f), end - sizeof(f)) < 0)
        return -EINVAL;
    const uint8_t *fm = f, *fh = f + VMDK_SECTOR, *eos = f + 2 * VMDK_SECTOR;
    if (get_le32(fm + 8) != 0 || get_le32(fm + 12) != VMDK_MARKER_FOOTER ||
        get_le64(eos) != 0 || get_le32(eos + 8) != 0 || get_le32(eos + 12) != VMDK_MARKER_EOS ||
        memcmp(fh, VMDK4_MAGIC, 4))
        return -EINVAL;
    if (vmdk_sparse_parse(fh, VMDK_SECTOR, h, why) < 0)
        return -EINVAL;
    if (h->gd_off == VMDK4_GD_AT_END) {
        *why = "the footer, too, says the grain directory is at the end of the file";
        return -EINVAL;
    }
    return 0;
}

/* Where copy w of the grain directory is, and how much of it the file holds. */
static void place_gd(struct vsparse *sp, int w, uint64_t sector, uint64_t file_size)
{
    uint64_t off;
    sp->gd[w] = 0;
    sp->gd_avail[w] = 0;
    if (!sector || ckd_mul_u64(&off, sector, VMDK_SECTOR) || off >= file_size)
        return;
    sp->gd[w] = off;
    sp->gd_avail[w] = VMFS_MIN(sp->h.gd_entries, (file_size - off) / 4);
}

static void report_gd(struct vmdk *v, struct vext *x)
{
    struct vsparse *sp = x->sp;
    if (sp->h.gd_entries == 0 || sp->gd_avail[0] == sp->h.gd_entries)
        return;
    uint64_t best = VMFS_MAX(sp->gd_avail[0], sp->gd_avail[1]);
    if (best == sp->h.gd_entries)
        vlayer_problem(v->l, "%sthe grain directory (sector %" PRIu64 ", %" PRIu64
                       " entries) is not inside the file; its redundant copy is used",
                       ext_prefix(x), sp->h.gd_off, sp->h.gd_entries);
    else
        vlayer_problem(v->l, "%sthe grain directory (sector %" PRIu64 ", %" PRIu64
                       " entries) is not inside the file: reads from disk offset "
                       "0x%" PRIx64 " on fail", ext_prefix(x), sp->h.gd_off, sp->h.gd_entries,
                       x->start + best * sp->span);
}

/* Reads and checks the sparse header of x->src.  Returns 0, 1 for a KDMV
 * file with no capacity but a descriptor (a descriptor in disguise), or a
 * negative errno after reporting why the extent cannot be read. */
static int open_sparse(struct vmdk *v, struct vext *x)
{
    uint8_t b[VMDK_SECTOR];
    const char *why = NULL;
    char msg[160];
    struct vsparse *sp = xcalloc(1, sizeof(*sp));
    x->sp = sp;
    if (x->src->size < VMDK_SECTOR) {
        vlayer_problem(v->l, "%stoo short for a sparse extent (%" PRIu64 " bytes)",
                       ext_prefix(x), x->src->size);
        return -EINVAL;
    }
    int r = vsrc_pread(x->src, b, sizeof(b), 0);
    if (r == 0 && vmdk_sparse_parse(b, sizeof(b), &sp->h, &why) < 0)
        r = -EINVAL;
    if (r == 0 && !sp->h.cowd && sp->h.capacity == 0 && sp->h.desc_off)
        return 1;
    if (r == 0 && !sp->h.cowd && sp->h.gd_off == VMDK4_GD_AT_END) {
        r = read_footer(x->src, &sp->h, &why);
        sp->footer = true;
    }
    if (r == 0 && vmdk_sparse_check(&sp->h, msg, sizeof(msg)) < 0) {
        r = -EINVAL;
        why = msg;
    }
    if (r < 0) {
        vlayer_problem(v->l, "%s%s", ext_prefix(x), why ? why : strerror(-r));
        return r;
    }
    struct vmdk_sparse_hdr *h = &sp->h;
    if (!h->cowd && (h->flags & VMDK4_FLAG_NL_DETECT) && memcmp(h->nl_chars, "\n \r\n", 4))
        vlayer_problem(v->l, "%sthe newline check bytes of the header are altered (the file "
                       "went through a text-mode transfer?); data may be damaged",
                       ext_prefix(x));
    sp->compressed = !h->cowd && h->compress == VMDK_COMPRESS_DEFLATE;
    sp->markers = !h->cowd && (h->flags & VMDK4_FLAG_MARKERS);
    sp->zero_grain = !h->cowd && (h->flags & VMDK4_FLAG_ZERO_GRAIN);
    sp->grain_bytes = h->grain * VMDK_SECTOR;
    sp->span = sp->grain_bytes * h->gtes;
    place_gd(sp, 0, h->gd_off, x->src->size);
    if (!h->cowd && (h->flags & VMDK4_FLAG_RGD))
        place_gd(sp, 1, h->rgd_off, x->src->size);
    return 0;
}

/* ------------------------------------------------------------------------
 * Descriptors and extents
 * ---------------------------------------------------------------------- */

/* Reads descriptor text: len bytes at off of src, at most VMDK_DESC_MAX. */
static char *read_text(struct vsrc *src, uint64_t off, uint64_t len, size_t *n)
{
    if (off >= src->size)
        return NULL;
    len = VMFS_MIN(len, src->size - off);
    len = VMFS_MIN(len, (uint64_t)VMDK_DESC_MAX);
    char *t = xmalloc((size_t)len + 1);
    if (vsrc_pread(src, t, (size_t)len, off) < 0) {
        free(t);
        return NULL;
    }
    t[len] = 0;
    *n = (size_t)len;
    return t;
}

static void ext_free(struct vext *x)
{
    if (x->own_src)
        vsrc_close(x->src);
    free(x->sp);
    free(x->name);
    free(x->prefix);
}

/* A flat extent: its file, and where that file ends in the disk. */
static void setup_flat(struct vmdk *v, struct vext *x, uint64_t off_sectors)
{
    if (ckd_mul_u64(&x->flat_off, off_sectors, VMDK_SECTOR)) {
        x->state = "absurd offset";
        vlayer_problem(v->l, "%sabsurd offset of %" PRIu64 " sectors", ext_prefix(x),
                       off_sectors);
        return;
    }
    uint64_t have = x->src->size > x->flat_off ? x->src->size - x->flat_off : 0;
    x->file_end = x->start + VMFS_MIN(have, x->size);
    if (have < x->size)
        vlayer_problem(v->l, "extent %s holds %" PRIu64 " of its %" PRIu64 " bytes: reads from "
                       "disk offset 0x%" PRIx64 " to 0x%" PRIx64 " fail", ext_label(x), have,
                       x->size, x->file_end, x->start + x->size);
}

/* A sparse extent named by a descriptor: its size is its header's capacity,
 * as qemu takes it. */
static void setup_sparse(struct vmdk *v, struct vext *x)
{
    int r = open_sparse(v, x);
    if (r == 1) {
        vlayer_problem(v->l, "%sa sparse extent that is itself a descriptor: not read",
                       ext_prefix(x));
        r = -EINVAL;
    }
    if (r < 0) {
        x->state = "unreadable sparse extent";
        return;
    }
    uint64_t cap = x->sp->h.capacity;
    if (cap != x->desc_sectors)
        vlayer_problem(v->l, "extent %s: the descriptor says %" PRIu64 " sectors, its header "
                       "%" PRIu64 "; the header's size is used", ext_label(x),
                       x->desc_sectors, cap);
    x->size = cap * VMDK_SECTOR;
}

static bool refuse_type(struct vmdk *v, struct vext *x)
{
    if (x->type == VMDK_ET_SESPARSE || x->type == VMDK_ET_UNKNOWN) {
        x->state = "unsupported extent type";
        vlayer_problem(v->l, "extent %s (descriptor line %u) has type %s, which vmfs cannot "
                       "read: reads of disk offsets 0x%" PRIx64 " to 0x%" PRIx64 " fail",
                       ext_label(x), x->line, x->type_name, x->start, x->start + x->size);
        return true;
    }
    return false;
}

/* Sets up extent x from descriptor line d; x->start is set. */
static void setup_extent(struct vmdk *v, struct vext *x, const struct vmdk_dext *d)
{
    x->access = d->access;
    x->type = d->type;
    x->line = d->line;
    memcpy(x->type_name, d->type_name, sizeof(x->type_name));
    x->desc_sectors = d->sectors;
    x->size = d->sectors * VMDK_SECTOR;
    x->name = d->file ? xstrdup(d->file) : NULL;
    if (x->name)
        x->prefix = xasprintf("extent %s: ", x->name);
    if (x->type == VMDK_ET_ZERO || refuse_type(v, x))
        return;
    if (vlayer_open_related(v->l, x->name, "extent", &x->src, NULL) < 0) {
        x->state = "missing";
        return;
    }
    x->own_src = true;
    if (vmdk_etype_flat(x->type))
        setup_flat(v, x, d->offset);
    else
        setup_sparse(v, x);
}

static int check_lines(struct vmdk *v)
{
    struct vmdk_desc *d = &v->desc;
    if (d->next_total > VMDK_MAX_EXTENTS) {
        vlayer_problem(v->l, "the descriptor lists %zu extents; vmfs reads at most %u",
                       d->next_total, VMDK_MAX_EXTENTS);
        return -EFBIG;
    }
    for (size_t i = 0; i < d->next; i++) {
        const struct vmdk_dext *e = &d->ext[i];
        if (e->malformed) {
            vlayer_problem(v->l, "descriptor line %u is not a valid extent line (\"%s\"): "
                           "the layout of the disk is unknown", e->line,
                           e->line == d->first_bad_line ? d->first_bad : "…");
            return -EINVAL;
        }
        if (e->sectors > VMDK_MAX_EXTENT_SECTORS) {
            vlayer_problem(v->l, "descriptor line %u: absurd extent size of %" PRIu64
                           " sectors", e->line, e->sectors);
            return -EFBIG;
        }
    }
    if (d->next == 0) {
        vlayer_problem(v->l, "the descriptor lists no extents");
        return -EINVAL;
    }
    return 0;
}

/* Opens every extent the descriptor lists, in order. */
static int open_extents(struct vmdk *v)
{
    int r = check_lines(v);
    if (r < 0)
        return r;
    struct vmdk_desc *d = &v->desc;
    v->ext = xcalloc(d->next, sizeof(*v->ext));
    uint64_t pos = 0;
    for (size_t i = 0; i < d->next; i++) {
        if (d->ext[i].sectors == 0)
            continue;   /* an empty extent adds nothing (qemu skips it too) */
        struct vext *x = &v->ext[v->next];
        x->idx = (unsigned)v->next;
        x->start = pos;
        setup_extent(v, x, &d->ext[i]);
        if (x->size == 0) {
            ext_free(x);
            memset(x, 0, sizeof(*x));
            continue;
        }
        v->next++;
        if (ckd_add_u64(&pos, pos, x->size) || pos > VMDK_MAX_DISK_BYTES) {
            vlayer_problem(v->l, "the extents add up to an absurd disk size");
            return -EFBIG;
        }
    }
    if (v->next == 0) {
        vlayer_problem(v->l, "the descriptor lists only empty extents");
        return -EINVAL;
    }
    v->l->size = pos;
    return 0;
}

/* The layer's file is a sparse extent: one extent, its embedded
 * descriptor read for the parent and CIDs. */
static int open_sparse_file(struct vmdk *v)
{
    v->sparse_file = true;
    v->ext = xcalloc(1, sizeof(*v->ext));
    v->next = 1;
    struct vext *x = &v->ext[0];
    x->access = VMDK_RW;
    x->type = VMDK_ET_SPARSE;
    x->src = v->l->file;
    int r = open_sparse(v, x);
    struct vmdk_sparse_hdr *h = &x->sp->h;
    if (r == 1 || (r == 0 && h->desc_off && h->desc_size)) {
        uint64_t off, len;
        size_t n = 0;
        if (!ckd_mul_u64(&off, h->desc_off, VMDK_SECTOR) &&
            !ckd_mul_u64(&len, h->desc_size ? h->desc_size : 2048, VMDK_SECTOR)) {
            CLEANUP_FREE char *t = read_text(x->src, off, len, &n);
            if (t) {
                vmdk_desc_parse(t, n, &v->desc);
                v->have_desc = true;
            }
        }
    }
    if (r == 1) {
        /* No capacity of its own: the embedded descriptor lists the extents. */
        ext_free(x);
        free(v->ext);
        v->ext = NULL;
        v->next = 0;
        v->sparse_file = false;
        if (!v->have_desc) {
            vlayer_problem(v->l, "the embedded descriptor cannot be read");
            return -EINVAL;
        }
        return open_extents(v);
    }
    if (r < 0)
        return r;
    strcpy(x->type_name, "SPARSE");
    x->size = h->capacity * VMDK_SECTOR;
    x->desc_sectors = h->capacity;
    v->l->size = x->size;
    report_gd(v, x);
    return 0;
}

static int open_desc_file(struct vmdk *v)
{
    size_t n = 0;
    CLEANUP_FREE char *t = read_text(v->l->file, 0, VMDK_DESC_MAX, &n);
    if (!t) {
        vlayer_problem(v->l, "the descriptor cannot be read");
        return -EIO;
    }
    vmdk_desc_parse(t, n, &v->desc);
    v->have_desc = true;
    if (v->desc.truncated)
        vlayer_problem(v->l, "the descriptor is longer than %u bytes: the rest is ignored",
                       VMDK_DESC_MAX);
    int r = open_extents(v);
    for (size_t i = 0; r == 0 && i < v->next; i++)
        if (v->ext[i].sp)
            report_gd(v, &v->ext[i]);
    return r;
}

/* The parent: parentFileNameHint as written, else the file of that name
 * beside this one (hints often hold a path from another machine). */
static void set_parent(struct vmdk *v)
{
    const char *hint = v->have_desc ? v->desc.parent_hint : NULL;
    if (!hint)
        return;
    const char *slash = strrchr(hint, '/');
    const char *names[2] = {hint, slash && slash[1] ? slash + 1 : NULL};
    vlayer_set_backing_candidates(v->l, names, 2);
    if (v->l->backing_name)
        v->l->backing_fmt = xstrdup("vmdk");
}

/* When this layer is the parent of a VMDK delta, the delta's parentCID
 * should be this file's CID. */
static void check_child_cid(struct vmdk *v)
{
    struct vimage *img = v->l->img;
    size_t i = 0;
    while (i < img->nlayers && img->layers[i] != v->l)
        i++;
    if (i == 0 || i >= img->nlayers)
        return;
    struct vlayer *child = img->layers[i - 1];
    if (strcmp(child->drv->name, "vmdk") || !child->priv)
        return;
    struct vmdk *cv = child->priv;
    if (!cv->desc.has_parent_cid || !v->desc.has_cid || cv->desc.parent_cid == v->desc.cid)
        return;
    vlayer_problem(child, "its parentCID %08" PRIx32 " does not match the CID %08" PRIx32
                   " of its parent %s: the parent changed after this delta was made "
                   "(read anyway)", cv->desc.parent_cid, v->desc.cid, v->l->path);
}

static void vmdk_close(struct vlayer *l)
{
    struct vmdk *v = l->priv;
    if (!v)
        return;
    for (size_t i = 0; i < v->next; i++)
        ext_free(&v->ext[i]);
    free(v->ext);
    vmdk_desc_free(&v->desc);
    pthread_mutex_destroy(&v->plock);
    free(v);
    l->priv = NULL;
}

static int vmdk_open(struct vlayer *l)
{
    struct vmdk *v = xcalloc(1, sizeof(*v));
    v->l = l;
    pthread_mutex_init(&v->plock, NULL);
    l->priv = v;
    uint8_t magic[4] = {0};
    if (l->file->size >= 4 && vsrc_pread(l->file, magic, 4, 0) < 0) {
        vlayer_problem(l, "cannot read the file");
        vmdk_close(l);
        return -EIO;
    }
    bool sparse = !memcmp(magic, VMDK4_MAGIC, 4) || !memcmp(magic, VMDK3_MAGIC, 4);
    int r = sparse ? open_sparse_file(v) : open_desc_file(v);
    if (r < 0) {
        vmdk_close(l);
        return r;
    }
    set_parent(v);
    check_child_cid(v);
    return 0;
}

static int vmdk_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    if (len >= 4 && (!memcmp(head, VMDK4_MAGIC, 4) || !memcmp(head, VMDK3_MAGIC, 4)))
        return 100;
    return vmdk_desc_probe(head, len) ? 100 : 0;
}

/* ------------------------------------------------------------------------
 * Report
 * ---------------------------------------------------------------------- */

static void report_sparse(const struct vsparse *sp, struct rep *o)
{
    const struct vmdk_sparse_hdr *h = &sp->h;
    rep_set_str(o, "header", h->cowd ? "COWD (ESX sparse)" : "KDMV (hosted sparse)");
    rep_set_u64(o, "header_version", h->version);
    rep_set_size(o, "grain_size", sp->grain_bytes);
    rep_set_u64(o, "grain_table_entries", h->gtes);
    rep_set_u64(o, "grain_directory_entries", h->gd_entries);
    rep_set_u64(o, "grain_directory_sector", h->gd_off);
    if (!h->cowd) {
        if (h->flags & VMDK4_FLAG_RGD)
            rep_set_u64(o, "redundant_grain_directory_sector", h->rgd_off);
        rep_set_strf(o, "flags", "0x%08" PRIx32, h->flags);
        rep_set_str(o, "compression", sp->compressed ? "deflate" : "none");
        rep_set_bool(o, "grain_markers", sp->markers);
        rep_set_bool(o, "zeroed_grain_entries", sp->zero_grain);
        rep_set_bool(o, "footer", sp->footer);
        rep_set_u64(o, "overhead_sectors", h->overhead);
        rep_set_bool(o, "unclean_shutdown", h->unclean);
    }
}

static void report_extent(const struct vext *x, struct rep *o)
{
    rep_set_str(o, "access", vmdk_access_name(x->access));
    rep_set_str(o, "type", x->type_name[0] ? x->type_name : vmdk_etype_name(x->type));
    rep_set_str(o, "file", x->name ? x->name : "");
    rep_set_size(o, "disk_offset", x->start);
    rep_set_size(o, "size", x->size);
    if (vmdk_etype_flat(x->type))
        rep_set_size(o, "file_offset", x->flat_off);
    rep_set_str(o, "status", x->state ? x->state : "ok");
    if (x->sp && !x->state)
        report_sparse(x->sp, rep_set_object(o, "sparse"));
}

/* "geometry.biosCylinders" -> "geometry_bios_cylinders", "virtualHWVersion"
 * -> "virtual_hw_version": report keys are snake_case. */
static void snake_key(const char *in, char *out, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; in[i] && o + 2 < n; i++) {
        char c = in[i];
        bool up = c >= 'A' && c <= 'Z';
        bool prev_low = i > 0 && ((in[i - 1] >= 'a' && in[i - 1] <= 'z') ||
                                  (in[i - 1] >= '0' && in[i - 1] <= '9'));
        bool prev_up = i > 0 && in[i - 1] >= 'A' && in[i - 1] <= 'Z';
        bool next_low = in[i + 1] >= 'a' && in[i + 1] <= 'z';
        if (up && o > 0 && out[o - 1] != '_' && (prev_low || (prev_up && next_low)))
            out[o++] = '_';
        if (up)
            c = (char)(c - 'A' + 'a');
        else if (c == '.' || c == '-')
            c = '_';
        out[o++] = c;
    }
    out[o] = 0;
}

static const char *subformat(const struct vmdk *v)
{
    if (v->have_desc && v->desc.create_type)
        return v->desc.create_type;
    if (v->sparse_file && v->ext[0].sp->compressed)
        return "streamOptimized";
    return v->sparse_file ? "monolithicSparse" : "unknown";
}

/* The grain size all sparse extents share, or 0 (none, or they differ). */
static uint64_t common_grain(const struct vmdk *v)
{
    uint64_t g = 0;
    for (size_t i = 0; i < v->next; i++) {
        const struct vext *x = &v->ext[i];
        if (!x->sp || x->state)
            continue;
        if (g && g != x->sp->grain_bytes)
            return 0;
        g = x->sp->grain_bytes;
    }
    return g;
}

static void vmdk_report(struct vlayer *l, struct rep *o)
{
    struct vmdk *v = l->priv;
    const struct vmdk_desc *d = &v->desc;
    rep_set_str(o, "create_type", subformat(v));
    rep_set_u64(o, "sector_size", VMDK_SECTOR);
    if (v->have_desc) {
        rep_set_u64(o, "descriptor_version", d->version);
        if (d->has_cid)
            rep_set_strf(o, "cid", "%08" PRIx32, d->cid);
        if (d->has_parent_cid)
            rep_set_strf(o, "parent_cid", "%08" PRIx32, d->parent_cid);
        if (d->parent_hint)
            rep_set_str(o, "parent_file_name_hint", d->parent_hint);
        if (d->ctk_path)
            rep_set_str(o, "change_track_path", d->ctk_path);
    }
    if (v->sparse_file) {
        report_sparse(v->ext[0].sp, o);
    } else {
        uint64_t grain = common_grain(v);
        if (grain)
            rep_set_size(o, "grain_size", grain);
        struct rep *a = rep_set_array(o, "extents");
        for (size_t i = 0; i < v->next; i++)
            report_extent(&v->ext[i], rep_add_object(a));
    }
    if (v->have_desc && d->nddb) {
        struct rep *ddb = rep_set_object(o, "ddb");
        for (size_t i = 0; i < d->nddb; i++) {
            char key[80];
            snake_key(d->ddb[i].key + 4, key, sizeof(key));
            rep_set_str(ddb, key, d->ddb[i].val);
        }
    }
    if (v->have_desc && d->bad_lines) {
        rep_set_u64(o, "unrecognized_descriptor_lines", d->bad_lines);
        rep_set_strf(o, "first_unrecognized_line", "%u: %s", d->first_bad_line, d->first_bad);
    }
}

/* ------------------------------------------------------------------------
 * Related files
 * ---------------------------------------------------------------------- */

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* True when name (relative to path's directory) is path itself. */
static bool names_self(const char *path, const char *name)
{
    if (name[0] == '/')
        return same_file(path, name);
    CLEANUP_FREE char *copy = xstrdup(path);
    CLEANUP_FREE char *full = xasprintf("%s/%s", dirname(copy), name);
    return same_file(path, full);
}

/* The descriptor of a file: its text, or the one embedded in a sparse
 * file without capacity of its own. */
static bool load_desc(const char *path, const uint8_t *head, size_t len, struct vmdk_desc *d)
{
    uint64_t off = 0, size = VMDK_DESC_MAX;
    if (len >= 4 && !memcmp(head, VMDK4_MAGIC, 4)) {
        struct vmdk_sparse_hdr h;
        const char *why;
        if (len < VMDK_SECTOR || vmdk_sparse_parse(head, len, &h, &why) < 0 ||
            h.capacity != 0 || !h.desc_off || h.desc_off > (1ull << 40))
            return false;
        off = h.desc_off * VMDK_SECTOR;
    } else if (!vmdk_desc_probe(head, len)) {
        return false;
    }
    int err;
    struct vsrc *src = vsrc_open_file(path, &err);
    if (!src)
        return false;
    size_t n = 0;
    char *t = read_text(src, off, size, &n);
    vsrc_close(src);
    if (!t)
        return false;
    vmdk_desc_parse(t, n, d);
    free(t);
    return true;
}

/* The extent files of a descriptor, and its change tracking file. */
static size_t vmdk_related(const char *path, const uint8_t *head, size_t len, char ***names)
{
    struct vmdk_desc d;
    *names = NULL;
    if (!load_desc(path, head, len, &d))
        return 0;
    char **v = xcalloc(d.next + 2, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < d.next; i++)
        if (d.ext[i].file && !names_self(path, d.ext[i].file))
            v[n++] = xstrdup(d.ext[i].file);
    if (d.ctk_path && !names_self(path, d.ctk_path))
        v[n++] = xstrdup(d.ctk_path);
    vmdk_desc_free(&d);
    if (!n) {
        free(v);
        return 0;
    }
    *names = v;
    return n;
}

const struct vfmt_driver vfmt_vmdk = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .map = vmdk_map,
    .map_alloc = vmdk_map_alloc,
    .decode = vmdk_decode,
    .report = vmdk_report,
    .close = vmdk_close,
    .related_files = vmdk_related,
};
