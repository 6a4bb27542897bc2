/* Unit tests of the userfaultfd page server (src/agent/uffd) against real processes: fc_mem (a
 * stand-in doing what Firecracker does with its memory, see fc_mem.c) maps memory, registers it
 * with a userfaultfd, hands it over and checks every byte it reads against the expected content.
 * That content is a two-generation map written through mem.h (a full layer with holes, then a
 * diff layer with new data and blocks that became zero), composed here independently into
 * expected.raw. Bad handshakes come from a client in this process.
 *
 * argv[1]: the fc_mem executable. Needs userfaultfd (root, or vm.unprivileged_userfaultfd).
 */
#include "uffd/uffd.h"

#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define BS     4096u
#define NB     4096u /* blocks: 16 MiB of guest memory */
#define SIZE   ((uint64_t)NB * BS)
#define HOLE_A 1000u /* [HOLE_A, HOLE_B) is a hole in the full layer: MEM_ZERO */
#define HOLE_B 1300u

extern char **environ;

static const char *g_fc_mem;
static char root[] = "/tmp/wrenn-uffd-XXXXXX";
static char g_expect[PATH_MAX];
static mem_map_t *g_map;
static mem_reader_t *g_mem;
static int g_seq;

/* ---- content ---- */

static void fill(uint8_t *p, uint64_t block, unsigned gen)
{
    uint64_t x = block * 0x9E3779B97F4A7C15ull ^ (uint64_t)gen << 56;
    for (unsigned i = 0; i < BS; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
}

static void pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
    assert_int_equal(pwrite(fd, p, n, (off_t)off), (ssize_t)n);
}

/* Generation 0: data everywhere but a hole and every 7th block; written zeros in block 5.
 * Generation 1: new data in every 5th block, zeros written in every 11th (MEM_ZERO), block 2001
 * dirty but never written (zero). expected.raw gets the composition. */
static void build_layers(void)
{
    char ram[PATH_MAX], upper[PATH_MAX];
    uint8_t *ref = xcalloc(NB, BS);
    uint8_t *dirty = xcalloc(NB / 8, 1);
    err_t e = {0};

    snprintf(ram, sizeof ram, "%s/ram", root);
    snprintf(upper, sizeof upper, "%s/upper", root);
    int fd = open(ram, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)SIZE), 0);
    for (uint64_t b = 0; b < NB; b++) {
        if ((b >= HOLE_A && b < HOLE_B) || b % 7 == 3)
            continue;
        if (b != 5)
            fill(ref + b * BS, b, 0);
        pwrite_all(fd, ref + b * BS, BS, b * BS);
    }
    close(fd);
    mem_map_t *m0 = NULL;
    if (mem_commit_full(ram, SIZE, root, &m0, &e) != 0)
        fail_msg("commit_full: %s", e.msg);

    fd = open(upper, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)SIZE), 0);
    for (uint64_t b = 0; b < NB; b++) {
        if (b % 11 == 0) {
            memset(ref + b * BS, 0, BS);
            pwrite_all(fd, ref + b * BS, BS, b * BS);
        } else if (b % 5 == 0) {
            fill(ref + b * BS, b, 1);
            pwrite_all(fd, ref + b * BS, BS, b * BS);
        } else {
            continue;
        }
        dirty[b / 8] |= (uint8_t)(1u << (b % 8));
    }
    dirty[2001 / 8] |= 1u << (2001 % 8);
    memset(ref + 2001ull * BS, 0, BS);
    close(fd);
    if (mem_commit_diff(m0, upper, dirty, root, 0, &g_map, &e) != 0)
        fail_msg("commit_diff: %s", e.msg);
    assert_int_equal(g_map->nlayers, 2);
    if (mem_reader_open(g_map, root, &g_mem, &e) != 0)
        fail_msg("reader: %s", e.msg);

    snprintf(g_expect, sizeof g_expect, "%s/expected.raw", root);
    fd = open(g_expect, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    pwrite_all(fd, ref, SIZE, 0);
    close(fd);
    mem_map_free(m0);
    free(dirty);
    free(ref);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(root))
        return -1;
    build_layers();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mem_reader_free(g_mem);
    mem_map_free(g_map);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- helpers ---- */

static void sock_path(char *buf, size_t n)
{
    snprintf(buf, n, "%s/s%d.sock", root, ++g_seq);
}

