/* memfs: guest RAM for a VM restored from a snapshot, as one FUSE file.
 *
 * memfs presents a map's layered memory (mem.h) as one file without copying it: reads are
 * composed from the layers lazily, block by block, as the guest touches memory.
 *
 * Read-only (opts.upper and opts.bitmap NULL), what the agent uses: VMs map the file private
 * (vmm.h mem_private), several of them one file, so what they only read is in the page cache
 * once. The file is 0666 (QEMU opens it read-write; VMs of several uids share it) but nothing
 * can change it: opens are direct I/O (the kernel then refuses MAP_SHARED), write, fallocate
 * and truncation are refused.
 *
 * Written through (opts.upper and opts.bitmap set): every write (the kernel writing back pages
 * a shared mapping dirtied) goes to a sparse `upper` file and sets the block's bit in a dirty
 * bitmap; at pause the file is flushed and unmounted and upper + bitmap become the next layer
 * (mem_commit_diff). Kept for VMs an older agent started this way.
 *
 * It runs as its own process (`wrenn-agent memfs ...`), so a VM keeps its memory when the agent
 * is restarted or killed; the agent records its pid and re-adopts it. It exits when unmounted.
 */
#ifndef WRENN_AGENT_MEMFS_H
#define WRENN_AGENT_MEMFS_H

#include <stdint.h>
#include <sys/types.h>

#include "err.h"

typedef struct memfs_opts {
    const char *map;    /* the parent map (mem.hdr) */
    const char *layers; /* directory holding the parent's layers */
    const char *upper;  /* upper file: created (0600) when missing; NULL (with bitmap NULL):
                         * read-only, see below */
    const char *bitmap; /* dirty bitmap file: created when missing, one bit per block */
    const char *mount;  /* existing empty directory; the file appears as <mount>/mem */
    uid_t uid;          /* owner of <mount>/mem (the VM's uid) */
    gid_t gid;
    int ready_fd;    /* written one byte ('R') and closed once mounted and serving; -1: none.
                      * When the server cannot start it gets 'E', the errno and the message instead
                      * (memfs_spawn turns that into its error). memfs_main only. */
    const char *log; /* memfs_spawn: file the server's stderr (its log) is appended to, created
                      * 0600 when missing; NULL: the caller's stderr is inherited */
} memfs_opts_t;

/** `wrenn-agent memfs --map F --layers D --upper F --bitmap F --mount D --uid N --gid N
 * [--ready-fd N] [--threads N] [--log-level L]` (or WRENN_MEMFS_<FLAG> in the environment):
 * serve until unmounted, then fsync upper and bitmap and exit 0; exit 1 with a message on
 * stderr (and on the ready fd) when it cannot start. SIGTERM, SIGINT, SIGHUP and SIGPIPE are
 * ignored: only an unmount (or SIGKILL) ends it. argv[0] is "memfs". See docs/memfs.md. */
int memfs_main(int argc, char **argv);

/** Start a memfs process for opts (the executable is /proc/self/exe) and wait until it serves
 * (up to timeout_ms). The process is put in its own session, with no fd of ours but its log, so
 * it survives the agent. *pid gets its pid (our child: memfs_stop reaps it). opts->ready_fd is
 * ignored. On failure nothing is left mounted or running, and e says why: the server's own
 * reason when it refused to start (e.g. -EBADMSG for a corrupt map or layer, -ENOENT for a
 * missing one), -EBUSY when opts->mount is already a FUSE mount (a stale one: memfs_stop it
 * first), -ETIMEDOUT when it did not serve in time. Thread-safe. */
int memfs_spawn(const memfs_opts_t *opts, int timeout_ms, pid_t *pid, err_t *e);

/** Flush <mount>/mem (fsync: the kernel writes back every dirty page to the server), unmount
 * it and wait up to timeout_ms for the process pid (which need not be our child) to exit after
 * syncing upper and bitmap. Call only when no process maps the file any more. When the process
 * is already gone (or pid is not a memfs serving this mount, e.g. a reused pid), only the
 * unmount is done; a dead FUSE mount left by a crashed server is unmounted too. mount must be
 * spelled as it was given to memfs_spawn.
 * Errors: the flush's error (-EIO, -ENOSPC: the data did not all reach upper; the unmount is
 * still done); -EBUSY when something still holds the file: the mount is then detached (lazy
 * unmount) and the server keeps serving that holder until it lets go; -ETIMEDOUT when the flush
 * or the exit did not finish in time. On -EBUSY/-ETIMEDOUT the server may still be running:
 * SIGKILL ends it and fails whatever still waits on the file. Thread-safe. */
int memfs_stop(const char *mount, pid_t pid, int timeout_ms, err_t *e);

#endif
