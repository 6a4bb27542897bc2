/* process.Process against the running wrenn-envd: Start/Connect streams, List, input, signals,
 * PTYs, users, timeouts, keepalives, vanished clients, bad requests, concurrency and volume. */
#include "harness.h"
#include "b64.h"
#include "connect.h"

#include <dirent.h>
#include <glob.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static th_envd_t E;

#define START   "/process.Process/Start"
#define CONNECT "/process.Process/Connect"

/* ---- helpers ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* json_pack, then a compact string (caller frees). */
static char *js(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_error_t je;
    json_t *j = json_vpack_ex(&je, 0, fmt, ap);
    va_end(ap);
    if (!j)
        fail_msg("json_pack: %s", je.text);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

/* A Start request for /bin/sh -c script. */
static char *sh_req(const char *script)
{
    return js("{s:{s:s,s:[s,s]},s:b}", "process", "cmd", "/bin/sh", "args", "-c", script, "stdin",
              0);
}

static void run(const char *json, const char *const *headers, th_stream_t *s)
{
    assert_int_equal(th_stream(&E, START, json, headers, NULL, NULL, s), 0);
    assert_int_equal(s->status, 200);
    assert_false(s->bad_frame);
}

static void run_sh(const char *script, th_stream_t *s)
{
    char *j = sh_req(script);
    run(j, NULL, s);
    free(j);
}

/* The stream ended cleanly, began with a start event and holds exactly one end event. */
static void assert_complete(const th_stream_t *s)
{
    assert_non_null(s->end);
    assert_null(json_object_get(s->end, "error"));
    assert_true(s->n >= 2);
    json_t *start = json_object_get(json_object_get(s->msgs[0], "event"), "start");
    assert_non_null(start);
    assert_true(json_integer_value(json_object_get(start, "pid")) > 0);
    json_t *last = json_object_get(s->msgs[s->n - 1], "event");
    assert_non_null(json_object_get(last, "end"));
}

static long exit_code(const th_stream_t *s)
{
    json_t *end = th_end_event(s);
    assert_non_null(end);
    return (long)json_integer_value(json_object_get(end, "exitCode")); /* absent: 0 */
}

static const char *stream_error(const th_stream_t *s)
{
    json_t *err = s->end ? json_object_get(s->end, "error") : NULL;
    return err ? json_string_value(json_object_get(err, "code")) : NULL;
}

static void assert_output(const th_stream_t *s, const char *which, const char *want)
{
    buf_t b;
    buf_init(&b);
    th_collect_output(s, which, &b);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data ? b.data : "", want, b.len);
    buf_fini(&b);
}

/* A unary call; returns the HTTP status and the JSON body in *out (may be NULL). */
static long unary(const char *method, const char *json, json_t **out)
{
    char path[128];
    snprintf(path, sizeof path, "/process.Process/%s", method);
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_unary(&E, path, json, NULL, &r), 0);
    long st = r.status;
    if (out)
        *out = th_json(&r);
    httpc_resp_fini(&r);
    return st;
}

static void expect_unary(const char *method, const char *json, long status, const char *code)
{
    json_t *j = NULL;
    long st = unary(method, json, &j);
    if (st != status)
        fail_msg("%s %s: status %ld, want %ld", method, json, st, status);
    if (code) {
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "code")), code);
        assert_true(json_is_string(json_object_get(j, "message")));
    }
    json_decref(j);
}

/* expect_unary for a json string the call takes. */
static void expect_take(const char *method, char *json, long status, const char *code)
{
    expect_unary(method, json, status, code);
    free(json);
}

static void send_stdin(int pid, const char *data)
{
    char *b = th_b64(data, strlen(data));
    char *j = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "stdin", b);
    expect_unary("SendInput", j, 200, NULL);
    free(j);
    free(b);
}

static void send_signal(int pid, const char *sig)
{
    char *j = js("{s:{s:i},s:s}", "process", "pid", pid, "signal", sig);
    expect_unary("SendSignal", j, 200, NULL);
    free(j);
}

/* The List entry of pid (new reference), or NULL. */
static json_t *listed(int pid)
{
    json_t *j = NULL;
    assert_int_equal(unary("List", "{}", &j), 200);
    assert_non_null(j);
    json_t *found = NULL, *it;
    size_t i;
    json_array_foreach(json_object_get(j, "processes"), i, it)
    {
        if (json_integer_value(json_object_get(it, "pid")) == pid)
            found = json_incref(it);
    }
    json_decref(j);
    return found;
}

static bool wait_unlisted(int pid, int ms)
{
    for (int64_t end = now_ms() + ms; now_ms() < end; usleep(20000)) {
        json_t *p = listed(pid);
        if (!p)
            return true;
        json_decref(p);
    }
    return false;
}

/* Whether pid is still a live process (not gone, not a zombie). */
static bool pid_alive(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static bool wait_dead(int pid, int ms)
{
    for (int64_t end = now_ms() + ms; now_ms() < end; usleep(20000))
        if (!pid_alive(pid))
            return true;
    return false;
}

/* envd must never keep zombie children around. */
static void assert_no_zombies(void)
{
    char pat[64];
    snprintf(pat, sizeof pat, "/proc/%d/task/*/children", (int)E.pid);
    glob_t g;
    assert_int_equal(glob(pat, 0, NULL, &g), 0);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        FILE *f = fopen(g.gl_pathv[i], "re");
        if (!f)
            continue;
        int pid;
        while (fscanf(f, "%d", &pid) == 1) {
            char path[64], buf[512];
            snprintf(path, sizeof path, "/proc/%d/stat", pid);
            FILE *s = fopen(path, "re");
            if (!s)
                continue;
            size_t n = fread(buf, 1, sizeof buf - 1, s);
            fclose(s);
            buf[n] = '\0';
            const char *rp = strrchr(buf, ')');
            if (rp && rp[2] == 'Z')
                fail_msg("envd has a zombie child %d", pid);
        }
        fclose(f);
    }
    globfree(&g);
}

static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* A stream running on its own thread, so the test can act while it is open. */
typedef struct bg {
    pthread_t th;
    const char *path;
    char *json;
    const char *headers[4];
    th_stream_t s;
    int rc;
    pthread_mutex_t mu;
    buf_t out; /* every decoded data byte, any kind */
    atomic_int pid;
    atomic_bool done;
} bg_t;