/* Start fc_mem with --sock, --size, --expect and the extra arguments (NULL-terminated). Its
 * stdout goes to our stderr, away from the TAP stream. */
static pid_t spawn_fc(const char *sock, ...)
{
    const char *argv[40];
    char size[32];
    int n = 0;
    snprintf(size, sizeof size, "%" PRIu64, SIZE);
    argv[n++] = g_fc_mem;
    argv[n++] = "--sock";
    argv[n++] = sock;
    argv[n++] = "--size";
    argv[n++] = size;
    argv[n++] = "--expect";
    argv[n++] = g_expect;
    argv[n++] = "--timeout";
    argv[n++] = "60";
    va_list ap;
    va_start(ap, sock);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 39)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    pid_t pid;
    int rc = posix_spawn(&pid, g_fc_mem, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    return pid;
}

/* Wait up to timeout_ms for pid; SIGKILL and fail if it does not end. Returns the wait status. */
static int wait_child(pid_t pid, int timeout_ms)
{
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    assert_true(pfd >= 0);
    struct pollfd p = {.fd = pfd, .events = POLLIN};
    int n = poll(&p, 1, timeout_ms);
    close(pfd);
    if (n == 0)
        kill(pid, SIGKILL);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (n == 0)
        fail_msg("fc_mem (pid %d) did not end within %d ms", (int)pid, timeout_ms);
    return st;
}

static void assert_exit0(int st)
{
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("fc_mem failed: status 0x%x (see its output above)", st);
}

static uffd_server_t *start(const char *sock, uint32_t prefetch)
{
    uffd_opts_t o = {.prefetch = prefetch, .connect_timeout_ms = 20000, .name = "test"};
    uffd_server_t *s = NULL;
    err_t e = {0};
    if (uffd_server_start(sock, g_mem, &o, &s, &e) != 0)
        fail_msg("start: %s", e.msg);
    return s;
}

/* Run fc_mem to completion against a fresh server; returns the server (ended) for checks. */
static uffd_server_t *run_fc(uint32_t prefetch, uffd_stats_t *st, ...)
{
    char sock[PATH_MAX];
    const char *extra[16];
    int n = 0;
    sock_path(sock, sizeof sock);
    uffd_server_t *s = start(sock, prefetch);
    va_list ap;
    va_start(ap, st);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 15)
        extra[n++] = a;
    va_end(ap);
    while (n < 15)
        extra[n++] = NULL;
    pid_t pid = spawn_fc(sock, extra[0], extra[1], extra[2], extra[3], extra[4], extra[5], extra[6],
                         extra[7], extra[8], extra[9], (const char *)NULL);
    err_t e = {0};
    if (uffd_server_wait_ready(s, 10000, &e) != 0)
        fail_msg("handshake: %s", e.msg);
    assert_int_equal(uffd_server_peer(s), pid);
    assert_exit0(wait_child(pid, 60000));
    /* The VM is gone: the server notices by itself. */
    assert_int_equal(uffd_server_wait(s, 5000), UFFD_END_VM_GONE);
    struct pollfd p = {.fd = uffd_server_fd(s), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 1);
    uffd_server_stats(s, st);
    return s;
}

static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            n++;
    return n;
}

/* ---- handshake parser ---- */

static int parse(const char *json, uint64_t mem_size, size_t *n)
{
    uffd_region_t r[4];
    err_t e = {0};
    int rc = uffd_parse_regions(json, strlen(json), mem_size, r, 4, n, &e);
    if (rc < 0)
        assert_true(e.msg[0] != '\0');
    return rc;
}

