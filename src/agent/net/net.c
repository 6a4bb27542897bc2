/* Sandbox networking: namespace, veth, tap, addresses, routes, neighbour and nftables per slot.
 *
 * The namespace side is configured by a short-lived helper thread that unshares a new network
 * namespace, bind-mounts it at /run/netns/wrenn-ns-<slot> (where `ip netns` finds it too) and
 * does all its work through sockets opened inside it; the calling thread never changes namespace.
 * The host side is done by the caller through a socket in its own namespace. See net.h for the
 * addressing and net_nft.c for the firewall.
 */
#include "net.h"
#include "net_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "xalloc.h"

bool net__slot_valid(int slot)
{
    return slot >= 1 && slot <= NET_MAX_SLOTS;
}

/* 10.11.0.0 + slot and 10.12.0.0 + 2*slot(+1): the slot cap keeps both inside their /16. */
void net__addrs(int slot, net__addrs_t *out)
{
    uint32_t s = (uint32_t)slot;
    out->host_ip = (10u << 24 | 11u << 16) + s;
    out->veth_ip = (10u << 24 | 12u << 16) + 2 * s;
    out->peer_ip = out->veth_ip + 1;
}

void net__ip_str(uint32_t ip, char out[16])
{
    snprintf(out, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

int net__parse_slot(const char *name, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0)
        return -1;
    const char *p = name + pl;
    if (*p < '1' || *p > '9')
        return -1;
    int v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > NET_MAX_SLOTS)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return net__slot_valid(v) ? v : -1;
}

void net_slot_names(int slot, net_slot_t *out)
{
    memset(out, 0, sizeof *out);
    out->slot = slot;
    if (!net__slot_valid(slot))
        return;
    net__addrs_t a;
    net__addrs(slot, &a);
    snprintf(out->netns, sizeof out->netns, NET__NS_PREFIX "%d", slot);
    snprintf(out->veth, sizeof out->veth, NET__VETH_PREFIX "%d", slot);
    snprintf(out->tap, sizeof out->tap, "%s", NET__TAP_IFNAME);
    net__ip_str(a.host_ip, out->host_ip);
}

static void ns_path(int slot, char out[64])
{
    snprintf(out, 64, NET__NETNS_DIR "/" NET__NS_PREFIX "%d", slot);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Write a short value to a sysctl (or any proc file) of the calling thread's namespace. */
static int write_file(const char *path, const char *val, err_t *e)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return err_errno(e, path);
    size_t n = strlen(val);
    ssize_t w = write(fd, val, n);
    int rc = 0;
    if (w != (ssize_t)n)
        rc = w < 0 ? err_errno(e, path) : err_set(e, -EIO, "%s: short write", path);
    close(fd);
    return rc;
}

/* /run/netns as iproute2 keeps it: a shared mount, so namespaces bind-mounted there show up in
 * every mount namespace that sees /run. */
static int ensure_netns_dir(err_t *e)
{
    if (mkdir(NET__NETNS_DIR, 0755) < 0 && errno != EEXIST)
        return err_errno(e, "mkdir " NET__NETNS_DIR);
    if (mount("", NET__NETNS_DIR, "none", MS_SHARED | MS_REC, NULL) == 0)
        return 0;
    if (errno != EINVAL)
        return err_errno(e, "make " NET__NETNS_DIR " shared");
    /* Not a mount point yet: bind it onto itself, then share it. */
    if (mount(NET__NETNS_DIR, NET__NETNS_DIR, "none", MS_BIND | MS_REC, NULL) < 0)
        return err_errno(e, "bind " NET__NETNS_DIR);
    if (mount("", NET__NETNS_DIR, "none", MS_SHARED | MS_REC, NULL) < 0)
        return err_errno(e, "make " NET__NETNS_DIR " shared");
    return 0;
}

