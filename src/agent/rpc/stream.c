/* The streaming methods: ExecStream and ReadFileStream (server streams fed by a worker thread
 * that talks to the guest) and WriteFileStream (a client stream piped into a guest upload). */
#include "rpc_int.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Messages a worker may queue before it waits for the client to take some. */
#define PUMP_QUEUE 32
/* ReadFileStream chunk size (the spec's bound). */
#define READ_CHUNK (64u << 10)

/* A worker thread producing messages for one server stream. Shared by the worker and the
 * Connect layer (refs), guarded by lock. */
typedef struct pump {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int efd;
    int refs;
    bool cancelled, done;
    int rc;
    err_t e;
    buf_t q[PUMP_QUEUE];
    size_t head, n;
    /* work */
    rpc_t *rpc;
    envdc_t target;
    char *id, *cmd, *path;
    char **args;
    size_t nargs;
    long timeout_ms;
    buf_t chunk; /* ReadFileStream: bytes not yet sent */
} pump_t;

static void pump_unref(pump_t *p)
{
    pthread_mutex_lock(&p->lock);
    bool last = --p->refs == 0;
    pthread_mutex_unlock(&p->lock);
    if (!last)
        return;
    for (size_t i = 0; i < PUMP_QUEUE; i++)
        buf_fini(&p->q[i]);
    buf_fini(&p->chunk);
    close(p->efd);
    for (size_t i = 0; i < p->nargs; i++)
        free(p->args[i]);
    free(p->args);
    free(p->id);
    free(p->cmd);
    free(p->path);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p);
}

static pump_t *pump_new(rpc_t *rpc)
{
    pump_t *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->refs = 1;
    p->rpc = rpc;
    for (size_t i = 0; i < PUMP_QUEUE; i++)
        buf_init(&p->q[i]);
    buf_init(&p->chunk);
    return p;
}

static void wake(pump_t *p)
{
    uint64_t one = 1;
    ssize_t w = write(p->efd, &one, sizeof one);
    (void)w;
}

/* Queue one JSON message; waits while the queue is full. -1 when the client went away. */
static int push(pump_t *p, const json_t *msg)
{
    pthread_mutex_lock(&p->lock);
    while (p->n == PUMP_QUEUE && !p->cancelled)
        pthread_cond_wait(&p->cond, &p->lock);
    if (p->cancelled) {
        pthread_mutex_unlock(&p->lock);
        return -1;
    }
    buf_t *b = &p->q[(p->head + p->n) % PUMP_QUEUE];
    buf_reset(b);
    pjson_dump(msg, b);
    p->n++;
    pthread_mutex_unlock(&p->lock);
    wake(p);
    return 0;
}

static void finish(pump_t *p, int rc, const err_t *e)
{
    pthread_mutex_lock(&p->lock);
    p->done = true;
    p->rc = rc;
    if (rc < 0 && e)
        p->e = *e;
    pthread_mutex_unlock(&p->lock);
    wake(p);
}

