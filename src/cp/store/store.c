#include "store.h"
#include "buf.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COPY(dst, src) snprintf((dst), sizeof(dst), "%s", (src) ? (src) : "")

static bool truthy(const char *v)
{
    return v && (!strcmp(v, "1") || !strcmp(v, "t") || !strcmp(v, "true"));
}

/* Build a JSON object from one row. spec[i] describes column i: "name" string, "t:name" time,
 * "b:name" boolean, "i:name" integer, "j:name" JSON text; a leading '?' omits the member when
 * the value is NULL or empty. */
static json_t *row_obj(int ncol, const char *const *v, const char *const *spec)
{
    json_t *o = json_object();
    for (int i = 0; i < ncol && spec[i]; i++) {
        const char *s = spec[i];
        bool opt = *s == '?';
        if (opt)
            s++;
        char kind = 's';
        if (s[0] && s[1] == ':') {
            kind = s[0];
            s += 2;
        }
        if (opt && (!v[i] || !*v[i]))
            continue;
        json_t *val = NULL;
        char t[CP_TIME_LEN];
        switch (kind) {
        case 't':
            val = cp_time_norm(v[i], t) ? json_string(t) : json_null();
            break;
        case 'b':
            val = json_boolean(truthy(v[i]));
            break;
        case 'i':
            val = v[i] ? json_integer(strtoll(v[i], NULL, 10)) : json_null();
            break;
        case 'j':
            val = v[i] ? json_loads(v[i], 0, NULL) : NULL;
            if (!val)
                val = json_object();
            break;
        default:
            val = v[i] ? json_string(v[i]) : json_null();
            break;
        }
        json_object_set_new(o, s, val ? val : json_null());
    }
    return o;
}

struct list_ctx {
    json_t *arr;
    const char *const *spec;
};

static int list_row(void *ud, int ncol, const char *const *v)
{
    struct list_ctx *l = ud;
    json_array_append_new(l->arr, row_obj(ncol, v, l->spec));
    return 0;
}

static int query_list(db_conn_t *c, const char *sql, int n, const char *const *p,
                      const char *const *spec, json_t **out, err_t *e)
{
    struct list_ctx l = {json_array(), spec};
    int rc = db_exec(c, sql, n, p, list_row, &l, e);
    if (rc < 0) {
        json_decref(l.arr);
        return rc;
    }
    *out = l.arr;
    return 0;
}

static void now_str(char out[CP_TIME_LEN])
{
    cp_time_fmt(cp_now_us(), out);
}

/* ---- users ---- */

static const char SQL_USER_INSERT[] =
    "INSERT INTO users (id, email, password_hash, name, is_admin, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, FALSE, ?, ?)";
static const char SQL_TEAM_INSERT[] =
    "INSERT INTO teams (id, name, slug, is_byoc, created_at) VALUES (?, ?, ?, FALSE, ?)";
static const char SQL_MEMBER_INSERT[] =
    "INSERT INTO users_teams (user_id, team_id, is_default, role, created_at) "
    "VALUES (?, ?, ?, ?, ?)";
static const char SQL_SLUG_TAKEN[] = "SELECT 1 FROM teams WHERE slug = ?";

/* A fresh slug no team has used (slugs are never reused, deleted teams keep theirs). */
static int new_slug(db_conn_t *c, char slug[14], err_t *e)
{
    for (int i = 0; i < 8; i++) {
        cp_slug_new(slug);
        const char *p[] = {slug};
        int rc = db_exec(c, SQL_SLUG_TAKEN, 1, p, NULL, NULL, e);
        if (rc <= 0)
            return rc;
    }
    return err_set(e, -EIO, "no free team slug");
}

/* Insert a team and its first membership inside the caller's transaction. */
static int team_insert(db_conn_t *c, const char *user_id, const char *name, bool is_default,
                       const char *role, char team_id[STORE_ID_MAX], char slug[14], const char *now,
                       err_t *e)
{
    cp_id_new("team_", team_id, STORE_ID_MAX);
    int rc = new_slug(c, slug, e);
    if (rc < 0)
        return rc;
    const char *pt[] = {team_id, name, slug, now};
    rc = db_exec(c, SQL_TEAM_INSERT, 4, pt, NULL, NULL, e);
    if (rc < 0)
        return rc;
    const char *pm[] = {user_id, team_id, is_default ? "1" : "0", role, now};
    return db_exec(c, SQL_MEMBER_INSERT, 5, pm, NULL, NULL, e);
}

