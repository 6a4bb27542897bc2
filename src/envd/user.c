/* Accounts, path resolution, authentication and child environments. */
#include "envd.h"
#include "b64.h"
#include "buf.h"
#include "xalloc.h"

#include <grp.h>
#include <pwd.h>
#include <sodium.h>
#include <stdio.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Accounts are read straight from /etc/passwd and /etc/group with fgetpwent_r/fgetgrent_r: the
 * guest has no NSS modules, and this keeps envd free of NSS in any build. */

void envd_user_fini(envd_user_t *u)
{
    if (!u)
        return;
    free(u->name);
    free(u->home);
    free(u->shell);
    free(u->groups);
    memset(u, 0, sizeof *u);
}

static int add_group(envd_user_t *u, gid_t g)
{
    for (int i = 0; i < u->ngroups; i++)
        if (u->groups[i] == g)
            return 0;
    u->groups = xrealloc(u->groups, sizeof(gid_t) * (size_t)(u->ngroups + 1));
    u->groups[u->ngroups++] = g;
    return 0;
}

int envd_user_lookup(const char *name, envd_user_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    if (!name || !*name)
        return err_set(e, -EKEYREJECTED, "user not specified");
    FILE *f = fopen("/etc/passwd", "re");
    if (!f)
        return err_errno(e, "open /etc/passwd");
    struct passwd pw, *res = NULL;
    char sbuf[4096];
    bool found = false;
    while (fgetpwent_r(f, &pw, sbuf, sizeof sbuf, &res) == 0) {
        if (strcmp(pw.pw_name, name) == 0) {
            out->name = xstrdup(pw.pw_name);
            out->uid = pw.pw_uid;
            out->gid = pw.pw_gid;
            out->home = xstrdup(pw.pw_dir && *pw.pw_dir ? pw.pw_dir : "/");
            out->shell = xstrdup(pw.pw_shell && *pw.pw_shell ? pw.pw_shell : "/bin/sh");
            found = true;
            break;
        }
    }
    fclose(f);
    if (!found)
        return err_set(e, -EKEYREJECTED, "invalid username: '%s'", name);
    add_group(out, out->gid);
    f = fopen("/etc/group", "re");
    if (f) {
        struct group gr, *gres = NULL;
        char gbuf[16384];
        while (fgetgrent_r(f, &gr, gbuf, sizeof gbuf, &gres) == 0)
            for (char **m = gr.gr_mem; m && *m; m++)
                if (strcmp(*m, name) == 0)
                    add_group(out, gr.gr_gid);
        fclose(f);
    }
    return 0;
}

void envd_uid_name(uid_t uid, char *out, size_t n)
{
    snprintf(out, n, "%u", (unsigned)uid);
    FILE *f = fopen("/etc/passwd", "re");
    if (!f)
        return;
    struct passwd pw, *res = NULL;
    char sbuf[4096];
    while (fgetpwent_r(f, &pw, sbuf, sizeof sbuf, &res) == 0)
        if (pw.pw_uid == uid) {
            snprintf(out, n, "%s", pw.pw_name);
            break;
        }
    fclose(f);
}

void envd_gid_name(gid_t gid, char *out, size_t n)
{
    snprintf(out, n, "%u", (unsigned)gid);
    FILE *f = fopen("/etc/group", "re");
    if (!f)
        return;
    struct group gr, *res = NULL;
    char gbuf[16384];
    while (fgetgrent_r(f, &gr, gbuf, sizeof gbuf, &res) == 0)
        if (gr.gr_gid == gid) {
            snprintf(out, n, "%s", gr.gr_name);
            break;
        }
    fclose(f);
}

/* Lexically clean an absolute path: collapse "//", drop ".", resolve ".." (never above "/"). */
static char *clean_abs(const char *p)
{
    size_t n = strlen(p);
    char *out = xmalloc(n + 2);
    size_t o = 0;
    out[o++] = '/';
    const char *s = p;
    while (*s) {
        while (*s == '/')
            s++;
        if (!*s)
            break;
        const char *end = strchr(s, '/');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len == 1 && s[0] == '.') {
            /* skip */
        } else if (len == 2 && s[0] == '.' && s[1] == '.') {
            if (o > 1) {
                o--; /* drop the trailing slash, then the last component */
                while (o > 0 && out[o - 1] != '/')
                    o--;
            }
        } else {
            memcpy(out + o, s, len);
            o += len;
            out[o++] = '/';
        }
        s += len;
    }
    if (o > 1)
        o--; /* no trailing slash except for "/" */
    out[o] = '\0';
    return out;
}

int envd_resolve_path(envd_t *d, const envd_user_t *u, const char *path, char **out, err_t *e)
{
    *out = NULL;
    char *joined = NULL;
    if (!path)
        path = "";
    if (strlen(path) > 4096)
        return err_set(e, -ENAMETOOLONG, "path too long");
    if (!*path) {
        pthread_mutex_lock(&d->lock);
        const char *wd = d->default_workdir;
        joined = xstrdup(wd && *wd ? wd : u->home);
        pthread_mutex_unlock(&d->lock);
    } else if (path[0] == '~') {
        if (path[1] != '\0' && path[1] != '/')
            return err_set(e, -EINVAL, "path %s: only ~ of the current user is supported", path);
        joined = xasprintf("%s/%s", u->home, path[1] ? path + 2 : "");
    } else if (path[0] == '/') {
        joined = xstrdup(path);
    } else {
        joined = xasprintf("%s/%s", u->home, path);
    }
    if (joined[0] != '/') {
        char *abs = xasprintf("/%s", joined);
        free(joined);
        joined = abs;
    }
    *out = clean_abs(joined);
    free(joined);
    return 0;
}

