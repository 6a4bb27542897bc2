/* wrenn-cp: sign-up, login, JWT, switch-team, API keys, sandbox list, migrations, secrets. */
#include "auth/jwt.h"
#include "cph.h"
#include "xalloc.h"

#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#define SECRET "0123456789abcdef0123456789abcdef-test"

static bool matches(const char *re, const char *s)
{
    regex_t rx;
    if (!s || regcomp(&rx, re, REG_EXTENDED | REG_NOSUB) != 0)
        return false;
    bool ok = regexec(&rx, s, 0, NULL, 0) == 0;
    regfree(&rx);
    return ok;
}

static void expect(cph_t *c, const char *method, const char *path, const char *tok,
                   const char *body, long status, const char *code)
{
    json_t *j = NULL;
    long st = cph_req(c, method, path, tok, NULL, body, &j);
    if (st != status || (code && strcmp(cph_err_code(j), code)))
        fprintf(stderr, "# %s %s → %ld %s (want %ld %s)\n", method, path, st, cph_err_code(j),
                status, code ? code : "");
    assert_int_equal(st, status);
    if (code)
        assert_string_equal(cph_err_code(j), code);
    json_decref(j);
}

static void test_signup(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    json_t *j = cph_signup(&c, "  Alice@Example.COM ", "Alice", NULL);
    assert_string_equal(js(j, "email"), "alice@example.com");
    assert_string_equal(js(j, "name"), "Alice");
    assert_true(matches("^usr_[0-9a-f]{32}$", js(j, "user_id")));
    assert_true(matches("^team_[0-9a-f]{32}$", js(j, "team_id")));
    assert_true(matches("^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$", js(j, "token")));
    char *tok = xstrdup(js(j, "token"));
    json_decref(j);

    /* The team it made: owner, default name, 12-hex slug. */
    json_t *teams = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/teams", tok, NULL, NULL, &teams), 200);
    assert_int_equal(json_array_size(teams), 1);
    json_t *t = json_array_get(teams, 0);
    assert_string_equal(js(t, "role"), "owner");
    assert_string_equal(js(t, "name"), "Alice's Team");
    assert_true(matches("^[0-9a-f]{6}-[0-9a-f]{6}$", js(t, "slug")));
    json_decref(teams);

    /* Name is optional; the team is then named after the email. */
    char *tok2 = NULL;
    json_decref(cph_signup(&c, "bob@example.com", NULL, &tok2));
    assert_int_equal(cph_req(&c, "GET", "/v1/teams", tok2, NULL, NULL, &teams), 200);
    assert_string_equal(js(json_array_get(teams, 0), "name"), "bob@example.com's Team");
    json_decref(teams);

    expect(&c, "POST", "/v1/auth/signup", NULL,
           "{\"email\":\"ALICE@example.com\",\"password\":\"password123\"}", 409, "email_taken");
    expect(&c, "POST", "/v1/auth/signup", NULL, "{\"email\":\"nope\",\"password\":\"password123\"}",
           400, "invalid_request");
    expect(&c, "POST", "/v1/auth/signup", NULL, "{\"email\":\"a@b\",\"password\":\"short\"}", 400,
           "invalid_request");
    expect(&c, "POST", "/v1/auth/signup", NULL, "{\"password\":\"password123\"}", 400,
           "invalid_request");
    expect(&c, "POST", "/v1/auth/signup", NULL, "{\"email\":5,\"password\":\"password123\"}", 400,
           "invalid_request");
    expect(&c, "POST", "/v1/auth/signup", NULL, "{\"email\":", 400, "invalid_request");
    expect(&c, "POST", "/v1/auth/signup", NULL, "[]", 400, "invalid_request");
    expect(&c, "GET", "/v1/auth/signup", NULL, NULL, 405, "method_not_allowed");
    free(tok);
    free(tok2);
    assert_true(cph_alive(&c));
    assert_int_equal(cph_stop(&c), 0);
}

