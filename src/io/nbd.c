/* vmfs — byte sources over NBD exports, through libnbd.
 *
 * Read-only: only NBD_CMD_READ and NBD_CMD_BLOCK_STATUS are ever sent.
 *
 * Threads: a source keeps a small pool of connections, each a libnbd handle
 * guarded by its own mutex; a read takes a free connection (trylock), opens
 * another one when all are busy and the pool may grow, and otherwise waits
 * for one.  A libnbd handle serializes its own calls, so one handle per
 * reader at a time is what lets reads run in parallel.
 *
 * Failures: every command runs with a deadline (nbd_poll), so a server that
 * hangs costs one read a timeout, not the daemon its threads.  A connection
 * whose command fails for transport reasons is closed; the next read
 * reconnects, at most once per second per source, so a dead server costs a
 * read nothing but a quick -EIO.  The first failure is logged, and the
 * recovery; nothing per read.  A restarted server that exports another size
 * is refused: the disk cannot change size under a mount. */
#include "config.h"

#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>

#include "vmfs/io.h"
#include "vmfs/lazylib.h"

/* libnbd is loaded on first use (lazylib.h). */
#define NBD_API(X) \
    X(nbd_add_meta_context) X(nbd_aio_block_status) X(nbd_aio_command_completed) \
    X(nbd_aio_connect_uri) X(nbd_aio_is_closed) X(nbd_aio_is_dead) \
    X(nbd_aio_is_processing) X(nbd_aio_is_ready) X(nbd_aio_pread) \
    X(nbd_can_meta_context) X(nbd_can_multi_conn) X(nbd_close) \
    X(nbd_create) X(nbd_get_block_size) X(nbd_get_errno) \
    X(nbd_get_error) X(nbd_get_size) X(nbd_poll) \
    X(nbd_set_handle_name) X(nbd_set_pread_initialize)
static struct {
    NBD_API(LAZYLIB_SLOT)
} nbd_api;
static const char *const nbd_api_names[] = {NBD_API(LAZYLIB_NAME) NULL};
static struct lazylib libnbd = {
    .soname = "libnbd.so.0",
    .package = "libnbd0",
    .names = nbd_api_names,
    .slots = (void **)&nbd_api,
    .lock = PTHREAD_MUTEX_INITIALIZER,
};
#define nbd_add_meta_context nbd_api.nbd_add_meta_context
#define nbd_aio_block_status nbd_api.nbd_aio_block_status
#define nbd_aio_command_completed nbd_api.nbd_aio_command_completed
#define nbd_aio_connect_uri nbd_api.nbd_aio_connect_uri
#define nbd_aio_is_closed nbd_api.nbd_aio_is_closed
#define nbd_aio_is_dead nbd_api.nbd_aio_is_dead
#define nbd_aio_is_processing nbd_api.nbd_aio_is_processing
#define nbd_aio_is_ready nbd_api.nbd_aio_is_ready
#define nbd_aio_pread nbd_api.nbd_aio_pread
#define nbd_can_meta_context nbd_api.nbd_can_meta_context
#define nbd_can_multi_conn nbd_api.nbd_can_multi_conn
#define nbd_close nbd_api.nbd_close
#define nbd_create nbd_api.nbd_create
#define nbd_get_block_size nbd_api.nbd_get_block_size
#define nbd_get_errno nbd_api.nbd_get_errno
#define nbd_get_error nbd_api.nbd_get_error
#define nbd_get_size nbd_api.nbd_get_size
#define nbd_poll nbd_api.nbd_poll
#define nbd_set_handle_name nbd_api.nbd_set_handle_name
#define nbd_set_pread_initialize nbd_api.nbd_set_pread_initialize

#define NBD_MAX_CONNS 4
#define CONNECT_MS 10000          /* first connection and reconnections */
#define GROW_MS 3000              /* an extra connection for the pool */
#define IO_MS 60000               /* one read or block status request */
#define RETRY_NS 1000000000ull    /* between connection attempts */
#define DEFAULT_MAX_REQUEST (32u << 20)
#define STATUS_MAX (1ull << 30)   /* bytes asked about in one block status */
#define EXT_CACHE 256             /* runs remembered from the last reply */
#define PIPELINE 4                /* a read is split in up to this many commands */
#define PIECE_MIN (128u << 10)     /* ... of at least this size */

