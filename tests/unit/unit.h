/* Helpers shared by the Check unit tests: temporary files and directories,
 * files built byte by byte in memory, and checks on opened images (reads
 * against the expected disk, extents, runs, problems, reports).  Each
 * helper fails the test with a Check assertion when something is off. */
#ifndef VMFS_TESTS_UNIT_H
#define VMFS_TESTS_UNIT_H

#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmfs/image.h"
#include "vmfs/report.h"

/* ------------------------------------------------------------------------
 * Files and directories
 * ---------------------------------------------------------------------- */

static inline void unit_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        ck_assert_int_gt(w, 0);
        p += w;
        len -= (size_t)w;
    }
}

/* Writes len bytes to a new temporary file named *.EXT and returns its
 * malloc'ed path; the test removes it with unlink_free(). */
static inline char *unit_tmpfile(const void *data, size_t len, const char *ext)
{
    char tmpl[] = "/tmp/vmfs-unit-XXXXXX";
    int fd = mkstemp(tmpl);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(tmpl) + strlen(ext) + 2;
    char *path = malloc(n);
    ck_assert_ptr_nonnull(path);
    snprintf(path, n, "%s.%s", tmpl, ext);
    ck_assert_int_eq(rename(tmpl, path), 0);
    unit_write_all(fd, data, len);
    close(fd);
    return path;
}

static inline void unlink_free(char *path)
{
    unlink(path);
    free(path);
}

/* A new empty directory /tmp/vmfs-unit-TAG-XXXXXX; its malloc'ed path.
 * The test removes it with unit_rmtree(). */
static inline char *unit_tmpdir(const char *tag)
{
    size_t n = strlen(tag) + 32;
    char *dir = malloc(n);
    ck_assert_ptr_nonnull(dir);
    snprintf(dir, n, "/tmp/vmfs-unit-%s-XXXXXX", tag);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    return dir;
}

