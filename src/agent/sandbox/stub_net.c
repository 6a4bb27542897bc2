/* Placeholder network module used only while src/agent/net/ has no implementation in the
 * tree: creating a sandbox network fails with -ENOSYS. */
#include "net/net.h"

#include <stdio.h>
#include <string.h>

void net_slot_names(int slot, net_slot_t *out)
{
    memset(out, 0, sizeof *out);
    out->slot = slot;
    snprintf(out->netns, sizeof out->netns, "wrenn-ns-%d", slot);
    snprintf(out->veth, sizeof out->veth, "wrv%d", slot);
    snprintf(out->tap, sizeof out->tap, "tap0");
    slot &= 0xffff;
    snprintf(out->host_ip, sizeof out->host_ip, "10.11.%u.%u", (unsigned)(slot >> 8) & 0xffu,
             (unsigned)slot & 0xffu);
}

int net_host_init(err_t *e)
{
    (void)e;
    return 0;
}

int net_create(int slot, net_slot_t *out, err_t *e)
{
    net_slot_names(slot, out);
    return err_set(e, -ENOSYS, "this build has no network module");
}

int net_destroy(int slot, err_t *e)
{
    (void)slot;
    (void)e;
    return 0;
}

int net_reap_leftovers(const int *keep, int nkeep, err_t *e)
{
    (void)keep;
    (void)nkeep;
    (void)e;
    return 0;
}

int net_tap_open(int slot, err_t *e)
{
    (void)slot;
    return err_set(e, -ENOSYS, "this build has no network module");
}

bool net_exists(int slot)
{
    (void)slot;
    return false;
}
