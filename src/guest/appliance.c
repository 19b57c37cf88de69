/* vmfs — libguestfs appliances: one per disk view, started on demand,
 * stopped when idle, killed when hung.
 *
 * Each appliance has a worker thread that owns its libguestfs handle and
 * runs jobs one at a time (foreground before read-ahead).  A reaper thread
 * wakes every second: it kills an appliance whose current call has run
 * past its deadline (the launch included), stops appliances idle for
 * longer than the idle timeout, and keeps at most max_appliances running.
 * Callers wait for their job or for the appliance to die, whichever comes
 * first, so a hung appliance costs its callers one call timeout, never a
 * hung mount.
 *
 * KVM first, then software emulation: when an appliance does not start
 * with KVM (qemu aborts, or the launch runs past the KVM launch timeout),
 * it is launched again with force_tcg, and every later appliance goes
 * straight to TCG.  LIBGUESTFS_BACKEND_SETTINGS=force_tcg skips KVM. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "guest/guest_int.h"
#include "vmfs/nbd.h"

#define DEFAULT_IDLE 60
#define DEFAULT_MAX 4
#define DEFAULT_CALL_TIMEOUT 120
#define DEFAULT_LAUNCH_TIMEOUT 600
#define DEFAULT_KVM_TIMEOUT 60
#define FAILED_BACKOFF 30.0          /* seconds a failed launch is not retried */
#define MAX_FAILED 32

#ifdef GFS_LINKED
bool g_load_libguestfs(const char **why) { return true; }
#else
struct gfs_api gfs_api;
static const char *const gfs_api_names[] = {GFS_API(LAZYLIB_NAME) NULL};
static struct lazylib libguestfs = {
    .soname = "libguestfs.so.0",
    .package = "libguestfs0",
    .names = gfs_api_names,
    .slots = (void **)&gfs_api,
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

bool g_load_libguestfs(const char **why)
{
    if (lazylib_load(&libguestfs))
        return true;
    *why = libguestfs.err;
    return false;
}
#endif

static struct guest_opts opts;
static char *runtime_dir;
static bool own_runtime_dir;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cond = PTHREAD_COND_INITIALIZER;  /* workers, reaper */
static struct app *apps;             /* live (not dead) appliances */
static uint64_t next_id = 1;
static unsigned nworkers;
static bool reaper_started, stopping;
static pthread_t reaper;
static bool kvm_broken;              /* once KVM failed and TCG worked */

/* Views whose appliance failed to start lately. */
static struct failed {
    char *path;
    long snap;
    uint64_t gen;
    double when;
    char *why;
} failed[MAX_FAILED];

double g_now(void)
{
    return (double)vmfs_now_ns() / 1e9;
}

/* opt when set, else the environment variable name, else def. */
static unsigned env_uint(const char *name, unsigned opt, unsigned def)
{
    if (opt)
        return opt;
    const char *s = getenv(name);
    if (s && *s) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (!*end && v > 0 && v < 86400)
            return (unsigned)v;
    }
    return def;
}

void guest_init(const struct guest_opts *o)
{
    opts = *o;
    opts.idle_timeout = env_uint("VMFS_GUEST_IDLE_TIMEOUT", o->idle_timeout, DEFAULT_IDLE);
    opts.max_appliances = env_uint("VMFS_GUEST_MAX_APPLIANCES", o->max_appliances, DEFAULT_MAX);
    opts.call_timeout = env_uint("VMFS_GUEST_CALL_TIMEOUT", o->call_timeout,
                                 DEFAULT_CALL_TIMEOUT);
    opts.launch_timeout = env_uint("VMFS_GUEST_LAUNCH_TIMEOUT", o->launch_timeout,
                                   DEFAULT_LAUNCH_TIMEOUT);
    opts.kvm_timeout = env_uint("VMFS_GUEST_KVM_TIMEOUT", o->kvm_timeout, DEFAULT_KVM_TIMEOUT);
    free(runtime_dir);
    runtime_dir = NULL;
    own_runtime_dir = false;
    if (o->runtime_dir) {
        runtime_dir = xstrdup(o->runtime_dir);
    } else {
        const char *base = getenv("XDG_RUNTIME_DIR");
        char *tmpl = xasprintf("%s/vmfs-guest-XXXXXX", base && *base ? base : "/tmp");
        if (mkdtemp(tmpl)) {
            runtime_dir = tmpl;
            own_runtime_dir = true;
        } else {
            free(tmpl);
        }
    }
    if (runtime_dir)
        chmod(runtime_dir, 0700);
    opts.runtime_dir = runtime_dir;
    gc_init(opts.meta_cache, opts.data_cache);
}

