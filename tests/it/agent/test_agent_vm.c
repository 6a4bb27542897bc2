/* wrenn-agent with real microVMs (QEMU microvm under TCG): create from minimal and base, exec,
 * streams, files up to 20 MiB, isolation between sandboxes and from the host, TTL, re-adoption
 * after kill -9, containment of a hostile guest. After every test nothing may be left behind. */
#include "ta.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "connect.h"
#include "xalloc.h"

static ta_agent_t ag;
static bool have_vms;

static int group_setup(void **state)
{
    (void)state;
    have_vms = ta_have_vms();
    if (!have_vms) {
        fprintf(stderr, "# no VMM driver, network module or image scripts in this build: "
                        "VM tests are skipped\n");
        return 0;
    }
    if (ta_ensure_image("minimal") < 0)
        return -1;
    return ta_start(&ag) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (have_vms)
        ta_stop(&ag);
    return 0;
}

/* After each test: the agent is alive, every sandbox destroyed, nothing left behind. */
static int after(void **state)
{
    (void)state;
    if (!have_vms)
        return 0;
    if (!th_envd_alive(&ag.h)) {
        fprintf(stderr, "# the agent died\n");
        return -1;
    }
    json_t *l = NULL;
    if (ta_call(&ag, "ListSandboxes", "{}", &l) == 200) {
        json_t *s;
        size_t i;
        json_array_foreach(json_object_get(l, "sandboxes"), i, s)
        {
            char body[256];
            snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}",
                     json_string_value(json_object_get(s, "sandboxId")));
            json_t *r = NULL;
            ta_call(&ag, "DestroySandbox", body, &r);
            json_decref(r);
        }
    }
    json_decref(l);
    return ta_leftovers(ag.root) == 0 ? 0 : -1;
}

#define NEED_VMS()                                                                                 \
    do {                                                                                           \
        if (!have_vms)                                                                             \
            skip();                                                                                \
    } while (0)

static void destroy(const char *id)
{
    char body[128];
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}", id);
    json_t *r = NULL;
    assert_int_equal(ta_call(&ag, "DestroySandbox", body, &r), 200);
    json_decref(r);
    assert_int_equal(ta_call(&ag, "GetSandbox", body, &r), 404);
    json_decref(r);
}

static char *host_ip_of(const char *id)
{
    char body[128];
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}", id);
    json_t *r = NULL;
    assert_int_equal(ta_call(&ag, "GetSandbox", body, &r), 200);
    char *ip = xstrdup(json_string_value(json_object_get(r, "hostIp")));
    assert_string_equal(json_string_value(json_object_get(r, "status")), "running");
    json_decref(r);
    return ip;
}

/* ---- create, exec, streams, files ------------------------------------------------------------ */

