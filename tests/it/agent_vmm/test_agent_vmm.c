/* The QEMU VMM driver and qcow2 overlays against real QEMU under TCG: boot the `minimal` image in
 * a network namespace made here, wait for envd's /health from inside that namespace, check the
 * confinement of the QEMU process (uid, seccomp, cgroups, mount namespace), QMP, graceful stop,
 * a SIGKILL noticed through the pidfd, and adoption after a "restart" (the starting process
 * exits without stopping the VM). Root only; everything made here is removed by name or PID. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../../src/agent/disk/disk.h"
#include "../../../src/agent/vmm/cg.h"
#include "../../../src/agent/vmm/qmp.h"
#include "../../../src/agent/vmm/vmm.h"
#include "harness.h"
#include "log.h"

extern char **environ;

#define GUEST_IP  "169.254.0.21"
#define ENVD_PORT 49983

static struct {
    bool ready;
    char cache[512];
    char kernel[600], initrd[600], base[600];
    char tmp[256];
    char netns[32];
    uid_t uid;
    int seq;
} T;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run argv (no shell), return its exit status; output goes to the test's stderr. */
static int run(const char *const *argv)
{
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -r;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int ipn(const char *a1, const char *a2, const char *a3, const char *a4, const char *a5,
               const char *a6, const char *a7, const char *a8, const char *a9)
{
    const char *argv[] = {"ip", "-n", T.netns, a1, a2, a3, a4, a5, a6, a7, a8, a9, NULL};
    return run(argv);
}

static bool pid_exists(pid_t pid)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d", (int)pid);
    return access(p, F_OK) == 0;
}

static bool proc_status_has(pid_t pid, const char *line_prefix, const char *want)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "re");
    if (!f)
        return false;
    bool ok = false;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, line_prefix, strlen(line_prefix)) == 0) {
            line[strcspn(line, "\n")] = '\0';
            ok = strcmp(line + strlen(line_prefix), want) == 0;
            if (!ok)
                fprintf(stderr, "# %s%s (want %s)\n", line_prefix, line + strlen(line_prefix),
                        want);
            break;
        }
    }
    fclose(f);
    return ok;
}

static long read_long(const char *dir, const char *file)
{
    char p[700], buf[64];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    FILE *f = fopen(p, "re");
    if (!f)
        return -1;
    long v = -1;
    if (fgets(buf, sizeof buf, f))
        v = strtol(buf, NULL, 10);
    fclose(f);
    return v;
}

/* Print the end of a run_dir file to stderr as TAP comments (for a failed boot). */
static void dump_tail(const char *dir, const char *file)
{
    char p[700], buf[4096];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    ssize_t n = pread(fd, buf, sizeof buf - 1, end > 4000 ? end - 4000 : 0);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
        fprintf(stderr, "# %s: %s\n", file, l);
}

/* ---- envd /health from inside the namespace ------------------------------------------------ */

struct health_job {
    const char *netns;
    int timeout_ms;
    int status; /* HTTP status seen, or -errno */
};

static int health_once(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(ENVD_PORT)};
    inet_pton(AF_INET, GUEST_IP, &sa.sin_addr);
    int rc = -ETIMEDOUT;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        rc = -errno;
        goto out;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (poll(&p, 1, 300) != 1)
        goto out;
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        rc = -err;
        goto out;
    }
    const char req[] = "GET /health HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)sizeof req - 1) {
        rc = -EIO;
        goto out;
    }
    char buf[256];
    size_t got = 0;
    p.events = POLLIN;
    while (got < 12 && poll(&p, 1, 2000) == 1) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) == 1)
        rc = status;
    else
        rc = -EPROTO;
out:
    close(fd);
    return rc;
}

