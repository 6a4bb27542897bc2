/* envdc: HTTP and Connect calls from the host agent to a sandbox's wrenn-envd. */
#include "envdc.h"
#include "b64.h"
#include "connect.h"
#include "httpc.h"
#include "pjson.h"
#include "xalloc.h"

#include <stdio.h>
#include <sys/random.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The largest message a guest may send us in one envelope (output events are far smaller). */
#define GUEST_MAX_MESSAGE (8u << 20)

void envdc_target(envdc_t *c, const char *host_ip, int port, const char *token)
{
    memset(c, 0, sizeof *c);
    snprintf(c->base, sizeof c->base, "http://%s:%d", host_ip, port);
    if (token)
        snprintf(c->token, sizeof c->token, "%s", token);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A guest REST error status as our errno; the guest's message is kept for logs. */
static int guest_status_err(const httpc_resp_t *r, const char *what, err_t *e)
{
    int code;
    switch (r->status) {
    case 400:
        code = -EINVAL;
        break;
    case 404:
        code = -ENOENT;
        break;
    case 413:
        code = -EMSGSIZE;
        break;
    case 507:
        code = -ENOSPC;
        break;
    default:
        code = -EIO;
    }
    const char *msg = "";
    json_t *j = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, NULL);
    if (j && json_is_string(json_object_get(j, "message")))
        msg = json_string_value(json_object_get(j, "message"));
    err_set(e, code, "%s: guest answered %ld%s%.160s", what, r->status, *msg ? ": " : "", msg);
    json_decref(j);
    return code;
}

/* One POST /init: the current wall-clock time, env_vars, c->token as the new token (old_token,
 * or c->token, shown to authorise it) and, with entropy, 64 bytes of host randomness. Returns
 * httpc_do's result; the answer is in r. */
static int post_init(httpc_t *h, const envdc_t *c, const char *old_token, const json_t *env_vars,
                     bool entropy, const httpc_req_t *limits, httpc_resp_t *r, err_t *e)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec);
    json_t *body = json_object();
    json_object_set_new(body, "timestamp", json_string(ts));
    if (c->token[0])
        json_object_set_new(body, "accessToken", json_string(c->token));
    if (env_vars)
        json_object_set(body, "envVars", (json_t *)env_vars);
    if (entropy) {
        /* A restored or cloned guest resumes with its snapshot's RNG state: every copy would
         * produce the same "random" numbers. Fresh host entropy is mixed in and reseeds it. */
        unsigned char rnd[64];
        size_t got = 0;
        while (got < sizeof rnd) {
            ssize_t k = getrandom(rnd + got, sizeof rnd - got, 0);
            if (k > 0)
                got += (size_t)k;
        }
        char b64[128];
        size_t bl = b64_encode(rnd, sizeof rnd, b64, true);
        b64[bl] = '\0';
        json_object_set_new(body, "entropy", json_string(b64));
    }
    buf_t b;
    buf_init(&b);
    pjson_dump(body, &b);
    json_decref(body);

    char url[128], tok[128];
    snprintf(url, sizeof url, "%s/init", c->base);
    /* The guest keeps the token it was given first: a clone's envd still has its template's,
     * which must be shown to change it. */
    const char *cur = old_token ? old_token : c->token;
    snprintf(tok, sizeof tok, "X-Access-Token: %s", cur);
    const char *hdrs[] = {"Content-Type: application/json", cur[0] ? tok : NULL, NULL};
    httpc_req_t q = {.method = "POST",
                     .url = url,
                     .headers = hdrs,
                     .body = b.data,
                     .body_len = b.len,
                     .timeout_ms = limits->timeout_ms,
                     .connect_timeout_ms = limits->connect_timeout_ms};
    int rc = httpc_do(h, &q, r, e);
    buf_fini(&b);
    return rc;
}

