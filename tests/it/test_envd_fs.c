/* envd filesystem.Filesystem service against the running binary: Stat, MakeDir, Move, Remove,
 * ListDir, WatchDir, the watcher trio, acting as another user, and protocol edge cases. */
#include "harness.h"
#include "xalloc.h"

/* ENVD_UPLOAD_TMP_PREFIX */
#define ENVD_UPLOAD_TMP_PREFIX ".wrenn-upload-"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static th_envd_t envd;
static char *tmp; /* this run's scratch directory, removed at the end */

#define SVC "/filesystem.Filesystem/"

static int setup(void **state)
{
    (void)state;
    tmp = th_tmpdir();
    if (!tmp)
        return -1;
    /* Other users must be able to reach into it for the tests that act as nobody. */
    chmod(tmp, 0755);
    return th_envd_start(&envd, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    assert_true(th_envd_alive(&envd));
    th_envd_stop(&envd);
    th_rmrf(tmp);
    free(tmp);
    return 0;
}

/* ---- helpers ---- */

static char *tpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *tpath(const char *fmt, ...)
{
    char rel[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    char *p = xasprintf("%s/%s", tmp, rel);
    return p;
}

static void write_file(const char *path, const char *content)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    size_t n = strlen(content);
    if (n)
        assert_int_equal(write(fd, content, n), (ssize_t)n);
    close(fd);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Basic auth for user (empty password), as the SDKs send it. */
static char *basic(const char *user)
{
    char raw[128];
    snprintf(raw, sizeof raw, "%s:", user);
    char *b = th_b64(raw, strlen(raw));
    char *h = xasprintf("Authorization: Basic %s", b);
    free(b);
    return h;
}

/* One unary call; returns the parsed body (new reference) and the status in *status. */
static json_t *call_as(const char *user, const char *method, long *status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static json_t *call_as(const char *user, const char *method, long *status, const char *fmt, ...)
{
    char body[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    char path[128];
    snprintf(path, sizeof path, SVC "%s", method);
    char *auth = user ? basic(user) : NULL;
    const char *h[] = {auth, NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_unary(&envd, path, body, auth ? h : NULL, &r), 0);
    *status = r.status;
    json_t *j = th_json(&r);
    if (!j)
        fprintf(stderr, "# %s: not JSON: %.*s\n", method, (int)r.body.len, r.body.data);
    assert_non_null(j);
    httpc_resp_fini(&r);
    free(auth);
    return j;
}

#define call(method, status, ...) call_as(NULL, method, status, __VA_ARGS__)

/* Assert a Connect error with the given HTTP status and code. */
static void assert_error(json_t *j, long status, long want_status, const char *code)
{
    if (status != want_status)
        fprintf(stderr, "# got %ld %s\n", status, json_dumps(j, 0));
    assert_int_equal(status, want_status);
    assert_string_equal(json_string_value(json_object_get(j, "code")), code);
    assert_true(json_is_string(json_object_get(j, "message")));
}

static const char *sget(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_t *ok_entry(json_t *j, long status)
{
    if (status != 200)
        fprintf(stderr, "# got %ld %s\n", status, json_dumps(j, 0));
    assert_int_equal(status, 200);
    json_t *entry = json_object_get(j, "entry");
    assert_true(json_is_object(entry));
    return entry;
}

/* The entry in a ListDir answer with this path, or NULL. */
static json_t *find_entry(json_t *resp, const char *path)
{
    json_t *arr = json_object_get(resp, "entries");
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (sget(v, "path") && strcmp(sget(v, "path"), path) == 0)
            return v;
    }
    return NULL;
}

/* ---- Stat ---- */

static void test_stat(void **state)
{
    (void)state;
    long st;
    char *f = tpath("stat-file.txt"), *d = tpath("stat-dir"), *l = tpath("stat-link");
    char *bl = tpath("stat-broken"), *empty = tpath("stat-empty");
    write_file(f, "hello");
    chmod(f, 0644);
    write_file(empty, "");
    mkdir(d, 0750);
    assert_int_equal(symlink(f, l), 0);
    assert_int_equal(symlink("/nonexistent-wrenn-target", bl), 0);

    json_t *j = call("Stat", &st, "{\"path\":\"%s\"}", f);
    json_t *e = ok_entry(j, st);
    assert_string_equal(sget(e, "name"), "stat-file.txt");
    assert_string_equal(sget(e, "type"), "FILE_TYPE_FILE");
    assert_string_equal(sget(e, "path"), f);
    assert_string_equal(sget(e, "size"), "5"); /* int64 as a string */
    assert_int_equal(json_integer_value(json_object_get(e, "mode")), 0644);
    assert_string_equal(sget(e, "permissions"), "-rw-r--r--");
    assert_string_equal(sget(e, "owner"), "root");
    assert_string_equal(sget(e, "group"), "root");
    const char *mt = sget(e, "modifiedTime");
    assert_non_null(mt);
    assert_true(strlen(mt) >= 20 && mt[4] == '-' && mt[10] == 'T' && mt[strlen(mt) - 1] == 'Z');
    assert_null(json_object_get(e, "symlinkTarget"));
    json_decref(j);

    /* Proto3 leaves out defaults: an empty file has no size. */
    j = call("Stat", &st, "{\"path\":\"%s\"}", empty);
    e = ok_entry(j, st);
    assert_null(json_object_get(e, "size"));
    json_decref(j);

    j = call("Stat", &st, "{\"path\":\"%s\"}", d);
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "type"), "FILE_TYPE_DIRECTORY");
    assert_int_equal(json_integer_value(json_object_get(e, "mode")), 0750);
    assert_string_equal(sget(e, "permissions"), "drwxr-x---");
    json_decref(j);

    /* A symlink reports its target's type, and where it points. */
    j = call("Stat", &st, "{\"path\":\"%s\"}", l);
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "name"), "stat-link");
    assert_string_equal(sget(e, "type"), "FILE_TYPE_FILE");
    assert_string_equal(sget(e, "symlinkTarget"), f);
    assert_int_equal(sget(e, "permissions")[0], 'L');
    assert_int_equal(json_integer_value(json_object_get(e, "mode")), 0644);
    json_decref(j);

    /* A broken symlink has no type (FILE_TYPE_UNSPECIFIED is the omitted default). */
    j = call("Stat", &st, "{\"path\":\"%s\"}", bl);
    e = ok_entry(j, st);
    assert_null(json_object_get(e, "type"));
    assert_non_null(json_object_get(e, "symlinkTarget"));
    json_decref(j);

    j = call("Stat", &st, "{\"path\":\"%s/missing\"}", tmp);
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    j = call("Stat", &st, "{\"path\":\"%s/x\"}", f); /* below a file */
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    free(f), free(d), free(l), free(bl), free(empty);
}

