/* vmfs — allocation, logging and formatting helpers. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

#include "vmfs/common.h"

static void oom(void)
{
    fputs("vmfs: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p)
        oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        oom();
    return p;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        oom();
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    return s;
}

static bool log_syslog;
static bool log_debug;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void vmfs_log_use_syslog(const char *ident)
{
    openlog(ident, LOG_PID, LOG_DAEMON);
    log_syslog = true;
}

void vmfs_log_set_debug(bool on) { log_debug = on; }

void vmfs_log(enum vmfs_log_level lvl, const char *fmt, ...)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    static const char *const tag[] = {"error", "warning", "info", "debug"};
    if (lvl == VMFS_LOG_DEBUG && !log_debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (log_syslog) {
        vsyslog(prio[lvl], fmt, ap);
    } else {
        char line[1024];
        vsnprintf(line, sizeof line, fmt, ap);
        pthread_mutex_lock(&log_lock);
        fprintf(stderr, "vmfs: %s: %s\n", tag[lvl], line);
        pthread_mutex_unlock(&log_lock);
    }
    va_end(ap);
}

uint64_t vmfs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *vmfs_human_size(uint64_t bytes, char buf[32])
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        snprintf(buf, 32, "%llu B", (unsigned long long)bytes);
        return buf;
    }
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024 && u + 1 < VMFS_ARRAY_SIZE(unit)) {
        v /= 1024;
        u++;
    }
    snprintf(buf, 32, "%.1f %s", v, unit[u]);
    return buf;
}
