/* bench/agent: what a sandbox costs through wrenn-agent, beside a raw QEMU boot.
 *
 *   agent_bench WRENN_AGENT_BIN
 *
 * 1. cold create → first exec output through the real agent (CreateSandbox + Exec "echo hi"),
 *    p50/p95 over WRENN_BENCH_RUNS runs (default 10) after one warm-up;
 * 2. in the same run, a raw qemu-system-x86_64 boot of the same kernel, initramfs and image (a
 *    fresh qcow2 overlay, the same network namespace layout made by the agent's net module) to
 *    envd's /health, same number of runs, interleaved in alternating order; the ratio agent/raw
 *    of the p50s and p95s (target <= 1.15), and its median over the runs' pairs;
 * 3. the agent's RSS with 0 and with WRENN_BENCH_RSS_N (default 4) sandboxes: per-sandbox cost
 *    excluding QEMU (target <= 1 MiB).
 * Needs root. The minimal image is built (cached by its inputs) into WRENN_BENCH_IMAGE_CACHE
 * (default /var/cache/wrenn/bench-images) with the wrenn-envd of the agent's own build, never
 * the sanitizer build a test run leaves in the test cache. Prints a table; exits 0 unless
 * something failed outright.
 */
#include "ba.h"
#include "buf.h"
#include "disk/disk.h"
#include "httpc.h"
#include "net/net.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RAW_SLOT 16000

extern char **environ;

/* ---- the agent ------------------------------------------------------------------------------ */

static char *create(void)
{
    long st;
    json_t *j =
        ba_call("CreateSandbox", "{\"template\":\"minimal\",\"vcpus\":1,\"memoryMb\":256}", &st);
    char *id = st == 200 ? xstrdup(json_string_value(json_object_get(j, "sandboxId"))) : NULL;
    if (!id) {
        char *d = j ? json_dumps(j, 0) : NULL;
        fprintf(stderr, "agent_bench: CreateSandbox: %ld %s\n", st, d ? d : "");
        free(d);
    }
    json_decref(j);
    return id;
}

static long rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    return ba_proc_kib(path, "VmRSS:");
}

/* ---- raw QEMU ---------------------------------------------------------------------------- */

