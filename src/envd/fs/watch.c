/* inotify watches of a directory or a whole tree, translated to FilesystemEvents with fsnotify's
 * semantics (what E2B's envd is built on): IN_CREATE/IN_MOVED_TO → CREATE, IN_MODIFY → WRITE,
 * IN_DELETE/IN_DELETE_SELF → REMOVE, IN_MOVED_FROM/IN_MOVE_SELF → RENAME, IN_ATTRIB → CHMOD. */
#include "internal.h"
#include "xalloc.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define WATCH_MASK                                                                                 \
    (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_MODIFY | IN_ATTRIB | IN_DELETE |                 \
     IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#define READ_BUF (64 * 1024)

/* Filesystems inotify cannot see remote changes on (linux/magic.h). */
#define NFS_SUPER_MAGIC   0x6969
#define CIFS_MAGIC        0xFF534D42
#define SMB_SUPER_MAGIC   0x517B
#define SMB2_MAGIC_NUMBER 0xFE534D42
#define FUSE_SUPER_MAGIC  0x65735546

struct fs__watch {
    int fd;
    bool recursive;
    char *root;
    /* Watch descriptors and the directory each one watches, relative to root ("" for root).
     * Sorted by wd: the kernel hands them out in increasing order. */
    int *wds;
    char **rels;
    size_t n, cap;
    bool lost; /* events were dropped since the last fs__watch_read() returned */
    /* A directory moved away from rel `from_rel`, waiting for the IN_MOVED_TO with the same
     * cookie that says where it went (NULL: none). */
    char *from_rel;
    uint32_t from_cookie;
    /* Cookie of the last upload temp file renamed away: its IN_MOVED_TO is the upload landing. */
    uint32_t upload_cookie;
    bool upload_pending;
    char *buf; /* READ_BUF bytes, aligned for struct inotify_event */
};

/* ---- event queue ---- */

void fs__evq_init(fs__evq_t *q, size_t max)
{
    memset(q, 0, sizeof *q);
    q->max = max;
}

void fs__evq_fini(fs__evq_t *q)
{
    fs__event_t ev;
    while (fs__evq_pop(q, &ev))
        free(ev.name);
    free(q->v);
    memset(q, 0, sizeof *q);
}

bool fs__evq_push(fs__evq_t *q, const char *name, int type)
{
    if (q->n >= q->max)
        return false;
    if (q->n == q->cap) {
        /* Grow and unwrap the ring into the new array. */
        size_t cap = q->cap ? q->cap * 2 : 64;
        fs__event_t *v = xcalloc(cap, sizeof *v);
        for (size_t i = 0; i < q->n; i++)
            v[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = v;
        q->cap = cap;
        q->head = 0;
    }
    q->v[(q->head + q->n) % q->cap] = (fs__event_t){xstrdup(name), type};
    q->n++;
    return true;
}

bool fs__evq_pop(fs__evq_t *q, fs__event_t *out)
{
    if (q->n == 0)
        return false;
    *out = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->n--;
    return true;
}

json_t *fs__event_json(const fs__event_t *ev)
{
    static const char *const names[] = {NULL,
                                        "EVENT_TYPE_CREATE",
                                        "EVENT_TYPE_WRITE",
                                        "EVENT_TYPE_REMOVE",
                                        "EVENT_TYPE_RENAME",
                                        "EVENT_TYPE_CHMOD"};
    json_t *o = json_object();
    if (ev->name && *ev->name)
        json_object_set_new(o, "name", json_string(ev->name));
    if (ev->type > 0 && ev->type <= FS__EV_CHMOD)
        json_object_set_new(o, "type", json_string(names[ev->type]));
    return o;
}

/* ---- watch descriptor table ---- */

static size_t wd_find(const fs__watch_t *w, int wd, bool *found)
{
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (w->wds[mid] < wd)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < w->n && w->wds[lo] == wd;
    return lo;
}

static void wd_put(fs__watch_t *w, int wd, const char *rel)
{
    bool found;
    size_t i = wd_find(w, wd, &found);
    if (found) {
        /* The same directory seen again (moved back in, or reached twice): newest path wins. */
        free(w->rels[i]);
        w->rels[i] = xstrdup(rel);
        return;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->wds = xrealloc(w->wds, w->cap * sizeof *w->wds);
        w->rels = xrealloc(w->rels, w->cap * sizeof *w->rels);
    }
    memmove(w->wds + i + 1, w->wds + i, (w->n - i) * sizeof *w->wds);
    memmove(w->rels + i + 1, w->rels + i, (w->n - i) * sizeof *w->rels);
    w->wds[i] = wd;
    w->rels[i] = xstrdup(rel);
    w->n++;
}

static void wd_drop_at(fs__watch_t *w, size_t i)
{
    free(w->rels[i]);
    memmove(w->wds + i, w->wds + i + 1, (w->n - i - 1) * sizeof *w->wds);
    memmove(w->rels + i, w->rels + i + 1, (w->n - i - 1) * sizeof *w->rels);
    w->n--;
}

/* Stop watching rel and everything below it (a directory moved away). */
static void wd_drop_tree(fs__watch_t *w, const char *rel)
{
    size_t len = strlen(rel);
    for (size_t i = 0; i < w->n;) {
        const char *r = w->rels[i];
        if (strncmp(r, rel, len) == 0 && (r[len] == '\0' || r[len] == '/')) {
            inotify_rm_watch(w->fd, w->wds[i]);
            wd_drop_at(w, i);
        } else {
            i++;
        }
    }
}

/* A watched directory moved from `from` to `to` inside the tree: its watches stay, only the
 * names change. */
static void wd_rename_tree(fs__watch_t *w, const char *from, const char *to)
{
    size_t len = strlen(from);
    for (size_t i = 0; i < w->n; i++) {
        const char *r = w->rels[i];
        if (strncmp(r, from, len) == 0 && (r[len] == '\0' || r[len] == '/')) {
            char *nr = xasprintf("%s%s", to, r + len);
            free(w->rels[i]);
            w->rels[i] = nr;
        }
    }
}

/* The pending IN_MOVED_FROM found no IN_MOVED_TO: the directory left the tree. */
static void settle_move(fs__watch_t *w)
{
    if (!w->from_rel)
        return;
    wd_drop_tree(w, w->from_rel);
    free(w->from_rel);
    w->from_rel = NULL;
}

static char *rel_join(const char *rel, const char *name)
{
    return *rel ? xasprintf("%s/%s", rel, name) : xstrdup(name);
}

/* Watch the directory rel (below root) and, recursively, every directory in it. When q is
 * given, every entry found is also reported as created: it appeared before its directory was
 * watched, so no event of its own will come. Directories that vanished or that the user may not
 * read are skipped; only the kernel's watch limit is an error. */
static int add_tree(fs__watch_t *w, const char *rel, fs__evq_t *q, int depth, err_t *e)
{
    char *abs = *rel ? fs__join(w->root, rel) : xstrdup(w->root);
    int r = 0;
    uint32_t mask = WATCH_MASK | (*rel ? IN_DONT_FOLLOW : 0);
    int wd = inotify_add_watch(w->fd, abs, mask);
    if (wd < 0) {
        if (errno == ENOSPC)
            r = err_set(e, -EMFILE, "inotify watch limit reached (fs.inotify.max_user_watches)");
        else if (!*rel)
            r = fs__errno(e, "watch", abs);
        goto out;
    }
    wd_put(w, wd, rel);
    fs__names_t ns;
    /* PATH_MAX bounds how deep a tree can be reached by path, and so the recursion. */
    if (depth > PATH_MAX / 2 || fs__names_read(-1, abs, &ns, NULL) < 0)
        goto out;
    for (size_t i = 0; i < ns.n && r == 0; i++) {
        char *child = rel_join(rel, ns.name[i]);
        if (q && !fs__evq_push(q, child, FS__EV_CREATE))
            w->lost = true;
        bool dir = ns.type[i] == DT_DIR;
        if (ns.type[i] == DT_UNKNOWN) {
            char *cabs = fs__join(w->root, child);
            struct stat st;
            dir = lstat(cabs, &st) == 0 && S_ISDIR(st.st_mode);
            free(cabs);
        }
        if (dir)
            r = add_tree(w, child, q, depth + 1, e);
        free(child);
    }
    fs__names_free(&ns);
out:
    free(abs);
    return r;
}

int fs__watch_open(const char *path, bool recursive, fs__watch_t **out, err_t *e)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) < 0)
        return fs__errno(e, "watch", path);
    if (!S_ISDIR(st.st_mode))
        return err_set(e, -ENOTDIR, "path %s is not a directory", path);
    struct statfs sf;
    if (statfs(path, &sf) < 0)
        return fs__errno(e, "watch", path);
    switch ((unsigned long)sf.f_type) {
    case NFS_SUPER_MAGIC:
    case CIFS_MAGIC:
    case SMB_SUPER_MAGIC:
    case SMB2_MAGIC_NUMBER:
    case FUSE_SUPER_MAGIC:
        return err_set(e, -EINVAL, "cannot watch path on network filesystem: %s", path);
    default:
        break;
    }
    fs__watch_t *w = xcalloc(1, sizeof *w);
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0) {
        int r = errno == EMFILE || errno == ENFILE
                    ? err_set(e, -EMFILE, "too many watches (fs.inotify.max_user_instances)")
                    : fs__errno(e, "watch", path);
        free(w);
        return r;
    }
    w->recursive = recursive;
    w->root = xstrdup(path);
    w->buf = xmalloc(READ_BUF);
    int r = 0;
    if (recursive) {
        r = add_tree(w, "", NULL, 0, e);
    } else {
        int wd = inotify_add_watch(w->fd, path, WATCH_MASK);
        if (wd < 0)
            r = errno == ENOSPC ? err_set(e, -EMFILE, "inotify watch limit reached")
                                : fs__errno(e, "watch", path);
        else
            wd_put(w, wd, "");
    }
    if (r < 0) {
        fs__watch_close(w);
        return r;
    }
    *out = w;
    return 0;
}

