#include "harness.h"
#include "b64.h"
#include "connect.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

extern char **environ;

void th_init(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    signal(SIGPIPE, SIG_IGN);
    httpc_global_init();
}

static const char *envd_bin(void)
{
    const char *b = getenv("WRENN_TEST_ENVD_BIN");
    return b && *b ? b : "build/src/envd/wrenn-envd";
}

char *th_tmpdir(void)
{
    char tmpl[] = "/tmp/wrenn-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? xstrdup(d) : NULL;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

void th_rmrf(const char *path)
{
    if (path && *path && strcmp(path, "/") != 0)
        nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

int th_sh(const char *cmd)
{
    pid_t pid;
    char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
    if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) != 0)
        return -1;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int th_envd_start(th_envd_t *e, const char *const *extra)
{
    memset(e, 0, sizeof *e);
    char *dir = th_tmpdir();
    if (!dir)
        return -errno;
    snprintf(e->dir, sizeof e->dir, "%s", dir);
    free(dir);
    char port_file[300], run_dir[300], log_file[300];
    snprintf(port_file, sizeof port_file, "%s/port", e->dir);
    snprintf(run_dir, sizeof run_dir, "%s/run", e->dir);
    snprintf(log_file, sizeof log_file, "%s/envd.log", e->dir);

    const char *argv[32] = {envd_bin(), "--port",    "0",    "--port-file",
                            port_file,  "--run-dir", run_dir};
    int n = 7;
    for (const char *const *p = extra; p && *p && n < 30; p++)
        argv[n++] = *p;
    argv[n] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    /* Keep the log for failures, but also pass it through when WRENN_TEST_VERBOSE is set. */
    if (!getenv("WRENN_TEST_VERBOSE"))
        posix_spawn_file_actions_addopen(&fa, 2, log_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int r = posix_spawn(&e->pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        th_rmrf(e->dir);
        return -r;
    }
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(port_file, "re");
        if (f) {
            int ok = fscanf(f, "%d", &e->port);
            fclose(f);
            if (ok == 1 && e->port > 0)
                break;
        }
        if (!th_envd_alive(e))
            return -ECHILD;
        usleep(10000);
    }
    if (e->port <= 0) {
        th_envd_stop(e);
        return -ETIMEDOUT;
    }
    snprintf(e->url, sizeof e->url, "http://127.0.0.1:%d", e->port);
    httpc_resp_t resp;
    httpc_resp_init(&resp);
    for (int i = 0; i < 500; i++) {
        if (th_http(e, "GET", "/health", NULL, NULL, 0, &resp) == 0 && resp.status == 204)
            break;
        usleep(10000);
    }
    long st = resp.status;
    httpc_resp_fini(&resp);
    if (st != 204) {
        th_envd_stop(e);
        return -ETIMEDOUT;
    }
    return 0;
}

bool th_envd_alive(th_envd_t *e)
{
    if (e->pid <= 0)
        return false;
    int st;
    pid_t p = waitpid(e->pid, &st, WNOHANG);
    if (p == e->pid) {
        fprintf(stderr, "# envd exited: status %d (log in %s/envd.log)\n", st, e->dir);
        e->pid = -1;
        return false;
    }
    return true;
}

int th_envd_stop(th_envd_t *e)
{
    int st = 0;
    if (e->pid > 0) {
        kill(e->pid, SIGTERM);
        for (int i = 0; i < 500; i++) {
            pid_t p = waitpid(e->pid, &st, WNOHANG);
            if (p == e->pid)
                break;
            if (i == 499) {
                kill(e->pid, SIGKILL);
                waitpid(e->pid, &st, 0);
            }
            usleep(10000);
        }
        e->pid = -1;
    }
    if (e->dir[0] && !getenv("WRENN_TEST_KEEP"))
        th_rmrf(e->dir);
    e->dir[0] = '\0';
    return st;
}

int th_http(th_envd_t *e, const char *method, const char *path, const char *const *headers,
            const void *body, size_t len, httpc_resp_t *out)
{
    char url[4096];
    snprintf(url, sizeof url, "%s%s", e->url, path);
    httpc_t *c = httpc_new();
    httpc_req_t req = {.method = method,
                       .url = url,
                       .headers = headers,
                       .body = body,
                       .body_len = len,
                       .timeout_ms = 120000};
    err_t err = {0};
    int r = httpc_do(c, &req, out, &err);
    httpc_free(c);
    return r;
}

int th_unary(th_envd_t *e, const char *path, const char *json, const char *const *headers,
             httpc_resp_t *out)
{
    const char *h[32] = {"Content-Type: application/json", "Connect-Protocol-Version: 1"};
    int n = 2;
    for (const char *const *p = headers; p && *p && n < 31; p++)
        h[n++] = *p;
    h[n] = NULL;
    return th_http(e, "POST", path, h, json, strlen(json), out);
}

json_t *th_json(const httpc_resp_t *r)
{
    json_error_t je;
    return json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &je);
}

