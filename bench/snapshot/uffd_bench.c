/* bench/snapshot/uffd_bench: the userfaultfd page server (src/agent/uffd) serving 4 KiB pages to
 * fc_mem (the Firecracker stand-in of tests/unit/uffd) in another process.
 *
 *   uffd_bench [FC_MEM]
 *
 * Guest memory: WRENN_BENCH_UFFD_MIB (default 512) MiB of non-zero data in one layer written
 * through mem.h (page cache warm, as after a recent pause). For each configuration, fc_mem maps
 * it, hands over its userfaultfd and reads one byte per page (sequential or random order, one
 * thread); the time is fc_mem's own, from its first touch to its last. Configurations: both
 * processes pinned to CPU 0 (sched_setaffinity) or free on every CPU; prefetch off (4 KiB per
 * fault) or 64 KiB (the default), and 256 KiB once. Run 0 of each is a warm-up (first touch of
 * fresh memory is slow on a nested VM), then WRENN_BENCH_RUNS (default 3) runs, median reported.
 * "CPU us/fault" is the CPU time per fault of the server (this process: the main thread sleeps) and
 * of fc_mem. Two last rows give the platform's floor: the kernel's own zero-fill fault on fresh
 * anonymous memory, no userfaultfd. Prints a table; exits 0 unless a run failed.
 */
#include "log.h"
#include "mem/mem.h"
#include "uffd/uffd.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_BENCH_FC_MEM
#define UFFD_BENCH_FC_MEM "fc_mem"
#endif

#define BS 4096u

extern char **environ;

typedef struct result {
    double ms;
    double server_us; /* CPU time of this process (the server thread) per fault */
    double vm_us;     /* fc_mem's CPU time per fault */
    uint64_t faults, pages;
} result_t;

static char root[] = "/tmp/wrenn-uffd-bench-XXXXXX";

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && atoi(v) > 0 ? atoi(v) : def;
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu >= 0) {
        CPU_SET(cpu, &set);
    } else {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < n && i < CPU_SETSIZE; i++)
            CPU_SET(i, &set);
    }
    return sched_setaffinity(0, sizeof set, &set);
}

/* Memory of size bytes, all data, in one layer of a new map in root. */
static int make_memory(uint64_t size, mem_map_t **map, mem_reader_t **r)
{
    char ram[PATH_MAX];
    err_t e = {0};
    snprintf(ram, sizeof ram, "%s/ram", root);
    int fd = open(ram, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    const size_t chunk = 4u << 20;
    uint64_t *buf = xmalloc(chunk);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (uint64_t off = 0; off < size; off += chunk) {
        for (size_t i = 0; i < chunk / 8; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = x | 1;
        }
        if (pwrite(fd, buf, chunk, (off_t)off) != (ssize_t)chunk) {
            free(buf);
            close(fd);
            return -EIO;
        }
    }
    free(buf);
    close(fd);
    int rc = mem_commit_full(ram, size, root, map, &e);
    if (rc == 0)
        rc = mem_reader_open(*map, root, r, &e);
    if (rc < 0)
        fprintf(stderr, "uffd_bench: %s\n", e.msg);
    return rc;
}

static double cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The platform's floor: the kernel's own zero-fill fault on fresh anonymous memory, no
 * userfaultfd involved (ms for size bytes, one read per page, as fc_mem does). */
static double kernel_fault_ms(uint64_t size, bool pinned)
{
    if (pin(pinned ? 0 : -1) < 0)
        return -1;
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    madvise(p, size, MADV_NOHUGEPAGE);
    double t0 = now_ms();
    for (uint64_t off = 0; off < size; off += BS)
        p[off] = 1; /* a write: a read would map the shared zero page */
    double ms = now_ms() - t0;
    munmap(p, size);
    return ms;
}

static int run_one(const char *fc_mem, mem_reader_t *mem, uint64_t size, bool pinned,
                   uint32_t prefetch, const char *order, result_t *res)
{
    char sock[PATH_MAX], sz[32], line[256];
    static int seq;
    snprintf(sock, sizeof sock, "%s/b%d.sock", root, ++seq);
    snprintf(sz, sizeof sz, "%" PRIu64, size);
    if (pin(pinned ? 0 : -1) < 0)
        return -errno;
    double cpu0 = cpu_us();
    uffd_opts_t o = {.prefetch = prefetch};
    uffd_server_t *s = NULL;
    err_t e = {0};
    int rc = uffd_server_start(sock, mem, &o, &s, &e);
    if (rc < 0) {
        fprintf(stderr, "uffd_bench: start: %s\n", e.msg);
        return rc;
    }
    const char *argv[] = {
        fc_mem, "--sock", sock, "--size", sz, "--order", order, "--cpu", pinned ? "0" : "-1", NULL};
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        uffd_server_free(s);
        return -errno;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    pid_t pid;
    rc = posix_spawn(&pid, fc_mem, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        uffd_server_free(s);
        fprintf(stderr, "uffd_bench: spawn %s: %s\n", fc_mem, strerror(rc));
        return -rc;
    }
    size_t n = 0;
    ssize_t k;
    while (n < sizeof line - 1 && (k = read(p[0], line + n, sizeof line - 1 - n)) > 0)
        n += (size_t)k;
    line[n] = '\0';
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    uffd_end_t end = uffd_server_wait(s, 10000);
    uffd_stats_t us;
    uffd_server_stats(s, &us);
    uffd_server_free(s);
    double cpu = cpu_us() - cpu0;
    const char *t = strstr(line, "touch_ns=");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || !t || end != UFFD_END_VM_GONE) {
        fprintf(stderr, "uffd_bench: run failed: status 0x%x end=%s out=%s\n", st,
                uffd_end_name(end), line);
        return -EIO;
    }
    res->ms = (double)strtoull(t + 9, NULL, 10) / 1e6;
    res->faults = us.faults;
    res->server_us = us.faults ? cpu / (double)us.faults : 0;
    const char *vc = strstr(line, "cpu_us=");
    res->vm_us = vc && us.faults ? (double)strtoull(vc + 7, NULL, 10) / (double)us.faults : 0;
    res->pages = us.pages_copied + us.zero_pages;
    return 0;
}