static void test_login(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    json_t *j = cph_signup(&c, "carol@example.com", "Carol", NULL);
    char *tok = cph_login(&c, " CAROL@example.com", "password123");
    assert_non_null(tok);
    json_t *me = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/api-keys", tok, NULL, NULL, &me), 200);
    json_decref(me);
    expect(&c, "POST", "/v1/auth/login", NULL,
           "{\"email\":\"carol@example.com\",\"password\":\"wrongpass\"}", 401, "unauthorized");
    expect(&c, "POST", "/v1/auth/login", NULL,
           "{\"email\":\"nobody@example.com\",\"password\":\"password123\"}", 401, "unauthorized");
    expect(&c, "POST", "/v1/auth/login", NULL, "{\"email\":\"\",\"password\":\"x\"}", 400,
           "invalid_request");
    expect(&c, "POST", "/v1/auth/login", NULL, "{}", 400, "invalid_request");
    json_decref(j);
    free(tok);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_login_rate_limit(void **state)
{
    (void)state;
    cph_t c;
    const char *extra[] = {"--login-failures-email=3", "--login-failures-addr=6", NULL};
    assert_int_equal(cph_start(&c, extra), 0);
    json_decref(cph_signup(&c, "dave@example.com", NULL, NULL));
    json_decref(cph_signup(&c, "erin@example.com", NULL, NULL));
    for (int i = 0; i < 3; i++)
        expect(&c, "POST", "/v1/auth/login", NULL,
               "{\"email\":\"dave@example.com\",\"password\":\"wrongpass\"}", 401, "unauthorized");
    /* Per email: even the right password is refused now. */
    expect(&c, "POST", "/v1/auth/login", NULL,
           "{\"email\":\"dave@example.com\",\"password\":\"password123\"}", 429, "rate_limited");
    /* Another email still works from this address (3 failures < 6). */
    char *tok = cph_login(&c, "erin@example.com", "password123");
    assert_non_null(tok);
    free(tok);
    /* Per address: three more failures on other emails exhaust the address. */
    for (int i = 0; i < 3; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"email\":\"x%d@example.com\",\"password\":\"wrongpass\"}",
                 i);
        expect(&c, "POST", "/v1/auth/login", NULL, body, 401, "unauthorized");
    }
    expect(&c, "POST", "/v1/auth/login", NULL,
           "{\"email\":\"erin@example.com\",\"password\":\"password123\"}", 429, "rate_limited");
    assert_int_equal(cph_stop(&c), 0);
}

static char *sign(int64_t exp_delta, const char *sub, const char *team)
{
    jwt_claims_t cl = {0};
    snprintf(cl.sub, sizeof cl.sub, "%s", sub);
    snprintf(cl.team_id, sizeof cl.team_id, "%s", team);
    cl.iat = (int64_t)time(NULL);
    cl.exp = cl.iat + exp_delta;
    return jwt_sign((const unsigned char *)SECRET, strlen(SECRET), &cl);
}

