/* bench/snapshot: pause, resume and templates through wrenn-agent, beside raw QEMU restores.
 *
 *   snapshot_bench WRENN_AGENT_BIN
 *
 * Through the real agent (minimal image, TCG):
 *  - pause p50: the first (full) pause of a cold-booted VM and later (diff) pauses, 256 MiB;
 *    the full pause of a 1 GiB guest with 512 MiB touched; a diff pause after rewriting 512 MiB;
 *  - resume -> first exec output p50 at 256 MiB and at 1 GiB (ratio, target <= 1.5);
 *  - disk bytes written per pause generation (the new layer's allocated bytes);
 *  - create-from-template -> first exec output p50/p95 (WRENN_BENCH_RUNS, default 10), beside a
 *    raw QEMU restore of the same template (-incoming, the template's layer file mapped
 *    share=off, state from the template) to envd's /health, same runs (target p50 <= 150 ms and
 *    <= 1.25x raw); the agent's warm pool (pool.c) serves most of them: WRENN_AGENT_POOL_SIZE=0
 *    in the environment runs the agent without it (the row says how many creates it served);
 *  - 10 concurrent creates from one template (wall time, p50 of each);
 *  - host memory for 10 template clones (PSS of their QEMU and memfs processes, and the growth of
 *    the host's memory in use, page cache included) beside 10 raw
 *    restores of the same template.
 * Needs root; builds the minimal image as bench/agent does (ba_ensure_image).
 */
#include "ba.h"
#include "buf.h"
#include "connect.h"
#include "disk/disk.h"
#include "httpc.h"
#include "net/net.h"
#include "vmm/qmp.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define RAW_SLOT 16000
#define NCLONES  10

/* ---- the agent ------------------------------------------------------------------------------ */

static bool callf(const char *method, json_t **out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool callf(const char *method, json_t **out, const char *fmt, ...)
{
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    long st;
    json_t *j = ba_call(method, body, &st);
    if (st != 200) {
        char *d = j ? json_dumps(j, 0) : NULL;
        fprintf(stderr, "snapshot_bench: %s: %ld %s\n", method, st, d ? d : "");
        free(d);
    }
    if (out)
        *out = j;
    else
        json_decref(j);
    return st == 200;
}

static char *create(const char *tmpl, unsigned mb)
{
    json_t *j = NULL;
    char *id = NULL;
    if (callf("CreateSandbox", &j, "{\"template\":\"%s\",\"teamId\":\"bench\",\"memoryMb\":%u}",
              tmpl, mb))
        id = xstrdup(json_string_value(json_object_get(j, "sandboxId")));
    json_decref(j);
    return id;
}

static bool sh(const char *id, const char *script)
{
    json_t *j = NULL;
    json_t *body = json_pack("{s:s, s:s, s:[s,s], s:i}", "sandboxId", id, "cmd", "/bin/sh", "args",
                             "-c", script, "timeoutSec", 600);
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    long st;
    j = ba_call("Exec", s, &st);
    free(s);
    bool ok = st == 200 && json_integer_value(json_object_get(j, "exitCode")) == 0;
    if (!ok) {
        char *d = j ? json_dumps(j, 0) : NULL;
        fprintf(stderr, "snapshot_bench: exec '%s': %ld %s\n", script, st, d ? d : "");
        free(d);
    }
    json_decref(j);
    return ok;
}

/* ms of PauseSandbox, or -1. */
static double pause_ms(const char *id)
{
    double t0 = ba_now_ms();
    return callf("PauseSandbox", NULL, "{\"sandboxId\":\"%s\"}", id) ? ba_now_ms() - t0 : -1;
}

/* ms of ResumeSandbox + first exec output, or -1. */
static double resume_exec_ms(const char *id)
{
    double t0 = ba_now_ms();
    if (!callf("ResumeSandbox", NULL, "{\"sandboxId\":\"%s\"}", id) || !ba_exec_hi(id))
        return -1;
    return ba_now_ms() - t0;
}

/* Allocated bytes of the newest layer in the sandbox's snapshot. */
static long long newest_layer_bytes(const char *id)
{
    char dir[1400], p[1700];
    snprintf(dir, sizeof dir, "%s/sandboxes/%s/snap", ba_agent.root, id);
    DIR *d = opendir(dir);
    long long bytes = -1;
    struct timespec best = {0, 0};
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strstr(de->d_name, ".layer"))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(p, &st) == 0 &&
            (st.st_mtim.tv_sec > best.tv_sec ||
             (st.st_mtim.tv_sec == best.tv_sec && st.st_mtim.tv_nsec > best.tv_nsec))) {
            best = st.st_mtim;
            bytes = (long long)st.st_blocks * 512;
        }
    }
    if (d)
        closedir(d);
    return bytes;
}

