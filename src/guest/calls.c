/* vmfs — what an appliance's worker does: mount filesystems without
 * replaying journals, list directories with their attributes in one round
 * trip, fetch link targets, extended attributes, extent maps and file data
 * in batches, and fill the caches.
 *
 * Everything the appliance returns is checked before it is kept: names
 * (no '/', no "." or "..", at most 255 bytes), file types, sizes, counts,
 * link targets, attribute sizes, extents.  An answer that does not add up
 * is an EIO, never a crash or an unbounded allocation.
 *
 * Threads: only the appliance's worker thread runs these functions. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guest/guest_int.h"

/* ---- helpers ---- */

int w_errno(struct app *a)
{
    int e = guestfs_last_errno(a->g);
    switch (e) {
    case ENOENT:
    case ENOTDIR:
    case EISDIR:
    case ENAMETOOLONG:
    case ELOOP:
    case EACCES:
    case ENODATA:
    case ENOTSUP:
        return -e;
    default:
        return -EIO;
    }
}

/* One line of the last error, bounded, printable. */
static char *err_line(struct app *a)
{
    const char *e = guestfs_last_error(a->g);
    char *s = xstrdup(e && *e ? e : "unknown error");
    s[strcspn(s, "\n")] = 0;
    if (strlen(s) > 200)
        s[200] = 0;
    for (char *c = s; *c; c++)
        if ((unsigned char)*c < 32)
            *c = ' ';
    return s;
}

/* The appliance path of path inside filesystem f. */
static char *gpath(const struct gfs *f, const char *path)
{
    if (!strcmp(path, "/"))
        return xstrdup(f->mp);
    return xasprintf("%s%s", f->mp, path);
}

/* Splits "/a/b/c" into "/a/b" and "c" (malloc'ed); "/c" into "/" and "c". */
static void split_path(const char *path, char **dir, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash + 1;
    *dir = slash == path ? xstrdup("/") : strndup(path, (size_t)(slash - path));
    if (!*dir)
        abort();
}

static char *child_path(const char *dir, const char *name)
{
    return !strcmp(dir, "/") ? xasprintf("/%s", name) : xasprintf("%s/%s", dir, name);
}

static struct gc_key key(const struct app *a, size_t fs, enum gc_kind kind, const char *path)
{
    return (struct gc_key){.app = a->id, .fs = (uint32_t)fs, .kind = kind, .path = path};
}

bool g_name_ok(const char *name)
{
    size_t n = strlen(name);
    return n > 0 && n <= G_MAX_NAME && !strchr(name, '/') && strcmp(name, ".") &&
           strcmp(name, "..");
}

/* Converts the appliance's stat; false when it does not make sense. */
bool g_statns_to_stat(const struct guestfs_statns *s, struct stat *st)
{
    mode_t type = (mode_t)s->st_mode & S_IFMT;
    if (type != S_IFREG && type != S_IFDIR && type != S_IFLNK && type != S_IFCHR &&
        type != S_IFBLK && type != S_IFIFO && type != S_IFSOCK)
        return false;
    if (s->st_ino < 0 || s->st_size < 0 || s->st_nlink < 0 || s->st_blocks < 0)
        return false;
    memset(st, 0, sizeof *st);
    st->st_mode = (mode_t)s->st_mode & (S_IFMT | 07777);
    st->st_ino = (ino_t)s->st_ino;
    st->st_nlink = (nlink_t)VMFS_MIN(s->st_nlink, (int64_t)UINT32_MAX);
    st->st_uid = s->st_uid >= 0 && s->st_uid < UINT32_MAX ? (uid_t)s->st_uid : 65534;
    st->st_gid = s->st_gid >= 0 && s->st_gid < UINT32_MAX ? (gid_t)s->st_gid : 65534;
    if (type == S_IFCHR || type == S_IFBLK)
        st->st_rdev = (dev_t)s->st_rdev;
    st->st_size = s->st_size;
    st->st_blksize = 4096;
    st->st_blocks = s->st_blocks;
    st->st_atim.tv_sec = (time_t)s->st_atime_sec;
    st->st_mtim.tv_sec = (time_t)s->st_mtime_sec;
    st->st_ctim.tv_sec = (time_t)s->st_ctime_sec;
    if (s->st_atime_nsec >= 0 && s->st_atime_nsec < 1000000000)
        st->st_atim.tv_nsec = (long)s->st_atime_nsec;
    if (s->st_mtime_nsec >= 0 && s->st_mtime_nsec < 1000000000)
        st->st_mtim.tv_nsec = (long)s->st_mtime_nsec;
    if (s->st_ctime_nsec >= 0 && s->st_ctime_nsec < 1000000000)
        st->st_ctim.tv_nsec = (long)s->st_ctime_nsec;
    return true;
}