/* ---- MakeDir ---- */

static void test_make_dir(void **state)
{
    (void)state;
    long st;
    char *p = tpath("mk/a/b/c");
    json_t *j = call("MakeDir", &st, "{\"path\":\"%s\"}", p);
    json_t *e = ok_entry(j, st);
    assert_string_equal(sget(e, "name"), "c");
    assert_string_equal(sget(e, "type"), "FILE_TYPE_DIRECTORY");
    assert_string_equal(sget(e, "path"), p);
    json_decref(j);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));

    j = call("MakeDir", &st, "{\"path\":\"%s\"}", p);
    assert_error(j, st, 409, "already_exists");
    json_decref(j);

    char *f = tpath("mk/file");
    write_file(f, "x");
    j = call("MakeDir", &st, "{\"path\":\"%s\"}", f);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    /* A file in the middle of the path. */
    j = call("MakeDir", &st, "{\"path\":\"%s/sub\"}", f);
    assert_int_equal(st / 100, 4);
    json_decref(j);
    free(p);
    free(f);
}

/* ---- Move ---- */

static void test_move(void **state)
{
    (void)state;
    long st;
    char *src = tpath("mv-src.txt"), *dst = tpath("mv/new/parents/dst.txt");
    write_file(src, "move me");
    json_t *j = call("Move", &st, "{\"source\":\"%s\",\"destination\":\"%s\"}", src, dst);
    json_t *e = ok_entry(j, st);
    assert_string_equal(sget(e, "path"), dst);
    assert_string_equal(sget(e, "name"), "dst.txt");
    assert_string_equal(sget(e, "size"), "7");
    json_decref(j);
    assert_false(exists(src));
    assert_true(exists(dst));

    /* A directory, with its content. */
    char *sd = tpath("mv-dir"), *sdf = tpath("mv-dir/inner"), *dd = tpath("mv/moved-dir");
    mkdir(sd, 0755);
    write_file(sdf, "i");
    j = call("Move", &st, "{\"source\":\"%s\",\"destination\":\"%s\"}", sd, dd);
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "type"), "FILE_TYPE_DIRECTORY");
    json_decref(j);
    char *moved_inner = tpath("mv/moved-dir/inner");
    assert_true(exists(moved_inner));
    assert_false(exists(sd));

    /* A missing source fails before any destination directory is made. */
    j = call("Move", &st, "{\"source\":\"%s/nope\",\"destination\":\"%s/mv-np/a/b\"}", tmp, tmp);
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    char *np = tpath("mv-np");
    assert_false(exists(np));
    free(np);
    /* Both fields are required. */
    j = call("Move", &st, "{\"source\":\"%s\"}", dst);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    free(src), free(dst), free(sd), free(sdf), free(dd), free(moved_inner);
}

/* ---- Remove ---- */