/* Proportional set size of pid in KiB (smaps_rollup). */
static long pss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    long k = ba_proc_kib(path, "Pss:");
    return k > 0 ? k : 0;
}

/* Host memory in use, page cache included (MemTotal - MemFree), in KiB: what a set of VMs
 * costs the host, also in page cache no process maps (memfs's, a RAM file's). */
static long used_kib(void)
{
    return ba_proc_kib("/proc/meminfo", "MemTotal:") - ba_proc_kib("/proc/meminfo", "MemFree:");
}

/* How many creates the agent served from its warm pool so far (its log's sandbox.created lines
 * that name a pooled sandbox). */
static int pool_hits(void)
{
    char log[700];
    const char *keep = getenv("WRENN_BENCH_AGENT_LOG");
    if (keep && *keep)
        snprintf(log, sizeof log, "%s", keep);
    else
        snprintf(log, sizeof log, "%s/agent.log", ba_agent.scratch);
    FILE *f = fopen(log, "re");
    char line[2048];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "msg=sandbox.created") && strstr(line, " pool=p-"))
            n++;
    if (f)
        fclose(f);
    return n;
}

/* PSS of the agent's pooled VMs (QEMU named wrenn-p-...), in KiB: not clones, but made while
 * the clones' memory is measured. */
static long pooled_pss_kib(void)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    long k = 0;
    while (d && (de = readdir(d))) {
        char p[300], cl[4096];
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(p, sizeof p, "/proc/%s/cmdline", de->d_name);
        FILE *f = fopen(p, "re");
        size_t n = f ? fread(cl, 1, sizeof cl - 1, f) : 0;
        if (f)
            fclose(f);
        cl[n] = '\0';
        for (size_t i = 0; i + 1 < n; i++)
            if (cl[i] == '\0' && strncmp(cl + i + 1, "wrenn-p-", 8) == 0) {
                k += pss_kib((pid_t)atoi(de->d_name));
                break;
            }
    }
    if (d)
        closedir(d);
    return k;
}

/* PSS of a sandbox's QEMU and memfs processes (from its record). */
static long sandbox_pss_kib(const char *id)
{
    char p[1400];
    snprintf(p, sizeof p, "%s/sandboxes/%s/record.json", ba_agent.root, id);
    json_t *j = json_load_file(p, 0, NULL);
    long k = 0;
    pid_t pid = (pid_t)json_integer_value(json_object_get(j, "pid"));
    pid_t mp = (pid_t)json_integer_value(json_object_get(j, "memfsPid"));
    if (pid > 0)
        k += pss_kib(pid);
    if (mp > 0)
        k += pss_kib(mp);
    json_decref(j);
    return k;
}

/* ---- raw QEMU restore ----------------------------------------------------------------------- */

static char ttoken[128]; /* the template guest's access token (template.json) */

/* The first exec straight through the guest's envd (process.Process/Start), as the agent's Exec
 * does it, without the agent: true when "hi" came back. */
static bool raw_exec_hi(const char *host_ip)
{
    char url[128], tok[200];
    snprintf(url, sizeof url, "http://%s:%d/process.Process/Start", host_ip, NET_ENVD_PORT);
    snprintf(tok, sizeof tok, "X-Access-Token: %s", ttoken);
    const char *h[] = {"Content-Type: application/connect+json", "Connect-Protocol-Version: 1", tok,
                       NULL};
    const char *json = "{\"process\":{\"cmd\":\"/bin/echo\",\"args\":[\"hi\"]},\"stdin\":false}";
    buf_t body;
    buf_init(&body);
    connect_envelope_add(&body, 0, json, strlen(json));
    httpc_t *c = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    httpc_req_t q = {.method = "POST",
                     .url = url,
                     .headers = h,
                     .body = body.data,
                     .body_len = body.len,
                     .timeout_ms = 60000};
    bool ok = httpc_do(c, &q, &r, NULL) == 0 && r.status == 200 && r.body.data &&
              memmem(r.body.data, r.body.len, "aGkK", 4) != NULL;
    httpc_resp_fini(&r);
    httpc_free(c);
    buf_fini(&body);
    return ok;
}

