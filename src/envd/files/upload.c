/* POST /files: write uploaded files as the requesting user, streaming.
 *
 * Two bodies are accepted: multipart/form-data (each part named "file" is one file, its target
 * the `path` query argument or else the part's filename) and application/octet-stream (the
 * whole body is the file at `path`). Either may arrive gzip-encoded. Bytes go to disk as they
 * arrive; nothing buffers a whole body.
 *
 * Every file is first written to a temporary file beside its target (".wrenn-upload-<random>",
 * mode 0666 less the umask, or the mode and owner of the file it replaces) and renamed over the
 * target when its last byte is in. A failed, refused or aborted upload (a client that goes
 * away, a truncated body, a full disk) therefore leaves the old content intact and no temporary
 * file behind. Targets where a rename would change what the path means are written in place
 * instead, truncating first, exactly as the original does: files with several hard links,
 * non-regular files (e.g. /dev/null), symlinks that point nowhere yet, and files that cannot
 * keep their owner (a non-root user overwriting a file owned by someone else) or whose
 * directory does not let the user create files. A failed upload to such a target leaves
 * whatever was written so far.
 */
#include "files.h"
#include "buf.h"
#include "gz.h"
#include "log.h"
#include "multipart.h"
#include "pjson.h"
#include "xalloc.h"

#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* The file being written. */
struct target {
    char *path; /* the requested path, as reported back */
    char *dest; /* what the temporary file replaces: path, or the file a symlink names */
    char *tmp;  /* the temporary file; NULL when writing in place */
    int fd;
    uint64_t bytes;
};

struct upload {
    envd_t *d;
    envd_user_t user;
    char *query_path; /* resolved `path` argument, or NULL */
    bool raw;         /* application/octet-stream */
    multipart_t *mp;
    gz_inflate_t *gz;
    bool skip;         /* the current part is not a file part */
    struct target cur; /* cur.fd >= 0 while a file is open */
    char **seen;       /* targets of this request, to refuse one written twice */
    size_t nseen;
    size_t nwritten;
    buf_t out; /* the response: a JSON array of entries */
};

static void target_reset(struct target *t)
{
    free(t->path);
    free(t->dest);
    free(t->tmp);
    memset(t, 0, sizeof *t);
    t->fd = -1;
}

/* Give up on the current file: close it and remove the temporary file. */
static void target_abort(struct upload *up)
{
    struct target *t = &up->cur;
    xclose(&t->fd);
    if (t->tmp) {
        err_t e = {0};
        bool became = envd_fs_become(&up->user, &e) == 0;
        if (unlink(t->tmp) < 0 && errno != ENOENT)
            log_warn("files.upload_tmp_left", "path=\"%s\" err=%d", t->tmp, errno);
        if (became)
            envd_fs_restore();
    }
    if (t->path)
        log_info("files.upload_aborted", "path=\"%s\" bytes=%llu in_place=%d", t->path,
                 (unsigned long long)t->bytes, (int)!t->tmp);
    target_reset(t);
}

/* Create the missing parents of path (mode 0755, owned by the acting user). */
static int make_parents(const char *path, err_t *e)
{
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    int rc = 0;
    if (!slash || slash == dir)
        goto out;
    *slash = '\0';
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            rc = err_set(e, -ENOTDIR, "parent '%s' of '%s' is not a directory", dir, path);
        goto out;
    }
    if (errno != ENOENT) {
        rc = errno == ENOTDIR ? err_set(e, -ENOTDIR, "a parent of '%s' is not a directory", path)
                              : files__errno(errno, "stat", dir, e);
        goto out;
    }
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            rc = errno == ENOTDIR
                     ? err_set(e, -ENOTDIR, "a parent of '%s' is not a directory", path)
                     : files__errno(errno, "create directory", dir, e);
            goto out;
        }
        *p = c;
        if (!c)
            break;
    }
