/* Unit tests: the parts of the guest layer that need no appliance — the
 * filefrag parser and the direct read path, shell quoting, the caches and
 * their budgets, path checks, what a view's filesystems are known to be
 * from the signature scan alone, and the wait hooks (no appliance is ever
 * started here). */
#include "config.h"

#include "guest/guest_int.h"
#include "unit.h"
#include "vmfs/report.h"

#define MIB (1u << 20)

/* ---- shell quoting ---- */

START_TEST(test_shell_quote)
{
    char *q = g_shell_quote("it's a \"name\" $(x) `y`\n");
    ck_assert_str_eq(q, "'it'\\''s a \"name\" $(x) `y`\n'");
    free(q);
    q = g_shell_quote("");
    ck_assert_str_eq(q, "''");
    free(q);
}
END_TEST

/* ---- filefrag output ---- */

static const char ff_ok[] =
    "Filesystem type is: ef53\n"
    "File size of ./a is 10000 (3 blocks of 4096 bytes)\n"
    " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
    "   0:        0..       0:        100..       100:      1:            \n"
    "   1:        2..       2:        300..       300:      1:        101: last,unwritten,eof\n"
    "./a: 2 extents found\n"
    "File size of ./b is 1 (1 block of 1024 bytes)\n"
    " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
    "   0:        0..       0:         50..        50:      1:             last,eof\n"
    "./b: 1 extent found\n"
    "File size of ./x is 5 (1 block of 4096 bytes)\n"
    " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
    "   0:        0..       0:          0..         0:      1:             last,not_aligned,inline,eof\n"
    "./x: 1 extent found\n"
    "File size of ./name is 9 (1 block of 4096 bytes) is 7 (1 block of 4096 bytes)\n"
    " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
    "   0:        0..       0:         60..        60:      1:             last,eof\n"
    "./name is 9 (1 block of 4096 bytes): 1 extent found\n";

START_TEST(test_filefrag_parse)
{
    char *names[] = {"a", "b", "missing", "x", "name is 9 (1 block of 4096 bytes)"};
    uint64_t sizes[] = {10000, 1, 3, 5, 7};
    struct gmap *maps[5] = {NULL};
    g_parse_filefrag(ff_ok, names, 5, sizes, 1u << 30, maps);
    ck_assert_ptr_nonnull(maps[0]);
    ck_assert(maps[0]->direct);
    ck_assert_uint_eq(maps[0]->n, 2);
    ck_assert_uint_eq(maps[0]->e[0].lo, 0);
    ck_assert_uint_eq(maps[0]->e[0].po, 100 * 4096);
    ck_assert_uint_eq(maps[0]->e[0].len, 4096);
    ck_assert(!maps[0]->e[0].zero);
    ck_assert_uint_eq(maps[0]->e[1].lo, 2 * 4096);
    ck_assert(maps[0]->e[1].zero);
    ck_assert_ptr_nonnull(maps[1]);
    ck_assert_uint_eq(maps[1]->e[0].po, 50 * 1024);
    ck_assert_ptr_null(maps[2]);            /* not in the output */
    ck_assert_ptr_null(maps[3]);            /* inline data: not on the disk */
    ck_assert_ptr_nonnull(maps[4]);         /* " is " in a name does not confuse */
    ck_assert_uint_eq(maps[4]->e[0].po, 60 * 4096);
    for (int i = 0; i < 5; i++)
        gmap_free(maps[i]);
}
END_TEST

