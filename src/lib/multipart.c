/* Streaming multipart/form-data parser.
 *
 * The body is scanned for the delimiter "\r\n--<boundary>" with memmem() over each piece as it
 * comes; part bytes are handed to the caller as slices of the caller's own buffer, so the body
 * is never copied. Only a possible delimiter prefix at the end of a piece (at most the
 * delimiter's length minus one) is held back until the next piece decides it. The very first
 * delimiter has no CRLF in front of it, so the parser starts as if it had just seen one.
 */
#include "multipart.h"
#include "buf.h"
#include "xalloc.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DELIM_MAX (4 + MULTIPART_MAX_BOUNDARY)

enum mp_state {
    MP_PREAMBLE, /* before the first delimiter: bytes are dropped */
    MP_AFTER,    /* just after a delimiter: "--", transport padding or CRLF */
    MP_PADDING,  /* in linear white space after a delimiter */
    MP_DASH,     /* saw the first '-' of a closing "--" */
    MP_LF,       /* saw the CR ending a delimiter line */
    MP_HEADERS,  /* in a part's header block */
    MP_BODY,     /* in a part's body */
    MP_END,      /* after the closing delimiter: the epilogue is dropped */
};

struct multipart {
    const multipart_cb_t *cb;
    void *ud;
    char delim[DELIM_MAX];
    size_t dlen;
    char hold[DELIM_MAX]; /* bytes that may start a delimiter, decided by the next piece */
    size_t hold_len;
    enum mp_state state;
    buf_t hdr;         /* the current part's header block */
    size_t line_start; /* offset in hdr of the line being read */
    int err;           /* first error, replayed by every later call */
    char err_msg[ERR_MSG_MAX];
};

/* ---- Content-Type / Content-Disposition parameters (RFC 2045 §5.1, RFC 2183, RFC 5987) ---- */