static void set_fs(struct app *a, struct gfs *f, enum gfs_state state, char *reason,
                   const char *type, const char *options)
{
    pthread_mutex_lock(&a->lock);
    f->state = state;
    free(f->reason);
    f->reason = reason;
    if (type) {
        free(f->type);
        f->type = xstrdup(type);
    }
    if (options) {
        free(f->options);
        f->options = xstrdup(options);
    }
    pthread_mutex_unlock(&a->lock);
    g_facts_store(a, f);
}

/* Runs a shell command in the appliance (outside the guest): its output
 * (stdout and stderr), or NULL. */
static char *debug_sh(struct app *a, const char *cmd)
{
    if (a->debug_sh == 0)
        return NULL;
    char *argv[] = {(char *)cmd, NULL};
    call_begin(a);
    char *out = guestfs_debug(a->g, "sh", argv);
    call_end(a);
    if (a->debug_sh < 0) {
        /* The first use tells whether this appliance has the command. */
        if (!out && strstr(guestfs_last_error(a->g) ?: "", "debug"))
            a->debug_sh = 0;
        else if (out)
            a->debug_sh = 1;
    }
    return out;
}

/* ---- mounting ---- */

const char *g_static_reason(const struct gfs *f)
{
    const char *t = f->hint;
    if (!t)
        return NULL;
    if (!strcmp(t, "swap"))
        return "swap space, not a filesystem";
    if (!strcmp(t, "LVM2 PV") || !strcmp(t, "LVM2_member"))
        return "an LVM physical volume: its logical volumes are under lvm/";
    if (!strcmp(t, "LUKS") || !strcmp(t, "crypto_LUKS"))
        return "encrypted (LUKS): vmfs does not unlock volumes";
    if (!strcmp(t, "BitLocker"))
        return "encrypted (BitLocker): vmfs does not unlock volumes";
    if (!strcmp(t, "linux_raid_member"))
        return "a member of a software RAID: vmfs does not assemble arrays";
    if (!strcmp(t, "jbd"))
        return "an external ext3/ext4 journal";
    if (strstr(t, "partition table"))
        return "a partition table: its filesystems are under p1, p2, …";
    return NULL;
}

/* Mount options per type, tried in order.  None of them replays a
 * journal: a broken guest is shown as its disk holds it. */
static const struct {
    const char *type, *vfstype, *options;
} mount_table[] = {
    {"ext4", NULL, "ro,noload"},
    {"ext3", NULL, "ro,noload"},
    {"ext2", NULL, "ro,noload"},
    {"ext2", NULL, "ro"},
    {"xfs", NULL, "ro,norecovery,nouuid"},
    {"xfs", NULL, "ro,norecovery"},
    {"btrfs", NULL, "ro,rescue=nologreplay"},
    {"btrfs", NULL, "ro,nologreplay"},
    {"btrfs", NULL, "ro,rescue=nologreplay:usebackuproot"},
    {"btrfs", NULL, "ro,rescue=all"},
    {"ntfs", "ntfs3", "ro,force"},
    {"ntfs", NULL, "ro"},
    {"vfat", NULL, "ro,utf8"},
    {"vfat", NULL, "ro"},
    {"msdos", NULL, "ro"},
    {"exfat", NULL, "ro,iocharset=utf8"},
    {"exfat", NULL, "ro"},
    {"f2fs", NULL, "ro,norecovery"},
    {"iso9660", NULL, "ro"},
    {"udf", NULL, "ro"},
    {"squashfs", NULL, "ro"},
};

static bool type_known(const char *type)
{
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(mount_table); i++)
        if (!strcmp(mount_table[i].type, type))
            return true;
    return false;
}

/* Mounts f with the options for type.  0, -1 (*err set), -EIO (dead). */
static int try_mount(struct app *a, struct gfs *f, const char *type, char **err)
{
    bool any = false;
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(mount_table) + 1; i++) {
        const char *vt = NULL, *opt = "ro";
        if (i < VMFS_ARRAY_SIZE(mount_table)) {
            if (strcmp(mount_table[i].type, type))
                continue;
            vt = mount_table[i].vfstype;
            opt = mount_table[i].options;
            any = true;
        } else if (any) {
            break;   /* known types never fall back to plain options */
        }
        call_begin(a);
        int r = vt ? guestfs_mount_vfs(a->g, opt, vt, f->dev, f->mp)
                   : guestfs_mount_options(a->g, opt, f->dev, f->mp);
        call_end(a);
        if (r == 0) {
            set_fs(a, f, GFS_MOUNTED, NULL, type, opt);
            return 0;
        }
        if (!guestfs_is_ready(a->g))
            return -EIO;
        if (!*err)
            *err = err_line(a);
    }
    return -1;
}