static void *health_thread(void *arg)
{
    struct health_job *j = arg;
    char p[128];
    snprintf(p, sizeof p, "/run/netns/%s", j->netns);
    int nsfd = open(p, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) < 0) {
        j->status = -errno;
        if (nsfd >= 0)
            close(nsfd);
        return NULL;
    }
    close(nsfd);
    int64_t deadline = now_ms() + j->timeout_ms;
    j->status = -ETIMEDOUT;
    while (now_ms() < deadline) {
        int s = health_once();
        if (s == 200 || s == 204) {
            j->status = s;
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* Wait for envd's /health inside the namespace (a thread that setns()es, so the test's own
 * network namespace is untouched). Returns the HTTP status or a negative errno. */
static int wait_health(int timeout_ms)
{
    struct health_job j = {.netns = T.netns, .timeout_ms = timeout_ms};
    pthread_t th;
    if (pthread_create(&th, NULL, health_thread, &j) != 0)
        return -EAGAIN;
    pthread_join(th, NULL);
    return j.status;
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static int ensure_image(void)
{
    const char *src = getenv("WRENN_TEST_SOURCE_ROOT");
    const char *cache = getenv("WRENN_TEST_IMAGE_CACHE");
    snprintf(T.cache, sizeof T.cache, "%s",
             cache && *cache ? cache : "/var/cache/wrenn/test-images");
    if (!src)
        return -1;
    mkdir("/var/cache/wrenn", 0755);
    mkdir(T.cache, 0755);
    char lock[600], script[600];
    snprintf(lock, sizeof lock, "%s/.lock", T.cache);
    snprintf(script, sizeof script, "%s/images/build.sh", src);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    flock(fd, LOCK_EX);
    /* Cached by the hash of its inputs: an unchanged image is not rebuilt. */
    const char *argv[] = {script, "minimal", T.cache, NULL};
    int rc = run(argv);
    flock(fd, LOCK_UN);
    close(fd);
    if (rc != 0) {
        fprintf(stderr, "# images/build.sh minimal failed: %d\n", rc);
        return -1;
    }
    snprintf(T.kernel, sizeof T.kernel, "%s/kernels/current/vmlinux", T.cache);
    snprintf(T.initrd, sizeof T.initrd, "%s/kernels/current/initramfs.cpio", T.cache);
    snprintf(T.base, sizeof T.base, "%s/images/minimal/rootfs.ext4", T.cache);
    return access(T.kernel, R_OK) == 0 && access(T.base, R_OK) == 0 ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        fprintf(stderr, "# not root: skipping\n");
        return 0;
    }
    if (ensure_image() < 0)
        return -1;
    char *t = th_tmpdir();
    snprintf(T.tmp, sizeof T.tmp, "%s", t);
    free(t);
    chmod(T.tmp, 0711);
    T.uid = (uid_t)(260000 + getpid() % 10000);
    snprintf(T.netns, sizeof T.netns, "wvt%d", (int)getpid());
    char uid[16];
    snprintf(uid, sizeof uid, "%u", (unsigned)T.uid);
    const char *add[] = {"ip", "netns", "add", T.netns, NULL};
    if (run(add) != 0)
        return -1;
    /* The tap as net_create makes it: owned by the VM's uid, fixed MACs, static neighbour. */
    if (ipn("tuntap", "add", "dev", "tap0", "mode", "tap", "user", uid, NULL) != 0 ||
        ipn("link", "set", "tap0", "address", "02:fc:00:00:00:02", NULL, NULL, NULL, NULL) != 0 ||
        ipn("addr", "add", "169.254.0.22/30", "dev", "tap0", NULL, NULL, NULL, NULL) != 0 ||
        ipn("link", "set", "tap0", "up", NULL, NULL, NULL, NULL, NULL) != 0 ||
        ipn("link", "set", "lo", "up", NULL, NULL, NULL, NULL, NULL) != 0 ||
        ipn("neigh", "replace", GUEST_IP, "lladdr", "02:fc:00:00:00:01", "dev", "tap0", "nud",
            "permanent") != 0)
        return -1;
    T.ready = true;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (T.netns[0]) {
        const char *del[] = {"ip", "netns", "del", T.netns, NULL};
        run(del);
    }
    if (T.tmp[0])
        th_rmrf(T.tmp);
    return 0;
}

typedef struct sbx {
    char dir[400];
    char overlay[500];
    char cgroup[64];
    char id[32];
    vmm_spec_t spec;
    vmm_vm_t *vm; /* while running, for the teardown after a failed assertion */
    pid_t pid;    /* a VM started by another process (adoption test) */
} sbx_t;

/* Every sandbox of the running test: a failed assertion leaves the test early, and the
 * per-test teardown then stops what it left (by handle, or by the PID it recorded). */
static sbx_t *live[4];
static size_t nlive;

static int test_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < nlive; i++) {
        sbx_t *s = live[i];
        err_t e = {0};
        if (s->vm)
            vmm_stop(s->vm, 0, &e);
        s->vm = NULL;
        if (s->pid > 0 && pid_exists(s->pid)) {
            kill(s->pid, SIGKILL);
            for (int k = 0; k < 200 && pid_exists(s->pid); k++)
                usleep(10000);
        }
        vmm_qemu_cleanup(&s->spec, &e);
        th_rmrf(s->dir);
    }
    nlive = 0;
    return 0;
}

/* A fresh run_dir with its overlay, and a spec for it (static storage, so that the teardown
 * can still reach it after a failed assertion left the test's frame). */
static sbx_t pool[4];

static sbx_t *sbx_new(void)
{
    size_t k = 0;
    for (bool used = true; k < sizeof pool / sizeof pool[0]; k++) {
        used = false;
        for (size_t j = 0; j < nlive; j++)
            used = used || live[j] == &pool[k];
        if (!used)
            break;
    }
    assert_true(k < sizeof pool / sizeof pool[0]);
    sbx_t *s = &pool[k % (sizeof pool / sizeof pool[0])];
    memset(s, 0, sizeof *s);
    live[nlive++] = s;
    T.seq++;
    char id[32], dir[400];
    snprintf(id, sizeof id, "vt%d-%d", (int)getpid(), T.seq);
    snprintf(dir, sizeof dir, "%s/%s", T.tmp, id);
    memcpy(s->id, id, sizeof id);
    memcpy(s->dir, dir, sizeof dir);
    snprintf(s->overlay, sizeof s->overlay, "%s/overlay.qcow2", dir);
    snprintf(s->cgroup, sizeof s->cgroup, "wrenn-%s", id);
    assert_int_equal(mkdir(s->dir, 0700), 0);
    err_t e = {0};
    assert_int_equal(disk_overlay_create(T.base, "raw", s->overlay, &e), 0);
    s->spec = (vmm_spec_t){
        .id = s->id,
        .run_dir = s->dir,
        .kernel = T.kernel,
        .initrd = T.initrd,
        .rootfs = s->overlay,
        .rootfs_format = "qcow2",
        .cmdline = NULL,
        .netns = T.netns,
        .tap = "tap0",
        .mac = "02:fc:00:00:00:01",
        .vcpus = 1,
        .memory_mb = 256,
        .uid = T.uid,
        .gid = T.uid,
        .cgroup = s->cgroup,
        .backing_root = T.cache,
    };
    return s;
}

