/* vmfs — formats vmfs does not decode itself but qemu reads (dmg,
 * parallels, bochs, cloop, qcow version 1), read through a private
 * qemu-nbd process: the bridge.
 *
 * open() recognizes the format from its header (which also gives the
 * virtual size and the facts for info), starts
 *
 *   qemu-nbd --read-only --persistent --shared=4 --socket=DIR/nbd.sock
 *            'json:{"driver":FMT,"backing":null,
 *                   "file":{"driver":"file","filename":PATH,"locking":"off"}}'
 *
 * in a private directory (mode 0700) and reads the export through an NBD
 * byte source (src/io/nbd.c).  qemu-nbd opens the image read-only and
 * unlocked, and never opens a backing file ("backing": null): a qcow
 * image's backing file is named to vmfs instead (l->backing_name), which
 * opens it like any other parent, confined to SOURCE, and the qcow layer
 * maps its unallocated parts (NBD block status: a hole) to the parent.
 *
 * Processes: qemu-nbd is forked by one long-lived thread of vmfs and asks
 * the kernel for SIGTERM when that thread ends (PR_SET_PDEATHSIG), so it
 * never outlives vmfs, even after a crash.  It is stopped (SIGTERM, then
 * SIGKILL after 2 s) and reaped when the layer closes, and
 * vfmt_bridge_shutdown() (also run at exit) stops the rest.  A qemu-nbd
 * that dies is started again on the next read that needs it (at most once
 * every 2 s).  Without qemu-nbd the image still shows, with its size from
 * the header, a problem saying what to install, and EIO on reads.
 *
 * Threads: map, map_alloc and report run in parallel; the NBD source has
 * its own locks; b->lock guards the process. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vmfs/bridge.h"
#include "vmfs/fmt.h"
#include "vmfs/report.h"

#define START_MS 15000            /* qemu-nbd must serve within this */
#define STOP_MS 2000              /* then SIGKILL */
#define RESTART_NS 2000000000ull  /* between restarts of a dead qemu-nbd */
#define MAX_NAME 1023             /* qcow backing name, as qemu limits it */
#define DEB_PACKAGE "qemu-utils"

enum bfmt { B_QCOW, B_PARALLELS, B_BOCHS, B_CLOOP, B_DMG, B_COUNT };

static const char *const qemu_names[B_COUNT] = {"qcow", "parallels", "bochs", "cloop", "dmg"};

static const char cloop_magic[] =
    "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/* What the header says (for info, and the size when qemu-nbd is absent). */
struct facts {
    uint64_t size;                /* virtual size per the header */
    uint32_t version;
    uint64_t block_size;          /* cluster / extent / block / 0 */
    uint64_t count;               /* table entries / blocks */
    const char *subformat;
    bool dirty;                   /* parallels: not closed cleanly */
    uint64_t data_fork_len;       /* dmg */
};

struct bridge {
    enum bfmt fmt;
    struct facts f;
    char *exe;                    /* qemu-nbd, or NULL: not installed */
    char *dir, *sock, *log, *uri, *image_json;
    bool has_backing;             /* qcow: holes go to the parent */
    struct vsrc *src;             /* the export, or NULL: reads fail */
    struct vlayer *layer;

    pthread_mutex_t lock;         /* guards the fields below */
    pid_t pid;                    /* 0: no process */
    pid_t owner;                  /* vmfs process that forked it */
    uint64_t next_restart;
    bool restart_logged;
    bool stopped;
    struct bridge *next;          /* all bridges (bridges_lock) */
};

static pthread_mutex_t bridges_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bridge *bridges;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------------
 * Recognizing the formats
 * ---------------------------------------------------------------------- */

static bool has_ext(const char *path, const char *ext)
{
    const char *dot = path ? strrchr(path, '.') : NULL;
    const char *slash = path ? strrchr(path, '/') : NULL;
    return dot && (!slash || dot > slash) && !strcasecmp(dot, ext);
}