/* The type the appliance sees on f's device: malloc'ed, or NULL (*why). */
static char *probe_type(struct app *a, struct gfs *f, char **why)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        call_begin(a);
        char *t = guestfs_vfs_type(a->g, f->dev);
        call_end(a);
        if (t && *t)
            return t;
        if (t) {
            free(t);
            *why = xstrdup("no filesystem found");
            return NULL;
        }
        if (attempt == 0 && f->vol >= 0 && !strncmp(f->name, "lvm/", 4)) {
            /* A logical volume the appliance did not activate by itself. */
            call_begin(a);
            guestfs_vg_activate_all(a->g, 1);
            call_end(a);
            continue;
        }
        char *e = err_line(a);
        *why = xasprintf("the appliance cannot read it: %s", e);
        free(e);
        return NULL;
    }
    return NULL;
}

/* True when the appliance sees the same bytes on f's device as the view
 * does: then extent maps from the appliance address the view. */
static bool same_bytes(struct app *a, struct gfs *f)
{
    struct vview v = {a->t, f->vol};
    uint64_t size = vview_size(&v);
    call_begin(a);
    int64_t dsize = guestfs_blockdev_getsize64(a->g, f->dev);
    call_end(a);
    if (dsize < 0 || (uint64_t)dsize != size || size < 65536)
        return false;
    uint64_t offs[2] = {0, (size - 65536) & ~(uint64_t)4095};
    CLEANUP_FREE uint8_t *mine = xmalloc(65536);
    for (int i = 0; i < 2; i++) {
        size_t n = 0;
        call_begin(a);
        char *theirs = guestfs_pread_device(a->g, f->dev, 65536, (int64_t)offs[i], &n);
        call_end(a);
        bool same = theirs && n == 65536 && vview_read(&v, mine, 65536, offs[i]) == 0 &&
                    !memcmp(mine, theirs, 65536);
        free(theirs);
        if (!same)
            return false;
    }
    return true;
}

static bool direct_type(const char *type)
{
    static const char *const ok[] = {"ext2", "ext3", "ext4", "xfs", "vfat", "msdos"};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(ok); i++)
        if (!strcmp(type, ok[i]))
            return true;
    return false;
}

static void check_direct(struct app *a, struct gfs *f)
{
    if (!f->type || !direct_type(f->type) || getenv("VMFS_GUEST_NO_DIRECT"))
        return;
    char *out = debug_sh(a, "echo vmfs-ok");
    bool sh = out && strstr(out, "vmfs-ok");
    free(out);
    if (!sh || !same_bytes(a, f))
        return;
    pthread_mutex_lock(&a->lock);
    f->direct = true;
    pthread_mutex_unlock(&a->lock);
}

/* Whether a read-only mount of f as type could still write to its device:
 * ext3/ext4 clean up orphan inodes even when mounted read-only, unless the
 * device itself is read-only.  The filesystems listed do not write when
 * mounted with the options above; an ext2/3/4 without orphans neither. */
static bool ro_mount_may_write(struct app *a, struct gfs *f, const char *type)
{
    static const char *const quiet[] = {"xfs", "btrfs", "vfat", "msdos", "exfat",
                                        "iso9660", "squashfs", "udf", "ntfs"};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(quiet); i++)
        if (!strcmp(type, quiet[i]))
            return false;
    if (strcmp(type, "ext2") && strcmp(type, "ext3") && strcmp(type, "ext4"))
        return true;
    uint8_t sb[1024];
    struct vview v = {a->t, f->vol};
    if (vview_size(&v) < 2048 || vview_read(&v, sb, sizeof sb, 1024) < 0 ||
        get_le16(sb + 0x38) != 0xEF53)
        return true;
    bool orphans = get_le32(sb + 0xE8) != 0;           /* s_last_orphan */
    bool orphan_file = get_le32(sb + 0x5C) & 0x1000;   /* COMPAT_ORPHAN_FILE */
    return orphans || orphan_file;
}

/* Makes f's device read-only in the appliance's kernel when mounting could
 * otherwise write to it, so that nothing is cleaned up or replayed. */
static void protect(struct app *a, struct gfs *f, const char *type, bool *done)
{
    if (*done || !ro_mount_may_write(a, f, type))
        return;
    call_begin(a);
    guestfs_blockdev_setro(a->g, f->dev);
    call_end(a);
    *done = true;
}

