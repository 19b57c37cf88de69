/* Unit tests: the qemu-nbd bridge.  Probing (no process needed), headers
 * vmfs checks itself (bad ones are refused before qemu sees them), images
 * without qemu-nbd, and — when qemu-nbd is installed — synthetic qcow
 * (version 1) images read through it: bytes, holes, a backing file opened
 * by vmfs (and refused outside SOURCE), a qemu-nbd that dies and comes
 * back, and no process or socket left once the image is closed. */
#include "config.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "unit.h"
#include "vmfs/bridge.h"
#include "vmfs/image.h"
#include "vmfs/report.h"

#define MiB (1u << 20)
#define CL 4096u

static char *dir;

static void make_dir(void)
{
    dir = unit_tmpdir("bridge");
    setenv("XDG_RUNTIME_DIR", dir, 1);   /* qemu-nbd's private dirs go here */
}

static char *write_file(const char *name, const void *data, size_t len)
{
    return unit_write(dir, name, data, len);
}

/* Entries left in dir besides the given files. */
static int entries_besides(int nkeep)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n - nkeep;
}

static void remove_dir(void)
{
    unit_rmtree(dir);
}

static bool have_qemu_nbd(void)
{
    return system("qemu-nbd --version >/dev/null 2>&1") == 0;
}

/* A qcow (version 1) image of vsize bytes, 4 KiB clusters, 512 L2 entries:
 * clusters 1 and 3 hold 0xa1 / 0xa3, the rest is unallocated. */
static uint8_t *make_qcow1(size_t *len, uint64_t vsize, const char *backing, uint32_t crypt)
{
    size_t size = 5 * CL;
    uint8_t *f = calloc(1, size);
    memcpy(f, "QFI\xfb", 4);
    unit_be(f + 4, 1, 4);
    if (backing) {
        unit_be(f + 8, 48, 8);
        unit_be(f + 16, (uint32_t)strlen(backing), 4);
        memcpy(f + 48, backing, strlen(backing));
    }
    unit_be(f + 24, vsize, 8);
    f[32] = 12;                 /* cluster bits */
    f[33] = 9;                  /* L2 bits */
    unit_be(f + 36, crypt, 4);
    unit_be(f + 40, CL, 8);       /* L1 table */
    unit_be(f + CL, 2 * CL, 8);   /* L1[0] -> L2 at 8192 */
    unit_be(f + 2 * CL + 1 * 8, 3 * CL, 8);
    unit_be(f + 2 * CL + 3 * 8, 4 * CL, 8);
    memset(f + 3 * CL, 0xa1, CL);
    memset(f + 4 * CL, 0xa3, CL);
    *len = size;
    return f;
}

static uint8_t *make_parallels(size_t *len, uint32_t tracks, uint64_t sectors)
{
    uint8_t *f = calloc(1, 4096);
    memcpy(f, "WithouFreSpacExt", 16);
    unit_le(f + 16, 2, 4);
    unit_le(f + 20, 16, 4);
    unit_le(f + 28, tracks, 4);
    unit_le(f + 32, (uint32_t)((sectors + tracks - 1) / (tracks ? tracks : 1)), 4);
    unit_le(f + 36, sectors, 8);
    unit_le(f + 48, 8, 4);
    *len = 4096;
    return f;
}

static uint8_t *make_bochs(size_t *len, uint32_t catalog, uint64_t disk)
{
    uint8_t *f = calloc(1, 4096);
    strcpy((char *)f, "Bochs Virtual HD Image");
    strcpy((char *)f + 32, "Redolog");
    strcpy((char *)f + 48, "Growing");
    unit_le(f + 64, 0x00020000, 4);
    unit_le(f + 68, 512, 4);
    unit_le(f + 72, catalog, 4);
    unit_le(f + 76, 512, 4);
    unit_le(f + 80, 65536, 4);
    unit_le(f + 88, disk, 8);
    *len = 4096;
    return f;
}