int envdc_reinit(const envdc_t *c, const char *old_token, const json_t *env_vars, bool entropy,
                 err_t *e)
{
    httpc_t *h = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    httpc_req_t limits = {.timeout_ms = 10000};
    int rc = post_init(h, c, old_token, env_vars, entropy, &limits, &r, e);
    if (rc == 0 && (r.status < 200 || r.status >= 300))
        rc = guest_status_err(&r, "init", e);
    httpc_resp_fini(&r);
    httpc_free(h);
    return rc;
}

/* How long one connect to a guest that is still starting may take. Until its network is up a
 * SYN is lost without a word (and retried by TCP only after a second), so tries are short: a
 * guest that comes up during a try is seen at most ~120 ms later. Once a connect was refused the
 * guest's network is up and answers promptly unless the host is very busy, so, as after 10 s
 * without an answer, tries may then take longer. */
static long connect_ms(bool refused_seen, int64_t waited_ms)
{
    return refused_seen || waited_ms > 10000 ? 1000 : 100;
}

/* One try: returns httpc_do's result, the answer in r. */
typedef int (*guest_try_fn)(httpc_t *h, const envdc_t *c, const httpc_req_t *limits, void *arg,
                            httpc_resp_t *r);

/* Try every 20 ms until the guest answers (any HTTP answer ends the wait: 0, and r holds it),
 * alive says the VM is gone (-ECHILD) or timeout_ms passes (-ETIMEDOUT). */
static int wait_guest(const envdc_t *c, long timeout_ms, int (*alive)(void *ud), void *ud,
                      const char *what, guest_try_fn try, void *arg, httpc_resp_t *r, err_t *e)
{
    httpc_t *h = httpc_new();
    int64_t t0 = mono_ms(), end = t0 + timeout_ms;
    bool refused = false;
    int rc;
    for (;;) {
        /* Once connected, a guest just booted may take a while to answer. */
        long left = (long)(end - mono_ms());
        httpc_req_t limits = {.timeout_ms = left < 10000 ? (left > 300 ? left : 300) : 10000,
                              .connect_timeout_ms = connect_ms(refused, mono_ms() - t0)};
        if ((rc = try(h, c, &limits, arg, r)) == 0)
            break;
        refused |= rc == -ECONNREFUSED;
        if (alive && !alive(ud)) {
            rc = err_set(e, -ECHILD, "the VM exited before its guest agent answered");
            break;
        }
        if (mono_ms() >= end) {
            rc = err_set(e, -ETIMEDOUT, "guest agent did not answer %s within %ld ms", what,
                         timeout_ms);
            break;
        }
        usleep(20000);
    }
    httpc_free(h);
    return rc;
}

static int try_health(httpc_t *h, const envdc_t *c, const httpc_req_t *limits, void *arg,
                      httpc_resp_t *r)
{
    (void)arg;
    char url[128];
    snprintf(url, sizeof url, "%s/health", c->base);
    httpc_req_t q = *limits;
    q.method = "GET";
    q.url = url;
    int rc = httpc_do(h, &q, r, NULL);
    /* Only a 2xx is health: anything else (a proxy, a guest still starting) is tried again. */
    return rc == 0 && (r->status < 200 || r->status >= 300) ? -EAGAIN : rc;
}

int envdc_wait_health(const envdc_t *c, long timeout_ms, int (*alive)(void *ud), void *ud, err_t *e)
{
    httpc_resp_t r;
    httpc_resp_init(&r);
    int rc = wait_guest(c, timeout_ms, alive, ud, "/health", try_health, NULL, &r, e);
    httpc_resp_fini(&r);
    return rc;
}

struct init_args {
    const char *old_token;
    const json_t *env_vars;
    bool entropy;
};

static int try_init(httpc_t *h, const envdc_t *c, const httpc_req_t *limits, void *arg,
                    httpc_resp_t *r)
{
    const struct init_args *a = arg;
    err_t ign = {0};
    /* A retry after a timeout is harmless: it sets the same token (the body's token, already
     * the guest's, authorises it) with a newer timestamp. */
    return post_init(h, c, a->old_token, a->env_vars, a->entropy, limits, r, &ign);
}