static void test_remove(void **state)
{
    (void)state;
    long st;
    char *f = tpath("rm-file");
    write_file(f, "x");
    json_t *j = call("Remove", &st, "{\"path\":\"%s\"}", f);
    assert_int_equal(st, 200);
    assert_int_equal(json_object_size(j), 0);
    json_decref(j);
    assert_false(exists(f));

    /* A tree, with a symlink inside that points out of it: the link goes, its target stays. */
    char *keep = tpath("rm-keep"), *keepf = tpath("rm-keep/precious");
    mkdir(keep, 0755);
    write_file(keepf, "keep");
    char *t = tpath("rm-tree");
    char *cmd = xasprintf(
        "mkdir -p %s/a/b/c && echo x > %s/a/b/c/f && echo y > %s/a/g && ln -s %s %s/a/out", t, t, t,
        keep, t);
    assert_int_equal(th_sh(cmd), 0);
    free(cmd);
    j = call("Remove", &st, "{\"path\":\"%s\"}", t);
    assert_int_equal(st, 200);
    json_decref(j);
    assert_false(exists(t));
    assert_true(exists(keepf));

    /* Missing is success; an empty path is refused rather than meaning the home directory. */
    j = call("Remove", &st, "{\"path\":\"%s/never-was\"}", tmp);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call("Remove", &st, "{\"path\":\"%s/never/was/either\"}", tmp);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call("Remove", &st, "{}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("Remove", &st, "{\"path\":\"/\"}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    free(f), free(keep), free(keepf), free(t);
}

/* ---- ListDir ---- */

static void test_list_dir(void **state)
{
    (void)state;
    long st;
    char *root = tpath("ls");
    char *cmd = xasprintf(
        "mkdir -p %s/d1/d2/d3 && echo a > %s/a.txt && echo b > %s/d1/b.txt && "
        "echo c > %s/d1/d2/c.txt && echo deep > %s/d1/d2/d3/deep.txt && ln -s d1 %s/link && "
        "ln -s %s %s-rootlink",
        root, root, root, root, root, root, root, root);
    assert_int_equal(th_sh(cmd), 0);
    free(cmd);

    /* depth absent → 1; entries in lexical order. */
    json_t *j = call("ListDir", &st, "{\"path\":\"%s\"}", root);
    assert_int_equal(st, 200);
    json_t *arr = json_object_get(j, "entries");
    assert_int_equal(json_array_size(arr), 3);
    assert_string_equal(sget(json_array_get(arr, 0), "name"), "a.txt");
    assert_string_equal(sget(json_array_get(arr, 1), "name"), "d1");
    assert_string_equal(sget(json_array_get(arr, 2), "name"), "link");
    char *lp = tpath("ls/link"), *d1 = tpath("ls/d1");
    json_t *link = find_entry(j, lp);
    assert_non_null(link);
    assert_string_equal(sget(link, "type"), "FILE_TYPE_DIRECTORY");
    assert_string_equal(sget(link, "symlinkTarget"), d1);
    json_decref(j);

    /* depth 3: three levels, nothing below; the symlink is listed, never entered. */
    j = call("ListDir", &st, "{\"path\":\"%s\",\"depth\":3}", root);
    assert_int_equal(st, 200);
    arr = json_object_get(j, "entries");
    const char *want[] = {"a.txt", "d1", "d1/b.txt", "d1/d2", "d1/d2/c.txt", "d1/d2/d3", "link"};
    assert_int_equal(json_array_size(arr), sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *p = tpath("ls/%s", want[i]);
        assert_string_equal(sget(json_array_get(arr, i), "path"), p);
        free(p);
    }
    json_decref(j);
    /* depth as a string, the proto3 way for some clients. */
    j = call("ListDir", &st, "{\"path\":\"%s\",\"depth\":\"2\"}", root);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(j, "entries")), 5);
    json_decref(j);

    /* The root may be a symlink: followed, and paths stay under the requested name. */
    j = call("ListDir", &st, "{\"path\":\"%s-rootlink\",\"depth\":2}", root);
    assert_int_equal(st, 200);
    char *via = xasprintf("%s-rootlink/d1/b.txt", root);
    assert_non_null(find_entry(j, via));
    free(via);
    json_decref(j);

    /* Loops, files, missing paths. */
    char *la = tpath("loop-a"), *lb = tpath("loop-b");
    assert_int_equal(symlink(lb, la), 0);
    assert_int_equal(symlink(la, lb), 0);
    j = call("ListDir", &st, "{\"path\":\"%s\"}", la);
    assert_error(j, st, 400, "failed_precondition");
    json_decref(j);
    char *af = tpath("ls/a.txt");
    j = call("ListDir", &st, "{\"path\":\"%s\"}", af);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("ListDir", &st, "{\"path\":\"%s/nope\"}", root);
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    j = call("ListDir", &st, "{\"path\":\"%s\",\"depth\":-1}", root);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    free(root), free(lp), free(d1), free(la), free(lb), free(af);
}

/* A wide directory lists quickly: owner and group names are looked up once per call. */
static void test_list_dir_wide(void **state)
{
    (void)state;
    char *wide = tpath("wide");
    mkdir(wide, 0755);
    for (int i = 0; i < 1000; i++) {
        char *p = tpath("wide/f%04d", i);
        write_file(p, "x");
        free(p);
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    long st;
    json_t *j = call("ListDir", &st, "{\"path\":\"%s\"}", wide);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(j, "entries")), 1000);
    assert_string_equal(sget(json_array_get(json_object_get(j, "entries"), 999), "owner"), "root");
    json_decref(j);
    double ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
    fprintf(stderr, "# ListDir of 1000 entries: %.1f ms\n", ms);
    assert_true(ms < 2000);
    free(wide);
}

/* ---- Path resolution ---- */