static void test_parse(void **state)
{
    (void)state;
    size_t n = 0;
    uffd_region_t r[4];
    err_t e = {0};
    const char *ok =
        "[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0,\"page_size\":4096},"
        "{\"base_host_virt_addr\":65536,\"size\":4096,\"offset\":8192,"
        "\"page_size_kib\":4096,\"future_key\":[1]}]";
    assert_int_equal(uffd_parse_regions(ok, strlen(ok), 12288, r, 4, &n, &e), 0);
    assert_int_equal(n, 2);
    assert_int_equal(r[0].base, 4096);
    assert_int_equal(r[0].size, 8192);
    assert_int_equal(r[1].offset, 8192);
    assert_int_equal(r[1].page_size, 4096);
    /* page_size_kib in real KiB, both names agreeing. */
    assert_int_equal(
        parse("[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size_kib\":4}]", 4096,
              &n),
        0);
    assert_int_equal(parse("[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,"
                           "\"page_size\":4096,\"page_size_kib\":4096}]",
                           4096, &n),
                     0);

    static const struct {
        const char *json;
        int rc;
    } bad[] = {
        {"", -EPROTO},
        {"nope", -EPROTO},
        {"{}", -EPROTO},
        {"[]", -EINVAL},
        {"[1]", -EPROTO},
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0}]", -EPROTO},
        {"[{\"size\":4096,\"offset\":0,\"page_size\":4096}]", -EPROTO},
        {"[{\"base_host_virt_addr\":-4096,\"size\":4096,\"offset\":0,\"page_size\":4096}]",
         -EPROTO},
        {"[{\"base_host_virt_addr\":\"0\",\"size\":4096,\"offset\":0,\"page_size\":4096}]",
         -EPROTO},
        {"[{\"base_host_virt_addr\":0,\"size\":4096.0,\"offset\":0,\"page_size\":4096}]", -EPROTO},
        {"[{\"base_host_virt_addr\":99999999999999999999999,\"size\":4096,\"offset\":0,"
         "\"page_size\":4096}]",
         -EPROTO},
        {"[{\"base_host_virt_addr\":0,\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,"
         "\"page_size\":4096}]",
         -EPROTO},
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size\":4096}] x", -EPROTO},
        /* Page sizes. */
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size\":2097152}]", -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size_kib\":2048}]",
         -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size\":4096,"
         "\"page_size_kib\":8}]",
         -EINVAL},
        /* Alignment, size, range. */
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":100,\"page_size\":4096}]", -EINVAL},
        {"[{\"base_host_virt_addr\":10,\"size\":4096,\"offset\":0,\"page_size\":4096}]", -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":4000,\"offset\":0,\"page_size\":4096}]", -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":0,\"offset\":0,\"page_size\":4096}]", -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":8192,\"offset\":4096,\"page_size\":4096}]", -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":8192,\"page_size\":4096}]", -EINVAL},
        {"[{\"base_host_virt_addr\":9223372036854771712,\"size\":9223372036854771712,"
         "\"offset\":0,\"page_size\":4096}]",
         -EINVAL},
        /* Overlaps: in the address space, then in guest memory. */
        {"[{\"base_host_virt_addr\":0,\"size\":8192,\"offset\":0,\"page_size\":4096},"
         "{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":8192,\"page_size\":4096}]",
         -EINVAL},
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size\":4096},"
         "{\"base_host_virt_addr\":65536,\"size\":4096,\"offset\":0,\"page_size\":4096}]",
         -EINVAL},
        /* More regions than allowed (4 here). */
        {"[{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0,\"page_size\":4096},"
         "{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":4096,\"page_size\":4096},"
         "{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":8192,\"page_size\":4096},"
         "{\"base_host_virt_addr\":12288,\"size\":4096,\"offset\":12288,\"page_size\":4096},"
         "{\"base_host_virt_addr\":16384,\"size\":4096,\"offset\":16384,\"page_size\":4096}]",
         -EINVAL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i].json, 8192, &n);
        if (rc != bad[i].rc)
            fail_msg("case %zu: %s: rc %d, want %d", i, bad[i].json, rc, bad[i].rc);
    }
    char *big = xcalloc(UFFD_MAX_HANDSHAKE + 2, 1);
    memset(big, ' ', UFFD_MAX_HANDSHAKE + 1);
    assert_int_equal(uffd_parse_regions(big, UFFD_MAX_HANDSHAKE + 1, 8192, r, 4, &n, &e),
                     -EMSGSIZE);
    free(big);
}

/* ---- serving ---- */

static void test_sequential_prefetch(void **state)
{
    (void)state;
    uffd_stats_t st;
    uffd_server_t *s = run_fc(0, &st, "--order", "seq", "--write", NULL);
    /* Every page placed exactly once, zero extents as zero pages, most of them prefetched. */
    assert_int_equal(st.pages_copied + st.zero_pages, NB);
    assert_true(st.zero_pages >= HOLE_B - HOLE_A);
    assert_int_equal(st.bytes_copied, st.pages_copied * BS);
    assert_true(st.prefetched > NB / 2);
    assert_true(st.faults < NB / 4);
    assert_int_equal(st.removes, 0);
    uffd_server_free(s);
}

