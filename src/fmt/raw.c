/* vmfs — raw images: the file (or NBD export) is the disk.  Holes in a
 * sparse host file or an export are reported as holes (vsrc_extent). */
#include "config.h"

#include <errno.h>
#include <strings.h>
#include <sys/stat.h>

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

/* l->priv of a plain host file with holes: reads ask the file system where
 * its data are. */
static char sparse_file;

static int raw_open(struct vlayer *l)
{
    l->size = l->file->size;
    struct stat st;
    if (l->file->fd >= 0 && fstat(l->file->fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_blocks < l->size / 512)
        l->priv = &sparse_file;
    return 0;
}

static void whole_file(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    run->len = len;
    run->kind = VRUN_DATA;
    run->src = l->file;
    run->src_off = off;
}

/* Holes as the source reports them: SEEK_DATA/SEEK_HOLE on a file, block
 * status on an NBD export.  A source that cannot tell is all data. */
static int raw_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    whole_file(l, off, len, run);
    return vrun_refine_holes(run);
}

/* Reads of a dense file, or an export, take the source as all data: holes
 * read as zeros anyway, and asking costs a round trip to an NBD server.  A
 * sparse host file's holes are zeros from memory instead: the file system
 * is asked with two lseeks, where reading them would fill the host's page
 * cache with zero pages of the image file only to copy them again. */
static int raw_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    if (l->priv == &sparse_file)
        return raw_map_alloc(l, off, len, run);
    whole_file(l, off, len, run);
    return 0;
}

const struct vfmt_driver vfmt_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .map = raw_map,
    .map_alloc = raw_map_alloc,
};
