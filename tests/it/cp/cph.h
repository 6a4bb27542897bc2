/* Control-plane integration harness: a private PostgreSQL cluster (pg.sh) or SQLite, the real
 * wrenn-cp binary on an ephemeral port with a fresh database, and small JSON-over-HTTP helpers.
 * The engine comes from WRENN_TEST_CP_ENGINE (sqlite | postgres), so each suite runs twice. */
#ifndef WRENN_TEST_CPH_H
#define WRENN_TEST_CPH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "httpc.h"
#include "store/db.h"

typedef struct cph {
    pid_t pid;
    int port;
    char url[64];
    char dir[256];    /* scratch dir: data dir, port file, log */
    char db_url[512]; /* what wrenn-cp was given (postgres URL or SQLite path) */
    httpc_t *http;
} cph_t;

/** Start the PostgreSQL cluster when the engine is postgres (once per process). */
int cph_suite_setup(void **state);
/** Stop it and remove its directory. */
int cph_suite_teardown(void **state);
/** Whether this run uses PostgreSQL. */
bool cph_is_pg(void);

/** Start wrenn-cp on a fresh database; extra: more flags, NULL-terminated (or NULL). */
int cph_start(cph_t *c, const char *const *extra);
/** SIGTERM, wait, remove the scratch dir; returns the exit status. */
int cph_stop(cph_t *c);
bool cph_alive(cph_t *c);
/** Start the binary again on the same database and data dir (after cph_halt()). */
int cph_restart(cph_t *c, const char *const *extra);
/** Stop the process (SIGTERM, wait) but keep its database and data dir for cph_run(). */
int cph_halt(cph_t *c);
/** Run the binary once with args (e.g. "migrate", "status") against c's database and data dir;
 * returns the exit status; stdout goes to out (malloc'd) when out is non-NULL. */
int cph_run(cph_t *c, const char *const *args, char **out);

/** One request. auth: "Bearer <tok>" / key, or NULL. body may be NULL. Returns the status;
 * *json (when non-NULL) gets the parsed body or NULL. */
long cph_req(cph_t *c, const char *method, const char *path, const char *token, const char *apikey,
             const char *body, json_t **json);
/** The same with a raw body of len bytes and an optional extra header. */
long cph_req_raw(cph_t *c, const char *method, const char *path, const char *token,
                 const void *body, size_t len, const char *header, json_t **json);

/** Sign up a user (name may be NULL); returns the response object (new reference), asserting
 * 201. *token gets a malloc'd copy of the token when non-NULL. */
json_t *cph_signup(cph_t *c, const char *email, const char *name, char **token);
/** Log in; returns the token (malloc'd) or NULL on a non-200. */
char *cph_login(cph_t *c, const char *email, const char *password);
/** The error code string of an error body ("" when it is not one). */
const char *cph_err_code(json_t *j);

/** Open the test's own connection to c's database (for setup the API cannot do). */
db_t *cph_db(cph_t *c);
/** Run one SQL statement with parameters against c's database; returns rows or -errno. */
int cph_sql(cph_t *c, const char *sql, int n, const char *const *params);

/** The first column of the first row of a query (malloc'd), or NULL. */
char *cph_sql1(cph_t *c, const char *sql, int n, const char *const *params);

/** Quick JSON accessors. */
const char *js(json_t *o, const char *key);

#endif
