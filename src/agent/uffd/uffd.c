/* userfaultfd page server (see uffd.h for the protocol and the serving rules).
 *
 * One thread per server: accept, handshake, then a loop of poll on {uffd, stop eventfd, VM
 * pidfd} → read (a batch of up to 64 messages, non-blocking) → handle, reading again at once only
 * after a full batch. A fault costs poll + read + one source read + one UFFDIO_COPY. The hot path
 * allocates nothing and logs nothing: the window of pages to place is planned in a preallocated
 * array, data is read straight into one aligned buffer and placed with one UFFDIO_COPY per
 * contiguous run.
 *
 * State per region is one bitmap, `done`: a set bit means the snapshot's content no longer
 * applies to that page (it was placed, or removed by the VM), so a later missing fault there is a
 * dropped page and gets a zero page. Counters are written by the server thread only (relaxed
 * load + store, no locked instructions) and read by anyone.
 */
#include "uffd.h"

#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SHIFT        12
#define UFFD__BATCH       64
#define MAX_HANDSHAKE_FDS 8      /* room to see (and close) fds beyond the one we want */
#define STRAY_LIMIT       10000u /* the same stray page this many times in a row is an error */
#define DEF_CONNECT_MS    30000
#define DEF_HANDSHAKE_MS  5000

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; not yet in every libc's headers */
#endif

_Static_assert(UFFD_PAGE_SIZE == 1u << PAGE_SHIFT, "page shift");
_Static_assert(MEM_BLOCK_SIZE == UFFD_PAGE_SIZE, "a memory block is a page");

typedef struct region {
    uint64_t base;  /* host virtual address */
    uint64_t size;  /* bytes */
    uint64_t off;   /* guest memory offset of base */
    uint64_t pages; /* size / page size */
    uint64_t *done; /* one bit per page, see the top of the file */
} region_t;

/* A fault waiting behind EAGAIN, and since when. */
typedef struct deferred {
    uint64_t addr;
    int64_t since;
} deferred_t;

/* A run of pages of one region to place in one go: all zero, or all data. */
typedef struct piece {
    uint64_t pg, n;
    bool zero;
} piece_t;

typedef struct counters {
    _Atomic uint64_t faults, pages_copied, bytes_copied, zero_pages, prefetched, copy_calls,
        removes, unmaps, remaps, refaults, exists, retries, strays;
} counters_t;

struct uffd_server {
    /* Set at start, read-only afterwards. */
    char *path;
    char *name;
    uffd_source_t src;
    uint32_t prefetch;
    int connect_ms, handshake_ms;
    pid_t want_pid;
    bool keep_vm;
    int stopfd, donefd;
    dev_t sock_dev;
    ino_t sock_ino;

    /* Owned by the server thread while it runs. */
    int lfd, cfd, ufd, pidfd;
    region_t *reg;
    size_t nreg, capreg, last;
    uint8_t *buf; /* prefetch bytes, page aligned (mmap) */
    piece_t *pieces;
    deferred_t *def; /* faults deferred by EAGAIN */
    size_t ndef, capdef;
    uint64_t stray_addr;
    unsigned stray_n;
    bool sock_linked;

    _Atomic pid_t peer;
    _Atomic bool stop;
    counters_t st;

    /* mu guards these. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool handshaken;
    uffd_end_t end;
    err_t err;

    /* join_mu serialises stop/join. */
    pthread_mutex_t join_mu;
    bool started, joined;
    pthread_t thread;
};

#define BUMP(s, f, v)                                                                              \
    atomic_store_explicit(&(s)->st.f,                                                              \
                          atomic_load_explicit(&(s)->st.f, memory_order_relaxed) + (v),            \
                          memory_order_relaxed)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *nm(const uffd_server_t *s)
{
    return s->name ? s->name : "-";
}

/* ---- bitmaps ---- */

static inline bool bit_get(const uint64_t *b, uint64_t i)
{
    return (b[i >> 6] >> (i & 63)) & 1u;
}

static inline void bit_set(uint64_t *b, uint64_t i)
{
    b[i >> 6] |= (uint64_t)1 << (i & 63);
}

static void bits_set(uint64_t *b, uint64_t i, uint64_t n)
{
    for (; n > 0 && (i & 63); i++, n--)
        bit_set(b, i);
    for (; n >= 64; i += 64, n -= 64)
        b[i >> 6] = UINT64_MAX;
    for (; n > 0; i++, n--)
        bit_set(b, i);
}

static uint64_t *bits_new(uint64_t n)
{
    return xcalloc((size_t)((n + 63) / 64), sizeof(uint64_t));
}

/* ---- the memory source ---- */

static int mem_src_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    return mem_read(ctx, off, buf, len);
}

static uint64_t mem_src_extent(void *ctx, uint64_t off, bool *zero)
{
    const mem_map_t *m = mem_reader_map(ctx);
    uint64_t run = 1;
    uint32_t layer = mem_map_lookup(m, off / m->block_size, &run);
    *zero = layer == MEM_ZERO;
    return run * m->block_size;
}

void uffd_source_mem(uffd_source_t *src, mem_reader_t *r)
{
    *src = (uffd_source_t){
        .ctx = r,
        .size = mem_reader_map(r)->size,
        .read = mem_src_read,
        .extent = mem_src_extent,
    };
}

/* ---- handshake JSON ---- */