/* A .dmg whose trailer says sectors, with a property list at xml_off. */
static uint8_t *make_dmg(size_t *len, uint64_t sectors, uint64_t xml_off, bool koly)
{
    size_t size = 4096;
    uint8_t *f = calloc(1, size);
    uint8_t *k = f + size - 512;
    if (koly)
        memcpy(k, "koly", 4);
    unit_be(k + 4, 4, 4);
    unit_be(k + 0x28, 100, 8);
    unit_be(k + 0xd8, xml_off, 8);
    unit_be(k + 0xe0, 64, 8);
    unit_be(k + 0x1ec, sectors, 8);
    *len = size;
    return f;
}

static struct vimage *open_in_dir(const char *path, const char *root)
{
    struct vopen_opts o = {.root = root ? root : dir};
    struct vimage *img = vimage_open(path, &o, -1, false);
    ck_assert_ptr_nonnull(img);
    return img;
}

/* ---- probing --------------------------------------------------------- */

static const char *probed(const uint8_t *head, size_t len, const char *path)
{
    const struct vfmt_driver *d = vfmt_probe(head, len, 1 << 20, path, false);
    return d ? d->name : "none";
}

START_TEST(t_probe)
{
    uint8_t h[512];
    memset(h, 0, sizeof h);
    memcpy(h, "QFI\xfb", 4);
    unit_be(h + 4, 1, 4);
    ck_assert_str_eq(probed(h, sizeof h, "a.qcow"), "qemu-nbd");
    unit_be(h + 4, 2, 4);
    ck_assert_str_ne(probed(h, sizeof h, "a.qcow"), "qemu-nbd");   /* qcow2's */
    unit_be(h + 4, 3, 4);
    ck_assert_str_ne(probed(h, sizeof h, "a.qcow"), "qemu-nbd");
    unit_be(h + 4, 0, 4);
    ck_assert_str_eq(probed(h, sizeof h, "a.qcow"), "none");
    unit_be(h + 4, 1, 4);
    ck_assert_str_ne(probed(h, 6, "a.qcow"), "qemu-nbd");             /* too short */

    memset(h, 0, sizeof h);
    memcpy(h, "WithoutFreeSpace", 16);
    unit_le(h + 16, 2, 4);
    ck_assert_str_eq(probed(h, sizeof h, "a.hdd"), "qemu-nbd");
    memcpy(h, "WithouFreSpacExt", 16);
    ck_assert_str_eq(probed(h, sizeof h, "a.hds"), "qemu-nbd");
    unit_le(h + 16, 3, 4);
    ck_assert_str_eq(probed(h, sizeof h, "a.hds"), "none");

    size_t n;
    uint8_t *b = make_bochs(&n, 64, 4 * MiB);
    ck_assert_str_eq(probed(b, 512, "a.bochs"), "qemu-nbd");
    unit_le(b + 64, 0x00010000, 4);
    ck_assert_str_eq(probed(b, 512, "a.bochs"), "qemu-nbd");
    unit_le(b + 64, 0x00030000, 4);
    ck_assert_str_eq(probed(b, 512, "a.bochs"), "none");
    unit_le(b + 64, 0x00020000, 4);
    strcpy((char *)b + 48, "Undoable");
    ck_assert_str_eq(probed(b, 512, "a.bochs"), "none");
    free(b);

    memset(h, 0, sizeof h);
    const char *cl = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 "
                     "/dev/cloop $1\n";
    memcpy(h, cl, strlen(cl));
    ck_assert_str_eq(probed(h, sizeof h, "a.cloop"), "qemu-nbd");
    h[12] = '3';
    ck_assert_str_eq(probed(h, sizeof h, "a.cloop"), "none");

    memset(h, 0, sizeof h);
    ck_assert_str_eq(probed(h, sizeof h, "/x/a.dmg"), "qemu-nbd");
    ck_assert_str_eq(probed(h, sizeof h, "/x/A.DMG"), "qemu-nbd");
    ck_assert_str_eq(probed(h, sizeof h, "/x.dmg/a"), "none");
    ck_assert_str_eq(probed(h, sizeof h, "/x/a.dmgx"), "none");
    ck_assert_str_eq(probed(h, 0, "/x/a.bin"), "none");
}
END_TEST

/* ---- headers vmfs refuses -------------------------------------------- */

