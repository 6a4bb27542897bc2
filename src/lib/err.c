#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(err_t *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        e->code = code;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int err_wrap(err_t *e, const char *fmt, ...)
{
    if (!e)
        return -EIO;
    if (!e->code)
        e->code = -EIO;
    char ctx[ERR_MSG_MAX];
    char old[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    /* "ctx: old", truncated to the buffer. */
    size_t n = strnlen(ctx, sizeof ctx - 1);
    memcpy(e->msg, ctx, n);
    if (old[0] && n + 2 < sizeof e->msg) {
        memcpy(e->msg + n, ": ", 2);
        n += 2;
        size_t m = strnlen(old, sizeof old - 1);
        if (m > sizeof e->msg - 1 - n)
            m = sizeof e->msg - 1 - n;
        memcpy(e->msg + n, old, m);
        n += m;
    }
    e->msg[n] = '\0';
    return e->code;
}

int err_errno(err_t *e, const char *what)
{
    int code = errno ? -errno : -EIO;
    return err_set(e, code, "%s: %s", what, strerror(-code));
}

void err_clear(err_t *e)
{
    if (e) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}

/* The one table from error codes to wire statuses. Keep it sorted by meaning, not number. */
static const struct {
    int code;
    err_status_t st;
} table[] = {
    {0, {200, "ok", "ok"}},
    {-EINVAL, {400, "invalid_argument", "invalid argument"}},
    {-ENOTDIR, {400, "invalid_argument", "not a directory"}},
    {-EISDIR, {400, "invalid_argument", "is a directory"}},
    {-EBADMSG, {400, "invalid_argument", "malformed request"}},
    {-EILSEQ, {400, "invalid_argument", "invalid encoding"}},
    {-ENAMETOOLONG, {400, "invalid_argument", "name too long"}},
    {-ELOOP, {400, "failed_precondition", "too many levels of symbolic links"}},
    {-ENOTEMPTY, {400, "failed_precondition", "directory not empty"}},
    {-EALREADY, {400, "failed_precondition", "operation not allowed in this state"}},
    {-EUCLEAN, {400, "failed_precondition", "stored data is corrupt"}}, /* e.g. a snapshot */
    {-ERANGE, {400, "out_of_range", "out of range"}},
    {-ENOKEY, {401, "unauthenticated", "authentication required"}},
    {-EKEYREJECTED, {401, "unauthenticated", "invalid credentials"}},
    {-EACCES, {403, "permission_denied", "permission denied"}},
    {-EPERM, {403, "permission_denied", "operation not permitted"}},
    {-ENOENT, {404, "not_found", "not found"}},
    {-ESRCH, {404, "not_found", "no such process"}},
    {-ENODEV, {404, "not_found", "no such route"}},
    {-EOPNOTSUPP, {405, "unimplemented", "method not allowed"}},
    {-EPROTO, {406, "invalid_argument", "no acceptable encoding"}}, /* content negotiation failed */
    {-EEXIST, {409, "already_exists", "already exists"}},
    {-ECONNABORTED, {409, "aborted", "aborted"}},
    {-EMSGSIZE, {413, "resource_exhausted", "request too large"}},
    {-EFBIG, {413, "resource_exhausted", "request too large"}},
    {-EPROTONOSUPPORT, {415, "unimplemented", "unsupported content type"}},
    {-EDOM, {416, "out_of_range", "range not satisfiable"}}, /* GET /files byte ranges */
    {-EUSERS, {429, "resource_exhausted", "too many requests"}},
    {-EMFILE, {429, "resource_exhausted", "resource exhausted"}},
    {-ECANCELED, {499, "canceled", "canceled"}},
    {-EIO, {500, "internal", "internal error"}},
    {-ENOSYS, {501, "unimplemented", "not implemented"}},
    {-EAGAIN, {503, "unavailable", "unavailable"}},
    {-ETIMEDOUT, {504, "deadline_exceeded", "deadline exceeded"}},
    {-ENOSPC, {507, "resource_exhausted", "no space left on device"}},
    {-EDQUOT, {507, "resource_exhausted", "disk quota exceeded"}},
};

err_status_t err_status(int code)
{
    if (code > 0)
        code = 0;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].code == code)
            return table[i].st;
    return (err_status_t){500, "internal", "internal error"};
}

const char *err_public(const err_t *e, int code)
{
    err_status_t st = err_status(code);
    if (st.http == 500 || !e || !e->msg[0])
        return st.fallback;
    return e->msg;
}

int err_from_connect(const char *code)
{
    if (!code)
        return -EIO;
    /* The first entry with a given Connect code is its canonical errno. */
    for (size_t i = 1; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].st.connect, code) == 0)
            return table[i].code;
    if (strcmp(code, "unknown") == 0 || strcmp(code, "data_loss") == 0)
        return -EIO;
    return -EIO;
}
