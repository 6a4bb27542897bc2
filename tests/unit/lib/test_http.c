/* Unit tests of src/lib/http (and the Connect layer on top of it): the server runs in-process
 * on an ephemeral port with test routes and is driven with the libcurl client of src/lib/httpc
 * and, where curl cannot produce the bytes we need, with a raw socket. */
#include "buf.h"
#include "connect.h"
#include "http.h"
#include "httpc.h"
#include "pjson.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define BUFFERED_MAX 1000

static http_server_t *srv;
static char base[64];
static atomic_int cleanups;       /* route cleanup() calls */
static atomic_int stream_frees;   /* http_respond_stream free_fn calls */
static atomic_int source_frees;   /* connect_source_t free() calls */
static atomic_int handled_reject; /* handle() calls on the route that on_headers rejects */

/* ---- routes ---------------------------------------------------------------------------- */

static void peer_port(http_req_t *req, void *ud)
{
    (void)ud;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int port = -1;
    if (getpeername(http_req_socket(req), (struct sockaddr *)&ss, &sl) == 0)
        port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                             : ((struct sockaddr_in6 *)&ss)->sin6_port);
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%d", port);
    http_respond_buf(req, 200, "text/plain", &b);
}

static uint32_t sum_bytes(uint32_t sum, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        sum = sum * 31 + (unsigned char)data[i];
    return sum;
}

static void buffered(http_req_t *req, void *ud)
{
    (void)ud;
    size_t len = 0;
    const char *body = http_req_body(req, &len);
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "len=%zu sum=%u nul=%d", len, sum_bytes(0, body, len), body[len] == '\0');
    http_respond_buf(req, 200, "text/plain", &b);
}

struct count {
    size_t n;
    uint32_t sum;
    int calls;
};

static int streamed_headers(http_req_t *req, void *ud, err_t *e)
{
    (void)ud;
    if (http_req_header(req, "X-Deny"))
        return err_set(e, -EKEYREJECTED, "denied");
    struct count *c = arena_alloc(http_req_arena(req), sizeof *c);
    memset(c, 0, sizeof *c);
    http_req_set_state(req, c);
    return 0;
}

static int streamed_body(http_req_t *req, const char *data, size_t len, void *ud, err_t *e)
{
    (void)ud;
    struct count *c = http_req_state(req);
    c->n += len;
    c->sum = sum_bytes(c->sum, data, len);
    c->calls++;
    const char *lim = http_req_header(req, "X-Fail-After");
    if (lim && c->n > strtoul(lim, NULL, 10))
        return err_set(e, -ENOSPC, "disk full after %zu bytes", c->n);
    return 0;
}

static void streamed(http_req_t *req, void *ud)
{
    (void)ud;
    struct count *c = http_req_state(req);
    size_t len = 0;
    http_req_body(req, &len);
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "len=%zu sum=%u buffered=%zu", c->n, c->sum, len);
    http_respond_buf(req, 200, "text/plain", &b);
}

static void count_cleanup(http_req_t *req, void *ud)
{
    (void)req;
    (void)ud;
    atomic_fetch_add(&cleanups, 1);
}

struct gen {
    int i, n;
    bool forever;
};

static ssize_t gen_read(void *ud, char *dst, size_t max)
{
    struct gen *g = ud;
    if (!g->forever && g->i >= g->n)
        return HTTP_STREAM_END;
    if (g->forever)
        usleep(1000);
    int w = snprintf(dst, max, "line %d\n", g->i++);
    return w < 0 || (size_t)w >= max ? HTTP_STREAM_ABORT : (ssize_t)w;
}

static void gen_free(void *ud)
{
    free(ud);
    atomic_fetch_add(&stream_frees, 1);
}

static void stream_route(http_req_t *req, void *ud)
{
    (void)ud;
    struct gen *g = calloc(1, sizeof *g);
    const char *n = http_req_query(req, "n");
    g->n = n ? atoi(n) : 1000;
    g->forever = http_req_query(req, "forever") != NULL;
    http_set_header(req, "X-Stream", "yes");
    http_respond_stream(req, 200, "text/plain", gen_read, gen_free, g);
}

static int reject_headers(http_req_t *req, void *ud, err_t *e)
{
    (void)ud;
    const char *v = http_req_header(req, "x-allow"); /* header names are case-insensitive */
    if (!v || strcmp(v, "yes") != 0)
        return err_set(e, -EACCES, "not allowed: \"%s\"", v ? v : "");
    return 0;
}

static void reject_handle(http_req_t *req, void *ud)
{
    (void)ud;
    atomic_fetch_add(&handled_reject, 1);
    http_respond(req, 200, "text/plain", "allowed", 7);
}

static void echo_meta(http_req_t *req, void *ud)
{
    (void)ud;
    const char *q = http_req_query(req, "q");
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s|%s|%s|%s", http_req_method(req), http_req_path(req), q ? q : "(null)",
               http_req_query(req, "empty") ? "has-empty" : "no-empty");
    http_respond_buf(req, 200, "text/plain", &b);
}

static void no_response(http_req_t *req, void *ud)
{
    (void)req;
    (void)ud;
}

static void double_response(http_req_t *req, void *ud)
{
    (void)ud;
    http_respond(req, 201, "text/plain", "first", 5);
    http_respond(req, 202, "text/plain", "second", 6);
}

