/* vmfs — byte sources over files and memory; dispatch to NBD for URIs. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include "vmfs/io.h"

static int file_pread(struct vsrc *s, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = pread(s->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;    /* the file shrank under us */
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Holes by the file system's extent map: a range with no extent is a
 * hole, any extent (written, preallocated, delayed) is data.  Unlike
 * SEEK_DATA, whose answer for preallocated extents depends on what the
 * page cache holds, this stays the same while the file does.
 *
 * An allocation walk asks about one run after the other, from the start
 * of the file to its end: one FIEMAP call fetches the extents ahead of the
 * question, and the next questions are answered from them while they are
 * fresh (a second: the file may be changing under a long-lived view). */
enum { FMAP_MAX = 64 };

struct fmap {
    bool valid;
    uint64_t start, end;         /* the stretch the extents describe */
    struct timespec when;        /* CLOCK_MONOTONIC of the fetch */
    unsigned n;
    uint64_t off[FMAP_MAX], len[FMAP_MAX];   /* merged where contiguous */
};

/* A file source's private state: its last fetched extents. */
struct file_priv {
    pthread_mutex_t lock;        /* guards map */
    struct fmap map;
};

static bool fmap_fresh(const struct fmap *m, uint64_t off)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return m->valid && off >= m->start && off < m->end && now.tv_sec - m->when.tv_sec < 1;
}

/* Fetches the extents of [off, size) into m, as many as one call gives.
 * Returns -1 where the file system has no extent map. */
static int fmap_fetch(int fd, uint64_t off, uint64_t size, struct fmap *m)
{
    struct {
        struct fiemap fm;
        struct fiemap_extent ext[FMAP_MAX];
    } q;
    memset(&q, 0, sizeof q);
    q.fm.fm_start = off;
    q.fm.fm_length = size - off;
    q.fm.fm_extent_count = FMAP_MAX;
    if (ioctl(fd, FS_IOC_FIEMAP, &q.fm) < 0)
        return -1;
    uint32_t cnt = VMFS_MIN(q.fm.fm_mapped_extents, (uint32_t)FMAP_MAX);
    m->n = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        const struct fiemap_extent *e = &q.ext[i];
        if (m->n && m->off[m->n - 1] + m->len[m->n - 1] == e->fe_logical) {
            m->len[m->n - 1] += e->fe_length;
        } else {
            m->off[m->n] = e->fe_logical;
            m->len[m->n++] = e->fe_length;
        }
    }
    m->start = off;
    m->end = size;
    /* A full answer may have more extents after its last one. */
    if (cnt == FMAP_MAX && !(q.ext[cnt - 1].fe_flags & FIEMAP_EXTENT_LAST))
        m->end = VMFS_MIN(size, m->off[m->n - 1] + m->len[m->n - 1]);
    clock_gettime(CLOCK_MONOTONIC, &m->when);
    m->valid = m->end > off;
    return 0;
}

/* Answers from fetched extents for off inside [m->start, m->end). */
static void fmap_answer(const struct fmap *m, uint64_t off, uint64_t len, bool *data,
                        uint64_t *n)
{
    uint64_t limit = VMFS_MIN(off + len, m->end);
    unsigned i = 0;
    while (i < m->n && m->off[i] + m->len[i] <= off)
        i++;
    if (i == m->n || m->off[i] >= limit) {
        *data = false;
        *n = limit - off;
    } else if (m->off[i] > off) {
        *data = false;
        *n = m->off[i] - off;
    } else {
        *data = true;
        *n = VMFS_MIN(off + len, m->off[i] + m->len[i]) - off;
    }
}

