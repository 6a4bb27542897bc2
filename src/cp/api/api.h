/* The control plane's HTTP API: one dispatcher on the foundation's HTTP server, a route table
 * with path parameters and an authentication kind per route, the error envelope of api.md §0.2
 * and the helpers every handler uses.
 *
 * Handlers run on the connection's thread. Each request owns a cp_req_t; the database
 * connection it acquires lazily (cp_db()) is released when the request ends.
 */
#ifndef WRENN_CP_API_H
#define WRENN_CP_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cp.h"
#include "http.h"
#include "store/store.h"

typedef enum cp_auth { CP_AUTH_NONE, CP_AUTH_JWT, CP_AUTH_KEY_OR_JWT } cp_auth_t;

typedef enum cp_actor_kind { CP_ACTOR_NONE, CP_ACTOR_USER, CP_ACTOR_KEY } cp_actor_kind_t;

/** Who is calling, as established by the middleware against the database. */
typedef struct cp_actor {
    cp_actor_kind_t kind;
    char team_id[STORE_ID_MAX];
    char user_id[STORE_ID_MAX]; /* users; for keys the key's creator */
    char role[16];              /* users: role in team_id, read from the database */
    bool is_admin;
    char name[STORE_TEXT_MAX];
    char email[STORE_TEXT_MAX];
    char key_id[STORE_ID_MAX];
    char key_name[STORE_TEXT_MAX];
} cp_actor_t;

#define CP_MAX_PARAMS 4

typedef struct cp_req {
    cp_t *cp;
    http_req_t *h;
    db_conn_t *db;
    const char *param[CP_MAX_PARAMS]; /* path parameters in pattern order (arena strings) */
    cp_actor_t who;
    int status;
} cp_req_t;

typedef void (*cp_handler_fn)(cp_req_t *r);

typedef struct cp_route {
    const char *method;
    const char *pattern; /* "/v1/teams/{id}/members/{uid}" */
    cp_auth_t auth;
    cp_handler_fn fn;
} cp_route_t;

/** The route table, ended by a zero entry. */
extern const cp_route_t cp_routes[];

/** The foundation route that sends everything through the dispatcher. */
void cp_api_routes(cp_t *cp, http_route_t out[2]);

/* Error codes that exist only in the control plane's vocabulary (api.md §0.2). */
#define CP_E_EMAIL_TAKEN (-ENOTUNIQ)
#define CP_E_NO_TEAM     (-ENOMEDIUM)

/** Answer with the error envelope {"error":{"code","message"}}; status and code come from the
 * error table in errors.c. */
void cp_fail(cp_req_t *r, int code, const err_t *e);
/** Same, with a message. */
void cp_failf(cp_req_t *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/** Answer with JSON (takes the reference) followed by a newline. */
void cp_json(cp_req_t *r, int status, json_t *body);
void cp_no_content(cp_req_t *r);

/** The request's database connection (acquired on first use). */
int cp_db(cp_req_t *r, db_conn_t **out, err_t *e);
/** Parse the body as a JSON object (an empty body is {}); -EINVAL "invalid JSON body". */
int cp_body(cp_req_t *r, json_t **out, err_t *e);
/** A string member: absent or null leaves *out NULL; another type → -EINVAL. The string is
 * copied into the request arena so callers may trim it. maxlen bounds it (→ -EINVAL). */
int cp_str(cp_req_t *r, json_t *obj, const char *key, size_t maxlen, char **out, err_t *e);
/** Every value of a repeatable, comma-separated query parameter (arena strings). */
int cp_query_list(cp_req_t *r, const char *name, const char ***out, int *n, err_t *e);

/** Record an audit entry for the caller (fire-and-forget: failures are logged). meta may be
 * NULL; it is not taken. */
void cp_audit(cp_req_t *r, const char *resource_type, const char *resource_id, const char *action,
              const char *scope, const char *status, json_t *meta);

/** The error table row for a code (for tests and docs). */
typedef struct cp_err_row {
    int code;
    int http;
    const char *name;
} cp_err_row_t;
cp_err_row_t cp_err_lookup(int code);

/* Handlers. */
void cp_h_signup(cp_req_t *r);
void cp_h_login(cp_req_t *r);
void cp_h_switch_team(cp_req_t *r);
void cp_h_keys_create(cp_req_t *r);
void cp_h_keys_list(cp_req_t *r);
void cp_h_keys_delete(cp_req_t *r);
void cp_h_teams_list(cp_req_t *r);
void cp_h_teams_create(cp_req_t *r);
void cp_h_team_get(cp_req_t *r);
void cp_h_team_rename(cp_req_t *r);
void cp_h_team_delete(cp_req_t *r);
void cp_h_members_list(cp_req_t *r);
void cp_h_members_add(cp_req_t *r);
void cp_h_member_role(cp_req_t *r);
void cp_h_member_remove(cp_req_t *r);
void cp_h_team_leave(cp_req_t *r);
void cp_h_users_search(cp_req_t *r);
void cp_h_audit_list(cp_req_t *r);
void cp_h_sandboxes_list(cp_req_t *r);
void cp_h_sandbox_get(cp_req_t *r);
void cp_h_openapi(cp_req_t *r);
void cp_h_docs(cp_req_t *r);

#endif