const struct guest_opts *g_opts(void) { return &opts; }

/* ---- jobs ---- */

struct job *job_new(enum job_kind kind, size_t fs, const char *path)
{
    struct job *j = xcalloc(1, sizeof *j);
    j->kind = kind;
    j->fs = fs;
    j->path = xstrdup(path ? path : "/");
    j->refs = 1;
    return j;
}

static void job_free(struct job *j)
{
    free(j->path);
    gdir_free(j->dir);
    free(j->target);
    gxattrs_free(j->xattrs);
    free(j->chunk);
    free(j);
}

/* Drops a reference; a's lock must not be held. */
void job_put(struct job *j)
{
    if (!j)
        return;
    if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) == 0)
        job_free(j);
}

static void enqueue(struct app *a, struct job *j)
{
    j->state = JOB_QUEUED;
    __atomic_add_fetch(&j->refs, 1, __ATOMIC_ACQ_REL);
    struct job **head = j->background ? &a->bg : &a->fg;
    struct job **tail = j->background ? &a->bg_tail : &a->fg_tail;
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
    pthread_cond_broadcast(&a->cond);
}

static const struct guest_wait_hooks *wait_hooks;

void guest_set_wait_hooks(const struct guest_wait_hooks *hooks)
{
    __atomic_store_n(&wait_hooks, hooks, __ATOMIC_RELEASE);
}

int app_run(struct app *a, struct job *j)
{
    pthread_mutex_lock(&a->lock);
    if (a->state == APP_DEAD) {
        int r = a->retryable ? -EAGAIN : -EIO;
        pthread_mutex_unlock(&a->lock);
        return r;
    }
    enqueue(a, j);
    /* The caller's loop hears of the wait outside the lock; the job may
     * be done by the time it is told. */
    const struct guest_wait_hooks *h = __atomic_load_n(&wait_hooks, __ATOMIC_ACQUIRE);
    if (h) {
        pthread_mutex_unlock(&a->lock);
        h->begin(h->arg);
        pthread_mutex_lock(&a->lock);
    }
    while (j->state != JOB_DONE && a->state != APP_DEAD) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&a->cond, &a->lock, &ts);
    }
    int r;
    if (j->state == JOB_DONE)
        r = j->err;
    else if (j->state == JOB_QUEUED)
        r = a->retryable ? -EAGAIN : -EIO;
    else
        r = -EIO;   /* swallowed by an appliance killed for hanging or stopped */
    pthread_mutex_unlock(&a->lock);
    if (h)
        h->end(h->arg);
    return r;
}

void app_queue_background(struct app *a, struct job *j)
{
    j->background = true;
    pthread_mutex_lock(&a->lock);
    /* A little read-ahead is worth it; a long queue of it is not. */
    unsigned n = 0;
    for (struct job *q = a->bg; q; q = q->next)
        n++;
    if (a->state != APP_DEAD && n < 4)
        enqueue(a, j);
    pthread_mutex_unlock(&a->lock);
}

#define FACTS_AFTER_IDLE 2.0   /* seconds without foreground work */

/* Takes the next job, or NULL when the worker should end.  Foreground
 * first; read-ahead next; gathering facts only once nobody has asked for
 * anything for a moment. */
static struct job *next_job(struct app *a)
{
    pthread_mutex_lock(&a->lock);
    for (;;) {
        if (a->state == APP_DEAD || a->fg)
            break;
        if (a->bg) {
            double wait = a->last_fg + FACTS_AFTER_IDLE - g_now();
            if (a->bg->kind != J_FACTS || wait <= 0)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&a->cond, &a->lock, &ts);
            continue;
        }
        pthread_cond_wait(&a->cond, &a->lock);
    }
    struct job *j = NULL;
    if (a->state != APP_DEAD) {
        struct job **head = a->fg ? &a->fg : &a->bg;
        struct job **tail = a->fg ? &a->fg_tail : &a->bg_tail;
        j = *head;
        *head = j->next;
        if (!*head)
            *tail = NULL;
        j->next = NULL;
        j->state = JOB_RUNNING;
    }
    pthread_mutex_unlock(&a->lock);
    return j;
}

