/* wrenn-cp: teams, members, roles, owner protection, immediate loss of access, user search,
 * and a cross-team matrix proving no route reads or changes another team's data. */
#include "cph.h"
#include "xalloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

typedef struct user {
    char *tok;
    char id[64];
    char team[64];
    char email[64];
} user_t;

static void mkuser(cph_t *c, user_t *u, const char *email)
{
    json_t *j = cph_signup(c, email, NULL, &u->tok);
    snprintf(u->id, sizeof u->id, "%s", js(j, "user_id"));
    snprintf(u->team, sizeof u->team, "%s", js(j, "team_id"));
    snprintf(u->email, sizeof u->email, "%s", email);
    json_decref(j);
}

/* Switch u's token to team. */
static void switch_to(cph_t *c, user_t *u, const char *team)
{
    char body[128];
    snprintf(body, sizeof body, "{\"team_id\":\"%s\"}", team);
    json_t *j = NULL;
    assert_int_equal(cph_req(c, "POST", "/v1/auth/switch-team", u->tok, NULL, body, &j), 200);
    free(u->tok);
    u->tok = xstrdup(js(j, "token"));
    json_decref(j);
}

static void add_member(cph_t *c, user_t *by, const char *team, user_t *who, long want)
{
    char path[128], body[128];
    snprintf(path, sizeof path, "/v1/teams/%s/members", team);
    snprintf(body, sizeof body, "{\"email\":\"%s\"}", who->email);
    expect(c, "POST", path, by->tok, body, want, NULL);
}

static void set_role(cph_t *c, user_t *by, const char *team, const char *uid, const char *role,
                     long want, const char *code)
{
    char path[160], body[64];
    snprintf(path, sizeof path, "/v1/teams/%s/members/%s", team, uid);
    snprintf(body, sizeof body, "{\"role\":\"%s\"}", role);
    expect(c, "PATCH", path, by->tok, body, want, code);
}