static void sbx_fini(sbx_t *s)
{
    th_rmrf(s->dir);
    for (size_t i = 0; i < nlive; i++)
        if (live[i] == s)
            live[i] = live[--nlive];
}

#define SKIP_UNLESS_READY()                                                                        \
    do {                                                                                           \
        if (!T.ready)                                                                              \
            skip();                                                                                \
    } while (0)

/* ---- disks --------------------------------------------------------------------------------- */

static void test_disk_overlay(void **state)
{
    (void)state;
    SKIP_UNLESS_READY();
    char ov[400], other[400];
    snprintf(ov, sizeof ov, "%s/disk-test.qcow2", T.tmp);
    snprintf(other, sizeof other, "%s/disk-test2.qcow2", T.tmp);
    err_t e = {0};
    assert_int_equal(disk_overlay_create(T.base, "raw", ov, &e), 0);
    struct stat st;
    assert_int_equal(stat(ov, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(st.st_size <= 4 * 65536); /* no data clusters: a CoW clone, not a copy */

    /* QEMU's own checker agrees it is a consistent image with the right backing file. */
    const char *check[] = {"qemu-img", "check", "-q", ov, NULL};
    assert_int_equal(run(check), 0);
    char back[600], realbase[600];
    assert_true(disk_qcow2_backing(ov, back, sizeof back, &e) > 0);
    assert_non_null(realpath(T.base, realbase));
    assert_string_equal(back, realbase);
    uint64_t vsize = 0, bsize = 0;
    assert_int_equal(disk_virtual_size(ov, "qcow2", &vsize, &e), 0);
    assert_int_equal(disk_virtual_size(T.base, "raw", &bsize, &e), 0);
    assert_true(vsize == bsize && vsize > 0);

    /* A qcow2 over the qcow2 (a chain) is accepted by qemu-img too. */
    assert_int_equal(disk_overlay_create(ov, "qcow2", other, &e), 0);
    const char *check2[] = {"qemu-img", "check", "-q", other, NULL};
    assert_int_equal(run(check2), 0);

    /* Errors: exists, bad format, missing base; nothing half-made is left. */
    assert_int_equal(disk_overlay_create(T.base, "raw", ov, &e), -EEXIST);
    char missing[400];
    snprintf(missing, sizeof missing, "%s/disk-missing.qcow2", T.tmp);
    assert_int_equal(disk_overlay_create(T.base, "vmdk", missing, &e), -EINVAL);
    assert_int_equal(disk_overlay_create("/nonexistent/base.ext4", "raw", missing, &e), -ENOENT);
    assert_int_equal(access(missing, F_OK), -1);
    assert_int_equal(disk_qcow2_backing(T.base, back, sizeof back, &e), -EINVAL);

    assert_int_equal(disk_remove(other, &e), 0);
    assert_int_equal(disk_remove(ov, &e), 0);
    assert_int_equal(disk_remove(ov, &e), 0); /* already gone: fine */
    assert_int_equal(access(ov, F_OK), -1);
}

/* ---- QMP client against a scripted server -------------------------------------------------- */

struct fake_qmp {
    int lfd;
};

/* Read one line (a command) from fd; returns its length or -1. */
static int read_line(int fd, char *buf, size_t len)
{
    size_t n = 0;
    while (n < len - 1) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return (int)n;
}

static void say(int fd, const char *s)
{
    ssize_t w = write(fd, s, strlen(s));
    (void)w;
}

static void *fake_qmp_thread(void *arg)
{
    struct fake_qmp *f = arg;
    int c = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return NULL;
    char line[512];
    say(c, "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
    if (read_line(c, line, sizeof line) < 0 || !strstr(line, "qmp_capabilities"))
        goto out;
    /* An event before the reply. */
    say(c, "{\"event\": \"FIRST\", \"data\": {}}\r\n{\"return\": {}, \"id\": 1}\r\n");
    if (read_line(c, line, sizeof line) < 0 || !strstr(line, "query-status"))
        goto out;
    /* An event, a stray reply to some other id, blank line, then the real reply in two
     * writes split inside the JSON. */
    say(c, "{\"event\": \"STOP\"}\r\n{\"return\": {}, \"id\": 99}\r\n\r\n{\"return\": {\"sta");
    usleep(20000);
    say(c, "tus\": \"paused\", \"running\": false}, \"id\": 2}\r\n");
    if (read_line(c, line, sizeof line) < 0)
        goto out;
    say(c, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}, \"id\": 3}\r\n");
    if (read_line(c, line, sizeof line) < 0)
        goto out;
    say(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad\"}, \"id\": 4}\r\n");
    if (read_line(c, line, sizeof line) < 0)
        goto out;
    say(c, "this is not json\r\n");
    if (read_line(c, line, sizeof line) < 0)
        goto out;
    /* "quit": the connection closes before any reply. */
out:
    close(c);
    return NULL;
}

static void test_qmp_client(void **state)
{
    (void)state;
    char path[108];
    snprintf(path, sizeof path, "/tmp/wvt-qmp-%d.sock", (int)getpid());
    unlink(path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    struct fake_qmp f = {.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    assert_true(f.lfd >= 0);
    assert_int_equal(bind(f.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(f.lfd, 1), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fake_qmp_thread, &f), 0);

    qmp_t *q = NULL;
    err_t e = {0};
    assert_int_equal(qmp_connect(path, -1, 2000, &q, &e), 0);
    json_t *ret = NULL;
    assert_int_equal(qmp_execute(q, "query-status", NULL, &ret, 2000, &e), 0);
    assert_string_equal(json_string_value(json_object_get(ret, "status")), "paused");
    json_decref(ret);
    /* Both events were queued in arrival order while waiting for replies. */
    json_t *ev = NULL;
    assert_int_equal(qmp_wait_event(q, "STOP", 100, &ev, &e), 0);
    json_decref(ev);
    ev = qmp_take_event(q);
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "event")), "FIRST");
    json_decref(ev);
    assert_null(qmp_take_event(q));
    assert_int_equal(qmp_wait_event(q, "NEVER", 50, NULL, &e), -ETIMEDOUT);

    assert_int_equal(qmp_execute(q, "nope", NULL, NULL, 2000, &e), -ENOSYS);
    assert_int_equal(qmp_execute(q, "stop", json_pack("{s:b}", "x", 1), NULL, 2000, &e), -EIO);
    assert_non_null(strstr(e.msg, "bad"));
    assert_int_equal(qmp_execute(q, "cont", NULL, NULL, 2000, &e), -EPROTO);
    assert_int_equal(qmp_execute(q, "quit", NULL, NULL, 2000, &e), -ECONNRESET);
    qmp_free(q);
    pthread_join(th, NULL);
    close(f.lfd);
    unlink(path);

    /* Nobody listening, and a listener that never greets. */
    assert_int_equal(qmp_connect(path, -1, 200, &q, &e), -ENOENT);
    f.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(f.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(f.lfd, 1), 0);
    assert_int_equal(qmp_connect(path, -1, 200, &q, &e), -ETIMEDOUT);
    close(f.lfd);
    unlink(path);
}

/* ---- bad specs ----------------------------------------------------------------------------- */

static void expect_leftover_free(const sbx_t *s)
{
    char p[600];
    snprintf(p, sizeof p, "%s/qmp.sock", s->dir);
    assert_int_equal(access(p, F_OK), -1);
    snprintf(p, sizeof p, "%s/mem", s->dir);
    assert_int_equal(access(p, F_OK), -1);
    cg_t cg;
    err_t e = {0};
    assert_int_equal(cg_lookup(s->cgroup, &cg, &e), 0);
    for (int i = 0; i < cg.ndirs; i++)
        assert_int_equal(access(cg.dirs[i], F_OK), -1);
}

static void test_bad_spec(void **state)
{
    (void)state;
    SKIP_UNLESS_READY();
    sbx_t *s = sbx_new();
    vmm_vm_t *vm = (vmm_vm_t *)1;
    err_t e = {0};
    vmm_spec_t b;

    b = s->spec;
    b.vcpus = 0;
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);
    assert_null(vm);
    b = s->spec;
    b.memory_mb = 1u << 30;
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);
    b = s->spec;
    b.kernel = "relative/vmlinux";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);
    b = s->spec;
    b.rootfs = "/tmp/../etc/shadow";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);
    b = s->spec;
    b.id = "a,b";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);
    b = s->spec;
    b.mac = "02:fc:00:00:00";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);
    b = s->spec;
    b.cmdline = "quiet\ninit=/bin/sh";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EINVAL);

    /* Failures after resources were made: a missing kernel, a missing netns, a missing tap. */
    b = s->spec;
    b.kernel = "/nonexistent/vmlinux";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -ENOENT);
    expect_leftover_free(s);
    b = s->spec;
    b.netns = "wvt-no-such-ns";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -ENOENT);
    expect_leftover_free(s);
    b = s->spec;
    b.tap = "tap9";
    int rc = vmm_qemu_start(&b, &vm, &e);
    s->vm = vm;
    assert_int_equal(rc, -ENODEV);
    const char *show[] = {"ip", "-n", T.netns, "link", "show", "tap9", NULL};
    assert_int_not_equal(run(show), 0); /* and none was created */
    assert_null(vm);
    expect_leftover_free(s);
    /* A root disk outside run_dir that is not the VM's own is refused (and not chowned). */
    b = s->spec;
    b.rootfs = T.kernel;
    b.rootfs_format = "raw";
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EPERM);
    struct stat kst;
    assert_int_equal(stat(T.kernel, &kst), 0);
    assert_int_equal(kst.st_uid, 0);
    expect_leftover_free(s);
    /* A backing file outside backing_root (a header rewritten by a compromised QEMU). */
    b = s->spec;
    b.backing_root = T.tmp;
    assert_int_equal(vmm_qemu_start(&b, &vm, &e), -EPERM);
    expect_leftover_free(s);
    /* QEMU itself refusing: a qcow2 header with a cluster size QEMU does not support. */
    char junk[500];
    snprintf(junk, sizeof junk, "%s/junk.qcow2", s->dir);
    assert_int_equal(disk_overlay_create(T.base, "raw", junk, &e), 0);
    int jfd = open(junk, O_WRONLY | O_CLOEXEC);
    assert_true(jfd >= 0);
    const unsigned char bits[4] = {0, 0, 0, 8};
    assert_int_equal(pwrite(jfd, bits, 4, 20), 4);
    close(jfd);
    b = s->spec;
    b.rootfs = junk;
    err_clear(&e);
    rc = vmm_qemu_start(&b, &vm, &e);
    s->vm = vm;
    fprintf(stderr, "# qemu refusing: %d %s\n", rc, e.msg);
    assert_true(rc < 0);
    assert_non_null(strstr(e.msg, "qemu exited"));
    assert_null(vm);
    expect_leftover_free(s);
    sbx_fini(s);
}

