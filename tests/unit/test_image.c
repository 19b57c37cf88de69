/* Unit tests: the generic reader (runs through a backing chain, plans,
 * extents) over a scripted driver, and opening raw files. */
#include "config.h"

#include <fcntl.h>
#include <pthread.h>

#include "unit.h"
#include "vmfs/image.h"
#include "vmfs/report.h"

#define BLK 4096

/* A scripted layer: one letter per block.  D data (file bytes = the block's
 * own pattern), Z zero, B backing, E error, C decoded. */
struct script {
    const char *s;
    uint8_t tag;
    struct vsrc *file;
};

static uint8_t pattern(uint8_t tag, uint64_t off) { return (uint8_t)(tag ^ (off / BLK) * 7); }

static int mock_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct script *sc = l->priv;
    uint64_t b = off / BLK;
    char k = sc->s[b];
    uint64_t n = 0;
    while (off + n < off + len && sc->s[(off + n) / BLK] == k) {
        uint64_t blk_end = ((off + n) / BLK + 1) * BLK;
        n = blk_end - off;
    }
    run->len = VMFS_MIN(n, len);
    switch (k) {
    case 'D': run->kind = VRUN_DATA; run->src = sc->file; run->src_off = off; break;
    case 'Z': run->kind = VRUN_ZERO; break;
    case 'B': run->kind = VRUN_BACKING; break;
    case 'C': run->kind = VRUN_DECODE; break;
    default: run->kind = VRUN_ERROR; run->err = EIO; break;
    }
    return 0;
}

static int mock_decode(struct vlayer *l, void *buf, size_t len, uint64_t off)
{
    struct script *sc = l->priv;
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = pattern(sc->tag ^ 0xc0, off + i);
    return 0;
}

static const struct vfmt_driver mock = {
    .name = "mock", .map = mock_map, .decode = mock_decode,
};

static struct vlayer *mock_layer(struct vimage *img, const char *s, uint8_t tag)
{
    size_t size = strlen(s) * BLK;
    uint8_t *bytes = malloc(size);
    for (size_t i = 0; i < size; i++)
        bytes[i] = pattern(tag, i);
    struct script *sc = calloc(1, sizeof *sc);
    sc->s = s;
    sc->tag = tag;
    sc->file = vsrc_new_mem(bytes, size, true, "mock");
    free(bytes);
    struct vlayer *l = calloc(1, sizeof *l);
    l->drv = &mock;
    l->priv = sc;
    l->size = size;
    l->img = img;
    l->path = strdup("mock");
    img->layers = realloc(img->layers, (img->nlayers + 1) * sizeof *img->layers);
    img->layers[img->nlayers++] = l;
    return l;
}

static struct vimage *mock_image(void)
{
    struct vimage *img = calloc(1, sizeof *img);
    pthread_mutex_init(&img->lock, NULL);
    pthread_cond_init(&img->alloc_done, NULL);
    img->refs = 1;
    img->path = strdup("mock");
    img->snap_index = -1;
    return img;
}

static void mock_free(struct vimage *img)
{
    for (size_t i = 0; i < img->nlayers; i++) {
        struct script *sc = img->layers[i]->priv;
        vsrc_close(sc->file);
        free(sc);
        free(img->layers[i]->path);
        free(img->layers[i]);
    }
    img->nlayers = 0;
    vimage_unref(img);
}

/* What a byte of the chain must read as, computed independently. */
static int expect(struct vimage *img, uint64_t off, uint8_t *out)
{
    for (size_t i = 0; i < img->nlayers; i++) {
        struct script *sc = img->layers[i]->priv;
        if (off >= img->layers[i]->size) {
            *out = 0;
            return 0;
        }
        switch (sc->s[off / BLK]) {
        case 'D': *out = pattern(sc->tag, off); return 0;
        case 'Z': *out = 0; return 0;
        case 'C': *out = pattern(sc->tag ^ 0xc0, off); return 0;
        case 'E': return -EIO;
        default: break;
        }
    }
    if (img->chain_broken)
        return -EIO;
    *out = 0;
    return 0;
}

