#include "cph.h"
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

/* Instances still running, so the group teardown can clean up after a failed assertion
 * (cmocka leaves the test function by longjmp, skipping its cph_stop()). */
#define MAX_LIVE 32
static struct {
    pid_t pid;
    char dir[256];
} live[MAX_LIVE];

static void live_add(const cph_t *c)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (!live[i].pid) {
            live[i].pid = c->pid;
            snprintf(live[i].dir, sizeof live[i].dir, "%s", c->dir);
            return;
        }
}

static void live_del(pid_t pid)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].pid == pid)
            live[i].pid = 0;
}

static void rmrf(const char *path);

static void live_reap(void)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (!live[i].pid)
            continue;
        kill(live[i].pid, SIGKILL);
        waitpid(live[i].pid, NULL, 0);
        rmrf(live[i].dir);
        live[i].pid = 0;
    }
}

static char pg_dir[256];
static char pg_url[512];
static int db_counter;

bool cph_is_pg(void)
{
    const char *e = getenv("WRENN_TEST_CP_ENGINE");
    return e && !strcmp(e, "postgres");
}

static const char *cp_bin(void)
{
    const char *b = getenv("WRENN_TEST_CP_BIN");
    return b && *b ? b : "build/src/cp/wrenn-cp";
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static void rmrf(const char *path)
{
    if (path && *path && strncmp(path, "/tmp/", 5) == 0)
        nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Spawn argv, capture stdout into out (malloc'd) when asked; returns the exit status. */
static int run_capture(char *const *argv, char **out)
{
    int pfd[2] = {-1, -1};
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        return -1;
    }
    buf_t b;
    buf_init(&b);
    char tmp[4096];
    ssize_t n;
    while ((n = read(pfd[0], tmp, sizeof tmp)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0)
            buf_add(&b, tmp, (size_t)n);
    close(pfd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (out)
        *out = b.data ? buf_steal(&b, NULL) : xstrdup("");
    buf_fini(&b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int cph_suite_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    httpc_global_init();
    if (!cph_is_pg())
        return 0;
    char tmpl[] = "/tmp/wrenn-pg-XXXXXX";
    if (!mkdtemp(tmpl))
        return -1;
    snprintf(pg_dir, sizeof pg_dir, "%s", tmpl);
    const char *sh = getenv("WRENN_TEST_CP_PGSH");
    char *argv[] = {(char *)(sh ? sh : "tests/it/cp/pg.sh"), "start", pg_dir, NULL};
    char *out = NULL;
    int rc = run_capture(argv, &out);
    if (rc != 0 || !out || strncmp(out, "postgres://", 11) != 0) {
        fprintf(stderr, "# pg.sh start failed (%d): %s\n", rc, out ? out : "");
        free(out);
        return -1;
    }
    out[strcspn(out, "\n")] = '\0';
    snprintf(pg_url, sizeof pg_url, "%s", out);
    free(out);
    return 0;
}

int cph_suite_teardown(void **state)
{
    (void)state;
    live_reap();
    if (!pg_dir[0])
        return 0;
    const char *sh = getenv("WRENN_TEST_CP_PGSH");
    char *argv[] = {(char *)(sh ? sh : "tests/it/cp/pg.sh"), "stop", pg_dir, NULL};
    run_capture(argv, NULL);
    rmrf(pg_dir);
    pg_dir[0] = '\0';
    return 0;
}

/* A fresh database in the shared cluster for one wrenn-cp instance. */
static int fresh_pg_db(char *out, size_t n)
{
    db_t *db = NULL;
    err_t e = {0};
    if (db_open(pg_url, 1, &db, &e) < 0) {
        fprintf(stderr, "# %s\n", e.msg);
        return -1;
    }
    char name[64], sql[128];
    snprintf(name, sizeof name, "t%d_%d", (int)getpid(), ++db_counter);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    db_conn_t *c = NULL;
    int rc = db_acquire(db, &c, &e);
    if (rc >= 0)
        rc = db_script(c, sql, &e);
    db_release(c);
    db_close(db);
    if (rc < 0) {
        fprintf(stderr, "# %s\n", e.msg);
        return -1;
    }
    /* Same server, other database: replace the path component. */
    const char *q = strchr(pg_url, '?');
    const char *slash = strrchr(pg_url, '/');
    snprintf(out, n, "%.*s/%s%s", (int)(slash - pg_url), pg_url, name, q ? q : "");
    return 0;
}

static char **build_argv(cph_t *c, const char *const *pre, const char *const *extra)
{
    size_t n = 0;
    const char *list[64];
    list[n++] = cp_bin();
    char dd[300];
    snprintf(dd, sizeof dd, "--data-dir=%s/data", c->dir);
    list[n++] = xstrdup(dd);
    char du[600];
    snprintf(du, sizeof du, "--database-url=%s", c->db_url);
    list[n++] = xstrdup(du);
    for (const char *const *p = pre; p && *p && n < 60; p++)
        list[n++] = *p;
    for (const char *const *p = extra; p && *p && n < 60; p++)
        list[n++] = *p;
    char **argv = xcalloc(n + 1, sizeof *argv);
    for (size_t i = 0; i < n; i++)
        argv[i] = (char *)list[i];
    return argv;
}

/* Spawn wrenn-cp on c's dir and database and wait for its port. */
static int spawn_cp(cph_t *c, const char *const *extra)
{
    char port_file[300], log_file[300], pf[320];
    snprintf(port_file, sizeof port_file, "%s/port", c->dir);
    snprintf(log_file, sizeof log_file, "%s/cp.log", c->dir);
    snprintf(pf, sizeof pf, "--port-file=%s", port_file);
    unlink(port_file);
    const char *pre[] = {"--port=0",
                         "--addr=127.0.0.1",
                         pf,
                         "--argon2-ops=1",
                         "--argon2-mem-kib=64",
                         "--log-level=warn",
                         NULL};
    char **argv = build_argv(c, pre, extra);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawn(&c->pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    for (size_t i = 1; i < 3; i++)
        free(argv[i]);
    free(argv);
    if (rc != 0)
        return -rc;
    live_add(c);
    for (int i = 0; i < 300; i++) {
        FILE *f = fopen(port_file, "re");
        if (f) {
            int port = 0;
            if (fscanf(f, "%d", &port) == 1 && port > 0) {
                fclose(f);
                c->port = port;
                snprintf(c->url, sizeof c->url, "http://127.0.0.1:%d", port);
                c->http = httpc_new();
                return 0;
            }
            fclose(f);
        }
        if (!cph_alive(c))
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "%s/cp.log", c->dir);
    FILE *f = fopen(cmd, "re");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        fprintf(stderr, "# cp: %s", line);
    if (f)
        fclose(f);
    cph_stop(c);
    return -ETIMEDOUT;
}

int cph_start(cph_t *c, const char *const *extra)
{
    memset(c, 0, sizeof *c);
    char tmpl[] = "/tmp/wrenn-cp-test-XXXXXX";
    if (!mkdtemp(tmpl))
        return -errno;
    snprintf(c->dir, sizeof c->dir, "%s", tmpl);
    if (cph_is_pg()) {
        if (fresh_pg_db(c->db_url, sizeof c->db_url) < 0)
            return -EIO;
    } else {
        snprintf(c->db_url, sizeof c->db_url, "%s/wrenn.db", c->dir);
    }
    return spawn_cp(c, extra);
}

int cph_restart(cph_t *c, const char *const *extra)
{
    if (c->pid > 0)
        cph_halt(c);
    httpc_free(c->http);
    c->http = NULL;
    return spawn_cp(c, extra);
}

bool cph_alive(cph_t *c)
{
    if (c->pid <= 0)
        return false;
    int st;
    return waitpid(c->pid, &st, WNOHANG) == 0;
}

int cph_halt(cph_t *c)
{
    int st = 0;
    if (c->pid <= 0)
        return -1;
    live_del(c->pid);
    kill(c->pid, SIGTERM);
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR)
        ;
    c->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int cph_stop(cph_t *c)
{
    int status = -1;
    if (c->pid > 0) {
        live_del(c->pid);
        kill(c->pid, SIGTERM);
        int st = 0;
        for (int i = 0; i < 250; i++) {
            pid_t w = waitpid(c->pid, &st, WNOHANG);
            if (w == c->pid) {
                status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                break;
            }
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (status < 0) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            status = 128 + SIGKILL;
        }
        c->pid = 0;
    }
    httpc_free(c->http);
    c->http = NULL;
    rmrf(c->dir);
    return status;
}

int cph_run(cph_t *c, const char *const *args, char **out)
{
    const char *pre[] = {"--log-level=warn", NULL};
    size_t n = 0;
    while (args[n])
        n++;
    char **argv = build_argv(c, pre, args);
    int rc = run_capture(argv, out);
    for (size_t i = 1; i < 3; i++)
        free(argv[i]);
    free(argv);
    return rc;
}

long cph_req_raw(cph_t *c, const char *method, const char *path, const char *token,
                 const void *body, size_t len, const char *header, json_t **json)
{
    char url[2048], auth[4200];
    snprintf(url, sizeof url, "%s%s", c->url, path);
    const char *hdrs[4] = {0};
    int nh = 0;
    if (token) {
        if (!strncmp(token, "Bearer ", 7) || strchr(token, '.'))
            snprintf(auth, sizeof auth, "Authorization: Bearer %s",
                     !strncmp(token, "Bearer ", 7) ? token + 7 : token);
        else
            snprintf(auth, sizeof auth, "X-API-Key: %s", token);
        hdrs[nh++] = auth;
    }
    if (header)
        hdrs[nh++] = header;
    if (body)
        hdrs[nh++] = "Content-Type: application/json";
    httpc_req_t rq = {.method = method,
                      .url = url,
                      .headers = hdrs,
                      .body = body,
                      .body_len = len,
                      .timeout_ms = 30000};
    httpc_resp_t rs;
    httpc_resp_init(&rs);
    err_t e = {0};
    long status = -1;
    if (httpc_do(c->http, &rq, &rs, &e) == 0)
        status = rs.status;
    if (json) {
        *json = rs.body.len ? json_loadb(rs.body.data, rs.body.len, 0, NULL) : NULL;
    }
    httpc_resp_fini(&rs);
    return status;
}

long cph_req(cph_t *c, const char *method, const char *path, const char *token, const char *apikey,
             const char *body, json_t **json)
{
    return cph_req_raw(c, method, path, apikey ? apikey : token, body, body ? strlen(body) : 0,
                       NULL, json);
}

json_t *cph_signup(cph_t *c, const char *email, const char *name, char **token)
{
    char body[1024];
    if (name)
        snprintf(body, sizeof body,
                 "{\"email\":\"%s\",\"password\":\"password123\",\"name\":\"%s\"}", email, name);
    else
        snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"password123\"}", email);
    json_t *j = NULL;
    long st = cph_req(c, "POST", "/v1/auth/signup", NULL, NULL, body, &j);
    if (st != 201)
        fprintf(stderr, "# signup %s → %ld\n", email, st);
    assert_int_equal(st, 201);
    assert_non_null(j);
    if (token)
        *token = xstrdup(js(j, "token"));
    return j;
}

char *cph_login(cph_t *c, const char *email, const char *password)
{
    char body[1024];
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", email, password);
    json_t *j = NULL;
    long st = cph_req(c, "POST", "/v1/auth/login", NULL, NULL, body, &j);
    char *tok = st == 200 ? xstrdup(js(j, "token")) : NULL;
    json_decref(j);
    return tok;
}

const char *cph_err_code(json_t *j)
{
    json_t *e = json_object_get(j, "error");
    json_t *c = json_object_get(e, "code");
    return json_is_string(c) ? json_string_value(c) : "";
}

const char *js(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int cph_sql(cph_t *c, const char *sql, int n, const char *const *params)
{
    db_t *db = NULL;
    err_t e = {0};
    if (db_open(c->db_url, 1, &db, &e) < 0) {
        fprintf(stderr, "# %s\n", e.msg);
        return -EIO;
    }
    db_conn_t *conn = NULL;
    int rc = db_acquire(db, &conn, &e);
    if (rc >= 0)
        rc = db_exec_dyn(conn, sql, n, params, NULL, NULL, &e);
    if (rc < 0)
        fprintf(stderr, "# sql: %s\n", e.msg);
    db_release(conn);
    db_close(db);
    return rc;
}

db_t *cph_db(cph_t *c)
{
    db_t *db = NULL;
    err_t e = {0};
    if (db_open(c->db_url, 2, &db, &e) < 0)
        return NULL;
    return db;
}

char *cph_sql1(cph_t *c, const char *sql, int n, const char *const *params)
{
    db_t *db = NULL;
    err_t e = {0};
    if (db_open(c->db_url, 1, &db, &e) < 0)
        return NULL;
    db_conn_t *conn = NULL;
    db_row1_t r = {0};
    char *out = NULL;
    if (db_acquire(db, &conn, &e) >= 0 &&
        db_exec_dyn(conn, sql, n, params, db_row1_fn, &r, &e) >= 0 && r.found && r.v[0])
        out = xstrdup(r.v[0]);
    db_row1_fini(&r);
    db_release(conn);
    db_close(db);
    return out;
}
