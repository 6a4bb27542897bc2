/* Thin rtnetlink requests for the sandbox network, built with libnl's message API (one request,
 * one acknowledgement each) and libnl-route's caches for the two dumps we need. The tap device is
 * made with the tun driver's ioctls, the only interface it has for creation. */
#include "net_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/nexthop.h>
#include <netlink/route/route.h>

/* libnl folds kernel errnos into its own codes; turn the ones we act on back into errnos. */
static int nle_errno(int nle)
{
    switch (nle < 0 ? -nle : nle) {
    case 0:
        return 0;
    case NLE_EXIST:
        return -EEXIST;
    case NLE_OBJ_NOTFOUND:
    case NLE_NODEV:
        return -ENODEV;
    case NLE_NOMEM:
        return -ENOMEM;
    case NLE_INVAL:
    case NLE_RANGE:
        return -EINVAL;
    case NLE_PERM:
    case NLE_NOACCESS:
        return -EPERM;
    case NLE_BUSY:
        return -EBUSY;
    case NLE_NOADDR:
        return -EADDRNOTAVAIL;
    case NLE_OPNOTSUPP:
    case NLE_AF_NOSUPPORT:
        return -EOPNOTSUPP;
    case NLE_AGAIN:
        return -EAGAIN;
    case NLE_INTR:
        return -EINTR;
    default:
        return -EIO;
    }
}

static int nl_fail(err_t *e, int nle, const char *what)
{
    return err_set(e, nle_errno(nle), "%s: %s", what, nl_geterror(nle));
}

static int parse_mac(const char *s, uint8_t out[6])
{
    unsigned v[6];
    char tail;
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) !=
        6)
        return -EINVAL;
    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t)v[i];
    return 0;
}

static int on_error(struct sockaddr_nl *nla, struct nlmsgerr *err, void *arg)
{
    (void)nla;
    *(int *)arg = err->error < 0 ? err->error : -EIO;
    return NL_STOP;
}

static int on_ack(struct nl_msg *msg, void *arg)
{
    (void)msg;
    *(int *)arg = 0;
    return NL_STOP;
}

/* Send msg (consumed) and wait for the kernel's acknowledgement. Unlike nl_send_sync() this
 * keeps the kernel's own errno, which libnl would fold into "Unspecific failure". */
static int send_sync(struct nl_sock *sk, struct nl_msg *msg, err_t *e, const char *what)
{
    int rc = nl_send_auto(sk, msg);
    nlmsg_free(msg);
    if (rc < 0)
        return nl_fail(e, rc, what);
    struct nl_cb *own = nl_socket_get_cb(sk); /* takes a reference */
    struct nl_cb *cb = nl_cb_clone(own);
    nl_cb_put(own);
    if (!cb)
        return err_set(e, -ENOMEM, "%s: netlink callback", what);
    int kerr = 1; /* 1 until the kernel answered */
    nl_cb_err(cb, NL_CB_CUSTOM, on_error, &kerr);
    nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, on_ack, &kerr);
    while (kerr == 1) {
        rc = nl_recvmsgs(sk, cb);
        if (rc < 0 && kerr == 1) {
            kerr = nle_errno(rc);
            break;
        }
    }
    nl_cb_put(cb);
    if (kerr < 0)
        return err_set(e, kerr, "%s: %s", what, strerror(-kerr));
    return 0;
}

int net__nl_open(struct nl_sock **out, err_t *e)
{
    *out = NULL;
    struct nl_sock *sk = nl_socket_alloc();
    if (!sk)
        return err_set(e, -ENOMEM, "netlink: socket alloc");
    int rc = nl_connect(sk, NETLINK_ROUTE);
    if (rc < 0) {
        nl_socket_free(sk);
        return nl_fail(e, rc, "netlink: connect");
    }
    *out = sk;
    return 0;
}

void net__nl_close(struct nl_sock *sk)
{
    if (sk)
        nl_socket_free(sk);
}

