/* vmfs — the facts model and its two renderers (text and JSON). */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>

#include "vmfs/report.h"

enum rep_type { R_OBJ, R_ARR, R_STR, R_U64, R_I64, R_SIZE, R_BOOL, R_NULL };

struct rep {
    enum rep_type type;
    char *key;                /* member name inside an object */
    char *str;
    uint64_t u;
    int64_t i;
    bool b;
    struct rep **kids;
    size_t nkids, cap;
};

static struct rep *node(enum rep_type t)
{
    struct rep *r = xcalloc(1, sizeof *r);
    r->type = t;
    return r;
}

static struct rep *attach(struct rep *parent, const char *key, struct rep *kid)
{
    if (parent->nkids == parent->cap) {
        parent->cap = parent->cap ? parent->cap * 2 : 8;
        parent->kids = xrealloc(parent->kids, parent->cap * sizeof *parent->kids);
    }
    kid->key = key ? xstrdup(key) : NULL;
    parent->kids[parent->nkids++] = kid;
    return kid;
}

struct rep *rep_new_object(void) { return node(R_OBJ); }

void rep_free(struct rep *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nkids; i++)
        rep_free(r->kids[i]);
    free(r->kids);
    free(r->key);
    free(r->str);
    free(r);
}

void rep_set_str(struct rep *obj, const char *key, const char *val)
{
    if (!val) {
        rep_set_null(obj, key);
        return;
    }
    attach(obj, key, node(R_STR))->str = xstrdup(val);
}

void rep_set_strf(struct rep *obj, const char *key, const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        abort();
    attach(obj, key, node(R_STR))->str = s;
}

void rep_set_u64(struct rep *obj, const char *key, uint64_t val)
{
    attach(obj, key, node(R_U64))->u = val;
}

void rep_set_i64(struct rep *obj, const char *key, int64_t val)
{
    attach(obj, key, node(R_I64))->i = val;
}

void rep_set_size(struct rep *obj, const char *key, uint64_t bytes)
{
    attach(obj, key, node(R_SIZE))->u = bytes;
}

void rep_set_bool(struct rep *obj, const char *key, bool val)
{
    attach(obj, key, node(R_BOOL))->b = val;
}

void rep_set_null(struct rep *obj, const char *key) { attach(obj, key, node(R_NULL)); }

struct rep *rep_set_object(struct rep *obj, const char *key)
{
    return attach(obj, key, node(R_OBJ));
}

struct rep *rep_set_array(struct rep *obj, const char *key)
{
    return attach(obj, key, node(R_ARR));
}

struct rep *rep_get(const struct rep *obj, const char *key)
{
    for (size_t i = 0; obj && i < obj->nkids; i++)
        if (obj->kids[i]->key && !strcmp(obj->kids[i]->key, key))
            return obj->kids[i];
    return NULL;
}

const char *rep_str(const struct rep *r) { return r && r->type == R_STR ? r->str : NULL; }

struct rep *rep_add_object(struct rep *arr) { return attach(arr, NULL, node(R_OBJ)); }

void rep_add_str(struct rep *arr, const char *val)
{
    attach(arr, NULL, node(R_STR))->str = xstrdup(val ? val : "");
}

void rep_add_strf(struct rep *arr, const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        abort();
    attach(arr, NULL, node(R_STR))->str = s;
}

void rep_add_u64(struct rep *arr, uint64_t val) { attach(arr, NULL, node(R_U64))->u = val; }

size_t rep_len(const struct rep *r) { return r ? r->nkids : 0; }

/* A growing output buffer. */
struct out {
    FILE *f;
    char *buf;
    size_t len;
};

static void out_open(struct out *o)
{
    o->buf = NULL;
    o->len = 0;
    o->f = open_memstream(&o->buf, &o->len);
    if (!o->f)
        abort();
}

static char *out_close(struct out *o)
{
    fclose(o->f);
    return o->buf;
}

/* Length of the valid UTF-8 sequence at s (max n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t min;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2;
        min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3;
        min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    uint32_t cp = s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* JSON string: escapes controls and replaces invalid UTF-8 bytes with
 * U+FFFD so the output is always valid JSON. */
static void json_str(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            fprintf(f, "\\%c", c);
            i++;
        } else if (c == '\n') {
            fputs("\\n", f);
            i++;
        } else if (c == '\t') {
            fputs("\\t", f);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c);
            i++;
        } else {
            size_t l = utf8_len(p + i, n - i);
            if (l == 0) {
                fputs("\\ufffd", f);
                i++;
            } else {
                fwrite(p + i, 1, l, f);
                i += l;
            }
        }
    }
    fputc('"', f);
}