static int get_u64(json_t *o, const char *key, size_t i, bool *present, uint64_t *out, err_t *e)
{
    json_t *v = json_object_get(o, key);
    *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return err_set(e, -EPROTO, "region %zu: %s is not a non-negative integer", i, key);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* "page_size_kib" holds bytes in every Firecracker that sends it, but a value below one page can
 * only mean KiB: take it as such. */
static uint64_t kib_field(uint64_t v)
{
    return v < UFFD_PAGE_SIZE ? v * 1024 : v;
}

static bool overlap(uint64_t a, uint64_t an, uint64_t b, uint64_t bn)
{
    return a < b + bn && b < a + an;
}

static int parse_regions(const void *data, size_t len, uint64_t mem_size, uffd_region_t *out,
                         size_t max, size_t *n, bool *more, err_t *e)
{
    json_error_t je;
    int rc = 0;
    *n = 0;
    if (more)
        *more = false;
    if (len > UFFD_MAX_HANDSHAKE)
        return err_set(e, -EMSGSIZE, "handshake longer than %u bytes", UFFD_MAX_HANDSHAKE);
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (more && json_error_code(&je) == json_error_premature_end_of_input) {
            *more = true;
            return -EAGAIN;
        }
        return err_set(e, -EPROTO, "handshake is not JSON: %s (at byte %d)", je.text, je.position);
    }
    if (!json_is_array(root)) {
        rc = err_set(e, -EPROTO, "handshake is not a JSON array of regions");
        goto out;
    }
    size_t cnt = json_array_size(root);
    if (cnt == 0) {
        rc = err_set(e, -EINVAL, "handshake has no regions");
        goto out;
    }
    if (cnt > max) {
        rc = err_set(e, -EINVAL, "handshake has %zu regions, at most %zu are supported", cnt, max);
        goto out;
    }
    for (size_t i = 0; i < cnt; i++) {
        json_t *o = json_array_get(root, i);
        if (!json_is_object(o)) {
            rc = err_set(e, -EPROTO, "region %zu is not an object", i);
            goto out;
        }
        uffd_region_t r = {0};
        bool has_base, has_size, has_off, has_ps, has_kib;
        uint64_t kib = 0;
        if ((rc = get_u64(o, "base_host_virt_addr", i, &has_base, &r.base, e)) < 0 ||
            (rc = get_u64(o, "size", i, &has_size, &r.size, e)) < 0 ||
            (rc = get_u64(o, "offset", i, &has_off, &r.offset, e)) < 0 ||
            (rc = get_u64(o, "page_size", i, &has_ps, &r.page_size, e)) < 0 ||
            (rc = get_u64(o, "page_size_kib", i, &has_kib, &kib, e)) < 0)
            goto out;
        if (!has_base || !has_size || !has_off || (!has_ps && !has_kib)) {
            rc = err_set(e, -EPROTO,
                         "region %zu lacks one of base_host_virt_addr, size, offset, page_size", i);
            goto out;
        }
        if (has_kib) {
            if (has_ps && kib_field(kib) != r.page_size) {
                rc = err_set(e, -EINVAL, "region %zu: page_size and page_size_kib disagree", i);
                goto out;
            }
            r.page_size = kib_field(kib);
        }
        if (r.page_size != UFFD_PAGE_SIZE) {
            rc = err_set(e, -EINVAL, "region %zu: page size %" PRIu64 " not supported (only %u)", i,
                         r.page_size, UFFD_PAGE_SIZE);
            goto out;
        }
        if (r.size == 0 || (r.base | r.size | r.offset) % UFFD_PAGE_SIZE != 0) {
            rc = err_set(e, -EINVAL,
                         "region %zu: base, size and offset must be page aligned, size > 0", i);
            goto out;
        }
        if (r.base > UINT64_MAX - r.size) {
            rc = err_set(e, -EINVAL, "region %zu: address range wraps around", i);
            goto out;
        }
        if (r.offset > mem_size || r.size > mem_size - r.offset) {
            rc = err_set(e, -EINVAL,
                         "region %zu: [%" PRIu64 ", +%" PRIu64
                         ") is beyond the memory size %" PRIu64,
                         i, r.offset, r.size, mem_size);
            goto out;
        }
        for (size_t j = 0; j < i; j++) {
            if (overlap(out[j].base, out[j].size, r.base, r.size)) {
                rc = err_set(e, -EINVAL, "regions %zu and %zu overlap in the VM's address space", j,
                             i);
                goto out;
            }
            if (overlap(out[j].offset, out[j].size, r.offset, r.size)) {
                rc = err_set(e, -EINVAL, "regions %zu and %zu overlap in guest memory", j, i);
                goto out;
            }
        }
        out[i] = r;
    }
    *n = cnt;
out:
    json_decref(root);
    return rc;
}

int uffd_parse_regions(const void *data, size_t len, uint64_t mem_size, uffd_region_t *out,
                       size_t max, size_t *n, err_t *e)
{
    return parse_regions(data, len, mem_size, out, max, n, NULL, e);
}

/* ---- names, status ---- */

const char *uffd_end_name(uffd_end_t end)
{
    switch (end) {
    case UFFD_RUNNING:
        return "running";
    case UFFD_END_STOPPED:
        return "stopped";
    case UFFD_END_VM_GONE:
        return "vm_gone";
    case UFFD_END_ERROR:
        return "error";
    }
    return "unknown";
}