static int bg_on_msg(void *ud, json_t *m)
{
    bg_t *b = ud;
    json_t *ev = json_object_get(m, "event");
    json_t *st = json_object_get(ev, "start");
    if (st)
        atomic_store(&b->pid, (int)json_integer_value(json_object_get(st, "pid")));
    json_t *data = json_object_get(ev, "data");
    if (data) {
        const char *k;
        json_t *v;
        pthread_mutex_lock(&b->mu);
        json_object_foreach(data, k, v) th_unb64(json_string_value(v), &b->out);
        pthread_mutex_unlock(&b->mu);
    }
    return 0;
}

static void *bg_main(void *ud)
{
    bg_t *b = ud;
    b->rc = th_stream(&E, b->path, b->json, b->headers, bg_on_msg, b, &b->s);
    atomic_store(&b->done, true);
    return NULL;
}

/* Takes json. header may be NULL. */
static void bg_start(bg_t *b, const char *path, char *json, const char *header)
{
    memset(b, 0, sizeof *b);
    b->path = path;
    b->json = json;
    b->headers[0] = header;
    pthread_mutex_init(&b->mu, NULL);
    buf_init(&b->out);
    assert_int_equal(pthread_create(&b->th, NULL, bg_main, b), 0);
}

static int bg_pid(bg_t *b)
{
    for (int64_t end = now_ms() + 10000; now_ms() < end; usleep(5000))
        if (atomic_load(&b->pid) > 0)
            return atomic_load(&b->pid);
    fail_msg("no start event");
    return -1;
}

static bool bg_wait_output(bg_t *b, const char *needle, int ms)
{
    for (int64_t end = now_ms() + ms; now_ms() < end; usleep(10000)) {
        pthread_mutex_lock(&b->mu);
        bool found = b->out.data && strstr(b->out.data, needle);
        pthread_mutex_unlock(&b->mu);
        if (found)
            return true;
    }
    return false;
}

static void bg_join(bg_t *b)
{
    pthread_join(b->th, NULL);
    assert_int_equal(b->rc, 0);
}

static void bg_fini(bg_t *b)
{
    th_stream_fini(&b->s);
    buf_fini(&b->out);
    pthread_mutex_destroy(&b->mu);
    free(b->json);
}

static int stop_after_start(void *ud, json_t *m)
{
    json_t *st = json_object_get(json_object_get(m, "event"), "start");
    if (st) {
        *(int *)ud = (int)json_integer_value(json_object_get(st, "pid"));
        return 1;
    }
    return 0;
}

/* Start a process and walk away from its stream right after the start event. */
static int start_detached(const char *json)
{
    th_stream_t s;
    int pid = 0;
    assert_int_equal(th_stream(&E, START, json, NULL, stop_after_start, &pid, &s), 0);
    th_stream_fini(&s);
    assert_true(pid > 0);
    return pid;
}

/* ---- tests ---- */

static int setup(void **state)
{
    (void)state;
    return th_envd_start(&E, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    bool alive = th_envd_alive(&E);
    th_envd_stop(&E);
    return alive ? 0 : -1;
}

static void test_stdout_stderr(void **state)
{
    (void)state;
    th_stream_t s;
    run_sh("echo out; echo err >&2; printf 'no newline'", &s);
    assert_complete(&s);
    assert_output(&s, "stdout", "out\nno newline");
    assert_output(&s, "stderr", "err\n");
    json_t *end = th_end_event(&s);
    /* proto3 JSON: exitCode 0 is a default and left out; exited and status are there. */
    assert_null(json_object_get(end, "exitCode"));
    assert_true(json_is_true(json_object_get(end, "exited")));
    assert_string_equal(json_string_value(json_object_get(end, "status")), "exit status 0");
    assert_null(json_object_get(end, "error"));
    assert_string_equal(s.ctype, "application/connect+json");
    th_stream_fini(&s);
}

static void test_exit_codes(void **state)
{
    (void)state;
    th_stream_t s;
    run_sh("exit 3", &s);
    assert_complete(&s);
    assert_int_equal(exit_code(&s), 3);
    assert_string_equal(json_string_value(json_object_get(th_end_event(&s), "status")),
                        "exit status 3");
    th_stream_fini(&s);

    /* Not found: by path and through the PATH search; not executable: 126. */
    const char *cmds[] = {"/nonexistent/cmd", "wrenn-no-such-command", "/etc/passwd", "/tmp"};
    const long want[] = {127, 127, 126, 126};
    for (size_t i = 0; i < 4; i++) {
        char *j = js("{s:{s:s}}", "process", "cmd", cmds[i]);
        run(j, NULL, &s);
        free(j);
        assert_complete(&s);
        assert_int_equal(exit_code(&s), want[i]);
        buf_t err;
        buf_init(&err);
        th_collect_output(&s, "stderr", &err);
        assert_non_null(err.data);
        assert_non_null(strstr(err.data, cmds[i]));
        buf_fini(&err);
        th_stream_fini(&s);
    }

    /* cmd is not shell-parsed: a name with a space is one (missing) program. */
    char *j = js("{s:{s:s}}", "process", "cmd", "echo hi");
    run(j, NULL, &s);
    free(j);
    assert_int_equal(exit_code(&s), 127);
    assert_output(&s, "stdout", "");
    th_stream_fini(&s);

    /* A script without #! runs through /bin/sh, as execvp would. */
    char *dir = th_tmpdir();
    char path[300];
    snprintf(path, sizeof path, "%s/script", dir);
    FILE *f = fopen(path, "w");
    fputs("echo from-script \"$1\"\n", f);
    fclose(f);
    chmod(path, 0755);
    j = js("{s:{s:s,s:[s]}}", "process", "cmd", path, "args", "arg1");
    run(j, NULL, &s);
    free(j);
    assert_int_equal(exit_code(&s), 0);
    assert_output(&s, "stdout", "from-script arg1\n");
    th_stream_fini(&s);
    th_rmrf(dir);
    free(dir);
}

static void test_envs_and_cwd(void **state)
{
    (void)state;
    char *dir = th_tmpdir();
    char *j = js("{s:{s:s,s:[s,s],s:{s:s,s:s},s:s}}", "process", "cmd", "/bin/sh", "args", "-c",
                 "echo \"$FOO|$EMPTY|$WRENN_SANDBOX|$HOME|$USER\"; pwd", "envs", "FOO", "bar baz",
                 "EMPTY", "", "cwd", dir);
    th_stream_t s;
    run(j, NULL, &s);
    free(j);
    assert_complete(&s);
    char want[400];
    snprintf(want, sizeof want, "bar baz||true|/root|root\n%s\n", dir);
    assert_output(&s, "stdout", want);
    th_stream_fini(&s);

    /* A relative cwd is under the user's home; "" is the home itself. */
    j = js("{s:{s:s,s:s}}", "process", "cmd", "pwd", "cwd", "");
    run(j, NULL, &s);
    free(j);
    assert_output(&s, "stdout", "/root\n");
    th_stream_fini(&s);

    /* A missing cwd, or one that is a file, is invalid_argument and starts nothing. */
    char missing[320];
    snprintf(missing, sizeof missing, "%s/missing", dir);
    const char *bad[] = {missing, "/etc/passwd"};
    for (int i = 0; i < 2; i++) {
        j = js("{s:{s:s,s:s}}", "process", "cmd", "pwd", "cwd", bad[i]);
        run(j, NULL, &s);
        free(j);
        assert_int_equal(s.n, 0);
        assert_string_equal(stream_error(&s), "invalid_argument");
        th_stream_fini(&s);
    }
    th_rmrf(dir);
    free(dir);
}

static void test_user(void **state)
{
    (void)state;
    th_stream_t s;
    const char *root[] = {"Authorization: Basic cm9vdDo=", NULL}; /* "root:" */
    char *j = js("{s:{s:s}}", "process", "cmd", "id");
    run(j, root, &s);
    free(j);
    buf_t out;
    buf_init(&out);
    th_collect_output(&s, "stdout", &out);
    assert_non_null(out.data);
    assert_non_null(strstr(out.data, "uid=0(root)"));
    buf_fini(&out);
    th_stream_fini(&s);

    char *auth = th_b64("nobody:", 7);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "Authorization: Basic %s", auth);
    free(auth);
    const char *nobody[] = {hdr, NULL};
    j = js("{s:{s:s,s:[s,s],s:s}}", "process", "cmd", "/bin/sh", "args", "-c",
           "id -un; echo $HOME; touch f$$ && stat -c %U f$$ && rm f$$", "cwd", "/tmp");
    run(j, nobody, &s);
    free(j);
    assert_complete(&s);
    assert_int_equal(exit_code(&s), 0);
    buf_init(&out);
    th_collect_output(&s, "stdout", &out);
    assert_non_null(out.data);
    assert_int_equal(strncmp(out.data, "nobody\n", 7), 0);
    assert_non_null(strstr(out.data, "\nnobody\n")); /* the file it created is its own */
    buf_fini(&out);
    th_stream_fini(&s);

    /* nobody cannot enter /root: the start fails as a bad argument. */
    j = js("{s:{s:s,s:s}}", "process", "cmd", "pwd", "cwd", "/root");
    run(j, nobody, &s);
    free(j);
    assert_string_equal(stream_error(&s), "invalid_argument");
    th_stream_fini(&s);

    char *bad = th_b64("no-such-user-x:", 15);
    snprintf(hdr, sizeof hdr, "Authorization: Basic %s", bad);
    free(bad);
    const char *unknown[] = {hdr, NULL};
    j = js("{s:{s:s}}", "process", "cmd", "id");
    run(j, unknown, &s);
    free(j);
    assert_int_equal(s.n, 0);
    assert_string_equal(stream_error(&s), "unauthenticated");
    th_stream_fini(&s);
}

