/* vmfs — what is known about the filesystems of a view: first what the
 * layout's signature scan found (type, label, UUID: no appliance needed),
 * then what an appliance learnt (its vfs type, label and UUID, whether the
 * filesystem mounted, with which options, and why not).  guest_report
 * shows both as "filesystems".
 *
 * The layout's facts are read from their JSON rendering: the facts model
 * has no accessors for array elements, and JSON is its stable form.
 *
 * Threads: every function may be called from any thread (one lock). */
#include "config.h"

#include <errno.h>
#include <stdio.h>

#include "guest/guest_int.h"
#include "vmfs/report.h"

#define MAX_VIEWS 64

struct fsfact {
    char *name;
    char *stype, *slabel, *suuid;      /* from the signature scan */
    char *type, *label, *uuid;         /* from an appliance */
    enum gfs_state state;
    char *options, *reason;
};

struct view_facts {
    char *path;
    long snap;
    uint64_t gen;
    struct fsfact *fs;
    size_t nfs;
    size_t nvols;                      /* partitions and LVs of the layout */
    uint64_t used;                     /* LRU clock */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct view_facts views[MAX_VIEWS];
static uint64_t clock_tick;
static uint64_t version;                 /* guest_report_version */

/* ---- a small JSON reader for the layout's facts ---- */

struct jctx {
    const char *p;
    struct fsfact *out;
    size_t n, cap;
    struct fsfact disk;                /* root members disk_content, … */
};

static void skip_ws(struct jctx *c)
{
    while (*c->p == ' ' || *c->p == '\n' || *c->p == '\t' || *c->p == '\r')
        c->p++;
}

static void put_utf8(char **o, unsigned cp)
{
    char *s = *o;
    if (cp < 0x80) {
        *s++ = (char)cp;
    } else if (cp < 0x800) {
        *s++ = (char)(0xc0 | cp >> 6);
        *s++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *s++ = (char)(0xe0 | cp >> 12);
        *s++ = (char)(0x80 | (cp >> 6 & 0x3f));
        *s++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *s++ = (char)(0xf0 | cp >> 18);
        *s++ = (char)(0x80 | (cp >> 12 & 0x3f));
        *s++ = (char)(0x80 | (cp >> 6 & 0x3f));
        *s++ = (char)(0x80 | (cp & 0x3f));
    }
    *o = s;
}

static bool hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        unsigned d = ch >= '0' && ch <= '9' ? (unsigned)(ch - '0')
                   : (ch | 32) >= 'a' && (ch | 32) <= 'f' ? (unsigned)((ch | 32) - 'a' + 10)
                                                           : 16;
        if (d > 15)
            return false;
        *v = *v << 4 | d;
    }
    return true;
}

/* A string at c->p (after its quote); malloc'ed, or NULL on error. */
static char *jstring(struct jctx *c)
{
    if (*c->p != '"')
        return NULL;
    const char *s = ++c->p;
    size_t n = 0;
    while (s[n] && s[n] != '"')
        n += s[n] == '\\' && s[n + 1] ? 2 : 1;
    if (s[n] != '"')
        return NULL;
    char *out = xmalloc(n * 2 + 1), *o = out;
    for (const char *p = s; p < s + n; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        p++;
        unsigned cp;
        switch (*p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u':
            if (p + 4 >= s + n || !hex4(p + 1, &cp))
                break;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p + 6 < s + n && p[1] == '\\' && p[2] == 'u') {
                unsigned lo;
                if (hex4(p + 3, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            put_utf8(&o, cp);
            break;
        default: *o++ = *p; break;
        }
    }
    *o = 0;
    c->p = s + n + 1;
    return out;
}

static const char *jvalue(struct jctx *c, int depth, char **str);

static void fact_free(struct fsfact *f)
{
    free(f->name);
    free(f->stype);
    free(f->slabel);
    free(f->suuid);
    free(f->type);
    free(f->label);
    free(f->uuid);
    free(f->options);
    free(f->reason);
    memset(f, 0, sizeof *f);
}

static void take(char **dst, char **src)
{
    if (*src && !*dst) {
        *dst = *src;
        *src = NULL;
    }
}

/* An object: remembers the members that describe a volume's content. */
static const char *jobject(struct jctx *c, int depth)
{
    c->p++;
    char *path = NULL, *content = NULL, *label = NULL, *uuid = NULL, *fs_uuid = NULL;
    char *dcontent = NULL, *dlabel = NULL, *duuid = NULL;
    skip_ws(c);
    bool ok = true;
    if (*c->p == '}') {
        c->p++;
    } else {
        for (;;) {
            skip_ws(c);
            char *k = jstring(c);
            skip_ws(c);
            if (!k || *c->p != ':') {
                free(k);
                ok = false;
                break;
            }
            c->p++;
            skip_ws(c);
            char *v = NULL;
            if (!jvalue(c, depth + 1, &v)) {
                free(k);
                ok = false;
                break;
            }
            char **slot = !strcmp(k, "path") ? &path
                        : !strcmp(k, "content") ? &content
                        : !strcmp(k, "label") ? &label
                        : !strcmp(k, "uuid") ? &uuid
                        : !strcmp(k, "fs_uuid") ? &fs_uuid
                        : depth == 0 && !strcmp(k, "disk_content") ? &dcontent
                        : depth == 0 && !strcmp(k, "disk_label") ? &dlabel
                        : depth == 0 && !strcmp(k, "disk_uuid") ? &duuid
                                                                : NULL;
            if (slot && !*slot) {
                *slot = v;
                v = NULL;
            }
            free(v);
            free(k);
            skip_ws(c);
            if (*c->p == ',') {
                c->p++;
                continue;
            }
            if (*c->p == '}') {
                c->p++;
                break;
            }
            ok = false;
            break;
        }
    }
    if (ok && path && content) {
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 8;
            c->out = xrealloc(c->out, c->cap * sizeof *c->out);
        }
        struct fsfact *f = &c->out[c->n++];
        memset(f, 0, sizeof *f);
        take(&f->name, &path);
        take(&f->stype, &content);
        take(&f->slabel, &label);
        /* An LV's "uuid" is the LV's own; its filesystem's is fs_uuid. */
        if (fs_uuid)
            take(&f->suuid, &fs_uuid);
        else if (strncmp(f->name, "lvm/", 4))
            take(&f->suuid, &uuid);
    }
    if (depth == 0) {
        take(&c->disk.stype, &dcontent);
        take(&c->disk.slabel, &dlabel);
        take(&c->disk.suuid, &duuid);
    }
    free(path);
    free(content);
    free(label);
    free(uuid);
    free(fs_uuid);
    free(dcontent);
    free(dlabel);
    free(duuid);
    return ok ? c->p : NULL;
}

static const char *jarray(struct jctx *c, int depth)
{
    c->p++;
    skip_ws(c);
    if (*c->p == ']') {
        c->p++;
        return c->p;
    }
    for (;;) {
        skip_ws(c);
        if (!jvalue(c, depth + 1, NULL))
            return NULL;
        skip_ws(c);
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == ']') {
            c->p++;
            return c->p;
        }
        return NULL;
    }
}

