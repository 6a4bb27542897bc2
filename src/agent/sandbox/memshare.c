/* Shared RAM files: one read-only memfs per snapshot map, for every VM restored from that map.
 *
 * A restored VM maps its RAM file private (vmm.h, mem_private): it never writes the file, so
 * the file can be shared. Every VM restored from one map (the clones of a template, a fork's
 * parent and children) maps the same memfs file, and what they only read is in the page cache
 * once. memfs refuses writes and shared mappings of it (memfs.h, read-only), so no VM can
 * change what another one reads.
 *
 * An instance lives in <root>/memfs/<map id>/: layers/ (hard links of the map's layers and its
 * mem.hdr, so it outlives the template or sandbox it was made for), mnt/ (the mount; the file is
 * mnt/mem), memfs.log, and `server` ("<pid> <start time>"). A sandbox's record names its
 * instance (memfsKey). The manager counts users in memory and stops an instance when its last
 * user is gone; after an agent restart the counts are rebuilt from the records it adopted, and
 * instances nobody uses any more are stopped.
 *
 * Spawning a server (~10-20 ms) and stopping one (up to MSHARE_TIMEOUT_MS when its mount is
 * busy) happen without ms_lock: the entry is marked starting or stopping meanwhile, and whoever
 * wants that map waits on ms_cond, so restores from other maps are never held up by them.
 */
#include "memfs/memfs.h"
#include "mem/mem.h"
#include "sandbox_int.h"

#include "log.h"
#include "procfs.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSHARE_TIMEOUT_MS 15000

enum ms_state {
    MS_READY,    /* pid serves it (or pid 0: its start failed while broken users remained) */
    MS_STARTING, /* a server is being spawned; wait for the entry to change */
    MS_STOPPING, /* its server is being stopped and its directory removed; then it goes */
};

struct sbx_mshare {
    char key[33]; /* the map id, hex */
    pid_t pid;    /* its memfs server */
    uint64_t start;
    int pidfd; /* of a server this agent spawned (its child, to reap once dead); else -1 */
    int refs;  /* sandboxes whose VM maps it (also those whose server died under them) */
    enum ms_state st;
};

/* <root>/memfs[/key[/sub]] */
static void inst_dir(const sbx_mgr_t *m, const char *key, const char *sub, char *buf, size_t n)
{
    if (!key)
        snprintf(buf, n, "%s/memfs", m->root);
    else if (!sub)
        snprintf(buf, n, "%s/memfs/%s", m->root, key);
    else
        snprintf(buf, n, "%s/memfs/%s/%s", m->root, key, sub);
}

void sbx__mshare_mem_path(const sbx_mgr_t *m, const char *key, char *buf, size_t n)
{
    inst_dir(m, key, "mnt/mem", buf, n);
}

/* The entry of key (ms_lock held), or NULL. */
static struct sbx_mshare *find(sbx_mgr_t *m, const char *key)
{
    for (size_t i = 0; i < m->nms; i++)
        if (strcmp(m->ms[i].key, key) == 0)
            return &m->ms[i];
    return NULL;
}

static bool alive(const struct sbx_mshare *x)
{
    /* start 0: its start time could not be read (it was gone already), so it is not alive. */
    return x->pid > 0 && x->start != 0 && procfs_start_time(x->pid) == x->start;
}

/* A server of ours that died stays a zombie until reaped: reap exactly that process (by its
 * pidfd; never by a pid number that may be someone else's by now). Harmless when memfs_stop
 * reaped it already. (ms_lock held.) */
static void reap(struct sbx_mshare *x)
{
    if (x->pidfd < 0)
        return;
    siginfo_t si;
    if (!alive(x))
        waitid(P_PIDFD, (id_t)x->pidfd, &si, WEXITED | WNOHANG);
    close(x->pidfd);
    x->pidfd = -1;
}

/* Forget the entry of key (ms_lock held). */
static void forget(sbx_mgr_t *m, const char *key)
{
    for (size_t i = 0; i < m->nms; i++)
        if (strcmp(m->ms[i].key, key) == 0) {
            m->ms[i] = m->ms[--m->nms];
            break;
        }
}

/* Stop key's server (pid may be 0: only what is left is removed) and remove its directory. The
 * entry is the caller's business. */
static void stop_instance(sbx_mgr_t *m, const char *key, pid_t pid)
{
    char mnt[PATH_MAX], dir[PATH_MAX];
    inst_dir(m, key, "mnt", mnt, sizeof mnt);
    inst_dir(m, key, NULL, dir, sizeof dir);
    err_t e = {0};
    if (memfs_stop(mnt, pid, MSHARE_TIMEOUT_MS, &e) < 0)
        log_warn("memshare.stop_failed", "key=%s err=\"%s\"", key, e.msg);
    umount2(mnt, MNT_DETACH); /* a dead server's mount; EINVAL when there is none */
    sbx__rmrf(dir);
    log_info("memshare.stopped", "key=%s", key);
}

