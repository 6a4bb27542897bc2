/* Warm pool: sandboxes restored ahead of time from snapshot templates that are in use.
 *
 * A create from a snapshot template restores a VM: QEMU's own start-up (100-250 ms here), the
 * restore, the guest's first touches of its memory and, under TCG, the translation of every code
 * path its first command runs. A pooled sandbox has done all that before anyone asks: it is
 * restored in a slot of its own, has run one command (`/bin/sh -c true`, which warms the paths
 * a first command takes) and is then stopped (QMP stop: no CPU while it waits). A create that
 * finds one takes it: the vCPUs go on, envd's /init gives it the caller's token, environment,
 * the host's clock and fresh entropy (as for every restore), and it gets the caller's id.
 *
 * After each create from a template the pool of that template is filled back to --pool-size
 * (default 2; 0 turns pooling off) by one thread, a moment later, so the refill does not compete
 * with the new sandbox's first commands. Pools of templates not used for POOL_IDLE_S, and of
 * templates that were deleted or replaced, are emptied by the reaper; DeleteSnapshot empties
 * its template's pool at once. A pooled sandbox whose VM died, or whose RAM's memfs server died
 * (every page it has not read yet is lost with it), is never given out: a create skips it, the
 * reaper destroys it and refills that pool only after the next create from the template (then
 * over a new server). Pooled
 * sandboxes are not listed. Their directory is named p-<hex> (kept when they are claimed: the VMM's
 * name and cgroup follow it); an agent that restarts destroys the ones still pooled.
 */
#include "sandbox_int.h"

#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define POOL_IDLE_S       600 /* a template's pool is emptied after this long without a create */
#define POOL_REFILL_DELAY 150 /* ms after a create before its pool is refilled */

typedef struct pool_ent {
    char tdir[PATH_MAX]; /* the template's directory */
    struct stat st;      /* its identity when the entry was made: a replaced template differs */
    sbx_t *s;            /* NULL while being made */
} pool_ent_t;

typedef struct pool_want {
    char tdir[PATH_MAX];
    int64_t used_ms; /* last create from it (monotonic) */
} pool_want_t;

struct sbx_pool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pool_ent_t *ents;
    size_t nents;
    pool_want_t *wants;
    size_t nwants;
    bool stop;
    pthread_t thread;
    bool started;
    unsigned size;
};

static bool same_template(const char *tdir, const struct stat *st)
{
    struct stat now;
    return stat(tdir, &now) == 0 && now.st_ino == st->st_ino && now.st_dev == st->st_dev;
}

static void destroy_pooled(sbx_mgr_t *m, sbx_t *s)
{
    pthread_mutex_lock(&s->lock);
    sbx__teardown(m, s, true);
    sbx__release_slot(m, s);
    pthread_mutex_unlock(&s->lock);
    log_info("pool.dropped", "name=%s", s->name);
    sbx__unref(m, s);
}

/* Whether a pooled sandbox can still be given out: its VM runs, and so does the memfs server
 * its RAM mapping goes through (when that died, the VM dies at its next touch of a page it has
 * not read yet, which may be long after a claim). */
static bool healthy(sbx_mgr_t *m, sbx_t *s)
{
    return sbx__vm_alive_cb(s->vm) && sbx__mshare_serves(m, s);
}

/* How many entries (ready or being made) tdir has; lock held. */
static unsigned count_for(const struct sbx_pool *p, const char *tdir)
{
    unsigned n = 0;
    for (size_t i = 0; i < p->nents; i++)
        if (strcmp(p->ents[i].tdir, tdir) == 0)
            n++;
    return n;
}

/* Whether an entry of tdir is being made (the filler's NULL entry); lock held. */
static bool making(const struct sbx_pool *p, const char *tdir)
{
    for (size_t i = 0; i < p->nents; i++)
        if (!p->ents[i].s && strcmp(p->ents[i].tdir, tdir) == 0)
            return true;
    return false;
}