static void finish(uffd_server_t *s, uffd_end_t end, const err_t *e)
{
    pthread_mutex_lock(&s->mu);
    if (s->end == UFFD_RUNNING) {
        s->end = end;
        if (end == UFFD_END_ERROR && e)
            s->err = *e;
    }
    /* Under the lock (a non-blocking eventfd write, it cannot stall), so that whoever sees the
     * fd readable or is woken also sees the end. */
    uint64_t one = 1;
    while (write(s->donefd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- socket and handshake ---- */

static bool peer_gone(const uffd_server_t *s)
{
    if (s->pidfd < 0)
        return false;
    struct pollfd p = {.fd = s->pidfd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Wait until fd is readable, the server is stopped or deadline passes: 0, -ECANCELED,
 * -ETIMEDOUT. deadline < 0: none. */
static int wait_in(uffd_server_t *s, int fd, int64_t deadline)
{
    for (;;) {
        int tmo = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                return -ETIMEDOUT;
            tmo = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->stopfd, .events = POLLIN}};
        int n = poll(p, 2, tmo);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (p[1].revents)
            return -ECANCELED;
        if (p[0].revents)
            return 0;
    }
}

static void unlink_socket(uffd_server_t *s)
{
    struct stat st;
    if (!s->sock_linked)
        return;
    s->sock_linked = false;
    /* Only our own socket: the caller may have put something else there since. */
    if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == s->sock_dev &&
        st.st_ino == s->sock_ino)
        unlink(s->path);
}

static int accept_peer(uffd_server_t *s, err_t *e)
{
    int64_t deadline = s->connect_ms < 0 ? -1 : now_ms() + s->connect_ms;
    int rc;
    for (;;) {
        rc = wait_in(s, s->lfd, deadline);
        if (rc == -ETIMEDOUT)
            return err_set(e, rc, "no connection within %d ms", s->connect_ms);
        if (rc == -ECANCELED)
            return err_set(e, rc, "stopped before the VM connected");
        if (rc < 0)
            return err_set(e, rc, "poll: %s", strerror(-rc));
        s->cfd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (s->cfd >= 0)
            break;
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            return err_errno(e, "accept");
    }
    /* Exactly one connection: nobody else may reach this server any more. */
    xclose(&s->lfd);
    unlink_socket(s);

    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(s->cfd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0)
        return err_errno(e, "SO_PEERCRED");
    if (cr.pid <= 0)
        return err_set(e, -EPERM, "the peer's pid is not visible here");
    if (s->want_pid > 0 && cr.pid != s->want_pid)
        return err_set(e, -EPERM, "connection from pid %d, expected pid %d", (int)cr.pid,
                       (int)s->want_pid);
    /* SO_PEERPIDFD names the very process that connected (no pid reuse window); pidfd_open of
     * the pid is the fallback for kernels before 6.5. */
    int pfd = -1;
    socklen_t pl = sizeof pfd;
    if (getsockopt(s->cfd, SOL_SOCKET, SO_PEERPIDFD, &pfd, &pl) == 0 && pfd >= 0)
        s->pidfd = pfd;
    else
        s->pidfd = (int)syscall(SYS_pidfd_open, cr.pid, 0);
    if (s->pidfd < 0)
        return err_errno(e, "pidfd of the peer");
    atomic_store(&s->peer, cr.pid);
    return 0;
}

static bool is_userfaultfd(int fd)
{
    char link[64], target[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return false;
    target[n] = '\0';
    return strcmp(target, "anon_inode:[userfaultfd]") == 0;
}

/* Receive the one message. On success s->ufd holds the userfaultfd and regions/nreg the
 * regions. Every fd received is either kept as s->ufd or closed. */
static int handshake(uffd_server_t *s, uffd_region_t *regions, size_t *nreg, err_t *e)
{
    int64_t deadline = now_ms() + s->handshake_ms;
    char *buf = xmalloc(UFFD_MAX_HANDSHAKE + 1);
    int fds[MAX_HANDSHAKE_FDS];
    size_t nfds = 0, len = 0;
    bool ctrunc = false;
    int rc;

    for (;;) {
        rc = wait_in(s, s->cfd, deadline);
        if (rc == -ETIMEDOUT) {
            rc = err_set(e, rc, "no complete handshake within %d ms", s->handshake_ms);
            goto out;
        }
        if (rc == -ECANCELED) {
            rc = err_set(e, rc, "stopped during the handshake");
            goto out;
        }
        if (rc < 0) {
            rc = err_set(e, rc, "poll: %s", strerror(-rc));
            goto out;
        }
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int) * MAX_HANDSHAKE_FDS) + CMSG_SPACE(64)];
        } ctl;
        struct iovec iov = {.iov_base = buf + len, .iov_len = UFFD_MAX_HANDSHAKE + 1 - len};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl};
        ssize_t got = recvmsg(s->cfd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        unsigned rights = 0, others = 0;
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (got < 0) {
            rc = err_errno(e, "recvmsg");
            goto out;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
                others++;
                continue;
            }
            rights++;
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t j = 0; j < k; j++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof fd);
                if (nfds < MAX_HANDSHAKE_FDS)
                    fds[nfds++] = fd;
                else
                    close(fd);
            }
        }
        if (mh.msg_flags & MSG_CTRUNC)
            ctrunc = true;
        if (got == 0) {
            rc = err_set(e, -EPROTO,
                         len ? "connection closed in the middle of the handshake"
                             : "connection closed without a handshake");
            goto out;
        }
        bool first = len == 0;
        len += (size_t)got;
        if (first || rights + others > 0) {
            /* The fd travels with the first bytes of the message, alone. */
            if (!first || ctrunc || others > 0 || rights != 1 || nfds != 1) {
                rc = err_set(e, -EPROTO,
                             "handshake must carry exactly one fd in one SCM_RIGHTS message with "
                             "its first bytes (got %zu fd(s) in %u message(s)%s%s)",
                             nfds, rights, others ? ", other ancillary data" : "",
                             ctrunc ? ", truncated" : "");
                goto out;
            }
        }
        if (len > UFFD_MAX_HANDSHAKE) {
            rc = err_set(e, -EMSGSIZE, "handshake longer than %u bytes", UFFD_MAX_HANDSHAKE);
            goto out;
        }
        bool more = false;
        rc = parse_regions(buf, len, s->src.size, regions, UFFD_MAX_REGIONS, nreg, &more, e);
        if (rc == -EAGAIN && more)
            continue;
        if (rc < 0)
            goto out;
        break;
    }
    if (!is_userfaultfd(fds[0])) {
        rc = err_set(e, -EPROTO, "the fd received is not a userfaultfd");
        goto out;
    }
    /* poll() on a blocking userfaultfd reports an error; Firecracker creates it non-blocking,
     * and nothing else reads it, so setting the shared flag is harmless. */
    int fl = fcntl(fds[0], F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fds[0], F_SETFL, fl | O_NONBLOCK) < 0)) {
        rc = err_errno(e, "make the userfaultfd non-blocking");
        goto out;
    }
    /* ... and on a userfaultfd that was never through UFFDIO_API. */
    struct pollfd p = {.fd = fds[0], .events = POLLIN};
    if (poll(&p, 1, 0) > 0 && (p.revents & POLLERR)) {
        rc = err_set(e, -EPROTO, "the userfaultfd was not initialised (UFFDIO_API)");
        goto out;
    }
    s->ufd = fds[0];
    nfds = 0;
    rc = 0;
out:
    for (size_t j = 0; j < nfds; j++)
        close(fds[j]);
    free(buf);
    return rc;
}