static char *default_user(envd_t *d)
{
    pthread_mutex_lock(&d->lock);
    char *u = xstrdup(d->default_user ? d->default_user : "root");
    pthread_mutex_unlock(&d->lock);
    return u;
}

int envd_rpc_user(envd_t *d, http_req_t *req, envd_user_t *out, err_t *e)
{
    const char *auth = http_req_header(req, "Authorization");
    char name[256] = "";
    if (auth && strncasecmp(auth, "Basic ", 6) == 0) {
        const char *b = auth + 6;
        while (*b == ' ')
            b++;
        size_t n = strlen(b);
        if (n > 340)
            return err_set(e, -EKEYREJECTED, "authorization header too long");
        unsigned char dec[256];
        long m = b64_decode(b, n, dec);
        if (m < 0)
            return err_set(e, -EKEYREJECTED, "malformed basic authorization");
        unsigned char *colon = memchr(dec, ':', (size_t)m);
        size_t ulen = colon ? (size_t)(colon - dec) : (size_t)m;
        if (ulen >= sizeof name || memchr(dec, '\0', ulen))
            return err_set(e, -EKEYREJECTED, "malformed basic authorization");
        memcpy(name, dec, ulen);
        name[ulen] = '\0';
    }
    if (name[0])
        return envd_user_lookup(name, out, e);
    char *def = default_user(d);
    int r = envd_user_lookup(def, out, e);
    free(def);
    return r;
}

int envd_files_user(envd_t *d, const char *username, envd_user_t *out, err_t *e)
{
    if (username && *username)
        return envd_user_lookup(username, out, e);
    char *def = default_user(d);
    int r = envd_user_lookup(def, out, e);
    free(def);
    return r;
}

char *envd_token_copy(envd_t *d)
{
    pthread_mutex_lock(&d->lock);
    char *t = xstrdup(d->access_token);
    pthread_mutex_unlock(&d->lock);
    return t;
}

int envd_check_token(http_req_t *req, void *ud, err_t *e)
{
    envd_t *d = ud;
    char *tok = envd_token_copy(d);
    if (!tok)
        return 0;
    const char *got = http_req_header(req, "X-Access-Token");
    int r = 0;
    /* Compare digests so that the time taken says nothing about the token or its length. */
    unsigned char a[crypto_hash_sha256_BYTES], b[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(a, (const unsigned char *)tok, strlen(tok));
    crypto_hash_sha256(b, (const unsigned char *)(got ? got : ""), got ? strlen(got) : 0);
    if (!got || sodium_memcmp(a, b, sizeof a) != 0)
        r = err_set(e, -ENOKEY, "unauthorized access, please provide a valid access token");
    sodium_memzero(tok, strlen(tok));
    free(tok);
    return r;
}

static void env_set(char ***env, size_t *n, const char *k, const char *v)
{
    size_t kl = strlen(k);
    for (size_t i = 0; i < *n; i++)
        if (strncmp((*env)[i], k, kl) == 0 && (*env)[i][kl] == '=') {
            free((*env)[i]);
            (*env)[i] = xasprintf("%s=%s", k, v);
            return;
        }
    *env = xrealloc(*env, sizeof(char *) * (*n + 2));
    (*env)[(*n)++] = xasprintf("%s=%s", k, v);
    (*env)[*n] = NULL;
}

char **envd_child_env(envd_t *d, const envd_user_t *u, const json_t *extra)
{
    char **env = xcalloc(1, sizeof(char *));
    size_t n = 0;
    const char *path = getenv("PATH");
    env_set(&env, &n, "PATH",
            path && *path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    env_set(&env, &n, "HOME", u->home);
    env_set(&env, &n, "USER", u->name);
    env_set(&env, &n, "LOGNAME", u->name);
    env_set(&env, &n, "SHELL", u->shell);
    pthread_mutex_lock(&d->lock);
    const char *k;
    json_t *v;
    json_object_foreach(d->env, k, v)
    {
        if (json_is_string(v))
            env_set(&env, &n, k, json_string_value(v));
    }
    pthread_mutex_unlock(&d->lock);
    if (json_is_object(extra)) {
        json_object_foreach((json_t *)extra, k, v)
        {
            if (json_is_string(v) && *k && !strchr(k, '='))
                env_set(&env, &n, k, json_string_value(v));
        }
    }
    return env;
}

void envd_env_free(char **env)
{
    if (!env)
        return;
    for (char **p = env; *p; p++)
        free(*p);
    free(env);
}

int envd_fs_become(const envd_user_t *u, err_t *e)
{
    if (geteuid() != 0 || u->uid == 0)
        return 0;
    if (syscall(SYS_setgroups, (size_t)u->ngroups, u->groups) < 0)
        return err_errno(e, "setgroups");
    setfsgid(u->gid);
    setfsuid(u->uid);
    /* setfsuid reports the previous id and never fails loudly: read back to be sure. */
    if ((uid_t)setfsuid((uid_t)-1) != u->uid || (gid_t)setfsgid((gid_t)-1) != u->gid) {
        envd_fs_restore();
        return err_set(e, -EPERM, "cannot act as user %s", u->name);
    }
    return 0;
}

void envd_fs_restore(void)
{
    if (geteuid() != 0)
        return;
    setfsuid(0);
    setfsgid(0);
    gid_t none = 0;
    syscall(SYS_setgroups, (size_t)0, &none);
}
