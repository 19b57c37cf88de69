/* Unit tests: byte source dispatch, vsrc_extent on files and memory, and
 * NBD sources against nbdkit on a private Unix socket (skipped when nbdkit
 * is not installed): reads, alignment, holes, parallel readers, a pool the
 * server limits, server errors, a server that goes away and comes back. */
#include "config.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "unit.h"
#include "vmfs/image.h"
#include "vmfs/io.h"

/* ---- helpers ----------------------------------------------------------- */

static char tmpdir[64];
static char sock[100];
static char uri[256];
static pid_t server;

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/vmfs-unit-nbd-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(sock, sizeof sock, "%s/sock", tmpdir);
    snprintf(uri, sizeof uri, "nbd+unix:///?socket=%s", sock);
}

static bool have_nbdkit(void)
{
    return system("nbdkit --version >/dev/null 2>&1") == 0;
}

static bool connectable(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* Starts nbdkit -f -U sock ARGS… and waits until it serves. */
static void start_server(const char *const *args)
{
    unlink(sock);
    const char *argv[32] = {"nbdkit", "-f", "-U", sock};
    size_t n = 4;
    for (size_t i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    server = fork();
    ck_assert_int_ge(server, 0);
    if (server == 0) {
        int nul = open("/dev/null", O_RDWR);
        char log[160];
        snprintf(log, sizeof log, "%s/nbdkit.log", tmpdir);
        int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(lfd, 2);
        execvp("nbdkit", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 1000 && !connectable(sock); i++)
        usleep(10000);
    ck_assert_msg(connectable(sock), "nbdkit did not start");
}

/* Kills the server, as a crash would (nbdkit stopped with SIGTERM waits for
 * its clients to go first). */
static void stop_server(void)
{
    if (server > 0) {
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        server = 0;
    }
}

static void cleanup_dir(void)
{
    stop_server();
    unlink(sock);
    char log[160];
    snprintf(log, sizeof log, "%s/nbdkit.log", tmpdir);
    unlink(log);
    rmdir(tmpdir);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* nbdkit's pattern plugin: each 8 bytes hold their offset, big-endian. */
static uint8_t pattern_byte(uint64_t off)
{
    uint64_t word = off & ~7ull;
    return (uint8_t)(word >> (56 - 8 * (off & 7)));
}

static void check_pattern(const uint8_t *buf, size_t len, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pattern_byte(off + i))
            ck_abort_msg("byte %llu: %02x, expected %02x", (unsigned long long)(off + i),
                         buf[i], pattern_byte(off + i));
}

/* ---- without a server -------------------------------------------------- */

START_TEST(t_is_uri)
{
    ck_assert(vsrc_is_uri("nbd://host/export"));
    ck_assert(vsrc_is_uri("nbd://host:10809"));
    ck_assert(vsrc_is_uri("nbd+unix:///?socket=/tmp/s"));
    ck_assert(vsrc_is_uri("nbd+unix:///exp?socket=/tmp/s"));
    ck_assert(vsrc_is_uri("nbds://host/x"));
    ck_assert(vsrc_is_uri("nbds+unix:///?socket=/s"));
    ck_assert(vsrc_is_uri("nbd+vsock:///"));
    ck_assert(!vsrc_is_uri("/srv/images/nbd://x"));
    ck_assert(!vsrc_is_uri("nbd:/x"));
    ck_assert(!vsrc_is_uri("NBD://host"));
    ck_assert(!vsrc_is_uri("disk.img"));
    ck_assert(!vsrc_is_uri(""));
    ck_assert(!vsrc_is_uri("http://host/x"));
}
END_TEST

/* A file whose path reads like a URI: vsrc_open takes it for a URI (and
 * fails to connect), vsrc_open_file and a "./" path open the file. */
START_TEST(t_dispatch)
{
    make_tmpdir();
    char cwd[512];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(tmpdir), 0);
    ck_assert_int_eq(mkdir("nbd+unix:", 0700), 0);
    int fd = open("nbd+unix:/x", O_CREAT | O_WRONLY, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "abcd", 4), 4);
    close(fd);

    int err = 0;
    struct vsrc *s = vsrc_open("nbd+unix:///x", &err);
    ck_assert_ptr_null(s);
    ck_assert_int_lt(err, 0);
    s = vsrc_open_file("nbd+unix:///x", &err);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(s->size, 4);
    ck_assert_int_ge(s->fd, 0);
    vsrc_close(s);
    s = vsrc_open("./nbd+unix:///x", &err);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(s->size, 4);
    vsrc_close(s);
    err = 0;
    ck_assert_ptr_null(vsrc_open("/nonexistent/vmfs/file", &err));
    ck_assert_int_eq(err, -ENOENT);
    err = 0;
    ck_assert_ptr_null(vsrc_open("nbd+unix:///?socket=/nonexistent/vmfs.sock", &err));
    ck_assert_int_lt(err, 0);

    unlink("nbd+unix:/x");
    rmdir("nbd+unix:");
    ck_assert_int_eq(chdir(cwd), 0);
    rmdir(tmpdir);
}
END_TEST

/* vsrc_extent on a sparse file agrees with lseek(SEEK_DATA/SEEK_HOLE). */
START_TEST(t_extent_file)
{
    char *path = unit_tmpfile("", 0, "raw");
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 8 << 20), 0);
    static uint8_t blk[65536];
    memset(blk, 0x5a, sizeof blk);
    ck_assert_int_eq(pwrite(fd, blk, sizeof blk, 1 << 20), (ssize_t)sizeof blk);
    ck_assert_int_eq(pwrite(fd, blk, sizeof blk, 5 << 20), (ssize_t)sizeof blk);
    fsync(fd);
    close(fd);

    int err = 0;
    struct vsrc *s = vsrc_open_file(path, &err);
    ck_assert_ptr_nonnull(s);
    bool sparse = lseek(s->fd, 0, SEEK_DATA) == (off_t)(1 << 20);
    uint64_t off = 0, pieces = 0, data_bytes = 0;
    while (off < s->size) {
        bool data;
        uint64_t n;
        ck_assert_int_eq(vsrc_extent(s, off, s->size - off, &data, &n), 0);
        ck_assert_uint_gt(n, 0);
        ck_assert_uint_le(n, s->size - off);
        if (data)
            data_bytes += n;
        /* the oracle: the kernel's own answer */
        off_t d = lseek(s->fd, (off_t)off, SEEK_DATA);
        if (sparse)
            ck_assert_int_eq(data, d == (off_t)off);
        off += n;
        pieces++;
    }
    if (sparse) {
        ck_assert_uint_eq(pieces, 5);
        ck_assert_uint_eq(data_bytes, 2 * sizeof blk);
    }
    /* a range that stops inside a hole */
    bool data;
    uint64_t n;
    ck_assert_int_eq(vsrc_extent(s, 4096, 8192, &data, &n), 0);
    ck_assert_uint_eq(n, sparse ? 8192 : 8192);
    ck_assert(!sparse || !data);
    /* bounds */
    ck_assert_int_eq(vsrc_extent(s, 0, 0, &data, &n), -EIO);
    ck_assert_int_eq(vsrc_extent(s, s->size, 1, &data, &n), -EIO);
    ck_assert_int_eq(vsrc_extent(s, s->size - 1, 2, &data, &n), -EIO);
    ck_assert_int_eq(vsrc_extent(s, UINT64_MAX, 2, &data, &n), -EIO);
    vsrc_close(s);

    /* raw images report the same holes through vimage_extent */
    struct vimage *img = vimage_open(path, NULL, -1, true);
    ck_assert_ptr_nonnull(img);
    ck_assert_str_eq(vimage_format(img), "raw");
    ck_assert_int_eq(vimage_extent(img, 0, &data, &n), 0);
    if (sparse) {
        ck_assert(!data);
        ck_assert_uint_eq(n, 1 << 20);
        ck_assert_uint_eq(vimage_allocated(img), 2 * sizeof blk);
    }
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