static void expect_refused(const char *name, uint8_t *data, size_t len, const char *needle)
{
    char *path = write_file(name, data, len);
    free(data);
    struct vimage *img = open_in_dir(path, NULL);
    unit_check_refused(img, needle);
    uint8_t b[512];
    ck_assert_int_eq(vimage_read(img, b, sizeof b, 0), -EIO);
    vimage_unref(img);
    unlink(path);
    free(path);
}

START_TEST(t_bad_headers)
{
    make_dir();
    setenv("VMFS_QEMU_NBD", "/nonexistent/qemu-nbd", 1);
    size_t n;
    uint8_t *f = make_qcow1(&n, 4 * MiB, NULL, 1);
    expect_refused("enc.qcow", f, n, "encrypted");
    f = make_qcow1(&n, 4 * MiB, NULL, 0);
    f[32] = 30;
    expect_refused("cbits.qcow", f, n, "cluster bits");
    f = make_qcow1(&n, 4 * MiB, "base.raw", 0);
    unit_be(f + 8, 1ull << 40, 8);
    expect_refused("bfpast.qcow", f, n, "backing file name");
    f = make_qcow1(&n, 4 * MiB, "base.raw", 0);
    unit_be(f + 16, 5000, 4);
    expect_refused("bflong.qcow", f, n, "backing file name");
    f = make_qcow1(&n, 4 * MiB, NULL, 0);
    expect_refused("short.qcow", f, 20, "truncated");
    f = make_parallels(&n, 0, 8192);
    expect_refused("p.hds", f, n, "cluster size 0");
    f = make_parallels(&n, 8, 100);
    expect_refused("p.hds", f, 100, "truncated");
    f = make_dmg(&n, 8192, 1000, false);
    expect_refused("nokoly.dmg", f, n, "no dmg trailer");
    f = make_dmg(&n, 8192, 1ull << 40, true);
    expect_refused("xmlpast.dmg", f, n, "outside");
    f = make_dmg(&n, 1ull << 62, 1000, true);
    expect_refused("huge.dmg", f, n, "absurd");
    f = make_dmg(&n, 8, 1000, true);
    expect_refused("tiny.dmg", f, 300, "no dmg trailer");
    ck_assert_int_eq(entries_besides(0), 0);
    remove_dir();
}
END_TEST

/* ---- without qemu-nbd ---------------------------------------------------- */

START_TEST(t_not_installed)
{
    make_dir();
    setenv("VMFS_QEMU_NBD", "/nonexistent/qemu-nbd", 1);
    size_t n;
    uint8_t *f = make_parallels(&n, 8, 16384);
    char *path = write_file("p.hds", f, n);
    free(f);
    struct vimage *img = open_in_dir(path, NULL);
    ck_assert(!img->top_failed);
    ck_assert_str_eq(vimage_format(img), "parallels via qemu-nbd");
    ck_assert_uint_eq(img->size, 16384u * 512);
    ck_assert(unit_has_problem(img, "Debian package qemu-utils"));
    ck_assert(unit_has_problem(img, "VMFS_QEMU_NBD=/nonexistent/qemu-nbd"));
    uint8_t b[4096];
    ck_assert_int_eq(vimage_read(img, b, sizeof b, 0), -EIO);
    unit_check_report(img, true, "\"qemu_format\": \"parallels\"", "not installed");
    vimage_unref(img);
    unlink(path);
    free(path);

    /* a qemu-nbd that cannot run */
    const char *fake = "#!/bin/sh\nexit 127\n";
    char *exe = write_file("fake-qemu-nbd", fake, strlen(fake));
    chmod(exe, 0700);
    setenv("VMFS_QEMU_NBD", exe, 1);
    f = make_qcow1(&n, 4 * MiB, NULL, 0);
    path = write_file("a.qcow", f, n);
    free(f);
    img = open_in_dir(path, NULL);
    ck_assert(!img->top_failed);
    ck_assert_str_eq(vimage_format(img), "qcow via qemu-nbd");
    ck_assert_msg(unit_has_problem(img, "could not be run"), "no problem");
    ck_assert_int_eq(vimage_read(img, b, sizeof b, 0), -EIO);
    vimage_unref(img);
    ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);   /* nothing left to reap */
    ck_assert_int_eq(errno, ECHILD);
    unlink(path);
    free(path);
    unlink(exe);
    free(exe);
    ck_assert_int_eq(entries_besides(0), 0);
    remove_dir();
}
END_TEST

