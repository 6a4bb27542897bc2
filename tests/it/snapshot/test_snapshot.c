/* Issue 4 through the real wrenn-agent and real microVMs (QEMU microvm under TCG): pause/resume
 * cycles that keep memory, files and processes; snapshot templates with many clones; fork;
 * resume after an agent restart; pause under load; corrupt snapshots refused; bad requests.
 * After every test nothing may be left behind (VMs, namespaces, mounts, files). */
#include "ta.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
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

#include "procfs.h"
#include "xalloc.h"

static ta_agent_t ag;
static bool have_vms;

static int group_setup(void **state)
{
    (void)state;
    have_vms = ta_have_vms();
    if (!have_vms) {
        fprintf(stderr, "# no VMM driver, network module or image scripts: VM tests skipped\n");
        return 0;
    }
    if (ta_ensure_image("minimal") < 0)
        return -1;
    return ta_start(&ag) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (have_vms)
        ta_stop(&ag);
    return 0;
}

/* FUSE mounts (memfs) under the agent's root. */
static int mounts_left(void)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, ag.root)) {
            fprintf(stderr, "# mount left: %s", line);
            n++;
        }
    fclose(f);
    return n;
}

static long callf(const char *method, json_t **out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static long callf(const char *method, json_t **out, const char *fmt, ...)
{
    char body[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    json_t *r = NULL;
    long st = ta_call(&ag, method, body, &r);
    if (out)
        *out = r;
    else
        json_decref(r);
    return st;
}

static const char *code_of(const json_t *r)
{
    const char *c = json_string_value(json_object_get(r, "code"));
    return c ? c : "";
}

/* After each test: the agent is alive, every sandbox and template destroyed, nothing left. */
static int after(void **state)
{
    (void)state;
    if (!have_vms)
        return 0;
    if (!th_envd_alive(&ag.h)) {
        fprintf(stderr, "# the agent died\n");
        return -1;
    }
    json_t *l = NULL;
    if (ta_call(&ag, "ListSandboxes", "{}", &l) == 200) {
        json_t *s;
        size_t i;
        json_array_foreach(json_object_get(l, "sandboxes"), i, s)
            callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}",
                  json_string_value(json_object_get(s, "sandboxId")));
    }
    json_decref(l);
    /* Templates are meant to outlive sandboxes: each test deletes its own; whatever is still
     * there is a test failure (then deleted, before the leftovers are counted). */
    char path[400];
    snprintf(path, sizeof path, "%s/templates", ag.root);
    int left = 0;
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char sub[700];
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            DIR *t = opendir(sub);
            struct dirent *te;
            while (t && (te = readdir(t)))
                if (te->d_name[0] != '.') {
                    fprintf(stderr, "# template left: %s/%s\n", de->d_name, te->d_name);
                    left++;
                    /* Delete it (and so its pool), so that one failed test does not make every
                     * later one fail on what it left behind. */
                    if (strcmp(de->d_name, "_") == 0)
                        callf("DeleteSnapshot", NULL, "{\"name\":\"%s\"}", te->d_name);
                    else
                        callf("DeleteSnapshot", NULL, "{\"name\":\"%s\",\"teamId\":\"%s\"}",
                              te->d_name, de->d_name);
                }
            if (t)
                closedir(t);
        }
        closedir(d);
    }
    return ta_leftovers(ag.root) == 0 && mounts_left() == 0 && left == 0 ? 0 : -1;
}

#define NEED_VMS()                                                                                 \
    do {                                                                                           \
        if (!have_vms)                                                                             \
            skip();                                                                                \
    } while (0)

/* Run script, expect exit 0, return its trimmed stdout (malloc'd). */
static char *sh_ok(const char *id, const char *script)
{
    buf_t out, err;
    buf_init(&out);
    buf_init(&err);
    int rc = ta_sh(&ag, id, script, &out, &err);
    if (rc != 0)
        fprintf(stderr, "# '%s' in %s: exit %d, stderr: %s\n", script, id, rc,
                err.data ? err.data : "");
    assert_int_equal(rc, 0);
    char *s = xstrdup(out.data ? out.data : "");
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
    buf_fini(&out);
    buf_fini(&err);
    return s;
}

static char *create(const char *tmpl, const char *extra)
{
    json_t *r = NULL;
    long st = callf("CreateSandbox", &r, "{\"template\":\"%s\",\"timeoutSec\":0%s%s}", tmpl,
                    extra ? "," : "", extra ? extra : "");
    if (st != 200)
        fprintf(stderr, "# create %s: %ld %s\n", tmpl, st,
                json_string_value(json_object_get(r, "message")));
    assert_int_equal(st, 200);
    char *id = xstrdup(json_string_value(json_object_get(r, "sandboxId")));
    json_decref(r);
    return id;
}