START_TEST(t_extent_mem)
{
    uint8_t buf[100] = {0};
    struct vsrc *s = vsrc_new_mem(buf, sizeof buf, false, "m");
    bool data = false;
    uint64_t n = 0;
    ck_assert_int_eq(vsrc_extent(s, 10, 50, &data, &n), 0);
    ck_assert(data);
    ck_assert_uint_eq(n, 50);
    ck_assert_int_eq(vsrc_extent(s, 90, 11, &data, &n), -EIO);
    vsrc_close(s);
}
END_TEST

/* ---- against nbdkit ------------------------------------------------------ */

#define NEED_NBDKIT()                                                                    \
    do {                                                                                 \
        if (!have_nbdkit()) {                                                            \
            fprintf(stderr, "nbdkit not installed: skipped\n");                          \
            return;                                                                      \
        }                                                                                \
        make_tmpdir();                                                                   \
    } while (0)

START_TEST(t_nbd_read)
{
    NEED_NBDKIT();
    start_server((const char *[]){"pattern", "size=80M", NULL});
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_msg(s != NULL, "open: %s", strerror(-err));
    ck_assert_uint_eq(s->size, 80u << 20);
    ck_assert_int_eq(s->fd, -1);
    static uint8_t buf[40u << 20];
    /* odd offsets and lengths, a read larger than one request, the end */
    const uint64_t offs[] = {0, 1, 4095, 1 << 20, (80u << 20) - 7, 12345678};
    const size_t lens[] = {4096, 3, 8193, sizeof buf, 7, 100000};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(offs); i++) {
        ck_assert_int_eq(vsrc_pread(s, buf, lens[i], offs[i]), 0);
        check_pattern(buf, lens[i], offs[i]);
    }
    ck_assert_int_eq(vsrc_pread(s, buf, 8, (80u << 20) - 7), -EIO);   /* past the end */
    bool data;
    uint64_t n;
    ck_assert_int_eq(vsrc_extent(s, 0, s->size, &data, &n), 0);
    ck_assert(data);
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

