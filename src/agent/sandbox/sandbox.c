/* The sandbox manager: table, slots, create/destroy with rollback, TTL reaper. */
#include "sandbox_int.h"
#include "disk_glue.h"
#include "log.h"
#include "mem/mem.h"
#include "xalloc.h"

#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t sbx__now_s(void)
{
    return (int64_t)time(NULL);
}

void sbx__set_id(sbx_t *s, const char *id)
{
    if (id && *id) {
        snprintf(s->id, sizeof s->id, "%s", id);
        return;
    }
    char hex[17];
    sbx__random_hex(hex, 4);
    snprintf(s->id, sizeof s->id, "sb-%s", hex);
}

int64_t sbx__mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sbx__cond_init_mono(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

bool sbx_safe_name(const char *name)
{
    if (!name || !*name || name[0] == '.')
        return false;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        if (n >= 64)
            return false;
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    }
    return true;
}

sbx_t *sbx__new(void)
{
    sbx_t *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->refs = 1;
    s->slot = -1;
    return s;
}

void sbx__unref(sbx_mgr_t *m, sbx_t *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&m->lock);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&m->lock);
    if (last) {
        pthread_mutex_destroy(&s->lock);
        free(s);
    }
}

int sbx__insert(sbx_mgr_t *m, sbx_t *s)
{
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->ntab; i++) {
        if (strcmp(m->tab[i]->id, s->id) == 0) {
            pthread_mutex_unlock(&m->lock);
            return -EEXIST;
        }
    }
    if (m->ntab == m->captab) {
        m->captab = m->captab ? m->captab * 2 : 16;
        m->tab = xrealloc(m->tab, m->captab * sizeof *m->tab);
    }
    m->tab[m->ntab++] = s;
    s->refs++;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

void sbx__remove(sbx_mgr_t *m, sbx_t *s)
{
    bool found = false;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->ntab; i++) {
        if (m->tab[i] == s) {
            m->tab[i] = m->tab[--m->ntab];
            found = true;
            break;
        }
    }
    if (s->slot > 0 && s->slot <= NET_MAX_SLOTS)
        m->slots[s->slot] = 0;
    pthread_mutex_unlock(&m->lock);
    if (found)
        sbx__unref(m, s);
}