static void pause_ok(const char *id)
{
    json_t *r = NULL;
    long st = callf("PauseSandbox", &r, "{\"sandboxId\":\"%s\"}", id);
    if (st != 200)
        fprintf(stderr, "# pause: %ld %s\n", st, json_string_value(json_object_get(r, "message")));
    assert_int_equal(st, 200);
    json_decref(r);
}

static void resume_ok(const char *id)
{
    json_t *r = NULL;
    long st = callf("ResumeSandbox", &r, "{\"sandboxId\":\"%s\",\"timeoutSec\":0}", id);
    if (st != 200)
        fprintf(stderr, "# resume: %ld %s\n", st, json_string_value(json_object_get(r, "message")));
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "running");
    json_decref(r);
}

static void status_is(const char *id, const char *want)
{
    json_t *l = NULL;
    assert_int_equal(ta_call(&ag, "ListSandboxes", "{}", &l), 200);
    json_t *s;
    size_t i;
    const char *got = NULL;
    json_array_foreach(json_object_get(l, "sandboxes"), i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "sandboxId")), id) == 0)
            got = json_string_value(json_object_get(s, "status"));
    }
    assert_non_null(got);
    assert_string_equal(got, want);
    json_decref(l);
}

static int count_layers(const char *id)
{
    char path[600];
    snprintf(path, sizeof path, "%s/sandboxes/%s/snap", ag.root, id);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".layer"))
            n++;
    closedir(d);
    return n;
}

/* ---- pause / resume -------------------------------------------------------------------------- */

/* A 200 MiB in-memory buffer, a file on disk and a process started before the first pause all
 * survive 50 pause/resume cycles; a small hot region changes every cycle (new layers, merges). */
static void test_fifty_cycles(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = create("minimal", "\"memoryMb\":512");
    char *sum0 = sh_ok(id, "mkdir -p /mnt/ram && mount -t tmpfs -o size=300m ram /mnt/ram && "
                           "head -c 209715200 /dev/urandom > /mnt/ram/buf && "
                           "md5sum /mnt/ram/buf | cut -d' ' -f1");
    free(sh_ok(id, "echo persisted > /root/file && sync"));
    char *pid = sh_ok(id, "sleep 100000 > /dev/null 2>&1 & echo $!");
    for (int i = 0; i < 50; i++) {
        char script[256];
        /* Change 1 MiB of a hot file, remember its sum, pause, resume, compare. */
        snprintf(script, sizeof script,
                 "head -c 1048576 /dev/urandom > /mnt/ram/hot && md5sum /mnt/ram/hot | cut -d' ' "
                 "-f1");
        char *hot = sh_ok(id, script);
        pause_ok(id);
        status_is(id, "paused");
        resume_ok(id);
        char *hot2 = sh_ok(id, "md5sum /mnt/ram/hot | cut -d' ' -f1");
        assert_string_equal(hot, hot2);
        snprintf(script, sizeof script, "kill -0 %s && cat /root/file", pid);
        char *f = sh_ok(id, script);
        assert_string_equal(f, "persisted");
        free(hot);
        free(hot2);
        free(f);
        int layers = count_layers(id);
        assert_true(layers >= 1 && layers <= 10);
        if (i == 24) {
            char *mid = sh_ok(id, "md5sum /mnt/ram/buf | cut -d' ' -f1");
            assert_string_equal(mid, sum0);
            free(mid);
        }
    }
    char *sum1 = sh_ok(id, "md5sum /mnt/ram/buf | cut -d' ' -f1");
    assert_string_equal(sum0, sum1);
    /* The guest clock was set on every resume: it is within a few seconds of the host's. */
    char *gt = sh_ok(id, "date +%s");
    long long d = atoll(gt) - (long long)time(NULL);
    assert_true(d > -5 && d < 5);
    free(gt);
    free(sum0);
    free(sum1);
    free(pid);
    free(id);
}

/* ---- templates ------------------------------------------------------------------------------- */

struct clone_job {
    char id[80];
    int ok;
};

static void *clone_thread(void *ud)
{
    struct clone_job *j = ud;
    json_t *r = NULL;
    /* memoryMb/vcpus asked for are ignored: the template's own apply. */
    long st = callf("CreateSandbox", &r,
                    "{\"template\":\"tpl\",\"teamId\":\"team-a\",\"memoryMb\":1024,\"vcpus\":2}");
    if (st == 200) {
        snprintf(j->id, sizeof j->id, "%s", json_string_value(json_object_get(r, "sandboxId")));
        j->ok = 1;
    } else {
        fprintf(stderr, "# clone: %ld %s\n", st, json_string_value(json_object_get(r, "message")));
    }
    json_decref(r);
    return NULL;
}

