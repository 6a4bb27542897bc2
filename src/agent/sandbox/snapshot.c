/* Pause, resume, snapshot templates and fork (issue 4).
 *
 * Files of one sandbox (<root>/sandboxes/<id>/):
 *   overlay.qcow2   its disk (copy-on-write over base.ext4 or an image's rootfs.ext4)
 *   base.ext4       a hard link to the template's flattened disk (sandboxes from templates)
 *   mem             guest RAM of a cold-booted VM (share=on, the VM's own file)
 *   snap/           its newest snapshot: mem.hdr (the memory map), <id>.layer files (hard links
 *                   shared with templates and forks), <map id>.state (QEMU's device state)
 *   capture.mem     at a pause of a restored VM, the pages its guest wrote (then a layer)
 * A restored VM maps its RAM privately from <root>/memfs/<map id>/mnt/mem, a read-only memfs
 * shared by every VM restored from that map (memshare.c).
 * Templates (<root>/templates/<team or _>/<name>/): template.json, mem.hdr, the layers, the
 * state and rootfs.ext4 (the disk flattened with qemu-img).
 *
 * A pause commits in this order: device state to snap/state.tmp; VM stopped; memory turned into
 * a layer (cold VM: its RAM file is renamed into snap/; restored VM: the pages its guest wrote,
 * copied out of QEMU before it stopped, become the layer); state renamed to <map id>.state; mem.hdr
 * replaced atomically (the commit point); unreferenced layers and states removed.
 */
#include "sandbox_int.h"
#include "disk_glue.h"
#include "fsutil.h"
#include "log.h"
#include "mem/mem.h"
#include "memfs/memfs.h"
#include "disk/disk.h"
#include "pjson.h"
#include "procfs.h"
#include "xalloc.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define SNAP_SAVE_TIMEOUT_MS  30000
#define SNAP_MEMFS_TIMEOUT_MS 15000
#define SNAP_MAX_FORK         16

void sbx__template_dir(const sbx_mgr_t *m, const char *team, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s/%s", m->tmpl_root, team && *team ? team : "_", name);
}

/* ---- small file helpers -------------------------------------------------------------------- */

/* buf = dir + "/" + name; -ENAMETOOLONG (and buf "") when it does not fit. */
static int path_in(char *buf, size_t n, const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    if (dl + 1 + nl + 1 > n) {
        if (n)
            buf[0] = '\0';
        return -ENAMETOOLONG;
    }
    memcpy(buf, dir, dl);
    buf[dl] = '/';
    memcpy(buf + dl + 1, name, nl + 1);
    return 0;
}

/* Hard link from → to (EXDEV: copy). An existing `to` is replaced. */
static int link_file(const char *from, const char *to, err_t *e)
{
    unlink(to);
    if (link(from, to) == 0)
        return 0;
    if (errno != EXDEV)
        return err_errno(e, to);
    return fsutil_copy_file(from, to, e);
}

/* Run argv (absolute program path) and wait; 0 when it exits 0. */
static int run_prog(char *const argv[], err_t *e)
{
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return err_set(e, -rc, "cannot run %s: %s", argv[0], strerror(rc));
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return err_errno(e, "waitpid");
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return err_set(e, -EIO, "%s failed (status %d)", argv[0], st);
    return 0;
}

static bool has_suffix(const char *name, const char *suffix)
{
    size_t l = strlen(name), sl = strlen(suffix);
    return l > sl && strcmp(name + l - sl, suffix) == 0;
}

/* Remove every "*<suffix>" file in dir but keep_name (NULL: none). */
static void remove_suffixed(const char *dir, const char *suffix, const char *keep_name)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (has_suffix(de->d_name, suffix) && (!keep_name || strcmp(de->d_name, keep_name) != 0))
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

/* The first line of a small file into buf ("" when unreadable). */
static void read_line(const char *path, char *buf, size_t n)
{
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t k = read(fd, buf, n - 1);
    close(fd);
    buf[k > 0 ? k : 0] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
}

static void state_name(const mem_map_t *map, char *buf, size_t n)
{
    char hex[33];
    mem_id_hex(&map->id, hex);
    snprintf(buf, n, "%s.state", hex);
}

/* Link a snapshot (header, layers, state) from one directory into another (created 0700). */
static int link_snapshot(const char *from, const char *to, mem_map_t **map_out, err_t *e)
{
    char p1[PATH_MAX], p2[PATH_MAX], sname[64];
    mem_map_t *map = NULL;
    int rc;
    if (mkdir(to, 0700) < 0 && errno != EEXIST)
        return err_errno(e, to);
    if ((rc = path_in(p1, sizeof p1, from, "mem.hdr")) < 0 || (rc = mem_map_load(p1, &map, e)) < 0)
        return rc;
    state_name(map, sname, sizeof sname);
    if ((rc = mem_link_layers(map, from, to, e)) < 0)
        goto out;
    path_in(p1, sizeof p1, from, sname);
    path_in(p2, sizeof p2, to, sname);
    if ((rc = link_file(p1, p2, e)) < 0)
        goto out;
    path_in(p2, sizeof p2, to, "mem.hdr");
    rc = mem_map_save(map, p2, e);
out:
    if (rc == 0 && map_out)
        *map_out = map;
    else
        mem_map_free(map);
    return rc;
}

/* ---- deferred durability -------------------------------------------------------------------- */

/* A pause returns once its snapshot is complete in the page cache (every reader sees it); the
 * layer data reaches the disk on a thread of its own. Until it has, snap/<map id>.unsynced holds
 * this boot's id: after a host crash such a snapshot cannot be trusted (sbx__snapshot_check). */

static void boot_id(char *out, size_t n)
{
    read_line("/proc/sys/kernel/random/boot_id", out, n);
}

/* Make the snapshot in snap durable: its directory, layers, header and device state. */
static int snap_sync(const char *snap, const mem_map_t *map, err_t *e)
{
    char p[PATH_MAX], sname[64];
    int rc = mem_sync_layers(map, snap, e);
    state_name(map, sname, sizeof sname);
    const char *files[] = {"mem.hdr", sname};
    for (size_t i = 0; rc == 0 && i < sizeof files / sizeof files[0]; i++) {
        path_in(p, sizeof p, snap, files[i]);
        rc = fsutil_fsync(p, e);
    }
    return rc;
}

/* Before a pause writes anything: a marker holding this boot's id, made durable while little
 * else is in flight (any fsync waits for everything being written). Its path goes into
 * marker; false when it could not be made (the pause then syncs before it returns). */
