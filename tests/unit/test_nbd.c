/* Unit tests: the read-only NBD server, with libnbd as the client and with
 * hand-made protocol messages for what libnbd would never send. */
#include "config.h"

#include <libnbd.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "nbd/proto.h"
#include "unit.h"
#include "vmfs/nbd.h"
#include "vmfs/tree.h"

#define MIB (1u << 20)
#define DISK (8 * MIB)
#define HOLE_START (1 * MIB)
#define HOLE_END (5 * MIB)

static char dir[] = "/tmp/vmfs-nbd-XXXXXX";
static char *img, *sock;
static struct timg *t;
static struct nbd_server *srv;

static uint8_t pattern(uint64_t off)
{
    if (off >= HOLE_START && off < HOLE_END)
        return 0;
    return (uint8_t)(off * 31 + (off >> 12) + 1);
}

static void write_disk(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    uint8_t *buf = malloc(MIB);
    for (uint64_t off = 0; off < DISK; off += MIB) {
        if (off >= HOLE_START && off < HOLE_END)
            continue;
        for (size_t i = 0; i < MIB; i++)
            buf[i] = pattern(off + i);
        ck_assert_int_eq(pwrite(fd, buf, MIB, (off_t)off), MIB);
    }
    ck_assert_int_eq(ftruncate(fd, DISK), 0);
    close(fd);
    free(buf);
}

static void setup(void)
{
    strcpy(dir, "/tmp/vmfs-nbd-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    img = xasprintf("%s/disk.img", dir);
    sock = xasprintf("%s/nbd.sock", dir);
    write_disk(img);
    struct tree_opts o = {.source = dir, .open = {.max_chain = VMFS_DEFAULT_MAX_CHAIN}};
    tree_init(&o);
    t = tree_get(img, -1);
    ck_assert_ptr_nonnull(t);
    int err = 0;
    struct vview v = {t, -1};
    srv = nbd_serve(&v, sock, &err);
    ck_assert_msg(srv != NULL, "nbd_serve: %s", strerror(-err));
}

static void teardown(void)
{
    nbd_server_stop(srv);
    srv = NULL;
    tree_put(t);
    tree_shutdown();
    ck_assert_int_ne(access(sock, F_OK), 0);   /* the socket is gone */
    unlink(img);
    rmdir(dir);
    free(img);
    free(sock);
}

static struct nbd_handle *client(bool structured, bool meta)
{
    struct nbd_handle *h = nbd_create();
    ck_assert_ptr_nonnull(h);
    nbd_set_request_structured_replies(h, structured);
    if (meta)
        ck_assert_int_eq(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 0);
    ck_assert_msg(nbd_connect_unix(h, sock) == 0, "connect: %s", nbd_get_error());
    return h;
}

static void check_range(struct nbd_handle *h, uint64_t off, size_t len)
{
    uint8_t *buf = malloc(len);
    ck_assert_msg(nbd_pread(h, buf, len, off, 0) == 0, "pread: %s", nbd_get_error());
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pattern(off + i))
            ck_abort_msg("byte %llu differs", (unsigned long long)(off + i));
    free(buf);
}

START_TEST(test_read_structured)
{
    struct nbd_handle *h = client(true, false);
    ck_assert_int_eq(nbd_get_size(h), DISK);
    ck_assert_int_eq(nbd_is_read_only(h), 1);
    ck_assert_int_eq(nbd_can_flush(h), 1);
    ck_assert_int_eq(nbd_can_multi_conn(h), 1);
    ck_assert_int_eq(nbd_can_df(h), 1);
    ck_assert_int_eq(nbd_get_structured_replies_negotiated(h), 1);
    check_range(h, 0, DISK);
    check_range(h, 12345, 77777);
    check_range(h, HOLE_START - 100, 200);
    check_range(h, DISK - 1, 1);
    ck_assert_int_eq(nbd_flush(h, 0), 0);
    nbd_close(h);
}
END_TEST

