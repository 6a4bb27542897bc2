#include "connect.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int64_t connect_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long connect_envelope_parse(const void *data, size_t len, size_t max, uint8_t *flags,
                            uint32_t *msg_len)
{
    const uint8_t *p = data;
    if (len < 5)
        return 0;
    *flags = p[0];
    *msg_len = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    if (p[0] & ~(CONNECT_FLAG_COMPRESSED | CONNECT_FLAG_END_STREAM))
        return -EINVAL;
    if (*msg_len > max)
        return -EMSGSIZE;
    if (len - 5 < *msg_len)
        return 0;
    return 5 + (long)*msg_len;
}

void connect_envelope_add(buf_t *out, uint8_t flags, const void *msg, size_t len)
{
    uint8_t h[5] = {flags, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                    (uint8_t)len};
    buf_reserve(out, 5 + len);
    buf_add(out, h, 5);
    buf_add(out, msg, len);
}

void connect_error_json(buf_t *out, int code, const err_t *e)
{
    err_status_t st = err_status(code);
    const char *msg = err_public(e, code);
    buf_printf(out, "{\"code\":\"%s\",\"message\":", st.connect);
    pjson_quote(out, msg, strlen(msg));
    buf_addc(out, '}');
}

void connect_end_stream_add(buf_t *out, int code, const err_t *e)
{
    buf_t j;
    buf_init(&j);
    if (code == 0) {
        buf_adds(&j, "{}");
    } else {
        buf_adds(&j, "{\"error\":");
        connect_error_json(&j, code, e);
        buf_addc(&j, '}');
    }
    connect_envelope_add(out, CONNECT_FLAG_END_STREAM, j.data, j.len);
    buf_fini(&j);
}

long connect_parse_timeout(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 10)
        return -EINVAL;
    long ms = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -EINVAL;
        ms = ms * 10 + (v[i] - '0');
    }
    return ms;
}

static bool ctype_is(const char *got, const char *want)
{
    if (!got)
        return false;
    size_t n = strlen(want);
    if (strncasecmp(got, want, n) != 0)
        return false;
    /* allow parameters such as "; charset=utf-8" */
    return got[n] == '\0' || got[n] == ';' || got[n] == ' ';
}

static void unary_error(http_req_t *req, int code, const err_t *e)
{
    buf_t b;
    buf_init(&b);
    connect_error_json(&b, code, e);
    http_respond_buf(req, err_status(code).http, "application/json", &b);
}

/* Errors of a streaming method travel in the end-of-stream envelope of a 200 answer, as
 * connect-go does; only a wrong content type is answered with an HTTP status. */
static void stream_error(http_req_t *req, int code, const err_t *e)
{
    const char *ct = http_req_header(req, "Content-Type");
    if (!ctype_is(ct, "application/connect+json")) {
        unary_error(req, code, e);
        return;
    }
    buf_t b;
    buf_init(&b);
    connect_end_stream_add(&b, code, e);
    http_respond_buf(req, 200, "application/connect+json", &b);
}

static int on_headers(http_req_t *req, void *ud, err_t *e)
{
    connect_binding_t *ru = ud;
    const connect_method_t *m = ru->m;
    const char *ct = http_req_header(req, "Content-Type");
    if (m->unary && !ctype_is(ct, "application/json"))
        return err_set(e, -EPROTONOSUPPORT, "unsupported content type %s (use application/json)",
                       ct ? ct : "(none)");
    if (m->stream && !ctype_is(ct, "application/connect+json"))
        return err_set(e, -EPROTONOSUPPORT,
                       "unsupported content type %s (use application/connect+json)",
                       ct ? ct : "(none)");
    const char *pv = http_req_header(req, "Connect-Protocol-Version");
    if (pv && strcmp(pv, "1") != 0)
        return err_set(e, -EINVAL, "connect-protocol-version must be 1");
    const char *enc =
        http_req_header(req, m->unary ? "Content-Encoding" : "Connect-Content-Encoding");
    if (enc && strcmp(enc, "identity") != 0)
        return err_set(e, -ENOSYS, "compression %s is not supported", enc);
    const char *to = http_req_header(req, "Connect-Timeout-Ms");
    if (to && connect_parse_timeout(to) < 0)
        return err_set(e, -EINVAL, "malformed connect-timeout-ms");
    if (ru->check)
        return ru->check(req, ru->ud, e);
    return 0;
}

#define STREAM_COMPACT_AT (1u << 20) /* sent bytes kept at the head of a stream's buffer */

struct stream {
    connect_source_t src;
    buf_t pending;
    size_t off;
    buf_t msg;
    bool finished;
    int sock;
    int64_t deadline_ms, keepalive_ms, last_ms;
};

static void stream_free(void *ud)
{
    struct stream *s = ud;
    if (s->src.free)
        s->src.free(s->src.ud);
    buf_fini(&s->pending);
    buf_fini(&s->msg);
    free(s);
}

static void finish(struct stream *s, int code, const err_t *e)
{
    connect_end_stream_add(&s->pending, code, e);
    s->finished = true;
}

/* Move whatever the source has ready into s->pending without blocking. Returns true when
 * anything was added. */
static bool produce(struct stream *s, size_t want)
{
    bool added = false;
    while (!s->finished && s->pending.len - s->off < want) {
        err_t e = {0};
        buf_reset(&s->msg);
        int r = s->src.next(s->src.ud, &s->msg, &e);
        if (r == CONNECT_MSG) {
            connect_envelope_add(&s->pending, 0, s->msg.data, s->msg.len);
            s->last_ms = connect_now_ms();
            added = true;
        } else if (r == CONNECT_DONE) {
            finish(s, 0, NULL);
            added = true;
        } else if (r < 0) {
            finish(s, r, &e);
            added = true;
        } else {
            break;
        }
    }
    return added;
}

