/* vmfs — the qcow2 format driver (versions 2 and 3).
 *
 * Reads every qcow2 variant qemu writes: cluster sizes 512 B to 2 MiB, zlib
 * and zstd compressed clusters, zero clusters, extended L2 entries with
 * subclusters, external data files, internal snapshots and backing files
 * (named only: the image layer opens the chain).  docs/formats/qcow2.md
 * describes the layout and what vmfs does with each quirk.
 *
 * Threads: open, snapshot_select and close run alone.  map, decode and
 * report run on many threads at once; they read state that is fixed after
 * open, L2 table slices and decompressed clusters come from the shared
 * cache, and the zlib/zstd decompressors are per thread.  The only lock
 * here, plock, guards the list of problems already reported and is taken
 * on the error path alone. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1   /* SEEK_DATA, SEEK_HOLE */
#endif

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include <libdeflate.h>
#include <zstd.h>

#include "vmfs/cache.h"
#include "vmfs/fmt.h"
#include "vmfs/report.h"
#include "qcow2.h"

/* ------------------------------------------------------------------------
 * Header parsing (pure)
 * ---------------------------------------------------------------------- */

static int VMFS_PRINTF(4, 5) perr(char *msg, size_t n, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (n)
        vsnprintf(msg, n, fmt, ap);
    va_end(ap);
    return err;
}

/* Bytes of buf, reading zeros past len (qemu reads zeros past the end of
 * the file, and so does vmfs inside the first cluster). */
static uint32_t rd32(const uint8_t *buf, size_t len, uint64_t off)
{
    uint8_t b[4] = {0};
    for (unsigned i = 0; i < 4; i++)
        if (off + i < len)
            b[i] = buf[off + i];
    return get_be32(b);
}

/* A string of n bytes at off, cut at its first NUL; NULL when empty. */
static char *dup_str(const uint8_t *buf, size_t len, uint64_t off, uint64_t n)
{
    size_t have = off < len ? (size_t)VMFS_MIN(n, len - off) : 0;
    const uint8_t *nul = have ? memchr(buf + off, 0, have) : NULL;
    if (nul)
        have = (size_t)(nul - (buf + off));
    if (have == 0)
        return NULL;
    char *s = xmalloc(have + 1);
    memcpy(s, buf + off, have);
    s[have] = '\0';
    return s;
}

static const char *const builtin_features[3][5] = {
    {"dirty bit", "corrupt bit", "external data file", "compression type",
     "extended L2 entries"},
    {"lazy refcounts"},
    {"bitmaps", "raw external data"},
};

const char *qcow2_feature_name(const struct qcow2_header *h, unsigned type,
                               unsigned bit)
{
    for (size_t i = 0; i < h->nfeatures; i++)
        if (h->features[i].type == type && h->features[i].bit == bit &&
            h->features[i].name[0])
            return h->features[i].name;
    if (type < 3 && bit < 5)
        return builtin_features[type][bit];
    return NULL;
}

static void parse_feature_table(struct qcow2_header *h, const uint8_t *buf,
                                size_t len, uint64_t off, uint32_t elen)
{
    size_t n = elen / 48;
    free(h->features);
    h->features = n ? xcalloc(n, sizeof(*h->features)) : NULL;
    h->nfeatures = n;
    for (size_t i = 0; i < n; i++) {
        uint64_t e = off + i * 48;
        struct qcow2_feature *f = &h->features[i];
        char *name = dup_str(buf, len, e + 2, 46);
        f->type = (uint8_t)(rd32(buf, len, e) >> 24);
        f->bit = (uint8_t)(rd32(buf, len, e) >> 16);
        if (name)
            memcpy(f->name, name, strlen(name) + 1);
        free(name);
    }
}

/* Walks the header extensions in [start, end).  Each step moves on by at
 * least 8 bytes and end is at most one cluster, so the walk is bounded. */
static int parse_extensions(struct qcow2_header *h, const uint8_t *buf,
                            size_t len, uint64_t start, uint64_t end,
                            char *msg, size_t msglen)
{
    uint64_t off = start;
    while (off < end) {
        if (end - off < 8)
            return perr(msg, msglen, -EINVAL,
                        "header extension at offset %" PRIu64 " is cut off", off);
        uint32_t type = rd32(buf, len, off);
        uint32_t elen = rd32(buf, len, off + 4);
        off += 8;
        if (elen > end - off)
            return perr(msg, msglen, -EINVAL,
                        "header extension 0x%08x at offset %" PRIu64
                        " claims %" PRIu32 " bytes, past the end of the header area",
                        type, off - 8, elen);
        switch (type) {
        case QCOW2_EXT_END:
            return 0;
        case QCOW2_EXT_BACKING_FMT:
            free(h->backing_fmt);
            h->backing_fmt = NULL;
            if (elen > QCOW2_MAX_BACKING_FMT && !h->backing_problem)
                h->backing_problem = xasprintf("backing format name is %" PRIu32
                                               " bytes long, no format's name is", elen);
            else if (elen <= QCOW2_MAX_BACKING_FMT)
                h->backing_fmt = dup_str(buf, len, off, elen);
            break;
        case QCOW2_EXT_FEATURES:
            parse_feature_table(h, buf, len, off, elen);
            break;
        case QCOW2_EXT_DATA_FILE:
            free(h->data_file);
            h->data_file = dup_str(buf, len, off, elen);
            break;
        case QCOW2_EXT_BITMAPS:
            h->has_bitmaps_ext = true;
            break;
        case QCOW2_EXT_CRYPTO:
            h->has_crypto_ext = true;
            break;
        default:
            h->unknown_exts++;
            break;
        }
        off += ((uint64_t)elen + 7) & ~(uint64_t)7;
    }
    return 0;
}

static void parse_fixed(struct qcow2_header *h, const uint8_t *buf)
{
    h->version = get_be32(buf + 4);
    h->backing_off = get_be64(buf + 8);
    h->backing_len = get_be32(buf + 16);
    h->cluster_bits = get_be32(buf + 20);
    h->size = get_be64(buf + 24);
    h->crypt_method = get_be32(buf + 32);
    h->l1_size = get_be32(buf + 36);
    h->l1_off = get_be64(buf + 40);
    h->refcount_off = get_be64(buf + 48);
    h->refcount_clusters = get_be32(buf + 56);
    h->nb_snapshots = get_be32(buf + 60);
    h->snapshots_off = get_be64(buf + 64);
    h->header_len = QCOW2_V2_HEADER_LEN;
    h->refcount_order = 4;
}

static int parse_v3_fields(struct qcow2_header *h, const uint8_t *buf,
                           size_t len, uint64_t file_size, char *msg, size_t msglen)
{
    if (len < QCOW2_V3_HEADER_LEN || file_size < QCOW2_V3_HEADER_LEN)
        return perr(msg, msglen, -EINVAL,
                    "truncated header: a version 3 header needs %u bytes, the file has %" PRIu64,
                    QCOW2_V3_HEADER_LEN, file_size);
    h->incompat = get_be64(buf + 72);
    h->compat = get_be64(buf + 80);
    h->autoclear = get_be64(buf + 88);
    h->refcount_order = get_be32(buf + 96);
    h->header_len = get_be32(buf + 100);
    if (h->header_len < QCOW2_V3_HEADER_LEN)
        return perr(msg, msglen, -EINVAL, "header length %" PRIu32 " is below %u",
                    h->header_len, QCOW2_V3_HEADER_LEN);
    if (h->header_len > (1ull << h->cluster_bits))
        return perr(msg, msglen, -EINVAL,
                    "header length %" PRIu32 " exceeds the cluster size", h->header_len);
    if (h->header_len > file_size)
        return perr(msg, msglen, -EINVAL,
                    "truncated header: header length %" PRIu32 ", file size %" PRIu64,
                    h->header_len, file_size);
    if (h->header_len > 104 && len > 104)
        h->compression = buf[104];
    if (h->refcount_order > 6)
        return perr(msg, msglen, -EINVAL, "refcount order %" PRIu32 " is above 6",
                    h->refcount_order);
    return 0;
}

