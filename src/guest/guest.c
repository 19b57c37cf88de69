/* vmfs — the guest filesystem API (guest.h): answers from the caches when
 * it can, otherwise through a job on the view's appliance.
 *
 * Attributes of a path come from its own entry or from its directory's
 * listing (a listing knows its names, so it also answers "no such file").
 * File data of a filesystem whose extents the appliance can tell comes
 * straight from the view; otherwise in 2 MiB chunks through the appliance,
 * with the next chunk read ahead when a read runs into the second half of
 * its chunk.
 *
 * Threads: every function may be called from any thread. */
#include "config.h"

#include <errno.h>

#include "guest/guest_int.h"

static struct gc_key key(const struct app *a, size_t fs, enum gc_kind kind, const char *path)
{
    return (struct gc_key){.app = a->id, .fs = (uint32_t)fs, .kind = kind, .path = path};
}

/* A path as vmfs accepts it: absolute, no empty, "." or ".." component,
 * no component longer than a name may be. */
static int check_path(const char *path)
{
    if (!path || path[0] != '/')
        return -EINVAL;
    size_t len = strlen(path);
    if (len >= G_MAX_PATH)
        return -ENAMETOOLONG;
    if (len == 1)
        return 0;
    if (path[len - 1] == '/')
        return -EINVAL;
    for (const char *c = path + 1; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 0 || n > G_MAX_NAME)
            return n ? -ENAMETOOLONG : -EINVAL;
        if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return -EINVAL;
        c += n;
        if (*c == '/')
            c++;
    }
    return 0;
}

static void synthetic_root(struct timg *t, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 2;
    st->st_ino = 1;
    st->st_blksize = 4096;
    st->st_atim = t->id.st_atim;
    st->st_mtim = t->id.st_mtim;
    st->st_ctim = t->id.st_ctim;
}

/* A filesystem request in progress: its appliance and filesystem. */
struct req {
    struct timg *t;
    struct app *a;
    size_t fs;
    const char *path;
};

/* Starts a request: 0, 1 when the filesystem cannot be mounted (known
 * without an appliance), or a negative errno. */
static int req_begin(struct req *q, struct timg *t, const char *fs, const char *path)
{
    memset(q, 0, sizeof *q);
    q->t = t;
    q->path = path;
    int r = check_path(path);
    if (r < 0 || !fs)
        return r < 0 ? r : -EINVAL;
    r = g_static_state(t, fs);
    if (r != 0)
        return r;
    r = app_get(t, &q->a);
    if (r < 0)
        return r;
    long i = app_fs_index(q->a, fs);
    if (i < 0) {
        app_put(q->a);
        q->a = NULL;
        return -ENOENT;
    }
    q->fs = (size_t)i;
    return 0;
}

static void req_end(struct req *q)
{
    if (q->a)
        app_put(q->a);
    q->a = NULL;
}

/* The first time an appliance answers, its facts are gathered later, when
 * nobody is waiting. */
static void queue_facts(struct app *a)
{
    pthread_mutex_lock(&a->lock);
    bool first = !a->facts_queued;
    a->facts_queued = true;
    pthread_mutex_unlock(&a->lock);
    if (first) {
        struct job *j = job_new(J_FACTS, 0, "/");
        app_queue_background(a, j);
        job_put(j);
    }
}

/* Runs a job like proto on q's appliance, on a new appliance once if the
 * old one died before running it.  On success *out is the finished job. */
static int submit(struct req *q, const struct job *proto, struct job **out)
{
    for (int attempt = 0;; attempt++) {
        struct job *j = job_new(proto->kind, proto->fs, proto->path);
        j->off = proto->off;
        j->len = proto->len;
        int r = app_run(q->a, j);
        if (r == 0 || r != -EAGAIN || attempt == 1) {
            if (r == 0) {
                queue_facts(q->a);
                *out = j;
            } else {
                job_put(j);
            }
            return r == -EAGAIN ? -EIO : r;
        }
        job_put(j);
        app_put(q->a);
        q->a = NULL;
        r = app_get(q->t, &q->a);
        if (r < 0)
            return r;
    }
}