int store_signup(db_conn_t *c, const char *email, const char *pw_hash, const char *name,
                 const char *team_name, char user_id[STORE_ID_MAX], char team_id[STORE_ID_MAX],
                 err_t *e)
{
    char now[CP_TIME_LEN], slug[14];
    now_str(now);
    cp_id_new("usr_", user_id, STORE_ID_MAX);
    int rc = db_begin(c, e);
    if (rc < 0)
        return rc;
    const char *pu[] = {user_id, email, pw_hash, name, now, now};
    if ((rc = db_exec(c, SQL_USER_INSERT, 6, pu, NULL, NULL, e)) < 0 ||
        (rc = team_insert(c, user_id, team_name, true, "owner", team_id, slug, now, e)) < 0) {
        db_rollback(c);
        return rc;
    }
    return db_commit(c, e);
}

static const char SQL_USER_BY_EMAIL[] =
    "SELECT id, email, name, password_hash, is_admin FROM users WHERE email = ?";

int store_user_by_email(db_conn_t *c, const char *email, store_user_t *u, err_t *e)
{
    db_row1_t r = {0};
    const char *p[] = {email};
    int rc = db_exec(c, SQL_USER_BY_EMAIL, 1, p, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -ENOENT, "no such user");
    if (rc >= 0) {
        memset(u, 0, sizeof *u);
        COPY(u->id, r.v[0]);
        COPY(u->email, r.v[1]);
        COPY(u->name, r.v[2]);
        COPY(u->pw_hash, r.v[3]);
        u->is_admin = truthy(r.v[4]);
        rc = 0;
    }
    db_row1_fini(&r);
    return rc;
}

static const char SQL_LOGIN_TEAM[] =
    "SELECT ut.team_id, ut.role FROM users_teams ut JOIN teams t ON t.id = ut.team_id "
    "WHERE ut.user_id = ? AND t.deleted_at IS NULL "
    "ORDER BY ut.is_default DESC, ut.created_at ASC, ut.team_id ASC LIMIT 1";

int store_login_team(db_conn_t *c, const char *user_id, char team_id[STORE_ID_MAX], char role[16],
                     err_t *e)
{
    db_row1_t r = {0};
    const char *p[] = {user_id};
    int rc = db_exec(c, SQL_LOGIN_TEAM, 1, p, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -ENOENT, "user is not a member of any team");
    if (rc >= 0) {
        snprintf(team_id, STORE_ID_MAX, "%s", r.v[0]);
        snprintf(role, 16, "%s", r.v[1]);
        rc = 0;
    }
    db_row1_fini(&r);
    return rc;
}

static const char SQL_MEMBER_CTX[] =
    "SELECT ut.role, u.is_admin, u.name, u.email FROM users_teams ut "
    "JOIN teams t ON t.id = ut.team_id JOIN users u ON u.id = ut.user_id "
    "WHERE ut.user_id = ? AND ut.team_id = ? AND t.deleted_at IS NULL";

int store_member_ctx(db_conn_t *c, const char *user_id, const char *team_id,
                     store_member_ctx_t *out, err_t *e)
{
    db_row1_t r = {0};
    const char *p[] = {user_id, team_id};
    int rc = db_exec(c, SQL_MEMBER_CTX, 2, p, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -ENOENT, "not a member of a live team");
    if (rc >= 0) {
        COPY(out->role, r.v[0]);
        out->is_admin = truthy(r.v[1]);
        COPY(out->name, r.v[2]);
        COPY(out->email, r.v[3]);
        rc = 0;
    }
    db_row1_fini(&r);
    return rc;
}

static const char SQL_TEAM_ALIVE[] = "SELECT 1 FROM teams WHERE id = ? AND deleted_at IS NULL";

int store_team_alive(db_conn_t *c, const char *team_id, err_t *e)
{
    const char *p[] = {team_id};
    int rc = db_exec(c, SQL_TEAM_ALIVE, 1, p, NULL, NULL, e);
    if (rc == 0)
        return err_set(e, -ENOENT, "team not found");
    return rc < 0 ? rc : 0;
}

/* ---- API keys ---- */