static void test_tag_connect_list(void **state)
{
    (void)state;
    char *j = js("{s:{s:s,s:[s,s],s:{s:s},s:s},s:s,s:b}", "process", "cmd", "/bin/sh", "args", "-c",
                 "read a; echo \"got:$a\"; read b; echo \"second:$b\"; exit 7", "envs", "K", "v",
                 "cwd", "/tmp", "tag", "my-tag", "stdin", 1);
    int pid = start_detached(j);
    free(j);

    json_t *info = listed(pid);
    assert_non_null(info);
    assert_string_equal(json_string_value(json_object_get(info, "tag")), "my-tag");
    json_t *cfg = json_object_get(info, "config");
    assert_string_equal(json_string_value(json_object_get(cfg, "cmd")), "/bin/sh");
    assert_int_equal(json_array_size(json_object_get(cfg, "args")), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(cfg, "envs"), "K")), "v");
    assert_string_equal(json_string_value(json_object_get(cfg, "cwd")), "/tmp");
    json_decref(info);

    bg_t by_tag, by_pid;
    bg_start(&by_tag, CONNECT, js("{s:{s:s}}", "process", "tag", "my-tag"), NULL);
    bg_start(&by_pid, CONNECT, js("{s:{s:i}}", "process", "pid", pid), NULL);
    /* The synthetic start of each Connect carries the process's pid. */
    assert_int_equal(bg_pid(&by_tag), pid);
    assert_int_equal(bg_pid(&by_pid), pid);

    send_stdin(pid, "hello\n");
    assert_true(bg_wait_output(&by_tag, "got:hello\n", 5000));
    assert_true(bg_wait_output(&by_pid, "got:hello\n", 5000));
    expect_take("CloseStdin", js("{s:{s:s}}", "process", "tag", "my-tag"), 200, NULL);
    bg_join(&by_tag);
    bg_join(&by_pid);
    bg_t *both[] = {&by_tag, &by_pid};
    for (int i = 0; i < 2; i++) {
        assert_complete(&both[i]->s);
        assert_output(&both[i]->s, "stdout", "got:hello\nsecond:\n");
        assert_int_equal(exit_code(&both[i]->s), 7);
        bg_fini(both[i]);
    }
    assert_true(wait_unlisted(pid, 2000));

    /* Gone now: every selector-taking call says not_found. */
    char *sel = js("{s:{s:i}}", "process", "pid", pid);
    th_stream_t s;
    assert_int_equal(th_stream(&E, CONNECT, sel, NULL, NULL, NULL, &s), 0);
    assert_string_equal(stream_error(&s), "not_found");
    th_stream_fini(&s);
    expect_unary("CloseStdin", sel, 404, "not_found");
    free(sel);
    j = js("{s:{s:s}}", "process", "tag", "my-tag");
    assert_int_equal(th_stream(&E, CONNECT, j, NULL, NULL, NULL, &s), 0);
    assert_string_equal(stream_error(&s), "not_found");
    th_stream_fini(&s);
    free(j);
}

