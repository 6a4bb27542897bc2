/* envd REST endpoints against the running binary: /health, /init, /envs, /metrics, routing,
 * CORS and the access token. */
#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static th_envd_t envd;

static int setup(void **state)
{
    (void)state;
    return th_envd_start(&envd, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    assert_true(th_envd_alive(&envd));
    th_envd_stop(&envd);
    return 0;
}

static void test_health(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&envd, "GET", "/health", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 204);
    char v[64];
    assert_true(httpc_resp_header(&r, "Cache-Control", v, sizeof v));
    assert_string_equal(v, "no-store");
    httpc_resp_fini(&r);
}

static void test_health_ipv6(void **state)
{
    (void)state;
    th_envd_t e6 = envd;
    snprintf(e6.url, sizeof e6.url, "http://[::1]:%d", envd.port);
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&e6, "GET", "/health", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 204);
    httpc_resp_fini(&r);
}

static void expect_error(const char *method, const char *path, const char *body, long status)
{
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&envd, method, path, NULL, body, body ? strlen(body) : 0, &r), 0);
    assert_int_equal(r.status, status);
    json_t *j = th_json(&r);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), status);
    assert_true(json_is_string(json_object_get(j, "message")));
    json_decref(j);
    httpc_resp_fini(&r);
}

static void test_unknown_route_and_method(void **state)
{
    (void)state;
    expect_error("GET", "/nope", NULL, 404);
    expect_error("DELETE", "/health", NULL, 405);
    expect_error("GET", "/init", NULL, 405);
}

static void test_init_and_envs(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *body = "{\"envVars\":{\"FOO\":\"bar\",\"X\":\"1\"},"
                       "\"timestamp\":\"2030-01-01T00:00:00.5Z\",\"unknownField\":[1,2]}";
    assert_int_equal(th_http(&envd, "POST", "/init", NULL, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 204);
    assert_int_equal(th_http(&envd, "GET", "/envs", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = th_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "FOO")), "bar");
    assert_string_equal(json_string_value(json_object_get(j, "WRENN_SANDBOX")), "true");
    json_decref(j);

    /* An older timestamp is not applied. */
    body = "{\"envVars\":{\"FOO\":\"old\"},\"timestamp\":\"2029-01-01T00:00:00Z\"}";
    assert_int_equal(th_http(&envd, "POST", "/init", NULL, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 204);
    assert_int_equal(th_http(&envd, "GET", "/envs", NULL, NULL, 0, &r), 0);
    j = th_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "FOO")), "bar");
    json_decref(j);
    httpc_resp_fini(&r);
}

static void test_init_bad_input(void **state)
{
    (void)state;
    expect_error("POST", "/init", "{not json", 400);
    expect_error("POST", "/init", "[1,2,3]", 400);
    expect_error("POST", "/init", "{\"timestamp\":\"yesterday\"}", 400);
    expect_error("POST", "/init", "{\"envVars\":{\"A\":1}}", 400);
    expect_error("POST", "/init", "{\"defaultUser\":\"no-such-user-xyz\"}", 400);
    /* A 2 MiB body is refused without being buffered. */
    size_t n = 2u << 20;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[n] = '\0';
    big[0] = '{';
    big[n - 1] = '}';
    expect_error("POST", "/init", big, 413);
    free(big);
    /* Deep nesting is a clean 400 too. */
    char deep[40001];
    for (int i = 0; i < 20000; i++)
        deep[i] = '[';
    for (int i = 20000; i < 40000; i++)
        deep[i] = ']';
    deep[40000] = '\0';
    expect_error("POST", "/init", deep, 400);
}

static void test_metrics(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&envd, "GET", "/metrics", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = th_json(&r);
    const char *keys[] = {"ts",        "cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib",
                          "mem_total", "mem_used",  "disk_used",    "disk_total"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_non_null(json_object_get(j, keys[i]));
    assert_true(json_integer_value(json_object_get(j, "cpu_count")) >= 1);
    assert_true(json_integer_value(json_object_get(j, "mem_total")) > 0);
    json_decref(j);
    httpc_resp_fini(&r);
}

static void test_cors_preflight(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *h[] = {"Origin: http://example.test", "Access-Control-Request-Method: POST", NULL};
    assert_int_equal(th_http(&envd, "OPTIONS", "/process.Process/Start", h, NULL, 0, &r), 0);
    assert_int_equal(r.status, 204);
    char v[128];
    assert_true(httpc_resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    assert_string_equal(v, "*");
    httpc_resp_fini(&r);
}

/* Runs last: once a token is set every other route wants it. */
static void test_access_token(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *body = "{\"accessToken\":\"s3cret-token\"}";
    assert_int_equal(th_http(&envd, "POST", "/init", NULL, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 204);

    assert_int_equal(th_http(&envd, "GET", "/envs", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 401);
    const char *bad[] = {"X-Access-Token: wrong", NULL};
    assert_int_equal(th_http(&envd, "GET", "/envs", bad, NULL, 0, &r), 0);
    assert_int_equal(r.status, 401);
    const char *good[] = {"X-Access-Token: s3cret-token", NULL};
    assert_int_equal(th_http(&envd, "GET", "/envs", good, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    /* Credentials are checked before size: a 5 MiB body without a token is a 401, not a 413. */
    {
        size_t n = 5u << 20;
        char *big = calloc(1, n);
        memset(big, ' ', n);
        const char *h[] = {"Content-Type: application/json", NULL};
        assert_int_equal(th_http(&envd, "POST", "/process.Process/List", h, big, n, &r), 0);
        assert_int_equal(r.status, 401);
        free(big);
    }
    /* /health stays open. */
    assert_int_equal(th_http(&envd, "GET", "/health", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 204);
    /* Changing the token needs the old one. */
    body = "{\"accessToken\":\"other\"}";
    assert_int_equal(th_http(&envd, "POST", "/init", NULL, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 401);
    body = "{\"accessToken\":\"s3cret-token\",\"defaultUser\":\"root\"}";
    assert_int_equal(th_http(&envd, "POST", "/init", NULL, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 204);
    httpc_resp_fini(&r);
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_health_ipv6),
        cmocka_unit_test(test_unknown_route_and_method),
        cmocka_unit_test(test_init_and_envs),
        cmocka_unit_test(test_init_bad_input),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_cors_preflight),
        cmocka_unit_test(test_access_token),
    };
    return cmocka_run_group_tests_name("envd_rest", tests, setup, teardown);
}
