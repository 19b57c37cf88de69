/* vmfs — byte sources over files and memory. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

static void file_close(struct vsrc *s)
{
    if (s->fd >= 0)
        close(s->fd);
}

static const struct vsrc_ops file_ops = {file_pread, file_close};

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
    return s;
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

static const struct vsrc_ops mem_ops = {mem_pread, mem_close};

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

void vsrc_close(struct vsrc *s)
{
    if (!s)
        return;
    s->ops->close(s);
    free(s->name);
    free(s);
}