static void job_done(struct app *a, struct job *j)
{
    pthread_mutex_lock(&a->lock);
    j->state = JOB_DONE;
    if (!j->background)
        a->last_fg = g_now();
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    job_put(j);
}

/* Completes every queued job with err (the worker is ending). */
static void fail_queued(struct app *a, int err)
{
    for (;;) {
        pthread_mutex_lock(&a->lock);
        struct job *j = a->fg ? a->fg : a->bg;
        if (j) {
            if (j == a->fg) {
                a->fg = j->next;
                if (!a->fg)
                    a->fg_tail = NULL;
            } else {
                a->bg = j->next;
                if (!a->bg)
                    a->bg_tail = NULL;
            }
            j->err = err;
            j->state = JOB_DONE;
        }
        pthread_cond_broadcast(&a->cond);
        pthread_mutex_unlock(&a->lock);
        if (!j)
            return;
        job_put(j);
    }
}

/* ---- the registry ---- */

static void app_free(struct app *a)
{
    for (size_t i = 0; i < a->nfs; i++) {
        struct gfs *f = &a->fs[i];
        free(f->name);
        free(f->dev);
        free(f->hint);
        free(f->type);
        free(f->label);
        free(f->uuid);
        free(f->options);
        free(f->reason);
        for (size_t k = 0; k < G_RECENT_DIRS; k++)
            free(f->recent[k]);
    }
    free(a->fs);
    free(a->dir);
    free(a->error);
    tree_put(a->t);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
    free(a);
}

static void app_unref(struct app *a)
{
    pthread_mutex_lock(&a->lock);
    bool last = --a->refs == 0;
    pthread_mutex_unlock(&a->lock);
    if (last)
        app_free(a);
}

void app_put(struct app *a)
{
    pthread_mutex_lock(&a->lock);
    a->users--;
    a->last_used = g_now();
    pthread_mutex_unlock(&a->lock);
    app_unref(a);
}

/* Marks a dead and takes it out of the registry (reg_lock held). */
static void app_kill_locked(struct app *a, const char *why, bool retryable)
{
    bool was_listed = false;
    for (struct app **pp = &apps; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            was_listed = true;
            break;
        }
    }
    pthread_mutex_lock(&a->lock);
    if (a->state != APP_DEAD) {
        a->state = APP_DEAD;
        a->retryable = retryable;
        free(a->error);
        a->error = xstrdup(why);
    }
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    if (was_listed)
        app_unref(a);   /* the registry's reference */
}

static void app_kill(struct app *a, const char *why, bool retryable)
{
    pthread_mutex_lock(&reg_lock);
    app_kill_locked(a, why, retryable);
    pthread_mutex_unlock(&reg_lock);
}

long app_fs_index(const struct app *a, const char *name)
{
    for (size_t i = 0; i < a->nfs; i++)
        if (!strcmp(a->fs[i].name, name))
            return (long)i;
    return -1;
}

/* The device of a filesystem inside the appliance, or NULL. */
static char *device_of(const char *name)
{
    if (!strcmp(name, "disk"))
        return xstrdup("/dev/sda");
    if (name[0] == 'p') {
        char *end;
        unsigned long n = strtoul(name + 1, &end, 10);
        if (name[1] >= '1' && name[1] <= '9' && !*end && n <= 4096)
            return xasprintf("/dev/sda%lu", n);
        return NULL;
    }
    if (strncmp(name, "lvm/", 4))
        return NULL;
    /* LVM names are [A-Za-z0-9+_.-]; anything else is not asked for. */
    for (const char *c = name + 4; *c; c++)
        if (!(((*c | 32) >= 'a' && (*c | 32) <= 'z') || (*c >= '0' && *c <= '9') ||
              strchr("+_.-/", *c)))
            return NULL;
    return xasprintf("/dev/%s", name + 4);
}

static void add_fs(struct app *a, struct timg *t, const char *name, long vol)
{
    struct gfs *f = &a->fs[a->nfs];
    f->name = xstrdup(name);
    f->dev = device_of(name);
    f->vol = vol;
    char *label = NULL, *uuid = NULL;
    g_static_facts(t, name, &f->hint, &label, &uuid);
    free(label);
    free(uuid);
    snprintf(f->mp, sizeof f->mp, "/vmfs%zu", a->nfs);
    a->nfs++;
}