static int run_simple(struct req *q, enum job_kind kind, uint64_t off, size_t len,
                      struct job **out)
{
    struct job proto = {.kind = kind, .fs = q->fs, .path = (char *)q->path, .off = off,
                        .len = len};
    return submit(q, &proto, out);
}

/* ---- attributes ---- */

/* Attributes from the caches: 1 found (r in *err), 0 not cached. */
static int stat_cached(struct req *q, const char *path, struct stat *st, int *err)
{
    struct gc_ent *ref;
    struct gc_key k = key(q->a, q->fs, GC_STAT, path);
    struct gstat *gs = gc_get(&k, &ref);
    if (gs) {
        *err = gs->err;
        if (!gs->err)
            *st = gs->st;
        gc_release(ref);
        return 1;
    }
    if (!strcmp(path, "/"))
        return 0;
    const char *slash = strrchr(path, '/');
    CLEANUP_FREE char *dir = slash == path ? xstrdup("/") : strndup(path, (size_t)(slash - path));
    if (!dir)
        abort();
    k = key(q->a, q->fs, GC_DIR, dir);
    struct gdir *d = gc_get(&k, &ref);
    if (!d)
        return 0;
    const struct guest_dirent *e = gdir_find(d, slash + 1);
    *err = e ? 0 : -ENOENT;
    if (e)
        *st = e->st;
    gc_release(ref);
    return 1;
}

static int do_stat(struct req *q, struct stat *st)
{
    int err;
    if (stat_cached(q, q->path, st, &err))
        return err;
    struct job *j;
    int r = run_simple(q, J_STAT, 0, 0, &j);
    if (r == -ENODEV) {
        if (strcmp(q->path, "/"))
            return -ENOENT;
        synthetic_root(q->t, st);
        return 0;
    }
    if (r == -ENOENT && q->a) {
        struct gstat *gs = xcalloc(1, sizeof *gs);
        gs->err = -ENOENT;
        struct gc_key k = key(q->a, q->fs, GC_STAT, q->path);
        gc_put(&k, gs, sizeof *gs, free);
    }
    if (r < 0)
        return r;
    *st = j->st;
    job_put(j);
    return 0;
}

int guest_stat(struct timg *t, const char *fs, const char *path, struct stat *st)
{
    struct req q;
    int r = req_begin(&q, t, fs, path);
    if (r == 1) {
        if (strcmp(path, "/"))
            return -ENOENT;
        synthetic_root(t, st);
        return 0;
    }
    if (r == 0)
        r = do_stat(&q, st);
    req_end(&q);
    return r;
}

/* ---- listings ---- */

static void copy_dir(const struct gdir *d, struct guest_dirent **ents, size_t *n)
{
    *ents = xcalloc(d->n ? d->n : 1, sizeof **ents);
    for (size_t i = 0; i < d->n; i++) {
        (*ents)[i].name = xstrdup(d->ents[i].name);
        (*ents)[i].st = d->ents[i].st;
    }
    *n = d->n;
}

int guest_readdir(struct timg *t, const char *fs, const char *path,
                  struct guest_dirent **ents, size_t *n)
{
    *ents = NULL;
    *n = 0;
    struct req q;
    int r = req_begin(&q, t, fs, path);
    if (r == 1)
        return strcmp(path, "/") ? -ENOENT : 0;
    if (r < 0)
        return r;
    struct gc_ent *ref;
    struct gc_key k = key(q.a, q.fs, GC_DIR, path);
    struct gdir *d = gc_get(&k, &ref);
    if (d) {
        copy_dir(d, ents, n);
        gc_release(ref);
        req_end(&q);
        return 0;
    }
    struct job *j;
    r = run_simple(&q, J_READDIR, 0, 0, &j);
    if (r == 0) {
        copy_dir(j->dir, ents, n);
        job_put(j);
    }
    req_end(&q);
    return r;
}

void guest_dirents_free(struct guest_dirent *ents, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ents[i].name);
    free(ents);
}

/* ---- symlinks ---- */

