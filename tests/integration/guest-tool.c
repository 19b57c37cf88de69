/* guest-tool — drives the guest filesystem layer (guest.h) directly, for
 * tests and benchmarks: commands on stdin, one per line, fields separated
 * by tabs, results on stdout.  One process keeps its appliances, so a
 * whole test costs one appliance start per disk view.
 *
 *   open IMAGE [SNAPSHOT]        the view later commands use
 *   stat FS PATH                 one line of attributes (or "error: …")
 *   ls FS PATH                   the entries with their attributes
 *   walk FS PATH                 every entry below PATH, recursively
 *   copy FS PATH DEST            copies the tree to DEST like cp -a
 *   get FS PATH DEST [OFF LEN]   one file (or a range of it) to DEST
 *   readlink FS PATH
 *   xattrs FS PATH               name=hex(value) per attribute
 *   report                       guest_report as JSON
 *   signal NAME                  signals the appliances' hypervisors (KILL,
 *                                STOP, CONT) — children of this process
 *   sleep SECONDS
 *   echo TEXT
 *
 * Usage: guest-tool SOURCE_DIR  (the directory holding the images) */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "vmfs/guest.h"
#include "vmfs/report.h"

static struct timg *cur;

static char type_char(mode_t m)
{
    return S_ISREG(m) ? 'f' : S_ISDIR(m) ? 'd' : S_ISLNK(m) ? 'l' : S_ISCHR(m) ? 'c'
         : S_ISBLK(m) ? 'b' : S_ISFIFO(m) ? 'p' : S_ISSOCK(m) ? 's' : '?';
}