/* A NUL-terminated string of at most cap bytes at p equals s. */
static bool field_is(const uint8_t *p, size_t cap, const char *s)
{
    size_t n = strlen(s);
    return n < cap && !memcmp(p, s, n) && p[n] == 0;
}

/* The format whose magic starts head, or -1.  dmg has no magic at the
 * start: its name says so, and open() checks its trailer. */
static int which_format(const uint8_t *head, size_t len, const char *path)
{
    if (len >= 8 && !memcmp(head, "QFI\xfb", 4) && get_be32(head + 4) == 1)
        return B_QCOW;
    if (len >= 20 && (!memcmp(head, "WithoutFreeSpace", 16) ||
                      !memcmp(head, "WithouFreSpacExt", 16)) && get_le32(head + 16) == 2)
        return B_PARALLELS;
    if (len >= 88 && field_is(head, 32, "Bochs Virtual HD Image") &&
        field_is(head + 32, 16, "Redolog") && field_is(head + 48, 16, "Growing") &&
        (get_le32(head + 64) == 0x00020000 || get_le32(head + 64) == 0x00010000))
        return B_BOCHS;
    if (len >= 136 && !memcmp(head, cloop_magic, sizeof cloop_magic - 1))
        return B_CLOOP;
    if (has_ext(path, ".dmg"))
        return B_DMG;
    return -1;
}

static int bridge_probe(const uint8_t *head, size_t len, uint64_t file_size, const char *path)
{
    int f = which_format(head, len, path);
    if (f < 0)
        return 0;
    return f == B_DMG ? 50 : 100;
}

/* ------------------------------------------------------------------------
 * Headers: sizes and facts, checked (qemu decodes the rest)
 * ---------------------------------------------------------------------- */

static int parse_qcow(struct vlayer *l, struct bridge *b, const uint8_t *h)
{
    uint64_t bf_off = get_be64(h + 8);
    uint32_t bf_len = get_be32(h + 16);
    uint64_t size = get_be64(h + 24);
    unsigned cbits = h[32], l2bits = h[33];
    uint32_t crypt = get_be32(h + 36);
    b->f.version = 1;
    if (cbits < 9 || cbits > 16 || l2bits < 6 || l2bits > 13) {
        vlayer_problem(l, "qcow header: cluster bits %u / L2 bits %u out of range", cbits,
                       l2bits);
        return -EINVAL;
    }
    b->f.block_size = 1ull << cbits;
    b->f.size = size / 512 * 512;        /* qemu counts whole sectors */
    if (crypt != 0) {
        vlayer_problem(l, "qcow image encrypted with AES (method %u): vmfs does not read "
                       "encrypted images", crypt);
        return -ENOTSUP;
    }
    if (bf_off == 0)
        return 0;
    if (bf_len == 0 || bf_len > MAX_NAME || !range_in(bf_off, bf_len, l->file->size)) {
        vlayer_problem(l, "qcow header: backing file name (%u bytes at %llu) is "
                       "outside the file or too long", bf_len, (unsigned long long)bf_off);
        return -EINVAL;
    }
    char name[MAX_NAME + 1];
    int r = vsrc_pread(l->file, name, bf_len, bf_off);
    if (r < 0) {
        vlayer_problem(l, "backing file name cannot be read: %s", strerror(-r));
        return r;
    }
    name[bf_len] = 0;
    if (!name[0])
        return 0;
    l->backing_name = xstrdup(name);
    l->backing_fmt = NULL;              /* qcow does not store it: probed */
    l->backing_raw_ok = true;
    b->has_backing = true;
    return 0;
}

static int parse_parallels(struct vlayer *l, struct bridge *b, const uint8_t *h)
{
    bool ext = !memcmp(h, "WithouFreSpacExt", 16);
    uint32_t tracks = get_le32(h + 28);
    uint64_t sectors = get_le64(h + 36);
    b->f.version = get_le32(h + 16);
    b->f.subformat = ext ? "WithouFreSpacExt" : "WithoutFreeSpace";
    b->f.block_size = (uint64_t)tracks * 512;
    b->f.count = get_le32(h + 32);
    b->f.dirty = get_le32(h + 44) == 0x746F6E59;
    if (!ext)
        sectors &= 0xffffffffu;
    if (tracks == 0 || sectors > UINT64_MAX / 512) {
        vlayer_problem(l, "parallels header: %s", tracks ? "absurd size" : "cluster size 0");
        return -EINVAL;
    }
    b->f.size = sectors * 512;
    return 0;
}

