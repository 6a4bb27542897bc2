/* The audit log: entries written for each action of data-model.md §3, and GET /v1/audit-logs
 * with a (created_at, id) cursor so entries sharing a timestamp are never skipped or repeated. */
#include "api/api.h"
#include "cp_util.h"
#include "log.h"
#include "pjson.h"

#include <stdlib.h>
#include <string.h>

void cp_audit(cp_req_t *r, const char *resource_type, const char *resource_id, const char *action,
              const char *scope, const char *status, json_t *meta)
{
    const cp_actor_t *w = &r->who;
    store_audit_row_t row = {
        .team_id = w->team_id,
        .actor_type = w->kind == CP_ACTOR_KEY    ? "api_key"
                      : w->kind == CP_ACTOR_USER ? "user"
                                                 : "system",
        .actor_id = w->kind == CP_ACTOR_KEY    ? w->key_id
                    : w->kind == CP_ACTOR_USER ? w->user_id
                                               : NULL,
        .actor_name = w->kind == CP_ACTOR_KEY ? w->key_name : w->name,
        .resource_type = resource_type,
        .resource_id = resource_id,
        .action = action,
        .scope = scope,
        .status = status,
    };
    buf_t b;
    buf_init(&b);
    if (meta)
        pjson_dump(meta, &b);
    row.metadata = meta ? b.data : "{}";
    err_t e = {0};
    db_conn_t *db = NULL;
    /* Fire-and-forget: the action already happened; a lost entry is logged, not returned. */
    if (cp_db(r, &db, &e) < 0 || store_audit_insert(db, &row, &e) < 0)
        log_error("cp.audit_failed", "team=%s resource=%s action=%s err=\"%s\"", w->team_id,
                  resource_type, action, e.msg);
    buf_fini(&b);
}

static bool word_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || *s == '_'))
            return false;
    return true;
}

#define FAILF(rc_, ...)                                                                            \
    do {                                                                                           \
        cp_failf(r, (rc_), __VA_ARGS__);                                                           \
        return;                                                                                    \
    } while (0)

void cp_h_audit_list(cp_req_t *r)
{
    err_t e = {0};
    store_audit_query_t q = {.team_id = r->who.team_id, .limit = 50};
    q.admin_scope = !strcmp(r->who.role, "owner") || !strcmp(r->who.role, "admin");
    const char *lim = http_req_query(r->h, "limit");
    if (lim) {
        size_t n = strlen(lim);
        bool digits = n > 0 && n <= 9 && strspn(lim, "0123456789") == n;
        long v = digits ? strtol(lim, NULL, 10) : 0;
        if (v < 1)
            FAILF(-EINVAL, "limit must be a positive integer");
        q.limit = v > 200 ? 200 : (int)v;
    }
    char before[CP_TIME_LEN];
    const char *b = http_req_query(r->h, "before");
    if (b) {
        if (!cp_time_norm(b, before))
            FAILF(-EINVAL, "before must be an RFC3339 timestamp");
        q.before = before;
    }
    const char *bid = http_req_query(r->h, "before_id");
    if (bid) {
        if (!cp_id_valid("log_", bid))
            FAILF(-EINVAL, "invalid before_id");
        if (!q.before)
            FAILF(-EINVAL, "before_id requires before");
        q.before_id = bid;
    }
    const char **rt = NULL, **ac = NULL;
    int rc;
    if ((rc = cp_query_list(r, "resource_type", &rt, &q.nrtypes, &e)) < 0 ||
        (rc = cp_query_list(r, "action", &ac, &q.nactions, &e)) < 0) {
        cp_fail(r, rc, &e);
        return;
    }
    for (int i = 0; i < q.nrtypes; i++)
        if (!word_ok(rt[i]))
            FAILF(-EINVAL, "invalid resource_type");
    for (int i = 0; i < q.nactions; i++)
        if (!word_ok(ac[i]))
            FAILF(-EINVAL, "invalid action");
    q.rtypes = rt;
    q.actions = ac;
    db_conn_t *db = NULL;
    json_t *items = NULL;
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = store_audit_list(db, &q, &items, &e)) < 0) {
        cp_fail(r, rc, &e);
        return;
    }
    json_t *o = json_object();
    size_t n = json_array_size(items);
    if (n) {
        json_t *last = json_array_get(items, n - 1);
        json_object_set(o, "next_before", json_object_get(last, "created_at"));
        json_object_set(o, "next_before_id", json_object_get(last, "id"));
    }
    json_object_set_new(o, "items", items);
    cp_json(r, 200, o);
}
