/* Host-agent integration harness (see ta.h). */
#include "ta.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *agent_bin(void)
{
    const char *b = getenv("WRENN_TEST_AGENT_BIN");
    return b ? b : "build/src/agent/wrenn-agent";
}

const char *ta_cache(void)
{
    const char *c = getenv("WRENN_TEST_IMAGE_CACHE");
    return c && *c ? c : "/var/cache/wrenn/test-images";
}

bool ta_have_vms(void)
{
    const char *v = getenv("WRENN_TEST_AGENT_VMS");
    const char *src = getenv("WRENN_TEST_SOURCE_ROOT");
    if (!v || strcmp(v, "1") != 0 || !src)
        return false;
    char p[512];
    snprintf(p, sizeof p, "%s/images/build.sh", src);
    return access(p, X_OK) == 0;
}

/* Run argv with its stdout sent to our stderr (stdout carries TAP). */
static int run(char *const argv[])
{
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    int r = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -1;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int ta_ensure_image(const char *name)
{
    const char *cache = ta_cache();
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && chmod 0755 '%s'", cache, cache);
    if (th_sh(cmd) != 0)
        return -1;
    char lock[512];
    snprintf(lock, sizeof lock, "%s/.lock", cache);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    flock(fd, LOCK_EX);
    /* build.sh is cached by the hash of its inputs: a rebuild of an unchanged image is quick. */
    char *argv[] = {(char *)agent_bin(), "image", "build", (char *)name, "--root",
                    (char *)cache,       NULL};
    int rc = run(argv);
    flock(fd, LOCK_UN);
    close(fd);
    if (rc != 0)
        fprintf(stderr, "# image build %s failed with %d\n", name, rc);
    return rc == 0 ? 0 : -1;
}

static int spawn_agent(ta_agent_t *a)
{
    char port_file[300];
    snprintf(port_file, sizeof port_file, "%s/port", a->dir);
    unlink(port_file);
    const char *argv[] = {agent_bin(), "--root", a->root, "--listen", "127.0.0.1:0", "--port-file",
                          port_file, "--log-level", "debug",
                          /* CI machines run several TCG guests at once on two cores. */
                          "--boot-timeout-ms", "120000", a->own_secret ? NULL : "--secret",
                          TA_SECRET, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (!getenv("WRENN_TEST_VERBOSE"))
        posix_spawn_file_actions_addopen(&fa, 2, a->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int r = posix_spawn(&a->h.pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -r;
    a->h.port = 0;
    /* Start-up re-adopts and reaps; give it time on a busy machine. */
    for (int i = 0; i < 3000; i++) {
        FILE *f = fopen(port_file, "re");
        if (f) {
            int ok = fscanf(f, "%d", &a->h.port);
            fclose(f);
            if (ok == 1 && a->h.port > 0)
                break;
        }
        if (!th_envd_alive(&a->h))
            return -ECHILD;
        usleep(10000);
    }
    if (a->h.port <= 0)
        return -ETIMEDOUT;
    snprintf(a->h.url, sizeof a->h.url, "http://127.0.0.1:%d", a->h.port);
    return 0;
}

static int start(ta_agent_t *a, bool own_secret)
{
    memset(a, 0, sizeof *a);
    a->own_secret = own_secret;
    char *d = th_tmpdir();
    if (!d)
        return -errno;
    snprintf(a->dir, sizeof a->dir, "%s", d);
    free(d);
    snprintf(a->root, sizeof a->root, "%s/root", a->dir);
    snprintf(a->log, sizeof a->log, "%s/agent.log", a->dir);
    /* The per-VM users must be able to walk to their sandbox directory. */
    chmod(a->dir, 0755);
    mkdir(a->root, 0755);
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s/images", ta_cache());
    snprintf(dst, sizeof dst, "%s/images", a->root);
    if (symlink(src, dst) < 0)
        return -errno;
    snprintf(src, sizeof src, "%s/kernels", ta_cache());
    snprintf(dst, sizeof dst, "%s/kernels", a->root);
    if (symlink(src, dst) < 0)
        return -errno;
    return spawn_agent(a);
}

int ta_start(ta_agent_t *a)
{
    return start(a, false);
}

int ta_start_own(ta_agent_t *a)
{
    return start(a, true);
}

int ta_restart(ta_agent_t *a)
{
    return spawn_agent(a);
}

void ta_kill9(ta_agent_t *a)
{
    if (a->h.pid > 0) {
        kill(a->h.pid, SIGKILL);
        waitpid(a->h.pid, NULL, 0);
        a->h.pid = 0;
    }
}

void ta_stop(ta_agent_t *a)
{
    if (a->h.pid > 0 && th_envd_alive(&a->h)) {
        json_t *l = NULL;
        if (ta_call(a, "ListSandboxes", "{}", &l) == 200) {
            json_t *arr = json_object_get(l, "sandboxes"), *s;
            size_t i;
            json_array_foreach(arr, i, s)
            {
                char body[256];
                snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}",
                         json_string_value(json_object_get(s, "sandboxId")));
                json_t *r = NULL;
                ta_call(a, "DestroySandbox", body, &r);
                json_decref(r);
            }
        }
        json_decref(l);
        kill(a->h.pid, SIGTERM);
        for (int i = 0; i < 500; i++) {
            if (waitpid(a->h.pid, NULL, WNOHANG) == a->h.pid) {
                a->h.pid = 0;
                break;
            }
            usleep(10000);
        }
        if (a->h.pid > 0) {
            kill(a->h.pid, SIGKILL);
            waitpid(a->h.pid, NULL, 0);
        }
    }
    a->h.pid = 0;
    if (getenv("WRENN_TEST_VERBOSE") == NULL && a->log[0]) {
        /* Keep the tail of the agent's log in the test output for failures. */
        char cmd[600];
        snprintf(cmd, sizeof cmd, "tail -n 15 '%s' | sed 's/^/# agent: /'", a->log);
        if (getenv("WRENN_TEST_AGENT_LOG"))
            th_sh(cmd);
    }
    if (a->dir[0])
        th_rmrf(a->dir);
}

long ta_call_auth(ta_agent_t *a, const char *method, const char *json, const char *auth,
                  json_t **out)
{
    char path[256], hdr[256];
    snprintf(path, sizeof path, "/hostagent.v1.HostAgentService/%s", method);
    snprintf(hdr, sizeof hdr, "Authorization: %s", auth ? auth : "");
    const char *h[] = {auth ? hdr : NULL, NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    long st = -1;
    if (th_unary(&a->h, path, json, h, &r) == 0)
        st = r.status;
    if (out)
        *out = th_json(&r);
    httpc_resp_fini(&r);
    return st;
}

long ta_call(ta_agent_t *a, const char *method, const char *json, json_t **out)
{
    return ta_call_auth(a, method, json, "Bearer " TA_SECRET, out);
}

char *ta_create(ta_agent_t *a, const char *template_name, int timeout_sec)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"template\":\"%s\",\"vcpus\":1,\"memoryMb\":256,"
             "\"timeoutSec\":%d}",
             template_name, timeout_sec);
    json_t *r = NULL;
    long st = ta_call(a, "CreateSandbox", body, &r);
    char *id = NULL;
    if (st == 200 && json_is_string(json_object_get(r, "sandboxId")))
        id = xstrdup(json_string_value(json_object_get(r, "sandboxId")));
    else {
        char *dump = r ? json_dumps(r, 0) : NULL;
        fprintf(stderr, "# CreateSandbox %s: %ld %s\n", template_name, st, dump ? dump : "");
        free(dump);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "grep -E 'lvl=(warn|error)' '%s' | tail -n 5 | sed 's/^/# /' >&2",
                 a->log);
        th_sh(cmd);
    }
    json_decref(r);
    return id;
}

