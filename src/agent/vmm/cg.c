#include "cg.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static const char *const controllers[] = {"memory", "cpu", "pids"};
#define NCTRL 3

/* Where each controller lives for this process; computed once (see base_init). */
typedef struct hier {
    char mount[256]; /* mount point of the hierarchy */
    char mroot[256]; /* the hierarchy path mounted there (mountinfo "root"), usually "/" */
    char base[512];  /* absolute directory of the agent's own group */
    bool v2;
    bool ok;
} hier_t;

static struct {
    hier_t h[NCTRL];
    char v2mount[256];
    char v2mroot[256];
    int err;
} g_base;
static pthread_once_t g_base_once = PTHREAD_ONCE_INIT;

static bool has_token(const char *list, const char *tok)
{
    size_t n = strlen(tok);
    for (const char *p = list; p && *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == n && memcmp(p, tok, n) == 0)
            return true;
        p = c ? c + 1 : NULL;
    }
    return false;
}

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* Find the mount of a v1 hierarchy carrying ctrl (or the v2 mount when ctrl is NULL). */
static bool find_mount(const char *ctrl, char *mnt, size_t mlen, char *root, size_t rlen)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return false;
    char *line = NULL;
    size_t cap = 0;
    bool found = false;
    while (!found && getline(&line, &cap, f) > 0) {
        char *sep = strstr(line, " - ");
        if (!sep)
            continue;
        char fstype[32], source[64], opts[512];
        if (sscanf(sep + 3, "%31s %63s %511s", fstype, source, opts) != 3)
            continue;
        bool want = ctrl ? (strcmp(fstype, "cgroup") == 0 && has_token(opts, ctrl))
                         : strcmp(fstype, "cgroup2") == 0;
        if (!want)
            continue;
        char mroot[256], mpoint[256];
        if (sscanf(line, "%*s %*s %*s %255s %255s", mroot, mpoint) != 2)
            continue;
        unescape(mroot);
        unescape(mpoint);
        snprintf(mnt, mlen, "%s", mpoint);
        snprintf(root, rlen, "%s", mroot);
        found = true;
    }
    free(line);
    fclose(f);
    return found;
}

/* Directory of hierarchy path `path` given the mount point and the mount's root. */
static void hier_dir(const char *mnt, const char *mroot, const char *path, char *out, size_t len)
{
    size_t rl = strlen(mroot);
    if (strcmp(mroot, "/") != 0 && strncmp(path, mroot, rl) == 0 &&
        (path[rl] == '/' || path[rl] == '\0'))
        path += rl;
    if (strcmp(path, "/") == 0)
        path = "";
    snprintf(out, len, "%s%s", mnt, path);
}

static int write_file(const char *dir, const char *file, const char *val, err_t *e)
{
    char path[640];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return err_errno(e, path);
    size_t n = strlen(val);
    ssize_t w = write(fd, val, n);
    int rc = 0;
    if (w != (ssize_t)n)
        rc = err_errno(e, path);
    close(fd);
    return rc;
}

static bool file_exists(const char *dir, const char *file)
{
    char path[640];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return access(path, F_OK) == 0;
}

static bool read_small(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return false;
    buf[n] = '\0';
    return true;
}

/* On v2, a non-root group that holds processes cannot hand controllers to children. Move the
 * members into "<base>/agent" so base becomes a pure parent, then enable the controllers. */
static int v2_delegate(char *base, size_t blen, const char *ctrls)
{
    char path[640];
    snprintf(path, sizeof path, "%s/cgroup.subtree_control", base);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t w = write(fd, ctrls, strlen(ctrls));
    int rc = w < 0 ? -errno : 0;
    close(fd);
    if (rc != -EBUSY)
        return rc;
    char leaf[560];
    snprintf(leaf, sizeof leaf, "%s/agent", base);
    if (mkdir(leaf, 0755) < 0 && errno != EEXIST)
        return -errno;
    char procs[600], line[32];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", base);
    FILE *f = fopen(procs, "re");
    if (!f)
        return -errno;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        err_t ign;
        write_file(leaf, "cgroup.procs", line, &ign); /* processes may exit meanwhile */
    }
    fclose(f);
    log_info("vmm.cgroup_delegated", "moved_to=%s", leaf);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    w = write(fd, ctrls, strlen(ctrls));
    rc = w < 0 ? -errno : 0;
    close(fd);
    (void)blen;
    return rc;
}