int guest_readlink(struct timg *t, const char *fs, const char *path, char **target)
{
    *target = NULL;
    struct req q;
    int r = req_begin(&q, t, fs, path);
    if (r == 1)
        return -ENOENT;
    if (r < 0)
        return r;
    struct stat st;
    r = do_stat(&q, &st);
    if (r == 0 && !S_ISLNK(st.st_mode))
        r = -EINVAL;
    if (r == 0) {
        struct gc_ent *ref;
        struct gc_key k = key(q.a, q.fs, GC_LINK, path);
        const char *cached = gc_get(&k, &ref);
        if (cached) {
            *target = xstrdup(cached);
            gc_release(ref);
        } else {
            struct job *j;
            r = run_simple(&q, J_LINKS, 0, 0, &j);
            if (r == 0) {
                *target = j->target;
                j->target = NULL;
                job_put(j);
            }
        }
    }
    req_end(&q);
    return r;
}

/* ---- extended attributes ---- */

/* Calls fn on the attributes of path: from the cache or the appliance. */
static int with_xattrs(struct timg *t, const char *fs, const char *path,
                       ssize_t (*fn)(const struct gxattrs *x, void *arg), void *arg)
{
    struct req q;
    int r = req_begin(&q, t, fs, path);
    if (r == 1) {
        struct gxattrs none = {NULL, 0};
        return strcmp(path, "/") ? -ENOENT : (int)fn(&none, arg);
    }
    if (r < 0)
        return r;
    struct gc_ent *ref;
    struct gc_key k = key(q.a, q.fs, GC_XATTR, path);
    struct gxattrs *x = gc_get(&k, &ref);
    ssize_t n;
    if (x) {
        n = fn(x, arg);
        gc_release(ref);
    } else {
        struct job *j;
        r = run_simple(&q, J_XATTRS, 0, 0, &j);
        if (r == -ENODEV) {
            struct gxattrs none = {NULL, 0};
            n = fn(&none, arg);
        } else if (r < 0) {
            n = r;
        } else {
            n = fn(j->xattrs, arg);
            job_put(j);
        }
    }
    req_end(&q);
    return (int)n;
}

struct xbuf {
    char *buf;
    size_t size;
    const char *name;
};

static ssize_t list_fn(const struct gxattrs *x, void *arg)
{
    struct xbuf *b = arg;
    size_t total = 0;
    for (size_t i = 0; i < x->n; i++)
        total += strlen(x->v[i].name) + 1;
    if (b->size == 0)
        return (ssize_t)total;
    if (b->size < total)
        return -ERANGE;
    char *p = b->buf;
    for (size_t i = 0; i < x->n; i++) {
        size_t l = strlen(x->v[i].name) + 1;
        memcpy(p, x->v[i].name, l);
        p += l;
    }
    return (ssize_t)total;
}

static ssize_t get_fn(const struct gxattrs *x, void *arg)
{
    struct xbuf *b = arg;
    for (size_t i = 0; i < x->n; i++) {
        if (strcmp(x->v[i].name, b->name))
            continue;
        if (b->size == 0)
            return (ssize_t)x->v[i].len;
        if (b->size < x->v[i].len)
            return -ERANGE;
        memcpy(b->buf, x->v[i].val, x->v[i].len);
        return (ssize_t)x->v[i].len;
    }
    return -ENODATA;
}

ssize_t guest_listxattr(struct timg *t, const char *fs, const char *path, char *buf,
                        size_t size)
{
    struct xbuf b = {buf, size, NULL};
    return with_xattrs(t, fs, path, list_fn, &b);
}

ssize_t guest_getxattr(struct timg *t, const char *fs, const char *path, const char *name,
                       void *buf, size_t size)
{
    if (!name || !*name)
        return -EINVAL;
    struct xbuf b = {buf, size, name};
    return with_xattrs(t, fs, path, get_fn, &b);
}

/* ---- file data ---- */

/* The extent map of a regular file of size bytes, or NULL (read through
 * the appliance).  *ref must be released. */
static const struct gmap *file_map(struct req *q, uint64_t size, struct gc_ent **ref)
{
    struct gc_key k = key(q->a, q->fs, GC_MAP, q->path);
    const struct gmap *m = gc_get(&k, ref);
    if (!m) {
        struct job *j;
        if (run_simple(q, J_MAP, size, 0, &j) < 0)
            return NULL;
        job_put(j);
        k = key(q->a, q->fs, GC_MAP, q->path);
        m = gc_get(&k, ref);
    }
    if (m && !m->direct) {
        gc_release(*ref);
        *ref = NULL;
        return NULL;
    }
    return m;
}