static void test_jwt(void **state)
{
    (void)state;
    cph_t c;
    const char *extra[] = {"--jwt-secret=" SECRET, NULL};
    assert_int_equal(cph_start(&c, extra), 0);
    json_t *u = cph_signup(&c, "frank@example.com", NULL, NULL);
    const char *uid = js(u, "user_id"), *tid = js(u, "team_id");

    char *good = sign(600, uid, tid);
    expect(&c, "GET", "/v1/api-keys", good, NULL, 200, NULL);
    char *old = sign(-10, uid, tid);
    expect(&c, "GET", "/v1/api-keys", old, NULL, 401, "unauthorized");
    /* Tampered signature. */
    char *bad = xstrdup(good);
    char *last = bad + strlen(bad) - 2;
    *last = *last == 'A' ? 'B' : 'A';
    expect(&c, "GET", "/v1/api-keys", bad, NULL, 401, "unauthorized");
    /* alg "none" with the same claims and no signature. */
    char *dot = strchr(good, '.');
    char *dot2 = strchr(dot + 1, '.');
    char *none = xasprintf("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0%.*s.", (int)(dot2 - dot), dot);
    expect(&c, "GET", "/v1/api-keys", none, NULL, 401, "unauthorized");
    /* A valid token for a team the user is not in (forged by someone with the secret would
     * pass the signature; membership still fails). */
    char *other = sign(600, uid, "team_00000000000000000000000000000000");
    expect(&c, "GET", "/v1/api-keys", other, NULL, 401, "unauthorized");
    /* Missing and malformed headers. */
    expect(&c, "GET", "/v1/api-keys", NULL, NULL, 401, "unauthorized");
    json_t *j = NULL;
    assert_int_equal(cph_req_raw(&c, "GET", "/v1/api-keys", NULL, NULL, 0,
                                 "Authorization: Basic Zm9vOmJhcg==", &j),
                     401);
    json_decref(j);
    expect(&c, "GET", "/v1/api-keys", "not.a.jwt", NULL, 401, "unauthorized");
    free(good);
    free(old);
    free(bad);
    free(none);
    free(other);
    json_decref(u);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_switch_team(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char *tok = NULL, *tok_b = NULL;
    json_t *a = cph_signup(&c, "gina@example.com", NULL, &tok);
    json_t *b = cph_signup(&c, "hank@example.com", NULL, &tok_b);
    json_t *team = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/teams", tok, NULL, "{\"name\":\"Second\"}", &team),
                     201);
    char body[256];
    snprintf(body, sizeof body, "{\"team_id\":\"%s\"}", js(team, "id"));
    json_t *sw = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/auth/switch-team", tok, NULL, body, &sw), 200);
    assert_string_equal(js(sw, "team_id"), js(team, "id"));
    /* The new token acts in the new team. */
    json_t *keys = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", js(sw, "token"), NULL, "{}", &keys), 201);
    assert_string_equal(js(keys, "team_id"), js(team, "id"));
    assert_string_equal(js(keys, "name"), "Unnamed API Key");
    json_decref(keys);
    /* Not a member → 403; unknown → 404; missing → 400; malformed → 400. */
    expect(&c, "POST", "/v1/auth/switch-team", tok_b, body, 403, "forbidden");
    expect(&c, "POST", "/v1/auth/switch-team", tok,
           "{\"team_id\":\"team_0123456789abcdef0123456789abcdef\"}", 404, "not_found");
    expect(&c, "POST", "/v1/auth/switch-team", tok, "{}", 400, "invalid_request");
    expect(&c, "POST", "/v1/auth/switch-team", tok, "{\"team_id\":\"x' OR 1=1 --\"}", 400,
           "invalid_request");
    expect(&c, "POST", "/v1/auth/switch-team", NULL, body, 401, "unauthorized");
    /* Login lands in the default (signup) team. */
    char *again = cph_login(&c, "gina@example.com", "password123");
    json_t *teams = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/teams", again, NULL, NULL, &teams), 200);
    assert_int_equal(json_array_size(teams), 2);
    json_decref(teams);
    free(again);
    json_decref(sw);
    json_decref(team);
    json_decref(a);
    json_decref(b);
    free(tok);
    free(tok_b);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_api_keys(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char *tok = NULL, *tok2 = NULL;
    json_t *u = cph_signup(&c, "ivy@example.com", NULL, &tok);
    json_t *u2 = cph_signup(&c, "jack@example.com", NULL, &tok2);
    json_t *k1 = NULL, *k2 = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", tok, NULL, "{\"name\":\"ci\"}", &k1), 201);
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", tok, NULL, "{\"name\":\"dev\"}", &k2),
                     201);
    /* The default prefix is what the official e2b SDKs accept: e2b_ + 40 lowercase hex. */
    assert_true(matches("^e2b_[0-9a-f]{40}$", js(k1, "key")));
    assert_true(matches("^key_[0-9a-f]{32}$", js(k1, "id")));
    assert_int_equal(strncmp(js(k1, "key"), js(k1, "key_prefix"), strlen(js(k1, "key_prefix"))), 0);
    assert_string_equal(js(k1, "created_by"), js(u, "user_id"));

    json_t *list = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/api-keys", tok, NULL, NULL, &list), 200);
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(js(json_array_get(list, 0), "name"), "dev"); /* newest first */
    assert_null(json_object_get(json_array_get(list, 0), "key"));    /* never shown again */
    assert_null(json_object_get(json_array_get(list, 0), "last_used"));
    assert_string_equal(js(json_array_get(list, 0), "creator_email"), "ivy@example.com");
    json_decref(list);

    /* The key authenticates sandbox routes, and its use is recorded. */
    json_t *sbx = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k1, "key"), NULL, &sbx), 200);
    assert_true(json_is_array(sbx));
    assert_int_equal(json_array_size(sbx), 0);
    json_decref(sbx);
    assert_int_equal(cph_req(&c, "GET", "/v1/api-keys", tok, NULL, NULL, &list), 200);
    assert_non_null(js(json_array_get(list, 1), "last_used"));
    assert_null(js(json_array_get(list, 0), "last_used"));
    json_decref(list);

    /* Keys do not open JWT-only routes; wrong keys fail; a key wins over a bearer. */
    expect(&c, "GET", "/v1/api-keys", "e2b_0000000000000000000000000000000000000000", NULL, 401,
           "unauthorized");
    json_t *j = NULL;
    char hdr[200];
    snprintf(hdr, sizeof hdr, "X-API-Key: e2b_%040d", 7);
    assert_int_equal(cph_req_raw(&c, "GET", "/v1/sandboxes", tok, NULL, 0, hdr, &j), 401);
    json_decref(j);
    expect(&c, "GET", "/v1/sandboxes", NULL, NULL, 401, "unauthorized");
    expect(&c, "GET", "/v1/sandboxes", tok, NULL, 200, NULL); /* JWT works too */

    /* Revoke: another team cannot; unknown is 404; malformed 400; then the key is dead. */
    char path[128];
    snprintf(path, sizeof path, "/v1/api-keys/%s", js(k1, "id"));
    expect(&c, "DELETE", path, tok2, NULL, 404, "not_found");
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k1, "key"), NULL, NULL), 200);
    expect(&c, "DELETE", path, tok, NULL, 204, NULL);
    expect(&c, "DELETE", path, tok, NULL, 404, "not_found");
    expect(&c, "DELETE", "/v1/api-keys/nope", tok, NULL, 400, "invalid_request");
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k1, "key"), NULL, &j), 401);
    assert_string_equal(cph_err_code(j), "unauthorized");
    json_decref(j);
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k2, "key"), NULL, NULL), 200);
    expect(&c, "POST", "/v1/api-keys", tok, "{\"name\":7}", 400, "invalid_request");
    json_decref(k1);
    json_decref(k2);
    json_decref(u);
    json_decref(u2);
    free(tok);
    free(tok2);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_key_prefix_config(void **state)
{
    (void)state;
    cph_t c;
    const char *extra[] = {"--api-key-prefix=wrn_", NULL};
    assert_int_equal(cph_start(&c, extra), 0);
    char *tok = NULL;
    json_decref(cph_signup(&c, "kim@example.com", NULL, &tok));
    json_t *k = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", tok, NULL, "{}", &k), 201);
    assert_true(matches("^wrn_[0-9a-f]{40}$", js(k, "key")));
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k, "key"), NULL, NULL), 200);
    json_decref(k);
    free(tok);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_sandbox_list_from_store(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char *tok = NULL, *tok2 = NULL;
    json_t *u = cph_signup(&c, "lea@example.com", NULL, &tok);
    json_t *u2 = cph_signup(&c, "max@example.com", NULL, &tok2);
    const char *ins = "INSERT INTO sandboxes (id, team_id, status, created_at, last_updated) "
                      "VALUES (?, ?, ?, ?, ?)";
    const char *rows[][3] = {{"sb_1", "running", "2026-01-01T00:00:01.000000Z"},
                             {"sb_2", "paused", "2026-01-01T00:00:02.000000Z"},
                             {"sb_3", "stopped", "2026-01-01T00:00:03.000000Z"}};
    for (int i = 0; i < 3; i++) {
        const char *p[] = {rows[i][0], js(u, "team_id"), rows[i][1], rows[i][2], rows[i][2]};
        assert_int_equal(cph_sql(&c, ins, 5, p), 1);
    }
    json_t *l = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 2);
    assert_string_equal(js(json_array_get(l, 0), "id"), "sb_2");
    assert_string_equal(js(json_array_get(l, 0), "created_at"), "2026-01-01T00:00:02.000000Z");
    json_decref(l);
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", tok2, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    expect(&c, "GET", "/v1/sandboxes/sb_1", tok, NULL, 200, NULL);
    expect(&c, "GET", "/v1/sandboxes/sb_1", tok2, NULL, 404, "not_found");
    json_decref(u);
    json_decref(u2);
    free(tok);
    free(tok2);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_migrate_and_secret(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    if (!cph_is_pg()) {
        char path[400];
        snprintf(path, sizeof path, "%s/data/jwt_secret", c.dir);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        assert_true(st.st_size >= 32);
    }
    char *tok = NULL;
    json_decref(cph_signup(&c, "ned@example.com", NULL, &tok));
    assert_int_equal(cph_halt(&c), 0);
    char *out = NULL;
    const char *status[] = {"migrate", "status", NULL};
    assert_int_equal(cph_run(&c, status, &out), 0);
    assert_non_null(strstr(out, "0001 init"));
    assert_null(strstr(out, "pending"));
    free(out);
    const char *down[] = {"migrate", "down", NULL};
    assert_int_equal(cph_run(&c, down, NULL), 0);
    assert_int_equal(cph_run(&c, status, &out), 0);
    assert_non_null(strstr(out, "pending"));
    free(out);
    const char *up[] = {"migrate", "up", NULL};
    assert_int_equal(cph_run(&c, up, NULL), 0);
    assert_int_equal(cph_run(&c, status, &out), 0);
    assert_null(strstr(out, "pending"));
    free(out);
    const char *bad[] = {"migrate", "sideways", NULL};
    assert_int_equal(cph_run(&c, bad, NULL), 2);
    /* migrate down dropped every table, so the old user and its token are gone. */
    assert_int_equal(cph_restart(&c, NULL), 0);
    json_t *j = NULL;
    long st = cph_req(&c, "GET", "/v1/teams", tok, NULL, NULL, &j);
    json_decref(j);
    assert_int_equal(st, 401);
    free(tok);
    json_decref(cph_signup(&c, "ned@example.com", NULL, &tok));
    /* A restart keeps tokens valid: the secret saved in the data dir is reused. */
    assert_int_equal(cph_halt(&c), 0);
    assert_int_equal(cph_restart(&c, NULL), 0);
    assert_int_equal(cph_req(&c, "GET", "/v1/teams", tok, NULL, NULL, NULL), 200);
    free(tok);
    assert_int_equal(cph_stop(&c), 0);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signup),
        cmocka_unit_test(test_login),
        cmocka_unit_test(test_login_rate_limit),
        cmocka_unit_test(test_jwt),
        cmocka_unit_test(test_switch_team),
        cmocka_unit_test(test_api_keys),
        cmocka_unit_test(test_key_prefix_config),
        cmocka_unit_test(test_sandbox_list_from_store),
        cmocka_unit_test(test_migrate_and_secret),
    };
    return cmocka_run_group_tests_name(cph_is_pg() ? "cp_auth_postgres" : "cp_auth_sqlite", tests,
                                       cph_suite_setup, cph_suite_teardown);
}