START_TEST(test_read_simple)
{
    struct nbd_handle *h = client(false, false);
    ck_assert_int_eq(nbd_get_structured_replies_negotiated(h), 0);
    check_range(h, 0, 3 * MIB + 17);
    check_range(h, 6 * MIB - 3, 5);
    nbd_close(h);
}
END_TEST

struct extents {
    uint64_t len[64];
    uint32_t flags[64];
    size_t n;
};

static int extent_cb(void *data, const char *ctx, uint64_t off, uint32_t *ents, size_t n,
                     int *err)
{
    struct extents *e = data;
    ck_assert_str_eq(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION);
    for (size_t i = 0; i + 1 < n && e->n < 64; i += 2) {
        e->len[e->n] = ents[i];
        e->flags[e->n++] = ents[i + 1];
    }
    return 0;
}

START_TEST(test_block_status)
{
    struct nbd_handle *h = client(true, true);
    ck_assert_int_eq(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
    struct extents e = {.n = 0};
    nbd_extent_callback cb = {.callback = extent_cb, .user_data = &e};
    ck_assert_msg(nbd_block_status(h, DISK, 0, cb, 0) == 0, "%s", nbd_get_error());
    /* Data, hole, data — adjacent runs of one kind may come in pieces. */
    uint64_t pos = 0;
    for (size_t i = 0; i < e.n; i++) {
        bool hole = pos >= HOLE_START && pos < HOLE_END;
        if (hole)
            ck_assert_uint_eq(e.flags[i], LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
        else
            ck_assert_uint_eq(e.flags[i], 0);
        pos += e.len[i];
        ck_assert(pos <= HOLE_START || pos >= HOLE_END || hole);
    }
    ck_assert_uint_eq(pos, DISK);
    /* One descriptor when asked for one, never past the request. */
    e.n = 0;
    ck_assert_int_eq(nbd_block_status(h, 4096, 2 * MIB, cb, LIBNBD_CMD_FLAG_REQ_ONE), 0);
    ck_assert_uint_eq(e.n, 1);
    ck_assert_uint_eq(e.len[0], 4096);
    ck_assert_uint_eq(e.flags[0], LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
    nbd_close(h);
}
END_TEST

START_TEST(test_list_and_info)
{
    struct nbd_handle *h = nbd_create();
    ck_assert_int_eq(nbd_set_opt_mode(h, true), 0);
    ck_assert_int_eq(nbd_connect_unix(h, sock), 0);
    ck_assert_int_eq(nbd_opt_info(h), 0);
    ck_assert_int_eq(nbd_get_size(h), DISK);
    ck_assert_int_eq(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), NBD_MAX_REQUEST);
    ck_assert_int_eq(nbd_opt_go(h), 0);
    check_range(h, 100, 1000);
    nbd_close(h);
}
END_TEST

/* ---- the same server, spoken to by hand ---- */

static int raw_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, sock);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void xsend(int fd, const void *p, size_t n)
{
    ck_assert_int_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void xrecv(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (char *)p + got, n - got, 0);
        ck_assert_int_gt(r, 0);
        got += (size_t)r;
    }
}

/* True when the server has closed the connection. */
static bool closed(int fd)
{
    char c;
    ssize_t r;
    while ((r = recv(fd, &c, 1, 0)) > 0)
        ;
    return r == 0;
}

static int raw_hello(uint32_t cflags)
{
    int fd = raw_connect();
    uint8_t h[18];
    xrecv(fd, h, sizeof h);
    ck_assert(get_be64(h) == NBD_MAGIC && get_be64(h + 8) == NBD_IHAVEOPT);
    uint8_t f[4];
    put_be32(f, cflags);
    xsend(fd, f, 4);
    return fd;
}

static void send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    put_be64(h, NBD_IHAVEOPT);
    put_be32(h + 8, opt);
    put_be32(h + 12, len);
    xsend(fd, h, sizeof h);
    if (len)
        xsend(fd, data, len);
}

