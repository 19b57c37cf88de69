/* vmfs — the read-only NBD server (see nbd.h).
 *
 * One listening Unix socket per served view; one thread accepts, one thread
 * per connection negotiates (fixed newstyle) and then answers requests in
 * order.  Everything a client sends is checked before it is used: option
 * and request magic, option lengths against their contents, offsets and
 * lengths against the export, flags against what was negotiated.  A client
 * that breaks framing is disconnected; a request that is merely wrong gets
 * an error reply (EINVAL, EPERM for writes) and the connection goes on.
 *
 * Threads: the server's threads only read the view (vview_read and
 * vview_extent are thread-safe) and their own connection state; the
 * connection list is guarded by the server's lock. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "nbd/proto.h"
#include "vmfs/nbd.h"

#define NBD_MAX_CONNS 16
#define NBD_MAX_OPTIONS 1024          /* options one client may send */
#define NBD_MAX_OPT_LEN 65536         /* bytes of one option's data */
#define NBD_KEEP_BUF (4u << 20)       /* read buffer kept between requests */
#define NBD_MAX_EXTENTS 1024          /* descriptors in one block status */
#define NBD_CTX_BASE_ALLOCATION 1

struct nbd_conn {
    struct nbd_server *srv;
    int fd;
    pthread_t thread;
    bool done;                 /* the thread has finished: join it */
    struct nbd_conn *next;
    /* negotiated state, touched only by the connection's thread */
    bool structured;
    bool base_allocation;
    bool no_zeroes;
    void *buf;
    size_t bufsize;
};

struct nbd_server {
    struct vview v;
    uint64_t size;
    char *path;
    int lfd;
    int wake[2];               /* written once to stop the accept thread */
    pthread_t accept_thread;
    pthread_mutex_t lock;      /* guards conns, nconns, stopping */
    struct nbd_conn *conns;
    unsigned nconns;
    bool stopping;
};

/* ---- socket I/O ---- */

