/* vmfs — guest filesystems, inside: appliances, their jobs, the caches and
 * the direct data path.
 *
 * An appliance (struct app) serves one disk view: its own NBD server feeds
 * a libguestfs handle that only its worker thread touches.  Callers (FUSE
 * threads) look in the caches first; on a miss they queue a job and wait
 * for it, never longer than the appliance is alive: a watchdog kills an
 * appliance whose call runs past its deadline, and waiters give up at once.
 *
 * Lock order: the registry lock, then an app's lock, then a cache lock. */
#ifndef VMFS_GUEST_INT_H
#define VMFS_GUEST_INT_H

#include <guestfs.h>
#include <pthread.h>
#include <sys/types.h>

#include "vmfs/guest.h"
#include "vmfs/lazylib.h"
#include "vmfs/tree.h"

/* ---- libguestfs, loaded on first use (lazylib.h) ---- */

/* Loads libguestfs: true, or false with *why (static text). */
bool g_load_libguestfs(const char **why);

#if defined(__SANITIZE_ADDRESS__)
/* AddressSanitizer resolves the functions it intercepts (libtirpc's XDR
 * functions among them) when the program starts: a libguestfs loaded
 * later would call them through null pointers.  Sanitizer builds call
 * libguestfs directly; the link (CORE_LIBS) keeps it only where used. */
#define GFS_LINKED 1
#else

#define GFS_API(X) \
    X(guestfs_add_drive_opts) X(guestfs_blockdev_getsize64) X(guestfs_blockdev_setro) \
    X(guestfs_close) X(guestfs_create_flags) X(guestfs_debug) \
    X(guestfs_free_dirent_list) X(guestfs_free_statns) X(guestfs_free_statns_list) \
    X(guestfs_free_xattr_list) X(guestfs_get_backend_settings) X(guestfs_get_pid) \
    X(guestfs_is_ready) X(guestfs_last_errno) X(guestfs_last_error) X(guestfs_launch) \
    X(guestfs_lgetxattrs) X(guestfs_ls0) X(guestfs_lstatns) X(guestfs_lstatnslist) \
    X(guestfs_lxattrlist) X(guestfs_mkmountpoint) X(guestfs_mount_options) \
    X(guestfs_mount_vfs) X(guestfs_pread) X(guestfs_pread_device) X(guestfs_readdir) \
    X(guestfs_readlink) X(guestfs_readlinklist) X(guestfs_set_autosync) \
    X(guestfs_set_backend) X(guestfs_set_backend_settings) X(guestfs_set_error_handler) \
    X(guestfs_set_tmpdir) X(guestfs_vfs_label) X(guestfs_vfs_type) X(guestfs_vfs_uuid) \
    X(guestfs_vg_activate_all)
struct gfs_api {
    GFS_API(LAZYLIB_SLOT)
};
extern struct gfs_api gfs_api;
#define guestfs_add_drive_opts gfs_api.guestfs_add_drive_opts
#define guestfs_blockdev_getsize64 gfs_api.guestfs_blockdev_getsize64
#define guestfs_blockdev_setro gfs_api.guestfs_blockdev_setro
#define guestfs_close gfs_api.guestfs_close
#define guestfs_create_flags gfs_api.guestfs_create_flags
#define guestfs_debug gfs_api.guestfs_debug
#define guestfs_free_dirent_list gfs_api.guestfs_free_dirent_list
#define guestfs_free_statns gfs_api.guestfs_free_statns
#define guestfs_free_statns_list gfs_api.guestfs_free_statns_list
#define guestfs_free_xattr_list gfs_api.guestfs_free_xattr_list
#define guestfs_get_backend_settings gfs_api.guestfs_get_backend_settings
#define guestfs_get_pid gfs_api.guestfs_get_pid
#define guestfs_is_ready gfs_api.guestfs_is_ready
#define guestfs_last_errno gfs_api.guestfs_last_errno
#define guestfs_last_error gfs_api.guestfs_last_error
#define guestfs_launch gfs_api.guestfs_launch
#define guestfs_lgetxattrs gfs_api.guestfs_lgetxattrs
#define guestfs_ls0 gfs_api.guestfs_ls0
#define guestfs_lstatns gfs_api.guestfs_lstatns
#define guestfs_lstatnslist gfs_api.guestfs_lstatnslist
#define guestfs_lxattrlist gfs_api.guestfs_lxattrlist
#define guestfs_mkmountpoint gfs_api.guestfs_mkmountpoint
#define guestfs_mount_options gfs_api.guestfs_mount_options
#define guestfs_mount_vfs gfs_api.guestfs_mount_vfs
#define guestfs_pread gfs_api.guestfs_pread
#define guestfs_pread_device gfs_api.guestfs_pread_device
#define guestfs_readdir gfs_api.guestfs_readdir
#define guestfs_readlink gfs_api.guestfs_readlink
#define guestfs_readlinklist gfs_api.guestfs_readlinklist
#define guestfs_set_autosync gfs_api.guestfs_set_autosync
#define guestfs_set_backend gfs_api.guestfs_set_backend
#define guestfs_set_backend_settings gfs_api.guestfs_set_backend_settings
#define guestfs_set_error_handler gfs_api.guestfs_set_error_handler
#define guestfs_set_tmpdir gfs_api.guestfs_set_tmpdir
#define guestfs_vfs_label gfs_api.guestfs_vfs_label
#define guestfs_vfs_type gfs_api.guestfs_vfs_type
#define guestfs_vfs_uuid gfs_api.guestfs_vfs_uuid
#define guestfs_vg_activate_all gfs_api.guestfs_vg_activate_all
#endif