static void test_minimal_exec(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = ta_create(&ag, "minimal", 600);
    assert_non_null(id);
    assert_true(strncmp(id, "sb-", 3) == 0);

    json_t *l = NULL;
    assert_int_equal(ta_call(&ag, "ListSandboxes", "{}", &l), 200);
    assert_int_equal(json_array_size(json_object_get(l, "sandboxes")), 1);
    json_t *s0 = json_array_get(json_object_get(l, "sandboxes"), 0);
    assert_string_equal(json_string_value(json_object_get(s0, "sandboxId")), id);
    assert_string_equal(json_string_value(json_object_get(s0, "template")), "minimal");
    assert_true(json_is_string(json_object_get(s0, "createdAtUnix")));
    json_decref(l);
    free(host_ip_of(id));

    buf_t out, err;
    buf_init(&out);
    buf_init(&err);
    assert_int_equal(ta_sh(&ag, id, "uname -a", &out, &err), 0);
    assert_non_null(strstr(out.data, "Linux"));
    buf_reset(&out);
    buf_reset(&err);
    assert_int_equal(ta_sh(&ag, id, "echo out; echo err >&2; exit 3", &out, &err), 3);
    assert_string_equal(out.data, "out\n");
    assert_string_equal(err.data, "err\n");

    /* Exec of a missing program: a clear error or a non-zero exit, never a hang. */
    json_t *r = NULL;
    char body[256];
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\",\"cmd\":\"/no/such/program\"}", id);
    long st = ta_call(&ag, "Exec", body, &r);
    assert_true(st == 200 ? json_integer_value(json_object_get(r, "exitCode")) != 0 : st >= 400);
    json_decref(r);

    /* ExecStream: start, output in order, end with the exit code. */
    snprintf(body, sizeof body,
             "{\"sandboxId\":\"%s\",\"cmd\":\"/bin/sh\",\"args\":[\"-c\",\"for i in 1 2 3; do "
             "echo $i; done; echo e >&2; exit 5\"]}",
             id);
    const char *h[] = {"Authorization: Bearer " TA_SECRET, NULL};
    th_stream_t s;
    assert_int_equal(
        th_stream(&ag.h, "/hostagent.v1.HostAgentService/ExecStream", body, h, NULL, NULL, &s), 0);
    assert_int_equal(s.status, 200);
    assert_non_null(s.end);
    assert_null(json_object_get(s.end, "error"));
    assert_true(s.n >= 3);
    json_t *first = json_object_get(json_object_get(s.msgs[0], "event"), "start");
    assert_non_null(first);
    assert_true(json_integer_value(json_object_get(first, "pid")) > 0);
    buf_reset(&out);
    buf_reset(&err);
    int exit_code = -1;
    for (size_t i = 0; i < s.n; i++) {
        json_t *ev = json_object_get(s.msgs[i], "event");
        json_t *d = json_object_get(ev, "data"), *end = json_object_get(ev, "end");
        if (d && json_object_get(d, "stdout"))
            th_unb64(json_string_value(json_object_get(d, "stdout")), &out);
        if (d && json_object_get(d, "stderr"))
            th_unb64(json_string_value(json_object_get(d, "stderr")), &err);
        if (end) {
            exit_code = (int)json_integer_value(json_object_get(end, "exitCode"));
            assert_int_equal(i, s.n - 1);
        }
    }
    assert_string_equal(out.data, "1\n2\n3\n");
    assert_string_equal(err.data, "e\n");
    assert_int_equal(exit_code, 5);
    th_stream_fini(&s);

    /* An upload the guest refuses (the target is a directory) fails with the guest's reason,
     * through both forms; the agent is unharmed. */
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\",\"path\":\"/tmp\",\"content\":\"aGVsbG8=\"}",
             id);
    st = ta_call(&ag, "WriteFile", body, &r);
    assert_true(st >= 400);
    assert_non_null(json_string_value(json_object_get(r, "code")));
    json_decref(r);
    {
        buf_t sb;
        buf_init(&sb);
        char meta[256];
        int mn =
            snprintf(meta, sizeof meta, "{\"meta\":{\"sandboxId\":\"%s\",\"path\":\"/tmp\"}}", id);
        connect_envelope_add(&sb, 0, meta, (size_t)mn);
        for (int k = 0; k < 64; k++)
            connect_envelope_add(&sb, 0, "{\"chunk\":\"aGVsbG8=\"}", 20);
        httpc_resp_t hr;
        httpc_resp_init(&hr);
        const char *hh[] = {"Content-Type: application/connect+json",
                            "Authorization: Bearer " TA_SECRET, NULL};
        assert_int_equal(th_http(&ag.h, "POST", "/hostagent.v1.HostAgentService/WriteFileStream",
                                 hh, sb.data, sb.len, &hr),
                         0);
        assert_int_equal(hr.status, 200);
        /* The body is binary envelopes: search it as bytes. */
        assert_non_null(memmem(hr.body.data, hr.body.len, "\"error\"", 7));
        assert_non_null(memmem(hr.body.data, hr.body.len, "is a directory", 14));
        httpc_resp_fini(&hr);
        buf_fini(&sb);
    }
    assert_int_equal(ta_call(&ag, "Ping", "{}", &r), 200);
    json_decref(r);

    /* SetTimeout and Ping on a live sandbox. */
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\",\"timeoutSec\":900}", id);
    assert_int_equal(ta_call(&ag, "SetTimeout", body, &r), 200);
    json_decref(r);
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}", id);
    assert_int_equal(ta_call(&ag, "PingSandbox", body, &r), 200);
    json_decref(r);

    buf_fini(&out);
    buf_fini(&err);
    destroy(id);
    free(id);
}

