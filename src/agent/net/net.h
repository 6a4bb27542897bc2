/* Sandbox networking: one network namespace per sandbox, a veth pair to the host, a tap for the
 * VM, NAT rules; all through netlink (libnl) and nftables (libnftables), no `ip` processes.
 *
 * Addressing (every sandbox alike inside, so a snapshot restores into any slot):
 *   guest eth0 169.254.0.21/30, MAC NET_GUEST_MAC; tap0 in the namespace 169.254.0.22/30,
 *   MAC NET_GW_MAC, with a permanent neighbour entry for the guest.
 *   slot i (1..NET_MAX_SLOTS): host side veth "wrv<i>" 10.12.x.y/31, namespace side "eth0" the
 *   next address; the host reaches the guest's envd at host_ip 10.11.0.0+i through DNAT.
 * Sandboxes cannot reach each other or the host's own services: only the guest's envd port is
 * reachable from the host, and the guest's traffic may only leave through the host's default
 * route (masqueraded), never to 10.11/16, 10.12/16 or host-local addresses.
 *
 * Changes to the given interface (net helper): net_tap_open() added, so a VMM that runs
 * unprivileged can be handed an fd of the tap (QEMU `-netdev tap,fd=N`) instead of needing
 * CAP_NET_ADMIN to attach by name; net_exists() added for re-adoption after an agent restart.
 * Errors are documented per function. All functions may be called from any thread; each call
 * makes its own netlink sockets, and nftables runs are serialized by one internal lock. The
 * agent must call net_host_init() once before net_create(), and net_reap_leftovers() before
 * creating slots (it assumes no concurrent net_create). Only one agent per host: the host table
 * `inet wrenn` is shared by all slots.
 */
#ifndef WRENN_AGENT_NET_H
#define WRENN_AGENT_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

#define NET_MAX_SLOTS 16383
#define NET_GUEST_IP  "169.254.0.21"
#define NET_GW_IP     "169.254.0.22"
#define NET_GUEST_MAC "02:fc:00:00:00:01"
#define NET_GW_MAC    "02:fc:00:00:00:02"
#define NET_ENVD_PORT 49983

typedef struct net_slot {
    int slot;         /* 1..NET_MAX_SLOTS */
    char netns[32];   /* "wrenn-ns-<slot>" */
    char veth[16];    /* host side, "wrv<slot>" */
    char tap[16];     /* "tap0" inside the namespace */
    char host_ip[16]; /* where the host reaches the guest, "10.11.x.y" */
} net_slot_t;

/** Fill names and addresses for slot (no side effects). */
void net_slot_names(int slot, net_slot_t *out);

/** Host-wide setup at agent start: IPv4 forwarding, /run/netns, the agent's nftables table
 * `inet wrenn` (base chains and sets; set elements of existing slots are kept). Idempotent. */
int net_host_init(err_t *e);

/** Create namespace, veth, tap, addresses, routes, neighbour entry and NAT for slot. On failure
 * everything created is removed again. -EINVAL: slot out of range; -EEXIST: the slot's namespace
 * or veth already exists (a leftover: reap it); other negative errnos from netlink/nftables.
 * Egress for all slots goes out of the host's default route's device; it is looked up again (for
 * all slots at once) by every net_create and net_host_init (no default route: no egress). */
int net_create(int slot, net_slot_t *out, err_t *e);

/** Remove everything net_create made for slot (best effort, every step tried; what is already
 * gone is not an error, so it is idempotent). Call after the VM has exited: a process still in
 * the namespace keeps it (and its tap) alive. Returns 0 or the first error. */
int net_destroy(int slot, err_t *e);

/** Remove every namespace, veth and rule of ours that is not in keep[0..nkeep) (agent start).
 * Ours means exactly "wrenn-ns-<n>" in /run/netns, links "wrv<n>" (n a canonical slot number)
 * and the set elements of table inet wrenn; nothing else is touched. The per-slot set elements
 * of kept slots whose veth exists are (re)written. */
int net_reap_leftovers(const int *keep, int nkeep, err_t *e);

/** Open the slot's tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) from inside its namespace; returns an
 * O_CLOEXEC fd owned by the caller, or -ENOENT when the slot has no namespace. */
int net_tap_open(int slot, err_t *e);

/** Whether slot's namespace file and host veth both exist. */
bool net_exists(int slot);

#endif
