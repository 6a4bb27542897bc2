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
 */
#ifndef WRENN_AGENT_NET_H
#define WRENN_AGENT_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

#define NET_MAX_SLOTS  16383
#define NET_GUEST_IP   "169.254.0.21"
#define NET_GW_IP      "169.254.0.22"
#define NET_GUEST_MAC  "02:fc:00:00:00:01"
#define NET_GW_MAC     "02:fc:00:00:00:02"
#define NET_ENVD_PORT  49983

typedef struct net_slot {
    int slot;            /* 1..NET_MAX_SLOTS */
    char netns[32];      /* "wrenn-ns-<slot>" */
    char veth[16];       /* host side, "wrv<slot>" */
    char tap[16];        /* "tap0" inside the namespace */
    char host_ip[16];    /* where the host reaches the guest, "10.11.x.y" */
} net_slot_t;

/** Fill names and addresses for slot (no side effects). */
void net_slot_names(int slot, net_slot_t *out);

/** Host-wide setup at agent start: IPv4 forwarding, the agent's nftables table. Idempotent. */
int net_host_init(err_t *e);

/** Create namespace, veth, tap, addresses, routes, neighbour entry and NAT for slot. On failure
 * everything created is removed again. */
int net_create(int slot, net_slot_t *out, err_t *e);

/** Remove everything net_create made for slot (best effort, every step tried). */
int net_destroy(int slot, err_t *e);

/** Remove every namespace, veth and rule of ours that is not in keep[0..nkeep) (agent start). */
int net_reap_leftovers(const int *keep, int nkeep, err_t *e);

#endif