/* Refuses incompatible features vmfs does not know, naming them. */
static int check_unknown_features(const struct qcow2_header *h, char *msg, size_t msglen)
{
    uint64_t unknown = h->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (!unknown)
        return 0;
    size_t n = 0;
    if (msglen)
        n = (size_t)snprintf(msg, msglen, "unsupported incompatible feature(s):");
    for (unsigned bit = 0; bit < 64 && n < msglen; bit++) {
        if (!(unknown >> bit & 1))
            continue;
        const char *name = qcow2_feature_name(h, 0, bit);
        if (name)
            n += (size_t)snprintf(msg + n, msglen - n, " %s (bit %u)", name, bit);
        else
            n += (size_t)snprintf(msg + n, msglen - n, " bit %u", bit);
    }
    return -ENOTSUP;
}

static int check_features(const struct qcow2_header *h, char *msg, size_t msglen)
{
    int r = check_unknown_features(h, msg, msglen);
    if (r < 0)
        return r;
    if (h->crypt_method == 1 || h->crypt_method == 2)
        return perr(msg, msglen, -ENOTSUP,
                    "image is encrypted (%s): vmfs does not decrypt",
                    h->crypt_method == 1 ? "AES" : "LUKS");
    if (h->crypt_method)
        return perr(msg, msglen, -ENOTSUP, "unknown encryption method %" PRIu32,
                    h->crypt_method);
    bool bit = h->incompat & QCOW2_INCOMPAT_COMPRESSION;
    if (h->compression > QCOW2_COMPRESSION_ZSTD)
        return perr(msg, msglen, -ENOTSUP, "unknown compression type %u", h->compression);
    if (bit && h->compression == QCOW2_COMPRESSION_ZLIB)
        return perr(msg, msglen, -EINVAL,
                    "compression type feature bit set, but the compression type is zlib");
    if (!bit && h->compression != QCOW2_COMPRESSION_ZLIB)
        return perr(msg, msglen, -EINVAL,
                    "compression type %u without the compression type feature bit",
                    h->compression);
    if ((h->incompat & QCOW2_INCOMPAT_DATA_FILE) && !h->data_file)
        return perr(msg, msglen, -EINVAL,
                    "image uses an external data file but does not name it");
    return 0;
}

uint64_t qcow2_l1_entries_for(uint64_t size, unsigned cluster_bits, bool ext_l2)
{
    unsigned shift = cluster_bits + cluster_bits - (ext_l2 ? 4 : 3);
    if (shift >= 64)
        return size ? 1 : 0;
    uint64_t n = size >> shift;
    return n + ((size & ((1ull << shift) - 1)) != 0);
}

/* The backing file name; a name that cannot be read is noted in
 * backing_problem, not refused. */
static void parse_backing(struct qcow2_header *h, const uint8_t *buf, size_t len)
{
    uint64_t cs = 1ull << h->cluster_bits;
    if (!h->backing_off)
        return;
    if (h->backing_off > cs)
        h->backing_problem = xasprintf("backing file name offset %" PRIu64
                                       " lies outside the first cluster", h->backing_off);
    else if (h->backing_len > QCOW2_MAX_BACKING_NAME || h->backing_len > cs - h->backing_off)
        h->backing_problem = xasprintf("backing file name is too long (%" PRIu32 " bytes)",
                                       h->backing_len);
    else
        h->backing_name = dup_str(buf, len, h->backing_off, h->backing_len);
}

int qcow2_parse_header(const uint8_t *buf, size_t len, uint64_t file_size,
                       struct qcow2_header *h, char *msg, size_t msglen)
{
    memset(h, 0, sizeof(*h));
    if (len < QCOW2_V2_HEADER_LEN || file_size < QCOW2_V2_HEADER_LEN)
        return perr(msg, msglen, -EINVAL,
                    "truncated header: the file has %" PRIu64 " bytes, a header needs %u",
                    file_size, QCOW2_V2_HEADER_LEN);
    if (get_be32(buf) != QCOW2_MAGIC)
        return perr(msg, msglen, -EINVAL, "no qcow2 magic");
    parse_fixed(h, buf);
    if (h->version != 2 && h->version != 3)
        return perr(msg, msglen, -ENOTSUP,
                    "qcow2 version %" PRIu32 " is not supported (vmfs reads 2 and 3)",
                    h->version);
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return perr(msg, msglen, -EINVAL, "cluster bits %" PRIu32 " outside 9..21",
                    h->cluster_bits);
    int r = h->version == 3 ? parse_v3_fields(h, buf, len, file_size, msg, msglen) : 0;
    uint64_t cs = 1ull << h->cluster_bits;
    uint64_t ext_end = h->backing_off && h->backing_off < cs ? h->backing_off : cs;
    if (r == 0) {
        parse_backing(h, buf, len);
        r = parse_extensions(h, buf, len, h->header_len, ext_end, msg, msglen);
    }
    if (r == 0)
        r = check_features(h, msg, msglen);
    if (r < 0)
        qcow2_header_free(h);
    return r;
}

void qcow2_header_free(struct qcow2_header *h)
{
    free(h->backing_name);
    free(h->backing_fmt);
    free(h->data_file);
    free(h->features);
    free(h->backing_problem);
    h->backing_name = h->backing_fmt = h->data_file = h->backing_problem = NULL;
    h->features = NULL;
    h->nfeatures = 0;
}

/* ------------------------------------------------------------------------
 * L2 entries (pure)
 * ---------------------------------------------------------------------- */

static enum qcow2_ctype invalid(const char **why, const char *text)
{
    *why = text;
    return QCOW2_INVALID;
}

static enum qcow2_ctype classify_extended(const struct qcow2_geom *g, uint64_t off,
                                          bool allocated, uint64_t bitmap,
                                          unsigned sc, const char **why)
{
    uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);
    if (!allocated) {
        if (alloc)
            return invalid(why, "subclusters allocated without a host cluster");
        return zero >> sc & 1 ? QCOW2_ZERO : QCOW2_UNALLOC;
    }
    if (alloc & zero)
        return invalid(why, "subclusters marked both allocated and zero");
    if (off & ((1ull << g->cluster_bits) - 1))
        return invalid(why, "host cluster offset is not cluster aligned");
    if (zero >> sc & 1)
        return QCOW2_ZERO;
    return alloc >> sc & 1 ? QCOW2_DATA : QCOW2_UNALLOC;
}

enum qcow2_ctype qcow2_classify(const struct qcow2_geom *g, uint64_t guest,
                                uint64_t entry, uint64_t bitmap, unsigned sc,
                                uint64_t *host, const char **why)
{
    uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;
    bool allocated = off || (g->data_file && (entry & QCOW2_OFLAG_COPIED));
    *host = off;
    *why = NULL;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        if (g->data_file)
            return invalid(why, "compressed cluster in an image with an external data file");
        return QCOW2_COMPRESSED;
    }
    /* Without subclusters a zero flag with offset 0 is a plain zero
     * cluster, even where 0 would be a valid data file offset. */
    bool zero = !g->ext_l2 && (entry & QCOW2_OFLAG_ZERO);
    if (zero && !g->v3)
        return invalid(why, "zero cluster flag in a version 2 image");
    if (zero)
        allocated = off != 0;
    if (allocated && g->data_file && off != guest)
        return invalid(why, "external data file offset differs from the guest offset");
    if (g->ext_l2)
        return classify_extended(g, off, allocated, bitmap, sc, why);
    if (allocated && (off & ((1ull << g->cluster_bits) - 1)))
        return invalid(why, "host cluster offset is not cluster aligned");
    if (zero)
        return QCOW2_ZERO;
    return allocated ? QCOW2_DATA : QCOW2_UNALLOC;
}

void qcow2_compressed(unsigned cluster_bits, uint64_t entry, uint64_t *coff,
                      uint64_t *clen)
{
    unsigned shift = 62 - (cluster_bits - 8);
    uint64_t sectors = ((entry >> shift) & ((1ull << (cluster_bits - 8)) - 1)) + 1;
    *coff = entry & ((1ull << shift) - 1);
    *clen = sectors * 512 - (*coff & 511);
}

/* ------------------------------------------------------------------------
 * Driver state
 * ---------------------------------------------------------------------- */

#define Q_SLICE_BYTES 4096u          /* L2 table bytes per cache entry */
#define Q_BULK_BYTES (64u << 10)     /* L2 bytes one read fetches in a walk */
#define Q_EMPTY_MAX_BITS (1u << 23)  /* slices tracked by the empty bitmap */
#define Q_MAX_REPORTED 32u           /* distinct problems reported per layer */
#define Q_DECOMP_KEY (1ull << 63)    /* cache keys of decompressed clusters */
#define Q_HINT_TABLES 16u            /* L2 tables a waiting walk asks for ahead */
#define Q_HINT_WAIT_NS 30000u        /* a table read this slow went to the disk */

