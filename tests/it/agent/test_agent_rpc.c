/* wrenn-agent RPC surface without VMs: authentication, validation and error envelopes, the
 * secret file, and that refused calls leave nothing behind. */
#include "ta.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "connect.h"

static ta_agent_t ag;

static int setup(void **state)
{
    (void)state;
    return ta_start(&ag) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    assert_true(th_envd_alive(&ag.h));
    assert_int_equal(ta_leftovers(ag.root), 0);
    ta_stop(&ag);
    return 0;
}

static void expect_code(long st, json_t *body, long want_status, const char *want_code)
{
    char *dump = body ? json_dumps(body, 0) : NULL;
    if (st != want_status || !body || !json_string_value(json_object_get(body, "code")) ||
        strcmp(json_string_value(json_object_get(body, "code")), want_code) != 0)
        fprintf(stderr, "# got %ld %s, want %ld %s\n", st, dump ? dump : "(none)", want_status,
                want_code);
    free(dump);
    assert_int_equal(st, want_status);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(body, "code")), want_code);
    assert_non_null(json_string_value(json_object_get(body, "message")));
}

static const char *const unary_methods[] = {
    "CreateSandbox", "DestroySandbox", "ListSandboxes", "GetSandbox", "Exec",
    "ReadFile",      "WriteFile",      "SetTimeout",    "Ping",       "PingSandbox",
};

static void test_auth_required(void **state)
{
    (void)state;
    const char *bad[] = {NULL,
                         "Bearer wrong-secret-0123456789abcdef",
                         "Bearer ",
                         "Basic " TA_SECRET,
                         "Bearer " TA_SECRET "x",
                         "Bearer test"};
    for (size_t m = 0; m < sizeof unary_methods / sizeof *unary_methods; m++) {
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            json_t *r = NULL;
            long st = ta_call_auth(&ag, unary_methods[m], "{\"sandboxId\":\"sb-x\"}", bad[i], &r);
            expect_code(st, r, 401, "unauthenticated");
            json_decref(r);
        }
    }
    /* Streams answer 200 with the error in the end-of-stream envelope. */
    const char *streams[] = {"ExecStream", "ReadFileStream", "WriteFileStream"};
    for (size_t m = 0; m < 3; m++) {
        char path[128];
        snprintf(path, sizeof path, "/hostagent.v1.HostAgentService/%s", streams[m]);
        const char *h[] = {"Authorization: Bearer nope-nope-nope-nope", NULL};
        th_stream_t s;
        assert_int_equal(th_stream(&ag.h, path,
                                   "{\"sandboxId\":\"x\",\"cmd\":\"a\",\"path\":\"/\"}", h, NULL,
                                   NULL, &s),
                         0);
        assert_int_equal(s.status, 200);
        assert_int_equal(s.n, 0);
        assert_non_null(s.end);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(s.end, "error"), "code")),
            "unauthenticated");
        th_stream_fini(&s);
    }
}

static void test_ping_and_list(void **state)
{
    (void)state;
    json_t *r = NULL;
    assert_int_equal(ta_call(&ag, "Ping", "{}", &r), 200);
    json_decref(r);
    assert_int_equal(ta_call(&ag, "ListSandboxes", "{}", &r), 200);
    assert_true(json_is_array(json_object_get(r, "sandboxes")));
    assert_int_equal(json_array_size(json_object_get(r, "sandboxes")), 0);
    json_decref(r);
}