static void test_relative_paths(void **state)
{
    (void)state;
    long st;
    char *f = tpath("rel-file");
    write_file(f, "r");
    /* Relative to root's home (/root), with ../ cleaned away. */
    json_t *j = call("Stat", &st, "{\"path\":\"..%s\"}", f);
    json_t *e = ok_entry(j, st);
    assert_string_equal(sget(e, "path"), f);
    json_decref(j);
    j = call("Stat", &st, "{\"path\":\"~/../%s/../%s/./rel-file\"}", tmp + 1,
             strrchr(tmp, '/') + 1);
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "path"), f);
    json_decref(j);
    /* Never above /. */
    j = call("Stat", &st, "{\"path\":\"../../../../../../..%s\"}", f);
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "path"), f);
    json_decref(j);
    /* "" is the home directory. */
    j = call("Stat", &st, "{\"path\":\"\"}");
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "path"), "/root");
    json_decref(j);
    /* For nobody (home /nonexistent), a relative path lands in that home. */
    j = call_as("nobody", "Stat", &st, "{\"path\":\"some/file\"}");
    assert_error(j, st, 404, "not_found");
    assert_non_null(strstr(sget(j, "message"), "/nonexistent/some/file"));
    json_decref(j);
    /* ~other is not supported. */
    j = call("Stat", &st, "{\"path\":\"~nobody/x\"}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    /* A relative MakeDir escaping the home creates where it says. */
    char *rel = tpath("rel-made/x");
    j = call("MakeDir", &st, "{\"path\":\"..%s\"}", rel);
    e = ok_entry(j, st);
    assert_string_equal(sget(e, "path"), rel);
    json_decref(j);
    assert_true(exists(rel));
    free(f);
    free(rel);
}

/* ---- Acting as another user ---- */