/* Any value; a string is handed back in *str when str is not NULL. */
static const char *jvalue(struct jctx *c, int depth, char **str)
{
    if (depth > 32)
        return NULL;
    skip_ws(c);
    if (*c->p == '{')
        return jobject(c, depth);
    if (*c->p == '[')
        return jarray(c, depth);
    if (*c->p == '"') {
        char *s = jstring(c);
        if (!s)
            return NULL;
        if (str)
            *str = s;
        else
            free(s);
        return c->p;
    }
    /* number, true, false, null */
    const char *start = c->p;
    while (*c->p && !strchr(",}] \n\t\r", *c->p))
        c->p++;
    return c->p > start ? c->p : NULL;
}

/* ---- the per-view store ---- */

static void view_free(struct view_facts *v)
{
    for (size_t i = 0; i < v->nfs; i++)
        fact_free(&v->fs[i]);
    free(v->fs);
    free(v->path);
    memset(v, 0, sizeof *v);
}

static struct fsfact *fs_named(struct view_facts *v, const char *name)
{
    for (size_t i = 0; i < v->nfs; i++)
        if (!strcmp(v->fs[i].name, name))
            return &v->fs[i];
    return NULL;
}

/* Fills v from t's layout (lock not held: scans may read the disk). */
static void view_build(struct timg *t, struct view_facts *v)
{
    memset(v, 0, sizeof *v);
    v->path = xstrdup(t->path);
    v->snap = t->snap;
    v->gen = t->gen;
    const struct vlayout *lay = tree_layout(t);
    size_t nvols = lay ? lay->nvols : 0;
    v->fs = xcalloc(nvols + 1, sizeof *v->fs);
    struct jctx c = {0};
    if (lay && lay->facts) {
        char *json = rep_to_json(lay->facts);
        c.p = json;
        jvalue(&c, 0, NULL);
        free(json);
    }
    v->fs[0].name = xstrdup("disk");
    take(&v->fs[0].stype, &c.disk.stype);
    take(&v->fs[0].slabel, &c.disk.slabel);
    take(&v->fs[0].suuid, &c.disk.suuid);
    v->nfs = 1;
    for (size_t i = 0; i < nvols; i++) {
        struct fsfact *f = &v->fs[v->nfs++];
        f->name = xstrdup(lay->vols[i].path);
        for (size_t k = 0; k < c.n; k++) {
            if (c.out[k].name && !strcmp(c.out[k].name, f->name)) {
                take(&f->stype, &c.out[k].stype);
                take(&f->slabel, &c.out[k].slabel);
                take(&f->suuid, &c.out[k].suuid);
            }
        }
    }
    for (size_t k = 0; k < c.n; k++)
        fact_free(&c.out[k]);
    free(c.out);
    fact_free(&c.disk);
    v->nvols = nvols;
}