/* Reads one option reply: its type; its data (up to 64 bytes) in d. */
static uint32_t recv_opt_reply(int fd, uint32_t opt, uint8_t *d, uint32_t *len)
{
    uint8_t h[20];
    xrecv(fd, h, sizeof h);
    ck_assert(get_be64(h) == NBD_REP_MAGIC);
    ck_assert_uint_eq(get_be32(h + 8), opt);
    *len = get_be32(h + 16);
    ck_assert_uint_le(*len, 64);
    xrecv(fd, d, *len);
    return get_be32(h + 12);
}

/* Handshake with NBD_OPT_GO: a connection in transmission. */
static int raw_go(void)
{
    int fd = raw_hello(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    uint8_t go[6] = {0};
    send_opt(fd, NBD_OPT_GO, go, sizeof go);
    uint8_t d[64];
    uint32_t len, type;
    while ((type = recv_opt_reply(fd, NBD_OPT_GO, d, &len)) == NBD_REP_INFO)
        ;
    ck_assert_uint_eq(type, NBD_REP_ACK);
    return fd;
}

static void send_req(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
                     uint32_t len)
{
    uint8_t q[28];
    put_be32(q, NBD_REQUEST_MAGIC);
    put_be16(q + 4, flags);
    put_be16(q + 6, type);
    put_be64(q + 8, cookie);
    put_be64(q + 16, off);
    put_be32(q + 24, len);
    xsend(fd, q, sizeof q);
}

/* Reads a simple reply: its error; the cookie must match. */
static uint32_t recv_simple(int fd, uint64_t cookie)
{
    uint8_t r[16];
    xrecv(fd, r, sizeof r);
    ck_assert_uint_eq(get_be32(r), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert(get_be64(r + 8) == cookie);
    return get_be32(r + 4);
}

START_TEST(test_raw_bad_requests)
{
    int fd = raw_go();
    send_req(fd, 0, NBD_CMD_READ, 1, DISK - 10, 11);          /* past the end */
    ck_assert_uint_eq(recv_simple(fd, 1), NBD_EINVAL);
    send_req(fd, 0, NBD_CMD_READ, 2, UINT64_MAX - 1, 4096);   /* wraps around */
    ck_assert_uint_eq(recv_simple(fd, 2), NBD_EINVAL);
    send_req(fd, 0, NBD_CMD_READ, 3, 0, 0);                   /* empty */
    ck_assert_uint_eq(recv_simple(fd, 3), NBD_EINVAL);
    send_req(fd, 0, NBD_CMD_READ, 4, 0, NBD_MAX_REQUEST + 1); /* too big */
    ck_assert_uint_eq(recv_simple(fd, 4), NBD_EINVAL);
    send_req(fd, 0x80, NBD_CMD_READ, 5, 0, 512);              /* unknown flag */
    ck_assert_uint_eq(recv_simple(fd, 5), NBD_EINVAL);
    send_req(fd, NBD_CMD_FLAG_DF, NBD_CMD_READ, 6, 0, 512);   /* DF not negotiated */
    ck_assert_uint_eq(recv_simple(fd, 6), NBD_EINVAL);
    send_req(fd, 0, 99, 7, 0, 512);                           /* unknown command */
    ck_assert_uint_eq(recv_simple(fd, 7), NBD_EINVAL);
    send_req(fd, 0, NBD_CMD_BLOCK_STATUS, 8, 0, 512);         /* no context */
    ck_assert_uint_eq(recv_simple(fd, 8), NBD_EINVAL);
    send_req(fd, 0, NBD_CMD_TRIM, 9, 0, 512);
    ck_assert_uint_eq(recv_simple(fd, 9), NBD_EPERM);
    send_req(fd, 0, NBD_CMD_WRITE_ZEROES, 10, 0, 512);
    ck_assert_uint_eq(recv_simple(fd, 10), NBD_EPERM);
    /* A write's payload is consumed: the stream stays in step. */
    uint8_t payload[4096];
    memset(payload, 0xee, sizeof payload);
    send_req(fd, 0, NBD_CMD_WRITE, 11, 0, sizeof payload);
    xsend(fd, payload, sizeof payload);
    ck_assert_uint_eq(recv_simple(fd, 11), NBD_EPERM);
    send_req(fd, 0, NBD_CMD_READ, 12, 4096, 16);
    ck_assert_uint_eq(recv_simple(fd, 12), 0);
    uint8_t data[16];
    xrecv(fd, data, sizeof data);
    for (int i = 0; i < 16; i++)
        ck_assert_uint_eq(data[i], pattern(4096 + (uint64_t)i));
    send_req(fd, 0, NBD_CMD_FLUSH, 13, 0, 0);
    ck_assert_uint_eq(recv_simple(fd, 13), 0);
    /* The image did not change. */
    struct stat st;
    ck_assert_int_eq(stat(img, &st), 0);
    ck_assert_int_eq(st.st_size, DISK);
    /* A request with a bad magic ends the connection. */
    uint8_t junk[28] = {0x12, 0x34};
    xsend(fd, junk, sizeof junk);
    ck_assert(closed(fd));
    close(fd);
}
END_TEST

START_TEST(test_raw_huge_write_disconnects)
{
    int fd = raw_go();
    send_req(fd, 0, NBD_CMD_WRITE, 1, 0, 0xffffffffu);
    ck_assert(closed(fd));
    close(fd);
    fd = raw_go();
    send_req(fd, 0, NBD_CMD_DISC, 2, 0, 0);
    ck_assert(closed(fd));
    close(fd);
}
END_TEST

START_TEST(test_raw_options)
{
    uint8_t d[64];
    uint32_t len;
    int fd = raw_hello(NBD_FLAG_C_FIXED_NEWSTYLE);
    send_opt(fd, 99, "abc", 3);
    ck_assert_uint_eq(recv_opt_reply(fd, 99, d, &len), NBD_REP_ERR_UNSUP);
    send_opt(fd, NBD_OPT_STARTTLS, NULL, 0);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_STARTTLS, d, &len), NBD_REP_ERR_UNSUP);
    /* A name length that runs past the option. */
    uint8_t bad[6] = {0, 0, 1, 0, 0, 0};
    send_opt(fd, NBD_OPT_GO, bad, sizeof bad);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_GO, d, &len), NBD_REP_ERR_INVALID);
    /* A request count that does not match the length. */
    uint8_t bad2[8] = {0, 0, 0, 0, 0, 5, 0, 3};
    send_opt(fd, NBD_OPT_INFO, bad2, sizeof bad2);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_INFO, d, &len), NBD_REP_ERR_INVALID);
    /* Meta contexts need structured replies first. */
    uint8_t meta[8] = {0};
    send_opt(fd, NBD_OPT_SET_META_CONTEXT, meta, sizeof meta);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, d, &len),
                      NBD_REP_ERR_INVALID);
    send_opt(fd, NBD_OPT_STRUCTURED_REPLY, "x", 1);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, d, &len),
                      NBD_REP_ERR_INVALID);
    /* A query list that lies about its lengths. */
    send_opt(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, d, &len), NBD_REP_ACK);
    uint8_t lie[12] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 200};
    send_opt(fd, NBD_OPT_SET_META_CONTEXT, lie, sizeof lie);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, d, &len),
                      NBD_REP_ERR_INVALID);
    send_opt(fd, NBD_OPT_LIST, NULL, 0);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_LIST, d, &len), NBD_REP_SERVER);
    ck_assert_uint_eq(len, 4);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_LIST, d, &len), NBD_REP_ACK);
    send_opt(fd, NBD_OPT_ABORT, NULL, 0);
    ck_assert_uint_eq(recv_opt_reply(fd, NBD_OPT_ABORT, d, &len), NBD_REP_ACK);
    ck_assert(closed(fd));
    close(fd);
}
END_TEST

