/* vmfs — the low-level FUSE operations over an inode table.
 *
 * Every inode is a node: a directory of SOURCE, an image's flat file, its
 * NAME.d/ directory, the info files, the snapshots/ directory.  Nodes are
 * found by (parent, name) and live while the kernel holds a lookup count.
 * Image nodes carry the image's path and snapshot index, never the opened
 * image: that comes from the tree at open and getattr, so a changed file is
 * re-read.  Reads go through the handle's image, with data clusters spliced
 * straight from the image file.  NAME.d/fs/ holds the guest filesystems,
 * served by guest.h: their nodes carry the filesystem's block view name
 * and the path inside it. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fuse/fuse.h"
#include "vmfs/guest.h"
#include "vmfs/image.h"
#include "vmfs/report.h"

enum nkind {
    N_DIR, N_DISK, N_DDIR, N_INFO, N_JSON, N_SNAPS, N_VOL, N_VOLDIR,
    N_FSROOT,      /* NAME.d/fs/ */
    N_FSVDIR,      /* fs/lvm/, fs/lvm/VG/ (sub: "lvm", "lvm/VG") */
    N_FS,          /* inside a filesystem: sub names it, gpath is the path */
};

struct node {
    uint64_t ino, parent;
    char *name;
    enum nkind kind;
    char *path;              /* N_DIR: the directory; else the image file */
    long snap;               /* -1: current state */
    char *sub;               /* N_VOL: volume path ("p1", "lvm/vg/lv");
                                N_VOLDIR: its directory ("lvm", "lvm/vg") */
    char *gpath;             /* N_FS: path inside the filesystem */
    uint64_t nlookup;
    uint64_t served_gen;     /* image generation whose bytes the kernel caches */
    bool hashed;             /* findable by (parent, name) */
    struct node *ino_next, *name_next;
};

static struct vmfs_config cfg;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node **by_ino, **by_name;
static size_t nbuckets = 4096;
static uint64_t next_ino = 2;

/* ---- the inode table ---- */

static size_t name_hash(uint64_t parent, const char *name)
{
    uint64_t h = parent * 0x9e3779b97f4a7c15ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return (size_t)(h % nbuckets);
}

static struct node *find_ino(uint64_t ino)
{
    for (struct node *n = by_ino[ino % nbuckets]; n; n = n->ino_next)
        if (n->ino == ino)
            return n;
    return NULL;
}

static void unhash_name(struct node *n)
{
    if (!n->hashed)
        return;
    struct node **pp = &by_name[name_hash(n->parent, n->name)];
    while (*pp && *pp != n)
        pp = &(*pp)->name_next;
    if (*pp)
        *pp = n->name_next;
    n->hashed = false;
}

static void node_free(struct node *n)
{
    struct node **pp = &by_ino[n->ino % nbuckets];
    while (*pp && *pp != n)
        pp = &(*pp)->ino_next;
    if (*pp)
        *pp = n->ino_next;
    unhash_name(n);
    free(n->name);
    free(n->path);
    free(n->sub);
    free(n->gpath);
    free(n);
}

/* Copies what a node is, so operations can run without the table lock. */
struct nodeinfo {
    uint64_t ino;
    enum nkind kind;
    char *path;
    long snap;
    char *sub;
    char *gpath;
};

static void ni_free(struct nodeinfo *ni)
{
    free(ni->path);
    free(ni->sub);
    free(ni->gpath);
}

