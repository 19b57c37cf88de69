/* vmfs — the kernel read-ahead window of the mount, chosen per opened disk.
 *
 * The window lives in sysfs (/sys/class/bdi/MAJ:MIN/read_ahead_kb, root
 * only) and the kernel copies it into each file as the file is opened, after
 * vmfs has answered the OPEN.  So vmfs sets it while it answers: a deep
 * window for a disk that is mostly data, where a sequential reader then has
 * several requests in flight (compressed clusters decode on several threads
 * at once); a shallow one for a disk that is mostly holes.  There a reader
 * that skips holes (cp --sparse, SEEK_DATA) reads one data extent after the
 * other, and everything read ahead past the end of an extent is zeros that
 * the kernel copies for nobody: 4 MiB of them for every extent.
 *
 * Two disks opened at the same instant may race for the value; the loser
 * only reads ahead by the other's window. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fuse/fuse.h"
#include "vmfs/common.h"

static pthread_mutex_t ra_lock = PTHREAD_MUTEX_INITIALIZER;
static int ra_fd = -1;             /* the sysfs file, once the mount answers */
static size_t ra_cur;              /* what it holds */
static size_t ra_deep, ra_shallow;

static void ra_write(size_t bytes)
{
    char val[32];
    int n = snprintf(val, sizeof val, "%zu\n", bytes >> 10);
    if (pwrite(ra_fd, val, (size_t)n, 0) == n)
        ra_cur = bytes;
    else
        vmfs_log(VMFS_LOG_DEBUG, "read-ahead not set to %zu KiB: %s", bytes >> 10,
                 strerror(errno));
}

static void *ra_thread(void *arg)
{
    char *mountpoint = arg;
    struct stat mst, pst;
    char *parent = xasprintf("%s/..", mountpoint);
    if (stat(mountpoint, &mst) == 0 && stat(parent, &pst) == 0 && mst.st_dev != pst.st_dev) {
        char *path = xasprintf("/sys/class/bdi/%u:%u/read_ahead_kb", major(mst.st_dev),
                               minor(mst.st_dev));
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            vmfs_log(VMFS_LOG_DEBUG, "read-ahead of %s left as the kernel set it: %s: %s",
                     mountpoint, path, strerror(errno));
        } else {
            pthread_mutex_lock(&ra_lock);
            ra_fd = fd;
            ra_write(ra_deep);
            size_t deep = ra_deep, shallow = ra_shallow;
            pthread_mutex_unlock(&ra_lock);
            vmfs_log(VMFS_LOG_DEBUG, "read-ahead of %s: %zu KiB, %zu KiB for disks mostly holes",
                     mountpoint, deep >> 10, shallow >> 10);
        }
        free(path);
    }
    free(parent);
    free(mountpoint);
    return NULL;
}

void vmfs_ra_start(const char *mountpoint, size_t deep, size_t shallow)
{
    if (!deep)
        return;
    pthread_mutex_lock(&ra_lock);
    ra_deep = deep;
    ra_shallow = shallow ? shallow : deep;
    pthread_mutex_unlock(&ra_lock);
    /* The mount answers only once the session loop runs: wait for it on a
     * thread of its own. */
    char *arg = xstrdup(mountpoint);
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, ra_thread, arg) != 0)
        free(arg);
    pthread_attr_destroy(&a);
}

void vmfs_ra_open(const struct vview *v)
{
    pthread_mutex_lock(&ra_lock);
    bool fixed = ra_fd < 0 || ra_shallow == ra_deep;
    pthread_mutex_unlock(&ra_lock);
    if (fixed)                /* not root, or a window set by hand */
        return;
    bool holes = vview_allocated(v) < vview_size(v) / 2;
    pthread_mutex_lock(&ra_lock);
    size_t want = holes ? ra_shallow : ra_deep;
    if (ra_fd >= 0 && ra_cur != want)
        ra_write(want);
    pthread_mutex_unlock(&ra_lock);
}

void vmfs_ra_stop(void)
{
    pthread_mutex_lock(&ra_lock);
    if (ra_fd >= 0)
        close(ra_fd);
    ra_fd = -1;
    pthread_mutex_unlock(&ra_lock);
}
