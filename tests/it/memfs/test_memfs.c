/* memfs through the real wrenn-agent binary: a layered map (built with mem.h) served as a FUSE
 * file, read and written through a shared mapping by an unprivileged process as QEMU would,
 * then stopped and committed as the next layer (mem_commit_diff), end to end.
 *
 * memfs_spawn starts /proc/self/exe: when this binary is started as `test_memfs memfs ...` it
 * execs the wrenn-agent named by WRENN_TEST_AGENT_BIN with the same arguments, so the server
 * under test is the agent's own. WRENN_TEST_MEMFS_BENCH=1 runs the measurements (512 MiB)
 * instead of the tests. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "mem/mem.h"
#include "memfs/memfs.h"

#define BS       MEM_BLOCK_SIZE
#define NOBODY   65534
#define FUSE_MAG 0x65735546
#define TIMEOUT  10000

/* ---- helpers --------------------------------------------------------------------------- */

static char base[64];   /* the group's temp dir */
static char layers[96]; /* its layers */
static char hdr[96];    /* the layered map */
static mem_map_t *map;  /* ... as loaded */
static uint8_t *want;   /* its content */
static uint64_t size;   /* its size */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Deterministic block content: generation g's version of block b. */
static void pattern(uint8_t *p, unsigned g, uint64_t b)
{
    uint64_t x = ((uint64_t)g << 40) ^ (b * 0x9e3779b97f4a7c15ull) ^ 0x1234567;
    for (size_t i = 0; i < BS; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
}

static int write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, p, n);
    close(fd);
    return w == (ssize_t)n ? 0 : -1;
}

static ssize_t read_file(const char *path, void *p, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)p + got, n - got, (off_t)got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    return (ssize_t)got;
}

/* Whether path is a mount point in our mount namespace. */
static int mounted(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return -1;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char mp[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && strcmp(mp, path) == 0)
            found = 1;
    }
    fclose(f);
    return found;
}

/* Unmount everything at or under prefix (cleanup after a failed test). */
static void unmount_under(const char *prefix)
{
    for (int round = 0; round < 8; round++) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        if (!f)
            return;
        char line[4096], mp[4096];
        int any = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 &&
                strncmp(mp, prefix, strlen(prefix)) == 0) {
                umount2(mp, MNT_DETACH);
                any = 1;
            }
        fclose(f);
        if (!any)
            return;
    }
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(p);
    return 0;
}

