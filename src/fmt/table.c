/* vmfs — block tables read through the shared cache (table.h). */
#include "config.h"

#include <inttypes.h>

#include "fmt/table.h"

void vtab_cur_release(struct vtab_cur *c)
{
    if (c->ent)
        vcache_release(c->ent);
    c->ent = NULL;
}

struct fill_arg {
    struct vsrc *file;
    uint64_t off;
};

/* Reads size bytes at off; what lies past the end of the file reads as
 * zeros. */
static int fill_clipped(void *arg, void *buf, size_t size)
{
    struct fill_arg *a = arg;
    uint64_t fsize = a->file->size;
    size_t have = a->off >= fsize ? 0 : (size_t)VMFS_MIN((uint64_t)size, fsize - a->off);
    memset((uint8_t *)buf + have, 0, size - have);
    return have ? vsrc_pread(a->file, buf, have, a->off) : 0;
}

int vtab_cur_get(struct vlayer *l, struct vtab_cur *c, uint64_t key, uint64_t off, size_t size)
{
    if (c->ent && c->key == key)
        return 0;
    vtab_cur_release(c);
    struct fill_arg a = {l->file, off};
    const void *data;
    int r = vcache_get(l->cache_owner, key, size, fill_clipped, &a, &data, &c->ent);
    if (r < 0) {
        c->ent = NULL;
        return r;
    }
    c->data = data;
    c->key = key;
    return 0;
}

int vtab_entry(struct vlayer *l, struct vtab_cur *c, const struct vtab *t, uint64_t idx,
               uint64_t *e, bool *ok)
{
    *ok = false;
    *e = 0;
    uint64_t rel, pos;
    if (idx >= t->count || ckd_mul_u64(&rel, idx, t->width) || ckd_add_u64(&pos, t->off, rel) ||
        !range_in(pos, t->width, l->file->size))
        return 0;
    uint64_t slice_off = t->off + rel / VTAB_SLICE * VTAB_SLICE;
    int r = vtab_cur_get(l, c, t->key_tag | slice_off, slice_off, VTAB_SLICE);
    if (r < 0)
        return r;
    const uint8_t *p = c->data + rel % VTAB_SLICE;
    if (t->width == 8)
        *e = t->order == VTAB_BE ? get_be64(p) : get_le64(p);
    else
        *e = t->order == VTAB_BE ? get_be32(p) : get_le32(p);
    *ok = true;
    return 0;
}

uint64_t vtab_run(struct vlayer *l, const struct vtab_cur *c, const struct vtab *t, uint64_t idx,
                  const uint8_t **p)
{
    /* vtab_entry checked idx < count and that the entry lies inside the
     * file: none of this overflows. */
    uint64_t rel = idx * t->width, pos = t->off + rel;
    uint64_t n = VMFS_MIN((VTAB_SLICE - rel % VTAB_SLICE) / t->width, t->count - idx);
    n = VMFS_MIN(n, (l->file->size - pos) / t->width);
    *p = c->data + rel % VTAB_SLICE;
    return n;
}

uint64_t vtab_used(struct vlayer *l, const char *name, uint64_t entries, uint64_t block_size,
                   uint64_t disk_size)
{
    uint64_t need = disk_size / block_size + (disk_size % block_size != 0);
    if (need <= entries)
        return need;
    /* entries * block_size < disk_size: no overflow. */
    vlayer_problem(l, "the %s has %" PRIu64 " entries of %" PRIu64 " bytes, too few for the %"
                   PRIu64 "-byte disk: reads past %" PRIu64 " bytes fail", name, entries,
                   block_size, disk_size, entries * block_size);
    return entries;
}

uint64_t vtab_in_file(struct vlayer *l, const char *name, uint64_t off, uint64_t used,
                      unsigned width)
{
    uint64_t fsize = l->file->size;
    uint64_t n = off >= fsize ? 0 : VMFS_MIN(used, (fsize - off) / width);
    if (n < used)
        vlayer_problem(l, "%s at 0x%" PRIx64 ": entries %" PRIu64 " to %" PRIu64
                       " lie past the end of the file", name, off, n, used - 1);
    return n;
}
