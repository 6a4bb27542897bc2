/* The VMM driver interface: how the host agent starts, stops and inspects one VM.
 *
 * Changes to the given interface (all additive): vmm_spec_t.qemu_bin (optional binary path),
 * vmm_spec_t.backing_root (where a root disk's backing files may live);
 * vmm_release() (drop a handle without stopping the VM, what an agent restart does);
 * vmm_qemu_cleanup() (remove what a dead VM left: cgroups, QMP socket);
 * vmm_qemu_reap_cgroups() (empty cgroups of VMs that died unwatched); vmm_qmp(),
 * vmm_pause(), vmm_resume(), vmm_query_status() (the QMP calls the snapshot work builds on).
 *
 * Two drivers implement it: qemu (QEMU microvm over QMP; what runs on every machine) and,
 * later, firecracker. A driver owns its VM process; callers see only vmm_vm_t.
 * Thread-safety: one vmm_vm_t is used by one thread at a time (the sandbox's lock orders calls).
 *
 * QEMU driver, how a VM runs (see qemu.c for the details):
 * - Files in run_dir: qmp.sock (the QMP socket: created and bound by the agent, root-owned 0600,
 *   its listening fd handed to QEMU), console.log (guest serial console), mem (guest RAM, unless
 *   spec.mem_path names another file,
 *   memory-backend-file share=on (share=off with spec.mem_private) align=2M, sparse, as large as
 * memory_mb; kept after stop for snapshots; the 2 MiB alignment lets the host map it with huge
 * pages where run_dir's file system has large folios, e.g. ext4 on Linux >= 6.16 or tmpfs
 * huge=advise: with 4 KiB pages a TCG boot took 0.5-1 s longer), vmm.log (QEMU's own stderr,
 * root-owned). console.log, mem and the root disk are chowned to uid:gid. The caller removes
 * run_dir.
 * - Network: the driver opens the tap itself (as root, inside netns, TUNSETIFF on spec->tap) and
 *   hands QEMU the fd, so the tap's owner does not matter and QEMU never sees /dev/net/tun. The
 *   caller creates netns and the tap (persistent, IFF_TAP|IFF_NO_PI, not multi-queue) first.
 * - Confinement: QEMU runs as uid:gid (no supplementary groups, no capabilities, no_new_privs),
 *   with `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`, in
 *   netns, in new mount, PID, IPC and UTS namespaces, and in cgroup spec->cgroup (memory, cpu,
 *   pids; see cg.h) created under the agent's own cgroups with limits from vcpus and memory_mb:
 *   memory = guest RAM + TCG translation cache (256 MiB) + 128 MiB, CPU = vcpus + half a CPU for
 *   QEMU's own threads, tasks = 24 + 2 * vcpus (QEMU's block I/O pool is capped at 8 threads).
 *   RLIMIT_FSIZE = max(disk, RAM) + 256 MiB bounds the console log; RLIMIT_CORE = 0.
 * - What a compromised QEMU can see: its root is a read-only tmpfs holding only the kernel,
 *   initrd and the disk's backing chain (read-only), the root disk, console.log and mem
 *   (read-write, noexec), the QEMU binary, the shared libraries in /usr/lib/<multiarch> and
 *   QEMU's firmware directories (read-only), /dev/null, /dev/zero, /dev/urandom (and /dev/kvm
 *   under KVM), each at its host path. No /proc, /sys, /etc, /home, /root, no other sandbox's files
 * (run_dir's record.json, vmm.log and qmp.sock are not in it either), no other process (it is PID 1
 * of its own namespace). Its open files: those, vmm.log (stderr), the QMP listener and the tap. Its
 * network is the sandbox's namespace (what the guest can reach, and abstract unix sockets of that
 * namespace only); its writes to disk are bounded by the file-size limit.
 * - Supervision: a pidfd from clone3(CLONE_PIDFD). The agent must not reap children with a
 *   blanket waitpid(-1): vmm_stop() reaps its own VM.
 */
#ifndef WRENN_AGENT_VMM_H
#define WRENN_AGENT_VMM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

typedef struct vmm_vm vmm_vm_t;

/** Everything needed to start a VM. Paths are absolute host paths, without "." or ".."
 * components or doubled slashes (they are mirrored into the VMM's private root as they are). */