/* Stop filling tdir's pool (until the next create from it); lock held. */
static void forget_want(struct sbx_pool *p, const char *tdir)
{
    for (size_t i = 0; i < p->nwants; i++)
        if (strcmp(p->wants[i].tdir, tdir) == 0) {
            p->wants[i] = p->wants[--p->nwants];
            return;
        }
}

/* The template most in need of an entry that is due, or -1; lock held. */
static long next_want(const struct sbx_pool *p, int64_t now)
{
    for (size_t i = 0; i < p->nwants; i++)
        if (now - p->wants[i].used_ms >= POOL_REFILL_DELAY &&
            count_for(p, p->wants[i].tdir) < p->size)
            return (long)i;
    return -1;
}

static void *filler_main(void *ud)
{
    sbx_mgr_t *m = ud;
    struct sbx_pool *p = m->pool;
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        int64_t now = sbx__mono_ms();
        long w = next_want(p, now);
        if (w < 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += POOL_REFILL_DELAY * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&p->cond, &p->lock, &ts);
            continue;
        }
        char tdir[PATH_MAX];
        snprintf(tdir, sizeof tdir, "%s", p->wants[w].tdir);
        struct stat st;
        if (stat(tdir, &st) < 0) { /* deleted meanwhile */
            p->wants[w] = p->wants[--p->nwants];
            continue;
        }
        p->ents = xrealloc(p->ents, (p->nents + 1) * sizeof *p->ents);
        pool_ent_t *ne = &p->ents[p->nents++];
        memset(ne, 0, sizeof *ne);
        snprintf(ne->tdir, sizeof ne->tdir, "%s", tdir);
        ne->st = st;
        pthread_mutex_unlock(&p->lock);

        sbx_t *s = NULL;
        err_t e = {0};
        int64_t t0 = sbx__mono_ms();
        int rc = sbx__pool_make(m, tdir, &s, &e);

        pthread_mutex_lock(&p->lock);
        /* Our entry is the only NULL one. */
        size_t i = 0;
        while (i < p->nents && p->ents[i].s)
            i++;
        bool keep =
            rc == 0 && !p->stop && i < p->nents && same_template(tdir, &st) && healthy(m, s);
        if (keep) {
            p->ents[i].s = s;
            log_info("pool.filled", "template=%s name=%s dur_ms=%lld", tdir, s->name,
                     (long long)(sbx__mono_ms() - t0));
        } else if (i < p->nents) {
            p->ents[i] = p->ents[--p->nents];
        }
        pthread_cond_broadcast(&p->cond);
        if (rc < 0) {
            log_warn("pool.fill_failed", "template=%s err=\"%s\"", tdir, e.msg);
            forget_want(p, tdir); /* no retry at once: the next create asks again */
        }
        if (!keep && s) {
            pthread_mutex_unlock(&p->lock);
            destroy_pooled(m, s);
            pthread_mutex_lock(&p->lock);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int sbx__pool_init(sbx_mgr_t *m, unsigned size)
{
    struct sbx_pool *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    sbx__cond_init_mono(&p->cond);
    p->size = size;
    m->pool = p;
    if (size == 0)
        return 0;
    if (pthread_create(&p->thread, NULL, filler_main, m) != 0)
        return -EAGAIN;
    p->started = true;
    return 0;
}

void sbx__pool_fini(sbx_mgr_t *m)
{
    struct sbx_pool *p = m->pool;
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    if (p->started)
        pthread_join(p->thread, NULL);
    /* Nobody can claim them any more: they go now rather than at the next start. */
    for (size_t i = 0; i < p->nents; i++)
        if (p->ents[i].s)
            destroy_pooled(m, p->ents[i].s);
    free(p->ents);
    free(p->wants);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
    m->pool = NULL;
}

sbx_t *sbx__pool_take(sbx_mgr_t *m, const char *tdir)
{
    struct sbx_pool *p = m->pool;
    if (!p || p->size == 0)
        return NULL;
    pthread_mutex_lock(&p->lock);
    sbx_t *s = NULL;
    /* An unhealthy entry is skipped, not destroyed here: that may take seconds (a wedged VM),
     * which this create must not wait for. The reaper drops it within a tick. */
    for (size_t i = 0; i < p->nents; i++)
        if (p->ents[i].s && strcmp(p->ents[i].tdir, tdir) == 0 &&
            same_template(tdir, &p->ents[i].st) && healthy(m, p->ents[i].s)) {
            s = p->ents[i].s;
            p->ents[i] = p->ents[--p->nents];
            break;
        }
    pthread_mutex_unlock(&p->lock);
    return s;
}

void sbx__pool_want(sbx_mgr_t *m, const char *tdir)
{
    struct sbx_pool *p = m->pool;
    if (!p || p->size == 0)
        return;
    pthread_mutex_lock(&p->lock);
    size_t i = 0;
    while (i < p->nwants && strcmp(p->wants[i].tdir, tdir) != 0)
        i++;
    if (i == p->nwants) {
        p->wants = xrealloc(p->wants, (p->nwants + 1) * sizeof *p->wants);
        snprintf(p->wants[i].tdir, sizeof p->wants[i].tdir, "%s", tdir);
        p->nwants++;
    }
    p->wants[i].used_ms = sbx__mono_ms();
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

/* Take out and destroy the ready entries of tdir (after waiting for one being made of it), or,
 * with tdir NULL, those of templates not used lately, deleted or replaced, and those that are
 * no longer healthy. */
static void drain(sbx_mgr_t *m, const char *tdir)
{
    struct sbx_pool *p = m->pool;
    if (!p)
        return;
    sbx_t **out = NULL;
    size_t nout = 0;
    int64_t now = sbx__mono_ms();
    pthread_mutex_lock(&p->lock);
    if (tdir) {
        forget_want(p, tdir);
        while (making(p, tdir))
            pthread_cond_wait(&p->cond, &p->lock);
    }
    char(*sick)[PATH_MAX] = NULL;
    size_t nsick = 0;
    for (size_t i = 0; i < p->nents;) {
        pool_ent_t *x = &p->ents[i];
        bool go = false;
        if (x->s) {
            if (tdir)
                go = strcmp(x->tdir, tdir) == 0;
            else {
                bool wanted = false;
                for (size_t k = 0; k < p->nwants; k++)
                    if (strcmp(p->wants[k].tdir, x->tdir) == 0 &&
                        now - p->wants[k].used_ms < POOL_IDLE_S * 1000LL)
                        wanted = true;
                go = !wanted || !same_template(x->tdir, &x->st);
                if (!go && !healthy(m, x->s)) {
                    log_warn("pool.unhealthy", "template=%s name=%s", x->tdir, x->s->name);
                    sick = xrealloc(sick, (nsick + 1) * sizeof *sick);
                    snprintf(sick[nsick++], sizeof *sick, "%s", x->tdir);
                    go = true;
                }
            }
        }
        if (!go) {
            i++;
            continue;
        }
        out = xrealloc(out, (nout + 1) * sizeof *out);
        out[nout++] = x->s;
        *x = p->ents[--p->nents];
    }
    /* Not refilled at once: what killed it (the OOM killer, a dying server) would likely kill
     * the next one too. The next create from the template asks again, as after a failed fill. */
    for (size_t k = 0; k < nsick; k++)
        forget_want(p, sick[k]);
    free(sick);
    if (!tdir) {
        for (size_t k = 0; k < p->nwants;) {
            if (now - p->wants[k].used_ms >= POOL_IDLE_S * 1000LL)
                p->wants[k] = p->wants[--p->nwants];
            else
                k++;
        }
    }
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < nout; i++)
        destroy_pooled(m, out[i]);
    free(out);
}

void sbx__pool_drop_template(sbx_mgr_t *m, const char *tdir)
{
    drain(m, tdir);
}

void sbx__pool_reap(sbx_mgr_t *m)
{
    drain(m, NULL);
}
