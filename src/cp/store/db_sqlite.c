/* SQLite engine: one file, WAL, a busy timeout and foreign keys on every connection. */
#include "db_engine.h"
#include "log.h"
#include "xalloc.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

typedef struct sq {
    sqlite3 *db;
    db_stmt_cache_t cache;
} sq_t;

static int map_err(sqlite3 *db, int rc, const char *what, err_t *e)
{
    int ext = sqlite3_extended_errcode(db);
    const char *msg = sqlite3_errmsg(db);
    switch (ext) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return err_set(e, -EEXIST, "%s: unique violation: %s", what, msg);
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return err_set(e, -ENOENT, "%s: foreign key violation", what);
    case SQLITE_CONSTRAINT_CHECK:
    case SQLITE_CONSTRAINT_NOTNULL:
        return err_set(e, -EINVAL, "%s: constraint violation: %s", what, msg);
    default:
        break;
    }
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
        return err_set(e, -EAGAIN, "%s: database busy", what);
    return err_set(e, -EIO, "%s: sqlite: %s", what, msg);
}

static void sq_disconnect(void *h)
{
    sq_t *s = h;
    if (!s)
        return;
    for (int i = 0; i < DB_STMT_CACHE; i++)
        if (s->cache.stmt[i])
            sqlite3_finalize(s->cache.stmt[i]);
    sqlite3_close_v2(s->db);
    free(s);
}

static int sq_script(void *h, const char *sql, bool *broken, err_t *e)
{
    (void)broken;
    sq_t *s = h;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return map_err(s->db, rc, "script", e);
    return 0;
}

static int sq_connect(const char *target, void **h, err_t *e)
{
    sq_t *s = xcalloc(1, sizeof *s);
    int rc = sqlite3_open_v2(target, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                                 SQLITE_OPEN_EXRESCODE,
                             NULL);
    if (rc != SQLITE_OK) {
        err_set(e, -EIO, "open sqlite %s: %s", target, s->db ? sqlite3_errmsg(s->db) : "oom");
        sq_disconnect(s);
        return -EIO;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, 5000);
    /* WAL lets readers run beside the one writer; NORMAL sync is durable at checkpoints and
     * never corrupts; foreign keys are off by default in SQLite and must be asked for. */
    rc = sq_script(s,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                   "PRAGMA foreign_keys=ON;",
                   NULL, e);
    if (rc < 0) {
        sq_disconnect(s);
        return err_wrap(e, "configure sqlite");
    }
    *h = s;
    return 0;
}

static int sq_exec(void *h, const char *sql, bool cache, int n, const char *const *params,
                   db_row_fn fn, void *ud, bool *broken, err_t *e)
{
    (void)broken;
    sq_t *s = h;
    sqlite3_stmt *st = NULL;
    int slot = -1;
    bool hit = false;
    if (cache)
        slot = db__cache_slot(&s->cache, sql, &hit);
    if (hit) {
        st = s->cache.stmt[slot];
    } else {
        int rc = sqlite3_prepare_v3(s->db, sql, -1, slot >= 0 ? SQLITE_PREPARE_PERSISTENT : 0, &st,
                                    NULL);
        if (rc != SQLITE_OK)
            return map_err(s->db, rc, "prepare", e);
        if (slot >= 0) {
            s->cache.sql[slot] = sql;
            s->cache.stmt[slot] = st;
        }
    }
    int ret = 0;
    for (int i = 0; i < n; i++) {
        int rc = params[i] ? sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_STATIC)
                           : sqlite3_bind_null(st, i + 1);
        if (rc != SQLITE_OK) {
            ret = map_err(s->db, rc, "bind", e);
            goto out;
        }
    }
    int ncol = sqlite3_column_count(st);
    const char *vals[32];
    if (ncol > 32)
        ncol = 32;
    int rows = 0;
    for (;;) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW) {
            ret = map_err(s->db, rc, "step", e);
            goto out;
        }
        rows++;
        if (!fn)
            continue;
        for (int i = 0; i < ncol; i++)
            vals[i] = sqlite3_column_type(st, i) == SQLITE_NULL
                          ? NULL
                          : (const char *)sqlite3_column_text(st, i);
        int cb = fn(ud, ncol, vals);
        if (cb < 0) {
            ret = cb;
            goto out;
        }
    }
    ret = sqlite3_stmt_readonly(st) || rows ? rows : sqlite3_changes(s->db);
out:
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (slot < 0)
        sqlite3_finalize(st);
    return ret;
}

const db_ops_t db__sqlite_ops = {
    .engine = DB_SQLITE,
    .begin_sql = "BEGIN IMMEDIATE",
    .connect = sq_connect,
    .disconnect = sq_disconnect,
    .exec = sq_exec,
    .script = sq_script,
};