static int pump_next(void *ud, buf_t *out, err_t *e)
{
    pump_t *p = ud;
    uint64_t v;
    ssize_t r = read(p->efd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&p->lock);
    int rc = CONNECT_IDLE;
    if (p->n) {
        buf_t *b = &p->q[p->head];
        buf_add(out, b->data, b->len);
        buf_reset(b);
        p->head = (p->head + 1) % PUMP_QUEUE;
        p->n--;
        pthread_cond_signal(&p->cond);
        rc = CONNECT_MSG;
    } else if (p->done) {
        rc = p->rc < 0 ? p->rc : CONNECT_DONE;
        if (p->rc < 0 && e)
            *e = p->e;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

static void pump_free(void *ud)
{
    pump_t *p = ud;
    pthread_mutex_lock(&p->lock);
    p->cancelled = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pump_unref(p);
}

static bool cancelled(pump_t *p)
{
    pthread_mutex_lock(&p->lock);
    bool c = p->cancelled;
    pthread_mutex_unlock(&p->lock);
    return c;
}

/* Start fn on a detached worker holding its own reference, and hand the stream to src. */
static int pump_start(pump_t *p, void *(*fn)(void *), connect_source_t *src, err_t *e)
{
    p->refs++;
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&th, &at, fn, p);
    pthread_attr_destroy(&at);
    if (r != 0) {
        p->refs--;
        pump_unref(p);
        return err_set(e, -EAGAIN, "cannot start a stream worker");
    }
    src->fd = p->efd;
    src->next = pump_next;
    src->free = pump_free;
    src->ud = p;
    return 0;
}

/* ---- ExecStream -------------------------------------------------------------------------- */

static int ev_start(void *ud, uint32_t pid)
{
    json_t *m = json_pack("{s:{s:{s:I}}}", "event", "start", "pid", (json_int_t)pid);
    int rc = push(ud, m);
    json_decref(m);
    return rc;
}

static int ev_output(void *ud, int stream, const char *data, size_t len)
{
    json_t *d = json_object();
    json_object_set_new(d, stream == 1 ? "stdout" : "stderr", rpc__b64(data, len));
    json_t *m = json_pack("{s:{s:o}}", "event", "data", d);
    int rc = push(ud, m);
    json_decref(m);
    return rc;
}

static int ev_end(void *ud, int code, const char *err)
{
    json_t *end = json_object();
    json_object_set_new(end, "exitCode", json_integer(code));
    if (err && *err)
        json_object_set_new(end, "error", json_string(err));
    json_t *m = json_pack("{s:{s:o}}", "event", "end", end);
    int rc = push(ud, m);
    json_decref(m);
    return rc;
}

static int ev_idle(void *ud)
{
    return cancelled(ud) ? -1 : 0;
}

static void *exec_worker(void *ud)
{
    pump_t *p = ud;
    err_t e = {0};
    envdc_exec_req_t q = {.cmd = p->cmd,
                          .args = (const char *const *)p->args,
                          .nargs = p->nargs,
                          .timeout_ms = p->timeout_ms};
    envdc_exec_cb_t cb = {ev_start, ev_output, ev_end, ev_idle};
    int rc = envdc_exec(&p->target, &q, &cb, p, &e);
    sbx_touch(p->rpc->mgr, p->id, NULL);
    if (rc < 0 && !cancelled(p)) {
        err_wrap(&e, "exec stream");
        rpc__log_fail("ExecStream", p->id, rc, &e);
    }
    finish(p, rc, &e);
    pump_unref(p);
    return NULL;
}

int rpc__exec_stream(connect_call_t *c, const json_t *in, connect_source_t *src, err_t *e)
{
    rpc_t *r = c->ud;
    rpc_exec_t x;
    int rc = rpc__exec_req(in, &x, false, e);
    if (rc < 0)
        return rc;
    pump_t *p = pump_new(r);
    if ((rc = sbx_target(r->mgr, x.id, &p->target, e)) < 0) {
        free(x.args);
        pump_unref(p);
        return rc;
    }
    p->id = xstrdup(x.id);
    p->cmd = xstrdup(x.cmd);
    p->nargs = x.nargs;
    p->args = xcalloc(x.nargs + 1, sizeof *p->args);
    for (size_t i = 0; i < x.nargs; i++)
        p->args[i] = xstrdup(x.args[i]);
    p->timeout_ms = x.timeout_ms;
    free(x.args);
    return pump_start(p, exec_worker, src, e);
}

/* ---- ReadFileStream ---------------------------------------------------------------------- */

static int flush_chunk(pump_t *p)
{
    json_t *m = json_object();
    json_object_set_new(m, "chunk", rpc__b64(p->chunk.data, p->chunk.len));
    int rc = push(p, m);
    json_decref(m);
    buf_reset(&p->chunk);
    return rc;
}

static int read_data(void *ud, const char *data, size_t len)
{
    pump_t *p = ud;
    while (len) {
        size_t take = READ_CHUNK - p->chunk.len;
        if (take > len)
            take = len;
        buf_add(&p->chunk, data, take);
        data += take;
        len -= take;
        if (p->chunk.len == READ_CHUNK && flush_chunk(p) < 0)
            return -1;
    }
    return 0;
}

static void *read_worker(void *ud)
{
    pump_t *p = ud;
    err_t e = {0};
    int rc = envdc_download(&p->target, p->path, read_data, p, &e);
    if (rc == 0 && p->chunk.len && flush_chunk(p) < 0)
        rc = err_set(&e, -ECANCELED, "client went away");
    sbx_touch(p->rpc->mgr, p->id, NULL);
    if (rc < 0 && !cancelled(p))
        rpc__log_fail("ReadFileStream", p->id, rc, &e);
    finish(p, rc, &e);
    pump_unref(p);
    return NULL;
}

int rpc__read_stream(connect_call_t *c, const json_t *in, connect_source_t *src, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL, *path = NULL;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = rpc__path(in, &path, e)) < 0)
        return rc;
    pump_t *p = pump_new(r);
    if ((rc = sbx_target(r->mgr, id, &p->target, e)) < 0) {
        pump_unref(p);
        return rc;
    }
    p->id = xstrdup(id);
    p->path = xstrdup(path);
    return pump_start(p, read_worker, src, e);
}