static void fd_route(http_req_t *req, void *ud)
{
    (void)ud;
    char path[] = "/tmp/wrenn-unit-http-XXXXXX";
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        http_respond_error(req, -EIO, NULL);
        return;
    }
    unlink(path);
    if (write(fd, "0123456789", 10) != 10) {
        close(fd);
        http_respond_error(req, -EIO, NULL);
        return;
    }
    http_respond_fd(req, 200, "application/octet-stream", fd, 3, 4);
}

static void error_route(http_req_t *req, void *ud)
{
    (void)ud;
    err_t e = {0};
    const char *c = http_req_query(req, "code");
    int code = c ? -atoi(c) : -EIO;
    err_set(&e, code, "detail for %d with \"quotes\" and \xff byte", code);
    http_respond_error(req, code, &e);
}

/* ---- Connect methods ------------------------------------------------------------------- */

static int echo_unary(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    (void)c;
    const char *s = NULL;
    int r = pjson_str(req, "fieldName", &s, e);
    if (r < 0)
        return r;
    if (s && strcmp(s, "missing") == 0)
        return err_set(e, -ENOENT, "no such thing");
    *resp = s ? json_pack("{s:s}", "got", s) : json_object();
    return 0;
}

struct src {
    int pipe[2];
    int n, i;
};

static int src_next(void *ud, buf_t *out, err_t *e)
{
    struct src *s = ud;
    (void)e;
    if (s->n < 0)
        return CONNECT_IDLE; /* idles until the deadline */
    if (s->i >= s->n)
        return s->n == 3 ? err_set(e, -ENOENT, "gone after 3") : CONNECT_DONE;
    buf_printf(out, "{\"i\":%d}", s->i++);
    return CONNECT_MSG;
}

static void src_free(void *ud)
{
    struct src *s = ud;
    close(s->pipe[0]);
    close(s->pipe[1]);
    free(s);
    atomic_fetch_add(&source_frees, 1);
}

static int count_stream(connect_call_t *c, const json_t *req, connect_source_t *out, err_t *e)
{
    (void)c;
    int64_t n = 0;
    int r = pjson_i64(req, "n", &n, NULL, e);
    if (r < 0)
        return r;
    if (n > 1000000)
        return err_set(e, -ERANGE, "n too large");
    struct src *s = calloc(1, sizeof *s);
    if (pipe2(s->pipe, O_CLOEXEC) < 0) {
        free(s);
        return err_errno(e, "pipe");
    }
    s->n = (int)n;
    out->fd = s->pipe[0];
    out->next = src_next;
    out->free = src_free;
    out->keepalive = "{\"keepalive\":{}}";
    out->ud = s;
    return 0;
}

static const connect_method_t m_echo = {.path = "/test.Svc/Echo", .unary = echo_unary};
static const connect_method_t m_count = {.path = "/test.Svc/Count", .stream = count_stream};

static int connect_check(http_req_t *req, void *ud, err_t *e)
{
    (void)ud;
    if (http_req_header(req, "X-Deny"))
        return err_set(e, -EKEYREJECTED, "denied");
    return 0;
}

static http_route_t routes[16];
static connect_binding_t bindings[2];

static void build_routes(void)
{
    int i = 0;
    routes[i++] = (http_route_t){.method = "GET", .path = "/peer", .handle = peer_port};
    routes[i++] = (http_route_t){.method = "POST",
                                 .path = "/buffered",
                                 .handle = buffered,
                                 .cleanup = count_cleanup,
                                 .max_body = BUFFERED_MAX};
    routes[i++] = (http_route_t){.method = "PUT", .path = "/buffered", .handle = buffered};
    routes[i++] = (http_route_t){.method = "POST",
                                 .path = "/streamed",
                                 .on_headers = streamed_headers,
                                 .on_body = streamed_body,
                                 .handle = streamed,
                                 .max_body = 10}; /* ignored for streamed bodies */
    routes[i++] = (http_route_t){.method = "GET", .path = "/stream", .handle = stream_route};
    routes[i++] = (http_route_t){.method = "POST",
                                 .path = "/reject",
                                 .on_headers = reject_headers,
                                 .handle = reject_handle,
                                 .cleanup = count_cleanup};
    routes[i++] = (http_route_t){.method = NULL, .path = "/meta/*", .handle = echo_meta};
    routes[i++] = (http_route_t){.method = "GET", .path = "/noresp", .handle = no_response};
    routes[i++] = (http_route_t){.method = "GET", .path = "/double", .handle = double_response};
    routes[i++] = (http_route_t){.method = "GET", .path = "/fd", .handle = fd_route};
    routes[i++] = (http_route_t){.method = "GET", .path = "/error", .handle = error_route};
    connect_route(&routes[i++], &bindings[0], &m_echo, connect_check, NULL);
    connect_route(&routes[i++], &bindings[1], &m_count, connect_check, NULL);
    routes[i] = (http_route_t){0};
}

static int setup(void **state)
{
    (void)state;
    build_routes();
    http_server_cfg_t cfg = {.addr = "127.0.0.1", .port = 0, .cors = true};
    err_t e = {0};
    if (http_server_start(&cfg, routes, &srv, &e) < 0) {
        fprintf(stderr, "# server: %s\n", e.msg);
        return -1;
    }
    snprintf(base, sizeof base, "http://127.0.0.1:%d", http_server_port(srv));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    http_server_free(srv);
    srv = NULL;
    return 0;
}

/* ---- helpers ----------------------------------------------------------------------------- */

static int do_req(httpc_t *c, const char *method, const char *path, const char *const *headers,
                  const void *body, size_t len, httpc_resp_t *out)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    httpc_req_t req = {.method = method,
                       .url = url,
                       .headers = headers,
                       .body = body,
                       .body_len = len,
                       .timeout_ms = 20000};
    err_t e = {0};
    return httpc_do(c, &req, out, &e);
}