static void regions_init(uffd_server_t *s, const uffd_region_t *r, size_t n)
{
    s->capreg = n + 8;
    s->reg = xcalloc(s->capreg, sizeof *s->reg);
    for (size_t i = 0; i < n; i++) {
        region_t *g = &s->reg[i];
        g->base = r[i].base;
        g->size = r[i].size;
        g->off = r[i].offset;
        g->pages = r[i].size >> PAGE_SHIFT;
        g->done = bits_new(g->pages);
    }
    s->nreg = n;
    s->last = 0;
}

static void regions_free(uffd_server_t *s)
{
    for (size_t i = 0; i < s->nreg; i++)
        free(s->reg[i].done);
    free(s->reg);
    s->reg = NULL;
    s->nreg = s->capreg = 0;
}

/* ---- placing pages ---- */

/* Place [dst, dst+len) from src (NULL: zero pages). Pages that turn out to exist already are
 * skipped. *done receives how many bytes from dst were dealt with (placed or found present), on
 * failure too. wake: wake threads waiting in the range (else DONTWAKE). Returns 0 or -errno of
 * the ioctl (EAGAIN, ENOENT, ESRCH, ...). */
static int place(uffd_server_t *s, uint64_t dst, const uint8_t *src, uint64_t len, bool wake,
                 uint64_t *done)
{
    const uint64_t dst0 = dst, len0 = len;
    bool exist = false;
    *done = 0;
    while (len > 0) {
        long long got;
        int rc;
        BUMP(s, copy_calls, 1);
        if (src) {
            struct uffdio_copy c = {.dst = dst,
                                    .src = (uintptr_t)src,
                                    .len = len,
                                    .mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE};
            rc = ioctl(s->ufd, UFFDIO_COPY, &c);
            got = rc == 0 ? (long long)len : c.copy;
        } else {
            struct uffdio_zeropage z = {.range = {.start = dst, .len = len},
                                        .mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE};
            rc = ioctl(s->ufd, UFFDIO_ZEROPAGE, &z);
            got = rc == 0 ? (long long)len : z.zeropage;
        }
        int err = rc == 0 ? 0 : errno;
        if (got > 0) {
            if (src) {
                BUMP(s, pages_copied, (uint64_t)got >> PAGE_SHIFT);
                BUMP(s, bytes_copied, (uint64_t)got);
                src += got;
            } else {
                BUMP(s, zero_pages, (uint64_t)got >> PAGE_SHIFT);
            }
            dst += (uint64_t)got;
            len -= (uint64_t)got;
            *done += (uint64_t)got;
            continue;
        }
        if (err == EEXIST) {
            BUMP(s, exists, 1);
            exist = true;
            dst += UFFD_PAGE_SIZE;
            len -= UFFD_PAGE_SIZE;
            *done += UFFD_PAGE_SIZE;
            if (src)
                src += UFFD_PAGE_SIZE;
            continue;
        }
        if (err == EINTR)
            continue;
        return err ? -err : -EIO;
    }
    if (exist && wake) {
        /* A page that was already there was not woken by the calls above. */
        struct uffdio_range r = {.start = dst0, .len = len0};
        if (ioctl(s->ufd, UFFDIO_WAKE, &r) < 0)
            return -errno;
    }
    return 0;
}