static void test_as_nobody(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        skip();
        return;
    }
    long st;
    char *secret = tpath("secret"), *sf = tpath("secret/f");
    mkdir(secret, 0700);
    write_file(sf, "s");
    json_t *j = call_as("nobody", "ListDir", &st, "{\"path\":\"%s\"}", secret);
    assert_error(j, st, 403, "permission_denied");
    json_decref(j);
    j = call_as("nobody", "Stat", &st, "{\"path\":\"%s\"}", sf);
    assert_error(j, st, 403, "permission_denied");
    json_decref(j);
    j = call_as("nobody", "Remove", &st, "{\"path\":\"%s\"}", sf);
    assert_error(j, st, 403, "permission_denied");
    json_decref(j);
    assert_true(exists(sf));
    j = call_as("nobody", "WatchDir", &st, "{\"path\":\"%s\"}", secret);
    assert_int_equal(st, 415); /* WatchDir is a stream: unary content type refused */
    json_decref(j);
    j = call_as("nobody", "CreateWatcher", &st, "{\"path\":\"%s\"}", secret);
    assert_error(j, st, 403, "permission_denied");
    json_decref(j);
    /* root itself may. */
    j = call_as("root", "ListDir", &st, "{\"path\":\"%s\"}", secret);
    assert_int_equal(st, 200);
    json_decref(j);

    /* What nobody creates belongs to nobody, parents included. */
    char *pub = tpath("pub");
    mkdir(pub, 0777);
    chmod(pub, 01777);
    char *made = tpath("pub/n1/n2"), *n1 = tpath("pub/n1");
    j = call_as("nobody", "MakeDir", &st, "{\"path\":\"%s\"}", made);
    json_t *e = ok_entry(j, st);
    assert_string_equal(sget(e, "owner"), "nobody");
    json_decref(j);
    struct stat sb;
    assert_int_equal(stat(made, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    assert_int_equal(stat(n1, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    /* And nobody may not move root's file out of the sticky directory. */
    char *rootf = tpath("pub/rootfile"), *stolen = tpath("pub/n1/stolen");
    write_file(rootf, "r");
    j = call_as("nobody", "Move", &st, "{\"source\":\"%s\",\"destination\":\"%s\"}", rootf, stolen);
    assert_error(j, st, 403, "permission_denied");
    json_decref(j);

    /* An unknown user is unauthenticated. */
    j = call_as("no-such-user-wrenn", "Stat", &st, "{\"path\":\"/\"}");
    assert_error(j, st, 401, "unauthenticated");
    json_decref(j);
    /* The connection thread went back to root afterwards: a root call on the same server still
     * sees the secret. */
    j = call("Stat", &st, "{\"path\":\"%s\"}", sf);
    ok_entry(j, st);
    json_decref(j);
    free(secret), free(sf), free(pub), free(made), free(n1), free(rootf), free(stolen);
}

/* ---- WatchDir ---- */

typedef struct seen {
    char name[256];
    char type[32];
} seen_t;

typedef struct wctx {
    char *dir;
    int phase;
    size_t nmsgs;
    bool start_first;
    size_t nkeep;
    seen_t ev[512];
    size_t nev;
    int inotify_during;
} wctx_t;

static bool saw(const wctx_t *x, const char *name, const char *type)
{
    for (size_t i = 0; i < x->nev; i++)
        if (strcmp(x->ev[i].name, name) == 0 && strcmp(x->ev[i].type, type) == 0)
            return true;
    return false;
}

/* Every (name, type) pair of want appears in x's events in this order. */
static void assert_in_order(const wctx_t *x, const char *const want[][2], size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < x->nev && k < n; i++)
        if (strcmp(x->ev[i].name, want[k][0]) == 0 && strcmp(x->ev[i].type, want[k][1]) == 0)
            k++;
    if (k != n) {
        fprintf(stderr, "# missing %s %s; events were:\n", want[k][0], want[k][1]);
        for (size_t i = 0; i < x->nev; i++)
            fprintf(stderr, "#   %s %s\n", x->ev[i].type, x->ev[i].name);
    }
    assert_int_equal(k, n);
}

/* Record a filesystem event; returns it (or NULL for other messages). */
static const seen_t *record(wctx_t *x, json_t *m)
{
    if (x->nmsgs++ == 0)
        x->start_first = json_object_get(m, "start") != NULL;
    if (json_object_get(m, "keepalive"))
        x->nkeep++;
    json_t *fs = json_object_get(m, "filesystem");
    if (!fs || x->nev >= sizeof x->ev / sizeof x->ev[0])
        return NULL;
    seen_t *s = &x->ev[x->nev++];
    snprintf(s->name, sizeof s->name, "%s", sget(fs, "name") ? sget(fs, "name") : "");
    snprintf(s->type, sizeof s->type, "%s", sget(fs, "type") ? sget(fs, "type") : "");
    return s;
}

static char *in(const wctx_t *x, const char *rel)
{
    char *p = xasprintf("%s/%s", x->dir, rel);
    return p;
}

/* Apply fn to the path of rel below the watched dir. */
#define AT(x, rel, stmt)                                                                           \
    do {                                                                                           \
        char *p_ = in(x, rel);                                                                     \
        stmt;                                                                                      \
        free(p_);                                                                                  \
    } while (0)

static void do_rename(const wctx_t *x, const char *a, const char *b)
{
    char *pa = in(x, a), *pb = in(x, b);
    assert_int_equal(rename(pa, pb), 0);
    free(pa);
    free(pb);
}

static int count_inotify(pid_t pid)
{
    char dpath[64];
    snprintf(dpath, sizeof dpath, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dpath);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        char lp[320], target[256];
        snprintf(lp, sizeof lp, "%s/%s", dpath, de->d_name);
        ssize_t m = readlink(lp, target, sizeof target - 1);
        if (m > 0) {
            target[m] = '\0';
            if (strstr(target, "inotify"))
                n++;
        }
    }
    closedir(d);
    return n;
}

static int nonrec_on_msg(void *ud, json_t *m)
{
    wctx_t *x = ud;
    const seen_t *s = record(x, m);
    if (json_object_get(m, "start")) {
        x->inotify_during = count_inotify(envd.pid);
        AT(x, "a", write_file(p_, "hello"));
        AT(x, "a", chmod(p_, 0600));
        do_rename(x, "a", "b");
        AT(x, "b", unlink(p_));
        AT(x, "sub", mkdir(p_, 0755));
        AT(x, "sub/inner", write_file(p_, "not seen"));
        AT(x, "zz-end", write_file(p_, ""));
    }
    return s && strcmp(s->name, "zz-end") == 0 && strcmp(s->type, "EVENT_TYPE_CREATE") == 0;
}

static void test_watch_dir(void **state)
{
    (void)state;
    wctx_t *x = calloc(1, sizeof *x);
    x->dir = tpath("watch1");
    mkdir(x->dir, 0755);
    int before = count_inotify(envd.pid);
    char body[1024];
    snprintf(body, sizeof body, "{\"path\":\"%s\"}", x->dir);
    const char *h[] = {"Connect-Timeout-Ms: 15000", NULL};
    th_stream_t s;
    assert_int_equal(th_stream(&envd, SVC "WatchDir", body, h, nonrec_on_msg, x, &s), 0);
    assert_int_equal(s.status, 200);
    assert_true(x->start_first);
    const char *const want[][2] = {
        {"a", "EVENT_TYPE_CREATE"},   {"a", "EVENT_TYPE_WRITE"},       {"a", "EVENT_TYPE_CHMOD"},
        {"a", "EVENT_TYPE_RENAME"},   {"b", "EVENT_TYPE_CREATE"},      {"b", "EVENT_TYPE_REMOVE"},
        {"sub", "EVENT_TYPE_CREATE"}, {"zz-end", "EVENT_TYPE_CREATE"},
    };
    assert_in_order(x, want, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < x->nev; i++)
        assert_null(strstr(x->ev[i].name, "inner")); /* not recursive */
    th_stream_fini(&s);

    /* The client went away: envd notices, closes the inotify descriptor and keeps serving. */
    assert_int_equal(x->inotify_during, before + 1);
    int now = -1;
    for (int i = 0; i < 500 && (now = count_inotify(envd.pid)) != before; i++)
        usleep(10000);
    assert_int_equal(now, before);
    long st;
    json_t *j = call("Stat", &st, "{\"path\":\"%s\"}", x->dir);
    ok_entry(j, st);
    json_decref(j);
    free(x->dir);
    free(x);
}

static int rec_on_msg(void *ud, json_t *m)
{
    wctx_t *x = ud;
    const seen_t *s = record(x, m);
    if (json_object_get(m, "start")) {
        AT(x, "sub", mkdir(p_, 0755));
        return 0;
    }
    if (!s || strcmp(s->type, "EVENT_TYPE_CREATE") != 0)
        return 0;
    if (x->phase == 0 && strcmp(s->name, "sub") == 0) {
        /* sub is watched by now (its CREATE is sent after the watch is added). */
        x->phase = 1;
        AT(x, "sub/f", write_file(p_, "data"));
        AT(x, "sub/f", chmod(p_, 0600));
        do_rename(x, "sub/f", "sub/g");
        AT(x, "sub/g", unlink(p_));
        /* A tree made faster than envd can add watches: what it misses it reports by scan. */
        char *cmd = in(x, "");
        char *c2 = xasprintf("mkdir -p %s/sub/x/y/z && echo deep > %s/sub/x/y/z/deep", cmd, cmd);
        assert_int_equal(th_sh(c2), 0);
        free(c2);
        free(cmd);
        AT(x, "sub/zz-end", write_file(p_, ""));
    } else if (x->phase == 1 && saw(x, "sub/zz-end", "EVENT_TYPE_CREATE") &&
               saw(x, "sub/x/y/z/deep", "EVENT_TYPE_CREATE")) {
        /* A watched directory renamed inside the tree keeps reporting, under its new name. */
        x->phase = 2;
        do_rename(x, "sub/x", "sub/moved");
        int fd;
        AT(x, "sub/moved/y/z/deep", fd = open(p_, O_WRONLY | O_APPEND | O_CLOEXEC));
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "more", 4), 4);
        close(fd);
        AT(x, "sub/moved/y/new", write_file(p_, ""));
        /* A tree built elsewhere and moved in: only a scan can report what it holds. */
        char *outside = xasprintf("%s-outside", x->dir);
        char *cmd = xasprintf("mkdir -p %s/t/u && echo f > %s/t/u/file", outside, outside);
        assert_int_equal(th_sh(cmd), 0);
        char *from = xasprintf("%s/t", outside), *to = in(x, "sub/t");
        assert_int_equal(rename(from, to), 0);
        free(cmd), free(from), free(to), free(outside);
        AT(x, "sub/zz-end2", write_file(p_, ""));
    } else if (x->phase == 2 && strcmp(s->name, "sub/zz-end2") == 0) {
        /* The moved-in directories are watched too. */
        x->phase = 3;
        AT(x, "sub/t/u/file", write_file(p_, "again"));
        AT(x, "sub/t/u/zz-end3", write_file(p_, ""));
    } else if (x->phase == 3 && strcmp(s->name, "sub/t/u/zz-end3") == 0) {
        return 1;
    }
    return 0;
}