/* A server that wants 4 KiB-aligned requests still serves odd reads. */
START_TEST(t_nbd_min_block)
{
    NEED_NBDKIT();
    start_server((const char *[]){"--filter=blocksize-policy", "pattern", "size=1M",
                                  "blocksize-minimum=4096", "blocksize-preferred=4096",
                                  "blocksize-maximum=65536", "blocksize-error-policy=error",
                                  NULL});
    int err = 0;
    struct vsrc *s = vsrc_open_nbd(uri, &err);
    ck_assert_msg(s != NULL, "open: %s", strerror(-err));
    uint8_t buf[200000];
    const uint64_t offs[] = {1000, 4096, 65530, 0, (1u << 20) - 100};
    const size_t lens[] = {100, 4096, 140000, sizeof buf, 100};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(offs); i++) {
        ck_assert_int_eq(vsrc_pread(s, buf, lens[i], offs[i]), 0);
        check_pattern(buf, lens[i], offs[i]);
    }
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

/* Holes from block status, for the source and for a raw image over it. */
START_TEST(t_nbd_extent)
{
    NEED_NBDKIT();
    start_server((const char *[]){"data", "@1048576 1 2 3 4 @3145728 9*40000", "size=4M",
                                  NULL});
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    bool data;
    uint64_t n;
    ck_assert_int_eq(vsrc_extent(s, 0, s->size, &data, &n), 0);
    ck_assert(!data);
    ck_assert_uint_eq(n, 1 << 20);
    ck_assert_int_eq(vsrc_extent(s, 1 << 20, s->size - (1 << 20), &data, &n), 0);
    ck_assert(data);
    ck_assert_uint_ge(n, 4);
    ck_assert_int_eq(vsrc_extent(s, (1 << 20) + 1, 10, &data, &n), 0);   /* unaligned, short */
    ck_assert(data);
    ck_assert_uint_le(n, 10);
    ck_assert_int_eq(vsrc_extent(s, 2 << 20, 4096, &data, &n), 0);
    ck_assert(!data);
    ck_assert_uint_eq(n, 4096);
    vsrc_close(s);

    struct vimage *img = vimage_open(uri, NULL, -1, true);
    ck_assert_ptr_nonnull(img);
    ck_assert_str_eq(vimage_format(img), "raw");
    ck_assert_uint_eq(img->size, 4 << 20);
    uint64_t off = 0, data_bytes = 0;
    unsigned pieces = 0;
    while (off < img->size) {
        ck_assert_int_eq(vimage_extent(img, off, &data, &n), 0);
        if (data) {
            data_bytes += n;
            ck_assert(off == (1 << 20) || off == (3 << 20));
        }
        off += n;
        pieces++;
    }
    ck_assert_uint_eq(pieces, 5);
    ck_assert_uint_ge(data_bytes, 40004);
    uint8_t buf[8];
    ck_assert_int_eq(vimage_read(img, buf, 4, 1 << 20), 0);
    ck_assert_mem_eq(buf, "\1\2\3\4", 4);
    ck_assert_int_eq(vimage_read(img, buf, 2, (3 << 20) + 39999), 0);
    ck_assert_mem_eq(buf, "\x09\x00", 2);
    char **probs;
    ck_assert_uint_eq(vimage_problems(img, &probs), 0);
    free(probs);
    vimage_unref(img);
    cleanup_dir();
}
END_TEST

