/* vmfs — the process-wide metadata cache: one byte budget, LRU eviction.
 *
 * One mutex guards the hash table, the LRU list and the byte count.  It is
 * held only for lookups and list surgery, never while an entry is filled,
 * so a slow fill (a table read, a decompression) does not stall others. */
#include "config.h"

#include <errno.h>
#include <pthread.h>

#include "vmfs/cache.h"

struct vcache_entry {
    uint64_t owner, key;
    size_t size;
    unsigned refs;
    bool in_table;
    struct vcache_entry *hnext;          /* hash chain */
    struct vcache_entry *prev, *next;    /* LRU list, head = most recent */
    _Alignas(16) unsigned char data[];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct vcache_entry **table;
static size_t nbuckets;
static struct vcache_entry *lru_head, *lru_tail;
static size_t budget = 32u << 20;
static size_t used;
static uint64_t nentries, nhits, nmisses, next_owner = 1;

void vcache_set_budget(size_t bytes) { budget = bytes; }
size_t vcache_budget(void) { return budget; }

uint64_t vcache_new_owner(void)
{
    pthread_mutex_lock(&lock);
    uint64_t o = next_owner++;
    pthread_mutex_unlock(&lock);
    return o;
}

static size_t bucket(uint64_t owner, uint64_t key, size_t n)
{
    uint64_t h = owner * 0x9e3779b97f4a7c15ull ^ key * 0xc2b2ae3d27d4eb4full;
    h ^= h >> 29;
    return (size_t)(h & (n - 1));
}

static void lru_unlink(struct vcache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(struct vcache_entry *e)
{
    e->prev = NULL;
    e->next = lru_head;
    if (lru_head)
        lru_head->prev = e;
    lru_head = e;
    if (!lru_tail)
        lru_tail = e;
}

static void grow_table(void)
{
    size_t n = nbuckets ? nbuckets * 2 : 1024;
    struct vcache_entry **t = xcalloc(n, sizeof *t);
    for (size_t i = 0; i < nbuckets; i++) {
        struct vcache_entry *e = table[i], *nx;
        for (; e; e = nx) {
            nx = e->hnext;
            size_t b = bucket(e->owner, e->key, n);
            e->hnext = t[b];
            t[b] = e;
        }
    }
    free(table);
    table = t;
    nbuckets = n;
}

static struct vcache_entry *find(uint64_t owner, uint64_t key)
{
    if (!nbuckets)
        return NULL;
    for (struct vcache_entry *e = table[bucket(owner, key, nbuckets)]; e; e = e->hnext)
        if (e->owner == owner && e->key == key)
            return e;
    return NULL;
}

/* Takes e out of the table and the LRU list; frees it when unreferenced. */
static void remove_entry(struct vcache_entry *e)
{
    struct vcache_entry **pp = &table[bucket(e->owner, e->key, nbuckets)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    e->in_table = false;
    used -= e->size;
    nentries--;
    if (e->refs == 0)
        free(e);
}

static void evict(const struct vcache_entry *keep)
{
    struct vcache_entry *e = lru_tail;
    while (used > budget && e) {
        struct vcache_entry *prev = e->prev;
        if (e != keep)
            remove_entry(e);
        e = prev;
    }
}

/* Called locked: on a hit, takes a reference to the entry, makes it the
 * most recently used, unlocks and returns true; else stays locked. */
static bool take_hit(uint64_t owner, uint64_t key, size_t size, const void **data,
                     struct vcache_entry **ent)
{
    struct vcache_entry *e = find(owner, key);
    if (!e || e->size != size)
        return false;
    e->refs++;
    lru_unlink(e);
    lru_push(e);
    nhits++;
    pthread_mutex_unlock(&lock);
    *data = e->data;
    *ent = e;
    return true;
}

int vcache_get(uint64_t owner, uint64_t key, size_t size, vcache_fill_fn fill,
               void *arg, const void **data, struct vcache_entry **ent)
{
    pthread_mutex_lock(&lock);
    if (take_hit(owner, key, size, data, ent))
        return 0;
    nmisses++;
    pthread_mutex_unlock(&lock);

    struct vcache_entry *n = xmalloc(sizeof *n + size);
    int r = fill(arg, n->data, size);
    if (r < 0) {
        free(n);
        return r;
    }
    n->owner = owner;
    n->key = key;
    n->size = size;
    n->refs = 1;
    n->in_table = true;
    n->hnext = NULL;

    pthread_mutex_lock(&lock);
    struct vcache_entry *e = find(owner, key);
    if (e && e->size == size) {      /* another thread filled it first */
        e->refs++;
        pthread_mutex_unlock(&lock);
        free(n);
        *data = e->data;
        *ent = e;
        return 0;
    }
    if (e)
        remove_entry(e);
    if (nentries >= nbuckets)
        grow_table();
    size_t b = bucket(owner, key, nbuckets);
    n->hnext = table[b];
    table[b] = n;
    lru_push(n);
    used += size;
    nentries++;
    evict(n);
    pthread_mutex_unlock(&lock);
    *data = n->data;
    *ent = n;
    return 0;
}

int vcache_peek(uint64_t owner, uint64_t key, size_t size, const void **data,
                struct vcache_entry **ent)
{
    pthread_mutex_lock(&lock);
    if (take_hit(owner, key, size, data, ent))
        return 0;
    pthread_mutex_unlock(&lock);
    return -ENOENT;
}

void vcache_release(struct vcache_entry *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&lock);
    if (--e->refs == 0 && !e->in_table)
        free(e);
    pthread_mutex_unlock(&lock);
}

void vcache_drop_owner(uint64_t owner)
{
    pthread_mutex_lock(&lock);
    struct vcache_entry *e = lru_head;
    while (e) {
        struct vcache_entry *next = e->next;
        if (e->owner == owner)
            remove_entry(e);
        e = next;
    }
    pthread_mutex_unlock(&lock);
}

void vcache_get_stats(struct vcache_stats *st)
{
    pthread_mutex_lock(&lock);
    st->hits = nhits;
    st->misses = nmisses;
    st->bytes = used;
    st->entries = nentries;
    pthread_mutex_unlock(&lock);
}