START_TEST(test_filefrag_distrust)
{
    char *names[] = {"a"};
    uint64_t size = 10000;
    struct gmap *m = NULL;
    /* Past the end of the device. */
    g_parse_filefrag(ff_ok, names, 1, &size, 200 * 4096, &m);
    ck_assert_ptr_null(m);
    /* A size that is not the listed one: another file. */
    size = 9999;
    g_parse_filefrag(ff_ok, names, 1, &size, 1u << 30, &m);
    ck_assert_ptr_null(m);
    /* Overlapping extents. */
    static const char overlap[] =
        "File size of ./a is 8192 (2 blocks of 4096 bytes)\n"
        " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
        "   0:        0..       1:        100..       101:      2:            \n"
        "   1:        1..       1:        300..       300:      1:        102: last,eof\n"
        "./a: 2 extents found\n";
    size = 8192;
    g_parse_filefrag(overlap, names, 1, &size, 1u << 30, &m);
    ck_assert_ptr_null(m);
    /* A length that does not match its ranges. */
    static const char badlen[] =
        "File size of ./a is 8192 (2 blocks of 4096 bytes)\n"
        " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
        "   0:        0..       1:        100..       101:      9:             last,eof\n"
        "./a: 1 extent found\n";
    g_parse_filefrag(badlen, names, 1, &size, 1u << 30, &m);
    ck_assert_ptr_null(m);
    /* Output cut in the middle; FIBMAP output (no extent table). */
    static const char cut[] =
        "File size of ./a is 8192 (2 blocks of 4096 bytes)\n"
        " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
        "   0:        0..       1:        100..       101:      2:  ";
    g_parse_filefrag(cut, names, 1, &size, 1u << 30, &m);
    ck_assert_ptr_null(m);
    static const char fibmap[] =
        "File size of ./a is 8192 (2 blocks of 4096 bytes)\n"
        "./a: 1 extent found\n";
    g_parse_filefrag(fibmap, names, 1, &size, 1u << 30, &m);
    ck_assert_ptr_null(m);
    /* Absurd numbers. */
    static const char huge[] =
        "File size of ./a is 8192 (2 blocks of 4096 bytes)\n"
        " ext:     logical_offset:        physical_offset: length:   expected: flags:\n"
        "   0: 18446744073709551615.. 18446744073709551615: 1.. 1: 1: last,eof\n"
        "./a: 1 extent found\n";
    g_parse_filefrag(huge, names, 1, &size, UINT64_MAX, &m);
    ck_assert_ptr_null(m);
}
END_TEST

/* ---- a disk image for the view-based tests ---- */

static char *img;
static struct timg *t;

static uint8_t pattern(uint64_t off) { return (uint8_t)(off * 13 + (off >> 9) + 1); }

/* An MBR disk of 8 MiB: p1 (1-5 MiB) starts with an ext4 superblock,
 * p2 (5-7 MiB) is swap; every other byte is the pattern. */
static void make_disk(void)
{
    uint8_t *d = malloc(8 * MIB);
    for (uint64_t i = 0; i < 8 * MIB; i++)
        d[i] = pattern(i);
    memset(d, 0, 512);
    const uint32_t parts[2][3] = {{2048, 8192, 0x83}, {10240, 4096, 0x82}};
    for (int p = 0; p < 2; p++) {
        uint8_t *e = d + 446 + 16 * p;
        e[4] = (uint8_t)parts[p][2];
        for (int b = 0; b < 4; b++) {
            e[8 + b] = (uint8_t)(parts[p][0] >> (8 * b));
            e[12 + b] = (uint8_t)(parts[p][1] >> (8 * b));
        }
    }
    d[510] = 0x55;
    d[511] = 0xaa;
    uint8_t *sb = d + MIB + 1024;
    memset(sb, 0, 1024);
    sb[0x38] = 0x53;
    sb[0x39] = 0xef;
    sb[0x60] = 0x40;                              /* extents: ext4 */
    for (int i = 0; i < 16; i++)
        sb[0x68 + i] = (uint8_t)(0x11 * (i + 1));
    memcpy(sb + 0x78, "guestlabel", 10);
    uint8_t *sw = d + 5 * MIB;
    memset(sw, 0, 4096);
    memcpy(sw + 4086, "SWAPSPACE2", 10);
    img = unit_tmpfile(d, 8 * MIB, "img");
    free(d);
}

static void setup(void)
{
    make_disk();
    struct tree_opts o = {.source = "/tmp", .open = {.max_chain = VMFS_DEFAULT_MAX_CHAIN}};
    tree_init(&o);
    struct guest_opts go = {0};
    guest_init(&go);
    t = tree_get(img, -1);
    ck_assert_ptr_nonnull(t);
}

static void teardown(void)
{
    tree_put(t);
    guest_shutdown();
    tree_shutdown();
    unlink_free(img);
}