static int parse_bochs(struct vlayer *l, struct bridge *b, const uint8_t *h)
{
    b->f.version = get_le32(h + 64);
    b->f.subformat = "Growing";
    b->f.count = get_le32(h + 72);
    b->f.block_size = get_le32(h + 80);
    b->f.size = (b->f.version == 0x00010000 ? get_le64(h + 84) : get_le64(h + 88)) / 512 * 512;
    return 0;
}

static int parse_cloop(struct vlayer *l, struct bridge *b, const uint8_t *h)
{
    b->f.version = 2;
    b->f.block_size = get_be32(h + 128);
    b->f.count = get_be32(h + 132);
    uint64_t size;
    if (ckd_mul_u64(&size, b->f.block_size, b->f.count)) {
        vlayer_problem(l, "cloop header: absurd size");
        return -EINVAL;
    }
    b->f.size = size / 512 * 512;
    return 0;
}

/* The UDIF trailer: 512 bytes starting with "koly", which qemu looks for
 * in the last 1023 bytes (files of odd sizes end after it). */
static int parse_dmg(struct vlayer *l, struct bridge *b)
{
    uint64_t fsz = l->file->size;
    uint8_t win[1023];
    uint64_t start = fsz > sizeof win ? fsz - sizeof win : 0;
    size_t n = (size_t)(fsz - start);
    size_t at = SIZE_MAX;
    if (fsz >= 512 && vsrc_pread(l->file, win, n, start) == 0)
        for (size_t i = 0; i + 512 <= n && at == SIZE_MAX; i++)
            if (!memcmp(win + i, "koly", 4))
                at = i;
    if (at == SIZE_MAX) {
        vlayer_problem(l, "no dmg trailer ('koly' near the end of the file): not a dmg "
                       "image vmfs can read");
        return -EINVAL;
    }
    const uint8_t *k = win + at;
    uint64_t koly = start + at;
    uint64_t df_off = get_be64(k + 0x18), df_len = get_be64(k + 0x20);
    uint64_t rf_off = get_be64(k + 0x28), rf_len = get_be64(k + 0x30);
    uint64_t xml_off = get_be64(k + 0xd8), xml_len = get_be64(k + 0xe0);
    uint64_t sectors = get_be64(k + 0x1ec);
    b->f.version = get_be32(k + 4);
    b->f.data_fork_len = df_len;
    b->f.subformat = rf_len ? "UDIF (resource fork)" : "UDIF (XML property list)";
    if (df_off > koly || rf_off >= koly || rf_len > koly - rf_off || xml_off >= koly ||
        xml_len > koly - xml_off || (!xml_len && !rf_len)) {
        vlayer_problem(l, "dmg trailer: the resource fork or property list lies outside "
                       "the file (or there is none)");
        return -EINVAL;
    }
    if (sectors > INT64_MAX / 512) {
        vlayer_problem(l, "dmg trailer: absurd sector count %llu",
                       (unsigned long long)sectors);
        return -EINVAL;
    }
    b->f.size = sectors * 512;
    return 0;
}

static int parse_header(struct vlayer *l, struct bridge *b)
{
    uint8_t h[512] = {0};
    size_t n = (size_t)VMFS_MIN(l->file->size, (uint64_t)sizeof h);
    int r = vsrc_pread(l->file, h, n, 0);
    if (r < 0) {
        vlayer_problem(l, "the header cannot be read: %s", strerror(-r));
        return r;
    }
    if (b->fmt != B_DMG && n < (b->fmt == B_QCOW ? 48u : b->fmt == B_CLOOP ? 136u : 512u)) {
        vlayer_problem(l, "%s header truncated (%zu bytes)", qemu_names[b->fmt], n);
        return -EINVAL;
    }
    switch (b->fmt) {
    case B_QCOW: return parse_qcow(l, b, h);
    case B_PARALLELS: return parse_parallels(l, b, h);
    case B_BOCHS: return parse_bochs(l, b, h);
    case B_CLOOP: return parse_cloop(l, b, h);
    default: return parse_dmg(l, b);
    }
}