/* ---- a full boot --------------------------------------------------------------------------- */

static void check_confinement(const sbx_t *s, pid_t pid)
{
    char want[64];
    snprintf(want, sizeof want, "\t%u\t%u\t%u\t%u", T.uid, T.uid, T.uid, T.uid);
    assert_true(proc_status_has(pid, "Uid:", want));
    assert_true(proc_status_has(pid, "Gid:", want));
    assert_true(proc_status_has(pid, "Groups:", "\t "));
    assert_true(proc_status_has(pid, "Seccomp:", "\t2"));
    assert_true(proc_status_has(pid, "NoNewPrivs:", "\t1"));
    assert_true(proc_status_has(pid, "CapEff:", "\t0000000000000000"));
    assert_true(proc_status_has(pid, "CapPrm:", "\t0000000000000000"));

    /* Its own mount namespace: QEMU's binary and the VM's files, nothing of the host. */
    char p[700], a[128], b[128];
    snprintf(p, sizeof p, "/proc/%d/ns/mnt", (int)pid);
    ssize_t n = readlink(p, a, sizeof a - 1);
    assert_true(n > 0);
    a[n] = '\0';
    n = readlink("/proc/self/ns/mnt", b, sizeof b - 1);
    assert_true(n > 0);
    b[n] = '\0';
    assert_string_not_equal(a, b);
    const char *hidden[] = {"/root",
                            "/etc/shadow",
                            "/etc",
                            "/home",
                            "/proc/1",
                            "/sys/kernel",
                            "/var/cache/wrenn/test-images/images/minimal/image.json",
                            "/dev/net/tun",
                            "/dev/mem",
                            "/run/netns",
                            "/usr/bin/ip"};
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++) {
        snprintf(p, sizeof p, "/proc/%d/root%s", (int)pid, hidden[i]);
        if (access(p, F_OK) == 0)
            fprintf(stderr, "# visible to QEMU: %s\n", hidden[i]);
        assert_int_equal(access(p, F_OK), -1);
    }
    const char *shown[] = {
        "/usr/bin/qemu-system-x86_64", T.kernel, T.initrd, T.base, s->overlay, "/dev/null",
        "/usr/share/qemu/qboot.rom"};
    for (size_t i = 0; i < sizeof shown / sizeof shown[0]; i++) {
        snprintf(p, sizeof p, "/proc/%d/root%s", (int)pid, shown[i]);
        assert_int_equal(access(p, F_OK), 0);
    }
    /* The run_dir shows only the VM's own files (no record.json, no QMP socket, no vmm.log). */
    snprintf(p, sizeof p, "%s/record.json", s->dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    const char *own_hidden[] = {"record.json", "qmp.sock", "vmm.log"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "/proc/%d/root%s/%s", (int)pid, s->dir, own_hidden[i]);
        assert_int_equal(access(p, F_OK), -1);
    }
    snprintf(p, sizeof p, "/proc/%d/root%s/console.log", (int)pid, s->dir);
    assert_int_equal(access(p, F_OK), 0);
    /* The base image is read-only in there, even for root. */
    snprintf(p, sizeof p, "/proc/%d/root%s", (int)pid, T.base);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    assert_true(fd < 0 && errno == EROFS);

    /* Every open file is one of its own (no fd of the agent leaked in). */
    char fdd[64];
    snprintf(fdd, sizeof fdd, "/proc/%d/fd", (int)pid);
    DIR *fdir = opendir(fdd);
    assert_non_null(fdir);
    struct dirent *de;
    char mem[600], con[600], log[600];
    snprintf(mem, sizeof mem, "%s/mem", s->dir);
    snprintf(con, sizeof con, "%s/console.log", s->dir);
    snprintf(log, sizeof log, "%s/vmm.log", s->dir);
    const char *allowed[] = {"/dev/null", "/net/tun", mem, con, log, s->overlay, T.base};
    while ((de = readdir(fdir))) {
        if (de->d_name[0] == '.')
            continue;
        char l[700], t[700];
        snprintf(l, sizeof l, "%s/%s", fdd, de->d_name);
        ssize_t tn = readlink(l, t, sizeof t - 1);
        if (tn <= 0)
            continue;
        t[tn] = '\0';
        if (t[0] != '/')
            continue; /* socket:, anon_inode: */
        bool ok = false;
        for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
            ok = ok || strcmp(t, allowed[i]) == 0;
        if (!ok)
            fprintf(stderr, "# unexpected fd %s -> %s\n", de->d_name, t);
        assert_true(ok);
    }
    closedir(fdir);
    /* Resource limits: bounded file size (the console log), no core dumps. */
    snprintf(p, sizeof p, "/proc/%d/limits", (int)pid);
    f = fopen(p, "re");
    assert_non_null(f);
    char line[256];
    bool fsize = false, core = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long soft, hard;
        if (sscanf(line, "Max file size %llu %llu", &soft, &hard) == 2)
            fsize = soft == hard && soft >= (256ull << 20) && soft <= (2048ull << 20);
        if (sscanf(line, "Max core file size %llu %llu", &soft, &hard) == 2)
            core = soft == 0 && hard == 0;
    }
    fclose(f);
    assert_true(fsize);
    assert_true(core);

    /* Network namespace: the sandbox's. */
    struct stat s1, s2;
    snprintf(p, sizeof p, "/proc/%d/ns/net", (int)pid);
    assert_int_equal(stat(p, &s1), 0);
    snprintf(p, sizeof p, "/run/netns/%s", T.netns);
    assert_int_equal(stat(p, &s2), 0);
    assert_true(s1.st_ino == s2.st_ino);

    /* cgroups with limits matching 1 vCPU / 256 MiB. */
    cg_t cg;
    err_t e = {0};
    assert_int_equal(cg_lookup(s->cgroup, &cg, &e), 0);
    assert_true(cg.ndirs > 0);
    assert_string_equal(cg.missing, "");
    assert_true(cg_has_pid(&cg, pid));
    for (int i = 0; i < cg.ndirs; i++) {
        const char *d = cg.dirs[i];
        long v;
        if ((v = read_long(d, "memory.limit_in_bytes")) >= 0) {
            fprintf(stderr, "# memory.limit_in_bytes=%ld\n", v);
            assert_true(v >= 256l << 20 && v <= 1024l << 20);
        }
        if ((v = read_long(d, "cpu.cfs_quota_us")) >= 0)
            assert_int_equal(v, 150000); /* one vCPU plus half a CPU for QEMU's own threads */
        if ((v = read_long(d, "pids.max")) >= 0) {
            fprintf(stderr, "# pids.max=%ld\n", v);
            assert_true(v > 8 && v <= 64);
        }
        if ((v = read_long(d, "pids.current")) >= 0)
            fprintf(stderr, "# pids.current=%ld\n", v);
        if ((v = read_long(d, "memory.max_usage_in_bytes")) >= 0)
            fprintf(stderr, "# memory.max_usage_in_bytes=%ld MiB\n", v >> 20);
    }
}

