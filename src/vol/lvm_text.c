/* vmfs — a parser for LVM2's metadata text format.
 *
 * The text comes from the disk and is untrusted.  The parser is a loop
 * over tokens with an explicit stack of open sections (at most
 * LT_MAX_DEPTH), so no input can make it recurse; every node and string
 * it makes is at least one input byte, so memory is bounded by a small
 * multiple of the text's size. */
#include "config.h"

#include <errno.h>
#include <stdio.h>

#include "vol/vol_internal.h"

struct lexer {
    const char *p, *end;
    unsigned line;
    struct lt_doc *d;
};

static bool is_ident(char c)
{
    unsigned char u = (unsigned char)c;
    return u > 0x20 && u != 0x7f && !strchr("={}[],\"#", c);
}

static void skip_space(struct lexer *lx)
{
    while (lx->p < lx->end) {
        char c = *lx->p;
        if (c == '\n') {
            lx->line++;
            lx->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
            lx->p++;
        } else if (c == '#') {
            while (lx->p < lx->end && *lx->p != '\n')
                lx->p++;
        } else {
            break;
        }
    }
}

/* Copies n bytes into the store, NUL-terminated. */
static char *store(struct lt_doc *d, const char *s, size_t n)
{
    char *o = d->store + d->storelen;
    memcpy(o, s, n);
    o[n] = 0;
    d->storelen += n + 1;
    return o;
}

/* A new node appended to parent's children (after *last, updated), or
 * NULL past LT_MAX_NODES.  It may move the node array. */
static struct lt_node *new_node(struct lt_doc *d, uint32_t parent, uint32_t *last,
                                enum lt_type t)
{
    if (d->count >= LT_MAX_NODES)
        return NULL;
    if (d->count == d->cap) {
        d->cap = d->cap * 2;
        d->n = xrealloc(d->n, d->cap * sizeof *d->n);
    }
    uint32_t idx = (uint32_t)d->count++;
    struct lt_node *n = &d->n[idx];
    memset(n, 0, sizeof *n);
    n->type = t;
    if (*last)
        d->n[*last].next = idx;
    else
        d->n[parent].child = idx;
    *last = idx;
    return n;
}

static int fail(struct lexer *lx, char **err, const char *what)
{
    *err = xasprintf("line %u: %s", lx->line, what);
    return -1;
}

static int read_string(struct lexer *lx, struct lt_node *n, char **err)
{
    lx->p++; /* the opening quote */
    char *o = lx->d->store + lx->d->storelen, *start = o;
    while (lx->p < lx->end && *lx->p != '"') {
        char c = *lx->p++;
        if (c == '\\' && lx->p < lx->end)
            c = *lx->p++;
        if (c == '\n')
            lx->line++;
        *o++ = c;
    }
    if (lx->p >= lx->end)
        return fail(lx, err, "unterminated string");
    lx->p++;
    *o = 0;
    lx->d->storelen += (size_t)(o - start) + 1;
    n->type = LT_STR;
    n->str = start;
    return 0;
}

static int read_number(struct lexer *lx, struct lt_node *n, char **err)
{
    const char *s = lx->p;
    bool neg = false, dot = false;
    uint64_t v = 0;
    if (*lx->p == '-' || *lx->p == '+')
        neg = *lx->p++ == '-';
    const char *digits = lx->p;
    while (lx->p < lx->end && ((*lx->p >= '0' && *lx->p <= '9') || *lx->p == '.')) {
        if (*lx->p == '.') {
            if (dot)
                return fail(lx, err, "malformed number");
            dot = true;
        } else if (!dot && (ckd_mul_u64(&v, v, 10) || ckd_add_u64(&v, v, *lx->p - '0') ||
                            v > (uint64_t)INT64_MAX)) {
            return fail(lx, err, "number out of range");
        }
        lx->p++;
    }
    if (lx->p == digits || (lx->p < lx->end && is_ident(*lx->p)))
        return fail(lx, err, "malformed value");
    if (dot) {
        n->type = LT_FLOAT;
        n->str = store(lx->d, s, (size_t)(lx->p - s));
    } else {
        n->type = LT_INT;
        n->num = neg ? -(int64_t)v : (int64_t)v;
    }
    return 0;
}

static int read_scalar(struct lexer *lx, struct lt_node *n, char **err)
{
    if (lx->p >= lx->end)
        return fail(lx, err, "value expected");
    if (*lx->p == '"')
        return read_string(lx, n, err);
    return read_number(lx, n, err);
}