struct nconn {
    pthread_mutex_t lock;
    struct nbd_handle *h;         /* NULL: not connected */
    atomic_bool up;               /* h != NULL, readable without the lock */
};

struct nsrc {
    char *uri;
    char *label;                  /* for messages */
    struct vsrc_nbd_opts opts;
    unsigned max_conns;           /* pool size allowed */
    atomic_uint limit;            /* pool size the server turned out to take */
    atomic_uint members;          /* slots [0, members) make up the pool */
    atomic_flag growing;          /* one new member at a time */
    struct nconn conns[NBD_MAX_CONNS];
    atomic_uint rr;
    atomic_uint_fast64_t retry_at;   /* monotonic ns: no connection attempt before */
    uint64_t min_block;           /* request alignment (>= 1) */
    uint64_t max_request;         /* largest read in one command */
    atomic_bool meta;             /* server answers base:allocation */

    pthread_mutex_t state_lock;   /* guards down and the extent cache */
    bool down;                    /* the failure has been logged */
    uint64_t ext_off;             /* cached runs start here */
    unsigned ext_n;
    uint64_t ext_len[EXT_CACHE];
    bool ext_data[EXT_CACHE];
};

/* libnbd's errno, or EIO when it gave none. */
static int nbd_err(void)
{
    int e = nbd_get_errno();
    return e > 0 ? e : EIO;
}

static void ext_forget(struct nsrc *ns)
{
    pthread_mutex_lock(&ns->state_lock);
    ns->ext_n = 0;
    pthread_mutex_unlock(&ns->state_lock);
}

/* The first failure since the source last worked is logged; later ones
 * are not. */
static void mark_down(struct nsrc *ns, const char *why)
{
    pthread_mutex_lock(&ns->state_lock);
    bool was = ns->down;
    ns->down = true;
    ns->ext_n = 0;
    pthread_mutex_unlock(&ns->state_lock);
    if (!was)
        vmfs_log(VMFS_LOG_WARN, "%s: NBD server unreachable (%s): reads fail with EIO "
                 "until it is back", ns->label, why);
}

/* The server is back: logged, and the pool may grow again (a restarted
 * server may take more connections). */
static void mark_up(struct nsrc *ns)
{
    pthread_mutex_lock(&ns->state_lock);
    bool was = ns->down;
    ns->down = false;
    pthread_mutex_unlock(&ns->state_lock);
    if (was) {
        atomic_store(&ns->limit, ns->max_conns);
        vmfs_log(VMFS_LOG_INFO, "%s: NBD server is back: reads work again", ns->label);
    }
}

/* Waits until h has finished the command cookie, or the deadline.  Returns
 * 0, a negative errno the server sent for this command (connection still
 * usable), or a negative errno with *broken set (the connection is not). */
static int wait_cmd(struct nbd_handle *h, int64_t cookie, uint64_t deadline, bool *broken)
{
    for (;;) {
        int r = nbd_aio_command_completed(h, (uint64_t)cookie);
        if (r == 1)
            return 0;
        if (r < 0) {
            /* ESHUTDOWN: the server is stopping and waits for us to go */
            int e = nbd_err();
            *broken = e == ESHUTDOWN || !(nbd_aio_is_ready(h) || nbd_aio_is_processing(h));
            return -e;
        }
        uint64_t now = vmfs_now_ns();
        if (now >= deadline) {
            *broken = true;
            return -ETIMEDOUT;
        }
        uint64_t ms = (deadline - now) / 1000000 + 1;
        if (nbd_poll(h, (int)VMFS_MIN(ms, 1000u)) < 0) {
            *broken = true;
            return -nbd_err();
        }
    }
}

/* Opens one connection within ms milliseconds.  Returns the handle ready
 * for commands, or NULL with *err set and why filled in. */
static struct nbd_handle *dial(struct nsrc *ns, unsigned ms, int *err, char *why, size_t whylen)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        *err = -ENOMEM;
        snprintf(why, whylen, "%s", nbd_get_error() ? nbd_get_error() : "out of memory");
        return NULL;
    }
    nbd_set_handle_name(h, "vmfs");
    nbd_set_pread_initialize(h, false);   /* every success fills the buffer */
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    uint64_t deadline = vmfs_now_ns() + (uint64_t)ms * 1000000ull;
    if (nbd_aio_connect_uri(h, ns->uri) < 0)
        goto fail;
    while (!nbd_aio_is_ready(h)) {
        if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h))
            goto fail;
        uint64_t now = vmfs_now_ns();
        if (now >= deadline) {
            *err = -ETIMEDOUT;
            snprintf(why, whylen, "no answer within %u ms", ms);
            nbd_close(h);
            return NULL;
        }
        if (nbd_poll(h, (int)VMFS_MIN((deadline - now) / 1000000 + 1, 1000u)) < 0)
            goto fail;
    }
    return h;
