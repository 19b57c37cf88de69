/* vmfs — block tables read through the shared cache, for the format drivers.
 *
 * QED's L1 and L2 tables, VDI's block map and VHD's block allocation table
 * are arrays of fixed-width integers in the image file.  The drivers read
 * them in slices of VTAB_SLICE bytes kept in the metadata cache (cache.h),
 * through a cursor that holds the slice last used while one map call walks
 * from block to block.  A struct vtab spells out what differs between the
 * formats: where the table is, how many of its entries may be read, the
 * entry width and byte order.  What a value means (unallocated, zeros, a
 * block's place in the file) stays with each driver.
 *
 * Every field of a struct vtab may come from the image: vtab_entry checks
 * the index against the count and the entry against the end of the file,
 * with overflow-checked arithmetic, before it reads.
 *
 * Threads: a cursor belongs to one call on one thread; the cache is shared. */
#ifndef VMFS_FMT_TABLE_H
#define VMFS_FMT_TABLE_H

#include "vmfs/cache.h"
#include "vmfs/fmt.h"

#define VTAB_SLICE 4096u    /* table bytes per cache entry */

/* A held cache entry: the slice (or other piece of metadata) last read. */
struct vtab_cur {
    struct vcache_entry *ent;
    const uint8_t *data;
    uint64_t key;
};

/* Lets go of the held entry, if any; the cursor can be used again. */
void vtab_cur_release(struct vtab_cur *c);

/* Makes c hold the entry key of l's cache: size bytes of l's file from off,
 * read on a miss.  Bytes past the end of the file read as zeros; the caller
 * looks only at bytes it has checked lie inside the file.  An entry already
 * held under key is kept.  Returns 0, or a negative errno with nothing
 * held. */
int vtab_cur_get(struct vlayer *l, struct vtab_cur *c, uint64_t key, uint64_t off, size_t size);

enum vtab_order { VTAB_LE, VTAB_BE };

struct vtab {
    uint64_t off;            /* file offset of entry 0 */
    uint64_t count;          /* entries that may be read */
    unsigned width;          /* bytes per entry: 4 or 8 */
    enum vtab_order order;   /* byte order of an entry */
    uint64_t key_tag;        /* a slice's cache key is key_tag | its file offset */
};

/* Entry idx of table t, read through c.  *ok is false (and *e 0) when idx
 * is not below t->count or the entry does not lie inside the file; the
 * driver has said why at open.  Returns 0, or a negative errno when the
 * slice cannot be read. */
int vtab_entry(struct vlayer *l, struct vtab_cur *c, const struct vtab *t, uint64_t idx,
               uint64_t *e, bool *ok);

/* After vtab_entry read entry idx through c: *p points at it in the held
 * slice; returns how many entries from idx on (at least 1) lie in that
 * slice, below t->count and inside the file, for a driver that walks on
 * through alike entries without a call per entry. */
uint64_t vtab_run(struct vlayer *l, const struct vtab_cur *c, const struct vtab *t, uint64_t idx,
                  const uint8_t **p);

/* How many entries of a table of `entries` the disk uses, one per block
 * of block_size bytes (a power of two) of a disk_size-byte disk.  A table
 * too short for the disk is reported as "the NAME has …": reads past its
 * last block fail. */
uint64_t vtab_used(struct vlayer *l, const char *name, uint64_t entries, uint64_t block_size,
                   uint64_t disk_size);

/* How many of the first `used` entries (width bytes each) of the table
 * NAME at off lie wholly inside l's file: the count for its struct vtab.
 * Entries past the end of the file are reported once, here. */
uint64_t vtab_in_file(struct vlayer *l, const char *name, uint64_t off, uint64_t used,
                      unsigned width);

#endif