static void test_boot_health_stop(void **state)
{
    (void)state;
    SKIP_UNLESS_READY();
    sbx_t *s = sbx_new();
    vmm_vm_t *vm = NULL;
    err_t e = {0};
    int64_t t0 = now_ms();
    int rc = vmm_qemu_start(&s->spec, &vm, &e);
    if (rc < 0)
        fprintf(stderr, "# start: %s\n", e.msg);
    assert_int_equal(rc, 0);
    s->vm = vm;
    int64_t t_qmp = now_ms();
    assert_true(vmm_alive(vm));
    vmm_state_t st;
    vmm_get_state(vm, &st);
    assert_true(st.pid > 0 && st.start_time > 0);
    assert_string_equal(vmm_qemu_accel(), access("/dev/kvm", F_OK) == 0 ? vmm_qemu_accel() : "tcg");

    int h = wait_health(60000);
    int64_t t_health = now_ms();
    fprintf(stderr, "# boot: start->qmp %lld ms, start->/health %lld ms (status %d)\n",
            (long long)(t_qmp - t0), (long long)(t_health - t0), h);
    printf("# boot_to_health_ms=%lld\n", (long long)(t_health - t0));
    if (h != 200 && h != 204)
        dump_tail(s->dir, "console.log");
    assert_true(h == 200 || h == 204);

    check_confinement(s, st.pid);

    /* QMP: status, pause (envd stops answering), resume (it answers again). */
    char status[32];
    assert_int_equal(vmm_query_status(vm, status, sizeof status, &e), 0);
    assert_string_equal(status, "running");
    assert_int_equal(vmm_pause(vm, &e), 0);
    assert_int_equal(vmm_query_status(vm, status, sizeof status, &e), 0);
    assert_string_equal(status, "paused");
    assert_int_equal(wait_health(1000), -ETIMEDOUT);
    assert_int_equal(vmm_resume(vm, &e), 0);
    assert_int_equal(vmm_query_status(vm, status, sizeof status, &e), 0);
    assert_string_equal(status, "running");
    h = wait_health(10000);
    assert_true(h == 200 || h == 204);
    assert_int_equal(vmm_qmp(vm, "no-such-command", NULL, NULL, 2000, &e), -ENOSYS);
    json_t *ret = NULL;
    assert_int_equal(vmm_qmp(vm, "query-name", NULL, &ret, 2000, &e), 0);
    char name[64];
    snprintf(name, sizeof name, "wrenn-%s", s->id);
    assert_string_equal(json_string_value(json_object_get(ret, "name")), name);
    json_decref(ret);

    /* Guest RAM is the mem file in run_dir, as large as the guest's memory. */
    char p[600];
    struct stat mst;
    snprintf(p, sizeof p, "%s/mem", s->dir);
    assert_int_equal(stat(p, &mst), 0);
    assert_int_equal(mst.st_size, 256 << 20);
    assert_int_equal(mst.st_uid, T.uid);

    /* The console log got the guest's boot. */
    snprintf(p, sizeof p, "%s/console.log", s->dir);
    struct stat cst;
    assert_int_equal(stat(p, &cst), 0);
    assert_true(cst.st_size > 0);

    /* Graceful stop: QMP quit, reaped (no zombie), socket and cgroups gone; mem file kept. */
    int64_t t1 = now_ms();
    s->vm = NULL;
    assert_int_equal(vmm_stop(vm, 5000, &e), 0);
    fprintf(stderr, "# stop took %lld ms\n", (long long)(now_ms() - t1));
    assert_false(pid_exists(st.pid));
    assert_true(now_ms() - t1 < 4000);
    snprintf(p, sizeof p, "%s/qmp.sock", s->dir);
    assert_int_equal(access(p, F_OK), -1);
    snprintf(p, sizeof p, "%s/mem", s->dir);
    assert_int_equal(access(p, F_OK), 0);
    cg_t cg;
    assert_int_equal(cg_lookup(s->cgroup, &cg, &e), 0);
    for (int i = 0; i < cg.ndirs; i++)
        assert_int_equal(access(cg.dirs[i], F_OK), -1);
    assert_int_equal(vmm_stop(NULL, 0, &e), 0);
    sbx_fini(s);
}

