/* vmfs — views: a disk (an image or a snapshot) or one volume inside it,
 * read the same way by FUSE and by the NBD server. */
#include "config.h"

#include <errno.h>

#include "vmfs/tree.h"

static int disk_read(void *ctx, void *buf, size_t len, uint64_t off)
{
    return vimage_read(ctx, buf, len, off);
}

const struct vlayout *tree_layout(struct timg *t)
{
    pthread_mutex_lock(&t->view_lock);
    if (!t->layout && !t->img->top_failed) {
        struct vdisk d = {.size = t->img->size, .read = disk_read, .ctx = t->img};
        t->layout = vlayout_scan(&d);
        if (t->layout) {
            for (size_t i = 0; i < t->layout->nproblems; i++)
                vimage_problem(t->img, "%s", t->layout->problems[i]);
            t->vol_alloc = xmalloc((t->layout->nvols + 1) * sizeof *t->vol_alloc);
            for (size_t i = 0; i < t->layout->nvols; i++)
                t->vol_alloc[i] = UINT64_MAX;
        }
    }
    const struct vlayout *lay = t->layout;
    pthread_mutex_unlock(&t->view_lock);
    return lay;
}

static const struct vvolume *volume(const struct vview *v)
{
    if (v->vol < 0)
        return NULL;
    const struct vlayout *lay = tree_layout(v->t);
    if (!lay || (size_t)v->vol >= lay->nvols)
        return NULL;
    return &lay->vols[v->vol];
}

uint64_t vview_size(const struct vview *v)
{
    const struct vvolume *vol = volume(v);
    return vol ? vol->size : v->t->img->size;
}

/* Calls fn on each disk-contiguous piece of [off, off + len) of a volume. */
static int each_piece(const struct vview *v, uint64_t off, uint64_t len,
                      int (*fn)(const struct vview *v, uint64_t disk_off, uint64_t n,
                                uint64_t done, void *arg),
                      void *arg)
{
    const struct vvolume *vol = volume(v);
    if (!vol)
        return fn(v, off, len, 0, arg);
    if (!range_in(off, len, vol->size))
        return -EINVAL;
    uint64_t done = 0;
    while (done < len) {
        uint64_t disk_off, n;
        vvol_map(vol, off + done, len - done, &disk_off, &n);
        if (n == 0 || !range_in(disk_off, n, v->t->img->size))
            return -EIO;
        int r = fn(v, disk_off, n, done, arg);
        if (r < 0)
            return r;
        done += n;
    }
    return 0;
}

struct read_arg {
    char *buf;
    uint64_t off;            /* of the read in the view */
    struct vunit *unit;      /* NULL: not wanted */
};

/* Where a unit met by a volume's piece (view offset voff, disk offset
 * disk_off) lies in the volume: as far as the volume maps it contiguously
 * from its start, or nowhere. */
static void unit_in_volume(const struct vvolume *vol, uint64_t voff, uint64_t disk_off,
                           struct vunit *u)
{
    uint64_t vs, d, n;
    if (u->off <= disk_off) {
        if (disk_off - u->off > voff) {     /* it starts before the volume */
            u->len = 0;
            return;
        }
        vs = voff - (disk_off - u->off);
    } else {
        vs = voff + (u->off - disk_off);
    }
    if (vs >= vol->size) {
        u->len = 0;
        return;
    }
    vvol_map(vol, vs, VMFS_MIN(u->len, vol->size - vs), &d, &n);
    *u = d == u->off ? (struct vunit){vs, n} : (struct vunit){0, 0};
}

static int read_piece(const struct vview *v, uint64_t disk_off, uint64_t n, uint64_t done,
                      void *arg)
{
    struct read_arg *a = arg;
    struct vunit u = {0, 0};
    bool want = a->unit && a->unit->len == 0;
    int r = vimage_read_unit(v->t->img, a->buf + done, (size_t)n, disk_off,
                             want ? &u : NULL);
    if (r == 0 && u.len) {
        const struct vvolume *vol = volume(v);
        if (vol)
            unit_in_volume(vol, a->off + done, disk_off, &u);
        *a->unit = u;
    }
    return r;
}

int vview_read(const struct vview *v, void *buf, size_t len, uint64_t off)
{
    return vview_read_unit(v, buf, len, off, NULL);
}

int vview_read_unit(const struct vview *v, void *buf, size_t len, uint64_t off,
                    struct vunit *unit)
{
    if (unit)
        *unit = (struct vunit){0, 0};
    struct read_arg a = {buf, off, unit};
    return each_piece(v, off, len, read_piece, &a);
}

static int plan_piece(const struct vview *v, uint64_t disk_off, uint64_t n, uint64_t done,
                      void *arg)
{
    return vimage_plan(v->t->img, disk_off, (size_t)n, arg);
}

int vview_plan(const struct vview *v, uint64_t off, size_t len, struct vplan *plan)
{
    return each_piece(v, off, len, plan_piece, plan);
}

int vview_extent(const struct vview *v, uint64_t off, bool *data, uint64_t *len)
{
    const struct vvolume *vol = volume(v);
    if (!vol)
        return vimage_extent(v->t->img, off, data, len);
    if (off >= vol->size)
        return -ENXIO;
    /* Piece by piece until the kind changes. */
    uint64_t total = 0;
    bool first = true;
    while (off + total < vol->size) {
        uint64_t disk_off, n, elen;
        bool d;
        vvol_map(vol, off + total, vol->size - off - total, &disk_off, &n);
        if (n == 0)
            return -EIO;
        int r = vimage_extent(v->t->img, disk_off, &d, &elen);
        if (r < 0)
            return r;
        elen = VMFS_MIN(elen, n);
        if (first) {
            *data = d;
            first = false;
        } else if (d != *data) {
            break;
        }
        total += elen;
    }
    *len = total;
    return 0;
}

static int count_piece(const struct vview *v, uint64_t disk_off, uint64_t n, uint64_t done,
                       void *arg)
{
    *(uint64_t *)arg += vimage_count_data(v->t->img, disk_off, n);
    return 0;
}

uint64_t vview_allocated(const struct vview *v)
{
    const struct vvolume *vol = volume(v);
    if (!vol)
        return vimage_allocated(v->t->img);
    pthread_mutex_lock(&v->t->view_lock);
    uint64_t known = v->t->vol_alloc[v->vol];
    pthread_mutex_unlock(&v->t->view_lock);
    if (known != UINT64_MAX)
        return known;
    uint64_t bytes = 0;
    if (vol->size)
        each_piece(v, 0, vol->size, count_piece, &bytes);  /* a bad piece ends the count */
    pthread_mutex_lock(&v->t->view_lock);
    v->t->vol_alloc[v->vol] = bytes;
    pthread_mutex_unlock(&v->t->view_lock);
    return bytes;
}