static bool mark_unsynced(const char *snap, char *marker, size_t n)
{
    char hex[17], bid[64], name[64];
    sbx__random_hex(hex, 8);
    snprintf(name, sizeof name, "%s.unsynced", hex);
    path_in(marker, n, snap, name);
    boot_id(bid, sizeof bid);
    err_t e = {0};
    /* Its name too must be on disk before anything it vouches for. */
    if (fsutil_write_atomic(marker, bid, strlen(bid), 0600, true, &e) == 0) {
        if (fsutil_fsync(snap, &e) == 0)
            return true;
        unlink(marker);
    }
    log_warn("sandbox.marker_failed", "snap=%s err=\"%s\"", snap, e.msg);
    marker[0] = '\0';
    return false;
}

typedef struct sync_job {
    char snap[PATH_MAX];
    char marker[PATH_MAX];
    char **older; /* markers of earlier pauses: this snapshot supersedes theirs */
    size_t nolder;
    mem_map_t *map;
} sync_job_t;

static void *sync_main(void *ud)
{
    sync_job_t *j = ud;
    int64_t t0 = sbx__mono_ms();
    err_t e = {0};
    /* A layer removed meanwhile (the sandbox destroyed, layers merged) needs no sync. */
    char rec[PATH_MAX + 32];
    snprintf(rec, sizeof rec, "%s/../record.json", j->snap);
    int rrc;
    if (snap_sync(j->snap, j->map, &e) < 0 && e.code != -ENOENT)
        log_warn("sandbox.sync_failed", "snap=%s err=\"%s\"", j->snap, e.msg);
    else if (((rrc = fsutil_fsync(rec, NULL)) == 0 || rrc == -ENOENT) && unlink(j->marker) == 0) {
        for (size_t i = 0; i < j->nolder; i++)
            unlink(j->older[i]);
        log_debug("sandbox.synced", "snap=%s dur_ms=%lld", j->snap,
                  (long long)(sbx__mono_ms() - t0));
    }
    for (size_t i = 0; i < j->nolder; i++)
        free(j->older[i]);
    free(j->older);
    mem_map_free(j->map);
    free(j);
    return NULL;
}

/* After a pause committed map in snap: what syncs it and then removes marker (the one
 * mark_unsynced() made), for sync_start(); with no marker the sync is done here and NULL
 * returned. */
static sync_job_t *sync_prepare(const char *snap, const mem_map_t *map, const char *marker)
{
    if (!marker[0]) {
        err_t e = {0};
        if (snap_sync(snap, map, &e) < 0)
            log_warn("sandbox.sync_failed", "snap=%s err=\"%s\"", snap, e.msg);
        return NULL;
    }
    sync_job_t *j = xcalloc(1, sizeof *j);
    snprintf(j->snap, sizeof j->snap, "%s", snap);
    snprintf(j->marker, sizeof j->marker, "%s", marker);
    j->map = mem_map_dup(map);
    /* Every other marker is older (pauses of one sandbox are ordered by its lock): once this
     * snapshot is on disk, what they vouched for no longer matters, even when their own sync
     * never finished (an agent killed meanwhile). */
    DIR *d = opendir(snap);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char p[PATH_MAX + 300];
        snprintf(p, sizeof p, "%s/%s", snap, de->d_name);
        if (!has_suffix(de->d_name, ".unsynced") || strcmp(p, marker) == 0)
            continue;
        j->older = xrealloc(j->older, (j->nolder + 1) * sizeof *j->older);
        j->older[j->nolder++] = xstrdup(p);
    }
    if (d)
        closedir(d);
    return j;
}

/* Run j (NULL-safe) on a thread of its own. Started once the pause has done its own small
 * writes: the sync's fsyncs flush the disk's cache, which stalls whatever else writes. */
static void sync_start(sync_job_t *j)
{
    if (!j)
        return;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    if (pthread_create(&t, &a, sync_main, j) != 0)
        sync_main(j);
    pthread_attr_destroy(&a);
}

int sbx__snapshot_check(const char *dir, err_t *e)
{
    char snap[PATH_MAX], p[PATH_MAX + 300], bid[64];
    path_in(snap, sizeof snap, dir, "snap");
    boot_id(bid, sizeof bid);
    DIR *d = opendir(snap);
    if (!d)
        return 0;
    int rc = 0;
    bool pending = false;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!has_suffix(de->d_name, ".unsynced"))
            continue;
        snprintf(p, sizeof p, "%s/%s", snap, de->d_name);
        char got[64];
        read_line(p, got, sizeof got);
        if (strcmp(got, bid) != 0)
            rc = err_set(e, -EUCLEAN, "its snapshot was not on disk yet when the host went down");
        pending = true;
    }
    closedir(d);
    if (rc == 0 && pending) {
        /* Same boot: the data is in the page cache; finish the sync now. */
        mem_map_t *map = NULL;
        path_in(p, sizeof p, snap, "mem.hdr");
        if ((rc = mem_map_load(p, &map, e)) == 0 && (rc = snap_sync(snap, map, e)) == 0)
            remove_suffixed(snap, ".unsynced", NULL);
        mem_map_free(map);
    }
    return rc;
}

/* ---- memfs ---------------------------------------------------------------------------------- */

