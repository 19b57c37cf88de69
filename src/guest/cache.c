/* vmfs — the guest caches: attributes, listings, link targets, extended
 * attributes, extent maps (one pool) and file data (another), each within
 * a byte budget, least recently used out first.  Entries belong to one
 * appliance and die with it.
 *
 * Threads: every function may be called from any thread; an entry handed
 * out by gc_get stays valid until released, even if evicted meanwhile. */
#include "config.h"

#include <pthread.h>

#include "guest/guest_int.h"

#define GC_BUCKETS 16384

struct gc_ent {
    uint64_t app, n;
    uint32_t fs;
    enum gc_kind kind;
    char *path;
    size_t hash;
    void *val;
    size_t bytes;
    void (*free_fn)(void *);
    unsigned refs;                 /* the pool's (while linked) and users' */
    bool linked;
    struct gc_ent *hnext;          /* hash chain */
    struct gc_ent *prev, *next;    /* LRU list, most recent first */
};

struct gc_pool {
    pthread_mutex_t lock;
    struct gc_ent *buckets[GC_BUCKETS];
    struct gc_ent *head, *tail;
    size_t bytes, budget;
};

static struct gc_pool meta = {.lock = PTHREAD_MUTEX_INITIALIZER, .budget = 32u << 20};
static struct gc_pool data = {.lock = PTHREAD_MUTEX_INITIALIZER, .budget = 64u << 20};

void gc_init(size_t meta_budget, size_t data_budget)
{
    if (meta_budget)
        meta.budget = meta_budget;
    if (data_budget)
        data.budget = data_budget;
}

static struct gc_pool *pool_of(enum gc_kind k) { return k == GC_DATA ? &data : &meta; }