/* ---- through qemu-nbd ---------------------------------------------------- */

#define NEED_QEMU_NBD()                                                                  \
    do {                                                                                 \
        if (!have_qemu_nbd()) {                                                          \
            fprintf(stderr, "qemu-nbd not installed: skipped\n");                        \
            return;                                                                      \
        }                                                                                \
        unsetenv("VMFS_QEMU_NBD");                                                       \
        make_dir();                                                                      \
    } while (0)

static void check_fill(struct vimage *img, uint64_t off, size_t len, uint8_t v)
{
    uint8_t *b = malloc(len);
    ck_assert_int_eq(vimage_read(img, b, len, off), 0);
    for (size_t i = 0; i < len; i++)
        if (b[i] != v)
            ck_abort_msg("offset %llu: %02x, expected %02x", (unsigned long long)(off + i),
                         b[i], v);
    free(b);
}

START_TEST(t_qcow1)
{
    NEED_QEMU_NBD();
    size_t n;
    uint8_t *f = make_qcow1(&n, 4 * MiB + 100, NULL, 0);
    char *path = write_file("a.qcow", f, n);
    free(f);
    struct vimage *img = open_in_dir(path, NULL);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_str_eq(vimage_format(img), "qcow via qemu-nbd");
    ck_assert_uint_eq(img->size, 4 * MiB);              /* whole sectors, as qemu */
    check_fill(img, 0, CL, 0);
    check_fill(img, CL, CL, 0xa1);
    check_fill(img, 2 * CL, CL, 0);
    check_fill(img, 3 * CL, CL, 0xa3);
    check_fill(img, 4 * CL, 4 * MiB - 4 * CL, 0);
    check_fill(img, CL + 1, 100, 0xa1);                 /* unaligned */
    unit_extent_at(img, 0, false, CL);
    unit_extent_at(img, CL, true, CL);
    ck_assert_uint_eq(vimage_allocated(img), 2 * CL);
    unit_check_report(img, true, "\"bridge_state\": \"serving\"", "\"cluster_size\": 4096");
    vimage_unref(img);
    /* the process and its private directory are gone */
    ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
    ck_assert_int_eq(errno, ECHILD);
    ck_assert_int_eq(entries_besides(1), 0);
    unlink(path);
    free(path);
    remove_dir();
}
END_TEST

/* The backing file is opened by vmfs, not by qemu: inside SOURCE it
 * fills the unallocated clusters; outside, it is refused. */
START_TEST(t_qcow1_backing)
{
    NEED_QEMU_NBD();
    uint8_t *base = malloc(4 * MiB);
    memset(base, 0x42, 4 * MiB);
    char *bpath = write_file("base.raw", base, 4 * MiB);
    free(base);
    size_t n;
    uint8_t *f = make_qcow1(&n, 4 * MiB, "base.raw", 0);
    char *path = write_file("top.qcow", f, n);
    free(f);
    struct vimage *img = open_in_dir(path, NULL);
    ck_assert_uint_eq(unit_nproblems(img), 0);
    ck_assert_uint_eq(img->nlayers, 2);
    check_fill(img, 0, CL, 0x42);
    check_fill(img, CL, CL, 0xa1);
    check_fill(img, 2 * CL, CL, 0x42);
    check_fill(img, 3 * CL, CL, 0xa3);
    check_fill(img, 3 * MiB, MiB, 0x42);
    uint8_t *b = malloc(64 * 1024);
    ck_assert_int_eq(vimage_read(img, b, 64 * 1024, 0), 0);   /* across runs */
    ck_assert_uint_eq(b[0], 0x42);
    ck_assert_uint_eq(b[CL], 0xa1);
    ck_assert_uint_eq(b[3 * CL + 5], 0xa3);
    ck_assert_uint_eq(b[60000], 0x42);
    free(b);
    vimage_unref(img);

    /* SOURCE is a subdirectory: the backing file lies outside */
    char sub[128], subimg[160];
    snprintf(sub, sizeof sub, "%s/src", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    f = make_qcow1(&n, 4 * MiB, "../base.raw", 0);
    snprintf(subimg, sizeof subimg, "%s/top.qcow", sub);
    int fd = open(subimg, O_WRONLY | O_CREAT, 0600);
    ck_assert_int_eq(write(fd, f, n), (ssize_t)n);
    close(fd);
    free(f);
    img = open_in_dir(subimg, sub);
    ck_assert(unit_has_problem(img, "outside the source directory"));
    check_fill(img, CL, CL, 0xa1);
    uint8_t one[512];
    ck_assert_int_eq(vimage_read(img, one, sizeof one, 0), -EIO);
    vimage_unref(img);
    unlink(subimg);
    rmdir(sub);
    unlink(path);
    unlink(bpath);
    free(path);
    free(bpath);
    ck_assert_int_eq(entries_besides(0), 0);
    remove_dir();
}
END_TEST

/* Pids of this process's children. */
static size_t children(pid_t *out, size_t cap)
{
    size_t n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[300];
        snprintf(p, sizeof p, "/proc/self/task/%s/children", de->d_name);
        FILE *fp = fopen(p, "r");
        int pid;
        while (fp && n < cap && fscanf(fp, "%d", &pid) == 1)
            out[n++] = pid;
        if (fp)
            fclose(fp);
    }
    if (d)
        closedir(d);
    return n;
}