static void indent(FILE *f, int depth)
{
    for (int i = 0; i < depth; i++)
        fputs("  ", f);
}

static void json_value(FILE *f, const struct rep *r, int depth)
{
    switch (r->type) {
    case R_STR:
        json_str(f, r->str);
        break;
    case R_U64:
    case R_SIZE:
        fprintf(f, "%" PRIu64, r->u);
        break;
    case R_I64:
        fprintf(f, "%" PRId64, r->i);
        break;
    case R_BOOL:
        fputs(r->b ? "true" : "false", f);
        break;
    case R_NULL:
        fputs("null", f);
        break;
    case R_OBJ:
    case R_ARR:
        if (r->nkids == 0) {
            fputs(r->type == R_OBJ ? "{}" : "[]", f);
            break;
        }
        fputs(r->type == R_OBJ ? "{\n" : "[\n", f);
        for (size_t i = 0; i < r->nkids; i++) {
            indent(f, depth + 1);
            if (r->type == R_OBJ) {
                json_str(f, r->kids[i]->key);
                fputs(": ", f);
            }
            json_value(f, r->kids[i], depth + 1);
            fputs(i + 1 < r->nkids ? ",\n" : "\n", f);
        }
        indent(f, depth);
        fputc(r->type == R_OBJ ? '}' : ']', f);
        break;
    }
}

char *rep_to_json(const struct rep *r)
{
    struct out o;
    out_open(&o);
    json_value(o.f, r, 0);
    fputc('\n', o.f);
    return out_close(&o);
}

/* Text: "key: value" lines, nested objects indented, arrays as "- " items. */
static void text_key(FILE *f, const char *key)
{
    for (const char *k = key; *k; k++)
        fputc(*k == '_' ? ' ' : *k, f);
}

static bool is_scalar(const struct rep *r) { return r->type != R_OBJ && r->type != R_ARR; }

static void text_scalar(FILE *f, const struct rep *r)
{
    char h[32];
    switch (r->type) {
    case R_STR:
        /* Keep one fact per line whatever the string holds. */
        for (const char *s = r->str; *s; s++)
            fputc(*s == '\n' || *s == '\r' ? ' ' : *s, f);
        break;
    case R_U64:
        fprintf(f, "%" PRIu64, r->u);
        break;
    case R_I64:
        fprintf(f, "%" PRId64, r->i);
        break;
    case R_SIZE:
        if (r->u < 1024)
            fprintf(f, "%" PRIu64 " bytes", r->u);
        else
            fprintf(f, "%" PRIu64 " bytes (%s)", r->u, vmfs_human_size(r->u, h));
        break;
    case R_BOOL:
        fputs(r->b ? "yes" : "no", f);
        break;
    default:
        fputs("-", f);
        break;
    }
}

static void text_members(FILE *f, const struct rep *obj, int depth, bool first_dash);

static void text_array(FILE *f, const struct rep *arr, int depth)
{
    for (size_t i = 0; i < arr->nkids; i++) {
        const struct rep *e = arr->kids[i];
        indent(f, depth);
        fputs("- ", f);
        if (is_scalar(e)) {
            text_scalar(f, e);
            fputc('\n', f);
        } else if (e->type == R_OBJ && e->nkids) {
            text_members(f, e, depth + 1, true);
        } else if (e->type == R_ARR) {
            fputc('\n', f);
            text_array(f, e, depth + 1);
        } else {
            fputs("(empty)\n", f);
        }
    }
}

/* first_dash: the first member goes on the line a "- " already began. */
static void text_members(FILE *f, const struct rep *obj, int depth, bool first_dash)
{
    for (size_t i = 0; i < obj->nkids; i++) {
        const struct rep *m = obj->kids[i];
        if (!(first_dash && i == 0))
            indent(f, depth);
        text_key(f, m->key);
        fputc(':', f);
        if (is_scalar(m)) {
            fputc(' ', f);
            text_scalar(f, m);
            fputc('\n', f);
        } else if (m->nkids == 0) {
            fputs(" none\n", f);
        } else if (m->type == R_OBJ) {
            fputc('\n', f);
            text_members(f, m, depth + 1, false);
        } else {
            fputc('\n', f);
            text_array(f, m, depth + 1);
        }
    }
}

char *rep_to_text(const struct rep *r)
{
    struct out o;
    out_open(&o);
    if (r->type == R_OBJ)
        text_members(o.f, r, 0, false);
    else if (r->type == R_ARR)
        text_array(o.f, r, 0);
    else {
        text_scalar(o.f, r);
        fputc('\n', o.f);
    }
    return out_close(&o);
}
