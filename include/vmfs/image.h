/* vmfs — an image: a top layer with its backing chain, read as one disk.
 *
 * vimage_open never fails for a damaged image: the image comes back with
 * its problems recorded (vimage_problems, info) and reads fail with EIO
 * where they need what is damaged or missing.  It returns NULL only when the
 * file is not a disk image at all (no driver claims it).
 *
 * Threads: open and unref on any thread; once open, every read, plan,
 * extent and report call may run on many threads at once.  Images are
 * reference counted: each user holds a reference. */
#ifndef VMFS_IMAGE_H
#define VMFS_IMAGE_H

#include <pthread.h>
#include <sys/types.h>

#include "vmfs/fmt.h"

#define VMFS_DEFAULT_MAX_CHAIN 16
#define VIMAGE_ALLOC_PARTS 16        /* parts of an allocation count */

struct rep;

struct vimage {
    char *path;                  /* absolute path of the top file */
    struct vlayer **layers;      /* [0] top, then its backing chain */
    size_t nlayers;
    bool chain_broken;           /* a backing file could not be opened:
                                    reads that fall through the last layer
                                    fail with EIO */
    uint64_t size;               /* virtual size (0 when the top failed) */
    bool top_failed;             /* the top layer itself could not be read */
    long snap_index;             /* -1: current state; else the snapshot */
    struct vopen_opts opts;

    pthread_mutex_t lock;        /* guards problems, alloc_* and refs */
    char **problems;
    size_t nproblems;
    bool alloc_known;
    uint64_t alloc_bytes;        /* bytes of the disk that hold data */
    /* The count being made, in parts (reader.c): each part is to do (0),
     * being counted by a thread (1) or done (2). */
    unsigned alloc_nparts, alloc_left;
    uint8_t alloc_part[VIMAGE_ALLOC_PARTS];
    uint64_t alloc_sum;          /* of the parts done */
    pthread_cond_t alloc_done;   /* signalled when a part is done or given up */
    unsigned refs;
    bool quiet;                  /* record problems without logging them */
};

/* Opens path (format probed) with its backing chain.  snap_index -1 for the
 * current state, or an index below vimage_snapshot_count() of the current
 * state's image.  raw_fallback: a file with no known magic is raw even
 * without a raw extension (a SOURCE given as a single file). */
struct vimage *vimage_open(const char *path, const struct vopen_opts *opts,
                           long snap_index, bool raw_fallback);
void vimage_ref(struct vimage *img);
void vimage_unref(struct vimage *img);

/* The files an image is made of besides itself (a descriptor's extents),
 * as absolute paths: how many are in *paths (malloc'ed strings). */
size_t vimage_related_files(const char *path, char ***paths);

/* Which format a file is, without opening it: the driver or NULL. */
const struct vfmt_driver *vimage_probe_file(const char *path, bool raw_fallback);
/* True when a file is shown as an image: a format claims it, or its name
 * ends in an image extension (so that a damaged one still gets its info). */
bool vimage_is_candidate(const char *path, bool raw_fallback);

const char *vimage_format(const struct vimage *img);
size_t vimage_snapshot_count(const struct vimage *img);
const struct vsnap *vimage_snapshot(const struct vimage *img, size_t i);

/* Records a problem of the image once (logged once).  Thread-safe. */
void vimage_problem(struct vimage *img, const char *fmt, ...) VMFS_PRINTF(2, 3);
/* Copies the problem list (caller frees each string and the array). */
size_t vimage_problems(struct vimage *img, char ***out);

/* Reads [off, off + len) of the virtual disk (off + len <= size).
 * Returns 0 or a negative errno; never a short read. */
int vimage_read(struct vimage *img, void *buf, size_t len, uint64_t off);

/* A unit of the disk decoded whole (a compressed cluster or grain): a read
 * of part of one has paid for all of it. */
struct vunit {
    uint64_t off, len;     /* len 0: none */
};
/* vimage_read that also tells, in *unit, the first unit it decoded of
 * which it read only a part (len 0 when none). */
int vimage_read_unit(struct vimage *img, void *buf, size_t len, uint64_t off,
                     struct vunit *unit);

/* A read as segments, so that data in plain files can be spliced rather
 * than copied: each segment is either fd bytes at fd_off or mem bytes. */
struct vseg {
    int fd;            /* >= 0: bytes at fd_off in fd; -1: bytes at mem */
    uint64_t fd_off;
    void *mem;
    size_t len;
};
struct vplan {
    struct vseg *segs;
    size_t nsegs, cap;
    void **bufs;       /* backing store of the mem segments */
    size_t nbufs;
};
#define VPLAN_INIT {NULL, 0, 0, NULL, 0}
/* Plans a read of [off, off + len), appending segments that add up to len
 * to plan (start from VPLAN_INIT).  Release with vplan_free (also after a
 * failure). */
int vimage_plan(struct vimage *img, uint64_t off, size_t len, struct vplan *plan);
void vplan_free(struct vplan *plan);

/* Allocation at off through the whole chain: on return [off, off + *len)
 * is all data (*data true) or all hole (zeros, or unallocated everywhere).
 * Runs that fail to map count as data. */
int vimage_extent(struct vimage *img, uint64_t off, bool *data, uint64_t *len);

/* Bytes of [off, off + len) that hold data, walking the chain once (0 for
 * a range outside the disk).  Runs that fail to map count as data. */
uint64_t vimage_count_data(struct vimage *img, uint64_t off, uint64_t len);

/* Bytes of the disk that hold data: counted once, then remembered.
 * Threads asking while it is counted share the work (large disks are
 * counted in parts) and all get the same answer. */
uint64_t vimage_allocated(struct vimage *img);
/* The same, for a count that may be given up: once *stop is non-zero
 * (another thread sets it) the walk ends, the figure stays unknown and
 * false comes back.  On true *bytes is the figure. */
bool vimage_allocated_unless(struct vimage *img, const int *stop, uint64_t *bytes);

/* Adds the image's facts: format, sizes, chain, snapshots.  The problem
 * list comes last, from vimage_report_problems, once every layer above
 * has had its say. */
void vimage_report(struct vimage *img, struct rep *root);
void vimage_report_problems(struct vimage *img, struct rep *root);
/* How many problems the image has recorded so far (reads find more). */
size_t vimage_problem_count(struct vimage *img);

#endif