static const char SQL_KEY_AUTH[] =
    "SELECT k.id, k.team_id, k.name, k.created_by, k.last_used FROM team_api_keys k "
    "JOIN teams t ON t.id = k.team_id "
    "JOIN users_teams ut ON ut.team_id = k.team_id AND ut.user_id = k.created_by "
    "WHERE k.key_hash = ? AND t.deleted_at IS NULL";

int store_key_auth(db_conn_t *c, const char *hash, store_key_auth_t *out, err_t *e)
{
    db_row1_t r = {0};
    const char *p[] = {hash};
    int rc = db_exec(c, SQL_KEY_AUTH, 1, p, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -EKEYREJECTED, "invalid API key");
    if (rc >= 0) {
        COPY(out->id, r.v[0]);
        COPY(out->team_id, r.v[1]);
        COPY(out->name, r.v[2]);
        COPY(out->creator, r.v[3]);
        int64_t us = 0;
        out->last_used_us = r.v[4] && cp_time_parse(r.v[4], &us) == 0 ? us : 0;
        rc = 0;
    }
    db_row1_fini(&r);
    return rc;
}

static const char SQL_KEY_TOUCH[] =
    "UPDATE team_api_keys SET last_used = ? WHERE id = ? AND (last_used IS NULL OR last_used < ?)";

int store_key_touch(db_conn_t *c, const char *id, int64_t now_us, int64_t interval_us, err_t *e)
{
    char now[CP_TIME_LEN], cut[CP_TIME_LEN];
    cp_time_fmt(now_us, now);
    cp_time_fmt(now_us - interval_us, cut);
    const char *p[] = {now, id, cut};
    return db_exec(c, SQL_KEY_TOUCH, 3, p, NULL, NULL, e);
}

static const char SQL_KEY_INSERT[] =
    "INSERT INTO team_api_keys (id, team_id, name, key_hash, key_prefix, created_by, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)";

int store_key_create(db_conn_t *c, const char *id, const char *team_id, const char *name,
                     const char *hash, const char *shown, const char *created_by, const char *now,
                     err_t *e)
{
    const char *p[] = {id, team_id, name, hash, shown, created_by, now};
    return db_exec(c, SQL_KEY_INSERT, 7, p, NULL, NULL, e);
}

static const char SQL_KEY_LIST[] =
    "SELECT k.id, k.team_id, k.name, k.key_prefix, k.created_by, u.email, k.created_at, "
    "k.last_used FROM team_api_keys k LEFT JOIN users u ON u.id = k.created_by "
    "WHERE k.team_id = ? ORDER BY k.created_at DESC, k.id DESC";

int store_key_list(db_conn_t *c, const char *team_id, json_t **out, err_t *e)
{
    static const char *const spec[] = {"id",           "team_id",      "name",
                                       "key_prefix",   "created_by",   "?creator_email",
                                       "t:created_at", "?t:last_used", NULL};
    const char *p[] = {team_id};
    return query_list(c, SQL_KEY_LIST, 1, p, spec, out, e);
}

static const char SQL_KEY_DELETE[] = "DELETE FROM team_api_keys WHERE id = ? AND team_id = ?";

int store_key_delete(db_conn_t *c, const char *team_id, const char *id, err_t *e)
{
    const char *p[] = {id, team_id};
    return db_exec(c, SQL_KEY_DELETE, 2, p, NULL, NULL, e);
}

/* ---- teams ---- */

static const char *const TEAM_ROLE_SPEC[] = {"id",           "name", "slug", "b:is_byoc",
                                             "t:created_at", "role", NULL};

static const char SQL_TEAM_WITH_ROLE[] =
    "SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, ut.role FROM teams t "
    "JOIN users_teams ut ON ut.team_id = t.id WHERE t.id = ? AND ut.user_id = ?";

int store_team_create(db_conn_t *c, const char *user_id, const char *name, json_t **out, err_t *e)
{
    char now[CP_TIME_LEN], team_id[STORE_ID_MAX], slug[14];
    now_str(now);
    int rc = db_begin(c, e);
    if (rc < 0)
        return rc;
    if ((rc = team_insert(c, user_id, name, false, "owner", team_id, slug, now, e)) < 0) {
        db_rollback(c);
        return rc;
    }
    if ((rc = db_commit(c, e)) < 0)
        return rc;
    const char *p[] = {team_id, user_id};
    json_t *arr = NULL;
    rc = query_list(c, SQL_TEAM_WITH_ROLE, 2, p, TEAM_ROLE_SPEC, &arr, e);
    if (rc < 0)
        return rc;
    *out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return *out ? 0 : err_set(e, -EIO, "team vanished");
}