static struct app *app_new(struct timg *t)
{
    struct app *a = xcalloc(1, sizeof *a);
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    tree_hold(t);
    a->t = t;
    a->state = APP_STARTING;
    a->debug_sh = -1;
    a->last_used = g_now();
    const struct vlayout *lay = tree_layout(t);
    size_t nvols = lay ? lay->nvols : 0;
    a->fs = xcalloc(nvols + 1, sizeof *a->fs);
    add_fs(a, t, "disk", -1);
    for (size_t i = 0; i < nvols; i++)
        add_fs(a, t, lay->vols[i].path, (long)i);
    return a;
}

static void *worker_main(void *arg);
static void *reaper_main(void *arg);

static bool same_view(const struct app *a, const struct timg *t)
{
    return a->t->snap == t->snap && !strcmp(a->t->path, t->path);
}

/* The reason a launch for t failed lately, or NULL (reg_lock held). */
static const char *recent_failure(const struct timg *t)
{
    for (size_t i = 0; i < MAX_FAILED; i++) {
        struct failed *f = &failed[i];
        if (f->path && f->snap == t->snap && f->gen == t->gen && !strcmp(f->path, t->path) &&
            g_now() - f->when < FAILED_BACKOFF)
            return f->why;
    }
    return NULL;
}

static void remember_failure(const struct timg *t, const char *why)
{
    pthread_mutex_lock(&reg_lock);
    size_t oldest = 0;
    for (size_t i = 0; i < MAX_FAILED; i++) {
        if (!failed[i].path) {
            oldest = i;
            break;
        }
        if (failed[i].when < failed[oldest].when)
            oldest = i;
    }
    struct failed *f = &failed[oldest];
    free(f->path);
    free(f->why);
    f->path = xstrdup(t->path);
    f->snap = t->snap;
    f->gen = t->gen;
    f->when = g_now();
    f->why = xstrdup(why);
    pthread_mutex_unlock(&reg_lock);
    g_facts_changed();
}

/* Stops the idlest appliances beyond max_appliances (reg_lock held). */
static void enforce_max_locked(struct app *keep)
{
    for (;;) {
        unsigned n = 0;
        struct app *idlest = NULL;
        for (struct app *a = apps; a; a = a->next) {
            n++;
            pthread_mutex_lock(&a->lock);
            bool idle = a != keep && a->users == 0 && !a->fg && !a->launching;
            double last = a->last_used;
            pthread_mutex_unlock(&a->lock);
            if (idle && (!idlest || last < idlest->last_used))
                idlest = a;
        }
        if (n <= opts.max_appliances || !idlest)
            return;
        vmfs_log(VMFS_LOG_INFO, "guest: stopping the appliance of %s to stay within %u",
                 idlest->t->path, opts.max_appliances);
        app_kill_locked(idlest, "stopped to make room for another appliance", true);
    }
}

int app_get(struct timg *t, struct app **out)
{
    pthread_mutex_lock(&reg_lock);
    if (stopping || !runtime_dir) {
        pthread_mutex_unlock(&reg_lock);
        return -EIO;
    }
    for (struct app *a = apps; a; a = a->next) {
        if (a->t->gen != t->gen || !same_view(a, t))
            continue;
        pthread_mutex_lock(&a->lock);
        a->refs++;
        a->users++;
        a->last_used = g_now();
        pthread_mutex_unlock(&a->lock);
        pthread_mutex_unlock(&reg_lock);
        *out = a;
        return 0;
    }
    if (recent_failure(t)) {
        pthread_mutex_unlock(&reg_lock);
        return -EIO;
    }
    pthread_mutex_unlock(&reg_lock);
    /* Built without the lock: the layout may have to be scanned. */
    struct app *a = app_new(t);
    pthread_mutex_lock(&reg_lock);
    for (struct app *o = apps; o; o = o->next) {
        if (o->t->gen == t->gen && same_view(o, t)) {
            /* Another thread was quicker. */
            pthread_mutex_lock(&o->lock);
            o->refs++;
            o->users++;
            o->last_used = g_now();
            pthread_mutex_unlock(&o->lock);
            pthread_mutex_unlock(&reg_lock);
            app_free(a);
            *out = o;
            return 0;
        }
    }
    if (stopping) {
        pthread_mutex_unlock(&reg_lock);
        app_free(a);
        return -EIO;
    }
    a->id = next_id++;
    a->dir = xasprintf("%s/app%" PRIu64, runtime_dir, a->id);
    /* An older generation of this view shows bytes that are gone. */
    for (struct app *o = apps, *n; o; o = n) {
        n = o->next;
        if (same_view(o, t))
            app_kill_locked(o, "the image changed", false);
    }
    a->refs = 3;         /* the registry, the worker, the caller */
    a->users = 1;
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, worker_main, a) != 0) {
        pthread_attr_destroy(&attr);
        pthread_mutex_unlock(&reg_lock);
        app_free(a);
        return -EAGAIN;
    }
    pthread_attr_destroy(&attr);
    nworkers++;
    a->next = apps;
    apps = a;
    enforce_max_locked(a);
    if (!reaper_started && pthread_create(&reaper, NULL, reaper_main, NULL) == 0)
        reaper_started = true;
    pthread_mutex_unlock(&reg_lock);
    *out = a;
    return 0;
}

