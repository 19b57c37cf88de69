/* vmfs — the daemon: command line, checks before daemonizing, the FUSE
 * session.
 *
 *   vmfs [OPTIONS] SOURCE MOUNTPOINT
 *
 * Everything that can be wrong with the command line is found before the
 * process daemonizes, and reported in one line on stderr. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fuse/fuse.h"
#include "vmfs/bridge.h"
#include "vmfs/guest.h"
#include "vmfs/cache.h"

struct cmdline {
    char *source;
    char *cache_size;
    char *read_ahead;
    unsigned max_read;
    int max_chain;
    int max_chain_set;
    int allow_external;
    int direct_io;
    unsigned idle_timeout;
    int show_help, show_version;
    int max_threads_set;
    double attr_timeout;
};

enum { KEY_MAX_THREADS = 1 };

#define VMFS_OPT(t, p, v) {t, offsetof(struct cmdline, p), v}
static const struct fuse_opt vmfs_opts[] = {
    VMFS_OPT("allow_external_backing", allow_external, 1),
    VMFS_OPT("cache_size=%s", cache_size, 0),
    VMFS_OPT("read_ahead=%s", read_ahead, 0),
    VMFS_OPT("max_read=%u", max_read, 0),
    VMFS_OPT("max_chain=%d", max_chain, 0),
    VMFS_OPT("max_chain=", max_chain_set, 1),
    VMFS_OPT("direct_io", direct_io, 1),
    VMFS_OPT("idle_timeout=%u", idle_timeout, 0),
    VMFS_OPT("attr_timeout=%lf", attr_timeout, 0),
    VMFS_OPT("-h", show_help, 1),
    VMFS_OPT("--help", show_help, 1),
    VMFS_OPT("-V", show_version, 1),
    VMFS_OPT("--version", show_version, 1),
    FUSE_OPT_KEY("max_threads=", KEY_MAX_THREADS),
    FUSE_OPT_END,
};

static void usage(FILE *f)
{
    fprintf(f,
"usage: vmfs [OPTIONS] SOURCE MOUNTPOINT\n"
"\n"
"Mounts SOURCE (a directory of disk images, or one image) read-only at\n"
"MOUNTPOINT: every image NAME appears as the flat raw disk NAME and the\n"
"directory NAME.d/ with info, info.json and snapshots/.\n"
"Unmount with: fusermount3 -u MOUNTPOINT\n"
"\n"
"vmfs options:\n"
"  -o allow_external_backing  open backing and data files outside SOURCE\n"
"  -o cache_size=SIZE         metadata cache budget (K, M, G; default 32M)\n"
"  -o max_chain=N             longest backing chain followed (default %d)\n"
"  -o read_ahead=SIZE         kernel read-ahead of the mount (default 4M,\n"
"                             128K for disks mostly holes; 0 keeps the\n"
"                             kernel's own)\n"
"  -o max_read=BYTES          largest read request (default %u)\n"
"  -o direct_io               serve disk reads without the kernel page cache\n"
"  -o attr_timeout=SECONDS    how long the kernel keeps attributes (default 1)\n"
"  -o idle_timeout=SECONDS    stop a guest filesystem appliance idle this long\n"
"                             (default 60)\n"
"\n"
"FUSE options:\n"
"  -f                         stay in the foreground (log to stderr)\n"
"  -d                         debug output (implies -f)\n"
"  -s                         single-threaded\n"
"  -o allow_other             let other users see the mount\n"
"  -o max_threads=N           worker threads (default twice the CPUs, 4 to 16)\n"
"  -h, --help                 this text\n"
"  -V, --version              the version\n",
            VMFS_DEFAULT_MAX_CHAIN, VMFS_DEFAULT_MAX_READ);
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    struct cmdline *c = data;
    if (key == KEY_MAX_THREADS) {
        c->max_threads_set = 1;
        return 1;              /* libfuse reads the number */
    }
    if (key == FUSE_OPT_KEY_NONOPT && !c->source) {
        c->source = xstrdup(arg);
        return 0;
    }
    return 1;
}

/* "64M" → bytes; false when not a size. */
static bool parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B')
        end++;
    if (*end == 'B')
        end++;
    if (*end || (shift && v > (SIZE_MAX >> shift)))
        return false;
    *out = (size_t)(v << shift);
    return true;
}