static bool same_sub(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static bool get_node(uint64_t ino, struct nodeinfo *ni)
{
    pthread_mutex_lock(&table_lock);
    struct node *n = find_ino(ino);
    if (n) {
        ni->ino = ino;
        ni->kind = n->kind;
        ni->path = xstrdup(n->path);
        ni->snap = n->snap;
        ni->sub = n->sub ? xstrdup(n->sub) : NULL;
        ni->gpath = n->gpath ? xstrdup(n->gpath) : NULL;
    }
    pthread_mutex_unlock(&table_lock);
    return n != NULL;
}

/* The node for (parent, name) of this kind, created or re-used; its lookup
 * count goes up by one.  Returns its inode number. */
static uint64_t intern(uint64_t parent, const char *name, const struct nodeinfo *c)
{
    enum nkind kind = c->kind;
    const char *path = c->path;
    long snap = c->snap;
    pthread_mutex_lock(&table_lock);
    size_t b = name_hash(parent, name);
    struct node *n;
    for (n = by_name[b]; n; n = n->name_next)
        if (n->parent == parent && !strcmp(n->name, name))
            break;
    if (n && (n->kind != kind || n->snap != snap || strcmp(n->path, path) ||
              !same_sub(n->sub, c->sub) || !same_sub(n->gpath, c->gpath))) {
        unhash_name(n);       /* it is something else now: a new inode */
        n = NULL;
    }
    if (!n) {
        n = xcalloc(1, sizeof *n);
        n->ino = next_ino++;
        n->parent = parent;
        n->name = xstrdup(name);
        n->kind = kind;
        n->path = xstrdup(path);
        n->snap = snap;
        n->sub = c->sub ? xstrdup(c->sub) : NULL;
        n->gpath = c->gpath ? xstrdup(c->gpath) : NULL;
        n->hashed = true;
        n->name_next = by_name[b];
        by_name[b] = n;
        n->ino_next = by_ino[n->ino % nbuckets];
        by_ino[n->ino % nbuckets] = n;
    }
    n->nlookup++;
    uint64_t ino = n->ino;
    pthread_mutex_unlock(&table_lock);
    return ino;
}

static void forget_one(uint64_t ino, uint64_t nlookup)
{
    if (ino == FUSE_ROOT_ID)
        return;
    pthread_mutex_lock(&table_lock);
    struct node *n = find_ino(ino);
    if (n) {
        n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
        if (n->nlookup == 0)
            node_free(n);
    }
    pthread_mutex_unlock(&table_lock);
}

/* ---- what a node is ---- */

static bool ends_with_d(const char *name)
{
    size_t n = strlen(name);
    return n > 2 && !strcmp(name + n - 2, ".d");
}

/* name without its ".d". */
static char *xstrndup_name(const char *name)
{
    char *s = xstrdup(name);
    s[strlen(s) - 2] = 0;
    return s;
}

static bool is_dir_kind(enum nkind k)
{
    return k == N_DIR || k == N_DDIR || k == N_SNAPS || k == N_VOLDIR || k == N_FSROOT ||
           k == N_FSVDIR;
}

/* The volume a node stands for: its index in the layout, or -1. */
static long vol_index(struct timg *t, const char *sub)
{
    const struct vlayout *lay = sub ? tree_layout(t) : NULL;
    for (size_t i = 0; lay && i < lay->nvols; i++)
        if (!strcmp(lay->vols[i].path, sub))
            return (long)i;
    return -1;
}

/* Whether a volume directory (prefix, "" for NAME.d itself) has a child
 * called name: *is_dir tells a directory from a volume. */
static bool vol_child(const struct vlayout *lay, const char *prefix, const char *name,
                      bool *is_dir, long *index)
{
    size_t pl = strlen(prefix);
    size_t nl = strlen(name);
    for (size_t i = 0; lay && i < lay->nvols; i++) {
        const char *p = lay->vols[i].path;
        if (pl && (strncmp(p, prefix, pl) || p[pl] != '/'))
            continue;
        const char *rest = pl ? p + pl + 1 : p;
        if (strncmp(rest, name, nl) || (rest[nl] && rest[nl] != '/'))
            continue;
        *is_dir = rest[nl] == '/';
        *index = (long)i;
        return true;
    }
    return false;
}

/* Adds the children of a volume directory to a listing, each name once. */
struct dirlist;
static void dl_add(struct dirlist *d, const char *name, mode_t type);
static bool dl_has(const struct dirlist *d, const char *name);

static void list_vols(const struct vlayout *lay, const char *prefix, struct dirlist *d)
{
    size_t pl = strlen(prefix);
    for (size_t i = 0; lay && i < lay->nvols; i++) {
        const char *p = lay->vols[i].path;
        if (pl && (strncmp(p, prefix, pl) || p[pl] != '/'))
            continue;
        const char *rest = pl ? p + pl + 1 : p;
        const char *slash = strchr(rest, '/');
        char *name = slash ? strndup(rest, (size_t)(slash - rest)) : xstrdup(rest);
        if (!name)
            abort();
        if (!dl_has(d, name))
            dl_add(d, name, slash ? S_IFDIR : S_IFREG);
        free(name);
    }
}

/* The filesystems fs/ shows: every partition and LV by its block view
 * name, and "disk" when the disk has neither but something was found on it
 * (a filesystem on the whole disk).  Listed from the layout, without
 * starting an appliance; fs/ itself is there when it has an entry. */
static bool whole_disk_fs(const struct vlayout *lay)
{
    return lay && lay->nvols == 0 && rep_str(rep_get(lay->facts, "disk_content"));
}

static bool has_fs_dir(const struct vlayout *lay)
{
    return lay && (lay->nvols > 0 || whole_disk_fs(lay));
}

static bool has_fs_view(const struct vlayout *lay, const char *name)
{
    if (!strcmp(name, "disk"))
        return whole_disk_fs(lay);
    for (size_t i = 0; lay && i < lay->nvols; i++)
        if (!strcmp(lay->vols[i].path, name))
            return true;
    return false;
}

static void list_fs_root(const struct vlayout *lay, struct dirlist *d)
{
    if (whole_disk_fs(lay))
        dl_add(d, "disk", S_IFDIR);
    list_vols(lay, "", d);
}

/* A guest file's attributes as the mount shows them: the guest's own,
 * with our inode number.  An unmountable filesystem's root is an empty
 * directory. */
static int fs_attr(struct timg *t, const struct nodeinfo *n, struct stat *st,
                   const struct stat *src)
{
    int r = guest_stat(t, n->sub, n->gpath, st);
    if (r == -ENODEV && !strcmp(n->gpath, "/")) {
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        st->st_uid = src->st_uid;
        st->st_gid = src->st_gid;
        st->st_mtim = src->st_mtim;
        st->st_ctim = src->st_ctim;
        st->st_atim = src->st_atim;
        return 0;
    }
    return r;
}

static char *join_gpath(const char *dir, const char *name)
{
    return xasprintf("%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", name);
}

/* Attributes of a node. */
static int node_attr(uint64_t ino, const struct nodeinfo *n, struct stat *st)
{
    struct stat src;
    if (tree_stat(n->path, &src) < 0)
        return -errno;
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = src.st_uid;
    st->st_gid = src.st_gid;
    st->st_atim = src.st_atim;
    st->st_mtim = src.st_mtim;
    st->st_ctim = src.st_ctim;
    st->st_blksize = 4096;
    if (n->kind == N_DIR) {
        if (!S_ISDIR(src.st_mode) && !tree_options()->single_file)
            return -ENOENT;
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        return 0;
    }
    struct timg *t = tree_get(n->path, n->kind == N_SNAPS ? -1 : n->snap);
    if (!t)
        return -ENOENT;
    int r = 0;
    if (n->kind == N_FS) {
        r = fs_attr(t, n, st, &src);
        st->st_ino = ino;
    } else if (is_dir_kind(n->kind)) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
    } else if (n->kind == N_DISK || n->kind == N_VOL) {
        struct vview v = {.t = t, .vol = -1};
        if (n->kind == N_VOL && (v.vol = vol_index(t, n->sub)) < 0)
            r = -ENOENT;
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        if (r == 0) {
            st->st_size = (off_t)vview_size(&v);
            st->st_blocks = (blkcnt_t)((vview_allocated(&v) + 511) / 512);
        }
        const struct vsnap *s = t->snap >= 0 ? vimage_snapshot(t->img, (size_t)t->snap) : NULL;
        if (s) {
            st->st_mtim.tv_sec = s->date_sec;
            st->st_mtim.tv_nsec = s->date_nsec;
        }
    } else {
        size_t len = tree_report_size(t, n->kind == N_JSON);
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)len;
        st->st_blocks = (blkcnt_t)((len + 511) / 512);
    }
    tree_put(t);
    return r;
}