static void test_connect_sees_only_new_output(void **state)
{
    (void)state;
    /* Prints a line per input line; what came before the attach is not replayed. */
    char *j = js("{s:{s:s,s:[s]},s:b}", "process", "cmd", "/bin/cat", "args", "-u", "stdin", 1);
    bg_t start;
    bg_start(&start, START, j, NULL);
    int pid = bg_pid(&start);
    send_stdin(pid, "before\n");
    assert_true(bg_wait_output(&start, "before\n", 5000));
    bg_t conn;
    bg_start(&conn, CONNECT, js("{s:{s:i}}", "process", "pid", pid), NULL);
    assert_int_equal(bg_pid(&conn), pid);
    send_stdin(pid, "after\n");
    expect_take("CloseStdin", js("{s:{s:i}}", "process", "pid", pid), 200, NULL);
    bg_join(&start);
    bg_join(&conn);
    assert_output(&start.s, "stdout", "before\nafter\n");
    assert_output(&conn.s, "stdout", "after\n");
    assert_complete(&conn.s);
    bg_fini(&start);
    bg_fini(&conn);
}

static void test_stdin(void **state)
{
    (void)state;
    char *j = js("{s:{s:s},s:b}", "process", "cmd", "cat", "stdin", 1);
    bg_t b;
    bg_start(&b, START, j, NULL);
    int pid = bg_pid(&b);
    send_stdin(pid, "abc");
    send_stdin(pid, "");
    send_stdin(pid, "def\n");
    /* A binary payload survives the base64 round trip. */
    char *bin = th_b64("\x01\xff\x00z", 4);
    char *req = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "stdin", bin);
    expect_unary("SendInput", req, 200, NULL);
    free(req);
    free(bin);
    expect_take("CloseStdin", js("{s:{s:i}}", "process", "pid", pid), 200, NULL);
    bg_join(&b);
    assert_complete(&b.s);
    assert_int_equal(exit_code(&b.s), 0);
    buf_t out;
    buf_init(&out);
    th_collect_output(&b.s, "stdout", &out);
    assert_int_equal(out.len, 11);
    assert_memory_equal(out.data, "abcdef\n\x01\xff\x00z", 11);
    buf_fini(&out);
    bg_fini(&b);
}

static void test_stdin_false(void **state)
{
    (void)state;
    /* With stdin=false, cat sees EOF at once (it would wait forever on a pipe). */
    const char *to[] = {"Connect-Timeout-Ms: 10000", NULL};
    char *j = js("{s:{s:s},s:b}", "process", "cmd", "cat", "stdin", 0);
    th_stream_t s;
    int64_t t0 = now_ms();
    run(j, to, &s);
    free(j);
    assert_complete(&s);
    assert_int_equal(exit_code(&s), 0);
    assert_true(now_ms() - t0 < 5000);
    th_stream_fini(&s);

    /* Input to such a process is refused with a clear failed_precondition. */
    j = js("{s:{s:s,s:[s]},s:b}", "process", "cmd", "sleep", "args", "30", "stdin", 0);
    int pid = start_detached(j);
    free(j);
    char *b = th_b64("x", 1);
    j = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "stdin", b);
    expect_unary("SendInput", j, 400, "failed_precondition");
    free(j);
    free(b);
    expect_take("CloseStdin", js("{s:{s:i}}", "process", "pid", pid), 400, "failed_precondition");
    /* PTY input to a pipe process is the wrong kind: internal. */
    b = th_b64("x", 1);
    j = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "pty", b);
    expect_unary("SendInput", j, 500, "internal");
    free(j);
    free(b);
    /* And a pipe process has no terminal to resize. */
    j = js("{s:{s:i},s:{s:{s:i,s:i}}}", "process", "pid", pid, "pty", "size", "cols", 10, "rows",
           10);
    expect_unary("Update", j, 500, "internal");
    free(j);
    send_signal(pid, "SIGNAL_SIGKILL");
    assert_true(wait_unlisted(pid, 5000));
}

static void test_stdin_closed(void **state)
{
    (void)state;
    char *j = js("{s:{s:s,s:[s]},s:b}", "process", "cmd", "sleep", "args", "30", "stdin", 1);
    int pid = start_detached(j);
    free(j);
    char *sel = js("{s:{s:i}}", "process", "pid", pid);
    expect_unary("CloseStdin", sel, 200, NULL);
    expect_unary("CloseStdin", sel, 200, NULL); /* closing twice is harmless */
    char *b = th_b64("x", 1);
    j = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "stdin", b);
    expect_unary("SendInput", j, 400, "failed_precondition");
    free(j);
    free(b);
    send_signal(pid, "SIGNAL_SIGKILL");
    assert_true(wait_unlisted(pid, 5000));
    free(sel);
}

static void test_pty(void **state)
{
    (void)state;
    char *j = js("{s:{s:s,s:[s,s]},s:{s:{s:i,s:i}},s:s}", "process", "cmd", "/bin/sh", "args", "-c",
                 "stty size; tty >/dev/null && echo is-a-tty; read x; stty size; echo got:$x",
                 "pty", "size", "cols", 100, "rows", 30, "tag", "pty-test");
    bg_t b;
    bg_start(&b, START, j, NULL);
    int pid = bg_pid(&b);
    assert_true(bg_wait_output(&b, "30 100", 5000));
    assert_true(bg_wait_output(&b, "is-a-tty", 5000));

    j = js("{s:{s:s},s:{s:{s:i,s:i}}}", "process", "tag", "pty-test", "pty", "size", "cols", 120,
           "rows", 40);
    expect_unary("Update", j, 200, NULL);
    free(j);
    /* Wrong kind of input, and closing stdin of a PTY, are refused. */
    char *x = th_b64("x", 1);
    j = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "stdin", x);
    expect_unary("SendInput", j, 500, "internal");
    free(j);
    free(x);
    expect_take("CloseStdin", js("{s:{s:i}}", "process", "pid", pid), 400, "failed_precondition");

    char *in = th_b64("hi\n", 3);
    j = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "pty", in);
    expect_unary("SendInput", j, 200, NULL);
    free(j);
    free(in);
    bg_join(&b);
    assert_complete(&b.s);
    assert_int_equal(exit_code(&b.s), 0);
    buf_t out;
    buf_init(&out);
    th_collect_output(&b.s, "pty", &out);
    assert_non_null(out.data);
    assert_non_null(strstr(out.data, "40 120"));
    assert_non_null(strstr(out.data, "got:hi"));
    assert_non_null(strstr(out.data, "hi\r\n")); /* the terminal echoes and maps NL to CR NL */
    buf_fini(&out);
    assert_output(&b.s, "stdout", "");
    bg_fini(&b);
}