out:
    free(dir);
    return rc;
}

/* Create the temporary file beside dest. When dest exists (st), the new file takes its mode and
 * owner; when it cannot, it is removed again and -EPERM says "write in place". */
static int open_tmp(struct target *t, const struct stat *st)
{
    unsigned char rnd[8];
    char hex[sizeof rnd * 2 + 1];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
    const char *slash = strrchr(t->dest, '/');
    int dl = slash ? (int)(slash - t->dest) : 0;
    char *tmp = xasprintf("%.*s/" ENVD_UPLOAD_TMP_PREFIX "%s", dl, t->dest, hex);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0666);
    if (fd < 0) {
        int err = errno;
        free(tmp);
        return -err;
    }
    if (st) {
        struct stat now;
        bool ok = fstat(fd, &now) == 0;
        if (ok && (now.st_uid != st->st_uid || now.st_gid != st->st_gid))
            ok = fchown(fd, st->st_uid, st->st_gid) == 0;
        if (ok)
            ok = fchmod(fd, st->st_mode & 07777) == 0;
        if (!ok) {
            close(fd);
            unlink(tmp);
            free(tmp);
            return -EPERM;
        }
    }
    t->tmp = tmp;
    t->fd = fd;
    return 0;
}

/* Decide how to write t->path and open it; runs as the user. */
static int target_prepare(struct target *t, err_t *e)
{
    int rc = make_parents(t->path, e);
    if (rc < 0)
        return rc;
    struct stat st;
    bool have_st = false, in_place = false;
    if (lstat(t->path, &st) == 0) {
        have_st = true;
        if (S_ISLNK(st.st_mode)) {
            /* Replace what the link names, not the link. */
            t->dest = realpath(t->path, NULL);
            if (!t->dest) {
                if (errno != ENOENT)
                    return files__errno(errno, "resolve", t->path, e);
                in_place = true; /* dangling: opening creates the file it names */
                have_st = false;
            } else if (stat(t->dest, &st) < 0) {
                return files__errno(errno, "stat", t->path, e);
            }
        }
    } else if (errno != ENOENT) {
        return errno == ENOTDIR
                   ? err_set(e, -ENOTDIR, "a parent of '%s' is not a directory", t->path)
                   : files__errno(errno, "stat", t->path, e);
    }
    if (!t->dest)
        t->dest = xstrdup(t->path);
    if (have_st) {
        if (S_ISDIR(st.st_mode))
            return err_set(e, -EISDIR, "path '%s' is a directory", t->path);
        if (!S_ISREG(st.st_mode) || st.st_nlink > 1) {
            in_place = true;
        } else {
            /* Replacing must not let the user do more than writing into the file would. */
            int probe = open(t->dest, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
            if (probe < 0 && errno != ETXTBSY)
                return files__errno(errno, "open", t->path, e);
            if (probe >= 0)
                close(probe);
        }
    }
    if (!in_place && open_tmp(t, have_st ? &st : NULL) == 0)
        return 0;
    /* In place, like the original: truncate and write. O_NONBLOCK keeps a FIFO without reader
     * from hanging the request (→ ENXIO). */
    int fd = open(t->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0666);
    if (fd < 0)
        return files__errno(errno, "open", t->path, e);
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    t->fd = fd;
    return 0;
}

/* Start writing the file at path (taken). */
static int target_open(struct upload *up, char *path, err_t *e)
{
    for (size_t i = 0; i < up->nseen; i++)
        if (strcmp(up->seen[i], path) == 0) {
            int rc = err_set(e, -EINVAL,
                             "you cannot upload multiple files to the same path '%s' in one "
                             "upload request",
                             path);
            free(path);
            return rc;
        }
    up->seen = xrealloc(up->seen, (up->nseen + 1) * sizeof *up->seen);
    up->seen[up->nseen++] = xstrdup(path);
    target_reset(&up->cur);
    up->cur.path = path;
    int rc = envd_fs_become(&up->user, e);
    if (rc < 0) {
        target_reset(&up->cur);
        return rc;
    }
    rc = target_prepare(&up->cur, e);
    envd_fs_restore();
    if (rc < 0) {
        xclose(&up->cur.fd);
        target_reset(&up->cur);
    }
    return rc;
}

static int target_write(struct upload *up, const char *p, size_t n, err_t *e)
{
    struct target *t = &up->cur;
    if (t->fd < 0)
        return err_set(e, -EIO, "upload state lost");
    while (n) {
        ssize_t w = write(t->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return files__errno(errno, "write", t->path, e);
        }
        p += w;
        n -= (size_t)w;
        t->bytes += (uint64_t)w;
    }
    return 0;
}

/* The current file is complete: put it in place and add it to the response. */
static int target_commit(struct upload *up, err_t *e)
{
    struct target *t = &up->cur;
    int rc = 0;
    int fd = t->fd;
    t->fd = -1;
    /* close() reports late write errors on some filesystems (NFS). */
    if (close(fd) < 0 && errno != EINTR) {
        rc = files__errno(errno, "write", t->path, e);
        goto fail;
    }
    if (t->tmp) {
        if ((rc = envd_fs_become(&up->user, e)) < 0)
            goto fail;
        if (rename(t->tmp, t->dest) < 0)
            rc = files__errno(errno, "replace", t->path, e);
        else {
            free(t->tmp);
            t->tmp = NULL;
        }
        envd_fs_restore();
        if (rc < 0)
            goto fail;
    }
    buf_adds(&up->out, up->nwritten++ ? "," : "[");
    buf_adds(&up->out, "{\"path\":");
    pjson_quote(&up->out, t->path, strlen(t->path));
    buf_adds(&up->out, ",\"name\":");
    const char *base = files__base(t->path);
    pjson_quote(&up->out, base, strlen(base));
    buf_adds(&up->out, ",\"type\":\"file\"}");
    log_debug("files.upload", "path=\"%s\" user=%s bytes=%llu in_place=%d", t->path, up->user.name,
              (unsigned long long)t->bytes, (int)!t->tmp);
    target_reset(t);
    return 0;
fail:
    target_abort(up);
    return rc;
}

static int mp_begin(void *ud, const char *name, const char *filename, const char *ctype, err_t *e)
{
    (void)ctype;
    struct upload *up = ud;
    up->skip = !name || strcmp(name, "file") != 0;
    if (up->skip)
        return 0;
    char *path = NULL;
    if (up->query_path) {
        path = xstrdup(up->query_path);
    } else {
        if (!filename || !*filename)
            return err_set(e, -EINVAL,
                           "part \"file\" has no filename and no path query parameter was given");
        int rc = envd_resolve_path(up->d, &up->user, filename, &path, e);
        if (rc < 0)
            return rc;
    }
    return target_open(up, path, e);
}

static int mp_data(void *ud, const char *data, size_t len, err_t *e)
{
    struct upload *up = ud;
    return up->skip ? 0 : target_write(up, data, len, e);
}

static int mp_end(void *ud, err_t *e)
{
    struct upload *up = ud;
    if (up->skip)
        return 0;
    return target_commit(up, e);
}

static const multipart_cb_t mp_cb = {mp_begin, mp_data, mp_end};

/* Decoded body bytes. */
static int body_sink(void *ud, const char *data, size_t len, err_t *e)
{
    struct upload *up = ud;
    if (up->raw)
        return target_write(up, data, len, e);
    return multipart_feed(up->mp, data, len, e);
}

/* Whether the media type of header h is `type` (parameters ignored). */
static bool media_is(const char *h, const char *type)
{
    if (!h)
        return false;
    h += strspn(h, " \t");
    size_t n = strlen(type);
    return strncasecmp(h, type, n) == 0 &&
           (h[n] == '\0' || h[n] == ';' || h[n] == ' ' || h[n] == '\t');
}

int files__upload_headers(http_req_t *r, void *ud, err_t *e)
{
    envd_t *d = ud;
    struct upload *up = xcalloc(1, sizeof *up);
    up->d = d;
    up->cur.fd = -1;
    buf_init(&up->out);
    http_req_set_state(r, up);
    int rc;
    if ((rc = files__check_signing(d, r, "write", e)) < 0 ||
        (rc = envd_files_user(d, http_req_query(r, "username"), &up->user, e)) < 0)
        return rc;

    const char *ce = http_req_header(r, "Content-Encoding");
    if (ce && *ce) {
        if (media_is(ce, "gzip") || media_is(ce, "x-gzip"))
            up->gz = gz_inflate_new(body_sink, up);
        else if (!media_is(ce, "identity"))
            return err_set(e, -EINVAL,
                           "unsupported Content-Encoding '%.64s': only gzip is accepted", ce);
    }

    const char *ct = http_req_header(r, "Content-Type");
    if (media_is(ct, "application/octet-stream")) {
        up->raw = true;
    } else if (media_is(ct, "multipart/form-data")) {
        char boundary[MULTIPART_MAX_BOUNDARY + 1];
        if ((rc = multipart_boundary(ct, boundary, sizeof boundary, e)) < 0)
            return rc;
        up->mp = multipart_new(boundary, &mp_cb, up);
    } else {
        return err_set(e, -EINVAL,
                       "unsupported Content-Type '%.64s': expected multipart/form-data or "
                       "application/octet-stream",
                       ct ? ct : "");
    }

    const char *qp = http_req_query(r, "path");
    if (qp && *qp) {
        if ((rc = envd_resolve_path(d, &up->user, qp, &up->query_path, e)) < 0)
            return rc;
    } else if (up->raw) {
        return err_set(e, -EINVAL,
                       "the path query parameter is required for application/octet-stream uploads");
    }
    /* A raw body has one target, known now: any problem with it is reported before the body. */
    if (up->raw)
        return target_open(up, xstrdup(up->query_path), e);
    return 0;
}

int files__upload_body(http_req_t *r, const char *data, size_t len, void *ud, err_t *e)
{
    (void)ud;
    struct upload *up = http_req_state(r);
    int rc = up->gz ? gz_inflate_feed(up->gz, data, len, e) : body_sink(up, data, len, e);
    if (rc < 0)
        target_abort(up); /* the rest of the body is only drained: let go of the file now */
    return rc;
}

void files__upload_handle(http_req_t *r, void *ud)
{
    (void)ud;
    struct upload *up = http_req_state(r);
    err_t e = {0};
    int rc = 0;
    if (up->gz && (rc = gz_inflate_finish(up->gz, &e)) < 0)
        goto fail;
    rc = up->raw ? target_commit(up, &e) : multipart_finish(up->mp, &e);
    if (rc < 0)
        goto fail;
    buf_adds(&up->out, up->nwritten ? "]" : "[]");
    http_respond_buf(r, 200, "application/json", &up->out);
    return;
fail:
    target_abort(up);
    if (err_status(rc).http >= 500)
        log_warn("files.upload_failed", "err=\"%s\"", e.msg);
    http_respond_error(r, rc, &e);
}

void files__upload_cleanup(http_req_t *r, void *ud)
{
    (void)ud;
    struct upload *up = http_req_state(r);
    if (!up)
        return;
    /* A client that went away mid-upload ends here with a file still open. */
    target_abort(up);
    multipart_free(up->mp);
    gz_inflate_free(up->gz);
    for (size_t i = 0; i < up->nseen; i++)
        free(up->seen[i]);
    free(up->seen);
    free(up->query_path);
    buf_fini(&up->out);
    envd_user_fini(&up->user);
    free(up);
    http_req_set_state(r, NULL);
}
