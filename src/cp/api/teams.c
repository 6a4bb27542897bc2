/* Teams and members (api.md §6) with the owner-protection invariants of data-model.md §7.
 * Roles are the ones the middleware read from the database for this request, never the JWT's. */
#include "api.h"
#include "cp_util.h"

#include <stdio.h>
#include <string.h>

#define TEAM_NAME_MAX 128

#define FAIL(rc_, e_)                                                                              \
    do {                                                                                           \
        cp_fail(r, (rc_), (e_));                                                                   \
        return;                                                                                    \
    } while (0)
#define FAILF(rc_, ...)                                                                            \
    do {                                                                                           \
        cp_failf(r, (rc_), __VA_ARGS__);                                                           \
        return;                                                                                    \
    } while (0)

static bool is_manager(const cp_req_t *r)
{
    return !strcmp(r->who.role, "owner") || !strcmp(r->who.role, "admin");
}

/* Team-scoped routes act on the caller's current team only. */
static int team_scope(cp_req_t *r, err_t *e)
{
    const char *id = r->param[0];
    if (!cp_id_valid("team_", id))
        return err_set(e, -EINVAL, "invalid team ID");
    if (strcmp(id, r->who.team_id) != 0)
        return err_set(e, -EACCES, "JWT team does not match requested team; use switch-team first");
    return 0;
}

/* A team name after trimming: ^[A-Za-z0-9 _\-@']{1,128}$ */
static int team_name(cp_req_t *r, json_t *body, char **out, err_t *e)
{
    char *name = NULL;
    int rc = cp_str(r, body, "name", TEAM_NAME_MAX * 4, &name, e);
    if (rc < 0)
        return rc;
    if (name)
        cp_trim(name);
    size_t n = name ? strlen(name) : 0;
    bool ok = n >= 1 && n <= TEAM_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        char c = name[i];
        ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
             c == ' ' || c == '_' || c == '-' || c == '@' || c == '\'';
    }
    if (!ok)
        return err_set(e, -EINVAL,
                       "invalid team name: 1-128 characters of letters, digits, space, _ - @ '");
    *out = name;
    return 0;
}

void cp_h_teams_list(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *arr = NULL;
    int rc;
    if ((rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_teams_of_user(db, r->who.user_id, &arr, &e)) < 0)
        FAIL(rc, &e);
    cp_json(r, 200, arr);
}

void cp_h_teams_create(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *body = NULL, *team = NULL;
    char *name = NULL;
    int rc;
    if ((rc = cp_body(r, &body, &e)) >= 0 && (rc = team_name(r, body, &name, &e)) >= 0 &&
        (rc = cp_db(r, &db, &e)) >= 0)
        rc = store_team_create(db, r->who.user_id, name, &team, &e);
    json_decref(body);
    if (rc < 0)
        FAIL(rc, &e);
    cp_json(r, 201, team);
}

void cp_h_team_get(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *team = NULL, *members = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0 || (rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_team_get(db, r->param[0], &team, &e)) < 0)
        FAIL(rc, &e);
    if ((rc = store_members(db, r->param[0], &members, &e)) < 0) {
        json_decref(team);
        FAIL(rc, &e);
    }
    json_t *o = json_object();
    json_object_set_new(o, "team", team);
    json_object_set_new(o, "members", members);
    cp_json(r, 200, o);
}

void cp_h_team_rename(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *body = NULL;
    char *name = NULL, old[STORE_TEXT_MAX];
    int rc;
    if ((rc = team_scope(r, &e)) < 0 || (rc = cp_body(r, &body, &e)) < 0 ||
        (rc = team_name(r, body, &name, &e)) < 0)
        goto fail;
    if (!is_manager(r)) {
        rc = err_set(&e, -EACCES, "only the team owner or an admin can rename the team");
        goto fail;
    }
    if ((rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_team_rename(db, r->who.team_id, name, old, &e)) < 0)
        goto fail;
    json_t *meta = json_pack("{s:s,s:s}", "old_name", old, "new_name", name);
    cp_audit(r, "team", r->who.team_id, "rename", "team", "info", meta);
    json_decref(meta);
    json_decref(body);
    cp_no_content(r);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}

void cp_h_team_delete(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0)
        FAIL(rc, &e);
    if (strcmp(r->who.role, "owner") != 0)
        FAILF(-EACCES, "only the team owner can delete the team");
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = store_team_delete(db, r->who.team_id, &e)) < 0)
        FAIL(rc, &e);
    cp_audit(r, "team", r->who.team_id, "delete", "admin", "warning", NULL);
    cp_no_content(r);
}