static void fill_pattern(buf_t *b, size_t n)
{
    buf_reset(b);
    buf_reserve(b, n);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b->data[i] = (char)(x & 0xff);
    }
    b->len = n;
}

static void test_files_20mib(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = ta_create(&ag, "minimal", 600);
    assert_non_null(id);
    const size_t size = 20u << 20;
    buf_t data;
    buf_init(&data);
    fill_pattern(&data, size);

    /* Unary WriteFile / ReadFile. */
    char *b64 = th_b64(data.data, data.len);
    json_t *req =
        json_pack("{s:s,s:s,s:s}", "sandboxId", id, "path", "/tmp/big-unary", "content", b64);
    free(b64);
    char *body = json_dumps(req, 0);
    json_decref(req);
    json_t *r = NULL;
    assert_int_equal(ta_call(&ag, "WriteFile", body, &r), 200);
    json_decref(r);
    free(body);
    char small[256];
    snprintf(small, sizeof small, "{\"sandboxId\":\"%s\",\"path\":\"/tmp/big-unary\"}", id);
    assert_int_equal(ta_call(&ag, "ReadFile", small, &r), 200);
    buf_t got;
    buf_init(&got);
    assert_true(th_unb64(json_string_value(json_object_get(r, "content")), &got));
    json_decref(r);
    assert_int_equal(got.len, size);
    assert_memory_equal(got.data, data.data, size);

    /* WriteFileStream: meta, then 256 KiB chunks, in one client-stream body. */
    buf_t stream;
    buf_init(&stream);
    char meta[256];
    int mn = snprintf(meta, sizeof meta,
                      "{\"meta\":{\"sandboxId\":\"%s\",\"path\":\"/tmp/big-stream\"}}", id);
    connect_envelope_add(&stream, 0, meta, (size_t)mn);
    for (size_t off = 0; off < size; off += 256u << 10) {
        char *c = th_b64(data.data + off, 256u << 10);
        char *msg = xasprintf("{\"chunk\":\"%s\"}", c);
        connect_envelope_add(&stream, 0, msg, strlen(msg));
        free(c);
        free(msg);
    }
    connect_envelope_add(&stream, CONNECT_FLAG_END_STREAM, "{}", 2);
    httpc_resp_t hr;
    httpc_resp_init(&hr);
    const char *hh[] = {"Content-Type: application/connect+json",
                        "Authorization: Bearer " TA_SECRET, NULL};
    assert_int_equal(th_http(&ag.h, "POST", "/hostagent.v1.HostAgentService/WriteFileStream", hh,
                             stream.data, stream.len, &hr),
                     0);
    assert_int_equal(hr.status, 200);
    /* One {} message and an end-of-stream envelope without an error (binary: memmem). */
    assert_true(hr.body.len >= 14);
    assert_null(memmem(hr.body.data, hr.body.len, "\"error\"", 7));
    assert_int_equal((unsigned char)hr.body.data[0], 0);
    httpc_resp_fini(&hr);
    buf_fini(&stream);

    /* ReadFileStream: chunks of at most 64 KiB that add up to the file. */
    const char *h[] = {"Authorization: Bearer " TA_SECRET, NULL};
    th_stream_t s;
    snprintf(small, sizeof small, "{\"sandboxId\":\"%s\",\"path\":\"/tmp/big-stream\"}", id);
    assert_int_equal(
        th_stream(&ag.h, "/hostagent.v1.HostAgentService/ReadFileStream", small, h, NULL, NULL, &s),
        0);
    assert_non_null(s.end);
    assert_null(json_object_get(s.end, "error"));
    buf_reset(&got);
    for (size_t i = 0; i < s.n; i++) {
        buf_t c;
        buf_init(&c);
        assert_true(th_unb64(json_string_value(json_object_get(s.msgs[i], "chunk")), &c));
        assert_true(c.len <= 65536);
        buf_add(&got, c.data, c.len);
        buf_fini(&c);
    }
    th_stream_fini(&s);
    assert_int_equal(got.len, size);
    assert_memory_equal(got.data, data.data, size);

    /* The guest agrees on the content. */
    buf_t out;
    buf_init(&out);
    assert_int_equal(
        ta_sh(&ag, id, "cmp /tmp/big-unary /tmp/big-stream && wc -c < /tmp/big-stream", &out, NULL),
        0);
    assert_int_equal(atol(out.data), (long)size);
    buf_fini(&out);

    /* A missing file is an error, not an empty answer. */
    snprintf(small, sizeof small, "{\"sandboxId\":\"%s\",\"path\":\"/no/such/file\"}", id);
    assert_int_equal(ta_call(&ag, "ReadFile", small, &r), 404);
    json_decref(r);

    buf_fini(&got);
    buf_fini(&data);
    destroy(id);
    free(id);
}