static void test_pty_interactive_shell(void **state)
{
    (void)state;
    /* Close to what pty.create() does (bash -i -l), minus the machine's profile scripts, which
     * are no business of this test and may be slow. */
    char *j = js("{s:{s:s,s:[s,s,s],s:{s:s}},s:{s:{s:i,s:i}}}", "process", "cmd", "/bin/bash",
                 "args", "--noprofile", "--norc", "-i", "envs", "TERM", "xterm-256color", "pty",
                 "size", "cols", 80, "rows", 24);
    bg_t b;
    bg_start(&b, START, j, NULL);
    int pid = bg_pid(&b);
    char *in = th_b64("echo $((6*7))\n", 14);
    char *req = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "pty", in);
    expect_unary("SendInput", req, 200, NULL);
    free(req);
    free(in);
    assert_true(bg_wait_output(&b, "42", 5000));
    in = th_b64("exit 5\n", 7);
    req = js("{s:{s:i},s:{s:s}}", "process", "pid", pid, "input", "pty", in);
    expect_unary("SendInput", req, 200, NULL);
    free(req);
    free(in);
    bg_join(&b);
    assert_complete(&b.s);
    assert_int_equal(exit_code(&b.s), 5);
    bg_fini(&b);
}

static void test_signals(void **state)
{
    (void)state;
    struct {
        const char *sig;
        const char *status;
    } cases[] = {
        {"SIGNAL_SIGKILL", "signal: killed"},
        {"SIGNAL_SIGTERM", "signal: terminated"},
    };
    for (int i = 0; i < 2; i++) {
        bg_t b;
        bg_start(&b, START, sh_req("echo ready; exec sleep 30"), NULL);
        int pid = bg_pid(&b);
        assert_true(bg_wait_output(&b, "ready", 5000));
        int64_t t0 = now_ms();
        send_signal(pid, cases[i].sig);
        bg_join(&b);
        assert_true(now_ms() - t0 < 5000);
        assert_complete(&b.s);
        json_t *end = th_end_event(&b.s);
        assert_int_equal(json_integer_value(json_object_get(end, "exitCode")), -1);
        assert_null(json_object_get(end, "exited")); /* false: a default, left out */
        assert_string_equal(json_string_value(json_object_get(end, "status")), cases[i].status);
        bg_fini(&b);
    }

    /* By number, and the whole process group goes: the shell's background child too. */
    bg_t b;
    bg_start(&b, START, sh_req("sleep 30 & echo $!; wait"), NULL);
    int pid = bg_pid(&b);
    assert_true(bg_wait_output(&b, "\n", 5000));
    pthread_mutex_lock(&b.mu);
    int child = atoi(b.out.data);
    pthread_mutex_unlock(&b.mu);
    assert_true(child > 0);
    assert_true(pid_alive(child));
    char *j = js("{s:{s:i},s:i}", "process", "pid", pid, "signal", 15);
    expect_unary("SendSignal", j, 200, NULL);
    free(j);
    bg_join(&b);
    assert_true(wait_dead(child, 5000));
    bg_fini(&b);

    /* Anything but TERM and KILL is unimplemented. */
    j = js("{s:{s:s,s:[s]}}", "process", "cmd", "sleep", "args", "30");
    pid = start_detached(j);
    free(j);
    const char *bad[] = {"\"SIGNAL_UNSPECIFIED\"", "2", "\"SIGHUP\"", "\"SIGNAL_SIGINT\""};
    for (int i = 0; i < 4; i++) {
        char req[128];
        snprintf(req, sizeof req, "{\"process\":{\"pid\":%d},\"signal\":%s}", pid, bad[i]);
        expect_unary("SendSignal", req, 501, "unimplemented");
    }
    char req[128];
    snprintf(req, sizeof req, "{\"process\":{\"pid\":%d}}", pid);
    expect_unary("SendSignal", req, 501, "unimplemented");
    send_signal(pid, "SIGNAL_SIGKILL");
    assert_true(wait_unlisted(pid, 5000));
    j = js("{s:{s:i},s:s}", "process", "pid", pid, "signal", "SIGNAL_SIGKILL");
    expect_unary("SendSignal", j, 404, "not_found");
    free(j);
}

static void test_timeout(void **state)
{
    (void)state;
    const char *h[] = {"Connect-Timeout-Ms: 300", NULL};
    char *j = js("{s:{s:s,s:[s]}}", "process", "cmd", "sleep", "args", "30");
    th_stream_t s;
    int64_t t0 = now_ms();
    run(j, h, &s);
    free(j);
    int64_t took = now_ms() - t0;
    assert_true(took >= 250 && took < 5000);
    assert_string_equal(stream_error(&s), "deadline_exceeded");
    assert_true(s.n >= 1);
    int pid = (int)json_integer_value(
        json_object_get(json_object_get(json_object_get(s.msgs[0], "event"), "start"), "pid"));
    th_stream_fini(&s);
    /* The process outlives the call. */
    usleep(200000);
    json_t *info = listed(pid);
    assert_non_null(info);
    json_decref(info);
    assert_true(pid_alive(pid));
    send_signal(pid, "SIGNAL_SIGKILL");
    assert_true(wait_unlisted(pid, 5000));
}

static void test_keepalive(void **state)
{
    (void)state;
    const char *h[] = {"Keepalive-Ping-Interval: 1", NULL};
    char *j = js("{s:{s:s,s:[s]}}", "process", "cmd", "sleep", "args", "2.5");
    th_stream_t s;
    run(j, h, &s);
    free(j);
    assert_complete(&s);
    size_t ka = 0;
    for (size_t i = 0; i < s.n; i++)
        if (json_object_get(json_object_get(s.msgs[i], "event"), "keepalive"))
            ka++;
    assert_true(ka >= 2);
    assert_int_equal(exit_code(&s), 0);
    th_stream_fini(&s);
}

/* A client that stalls at its first data event (so envd's queues and socket buffers fill and
 * the reader has to wait for room), then goes away. */
static int stop_after_data(void *ud, json_t *m)
{
    (void)ud;
    if (!json_object_get(json_object_get(m, "event"), "data"))
        return 0;
    usleep(1000000);
    return 1;
}

