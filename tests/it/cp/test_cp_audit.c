/* wrenn-cp: audit entries for every action, scope visibility by role, filters, and cursor
 * paging over 1,000 entries sharing one timestamp (none skipped, none repeated). */
#include "cph.h"
#include "xalloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void expect(cph_t *c, const char *path, const char *tok, long status, const char *code)
{
    json_t *j = NULL;
    long st = cph_req(c, "GET", path, tok, NULL, NULL, &j);
    if (st != status)
        fprintf(stderr, "# GET %s → %ld %s (want %ld)\n", path, st, cph_err_code(j), status);
    assert_int_equal(st, status);
    if (code)
        assert_string_equal(cph_err_code(j), code);
    json_decref(j);
}

static json_t *items(cph_t *c, const char *path, const char *tok)
{
    json_t *j = NULL;
    long st = cph_req(c, "GET", path, tok, NULL, NULL, &j);
    if (st != 200)
        fprintf(stderr, "# GET %s → %ld %s\n", path, st, cph_err_code(j));
    assert_int_equal(st, 200);
    json_t *it = json_incref(json_object_get(j, "items"));
    assert_true(json_is_array(it));
    json_decref(j);
    return it;
}

static json_t *find(json_t *arr, const char *rtype, const char *action)
{
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        if (!strcmp(js(e, "resource_type"), rtype) && !strcmp(js(e, "action"), action))
            return e;
    }
    return NULL;
}