/* What a guest (or a misbehaving appliance) can make vmfs hold. */
#define G_MAX_PATH 4096               /* bytes of a path inside a filesystem */
#define G_MAX_NAME 255                /* bytes of one name */
#define G_MAX_ENTRIES (1u << 20)      /* entries of one directory */
#define G_MAX_LINK 4095               /* bytes of a symlink target */
#define G_MAX_XATTRS 1024             /* attributes of one file */
#define G_MAX_XATTR_VALUE 65536       /* bytes of one attribute */
#define G_MAX_EXTENTS 65536           /* extents kept for one file */
#define G_CHUNK (2u << 20)            /* bytes per guestfs_pread */
#define G_RECENT_DIRS 32              /* listed directories remembered per
                                         filesystem, to map files in batches */

/* ---- the caches (cache.c) ---- */

enum gc_kind { GC_STAT, GC_DIR, GC_LINK, GC_XATTR, GC_MAP, GC_DATA };

struct gc_key {
    uint64_t app;
    uint32_t fs;
    enum gc_kind kind;
    const char *path;
    uint64_t n;                       /* GC_DATA: chunk index */
};

struct gc_ent;

/* Sets the budgets (bytes) of metadata and of file data. */
void gc_init(size_t meta_budget, size_t data_budget);
/* Stores val (bytes of memory, freed with free_fn) under k, replacing what
 * was there.  The cache owns val from now on. */
void gc_put(const struct gc_key *k, void *val, size_t bytes, void (*free_fn)(void *));
/* The value under k or NULL; *ref must be released with gc_release. */
void *gc_get(const struct gc_key *k, struct gc_ent **ref);
void gc_release(struct gc_ent *ref);
bool gc_has(const struct gc_key *k);
/* Forgets everything of one appliance. */
void gc_drop_app(uint64_t app);
void gc_shutdown(void);

/* Cached values. */
struct gstat {
    int err;                          /* 0 or -ENOENT */
    struct stat st;
};

struct gdir {
    unsigned refs;                    /* shared by the cache and a job */
    struct guest_dirent *ents;        /* sorted by name (strcmp) */
    size_t n;
};

struct gxattr {
    char *name;
    void *val;
    size_t len;
};
struct gxattrs {
    struct gxattr *v;
    size_t n;
};

struct gext {
    uint64_t lo, po, len;             /* file offset, device offset, bytes */
    bool zero;                        /* allocated but unwritten: zeros */
};
struct gmap {
    bool direct;                      /* false: read through the appliance */
    size_t n;
    struct gext *e;                   /* sorted by lo, not overlapping */
};

struct gchunk {
    size_t len;
    uint8_t data[];
};

struct gdir *gdir_ref(struct gdir *d);
void gdir_free(void *p);              /* drops one reference */
void gxattrs_free(void *p);
void gmap_free(void *p);
const struct guest_dirent *gdir_find(const struct gdir *d, const char *name);

/* ---- appliances and jobs (appliance.c) ---- */

enum gfs_state { GFS_UNTRIED, GFS_MOUNTED, GFS_FAILED };

/* One filesystem of a view. */
struct gfs {
    char *name;                       /* "disk", "p1", "lvm/VG/LV" */
    char *dev;                        /* its device in the appliance, or NULL */
    long vol;                         /* layout index; -1: the whole disk */
    char *hint;                       /* type from the signature scan, or NULL */
    /* Written by the worker under the app's lock. */
    enum gfs_state state;
    char mp[24];                      /* mount point in the appliance */
    char *type, *label, *uuid;        /* from the appliance, once asked */
    char *options;                    /* the mount options that worked */
    char *reason;                     /* why it is not mounted */
    bool direct;                      /* file data may be read from the view */
    bool facts_done;
    /* Worker only. */
    bool direct_checked;
    char *recent[G_RECENT_DIRS];      /* directories listed last (a ring) */
    unsigned recent_next;
};

enum app_state { APP_STARTING, APP_READY, APP_DEAD };