void sbx__memfs_down(sbx_mgr_t *m, sbx_t *s)
{
    if (s->memfs_key[0]) {
        sbx__mshare_release(m, s);
        s->restored = false;
        return;
    }
    char mnt[PATH_MAX], p[PATH_MAX];
    snprintf(mnt, sizeof mnt, "%s/memfs", s->dir);
    err_t e = {0};
    if (memfs_stop(mnt, s->memfs_pid, SNAP_MEMFS_TIMEOUT_MS, &e) < 0)
        log_warn("sandbox.memfs_stop_failed", "sandbox=%s err=\"%s\"", s->id, e.msg);
    rmdir(mnt);
    snprintf(p, sizeof p, "%s/upper.mem", s->dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/dirty.bitmap", s->dir);
    unlink(p);
    s->memfs_pid = 0;
    s->memfs_start = 0;
    s->restored = false;
}

/* Read the dirty bitmap of a map of nblocks blocks (a short file reads as zero bits). */
static uint8_t *load_bitmap(const char *path, uint64_t nblocks, err_t *e)
{
    size_t len = (size_t)((nblocks + 7) / 8);
    uint8_t *bits = xcalloc(len ? len : 1, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return bits;
        err_errno(e, path);
        free(bits);
        return NULL;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t r = pread(fd, bits + off, len - off, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            err_errno(e, path);
            close(fd);
            free(bits);
            return NULL;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    close(fd);
    return bits;
}

/* A restored VM's RAM is a private mapping of its memfs file: copy what the guest wrote since
 * the resume out of its (stopped) VMM into <dir>/capture.mem, a sparse file at guest offsets,
 * and *bits gets those blocks (MEM_BLOCK_SIZE is the host page size). */
static int capture(sbx_t *s, uint64_t size, uint8_t **bits, err_t *e)
{
    char p[PATH_MAX];
    path_in(p, sizeof p, s->dir, "capture.mem");
    /* Direct I/O: here, filling the page cache with a few hundred MiB costs twice as much as
     * writing them to the disk (page allocation is slow under nested virtualisation). */
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC | O_DIRECT, 0600);
    if (fd < 0 && errno == EINVAL) /* a file system without direct I/O */
        fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_errno(e, "create capture.mem");
    int rc = 0;
    *bits = xcalloc((size_t)(size / MEM_BLOCK_SIZE + 7) / 8 + 1, 1);
    if (ftruncate(fd, (off_t)size) < 0)
        rc = err_errno(e, "size capture.mem");
    else if (sysconf(_SC_PAGESIZE) != MEM_BLOCK_SIZE)
        rc = err_set(e, -EINVAL, "host page size %ld is not the memory block size %u",
                     sysconf(_SC_PAGESIZE), MEM_BLOCK_SIZE);
    else {
        int64_t n = vmm_ram_capture(s->vm, fd, *bits, e);
        if (n < 0)
            rc = (int)n;
    }
    close(fd);
    if (rc < 0) {
        unlink(p);
        free(*bits);
        *bits = NULL;
    }
    return rc;
}

/* ---- checkpoint and restore ---------------------------------------------------------------- */

/* Save the running VM of s into <dir>/snap and stop it (its network stays). On an error before
 * the VM was stopped it runs on and the old snapshot is untouched; after, *lost says the
 * sandbox cannot go on. *later gets the sync of the new snapshot, for sync_start(). */
static int checkpoint(sbx_mgr_t *m, sbx_t *s, bool *lost, sync_job_t **later, err_t *e)
{
    *later = NULL;
    int64_t t0 = sbx__mono_ms();
    char snap[PATH_MAX], tmp[PATH_MAX], p[PATH_MAX], sname[64];
    mem_map_t *parent = NULL, *map = NULL;
    uint8_t *bits = NULL;
    int rc, fd = -1;
    *lost = false;
    path_in(snap, sizeof snap, s->dir, "snap");
    if (mkdir(snap, 0700) < 0 && errno != EEXIST)
        return err_errno(e, snap);
    char marker[PATH_MAX];
    mark_unsynced(snap, marker, sizeof marker);
    path_in(tmp, sizeof tmp, snap, "state.tmp");
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = err_errno(e, tmp);
        if (marker[0])
            unlink(marker);
        return rc;
    }
    uint64_t size = (uint64_t)s->memory_mb << 20;
    /* The state reaches the disk with the rest (sync_later). */
    if ((rc = vmm_save(s->vm, fd, SNAP_SAVE_TIMEOUT_MS, e)) < 0 ||
        (s->restored && s->memfs_key[0] && (rc = capture(s, size, &bits, e)) < 0)) {
        close(fd);
        unlink(tmp);
        if (marker[0])
            unlink(marker);
        err_t ce = {0};
        if (vmm_resume(s->vm, &ce) < 0)
            log_warn("sandbox.cont_failed", "sandbox=%s err=\"%s\"", s->id, ce.msg);
        return rc;
    }
    close(fd);
    int64_t t_save = sbx__mono_ms();
    err_t se = {0};
    if (vmm_stop(s->vm, 5000, &se) < 0)
        log_warn("sandbox.vm_stop_failed", "sandbox=%s err=\"%s\"", s->id, se.msg);
    s->vm = NULL;
    *lost = true; /* from here on, failing loses the running state */
    int64_t t_stop = sbx__mono_ms();

    if (s->restored && s->memfs_key[0]) {
        sbx__memfs_down(m, s);
        path_in(p, sizeof p, snap, "mem.hdr");
        if ((rc = mem_map_load(p, &parent, e)) < 0)
            goto out;
        path_in(p, sizeof p, s->dir, "capture.mem");
        if ((rc = mem_commit_diff_sparse(parent, p, bits, snap, m->max_layers, &map, e)) < 0)
            goto out;
        unlink(p);
    } else if (s->restored) {
        /* Restored by an older agent: its RAM was a written-through memfs file (shared), whose
         * upper file and dirty bitmap hold what the guest wrote. */
        char mnt[PATH_MAX];
        path_in(mnt, sizeof mnt, s->dir, "memfs");
        if ((rc = memfs_stop(mnt, s->memfs_pid, SNAP_MEMFS_TIMEOUT_MS, e)) < 0)
            goto out;
        rmdir(mnt);
        s->memfs_pid = 0;
        path_in(p, sizeof p, snap, "mem.hdr");
        if ((rc = mem_map_load(p, &parent, e)) < 0)
            goto out;
        path_in(p, sizeof p, s->dir, "dirty.bitmap");
        if (!(bits = load_bitmap(p, parent->size / parent->block_size, e))) {
            rc = e ? e->code : -EIO;
            goto out;
        }
        path_in(p, sizeof p, s->dir, "upper.mem");
        if ((rc = mem_commit_diff(parent, p, bits, snap, m->max_layers, &map, e)) < 0)
            goto out;
        path_in(p, sizeof p, s->dir, "dirty.bitmap");
        unlink(p);
        s->restored = false;
    } else {
        path_in(p, sizeof p, s->dir, "mem");
        if ((rc = mem_commit_full(p, size, snap, &map, e)) < 0)
            goto out;
    }
    int64_t t_mem = sbx__mono_ms();
    state_name(map, sname, sizeof sname);
    path_in(p, sizeof p, snap, sname);
    if (rename(tmp, p) < 0) {
        rc = err_errno(e, "rename state");
        goto out;
    }
    path_in(p, sizeof p, snap, "mem.hdr");
    if ((rc = mem_map_save(map, p, e)) < 0)
        goto out;
    /* Committed. What the new map no longer needs goes; the data goes to disk meanwhile. */
    *later = sync_prepare(snap, map, marker);
    marker[0] = '\0';
    remove_suffixed(snap, ".state", sname);
    const mem_map_t *keep[1] = {map};
    err_t ge = {0};
    if (mem_gc(snap, keep, 1, &ge) < 0)
        log_warn("sandbox.gc_failed", "sandbox=%s err=\"%s\"", s->id, ge.msg);
    *lost = false;
    log_info("sandbox.checkpoint",
             "sandbox=%s generation=%u layers=%u save_ms=%lld stop_ms=%lld mem_ms=%lld "
             "dur_ms=%lld",
             s->id, map->generation, map->nlayers, (long long)(t_save - t0),
             (long long)(t_stop - t_save), (long long)(t_mem - t_stop),
             (long long)(sbx__mono_ms() - t0));
    rc = 0;
out:
    if (rc < 0) {
        unlink(tmp);
        if (marker[0])
            unlink(marker);
    }
    free(bits);
    mem_map_free(parent);
    mem_map_free(map);
    return rc;
}

/* Give s a network slot (and the slot's uid, which its files are chowned to); the network
 * itself is made by restore(), alongside its other work. */
static int net_slot(sbx_mgr_t *m, sbx_t *s, err_t *e)
{
    int slot = sbx__alloc_slot(m);
    if (slot < 0)
        return err_set(e, -ENOSPC, "no free network slot");
    s->slot = slot;
    s->uid = (uid_t)(SBX_UID_BASE + slot);
    s->gid = (gid_t)(SBX_UID_BASE + slot);
    net_slot_names(slot, &s->net);
    char p[PATH_MAX];
    int rc = 0;
    if (chown(s->dir, s->uid, s->gid) < 0)
        rc = err_errno(e, "chown sandbox directory");
    path_in(p, sizeof p, s->dir, "overlay.qcow2");
    if (rc == 0 && chown(p, s->uid, s->gid) < 0)
        rc = err_errno(e, "chown disk");
    if (rc < 0)
        sbx__release_slot(m, s);
    return rc;
}

typedef struct net_job {
    sbx_t *s;
    int rc;
    err_t e;
} net_job_t;

static void *net_job_main(void *ud)
{
    net_job_t *j = ud;
    j->rc = net_create(j->s->slot, &j->s->net, &j->e);
    if (j->rc < 0)
        err_wrap(&j->e, "network");
    return NULL;
}

/* Start s's VM from the snapshot in <dir>/snap, in its (already created) network, and init its
 * guest: old_token is what the guest holds (NULL: s->token). On failure nothing of the VM or
 * memfs is left; snap/ is untouched. */
static int restore(sbx_mgr_t *m, sbx_t *s, const char *old_token, const json_t *env_vars, err_t *e)
{
    int64_t t0 = sbx__mono_ms();
    char snap[PATH_MAX], hdr[PATH_MAX], p[PATH_MAX], sname[64];
    mem_map_t *map = NULL;
    mem_reader_t *rd = NULL;
    int rc, fd = -1;
    /* The network (tens of ms of netlink and nft) is made while memfs starts. */
    net_job_t nj = {.s = s};
    pthread_t nt;
    bool net_thread = false;
    if (!s->net_up) {
        if (pthread_create(&nt, NULL, net_job_main, &nj) == 0)
            net_thread = true;
        else
            net_job_main(&nj);
    }
    path_in(snap, sizeof snap, s->dir, "snap");
    path_in(hdr, sizeof hdr, snap, "mem.hdr");
    /* Refuse a corrupt or truncated snapshot before anything maps it. */
    if ((rc = mem_map_load(hdr, &map, e)) < 0 || (rc = mem_reader_open(map, snap, &rd, e)) < 0) {
        /* Bad bytes on disk are the snapshot's state, not the request's fault. */
        if (rc == -EBADMSG || rc == -ENOENT)
            rc = e ? (e->code = -EUCLEAN) : -EUCLEAN;
        err_wrap(e, "snapshot is unusable");
        goto out;
    }
    mem_reader_free(rd);
    rd = NULL;
    if (map->size != (uint64_t)s->memory_mb << 20) {
        rc = err_set(e, -EUCLEAN, "snapshot: memory is %llu bytes, the sandbox has %u MiB",
                     (unsigned long long)map->size, s->memory_mb);
        goto out;
    }
    state_name(map, sname, sizeof sname);
    path_in(p, sizeof p, snap, sname);
    fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        rc = err_set(e, errno == ENOENT ? -EUCLEAN : -errno,
                     "snapshot is unusable: its device state %s: %s", sname, strerror(errno));
        goto out;
    }
    /* What an older agent's memfs, or a failed pause, left. */
    static const char *const stale[] = {"upper.mem", "dirty.bitmap", "capture.mem"};
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++) {
        path_in(p, sizeof p, s->dir, stale[i]);
        unlink(p);
    }
    /* The RAM file: the read-only memfs of this map, shared with every VM restored from it. */
    if ((rc = sbx__mshare_acquire(m, s, snap, map, e)) < 0) {
        err_wrap(e, "memfs");
        goto out;
    }
    s->restored = true;
    int64_t t_memfs = sbx__mono_ms();

    if (net_thread) {
        pthread_join(nt, NULL);
        net_thread = false;
    }
    if (!s->net_up) {
        if (nj.rc < 0) {
            rc = nj.rc;
            if (e)
                *e = nj.e;
            goto out;
        }
        s->net_up = true;
    }
    vmm_spec_t spec;
    char kernel[512], initrd[512], rootfs[512], cmdline[512], cgroup[512];
    sbx__spec(m, s, &spec, kernel, initrd, rootfs, cmdline, cgroup, 512);
    spec.incoming = true;
    if ((rc = vmm_qemu_start(&spec, &s->vm, e)) < 0) {
        err_wrap(e, "vm");
        goto out;
    }
    int64_t t_vm = sbx__mono_ms();
    if ((rc = vmm_restore(s->vm, fd, SNAP_SAVE_TIMEOUT_MS, e)) < 0)
        goto out;
    int64_t t_restore = sbx__mono_ms();
    envdc_t c;
    envdc_target(&c, s->net.host_ip, m->guest_port, s->token);
    if (s->state == SBX_POOLED) {
        /* For the warm pool: run what a first command runs (under TCG its code is translated
         * then), and stop the vCPUs until someone claims it (/init is done then). */
        if ((rc = envdc_wait_health(&c, m->boot_timeout_ms, sbx__vm_alive_cb, s->vm, e)) < 0) {
            err_wrap(e, "resume");
            goto out;
        }
        static const char *const args[] = {"-c", "true"};
        envdc_exec_req_t r = {.cmd = "/bin/sh", .args = args, .nargs = 2, .timeout_ms = 30000};
        envdc_exec_cb_t none = {0};
        if ((rc = envdc_exec(&c, &r, &none, NULL, e)) < 0 || (rc = vmm_pause(s->vm, e)) < 0) {
            err_wrap(e, "warm up");
            goto out;
        }
    } else if ((rc = envdc_wait_init(&c, m->boot_timeout_ms, sbx__vm_alive_cb, s->vm, old_token,
                                     env_vars, true, e)) < 0) {
        /* The guest clock stood still while paused: /init sets it, and reseeds the RNG. Its
         * answer is also the sign that the guest runs again (no separate /health). */
        err_wrap(e, rc == -ETIMEDOUT || rc == -ECHILD ? "resume" : "guest init");
        goto out;
    }
    int64_t t_health = sbx__mono_ms();
    log_info("sandbox.restored",
             "sandbox=%s slot=%d generation=%u memfs_ms=%lld vm_ms=%lld restore_ms=%lld "
             "health_ms=%lld dur_ms=%lld",
             s->id, s->slot, map->generation, (long long)(t_memfs - t0),
             (long long)(t_vm - t_memfs), (long long)(t_restore - t_vm),
             (long long)(t_health - t_restore), (long long)(sbx__mono_ms() - t0));
    rc = 0;