static void check_all(struct vimage *img)
{
    size_t size = img->size;
    uint8_t *buf = malloc(size);
    /* Every block alone, and every 3-block window through plan and read. */
    for (uint64_t off = 0; off < size; off += BLK / 2) {
        size_t len = (size_t)VMFS_MIN((uint64_t)3 * BLK, size - off);
        int want = 0;
        uint8_t *ref = malloc(len);
        for (size_t i = 0; i < len; i++)
            if (expect(img, off + i, &ref[i]) < 0)
                want = -EIO;
        int r = vimage_read(img, buf, len, off);
        ck_assert_int_eq(r, want);
        if (r == 0)
            ck_assert_int_eq(memcmp(buf, ref, len), 0);
        struct vplan plan = VPLAN_INIT;
        r = vimage_plan(img, off, len, &plan);
        ck_assert_int_eq(r, want);
        if (r == 0) {
            size_t pos = 0;
            for (size_t s = 0; s < plan.nsegs; s++) {
                ck_assert_int_lt(plan.segs[s].fd, 0);    /* memory sources */
                ck_assert_int_eq(memcmp(plan.segs[s].mem, ref + pos, plan.segs[s].len), 0);
                pos += plan.segs[s].len;
            }
            ck_assert_uint_eq(pos, len);
        }
        vplan_free(&plan);
        free(ref);
    }
    free(buf);
}

START_TEST(chain_of_three)
{
    struct vimage *img = mock_image();
    mock_layer(img, "DBZBCBBE", 0x11);
    mock_layer(img, "BDDZBB", 0x22);        /* shorter than the top */
    mock_layer(img, "DDBBD", 0x33);
    img->size = img->layers[0]->size;
    check_all(img);
    img->chain_broken = true;               /* last layer's holes now fail */
    check_all(img);
    mock_free(img);
}
END_TEST

START_TEST(extents_follow_the_chain)
{
    struct vimage *img = mock_image();
    mock_layer(img, "ZBBBDBBB", 0x11);
    mock_layer(img, "DBBB", 0x22);
    img->size = img->layers[0]->size;
    bool data;
    uint64_t len;
    unit_extent_at(img, 0, false, 4 * BLK);   /* zero + backing holes + past backing */
    unit_extent_at(img, 4 * BLK, true, BLK);
    unit_extent_at(img, 5 * BLK, false, 3 * BLK);
    ck_assert_int_eq(vimage_extent(img, 8 * BLK, &data, &len), -ENXIO);
    ck_assert_uint_eq(vimage_allocated(img), BLK);
    mock_free(img);
}
END_TEST

START_TEST(reads_outside_the_disk)
{
    struct vimage *img = mock_image();
    mock_layer(img, "DD", 0x11);
    img->size = img->layers[0]->size;
    uint8_t b[16];
    ck_assert_int_eq(vimage_read(img, b, 16, 2 * BLK - 8), -EINVAL);
    ck_assert_int_eq(vimage_read(img, b, 1, UINT64_MAX), -EINVAL);
    mock_free(img);
}
END_TEST

START_TEST(open_files_that_are_not_images)
{
    char *empty = unit_tmpfile("", 0, "qcow2");
    struct vimage *img = vimage_open(empty, NULL, -1, false);
    unit_check_refused(img, "empty");    /* shown, with a reason */
    ck_assert_uint_eq(unit_nproblems(img), 1);
    uint8_t b[1];
    ck_assert_int_eq(vimage_read(img, b, 1, 0), -EIO);
    struct rep *r = rep_new_object();
    vimage_report(img, r);
    char *t = rep_to_text(r);
    ck_assert_ptr_nonnull(strstr(t, "status: damaged"));
    free(t);
    rep_free(r);
    vimage_unref(img);
    unlink_free(empty);

    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 131 + 7);
    char *txt = unit_tmpfile(junk, sizeof junk, "txt");
    ck_assert_ptr_null(vimage_open(txt, NULL, -1, false));
    ck_assert(!vimage_is_candidate(txt, false));
    unlink_free(txt);
}
END_TEST