/* ---- isolation ----------------------------------------------------------------------------- */

#define NSBX 5

struct creator {
    char *id;
};

static void *create_thread(void *ud)
{
    struct creator *c = ud;
    c->id = ta_create(&ag, "minimal", 600);
    return NULL;
}

/* A TCP listener on all host addresses (the guest must not reach it). */
static int host_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 8) < 0)
        return -1;
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_five_isolated(void **state)
{
    (void)state;
    NEED_VMS();
    struct creator c[NSBX] = {0};
    pthread_t th[NSBX];
    for (int i = 0; i < NSBX; i++)
        pthread_create(&th[i], NULL, create_thread, &c[i]);
    for (int i = 0; i < NSBX; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < NSBX; i++)
        assert_non_null(c[i].id);
    char *ip[NSBX];
    for (int i = 0; i < NSBX; i++) {
        ip[i] = host_ip_of(c[i].id);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ip[i], ip[j]);
    }
    /* Each writes its own marker. */
    for (int i = 0; i < NSBX; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "echo %s > /tmp/marker-%d", c[i].id, i);
        assert_int_equal(ta_sh(&ag, c[i].id, cmd, NULL, NULL), 0);
    }
    int port = 0;
    int lfd = host_listener(&port);
    assert_true(lfd >= 0);
    /* The host's own addresses, as the guest might try them. */
    buf_t hostips;
    buf_init(&hostips);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *f = ifs; f; f = f->ifa_next) {
            if (!f->ifa_addr || f->ifa_addr->sa_family != AF_INET)
                continue;
            char a[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &((struct sockaddr_in *)f->ifa_addr)->sin_addr, a, sizeof a);
            buf_printf(&hostips, "%s ", a);
        }
        freeifaddrs(ifs);
    }
    for (int i = 0; i < NSBX; i++) {
        buf_t out;
        buf_init(&out);
        /* Positive control: the guest's own envd answers through the same tool (busybox nc:
         * exit 0 once connected). */
        assert_int_equal(ta_sh(&ag, c[i].id,
                               "printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | "
                               "nc -w 3 127.0.0.1 49983 | head -n 1",
                               &out, NULL),
                         0);
        assert_non_null(strstr(out.data, "HTTP/1.1 204"));
        int j = (i + 1) % NSBX;
        char cmd[1024];
        /* Another sandbox's envd, its files, the host's other ports: all out of reach. */
        snprintf(
            cmd, sizeof cmd,
            "r=0; for t in '%s 49983' '169.254.0.22 %d' '169.254.0.22 22' '169.254.0.22 49983'; "
            "do echo x | nc -w 3 $t >/dev/null 2>&1 && { echo reached $t; r=1; }; done; "
            "for h in %s; do "
            "echo x | nc -w 3 $h %d >/dev/null 2>&1 && { echo reached $h; r=1; }; done; "
            "test -e /tmp/marker-%d && { echo sees marker-%d; r=1; }; exit $r",
            ip[j], port, hostips.data, port, j, j);
        buf_reset(&out);
        int rc = ta_sh(&ag, c[i].id, cmd, &out, NULL);
        if (rc != 0)
            fprintf(stderr, "# sandbox %d: %s", i, out.data);
        assert_int_equal(rc, 0);
        buf_fini(&out);
    }
    close(lfd);
    buf_fini(&hostips);
    for (int i = 0; i < NSBX; i++) {
        destroy(c[i].id);
        free(c[i].id);
        free(ip[i]);
    }
}

/* ---- TTL, restart, containment ------------------------------------------------------------ */

static void test_ttl_expiry(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = ta_create(&ag, "minimal", 3);
    assert_non_null(id);
    char body[128];
    snprintf(body, sizeof body, "{\"sandboxId\":\"%s\"}", id);
    json_t *r = NULL;
    long st = 200;
    for (int i = 0; i < 150 && st == 200; i++) {
        usleep(100000);
        st = ta_call(&ag, "GetSandbox", body, &r);
        json_decref(r);
    }
    assert_int_equal(st, 404);
    free(id);
}