/* ------------------------------------------------------------------------
 * Processes: one spawner thread forks them all
 * ---------------------------------------------------------------------- */

struct spawn_req {
    const char *exe;
    char **argv;
    const char *log;
    pid_t pid;                    /* > 0, or -errno */
    bool done;
    struct spawn_req *next;
};

static pthread_mutex_t sp_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sp_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t sp_done = PTHREAD_COND_INITIALIZER;
static struct spawn_req *sp_queue;
static pid_t sp_owner;            /* the process the spawner thread runs in */

/* In the child: only async-signal-safe calls until exec. */
static void child_exec(const struct spawn_req *r, pid_t parent, int nullfd, int logfd)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    setpgid(0, 0);                /* no terminal signals: vmfs stops it */
    if (dup2(nullfd, 0) < 0 || dup2(nullfd, 1) < 0 || dup2(logfd, 2) < 0)
        _exit(127);
    if (close_range(3, ~0u, 0) < 0)
        for (int fd = 3; fd < 4096; fd++)
            close(fd);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    const int sigs[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(sigs); i++)
        sigaction(sigs[i], &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(r->exe, r->argv);
    _exit(127);
}

static pid_t spawn_now(const struct spawn_req *r)
{
    int logfd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (logfd < 0)
        return -errno;
    int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nullfd < 0) {
        int e = errno;
        close(logfd);
        return -e;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0)
        child_exec(r, parent, nullfd, logfd);
    int e = errno;
    close(logfd);
    close(nullfd);
    return pid < 0 ? -e : pid;
}

static void *spawner_main(void *arg)
{
    pthread_mutex_lock(&sp_lock);
    for (;;) {
        while (!sp_queue)
            pthread_cond_wait(&sp_wake, &sp_lock);
        struct spawn_req *r = sp_queue;
        sp_queue = r->next;
        pthread_mutex_unlock(&sp_lock);
        pid_t pid = spawn_now(r);
        pthread_mutex_lock(&sp_lock);
        r->pid = pid;
        r->done = true;
        pthread_cond_broadcast(&sp_done);
    }
    return NULL;
}

static void at_exit(void) { vfmt_bridge_shutdown(); }

/* Starts exe with argv through the spawner thread (started on first use,
 * and again in a process that forked since).  Returns the pid or -errno. */
static pid_t spawn(const char *exe, char **argv, const char *log)
{
    struct spawn_req r = {.exe = exe, .argv = argv, .log = log};
    pthread_mutex_lock(&sp_lock);
    if (sp_owner != getpid()) {
        pthread_t t;
        pthread_attr_t a;
        sigset_t all, old;
        sigfillset(&all);
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_sigmask(SIG_SETMASK, &all, &old);   /* signals go elsewhere */
        int e = pthread_create(&t, &a, spawner_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&a);
        if (e) {
            pthread_mutex_unlock(&sp_lock);
            return -e;
        }
        if (!sp_owner)
            atexit(at_exit);
        sp_owner = getpid();
    }
    r.next = sp_queue;
    sp_queue = &r;
    pthread_cond_signal(&sp_wake);
    while (!r.done)
        pthread_cond_wait(&sp_done, &sp_lock);
    pthread_mutex_unlock(&sp_lock);
    return r.pid;
}

/* True when b's qemu-nbd runs (b->lock held); reaps it when it ended. */
static bool server_alive(struct bridge *b, int *status)
{
    if (b->pid <= 0)
        return false;
    if (b->owner != getpid()) {   /* forked before this process: not ours */
        b->pid = 0;
        return false;
    }
    int st = 0;
    pid_t r = waitpid(b->pid, &st, WNOHANG);
    if (r == 0)
        return true;
    if (status && r == b->pid)
        *status = st;
    b->pid = 0;
    return false;
}