/* Decides what name is inside node p: fills c (kind, path, snap, sub) or
 * returns a negative errno. */
static int child_of(const struct nodeinfo *p, const char *name, struct nodeinfo *c)
{
    memset(c, 0, sizeof *c);
    c->snap = -1;
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return -ENOENT;
    if (p->kind == N_DIR) {
        const struct tree_opts *to = tree_options();
        if (to->single_file) {
            const char *base = to->single_name;
            size_t bl = strlen(base);
            if (!strcmp(name, base))
                c->kind = N_DISK;
            else if (ends_with_d(name) && strlen(name) == bl + 2 && !strncmp(name, base, bl))
                c->kind = N_DDIR;
            else
                return -ENOENT;
            c->path = xstrdup(to->source);
            return 0;
        }
        char *full = xasprintf("%s/%s", p->path, name);
        struct stat st;
        if (stat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode) ||
                (tree_is_image(full, &st) && !tree_is_hidden(p->path, name))) {
                c->kind = S_ISDIR(st.st_mode) ? N_DIR : N_DISK;
                c->path = full;
                return 0;
            }
        }
        if (ends_with_d(name)) {
            full[strlen(full) - 2] = 0;
            char *stem = xstrndup_name(name);
            bool hidden = tree_is_hidden(p->path, stem);
            free(stem);
            if (!hidden && stat(full, &st) == 0 && !S_ISDIR(st.st_mode) &&
                tree_is_image(full, &st)) {
                c->kind = N_DDIR;
                c->path = full;
                return 0;
            }
        }
        free(full);
        return -ENOENT;
    }
    if (p->kind == N_SNAPS) {
        struct timg *t = tree_get(p->path, -1);
        if (!t)
            return -ENOENT;
        long i = tree_snapshot_find(t->img, name);
        c->kind = N_DISK;
        if (i < 0 && ends_with_d(name)) {
            char *stem = xstrdup(name);
            stem[strlen(stem) - 2] = 0;
            i = tree_snapshot_find(t->img, stem);
            free(stem);
            c->kind = N_DDIR;
        }
        tree_put(t);
        if (i < 0)
            return -ENOENT;
        c->snap = i;
        c->path = xstrdup(p->path);
        return 0;
    }
    if (p->kind == N_FS) {
        if (strlen(p->gpath) + strlen(name) > 4000)
            return -ENAMETOOLONG;
        c->kind = N_FS;
        c->snap = p->snap;
        c->path = xstrdup(p->path);
        c->sub = xstrdup(p->sub);
        c->gpath = join_gpath(p->gpath, name);
        return 0;
    }
    if (p->kind != N_DDIR && p->kind != N_VOLDIR && p->kind != N_FSROOT && p->kind != N_FSVDIR)
        return -ENOTDIR;
    struct timg *t = tree_get(p->path, p->snap);
    if (!t)
        return -ENOENT;
    int r = 0;
    c->snap = p->snap;
    bool is_dir;
    long idx;
    if (p->kind == N_DDIR && !strcmp(name, "info")) {
        c->kind = N_INFO;
    } else if (p->kind == N_DDIR && !strcmp(name, "info.json")) {
        c->kind = N_JSON;
    } else if (p->kind == N_DDIR && !strcmp(name, "fs")) {
        c->kind = N_FSROOT;
        if (t->img->top_failed || !has_fs_dir(tree_layout(t)))
            r = -ENOENT;
    } else if (p->kind == N_FSROOT && has_fs_view(tree_layout(t), name) &&
               !strchr(name, '/')) {
        c->kind = N_FS;
        c->sub = xstrdup(name);
        c->gpath = xstrdup("/");
    } else if (p->kind == N_FSROOT || p->kind == N_FSVDIR) {
        if (vol_child(tree_layout(t), p->sub ? p->sub : "", name, &is_dir, &idx)) {
            c->sub = p->sub ? xasprintf("%s/%s", p->sub, name) : xstrdup(name);
            c->kind = is_dir ? N_FSVDIR : N_FS;
            if (!is_dir)
                c->gpath = xstrdup("/");
        } else {
            r = -ENOENT;
        }
    } else if (p->kind == N_DDIR && !strcmp(name, "snapshots")) {
        c->kind = N_SNAPS;
        if (p->snap >= 0 || vimage_snapshot_count(t->img) == 0)
            r = -ENOENT;
    } else if (vol_child(tree_layout(t), p->sub ? p->sub : "", name, &is_dir, &idx)) {
        c->kind = is_dir ? N_VOLDIR : N_VOL;
        c->sub = p->sub ? xasprintf("%s/%s", p->sub, name) : xstrdup(name);
    } else {
        r = -ENOENT;
    }
    tree_put(t);
    if (r == 0)
        c->path = xstrdup(p->path);
    return r;
}

