#include "http.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct http_server {
    struct MHD_Daemon *d;
    const http_route_t *routes;
    bool cors;
    int port;
};

struct hdr {
    char *name, *value;
};

struct http_req {
    http_server_t *srv;
    struct MHD_Connection *conn;
    const http_route_t *route;
    char *method;
    char *path;
    arena_t *arena;
    buf_t body;
    uint64_t body_seen;
    size_t max_body;
    err_t err; /* set when the body failed; answered at the end */
    bool failed;
    bool responded;
    bool early; /* answered before a request body was read (see linger_close) */
    void *state;
    struct hdr *hdrs;
    size_t nhdrs;
};

const char *http_req_method(const http_req_t *r)
{
    return r->method;
}
const char *http_req_path(const http_req_t *r)
{
    return r->path;
}
struct arena *http_req_arena(http_req_t *r)
{
    return r->arena;
}
void http_req_set_state(http_req_t *r, void *state)
{
    r->state = state;
}
void *http_req_state(const http_req_t *r)
{
    return r->state;
}

const char *http_req_header(const http_req_t *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *http_req_query(const http_req_t *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct query_each {
    void (*fn)(void *ud, const char *name, const char *value);
    void *ud;
};

static enum MHD_Result query_each_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct query_each *q = cls;
    q->fn(q->ud, key, value ? value : "");
    return MHD_YES;
}

void http_req_query_each(const http_req_t *r,
                         void (*fn)(void *ud, const char *name, const char *value), void *ud)
{
    struct query_each q = {fn, ud};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, query_each_cb, &q);
}

const char *http_req_body(const http_req_t *r, size_t *len)
{
    if (len)
        *len = r->body.len;
    return r->body.data ? r->body.data : "";
}

int http_req_socket(const http_req_t *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

void http_req_peer(const http_req_t *r, char *out, size_t n)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (n)
        out[0] = '\0';
    if (!ci || !ci->client_addr || !n)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        /* An IPv4 client on a dual-stack socket is one address, whichever way it arrives. */
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], out, (socklen_t)n);
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, out, (socklen_t)n);
    }
}

bool http_socket_gone(int sock)
{
    if (sock < 0)
        return true;
    struct pollfd p = {.fd = sock, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

void http_set_header(http_req_t *r, const char *name, const char *value)
{
    r->hdrs = xrealloc(r->hdrs, (r->nhdrs + 1) * sizeof *r->hdrs);
    r->hdrs[r->nhdrs].name = xstrdup(name);
    r->hdrs[r->nhdrs].value = xstrdup(value);
    r->nhdrs++;
}

static void add_cors(struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    MHD_add_response_header(
        resp, "Access-Control-Expose-Headers",
        "Connect-Protocol-Version, Connect-Timeout-Ms, Grpc-Status, Grpc-Message, Location, "
        "Cache-Control, X-Content-Type-Options, Content-Encoding, Content-Disposition");
}

static void queue(http_req_t *r, int status, struct MHD_Response *resp, const char *ctype)
{
    if (r->responded) {
        /* A second answer is a programming error; keep the first. */
        log_error("http.double_response", "path=%s", r->path);
        MHD_destroy_response(resp);
        return;
    }
    r->responded = true;
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; i < r->nhdrs; i++)
        MHD_add_response_header(resp, r->hdrs[i].name, r->hdrs[i].value);
    if (r->srv->cors)
        add_cors(resp);
    if (MHD_queue_response(r->conn, (unsigned)status, resp) != MHD_YES)
        log_warn("http.queue_failed", "path=%s status=%d", r->path, status);
    MHD_destroy_response(resp);
}

void http_respond(http_req_t *r, int status, const char *content_type, const void *body, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    queue(r, status, resp, content_type);
}

void http_respond_buf(http_req_t *r, int status, const char *content_type, buf_t *b)
{
    size_t len = 0;
    char *data = buf_steal(b, &len);
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, data, free);
    queue(r, status, resp, content_type);
}

void http_respond_json(http_req_t *r, int status, const json_t *body)
{
    buf_t b;
    buf_init(&b);
    pjson_dump(body, &b);
    http_respond_buf(r, status, "application/json", &b);
}

void http_respond_error(http_req_t *r, int code, const err_t *e)
{
    err_status_t st = err_status(code);
    buf_t b;
    buf_init(&b);
    const char *msg = err_public(e, code);
    buf_printf(&b, "{\"code\":%d,\"message\":", st.http);
    pjson_quote(&b, msg, strlen(msg));
    buf_addc(&b, '}');
    http_set_header(r, "X-Content-Type-Options", "nosniff");
    http_respond_buf(r, st.http, "application/json", &b);
}