START_TEST(test_raw_framing)
{
    /* Unknown client flags. */
    int fd = raw_hello(0x80 | NBD_FLAG_C_FIXED_NEWSTYLE);
    ck_assert(closed(fd));
    close(fd);
    /* Bad option magic. */
    fd = raw_hello(NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t junk[16] = "IHAVEOPX";
    xsend(fd, junk, sizeof junk);
    ck_assert(closed(fd));
    close(fd);
    /* An option longer than any option may be. */
    fd = raw_hello(NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t h[16];
    put_be64(h, NBD_IHAVEOPT);
    put_be32(h + 8, NBD_OPT_GO);
    put_be32(h + 12, 0x7fffffff);
    xsend(fd, h, sizeof h);
    ck_assert(closed(fd));
    close(fd);
    /* Old-style EXPORT_NAME with the 124 zero bytes. */
    fd = raw_hello(NBD_FLAG_C_FIXED_NEWSTYLE);
    send_opt(fd, NBD_OPT_EXPORT_NAME, "any", 3);
    uint8_t r[134];
    xrecv(fd, r, sizeof r);
    ck_assert(get_be64(r) == DISK);
    ck_assert_uint_eq(get_be16(r + 8) & NBD_FLAG_READ_ONLY, NBD_FLAG_READ_ONLY);
    send_req(fd, 0, NBD_CMD_READ, 7, 0, 8);
    ck_assert_uint_eq(recv_simple(fd, 7), 0);
    close(fd);
}
END_TEST

START_TEST(test_connection_limit_and_stop)
{
    /* More clients than the server takes: the extra ones are turned away,
     * the others keep working, and stopping ends them all. */
    struct nbd_handle *h[16];
    for (int i = 0; i < 16; i++)
        h[i] = client(i % 2, false);
    int fd = raw_connect();
    ck_assert(closed(fd));
    close(fd);
    check_range(h[3], 0, 4096);
    nbd_server_stop(srv);
    srv = NULL;
    uint8_t b[512];
    for (int i = 0; i < 16; i++) {
        ck_assert_int_eq(nbd_pread(h[i], b, sizeof b, 0, 0), -1);
        nbd_close(h[i]);
    }
    int err;
    struct vview v = {t, -1};
    srv = nbd_serve(&v, sock, &err);
    ck_assert_ptr_nonnull(srv);
}
END_TEST

START_TEST(test_serve_errors)
{
    int err = 0;
    struct vview v = {t, -1};
    ck_assert_ptr_null(nbd_serve(&v, sock, &err));   /* exists */
    ck_assert_int_eq(err, -EADDRINUSE);
    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = 0;
    ck_assert_ptr_null(nbd_serve(&v, longpath, &err));
    ck_assert_int_eq(err, -ENAMETOOLONG);
}
END_TEST

struct par {
    uint64_t off;
    bool ok;
};

static void *par_reader(void *arg)
{
    struct par *p = arg;
    struct nbd_handle *h = client(true, false);
    uint8_t *buf = malloc(MIB);
    p->ok = true;
    for (int i = 0; i < 20 && p->ok; i++) {
        uint64_t off = (p->off + (uint64_t)i * 65537) % (DISK - MIB);
        if (nbd_pread(h, buf, MIB, off, 0) < 0)
            p->ok = false;
        for (size_t j = 0; j < MIB && p->ok; j++)
            p->ok = buf[j] == pattern(off + j);
    }
    free(buf);
    nbd_close(h);
    return NULL;
}

START_TEST(test_parallel_clients)
{
    pthread_t th[6];
    struct par p[6];
    for (int i = 0; i < 6; i++) {
        p[i].off = (uint64_t)i * 1000003;
        pthread_create(&th[i], NULL, par_reader, &p[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        ck_assert(p[i].ok);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nbd");
    TCase *tc = tcase_create("server");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_read_structured);
    tcase_add_test(tc, test_read_simple);
    tcase_add_test(tc, test_block_status);
    tcase_add_test(tc, test_list_and_info);
    tcase_add_test(tc, test_raw_bad_requests);
    tcase_add_test(tc, test_raw_huge_write_disconnects);
    tcase_add_test(tc, test_raw_options);
    tcase_add_test(tc, test_raw_framing);
    tcase_add_test(tc, test_connection_limit_and_stop);
    tcase_add_test(tc, test_serve_errors);
    tcase_add_test(tc, test_parallel_clients);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