static void test_watch_dir_recursive(void **state)
{
    (void)state;
    wctx_t *x = calloc(1, sizeof *x);
    x->dir = tpath("watch2");
    mkdir(x->dir, 0755);
    char body[1024];
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"recursive\":true}", x->dir);
    const char *h[] = {"Connect-Timeout-Ms: 15000", NULL};
    th_stream_t s;
    assert_int_equal(th_stream(&envd, SVC "WatchDir", body, h, rec_on_msg, x, &s), 0);
    assert_int_equal(s.status, 200);
    assert_true(x->start_first);
    const char *const want[][2] = {
        {"sub", "EVENT_TYPE_CREATE"},
        {"sub/f", "EVENT_TYPE_CREATE"},
        {"sub/f", "EVENT_TYPE_WRITE"},
        {"sub/f", "EVENT_TYPE_CHMOD"},
        {"sub/f", "EVENT_TYPE_RENAME"},
        {"sub/g", "EVENT_TYPE_CREATE"},
        {"sub/g", "EVENT_TYPE_REMOVE"},
        {"sub/zz-end", "EVENT_TYPE_CREATE"},
        {"sub/x", "EVENT_TYPE_RENAME"},
        {"sub/moved", "EVENT_TYPE_CREATE"},
        {"sub/moved/y/z/deep", "EVENT_TYPE_WRITE"},
        {"sub/moved/y/new", "EVENT_TYPE_CREATE"},
        {"sub/t", "EVENT_TYPE_CREATE"},
        {"sub/t/u", "EVENT_TYPE_CREATE"},
        {"sub/t/u/file", "EVENT_TYPE_CREATE"},
        {"sub/zz-end2", "EVENT_TYPE_CREATE"},
        {"sub/t/u/file", "EVENT_TYPE_WRITE"},
        {"sub/t/u/zz-end3", "EVENT_TYPE_CREATE"},
    };
    assert_in_order(x, want, sizeof want / sizeof want[0]);
    assert_true(saw(x, "sub/x", "EVENT_TYPE_CREATE"));
    assert_true(saw(x, "sub/x/y", "EVENT_TYPE_CREATE"));
    assert_true(saw(x, "sub/x/y/z", "EVENT_TYPE_CREATE"));
    th_stream_fini(&s);
    free(x->dir);
    free(x);
}