typedef struct raw_vm {
    int slot;
    pid_t pid;
    net_slot_t ns;
    char dir[400];
    double ms;      /* launch -> /health */
    double exec_ms; /* launch -> first exec output through envd */
} raw_vm_t;

static char tdir[600];      /* the template's directory */
static char tlayer[900];    /* its (single) layer file */
static char tstate[900];    /* its device state */
static unsigned tmem = 256; /* its memory */

static int find_template_files(void)
{
    snprintf(tdir, sizeof tdir, "%s/templates/bench/tpl", ba_agent.root);
    DIR *d = opendir(tdir);
    if (!d)
        return -1;
    struct dirent *de;
    int layers = 0;
    while ((de = readdir(d))) {
        if (strstr(de->d_name, ".layer")) {
            snprintf(tlayer, sizeof tlayer, "%s/%s", tdir, de->d_name);
            layers++;
        }
        if (strstr(de->d_name, ".state"))
            snprintf(tstate, sizeof tstate, "%s/%s", tdir, de->d_name);
    }
    closedir(d);
    char meta[700];
    snprintf(meta, sizeof meta, "%s/template.json", tdir);
    json_t *j = json_load_file(meta, 0, NULL);
    snprintf(ttoken, sizeof ttoken, "%s",
             j && json_string_value(json_object_get(j, "accessToken"))
                 ? json_string_value(json_object_get(j, "accessToken"))
                 : "");
    json_decref(j);
    return layers == 1 && tstate[0] ? 0 : -1;
}