/* Make the instance of map (from the snapshot in snap), replacing what a dead or failed one
 * left, and start its server (without ms_lock: the entry is MS_STARTING). */
static int start(sbx_mgr_t *m, const char *key, const char *snap, const mem_map_t *map,
                 pid_t *out_pid, uint64_t *out_start, err_t *e)
{
    int64_t t0 = sbx__mono_ms();
    char dir[PATH_MAX], layers[PATH_MAX], mnt[PATH_MAX], hdr[PATH_MAX], log[PATH_MAX],
        srv[PATH_MAX];
    inst_dir(m, NULL, NULL, dir, sizeof dir);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return err_errno(e, "create memfs directory");
    inst_dir(m, key, NULL, dir, sizeof dir);
    inst_dir(m, key, "layers", layers, sizeof layers);
    inst_dir(m, key, "mnt", mnt, sizeof mnt);
    inst_dir(m, key, "layers/mem.hdr", hdr, sizeof hdr);
    inst_dir(m, key, "memfs.log", log, sizeof log);
    inst_dir(m, key, "server", srv, sizeof srv);
    umount2(mnt, MNT_DETACH);
    sbx__rmrf(dir); /* what a failed start left */
    int rc = 0;
    if (mkdir(dir, 0711) < 0 || mkdir(layers, 0700) < 0 || mkdir(mnt, 0755) < 0) {
        rc = err_errno(e, "create memfs instance");
        goto fail;
    }
    if ((rc = mem_link_layers(map, snap, layers, e)) < 0 || (rc = mem_map_save(map, hdr, e)) < 0)
        goto fail;
    memfs_opts_t o = {.map = hdr, .layers = layers, .mount = mnt, .log = log, .ready_fd = -1};
    pid_t pid = 0;
    if ((rc = memfs_spawn(&o, MSHARE_TIMEOUT_MS, &pid, e)) < 0)
        goto fail;
    uint64_t st = procfs_start_time(pid);
    if (st == 0) { /* it died right after saying it was ready */
        rc = err_set(e, -ESRCH, "memfs server %d exited at start (see %s)", (int)pid, log);
        err_t se = {0};
        memfs_stop(mnt, pid, MSHARE_TIMEOUT_MS, &se);
        goto fail;
    }
    FILE *f = fopen(srv, "we");
    if (!f || fprintf(f, "%d %" PRIu64 "\n", (int)pid, st) < 0 || fclose(f) != 0) {
        if (f)
            fclose(f);
        rc = err_errno(e, "write memfs server file");
        err_t se = {0};
        memfs_stop(mnt, pid, MSHARE_TIMEOUT_MS, &se);
        goto fail;
    }
    *out_pid = pid;
    *out_start = st;
    log_info("memshare.started", "key=%s pid=%d dur_ms=%lld", key, (int)pid,
             (long long)(sbx__mono_ms() - t0));
    return 0;
fail:
    umount2(mnt, MNT_DETACH);
    sbx__rmrf(dir);
    return rc;
}

int sbx__mshare_acquire(sbx_mgr_t *m, sbx_t *s, const char *snap, const mem_map_t *map, err_t *e)
{
    char key[33];
    mem_id_hex(&map->id, key);
    pthread_mutex_lock(&m->ms_lock);
    int rc = 0;
    for (;;) {
        struct sbx_mshare *x = find(m, key);
        if (x && x->st != MS_READY) {
            pthread_cond_wait(&m->ms_cond, &m->ms_lock);
            continue;
        }
        if (x && alive(x)) {
            x->refs++;
            break;
        }
        if (x) {
            /* Its server died: the VMs on it are broken anyway; a new server serves new ones.
             * Their users still count (they release the key when they go). */
            log_warn("memshare.server_gone", "key=%s pid=%d users=%d", key, (int)x->pid, x->refs);
            reap(x);
            x->st = MS_STARTING;
        } else {
            m->ms = xrealloc(m->ms, (m->nms + 1) * sizeof *m->ms);
            x = &m->ms[m->nms++];
            *x = (struct sbx_mshare){.st = MS_STARTING, .pidfd = -1};
            snprintf(x->key, sizeof x->key, "%s", key);
        }
        pthread_mutex_unlock(&m->ms_lock);
        pid_t pid = 0;
        uint64_t st = 0;
        rc = start(m, key, snap, map, &pid, &st, e);
        pthread_mutex_lock(&m->ms_lock);
        x = find(m, key); /* still ours: nobody else changes a starting entry but its refs */
        x->pid = pid;
        x->start = st;
        x->pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
        x->st = MS_READY;
        if (rc == 0)
            x->refs++;
        else if (x->refs <= 0)
            forget(m, key);
        pthread_cond_broadcast(&m->ms_cond);
        break;
    }
    if (rc == 0) {
        struct sbx_mshare *x = find(m, key);
        snprintf(s->memfs_key, sizeof s->memfs_key, "%s", key);
        s->ms_pid = x->pid;
        s->ms_start = x->start;
        sbx__mshare_mem_path(m, key, s->mem_path, sizeof s->mem_path);
    }
    pthread_mutex_unlock(&m->ms_lock);
    return rc;
}

