/* vmfs-info — the report of NAME.d/info (or info.json) for one image,
 * without mounting anything. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmfs/image.h"
#include "vmfs/report.h"
#include "vmfs/tree.h"

static int disk_read(void *ctx, void *buf, size_t len, uint64_t off)
{
    return vimage_read(ctx, buf, len, off);
}

static void usage(FILE *f)
{
    fputs("usage: vmfs-info [--json] [--snapshot=NAME|ID] [--allow-external-backing] IMAGE\n"
          "Prints what vmfs shows in NAME.d/info (or info.json with --json).\n", f);
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
    const char *path = argv[optind];
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "vmfs-info: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        fprintf(stderr, "vmfs-info: %s is a directory, not an image\n", path);
        return 1;
    }
    char *abs = realpath(path, NULL);
    char *dir = xstrdup(abs ? abs : path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir)
        *slash = 0;
    struct vopen_opts o = {.root = external ? NULL : dir, .allow_external = external};
    /* The path as given keeps relative backing names resolving as qemu
     * resolves them; a named file is an image even without magic (raw). */
    char *full = path[0] == '/' ? xstrdup(path) : NULL;
    if (!full) {
        char cwd[PATH_MAX];
        full = getcwd(cwd, sizeof cwd) ? xasprintf("%s/%s", cwd, path) : xstrdup(path);
    }
    struct vimage *img = vimage_open(full, &o, -1, false);
    int ret = 0;
    if (img && snap) {
        long idx = -1;
        size_t n = vimage_snapshot_count(img);
        for (size_t i = 0; i < n; i++) {
            const struct vsnap *s = vimage_snapshot(img, i);
            if (!strcmp(s->name, snap) || !strcmp(s->id, snap)) {
                idx = (long)i;
                break;
            }
        }
        vimage_unref(img);
        img = NULL;
        if (idx < 0) {
            fprintf(stderr, "vmfs-info: %s: no snapshot named %s\n", path, snap);
            ret = 1;
        } else {
            img = vimage_open(full, &o, idx, false);
        }
    }
    if (img) {
        struct rep *r = rep_new_object();
        struct vlayout *lay = NULL;
        if (!img->top_failed) {
            struct vdisk d = {.size = img->size, .read = disk_read, .ctx = img};
            lay = vlayout_scan(&d);
            for (size_t i = 0; lay && i < lay->nproblems; i++)
                vimage_problem(img, "%s", lay->problems[i]);
        }
        tree_build_report(img, lay, r);
        vlayout_free(lay);
        char *s = json ? rep_to_json(r) : rep_to_text(r);
        fputs(s, stdout);
        free(s);
        rep_free(r);
        vimage_unref(img);
    } else if (!ret) {
        fprintf(stderr, "vmfs-info: %s is not a disk image\n", path);
        ret = 1;
    }
    free(full);
    free(abs);
    free(dir);
    return ret;
}
