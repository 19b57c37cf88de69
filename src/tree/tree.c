/* vmfs — images of SOURCE as the tree sees them: opened on demand, kept in
 * a small most-recently-used list, re-opened when the file changes. */
#include "config.h"

#include <errno.h>
#include <dirent.h>
#include <pthread.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "vmfs/bridge.h"
#include "vmfs/report.h"
#include "vmfs/tree.h"

static struct tree_opts opts;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct timg *head;        /* most recently used first */
static unsigned count;
static uint64_t next_gen = 1;

static struct timespec start_time;

bool tree_is_uri(const char *s)
{
    return !strncmp(s, "nbd://", 6) || !strncmp(s, "nbd+unix://", 11) ||
           !strncmp(s, "nbds://", 7) || !strncmp(s, "nbds+unix://", 12);
}

int tree_stat(const char *path, struct stat *st)
{
    if (!tree_is_uri(path))
        return stat(path, st);
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_atim = st->st_mtim = st->st_ctim = start_time;
    return 0;
}

/* The file name an NBD export gets: its export name, made a file name. */
static char *export_file_name(const char *uri)
{
    const char *p = strstr(uri, "://");
    p = p ? p + 3 : uri;
    p = strchr(p, '/');
    char *name = xstrdup(p ? p + 1 : "");
    char *q = strpbrk(name, "?#");
    if (q)
        *q = 0;
    for (char *c = name; *c; c++)
        if (*c == '/' || *c == '%')
            *c = '_';
    if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..")) {
        free(name);
        name = xstrdup("nbd");
    }
    return name;
}

void tree_init(const struct tree_opts *o)
{
    opts = *o;
    clock_gettime(CLOCK_REALTIME, &start_time);
    opts.open.root = opts.source;
    if (opts.uri) {
        opts.single_file = true;
        opts.single_name = export_file_name(opts.source);
        /* An export has no directory here: no local file is inside it, so
         * a backing reference in it opens nothing without
         * allow_external_backing. */
        opts.open.root = "";
    } else if (opts.single_file) {
        const char *slash = strrchr(opts.source, '/');
        opts.single_name = xstrdup(slash ? slash + 1 : opts.source);
    }
    if (opts.single_file && !opts.uri) {
        /* A single image: its directory is where relative names resolve,
         * and what counts as inside SOURCE. */
        char *dir = xstrdup(opts.source);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir)
            *slash = 0;
        else
            strcpy(dir, "/");
        char *real = realpath(dir, NULL);
        if (real) {
            free(dir);
            dir = real;
        }
        opts.open.root = dir;
    }
    if (!opts.max_open)
        opts.max_open = 64;
}

const struct tree_opts *tree_options(void) { return &opts; }

bool tree_is_image(const char *path, const struct stat *st)
{
    if (tree_is_uri(path))
        return true;
    if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode))
        return false;
    return vimage_is_candidate(path, false);
}

/* Per directory, the files that descriptors in it name, remembered while
 * the directory and its descriptors are unchanged. */
struct hidden_dir {
    char *dir;
    struct timespec dir_mtime;   /* the directory when scanned */
    struct timespec scanned;     /* monotonic time of the scan */
    char **paths;
    size_t n;
    struct hidden_dir *next;
};
static struct hidden_dir *hidden;
static unsigned nhidden;
static pthread_mutex_t hidden_lock = PTHREAD_MUTEX_INITIALIZER;

static bool is_descriptor_name(const char *name)
{
    size_t n = strlen(name);
    return n > 5 && !strcasecmp(name + n - 5, ".vmdk");
}

static bool ts_after(struct timespec a, struct timespec b)
{
    return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}

static void hidden_free(struct hidden_dir *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->paths[i]);
    free(h->paths);
    free(h->dir);
    free(h);
}

/* Scans the descriptors in dir for the files they name. */
static struct hidden_dir *scan_hidden(const char *dir, struct timespec dir_mtime)
{
    struct hidden_dir *h = xcalloc(1, sizeof *h);
    h->dir = xstrdup(dir);
    h->dir_mtime = dir_mtime;
    clock_gettime(CLOCK_MONOTONIC, &h->scanned);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!is_descriptor_name(de->d_name))
            continue;
        char *full = xasprintf("%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            char **p;
            size_t n = vimage_related_files(full, &p);
            h->paths = xrealloc(h->paths, (h->n + n + 1) * sizeof *h->paths);
            for (size_t i = 0; i < n; i++)
                h->paths[h->n++] = p[i];
            free(p);
        }
        free(full);
    }
    if (d)
        closedir(d);
    return h;
}

/* A scan holds while the directory is unchanged, for two seconds: a
 * descriptor edited in place does not change its directory. */