/* Start a raw restore of the template into slot (no wait). */
static int raw_start(raw_vm_t *v, int slot, double *t_launch)
{
    err_t e = {0};
    memset(v, 0, sizeof *v);
    v->slot = slot;
    v->pid = -1;
    v->ms = -1;
    if (net_create(slot, &v->ns, &e) < 0) {
        fprintf(stderr, "snapshot_bench: net_create: %s\n", e.msg);
        return -1;
    }
    snprintf(v->dir, sizeof v->dir, "%s/raw-%d", ba_agent.scratch, slot);
    mkdir(v->dir, 0700);
    char base[700], overlay[500], kernel[512], initrd[512], con[500], append[1024], qmp[500];
    snprintf(base, sizeof base, "%s/rootfs.ext4", tdir);
    snprintf(overlay, sizeof overlay, "%s/disk.qcow2", v->dir);
    snprintf(kernel, sizeof kernel, "%s/kernels/current/vmlinux", ba_cache());
    snprintf(initrd, sizeof initrd, "%s/kernels/current/initramfs.cpio", ba_cache());
    snprintf(con, sizeof con, "file,id=console,path=%s/console.log", v->dir);
    snprintf(qmp, sizeof qmp, "unix:%s/qmp.sock,server=on,wait=off", v->dir);
    if (disk_overlay_create(base, "raw", overlay, &e) < 0) {
        fprintf(stderr, "snapshot_bench: overlay: %s\n", e.msg);
        return -1;
    }
    unsigned k = ba_tsc_khz();
    snprintf(append, sizeof append, "console=ttyS0 root=/dev/vda rw tsc_early_khz=%u lpj=%u", k,
             k * 4);
    char drive[700], netdev[96], memobj[1200], msize[32];
    snprintf(drive, sizeof drive, "id=root,file=%s,format=qcow2,if=none,cache=unsafe", overlay);
    snprintf(netdev, sizeof netdev, "tap,id=net0,ifname=%s,script=no,downscript=no,vnet_hdr=on",
             v->ns.tap);
    snprintf(memobj, sizeof memobj,
             "memory-backend-file,id=mem,size=%uM,mem-path=%s,share=off,align=2M", tmem, tlayer);
    snprintf(msize, sizeof msize, "%uM", tmem);
    char *const argv[] = {"/usr/bin/qemu-system-x86_64",
                          "-nodefaults",
                          "-no-user-config",
                          "-display",
                          "none",
                          "-no-reboot",
                          "-machine",
                          "microvm,acpi=on,memory-backend=mem",
                          "-accel",
                          "tcg,tb-size=256",
                          "-cpu",
                          "max",
                          "-smp",
                          "1",
                          "-m",
                          msize,
                          "-object",
                          memobj,
                          "-object",
                          "main-loop,id=main-loop,thread-pool-max=8",
                          "-kernel",
                          kernel,
                          "-initrd",
                          initrd,
                          "-append",
                          append,
                          "-chardev",
                          con,
                          "-serial",
                          "chardev:console",
                          "-drive",
                          drive,
                          "-device",
                          "virtio-blk-device,drive=root",
                          "-netdev",
                          netdev,
                          "-device",
                          "virtio-net-device,netdev=net0,mac=" NET_GUEST_MAC,
                          "-incoming",
                          "defer",
                          "-qmp",
                          qmp,
                          NULL};
    char nspath[128];
    snprintf(nspath, sizeof nspath, "/run/netns/%s", v->ns.netns);
    *t_launch = ba_now_ms();
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(nspath, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
            _exit(127);
        int dn = open("/dev/null", O_RDWR);
        dup2(dn, 0);
        dup2(dn, 1);
        dup2(dn, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    v->pid = pid;
    return pid > 0 ? 0 : -1;
}

/* Feed the template's state to a raw VM and let it run. */
static int raw_restore(raw_vm_t *v)
{
    char sock[500];
    snprintf(sock, sizeof sock, "%s/qmp.sock", v->dir);
    qmp_t *q = NULL;
    err_t e = {0};
    int rc = -1;
    for (int i = 0; i < 500 && qmp_connect(sock, -1, 2000, &q, &e) < 0; i++)
        usleep(5000);
    if (!q)
        return -1;
    int fd = open(tstate, O_RDONLY | O_CLOEXEC);
    json_t *caps =
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1);
    if (fd >= 0 && qmp_execute(q, "migrate-set-capabilities", caps, NULL, 5000, &e) == 0 &&
        qmp_execute_fd(q, "getfd", json_pack("{s:s}", "fdname", "st"), fd, NULL, 5000, &e) == 0 &&
        qmp_execute(q, "migrate-incoming", json_pack("{s:s}", "uri", "fd:st"), NULL, 5000, &e) ==
            0) {
        for (int i = 0; i < 5000; i++) {
            json_t *r = NULL;
            if (qmp_execute(q, "query-migrate", NULL, &r, 5000, &e) < 0)
                break;
            const char *st = json_string_value(json_object_get(r, "status"));
            bool done = st && strcmp(st, "completed") == 0;
            json_decref(r);
            if (done) {
                for (int k = 0; k < 1000; k++) {
                    r = NULL;
                    qmp_execute(q, "query-status", NULL, &r, 5000, &e);
                    const char *s2 = json_string_value(json_object_get(r, "status"));
                    bool in = s2 && strcmp(s2, "inmigrate") == 0;
                    json_decref(r);
                    if (!in)
                        break;
                    usleep(1000);
                }
                rc = qmp_execute(q, "cont", NULL, NULL, 5000, &e);
                break;
            }
            usleep(1000);
        }
    }
    if (rc < 0)
        fprintf(stderr, "snapshot_bench: raw restore: %s\n", e.msg);
    if (fd >= 0)
        close(fd);
    qmp_free(q);
    return rc;
}

static void raw_wait_health(raw_vm_t *v, double t0)
{
    bool net_up = false;
    while (ba_now_ms() - t0 < 60000) {
        if (ba_health(v->ns.host_ip, &net_up)) {
            v->ms = ba_now_ms() - t0;
            if (raw_exec_hi(v->ns.host_ip))
                v->exec_ms = ba_now_ms() - t0;
            return;
        }
        usleep(2000);
    }
}

static void raw_stop(raw_vm_t *v)
{
    if (v->pid > 0) {
        kill(v->pid, SIGKILL);
        waitpid(v->pid, NULL, 0);
    }
    err_t e = {0};
    net_destroy(v->slot, &e);
    char *argv[] = {"/bin/rm", "-rf", v->dir, NULL};
    pid_t p;
    if (v->dir[0] && posix_spawn(&p, argv[0], NULL, NULL, argv, environ) == 0)
        waitpid(p, NULL, 0);
}

static double last_raw_exec = -1;

/* One raw restore into a fresh slot: QEMU launch -> /health (the slot's network is made
 * before the clock starts; the agent's figure includes its own network setup). */
static double raw_once(void)
{
    raw_vm_t v;
    double t0 = 0, t_start = 0, t_rest = 0;
    v.ms = -1;
    if (raw_start(&v, RAW_SLOT, &t0) == 0) {
        t_start = ba_now_ms();
        if (raw_restore(&v) == 0) {
            t_rest = ba_now_ms();
            raw_wait_health(&v, t0);
            if (getenv("WRENN_BENCH_VERBOSE"))
                fprintf(stderr, "raw: launch+qmp %.0f ms, restore %.0f ms, health %.0f ms\n",
                        t_start - t0, t_rest - t_start, t0 + v.ms - t_rest);
        }
    }
    double ms = v.ms;
    last_raw_exec = v.exec_ms > 0 ? v.exec_ms : -1;
    raw_stop(&v);
    return ms;
}

/* ---- concurrent clones ---------------------------------------------------------------------- */

struct job {
    char id[80];
    double ms;
};

static void *clone_job(void *ud)
{
    struct job *j = ud;
    double t0 = ba_now_ms();
    char *id = create("tpl", 256);
    if (id && ba_exec_hi(id))
        j->ms = ba_now_ms() - t0;
    else
        j->ms = -1;
    snprintf(j->id, sizeof j->id, "%s", id ? id : "");
    free(id);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: snapshot_bench WRENN_AGENT_BIN\n");
        return 2;
    }
    int runs = getenv("WRENN_BENCH_RUNS") ? atoi(getenv("WRENN_BENCH_RUNS")) : 10;
    if (runs < 2)
        runs = 2;
    if (geteuid() != 0) {
        printf("snapshot_bench: needs root; skipped\n");
        return 0;
    }
    if (ba_ensure_image(argv[1], "minimal") < 0) {
        fprintf(stderr, "snapshot_bench: cannot build the minimal image in %s\n", ba_cache());
        return 1;
    }
    if (ba_start_agent(argv[1], "snapshot-bench") < 0) {
        fprintf(stderr, "snapshot_bench: the agent did not start\n");
        ba_stop_agent();
        return 1;
    }
    /* WRENN_BENCH_ONLY=templates: only the create-from-template rows. */
    bool only_templates =
        getenv("WRENN_BENCH_ONLY") && strcmp(getenv("WRENN_BENCH_ONLY"), "templates") == 0;
    int rc = 1;
    double full256[8], diff256[32], res256[32], res1g[16], full1g[4], diff1g[4];
    int nfull256 = 0, ndiff256 = 0, nres256 = 0, nres1g = 0, nfull1g = 0, ndiff1g = 0;
    long long layer_bytes[32];
    int nlayer = 0;
    double ours[64], raw[64], conc[NCLONES];
    int nours = 0, nraw = 0, nconc = 0, nrawx = 0;
    double rawx[64];
    double conc_wall = -1, rconc[NCLONES], rconc_wall = -1;
    int nrconc = 0;
    long ours_pss = 0, raw_pss = 0, ours_used = 0, raw_used = 0;
    int hits = 0; /* creates from the template the warm pool served */
    raw_vm_t rv[NCLONES];
    int nrv = 0;

    /* The template the create benchmarks start from: a fresh 256 MiB guest, quiescent, so its
     * memory is one layer that a raw QEMU can map as it is. */
    char *id = create("minimal", 256);
    if (!id || !sh(id, "sync") ||
        !callf("CreateSnapshot", NULL,
               "{\"sandboxId\":\"%s\",\"name\":\"tpl\",\"teamId\":\"bench\"}", id))
        goto out;
    ba_destroy(id);
    free(id);

    /* 256 MiB: pause/resume cycles; each cycle dirties 4 MiB in the guest. */
    id = only_templates ? NULL : create("minimal", 256);
    if (!id && !only_templates)
        goto out;
    if (id)
        sh(id, "mkdir -p /mnt/r && mount -t tmpfs -o size=64m r /mnt/r");
    for (int i = 0; id && i < runs + 1; i++) {
        sh(id, "head -c 4194304 /dev/urandom > /mnt/r/x");
        double p = pause_ms(id);
        if (p < 0)
            goto out;
        if (i == 0)
            full256[nfull256++] = p;
        else
            diff256[ndiff256++] = p;
        if (i > 0)
            layer_bytes[nlayer++] = newest_layer_bytes(id);
        double r = resume_exec_ms(id);
        if (r < 0)
            goto out;
        res256[nres256++] = r;
    }
    if (id)
        ba_destroy(id);
    free(id);
    id = NULL;

    /* 1 GiB with 512 MiB touched: the full pause of a cold VM (3 VMs), then resume cycles and
     * a diff pause after rewriting 512 MiB. */
    for (int v = 0; v < 3 && !only_templates; v++) {
        id = create("minimal", 1024);
        if (!id)
            goto out;
        if (!sh(id, "mkdir -p /mnt/r && mount -t tmpfs -o size=600m r /mnt/r && "
                    "dd if=/dev/urandom of=/mnt/r/big bs=1M count=512 2>/dev/null"))
            goto out;
        double p = pause_ms(id);
        if (p < 0)
            goto out;
        full1g[nfull1g++] = p;
        int cycles = v == 0 ? runs : 1;
        for (int i = 0; i < cycles; i++) {
            double r = resume_exec_ms(id);
            if (r < 0)
                goto out;
            res1g[nres1g++] = r;
            if (i == 0 && v < 2) {
                sh(id, "dd if=/dev/urandom of=/mnt/r/big bs=1M count=512 conv=notrunc 2>/dev/null");
                double d = pause_ms(id);
                if (d < 0)
                    goto out;
                diff1g[ndiff1g++] = d;
                continue;
            }
            if (i + 1 < cycles && pause_ms(id) < 0)
                goto out;
        }
        ba_destroy(id);
        free(id);
        id = NULL;
    }

    /* create-from-template -> first exec, beside raw restores of the same template. */
    if (find_template_files() < 0) {
        fprintf(stderr, "snapshot_bench: template files not found\n");
        goto out;
    }
    int hits0 = 0;
    for (int i = 0; i < runs + 1; i++) {
        if (i == 1)
            hits0 = pool_hits();
        double t0 = ba_now_ms();
        char *c = create("tpl", 256);
        if (!c || !ba_exec_hi(c)) {
            free(c);
            goto out;
        }
        double ms = ba_now_ms() - t0;
        ba_destroy(c);
        free(c);
        /* Let the agent's warm pool refill (~0.7 s) before the baseline runs, and before the
         * next create: neither then competes with it for the CPUs. */
        usleep(1200 * 1000);
        double r = raw_once();
        usleep(300 * 1000);
        if (r < 0)
            goto out;
        if (i == 0)
            continue; /* warm-up */
        ours[nours++] = ms;
        raw[nraw++] = r;
        if (last_raw_exec > 0)
            rawx[nrawx++] = last_raw_exec;
    }

    hits = pool_hits() - hits0;
    /* 10 at once. */
    {
        struct job jobs[NCLONES];
        pthread_t th[NCLONES];
        memset(jobs, 0, sizeof jobs);
        sleep(1);
        long used0 = used_kib();
        double t0 = ba_now_ms();
        for (int i = 0; i < NCLONES; i++)
            pthread_create(&th[i], NULL, clone_job, &jobs[i]);
        for (int i = 0; i < NCLONES; i++)
            pthread_join(th[i], NULL);
        conc_wall = ba_now_ms() - t0;
        for (int i = 0; i < NCLONES; i++)
            if (jobs[i].ms > 0)
                conc[nconc++] = jobs[i].ms;
        sleep(2);
        ours_used = used_kib() - used0 - pooled_pss_kib();
        for (int i = 0; i < NCLONES; i++)
            if (jobs[i].id[0])
                ours_pss += sandbox_pss_kib(jobs[i].id);
        for (int i = 0; i < NCLONES; i++)
            if (jobs[i].id[0])
                ba_destroy(jobs[i].id);
    }
    /* 10 raw restores of the same template at once (networks made first, outside the clock):
     * all QEMUs launched, each fed its state, then each waited for. */
    sleep(1);
    long raw_used0 = used_kib();
    {
        double t0s[NCLONES], tw = 0;
        for (int i = 0; i < NCLONES; i++) {
            nrv = i + 1;
            if (raw_start(&rv[i], RAW_SLOT + 1 + i, &t0s[i]) < 0)
                goto out;
            if (i == 0)
                tw = t0s[0];
        }
        for (int i = 0; i < NCLONES; i++)
            if (raw_restore(&rv[i]) < 0)
                goto out;
        for (int i = 0; i < NCLONES; i++) {
            raw_wait_health(&rv[i], t0s[i]);
            if (rv[i].ms > 0)
                rconc[nrconc++] = rv[i].ms;
        }
        rconc_wall = ba_now_ms() - tw;
    }
    sleep(2);
    raw_used = used_kib() - raw_used0;
    for (int i = 0; i < nrv; i++)
        raw_pss += pss_kib(rv[i].pid);
    rc = 0;

out:
    for (int i = 0; i < nrv; i++)
        raw_stop(&rv[i]);
    if (id)
        ba_destroy(id);
    free(id);
    callf("DeleteSnapshot", NULL, "{\"name\":\"tpl\",\"teamId\":\"bench\"}");
    ba_stop_agent();
    double lb[32];
    for (int i = 0; i < nlayer; i++)
        lb[i] = (double)layer_bytes[i] / 1024.0;
    double r256 = ba_pct(res256, nres256, 0.5), r1g = ba_pct(res1g, nres1g, 0.5);
    double o50 = ba_pct(ours, nours, 0.5), w50 = ba_pct(raw, nraw, 0.5);
    double o95 = ba_pct(ours, nours, 0.95), w95 = ba_pct(raw, nraw, 0.95);
    printf("\nbench/snapshot (TCG, minimal image, %d runs)\n", runs);
    printf("| measure | ours | baseline | ratio | target |\n|---|---|---|---|---|\n");
    printf("| pause 256 MiB, first (full) p50 | %.0f ms | | | |\n", ba_pct(full256, nfull256, 0.5));
    printf("| pause 256 MiB, later (diff, 4 MiB dirtied) p50 | %.0f ms | | | |\n",
           ba_pct(diff256, ndiff256, 0.5));
    printf("| pause 1 GiB, 512 MiB touched, full p50 | %.0f ms | | | <= 300 ms |\n",
           ba_pct(full1g, nfull1g, 0.5));
    printf("| pause 1 GiB, 512 MiB rewritten, diff p50 | %.0f ms | | | |\n",
           ba_pct(diff1g, ndiff1g, 0.5));
    printf("| disk per pause generation (4 MiB dirtied) p50 | %.0f KiB | | | |\n",
           ba_pct(lb, nlayer, 0.5));
    printf("| resume -> first exec, 256 MiB p50 | %.0f ms | | | |\n", r256);
    printf("| resume -> first exec, 1 GiB p50 | %.0f ms | 256 MiB: %.0f ms | %.2f | <= 1.5 |\n",
           r1g, r256, r256 > 0 ? r1g / r256 : -1);
    const char *ps = getenv("WRENN_AGENT_POOL_SIZE");
    printf("| create from template -> first exec p50 (warm pool %s: %d of %d creates from it) | "
           "%.0f ms | raw restore -> /health %.0f ms | %.2f | <= 150 ms, <= 1.25 |\n",
           ps && *ps ? ps : "2 (default)", hits, nours, o50, w50, w50 > 0 ? o50 / w50 : -1);
    printf("| create from template -> first exec p95 | %.0f ms | raw %.0f ms | %.2f | |\n", o95,
           w95, w95 > 0 ? o95 / w95 : -1);
    double x50 = ba_pct(rawx, nrawx, 0.5), x95 = ba_pct(rawx, nrawx, 0.95);
    printf(
        "| same, like for like: raw restore -> first exec through envd itself, p50 / p95 | %.0f / "
        "%.0f ms | %.0f / %.0f ms | %.2f / %.2f | |\n",
        o50, o95, x50, x95, x50 > 0 ? o50 / x50 : -1, x95 > 0 ? o95 / x95 : -1);
    double c50 = ba_pct(conc, nconc, 0.5), rc50 = ba_pct(rconc, nrconc, 0.5);
    printf("| 10 concurrent creates: wall / each p50 | %.0f ms / %.0f ms | raw (launches not "
           "quite at once) %.0f ms / %.0f ms | %.2f | |\n",
           conc_wall, c50, rconc_wall, rc50, rc50 > 0 ? c50 / rc50 : -1);
    printf("| host memory (PSS) of 10 template clones | %.1f MiB | 10 raw restores %.1f MiB | "
           "%.2f | |\n",
           ours_pss / 1024.0, raw_pss / 1024.0, raw_pss > 0 ? (double)ours_pss / raw_pss : -1);
    printf("| host memory in use (page cache included) for 10 template clones | %.1f MiB | 10 raw "
           "restores %.1f MiB | %.2f | |\n",
           ours_used / 1024.0, raw_used / 1024.0, raw_used > 0 ? (double)ours_used / raw_used : -1);
    if (rc != 0)
        printf("(incomplete: a step failed, see above)\n");
    return rc;
}