/* A referenced sandbox by id, or NULL. */
sbx_t *sbx__lookup(sbx_mgr_t *m, const char *id)
{
    sbx_t *s = NULL;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->ntab; i++) {
        if (strcmp(m->tab[i]->id, id) == 0) {
            s = m->tab[i];
            s->refs++;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return s;
}

int sbx__alloc_slot(sbx_mgr_t *m)
{
    int slot = -ENOSPC;
    pthread_mutex_lock(&m->lock);
    for (int i = 1; i <= NET_MAX_SLOTS; i++) {
        if (!m->slots[i]) {
            m->slots[i] = 1;
            slot = i;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return slot;
}

void sbx__release_slot(sbx_mgr_t *m, sbx_t *s)
{
    pthread_mutex_lock(&m->lock);
    if (s->slot > 0 && s->slot <= NET_MAX_SLOTS)
        m->slots[s->slot] = 0;
    s->slot = 0;
    pthread_mutex_unlock(&m->lock);
}

void sbx__fill_info(const sbx_t *s, sbx_info_t *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", s->id);
    snprintf(out->status, sizeof out->status, "%s",
             s->state == SBX_RUNNING    ? "running"
             : s->state == SBX_PAUSED   ? "paused"
             : s->state == SBX_CREATING ? "starting"
                                        : "stopping");
    snprintf(out->template_name, sizeof out->template_name, "%s", s->template_name);
    out->vcpus = s->vcpus;
    out->memory_mb = s->memory_mb;
    snprintf(out->host_ip, sizeof out->host_ip, "%s", s->net.host_ip);
    out->created_at = s->created_at;
    out->last_active_at = atomic_load(&s->last_active_at);
    out->timeout_sec = atomic_load(&s->timeout_sec);
}

void sbx__spec(sbx_mgr_t *m, sbx_t *s, vmm_spec_t *spec, char *kernel, char *initrd, char *rootfs,
               char *cmdline, char *cgroup, size_t n)
{
    snprintf(kernel, n, "%s/kernels/current/vmlinux", m->root);
    snprintf(initrd, n, "%s/kernels/current/initramfs.cpio", m->root);
    snprintf(rootfs, n, "%s/overlay.qcow2", s->dir);
    /* Under TCG the guest cannot always calibrate its TSC (microvm has no HPET or PM timer)
     * and then hangs: hand it the host's frequency (lpj assumes the kernel's HZ=250). */
    if (m->tsc_khz)
        snprintf(cmdline, n, "console=ttyS0 root=/dev/vda rw tsc_early_khz=%u lpj=%u", m->tsc_khz,
                 m->tsc_khz * 4);
    else
        snprintf(cmdline, n, "console=ttyS0 root=/dev/vda rw");
    const char *name = s->name[0] ? s->name : s->id;
    snprintf(cgroup, n, "wrenn-%s", name);
    memset(spec, 0, sizeof *spec);
    spec->id = name;
    spec->run_dir = s->dir;
    spec->kernel = kernel;
    spec->initrd = initrd;
    spec->rootfs = rootfs;
    spec->rootfs_format = "qcow2";
    spec->cmdline = cmdline;
    spec->netns = s->net.netns;
    spec->tap = s->net.tap;
    spec->mac = NET_GUEST_MAC;
    spec->vcpus = s->vcpus;
    spec->memory_mb = s->memory_mb;
    spec->uid = s->uid;
    spec->gid = s->gid;
    spec->cgroup = cgroup;
    if (s->restored) {
        if (s->memfs_key[0]) {
            sbx__mshare_mem_path(m, s->memfs_key, s->mem_path, sizeof s->mem_path);
            spec->mem_private = true; /* over memfs's read-only file */
        } else                        /* an older agent's memfs, written through */
            snprintf(s->mem_path, sizeof s->mem_path, "%s/memfs/mem", s->dir);
        spec->mem_path = s->mem_path;
    }
}

static unsigned host_tsc_khz(void)
{
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f)
        return 0;
    char line[256];
    double mhz = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "cpu MHz", 7) == 0) {
            const char *c = strchr(line, ':');
            if (c)
                mhz = strtod(c + 1, NULL);
            break;
        }
    }
    fclose(f);
    return mhz > 0 ? (unsigned)(mhz * 1000.0 + 0.5) : 0;
}

/* ---- create / destroy ---------------------------------------------------------------------- */

void sbx__random_hex(char *out, size_t nbytes)
{
    unsigned char r[64];
    if (nbytes > sizeof r)
        nbytes = sizeof r;
    size_t got = 0;
    while (got < nbytes) {
        ssize_t k = getrandom(r + got, nbytes - got, 0);
        if (k > 0)
            got += (size_t)k;
    }
    for (size_t i = 0; i < nbytes; i++)
        sprintf(out + 2 * i, "%02x", r[i]);
    out[2 * nbytes] = '\0';
}

int sbx__vm_alive_cb(void *ud)
{
    return vmm_alive(ud);
}

/* Tear down whatever s has, in reverse order of creation. Called with s->lock held. */
void sbx__teardown(sbx_mgr_t *m, sbx_t *s, bool remove_files)
{
    err_t e = {0};
    if (s->vm) {
        if (vmm_stop(s->vm, 2000, &e) < 0)
            log_warn("sandbox.vm_stop_failed", "sandbox=%s err=\"%s\"", s->id, e.msg);
        s->vm = NULL;
    }
    if (s->memfs_pid > 0 || s->restored)
        sbx__memfs_down(m, s);
    if (s->net_up) {
        err_clear(&e);
        if (net_destroy(s->slot, &e) < 0)
            log_warn("sandbox.net_destroy_failed", "sandbox=%s slot=%d err=\"%s\"", s->id, s->slot,
                     e.msg);
        s->net_up = false;
    }
    if (remove_files && s->dir[0] && sbx__rmrf(s->dir) < 0)
        log_warn("sandbox.rm_failed", "sandbox=%s path=%s", s->id, s->dir);
    s->state = SBX_GONE;
    (void)m;
}