START_TEST(raw_with_host_holes)
{
    char *path = unit_tmpfile("", 0, "raw");
    FILE *f = fopen(path, "r+");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 1 << 20, SEEK_SET), 0);
    fputs("data", f);
    ck_assert_int_eq(ftruncate(fileno(f), 4 << 20), 0);
    fclose(f);
    struct vimage *img = vimage_open(path, NULL, -1, false);
    ck_assert_ptr_nonnull(img);
    ck_assert_str_eq(vimage_format(img), "raw");
    ck_assert_uint_eq(img->size, 4 << 20);
    char b[4];
    ck_assert_int_eq(vimage_read(img, b, 4, 1 << 20), 0);
    ck_assert_int_eq(memcmp(b, "data", 4), 0);
    unit_extent_at(img, 0, false, 1 << 20);
    ck_assert_uint_lt(vimage_allocated(img), 1 << 20);
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

/* Data counted over any range of the chain, in one pass. */
START_TEST(count_data_by_range)
{
    struct vimage *img = mock_image();
    mock_layer(img, "ZBBBDBBBCE", 0x11);
    mock_layer(img, "DBBDBZ", 0x22);
    img->size = img->layers[0]->size;
    ck_assert_uint_eq(vimage_count_data(img, 0, img->size), 4 * BLK);
    ck_assert_uint_eq(vimage_count_data(img, BLK / 2, 4 * BLK), BLK + BLK / 2);
    ck_assert_uint_eq(vimage_count_data(img, 5 * BLK, 3 * BLK), 0);
    ck_assert_uint_eq(vimage_count_data(img, 8 * BLK, 2 * BLK), 2 * BLK);
    ck_assert_uint_eq(vimage_count_data(img, 9 * BLK, 2 * BLK), 0);   /* past the end */
    ck_assert_uint_eq(vimage_allocated(img), 4 * BLK);
    mock_free(img);
}
END_TEST

/* A layer whose allocation answers are counted, and slow. */
static unsigned alloc_calls;

static int counting_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    __atomic_add_fetch(&alloc_calls, 1, __ATOMIC_RELAXED);
    usleep(2000);
    return mock_map(l, off, len, run);
}

static const struct vfmt_driver counting = {
    .name = "mock", .map = mock_map, .map_alloc = counting_map, .decode = mock_decode,
};

static void *ask_allocated(void *arg)
{
    return (void *)(uintptr_t)vimage_allocated(arg);
}

/* Threads asking at once get one answer from one walk. */
START_TEST(allocated_once_for_many)
{
    struct vimage *img = mock_image();
    struct vlayer *l = mock_layer(img, "DBDBDBDB", 0x11);
    l->drv = &counting;
    img->size = l->size;
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, ask_allocated, img), 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        ck_assert_uint_eq((uintptr_t)r, 4 * BLK);
    }
    ck_assert_uint_eq(alloc_calls, 8);           /* one walk: a call per run */
    ck_assert_uint_eq(vimage_allocated(img), 4 * BLK);
    ck_assert_uint_eq(alloc_calls, 8);
    mock_free(img);
}
END_TEST

static void *ask_unless(void *arg)
{
    static int stop;
    struct vimage *img = arg;
    uint64_t bytes = 0;
    if (!img) {                              /* the stopper */
        usleep(5000);
        __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    return (void *)(uintptr_t)vimage_allocated_unless(img, &stop, &bytes);
}

/* A count given up halfway leaves the figure unknown, not half counted. */
START_TEST(allocated_given_up)
{
    struct vimage *img = mock_image();
    struct vlayer *l = mock_layer(img, "DBDBDBDBDBDBDBDB", 0x11);
    l->drv = &counting;
    img->size = l->size;
    pthread_t walker, stopper;
    ck_assert_int_eq(pthread_create(&walker, NULL, ask_unless, img), 0);
    ck_assert_int_eq(pthread_create(&stopper, NULL, ask_unless, NULL), 0);
    void *done;
    pthread_join(walker, &done);
    pthread_join(stopper, NULL);
    ck_assert(!done);
    ck_assert(!img->alloc_known);
    ck_assert_uint_eq(vimage_allocated(img), 8 * BLK);
    mock_free(img);
}
END_TEST

/* A 16 GiB layer with 4 KiB of data at the start of every GiB; each map
 * call is slow and notes which thread made it. */
#define GIB (1ull << 30)
static struct vsrc *big_src;
static unsigned big_calls[2];
static __thread int big_slot = -1;       /* which asking thread this is */

static int big_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    if (big_slot >= 0)
        __atomic_add_fetch(&big_calls[big_slot], 1, __ATOMIC_RELAXED);
    usleep(1000);
    uint64_t in = off % GIB;
    if (in < BLK) {
        run->kind = VRUN_DATA;
        run->src = big_src;
        run->src_off = in;
        run->len = VMFS_MIN(len, BLK - in);
    } else {
        run->kind = VRUN_BACKING;
        run->len = VMFS_MIN(len, GIB - in);
    }
    return 0;
}