/* Queues chunk ci of a file for reading, unless it is there already. */
static void read_ahead(struct req *q, uint64_t ci, uint64_t size)
{
    uint64_t start = ci * G_CHUNK;
    if (start >= size)
        return;
    struct gc_key k = key(q->a, q->fs, GC_DATA, q->path);
    k.n = ci;
    if (gc_has(&k))
        return;
    struct job *j = job_new(J_PREAD, q->fs, q->path);
    j->off = start;
    j->len = (size_t)VMFS_MIN(G_CHUNK, size - start);
    app_queue_background(q->a, j);
    job_put(j);
}

/* Reads through the appliance, chunk by chunk. */
static ssize_t read_chunks(struct req *q, uint8_t *buf, size_t len, uint64_t off,
                           uint64_t size)
{
    size_t done = 0;
    while (done < len) {
        uint64_t pos = off + done, ci = pos / G_CHUNK, cstart = ci * G_CHUNK;
        struct gc_key k = key(q->a, q->fs, GC_DATA, q->path);
        k.n = ci;
        struct gc_ent *ref = NULL;
        struct job *j = NULL;
        const struct gchunk *c = gc_get(&k, &ref);
        if (!c) {
            int r = run_simple(q, J_PREAD, cstart, (size_t)VMFS_MIN(G_CHUNK, size - cstart),
                               &j);
            if (r < 0)
                return done ? (ssize_t)done : r;
            c = j->chunk;
            if (!c) {
                /* Read ahead meanwhile: it is in the cache, under the
                 * appliance that ran the job (a new one if the first
                 * died). */
                k = key(q->a, q->fs, GC_DATA, q->path);
                k.n = ci;
                c = gc_get(&k, &ref);
            }
            if (!c) {
                job_put(j);
                return done ? (ssize_t)done : -EIO;
            }
        }
        size_t n = 0;
        if (pos - cstart < c->len) {
            n = (size_t)VMFS_MIN(len - done, c->len - (pos - cstart));
            memcpy(buf + done, c->data + (pos - cstart), n);
        }
        gc_release(ref);
        job_put(j);
        if (n == 0)
            break;   /* the file ends early */
        done += n;
    }
    /* Reading on into the second half of a chunk (or up to its end) asks
     * for the next one before it is needed. */
    uint64_t end = off + done, within = end % G_CHUNK;
    if (done > 0 && (within == 0 || within >= G_CHUNK / 2))
        read_ahead(q, end / G_CHUNK + (within ? 1 : 0), size);
    return (ssize_t)done;
}

ssize_t guest_read(struct timg *t, const char *fs, const char *path, void *buf, size_t len,
                   uint64_t off)
{
    struct req q;
    int r = req_begin(&q, t, fs, path);
    if (r == 1)
        return -ENOENT;
    if (r < 0)
        return r;
    struct stat st;
    r = do_stat(&q, &st);
    if (r == 0 && S_ISDIR(st.st_mode))
        r = -EISDIR;
    else if (r == 0 && !S_ISREG(st.st_mode))
        r = -EINVAL;
    if (r < 0) {
        req_end(&q);
        return r;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (off >= size || len == 0) {
        req_end(&q);
        return 0;
    }
    len = (size_t)VMFS_MIN((uint64_t)len, size - off);
    struct gc_ent *ref = NULL;
    const struct gmap *m = file_map(&q, size, &ref);
    ssize_t n;
    if (!q.a) {
        /* Its appliance died and no new one could be had. */
        n = -EIO;
    } else if (m) {
        struct vview v = {t, q.a->fs[q.fs].vol};
        r = g_read_mapped(&v, m, size, buf, len, off);
        n = r < 0 ? r : (ssize_t)len;
        gc_release(ref);
    } else {
        n = read_chunks(&q, buf, len, off, size);
    }
    req_end(&q);
    return n;
}