static bool hidden_fresh(const struct hidden_dir *h, const struct stat *dst)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (ts_after(dst->st_mtim, h->dir_mtime) || ts_after(h->dir_mtime, dst->st_mtim))
        return false;
    return now.tv_sec - h->scanned.tv_sec < 2;
}

bool tree_is_hidden(const char *dir, const char *name)
{
    struct stat dst;
    if (opts.single_file || stat(dir, &dst) < 0)
        return false;
    pthread_mutex_lock(&hidden_lock);
    struct hidden_dir **pp = &hidden, *h = NULL;
    for (; *pp; pp = &(*pp)->next) {
        if (!strcmp((*pp)->dir, dir)) {
            h = *pp;
            if (!hidden_fresh(h, &dst)) {
                *pp = h->next;
                nhidden--;
                hidden_free(h);
                h = NULL;
            }
            break;
        }
    }
    if (!h) {
        pthread_mutex_unlock(&hidden_lock);
        struct hidden_dir *fresh = scan_hidden(dir, dst.st_mtim);
        pthread_mutex_lock(&hidden_lock);
        fresh->next = hidden;
        hidden = fresh;
        h = fresh;
        if (++nhidden > 64) {            /* forget the oldest scans */
            struct hidden_dir *x = hidden;
            while (x->next && x->next->next)
                x = x->next;
            if (x->next && x->next != h) {
                hidden_free(x->next);
                x->next = NULL;
                nhidden--;
            }
        }
    }
    char *full = xasprintf("%s/%s", dir, name);
    bool found = false;
    for (size_t i = 0; i < h->n && !found; i++)
        found = !strcmp(h->paths[i], full);
    pthread_mutex_unlock(&hidden_lock);
    free(full);
    return found;
}

static void timg_free(struct timg *t)
{
    vlayout_free(t->layout);
    free(t->vol_alloc);
    pthread_mutex_destroy(&t->view_lock);
    vimage_unref(t->img);
    free(t->path);
    free(t->text);
    free(t->json);
    free(t);
}

static void unlink_timg(struct timg *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    count--;
}

static void push_timg(struct timg *t)
{
    t->prev = NULL;
    t->next = head;
    if (head)
        head->prev = t;
    head = t;
    count++;
}

static bool same_id(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Drops unused images beyond the limit, oldest first.  Called locked;
 * returns the list of images to free outside the lock. */
static struct timg *trim(void)
{
    struct timg *dead = NULL, *t = head;
    while (t && t->next)
        t = t->next;
    while (t && count > opts.max_open) {
        struct timg *prev = t->prev;
        if (t->refs == 0) {
            unlink_timg(t);
            t->next = dead;
            dead = t;
        }
        t = prev;
    }
    return dead;
}

static void free_list(struct timg *t)
{
    while (t) {
        struct timg *n = t->next;
        timg_free(t);
        t = n;
    }
}

/* Images being opened: a thread that wants one of them waits for that
 * open instead of opening the file a second time (right after the mount
 * the first request and the count ahead ask for the same image at once,
 * and two opens would walk its tables twice). */
struct opening {
    const char *path;
    long snap;
    struct opening *next;
};
static struct opening *openings;
static pthread_cond_t opened = PTHREAD_COND_INITIALIZER;

/* Called locked: true when another thread is opening path. */
static bool being_opened(const char *path, long snap)
{
    for (struct opening *o = openings; o; o = o->next)
        if (o->snap == snap && !strcmp(o->path, path))
            return true;
    return false;
}

static void open_done(struct opening *me)
{
    for (struct opening **o = &openings; *o; o = &(*o)->next) {
        if (*o == me) {
            *o = me->next;
            break;
        }
    }
    pthread_cond_broadcast(&opened);
}

struct timg *tree_get(const char *path, long snap)
{
    struct stat st;
    if (tree_stat(path, &st) < 0)
        return NULL;
    struct timg *stale = NULL;
    pthread_mutex_lock(&lock);
    while (being_opened(path, snap))
        pthread_cond_wait(&opened, &lock);
    for (struct timg *t = head; t; t = t->next) {
        if (t->snap != snap || strcmp(t->path, path))
            continue;
        if (same_id(&t->id, &st)) {
            t->refs++;
            unlink_timg(t);
            push_timg(t);
            pthread_mutex_unlock(&lock);
            return t;
        }
        /* Changed on disk: forget it; users still holding it keep theirs. */
        unlink_timg(t);
        if (t->refs == 0) {
            t->next = stale;
            stale = t;
        }
        break;
    }
    struct opening me = {path, snap, openings};
    openings = &me;
    pthread_mutex_unlock(&lock);
    free_list(stale);

    struct vimage *img = tree_is_image(path, &st) ? vimage_open(path, &opts.open, snap, opts.uri)
                                                  : NULL;
    if (!img) {
        pthread_mutex_lock(&lock);
        open_done(&me);
        pthread_mutex_unlock(&lock);
        errno = ENOENT;
        return NULL;
    }
    struct timg *t = xcalloc(1, sizeof *t);
    t->path = xstrdup(path);
    t->snap = snap;
    t->id = st;
    t->img = img;
    t->refs = 1;
    pthread_mutex_init(&t->view_lock, NULL);
    pthread_mutex_lock(&lock);
    t->gen = next_gen++;
    push_timg(t);
    open_done(&me);
    struct timg *dead = trim();
    pthread_mutex_unlock(&lock);
    free_list(dead);
    return t;
}

void tree_hold(struct timg *t)
{
    pthread_mutex_lock(&lock);
    t->refs++;
    pthread_mutex_unlock(&lock);
}

void tree_put(struct timg *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&lock);
    bool orphan = --t->refs == 0 && !t->prev && head != t;
    struct timg *dead = trim();
    pthread_mutex_unlock(&lock);
    if (orphan)
        timg_free(t);
    free_list(dead);
}