/* Without block status everything is data. */
START_TEST(t_nbd_noextents)
{
    NEED_NBDKIT();
    start_server((const char *[]){"--filter=noextents", "data", "@65536 1", "size=1M", NULL});
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    bool data = false;
    uint64_t n;
    ck_assert_int_eq(vsrc_extent(s, 0, s->size, &data, &n), 0);
    ck_assert(data);
    ck_assert_uint_eq(n, s->size);
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

struct reader {
    struct vsrc *s;
    unsigned seed;
    int bad;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    uint8_t *buf = malloc(300000);
    for (int i = 0; i < 150; i++) {
        r->seed = r->seed * 1103515245u + 12345u;
        uint64_t off = (uint64_t)(r->seed % (r->s->size - 300000));
        size_t len = 1 + r->seed % 299999;
        if (vsrc_pread(r->s, buf, len, off) < 0) {
            r->bad++;
            continue;
        }
        for (size_t j = 0; j < len; j++)
            if (buf[j] != pattern_byte(off + j)) {
                r->bad++;
                break;
            }
    }
    free(buf);
    return NULL;
}

static void parallel_reads(struct vsrc *s)
{
    enum { N = 8 };
    pthread_t t[N];
    struct reader r[N];
    for (int i = 0; i < N; i++) {
        r[i] = (struct reader){s, (unsigned)i * 7919u + 1, 0};
        pthread_create(&t[i], NULL, reader_main, &r[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(r[i].bad, 0);
    }
}

START_TEST(t_nbd_parallel)
{
    NEED_NBDKIT();
    start_server((const char *[]){"pattern", "size=64M", NULL});
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    parallel_reads(s);
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

/* A server that takes two connections, and one that takes one without
 * saying multi-conn: the pool stays within what it gets. */
START_TEST(t_nbd_limited)
{
    NEED_NBDKIT();
    start_server((const char *[]){"--filter=limit", "pattern", "size=64M", "limit=2", NULL});
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    double t0 = now_s();
    parallel_reads(s);
    ck_assert_msg(now_s() - t0 < 30, "limited pool took %.1f s", now_s() - t0);
    vsrc_close(s);
    stop_server();
    start_server((const char *[]){"--filter=multi-conn", "pattern", "size=64M",
                                  "multi-conn-mode=disable", NULL});
    s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    parallel_reads(s);
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

/* Errors the server sends for one request fail that read only. */
START_TEST(t_nbd_server_errors)
{
    NEED_NBDKIT();
    start_server((const char *[]){"--filter=error", "pattern", "size=1M", "error=EIO",
                                  "error-pread-rate=100%", NULL});
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    uint8_t buf[4096];
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(vsrc_pread(s, buf, sizeof buf, 0), -EIO);
    vsrc_close(s);
    stop_server();
    /* some of the commands of a long read fail: the read fails whole, the
     * others are waited for, the connection stays */
    start_server((const char *[]){"--filter=error", "pattern", "size=8M", "error=EIO",
                                  "error-pread-rate=20%", NULL});
    s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    uint8_t *big = malloc(1u << 20);
    int good = 0, bad = 0;
    for (int i = 0; i < 60; i++) {
        uint64_t off = (uint64_t)(i * 104729) % (7u << 20);
        int r = vsrc_pread(s, big, 1u << 20, off);
        if (r == 0) {
            check_pattern(big, 1u << 20, off);
            good++;
        } else {
            ck_assert_int_eq(r, -EIO);
            bad++;
        }
    }
    ck_assert_int_gt(bad, 0);
    ck_assert_int_gt(good, 0);
    free(big);
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

/* The server goes away: reads fail with EIO, quickly; it comes back on the
 * same socket: reads work again.  Another size after a restart is refused. */
START_TEST(t_nbd_restart)
{
    NEED_NBDKIT();
    const char *args[] = {"pattern", "size=8M", NULL};
    start_server(args);
    int err = 0;
    struct vsrc *s = vsrc_open(uri, &err);
    ck_assert_ptr_nonnull(s);
    uint8_t buf[65536];
    ck_assert_int_eq(vsrc_pread(s, buf, sizeof buf, 4096), 0);
    stop_server();
    ck_assert_int_eq(vsrc_pread(s, buf, sizeof buf, 4096), -EIO);
    double t0 = now_s();
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(vsrc_pread(s, buf, 512, 0), -EIO);
    ck_assert_msg(now_s() - t0 < 2.0, "50 reads of a dead server took %.2f s", now_s() - t0);
    start_server(args);
    int r = -EIO;
    for (int i = 0; i < 40 && r < 0; i++) {      /* within the retry interval */
        r = vsrc_pread(s, buf, sizeof buf, 8192);
        if (r < 0)
            usleep(100000);
    }
    ck_assert_int_eq(r, 0);
    check_pattern(buf, sizeof buf, 8192);
    parallel_reads(s);                           /* the whole pool works again */
    /* a restart between two reads is not even noticed */
    stop_server();
    start_server(args);
    usleep(1100000);
    ck_assert_int_eq(vsrc_pread(s, buf, sizeof buf, 0), 0);
    check_pattern(buf, sizeof buf, 0);
    /* another disk on the socket: refused */
    stop_server();
    start_server((const char *[]){"pattern", "size=9M", NULL});
    usleep(1100000);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(vsrc_pread(s, buf, sizeof buf, 0), -EIO);
    vsrc_close(s);
    cleanup_dir();
}
END_TEST

/* A server that was never there: vsrc_open fails, vimage_open still gives
 * an image that says why. */
START_TEST(t_nbd_absent)
{
    make_tmpdir();
    int err = 0;
    ck_assert_ptr_null(vsrc_open_nbd(uri, &err));
    ck_assert_int_lt(err, 0);
    struct vimage *img = vimage_open(uri, NULL, -1, true);
    ck_assert_ptr_nonnull(img);
    ck_assert(img->top_failed);
    char **probs;
    size_t np = vimage_problems(img, &probs);
    ck_assert_uint_ge(np, 1);
    ck_assert_ptr_nonnull(strstr(probs[0], "cannot be opened"));
    for (size_t i = 0; i < np; i++)
        free(probs[i]);
    free(probs);
    uint8_t b[1];
    ck_assert_int_eq(vimage_read(img, b, 1, 0), -EIO);
    vimage_unref(img);
    rmdir(tmpdir);
}
END_TEST

/* A qcow2 image served over NBD is decoded as qcow2. */
START_TEST(t_nbd_qcow2_content)
{
    NEED_NBDKIT();
    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        cleanup_dir();
        return;
    }
    char img_path[160], cmd[512];
    snprintf(img_path, sizeof img_path, "%s/a.qcow2", tmpdir);
    snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 %s 2M && "
             "qemu-io -f qcow2 -c 'write -q -P 0x61 65536 4096' %s >/dev/null",
             img_path, img_path);
    ck_assert_int_eq(system(cmd), 0);
    char file_arg[200];
    snprintf(file_arg, sizeof file_arg, "file=%s", img_path);
    start_server((const char *[]){"-r", "file", file_arg, NULL});
    struct vimage *img = vimage_open(uri, NULL, -1, true);
    ck_assert_ptr_nonnull(img);
    ck_assert_str_eq(vimage_format(img), "qcow2");
    ck_assert_uint_eq(img->size, 2 << 20);
    uint8_t buf[4096];
    ck_assert_int_eq(vimage_read(img, buf, sizeof buf, 65536), 0);
    for (size_t i = 0; i < sizeof buf; i++)
        ck_assert_uint_eq(buf[i], 0x61);
    ck_assert_int_eq(vimage_read(img, buf, sizeof buf, 0), 0);
    ck_assert_uint_eq(buf[0], 0);
    vimage_unref(img);
    unlink(img_path);
    cleanup_dir();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("nbd_source");
    TCase *tc = tcase_create("local");
    tcase_add_test(tc, t_is_uri);
    tcase_add_test(tc, t_dispatch);
    tcase_add_test(tc, t_extent_file);
    tcase_add_test(tc, t_extent_mem);
    suite_add_tcase(s, tc);
    TCase *nb = tcase_create("nbdkit");
    tcase_set_timeout(nb, 120);
    tcase_add_test(nb, t_nbd_read);
    tcase_add_test(nb, t_nbd_min_block);
    tcase_add_test(nb, t_nbd_extent);
    tcase_add_test(nb, t_nbd_noextents);
    tcase_add_test(nb, t_nbd_parallel);
    tcase_add_test(nb, t_nbd_limited);
    tcase_add_test(nb, t_nbd_server_errors);
    tcase_add_test(nb, t_nbd_restart);
    tcase_add_test(nb, t_nbd_absent);
    tcase_add_test(nb, t_nbd_qcow2_content);
    suite_add_tcase(s, nb);
    return s;
}

int main(void) { return unit_run(suite()); }