int w_mount(struct app *a, size_t i)
{
    struct gfs *f = &a->fs[i];
    if (f->state == GFS_MOUNTED)
        return 0;
    if (f->state == GFS_FAILED)
        return -ENODEV;
    const char *why = g_static_reason(f);
    if (why || !f->dev) {
        set_fs(a, f, GFS_FAILED, xstrdup(why ? why : "no device in the appliance"), NULL,
               NULL);
        return -ENODEV;
    }
    call_begin(a);
    int r = guestfs_mkmountpoint(a->g, f->mp);
    call_end(a);
    if (r < 0 && !guestfs_is_ready(a->g))
        return -EIO;
    char *err = NULL;
    bool ro = false;
    r = -1;
    if (f->hint && type_known(f->hint)) {
        protect(a, f, f->hint, &ro);
        r = try_mount(a, f, f->hint, &err);
    }
    if (r == -1) {
        /* No hint, or the hint was wrong: ask the appliance. */
        char *probe_why = NULL;
        char *type = probe_type(a, f, &probe_why);
        if (!type) {
            if (!guestfs_is_ready(a->g)) {
                free(probe_why);
                free(err);
                return -EIO;
            }
            set_fs(a, f, GFS_FAILED, probe_why, NULL, NULL);
            free(err);
            return -ENODEV;
        }
        struct gfs probe = {.hint = type};
        const char *sreason = g_static_reason(&probe);
        if (sreason) {
            set_fs(a, f, GFS_FAILED, xstrdup(sreason), type, NULL);
            free(type);
            free(err);
            return -ENODEV;
        }
        if (!f->hint || strcmp(type, f->hint)) {
            free(err);
            err = NULL;
            protect(a, f, type, &ro);
            r = try_mount(a, f, type, &err);
        }
        if (r == -1) {
            set_fs(a, f, GFS_FAILED, xasprintf("%s does not mount: %s", type,
                                               err ? err : "unknown error"), type, NULL);
        }
        free(type);
    }
    free(err);
    if (r == -EIO)
        return -EIO;
    if (r < 0)
        return -ENODEV;
    return 0;   /* whether data may come from the view: at the first map */
}

/* ---- attributes and listings ---- */

static int w_stat(struct app *a, struct job *j)
{
    int r = w_mount(a, j->fs);
    if (r < 0)
        return r;
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], j->path);
    call_begin(a);
    struct guestfs_statns *s = guestfs_lstatns(a->g, p);
    call_end(a);
    if (!s)
        return w_errno(a);
    bool ok = g_statns_to_stat(s, &j->st);
    guestfs_free_statns(s);
    if (!ok)
        return -EIO;
    struct gstat *gs = xmalloc(sizeof *gs);
    gs->err = 0;
    gs->st = j->st;
    struct gc_key k = key(a, j->fs, GC_STAT, j->path);
    gc_put(&k, gs, sizeof *gs, free);
    return 0;
}

static int cmp_dirent(const void *x, const void *y)
{
    return strcmp(((const struct guest_dirent *)x)->name, ((const struct guest_dirent *)y)->name);
}

/* The names in a directory, through a file when the listing is too large
 * for one message.  A NULL-terminated array, or NULL. */