/* ---- operations ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    /* Replies are spliced from the image file, but its pages are never
     * given away: they belong to the host's page cache, and the kernel
     * logs a page dump for every such page it is asked to steal. */
    if (conn->capable & FUSE_CAP_SPLICE_WRITE)
        conn->want |= FUSE_CAP_SPLICE_WRITE;
    conn->want &= ~(unsigned)FUSE_CAP_SPLICE_MOVE;
    conn->want &= ~(unsigned)FUSE_CAP_SPLICE_READ;
    conn->max_read = cfg.max_read;   /* must match the mount option */
    /* The kernel stops reading ahead once congestion_threshold requests
     * are queued (12 and 9 by default: 4.5 MiB of 512 KiB requests); a
     * deeper queue keeps every thread decoding compressed clusters. */
    conn->max_background = 32;
    conn->congestion_threshold = 24;
}

/* Looks name up in parent p and fills e; the child's lookup count goes up
 * by one on success. */
static int do_lookup(uint64_t parent, const struct nodeinfo *p, const char *name,
                     struct fuse_entry_param *e)
{
    struct nodeinfo c;
    memset(e, 0, sizeof *e);
    int r = child_of(p, name, &c);
    if (r == 0)
        r = node_attr(0, &c, &e->attr);
    if (r == 0) {
        e->ino = intern(parent, name, &c);
        e->attr.st_ino = e->ino;
        e->attr_timeout = cfg.attr_timeout;
        e->entry_timeout = cfg.attr_timeout;
    }
    ni_free(&c);
    return r;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct nodeinfo p;
    if (!get_node(parent, &p)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param e;
    int r = do_lookup(parent, &p, name, &e);
    ni_free(&p);
    if (r < 0)
        fuse_reply_err(req, -r);
    else if (fuse_reply_entry(req, &e) != 0)
        forget_one(e.ino, 1);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    forget_one(ino, nlookup);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *list)
{
    for (size_t i = 0; i < count; i++)
        forget_one(list[i].ino, list[i].nlookup);
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct nodeinfo n;
    if (!get_node(ino, &n)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    int r = node_attr(ino, &n, &st);
    ni_free(&n);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_attr(req, &st, cfg.attr_timeout);
}

/* An open file: the view it reads (or the report it shows), holding the
 * image for the handle's life. */
/* Every open file and directory is on a list until its release: the
 * kernel drops releases still queued when the mount goes away, and the
 * daemon frees what is left when it stops. */
struct opened {
    struct opened *prev, *next;
    void (*free)(struct opened *o);
};
static struct opened open_list = {&open_list, &open_list, NULL};
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;

static void opened_add(struct opened *o, void (*free_fn)(struct opened *o))
{
    o->free = free_fn;
    pthread_mutex_lock(&open_lock);
    o->next = open_list.next;
    o->prev = &open_list;
    open_list.next->prev = o;
    open_list.next = o;
    pthread_mutex_unlock(&open_lock);
}

static void opened_del(struct opened *o)
{
    pthread_mutex_lock(&open_lock);
    o->prev->next = o->next;
    o->next->prev = o->prev;
    pthread_mutex_unlock(&open_lock);
}

struct handle {
    struct opened link;      /* first: the list's entry is the handle */
    enum nkind kind;
    struct vview view;
    char *fs, *gpath;        /* N_FS */
};

static void handle_free(struct opened *o)
{
    struct handle *h = (struct handle *)o;
    tree_put(h->view.t);
    free(h->fs);
    free(h->gpath);
    free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    struct nodeinfo n;
    if (!get_node(ino, &n)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (is_dir_kind(n.kind)) {
        ni_free(&n);
        fuse_reply_err(req, EISDIR);
        return;
    }
    struct timg *t = tree_get(n.path, n.snap);
    long vol = -1;
    if (t && n.kind == N_VOL && (vol = vol_index(t, n.sub)) < 0) {
        tree_put(t);
        t = NULL;
    }
    enum nkind kind = n.kind;
    if (!t) {
        ni_free(&n);
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct handle *h = xcalloc(1, sizeof *h);
    h->kind = kind;
    h->view.t = t;
    h->view.vol = vol;
    if (kind == N_FS) {
        h->fs = n.sub;
        h->gpath = n.gpath;
        n.sub = n.gpath = NULL;
    }
    ni_free(&n);
    fi->fh = (uint64_t)(uintptr_t)h;
    /* The kernel may keep cached pages only while they are of this very
     * opening of the image. */
    pthread_mutex_lock(&table_lock);
    struct node *nd = find_ino(ino);
    fi->keep_cache = nd && nd->served_gen == t->gen;
    if (nd)
        nd->served_gen = t->gen;
    pthread_mutex_unlock(&table_lock);
    if ((kind == N_DISK || kind == N_VOL) && cfg.direct_io)
        fi->direct_io = 1;
    else if (kind == N_DISK || kind == N_VOL)
        vmfs_ra_open(&h->view);
    /* A report is made anew when its image changes and its size with it:
     * reads must not stop at a size the kernel remembers. */
    if (kind == N_INFO || kind == N_JSON)
        fi->direct_io = 1;
    opened_add(&h->link, handle_free);
    if (fuse_reply_open(req, fi) != 0) {
        opened_del(&h->link);
        handle_free(&h->link);
    }
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    opened_del(&h->link);
    handle_free(&h->link);
    fuse_reply_err(req, 0);
}

#define SMALL_READ (32 * 1024)

bool vmfs_ops_serving(fuse_ino_t ino, uint64_t gen)
{
    pthread_mutex_lock(&table_lock);
    struct node *nd = find_ino(ino);
    bool same = nd && nd->served_gen == gen;
    pthread_mutex_unlock(&table_lock);
    return same;
}

/* fill: the rest of a unit decoded for a small read may go to the page
 * cache (a reader of the page cache, not one that reads around it). */
static void read_view(fuse_req_t req, fuse_ino_t ino, const struct vview *v, size_t size,
                      off_t off, bool fill)
{
    uint64_t vsize = vview_size(v);
    if ((uint64_t)off >= vsize) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    size = (size_t)VMFS_MIN((uint64_t)size, vsize - (uint64_t)off);
    if (size <= SMALL_READ) {
        /* Small reads: one copy and one reply beat the splice dance. */
        char buf[SMALL_READ];
        struct vunit unit;
        int r = vview_read_unit(v, buf, size, (uint64_t)off, &unit);
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        struct vmfs_fill_job job;
        fill = fill && vmfs_fill_prepare(&job, ino, v, &unit, (uint64_t)off, size);
        fuse_reply_buf(req, buf, size);
        if (fill)
            vmfs_fill_queue(&job);
        return;
    }
    struct vplan plan = VPLAN_INIT;
    int r = vview_plan(v, (uint64_t)off, size, &plan);
    if (r < 0) {
        vplan_free(&plan);
        fuse_reply_err(req, -r);
        return;
    }
    bool files = false;
    for (size_t i = 0; i < plan.nsegs && !files; i++)
        files = plan.segs[i].fd >= 0;
    if (!files) {
        /* Only memory (decoded, zeros, NBD): one writev, no pipe. */
        struct iovec *iov = xcalloc(plan.nsegs + 1, sizeof *iov);
        for (size_t i = 0; i < plan.nsegs; i++)
            iov[i] = (struct iovec){plan.segs[i].mem, plan.segs[i].len};
        fuse_reply_iov(req, iov, (int)plan.nsegs);
        free(iov);
        vplan_free(&plan);
        return;
    }
    struct fuse_bufvec *bv = xcalloc(1, sizeof *bv + plan.nsegs * sizeof bv->buf[0]);
    bv->count = plan.nsegs;
    for (size_t i = 0; i < plan.nsegs; i++) {
        struct fuse_buf *b = &bv->buf[i];
        b->size = plan.segs[i].len;
        if (plan.segs[i].fd >= 0) {
            b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY;
            b->fd = plan.segs[i].fd;
            b->pos = (off_t)plan.segs[i].fd_off;
        } else {
            b->mem = plan.segs[i].mem;
        }
    }
    fuse_reply_data(req, bv, 0);
    free(bv);
    vplan_free(&plan);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    if (h->kind == N_DISK || h->kind == N_VOL) {
        read_view(req, ino, &h->view, size, off, !cfg.direct_io && !(fi->flags & O_DIRECT));
        return;
    }
    if (h->kind == N_FS) {
        char *buf = xmalloc(size);
        ssize_t n = guest_read(h->view.t, h->fs, h->gpath, buf, size, (uint64_t)off);
        if (n < 0)
            fuse_reply_err(req, (int)-n);
        else
            fuse_reply_buf(req, buf, (size_t)n);
        free(buf);
        return;
    }
    char *buf = xmalloc(size ? size : 1);
    size_t n = tree_report_read(h->view.t, h->kind == N_JSON, buf, size, (uint64_t)off);
    fuse_reply_buf(req, buf, n);
    free(buf);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if (h->kind == N_FS) {
        fuse_reply_err(req, EINVAL);     /* no hole information from guests */
        return;
    }
    bool is_view = h->kind == N_DISK || h->kind == N_VOL;
    uint64_t size;
    if (is_view) {
        size = vview_size(&h->view);
    } else {
        size = tree_report_size(h->view.t, h->kind == N_JSON);
    }
    if (off < 0 || (uint64_t)off >= size) {
        fuse_reply_err(req, ENXIO);
        return;
    }
    if (!is_view) {
        fuse_reply_lseek(req, whence == SEEK_DATA ? off : (off_t)size);
        return;
    }
    uint64_t pos = (uint64_t)off;
    while (pos < size) {
        bool data;
        uint64_t len;
        int r = vview_extent(&h->view, pos, &data, &len);
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        if (data == (whence == SEEK_DATA)) {
            fuse_reply_lseek(req, (off_t)pos);
            return;
        }
        pos += len;
    }
    if (whence == SEEK_HOLE)
        fuse_reply_lseek(req, (off_t)size);
    else
        fuse_reply_err(req, ENXIO);
}

/* The image behind a guest file node, with the node in *n; NULL with *err
 * (0: not a guest file) and nothing to free otherwise. */
static struct timg *fs_node(fuse_ino_t ino, struct nodeinfo *n, int *err)
{
    if (!get_node(ino, n)) {
        *err = ENOENT;
        return NULL;
    }
    struct timg *t = n->kind == N_FS ? tree_get(n->path, n->snap) : NULL;
    if (!t) {
        *err = n->kind == N_FS ? ENOENT : 0;
        ni_free(n);
    }
    return t;
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct nodeinfo n;
    int err;
    struct timg *t = fs_node(ino, &n, &err);
    if (!t) {
        fuse_reply_err(req, err ? err : EINVAL);
        return;
    }
    char *target = NULL;
    int r = guest_readlink(t, n.sub, n.gpath, &target);
    tree_put(t);
    ni_free(&n);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_readlink(req, target);
    free(target);
}

static void reply_xattr(fuse_req_t req, size_t size, ssize_t r, const char *buf)
{
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else if (size == 0)
        fuse_reply_xattr(req, (size_t)r);
    else if ((size_t)r > size)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, buf, (size_t)r);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct nodeinfo n;
    int err;
    struct timg *t = fs_node(ino, &n, &err);
    if (!t) {
        if (err)
            fuse_reply_err(req, err);
        else if (size)
            fuse_reply_buf(req, NULL, 0);
        else
            fuse_reply_xattr(req, 0);
        return;
    }
    char *buf = size ? xmalloc(size) : NULL;
    ssize_t r = guest_listxattr(t, n.sub, n.gpath, buf, size);
    tree_put(t);
    ni_free(&n);
    reply_xattr(req, size, r, buf);
    free(buf);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct nodeinfo n;
    int err;
    struct timg *t = fs_node(ino, &n, &err);
    if (!t) {
        fuse_reply_err(req, err ? err : ENODATA);
        return;
    }
    char *buf = size ? xmalloc(size) : NULL;
    ssize_t r = guest_getxattr(t, n.sub, n.gpath, name, buf, size);
    tree_put(t);
    ni_free(&n);
    reply_xattr(req, size, r, buf);
    free(buf);
}

/* ---- directories ---- */

struct dentry {
    char *name;
    mode_t type;
    struct stat st;          /* N_FS listings: the entry's attributes */
    bool has_st;
};

struct dirlist {
    struct opened link;      /* first, as in struct handle */
    struct dentry *e;
    size_t n, cap;
};

static void dl_add(struct dirlist *d, const char *name, mode_t type)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->e = xrealloc(d->e, d->cap * sizeof *d->e);
    }
    d->e[d->n].name = xstrdup(name);
    d->e[d->n].type = type;
    d->e[d->n].has_st = false;
    d->n++;
}

static bool dl_has(const struct dirlist *d, const char *name)
{
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->e[i].name, name))
            return true;
    return false;
}

