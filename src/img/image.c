/* vmfs — opening an image: probe, the top layer, its backing chain (with
 * loop, depth and confinement rules), problems, and the report. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vmfs/cache.h"
#include "vmfs/image.h"
#include "vmfs/report.h"

#define PROBE_BYTES 4096

/* Extensions of formats whose files are listed even when their content is
 * not readable, so that info can say what is wrong. */
static const char *const image_exts[] = {
    ".qcow2", ".qcow", ".qcow2c", ".vhdx", ".avhdx", ".vhd", ".avhd", ".vmdk",
    ".vdi", ".qed", ".img", ".raw", ".iso", ".dd",
};

static bool has_image_extension(const char *path)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash))
        return false;
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(image_exts); i++)
        if (!strcasecmp(dot, image_exts[i]))
            return true;
    return false;
}

void vimage_problem(struct vimage *img, const char *fmt, ...)
{
    va_list ap;
    char *msg;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    va_end(ap);
    pthread_mutex_lock(&img->lock);
    for (size_t i = 0; i < img->nproblems; i++) {
        if (!strcmp(img->problems[i], msg)) {
            pthread_mutex_unlock(&img->lock);
            free(msg);
            return;
        }
    }
    img->problems = xrealloc(img->problems, (img->nproblems + 1) * sizeof *img->problems);
    img->problems[img->nproblems++] = msg;
    bool quiet = img->quiet;
    pthread_mutex_unlock(&img->lock);
    if (!quiet)
        vmfs_log(VMFS_LOG_WARN, "%s: %s", img->path, msg);
}

void vlayer_problem(struct vlayer *l, const char *fmt, ...)
{
    va_list ap;
    char *msg;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    va_end(ap);
    if (l->img->nlayers > 0 && l->img->layers[0] != l)
        vimage_problem(l->img, "backing file %s: %s", l->path, msg);
    else
        vimage_problem(l->img, "%s", msg);
    free(msg);
}

size_t vimage_problem_count(struct vimage *img)
{
    pthread_mutex_lock(&img->lock);
    size_t n = img->nproblems;
    pthread_mutex_unlock(&img->lock);
    return n;
}

size_t vimage_problems(struct vimage *img, char ***out)
{
    pthread_mutex_lock(&img->lock);
    size_t n = img->nproblems;
    char **v = xcalloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = xstrdup(img->problems[i]);
    pthread_mutex_unlock(&img->lock);
    *out = v;
    return n;
}

/* Joins a reference with the directory of the file that makes it, the way
 * qemu resolves relative backing names. */
static char *resolve_ref(const char *from, const char *name)
{
    if (name[0] == '/')
        return xstrdup(name);
    char *copy = xstrdup(from);
    char *dir = dirname(copy);
    char *r = xasprintf("%s/%s", dir, name);
    free(copy);
    return r;
}

/* Removes "." and ".." and duplicate slashes without touching the disk. */
static char *lexical_normalize(const char *path)
{
    size_t n = strlen(path);
    char *out = xmalloc(n + 2);
    size_t o = 0;
    const char *p = path;
    out[o++] = '/';
    while (*p) {
        while (*p == '/')
            p++;
        const char *s = p;
        while (*p && *p != '/')
            p++;
        size_t len = (size_t)(p - s);
        if (len == 0 || (len == 1 && s[0] == '.'))
            continue;
        if (len == 2 && s[0] == '.' && s[1] == '.') {
            if (o > 1) {
                o--;
                while (o > 1 && out[o - 1] != '/')
                    o--;
            }
            continue;
        }
        if (o > 1 && out[o - 1] != '/')
            out[o++] = '/';
        memcpy(out + o, s, len);
        o += len;
    }
    if (o > 1 && out[o - 1] == '/')
        o--;
    out[o] = 0;
    return out;
}

static bool path_under(const char *path, const char *root)
{
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/')
        n--;
    if (n == 1 && root[0] == '/')
        return true;
    return !strncmp(path, root, n) && (path[n] == '/' || path[n] == 0);
}

/* A file is inside SOURCE when its real location is: a symbolic link in
 * SOURCE that leads out does not take a backing reference with it.  A file
 * that does not exist is judged by its name. */
static bool inside_root(const char *path, const char *root)
{
    if (!root)
        return true;
    if (!root[0])
        return false;      /* a source with no local directory */
    CLEANUP_FREE char *real = realpath(path, NULL);
    if (real)
        return path_under(real, root);
    CLEANUP_FREE char *lex = lexical_normalize(path);
    return path_under(lex, root);
}