int fs__watch_fd(const fs__watch_t *w)
{
    return w->fd;
}

static void emit(fs__watch_t *w, fs__evq_t *q, const char *name, int type)
{
    if (!fs__evq_push(q, name, type))
        w->lost = true;
}

/* Translate one inotify event. Returns 0 or a watch-limit error from following a new
 * directory. */
static int on_event(fs__watch_t *w, const struct inotify_event *ev, fs__evq_t *q, err_t *e)
{
    if (ev->mask & IN_Q_OVERFLOW) {
        w->lost = true;
        return 0;
    }
    /* The kernel queues a rename's two halves back to back; anything else in between means the
     * directory went out of the tree. */
    if (w->from_rel && !((ev->mask & IN_MOVED_TO) && ev->cookie == w->from_cookie))
        settle_move(w);
    bool found;
    size_t i = wd_find(w, ev->wd, &found);
    if (!found)
        return 0; /* a watch we already dropped */
    if (ev->mask & IN_IGNORED) {
        wd_drop_at(w, i);
        return 0;
    }
    const char *rel = w->rels[i];
    bool self = ev->len == 0 || ev->name[0] == '\0';
    /* A subdirectory's own deletion or move is already reported by its parent's watch. */
    if (self && *rel && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)))
        return 0;
    /* envd's own upload temp files are invisible; their rename onto the target reads as the
     * target being created and written, which is what a client that wrote the file expects. */
    if (!self && strncmp(ev->name, ENVD_UPLOAD_TMP_PREFIX, strlen(ENVD_UPLOAD_TMP_PREFIX)) == 0) {
        if (ev->mask & IN_MOVED_FROM) {
            w->upload_cookie = ev->cookie;
            w->upload_pending = true;
        }
        return 0;
    }
    bool upload_landed =
        (ev->mask & IN_MOVED_TO) && w->upload_pending && ev->cookie == w->upload_cookie;
    if (upload_landed)
        w->upload_pending = false;
    char *name = self ? xstrdup(*rel ? rel : ".") : rel_join(rel, ev->name);
    if (ev->mask & (IN_CREATE | IN_MOVED_TO))
        emit(w, q, name, FS__EV_CREATE);
    if (upload_landed)
        emit(w, q, name, FS__EV_WRITE);
    if (ev->mask & (IN_MOVED_FROM | IN_MOVE_SELF))
        emit(w, q, name, FS__EV_RENAME);
    if (ev->mask & IN_ATTRIB)
        emit(w, q, name, FS__EV_CHMOD);
    if (ev->mask & IN_MODIFY)
        emit(w, q, name, FS__EV_WRITE);
    if (ev->mask & (IN_DELETE | IN_DELETE_SELF))
        emit(w, q, name, FS__EV_REMOVE);
    int r = 0;
    if (w->recursive && !self && (ev->mask & IN_ISDIR)) {
        if (ev->mask & IN_MOVED_FROM) {
            w->from_rel = steal_ptr(&name);
            w->from_cookie = ev->cookie;
        } else if ((ev->mask & IN_MOVED_TO) && w->from_rel) {
            wd_rename_tree(w, w->from_rel, name);
            free(w->from_rel);
            w->from_rel = NULL;
        } else if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
            r = add_tree(w, name, q, 0, e);
        }
    }
    free(name);
    return r;
}

