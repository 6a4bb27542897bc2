/* userfaultfd page server: serves a Firecracker VM's guest memory on demand from snapshot layers.
 *
 * Firecracker restores a snapshot with the "Uffd" memory backend: it maps guest memory as
 * anonymous private memory (MAP_NORESERVE), creates a userfaultfd, registers every region in
 * MISSING mode (with UFFD_FEATURE_EVENT_REMOVE negotiated) and connects to a unix socket whose
 * path it was given. It sends ONE message: the data is a JSON array of regions
 *   {"base_host_virt_addr": u64, "size": u64, "offset": u64, "page_size": u64}
 * ("page_size_kib" in older versions, which in practice also holds bytes), and the ancillary
 * data is exactly one SCM_RIGHTS message with exactly one fd, the userfaultfd. From then on every
 * first touch of a guest page blocks the touching vCPU until this server places the page.
 *
 * Lifecycle: uffd_server_start() binds the socket (mode 0600, a stale socket file at the path is
 * replaced, a non-socket file is not) and returns at once; its thread accepts exactly one
 * connection (the listening socket is then closed and the path unlinked), receives and checks
 * the handshake, and serves until the VM goes away, uffd_server_stop() is called, or a fault
 * cannot be served. uffd_server_wait_ready() waits for the handshake; uffd_server_fd() is an
 * eventfd that becomes readable when the server has ended, for the owner's event loop.
 *
 * Handshake checks (anything else is refused, the connection and every received fd closed, and
 * the server ends with UFFD_END_ERROR): one message of at most UFFD_MAX_HANDSHAKE bytes of JSON
 * (it may arrive in several reads); exactly one fd in exactly one SCM_RIGHTS message, and that fd
 * is a userfaultfd; 1 to UFFD_MAX_REGIONS regions; the page size is 4096; base, size and offset
 * are page aligned, size > 0; no region extends beyond the memory size; regions overlap neither in
 * the VM's address space nor in guest memory. Unknown keys are ignored (newer Firecracker
 * versions may add some). With opts.peer_pid set, only that process may connect.
 *
 * Serving. For each fault at page P of region R, guest memory offset = P - R.base + R.offset:
 * - P not yet served: an aligned window of opts.prefetch bytes around P (clipped to R) is served
 *   in runs, skipping pages already served: runs of all-zero extents with UFFDIO_ZEROPAGE (no
 *   memory used), data runs with one read from the source straight into an aligned buffer and
 *   one UFFDIO_COPY per contiguous run. The run holding P goes last and is the only one that
 *   wakes threads, so the vCPU resumes with its whole window in place.
 * - P already served (or removed) but missing again: the kernel dropped it (MADV_DONTNEED, a
 *   balloon inflating) and a private anonymous page that was dropped reads back as zeroes in any
 *   process, so it is placed with UFFDIO_ZEROPAGE. If it is in fact present (a fault message that
 *   raced with our copy), the zero page call fails with EEXIST and the thread is just woken.
 * - UFFD_EVENT_REMOVE (madvise DONTNEED/REMOVE of a range, what Firecracker's balloon does):
 *   every page of the range is marked served, so its next fault gets a zero page and prefetch
 *   never brings it back. That is what the same VM without userfaultfd would see, and what
 *   Firecracker's own example handler does; serving the snapshot's content again would cost I/O
 *   and re-fill memory the guest just gave back.
 * - UFFD_EVENT_UNMAP drops the range from the regions (the server ends with UFFD_END_VM_GONE when
 *   nothing is left); UFFD_EVENT_REMAP moves it. Either only arrives if the VM negotiated it.
 * - EEXIST from the kernel: the page is already there (fine). EAGAIN: the VM's mappings are
 *   changing (an event not yet read); the fault is retried after the pending messages are read.
 *   ESRCH, or ENOENT once the VM process has exited: the VM is gone, the server ends cleanly.
 *   ENOENT while it lives: the range was unmapped under the fault; the thread is woken and gets
 *   what any process touching unmapped memory gets. A fault outside every known region is woken
 *   the same way (it raced with an unmap or remap); if it keeps coming back it is an error.
 * - Any other failure (a source read error, an unexpected ioctl error, a fault stuck behind
 *   EAGAIN for UFFD_RETRY_MS) is logged once and ends the server with UFFD_END_ERROR. A vCPU
 *   waiting for that page would otherwise hang for ever (the VM holds its own reference to the
 *   userfaultfd, so closing ours releases nothing), so unless opts.keep_vm_on_error is set the
 *   server kills the VM process with SIGKILL through its pidfd: the VM fails loudly instead of
 *   hanging. Either way the owner sees UFFD_END_ERROR and the message.
 *
 * The VM process is the one that connected (SO_PEERCRED, held as a pidfd, so a reused pid is
 * never signalled). Its exit ends the server with UFFD_END_VM_GONE: the userfaultfd itself never
 * reports that its process went away.
 *
 * Limits: 4 KiB pages only (no hugetlbfs); ranges registered after the handshake are unknown to
 * the server; without UFFD_FEATURE_EVENT_REMOVE a page the guest discarded before it was ever
 * touched comes back with snapshot content (nothing tells the server about the discard).
 *
 * Thread-safety: one thread per server does all the serving; every uffd_server_* function may be
 * called from any other thread, except that uffd_server_free() must be the last call.
 */