/* ---- watching the hypervisor ---- */

/* The state letter and parent of process pid, from /proc: false when
 * there is no such process. */
static bool proc_stat(pid_t pid, char *state, pid_t *ppid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = 0;
    const char *rp = strrchr(buf, ')');
    int pp;
    if (!rp || sscanf(rp + 1, " %c %d", state, &pp) != 2)
        return false;
    *ppid = (pid_t)pp;
    return true;
}

/* True while process pid exists and is not a zombie. */
static bool pid_alive(pid_t pid)
{
    char st;
    pid_t ppid;
    return proc_stat(pid, &st, &ppid) && st != 'Z' && st != 'X';
}

/* Children of this process whose command line names dir: the hypervisor
 * (and helpers) of one appliance, found even while it is launching. */
static size_t children_naming(const char *dir, pid_t *pids, size_t max)
{
    DIR *d = opendir("/proc");
    size_t n = 0;
    struct dirent *de;
    while (d && n < max && (de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        char path[64], buf[8192], st;
        pid_t ppid;
        if (!proc_stat((pid_t)pid, &st, &ppid) || ppid != getpid())
            continue;
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0)
            continue;
        for (ssize_t i = 0; i < r; i++)
            if (!buf[i])
                buf[i] = ' ';
        buf[r] = 0;
        if (strstr(buf, dir))
            pids[n++] = (pid_t)pid;
    }
    if (d)
        closedir(d);
    return n;
}

/* Kills an appliance's hypervisor: how many processes were signalled.
 * pid is signalled only while it is still a child of this process: once
 * libguestfs has waited for a dead hypervisor, its number may already
 * name another process. */
static size_t kill_hypervisor(struct app *a, pid_t pid)
{
    pid_t pids[8], ppid;
    size_t found = children_naming(a->dir, pids, 8), killed = 0;
    char st;
    if (pid > 0 && proc_stat(pid, &st, &ppid) && ppid == getpid() && kill(pid, SIGKILL) == 0)
        killed++;
    for (size_t i = 0; i < found; i++)
        if (pids[i] != pid && kill(pids[i], SIGKILL) == 0)
            killed++;
    return killed;
}

void call_begin(struct app *a)
{
    pthread_mutex_lock(&a->lock);
    a->deadline = g_now() + opts.call_timeout;
    pthread_mutex_unlock(&a->lock);
}

void call_end(struct app *a)
{
    pthread_mutex_lock(&a->lock);
    a->deadline = 0;
    pthread_mutex_unlock(&a->lock);
}

/* One reaper round: deadlines, idle appliances, the limit. */
static void reap_round(void)
{
    double now = g_now();
    pthread_mutex_lock(&reg_lock);
    for (struct app *a = apps, *n; a; a = n) {
        n = a->next;
        pthread_mutex_lock(&a->lock);
        bool late = a->deadline > 0 && now > a->deadline && !a->kill_sent;
        bool launching = a->launching;
        bool idle = !a->launching && a->state == APP_READY && a->users == 0 && !a->fg &&
                    !a->bg && a->deadline == 0 && now - a->last_used > opts.idle_timeout;
        if (late)
            a->kill_sent = true;
        pid_t pid = a->pid;
        pthread_mutex_unlock(&a->lock);
        if (late) {
            size_t killed = kill_hypervisor(a, pid);
            if (launching && killed == 0) {
                /* Nothing to kill yet (the launch is still preparing):
                 * try again at the next round. */
                pthread_mutex_lock(&a->lock);
                a->kill_sent = false;
                pthread_mutex_unlock(&a->lock);
                continue;
            }
            vmfs_log(VMFS_LOG_WARN, "guest: the appliance of %s %s; killed it", a->t->path,
                     launching ? "did not start in time" : "stopped answering");
            if (!launching)
                app_kill_locked(a, "the appliance stopped answering and was killed", false);
        } else if (idle) {
            vmfs_log(VMFS_LOG_INFO, "guest: stopping the idle appliance of %s", a->t->path);
            app_kill_locked(a, "stopped when idle", true);
        }
    }
    enforce_max_locked(NULL);
    pthread_mutex_unlock(&reg_lock);
}

