/* vmfs — the FUSE front end: options and the low-level operations.
 *
 * Threads: libfuse calls the operations from its worker threads; the inode
 * table has its own lock, images are shared through the tree (tree.h). */
#ifndef VMFS_FUSE_FUSE_H
#define VMFS_FUSE_FUSE_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "vmfs/tree.h"

struct vmfs_config {
    char *source;            /* as given */
    char *mountpoint;
    bool allow_external;
    unsigned max_chain;
    size_t cache_size;
    double attr_timeout;     /* seconds the kernel may keep attributes */
    bool direct_io;          /* serve disk reads without the page cache */
    unsigned max_read;       /* largest read request the kernel sends */
};

/* The kernel reads ahead of a sequential reader in windows of the mount's
 * read-ahead size (128 KiB by default), and FUSE hands the daemon one
 * request per window.  A larger window turns a stream of 128 KiB requests
 * into several 512 KiB requests in flight at once, which the request loop
 * serves on several threads: fewer round trips, and compressed clusters
 * decoded in parallel.  A disk that is mostly holes keeps the kernel's
 * window (readahead.c). */
#define VMFS_DEFAULT_READ_AHEAD ((size_t)4 << 20)
#define VMFS_SHALLOW_READ_AHEAD ((size_t)128 << 10)
/* The largest read request: a reply spliced from the image file must fit,
 * with its header and a page per piece, in a pipe of the default maximum
 * size (1 MiB, /proc/sys/fs/pipe-max-size); a larger one is copied. */
#define VMFS_DEFAULT_MAX_READ (1u << 19)

/* The window is a property of the mount's backing device (sysfs), so it
 * is set once the mount answers, and only root may: deep at first, and
 * for each disk opened, deep or shallow by its share of data.  deep 0 leaves
 * the kernel's window alone. */
void vmfs_ra_start(const char *mountpoint, size_t deep, size_t shallow);
void vmfs_ra_open(const struct vview *v);
void vmfs_ra_stop(void);

extern const struct fuse_lowlevel_ops vmfs_ops;
void vmfs_ops_init(const struct vmfs_config *cfg);
void vmfs_ops_shutdown(void);
/* True while the kernel's pages of inode ino are of image generation gen
 * (no newer opening of the file has replaced them). */
bool vmfs_ops_serving(fuse_ino_t ino, uint64_t gen);

/* The rest of a unit that a small read of [off, off + size) of view v
 * (inode ino) decoded whole but used only part of, for the kernel's page
 * cache of the file (fill.c).  vmfs_fill_prepare, before the reply (the
 * handle holding v may go as soon as the reader has its bytes), takes a
 * hold on the image and returns true when there is something to store;
 * vmfs_fill_queue, after the reply, queues the job or drops it.  Stores
 * run on a thread of their own, made for the first job once
 * vmfs_fill_start has named the session (after the mount answers), and
 * stopped by vmfs_fill_stop before the session goes. */
struct vmfs_fill_job {
    fuse_ino_t ino;
    struct vview view;       /* holds its image */
    uint64_t off, len;
};
bool vmfs_fill_prepare(struct vmfs_fill_job *j, fuse_ino_t ino, const struct vview *v,
                       const struct vunit *unit, uint64_t off, size_t size);
void vmfs_fill_queue(struct vmfs_fill_job *j);
void vmfs_fill_start(struct fuse_session *se);
/* False when the thread could not be stopped: it may still use the
 * session and the images it holds, which must then be left alone. */
bool vmfs_fill_stop(void);

/* Serves the session until it ends, with up to max_threads workers (0:
 * the default) — see loop.c.  started(arg), when given, runs on the
 * calling thread once the first worker reads (never when none could be
 * made).  Returns 0, or -1 when no thread started. */
int vmfs_loop(struct fuse_session *se, unsigned max_threads, void (*started)(void *),
              void *arg);

#endif