int sbx_create(sbx_mgr_t *m, const sbx_create_req_t *req, sbx_info_t *out, err_t *e)
{
    const char *tmpl = req->template_name && *req->template_name ? req->template_name : "minimal";
    int64_t vcpus = req->vcpus > 0 ? req->vcpus : 1;
    int64_t mem = req->memory_mb > 0 ? req->memory_mb : 512;
    if (!sbx_safe_name(tmpl))
        return err_set(e, -EINVAL,
                       "template name is not valid: use 1-64 letters, digits, '.', "
                       "'_' or '-', not starting with '.'");
    if (req->id && *req->id && !sbx_safe_name(req->id))
        return err_set(e, -EINVAL,
                       "sandboxId is not valid: use 1-64 letters, digits, '.', '_' "
                       "or '-', not starting with '.'");
    if (vcpus > m->max_vcpus)
        return err_set(e, -EINVAL, "vcpus must be between 1 and %u on this host", m->max_vcpus);
    if (mem < SBX_MIN_MEMORY_MB || mem > m->max_memory_mb)
        return err_set(e, -EINVAL, "memoryMb must be between %d and %u on this host",
                       SBX_MIN_MEMORY_MB, m->max_memory_mb);
    /* Guest RAM is mapped 2 MiB-aligned so the host can back it with huge pages (vmm/qemu.c). */
    if (mem % 2 != 0)
        return err_set(e, -EINVAL, "memoryMb must be a multiple of 2");
    if (req->timeout_sec < 0 || req->timeout_sec > SBX_MAX_TIMEOUT_S)
        return err_set(e, -EINVAL, "timeoutSec must be between 0 and %lld", SBX_MAX_TIMEOUT_S);
    if (req->env_vars && !json_is_object(req->env_vars))
        return err_set(e, -EINVAL, "envVars must be an object");

    if (req->team && *req->team && !sbx_safe_name(req->team))
        return err_set(e, -EINVAL, "teamId is not valid");
    /* A snapshot template of the team shadows a base image of the same name. */
    char base[PATH_MAX];
    sbx__template_dir(m, req->team, tmpl, base, sizeof base);
    struct stat tst;
    if (stat(base, &tst) == 0 && S_ISDIR(tst.st_mode))
        return sbx__create_from_template(m, req, base, out, e);
    snprintf(base, sizeof base, "%s/images/%s/rootfs.ext4", m->root, tmpl);
    if (access(base, R_OK) < 0)
        return err_set(e, -ENOENT, "template %s not found", tmpl);

    int64_t t0 = sbx__mono_ms();
    sbx_t *s = sbx__new();
    int rc = 0;
    bool inserted = false;
    sbx__set_id(s, req->id);
    snprintf(s->template_name, sizeof s->template_name, "%s", tmpl);
    snprintf(s->team, sizeof s->team, "%s", req->team ? req->team : "");
    s->auto_pause = req->auto_pause;
    s->vcpus = (unsigned)vcpus;
    s->memory_mb = (unsigned)mem;
    atomic_store(&s->timeout_sec, req->timeout_sec);
    s->state = SBX_CREATING;
    pthread_mutex_lock(&s->lock);

    if ((rc = sbx__insert(m, s)) < 0) {
        rc = err_set(e, -EEXIST, "sandbox %s already exists", s->id);
        goto fail;
    }
    inserted = true;
    if ((s->slot = sbx__alloc_slot(m)) < 0) {
        rc = err_set(e, -ENOSPC, "no free network slot");
        goto fail;
    }
    s->uid = (uid_t)(SBX_UID_BASE + s->slot);
    s->gid = (gid_t)(SBX_UID_BASE + s->slot);
    net_slot_names(s->slot, &s->net);
    snprintf(s->dir, sizeof s->dir, "%s/%s", m->sbx_root, s->id);
    snprintf(s->name, sizeof s->name, "%s", s->id);
    if (mkdir(s->dir, 0700) < 0) {
        rc = err_errno(e, "create sandbox directory");
        s->dir[0] = '\0'; /* not ours to remove */
        goto fail;
    }
    if (chown(s->dir, s->uid, s->gid) < 0) {
        rc = err_errno(e, "chown sandbox directory");
        goto fail;
    }
    char overlay[PATH_MAX];
    snprintf(overlay, sizeof overlay, "%s/overlay.qcow2", s->dir);
    if ((rc = sbx_disk_overlay(base, overlay, s->uid, s->gid, e)) < 0) {
        err_wrap(e, "disk");
        goto fail;
    }
    if ((rc = net_create(s->slot, &s->net, e)) < 0) {
        err_wrap(e, "network");
        goto fail;
    }
    s->net_up = true;
    sbx__random_hex(s->token, 32);

    vmm_spec_t spec;
    char kernel[512], initrd[512], rootfs[512], cmdline[512], cgroup[512];
    sbx__spec(m, s, &spec, kernel, initrd, rootfs, cmdline, cgroup, 512);
    if ((rc = vmm_qemu_start(&spec, &s->vm, e)) < 0) {
        err_wrap(e, "vm");
        goto fail;
    }
    int64_t t_vm = sbx__mono_ms();
    envdc_t c;
    envdc_target(&c, s->net.host_ip, m->guest_port, s->token);
    /* The first answer of the booting guest is its /init: no separate /health round trip. */
    if ((rc = envdc_wait_init(&c, m->boot_timeout_ms, sbx__vm_alive_cb, s->vm, NULL, req->env_vars,
                              false, e)) < 0) {
        err_wrap(e, rc == -ETIMEDOUT || rc == -ECHILD ? "boot" : "guest init");
        goto fail;
    }
    int64_t t_init = sbx__mono_ms();
    s->created_at = sbx__now_s();
    atomic_store(&s->last_active_at, s->created_at);
    if ((rc = sbx__record_save(s, e)) < 0) {
        err_wrap(e, "record");
        goto fail;
    }
    s->state = SBX_RUNNING;
    sbx__fill_info(s, out);
    pthread_mutex_unlock(&s->lock);
    int64_t t_end = sbx__mono_ms();
    log_info("sandbox.created",
             "sandbox=%s template=%s slot=%d vcpus=%u memory_mb=%u host_ip=%s dur_ms=%lld "
             "vm_ms=%lld boot_ms=%lld record_ms=%lld",
             s->id, s->template_name, s->slot, s->vcpus, s->memory_mb, s->net.host_ip,
             (long long)(t_end - t0), (long long)(t_vm - t0), (long long)(t_init - t_vm),
             (long long)(t_end - t_init));
    sbx__unref(m, s);
    return 0;

fail:
    log_warn("sandbox.create_failed", "sandbox=%s err=\"%s\"", s->id, e ? e->msg : "");
    sbx__teardown(m, s, true);
    pthread_mutex_unlock(&s->lock);
    if (inserted)
        sbx__remove(m, s);
    sbx__unref(m, s);
    return rc;
}