static void dl_free(struct dirlist *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->e[i].name);
    free(d->e);
    free(d);
}

static void dl_free_opened(struct opened *o) { dl_free((struct dirlist *)o); }

static int list_srcdir(const char *path, struct dirlist *d)
{
    const struct tree_opts *to = tree_options();
    if (to->single_file) {
        const char *base = to->single_name;
        dl_add(d, base, S_IFREG);
        char *dn = xasprintf("%s.d", base);
        dl_add(d, dn, S_IFDIR);
        free(dn);
        return 0;
    }
    DIR *dir = opendir(path);
    if (!dir)
        return -errno;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *full = xasprintf("%s/%s", path, de->d_name);
        struct stat st;
        if (stat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                dl_add(d, de->d_name, S_IFDIR);
            } else if (tree_is_image(full, &st) && !tree_is_hidden(path, de->d_name)) {
                dl_add(d, de->d_name, S_IFREG);
                char *dn = xasprintf("%s.d", de->d_name);
                dl_add(d, dn, S_IFDIR);
                free(dn);
            }
        }
        free(full);
    }
    closedir(dir);
    return 0;
}

static int list_node(const struct nodeinfo *n, struct dirlist *d)
{
    dl_add(d, ".", S_IFDIR);
    dl_add(d, "..", S_IFDIR);
    if (n->kind == N_DIR)
        return list_srcdir(n->path, d);
    struct timg *t = tree_get(n->path, n->kind == N_SNAPS ? -1 : n->snap);
    if (!t)
        return -ENOENT;
    int r = 0;
    if (n->kind == N_FS) {
        struct guest_dirent *ents = NULL;
        size_t cnt = 0;
        r = guest_readdir(t, n->sub, n->gpath, &ents, &cnt);
        if (r == -ENODEV && !strcmp(n->gpath, "/"))
            r = 0;                       /* unmountable: an empty directory */
        for (size_t i = 0; r == 0 && i < cnt; i++) {
            if (!strcmp(ents[i].name, ".") || !strcmp(ents[i].name, "..") ||
                strchr(ents[i].name, '/') || !ents[i].name[0])
                continue;                /* never trust the guest's names */
            dl_add(d, ents[i].name, ents[i].st.st_mode & S_IFMT);
            d->e[d->n - 1].st = ents[i].st;
            d->e[d->n - 1].has_st = true;
        }
        guest_dirents_free(ents, cnt);
    } else if (n->kind == N_FSROOT) {
        list_fs_root(tree_layout(t), d);
        for (size_t i = 0; i < d->n; i++)
            d->e[i].type = S_IFDIR;
    } else if (n->kind == N_FSVDIR) {
        list_vols(tree_layout(t), n->sub, d);
        for (size_t i = 0; i < d->n; i++)
            d->e[i].type = S_IFDIR;
    } else if (n->kind == N_DDIR) {
        dl_add(d, "info", S_IFREG);
        dl_add(d, "info.json", S_IFREG);
        list_vols(tree_layout(t), "", d);
        if (!t->img->top_failed && has_fs_dir(tree_layout(t)))
            dl_add(d, "fs", S_IFDIR);
        if (n->snap < 0 && vimage_snapshot_count(t->img) > 0)
            dl_add(d, "snapshots", S_IFDIR);
    } else if (n->kind == N_VOLDIR) {
        list_vols(tree_layout(t), n->sub, d);
    } else if (n->kind == N_SNAPS) {
        size_t cnt = vimage_snapshot_count(t->img);
        for (size_t i = 0; i < cnt; i++) {
            char *name = tree_snapshot_name(t->img, i);
            char *dn = xasprintf("%s.d", name);
            dl_add(d, name, S_IFREG);
            dl_add(d, dn, S_IFDIR);
            free(name);
            free(dn);
        }
    }
    tree_put(t);
    return r;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct nodeinfo n;
    if (!get_node(ino, &n)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (!is_dir_kind(n.kind) && n.kind != N_FS) {
        ni_free(&n);
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    struct dirlist *d = xcalloc(1, sizeof *d);
    int r = list_node(&n, d);
    ni_free(&n);
    if (r < 0) {
        dl_free(d);
        fuse_reply_err(req, -r);
        return;
    }
    fi->fh = (uint64_t)(uintptr_t)d;
    opened_add(&d->link, dl_free_opened);
    if (fuse_reply_open(req, fi) != 0) {
        opened_del(&d->link);
        dl_free(d);
    }
}

/* d_ino 0 entries are skipped by readdir(3): each gets a number (advisory:
 * lookup assigns the real inode). */
static ino_t dir_ino(uint64_t parent, const char *name)
{
    return (ino_t)(name_hash(parent, name) + 2);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    struct dirlist *d = (struct dirlist *)(uintptr_t)fi->fh;
    char *buf = xmalloc(size);
    size_t used = 0;
    for (size_t i = (size_t)off; i < d->n; i++) {
        struct stat st = {.st_ino = dir_ino(ino, d->e[i].name), .st_mode = d->e[i].type};
        size_t need = fuse_add_direntry(req, buf + used, size - used, d->e[i].name, &st,
                                        (off_t)(i + 1));
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

/* readdir with attributes: one round trip lists a directory for ls -l.
 * Each entry but . and .. is looked up (its lookup count goes up) only
 * when it fits in the reply. */
static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    struct dirlist *d = (struct dirlist *)(uintptr_t)fi->fh;
    struct nodeinfo p;
    if (!get_node(ino, &p)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    char *buf = xmalloc(size);
    size_t used = 0;
    for (size_t i = (size_t)off; i < d->n; i++) {
        const char *name = d->e[i].name;
        struct fuse_entry_param e;
        bool dot = !strcmp(name, ".") || !strcmp(name, "..");
        if (dot) {
            memset(&e, 0, sizeof e);
            e.attr.st_ino = dir_ino(ino, name);
            e.attr.st_mode = d->e[i].type;
        } else if (d->e[i].has_st && p.kind == N_FS) {
            /* The listing brought the attributes: no round trip each. */
            struct nodeinfo c = {.kind = N_FS, .path = p.path, .snap = p.snap, .sub = p.sub};
            c.gpath = join_gpath(p.gpath, name);
            memset(&e, 0, sizeof e);
            e.attr = d->e[i].st;
            e.ino = intern(ino, name, &c);
            e.attr.st_ino = e.ino;
            e.attr_timeout = cfg.attr_timeout;
            e.entry_timeout = cfg.attr_timeout;
            free(c.gpath);
        } else if (do_lookup(ino, &p, name, &e) < 0) {
            continue;             /* gone since opendir */
        }
        size_t need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e,
                                             (off_t)(i + 1));
        if (need > size - used) {
            if (!dot)
                forget_one(e.ino, 1);
            break;
        }
        used += need;
    }
    ni_free(&p);
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dirlist *d = (struct dirlist *)(uintptr_t)fi->fh;
    opened_del(&d->link);
    dl_free(d);
    fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct statvfs sv;
    memset(&sv, 0, sizeof sv);
    if (statvfs(tree_options()->source, &sv) < 0)
        memset(&sv, 0, sizeof sv);
    sv.f_bfree = sv.f_bavail = 0;
    sv.f_ffree = sv.f_favail = 0;
    sv.f_namemax = 255;
    sv.f_flag |= ST_RDONLY;
    fuse_reply_statfs(req, &sv);
}

/* ---- everything that would write ---- */

static void erofs(fuse_req_t req) { fuse_reply_err(req, EROFS); }

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    erofs(req);
}
static void op_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t r) { erofs(req); }
static void op_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) { erofs(req); }
static void op_unlink(fuse_req_t req, fuse_ino_t p, const char *n) { erofs(req); }
static void op_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) { erofs(req); }
static void op_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np,
                      const char *nn, unsigned int flags)
{
    erofs(req);
}
static void op_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t np, const char *nn) { erofs(req); }
static void op_write(fuse_req_t req, fuse_ino_t i, const char *b, size_t s, off_t o,
                     struct fuse_file_info *fi)
{
    erofs(req);
}
static void op_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m,
                      struct fuse_file_info *fi)
{
    erofs(req);
}
static void op_fallocate(fuse_req_t req, fuse_ino_t i, int mode, off_t o, off_t l,
                         struct fuse_file_info *fi)
{
    erofs(req);
}
static void op_setxattr(fuse_req_t req, fuse_ino_t i, const char *n, const char *v,
                        size_t s, int f)
{
    erofs(req);
}
static void op_removexattr(fuse_req_t req, fuse_ino_t i, const char *n) { erofs(req); }