/* What a reported problem was about, so that it is reported once. */
enum q_pkind { P_L1, P_L2READ, P_CLUSTER, P_COMPRESSED };

struct q_reported {
    enum q_pkind kind;
    uint64_t key;
};

struct q_snap_l1 {
    uint64_t off;
    uint32_t size;
};

struct qcow2 {
    struct vlayer *l;
    struct qcow2_header h;
    struct qcow2_geom g;
    uint64_t cs;                /* cluster size */
    unsigned l2_bits;           /* log2 of entries per L2 table */
    unsigned entry_size;        /* 8, or 16 with extended L2 entries */
    unsigned sc_bits;           /* log2 of the subcluster size */
    unsigned slice_bits;        /* log2 of entries per cached slice */
    size_t slice_size;          /* bytes per cached slice */
    unsigned spt_bits;          /* log2 of slices per L2 table */

    struct vsrc *data;          /* where data clusters are; NULL when the
                                   external data file could not be opened */
    struct vsrc *data_own;      /* the external data file, closed at close */
    char *data_path;

    uint64_t *l1;               /* the active L1 table, host order */
    uint64_t l1_off, l1_size;   /* as declared */
    uint64_t l1_avail;          /* entries in l1 */
    uint64_t l1_err_end;        /* entries from l1_avail up to this one are
                                   missing (error runs); later ones are
                                   unallocated (a snapshot's shorter table) */
    uint64_t *empty;            /* a bit per L2 slice of the active L1
                                   (entry << spt_bits | slice) seen to hold
                                   only zero entries: skipped without the
                                   cache.  Set atomically; NULL when the
                                   table has too many slices */
    uint64_t empty_bits;
    uint64_t hinted;            /* L1 entries below this one have had their
                                   L2 table asked for ahead of a walk */
    bool backing_bad;           /* the backing reference is unreadable:
                                   unallocated clusters are error runs */

    struct vsnap *snaps;
    struct q_snap_l1 *snap_l1;
    size_t nsnaps;
    bool snap_table_ok;
    long snap_active;

    pthread_mutex_t plock;      /* guards rep, nrep, rep_full */
    struct q_reported rep[Q_MAX_REPORTED];
    size_t nrep;
    bool rep_full;
};

/* True the first time (kind, key) is seen: the caller then reports it. */
static bool first_report(struct qcow2 *q, enum q_pkind kind, uint64_t key)
{
    bool first = true, overflow = false;
    pthread_mutex_lock(&q->plock);
    for (size_t i = 0; i < q->nrep && first; i++)
        if (q->rep[i].kind == kind && q->rep[i].key == key)
            first = false;
    if (first && q->nrep < Q_MAX_REPORTED) {
        q->rep[q->nrep].kind = kind;
        q->rep[q->nrep++].key = key;
    } else if (first) {
        first = false;
        overflow = !q->rep_full;
        q->rep_full = true;
    }
    pthread_mutex_unlock(&q->plock);
    if (overflow)
        vlayer_problem(q->l, "more damage found; further problems are not listed");
    return first;
}

/* ------------------------------------------------------------------------
 * Per-thread decompressors and L2 window
 * ---------------------------------------------------------------------- */

/* The L2 bytes an allocation walk read last on this thread: a walk goes
 * through them in place instead of copying each slice into the cache. */
struct l2win {
    uint64_t owner;      /* the layer's cache owner; 0: empty */
    uint64_t key;        /* host offset of the first byte */
    size_t len;
    uint8_t *buf;        /* Q_BULK_BYTES */
};

struct q_tls {
    struct libdeflate_decompressor *inflate;
    ZSTD_DCtx *zstd;
    struct l2win win;
};

static __thread struct q_tls *q_tls;
static pthread_key_t q_tls_key;
static pthread_once_t q_tls_once = PTHREAD_ONCE_INIT;
static bool q_tls_key_ok;

static void q_tls_free(void *p)
{
    struct q_tls *t = p;
    if (t->inflate)
        libdeflate_free_decompressor(t->inflate);
    if (t->zstd)
        ZSTD_freeDCtx(t->zstd);
    free(t->win.buf);
    free(t);
}

static void q_tls_make_key(void)
{
    q_tls_key_ok = pthread_key_create(&q_tls_key, q_tls_free) == 0;
}

/* This thread's decompressors and window, freed when the thread exits. */
static struct q_tls *tls_get(void)
{
    if (!q_tls) {
        pthread_once(&q_tls_once, q_tls_make_key);
        q_tls = xcalloc(1, sizeof(*q_tls));
        if (q_tls_key_ok)
            pthread_setspecific(q_tls_key, q_tls);
    }
    return q_tls;
}

/* Inflates one cluster of raw deflate data; padding after the stream is
 * allowed, the output must be exactly one cluster. */
static int inflate_cluster(const uint8_t *in, size_t inlen, void *out, size_t outlen,
                           const char **why)
{
    struct q_tls *t = tls_get();
    if (!t->inflate)
        t->inflate = libdeflate_alloc_decompressor();
    if (!t->inflate)
        return -ENOMEM;
    size_t used = 0, got = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(
        t->inflate, in, inlen, out, outlen, &used, &got);
    if (r != LIBDEFLATE_SUCCESS || got != outlen) {
        *why = "corrupt deflate data";
        return -EIO;
    }
    return 0;
}