static void test_unknown_sandbox(void **state)
{
    (void)state;
    const char *calls[][2] = {
        {"DestroySandbox", "{\"sandboxId\":\"sb-00000000\"}"},
        {"GetSandbox", "{\"sandboxId\":\"sb-00000000\"}"},
        {"Exec", "{\"sandboxId\":\"sb-00000000\",\"cmd\":\"/bin/true\"}"},
        {"ReadFile", "{\"sandboxId\":\"sb-00000000\",\"path\":\"/etc/hostname\"}"},
        {"WriteFile", "{\"sandboxId\":\"sb-00000000\",\"path\":\"/tmp/x\",\"content\":\"aGk=\"}"},
        {"SetTimeout", "{\"sandboxId\":\"sb-00000000\",\"timeoutSec\":5}"},
        {"PingSandbox", "{\"sandboxId\":\"sb-00000000\"}"},
        {"Ping", "{\"sandboxId\":\"../../etc\"}"},
        {"Exec", "{\"sandbox_id\":\"no/such\",\"cmd\":\"/bin/true\"}"},
    };
    for (size_t i = 0; i < sizeof calls / sizeof *calls; i++) {
        json_t *r = NULL;
        long st = ta_call(&ag, calls[i][0], calls[i][1], &r);
        expect_code(st, r, 404, "not_found");
        json_decref(r);
    }
    th_stream_t s;
    const char *h[] = {"Authorization: Bearer " TA_SECRET, NULL};
    assert_int_equal(th_stream(&ag.h, "/hostagent.v1.HostAgentService/ExecStream",
                               "{\"sandboxId\":\"sb-00000000\",\"cmd\":\"/bin/true\"}", h, NULL,
                               NULL, &s),
                     0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s.end, "error"), "code")),
                        "not_found");
    th_stream_fini(&s);
    assert_int_equal(th_stream(&ag.h, "/hostagent.v1.HostAgentService/ReadFileStream",
                               "{\"sandboxId\":\"sb-00000000\",\"path\":\"/x\"}", h, NULL, NULL,
                               &s),
                     0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s.end, "error"), "code")),
                        "not_found");
    th_stream_fini(&s);
    /* WriteFileStream: its meta names an unknown sandbox. */
    assert_int_equal(th_stream(&ag.h, "/hostagent.v1.HostAgentService/WriteFileStream",
                               "{\"meta\":{\"sandboxId\":\"sb-00000000\",\"path\":\"/x\"}}", h,
                               NULL, NULL, &s),
                     0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s.end, "error"), "code")),
                        "not_found");
    th_stream_fini(&s);
}

static void test_write_stream_protocol(void **state)
{
    (void)state;
    const char *h[] = {"Authorization: Bearer " TA_SECRET, NULL};
    th_stream_t s;
    /* First message without meta. */
    assert_int_equal(th_stream(&ag.h, "/hostagent.v1.HostAgentService/WriteFileStream",
                               "{\"chunk\":\"aGk=\"}", h, NULL, NULL, &s),
                     0);
    assert_int_equal(s.status, 200);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s.end, "error"), "code")),
                        "invalid_argument");
    th_stream_fini(&s);
    /* An empty stream: no envelope at all. */
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *hh[] = {"Content-Type: application/connect+json",
                        "Authorization: Bearer " TA_SECRET, NULL};
    assert_int_equal(
        th_http(&ag.h, "POST", "/hostagent.v1.HostAgentService/WriteFileStream", hh, "", 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(r.body.len > 5);
    assert_int_equal((unsigned char)r.body.data[0], CONNECT_FLAG_END_STREAM);
    assert_non_null(strstr(r.body.data + 5, "invalid_argument"));
    assert_non_null(strstr(r.body.data + 5, "empty stream"));
    /* A broken envelope. */
    assert_int_equal(th_http(&ag.h, "POST", "/hostagent.v1.HostAgentService/WriteFileStream", hh,
                             "\x00\x00\x00\x00\x09{}", 7, &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body.data + 5, "invalid_argument"));
    httpc_resp_fini(&r);
}

static void test_bad_templates(void **state)
{
    (void)state;
    const char *bad[] = {"..",
                         ".",
                         ".hidden",
                         "foo/bar",
                         "foo\\\\bar",
                         "../etc/passwd",
                         "foo/../bar",
                         "foo bar",
                         "/etc/passwd",
                         "~root",
                         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"template\":\"%s\"}", bad[i]);
        json_t *r = NULL;
        long st = ta_call(&ag, "CreateSandbox", body, &r);
        expect_code(st, r, 400, "invalid_argument");
        json_decref(r);
    }
    /* A well-formed name that names no image. */
    json_t *r = NULL;
    long st;
    st = ta_call(&ag, "CreateSandbox", "{\"template\":\"no-such-template\"}", &r);
    expect_code(st, r, 404, "not_found");
    json_decref(r);
    /* A bad sandbox id. */
    st = ta_call(&ag, "CreateSandbox", "{\"sandboxId\":\"../x\"}", &r);
    expect_code(st, r, 400, "invalid_argument");
    json_decref(r);
}

