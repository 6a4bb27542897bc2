/* bench/cp: control-plane latency and throughput on this machine.
 *
 * Starts the real wrenn-cp on SQLite (or on PostgreSQL with --database-url), then measures:
 *   - login p50 (real Argon2id cost),
 *   - JWT-authenticated GET /v1/api-keys and API-key-authenticated GET /v1/sandboxes:
 *     requests/s over keep-alive with 2 client threads, p50/p99,
 *   - a baseline: the same SQL lookups run directly through the store layer, 2 threads.
 * Prints a Markdown table.
 *
 * usage: bench_cp [--bin PATH] [--seconds N] [--database-url URL]
 */
#include "auth/secret.h"
#include "httpc.h"
#include "store/db.h"
#include "store/store.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define THREADS     2
#define MAX_SAMPLES (4 * 1024 * 1024)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof *v, cmp_d);
    size_t i = (size_t)(p * (double)(n - 1));
    return v[i];
}

/* ---- a minimal keep-alive HTTP/1.1 client ---- */

typedef struct conn {
    int fd;
    char buf[65536];
    size_t have;
} conn_t;

static int conn_open(conn_t *c, int port)
{
    c->have = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return connect(c->fd, (struct sockaddr *)&a, sizeof a);
}

/* Send req, read one response; returns the status or -1. */
static int conn_do(conn_t *c, const char *req, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(c->fd, req + off, len - off);
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    for (;;) {
        char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
        if (end) {
            size_t hlen = (size_t)(end - c->buf) + 4;
            int status = atoi(c->buf + 9);
            size_t blen = 0;
            char *cl = memmem(c->buf, hlen, "Content-Length:", 15);
            if (!cl)
                cl = memmem(c->buf, hlen, "content-length:", 15);
            if (cl)
                blen = strtoul(cl + 15, NULL, 10);
            while (c->have < hlen + blen) {
                ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
                if (r <= 0)
                    return -1;
                c->have += (size_t)r;
            }
            memmove(c->buf, c->buf + hlen + blen, c->have - hlen - blen);
            c->have -= hlen + blen;
            return status;
        }
        if (c->have == sizeof c->buf)
            return -1;
        ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
        if (r <= 0)
            return -1;
        c->have += (size_t)r;
    }
}

typedef struct load {
    int port;
    const char *req;
    double seconds;
    double *lat;
    size_t n;
    long errors;
} load_t;

static void *load_thread(void *ud)
{
    load_t *l = ud;
    conn_t *c = xmalloc(sizeof *c);
    if (conn_open(c, l->port) < 0) {
        l->errors++;
        free(c);
        return NULL;
    }
    size_t len = strlen(l->req);
    double end = now_s() + l->seconds;
    for (;;) {
        double t0 = now_s();
        if (t0 >= end)
            break;
        int st = conn_do(c, l->req, len);
        double t1 = now_s();
        if (st != 200) {
            l->errors++;
            if (st < 0)
                break;
            continue;
        }
        if (l->n < MAX_SAMPLES)
            l->lat[l->n++] = t1 - t0;
    }
    close(c->fd);
    free(c);
    return NULL;
}

typedef struct result {
    double rps, p50_ms, p99_ms;
    long errors;
} result_t;

static result_t run_load(int port, const char *req, double seconds)
{
    pthread_t th[THREADS];
    load_t l[THREADS];
    for (int i = 0; i < THREADS; i++) {
        l[i] = (load_t){.port = port,
                        .req = req,
                        .seconds = seconds,
                        .lat = xmalloc(MAX_SAMPLES * sizeof(double))};
        pthread_create(&th[i], NULL, load_thread, &l[i]);
    }
    size_t total = 0;
    long errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += l[i].n;
        errors += l[i].errors;
    }
    double *all = xmalloc((total + 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < THREADS; i++) {
        memcpy(all + k, l[i].lat, l[i].n * sizeof *all);
        k += l[i].n;
        free(l[i].lat);
    }
    result_t r = {.rps = (double)total / seconds, .errors = errors};
    r.p50_ms = pct(all, total, 0.50) * 1e3;
    r.p99_ms = pct(all, total, 0.99) * 1e3;
    free(all);
    return r;
}

/* ---- the direct-SQL baseline ---- */

typedef struct base {
    db_t *db;
    int kind; /* 0: key auth + sandbox list; 1: member check + key list */
    const char *hash, *user, *team;
    double seconds;
    long ops;
    double *lat;
    size_t n;
} base_t;