/* Decompresses one cluster from a zstd frame followed by padding. */
static int unzstd_cluster(const uint8_t *in, size_t inlen, void *out, size_t outlen,
                          const char **why)
{
    struct q_tls *t = tls_get();
    if (!t->zstd)
        t->zstd = ZSTD_createDCtx();
    if (!t->zstd)
        return -ENOMEM;
    ZSTD_DCtx_reset(t->zstd, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = {in, inlen, 0};
    ZSTD_outBuffer ob = {out, outlen, 0};
    size_t ret = 1;
    *why = "corrupt zstd data";
    while (ob.pos < ob.size) {
        size_t ipos = ib.pos, opos = ob.pos;
        ret = ZSTD_decompressStream(t->zstd, &ob, &ib);
        if (ZSTD_isError(ret) || (ib.pos == ipos && ob.pos == opos))
            return -EIO;
        if (ret == 0 && ob.pos < ob.size)
            return -EIO;  /* the frame ended short of a cluster */
    }
    return ret == 0 ? 0 : -EIO;
}

/* ------------------------------------------------------------------------
 * Cached L2 slices and decompressed clusters
 * ---------------------------------------------------------------------- */

/* A held L2 slice while walking consecutive clusters.  bulk: the walk
 * goes on through the table (an allocation walk), so a miss reads ahead. */
struct l2cur {
    struct vcache_entry *ent;   /* NULL for a slice known to be empty */
    const uint8_t *data;
    uint64_t key;
    bool bulk;
};

static const uint8_t zero_slice[Q_SLICE_BYTES];

static void cur_release(struct l2cur *c)
{
    if (c->ent)
        vcache_release(c->ent);
    c->ent = NULL;
    c->data = NULL;
}

/* The empty bitmap's bit for the slice that holds guest cluster ci. */
static uint64_t slice_bit(const struct qcow2 *q, uint64_t ci)
{
    uint64_t idx = ci & ((1ull << q->l2_bits) - 1);
    return (ci >> q->l2_bits) << q->spt_bits | idx >> q->slice_bits;
}

static bool known_empty(const struct qcow2 *q, uint64_t bit)
{
    return q->empty && bit < q->empty_bits &&
           (__atomic_load_n(&q->empty[bit >> 6], __ATOMIC_RELAXED) >> (bit & 63) & 1);
}

static void mark_empty(struct qcow2 *q, uint64_t bit)
{
    if (q->empty && bit < q->empty_bits)
        __atomic_fetch_or(&q->empty[bit >> 6], 1ull << (bit & 63), __ATOMIC_RELAXED);
}

struct slice_fill {
    struct vsrc *file;
    uint64_t off;
};

static int fill_slice(void *arg, void *buf, size_t size)
{
    struct slice_fill *a = arg;
    return vsrc_pread(a->file, buf, size, a->off);
}

/* A walk that had to wait for the disk to read the L2 table of L1 entry
 * l1i asks the kernel for the tables of the next entries as well: from a
 * cold disk they then arrive together instead of one wait each.  A walk
 * over cached tables never waits and asks for nothing. */
static void hint_tables(struct qcow2 *q, uint64_t l1i)
{
    uint64_t end = VMFS_MIN(l1i + 1 + Q_HINT_TABLES, q->l1_avail);
    uint64_t prev = __atomic_load_n(&q->hinted, __ATOMIC_RELAXED);
    do {
        if (prev >= end)
            return;
    } while (!__atomic_compare_exchange_n(&q->hinted, &prev, end, false, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    for (uint64_t i = VMFS_MAX(prev, l1i + 1); i < end; i++) {
        uint64_t off = q->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (off && !(off & (q->cs - 1)) && range_in(off, q->cs, q->l->file->size))
            vsrc_willneed(q->l->file, off, q->cs);
    }
}

/* For a walk: reads the slices of an L2 table from the one at host offset
 * key (which holds guest cluster ci) up to Q_BULK_BYTES into this thread's
 * window, in one read, and marks the empty ones.  The walk reads them
 * there: a count of a large image touches no cache memory. */
static int window_load(struct qcow2 *q, struct l2win *w, uint64_t ci, uint64_t key)
{
    size_t size = q->slice_size;
    uint64_t bit = slice_bit(q, ci);
    uint64_t spt = 1ull << q->spt_bits, si = bit & (spt - 1);
    size_t k = (size_t)VMFS_MIN(spt - si, (uint64_t)(Q_BULK_BYTES / size));
    if (!w->buf)
        w->buf = xmalloc(Q_BULK_BYTES);
    w->owner = 0;
    uint64_t t0 = vmfs_now_ns();
    int r = vsrc_pread(q->l->file, w->buf, k * size, key);
    if (r < 0)
        return r;
    if (vmfs_now_ns() - t0 >= Q_HINT_WAIT_NS)
        hint_tables(q, ci >> q->l2_bits);
    for (size_t j = 0; j < k; j++)
        if (all_zero64(w->buf + j * size, size))
            mark_empty(q, bit + j);
    w->owner = q->l->cache_owner;
    w->key = key;
    w->len = k * size;
    return 0;
}

/* Points c at the slice (host offset key) that holds guest cluster ci.  A
 * walk (c->bulk) that misses the cache reads it through the thread's window
 * with the rest of its table; empty slices are marked, never cached. */
static int slice_get(struct qcow2 *q, struct l2cur *c, uint64_t ci, uint64_t key)
{
    uint64_t bit = slice_bit(q, ci);
    const void *data;
    c->key = key;
    if (known_empty(q, bit)) {
        c->data = zero_slice;
        return 0;
    }
    if (c->bulk) {
        if (vcache_peek(q->l->cache_owner, key, q->slice_size, &data, &c->ent) == 0) {
            c->data = data;
            return 0;
        }
        c->ent = NULL;
        struct l2win *w = &tls_get()->win;
        if (w->owner != q->l->cache_owner || key < w->key || key - w->key >= w->len) {
            int r = window_load(q, w, ci, key);
            if (r < 0)
                return r;
        }
        c->data = w->buf + (key - w->key);
        return 0;
    }
    struct slice_fill a = {q->l->file, key};
    int r = vcache_get(q->l->cache_owner, key, q->slice_size, fill_slice, &a, &data, &c->ent);
    if (r < 0) {
        c->ent = NULL;
        return r;
    }
    c->data = data;
    if (all_zero64(data, q->slice_size))
        mark_empty(q, bit);
    return 0;
}

/* Fetches the L2 entry (and bitmap) of guest cluster ci from the table at
 * l2off, which open or l1_lookup checked to lie inside the file. */
static int l2_entry(struct qcow2 *q, struct l2cur *c, uint64_t l2off, uint64_t ci,
                    uint64_t *entry, uint64_t *bitmap)
{
    uint64_t idx = ci & ((1ull << q->l2_bits) - 1);
    uint64_t key = l2off + (idx >> q->slice_bits) * q->slice_size;
    if (!c->data || c->key != key) {
        cur_release(c);
        int r = slice_get(q, c, ci, key);
        if (r < 0)
            return r;
    }
    const uint8_t *e = c->data + (idx & ((1ull << q->slice_bits) - 1)) * q->entry_size;
    *entry = get_be64(e);
    *bitmap = q->g.ext_l2 ? get_be64(e + 8) : 0;
    return 0;
}

struct comp_fill {
    struct qcow2 *q;
    uint64_t coff, clen;
    const char *why;
};

/* Decompresses one cluster from in[0, inlen) into out. */
static int unpack_cluster(const struct qcow2 *q, const uint8_t *in, size_t inlen, void *out,
                          size_t outlen, const char **why)
{
    if (q->h.compression == QCOW2_COMPRESSION_ZSTD)
        return unzstd_cluster(in, inlen, out, outlen, why);
    return inflate_cluster(in, inlen, out, outlen, why);
}

/* Reads and decompresses one compressed cluster.  The descriptor may run up
 * to a sector past the end of the file; those bytes read as zeros. */
static int fill_compressed(void *arg, void *buf, size_t size)
{
    struct comp_fill *a = arg;
    struct vsrc *file = a->q->l->file;
    size_t have = (size_t)VMFS_MIN(a->clen, file->size - a->coff);
    CLEANUP_FREE uint8_t *in = xmalloc((size_t)a->clen);
    memset(in + have, 0, (size_t)a->clen - have);
    int r = vsrc_pread(file, in, have, a->coff);
    if (r < 0) {
        a->why = "cannot read the compressed data";
        return r;
    }
    return unpack_cluster(a->q, in, (size_t)a->clen, buf, size, &a->why);
}

/* ------------------------------------------------------------------------
 * Mapping
 * ---------------------------------------------------------------------- */

enum l1_state { L1_BEYOND, L1_UNALLOC, L1_MISSING, L1_BAD, L1_OK };

static unsigned span_bits(const struct qcow2 *q)
{
    return q->g.cluster_bits + q->l2_bits;
}

/* The guest offset where L1 entry n starts, saturated. */
static uint64_t l1_to_guest(const struct qcow2 *q, uint64_t n)
{
    return n > (UINT64_MAX >> span_bits(q)) ? UINT64_MAX : n << span_bits(q);
}

/* Looks up L1 entry l1i; for L1_OK *l2off is a table inside the file. */
static enum l1_state l1_lookup(struct qcow2 *q, uint64_t l1i, uint64_t *l2off)
{
    if (l1i >= q->l1_avail)
        return l1i < q->l1_err_end ? L1_MISSING : L1_BEYOND;
    uint64_t off = q->l1[l1i] & QCOW2_L1E_OFFSET_MASK;
    if (!off)
        return L1_UNALLOC;
    if ((off & (q->cs - 1)) || !range_in(off, q->cs, q->l->file->size)) {
        if (first_report(q, P_L1, l1i))
            vlayer_problem(q->l, "L1 entry %" PRIu64 " (guest offset 0x%" PRIx64
                           "): L2 table offset 0x%" PRIx64 " is %s",
                           l1i, l1i << span_bits(q), off,
                           (off & (q->cs - 1)) ? "not cluster aligned" : "past the end of the file");
        return L1_BAD;
    }
    *l2off = off;
    return L1_OK;
}

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

static void cluster_problem(struct qcow2 *q, uint64_t cstart, const char *what)
{
    if (first_report(q, P_CLUSTER, cstart >> q->g.cluster_bits))
        vlayer_problem(q->l, "guest offset 0x%" PRIx64 ": %s", cstart, what);
}

/* A data piece: host bytes of [from, to) of the cluster at cstart must lie
 * in the data source. */
static void data_piece(struct qcow2 *q, uint64_t host, uint64_t cstart, uint64_t from,
                       uint64_t to, uint64_t pos, uint64_t stop, struct piece *p)
{
    if (!q->data) {
        piece_set(p, VRUN_ERROR, stop - pos);
        return;
    }
    if (!range_in(host + (from - cstart), to - from, q->data->size)) {
        char what[160];
        snprintf(what, sizeof(what), "data cluster at host offset 0x%" PRIx64
                 " lies past the end of %s", host,
                 q->data == q->l->file ? "the file" : "the external data file");
        cluster_problem(q, cstart, what);
        piece_set(p, VRUN_ERROR, stop - pos);
        return;
    }
    piece_set(p, VRUN_DATA, stop - pos);
    p->src = q->data;
    p->src_off = host + (pos - cstart);
}

static void compressed_piece(struct qcow2 *q, uint64_t entry, uint64_t cstart,
                             uint64_t pos, uint64_t stop, struct piece *p)
{
    uint64_t coff, clen;
    qcow2_compressed(q->g.cluster_bits, entry, &coff, &clen);
    if (coff >= q->l->file->size) {
        char what[128];
        snprintf(what, sizeof(what), "compressed cluster at host offset 0x%" PRIx64
                 " lies past the end of the file", coff);
        cluster_problem(q, cstart, what);
        piece_set(p, VRUN_ERROR, stop - pos);
        return;
    }
    piece_set(p, VRUN_DECODE, stop - pos);
}

/* Describes the guest bytes from pos (inside a cluster whose L2 table is at
 * l2off) as far as they share one kind within that cluster, up to end. */
static inline bool entry_is_zero(const uint8_t *e, size_t size)
{
    uint64_t a, b = 0;
    memcpy(&a, e, 8);
    if (size > 8)
        memcpy(&b, e + 8, 8);
    return (a | b) == 0;
}

/* How many entries from index i of a slice of per entries are all zero:
 * 64 bytes at a time where they are aligned (a sparse table is mostly
 * zeros, and a count reads every entry of it). */
static uint64_t zero_entries(const uint8_t *slice, uint64_t i, uint64_t per, size_t size)
{
    uint64_t start = i;
    uint64_t block = 64 / size;            /* entries per 64 bytes: 4 or 8 */
    while (i < per && i % block && entry_is_zero(slice + i * size, size))
        i++;
    if (i < per && i % block == 0) {
        while (i + block <= per && all_zero64(slice + i * size, 64))
            i += block;
        while (i < per && entry_is_zero(slice + i * size, size))
            i++;
    }
    return i - start;
}

/* Whether entry is a compressed cluster whose data start inside the file:
 * what compressed_piece accepts. */
static bool compressed_ok(const struct qcow2 *q, uint64_t entry)
{
    uint64_t coff, clen;
    if (!(entry & QCOW2_OFLAG_COMPRESSED))
        return false;
    qcow2_compressed(q->g.cluster_bits, entry, &coff, &clen);
    return coff < q->l->file->size;
}

/* Where the run of guest cluster ci (entry, classified t, host offset
 * host) ends within its slice, up to end: the entries after it that are
 * the same kind, data contiguous in the data file, compressed data inside
 * the file.  One step for what would be one piece per cluster. */
static uint64_t same_run_end(struct qcow2 *q, struct l2cur *c, uint64_t ci, uint64_t entry,
                             enum qcow2_ctype t, uint64_t host, uint64_t end)
{
    uint64_t cstart = ci << q->g.cluster_bits;
    uint64_t idx = ci & ((1ull << q->slice_bits) - 1);
    uint64_t per = 1ull << q->slice_bits, n = 1;
    const uint8_t *e = c->data + (idx + 1) * q->entry_size;
    while (idx + n < per && cstart + n * q->cs < end) {
        uint64_t x = get_be64(e);
        if (t == QCOW2_DATA        ? x != entry + n * q->cs || (x ^ entry) & ~QCOW2_L2E_OFFSET_MASK
            : t == QCOW2_COMPRESSED ? !compressed_ok(q, x)
                                    : x != entry)
            break;
        n++;
        e += q->entry_size;
    }
    uint64_t to = VMFS_MIN(cstart + n * q->cs, q->l->size);
    /* A run that leaves the data file is judged cluster by cluster. */
    if (t == QCOW2_DATA && n > 1 && (!q->data || !range_in(host, to - cstart, q->data->size)))
        to = VMFS_MIN(cstart + q->cs, q->l->size);
    return to;
}

static void cluster_piece(struct qcow2 *q, struct l2cur *c, uint64_t l2off,
                          uint64_t pos, uint64_t end, struct piece *p)
{
    uint64_t ci = pos >> q->g.cluster_bits;
    uint64_t cstart = ci << q->g.cluster_bits;
    uint64_t cend = VMFS_MIN(cstart + q->cs, q->l->size);
    uint64_t entry, bitmap, host;
    const char *why;
    int r = l2_entry(q, c, l2off, ci, &entry, &bitmap);
    if (r < 0) {
        uint64_t slice = l2off + (((ci & ((1ull << q->l2_bits) - 1)) >> q->slice_bits) * q->slice_size);
        if (first_report(q, P_L2READ, slice))
            vlayer_problem(q->l, "cannot read the L2 table at 0x%" PRIx64 ": %s",
                           slice, strerror(-r));
        piece_set(p, VRUN_ERROR, VMFS_MIN(cend, end) - pos);
        return;
    }
    if (entry == 0 && bitmap == 0) {
        /* Unallocated: the common case of sparse images.  Skip the run of
         * all-zero entries in this slice in one go. */
        uint64_t idx = (ci & ((1ull << q->l2_bits) - 1)) & ((1ull << q->slice_bits) - 1);
        uint64_t per = 1ull << q->slice_bits;
        uint64_t n = 1 + zero_entries(c->data, idx + 1, per, q->entry_size);
        uint64_t stop = VMFS_MIN(VMFS_MIN(cstart + n * q->cs, q->l->size), end);
        piece_set(p, VRUN_BACKING, stop - pos);
        return;
    }
    uint64_t from = cstart, to = cend;
    enum qcow2_ctype t = qcow2_classify(&q->g, cstart, entry, bitmap, 0, &host, &why);
    if ((!q->g.ext_l2 && (t == QCOW2_DATA || t == QCOW2_ZERO)) ||
        (t == QCOW2_COMPRESSED && compressed_ok(q, entry)))
        to = same_run_end(q, c, ci, entry, t, host, end);
    if (q->g.ext_l2 && t != QCOW2_COMPRESSED && t != QCOW2_INVALID) {
        unsigned sc = (unsigned)((pos - cstart) >> q->sc_bits), sc_end = sc + 1;
        t = qcow2_classify(&q->g, cstart, entry, bitmap, sc, &host, &why);
        while (sc_end < QCOW2_SUBCLUSTERS &&
               qcow2_classify(&q->g, cstart, entry, bitmap, sc_end, &host, &why) == t)
            sc_end++;
        from = cstart + ((uint64_t)sc << q->sc_bits);
        to = VMFS_MIN(cstart + ((uint64_t)sc_end << q->sc_bits), cend);
    }
    uint64_t stop = VMFS_MIN(to, end);
    switch (t) {
    case QCOW2_UNALLOC:
        piece_set(p, VRUN_BACKING, stop - pos);
        break;
    case QCOW2_ZERO:
        piece_set(p, VRUN_ZERO, stop - pos);
        break;
    case QCOW2_DATA:
        data_piece(q, host, cstart, from, to, pos, stop, p);
        break;
    case QCOW2_COMPRESSED:
        compressed_piece(q, entry, cstart, pos, stop, p);
        break;
    case QCOW2_INVALID: {
        char what[160];
        snprintf(what, sizeof(what), "bad L2 entry 0x%016" PRIx64 ": %s", entry, why);
        cluster_problem(q, cstart, what);
        piece_set(p, VRUN_ERROR, stop - pos);
        break;
    }
    }
}

/* When pos lies in a slice known to be empty: the unallocated piece up to
 * the end of the empty slices that follow in its table (and stop). */
static bool empty_piece(struct qcow2 *q, uint64_t pos, uint64_t stop, struct piece *p)
{
    uint64_t ci = pos >> q->g.cluster_bits;
    uint64_t bit = slice_bit(q, ci);
    if (!known_empty(q, bit))
        return false;
    uint64_t spt = 1ull << q->spt_bits, m = 1;
    while ((bit & (spt - 1)) + m < spt && known_empty(q, bit + m))
        m++;
    unsigned sbits = q->slice_bits + q->g.cluster_bits;
    uint64_t send = ((pos >> sbits) + m) << sbits;
    piece_set(p, VRUN_BACKING, VMFS_MIN(VMFS_MIN(send, q->l->size), stop) - pos);
    return true;
}

/* Describes the guest bytes from pos up to at most end as one piece. */
static void piece_at(struct qcow2 *q, struct l2cur *c, uint64_t pos, uint64_t end,
                     struct piece *p)
{
    uint64_t l1i = pos >> span_bits(q);
    uint64_t stop = VMFS_MIN(l1_to_guest(q, l1i + 1), end);
    uint64_t l2off = 0;
    switch (l1_lookup(q, l1i, &l2off)) {
    case L1_BEYOND:
        piece_set(p, VRUN_BACKING, end - pos);
        return;
    case L1_UNALLOC:
        piece_set(p, VRUN_BACKING, stop - pos);
        return;
    case L1_MISSING:  /* all entries up to l1_err_end are: one step */
        piece_set(p, VRUN_ERROR, VMFS_MIN(l1_to_guest(q, q->l1_err_end), end) - pos);
        return;
    case L1_BAD:
        piece_set(p, VRUN_ERROR, stop - pos);
        return;
    case L1_OK:
        if (!empty_piece(q, pos, stop, p))
            cluster_piece(q, c, l2off, pos, end, p);
        return;
    }
}

static bool run_extends(const struct vrun *run, const struct piece *p)
{
    if (run->kind != p->kind)
        return false;
    if (p->kind == VRUN_DATA)
        return run->src == p->src && run->src_off + run->len == p->src_off;
    return true;
}

static int map_runs(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run, bool bulk)
{
    struct qcow2 *q = l->priv;
    struct l2cur c = {.bulk = bulk};
    uint64_t pos = off, end = off + len;
    memset(run, 0, sizeof(*run));
    while (pos < end) {
        struct piece p = {.kind = VRUN_ERROR, .len = end - pos};
        piece_at(q, &c, pos, end, &p);
        if (p.kind == VRUN_BACKING && q->backing_bad)
            p.kind = VRUN_ERROR;
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
    cur_release(&c);
    if (run->kind == VRUN_DECODE) {
        run->unit_off = off & ~(q->cs - 1);
        run->unit_len = VMFS_MIN(q->cs, l->size - run->unit_off);
    }
    return 0;
}

static int q_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    return map_runs(l, off, len, run, false);
}

/* The allocation view: as q_map, except that data stored in a hole of the
 * host file (preallocated metadata, a sparse external data file) counts as
 * a hole, as qemu's block status reports it.  Reads still use q_map.
 * Allocation questions walk on through the tables: L2 is read ahead. */
static int q_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    int r = map_runs(l, off, len, run, true);
    return r < 0 ? r : vrun_refine_holes(run);
}

/* Where the compressed data of the guest cluster at cstart lie; false (and
 * nothing reported) when it is not a readable compressed cluster. */
static bool compressed_at(struct qcow2 *q, struct l2cur *c, uint64_t cstart, uint64_t *coff,
                          uint64_t *clen)
{
    uint64_t l2off, entry, bitmap;
    if (l1_lookup(q, cstart >> span_bits(q), &l2off) != L1_OK ||
        l2_entry(q, c, l2off, cstart >> q->g.cluster_bits, &entry, &bitmap) < 0 ||
        !(entry & QCOW2_OFLAG_COMPRESSED) || q->g.data_file)
        return false;
    qcow2_compressed(q->g.cluster_bits, entry, coff, clen);
    return *coff < q->l->file->size;
}

static int compressed_problem(struct qcow2 *q, uint64_t cstart, uint64_t coff, uint64_t clen,
                              int r, const char *why)
{
    if (r != -ENOMEM && first_report(q, P_COMPRESSED, coff))
        vlayer_problem(q->l, "guest offset 0x%" PRIx64 ": compressed cluster at host "
                       "offset 0x%" PRIx64 " (%" PRIu64 " bytes): %s", cstart, coff,
                       clen, why ? why : strerror(-r));
    return r == -ENOMEM ? r : -EIO;
}

/* Copies [in, in + n) of the compressed guest cluster at cstart to out. */
static int decode_cluster(struct qcow2 *q, struct l2cur *c, uint64_t cstart,
                          uint8_t *out, size_t in, size_t n)
{
    uint64_t coff, clen;
    if (!compressed_at(q, c, cstart, &coff, &clen))
        return -EIO;
    struct comp_fill a = {q, coff, clen, NULL};
    const void *data = NULL;
    struct vcache_entry *ent = NULL;
    int r;
    if (in == 0 && n == q->cs) {
        /* A whole cluster (sequential reads): straight into the caller's
         * buffer; only partly read clusters are worth keeping. */
        r = fill_compressed(&a, out, n);
    } else {
        r = vcache_get(q->l->cache_owner, Q_DECOMP_KEY | coff, (size_t)q->cs,
                       fill_compressed, &a, &data, &ent);
    }
    if (r < 0)
        return compressed_problem(q, cstart, coff, clen, r, a.why);
    if (ent) {
        memcpy(out, (const uint8_t *)data + in, n);
        vcache_release(ent);
    }
    return 0;
}

/* Whole compressed clusters in a row, as a sequential reader asks for them,
 * whose data lie close together in the file (qemu packs them one after the
 * other): read with one pread instead of one per cluster. */
#define Q_BATCH_SPAN (1u << 20)      /* compressed bytes one read may fetch */
#define Q_BATCH_GAP (64u << 10)      /* unrelated bytes it may read across */
#define Q_BATCH_MAX 32u              /* clusters per batch */

/* Decodes whole clusters from cstart on into out (len bytes, a multiple of
 * the cluster size); *done is how many bytes it decoded, 0 when the
 * clusters do not form a batch of two or more (the caller goes on one
 * cluster at a time, and reports what is wrong there). */
static int decode_batch(struct qcow2 *q, struct l2cur *c, uint64_t cstart, uint8_t *out,
                        size_t len, size_t *done)
{
    uint64_t coff[Q_BATCH_MAX], clen[Q_BATCH_MAX], lo = 0, hi = 0;
    unsigned n = 0;
    *done = 0;
    while (n < Q_BATCH_MAX && (uint64_t)(n + 1) * q->cs <= len) {
        uint64_t o, l;
        if (!compressed_at(q, c, cstart + n * q->cs, &o, &l))
            break;
        uint64_t end = o + l;        /* no overflow: o < file size, l < 2^24 */
        if (n > 0 && (o < lo || o > hi + Q_BATCH_GAP || VMFS_MAX(hi, end) - lo > Q_BATCH_SPAN))
            break;
        if (n == 0)
            lo = o;
        hi = VMFS_MAX(hi, end);
        coff[n] = o;
        clen[n] = l;
        n++;
    }
    if (n < 2)
        return 0;
    uint64_t fsize = q->l->file->size;
    size_t span = (size_t)(hi - lo), have = (size_t)(VMFS_MIN(hi, fsize) - lo);
    CLEANUP_FREE uint8_t *in = xmalloc(span);
    memset(in + have, 0, span - have);
    int r = vsrc_pread(q->l->file, in, have, lo);
    if (r < 0)
        return compressed_problem(q, cstart, coff[0], clen[0], r,
                                  "cannot read the compressed data");
    for (unsigned i = 0; i < n; i++) {
        const char *why = NULL;
        r = unpack_cluster(q, in + (coff[i] - lo), (size_t)clen[i], out + i * q->cs,
                           (size_t)q->cs, &why);
        if (r < 0)
            return compressed_problem(q, cstart + i * q->cs, coff[i], clen[i], r, why);
    }
    *done = (size_t)n * (size_t)q->cs;
    return 0;
}

static int q_decode(struct vlayer *l, void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = l->priv;
    struct l2cur c = {0};
    uint8_t *out = buf;
    int r = 0;
    while (len > 0 && r == 0) {
        uint64_t cstart = off & ~(q->cs - 1);
        size_t in = (size_t)(off - cstart);
        size_t n = (size_t)VMFS_MIN((uint64_t)len, q->cs - in);
        if (in == 0 && len >= 2 * q->cs) {
            size_t done;
            r = decode_batch(q, &c, cstart, out, len - len % q->cs, &done);
            if (r == 0 && done > 0)
                n = done;
            else if (r == 0)
                r = decode_cluster(q, &c, cstart, out, in, n);
        } else {
            r = decode_cluster(q, &c, cstart, out, in, n);
        }
        out += n;
        off += n;
        len -= n;
    }
    cur_release(&c);
    return r;
}

/* ------------------------------------------------------------------------
 * Opening
 * ---------------------------------------------------------------------- */

/* Checks a snapshot's L1 table strictly: a snapshot whose table is unusable
 * is not shown rather than shown in part. */
static int check_snapshot_l1(struct qcow2 *q, uint64_t l1_off, uint64_t l1_size,
                             uint64_t need, const char *what)
{
    if (l1_size > QCOW2_MAX_L1_BYTES / 8 || need > QCOW2_MAX_L1_BYTES / 8) {
        vlayer_problem(q->l, "%s: %" PRIu64 " entries (%" PRIu64 " needed) is more than "
                       "the limit of %u", what, l1_size, need, QCOW2_MAX_L1_BYTES / 8);
        return -EINVAL;
    }
    if (l1_size && (l1_off == 0 || (l1_off & (q->cs - 1)))) {
        vlayer_problem(q->l, "%s offset 0x%" PRIx64 " is not a cluster boundary after "
                       "the header", what, l1_off);
        return -EINVAL;
    }
    return 0;
}

/* Judges the header's own L1 table: every fault is reported and leaves the
 * entries concerned missing (error runs); returns how many to load. */
static uint64_t check_active_l1(struct qcow2 *q, uint64_t l1_off, uint64_t l1_size,
                                uint64_t need, uint64_t vsize)
{
    uint64_t max = QCOW2_MAX_L1_BYTES / 8;
    uint64_t want = VMFS_MIN(VMFS_MIN(need, l1_size), max);
    if (l1_size > max)
        vlayer_problem(q->l, "L1 table claims %" PRIu64 " entries, more than the limit of %"
                       PRIu64, l1_size, max);
    if (want < need)
        vlayer_problem(q->l, "L1 table (%" PRIu64 " entries) maps only the first %" PRIu64
                       " bytes of the %" PRIu64 "-byte disk: reads past that fail",
                       l1_size, l1_to_guest(q, want), vsize);
    if (want && (l1_off == 0 || (l1_off & (q->cs - 1)))) {
        vlayer_problem(q->l, "L1 table offset 0x%" PRIx64 " is not a cluster boundary after "
                       "the header: no data can be read", l1_off);
        want = 0;
    }
    return want;
}

/* Makes the L1 table of l1_size entries at l1_off the active one for a disk
 * of vsize bytes.  Entries past vsize are not loaded; entries past the end
 * of the file become error runs (reported here, once).  The header's table
 * (active) is judged leniently: damage leaves error runs.  A snapshot's is
 * judged strictly, and a snapshot table shorter than its disk (taken before
 * a resize) leaves the rest unallocated. */
static int load_l1(struct qcow2 *q, uint64_t l1_off, uint64_t l1_size, uint64_t vsize,
                   bool active, const char *what)
{
    struct vlayer *l = q->l;
    uint64_t need = qcow2_l1_entries_for(vsize, q->g.cluster_bits, q->g.ext_l2);
    uint64_t want = VMFS_MIN(need, l1_size);
    if (active)
        want = check_active_l1(q, l1_off, l1_size, need, vsize);
    else if (check_snapshot_l1(q, l1_off, l1_size, need, what) < 0)
        return -EINVAL;
    uint64_t fsize = l->file->size;
    uint64_t avail = l1_off >= fsize ? 0 : VMFS_MIN(want, (fsize - l1_off) / 8);
    if (avail < want)
        vlayer_problem(l, "%s at 0x%" PRIx64 ": entries %" PRIu64 " to %" PRIu64
                       " lie past the end of the file", what, l1_off, avail, want - 1);
    uint64_t *t = avail ? xmalloc((size_t)avail * 8) : NULL;
    int r = avail ? vsrc_pread(l->file, t, (size_t)avail * 8, l1_off) : 0;
    if (r < 0) {
        vlayer_problem(l, "cannot read %s: %s", what, strerror(-r));
        free(t);
        return r;
    }
    for (uint64_t i = 0; i < avail; i++)
        t[i] = get_be64(&t[i]);
    free(q->l1);
    q->l1 = t;
    q->l1_off = l1_off;
    q->l1_size = l1_size;
    q->l1_avail = avail;
    free(q->empty);
    q->empty = NULL;
    q->empty_bits = avail << q->spt_bits;
    if (avail && q->empty_bits <= Q_EMPTY_MAX_BITS)
        q->empty = xcalloc((size_t)(q->empty_bits + 63) / 64, sizeof *q->empty);
    q->l1_err_end = active ? need : VMFS_MIN(need, l1_size);
    return 0;
}

static void free_snapshots(struct qcow2 *q)
{
    for (size_t i = 0; i < q->nsnaps; i++) {
        free(q->snaps[i].id);
        free(q->snaps[i].name);
    }
    free(q->snaps);
    free(q->snap_l1);
    q->snaps = NULL;
    q->snap_l1 = NULL;
    q->nsnaps = 0;
}

/* Reads snapshot table entry i at *pos and moves *pos past it.  Returns
 * false after reporting why the table cannot be read. */
static bool read_snapshot(struct qcow2 *q, size_t i, uint64_t *pos)
{
    struct vlayer *l = q->l;
    uint8_t e[40];
    if (!range_in(*pos, sizeof(e), l->file->size) ||
        vsrc_pread(l->file, e, sizeof(e), *pos) < 0) {
        vlayer_problem(l, "snapshot table entry %zu at 0x%" PRIx64 " lies past the end of the file",
                       i, *pos);
        return false;
    }
    uint32_t extra = get_be32(e + 36);
    uint16_t id_len = get_be16(e + 12), name_len = get_be16(e + 14);
    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
        vlayer_problem(l, "snapshot table entry %zu has %" PRIu32 " bytes of extra data, "
                       "more than %u", i, extra, QCOW2_MAX_SNAPSHOT_EXTRA);
        return false;
    }
    size_t rest = (size_t)extra + id_len + name_len;
    CLEANUP_FREE uint8_t *b = xmalloc(rest + 1);
    if (!range_in(*pos + sizeof(e), rest, l->file->size) ||
        vsrc_pread(l->file, b, rest, *pos + sizeof(e)) < 0) {
        vlayer_problem(l, "snapshot table entry %zu at 0x%" PRIx64 " lies past the end of the file",
                       i, *pos);
        return false;
    }
    struct vsnap *s = &q->snaps[i];
    q->snap_l1[i].off = get_be64(e);
    q->snap_l1[i].size = get_be32(e + 8);
    s->date_sec = get_be32(e + 16);
    s->date_nsec = get_be32(e + 20);
    s->vm_clock_nsec = get_be64(e + 24);
    s->vm_state_size = extra >= 8 ? get_be64(b) : get_be32(e + 32);
    s->disk_size = extra >= 16 ? get_be64(b + 8) : q->h.size;
    s->disk_size &= ~(uint64_t)511;
    s->id = dup_str(b, rest, extra, id_len);
    s->name = dup_str(b, rest, (uint64_t)extra + id_len, name_len);
    if (!s->id)
        s->id = xstrdup("");
    if (!s->name)
        s->name = xstrdup("");
    *pos += (sizeof(e) + rest + 7) & ~(size_t)7;
    return true;
}

/* Reads the snapshot table.  A damaged table is reported and leaves the
 * image without snapshots; the current state stays readable. */
static void read_snapshots(struct qcow2 *q)
{
    struct vlayer *l = q->l;
    uint64_t n = q->h.nb_snapshots, off = q->h.snapshots_off;
    if (n == 0)
        return;
    if (n > QCOW2_MAX_SNAPSHOTS) {
        vlayer_problem(l, "snapshot table claims %" PRIu64 " snapshots, more than %u; "
                       "snapshots not shown", n, QCOW2_MAX_SNAPSHOTS);
        return;
    }
    if (off == 0 || (off & (q->cs - 1)) || off >= l->file->size) {
        vlayer_problem(l, "snapshot table offset 0x%" PRIx64 " is %s; snapshots not shown",
                       off, off >= l->file->size ? "past the end of the file"
                                                 : "not a cluster boundary after the header");
        return;
    }
    q->snaps = xcalloc((size_t)n, sizeof(*q->snaps));
    q->snap_l1 = xcalloc((size_t)n, sizeof(*q->snap_l1));
    uint64_t pos = off;
    for (size_t i = 0; i < n; i++) {
        q->nsnaps = i;
        if (!read_snapshot(q, i, &pos)) {
            q->nsnaps = i + 1;  /* free the partly filled entry too */
            free_snapshots(q);
            return;
        }
        if (pos - off > QCOW2_MAX_SNAPSHOT_TABLE) {
            vlayer_problem(l, "snapshot table is larger than %u bytes; snapshots not shown",
                           QCOW2_MAX_SNAPSHOT_TABLE);
            q->nsnaps = i + 1;
            free_snapshots(q);
            return;
        }
    }
    q->nsnaps = (size_t)n;
    q->snap_table_ok = true;
}

/* Reads the first cluster (or what of it the file holds) into a buffer
 * padded with zeros to the cluster size. */
static int read_first_cluster(struct vlayer *l, uint8_t **buf, size_t *len)
{
    uint8_t head[24];
    uint64_t fsize = l->file->size;
    size_t n = (size_t)VMFS_MIN(fsize, sizeof(head));
    int r = vsrc_pread(l->file, head, n, 0);
    if (r < 0)
        return r;
    uint32_t bits = n >= 24 ? get_be32(head + 20) : 0;
    size_t want = QCOW2_V3_HEADER_LEN + 8;
    if (bits >= QCOW2_MIN_CLUSTER_BITS && bits <= QCOW2_MAX_CLUSTER_BITS)
        want = (size_t)1 << bits;
    *len = VMFS_MAX(want, (size_t)QCOW2_V3_HEADER_LEN + 8);
    *buf = xcalloc(1, *len);
    n = (size_t)VMFS_MIN(fsize, (uint64_t)*len);
    r = vsrc_pread(l->file, *buf, n, 0);
    if (r < 0) {
        free(*buf);
        *buf = NULL;
    }
    /* Short files are judged by the parser from file_size. */
    return r;
}

static void set_geometry(struct qcow2 *q)
{
    struct qcow2_header *h = &q->h;
    q->g.cluster_bits = h->cluster_bits;
    q->g.v3 = h->version >= 3;
    q->g.ext_l2 = h->incompat & QCOW2_INCOMPAT_EXTL2;
    q->g.data_file = h->incompat & QCOW2_INCOMPAT_DATA_FILE;
    q->cs = 1ull << h->cluster_bits;
    q->entry_size = q->g.ext_l2 ? 16 : 8;
    q->l2_bits = h->cluster_bits - (q->g.ext_l2 ? 4 : 3);
    q->sc_bits = h->cluster_bits - 5;
    q->slice_size = (size_t)VMFS_MIN(q->cs, (uint64_t)Q_SLICE_BYTES);
    unsigned sb = 0;
    while (((size_t)q->entry_size << (sb + 1)) <= q->slice_size)
        sb++;
    q->slice_bits = sb;
    q->spt_bits = q->l2_bits - sb;
}

/* Opens the external data file; a failure (already reported) leaves the
 * image readable except for its data clusters. */
static void open_data_file(struct qcow2 *q)
{
    struct vsrc *src = NULL;
    char *resolved = NULL;
    if (!q->g.data_file) {
        q->data = q->l->file;
        return;
    }
    if (vlayer_open_related(q->l, q->h.data_file, "external data file", &src, &resolved) == 0) {
        q->data = q->data_own = src;
        q->data_path = resolved;
    }
}

static void q_close(struct vlayer *l)
{
    struct qcow2 *q = l->priv;
    if (!q)
        return;
    free(q->l1);
    free(q->empty);
    free_snapshots(q);
    if (q->data_own)
        vsrc_close(q->data_own);
    free(q->data_path);
    qcow2_header_free(&q->h);
    pthread_mutex_destroy(&q->plock);
    free(q);
    l->priv = NULL;
}

static int q_open(struct vlayer *l)
{
    CLEANUP_FREE uint8_t *buf = NULL;
    size_t len = 0;
    char msg[320];
    int r = read_first_cluster(l, &buf, &len);
    if (r < 0) {
        vlayer_problem(l, "cannot read the header: %s", strerror(-r));
        return r;
    }
    struct qcow2 *q = xcalloc(1, sizeof(*q));
    q->l = l;
    q->snap_active = -1;
    pthread_mutex_init(&q->plock, NULL);
    r = qcow2_parse_header(buf, len, l->file->size, &q->h, msg, sizeof(msg));
    if (r < 0) {
        vlayer_problem(l, "%s", msg);
        pthread_mutex_destroy(&q->plock);
        free(q);
        return r;
    }
    l->priv = q;
    set_geometry(q);
    l->size = q->h.size & ~(uint64_t)511;
    r = load_l1(q, q->h.l1_off, q->h.l1_size, l->size, true, "L1 table");
    if (r < 0) {
        q_close(l);
        return r;
    }
    open_data_file(q);
    read_snapshots(q);
    if (q->h.backing_problem) {
        vlayer_problem(l, "%s: reads that need the backing file fail", q->h.backing_problem);
        q->backing_bad = true;
        return 0;
    }
    l->backing_name = q->h.backing_name;
    l->backing_fmt = q->h.backing_fmt;
    q->h.backing_name = q->h.backing_fmt = NULL;
    l->backing_raw_ok = true;
    return 0;
}

static int q_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    if (len < 4 || get_be32(head) != QCOW2_MAGIC)
        return 0;
    /* Version 1 is the older qcow format, another driver's business. */
    if (len >= 8 && get_be32(head + 4) < 2)
        return 0;
    return 100;
}