static size_t key_hash(const struct gc_key *k)
{
    uint64_t h = k->app * 0x9e3779b97f4a7c15ull ^ k->fs * 0xff51afd7ed558ccdull ^
                 (uint64_t)k->kind << 56 ^ k->n * 0xc4ceb9fe1a85ec53ull;
    for (const unsigned char *p = (const unsigned char *)k->path; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return (size_t)(h % GC_BUCKETS);
}

static bool key_eq(const struct gc_ent *e, const struct gc_key *k)
{
    return e->app == k->app && e->fs == k->fs && e->kind == k->kind && e->n == k->n &&
           !strcmp(e->path, k->path);
}

static void ent_free(struct gc_ent *e)
{
    if (e->free_fn)
        e->free_fn(e->val);
    free(e->path);
    free(e);
}

/* Drops one reference; the caller holds the pool lock. */
static bool ent_unref(struct gc_ent *e)
{
    return --e->refs == 0;
}

static void lru_unlink(struct gc_pool *p, struct gc_ent *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        p->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        p->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(struct gc_pool *p, struct gc_ent *e)
{
    e->prev = NULL;
    e->next = p->head;
    if (p->head)
        p->head->prev = e;
    p->head = e;
    if (!p->tail)
        p->tail = e;
}

/* Takes e out of the pool; returns true when it must be freed now. */
static bool detach(struct gc_pool *p, struct gc_ent *e)
{
    struct gc_ent **pp = &p->buckets[e->hash];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    lru_unlink(p, e);
    p->bytes -= e->bytes;
    e->linked = false;
    return ent_unref(e);
}

static struct gc_ent *lookup(struct gc_pool *p, const struct gc_key *k, size_t h)
{
    for (struct gc_ent *e = p->buckets[h]; e; e = e->hnext)
        if (key_eq(e, k))
            return e;
    return NULL;
}

void gc_put(const struct gc_key *k, void *val, size_t bytes, void (*free_fn)(void *))
{
    struct gc_pool *p = pool_of(k->kind);
    struct gc_ent *e = xcalloc(1, sizeof *e);
    e->app = k->app;
    e->fs = k->fs;
    e->kind = k->kind;
    e->n = k->n;
    e->path = xstrdup(k->path);
    e->hash = key_hash(k);
    e->val = val;
    e->bytes = bytes + sizeof *e + strlen(k->path);
    e->free_fn = free_fn;
    e->refs = 1;
    e->linked = true;
    struct gc_ent *dead = NULL;
    pthread_mutex_lock(&p->lock);
    struct gc_ent *old = lookup(p, k, e->hash);
    if (old && detach(p, old)) {
        old->hnext = dead;
        dead = old;
    }
    if (e->bytes > p->budget) {
        /* Larger than the whole budget: not kept. */
        e->linked = false;
        e->hnext = dead;
        dead = e;
    } else {
        e->hnext = p->buckets[e->hash];
        p->buckets[e->hash] = e;
        lru_push(p, e);
        p->bytes += e->bytes;
        while (p->bytes > p->budget && p->tail && p->tail != e) {
            struct gc_ent *v = p->tail;
            if (detach(p, v)) {
                v->hnext = dead;
                dead = v;
            }
        }
    }
    pthread_mutex_unlock(&p->lock);
    while (dead) {
        struct gc_ent *n = dead->hnext;
        ent_free(dead);
        dead = n;
    }
}

void *gc_get(const struct gc_key *k, struct gc_ent **ref)
{
    struct gc_pool *p = pool_of(k->kind);
    pthread_mutex_lock(&p->lock);
    struct gc_ent *e = lookup(p, k, key_hash(k));
    if (e) {
        e->refs++;
        lru_unlink(p, e);
        lru_push(p, e);
    }
    pthread_mutex_unlock(&p->lock);
    *ref = e;
    return e ? e->val : NULL;
}

bool gc_has(const struct gc_key *k)
{
    struct gc_pool *p = pool_of(k->kind);
    pthread_mutex_lock(&p->lock);
    bool r = lookup(p, k, key_hash(k)) != NULL;
    pthread_mutex_unlock(&p->lock);
    return r;
}

void gc_release(struct gc_ent *e)
{
    if (!e)
        return;
    struct gc_pool *p = pool_of(e->kind);
    pthread_mutex_lock(&p->lock);
    bool last = ent_unref(e);
    pthread_mutex_unlock(&p->lock);
    if (last)
        ent_free(e);
}

static void drop_pool(struct gc_pool *p, uint64_t app, bool all)
{
    struct gc_ent *dead = NULL;
    pthread_mutex_lock(&p->lock);
    for (struct gc_ent *e = p->head, *n; e; e = n) {
        n = e->next;
        if ((all || e->app == app) && detach(p, e)) {
            e->hnext = dead;
            dead = e;
        }
    }
    pthread_mutex_unlock(&p->lock);
    while (dead) {
        struct gc_ent *n = dead->hnext;
        ent_free(dead);
        dead = n;
    }
}

void gc_drop_app(uint64_t app)
{
    drop_pool(&meta, app, false);
    drop_pool(&data, app, false);
}

void gc_shutdown(void)
{
    drop_pool(&meta, 0, true);
    drop_pool(&data, 0, true);
}

/* ---- values ---- */

struct gdir *gdir_ref(struct gdir *d)
{
    __atomic_add_fetch(&d->refs, 1, __ATOMIC_ACQ_REL);
    return d;
}

void gdir_free(void *p)
{
    struct gdir *d = p;
    if (!d || __atomic_sub_fetch(&d->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    guest_dirents_free(d->ents, d->n);
    free(d);
}

void gxattrs_free(void *p)
{
    struct gxattrs *x = p;
    if (!x)
        return;
    for (size_t i = 0; i < x->n; i++) {
        free(x->v[i].name);
        free(x->v[i].val);
    }
    free(x->v);
    free(x);
}

void gmap_free(void *p)
{
    struct gmap *m = p;
    if (!m)
        return;
    free(m->e);
    free(m);
}

const struct guest_dirent *gdir_find(const struct gdir *d, const char *name)
{
    size_t lo = 0, hi = d->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, d->ents[mid].name);
        if (c == 0)
            return &d->ents[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}