static int link_new(struct nl_sock *sk, const char *name, int idx, const char *kind,
                    const char *peer, int peer_nsfd, err_t *e)
{
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    if (!msg)
        return err_set(e, -ENOMEM, "netlink: msg alloc");
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC, .ifi_index = idx, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    struct nlattr *info, *data, *pinfo;
    if (nlmsg_append(msg, &ifi, sizeof ifi, NLMSG_ALIGNTO) < 0 ||
        nla_put_string(msg, IFLA_IFNAME, name) < 0 ||
        !(info = nla_nest_start(msg, IFLA_LINKINFO)) ||
        nla_put_string(msg, IFLA_INFO_KIND, kind) < 0)
        goto overflow;
    if (peer) {
        /* The peer cannot be brought up in the same request (the kernel answers ENOTCONN);
         * the caller does it once the peer has its address. */
        struct ifinfomsg pifi = {.ifi_family = AF_UNSPEC};
        if (!(data = nla_nest_start(msg, IFLA_INFO_DATA)) ||
            !(pinfo = nla_nest_start(msg, VETH_INFO_PEER)) ||
            nlmsg_append(msg, &pifi, sizeof pifi, NLMSG_ALIGNTO) < 0 ||
            nla_put_string(msg, IFLA_IFNAME, peer) < 0 ||
            (peer_nsfd >= 0 && nla_put_u32(msg, IFLA_NET_NS_FD, (uint32_t)peer_nsfd) < 0))
            goto overflow;
        nla_nest_end(msg, pinfo);
        nla_nest_end(msg, data);
    }
    nla_nest_end(msg, info);
    char what[64];
    snprintf(what, sizeof what, "netlink: create %s %s", kind, name);
    return send_sync(sk, msg, e, what);
overflow:
    nlmsg_free(msg);
    return err_set(e, -EMSGSIZE, "netlink: create %s: message too large", name);
}

int net__nl_veth_add(struct nl_sock *sk, const char *name, int idx, const char *peer, int peer_nsfd,
                     err_t *e)
{
    return link_new(sk, name, idx, "veth", peer, peer_nsfd, e);
}

int net__nl_link_del(struct nl_sock *sk, const char *name, err_t *e)
{
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_DELLINK, 0);
    if (!msg)
        return err_set(e, -ENOMEM, "netlink: msg alloc");
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    if (nlmsg_append(msg, &ifi, sizeof ifi, NLMSG_ALIGNTO) < 0 ||
        nla_put_string(msg, IFLA_IFNAME, name) < 0) {
        nlmsg_free(msg);
        return err_set(e, -EMSGSIZE, "netlink: delete %s: message too large", name);
    }
    char what[64];
    snprintf(what, sizeof what, "netlink: delete link %s", name);
    return send_sync(sk, msg, e, what);
}

int net__nl_link_up(struct nl_sock *sk, int idx, const char *mac, err_t *e)
{
    uint8_t hw[6];
    if (mac && parse_mac(mac, hw) < 0)
        return err_set(e, -EINVAL, "netlink: bad MAC");
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_NEWLINK, 0);
    if (!msg)
        return err_set(e, -ENOMEM, "netlink: msg alloc");
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC, .ifi_index = idx, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    if (nlmsg_append(msg, &ifi, sizeof ifi, NLMSG_ALIGNTO) < 0 ||
        (mac && nla_put(msg, IFLA_ADDRESS, sizeof hw, hw) < 0)) {
        nlmsg_free(msg);
        return err_set(e, -EMSGSIZE, "netlink: link up: message too large");
    }
    char what[48];
    snprintf(what, sizeof what, "netlink: link %d up", idx);
    return send_sync(sk, msg, e, what);
}

int net__nl_link_index(struct nl_sock *sk, const char *name, err_t *e)
{
    struct rtnl_link *link = NULL;
    int rc = rtnl_link_get_kernel(sk, 0, name, &link);
    if (rc < 0)
        return err_set(e, nle_errno(rc) == -EIO ? -EIO : -ENODEV, "netlink: no link %s: %s", name,
                       nl_geterror(rc));
    int idx = rtnl_link_get_ifindex(link);
    rtnl_link_put(link);
    return idx;
}

int net__nl_addr_add(struct nl_sock *sk, int idx, uint32_t ip, int prefix, err_t *e)
{
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    if (!msg)
        return err_set(e, -ENOMEM, "netlink: msg alloc");
    struct ifaddrmsg ifa = {.ifa_family = AF_INET,
                            .ifa_prefixlen = (unsigned char)prefix,
                            .ifa_scope = RT_SCOPE_UNIVERSE,
                            .ifa_index = (unsigned)idx};
    uint32_t be = htonl(ip);
    if (nlmsg_append(msg, &ifa, sizeof ifa, NLMSG_ALIGNTO) < 0 ||
        nla_put(msg, IFA_LOCAL, 4, &be) < 0 || nla_put(msg, IFA_ADDRESS, 4, &be) < 0) {
        nlmsg_free(msg);
        return err_set(e, -EMSGSIZE, "netlink: addr: message too large");
    }
    char ips[16], what[64];
    net__ip_str(ip, ips);
    snprintf(what, sizeof what, "netlink: add address %s/%d", ips, prefix);
    return send_sync(sk, msg, e, what);
}