START_TEST(test_read_mapped)
{
    struct vview v = {t, -1};
    struct gext e[3] = {
        {.lo = 0, .po = 100000, .len = 5000},          /* data */
        {.lo = 8192, .po = 0, .len = 4096, .zero = true}, /* unwritten */
        {.lo = 20000, .po = 3 * MIB, .len = 10000},     /* data, after a hole */
    };
    struct gmap m = {.direct = true, .n = 3, .e = e};
    uint64_t fsize = 29000;   /* ends inside the last extent */
    uint8_t *buf = malloc(fsize);
    ck_assert_int_eq(g_read_mapped(&v, &m, fsize, buf, fsize, 0), 0);
    for (uint64_t i = 0; i < fsize; i++) {
        uint8_t want = 0;
        if (i < 5000)
            want = pattern(100000 + i);
        else if (i >= 20000)
            want = pattern(3 * MIB + i - 20000);
        if (buf[i] != want)
            ck_abort_msg("byte %llu", (unsigned long long)i);
    }
    /* A range starting inside an extent. */
    ck_assert_int_eq(g_read_mapped(&v, &m, fsize, buf, 100, 21000), 0);
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq(buf[i], pattern(3 * MIB + 1000 + (uint64_t)i));
    /* Never past the file; an extent past the disk is an error. */
    ck_assert_int_eq(g_read_mapped(&v, &m, fsize, buf, 10, fsize - 5), -EINVAL);
    struct gext far = {.lo = 0, .po = 8 * MIB - 10, .len = 4096};
    struct gmap bad = {.direct = true, .n = 1, .e = &far};
    ck_assert_int_lt(g_read_mapped(&v, &bad, 4096, buf, 4096, 0), 0);
    free(buf);
}
END_TEST

START_TEST(test_static_facts)
{
    char *type, *label, *uuid;
    g_static_facts(t, "p1", &type, &label, &uuid);
    ck_assert_str_eq(type, "ext4");
    ck_assert_str_eq(label, "guestlabel");
    ck_assert_str_eq(uuid, "11223344-5566-7788-99aa-bbccddeeff10");
    free(type);
    free(label);
    free(uuid);
    ck_assert_int_eq(g_static_state(t, "p1"), 0);    /* needs an appliance */
    ck_assert_int_eq(g_static_state(t, "p2"), 1);    /* swap: never mounted */
    ck_assert_int_eq(g_static_state(t, "p9"), -ENOENT);
}
END_TEST

