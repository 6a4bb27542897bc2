/* GET /files: serve one file as the requesting user.
 *
 * The file is opened with the user's filesystem identity, then served from the open descriptor
 * after the thread is back to its own identity (the response body is produced later, by the
 * HTTP layer). Identity responses go out with sendfile and support a single byte range and the
 * If-None-Match / If-Modified-Since / If-Range conditionals; gzip responses are deflated on the
 * fly, a piece at a time.
 */
#include "files.h"
#include "buf.h"
#include "gz.h"
#include "log.h"
#include "xalloc.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Fast rather than small: a deflate level of 1 keeps gzip downloads near disk speed. */
#define DOWNLOAD_GZIP_LEVEL 1

static const struct {
    const char *ext;
    const char *type;
} content_types[] = {
    {"txt", "text/plain; charset=utf-8"},
    {"log", "text/plain; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"},
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"xml", "text/xml; charset=utf-8"},
    {"yaml", "application/yaml"},
    {"yml", "application/yaml"},
    {"py", "text/x-python; charset=utf-8"},
    {"sh", "text/x-shellscript; charset=utf-8"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"svg", "image/svg+xml"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/vnd.microsoft.icon"},
    {"pdf", "application/pdf"},
    {"zip", "application/zip"},
    {"gz", "application/gzip"},
    {"tgz", "application/gzip"},
    {"tar", "application/x-tar"},
    {"wasm", "application/wasm"},
    {"mp3", "audio/mpeg"},
    {"wav", "audio/wav"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
};

static const char *content_type(const char *base)
{
    const char *dot = strrchr(base, '.');
    if (dot && dot != base)
        for (size_t i = 0; i < sizeof content_types / sizeof content_types[0]; i++)
            if (strcasecmp(dot + 1, content_types[i].ext) == 0)
                return content_types[i].type;
    return "application/octet-stream";
}

/* Content-Disposition: inline; filename="<base>" with quotes and backslashes escaped. A name
 * that is not plain printable ASCII also gets an RFC 5987 filename* with the exact bytes, and
 * an ASCII fallback in filename (control characters never reach the header). */
static void set_disposition(http_req_t *r, const char *base)
{
    static const char hex[] = "0123456789ABCDEF";
    buf_t b;
    buf_init(&b);
    bool plain = true;
    buf_adds(&b, "inline; filename=\"");
    for (const unsigned char *p = (const unsigned char *)base; *p; p++) {
        if (*p < 0x20 || *p >= 0x7f) {
            plain = false;
            buf_addc(&b, '_');
        } else {
            if (*p == '"' || *p == '\\')
                buf_addc(&b, '\\');
            buf_addc(&b, (char)*p);
        }
    }
    buf_addc(&b, '"');
    if (!plain) {
        buf_adds(&b, "; filename*=UTF-8''");
        for (const unsigned char *p = (const unsigned char *)base; *p; p++) {
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                strchr("!#$&+-.^_`|~", *p)) {
                buf_addc(&b, (char)*p);
            } else {
                buf_addc(&b, '%');
                buf_addc(&b, hex[*p >> 4]);
                buf_addc(&b, hex[*p & 15]);
            }
        }
    }
    http_set_header(r, "Content-Disposition", b.data);
    buf_fini(&b);
}

/* What Accept-Encoding allows. q values: -1 when the coding is not listed. */
typedef struct accept_enc {
    double gzip, identity, star;
} accept_enc_t;

static double parse_q(const char *s)
{
    char *end = NULL;
    double q = strtod(s, &end);
    if (end == s)
        return -1;
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end || q < 0 || q > 1)
        return -1;
    return q;
}

static void parse_accept_encoding(const char *h, accept_enc_t *a)
{
    a->gzip = a->identity = a->star = -1;
    char *copy = xstrdup(h);
    char *save = NULL;
    for (char *el = strtok_r(copy, ",", &save); el; el = strtok_r(NULL, ",", &save)) {
        char *psave = NULL;
        char *coding = strtok_r(el, ";", &psave);
        if (!coding)
            continue;
        coding += strspn(coding, " \t");
        size_t cl = strcspn(coding, " \t");
        coding[cl] = '\0';
        double q = 1;
        for (char *p = strtok_r(NULL, ";", &psave); p; p = strtok_r(NULL, ";", &psave)) {
            p += strspn(p, " \t");
            if ((p[0] == 'q' || p[0] == 'Q') && p[1] == '=')
                q = parse_q(p + 2);
        }
        if (q < 0)
            continue; /* an invalid qvalue: ignore the element */
        if (strcasecmp(coding, "gzip") == 0 || strcasecmp(coding, "x-gzip") == 0)
            a->gzip = q;
        else if (strcasecmp(coding, "identity") == 0)
            a->identity = q;
        else if (strcmp(coding, "*") == 0)
            a->star = q;
    }
    free(copy);
}

/* Choose the coding: *gzip = use gzip; *identity_ok = identity is acceptable at all. Returns
 * false when nothing we can produce is acceptable. Without the header only identity is used
 * (a client that did not ask for gzip gets none). gzip wins ties, as in the original. */
