/* vmfs — the rest of a decoded unit, handed to the kernel's page cache.
 *
 * A small read of a compressed disk decodes the whole cluster or grain it
 * falls in (64 KiB by default) and uses a page of it.  A reader that reads
 * at random (a filesystem walking its metadata, fio) soon asks for the
 * neighbouring pages, and each would cost a request and a lookup in the
 * decoded-cluster cache, or a second decode once the cache has moved on.
 * Instead, after the reply, the rest of the unit goes into the page cache
 * of the file (FUSE's notify-store), where the kernel serves it without
 * asking.  The pages belong to the kernel and go when it needs the memory:
 * the daemon's memory stays within its cache budget.
 *
 * The bytes are read again through the view, the normal way (the unit is
 * still in the decoded-cluster cache, so this is a copy), so what is stored
 * is what a read would return, whatever the backing chain holds.
 *
 * Stores run on a thread of their own: the kernel locks each page it
 * fills, and a page may be locked by a read request still waiting for a
 * worker, which must not be a worker blocked here.  A job that finds the
 * queue full is dropped; its bytes stay readable the normal way. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fuse/fuse.h"

#define FILL_QUEUE 32
#define FILL_MAX ((uint64_t)2 << 20)  /* larger units are left to reads */

static struct {
    pthread_mutex_t lock;    /* guards everything below */
    pthread_cond_t wake;
    struct fuse_session *se;
    uint64_t page;           /* the kernel's page size */
    struct vmfs_fill_job q[FILL_QUEUE];
    unsigned head, count;
    bool running, stop;
    pthread_t tid;
} fl = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static void store(struct fuse_session *se, const struct vmfs_fill_job *j, void **buf,
                  size_t *cap)
{
    if (*cap < j->len) {
        free(*buf);
        *buf = xmalloc((size_t)j->len);
        *cap = (size_t)j->len;
    }
    if (vview_read(&j->view, *buf, (size_t)j->len, j->off) < 0)
        return;
    /* An image replaced since: its new opening must not see these bytes. */
    if (!vmfs_ops_serving(j->ino, j->view.t->gen))
        return;
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)j->len);
    bv.buf[0].mem = *buf;
    int r = fuse_lowlevel_notify_store(se, j->ino, (off_t)j->off, &bv, 0);
    if (r < 0 && r != -ENOENT)
        vmfs_log(VMFS_LOG_DEBUG, "page cache not filled at %llu (+%llu): %s",
                 (unsigned long long)j->off, (unsigned long long)j->len, strerror(-r));
}

static void *fill_thread(void *arg)
{
    (void)arg;
    void *buf = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&fl.lock);
    for (;;) {
        while (!fl.stop && fl.count == 0)
            pthread_cond_wait(&fl.wake, &fl.lock);
        if (fl.stop)
            break;
        struct vmfs_fill_job j = fl.q[fl.head];
        fl.head = (fl.head + 1) % FILL_QUEUE;
        fl.count--;
        struct fuse_session *se = fl.se;
        pthread_mutex_unlock(&fl.lock);
        store(se, &j, &buf, &cap);
        tree_put(j.view.t);
        pthread_mutex_lock(&fl.lock);
    }
    pthread_mutex_unlock(&fl.lock);
    free(buf);
    return NULL;
}

void vmfs_fill_start(struct fuse_session *se)
{
    long page = sysconf(_SC_PAGESIZE);
    pthread_mutex_lock(&fl.lock);
    fl.page = page > 0 && !(page & (page - 1)) ? (uint64_t)page : 4096;
    fl.se = se;
    pthread_mutex_unlock(&fl.lock);
}

bool vmfs_fill_stop(void)
{
    pthread_mutex_lock(&fl.lock);
    bool running = fl.running;
    fl.stop = true;
    pthread_cond_signal(&fl.wake);
    pthread_mutex_unlock(&fl.lock);
    if (running) {
        /* A store waits for a page that a read request still holds.  Once
         * the mount is gone the kernel ends every request, but a daemon
         * told to stop by a signal may still be mounted, with a request no
         * worker will serve: then the thread is left behind. */
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_sec += 2;
        if (pthread_timedjoin_np(fl.tid, NULL, &t) != 0) {
            vmfs_log(VMFS_LOG_DEBUG, "a page cache store is still waiting at exit");
            return false;
        }
    }
    pthread_mutex_lock(&fl.lock);
    while (fl.count) {
        tree_put(fl.q[fl.head].view.t);
        fl.head = (fl.head + 1) % FILL_QUEUE;
        fl.count--;
    }
    fl.running = false;
    pthread_mutex_unlock(&fl.lock);
    return true;
}

bool vmfs_fill_prepare(struct vmfs_fill_job *j, fuse_ino_t ino, const struct vview *v,
                       const struct vunit *unit, uint64_t off, size_t size)
{
    if (unit->len == 0 || unit->len > FILL_MAX)
        return false;
    /* Whole pages of the unit: the kernel takes a page as read only when
     * it is filled from its start to its end (or to the end of the file). */
    pthread_mutex_lock(&fl.lock);
    uint64_t page = fl.page;
    pthread_mutex_unlock(&fl.lock);
    uint64_t vsize = vview_size(v);
    uint64_t end = unit->off + unit->len;
    if (page == 0 || end > vsize)
        return false;                /* not started, or a unit past the end */
    uint64_t start = (unit->off + page - 1) & ~(page - 1);
    if (end < vsize)
        end &= ~(page - 1);
    if (start >= end || (start >= off && end <= off + size))
        return false;                /* nothing beyond what was read */
    *j = (struct vmfs_fill_job){ino, *v, start, end - start};
    tree_hold(v->t);
    return true;
}

void vmfs_fill_queue(struct vmfs_fill_job *j)
{
    pthread_mutex_lock(&fl.lock);
    /* The thread starts with the first job: a mount without compressed
     * disks never has it. */
    if (fl.se && !fl.running && !fl.stop)
        fl.running = pthread_create(&fl.tid, NULL, fill_thread, NULL) == 0;
    bool queued = fl.running && !fl.stop && fl.count < FILL_QUEUE;
    if (queued) {
        fl.q[(fl.head + fl.count) % FILL_QUEUE] = *j;
        fl.count++;
        pthread_cond_signal(&fl.wake);
    }
    pthread_mutex_unlock(&fl.lock);
    if (!queued)
        tree_put(j->view.t);
}