static bool is_tspecial(char c)
{
    return c && strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

static bool is_token_char(char c)
{
    unsigned char u = (unsigned char)c;
    return u > 0x20 && u < 0x7f && !is_tspecial(c);
}

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* Read one "; name=value" parameter from *sp. Returns 1 with *name and *value (malloc'd, value
 * unquoted), 0 at the end of the string, -EINVAL when malformed. Like Go's mime package, a
 * backslash in a quoted string escapes only a following tspecial, so Windows paths survive. */
static int next_param(const char **sp, char **name, char **value)
{
    const char *s = skip_ws(*sp);
    *name = *value = NULL;
    while (*s == ';')
        s = skip_ws(s + 1);
    if (!*s)
        return 0;
    const char *n0 = s;
    while (is_token_char(*s))
        s++;
    if (s == n0)
        return -EINVAL;
    size_t nlen = (size_t)(s - n0);
    s = skip_ws(s);
    if (*s != '=')
        return -EINVAL;
    s = skip_ws(s + 1);
    buf_t v;
    buf_init(&v);
    if (*s == '"') {
        s++;
        for (;;) {
            if (!*s) {
                buf_fini(&v);
                return -EINVAL; /* unterminated quoted string */
            }
            if (*s == '"') {
                s++;
                break;
            }
            if (*s == '\\' && is_tspecial(s[1]))
                s++;
            buf_addc(&v, *s++);
        }
    } else {
        const char *v0 = s;
        while (is_token_char(*s))
            s++;
        if (s == v0) {
            buf_fini(&v);
            return -EINVAL;
        }
        buf_add(&v, v0, (size_t)(s - v0));
    }
    s = skip_ws(s);
    if (*s && *s != ';') {
        buf_fini(&v);
        return -EINVAL;
    }
    *name = xstrndup(n0, nlen);
    *value = buf_steal(&v, NULL);
    *sp = s;
    return 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode an RFC 5987 ext-value ("UTF-8''%e2%82%ac.txt"). NULL when malformed, when the charset
 * is not UTF-8 or ASCII, or when it decodes to a NUL byte. */
static char *decode_ext_value(const char *v)
{
    const char *q1 = strchr(v, '\'');
    const char *q2 = q1 ? strchr(q1 + 1, '\'') : NULL;
    if (!q2)
        return NULL;
    size_t cl = (size_t)(q1 - v);
    if (!((cl == 5 && strncasecmp(v, "utf-8", 5) == 0) ||
          (cl == 8 && strncasecmp(v, "us-ascii", 8) == 0)))
        return NULL;
    const char *s = q2 + 1;
    char *out = xmalloc(strlen(s) + 1);
    size_t o = 0;
    while (*s) {
        if (*s == '%') {
            int hi = hexval(s[1]), lo = hi >= 0 ? hexval(s[2]) : -1;
            if (lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(hi << 4 | lo);
            s += 3;
        } else {
            out[o++] = *s++;
        }
    }
    out[o] = '\0';
    return out;
}

int multipart_boundary(const char *content_type, char *out, size_t n, err_t *e)
{
    static const char want[] = "multipart/form-data";
    if (!content_type)
        return err_set(e, -EINVAL, "missing Content-Type, expected multipart/form-data");
    const char *s = skip_ws(content_type);
    if (strncasecmp(s, want, sizeof want - 1) != 0 ||
        (s[sizeof want - 1] && s[sizeof want - 1] != ';' && s[sizeof want - 1] != ' ' &&
         s[sizeof want - 1] != '\t'))
        return err_set(e, -EINVAL, "Content-Type is not multipart/form-data");
    s += sizeof want - 1;
    char *name = NULL, *value = NULL, *boundary = NULL;
    int r;
    while ((r = next_param(&s, &name, &value)) > 0) {
        if (strcasecmp(name, "boundary") == 0 && !boundary)
            boundary = value, value = NULL;
        free(name);
        free(value);
    }
    int rc = 0;
    if (r < 0) {
        rc = err_set(e, -EINVAL, "malformed Content-Type parameters");
        goto out;
    }
    if (!boundary || !*boundary) {
        rc = err_set(e, -EINVAL, "multipart Content-Type without a boundary");
        goto out;
    }
    size_t bl = strlen(boundary);
    if (bl > MULTIPART_MAX_BOUNDARY || boundary[bl - 1] == ' ') {
        rc =
            err_set(e, -EINVAL, "multipart boundary longer than %d characters or ending in a space",
                    MULTIPART_MAX_BOUNDARY);
        goto out;
    }
    for (size_t i = 0; i < bl; i++)
        if ((unsigned char)boundary[i] < 0x20 || (unsigned char)boundary[i] >= 0x7f) {
            rc = err_set(e, -EINVAL, "multipart boundary with control or non-ASCII characters");
            goto out;
        }
    if (bl + 1 > n) {
        rc = err_set(e, -EINVAL, "multipart boundary too long");
        goto out;
    }
    memcpy(out, boundary, bl + 1);
out:
    free(boundary);
    return rc;
}

multipart_t *multipart_new(const char *boundary, const multipart_cb_t *cb, void *ud)
{
    size_t bl = strlen(boundary);
    if (bl == 0 || bl > MULTIPART_MAX_BOUNDARY)
        return NULL;
    multipart_t *m = xcalloc(1, sizeof *m);
    m->cb = cb;
    m->ud = ud;
    memcpy(m->delim, "\r\n--", 4);
    memcpy(m->delim + 4, boundary, bl);
    m->dlen = 4 + bl;
    /* The first delimiter may open the body without a CRLF before it. */
    memcpy(m->hold, "\r\n", 2);
    m->hold_len = 2;
    m->state = MP_PREAMBLE;
    buf_init(&m->hdr);
    return m;
}

void multipart_free(multipart_t *m)
{
    if (!m)
        return;
    buf_fini(&m->hdr);
    free(m);
}

/* Record the parser's first error so that later calls report it again. */
static int fail(multipart_t *m, int code, err_t *e, const char *msg)
{
    m->err = code;
    snprintf(m->err_msg, sizeof m->err_msg, "%s", msg);
    return err_set(e, code, "%s", m->err_msg);
}

/* The same for an error a callback returned: its own message is kept when it set one. */
static int fail_cb(multipart_t *m, int code, err_t *e, const char *fallback)
{
    if (code >= 0)
        code = -EIO;
    if (e && e->code == code && e->msg[0]) {
        char msg[ERR_MSG_MAX];
        memcpy(msg, e->msg, sizeof msg);
        return fail(m, code, e, msg);
    }
    return fail(m, code, e, fallback);
}

/* Hand part bytes to the caller (dropped outside a part body). */
static int emit(multipart_t *m, const char *p, size_t n, err_t *e)
{
    if (m->state != MP_BODY || n == 0 || !m->cb->part_data)
        return 0;
    return m->cb->part_data(m->ud, p, n, e);
}

/* Look for the delimiter across the held bytes and p[0..n). Bytes before it are emitted. Sets
 * *used to the bytes of p consumed and *found when the whole delimiter was consumed. */
static int scan(multipart_t *m, const char *p, size_t n, size_t *used, bool *found, err_t *e)
{
    const size_t dlen = m->dlen;
    int rc;
    *found = false;
    if (m->hold_len) {
        for (size_t i = 0; i < m->hold_len; i++) {
            if (m->hold[i] != '\r')
                continue;
            size_t k = m->hold_len - i;
            if (memcmp(m->hold + i, m->delim, k) != 0)
                continue;
            size_t need = dlen - k;
            if (n >= need) {
                if (memcmp(p, m->delim + k, need) != 0)
                    continue;
                if ((rc = emit(m, m->hold, i, e)) < 0)
                    return rc;
                m->hold_len = 0;
                *used = need;
                *found = true;
                return 0;
            }
            if (memcmp(p, m->delim + k, n) != 0)
                continue;
            /* Still undecided: keep hold[i..] plus all of p. */
            if ((rc = emit(m, m->hold, i, e)) < 0)
                return rc;
            memmove(m->hold, m->hold + i, k);
            memcpy(m->hold + k, p, n);
            m->hold_len = k + n;
            *used = n;
            return 0;
        }
        if ((rc = emit(m, m->hold, m->hold_len, e)) < 0)
            return rc;
        m->hold_len = 0;
    }
    const char *q = memmem(p, n, m->delim, dlen);
    if (q) {
        if ((rc = emit(m, p, (size_t)(q - p), e)) < 0)
            return rc;
        *used = (size_t)(q - p) + dlen;
        *found = true;
        return 0;
    }
    size_t j = n >= dlen ? n - (dlen - 1) : 0;
    for (; j < n; j++)
        if (p[j] == '\r' && memcmp(p + j, m->delim, n - j) == 0)
            break;
    if ((rc = emit(m, p, j, e)) < 0)
        return rc;
    memcpy(m->hold, p + j, n - j);
    m->hold_len = n - j;
    *used = n;
    return 0;
}

/* Parse the header block in m->hdr and start the part. */
static int begin_part(multipart_t *m, err_t *e)
{
    char *name = NULL, *filename = NULL, *filename_ext = NULL, *ctype = NULL;
    bool have_cd = false;
    int rc = 0;
    if (memchr(m->hdr.data, '\0', m->hdr.len)) {
        rc = fail(m, -EINVAL, e, "multipart part header contains a NUL byte");
        goto out;
    }
    /* Unfold and split into lines; the block ends with an empty line. */
    char *s = m->hdr.data;
    char *end = s + m->hdr.len;
    buf_t line;
    buf_init(&line);
    while (s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        char *le = nl ? nl : end;
        char *next = nl ? nl + 1 : end;
        if (le > s && le[-1] == '\r')
            le--;
        bool cont = (*s == ' ' || *s == '\t') && le > s;
        if (!cont && line.len) {
            /* A complete header line is in `line`: handle it. */
            char *colon = memchr(line.data, ':', line.len);
            if (!colon || colon == line.data) {
                buf_fini(&line);
                rc = fail(m, -EINVAL, e, "malformed multipart part header");
                goto out;
            }
            *colon = '\0';
            const char *hn = line.data;
            char *hv = (char *)skip_ws(colon + 1);
            size_t hl = strlen(hv);
            while (hl && (hv[hl - 1] == ' ' || hv[hl - 1] == '\t'))
                hl--;
            hv[hl] = '\0';
            if (strcasecmp(hn, "Content-Disposition") == 0 && !have_cd) {
                have_cd = true;
                const char *p = hv;
                while (is_token_char(*p))
                    p++;
                char *pn = NULL, *pv = NULL;
                int r;
                while ((r = next_param(&p, &pn, &pv)) > 0) {
                    if (strcasecmp(pn, "name") == 0 && !name)
                        name = pv, pv = NULL;
                    else if (strcasecmp(pn, "filename") == 0 && !filename)
                        filename = pv, pv = NULL;
                    else if (strcasecmp(pn, "filename*") == 0 && !filename_ext)
                        filename_ext = pv, pv = NULL;
                    free(pn);
                    free(pv);
                }
                if (r < 0) {
                    buf_fini(&line);
                    rc = fail(m, -EINVAL, e, "malformed multipart Content-Disposition");
                    goto out;
                }
            } else if (strcasecmp(hn, "Content-Type") == 0 && !ctype) {
                ctype = xstrdup(hv);
            }
            buf_reset(&line);
        }
        if (le > s)
            buf_add(&line, s, (size_t)(le - s));
        s = next;
    }
    buf_fini(&line);
    if (filename_ext) {
        char *dec = decode_ext_value(filename_ext);
        if (!dec) {
            rc = fail(m, -EINVAL, e, "malformed multipart filename*");
            goto out;
        }
        free(filename);
        filename = dec;
    }
    m->state = MP_BODY;
    if (m->cb->part_begin && (rc = m->cb->part_begin(m->ud, name, filename, ctype, e)) < 0)
        rc = fail_cb(m, rc, e, "multipart part refused");
out:
    free(name);
    free(filename);
    free(filename_ext);
    free(ctype);
    buf_reset(&m->hdr);
    m->line_start = 0;
    return rc;
}

int multipart_feed(multipart_t *m, const char *data, size_t len, err_t *e)
{
    if (m->err)
        return err_set(e, m->err, "%s", m->err_msg);
    size_t off = 0;
    int rc;
    while (off < len) {
        const char *p = data + off;
        size_t n = len - off;
        switch (m->state) {
        case MP_PREAMBLE:
        case MP_BODY: {
            size_t used = 0;
            bool found = false;
            if ((rc = scan(m, p, n, &used, &found, e)) < 0)
                return fail_cb(m, rc, e, "multipart part data refused");
            off += used;
            if (found) {
                if (m->state == MP_BODY && m->cb->part_end && (rc = m->cb->part_end(m->ud, e)) < 0)
                    return fail_cb(m, rc, e, "multipart part refused");
                m->state = MP_AFTER;
            }
            break;
        }
        case MP_AFTER:
        case MP_PADDING: {
            char c = *p;
            off++;
            if (c == '-' && m->state == MP_AFTER)
                m->state = MP_DASH;
            else if (c == ' ' || c == '\t')
                m->state = MP_PADDING;
            else if (c == '\r')
                m->state = MP_LF;
            else if (c == '\n')
                m->state = MP_HEADERS;
            else
                return fail(m, -EINVAL, e, "malformed multipart boundary line");
            break;
        }
        case MP_DASH:
            off++;
            if (*p != '-')
                return fail(m, -EINVAL, e, "malformed multipart closing boundary");
            m->state = MP_END;
            break;
        case MP_LF:
            off++;
            if (*p != '\n')
                return fail(m, -EINVAL, e, "malformed multipart boundary line");
            m->state = MP_HEADERS;
            break;
        case MP_HEADERS: {
            const char *nl = memchr(p, '\n', n);
            size_t take = nl ? (size_t)(nl - p) + 1 : n;
            if (m->hdr.len + take > MULTIPART_MAX_HEADER)
                return fail(m, -EINVAL, e, "multipart part header too large");
            buf_add(&m->hdr, p, take);
            off += take;
            if (!nl)
                break;
            size_t ll = m->hdr.len - m->line_start;
            bool empty = ll == 1 || (ll == 2 && m->hdr.data[m->line_start] == '\r');
            m->line_start = m->hdr.len;
            if (empty && (rc = begin_part(m, e)) < 0)
                return rc;
            break;
        }
        case MP_END:
            return 0; /* the epilogue is ignored */
        }
    }
    return 0;
}

int multipart_finish(multipart_t *m, err_t *e)
{
    if (m->err)
        return err_set(e, m->err, "%s", m->err_msg);
    if (m->state != MP_END)
        return fail(m, -EINVAL, e,
                    m->state == MP_PREAMBLE ? "multipart body without any boundary"
                                            : "multipart body ended before the closing boundary");
    return 0;
}