static long request(const char *method, const char *path, const char *const *headers,
                    const void *body, size_t len, httpc_resp_t *out)
{
    httpc_t *c = httpc_new();
    int r = do_req(c, method, path, headers, body, len, out);
    httpc_free(c);
    assert_int_equal(r, 0);
    return out->status;
}

/* A REST error answer: status, JSON {"code":<status>,"message":<string>}. */
static json_t *expect_envelope(const httpc_resp_t *r, long status)
{
    assert_int_equal(r->status, status);
    char ct[128];
    assert_true(httpc_resp_header(r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/json");
    json_error_t je;
    json_t *j = json_loadb(r->body.data, r->body.len, 0, &je);
    if (!j)
        fail_msg("not JSON (%s): %.*s", je.text, (int)r->body.len, r->body.data);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), status);
    assert_true(json_is_string(json_object_get(j, "message")));
    return j;
}

struct feed {
    size_t left;
    size_t chunk;
    uint32_t sum;
    size_t sent;
};

static long feed_read(void *ud, char *dst, size_t max)
{
    struct feed *f = ud;
    size_t n = f->left < max ? f->left : max;
    if (f->chunk && n > f->chunk)
        n = f->chunk;
    for (size_t i = 0; i < n; i++)
        dst[i] = (char)('a' + (f->sent + i) % 23);
    f->sum = sum_bytes(f->sum, dst, n);
    f->sent += n;
    f->left -= n;
    return (long)n;
}

/* POST a chunked body of total bytes, produced in pieces of at most chunk. */
static long post_chunked(const char *path, const char *const *headers, size_t total, size_t chunk,
                         uint32_t *sum, httpc_resp_t *out)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct feed f = {.left = total, .chunk = chunk};
    httpc_req_t req = {.method = "POST",
                       .url = url,
                       .headers = headers,
                       .body_read = feed_read,
                       .ud = &f,
                       .timeout_ms = 20000};
    httpc_t *c = httpc_new();
    err_t e = {0};
    int r = httpc_do(c, &req, out, &e);
    httpc_free(c);
    assert_int_equal(r, 0);
    if (sum)
        *sum = f.sum;
    return out->status;
}

static bool wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 500; i++) {
        if (atomic_load(v) >= want)
            return true;
        usleep(10000);
    }
    return false;
}