static char **list_names_large(struct app *a, const char *p)
{
    int fd = memfd_create("vmfs-ls0", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    char fdpath[64];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
    call_begin(a);
    int r = guestfs_ls0(a->g, p, fdpath);
    call_end(a);
    off_t size = lseek(fd, 0, SEEK_END);
    if (r < 0 || size < 0 || size > (off_t)G_MAX_ENTRIES * (G_MAX_NAME + 1)) {
        close(fd);
        return NULL;
    }
    char *buf = xmalloc((size_t)size + 1);
    bool ok = pread(fd, buf, (size_t)size, 0) == size;
    close(fd);
    buf[size] = 0;
    size_t n = 0, cap = 0;
    char **names = NULL;
    for (size_t off = 0; ok && off < (size_t)size && n < G_MAX_ENTRIES;) {
        size_t len = strlen(buf + off);
        if (n + 1 >= cap) {
            cap = cap ? cap * 2 : 1024;
            names = xrealloc(names, cap * sizeof *names);
        }
        names[n++] = xstrdup(buf + off);
        off += len + 1;
    }
    free(buf);
    if (!names)
        names = xcalloc(1, sizeof *names);
    names[n] = NULL;
    return names;
}

static void free_names(char **names)
{
    for (size_t i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
}

/* The valid names of directory p (without "." and ".."). */
static int list_names(struct app *a, const char *p, char ***out, size_t *n)
{
    call_begin(a);
    struct guestfs_dirent_list *dl = guestfs_readdir(a->g, p);
    call_end(a);
    char **raw = NULL;
    if (dl) {
        raw = xcalloc((size_t)VMFS_MIN(dl->len, G_MAX_ENTRIES + 2) + 1, sizeof *raw);
        size_t k = 0;
        for (uint32_t i = 0; i < dl->len && k < G_MAX_ENTRIES + 2; i++)
            raw[k++] = xstrdup(dl->val[i].name);
        guestfs_free_dirent_list(dl);
    } else {
        int e = w_errno(a);
        if (e != -EIO || !guestfs_is_ready(a->g))
            return e;
        raw = list_names_large(a, p);
        if (!raw)
            return -EIO;
    }
    size_t k = 0;
    for (size_t i = 0; raw[i]; i++) {
        if (g_name_ok(raw[i]) && k < G_MAX_ENTRIES)
            raw[k++] = raw[i];
        else
            free(raw[i]);
    }
    raw[k] = NULL;
    *out = raw;
    *n = k;
    return 0;
}

/* Remembers a listed directory as a place to find files to map. */
static void note_listed(struct gfs *f, const char *path)
{
    free(f->recent[f->recent_next]);
    f->recent[f->recent_next] = xstrdup(path);
    f->recent_next = (f->recent_next + 1) % G_RECENT_DIRS;
}

static size_t gdir_bytes(const struct gdir *d)
{
    size_t b = sizeof *d + d->n * sizeof *d->ents;
    for (size_t i = 0; i < d->n; i++)
        b += strlen(d->ents[i].name) + 1;
    return b;
}

static int w_readdir(struct app *a, struct job *j)
{
    struct gdir *d = xcalloc(1, sizeof *d);
    d->refs = 1;
    int r = w_mount(a, j->fs);
    if (r == -ENODEV) {
        j->dir = d;   /* shows as an empty directory */
        return 0;
    }
    if (r < 0) {
        gdir_free(d);
        return r;
    }
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], j->path);
    char **names = NULL;
    size_t n = 0;
    r = list_names(a, p, &names, &n);
    if (r < 0) {
        gdir_free(d);
        return r;
    }
    struct guestfs_statns_list *sl = NULL;
    if (n > 0) {
        call_begin(a);
        sl = guestfs_lstatnslist(a->g, p, names);
        call_end(a);
        if (!sl || sl->len != n) {
            r = sl ? -EIO : w_errno(a);
            if (sl)
                guestfs_free_statns_list(sl);
            free_names(names);
            gdir_free(d);
            return r == -ENOENT ? -EIO : r;
        }
    }
    d->ents = xcalloc(n ? n : 1, sizeof *d->ents);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (!g_statns_to_stat(&sl->val[i], &st))
            continue;   /* vanished or nonsense: not shown */
        d->ents[d->n].name = names[i];
        names[i] = NULL;
        d->ents[d->n].st = st;
        d->n++;
    }
    if (sl)
        guestfs_free_statns_list(sl);
    free_names(names);
    qsort(d->ents, d->n, sizeof *d->ents, cmp_dirent);
    note_listed(&a->fs[j->fs], j->path);
    struct gc_key k = key(a, j->fs, GC_DIR, j->path);
    gc_put(&k, gdir_ref(d), gdir_bytes(d), gdir_free);
    j->dir = d;
    return 0;
}

/* The cached listing of the directory holding path, or NULL. */
static struct gdir *cached_parent(struct app *a, size_t fs, const char *dir,
                                  struct gc_ent **ref)
{
    struct gc_key k = key(a, fs, GC_DIR, dir);
    return gc_get(&k, ref);
}

/* ---- link targets ---- */

static bool target_ok(const char *t) { return t && *t && strlen(t) <= G_MAX_LINK; }

static void cache_link(struct app *a, size_t fs, const char *path, const char *target)
{
    struct gc_key k = key(a, fs, GC_LINK, path);
    gc_put(&k, xstrdup(target), strlen(target) + 1, free);
}

/* Targets of the symlinks of a listed directory, in one call. */
static void links_batch(struct app *a, struct job *j, const char *dir, const char *name,
                        const struct gdir *d)
{
    size_t n = 0;
    char **names = xcalloc(d->n + 2, sizeof *names);
    names[n++] = (char *)name;
    for (size_t i = 0; i < d->n && n < 4096; i++)
        if (S_ISLNK(d->ents[i].st.st_mode) && strcmp(d->ents[i].name, name))
            names[n++] = d->ents[i].name;
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], dir);
    call_begin(a);
    char **targets = guestfs_readlinklist(a->g, p, names);
    call_end(a);
    if (!targets) {
        j->err = w_errno(a);
        free(names);
        return;
    }
    size_t i = 0;
    for (; targets[i] && i < n; i++) {
        if (!target_ok(targets[i]))
            continue;
        CLEANUP_FREE char *cp = child_path(dir, names[i]);
        cache_link(a, j->fs, cp, targets[i]);
        if (i == 0)
            j->target = xstrdup(targets[i]);
    }
    for (size_t k = 0; targets[k]; k++)
        free(targets[k]);
    free(targets);
    free(names);
    j->err = j->target ? 0 : -EIO;
}

static int w_links(struct app *a, struct job *j)
{
    int r = w_mount(a, j->fs);
    if (r < 0)
        return r == -ENODEV ? -ENOENT : r;
    CLEANUP_FREE char *dir = NULL;
    const char *name;
    split_path(j->path, &dir, &name);
    struct gc_ent *ref;
    struct gdir *d = cached_parent(a, j->fs, dir, &ref);
    if (d) {
        links_batch(a, j, dir, name, d);
        gc_release(ref);
        return j->err;
    }
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], j->path);
    call_begin(a);
    char *t = guestfs_readlink(a->g, p);
    call_end(a);
    if (!t)
        return w_errno(a);
    if (!target_ok(t)) {
        free(t);
        return -EIO;
    }
    cache_link(a, j->fs, j->path, t);
    j->target = t;
    return 0;
}