typedef struct vmm_spec {
    const char *id;            /* sandbox id ([A-Za-z0-9_-], at most 64), used in names and logs */
    const char *run_dir;       /* the sandbox's own directory: QMP socket, console log, RAM file */
    const char *kernel;        /* PVH vmlinux (or bzImage) */
    const char *initrd;        /* initramfs that loads the virtio modules and switches root */
    const char *rootfs;        /* the sandbox's root disk (a qcow2 overlay for QEMU) */
    const char *rootfs_format; /* "qcow2" or "raw" */
    const char *cmdline;       /* extra kernel command line; the driver adds console=ttyS0,
                                * root=/dev/vda, rw, its boot tuning and tsc_early_khz/lpj from the
                                * host, each only when cmdline does not already set that key */
    const char *netns;         /* network namespace name the VM runs in (NULL: the agent's own) */
    const char *tap;           /* tap device inside netns ("tap0"); NULL: no network device */
    const char *mac;           /* guest MAC, e.g. "02:fc:00:00:00:01" */
    unsigned vcpus;            /* 1..64 */
    unsigned memory_mb;        /* 64..262144 */
    uid_t uid;                 /* unprivileged identity to run the VMM as (0: do not drop) */
    gid_t gid;
    const char *cgroup;   /* cgroup leaf name created under the agent's own cgroup in each
                           * hierarchy (see cg.h), NULL: none */
    const char *qemu_bin; /* NULL: /usr/bin/qemu-system-x86_64 */
    /* When set, every backing file of a qcow2 rootfs must resolve to a path under this
     * directory (e.g. <root>/images). A QEMU that was compromised can rewrite its overlay's
     * header; the next start of that overlay would otherwise show it any host file. */
    const char *backing_root;
    /* Guest RAM file (memory-backend-file, share=on unless mem_private). NULL: <run_dir>/mem,
     * created empty here. Otherwise an existing file of memory_mb MiB that the VM's uid may read
     * and write (a memfs file over a snapshot's layers); the driver neither creates, chowns nor
     * removes it. */
    const char *mem_path;
    /* Map the RAM file private (share=off) instead of shared: the guest's writes stay in the
     * VMM's own copy-on-write pages and never reach the file, so many VMs can map one file (a
     * snapshot's memory) and share its pages in the page cache. The VMM still opens the file
     * read-write (QEMU 7.2 has no read-only file with writable RAM): the file must refuse
     * writes itself (memfs in read-only mode does). vmm_save() then saves device state only
     * and vmm_ram_capture() reads what the guest changed. */
    bool mem_private;
    /* Start for a restore: QEMU waits in the "inmigrate" state (-incoming defer) until
     * vmm_restore() feeds it a saved device state. Everything else must be as when it was
     * saved (memory size, vCPUs, kernel, devices). */
    bool incoming;
} vmm_spec_t;

/** What the agent persists to re-adopt a VM after its own restart. */
typedef struct vmm_state {
    pid_t pid;           /* VMM process id */
    uint64_t start_time; /* the process's start time (from /proc/<pid>/stat), to detect
                          * pid reuse */
} vmm_state_t;

/** Start a VM from spec; returns once the VMM process answers its control socket (not when
 * the guest has booted). On failure nothing is left running and the files and cgroups made
 * here are removed (vmm.log stays, for diagnosis); e says why, with QEMU's own error line when
 * it exited. Errors: -EINVAL (bad spec), -ENOENT (missing file or netns), -ENODEV (no tap),
 * -ESRCH (QEMU exited at once), -ETIMEDOUT (no QMP greeting within 15 s). */
int vmm_qemu_start(const vmm_spec_t *spec, vmm_vm_t **out, err_t *e);

/** Re-adopt a VM this agent started before it restarted: checks the pid is still that VMM (same
 * start time and command) and reconnects its control socket. -ESRCH when it is gone (its empty
 * cgroups are then removed; the caller removes run_dir). When it still runs but its control
 * socket does not answer, it is killed (and reaped, cleaned up) and -EIO returned. */
int vmm_qemu_adopt(const vmm_spec_t *spec, const vmm_state_t *st, vmm_vm_t **out, err_t *e);

