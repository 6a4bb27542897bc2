/* PostgreSQL engine on libpq: text parameters and results, statements prepared once per
 * connection, `?` placeholders rewritten to `$n`. */
#include "db_engine.h"
#include "log.h"
#include "xalloc.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pg {
    PGconn *conn;
    db_stmt_cache_t cache; /* stmt holds the statement name (malloc'd) */
    unsigned next;
} pg_t;

/* '?' → '$n' outside quoted strings and identifiers. */
static char *rewrite(const char *sql)
{
    size_t len = strlen(sql);
    char *out = xmalloc(len * 4 + 1);
    size_t j = 0;
    int n = 0;
    char quote = 0;
    for (const char *p = sql; *p; p++) {
        if (quote) {
            if (*p == quote)
                quote = 0;
            out[j++] = *p;
        } else if (*p == '\'' || *p == '"') {
            quote = *p;
            out[j++] = *p;
        } else if (*p == '?') {
            j += (size_t)sprintf(out + j, "$%d", ++n);
        } else {
            out[j++] = *p;
        }
    }
    out[j] = '\0';
    return out;
}

static int map_res(pg_t *p, PGresult *res, const char *what, bool *broken, err_t *e)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg)
        msg = PQerrorMessage(p->conn);
    if (PQstatus(p->conn) != CONNECTION_OK) {
        *broken = true;
        return err_set(e, -EIO, "%s: postgres connection lost", what);
    }
    if (state) {
        if (!strcmp(state, "23505"))
            return err_set(e, -EEXIST, "%s: unique violation: %s", what, msg);
        if (!strcmp(state, "23503"))
            return err_set(e, -ENOENT, "%s: foreign key violation", what);
        if (!strncmp(state, "22", 2) || !strcmp(state, "23502") || !strcmp(state, "23514"))
            return err_set(e, -EINVAL, "%s: bad value: %s", what, msg);
        if (!strcmp(state, "40001") || !strcmp(state, "40P01") || !strcmp(state, "55P03"))
            return err_set(e, -EAGAIN, "%s: retry: %s", what, msg);
    }
    return err_set(e, -EIO, "%s: postgres %s: %s", what, state ? state : "", msg);
}

static void pg_disconnect(void *h)
{
    pg_t *p = h;
    if (!p)
        return;
    for (int i = 0; i < DB_STMT_CACHE; i++)
        free(p->cache.stmt[i]);
    PQfinish(p->conn);
    free(p);
}

static int pg_script(void *h, const char *sql, bool *broken, err_t *e)
{
    pg_t *p = h;
    PGresult *res = PQexec(p->conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = map_res(p, res, "script", broken, e);
    PQclear(res);
    return rc;
}

static void notice_quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static int pg_connect(const char *target, void **h, err_t *e)
{
    pg_t *p = xcalloc(1, sizeof *p);
    p->conn = PQconnectdb(target);
    if (!p->conn || PQstatus(p->conn) != CONNECTION_OK) {
        /* The message may contain the host but never the password. */
        char msg[160];
        snprintf(msg, sizeof msg, "%s", p->conn ? PQerrorMessage(p->conn) : "oom");
        msg[strcspn(msg, "\n")] = '\0';
        err_set(e, -EIO, "connect postgres: %s", msg);
        pg_disconnect(p);
        return -EIO;
    }
    PQsetNoticeProcessor(p->conn, notice_quiet, NULL);
    bool broken = false;
    int rc = pg_script(p, "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'", &broken, e);
    if (rc < 0) {
        pg_disconnect(p);
        return rc;
    }
    *h = p;
    return 0;
}

static int pg_exec(void *h, const char *sql, bool cache, int n, const char *const *params,
                   db_row_fn fn, void *ud, bool *broken, err_t *e)
{
    pg_t *p = h;
    PGresult *res = NULL;
    int slot = -1;
    bool hit = false;
    int ret = 0;
    if (cache)
        slot = db__cache_slot(&p->cache, sql, &hit);
    if (slot >= 0) {
        if (!hit) {
            char name[32];
            snprintf(name, sizeof name, "s%u", p->next++);
            char *q = rewrite(sql);
            res = PQprepare(p->conn, name, q, 0, NULL);
            free(q);
            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                ret = map_res(p, res, "prepare", broken, e);
                goto out;
            }
            PQclear(res);
            res = NULL;
            p->cache.sql[slot] = sql;
            p->cache.stmt[slot] = xstrdup(name);
        }
        res = PQexecPrepared(p->conn, p->cache.stmt[slot], n, params, NULL, NULL, 0);
    } else {
        char *q = rewrite(sql);
        res = PQexecParams(p->conn, q, n, NULL, params, NULL, NULL, 0);
        free(q);
    }
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK) {
        int rows = PQntuples(res), ncol = PQnfields(res);
        const char *vals[32];
        if (ncol > 32)
            ncol = 32;
        for (int r = 0; r < rows && fn; r++) {
            for (int c = 0; c < ncol; c++)
                vals[c] = PQgetisnull(res, r, c) ? NULL : PQgetvalue(res, r, c);
            int cb = fn(ud, ncol, vals);
            if (cb < 0) {
                ret = cb;
                goto out;
            }
        }
        ret = rows;
    } else if (st == PGRES_COMMAND_OK) {
        const char *t = PQcmdTuples(res);
        ret = t && *t ? atoi(t) : 0;
    } else {
        ret = map_res(p, res, "exec", broken, e);
    }
out:
    PQclear(res);
    return ret;
}

const db_ops_t db__pg_ops = {
    .engine = DB_PG,
    .begin_sql = "BEGIN",
    .connect = pg_connect,
    .disconnect = pg_disconnect,
    .exec = pg_exec,
    .script = pg_script,
};