VMFS_PRINTF(1, 2) static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmfs: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* SOURCE must exist; MOUNTPOINT must be an empty directory. */
static int check_paths(const char *source, const char *mnt, bool *single)
{
    struct stat st;
    if (tree_is_uri(source)) {
        *single = true;
    } else if (stat(source, &st) < 0) {
        return fail("cannot use SOURCE %s: no such file or directory", source);
    } else if (S_ISDIR(st.st_mode)) {
        *single = false;
        if (access(source, R_OK | X_OK) < 0)
            return fail("cannot read SOURCE directory %s", source);
    } else if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
        *single = true;
        if (access(source, R_OK) < 0)
            return fail("cannot read SOURCE image %s", source);
        if (!vimage_is_candidate(source, false))
            return fail("SOURCE %s is not a disk image (no known format; raw images "
                        "need the extension .img, .raw, .iso or .dd)", source);
    } else {
        return fail("SOURCE %s is neither a directory nor an image file", source);
    }
    if (stat(mnt, &st) < 0)
        return fail("MOUNTPOINT %s does not exist", mnt);
    if (!S_ISDIR(st.st_mode))
        return fail("MOUNTPOINT %s is not a directory", mnt);
    DIR *d = opendir(mnt);
    if (!d)
        return fail("cannot open MOUNTPOINT %s", mnt);
    struct dirent *de;
    bool empty = true;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            empty = false;
    closedir(d);
    if (!empty)
        return fail("MOUNTPOINT %s is not empty", mnt);
    return 0;
}

/* Requests are served on a few threads more than there are CPUs: a read
 * that waits for the disk leaves its CPU to another, and more threads than
 * that only take turns on the CPUs, which shows as a long tail of slow
 * requests when several readers ask at once. */
static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 2 ? 4 : n > 8 ? 16 : (unsigned)(2 * n);
}

/* The checks that come before mounting: 0 to go on, else the exit status
 * (after one line on stderr, or the help or version on stdout). */
static int prepare(struct fuse_args *args, struct cmdline *c, struct fuse_cmdline_opts *fo,
                   size_t *cache, size_t *read_ahead, bool *single)
{
    if (fuse_opt_parse(args, c, vmfs_opts, opt_proc) < 0)
        return 1;
    if (c->show_help) {
        usage(stdout);
        return -1;
    }
    if (c->show_version) {
        printf("vmfs %s (libfuse %s)\n", PACKAGE_VERSION, fuse_pkgversion());
        return -1;
    }
    if (fuse_parse_cmdline(args, fo) != 0)
        return 1;      /* libfuse printed the reason */
    if (!c->source || !fo->mountpoint) {
        fprintf(stderr, "vmfs: usage: vmfs [OPTIONS] SOURCE MOUNTPOINT (see vmfs --help)\n");
        return 1;
    }
    *cache = 32u << 20;
    if (c->cache_size && !parse_size(c->cache_size, cache))
        return fail("bad cache_size '%s': expected a size such as 64M", c->cache_size);
    *read_ahead = VMFS_DEFAULT_READ_AHEAD;
    if (c->read_ahead && (!parse_size(c->read_ahead, read_ahead) || *read_ahead > (1u << 30)))
        return fail("bad read_ahead '%s': expected a size from 0 to 1G such as 4M", c->read_ahead);
    if (c->max_read < 4096 || c->max_read > (1u << 20))
        return fail("bad max_read: expected a number of bytes from 4096 to 1048576");
    if (c->max_chain_set && (c->max_chain < 1 || c->max_chain > 1000))
        return fail("bad max_chain: expected a number from 1 to 1000");
    return check_paths(c->source, fo->mountpoint, single);
}

/* Work that waits for the mount to answer, started once a worker reads. */
struct background {
    struct fuse_session *se;
    const char *mountpoint;
    size_t read_ahead, shallow;
};

static void start_background(void *arg)
{
    const struct background *bg = arg;
    /* A window set by hand holds for every disk. */
    vmfs_ra_start(bg->mountpoint, bg->read_ahead, bg->shallow);
    vmfs_fill_start(bg->se);
    tree_prefetch();
}