static void *base_thread(void *ud)
{
    base_t *b = ud;
    db_conn_t *c = NULL;
    err_t e = {0};
    if (db_acquire(b->db, &c, &e) < 0)
        return NULL;
    double end = now_s() + b->seconds;
    for (;;) {
        double t0 = now_s();
        if (t0 >= end)
            break;
        json_t *arr = NULL;
        if (b->kind == 0) {
            store_key_auth_t k;
            if (store_key_auth(c, b->hash, &k, &e) < 0 ||
                store_sandbox_list(c, k.team_id, &arr, &e) < 0)
                break;
        } else {
            store_member_ctx_t m;
            if (store_member_ctx(c, b->user, b->team, &m, &e) < 0 ||
                store_key_list(c, b->team, &arr, &e) < 0)
                break;
        }
        json_decref(arr);
        double t1 = now_s();
        b->ops++;
        if (b->n < MAX_SAMPLES)
            b->lat[b->n++] = t1 - t0;
    }
    db_release(c);
    return NULL;
}

static result_t run_base(db_t *db, int kind, const char *hash, const char *user, const char *team,
                         double seconds)
{
    pthread_t th[THREADS];
    base_t b[THREADS];
    for (int i = 0; i < THREADS; i++) {
        b[i] = (base_t){.db = db,
                        .kind = kind,
                        .hash = hash,
                        .user = user,
                        .team = team,
                        .seconds = seconds,
                        .lat = xmalloc(MAX_SAMPLES * sizeof(double))};
        pthread_create(&th[i], NULL, base_thread, &b[i]);
    }
    long ops = 0;
    size_t total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ops += b[i].ops;
        total += b[i].n;
    }
    double *all = xmalloc((total + 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < THREADS; i++) {
        memcpy(all + k, b[i].lat, b[i].n * sizeof *all);
        k += b[i].n;
        free(b[i].lat);
    }
    result_t r = {.rps = (double)ops / seconds};
    r.p50_ms = pct(all, total, 0.50) * 1e3;
    r.p99_ms = pct(all, total, 0.99) * 1e3;
    free(all);
    return r;
}

/* ---- setup through the API ---- */

static json_t *post(httpc_t *h, int port, const char *path, const char *auth, const char *body,
                    long *status)
{
    char url[256], hdr[2048];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    const char *hdrs[3] = {"Content-Type: application/json", NULL, NULL};
    if (auth) {
        snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", auth);
        hdrs[1] = hdr;
    }
    httpc_req_t rq = {.method = "POST",
                      .url = url,
                      .headers = hdrs,
                      .body = body,
                      .body_len = strlen(body),
                      .timeout_ms = 30000};
    httpc_resp_t rs;
    httpc_resp_init(&rs);
    err_t e = {0};
    json_t *j = NULL;
    *status = -1;
    if (httpc_do(h, &rq, &rs, &e) == 0) {
        *status = rs.status;
        j = json_loadb(rs.body.data ? rs.body.data : "", rs.body.len, 0, NULL);
    }
    httpc_resp_fini(&rs);
    return j;
}

