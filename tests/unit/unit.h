/* Helpers shared by the Check unit tests. */
#ifndef VMFS_TESTS_UNIT_H
#define VMFS_TESTS_UNIT_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        ck_assert_int_gt(w, 0);
        p += w;
        len -= (size_t)w;
    }
    close(fd);
    return path;
}

static inline void unlink_free(char *path)
{
    unlink(path);
    free(path);
}

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
