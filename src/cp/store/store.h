/* The control plane's store: every query the API runs, written once for both engines (see
 * db.h). Functions take a connection the caller acquired; multi-row changes run in one
 * transaction inside the function. Lists come back as jansson arrays ready for the wire (times
 * rendered canonically, NULL columns omitted). All return >= 0 or a negative errno:
 * -ENOENT missing, -EEXIST duplicate, -EINVAL bad value, -EAGAIN busy, -EIO otherwise. */
#ifndef WRENN_CP_STORE_H
#define WRENN_CP_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp_util.h"
#include "db.h"

#define STORE_ID_MAX   64
#define STORE_TEXT_MAX 256

/* ---- users and sign-in ---- */

typedef struct store_user {
    char id[STORE_ID_MAX];
    char email[STORE_TEXT_MAX];
    char name[STORE_TEXT_MAX];
    char pw_hash[160]; /* empty when the user has no password */
    bool is_admin;
} store_user_t;

/** One transaction: the user, a team named team_name with a fresh slug, and the owner
 * membership flagged default. Duplicate email → -EEXIST. */
int store_signup(db_conn_t *c, const char *email, const char *pw_hash, const char *name,
                 const char *team_name, char user_id[STORE_ID_MAX], char team_id[STORE_ID_MAX],
                 err_t *e);
int store_user_by_email(db_conn_t *c, const char *email, store_user_t *u, err_t *e);
/** The team a login lands in: the default membership of a live team, else the earliest joined
 * live team; -ENOENT when none. */
int store_login_team(db_conn_t *c, const char *user_id, char team_id[STORE_ID_MAX], char role[16],
                     err_t *e);

/** What the per-request membership check learns (the user's role in a live team). */
typedef struct store_member_ctx {
    char role[16];
    bool is_admin;
    char name[STORE_TEXT_MAX];
    char email[STORE_TEXT_MAX];
} store_member_ctx_t;
/** -ENOENT unless user_id is a member of team_id and the team is not deleted. */
int store_member_ctx(db_conn_t *c, const char *user_id, const char *team_id,
                     store_member_ctx_t *out, err_t *e);
/** -ENOENT unless the team exists and is not deleted. */
int store_team_alive(db_conn_t *c, const char *team_id, err_t *e);

/* ---- API keys ---- */

typedef struct store_key_auth {
    char id[STORE_ID_MAX];
    char team_id[STORE_ID_MAX];
    char name[STORE_TEXT_MAX];
    char creator[STORE_ID_MAX];
    int64_t last_used_us; /* 0 when never used */
} store_key_auth_t;
/** Find a live key by hash: its team must be alive and its creator still a member. */
int store_key_auth(db_conn_t *c, const char *hash, store_key_auth_t *out, err_t *e);
/** Record a use at now unless one was recorded less than interval ago. */
int store_key_touch(db_conn_t *c, const char *id, int64_t now_us, int64_t interval_us, err_t *e);
int store_key_create(db_conn_t *c, const char *id, const char *team_id, const char *name,
                     const char *hash, const char *shown, const char *created_by, const char *now,
                     err_t *e);
/** The team's keys, newest first, with creator_email. */
int store_key_list(db_conn_t *c, const char *team_id, json_t **out, err_t *e);
/** Delete a key of the team; returns 1 when deleted, 0 when no such key in that team. */
int store_key_delete(db_conn_t *c, const char *team_id, const char *id, err_t *e);

/* ---- teams and members ---- */

/** One transaction: a team with a fresh slug and user_id as its owner. *out gets the team
 * object with role "owner". */
int store_team_create(db_conn_t *c, const char *user_id, const char *name, json_t **out, err_t *e);
/** Live teams of the user with the user's role, by join time. */
int store_teams_of_user(db_conn_t *c, const char *user_id, json_t **out, err_t *e);
/** A live team object; -ENOENT when missing or deleted. */
int store_team_get(db_conn_t *c, const char *team_id, json_t **out, err_t *e);
/** Members by join time. */
int store_members(db_conn_t *c, const char *team_id, json_t **out, err_t *e);
/** Rename a live team; old_name gets the previous name. */
int store_team_rename(db_conn_t *c, const char *team_id, const char *name,
                      char old_name[STORE_TEXT_MAX], err_t *e);
/** One transaction: stop the team's live sandboxes and mark the team deleted. */
int store_team_delete(db_conn_t *c, const char *team_id, err_t *e);
/** The role of user_id in team_id; -ENOENT when not a member. */
int store_member_role(db_conn_t *c, const char *team_id, const char *user_id, char role[16],
                      err_t *e);
/** Add the user with this email as a member; *out gets the member object. No such user →
 * -ENOENT; already a member → -EEXIST. */
int store_member_add(db_conn_t *c, const char *team_id, const char *email, json_t **out, err_t *e);
/** Set a non-owner member's role; 0 rows (owner or not a member) → -ENOENT. */
int store_member_set_role(db_conn_t *c, const char *team_id, const char *user_id, const char *role,
                          err_t *e);
/** Remove a non-owner member; 0 rows → -ENOENT. */
int store_member_remove(db_conn_t *c, const char *team_id, const char *user_id, err_t *e);
/** Up to 10 users whose email starts with prefix (LIKE metacharacters escaped), by email. */
int store_user_search(db_conn_t *c, const char *prefix, json_t **out, err_t *e);

/* ---- sandboxes ---- */

/** The team's sandboxes that are not stopped or errored, newest first. */
int store_sandbox_list(db_conn_t *c, const char *team_id, json_t **out, err_t *e);
int store_sandbox_get(db_conn_t *c, const char *team_id, const char *id, json_t **out, err_t *e);

/* ---- audit log ---- */

typedef struct store_audit_row {
    const char *team_id, *actor_type, *actor_id, *actor_name, *resource_type, *resource_id, *action,
        *scope, *status;
    const char *metadata; /* JSON object text */
} store_audit_row_t;
/** Insert one entry stamped now; its id is generated. */
int store_audit_insert(db_conn_t *c, const store_audit_row_t *r, err_t *e);

typedef struct store_audit_query {
    const char *team_id;
    bool admin_scope;      /* include scope 'admin' */
    const char *before;    /* canonical time or NULL */
    const char *before_id; /* tie-breaker or NULL */
    const char *const *rtypes;
    int nrtypes;
    const char *const *actions;
    int nactions;
    int limit;
} store_audit_query_t;
/** Entries newest first (created_at DESC, id DESC) strictly after the cursor. */
int store_audit_list(db_conn_t *c, const store_audit_query_t *q, json_t **out, err_t *e);

#endif
