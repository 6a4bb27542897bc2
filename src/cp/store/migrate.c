#include "migrate.h"
#include "cp_util.h"
#include "embedded.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

static const char SQL_TABLE[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at TEXT NOT NULL)";
static const char SQL_APPLIED[] = "SELECT version, applied_at FROM schema_migrations";
static const char SQL_MAX[] = "SELECT MAX(version) FROM schema_migrations";
static const char SQL_INSERT[] =
    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)";
static const char SQL_DELETE[] = "DELETE FROM schema_migrations WHERE version = ?";

static const cp_migration_t *table_for(db_conn_t *c)
{
    return db_conn_engine(c) == DB_PG ? cp_migrations_postgres : cp_migrations_sqlite;
}

/* Take the cross-process lock (PostgreSQL) and make sure the bookkeeping table exists. */
static int prepare(db_conn_t *c, err_t *e)
{
    if (db_conn_engine(c) == DB_PG) {
        int rc = db_script(c, "SELECT pg_advisory_lock(5141412)", e);
        if (rc < 0)
            return err_wrap(e, "migration lock");
    }
    return db_script(c, SQL_TABLE, e);
}

static void finish(db_conn_t *c)
{
    if (db_conn_engine(c) == DB_PG) {
        err_t e = {0};
        db_script(c, "SELECT pg_advisory_unlock(5141412)", &e);
    }
}

static int max_version(db_conn_t *c, int *out, err_t *e)
{
    db_row1_t r = {0};
    int rc = db_exec(c, SQL_MAX, 0, NULL, db_row1_fn, &r, e);
    if (rc >= 0)
        *out = r.found && r.v[0] ? atoi(r.v[0]) : 0;
    db_row1_fini(&r);
    return rc < 0 ? rc : 0;
}

int migrate_up(db_t *db, err_t *e)
{
    db_conn_t *c = NULL;
    int rc = db_acquire(db, &c, e);
    if (rc < 0)
        return rc;
    int applied = 0;
    rc = prepare(c, e);
    if (rc < 0)
        goto out;
    int cur = 0;
    rc = max_version(c, &cur, e);
    if (rc < 0)
        goto out;
    for (const cp_migration_t *m = table_for(c); m->version; m++) {
        if (m->version <= cur)
            continue;
        char ver[16], now[CP_TIME_LEN];
        snprintf(ver, sizeof ver, "%d", m->version);
        cp_time_fmt(cp_now_us(), now);
        const char *p[] = {ver, m->name, now};
        if ((rc = db_begin(c, e)) < 0 || (rc = db_script(c, m->up, e)) < 0 ||
            (rc = db_exec(c, SQL_INSERT, 3, p, NULL, NULL, e)) < 0 || (rc = db_commit(c, e)) < 0) {
            err_wrap(e, "migration %04d_%s up", m->version, m->name);
            goto out;
        }
        log_info("cp.migrated", "version=%d name=%s dir=up", m->version, m->name);
        applied++;
    }
    rc = applied;
out:
    finish(c);
    db_release(c);
    return rc;
}

int migrate_down(db_t *db, err_t *e)
{
    db_conn_t *c = NULL;
    int rc = db_acquire(db, &c, e);
    if (rc < 0)
        return rc;
    rc = prepare(c, e);
    if (rc < 0)
        goto out;
    int cur = 0;
    rc = max_version(c, &cur, e);
    if (rc < 0 || cur == 0)
        goto out;
    const cp_migration_t *m = table_for(c);
    while (m->version && m->version != cur)
        m++;
    if (!m->version) {
        rc = err_set(e, -ENOENT, "applied migration %d is unknown to this binary", cur);
        goto out;
    }
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *p[] = {ver};
    if ((rc = db_begin(c, e)) < 0 || (rc = db_script(c, m->down, e)) < 0 ||
        (rc = db_exec(c, SQL_DELETE, 1, p, NULL, NULL, e)) < 0 || (rc = db_commit(c, e)) < 0) {
        err_wrap(e, "migration %04d_%s down", m->version, m->name);
        goto out;
    }
    log_info("cp.migrated", "version=%d name=%s dir=down", m->version, m->name);
    rc = 1;
out:
    finish(c);
    db_release(c);
    return rc;
}

struct applied {
    int n;
    int ver[256];
    char at[256][CP_TIME_LEN + 8];
};

static int applied_row(void *ud, int ncol, const char *const *v)
{
    (void)ncol;
    struct applied *a = ud;
    if (a->n < 256 && v[0]) {
        a->ver[a->n] = atoi(v[0]);
        snprintf(a->at[a->n], sizeof a->at[0], "%s", v[1] ? v[1] : "");
        a->n++;
    }
    return 0;
}

int migrate_status(db_t *db, FILE *out, err_t *e)
{
    db_conn_t *c = NULL;
    int rc = db_acquire(db, &c, e);
    if (rc < 0)
        return rc;
    struct applied *a = calloc(1, sizeof *a);
    if (!a)
        abort();
    rc = prepare(c, e);
    if (rc >= 0)
        rc = db_exec(c, SQL_APPLIED, 0, NULL, applied_row, a, e);
    if (rc < 0)
        goto out;
    for (const cp_migration_t *m = table_for(c); m->version; m++) {
        const char *at = "pending";
        for (int i = 0; i < a->n; i++)
            if (a->ver[i] == m->version)
                at = a->at[i];
        fprintf(out, "%04d %-24s %s\n", m->version, m->name, at);
    }
    rc = 0;
out:
    free(a);
    finish(c);
    db_release(c);
    return rc;
}