static void test_actions_recorded(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char *to = NULL, *tm = NULL, *tx = NULL;
    json_t *o = cph_signup(&c, "own@example.com", "Olga", &to);
    json_t *m = cph_signup(&c, "mem@example.com", NULL, &tm);
    json_t *x = cph_signup(&c, "ex@example.com", NULL, &tx);
    const char *T = js(o, "team_id");
    char path[256], body[256];
    json_t *k = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/api-keys", to, NULL, "{\"name\":\"audit\"}", &k),
                     201);
    snprintf(path, sizeof path, "/v1/api-keys/%s", js(k, "id"));
    assert_int_equal(cph_req(&c, "DELETE", path, to, NULL, NULL, NULL), 204);
    snprintf(path, sizeof path, "/v1/teams/%s", T);
    assert_int_equal(cph_req(&c, "PATCH", path, to, NULL, "{\"name\":\"New Name\"}", NULL), 204);
    snprintf(path, sizeof path, "/v1/teams/%s/members", T);
    assert_int_equal(cph_req(&c, "POST", path, to, NULL, "{\"email\":\"mem@example.com\"}", NULL),
                     201);
    assert_int_equal(cph_req(&c, "POST", path, to, NULL, "{\"email\":\"ex@example.com\"}", NULL),
                     201);
    snprintf(path, sizeof path, "/v1/teams/%s/members/%s", T, js(m, "user_id"));
    assert_int_equal(cph_req(&c, "PATCH", path, to, NULL, "{\"role\":\"admin\"}", NULL), 204);
    snprintf(path, sizeof path, "/v1/teams/%s/members/%s", T, js(x, "user_id"));
    assert_int_equal(cph_req(&c, "DELETE", path, to, NULL, NULL, NULL), 204);
    /* A failed action writes nothing. */
    snprintf(path, sizeof path, "/v1/teams/%s/members", T);
    assert_int_equal(
        cph_req(&c, "POST", path, to, NULL, "{\"email\":\"nobody@example.com\"}", NULL), 404);
    /* m switches in and leaves. */
    snprintf(body, sizeof body, "{\"team_id\":\"%s\"}", T);
    json_t *sw = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/auth/switch-team", tm, NULL, body, &sw), 200);
    snprintf(path, sizeof path, "/v1/teams/%s/leave", T);
    assert_int_equal(cph_req(&c, "POST", path, js(sw, "token"), NULL, NULL, NULL), 204);

    json_t *all = items(&c, "/v1/audit-logs", to);
    assert_int_equal(json_array_size(all), 8);
    json_t *e = find(all, "api_key", "create");
    assert_non_null(e);
    assert_string_equal(js(e, "actor_type"), "user");
    assert_string_equal(js(e, "actor_id"), js(o, "user_id"));
    assert_string_equal(js(e, "actor_name"), "Olga");
    assert_string_equal(js(e, "resource_id"), js(k, "id"));
    assert_string_equal(js(e, "scope"), "team");
    assert_string_equal(js(e, "status"), "success");
    assert_string_equal(js(json_object_get(e, "metadata"), "name"), "audit");
    assert_true(strlen(js(e, "created_at")) == 27); /* microseconds, UTC */
    e = find(all, "api_key", "revoke");
    assert_string_equal(js(e, "status"), "warning");
    e = find(all, "team", "rename");
    assert_string_equal(js(json_object_get(e, "metadata"), "old_name"), "Olga's Team");
    assert_string_equal(js(json_object_get(e, "metadata"), "new_name"), "New Name");
    assert_string_equal(js(e, "status"), "info");
    e = find(all, "member", "add");
    assert_string_equal(js(e, "scope"), "admin");
    assert_string_equal(js(json_object_get(e, "metadata"), "role"), "member");
    e = find(all, "member", "role_update");
    assert_string_equal(js(e, "resource_id"), js(m, "user_id"));
    assert_string_equal(js(json_object_get(e, "metadata"), "new_role"), "admin");
    e = find(all, "member", "remove");
    assert_string_equal(js(e, "resource_id"), js(x, "user_id"));
    assert_string_equal(js(e, "status"), "warning");
    e = find(all, "member", "leave");
    assert_string_equal(js(e, "actor_id"), js(m, "user_id"));
    assert_string_equal(js(e, "resource_id"), js(m, "user_id"));
    /* Newest first. */
    assert_string_equal(js(json_array_get(all, 0), "action"), "leave");
    json_decref(all);

    /* Filters: comma-separated, repeated, AND-ed across parameters. */
    json_t *f = items(&c, "/v1/audit-logs?resource_type=member", to);
    assert_int_equal(json_array_size(f), 5);
    json_decref(f);
    f = items(&c, "/v1/audit-logs?resource_type=api_key,team", to);
    assert_int_equal(json_array_size(f), 3);
    json_decref(f);
    f = items(&c, "/v1/audit-logs?resource_type=api_key&resource_type=team", to);
    assert_int_equal(json_array_size(f), 3);
    json_decref(f);
    f = items(&c, "/v1/audit-logs?resource_type=member&action=add,remove", to);
    assert_int_equal(json_array_size(f), 3);
    json_decref(f);
    f = items(&c, "/v1/audit-logs?action=create", to);
    assert_int_equal(json_array_size(f), 1);
    json_decref(f);
    f = items(&c, "/v1/audit-logs?limit=2", to);
    assert_int_equal(json_array_size(f), 2);
    json_decref(f);
    f = items(&c, "/v1/audit-logs?limit=500", to); /* clamped, not refused */
    assert_int_equal(json_array_size(f), 8);
    json_decref(f);
    expect(&c, "/v1/audit-logs?limit=0", to, 400, "invalid_request");
    expect(&c, "/v1/audit-logs?limit=-1", to, 400, "invalid_request");
    expect(&c, "/v1/audit-logs?limit=abc", to, 400, "invalid_request");
    expect(&c, "/v1/audit-logs?limit=99999999999999999999999", to, 400, "invalid_request");
    expect(&c, "/v1/audit-logs?before=yesterday", to, 400, "invalid_request");
    expect(&c, "/v1/audit-logs?before_id=log_00000000000000000000000000000000", to, 400,
           "invalid_request");
    expect(&c, "/v1/audit-logs?before=2026-01-01T00:00:00Z&before_id=x%27--", to, 400,
           "invalid_request");
    expect(&c, "/v1/audit-logs?resource_type=x%27%20OR%20%271%27%3D%271", to, 400,
           "invalid_request");
    expect(&c, "/v1/audit-logs", NULL, 401, "unauthorized");

    /* Visibility: a plain member sees team scope only; x (removed) sees nothing of T. */
    char *tm2 = NULL;
    json_t *m2 = cph_signup(&c, "plain@example.com", NULL, &tm2);
    snprintf(path, sizeof path, "/v1/teams/%s/members", T);
    assert_int_equal(cph_req(&c, "POST", path, to, NULL, "{\"email\":\"plain@example.com\"}", NULL),
                     201);
    json_t *sw2 = NULL;
    assert_int_equal(cph_req(&c, "POST", "/v1/auth/switch-team", tm2, NULL, body, &sw2), 200);
    f = items(&c, "/v1/audit-logs", js(sw2, "token"));
    assert_int_equal(json_array_size(f), 3);
    for (size_t i = 0; i < json_array_size(f); i++)
        assert_string_equal(js(json_array_get(f, i), "scope"), "team");
    json_decref(f);
    f = items(&c, "/v1/audit-logs", tx);
    assert_int_equal(json_array_size(f), 0);
    json_decref(f);
    json_t *empty = NULL;
    assert_int_equal(cph_req(&c, "GET", "/v1/audit-logs", tx, NULL, NULL, &empty), 200);
    assert_null(json_object_get(empty, "next_before"));
    json_decref(empty);

    json_decref(sw);
    json_decref(sw2);
    json_decref(k);
    json_decref(o);
    json_decref(m);
    json_decref(m2);
    json_decref(x);
    free(to);
    free(tm);
    free(tm2);
    free(tx);
    assert_int_equal(cph_stop(&c), 0);
}

#define N_SAME 1000