static const struct vfmt_driver big = {.name = "mock", .map = big_map};

static struct vimage *big_img;

static void *ask_big(void *arg)
{
    big_slot = (int)(intptr_t)arg;
    return (void *)(uintptr_t)vimage_allocated(big_img);
}

/* Two threads asking for the count of a large disk both count parts of
 * it, and agree on the figure. */
START_TEST(allocated_shared)
{
    struct vimage *img = mock_image();
    uint8_t blk[BLK] = {1};
    big_src = vsrc_new_mem(blk, sizeof blk, true, "big");
    struct vlayer *l = calloc(1, sizeof *l);
    l->drv = &big;
    l->size = 16 * GIB;
    l->img = img;
    img->layers = calloc(1, sizeof *img->layers);
    img->layers[0] = l;
    img->nlayers = 1;
    img->size = l->size;
    big_img = img;
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, ask_big, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(t[i], &r);
        ck_assert_uint_eq((uintptr_t)r, 16 * BLK);
    }
    ck_assert_uint_gt(big_calls[0], 0);
    ck_assert_uint_gt(big_calls[1], 0);
    ck_assert_uint_eq(big_calls[0] + big_calls[1], 32);   /* each run once */
    ck_assert_uint_eq(vimage_count_data(img, GIB - 10, 20), 10);
    img->nlayers = 0;
    free(l);
    vsrc_close(big_src);
    mock_free(img);
}
END_TEST

/* A raw file with more extents than one extent-map question returns:
 * holes and data come out right everywhere, and a change to the file is
 * seen once the remembered answer is a second old. */
START_TEST(raw_with_many_extents)
{
    enum { N = 150, STEP = 64 << 10 };
    char *path = unit_tmpfile("", 0, "raw");
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    char blk[BLK];
    memset(blk, 0x5a, sizeof blk);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(pwrite(fd, blk, BLK, (off_t)i * STEP), BLK);
    ck_assert_int_eq(ftruncate(fd, (off_t)N * STEP), 0);
    fsync(fd);
    bool holes = lseek(fd, 0, SEEK_HOLE) < (off_t)N * STEP;
    struct vimage *img = vimage_open(path, NULL, -1, false);
    ck_assert_ptr_nonnull(img);
    if (!holes) {                      /* a file system without holes */
        ck_assert_uint_eq(vimage_allocated(img), (uint64_t)N * STEP);
        goto out;
    }
    ck_assert_uint_eq(vimage_allocated(img), (uint64_t)N * BLK);
    for (int i = N - 1; i >= 0; i -= 7) {
        unit_extent_at(img, (uint64_t)i * STEP + 100, true, BLK - 100);
        unit_extent_at(img, (uint64_t)i * STEP + BLK, false, STEP - BLK);
    }
    /* Punch the first block: seen after a second. */
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, BLK) == 0) {
        fsync(fd);
        usleep(1100 * 1000);
        unit_extent_at(img, 0, false, STEP);
    }
out:
    close(fd);
    vimage_unref(img);
    unlink_free(path);
}
END_TEST

/* Reads of a sparse raw file take its holes from memory and its data from
 * the file, at the right places: data at odd offsets, a hole at the start,
 * data up to the very end.  A dense file is one piece of the file. */
