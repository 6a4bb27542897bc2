/* Internal: what each database engine provides to the pool in db.c. */
#ifndef WRENN_CP_DB_ENGINE_H
#define WRENN_CP_DB_ENGINE_H

#include "db.h"

typedef struct db_ops {
    db_engine_t engine;
    const char *begin_sql;
    /* Open one connection; *h gets the engine handle. */
    int (*connect)(const char *target, void **h, err_t *e);
    void (*disconnect)(void *h);
    /* One statement; cache tells whether sql is static and may be kept prepared. Sets *broken
     * when the connection is no longer usable. */
    int (*exec)(void *h, const char *sql, bool cache, int n, const char *const *params,
                db_row_fn fn, void *ud, bool *broken, err_t *e);
    int (*script)(void *h, const char *sql, bool *broken, err_t *e);
} db_ops_t;

extern const db_ops_t db__sqlite_ops;
extern const db_ops_t db__pg_ops;

/* A small per-connection cache of prepared statements keyed by the SQL's address. */
#define DB_STMT_CACHE 128
typedef struct db_stmt_cache {
    const char *sql[DB_STMT_CACHE];
    void *stmt[DB_STMT_CACHE];
} db_stmt_cache_t;

/** The slot for sql: its index, with *hit telling whether it already holds sql; -1 when full. */
int db__cache_slot(db_stmt_cache_t *c, const char *sql, bool *hit);

#endif