fail:
    *err = -nbd_err();
    snprintf(why, whylen, "%s", nbd_get_error() ? nbd_get_error() : strerror(-*err));
    nbd_close(h);
    return NULL;
}

/* The export's size, and whether it answers block status. */
static int learn(struct nsrc *ns, struct nbd_handle *h, uint64_t *size)
{
    int64_t sz = nbd_get_size(h);
    if (sz < 0)
        return -nbd_err();
    *size = (uint64_t)sz;
    atomic_store(&ns->meta, nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1);
    return 0;
}

/* Request limits, from the first connection (a source keeps them). */
static void learn_limits(struct nsrc *ns, struct nbd_handle *h)
{
    int64_t mn = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    int64_t mx = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    ns->min_block = mn > 1 && mn <= 65536 && is_pow2_u64((uint64_t)mn) ? (uint64_t)mn : 1;
    ns->max_request = mx >= 65536 && mx <= DEFAULT_MAX_REQUEST ? (uint64_t)mx
                                                               : DEFAULT_MAX_REQUEST;
    ns->max_request -= ns->max_request % ns->min_block;
}

static void drop(struct nconn *c)
{
    if (c->h) {
        nbd_close(c->h);
        c->h = NULL;
    }
    atomic_store(&c->up, false);
}

/* Connects c (locked, not connected).  A reconnection waits for the retry
 * time, may revive the server, and logs the failure; a grow (an extra
 * connection while others work) is quick and silent. */
static int reconnect(struct vsrc *s, struct nconn *c, bool grow)
{
    struct nsrc *ns = s->priv;
    if (!grow && vmfs_now_ns() < atomic_load(&ns->retry_at))
        return -EIO;
    char why[256];
    int err = 0;
    struct nbd_handle *h = dial(ns, grow ? GROW_MS : CONNECT_MS, &err, why, sizeof why);
    if (!h && !grow && ns->opts.revive) {
        ns->opts.revive(ns->opts.ctx);
        h = dial(ns, CONNECT_MS, &err, why, sizeof why);
    }
    uint64_t size = 0;
    int r = h ? learn(ns, h, &size) : err;
    if (r == 0 && size != s->size) {
        snprintf(why, sizeof why, "the export's size changed from %llu to %llu bytes",
                 (unsigned long long)s->size, (unsigned long long)size);
        r = -EIO;
    } else if (h && r < 0) {
        snprintf(why, sizeof why, "%s", strerror(-r));
    }
    if (r < 0) {
        if (h)
            nbd_close(h);
        if (grow)
            return -EAGAIN;
        atomic_store(&ns->retry_at, vmfs_now_ns() + RETRY_NS);
        mark_down(ns, why);
        return -EIO;
    }
    c->h = h;
    atomic_store(&c->up, true);
    if (!grow) {
        atomic_store(&ns->retry_at, 0);
        mark_up(ns);
    }
    return 0;
}

/* Takes a connection for one command, locked: a free working member of
 * the pool; else a new member while the pool may grow (*grow_slot set;
 * one grow at a time); else waits for a working member (or any member
 * when none works: it reconnects). */
static struct nconn *take(struct nsrc *ns, int *grow_slot)
{
    *grow_slot = -1;
    unsigned n = atomic_load(&ns->members), busy = 0;
    for (unsigned i = 0; i < n; i++) {
        struct nconn *c = &ns->conns[i];
        if (atomic_load(&c->up)) {
            if (!pthread_mutex_trylock(&c->lock)) {
                if (c->h)
                    return c;
                pthread_mutex_unlock(&c->lock);
            }
            busy++;
        }
    }
    /* grow only when working members are all busy, not when none works */
    if (busy && n < atomic_load(&ns->limit) && !atomic_flag_test_and_set(&ns->growing)) {
        n = atomic_load(&ns->members);       /* only the grower changes it */
        if (n < atomic_load(&ns->limit)) {
            pthread_mutex_lock(&ns->conns[n].lock);
            *grow_slot = (int)n;
            return &ns->conns[n];
        }
        atomic_flag_clear(&ns->growing);
    }
    unsigned start = atomic_fetch_add(&ns->rr, 1) % n, pick = start;
    for (unsigned i = 0; i < n; i++)
        if (atomic_load(&ns->conns[(start + i) % n].up)) {
            pick = (start + i) % n;
            break;
        }
    pthread_mutex_lock(&ns->conns[pick].lock);
    return &ns->conns[pick];
}