out:
    if (net_thread) {
        pthread_join(nt, NULL);
        if (nj.rc == 0)
            s->net_up = true;
    }
    if (rc < 0) {
        if (s->vm) {
            err_t se = {0};
            vmm_stop(s->vm, 1000, &se);
            s->vm = NULL;
        }
        if (s->memfs_pid > 0 || s->restored)
            sbx__memfs_down(m, s);
    }
    if (fd >= 0)
        close(fd);
    mem_reader_free(rd);
    mem_map_free(map);
    return rc;
}

static void net_down(sbx_mgr_t *m, sbx_t *s)
{
    if (s->net_up) {
        err_t e = {0};
        if (net_destroy(s->slot, &e) < 0)
            log_warn("sandbox.net_destroy_failed", "sandbox=%s slot=%d err=\"%s\"", s->id, s->slot,
                     e.msg);
        s->net_up = false;
    }
    sbx__release_slot(m, s);
    memset(&s->net, 0, sizeof s->net);
}

/* ---- pause / resume ------------------------------------------------------------------------ */

/* Pause s (locked, running). On failure it is running still, or lost (destroyed). */
int sbx__pause_locked(sbx_mgr_t *m, sbx_t *s, bool *gone, err_t *e)
{
    int64_t t0 = sbx__mono_ms();
    bool lost = false;
    *gone = false;
    sync_job_t *later = NULL;
    int rc = checkpoint(m, s, &lost, &later, e);
    if (rc < 0) {
        if (lost) {
            log_warn("sandbox.lost", "sandbox=%s err=\"%s\"", s->id, e ? e->msg : "");
            sbx__teardown(m, s, true);
            *gone = true;
        }
        return rc;
    }
    net_down(m, s);
    s->state = SBX_PAUSED;
    rc = sbx__record_write(s, false, e);
    sync_start(later);
    if (rc < 0)
        return rc;
    log_info("sandbox.paused", "sandbox=%s dur_ms=%lld", s->id, (long long)(sbx__mono_ms() - t0));
    return 0;
}