static ssize_t stream_read(void *ud, char *dst, size_t max)
{
    struct stream *s = ud;
    for (;;) {
        if (s->pending.len > s->off) {
            /* Top up with whatever is ready so that one chunk carries many messages. */
            produce(s, max);
            size_t n = s->pending.len - s->off;
            if (n > max)
                n = max;
            memcpy(dst, s->pending.data + s->off, n);
            s->off += n;
            if (s->off == s->pending.len) {
                buf_reset(&s->pending);
                s->off = 0;
            } else if (s->off >= STREAM_COMPACT_AT) {
                /* Drop what was sent: top-ups rarely leave the buffer empty, and without this
                 * it would grow with the length of the whole stream. */
                buf_consume(&s->pending, s->off);
                s->off = 0;
            }
            return (ssize_t)n;
        }
        if (s->finished)
            return HTTP_STREAM_END;
        if (produce(s, max))
            continue;

        int64_t now = connect_now_ms();
        if (s->deadline_ms && now >= s->deadline_ms) {
            err_t e = {0};
            err_set(&e, -ETIMEDOUT, "deadline exceeded");
            finish(s, -ETIMEDOUT, &e);
            continue;
        }
        if (s->src.keepalive && s->keepalive_ms > 0 && now >= s->last_ms + s->keepalive_ms) {
            connect_envelope_add(&s->pending, 0, s->src.keepalive, strlen(s->src.keepalive));
            s->last_ms = now;
            continue;
        }
        int64_t wait = 1000;
        if (s->deadline_ms && s->deadline_ms - now < wait)
            wait = s->deadline_ms - now;
        if (s->src.keepalive && s->keepalive_ms > 0 && s->last_ms + s->keepalive_ms - now < wait)
            wait = s->last_ms + s->keepalive_ms - now;
        if (wait < 0)
            wait = 0;
        struct pollfd p[2] = {{.fd = s->src.fd, .events = POLLIN},
                              {.fd = s->sock, .events = POLLRDHUP}};
        int pr = poll(p, 2, (int)wait);
        if (pr < 0 && errno != EINTR)
            return HTTP_STREAM_ABORT;
        if (pr > 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            return HTTP_STREAM_ABORT; /* the client went away */
    }
}

static void handle(http_req_t *req, void *ud)
{
    connect_binding_t *ru = ud;
    const connect_method_t *m = ru->m;
    err_t e = {0};
    json_t *in = NULL;
    int r;
    size_t len = 0;
    const char *body = http_req_body(req, &len);

    connect_call_t call = {.req = req, .ud = ru->ud};
    const char *to = http_req_header(req, "Connect-Timeout-Ms");
    long tms = to ? connect_parse_timeout(to) : 0;
    if (tms > 0)
        call.deadline_ms = connect_now_ms() + tms;
    const char *ka = http_req_header(req, "Keepalive-Ping-Interval");
    long kas = ka ? strtol(ka, NULL, 10) : 0;
    call.keepalive_ms = (kas > 0 && kas < 86400 ? kas : 90) * 1000;

    if (m->unary) {
        if ((r = pjson_parse(body, len, &in, &e)) < 0) {
            unary_error(req, r, &e);
            return;
        }
        json_t *out = NULL;
        r = m->unary(&call, in, &out, &e);
        json_decref(in);
        if (r < 0) {
            unary_error(req, r, &e);
            json_decref(out);
            return;
        }
        if (!out)
            out = json_object();
        http_respond_json(req, 200, out);
        json_decref(out);
        return;
    }

    uint8_t flags = 0;
    uint32_t mlen = 0;
    long env = connect_envelope_parse(body, len, CONNECT_MAX_MESSAGE, &flags, &mlen);
    if (env <= 0 || (size_t)env != len) {
        err_set(&e, env == -EMSGSIZE ? -EMSGSIZE : -EINVAL,
                "request body must be exactly one envelope");
        stream_error(req, e.code, &e);
        return;
    }
    if (flags != 0) {
        err_set(&e, -EINVAL, "request envelope must be an uncompressed message");
        stream_error(req, -EINVAL, &e);
        return;
    }
    if ((r = pjson_parse(body + 5, mlen, &in, &e)) < 0) {
        stream_error(req, r, &e);
        return;
    }
    struct stream *s = xcalloc(1, sizeof *s);
    s->src.fd = -1;
    buf_init(&s->pending);
    buf_init(&s->msg);
    r = m->stream(&call, in, &s->src, &e);
    json_decref(in);
    if (r < 0) {
        s->src.free = NULL; /* the handler cleaned up after itself */
        stream_free(s);
        stream_error(req, r, &e);
        return;
    }
    s->sock = http_req_socket(req);
    s->deadline_ms = call.deadline_ms;
    s->keepalive_ms = call.keepalive_ms;
    s->last_ms = connect_now_ms();
    http_respond_stream(req, 200, "application/connect+json", stream_read, stream_free, s);
}

void connect_route(http_route_t *route, connect_binding_t *ru, const connect_method_t *method,
                   int (*check)(http_req_t *req, void *ud, err_t *e), void *ud)
{
    ru->m = method;
    ru->check = check;
    ru->ud = ud;
    memset(route, 0, sizeof *route);
    route->method = "POST";
    route->path = method->path;
    route->on_headers = on_headers;
    route->handle = handle;
    route->max_body = CONNECT_MAX_MESSAGE + 5;
    route->error = method->unary ? unary_error : stream_error;
    route->ud = ru;
}