START_TEST(test_unmountable_without_appliance)
{
    struct stat st;
    ck_assert_int_eq(guest_stat(t, "p2", "/", &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(guest_stat(t, "p2", "/etc", &st), -ENOENT);
    struct guest_dirent *e = NULL;
    size_t n = 99;
    ck_assert_int_eq(guest_readdir(t, "p2", "/", &e, &n), 0);
    ck_assert_uint_eq(n, 0);
    guest_dirents_free(e, n);
    char buf[16];
    ck_assert_int_eq(guest_read(t, "p2", "/x", buf, sizeof buf, 0), -ENOENT);
    ck_assert_int_eq(guest_listxattr(t, "p2", "/", buf, sizeof buf), 0);
    ck_assert_int_eq(guest_stat(t, "p7", "/", &st), -ENOENT);
}
END_TEST

START_TEST(test_bad_paths)
{
    struct stat st;
    static const char *const bad[] = {"", "etc", "/etc/", "//", "/a//b", "/.", "/a/..",
                                      "/./a", "/../x"};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++)
        ck_assert_int_eq(guest_stat(t, "p1", bad[i], &st), -EINVAL);
    char name[300];
    name[0] = '/';
    memset(name + 1, 'n', 256);
    name[257] = 0;
    ck_assert_int_eq(guest_stat(t, "p1", name, &st), -ENAMETOOLONG);
    char *longpath = malloc(G_MAX_PATH + 10);
    for (int i = 0; i < G_MAX_PATH + 8; i += 2) {
        longpath[i] = '/';
        longpath[i + 1] = 'a';
    }
    longpath[G_MAX_PATH + 8] = 0;
    ck_assert_int_eq(guest_stat(t, "p1", longpath, &st), -ENAMETOOLONG);
    free(longpath);
    ck_assert_int_eq(guest_stat(t, NULL, "/", &st), -EINVAL);
    ck_assert_int_eq(guest_getxattr(t, "p2", "/", "", NULL, 0), -EINVAL);
}
END_TEST

START_TEST(test_report_without_appliance)
{
    struct rep *r = rep_new_object();
    guest_report(t, r);
    char *json = rep_to_json(r);
    ck_assert_ptr_nonnull(strstr(json, "\"view\": \"p1\""));
    ck_assert_ptr_nonnull(strstr(json, "\"label\": \"guestlabel\""));
    ck_assert_ptr_nonnull(strstr(json, "\"mounted\": null"));      /* p1: not tried */
    ck_assert_ptr_nonnull(strstr(json, "\"mounted\": false"));     /* p2: swap */
    ck_assert_ptr_nonnull(strstr(json, "swap space"));
    ck_assert_ptr_null(strstr(json, "\"view\": \"disk\""));        /* partitioned */
    free(json);
    rep_free(r);
}
END_TEST

/* ---- waiting for an appliance ---- */

static int begun, ended;
static pthread_t waiter;

static void hook_begin(void *arg)
{
    ck_assert_ptr_eq(arg, &begun);
    ck_assert_int_eq(begun, ended);        /* not nested */
    begun++;
    waiter = pthread_self();
}

static void hook_end(void *arg)
{
    ck_assert_ptr_eq(arg, &begun);
    ck_assert_int_eq(begun, ended + 1);
    ck_assert(pthread_equal(waiter, pthread_self()));
    ended++;
}

/* A request that needs an appliance tells the hooks around its wait (here
 * for one that cannot start: its directory cannot be made); answers known
 * without an appliance do not. */
START_TEST(test_wait_hooks)
{
    guest_shutdown();
    struct guest_opts go = {.runtime_dir = "/proc/vmfs-unit-no-such-dir"};
    guest_init(&go);
    static const struct guest_wait_hooks hooks = {hook_begin, hook_end, &begun};
    guest_set_wait_hooks(&hooks);
    begun = ended = 0;
    struct stat st;
    ck_assert_int_eq(guest_stat(t, "p2", "/", &st), 0);     /* swap: known */
    ck_assert_int_eq(guest_stat(t, "p1", "/a/.", &st), -EINVAL);
    ck_assert_int_eq(begun, 0);
    ck_assert_int_eq(guest_stat(t, "p1", "/etc", &st), -EIO);
    ck_assert_int_ge(begun, 1);
    ck_assert_int_eq(ended, begun);
    char buf[16];
    int before = begun;
    ck_assert_int_lt(guest_read(t, "p1", "/x", buf, sizeof buf, 0), 0);
    ck_assert_int_eq(ended, begun);
    ck_assert_int_le(begun, before + 1);   /* a failed request waits once */
    guest_set_wait_hooks(NULL);
    ck_assert_int_eq(guest_stat(t, "p1", "/etc", &st), -EIO);
    ck_assert_int_le(begun, before + 1);
    ck_assert_int_eq(ended, begun);
}
END_TEST

/* ---- the caches ---- */

static int freed;
static void count_free(void *p)
{
    freed++;
    free(p);
}

START_TEST(test_cache_budget)
{
    gc_init(64 << 10, 64 << 10);
    struct gc_key k = {.app = 7, .fs = 1, .kind = GC_STAT, .path = "/a"};
    freed = 0;
    char path[32];
    for (int i = 0; i < 200; i++) {
        snprintf(path, sizeof path, "/f%d", i);
        k.path = path;
        gc_put(&k, xmalloc(100), 1000, count_free);
    }
    ck_assert_int_gt(freed, 100);          /* older entries evicted */
    k.path = "/f199";
    struct gc_ent *ref;
    ck_assert_ptr_nonnull(gc_get(&k, &ref));
    /* A held entry survives eviction and replacement. */
    void *held = gc_get(&k, &ref);
    gc_put(&k, xmalloc(10), 10, count_free);
    memset(held, 0xab, 100);
    gc_release(ref);
    gc_release(ref);   /* the first gc_get's reference */
    /* Larger than the whole budget: not kept. */
    k.path = "/huge";
    gc_put(&k, xmalloc(10), 1u << 20, count_free);
    ck_assert(!gc_has(&k));
    /* Another appliance's entries are dropped with it, and only those. */
    struct gc_key other = {.app = 8, .fs = 1, .kind = GC_LINK, .path = "/l"};
    gc_put(&other, xstrdup("target"), 7, free);
    gc_drop_app(7);
    k.path = "/f199";
    ck_assert(!gc_has(&k));
    ck_assert(gc_has(&other));
    gc_drop_app(8);
    gc_init(32u << 20, 64u << 20);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guest");
    TCase *tc = tcase_create("pure");
    tcase_add_test(tc, test_shell_quote);
    tcase_add_test(tc, test_filefrag_parse);
    tcase_add_test(tc, test_filefrag_distrust);
    tcase_add_test(tc, test_cache_budget);
    suite_add_tcase(s, tc);
    TCase *tv = tcase_create("view");
    tcase_add_checked_fixture(tv, setup, teardown);
    tcase_add_test(tv, test_read_mapped);
    tcase_add_test(tv, test_static_facts);
    tcase_add_test(tv, test_unmountable_without_appliance);
    tcase_add_test(tv, test_bad_paths);
    tcase_add_test(tv, test_report_without_appliance);
    tcase_add_test(tv, test_wait_hooks);
    suite_add_tcase(s, tv);
    return unit_run(s);
}