static int wake_page(uffd_server_t *s, uint64_t addr)
{
    struct uffdio_range r = {.start = addr, .len = UFFD_PAGE_SIZE};
    return ioctl(s->ufd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

static region_t *find_region(uffd_server_t *s, uint64_t addr)
{
    if (s->last < s->nreg) {
        region_t *r = &s->reg[s->last];
        if (addr - r->base < r->size)
            return r;
    }
    for (size_t i = 0; i < s->nreg; i++) {
        region_t *r = &s->reg[i];
        if (addr - r->base < r->size) {
            s->last = i;
            return r;
        }
    }
    return NULL;
}

/* The extent holding page p of r: sets *end (a page index of r, exclusive) and *zero. */
static void extent_of(uffd_server_t *s, const region_t *r, uint64_t p, uint64_t *end, bool *zero)
{
    uint64_t bytes = s->src.extent(s->src.ctx, r->off + (p << PAGE_SHIFT), zero);
    uint64_t n = bytes >> PAGE_SHIFT;
    *end = p + (n ? n : 1);
}

/* Read and place one piece. *read_err tells a source failure from an ioctl one. */
static int serve_piece(uffd_server_t *s, region_t *r, const piece_t *pc, bool wake, bool *read_err)
{
    uint64_t dst = r->base + (pc->pg << PAGE_SHIFT), len = pc->n << PAGE_SHIFT, done = 0;
    int rc;
    *read_err = false;
    if (pc->zero) {
        rc = place(s, dst, NULL, len, wake, &done);
    } else {
        rc = s->src.read(s->src.ctx, r->off + (pc->pg << PAGE_SHIFT), s->buf, (size_t)len);
        if (rc < 0) {
            *read_err = true;
            return rc;
        }
        rc = place(s, dst, s->buf, len, wake, &done);
    }
    bits_set(r->done, pc->pg, done >> PAGE_SHIFT);
    return rc;
}

/* Serve the window around page pg of r (pg not done). */
static int serve_window(uffd_server_t *s, region_t *r, uint64_t pg, err_t *e)
{
    const uint64_t wp = s->prefetch >> PAGE_SHIFT;
    const uint64_t rb = r->base >> PAGE_SHIFT;
    const uint64_t ws = (rb + pg) & ~(wp - 1), we = ws + wp;
    const uint64_t p0 = ws < rb ? 0 : ws - rb;
    const uint64_t p1 = we - rb > r->pages ? r->pages : we - rb;
    size_t np = 0, fi = 0;
    uint64_t ext_end = 0;
    bool ext_zero = false;

    for (uint64_t p = p0; p < p1;) {
        if (bit_get(r->done, p)) {
            p++;
            continue;
        }
        if (p >= ext_end)
            extent_of(s, r, p, &ext_end, &ext_zero);
        const bool zero = ext_zero;
        uint64_t q = p;
        while (q < p1 && !bit_get(r->done, q)) {
            if (q >= ext_end) {
                extent_of(s, r, q, &ext_end, &ext_zero);
                if (ext_zero != zero)
                    break;
            }
            q++;
        }
        if (pg >= p && pg < q)
            fi = np;
        s->pieces[np++] = (piece_t){.pg = p, .n = q - p, .zero = zero};
        p = q;
    }

    uint64_t before = atomic_load_explicit(&s->st.pages_copied, memory_order_relaxed) +
                      atomic_load_explicit(&s->st.zero_pages, memory_order_relaxed);
    const piece_t *failed = NULL;
    bool read_err = false;
    int rc = 0;
    /* The faulting piece goes last and alone wakes: the vCPU resumes with the whole window. */
    for (size_t i = 0; i < np && rc == 0; i++) {
        if (i == fi)
            continue;
        failed = &s->pieces[i];
        rc = serve_piece(s, r, failed, false, &read_err);
        /* A prefetch piece the kernel refuses (part of the window unmapped) is left for later
         * faults; anything that concerns the whole VM ends here. */
        if (rc == -ENOENT && !read_err && !peer_gone(s))
            rc = 0;
    }
    if (rc == 0) {
        failed = &s->pieces[fi];
        rc = serve_piece(s, r, failed, true, &read_err);
        if (rc == -ENOENT && !read_err && failed->n > 1) {
            /* A region made of several mappings (split by mprotect or madvise): a run that
             * crosses from one into the next is refused as a whole. The page alone. */
            s->pieces[fi] = (piece_t){.pg = pg, .n = 1, .zero = failed->zero};
            rc = serve_piece(s, r, failed, true, &read_err);
        }
    }
    uint64_t after = atomic_load_explicit(&s->st.pages_copied, memory_order_relaxed) +
                     atomic_load_explicit(&s->st.zero_pages, memory_order_relaxed);
    if (after - before > 1)
        BUMP(s, prefetched, after - before - 1);
    if (rc < 0 && read_err)
        return err_set(e, rc, "read guest memory [%" PRIu64 ", +%" PRIu64 "): %s",
                       r->off + (failed->pg << PAGE_SHIFT), failed->n << PAGE_SHIFT, strerror(-rc));
    return rc;
}

/* ---- faults ---- */

static void defer(uffd_server_t *s, uint64_t addr, int64_t since)
{
    if (s->ndef == s->capdef) {
        s->capdef = s->capdef ? s->capdef * 2 : 64;
        s->def = xrealloc(s->def, s->capdef * sizeof *s->def);
    }
    s->def[s->ndef++] = (deferred_t){.addr = addr, .since = since ? since : now_ms()};
    BUMP(s, retries, 1);
}

/* Wake a fault that cannot be placed because its address is not (or no longer) mapped as a
 * region: the thread retries and gets what touching unmapped memory gets. The same page coming
 * back STRAY_LIMIT times in a row means it is mapped after all and we cannot serve it. */
static int stray(uffd_server_t *s, uint64_t addr, err_t *e)
{
    BUMP(s, strays, 1);
    if (addr == s->stray_addr) {
        if (++s->stray_n >= STRAY_LIMIT)
            return err_set(e, -EFAULT,
                           "fault at 0x%" PRIx64 " cannot be placed and keeps coming back", addr);
    } else {
        s->stray_addr = addr;
        s->stray_n = 1;
    }
    int rc = wake_page(s, addr);
    return rc < 0 ? err_set(e, rc, "wake 0x%" PRIx64 ": %s", addr, strerror(-rc)) : 0;
}

/* Handle one fault: 0 (served, woken or deferred), UFFD_END_VM_GONE, or -errno with e set.
 * since: when it was first deferred (0: a fresh fault). */
static int fault(uffd_server_t *s, uint64_t addr, int64_t since, err_t *e)
{
    addr &= ~(uint64_t)(UFFD_PAGE_SIZE - 1);
    region_t *r = find_region(s, addr);
    if (!r)
        return stray(s, addr, e);
    const uint64_t pg = (addr - r->base) >> PAGE_SHIFT;
    int rc;
    if (bit_get(r->done, pg)) {
        /* Placed or removed before and missing again: the kernel dropped it (see uffd.h). */
        uint64_t done;
        BUMP(s, refaults, 1);
        rc = place(s, addr, NULL, UFFD_PAGE_SIZE, true, &done);
    } else {
        err_t pe = {0};
        rc = serve_window(s, r, pg, &pe);
        if (pe.code) {
            *e = pe;
            return rc;
        }
    }
    switch (rc) {
    case 0:
        return 0;
    case -EAGAIN:
        if (since && now_ms() - since > UFFD_RETRY_MS)
            return err_set(e, -ETIMEDOUT,
                           "fault at guest offset %" PRIu64 " stayed unservable (EAGAIN) for %d ms",
                           r->off + addr - r->base, UFFD_RETRY_MS);
        defer(s, addr, since);
        return 0;
    case -ESRCH:
        return UFFD_END_VM_GONE;
    case -ENOENT:
        if (peer_gone(s))
            return UFFD_END_VM_GONE;
        /* Unmapped under the fault: let the thread see that for itself. */
        return stray(s, addr, e);
    default:
        break;
    }
    return err_set(e, rc, "place page at guest offset %" PRIu64 ": %s", r->off + addr - r->base,
                   strerror(-rc));
}

static int retry_deferred(uffd_server_t *s, err_t *e)
{
    size_t n = s->ndef;
    for (size_t i = 0; i < n; i++) {
        deferred_t d = s->def[i];
        int rc = fault(s, d.addr, d.since, e);
        if (rc != 0)
            return rc;
    }
    /* Faults deferred again were appended after the first n. */
    memmove(s->def, s->def + n, (s->ndef - n) * sizeof *s->def);
    s->ndef -= n;
    return 0;
}

/* ---- events ---- */

/* Split region i at page index at (0 < at < pages). */
static void region_split(uffd_server_t *s, size_t i, uint64_t at)
{
    if (s->nreg == s->capreg) {
        s->capreg *= 2;
        s->reg = xrealloc(s->reg, s->capreg * sizeof *s->reg);
    }
    region_t *r = &s->reg[i];
    region_t t = {
        .base = r->base + (at << PAGE_SHIFT),
        .size = r->size - (at << PAGE_SHIFT),
        .off = r->off + (at << PAGE_SHIFT),
        .pages = r->pages - at,
    };
    t.done = bits_new(t.pages);
    for (uint64_t p = 0; p < t.pages; p++)
        if (bit_get(r->done, at + p))
            bit_set(t.done, p);
    r->size = at << PAGE_SHIFT;
    r->pages = at;
    memmove(&s->reg[i + 2], &s->reg[i + 1], (s->nreg - i - 1) * sizeof *s->reg);
    s->reg[i + 1] = t;
    s->nreg++;
    s->last = 0;
}

/* Split regions so that each lies entirely inside or outside [lo, hi). */
static void regions_isolate(uffd_server_t *s, uint64_t lo, uint64_t hi)
{
    for (size_t i = 0; i < s->nreg; i++) {
        region_t *r = &s->reg[i];
        uint64_t end = r->base + r->size;
        if (lo > r->base && lo < end)
            region_split(s, i, (lo - r->base) >> PAGE_SHIFT);
        else if (hi > r->base && hi < end)
            region_split(s, i, (hi - r->base) >> PAGE_SHIFT);
    }
}

static void region_drop(uffd_server_t *s, size_t i)
{
    free(s->reg[i].done);
    memmove(&s->reg[i], &s->reg[i + 1], (s->nreg - i - 1) * sizeof *s->reg);
    s->nreg--;
    s->last = 0;
}

static uint64_t page_down(uint64_t a)
{
    return a & ~(uint64_t)(UFFD_PAGE_SIZE - 1);
}

static uint64_t page_up(uint64_t a)
{
    return a > UINT64_MAX - (UFFD_PAGE_SIZE - 1) ? page_down(UINT64_MAX)
                                                 : page_down(a + UFFD_PAGE_SIZE - 1);
}

static void on_remove(uffd_server_t *s, uint64_t start, uint64_t end)
{
    start = page_down(start);
    end = page_up(end);
    BUMP(s, removes, 1);
    for (size_t i = 0; i < s->nreg; i++) {
        region_t *r = &s->reg[i];
        uint64_t lo = start > r->base ? start : r->base;
        uint64_t hi = end < r->base + r->size ? end : r->base + r->size;
        if (lo < hi)
            bits_set(r->done, (lo - r->base) >> PAGE_SHIFT, (hi - lo) >> PAGE_SHIFT);
    }
}

static void drop_range(uffd_server_t *s, uint64_t lo, uint64_t hi)
{
    for (size_t i = s->nreg; i-- > 0;) {
        region_t *r = &s->reg[i];
        if (r->base >= lo && r->base + r->size <= hi)
            region_drop(s, i);
    }
}

static int on_unmap(uffd_server_t *s, uint64_t start, uint64_t end)
{
    start = page_down(start);
    end = page_up(end);
    BUMP(s, unmaps, 1);
    regions_isolate(s, start, end);
    drop_range(s, start, end);
    return s->nreg == 0 ? UFFD_END_VM_GONE : 0;
}

static void on_remap(uffd_server_t *s, uint64_t from, uint64_t to, uint64_t len)
{
    BUMP(s, remaps, 1);
    len = page_up(len);
    if (len == 0 || from > UINT64_MAX - len || to > UINT64_MAX - len)
        return;
    /* mremap never moves onto its own source range; what was mapped at the destination before
     * is gone. */
    regions_isolate(s, from, from + len);
    regions_isolate(s, to, to + len);
    drop_range(s, to, to + len);
    for (size_t i = 0; i < s->nreg; i++) {
        region_t *r = &s->reg[i];
        if (r->base >= from && r->base + r->size <= from + len)
            r->base = r->base - from + to;
    }
    s->last = 0;
}

/* Handle a batch: 0, UFFD_END_VM_GONE, or -errno with e set. */
static int handle(uffd_server_t *s, const struct uffd_msg *m, size_t n, err_t *e)
{
    for (size_t i = 0; i < n; i++) {
        int rc = 0;
        switch (m[i].event) {
        case UFFD_EVENT_PAGEFAULT:
            BUMP(s, faults, 1);
            rc = fault(s, m[i].arg.pagefault.address, 0, e);
            break;
        case UFFD_EVENT_REMOVE:
            on_remove(s, m[i].arg.remove.start, m[i].arg.remove.end);
            break;
        case UFFD_EVENT_UNMAP:
            rc = on_unmap(s, m[i].arg.remove.start, m[i].arg.remove.end);
            break;
        case UFFD_EVENT_REMAP:
            on_remap(s, m[i].arg.remap.from, m[i].arg.remap.to, m[i].arg.remap.len);
            break;
        case UFFD_EVENT_FORK:
            /* Only with UFFD_FEATURE_EVENT_FORK, which Firecracker does not ask for: the child's
             * memory is not ours to serve. */
            close((int)m[i].arg.fork.ufd);
            log_warn("uffd.fork_ignored", "sandbox=%s", nm(s));
            break;
        default:
            log_warn("uffd.unknown_event", "sandbox=%s event=%u", nm(s), (unsigned)m[i].event);
            break;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- the serving loop ---- */

static uffd_end_t serve(uffd_server_t *s, err_t *e)
{
    struct uffd_msg msgs[UFFD__BATCH];
    for (;;) {
        if (atomic_load_explicit(&s->stop, memory_order_relaxed))
            return UFFD_END_STOPPED;
        ssize_t n = read(s->ufd, msgs, sizeof msgs);
        if (n > 0) {
            int rc = handle(s, msgs, (size_t)n / sizeof msgs[0], e);
            if (rc == UFFD_END_VM_GONE)
                return UFFD_END_VM_GONE;
            if (rc < 0)
                return UFFD_END_ERROR;
            /* A full batch: more is likely queued, read again. Otherwise poll: on this kind of
             * host a system call costs 1-2 us, and a read that finds nothing is one too many. */
            if ((size_t)n == sizeof msgs && s->ndef == 0)
                continue;
        } else if (n == 0) {
            return UFFD_END_VM_GONE;
        } else if (errno == EINTR) {
            continue;
        } else if (errno != EAGAIN) {
            err_errno(e, "read userfaultfd");
            return peer_gone(s) ? UFFD_END_VM_GONE : UFFD_END_ERROR;
        }
        if (s->ndef > 0) {
            int rc = retry_deferred(s, e);
            if (rc == UFFD_END_VM_GONE)
                return UFFD_END_VM_GONE;
            if (rc < 0)
                return UFFD_END_ERROR;
        }
        struct pollfd p[3] = {{.fd = s->ufd, .events = POLLIN},
                              {.fd = s->stopfd, .events = POLLIN},
                              {.fd = s->pidfd, .events = POLLIN}};
        /* While faults wait behind EAGAIN, the thread that changes the mappings must run before
         * they can be placed: look again in a millisecond. */
        int pr = poll(p, 3, s->ndef ? 1 : -1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            err_errno(e, "poll");
            return UFFD_END_ERROR;
        }
        if (p[1].revents)
            return UFFD_END_STOPPED;
        if (p[2].revents)
            return UFFD_END_VM_GONE;
        if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            if (peer_gone(s))
                return UFFD_END_VM_GONE;
            err_set(e, -EIO, "the userfaultfd reports an error (not initialised by the VM?)");
            return UFFD_END_ERROR;
        }
    }
}

static void log_end(uffd_server_t *s, uffd_end_t end, const err_t *e, int64_t t0)
{
    uffd_stats_t st;
    uffd_server_stats(s, &st);
    enum log_level lvl = end == UFFD_END_ERROR ? LOG_WARN : LOG_INFO;
    log_kv(lvl, "uffd.end",
           "sandbox=%s end=%s pid=%d faults=%" PRIu64 " pages_copied=%" PRIu64
           " zero_pages=%" PRIu64 " prefetched=%" PRIu64 " removes=%" PRIu64 " dur_ms=%lld%s%s%s",
           nm(s), uffd_end_name(end), (int)atomic_load(&s->peer), st.faults, st.pages_copied,
           st.zero_pages, st.prefetched, st.removes, (long long)(now_ms() - t0),
           end == UFFD_END_ERROR ? " err=\"" : "", end == UFFD_END_ERROR ? e->msg : "",
           end == UFFD_END_ERROR ? "\"" : "");
}

static void *run(void *arg)
{
    uffd_server_t *s = arg;
    uffd_region_t regions[UFFD_MAX_REGIONS];
    size_t nreg = 0;
    err_t e = {0};
    int64_t t0 = now_ms();
    uffd_end_t end;

    int rc = accept_peer(s, &e);
    if (rc == 0)
        rc = handshake(s, regions, &nreg, &e);
    if (rc < 0) {
        end = rc == -ECANCELED ? UFFD_END_STOPPED : UFFD_END_ERROR;
        if (end == UFFD_END_ERROR)
            log_warn("uffd.refused", "sandbox=%s pid=%d err=\"%s\"", nm(s),
                     (int)atomic_load(&s->peer), e.msg);
        goto out;
    }
    regions_init(s, regions, nreg);
    pthread_mutex_lock(&s->mu);
    s->handshaken = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    log_info("uffd.ready", "sandbox=%s pid=%d regions=%zu prefetch=%u", nm(s),
             (int)atomic_load(&s->peer), nreg, s->prefetch);

    end = serve(s, &e);
    if (end == UFFD_END_ERROR) {
        /* Never ourselves (a VM in this process is a test's doing). */
        if (!s->keep_vm && s->pidfd >= 0 && atomic_load(&s->peer) != getpid() &&
            syscall(SYS_pidfd_send_signal, s->pidfd, SIGKILL, NULL, 0) == 0)
            log_error("uffd.vm_killed", "sandbox=%s pid=%d err=\"%s\"", nm(s),
                      (int)atomic_load(&s->peer), e.msg);
        else
            log_error("uffd.failed", "sandbox=%s pid=%d err=\"%s\"", nm(s),
                      (int)atomic_load(&s->peer), e.msg);
    }
    log_end(s, end, &e, t0);
out:
    regions_free(s);
    xclose(&s->ufd);
    xclose(&s->cfd);
    xclose(&s->pidfd);
    xclose(&s->lfd);
    finish(s, end, &e);
    return NULL;
}

/* ---- public ---- */

static int listen_on(uffd_server_t *s, err_t *e)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(s->path) >= sizeof sa.sun_path)
        return err_set(e, -ENAMETOOLONG, "socket path too long: %s", s->path);
    memcpy(sa.sun_path, s->path, strlen(s->path) + 1);
    if (lstat(s->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return err_set(e, -EEXIST, "%s exists and is not a socket", s->path);
        if (unlink(s->path) < 0 && errno != ENOENT)
            return err_errno(e, "remove stale socket");
    }
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->lfd < 0)
        return err_errno(e, "socket");
    /* The mode of the socket inode is what bind gives the file (less the umask), so the path
     * never exists with wider permissions; the chmod after bind covers a missing fchmod. */
    if (fchmod(s->lfd, 0600) < 0)
        return err_errno(e, "fchmod socket");
    if (bind(s->lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return err_errno(e, "bind");
    s->sock_linked = true;
    if (chmod(s->path, 0600) < 0 || lstat(s->path, &st) < 0)
        return err_errno(e, "chmod socket");
    s->sock_dev = st.st_dev;
    s->sock_ino = st.st_ino;
    if (listen(s->lfd, 1) < 0)
        return err_errno(e, "listen");
    return 0;
}

int uffd_server_start(const char *path, mem_reader_t *mem, const uffd_opts_t *opts,
                      uffd_server_t **out, err_t *e)
{
    uffd_source_t src;
    *out = NULL;
    if (!mem)
        return err_set(e, -EINVAL, "no memory to serve");
    if (mem_reader_map(mem)->block_size != UFFD_PAGE_SIZE)
        return err_set(e, -EINVAL, "memory block size %u is not the page size",
                       mem_reader_map(mem)->block_size);
    uffd_source_mem(&src, mem);
    return uffd_server_start_src(path, &src, opts, out, e);
}

int uffd_server_start_src(const char *path, const uffd_source_t *src, const uffd_opts_t *opts,
                          uffd_server_t **out, err_t *e)
{
    static const uffd_opts_t none = {0};
    int rc;
    *out = NULL;
    if (!opts)
        opts = &none;
    if (!path || !*path || !src || !src->read || !src->extent || src->size == 0 ||
        src->size % UFFD_PAGE_SIZE)
        return err_set(e, -EINVAL, "bad page server arguments");
    uint32_t pf = opts->prefetch ? opts->prefetch : UFFD_DEFAULT_PREFETCH;
    if (pf < UFFD_PAGE_SIZE || pf > UFFD_MAX_PREFETCH || (pf & (pf - 1)))
        return err_set(e, -EINVAL, "prefetch %u is not a power of two in [%u, %u]", pf,
                       UFFD_PAGE_SIZE, UFFD_MAX_PREFETCH);

    uffd_server_t *s = xcalloc(1, sizeof *s);
    s->path = xstrdup(path);
    s->name = xstrdup(opts->name);
    s->src = *src;
    s->prefetch = pf;
    s->connect_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : DEF_CONNECT_MS;
    s->handshake_ms =
        opts->handshake_timeout_ms > 0 ? opts->handshake_timeout_ms : DEF_HANDSHAKE_MS;
    s->want_pid = opts->peer_pid;
    s->keep_vm = opts->keep_vm_on_error;
    s->lfd = s->cfd = s->ufd = s->pidfd = -1;
    s->end = UFFD_RUNNING;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->join_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->pieces = xcalloc(pf >> PAGE_SHIFT, sizeof *s->pieces);
    s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->donefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->stopfd < 0 || s->donefd < 0) {
        rc = err_errno(e, "eventfd");
        goto fail;
    }
    void *b =
        mmap(NULL, pf, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (b == MAP_FAILED) {
        rc = err_errno(e, "mmap buffer");
        goto fail;
    }
    s->buf = b;
    rc = listen_on(s, e);
    if (rc < 0)
        goto fail;
    rc = pthread_create(&s->thread, NULL, run, s);
    if (rc != 0) {
        rc = err_set(e, -rc, "pthread_create: %s", strerror(rc));
        goto fail;
    }
    s->started = true;
    *out = s;
    return 0;
fail:
    uffd_server_free(s);
    return rc;
}

static void deadline_ts(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int uffd_server_wait_ready(uffd_server_t *s, int timeout_ms, err_t *e)
{
    struct timespec ts;
    int rc = 0;
    deadline_ts(&ts, timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&s->mu);
    while (!s->handshaken && s->end == UFFD_RUNNING) {
        int w = timeout_ms < 0 ? pthread_cond_wait(&s->cv, &s->mu)
                               : pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        if (w == ETIMEDOUT)
            break;
    }
    if (s->handshaken)
        rc = 0;
    else if (s->end == UFFD_RUNNING)
        rc = err_set(e, -ETIMEDOUT, "no handshake from the VM yet");
    else if (s->end == UFFD_END_STOPPED)
        rc = err_set(e, -ECANCELED, "the page server was stopped");
    else {
        rc = s->err.code ? s->err.code : -EIO;
        if (e)
            *e = s->err;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int uffd_server_fd(const uffd_server_t *s)
{
    return s->donefd;
}

uffd_end_t uffd_server_wait(uffd_server_t *s, int timeout_ms)
{
    struct timespec ts;
    deadline_ts(&ts, timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&s->mu);
    while (s->end == UFFD_RUNNING) {
        int w = timeout_ms < 0 ? pthread_cond_wait(&s->cv, &s->mu)
                               : pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        if (w == ETIMEDOUT)
            break;
    }
    uffd_end_t end = s->end;
    pthread_mutex_unlock(&s->mu);
    return end;
}

uffd_end_t uffd_server_status(uffd_server_t *s, err_t *e)
{
    pthread_mutex_lock(&s->mu);
    uffd_end_t end = s->end;
    if (end == UFFD_END_ERROR && e)
        *e = s->err;
    pthread_mutex_unlock(&s->mu);
    return end;
}

void uffd_server_stats(const uffd_server_t *s, uffd_stats_t *out)
{
#define LD(f) out->f = atomic_load_explicit(&s->st.f, memory_order_relaxed)
    LD(faults);
    LD(pages_copied);
    LD(bytes_copied);
    LD(zero_pages);
    LD(prefetched);
    LD(copy_calls);
    LD(removes);
    LD(unmaps);
    LD(remaps);
    LD(refaults);
    LD(exists);
    LD(retries);
    LD(strays);
#undef LD
}

pid_t uffd_server_peer(uffd_server_t *s)
{
    return atomic_load(&s->peer);
}

void uffd_server_stop(uffd_server_t *s)
{
    pthread_mutex_lock(&s->join_mu);
    if (s->started && !s->joined) {
        atomic_store(&s->stop, true);
        uint64_t one = 1;
        while (write(s->stopfd, &one, sizeof one) < 0 && errno == EINTR)
            ;
        pthread_join(s->thread, NULL);
        s->joined = true;
    }
    pthread_mutex_unlock(&s->join_mu);
}

void uffd_server_free(uffd_server_t *s)
{
    if (!s)
        return;
    uffd_server_stop(s);
    /* The thread closed its own fds; these remain when it never started. */
    xclose(&s->lfd);
    xclose(&s->cfd);
    xclose(&s->ufd);
    xclose(&s->pidfd);
    unlink_socket(s);
    xclose(&s->stopfd);
    xclose(&s->donefd);
    if (s->buf)
        munmap(s->buf, s->prefetch);
    regions_free(s);
    free(s->pieces);
    free(s->def);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->join_mu);
    free(s->name);
    free(s->path);
    free(s);
}
