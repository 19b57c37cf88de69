/* vmfs — raw images: the file (or NBD export) is the disk.  Holes in a
 * sparse host file or an export are reported as holes (vsrc_extent). */
#include "config.h"

#include <errno.h>
#include <strings.h>

#include "vmfs/fmt.h"
#include "vmfs/report.h"

static bool has_raw_extension(const char *path)
{
    static const char *const ext[] = {".img", ".raw", ".iso", ".dd"};
    const char *dot = path ? strrchr(path, '.') : NULL;
    const char *slash = path ? strrchr(path, '/') : NULL;
    if (!dot || (slash && dot < slash))
        return false;
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(ext); i++)
        if (!strcasecmp(dot, ext[i]))
            return true;
    return false;
}

static int raw_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    return has_raw_extension(path) ? 1 : 0;
}

static int raw_open(struct vlayer *l)
{
    l->size = l->file->size;
    return 0;
}

/* For reads the whole file is data: holes read as zeros anyway. */
static int raw_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    run->len = len;
    run->kind = VRUN_DATA;
    run->src = l->file;
    run->src_off = off;
    return 0;
}

/* Holes as the source reports them: SEEK_DATA/SEEK_HOLE on a file, block
 * status on an NBD export.  A source that cannot tell is all data. */
static int raw_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    raw_map(l, off, len, run);
    return vrun_refine_holes(run);
}

const struct vfmt_driver vfmt_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .map = raw_map,
    .map_alloc = raw_map_alloc,
};