/* ---- death noticed through the pidfd ------------------------------------------------------- */

static void test_sigkill_noticed(void **state)
{
    (void)state;
    SKIP_UNLESS_READY();
    sbx_t *s = sbx_new();
    vmm_vm_t *vm = NULL;
    err_t e = {0};
    assert_int_equal(vmm_qemu_start(&s->spec, &vm, &e), 0);
    s->vm = vm;
    vmm_state_t st;
    vmm_get_state(vm, &st);
    int pfd = vmm_pidfd(vm);
    assert_true(pfd >= 0);
    struct pollfd p = {.fd = pfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);

    /* Reaping leftover groups spares a running VM's and removes an empty one. */
    cg_t cg, empty;
    char ename[80];
    snprintf(ename, sizeof ename, "%s-x", s->cgroup);
    cg_limits_t lim = {.pids = 4};
    assert_int_equal(cg_create(ename, &lim, &empty, &e), 0);
    assert_int_equal(vmm_qemu_reap_cgroups(s->cgroup, &e), empty.ndirs);
    for (int i = 0; i < empty.ndirs; i++)
        assert_int_equal(access(empty.dirs[i], F_OK), -1);
    assert_int_equal(cg_lookup(s->cgroup, &cg, &e), 0);
    assert_true(cg_has_pid(&cg, st.pid));

    assert_int_equal(kill(st.pid, SIGKILL), 0);
    int64_t t0 = now_ms();
    assert_int_equal(poll(&p, 1, 5000), 1);
    fprintf(stderr, "# SIGKILL noticed after %lld ms\n", (long long)(now_ms() - t0));
    assert_false(vmm_alive(vm));
    /* Still a zombie until vmm_stop reaps it. */
    assert_true(pid_exists(st.pid));
    s->vm = NULL;
    assert_int_equal(vmm_stop(vm, 5000, &e), 0);
    assert_true(now_ms() - t0 < 3000);
    assert_false(pid_exists(st.pid));
    for (int i = 0; i < cg.ndirs; i++)
        assert_int_equal(access(cg.dirs[i], F_OK), -1);
    sbx_fini(s);
}