static const char SQL_TEAMS_OF_USER[] =
    "SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, ut.role FROM users_teams ut "
    "JOIN teams t ON t.id = ut.team_id WHERE ut.user_id = ? AND t.deleted_at IS NULL "
    "ORDER BY ut.created_at ASC, t.id ASC";

int store_teams_of_user(db_conn_t *c, const char *user_id, json_t **out, err_t *e)
{
    const char *p[] = {user_id};
    return query_list(c, SQL_TEAMS_OF_USER, 1, p, TEAM_ROLE_SPEC, out, e);
}

static const char SQL_TEAM_GET[] =
    "SELECT id, name, slug, is_byoc, created_at FROM teams WHERE id = ? AND deleted_at IS NULL";

int store_team_get(db_conn_t *c, const char *team_id, json_t **out, err_t *e)
{
    const char *p[] = {team_id};
    json_t *arr = NULL;
    int rc = query_list(c, SQL_TEAM_GET, 1, p, TEAM_ROLE_SPEC, &arr, e);
    if (rc < 0)
        return rc;
    *out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return *out ? 0 : err_set(e, -ENOENT, "team not found");
}

static const char SQL_MEMBERS[] =
    "SELECT ut.user_id, u.name, u.email, ut.role, ut.created_at FROM users_teams ut "
    "JOIN users u ON u.id = ut.user_id WHERE ut.team_id = ? "
    "ORDER BY ut.created_at ASC, ut.user_id ASC";
static const char *const MEMBER_SPEC[] = {"user_id", "name", "email", "role", "t:joined_at", NULL};

int store_members(db_conn_t *c, const char *team_id, json_t **out, err_t *e)
{
    const char *p[] = {team_id};
    return query_list(c, SQL_MEMBERS, 1, p, MEMBER_SPEC, out, e);
}

static const char SQL_TEAM_NAME[] = "SELECT name FROM teams WHERE id = ? AND deleted_at IS NULL";
static const char SQL_TEAM_RENAME[] =
    "UPDATE teams SET name = ? WHERE id = ? AND deleted_at IS NULL";

int store_team_rename(db_conn_t *c, const char *team_id, const char *name,
                      char old_name[STORE_TEXT_MAX], err_t *e)
{
    int rc = db_begin(c, e);
    if (rc < 0)
        return rc;
    db_row1_t r = {0};
    const char *p1[] = {team_id};
    rc = db_exec(c, SQL_TEAM_NAME, 1, p1, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -ENOENT, "team not found");
    if (rc >= 0) {
        snprintf(old_name, STORE_TEXT_MAX, "%s", r.v[0] ? r.v[0] : "");
        const char *p2[] = {name, team_id};
        rc = db_exec(c, SQL_TEAM_RENAME, 2, p2, NULL, NULL, e);
    }
    db_row1_fini(&r);
    if (rc < 0) {
        db_rollback(c);
        return rc;
    }
    return db_commit(c, e);
}

static const char SQL_TEAM_STOP_SANDBOXES[] =
    "UPDATE sandboxes SET status = 'stopped', last_updated = ? "
    "WHERE team_id = ? AND status IN ('running', 'paused', 'starting', 'pending', 'missing')";
static const char SQL_TEAM_SOFT_DELETE[] =
    "UPDATE teams SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL";

int store_team_delete(db_conn_t *c, const char *team_id, err_t *e)
{
    char now[CP_TIME_LEN];
    now_str(now);
    int rc = db_begin(c, e);
    if (rc < 0)
        return rc;
    const char *p[] = {now, team_id};
    if ((rc = db_exec(c, SQL_TEAM_STOP_SANDBOXES, 2, p, NULL, NULL, e)) < 0 ||
        (rc = db_exec(c, SQL_TEAM_SOFT_DELETE, 2, p, NULL, NULL, e)) < 0) {
        db_rollback(c);
        return rc;
    }
    if (rc == 0) {
        db_rollback(c);
        return err_set(e, -ENOENT, "team not found");
    }
    return db_commit(c, e);
}

static const char SQL_MEMBER_ROLE[] =
    "SELECT role FROM users_teams WHERE team_id = ? AND user_id = ?";