/* ---- WriteFileStream (client stream) ----------------------------------------------------- */

/* Per request: envelopes are parsed as the body arrives; the first carries meta and starts an
 * upload to the guest on a worker thread that reads the decoded chunks from a pipe. */
typedef struct wstream {
    rpc_t *rpc;
    buf_t in;
    bool have_meta;
    bool ended;           /* the client's end-of-stream envelope arrived */
    _Atomic bool aborted; /* the stream failed: the upload must not commit */
    size_t nmsgs;
    int pipe_w;
    int pipe_r;
    pthread_t th;
    bool th_started;
    envdc_t target;
    char *id, *path;
    int rc;
    err_t e;
} wstream_t;

static long ws_body_read(void *ud, char *dst, size_t max)
{
    wstream_t *w = ud;
    for (;;) {
        ssize_t n = read(w->pipe_r, dst, max);
        if (n == 0 && atomic_load(&w->aborted))
            return -1;
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -1;
    }
}

static void *ws_worker(void *ud)
{
    wstream_t *w = ud;
    w->rc = envdc_upload(&w->target, w->path, NULL, 0, ws_body_read, w, &w->e);
    /* Unblock a writer if the guest stopped reading early. */
    xclose(&w->pipe_r);
    return NULL;
}

static int ws_headers(http_req_t *req, void *ud, err_t *e)
{
    rpc_t *r = ud;
    const char *ct = http_req_header(req, "Content-Type");
    if (!ct || strncasecmp(ct, "application/connect+json", 24) != 0)
        return err_set(e, -EPROTONOSUPPORT,
                       "unsupported content type %s (use application/connect+json)",
                       ct ? ct : "(none)");
    int rc = rpc__check(req, r, e);
    if (rc < 0)
        return rc;
    wstream_t *w = xcalloc(1, sizeof *w);
    w->rpc = r;
    w->pipe_w = w->pipe_r = -1;
    buf_init(&w->in);
    http_req_set_state(req, w);
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int ws_finish(wstream_t *w);

static int ws_message(wstream_t *w, const char *msg, size_t len, err_t *e)
{
    json_t *j = NULL;
    int rc = pjson_parse(msg, len, &j, e);
    if (rc < 0)
        return rc;
    json_t *meta = NULL;
    buf_t chunk;
    buf_init(&chunk);
    bool has_chunk = false;
    if ((rc = pjson_obj(j, "meta", &meta, e)) < 0 ||
        (rc = pjson_bytes(j, "chunk", &chunk, &has_chunk, e)) < 0)
        goto out;
    if (!w->have_meta) {
        const char *id = NULL, *path = NULL;
        if (!meta) {
            rc = err_set(e, -EINVAL, "the first message must carry meta");
            goto out;
        }
        if ((rc = rpc__sandbox_id(meta, &id, e)) < 0 || (rc = rpc__path(meta, &path, e)) < 0 ||
            (rc = sbx_target(w->rpc->mgr, id, &w->target, e)) < 0)
            goto out;
        w->id = xstrdup(id);
        w->path = xstrdup(path);
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) < 0) {
            rc = err_errno(e, "pipe");
            goto out;
        }
        w->pipe_r = fds[0];
        w->pipe_w = fds[1];
        if (pthread_create(&w->th, NULL, ws_worker, w) != 0) {
            rc = err_set(e, -EAGAIN, "cannot start the upload worker");
            goto out;
        }
        w->th_started = true;
        w->have_meta = true;
    } else if (meta) {
        rc = err_set(e, -EINVAL, "meta may only be the first message");
        goto out;
    }
    if (has_chunk && chunk.len && write_all(w->pipe_w, chunk.data, chunk.len) < 0) {
        /* The guest answered before taking the whole body: its answer says why. */
        int up = ws_finish(w);
        if (up < 0) {
            rc = up;
            if (e)
                *e = w->e;
        } else {
            rc = err_set(e, -EIO, "the guest stopped taking the upload");
        }
    }
