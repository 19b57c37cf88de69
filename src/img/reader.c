/* vmfs — the generic reader: runs from the drivers, walked down the backing
 * chain, turned into reads, splice plans, holes and allocation figures. */
#include "config.h"

#include <errno.h>

#include "vmfs/image.h"

/* The first run of [off, off + len) as seen through the chain: never
 * VRUN_BACKING.  *li is the layer that answered (for VRUN_DECODE). */
static int resolve_as(struct vimage *img, uint64_t off, uint64_t len, struct vrun *run,
                      size_t *li, bool alloc)
{
    for (size_t i = 0; i < img->nlayers; i++) {
        struct vlayer *l = img->layers[i];
        if (off >= l->size) {          /* past a shorter backing file */
            run->kind = VRUN_ZERO;
            run->len = len;
            return 0;
        }
        len = VMFS_MIN(len, l->size - off);
        int r = alloc && l->drv->map_alloc ? l->drv->map_alloc(l, off, len, run)
                                           : l->drv->map(l, off, len, run);
        if (r < 0)
            return r;
        if (run->len == 0 || run->len > len) {
            vlayer_problem(l, "internal error: bad run length at offset %llu",
                           (unsigned long long)off);
            run->kind = VRUN_ERROR;
            run->err = EIO;
            run->len = len;
        }
        if (run->kind == VRUN_DATA && !range_in(run->src_off, run->len, run->src->size)) {
            vlayer_problem(l, "data at offset %llu lies outside %s",
                           (unsigned long long)run->src_off, run->src->name);
            run->kind = VRUN_ERROR;
            run->err = EIO;
        }
        if (run->kind != VRUN_BACKING) {
            *li = i;
            return 0;
        }
        len = run->len;
    }
    run->len = len;
    if (img->chain_broken) {
        run->kind = VRUN_ERROR;
        run->err = EIO;
    } else {
        run->kind = VRUN_ZERO;
    }
    *li = 0;
    return 0;
}

static int resolve(struct vimage *img, uint64_t off, uint64_t len, struct vrun *run,
                   size_t *li)
{
    return resolve_as(img, off, len, run, li, false);
}

static int check_range(struct vimage *img, uint64_t off, size_t len)
{
    if (img->top_failed || img->nlayers == 0)
        return -EIO;
    if (!range_in(off, len, img->size))
        return -EINVAL;
    return 0;
}

int vimage_read(struct vimage *img, void *buf, size_t len, uint64_t off)
{
    return vimage_read_unit(img, buf, len, off, NULL);
}

/* The unit of run (met at off, read up to end) when the read covers only
 * part of it. */
static void note_unit(const struct vimage *img, const struct vrun *run, uint64_t off,
                      uint64_t end, struct vunit *unit)
{
    if (!unit || unit->len || run->kind != VRUN_DECODE || run->unit_len == 0 ||
        run->unit_off > off || off - run->unit_off >= run->unit_len ||
        !range_in(run->unit_off, run->unit_len, img->size))
        return;                   /* none wanted, one already, or not said */
    if (run->unit_off < off || run->unit_off + run->unit_len > end)
        *unit = (struct vunit){run->unit_off, run->unit_len};
}