/* Removes dir and all in it, and frees the path. */
static inline void unit_rmtree(char *dir)
{
    size_t n = strlen(dir) + 16;
    char *cmd = malloc(n);
    ck_assert_ptr_nonnull(cmd);
    snprintf(cmd, n, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(dir);
}

/* Writes len bytes to dir/name (created or truncated); its malloc'ed path. */
static inline char *unit_write(const char *dir, const char *name, const void *data, size_t len)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    ck_assert_ptr_nonnull(path);
    snprintf(path, n, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    unit_write_all(fd, data, len);
    ck_assert_int_eq(close(fd), 0);
    return path;
}

/* ------------------------------------------------------------------------
 * Bytes: integers stored in either order, a growing file image, patterns
 * ---------------------------------------------------------------------- */

/* Stores the n low bytes of v at p, big- or little-endian. */
static inline void unit_be(void *p, uint64_t v, unsigned n)
{
    uint8_t *b = p;
    for (unsigned i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static inline void unit_le(void *p, uint64_t v, unsigned n)
{
    uint8_t *b = p;
    for (unsigned i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

/* A file image that grows as it is written; new bytes are zeros. */
struct unit_buf {
    uint8_t *d;
    size_t len, cap;
};

/* Makes b at least len bytes long. */
static inline void unit_grow(struct unit_buf *b, size_t len)
{
    if (len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < len)
            cap *= 2;
        b->d = realloc(b->d, cap);
        ck_assert_ptr_nonnull(b->d);
        memset(b->d + b->cap, 0, cap - b->cap);
        b->cap = cap;
    }
    if (len > b->len)
        b->len = len;
}

static inline void unit_put_be(struct unit_buf *b, uint64_t off, uint64_t v, unsigned n)
{
    unit_grow(b, (size_t)(off + n));
    unit_be(b->d + off, v, n);
}

static inline void unit_put_le(struct unit_buf *b, uint64_t off, uint64_t v, unsigned n)
{
    unit_grow(b, (size_t)(off + n));
    unit_le(b->d + off, v, n);
}

static inline void unit_put_bytes(struct unit_buf *b, uint64_t off, const void *p, size_t n)
{
    unit_grow(b, (size_t)(off + n));
    memcpy(b->d + off, p, n);
}

/* Appends n zero bytes at the next multiple of align; returns their offset. */
static inline uint64_t unit_append(struct unit_buf *b, uint64_t n, uint64_t align)
{
    uint64_t off = (b->len + align - 1) / align * align;
    unit_grow(b, (size_t)(off + n));
    return off;
}

/* A pattern byte for disk offset off, different per tag. */
static inline uint8_t unit_pat(uint8_t tag, uint64_t off)
{
    return (uint8_t)(tag + off * 7 + (off >> 9) * 13 + 1);
}

/* n pattern bytes for disk offsets from off. */
static inline void unit_fill(uint8_t *p, size_t n, uint8_t tag, uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        p[i] = unit_pat(tag, off + i);
}

/* ------------------------------------------------------------------------
 * Opened images: problems, reports, reads, extents, runs
 * ---------------------------------------------------------------------- */

/* How many problems img lists; each is printed to stderr. */
static inline size_t unit_nproblems(struct vimage *img)
{
    char **p;
    size_t n = vimage_problems(img, &p);
    for (size_t i = 0; i < n; i++) {
        fprintf(stderr, "  problem: %s\n", p[i]);
        free(p[i]);
    }
    free(p);
    return n;
}

/* Whether one of img's problems contains needle. */
static inline bool unit_has_problem(struct vimage *img, const char *needle)
{
    char **p;
    size_t n = vimage_problems(img, &p);
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        if (strstr(p[i], needle))
            found = true;
        free(p[i]);
    }
    free(p);
    return found;
}

/* img is listed but refused as damaged, with a problem containing needle. */
static inline void unit_check_refused(struct vimage *img, const char *needle)
{
    ck_assert_msg(img != NULL, "not listed (expected a problem with '%s')", needle);
    ck_assert_msg(img->top_failed, "%s: opened (expected a problem with '%s')", img->path,
                  needle);
    ck_assert_msg(unit_has_problem(img, needle), "%s: no problem with '%s'", img->path, needle);
}

/* img's report as JSON (malloc'ed), with its problems when asked. */
static inline char *unit_report_json(struct vimage *img, bool problems)
{
    struct rep *r = rep_new_object();
    vimage_report(img, r);
    if (problems)
        vimage_report_problems(img, r);
    char *j = rep_to_json(r);
    rep_free(r);
    return j;
}

/* img's report (with its problems when asked) holds each of the strings
 * given; it is printed when one is missing. */
#define unit_check_report(img, problems, ...) \
    unit_check_report_((img), (problems), __VA_ARGS__, (const char *)NULL)

static inline void unit_check_report_(struct vimage *img, bool problems, ...)
{
    char *j = unit_report_json(img, problems);
    va_list ap;
    va_start(ap, problems);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;) {
        if (!strstr(j, s))
            fprintf(stderr, "%s\n", j);
        ck_assert_msg(strstr(j, s) != NULL, "the report lacks %s", s);
    }
    va_end(ap);
    free(j);
}

/* What a read of len bytes at off returns (0 or a negative errno). */
static inline int unit_read_err(struct vimage *img, uint64_t off, size_t len)
{
    uint8_t *buf = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(buf);
    int r = vimage_read(img, buf, len, off);
    free(buf);
    return r;
}

/* Reads [off, off + len) and compares it with the same bytes of exp, the
 * expected disk; names the first byte that differs (and lists the
 * problems when the read fails). */
static inline void unit_check_range(struct vimage *img, const uint8_t *exp, uint64_t off,
                                    size_t len)
{
    uint8_t *got = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(got);
    int r = vimage_read(img, got, len, off);
    if (r != 0)
        unit_nproblems(img);
    ck_assert_msg(r == 0, "read of %zu bytes at %llu: %s", len, (unsigned long long)off,
                  strerror(-r));
    const uint8_t *want = exp + off;
    if (memcmp(got, want, len)) {
        size_t i = 0;
        while (got[i] == want[i])
            i++;
        ck_abort_msg("byte %llu: got 0x%02x, expected 0x%02x", (unsigned long long)(off + i),
                     got[i], want[i]);
    }
    free(got);
}

/* The disk is size bytes and reads as exp, in pieces of many sizes. */
static inline void unit_check_disk(struct vimage *img, const uint8_t *exp, uint64_t size)
{
    ck_assert_uint_eq(img->size, size);
    uint64_t off = 0, step = 3001;
    while (off < size) {
        size_t n = (size_t)VMFS_MIN(step, size - off);
        unit_check_range(img, exp, off, n);
        off += n;
        step = step * 3 % 70001 + 511;
    }
}

/* From off the disk holds data (or a hole) for exactly len bytes. */
static inline void unit_extent_at(struct vimage *img, uint64_t off, bool data, uint64_t len)
{
    bool d;
    uint64_t n;
    ck_assert_int_eq(vimage_extent(img, off, &d, &n), 0);
    ck_assert_msg(d == data && n == len, "extent at %llu: %s %llu, expected %s %llu",
                  (unsigned long long)off, d ? "data" : "hole", (unsigned long long)n,
                  data ? "data" : "hole", (unsigned long long)len);
}

/* The first run the top layer's driver maps for [off, off + len). */
static inline struct vrun unit_top_map(struct vimage *img, uint64_t off, uint64_t len)
{
    struct vlayer *l = img->layers[0];
    struct vrun run = {0};
    ck_assert_int_eq(l->drv->map(l, off, len, &run), 0);
    return run;
}

/* The same, asserting the run's kind and length. */
static inline struct vrun unit_run_at(struct vimage *img, uint64_t off, uint64_t len,
                                      enum vrun_kind kind, uint64_t run_len)
{
    struct vrun run = unit_top_map(img, off, len);
    ck_assert_msg(run.kind == kind && run.len == run_len,
                  "run at %llu: kind %d, %llu bytes; expected kind %d, %llu bytes",
                  (unsigned long long)off, (int)run.kind, (unsigned long long)run.len,
                  (int)kind, (unsigned long long)run_len);
    return run;
}

/* ------------------------------------------------------------------------
 * Running
 * ---------------------------------------------------------------------- */

/* Runs a suite and returns the process exit status. */
static inline int unit_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