static void base_init(void)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f) {
        g_base.err = -errno;
        return;
    }
    char v2path[512] = "";
    bool have_v2 = false;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = *c2 = '\0';
        const char *ctrls = c1 + 1, *path = c2 + 1;
        if (strcmp(line, "0") == 0 && *ctrls == '\0') {
            snprintf(v2path, sizeof v2path, "%s", path);
            have_v2 = true;
            continue;
        }
        for (int i = 0; i < NCTRL; i++) {
            if (!has_token(ctrls, controllers[i]))
                continue;
            hier_t *h = &g_base.h[i];
            if (!find_mount(controllers[i], h->mount, sizeof h->mount, h->mroot, sizeof h->mroot))
                continue;
            hier_dir(h->mount, h->mroot, path, h->base, sizeof h->base);
            h->ok = true;
        }
    }
    free(line);
    fclose(f);

    if (!have_v2 || !find_mount(NULL, g_base.v2mount, sizeof g_base.v2mount, g_base.v2mroot,
                                sizeof g_base.v2mroot))
        return;
    char v2base[512];
    hier_dir(g_base.v2mount, g_base.v2mroot, v2path, v2base, sizeof v2base);
    char avail[256] = "", cpath[600];
    snprintf(cpath, sizeof cpath, "%s/cgroup.controllers", v2base);
    read_small(cpath, avail, sizeof avail);
    char want[64] = "";
    for (int i = 0; i < NCTRL; i++) {
        if (g_base.h[i].ok)
            continue;
        /* cgroup.controllers is space separated. */
        char tok[16];
        bool in = false;
        for (const char *p = avail; sscanf(p, "%15s", tok) == 1;) {
            if (strcmp(tok, controllers[i]) == 0)
                in = true;
            p = strstr(p, tok) + strlen(tok);
        }
        if (!in)
            continue;
        size_t l = strlen(want);
        snprintf(want + l, sizeof want - l, "%s+%s", l ? " " : "", controllers[i]);
        hier_t *h = &g_base.h[i];
        snprintf(h->mount, sizeof h->mount, "%s", g_base.v2mount);
        snprintf(h->mroot, sizeof h->mroot, "%s", g_base.v2mroot);
        snprintf(h->base, sizeof h->base, "%s", v2base);
        h->v2 = true;
        h->ok = true;
    }
    if (want[0]) {
        int rc = v2_delegate(v2base, sizeof v2base, want);
        if (rc < 0)
            log_warn("vmm.cgroup_delegate_failed", "dir=%s controllers=\"%s\" err=\"%s\"", v2base,
                     want, strerror(-rc));
    }
}

static int resolve(const char *name, cg_t *out, err_t *e)
{
    pthread_once(&g_base_once, base_init);
    memset(out, 0, sizeof *out);
    if (g_base.err)
        return err_set(e, g_base.err, "cgroup: cannot read /proc/self/cgroup");
    if (name && (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
                 strlen(name) > 64))
        return err_set(e, -EINVAL, "cgroup: bad group name");
    for (int i = 0; i < NCTRL; i++) {
        const hier_t *h = &g_base.h[i];
        if (!h->ok) {
            size_t l = strlen(out->missing);
            snprintf(out->missing + l, sizeof out->missing - l, "%s%s", l ? " " : "",
                     controllers[i]);
            continue;
        }
        char dir[512];
        int w = snprintf(dir, sizeof dir, "%s/%s", h->base, name ? name : "");
        if (w < 0 || (size_t)w >= sizeof dir)
            return err_set(e, -ENAMETOOLONG, "cgroup: path too long");
        bool dup = false;
        for (int j = 0; j < out->ndirs; j++)
            if (strcmp(out->dirs[j], dir) == 0)
                dup = true;
        if (dup)
            continue;
        snprintf(out->dirs[out->ndirs], sizeof out->dirs[0], "%s", dir);
        out->v2[out->ndirs] = h->v2;
        out->ndirs++;
    }
    return 0;
}