int ta_sh(ta_agent_t *a, const char *id, const char *script, buf_t *out, buf_t *err)
{
    json_t *req = json_pack("{s:s,s:s,s:[s,s],s:i}", "sandboxId", id, "cmd", "/bin/sh", "args",
                            "-c", script, "timeoutSec", 120);
    char *body = json_dumps(req, 0);
    json_decref(req);
    json_t *r = NULL;
    long st = ta_call(a, "Exec", body, &r);
    free(body);
    int code = -1000;
    if (st == 200) {
        code = (int)json_integer_value(json_object_get(r, "exitCode"));
        if (out)
            th_unb64(json_string_value(json_object_get(r, "stdout")), out);
        if (err)
            th_unb64(json_string_value(json_object_get(r, "stderr")), err);
    } else {
        char *dump = r ? json_dumps(r, 0) : NULL;
        fprintf(stderr, "# Exec: %ld %s\n", st, dump ? dump : "");
        free(dump);
    }
    json_decref(r);
    return code;
}

static long proc_uid(const char *pid)
{
    char path[300], line[256];
    snprintf(path, sizeof path, "/proc/%s/status", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    long uid = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Uid:", 4) == 0) {
            uid = strtol(line + 4, NULL, 10);
            break;
        }
    fclose(f);
    return uid;
}