static void rm_rf(const char *p)
{
    nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Running (a zombie waiting for a reaper that is not us counts as gone). */
static bool alive(pid_t pid)
{
    if (pid <= 0 || kill(pid, 0) < 0)
        return false;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    ssize_t n = read_file(path, buf, sizeof buf - 1);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static int pidfd_of(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Wait up to ms for pid (any parent) to exit: true when it did. */
static bool wait_gone(pid_t pid, int ms)
{
    int fd = pidfd_of(pid);
    if (fd < 0)
        return true;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, ms);
    close(fd);
    if (n > 0) {
        int st;
        waitpid(pid, &st, WNOHANG);
    }
    return n > 0;
}

/* Fork a child that drops to uid/gid NOBODY (as QEMU runs) and runs fn; returns its exit code
 * (or 128 + signal). */
static int as_nobody(int (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            _exit(120);
        _exit(fn(arg));
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- per-test run directory with one memfs ------------------------------------------------ */

typedef struct run {
    char dir[128], mnt[160], upper[160], bitmap[160], log[160];
    pid_t pid; /* memfs */
    pid_t kid; /* a helper process of the test, killed at teardown */
    memfs_opts_t o;
} run_t;

static int run_setup(void **state)
{
    static int n;
    run_t *r = calloc(1, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s/run%d", base, ++n);
    snprintf(r->mnt, sizeof r->mnt, "%s/memfs", r->dir);
    snprintf(r->upper, sizeof r->upper, "%s/upper.mem", r->dir);
    snprintf(r->bitmap, sizeof r->bitmap, "%s/dirty.bitmap", r->dir);
    snprintf(r->log, sizeof r->log, "%s/memfs.log", r->dir);
    if (mkdir(r->dir, 0755) < 0 || mkdir(r->mnt, 0755) < 0)
        return -1;
    r->o = (memfs_opts_t){.map = hdr,
                          .layers = layers,
                          .upper = r->upper,
                          .bitmap = r->bitmap,
                          .mount = r->mnt,
                          .uid = NOBODY,
                          .gid = NOBODY,
                          .ready_fd = -1,
                          .log = r->log};
    r->pid = -1;
    r->kid = -1;
    *state = r;
    return 0;
}

static void dump_log(const run_t *r)
{
    char buf[8192];
    ssize_t n = read_file(r->log, buf, sizeof buf - 1);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
        printf("# memfs.log: %s\n", l);
}

static int run_teardown(void **state)
{
    run_t *r = *state;
    if (r->kid > 0) {
        kill(r->kid, SIGKILL);
        waitpid(r->kid, NULL, 0);
    }
    if (alive(r->pid)) {
        err_t e = {0};
        if (memfs_stop(r->mnt, r->pid, 3000, &e) < 0 && alive(r->pid)) {
            kill(r->pid, SIGKILL);
            wait_gone(r->pid, 3000);
        }
    }
    unmount_under(r->dir);
    if (getenv("WRENN_TEST_MEMFS_VERBOSE"))
        dump_log(r);
    rm_rf(r->dir);
    free(r);
    return 0;
}

static void spawn(run_t *r)
{
    err_t e = {0};
    int64_t t0 = now_us();
    int rc = memfs_spawn(&r->o, TIMEOUT, &r->pid, &e);
    if (rc < 0) {
        printf("# memfs_spawn: %d %s\n", rc, e.msg);
        dump_log(r);
    }
    assert_int_equal(rc, 0);
    printf("# memfs_spawn took %.1f ms\n", (double)(now_us() - t0) / 1000.0);
    assert_int_equal(mounted(r->mnt), 1);
}

static void stop(run_t *r)
{
    err_t e = {0};
    int64_t t0 = now_us();
    int rc = memfs_stop(r->mnt, r->pid, TIMEOUT, &e);
    if (rc < 0)
        printf("# memfs_stop: %d %s\n", rc, e.msg);
    assert_int_equal(rc, 0);
    printf("# memfs_stop took %.1f ms\n", (double)(now_us() - t0) / 1000.0);
    assert_false(alive(r->pid));
    assert_int_equal(mounted(r->mnt), 0);
    r->pid = -1;
    /* Under the sanitizers, the server's own findings land in its log. */
    char buf[65536];
    ssize_t n = read_file(r->log, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    if (strstr(buf, "Sanitizer") || strstr(buf, "runtime error")) {
        dump_log(r);
        fail_msg("memfs reported a sanitizer error");
    }
}

/* ---- the layered map ----------------------------------------------------------------------- */

/* Dirty blocks of one generation: set each listed block of the upper file to its content (or to
 * zeros) and mark it. */
static void diff_block(int fd, uint8_t *bits, uint8_t *w, unsigned g, uint64_t b, bool zero)
{
    uint8_t blk[BS];
    if (zero)
        memset(blk, 0, BS);
    else
        pattern(blk, g, b);
    assert_int_equal(pwrite(fd, blk, BS, (off_t)(b * BS)), BS);
    bits[b / 8] |= (uint8_t)(1u << (b % 8));
    memcpy(w + b * BS, blk, BS);
}

/* Generation 0 from a RAM file (every third block a hole), then two diffs overlapping each other
 * and the base, with data and zero blocks, so the map has extents of three layers and zeroes. */
static int group_setup(void **state)
{
    (void)state;
    snprintf(base, sizeof base, "/tmp/wrenn-memfs-XXXXXX");
    if (!mkdtemp(base) || chmod(base, 0755) < 0)
        return -1;
    snprintf(layers, sizeof layers, "%s/layers", base);
    snprintf(hdr, sizeof hdr, "%s/mem.hdr", base);
    mkdir(layers, 0755);
    size = 16u << 20;
    uint64_t nb = size / BS;
    want = calloc(1, size);
    err_t e = {0};

    char ram[128];
    snprintf(ram, sizeof ram, "%s/ram", base);
    int fd = open(ram, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        return -1;
    for (uint64_t b = 0; b < nb; b++) {
        if (b % 3 == 0)
            continue;
        pattern(want + b * BS, 0, b);
        if (pwrite(fd, want + b * BS, BS, (off_t)(b * BS)) != BS)
            return -1;
    }
    close(fd);
    mem_map_t *m0 = NULL, *m1 = NULL, *m2 = NULL;
    if (mem_commit_full(ram, size, layers, &m0, &e) < 0) {
        printf("# commit_full: %s\n", e.msg);
        return -1;
    }
    uint8_t *bits = calloc(1, nb / 8);
    char up[128];
    snprintf(up, sizeof up, "%s/up1", base);
    fd = open(up, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        return -1;
    for (uint64_t b = 1000; b < 2000; b += 2)
        diff_block(fd, bits, want, 1, b, false);
    for (uint64_t b = 3000; b < 3010; b++)
        diff_block(fd, bits, want, 1, b, true);
    close(fd);
    if (mem_commit_diff(m0, up, bits, layers, 0, &m1, &e) < 0) {
        printf("# commit_diff 1: %s\n", e.msg);
        return -1;
    }
    memset(bits, 0, nb / 8);
    snprintf(up, sizeof up, "%s/up2", base);
    fd = open(up, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        return -1;
    for (uint64_t b = 1500; b < 2500; b++)
        diff_block(fd, bits, want, 2, b, b % 5 == 0);
    close(fd);
    if (mem_commit_diff(m1, up, bits, layers, 0, &m2, &e) < 0) {
        printf("# commit_diff 2: %s\n", e.msg);
        return -1;
    }
    free(bits);
    if (mem_map_save(m2, hdr, &e) < 0) {
        printf("# map save: %s\n", e.msg);
        return -1;
    }
    printf("# map: generation %u, %u layers, %zu extents\n", m2->generation, m2->nlayers, m2->next);
    mem_map_free(m0);
    mem_map_free(m1);
    map = m2;
    return m2->nlayers >= 3 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    unmount_under(base);
    rm_rf(base);
    mem_map_free(map);
    free(want);
    return 0;
}

/* ---- content and writes, end to end -------------------------------------------------------- */

/* Blocks the unprivileged writer dirties through its mapping (and with pwrite). */
static const uint64_t mm_blocks[] = {0,    1,    5,    999,  1000, 1001, 1002, 1003,
                                     1499, 1500, 1501, 2499, 2500, 2501, 3005, 4095};
#define PW1_OFF (7 * BS + 10)  /* 100 bytes inside block 7 */
#define PW2_OFF (9 * BS - 100) /* 200 bytes across blocks 8 and 9 */

typedef struct rw_arg {
    const char *path;
    uint8_t *expect; /* new content (after the writes) */
} rw_arg_t;

/* Whether a mapping of the memfs file shows exactly the map's content (says where not). */
static bool matches_map(const uint8_t *m)
{
    for (uint64_t b = 0; b < size / BS; b++)
        if (memcmp(m + b * BS, want + b * BS, BS) != 0) {
            fprintf(stderr, "# child: block %" PRIu64 " differs from the map\n", b);
            return false;
        }
    return true;
}

static int child_rw(void *p)
{
    rw_arg_t *a = p;
    int fd = open(a->path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "# child: open: %s\n", strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != size || st.st_uid != NOBODY ||
        (st.st_mode & 0777) != 0600) {
        fprintf(stderr, "# child: bad stat\n");
        return 2;
    }
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return 3;
    /* As QEMU does with guest RAM: dirty tracking must stay per 4 KiB page even so. */
    madvise(m, size, MADV_HUGEPAGE);
    if (!matches_map(m))
        return 4;
    for (size_t i = 0; i < sizeof mm_blocks / sizeof mm_blocks[0]; i++)
        memcpy(m + mm_blocks[i] * BS, a->expect + mm_blocks[i] * BS, BS);
    if (pwrite(fd, a->expect + PW1_OFF, 100, PW1_OFF) != 100 ||
        pwrite(fd, a->expect + PW2_OFF, 200, PW2_OFF) != 200) {
        fprintf(stderr, "# child: pwrite: %s\n", strerror(errno));
        return 5;
    }
    if (msync(m, size, MS_SYNC) < 0 || munmap(m, size) < 0 || close(fd) < 0)
        return 6;
    return 0;
}

static bool bit(const uint8_t *bits, uint64_t b)
{
    return (bits[b / 8] >> (b % 8)) & 1;
}

static void test_content_and_writes(void **state)
{
    run_t *r = *state;
    spawn(r);
    /* The new content: mapped blocks get generation 9's version (block 5 becomes zeros), the
     * pwrites change a few bytes. */
    uint8_t *expect = malloc(size);
    memcpy(expect, want, size);
    uint8_t *dirty = calloc(1, size / BS / 8);
    for (size_t i = 0; i < sizeof mm_blocks / sizeof mm_blocks[0]; i++) {
        uint64_t b = mm_blocks[i];
        if (b == 5)
            memset(expect + b * BS, 0, BS);
        else
            pattern(expect + b * BS, 9, b);
        dirty[b / 8] |= (uint8_t)(1u << (b % 8));
    }
    for (size_t i = 0; i < 300; i++)
        expect[(i < 100 ? PW1_OFF + i : PW2_OFF + i - 100)] ^= 0x5a;
    for (uint64_t b = 7; b <= 9; b++)
        dirty[b / 8] |= (uint8_t)(1u << (b % 8));

    char path[200];
    snprintf(path, sizeof path, "%s/mem", r->mnt);
    rw_arg_t a = {.path = path, .expect = expect};
    assert_int_equal(as_nobody(child_rw, &a), 0);

    /* Root reads the new content through the file too. */
    uint8_t *got = malloc(size);
    assert_int_equal(read_file(path, got, size), (ssize_t)size);
    assert_memory_equal(got, expect, size);
    stop(r);

    /* Exactly the written blocks are dirty, and upper holds their new content. */
    uint8_t *bits = calloc(1, size / BS / 8);
    assert_int_equal(read_file(r->bitmap, bits, size / BS / 8), (ssize_t)(size / BS / 8));
    for (uint64_t b = 0; b < size / BS; b++)
        if (bit(bits, b) != bit(dirty, b)) {
            printf("# block %" PRIu64 ": dirty bit %d, expected %d\n", b, bit(bits, b),
                   bit(dirty, b));
            fail();
        }
    int ufd = open(r->upper, O_RDONLY | O_CLOEXEC);
    assert_true(ufd >= 0);
    uint8_t blk[BS];
    for (uint64_t b = 0; b < size / BS; b++)
        if (bit(dirty, b)) {
            assert_int_equal(pread(ufd, blk, BS, (off_t)(b * BS)), BS);
            assert_memory_equal(blk, expect + b * BS, BS);
        }
    close(ufd);

    /* Committed as the next layer, the new map reads back as the new content. */
    err_t e = {0};
    mem_map_t *next = NULL;
    int rc = mem_commit_diff(map, r->upper, bits, layers, 0, &next, &e);
    if (rc < 0)
        printf("# commit_diff: %s\n", e.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(next->generation, map->generation + 1);
    mem_reader_t *rd = NULL;
    assert_int_equal(mem_reader_open(next, layers, &rd, &e), 0);
    memset(got, 0, size);
    assert_int_equal(mem_read(rd, 0, got, size), 0);
    assert_memory_equal(got, expect, size);
    assert_true(mem_is_zero(rd, 5 * BS, BS));
    mem_reader_free(rd);
    mem_map_free(next);
    free(bits);
    free(got);
    free(dirty);
    free(expect);
}

/* ---- read-only: what several VMs map privately ---------------------------------------------- */

typedef struct ro_arg {
    const char *path;
    int step; /* 0: all checks; the writes of one mapper must not show in another's */
} ro_arg_t;

static int child_ro(void *p)
{
    ro_arg_t *a = p;
    /* QEMU opens its RAM file read-write whatever it does with it. */
    int fd = open(a->path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "# child: open: %s\n", strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != size || (st.st_mode & 0777) != 0666)
        return 2;
    /* No shared writable mapping (it would put changed pages in the page cache every other
     * mapper reads), no write. */
    void *sh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh != MAP_FAILED) {
        fprintf(stderr, "# child: MAP_SHARED was allowed\n");
        return 3;
    }
    char x = 1;
    if (pwrite(fd, &x, 1, 0) != -1 || errno != EROFS) {
        fprintf(stderr, "# child: pwrite: %s\n", strerror(errno));
        return 4;
    }
    if (ftruncate(fd, 0) == 0 ||
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, BS) == 0)
        return 5;
    /* A private mapping reads the layers' content and keeps its writes to itself. */
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED)
        return 6;
    madvise(m, size, MADV_HUGEPAGE);
    if (!matches_map(m))
        return 7;
    memset(m, 0xee, 3 * BS);
    munmap(m, size);
    close(fd);
    return 0;
}

static void test_read_only(void **state)
{
    run_t *r = *state;
    r->o.upper = NULL;
    r->o.bitmap = NULL;
    spawn(r);
    char path[200];
    snprintf(path, sizeof path, "%s/mem", r->mnt);
    ro_arg_t a = {.path = path};
    assert_int_equal(as_nobody(child_ro, &a), 0);
    /* Twice: the first one's private writes are nowhere to be seen. */
    assert_int_equal(as_nobody(child_ro, &a), 0);
    uint8_t *got = malloc(size);
    assert_int_equal(read_file(path, got, size), (ssize_t)size);
    assert_memory_equal(got, want, size);
    free(got);
    stop(r);
    struct stat st;
    assert_int_equal(stat(r->upper, &st), -1);
}

/* ---- what memfs refuses ---------------------------------------------------------------------- */

static void test_refusals(void **state)
{
    run_t *r = *state;
    spawn(r);
    char path[200], other[200];
    snprintf(path, sizeof path, "%s/mem", r->mnt);

    errno = 0;
    assert_int_equal(truncate(path, 0), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(truncate(path, (off_t)size * 2), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(truncate(path, (off_t)size), 0); /* no change: fine */
    assert_int_equal(open(path, O_RDWR | O_TRUNC | O_CLOEXEC), -1);
    assert_int_equal(errno, EPERM);
    snprintf(other, sizeof other, "%s/new", r->mnt);
    assert_int_equal(open(other, O_RDWR | O_CREAT | O_CLOEXEC, 0600), -1);
    assert_int_equal(errno, EROFS);
    assert_int_equal(mkdir(other, 0755), -1);
    assert_int_equal(errno, EROFS);
    assert_int_equal(symlink("mem", other), -1);
    assert_int_equal(errno, EROFS);
    assert_int_equal(link(path, other), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(rename(path, other), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(unlink(path), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(chmod(path, 0644), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(setxattr(path, "user.x", "1", 1, 0), -1);
    assert_int_equal(errno, EPERM);

    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(fallocate(fd, 0, 0, BS), -1);
    assert_int_equal(errno, EOPNOTSUPP);
    assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, BS), -1);
    assert_int_equal(errno, EOPNOTSUPP);

    /* Past the end: reads are short or empty, writes short or refused; the size never moves. */
    uint8_t buf[256];
    assert_int_equal(pread(fd, buf, sizeof buf, (off_t)size), 0);
    assert_int_equal(pread(fd, buf, 100, (off_t)size - 10), 10);
    assert_memory_equal(buf, want + size - 10, 10);
    memset(buf, 0xab, sizeof buf);
    assert_int_equal(pwrite(fd, buf, 100, (off_t)size), -1);
    assert_int_equal(errno, EFBIG);
    assert_int_equal(pwrite(fd, buf, 100, (off_t)size - 10), 10);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, (off_t)size);

    /* Still serving, and only the last block was written. */
    assert_int_equal(pread(fd, buf, 16, (off_t)size - 16), 16);
    assert_memory_equal(buf, want + size - 16, 6);
    assert_int_equal(buf[6], 0xab);
    assert_int_equal(pread(fd, buf, sizeof buf, 1000 * BS), (ssize_t)sizeof buf);
    assert_memory_equal(buf, want + 1000 * BS, sizeof buf);
    assert_int_equal(fsync(fd), 0);
    close(fd);
    DIR *d = opendir(r->mnt);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += strcmp(de->d_name, "mem") == 0 ? 1 : 0;
    closedir(d);
    assert_int_equal(n, 1);
    stop(r);
    uint8_t bits[1];
    int fdb = open(r->bitmap, O_RDONLY | O_CLOEXEC);
    assert_int_equal(pread(fdb, bits, 1, (off_t)(size / BS / 8 - 1)), 1);
    close(fdb);
    assert_int_equal(bits[0], 0x80); /* block 4095 alone */
}

/* ---- survives its starter, signals ------------------------------------------------------------
 */

static void test_survives_parent(void **state)
{
    run_t *r = *state;
    int pfd[2];
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t starter = fork();
    if (starter == 0) {
        /* An "agent" that starts memfs, reports its pid and then waits to be killed. */
        err_t e = {0};
        pid_t p = -1;
        if (memfs_spawn(&r->o, TIMEOUT, &p, &e) < 0) {
            fprintf(stderr, "# starter: %s\n", e.msg);
            p = -1;
        }
        if (write(pfd[1], &p, sizeof p) != sizeof p)
            _exit(1);
        pause();
        _exit(0);
    }
    r->kid = starter;
    close(pfd[1]);
    pid_t p = -1;
    assert_int_equal(read(pfd[0], &p, sizeof p), (ssize_t)sizeof p);
    close(pfd[0]);
    assert_true(p > 0);
    r->pid = p;
    /* Its own session, not ours or its starter's. */
    assert_int_equal(getsid(p), p);
    assert_int_not_equal(getsid(0), p);
    kill(starter, SIGKILL);
    waitpid(starter, NULL, 0);
    r->kid = -1;
    /* SIGTERM, SIGINT and SIGHUP do not stop it either. */
    kill(p, SIGTERM);
    kill(p, SIGINT);
    kill(p, SIGHUP);
    struct timespec ts = {0, 200 * 1000000};
    nanosleep(&ts, NULL);
    assert_true(alive(p));
    char comm[64] = "", path[200];
    snprintf(path, sizeof path, "/proc/%d/comm", (int)p);
    read_file(path, comm, sizeof comm - 1);
    assert_string_equal(comm, "memfs\n");
    /* It holds no fd of its starter but its log. */
    snprintf(path, sizeof path, "/proc/%d/fd", (int)p);
    DIR *d = opendir(path);
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.')
            continue;
        char lp[600], tgt[600] = "";
        snprintf(lp, sizeof lp, "%s/%s", path, de->d_name);
        ssize_t n = readlink(lp, tgt, sizeof tgt - 1);
        if (n > 0)
            tgt[n] = '\0';
        if (strcmp(tgt, "/dev/null") != 0 && strcmp(tgt, r->log) != 0 &&
            strcmp(tgt, "/dev/fuse") != 0 && strcmp(tgt, r->upper) != 0 &&
            strcmp(tgt, r->bitmap) != 0 && strstr(tgt, ".layer") == NULL &&
            strncmp(tgt, "anon_inode:", 11) != 0) {
            printf("# unexpected fd %s -> %s\n", de->d_name, tgt);
            fail();
        }
    }
    closedir(d);
    /* Still serving. */
    uint8_t buf[BS];
    snprintf(path, sizeof path, "%s/mem", r->mnt);
    assert_int_equal(read_file(path, buf, BS), BS);
    assert_memory_equal(buf, want, BS);
    /* Stopped by someone who is not its parent. */
    stop(r);
}

/* ---- stop while mapped -------------------------------------------------------------------------
 */

typedef struct hold_arg {
    const char *path;
    int ready, go; /* pipe ends */
} hold_arg_t;

static int child_hold(void *p)
{
    hold_arg_t *a = p;
    int fd = open(a->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return 1;
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return 2;
    close(fd);
    m[4 * BS] = 0x77;
    char c = 'x';
    if (write(a->ready, &c, 1) != 1)
        return 3;
    /* Keep mapping it until told; then check it is still served. */
    if (read(a->go, &c, 1) != 1)
        return 4;
    if (memcmp(m + 2000 * BS, want + 2000 * BS, BS) != 0 || m[4 * BS] != 0x77)
        return 5;
    m[6 * BS] = 0x66;
    return msync(m, size, MS_SYNC) == 0 ? 0 : 6;
}

static void test_stop_while_mapped(void **state)
{
    run_t *r = *state;
    spawn(r);
    char path[200];
    snprintf(path, sizeof path, "%s/mem", r->mnt);
    int rp[2], gp[2];
    assert_int_equal(pipe2(rp, O_CLOEXEC), 0);
    assert_int_equal(pipe2(gp, O_CLOEXEC), 0);
    hold_arg_t a = {.path = path, .ready = rp[1], .go = gp[0]};
    fflush(NULL);
    pid_t kid = fork();
    if (kid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            _exit(120);
        _exit(child_hold(&a));
    }
    r->kid = kid;
    close(rp[1]);
    close(gp[0]);
    char c;
    assert_int_equal(read(rp[0], &c, 1), 1);

    err_t e = {0};
    int64_t t0 = now_us();
    int rc = memfs_stop(r->mnt, r->pid, 1000, &e);
    double ms = (double)(now_us() - t0) / 1000.0;
    printf("# memfs_stop while mapped: %d (%s) after %.0f ms\n", rc, e.msg, ms);
    assert_int_equal(rc, -EBUSY);
    assert_true(ms < 3000);
    /* Detached: gone from the namespace, but the holder is still served (also its writes). */
    assert_int_equal(mounted(r->mnt), 0);
    assert_true(alive(r->pid));
    /* Asked again meanwhile: nothing left to flush or unmount, the server still runs. */
    assert_int_equal(memfs_stop(r->mnt, r->pid, 300, &e), -ETIMEDOUT);
    assert_true(alive(r->pid));
    assert_int_equal(write(gp[1], "g", 1), 1);
    int st;
    assert_int_equal(waitpid(kid, &st, 0), kid);
    r->kid = -1;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* With the last user gone the file system goes, and memfs with it. */
    assert_int_equal(memfs_stop(r->mnt, r->pid, 5000, &e), 0);
    assert_false(alive(r->pid));
    r->pid = -1;
    uint8_t bits[1];
    assert_int_equal(read_file(r->bitmap, bits, 1), 1);
    assert_int_equal(bits[0], (1u << 4) | (1u << 6));
    close(rp[0]);
    close(gp[1]);
}

/* ---- refusing to start
 * --------------------------------------------------------------------------- */

static void expect_refusal(run_t *r, int code, const char *needle)
{
    err_t e = {0};
    pid_t p = -1;
    int64_t t0 = now_us();
    int rc = memfs_spawn(&r->o, TIMEOUT, &p, &e);
    printf("# refused in %.1f ms: %d %s\n", (double)(now_us() - t0) / 1000.0, rc, e.msg);
    assert_int_equal(rc, code);
    assert_non_null(strstr(e.msg, needle));
    assert_int_equal(p, -1);
    assert_int_equal(mounted(r->mnt), 0);
}

static void test_refuses_to_start(void **state)
{
    run_t *r = *state;
    char bad[200], empty[200];
    uint8_t buf[65536];

    /* A corrupt map. */
    snprintf(bad, sizeof bad, "%s/bad.hdr", r->dir);
    ssize_t n = read_file(hdr, buf, sizeof buf);
    assert_true(n > 64);
    buf[n / 2] ^= 0x01;
    assert_int_equal(write_file(bad, buf, (size_t)n), 0);
    r->o.map = bad;
    expect_refusal(r, -EBADMSG, "bad.hdr");
    /* A missing map. */
    snprintf(bad, sizeof bad, "%s/none.hdr", r->dir);
    expect_refusal(r, -ENOENT, "none.hdr");
    /* Missing layers. */
    r->o.map = hdr;
    snprintf(empty, sizeof empty, "%s/nolayers", r->dir);
    mkdir(empty, 0755);
    r->o.layers = empty;
    expect_refusal(r, -ENOENT, "nolayers");
    r->o.layers = layers;
    /* A bitmap of the wrong size. */
    assert_int_equal(write_file(r->bitmap, buf, 3), 0);
    expect_refusal(r, -EINVAL, "bitmap");
    unlink(r->bitmap);
    /* The mount point is not a directory. */
    r->o.mount = hdr;
    expect_refusal(r, -ENOTDIR, "not a directory");
    r->o.mount = r->mnt;
    /* Already mounted. */
    spawn(r);
    err_t e = {0};
    pid_t p = -1;
    assert_int_equal(memfs_spawn(&r->o, TIMEOUT, &p, &e), -EBUSY);
    assert_int_equal(p, -1);
    stop(r);
    /* A stop with no server (or a pid that is not one) only unmounts, and is fine. */
    assert_int_equal(memfs_stop(r->mnt, 0, 1000, &e), 0);
    assert_int_equal(memfs_stop(r->mnt, getpid(), 1000, &e), 0);
}

/* A server killed while serving leaves a dead mount: spawn refuses it, stop cleans it up. */
static void test_dead_server(void **state)
{
    run_t *r = *state;
    spawn(r);
    kill(r->pid, SIGKILL);
    assert_true(wait_gone(r->pid, 5000));
    assert_int_equal(mounted(r->mnt), 1);
    err_t e = {0};
    pid_t p = -1;
    assert_int_equal(memfs_spawn(&r->o, TIMEOUT, &p, &e), -EBUSY);
    assert_int_equal(memfs_stop(r->mnt, r->pid, 2000, &e), 0);
    r->pid = -1;
    assert_int_equal(mounted(r->mnt), 0);
    /* ... and then it starts again over the same upper and bitmap. */
    spawn(r);
    stop(r);
}

/* A server that stops answering (here: SIGSTOP) cannot hang memfs_stop past its deadline; once
 * it is killed, everything is released. */
static void test_frozen_server(void **state)
{
    run_t *r = *state;
    spawn(r);
    char path[200];
    snprintf(path, sizeof path, "%s/mem", r->mnt);
    /* Something to flush: a dirty page in the kernel's cache of the file. */
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(m != MAP_FAILED);
    m[0] ^= 1;
    munmap(m, size);
    close(fd);
    assert_int_equal(kill(r->pid, SIGSTOP), 0);
    err_t e = {0};
    int64_t t0 = now_us();
    int rc = memfs_stop(r->mnt, r->pid, 500, &e);
    double ms = (double)(now_us() - t0) / 1000.0;
    printf("# memfs_stop of a frozen server: %d (%s) after %.0f ms\n", rc, e.msg, ms);
    assert_int_equal(rc, -ETIMEDOUT);
    assert_true(ms < 2000);
    assert_int_equal(mounted(r->mnt), 0); /* detached */
    kill(r->pid, SIGKILL);
    assert_true(wait_gone(r->pid, 5000));
    r->pid = -1;
}

/* ---- measurements (WRENN_TEST_MEMFS_BENCH=1)
 * --------------------------------------------------------- */

static double seq_read(const char *path, int flags, bool huge)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    fstat(fd, &st);
    size_t len = (size_t)st.st_size;
    uint8_t *m = mmap(NULL, len, PROT_READ, flags, fd, 0);
    assert_true(m != MAP_FAILED);
    if (huge)
        madvise(m, len, MADV_HUGEPAGE);
    int64_t t0 = now_us();
    volatile uint64_t sum = 0;
    for (size_t i = 0; i < len; i += BS)
        sum += *(const uint64_t *)(m + i);
    (void)sum;
    double s = (double)(now_us() - t0) / 1e6;
    munmap(m, len);
    close(fd);
    return (double)len / 1048576.0 / s;
}

static void set_bdi(const char *mnt, const char *knob, const char *v)
{
    struct stat st;
    assert_int_equal(stat(mnt, &st), 0);
    char p[128];
    snprintf(p, sizeof p, "/sys/class/bdi/%u:%u/%s", major(st.st_dev), minor(st.st_dev), knob);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, v, strlen(v)) < 0)
            printf("# %s: %s\n", p, strerror(errno));
        close(fd);
    }
}

static void test_bench(void **state)
{
    run_t *r = *state;
    /* A 512 MiB generation-0 map of incompressible data. */
    uint64_t bsz = 512u << 20;
    char ram[200], bhdr[200], blayers[200], path[200];
    snprintf(ram, sizeof ram, "%s/ram", r->dir);
    snprintf(bhdr, sizeof bhdr, "%s/bench.hdr", r->dir);
    snprintf(blayers, sizeof blayers, "%s/layers", r->dir);
    mkdir(blayers, 0755);
    int fd = open(ram, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uint8_t *chunk = malloc(1u << 20);
    for (uint64_t off = 0; off < bsz; off += 1u << 20) {
        for (size_t i = 0; i < (1u << 20); i += BS)
            pattern(chunk + i, 3, (off + i) / BS);
        assert_int_equal(pwrite(fd, chunk, 1u << 20, (off_t)off), 1 << 20);
    }
    free(chunk);
    close(fd);
    err_t e = {0};
    mem_map_t *m = NULL;
    assert_int_equal(mem_commit_full(ram, bsz, blayers, &m, &e), 0);
    assert_int_equal(mem_map_save(m, bhdr, &e), 0);
    mem_map_free(m);
    r->o.map = bhdr;
    r->o.layers = blayers;
    snprintf(path, sizeof path, "%s/mem", r->mnt);

    static const struct {
        const char *name;
        int flags;
        bool huge;
    } modes[] = {{"MAP_PRIVATE", MAP_PRIVATE, false},
                 {"MAP_SHARED", MAP_SHARED, false},
                 {"MAP_SHARED+MADV_HUGEPAGE", MAP_SHARED, true}};
    /* The same read straight from the layer file (ext4, page-cached): the baseline. */
    char layer[600] = "";
    struct dirent *de;
    DIR *d = opendir(blayers);
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".layer"))
            snprintf(layer, sizeof layer, "%s/%s", blayers, de->d_name);
    closedir(d);
    printf("# bench read 512 MiB of the layer file itself, MAP_PRIVATE: %.0f MB/s\n",
           seq_read(layer, MAP_PRIVATE, false));
    for (size_t i = 0; i < 3; i++) {
        spawn(r); /* a fresh mount: a cold FUSE cache (the layer file itself is page-cached) */
        double cold = seq_read(path, modes[i].flags, modes[i].huge);
        double warm = seq_read(path, modes[i].flags, modes[i].huge);
        printf("# bench read 512 MiB %s: cold %.0f MB/s, warm %.0f MB/s\n", modes[i].name, cold,
               warm);
        stop(r);
        unlink(r->upper);
        unlink(r->bitmap);
    }

    /* Write-back of 200 MiB dirtied through a shared mapping, with the bdi tuned (as memfs
     * leaves it) and with the kernel's FUSE defaults put back. */
    for (int i = 0; i < 4; i++) {
        int tuned = i % 2 == 0;
        spawn(r);
        if (!tuned) {
            set_bdi(r->mnt, "max_ratio", "1");
            set_bdi(r->mnt, "strict_limit", "1");
        }
        fd = open(path, O_RDWR | O_CLOEXEC);
        uint8_t *mm = mmap(NULL, bsz, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        assert_true(mm != MAP_FAILED);
        size_t dirty = 200u << 20;
        /* Fault the pages in first, so the timing below is the dirtying (and its throttling)
         * alone, not the reads of the pages. */
        volatile uint64_t sum = 0;
        for (size_t off = 0; off < dirty; off += BS)
            sum += mm[off];
        (void)sum;
        int64_t t0 = now_us();
        for (size_t off = 0; off < dirty; off += BS)
            memset(mm + off, (int)(off / BS) | 1, BS);
        int64_t t1 = now_us();
        assert_int_equal(msync(mm, bsz, MS_SYNC), 0);
        int64_t t2 = now_us();
        munmap(mm, bsz);
        close(fd);
        printf("# bench write-back 200 MiB (%s): dirtying %.0f ms (%.0f MB/s), then msync "
               "%.0f ms; total %.0f MB/s\n",
               tuned ? "bdi tuned: max_ratio=100 strict_limit=0"
                     : "kernel defaults: max_ratio=1 strict_limit=1",
               (double)(t1 - t0) / 1000.0, (double)dirty / 1048576.0 / ((double)(t1 - t0) / 1e6),
               (double)(t2 - t1) / 1000.0, (double)dirty / 1048576.0 / ((double)(t2 - t0) / 1e6));
        stop(r);
        unlink(r->upper);
        unlink(r->bitmap);
    }
    dump_log(r);
}

int main(int argc, char **argv)
{
    /* memfs_spawn runs /proc/self/exe memfs ...: hand that over to the real agent binary. */
    if (argc > 1 && strcmp(argv[1], "memfs") == 0) {
        const char *agent = getenv("WRENN_TEST_AGENT_BIN");
        /* The shared build tree may be relinking it right now: wait for it a little. */
        for (int i = 0; agent && i < 100; i++) {
            execv(agent, argv);
            if (errno != ENOENT && errno != ETXTBSY)
                break;
            struct timespec ts = {0, 50 * 1000000};
            nanosleep(&ts, NULL);
        }
        fprintf(stderr, "test_memfs: cannot exec the agent %s (WRENN_TEST_AGENT_BIN): %s\n",
                agent ? agent : "(unset)", strerror(errno));
        return 127;
    }
    cmocka_set_message_output(CM_OUTPUT_TAP);
    if (geteuid() != 0) {
        printf("1..0 # SKIP memfs tests need root (FUSE mounts, setuid)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_content_and_writes, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_refusals, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_read_only, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_survives_parent, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_stop_while_mapped, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_refuses_to_start, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_dead_server, run_setup, run_teardown),
        cmocka_unit_test_setup_teardown(test_frozen_server, run_setup, run_teardown),
    };
    /* Only on request (cmocka 1.1's TAP output reports a skipped test as "not ok"). */
    const struct CMUnitTest bench[] = {
        cmocka_unit_test_setup_teardown(test_bench, run_setup, run_teardown),
    };
    if (getenv("WRENN_TEST_MEMFS_BENCH"))
        return cmocka_run_group_tests_name("memfs_bench", bench, group_setup, group_teardown);
    return cmocka_run_group_tests_name("memfs", tests, group_setup, group_teardown);
}