/* ------------------------------------------------------------------------
 * Snapshots and report
 * ---------------------------------------------------------------------- */

static size_t q_snapshot_count(struct vlayer *l)
{
    struct qcow2 *q = l->priv;
    return q ? q->nsnaps : 0;
}

static const struct vsnap *q_snapshot_get(struct vlayer *l, size_t i)
{
    struct qcow2 *q = l->priv;
    return q && i < q->nsnaps ? &q->snaps[i] : NULL;
}

static int q_snapshot_select(struct vlayer *l, size_t i)
{
    struct qcow2 *q = l->priv;
    if (!q || i >= q->nsnaps)
        return -EINVAL;
    char what[80];
    snprintf(what, sizeof(what), "L1 table of snapshot %s", q->snaps[i].id);
    int r = load_l1(q, q->snap_l1[i].off, q->snap_l1[i].size, q->snaps[i].disk_size, false,
                    what);
    if (r < 0)
        return r;
    l->size = q->snaps[i].disk_size;
    q->snap_active = (long)i;
    return 0;
}

static void report_features(struct qcow2 *q, struct rep *o)
{
    struct rep *arr = rep_set_array(o, "features");
    const uint64_t sets[3] = {q->h.incompat, q->h.compat, q->h.autoclear};
    static const char *const kinds[3] = {"incompatible", "compatible", "autoclear"};
    for (unsigned t = 0; t < 3; t++)
        for (unsigned bit = 0; bit < 64; bit++) {
            if (!(sets[t] >> bit & 1))
                continue;
            const char *name = qcow2_feature_name(&q->h, t, bit);
            if (name)
                rep_add_str(arr, name);
            else
                rep_add_strf(arr, "%s bit %u", kinds[t], bit);
        }
}