static int fiemap_extent(struct vsrc *s, uint64_t off, uint64_t len, bool *data, uint64_t *n)
{
    struct file_priv *p = s->priv;
    pthread_mutex_lock(&p->lock);
    bool have = fmap_fresh(&p->map, off);
    if (have)
        fmap_answer(&p->map, off, len, data, n);
    pthread_mutex_unlock(&p->lock);
    if (have)
        return 0;
    struct fmap got;
    if (fmap_fetch(s->fd, off, s->size, &got) < 0 || !got.valid)
        return -1;
    fmap_answer(&got, off, len, data, n);
    pthread_mutex_lock(&p->lock);
    p->map = got;
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int file_extent(struct vsrc *s, uint64_t off, uint64_t len, bool *data, uint64_t *n)
{
    if (fiemap_extent(s, off, len, data, n) == 0)
        return 0;
    *data = true;
    *n = len;
    off_t d = lseek(s->fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
        if (errno == ENXIO)          /* a hole up to the end of the file */
            *data = false;
        return 0;                    /* no hole support: all data */
    }
    if ((uint64_t)d > off) {
        *data = false;
        *n = VMFS_MIN(len, (uint64_t)d - off);
        return 0;
    }
    off_t h = lseek(s->fd, (off_t)off, SEEK_HOLE);
    if (h > 0 && (uint64_t)h > off)
        *n = VMFS_MIN(len, (uint64_t)h - off);
    return 0;
}

static void file_close(struct vsrc *s)
{
    if (s->fd >= 0)
        close(s->fd);
    struct file_priv *p = s->priv;
    if (p) {
        pthread_mutex_destroy(&p->lock);
        free(p);
    }
}

static const struct vsrc_ops file_ops = {
    .pread = file_pread, .close = file_close, .extent = file_extent,
};

struct vsrc *vsrc_open_file(const char *path, int *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        *err = -errno;
        close(fd);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        *err = -EISDIR;
        close(fd);
        return NULL;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(fd, 0, SEEK_END);
        size = end > 0 ? (uint64_t)end : 0;
    }
    struct vsrc *s = xcalloc(1, sizeof *s);
    s->ops = &file_ops;
    s->fd = fd;
    s->size = size;
    s->name = xstrdup(path);
    struct file_priv *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    s->priv = p;
    return s;
}

bool vsrc_is_uri(const char *s)
{
    static const char *const schemes[] = {
        "nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://",
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(schemes); i++)
        if (!strncmp(s, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

struct vsrc *vsrc_open(const char *path_or_uri, int *err)
{
    if (vsrc_is_uri(path_or_uri))
        return vsrc_open_nbd(path_or_uri, err);
    return vsrc_open_file(path_or_uri, err);
}

struct mem_priv {
    const uint8_t *data;
    void *owned;
};

static int mem_pread(struct vsrc *s, void *buf, size_t len, uint64_t off)
{
    struct mem_priv *m = s->priv;
    memcpy(buf, m->data + off, len);
    return 0;
}

static void mem_close(struct vsrc *s)
{
    struct mem_priv *m = s->priv;
    free(m->owned);
    free(m);
}

static const struct vsrc_ops mem_ops = {.pread = mem_pread, .close = mem_close};

struct vsrc *vsrc_new_mem(const void *data, size_t len, bool copy, const char *name)
{
    struct mem_priv *m = xcalloc(1, sizeof *m);
    if (copy) {
        m->owned = xmalloc(len);
        memcpy(m->owned, data, len);
        m->data = m->owned;
    } else {
        m->data = data;
    }
    struct vsrc *s = xcalloc(1, sizeof *s);
    s->ops = &mem_ops;
    s->fd = -1;
    s->size = len;
    s->name = xstrdup(name ? name : "memory");
    s->priv = m;
    return s;
}

int vsrc_pread(struct vsrc *s, void *buf, size_t len, uint64_t off)
{
    if (!range_in(off, len, s->size))
        return -EIO;
    if (len == 0)
        return 0;
    return s->ops->pread(s, buf, len, off);
}

void vsrc_willneed(struct vsrc *s, uint64_t off, uint64_t len)
{
    if (s->fd >= 0 && len && range_in(off, len, s->size) && off <= INT64_MAX &&
        len <= INT64_MAX)
        (void)posix_fadvise(s->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
}

int vsrc_extent(struct vsrc *s, uint64_t off, uint64_t len, bool *data, uint64_t *n)
{
    if (len == 0 || !range_in(off, len, s->size))
        return -EIO;
    *data = true;
    *n = len;
    if (!s->ops->extent)
        return 0;
    bool d = true;
    uint64_t got = 0;
    int r = s->ops->extent(s, off, len, &d, &got);
    if (r == -ENOTSUP)
        return 0;
    if (r < 0)
        return r;
    if (got == 0 || got > len)    /* a confused op: believe nothing */
        return 0;
    *data = d;
    *n = got;
    return 0;
}

void vsrc_close(struct vsrc *s)
{
    if (!s)
        return;
    s->ops->close(s);
    free(s->name);
    free(s);
}
