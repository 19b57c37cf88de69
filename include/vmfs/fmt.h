/* vmfs — the format driver interface.
 *
 * A format is one file in src/fmt/ that fills in a struct vfmt_driver and is
 * listed once in src/fmt/registry.c.  A driver turns one image file (a layer)
 * into a virtual disk by answering "what is at [off, off+len)?" with runs:
 * a stretch of bytes that all have the same kind and, for data, lie
 * contiguously in one byte source.  The generic reader in src/img/ turns runs
 * into reads, holes (SEEK_DATA/SEEK_HOLE, st_blocks) and allocation figures,
 * and walks the backing chain; drivers never open their backing file.
 *
 * Every number a driver reads from its file is untrusted: it is checked
 * before use, with overflow-checked arithmetic, and a bad value becomes a
 * problem (vlayer_problem) plus an error run, never a crash or wrong bytes.
 *
 * Threads: open, snapshot_select and close run on one thread with no reads in
 * flight.  map, decode and report may run on many threads at once; drivers
 * guard lazily loaded state themselves and use the shared cache (cache.h)
 * for tables. */
#ifndef VMFS_FMT_H
#define VMFS_FMT_H

#include "vmfs/common.h"
#include "vmfs/io.h"

struct rep;
struct vimage;

enum vrun_kind {
    VRUN_DATA,     /* bytes at src_off in src */
    VRUN_ZERO,     /* reads as zeros, allocated as zeros in this layer (a hole) */
    VRUN_BACKING,  /* not allocated here: read the backing layer (zeros without one) */
    VRUN_DECODE,   /* the driver produces the bytes with decode() (compressed) */
    VRUN_ERROR,    /* damaged: reads fail with err */
};

struct vrun {
    enum vrun_kind kind;
    uint64_t len;       /* > 0 and <= the length asked for */
    struct vsrc *src;   /* VRUN_DATA */
    uint64_t src_off;   /* VRUN_DATA: src_off + len <= src->size, checked */
    int err;            /* VRUN_ERROR: positive errno, normally EIO */
    /* VRUN_DECODE: the unit (a compressed cluster or grain) that holds the
     * run's first byte, decoded whole whatever part of it is read; len 0
     * when the driver does not say. */
    uint64_t unit_off, unit_len;
};

struct vopen_opts {
    const char *root;        /* SOURCE directory (a real path), or NULL */
    bool allow_external;     /* files outside root may be opened */
    unsigned max_chain;      /* longest backing chain, counting the top */
};

/* One image file decoded by one driver. */
struct vlayer {
    const struct vfmt_driver *drv;
    struct vsrc *file;            /* the image file, owned by the layer */
    char *path;                   /* absolute path of the file */
    void *priv;                   /* driver state */
    uint64_t size;                /* virtual size in bytes (set by open) */
    uint64_t cache_owner;         /* vcache owner for this layer */
    char *backing_name;           /* backing reference as stored, or NULL */
    char *backing_fmt;            /* its format as stored, or NULL: probe */
    bool backing_raw_ok;          /* a backing file without magic is raw */
    const struct vopen_opts *opts;
    struct vimage *img;           /* the image this layer belongs to */
};

/* One internal snapshot as listed by a driver. */
struct vsnap {
    char *id;                 /* as stored ("1", "2", …) */
    char *name;               /* may be empty */
    uint64_t disk_size;       /* virtual size of the disk in the snapshot */
    uint64_t vm_state_size;   /* saved VM state, bytes */
    int64_t date_sec;         /* wall clock, seconds since the epoch */
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;   /* guest clock at the snapshot */
};

struct vfmt_driver {
    const char *name;   /* as qemu-img names the format: "qcow2", "raw", … */

    /* How sure the driver is that the file is its format, from its first
     * bytes (head, len <= 4096) and size: 0 not at all, 100 magic matched.
     * path is for extension checks only. */
    int (*probe)(const uint8_t *head, size_t len, uint64_t file_size,
                 const char *path);