static void test_template_ten_clones(void **state)
{
    (void)state;
    NEED_VMS();
    char *src = create("minimal", "\"memoryMb\":256");
    free(sh_ok(src, "echo from-template > /root/marker && sync && "
                    "(while :; do sleep 1; done) > /dev/null 2>&1 & echo $! > /root/pid"));
    json_t *r = NULL;
    long st = callf("CreateSnapshot", &r,
                    "{\"sandboxId\":\"%s\",\"name\":\"tpl\",\"teamId\":\"team-a\"}", src);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(r, "name")), "tpl");
    assert_true(atoll(json_string_value(json_object_get(r, "sizeBytes"))) > 0);
    json_decref(r);
    status_is(src, "paused"); /* the source stays paused and resumable */

    /* Another team cannot see it, nor overwrite it. */
    st = callf("CreateSandbox", &r, "{\"template\":\"tpl\",\"teamId\":\"team-b\"}");
    assert_int_equal(st, 404);
    json_decref(r);

    struct clone_job jobs[10];
    pthread_t th[10];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 10; i++)
        pthread_create(&th[i], NULL, clone_thread, &jobs[i]);
    for (int i = 0; i < 10; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 10; i++)
        assert_int_equal(jobs[i].ok, 1);
    for (int i = 0; i < 10; i++) {
        char *m = sh_ok(jobs[i].id, "cat /root/marker && kill -0 $(cat /root/pid) && echo alive");
        assert_string_equal(m, "from-template\nalive");
        free(m);
        char script[200];
        snprintf(script, sizeof script, "echo %d > /root/own && sync", i);
        free(sh_ok(jobs[i].id, script));
        assert_int_equal(callf("GetSandbox", &r, "{\"sandboxId\":\"%s\"}", jobs[i].id), 200);
        assert_int_equal(json_integer_value(json_object_get(r, "memoryMb")), 256);
        assert_int_equal(json_integer_value(json_object_get(r, "vcpus")), 1);
        json_decref(r);
    }
    /* Independent: each sees only what it wrote itself. */
    for (int i = 0; i < 10; i++) {
        char *o = sh_ok(jobs[i].id, "cat /root/own");
        assert_int_equal(atoi(o), i);
        free(o);
    }
    /* One RAM file for all ten, each mapping it privately: what they only read is in the page
     * cache once, and none of them can write it. */
    char first[4096] = "";
    for (int i = 0; i < 10; i++) {
        char rec[1300], maps[64], line[4096], mine[4096] = "";
        snprintf(rec, sizeof rec, "%s/sandboxes/%s/record.json", ag.root, jobs[i].id);
        json_t *j = json_load_file(rec, 0, NULL);
        assert_non_null(j);
        char key[40];
        const char *k = json_string_value(json_object_get(j, "memfsKey"));
        assert_non_null(k);
        assert_int_equal(strlen(k), 32);
        snprintf(key, sizeof key, "%s", k);
        snprintf(maps, sizeof maps, "/proc/%d/maps",
                 (int)json_integer_value(json_object_get(j, "pid")));
        FILE *f = fopen(maps, "re");
        assert_non_null(f);
        while (fgets(line, sizeof line, f))
            if (strstr(line, "/memfs/") && strstr(line, key) && strstr(line, "/mnt/mem"))
                snprintf(mine, sizeof mine, "%s", strchr(line, '/'));
        fclose(f);
        assert_true(mine[0] != '\0');
        if (!first[0])
            snprintf(first, sizeof first, "%s", mine);
        assert_string_equal(mine, first);
        json_decref(j);
        char *perms = NULL; /* the mapping line's permissions: private ("p") */
        f = fopen(maps, "re");
        while (f && fgets(line, sizeof line, f))
            if (strstr(line, key) && strstr(line, "/mnt/mem"))
                perms = strdup(strchr(line, ' ') + 1);
        if (f)
            fclose(f);
        assert_non_null(perms);
        assert_int_equal(perms[3], 'p');
        free(perms);
    }
    /* Deleting the template leaves its clones working, pausable and resumable. */
    assert_int_equal(callf("DeleteSnapshot", NULL, "{\"name\":\"tpl\",\"teamId\":\"team-a\"}"),
                     200);
    assert_int_equal(callf("DeleteSnapshot", &r, "{\"name\":\"tpl\",\"teamId\":\"team-a\"}"), 404);
    json_decref(r);
    pause_ok(jobs[3].id);
    resume_ok(jobs[3].id);
    char *o = sh_ok(jobs[3].id, "cat /root/own /root/marker");
    assert_string_equal(o, "3\nfrom-template");
    free(o);
    /* The source is still resumable. */
    resume_ok(src);
    o = sh_ok(src, "cat /root/marker");
    assert_string_equal(o, "from-template");
    free(o);
    free(src);
}