static void *reaper_main(void *arg)
{
    pthread_mutex_lock(&reg_lock);
    while (!stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&reg_cond, &reg_lock, &ts);
        if (stopping)
            break;
        pthread_mutex_unlock(&reg_lock);
        reap_round();
        pthread_mutex_lock(&reg_lock);
    }
    pthread_mutex_unlock(&reg_lock);
    return NULL;
}

/* ---- launching ---- */

static bool env_has_setting(const char *name)
{
    const char *s = getenv("LIBGUESTFS_BACKEND_SETTINGS");
    size_t n = strlen(name);
    while (s && *s) {
        const char *e = strchr(s, ':');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len >= n && !strncmp(s, name, n) && (len == n || s[n] == '='))
            return true;
        s = e ? e + 1 : NULL;
    }
    return false;
}

/* One line of the handle's last error, for logs and reports. */
static char *last_error(guestfs_h *g)
{
    const char *e = guestfs_last_error(g);
    char *s = xstrdup(e && *e ? e : "unknown error");
    s[strcspn(s, "\n")] = 0;
    if (strlen(s) > 300)
        s[300] = 0;
    return s;
}

static int add_backend_setting(guestfs_h *g, const char *setting)
{
    char **cur = guestfs_get_backend_settings(g);
    size_t n = 0;
    while (cur && cur[n])
        n++;
    char **list = xcalloc(n + 2, sizeof *list);
    for (size_t i = 0; i < n; i++)
        list[i] = cur[i];
    list[n] = (char *)setting;
    int r = guestfs_set_backend_settings(g, list);
    for (size_t i = 0; i < n; i++)
        free(cur[i]);
    free(cur);
    free(list);
    return r;
}

/* Keeps the first error a launch reports: later ones only say that the
 * launch failed. */
static void first_error(guestfs_h *g, void *opaque, const char *msg)
{
    char *buf = opaque;
    if (!buf[0] && msg)
        snprintf(buf, 300, "%s", msg);
}

/* Creates and launches a handle on the NBD socket.  0, or -1 with *why. */
static int launch_once(struct app *a, const char *sock, bool tcg, char **why)
{
    guestfs_h *g = guestfs_create_flags(0);
    if (!g) {
        *why = xstrdup("cannot create a libguestfs handle");
        return -1;
    }
    char errbuf[300] = "";
    guestfs_set_error_handler(g, first_error, errbuf);
    if (!getenv("LIBGUESTFS_BACKEND"))
        guestfs_set_backend(g, "direct");
    if (tcg && !env_has_setting("force_tcg"))
        add_backend_setting(g, "force_tcg");
    guestfs_set_tmpdir(g, a->dir);
    guestfs_set_autosync(g, 0);
    char *srv = xasprintf("unix:%s", sock);
    char *servers[] = {srv, NULL};
    int r = guestfs_add_drive_opts(g, "", GUESTFS_ADD_DRIVE_OPTS_READONLY, 1,
                                   GUESTFS_ADD_DRIVE_OPTS_FORMAT, "raw",
                                   GUESTFS_ADD_DRIVE_OPTS_PROTOCOL, "nbd",
                                   GUESTFS_ADD_DRIVE_OPTS_SERVER, servers, -1);
    free(srv);
    if (r == 0) {
        double start = g_now();
        pthread_mutex_lock(&a->lock);
        a->launching = true;
        a->kill_sent = false;
        a->deadline = start + (tcg ? opts.launch_timeout : opts.kvm_timeout);
        pthread_mutex_unlock(&a->lock);
        r = guestfs_launch(g);
        pthread_mutex_lock(&a->lock);
        bool killed = a->kill_sent;
        a->launching = false;
        a->deadline = 0;
        a->kill_sent = false;
        a->launch_secs = g_now() - start;
        pthread_mutex_unlock(&a->lock);
        if (r < 0 && killed) {
            *why = xasprintf("no answer after %u s", tcg ? opts.launch_timeout
                                                          : opts.kvm_timeout);
            guestfs_close(g);
            return -1;
        }
    }
    if (r < 0) {
        if (errbuf[0]) {
            errbuf[strcspn(errbuf, "\n")] = 0;
            *why = xstrdup(errbuf);
        } else {
            *why = last_error(g);
        }
        guestfs_close(g);
        return -1;
    }
    guestfs_set_error_handler(g, NULL, NULL);
    int pid = guestfs_get_pid(g);
    pthread_mutex_lock(&a->lock);
    a->pid = pid > 0 ? pid : 0;
    a->tcg = tcg;
    pthread_mutex_unlock(&a->lock);
    a->g = g;
    return 0;
}

