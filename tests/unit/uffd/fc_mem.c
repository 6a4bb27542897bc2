/* fc_mem: a stand-in for Firecracker's side of a userfaultfd snapshot restore, for tests and
 * benchmarks of the page server (src/agent/uffd).
 *
 * It does with its memory what Firecracker does: anonymous private mappings (MAP_NORESERVE), a
 * userfaultfd (O_CLOEXEC | O_NONBLOCK) with UFFDIO_API (UFFD_FEATURE_EVENT_REMOVE, plus UNMAP
 * and REMAP when asked) and UFFDIO_REGISTER in MISSING mode, then one message on the server's
 * socket: the JSON regions and the userfaultfd as SCM_RIGHTS. The memory is cut in two regions
 * (mapped in the reverse order of their guest offsets, so a server that gets the offset math
 * wrong serves the wrong bytes); the first region's JSON says "page_size", the second the older
 * "page_size_kib". Then it touches pages and checks every byte against --expect, a file holding
 * the memory's expected content.
 *
 *   fc_mem --sock PATH --size BYTES [--expect FILE] [--split BYTES] [--order seq|rand|none]
 *          [--threads N] [--remove-first OFF:LEN] [--remove OFF:LEN] [--churn OFF:LEN]
 *          [--unmap] [--remap]
 *          [--write] [--split-vma] [--pause] [--cpu N] [--timeout S] [--seed N]
 *
 * --remove*: madvise(MADV_DONTNEED) on a range of guest offsets before / after the touch pass;
 *   the range must then read as zeroes (the server's documented semantics) and keep what is
 *   written to it. --churn: a thread drops the range again and again during the touch pass (and
 *   once more after it). --unmap: munmap the second region before touching (only the first is
 *   touched). --remap: mremap the first region to a new address before touching. --split-vma:
 *   cut the first region into many mappings (madvise MADV_DONTDUMP on parts of it).
 * --pause: sleep after the work until killed (for kill tests). --timeout: SIGALRM after S
 *   seconds (default 120) so a server that never answers cannot hang a test for ever.
 * Prints one line "fc_mem ok pages=N touch_ns=T cpu_us=C" (C: its CPU time up to the end of the
 * touch pass) and exits 0; any mismatch or failure prints
 * "fc_mem FAIL ..." on stderr and exits 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PS 4096u

typedef struct region {
    uint8_t *host;
    uint64_t off, size;
    bool gone;
} region_t;

static region_t g_reg[2];
static const uint8_t *g_expect;
static uint64_t g_size;
static uint64_t *g_order;
static uint64_t g_norder;
static unsigned g_threads = 1;

static void die(const char *what)
{
    fprintf(stderr, "fc_mem FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fc_mem FAIL ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Host address of guest offset off, NULL when its region is gone. */
static uint8_t *host_of(uint64_t off)
{
    for (int i = 0; i < 2; i++)
        if (off >= g_reg[i].off && off < g_reg[i].off + g_reg[i].size)
            return g_reg[i].gone ? NULL : g_reg[i].host + (off - g_reg[i].off);
    return NULL;
}

static int make_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev < 0)
            die("userfaultfd");
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        close(dev);
        if (fd < 0)
            die("USERFAULTFD_IOC_NEW");
    }
    return fd;
}

static void parse_range(const char *s, uint64_t *off, uint64_t *len)
{
    char *end;
    *off = strtoull(s, &end, 0);
    if (*end != ':')
        fail("bad range %s", s);
    *len = strtoull(end + 1, NULL, 0);
    if (*off % PS || *len % PS || *off + *len > g_size)
        fail("bad range %llu+%llu", (unsigned long long)*off, (unsigned long long)*len);
}

static void dontneed(uint64_t off, uint64_t len)
{
    for (int i = 0; i < 2; i++) {
        region_t *r = &g_reg[i];
        uint64_t lo = off > r->off ? off : r->off;
        uint64_t hi = off + len < r->off + r->size ? off + len : r->off + r->size;
        if (lo < hi && !r->gone && madvise(r->host + (lo - r->off), hi - lo, MADV_DONTNEED) < 0)
            die("madvise");
    }
}

static bool in_range(uint64_t off, uint64_t lo, uint64_t len)
{
    return off >= lo && off < lo + len;
}

static void *toucher(void *arg)
{
    uint64_t t = (uint64_t)(uintptr_t)arg, sum = 0;
    for (uint64_t i = t; i < g_norder; i += g_threads) {
        const volatile uint8_t *p = host_of(g_order[i]);
        if (p)
            sum += p[0];
    }
    return (void *)(uintptr_t)sum;
}

/* Guest ranges dropped with MADV_DONTNEED: --remove-first, --remove, --churn. */
static uint64_t g_rm[3][2];
static volatile int g_churn_stop;

