/* vmfs — guest filesystems: the trees under NAME.d/fs/.
 *
 * One libguestfs appliance per disk view (an image's current state or one
 * snapshot), started on first access to one of its fs/ directories.  The
 * appliance reads the decoded disk over vmfs's own NBD server (nbd.h), so
 * it never opens the source file; it mounts every filesystem of the view
 * read-only without replaying journals, and is stopped after an idle
 * timeout.  A crashed or hung appliance is detected and restarted on the
 * next access; a request under which an appliance dies goes once to a new
 * one (everything only reads), and only requests swallowed by an
 * appliance killed for hanging fail with EIO.
 *
 * Filesystems are named by their block view: "disk" (no partition table),
 * "p1" … "pN", "lvm/VG/LV" — the same names as the flat files in NAME.d/.
 * Paths inside a filesystem are absolute ("/", "/etc/fstab").
 *
 * Threads: every function may be called from any FUSE worker thread; calls
 * into one appliance are serialized inside, and a slow appliance start
 * blocks only the requests that need that appliance (and, through
 * guest_set_wait_hooks, lets the caller's loop serve others meanwhile). */
#ifndef VMFS_GUEST_H
#define VMFS_GUEST_H

#include <sys/stat.h>

#include "vmfs/tree.h"

struct rep;

/* Zero means the default; the environment variables named override a
 * default (tests use them), never an explicit value. */
struct guest_opts {
    unsigned idle_timeout;     /* seconds before an idle appliance stops (60;
                                  VMFS_GUEST_IDLE_TIMEOUT) */
    unsigned max_appliances;   /* running at once; the idlest stops first (4;
                                  VMFS_GUEST_MAX_APPLIANCES) */
    const char *runtime_dir;   /* where NBD sockets go (private, 0700); NULL: a
                                  new directory in $XDG_RUNTIME_DIR or /tmp */
    unsigned call_timeout;     /* seconds one appliance call may take before
                                  the appliance is killed (120;
                                  VMFS_GUEST_CALL_TIMEOUT) */
    unsigned launch_timeout;   /* seconds a launch may take (600;
                                  VMFS_GUEST_LAUNCH_TIMEOUT) */
    unsigned kvm_timeout;      /* seconds a launch with KVM may take before
                                  software emulation is tried (60;
                                  VMFS_GUEST_KVM_TIMEOUT) */
    size_t meta_cache;         /* bytes of cached attributes and listings (32 MiB) */
    size_t data_cache;         /* bytes of cached file data (64 MiB) */
};

void guest_init(const struct guest_opts *o);
void guest_shutdown(void);

/* Called around each wait of a calling thread for an appliance (its
 * start, the jobs queued before this one, the call itself): begin before
 * the thread blocks, end once it goes on, from the same thread.  The FUSE
 * request loop uses them to keep reading requests on other threads while
 * some wait here, so that reads needing no appliance (flat files,
 * volumes) are not held up behind a starting one.  hooks must stay valid
 * until replaced; NULL removes them.  Neither hook may call into guest.h. */
struct guest_wait_hooks {
    void (*begin)(void *arg);
    void (*end)(void *arg);
    void *arg;
};
void guest_set_wait_hooks(const struct guest_wait_hooks *hooks);

/* A directory entry with its attributes (readdirplus). */
struct guest_dirent {
    char *name;
    struct stat st;
};

/* Attributes of path in filesystem fs of t's view: 0 or a negative errno
 * (-ENOENT, -EIO when the appliance failed).  A filesystem that cannot be
 * mounted is an empty directory: "/" is a directory, readdir lists
 * nothing, and guest_report says why. */
int guest_stat(struct timg *t, const char *fs, const char *path, struct stat *st);
/* The entries of a directory, with attributes, in one call. */
int guest_readdir(struct timg *t, const char *fs, const char *path,
                  struct guest_dirent **ents, size_t *n);
void guest_dirents_free(struct guest_dirent *ents, size_t n);
/* Reads up to len bytes at off: the count read (0 at the end) or a
 * negative errno. */
ssize_t guest_read(struct timg *t, const char *fs, const char *path, void *buf,
                   size_t len, uint64_t off);
int guest_readlink(struct timg *t, const char *fs, const char *path, char **target);
/* Extended attributes: list (NUL-separated names) and get. */
ssize_t guest_listxattr(struct timg *t, const char *fs, const char *path, char *buf, size_t size);
ssize_t guest_getxattr(struct timg *t, const char *fs, const char *path, const char *name,
                       void *buf, size_t size);

/* Adds "filesystems": what each filesystem of the view is (type, label,
 * UUID) and whether it mounted (with the reason when not) — facts known
 * without starting an appliance come from the layout; more once one ran. */
void guest_report(struct timg *t, struct rep *root);
/* Goes up whenever what guest_report shows changes: an appliance found
 * filesystems, mounted one or failed. */
uint64_t guest_report_version(void);

#endif