/* Destroy s (referenced by the caller). */
static int destroy_locked(sbx_mgr_t *m, sbx_t *s, const char *why)
{
    int64_t t0 = sbx__mono_ms();
    s->state = SBX_STOPPING;
    sbx__teardown(m, s, true);
    log_info("sandbox.destroyed", "sandbox=%s reason=%s dur_ms=%lld", s->id, why,
             (long long)(sbx__mono_ms() - t0));
    return 0;
}

int sbx_destroy(sbx_mgr_t *m, const char *id, err_t *e)
{
    sbx_t *s = sbx__lookup(m, id);
    if (!s)
        return err_set(e, -ENOENT, "sandbox %s not found", id);
    pthread_mutex_lock(&s->lock);
    int rc;
    if (s->state != SBX_RUNNING && s->state != SBX_PAUSED) {
        rc = err_set(e, -ENOENT, "sandbox %s not found", id);
        pthread_mutex_unlock(&s->lock);
    } else {
        rc = destroy_locked(m, s, "request");
        pthread_mutex_unlock(&s->lock);
        sbx__remove(m, s);
    }
    sbx__unref(m, s);
    return rc;
}

/* Look up a running sandbox and run fn on it under its lock. */
static int with_running(sbx_mgr_t *m, const char *id, err_t *e,
                        void (*fn)(sbx_mgr_t *m, sbx_t *s, void *ud), void *ud)
{
    sbx_t *s = sbx__lookup(m, id);
    if (!s)
        return err_set(e, -ENOENT, "sandbox %s not found", id);
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->state == SBX_PAUSED)
        rc = err_set(e, -EALREADY, "sandbox %s is paused", id);
    else if (s->state != SBX_RUNNING)
        rc = err_set(e, -ENOENT, "sandbox %s not found", id);
    else
        fn(m, s, ud);
    pthread_mutex_unlock(&s->lock);
    sbx__unref(m, s);
    return rc;
}