int sbx_pause(sbx_mgr_t *m, const char *id, err_t *e)
{
    sbx_t *s = sbx__lookup(m, id);
    if (!s)
        return err_set(e, -ENOENT, "sandbox %s not found", id);
    pthread_mutex_lock(&s->lock);
    int rc;
    bool gone = false;
    if (s->state == SBX_PAUSED)
        rc = err_set(e, -EALREADY, "sandbox %s is already paused", id);
    else if (s->state != SBX_RUNNING)
        rc = err_set(e, -ENOENT, "sandbox %s not found", id);
    else
        rc = sbx__pause_locked(m, s, &gone, e);
    pthread_mutex_unlock(&s->lock);
    if (gone)
        sbx__remove(m, s);
    sbx__unref(m, s);
    return rc;
}

int sbx_resume(sbx_mgr_t *m, const char *id, int64_t timeout_sec, sbx_info_t *out, err_t *e)
{
    if (timeout_sec < 0 || timeout_sec > SBX_MAX_TIMEOUT_S)
        return err_set(e, -EINVAL, "timeoutSec must be between 0 and %lld", SBX_MAX_TIMEOUT_S);
    sbx_t *s = sbx__lookup(m, id);
    if (!s)
        return err_set(e, -ENOENT, "sandbox %s not found", id);
    int64_t t0 = sbx__mono_ms();
    pthread_mutex_lock(&s->lock);
    int rc;
    if (s->state == SBX_RUNNING) {
        rc = err_set(e, -EALREADY, "sandbox %s is running", id);
        goto out;
    }
    if (s->state != SBX_PAUSED) {
        rc = err_set(e, -ENOENT, "sandbox %s not found", id);
        goto out;
    }
    if ((rc = net_slot(m, s, e)) < 0)
        goto out;
    if ((rc = restore(m, s, NULL, NULL, e)) < 0) {
        net_down(m, s);
        goto out;
    }
    s->state = SBX_RUNNING;
    atomic_store(&s->timeout_sec, timeout_sec);
    atomic_store(&s->last_active_at, sbx__now_s());
    if ((rc = sbx__record_save(s, e)) < 0)
        goto out;
    sbx__fill_info(s, out);
    log_info("sandbox.resumed", "sandbox=%s slot=%d host_ip=%s dur_ms=%lld", s->id, s->slot,
             s->net.host_ip, (long long)(sbx__mono_ms() - t0));
out:
    pthread_mutex_unlock(&s->lock);
    sbx__unref(m, s);
    return rc;
}

/* ---- clones: from a template, or forks --------------------------------------------------------
 */

typedef struct clone_src {
    const char *snap;    /* directory with mem.hdr, layers, the state */
    const char *base;    /* the disk's read-only base (raw ext4), hard-linked into the clone */
    const char *overlay; /* a qcow2 overlay over base to copy (forks), NULL: a fresh one */
    unsigned vcpus, memory_mb;
    const char *token; /* what the guest holds */
    const char *template_name;
    const char *team;
} clone_src_t;

/* A sandbox whose creation failed (locked, referenced; in the table when inserted): torn down,
 * unlocked, let go. */
static void drop_failed(sbx_mgr_t *m, sbx_t *s, bool inserted)
{
    sbx__teardown(m, s, true);
    sbx__release_slot(m, s);
    pthread_mutex_unlock(&s->lock);
    if (inserted)
        sbx__remove(m, s);
    sbx__unref(m, s);
}