static void test_random_threads_no_prefetch(void **state)
{
    (void)state;
    uffd_stats_t st;
    uffd_server_t *s =
        run_fc(UFFD_PAGE_SIZE, &st, "--order", "rand", "--threads", "4", "--write", NULL);
    assert_int_equal(st.pages_copied + st.zero_pages, NB);
    assert_int_equal(st.prefetched, 0);
    assert_true(st.faults >= NB);
    uffd_server_free(s);
}

static void test_big_window(void **state)
{
    (void)state;
    uffd_stats_t st;
    uffd_server_t *s = run_fc(UFFD_MAX_PREFETCH, &st, "--order", "rand", "--seed", "7", NULL);
    assert_int_equal(st.pages_copied + st.zero_pages, NB);
    assert_true(st.faults <= 2 * SIZE / UFFD_MAX_PREFETCH + 8);
    uffd_server_free(s);
}

static void test_remove(void **state)
{
    (void)state;
    char a[64], b[64];
    /* Before any touch (pages never served: must read zero, not the snapshot), and after the
     * touch pass (served pages dropped: zero again, then writable). Region 0 is [0, 8 MiB). */
    snprintf(a, sizeof a, "%u:%u", 100 * BS, 64 * BS);
    snprintf(b, sizeof b, "%u:%u", 3000 * BS, 200 * BS);
    uffd_stats_t st;
    uffd_server_t *s =
        run_fc(0, &st, "--remove-first", a, "--remove", b, "--order", "rand", "--write", NULL);
    assert_int_equal(st.removes, 2);
    /* The removed pages of the first range never came from the snapshot. */
    assert_true(st.pages_copied + st.zero_pages >= NB);
    assert_true(st.refaults >= 200);
    uffd_server_free(s);
}

/* Faults racing with remove events: the kernel refuses copies (EAGAIN) while an event is unread;
 * those faults are retried once it is, and every byte still comes out right. */
static void test_remove_churn(void **state)
{
    (void)state;
    char a[64];
    snprintf(a, sizeof a, "%u:%u", 2048 * BS, 512 * BS);
    uffd_stats_t st;
    uffd_server_t *s = run_fc(UFFD_PAGE_SIZE, &st, "--churn", a, "--order", "rand", "--threads",
                              "2", "--write", NULL);
    assert_true(st.removes > 1);
    print_message("# churn: %" PRIu64 " remove events, %" PRIu64 " faults deferred by EAGAIN\n",
                  st.removes, st.retries);
    uffd_server_free(s);
}

static void test_unmap(void **state)
{
    (void)state;
    uffd_stats_t st;
    uffd_server_t *s = run_fc(0, &st, "--unmap", "--order", "seq", NULL);
    assert_int_equal(st.unmaps, 1);
    /* Only the first region was served. */
    assert_int_equal(st.pages_copied + st.zero_pages, NB / 2);
    uffd_server_free(s);
}

static void test_remap(void **state)
{
    (void)state;
    uffd_stats_t st;
    uffd_server_t *s = run_fc(UFFD_PAGE_SIZE, &st, "--remap", "--order", "rand", NULL);
    assert_int_equal(st.remaps, 1);
    assert_int_equal(st.pages_copied + st.zero_pages, NB);
    assert_int_equal(st.strays, 0);
    uffd_server_free(s);
}

/* A region split into several mappings: windows that cross a boundary still get served. */
static void test_split_vma(void **state)
{
    (void)state;
    uffd_stats_t st;
    uffd_server_t *s = run_fc(0, &st, "--split-vma", "--order", "seq", "--write", NULL);
    assert_int_equal(st.pages_copied + st.zero_pages, NB);
    assert_int_equal(st.strays, 0);
    uffd_server_free(s);
    s = run_fc(0, &st, "--split-vma", "--order", "rand", NULL);
    assert_int_equal(st.pages_copied + st.zero_pages, NB);
    uffd_server_free(s);
}