static void test_client_disconnect(void **state)
{
    (void)state;
    int fds0 = count_fds(E.pid);
    /* One that writes far more than any buffer holds: the vanished reader must not stall it. */
    const char *scripts[] = {
        "echo first; sleep 1; echo second",
        "head -c 67108864 /dev/zero; echo done >&2",
    };
    for (int i = 0; i < 2; i++) {
        th_stream_t s;
        char *j = sh_req(scripts[i]);
        assert_int_equal(th_stream(&E, START, j, NULL, stop_after_data, NULL, &s), 0);
        free(j);
        int pid = (int)json_integer_value(
            json_object_get(json_object_get(json_object_get(s.msgs[0], "event"), "start"), "pid"));
        assert_true(pid > 0);
        th_stream_fini(&s);
        assert_true(wait_unlisted(pid, 15000));
        assert_true(wait_dead(pid, 2000));
    }
    assert_no_zombies();
    /* The fds of the processes and of the dropped streams are all closed again. */
    int fds = 0;
    for (int64_t end = now_ms() + 3000; now_ms() < end; usleep(20000))
        if ((fds = count_fds(E.pid)) <= fds0)
            break;
    assert_true(fds <= fds0);
    /* And envd keeps serving. */
    th_stream_t s;
    run_sh("echo still-here", &s);
    assert_output(&s, "stdout", "still-here\n");
    th_stream_fini(&s);
}

static void test_background_grandchild(void **state)
{
    (void)state;
    /* The background sleep keeps the pipes open; the end must not wait for it. */
    th_stream_t s;
    int64_t t0 = now_ms();
    run_sh("sleep 100 & echo $!", &s);
    assert_true(now_ms() - t0 < 3000);
    assert_complete(&s);
    assert_int_equal(exit_code(&s), 0);
    buf_t out;
    buf_init(&out);
    th_collect_output(&s, "stdout", &out);
    int bgpid = out.data ? atoi(out.data) : 0;
    buf_fini(&out);
    th_stream_fini(&s);
    assert_true(bgpid > 0);
    kill(bgpid, SIGKILL); /* ours to clean up: it outlived its parent on purpose */
    assert_no_zombies();
}

/* Send raw bytes to a streaming route; returns the end-of-stream JSON (new ref) or NULL. */
static json_t *raw_stream(const void *body, size_t len, const char *ctype, long *status)
{
    char ct[128];
    snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
    const char *h[] = {ct, "Connect-Protocol-Version: 1", NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&E, "POST", START, h, body, len, &r), 0);
    *status = r.status;
    json_t *out = NULL;
    if (r.status == 200) {
        uint8_t flags;
        uint32_t mlen;
        long n = connect_envelope_parse(r.body.data, r.body.len, 1u << 20, &flags, &mlen);
        assert_true(n > 0);
        assert_int_equal(flags, CONNECT_FLAG_END_STREAM);
        json_error_t je;
        out = json_loadb(r.body.data + 5, mlen, 0, &je);
    } else {
        out = th_json(&r);
    }
    httpc_resp_fini(&r);
    return out;
}

static const char *err_code(json_t *end)
{
    json_t *err = json_object_get(end, "error");
    return json_string_value(json_object_get(err ? err : end, "code"));
}

static void test_bad_requests(void **state)
{
    (void)state;
    long st;
    /* A truncated envelope. */
    json_t *j = raw_stream("\x00\x00\x00", 3, "application/connect+json", &st);
    assert_int_equal(st, 200);
    assert_string_equal(err_code(j), "invalid_argument");
    json_decref(j);
    /* A declared length over 4 MiB. */
    j = raw_stream("\x00\x00\x50\x00\x00{}", 7, "application/connect+json", &st);
    assert_int_equal(st, 200);
    assert_string_equal(err_code(j), "resource_exhausted");
    json_decref(j);
    /* Not JSON inside a good envelope. */
    j = raw_stream("\x00\x00\x00\x00\x03{x}", 8, "application/connect+json", &st);
    assert_string_equal(err_code(j), "invalid_argument");
    json_decref(j);
    /* The wrong content type is 415. */
    j = raw_stream("{}", 2, "application/json", &st);
    assert_int_equal(st, 415);
    json_decref(j);
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *h[] = {"Content-Type: text/plain", NULL};
    assert_int_equal(th_http(&E, "POST", "/process.Process/List", h, "{}", 2, &r), 0);
    assert_int_equal(r.status, 415);
    httpc_resp_fini(&r);

    /* Unknown fields are ignored. */
    th_stream_t s;
    run("{\"process\":{\"cmd\":\"echo\",\"args\":[\"ok\"],\"future\":1},\"unknownTop\":{\"a\":[]}}",
        NULL, &s);
    assert_output(&s, "stdout", "ok\n");
    th_stream_fini(&s);
    /* snake_case and numbers-as-strings are accepted too. */
    run("{\"process\":{\"cmd\":\"sh\",\"args\":[\"-c\",\"stty size\"]},\"pty\":{\"size\":{\"cols\":"
        "\"33\",\"rows\":11}}}",
        NULL, &s);
    buf_t out;
    buf_init(&out);
    th_collect_output(&s, "pty", &out);
    assert_non_null(out.data);
    assert_non_null(strstr(out.data, "11 33"));
    buf_fini(&out);
    th_stream_fini(&s);

    /* Bad messages. */
    const char *bad[] = {
        "{}",
        "{\"process\":{}}",
        "{\"process\":{\"cmd\":\"\"}}",
        "{\"process\":{\"cmd\":7}}",
        "{\"process\":{\"cmd\":\"x\",\"args\":\"notalist\"}}",
        "{\"process\":{\"cmd\":\"x\",\"args\":[1]}}",
        "{\"process\":{\"cmd\":\"x\",\"envs\":{\"A\":1}}}",
        "{\"process\":{\"cmd\":\"x\",\"envs\":{\"A=B\":\"c\"}}}",
        "{\"process\":{\"cmd\":\"x\"},\"stdin\":\"yes\"}",
        "{\"process\":{\"cmd\":\"x\"},\"pty\":{\"size\":{\"cols\":70000}}}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(th_stream(&E, START, bad[i], NULL, NULL, NULL, &s), 0);
        if (!stream_error(&s) || strcmp(stream_error(&s), "invalid_argument") != 0)
            fail_msg("%s: %s", bad[i], stream_error(&s) ? stream_error(&s) : "(no error)");
        assert_int_equal(s.n, 0);
        th_stream_fini(&s);
    }

    /* Unknown processes. */
    assert_int_equal(th_stream(&E, CONNECT, "{\"process\":{\"pid\":999999}}", NULL, NULL, NULL, &s),
                     0);
    assert_string_equal(stream_error(&s), "not_found");
    th_stream_fini(&s);
    expect_unary("SendInput", "{\"process\":{\"pid\":999999},\"input\":{\"stdin\":\"eA==\"}}", 404,
                 "not_found");
    expect_unary("SendSignal", "{\"process\":{\"tag\":\"nope\"},\"signal\":\"SIGNAL_SIGKILL\"}",
                 404, "not_found");
    expect_unary("Update", "{\"process\":{\"pid\":999999}}", 404, "not_found");
    expect_unary("CloseStdin", "{\"process\":{\"pid\":999999}}", 404, "not_found");
    /* Selectors and inputs that are malformed. */
    expect_unary("CloseStdin", "{}", 400, "invalid_argument");
    expect_unary("CloseStdin", "{\"process\":{}}", 400, "invalid_argument");
    expect_unary("CloseStdin", "{\"process\":{\"pid\":-1}}", 400, "invalid_argument");
    expect_unary("SendInput", "{\"process\":{\"pid\":1}}", 400, "invalid_argument");
    expect_unary("SendInput", "{\"process\":{\"pid\":1},\"input\":{\"stdin\":\"!!\"}}", 400,
                 "invalid_argument");
    expect_unary("SendInput", "{\"process\":{\"pid\":1},\"input\":{}}", 400, "invalid_argument");
    expect_unary("List", "not json", 400, "invalid_argument");
    /* Unknown fields in List are fine. */
    expect_unary("List", "{\"whatever\":1}", 200, NULL);
    assert_true(th_envd_alive(&E));
}