static int launch(struct app *a)
{
    const char *nolib;
    if (!g_load_libguestfs(&nolib)) {
        char *why = xasprintf("no appliance: %s", nolib);
        vmfs_log(VMFS_LOG_ERR, "guest: %s", why);
        remember_failure(a->t, why);
        app_kill(a, why, false);
        free(why);
        return -1;
    }
    if (mkdir(a->dir, 0700) < 0 && errno != EEXIST) {
        app_kill(a, "cannot create the appliance's directory", false);
        return -1;
    }
    char *sock = xasprintf("%s/nbd.sock", a->dir);
    int err = 0;
    struct vview v = {a->t, -1};
    a->nbd = nbd_serve(&v, sock, &err);
    if (!a->nbd) {
        char *why = xasprintf("cannot serve the disk over NBD: %s", strerror(-err));
        vmfs_log(VMFS_LOG_ERR, "guest: %s: %s", a->t->path, why);
        remember_failure(a->t, why);
        app_kill(a, why, false);
        free(why);
        free(sock);
        return -1;
    }
    pthread_mutex_lock(&reg_lock);
    bool tcg = kvm_broken || env_has_setting("force_tcg");
    pthread_mutex_unlock(&reg_lock);
    char *why = NULL;
    int r = launch_once(a, sock, tcg, &why);
    if (r < 0 && !tcg) {
        vmfs_log(VMFS_LOG_WARN,
                 "guest: the appliance did not start with KVM (%s); "
                 "retrying with software emulation (TCG)", why);
        free(why);
        why = NULL;
        r = launch_once(a, sock, true, &why);
        if (r == 0) {
            pthread_mutex_lock(&reg_lock);
            kvm_broken = true;
            pthread_mutex_unlock(&reg_lock);
            vmfs_log(VMFS_LOG_WARN, "guest: KVM is not usable here: appliances run "
                                    "with software emulation from now on");
        }
    }
    free(sock);
    if (r < 0) {
        char *msg = xasprintf("the appliance did not start: %s", why);
        vmfs_log(VMFS_LOG_ERR, "guest: %s: %s", a->t->path, msg);
        remember_failure(a->t, msg);
        app_kill(a, msg, false);
        free(msg);
        free(why);
        return -1;
    }
    vmfs_log(VMFS_LOG_INFO, "guest: appliance for %s started in %.1f s (%s)", a->t->path,
             a->launch_secs, a->tcg ? "TCG" : "KVM");
    pthread_mutex_lock(&a->lock);
    if (a->state == APP_STARTING)
        a->state = APP_READY;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    return 0;
}