/* ---- warm pool --------------------------------------------------------------------------------
 */

/* Sandboxes in p-* directories (the warm pool's): how many are still pooled; *claimed_dir gets
 * the directory of the one whose record says id (when id is given). */
static int pooled_count(const char *id, char *claimed_dir, size_t n)
{
    char path[600];
    snprintf(path, sizeof path, "%s/sandboxes", ag.root);
    DIR *d = opendir(path);
    int pooled = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, "p-", 2) != 0)
            continue;
        char rec[1400];
        snprintf(rec, sizeof rec, "%s/%s/record.json", path, de->d_name);
        json_t *j = json_load_file(rec, 0, NULL);
        const char *st = json_string_value(json_object_get(j, "state"));
        const char *sid = json_string_value(json_object_get(j, "sandboxId"));
        if (st && strcmp(st, "pooled") == 0)
            pooled++;
        if (id && sid && strcmp(sid, id) == 0 && claimed_dir)
            snprintf(claimed_dir, n, "%s", de->d_name);
        json_decref(j);
    }
    if (d)
        closedir(d);
    return pooled;
}

static void wait_pooled(int want)
{
    for (int i = 0; i < 600 && pooled_count(NULL, NULL, 0) < want; i++)
        usleep(50 * 1000);
    assert_int_equal(pooled_count(NULL, NULL, 0), want);
}