/* One raw boot: QEMU started by hand in the slot's namespace, to the guest's /health (ms). */
static double raw_boot(const char *dir)
{
    err_t e = {0};
    net_slot_t ns;
    if (net_create(RAW_SLOT, &ns, &e) < 0) {
        fprintf(stderr, "agent_bench: net_create: %s\n", e.msg);
        return -1;
    }
    char base[512], overlay[512], kernel[512], initrd[512], con[512], append[1024];
    snprintf(base, sizeof base, "%s/images/minimal/rootfs.ext4", ba_cache());
    snprintf(overlay, sizeof overlay, "%s/raw.qcow2", dir);
    snprintf(kernel, sizeof kernel, "%s/kernels/current/vmlinux", ba_cache());
    snprintf(initrd, sizeof initrd, "%s/kernels/current/initramfs.cpio", ba_cache());
    snprintf(con, sizeof con, "%s/raw-console.log", dir);
    unlink(overlay);
    double ms = -1;
    pid_t pid = -1;
    if (disk_overlay_create(base, "raw", overlay, &e) < 0) {
        fprintf(stderr, "agent_bench: overlay: %s\n", e.msg);
        goto out;
    }
    unsigned k = ba_tsc_khz();
    snprintf(append, sizeof append,
             "console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests mitigations=off "
             "audit=0 apparmor=0 security=none no_timer_check tsc=reliable random.trust_cpu=on "
             "tsc_early_khz=%u lpj=%u",
             k, k * 4);
    char drive[700], serial[600];
    snprintf(drive, sizeof drive, "id=root,file=%s,format=qcow2,if=none,cache=unsafe", overlay);
    snprintf(serial, sizeof serial, "file:%s", con);
    char netdev[64];
    snprintf(netdev, sizeof netdev, "tap,id=n0,ifname=%s,script=no,downscript=no", ns.tap);
    char *const argv[] = {"/usr/bin/qemu-system-x86_64",
                          "-M",
                          "microvm,acpi=on",
                          "-accel",
                          "tcg",
                          "-cpu",
                          "max",
                          "-m",
                          "256M",
                          "-smp",
                          "1",
                          "-nodefaults",
                          "-no-user-config",
                          "-display",
                          "none",
                          "-no-reboot",
                          "-serial",
                          serial,
                          "-kernel",
                          kernel,
                          "-initrd",
                          initrd,
                          "-append",
                          append,
                          "-drive",
                          drive,
                          "-device",
                          "virtio-blk-device,drive=root",
                          "-netdev",
                          netdev,
                          "-device",
                          "virtio-net-device,netdev=n0,mac=" NET_GUEST_MAC,
                          NULL};
    char nspath[128];
    snprintf(nspath, sizeof nspath, "/run/netns/%s", ns.netns);
    double t0 = ba_now_ms();
    pid = fork();
    if (pid == 0) {
        int fd = open(nspath, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
            _exit(127);
        int dn = open("/dev/null", O_RDWR);
        dup2(dn, 0);
        dup2(dn, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    bool net_up = false;
    while (ba_now_ms() - t0 < 60000) {
        if (ba_health(ns.host_ip, &net_up)) {
            ms = ba_now_ms() - t0;
            break;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            pid = -1;
            break;
        }
        usleep(20000);
    }
out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    unlink(overlay);
    snprintf(overlay, sizeof overlay, "%s/raw-mem", dir);
    unlink(overlay);
    net_destroy(RAW_SLOT, &e);
    return ms;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: agent_bench WRENN_AGENT_BIN\n");
        return 2;
    }
    if (geteuid() != 0) {
        printf("agent_bench: needs root; skipped\n");
        return 0;
    }
    char p[512];
    if (ba_ensure_image(argv[1], "minimal") < 0) {
        fprintf(stderr, "agent_bench: cannot build the minimal image in %s\n", ba_cache());
        return 1;
    }
    int runs = getenv("WRENN_BENCH_RUNS") ? atoi(getenv("WRENN_BENCH_RUNS")) : 10;
    bool verbose = getenv("WRENN_BENCH_VERBOSE") != NULL; /* each run's pair, on stderr */
    int rss_n = getenv("WRENN_BENCH_RSS_N") ? atoi(getenv("WRENN_BENCH_RSS_N")) : 4;
    if (runs < 1 || runs > 1000 || rss_n < 1 || rss_n > 64)
        return 2;
    httpc_global_init();
    signal(SIGPIPE, SIG_IGN);
    if (ba_start_agent(argv[1], "agent-bench") < 0) {
        fprintf(stderr, "agent_bench: cannot start %s\n", argv[1]);
        ba_stop_agent();
        return 1;
    }
    int rc = 1;
    double *agent = xcalloc((size_t)runs, sizeof *agent), *raw = xcalloc((size_t)runs, sizeof *raw);
    double *made = xcalloc((size_t)runs, sizeof *made), *pair = xcalloc((size_t)runs, sizeof *pair);
    char **ids = xcalloc((size_t)rss_n, sizeof *ids);
    /* Warm-up (page cache, first-touch memory of this VM host), not counted. */
    char *id = create();
    if (!id || !ba_exec_hi(id))
        goto out;
    ba_destroy(id);
    free(id);
    long rss0 = rss_kib(ba_agent.pid);

    /* The raw boots share the agent's network setup (a slot far above the agent's). */
    err_t e = {0};
    if (net_host_init(&e) < 0) {
        fprintf(stderr, "agent_bench: net_host_init: %s\n", e.msg);
        goto out;
    }
    char dir[] = "/tmp/agent-bench-raw-XXXXXX";
    if (!mkdtemp(dir))
        goto out;
    raw_boot(dir); /* warm-up */
    /* Interleaved, so that load from anything else on the machine hits both alike, and in
     * alternating order (agent first in even runs, raw first in odd ones). */
    for (int i = 0; i < runs; i++) {
        if (i % 2 && (raw[i] = raw_boot(dir)) < 0)
            goto out;
        double t0 = ba_now_ms();
        id = create();
        made[i] = ba_now_ms() - t0;
        if (!id || !ba_exec_hi(id))
            goto out;
        agent[i] = ba_now_ms() - t0;
        ba_destroy(id);
        free(id);
        if (i % 2 == 0 && (raw[i] = raw_boot(dir)) < 0)
            goto out;
        pair[i] = agent[i] / raw[i];
        if (verbose)
            fprintf(stderr, "agent_bench: run %d: agent %.0f ms (create %.0f), raw %.0f ms\n", i,
                    agent[i], made[i], raw[i]);
    }
    snprintf(p, sizeof p, "%s/raw-console.log", dir);
    unlink(p);
    rmdir(dir);

    for (int i = 0; i < rss_n; i++)
        if (!(ids[i] = create()))
            goto out;
    long rssn = rss_kib(ba_agent.pid);
    for (int i = 0; i < rss_n; i++)
        ba_destroy(ids[i]);
    ba_stop_agent();
    ba_agent.pid = 0;

    double a50 = ba_pct(agent, runs, 0.5), a95 = ba_pct(agent, runs, 0.95);
    double r50 = ba_pct(raw, runs, 0.5), r95 = ba_pct(raw, runs, 0.95);
    printf("\n%-52s %10s %10s\n", "agent (QEMU microvm, TCG, minimal, 1 vCPU, 256 MiB)", "p50 ms",
           "p95 ms");
    printf("%-52s %10.0f %10.0f\n", "cold CreateSandbox -> first Exec output", a50, a95);
    printf("%-52s %10.0f %10.0f\n", "  of which CreateSandbox", ba_pct(made, runs, 0.5),
           ba_pct(made, runs, 0.95));
    printf("%-52s %10.0f %10.0f\n", "raw qemu-system-x86_64 start -> envd /health", r50, r95);
    printf("%-52s %10.2f %10.2f   (target <= 1.15)\n", "ratio agent / raw", a50 / r50, a95 / r95);
    /* The same ratio per run (each agent create beside the raw boot next to it): less moved by
     * the slow phases this kind of host has, which hit a pair alike. */
    printf("%-52s %10.2f %10.2f\n", "  ratio per interleaved pair, median and p95",
           ba_pct(pair, runs, 0.5), ba_pct(pair, runs, 0.95));
    printf("%-52s %10ld KiB\n", "agent RSS, 0 sandboxes", rss0);
    printf("%-52s %10ld KiB\n", "agent RSS, N sandboxes", rssn);
    printf("%-52s %10.1f KiB   (N=%d, target <= 1024 KiB)\n", "agent RSS per sandbox (excl. QEMU)",
           (double)(rssn - rss0) / rss_n, rss_n);
    rc = 0;
out:
    if (rc != 0) {
        fprintf(stderr, "agent_bench: failed\n");
        if (ba_agent.pid > 0)
            ba_show_agent_warnings();
    }
    ba_stop_agent();
    for (int i = 0; i < rss_n; i++)
        free(ids[i]);
    free(ids);
    free(agent);
    free(made);
    free(pair);
    free(raw);
    return rc;
}