static int keepalive_on_msg(void *ud, json_t *m)
{
    wctx_t *x = ud;
    record(x, m);
    return x->nkeep > 0;
}

static void test_watch_dir_keepalive_and_errors(void **state)
{
    (void)state;
    wctx_t x = {0};
    char *d = tpath("watch3");
    mkdir(d, 0755);
    char body[1024];
    snprintf(body, sizeof body, "{\"path\":\"%s\"}", d);
    const char *h[] = {"Connect-Timeout-Ms: 10000", "Keepalive-Ping-Interval: 1", NULL};
    th_stream_t s;
    assert_int_equal(th_stream(&envd, SVC "WatchDir", body, h, keepalive_on_msg, &x, &s), 0);
    assert_true(x.start_first);
    assert_int_equal(x.nkeep, 1);
    th_stream_fini(&s);

    /* Errors come in the end-of-stream message of a 200 answer. */
    struct {
        const char *json;
        const char *code;
    } cases[] = {
        {"{\"path\":\"%s/nope\"}", "not_found"},
        {"{\"path\":\"%s/f\"}", "invalid_argument"},
        {"{\"path\":\"%s/f\",\"recursive\":true}", "invalid_argument"},
        {"{\"path\":\"%s\",\"recursive\":\"yes\"}", "invalid_argument"},
    };
    char *f = tpath("watch3/f");
    write_file(f, "x");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(body, sizeof body, cases[i].json, d);
        assert_int_equal(th_stream(&envd, SVC "WatchDir", body, h, NULL, NULL, &s), 0);
        assert_int_equal(s.status, 200);
        assert_int_equal(s.n, 0);
        assert_non_null(s.end);
        json_t *err = json_object_get(s.end, "error");
        assert_string_equal(sget(err, "code"), cases[i].code);
        th_stream_fini(&s);
    }
    free(f);
    free(d);
}

/* ---- Watchers ---- */

/* Poll GetWatcherEvents until (name, type) shows up; the events seen are added to x. */
static void poll_until(const char *id, wctx_t *x, const char *name, const char *type)
{
    for (int i = 0; i < 200 && !saw(x, name, type); i++) {
        long st;
        json_t *j = call("GetWatcherEvents", &st, "{\"watcherId\":\"%s\"}", id);
        assert_int_equal(st, 200);
        size_t k;
        json_t *v;
        json_array_foreach(json_object_get(j, "events"), k, v)
        {
            json_t *m = json_pack("{s:O}", "filesystem", v);
            record(x, m);
            json_decref(m);
        }
        json_decref(j);
        if (!saw(x, name, type))
            usleep(20000);
    }
    assert_true(saw(x, name, type));
}

static void test_watchers(void **state)
{
    (void)state;
    wctx_t *x = calloc(1, sizeof *x);
    x->dir = tpath("watch4");
    mkdir(x->dir, 0755);
    long st;
    json_t *j = call("CreateWatcher", &st, "{\"path\":\"%s\",\"recursive\":true}", x->dir);
    assert_int_equal(st, 200);
    const char *idp = sget(j, "watcherId");
    assert_non_null(idp);
    assert_int_equal(idp[0], 'w');
    assert_true(strlen(idp) > 8);
    char id[64];
    snprintf(id, sizeof id, "%s", idp);
    json_decref(j);

    AT(x, "one", write_file(p_, "1"));
    AT(x, "dir", mkdir(p_, 0755));
    poll_until(id, x, "dir", "EVENT_TYPE_CREATE");
    AT(x, "dir/two", write_file(p_, "2"));
    AT(x, "one", chmod(p_, 0600));
    AT(x, "one", unlink(p_));
    poll_until(id, x, "one", "EVENT_TYPE_REMOVE");
    const char *const want[][2] = {
        {"one", "EVENT_TYPE_CREATE"},     {"one", "EVENT_TYPE_WRITE"}, {"dir", "EVENT_TYPE_CREATE"},
        {"dir/two", "EVENT_TYPE_CREATE"}, {"one", "EVENT_TYPE_CHMOD"}, {"one", "EVENT_TYPE_REMOVE"},
    };
    assert_in_order(x, want, sizeof want / sizeof want[0]);

    /* Events are handed out once: the buffer is empty now. */
    j = call("GetWatcherEvents", &st, "{\"watcher_id\":\"%s\"}", id); /* snake_case works too */
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(j, "events")), 0);
    json_decref(j);

    /* More than the buffer holds (10,000): reported as an error once, then it starts afresh. */
    /* Two files in turn: the kernel merges identical back-to-back events. */
    char *p = in(x, "busy"), *p2 = in(x, "busy2");
    write_file(p, "");
    write_file(p2, "");
    for (int i = 0; i < 10500; i++) {
        chmod(p, (i & 1) ? 0600 : 0644);
        chmod(p2, (i & 1) ? 0600 : 0644);
    }
    bool overflowed = false;
    for (int i = 0; i < 200 && !overflowed; i++) {
        usleep(20000);
        j = call("GetWatcherEvents", &st, "{\"watcherId\":\"%s\"}", id);
        if (st != 200) {
            assert_error(j, st, 429, "resource_exhausted");
            overflowed = true;
        }
        json_decref(j);
    }
    assert_true(overflowed);
    usleep(100000);
    j = call("GetWatcherEvents", &st, "{\"watcherId\":\"%s\"}", id); /* whatever is left */
    json_decref(j);
    unlink(p);
    free(p);
    free(p2);
    x->nev = 0;
    poll_until(id, x, "busy", "EVENT_TYPE_REMOVE");

    j = call("RemoveWatcher", &st, "{\"watcherId\":\"%s\"}", id);
    assert_int_equal(st, 200);
    assert_int_equal(json_object_size(j), 0);
    json_decref(j);
    j = call("GetWatcherEvents", &st, "{\"watcherId\":\"%s\"}", id);
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    j = call("RemoveWatcher", &st, "{\"watcherId\":\"%s\"}", id);
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    j = call("GetWatcherEvents", &st, "{}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("CreateWatcher", &st, "{\"path\":\"%s/nope\"}", x->dir);
    assert_error(j, st, 404, "not_found");
    json_decref(j);
    free(x->dir);
    free(x);
}