static bool is_qemu(const char *pid)
{
    char path[300], buf[256];
    snprintf(path, sizeof path, "/proc/%s/cmdline", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return strstr(buf, "qemu-system") != NULL;
}

/* Our agents allocate the lowest free slots; other programs on a shared test machine (the net
 * and VMM modules' own tests) use slots from 16000 up. Only slots below TA_MAX_SLOT count. */
#define TA_MAX_SLOT 1000

static bool ours(const char *num)
{
    char *end;
    long n = strtol(num, &end, 10);
    return *num && !*end && n > 0 && n < TA_MAX_SLOT;
}

int ta_leftovers(const char *root)
{
    int n = 0;
    /* Give a just-stopped VM a moment to disappear from /proc. */
    for (int tries = 0; tries < 100; tries++) {
        n = 0;
        DIR *d = opendir("/proc");
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] < '0' || de->d_name[0] > '9')
                continue;
            long uid = proc_uid(de->d_name);
            if (uid >= 200000 && uid < 200000 + TA_MAX_SLOT && is_qemu(de->d_name))
                n++;
        }
        if (d)
            closedir(d);
        if (n == 0)
            break;
        usleep(50000);
    }
    if (n)
        fprintf(stderr, "# leftover: %d QEMU processes in the per-VM uid range\n", n);
    DIR *d = opendir("/run/netns");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, "wrenn-ns-", 9) == 0 && ours(de->d_name + 9)) {
            fprintf(stderr, "# leftover: netns %s\n", de->d_name);
            n++;
        }
    }
    if (d)
        closedir(d);
    d = opendir("/sys/class/net");
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, "wrv", 3) == 0 && ours(de->d_name + 3)) {
            fprintf(stderr, "# leftover: link %s\n", de->d_name);
            n++;
        }
    }
    if (d)
        closedir(d);
    if (th_sh("nft list ruleset 2>/dev/null | grep -Eq '\"wrv[0-9]{1,3}\"'") == 0) {
        fprintf(stderr, "# leftover: nft rules naming a sandbox veth or host address\n");
        n++;
    }
    if (root) {
        /* memfs servers (issue 4) of this root's sandboxes: they exit once unmounted. */
        char sbx[512];
        snprintf(sbx, sizeof sbx, "%s/sandboxes/", root);
        int nm = 0;
        for (int tries = 0; tries < 100; tries++) {
            nm = 0;
            DIR *pd = opendir("/proc");
            struct dirent *pe;
            while (pd && (pe = readdir(pd))) {
                if (pe->d_name[0] < '0' || pe->d_name[0] > '9')
                    continue;
                char path[300], cl[4096];
                snprintf(path, sizeof path, "/proc/%s/cmdline", pe->d_name);
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                    continue;
                ssize_t k = read(fd, cl, sizeof cl - 1);
                close(fd);
                if (k <= 0)
                    continue;
                cl[k] = '\0';
                bool memfs = strcmp(cl, "memfs") == 0;
                for (ssize_t i = 0; i < k && !memfs; i++)
                    if (cl[i] == '\0' && strcmp(cl + i + 1, "memfs") == 0)
                        memfs = true;
                for (ssize_t i = 0; i < k; i++)
                    if (cl[i] == '\0')
                        cl[i] = ' ';
                if (memfs && strstr(cl, sbx))
                    nm++;
            }
            if (pd)
                closedir(pd);
            if (nm == 0)
                break;
            usleep(50000);
        }
        if (nm)
            fprintf(stderr, "# leftover: %d memfs servers of %s\n", nm, sbx);
        n += nm;
        char p[512];
        snprintf(p, sizeof p, "%s/sandboxes", root);
        d = opendir(p);
        while (d && (de = readdir(d))) {
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
                fprintf(stderr, "# leftover: %s/%s\n", p, de->d_name);
                n++;
            }
        }
        if (d)
            closedir(d);
    }
    return n;
}