/* Template name of team from a 256 MiB minimal sandbox whose /root/marker says marker. */
static void make_template(const char *name, const char *team, const char *marker)
{
    char *src = create("minimal", "\"memoryMb\":256");
    char script[128];
    snprintf(script, sizeof script, "echo %s > /root/marker && sync", marker);
    free(sh_ok(src, script));
    assert_int_equal(callf("CreateSnapshot", NULL,
                           "{\"sandboxId\":\"%s\",\"name\":\"%s\",\"teamId\":\"%s\"}", src, name,
                           team),
                     200);
    assert_int_equal(callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", src), 200);
    free(src);
}

/* Creates from a snapshot template in use are served from sandboxes restored ahead of time; each
 * is still the caller's own: id, environment, token, clock and entropy. */
static void test_warm_pool(void **state)
{
    (void)state;
    NEED_VMS();
    make_template("ptpl", "team-p", "pooled");
    assert_int_equal(pooled_count(NULL, NULL, 0), 0); /* no create from it yet */
    char *a = create("ptpl", "\"teamId\":\"team-p\"");
    wait_pooled(2); /* --pool-size default */

    /* Pooled sandboxes are nobody's: not listed. */
    json_t *l = NULL;
    assert_int_equal(callf("ListSandboxes", &l, "{}"), 200);
    assert_int_equal(json_array_size(json_object_get(l, "sandboxes")), 1);
    json_decref(l);

    char *b = create("ptpl", "\"teamId\":\"team-p\",\"sandboxId\":\"sb-pool-b\","
                             "\"envVars\":{\"WHO\":\"b\"}");
    char *c = create("ptpl", "\"teamId\":\"team-p\",\"envVars\":{\"WHO\":\"c\"}");
    assert_string_equal(b, "sb-pool-b");
    char dir_b[300] = "", dir_c[300] = "";
    pooled_count(b, dir_b, sizeof dir_b);
    pooled_count(c, dir_c, sizeof dir_c);
    assert_true(dir_b[0] != '\0'); /* served from the pool */
    assert_true(dir_c[0] != '\0');
    char *o = sh_ok(b, "cat /root/marker; echo $WHO");
    assert_string_equal(o, "pooled\nb");
    free(o);
    o = sh_ok(c, "echo $WHO");
    assert_string_equal(o, "c");
    free(o);
    /* The clock is the host's, though it stood still while pooled. */
    o = sh_ok(b, "date +%s");
    long long d = atoll(o) - (long long)time(NULL);
    assert_true(d > -5 && d < 5);
    free(o);
    /* Each has its own entropy. */
    char *rb = sh_ok(b, "head -c 16 /dev/urandom | od -An -tx1");
    char *rc = sh_ok(c, "head -c 16 /dev/urandom | od -An -tx1");
    assert_string_not_equal(rb, rc);
    free(rb);
    free(rc);
    status_is(b, "running");

    /* After an agent restart the claimed ones run on; the pooled ones are gone. */
    wait_pooled(2);
    ta_kill9(&ag);
    assert_int_equal(ta_restart(&ag), 0);
    assert_int_equal(pooled_count(NULL, NULL, 0), 0);
    o = sh_ok(b, "cat /root/marker");
    assert_string_equal(o, "pooled");
    free(o);

    /* DeleteSnapshot empties the template's pool at once. */
    char *e = create("ptpl", "\"teamId\":\"team-p\""); /* a miss: the pool is refilled */
    wait_pooled(2);
    assert_int_equal(callf("DeleteSnapshot", NULL, "{\"name\":\"ptpl\",\"teamId\":\"team-p\"}"),
                     200);
    assert_int_equal(pooled_count(NULL, NULL, 0), 0);
    const char *all[] = {a, b, c, e};
    for (int i = 0; i < 4; i++)
        assert_int_equal(callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", all[i]), 200);
    free(a);
    free(b);
    free(c);
    free(e);
}

/* The one memfs instance under the agent's root: its directory name and server pid. */
static pid_t memfs_server(char *key, size_t n)
{
    char path[600];
    snprintf(path, sizeof path, "%s/memfs", ag.root);
    DIR *d = opendir(path);
    struct dirent *de;
    pid_t pid = 0;
    int found = 0;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char srv[1200];
        snprintf(srv, sizeof srv, "%s/%s/server", path, de->d_name);
        FILE *f = fopen(srv, "re");
        int p = 0;
        if (f && fscanf(f, "%d", &p) == 1) {
            pid = (pid_t)p;
            snprintf(key, n, "%.32s", de->d_name);
            found++;
        }
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    assert_int_equal(found, 1);
    return pid;
}

static bool can_lower_oom_adj(void)
{
    FILE *f = fopen("/proc/self/oom_score_adj", "we");
    bool ok = f && fputs("-1", f) >= 0 && fflush(f) == 0;
    if (f)
        fclose(f);
    if (ok && (f = fopen("/proc/self/oom_score_adj", "we"))) {
        fputs("0", f);
        fclose(f);
    }
    if (!ok)
        fprintf(stderr, "# this host refuses lowering oom_score_adj: not checked\n");
    return ok;
}

/* When the memfs server of a template's RAM dies, the sandboxes restored over it are lost (each
 * dies at its next touch of a page it has not read yet), the pooled ones among them too: a create
 * must never be handed one of those. It gets a sandbox over a new server; the reaper destroys the
 * lost pooled ones, and the pool is made again over the new server. */
static void test_pool_server_dies(void **state)
{
    (void)state;
    NEED_VMS();
    make_template("dtpl", "team-d", "kept");
    char *a = create("dtpl", "\"teamId\":\"team-d\"");
    wait_pooled(2);
    char key[64];
    pid_t dead = memfs_server(key, sizeof key);
    char pooled_before[2][300];
    int np = 0;
    {
        char path[600];
        snprintf(path, sizeof path, "%s/sandboxes", ag.root);
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (strncmp(de->d_name, "p-", 2) == 0 && np < 2)
                snprintf(pooled_before[np++], sizeof pooled_before[0], "%s", de->d_name);
        if (d)
            closedir(d);
    }
    assert_int_equal(np, 2);
    /* The OOM killer must never pick it (every clone of the template depends on it), where
     * root may lower an oom_score_adj at all (some container hosts refuse it: EACCES). */
    if (can_lower_oom_adj()) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/oom_score_adj", (int)dead);
        FILE *f = fopen(path, "re");
        int adj = 0;
        assert_non_null(f);
        assert_int_equal(fscanf(f, "%d", &adj), 1);
        fclose(f);
        assert_int_equal(adj, -1000);
    }
    /* The agent spawned it for this test's template: ours to kill, by its pid. */
    assert_int_equal(kill(dead, SIGKILL), 0);
    /* Dead once it is gone or a zombie (the agent's child, reaped later). */
    for (int i = 0; i < 200 && procfs_start_time(dead) != 0; i++)
        usleep(20 * 1000);

    char *b = create("dtpl", "\"teamId\":\"team-d\"");
    char dir_b[300] = "";
    pooled_count(b, dir_b, sizeof dir_b);
    for (int i = 0; i < np; i++)
        assert_string_not_equal(dir_b, pooled_before[i]);
    /* 100 MiB of guest memory it had never touched: served by a live server, or the VM dies. */
    char *o = sh_ok(b, "cat /root/marker && dd if=/dev/zero of=/dev/null bs=100M count=1 2>&1 "
                       "| grep -c 'records out'");
    assert_string_equal(o, "kept\n1");
    free(o);
    assert_true(memfs_server(key, sizeof key) != dead);
    /* The reaper destroys the lost pooled ones within a tick; the pool is made again (after a
     * create from the template) over the new server. */
    for (int i = 0; i < np; i++) {
        char path[1000];
        snprintf(path, sizeof path, "%s/sandboxes/%s", ag.root, pooled_before[i]);
        for (int k = 0; k < 100 && access(path, F_OK) == 0; k++)
            usleep(100 * 1000);
        assert_int_not_equal(access(path, F_OK), 0);
    }
    char *c = create("dtpl", "\"teamId\":\"team-d\"");
    wait_pooled(2);
    char *d = create("dtpl", "\"teamId\":\"team-d\"");
    char dir_d[300] = "";
    pooled_count(d, dir_d, sizeof dir_d);
    assert_true(dir_d[0] != '\0'); /* served from the pool */
    const char *fresh[] = {c, d};
    for (int i = 0; i < 2; i++) {
        o = sh_ok(fresh[i], "cat /root/marker && dd if=/dev/zero of=/dev/null bs=100M count=1 "
                            "2>&1 | grep -c 'records out'");
        assert_string_equal(o, "kept\n1");
        free(o);
    }

    assert_int_equal(callf("DeleteSnapshot", NULL, "{\"name\":\"dtpl\",\"teamId\":\"team-d\"}"),
                     200);
    /* a ran over the dead server: it may have died already (then it is gone, 404). */
    long st = callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", a);
    assert_true(st == 200 || st == 404);
    assert_int_equal(callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", b), 200);
    assert_int_equal(callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", c), 200);
    assert_int_equal(callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", d), 200);
    free(a);
    free(b);
    free(c);
    free(d);
}

/* ---- fork ------------------------------------------------------------------------------------ */

static void test_fork(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = create("minimal", "\"memoryMb\":256");
    free(sh_ok(id,
               "echo before > /root/f && sync && (i=0; while :; do i=$((i+1)); "
               "echo $i > /tmp/counter; sleep 0.2; done) > /dev/null 2>&1 & echo $! > /tmp/pid"));
    json_t *r = NULL;
    long st = callf("ForkSandbox", &r, "{\"sandboxId\":\"%s\",\"count\":2}", id);
    if (st != 200)
        fprintf(stderr, "# fork: %s\n", json_string_value(json_object_get(r, "message")));
    assert_int_equal(st, 200);
    json_t *kids = json_object_get(r, "sandboxes");
    assert_int_equal(json_array_size(kids), 2);
    char *k[2];
    for (int i = 0; i < 2; i++)
        k[i] = xstrdup(json_string_value(json_object_get(json_array_get(kids, i), "sandboxId")));
    json_decref(r);
    status_is(id, "running");
    /* Parent and children: the file and the running process came along. */
    const char *all[3] = {id, k[0], k[1]};
    for (int i = 0; i < 3; i++) {
        char *o = sh_ok(all[i], "cat /root/f && kill -0 $(cat /tmp/pid) && echo alive");
        assert_string_equal(o, "before\nalive");
        free(o);
        char script[100];
        snprintf(script, sizeof script, "echo %d > /root/f && sync", i);
        free(sh_ok(all[i], script));
    }
    for (int i = 0; i < 3; i++) {
        char *o = sh_ok(all[i], "cat /root/f");
        assert_int_equal(atoi(o), i);
        free(o);
    }
    free(k[0]);
    free(k[1]);
    free(id);
}

/* ---- agent restart -----------------------------------------------------------------------------
 */

static void test_resume_after_restart(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = create("minimal", "\"memoryMb\":256");
    free(sh_ok(id, "echo kept > /root/f && sync && sleep 100000 > /dev/null 2>&1 & "
                   "echo $! > /tmp/pid"));
    pause_ok(id);
    ta_kill9(&ag);
    assert_int_equal(ta_restart(&ag), 0);
    status_is(id, "paused");
    resume_ok(id);
    char *o = sh_ok(id, "cat /root/f && kill -0 $(cat /tmp/pid) && echo alive");
    assert_string_equal(o, "kept\nalive");
    free(o);
    /* A restored (memfs-backed) sandbox is re-adopted too, and pauses again afterwards. */
    ta_kill9(&ag);
    assert_int_equal(ta_restart(&ag), 0);
    status_is(id, "running");
    o = sh_ok(id, "cat /root/f");
    assert_string_equal(o, "kept");
    free(o);
    pause_ok(id);
    resume_ok(id);
    o = sh_ok(id, "cat /root/f");
    assert_string_equal(o, "kept");
    free(o);
    free(id);
}

/* A restored sandbox whose record is lost (an agent that died mid-create, a disk error): the
 * next agent start kills its VM and detaches its memfs mount; nothing is left (after()). */
static void test_stray_restored_reaped(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = create("minimal", "\"memoryMb\":256");
    pause_ok(id);
    resume_ok(id);
    ta_kill9(&ag);
    char rec[600];
    snprintf(rec, sizeof rec, "%s/sandboxes/%s/record.json", ag.root, id);
    assert_int_equal(unlink(rec), 0);
    assert_int_equal(ta_restart(&ag), 0);
    json_t *r = NULL;
    assert_int_equal(callf("GetSandbox", &r, "{\"sandboxId\":\"%s\"}", id), 404);
    json_decref(r);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/sandboxes/%s", ag.root, id);
    struct stat sb;
    assert_int_not_equal(stat(dir, &sb), 0);
    free(id);
}

/* autoPause: at TTL expiry the sandbox is paused, not destroyed; ListSandboxes reports it in
 * autoPausedSandboxIds exactly once; it resumes with what it had. */
static void test_auto_pause(void **state)
{
    (void)state;
    NEED_VMS();
    json_t *r = NULL;
    assert_int_equal(callf("CreateSandbox", &r,
                           "{\"template\":\"minimal\",\"memoryMb\":256,\"timeoutSec\":2,"
                           "\"autoPause\":true}"),
                     200);
    char *id = xstrdup(json_string_value(json_object_get(r, "sandboxId")));
    json_decref(r);
    free(sh_ok(id, "echo kept > /root/f && sync"));
    bool seen = false;
    for (int i = 0; i < 40 && !seen; i++) {
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL);
        assert_int_equal(ta_call(&ag, "ListSandboxes", "{}", &r), 200);
        json_t *v;
        size_t k;
        json_array_foreach(json_object_get(r, "autoPausedSandboxIds"), k, v)
        {
            if (strcmp(json_string_value(v), id) == 0)
                seen = true;
        }
        json_decref(r);
    }
    assert_true(seen);
    status_is(id, "paused");
    /* Reported once only. */
    assert_int_equal(ta_call(&ag, "ListSandboxes", "{}", &r), 200);
    assert_int_equal(json_array_size(json_object_get(r, "autoPausedSandboxIds")), 0);
    json_decref(r);
    resume_ok(id);
    char *o = sh_ok(id, "cat /root/f");
    assert_string_equal(o, "kept");
    free(o);
    free(id);
}

/* ---- under load --------------------------------------------------------------------------------
 */

struct load_job {
    const char *id;
    long status;
};

static void *load_thread(void *ud)
{
    struct load_job *j = ud;
    json_t *r = NULL;
    /* Busy for a while, writing memory: pausing cuts this call off. */
    j->status = callf("Exec", &r,
                      "{\"sandboxId\":\"%s\",\"cmd\":\"/bin/sh\",\"args\":[\"-c\",\"i=0; while [ "
                      "$i -lt 400 ]; do head -c 262144 /dev/urandom > /tmp/load.$((i %% 8)); "
                      "i=$((i+1)); done; echo done\"]}",
                      j->id);
    json_decref(r);
    return NULL;
}

static void test_pause_under_load(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = create("minimal", "\"memoryMb\":256");
    free(sh_ok(id, "(while :; do head -c 65536 /dev/urandom > /tmp/bg; done) > /dev/null 2>&1 & "
                   "echo $! > /tmp/bgpid"));
    struct load_job j = {.id = id};
    pthread_t t;
    pthread_create(&t, NULL, load_thread, &j);
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    pause_ok(id);
    pthread_join(t, NULL);
    resume_ok(id);
    char *o = sh_ok(id, "kill -0 $(cat /tmp/bgpid) && echo alive && ls /tmp/bg");
    assert_string_equal(o, "alive\n/tmp/bg");
    free(o);
    pause_ok(id);
    resume_ok(id);
    free(sh_ok(id, "true"));
    free(id);
}

/* ---- corrupt snapshots -------------------------------------------------------------------------
 */

static void flip_byte(const char *path, off_t off)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    unsigned char b = 0;
    assert_int_equal(pread(fd, &b, 1, off), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

static void test_corrupt_refused(void **state)
{
    (void)state;
    NEED_VMS();
    char *id = create("minimal", "\"memoryMb\":256");
    free(sh_ok(id, "echo x > /root/f && sync"));
    pause_ok(id);
    char hdr[600], layer[900];
    snprintf(hdr, sizeof hdr, "%s/sandboxes/%s/snap/mem.hdr", ag.root, id);
    /* A flipped header byte: refused, clearly, and the sandbox stays paused. */
    flip_byte(hdr, 20);
    json_t *r = NULL;
    long st = callf("ResumeSandbox", &r, "{\"sandboxId\":\"%s\"}", id);
    assert_int_equal(st, 400);
    assert_string_equal(code_of(r), "failed_precondition");
    fprintf(stderr, "# corrupt header: %s\n", json_string_value(json_object_get(r, "message")));
    json_decref(r);
    status_is(id, "paused");
    flip_byte(hdr, 20);
    /* A truncated layer: refused too. */
    char dir[600];
    snprintf(dir, sizeof dir, "%s/sandboxes/%s/snap", ag.root, id);
    DIR *d = opendir(dir);
    struct dirent *de;
    layer[0] = '\0';
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".layer"))
            snprintf(layer, sizeof layer, "%s/%s", dir, de->d_name);
    closedir(d);
    assert_true(layer[0]);
    struct stat sb;
    assert_int_equal(stat(layer, &sb), 0);
    chmod(layer, 0644);
    assert_int_equal(truncate(layer, sb.st_size - 4096), 0);
    st = callf("ResumeSandbox", &r, "{\"sandboxId\":\"%s\"}", id);
    assert_int_equal(st, 400);
    assert_string_equal(code_of(r), "failed_precondition");
    fprintf(stderr, "# truncated layer: %s\n", json_string_value(json_object_get(r, "message")));
    json_decref(r);
    status_is(id, "paused");
    free(id);
}

/* ---- bad requests ------------------------------------------------------------------------------
 */

static void test_bad_requests(void **state)
{
    (void)state;
    NEED_VMS();
    json_t *r = NULL;
    assert_int_equal(callf("PauseSandbox", &r, "{\"sandboxId\":\"nope\"}"), 404);
    json_decref(r);
    assert_int_equal(callf("ResumeSandbox", &r, "{\"sandboxId\":\"nope\"}"), 404);
    json_decref(r);
    assert_int_equal(callf("PauseSandbox", &r, "{}"), 400);
    json_decref(r);
    assert_int_equal(callf("ForkSandbox", &r, "{\"sandboxId\":\"nope\"}"), 404);
    json_decref(r);
    assert_int_equal(callf("DeleteSnapshot", &r, "{\"name\":\"../etc\"}"), 400);
    json_decref(r);
    assert_int_equal(callf("DeleteSnapshot", &r, "{\"name\":\"none\"}"), 404);
    json_decref(r);
    assert_int_equal(callf("CreateSandbox", &r, "{\"template\":\"x\",\"teamId\":\"../a\"}"), 400);
    json_decref(r);

    char *id = create("minimal", "\"memoryMb\":256");
    assert_int_equal(callf("ResumeSandbox", &r, "{\"sandboxId\":\"%s\"}", id), 400);
    assert_string_equal(code_of(r), "failed_precondition");
    json_decref(r);
    assert_int_equal(callf("ForkSandbox", &r, "{\"sandboxId\":\"%s\",\"count\":0}", id), 400);
    json_decref(r);
    assert_int_equal(callf("ForkSandbox", &r, "{\"sandboxId\":\"%s\",\"count\":100}", id), 400);
    json_decref(r);
    assert_int_equal(callf("CreateSnapshot", &r, "{\"sandboxId\":\"%s\",\"name\":\"a/b\"}", id),
                     400);
    json_decref(r);
    assert_int_equal(callf("CreateSnapshot", &r, "{\"sandboxId\":\"%s\"}", id), 400);
    json_decref(r);
    pause_ok(id);
    assert_int_equal(callf("PauseSandbox", &r, "{\"sandboxId\":\"%s\"}", id), 400);
    assert_string_equal(code_of(r), "failed_precondition");
    json_decref(r);
    assert_int_equal(callf("Exec", &r, "{\"sandboxId\":\"%s\",\"cmd\":\"true\"}", id), 400);
    assert_string_equal(code_of(r), "failed_precondition");
    json_decref(r);
    assert_int_equal(callf("ForkSandbox", &r, "{\"sandboxId\":\"%s\"}", id), 400);
    json_decref(r);
    /* Destroying a paused sandbox removes its snapshot. */
    assert_int_equal(callf("DestroySandbox", NULL, "{\"sandboxId\":\"%s\"}", id), 200);
    assert_int_equal(callf("ResumeSandbox", &r, "{\"sandboxId\":\"%s\"}", id), 404);
    json_decref(r);
    free(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_requests, after),
        cmocka_unit_test_teardown(test_corrupt_refused, after),
        cmocka_unit_test_teardown(test_fork, after),
        cmocka_unit_test_teardown(test_warm_pool, after),
        cmocka_unit_test_teardown(test_pool_server_dies, after),
        cmocka_unit_test_teardown(test_resume_after_restart, after),
        cmocka_unit_test_teardown(test_stray_restored_reaped, after),
        cmocka_unit_test_teardown(test_auto_pause, after),
        cmocka_unit_test_teardown(test_pause_under_load, after),
        cmocka_unit_test_teardown(test_template_ten_clones, after),
        cmocka_unit_test_teardown(test_fifty_cycles, after),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    if (getenv("WRENN_TEST_FILTER")) /* e.g. "test_fork" while working on one */
        cmocka_set_test_filter(getenv("WRENN_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