/* The server would not take connection slot: the pool stays below it. */
static void stop_growing(struct nsrc *ns, struct nconn *c, int slot)
{
    drop(c);
    atomic_store(&ns->limit, (unsigned)slot);
    pthread_mutex_unlock(&c->lock);
    atomic_flag_clear(&ns->growing);
}

/* Runs fn on a connection, reconnecting once when the connection it had
 * turned out to be broken (a server restarted between two reads).  A new
 * member joins the pool once its first command went through. */
typedef int (*nbd_cmd_fn)(struct nsrc *ns, struct nbd_handle *h, void *arg, bool *broken);

static int with_conn(struct vsrc *s, nbd_cmd_fn fn, void *arg)
{
    struct nsrc *ns = s->priv;
    for (;;) {
        int slot;
        struct nconn *c = take(ns, &slot);
        int r = c->h ? 0 : reconnect(s, c, slot >= 0);
        if (slot >= 0 && r < 0) {
            stop_growing(ns, c, slot);
            continue;
        }
        for (int attempt = 0; r == 0 && attempt < 2; attempt++) {
            bool broken = false;
            r = fn(ns, c->h, arg, &broken);
            if (!broken)
                break;
            if (slot >= 0)
                break;
            char why[160];
            snprintf(why, sizeof why, "%s", strerror(-r));
            drop(c);
            ext_forget(ns);
            r = -EIO;
            if (attempt == 1 || reconnect(s, c, false) < 0) {
                mark_down(ns, why);
                break;
            }
            r = 0;
        }
        if (slot >= 0) {
            if (!c->h || !atomic_load(&c->up) || (r < 0 && !nbd_aio_is_ready(c->h))) {
                stop_growing(ns, c, slot);
                continue;
            }
            atomic_store(&ns->members, (unsigned)slot + 1);
            atomic_flag_clear(&ns->growing);
        }
        pthread_mutex_unlock(&c->lock);
        return r;
    }
}

struct read_arg {
    void *buf;
    size_t len;
    uint64_t off;
    uint64_t size;                /* of the export */
};

/* One read command of [off, off + len) into p, waited for. */
static int read_one(struct nbd_handle *h, void *p, size_t len, uint64_t off, bool *broken)
{
    int64_t cookie = nbd_aio_pread(h, p, len, off, NBD_NULL_COMPLETION, 0);
    if (cookie < 0) {
        *broken = !(nbd_aio_is_ready(h) || nbd_aio_is_processing(h));
        return *broken ? -nbd_err() : -EIO;
    }
    int r = wait_cmd(h, cookie, vmfs_now_ns() + IO_MS * 1000000ull, broken);
    return r < 0 && !*broken ? -EIO : r;
}

/* Reads [off, off + len) as several commands in flight at once (the
 * server works on them in parallel), all finished before returning: the
 * buffer is written until the last reply.  Only when the connection broke
 * (then closed by the caller) may commands be left behind. */
static int read_pipelined(struct nsrc *ns, struct nbd_handle *h, char *p, size_t len,
                          uint64_t off, bool *broken)
{
    size_t piece = VMFS_MAX((size_t)PIECE_MIN, (len + PIPELINE - 1) / PIPELINE);
    piece = (piece + 4095) / 4096 * 4096;
    piece = (size_t)VMFS_MIN((uint64_t)piece, ns->max_request);
    int64_t cookies[PIPELINE * 2];
    unsigned head = 0, n = 0;
    size_t pos = 0;
    int r = 0;
    uint64_t deadline = vmfs_now_ns() + IO_MS * 1000000ull;
    while ((pos < len && r == 0) || n > 0) {
        while (pos < len && r == 0 && n < VMFS_ARRAY_SIZE(cookies)) {
            size_t k = VMFS_MIN(piece, len - pos);
            int64_t c = nbd_aio_pread(h, p + pos, k, off + pos, NBD_NULL_COMPLETION, 0);
            if (c < 0) {
                *broken = !(nbd_aio_is_ready(h) || nbd_aio_is_processing(h));
                r = *broken ? -nbd_err() : -EIO;
                break;
            }
            cookies[(head + n++) % VMFS_ARRAY_SIZE(cookies)] = c;
            pos += k;
        }
        if (*broken)
            return r;
        if (n == 0)
            break;
        bool b = false;
        int w = wait_cmd(h, cookies[head], deadline, &b);
        head = (head + 1) % VMFS_ARRAY_SIZE(cookies);
        n--;
        if (b) {
            *broken = true;
            return w;
        }
        if (w < 0 && r == 0)
            r = -EIO;
    }
    return r;
}

