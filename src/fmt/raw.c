/* vmfs — raw images: the file is the disk.  Holes in a sparse host file are
 * reported as holes (SEEK_DATA/SEEK_HOLE on the file). */
#include "config.h"

#include <errno.h>
#include <strings.h>
#include <unistd.h>

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

/* Data up to the next host hole, or zeros up to the next host data. */
static int raw_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    int fd = l->file->fd;
    run->len = len;
    run->kind = VRUN_DATA;
    run->src = l->file;
    run->src_off = off;
    if (fd < 0)
        return 0;
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
        if (errno == ENXIO)          /* a hole up to the end of the file */
            run->kind = VRUN_ZERO;
        return 0;                    /* no hole support: all data */
    }
    if ((uint64_t)d > off) {
        run->kind = VRUN_ZERO;
        run->len = VMFS_MIN(len, (uint64_t)d - off);
        return 0;
    }
    off_t h = lseek(fd, (off_t)off, SEEK_HOLE);
    if (h > 0 && (uint64_t)h > off)
        run->len = VMFS_MIN(len, (uint64_t)h - off);
    return 0;
}

static void raw_report(struct vlayer *l, struct rep *obj) {}

const struct vfmt_driver vfmt_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .map = raw_map,
    .map_alloc = raw_map_alloc,
    .report = raw_report,
};