static bool removed(uint64_t off)
{
    for (int i = 0; i < 3; i++)
        if (in_range(off, g_rm[i][0], g_rm[i][1]))
            return true;
    return false;
}

/* Compare every page: zero inside the removed ranges, the expected content elsewhere. */
static uint64_t verify(void)
{
    static const uint8_t zero[PS];
    uint64_t n = 0;
    for (uint64_t off = 0; off < g_size; off += PS) {
        const uint8_t *p = host_of(off);
        if (!p)
            continue;
        bool rm = removed(off);
        const uint8_t *want = rm ? zero : g_expect ? g_expect + off : NULL;
        if (want && memcmp(p, want, PS) != 0) {
            uint64_t b = 0;
            while (p[b] == want[b])
                b++;
            fail("content differs at guest offset %llu (removed=%d): 0x%02x, want 0x%02x",
                 (unsigned long long)(off + b), rm, p[b], want[b]);
        }
        n++;
    }
    return n;
}

/* Drop the churn range over and over while the touch pass runs, so faults meet pending remove
 * events (the kernel answers EAGAIN to a copy while one is unread). */
static void *churner(void *arg)
{
    (void)arg;
    while (!g_churn_stop) {
        dontneed(g_rm[2][0], g_rm[2][1]);
        usleep(200); /* leave the touch pass room to make progress */
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *expect = NULL, *order = "seq";
    const char *rm_first = NULL, *rm_after = NULL, *churn = NULL;
    uint64_t split = 0, seed = 1;
    bool unmap = false, remap = false, write_back = false, pause_end = false, split_vma = false;
    int cpu = -1, timeout = 120;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--unmap"))
            unmap = true;
        else if (!strcmp(a, "--remap"))
            remap = true;
        else if (!strcmp(a, "--write"))
            write_back = true;
        else if (!strcmp(a, "--pause"))
            pause_end = true;
        else if (!strcmp(a, "--split-vma"))
            split_vma = true;
        else if (!v)
            fail("option %s needs a value", a);
        else {
            i++;
            if (!strcmp(a, "--sock"))
                sock = v;
            else if (!strcmp(a, "--size"))
                g_size = strtoull(v, NULL, 0);
            else if (!strcmp(a, "--expect"))
                expect = v;
            else if (!strcmp(a, "--split"))
                split = strtoull(v, NULL, 0);
            else if (!strcmp(a, "--order"))
                order = v;
            else if (!strcmp(a, "--threads"))
                g_threads = (unsigned)atoi(v);
            else if (!strcmp(a, "--remove-first"))
                rm_first = v;
            else if (!strcmp(a, "--remove"))
                rm_after = v;
            else if (!strcmp(a, "--churn"))
                churn = v;
            else if (!strcmp(a, "--cpu"))
                cpu = atoi(v);
            else if (!strcmp(a, "--timeout"))
                timeout = atoi(v);
            else if (!strcmp(a, "--seed"))
                seed = strtoull(v, NULL, 0);
            else
                fail("unknown option %s", a);
        }
    }
    if (!sock || g_size == 0 || g_size % PS || g_threads == 0 || g_threads > 64)
        fail("usage: --sock PATH --size BYTES (a multiple of 4096)");
    if (split == 0)
        split = g_size / 2 / PS * PS;
    if (split == 0 || split >= g_size || split % PS)
        fail("bad split %llu of %llu", (unsigned long long)split, (unsigned long long)g_size);
    alarm((unsigned)timeout);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }
    if (expect) {
        int fd = open(expect, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die(expect);
        void *p = mmap(NULL, g_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            die("mmap expect");
        close(fd);
        g_expect = p;
    }

    /* Guest offsets [0, split) and [split, size), mapped in the reverse order. */
    g_reg[0].off = 0;
    g_reg[0].size = split;
    g_reg[1].off = split;
    g_reg[1].size = g_size - split;
    for (int i = 1; i >= 0; i--) {
        void *p = mmap(NULL, g_reg[i].size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            die("mmap guest memory");
        madvise(p, g_reg[i].size, MADV_NOHUGEPAGE);
        g_reg[i].host = p;
    }

    int ufd = make_uffd();
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
    if (unmap)
        api.features |= UFFD_FEATURE_EVENT_UNMAP;
    if (remap)
        api.features |= UFFD_FEATURE_EVENT_REMAP;
    if (ioctl(ufd, UFFDIO_API, &api) < 0)
        die("UFFDIO_API");
    for (int i = 0; i < 2; i++) {
        struct uffdio_register reg = {
            .range = {.start = (uintptr_t)g_reg[i].host, .len = g_reg[i].size},
            .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(ufd, UFFDIO_REGISTER, &reg) < 0)
            die("UFFDIO_REGISTER");
    }

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("connect");
    char json[512];
    snprintf(json, sizeof json,
             "[{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,\"page_size\":%u},"
             "{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,\"page_size_kib\":%u}]",
             (unsigned long long)(uintptr_t)g_reg[0].host, (unsigned long long)g_reg[0].size,
             (unsigned long long)g_reg[0].off, PS, (unsigned long long)(uintptr_t)g_reg[1].host,
             (unsigned long long)g_reg[1].size, (unsigned long long)g_reg[1].off, PS);
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {.iov_base = json, .iov_len = strlen(json)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &ufd, sizeof ufd);
    if (sendmsg(s, &mh, MSG_NOSIGNAL) < 0)
        die("sendmsg");

    if (remap) {
        /* Move region 0 to a fresh address (reserved first so the move has somewhere to go). */
        void *to = mmap(NULL, g_reg[0].size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (to == MAP_FAILED)
            die("mmap remap target");
        void *p =
            mremap(g_reg[0].host, g_reg[0].size, g_reg[0].size, MREMAP_MAYMOVE | MREMAP_FIXED, to);
        if (p == MAP_FAILED)
            die("mremap");
        g_reg[0].host = p;
    }
    if (split_vma) {
        /* Firecracker maps each region once, but madvise or mprotect of a part splits it into
         * several mappings; runs that cross a boundary must still be served. */
        for (uint64_t pg = 5; pg + 13 < g_reg[0].size / PS; pg += 40)
            if (madvise(g_reg[0].host + pg * PS, 13 * PS, MADV_DONTDUMP) < 0)
                die("madvise DONTDUMP");
    }
    if (unmap) {
        if (munmap(g_reg[1].host, g_reg[1].size) < 0)
            die("munmap");
        g_reg[1].gone = true;
    }
    if (rm_first) {
        parse_range(rm_first, &g_rm[0][0], &g_rm[0][1]);
        dontneed(g_rm[0][0], g_rm[0][1]);
    }

    /* The touch pass: one read per page in the chosen order, by g_threads threads. */
    g_norder = strcmp(order, "none") ? g_size / PS : 0;
    g_order = calloc(g_norder ? g_norder : 1, sizeof *g_order);
    if (!g_order)
        die("calloc");
    for (uint64_t i = 0; i < g_norder; i++)
        g_order[i] = i * PS;
    if (!strcmp(order, "rand")) {
        uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
        for (uint64_t i = g_norder; i > 1; i--) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            uint64_t j = x % i, t = g_order[i - 1];
            g_order[i - 1] = g_order[j];
            g_order[j] = t;
        }
    } else if (strcmp(order, "seq") && strcmp(order, "none")) {
        fail("bad order %s", order);
    }
    pthread_t churn_th;
    if (churn) {
        parse_range(churn, &g_rm[2][0], &g_rm[2][1]);
        if (pthread_create(&churn_th, NULL, churner, NULL) != 0)
            die("pthread_create");
    }
    uint64_t t0 = now_ns();
    pthread_t th[64];
    for (unsigned t = 0; t < g_threads; t++)
        if (pthread_create(&th[t], NULL, toucher, (void *)(uintptr_t)t) != 0)
            die("pthread_create");
    for (unsigned t = 0; t < g_threads; t++)
        pthread_join(th[t], NULL);
    uint64_t touch_ns = now_ns() - t0;
    if (churn) {
        /* One last drop once the churner is done: the range must then read as zeroes. */
        g_churn_stop = 1;
        pthread_join(churn_th, NULL);
        dontneed(g_rm[2][0], g_rm[2][1]);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t cpu_us = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
                      (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);

    uint64_t pages = verify();
    if (rm_after) {
        parse_range(rm_after, &g_rm[1][0], &g_rm[1][1]);
        dontneed(g_rm[1][0], g_rm[1][1]);
        verify();
    }
    if (write_back) {
        /* Every page, zero page or copied, takes a write and keeps it. */
        for (uint64_t off = 0; off < g_size; off += PS) {
            uint8_t *p = host_of(off);
            if (p)
                p[PS - 1] = (uint8_t)(off >> 12 | 1);
        }
        for (uint64_t off = 0; off < g_size; off += PS) {
            const uint8_t *p = host_of(off);
            if (p && p[PS - 1] != (uint8_t)(off >> 12 | 1))
                fail("write lost at guest offset %llu", (unsigned long long)off);
        }
    }
    printf("fc_mem ok pages=%llu touch_ns=%llu cpu_us=%llu\n", (unsigned long long)pages,
           (unsigned long long)touch_ns, (unsigned long long)cpu_us);
    fflush(stdout);
    while (pause_end)
        pause();
    close(s);
    close(ufd);
    return 0;
}
