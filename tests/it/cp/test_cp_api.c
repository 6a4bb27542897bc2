/* wrenn-cp: routing (404/405), the OpenAPI document matching the router both ways, /docs, and
 * hostile input (malformed and deeply nested JSON, 10 MiB bodies, SQL metacharacters, invalid
 * UTF-8, huge integers) answered with 4xx while nothing changes and the daemon survives. */
#include "cph.h"
#include "xalloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static long req(cph_t *c, const char *method, const char *path, const char *tok, const char *body,
                const char **code)
{
    static char last[64];
    json_t *j = NULL;
    long st = cph_req(c, method, path, tok, NULL, body, &j);
    snprintf(last, sizeof last, "%s", cph_err_code(j));
    if (code)
        *code = last;
    json_decref(j);
    return st;
}

/* ---- OpenAPI ---- */

/* "METHOD /path" lines of the document's paths section (a plain scan of the layout we write:
 * two-space path keys, four-space method keys). */
static int doc_routes(const char *yaml, char **out, int max)
{
    int n = 0;
    bool in_paths = false;
    char path[256] = "";
    const char *p = yaml;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)(len < 511 ? len : 511), p);
        if (!strncmp(line, "paths:", 6))
            in_paths = true;
        else if (line[0] && line[0] != ' ')
            in_paths = false;
        else if (in_paths && !strncmp(line, "  /", 3) && line[strlen(line) - 1] == ':') {
            snprintf(path, sizeof path, "%.*s", (int)strlen(line) - 3, line + 2);
        } else if (in_paths && !strncmp(line, "    ", 4) && line[4] != ' ') {
            static const char *const methods[] = {"get", "post", "put", "patch", "delete"};
            for (size_t i = 0; i < 5; i++) {
                size_t ml = strlen(methods[i]);
                if (!strncmp(line + 4, methods[i], ml) && line[4 + ml] == ':' && n < max) {
                    char m[8];
                    for (size_t k = 0; k <= ml; k++)
                        m[k] = (char)(methods[i][k] >= 'a' ? methods[i][k] - 32 : methods[i][k]);
                    out[n++] = xasprintf("%s %s", m, path);
                }
            }
        }
        p += len + (eol ? 1 : 0);
    }
    return n;
}

static bool contains(char **list, int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(list[i], s))
            return true;
    return false;
}