/* Make a new running sandbox restored from src. */
static int make_clone(sbx_mgr_t *m, const clone_src_t *src, const char *id, int64_t timeout_sec,
                      bool auto_pause, const json_t *env_vars, sbx_info_t *out, sbx_t **pooled,
                      err_t *e)
{
    int64_t t0 = sbx__mono_ms();
    sbx_t *s = sbx__new();
    int rc = 0;
    bool inserted = false;
    char p[PATH_MAX], base[PATH_MAX], overlay[PATH_MAX];
    if (pooled) {
        /* For the warm pool (pool.c): out of the table, under a name of its own until claimed. */
        char hex[17];
        sbx__random_hex(hex, 6);
        snprintf(s->id, sizeof s->id, "p-%s", hex);
    } else
        sbx__set_id(s, id);
    snprintf(s->name, sizeof s->name, "%s", s->id);
    snprintf(s->template_name, sizeof s->template_name, "%s", src->template_name);
    snprintf(s->team, sizeof s->team, "%s", src->team ? src->team : "");
    s->vcpus = src->vcpus;
    s->memory_mb = src->memory_mb;
    s->auto_pause = auto_pause;
    atomic_store(&s->timeout_sec, timeout_sec);
    s->state = pooled ? SBX_POOLED : SBX_CREATING;
    pthread_mutex_lock(&s->lock);
    if (!pooled && (rc = sbx__insert(m, s)) < 0) {
        rc = err_set(e, -EEXIST, "sandbox %s already exists", s->id);
        goto fail;
    }
    inserted = !pooled;
    snprintf(s->dir, sizeof s->dir, "%s/%s", m->sbx_root, s->name);
    if (mkdir(s->dir, 0700) < 0) {
        rc = err_errno(e, "create sandbox directory");
        s->dir[0] = '\0';
        goto fail;
    }
    path_in(p, sizeof p, s->dir, "snap");
    if ((rc = link_snapshot(src->snap, p, NULL, e)) < 0) {
        err_wrap(e, "snapshot");
        goto fail;
    }
    /* The disk: its own link to the base keeps it alive when the template is deleted. */
    path_in(base, sizeof base, s->dir, "base.ext4");
    path_in(overlay, sizeof overlay, s->dir, "overlay.qcow2");
    if ((rc = link_file(src->base, base, e)) < 0)
        goto fail;
    if (src->overlay) {
        if ((rc = fsutil_copy_file(src->overlay, overlay, e)) < 0)
            goto fail;
        char *rebase[] = {"/usr/bin/qemu-img",
                          "rebase",
                          "-u",
                          "-f",
                          "qcow2",
                          "-F",
                          "raw",
                          "-b",
                          base,
                          overlay,
                          NULL};
        if ((rc = run_prog(rebase, e)) < 0)
            goto fail;
    } else if ((rc = sbx_disk_overlay(base, overlay, 0, 0, e)) < 0) {
        err_wrap(e, "disk");
        goto fail;
    }
    if ((rc = net_slot(m, s, e)) < 0)
        goto fail;
    /* A pooled guest keeps the template's token until it is claimed. */
    if (pooled)
        snprintf(s->token, sizeof s->token, "%s", src->token);
    else
        sbx__random_hex(s->token, 32);
    if ((rc = restore(m, s, src->token, env_vars, e)) < 0)
        goto fail;
    s->created_at = sbx__now_s();
    atomic_store(&s->last_active_at, s->created_at);
    if ((rc = sbx__record_save(s, e)) < 0)
        goto fail;
    if (pooled) {
        pthread_mutex_unlock(&s->lock);
        *pooled = s; /* our reference goes with it */
        return 0;
    }
    s->state = SBX_RUNNING;
    sbx__fill_info(s, out);
    pthread_mutex_unlock(&s->lock);
    log_info("sandbox.created", "sandbox=%s template=%s slot=%d restored=1 dur_ms=%lld", s->id,
             s->template_name, s->slot, (long long)(sbx__mono_ms() - t0));
    sbx__unref(m, s);
    return 0;
fail:
    log_warn("sandbox.create_failed", "sandbox=%s err=\"%s\"", s->id, e ? e->msg : "");
    drop_failed(m, s, inserted);
    return rc;
}

/* template.json of a template directory. */
typedef struct tmpl_meta {
    unsigned vcpus, memory_mb;
    char token[72];
} tmpl_meta_t;

static int read_meta(const char *tdir, tmpl_meta_t *t, err_t *e)
{
    char p[PATH_MAX];
    path_in(p, sizeof p, tdir, "template.json");
    json_error_t je;
    json_t *j = json_load_file(p, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    const char *tok = json_string_value(json_object_get(j, "accessToken"));
    json_int_t v = json_integer_value(json_object_get(j, "vcpus"));
    json_int_t mb = json_integer_value(json_object_get(j, "memoryMb"));
    if (!j || !tok || strlen(tok) >= sizeof t->token || v < 1 || v > SBX_MAX_VCPUS ||
        mb < SBX_MIN_MEMORY_MB || mb > SBX_MAX_MEMORY_MB)
        rc = err_set(e, -EBADMSG, "template %s: unreadable template.json", tdir);
    else {
        t->vcpus = (unsigned)v;
        t->memory_mb = (unsigned)mb;
        snprintf(t->token, sizeof t->token, "%s", tok);
    }
    json_decref(j);
    return rc;
}

/* What a clone of the template in tdir starts from (strings point into t, base and tdir). */
static void template_src(const char *tdir, const tmpl_meta_t *t, char *base, size_t n,
                         clone_src_t *src)
{
    path_in(base, n, tdir, "rootfs.ext4");
    /* The template's size wins over the request's: memory and devices are in its snapshot. */
    *src = (clone_src_t){.snap = tdir,
                         .base = base,
                         .vcpus = t->vcpus,
                         .memory_mb = t->memory_mb,
                         .token = t->token};
}

int sbx__create_from_template(sbx_mgr_t *m, const sbx_create_req_t *req, const char *tdir,
                              sbx_info_t *out, err_t *e)
{
    tmpl_meta_t t;
    int rc = read_meta(tdir, &t, e);
    if (rc < 0)
        return rc;
    sbx_t *pooled = sbx__pool_take(m, tdir);
    sbx__pool_want(m, tdir);
    if (pooled) {
        err_t pe = {0};
        if (sbx__pool_claim(m, pooled, req, out, &pe) == 0)
            return 0;
        if (pe.code == -EEXIST) {
            if (e)
                *e = pe;
            return pe.code;
        }
        log_warn("pool.claim_failed", "template=%s err=\"%s\"", tdir, pe.msg);
    }
    char base[PATH_MAX];
    clone_src_t src;
    template_src(tdir, &t, base, sizeof base, &src);
    src.template_name = req->template_name;
    src.team = req->team;
    return make_clone(m, &src, req->id, req->timeout_sec, req->auto_pause, req->env_vars, out, NULL,
                      e);
}

int sbx__pool_make(sbx_mgr_t *m, const char *tdir, sbx_t **out, err_t *e)
{
    tmpl_meta_t t;
    int rc = read_meta(tdir, &t, e);
    if (rc < 0)
        return rc;
    char base[PATH_MAX];
    clone_src_t src;
    template_src(tdir, &t, base, sizeof base, &src);
    src.template_name = "";
    return make_clone(m, &src, NULL, 0, false, NULL, NULL, out, e);
}

int sbx__pool_claim(sbx_mgr_t *m, sbx_t *s, const sbx_create_req_t *req, sbx_info_t *out, err_t *e)
{
    int64_t t0 = sbx__mono_ms();
    pthread_mutex_lock(&s->lock);
    char name[72];
    snprintf(name, sizeof name, "%s", s->name);
    sbx__set_id(s, req->id);
    snprintf(s->template_name, sizeof s->template_name, "%s",
             req->template_name ? req->template_name : "");
    snprintf(s->team, sizeof s->team, "%s", req->team ? req->team : "");
    s->auto_pause = req->auto_pause;
    atomic_store(&s->timeout_sec, req->timeout_sec);
    s->state = SBX_CREATING;
    int rc;
    bool inserted = false;
    if ((rc = sbx__insert(m, s)) < 0) {
        rc = err_set(e, -EEXIST, "sandbox %s already exists", s->id);
        goto fail;
    }
    inserted = true;
    char old_token[72];
    snprintf(old_token, sizeof old_token, "%s", s->token);
    sbx__random_hex(s->token, 32);
    envdc_t c;
    envdc_target(&c, s->net.host_ip, m->guest_port, s->token);
    /* Its clock stood still while pooled: /init sets it, reseeds the RNG, gives it the
     * caller's token and environment. */
    if ((rc = vmm_resume(s->vm, e)) < 0 ||
        (rc = envdc_reinit(&c, old_token, req->env_vars, true, e)) < 0) {
        err_wrap(e, "pooled sandbox");
        goto fail;
    }
    s->created_at = sbx__now_s();
    atomic_store(&s->last_active_at, s->created_at);
    s->state = SBX_RUNNING;
    if ((rc = sbx__record_save(s, e)) < 0)
        goto fail;
    sbx__fill_info(s, out);
    pthread_mutex_unlock(&s->lock);
    log_info("sandbox.created", "sandbox=%s template=%s slot=%d restored=1 pool=%s dur_ms=%lld",
             s->id, s->template_name, s->slot, name, (long long)(sbx__mono_ms() - t0));
    sbx__unref(m, s);
    return 0;
fail:
    log_warn("sandbox.create_failed", "sandbox=%s pool=%s err=\"%s\"", s->id, name,
             e ? e->msg : "");
    drop_failed(m, s, inserted);
    return rc;
}

/* ---- templates ------------------------------------------------------------------------------ */

static int64_t du_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_blocks * 512 : 0;
}