void http_respond_fd(http_req_t *r, int status, const char *content_type, int fd, uint64_t offset,
                     uint64_t size)
{
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(size, fd, offset);
    if (!resp) {
        close(fd);
        http_respond_error(r, -EIO, NULL);
        return;
    }
    queue(r, status, resp, content_type);
}

struct stream {
    http_stream_read_fn read;
    void (*free_fn)(void *);
    void *ud;
};

static ssize_t stream_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct stream *s = cls;
    ssize_t n = s->read(s->ud, buf, max);
    if (n == HTTP_STREAM_END)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (n <= 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    return n;
}

static void stream_free(void *cls)
{
    struct stream *s = cls;
    if (s->free_fn)
        s->free_fn(s->ud);
    free(s);
}

void http_respond_stream(http_req_t *r, int status, const char *content_type,
                         http_stream_read_fn read, void (*free_fn)(void *ud), void *ud)
{
    struct stream *s = xcalloc(1, sizeof *s);
    s->read = read;
    s->free_fn = free_fn;
    s->ud = ud;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_cb, s, stream_free);
    /* Streams are usually read as they come; make sure nothing sits in a proxy's buffer. */
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    queue(r, status, resp, content_type);
}

static void respond_err(http_req_t *r, int code, const err_t *e)
{
    if (r->route && r->route->error)
        r->route->error(r, code, e);
    else
        http_respond_error(r, code, e);
}

static bool path_matches(const char *pattern, const char *path)
{
    size_t n = strlen(pattern);
    if (n && pattern[n - 1] == '*')
        return strncmp(pattern, path, n - 1) == 0;
    return strcmp(pattern, path) == 0;
}

static bool method_matches(const char *want, const char *got)
{
    if (!want)
        return true;
    if (strcmp(want, got) == 0)
        return true;
    return strcmp(want, "GET") == 0 && strcmp(got, "HEAD") == 0;
}

/* Find the route; *path_known tells a 405 from a 404. */
static const http_route_t *route_find(const http_route_t *routes, const char *method,
                                      const char *path, bool *path_known)
{
    *path_known = false;
    for (const http_route_t *rt = routes; rt->path; rt++) {
        if (!path_matches(rt->path, path))
            continue;
        *path_known = true;
        if (method_matches(rt->method, method))
            return rt;
    }
    return NULL;
}

static void answer_preflight(http_req_t *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(resp, "Access-Control-Allow-Methods",
                            "HEAD, GET, POST, PUT, PATCH, DELETE");
    const char *h = http_req_header(r, "Access-Control-Request-Headers");
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", h ? h : "*");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "7200");
    queue(r, 204, resp, NULL);
}

/* How the request says its body is framed. */
struct framing {
    const char *cl; /* the first Content-Length value */
    bool cl_conflict;
    bool te;
};

static enum MHD_Result framing_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    (void)kind;
    struct framing *f = cls;
    if (!value)
        value = "";
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (f->cl && strcmp(f->cl, value) != 0)
            f->cl_conflict = true;
        if (!f->cl)
            f->cl = value;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->te = true;
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)version;
    http_server_t *srv = cls;
    http_req_t *r = *con_cls;
    err_t e = {0};

    if (!r) {
        r = xcalloc(1, sizeof *r);
        r->srv = srv;
        r->conn = conn;
        r->method = xstrdup(method);
        r->path = xstrdup(url);
        r->arena = arena_new();
        buf_init(&r->body);
        *con_cls = r;

        const char *cl = http_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
        bool has_body = (cl && strtoull(cl, NULL, 10) > 0) ||
                        http_req_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING);
        /* MHD frames the body by the first of several differing Content-Length headers and
         * lets Transfer-Encoding and Content-Length coexist; a proxy in front that reads them
         * the other way would see a different request boundary (request smuggling). RFC 9112
         * §6.3 makes both an error. The early answer also makes MHD close the connection. */
        struct framing fr = {0};
        MHD_get_connection_values(conn, MHD_HEADER_KIND, framing_cb, &fr);
        if (fr.cl_conflict || (fr.te && fr.cl)) {
            err_set(&e, -EINVAL, "conflicting Content-Length and Transfer-Encoding headers");
            http_respond_error(r, -EINVAL, &e);
            r->early = true;
            return MHD_YES;
        }
        if (srv->cors && strcmp(method, "OPTIONS") == 0) {
            answer_preflight(r);
            r->early = has_body;
            return MHD_YES;
        }
        bool known = false;
        r->route = route_find(srv->routes, method, r->path, &known);
        if (!r->route) {
            if (known) {
                err_set(&e, -EOPNOTSUPP, "method %s not allowed on %s", method, r->path);
                http_respond_error(r, -EOPNOTSUPP, &e);
            } else {
                err_set(&e, -ENODEV, "no route for %s", r->path);
                http_respond_error(r, -ENODEV, &e);
            }
            r->early = has_body;
            return MHD_YES;
        }
        r->max_body = r->route->max_body ? r->route->max_body : HTTP_DEFAULT_MAX_BODY;
        /* Authentication and other header checks come first: a caller without credentials
         * learns nothing about the route's limits. */
        if (r->route->on_headers) {
            int rc = r->route->on_headers(r, r->route->ud, &e);
            if (rc < 0) {
                respond_err(r, rc, &e);
                r->early = has_body;
                return MHD_YES;
            }
        }
        if (!r->route->on_body) {
            if (cl && strtoull(cl, NULL, 10) > r->max_body) {
                err_set(&e, -EMSGSIZE, "request body larger than %zu bytes", r->max_body);
                respond_err(r, -EMSGSIZE, &e);
                r->early = true;
                return MHD_YES;
            }
        }
        return MHD_YES;
    }

    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->responded || r->failed)
            return MHD_YES; /* drain what follows an early answer or a failure */
        r->body_seen += n;
        if (r->route->on_body) {
            int rc = r->route->on_body(r, upload, n, r->route->ud, &r->err);
            if (rc < 0) {
                r->failed = true;
                if (!r->err.code)
                    r->err.code = rc;
            }
        } else if (r->body.len + n > r->max_body) {
            r->failed = true;
            err_set(&r->err, -EMSGSIZE, "request body larger than %zu bytes", r->max_body);
            buf_fini(&r->body);
        } else {
            buf_add(&r->body, upload, n);
        }
        return MHD_YES;
    }

    if (r->responded)
        return MHD_YES;
    if (r->failed) {
        respond_err(r, r->err.code, &r->err);
        return MHD_YES;
    }
    r->route->handle(r, r->route->ud);
    if (!r->responded) {
        log_error("http.no_response", "path=%s", r->path);
        http_respond_error(r, -EIO, NULL);
    }
    return MHD_YES;
}