/* ---- extended attributes ---- */

static bool xattr_ok(const struct guestfs_xattr *x)
{
    return x->attrname && *x->attrname && strlen(x->attrname) <= G_MAX_NAME &&
           x->attrval_len <= G_MAX_XATTR_VALUE;
}

/* Copies count attributes starting at v into a new set. */
static struct gxattrs *xattrs_from(const struct guestfs_xattr *v, size_t count)
{
    struct gxattrs *x = xcalloc(1, sizeof *x);
    x->v = xcalloc(count ? count : 1, sizeof *x->v);
    for (size_t i = 0; i < count; i++) {
        if (!xattr_ok(&v[i]))
            continue;
        struct gxattr *e = &x->v[x->n++];
        e->name = xstrdup(v[i].attrname);
        e->len = v[i].attrval_len;
        e->val = xmalloc(e->len ? e->len : 1);
        memcpy(e->val, v[i].attrval, e->len);
    }
    return x;
}

static size_t xattrs_bytes(const struct gxattrs *x)
{
    size_t b = sizeof *x + x->n * sizeof *x->v;
    for (size_t i = 0; i < x->n; i++)
        b += strlen(x->v[i].name) + 1 + x->v[i].len;
    return b;
}

static void cache_xattrs(struct app *a, size_t fs, const char *path, struct gxattrs *x)
{
    struct gc_key k = key(a, fs, GC_XATTR, path);
    gc_put(&k, x, xattrs_bytes(x), gxattrs_free);
}

static struct gxattrs *xattrs_copy(const struct gxattrs *x)
{
    struct gxattrs *c = xcalloc(1, sizeof *c);
    c->v = xcalloc(x->n ? x->n : 1, sizeof *c->v);
    for (size_t i = 0; i < x->n; i++) {
        c->v[i].name = xstrdup(x->v[i].name);
        c->v[i].len = x->v[i].len;
        c->v[i].val = xmalloc(x->v[i].len ? x->v[i].len : 1);
        memcpy(c->v[i].val, x->v[i].val, x->v[i].len);
    }
    c->n = x->n;
    return c;
}

/* Attributes of every entry of a listed directory, in one call (the
 * library splits it as the protocol needs). */
static int xattrs_batch(struct app *a, struct job *j, const char *dir, const char *name,
                        const struct gdir *d)
{
    size_t n = 0;
    char **names = xcalloc(d->n + 2, sizeof *names);
    names[n++] = (char *)name;
    for (size_t i = 0; i < d->n && n < 8192; i++)
        if (strcmp(d->ents[i].name, name))
            names[n++] = d->ents[i].name;
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], dir);
    call_begin(a);
    struct guestfs_xattr_list *xl = guestfs_lxattrlist(a->g, p, names);
    call_end(a);
    if (!xl) {
        free(names);
        return w_errno(a);
    }
    /* Per file: a header (empty name, count as text), then its attributes. */
    size_t i = 0;
    for (size_t f = 0; f < n && i < xl->len; f++) {
        const struct guestfs_xattr *h = &xl->val[i++];
        if (h->attrname[0] || h->attrval_len > 16)
            break;
        if (h->attrval_len == 0)
            continue;   /* that file's attributes could not be read */
        char num[17];
        memcpy(num, h->attrval, h->attrval_len);
        num[h->attrval_len] = 0;
        char *end;
        unsigned long count = strtoul(num, &end, 10);
        if (*end || count > G_MAX_XATTRS || count > xl->len - i)
            break;
        struct gxattrs *x = xattrs_from(&xl->val[i], count);
        i += count;
        CLEANUP_FREE char *cp = child_path(dir, names[f]);
        if (f == 0)
            j->xattrs = xattrs_copy(x);
        cache_xattrs(a, j->fs, cp, x);
    }
    guestfs_free_xattr_list(xl);
    free(names);
    return j->xattrs ? 0 : -EIO;
}

static int w_xattrs(struct app *a, struct job *j)
{
    int r = w_mount(a, j->fs);
    if (r < 0)
        return r == -ENODEV ? -ENOENT : r;
    if (!strcmp(j->path, "/")) {
        /* The root has no listed parent. */
    } else {
        CLEANUP_FREE char *dir = NULL;
        const char *name;
        split_path(j->path, &dir, &name);
        struct gc_ent *ref;
        struct gdir *d = cached_parent(a, j->fs, dir, &ref);
        if (d) {
            r = xattrs_batch(a, j, dir, name, d);
            gc_release(ref);
            if (r == 0 || r == -ENOENT)
                return r;
        }
    }
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], j->path);
    call_begin(a);
    struct guestfs_xattr_list *xl = guestfs_lgetxattrs(a->g, p);
    call_end(a);
    if (!xl) {
        r = w_errno(a);
        if (r != -ENOTSUP)
            return r;
        j->xattrs = xcalloc(1, sizeof *j->xattrs);   /* no attributes here */
    } else {
        j->xattrs = xattrs_from(xl->val, VMFS_MIN(xl->len, G_MAX_XATTRS));
        guestfs_free_xattr_list(xl);
    }
    cache_xattrs(a, j->fs, j->path, xattrs_copy(j->xattrs));
    return 0;
}