static void do_info(sbx_mgr_t *m, sbx_t *s, void *ud)
{
    (void)m;
    sbx__fill_info(s, ud);
}

int sbx_get(sbx_mgr_t *m, const char *id, sbx_info_t *out, err_t *e)
{
    return with_running(m, id, e, do_info, out);
}

int sbx_list(sbx_mgr_t *m, sbx_info_t **out, size_t *n)
{
    pthread_mutex_lock(&m->lock);
    size_t cnt = m->ntab;
    sbx_t **copy = xcalloc(cnt ? cnt : 1, sizeof *copy);
    for (size_t i = 0; i < cnt; i++) {
        copy[i] = m->tab[i];
        copy[i]->refs++;
    }
    pthread_mutex_unlock(&m->lock);
    sbx_info_t *arr = xcalloc(cnt ? cnt : 1, sizeof *arr);
    size_t k = 0;
    for (size_t i = 0; i < cnt; i++) {
        /* A sandbox being created holds its lock for the whole boot: skip it, not wait. */
        if (pthread_mutex_trylock(&copy[i]->lock) == 0) {
            if (copy[i]->state == SBX_RUNNING || copy[i]->state == SBX_PAUSED)
                sbx__fill_info(copy[i], &arr[k++]);
            pthread_mutex_unlock(&copy[i]->lock);
        }
        sbx__unref(m, copy[i]);
    }
    free(copy);
    *out = arr;
    *n = k;
    return 0;
}

struct timeout_arg {
    int64_t t;
    int rc;
    err_t *e;
};

static void do_timeout(sbx_mgr_t *m, sbx_t *s, void *ud)
{
    (void)m;
    struct timeout_arg *a = ud;
    atomic_store(&s->timeout_sec, a->t);
    atomic_store(&s->last_active_at, sbx__now_s());
    a->rc = sbx__record_save(s, a->e);
}

int sbx_set_timeout(sbx_mgr_t *m, const char *id, int64_t timeout_sec, err_t *e)
{
    if (timeout_sec < 0 || timeout_sec > SBX_MAX_TIMEOUT_S)
        return err_set(e, -EINVAL, "timeoutSec must be between 0 and %lld", SBX_MAX_TIMEOUT_S);
    struct timeout_arg a = {.t = timeout_sec, .e = e};
    int rc = with_running(m, id, e, do_timeout, &a);
    return rc < 0 ? rc : a.rc;
}

static void do_touch(sbx_mgr_t *m, sbx_t *s, void *ud)
{
    (void)m;
    (void)ud;
    atomic_store(&s->last_active_at, sbx__now_s());
}

int sbx_touch(sbx_mgr_t *m, const char *id, err_t *e)
{
    return with_running(m, id, e, do_touch, NULL);
}