/* ---- Protocol ---- */

/* An upload through /files lands atomically through a temporary file; watchers never see that
 * file, only the target being created and written. */
static void test_watch_sees_uploads_as_writes(void **state)
{
    (void)state;
    wctx_t *x = calloc(1, sizeof *x);
    x->dir = tpath("watch5");
    mkdir(x->dir, 0755);
    long st;
    json_t *j = call("CreateWatcher", &st, "{\"path\":\"%s\"}", x->dir);
    assert_int_equal(st, 200);
    char id[64];
    snprintf(id, sizeof id, "%s", sget(j, "watcherId"));
    json_decref(j);

    for (int round = 0; round < 2; round++) { /* a new file, then an overwrite */
        char path[512];
        snprintf(path, sizeof path, "/files?path=%s/up.txt", x->dir);
        const char *h[] = {"Content-Type: application/octet-stream", NULL};
        httpc_resp_t r;
        httpc_resp_init(&r);
        assert_int_equal(th_http(&envd, "POST", path, h, "payload", 7, &r), 0);
        assert_int_equal(r.status, 200);
        httpc_resp_fini(&r);
        poll_until(id, x, "up.txt", "EVENT_TYPE_WRITE");
        if (round == 0)
            x->nev = 0;
    }
    for (size_t i = 0; i < x->nev; i++)
        assert_null(strstr(x->ev[i].name, ENVD_UPLOAD_TMP_PREFIX));
    j = call("RemoveWatcher", &st, "{\"watcherId\":\"%s\"}", id);
    assert_int_equal(st, 200);
    json_decref(j);
    free(x->dir);
    free(x);
}

static void test_protocol(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *h[] = {"Content-Type: text/plain", NULL};
    const char *body = "{\"path\":\"/\"}";
    assert_int_equal(th_http(&envd, "POST", SVC "Stat", h, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 415);
    httpc_resp_fini(&r);

    long st;
    /* Unknown fields are ignored. */
    json_t *j = call("Stat", &st, "{\"path\":\"%s\",\"includeEntry\":true,\"x\":{\"y\":[1]}}", tmp);
    ok_entry(j, st);
    json_decref(j);
    j = call("Stat", &st, "{\"path\":");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("Stat", &st, "[\"%s\"]", tmp);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("Stat", &st, "{\"path\":42}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("Stat", &st, "{\"path\":\"/tmp\\u0000/etc\"}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("ListDir", &st, "{\"path\":\"/\",\"depth\":\"lots\"}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("ListDir", &st, "{\"path\":\"/\",\"depth\":4294967296}");
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    /* A path longer than PATH_MAX. */
    char *huge = malloc(9000);
    memset(huge, 'a', 8999);
    huge[0] = '/';
    huge[8999] = '\0';
    j = call("Stat", &st, "{\"path\":\"%s\"}", huge);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    j = call("MakeDir", &st, "{\"path\":\"%s\"}", huge);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    free(huge);
    /* A long watcher id cannot exist. */
    j = call("RemoveWatcher", &st, "{\"watcherId\":\"w%0200d\"}", 0);
    assert_error(j, st, 400, "invalid_argument");
    json_decref(j);
    /* snake_case and camelCase are both accepted; null is absent. */
    j = call("ListDir", &st, "{\"path\":\"%s\",\"depth\":null}", tmp);
    assert_int_equal(st, 200);
    json_decref(j);
    assert_true(th_envd_alive(&envd));
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stat),
        cmocka_unit_test(test_make_dir),
        cmocka_unit_test(test_move),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_list_dir),
        cmocka_unit_test(test_list_dir_wide),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_as_nobody),
        cmocka_unit_test(test_watch_dir),
        cmocka_unit_test(test_watch_dir_recursive),
        cmocka_unit_test(test_watch_dir_keepalive_and_errors),
        cmocka_unit_test(test_watchers),
        cmocka_unit_test(test_watch_sees_uploads_as_writes),
        cmocka_unit_test(test_protocol),
    };
    return cmocka_run_group_tests_name("envd_fs", tests, setup, teardown);
}