/* ---- extent maps ---- */

static void cache_map(struct app *a, size_t fs, const char *path, struct gmap *m)
{
    struct gc_key k = key(a, fs, GC_MAP, path);
    gc_put(&k, m, sizeof *m + m->n * sizeof *m->e, gmap_free);
}

static void cache_no_map(struct app *a, size_t fs, const char *path)
{
    cache_map(a, fs, path, xcalloc(1, sizeof(struct gmap)));
}

#define MAP_BATCH 1024               /* files mapped in one call */
#define MAP_CMD_MAX (96u << 10)      /* bytes of one shell command */

/* Files to map in one call: paths relative to the filesystem's root. */
struct map_batch {
    char *names[MAP_BATCH];
    uint64_t sizes[MAP_BATCH];
    size_t n;
    size_t cmdlen;
};

static bool batch_add(struct map_batch *b, const char *rel, uint64_t size)
{
    size_t cost = strlen(rel) * 4 + 8;   /* quoted, in the worst case */
    if (b->n == MAP_BATCH || b->cmdlen + cost > MAP_CMD_MAX)
        return false;
    b->names[b->n] = xstrdup(rel);
    b->sizes[b->n++] = size;
    b->cmdlen += cost;
    return true;
}

/* Adds the unmapped regular files of the listed directory dir. */
static void batch_dir(struct app *a, size_t fs, const char *dir, const char *skip,
                      struct map_batch *b)
{
    struct gc_ent *ref;
    struct gdir *d = cached_parent(a, fs, dir, &ref);
    for (size_t i = 0; d && i < d->n; i++) {
        const struct guest_dirent *e = &d->ents[i];
        if (!S_ISREG(e->st.st_mode) || e->st.st_size == 0 || strchr(e->name, '\n'))
            continue;
        CLEANUP_FREE char *cp = child_path(dir, e->name);
        struct gc_key k = key(a, fs, GC_MAP, cp);
        if ((skip && !strcmp(cp, skip)) || gc_has(&k))
            continue;
        if (strchr(dir + 1, '\n') || !batch_add(b, cp + 1, (uint64_t)e->st.st_size))
            break;
    }
    gc_release(ref);
}

/* Runs filefrag on a batch: maps in the same order (NULL: not mapped). */
static int map_batch(struct app *a, struct gfs *f, struct map_batch *b, struct gmap **maps)
{
    char *cmd = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&cmd, &len);
    if (!m)
        abort();
    /* From the filesystem's root, names in the output are ./PATH; a file
     * that filefrag cannot map is only left out. */
    fprintf(m, "cd /sysroot%s && { filefrag -v --", f->mp);
    for (size_t i = 0; i < b->n; i++) {
        CLEANUP_FREE char *arg = xasprintf("./%s", b->names[i]);
        CLEANUP_FREE char *q = g_shell_quote(arg);
        fprintf(m, " %s", q);
    }
    fprintf(m, "; } 2>/dev/null; exit 0");
    fclose(m);
    char *out = debug_sh(a, cmd);
    free(cmd);
    if (!out)
        return guestfs_is_ready(a->g) ? 0 : -EIO;
    struct vview v = {a->t, f->vol};
    g_parse_filefrag(out, b->names, b->n, b->sizes, vview_size(&v), maps);
    free(out);
    return 0;
}

/* Maps j's file (j->off is its size) and, in the same call, the other
 * unmapped regular files of its directory and of the directories listed
 * last: one filefrag run in the appliance for up to MAP_BATCH files. */