/* Unmount and remove a namespace file; absent or unmounted is fine. */
static int ns_remove(const char *path, err_t *e)
{
    int rc = 0;
    if (umount2(path, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
        rc = err_errno(e, "umount netns");
    if (unlink(path) < 0 && errno != ENOENT && rc == 0)
        rc = err_errno(e, "unlink netns");
    return rc;
}

int net_host_init(err_t *e)
{
    struct nl_sock *sk = NULL;
    char *text = NULL;
    int rc = ensure_netns_dir(e);
    if (rc < 0)
        goto out;
    if ((rc = write_file("/proc/sys/net/ipv4/ip_forward", "1", e)) < 0)
        goto out;
    if ((rc = net__nl_open(&sk, e)) < 0)
        goto out;
    int def = net__nl_default_oif(sk, e);
    if (def < 0) {
        rc = def;
        goto out;
    }
    text = net__nft_host_text(def);
    rc = net__nft_run(text, e);
    if (rc < 0) {
        /* A table left by an agent with other definitions: start it afresh. Its slot elements
         * are lost; net_reap_leftovers puts back those of the slots the agent keeps. */
        log_warn("net_host_table_recreate", "err=\"%s\"", e ? e->msg : "");
        char *again =
            xasprintf("add table inet " NET__TABLE "\ndelete table inet " NET__TABLE "\n%s", text);
        err_clear(e);
        rc = net__nft_run(again, e);
        free(again);
    }
    if (rc < 0)
        goto out;
    log_info("net_host_init", "egress_ifindex=%d", def);
out:
    free(text);
    net__nl_close(sk);
    return rc < 0 ? err_wrap(e, "net host init") : 0;
}

/* What the namespace thread did, so the caller can undo exactly that. */
typedef struct ns_job {
    int slot;
    const char *path; /* the namespace file, created empty by the caller */
    int host_nsfd;    /* the caller's network namespace, for the veth's host end */
    bool mounted;
    bool veth;
    int rc;
    err_t err;
} ns_job_t;

static int ns_setup(ns_job_t *j, err_t *e)
{
    struct nl_sock *sk = NULL;
    char *rules = NULL;
    char veth[16];
    net__addrs_t a;
    net__addrs(j->slot, &a);
    snprintf(veth, sizeof veth, NET__VETH_PREFIX "%d", j->slot);
    int rc = 0;

    if (unshare(CLONE_NEWNET) < 0) {
        rc = err_errno(e, "unshare(CLONE_NEWNET)");
        goto out;
    }
    if (mount("/proc/thread-self/ns/net", j->path, "none", MS_BIND, NULL) < 0) {
        rc = err_errno(e, "bind-mount netns");
        goto out;
    }
    j->mounted = true;
    /* Before any device exists, so every device inherits it: IPv4 forwarding on, IPv6 off (the
     * guest network is IPv4 only, and this spares us router solicitations and DAD). */
    if ((rc = write_file("/proc/sys/net/ipv4/ip_forward", "1", e)) < 0)
        goto out;
    write_file("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1", NULL);
    write_file("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1", NULL);

    if ((rc = net__nl_open(&sk, e)) < 0)
        goto out;
    if ((rc = net__nl_link_up(sk, NET__IDX_LO, NULL, e)) < 0)
        goto out;
    if ((rc = net__nl_veth_add(sk, NET__NS_IFNAME, NET__IDX_ETH0, veth, j->host_nsfd, e)) < 0) {
        /* The namespace is new, so the name that exists is the host end's. */
        if (rc == -EEXIST)
            err_set(e, -EEXIST, "host link %s already exists (a leftover: reap it)", veth);
        goto out;
    }
    j->veth = true;
    if ((rc = net__nl_addr_add(sk, NET__IDX_ETH0, a.peer_ip, 31, e)) < 0)
        goto out;
    if ((rc = net__tap_create(NET__TAP_IFNAME, NET__IDX_TAP, e)) < 0)
        goto out;
    if ((rc = net__nl_link_up(sk, NET__IDX_TAP, NET_GW_MAC, e)) < 0)
        goto out;
    if ((rc = net__nl_addr_add(sk, NET__IDX_TAP, (169u << 24 | 254u << 16) + 22, 30, e)) < 0)
        goto out;
    if ((rc = net__nl_route_add(sk, 0, 0, a.veth_ip, NET__IDX_ETH0, e)) < 0)
        goto out;
    /* The guest's MAC is fixed, so no ARP: a failed resolution while the guest boots would cost
     * a 1 s retry (runtime-lab §1 pitfall 2). */
    if ((rc = net__nl_neigh_add(sk, NET__IDX_TAP, (169u << 24 | 254u << 16) + 21, NET_GUEST_MAC,
                                e)) < 0)
        goto out;
    rules = net__nft_ns_text(j->slot);
    rc = net__nft_run(rules, e);
out:
    free(rules);
    net__nl_close(sk);
    return rc;
}

static void *ns_thread(void *arg)
{
    ns_job_t *j = arg;
    j->rc = ns_setup(j, &j->err);
    return NULL;
}

/* Run fn(arg) on a fresh thread and wait for it: namespace changes stay on that thread. */
static int run_on_thread(void *(*fn)(void *), void *arg, err_t *e)
{
    pthread_t t;
    int rc = pthread_create(&t, NULL, fn, arg);
    if (rc != 0)
        return err_set(e, -rc, "pthread_create: %s", strerror(rc));
    pthread_join(t, NULL);
    return 0;
}

int net_create(int slot, net_slot_t *out, err_t *e)
{
    if (!net__slot_valid(slot))
        return err_set(e, -EINVAL, "net: slot %d out of range 1..%d", slot, NET_MAX_SLOTS);
    int64_t t0 = now_us();
    net_slot_t names;
    net_slot_names(slot, &names);
    net__addrs_t a;
    net__addrs(slot, &a);
    char path[64], sysctl[96];
    ns_path(slot, path);
    struct nl_sock *sk = NULL;
    char *rules = NULL;
    int host_nsfd = -1;
    bool file = false, nft = false;
    ns_job_t job = {.slot = slot, .path = path, .host_nsfd = -1};

    int rc = ensure_netns_dir(e);
    if (rc < 0)
        goto fail;
    if ((rc = net__nl_open(&sk, e)) < 0)
        goto fail;
    host_nsfd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (host_nsfd < 0) {
        rc = err_errno(e, "open own netns");
        goto fail;
    }
    int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
    if (fd < 0) {
        rc = errno == EEXIST ? err_set(e, -EEXIST, "net: slot %d is in use (%s exists)", slot, path)
                             : err_errno(e, path);
        goto fail;
    }
    close(fd);
    file = true;

    job.host_nsfd = host_nsfd;
    if ((rc = run_on_thread(ns_thread, &job, e)) < 0)
        goto fail;
    if (job.rc < 0) {
        rc = job.rc;
        if (e)
            *e = job.err;
        goto fail;
    }

    int64_t t_ns = now_us();
    int idx = net__nl_link_index(sk, names.veth, e);
    if (idx < 0) {
        rc = idx;
        goto fail;
    }
    /* IPv6 off before the link comes up, so it never starts DAD or router solicitations. */
    snprintf(sysctl, sizeof sysctl, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", names.veth);
    write_file(sysctl, "1", NULL);
    if ((rc = net__nl_addr_add(sk, idx, a.veth_ip, 31, e)) < 0 ||
        (rc = net__nl_link_up(sk, idx, NULL, e)) < 0)
        goto fail;
    if ((rc = net__nl_route_add(sk, a.host_ip, 32, a.peer_ip, idx, e)) < 0)
        goto fail;
    int def = net__nl_default_oif(sk, e);
    if (def < 0) {
        rc = def;
        goto fail;
    }
    int64_t t_host = now_us();
    rules = net__nft_slot_text(slot, true, def);
    nft = true;
    if ((rc = net__nft_run(rules, e)) < 0)
        goto fail;

    if (out)
        *out = names;
    int64_t t1 = now_us();
    log_info("net_create",
             "slot=%d host_ip=%s egress_ifindex=%d dur_us=%lld ns_us=%lld host_us=%lld nft_us=%lld",
             slot, names.host_ip, def, (long long)(t1 - t0), (long long)(t_ns - t0),
             (long long)(t_host - t_ns), (long long)(t1 - t_host));
    rc = 0;
    goto out;

fail:
    /* Undo in reverse, only what this call made. Deleting the host end of the veth removes its
     * peer and the host route; the namespace takes its tap, addresses and rules with it. */
    if (nft) {
        free(rules);
        rules = net__nft_slot_text(slot, false, -1);
        net__nft_run(rules, NULL);
    }
    if (job.veth && sk)
        net__nl_link_del(sk, names.veth, NULL);
    if (job.mounted || file)
        ns_remove(path, NULL);
    err_wrap(e, "net create slot %d", slot);
out:
    free(rules);
    if (host_nsfd >= 0)
        close(host_nsfd);
    net__nl_close(sk);
    return rc;
}

int net_destroy(int slot, err_t *e)
{
    if (!net__slot_valid(slot))
        return err_set(e, -EINVAL, "net: slot %d out of range 1..%d", slot, NET_MAX_SLOTS);
    int64_t t0 = now_us();
    int rc = 0, r;
    err_t tmp = {0};
    char path[64], veth[16];
    ns_path(slot, path);
    snprintf(veth, sizeof veth, NET__VETH_PREFIX "%d", slot);

    char *rules = net__nft_slot_text(slot, false, -1);
    r = net__nft_run(rules, &tmp);
    int64_t t_nft = now_us();
    free(rules);
    /* -ENOENT: no table at all, so no elements either. */
    if (r < 0 && r != -ENOENT && rc == 0) {
        rc = r;
        if (e)
            *e = tmp;
    }

    struct nl_sock *sk = NULL;
    err_clear(&tmp);
    r = net__nl_open(&sk, &tmp);
    if (r == 0) {
        r = net__nl_link_del(sk, veth, &tmp);
        net__nl_close(sk);
    }
    if (r < 0 && r != -ENODEV && rc == 0) {
        rc = r;
        if (e)
            *e = tmp;
    }
    int64_t t_link = now_us();

    err_clear(&tmp);
    r = ns_remove(path, &tmp);
    if (r < 0 && rc == 0) {
        rc = r;
        if (e)
            *e = tmp;
    }
    if (rc < 0) {
        err_wrap(e, "net destroy slot %d", slot);
        log_warn("net_destroy", "slot=%d err=\"%s\"", slot, e ? e->msg : "");
    } else {
        int64_t t1 = now_us();
        log_info("net_destroy", "slot=%d dur_us=%lld nft_us=%lld link_us=%lld ns_us=%lld", slot,
                 (long long)(t1 - t0), (long long)(t_nft - t0), (long long)(t_link - t_nft),
                 (long long)(t1 - t_link));
    }
    return rc;
}

typedef struct tap_job {
    const char *path;
    int fd;
    err_t err;
} tap_job_t;

static void *tap_thread(void *arg)
{
    tap_job_t *j = arg;
    int nsfd = open(j->path, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) {
        j->fd = errno == ENOENT ? err_set(&j->err, -ENOENT, "net: no namespace %s", j->path)
                                : err_errno(&j->err, j->path);
        return NULL;
    }
    if (setns(nsfd, CLONE_NEWNET) < 0)
        j->fd = err_errno(&j->err, "setns");
    else
        j->fd = net__tap_attach(NET__TAP_IFNAME, true, &j->err);
    close(nsfd);
    return NULL;
}

int net_tap_open(int slot, err_t *e)
{
    if (!net__slot_valid(slot))
        return err_set(e, -EINVAL, "net: slot %d out of range 1..%d", slot, NET_MAX_SLOTS);
    char path[64];
    ns_path(slot, path);
    tap_job_t job = {.path = path, .fd = -EIO};
    int rc = run_on_thread(tap_thread, &job, e);
    if (rc < 0)
        return rc;
    if (job.fd < 0 && e)
        *e = job.err;
    return job.fd;
}

bool net_exists(int slot)
{
    if (!net__slot_valid(slot))
        return false;
    char path[64], veth[16];
    ns_path(slot, path);
    snprintf(veth, sizeof veth, NET__VETH_PREFIX "%d", slot);
    struct stat st;
    if (stat(path, &st) < 0)
        return false;
    struct nl_sock *sk = NULL;
    if (net__nl_open(&sk, NULL) < 0)
        return false;
    int idx = net__nl_link_index(sk, veth, NULL);
    net__nl_close(sk);
    return idx > 0;
}

typedef struct slot_list {
    int *v;
    int n, cap;
} slot_list_t;

static void collect_veth(const char *name, void *arg)
{
    slot_list_t *l = arg;
    int s = net__parse_slot(name, NET__VETH_PREFIX);
    if (s < 0)
        return;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = s;
}

static bool kept(int slot, const int *keep, int nkeep)
{
    for (int i = 0; i < nkeep; i++)
        if (keep[i] == slot)
            return true;
    return false;
}

int net_reap_leftovers(const int *keep, int nkeep, err_t *e)
{
    int rc = 0, nns = 0, nveth = 0, nsurv = 0;
    slot_list_t veths = {0};
    int *surv = NULL;
    struct nl_sock *sk = NULL;
    char *rules = NULL;
    if (nkeep < 0 || (nkeep > 0 && !keep))
        return err_set(e, -EINVAL, "net reap: bad keep list");

    DIR *d = opendir(NET__NETNS_DIR);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            int s = net__parse_slot(de->d_name, NET__NS_PREFIX);
            if (s < 0 || kept(s, keep, nkeep))
                continue;
            char path[64];
            ns_path(s, path);
            if (ns_remove(path, NULL) == 0)
                nns++;
        }
        closedir(d);
    } else if (errno != ENOENT) {
        rc = err_errno(e, "opendir " NET__NETNS_DIR);
        goto out;
    }

    if ((rc = net__nl_open(&sk, e)) < 0 ||
        (rc = net__nl_links_foreach(sk, collect_veth, &veths, e)) < 0)
        goto out;
    surv = xcalloc((size_t)veths.n + 1, sizeof *surv);
    for (int i = 0; i < veths.n; i++) {
        char veth[16];
        if (kept(veths.v[i], keep, nkeep)) {
            surv[nsurv++] = veths.v[i];
            continue;
        }
        snprintf(veth, sizeof veth, NET__VETH_PREFIX "%d", veths.v[i]);
        if (net__nl_link_del(sk, veth, NULL) == 0)
            nveth++;
    }
    /* Set elements of slots that are gone are dropped and those of surviving kept slots put
     * back, in one transaction: the sets end up matching the veths exactly. */
    rules = net__nft_reset_text(surv, nsurv);
    rc = net__nft_run(rules, e);
out:
    free(rules);
    free(surv);
    free(veths.v);
    net__nl_close(sk);
    if (rc < 0)
        return err_wrap(e, "net reap");
    log_info("net_reap", "netns_removed=%d veths_removed=%d slots_kept=%d", nns, nveth, nsurv);
    return 0;
}
