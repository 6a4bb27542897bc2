/* envd_bench: how fast the real wrenn-envd runs commands and moves bytes, measured beside what
 * the same machine does without it, in the same run.
 *
 *   envd_bench [path/to/wrenn-envd]
 *
 * Without an argument the binary is found as WRENN_ENVD_BIN, else next to this program in the
 * build tree (<build>/bench/../src/envd/wrenn-envd). The daemon is started on an ephemeral
 * loopback port with a private run directory, and stopped (by its PID) at the end.
 *
 * Measured:
 *   exec   round trip of `/bin/true` through process.Process/Start (Connect server stream over
 *          one keep-alive connection, until the end-of-stream envelope), p50 and p99 of 300
 *          runs, beside fork+exec+wait of /bin/true;
 *   stdout 100 MiB of `head -c 104857600 /dev/zero` streamed through Start, base64 decoded by
 *          the client, beside the same bytes through `head | cat` and a pipe;
 *   upload POST /files (application/octet-stream) of a 100 MiB file, and
 *   download GET /files of it, beside `cp` of the same file.
 * Each line shows the target it is held to. The exit status is 0 when every measurement ran
 * (whether or not it met its target) and 1 when something failed.
 */
#include "b64.h"
#include "buf.h"
#include "connect.h"
#include "httpc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define EXEC_RUNS   300
#define EXEC_WARMUP 20
#define STREAM_SIZE (100u << 20)

/* Targets printed beside the results. */
#define TARGET_EXEC_P50_MS 2.0
#define TARGET_EXEC_RATIO  3.0
#define TARGET_STREAM_MBPS 200.0

static char g_dir[PATH_MAX]; /* scratch directory, removed at the end */
static char g_url[64];
static pid_t g_envd = -1;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p-th percentile (0..100) of n sorted values. */
static double pct(const double *v, size_t n, int p)
{
    size_t i = n * (size_t)p / 100;
    return v[i < n ? i : n - 1];
}

/* CPU seconds (user + system) used so far by this process, and by pid itself (not its
 * children), from /proc. */
