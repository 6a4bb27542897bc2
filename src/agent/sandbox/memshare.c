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
#include <unistd.h>

#define MSHARE_TIMEOUT_MS 15000

struct sbx_mshare {
    char key[33]; /* the map id, hex */
    pid_t pid;    /* its memfs server */
    uint64_t start;
    int refs; /* sandboxes whose VM maps it */
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

/* Stop key's server (pid may be 0: only what is left is removed), remove its directory, and
 * drop its entry (ms_lock held). */
static void drop(sbx_mgr_t *m, const char *key, pid_t pid)
{
    char mnt[PATH_MAX], dir[PATH_MAX];
    inst_dir(m, key, "mnt", mnt, sizeof mnt);
    inst_dir(m, key, NULL, dir, sizeof dir);
    err_t e = {0};
    if (memfs_stop(mnt, pid, MSHARE_TIMEOUT_MS, &e) < 0)
        log_warn("memshare.stop_failed", "key=%s err=\"%s\"", key, e.msg);
    umount2(mnt, MNT_DETACH); /* a dead server's mount; EINVAL when there is none */
    sbx__rmrf(dir);
    for (size_t i = 0; i < m->nms; i++)
        if (strcmp(m->ms[i].key, key) == 0) {
            m->ms[i] = m->ms[--m->nms];
            break;
        }
    log_info("memshare.stopped", "key=%s", key);
}

/* Make the instance of map (from the snapshot in snap) and start its server (ms_lock held). */
static int start(sbx_mgr_t *m, const char *key, const char *snap, const mem_map_t *map,
                 struct sbx_mshare *out, err_t *e)
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
    FILE *f = fopen(srv, "we");
    if (!f || fprintf(f, "%d %" PRIu64 "\n", (int)pid, st) < 0 || fclose(f) != 0) {
        if (f)
            fclose(f);
        rc = err_errno(e, "write memfs server file");
        err_t se = {0};
        memfs_stop(mnt, pid, MSHARE_TIMEOUT_MS, &se);
        goto fail;
    }
    snprintf(out->key, sizeof out->key, "%s", key);
    out->pid = pid;
    out->start = st;
    out->refs = 0;
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
    struct sbx_mshare *x = find(m, key);
    int rc = 0, carried = 0;
    if (x && procfs_start_time(x->pid) != x->start) {
        /* Its server died: the VMs on it are broken anyway; a new instance serves new ones.
         * Their users still count (they release the key when they go). */
        log_warn("memshare.server_gone", "key=%s pid=%d users=%d", key, (int)x->pid, x->refs);
        carried = x->refs;
        drop(m, key, 0);
        x = NULL;
    }
    if (!x) {
        struct sbx_mshare n;
        if ((rc = start(m, key, snap, map, &n, e)) == 0) {
            n.refs = carried;
            m->ms = xrealloc(m->ms, (m->nms + 1) * sizeof *m->ms);
            m->ms[m->nms] = n;
            x = &m->ms[m->nms++];
        }
    }
    if (rc == 0) {
        x->refs++;
        snprintf(s->memfs_key, sizeof s->memfs_key, "%s", key);
        sbx__mshare_mem_path(m, key, s->mem_path, sizeof s->mem_path);
    }
    pthread_mutex_unlock(&m->ms_lock);
    return rc;
}

void sbx__mshare_release(sbx_mgr_t *m, sbx_t *s)
{
    if (!s->memfs_key[0])
        return;
    pthread_mutex_lock(&m->ms_lock);
    struct sbx_mshare *x = find(m, s->memfs_key);
    if (x && --x->refs <= 0)
        drop(m, x->key, x->pid);
    pthread_mutex_unlock(&m->ms_lock);
    s->memfs_key[0] = '\0';
}

/* ---- after an agent restart ------------------------------------------------------------------ */

void sbx__mshare_load(sbx_mgr_t *m)
{
    char dir[PATH_MAX];
    inst_dir(m, NULL, NULL, dir, sizeof dir);
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
        struct sbx_mshare n = {0};
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
    if (!x || x->pid <= 0 || procfs_start_time(x->pid) != x->start)
        rc = err_set(e, -ESRCH, "the memfs server of its RAM is gone");
    else {
        x->refs++;
        sbx__mshare_mem_path(m, s->memfs_key, s->mem_path, sizeof s->mem_path);
    }
    pthread_mutex_unlock(&m->ms_lock);
    if (rc < 0)
        s->memfs_key[0] = '\0';
    return rc;
}

void sbx__mshare_prune(sbx_mgr_t *m)
{
    pthread_mutex_lock(&m->ms_lock);
    for (size_t i = m->nms; i-- > 0;) {
        struct sbx_mshare *x = &m->ms[i];
        bool alive = x->pid > 0 && procfs_start_time(x->pid) == x->start;
        if (x->refs > 0 && alive)
            continue;
        char key[33];
        snprintf(key, sizeof key, "%s", x->key);
        log_warn("memshare.reap", "key=%s users=%d server_alive=%d", key, x->refs, alive);
        drop(m, key, alive ? x->pid : 0);
    }
    pthread_mutex_unlock(&m->ms_lock);
}
