/* vmfs — the direct data path: a file's extents, as the appliance's
 * kernel reports them (filefrag -v, FIEMAP), address the filesystem's own
 * block view; vmfs then reads file data from the view itself, at the
 * speed of the host, and the appliance only answers where.
 *
 * The appliance is not trusted: a file's map is kept only when every
 * extent lies inside the device, extents are ordered and do not overlap,
 * and no extent is of a kind whose bytes are not plainly on the disk
 * (inline, encoded, encrypted, delayed, unknown).  Anything else leaves
 * the file unmapped, and it is read through the appliance. */
#include "config.h"

#include <errno.h>
#include <stdio.h>

#include "guest/guest_int.h"

char *g_shell_quote(const char *s)
{
    size_t n = 2;
    for (const char *c = s; *c; c++)
        n += *c == '\'' ? 4 : 1;
    char *q = xmalloc(n + 1), *p = q;
    *p++ = '\'';
    for (const char *c = s; *c; c++) {
        if (*c == '\'') {
            memcpy(p, "'\\''", 4);
            p += 4;
        } else {
            *p++ = *c;
        }
    }
    *p++ = '\'';
    *p = 0;
    return q;
}

/* Flags that mean the bytes are not plainly at the physical offset. */
static bool flags_unmappable(const char *flags)
{
    static const char *const bad[] = {"unknown_loc", "delalloc", "encoded", "encrypted",
                                      "not_aligned", "inline", "tail_packed", "unknown"};
    char buf[256];
    snprintf(buf, sizeof buf, "%s", flags);
    for (char *save = NULL, *w = strtok_r(buf, ", \t", &save); w;
         w = strtok_r(NULL, ", \t", &save)) {
        for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++)
            if (!strcmp(w, bad[i]))
                return true;
    }
    return false;
}

static bool flags_have(const char *flags, const char *word)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", flags);
    for (char *save = NULL, *w = strtok_r(buf, ", \t", &save); w;
         w = strtok_r(NULL, ", \t", &save))
        if (!strcmp(w, word))
            return true;
    return false;
}

/* "File size of ./NAME is SIZE (N blocks of BS bytes)": NAME must be the
 * expected one; then *size and *bs.  Parsed from the end, so a name that
 * contains " is " cannot confuse it. */
static bool parse_head(const char *line, const char *name, uint64_t *size, uint64_t *bs)
{
    static const char pre[] = "File size of ./";
    size_t nl = strlen(name);
    if (strncmp(line, pre, sizeof pre - 1) || strncmp(line + sizeof pre - 1, name, nl))
        return false;
    const char *rest = line + sizeof pre - 1 + nl;
    unsigned long long sz, blocks, b;
    int used = 0;
    if (sscanf(rest, " is %llu (%llu block%*[s] of %llu bytes)%n", &sz, &blocks, &b, &used) < 3 &&
        sscanf(rest, " is %llu (%llu block of %llu bytes)%n", &sz, &blocks, &b, &used) < 3)
        return false;
    if (!used || rest[used] != 0 || b == 0 || b > (1u << 20) || !is_pow2_u64(b))
        return false;
    *size = sz;
    *bs = b;
    return true;
}

/* One extent line: "N: L0.. L1: P0.. P1: LEN: [EXPECTED:] FLAGS". */
static bool parse_extent(const char *line, uint64_t bs, struct gext *e, char *flags,
                         size_t fsize)
{
    unsigned long long l0, l1, p0, p1, len;
    int used = 0;
    if (sscanf(line, " %*u: %llu.. %llu: %llu.. %llu: %llu:%n", &l0, &l1, &p0, &p1, &len,
               &used) < 5 || !used)
        return false;
    if (len == 0 || l1 < l0 || l1 - l0 + 1 != len || p1 < p0 || p1 - p0 + 1 != len)
        return false;
    const char *rest = line + used;
    /* An optional "expected" column, then the flags. */
    unsigned long long expected;
    int n2 = 0;
    if (sscanf(rest, " %llu:%n", &expected, &n2) == 1 && n2)
        rest += n2;
    while (*rest == ' ')
        rest++;
    snprintf(flags, fsize, "%s", rest);
    uint64_t lo, po, bytes;
    if (ckd_mul_u64(&lo, l0, bs) || ckd_mul_u64(&po, p0, bs) || ckd_mul_u64(&bytes, len, bs))
        return false;
    e->lo = lo;
    e->po = po;
    e->len = bytes;
    e->zero = false;
    return true;
}