static int cmp_res(const void *a, const void *b)
{
    double x = ((const result_t *)a)->ms, y = ((const result_t *)b)->ms;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *fc_mem = argc > 1 ? argv[1] : UFFD_BENCH_FC_MEM;
    const uint64_t size = (uint64_t)env_int("WRENN_BENCH_UFFD_MIB", 512) << 20;
    const int runs = env_int("WRENN_BENCH_RUNS", 3);
    log_init("uffd_bench", LOG_WARN);
    if (access(fc_mem, X_OK) < 0) {
        fprintf(stderr, "uffd_bench: no fc_mem at %s (build with tests enabled)\n", fc_mem);
        return 1;
    }
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    mem_map_t *map = NULL;
    mem_reader_t *mem = NULL;
    int rc = make_memory(size, &map, &mem);
    if (rc < 0) {
        fprintf(stderr, "uffd_bench: memory: %s\n", strerror(-rc));
        nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        return 1;
    }

    printf("userfaultfd page server, %" PRIu64 " MiB of 4 KiB pages, median of %d runs\n\n",
           size >> 20, runs);
    printf(
        "| CPUs | order | prefetch | faults | ms | faults/s | us/fault | CPU us/fault server + VM "
        "| pages/s | MB/s |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    static const struct {
        bool pinned;
        uint32_t prefetch;
        const char *order;
    } cfg[] = {
        {true, BS, "seq"},         {true, BS, "rand"},        {true, 64u << 10, "seq"},
        {true, 64u << 10, "rand"}, {true, 256u << 10, "seq"}, {false, BS, "seq"},
        {false, BS, "rand"},       {false, 64u << 10, "seq"}, {false, 64u << 10, "rand"},
    };
    result_t *res = xcalloc((size_t)runs + 1, sizeof *res);
    int failed = 0;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int ok = 0;
        for (int i = 0; i <= runs; i++) {
            result_t r;
            if (run_one(fc_mem, mem, size, cfg[c].pinned, cfg[c].prefetch, cfg[c].order, &r) < 0) {
                failed++;
                break;
            }
            if (i > 0)
                res[ok++] = r;
        }
        if (ok == 0)
            continue;
        qsort(res, (size_t)ok, sizeof *res, cmp_res);
        result_t m = res[ok / 2];
        double s = m.ms / 1e3;
        printf("| %s | %s | %u KiB | %" PRIu64
               " | %.0f | %.0f | %.1f | %.1f + %.1f | %.0f | %.0f |\n",
               cfg[c].pinned ? "both on CPU 0" : "any", cfg[c].order, cfg[c].prefetch >> 10,
               m.faults, m.ms, (double)m.faults / s, m.ms * 1e3 / (double)m.faults, m.server_us,
               m.vm_us, (double)(size / BS) / s, (double)size / (1 << 20) / s);
        fflush(stdout);
    }
    for (int pinned = 1; pinned >= 0; pinned--) {
        double ms = kernel_fault_ms(size, pinned);
        if (ms <= 0)
            continue;
        printf("| %s | seq | kernel zero-fill, no userfaultfd | %" PRIu64
               " | %.0f | %.0f | %.1f | - | %.0f | %.0f |\n",
               pinned ? "CPU 0" : "any", size / BS, ms, (double)(size / BS) / (ms / 1e3),
               ms * 1e3 / (double)(size / BS), (double)(size / BS) / (ms / 1e3),
               (double)size / (1 << 20) / (ms / 1e3));
    }
    free(res);
    pin(-1);
    mem_reader_free(mem);
    mem_map_free(map);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return failed ? 1 : 0;
}