int store_member_role(db_conn_t *c, const char *team_id, const char *user_id, char role[16],
                      err_t *e)
{
    db_row1_t r = {0};
    const char *p[] = {team_id, user_id};
    int rc = db_exec(c, SQL_MEMBER_ROLE, 2, p, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -ENOENT, "user is not a member of this team");
    if (rc >= 0) {
        snprintf(role, 16, "%s", r.v[0] ? r.v[0] : "");
        rc = 0;
    }
    db_row1_fini(&r);
    return rc;
}

static const char SQL_USER_ID_BY_EMAIL[] = "SELECT id, name, email FROM users WHERE email = ?";

int store_member_add(db_conn_t *c, const char *team_id, const char *email, json_t **out, err_t *e)
{
    char now[CP_TIME_LEN];
    now_str(now);
    db_row1_t r = {0};
    const char *p[] = {email};
    int rc = db_exec(c, SQL_USER_ID_BY_EMAIL, 1, p, db_row1_fn, &r, e);
    if (rc >= 0 && !r.found)
        rc = err_set(e, -ENOENT, "user not found");
    if (rc < 0)
        goto out;
    const char *pm[] = {r.v[0], team_id, "0", "member", now};
    rc = db_exec(c, SQL_MEMBER_INSERT, 5, pm, NULL, NULL, e);
    if (rc == -EEXIST)
        err_set(e, -EEXIST, "user is already a member");
    if (rc < 0)
        goto out;
    const char *vals[] = {r.v[0], r.v[1], r.v[2], "member", now};
    *out = row_obj(5, vals, MEMBER_SPEC);
    rc = 0;
out:
    db_row1_fini(&r);
    return rc;
}

static const char SQL_MEMBER_SET_ROLE[] =
    "UPDATE users_teams SET role = ? WHERE team_id = ? AND user_id = ? AND role <> 'owner'";

int store_member_set_role(db_conn_t *c, const char *team_id, const char *user_id, const char *role,
                          err_t *e)
{
    const char *p[] = {role, team_id, user_id};
    int rc = db_exec(c, SQL_MEMBER_SET_ROLE, 3, p, NULL, NULL, e);
    if (rc == 0)
        return err_set(e, -ENOENT, "user is not a member of this team");
    return rc < 0 ? rc : 0;
}

static const char SQL_MEMBER_REMOVE[] =
    "DELETE FROM users_teams WHERE team_id = ? AND user_id = ? AND role <> 'owner'";

int store_member_remove(db_conn_t *c, const char *team_id, const char *user_id, err_t *e)
{
    const char *p[] = {team_id, user_id};
    int rc = db_exec(c, SQL_MEMBER_REMOVE, 2, p, NULL, NULL, e);
    if (rc == 0)
        return err_set(e, -ENOENT, "user is not a member of this team");
    return rc < 0 ? rc : 0;
}

static const char SQL_USER_SEARCH[] =
    "SELECT id, email FROM users WHERE email LIKE ? ESCAPE '!' ORDER BY email LIMIT 10";

int store_user_search(db_conn_t *c, const char *prefix, json_t **out, err_t *e)
{
    static const char *const spec[] = {"user_id", "email", NULL};
    /* '!' is the escape character: it is neither special in SQL strings of either engine nor
     * something a standard_conforming_strings setting changes. */
    buf_t b;
    buf_init(&b);
    for (const char *s = prefix; *s; s++) {
        if (*s == '%' || *s == '_' || *s == '!')
            buf_addc(&b, '!');
        buf_addc(&b, *s);
    }
    buf_addc(&b, '%');
    const char *p[] = {b.data};
    int rc = query_list(c, SQL_USER_SEARCH, 1, p, spec, out, e);
    buf_fini(&b);
    return rc;
}

/* ---- sandboxes ---- */

static const char *const SANDBOX_SPEC[] = {
    "id",        "status",   "template",     "i:vcpus",       "i:memory_mb",       "i:timeout_sec",
    "?guest_ip", "?host_ip", "t:created_at", "?t:started_at", "?t:last_active_at", "t:last_updated",
    NULL};

static const char SQL_SANDBOX_LIST[] =
    "SELECT id, status, template, vcpus, memory_mb, timeout_sec, guest_ip, host_ip, created_at, "
    "started_at, last_active_at, last_updated FROM sandboxes "
    "WHERE team_id = ? AND status NOT IN ('stopped', 'error') "
    "ORDER BY created_at DESC, id DESC";

