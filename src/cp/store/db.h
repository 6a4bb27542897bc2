/* Database access for the control plane: one small interface, two engines (SQLite, PostgreSQL).
 *
 * Queries are written once with `?` placeholders; the PostgreSQL engine rewrites them to `$n`.
 * Every parameter and every result value travels as text (NULL for SQL NULL), so the same query
 * text serves both engines wherever the SQL itself allows. Times are passed in as canonical
 * RFC 3339 UTC strings with six fractional digits (see cp_time_fmt()), which sort correctly as
 * text in SQLite and are parsed into TIMESTAMPTZ by PostgreSQL.
 *
 * Threading: a db_t is a connection pool and is thread-safe. A db_conn_t belongs to the thread
 * that acquired it until it is released.
 */
#ifndef WRENN_CP_DB_H
#define WRENN_CP_DB_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

typedef enum db_engine { DB_SQLITE = 1, DB_PG = 2 } db_engine_t;

typedef struct db db_t;
typedef struct db_conn db_conn_t;

/** Called once per result row with the row's values (NULL for SQL NULL). Return 0 to go on or
 * a negative errno to stop the query with that error. */
typedef int (*db_row_fn)(void *ud, int ncol, const char *const *vals);

/** Open a pool. target is `postgres://...` / `postgresql://...` for PostgreSQL, otherwise the
 * path of an SQLite file (an optional `sqlite:` prefix is stripped). pool_max bounds the number
 * of connections. Connects once to fail early on a bad target. Returns 0 or a negative errno. */
int db_open(const char *target, int pool_max, db_t **out, err_t *e);
/** Close every connection and free. NULL-safe; all connections must be released first. */
void db_close(db_t *db);
db_engine_t db_engine(const db_t *db);

/** Take a connection from the pool (waits while all are busy). */
int db_acquire(db_t *db, db_conn_t **out, err_t *e);
/** Give it back; a connection left inside a transaction is rolled back first. NULL-safe. */
void db_release(db_conn_t *c);

/** Run one statement. sql must be a string with static storage duration: prepared statements
 * are cached per connection by its address. Returns the number of rows returned (SELECT or
 * RETURNING) or changed (other DML), or a negative errno: -EEXIST unique violation, -ENOENT
 * foreign-key violation, -EINVAL bad input value, -EAGAIN busy/serialization, -EIO otherwise. */
int db_exec(db_conn_t *c, const char *sql, int n, const char *const *params, db_row_fn fn, void *ud,
            err_t *e);
/** Like db_exec for SQL built at run time: nothing is cached. */
int db_exec_dyn(db_conn_t *c, const char *sql, int n, const char *const *params, db_row_fn fn,
                void *ud, err_t *e);
/** Run a script of several statements without parameters (migrations). */
int db_script(db_conn_t *c, const char *sql, err_t *e);

/** Transactions. db_begin takes the write lock at once on SQLite (BEGIN IMMEDIATE) so two
 * writers never deadlock on a lock upgrade. */
int db_begin(db_conn_t *c, err_t *e);
int db_commit(db_conn_t *c, err_t *e);
void db_rollback(db_conn_t *c);

/** The engine of a connection. */
db_engine_t db_conn_engine(const db_conn_t *c);

/** Row callback that copies the first row's values into the char *[ncol] array ud points to
 * (malloc'd strings, caller frees; up to 16 columns). Further rows are ignored. */
typedef struct db_row1 {
    int ncol;
    char *v[16];
    bool found;
} db_row1_t;
int db_row1_fn(void *ud, int ncol, const char *const *vals);
void db_row1_fini(db_row1_t *r);

#endif