static void serve_jobs(struct app *a)
{
    struct job *j;
    while ((j = next_job(a))) {
        if (a->pid > 0 && !pid_alive(a->pid)) {
            /* Gone between two jobs: this one was never sent. */
            vmfs_log(VMFS_LOG_WARN, "guest: the appliance of %s has gone away", a->t->path);
            pthread_mutex_lock(&a->lock);
            j->state = JOB_QUEUED;
            j->err = -EAGAIN;
            pthread_mutex_unlock(&a->lock);
            app_kill(a, "the appliance has gone away", true);
            job_done(a, j);   /* marks it done for a waiter that is still here */
            return;
        }
        double t0 = g_now();
        w_run_job(a, j);
        vmfs_log(VMFS_LOG_DEBUG, "guest: job %d%s on %s: %s: %d in %.1f ms", (int)j->kind,
                 j->background ? " (background)" : "", a->fs[j->fs].name, j->path, j->err,
                 (g_now() - t0) * 1000);
        if (!guestfs_is_ready(a->g)) {
            /* It died under this job.  Every job only reads, so one that
             * failed is tried again on a new appliance, unless the
             * watchdog killed this one for hanging: then it is an EIO. */
            pthread_mutex_lock(&a->lock);
            bool hung = a->kill_sent;
            a->pid = 0;   /* libguestfs has waited for it */
            pthread_mutex_unlock(&a->lock);
            vmfs_log(VMFS_LOG_WARN, "guest: the appliance of %s died", a->t->path);
            /* The job is done and the appliance gone from the registry in
             * one step: a waiter that tries again finds a new one. */
            pthread_mutex_lock(&reg_lock);
            pthread_mutex_lock(&a->lock);
            if (j->err < 0 && !hung)
                j->err = -EAGAIN;
            j->state = JOB_DONE;
            pthread_mutex_unlock(&a->lock);
            app_kill_locked(a, "the appliance died", !hung);
            pthread_mutex_unlock(&reg_lock);
            job_put(j);
            return;
        }
        job_done(a, j);
    }
}

static void *worker_main(void *arg)
{
    struct app *a = arg;
    if (launch(a) == 0)
        serve_jobs(a);
    pthread_mutex_lock(&a->lock);
    bool retry = a->retryable;
    pthread_mutex_unlock(&a->lock);
    fail_queued(a, retry ? -EAGAIN : -EIO);
    if (a->g) {
        /* Nothing to save in a read-only appliance: kill it rather than
         * ask it to stop, which a stopped or hung hypervisor would never
         * do (libguestfs would then wait for it for ever). */
        pthread_mutex_lock(&a->lock);
        pid_t pid = a->pid;
        pthread_mutex_unlock(&a->lock);
        kill_hypervisor(a, pid);
        guestfs_close(a->g);
        a->g = NULL;
    }
    if (a->nbd) {
        nbd_server_stop(a->nbd);
        a->nbd = NULL;
    }
    if (a->dir)
        rmdir(a->dir);
    gc_drop_app(a->id);
    pthread_mutex_lock(&reg_lock);
    nworkers--;
    pthread_cond_broadcast(&reg_cond);
    pthread_mutex_unlock(&reg_lock);
    app_unref(a);
    return NULL;
}

void guest_shutdown(void)
{
    pthread_mutex_lock(&reg_lock);
    stopping = true;
    while (apps) {
        struct app *a = apps;
        pthread_mutex_lock(&a->lock);
        pid_t pid = a->pid;
        pthread_mutex_unlock(&a->lock);
        if (a->dir)
            kill_hypervisor(a, pid);
        app_kill_locked(a, "vmfs is stopping", false);
    }
    pthread_cond_broadcast(&reg_cond);
    bool reap = reaper_started;
    reaper_started = false;
    pthread_mutex_unlock(&reg_lock);
    if (reap)
        pthread_join(reaper, NULL);
    /* Wait a while for the workers to close their handles. */
    pthread_mutex_lock(&reg_lock);
    double until = g_now() + 30;
    while (nworkers > 0 && g_now() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&reg_cond, &reg_lock, &ts);
    }
    for (size_t i = 0; i < MAX_FAILED; i++) {
        free(failed[i].path);
        free(failed[i].why);
        failed[i].path = failed[i].why = NULL;
    }
    stopping = false;
    pthread_mutex_unlock(&reg_lock);
    gc_shutdown();
    if (own_runtime_dir && runtime_dir)
        rmdir(runtime_dir);
    free(runtime_dir);
    runtime_dir = NULL;
}

/* ---- what guest_report shows of a running appliance ---- */

struct app *g_find_app(struct timg *t)
{
    pthread_mutex_lock(&reg_lock);
    struct app *found = NULL;
    for (struct app *a = apps; a; a = a->next) {
        if (a->t->gen == t->gen && same_view(a, t)) {
            pthread_mutex_lock(&a->lock);
            a->refs++;
            pthread_mutex_unlock(&a->lock);
            found = a;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return found;
}

void g_app_unref(struct app *a) { app_unref(a); }

const char *g_recent_failure(struct timg *t, char *buf, size_t size)
{
    pthread_mutex_lock(&reg_lock);
    const char *why = recent_failure(t);
    if (why)
        snprintf(buf, size, "%s", why);
    pthread_mutex_unlock(&reg_lock);
    return why ? buf : NULL;
}