int sbx_snapshot_create(sbx_mgr_t *m, const char *id, const char *team, const char *name,
                        int64_t *size, err_t *e)
{
    if (!sbx_safe_name(name))
        return err_set(e, -EINVAL,
                       "name is not valid: use 1-64 letters, digits, '.', '_' or '-', not "
                       "starting with '.'");
    if (team && *team && !sbx_safe_name(team))
        return err_set(e, -EINVAL, "teamId is not valid");
    sbx_t *s = sbx__lookup(m, id);
    if (!s)
        return err_set(e, -ENOENT, "sandbox %s not found", id);
    int64_t t0 = sbx__mono_ms();
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    bool gone = false;
    char tdir[PATH_MAX], tmp[PATH_MAX + 64], old[PATH_MAX + 64], p[PATH_MAX], q[PATH_MAX], hex[17];
    mem_map_t *map = NULL;
    tmp[0] = '\0';
    if (s->state == SBX_RUNNING) {
        if ((rc = sbx__pause_locked(m, s, &gone, e)) < 0)
            goto out;
    } else if (s->state != SBX_PAUSED) {
        rc = err_set(e, -ENOENT, "sandbox %s not found", id);
        goto out;
    }
    sbx__template_dir(m, team, name, tdir, sizeof tdir);
    snprintf(p, sizeof p, "%s/%s", m->tmpl_root, team && *team ? team : "_");
    if (mkdir(p, 0700) < 0 && errno != EEXIST) {
        rc = err_errno(e, p);
        goto out;
    }
    sbx__random_hex(hex, 8);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s", p, hex);
    snprintf(old, sizeof old, "%s/.old-%s", p, hex);
    path_in(p, sizeof p, s->dir, "snap");
    if ((rc = link_snapshot(p, tmp, &map, e)) < 0 || (rc = snap_sync(tmp, map, e)) < 0)
        goto out;
    /* The disk, flattened: the template must not depend on the sandbox's overlay chain. */
    path_in(p, sizeof p, s->dir, "overlay.qcow2");
    path_in(q, sizeof q, tmp, "rootfs.ext4");
    char *conv[] = {"/usr/bin/qemu-img", "convert", "-f", "qcow2", "-O", "raw", p, q, NULL};
    if ((rc = run_prog(conv, e)) < 0) {
        err_wrap(e, "flatten disk");
        goto out;
    }
    chmod(q, 0444);
    if ((rc = fsutil_fsync(q, e)) < 0) /* a template outlives a host crash */
        goto out;
    json_t *meta =
        json_pack("{s:i, s:s, s:s, s:i, s:i, s:s, s:I}", "version", 1, "source", s->id,
                  "accessToken", s->token, "vcpus", (int)s->vcpus, "memoryMb", (int)s->memory_mb,
                  "team", team ? team : "", "createdAt", (json_int_t)sbx__now_s());
    buf_t b;
    buf_init(&b);
    pjson_dump(meta, &b);
    json_decref(meta);
    path_in(p, sizeof p, tmp, "template.json");
    rc = fsutil_write_atomic(p, b.data, b.len, 0600, true, e);
    buf_fini(&b);
    if (rc < 0)
        goto out;
    /* Replace a template of the same name: its clones keep their own links to its files. */
    if (rename(tdir, old) < 0 && errno != ENOENT) {
        rc = err_errno(e, "replace template");
        goto out;
    }
    if (rename(tmp, tdir) < 0) {
        rc = err_errno(e, "install template");
        rename(old, tdir);
        goto out;
    }
    tmp[0] = '\0';
    sbx__rmrf(old);
    uint64_t mem_bytes = 0;
    err_t de = {0};
    mem_disk_bytes(map, tdir, &mem_bytes, &de);
    path_in(p, sizeof p, tdir, "rootfs.ext4");
    *size = (int64_t)mem_bytes + du_bytes(p);
    log_info("sandbox.template_created", "sandbox=%s team=%s name=%s bytes=%lld dur_ms=%lld", s->id,
             team ? team : "", name, (long long)*size, (long long)(sbx__mono_ms() - t0));
out:
    if (tmp[0])
        sbx__rmrf(tmp);
    mem_map_free(map);
    pthread_mutex_unlock(&s->lock);
    if (gone)
        sbx__remove(m, s);
    sbx__unref(m, s);
    return rc;
}