static uint64_t extra_version(void)
{
    return opts.report_extra_version ? opts.report_extra_version() : 0;
}

static void render(struct timg *t)
{
    /* Before the facts are read: a change while rendering makes the
     * next reader render again. */
    uint64_t ver = extra_version();
    struct rep *r = rep_new_object();
    /* Scan first: the scan's problems join the image's list. */
    const struct vlayout *lay = tree_layout(t);   /* its problems first */
    vimage_report(t->img, r);
    if (lay)
        vlayout_report(lay, r);
    if (opts.report_extra)
        opts.report_extra(t, r);
    size_t np = vimage_problem_count(t->img);
    vimage_report_problems(t->img, r);
    char *text = rep_to_text(r);
    char *json = rep_to_json(r);
    rep_free(r);
    pthread_mutex_lock(&lock);
    if (!t->text || np > t->rendered_problems || ver > t->rendered_extra) {
        char *old_text = t->text, *old_json = t->json;
        t->text = text;
        t->json = json;
        text = old_text;              /* freed below */
        json = old_json;
        t->rendered_problems = np;   /* what this one knew: a reader */
        t->rendered_extra = ver;     /* that knows more renders again */
    }
    pthread_mutex_unlock(&lock);
    free(text);
    free(json);
}

/* Renders t's report when it is missing or stale (tree lock not held). */
static void report_fresh(struct timg *t)
{
    /* Reads find damage the first rendering did not know of, and an
     * appliance learns about the guest's filesystems: the report is made
     * again once the image has recorded more problems or the guest's
     * facts have changed. */
    size_t np = vimage_problem_count(t->img);
    uint64_t ver = extra_version();
    pthread_mutex_lock(&lock);
    bool fresh = t->text != NULL && t->rendered_problems >= np && t->rendered_extra >= ver;
    pthread_mutex_unlock(&lock);
    if (!fresh)
        render(t);
}

size_t tree_report_size(struct timg *t, bool json)
{
    report_fresh(t);
    pthread_mutex_lock(&lock);
    size_t len = strlen(json ? t->json : t->text);
    pthread_mutex_unlock(&lock);
    return len;
}

size_t tree_report_read(struct timg *t, bool json, void *buf, size_t size, uint64_t off)
{
    report_fresh(t);
    pthread_mutex_lock(&lock);
    const char *s = json ? t->json : t->text;
    size_t len = strlen(s), n = 0;
    if (off < len) {
        n = (size_t)VMFS_MIN((uint64_t)size, len - off);
        memcpy(buf, s + off, n);
    }
    pthread_mutex_unlock(&lock);
    return n;
}

static bool usable_name(const char *s)
{
    if (!s || !*s || !strcmp(s, ".") || !strcmp(s, ".."))
        return false;
    if (strlen(s) > 250 || strchr(s, '/'))
        return false;
    /* "NAME.d" is the snapshot's own directory: a name that already ends
     * in ".d" could collide with another snapshot's directory. */
    return true;
}

char *tree_snapshot_name(struct vimage *img, size_t i)
{
    const struct vsnap *s = vimage_snapshot(img, i);
    if (!s)
        return NULL;
    bool ok = usable_name(s->name);
    size_t n = vimage_snapshot_count(img);
    for (size_t j = 0; ok && j < n; j++) {
        const struct vsnap *o = vimage_snapshot(img, j);
        if (j == i || !o)
            continue;
        /* Repeated names, and names that are another snapshot's ID, fall
         * back to IDs so that every file name is unambiguous. */
        if ((o->name && !strcmp(o->name, s->name)) || (o->id && !strcmp(o->id, s->name)))
            ok = false;
        size_t ln = strlen(s->name), lo = o->name ? strlen(o->name) : 0;
        if (o->name && ln == lo + 2 && !strncmp(s->name, o->name, lo) &&
            !strcmp(s->name + lo, ".d"))
            ok = false;
    }
    if (ok)
        return xstrdup(s->name);
    if (usable_name(s->id))
        return xstrdup(s->id);
    return xasprintf("%zu", i + 1);
}