/* Stops b's qemu-nbd (b->lock held): SIGTERM, then SIGKILL. */
static void server_stop(struct bridge *b)
{
    if (b->pid <= 0 || b->owner != getpid()) {
        b->pid = 0;
        return;
    }
    kill(b->pid, SIGTERM);
    uint64_t deadline = vmfs_now_ns() + STOP_MS * 1000000ull;
    for (;;) {
        pid_t r = waitpid(b->pid, NULL, WNOHANG);
        if (r != 0)
            break;
        if (vmfs_now_ns() >= deadline) {
            kill(b->pid, SIGKILL);
            while (waitpid(b->pid, NULL, 0) < 0 && errno == EINTR) {
            }
            break;
        }
        sleep_ms(5);
    }
    b->pid = 0;
}

/* The last line qemu-nbd wrote, without the json: filename it quotes. */
static char *server_message(const struct bridge *b)
{
    char buf[2048];
    int fd = open(b->log, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? pread(fd, buf, sizeof buf - 1, 0) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return xstrdup("no message");
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    char *line = strrchr(buf, '\n');
    line = line ? line + 1 : buf;
    char *q = strstr(line, "': ");
    if (q)
        line = q + 3;
    for (char *c = line; *c; c++)
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    return xstrdup(line);
}

/* True when something accepts connections on path. */
static bool socket_ready(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* Starts qemu-nbd and waits until it serves (b->lock held).  Returns 0, or
 * a negative errno with *why (malloc'ed) saying what went wrong. */
static int server_start(struct bridge *b, char **why)
{
    unlink(b->sock);
    char *argv[] = {
        b->exe, "--read-only", "--persistent", "--shared=4", "--socket", b->sock,
        b->image_json, NULL,
    };
    pid_t pid = spawn(b->exe, argv, b->log);
    if (pid < 0) {
        *why = xasprintf("%s cannot be started: %s", b->exe, strerror((int)-pid));
        return (int)pid;
    }
    b->pid = pid;
    b->owner = getpid();
    uint64_t deadline = vmfs_now_ns() + START_MS * 1000000ull;
    unsigned ms = 2;
    for (;;) {
        int st = -1;
        if (!server_alive(b, &st)) {
            CLEANUP_FREE char *msg = server_message(b);
            if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
                *why = xasprintf("%s could not be run (%s)", b->exe, msg);
            else
                *why = xasprintf("qemu-nbd cannot open it: %s", msg);
            return -EIO;
        }
        if (socket_ready(b->sock))
            return 0;
        if (vmfs_now_ns() >= deadline) {
            server_stop(b);
            *why = xasprintf("qemu-nbd did not serve it within %u s", START_MS / 1000);
            return -ETIMEDOUT;
        }
        sleep_ms(ms);
        ms = VMFS_MIN(ms * 2, 50u);
    }
}

/* Called by the NBD source when it cannot connect: a qemu-nbd that died
 * is started again (at most every RESTART_NS). */
static void bridge_revive(void *ctx)
{
    struct bridge *b = ctx;
    pthread_mutex_lock(&b->lock);
    int st = -1;
    if (b->stopped || server_alive(b, &st) || vmfs_now_ns() < b->next_restart) {
        pthread_mutex_unlock(&b->lock);
        return;
    }
    b->next_restart = vmfs_now_ns() + RESTART_NS;
    if (!b->restart_logged) {
        b->restart_logged = true;
        vmfs_log(VMFS_LOG_WARN, "%s: qemu-nbd stopped serving it (%s %d): starting it again",
                 b->layer->path, st >= 0 && WIFSIGNALED(st) ? "signal" : "status",
                 st < 0 ? -1 : WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    char *why = NULL;
    if (server_start(b, &why) < 0)
        vmfs_log(VMFS_LOG_WARN, "%s: %s", b->layer->path, why);
    free(why);
    pthread_mutex_unlock(&b->lock);
}

/* ------------------------------------------------------------------------
 * Setting up
 * ---------------------------------------------------------------------- */

/* qemu-nbd: $VMFS_QEMU_NBD, else the first in $PATH (or /usr/bin). */
static char *find_qemu_nbd(void)
{
    const char *env = getenv("VMFS_QEMU_NBD");
    if (env && env[0])
        return access(env, X_OK) == 0 ? xstrdup(env) : NULL;
    const char *path = getenv("PATH");
    CLEANUP_FREE char *dirs = xstrdup(path && path[0] ? path : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (d[0] != '/')
            continue;
        char *exe = xasprintf("%s/qemu-nbd", d);
        if (access(exe, X_OK) == 0)
            return exe;
        free(exe);
    }
    return access("/usr/bin/qemu-nbd", X_OK) == 0 ? xstrdup("/usr/bin/qemu-nbd") : NULL;
}

/* s as a JSON string literal. */
static char *json_quote(const char *s)
{
    size_t n = strlen(s);
    char *out = xmalloc(n * 6 + 3), *o = out;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20) {
            o += sprintf(o, "\\u%04x", *p);
        } else {
            *o++ = (char)*p;
        }
    }
    *o++ = '"';
    *o = 0;
    return out;
}

/* A runtime directory only we can enter, with a socket path that fits. */
static char *make_private_dir(void)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    const char *bases[] = {xdg, "/tmp"};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bases); i++) {
        if (!bases[i] || bases[i][0] != '/' || strlen(bases[i]) > 60 ||
            strspn(bases[i], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                             "0123456789/._-") != strlen(bases[i]))
            continue;
        char *dir = xasprintf("%s/vmfs-qemu-nbd-XXXXXX", bases[i]);
        if (mkdtemp(dir))
            return dir;
        free(dir);
    }
    return NULL;
}