/* Raw request over a fresh socket; returns the whole answer up to close or max (NUL-ended). */
static size_t raw(const char *req, size_t req_len, char *out, size_t max)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)http_server_port(srv))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(send(s, req, req_len, MSG_NOSIGNAL), (ssize_t)req_len);
    size_t n = 0;
    while (n + 1 < max) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 3000) <= 0)
            break;
        ssize_t r = recv(s, out + n, max - 1 - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    out[n] = '\0';
    close(s);
    return n;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_keepalive_reuse(void **state)
{
    (void)state;
    httpc_t *c = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    char first[32] = "";
    for (int i = 0; i < 5; i++) {
        assert_int_equal(do_req(c, "GET", "/peer", NULL, NULL, 0, &r), 0);
        assert_int_equal(r.status, 200);
        if (i == 0)
            snprintf(first, sizeof first, "%s", r.body.data);
        else
            assert_string_equal(r.body.data, first); /* same client port: same connection */
    }
    /* A request with a body on the same connection, then a GET again. */
    assert_int_equal(do_req(c, "POST", "/buffered", NULL, "abc", 3, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(do_req(c, "GET", "/peer", NULL, NULL, 0, &r), 0);
    assert_string_equal(r.body.data, first);
    httpc_free(c);
    /* Another client gets another connection. */
    assert_int_equal(request("GET", "/peer", NULL, NULL, 0, &r), 200);
    assert_string_not_equal(r.body.data, first);
    httpc_resp_fini(&r);
}

static void test_buffered(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    int before = atomic_load(&cleanups);
    assert_int_equal(request("POST", "/buffered", NULL, "hello", 5, &r), 200);
    char want[64];
    snprintf(want, sizeof want, "len=5 sum=%u nul=1", sum_bytes(0, "hello", 5));
    assert_string_equal(r.body.data, want);
    assert_true(wait_for(&cleanups, before + 1));
    /* An empty body, and exactly the limit. */
    assert_int_equal(request("POST", "/buffered", NULL, "", 0, &r), 200);
    assert_string_equal(r.body.data, "len=0 sum=0 nul=1");
    char big[BUFFERED_MAX];
    memset(big, 'x', sizeof big);
    assert_int_equal(request("POST", "/buffered", NULL, big, sizeof big, &r), 200);
    snprintf(want, sizeof want, "len=%d sum=%u nul=1", BUFFERED_MAX, sum_bytes(0, big, sizeof big));
    assert_string_equal(r.body.data, want);
    /* Default limit on a route without max_body: 1 MiB is fine. */
    char *mib = calloc(1, HTTP_DEFAULT_MAX_BODY + 1);
    assert_int_equal(request("PUT", "/buffered", NULL, mib, HTTP_DEFAULT_MAX_BODY, &r), 200);
    snprintf(want, sizeof want, "len=%u", HTTP_DEFAULT_MAX_BODY);
    assert_memory_equal(r.body.data, want, strlen(want));
    assert_int_equal(request("PUT", "/buffered", NULL, mib, HTTP_DEFAULT_MAX_BODY + 1, &r), 413);
    free(mib);
    httpc_resp_fini(&r);
}

static void test_chunked_to_buffered(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    uint32_t sum = 0;
    assert_int_equal(post_chunked("/buffered", NULL, 900, 7, &sum, &r), 200);
    char want[64];
    snprintf(want, sizeof want, "len=900 sum=%u nul=1", sum);
    assert_string_equal(r.body.data, want);
    httpc_resp_fini(&r);
}

static void test_chunked_to_streamed(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    uint32_t sum = 0;
    /* 5 MiB through a route whose max_body is 10: streamed bodies are not limited by it. */
    size_t total = 5u << 20;
    assert_int_equal(post_chunked("/streamed", NULL, total, 0, &sum, &r), 200);
    char want[96];
    snprintf(want, sizeof want, "len=%zu sum=%u buffered=0", total, sum);
    assert_string_equal(r.body.data, want);
    /* And with a Content-Length. */
    char *data = malloc(300000);
    for (size_t i = 0; i < 300000; i++)
        data[i] = (char)(i * 7);
    assert_int_equal(request("POST", "/streamed", NULL, data, 300000, &r), 200);
    snprintf(want, sizeof want, "len=300000 sum=%u buffered=0", sum_bytes(0, data, 300000));
    assert_string_equal(r.body.data, want);
    free(data);
    httpc_resp_fini(&r);
}

static void test_on_body_failure(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *h[] = {"X-Fail-After: 1000", NULL};
    assert_int_equal(post_chunked("/streamed", h, 100000, 100, NULL, &r), 507);
    json_t *j = expect_envelope(&r, 507);
    assert_string_equal(json_string_value(json_object_get(j, "message")),
                        "disk full after 1100 bytes");
    json_decref(j);
    httpc_resp_fini(&r);
}

static void test_413(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    int before = atomic_load(&cleanups);
    /* With a Content-Length over the limit: answered before the body is read. */
    char big[BUFFERED_MAX + 1];
    memset(big, 'y', sizeof big);
    assert_int_equal(request("POST", "/buffered", NULL, big, sizeof big, &r), 413);
    json_decref(expect_envelope(&r, 413));
    /* Chunked, so the size is only known as it grows. */
    assert_int_equal(post_chunked("/buffered", NULL, 50000, 333, NULL, &r), 413);
    json_decref(expect_envelope(&r, 413));
    assert_int_equal(post_chunked("/buffered", NULL, BUFFERED_MAX + 1, 0, NULL, &r), 413);
    json_decref(expect_envelope(&r, 413));
    /* cleanup() runs for requests that were refused, too. */
    assert_true(wait_for(&cleanups, before + 3));
    /* A Content-Length far beyond anything, with no body following it. */
    char ans[4096];
    const char *req = "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n"
                      "Connection: close\r\n\r\n";
    raw(req, strlen(req), ans, sizeof ans);
    assert_memory_equal(ans, "HTTP/1.1 413", 12);
    /* The server is still fine. */
    assert_int_equal(request("POST", "/buffered", NULL, "ok", 2, &r), 200);
    httpc_resp_fini(&r);
}

static void test_on_headers_reject(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    int handled = atomic_load(&handled_reject);
    int before = atomic_load(&cleanups);
    const char *deny[] = {"X-Allow: no", NULL};
    char body[5000];
    memset(body, 'b', sizeof body);
    assert_int_equal(request("POST", "/reject", deny, body, sizeof body, &r), 403);
    json_t *j = expect_envelope(&r, 403);
    assert_string_equal(json_string_value(json_object_get(j, "message")), "not allowed: \"no\"");
    json_decref(j);
    assert_int_equal(post_chunked("/reject", NULL, 20000, 100, NULL, &r), 403);
    json_decref(expect_envelope(&r, 403));
    assert_int_equal(atomic_load(&handled_reject), handled);
    assert_true(wait_for(&cleanups, before + 2));
    const char *allow[] = {"X-ALLOW: yes", NULL};
    assert_int_equal(request("POST", "/reject", allow, body, sizeof body, &r), 200);
    assert_string_equal(r.body.data, "allowed");
    assert_int_equal(atomic_load(&handled_reject), handled + 1);
    /* A keep-alive client that was refused can go on using its connection (or a new one). */
    httpc_t *c = httpc_new();
    assert_int_equal(do_req(c, "POST", "/reject", deny, body, sizeof body, &r), 0);
    assert_int_equal(r.status, 403);
    assert_int_equal(do_req(c, "POST", "/reject", allow, "x", 1, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(do_req(c, "GET", "/peer", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_free(c);
    httpc_resp_fini(&r);
}

static void test_early_answer_big_upload(void **state)
{
    (void)state;
    /* A big upload refused before its body is read must still get its answer, not a connection
     * reset: the server closes with the body unread, and that must not destroy the response. */
    size_t big = 8u << 20;
    char *body = calloc(1, big);
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *deny[] = {"X-Deny: 1", NULL};
    for (int i = 0; i < 10; i++) {
        assert_int_equal(request("POST", "/streamed", deny, body, big, &r), 401);
        json_decref(expect_envelope(&r, 401));
        assert_int_equal(request("POST", "/buffered", NULL, body, big, &r), 413);
        json_decref(expect_envelope(&r, 413));
    }
    free(body);
    httpc_resp_fini(&r);
}

static void test_stream_response(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    int before = atomic_load(&stream_frees);
    assert_int_equal(request("GET", "/stream?n=5000", NULL, NULL, 0, &r), 200);
    char v[64];
    assert_true(httpc_resp_header(&r, "Transfer-Encoding", v, sizeof v));
    assert_string_equal(v, "chunked");
    assert_true(httpc_resp_header(&r, "X-Stream", v, sizeof v));
    assert_true(httpc_resp_header(&r, "Cache-Control", v, sizeof v));
    assert_string_equal(v, "no-store");
    /* Every line, in order. */
    buf_t want;
    buf_init(&want);
    for (int i = 0; i < 5000; i++)
        buf_printf(&want, "line %d\n", i);
    assert_int_equal(r.body.len, want.len);
    assert_memory_equal(r.body.data, want.data, want.len);
    buf_fini(&want);
    assert_true(wait_for(&stream_frees, before + 1));
    /* An empty stream. */
    assert_int_equal(request("GET", "/stream?n=0", NULL, NULL, 0, &r), 200);
    assert_int_equal(r.body.len, 0);
    assert_true(wait_for(&stream_frees, before + 2));
    httpc_resp_fini(&r);
}

static int stop_after(void *ud, const char *data, size_t len)
{
    (void)data;
    size_t *got = ud;
    *got += len;
    return *got > 10000 ? -1 : 0;
}

static void test_stream_client_gone(void **state)
{
    (void)state;
    int before = atomic_load(&stream_frees);
    char url[256];
    snprintf(url, sizeof url, "%s/stream?forever=1", base);
    size_t got = 0;
    httpc_req_t req = {
        .method = "GET", .url = url, .on_data = stop_after, .ud = &got, .timeout_ms = 20000};
    httpc_resp_t r;
    httpc_resp_init(&r);
    httpc_t *c = httpc_new();
    err_t e = {0};
    assert_int_equal(httpc_do(c, &req, &r, &e), -ECANCELED);
    httpc_free(c); /* closes the connection */
    /* The server notices and frees the stream. */
    assert_true(wait_for(&stream_frees, before + 1));
    httpc_resp_fini(&r);
}

static void test_404_405(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(request("GET", "/nope", NULL, NULL, 0, &r), 404);
    json_decref(expect_envelope(&r, 404));
    assert_int_equal(request("POST", "/nope", NULL, "x", 1, &r), 404);
    json_decref(expect_envelope(&r, 404));
    assert_int_equal(request("DELETE", "/buffered", NULL, NULL, 0, &r), 405);
    json_decref(expect_envelope(&r, 405));
    assert_int_equal(request("GET", "/buffered", NULL, NULL, 0, &r), 405);
    json_decref(expect_envelope(&r, 405));
    /* A POST with a body to a GET route: 405, body drained, connection still usable. */
    httpc_t *c = httpc_new();
    char body[3000];
    memset(body, 'z', sizeof body);
    assert_int_equal(do_req(c, "POST", "/peer", NULL, body, sizeof body, &r), 0);
    json_decref(expect_envelope(&r, 405));
    assert_int_equal(do_req(c, "GET", "/peer", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_free(c);
    /* Exact paths do not match longer or shorter ones. */
    assert_int_equal(request("GET", "/peer/", NULL, NULL, 0, &r), 404);
    assert_int_equal(request("GET", "/pee", NULL, NULL, 0, &r), 404);
    assert_int_equal(request("GET", "/meta", NULL, NULL, 0, &r), 404);
    httpc_resp_fini(&r);
}

static void test_prefix_query_decoding(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(request("GET", "/meta/a%20b/c?q=x%26y%3Dz&empty=", NULL, NULL, 0, &r), 200);
    assert_string_equal(r.body.data, "GET|/meta/a b/c|x&y=z|has-empty");
    assert_int_equal(request("PATCH", "/meta/", NULL, "1", 1, &r), 200); /* any method */
    assert_string_equal(r.body.data, "PATCH|/meta/|(null)|no-empty");
    httpc_resp_fini(&r);
}

static void test_head(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(request("HEAD", "/peer", NULL, NULL, 0, &r), 200);
    assert_int_equal(r.body.len, 0);
    char v[64];
    assert_true(httpc_resp_header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "text/plain");
    assert_true(httpc_resp_header(&r, "Content-Length", v, sizeof v));
    assert_true(atoi(v) > 0);
    assert_int_equal(request("HEAD", "/nope", NULL, NULL, 0, &r), 404);
    assert_int_equal(r.body.len, 0);
    assert_int_equal(request("HEAD", "/buffered", NULL, NULL, 0, &r), 405);
    /* HEAD on a streamed response: headers only, and the stream is still freed. */
    int before = atomic_load(&stream_frees);
    assert_int_equal(request("HEAD", "/stream?n=10", NULL, NULL, 0, &r), 200);
    assert_int_equal(r.body.len, 0);
    assert_true(wait_for(&stream_frees, before + 1));
    httpc_resp_fini(&r);
}

static void test_cors(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *h[] = {"Origin: http://example.test", "Access-Control-Request-Method: POST",
                       "Access-Control-Request-Headers: content-type,x-access-token", NULL};
    /* Preflights are answered for any path, even unknown ones, without running routes. */
    int handled = atomic_load(&handled_reject);
    assert_int_equal(request("OPTIONS", "/reject", h, NULL, 0, &r), 204);
    assert_int_equal(atomic_load(&handled_reject), handled);
    char v[256];
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    assert_string_equal(v, "*");
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Methods", v, sizeof v));
    assert_non_null(strstr(v, "POST"));
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Headers", v, sizeof v));
    assert_string_equal(v, "content-type,x-access-token");
    assert_int_equal(r.body.len, 0);
    assert_int_equal(request("OPTIONS", "/nope", NULL, NULL, 0, &r), 204);
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Headers", v, sizeof v));
    assert_string_equal(v, "*");
    /* Ordinary answers, errors included, carry the CORS headers. */
    assert_int_equal(request("GET", "/peer", NULL, NULL, 0, &r), 200);
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    assert_true(httpc_resp_header(&r, "Access-Control-Expose-Headers", v, sizeof v));
    assert_non_null(strstr(v, "Connect-Protocol-Version"));
    assert_int_equal(request("GET", "/nope", NULL, NULL, 0, &r), 404);
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    httpc_resp_fini(&r);
}

static void test_handler_mistakes(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    /* A handler that never answers gets a 500 for it. */
    assert_int_equal(request("GET", "/noresp", NULL, NULL, 0, &r), 500);
    json_decref(expect_envelope(&r, 500));
    /* A second answer is dropped; the first one stands. */
    assert_int_equal(request("GET", "/double", NULL, NULL, 0, &r), 201);
    assert_string_equal(r.body.data, "first");
    httpc_resp_fini(&r);
}

static void test_fd_and_errors(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(request("GET", "/fd", NULL, NULL, 0, &r), 200);
    assert_int_equal(r.body.len, 4);
    assert_memory_equal(r.body.data, "3456", 4);
    /* Error envelope: status from the table, message quoted into valid JSON. */
    assert_int_equal(request("GET", "/error?code=2", NULL, NULL, 0, &r), 404);
    json_t *j = expect_envelope(&r, 404);
    assert_string_equal(json_string_value(json_object_get(j, "message")),
                        "detail for -2 with \"quotes\" and \xef\xbf\xbd byte");
    json_decref(j);
    char v[64];
    assert_true(httpc_resp_header(&r, "X-Content-Type-Options", v, sizeof v));
    /* Internal errors hide their detail. */
    assert_int_equal(request("GET", "/error?code=5", NULL, NULL, 0, &r), 500);
    j = expect_envelope(&r, 500);
    assert_string_equal(json_string_value(json_object_get(j, "message")), "internal error");
    json_decref(j);
    httpc_resp_fini(&r);
}

static void test_malformed_requests(void **state)
{
    (void)state;
    char ans[4096];
    static const char *const reqs[] = {
        "GARBAGE\r\n\r\n",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        ("POST /buffered HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
         "3\r\nabc\r\n0\r\n\r\n"),
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        size_t n = raw(reqs[i], strlen(reqs[i]), ans, sizeof ans);
        /* Either a 4xx or a closed connection; never a 2xx, never a crash. */
        if (n >= 12 && ans[9] != '4')
            fail_msg("case %zu answered: %.40s", i, ans);
    }
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(request("GET", "/peer", NULL, NULL, 0, &r), 200);
    httpc_resp_fini(&r);
}

static void test_ambiguous_framing(void **state)
{
    (void)state;
    /* Requests whose body length a proxy in front could read differently: each must get one
     * 400 and a closed connection, so the bytes after the body are never run as a request. */
    static const char *const reqs[] = {
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n"
        "abcdeGET /peer HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\n"
        "abcdeGET /peer HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /peer HTTP/1.1\r\nHost: "
        "x\r\n\r\n",
    };
    char ans[4096];
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        raw(reqs[i], strlen(reqs[i]), ans, sizeof ans);
        if (strncmp(ans, "HTTP/1.1 400", 12) != 0)
            fail_msg("case %zu answered: %.40s", i, ans);
        if (strstr(ans + 1, "HTTP/1.1 "))
            fail_msg("case %zu: a second request was served", i);
    }
    /* The same Content-Length twice is merely redundant. */
    const char *dup = "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                      "Content-Length: 2\r\nConnection: close\r\n\r\nab";
    raw(dup, strlen(dup), ans, sizeof ans);
    assert_memory_equal(ans, "HTTP/1.1 200", 12);
}

/* ---- Connect over the server ------------------------------------------------------------ */

static const char *const unary_h[] = {"Content-Type: application/json",
                                      "Connect-Protocol-Version: 1", NULL};
static const char *const stream_h[] = {"Content-Type: application/connect+json",
                                       "Connect-Protocol-Version: 1", NULL};

static json_t *body_json(const httpc_resp_t *r)
{
    json_error_t je;
    json_t *j = json_loadb(r->body.data, r->body.len, 0, &je);
    if (!j)
        fail_msg("not JSON: %.*s", (int)r->body.len, r->body.data);
    return j;
}

static void expect_connect_error(const httpc_resp_t *r, long status, const char *code)
{
    assert_int_equal(r->status, status);
    json_t *j = body_json(r);
    assert_string_equal(json_string_value(json_object_get(j, "code")), code);
    assert_true(json_is_string(json_object_get(j, "message")));
    json_decref(j);
}

static void test_connect_unary(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *req = "{\"field_name\":\"v\"}";
    assert_int_equal(request("POST", "/test.Svc/Echo", unary_h, req, strlen(req), &r), 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "got")), "v");
    json_decref(j);
    /* Empty body = empty message. */
    assert_int_equal(request("POST", "/test.Svc/Echo", unary_h, "", 0, &r), 200);
    assert_string_equal(r.body.data, "{}");
    req = "{\"fieldName\":\"missing\"}";
    request("POST", "/test.Svc/Echo", unary_h, req, strlen(req), &r);
    expect_connect_error(&r, 404, "not_found");
    request("POST", "/test.Svc/Echo", unary_h, "{nope", 5, &r);
    expect_connect_error(&r, 400, "invalid_argument");
    request("POST", "/test.Svc/Echo", unary_h, "[1]", 3, &r);
    expect_connect_error(&r, 400, "invalid_argument");
    request("POST", "/test.Svc/Echo", unary_h, "{\"fieldName\":1}", 15, &r);
    expect_connect_error(&r, 400, "invalid_argument");
    /* Wrong content type, protocol version, compression, timeout, auth. */
    const char *ct[] = {"Content-Type: text/plain", NULL};
    request("POST", "/test.Svc/Echo", ct, "{}", 2, &r);
    expect_connect_error(&r, 415, "unimplemented");
    const char *pv[] = {"Content-Type: application/json", "Connect-Protocol-Version: 2", NULL};
    request("POST", "/test.Svc/Echo", pv, "{}", 2, &r);
    expect_connect_error(&r, 400, "invalid_argument");
    const char *gz[] = {"Content-Type: application/json", "Content-Encoding: gzip", NULL};
    request("POST", "/test.Svc/Echo", gz, "{}", 2, &r);
    expect_connect_error(&r, 501, "unimplemented");
    const char *to[] = {"Content-Type: application/json", "Connect-Timeout-Ms: soon", NULL};
    request("POST", "/test.Svc/Echo", to, "{}", 2, &r);
    expect_connect_error(&r, 400, "invalid_argument");
    const char *deny[] = {"Content-Type: application/json", "X-Deny: 1", NULL};
    request("POST", "/test.Svc/Echo", deny, "{}", 2, &r);
    expect_connect_error(&r, 401, "unauthenticated");
    const char *charset[] = {"Content-Type: application/json; charset=utf-8", NULL};
    assert_int_equal(request("POST", "/test.Svc/Echo", charset, "{}", 2, &r), 200);
    /* GET is not a Connect method here. */
    assert_int_equal(request("GET", "/test.Svc/Echo", NULL, NULL, 0, &r), 405);
    httpc_resp_fini(&r);
}

typedef struct frames {
    size_t n;
    json_t *msgs[64];
    json_t *end;
    bool bad;
} frames_t;

static void parse_frames(const httpc_resp_t *r, frames_t *f)
{
    memset(f, 0, sizeof *f);
    size_t off = 0;
    while (off < r->body.len) {
        uint8_t flags;
        uint32_t len;
        long n =
            connect_envelope_parse(r->body.data + off, r->body.len - off, 1u << 20, &flags, &len);
        if (n <= 0 || f->end) {
            f->bad = true;
            return;
        }
        json_t *j = json_loadb(r->body.data + off + 5, len, 0, NULL);
        if (!j) {
            f->bad = true;
            return;
        }
        if (flags & CONNECT_FLAG_END_STREAM)
            f->end = j;
        else if (f->n < 64)
            f->msgs[f->n++] = j;
        else
            json_decref(j);
        off += (size_t)n;
    }
}

static void frames_fini(frames_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        json_decref(f->msgs[i]);
    json_decref(f->end);
}

static long stream_call(const char *json, const char *const *extra, httpc_resp_t *r)
{
    buf_t b;
    buf_init(&b);
    connect_envelope_add(&b, 0, json, strlen(json));
    const char *h[8] = {stream_h[0], stream_h[1]};
    int n = 2;
    for (const char *const *p = extra; p && *p && n < 7; p++)
        h[n++] = *p;
    h[n] = NULL;
    long st = request("POST", "/test.Svc/Count", h, b.data, b.len, r);
    buf_fini(&b);
    return st;
}

static const char *end_code(const frames_t *f)
{
    return json_string_value(json_object_get(json_object_get(f->end, "error"), "code"));
}

static void test_connect_stream(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    frames_t f;
    int before = atomic_load(&source_frees);
    assert_int_equal(stream_call("{\"n\":\"5\"}", NULL, &r), 200);
    char v[128];
    assert_true(httpc_resp_header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/connect+json");
    parse_frames(&r, &f);
    assert_false(f.bad);
    assert_int_equal(f.n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(json_integer_value(json_object_get(f.msgs[i], "i")), (json_int_t)i);
    assert_non_null(f.end);
    assert_int_equal(json_object_size(f.end), 0);
    frames_fini(&f);
    assert_true(wait_for(&source_frees, before + 1));

    /* The source fails after three messages: they arrive, then the error. */
    assert_int_equal(stream_call("{\"n\":3}", NULL, &r), 200);
    parse_frames(&r, &f);
    assert_int_equal(f.n, 3);
    assert_string_equal(end_code(&f), "not_found");
    frames_fini(&f);
    assert_true(wait_for(&source_frees, before + 2));

    /* A handler error before the stream starts: 200 with only the end-of-stream error. */
    assert_int_equal(stream_call("{\"n\":2000000}", NULL, &r), 200);
    parse_frames(&r, &f);
    assert_int_equal(f.n, 0);
    assert_string_equal(end_code(&f), "out_of_range");
    frames_fini(&f);
    assert_int_equal(stream_call("{\"n\":true}", NULL, &r), 200);
    parse_frames(&r, &f);
    assert_string_equal(end_code(&f), "invalid_argument");
    frames_fini(&f);
    const char *deny[] = {"X-Deny: 1", NULL};
    assert_int_equal(stream_call("{}", deny, &r), 200);
    parse_frames(&r, &f);
    assert_string_equal(end_code(&f), "unauthenticated");
    frames_fini(&f);
    httpc_resp_fini(&r);
}

static void test_connect_stream_bad_envelopes(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    frames_t f;
    struct {
        const char *body;
        size_t len;
        const char *code;
    } cases[] = {
        {"", 0, "invalid_argument"},
        {"\x00\x00\x00", 3, "invalid_argument"},
        {"\x00\x00\x00\x00\x05{}", 7, "invalid_argument"},   /* shorter than announced */
        {"\x00\x00\x00\x00\x02{}xx", 9, "invalid_argument"}, /* trailing bytes */
        {"\x01\x00\x00\x00\x02{}", 7, "invalid_argument"},   /* compressed */
        {"\x02\x00\x00\x00\x02{}", 7, "invalid_argument"},   /* end-stream from the client */
        {"\x80\x00\x00\x00\x02{}", 7, "invalid_argument"},   /* unknown flag */
        {"\x00\x00\x00\x00\x02[]", 7, "invalid_argument"},   /* not an object */
        {"\x00\x01\x00\x00\x00", 5, "resource_exhausted"},   /* 16 MiB announced */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(
            request("POST", "/test.Svc/Count", stream_h, cases[i].body, cases[i].len, &r), 200);
        parse_frames(&r, &f);
        assert_false(f.bad);
        assert_int_equal(f.n, 0);
        if (!f.end || strcmp(end_code(&f), cases[i].code) != 0)
            fail_msg("case %zu: %.*s", i, (int)r.body.len, r.body.data);
        frames_fini(&f);
    }
    /* A body bigger than the route allows. */
    size_t big = CONNECT_MAX_MESSAGE + 100;
    char *body = calloc(1, big);
    assert_int_equal(request("POST", "/test.Svc/Count", stream_h, body, big, &r), 200);
    parse_frames(&r, &f);
    assert_non_null(f.end);
    assert_string_equal(end_code(&f), "resource_exhausted");
    frames_fini(&f);
    free(body);
    /* A stream method called as unary gets a plain Connect error with an HTTP status. */
    request("POST", "/test.Svc/Count", unary_h, "{}", 2, &r);
    expect_connect_error(&r, 415, "unimplemented");
    httpc_resp_fini(&r);
}

static void test_connect_deadline_keepalive(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    frames_t f;
    int before = atomic_load(&source_frees);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *h[] = {"Connect-Timeout-Ms: 300", NULL};
    assert_int_equal(stream_call("{\"n\":-1}", h, &r), 200);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 290 && ms < 3000);
    parse_frames(&r, &f);
    assert_int_equal(f.n, 0);
    assert_string_equal(end_code(&f), "deadline_exceeded");
    frames_fini(&f);
    assert_true(wait_for(&source_frees, before + 1));

    /* One-second keepalives on an idle stream until a 2.5 s deadline. */
    const char *hk[] = {"Connect-Timeout-Ms: 2500", "Keepalive-Ping-Interval: 1", NULL};
    assert_int_equal(stream_call("{\"n\":-1}", hk, &r), 200);
    parse_frames(&r, &f);
    assert_true(f.n >= 1 && f.n <= 3); /* 2 unless the machine is very busy */
    for (size_t i = 0; i < f.n; i++)
        assert_non_null(json_object_get(f.msgs[i], "keepalive"));
    assert_string_equal(end_code(&f), "deadline_exceeded");
    frames_fini(&f);
    httpc_resp_fini(&r);
}

static void test_connect_stream_client_gone(void **state)
{
    (void)state;
    /* An idle stream with no deadline: the client gives up after 300 ms and closes. The
     * source must be freed soon after (a process stream would otherwise leak its fds). */
    int before = atomic_load(&source_frees);
    buf_t b;
    buf_init(&b);
    connect_envelope_add(&b, 0, "{\"n\":-1}", 8);
    char url[256];
    snprintf(url, sizeof url, "%s/test.Svc/Count", base);
    httpc_req_t req = {.method = "POST",
                       .url = url,
                       .headers = stream_h,
                       .body = b.data,
                       .body_len = b.len,
                       .timeout_ms = 300};
    httpc_resp_t r;
    httpc_resp_init(&r);
    httpc_t *c = httpc_new();
    err_t e = {0};
    assert_int_equal(httpc_do(c, &req, &r, &e), -ETIMEDOUT);
    httpc_free(c);
    assert_true(wait_for(&source_frees, before + 1));
    httpc_resp_fini(&r);
    buf_fini(&b);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    signal(SIGPIPE, SIG_IGN);
    httpc_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_buffered),
        cmocka_unit_test(test_chunked_to_buffered),
        cmocka_unit_test(test_chunked_to_streamed),
        cmocka_unit_test(test_on_body_failure),
        cmocka_unit_test(test_413),
        cmocka_unit_test(test_on_headers_reject),
        cmocka_unit_test(test_early_answer_big_upload),
        cmocka_unit_test(test_stream_response),
        cmocka_unit_test(test_stream_client_gone),
        cmocka_unit_test(test_404_405),
        cmocka_unit_test(test_prefix_query_decoding),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_cors),
        cmocka_unit_test(test_handler_mistakes),
        cmocka_unit_test(test_fd_and_errors),
        cmocka_unit_test(test_malformed_requests),
        cmocka_unit_test(test_ambiguous_framing),
        cmocka_unit_test(test_connect_unary),
        cmocka_unit_test(test_connect_stream),
        cmocka_unit_test(test_connect_stream_bad_envelopes),
        cmocka_unit_test(test_connect_deadline_keepalive),
        cmocka_unit_test(test_connect_stream_client_gone),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