/* ---- StreamInput (client stream) ---- */

static void add_env(buf_t *b, const char *json)
{
    connect_envelope_add(b, 0, json, strlen(json));
}

/* Split a stream answer: the number of messages, and the end-of-stream JSON (new ref). */
static json_t *stream_answer(const buf_t *body, int *nmsgs)
{
    size_t off = 0;
    *nmsgs = 0;
    while (off < body->len) {
        uint8_t flags;
        uint32_t mlen;
        long n = connect_envelope_parse(body->data + off, body->len - off, 1u << 20, &flags, &mlen);
        assert_true(n > 0);
        if (flags & CONNECT_FLAG_END_STREAM) {
            json_error_t je;
            return json_loadb(body->data + off + 5, mlen, 0, &je);
        }
        assert_int_equal(mlen, 2); /* {} */
        (*nmsgs)++;
        off += (size_t)n;
    }
    return NULL;
}

static const char *const sin_headers[] = {"Content-Type: application/connect+json",
                                          "Connect-Protocol-Version: 1", NULL};

/* Post body to StreamInput; returns the end-of-stream JSON (new ref). */
static json_t *stream_input(const buf_t *body, int *nmsgs)
{
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(
        th_http(&E, "POST", "/process.Process/StreamInput", sin_headers, body->data, body->len, &r),
        0);
    assert_int_equal(r.status, 200);
    json_t *end = stream_answer(&r.body, nmsgs);
    httpc_resp_fini(&r);
    assert_non_null(end);
    return end;
}

static void test_stream_input(void **state)
{
    (void)state;
    bg_t b;
    bg_start(&b, START, js("{s:{s:s},s:b}", "process", "cmd", "cat", "stdin", 1), NULL);
    int pid = bg_pid(&b);
    char sel[96];
    snprintf(sel, sizeof sel, "{\"start\":{\"process\":{\"pid\":%d}}}", pid);
    buf_t body;
    buf_init(&body);
    add_env(&body, sel);
    add_env(&body, "{\"data\":{\"input\":{\"stdin\":\"YWJj\"}}}"); /* abc */
    add_env(&body, "{\"keepalive\":{}}");
    add_env(&body, "{\"data\":{\"input\":{\"stdin\":\"ZGVmCg==\"}}}"); /* def\n */
    int n = 0;
    json_t *end = stream_input(&body, &n);
    assert_int_equal(n, 1);
    assert_int_equal(json_object_size(end), 0);
    json_decref(end);
    buf_fini(&body);
    expect_take("CloseStdin", js("{s:{s:i}}", "process", "pid", pid), 200, NULL);
    bg_join(&b);
    assert_output(&b.s, "stdout", "abcdef\n");
    bg_fini(&b);
}

struct sin_feed {
    bg_t *b;
    int step;
    char sel[96];
    bool saw_first; /* line1 reached the process while the request was still open */
};

/* The request body, envelope by envelope: the second waits until the first one's input came
 * back out of cat, which only happens if envd applied it before the body ended. */
static long sin_read(void *ud, char *dst, size_t max)
{
    struct sin_feed *f = ud;
    buf_t b;
    buf_init(&b);
    switch (f->step++) {
    case 0:
        add_env(&b, f->sel);
        add_env(&b, "{\"data\":{\"input\":{\"stdin\":\"bGluZTEK\"}}}"); /* line1\n */
        break;
    case 1:
        f->saw_first = bg_wait_output(f->b, "line1\n", 5000);
        add_env(&b, "{\"data\":{\"input\":{\"stdin\":\"bGluZTIK\"}}}"); /* line2\n */
        break;
    default:
        break;
    }
    long n = (long)b.len;
    assert_true(b.len <= max);
    if (b.len)
        memcpy(dst, b.data, b.len);
    buf_fini(&b);
    return n;
}

static void test_stream_input_incremental(void **state)
{
    (void)state;
    bg_t b;
    bg_start(&b, START,
             js("{s:{s:s,s:[s]},s:b}", "process", "cmd", "cat", "args", "-u", "stdin", 1), NULL);
    int pid = bg_pid(&b);
    struct sin_feed f = {.b = &b};
    snprintf(f.sel, sizeof f.sel, "{\"start\":{\"process\":{\"pid\":%d}}}", pid);
    char url[128];
    snprintf(url, sizeof url, "%s/process.Process/StreamInput", E.url);
    httpc_t *c = httpc_new();
    httpc_req_t req = {.method = "POST",
                       .url = url,
                       .headers = sin_headers,
                       .body_read = sin_read,
                       .ud = &f,
                       .timeout_ms = 30000};
    httpc_resp_t r;
    httpc_resp_init(&r);
    err_t e = {0};
    assert_int_equal(httpc_do(c, &req, &r, &e), 0);
    assert_int_equal(r.status, 200);
    int n = 0;
    json_t *end = stream_answer(&r.body, &n);
    assert_non_null(end);
    assert_null(json_object_get(end, "error"));
    json_decref(end);
    httpc_resp_fini(&r);
    httpc_free(c);
    assert_true(f.saw_first);
    assert_true(bg_wait_output(&b, "line1\nline2\n", 5000));
    send_signal(pid, "SIGNAL_SIGKILL");
    bg_join(&b);
    bg_fini(&b);
}