START_TEST(raw_sparse_reads)
{
    enum { SIZE = 8 << 20 };
    static const struct {
        off_t off;
        size_t len;
    } ext[] = {{1 << 20, 5000}, {(3 << 20) + 12345, 70000}, {SIZE - 9000, 9000}};
    char *path = unit_tmpfile("", 0, "raw");
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    char *want = xcalloc(1, SIZE);
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(ext); i++) {
        for (size_t j = 0; j < ext[i].len; j++)
            want[ext[i].off + (off_t)j] = (char)(i * 31 + j % 251 + 1);
        ck_assert_int_eq(pwrite(fd, want + ext[i].off, ext[i].len, ext[i].off),
                         (ssize_t)ext[i].len);
    }
    ck_assert_int_eq(ftruncate(fd, SIZE), 0);
    fsync(fd);
    bool holes = lseek(fd, 0, SEEK_DATA) > 0;
    struct vimage *img = vimage_open(path, NULL, -1, false);
    ck_assert_ptr_nonnull(img);
    char *got = xmalloc(SIZE);
    memset(got, 0x77, SIZE);
    ck_assert_int_eq(vimage_read(img, got, SIZE, 0), 0);
    ck_assert_int_eq(memcmp(got, want, SIZE), 0);
    /* Plans of pieces that start and end in holes and in data. */
    for (uint64_t off = 0; off < SIZE; off += 1000003) {
        size_t len = (size_t)VMFS_MIN((uint64_t)(1 << 20) + 4321, SIZE - off);
        struct vplan plan = VPLAN_INIT;
        ck_assert_int_eq(vimage_plan(img, off, len, &plan), 0);
        size_t pos = 0, file_bytes = 0;
        for (size_t i = 0; i < plan.nsegs; i++) {
            const struct vseg *g = &plan.segs[i];
            if (g->fd >= 0) {
                ck_assert_uint_eq(g->fd_off, off + pos);
                ck_assert_int_eq(pread(fd, got, g->len, (off_t)g->fd_off), (ssize_t)g->len);
                file_bytes += g->len;
            } else {
                memcpy(got, g->mem, g->len);
            }
            ck_assert_int_eq(memcmp(got, want + off + pos, g->len), 0);
            pos += g->len;
        }
        ck_assert_uint_eq(pos, len);
        if (holes)
            ck_assert_uint_lt(file_bytes, len);   /* the holes did not come from the file */
        vplan_free(&plan);
    }
    vimage_unref(img);
    /* Filled in: one piece of the file. */
    char *dense = xmalloc(SIZE);
    memset(dense, 0x3c, SIZE);
    ck_assert_int_eq(pwrite(fd, dense, SIZE, 0), SIZE);
    fsync(fd);
    img = vimage_open(path, NULL, -1, false);
    ck_assert_ptr_nonnull(img);
    struct vplan plan = VPLAN_INIT;
    ck_assert_int_eq(vimage_plan(img, 4096, SIZE - 8192, &plan), 0);
    ck_assert_uint_eq(plan.nsegs, 1);
    ck_assert_int_ge(plan.segs[0].fd, 0);
    ck_assert_uint_eq(plan.segs[0].fd_off, 4096);
    vplan_free(&plan);
    vimage_unref(img);
    close(fd);
    free(dense);
    free(got);
    free(want);
    unlink_free(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("image");
    TCase *tc = tcase_create("reader");
    tcase_add_test(tc, chain_of_three);
    tcase_add_test(tc, extents_follow_the_chain);
    tcase_add_test(tc, reads_outside_the_disk);
    tcase_add_test(tc, open_files_that_are_not_images);
    tcase_add_test(tc, raw_with_host_holes);
    tcase_add_test(tc, count_data_by_range);
    tcase_add_test(tc, allocated_once_for_many);
    tcase_add_test(tc, allocated_given_up);
    tcase_add_test(tc, allocated_shared);
    tcase_add_test(tc, raw_with_many_extents);
    tcase_add_test(tc, raw_sparse_reads);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