int net__nl_route_add(struct nl_sock *sk, uint32_t dst, int dst_len, uint32_t gw, int idx, err_t *e)
{
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    if (!msg)
        return err_set(e, -ENOMEM, "netlink: msg alloc");
    struct rtmsg rtm = {.rtm_family = AF_INET,
                        .rtm_dst_len = (unsigned char)dst_len,
                        .rtm_table = RT_TABLE_MAIN,
                        .rtm_protocol = RTPROT_BOOT,
                        .rtm_scope = gw ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK,
                        .rtm_type = RTN_UNICAST};
    uint32_t bdst = htonl(dst), bgw = htonl(gw), oif = (uint32_t)idx;
    if (nlmsg_append(msg, &rtm, sizeof rtm, NLMSG_ALIGNTO) < 0 ||
        (dst_len > 0 && nla_put(msg, RTA_DST, 4, &bdst) < 0) ||
        (gw && nla_put(msg, RTA_GATEWAY, 4, &bgw) < 0) || nla_put_u32(msg, RTA_OIF, oif) < 0) {
        nlmsg_free(msg);
        return err_set(e, -EMSGSIZE, "netlink: route: message too large");
    }
    char ips[16], what[64];
    net__ip_str(dst, ips);
    snprintf(what, sizeof what, "netlink: add route %s/%d", ips, dst_len);
    return send_sync(sk, msg, e, what);
}

int net__nl_neigh_add(struct nl_sock *sk, int idx, uint32_t ip, const char *mac, err_t *e)
{
    uint8_t hw[6];
    if (parse_mac(mac, hw) < 0)
        return err_set(e, -EINVAL, "netlink: bad MAC");
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
    if (!msg)
        return err_set(e, -ENOMEM, "netlink: msg alloc");
    struct ndmsg nd = {.ndm_family = AF_INET, .ndm_ifindex = idx, .ndm_state = NUD_PERMANENT};
    uint32_t be = htonl(ip);
    if (nlmsg_append(msg, &nd, sizeof nd, NLMSG_ALIGNTO) < 0 || nla_put(msg, NDA_DST, 4, &be) < 0 ||
        nla_put(msg, NDA_LLADDR, sizeof hw, hw) < 0) {
        nlmsg_free(msg);
        return err_set(e, -EMSGSIZE, "netlink: neigh: message too large");
    }
    return send_sync(sk, msg, e, "netlink: add neighbour");
}

int net__nl_default_oif(struct nl_sock *sk, err_t *e)
{
    struct nl_cache *cache = NULL;
    int rc = rtnl_route_alloc_cache(sk, AF_INET, 0, &cache);
    if (rc < 0)
        return nl_fail(e, rc, "netlink: dump routes");
    int best = 0;
    uint32_t best_prio = UINT32_MAX;
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        struct rtnl_route *r = (struct rtnl_route *)o;
        struct nl_addr *dst = rtnl_route_get_dst(r);
        if (rtnl_route_get_table(r) != RT_TABLE_MAIN || rtnl_route_get_type(r) != RTN_UNICAST ||
            (dst && nl_addr_get_prefixlen(dst) != 0) || rtnl_route_get_nnexthops(r) < 1)
            continue;
        struct rtnl_nexthop *nh = rtnl_route_nexthop_n(r, 0);
        int oif = nh ? rtnl_route_nh_get_ifindex(nh) : 0;
        uint32_t prio = rtnl_route_get_priority(r);
        if (oif > 0 && prio < best_prio) {
            best = oif;
            best_prio = prio;
        }
    }
    nl_cache_free(cache);
    return best;
}

int net__nl_links_foreach(struct nl_sock *sk, void (*fn)(const char *name, void *arg), void *arg,
                          err_t *e)
{
    struct nl_cache *cache = NULL;
    int rc = rtnl_link_alloc_cache(sk, AF_UNSPEC, &cache);
    if (rc < 0)
        return nl_fail(e, rc, "netlink: dump links");
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        const char *name = rtnl_link_get_name((struct rtnl_link *)o);
        if (name)
            fn(name, arg);
    }
    nl_cache_free(cache);
    return 0;
}

static int tun_open(const char *name, short flags, int idx, err_t *e)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return err_errno(e, "open /dev/net/tun");
    unsigned uidx = (unsigned)idx;
    if (idx > 0 && ioctl(fd, TUNSETIFINDEX, &uidx) < 0) {
        int rc = err_errno(e, "tap: TUNSETIFINDEX");
        close(fd);
        return rc;
    }
    struct ifreq ifr = {0};
    ifr.ifr_flags = flags;
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int rc = err_errno(e, "tap: TUNSETIFF");
        close(fd);
        return rc;
    }
    return fd;
}

int net__tap_create(const char *name, int idx, err_t *e)
{
    int fd = tun_open(name, IFF_TAP | IFF_NO_PI, idx, e);
    if (fd < 0)
        return fd;
    int rc = 0;
    if (ioctl(fd, TUNSETPERSIST, 1) < 0)
        rc = err_errno(e, "tap: TUNSETPERSIST");
    close(fd);
    return rc;
}

int net__tap_attach(const char *name, bool vnet_hdr, err_t *e)
{
    return tun_open(name, (short)(IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0)), 0, e);
}
