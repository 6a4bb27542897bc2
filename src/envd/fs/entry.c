/* EntryInfo JSON, directory listings and small path helpers of the filesystem service. */
#include "internal.h"
#include "pjson.h"
#include "xalloc.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *fs__join(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    if (dl > 0 && dir[dl - 1] == '/')
        return xasprintf("%s%s", dir, name);
    return xasprintf("%s/%s", dir, name);
}

static const char *cached_name(fs__idcache_t *c, bool group, unsigned id)
{
    size_t *n = group ? &c->ng : &c->nu;
    size_t *next = group ? &c->next_g : &c->next_u;
    __typeof__(c->u[0]) *v = group ? c->g : c->u;
    for (size_t i = 0; i < *n; i++)
        if (v[i].id == id)
            return v[i].name;
    /* Full: overwrite round-robin. A directory with more than FS__IDCACHE_N owners is rare. */
    size_t slot = *n < FS__IDCACHE_N ? (*n)++ : (*next)++ % FS__IDCACHE_N;
    v[slot].id = id;
    if (group)
        envd_gid_name((gid_t)id, v[slot].name, sizeof v[slot].name);
    else
        envd_uid_name((uid_t)id, v[slot].name, sizeof v[slot].name);
    return v[slot].name;
}

void fs__mode_string(mode_t m, char *out)
{
    /* Go's FileMode letters "dalTLDpSugct?" in order; Wrenn can only see these from stat. */
    size_t w = 0;
    if (S_ISDIR(m))
        out[w++] = 'd';
    if (S_ISLNK(m))
        out[w++] = 'L';
    if (S_ISBLK(m) || S_ISCHR(m))
        out[w++] = 'D';
    if (S_ISFIFO(m))
        out[w++] = 'p';
    if (S_ISSOCK(m))
        out[w++] = 'S';
    if (m & S_ISUID)
        out[w++] = 'u';
    if (m & S_ISGID)
        out[w++] = 'g';
    if (S_ISCHR(m))
        out[w++] = 'c';
    if (m & S_ISVTX)
        out[w++] = 't';
    if (w == 0)
        out[w++] = '-';
    static const char rwx[] = "rwxrwxrwx";
    for (int i = 0; i < 9; i++)
        out[w++] = (m & (1u << (8 - i))) ? rwx[i] : '-';
    out[w] = '\0';
}

static const char *type_name(mode_t m)
{
    if (S_ISREG(m))
        return "FILE_TYPE_FILE";
    if (S_ISDIR(m))
        return "FILE_TYPE_DIRECTORY";
    return NULL; /* FILE_TYPE_UNSPECIFIED: the default, omitted */
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    if (!s)
        return p;
    if (s[1] == '\0')
        return s == p ? "/" : s + 1; /* "/" itself; paths here have no other trailing slash */
    return s + 1;
}

int fs__entry(const char *real, const char *reported, const struct stat *st, fs__idcache_t *c,
              json_t **out, err_t *e)
{
    *out = NULL;
    struct stat lst;
    if (!st) {
        if (lstat(real, &lst) < 0)
            return fs__errno(e, "stat", reported);
        st = &lst;
    }
    const char *type = type_name(st->st_mode);
    unsigned mode = st->st_mode & 0777;
    char *target = NULL;
    if (S_ISLNK(st->st_mode)) {
        /* As E2B's envd: the fully resolved target decides type and mode; a link that does not
         * resolve (missing target, loop) names itself and has no type. */
        target = realpath(real, NULL);
        struct stat tst;
        if (target && stat(target, &tst) == 0) {
            type = type_name(tst.st_mode);
            mode = tst.st_mode & 0777;
        } else {
            free(target);
            target = xstrdup(real);
            type = NULL;
            mode = 0;
        }
    }
    char perms[24];
    fs__mode_string(st->st_mode, perms);
    const char *name = base_name(reported);

    json_t *o = json_object();
    if (*name)
        json_object_set_new(o, "name", json_string(name));
    if (type)
        json_object_set_new(o, "type", json_string(type));
    if (*reported)
        json_object_set_new(o, "path", json_string(reported));
    if (st->st_size != 0)
        json_object_set_new(o, "size", pjson_i64_value((int64_t)st->st_size));
    if (mode != 0)
        json_object_set_new(o, "mode", json_integer(mode));
    json_object_set_new(o, "permissions", json_string(perms));
    const char *owner = cached_name(c, false, (unsigned)st->st_uid);
    const char *group = cached_name(c, true, (unsigned)st->st_gid);
    if (*owner)
        json_object_set_new(o, "owner", json_string(owner));
    if (*group)
        json_object_set_new(o, "group", json_string(group));
    json_object_set_new(o, "modifiedTime",
                        pjson_timestamp((int64_t)st->st_mtim.tv_sec, st->st_mtim.tv_nsec));
    if (target)
        json_object_set_new(o, "symlinkTarget", json_string(target));
    free(target);
    *out = o;
    return 0;
}

static int cmp_idx(const void *a, const void *b, void *ud)
{
    char **names = ud;
    return strcmp(names[*(const size_t *)a], names[*(const size_t *)b]);
}

int fs__names_read(int dirfd, const char *path, fs__names_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    DIR *d = NULL;
    if (dirfd >= 0) {
        int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
            return fs__errno(e, "read directory", path);
        /* The duplicate shares the file offset: start from the beginning every time. */
        lseek(fd, 0, SEEK_SET);
        d = fdopendir(fd);
        if (!d) {
            int r = fs__errno(e, "read directory", path);
            close(fd);
            return r;
        }
    } else {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return fs__errno(e, "read directory", path);
        d = fdopendir(fd);
        if (!d) {
            int r = fs__errno(e, "read directory", path);
            close(fd);
            return r;
        }
    }
    char **names = NULL;
    unsigned char *types = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno)
                r = fs__errno(e, "read directory", path);
            break;
        }
        if (de->d_name[0] == '.' &&
            (de->d_name[1] == '\0' || (de->d_name[1] == '.' && de->d_name[2] == '\0')))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            names = xrealloc(names, cap * sizeof *names);
            types = xrealloc(types, cap);
        }
        names[n] = xstrdup(de->d_name);
        types[n] = de->d_type;
        n++;
    }
    closedir(d);
    if (r < 0) {
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        free(types);
        return r;
    }
    /* Sort an index so names and types move together. */
    size_t *idx = xcalloc(n ? n : 1, sizeof *idx);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, n, sizeof *idx, cmp_idx, names);
    out->name = xcalloc(n ? n : 1, sizeof *out->name);
    out->type = xcalloc(n ? n : 1, 1);
    for (size_t i = 0; i < n; i++) {
        out->name[i] = names[idx[i]];
        out->type[i] = types[idx[i]];
    }
    out->n = n;
    free(idx);
    free(names);
    free(types);
    return 0;
}

void fs__names_free(fs__names_t *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        free(n->name[i]);
    free(n->name);
    free(n->type);
    memset(n, 0, sizeof *n);
}