/* A VMM that does not answer (stopped with SIGSTOP): quit times out, SIGKILL after the grace
 * period, still reaped and cleaned up. */
static void test_stop_forced(void **state)
{
    (void)state;
    SKIP_UNLESS_READY();
    sbx_t *s = sbx_new();
    vmm_vm_t *vm = NULL;
    err_t e = {0};
    assert_int_equal(vmm_qemu_start(&s->spec, &vm, &e), 0);
    s->vm = vm;
    vmm_state_t st;
    vmm_get_state(vm, &st);
    assert_int_equal(kill(st.pid, SIGSTOP), 0);
    int64_t t0 = now_ms();
    s->vm = NULL;
    assert_int_equal(vmm_stop(vm, 500, &e), 0);
    int64_t took = now_ms() - t0;
    fprintf(stderr, "# forced stop took %lld ms\n", (long long)took);
    assert_true(took >= 500 && took < 5000);
    assert_false(pid_exists(st.pid));
    cg_t cg;
    assert_int_equal(cg_lookup(s->cgroup, &cg, &e), 0);
    for (int i = 0; i < cg.ndirs; i++)
        assert_int_equal(access(cg.dirs[i], F_OK), -1);
    sbx_fini(s);
}

/* ---- adoption after a restart -------------------------------------------------------------- */