int envdc_wait_init(const envdc_t *c, long timeout_ms, int (*alive)(void *ud), void *ud,
                    const char *old_token, const json_t *env_vars, bool entropy, err_t *e)
{
    httpc_resp_t r;
    httpc_resp_init(&r);
    struct init_args a = {.old_token = old_token, .env_vars = env_vars, .entropy = entropy};
    int rc = wait_guest(c, timeout_ms, alive, ud, "/init", try_init, &a, &r, e);
    if (rc == 0 && (r.status < 200 || r.status >= 300))
        rc = guest_status_err(&r, "init", e);
    httpc_resp_fini(&r);
    return rc;
}

/* ---- process.Process/Start ------------------------------------------------------------- */

/* A guest's Connect error code as ours. The guest refusing our own credentials is our fault,
 * not the caller's: that is internal, never unauthenticated. */
static int guest_code(const char *code)
{
    int rc = code ? err_from_connect(code) : -EIO;
    return rc == -ENOKEY || rc == -EKEYREJECTED || rc == -EACCES || rc == -EPERM ? -EIO : rc;
}

struct exec_ctx {
    const envdc_exec_cb_t *cb;
    void *ud;
    httpc_resp_t *resp;
    buf_t in;   /* bytes not yet parsed into envelopes */
    bool ended; /* the end event arrived */
    bool eos;   /* the end-of-stream envelope arrived */
    int err;    /* an error from the stream itself (end-of-stream error or bad frame) */
    err_t e;
};

static bool resp_is_ok(const httpc_resp_t *r)
{
    /* The status line is in the header buffer by the time the body arrives. */
    const char *h = r->headers.data;
    if (!h || r->headers.len < 12)
        return false;
    const char *sp = strchr(h, ' ');
    return sp && strncmp(sp + 1, "200", 3) == 0;
}

static int exec_event(struct exec_ctx *x, const json_t *msg)
{
    json_t *ev = NULL;
    if (pjson_obj(msg, "event", &ev, NULL) < 0 || !ev)
        return 0;
    const envdc_exec_cb_t *cb = x->cb;
    json_t *start = pjson_get(ev, "start"), *data = pjson_get(ev, "data"),
           *end = pjson_get(ev, "end");
    if (start) {
        uint32_t pid = 0;
        pjson_u32(start, "pid", &pid, NULL, NULL);
        if (cb->on_start)
            return cb->on_start(x->ud, pid);
    } else if (data) {
        buf_t out;
        buf_init(&out);
        bool p = false;
        int stream = 1, rc = 0;
        if (pjson_bytes(data, "stdout", &out, &p, NULL) < 0 || !p) {
            stream = 2;
            if (pjson_bytes(data, "stderr", &out, &p, NULL) < 0)
                p = false;
        }
        if (p && out.len && cb->on_output)
            rc = cb->on_output(x->ud, stream, out.data, out.len);
        buf_fini(&out);
        return rc;
    } else if (pjson_get(ev, "keepalive")) {
        if (cb->on_idle)
            return cb->on_idle(x->ud);
    } else if (end) {
        int64_t code = 0;
        pjson_i64(end, "exitCode", &code, NULL, NULL);
        const char *err = NULL, *status = NULL;
        pjson_str(end, "error", &err, NULL);
        pjson_str(end, "status", &status, NULL);
        x->ended = true;
        const char *text = err && *err ? err : (code != 0 && status ? status : "");
        if (cb->on_end)
            return cb->on_end(x->ud, (int)code, text);
    }
    return 0;
}