/* Reads exactly len bytes: 0, or -1 at end of stream or on error. */
static int recv_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = recv(fd, p, len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* Discards len bytes of input: 0 or -1. */
static int recv_discard(int fd, uint64_t len)
{
    char scratch[4096];
    while (len > 0) {
        size_t n = (size_t)VMFS_MIN(len, sizeof scratch);
        if (recv_full(fd, scratch, n) < 0)
            return -1;
        len -= n;
    }
    return 0;
}

/* Sends every byte of the vectors: 0 or -1.  Never raises SIGPIPE. */
static int send_iov(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        size_t done = (size_t)w;
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

static int send_all(int fd, const void *buf, size_t len)
{
    struct iovec iov = {(void *)buf, len};
    return send_iov(fd, &iov, 1);
}

/* ---- handshake ---- */

static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
                     uint32_t len)
{
    uint8_t h[20];
    put_be64(h, NBD_REP_MAGIC);
    put_be32(h + 8, opt);
    put_be32(h + 12, type);
    put_be32(h + 16, len);
    struct iovec iov[2] = {{h, sizeof h}, {(void *)data, len}};
    return send_iov(c->fd, iov, len ? 2 : 1);
}

static uint16_t transmission_flags(const struct nbd_conn *c)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
                 NBD_FLAG_CAN_MULTI_CONN;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

/* NBD_OPT_EXPORT_NAME: any name is this server's one export. */
static int opt_export_name(struct nbd_conn *c)
{
    uint8_t r[10 + 124] = {0};
    put_be64(r, c->srv->size);
    put_be16(r + 8, transmission_flags(c));
    return send_all(c->fd, r, c->no_zeroes ? 10 : sizeof r);
}

/* NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 count, u16
 * requests.  Returns 1 to enter transmission (GO accepted), 0 to go on
 * negotiating, -1 to drop the connection. */
static int opt_info_go(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    if (len < 6)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    uint32_t namelen = get_be32(d);
    if (namelen > len - 6)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    uint16_t ninfo = get_be16(d + 4 + namelen);
    if ((uint64_t)4 + namelen + 2 + 2 * (uint64_t)ninfo != len)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    bool want_bs = false;
    for (uint16_t i = 0; i < ninfo; i++)
        if (get_be16(d + 6 + namelen + 2 * (size_t)i) == NBD_INFO_BLOCK_SIZE)
            want_bs = true;
    uint8_t ex[12];
    put_be16(ex, NBD_INFO_EXPORT);
    put_be64(ex + 2, c->srv->size);
    put_be16(ex + 10, transmission_flags(c));
    if (opt_reply(c, opt, NBD_REP_INFO, ex, sizeof ex) < 0)
        return -1;
    if (want_bs) {
        uint8_t bs[14];
        put_be16(bs, NBD_INFO_BLOCK_SIZE);
        put_be32(bs + 2, 1);
        put_be32(bs + 6, 4096);
        put_be32(bs + 10, NBD_MAX_REQUEST);
        if (opt_reply(c, opt, NBD_REP_INFO, bs, sizeof bs) < 0)
            return -1;
    }
    if (opt_reply(c, opt, NBD_REP_ACK, NULL, 0) < 0)
        return -1;
    return opt == NBD_OPT_GO ? 1 : 0;
}

static int opt_list(struct nbd_conn *c, uint32_t len)
{
    if (len != 0)
        return opt_reply(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, NULL, 0);
    uint8_t empty[4] = {0};   /* one export, named "" */
    if (opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, empty, sizeof empty) < 0)
        return -1;
    return opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int reply_base_allocation(struct nbd_conn *c, uint32_t opt)
{
    static const char name[] = "base:allocation";
    uint8_t r[4 + sizeof name - 1];
    put_be32(r, NBD_CTX_BASE_ALLOCATION);
    memcpy(r + 4, name, sizeof name - 1);
    return opt_reply(c, opt, NBD_REP_META_CONTEXT, r, sizeof r);
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: u32 name length,
 * name, u32 query count, queries (u32 length, string).  The one context is
 * base:allocation. */
static int opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (set && !c->structured)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    if (len < 8 || get_be32(d) > len - 8)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    uint32_t pos = 4 + get_be32(d);
    uint32_t nq = get_be32(d + pos);
    pos += 4;
    /* Check the whole list before answering anything. */
    uint32_t p = pos;
    for (uint32_t i = 0; i < nq; i++) {
        if (len - p < 4 || get_be32(d + p) > len - p - 4)
            return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        p += 4 + get_be32(d + p);
    }
    if (p != len)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    if (set)
        c->base_allocation = false;
    bool found = !set && nq == 0;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql = get_be32(d + pos);
        const char *q = (const char *)d + pos + 4;
        pos += 4 + ql;
        bool exact = ql == 15 && !memcmp(q, "base:allocation", 15);
        if (exact || (!set && ql == 5 && !memcmp(q, "base:", 5)))
            found = true;
    }
    if (found) {
        if (set)
            c->base_allocation = true;
        if (reply_base_allocation(c, opt) < 0)
            return -1;
    }
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* Runs the option haggling: 0 to enter transmission, -1 to drop. */
static int negotiate(struct nbd_conn *c)
{
    uint8_t hello[18];
    put_be64(hello, NBD_MAGIC);
    put_be64(hello + 8, NBD_IHAVEOPT);
    put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (send_all(c->fd, hello, sizeof hello) < 0)
        return -1;
    uint8_t cf[4];
    if (recv_full(c->fd, cf, 4) < 0)
        return -1;
    uint32_t cflags = get_be32(cf);
    if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE) ||
        (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)))
        return -1;
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
    for (unsigned n = 0; n < NBD_MAX_OPTIONS; n++) {
        uint8_t h[16];
        if (recv_full(c->fd, h, sizeof h) < 0 || get_be64(h) != NBD_IHAVEOPT)
            return -1;
        uint32_t opt = get_be32(h + 8), len = get_be32(h + 12);
        if (len > NBD_MAX_OPT_LEN)
            return -1;
        CLEANUP_FREE uint8_t *d = xmalloc(len);
        if (recv_full(c->fd, d, len) < 0)
            return -1;
        int r;
        switch (opt) {
        case NBD_OPT_EXPORT_NAME:
            return opt_export_name(c);
        case NBD_OPT_ABORT:
            opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            return -1;
        case NBD_OPT_LIST:
            r = opt_list(c, len);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            r = opt_info_go(c, opt, d, len);
            if (r == 1)
                return 0;
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len != 0) {
                r = opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
                break;
            }
            c->structured = true;
            r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            r = opt_meta(c, opt, d, len);
            break;
        default:
            r = opt_reply(c, opt, NBD_REP_ERR_UNSUP, NULL, 0);
            break;
        }
        if (r < 0)
            return -1;
    }
    return -1;
}

/* ---- transmission ---- */