static void test_adopt(void **state)
{
    (void)state;
    SKIP_UNLESS_READY();
    sbx_t *s = sbx_new();
    err_t e = {0};
    /* This VM's disk is a chain, overlay -> mid layer (qcow2, readable by the VM) -> base, as
     * snapshot layers will be: every layer must show up read-only in QEMU's root. */
    char mid[500];
    snprintf(mid, sizeof mid, "%s/mid.qcow2", s->dir);
    assert_int_equal(disk_overlay_create(T.base, "raw", mid, &e), 0);
    assert_int_equal(chmod(mid, 0644), 0);
    assert_int_equal(disk_remove(s->overlay, &e), 0);
    assert_int_equal(disk_overlay_create(mid, "qcow2", s->overlay, &e), 0);
    s->spec.backing_root = "/"; /* the layers live in two trees here */
    /* The "old agent": a process that starts the VM, reports its state and dies without
     * stopping it, so QEMU is no longer our child (as after kill -9 of the agent). */
    int pp[2];
    assert_int_equal(pipe2(pp, O_CLOEXEC), 0);
    pid_t old = fork();
    assert_true(old >= 0);
    if (old == 0) {
        vmm_vm_t *v = NULL;
        vmm_state_t vs = {0};
        if (vmm_qemu_start(&s->spec, &v, &e) == 0)
            vmm_get_state(v, &vs);
        ssize_t w = write(pp[1], &vs, sizeof vs);
        (void)w;
        _exit(0); /* no vmm_stop: the VM outlives its starter */
    }
    close(pp[1]);
    vmm_state_t st = {0};
    assert_int_equal(read(pp[0], &st, sizeof st), (ssize_t)sizeof st);
    close(pp[0]);
    int ws;
    assert_int_equal(waitpid(old, &ws, 0), old);
    s->pid = st.pid;
    assert_true(st.pid > 0);
    assert_true(pid_exists(st.pid));

    int h = wait_health(60000);
    assert_true(h == 200 || h == 204);
    char p[700];
    snprintf(p, sizeof p, "/proc/%d/root%s", (int)st.pid, mid);
    assert_int_equal(access(p, R_OK), 0);
    snprintf(p, sizeof p, "/proc/%d/root%s", (int)st.pid, T.base);
    assert_int_equal(access(p, R_OK), 0);

    /* Wrong start time (pid reuse) and a pid that is not this VM: -ESRCH, VM untouched. */
    vmm_vm_t *vm = NULL;
    vmm_state_t bad = st;
    bad.start_time++;
    assert_int_equal(vmm_qemu_adopt(&s->spec, &bad, &vm, &e), -ESRCH);
    assert_null(vm);
    bad = st;
    bad.pid = getpid();
    bad.start_time = 0;
    assert_int_equal(vmm_qemu_adopt(&s->spec, &bad, &vm, &e), -ESRCH);
    sbx_t *other = sbx_new();
    assert_int_equal(vmm_qemu_adopt(&other->spec, &st, &vm, &e), -ESRCH);
    sbx_fini(other);
    assert_true(pid_exists(st.pid));

    int rc = vmm_qemu_adopt(&s->spec, &st, &vm, &e);
    if (rc < 0)
        fprintf(stderr, "# adopt: %s\n", e.msg);
    assert_int_equal(rc, 0);
    s->vm = vm;
    assert_true(vmm_alive(vm));
    char status[32];
    assert_int_equal(vmm_query_status(vm, status, sizeof status, &e), 0);
    assert_string_equal(status, "running");
    h = wait_health(5000);
    assert_true(h == 200 || h == 204);

    /* Release and adopt again in this process (the handle, not the VM, goes away). */
    vmm_release(vm);
    s->vm = vm = NULL;
    assert_int_equal(vmm_qemu_adopt(&s->spec, &st, &vm, &e), 0);
    s->vm = vm;

    int64_t t0 = now_ms();
    s->vm = NULL;
    assert_int_equal(vmm_stop(vm, 5000, &e), 0);
    /* Not our child: init reaps it; it must be gone (or a zombie of init's) soon. */
    bool gone = false;
    for (int i = 0; i < 300 && !gone; i++) {
        char buf[512];
        snprintf(p, sizeof p, "/proc/%d/stat", (int)st.pid);
        FILE *f = fopen(p, "re");
        if (!f) {
            gone = true;
            break;
        }
        if (fgets(buf, sizeof buf, f)) {
            char *c = strrchr(buf, ')');
            gone = c && c[2] == 'Z';
        }
        fclose(f);
        if (!gone)
            usleep(10000);
    }
    assert_true(gone);
    fprintf(stderr, "# adopted VM stopped in %lld ms\n", (long long)(now_ms() - t0));
    /* A dead VM cannot be adopted. */
    assert_int_equal(vmm_qemu_adopt(&s->spec, &st, &vm, &e), -ESRCH);
    cg_t cg;
    assert_int_equal(cg_lookup(s->cgroup, &cg, &e), 0);
    for (int i = 0; i < cg.ndirs; i++)
        assert_int_equal(access(cg.dirs[i], F_OK), -1);
    sbx_fini(s);
}

int main(void)
{
    th_init();
    log_init("test_agent_vmm", getenv("WRENN_TEST_VERBOSE") ? LOG_DEBUG : LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disk_overlay),
        cmocka_unit_test(test_qmp_client),
        cmocka_unit_test_teardown(test_bad_spec, test_teardown),
        cmocka_unit_test_teardown(test_boot_health_stop, test_teardown),
        cmocka_unit_test_teardown(test_sigkill_noticed, test_teardown),
        cmocka_unit_test_teardown(test_stop_forced, test_teardown),
        cmocka_unit_test_teardown(test_adopt, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