static int read_array(struct lexer *lx, struct lt_node *arr, uint32_t arr_idx, char **err)
{
    uint32_t last = 0;
    lx->p++; /* '[' */
    arr->type = LT_ARRAY;
    for (;;) {
        skip_space(lx);
        if (lx->p < lx->end && *lx->p == ']') {
            lx->p++;
            return 0;
        }
        if (last) {
            if (lx->p >= lx->end || *lx->p != ',')
                return fail(lx, err, "',' or ']' expected in array");
            lx->p++;
            skip_space(lx);
        }
        if (lx->p < lx->end && *lx->p == '[')
            return fail(lx, err, "nested arrays are not allowed");
        struct lt_node *e = new_node(lx->d, arr_idx, &last, LT_STR);
        if (!e)
            return fail(lx, err, "too many values");
        if (read_scalar(lx, e, err) < 0)
            return -1;
    }
}

int lt_parse(struct lt_doc *d, const char *text, size_t len, char **err)
{
    const char *nul = memchr(text, 0, len);
    if (nul)
        len = (size_t)(nul - text);
    memset(d, 0, sizeof *d);
    d->cap = 64;
    d->n = xcalloc(d->cap, sizeof *d->n);
    d->count = 2; /* n[1] is the root */
    d->n[1].type = LT_SECTION;
    d->store = xmalloc(2 * len + 2);
    *err = NULL;
    struct lexer lx = {.p = text, .end = text + len, .line = 1, .d = d};
    uint32_t stack[LT_MAX_DEPTH + 1], last[LT_MAX_DEPTH + 1];
    int depth = 0;
    stack[0] = 1;
    last[0] = 0;
    for (;;) {
        skip_space(&lx);
        if (lx.p >= lx.end)
            return depth ? fail(&lx, err, "unclosed section at end of text") : 0;
        if (*lx.p == '}') {
            if (!depth)
                return fail(&lx, err, "'}' without a section");
            depth--;
            lx.p++;
            continue;
        }
        const char *k = lx.p;
        while (lx.p < lx.end && is_ident(*lx.p))
            lx.p++;
        if (lx.p == k)
            return fail(&lx, err, "name expected");
        const char *key = store(d, k, (size_t)(lx.p - k));
        skip_space(&lx);
        if (lx.p < lx.end && *lx.p == '{') {
            if (depth == LT_MAX_DEPTH)
                return fail(&lx, err, "sections nested too deeply");
            lx.p++;
            struct lt_node *sec = new_node(d, stack[depth], &last[depth], LT_SECTION);
            if (!sec)
                return fail(&lx, err, "too many values");
            sec->key = key;
            stack[depth + 1] = last[depth];
            last[depth + 1] = 0;
            depth++;
            continue;
        }
        if (lx.p >= lx.end || *lx.p != '=')
            return fail(&lx, err, "'=' or '{' expected after a name");
        lx.p++;
        skip_space(&lx);
        struct lt_node *n = new_node(d, stack[depth], &last[depth], LT_STR);
        if (!n)
            return fail(&lx, err, "too many values");
        n->key = key;
        uint32_t idx = last[depth];
        int r = lx.p < lx.end && *lx.p == '[' ? read_array(&lx, n, idx, err)
                                              : read_scalar(&lx, n, err);
        if (r < 0)
            return -1;
    }
}

void lt_free(struct lt_doc *d)
{
    free(d->n);
    free(d->store);
    memset(d, 0, sizeof *d);
}

const struct lt_node *lt_root(const struct lt_doc *d) { return d->count > 1 ? &d->n[1] : NULL; }

const struct lt_node *lt_first(const struct lt_doc *d, const struct lt_node *parent)
{
    return parent && parent->child ? &d->n[parent->child] : NULL;
}

const struct lt_node *lt_next(const struct lt_doc *d, const struct lt_node *n)
{
    return n && n->next ? &d->n[n->next] : NULL;
}

const struct lt_node *lt_get(const struct lt_doc *d, const struct lt_node *sec, const char *key)
{
    for (const struct lt_node *n = lt_first(d, sec); n; n = lt_next(d, n))
        if (n->key && !strcmp(n->key, key))
            return n;
    return NULL;
}

const char *lt_str(const struct lt_doc *d, const struct lt_node *sec, const char *key)
{
    const struct lt_node *n = lt_get(d, sec, key);
    return n && n->type == LT_STR ? n->str : NULL;
}

bool lt_u64(const struct lt_doc *d, const struct lt_node *sec, const char *key, uint64_t *v)
{
    const struct lt_node *n = lt_get(d, sec, key);
    if (!n || n->type != LT_INT || n->num < 0)
        return false;
    *v = (uint64_t)n->num;
    return true;
}

bool lt_has(const struct lt_doc *d, const struct lt_node *sec, const char *key, const char *s)
{
    const struct lt_node *a = lt_get(d, sec, key);
    if (!a || a->type != LT_ARRAY)
        return false;
    for (const struct lt_node *e = lt_first(d, a); e; e = lt_next(d, e))
        if (e->type == LT_STR && !strcmp(e->str, s))
            return true;
    return false;
}