int fs__watch_read(fs__watch_t *w, fs__evq_t *q, err_t *e)
{
    ssize_t n = read(w->fd, w->buf, READ_BUF);
    int r = 0;
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            r = err_errno(e, "read inotify events");
    }
    for (ssize_t off = 0; n > 0 && off + (ssize_t)sizeof(struct inotify_event) <= n;) {
        const struct inotify_event *ev = (const struct inotify_event *)(w->buf + off);
        off += (ssize_t)sizeof *ev + ev->len;
        if (off > n)
            break;
        int rr = on_event(w, ev, q, e);
        if (rr < 0 && r == 0)
            r = rr;
    }
    /* A read that emptied the kernel's queue cannot be hiding the second half of a rename. */
    if (n < 0 || (size_t)n + sizeof(struct inotify_event) + NAME_MAX + 1 <= READ_BUF)
        settle_move(w);
    if (r == 0 && w->lost)
        r = err_set(e, -EMFILE, "too many filesystem events: some were lost");
    w->lost = false;
    return r;
}

void fs__watch_close(fs__watch_t *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    for (size_t i = 0; i < w->n; i++)
        free(w->rels[i]);
    free(w->wds);
    free(w->rels);
    free(w->root);
    free(w->from_rel);
    free(w->buf);
    free(w);
}