static double self_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double pid_cpu_s(pid_t pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    /* Fields after the command name, which is in parentheses and may hold spaces. */
    const char *p = strrchr(line, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double mbps(uint64_t bytes, double secs)
{
    return secs > 0 ? (double)bytes / 1e6 / secs : 0;
}

/* ---- the daemon ------------------------------------------------------------------------ */

static int find_envd(const char *arg, char *out, size_t n)
{
    const char *env = getenv("WRENN_ENVD_BIN");
    if (arg && *arg) {
        snprintf(out, n, "%s", arg);
    } else if (env && *env) {
        snprintf(out, n, "%s", env);
    } else {
        char self[PATH_MAX];
        ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
        if (l < 0)
            return -errno;
        self[l] = '\0';
        char *slash = strrchr(self, '/');
        if (slash)
            *slash = '\0';
        if ((size_t)snprintf(out, n, "%.*s/../src/envd/wrenn-envd", (int)(n - 32), self) >= n)
            return -ENAMETOOLONG;
    }
    return access(out, X_OK) == 0 ? 0 : -errno;
}

static int start_envd(const char *bin)
{
    char port_file[PATH_MAX + 16], run_dir[PATH_MAX + 16], log_file[PATH_MAX + 16];
    snprintf(port_file, sizeof port_file, "%s/port", g_dir);
    snprintf(run_dir, sizeof run_dir, "%s/run", g_dir);
    snprintf(log_file, sizeof log_file, "%s/envd.log", g_dir);
    const char *argv[] = {bin,         "--port",      "0",       "--addr",
                          "127.0.0.1", "--port-file", port_file, "--run-dir",
                          run_dir,     "--log-level", "warn",    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int r = posix_spawn(&g_envd, bin, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        g_envd = -1;
        return -r;
    }
    int port = 0;
    for (int i = 0; i < 1000 && port <= 0; i++) {
        FILE *f = fopen(port_file, "re");
        if (f) {
            if (fscanf(f, "%d", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (port <= 0) {
            int st;
            if (waitpid(g_envd, &st, WNOHANG) == g_envd) {
                g_envd = -1;
                fprintf(stderr, "envd_bench: wrenn-envd exited at start (log: %s)\n", log_file);
                return -ECHILD;
            }
            usleep(10000);
        }
    }
    if (port <= 0)
        return -ETIMEDOUT;
    snprintf(g_url, sizeof g_url, "http://127.0.0.1:%d", port);
    return 0;
}

static void stop_envd(void)
{
    if (g_envd <= 0)
        return;
    kill(g_envd, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(g_envd, NULL, WNOHANG) == g_envd) {
            g_envd = -1;
            return;
        }
        usleep(10000);
    }
    kill(g_envd, SIGKILL);
    waitpid(g_envd, NULL, 0);
    g_envd = -1;
}

/* ---- Connect server streams -------------------------------------------------------------- */

/* An incremental reader of a Start stream: envelopes are cut out of the bytes as they arrive;
 * stdout data is base64-decoded (found without a full JSON parse, as a fast client would), other
 * events are parsed with jansson. */
typedef struct sreader {
    buf_t pending;
    size_t off;
    buf_t dec;
    uint64_t out_bytes;
    bool saw_start, saw_end, saw_eos, bad;
    long exit_code;
    char err[256];
} sreader_t;

static void sreader_init(sreader_t *s)
{
    memset(s, 0, sizeof *s);
    buf_init(&s->pending);
    buf_init(&s->dec);
    s->exit_code = -1;
}

static void sreader_fini(sreader_t *s)
{
    buf_fini(&s->pending);
    buf_fini(&s->dec);
}

static void on_message(sreader_t *s, uint8_t flags, const char *msg, size_t len)
{
    static const char key[] = "{\"event\":{\"data\":{\"stdout\":\"";
    if (!(flags & CONNECT_FLAG_END_STREAM) && len > sizeof key &&
        memcmp(msg, key, sizeof key - 1) == 0) {
        const char *b = msg + sizeof key - 1;
        const char *q = memchr(b, '"', len - (size_t)(b - msg));
        if (!q) {
            s->bad = true;
            return;
        }
        size_t n = (size_t)(q - b);
        buf_reset(&s->dec);
        buf_reserve(&s->dec, b64_decoded_max(n));
        long m = b64_decode(b, n, s->dec.data);
        if (m < 0)
            s->bad = true;
        else
            s->out_bytes += (uint64_t)m;
        return;
    }
    json_error_t je;
    json_t *j = json_loadb(msg, len, 0, &je);
    if (!j) {
        s->bad = true;
        return;
    }
    if (flags & CONNECT_FLAG_END_STREAM) {
        s->saw_eos = true;
        json_t *err = json_object_get(j, "error");
        if (err)
            snprintf(s->err, sizeof s->err, "%s: %s",
                     json_string_value(json_object_get(err, "code")),
                     json_string_value(json_object_get(err, "message")));
    } else {
        json_t *ev = json_object_get(j, "event");
        if (json_object_get(ev, "start"))
            s->saw_start = true;
        json_t *end = json_object_get(ev, "end");
        if (end) {
            s->saw_end = true;
            json_t *ec = json_object_get(end, "exitCode");
            s->exit_code = ec ? (long)json_integer_value(ec) : 0;
        }
        json_t *data = json_object_get(ev, "data");
        const char *so = json_string_value(json_object_get(data, "stdout"));
        if (so) { /* stdout in a shape the fast path did not expect */
            buf_reset(&s->dec);
            buf_reserve(&s->dec, b64_decoded_max(strlen(so)));
            long m = b64_decode(so, strlen(so), s->dec.data);
            if (m < 0)
                s->bad = true;
            else
                s->out_bytes += (uint64_t)m;
        }
    }
    json_decref(j);
}

static int sreader_feed(void *ud, const char *data, size_t len)
{
    sreader_t *s = ud;
    buf_add(&s->pending, data, len);
    for (;;) {
        uint8_t flags;
        uint32_t mlen;
        long n = connect_envelope_parse(s->pending.data + s->off, s->pending.len - s->off,
                                        64u << 20, &flags, &mlen);
        if (n < 0) {
            s->bad = true;
            return -1;
        }
        if (n == 0)
            break;
        on_message(s, flags, s->pending.data + s->off + 5, mlen);
        s->off += (size_t)n;
    }
    /* Drop what was parsed once it is most of the buffer, so the copying stays linear. */
    if (s->off > 0 && s->off * 2 >= s->pending.len) {
        buf_consume(&s->pending, s->off);
        s->off = 0;
    }
    return 0;
}

static const char *const start_headers[] = {"Content-Type: application/connect+json",
                                            "Connect-Protocol-Version: 1", NULL};

/* One Start call on c with the request JSON; fills s. */
static int start_call(httpc_t *c, const char *json, sreader_t *s, err_t *e)
{
    buf_t body;
    buf_init(&body);
    connect_envelope_add(&body, 0, json, strlen(json));
    char url[128];
    snprintf(url, sizeof url, "%s/process.Process/Start", g_url);
    httpc_req_t req = {.method = "POST",
                       .url = url,
                       .headers = start_headers,
                       .body = body.data,
                       .body_len = body.len,
                       .on_data = sreader_feed,
                       .ud = s,
                       .timeout_ms = 300000};
    httpc_resp_t resp;
    httpc_resp_init(&resp);
    int r = httpc_do(c, &req, &resp, e);
    if (r == 0 && resp.status != 200)
        r = err_set(e, -EIO, "Start answered HTTP %ld", resp.status);
    if (r == 0 && (s->bad || !s->saw_eos || s->err[0]))
        r = err_set(e, -EIO, "Start stream broken%s%s", s->err[0] ? ": " : "", s->err);
    if (r == 0 && (!s->saw_start || !s->saw_end || s->exit_code != 0))
        r = err_set(e, -EIO, "Start stream: start=%d end=%d exit=%ld", s->saw_start, s->saw_end,
                    s->exit_code);
    httpc_resp_fini(&resp);
    buf_fini(&body);
    return r;
}

/* ---- measurements -------------------------------------------------------------------------- */

typedef struct lat {
    double p50, p99;
} lat_t;

static int bench_exec_envd(lat_t *out, err_t *e)
{
    static double t[EXEC_RUNS];
    httpc_t *c = httpc_new(); /* one client: one keep-alive connection for every call */
    const char *json = "{\"process\":{\"cmd\":\"/bin/true\"},\"stdin\":false}";
    int r = 0;
    for (int i = 0; i < EXEC_WARMUP + EXEC_RUNS && r == 0; i++) {
        sreader_t s;
        sreader_init(&s);
        double t0 = now_s();
        r = start_call(c, json, &s, e);
        double dt = now_s() - t0;
        if (i >= EXEC_WARMUP)
            t[i - EXEC_WARMUP] = dt * 1000;
        sreader_fini(&s);
    }
    httpc_free(c);
    if (r < 0)
        return r;
    qsort(t, EXEC_RUNS, sizeof t[0], cmp_double);
    out->p50 = pct(t, EXEC_RUNS, 50);
    out->p99 = pct(t, EXEC_RUNS, 99);
    return 0;
}

static int bench_exec_local(lat_t *out, err_t *e)
{
    static double t[EXEC_RUNS];
    char *const argv[] = {"/bin/true", NULL};
    for (int i = 0; i < EXEC_WARMUP + EXEC_RUNS; i++) {
        double t0 = now_s();
        pid_t pid = fork();
        if (pid < 0)
            return err_errno(e, "fork");
        if (pid == 0) {
            execv(argv[0], argv);
            _exit(127);
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        double dt = now_s() - t0;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return err_set(e, -EIO, "/bin/true failed");
        if (i >= EXEC_WARMUP)
            t[i - EXEC_WARMUP] = dt * 1000;
    }
    qsort(t, EXEC_RUNS, sizeof t[0], cmp_double);
    out->p50 = pct(t, EXEC_RUNS, 50);
    out->p99 = pct(t, EXEC_RUNS, 99);
    return 0;
}

/* CPU spent by the client and by wrenn-envd during the stdout stream. */
static double g_stream_cpu_client, g_stream_cpu_envd;

static int bench_stream_envd(double *out, err_t *e)
{
    char json[256];
    snprintf(json, sizeof json,
             "{\"process\":{\"cmd\":\"/usr/bin/head\",\"args\":[\"-c\",\"%u\",\"/dev/zero\"]},"
             "\"stdin\":false}",
             STREAM_SIZE);
    httpc_t *c = httpc_new();
    sreader_t s;
    sreader_init(&s);
    double c0 = self_cpu_s(), d0 = pid_cpu_s(g_envd);
    double t0 = now_s();
    int r = start_call(c, json, &s, e);
    double dt = now_s() - t0;
    g_stream_cpu_client = self_cpu_s() - c0;
    g_stream_cpu_envd = pid_cpu_s(g_envd) - d0;
    if (r == 0 && s.out_bytes != STREAM_SIZE)
        r = err_set(e, -EIO, "stdout stream carried %llu bytes, not %u",
                    (unsigned long long)s.out_bytes, STREAM_SIZE);
    sreader_fini(&s);
    httpc_free(c);
    *out = mbps(STREAM_SIZE, dt);
    return r;
}

/* `head -c N /dev/zero | cat`, read by us from cat's stdout. */
static int bench_stream_local(double *out, err_t *e)
{
    int p1[2] = {-1, -1}, p2[2] = {-1, -1};
    pid_t head = -1, cat = -1;
    int r = 0;
    char n[32];
    snprintf(n, sizeof n, "%u", STREAM_SIZE);
    char *const hargv[] = {"/usr/bin/head", "-c", n, "/dev/zero", NULL};
    char *const cargv[] = {"/bin/cat", NULL};
    if (pipe2(p1, O_CLOEXEC) < 0 || pipe2(p2, O_CLOEXEC) < 0) {
        r = err_errno(e, "pipe");
        goto out;
    }
    double t0 = now_s();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p1[1], 1);
    r = -posix_spawn(&head, hargv[0], &fa, NULL, hargv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r < 0) {
        head = -1;
        err_set(e, r, "spawn head");
        goto out;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p1[0], 0);
    posix_spawn_file_actions_adddup2(&fa, p2[1], 1);
    r = -posix_spawn(&cat, cargv[0], &fa, NULL, cargv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r < 0) {
        cat = -1;
        err_set(e, r, "spawn cat");
        goto out;
    }
    close(p1[0]);
    close(p1[1]);
    close(p2[1]);
    p1[0] = p1[1] = p2[1] = -1;
    static char chunk[1 << 16];
    uint64_t got = 0;
    for (;;) {
        ssize_t k = read(p2[0], chunk, sizeof chunk);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (uint64_t)k;
    }
    double dt = now_s() - t0;
    *out = mbps(got, dt);
    if (got != STREAM_SIZE)
        r = err_set(e, -EIO, "head | cat gave %llu bytes", (unsigned long long)got);
out:
    for (int i = 0; i < 2; i++) {
        if (p1[i] >= 0)
            close(p1[i]);
        if (p2[i] >= 0)
            close(p2[i]);
    }
    if (head > 0)
        waitpid(head, NULL, 0);
    if (cat > 0)
        waitpid(cat, NULL, 0);
    return r;
}

/* A 100 MiB file of pseudo-random bytes (compressible data would flatter nothing here, but a
 * file of zeros invites shortcuts). */
static int make_file(const char *path, err_t *e)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_errno(e, "create test file");
    static uint64_t blk[1 << 13];
    uint64_t x = 0x9e3779b97f4a7c15u;
    int r = 0;
    for (size_t done = 0; done < STREAM_SIZE && r == 0; done += sizeof blk) {
        for (size_t i = 0; i < sizeof blk / sizeof blk[0]; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blk[i] = x;
        }
        if (write(fd, blk, sizeof blk) != (ssize_t)sizeof blk)
            r = err_errno(e, "write test file");
    }
    close(fd);
    return r;
}

struct dl {
    const char *want;
    uint64_t got;
    bool mismatch;
};

static int dl_data(void *ud, const char *data, size_t len)
{
    struct dl *d = ud;
    if (d->got + len > STREAM_SIZE || memcmp(d->want + d->got, data, len) != 0)
        d->mismatch = true;
    d->got += len;
    return 0;
}

static int bench_files(const char *src, double *up, double *down, err_t *e)
{
    int r = 0;
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_errno(e, "open test file");
    char *map = mmap(NULL, STREAM_SIZE, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return err_errno(e, "mmap test file");

    char url[PATH_MAX + 128];
    snprintf(url, sizeof url, "%s/files?path=%s/uploaded.bin", g_url, g_dir);
    const char *h[] = {"Content-Type: application/octet-stream", NULL};
    httpc_t *c = httpc_new();
    httpc_resp_t resp;
    httpc_resp_init(&resp);
    httpc_req_t req = {.method = "POST",
                       .url = url,
                       .headers = h,
                       .body = map,
                       .body_len = STREAM_SIZE,
                       .timeout_ms = 300000};
    double t0 = now_s();
    r = httpc_do(c, &req, &resp, e);
    *up = mbps(STREAM_SIZE, now_s() - t0);
    if (r == 0 && resp.status != 200)
        r = err_set(e, -EIO, "upload answered HTTP %ld: %.200s", resp.status,
                    resp.body.data ? resp.body.data : "");
    if (r < 0)
        goto out;

    struct dl d = {.want = map};
    httpc_req_t get = {
        .method = "GET", .url = url, .on_data = dl_data, .ud = &d, .timeout_ms = 300000};
    t0 = now_s();
    r = httpc_do(c, &get, &resp, e);
    *down = mbps(d.got, now_s() - t0);
    if (r == 0 && resp.status != 200)
        r = err_set(e, -EIO, "download answered HTTP %ld", resp.status);
    if (r == 0 && (d.got != STREAM_SIZE || d.mismatch))
        r = err_set(e, -EIO, "download gave %llu bytes%s", (unsigned long long)d.got,
                    d.mismatch ? ", not the uploaded ones" : "");
out:
    httpc_resp_fini(&resp);
    httpc_free(c);
    munmap(map, STREAM_SIZE);
    return r;
}

static int bench_cp(const char *src, double *out, err_t *e)
{
    char dst[PATH_MAX + 16];
    snprintf(dst, sizeof dst, "%s/copied.bin", g_dir);
    char *const argv[] = {"/bin/cp", (char *)src, dst, NULL};
    pid_t pid;
    double t0 = now_s();
    int r = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (r != 0)
        return err_set(e, -r, "spawn cp");
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    *out = mbps(STREAM_SIZE, now_s() - t0);
    unlink(dst);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : err_set(e, -EIO, "cp failed");
}

/* ---- report ---------------------------------------------------------------------------------- */

static const char *verdict(bool ok)
{
    return ok ? "ok" : "MISS";
}

static void remove_scratch(void)
{
    const char *names[] = {"uploaded.bin", "copied.bin", "source.bin", "port", "envd.log"};
    char p[PATH_MAX + 32];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, names[i]);
        unlink(p);
    }
    /* envd's run directory holds only its own small markers. */
    snprintf(p, sizeof p, "%s/run", g_dir);
    char *const argv[] = {"/bin/rm", "-rf", "--", p, NULL};
    pid_t pid;
    if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) == 0)
        waitpid(pid, NULL, 0);
    rmdir(g_dir);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc > 2 || (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
        fprintf(stderr, "usage: %s [path/to/wrenn-envd]\n", argv[0]);
        return 2;
    }
    char bin[PATH_MAX];
    int r = find_envd(argc == 2 ? argv[1] : NULL, bin, sizeof bin);
    if (r < 0) {
        fprintf(stderr, "envd_bench: no wrenn-envd at %s (give its path as the argument)\n", bin);
        return 1;
    }
    httpc_global_init();
    char tmpl[] = "/tmp/wrenn-bench-XXXXXX";
    if (!mkdtemp(tmpl)) {
        perror("envd_bench: mkdtemp");
        return 1;
    }
    snprintf(g_dir, sizeof g_dir, "%s", tmpl);

    err_t e = {0};
    lat_t ex_envd = {0}, ex_local = {0};
    double st_envd = 0, st_local = 0, up = 0, down = 0, cp = 0;
    char src[PATH_MAX + 16];
    snprintf(src, sizeof src, "%s/source.bin", g_dir);
    int failed = 0;

    if ((r = start_envd(bin)) < 0) {
        fprintf(stderr, "envd_bench: cannot start %s: %s\n", bin, strerror(-r));
        remove_scratch();
        return 1;
    }
    printf("wrenn-envd bench: %s at %s\n", bin, g_url);
    fflush(stdout);

#define STEP(call, what)                                                                           \
    do {                                                                                           \
        err_clear(&e);                                                                             \
        if ((call) < 0) {                                                                          \
            fprintf(stderr, "envd_bench: %s failed: %s\n", what, e.msg);                           \
            failed = 1;                                                                            \
        }                                                                                          \
    } while (0)

    STEP(bench_exec_local(&ex_local, &e), "fork+exec+wait baseline");
    STEP(bench_exec_envd(&ex_envd, &e), "exec through Start");
    STEP(bench_stream_local(&st_local, &e), "head | cat baseline");
    STEP(bench_stream_envd(&st_envd, &e), "stdout stream through Start");
    STEP(make_file(src, &e), "test file");
    STEP(bench_cp(src, &cp, &e), "cp baseline");
    STEP(bench_files(src, &up, &down, &e), "upload/download through /files");
    stop_envd();
    remove_scratch();

    double ratio = ex_local.p50 > 0 ? ex_envd.p50 / ex_local.p50 : 0;
    double ratio99 = ex_local.p99 > 0 ? ex_envd.p99 / ex_local.p99 : 0;
    printf("\n%-30s %12s %12s %9s   %s\n", "measurement", "envd", "baseline", "ratio", "target");
    printf("%-30s %9.3f ms %9.3f ms %8.2fx   p50 <= %.1f ms and <= %.0fx baseline: %s\n",
           "exec /bin/true p50", ex_envd.p50, ex_local.p50, ratio, TARGET_EXEC_P50_MS,
           TARGET_EXEC_RATIO,
           verdict(ex_envd.p50 > 0 && ex_envd.p50 <= TARGET_EXEC_P50_MS &&
                   ratio <= TARGET_EXEC_RATIO));
    printf("%-30s %9.3f ms %9.3f ms %8.2fx\n", "exec /bin/true p99", ex_envd.p99, ex_local.p99,
           ratio99);
    printf("%-30s %7.0f MB/s %7.0f MB/s %8.2fx   >= %.0f MB/s: %s\n",
           "stdout 100 MiB (vs head|cat)", st_envd, st_local, st_local > 0 ? st_envd / st_local : 0,
           TARGET_STREAM_MBPS, verdict(st_envd >= TARGET_STREAM_MBPS));
    printf("%-30s (cpu: envd %.2f s, client %.2f s incl. base64 decoding)\n", "", g_stream_cpu_envd,
           g_stream_cpu_client);
    printf("%-30s %7.0f MB/s %7.0f MB/s %8.2fx   >= %.0f MB/s: %s\n", "upload 100 MiB (vs cp)", up,
           cp, cp > 0 ? up / cp : 0, TARGET_STREAM_MBPS, verdict(up >= TARGET_STREAM_MBPS));
    printf("%-30s %7.0f MB/s %7.0f MB/s %8.2fx   >= %.0f MB/s: %s\n", "download 100 MiB (vs cp)",
           down, cp, cp > 0 ? down / cp : 0, TARGET_STREAM_MBPS,
           verdict(down >= TARGET_STREAM_MBPS));
    printf("(exec: %d runs after %d warm-up, one keep-alive connection; MB = 10^6 bytes)\n",
           EXEC_RUNS, EXEC_WARMUP);
    return failed;
}