static bool negotiate(const char *h, bool *gzip, bool *identity_ok)
{
    *gzip = false;
    *identity_ok = true;
    if (!h)
        return true;
    accept_enc_t a;
    parse_accept_encoding(h, &a);
    double gz = a.gzip >= 0 ? a.gzip : (a.star >= 0 ? a.star : 0);
    /* identity is acceptable unless excluded: by identity;q=0, or by *;q=0 when not listed. */
    bool id_listed = a.identity >= 0 || a.star >= 0;
    double id = a.identity >= 0 ? a.identity : (a.star >= 0 ? a.star : 1);
    *identity_ok = id > 0;
    *gzip = gz > 0 && (!id_listed || gz >= id);
    return *gzip || *identity_ok;
}

static bool parse_http_date(const char *s, time_t *out)
{
    static const char *const fmts[] = {
        "%a, %d %b %Y %H:%M:%S GMT", /* IMF-fixdate */
        "%A, %d-%b-%y %H:%M:%S GMT", /* RFC 850 */
        "%a %b %e %H:%M:%S %Y",      /* asctime */
    };
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        struct tm tm = {0};
        const char *end = strptime(s, fmts[i], &tm);
        if (end && end[strspn(end, " \t")] == '\0') {
            *out = timegm(&tm);
            return true;
        }
    }
    return false;
}

static void fmt_http_date(time_t t, char *out, size_t n)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Whether the entity-tag list h (or "*") names etag; weak comparison ignores W/ prefixes. */
static bool etag_match(const char *h, const char *etag, bool weak)
{
    const char *s = h;
    size_t el = strlen(etag);
    for (;;) {
        s += strspn(s, " \t,");
        if (!*s)
            return false;
        if (*s == '*')
            return true;
        bool w = false;
        if (s[0] == 'W' && s[1] == '/') {
            w = true;
            s += 2;
        }
        if (*s != '"')
            return false;
        const char *q = strchr(s + 1, '"');
        if (!q)
            return false;
        size_t len = (size_t)(q - s) + 1;
        if ((weak || !w) && len == el && memcmp(s, etag, el) == 0)
            return true;
        s = q + 1;
    }
}

static bool parse_u64(const char **sp, uint64_t *out)
{
    const char *s = *sp;
    if (*s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
        s++;
    }
    *sp = s;
    *out = v;
    return true;
}

/* A single "bytes=" range: 1 and [*start, *start + *len) when satisfiable, -1 when it cannot be
 * satisfied (→ 416), 0 when the header is to be ignored (malformed or several ranges; RFC 9110
 * lets a server answer those with the whole file). */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *len)
{
    const char *s = h + strspn(h, " \t");
    if (strncasecmp(s, "bytes", 5) != 0)
        return 0;
    s += 5;
    s += strspn(s, " \t");
    if (*s++ != '=')
        return 0;
    s += strspn(s, " \t");
    if (strchr(s, ','))
        return 0;
    uint64_t a = 0, b = 0;
    if (*s == '-') {
        s++;
        if (!parse_u64(&s, &b) || s[strspn(s, " \t")])
            return 0;
        if (b == 0 || size == 0)
            return -1;
        if (b > size)
            b = size;
        *start = size - b;
        *len = b;
        return 1;
    }
    if (!parse_u64(&s, &a) || *s++ != '-')
        return 0;
    bool has_b = *s >= '0' && *s <= '9';
    if (has_b && !parse_u64(&s, &b))
        return 0;
    if (s[strspn(s, " \t")] || (has_b && b < a))
        return 0;
    if (a >= size)
        return -1;
    uint64_t last = has_b && b < size - 1 ? b : size - 1;
    *start = a;
    *len = last - a + 1;
    return 1;
}

/* Open path for reading with u's permissions. */
static int open_as(const envd_user_t *u, const char *path, int *fd, struct stat *st, err_t *e)
{
    int rc = envd_fs_become(u, e);
    if (rc < 0)
        return rc;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway. */
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    int err = errno;
    envd_fs_restore();
    if (f < 0)
        return files__errno(err, "open", path, e);
    if (fstat(f, st) < 0) {
        err = errno;
        close(f);
        return files__errno(err, "stat", path, e);
    }
    *fd = f;
    return 0;
}

struct gz_download {
    int fd;
    gz_deflate_t *z;
};

static ssize_t gz_source(void *ud, char *dst, size_t max)
{
    struct gz_download *g = ud;
    for (;;) {
        ssize_t n = read(g->fd, dst, max);
        if (n >= 0)
            return n;
        if (errno != EINTR && errno != EAGAIN)
            return -errno;
    }
}

static ssize_t gz_read(void *ud, char *dst, size_t max)
{
    struct gz_download *g = ud;
    ssize_t n = gz_deflate_read(g->z, dst, max);
    if (n > 0)
        return n;
    if (n == 0)
        return HTTP_STREAM_END;
    log_warn("files.download_failed", "err=%d", (int)-n);
    return HTTP_STREAM_ABORT;
}

static void gz_free(void *ud)
{
    struct gz_download *g = ud;
    gz_deflate_free(g->z);
    close(g->fd);
    free(g);
}

