/* The connection pool and the engine-independent half of the database layer. */
#include "db.h"
#include "db_engine.h"
#include "log.h"
#include "xalloc.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct db_conn {
    db_t *db;
    void *h;
    bool in_tx;
    bool broken;
};

struct db {
    const db_ops_t *ops;
    char *target;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    db_conn_t **idle;
    int nidle;
    int open;
    int max;
};

int db__cache_slot(db_stmt_cache_t *c, const char *sql, bool *hit)
{
    uintptr_t h = (uintptr_t)sql;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15ull;
    unsigned start = (unsigned)(h >> 40) % DB_STMT_CACHE;
    for (unsigned i = 0; i < DB_STMT_CACHE; i++) {
        unsigned s = (start + i) % DB_STMT_CACHE;
        if (c->sql[s] == sql) {
            *hit = true;
            return (int)s;
        }
        if (!c->sql[s]) {
            *hit = false;
            return (int)s;
        }
    }
    *hit = false;
    return -1;
}

static const char *strip_prefix(const char *target, const db_ops_t **ops)
{
    if (strncmp(target, "postgres://", 11) == 0 || strncmp(target, "postgresql://", 13) == 0) {
        *ops = &db__pg_ops;
        return target;
    }
    *ops = &db__sqlite_ops;
    if (strncmp(target, "sqlite://", 9) == 0)
        return target + 9;
    if (strncmp(target, "sqlite:", 7) == 0)
        return target + 7;
    return target;
}

static int conn_new(db_t *db, db_conn_t **out, err_t *e)
{
    void *h = NULL;
    int rc = db->ops->connect(db->target, &h, e);
    if (rc < 0)
        return rc;
    db_conn_t *c = xcalloc(1, sizeof *c);
    c->db = db;
    c->h = h;
    *out = c;
    return 0;
}

int db_open(const char *target, int pool_max, db_t **out, err_t *e)
{
    if (!target || !*target)
        return err_set(e, -EINVAL, "empty database target");
    db_t *db = xcalloc(1, sizeof *db);
    db->target = xstrdup(strip_prefix(target, &db->ops));
    db->max = pool_max > 0 ? pool_max : 8;
    db->idle = xcalloc((size_t)db->max, sizeof *db->idle);
    pthread_mutex_init(&db->lock, NULL);
    pthread_cond_init(&db->cond, NULL);
    db_conn_t *c = NULL;
    int rc = conn_new(db, &c, e);
    if (rc < 0) {
        db->open = 0;
        db_close(db);
        return rc;
    }
    db->open = 1;
    db->idle[db->nidle++] = c;
    *out = db;
    return 0;
}

void db_close(db_t *db)
{
    if (!db)
        return;
    for (int i = 0; i < db->nidle; i++) {
        db->ops->disconnect(db->idle[i]->h);
        free(db->idle[i]);
    }
    free(db->idle);
    pthread_mutex_destroy(&db->lock);
    pthread_cond_destroy(&db->cond);
    free(db->target);
    free(db);
}

db_engine_t db_engine(const db_t *db)
{
    return db->ops->engine;
}

db_engine_t db_conn_engine(const db_conn_t *c)
{
    return c->db->ops->engine;
}

int db_acquire(db_t *db, db_conn_t **out, err_t *e)
{
    pthread_mutex_lock(&db->lock);
    for (;;) {
        if (db->nidle > 0) {
            *out = db->idle[--db->nidle];
            pthread_mutex_unlock(&db->lock);
            return 0;
        }
        if (db->open < db->max) {
            db->open++;
            pthread_mutex_unlock(&db->lock);
            /* Connect outside the lock: it is network I/O for PostgreSQL. */
            int rc = conn_new(db, out, e);
            if (rc < 0) {
                pthread_mutex_lock(&db->lock);
                db->open--;
                pthread_cond_signal(&db->cond);
                pthread_mutex_unlock(&db->lock);
            }
            return rc;
        }
        pthread_cond_wait(&db->cond, &db->lock);
    }
}

void db_release(db_conn_t *c)
{
    if (!c)
        return;
    db_t *db = c->db;
    if (c->in_tx)
        db_rollback(c);
    if (c->broken) {
        db->ops->disconnect(c->h);
        free(c);
        pthread_mutex_lock(&db->lock);
        db->open--;
    } else {
        pthread_mutex_lock(&db->lock);
        db->idle[db->nidle++] = c;
    }
    pthread_cond_signal(&db->cond);
    pthread_mutex_unlock(&db->lock);
}

int db_exec(db_conn_t *c, const char *sql, int n, const char *const *params, db_row_fn fn, void *ud,
            err_t *e)
{
    return c->db->ops->exec(c->h, sql, true, n, params, fn, ud, &c->broken, e);
}

int db_exec_dyn(db_conn_t *c, const char *sql, int n, const char *const *params, db_row_fn fn,
                void *ud, err_t *e)
{
    return c->db->ops->exec(c->h, sql, false, n, params, fn, ud, &c->broken, e);
}

int db_script(db_conn_t *c, const char *sql, err_t *e)
{
    return c->db->ops->script(c->h, sql, &c->broken, e);
}

int db_begin(db_conn_t *c, err_t *e)
{
    int rc = db_script(c, c->db->ops->begin_sql, e);
    if (rc >= 0)
        c->in_tx = true;
    return rc;
}

int db_commit(db_conn_t *c, err_t *e)
{
    int rc = db_script(c, "COMMIT", e);
    if (rc < 0) {
        db_rollback(c);
        return rc;
    }
    c->in_tx = false;
    return 0;
}

void db_rollback(db_conn_t *c)
{
    err_t e = {0};
    if (db_script(c, "ROLLBACK", &e) < 0)
        log_warn("db.rollback_failed", "err=\"%s\"", e.msg);
    c->in_tx = false;
}

int db_row1_fn(void *ud, int ncol, const char *const *vals)
{
    db_row1_t *r = ud;
    if (r->found)
        return 0;
    r->found = true;
    r->ncol = ncol < 16 ? ncol : 16;
    for (int i = 0; i < r->ncol; i++)
        r->v[i] = xstrdup(vals[i]);
    return 0;
}

void db_row1_fini(db_row1_t *r)
{
    for (int i = 0; i < r->ncol; i++)
        free(r->v[i]);
    memset(r, 0, sizeof *r);
}