/* Reads in pieces the server accepts; a piece the server's minimum block
 * size does not divide goes through a bounce buffer. */
static int read_cmd(struct nsrc *ns, struct nbd_handle *h, void *arg, bool *broken)
{
    struct read_arg *a = arg;
    char *p = a->buf;
    size_t len = a->len;
    uint64_t off = a->off;
    uint64_t mb = ns->min_block, size = a->size;
    if (mb == 1 || (off % mb == 0 && (len % mb == 0 || off + len == size)))
        return read_pipelined(ns, h, p, len, off, broken);
    while (len > 0) {
        size_t n = (size_t)VMFS_MIN((uint64_t)len, ns->max_request);
        uint64_t lo = off - off % mb;
        uint64_t hi = VMFS_MIN(size, (off + n + mb - 1) / mb * mb);
        if (hi - lo > ns->max_request) {     /* keep the piece in bounds */
            hi = lo + ns->max_request;
            n = (size_t)(hi - off);
        }
        char *bounce = xmalloc((size_t)(hi - lo));
        int r = read_one(h, bounce, (size_t)(hi - lo), lo, broken);
        if (r == 0)
            memcpy(p, bounce + (off - lo), n);
        free(bounce);
        if (r < 0)
            return r;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int nbd_src_pread(struct vsrc *s, void *buf, size_t len, uint64_t off)
{
    struct read_arg a = {buf, len, off, s->size};
    return with_conn(s, read_cmd, &a);
}

/* Block status: the reply's runs, coalesced by kind, from off. */
struct status_arg {
    uint64_t off, len;            /* asked */
    unsigned n;
    uint64_t run_len[EXT_CACHE];
    bool run_data[EXT_CACHE];
    uint64_t covered;
};

static int status_cb(void *user, const char *ctx, uint64_t offset, uint32_t *entries,
                     size_t nr, int *error)
{
    struct status_arg *a = user;
    if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) || offset != a->off || a->n)
        return 0;
    uint64_t pos = 0;
    for (size_t i = 0; i + 1 < nr && pos < a->len; i += 2) {
        uint64_t l = VMFS_MIN((uint64_t)entries[i], a->len - pos);
        if (l == 0)
            break;
        bool data = !(entries[i + 1] & LIBNBD_STATE_ZERO);
        if (a->n && a->run_data[a->n - 1] == data) {
            a->run_len[a->n - 1] += l;
        } else if (a->n < EXT_CACHE) {
            a->run_len[a->n] = l;
            a->run_data[a->n++] = data;
        } else {
            break;
        }
        pos += l;
    }
    a->covered = pos;
    return 0;
}

static int status_cmd(struct nsrc *ns, struct nbd_handle *h, void *arg, bool *broken)
{
    struct status_arg *a = arg;
    a->n = 0;
    a->covered = 0;
    nbd_extent_callback cb = {.callback = status_cb, .user_data = a};
    int64_t cookie = nbd_aio_block_status(h, a->len, a->off, cb, NBD_NULL_COMPLETION, 0);
    if (cookie < 0) {
        *broken = !(nbd_aio_is_ready(h) || nbd_aio_is_processing(h));
        return -nbd_err();
    }
    return wait_cmd(h, cookie, vmfs_now_ns() + IO_MS * 1000000ull, broken);
}

/* Answers from the runs of the last reply when they cover off. */
static bool ext_lookup(struct nsrc *ns, uint64_t off, uint64_t len, bool *data, uint64_t *n)
{
    bool hit = false;
    pthread_mutex_lock(&ns->state_lock);
    uint64_t pos = ns->ext_off;
    for (unsigned i = 0; i < ns->ext_n && pos <= off; i++) {
        if (off < pos + ns->ext_len[i]) {
            *data = ns->ext_data[i];
            *n = VMFS_MIN(len, pos + ns->ext_len[i] - off);
            hit = true;
            break;
        }
        pos += ns->ext_len[i];
    }
    pthread_mutex_unlock(&ns->state_lock);
    return hit;
}