int cg_lookup(const char *name, cg_t *out, err_t *e)
{
    if (!name)
        return err_set(e, -EINVAL, "cgroup: no group name");
    return resolve(name, out, e);
}

/* Write the limits whose controller lives in the hierarchy of dir. */
static int write_limits(const char *dir, bool v2, const cg_limits_t *lim, err_t *e)
{
    char v[64];
    int rc = 0;
    for (int i = 0; i < NCTRL && rc == 0; i++) {
        const hier_t *h = &g_base.h[i];
        size_t bl = strlen(h->base);
        if (!h->ok || h->v2 != v2 || strncmp(dir, h->base, bl) != 0 || dir[bl] != '/')
            continue;
        if (i == 0 && lim->memory_bytes) {
            snprintf(v, sizeof v, "%llu", (unsigned long long)lim->memory_bytes);
            if (v2) {
                rc = write_file(dir, "memory.max", v, e);
                if (rc == 0 && file_exists(dir, "memory.swap.max"))
                    rc = write_file(dir, "memory.swap.max", "0", e);
            } else {
                /* memsw must stay >= the limit: write the limit, memsw, then the limit again so
                 * that both raising and lowering an existing group work. */
                err_t ign;
                write_file(dir, "memory.limit_in_bytes", v, &ign);
                if (file_exists(dir, "memory.memsw.limit_in_bytes"))
                    rc = write_file(dir, "memory.memsw.limit_in_bytes", v, e);
                if (rc == 0)
                    rc = write_file(dir, "memory.limit_in_bytes", v, e);
            }
        } else if (i == 1 && lim->cpu_pct) {
            unsigned long long quota = (unsigned long long)lim->cpu_pct * 1000ull;
            if (v2) {
                snprintf(v, sizeof v, "%llu 100000", quota);
                rc = write_file(dir, "cpu.max", v, e);
            } else {
                rc = write_file(dir, "cpu.cfs_period_us", "100000", e);
                snprintf(v, sizeof v, "%llu", quota);
                if (rc == 0)
                    rc = write_file(dir, "cpu.cfs_quota_us", v, e);
            }
        } else if (i == 2 && lim->pids) {
            snprintf(v, sizeof v, "%u", lim->pids);
            rc = write_file(dir, "pids.max", v, e);
        }
    }
    return rc;
}

int cg_create(const char *name, const cg_limits_t *lim, cg_t *out, err_t *e)
{
    if (!name)
        return err_set(e, -EINVAL, "cgroup: no group name");
    int rc = resolve(name, out, e);
    if (rc < 0)
        return rc;
    if (out->missing[0])
        log_warn("vmm.cgroup_controllers_missing", "group=%s missing=\"%s\"", name, out->missing);
    bool made[CG_MAX_DIRS] = {0};
    for (int i = 0; i < out->ndirs; i++) {
        if (mkdir(out->dirs[i], 0755) < 0) {
            if (errno != EEXIST) {
                rc = err_errno(e, out->dirs[i]);
                goto fail;
            }
        } else {
            made[i] = true;
        }
        rc = write_limits(out->dirs[i], out->v2[i], lim, e);
        if (rc < 0)
            goto fail;
    }
    return 0;
fail:
    for (int i = out->ndirs - 1; i >= 0; i--)
        if (made[i])
            rmdir(out->dirs[i]);
    return rc;
}