static void test_team_crud(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    user_t a;
    mkuser(&c, &a, "owner@example.com");
    json_t *t = NULL;
    assert_int_equal(
        cph_req(&c, "POST", "/v1/teams", a.tok, NULL, "{\"name\":\" Research-1 \"}", &t), 201);
    assert_string_equal(js(t, "name"), "Research-1");
    assert_string_equal(js(t, "role"), "owner");
    char team[64];
    snprintf(team, sizeof team, "%s", js(t, "id"));
    json_decref(t);
    expect(&c, "POST", "/v1/teams", a.tok, "{\"name\":\"bad/name\"}", 400, "invalid_request");
    expect(&c, "POST", "/v1/teams", a.tok, "{\"name\":\"   \"}", 400, "invalid_request");
    expect(&c, "POST", "/v1/teams", a.tok, "{}", 400, "invalid_request");
    json_t *l = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/teams", a.tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 2);
    json_decref(l);

    /* Team-scoped routes need the JWT to be in that team. */
    char path[128];
    snprintf(path, sizeof path, "/v1/teams/%s", team);
    expect(&c, "GET", path, a.tok, NULL, 403, "forbidden");
    expect(&c, "GET", "/v1/teams/garbage", a.tok, NULL, 400, "invalid_request");
    switch_to(&c, &a, team);
    json_t *g = NULL;
    assert_int_equal(cph_req(&c, "GET", path, a.tok, NULL, NULL, &g), 200);
    assert_string_equal(js(json_object_get(g, "team"), "id"), team);
    assert_int_equal(json_array_size(json_object_get(g, "members")), 1);
    assert_string_equal(js(json_array_get(json_object_get(g, "members"), 0), "role"), "owner");
    json_decref(g);
    expect(&c, "PATCH", path, a.tok, "{\"name\":\"Renamed\"}", 204, NULL);
    expect(&c, "PATCH", path, a.tok, "{\"name\":\"x;DROP TABLE teams\"}", 400, "invalid_request");
    assert_int_equal(cph_req(&c, "GET", path, a.tok, NULL, NULL, &g), 200);
    assert_string_equal(js(json_object_get(g, "team"), "name"), "Renamed");
    json_decref(g);

    /* Soft delete: sandboxes stop, the token for that team dies, login falls back. */
    const char *p[] = {"sb_x", team, "2026-01-01T00:00:00.000000Z"};
    assert_int_equal(
        cph_sql(&c,
                "INSERT INTO sandboxes (id, team_id, status, created_at, last_updated) "
                "VALUES (?, ?, 'running', ?, ?)",
                4, (const char *[]){p[0], p[1], p[2], p[2]}),
        1);
    expect(&c, "DELETE", path, a.tok, NULL, 204, NULL);
    char *st = cph_sql1(&c, "SELECT status FROM sandboxes WHERE id = 'sb_x'", 0, NULL);
    assert_string_equal(st, "stopped");
    free(st);
    char *del =
        cph_sql1(&c, "SELECT deleted_at FROM teams WHERE id = ?", 1, (const char *[]){team});
    assert_non_null(del);
    free(del);
    expect(&c, "GET", path, a.tok, NULL, 401, "unauthorized");
    expect(&c, "GET", "/v1/api-keys", a.tok, NULL, 401, "unauthorized");
    char *tok = cph_login(&c, "owner@example.com", "password123");
    assert_non_null(tok);
    assert_int_equal(cph_req(&c, "GET", "/v1/teams", tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 1);
    assert_string_equal(js(json_array_get(l, 0), "id"), a.team);
    json_decref(l);
    /* Switching to the deleted team is 404. */
    char body[128];
    snprintf(body, sizeof body, "{\"team_id\":\"%s\"}", team);
    expect(&c, "POST", "/v1/auth/switch-team", tok, body, 404, "not_found");
    /* Deleting the last team leaves nothing to log in to. */
    free(a.tok);
    a.tok = tok;
    snprintf(path, sizeof path, "/v1/teams/%s", a.team);
    expect(&c, "DELETE", path, a.tok, NULL, 204, NULL);
    expect(&c, "POST", "/v1/auth/login", NULL,
           "{\"email\":\"owner@example.com\",\"password\":\"password123\"}", 403, "no_team");
    free(a.tok);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_members_and_roles(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    user_t o, ad, m, x;
    mkuser(&c, &o, "o@example.com");
    mkuser(&c, &ad, "ad@example.com");
    mkuser(&c, &m, "m@example.com");
    mkuser(&c, &x, "x@example.com");
    const char *T = o.team;
    char path[160];
    snprintf(path, sizeof path, "/v1/teams/%s/members", T);
    add_member(&c, &o, T, &ad, 201);
    add_member(&c, &o, T, &m, 201);
    add_member(&c, &o, T, &m, 400); /* already a member */
    expect(&c, "POST", path, o.tok, "{\"email\":\"ghost@example.com\"}", 404, "not_found");
    expect(&c, "POST", path, o.tok, "{}", 400, "invalid_request");
    switch_to(&c, &ad, T);
    switch_to(&c, &m, T);
    json_t *l = NULL;
    assert_int_equal(cph_req(&c, "GET", path, m.tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 3);
    assert_string_equal(js(json_array_get(l, 1), "role"), "member");
    assert_string_equal(js(json_array_get(l, 1), "email"), "ad@example.com");
    json_decref(l);

    /* Members cannot manage. */
    add_member(&c, &m, T, &x, 403);
    set_role(&c, &m, T, ad.id, "member", 403, "forbidden");
    char tpath[128];
    snprintf(tpath, sizeof tpath, "/v1/teams/%s", T);
    expect(&c, "PATCH", tpath, m.tok, "{\"name\":\"Mine\"}", 403, "forbidden");
    expect(&c, "DELETE", tpath, m.tok, NULL, 403, "forbidden");

    /* Promote; the new admin's existing token gains the role at once (read from the DB). */
    set_role(&c, &o, T, ad.id, "admin", 204, NULL);
    set_role(&c, &o, T, ad.id, "owner", 400, "invalid_request"); /* no transfer */
    set_role(&c, &o, T, ad.id, "root", 400, "invalid_request");
    add_member(&c, &ad, T, &x, 201);
    expect(&c, "PATCH", tpath, ad.tok, "{\"name\":\"Admin Named\"}", 204, NULL);
    expect(&c, "DELETE", tpath, ad.tok, NULL, 403, "forbidden"); /* owner only */

    /* Owner protection: cannot be re-roled, removed, or leave. */
    set_role(&c, &ad, T, o.id, "member", 403, "forbidden");
    char mpath[200];
    snprintf(mpath, sizeof mpath, "/v1/teams/%s/members/%s", T, o.id);
    expect(&c, "DELETE", mpath, ad.tok, NULL, 403, "forbidden");
    char leave[160];
    snprintf(leave, sizeof leave, "/v1/teams/%s/leave", T);
    expect(&c, "POST", leave, o.tok, NULL, 403, "forbidden");
    char *owners =
        cph_sql1(&c, "SELECT COUNT(*) FROM users_teams WHERE team_id = ? AND role = 'owner'", 1,
                 (const char *[]){T});
    assert_string_equal(owners, "1");
    free(owners);
    /* Unknown targets. */
    set_role(&c, &o, T, "usr_00000000000000000000000000000000", "admin", 404, "not_found");
    snprintf(mpath, sizeof mpath, "/v1/teams/%s/members/%s", T,
             "usr_00000000000000000000000000000000");
    expect(&c, "DELETE", mpath, o.tok, NULL, 404, "not_found");

    /* Removal cuts access at once: JWT and the API key the member made. */
    json_t *k = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", m.tok, NULL, "{\"name\":\"m\"}", &k), 201);
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k, "key"), NULL, NULL), 200);
    snprintf(mpath, sizeof mpath, "/v1/teams/%s/members/%s", T, m.id);
    expect(&c, "DELETE", mpath, ad.tok, NULL, 204, NULL);
    expect(&c, "GET", "/v1/api-keys", m.tok, NULL, 401, "unauthorized");
    expect(&c, "GET", path, m.tok, NULL, 401, "unauthorized");
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(k, "key"), NULL, NULL), 401);
    json_decref(k);
    expect(&c, "DELETE", mpath, ad.tok, NULL, 404, "not_found");

    /* Admins may demote themselves; then they are members. */
    set_role(&c, &ad, T, ad.id, "member", 204, NULL);
    add_member(&c, &ad, T, &m, 403);
    /* Leave. */
    expect(&c, "POST", leave, ad.tok, NULL, 204, NULL);
    expect(&c, "GET", "/v1/api-keys", ad.tok, NULL, 401, "unauthorized");
    assert_int_equal(cph_req(&c, "GET", path, o.tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 2); /* owner + x */
    json_decref(l);
    free(o.tok);
    free(ad.tok);
    free(m.tok);
    free(x.tok);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_user_search(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    user_t a, b, d;
    mkuser(&c, &a, "sam@alpha.io");
    mkuser(&c, &b, "sam_x@alpha.io");
    mkuser(&c, &d, "samxx@beta.io");
    json_t *l = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/users/search?email=SAM@al", a.tok, NULL, NULL, &l),
                     200);
    assert_int_equal(json_array_size(l), 1);
    assert_string_equal(js(json_array_get(l, 0), "email"), "sam@alpha.io");
    json_decref(l);
    /* '_' and '%' are literal, not wildcards. */
    assert_int_equal(cph_req(&c, "GET", "/v1/users/search?email=sam_x%40", a.tok, NULL, NULL, &l),
                     200);
    assert_int_equal(json_array_size(l), 1);
    json_decref(l);
    assert_int_equal(cph_req(&c, "GET", "/v1/users/search?email=%25%40%25", a.tok, NULL, NULL, &l),
                     200);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    assert_int_equal(
        cph_req(&c, "GET", "/v1/users/search?email=%27%40%27%20OR%201%3D1", a.tok, NULL, NULL, &l),
        200);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    expect(&c, "GET", "/v1/users/search?email=sa", a.tok, NULL, 400, "invalid_request");
    expect(&c, "GET", "/v1/users/search?email=samxx", a.tok, NULL, 400, "invalid_request");
    expect(&c, "GET", "/v1/users/search", a.tok, NULL, 400, "invalid_request");
    expect(&c, "GET", "/v1/users/search?email=sam@", NULL, NULL, 401, "unauthorized");
    free(a.tok);
    free(b.tok);
    free(d.tok);
    assert_int_equal(cph_stop(&c), 0);
}