static int nbd_src_extent(struct vsrc *s, uint64_t off, uint64_t len, bool *data, uint64_t *n)
{
    struct nsrc *ns = s->priv;
    if (!atomic_load(&ns->meta))
        return -ENOTSUP;
    if (ext_lookup(ns, off, len, data, n))
        return 0;
    /* Ask from an aligned offset for as much as one reply may describe. */
    struct status_arg *a = xcalloc(1, sizeof *a);
    a->off = off - off % ns->min_block;
    uint64_t end = s->size - a->off > STATUS_MAX ? a->off + STATUS_MAX : s->size;
    if (end - a->off > ns->min_block && end != s->size)
        end -= end % ns->min_block;
    a->len = end - a->off;
    int r = with_conn(s, status_cmd, a);
    if (r == 0 && a->n && a->covered > off - a->off) {
        pthread_mutex_lock(&ns->state_lock);
        ns->ext_off = a->off;
        ns->ext_n = a->n;
        memcpy(ns->ext_len, a->run_len, a->n * sizeof a->run_len[0]);
        memcpy(ns->ext_data, a->run_data, a->n * sizeof a->run_data[0]);
        pthread_mutex_unlock(&ns->state_lock);
        if (!ext_lookup(ns, off, len, data, n))
            r = -EIO;
    } else if (r == 0) {
        r = -ENOTSUP;             /* an empty answer: count it as data */
    }
    free(a);
    return r;
}

static void nbd_src_close(struct vsrc *s)
{
    struct nsrc *ns = s->priv;
    for (unsigned i = 0; i < NBD_MAX_CONNS; i++) {
        drop(&ns->conns[i]);
        pthread_mutex_destroy(&ns->conns[i].lock);
    }
    pthread_mutex_destroy(&ns->state_lock);
    free(ns->uri);
    free(ns->label);
    free(ns);
}

static const struct vsrc_ops nbd_ops = {
    .pread = nbd_src_pread, .close = nbd_src_close, .extent = nbd_src_extent,
};

struct vsrc *vsrc_open_nbd_ex(const char *uri, const struct vsrc_nbd_opts *o, int *err)
{
    if (!lazylib_load(&libnbd)) {
        vmfs_log(VMFS_LOG_ERR, "%s: %s", uri, libnbd.err);
        *err = -ELIBACC;
        return NULL;
    }
    struct nsrc *ns = xcalloc(1, sizeof *ns);
    ns->uri = xstrdup(uri);
    if (o)
        ns->opts = *o;
    ns->label = xstrdup(ns->opts.label ? ns->opts.label : uri);
    ns->opts.label = NULL;
    ns->max_conns = ns->opts.max_conns ? VMFS_MIN(ns->opts.max_conns, NBD_MAX_CONNS)
                                       : NBD_MAX_CONNS;
    pthread_mutex_init(&ns->state_lock, NULL);
    atomic_flag_clear(&ns->growing);
    for (unsigned i = 0; i < NBD_MAX_CONNS; i++)
        pthread_mutex_init(&ns->conns[i].lock, NULL);

    struct vsrc *s = xcalloc(1, sizeof *s);
    s->ops = &nbd_ops;
    s->fd = -1;
    s->name = xstrdup(ns->label);
    s->priv = ns;

    char why[256];
    struct nbd_handle *h = dial(ns, CONNECT_MS, err, why, sizeof why);
    int r = h ? learn(ns, h, &s->size) : *err;
    if (h)
        learn_limits(ns, h);
    if (r < 0) {
        if (h)
            nbd_close(h);
        *err = r;
        vsrc_close(s);
        return NULL;
    }
    if (nbd_can_multi_conn(h) != 1)
        ns->max_conns = 1;
    atomic_store(&ns->limit, ns->max_conns);
    atomic_store(&ns->members, 1);
    ns->conns[0].h = h;
    atomic_store(&ns->conns[0].up, true);
    return s;
}

struct vsrc *vsrc_open_nbd(const char *uri, int *err)
{
    return vsrc_open_nbd_ex(uri, NULL, err);
}
