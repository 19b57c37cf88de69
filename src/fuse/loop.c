/* vmfs — the request loop: one reader at a time, hand-off only when there
 * is more to do.
 *
 * libfuse's multi-threaded loop keeps several threads blocked in read(2)
 * on /dev/fuse; the kernel wakes them in turn, so a lone reader's requests
 * hop from thread to thread and pay a cold wake-up each time.  Here one
 * thread, the leader, reads.  Having read a request it looks whether
 * another is already queued: if so, it passes the leadership to an idle
 * thread (starting one, up to max_threads) and serves its request; if not,
 * it serves the request and reads again itself — a lone reader is served
 * by one warm thread, many readers by many threads.
 *
 * A request that arrives while the leader serves a slow one (a cold read,
 * a guest appliance call) must not wait for it: while requests are being
 * served, a watchdog looks every few milliseconds whether work is queued
 * with nobody reading, and then wakes a follower.  It sleeps while the
 * daemon is idle.
 *
 * Threads: everything here runs on the threads it makes; vmfs_loop returns
 * when the session ends (unmount or signal). */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <time.h>

#include "fuse/fuse.h"

struct loop {
    struct fuse_session *se;
    int fd;
    unsigned max_threads;
    pthread_mutex_t lock;        /* guards everything below */
    pthread_cond_t wake;         /* followers wait here to lead */
    pthread_cond_t dog;          /* the watchdog waits here */
    bool dog_asleep;             /* ...without a timeout: wake it for work */
    bool reading;                /* a leader is reading, or about to */
    unsigned threads, busy;      /* started, serving a request */
    pthread_t *tids;
    bool stop;
    sem_t done;                  /* posted when the session ends */
};

static bool queued(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

static void *worker(void *arg);

/* Called locked: makes sure a follower will take the lead. */
static void pass_lead(struct loop *l)
{
    unsigned idle = l->threads - l->busy - (l->reading ? 1 : 0);
    if (idle == 0 && l->threads < l->max_threads) {
        if (pthread_create(&l->tids[l->threads], NULL, worker, l) == 0)
            l->threads++;
    }
    pthread_cond_signal(&l->wake);
}

static void end_session(struct loop *l)
{
    if (!l->stop) {
        l->stop = true;
        fuse_session_exit(l->se);
        pthread_cond_broadcast(&l->wake);
        pthread_cond_signal(&l->dog);
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
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (l->reading && !l->stop)
            pthread_cond_wait(&l->wake, &l->lock);
        if (l->stop)
            break;
        l->reading = true;
        pthread_mutex_unlock(&l->lock);
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
        int r = fuse_session_receive_buf(l->se, &buf);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        pthread_mutex_lock(&l->lock);
        l->reading = false;
        if (r == -EINTR || r == -EAGAIN || r == 0) {
            if (fuse_session_exited(l->se))
                end_session(l);
            continue;
        }
        if (r < 0) {               /* -ENODEV: unmounted */
            end_session(l);
            break;
        }
        /* The watchdog looks by itself while it is awake: waking it for
         * every request of a lone reader would cost two context
         * switches per request. */
        if (l->busy++ == 0 && l->dog_asleep)
            pthread_cond_signal(&l->dog);
        if (queued(l->fd))
            pass_lead(l);
        pthread_mutex_unlock(&l->lock);
        fuse_session_process_buf(l->se, &buf);
        pthread_mutex_lock(&l->lock);
        l->busy--;
    }
    pthread_mutex_unlock(&l->lock);
    pthread_cleanup_pop(1);
    return NULL;
}

/* Wakes a follower when requests wait with nobody reading them. */
static void *watchdog(void *arg)
{
    struct loop *l = arg;
    pthread_mutex_lock(&l->lock);
    while (!l->stop) {
        if (l->busy == 0) {
            l->dog_asleep = true;
            pthread_cond_wait(&l->dog, &l->lock);
            l->dog_asleep = false;
            continue;
        }
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_nsec += 3000000;
        if (t.tv_nsec >= 1000000000) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&l->dog, &l->lock, &t);
        if (l->stop || l->reading || l->busy == 0)
            continue;
        pthread_mutex_unlock(&l->lock);
        bool q = queued(l->fd);
        pthread_mutex_lock(&l->lock);
        if (q && !l->reading && !l->stop)
            pass_lead(l);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

int vmfs_loop(struct fuse_session *se, unsigned max_threads)
{
    struct loop l = {.se = se, .fd = fuse_session_fd(se)};
    l.max_threads = max_threads ? max_threads : 10;
    l.tids = xcalloc(l.max_threads, sizeof *l.tids);
    pthread_mutex_init(&l.lock, NULL);
    pthread_cond_init(&l.wake, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l.dog, &ca);
    pthread_condattr_destroy(&ca);
    sem_init(&l.done, 0, 0);

    /* Signals go to this thread, whose wait they interrupt. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t dog;
    bool have_dog = pthread_create(&dog, NULL, watchdog, &l) == 0;
    pthread_mutex_lock(&l.lock);
    if (pthread_create(&l.tids[0], NULL, worker, &l) == 0)
        l.threads = 1;
    pthread_mutex_unlock(&l.lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    int ret = l.threads ? 0 : -1;
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
    if (have_dog)
        pthread_join(dog, NULL);
    free(l.tids);
    sem_destroy(&l.done);
    pthread_cond_destroy(&l.wake);
    pthread_cond_destroy(&l.dog);
    pthread_mutex_destroy(&l.lock);
    return ret;
}