int main(int argc, char **argv)
{
    const char *bin = getenv("WRENN_BENCH_CP_BIN");
    const char *db_url = NULL;
    double seconds = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bin") && i + 1 < argc)
            bin = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--database-url") && i + 1 < argc)
            db_url = argv[++i];
        else {
            fprintf(stderr, "usage: bench_cp [--bin PATH] [--seconds N] [--database-url URL]\n");
            return 2;
        }
    }
    if (!bin)
        bin = "build/src/cp/wrenn-cp";
    signal(SIGPIPE, SIG_IGN);
    httpc_global_init();
    char dir[] = "/tmp/wrenn-bench-cp-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char dd[300], pf[400], portfile[300], dbarg[700], sqlite[300];
    snprintf(dd, sizeof dd, "--data-dir=%s", dir);
    snprintf(portfile, sizeof portfile, "%s/port", dir);
    snprintf(pf, sizeof pf, "--port-file=%s", portfile);
    snprintf(sqlite, sizeof sqlite, "%s/wrenn.db", dir);
    snprintf(dbarg, sizeof dbarg, "--database-url=%s", db_url ? db_url : sqlite);
    char *args[] = {(char *)bin,        dd,  pf, dbarg, "--port=0", "--addr=127.0.0.1",
                    "--log-level=warn", NULL};
    pid_t pid;
    if (posix_spawn(&pid, bin, NULL, NULL, args, environ) != 0) {
        fprintf(stderr, "cannot start %s\n", bin);
        return 1;
    }
    int port = 0;
    for (int i = 0; i < 500 && !port; i++) {
        FILE *f = fopen(portfile, "re");
        if (f) {
            if (fscanf(f, "%d", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (!port)
            usleep(20000);
    }
    int status = 1;
    httpc_t *h = httpc_new();
    json_t *su = NULL, *key = NULL;
    db_t *db = NULL;
    if (!port) {
        fprintf(stderr, "wrenn-cp did not start\n");
        goto out;
    }
    long st = 0;
    su = post(h, port, "/v1/auth/signup", NULL,
              "{\"email\":\"bench@example.com\",\"password\":\"benchmark-pass\",\"name\":\"B\"}",
              &st);
    if (st != 201) {
        fprintf(stderr, "signup failed: %ld\n", st);
        goto out;
    }
    const char *tok = json_string_value(json_object_get(su, "token"));
    key = post(h, port, "/v1/api-keys", tok, "{\"name\":\"bench\"}", &st);
    if (st != 201)
        goto out;
    const char *k = json_string_value(json_object_get(key, "key"));

    /* Login p50 at the default Argon2id cost. */
    double lat[40];
    int nl = 0;
    for (int i = 0; i < 40; i++) {
        double t0 = now_s();
        json_t *j = post(h, port, "/v1/auth/login", NULL,
                         "{\"email\":\"bench@example.com\",\"password\":\"benchmark-pass\"}", &st);
        double t1 = now_s();
        json_decref(j);
        if (st == 200)
            lat[nl++] = t1 - t0;
    }
    double login_p50 = pct(lat, (size_t)nl, 0.5) * 1e3;
    double login_p99 = pct(lat, (size_t)nl, 0.99) * 1e3;

    char req_key[512], req_jwt[2048];
    snprintf(req_key, sizeof req_key,
             "GET /v1/sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\n\r\n", k);
    snprintf(req_jwt, sizeof req_jwt,
             "GET /v1/api-keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n",
             tok);
    /* Warm up both paths (prepared statements, page cache). */
    run_load(port, req_key, 0.5);
    result_t rk = run_load(port, req_key, seconds);
    result_t rj = run_load(port, req_jwt, seconds);

    err_t e = {0};
    if (db_open(db_url ? db_url : sqlite, THREADS, &db, &e) < 0) {
        fprintf(stderr, "baseline db: %s\n", e.msg);
        goto out;
    }
    char hash[SECRET_HASH_HEX];
    secret_key_hash(k, hash);
    const char *uid = json_string_value(json_object_get(su, "user_id"));
    const char *tid = json_string_value(json_object_get(su, "team_id"));
    result_t bk = run_base(db, 0, hash, uid, tid, seconds);
    result_t bj = run_base(db, 1, hash, uid, tid, seconds);

    printf("\n| wrenn-cp on %s, %d client threads, keep-alive, %.0f s | req/s | p50 ms | p99 ms | "
           "errors |\n",
           db_url ? "PostgreSQL" : "SQLite", THREADS, seconds);
    printf("|---|---:|---:|---:|---:|\n");
    printf("| POST /v1/auth/login (sequential, Argon2id default cost) | - | %.2f | %.2f | %d |\n",
           login_p50, login_p99, 40 - nl);
    printf("| GET /v1/sandboxes, X-API-Key | %.0f | %.3f | %.3f | %ld |\n", rk.rps, rk.p50_ms,
           rk.p99_ms, rk.errors);
    printf("| baseline: key lookup + sandbox list, direct SQL | %.0f | %.3f | %.3f | - |\n", bk.rps,
           bk.p50_ms, bk.p99_ms);
    printf("| GET /v1/api-keys, JWT | %.0f | %.3f | %.3f | %ld |\n", rj.rps, rj.p50_ms, rj.p99_ms,
           rj.errors);
    printf("| baseline: membership check + key list, direct SQL | %.0f | %.3f | %.3f | - |\n",
           bj.rps, bj.p50_ms, bj.p99_ms);
    if (!db_url)
        printf("\ntargets: >= 10000 key-authenticated req/s on SQLite: %s; p99 <= 5 ms: %s\n",
               rk.rps >= 10000 ? "met" : "NOT met", rk.p99_ms <= 5 ? "met" : "NOT met");
    status = 0;
out:
    db_close(db);
    json_decref(su);
    json_decref(key);
    httpc_free(h);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    char rm[400];
    snprintf(rm, sizeof rm, "%s/wrenn.db", dir);
    unlink(rm);
    snprintf(rm, sizeof rm, "%s/wrenn.db-wal", dir);
    unlink(rm);
    snprintf(rm, sizeof rm, "%s/wrenn.db-shm", dir);
    unlink(rm);
    snprintf(rm, sizeof rm, "%s/jwt_secret", dir);
    unlink(rm);
    unlink(portfile);
    rmdir(dir);
    return status;
}