static void do_target(sbx_mgr_t *m, sbx_t *s, void *ud)
{
    atomic_store(&s->last_active_at, sbx__now_s());
    envdc_target(ud, s->net.host_ip, m->guest_port, s->token);
}

int sbx_target(sbx_mgr_t *m, const char *id, envdc_t *out, err_t *e)
{
    return with_running(m, id, e, do_target, out);
}

int sbx_take_auto_paused(sbx_mgr_t *m, char ***ids, size_t *n)
{
    pthread_mutex_lock(&m->lock);
    *ids = m->auto_paused;
    *n = m->nauto_paused;
    m->auto_paused = NULL;
    m->nauto_paused = 0;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* ---- reaper ---------------------------------------------------------------------------------- */

static void reap_once(sbx_mgr_t *m)
{
    sbx__pool_reap(m);
    pthread_mutex_lock(&m->lock);
    size_t cnt = m->ntab;
    sbx_t **copy = xcalloc(cnt ? cnt : 1, sizeof *copy);
    for (size_t i = 0; i < cnt; i++) {
        copy[i] = m->tab[i];
        copy[i]->refs++;
    }
    pthread_mutex_unlock(&m->lock);
    int64_t now = sbx__now_s();
    for (size_t i = 0; i < cnt; i++) {
        sbx_t *s = copy[i];
        if (pthread_mutex_trylock(&s->lock) == 0) {
            const char *why = NULL;
            int64_t to = atomic_load(&s->timeout_sec);
            if (s->state == SBX_RUNNING && !vmm_alive(s->vm))
                why = "vm_exited";
            else if (s->state == SBX_RUNNING && to > 0 &&
                     now - atomic_load(&s->last_active_at) >= to)
                why = "timeout";
            bool paused = false;
            if (why && strcmp(why, "timeout") == 0 && s->auto_pause) {
                /* autoPause: the sandbox goes to disk, and ListSandboxes says so once. */
                err_t pe = {0};
                bool gone = false;
                if (sbx__pause_locked(m, s, &gone, &pe) == 0) {
                    paused = true;
                    pthread_mutex_lock(&m->lock);
                    m->auto_paused =
                        xrealloc(m->auto_paused, (m->nauto_paused + 1) * sizeof *m->auto_paused);
                    m->auto_paused[m->nauto_paused++] = xstrdup(s->id);
                    pthread_mutex_unlock(&m->lock);
                    log_info("sandbox.auto_paused", "sandbox=%s", s->id);
                } else {
                    log_warn("sandbox.auto_pause_failed", "sandbox=%s err=\"%s\"", s->id, pe.msg);
                    if (gone)
                        s->state = SBX_GONE;
                }
            }
            if (why && !paused && s->state != SBX_GONE)
                destroy_locked(m, s, why);
            pthread_mutex_unlock(&s->lock);
            if (why && !paused)
                sbx__remove(m, s);
        }
        sbx__unref(m, s);
    }
    free(copy);
}

static void *reaper_main(void *ud)
{
    sbx_mgr_t *m = ud;
    pthread_mutex_lock(&m->stop_lock);
    while (!m->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&m->stop_cond, &m->stop_lock, &ts);
        if (m->stopping)
            break;
        pthread_mutex_unlock(&m->stop_lock);
        reap_once(m);
        pthread_mutex_lock(&m->stop_lock);
    }
    pthread_mutex_unlock(&m->stop_lock);
    return NULL;
}

/* ---- manager --------------------------------------------------------------------------------- */