static void q_report(struct vlayer *l, struct rep *o)
{
    struct qcow2 *q = l->priv;
    if (!q)
        return;
    const struct qcow2_header *h = &q->h;
    rep_set_u64(o, "format_version", h->version);
    rep_set_size(o, "cluster_size", q->cs);
    rep_set_str(o, "compression", h->compression == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    rep_set_bool(o, "extended_l2", q->g.ext_l2);
    if (q->g.ext_l2)
        rep_set_size(o, "subcluster_size", q->cs / QCOW2_SUBCLUSTERS);
    rep_set_u64(o, "l1_entries", q->l1_size);
    rep_set_u64(o, "refcount_bits", 1ull << h->refcount_order);
    rep_set_bool(o, "lazy_refcounts", h->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
    rep_set_bool(o, "dirty", h->incompat & QCOW2_INCOMPAT_DIRTY);
    rep_set_bool(o, "corrupt", h->incompat & QCOW2_INCOMPAT_CORRUPT);
    if (q->g.data_file) {
        rep_set_str(o, "data_file", h->data_file);
        if (q->data_path)
            rep_set_str(o, "data_file_path", q->data_path);
    }
    rep_set_bool(o, "data_file_raw", q->g.data_file && (h->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW));
    rep_set_bool(o, "encrypted", h->crypt_method != 0);
    report_features(q, o);
    if (h->nb_snapshots) {
        struct rep *st = rep_set_object(o, "snapshot_table");
        rep_set_u64(st, "offset", h->snapshots_off);
        rep_set_u64(st, "entries", h->nb_snapshots);
        rep_set_bool(st, "readable", q->snap_table_ok);
    }
}

const struct vfmt_driver vfmt_qcow2 = {
    .name = "qcow2",
    .probe = q_probe,
    .open = q_open,
    .map = q_map,
    .map_alloc = q_map_alloc,
    .decode = q_decode,
    .report = q_report,
    .snapshot_count = q_snapshot_count,
    .snapshot_get = q_snapshot_get,
    .snapshot_select = q_snapshot_select,
    .close = q_close,
};