static void bridges_add(struct bridge *b)
{
    pthread_mutex_lock(&bridges_lock);
    b->next = bridges;
    bridges = b;
    pthread_mutex_unlock(&bridges_lock);
}

static void bridges_remove(struct bridge *b)
{
    pthread_mutex_lock(&bridges_lock);
    for (struct bridge **pp = &bridges; *pp; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    pthread_mutex_unlock(&bridges_lock);
}

/* Starts the server and opens the export.  Failing here is a problem of
 * the image, not of open: reads fail, info says why. */
static void bridge_connect(struct vlayer *l, struct bridge *b)
{
    b->exe = find_qemu_nbd();
    if (!b->exe) {
        const char *env = getenv("VMFS_QEMU_NBD");
        vlayer_problem(l, "reading %s images needs qemu-nbd, which is not installed%s%s%s: "
                       "install the Debian package " DEB_PACKAGE, qemu_names[b->fmt],
                       env && env[0] ? " (VMFS_QEMU_NBD=" : "", env && env[0] ? env : "",
                       env && env[0] ? ")" : "");
        return;
    }
    b->dir = make_private_dir();
    if (!b->dir) {
        vlayer_problem(l, "no private directory for qemu-nbd's socket: %s", strerror(errno));
        return;
    }
    b->sock = xasprintf("%s/nbd.sock", b->dir);
    b->log = xasprintf("%s/qemu-nbd.log", b->dir);
    b->uri = xasprintf("nbd+unix:///?socket=%s", b->sock);
    CLEANUP_FREE char *path = json_quote(l->path);
    b->image_json = xasprintf("json:{\"driver\":\"%s\",\"backing\":null,\"file\":"
                              "{\"driver\":\"file\",\"filename\":%s,\"locking\":\"off\"}}",
                              qemu_names[b->fmt], path);
    char *why = NULL;
    pthread_mutex_lock(&b->lock);
    int r = server_start(b, &why);
    pthread_mutex_unlock(&b->lock);
    if (r < 0) {
        vlayer_problem(l, "%s", why);
        free(why);
        return;
    }
    struct vsrc_nbd_opts o = {
        .max_conns = 4, .label = l->path, .revive = bridge_revive, .ctx = b,
    };
    /* qemu-nbd listens before it opens the image: the export is ready
     * once a handshake goes through, and a qemu-nbd that exits instead
     * has said why in its log. */
    uint64_t deadline = vmfs_now_ns() + START_MS * 1000000ull;
    int err = 0;
    while (!(b->src = vsrc_open_nbd_ex(b->uri, &o, &err))) {
        pthread_mutex_lock(&b->lock);
        int st = -1;
        bool alive = server_alive(b, &st);
        pthread_mutex_unlock(&b->lock);
        if (!alive) {
            CLEANUP_FREE char *msg = server_message(b);
            vlayer_problem(l, "qemu-nbd cannot open it: %s", msg);
            return;
        }
        if (vmfs_now_ns() >= deadline) {
            vlayer_problem(l, "qemu-nbd serves it, but the export cannot be read: %s",
                           strerror(-err));
            return;
        }
        sleep_ms(20);
    }
}

static const struct vfmt_driver variants[B_COUNT];

static int bridge_open(struct vlayer *l)
{
    uint8_t head[512] = {0};
    size_t n = (size_t)VMFS_MIN(l->file->size, (uint64_t)sizeof head);
    if (vsrc_pread(l->file, head, n, 0) < 0)
        return -EIO;
    int f = which_format(head, n, l->path);
    if (f < 0)
        return -EINVAL;
    l->drv = &variants[f];        /* names the format in info */
    struct bridge *b = xcalloc(1, sizeof *b);
    b->fmt = (enum bfmt)f;
    b->layer = l;
    pthread_mutex_init(&b->lock, NULL);
    l->priv = b;
    bridges_add(b);
    int r = parse_header(l, b);
    if (r < 0)
        return r;
    l->size = b->f.size;
    bridge_connect(l, b);
    if (b->src) {
        if (b->src->size != l->size && b->f.size / 512 != b->src->size / 512)
            vmfs_log(VMFS_LOG_DEBUG, "%s: header says %llu bytes, qemu-nbd %llu", l->path,
                     (unsigned long long)l->size, (unsigned long long)b->src->size);
        l->size = b->src->size;   /* qemu's answer is the disk */
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Reading
 * ---------------------------------------------------------------------- */

static void error_run(uint64_t len, struct vrun *run)
{
    run->kind = VRUN_ERROR;
    run->err = EIO;
    run->len = len;
}

/* Data, or (for a qcow with a backing file) what the export's block status
 * calls a hole: not allocated here, so the parent's. */
static int bridge_map(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct bridge *b = l->priv;
    if (!b->src || !range_in(off, len, b->src->size)) {
        error_run(len, run);
        return 0;
    }
    run->kind = VRUN_DATA;
    run->src = b->src;
    run->src_off = off;
    run->len = len;
    if (!b->has_backing)
        return 0;
    bool data = true;
    uint64_t n = len;
    if (vsrc_extent(b->src, off, len, &data, &n) < 0) {
        error_run(len, run);
        return 0;
    }
    run->len = n;
    if (!data)
        run->kind = VRUN_BACKING;
    return 0;
}

static int bridge_map_alloc(struct vlayer *l, uint64_t off, uint64_t len, struct vrun *run)
{
    struct bridge *b = l->priv;
    if (!b->src || b->has_backing)
        return bridge_map(l, off, len, run);
    bool data = true;
    uint64_t n = len;
    if (!range_in(off, len, b->src->size) || vsrc_extent(b->src, off, len, &data, &n) < 0) {
        data = true;
        n = len;
    }
    run->kind = data ? VRUN_DATA : VRUN_ZERO;
    run->src = b->src;
    run->src_off = off;
    run->len = n;
    return 0;
}

static void bridge_report(struct vlayer *l, struct rep *o)
{
    struct bridge *b = l->priv;
    if (!b)
        return;
    rep_set_str(o, "qemu_format", qemu_names[b->fmt]);
    rep_set_str(o, "bridge", "qemu-nbd");
    rep_set_str(o, "qemu_nbd", b->exe ? b->exe : "not installed (Debian package " DEB_PACKAGE ")");
    rep_set_str(o, "bridge_state", b->src ? "serving" : "not serving");
    switch (b->fmt) {
    case B_QCOW:
        rep_set_u64(o, "format_version", 1);
        rep_set_size(o, "cluster_size", b->f.block_size);
        rep_set_bool(o, "encrypted", false);
        break;
    case B_PARALLELS:
        rep_set_str(o, "subformat", b->f.subformat);
        rep_set_u64(o, "format_version", b->f.version);
        rep_set_size(o, "cluster_size", b->f.block_size);
        rep_set_u64(o, "bat_entries", b->f.count);
        rep_set_bool(o, "dirty", b->f.dirty);
        break;
    case B_BOCHS:
        rep_set_str(o, "subformat", b->f.subformat);
        rep_set_strf(o, "format_version", "%u.%u", b->f.version >> 16, b->f.version & 0xffff);
        rep_set_size(o, "extent_size", b->f.block_size);
        rep_set_u64(o, "catalog_entries", b->f.count);
        break;
    case B_CLOOP:
        rep_set_u64(o, "format_version", b->f.version);
        rep_set_size(o, "block_size", b->f.block_size);
        rep_set_u64(o, "blocks", b->f.count);
        rep_set_str(o, "compression", "zlib");
        break;
    default:
        rep_set_str(o, "subformat", b->f.subformat);
        rep_set_u64(o, "format_version", b->f.version);
        rep_set_size(o, "data_fork_size", b->f.data_fork_len);
        break;
    }
}

static void bridge_free(struct bridge *b)
{
    pthread_mutex_lock(&b->lock);
    b->stopped = true;
    pthread_mutex_unlock(&b->lock);
    vsrc_close(b->src);           /* no reads in flight: nobody revives */
    pthread_mutex_lock(&b->lock);
    server_stop(b);
    pthread_mutex_unlock(&b->lock);
    if (b->sock)
        unlink(b->sock);
    if (b->log)
        unlink(b->log);
    if (b->dir)
        rmdir(b->dir);
    pthread_mutex_destroy(&b->lock);
    free(b->exe);
    free(b->dir);
    free(b->sock);
    free(b->log);
    free(b->uri);
    free(b->image_json);
    free(b);
}

static void bridge_close(struct vlayer *l)
{
    struct bridge *b = l->priv;
    if (!b)
        return;
    bridges_remove(b);
    bridge_free(b);
    l->priv = NULL;
}

void vfmt_bridge_shutdown(void)
{
    pthread_mutex_lock(&bridges_lock);
    for (struct bridge *b = bridges; b; b = b->next) {
        pthread_mutex_lock(&b->lock);
        b->stopped = true;
        if (b->pid > 0 && b->owner == getpid())
            kill(b->pid, SIGTERM);
        pthread_mutex_unlock(&b->lock);
    }
    for (struct bridge *b = bridges; b; b = b->next) {
        pthread_mutex_lock(&b->lock);
        server_stop(b);
        pthread_mutex_unlock(&b->lock);
    }
    pthread_mutex_unlock(&bridges_lock);
}

#define BRIDGE_DRIVER(label)                                                             \
    {                                                                                    \
        .name = label, .probe = bridge_probe, .open = bridge_open, .map = bridge_map,    \
        .map_alloc = bridge_map_alloc, .report = bridge_report, .close = bridge_close,   \
    }

static const struct vfmt_driver variants[B_COUNT] = {
    [B_QCOW] = BRIDGE_DRIVER("qcow via qemu-nbd"),
    [B_PARALLELS] = BRIDGE_DRIVER("parallels via qemu-nbd"),
    [B_BOCHS] = BRIDGE_DRIVER("bochs via qemu-nbd"),
    [B_CLOOP] = BRIDGE_DRIVER("cloop via qemu-nbd"),
    [B_DMG] = BRIDGE_DRIVER("dmg via qemu-nbd"),
};

const struct vfmt_driver vfmt_bridge = BRIDGE_DRIVER("qemu-nbd");
