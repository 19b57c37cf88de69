/* vmfs — volumes inside a disk: partitions (MBR, GPT) and LVM2 logical
 * volumes, found by reading the decoded disk, shown as flat slices.
 *
 * The scanners read the disk only through a vdisk (a read callback and a
 * size), so they run the same on an image, a snapshot, an NBD source or a
 * test buffer.  Everything read is untrusted: tables that lie, overlap, loop
 * or run past the disk are reported (vlayout.problems) and what is sane is
 * kept; nothing an image says can make a scan recurse, loop without bound or
 * allocate without bound.
 *
 * A volume is a list of segments mapping its bytes to disk bytes: one for a
 * partition or a linear LV, several for an LV with several segments, and
 * striped segments that spread chunks round-robin over several disk areas.
 *
 * Threads: vlayout_scan runs on one thread; a finished layout is read-only
 * and vvol_map may be called from any thread. */
#ifndef VMFS_VOL_H
#define VMFS_VOL_H

#include "vmfs/common.h"

struct rep;

/* The disk being scanned. */
struct vdisk {
    uint64_t size;
    /* Reads exactly [off, off+len) (inside size); 0 or a negative errno. */
    int (*read)(void *ctx, void *buf, size_t len, uint64_t off);
    void *ctx;
};

/* A stretch of a volume: len bytes from volume offset loff.  With one
 * stripe, volume byte loff + x is disk byte area[0] + x.  With n stripes,
 * chunk k (stripe_size bytes each, counted from loff) is chunk k / n of
 * area[k % n]. */
#define VVOL_MAX_STRIPES 128
struct vvol_seg {
    uint64_t loff, len;
    uint32_t nstripes;
    uint64_t stripe_size;          /* bytes; 0 when nstripes == 1 */
    uint64_t *area;                /* nstripes disk offsets */
};

enum vvol_kind { VVOL_PARTITION, VVOL_LV };

struct vvolume {
    enum vvol_kind kind;
    char *path;                    /* "p1", "p5", "lvm/VG/LV": under NAME.d/ */
    uint64_t size;
    struct vvol_seg *segs;         /* sorted by loff, contiguous, covering size */
    size_t nsegs;
};

struct vlayout {
    struct vvolume *vols;
    size_t nvols;
    struct rep *facts;             /* "partition_table", "partitions", "lvm", … */
    char **problems;
    size_t nproblems;
};

/* Scans a disk: partition table, then LVM on the whole disk or in each
 * partition.  Never fails for damage (problems are listed); returns NULL
 * only on exhaustion.  Free with vlayout_free. */
struct vlayout *vlayout_scan(const struct vdisk *disk);
void vlayout_free(struct vlayout *lay);

/* Adds the layout's facts to a report object (members of root). */
void vlayout_report(const struct vlayout *lay, struct rep *root);

/* The volume with this path, or NULL. */
const struct vvolume *vlayout_find(const struct vlayout *lay, const char *path);

/* Maps volume offset off (< v->size): *disk_off is where it is on the disk
 * and *len (<= maxlen) how many bytes from there are contiguous on disk. */
void vvol_map(const struct vvolume *v, uint64_t off, uint64_t maxlen,
              uint64_t *disk_off, uint64_t *len);

#endif
