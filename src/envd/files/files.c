/* GET /files and POST /files: the routes, URL signing and what both directions share. */
#include "files.h"
#include "b64.h"
#include "buf.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int parse_expiration(const char *s, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

int files__check_signing(envd_t *d, http_req_t *r, const char *op, err_t *e)
{
    char *tok = envd_token_copy(d);
    if (!tok)
        return 0;
    int rc = 0;
    buf_t msg;
    buf_init(&msg);
    const char *hdr = http_req_header(r, "X-Access-Token");
    if (hdr && *hdr) {
        /* A header that is present decides alone, as in the original. */
        rc = envd_check_token(r, d, e);
        goto out;
    }
    const char *sig = http_req_query(r, "signature");
    if (!sig || !*sig) {
        rc = err_set(e, -ENOKEY, "missing signature query parameter or X-Access-Token header");
        goto out;
    }
    const char *path = http_req_query(r, "path");
    const char *user = http_req_query(r, "username");
    const char *exp_s = http_req_query(r, "signature_expiration");
    long long exp = 0;
    bool has_exp = exp_s && *exp_s;
    if (has_exp && parse_expiration(exp_s, &exp) < 0) {
        rc = err_set(e, -EINVAL, "signature_expiration must be an integer (unix seconds)");
        goto out;
    }
    buf_printf(&msg, "%s:%s:%s:%s", path ? path : "", op, user ? user : "", tok);
    if (has_exp)
        buf_printf(&msg, ":%lld", exp);
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, (const unsigned char *)msg.data, msg.len);
    char want[3 + 64];
    memcpy(want, "v1_", 3);
    size_t wl = 3 + b64_encode(digest, sizeof digest, want + 3, false);
    want[wl] = '\0';
    /* Compare digests of both so that timing says nothing about the expected signature. */
    unsigned char a[crypto_hash_sha256_BYTES], b[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(a, (const unsigned char *)want, wl);
    crypto_hash_sha256(b, (const unsigned char *)sig, strlen(sig));
    if (sodium_memcmp(a, b, sizeof a) != 0) {
        rc = err_set(e, -EKEYREJECTED, "invalid signature");
        goto out;
    }
    if (has_exp && exp < (long long)time(NULL)) {
        rc = err_set(e, -EKEYREJECTED, "signature is already expired");
        goto out;
    }
out:
    if (msg.data)
        sodium_memzero(msg.data, msg.len);
    buf_fini(&msg);
    sodium_memzero(tok, strlen(tok));
    free(tok);
    return rc;
}

int files__errno(int err, const char *what, const char *path, err_t *e)
{
    switch (err) {
    case ENOENT:
    case ENOTDIR:
        return err_set(e, -ENOENT, "path '%s' does not exist", path);
    case EACCES:
    case EPERM:
    case EROFS:
    case ETXTBSY:
        return err_set(e, -EACCES, "permission denied: %s '%s'", what, path);
    case ENOSPC:
        return err_set(e, -ENOSPC, "not enough disk space to %s '%s'", what, path);
    case EDQUOT:
        return err_set(e, -EDQUOT, "disk quota exceeded: %s '%s'", what, path);
    case EISDIR:
        return err_set(e, -EISDIR, "path '%s' is a directory", path);
    case ELOOP:
        return err_set(e, -ELOOP, "too many levels of symbolic links in '%s'", path);
    case ENAMETOOLONG:
        return err_set(e, -ENAMETOOLONG, "path '%s' is too long", path);
    case EFBIG:
        return err_set(e, -EFBIG, "file '%s' too large", path);
    case ENXIO:
    case ENODEV:
        return err_set(e, -EINVAL, "path '%s' is not a regular file", path);
    default:
        return err_set(e, -EIO, "%s '%s': %s", what, path, strerror(err));
    }
}

const char *files__base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

size_t files_routes(envd_t *d, http_route_t *out, size_t max)
{
    const http_route_t routes[] = {
        {.method = "GET", .path = "/files", .handle = files__download, .ud = d},
        {.method = "POST",
         .path = "/files",
         .on_headers = files__upload_headers,
         .on_body = files__upload_body,
         .handle = files__upload_handle,
         .cleanup = files__upload_cleanup,
         .ud = d},
    };
    size_t n = sizeof routes / sizeof routes[0];
    if (n > max)
        n = max;
    memcpy(out, routes, n * sizeof *out);
    return n;
}
