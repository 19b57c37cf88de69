/* Unit tests: the report renderers, the cache, byte sources, helpers. */
#include "config.h"

#include "unit.h"
#include "vmfs/cache.h"
#include "vmfs/io.h"
#include "vmfs/report.h"

START_TEST(report_json_and_text)
{
    struct rep *r = rep_new_object();
    rep_set_str(r, "format", "qcow2");
    rep_set_size(r, "virtual_size", 1073741824);
    rep_set_bool(r, "dirty", false);
    rep_set_i64(r, "delta", -5);
    struct rep *a = rep_set_array(r, "problems");
    rep_add_str(a, "quote \" backslash \\ newline \n ctl \x01");
    rep_add_str(a, "bad utf8 \xff\xfe end");
    rep_set_array(r, "empty");
    struct rep *o = rep_add_object(rep_set_array(r, "chain"));
    rep_set_str(o, "file", "b.qcow2");
    rep_set_u64(o, "depth", 1);
    char *j = rep_to_json(r);
    ck_assert_ptr_nonnull(strstr(j, "\"virtual_size\": 1073741824"));
    ck_assert_ptr_nonnull(strstr(j, "\"dirty\": false"));
    ck_assert_ptr_nonnull(strstr(j, "\"delta\": -5"));
    ck_assert_ptr_nonnull(strstr(j, "quote \\\" backslash \\\\ newline \\n ctl \\u0001"));
    ck_assert_ptr_nonnull(strstr(j, "bad utf8 \\ufffd\\ufffd end"));
    ck_assert_ptr_nonnull(strstr(j, "\"empty\": []"));
    char *t = rep_to_text(r);
    ck_assert_ptr_nonnull(strstr(t, "format: qcow2\n"));
    ck_assert_ptr_nonnull(strstr(t, "virtual size: 1073741824 bytes (1.0 GiB)\n"));
    ck_assert_ptr_nonnull(strstr(t, "dirty: no\n"));
    ck_assert_ptr_nonnull(strstr(t, "empty: none\n"));
    ck_assert_ptr_nonnull(strstr(t, "chain:\n  - file: b.qcow2\n    depth: 1\n"));
    ck_assert_ptr_null(strstr(t, "newline \n"));
    ck_assert_ptr_nonnull(rep_get(r, "dirty"));
    ck_assert_ptr_null(rep_get(r, "nothing"));
    ck_assert_uint_eq(rep_len(a), 2);
    free(j);
    free(t);
    rep_free(r);
}
END_TEST

static int fills;

static int fill_pattern(void *arg, void *buf, size_t size)
{
    fills++;
    memset(buf, *(int *)arg, size);
    return 0;
}

static int fill_fail(void *arg, void *buf, size_t size) { return -EIO; }

START_TEST(cache_hits_evicts_and_keeps_referenced)
{
    vcache_set_budget(64 * 1024);
    uint64_t owner = vcache_new_owner();
    const void *d;
    struct vcache_entry *e, *held;
    int v = 7;
    fills = 0;
    ck_assert_int_eq(vcache_get(owner, 1, 4096, fill_pattern, &v, &d, &held), 0);
    ck_assert_int_eq(((const unsigned char *)d)[4095], 7);
    ck_assert_int_eq(vcache_get(owner, 1, 4096, fill_pattern, &v, &d, &e), 0);
    ck_assert_int_eq(fills, 1);
    vcache_release(e);
    /* Push far past the budget: the held entry stays readable. */
    for (uint64_t k = 2; k < 100; k++) {
        ck_assert_int_eq(vcache_get(owner, k, 4096, fill_pattern, &v, &d, &e), 0);
        vcache_release(e);
    }
    struct vcache_stats st;
    vcache_get_stats(&st);
    ck_assert_uint_le(st.bytes, 64 * 1024);
    const unsigned char *h;
    ck_assert_int_eq(vcache_get(owner, 1, 4096, fill_pattern, &v, (const void **)&h, &e), 0);
    ck_assert_int_eq(h[0], 7);
    vcache_release(e);
    vcache_release(held);
    ck_assert_int_eq(vcache_get(owner, 500, 4096, fill_fail, NULL, &d, &e), -EIO);
    vcache_drop_owner(owner);
    vcache_get_stats(&st);
    ck_assert_uint_eq(st.bytes, 0);
}
END_TEST

START_TEST(mem_source_bounds)
{
    char data[16] = "0123456789abcdef";
    struct vsrc *s = vsrc_new_mem(data, sizeof data, true, "t");
    char buf[8];
    ck_assert_int_eq(vsrc_pread(s, buf, 4, 12), 0);
    ck_assert_int_eq(memcmp(buf, "cdef", 4), 0);
    ck_assert_int_eq(vsrc_pread(s, buf, 5, 12), -EIO);
    ck_assert_int_eq(vsrc_pread(s, buf, 1, UINT64_MAX), -EIO);
    vsrc_close(s);
}
END_TEST

START_TEST(helpers)
{
    char h[32];
    ck_assert_str_eq(vmfs_human_size(512, h), "512 B");
    ck_assert_str_eq(vmfs_human_size(1536, h), "1.5 KiB");
    ck_assert(range_in(0, 10, 10));
    ck_assert(!range_in(5, 6, 10));
    ck_assert(!range_in(UINT64_MAX, 2, UINT64_MAX));
    uint64_t r;
    ck_assert(ckd_add_u64(&r, UINT64_MAX, 1));
    ck_assert(ckd_mul_u64(&r, 1ull << 40, 1ull << 30));
    unsigned char b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_uint_eq(get_be32(b), 0x01020304);
    ck_assert_uint_eq(get_le16(b), 0x0201);
    ck_assert_uint_eq(get_be64(b), 0x0102030405060708ull);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, report_json_and_text);
    tcase_add_test(tc, cache_hits_evicts_and_keeps_referenced);
    tcase_add_test(tc, mem_source_bounds);
    tcase_add_test(tc, helpers);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
