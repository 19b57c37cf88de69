/* vmfs-info — the report of NAME.d/info (or info.json) for one image,
 * without mounting anything: the same code renders both. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmfs/guest.h"
#include "vmfs/tree.h"

static void usage(FILE *f)
{
    fputs("usage: vmfs-info [--json] [--snapshot=NAME|ID] [--allow-external-backing] IMAGE\n"
          "Prints what vmfs shows in NAME.d/info (or info.json with --json).\n", f);
}

/* The absolute path of IMAGE as given (not resolved through symlinks, so
 * that relative backing names resolve the way qemu resolves them). */
static char *absolute(const char *path)
{
    if (path[0] == '/')
        return xstrdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return xstrdup(path);
    return xasprintf("%s/%s", cwd, path);
}

/* Snapshot index by file name, name or ID; -1 when there is none. */
static long find_snapshot(const char *path, const char *want)
{
    struct timg *t = tree_get(path, -1);
    if (!t)
        return -1;
    long idx = tree_snapshot_find(t->img, want);
    size_t n = vimage_snapshot_count(t->img);
    for (size_t i = 0; idx < 0 && i < n; i++) {
        const struct vsnap *s = vimage_snapshot(t->img, i);
        if (!strcmp(s->name, want) || !strcmp(s->id, want))
            idx = (long)i;
    }
    tree_put(t);
    return idx;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"snapshot", required_argument, NULL, 's'},
        {"allow-external-backing", no_argument, NULL, 'e'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    bool json = false, external = false;
    const char *snap = NULL;
    int c;
    opterr = 0;        /* one line of our own instead */
    while ((c = getopt_long(argc, argv, "jhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 's': snap = optarg; break;
        case 'e': external = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("vmfs-info %s\n", PACKAGE_VERSION); return 0;
        default:
            fprintf(stderr, "vmfs-info: unknown option %s (see vmfs-info --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fputs("vmfs-info: usage: vmfs-info [--json] IMAGE (see --help)\n", stderr);
        return 2;
    }
    const char *arg = argv[optind];
    struct stat st;
    if (!tree_is_uri(arg) && stat(arg, &st) < 0) {
        fprintf(stderr, "vmfs-info: %s: %s\n", arg, strerror(errno));
        return 1;
    }
    if (!tree_is_uri(arg) && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "vmfs-info: %s is a directory, not an image\n", arg);
        return 1;
    }
    char *path = tree_is_uri(arg) ? xstrdup(arg) : absolute(arg);
    struct tree_opts o = {
        .source = path,
        .single_file = true,
        .uri = tree_is_uri(arg),
        .open = {.allow_external = external},
        .report_extra = guest_report,
    };
    tree_init(&o);
    int ret = 0;
    long idx = -1;
    if (snap && (idx = find_snapshot(path, snap)) < 0) {
        fprintf(stderr, "vmfs-info: %s: no snapshot named %s\n", arg, snap);
        ret = 1;
    }
    struct timg *t = ret ? NULL : tree_get(path, idx);
    if (t) {
        size_t len = tree_report_size(t, json);
        char *report = xmalloc(len + 1);
        len = tree_report_read(t, json, report, len, 0);
        fwrite(report, 1, len, stdout);
        free(report);
        tree_put(t);
    } else if (!ret) {
        fprintf(stderr, "vmfs-info: %s is not a disk image\n", arg);
        ret = 1;
    }
    tree_shutdown();
    free(path);
    return ret;
}