static bool view_is(const struct view_facts *v, const struct timg *t)
{
    return v->path && v->gen == t->gen && v->snap == t->snap && !strcmp(v->path, t->path);
}

/* The facts of t's view, built on first use.  Called and returns with the
 * lock held. */
static struct view_facts *view_get(struct timg *t)
{
    for (size_t i = 0; i < MAX_VIEWS; i++) {
        if (view_is(&views[i], t)) {
            views[i].used = ++clock_tick;
            return &views[i];
        }
    }
    pthread_mutex_unlock(&lock);
    struct view_facts nv;
    view_build(t, &nv);
    pthread_mutex_lock(&lock);
    size_t slot = 0;
    for (size_t i = 0; i < MAX_VIEWS; i++) {
        if (view_is(&views[i], t)) {   /* built meanwhile by another thread */
            view_free(&nv);
            views[i].used = ++clock_tick;
            return &views[i];
        }
        if (views[i].used < views[slot].used)
            slot = i;
    }
    view_free(&views[slot]);
    views[slot] = nv;
    views[slot].used = ++clock_tick;
    return &views[slot];
}

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

void g_static_facts(struct timg *t, const char *name, char **type, char **label, char **uuid)
{
    pthread_mutex_lock(&lock);
    struct view_facts *v = view_get(t);
    struct fsfact *f = fs_named(v, name);
    *type = dup_or_null(f ? f->stype : NULL);
    *label = dup_or_null(f ? f->slabel : NULL);
    *uuid = dup_or_null(f ? f->suuid : NULL);
    pthread_mutex_unlock(&lock);
}

int g_static_state(struct timg *t, const char *name)
{
    pthread_mutex_lock(&lock);
    struct view_facts *v = view_get(t);
    struct fsfact *f = fs_named(v, name);
    int r = -ENOENT;
    if (f) {
        struct gfs probe = {.hint = f->stype};
        r = g_static_reason(&probe) ? 1 : 0;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = dup_or_null(src);
}

void g_facts_store(const struct app *a, const struct gfs *gf)
{
    pthread_mutex_lock(&lock);
    struct view_facts *v = view_get(a->t);
    struct fsfact *f = fs_named(v, gf->name);
    if (f) {
        pthread_mutex_lock((pthread_mutex_t *)&a->lock);
        set_str(&f->type, gf->type);
        if (gf->facts_done) {
            set_str(&f->label, gf->label);
            set_str(&f->uuid, gf->uuid);
        }
        f->state = gf->state;
        set_str(&f->options, gf->options);
        set_str(&f->reason, gf->reason);
        pthread_mutex_unlock((pthread_mutex_t *)&a->lock);
        version++;
    }
    pthread_mutex_unlock(&lock);
}

void g_facts_changed(void)
{
    pthread_mutex_lock(&lock);
    version++;
    pthread_mutex_unlock(&lock);
}

uint64_t guest_report_version(void)
{
    pthread_mutex_lock(&lock);
    uint64_t v = version;
    pthread_mutex_unlock(&lock);
    return v;
}

void g_facts_shutdown(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < MAX_VIEWS; i++)
        view_free(&views[i]);
    pthread_mutex_unlock(&lock);
}

/* ---- the report ---- */

/* Whether a filesystem entry belongs in the report: the whole disk only
 * when it holds no partitions or volumes (as fs/ shows it). */
static bool reported(const struct view_facts *v, const struct fsfact *f)
{
    return strcmp(f->name, "disk") || v->nvols == 0;
}

void guest_report(struct timg *t, struct rep *root)
{
    char failbuf[400];
    const char *failed = g_recent_failure(t, failbuf, sizeof failbuf);
    struct rep *arr = rep_set_array(root, "filesystems");
    pthread_mutex_lock(&lock);
    struct view_facts *v = view_get(t);
    for (size_t i = 0; i < v->nfs; i++) {
        struct fsfact *f = &v->fs[i];
        if (!reported(v, f))
            continue;
        struct rep *o = rep_add_object(arr);
        rep_set_str(o, "view", f->name);
        rep_set_str(o, "type", f->type ? f->type : f->stype);
        const char *label = f->label ? f->label : f->slabel;
        const char *uuid = f->uuid ? f->uuid : f->suuid;
        if (label)
            rep_set_str(o, "label", label);
        if (uuid)
            rep_set_str(o, "uuid", uuid);
        struct gfs probe = {.hint = f->type ? f->type : f->stype};
        const char *sreason = g_static_reason(&probe);
        if (f->state == GFS_MOUNTED) {
            rep_set_bool(o, "mounted", true);
            rep_set_str(o, "mount_options", f->options);
        } else if (f->state == GFS_FAILED || sreason) {
            rep_set_bool(o, "mounted", false);
            rep_set_str(o, "reason", f->reason ? f->reason : sreason);
        } else if (failed) {
            rep_set_bool(o, "mounted", false);
            rep_set_str(o, "reason", failed);
        } else {
            rep_set_null(o, "mounted");   /* not tried yet */
        }
    }
    pthread_mutex_unlock(&lock);
}