static int exec_on_data(void *ud, const char *data, size_t len)
{
    struct exec_ctx *x = ud;
    if (!resp_is_ok(x->resp)) {
        /* An error answer: keep it (bounded) for the caller. */
        if (x->in.len + len > 65536)
            return -1;
        buf_add(&x->in, data, len);
        return 0;
    }
    buf_add(&x->in, data, len);
    while (x->in.len) {
        uint8_t flags = 0;
        uint32_t mlen = 0;
        long n = connect_envelope_parse(x->in.data, x->in.len, GUEST_MAX_MESSAGE, &flags, &mlen);
        if (n == 0)
            return 0;
        if (n < 0) {
            x->err = err_set(&x->e, -EIO, "exec: malformed envelope from the guest");
            return -1;
        }
        json_t *msg = json_loadb(x->in.data + 5, mlen, 0, NULL);
        int rc = 0;
        if (flags & CONNECT_FLAG_END_STREAM) {
            x->eos = true;
            json_t *er = msg ? json_object_get(msg, "error") : NULL;
            if (er) {
                const char *code = json_string_value(json_object_get(er, "code"));
                const char *m = json_string_value(json_object_get(er, "message"));
                x->err = err_set(&x->e, guest_code(code), "guest: %.160s",
                                 m ? m : (code ? code : "error"));
            }
        } else if (msg) {
            rc = exec_event(x, msg);
        }
        json_decref(msg);
        buf_consume(&x->in, (size_t)n);
        if (rc < 0)
            return -1;
    }
    return 0;
}

int envdc_exec(const envdc_t *c, const envdc_exec_req_t *r, const envdc_exec_cb_t *cb, void *ud,
               err_t *e)
{
    json_t *proc = json_object(), *args = json_array();
    json_object_set_new(proc, "cmd", json_string(r->cmd));
    for (size_t i = 0; i < r->nargs; i++)
        json_array_append_new(args, json_string(r->args[i]));
    json_object_set_new(proc, "args", args);
    json_t *req = json_object();
    json_object_set_new(req, "process", proc);
    json_object_set_new(req, "stdin", json_false());
    buf_t msg, body;
    buf_init(&msg);
    buf_init(&body);
    pjson_dump(req, &msg);
    json_decref(req);
    connect_envelope_add(&body, 0, msg.data, msg.len);
    buf_fini(&msg);

    const char *user = r->user ? r->user : "root";
    char cred[128], auth[256], url[128], tok[128], tmo[64];
    snprintf(cred, sizeof cred, "%s:", user);
    size_t cl = strlen(cred);
    char enc[180];
    enc[b64_encode(cred, cl, enc, true)] = '\0';
    snprintf(auth, sizeof auth, "Authorization: Basic %s", enc);
    snprintf(url, sizeof url, "%s/process.Process/Start", c->base);
    snprintf(tok, sizeof tok, "X-Access-Token: %s", c->token);
    snprintf(tmo, sizeof tmo, "Connect-Timeout-Ms: %ld", r->timeout_ms);
    const char *hdrs[8];
    int nh = 0;
    char ka[64];
    snprintf(ka, sizeof ka, "Keepalive-Ping-Interval: %d", ENVDC_KEEPALIVE_S);
    hdrs[nh++] = ka;
    hdrs[nh++] = "Content-Type: application/connect+json";
    hdrs[nh++] = "Connect-Protocol-Version: 1";
    hdrs[nh++] = auth;
    if (c->token[0])
        hdrs[nh++] = tok;
    if (r->timeout_ms > 0)
        hdrs[nh++] = tmo;
    hdrs[nh] = NULL;

    httpc_t *h = httpc_new();
    httpc_resp_t resp;
    httpc_resp_init(&resp);
    struct exec_ctx x = {.cb = cb, .ud = ud, .resp = &resp};
    buf_init(&x.in);
    /* The transfer itself gets a little more than the process's own deadline. */
    httpc_req_t q = {.method = "POST",
                     .url = url,
                     .headers = hdrs,
                     .body = body.data,
                     .body_len = body.len,
                     .on_data = exec_on_data,
                     .ud = &x,
                     .timeout_ms = r->timeout_ms > 0 ? r->timeout_ms + 5000 : 0,
                     /* A VM that died (or was destroyed) mid-stream sends nothing, not even
                      * a reset: its keepalives stopping is how we notice. */
                     .idle_timeout_ms = ENVDC_SILENCE_MS};
    int rc = httpc_do(h, &q, &resp, e);
    if (x.err < 0) {
        rc = x.err;
        if (e)
            *e = x.e;
    } else if (rc == 0 && resp.status != 200) {
        json_t *j = json_loadb(x.in.data ? x.in.data : "", x.in.len, 0, NULL);
        const char *code = j ? json_string_value(json_object_get(j, "code")) : NULL;
        const char *m = j ? json_string_value(json_object_get(j, "message")) : NULL;
        rc = err_set(e, guest_code(code), "guest answered %ld: %.160s", resp.status, m ? m : "");
        json_decref(j);
    } else if (rc == 0 && !x.ended) {
        rc = err_set(e, -EIO, "exec: the guest stream ended without an end event");
    }
    buf_fini(&x.in);
    buf_fini(&body);
    httpc_resp_fini(&resp);
    httpc_free(h);
    return rc;
}

