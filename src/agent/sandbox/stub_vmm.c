/* Placeholder VMM driver used only while src/agent/vmm/ has no implementation in the tree:
 * every VM operation fails with -ENOSYS, so the agent still builds and serves the calls that
 * need no VM. */
#include "vmm/vmm.h"

#include <stddef.h>

int vmm_qemu_start(const vmm_spec_t *spec, vmm_vm_t **out, err_t *e)
{
    (void)spec;
    *out = NULL;
    return err_set(e, -ENOSYS, "this build has no VMM driver");
}

int vmm_qemu_adopt(const vmm_spec_t *spec, const vmm_state_t *st, vmm_vm_t **out, err_t *e)
{
    (void)spec;
    (void)st;
    *out = NULL;
    return err_set(e, -ESRCH, "this build has no VMM driver");
}

int vmm_stop(vmm_vm_t *vm, int grace_ms, err_t *e)
{
    (void)vm;
    (void)grace_ms;
    (void)e;
    return 0;
}

bool vmm_alive(vmm_vm_t *vm)
{
    (void)vm;
    return false;
}

void vmm_get_state(const vmm_vm_t *vm, vmm_state_t *out)
{
    (void)vm;
    out->pid = 0;
    out->start_time = 0;
}

int vmm_pidfd(const vmm_vm_t *vm)
{
    (void)vm;
    return -1;
}

const char *vmm_qemu_accel(void)
{
    return "none";
}

int vmm_qemu_cleanup(const vmm_spec_t *spec, err_t *e)
{
    (void)spec;
    (void)e;
    return 0;
}

void vmm_release(vmm_vm_t *vm)
{
    (void)vm;
}