int main(int argc, char **argv)
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct cmdline c = {.attr_timeout = 1.0, .max_read = VMFS_DEFAULT_MAX_READ};
    struct fuse_cmdline_opts fo = {.mountpoint = NULL};
    size_t cache = 0;
    bool single = false;
    char *real = NULL;
    size_t read_ahead = 0;
    int ret = prepare(&args, &c, &fo, &cache, &read_ahead, &single);
    if (ret != 0) {
        ret = ret < 0 ? 0 : ret;
        goto done;
    }
    bool uri = tree_is_uri(c.source);
    real = uri ? xstrdup(c.source) : realpath(c.source, NULL);
    if (!real) {
        ret = fail("cannot resolve SOURCE %s", c.source);
        goto done;
    }

    /* Every open image holds descriptors: allow as many as we may. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Read buffers of up to a few MiB come and go per request: keep them
     * on the heap instead of mapping and unmapping each one. */
    mallopt(M_MMAP_THRESHOLD, 8 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    /* A few arenas: per-thread arenas would each keep freed buffers. */
    mallopt(M_ARENA_MAX, 2);
    vcache_set_budget(cache);
    struct tree_opts to = {
        .source = real,
        .single_file = single,
        .uri = uri,
        .open = {.allow_external = c.allow_external, .max_chain = (unsigned)c.max_chain},
        .report_extra = guest_report,
        .report_extra_version = guest_report_version,
    };
    tree_init(&to);
    struct vmfs_config cfg = {
        .source = c.source,
        .mountpoint = fo.mountpoint,
        .allow_external = c.allow_external,
        .max_chain = (unsigned)c.max_chain,
        .cache_size = cache,
        .attr_timeout = c.attr_timeout,
        .direct_io = c.direct_io,
        .max_read = c.max_read,
    };
    vmfs_ops_init(&cfg);
    vmfs_log_set_debug(fo.debug);

    /* Read-only at the kernel too; the name shows in mount listings. */
    char *esc = xmalloc(2 * strlen(real) + 1), *e = esc;
    for (const char *q = real; *q; q++) {      /* fuse_opt splits on commas */
        if (*q == ',' || *q == '\\')
            *e++ = '\\';
        *e++ = *q;
    }
    *e = 0;
    char *fsname = xasprintf("-ofsname=%s,subtype=vmfs,ro,nodev,nosuid,default_permissions,"
                             "max_read=%u", esc, c.max_read);
    free(esc);
    fuse_opt_add_arg(&args, fsname);
    free(fsname);

    ret = 1;
    struct fuse_session *se = fuse_session_new(&args, &vmfs_ops, sizeof vmfs_ops, NULL);
    if (!se)
        goto out;
    if (fuse_set_signal_handlers(se) != 0)
        goto out_session;
    if (fuse_session_mount(se, fo.mountpoint) != 0)
        goto out_signals;
    if (!fo.foreground)
        vmfs_log_use_syslog("vmfs");
    fuse_daemonize(fo.foreground);
    /* The kernel holds every request behind the answer to INIT: give it
     * here, before the threads below are made. */
    struct fuse_buf init = {.mem = NULL};
    if (fuse_session_receive_buf(se, &init) > 0)
        fuse_session_process_buf(se, &init);
    free(init.mem);
    /* Threads start only now: fork would have lost them. */
    struct guest_opts go = {.idle_timeout = c.idle_timeout};
    guest_init(&go);
    struct background bg = {se, fo.mountpoint, read_ahead,
                            c.read_ahead ? read_ahead : VMFS_SHALLOW_READ_AHEAD};
    if (fo.singlethread) {
        start_background(&bg);
        ret = fuse_session_loop(se);
    } else {
        unsigned threads = fo.max_threads > 0 && fo.max_threads <= 1000 ? fo.max_threads : 0;
        if (!c.max_threads_set)
            threads = default_threads();
        ret = vmfs_loop(se, threads, start_background, &bg);
    }
    bool stopped = vmfs_fill_stop();
    fuse_session_unmount(se);
    vmfs_ra_stop();
    guest_shutdown();
    vfmt_bridge_shutdown();
    if (!stopped) {           /* leave what it may touch as it is */
        fuse_remove_signal_handlers(se);
        goto done;
    }
out_signals:
    fuse_remove_signal_handlers(se);
out_session:
    fuse_session_destroy(se);
out:
    vmfs_ops_shutdown();
    tree_shutdown();
done:
    free(real);
    free(fo.mountpoint);
    free(c.source);
    free(c.cache_size);
    free(c.read_ahead);
    fuse_opt_free_args(&args);
    return ret ? 1 : 0;
}