const struct fuse_lowlevel_ops vmfs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .open = op_open,
    .read = op_read,
    .release = op_release,
    .lseek = op_lseek,
    .readlink = op_readlink,
    .listxattr = op_listxattr,
    .getxattr = op_getxattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .setattr = op_setattr,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_unlink,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .write = op_write,
    .create = op_create,
    .fallocate = op_fallocate,
    .setxattr = op_setxattr,
    .removexattr = op_removexattr,
};

void vmfs_ops_init(const struct vmfs_config *c)
{
    cfg = *c;
    by_ino = xcalloc(nbuckets, sizeof *by_ino);
    by_name = xcalloc(nbuckets, sizeof *by_name);
    const struct tree_opts *to = tree_options();
    struct node *root = xcalloc(1, sizeof *root);
    root->ino = FUSE_ROOT_ID;
    root->name = xstrdup("/");
    root->kind = N_DIR;
    root->path = xstrdup(to->source);
    root->snap = -1;
    root->nlookup = 1;
    by_ino[root->ino % nbuckets] = root;
}

void vmfs_ops_shutdown(void)
{
    /* Opens whose release the kernel dropped at unmount. */
    while (open_list.next != &open_list) {
        struct opened *o = open_list.next;
        opened_del(o);
        o->free(o);
    }
    for (size_t i = 0; i < nbuckets; i++) {
        struct node *n = by_ino[i];
        while (n) {
            struct node *next = n->ino_next;
            free(n->name);
            free(n->path);
            free(n->sub);
            free(n->gpath);
            free(n);
            n = next;
        }
    }
    free(by_ino);
    free(by_name);
}
