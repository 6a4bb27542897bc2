/* Agent start: re-adopt recorded sandboxes whose VM still runs, clean up the rest, and reap
 * whatever no record owns (VM processes of our uid range, networks, stray directories). */
#include "procfs.h"
#include "sandbox_int.h"
#include "log.h"
#include "xalloc.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Whether pid is a QEMU system emulator (by its argv[0]). */
static bool is_qemu(pid_t pid)
{
    char buf[512];
    if (procfs_cmdline(pid, buf, sizeof buf) <= 0)
        return false;
    const char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    return strncmp(base, "qemu-system", 11) == 0;
}

static void kill_and_wait(pid_t pid)
{
    kill(pid, SIGKILL);
    /* Not our child after a restart: wait for /proc to let go of it. */
    for (int i = 0; i < 200 && procfs_start_time(pid) != 0; i++) {
        char path[64], st[512];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break;
        ssize_t n = read(fd, st, sizeof st - 1);
        close(fd);
        if (n > 0) {
            st[n] = '\0';
            const char *p = strrchr(st, ')');
            if (p && p[1] == ' ' && p[2] == 'Z')
                break; /* a zombie of someone else's: it no longer holds anything */
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Kill QEMU processes running as one of our per-VM uids that no live sandbox owns. */
static void reap_stray_vms(sbx_mgr_t *m)
{
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 1)
            continue;
        long uid = procfs_uid((pid_t)pid);
        if (uid < SBX_UID_BASE || uid > SBX_UID_BASE + NET_MAX_SLOTS || !is_qemu((pid_t)pid))
            continue;
        bool owned = false;
        for (size_t i = 0; i < m->ntab && !owned; i++) {
            vmm_state_t st = {0};
            if (m->tab[i]->vm)
                vmm_get_state(m->tab[i]->vm, &st);
            owned = st.pid == (pid_t)pid;
        }
        if (!owned) {
            log_warn("sandbox.reap_stray_vm", "pid=%ld uid=%ld", pid, uid);
            kill_and_wait((pid_t)pid);
        }
    }
    closedir(d);
}

static void adopt_one(sbx_mgr_t *m, const char *name)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", m->sbx_root, name);
    sbx_t *s = sbx__new();
    vmm_state_t st = {0};
    err_t e = {0};
    int rc = sbx__record_load(dir, s, &st, &e);
    /* A sandbox from the warm pool keeps its directory's p-<hex> name under the id it got. */
    if (rc == 0 && strcmp(s->id, name) != 0 && strncmp(name, "p-", 2) != 0)
        rc = err_set(&e, -EINVAL, "record id does not match its directory");
    size_t nl = strnlen(name, sizeof s->name - 1);
    memcpy(s->name, name, nl);
    s->name[nl] = '\0';
    if (rc == 0 && s->state == SBX_POOLED) {
        /* Still pooled: nobody can claim it any more; its memfs instance is not counted. */
        s->memfs_key[0] = '\0';
        s->restored = false;
        rc = err_set(&e, -ECANCELED, "a pooled sandbox of the last run");
    }
    if (rc == 0 && s->state == SBX_PAUSED)
        rc = sbx__snapshot_check(dir, &e);
    if (rc == 0 && s->state == SBX_PAUSED) {
        /* Nothing runs: it is its files (checked again when it is resumed). */
        sbx__insert(m, s);
        log_info("sandbox.adopted_paused", "sandbox=%s", s->id);
        sbx__unref(m, s);
        return;
    }
    if (rc == 0 && s->restored && s->memfs_key[0])
        rc = sbx__mshare_adopt(m, s, &e);
    else if (rc == 0 && s->restored &&
             (s->memfs_pid <= 0 || procfs_start_time(s->memfs_pid) != s->memfs_start))
        rc = err_set(&e, -ESRCH, "the memfs server of its RAM is gone");
    if (rc == 0) {
        vmm_spec_t spec;
        char kernel[512], initrd[512], rootfs[512], cmdline[512], cgroup[512];
        sbx__spec(m, s, &spec, kernel, initrd, rootfs, cmdline, cgroup, 512);
        rc = st.pid > 0 ? vmm_qemu_adopt(&spec, &st, &s->vm, &e)
                        : err_set(&e, -ESRCH, "record has no VM process");
        if (rc == 0 && !net_exists(s->slot)) {
            /* Unreachable without its network: treat it as dead. */
            err_t se = {0};
            vmm_stop(s->vm, 1000, &se);
            s->vm = NULL;
            rc = err_set(&e, -ENOENT, "its network is gone");
        }
        if (rc < 0)
            vmm_qemu_cleanup(&spec, NULL);
        /* Its RAM file is let go below, once the VM is surely gone (sbx__memfs_down). */
    }
    if (rc == 0) {
        s->net_up = true;
        s->state = SBX_RUNNING;
        m->slots[s->slot] = 1;
        sbx__insert(m, s);
        log_info("sandbox.adopted", "sandbox=%s slot=%d pid=%d", s->id, s->slot, (int)st.pid);
        sbx__unref(m, s);
        return;
    }
    log_warn("sandbox.cleanup_dead", "sandbox=%s err=\"%s\"", name, e.msg);
    /* The VM may still run if its control socket is broken: kill that very process. */
    if (st.pid > 0 && st.start_time && procfs_start_time(st.pid) == st.start_time &&
        is_qemu(st.pid))
        kill_and_wait(st.pid);
    if (s->slot > 0) {
        err_t ne = {0};
        net_destroy(s->slot, &ne);
    }
    if (s->restored)
        sbx__memfs_down(m, s);
    /* A memfs mount with no (readable) record to say so would keep the directory. */
    char mnt[600];
    snprintf(mnt, sizeof mnt, "%s/memfs", dir);
    if (umount2(mnt, MNT_DETACH) == 0)
        log_warn("sandbox.reap_stray_mount", "path=%s", mnt);
    sbx__rmrf(dir);
    sbx__unref(m, s);
}