bool sbx__mshare_serves(sbx_mgr_t *m, const sbx_t *s)
{
    if (!s->memfs_key[0])
        return true; /* not on a shared instance */
    pthread_mutex_lock(&m->ms_lock);
    const struct sbx_mshare *x = find(m, s->memfs_key);
    bool ok = x && x->st == MS_READY && x->pid == s->ms_pid && x->start == s->ms_start && alive(x);
    pthread_mutex_unlock(&m->ms_lock);
    return ok;
}

void sbx__mshare_release(sbx_mgr_t *m, sbx_t *s)
{
    if (!s->memfs_key[0])
        return;
    char key[33];
    snprintf(key, sizeof key, "%s", s->memfs_key);
    s->memfs_key[0] = '\0';
    pthread_mutex_lock(&m->ms_lock);
    struct sbx_mshare *x = find(m, key);
    /* A starting entry (its server died under these users) only counts down: its starter
     * decides what becomes of it. While an agent restart rebuilds the counts, one adopted
     * sandbox found dead must not stop a server that others still to be adopted use: prune
     * stops what is unused at the end. */
    if (x && --x->refs <= 0 && x->st == MS_READY && !m->ms_recovering) {
        x->st = MS_STOPPING;
        pid_t pid = alive(x) ? x->pid : 0; /* never signal a pid that may be someone else's */
        pthread_mutex_unlock(&m->ms_lock);
        stop_instance(m, key, pid);
        pthread_mutex_lock(&m->ms_lock);
        x = find(m, key);
        reap(x);
        forget(m, key);
        pthread_cond_broadcast(&m->ms_cond);
    }
    pthread_mutex_unlock(&m->ms_lock);
}

/* ---- after an agent restart ------------------------------------------------------------------ */

void sbx__mshare_load(sbx_mgr_t *m)
{
    char dir[PATH_MAX];
    inst_dir(m, NULL, NULL, dir, sizeof dir);
    pthread_mutex_lock(&m->ms_lock);
    m->ms_recovering = true;
    pthread_mutex_unlock(&m->ms_lock);
    DIR *d = opendir(dir);
    if (!d)
        return;
    pthread_mutex_lock(&m->ms_lock);
    struct dirent *de;
    while ((de = readdir(d))) {
        mem_id_t id;
        if (strlen(de->d_name) != 32 || mem_id_parse(de->d_name, &id) < 0)
            continue;
        char srv[PATH_MAX];
        inst_dir(m, de->d_name, "server", srv, sizeof srv);
        struct sbx_mshare n = {.pidfd = -1}; /* not our child: an earlier agent spawned it */
        snprintf(n.key, sizeof n.key, "%s", de->d_name);
        FILE *f = fopen(srv, "re");
        int pid = 0;
        if (f && fscanf(f, "%d %" SCNu64, &pid, &n.start) == 2)
            n.pid = (pid_t)pid;
        if (f)
            fclose(f);
        m->ms = xrealloc(m->ms, (m->nms + 1) * sizeof *m->ms);
        m->ms[m->nms++] = n;
    }
    closedir(d);
    pthread_mutex_unlock(&m->ms_lock);
}

int sbx__mshare_adopt(sbx_mgr_t *m, sbx_t *s, err_t *e)
{
    pthread_mutex_lock(&m->ms_lock);
    struct sbx_mshare *x = find(m, s->memfs_key);
    int rc = 0;
    if (!x || !alive(x))
        rc = err_set(e, -ESRCH, "the memfs server of its RAM is gone");
    else {
        x->refs++;
        s->ms_pid = x->pid;
        s->ms_start = x->start;
        sbx__mshare_mem_path(m, s->memfs_key, s->mem_path, sizeof s->mem_path);
    }
    pthread_mutex_unlock(&m->ms_lock);
    if (rc < 0)
        s->memfs_key[0] = '\0';
    return rc;
}

void sbx__mshare_prune(sbx_mgr_t *m)
{
    /* At start-up, before anything is served: holding ms_lock throughout is harmless. */
    pthread_mutex_lock(&m->ms_lock);
    for (size_t i = m->nms; i-- > 0;) {
        struct sbx_mshare *x = &m->ms[i];
        bool up = alive(x);
        if (x->refs > 0 && up)
            continue;
        char key[33];
        snprintf(key, sizeof key, "%s", x->key);
        log_warn("memshare.reap", "key=%s users=%d server_alive=%d", key, x->refs, up);
        stop_instance(m, key, up ? x->pid : 0);
        reap(x);
        forget(m, key);
    }
    m->ms_recovering = false;
    pthread_mutex_unlock(&m->ms_lock);
}

void sbx__mshare_fini(sbx_mgr_t *m)
{
    for (size_t i = 0; i < m->nms; i++)
        if (m->ms[i].pidfd >= 0)
            close(m->ms[i].pidfd);
    free(m->ms);
    m->ms = NULL;
    m->nms = 0;
}