static void test_stream_input_errors(void **state)
{
    (void)state;
    int n;
    buf_t body;
    buf_init(&body);
    /* Data before start. */
    add_env(&body, "{\"data\":{\"input\":{\"stdin\":\"YQ==\"}}}");
    json_t *end = stream_input(&body, &n);
    assert_string_equal(err_code(end), "invalid_argument");
    json_decref(end);
    /* An unknown process. */
    buf_reset(&body);
    add_env(&body, "{\"start\":{\"process\":{\"pid\":999999}}}");
    end = stream_input(&body, &n);
    assert_string_equal(err_code(end), "not_found");
    json_decref(end);
    /* No message at all, a message with two kinds, a truncated envelope. */
    const char *bad[] = {"", "{\"start\":{\"process\":{\"pid\":1}},\"keepalive\":{}}", NULL};
    for (int i = 0; i < 3; i++) {
        buf_reset(&body);
        if (bad[i] && *bad[i])
            add_env(&body, bad[i]);
        if (!bad[i])
            buf_add(&body, "\x00\x00\x00\x00\x09{}", 7);
        end = stream_input(&body, &n);
        assert_string_equal(err_code(end), "invalid_argument");
        json_decref(end);
    }
    buf_fini(&body);
    /* Not a Connect stream. */
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *h[] = {"Content-Type: application/json", NULL};
    assert_int_equal(th_http(&E, "POST", "/process.Process/StreamInput", h, "{}", 2, &r), 0);
    assert_int_equal(r.status, 415);
    httpc_resp_fini(&r);
}

struct conc {
    pthread_t th;
    int i;
    bool ok;
};

static void *conc_main(void *ud)
{
    struct conc *c = ud;
    char n[16], script[64];
    snprintf(n, sizeof n, "%d", c->i);
    snprintf(script, sizeof script, "echo \"$N\"; sleep 0.2; echo end-$N");
    char *j = js("{s:{s:s,s:[s,s],s:{s:s}}}", "process", "cmd", "/bin/sh", "args", "-c", script,
                 "envs", "N", n);
    th_stream_t s;
    int r = th_stream(&E, START, j, NULL, NULL, NULL, &s);
    free(j);
    buf_t out;
    buf_init(&out);
    th_collect_output(&s, "stdout", &out);
    char want[64];
    snprintf(want, sizeof want, "%d\nend-%d\n", c->i, c->i);
    json_t *end = th_end_event(&s);
    c->ok = r == 0 && s.status == 200 && end && out.data && strcmp(out.data, want) == 0 &&
            json_integer_value(json_object_get(end, "exitCode")) == 0 &&
            json_object_get(json_object_get(s.msgs[0], "event"), "start");
    buf_fini(&out);
    th_stream_fini(&s);
    return NULL;
}

static void test_concurrent_starts(void **state)
{
    (void)state;
    struct conc c[20];
    for (int i = 0; i < 20; i++) {
        c[i].i = i;
        c[i].ok = false;
        assert_int_equal(pthread_create(&c[i].th, NULL, conc_main, &c[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        pthread_join(c[i].th, NULL);
        ok += c[i].ok;
    }
    assert_int_equal(ok, 20);
    assert_no_zombies();
}

static uint64_t fnv1a(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void test_large_output(void **state)
{
    (void)state;
    const size_t n = 8u << 20;
    char *dir = th_tmpdir();
    char path[300];
    snprintf(path, sizeof path, "%s/data", dir);
    uint8_t *data = malloc(n);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data[i] = (uint8_t)x;
    }
    FILE *f = fopen(path, "w");
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);

    char *j = js("{s:{s:s,s:[s]}}", "process", "cmd", "cat", "args", path);
    th_stream_t s;
    int64_t t0 = now_ms();
    run(j, NULL, &s);
    int64_t took = now_ms() - t0;
    free(j);
    assert_complete(&s);
    buf_t out;
    buf_init(&out);
    th_collect_output(&s, "stdout", &out);
    assert_int_equal(out.len, n);
    assert_true(fnv1a(out.data, out.len) == fnv1a(data, n));
    assert_memory_equal(out.data, data, n);
    /* Pieces are at most 32 KiB. */
    for (size_t i = 0; i < s.n; i++) {
        json_t *d = json_object_get(json_object_get(s.msgs[i], "event"), "data");
        if (d)
            assert_true(json_string_length(json_object_get(d, "stdout")) <= 4 * 32768 / 3 + 4);
    }
    printf("# 8 MiB of stdout in %lld ms, %zu events\n", (long long)took, s.n);
    buf_fini(&out);
    th_stream_fini(&s);
    free(data);
    th_rmrf(dir);
    free(dir);
}

static void test_shutdown_kills(void **state)
{
    (void)state;
    th_envd_t saved = E;
    assert_int_equal(th_envd_start(&E, NULL), 0);
    char *j = sh_req("sleep 100 & sleep 100");
    int pid = start_detached(j);
    free(j);
    assert_true(pid_alive(pid));
    th_envd_stop(&E);
    E = saved;
    /* envd killed the group and reaped its child on the way out. */
    assert_false(pid_alive(pid));
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stdout_stderr),
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_envs_and_cwd),
        cmocka_unit_test(test_user),
        cmocka_unit_test(test_tag_connect_list),
        cmocka_unit_test(test_connect_sees_only_new_output),
        cmocka_unit_test(test_stdin),
        cmocka_unit_test(test_stdin_false),
        cmocka_unit_test(test_stdin_closed),
        cmocka_unit_test(test_pty),
        cmocka_unit_test(test_pty_interactive_shell),
        cmocka_unit_test(test_signals),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_client_disconnect),
        cmocka_unit_test(test_background_grandchild),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_stream_input),
        cmocka_unit_test(test_stream_input_incremental),
        cmocka_unit_test(test_stream_input_errors),
        cmocka_unit_test(test_concurrent_starts),
        cmocka_unit_test(test_large_output),
        cmocka_unit_test(test_shutdown_kills),
    };
    return cmocka_run_group_tests_name("envd_proc", tests, setup, teardown);
}