/** Remove what a VM that is no longer running left behind: its cgroups and QMP socket. */
int vmm_qemu_cleanup(const vmm_spec_t *spec, err_t *e);

/** At agent start, after stray VMs were killed: remove every empty cgroup named prefix* under
 * the agent's own groups (a running VM's group is never empty, so it stays). Returns how many
 * were removed. */
int vmm_qemu_reap_cgroups(const char *prefix, err_t *e);

/** Stop the VM: ask politely (QMP quit), wait up to grace_ms, then SIGKILL. Always reaps (when
 * the VM is our child), removes the QMP socket and the cgroups, and frees; vm may be NULL.
 * Returns 0 or the first error seen. */
int vmm_stop(vmm_vm_t *vm, int grace_ms, err_t *e);

/** Free the handle and close its connections but leave the VM running (it can be adopted
 * again). NULL-safe. */
void vmm_release(vmm_vm_t *vm);

/** Whether the VMM process is still alive. */
bool vmm_alive(vmm_vm_t *vm);

/** The state to persist. */
void vmm_get_state(const vmm_vm_t *vm, vmm_state_t *out);

/** A pidfd for the VMM process (owned by vm; readable when the process exits). */
int vmm_pidfd(const vmm_vm_t *vm);

/** Run one QMP command: args is a JSON object (stolen) or NULL; *ret (if ret) gets a new
 * reference to the "return" value. Events that arrive meanwhile are logged at debug level and
 * dropped. Errors: -EIO (QEMU refused, with its message), -ENOSYS (unknown command),
 * -ETIMEDOUT, -ECONNRESET (the VMM went away). */
int vmm_qmp(vmm_vm_t *vm, const char *cmd, json_t *args, json_t **ret, int timeout_ms, err_t *e);

/** Pause (QMP "stop") and resume (QMP "cont") the guest's vCPUs. */
int vmm_pause(vmm_vm_t *vm, err_t *e);
int vmm_resume(vmm_vm_t *vm, err_t *e);

/** Save the VM's device state (not its RAM) to fd, a regular file open for reading and
 * writing: stops the vCPUs if running, then, for shared RAM, migrates with x-ignore-shared and
 * waits for the migration to complete (up to timeout_ms); for private RAM (spec.mem_private)
 * QEMU writes its devices only (xen-save-devices-state) and the stream is completed to one
 * vmm_restore() loads. The VM stays stopped; the caller then stops it with vmm_stop() or, to go
 * on, vmm_resume(). After success a shared RAM file holds the memory that matches the state
 * (flush it to disk before relying on it); private RAM is read with vmm_ram_capture(). */
int vmm_save(vmm_vm_t *vm, int fd, int timeout_ms, err_t *e);

/** For a stopped VM with private RAM: every page the guest wrote since the VM started (the
 * VMM's copy-on-write pages of the RAM mapping, found in /proc/<pid>/pagemap, in memory or
 * swapped) is copied out of the VMM (process_vm_readv) into out_fd (a sparse file, which may be
 * O_DIRECT) at its guest offset, except pages of zeroes, which stay holes, and its bit set in
 * dirty (page p: byte p / 8, bit p % 8; host pages of sysconf(_SC_PAGESIZE) bytes,
 * memory / page bits). Pages the guest only read are the file's and are not copied. Returns
 * the number of pages copied, or a negative errno with e set (the VM is unchanged then). */
int64_t vmm_ram_capture(vmm_vm_t *vm, int out_fd, uint8_t *dirty, err_t *e);

/** Restore a VM started with spec.incoming from a state saved by vmm_save() (fd open for
 * reading, at offset 0), over the RAM file the VM was started with, and let it run. Errors:
 * -EBADMSG when QEMU refuses the state, -ETIMEDOUT. */
int vmm_restore(vmm_vm_t *vm, int fd, int timeout_ms, err_t *e);

/** The run state from QMP "query-status" ("running", "paused", "inmigrate", ...) into buf. */
int vmm_query_status(vmm_vm_t *vm, char *buf, size_t len, err_t *e);

/** Which accelerator QEMU uses on this host: "kvm" when a guest can really run under KVM,
 * else "tcg". Probed once per process, logged. */
const char *vmm_qemu_accel(void);

#endif