int cg_of_pid(pid_t pid, cg_t *out, err_t *e)
{
    cg_t self;
    int rc = resolve(NULL, &self, e);
    if (rc < 0)
        return rc;
    memset(out, 0, sizeof *out);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return err_errno(e, path);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = *c2 = '\0';
        const char *ctrls = c1 + 1, *p = c2 + 1;
        bool v2 = strcmp(line, "0") == 0 && *ctrls == '\0';
        for (int i = 0; i < NCTRL; i++) {
            const hier_t *h = &g_base.h[i];
            if (!h->ok || h->v2 != v2 || (!v2 && !has_token(ctrls, controllers[i])))
                continue;
            char dir[512];
            hier_dir(h->mount, h->mroot, p, dir, sizeof dir);
            /* Ours only when it is a direct child of the agent's own group. */
            size_t bl = strlen(h->base);
            if (strncmp(dir, h->base, bl) != 0 || dir[bl] != '/' || strchr(dir + bl + 1, '/'))
                continue;
            bool dup = false;
            for (int j = 0; j < out->ndirs; j++)
                if (strcmp(out->dirs[j], dir) == 0)
                    dup = true;
            if (dup || out->ndirs == CG_MAX_DIRS)
                continue;
            snprintf(out->dirs[out->ndirs], sizeof out->dirs[0], "%s", dir);
            out->v2[out->ndirs++] = v2;
        }
    }
    free(line);
    fclose(f);
    return 0;
}

int cg_open_procs(const cg_t *cg, int fds[CG_MAX_DIRS], err_t *e)
{
    for (int i = 0; i < cg->ndirs; i++) {
        char path[640];
        snprintf(path, sizeof path, "%s/cgroup.procs", cg->dirs[i]);
        fds[i] = open(path, O_WRONLY | O_CLOEXEC);
        if (fds[i] < 0) {
            int rc = err_errno(e, path);
            while (i-- > 0)
                close(fds[i]);
            return rc;
        }
    }
    return cg->ndirs;
}

bool cg_has_pid(const cg_t *cg, pid_t pid)
{
    for (int i = 0; i < cg->ndirs; i++) {
        char path[640];
        snprintf(path, sizeof path, "%s/cgroup.procs", cg->dirs[i]);
        FILE *f = fopen(path, "re");
        if (!f)
            return false;
        bool found = false;
        int p;
        while (!found && fscanf(f, "%d", &p) == 1)
            found = p == pid;
        fclose(f);
        if (!found)
            return false;
    }
    return cg->ndirs > 0;
}

int cg_destroy(const cg_t *cg, err_t *e)
{
    int rc = 0;
    for (int i = 0; i < cg->ndirs; i++) {
        for (int tries = 0;; tries++) {
            if (rmdir(cg->dirs[i]) == 0 || errno == ENOENT)
                break;
            if (errno != EBUSY || tries >= 200) {
                int r = err_errno(e, cg->dirs[i]);
                if (rc == 0)
                    rc = r;
                break;
            }
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return rc;
}

int cg_reap_empty(const char *prefix, err_t *e)
{
    cg_t self;
    int rc = resolve(NULL, &self, e);
    if (rc < 0)
        return rc;
    if (!prefix || !*prefix)
        return err_set(e, -EINVAL, "cgroup: reaping needs a name prefix");
    int removed = 0;
    size_t pl = strlen(prefix);
    for (int i = 0; i < self.ndirs; i++) {
        DIR *d = opendir(self.dirs[i]);
        if (!d)
            continue;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_type != DT_DIR || strncmp(de->d_name, prefix, pl) != 0)
                continue;
            char path[1024];
            snprintf(path, sizeof path, "%s%s", self.dirs[i], de->d_name);
            /* rmdir fails with EBUSY while the group has processes or children. */
            if (rmdir(path) == 0) {
                removed++;
                log_info("vmm.cgroup_reaped", "dir=%s", path);
            }
        }
        closedir(d);
    }
    return removed;
}
