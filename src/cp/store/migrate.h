/* Schema migrations embedded in the binary (db/migrations/<engine>/NNNN_name.{up,down}.sql).
 * Each step runs in its own transaction together with its row in schema_migrations, so a crash
 * leaves the schema at a step boundary. On PostgreSQL an advisory lock serialises control planes
 * that start together; on SQLite the write lock of BEGIN IMMEDIATE does the same. */
#ifndef WRENN_CP_MIGRATE_H
#define WRENN_CP_MIGRATE_H

#include <stdio.h>

#include "db.h"

/** Apply every pending migration in order. Returns the number applied or a negative errno. */
int migrate_up(db_t *db, err_t *e);
/** Revert the newest applied migration. Returns 1 when one was reverted, 0 when none was
 * applied, or a negative errno. */
int migrate_down(db_t *db, err_t *e);
/** Print one line per known migration: version, name, applied time or "pending". */
int migrate_status(db_t *db, FILE *out, err_t *e);

#endif