static void test_vm_killed(void **state)
{
    (void)state;
    char sock[PATH_MAX];
    sock_path(sock, sizeof sock);
    uffd_server_t *s = start(sock, UFFD_PAGE_SIZE);
    pid_t pid = spawn_fc(sock, "--order", "rand", "--threads", "2", "--pause", NULL);
    assert_int_equal(uffd_server_wait_ready(s, 10000, NULL), 0);
    uffd_stats_t st;
    for (int i = 0; i < 10000; i++) {
        uffd_server_stats(s, &st);
        if (st.faults >= 300)
            break;
        usleep(200);
    }
    assert_int_equal(kill(pid, SIGKILL), 0);
    int ws = wait_child(pid, 10000);
    assert_true(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    assert_int_equal(uffd_server_wait(s, 5000), UFFD_END_VM_GONE);
    err_t e = {0};
    assert_int_equal(uffd_server_status(s, &e), UFFD_END_VM_GONE);
    uffd_server_free(s);
}

static void test_stop(void **state)
{
    (void)state;
    char sock[PATH_MAX];
    struct stat st;
    err_t e = {0};

    /* Idle before any connection: stop ends it, the socket goes. */
    sock_path(sock, sizeof sock);
    uffd_server_t *s = start(sock, 0);
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(uffd_server_wait(s, 50), UFFD_RUNNING);
    assert_int_equal(uffd_server_wait_ready(s, 50, &e), -ETIMEDOUT);
    uffd_server_stop(s);
    assert_int_equal(uffd_server_status(s, NULL), UFFD_END_STOPPED);
    assert_int_equal(uffd_server_wait_ready(s, 0, &e), -ECANCELED);
    uffd_server_stop(s); /* idempotent */
    uffd_server_free(s);
    assert_int_equal(stat(sock, &st), -1);

    /* Idle while serving (the VM touched everything and sleeps). */
    sock_path(sock, sizeof sock);
    s = start(sock, 0);
    pid_t pid = spawn_fc(sock, "--order", "seq", "--pause", NULL);
    assert_int_equal(uffd_server_wait_ready(s, 10000, NULL), 0);
    assert_int_equal(stat(sock, &st), -1); /* one connection only: the path is gone */
    uffd_stats_t us;
    for (int i = 0; i < 5000; i++) {
        uffd_server_stats(s, &us);
        if (us.pages_copied + us.zero_pages == NB)
            break;
        usleep(1000);
    }
    assert_int_equal(us.pages_copied + us.zero_pages, NB);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uffd_server_stop(s);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 2);
    assert_int_equal(uffd_server_status(s, NULL), UFFD_END_STOPPED);
    uffd_server_free(s);
    kill(pid, SIGKILL);
    wait_child(pid, 10000);

    /* Never connected: the connect timeout ends it as an error. */
    sock_path(sock, sizeof sock);
    uffd_opts_t o = {.connect_timeout_ms = 100};
    assert_int_equal(uffd_server_start(sock, g_mem, &o, &s, &e), 0);
    assert_int_equal(uffd_server_wait(s, 5000), UFFD_END_ERROR);
    assert_int_equal(uffd_server_wait_ready(s, 0, &e), -ETIMEDOUT);
    uffd_server_free(s);
}

/* A source that fails past an offset, to see a fault that cannot be served. */
typedef struct failing {
    uffd_source_t base;
    uint64_t bad_from;
} failing_t;

static int failing_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    failing_t *f = ctx;
    if (off + len > f->bad_from)
        return -EIO;
    return f->base.read(f->base.ctx, off, buf, len);
}

static uint64_t failing_extent(void *ctx, uint64_t off, bool *zero)
{
    failing_t *f = ctx;
    return f->base.extent(f->base.ctx, off, zero);
}

static void test_read_error_kills_vm(void **state)
{
    (void)state;
    failing_t f = {.bad_from = SIZE - 64 * BS};
    uffd_source_mem(&f.base, g_mem);
    uffd_source_t src = {.ctx = &f, .size = SIZE, .read = failing_read, .extent = failing_extent};
    char sock[PATH_MAX];
    sock_path(sock, sizeof sock);
    uffd_server_t *s = NULL;
    err_t e = {0};
    assert_int_equal(uffd_server_start_src(sock, &src, NULL, &s, &e), 0);
    pid_t pid = spawn_fc(sock, "--order", "seq", NULL);
    int ws = wait_child(pid, 30000);
    /* The VM did not hang on its fault: the server killed it. */
    assert_true(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    assert_int_equal(uffd_server_wait(s, 5000), UFFD_END_ERROR);
    assert_int_equal(uffd_server_status(s, &e), UFFD_END_ERROR);
    assert_int_equal(e.code, -EIO);
    assert_non_null(strstr(e.msg, "read guest memory"));
    assert_int_equal(uffd_server_wait_ready(s, 0, NULL), 0); /* the handshake had succeeded */
    uffd_server_free(s);
}

/* ---- bad handshakes ---- */

static int new_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    assert_true(fd >= 0);
    struct uffdio_api api = {.api = UFFD_API};
    assert_int_equal(ioctl(fd, UFFDIO_API, &api), 0);
    return fd;
}