#ifndef WRENN_AGENT_UFFD_H
#define WRENN_AGENT_UFFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"
#include "mem/mem.h"

#define UFFD_PAGE_SIZE        4096u
#define UFFD_DEFAULT_PREFETCH (64u << 10) /* 16 pages per fault */
#define UFFD_MAX_PREFETCH     (2u << 20)
#define UFFD_MAX_REGIONS      64u
#define UFFD_MAX_HANDSHAKE    (64u << 10) /* bytes of JSON */
#define UFFD_RETRY_MS         10000       /* how long a fault may stay behind EAGAIN */

/** One guest memory region as Firecracker describes it. */
typedef struct uffd_region {
    uint64_t base;      /* host virtual address in the VM process */
    uint64_t size;      /* bytes */
    uint64_t offset;    /* guest memory offset of base */
    uint64_t page_size; /* bytes (always UFFD_PAGE_SIZE once accepted) */
} uffd_region_t;

/** Where page content comes from. mem_reader_t is the real one (uffd_source_mem); tests and
 * benchmarks may plug in others. Both callbacks are called from the server thread only. */
typedef struct uffd_source {
    void *ctx;
    uint64_t size; /* guest memory bytes, a multiple of UFFD_PAGE_SIZE */
    /** Read len bytes at page-aligned offset off into buf: 0 or -errno. */
    int (*read)(void *ctx, uint64_t off, void *buf, size_t len);
    /** Bytes (a multiple of the page size, at least one page) from page-aligned off to the end
     * of the extent holding it, and whether that extent reads as zeroes. */
    uint64_t (*extent)(void *ctx, uint64_t off, bool *zero);
} uffd_source_t;

/** A source reading r (mem_read, and mem_map_lookup for the extents). r must outlive the
 * server. */
void uffd_source_mem(uffd_source_t *src, mem_reader_t *r);

/** Server options; zero means the default for every field. */
typedef struct uffd_opts {
    uint32_t prefetch;        /* bytes served per fault: a power of two from UFFD_PAGE_SIZE (no
                               * prefetch) to UFFD_MAX_PREFETCH; 0: UFFD_DEFAULT_PREFETCH */
    int connect_timeout_ms;   /* wait for the VM to connect; 0: 30000, < 0: until stopped */
    int handshake_timeout_ms; /* wait for its message once connected; 0: 5000 */
    pid_t peer_pid;           /* > 0: refuse a connection from any other process */
    bool keep_vm_on_error;    /* do not SIGKILL the VM when a fault cannot be served */
    const char *name;         /* for logs (e.g. the sandbox id); copied; may be NULL */
} uffd_opts_t;

/** How a server ended. */
typedef enum uffd_end {
    UFFD_RUNNING = 0, /* not ended yet */
    UFFD_END_STOPPED, /* uffd_server_stop() */
    UFFD_END_VM_GONE, /* the VM process exited or unmapped all its memory: the normal end */
    UFFD_END_ERROR,   /* refused or timed-out handshake, or a fault that could not be served */
} uffd_end_t;