    /* Reads and checks the metadata; sets l->size, l->priv, backing_name
     * and backing_fmt.  Returns 0, or a negative errno after recording why
     * with vlayer_problem().  Damage confined to part of the image is not a
     * failure: open succeeds and map returns VRUN_ERROR there. */
    int (*open)(struct vlayer *l);

    /* Describes [off, off + len) (inside l->size, len > 0) from off: fills
     * *run with its first run.  Returns 0 or a negative errno (only for
     * failures that are not about the image, such as ENOMEM; damage is a
     * VRUN_ERROR run). */
    int (*map)(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run);

    /* Optional: like map, but for allocation questions (SEEK_DATA/HOLE,
     * st_blocks) where finding holes may cost more than reads should pay,
     * e.g. asking the host file system about a raw file's holes.  Without
     * it map answers both. */
    int (*map_alloc)(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run);

    /* Produces the bytes of [off, off + len) that lie in one VRUN_DECODE run.
     * Returns 0 or a negative errno (-EIO for damage, recorded once). */
    int (*decode)(struct vlayer *l, void *buf, size_t len, uint64_t off);

    /* Adds the format's own facts to obj (version, cluster size, features). */
    void (*report)(struct vlayer *l, struct rep *obj);

    /* Internal snapshots (optional: NULL when the format has none). */
    size_t (*snapshot_count)(struct vlayer *l);
    const struct vsnap *(*snapshot_get)(struct vlayer *l, size_t i);
    /* Makes the layer show snapshot i instead of the current state (sets
     * l->size).  Called once, right after open. */
    int (*snapshot_select)(struct vlayer *l, size_t i);

    void (*close)(struct vlayer *l);

    /* Other files this image is made of (extents named by a descriptor),
     * as the image names them, so that SOURCE listings do not show them on
     * their own.  Optional.  head holds the file's first bytes (len <=
     * 4096; a driver may read more from path).  Returns how many names it
     * put in *names (a malloc'ed array of malloc'ed strings). */
    size_t (*related_files)(const char *path, const uint8_t *head, size_t len,
                            char ***names);
};

/* The registry (src/fmt/registry.c). */
extern const struct vfmt_driver *const vfmt_drivers[];
const struct vfmt_driver *vfmt_by_name(const char *name);
/* The best driver for a file, or NULL.  With raw_fallback a file that no
 * driver claims is raw (backing files, explicit single images); without it
 * raw needs one of the raw extensions (.img .raw .iso .dd). */
const struct vfmt_driver *vfmt_probe(const uint8_t *head, size_t len,
                                     uint64_t file_size, const char *path,
                                     bool raw_fallback);

/* For map_alloc: narrows a VRUN_DATA run to what its source holds — a
 * leading hole of the source (vsrc_extent) makes it a VRUN_ZERO run up to
 * the source's data, else it ends where the source's data does.  Other
 * runs are left alone.  Always returns 0. */
int vrun_refine_holes(struct vrun *run);

/* Records a problem of this layer once: it goes into info and is logged once
 * (the layer's file name is prefixed).  Thread-safe. */
void vlayer_problem(struct vlayer *l, const char *fmt, ...) VMFS_PRINTF(2, 3);

/* Opens a file that l refers to (an external data file, an extent) the way
 * backing files are resolved: relative to l's directory, refused outside
 * opts->root unless allow_external.  On success *out is an open source owned
 * by the caller and *resolved (malloc'ed, may be NULL) its absolute path.
 * Returns 0 or a negative errno after recording why with vlayer_problem(). */
int vlayer_open_related(struct vlayer *l, const char *name, const char *what,
                        struct vsrc **out, char **resolved);

/* Sets l->backing_name from several ways an image names its parent (a
 * relative path, an absolute one, a Windows path): the first that exists,
 * relative to l's directory; a Windows path ("C:\\dir\\x.vhdx") also
 * counts as its last component beside l.  When none exists the first is
 * kept, so that the problem names it. */
void vlayer_set_backing_candidates(struct vlayer *l, const char *const *names, size_t n);

#endif