/* Whether mount point mp is the memfs of a running sandbox we adopted. */
static bool owned_mount(sbx_mgr_t *m, const char *mp)
{
    for (size_t i = 0; i < m->ntab; i++) {
        char want[600];
        snprintf(want, sizeof want, "%s/memfs", m->tab[i]->dir);
        if (m->tab[i]->state == SBX_RUNNING && m->tab[i]->restored && strcmp(want, mp) == 0)
            return true;
    }
    return false;
}

/* Detach every mount under <root>/sandboxes that no adopted sandbox owns (a memfs whose
 * sandbox is gone; its server exits once the mount is gone). */
static void reap_stray_mounts(sbx_mgr_t *m)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    char line[4096];
    size_t rl = strlen(m->sbx_root);
    char **stray = NULL;
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        /* id parent major:minor root mount-point ...; octal escapes (\040) in paths. */
        char *save = NULL, *tok = strtok_r(line, " ", &save);
        for (int i = 0; i < 4 && tok; i++)
            tok = strtok_r(NULL, " ", &save);
        if (!tok || strncmp(tok, m->sbx_root, rl) != 0 || tok[rl] != '/' || strchr(tok, '\\'))
            continue;
        if (!owned_mount(m, tok)) {
            stray = xrealloc(stray, (n + 1) * sizeof *stray);
            stray[n++] = xstrdup(tok);
        }
    }
    fclose(f);
    for (size_t i = n; i-- > 0;) {
        if (umount2(stray[i], MNT_DETACH) == 0)
            log_warn("sandbox.reap_stray_mount", "path=%s", stray[i]);
        free(stray[i]);
    }
    free(stray);
}

int sbx__recover(sbx_mgr_t *m, err_t *e)
{
    DIR *d = opendir(m->sbx_root);
    if (!d)
        return err_errno(e, "open sandboxes directory");
    struct dirent *de;
    char **names = NULL;
    size_t n = 0;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        names = xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    sbx__mshare_load(m);
    for (size_t i = 0; i < n; i++) {
        char path[600];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", m->sbx_root, names[i]);
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && sbx_safe_name(names[i])) {
            adopt_one(m, names[i]);
        } else {
            log_warn("sandbox.reap_stray_file", "path=%s", path);
            if (S_ISDIR(sb.st_mode))
                sbx__rmrf(path);
            else
                unlink(path);
        }
        free(names[i]);
    }
    free(names);

    reap_stray_vms(m);
    reap_stray_mounts(m);
    sbx__mshare_prune(m);
    int keep[NET_MAX_SLOTS > 4096 ? 4096 : NET_MAX_SLOTS];
    int nkeep = 0;
    for (size_t i = 0; i < m->ntab && nkeep < (int)(sizeof keep / sizeof keep[0]); i++)
        keep[nkeep++] = m->tab[i]->slot;
    err_t ne = {0};
    if (net_reap_leftovers(keep, nkeep, &ne) < 0)
        log_warn("sandbox.net_reap_failed", "err=\"%s\"", ne.msg);
    return 0;
}
