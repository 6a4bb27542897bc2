/* Unary filesystem RPCs: Stat, MakeDir, Move, Remove, ListDir. Every filesystem call runs with
 * the caller's identity (fs__begin), so the kernel decides what the user may do and new entries
 * belong to the user. */
#include "fs.h"
#include "internal.h"
#include "xalloc.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A ListDir answer larger than this is refused rather than built: a deep listing of / would
 * otherwise take hundreds of megabytes. */
#define LIST_MAX_ENTRIES 200000
/* How deep ListDir descends at most, whatever depth asks for: each level is a stack frame. */
#define LIST_MAX_DEPTH 1024
/* Remove keeps one descriptor per level of the tree it is removing. */
#define REMOVE_MAX_DEPTH 512

static int entry_response(const char *path, fs__idcache_t *ids, json_t **resp, err_t *e)
{
    json_t *entry = NULL;
    int r = fs__entry(path, path, NULL, ids, &entry, e);
    if (r < 0)
        return r;
    *resp = json_object();
    json_object_set_new(*resp, "entry", entry);
    return 0;
}

int fs__stat(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    fs_path_req_t q;
    fs__ctx_t x = {0};
    fs__idcache_t ids = {0};
    char *path = NULL;
    struct stat st;
    json_t *entry = NULL;
    int r;
    if ((r = fs_decode_path(req, false, &q, e)) < 0 || (r = fs__begin(c, &x, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.path, &path, e)) < 0)
        goto out;
    if (lstat(path, &st) < 0) {
        /* "/file/x" does not exist either; SDKs read not_found as "no such entry". */
        if (errno == ENOTDIR)
            errno = ENOENT;
        r = fs__errno(e, "stat", path);
        goto out;
    }
    if ((r = fs__entry(path, path, &st, &ids, &entry, e)) < 0)
        goto out;
    *resp = json_object();
    json_object_set_new(*resp, "entry", entry);
out:
    fs__end(&x);
    free(path);
    return r;
}

/* mkdir -p: create every missing directory of path (mode 0755 before the umask). */
static int make_dirs(const char *path, err_t *e)
{
    char *p = xstrdup(path);
    int r = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char save = *s;
        *s = '\0';
        if (mkdir(p, 0755) < 0) {
            if (errno != EEXIST) {
                r = fs__errno(e, "create directory", p);
                break;
            }
            struct stat st;
            if (stat(p, &st) < 0) {
                r = fs__errno(e, "create directory", p);
                break;
            }
            if (!S_ISDIR(st.st_mode)) {
                r = err_set(e, -EINVAL, "path %s already exists but is not a directory", p);
                break;
            }
        }
        *s = save;
        if (!save)
            break;
    }
    free(p);
    return r;
}

int fs__make_dir(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    fs_path_req_t q;
    fs__ctx_t x = {0};
    fs__idcache_t ids = {0};
    char *path = NULL;
    struct stat st;
    int r;
    if ((r = fs_decode_path(req, false, &q, e)) < 0 || (r = fs__begin(c, &x, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.path, &path, e)) < 0)
        goto out;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            r = err_set(e, -EEXIST, "directory already exists: %s", path);
        else
            r = err_set(e, -EINVAL, "path already exists but is not a directory: %s", path);
        goto out;
    }
    if (errno != ENOENT) {
        r = fs__errno(e, "stat", path);
        goto out;
    }
    if ((r = make_dirs(path, e)) < 0 || (r = entry_response(path, &ids, resp, e)) < 0)
        goto out;
out:
    fs__end(&x);
    free(path);
    return r;
}