void cp_h_members_list(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *arr = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0 || (rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_members(db, r->who.team_id, &arr, &e)) < 0)
        FAIL(rc, &e);
    cp_json(r, 200, arr);
}

void cp_h_members_add(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *body = NULL, *member = NULL;
    char *email = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0 || (rc = cp_body(r, &body, &e)) < 0 ||
        (rc = cp_str(r, body, "email", 320, &email, &e)) < 0)
        goto fail;
    if (!email || !*cp_lower(cp_trim(email))) {
        rc = err_set(&e, -EINVAL, "email is required");
        goto fail;
    }
    if (!is_manager(r)) {
        rc = err_set(&e, -EACCES, "only the team owner or an admin can add members");
        goto fail;
    }
    if ((rc = cp_db(r, &db, &e)) < 0)
        goto fail;
    rc = store_member_add(db, r->who.team_id, email, &member, &e);
    if (rc == -EEXIST)
        rc = err_set(&e, -EINVAL, "user is already a member");
    if (rc < 0)
        goto fail;
    json_t *meta = json_pack("{s:s,s:s}", "email", email, "role", "member");
    cp_audit(r, "member", json_string_value(json_object_get(member, "user_id")), "add", "admin",
             "success", meta);
    json_decref(meta);
    json_decref(body);
    cp_json(r, 201, member);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}

/* Shared checks of the routes that act on another member: the target exists and is not the
 * owner. */
static int target_check(cp_req_t *r, db_conn_t *db, const char *what, err_t *e)
{
    char role[16];
    int rc = store_member_role(db, r->who.team_id, r->param[1], role, e);
    if (rc < 0)
        return rc;
    if (!strcmp(role, "owner"))
        return err_set(e, -EACCES, "the team owner cannot be %s", what);
    return 0;
}

void cp_h_member_role(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *body = NULL;
    char *role = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0 || (rc = cp_body(r, &body, &e)) < 0 ||
        (rc = cp_str(r, body, "role", 16, &role, &e)) < 0)
        goto fail;
    if (!role || (strcmp(role, "admin") && strcmp(role, "member"))) {
        rc = err_set(&e, -EINVAL, "role must be admin or member");
        goto fail;
    }
    if (!is_manager(r)) {
        rc = err_set(&e, -EACCES, "only the team owner or an admin can change roles");
        goto fail;
    }
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = target_check(r, db, "re-roled", &e)) < 0 ||
        (rc = store_member_set_role(db, r->who.team_id, r->param[1], role, &e)) < 0)
        goto fail;
    json_t *meta = json_pack("{s:s}", "new_role", role);
    cp_audit(r, "member", r->param[1], "role_update", "admin", "info", meta);
    json_decref(meta);
    json_decref(body);
    cp_no_content(r);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}

void cp_h_member_remove(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0)
        FAIL(rc, &e);
    if (!is_manager(r))
        FAILF(-EACCES, "only the team owner or an admin can remove members");
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = target_check(r, db, "removed", &e)) < 0 ||
        (rc = store_member_remove(db, r->who.team_id, r->param[1], &e)) < 0)
        FAIL(rc, &e);
    cp_audit(r, "member", r->param[1], "remove", "admin", "warning", NULL);
    cp_no_content(r);
}

void cp_h_team_leave(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    int rc;
    if ((rc = team_scope(r, &e)) < 0)
        FAIL(rc, &e);
    if (!strcmp(r->who.role, "owner"))
        FAILF(-EACCES, "the team owner cannot leave; delete the team instead");
    if ((rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_member_remove(db, r->who.team_id, r->who.user_id, &e)) < 0)
        FAIL(rc, &e);
    cp_audit(r, "member", r->who.user_id, "leave", "admin", "info", NULL);
    cp_no_content(r);
}

void cp_h_users_search(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *arr = NULL;
    const char *q = http_req_query(r->h, "email");
    char buf[256];
    if (!q || strlen(q) >= sizeof buf)
        FAILF(-EINVAL, "email query must be 3-255 characters and contain @");
    snprintf(buf, sizeof buf, "%s", q);
    cp_lower(cp_trim(buf));
    if (strlen(buf) < 3 || !strchr(buf, '@'))
        FAILF(-EINVAL, "email query must be 3-255 characters and contain @");
    int rc;
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = store_user_search(db, buf, &arr, &e)) < 0)
        FAIL(rc, &e);
    cp_json(r, 200, arr);
}