enum job_kind { J_MOUNT, J_STAT, J_READDIR, J_LINKS, J_XATTRS, J_MAP, J_PREAD, J_FACTS };

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct job {
    enum job_kind kind;
    size_t fs;
    char *path;
    uint64_t off;
    size_t len;
    bool background;
    enum job_state state;
    unsigned refs;                    /* the submitter and the queue */
    int err;
    /* results, owned by the job until taken */
    struct stat st;
    struct gdir *dir;
    char *target;
    struct gxattrs *xattrs;
    struct gchunk *chunk;
    struct job *next;
};

struct app {
    uint64_t id;                      /* keys this appliance's cache entries */
    struct timg *t;                   /* held for the appliance's life */
    char *dir;                        /* private directory (socket, tmpdir) */
    struct gfs *fs;
    size_t nfs;

    pthread_mutex_t lock;             /* guards what follows */
    pthread_cond_t cond;              /* job done, state changed */
    enum app_state state;
    bool retryable;                   /* dead before its queued jobs ran */
    char *error;                      /* why it died */
    struct job *fg, *fg_tail, *bg, *bg_tail;
    unsigned refs, users;
    double last_used;                 /* monotonic seconds */
    double deadline;                  /* current call must end by then; 0 idle */
    bool launching;
    bool kill_sent;
    pid_t pid;                        /* the hypervisor, once launched */
    bool tcg;                         /* running without KVM */
    double launch_secs;
    bool facts_queued;
    double last_fg;                   /* when the last foreground job ended */

    /* Worker only. */
    guestfs_h *g;
    struct nbd_server *nbd;
    int debug_sh;                     /* -1 unknown, 0 no, 1 guestfs_debug sh works */

    struct app *next;                 /* the registry */
};

double g_now(void);
const struct guest_opts *g_opts(void);
/* The running appliance of t's view (a reference: g_app_unref), or NULL. */
struct app *g_find_app(struct timg *t);
void g_app_unref(struct app *a);
/* Why the appliance of t's view failed to start lately (in buf), or NULL. */
const char *g_recent_failure(struct timg *t, char *buf, size_t size);
/* Takes an appliance for t's view, creating (not waiting for) it.  0 or a
 * negative errno; release with app_put. */
int app_get(struct timg *t, struct app **out);
void app_put(struct app *a);
/* Index of filesystem name in a, or -1. */
long app_fs_index(const struct app *a, const char *name);
/* Runs a job on a's worker and waits (telling the wait hooks): 0 or a
 * negative errno; -EAGAIN when the appliance died before or under the job
 * (try a new one), -EIO when it was killed for hanging. */
int app_run(struct app *a, struct job *j);
/* Queues a job nobody waits for (read-ahead, facts). */
void app_queue_background(struct app *a, struct job *j);
struct job *job_new(enum job_kind kind, size_t fs, const char *path);
void job_put(struct job *j);

/* Worker side: a guestfs call is about to run / has returned. */
void call_begin(struct app *a);
void call_end(struct app *a);

/* ---- the worker's guestfs work (calls.c) ---- */

bool g_name_ok(const char *name);
bool g_statns_to_stat(const struct guestfs_statns *s, struct stat *st);

void w_run_job(struct app *a, struct job *j);
/* Mounts fs (once): 0, -ENODEV when it cannot be mounted, -EIO. */
int w_mount(struct app *a, size_t fs);
/* Error of the last failed guestfs call as a negative errno. */
int w_errno(struct app *a);
/* A reason for not mounting from the signature scan alone, or NULL. */
const char *g_static_reason(const struct gfs *f);

/* ---- the direct data path (extents.c) ---- */

/* Parses filefrag -v output for names (in order) into maps (NULL where a
 * file could not be mapped).  dev_size bounds every extent. */
void g_parse_filefrag(const char *out, char *const *names, size_t n,
                      const uint64_t *sizes, uint64_t dev_size, struct gmap **maps);
/* Reads [off, off + len) of a mapped file of size fsize from view v. */
int g_read_mapped(const struct vview *v, const struct gmap *m, uint64_t fsize, void *buf,
                  size_t len, uint64_t off);
/* Quotes s for the shell (single quotes).  malloc'ed. */
char *g_shell_quote(const char *s);

/* ---- facts (facts.c) ---- */

/* What the signature scan says about filesystem name of t: type, label,
 * uuid (malloc'ed or NULL). */
void g_static_facts(struct timg *t, const char *name, char **type, char **label, char **uuid);
/* Whether filesystem name of t exists (-ENOENT if not) and, from the
 * signature scan alone, cannot be mounted (1) or needs an appliance (0). */
int g_static_state(struct timg *t, const char *name);
/* Remembers what an appliance learnt about filesystem f of its view. */
void g_facts_store(const struct app *a, const struct gfs *f);
/* What guest_report shows has changed (guest_report_version). */
void g_facts_changed(void);
void g_facts_shutdown(void);

#endif