static uint32_t nbd_errno(int err)
{
    switch (err) {
    case EPERM: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}

static int simple_reply(struct nbd_conn *c, uint64_t cookie, int err, const void *data,
                        size_t len)
{
    uint8_t h[16];
    put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(h + 4, err ? nbd_errno(err) : 0);
    put_be64(h + 8, cookie);
    struct iovec iov[2] = {{h, sizeof h}, {(void *)data, err ? 0 : len}};
    return send_iov(c->fd, iov, !err && len ? 2 : 1);
}

/* One structured reply chunk: header, an optional 8- or 4-byte prefix,
 * then data. */
static int chunk(struct nbd_conn *c, uint64_t cookie, uint16_t type, const void *pre,
                 size_t prelen, const void *data, size_t len)
{
    uint8_t h[20];
    put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16(h + 4, NBD_REPLY_FLAG_DONE);
    put_be16(h + 6, type);
    put_be64(h + 8, cookie);
    put_be32(h + 16, (uint32_t)(prelen + len));
    struct iovec iov[3] = {{h, sizeof h}, {(void *)pre, prelen}, {(void *)data, len}};
    return send_iov(c->fd, iov, 3);
}

static int error_reply(struct nbd_conn *c, uint64_t cookie, int err)
{
    if (!c->structured)
        return simple_reply(c, cookie, err, NULL, 0);
    uint8_t e[6];
    put_be32(e, nbd_errno(err));
    put_be16(e + 4, 0);   /* no message */
    return chunk(c, cookie, NBD_REPLY_TYPE_ERROR, e, sizeof e, NULL, 0);
}

static void *read_buffer(struct nbd_conn *c, size_t len)
{
    if (len > NBD_KEEP_BUF)
        return xmalloc(len);
    if (!c->buf) {
        c->buf = xmalloc(NBD_KEEP_BUF);
        c->bufsize = NBD_KEEP_BUF;
    }
    return c->buf;
}

static int cmd_read(struct nbd_conn *c, uint64_t cookie, uint64_t off, uint32_t len)
{
    void *buf = read_buffer(c, len);
    int r = vview_read(&c->srv->v, buf, len, off);
    int s;
    if (r < 0)
        s = error_reply(c, cookie, -r == EINVAL ? EINVAL : EIO);
    else if (!c->structured)
        s = simple_reply(c, cookie, 0, buf, len);
    else {
        uint8_t o[8];
        put_be64(o, off);
        s = chunk(c, cookie, NBD_REPLY_TYPE_OFFSET_DATA, o, sizeof o, buf, len);
    }
    if (buf != c->buf)
        free(buf);
    return s;
}

/* base:allocation for [off, off + len): holes read as zeros. */
static int cmd_block_status(struct nbd_conn *c, uint64_t cookie, uint16_t flags,
                            uint64_t off, uint32_t len)
{
    size_t max = flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD_MAX_EXTENTS;
    CLEANUP_FREE uint8_t *d = xmalloc(4 + 8 * max);
    put_be32(d, NBD_CTX_BASE_ALLOCATION);
    size_t n = 0;
    uint64_t pos = off, end = off + len;
    while (pos < end && n < max) {
        bool data;
        uint64_t elen;
        int r = vview_extent(&c->srv->v, pos, &data, &elen);
        if (r < 0 || elen == 0) {
            if (n)
                break;   /* answer what is known */
            return error_reply(c, cookie, EIO);
        }
        elen = VMFS_MIN(elen, end - pos);
        put_be32(d + 4 + 8 * n, (uint32_t)elen);
        put_be32(d + 8 + 8 * n, data ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO);
        n++;
        pos += elen;
    }
    return chunk(c, cookie, NBD_REPLY_TYPE_BLOCK_STATUS, NULL, 0, d, 4 + 8 * n);
}

/* Answers one request.  Returns 0 to go on, -1 to drop the connection. */
static int request(struct nbd_conn *c, const uint8_t *q)
{
    uint16_t flags = get_be16(q + 4), type = get_be16(q + 6);
    uint64_t cookie = get_be64(q + 8), off = get_be64(q + 16);
    uint32_t len = get_be32(q + 24);
    uint16_t known = NBD_CMD_FLAG_FUA;
    if (type == NBD_CMD_READ && c->structured)
        known |= NBD_CMD_FLAG_DF;
    if (type == NBD_CMD_BLOCK_STATUS)
        known |= NBD_CMD_FLAG_REQ_ONE;
    if (type == NBD_CMD_WRITE_ZEROES)
        known |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    bool in_range = len > 0 && range_in(off, len, c->srv->size);

    switch (type) {
    case NBD_CMD_DISC:
        return -1;
    case NBD_CMD_WRITE:
        /* The payload follows whatever we answer; a client that sends more
         * than it could ever be allowed to is not followed further. */
        if (len > NBD_MAX_REQUEST || recv_discard(c->fd, len) < 0)
            return -1;
        return error_reply(c, cookie, EPERM);
    case NBD_CMD_TRIM:
    case NBD_CMD_WRITE_ZEROES:
        return error_reply(c, cookie, (flags & ~known) ? EINVAL : EPERM);
    case NBD_CMD_FLUSH:
        if ((flags & ~known) || off != 0 || len != 0)
            return error_reply(c, cookie, EINVAL);
        return simple_reply(c, cookie, 0, NULL, 0);
    case NBD_CMD_READ:
        if ((flags & ~known) || !in_range || len > NBD_MAX_REQUEST)
            return error_reply(c, cookie, EINVAL);
        return cmd_read(c, cookie, off, len);
    case NBD_CMD_BLOCK_STATUS:
        if (!c->base_allocation || (flags & ~known) || !in_range)
            return error_reply(c, cookie, EINVAL);
        return cmd_block_status(c, cookie, flags, off, len);
    default:
        return error_reply(c, cookie, EINVAL);
    }
}

static void transmission(struct nbd_conn *c)
{
    uint8_t q[28];
    while (recv_full(c->fd, q, sizeof q) == 0) {
        if (get_be32(q) != NBD_REQUEST_MAGIC || request(c, q) < 0)
            break;
    }
}

static void *conn_main(void *arg)
{
    struct nbd_conn *c = arg;
    if (negotiate(c) == 0)
        transmission(c);
    free(c->buf);
    c->buf = NULL;
    shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_lock(&c->srv->lock);
    c->done = true;
    pthread_mutex_unlock(&c->srv->lock);
    return NULL;
}

/* ---- the server ---- */

/* Joins finished connections (all of them when all is true; the caller
 * has shut their sockets down).  Called without the lock. */
static void reap(struct nbd_server *s, bool all)
{
    for (;;) {
        pthread_mutex_lock(&s->lock);
        struct nbd_conn **pp = &s->conns;
        while (*pp && !(*pp)->done && !all)
            pp = &(*pp)->next;
        struct nbd_conn *c = *pp;
        if (c) {
            *pp = c->next;
            s->nconns--;
        }
        pthread_mutex_unlock(&s->lock);
        if (!c)
            return;
        pthread_join(c->thread, NULL);
        close(c->fd);
        free(c);
    }
}

/* Only this user (or root) may talk to the server. */
static bool peer_allowed(int fd)
{
    struct ucred cred;
    socklen_t n = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &n) < 0)
        return false;
    return cred.uid == 0 || cred.uid == geteuid();
}

