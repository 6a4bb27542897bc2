/* envd as PID 1: run inside fresh PID, mount and UTS namespaces (what a VM's init sees) and
 * check the mounts, the hostname, zombie reaping, the restart of a dead agent, and shutdown. */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

extern char **environ;

static pid_t unshare_pid = -1;
static th_envd_t envd; /* url/port only: the process is unshare's grandchild */
static char dir[256];

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

static bool healthy(void)
{
    httpc_resp_t r;
    httpc_resp_init(&r);
    bool ok = th_http(&envd, "GET", "/health", NULL, NULL, 0, &r) == 0 && r.status == 204;
    httpc_resp_fini(&r);
    return ok;
}

static bool wait_healthy(int ms)
{
    for (int i = 0; i < ms / 20; i++) {
        if (healthy())
            return true;
        usleep(20000);
    }
    return false;
}

/* Host pids of the children of pid (from /proc/<pid>/task/<pid>/children). */
static int children(pid_t pid, pid_t *out, int max)
{
    char p[64], line[4096];
    snprintf(p, sizeof p, "/proc/%d/task/%d/children", pid, pid);
    FILE *f = fopen(p, "re");
    if (!f)
        return 0;
    int n = 0;
    if (fgets(line, sizeof line, f)) {
        char *s = line, *end;
        while (n < max) {
            long v = strtol(s, &end, 10);
            if (end == s)
                break;
            out[n++] = (pid_t)v;
            s = end;
        }
    }
    fclose(f);
    return n;
}

static pid_t init_host_pid(void)
{
    pid_t c[4];
    return children(unshare_pid, c, 4) >= 1 ? c[0] : -1;
}

static int setup(void **state)
{
    (void)state;
    const char *bin = getenv("WRENN_TEST_ENVD_BIN");
    if (!bin)
        bin = "build/src/envd/wrenn-envd";
    /* The namespace gets a private /tmp, so keep the log under /var/tmp. */
    snprintf(dir, sizeof dir, "/var/tmp/wrenn-init-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    memset(&envd, 0, sizeof envd);
    envd.port = free_port();
    snprintf(envd.url, sizeof envd.url, "http://127.0.0.1:%d", envd.port);
    char port[16], log[300];
    snprintf(port, sizeof port, "%d", envd.port);
    snprintf(log, sizeof log, "%s/envd.log", dir);
    const char *argv[] = {
        "unshare",      "--mount", "--pid",  "--uts", "--fork", "--propagation", "private",
        "--kill-child", bin,       "--port", port,    "--addr", "127.0.0.1",     NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int r = posix_spawnp(&unshare_pid, "unshare", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -1;
    return wait_healthy(10000) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (unshare_pid > 0) {
        kill(unshare_pid, SIGKILL);
        waitpid(unshare_pid, NULL, 0);
    }
    th_rmrf(dir);
    return 0;
}

/* Run argv in the namespace through process.Process/Start; returns stdout. */
static char *run(const char *cmd)
{
    json_t *req = json_pack("{s:{s:s,s:[s,s]}}", "process", "cmd", "/bin/sh", "args", "-c", cmd);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    th_stream_t s;
    assert_int_equal(th_stream(&envd, "/process.Process/Start", body, NULL, NULL, NULL, &s), 0);
    free(body);
    buf_t out;
    buf_init(&out);
    th_collect_output(&s, "stdout", &out);
    assert_non_null(th_end_event(&s));
    th_stream_fini(&s);
    return buf_steal(&out, NULL);
}

static void test_mounts_and_hostname(void **state)
{
    (void)state;
    char *h = run("cat /proc/sys/kernel/hostname");
    assert_string_equal(h, "sandbox\n");
    free(h);
    char *m = run("cat /proc/mounts");
    const char *want[] = {" /proc proc ",      " /sys sysfs ",     " /dev devtmpfs ",
                          " /dev/pts devpts ", " /dev/shm tmpfs ", " /tmp tmpfs ",
                          " /run tmpfs "};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(m, want[i]))
            fail_msg("mount missing: %s", want[i]);
    free(m);
    /* envd is PID 1's child, and PID 1 is envd too. */
    char *c = run("tr '\\0' ' ' </proc/1/cmdline");
    assert_non_null(strstr(c, "wrenn-envd"));
    free(c);
    char *marker = run("cat /run/wrenn/.WRENN_SANDBOX");
    assert_string_equal(marker, "true");
    free(marker);
}

static void test_reaps_orphans(void **state)
{
    (void)state;
    /* Each command leaves an orphan that outlives it; PID 1 must reap them all. */
    for (int i = 0; i < 5; i++) {
        char *o = run("sleep 0.2 & echo started");
        assert_string_equal(o, "started\n");
        free(o);
    }
    usleep(800000);
    char *z = run("for s in /proc/[0-9]*/stat; do read -r l < $s && set -- $l && "
                  "[ \"$3\" = Z ] && echo \"$2\"; done; true");
    assert_string_equal(z, "");
    free(z);
}

static void test_restarts_dead_agent(void **state)
{
    (void)state;
    pid_t init = init_host_pid();
    assert_true(init > 0);
    pid_t kids[8];
    int n = children(init, kids, 8);
    assert_true(n >= 1);
    pid_t agent = kids[0];
    assert_int_equal(kill(agent, SIGKILL), 0);
    usleep(100000);
    assert_true(wait_healthy(10000));
    n = children(init, kids, 8);
    assert_true(n >= 1);
    assert_int_not_equal(kids[0], agent);
}

static void test_shutdown(void **state)
{
    (void)state;
    pid_t init = init_host_pid();
    assert_true(init > 0);
    assert_int_equal(kill(init, SIGTERM), 0);
    int st = 0;
    pid_t got = 0;
    for (int i = 0; i < 500 && got == 0; i++) {
        got = waitpid(unshare_pid, &st, WNOHANG);
        if (!got)
            usleep(10000);
    }
    assert_int_equal(got, unshare_pid);
    unshare_pid = -1;
    assert_false(healthy());
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mounts_and_hostname),
        cmocka_unit_test(test_reaps_orphans),
        cmocka_unit_test(test_restarts_dead_agent),
        cmocka_unit_test(test_shutdown),
    };
    return cmocka_run_group_tests_name("envd_init", tests, setup, teardown);
}
