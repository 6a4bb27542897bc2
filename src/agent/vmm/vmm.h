/* The VMM driver interface: how the host agent starts, stops and inspects one VM.
 *
 * Two drivers implement it: qemu (QEMU microvm over QMP; what runs on every machine) and,
 * later, firecracker. A driver owns its VM process; callers see only vmm_vm_t.
 * Thread-safety: one vmm_vm_t is used by one thread at a time (the sandbox's lock orders calls).
 */
#ifndef WRENN_AGENT_VMM_H
#define WRENN_AGENT_VMM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

typedef struct vmm_vm vmm_vm_t;

/** Everything needed to start a VM. Paths are absolute host paths. */
typedef struct vmm_spec {
    const char *id;          /* sandbox id, used in names and logs */
    const char *run_dir;     /* the sandbox's own directory: QMP socket, console log, RAM file */
    const char *kernel;      /* PVH vmlinux (or bzImage) */
    const char *initrd;      /* initramfs that loads the virtio modules and switches root */
    const char *rootfs;      /* the sandbox's root disk (a qcow2 overlay for QEMU) */
    const char *rootfs_format; /* "qcow2" or "raw" */
    const char *cmdline;     /* extra kernel command line (the driver adds its own tuning) */
    const char *netns;       /* network namespace name the VM runs in (NULL: the agent's own) */
    const char *tap;         /* tap device inside netns ("tap0") */
    const char *mac;         /* guest MAC, e.g. "02:fc:00:00:00:01" */
    unsigned vcpus;
    unsigned memory_mb;
    uid_t uid;               /* unprivileged identity to run the VMM as (0: do not drop) */
    gid_t gid;
    const char *cgroup;      /* cgroup (v2 path or v1 leaf name) to run in, NULL: none */
} vmm_spec_t;

/** What the agent persists to re-adopt a VM after its own restart. */
typedef struct vmm_state {
    pid_t pid;               /* VMM process id */
    uint64_t start_time;     /* the process's start time (from /proc/<pid>/stat), to detect
                              * pid reuse */
} vmm_state_t;

/** Start a VM from spec; returns once the VMM process answers its control socket (not when
 * the guest has booted). On failure nothing is left running. */
int vmm_qemu_start(const vmm_spec_t *spec, vmm_vm_t **out, err_t *e);

/** Re-adopt a VM this agent started before it restarted: checks the pid is still that VMM (same
 * start time and command) and reconnects its control socket. -ESRCH when it is gone. */
int vmm_qemu_adopt(const vmm_spec_t *spec, const vmm_state_t *st, vmm_vm_t **out, err_t *e);

/** Stop the VM: ask politely (ACPI/QMP quit), wait up to grace_ms, then SIGKILL. Always reaps
 * and frees; vm may be NULL. Returns 0 or the first error seen. */
int vmm_stop(vmm_vm_t *vm, int grace_ms, err_t *e);

/** Whether the VMM process is still alive. */
bool vmm_alive(vmm_vm_t *vm);

/** The state to persist. */
void vmm_get_state(const vmm_vm_t *vm, vmm_state_t *out);

/** A pidfd for the VMM process (owned by vm; readable when the process exits). */
int vmm_pidfd(const vmm_vm_t *vm);

/** Which accelerator QEMU uses on this host: "kvm" when a guest can really run under KVM,
 * else "tcg". Probed once per process, logged. */
const char *vmm_qemu_accel(void);

#endif
