/* vmfs — byte sources: the bottom layer.  A source is a fixed-size run of
 * bytes read with pread semantics: a file opened O_RDONLY, an NBD export
 * (read-only, through libnbd), or memory (tests).
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
    /* Optional: allocation of the bytes at off (len > 0, off + len <= size,
     * checked by the caller): on return [off, off + *n) with 0 < *n <= len
     * is all data (*data true) or all reading as zeros (a hole).  Returns 0
     * or a negative errno (-ENOTSUP: the source cannot tell). */
    int (*extent)(struct vsrc *s, uint64_t off, uint64_t len, bool *data, uint64_t *n);
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

/* True for the NBD URIs vsrc_open hands to vsrc_open_nbd: nbd://,
 * nbds://, nbd+unix://, nbds+unix://, nbd+vsock://, nbds+vsock://. */
bool vsrc_is_uri(const char *s);

/* An NBD URI (nbd://host[:port]/export, nbd+unix:///export?socket=PATH)
 * through vsrc_open_nbd, anything else through vsrc_open_file. */
struct vsrc *vsrc_open(const char *path_or_uri, int *err);

/* An NBD export, read-only (no write is ever sent).  The size is the
 * export's size.  Reads run in parallel over a small pool of connections
 * (up to 4 when the server allows multi-conn, else 1).  A server that goes
 * away makes reads fail with -EIO (logged once, not per read); a later
 * read reconnects (at most one attempt per second), so reads work again
 * once the server is back.  Holes come from base:allocation block status
 * where the server offers it.  Returns NULL and sets *err (negative errno)
 * when the first connection fails; the reason is not logged. */
struct vsrc *vsrc_open_nbd(const char *uri, int *err);

struct vsrc_nbd_opts {
    unsigned max_conns;    /* pool size cap (0: 4) */
    const char *label;     /* names the source in messages (default: the URI) */
    /* Called before retrying a failed connection attempt, e.g. to restart
     * a server the caller runs; may be called from several threads. */
    void (*revive)(void *ctx);
    void *ctx;
};
struct vsrc *vsrc_open_nbd_ex(const char *uri, const struct vsrc_nbd_opts *o, int *err);

/* A source over memory; the bytes are copied when copy is true, otherwise
 * the caller keeps them alive until vsrc_close. */
struct vsrc *vsrc_new_mem(const void *data, size_t len, bool copy, const char *name);

/* Reads exactly [off, off+len): -EIO when the range lies outside the source
 * or the underlying read comes back short. */
int vsrc_pread(struct vsrc *s, void *buf, size_t len, uint64_t off);

/* Tells the kernel that [off, off + len) will be read soon, so that the
 * reads of a walk through many tables go to the disk together rather than
 * one after the other.  A hint only: nothing for a source that is not a
 * plain file, nothing said when the kernel refuses. */
void vsrc_willneed(struct vsrc *s, uint64_t off, uint64_t len);

/* Allocation at off: on return [off, off + *n) (0 < *n <= len) is all data
 * or all hole.  Sources without an extent op, or whose op answers -ENOTSUP,
 * are all data.  Returns 0, or -EIO when the range lies outside the source
 * (or len is 0), or the op's error (the caller may count the range as data). */
int vsrc_extent(struct vsrc *s, uint64_t off, uint64_t len, bool *data, uint64_t *n);

void vsrc_close(struct vsrc *s);

#endif