/* Insert n entries stamped ts with ids log_<prefix><counter>, 100 per statement. */
static void insert_many(cph_t *c, const char *team, const char *ts, int n, unsigned prefix)
{
    for (int base = 0; base < n; base += 100) {
        int cnt = n - base < 100 ? n - base : 100;
        buf_t sql;
        buf_init(&sql);
        buf_adds(&sql, "INSERT INTO audit_logs (id, team_id, actor_type, resource_type, action, "
                       "scope, status, metadata, created_at) VALUES ");
        char **ids = xcalloc((size_t)cnt, sizeof *ids);
        const char **p = xcalloc((size_t)cnt * 3, sizeof *p);
        for (int i = 0; i < cnt; i++) {
            ids[i] = xasprintf("log_%08x%024x", prefix, base + i);
            buf_adds(&sql, i ? ", (?, ?, 'system', 'sandbox', 'pause', 'team', 'info', '{}', ?)"
                             : "(?, ?, 'system', 'sandbox', 'pause', 'team', 'info', '{}', ?)");
            p[3 * i] = ids[i];
            p[3 * i + 1] = team;
            p[3 * i + 2] = ts;
        }
        assert_int_equal(cph_sql(c, sql.data, cnt * 3, p), cnt);
        for (int i = 0; i < cnt; i++)
            free(ids[i]);
        free(ids);
        free(p);
        buf_fini(&sql);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void page_all(cph_t *c, const char *tok, int limit, int want)
{
    char **seen = xcalloc((size_t)want + 1, sizeof *seen);
    int n = 0, pages = 0;
    char cursor[256] = "";
    char prev_ts[64] = "", prev_id[64] = "";
    for (;;) {
        char path[512];
        snprintf(path, sizeof path, "/v1/audit-logs?limit=%d%s", limit, cursor);
        json_t *j = NULL;
        assert_int_equal(cph_req(c, "GET", path, tok, NULL, NULL, &j), 200);
        json_t *it = json_object_get(j, "items");
        size_t k = json_array_size(it);
        pages++;
        for (size_t i = 0; i < k; i++) {
            json_t *e = json_array_get(it, i);
            assert_true(n < want);
            const char *ts = js(e, "created_at"), *id = js(e, "id");
            /* Strictly descending by (created_at, id). */
            if (prev_ts[0]) {
                int cmp = strcmp(ts, prev_ts);
                assert_true(cmp < 0 || (cmp == 0 && strcmp(id, prev_id) < 0));
            }
            snprintf(prev_ts, sizeof prev_ts, "%s", ts);
            snprintf(prev_id, sizeof prev_id, "%s", id);
            seen[n++] = xstrdup(id);
        }
        if (k == 0) {
            json_decref(j);
            break;
        }
        /* The cursor fields are URL-safe as printed except '+'/':' which are fine in a query. */
        snprintf(cursor, sizeof cursor, "&before=%s&before_id=%s", js(j, "next_before"),
                 js(j, "next_before_id"));
        json_decref(j);
    }
    assert_int_equal(n, want);
    qsort(seen, (size_t)n, sizeof *seen, cmp_str);
    for (int i = 1; i < n; i++)
        assert_string_not_equal(seen[i - 1], seen[i]);
    for (int i = 0; i < n; i++)
        free(seen[i]);
    free(seen);
    assert_true(pages >= want / limit);
}

static void test_cursor_equal_timestamps(void **state)
{
    (void)state;
    cph_t c;
    assert_int_equal(cph_start(&c, NULL), 0);
    char *tok = NULL;
    json_t *u = cph_signup(&c, "pager@example.com", NULL, &tok);
    const char *T = js(u, "team_id");
    insert_many(&c, T, "2026-03-01T10:00:00.500000Z", N_SAME, 0xa);
    insert_many(&c, T, "2026-03-01T10:00:00.499999Z", 5, 0xb);
    insert_many(&c, T, "2026-03-01T10:00:01.000000Z", 5, 0xc);
    /* Another team's entries at the same instant never show. */
    json_t *u2 = cph_signup(&c, "other@example.com", NULL, NULL);
    insert_many(&c, js(u2, "team_id"), "2026-03-01T10:00:00.500000Z", 50, 0xd);
    int want = N_SAME + 10;
    page_all(&c, tok, 200, want);
    page_all(&c, tok, 7, want);
    page_all(&c, tok, 1000, want); /* clamped to 200 */
    json_decref(u);
    json_decref(u2);
    free(tok);
    assert_int_equal(cph_stop(&c), 0);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_actions_recorded),
        cmocka_unit_test(test_cursor_equal_timestamps),
    };
    return cmocka_run_group_tests_name(cph_is_pg() ? "cp_audit_postgres" : "cp_audit_sqlite", tests,
                                       cph_suite_setup, cph_suite_teardown);
}
