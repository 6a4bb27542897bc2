/* Shared pieces of the agent benchmarks (ba.h). */
#include "ba.h"
#include "httpc.h"
#include "net/net.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

ba_agent_t ba_agent;

double ba_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double ba_pct(double *v, int n, double p)
{
    if (n <= 0)
        return -1;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

const char *ba_cache(void)
{
    const char *c = getenv("WRENN_BENCH_IMAGE_CACHE");
    return c && *c ? c : "/var/cache/wrenn/bench-images";
}

int ba_ensure_image(const char *agent_bin, const char *name)
{
    char envd[600], envv[700], cache[400];
    const char *ev = getenv("WRENN_BENCH_ENVD_BIN");
    if (ev && *ev) {
        snprintf(envd, sizeof envd, "%s", ev);
    } else {
        /* <build>/src/agent/wrenn-agent -> <build>/src/envd/wrenn-envd */
        snprintf(envd, sizeof envd, "%s", agent_bin);
        char *slash = strrchr(envd, '/');
        size_t at = slash ? (size_t)(slash - envd) : 0;
        snprintf(envd + at, sizeof envd - at, "%s../envd/wrenn-envd", slash ? "/" : "");
    }
    if (access(envd, X_OK) < 0) {
        fprintf(stderr, "bench: no wrenn-envd at %s (set WRENN_BENCH_ENVD_BIN)\n", envd);
        return -1;
    }
    snprintf(cache, sizeof cache, "%s", ba_cache());
    mkdir(cache, 0755);
    snprintf(envv, sizeof envv, "WRENN_ENVD_BIN=%s", envd);
    char *const argv[] = {
        (char *)agent_bin,        "image", "build", (char *)name, "--root", cache, "--images-dir",
        BA_SOURCE_ROOT "/images", NULL};
    /* Our environment (proxies, TMPDIR, ...) with WRENN_ENVD_BIN set to that envd. */
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    if (!envp)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "WRENN_ENVD_BIN=", 15) != 0)
            envp[k++] = environ[i];
    envp[k++] = envv;
    envp[k] = NULL;
    /* Progress goes to stderr: stdout carries the table. */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    pid_t pid;
    int r = posix_spawn(&pid, agent_bin, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    if (r != 0) {
        fprintf(stderr, "bench: cannot run %s: %s\n", agent_bin, strerror(r));
        return -1;
    }
    int st = 0;
    pid_t w;
    while ((w = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
        ;
    if (w != pid)
        return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

unsigned ba_tsc_khz(void)
{
    FILE *f = fopen("/proc/cpuinfo", "re");
    char line[256];
    double mhz = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "cpu MHz", 7) == 0) {
            mhz = strtod(strchr(line, ':') + 1, NULL);
            break;
        }
    if (f)
        fclose(f);
    return (unsigned)(mhz * 1000 + 0.5);
}

int ba_start_agent(const char *bin, const char *name)
{
    snprintf(ba_agent.scratch, sizeof ba_agent.scratch, "/tmp/%.200s-XXXXXX", name);
    if (!mkdtemp(ba_agent.scratch))
        return -1;
    chmod(ba_agent.scratch, 0755);
    char p[400], dst[700], port_file[600], log[600];
    snprintf(ba_agent.root, sizeof ba_agent.root, "%s/root", ba_agent.scratch);
    mkdir(ba_agent.root, 0755);
    snprintf(p, sizeof p, "%s/images", ba_cache());
    snprintf(dst, sizeof dst, "%s/images", ba_agent.root);
    if (symlink(p, dst) < 0)
        return -1;
    snprintf(p, sizeof p, "%s/kernels", ba_cache());
    snprintf(dst, sizeof dst, "%s/kernels", ba_agent.root);
    if (symlink(p, dst) < 0)
        return -1;
    snprintf(port_file, sizeof port_file, "%s/port", ba_agent.scratch);
    /* WRENN_BENCH_AGENT_LOG=path keeps the agent's log (level info: per-create vmm.started
     * spawn_ms/dur_ms, sandbox.created vm_ms/boot_ms, sandbox.restored phases) after the run. */
    const char *keep = getenv("WRENN_BENCH_AGENT_LOG");
    snprintf(log, sizeof log, "%s", keep && *keep ? keep : "");
    if (!log[0])
        snprintf(log, sizeof log, "%s/agent.log", ba_agent.scratch);
    const char *argv[] = {bin,           "--root",      ba_agent.root, "--listen",
                          "127.0.0.1:0", "--port-file", port_file,     "--secret",
                          BA_SECRET,     "--log-level", "info",        NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int r = posix_spawn(&ba_agent.pid, bin, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -1;
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(port_file, "re");
        int port = 0;
        if (f) {
            int ok = fscanf(f, "%d", &port);
            fclose(f);
            if (ok == 1 && port > 0) {
                snprintf(ba_agent.url, sizeof ba_agent.url, "http://127.0.0.1:%d", port);
                return 0;
            }
        }
        usleep(10000);
    }
    return -1;
}

void ba_stop_agent(void)
{
    ba_agent_t *a = &ba_agent;
    if (a->pid > 0) {
        kill(a->pid, SIGTERM);
        waitpid(a->pid, NULL, 0);
        a->pid = 0;
    }
    char *argv[] = {"/bin/rm", "-rf", a->scratch, NULL};
    pid_t p;
    if (a->scratch[0] && posix_spawn(&p, argv[0], NULL, NULL, argv, environ) == 0)
        waitpid(p, NULL, 0);
    a->scratch[0] = '\0';
}

long ba_proc_kib(const char *path, const char *key)
{
    char line[256];
    size_t kl = strlen(key);
    FILE *f = fopen(path, "re");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0)
            kib = strtol(line + kl, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

void ba_show_agent_warnings(void)
{
    char log[600], line[1024];
    snprintf(log, sizeof log, "%s/agent.log", ba_agent.scratch);
    FILE *f = fopen(log, "re");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "lvl=warn") || strstr(line, "lvl=error"))
            fprintf(stderr, "  %s", line);
    if (f)
        fclose(f);
}

json_t *ba_call(const char *method, const char *body, long *status)
{
    char url[256];
    snprintf(url, sizeof url, "%s/hostagent.v1.HostAgentService/%s", ba_agent.url, method);
    const char *h[] = {"Content-Type: application/json", "Authorization: Bearer " BA_SECRET, NULL};
    httpc_t *c = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    httpc_req_t q = {.method = "POST",
                     .url = url,
                     .headers = h,
                     .body = body,
                     .body_len = strlen(body),
                     .timeout_ms = 300000};
    json_t *j = NULL;
    *status = -1;
    if (httpc_do(c, &q, &r, NULL) == 0) {
        *status = r.status;
        j = json_loadb(r.body.data ? r.body.data : "", r.body.len, 0, NULL);
    }
    httpc_resp_fini(&r);
    httpc_free(c);
    return j;
}

bool ba_exec_hi(const char *id)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"sandboxId\":\"%s\",\"cmd\":\"/bin/echo\",\"args\":[\"hi\"],\"timeoutSec\":60}",
             id);
    long st;
    json_t *j = ba_call("Exec", body, &st);
    /* "hi\n" in base64 */
    bool ok = st == 200 && json_is_string(json_object_get(j, "stdout")) &&
              strcmp(json_string_value(json_object_get(j, "stdout")), "aGkK") == 0;
    json_decref(j);
    return ok;
}

void ba_destroy(const char *id)
{
    char body[128];
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}", id);
    long st;
    json_decref(ba_call("DestroySandbox", body, &st));
}

bool ba_health(const char *host_ip, bool *net_up)
{
    char url[128];
    snprintf(url, sizeof url, "http://%s:%d/health", host_ip, NET_ENVD_PORT);
    httpc_t *c = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    /* The agent's policy (envdc.c, connect_ms): 100 ms connects until the guest's network is
     * seen up (a refused connect), 1 s after; then up to 2 s for the answer. */
    httpc_req_t q = {.method = "GET",
                     .url = url,
                     .timeout_ms = 2000,
                     .connect_timeout_ms = *net_up ? 1000 : 100};
    int rc = httpc_do(c, &q, &r, NULL);
    *net_up |= rc == -ECONNREFUSED;
    bool ok = rc == 0 && r.status >= 200 && r.status < 300;
    httpc_resp_fini(&r);
    httpc_free(c);
    return ok;
}