static int w_map(struct app *a, struct job *j)
{
    int r = w_mount(a, j->fs);
    if (r < 0)
        return r == -ENODEV ? -ENOENT : r;
    struct gfs *f = &a->fs[j->fs];
    if (!f->direct_checked) {
        f->direct_checked = true;
        check_direct(a, f);
    }
    if (!f->direct || strchr(j->path, '\n') || !strcmp(j->path, "/")) {
        cache_no_map(a, j->fs, j->path);
        return 0;
    }
    CLEANUP_FREE char *dir = NULL;
    const char *name;
    split_path(j->path, &dir, &name);
    struct map_batch *b = xcalloc(1, sizeof *b);
    b->cmdlen = 64 + strlen(f->mp);
    batch_add(b, j->path + 1, j->off);
    batch_dir(a, j->fs, dir, j->path, b);
    for (unsigned k = 1; k <= G_RECENT_DIRS && b->n < MAP_BATCH; k++) {
        const char *other = f->recent[(f->recent_next + G_RECENT_DIRS - k) % G_RECENT_DIRS];
        if (other && strcmp(other, dir))
            batch_dir(a, j->fs, other, NULL, b);
    }
    struct gmap **maps = xcalloc(b->n, sizeof *maps);
    r = map_batch(a, f, b, maps);
    for (size_t i = 0; i < b->n; i++) {
        CLEANUP_FREE char *cp = xasprintf("/%s", b->names[i]);
        if (maps[i])
            cache_map(a, j->fs, cp, maps[i]);
        else if (r == 0)
            cache_no_map(a, j->fs, cp);
        free(b->names[i]);
    }
    free(maps);
    free(b);
    return r;
}

/* ---- file data through the appliance ---- */

static int w_pread(struct app *a, struct job *j)
{
    int r = w_mount(a, j->fs);
    if (r < 0)
        return r == -ENODEV ? -ENOENT : r;
    struct gc_key k = key(a, j->fs, GC_DATA, j->path);
    k.n = j->off / G_CHUNK;
    if (gc_has(&k))
        return 0;   /* read ahead already, or read meanwhile: no j->chunk */
    CLEANUP_FREE char *p = gpath(&a->fs[j->fs], j->path);
    size_t n = 0;
    call_begin(a);
    char *buf = guestfs_pread(a->g, p, (int)j->len, (int64_t)j->off, &n);
    call_end(a);
    if (!buf)
        return w_errno(a);
    if (n > j->len) {
        free(buf);
        return -EIO;
    }
    struct gchunk *c = xmalloc(sizeof *c + n);
    c->len = n;
    memcpy(c->data, buf, n);
    free(buf);
    struct gchunk *copy = xmalloc(sizeof *c + n);
    memcpy(copy, c, sizeof *c + n);
    gc_put(&k, copy, sizeof *c + n, free);
    j->chunk = c;
    return 0;
}

/* ---- facts ---- */

/* Keeps printable characters of a value from the appliance, bounded. */
static char *clean_value(const char *s)
{
    size_t n = strnlen(s, 256);
    char *c = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 32 && s[i] != 127)
            c[k++] = s[i];
    c[k] = 0;
    return c;
}

static void set_facts(struct app *a, struct gfs *f, char *type, char *label, char *uuid)
{
    pthread_mutex_lock(&a->lock);
    if (type && *type) {
        free(f->type);
        f->type = clean_value(type);
    }
    free(f->label);
    f->label = label && *label ? clean_value(label) : NULL;
    free(f->uuid);
    f->uuid = uuid && *uuid ? clean_value(uuid) : NULL;
    f->facts_done = true;
    pthread_mutex_unlock(&a->lock);
    g_facts_store(a, f);
}

/* Type, label and UUID of the next filesystem the appliance has not
 * described yet; queues itself again while others remain, so that
 * requests never wait behind more than one filesystem's worth. */
static int w_facts(struct app *a, struct job *j)
{
    struct gfs *f = NULL;
    for (size_t i = 0; i < a->nfs && !f; i++) {
        struct gfs *c = &a->fs[i];
        if (c->dev && !c->facts_done && !(c->state == GFS_FAILED && !c->type))
            f = c;
    }
    if (!f)
        return 0;
    call_begin(a);
    char *type = guestfs_vfs_type(a->g, f->dev);
    char *label = type && *type ? guestfs_vfs_label(a->g, f->dev) : NULL;
    char *uuid = type && *type ? guestfs_vfs_uuid(a->g, f->dev) : NULL;
    call_end(a);
    /* Answers cut short by the appliance's death are not facts. */
    bool dead = !guestfs_is_ready(a->g);
    if (!dead)
        set_facts(a, f, type, label, uuid);
    free(type);
    free(label);
    free(uuid);
    if (dead)
        return -EIO;
    struct job *next = job_new(J_FACTS, 0, "/");
    app_queue_background(a, next);
    job_put(next);
    return 0;
}

void w_run_job(struct app *a, struct job *j)
{
    switch (j->kind) {
    case J_MOUNT:
        j->err = w_mount(a, j->fs);
        break;
    case J_STAT:
        j->err = w_stat(a, j);
        break;
    case J_READDIR:
        j->err = w_readdir(a, j);
        break;
    case J_LINKS:
        j->err = w_links(a, j);
        break;
    case J_XATTRS:
        j->err = w_xattrs(a, j);
        break;
    case J_MAP:
        j->err = w_map(a, j);
        break;
    case J_PREAD:
        j->err = w_pread(a, j);
        break;
    case J_FACTS:
        j->err = w_facts(a, j);
        break;
    }
}