int store_sandbox_list(db_conn_t *c, const char *team_id, json_t **out, err_t *e)
{
    const char *p[] = {team_id};
    return query_list(c, SQL_SANDBOX_LIST, 1, p, SANDBOX_SPEC, out, e);
}

static const char SQL_SANDBOX_GET[] =
    "SELECT id, status, template, vcpus, memory_mb, timeout_sec, guest_ip, host_ip, created_at, "
    "started_at, last_active_at, last_updated FROM sandboxes WHERE team_id = ? AND id = ?";

int store_sandbox_get(db_conn_t *c, const char *team_id, const char *id, json_t **out, err_t *e)
{
    const char *p[] = {team_id, id};
    json_t *arr = NULL;
    int rc = query_list(c, SQL_SANDBOX_GET, 2, p, SANDBOX_SPEC, &arr, e);
    if (rc < 0)
        return rc;
    *out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return *out ? 0 : err_set(e, -ENOENT, "sandbox not found");
}

/* ---- audit log ---- */

static const char SQL_AUDIT_INSERT[] =
    "INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, resource_type, "
    "resource_id, action, scope, status, metadata, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

int store_audit_insert(db_conn_t *c, const store_audit_row_t *r, err_t *e)
{
    char id[STORE_ID_MAX], now[CP_TIME_LEN];
    cp_id_new("log_", id, sizeof id);
    now_str(now);
    const char *p[] = {id,
                       r->team_id,
                       r->actor_type,
                       r->actor_id,
                       r->actor_name ? r->actor_name : "",
                       r->resource_type,
                       r->resource_id,
                       r->action,
                       r->scope,
                       r->status,
                       r->metadata ? r->metadata : "{}",
                       now};
    return db_exec(c, SQL_AUDIT_INSERT, 12, p, NULL, NULL, e);
}

static void add_in(buf_t *sql, const char *col, int n)
{
    buf_printf(sql, " AND %s IN (", col);
    for (int i = 0; i < n; i++)
        buf_adds(sql, i ? ", ?" : "?");
    buf_addc(sql, ')');
}

int store_audit_list(db_conn_t *c, const store_audit_query_t *q, json_t **out, err_t *e)
{
    static const char *const spec[] = {
        "id",     "actor_type", "?actor_id", "?actor_name", "resource_type", "?resource_id",
        "action", "scope",      "status",    "j:metadata",  "t:created_at",  NULL};
    /* The filter lists vary in length, so this one statement is built per request; only
     * placeholders are added, never values. */
    buf_t sql;
    buf_init(&sql);
    const char **p = xcalloc((size_t)(8 + q->nrtypes + q->nactions), sizeof *p);
    int n = 0;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", q->limit);
    buf_adds(&sql, "SELECT id, actor_type, actor_id, actor_name, resource_type, resource_id, "
                   "action, scope, status, metadata, created_at FROM audit_logs "
                   "WHERE team_id = ?");
    p[n++] = q->team_id;
    if (!q->admin_scope)
        buf_adds(&sql, " AND scope = 'team'");
    if (q->before && q->before_id) {
        buf_adds(&sql, " AND (created_at < ? OR (created_at = ? AND id < ?))");
        p[n++] = q->before;
        p[n++] = q->before;
        p[n++] = q->before_id;
    } else if (q->before) {
        buf_adds(&sql, " AND created_at < ?");
        p[n++] = q->before;
    }
    if (q->nrtypes) {
        add_in(&sql, "resource_type", q->nrtypes);
        for (int i = 0; i < q->nrtypes; i++)
            p[n++] = q->rtypes[i];
    }
    if (q->nactions) {
        add_in(&sql, "action", q->nactions);
        for (int i = 0; i < q->nactions; i++)
            p[n++] = q->actions[i];
    }
    buf_adds(&sql, " ORDER BY created_at DESC, id DESC LIMIT ?");
    p[n++] = limit;
    struct list_ctx l = {json_array(), spec};
    int rc = db_exec_dyn(c, sql.data, n, p, list_row, &l, e);
    free(p);
    buf_fini(&sql);
    if (rc < 0) {
        json_decref(l.arr);
        return rc;
    }
    *out = l.arr;
    return 0;
}