static void set_sun(struct sockaddr_un *sa, const char *path)
{
    assert_true(strlen(path) < sizeof sa->sun_path);
    memcpy(sa->sun_path, path, strlen(path) + 1);
}

/* Connect to sock, send data with fds, and return the connected socket. */
static int send_hs(const char *sock, const char *data, size_t len, const int *fds, size_t nfds)
{
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    set_sun(&sa, sock);
    assert_int_equal(connect(c, (struct sockaddr *)&sa, sizeof sa), 0);
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * 4)];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = len ? 1 : 0};
    if (nfds) {
        mh.msg_control = ctl.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    if (len || nfds)
        assert_true(sendmsg(c, &mh, MSG_NOSIGNAL) >= 0);
    return c;
}

static const char *GOOD =
    "[{\"base_host_virt_addr\":1048576,\"size\":1048576,\"offset\":0,\"page_size\":4096}]";

static void refused(const char *data, size_t len, const int *fds, size_t nfds, int want,
                    bool close_early)
{
    char sock[PATH_MAX];
    sock_path(sock, sizeof sock);
    uffd_opts_t o = {.handshake_timeout_ms = 300};
    uffd_server_t *s = NULL;
    err_t e = {0};
    assert_int_equal(uffd_server_start(sock, g_mem, &o, &s, &e), 0);
    int c = send_hs(sock, data, len, fds, nfds);
    if (close_early)
        shutdown(c, SHUT_WR);
    assert_int_equal(uffd_server_wait(s, 5000), UFFD_END_ERROR);
    assert_int_equal(uffd_server_status(s, &e), UFFD_END_ERROR);
    if (e.code != want)
        fail_msg("refused with %d (%s), want %d", e.code, e.msg, want);
    assert_int_equal(uffd_server_wait_ready(s, 0, NULL), want);
    /* The server closed the connection. */
    char b;
    struct pollfd p = {.fd = c, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 2000), 1);
    assert_true(recv(c, &b, 1, MSG_DONTWAIT) <= 0);
    close(c);
    uffd_server_free(s);
}

static void test_bad_handshakes(void **state)
{
    (void)state;
    int u1 = new_uffd(), u2 = new_uffd();
    int ev = eventfd(0, EFD_CLOEXEC);
    int before = count_fds();
    const size_t gl = strlen(GOOD);
    int two[2] = {u1, u2};
    char json[256];

    refused(GOOD, gl, NULL, 0, -EPROTO, false);     /* no fd */
    refused(GOOD, gl, two, 2, -EPROTO, false);      /* two fds */
    refused(GOOD, gl, &ev, 1, -EPROTO, false);      /* not a userfaultfd */
    refused("not json", 8, &u1, 1, -EPROTO, false); /* bad JSON */
    refused("[", 1, &u1, 1, -EPROTO, true);         /* truncated, then EOF */
    refused("[", 1, &u1, 1, -ETIMEDOUT, false);     /* truncated, then silence */
    refused(NULL, 0, NULL, 0, -EPROTO, true);       /* connect and close */
    refused(NULL, 0, NULL, 0, -ETIMEDOUT, false);   /* connect and say nothing */
    refused("[]", 2, &u1, 1, -EINVAL, false);       /* no regions */
    snprintf(json, sizeof json,
             "[{\"base_host_virt_addr\":0,\"size\":8192,\"offset\":%" PRIu64
             ",\"page_size\":4096}]",
             SIZE - 4096); /* beyond the memory */
    refused(json, strlen(json), &u1, 1, -EINVAL, false);
    snprintf(json, sizeof json,
             "[{\"base_host_virt_addr\":0,\"size\":8192,\"offset\":512,\"page_size\":4096}]");
    refused(json, strlen(json), &u1, 1, -EINVAL, false); /* offset not aligned */
    snprintf(json, sizeof json,
             "[{\"base_host_virt_addr\":0,\"size\":8192,\"offset\":0,\"page_size\":4096},"
             "{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":8192,\"page_size\":4096}]");
    refused(json, strlen(json), &u1, 1, -EINVAL, false); /* overlapping */
    char *big = xmalloc(UFFD_MAX_HANDSHAKE + 100);
    memset(big, ' ', UFFD_MAX_HANDSHAKE + 100);
    big[0] = '[';
    refused(big, UFFD_MAX_HANDSHAKE + 100, &u1, 1, -EMSGSIZE, false); /* too long */
    free(big);

    /* Every fd the server received was closed again. */
    close(u1);
    close(u2);
    close(ev);
    assert_int_equal(count_fds(), before - 3);
}