int vlayer_open_related(struct vlayer *l, const char *name, const char *what,
                        struct vsrc **out, char **resolved)
{
    char *path = resolve_ref(l->path, name);
    if (l->opts->root && !l->opts->allow_external && !inside_root(path, l->opts->root)) {
        vlayer_problem(l, "%s %s is outside the source directory: refused "
                       "(mount with -o allow_external_backing to allow it)", what, path);
        free(path);
        return -EACCES;
    }
    int err = 0;
    struct vsrc *s = vsrc_open_file(path, &err);
    if (!s) {
        vlayer_problem(l, "%s %s cannot be opened: %s", what, path, strerror(-err));
        free(path);
        return err;
    }
    *out = s;
    if (resolved)
        *resolved = path;
    else
        free(path);
    return 0;
}

static bool exists_from(const struct vlayer *l, const char *name, char **resolved)
{
    char *path = resolve_ref(l->path, name);
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) {
        *resolved = path;
        return true;
    }
    free(path);
    return false;
}

void vlayer_set_backing_candidates(struct vlayer *l, const char *const *names, size_t n)
{
    char *pick = NULL;
    for (size_t i = 0; i < n && !pick; i++) {
        if (!names[i] || !names[i][0])
            continue;
        char *r = NULL;
        if (exists_from(l, names[i], &r)) {
            free(r);
            pick = xstrdup(names[i]);
            break;
        }
        /* A Windows path: the file of that name beside the image. */
        const char *bs = strrchr(names[i], '\\');
        bool drive = names[i][0] && names[i][1] == ':';
        if (bs || drive) {
            const char *base = bs ? bs + 1 : names[i] + 2;
            if (*base && exists_from(l, base, &r)) {
                free(r);
                pick = xstrdup(base);
            }
        }
    }
    if (!pick) {
        for (size_t i = 0; i < n && !pick; i++)
            if (names[i] && names[i][0])
                pick = xstrdup(names[i]);
    }
    free(l->backing_name);
    l->backing_name = pick;
}

static void layer_free(struct vlayer *l)
{
    if (!l)
        return;
    if (l->drv && l->drv->close && l->priv)
        l->drv->close(l);
    if (l->cache_owner)
        vcache_drop_owner(l->cache_owner);
    vsrc_close(l->file);
    free(l->path);
    free(l->backing_name);
    free(l->backing_fmt);
    free(l);
}

static void add_layer(struct vimage *img, struct vlayer *l)
{
    img->layers = xrealloc(img->layers, (img->nlayers + 1) * sizeof *img->layers);
    img->layers[img->nlayers++] = l;
}

const struct vfmt_driver *vimage_probe_file(const char *path, bool raw_fallback)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct stat st;
    uint8_t head[PROBE_BYTES];
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        n = pread(fd, head, sizeof head, 0);
    close(fd);
    if (n < 0)
        return NULL;
    return vfmt_probe(head, (size_t)n, (uint64_t)st.st_size, path, raw_fallback);
}

size_t vimage_related_files(const char *path, char ***paths)
{
    *paths = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return 0;
    struct stat st;
    uint8_t head[PROBE_BYTES];
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        n = pread(fd, head, sizeof head, 0);
    close(fd);
    if (n < 0)
        return 0;
    const struct vfmt_driver *drv = vfmt_probe(head, (size_t)n, (uint64_t)st.st_size, path,
                                               false);
    if (!drv || !drv->related_files)
        return 0;
    char **names = NULL;
    size_t cnt = drv->related_files(path, head, (size_t)n, &names);
    for (size_t i = 0; i < cnt; i++) {
        char *full = resolve_ref(path, names[i]);
        free(names[i]);
        names[i] = lexical_normalize(full);
        free(full);
    }
    *paths = names;
    return cnt;
}

bool vimage_is_candidate(const char *path, bool raw_fallback)
{
    return raw_fallback || has_image_extension(path) || vimage_probe_file(path, false);
}

/* Opens one file as a layer with the given driver (NULL: probe).  Returns
 * the layer (added to img) or NULL after recording the problem. */