/** Counters, monotonic for the life of a server. */
typedef struct uffd_stats {
    uint64_t faults;       /* page-fault messages handled */
    uint64_t pages_copied; /* pages placed with UFFDIO_COPY */
    uint64_t bytes_copied;
    uint64_t zero_pages; /* pages placed with UFFDIO_ZEROPAGE (zero extents, removed pages) */
    uint64_t prefetched; /* pages placed beyond the faulting one */
    uint64_t copy_calls; /* UFFDIO_COPY and UFFDIO_ZEROPAGE calls */
    uint64_t removes;    /* UFFD_EVENT_REMOVE events */
    uint64_t unmaps;     /* UFFD_EVENT_UNMAP events */
    uint64_t remaps;     /* UFFD_EVENT_REMAP events */
    uint64_t refaults;   /* faults on pages already served (dropped since, or raced) */
    uint64_t exists;     /* EEXIST answers (page already there) */
    uint64_t retries;    /* faults deferred by EAGAIN */
    uint64_t strays;     /* faults outside every region, woken */
} uffd_stats_t;

typedef struct uffd_server uffd_server_t;

/** Start a server on the unix socket path for the memory mem (which must outlive the server)
 * and return at once (see the top of this file). opts may be NULL. Errors: -EINVAL (bad option),
 * -ENAMETOOLONG (path too long for a unix socket), -EEXIST (path exists and is not a socket), or
 * the errno of socket/bind/listen; nothing is left behind on failure. */
int uffd_server_start(const char *path, mem_reader_t *mem, const uffd_opts_t *opts,
                      uffd_server_t **out, err_t *e);

/** uffd_server_start with another source of content (copied; src->ctx must outlive the
 * server). */
int uffd_server_start_src(const char *path, const uffd_source_t *src, const uffd_opts_t *opts,
                          uffd_server_t **out, err_t *e);

/** Wait up to timeout_ms (< 0: no limit) for the handshake: 0 once it was accepted (even if the
 * server has ended since), -ETIMEDOUT if still waiting, or the error that ended the server
 * before that (-EPROTO bad message or ancillary data, -EINVAL bad regions, -EMSGSIZE too long,
 * -EPERM wrong peer, -ETIMEDOUT no connection or no message in time, -ECANCELED stopped). */
int uffd_server_wait_ready(uffd_server_t *s, int timeout_ms, err_t *e);

/** An eventfd that becomes (and stays) readable once the server has ended. Owned by s. */
int uffd_server_fd(const uffd_server_t *s);

/** Wait up to timeout_ms (< 0: no limit) for the server to end; UFFD_RUNNING on timeout. */
uffd_end_t uffd_server_wait(uffd_server_t *s, int timeout_ms);

/** How the server ended so far (UFFD_RUNNING while it serves); for UFFD_END_ERROR, e (if
 * non-NULL) receives the error. */
uffd_end_t uffd_server_status(uffd_server_t *s, err_t *e);

/** A snapshot of the counters (each read atomically, not all at one instant). */
void uffd_server_stats(const uffd_server_t *s, uffd_stats_t *out);

/** The pid of the connected VM process, 0 before the connection. */
pid_t uffd_server_peer(uffd_server_t *s);

/** Stop serving (wakes the thread and joins it). A VM still running will hang on its next fault
 * of an unserved page: stop only a VM that is being torn down. Idempotent; after an end of its
 * own the status keeps that end. */
void uffd_server_stop(uffd_server_t *s);

/** Stop, release everything and unlink the socket if still there. NULL is fine. */
void uffd_server_free(uffd_server_t *s);

/** Name of an end ("running", "stopped", "vm_gone", "error"). */
const char *uffd_end_name(uffd_end_t end);

/** Parse and check a handshake's JSON (the checks listed at the top) against a memory of
 * mem_size bytes: at most max regions into out, their number in *n. -EPROTO (not the expected
 * JSON) or -EINVAL (bad regions), with a message. The server's parser of untrusted bytes, public
 * for tests and fuzzing. */
int uffd_parse_regions(const void *data, size_t len, uint64_t mem_size, uffd_region_t *out,
                       size_t max, size_t *n, err_t *e);

#endif