/* Identity: conditionals, a single range, then sendfile. Takes fd. */
static void serve_identity(http_req_t *r, int fd, const struct stat *st, const char *ctype)
{
    char etag[96], lm[64];
    snprintf(etag, sizeof etag, "\"%llx-%llx-%llx\"", (unsigned long long)st->st_ino,
             (unsigned long long)st->st_size,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ull +
                 (unsigned long long)st->st_mtim.tv_nsec);
    fmt_http_date(st->st_mtime, lm, sizeof lm);
    http_set_header(r, "ETag", etag);
    http_set_header(r, "Last-Modified", lm);
    http_set_header(r, "Accept-Ranges", "bytes");
    uint64_t size = (uint64_t)st->st_size;

    const char *inm = http_req_header(r, "If-None-Match");
    const char *ims = http_req_header(r, "If-Modified-Since");
    time_t t;
    if ((inm && etag_match(inm, etag, true)) ||
        (!inm && ims && parse_http_date(ims, &t) && st->st_mtime <= t)) {
        close(fd);
        http_respond(r, 304, NULL, "", 0);
        return;
    }

    const char *range = http_req_header(r, "Range");
    const char *if_range = http_req_header(r, "If-Range");
    if (range && if_range) {
        /* The range applies only while the file is the one the client has part of. */
        const char *ir = if_range + strspn(if_range, " \t");
        bool same = ir[0] == '"' ? etag_match(ir, etag, false)
                                 : (ir[0] != 'W' && parse_http_date(ir, &t) && t == st->st_mtime);
        if (!same)
            range = NULL;
    }
    uint64_t start = 0, len = size;
    int pr = range ? parse_range(range, size, &start, &len) : 0;
    if (pr < 0) {
        char cr[64];
        snprintf(cr, sizeof cr, "bytes */%llu", (unsigned long long)size);
        http_set_header(r, "Content-Range", cr);
        close(fd);
        err_t e = {0};
        err_set(&e, -EDOM, "range not satisfiable for a file of %llu bytes",
                (unsigned long long)size);
        http_respond_error(r, -EDOM, &e);
        return;
    }
    if (pr > 0) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)start,
                 (unsigned long long)(start + len - 1), (unsigned long long)size);
        http_set_header(r, "Content-Range", cr);
        http_respond_fd(r, 206, ctype, fd, start, len);
        return;
    }
    if (size == 0) {
        close(fd);
        http_respond(r, 200, ctype, "", 0);
        return;
    }
    http_respond_fd(r, 200, ctype, fd, 0, size);
}

void files__download(http_req_t *r, void *ud)
{
    envd_t *d = ud;
    err_t e = {0};
    envd_user_t u = {0};
    char *path = NULL;
    int fd = -1;
    struct stat st;
    int rc;

    if ((rc = files__check_signing(d, r, "read", &e)) < 0 ||
        (rc = envd_files_user(d, http_req_query(r, "username"), &u, &e)) < 0 ||
        (rc = envd_resolve_path(d, &u, http_req_query(r, "path"), &path, &e)) < 0 ||
        (rc = open_as(&u, path, &fd, &st, &e)) < 0)
        goto fail;
    if (S_ISDIR(st.st_mode)) {
        rc = err_set(&e, -EISDIR, "path '%s' is a directory", path);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(&e, -EINVAL, "path '%s' is not a regular file", path);
        goto fail;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);

    bool gzip = false, identity_ok = true;
    if (!negotiate(http_req_header(r, "Accept-Encoding"), &gzip, &identity_ok)) {
        rc = err_set(&e, -EPROTO, "no acceptable encoding: only gzip and identity are offered");
        goto fail;
    }
    /* Ranges and validators describe the identity bytes: they force identity. */
    if (http_req_header(r, "Range") || http_req_header(r, "If-Modified-Since") ||
        http_req_header(r, "If-None-Match") || http_req_header(r, "If-Range")) {
        if (!identity_ok) {
            rc = err_set(&e, -EPROTO,
                         "identity encoding is required with Range or conditional headers");
            goto fail;
        }
        gzip = false;
    }

    const char *base = files__base(path);
    const char *ctype = content_type(base);
    http_set_header(r, "Vary", "Accept-Encoding");
    set_disposition(r, base);
    log_debug("files.download", "path=\"%s\" user=%s gzip=%d size=%lld", path, u.name, (int)gzip,
              (long long)st.st_size);
    if (gzip) {
        struct gz_download *g = xcalloc(1, sizeof *g);
        g->fd = fd;
        fd = -1;
        g->z = gz_deflate_new(DOWNLOAD_GZIP_LEVEL, gz_source, g);
        http_set_header(r, "Content-Encoding", "gzip");
        http_respond_stream(r, 200, ctype, gz_read, gz_free, g);
    } else {
        serve_identity(r, fd, &st, ctype);
        fd = -1;
    }
    goto out;
fail:
    if (err_status(rc).http >= 500)
        log_warn("files.download_failed", "err=\"%s\"", e.msg);
    http_respond_error(r, rc, &e);
out:
    xclose(&fd);
    free(path);
    envd_user_fini(&u);
}