static void accept_one(struct nbd_server *s)
{
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    reap(s, false);
    pthread_mutex_lock(&s->lock);
    bool full = s->stopping || s->nconns >= NBD_MAX_CONNS;
    pthread_mutex_unlock(&s->lock);
    if (full || !peer_allowed(fd)) {
        close(fd);
        return;
    }
    struct nbd_conn *c = xcalloc(1, sizeof *c);
    c->srv = s;
    c->fd = fd;
    pthread_mutex_lock(&s->lock);
    if (pthread_create(&c->thread, NULL, conn_main, c) != 0) {
        pthread_mutex_unlock(&s->lock);
        close(fd);
        free(c);
        return;
    }
    c->next = s->conns;
    s->conns = c;
    s->nconns++;
    pthread_mutex_unlock(&s->lock);
}

static void *accept_main(void *arg)
{
    struct nbd_server *s = arg;
    for (;;) {
        struct pollfd p[2] = {{s->lfd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (p[0].revents & POLLIN)
            accept_one(s);
        else if (p[0].revents)
            break;
    }
    return NULL;
}

static int listen_on(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        return -ENAMETOOLONG;
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
        int e = -errno;
        close(fd);
        unlink(path);
        return e;
    }
    return fd;
}

struct nbd_server *nbd_serve(const struct vview *v, const char *sockpath, int *err)
{
    int fd = listen_on(sockpath);
    if (fd < 0) {
        *err = fd;
        return NULL;
    }
    struct nbd_server *s = xcalloc(1, sizeof *s);
    s->v = *v;
    s->size = vview_size(v);
    s->path = xstrdup(sockpath);
    s->lfd = fd;
    pthread_mutex_init(&s->lock, NULL);
    tree_hold(v->t);
    if (pipe2(s->wake, O_CLOEXEC) < 0) {
        *err = -errno;
        goto fail;
    }
    int r = pthread_create(&s->accept_thread, NULL, accept_main, s);
    if (r != 0) {
        *err = -r;
        close(s->wake[0]);
        close(s->wake[1]);
        goto fail;
    }
    return s;
fail:
    close(fd);
    unlink(sockpath);
    tree_put(v->t);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
    return NULL;
}

void nbd_server_stop(struct nbd_server *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    for (struct nbd_conn *c = s->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
    char b = 1;
    while (write(s->wake[1], &b, 1) < 0 && errno == EINTR)
        ;
    pthread_join(s->accept_thread, NULL);
    /* The accept thread is gone: no connection can be added any more. */
    pthread_mutex_lock(&s->lock);
    for (struct nbd_conn *c = s->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
    reap(s, true);
    close(s->lfd);
    close(s->wake[0]);
    close(s->wake[1]);
    unlink(s->path);
    tree_put(s->v.t);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}
