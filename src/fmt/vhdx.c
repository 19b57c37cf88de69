/* vmfs — the VHDX format driver (MS-VHDX version 1).
 *
 * Reads fixed, dynamic and differencing (.avhdx) images with 512 or 4096
 * byte logical sectors and any block size from 1 to 256 MiB.  A pending
 * log (a dirty image) is replayed in memory only: the replayed sectors form
 * an overlay that every read of the file goes through, metadata and payload
 * alike; nothing is ever written.  docs/formats/vhdx.md describes the layout
 * and what vmfs does with each quirk.
 *
 * Threads: open and close run alone.  map and report run on many threads
 * at once; they read state fixed at open, take BAT and sector bitmap slices
 * from the shared cache, and record problems through an atomic bit mask
 * (each kind of damage is reported once).  There is no lock here. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <strings.h>

#include "vmfs/cache.h"
#include "vmfs/fmt.h"
#include "vmfs/image.h"
#include "vmfs/report.h"
#include "vhdx.h"

extern const struct vfmt_driver vfmt_vhdx;

#define MIB (UINT64_C(1) << 20)
#define VHDX_HEADER1 0x10000u
#define VHDX_HEADER2 0x20000u
#define VHDX_REGION1 0x30000u
#define VHDX_REGION2 0x40000u
#define VHDX_TABLE 0x10000u          /* region table and metadata table size */
#define VHDX_MIN_FILE 0x50000u       /* identifier, headers, region tables */
#define VHDX_HEADER_LEN 4096u
#define VHDX_MAX_ENTRIES 2047u
#define VHDX_MAX_ITEM MIB
#define VHDX_MIN_BLOCK MIB
#define VHDX_MAX_BLOCK (256 * MIB)
#define VHDX_MAX_DISK (UINT64_C(64) << 40)   /* the specification's limit */
#define VHDX_MAX_FILE (UINT64_C(1) << 48)    /* no structure lies beyond */
#define VHDX_LOG_MAX (32 * MIB)
#define VHDX_BITMAP MIB                      /* a sector bitmap block */

/* Cache slices: 64 KiB of BAT (8192 entries) or of a sector bitmap. */
#define SLICE 65536u
#define BAT_KEY UINT64_C(0)
#define SB_KEY (UINT64_C(1) << 62)

enum {
    PAYLOAD_NOT_PRESENT = 0,
    PAYLOAD_UNDEFINED = 1,
    PAYLOAD_ZERO = 2,
    PAYLOAD_UNMAPPED = 3,
    PAYLOAD_UNMAPPED_OLD = 5,    /* the draft specification's UNMAPPED */
    PAYLOAD_FULLY_PRESENT = 6,
    PAYLOAD_PARTIALLY_PRESENT = 7,
    SB_PRESENT = 6,
};

static const char GUID_BAT[] = "{2DC27766-F623-4200-9D64-115E9BFD4A08}";
static const char GUID_METADATA[] = "{8B7CA206-4790-4B9A-B8FE-575F050F886E}";
static const char GUID_FILE_PARAMS[] = "{CAA16737-FA36-4D43-B3B6-33F0AA44E76B}";
static const char GUID_DISK_SIZE[] = "{2FA54224-CD1B-4876-B211-5DBED83BF4B8}";
static const char GUID_DISK_ID[] = "{BECA12AB-B2E6-4523-93EF-C309E000C746}";
static const char GUID_LOGICAL[] = "{8141BF1D-A96F-4709-BA47-F233A8FAAB5F}";
static const char GUID_PHYSICAL[] = "{CDA348C7-445D-4471-9CC9-E9885251C556}";
static const char GUID_PARENT[] = "{A8D35F2D-B30B-454D-ABF7-D3D84834AB0C}";
static const char GUID_LOCATOR_VHDX[] = "{B04AEFB7-D19E-4A81-B789-25B8E9445913}";

/* Kinds of damage found while reading, each reported once. */
enum {
    P_BAT_SHORT, P_BAT_IO, P_BLOCK_EOF, P_BLOCK_OFF, P_STATE, P_PARTIAL,
    P_SB_STATE, P_SB_EOF, P_SB_IO, P_LINKAGE,
};

/* The parent locator keys vmfs knows, in the order they are reported. */
enum { PL_REL, PL_VOL, PL_ABS, PL_LINK, PL_LINK2, PL_N };
static const char *const pl_keys[PL_N] = {
    "relative_path", "volume_path", "absolute_win32_path", "parent_linkage",
    "parent_linkage2",
};

struct vhdx {
    struct vsrc *file;          /* the layer's file (not owned) */
    uint64_t vfile_size;        /* its size as seen through the log */
    struct vsrc ovl_src;        /* the file with the log applied */
    struct vhdx_overlay ovl;
    bool have_ovl;

    char *creator;
    unsigned header_used;       /* 1 or 2 */
    uint64_t header_seq;
    uint8_t file_write_guid[16], data_write_guid[16], log_guid[16];
    uint64_t log_off;
    uint32_t log_len;
    char log_state[96];

    uint64_t bat_off, bat_len, md_off, md_len;

    uint32_t block_size, lss, pss;
    unsigned bs_bits, lss_bits;
    uint64_t vsize;
    bool has_parent, leave_allocated, have_disk_id;
    uint8_t disk_id[16];
    uint64_t chunk_ratio, nblocks, bat_entries, bat_usable;

    char *pl[PL_N];             /* parent locator values found */
    unsigned pl_other;          /* other keys */
    bool parent_unknown;        /* a parent is needed but not named */

    atomic_uint reported;       /* P_* bits */
    atomic_int linkage_done;
    char linkage_state[64];     /* written once under linkage_done */
};

/* ------------------------------------------------------------------------
 * Pure helpers: CRC-32C, GUIDs, UTF-16
 * ---------------------------------------------------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (c & 1 ? 0x82F63B78u : 0);
        crc_table[i] = c;
    }
}

uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    for (size_t i = 0; i < len; i++)
        c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return ~c;
}

uint32_t vhdx_struct_crc(const uint8_t *buf, size_t len, size_t csum_off)
{
    static const uint8_t zero[4];
    uint32_t c = vhdx_crc32c(0, buf, csum_off);
    c = vhdx_crc32c(c, zero, 4);
    return vhdx_crc32c(c, buf + csum_off + 4, len - csum_off - 4);
}

void vhdx_guid_format(const uint8_t g[16], char out[39])
{
    snprintf(out, 39, "{%08" PRIX32 "-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X}",
             get_le32(g), get_le16(g + 4), get_le16(g + 6), g[8], g[9], g[10], g[11],
             g[12], g[13], g[14], g[15]);
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

bool vhdx_guid_parse(const char *s, uint8_t g[16])
{
    /* Digits in text order; where each pair of them goes on disk. */
    static const uint8_t place[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    bool brace = *s == '{';
    s += brace;
    unsigned nib = 0;
    uint8_t b[16] = {0};
    for (size_t i = 0; s[i] && nib < 32; i++) {
        if ((i == 8 || i == 13 || i == 18 || i == 23)) {
            if (s[i] != '-')
                return false;
            continue;
        }
        int h = hexval(s[i]);
        if (h < 0)
            return false;
        b[nib / 2] = (uint8_t)(b[nib / 2] << 4 | h);
        nib++;
    }
    if (nib != 32)
        return false;
    const char *end = s + 36;
    if (brace ? strcmp(end, "}") != 0 : *end != '\0')
        return false;
    for (unsigned i = 0; i < 16; i++)
        g[place[i]] = b[i];
    return true;
}

static bool guid_is(const uint8_t *g, const char *text)
{
    char s[39];
    vhdx_guid_format(g, s);
    return !strcasecmp(s, text);
}

