/* vmfs — the request loop: a thread is always reading, and threads are
 * started only when none is.
 *
 * Idle threads block in read(2) on /dev/fuse and the kernel hands each
 * request to one of them.  A thread that takes a request and leaves nobody
 * reading starts another (up to max_threads), so a slow request (a cold
 * read, a guest appliance starting) never holds up the ones behind it, and
 * a lone sequential reader is served by two threads taking turns.  Nothing
 * here runs per request beyond the read, a counter under a lock, and the
 * reply: no polling, no hand-off between threads.
 *
 * A thread waiting for a guest appliance (guest_set_wait_hooks) does not
 * count against max_threads, so many requests for a starting appliance do
 * not stall reads of the flat files.
 *
 * Threads: everything here runs on the threads it makes; vmfs_loop returns
 * when the session ends (unmount or signal). */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <time.h>

#include "fuse/fuse.h"
#include "vmfs/guest.h"

#define EXTRA_WAITING 64u        /* threads beyond max_threads for waiters */

struct loop {
    struct fuse_session *se;
    unsigned max_threads;
    pthread_mutex_t lock;        /* guards everything below */
    unsigned threads;            /* started */
    unsigned readers;            /* in read(2), or about to be */
    unsigned waiting;            /* serving, but waiting for an appliance */
    pthread_t *tids;             /* max_threads + EXTRA_WAITING */
    bool stop;
    sem_t done;                  /* posted when the session ends */
};

static void *worker(void *arg);

/* Called locked when nobody reads: starts a thread that will, if allowed. */
static void add_reader(struct loop *l)
{
    if (l->stop || l->readers > 0 || l->threads >= l->max_threads + l->waiting ||
        l->threads >= l->max_threads + EXTRA_WAITING)
        return;
    if (pthread_create(&l->tids[l->threads], NULL, worker, l) == 0) {
        l->threads++;
        l->readers++;                /* counted now: no second start */
    }
}

static void end_session(struct loop *l)
{
    if (!l->stop) {
        l->stop = true;
        fuse_session_exit(l->se);
        sem_post(&l->done);
    }
}

static void free_buf(void *p) { free(((struct fuse_buf *)p)->mem); }

static void *worker(void *arg)
{
    struct loop *l = arg;
    struct fuse_buf buf = {.mem = NULL};
    /* Cancelled only while blocked reading, never while serving. */
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    pthread_cleanup_push(free_buf, &buf);
    /* add_reader counted this thread as a reader already. */
    for (;;) {
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
        int r = fuse_session_receive_buf(l->se, &buf);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        pthread_mutex_lock(&l->lock);
        l->readers--;
        if (r == -EINTR || r == -EAGAIN || r == 0) {
            if (fuse_session_exited(l->se))
                end_session(l);
        } else if (r < 0) {          /* -ENODEV: unmounted */
            end_session(l);
        } else {
            add_reader(l);
            pthread_mutex_unlock(&l->lock);
            fuse_session_process_buf(l->se, &buf);
            pthread_mutex_lock(&l->lock);
        }
        bool stop = l->stop;
        if (!stop)
            l->readers++;
        pthread_mutex_unlock(&l->lock);
        if (stop)
            break;
    }
    pthread_cleanup_pop(1);
    return NULL;
}

/* A thread waiting for a guest appliance lets another read meanwhile. */
static void wait_begin(void *arg)
{
    struct loop *l = arg;
    pthread_mutex_lock(&l->lock);
    l->waiting++;
    add_reader(l);
    pthread_mutex_unlock(&l->lock);
}

static void wait_end(void *arg)
{
    struct loop *l = arg;
    pthread_mutex_lock(&l->lock);
    l->waiting--;
    pthread_mutex_unlock(&l->lock);
}

int vmfs_loop(struct fuse_session *se, unsigned max_threads, void (*started)(void *),
              void *arg)
{
    struct loop l = {.se = se};
    l.max_threads = max_threads ? max_threads : 10;
    l.tids = xcalloc(l.max_threads + EXTRA_WAITING, sizeof *l.tids);
    pthread_mutex_init(&l.lock, NULL);
    sem_init(&l.done, 0, 0);
    static struct guest_wait_hooks hooks = {wait_begin, wait_end, NULL};
    hooks.arg = &l;
    guest_set_wait_hooks(&hooks);

    /* Signals go to this thread, whose wait they interrupt. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_mutex_lock(&l.lock);
    add_reader(&l);
    int ret = l.threads ? 0 : -1;   /* read here: the first worker may add more */
    pthread_mutex_unlock(&l.lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (ret == 0 && started)
        started(arg);
    /* A signal may land on any thread (libraries start their own): look
     * at the session's state now and then, not only when woken. */
    while (ret == 0 && !fuse_session_exited(se)) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 200000000;
        if (t.tv_nsec >= 1000000000) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000;
        }
        if (sem_timedwait(&l.done, &t) == 0)
            break;
    }
    pthread_mutex_lock(&l.lock);
    end_session(&l);
    unsigned n = l.threads;
    pthread_mutex_unlock(&l.lock);
    /* A reader blocked in read(2) on a live session only returns when the
     * kernel has something: cancel the ones still waiting. */
    for (unsigned i = 0; i < n; i++)
        pthread_cancel(l.tids[i]);
    for (unsigned i = 0; i < n; i++)
        pthread_join(l.tids[i], NULL);
    guest_set_wait_hooks(NULL);
    free(l.tids);
    sem_destroy(&l.done);
    pthread_mutex_destroy(&l.lock);
    return ret;
}