/* Checks and keeps one file's extents; NULL when they do not add up. */
static struct gmap *finish_map(struct gext *ext, size_t n, bool bad, uint64_t fsize,
                               uint64_t dev_size)
{
    if (bad)
        return NULL;
    uint64_t end = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t lend, pend;
        if (ext[i].lo < end || ckd_add_u64(&lend, ext[i].lo, ext[i].len) ||
            ckd_add_u64(&pend, ext[i].po, ext[i].len) || pend > dev_size)
            return NULL;
        end = lend;
    }
    (void)fsize;
    struct gmap *m = xcalloc(1, sizeof *m);
    m->direct = true;
    m->n = n;
    m->e = xmalloc((n ? n : 1) * sizeof *m->e);
    memcpy(m->e, ext, n * sizeof *ext);
    return m;
}

void g_parse_filefrag(const char *out, char *const *names, size_t n, const uint64_t *sizes,
                      uint64_t dev_size, struct gmap **maps)
{
    size_t cur = n;          /* file being read; n: none */
    uint64_t bs = 1, fsize = 0;
    bool table = false, bad = false;
    size_t next = 0;         /* the next file expected */
    struct gext *ext = xmalloc(sizeof *ext * 64);
    size_t ext_cap = 64, ext_n = 0;
    char line[1024], flags[256];
    const char *p = out;
    while (*p) {
        size_t len = strcspn(p, "\n");
        bool too_long = len >= sizeof line;
        snprintf(line, sizeof line, "%.*s", (int)VMFS_MIN(len, sizeof line - 1), p);
        p += len + (p[len] == '\n');
        uint64_t sz = 0, b = 0;
        size_t found = n;
        for (size_t i = next; !too_long && i < n && found == n; i++)
            if (parse_head(line, names[i], &sz, &b))
                found = i;
        if (found < n) {
            if (cur < n)
                maps[cur] = table ? finish_map(ext, ext_n, bad, fsize, dev_size) : NULL;
            cur = found;
            next = found + 1;
            bs = b;
            fsize = sz;
            table = false;
            bad = sz != sizes[found];   /* not the file that was listed */
            ext_n = 0;
            continue;
        }
        if (cur == n)
            continue;
        if (!strncmp(line, " ext:", 5)) {
            table = true;
            continue;
        }
        struct gext e;
        if (table && parse_extent(line, bs, &e, flags, sizeof flags)) {
            if (flags_unmappable(flags) || ext_n >= G_MAX_EXTENTS) {
                bad = true;
                continue;
            }
            e.zero = flags_have(flags, "unwritten");
            if (ext_n == ext_cap) {
                ext_cap *= 2;
                ext = xrealloc(ext, ext_cap * sizeof *ext);
            }
            ext[ext_n++] = e;
        } else if (table && strstr(line, "extent") && strstr(line, "found")) {
            maps[cur] = finish_map(ext, ext_n, bad, fsize, dev_size);
            cur = n;
        } else if (table) {
            bad = true;   /* a line in the table that is not an extent */
        }
    }
    if (cur < n)
        maps[cur] = NULL;    /* the output stopped in the middle */
    free(ext);
}

int g_read_mapped(const struct vview *v, const struct gmap *m, uint64_t fsize, void *buf,
                  size_t len, uint64_t off)
{
    uint8_t *out = buf;
    uint64_t pos = off, end = off + len;
    if (end > fsize || end < off)
        return -EINVAL;
    /* The first extent that ends after pos. */
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->e[mid].lo + m->e[mid].len <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; pos < end;) {
        const struct gext *e = i < m->n ? &m->e[i] : NULL;
        if (!e || pos < e->lo) {
            /* A hole: zeros up to the next extent. */
            uint64_t n = e ? VMFS_MIN(end, e->lo) - pos : end - pos;
            memset(out + (pos - off), 0, (size_t)n);
            pos += n;
            continue;
        }
        uint64_t n = VMFS_MIN(end, e->lo + e->len) - pos;
        if (e->zero) {
            memset(out + (pos - off), 0, (size_t)n);
        } else {
            int r = vview_read(v, out + (pos - off), (size_t)n, e->po + (pos - e->lo));
            if (r < 0)
                return r;
        }
        pos += n;
        i++;
    }
    return 0;
}