int sbx_mgr_new(const sbx_mgr_cfg_t *cfg, sbx_mgr_t **out, err_t *e)
{
    sbx_mgr_t *m = xcalloc(1, sizeof *m);
    int rc = 0;
    m->root = xstrdup(cfg->root);
    m->sbx_root = xasprintf("%s/sandboxes", cfg->root);
    m->tmpl_root = xasprintf("%s/templates", cfg->root);
    m->max_layers = cfg->max_layers > 0 ? cfg->max_layers : 10;
    m->boot_timeout_ms = cfg->boot_timeout_ms > 0 ? cfg->boot_timeout_ms : 30000;
    m->guest_port = cfg->guest_port > 0 ? cfg->guest_port : NET_ENVD_PORT;
    m->slots = xcalloc(NET_MAX_SLOTS + 1, 1);
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->ms_lock, NULL);
    pthread_cond_init(&m->ms_cond, NULL);
    pthread_mutex_init(&m->stop_lock, NULL);
    sbx__cond_init_mono(&m->stop_cond);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    m->max_vcpus = (unsigned)(ncpu > 0 && ncpu < SBX_MAX_VCPUS ? ncpu : SBX_MAX_VCPUS);
    struct sysinfo si;
    unsigned long long total_mb = SBX_MAX_MEMORY_MB;
    if (sysinfo(&si) == 0)
        total_mb = (unsigned long long)si.totalram * si.mem_unit / (1024 * 1024);
    m->max_memory_mb = (unsigned)(total_mb < SBX_MAX_MEMORY_MB ? total_mb : SBX_MAX_MEMORY_MB);
    m->tsc_khz = host_tsc_khz();

    if (mkdir(m->root, 0755) < 0 && errno != EEXIST) {
        rc = err_errno(e, "create root directory");
        goto fail;
    }
    /* The per-VM users must be able to walk into their own sandbox directory. */
    if (mkdir(m->sbx_root, 0711) < 0 && errno != EEXIST) {
        rc = err_errno(e, "create sandboxes directory");
        goto fail;
    }
    chmod(m->sbx_root, 0711);
    if (mkdir(m->tmpl_root, 0700) < 0 && errno != EEXIST) {
        rc = err_errno(e, "create templates directory");
        goto fail;
    }
    /* Pauses return once a snapshot is complete in the page cache and sync it in the
     * background (snapshot.c). */
    mem_set_data_sync(false);
    if ((rc = net_host_init(e)) < 0) {
        err_wrap(e, "network init");
        goto fail;
    }
    if ((rc = sbx__recover(m, e)) < 0)
        goto fail;
    if (pthread_create(&m->reaper, NULL, reaper_main, m) != 0) {
        rc = err_set(e, -EAGAIN, "cannot start the reaper thread");
        goto fail;
    }
    m->reaper_started = true;
    if (sbx__pool_init(m, cfg->pool_size) < 0) {
        rc = err_set(e, -EAGAIN, "cannot start the warm pool's thread");
        goto fail;
    }
    log_info("sandbox.manager_ready",
             "root=%s max_vcpus=%u max_memory_mb=%u tsc_khz=%u adopted=%zu accel=%s", m->root,
             m->max_vcpus, m->max_memory_mb, m->tsc_khz, m->ntab, vmm_qemu_accel());
    *out = m;
    return 0;
fail:
    sbx_mgr_free(m);
    return rc;
}

void sbx_mgr_free(sbx_mgr_t *m)
{
    if (!m)
        return;
    if (m->reaper_started) {
        pthread_mutex_lock(&m->stop_lock);
        m->stopping = true;
        pthread_cond_signal(&m->stop_cond);
        pthread_mutex_unlock(&m->stop_lock);
        pthread_join(m->reaper, NULL);
    }
    sbx__pool_fini(m);
    /* VM handles are dropped without stopping the VMs: the next agent re-adopts them. */
    for (size_t i = 0; i < m->ntab; i++) {
        vmm_release(m->tab[i]->vm);
        pthread_mutex_destroy(&m->tab[i]->lock);
        free(m->tab[i]);
    }
    free(m->tab);
    free(m->slots);
    free(m->root);
    free(m->sbx_root);
    free(m->tmpl_root);
    for (size_t i = 0; i < m->nauto_paused; i++)
        free(m->auto_paused[i]);
    free(m->auto_paused);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->ms_lock);
    pthread_cond_destroy(&m->ms_cond);
    sbx__mshare_fini(m);
    pthread_mutex_destroy(&m->stop_lock);
    pthread_cond_destroy(&m->stop_cond);
    free(m);
}