static bool guid_zero(const uint8_t *g)
{
    for (int i = 0; i < 16; i++)
        if (g[i])
            return false;
    return true;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

char *vhdx_utf16_to_utf8(const uint8_t *p, size_t n)
{
    size_t units = n / 2;
    char *out = xmalloc(units * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < units; i++) {
        uint32_t u = get_le16(p + 2 * i);
        if (u == 0)
            break;
        if (u >= 0xd800 && u < 0xdc00 && i + 1 < units) {
            uint32_t lo = get_le16(p + 2 * i + 2);
            if (lo >= 0xdc00 && lo < 0xe000) {
                o += put_utf8(out + o, 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00));
                i++;
                continue;
            }
        }
        if (u >= 0xd800 && u < 0xe000)
            u = 0xfffd;
        o += put_utf8(out + o, u);
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------------------
 * The log, replayed in memory (pure)
 * ---------------------------------------------------------------------- */

/* Why a log position does not hold a valid entry of this log. */
enum {
    LE_NONE,        /* no entry of this log starts here (not "damage") */
    LE_OK,
    LE_LENGTH, LE_TAIL, LE_SEQ, LE_DESC_COUNT, LE_CRC, LE_DESC, LE_DATA, LE_BUDGET,
};
static const char *const le_why[] = {
    "", "", "an impossible entry length", "an impossible tail offset",
    "sequence number 0", "more descriptors than the entry holds",
    "a checksum mismatch", "a malformed descriptor", "a malformed data sector",
    "too much damage to check",
};

struct lentry {
    uint64_t seq;
    uint32_t nsect;     /* length in log sectors */
    uint32_t tail;      /* sector index */
    uint32_t dsect;     /* descriptor sectors */
    uint32_t ndesc;
    uint8_t why;        /* LE_* */
};

struct logscan {
    const uint8_t *log;
    uint64_t nsect;
    const uint8_t *guid;
    uint64_t max_off;
    uint64_t budget;    /* bytes the checksums may still cover */
};

static const uint8_t *lsec(const struct logscan *ls, uint64_t i)
{
    return ls->log + (i % ls->nsect) * VHDX_LOG_SECTOR;
}

/* Descriptor i of the entry starting at sector s. */
static const uint8_t *ldesc(const struct logscan *ls, uint64_t s, uint64_t i)
{
    uint64_t at = 64 + 32 * i;
    return lsec(ls, s + at / VHDX_LOG_SECTOR) + at % VHDX_LOG_SECTOR;
}

static uint32_t entry_crc(const struct logscan *ls, uint64_t s, uint32_t nsect)
{
    uint32_t c = vhdx_struct_crc(lsec(ls, s), VHDX_LOG_SECTOR, 4);
    for (uint32_t k = 1; k < nsect; k++)
        c = vhdx_crc32c(c, lsec(ls, s + k), VHDX_LOG_SECTOR);
    return c;
}

/* Checks the descriptors and data sectors of a checksummed entry. */
static uint8_t check_descriptors(const struct logscan *ls, uint64_t s, struct lentry *e)
{
    uint32_t ndata = 0;
    for (uint32_t i = 0; i < e->ndesc; i++) {
        const uint8_t *d = ldesc(ls, s, i);
        uint64_t off = get_le64(d + 16), end;
        if (get_le64(d + 24) != e->seq || off % VHDX_LOG_SECTOR)
            return LE_DESC;
        if (!memcmp(d, "desc", 4)) {
            if (e->dsect + ndata >= e->nsect || ckd_add_u64(&end, off, VHDX_LOG_SECTOR) ||
                end > ls->max_off)
                return LE_DESC;
            const uint8_t *ds = lsec(ls, s + e->dsect + ndata);
            if (memcmp(ds, "data", 4) || get_le32(ds + 4) != (uint32_t)(e->seq >> 32) ||
                get_le32(ds + 4092) != (uint32_t)e->seq)
                return LE_DATA;
            ndata++;
        } else if (!memcmp(d, "zero", 4)) {
            uint64_t zlen = get_le64(d + 8);
            if (zlen % VHDX_LOG_SECTOR || ckd_add_u64(&end, off, zlen) || end > ls->max_off)
                return LE_DESC;
        } else {
            return LE_DESC;
        }
    }
    return LE_OK;
}

/* Looks at log sector s: fills *e, e->why says whether a valid entry of
 * this log starts there. */
static void check_entry(struct logscan *ls, uint64_t s, struct lentry *e)
{
    const uint8_t *h = lsec(ls, s);
    memset(e, 0, sizeof *e);
    if (memcmp(h, "loge", 4) || memcmp(h + 32, ls->guid, 16)) {
        e->why = LE_NONE;
        return;
    }
    uint32_t len = get_le32(h + 8), tail = get_le32(h + 12);
    e->seq = get_le64(h + 16);
    e->ndesc = get_le32(h + 24);
    e->nsect = len / VHDX_LOG_SECTOR;
    e->tail = tail / VHDX_LOG_SECTOR;
    uint64_t dsect = (64 + 32 * (uint64_t)e->ndesc + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
    e->dsect = (uint32_t)VMFS_MIN(dsect, UINT32_MAX);
    if (len == 0 || len % VHDX_LOG_SECTOR || e->nsect > ls->nsect)
        e->why = LE_LENGTH;
    else if (tail % VHDX_LOG_SECTOR || e->tail >= ls->nsect)
        e->why = LE_TAIL;
    else if (e->seq == 0)
        e->why = LE_SEQ;
    else if (dsect > e->nsect)
        e->why = LE_DESC_COUNT;
    else if (ls->budget < len)
        e->why = LE_BUDGET;
    else if ((ls->budget -= len, entry_crc(ls, s, e->nsect) != get_le32(h + 4)))
        e->why = LE_CRC;
    else
        e->why = check_descriptors(ls, s, e);
}

static int cmp_seq_desc(const void *a, const void *b, void *arg)
{
    const struct lentry *e = arg;
    uint64_t x = e[*(const uint32_t *)a].seq, y = e[*(const uint32_t *)b].seq;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* True when the entries from head's tail to head form a complete sequence:
 * each valid, each right after the previous one with the next sequence
 * number, all within one turn of the log.  *count gets their number. */
static bool sequence_ok(const struct logscan *ls, const struct lentry *e, uint32_t head,
                        uint32_t *count)
{
    uint64_t cur = e[head].tail, used = 0;
    uint32_t n = 1;
    if (e[cur].why != LE_OK)
        return false;
    for (;;) {
        used += e[cur].nsect;
        if (used > ls->nsect)
            return false;
        if (cur == head) {
            *count = n;
            return true;
        }
        uint64_t next = (cur + e[cur].nsect) % ls->nsect;
        if (e[next].why != LE_OK || e[next].seq != e[cur].seq + 1)
            return false;
        cur = next;
        n++;
    }
}

struct lop {
    uint64_t off, len;
    const uint8_t *desc;     /* the descriptor */
    const uint8_t *sector;   /* its data sector, NULL for zeros */
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static size_t lower_bound(const uint64_t *v, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The first unassigned segment at or after i (path-halving union-find). */
static size_t next_free(size_t *nf, size_t i)
{
    while (nf[i] != i) {
        nf[i] = nf[nf[i]];
        i = nf[i];
    }
    return i;
}

/* Turns the operations, in replay order, into disjoint extents where the
 * last operation over each byte wins. */
static void build_overlay(const struct lop *ops, size_t nops, struct vhdx_overlay *ovl)
{
    uint64_t *pts = xmalloc((2 * nops + 1) * sizeof *pts);
    size_t np = 0;
    for (size_t i = 0; i < nops; i++) {
        pts[np++] = ops[i].off;
        pts[np++] = ops[i].off + ops[i].len;
    }
    qsort(pts, np, sizeof *pts, cmp_u64);
    size_t u = 0;
    for (size_t i = 0; i < np; i++)
        if (u == 0 || pts[u - 1] != pts[i])
            pts[u++] = pts[i];
    size_t nseg = u ? u - 1 : 0;
    size_t *owner = xmalloc((nseg + 1) * sizeof *owner);
    size_t *nf = xmalloc((nseg + 1) * sizeof *nf);
    for (size_t i = 0; i <= nseg; i++) {
        owner[i] = SIZE_MAX;
        nf[i] = i;
    }
    for (size_t k = nops; k-- > 0;) {
        size_t a = lower_bound(pts, u, ops[k].off);
        size_t b = lower_bound(pts, u, ops[k].off + ops[k].len);
        for (size_t i = next_free(nf, a); i < b; i = next_free(nf, i + 1)) {
            owner[i] = k;
            nf[i] = i + 1;
        }
    }
    size_t ndata = 0;
    for (size_t i = 0; i < nseg; i++)
        if (owner[i] != SIZE_MAX && ops[owner[i]].sector)
            ndata++;
    ovl->arena = ndata ? xmalloc(ndata * VHDX_LOG_SECTOR) : NULL;
    ovl->ext = nseg ? xmalloc(nseg * sizeof *ovl->ext) : NULL;
    ovl->n = 0;
    size_t di = 0;
    for (size_t i = 0; i < nseg; i++) {
        if (owner[i] == SIZE_MAX)
            continue;
        const struct lop *op = &ops[owner[i]];
        struct vhdx_ext *last = ovl->n ? &ovl->ext[ovl->n - 1] : NULL;
        if (!op->sector) {
            if (last && !last->data && last->off + last->len == pts[i]) {
                last->len += pts[i + 1] - pts[i];
                continue;
            }
            ovl->ext[ovl->n++] = (struct vhdx_ext){pts[i], pts[i + 1] - pts[i], NULL};
            continue;
        }
        /* A data operation is one 4 KiB sector, never split: offsets are
         * all 4 KiB aligned. */
        uint8_t *d = ovl->arena + di++ * VHDX_LOG_SECTOR;
        memcpy(d, op->desc + 8, 8);
        memcpy(d + 8, op->sector + 8, 4084);
        memcpy(d + 4092, op->desc + 4, 4);
        ovl->ext[ovl->n++] = (struct vhdx_ext){pts[i], VHDX_LOG_SECTOR, d};
    }
    if (u)
        ovl->end = VMFS_MAX(ovl->end, pts[u - 1]);
    free(pts);
    free(owner);
    free(nf);
}

/* Collects the descriptors of the sequence [first, first + count entries). */
static void replay_sequence(const struct logscan *ls, const struct lentry *e, uint64_t first,
                            uint32_t count, struct vhdx_overlay *ovl, struct vhdx_log_result *res)
{
    size_t nops = 0;
    uint64_t cur = first;
    for (uint32_t k = 0; k < count; k++, cur = (cur + e[cur].nsect) % ls->nsect)
        nops += e[cur].ndesc;
    struct lop *ops = xmalloc((nops + 1) * sizeof *ops);
    size_t n = 0;
    cur = first;
    for (uint32_t k = 0; k < count; k++, cur = (cur + e[cur].nsect) % ls->nsect) {
        uint32_t ndata = 0;
        for (uint32_t i = 0; i < e[cur].ndesc; i++) {
            const uint8_t *d = ldesc(ls, cur, i);
            struct lop *op = &ops[n];
            op->desc = d;
            op->off = get_le64(d + 16);
            if (!memcmp(d, "desc", 4)) {
                op->len = VHDX_LOG_SECTOR;
                op->sector = lsec(ls, cur + e[cur].dsect + ndata++);
            } else {
                op->len = get_le64(d + 8);
                op->sector = NULL;
            }
            if (op->len)
                n++;
        }
    }
    res->descriptors = n;
    build_overlay(ops, n, ovl);
    free(ops);
}

static void damage_at(const struct lentry *e, uint64_t s, const char *what,
                      struct vhdx_log_result *res)
{
    snprintf(res->damage, sizeof res->damage,
             "log entry at log offset %" PRIu64 " (sequence %" PRIu64 ") has %s: %s",
             s * VHDX_LOG_SECTOR, e[s].seq, le_why[e[s].why], what);
}

/* Says why the log stops short of what it holds, if it does. */
static void find_damage(const struct logscan *ls, const struct lentry *e, const uint32_t *order,
                        size_t nvalid, bool found, uint64_t head, struct vhdx_log_result *res)
{
    char what[128];
    if (found) {
        uint64_t next = (head + e[head].nsect) % ls->nsect;
        snprintf(what, sizeof what, "the log is replayed up to sequence %" PRIu64 " only",
                 e[head].seq);
        if (e[next].why > LE_OK && next != e[head].tail) {
            damage_at(e, next, what, res);
            return;
        }
        if (nvalid && e[order[0]].seq > e[head].seq) {
            snprintf(res->damage, sizeof res->damage,
                     "log entry with sequence %" PRIu64 " is not part of a complete sequence: "
                     "%s", e[order[0]].seq, what);
        }
        return;
    }
    for (uint64_t s = 0; s < ls->nsect; s++) {
        if (e[s].why > LE_OK) {
            damage_at(e, s, "nothing is replayed", res);
            return;
        }
    }
    if (nvalid)
        snprintf(res->damage, sizeof res->damage,
                 "the log holds no complete sequence of entries: nothing is replayed");
}

void vhdx_log_replay(const uint8_t *log, uint64_t len, const uint8_t guid[16],
                     uint64_t max_file_off, struct vhdx_overlay *ovl,
                     struct vhdx_log_result *res)
{
    memset(ovl, 0, sizeof *ovl);
    memset(res, 0, sizeof *res);
    struct logscan ls = {log, len / VHDX_LOG_SECTOR, guid, max_file_off, 16 * len + 64 * MIB};
    if (ls.nsect == 0)
        return;
    struct lentry *e = xcalloc(ls.nsect, sizeof *e);
    uint32_t *order = xmalloc(ls.nsect * sizeof *order);
    size_t nvalid = 0;
    for (uint64_t s = 0; s < ls.nsect; s++) {
        check_entry(&ls, s, &e[s]);
        if (e[s].why == LE_OK)
            order[nvalid++] = (uint32_t)s;
    }
    qsort_r(order, nvalid, sizeof *order, cmp_seq_desc, e);
    uint32_t count = 0;
    bool found = false;
    uint64_t head = 0;
    for (size_t i = 0; i < nvalid && !found; i++) {
        head = order[i];
        found = sequence_ok(&ls, e, order[i], &count);
    }
    find_damage(&ls, e, order, nvalid, found, head, res);
    if (found) {
        res->entries = count;
        res->first_seq = e[e[head].tail].seq;
        res->last_seq = e[head].seq;
        const uint8_t *h = lsec(&ls, head);
        res->flushed_file_offset = get_le64(h + 48);
        res->last_file_offset = get_le64(h + 56);
        ovl->end = VMFS_MIN(res->last_file_offset, max_file_off);
        replay_sequence(&ls, e, e[head].tail, count, ovl, res);
    }
    free(e);
    free(order);
}

void vhdx_overlay_free(struct vhdx_overlay *ovl)
{
    free(ovl->ext);
    free(ovl->arena);
    memset(ovl, 0, sizeof *ovl);
}

/* The first extent that ends after off. */
static size_t ovl_find(const struct vhdx_overlay *ovl, uint64_t off)
{
    size_t lo = 0, hi = ovl->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ovl->ext[mid].off + ovl->ext[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

bool vhdx_overlay_touches(const struct vhdx_overlay *ovl, uint64_t off, uint64_t len)
{
    size_t i = ovl_find(ovl, off);
    return i < ovl->n && ovl->ext[i].off < off + len;
}

void vhdx_overlay_apply(const struct vhdx_overlay *ovl, uint8_t *buf, size_t len, uint64_t off)
{
    uint64_t end = off + len;
    for (size_t i = ovl_find(ovl, off); i < ovl->n && ovl->ext[i].off < end; i++) {
        const struct vhdx_ext *x = &ovl->ext[i];
        uint64_t a = VMFS_MAX(x->off, off), b = VMFS_MIN(x->off + x->len, end);
        if (x->data)
            memcpy(buf + (a - off), x->data + (a - x->off), (size_t)(b - a));
        else
            memset(buf + (a - off), 0, (size_t)(b - a));
    }
}

/* ------------------------------------------------------------------------
 * Reading the file, through the log when one was replayed
 * ---------------------------------------------------------------------- */

/* The file as the log leaves it: file bytes, zeros where the log made the
 * file longer, replayed sectors over both. */
static int ovl_pread(struct vsrc *s, void *buf, size_t len, uint64_t off)
{
    struct vhdx *v = s->priv;
    uint64_t fsize = v->file->size;
    size_t have = off < fsize ? (size_t)VMFS_MIN((uint64_t)len, fsize - off) : 0;
    if (have) {
        int r = vsrc_pread(v->file, buf, have, off);
        if (r < 0)
            return r;
    }
    memset((uint8_t *)buf + have, 0, len - have);
    vhdx_overlay_apply(&v->ovl, buf, len, off);
    return 0;
}

static void ovl_close(struct vsrc *s) { (void)s; }

static const struct vsrc_ops ovl_ops = {.pread = ovl_pread, .close = ovl_close};

static struct vsrc *src_of(struct vhdx *v) { return v->have_ovl ? &v->ovl_src : v->file; }

/* Reads metadata at off; -EIO when it lies past the end of the file. */
static int vread(struct vhdx *v, void *buf, size_t len, uint64_t off)
{
    return vsrc_pread(src_of(v), buf, len, off);
}

/* Where the payload bytes [off, off + len) of the file are read from: the
 * plain file (spliceable) unless the log touched them. */
static struct vsrc *data_src(struct vhdx *v, uint64_t off, uint64_t len)
{
    if (!v->have_ovl || (range_in(off, len, v->file->size) &&
                         !vhdx_overlay_touches(&v->ovl, off, len)))
        return v->file;
    return &v->ovl_src;
}

/* ------------------------------------------------------------------------
 * Open: file identifier, headers, log, region table, metadata
 * ---------------------------------------------------------------------- */

static int read_file_id(struct vlayer *l, struct vhdx *v)
{
    if (l->file->size < VHDX_MIN_FILE) {
        vlayer_problem(l, "truncated: the file has %" PRIu64 " bytes, a VHDX needs at least "
                       "%u for its headers and region tables", l->file->size, VHDX_MIN_FILE);
        return -EINVAL;
    }
    uint8_t id[520];
    int r = vsrc_pread(l->file, id, sizeof id, 0);
    if (r < 0) {
        vlayer_problem(l, "cannot read the file identifier: %s", strerror(-r));
        return r;
    }
    if (memcmp(id, "vhdxfile", 8)) {
        vlayer_problem(l, "bad magic: the file does not start with \"vhdxfile\"");
        return -EINVAL;
    }
    v->creator = vhdx_utf16_to_utf8(id + 8, 512);
    return 0;
}

/* "" when the header in buf is valid, else why not. */
static const char *header_damage(const uint8_t *buf)
{
    if (memcmp(buf, "head", 4))
        return "bad signature";
    if (vhdx_struct_crc(buf, VHDX_HEADER_LEN, 4) != get_le32(buf + 4))
        return "checksum mismatch";
    return "";
}

static int parse_header(struct vlayer *l, struct vhdx *v, const uint8_t *h)
{
    v->header_seq = get_le64(h + 8);
    memcpy(v->file_write_guid, h + 16, 16);
    memcpy(v->data_write_guid, h + 32, 16);
    memcpy(v->log_guid, h + 48, 16);
    uint16_t log_version = get_le16(h + 64), version = get_le16(h + 66);
    v->log_len = get_le32(h + 68);
    v->log_off = get_le64(h + 72);
    if (version != 1) {
        vlayer_problem(l, "header %u: VHDX version %u is not supported (only version 1)",
                       v->header_used, version);
        return -ENOTSUP;
    }
    if (log_version != 0 && !guid_zero(v->log_guid)) {
        vlayer_problem(l, "header %u: log version %u is not supported (only version 0)",
                       v->header_used, log_version);
        return -ENOTSUP;
    }
    return 0;
}

/* Picks the current header: the valid one with the higher sequence number. */
static int read_headers(struct vlayer *l, struct vhdx *v)
{
    uint8_t h[2][VHDX_HEADER_LEN];
    const char *why[2];
    for (int i = 0; i < 2; i++) {
        int r = vsrc_pread(l->file, h[i], VHDX_HEADER_LEN, i ? VHDX_HEADER2 : VHDX_HEADER1);
        if (r < 0) {
            vlayer_problem(l, "cannot read header %d: %s", i + 1, strerror(-r));
            return r;
        }
        why[i] = header_damage(h[i]);
    }
    if (why[0][0] && why[1][0]) {
        vlayer_problem(l, "both headers are damaged (header 1: %s, header 2: %s): "
                       "the image cannot be read", why[0], why[1]);
        return -EINVAL;
    }
    int use = why[0][0] ? 1 : why[1][0] ? 0 : get_le64(h[1] + 8) > get_le64(h[0] + 8);
    v->header_used = (unsigned)use + 1;
    if (why[!use][0])
        vlayer_problem(l, "header %d is damaged (%s); header %d (sequence %" PRIu64 ") is used",
                       !use + 1, why[!use], use + 1, get_le64(h[use] + 8));
    return parse_header(l, v, h[use]);
}

static int replay_log(struct vlayer *l, struct vhdx *v)
{
    if (guid_zero(v->log_guid) || v->log_len == 0) {
        snprintf(v->log_state, sizeof v->log_state, "clean");
        return 0;
    }
    if (v->log_off < MIB || v->log_off % MIB || v->log_len % MIB ||
        !range_in(v->log_off, v->log_len, l->file->size)) {
        vlayer_problem(l, "the image has a pending log, but its region (offset %" PRIu64
                       ", %" PRIu32 " bytes) is invalid or lies past the end of the file",
                       v->log_off, v->log_len);
        return -EINVAL;
    }
    if (v->log_len > VHDX_LOG_MAX) {
        vlayer_problem(l, "the pending log is %" PRIu32 " bytes, more than vmfs replays "
                       "(%" PRIu64 ")", v->log_len, VHDX_LOG_MAX);
        return -EFBIG;
    }
    uint8_t *log = xmalloc(v->log_len);
    int r = vsrc_pread(l->file, log, v->log_len, v->log_off);
    if (r < 0) {
        vlayer_problem(l, "cannot read the log: %s", strerror(-r));
        free(log);
        return r;
    }
    struct vhdx_log_result res;
    vhdx_log_replay(log, v->log_len, v->log_guid, VHDX_MAX_FILE, &v->ovl, &res);
    free(log);
    if (res.damage[0])
        vlayer_problem(l, "%s", res.damage);
    if (res.entries == 0) {
        if (!res.damage[0])
            vlayer_problem(l, "the header names a pending log, but the log holds no valid "
                           "entry: nothing is replayed");
        snprintf(v->log_state, sizeof v->log_state, "pending, nothing valid to replay");
        return 0;
    }
    snprintf(v->log_state, sizeof v->log_state, "replayed %u entr%s (sequence %" PRIu64
             " to %" PRIu64 ")", res.entries, res.entries == 1 ? "y" : "ies",
             res.first_seq, res.last_seq);
    if (res.flushed_file_offset > l->file->size)
        vlayer_problem(l, "the log says the file had at least %" PRIu64 " bytes, it has %" PRIu64
                       ": it was truncated", res.flushed_file_offset, l->file->size);
    v->have_ovl = true;
    v->ovl_src = (struct vsrc){.ops = &ovl_ops, .fd = -1, .name = l->file->name, .priv = v};
    v->vfile_size = VMFS_MAX(l->file->size, v->ovl.end);
    v->ovl_src.size = v->vfile_size;
    return 0;
}

/* "" when the region table in buf is valid, else why not. */
static const char *region_damage(const uint8_t *buf)
{
    if (memcmp(buf, "regi", 4))
        return "bad signature";
    if (vhdx_struct_crc(buf, VHDX_TABLE, 4) != get_le32(buf + 4))
        return "checksum mismatch";
    if (get_le32(buf + 8) > VHDX_MAX_ENTRIES)
        return "more than 2047 entries";
    return "";
}

static int region_entry(struct vlayer *l, struct vhdx *v, const uint8_t *e, bool *bat, bool *md)
{
    uint64_t off = get_le64(e + 16);
    uint32_t len = get_le32(e + 24);
    bool required = get_le32(e + 28) & 1;
    char g[39];
    vhdx_guid_format(e, g);
    bool is_bat = guid_is(e, GUID_BAT), is_md = guid_is(e, GUID_METADATA);
    if (!is_bat && !is_md) {
        if (required) {
            vlayer_problem(l, "region %s is marked required but vmfs does not know it", g);
            return -ENOTSUP;
        }
        return 0;
    }
    const char *name = is_bat ? "BAT" : "metadata";
    if ((is_bat && *bat) || (is_md && *md)) {
        vlayer_problem(l, "the region table lists the %s region twice", name);
        return -EINVAL;
    }
    if (off < MIB || off > VHDX_MAX_FILE || len == 0 || (is_md && len < VHDX_TABLE)) {
        vlayer_problem(l, "the %s region (offset %" PRIu64 ", %" PRIu32 " bytes) is invalid",
                       name, off, len);
        return -EINVAL;
    }
    if (is_bat) {
        *bat = true;
        v->bat_off = off;
        v->bat_len = len;
    } else {
        *md = true;
        v->md_off = off;
        v->md_len = len;
    }
    return 0;
}

static int read_regions(struct vlayer *l, struct vhdx *v)
{
    uint8_t *t = xmalloc(VHDX_TABLE);
    const char *why[2] = {"", ""};
    int use = -1;
    for (int i = 0; i < 2 && use < 0; i++) {
        int r = vread(v, t, VHDX_TABLE, i ? VHDX_REGION2 : VHDX_REGION1);
        why[i] = r < 0 ? "cannot be read" : region_damage(t);
        if (!why[i][0])
            use = i;
    }
    if (use < 0) {
        vlayer_problem(l, "both region tables are damaged (table 1: %s, table 2: %s): "
                       "the image cannot be read", why[0], why[1]);
        free(t);
        return -EINVAL;
    }
    if (use == 1)
        vlayer_problem(l, "region table 1 is damaged (%s); region table 2 is used", why[0]);
    bool bat = false, md = false;
    uint32_t n = get_le32(t + 8);
    int r = 0;
    for (uint32_t i = 0; i < n && r == 0; i++)
        r = region_entry(l, v, t + 16 + 32 * i, &bat, &md);
    free(t);
    if (r == 0 && (!bat || !md)) {
        vlayer_problem(l, "the region table has no %s region", bat ? "metadata" : "BAT");
        r = -EINVAL;
    }
    return r;
}

/* Reads metadata item bytes into buf (n bytes); -EIO recorded. */
static int read_item(struct vlayer *l, struct vhdx *v, const char *what, uint32_t ioff,
                     void *buf, size_t n)
{
    int r = vread(v, buf, n, v->md_off + ioff);
    if (r < 0)
        vlayer_problem(l, "cannot read the %s metadata item: %s", what,
                       r == -EIO ? "it lies past the end of the file" : strerror(-r));
    return r;
}

struct md_found {
    bool params, size, lss, pss, id;
    uint32_t pl_off, pl_len;
    bool pl;
};

static int md_item(struct vlayer *l, struct vhdx *v, const uint8_t *e, struct md_found *f)
{
    uint32_t ioff = get_le32(e + 16), ilen = get_le32(e + 20), flags = get_le32(e + 24);
    char g[39];
    vhdx_guid_format(e, g);
    if (ilen == 0)
        return 0;
    if (ioff < VHDX_TABLE || ilen > VHDX_MAX_ITEM || ioff > v->md_len || ilen > v->md_len - ioff) {
        vlayer_problem(l, "metadata item %s (offset %" PRIu32 ", %" PRIu32 " bytes) lies "
                       "outside the metadata region", g, ioff, ilen);
        return -EINVAL;
    }
    uint8_t b[16];
    struct { const char *guid; bool *seen; size_t need; const char *name; } fixed[] = {
        {GUID_FILE_PARAMS, &f->params, 8, "file parameters"},
        {GUID_DISK_SIZE, &f->size, 8, "virtual disk size"},
        {GUID_LOGICAL, &f->lss, 4, "logical sector size"},
        {GUID_PHYSICAL, &f->pss, 4, "physical sector size"},
        {GUID_DISK_ID, &f->id, 16, "virtual disk id"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(fixed); i++) {
        if (strcasecmp(g, fixed[i].guid))
            continue;
        if (*fixed[i].seen)
            return 0;               /* the first of duplicates counts */
        if (ilen < fixed[i].need) {
            vlayer_problem(l, "the %s metadata item is %" PRIu32 " bytes, too short",
                           fixed[i].name, ilen);
            return -EINVAL;
        }
        int r = read_item(l, v, fixed[i].name, ioff, b, fixed[i].need);
        if (r < 0)
            return r;
        *fixed[i].seen = true;
        switch (i) {
        case 0:
            v->block_size = get_le32(b);
            v->leave_allocated = get_le32(b + 4) & 1;
            v->has_parent = get_le32(b + 4) & 2;
            break;
        case 1: v->vsize = get_le64(b); break;
        case 2: v->lss = get_le32(b); break;
        case 3: v->pss = get_le32(b); break;
        default: memcpy(v->disk_id, b, 16); v->have_disk_id = true; break;
        }
        return 0;
    }
    if (!strcasecmp(g, GUID_PARENT)) {
        if (!f->pl) {
            f->pl = true;
            f->pl_off = ioff;
            f->pl_len = ilen;
        }
        return 0;
    }
    if (flags & 4) {
        vlayer_problem(l, "metadata item %s is marked required but vmfs does not know it", g);
        return -ENOTSUP;
    }
    return 0;
}

static unsigned log2_u64(uint64_t v)
{
    unsigned b = 0;
    while (v >>= 1)
        b++;
    return b;
}

/* Checks the disk geometry and sizes the BAT. */
static int check_geometry(struct vlayer *l, struct vhdx *v, const struct md_found *f)
{
    if (!f->params || !f->size || !f->lss) {
        vlayer_problem(l, "the metadata lacks the %s item",
                       !f->params ? "file parameters" : !f->size ? "virtual disk size"
                                                      : "logical sector size");
        return -EINVAL;
    }
    if (!is_pow2_u64(v->block_size) || v->block_size < VHDX_MIN_BLOCK ||
        v->block_size > VHDX_MAX_BLOCK) {
        vlayer_problem(l, "block size %" PRIu32 " is invalid (a power of two from 1 MiB "
                       "to 256 MiB)", v->block_size);
        return -EINVAL;
    }
    if (v->lss != 512 && v->lss != 4096) {
        vlayer_problem(l, "logical sector size %" PRIu32 " is invalid (512 or 4096)", v->lss);
        return -EINVAL;
    }
    if (v->vsize > VHDX_MAX_DISK) {
        vlayer_problem(l, "virtual size %" PRIu64 " bytes is absurd (more than 64 TiB, the "
                       "format's limit)", v->vsize);
        return -EFBIG;
    }
    if (f->pss && v->pss != 512 && v->pss != 4096)
        vlayer_problem(l, "physical sector size %" PRIu32 " is invalid (512 or 4096)", v->pss);
    v->bs_bits = log2_u64(v->block_size);
    v->lss_bits = log2_u64(v->lss);
    v->chunk_ratio = ((UINT64_C(1) << 23) * v->lss) >> v->bs_bits;
    v->nblocks = (v->vsize + v->block_size - 1) >> v->bs_bits;
    if (v->has_parent) {
        uint64_t nchunks = (v->nblocks + v->chunk_ratio - 1) / v->chunk_ratio;
        v->bat_entries = nchunks * (v->chunk_ratio + 1);
    } else {
        v->bat_entries = v->nblocks ? v->nblocks + (v->nblocks - 1) / v->chunk_ratio : 0;
    }
    uint64_t usable = VMFS_MIN(v->bat_entries, v->bat_len / 8);
    if (usable < v->bat_entries)
        vlayer_problem(l, "the BAT region holds %" PRIu64 " entries, the disk needs %" PRIu64
                       ": blocks past it cannot be read", v->bat_len / 8, v->bat_entries);
    uint64_t in_file = v->bat_off < v->vfile_size ? (v->vfile_size - v->bat_off) / 8 : 0;
    if (in_file < usable) {
        vlayer_problem(l, "the BAT (offset %" PRIu64 ") runs past the end of the file: "
                       "blocks whose entries are missing cannot be read", v->bat_off);
        usable = in_file;
    }
    v->bat_usable = usable;
    return 0;
}

static void set_pl_value(struct vhdx *v, const char *key, char *val)
{
    for (int i = 0; i < PL_N; i++) {
        if (!strcmp(key, pl_keys[i])) {
            if (!v->pl[i]) {
                v->pl[i] = val;
                return;
            }
            free(val);          /* a repeated key: the first counts */
            return;
        }
    }
    v->pl_other++;
    free(val);
}

/* Reads the key/value entries of a VHDX parent locator item held in b. */
static void parse_locator(struct vlayer *l, struct vhdx *v, const uint8_t *b, uint32_t n)
{
    if (n < 20 || !guid_is(b, GUID_LOCATOR_VHDX)) {
        char g[39] = "(none)";
        if (n >= 16)
            vhdx_guid_format(b, g);
        vlayer_problem(l, "the parent locator has type %s, not the VHDX type: the parent "
                       "cannot be found", g);
        return;
    }
    uint32_t count = get_le16(b + 18);
    if (count > (n - 20) / 12) {
        vlayer_problem(l, "the parent locator claims %" PRIu32 " entries, its item holds %"
                       PRIu32, count, (n - 20) / 12);
        count = (n - 20) / 12;
    }
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = b + 20 + 12 * i;
        uint32_t ko = get_le32(e), vo = get_le32(e + 4);
        uint16_t kl = get_le16(e + 8), vl = get_le16(e + 10);
        if (!range_in(ko, kl, n) || !range_in(vo, vl, n)) {
            vlayer_problem(l, "parent locator entry %" PRIu32 " lies outside its item", i);
            continue;
        }
        char *key = vhdx_utf16_to_utf8(b + ko, kl);
        set_pl_value(v, key, vhdx_utf16_to_utf8(b + vo, vl));
        free(key);
    }
}

/* Names the parent from the locator: relative path first (backslashes
 * turned into slashes), then the absolute and volume paths, which the image
 * layer also tries as a file of their last component beside this one. */
static int find_parent(struct vlayer *l, struct vhdx *v, const struct md_found *f)
{
    if (!v->has_parent)
        return 0;
    if (!f->pl) {
        vlayer_problem(l, "a differencing image without a parent locator: reads that need "
                       "the parent fail");
        v->parent_unknown = true;
        return 0;
    }
    uint8_t *b = xmalloc(f->pl_len);
    int r = read_item(l, v, "parent locator", f->pl_off, b, f->pl_len);
    if (r == 0)
        parse_locator(l, v, b, f->pl_len);
    free(b);
    char *rel = v->pl[PL_REL] ? xstrdup(v->pl[PL_REL]) : NULL;
    for (char *p = rel; p && *p; p++)
        if (*p == '\\')
            *p = '/';
    const char *relp = rel;
    while (relp && relp[0] == '.' && relp[1] == '/')   /* ".\\x.vhdx" names "x.vhdx" */
        relp += 2;
    const char *names[3] = {relp, v->pl[PL_ABS], v->pl[PL_VOL]};
    vlayer_set_backing_candidates(l, names, 3);
    free(rel);
    if (!l->backing_name) {
        if (r == 0)
            vlayer_problem(l, "the parent locator names no parent path: reads that need the "
                           "parent fail");
        v->parent_unknown = true;
        return 0;
    }
    free(l->backing_fmt);
    l->backing_fmt = xstrdup("vhdx");
    return 0;
}

static int read_metadata(struct vlayer *l, struct vhdx *v)
{
    uint8_t *t = xmalloc(VHDX_TABLE);
    int r = vread(v, t, VHDX_TABLE, v->md_off);
    if (r < 0) {
        vlayer_problem(l, "cannot read the metadata table at offset %" PRIu64 ": %s", v->md_off,
                       r == -EIO ? "it lies past the end of the file" : strerror(-r));
        free(t);
        return r;
    }
    struct md_found f = {0};
    if (memcmp(t, "metadata", 8)) {
        vlayer_problem(l, "the metadata table has a bad signature");
        r = -EINVAL;
    } else if (get_le16(t + 10) > VHDX_MAX_ENTRIES) {
        vlayer_problem(l, "the metadata table claims %u entries (at most 2047)", get_le16(t + 10));
        r = -EINVAL;
    }
    for (unsigned i = 0; r == 0 && i < get_le16(t + 10); i++)
        r = md_item(l, v, t + 32 + 32 * i, &f);
    free(t);
    if (r == 0)
        r = check_geometry(l, v, &f);
    if (r == 0)
        r = find_parent(l, v, &f);
    return r;
}

static int vhdx_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    (void)file_size;
    (void)path;
    return len >= 8 && !memcmp(head, "vhdxfile", 8) ? 100 : 0;
}

static void vhdx_close(struct vlayer *l)
{
    struct vhdx *v = l->priv;
    if (!v)
        return;
    vhdx_overlay_free(&v->ovl);
    free(v->creator);
    for (int i = 0; i < PL_N; i++)
        free(v->pl[i]);
    free(v);
    l->priv = NULL;
}

static int vhdx_open(struct vlayer *l)
{
    struct vhdx *v = xcalloc(1, sizeof *v);
    l->priv = v;
    v->file = l->file;
    v->vfile_size = l->file->size;
    int r = read_file_id(l, v);
    if (r == 0)
        r = read_headers(l, v);
    if (r == 0)
        r = replay_log(l, v);
    if (r == 0)
        r = read_regions(l, v);
    if (r == 0)
        r = read_metadata(l, v);
    if (r < 0)
        return r;
    l->size = v->vsize;
    return 0;
}

/* ------------------------------------------------------------------------
 * Mapping: BAT entries and sector bitmaps to runs
 * ---------------------------------------------------------------------- */

static void VMFS_PRINTF(3, 4) once(struct vlayer *l, unsigned kind, const char *fmt, ...)
{
    struct vhdx *v = l->priv;
    if (atomic_fetch_or(&v->reported, 1u << kind) & (1u << kind))
        return;
    va_list ap;
    char *msg;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    va_end(ap);
    if (kind == P_LINKAGE)
        vlayer_problem(l, "%s", msg);
    else
        vlayer_problem(l, "%s (further damage of this kind is not listed)", msg);
    free(msg);
}

struct slice_fill {
    struct vhdx *v;
    uint64_t off;
};

static int fill_slice(void *arg, void *buf, size_t size)
{
    struct slice_fill *a = arg;
    return vread(a->v, buf, size, a->off);
}

/* A cache slice held while a map walks through it. */
struct slice_ref {
    uint64_t key;
    const uint8_t *data;
    struct vcache_entry *ent;
};

static void slice_drop(struct slice_ref *s)
{
    if (s->ent)
        vcache_release(s->ent);
    s->ent = NULL;
}

static int slice_get(struct vlayer *l, struct slice_ref *s, uint64_t key, uint64_t off,
                     size_t size)
{
    if (s->ent && s->key == key)
        return 0;
    slice_drop(s);
    struct slice_fill a = {l->priv, off};
    const void *data;
    int r = vcache_get(l->cache_owner, key, size, fill_slice, &a, &data, &s->ent);
    if (r < 0) {
        s->ent = NULL;
        return r;
    }
    s->key = key;
    s->data = data;
    return 0;
}

/* BAT entry idx (< bat_usable) through the slice s. */
static int bat_get(struct vlayer *l, struct slice_ref *s, uint64_t idx, uint64_t *entry)
{
    struct vhdx *v = l->priv;
    const uint64_t per = SLICE / 8;
    uint64_t slice = idx / per;
    size_t size = (size_t)VMFS_MIN((uint64_t)SLICE, (v->bat_usable - slice * per) * 8);
    int r = slice_get(l, s, BAT_KEY | slice, v->bat_off + slice * SLICE, size);
    if (r < 0)
        return r;
    *entry = get_le64(s->data + (idx % per) * 8);
    return 0;
}

static void error_run(struct vrun *run)
{
    run->kind = VRUN_ERROR;
    run->err = EIO;
}

/* What a block says when it has nothing of its own: the parent's bytes,
 * which fail when open found no parent name (and said so). */
static void parent_run(struct vlayer *l, struct vrun *run)
{
    struct vhdx *v = l->priv;
    if (v->parent_unknown)
        error_run(run);
    else
        run->kind = VRUN_BACKING;
}

/* Checks that payload block b at file offset foff lies in the file. */
static bool block_in_file(struct vlayer *l, uint64_t b, uint64_t foff, uint64_t blen)
{
    struct vhdx *v = l->priv;
    if (foff < MIB) {
        once(l, P_BLOCK_OFF, "block %" PRIu64 " (virtual offset %" PRIu64 ") is marked present "
             "at file offset %" PRIu64 ", inside the header area", b, b << v->bs_bits, foff);
        return false;
    }
    if (!range_in(foff, blen, v->vfile_size)) {
        once(l, P_BLOCK_EOF, "block %" PRIu64 " (virtual offset %" PRIu64 ") lies at file offset "
             "%" PRIu64 ", past the end of the file (%" PRIu64 " bytes)", b, b << v->bs_bits,
             foff, v->vfile_size);
        return false;
    }
    return true;
}

static void data_run(struct vhdx *v, uint64_t src_off, struct vrun *run)
{
    run->kind = VRUN_DATA;
    run->src_off = src_off;
    run->src = data_src(v, src_off, run->len);
}

/* Within a partially present block: the sectors from o (offset in the
 * block) whose bitmap bits equal the first one, up to o + lim.  The
 * bitmap's BAT entry follows its chunk's block entries, so it normally
 * lies in the BAT slice bat already holds. */
static void partial_run(struct vlayer *l, struct slice_ref *bat, struct slice_ref *sb,
                        uint64_t b, uint64_t foff, uint64_t o, struct vrun *run)
{
    struct vhdx *v = l->priv;
    uint64_t chunk = b / v->chunk_ratio;
    uint64_t idx = chunk * (v->chunk_ratio + 1) + v->chunk_ratio, e;
    if (idx >= v->bat_usable) {
        once(l, P_BAT_SHORT, "the BAT entry of the sector bitmap of chunk %" PRIu64 " is missing",
             chunk);
        error_run(run);
        return;
    }
    int r = bat_get(l, bat, idx, &e);
    if (r < 0) {
        once(l, P_BAT_IO, "cannot read the BAT: %s", strerror(-r));
        error_run(run);
        return;
    }
    uint64_t sboff = (e >> 20) << 20;
    if ((e & 7) != SB_PRESENT) {
        once(l, P_SB_STATE, "block %" PRIu64 " is partially present but the sector bitmap of "
             "its chunk is not (state %u)", b, (unsigned)(e & 7));
        error_run(run);
        return;
    }
    if (sboff < MIB || !range_in(sboff, VHDX_BITMAP, v->vfile_size)) {
        once(l, P_SB_EOF, "the sector bitmap of chunk %" PRIu64 " lies at file offset %" PRIu64
             ", outside the file", chunk, sboff);
        error_run(run);
        return;
    }
    uint64_t spb = (uint64_t)v->block_size >> v->lss_bits;     /* sectors per block */
    uint64_t first = (b % v->chunk_ratio) * spb + (o >> v->lss_bits);   /* in the chunk */
    uint64_t byte = first / 8, slice = byte / SLICE;
    r = slice_get(l, sb, SB_KEY | chunk << 8 | slice, sboff + slice * SLICE, SLICE);
    if (r < 0) {
        once(l, P_SB_IO, "cannot read the sector bitmap of chunk %" PRIu64 ": %s", chunk,
             strerror(-r));
        error_run(run);
        return;
    }
    /* A block's bits never straddle a slice: at most 64 KiB of them, and
     * both sizes are powers of two. */
    const uint8_t *bits = sb->data;
    uint64_t base = (b % v->chunk_ratio) * spb;
    uint64_t end_sec = base + ((o + run->len + v->lss - 1) >> v->lss_bits);
    uint64_t s = first;
    bool bit = bits[(s / 8) % SLICE] >> (s % 8) & 1;
    while (s < end_sec) {
        uint8_t byte_v = bits[(s / 8) % SLICE];
        if (s % 8 == 0 && end_sec - s >= 8 && byte_v == (bit ? 0xff : 0)) {
            s += 8;
            continue;
        }
        if ((byte_v >> (s % 8) & 1) != bit)
            break;
        s++;
    }
    uint64_t run_end = (s - base) << v->lss_bits;      /* in the block */
    run->len = VMFS_MIN(run->len, run_end - o);
    if (bit)
        data_run(v, foff + o, run);
    else
        parent_run(l, run);
}

/* The first run at off, within its block and at most max bytes long. */
static void block_run(struct vlayer *l, struct slice_ref *bat, struct slice_ref *sb, uint64_t off,
                      uint64_t max, struct vrun *run)
{
    struct vhdx *v = l->priv;
    uint64_t b = off >> v->bs_bits;
    uint64_t bstart = b << v->bs_bits;
    uint64_t blen = VMFS_MIN((uint64_t)v->block_size, l->size - bstart);
    uint64_t o = off - bstart, idx = b + b / v->chunk_ratio, e;
    run->len = VMFS_MIN(max, blen - o);
    if (idx >= v->bat_usable) {
        once(l, P_BAT_SHORT, "the BAT entry of block %" PRIu64 " (virtual offset %" PRIu64
             ") is missing", b, bstart);
        error_run(run);
        return;
    }
    int r = bat_get(l, bat, idx, &e);
    if (r < 0) {
        once(l, P_BAT_IO, "cannot read the BAT: %s", strerror(-r));
        error_run(run);
        return;
    }
    uint64_t foff = (e >> 20) << 20;
    switch (e & 7) {
    case PAYLOAD_NOT_PRESENT:
        if (v->has_parent)
            parent_run(l, run);
        else
            run->kind = VRUN_ZERO;
        return;
    case PAYLOAD_UNDEFINED:
    case PAYLOAD_ZERO:
    case PAYLOAD_UNMAPPED:
    case PAYLOAD_UNMAPPED_OLD:
        run->kind = VRUN_ZERO;
        return;
    case PAYLOAD_FULLY_PRESENT:
        if (block_in_file(l, b, foff, blen))
            data_run(v, foff + o, run);
        else
            error_run(run);
        return;
    case PAYLOAD_PARTIALLY_PRESENT:
        if (!v->has_parent) {
            once(l, P_PARTIAL, "block %" PRIu64 " (virtual offset %" PRIu64 ") is partially "
                 "present, which only a differencing image may be", b, bstart);
            error_run(run);
        } else if (block_in_file(l, b, foff, blen)) {
            partial_run(l, bat, sb, b, foff, o, run);
        } else {
            error_run(run);
        }
        return;
    default:
        once(l, P_STATE, "block %" PRIu64 " (virtual offset %" PRIu64 ") has the reserved "
             "state %u", b, bstart, (unsigned)(e & 7));
        error_run(run);
        return;
    }
}

static bool runs_join(const struct vrun *a, const struct vrun *b)
{
    if (a->kind != b->kind)
        return false;
    if (a->kind == VRUN_DATA)
        return a->src == b->src && a->src_off + a->len == b->src_off;
    if (a->kind == VRUN_ERROR)
        return a->err == b->err;
    return true;
}

static void check_linkage(struct vlayer *l);

/* One run from off, joined across blocks while the next block goes on the
 * same way (data contiguous in the file, zeros, parent, damage). */
static int vhdx_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct vhdx *v = l->priv;
    if (v->has_parent && !atomic_load(&v->linkage_done))
        check_linkage(l);
    struct slice_ref bat = {0}, sb = {0};
    block_run(l, &bat, &sb, off, len, run);
    while (run->len < len && ((off + run->len) & (v->block_size - 1)) == 0) {
        struct vrun next;
        block_run(l, &bat, &sb, off + run->len, len - run->len, &next);
        if (!runs_join(run, &next))
            break;
        run->len += next.len;
        if (((off + run->len) & (v->block_size - 1)) != 0)
            break;
    }
    slice_drop(&bat);
    slice_drop(&sb);
    return 0;
}

/* The allocation view: as vhdx_map, except that payload lying in a hole of
 * the host file (a fixed image qemu made sparse) counts as a hole.  Reads
 * still use vhdx_map. */
static int vhdx_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    int r = vhdx_map(l, off, len, run);
    return r < 0 ? r : vrun_refine_holes(run);
}

/* ------------------------------------------------------------------------
 * Parent linkage and report
 * ---------------------------------------------------------------------- */

/* Compares parent_linkage with the parent's DataWriteGuid once the chain
 * is open: a mismatch means the parent changed after this child was made. */
static void check_linkage(struct vlayer *l)
{
    struct vhdx *v = l->priv;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&v->linkage_done, &expected, 1))
        return;
    struct vimage *img = l->img;
    struct vlayer *parent = NULL;
    for (size_t i = 0; img && i + 1 < img->nlayers; i++)
        if (img->layers[i] == l)
            parent = img->layers[i + 1];
    const char *state = "not checked: the parent is not open";
    uint8_t want[16], want2[16];
    bool ok1 = v->pl[PL_LINK] && vhdx_guid_parse(v->pl[PL_LINK], want);
    bool ok2 = v->pl[PL_LINK2] && vhdx_guid_parse(v->pl[PL_LINK2], want2);
    if (!ok1 && !ok2) {
        state = v->pl[PL_LINK] ? "not checked: parent_linkage is not a GUID"
                               : "not checked: no parent_linkage";
    } else if (parent && parent->drv == &vfmt_vhdx && parent->priv) {
        const struct vhdx *pv = parent->priv;
        if ((ok1 && !memcmp(want, pv->data_write_guid, 16)) ||
            (ok2 && !memcmp(want2, pv->data_write_guid, 16))) {
            state = "matches the parent";
        } else {
            char g[39];
            vhdx_guid_format(pv->data_write_guid, g);
            state = "differs from the parent";
            once(l, P_LINKAGE, "parent_linkage %s does not match the DataWriteGuid %s of the "
                 "parent %s: the parent was changed after this differencing image was made",
                 v->pl[PL_LINK] ? v->pl[PL_LINK] : v->pl[PL_LINK2], g, parent->path);
        }
    }
    snprintf(v->linkage_state, sizeof v->linkage_state, "%s", state);
    atomic_store(&v->linkage_done, 2);
}

static void report_guid(struct rep *o, const char *key, const uint8_t *g)
{
    char s[39];
    vhdx_guid_format(g, s);
    rep_set_str(o, key, s);
}

static void vhdx_report(struct vlayer *l, struct rep *o)
{
    struct vhdx *v = l->priv;
    rep_set_str(o, "subformat", v->has_parent ? "differencing"
                                : v->leave_allocated ? "fixed" : "dynamic");
    if (v->creator && v->creator[0])
        rep_set_str(o, "creator", v->creator);
    rep_set_size(o, "block_size", v->block_size);
    rep_set_u64(o, "logical_sector_size", v->lss);
    if (v->pss)
        rep_set_u64(o, "physical_sector_size", v->pss);
    rep_set_u64(o, "chunk_ratio", v->chunk_ratio);
    rep_set_bool(o, "has_parent", v->has_parent);
    rep_set_bool(o, "leave_blocks_allocated", v->leave_allocated);
    rep_set_u64(o, "header_used", v->header_used);
    rep_set_u64(o, "header_sequence", v->header_seq);
    rep_set_str(o, "log", v->log_state);
    rep_set_size(o, "log_size", v->log_len);
    if (v->have_disk_id)
        report_guid(o, "virtual_disk_id", v->disk_id);
    report_guid(o, "data_write_guid", v->data_write_guid);
    if (!v->has_parent)
        return;
    struct rep *p = rep_set_object(o, "parent_locator");
    for (int i = 0; i < PL_N; i++)
        if (v->pl[i])
            rep_set_str(p, pl_keys[i], v->pl[i]);
    if (v->pl_other)
        rep_set_u64(p, "other_keys", v->pl_other);
    check_linkage(l);
    int done = atomic_load(&v->linkage_done);
    rep_set_str(o, "parent_linkage_check", done == 2 ? v->linkage_state : "being checked");
}

const struct vfmt_driver vfmt_vhdx = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .map = vhdx_map,
    .map_alloc = vhdx_map_alloc,
    .report = vhdx_report,
    .close = vhdx_close,
};