out:
    buf_fini(&chunk);
    json_decref(j);
    return rc;
}

static int ws_body(http_req_t *req, const char *data, size_t len, void *ud, err_t *e)
{
    (void)ud;
    wstream_t *w = http_req_state(req);
    buf_add(&w->in, data, len);
    while (w->in.len) {
        uint8_t flags = 0;
        uint32_t mlen = 0;
        long n = connect_envelope_parse(w->in.data, w->in.len, CONNECT_MAX_MESSAGE, &flags, &mlen);
        if (n == 0)
            break;
        if (n < 0)
            return err_set(e, (int)n, "malformed envelope");
        if (w->ended)
            return err_set(e, -EINVAL, "data after the end of the stream");
        int rc = 0;
        if (flags & CONNECT_FLAG_END_STREAM)
            w->ended = true;
        else if (flags)
            rc = err_set(e, -EINVAL, "compressed messages are not supported");
        else {
            w->nmsgs++;
            rc = ws_message(w, w->in.data + 5, mlen, e);
        }
        buf_consume(&w->in, (size_t)n);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Close the pipe and wait for the upload; returns its result. */
static int ws_finish(wstream_t *w)
{
    xclose(&w->pipe_w);
    if (w->th_started) {
        pthread_join(w->th, NULL);
        w->th_started = false;
        return w->rc;
    }
    return 0;
}

static void ws_respond(http_req_t *req, int code, const err_t *e)
{
    buf_t b;
    buf_init(&b);
    if (code == 0)
        connect_envelope_add(&b, 0, "{}", 2);
    connect_end_stream_add(&b, code, e);
    http_respond_buf(req, 200, "application/connect+json", &b);
}

static void ws_handle(http_req_t *req, void *ud)
{
    wstream_t *w = http_req_state(req);
    err_t e = {0};
    int rc = 0;
    if (w->in.len)
        rc = err_set(&e, -EINVAL, "truncated envelope");
    else if (w->nmsgs == 0)
        rc = err_set(&e, -EINVAL, "empty stream");
    if (rc < 0)
        atomic_store(&w->aborted, true);
    int up = ws_finish(w);
    if (rc == 0 && up < 0) {
        rc = up;
        e = w->e;
    }
    if (w->id)
        sbx_touch(((rpc_t *)ud)->mgr, w->id, NULL);
    if (rc < 0)
        rpc__log_fail("WriteFileStream", w->id, rc, &e);
    ws_respond(req, rc, &e);
}

static void ws_error(http_req_t *req, int code, const err_t *e)
{
    const char *ct = http_req_header(req, "Content-Type");
    if (!ct || strncasecmp(ct, "application/connect+json", 24) != 0) {
        buf_t b;
        buf_init(&b);
        connect_error_json(&b, code, e);
        http_respond_buf(req, err_status(code).http, "application/json", &b);
        return;
    }
    ws_respond(req, code, e);
}

static void ws_cleanup(http_req_t *req, void *ud)
{
    (void)ud;
    wstream_t *w = http_req_state(req);
    if (!w)
        return;
    /* A failed stream: abort the upload so the guest never commits a partial file. */
    atomic_store(&w->aborted, true);
    ws_finish(w);
    xclose(&w->pipe_r);
    buf_fini(&w->in);
    free(w->id);
    free(w->path);
    free(w);
    http_req_set_state(req, NULL);
}

void rpc__write_stream_route(rpc_t *rpc, http_route_t *route)
{
    memset(route, 0, sizeof *route);
    route->method = "POST";
    route->path = RPC_SERVICE "WriteFileStream";
    route->on_headers = ws_headers;
    route->on_body = ws_body;
    route->handle = ws_handle;
    route->cleanup = ws_cleanup;
    route->error = ws_error;
    route->ud = rpc;
}