struct sctx {
    th_stream_t *s;
    buf_t pending;
    int (*on_msg)(void *ud, json_t *msg);
    void *ud;
};

static int on_data(void *ud, const char *data, size_t len)
{
    struct sctx *x = ud;
    buf_add(&x->pending, data, len);
    for (;;) {
        uint8_t flags = 0;
        uint32_t mlen = 0;
        long n = connect_envelope_parse(x->pending.data, x->pending.len, 64u << 20, &flags, &mlen);
        if (n < 0) {
            x->s->bad_frame = true;
            return -1;
        }
        if (n == 0)
            return 0;
        json_error_t je;
        json_t *m = json_loadb(x->pending.data + 5, mlen, 0, &je);
        buf_consume(&x->pending, (size_t)n);
        if (!m) {
            x->s->bad_frame = true;
            return -1;
        }
        if (flags & CONNECT_FLAG_END_STREAM) {
            json_decref(x->s->end);
            x->s->end = m;
            continue;
        }
        x->s->msgs = xrealloc(x->s->msgs, sizeof(json_t *) * (x->s->n + 1));
        x->s->msgs[x->s->n++] = m;
        if (x->on_msg && x->on_msg(x->ud, m) != 0)
            return -1;
    }
}

int th_stream(th_envd_t *e, const char *path, const char *json, const char *const *headers,
              int (*on_msg)(void *ud, json_t *msg), void *ud, th_stream_t *out)
{
    memset(out, 0, sizeof *out);
    const char *h[32] = {"Content-Type: application/connect+json", "Connect-Protocol-Version: 1"};
    int n = 2;
    for (const char *const *p = headers; p && *p && n < 31; p++)
        h[n++] = *p;
    h[n] = NULL;
    buf_t body;
    buf_init(&body);
    connect_envelope_add(&body, 0, json, strlen(json));
    char url[4096];
    snprintf(url, sizeof url, "%s%s", e->url, path);
    struct sctx x = {.s = out, .on_msg = on_msg, .ud = ud};
    buf_init(&x.pending);
    httpc_t *c = httpc_new();
    httpc_req_t req = {.method = "POST",
                       .url = url,
                       .headers = h,
                       .body = body.data,
                       .body_len = body.len,
                       .on_data = on_data,
                       .ud = &x,
                       .timeout_ms = 300000};
    httpc_resp_t resp;
    httpc_resp_init(&resp);
    err_t err = {0};
    int r = httpc_do(c, &req, &resp, &err);
    out->status = resp.status;
    httpc_resp_header(&resp, "Content-Type", out->ctype, sizeof out->ctype);
    if (r == -ECANCELED && !out->bad_frame)
        r = 0; /* the test asked to stop early */
    if (resp.status != 200 && resp.body.len == 0 && x.pending.len) {
        /* A non-stream (error) answer: keep its JSON as the end payload. */
        json_error_t je;
        out->end = json_loadb(x.pending.data, x.pending.len, 0, &je);
    }
    httpc_resp_fini(&resp);
    httpc_free(c);
    buf_fini(&x.pending);
    buf_fini(&body);
    return r;
}

void th_stream_fini(th_stream_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        json_decref(s->msgs[i]);
    free(s->msgs);
    json_decref(s->end);
    memset(s, 0, sizeof *s);
}

char *th_b64(const void *data, size_t n)
{
    char *out = xmalloc(b64_encoded_len(n) + 1);
    size_t m = b64_encode(data, n, out, true);
    out[m] = '\0';
    return out;
}

bool th_unb64(const char *s, buf_t *out)
{
    size_t n = strlen(s);
    buf_reserve(out, b64_decoded_max(n));
    long m = b64_decode(s, n, out->data + out->len);
    if (m < 0)
        return false;
    out->len += (size_t)m;
    out->data[out->len] = '\0';
    return true;
}

void th_collect_output(const th_stream_t *s, const char *which, buf_t *out)
{
    for (size_t i = 0; i < s->n; i++) {
        json_t *ev = json_object_get(s->msgs[i], "event");
        json_t *data = ev ? json_object_get(ev, "data") : NULL;
        json_t *v = data ? json_object_get(data, which) : NULL;
        if (json_is_string(v))
            th_unb64(json_string_value(v), out);
    }
}

json_t *th_end_event(const th_stream_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        json_t *ev = json_object_get(s->msgs[i], "event");
        json_t *end = ev ? json_object_get(ev, "end") : NULL;
        if (end)
            return end;
    }
    return NULL;
}
