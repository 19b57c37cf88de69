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

/* Kernel read-ahead window of the mount: several requests in flight. */
#define VMFS_DEFAULT_READ_AHEAD ((size_t)4 << 20)
/* The largest read request: a reply spliced from the image file must fit,
 * with its header and a page per piece, in a pipe of the default maximum
 * size (1 MiB, /proc/sys/fs/pipe-max-size); a larger one is copied. */
#define VMFS_DEFAULT_MAX_READ (1u << 19)

extern const struct fuse_lowlevel_ops vmfs_ops;
void vmfs_ops_init(const struct vmfs_config *cfg);
void vmfs_ops_shutdown(void);

/* Serves the session until it ends, with up to max_threads workers (0:
 * the default) — see loop.c.  Returns 0, or -1 when no thread started. */
int vmfs_loop(struct fuse_session *se, unsigned max_threads);

#endif