int vimage_read_unit(struct vimage *img, void *buf, size_t len, uint64_t off,
                     struct vunit *unit)
{
    if (unit)
        *unit = (struct vunit){0, 0};
    int r = check_range(img, off, len);
    if (r < 0)
        return r;
    uint64_t end = off + len;
    char *p = buf;
    while (len > 0) {
        struct vrun run;
        size_t li;
        r = resolve(img, off, len, &run, &li);
        if (r < 0)
            return r;
        size_t n = (size_t)run.len;
        switch (run.kind) {
        case VRUN_DATA:
            r = vsrc_pread(run.src, p, n, run.src_off);
            break;
        case VRUN_ZERO:
            memset(p, 0, n);
            break;
        case VRUN_DECODE:
            r = img->layers[li]->drv->decode(img->layers[li], p, n, off);
            if (r == 0)
                note_unit(img, &run, off, end, unit);
            break;
        default:
            r = -(run.err ? run.err : EIO);
            break;
        }
        if (r < 0)
            return r;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static struct vseg *plan_add(struct vplan *plan)
{
    if (plan->nsegs == plan->cap) {
        plan->cap = plan->cap ? plan->cap * 2 : 8;
        plan->segs = xrealloc(plan->segs, plan->cap * sizeof *plan->segs);
    }
    return &plan->segs[plan->nsegs++];
}

int vimage_plan(struct vimage *img, uint64_t off, size_t len, struct vplan *plan)
{
    int r = check_range(img, off, len);
    if (r < 0)
        return r;
    size_t pos = 0;
    char *buf = NULL;      /* for the parts that are not file bytes */
    while (pos < len) {
        struct vrun run;
        size_t li;
        r = resolve(img, off + pos, len - pos, &run, &li);
        if (r < 0)
            return r;
        size_t n = (size_t)run.len;
        if (run.kind == VRUN_ERROR)
            return -(run.err ? run.err : EIO);
        if (run.kind == VRUN_DATA && run.src->fd >= 0) {
            struct vseg *last = plan->nsegs ? &plan->segs[plan->nsegs - 1] : NULL;
            if (last && last->fd == run.src->fd && last->fd_off + last->len == run.src_off) {
                last->len += n;
            } else {
                struct vseg *s = plan_add(plan);
                *s = (struct vseg){.fd = run.src->fd, .fd_off = run.src_off, .len = n};
            }
            pos += n;
            continue;
        }
        if (!buf) {
            buf = xmalloc(len);
            plan->bufs = xrealloc(plan->bufs, (plan->nbufs + 1) * sizeof *plan->bufs);
            plan->bufs[plan->nbufs++] = buf;
        }
        char *p = buf + pos;
        if (run.kind == VRUN_DATA)
            r = vsrc_pread(run.src, p, n, run.src_off);
        else if (run.kind == VRUN_ZERO)
            memset(p, 0, n);
        else
            r = img->layers[li]->drv->decode(img->layers[li], p, n, off + pos);
        if (r < 0)
            return r;
        struct vseg *last = plan->nsegs ? &plan->segs[plan->nsegs - 1] : NULL;
        if (last && last->fd < 0 && (char *)last->mem + last->len == p) {
            last->len += n;
        } else {
            struct vseg *s = plan_add(plan);
            *s = (struct vseg){.fd = -1, .mem = p, .len = n};
        }
        pos += n;
    }
    return 0;
}

void vplan_free(struct vplan *plan)
{
    free(plan->segs);
    for (size_t i = 0; i < plan->nbufs; i++)
        free(plan->bufs[i]);
    free(plan->bufs);
    memset(plan, 0, sizeof *plan);
}

int vrun_refine_holes(struct vrun *run)
{
    if (run->kind != VRUN_DATA || !run->src)
        return 0;
    bool data;
    uint64_t n;
    if (vsrc_extent(run->src, run->src_off, run->len, &data, &n) < 0 || n == 0)
        return 0;
    if (!data)
        run->kind = VRUN_ZERO;
    run->len = VMFS_MIN(run->len, n);
    return 0;
}

static bool run_is_data(const struct vrun *run) { return run->kind != VRUN_ZERO; }

int vimage_extent(struct vimage *img, uint64_t off, bool *data, uint64_t *len)
{
    if (img->top_failed || img->nlayers == 0 || off >= img->size)
        return -ENXIO;
    struct vrun run;
    size_t li;
    int r = resolve_as(img, off, img->size - off, &run, &li, true);
    if (r < 0)
        return r;
    *data = run_is_data(&run);
    uint64_t total = run.len;
    while (off + total < img->size) {
        r = resolve_as(img, off + total, img->size - off - total, &run, &li, true);
        if (r < 0 || run_is_data(&run) != *data)
            break;
        total += run.len;
    }
    *len = total;
    return 0;
}

/* The data bytes of [off, off + len); gives up when *stop is set (stop may
 * be NULL), setting *stopped. */
static uint64_t count_runs(struct vimage *img, uint64_t off, uint64_t len, const int *stop,
                           bool *stopped)
{
    *stopped = false;
    if (img->top_failed || img->nlayers == 0 || !range_in(off, len, img->size))
        return 0;
    uint64_t bytes = 0, end = off + len;
    while (off < end) {
        if (stop && __atomic_load_n(stop, __ATOMIC_RELAXED)) {
            *stopped = true;
            break;
        }
        struct vrun run;
        size_t li;
        if (resolve_as(img, off, end - off, &run, &li, true) < 0)
            break;
        if (run_is_data(&run))
            bytes += run.len;
        off += run.len;
    }
    return bytes;
}

uint64_t vimage_count_data(struct vimage *img, uint64_t off, uint64_t len)
{
    bool stopped;
    return count_runs(img, off, len, NULL, &stopped);
}

/* The count is made in parts that every thread asking for it takes in
 * turn: a request that comes while the count runs helps with the parts
 * left instead of only waiting.  Parts are large enough that splitting
 * costs nothing measurable (one more run looked up per part). */
#define ALLOC_PART_MIN (1ull << 30)

static void part_range(const struct vimage *img, unsigned i, uint64_t *off, uint64_t *len)
{
    uint64_t part = (img->size + img->alloc_nparts - 1) / img->alloc_nparts;
    *off = VMFS_MIN(img->size, (uint64_t)i * part);
    *len = VMFS_MIN(img->size - *off, part);
}

/* Called locked: the first part nobody counts or has counted, or -1. */
static int take_part(struct vimage *img)
{
    if (img->alloc_nparts == 0) {
        uint64_t n = img->size / ALLOC_PART_MIN;
        img->alloc_nparts = (unsigned)VMFS_MAX(1, VMFS_MIN(n, (uint64_t)VIMAGE_ALLOC_PARTS));
        img->alloc_left = img->alloc_nparts;
    }
    for (unsigned i = 0; i < img->alloc_nparts; i++) {
        if (img->alloc_part[i] == 0) {
            img->alloc_part[i] = 1;
            return (int)i;
        }
    }
    return -1;
}

static bool allocated(struct vimage *img, const int *stop, uint64_t *out)
{
    pthread_mutex_lock(&img->lock);
    while (!img->alloc_known) {
        int i = take_part(img);
        if (i < 0) {                  /* all taken: wait for the others */
            pthread_cond_wait(&img->alloc_done, &img->lock);
            continue;
        }
        uint64_t off, len;
        part_range(img, (unsigned)i, &off, &len);
        pthread_mutex_unlock(&img->lock);
        bool stopped;
        uint64_t bytes = count_runs(img, off, len, stop, &stopped);
        pthread_mutex_lock(&img->lock);
        if (stopped) {                /* someone else counts it */
            img->alloc_part[i] = 0;
            pthread_cond_broadcast(&img->alloc_done);
            pthread_mutex_unlock(&img->lock);
            *out = 0;
            return false;
        }
        img->alloc_part[i] = 2;
        img->alloc_sum += bytes;
        if (--img->alloc_left == 0) {
            img->alloc_bytes = img->alloc_sum;
            img->alloc_known = true;
            pthread_cond_broadcast(&img->alloc_done);
        }
    }
    *out = img->alloc_bytes;
    pthread_mutex_unlock(&img->lock);
    return true;
}

uint64_t vimage_allocated(struct vimage *img)
{
    uint64_t bytes;
    allocated(img, NULL, &bytes);
    return bytes;
}

bool vimage_allocated_unless(struct vimage *img, const int *stop, uint64_t *bytes)
{
    return allocated(img, stop, bytes);
}