/* ---- /files ------------------------------------------------------------------------------ */

static void url_escape(buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            strchr("-._~/", ch)) {
            buf_addc(b, (char)ch);
        } else {
            buf_addc(b, '%');
            buf_addc(b, hex[ch >> 4]);
            buf_addc(b, hex[ch & 15]);
        }
    }
}

static char *files_url(const envdc_t *c, const char *path)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s/files?username=root&path=", c->base);
    url_escape(&b, path);
    return buf_steal(&b, NULL);
}

int envdc_upload(const envdc_t *c, const char *path, const void *data, size_t len,
                 long (*body_read)(void *ud, char *dst, size_t max), void *ud, err_t *e)
{
    char *url = files_url(c, path);
    char tok[128];
    snprintf(tok, sizeof tok, "X-Access-Token: %s", c->token);
    const char *hdrs[] = {"Content-Type: application/octet-stream", c->token[0] ? tok : NULL, NULL};
    httpc_t *h = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    httpc_req_t q = {.method = "POST",
                     .url = url,
                     .headers = hdrs,
                     .body = body_read ? NULL : (data ? data : ""),
                     .body_len = len,
                     .body_read = body_read,
                     .ud = ud,
                     .idle_timeout_ms = ENVDC_SILENCE_MS};
    int rc = httpc_do(h, &q, &r, e);
    if (rc == 0 && (r.status < 200 || r.status >= 300))
        rc = guest_status_err(&r, "upload", e);
    httpc_resp_fini(&r);
    httpc_free(h);
    free(url);
    return rc;
}

struct dl_ctx {
    httpc_resp_t *resp;
    int (*on_data)(void *ud, const char *data, size_t len);
    void *ud;
};

static int dl_on_data(void *ud, const char *data, size_t len)
{
    struct dl_ctx *x = ud;
    if (!resp_is_ok(x->resp)) {
        if (x->resp->body.len + len > 65536)
            return -1;
        buf_add(&x->resp->body, data, len);
        return 0;
    }
    return x->on_data(x->ud, data, len);
}

int envdc_download(const envdc_t *c, const char *path,
                   int (*on_data)(void *ud, const char *data, size_t len), void *ud, err_t *e)
{
    char *url = files_url(c, path);
    char tok[128];
    snprintf(tok, sizeof tok, "X-Access-Token: %s", c->token);
    const char *hdrs[] = {c->token[0] ? tok : NULL, NULL};
    httpc_t *h = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    struct dl_ctx x = {.resp = &r, .on_data = on_data, .ud = ud};
    httpc_req_t q = {.method = "GET",
                     .url = url,
                     .headers = hdrs,
                     .on_data = dl_on_data,
                     .ud = &x,
                     .idle_timeout_ms = ENVDC_SILENCE_MS};
    int rc = httpc_do(h, &q, &r, e);
    if (rc == 0 && r.status != 200)
        rc = guest_status_err(&r, "download", e);
    httpc_resp_fini(&r);
    httpc_free(h);
    free(url);
    return rc;
}