/* qemu-nbd dies: the next read starts it again and succeeds. */
START_TEST(t_revive)
{
    NEED_QEMU_NBD();
    size_t n;
    uint8_t *f = make_qcow1(&n, 4 * MiB, NULL, 0);
    char *path = write_file("a.qcow", f, n);
    free(f);
    struct vimage *img = open_in_dir(path, NULL);
    check_fill(img, CL, CL, 0xa1);
    pid_t kids[8];
    ck_assert_uint_eq(children(kids, 8), 1);
    kill(kids[0], SIGKILL);
    usleep(100000);
    check_fill(img, 3 * CL, CL, 0xa3);
    pid_t kids2[8];
    ck_assert_uint_eq(children(kids2, 8), 1);
    ck_assert_int_ne(kids2[0], kids[0]);
    /* shutting the bridge down stops it; the image then fails, no crash */
    vfmt_bridge_shutdown();
    ck_assert_uint_eq(children(kids2, 8), 0);
    uint8_t b[512];
    ck_assert_int_eq(vimage_read(img, b, sizeof b, CL), -EIO);
    vimage_unref(img);
    unlink(path);
    free(path);
    ck_assert_int_eq(entries_besides(0), 0);
    remove_dir();
}
END_TEST

/* qemu refuses an image vmfs passed on: a problem, EIO, no process. */
START_TEST(t_qemu_refuses)
{
    NEED_QEMU_NBD();
    size_t n;
    uint8_t *f = make_bochs(&n, 0x200000, 4 * MiB);
    char *path = write_file("big.bochs", f, n);
    free(f);
    struct vimage *img = open_in_dir(path, NULL);
    ck_assert(!img->top_failed);
    ck_assert_str_eq(vimage_format(img), "bochs via qemu-nbd");
    ck_assert_msg(unit_has_problem(img, "qemu-nbd cannot open it"), "no problem");
    uint8_t b[512];
    ck_assert_int_eq(vimage_read(img, b, sizeof b, 0), -EIO);
    vimage_unref(img);
    pid_t kids[8];
    ck_assert_uint_eq(children(kids, 8), 0);
    unlink(path);
    free(path);
    ck_assert_int_eq(entries_besides(0), 0);
    remove_dir();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("bridge");
    TCase *tc = tcase_create("checks");
    tcase_add_test(tc, t_probe);
    tcase_add_test(tc, t_bad_headers);
    tcase_add_test(tc, t_not_installed);
    suite_add_tcase(s, tc);
    TCase *q = tcase_create("qemu-nbd");
    tcase_set_timeout(q, 60);
    tcase_add_test(q, t_qcow1);
    tcase_add_test(q, t_qcow1_backing);
    tcase_add_test(q, t_revive);
    tcase_add_test(q, t_qemu_refuses);
    suite_add_tcase(s, q);
    return s;
}

int main(void) { return unit_run(suite()); }