static void test_cross_team_matrix(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    user_t a, a2, b;
    mkuser(&c, &a, "a@example.com");
    mkuser(&c, &a2, "a2@example.com");
    mkuser(&c, &b, "b@example.com");
    add_member(&c, &a, a.team, &a2, 201);
    json_t *ka = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", a.tok, NULL, "{\"name\":\"a\"}", &ka),
                     201);
    json_t *kb = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", b.tok, NULL, "{\"name\":\"b\"}", &kb),
                     201);
    const char *ins = "INSERT INTO sandboxes (id, team_id, status, created_at, last_updated) "
                      "VALUES ('sb_a', ?, 'running', '2026-01-01T00:00:00.000000Z', "
                      "'2026-01-01T00:00:00.000000Z')";
    assert_int_equal(cph_sql(&c, ins, 1, (const char *[]){a.team}), 1);

    const char *count_sql =
        "SELECT (SELECT name FROM teams WHERE id = ?) || '|' || "
        "(SELECT COUNT(*) FROM users_teams WHERE team_id = ?) || '|' || "
        "(SELECT COUNT(*) FROM team_api_keys WHERE team_id = ?) || '|' || "
        "(SELECT COUNT(*) FROM teams WHERE id = ? AND deleted_at IS NULL) || '|' || "
        "(SELECT MIN(role) FROM users_teams WHERE team_id = ? AND user_id = ?)";
    const char *cp[] = {a.team, a.team, a.team, a.team, a.team, a2.id};
    char *before = cph_sql1(&c, count_sql, 6, cp);
    assert_non_null(before);

    /* Every team-scoped route with B's token against A's team. */
    struct {
        const char *method, *fmt, *body;
    } routes[] = {
        {"GET", "/v1/teams/%s", NULL},
        {"PATCH", "/v1/teams/%s", "{\"name\":\"pwned\"}"},
        {"DELETE", "/v1/teams/%s", NULL},
        {"GET", "/v1/teams/%s/members", NULL},
        {"POST", "/v1/teams/%s/members", "{\"email\":\"b@example.com\"}"},
        {"PATCH", "/v1/teams/%s/members/A2", "{\"role\":\"admin\"}"},
        {"DELETE", "/v1/teams/%s/members/A2", NULL},
        {"POST", "/v1/teams/%s/leave", NULL},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        char path[256], tmp[256];
        snprintf(tmp, sizeof tmp, routes[i].fmt, a.team);
        char *p = strstr(tmp, "A2");
        if (p)
            snprintf(path, sizeof path, "%.*s%s", (int)(p - tmp), tmp, a2.id);
        else
            snprintf(path, sizeof path, "%s", tmp);
        expect(&c, routes[i].method, path, b.tok, routes[i].body, 403, "forbidden");
    }
    /* Switching into A's team is refused. */
    char body[128];
    snprintf(body, sizeof body, "{\"team_id\":\"%s\"}", a.team);
    expect(&c, "POST", "/v1/auth/switch-team", b.tok, body, 403, "forbidden");
    /* Keys: B sees only B's, cannot revoke A's; sandboxes: B cannot see A's by JWT or key. */
    json_t *l = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/api-keys", b.tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 1);
    assert_string_equal(js(json_array_get(l, 0), "id"), js(kb, "id"));
    json_decref(l);
    char kp[128];
    snprintf(kp, sizeof kp, "/v1/api-keys/%s", js(ka, "id"));
    expect(&c, "DELETE", kp, b.tok, NULL, 404, "not_found");
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", NULL, js(kb, "key"), NULL, &l), 200);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes", b.tok, NULL, NULL, &l), 200);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    expect(&c, "GET", "/v1/sandboxes/sb_a", b.tok, NULL, 404, "not_found");
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes/sb_a", NULL, js(kb, "key"), NULL, NULL),
                     404);
    assert_int_equal(cph_req(&c, "GET", "/v1/sandboxes/sb_a", NULL, js(ka, "key"), NULL, NULL),
                     200);
    /* Audit: B's log has nothing of A's. */
    assert_int_equal(cph_req(&c, "GET", "/v1/audit-logs", b.tok, NULL, NULL, &l), 200);
    json_t *items = json_object_get(l, "items");
    for (size_t i = 0; i < json_array_size(items); i++)
        assert_string_not_equal(js(json_array_get(items, i), "resource_id"), js(ka, "id"));
    json_decref(l);

    char *after = cph_sql1(&c, count_sql, 6, cp);
    assert_string_equal(before, after);
    free(before);
    free(after);
    json_decref(ka);
    json_decref(kb);
    free(a.tok);
    free(a2.tok);
    free(b.tok);
    assert_int_equal(cph_stop(&c), 0);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_team_crud),
        cmocka_unit_test(test_members_and_roles),
        cmocka_unit_test(test_user_search),
        cmocka_unit_test(test_cross_team_matrix),
    };
    return cmocka_run_group_tests_name(cph_is_pg() ? "cp_teams_postgres" : "cp_teams_sqlite", tests,
                                       cph_suite_setup, cph_suite_teardown);
}