/* The attributes a test compares, one line. */
static void print_attrs(const char *name, const struct stat *st)
{
    printf("%s\t%c\t%04o\t%lld\t%lu\t%u:%u\t%lld.%09ld", name, type_char(st->st_mode),
           (unsigned)(st->st_mode & 07777), (long long)st->st_size,
           (unsigned long)st->st_nlink, (unsigned)st->st_uid, (unsigned)st->st_gid,
           (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
        printf("\t%u,%u", major(st->st_rdev), minor(st->st_rdev));
}

static void print_err(int r) { printf("error: %s\n", strerror(-r)); }

static char *join(const char *dir, const char *name)
{
    return !strcmp(dir, "/") ? xasprintf("/%s", name) : xasprintf("%s/%s", dir, name);
}

static void cmd_stat(const char *fs, const char *path)
{
    struct stat st;
    int r = guest_stat(cur, fs, path, &st);
    if (r < 0) {
        print_err(r);
        return;
    }
    print_attrs(path, &st);
    printf("\n");
}

static void cmd_ls(const char *fs, const char *path)
{
    struct guest_dirent *e;
    size_t n;
    int r = guest_readdir(cur, fs, path, &e, &n);
    if (r < 0) {
        print_err(r);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        print_attrs(e[i].name, &e[i].st);
        printf("\n");
    }
    guest_dirents_free(e, n);
}

static void walk(const char *fs, const char *path, const char *rel)
{
    struct guest_dirent *e;
    size_t n;
    int r = guest_readdir(cur, fs, path, &e, &n);
    if (r < 0) {
        printf("%s\terror: %s\n", rel, strerror(-r));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char *p = join(path, e[i].name);
        char *rp = *rel ? xasprintf("%s/%s", rel, e[i].name) : xstrdup(e[i].name);
        print_attrs(rp, &e[i].st);
        if (S_ISLNK(e[i].st.st_mode)) {
            char *t = NULL;
            r = guest_readlink(cur, fs, p, &t);
            printf("\t-> %s", r < 0 ? strerror(-r) : t);
            free(t);
        }
        printf("\n");
        if (S_ISDIR(e[i].st.st_mode))
            walk(fs, p, rp);
        free(p);
        free(rp);
    }
    guest_dirents_free(e, n);
}

/* Copies a regular file (or [off, off + len) of it) to dest. */
static int get_file(const char *fs, const char *path, const char *dest, uint64_t off,
                    uint64_t len)
{
    int fd = open(dest, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -errno;
    size_t bufsize = 128 << 10;
    char *buf = xmalloc(bufsize);
    int r = 0;
    uint64_t done = 0;
    while (done < len) {
        size_t want = (size_t)VMFS_MIN((uint64_t)bufsize, len - done);
        ssize_t n = guest_read(cur, fs, path, buf, want, off + done);
        if (n < 0) {
            r = (int)n;
            break;
        }
        if (n == 0)
            break;
        if (write(fd, buf, (size_t)n) != n) {
            r = -EIO;
            break;
        }
        done += (uint64_t)n;
    }
    free(buf);
    close(fd);
    return r;
}

static void set_times(const char *dest, const struct stat *st)
{
    struct timespec ts[2] = {st->st_atim, st->st_mtim};
    utimensat(AT_FDCWD, dest, ts, AT_SYMLINK_NOFOLLOW);
}

/* Copies the tree at path to dest, keeping types, modes, times, links. */
static int copy_tree(const char *fs, const char *path, const char *dest, const struct stat *st)
{
    int r = 0;
    if (S_ISDIR(st->st_mode)) {
        if (mkdir(dest, 0700) < 0 && errno != EEXIST)
            return -errno;
        struct guest_dirent *e;
        size_t n;
        r = guest_readdir(cur, fs, path, &e, &n);
        if (r < 0)
            return r;
        for (size_t i = 0; i < n && r == 0; i++) {
            char *p = join(path, e[i].name);
            char *d = xasprintf("%s/%s", dest, e[i].name);
            r = copy_tree(fs, p, d, &e[i].st);
            free(p);
            free(d);
        }
        guest_dirents_free(e, n);
    } else if (S_ISREG(st->st_mode)) {
        r = get_file(fs, path, dest, 0, (uint64_t)st->st_size);
    } else if (S_ISLNK(st->st_mode)) {
        char *t = NULL;
        r = guest_readlink(cur, fs, path, &t);
        if (r == 0 && symlink(t, dest) < 0)
            r = -errno;
        free(t);
        if (r == 0)
            set_times(dest, st);
        return r;
    } else if (S_ISFIFO(st->st_mode)) {
        if (mkfifo(dest, 0600) < 0)
            r = -errno;
    } else {
        return 0;   /* devices and sockets: listed by walk, not copied */
    }
    if (r == 0) {
        chmod(dest, st->st_mode & 07777);
        set_times(dest, st);
    }
    return r;
}

static void cmd_copy(const char *fs, const char *path, const char *dest)
{
    struct stat st;
    int r = guest_stat(cur, fs, path, &st);
    if (r == 0)
        r = copy_tree(fs, path, dest, &st);
    if (r < 0)
        print_err(r);
    else
        printf("copied\n");
}

static void cmd_get(char **a, int n)
{
    uint64_t off = 0, len = UINT64_MAX;
    if (n >= 5) {
        off = strtoull(a[4], NULL, 0);
        len = n >= 6 ? strtoull(a[5], NULL, 0) : UINT64_MAX;
    }
    int r = get_file(a[1], a[2], a[3], off, len);
    if (r < 0)
        print_err(r);
    else
        printf("got\n");
}

static void cmd_readlink(const char *fs, const char *path)
{
    char *t = NULL;
    int r = guest_readlink(cur, fs, path, &t);
    if (r < 0)
        print_err(r);
    else
        printf("%s\n", t);
    free(t);
}

static void cmd_xattrs(const char *fs, const char *path)
{
    ssize_t n = guest_listxattr(cur, fs, path, NULL, 0);
    if (n < 0) {
        print_err((int)n);
        return;
    }
    char *names = xmalloc((size_t)n + 1);
    n = guest_listxattr(cur, fs, path, names, (size_t)n);
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1) {
        const char *name = names + i;
        ssize_t len = guest_getxattr(cur, fs, path, name, NULL, 0);
        printf("%s=", name);
        if (len >= 0) {
            unsigned char *v = xmalloc((size_t)len + 1);
            len = guest_getxattr(cur, fs, path, name, v, (size_t)len);
            for (ssize_t k = 0; k < len; k++)
                printf("%02x", v[k]);
            free(v);
        }
        printf("\n");
    }
    free(names);
}

static void cmd_report(void)
{
    struct rep *r = rep_new_object();
    guest_report(cur, r);
    char *json = rep_to_json(r);
    fputs(json, stdout);
    free(json);
    rep_free(r);
}

/* Signals the hypervisors this process started (through libguestfs). */
static void cmd_signal(const char *name)
{
    int sig = !strcmp(name, "KILL") ? SIGKILL : !strcmp(name, "STOP") ? SIGSTOP : SIGCONT;
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;
    while (d && (de = readdir(d))) {
        char path[300], buf[4096];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        char *rp = strrchr(buf, ')');
        char st;
        int ppid;
        if (!rp || sscanf(rp + 1, " %c %d", &st, &ppid) != 2 || ppid != getpid())
            continue;
        if (!strstr(buf, "(qemu-system"))
            continue;
        kill(atoi(de->d_name), sig);
        n++;
    }
    if (d)
        closedir(d);
    printf("signalled %d\n", n);
}

static void cmd_open(char **a, int n)
{
    if (cur)
        tree_put(cur);
    long snap = -1;
    cur = NULL;
    if (n >= 3) {
        struct timg *t = tree_get(a[1], -1);
        if (t) {
            snap = tree_snapshot_find(t->img, a[2]);
            tree_put(t);
        }
        if (snap < 0) {
            printf("error: no snapshot %s\n", a[2]);
            return;
        }
    }
    cur = tree_get(a[1], snap);
    printf(cur ? "opened\n" : "error: cannot open\n");
}

static void run(char **a, int n)
{
    const char *c = a[0];
    bool needs = strcmp(c, "open") && strcmp(c, "sleep") && strcmp(c, "echo") &&
                 strcmp(c, "signal");
    if (needs && !cur) {
        printf("error: nothing open\n");
        return;
    }
    if (!strcmp(c, "open") && n >= 2)
        cmd_open(a, n);
    else if (!strcmp(c, "stat") && n == 3)
        cmd_stat(a[1], a[2]);
    else if (!strcmp(c, "ls") && n == 3)
        cmd_ls(a[1], a[2]);
    else if (!strcmp(c, "walk") && n == 3)
        walk(a[1], a[2], "");
    else if (!strcmp(c, "copy") && n == 4)
        cmd_copy(a[1], a[2], a[3]);
    else if (!strcmp(c, "get") && n >= 4)
        cmd_get(a, n);
    else if (!strcmp(c, "readlink") && n == 3)
        cmd_readlink(a[1], a[2]);
    else if (!strcmp(c, "xattrs") && n == 3)
        cmd_xattrs(a[1], a[2]);
    else if (!strcmp(c, "report"))
        cmd_report();
    else if (!strcmp(c, "signal") && n == 2)
        cmd_signal(a[1]);
    else if (!strcmp(c, "sleep") && n == 2)
        sleep((unsigned)atoi(a[1]));
    else if (!strcmp(c, "echo"))
        printf("%s\n", n > 1 ? a[1] : "");
    else
        printf("error: bad command %s\n", c);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: guest-tool SOURCE_DIR < commands\n");
        return 2;
    }
    char *src = realpath(argv[1], NULL);
    if (!src) {
        perror(argv[1]);
        return 1;
    }
    struct tree_opts o = {.source = src, .open = {.max_chain = VMFS_DEFAULT_MAX_CHAIN}};
    tree_init(&o);
    struct guest_opts go = {0};
    guest_init(&go);
    setvbuf(stdout, NULL, _IOLBF, 0);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = 0;
        if (!len || line[0] == '#')
            continue;
        char *a[8] = {NULL};
        int n = 0;
        for (char *save = NULL, *f = strtok_r(line, "\t", &save); f && n < 8;
             f = strtok_r(NULL, "\t", &save))
            a[n++] = f;
        if (n > 0)
            run(a, n);
        fflush(stdout);
    }
    free(line);
    if (cur)
        tree_put(cur);
    guest_shutdown();
    tree_shutdown();
    free(src);
    return 0;
}
