/* vmfs — the tree: which files of SOURCE are images, the images opened for
 * them (re-opened when the file changes), their rendered reports, and the
 * names of snapshot files.
 *
 * Threads: every function may be called from any thread. */
#ifndef VMFS_TREE_H
#define VMFS_TREE_H

#include <sys/stat.h>

#include "vmfs/image.h"
#include "vmfs/vol.h"

struct rep;
struct timg;

struct tree_opts {
    char *source;             /* real path of SOURCE, or its NBD URI */
    bool single_file;         /* SOURCE is one image file (or a URI) */
    bool uri;                 /* SOURCE is an NBD URI */
    char *single_name;        /* the name the single image gets */
    struct vopen_opts open;   /* root = the SOURCE directory */
    unsigned max_open;        /* images kept open when unused */
    /* Adds facts of the layers above the tree (guest filesystems) to an
     * image's report, before its problems.  Optional. */
    void (*report_extra)(struct timg *t, struct rep *r);
    /* A number that changes whenever what report_extra adds may have
     * changed (for any image): reports made before are made again.
     * Optional. */
    uint64_t (*report_extra_version)(void);
};

/* An opened image (or snapshot view) with its reports, shared by users. */
struct timg {
    char *path;
    long snap;
    struct stat id;           /* the file as it was when opened */
    uint64_t gen;             /* unique per opening: a new one means new bytes */
    struct vimage *img;
    char *text, *json;        /* rendered lazily, under the tree lock */
    size_t rendered_problems; /* the image's problems when they were */
    uint64_t rendered_extra;  /* and report_extra_version */
    struct vlayout *layout;   /* partitions and LVM, scanned lazily */
    uint64_t *vol_alloc;      /* per volume: data bytes, UINT64_MAX unknown */
    pthread_mutex_t view_lock;/* guards layout and vol_alloc */
    unsigned refs;
    struct timg *prev, *next; /* the tree's list, most recently used first */
};

void tree_init(const struct tree_opts *o);
const struct tree_opts *tree_options(void);
/* Opens the first few images of SOURCE and counts their data on a thread
 * of its own, ahead of the first requests.  Call where no fork follows
 * (after daemonizing, or before mounting in the foreground); calls after
 * the first do nothing.  tree_shutdown stops and waits for it. */
void tree_prefetch(void);
void tree_shutdown(void);

/* True for nbd:// and nbd+unix:// URIs. */
bool tree_is_uri(const char *s);
/* stat(2) for an image location: a URI gets attributes of its own. */
int tree_stat(const char *path, struct stat *st);

/* True when dir/name is a file another image consists of (an extent named
 * by a VMDK descriptor in dir): it is not shown on its own. */
bool tree_is_hidden(const char *dir, const char *name);

/* True when the file at path (with stat st) is shown as an image. */
bool tree_is_image(const char *path, const struct stat *st);

/* The image at path (snap -1: current state), opened or re-opened when the
 * file changed since.  NULL when path is not an image (errno set).  The
 * caller releases it with tree_put(). */
struct timg *tree_get(const char *path, long snap);
void tree_put(struct timg *t);
/* Takes one more reference on a held image (released with tree_put). */
void tree_hold(struct timg *t);

/* The rendered info (json false) or info.json — the image's facts, its
 * layout, report_extra's, its problems: what vmfs-info prints too.  Made
 * again when reads have found new problems since, or report_extra's facts
 * have changed.  tree_report_size is its length; tree_report_read copies
 * up to size bytes from off into buf (the rendering may be replaced as
 * soon as the call returns) and returns how many. */
size_t tree_report_size(struct timg *t, bool json);
size_t tree_report_read(struct timg *t, bool json, void *buf, size_t size, uint64_t off);

/* The partitions and logical volumes of t's disk, scanned on first use;
 * their problems join the image's.  Valid while t is held. */
const struct vlayout *tree_layout(struct timg *t);

/* A readable view: t's whole disk (vol < 0) or one of its volumes. */
struct vview {
    struct timg *t;
    long vol;                 /* index in tree_layout(t)->vols, or -1 */
};
uint64_t vview_size(const struct vview *v);
int vview_read(const struct vview *v, void *buf, size_t len, uint64_t off);
/* vview_read that also tells where in the view the first unit lies that
 * the read decoded whole but read only part of (see vimage_read_unit). */
int vview_read_unit(const struct vview *v, void *buf, size_t len, uint64_t off,
                    struct vunit *unit);
/* Appends the plan of [off, off + len) (see vimage_plan). */
int vview_plan(const struct vview *v, uint64_t off, size_t len, struct vplan *plan);
int vview_extent(const struct vview *v, uint64_t off, bool *data, uint64_t *len);
uint64_t vview_allocated(const struct vview *v);

/* The file name of snapshot i: its name when that is unique and usable as
 * a file name, else its ID.  malloc'ed. */
char *tree_snapshot_name(struct vimage *img, size_t i);
/* The snapshot index with that file name, or -1. */
long tree_snapshot_find(struct vimage *img, const char *name);

#endif
