/* vmfs — byte sources: the bottom layer.  A source is a fixed-size run of
 * bytes read with pread semantics: a file opened O_RDONLY, or memory (tests).
 *
 * Threads: vsrc_pread may be called from any number of threads at once on the
 * same source.  Opening and closing are the owner's business. */
#ifndef VMFS_IO_H
#define VMFS_IO_H

#include "vmfs/common.h"

struct vsrc;

struct vsrc_ops {
    /* Reads exactly len bytes at off (off+len <= size is checked by the
     * caller).  Returns 0 or a negative errno; a short read is -EIO. */
    int (*pread)(struct vsrc *s, void *buf, size_t len, uint64_t off);
    void (*close)(struct vsrc *s);
};

struct vsrc {
    const struct vsrc_ops *ops;
    uint64_t size;   /* bytes readable */
    int fd;          /* >= 0 when the bytes are a plain file (splice-able) */
    char *name;      /* path or label, for messages */
    void *priv;
};

/* Opens path O_RDONLY.  Returns NULL and sets *err (negative errno). */
struct vsrc *vsrc_open_file(const char *path, int *err);

/* A source over memory; the bytes are copied when copy is true, otherwise
 * the caller keeps them alive until vsrc_close. */
struct vsrc *vsrc_new_mem(const void *data, size_t len, bool copy, const char *name);

/* Reads exactly [off, off+len): -EIO when the range lies outside the source
 * or the underlying read comes back short. */
int vsrc_pread(struct vsrc *s, void *buf, size_t len, uint64_t off);

void vsrc_close(struct vsrc *s);

#endif