/* An answer queued before the request body was read makes MHD close the connection with the
 * rest of the body unread, and closing a socket with unread data sends a RST that can destroy
 * the answer before the client has read it: a large upload refused with 401 or 413 then looks
 * like a network error to the client. Like Go's net/http, send our FIN first, then read and drop
 * what the client is still sending until it closes, for at most two seconds. Runs on the
 * connection's own thread. */
static void linger_close(int fd)
{
    if (fd < 0 || shutdown(fd, SHUT_WR) < 0)
        return;
    char scratch[16384];
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = 2000 - ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    http_req_t *r = *con_cls;
    if (!r)
        return;
    if (r->early && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci)
            linger_close(ci->connect_fd);
    }
    if (r->route && r->route->cleanup)
        r->route->cleanup(r, r->route->ud);
    for (size_t i = 0; i < r->nhdrs; i++) {
        free(r->hdrs[i].name);
        free(r->hdrs[i].value);
    }
    free(r->hdrs);
    buf_fini(&r->body);
    arena_free(r->arena);
    free(r->method);
    free(r->path);
    free(r);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '"')
            *p = '\'';
    log_debug("http.mhd", "detail=\"%s\"", msg);
}

int http_server_start(const http_server_cfg_t *cfg, const http_route_t *routes, http_server_t **out,
                      err_t *e)
{
    http_server_t *s = xcalloc(1, sizeof *s);
    s->routes = routes;
    s->cors = cfg->cors;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ERROR_LOG | MHD_USE_TURBO;
    struct sockaddr_storage ss = {0};
    socklen_t slen = 0;
    if (cfg->addr && *cfg->addr) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, cfg->addr, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            s4->sin_port = htons((uint16_t)cfg->port);
            slen = sizeof *s4;
        } else if (inet_pton(AF_INET6, cfg->addr, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons((uint16_t)cfg->port);
            slen = sizeof *s6;
            flags |= MHD_USE_IPv6;
        } else {
            free(s);
            return err_set(e, -EINVAL, "bad listen address %s", cfg->addr);
        }
    } else {
        flags |= MHD_USE_DUAL_STACK;
    }
    s->d = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, s, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)(cfg->idle_timeout_s ? cfg->idle_timeout_s : 640), MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(cfg->max_connections ? cfg->max_connections : 1024),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024), MHD_OPTION_THREAD_STACK_SIZE,
        (size_t)(1024 * 1024), MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, slen ? MHD_OPTION_SOCK_ADDR : MHD_OPTION_END, (struct sockaddr *)&ss,
        MHD_OPTION_END);
    if (!s->d) {
        free(s);
        return err_set(e, -EADDRINUSE, "cannot listen on port %d", cfg->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : cfg->port;
    *out = s;
    return 0;
}

int http_server_port(const http_server_t *s)
{
    return s->port;
}

void http_server_free(http_server_t *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    free(s);
}