static void test_kill9_readopt(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = ta_create(&ag, "minimal", 600);
    assert_non_null(id);
    assert_int_equal(ta_sh(&ag, id, "echo before > /tmp/state", NULL, NULL), 0);
    ta_kill9(&ag);
    assert_int_equal(ta_restart(&ag), 0);
    buf_t out;
    buf_init(&out);
    assert_int_equal(ta_sh(&ag, id, "cat /tmp/state", &out, NULL), 0);
    assert_string_equal(out.data, "before\n");
    buf_fini(&out);
    destroy(id);
    free(id);
}

static void test_hostile_guest_contained(void **state)
{
    (void)state;
    NEED_VMS();
    char *bad = ta_create(&ag, "minimal", 600);
    char *good = ta_create(&ag, "minimal", 600);
    assert_non_null(bad);
    assert_non_null(good);
    /* Memory: far more than the guest has. Then processes: a fork bomb, bounded in time. */
    json_t *q =
        json_pack("{s:s,s:s,s:[s,s],s:i}", "sandboxId", bad, "cmd", "/bin/sh", "args", "-c",
                  "head -c 2G /dev/zero | tail > /dev/null; echo tail=$?", "timeoutSec", 120);
    char *body = json_dumps(q, 0);
    json_decref(q);
    json_t *r = NULL;
    ta_call(&ag, "Exec", body, &r);
    json_decref(r);
    free(body);
    q = json_pack("{s:s,s:s,s:[s,s],s:i}", "sandboxId", bad, "cmd", "/bin/sh", "args", "-c",
                  "b() { b | b & }; b; sleep 5", "timeoutSec", 15);
    body = json_dumps(q, 0);
    json_decref(q);
    ta_call(&ag, "Exec", body, &r);
    json_decref(r);
    free(body);
    /* The agent and the other sandbox are fine. */
    assert_int_equal(ta_call(&ag, "Ping", "{}", &r), 200);
    json_decref(r);
    buf_t out;
    buf_init(&out);
    assert_int_equal(ta_sh(&ag, good, "echo alive", &out, NULL), 0);
    assert_string_equal(out.data, "alive\n");
    buf_fini(&out);
    destroy(bad);
    destroy(good);
    free(bad);
    free(good);
}

static void test_base_python(void **state)
{
    (void)state;
    NEED_VMS();
    assert_int_equal(ta_ensure_image("base"), 0);
    char *id = ta_create(&ag, "base", 600);
    assert_non_null(id);
    json_t *q = json_pack("{s:s,s:s,s:[s,s],s:i}", "sandboxId", id, "cmd", "python3", "args", "-c",
                          "print(6*7)", "timeoutSec", 120);
    char *body = json_dumps(q, 0);
    json_decref(q);
    json_t *r = NULL;
    assert_int_equal(ta_call(&ag, "Exec", body, &r), 200);
    free(body);
    buf_t out;
    buf_init(&out);
    assert_true(th_unb64(json_string_value(json_object_get(r, "stdout")), &out));
    assert_string_equal(out.data, "42\n");
    assert_int_equal(json_integer_value(json_object_get(r, "exitCode")), 0);
    json_decref(r);
    buf_reset(&out);
    assert_int_equal(
        ta_sh(&ag, id, "id -u user && bash -c 'echo $BASH_VERSION' | cut -c1", &out, NULL), 0);
    assert_string_equal(out.data, "1000\n5\n");
    buf_fini(&out);
    destroy(id);
    free(id);
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_minimal_exec, after),
        cmocka_unit_test_teardown(test_files_20mib, after),
        cmocka_unit_test_teardown(test_five_isolated, after),
        cmocka_unit_test_teardown(test_ttl_expiry, after),
        cmocka_unit_test_teardown(test_kill9_readopt, after),
        cmocka_unit_test_teardown(test_hostile_guest_contained, after),
        cmocka_unit_test_teardown(test_base_python, after),
    };
    return cmocka_run_group_tests_name("agent_vm", tests, group_setup, group_teardown);
}