static void test_openapi_matches_router(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char url[128];
    snprintf(url, sizeof url, "%s/openapi.yaml", c.url);
    httpc_req_t rq = {.method = "GET", .url = url, .timeout_ms = 10000};
    httpc_resp_t rs;
    httpc_resp_init(&rs);
    err_t e = {0};
    assert_int_equal(httpc_do(c.http, &rq, &rs, &e), 0);
    assert_int_equal(rs.status, 200);
    char ct[128];
    assert_true(httpc_resp_header(&rs, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/yaml");
    char *doc[128];
    int nd = doc_routes(rs.body.data, doc, 128);
    httpc_resp_fini(&rs);

    char *out = NULL;
    const char *args[] = {"routes", NULL};
    assert_int_equal(cph_run(&c, args, &out), 0);
    char *rt[128];
    int nr = 0;
    for (char *line = strtok(out, "\n"); line && nr < 128; line = strtok(NULL, "\n"))
        rt[nr++] = xstrdup(line);
    free(out);
    assert_true(nr >= 20);
    int missing = 0;
    for (int i = 0; i < nr; i++)
        if (!contains(doc, nd, rt[i])) {
            fprintf(stderr, "# in the router but not in openapi.yaml: %s\n", rt[i]);
            missing++;
        }
    for (int i = 0; i < nd; i++)
        if (!contains(rt, nr, doc[i])) {
            fprintf(stderr, "# in openapi.yaml but not in the router: %s\n", doc[i]);
            missing++;
        }
    assert_int_equal(missing, 0);
    assert_int_equal(nd, nr);
    /* And every documented route is really served (not 404/405). */
    for (int i = 0; i < nd; i++) {
        char method[16], path[256];
        sscanf(doc[i], "%15s %255s", method, path);
        for (char *b = strchr(path, '{'); b; b = strchr(path, '{')) {
            char *end = strchr(b, '}');
            memmove(b + 1, end + 1, strlen(end + 1) + 1);
            *b = 'x';
        }
        const char *code = NULL;
        long st = req(&c, method, path, NULL, NULL, &code);
        if (st == 404 || st == 405)
            assert_string_not_equal(code, "method_not_allowed");
        if (st == 404)
            assert_string_not_equal(code, "not_found");
    }
    for (int i = 0; i < nd; i++)
        free(doc[i]);
    for (int i = 0; i < nr; i++)
        free(rt[i]);

    /* /docs renders it. */
    snprintf(url, sizeof url, "%s/docs", c.url);
    httpc_resp_init(&rs);
    assert_int_equal(httpc_do(c.http, &rq, &rs, &e), 0);
    assert_int_equal(rs.status, 200);
    assert_non_null(strstr(rs.body.data, "/openapi.yaml"));
    /* Self-contained: an offline install must render it, so nothing is loaded from elsewhere. */
    assert_null(strstr(rs.body.data, "http://"));
    assert_null(strstr(rs.body.data, "https://"));
    httpc_resp_fini(&rs);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_routing(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    const char *code = NULL;
    assert_int_equal(req(&c, "GET", "/v1/nope", NULL, NULL, &code), 404);
    assert_string_equal(code, "not_found");
    assert_int_equal(req(&c, "GET", "/", NULL, NULL, &code), 404);
    assert_int_equal(req(&c, "GET", "/v1/teams/x/y/z/w", NULL, NULL, &code), 404);
    assert_int_equal(req(&c, "PUT", "/v1/teams", NULL, NULL, &code), 405);
    assert_string_equal(code, "method_not_allowed");
    assert_int_equal(req(&c, "DELETE", "/v1/auth/login", NULL, NULL, &code), 405);
    assert_int_equal(req(&c, "POST", "/docs", NULL, NULL, &code), 405);
    json_t *j = NULL;
    assert_int_equal(cph_req_raw(&c, "HEAD", "/openapi.yaml", NULL, NULL, 0, NULL, &j), 200);
    json_decref(j);
    assert_int_equal(cph_stop(&c), 0);
}

/* ---- hostile input ---- */

static char *state_of(cph_t *c)
{
    return cph_sql1(c,
                    "SELECT (SELECT COUNT(*) FROM users) || '|' || (SELECT COUNT(*) FROM teams) "
                    "|| '|' || (SELECT COUNT(*) FROM users_teams) || '|' || "
                    "(SELECT COUNT(*) FROM team_api_keys) || '|' || "
                    "(SELECT COUNT(*) FROM audit_logs) || '|' || "
                    "(SELECT COUNT(*) FROM teams WHERE deleted_at IS NOT NULL) || '|' || "
                    "(SELECT MIN(name) FROM teams) || '|' || (SELECT MAX(role) FROM users_teams)",
                    0, NULL);
}

struct chunked {
    size_t left;
};

static long chunk_read(void *ud, char *dst, size_t max)
{
    struct chunked *c = ud;
    size_t n = c->left < max ? c->left : max;
    memset(dst, 'a', n);
    c->left -= n;
    return (long)n;
}

static void test_hostile(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char *tok = NULL;
    json_t *u = cph_signup(&c, "victim@example.com", NULL, &tok);
    char team_path[128], members_path[160], role_path[256];
    snprintf(team_path, sizeof team_path, "/v1/teams/%s", js(u, "team_id"));
    snprintf(members_path, sizeof members_path, "/v1/teams/%s/members", js(u, "team_id"));
    snprintf(role_path, sizeof role_path, "/v1/teams/%s/members/%s", js(u, "team_id"),
             js(u, "user_id"));
    char *before = state_of(&c);
    assert_non_null(before);

    /* Every JSON route, with each kind of bad body. */
    struct {
        const char *method, *path;
        bool auth;
    } routes[] = {
        {"POST", "/v1/auth/signup", false},
        {"POST", "/v1/auth/login", false},
        {"POST", "/v1/auth/switch-team", true},
        {"POST", "/v1/api-keys", true},
        {"POST", "/v1/teams", true},
        {"PATCH", team_path, true},
        {"POST", members_path, true},
        {"PATCH", role_path, true},
    };
    /* Deep nesting well under the body limit. */
    size_t depth = 30000;
    char *deep = xmalloc(depth * 2 + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = '\0';
    buf_t deepobj;
    buf_init(&deepobj);
    for (int i = 0; i < 5000; i++)
        buf_adds(&deepobj, "{\"a\":");
    buf_adds(&deepobj, "1");
    for (int i = 0; i < 5000; i++)
        buf_addc(&deepobj, '}');
    const char *bodies[] = {
        "{",
        "{\"email\":\"a@b.c\",}",
        "null",
        "\"string\"",
        "{\"email\":\"a@b.c\" \"password\":\"x\"}",
        deep,
        deepobj.data,
        "{\"email\":\"q@q.io\",\"password\":\"password123\",\"name\":"
        "123456789012345678901234567890}",
        "{\"email\":\"q@q.io\",\"password\":\"password123\",\"name\":1e99999}",
        "{\"team_id\":99999999999999999999999999999999999,\"name\":-99999999999999999999999999}",
        "{\"email\":\"q\\u0000@q.io\",\"password\":\"password123\",\"name\":\"x\\u0000\"}",
        "{\"email\":{\"$gt\":\"\"},\"password\":[\"password123\"],\"name\":{},\"role\":[],\"team_"
        "id\":{}}",
        "{\"email\":\"\\ud800@q.io\",\"password\":\"password123\",\"name\":\"\\udfff\"}",
    };
    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++) {
        for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
            const char *code = NULL;
            long st = req(&c, routes[r].method, routes[r].path, routes[r].auth ? tok : NULL,
                          bodies[b], &code);
            if (st < 400 || st >= 500)
                fprintf(stderr, "# %s %s body #%zu → %ld\n", routes[r].method, routes[r].path, b,
                        st);
            assert_true(st >= 400 && st < 500);
        }
    }
    free(deep);
    buf_fini(&deepobj);

    /* Invalid UTF-8 in a body, a query and a path. */
    static const char bad_utf8[] = "{\"email\":\"\xff\xfe@x.io\",\"password\":\"password123\"}";
    json_t *j = NULL;
    assert_int_equal(
        cph_req_raw(&c, "POST", "/v1/auth/signup", NULL, bad_utf8, strlen(bad_utf8), NULL, &j),
        400);
    json_decref(j);
    static const char overlong[] = "{\"name\":\"\xc0\xaf\"}";
    assert_int_equal(
        cph_req_raw(&c, "POST", "/v1/teams", tok, overlong, strlen(overlong), NULL, &j), 400);
    json_decref(j);
    const char *code = NULL;
    assert_int_equal(req(&c, "GET", "/v1/users/search?email=%ff%fe@x.io", tok, NULL, &code), 400);
    assert_int_equal(req(&c, "GET", "/v1/sandboxes/%ff%fe", tok, NULL, &code), 400);
    assert_int_equal(req(&c, "GET", "/v1/audit-logs?resource_type=%c0%af", tok, NULL, &code), 400);
    assert_int_equal(req(&c, "GET", "/v1/audit-logs?limit=1e400", tok, NULL, &code), 400);
    assert_int_equal(req(&c, "GET", "/v1/audit-logs?limit=18446744073709551617", tok, NULL, &code),
                     400);

    /* 10 MiB bodies: with a length, and chunked without one. */
    size_t big = 10u << 20;
    char *huge = xmalloc(big);
    memset(huge, ' ', big);
    huge[0] = '{';
    huge[big - 1] = '}';
    assert_int_equal(cph_req_raw(&c, "POST", "/v1/auth/signup", NULL, huge, big, NULL, &j), 413);
    assert_string_equal(cph_err_code(j), "too_large");
    json_decref(j);
    assert_int_equal(cph_req_raw(&c, "POST", "/v1/teams", tok, huge, big, NULL, &j), 413);
    json_decref(j);
    free(huge);
    char url[256], auth[2048];
    snprintf(url, sizeof url, "%s/v1/api-keys", c.url);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", tok);
    const char *hdrs[] = {auth, "Content-Type: application/json", NULL};
    struct chunked ch = {big};
    httpc_req_t rq = {.method = "POST",
                      .url = url,
                      .headers = hdrs,
                      .body_read = chunk_read,
                      .ud = &ch,
                      .timeout_ms = 60000};
    httpc_resp_t rs;
    httpc_resp_init(&rs);
    err_t e = {0};
    int rc = httpc_do(c.http, &rq, &rs, &e);
    /* Either the 413 arrives, or the server closed the connection on the oversized upload. */
    if (rc == 0)
        assert_int_equal(rs.status, 413);
    httpc_resp_fini(&rs);

    /* SQL metacharacters are data, never SQL. */
    json_t *k = NULL;
    const char *evil = "'; DROP TABLE team_api_keys; -- \\\" %_ \xe2\x9c\x93";
    json_t *body = json_pack("{s:s}", "name", evil);
    char *bs = json_dumps(body, 0);
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", tok, NULL, bs, &k), 201);
    assert_string_equal(js(k, "name"), evil);
    json_decref(k);
    free(bs);
    json_decref(body);
    json_t *l = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/api-keys", tok, NULL, NULL, &l), 200);
    assert_string_equal(js(json_array_get(l, 0), "name"), evil);
    json_decref(l);
    assert_int_equal(req(&c, "PATCH", team_path, tok, "{\"name\":\"O'Brien -- team\"}", &code),
                     204);
    assert_int_equal(
        req(&c, "POST", "/v1/auth/login", NULL,
            "{\"email\":\"victim@example.com' OR '1'='1\",\"password\":\"x' OR '1'='1\"}", &code),
        401);
    assert_int_equal(req(&c, "GET", "/v1/sandboxes/x'%20OR%20'1'='1", tok, NULL, &code), 404);
    char *mid = state_of(&c);
    /* Only the two intended changes happened: one key (+ its audit entry), one rename (+ its
     * audit entry). Undo-free check: compare counts apart from those. */
    assert_non_null(mid);
    char *after_tables = cph_sql1(&c, "SELECT COUNT(*) FROM team_api_keys", 0, NULL);
    assert_string_equal(after_tables, "1");
    free(after_tables);
    char *users = cph_sql1(&c, "SELECT COUNT(*) FROM users", 0, NULL);
    assert_string_equal(users, "1");
    free(users);
    char *teams = cph_sql1(&c, "SELECT COUNT(*) FROM teams", 0, NULL);
    assert_string_equal(teams, "1");
    free(teams);
    char *name = cph_sql1(&c, "SELECT name FROM teams", 0, NULL);
    assert_string_equal(name, "O'Brien -- team");
    free(name);
    char *audits = cph_sql1(&c, "SELECT COUNT(*) FROM audit_logs", 0, NULL);
    assert_string_equal(audits, "2");
    free(audits);
    free(before);
    free(mid);

    /* Oversized credentials in headers. */
    char *longkey = xmalloc(8200);
    memset(longkey, 'a', 8199);
    longkey[8199] = '\0';
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, longkey, NULL, NULL), 401);
    free(longkey);

    assert_true(cph_alive(&c));
    /* The daemon still works normally. */
    assert_int_equal(req(&c, "GET", "/v1/teams", tok, NULL, &code), 200);
    json_decref(u);
    free(tok);
    assert_int_equal(cph_stop(&c), 0);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openapi_matches_router),
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests_name(cph_is_pg() ? "cp_api_postgres" : "cp_api_sqlite", tests,
                                       cph_suite_setup, cph_suite_teardown);
}
