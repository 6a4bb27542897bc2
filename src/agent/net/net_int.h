/* Internals shared by the files of src/agent/net (and its tests): address arithmetic, thin
 * rtnetlink requests built with libnl, and the nftables text generators. Not for other modules.
 *
 * Everything here works on the network namespace its netlink socket (or nft context) was created
 * in; the callers in net.c decide which namespace that is. No function keeps state between calls.
 */
#ifndef WRENN_AGENT_NET_INT_H
#define WRENN_AGENT_NET_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct nl_sock;

/* Names and fixed ifindexes inside a sandbox namespace. The namespace is fresh, so we choose the
 * ifindexes ourselves and save one lookup per device. */
#define NET__NETNS_DIR   "/run/netns"
#define NET__NS_PREFIX   "wrenn-ns-"
#define NET__VETH_PREFIX "wrv"
#define NET__NS_IFNAME   "eth0"
#define NET__TAP_IFNAME  "tap0"
#define NET__IDX_LO      1
#define NET__IDX_ETH0    2
#define NET__IDX_TAP     3
#define NET__TABLE       "wrenn"

/** The IPv4 addresses of one slot, host byte order. */
typedef struct net__addrs {
    uint32_t host_ip; /* 10.11.0.0 + slot: where the host reaches the guest's envd */
    uint32_t veth_ip; /* 10.12.0.0 + 2*slot: host end, /31 */
    uint32_t peer_ip; /* 10.12.0.0 + 2*slot + 1: "eth0" in the namespace, /31 */
} net__addrs_t;

/** Whether slot is in 1..NET_MAX_SLOTS. */
bool net__slot_valid(int slot);

/** Addresses of a valid slot. */
void net__addrs(int slot, net__addrs_t *out);

/** Dotted quad of a host-order address into out (16 bytes). */
void net__ip_str(uint32_t ip, char out[16]);

/** Parse "wrenn-ns-<n>" / "wrv<n>" (prefix given): the slot, or -1 when name is not exactly a
 * prefix followed by a canonical decimal slot number (no sign, no leading zero, in range). */
int net__parse_slot(const char *name, const char *prefix);

/* ---- rtnetlink (net_nl.c). Every function returns 0 or a negative errno and fills e. ---- */

/** Open a NETLINK_ROUTE socket in the calling thread's network namespace. */
int net__nl_open(struct nl_sock **out, err_t *e);

/** Close a socket from net__nl_open (NULL-safe). */
void net__nl_close(struct nl_sock *sk);

/** Create a veth pair: name (ifindex idx, or 0 for any) in the socket's namespace, up, and peer
 * in the namespace peer_nsfd (-1: the same one), down (bring it up with net__nl_link_up). */
int net__nl_veth_add(struct nl_sock *sk, const char *name, int idx, const char *peer, int peer_nsfd,
                     err_t *e);

/** Delete the link called name; -ENODEV when there is none. */
int net__nl_link_del(struct nl_sock *sk, const char *name, err_t *e);

/** Bring link idx up, optionally setting its MAC (mac NULL: leave it). */
int net__nl_link_up(struct nl_sock *sk, int idx, const char *mac, err_t *e);

/** ifindex of name, or -ENODEV. */
int net__nl_link_index(struct nl_sock *sk, const char *name, err_t *e);

/** Add ip/prefix on link idx. */
int net__nl_addr_add(struct nl_sock *sk, int idx, uint32_t ip, int prefix, err_t *e);

/** Add a route dst/dst_len via gw (0: none, on-link) out of link idx, main table. */
int net__nl_route_add(struct nl_sock *sk, uint32_t dst, int dst_len, uint32_t gw, int idx,
                      err_t *e);

/** Add a permanent neighbour entry ip → mac on link idx. */
int net__nl_neigh_add(struct nl_sock *sk, int idx, uint32_t ip, const char *mac, err_t *e);

/** ifindex of the device of the main table's IPv4 default route with the lowest metric, 0 when
 * the namespace has none. */
int net__nl_default_oif(struct nl_sock *sk, err_t *e);

/** Call fn(name, arg) for every link of the socket's namespace. */
int net__nl_links_foreach(struct nl_sock *sk, void (*fn)(const char *name, void *arg), void *arg,
                          err_t *e);

/** Create the tap tap0 (ifindex idx) in the calling thread's namespace, persistent, no owner. */
int net__tap_create(const char *name, int idx, err_t *e);

/** Attach to the existing tap name in the calling thread's namespace; returns the fd (O_CLOEXEC)
 * or a negative errno. vnet_hdr selects IFF_VNET_HDR. */
int net__tap_attach(const char *name, bool vnet_hdr, err_t *e);

/* ---- nftables (net_nft.c) ---- */

/** Run nft commands (one transaction) in the calling thread's namespace. Errors carry nft's first
 * error line. */
int net__nft_run(const char *cmds, err_t *e);

/** Text of the host table: sets, chains and their rules; idempotent when run again (chains are
 * flushed and refilled in the same transaction, set elements are kept). def_oif is the default
 * route's ifindex (0: none, so sandboxes get no egress). Caller frees. */
char *net__nft_host_text(int def_oif);

/** Text adding (add) or removing (!add) the host set elements of slot; the removal never fails
 * on an element that is already gone. def_oif >= 0 also refreshes the egress interface set.
 * Caller frees. */
char *net__nft_slot_text(int slot, bool add, int def_oif);

/** Text replacing the per-slot host set elements with those of slots[0..n). Caller frees. */
char *net__nft_reset_text(const int *slots, int n);

/** Text of the table inside slot's namespace (DNAT, SNAT, guest filter). Caller frees. */
char *net__nft_ns_text(int slot);

#endif