int fs__move(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    fs_move_req_t q;
    fs__ctx_t x = {0};
    fs__idcache_t ids = {0};
    char *src = NULL, *dst = NULL;
    int r;
    if ((r = fs_decode_move(req, &q, e)) < 0 || (r = fs__begin(c, &x, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.source, &src, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.destination, &dst, e)) < 0)
        goto out;
    /* A missing source is reported before any destination directory is made for it. */
    struct stat st;
    if (lstat(src, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            r = err_set(e, -ENOENT, "source not found: %s", src);
        else
            r = fs__errno(e, "move", src);
        goto out;
    }
    char *slash = strrchr(dst, '/');
    if (slash && slash != dst) {
        *slash = '\0';
        r = make_dirs(dst, e);
        *slash = '/';
        if (r < 0)
            goto out;
    }
    if (rename(src, dst) < 0) {
        if (errno == ENOENT) {
            r = err_set(e, -ENOENT, "source not found: %s", src);
        } else {
            int err = errno;
            r = fs__errno(e, "move", src);
            err_set(e, r, "move %s to %s: %s", src, dst, strerror(err));
        }
        goto out;
    }
    r = entry_response(dst, &ids, resp, e);
out:
    fs__end(&x);
    free(src);
    free(dst);
    return r;
}

/* Remove name (in directory pfd, shown as path) and everything below it. Symlinks are removed,
 * never followed: children are opened with O_NOFOLLOW relative to their parent's descriptor. */
static int remove_at(int pfd, const char *name, const char *path, int depth, err_t *e)
{
    if (unlinkat(pfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR)
        return fs__errno(e, "remove", path);
    if (depth >= REMOVE_MAX_DEPTH)
        return err_set(e, -ENAMETOOLONG, "remove %s: directory tree deeper than %d levels", path,
                       REMOVE_MAX_DEPTH);
    int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : fs__errno(e, "remove", path);
    int r = 0;
    /* Entries created while we empty the directory make rmdir fail; try a few rounds. */
    for (int round = 0; round < 3; round++) {
        fs__names_t ns;
        if ((r = fs__names_read(fd, path, &ns, e)) < 0)
            break;
        for (size_t i = 0; i < ns.n && r == 0; i++) {
            char *child = fs__join(path, ns.name[i]);
            r = remove_at(fd, ns.name[i], child, depth + 1, e);
            free(child);
        }
        fs__names_free(&ns);
        if (r < 0)
            break;
        if (unlinkat(pfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
            break;
        if ((errno != ENOTEMPTY && errno != EEXIST) || round == 2) {
            r = fs__errno(e, "remove", path);
            break;
        }
    }
    close(fd);
    return r;
}

int fs__remove(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    fs_path_req_t q;
    fs__ctx_t x = {0};
    char *path = NULL;
    int pfd = -1;
    int r;
    (void)resp;
    if ((r = fs_decode_path(req, true, &q, e)) < 0 || (r = fs__begin(c, &x, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.path, &path, e)) < 0)
        goto out;
    if (strcmp(path, "/") == 0) {
        r = err_set(e, -EINVAL, "refusing to remove /");
        goto out;
    }
    char *slash = strrchr(path, '/');
    *slash = '\0';
    pfd = open(slash == path ? "/" : path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    *slash = '/';
    if (pfd < 0) {
        /* A missing parent means a missing path, and that is success. */
        if (errno != ENOENT && errno != ENOTDIR)
            r = fs__errno(e, "remove", path);
        goto out;
    }
    r = remove_at(pfd, slash + 1, path, 0, e);
out:
    if (pfd >= 0)
        close(pfd);
    fs__end(&x);
    free(path);
    return r;
}

/* Append the entries below directory `real` (shown under `shown`) to arr, depth levels deep,
 * in lexical order, parents before their children. Entries are lstat'ed: symlinks below the
 * root are reported, never entered. A subdirectory that cannot be read is listed but not
 * entered; only the root's errors fail the call. */
static int walk(const char *real, const char *shown, uint32_t depth, int level, fs__idcache_t *ids,
                json_t *arr, err_t *e)
{
    fs__names_t ns;
    int r = fs__names_read(-1, real, &ns, e);
    if (r < 0)
        return level == 0 ? r : 0;
    for (size_t i = 0; i < ns.n && r == 0; i++) {
        char *cr = fs__join(real, ns.name[i]);
        char *cs = fs__join(shown, ns.name[i]);
        struct stat st;
        json_t *ent = NULL;
        /* An entry that vanished since readdir is simply not listed. */
        if (lstat(cr, &st) == 0 && fs__entry(cr, cs, &st, ids, &ent, NULL) == 0) {
            json_array_append_new(arr, ent);
            if (json_array_size(arr) > LIST_MAX_ENTRIES)
                r = err_set(e, -EMFILE, "more than %d entries: list with a smaller depth",
                            LIST_MAX_ENTRIES);
            else if (S_ISDIR(st.st_mode) && depth > 1 && level < LIST_MAX_DEPTH)
                r = walk(cr, cs, depth - 1, level + 1, ids, arr, e);
        }
        free(cr);
        free(cs);
    }
    fs__names_free(&ns);
    return r;
}

int fs__list_dir(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    fs_list_dir_req_t q;
    fs__ctx_t x = {0};
    fs__idcache_t ids = {0};
    char *path = NULL, *real = NULL;
    json_t *arr = NULL;
    struct stat st;
    int r;
    if ((r = fs_decode_list_dir(req, &q, e)) < 0 || (r = fs__begin(c, &x, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.path, &path, e)) < 0)
        goto out;
    /* The root is followed through every symlink; entries keep the requested prefix. */
    real = realpath(path, NULL);
    if (!real) {
        if (errno == ENOTDIR)
            errno = ENOENT;
        r = errno == ELOOP ? err_set(e, -ELOOP, "cyclic symlink or chain too long at %s", path)
                           : fs__errno(e, "resolve", path);
        goto out;
    }
    if (stat(real, &st) < 0) {
        r = fs__errno(e, "stat", path);
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        r = err_set(e, -ENOTDIR, "path is not a directory: %s", path);
        goto out;
    }
    arr = json_array();
    if ((r = walk(real, path, q.depth, 0, &ids, arr, e)) < 0)
        goto out;
    *resp = json_object();
    /* proto3 JSON leaves out an empty repeated field. */
    if (json_array_size(arr))
        json_object_set(*resp, "entries", arr);
out:
    json_decref(arr);
    fs__end(&x);
    free(path);
    free(real);
    return r;
}