static void test_absurd_sizes(void **state)
{
    (void)state;
    const char *bad[] = {
        "{\"vcpus\":64}",
        "{\"vcpus\":\"9223372036854775807\"}",
        "{\"vcpus\":1000000}",
        "{\"memoryMb\":16}",
        "{\"memoryMb\":129}",
        "{\"memoryMb\":1048576}",
        "{\"memoryMb\":\"99999999999\"}",
        "{\"timeoutSec\":-1}",
        "{\"vcpus\":\"many\"}",
        "{\"memoryMb\":1.5e300}",
        "{\"envVars\":[1,2]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *r = NULL;
        long st = ta_call(&ag, "CreateSandbox", bad[i], &r);
        expect_code(st, r, 400, "invalid_argument");
        json_decref(r);
    }
    json_t *r = NULL;
    long st = ta_call(&ag, "Exec", "{\"sandboxId\":\"sb-1\",\"cmd\":\"x\",\"timeoutSec\":-3}", &r);
    expect_code(st, r, 400, "invalid_argument");
    json_decref(r);
    st = ta_call(&ag, "CreateSandbox", "not json", &r);
    expect_code(st, r, 400, "invalid_argument");
    json_decref(r);
}

static void test_own_secret(void **state)
{
    (void)state;
    ta_agent_t a2;
    assert_int_equal(ta_start_own(&a2), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/agent.secret", a2.root);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    char secret[128] = "";
    assert_non_null(fgets(secret, sizeof secret, f));
    fclose(f);
    secret[strcspn(secret, "\n")] = '\0';
    assert_true(strlen(secret) >= 32);
    char auth[200];
    snprintf(auth, sizeof auth, "Bearer %s", secret);
    json_t *r = NULL;
    assert_int_equal(ta_call_auth(&a2, "Ping", "{}", auth, &r), 200);
    json_decref(r);
    assert_int_equal(ta_call(&a2, "Ping", "{}", &r), 401);
    json_decref(r);
    /* The same secret survives a restart. */
    kill(a2.h.pid, SIGTERM);
    waitpid(a2.h.pid, NULL, 0);
    assert_int_equal(ta_restart(&a2), 0);
    assert_int_equal(ta_call_auth(&a2, "Ping", "{}", auth, &r), 200);
    json_decref(r);
    ta_stop(&a2);
}

static void test_cli(void **state)
{
    (void)state;
    char cmd[1024];
    const char *bin = getenv("WRENN_TEST_AGENT_BIN");
    assert_non_null(bin);
    snprintf(cmd, sizeof cmd, "'%s' image build ../evil --root /nonexistent 2>/dev/null", bin);
    assert_int_equal(th_sh(cmd), 2);
    snprintf(cmd, sizeof cmd, "'%s' --no-such-flag 2>/dev/null", bin);
    assert_int_equal(th_sh(cmd), 2);
    snprintf(cmd, sizeof cmd, "'%s' frobnicate 2>/dev/null", bin);
    assert_int_equal(th_sh(cmd), 2);
    snprintf(cmd, sizeof cmd, "'%s' --listen nonsense --secret 0123456789abcdef 2>/dev/null", bin);
    assert_int_equal(th_sh(cmd), 2);
    snprintf(cmd, sizeof cmd, "'%s' --help >/dev/null", bin);
    assert_int_equal(th_sh(cmd), 0);
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_and_list),   cmocka_unit_test(test_auth_required),
        cmocka_unit_test(test_unknown_sandbox), cmocka_unit_test(test_write_stream_protocol),
        cmocka_unit_test(test_bad_templates),   cmocka_unit_test(test_absurd_sizes),
        cmocka_unit_test(test_own_secret),      cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests_name("agent_rpc", tests, setup, teardown);
}
