/* vmfs — the process-wide metadata cache.
 *
 * Holds decoded metadata (L2 tables, block maps) and decompressed clusters
 * within one byte budget, least recently used first out.  Entries are keyed
 * by (owner, key): owner is a number from vcache_new_owner() that a layer
 * takes at open and gives back with vcache_drop_owner() at close.
 *
 * Threads: every function may be called from any thread.  A looked-up entry
 * stays valid until its reference is released, even if it is evicted. */
#ifndef VMFS_CACHE_H
#define VMFS_CACHE_H

#include "vmfs/common.h"

struct vcache_entry;

/* Fills buf (size bytes) for a missing entry; returns 0 or negative errno. */
typedef int (*vcache_fill_fn)(void *arg, void *buf, size_t size);

/* Sets the budget in bytes (default 32 MiB).  Call before serving. */
void vcache_set_budget(size_t bytes);
size_t vcache_budget(void);

uint64_t vcache_new_owner(void);
/* Forgets every entry of owner (entries still referenced die with their
 * last reference). */
void vcache_drop_owner(uint64_t owner);

/* Returns the entry for (owner, key), filling it with fill() on a miss.
 * On success *data points to size bytes and *ent must be released with
 * vcache_release().  Concurrent misses on the same key may both fill; one
 * result is kept.  Returns 0 or the fill function's negative errno (failed
 * fills are not cached). */
int vcache_get(uint64_t owner, uint64_t key, size_t size, vcache_fill_fn fill,
               void *arg, const void **data, struct vcache_entry **ent);
/* The entry for (owner, key) if it is cached, as vcache_get; -ENOENT when
 * it is not (nothing is filled). */
int vcache_peek(uint64_t owner, uint64_t key, size_t size, const void **data,
                struct vcache_entry **ent);
void vcache_release(struct vcache_entry *ent);

struct vcache_stats {
    uint64_t hits, misses, bytes, entries;
};
void vcache_get_stats(struct vcache_stats *st);

#endif