/* The message may come in pieces; only the first carries the fd. */
static void test_split_handshake(void **state)
{
    (void)state;
    char sock[PATH_MAX];
    sock_path(sock, sizeof sock);
    uffd_server_t *s = start(sock, 0);
    int u = new_uffd();
    int c = send_hs(sock, GOOD, 10, &u, 1);
    usleep(20000);
    assert_int_equal(uffd_server_wait_ready(s, 0, NULL), -ETIMEDOUT);
    assert_true(send(c, GOOD + 10, strlen(GOOD) - 10, MSG_NOSIGNAL) > 0);
    assert_int_equal(uffd_server_wait_ready(s, 5000, NULL), 0);
    /* The peer is this process, which lives on: only a stop ends it. */
    assert_int_equal(uffd_server_peer(s), getpid());
    uffd_server_stop(s);
    assert_int_equal(uffd_server_status(s, NULL), UFFD_END_STOPPED);
    uffd_server_free(s);
    close(c);
    close(u);
}

static void test_socket_path(void **state)
{
    (void)state;
    char sock[PATH_MAX];
    uffd_server_t *s = NULL;
    err_t e = {0};

    /* A stale socket file is replaced. */
    sock_path(sock, sizeof sock);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    set_sun(&sa, sock);
    assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
    close(l);
    assert_int_equal(uffd_server_start(sock, g_mem, NULL, &s, &e), 0);
    int c = send_hs(sock, NULL, 0, NULL, 0);
    close(c);
    uffd_server_free(s);

    /* Anything else is left alone. */
    sock_path(sock, sizeof sock);
    close(open(sock, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    assert_int_equal(uffd_server_start(sock, g_mem, NULL, &s, &e), -EEXIST);
    assert_null(s);
    assert_int_equal(access(sock, F_OK), 0);
    unlink(sock);

    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    assert_int_equal(uffd_server_start(longp, g_mem, NULL, &s, &e), -ENAMETOOLONG);
    uffd_opts_t o = {.prefetch = 3 * 4096};
    assert_int_equal(uffd_server_start(sock, g_mem, &o, &s, &e), -EINVAL);
    o.prefetch = 4 * UFFD_MAX_PREFETCH;
    assert_int_equal(uffd_server_start(sock, g_mem, &o, &s, &e), -EINVAL);

    /* peer_pid: another process is refused. */
    sock_path(sock, sizeof sock);
    o = (uffd_opts_t){.peer_pid = 1};
    assert_int_equal(uffd_server_start(sock, g_mem, &o, &s, &e), 0);
    int u = new_uffd();
    c = send_hs(sock, GOOD, strlen(GOOD), &u, 1);
    assert_int_equal(uffd_server_wait(s, 5000), UFFD_END_ERROR);
    assert_int_equal(uffd_server_wait_ready(s, 0, NULL), -EPERM);
    close(c);
    close(u);
    uffd_server_free(s);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FC_MEM\n", argv[0]);
        return 2;
    }
    g_fc_mem = argv[1];
    log_init("test_uffd", LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_sequential_prefetch),
        cmocka_unit_test(test_random_threads_no_prefetch),
        cmocka_unit_test(test_big_window),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_remove_churn),
        cmocka_unit_test(test_unmap),
        cmocka_unit_test(test_remap),
        cmocka_unit_test(test_split_vma),
        cmocka_unit_test(test_vm_killed),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_read_error_kills_vm),
        cmocka_unit_test(test_bad_handshakes),
        cmocka_unit_test(test_split_handshake),
        cmocka_unit_test(test_socket_path),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests_name("uffd", tests, setup, teardown);
}