static struct vlayer *open_layer(struct vimage *img, const char *path,
                                 const struct vfmt_driver *drv, bool raw_fallback,
                                 const char *role)
{
    int err = 0;
    struct vsrc *file = img->nlayers ? vsrc_open_file(path, &err) : vsrc_open(path, &err);
    if (!file) {
        vimage_problem(img, "%s %s cannot be opened: %s", role, path, strerror(-err));
        return NULL;
    }
    if (!drv) {
        uint8_t head[PROBE_BYTES];
        size_t n = (size_t)VMFS_MIN(file->size, (uint64_t)sizeof head);
        if (vsrc_pread(file, head, n, 0) < 0) {
            vimage_problem(img, "%s %s cannot be read", role, path);
            vsrc_close(file);
            return NULL;
        }
        drv = vfmt_probe(head, n, file->size, path, raw_fallback);
        if (!drv) {
            const char *what = file->size == 0 ? "is empty (0 bytes): no disk image in it"
                                               : "is not a disk image vmfs can read "
                                                 "(no known format header)";
            if (img->nlayers == 0)
                vimage_problem(img, "the file %s", what);
            else
                vimage_problem(img, "%s %s %s", role, path, what);
            vsrc_close(file);
            return NULL;
        }
    }
    struct vlayer *l = xcalloc(1, sizeof *l);
    l->drv = drv;
    l->file = file;
    l->path = xstrdup(path);
    l->opts = &img->opts;
    l->img = img;
    l->cache_owner = vcache_new_owner();
    add_layer(img, l);
    int r = drv->open(l);
    if (r < 0) {
        if (img->nproblems == 0)
            vlayer_problem(l, "cannot be read as %s: %s", drv->name, strerror(-r));
        img->nlayers--;
        layer_free(l);
        return NULL;
    }
    return l;
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Follows backing references from the last layer, iteratively. */
static void open_chain(struct vimage *img)
{
    unsigned max = img->opts.max_chain ? img->opts.max_chain : VMFS_DEFAULT_MAX_CHAIN;
    for (;;) {
        struct vlayer *cur = img->layers[img->nlayers - 1];
        if (!cur->backing_name)
            return;
        if (img->nlayers >= max) {
            vimage_problem(img, "backing chain is deeper than %u files (at %s): "
                           "reads that need the rest fail", max, cur->path);
            img->chain_broken = true;
            return;
        }
        char *path = resolve_ref(cur->path, cur->backing_name);
        for (size_t i = 0; i < img->nlayers; i++) {
            if (same_file(path, img->layers[i]->path)) {
                vimage_problem(img, "backing loop: %s refers back to %s",
                               cur->path, img->layers[i]->path);
                img->chain_broken = true;
                free(path);
                return;
            }
        }
        if (img->opts.root && !img->opts.allow_external && !inside_root(path, img->opts.root)) {
            vimage_problem(img, "backing file %s is outside the source directory: refused "
                           "(mount with -o allow_external_backing to allow it)", path);
            img->chain_broken = true;
            free(path);
            return;
        }
        const struct vfmt_driver *drv = NULL;
        if (cur->backing_fmt && cur->backing_fmt[0]) {
            drv = vfmt_by_name(cur->backing_fmt);
            if (!drv) {
                vimage_problem(img, "backing file %s has format '%s', which vmfs cannot read",
                               path, cur->backing_fmt);
                img->chain_broken = true;
                free(path);
                return;
            }
        }
        struct vlayer *l = open_layer(img, path, drv, true, "backing file");
        free(path);
        if (!l) {
            img->chain_broken = true;
            return;
        }
    }
}

struct vimage *vimage_open(const char *path, const struct vopen_opts *opts,
                           long snap_index, bool raw_fallback)
{
    struct vimage *img = xcalloc(1, sizeof *img);
    pthread_mutex_init(&img->lock, NULL);
    pthread_cond_init(&img->alloc_done, NULL);
    img->refs = 1;
    img->path = xstrdup(path);
    img->snap_index = snap_index;
    if (opts)
        img->opts = *opts;

    img->quiet = true;      /* not logged until we know it is an image */
    struct vlayer *top = open_layer(img, path, NULL, raw_fallback, "image");
    img->quiet = false;
    if (!top) {
        /* Not an image at all: nothing to show.  Damaged but recognisable
         * (format extension, or a driver that claimed it): show it. */
        bool claimed = img->nproblems > 0 && (has_image_extension(path) || raw_fallback ||
                                              vimage_probe_file(path, false));
        if (!claimed) {
            vimage_unref(img);
            return NULL;
        }
        img->top_failed = true;
        for (size_t i = 0; i < img->nproblems; i++)
            vmfs_log(VMFS_LOG_WARN, "%s: %s", img->path, img->problems[i]);
        return img;
    }
    for (size_t i = 0; i < img->nproblems; i++)
        vmfs_log(VMFS_LOG_WARN, "%s: %s", img->path, img->problems[i]);
    if (snap_index >= 0) {
        if (!top->drv->snapshot_select || (size_t)snap_index >= vimage_snapshot_count(img) ||
            top->drv->snapshot_select(top, (size_t)snap_index) < 0) {
            vimage_problem(img, "snapshot %ld cannot be opened", snap_index);
            img->nlayers = 0;
            layer_free(top);
            img->top_failed = true;
            return img;
        }
    }
    img->size = top->size;
    open_chain(img);
    return img;
}

void vimage_ref(struct vimage *img)
{
    pthread_mutex_lock(&img->lock);
    img->refs++;
    pthread_mutex_unlock(&img->lock);
}

void vimage_unref(struct vimage *img)
{
    if (!img)
        return;
    pthread_mutex_lock(&img->lock);
    unsigned left = --img->refs;
    pthread_mutex_unlock(&img->lock);
    if (left)
        return;
    for (size_t i = 0; i < img->nlayers; i++)
        layer_free(img->layers[i]);
    free(img->layers);
    for (size_t i = 0; i < img->nproblems; i++)
        free(img->problems[i]);
    free(img->problems);
    free(img->path);
    pthread_cond_destroy(&img->alloc_done);
    pthread_mutex_destroy(&img->lock);
    free(img);
}

const char *vimage_format(const struct vimage *img)
{
    return img->nlayers ? img->layers[0]->drv->name : "unknown";
}

size_t vimage_snapshot_count(const struct vimage *img)
{
    if (!img->nlayers || !img->layers[0]->drv->snapshot_count)
        return 0;
    return img->layers[0]->drv->snapshot_count(img->layers[0]);
}

const struct vsnap *vimage_snapshot(const struct vimage *img, size_t i)
{
    if (i >= vimage_snapshot_count(img))
        return NULL;
    return img->layers[0]->drv->snapshot_get(img->layers[0], i);
}

static void report_snapshot(struct rep *o, const struct vsnap *s)
{
    char date[64] = "";
    time_t t = (time_t)s->date_sec;
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", &tm);
    rep_set_str(o, "id", s->id);
    rep_set_str(o, "name", s->name);
    rep_set_size(o, "virtual_size", s->disk_size);
    rep_set_size(o, "vm_state_size", s->vm_state_size);
    rep_set_str(o, "date", date);
    rep_set_i64(o, "date_sec", s->date_sec);
    uint64_t ns = s->vm_clock_nsec;
    rep_set_strf(o, "vm_clock", "%02llu:%02llu:%02llu.%03llu",
                 (unsigned long long)(ns / 3600000000000ull),
                 (unsigned long long)(ns / 60000000000ull % 60),
                 (unsigned long long)(ns / 1000000000ull % 60),
                 (unsigned long long)(ns / 1000000ull % 1000));
}

void vimage_report(struct vimage *img, struct rep *root)
{
    struct stat st;
    bool have_st = stat(img->path, &st) == 0;
    uint64_t data = vimage_allocated(img);   /* may find problems: first */
    char **problems;
    size_t np = vimage_problems(img, &problems);

    rep_set_str(root, "file", img->path);
    rep_set_str(root, "format", vimage_format(img));
    rep_set_str(root, "status", np ? "damaged" : "ok");
    rep_set_size(root, "virtual_size", img->size);
    uint64_t fsize = have_st ? (uint64_t)st.st_size : img->nlayers ? img->layers[0]->file->size : 0;
    rep_set_size(root, "file_size", fsize);
    rep_set_size(root, "allocated_size", have_st ? (uint64_t)st.st_blocks * 512 : 0);
    rep_set_size(root, "data_size", data);
    if (img->snap_index >= 0 && img->nlayers) {
        const struct vsnap *s = img->layers[0]->drv->snapshot_get(img->layers[0],
                                                                 (size_t)img->snap_index);
        struct rep *o = rep_set_object(root, "snapshot");
        if (s)
            report_snapshot(o, s);
    }
    if (img->nlayers && img->layers[0]->drv->report) {
        struct rep *f = rep_set_object(root, img->layers[0]->drv->name);
        img->layers[0]->drv->report(img->layers[0], f);
    }
    struct rep *chain = rep_set_array(root, "backing_chain");
    for (size_t i = 1; i < img->nlayers; i++) {
        struct rep *o = rep_add_object(chain);
        rep_set_str(o, "file", img->layers[i]->path);
        rep_set_str(o, "format", img->layers[i]->drv->name);
        rep_set_size(o, "virtual_size", img->layers[i]->size);
    }
    if (img->snap_index < 0) {
        struct rep *snaps = rep_set_array(root, "snapshots");
        size_t n = vimage_snapshot_count(img);
        for (size_t i = 0; i < n; i++)
            report_snapshot(rep_add_object(snaps), vimage_snapshot(img, i));
    }
    for (size_t i = 0; i < np; i++)
        free(problems[i]);
    free(problems);
}

void vimage_report_problems(struct vimage *img, struct rep *root)
{
    char **problems;
    size_t np = vimage_problems(img, &problems);
    struct rep *p = rep_set_array(root, "problems");
    for (size_t i = 0; i < np; i++) {
        rep_add_str(p, problems[i]);
        free(problems[i]);
    }
    free(problems);
}