long tree_snapshot_find(struct vimage *img, const char *name)
{
    size_t n = vimage_snapshot_count(img);
    for (size_t i = 0; i < n; i++) {
        char *s = tree_snapshot_name(img, i);
        bool match = s && !strcmp(s, name);
        free(s);
        if (match)
            return (long)i;
    }
    return -1;
}

/* ---- counting ahead ----
 *
 * The first stat or open of an image after mounting must know how much of
 * it holds data (st_blocks), which means walking its tables.  Right after
 * the mount a thread opens the first few images of SOURCE and counts them,
 * so that this has begun, or is done, when the first request comes.
 * Requests that need a count being made wait for it (vimage_allocated). */
#define PREFETCH_MAX 8

static pthread_t prefetch_thread;
static bool prefetch_running;
static int prefetch_stop;

/* Images read through qemu-nbd are left alone: counting them ahead would
 * start a qemu-nbd per image at mount, and their reads must be over when
 * the daemon stops the bridge, before tree_shutdown. */
static bool bridged(const char *path)
{
    return vimage_probe_file(path, false) == &vfmt_bridge;
}

/* Up to max images at the top of SOURCE that are not bridged, in
 * directory order; none for an NBD export: opening it can wait for the
 * network, and the daemon's exit would wait for that. */
static size_t prefetch_list(char **paths, size_t max)
{
    if (opts.uri)
        return 0;           /* a network source may take long to answer */
    if (opts.single_file) {
        if (bridged(opts.source))
            return 0;
        paths[0] = xstrdup(opts.source);
        return 1;
    }
    size_t n = 0;
    DIR *d = opendir(opts.source);
    struct dirent *de;
    while (d && n < max && (de = readdir(d))) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
            continue;
        char *full = xasprintf("%s/%s", opts.source, de->d_name);
        struct stat st;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode) && tree_is_image(full, &st) &&
            !tree_is_hidden(opts.source, de->d_name) && !bridged(full))
            paths[n++] = full;
        else
            free(full);
    }
    if (d)
        closedir(d);
    return n;
}

/* A second counter for one image: the count's parts are shared, so two
 * threads finish a large image in about half the time. */
static void *count_helper(void *arg)
{
    struct timg *t = arg;
    uint64_t bytes;
    vimage_allocated_unless(t->img, &prefetch_stop, &bytes);
    return NULL;
}

static void count_image(struct timg *t, bool helper)
{
    pthread_t h;
    bool helped = helper && t->img->size > (2ull << 30) &&
                  pthread_create(&h, NULL, count_helper, t) == 0;
    uint64_t bytes;
    vimage_allocated_unless(t->img, &prefetch_stop, &bytes);
    if (helped)
        pthread_join(h, NULL);
}

static void *prefetch_main(void *arg)
{
    char *paths[PREFETCH_MAX];
    size_t n = prefetch_list(paths, PREFETCH_MAX);
    bool helper = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    for (size_t i = 0; i < n; i++) {
        struct timg *t = __atomic_load_n(&prefetch_stop, __ATOMIC_RELAXED)
                             ? NULL : tree_get(paths[i], -1);
        if (t) {
            count_image(t, helper);
            tree_put(t);
        }
        free(paths[i]);
    }
    return NULL;
}

void tree_prefetch(void)
{
    if (!prefetch_running)
        prefetch_running = pthread_create(&prefetch_thread, NULL, prefetch_main, NULL) == 0;
}

void tree_shutdown(void)
{
    if (prefetch_running) {
        __atomic_store_n(&prefetch_stop, 1, __ATOMIC_RELAXED);
        pthread_join(prefetch_thread, NULL);
        prefetch_running = false;
    }
    while (hidden) {
        struct hidden_dir *h = hidden;
        hidden = h->next;
        hidden_free(h);
    }
    pthread_mutex_lock(&lock);
    struct timg *t = head;
    head = NULL;
    count = 0;
    pthread_mutex_unlock(&lock);
    while (t) {
        struct timg *n = t->next;
        if (t->refs == 0)
            timg_free(t);
        t = n;
    }
    if (opts.single_file && !opts.uri)
        free((char *)opts.open.root);
    free(opts.single_name);
}
