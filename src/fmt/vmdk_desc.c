/* vmfs — VMDK metadata parsers without I/O: the text descriptor and the
 * sparse extent headers (KDMV and COWD).  Everything here works on
 * untrusted bytes held in memory and never fails in a way that depends on
 * more than what it was given. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <strings.h>

#include "vmdk.h"

/* ------------------------------------------------------------------------
 * Small text helpers
 * ---------------------------------------------------------------------- */

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

/* [s, e) without blanks and '\r' on both sides. */
static void trim(const char **s, const char **e)
{
    while (*s < *e && (is_blank(**s) || **s == '\r'))
        (*s)++;
    while (*e > *s && (is_blank((*e)[-1]) || (*e)[-1] == '\r'))
        (*e)--;
}

static char *dup_range(const char *s, const char *e)
{
    size_t n = (size_t)(e - s);
    char *r = xmalloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

static bool range_eq(const char *s, const char *e, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(e - s) == n && !strncasecmp(s, word, n);
}

/* A decimal number of at most 20 digits that fits in 64 bits. */
static bool parse_u64(const char *s, const char *e, uint64_t *out)
{
    uint64_t v = 0;
    if (s == e)
        return false;
    for (; s < e; s++) {
        if (*s < '0' || *s > '9')
            return false;
        if (ckd_mul_u64(&v, v, 10) || ckd_add_u64(&v, v, (uint64_t)(*s - '0')))
            return false;
    }
    *out = v;
    return true;
}

/* A hexadecimal 32-bit number (CID), with an optional 0x. */
static bool parse_hex32(const char *s, const char *e, uint32_t *out)
{
    uint64_t v = 0;
    if (e - s > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    if (s == e || e - s > 8)
        return false;
    for (; s < e; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = (uint32_t)v;
    return true;
}

/* The next blank-separated word of [*p, e). */
static bool next_word(const char **p, const char *e, const char **ws, const char **we)
{
    const char *s = *p;
    while (s < e && is_blank(*s))
        s++;
    if (s == e)
        return false;
    *ws = s;
    while (s < e && !is_blank(*s))
        s++;
    *we = s;
    *p = s;
    return true;
}

/* ------------------------------------------------------------------------
 * Names
 * ---------------------------------------------------------------------- */

static const struct {
    const char *name;
    enum vmdk_etype type;
} etypes[] = {
    {"FLAT", VMDK_ET_FLAT},         {"SPARSE", VMDK_ET_SPARSE},
    {"ZERO", VMDK_ET_ZERO},         {"VMFS", VMDK_ET_VMFS},
    {"VMFSSPARSE", VMDK_ET_VMFSSPARSE}, {"VMFSRDM", VMDK_ET_VMFSRDM},
    {"VMFSRAW", VMDK_ET_VMFSRAW},   {"SESPARSE", VMDK_ET_SESPARSE},
};

const char *vmdk_etype_name(enum vmdk_etype t)
{
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(etypes); i++)
        if (etypes[i].type == t)
            return etypes[i].name;
    return "unknown";
}

bool vmdk_etype_flat(enum vmdk_etype t)
{
    return t == VMDK_ET_FLAT || t == VMDK_ET_VMFS || t == VMDK_ET_VMFSRDM ||
           t == VMDK_ET_VMFSRAW;
}

const char *vmdk_access_name(enum vmdk_access a)
{
    return a == VMDK_RW ? "RW" : a == VMDK_RDONLY ? "RDONLY" : "NOACCESS";
}

static bool parse_access(const char *s, const char *e, enum vmdk_access *a)
{
    if (range_eq(s, e, "RW"))
        *a = VMDK_RW;
    else if (range_eq(s, e, "RDONLY"))
        *a = VMDK_RDONLY;
    else if (range_eq(s, e, "NOACCESS"))
        *a = VMDK_NOACCESS;
    else
        return false;
    return true;
}

/* ------------------------------------------------------------------------
 * Descriptor lines
 * ---------------------------------------------------------------------- */

static void note_bad(struct vmdk_desc *d, unsigned lineno, const char *s, const char *e)
{
    if (d->bad_lines++)
        return;
    d->first_bad_line = lineno;
    size_t n = VMFS_MIN((size_t)(e - s), sizeof(d->first_bad) - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        d->first_bad[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    d->first_bad[n] = 0;
}

/* The rest of an extent line after "ACCESS SECTORS TYPE": an optional
 * quoted file name and an optional offset.  False when malformed. */
static bool parse_extent_tail(const char *p, const char *e, struct vmdk_dext *x)
{
    while (p < e && is_blank(*p))
        p++;
    if (p < e && *p == '"') {
        const char *q = memchr(p + 1, '"', (size_t)(e - p - 1));
        if (!q || q == p + 1 || (size_t)(q - p - 1) > VMDK_MAX_NAME)
            return false;
        x->file = dup_range(p + 1, q);
        if (memchr(x->file, 0, (size_t)(q - p - 1)))
            return false;
        p = q + 1;
    } else if (p < e && x->type != VMDK_ET_ZERO) {
        return false;
    }
    const char *ws, *we;
    if (next_word(&p, e, &ws, &we) && !parse_u64(ws, we, &x->offset))
        return false;
    return true;
}

/* An extent line: "ACCESS SECTORS TYPE ["FILE" [OFFSET]]".  Returns false
 * when the first word is not an access mode (not an extent line at all). */
static bool parse_extent(struct vmdk_desc *d, const char *s, const char *e, unsigned lineno)
{
    const char *p = s, *ws, *we;
    enum vmdk_access access;
    if (!next_word(&p, e, &ws, &we) || !parse_access(ws, we, &access))
        return false;
    struct vmdk_dext x = {.access = access, .type = VMDK_ET_UNKNOWN, .line = lineno};
    bool ok = next_word(&p, e, &ws, &we) && parse_u64(ws, we, &x.sectors);
    if (ok && next_word(&p, e, &ws, &we)) {
        size_t n = VMFS_MIN((size_t)(we - ws), sizeof(x.type_name) - 1);
        memcpy(x.type_name, ws, n);
        for (size_t i = 0; i < VMFS_ARRAY_SIZE(etypes); i++)
            if (range_eq(ws, we, etypes[i].name))
                x.type = etypes[i].type;
        ok = parse_extent_tail(p, e, &x);
    } else {
        ok = false;
    }
    if (ok && x.type != VMDK_ET_ZERO && x.type != VMDK_ET_UNKNOWN && !x.file)
        ok = false;
    if (!ok) {
        x.malformed = true;
        note_bad(d, lineno, s, e);
    }
    if (x.type == VMDK_ET_ZERO) {
        free(x.file);
        x.file = NULL;
    }
    d->next_total++;
    if (d->next < VMDK_MAX_EXTENTS) {
        if (d->next == d->ext_cap) {
            d->ext_cap = d->ext_cap ? d->ext_cap * 2 : 4;
            d->ext = xrealloc(d->ext, d->ext_cap * sizeof(*d->ext));
        }
        d->ext[d->next++] = x;
    } else {
        free(x.file);
    }
    return true;
}

static void set_str(char **dst, const char *s, const char *e)
{
    free(*dst);
    *dst = dup_range(s, e);
}

static void parse_pair(struct vmdk_desc *d, const char *ks, const char *ke, const char *vs,
                       const char *ve, unsigned lineno, const char *ls, const char *le)
{
    trim(&vs, &ve);
    if (ve - vs >= 2 && *vs == '"' && ve[-1] == '"') {
        vs++;
        ve--;
    }
    bool ok = true;
    if (range_eq(ks, ke, "version")) {
        uint64_t v;
        ok = parse_u64(vs, ve, &v) && v <= 1000;
        d->version = ok ? (unsigned)v : 0;
    } else if (range_eq(ks, ke, "CID")) {
        d->has_cid = ok = parse_hex32(vs, ve, &d->cid);
    } else if (range_eq(ks, ke, "parentCID")) {
        d->has_parent_cid = ok = parse_hex32(vs, ve, &d->parent_cid);
    } else if (range_eq(ks, ke, "createType")) {
        set_str(&d->create_type, vs, ve);
    } else if (range_eq(ks, ke, "parentFileNameHint") || range_eq(ks, ke, "changeTrackPath")) {
        char **dst = range_eq(ks, ke, "changeTrackPath") ? &d->ctk_path : &d->parent_hint;
        if ((size_t)(ve - vs) > VMDK_MAX_NAME || memchr(vs, 0, (size_t)(ve - vs)))
            ok = false;
        else if (ve > vs)
            set_str(dst, vs, ve);
    } else if (ke - ks > 4 && !strncasecmp(ks, "ddb.", 4) && d->nddb < VMDK_MAX_DDB) {
        d->ddb[d->nddb].key = dup_range(ks, ke);
        d->ddb[d->nddb++].val = dup_range(vs, VMFS_MIN(ve, vs + 256));
    }
    if (!ok)
        note_bad(d, lineno, ls, le);
}

static void parse_line(struct vmdk_desc *d, const char *s, const char *e, unsigned lineno)
{
    trim(&s, &e);
    if (s == e || *s == '#')
        return;
    const char *eq = memchr(s, '=', (size_t)(e - s));
    if (eq) {
        const char *ks = s, *ke = eq;
        trim(&ks, &ke);
        bool key = ks < ke;
        for (const char *c = ks; c < ke && key; c++)
            key = is_key_char(*c);
        if (key) {
            parse_pair(d, ks, ke, eq + 1, e, lineno, s, e);
            return;
        }
    }
    if (!parse_extent(d, s, e, lineno))
        note_bad(d, lineno, s, e);
}

void vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d)
{
    memset(d, 0, sizeof(*d));
    if (len > VMDK_DESC_MAX) {
        len = VMDK_DESC_MAX;
        d->truncated = true;
    }
    const char *nul = memchr(text, 0, len);
    const char *end = nul ? nul : text + len;
    unsigned lineno = 0;
    for (const char *p = text; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        parse_line(d, p, le, ++lineno);
        p = nl ? nl + 1 : end;
    }
}

void vmdk_desc_free(struct vmdk_desc *d)
{
    for (size_t i = 0; i < d->next; i++)
        free(d->ext[i].file);
    free(d->ext);
    for (size_t i = 0; i < d->nddb; i++) {
        free(d->ddb[i].key);
        free(d->ddb[i].val);
    }
    free(d->create_type);
    free(d->parent_hint);
    free(d->ctk_path);
    memset(d, 0, sizeof(*d));
}

/* ------------------------------------------------------------------------
 * Probing
 * ---------------------------------------------------------------------- */

static bool starts_with_ci(const char *s, const char *e, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(e - s) >= n && !strncasecmp(s, word, n);
}

/* "KEY =" at the start of [s, e): the key's end, or NULL. */
static const char *key_at(const char *s, const char *e)
{
    const char *k = s;
    while (k < e && is_key_char(*k))
        k++;
    const char *q = k;
    while (q < e && is_blank(*q))
        q++;
    return (k > s && q < e && *q == '=') ? k : NULL;
}

bool vmdk_desc_probe(const uint8_t *head, size_t len)
{
    const char *p = (const char *)head, *end = p + len;
    if (len >= 3 && !memcmp(p, "\xef\xbb\xbf", 3))
        p += 3;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *s = p, *e = nl ? nl : end;
        for (const char *c = s; c < e; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t' && *c != '\r')
                return false;   /* binary before the telling line */
        trim(&s, &e);
        p = nl ? nl + 1 : end;
        if (s == e)
            continue;
        if (*s == '#') {
            if (starts_with_ci(s, e, "# Disk DescriptorFile"))
                return true;
            continue;
        }
        const char *ke = key_at(s, e);
        if (!ke)
            return false;
        if (range_eq(s, ke, "createType") || range_eq(s, ke, "version"))
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------------
 * Sparse headers
 * ---------------------------------------------------------------------- */

int vmdk_sparse_parse(const uint8_t *b, size_t len, struct vmdk_sparse_hdr *h,
                      const char **why)
{
    memset(h, 0, sizeof(*h));
    if (len < VMDK_SECTOR) {
        *why = "the file is shorter than one sparse header (512 bytes)";
        return -EINVAL;
    }
    if (!memcmp(b, VMDK3_MAGIC, 4)) {
        h->cowd = true;
        h->version = get_le32(b + 4);
        h->flags = get_le32(b + 8);
        h->capacity = get_le32(b + 12);
        h->grain = get_le32(b + 16);
        h->gd_off = get_le32(b + 20);
        h->gd_entries = get_le32(b + 24);
        h->gtes = VMDK3_GTES;
        return 0;
    }
    if (memcmp(b, VMDK4_MAGIC, 4)) {
        *why = "bad magic: neither KDMV (hosted sparse) nor COWD (ESX sparse)";
        return -EINVAL;
    }
    h->version = get_le32(b + 4);
    h->flags = get_le32(b + 8);
    h->capacity = get_le64(b + 12);
    h->grain = get_le64(b + 20);
    h->desc_off = get_le64(b + 28);
    h->desc_size = get_le64(b + 36);
    h->gtes = get_le32(b + 44);
    h->rgd_off = get_le64(b + 48);
    h->gd_off = get_le64(b + 56);
    h->overhead = get_le64(b + 64);
    h->unclean = b[72] != 0;
    memcpy(h->nl_chars, b + 73, 4);
    h->compress = get_le16(b + 77);
    return 0;
}

static int VMFS_PRINTF(3, 4) fail(char *msg, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

int vmdk_sparse_check(struct vmdk_sparse_hdr *h, char *msg, size_t n)
{
    if (!h->cowd && h->version > 3)
        return fail(msg, n, "unsupported sparse header version %u", (unsigned)h->version);
    if (!h->cowd && (h->gtes == 0 || h->gtes > VMDK_MAX_GTES))
        return fail(msg, n, "absurd number of entries per grain table: %u (at most %u)",
                    (unsigned)h->gtes, VMDK_MAX_GTES);
    if (h->grain == 0 || h->grain > VMDK_MAX_GRAIN_SECTORS)
        return fail(msg, n, "absurd grain size: %llu sectors (at most %u)",
                    (unsigned long long)h->grain, VMDK_MAX_GRAIN_SECTORS);
    if (!h->cowd && h->compress > VMDK_COMPRESS_DEFLATE)
        return fail(msg, n, "unknown compression algorithm %u", (unsigned)h->compress);
    if (!h->cowd && h->compress == VMDK_COMPRESS_DEFLATE && h->grain > VMDK_MAX_CGRAIN_SECTORS)
        return fail(msg, n, "compressed grains of %llu sectors are too large (at most %u)",
                    (unsigned long long)h->grain, VMDK_MAX_CGRAIN_SECTORS);
    if (h->capacity > VMDK_MAX_EXTENT_SECTORS)
        return fail(msg, n, "absurd capacity: %llu sectors (at most %llu)",
                    (unsigned long long)h->capacity,
                    (unsigned long long)VMDK_MAX_EXTENT_SECTORS);
    uint64_t span = h->grain * h->gtes;   /* both small: no overflow */
    if (!h->cowd)
        h->gd_entries = h->capacity / span + (h->capacity % span != 0);
    if (h->gd_entries > (32u << 20))
        return fail(msg, n, "absurd grain directory: %llu entries",
                    (unsigned long long)h->gd_entries);
    return 0;
}