int sbx_snapshot_delete(sbx_mgr_t *m, const char *team, const char *name, err_t *e)
{
    if (!sbx_safe_name(name))
        return err_set(e, -EINVAL, "name is not valid");
    if (team && *team && !sbx_safe_name(team))
        return err_set(e, -EINVAL, "teamId is not valid");
    char tdir[PATH_MAX], old[PATH_MAX], hex[17];
    sbx__template_dir(m, team, name, tdir, sizeof tdir);
    sbx__random_hex(hex, 8);
    snprintf(old, sizeof old, "%s/%s/.old-%s", m->tmpl_root, team && *team ? team : "_", hex);
    /* Renamed first, so a create from it that starts now fails cleanly instead of half-way. */
    if (rename(tdir, old) < 0)
        return errno == ENOENT ? err_set(e, -ENOENT, "template %s not found", name)
                               : err_errno(e, "delete template");
    sbx__pool_drop_template(m, tdir);
    sbx__rmrf(old);
    log_info("sandbox.template_deleted", "team=%s name=%s", team ? team : "", name);
    return 0;
}

/* ---- fork ----------------------------------------------------------------------------------- */

int sbx_fork(sbx_mgr_t *m, const char *id, unsigned count, int64_t timeout_sec, sbx_info_t **out,
             size_t *n, err_t *e)
{
    sync_job_t *later = NULL; /* the checkpoint's sync, started at the end */
    *out = NULL;
    *n = 0;
    if (count < 1 || count > SNAP_MAX_FORK)
        return err_set(e, -EINVAL, "count must be between 1 and %d", SNAP_MAX_FORK);
    if (timeout_sec < 0 || timeout_sec > SBX_MAX_TIMEOUT_S)
        return err_set(e, -EINVAL, "timeoutSec must be between 0 and %lld", SBX_MAX_TIMEOUT_S);
    sbx_t *s = sbx__lookup(m, id);
    if (!s)
        return err_set(e, -ENOENT, "sandbox %s not found", id);
    int64_t t0 = sbx__mono_ms();
    int rc = 0;
    bool gone = false;
    char stage[PATH_MAX + 64], p[PATH_MAX], base[PATH_MAX], overlay[PATH_MAX], hex[17];
    stage[0] = '\0';
    clone_src_t src = {0};
    char tmpl[72], team[72], token[72];
    pthread_mutex_lock(&s->lock);
    if (s->state == SBX_PAUSED) {
        rc = err_set(e, -EALREADY, "sandbox %s is paused", id);
        pthread_mutex_unlock(&s->lock);
        goto out;
    }
    if (s->state != SBX_RUNNING) {
        rc = err_set(e, -ENOENT, "sandbox %s not found", id);
        pthread_mutex_unlock(&s->lock);
        goto out;
    }
    /* Checkpoint the parent and stage what the children start from (links and a copy of its
     * disk overlay), then let the parent go on from that same checkpoint in its own slot. */
    bool lost = false;
    if ((rc = checkpoint(m, s, &lost, &later, e)) < 0) {
        if (lost) {
            sbx__teardown(m, s, true);
            gone = true;
        }
        pthread_mutex_unlock(&s->lock);
        goto out;
    }
    sbx__random_hex(hex, 8);
    snprintf(stage, sizeof stage, "%s/.fork-%s", m->sbx_root, hex);
    path_in(p, sizeof p, s->dir, "snap");
    if (mkdir(stage, 0700) < 0)
        rc = err_errno(e, "fork staging directory");
    path_in(overlay, sizeof overlay, stage, "overlay.qcow2");
    path_in(base, sizeof base, stage, "base.ext4");
    char snapdir[PATH_MAX];
    path_in(snapdir, sizeof snapdir, stage, "snap");
    if (rc == 0)
        rc = link_snapshot(p, snapdir, NULL, e);
    if (rc == 0) {
        path_in(p, sizeof p, s->dir, "overlay.qcow2");
        rc = fsutil_copy_file(p, overlay, e);
    }
    if (rc == 0) {
        char backing[PATH_MAX];
        rc = disk_qcow2_backing(p, backing, sizeof backing, e);
        if (rc == 0)
            rc = err_set(e, -EINVAL, "the disk overlay has no backing file");
        else if (rc > 0)
            rc = link_file(backing, base, e);
    }
    snprintf(tmpl, sizeof tmpl, "%s", s->template_name);
    snprintf(team, sizeof team, "%s", s->team);
    snprintf(token, sizeof token, "%s", s->token);
    unsigned vcpus = s->vcpus, memory_mb = s->memory_mb;
    bool auto_pause = s->auto_pause;
    /* The parent goes on whatever happened to the staging. */
    err_t re = {0};
    if (restore(m, s, NULL, NULL, &re) < 0) {
        log_warn("sandbox.fork_parent_paused", "sandbox=%s err=\"%s\"", s->id, re.msg);
        net_down(m, s);
        s->state = SBX_PAUSED;
        if (rc == 0)
            rc = err_set(e, -EIO, "the parent could not go on and is paused: %s", re.msg);
    }
    atomic_store(&s->last_active_at, sbx__now_s());
    err_t ie = {0};
    sbx__record_save(s, &ie);
    pthread_mutex_unlock(&s->lock);
    if (rc < 0)
        goto out;

    src = (clone_src_t){.snap = snapdir,
                        .base = base,
                        .overlay = overlay,
                        .vcpus = vcpus,
                        .memory_mb = memory_mb,
                        .token = token,
                        .template_name = tmpl,
                        .team = team};
    sbx_info_t *arr = xcalloc(count, sizeof *arr);
    size_t k = 0;
    for (unsigned i = 0; i < count; i++) {
        rc = make_clone(m, &src, NULL, timeout_sec, auto_pause, NULL, &arr[k], NULL, e);
        if (rc < 0)
            break;
        k++;
    }
    if (rc < 0) {
        /* All or nothing: the children made so far go again. */
        for (size_t i = 0; i < k; i++) {
            err_t de = {0};
            sbx_destroy(m, arr[i].id, &de);
        }
        free(arr);
        goto out;
    }
    *out = arr;
    *n = k;
    log_info("sandbox.forked", "sandbox=%s children=%u dur_ms=%lld", id, count,
             (long long)(sbx__mono_ms() - t0));
out:
    sync_start(later);
    if (stage[0])
        sbx__rmrf(stage);
    if (gone)
        sbx__remove(m, s);
    sbx__unref(m, s);
    return rc;
}
