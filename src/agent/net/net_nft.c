/* nftables for the sandbox network: the rules text and the one place that runs it.
 *
 * Every rule is generated here from validated integers (slot numbers, addresses derived from
 * them, an ifindex) and fixed names; no string from a request, a file or the kernel is ever
 * pasted into nft syntax.
 *
 * Host table `inet wrenn` (shared by all slots, created by net_host_init):
 *   sets   sbx_src    { "wrv<i>" . <peer_ip> }   a sandbox's traffic as it may leave its veth
 *          sbx_dst    { "wrv<i>" . <host_ip> }   where the host may connect (envd port only)
 *          sbx_nat    { <peer_ip> }              sources to masquerade
 *          egress_oif { <ifindex> }              the default route's device, if the host has one
 *   Per-slot state is only set elements, so slots are added and removed independently and the
 *   base chains never change after start. The deny rules match the "wrv*" prefix instead of the
 *   sets, so a stale veth of ours is isolated too (fail closed).
 * Namespace table `inet wrenn` (one per sandbox namespace, gone with the namespace):
 *   DNAT <host_ip>:49983 arriving on eth0 to the guest, SNAT of the guest's egress to <peer_ip>,
 *   and a filter that lets the guest out to anything but 10.11/16, 10.12/16, link-local and the
 *   namespace itself, and lets in only replies and the DNAT'ed envd connections.
 */
#include "net.h"
#include "net_int.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"
#include "xalloc.h"

/* The rules are applied by the `nft` program (nftables package), fed on its standard input,
 * rather than by linking libnftables: that library is GPL-2.0-only, which an Apache-2.0 program
 * must not link. A child process starts in the network namespace of the thread that spawns it,
 * so a namespace's table is written by spawning from a thread that entered that namespace.
 * One nft run at a time per agent: concurrent transactions would only race each other's
 * generation checks. */
static pthread_mutex_t nft_lock = PTHREAD_MUTEX_INITIALIZER;

static int nft_errno(const char *msg)
{
    if (strstr(msg, "No such file or directory"))
        return -ENOENT;
    if (strstr(msg, "File exists"))
        return -EEXIST;
    if (strstr(msg, "Operation not permitted"))
        return -EPERM;
    if (strstr(msg, "Device or resource busy"))
        return -EBUSY;
    return -EIO;
}

static const char *nft_path(void)
{
    static const char *const cand[] = {"/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"};
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
        if (access(cand[i], X_OK) == 0)
            return cand[i];
    return cand[0];
}

int net__nft_run(const char *cmds, err_t *e)
{
    extern char **environ;
    int rc = 0, in[2] = {-1, -1}, errp[2] = {-1, -1};
    pid_t pid = -1;
    buf_t err;
    buf_init(&err);
    pthread_mutex_lock(&nft_lock);
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        rc = err_errno(e, "nft: pipe");
        goto out;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    char *const argv[] = {"nft", "-f", "-", NULL};
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    int sr = posix_spawn(&pid, nft_path(), &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    (void)environ;
    xclose(&in[0]);
    xclose(&errp[1]);
    if (sr != 0) {
        errno = sr;
        rc = err_errno(e, "nft: spawn");
        pid = -1;
        goto out;
    }
    /* The rules are a few KiB at most: far below a pipe's capacity, so no deadlock with the
     * child's stderr. SIGPIPE is ignored by the agent; a dead nft shows as EPIPE. */
    size_t len = strlen(cmds), off = 0;
    while (off < len) {
        ssize_t w = write(in[1], cmds + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        off += (size_t)w;
    }
    xclose(&in[1]);
    char tmp[1024];
    ssize_t n;
    while ((n = read(errp[0], tmp, sizeof tmp)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (err.len < 4096)
            buf_add(&err, tmp, (size_t)n);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    pid = -1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        const char *msg = err.data ? err.data : "nft failed";
        /* nft prints "Error: <what>" then the offending line: report the first line. */
        size_t m = strcspn(msg, "\n");
        rc = err_set(e, nft_errno(msg), "nft: %.*s", (int)(m > 200 ? 200 : m), msg);
    }
out:
    xclose(&in[0]);
    xclose(&in[1]);
    xclose(&errp[0]);
    xclose(&errp[1]);
    pthread_mutex_unlock(&nft_lock);
    buf_fini(&err);
    return rc;
}

#define T "inet " NET__TABLE

static void add_set_defs(buf_t *b)
{
    buf_adds(b, "add table " T "\n"
                "add set " T " sbx_src { type ifname . ipv4_addr; }\n"
                "add set " T " sbx_dst { type ifname . ipv4_addr; }\n"
                "add set " T " sbx_nat { type ipv4_addr; }\n"
                "add set " T " egress_oif { type iface_index; }\n");
}

static void add_egress(buf_t *b, int def_oif)
{
    buf_adds(b, "flush set " T " egress_oif\n");
    if (def_oif > 0)
        buf_printf(b, "add element " T " egress_oif { %d }\n", def_oif);
}

char *net__nft_host_text(int def_oif)
{
    buf_t b;
    buf_init(&b);
    add_set_defs(&b);
    buf_printf(
        &b,
        "add chain " T " input { type filter hook input priority filter; policy accept; }\n"
        "add chain " T " forward { type filter hook forward priority filter; policy accept; }\n"
        "add chain " T " output { type filter hook output priority filter; policy accept; }\n"
        "add chain " T " postrouting { type nat hook postrouting priority srcnat; "
        "policy accept; }\n"
        "flush chain " T " input\n"
        "flush chain " T " forward\n"
        "flush chain " T " output\n"
        "flush chain " T " postrouting\n"
        /* A sandbox never opens anything on the host; the host's own connections get replies. */
        "add rule " T " input iifname \"wrv*\" ct state established,related accept\n"
        "add rule " T " input iifname \"wrv*\" drop\n"
        /* Never between sandboxes, never from outside into one except replies. */
        "add rule " T " forward iifname \"wrv*\" oifname \"wrv*\" drop\n"
        "add rule " T " forward oifname \"wrv*\" ct state established,related accept\n"
        "add rule " T " forward oifname \"wrv*\" drop\n"
        /* Egress: not to our own ranges or link-local (cloud metadata), only from a live slot's
         * own address on its own veth, only out of the default route's device. */
        "add rule " T " forward iifname \"wrv*\" ip daddr "
        "{ 10.11.0.0/16, 10.12.0.0/16, 169.254.0.0/16 } drop\n"
        "add rule " T " forward iifname . ip saddr @sbx_src oif @egress_oif accept\n"
        "add rule " T " forward iifname \"wrv*\" drop\n"
        /* The host talks to a sandbox only at its envd. */
        "add rule " T " output oifname . ip daddr @sbx_dst tcp dport %d accept\n"
        "add rule " T " output oifname \"wrv*\" ct state established,related accept\n"
        "add rule " T " output oifname \"wrv*\" drop\n"
        "add rule " T " postrouting ip saddr @sbx_nat oif @egress_oif masquerade\n",
        NET_ENVD_PORT);
    add_egress(&b, def_oif);
    return buf_steal(&b, NULL);
}

/* The three per-slot elements, with op "add" or "delete". */
static void slot_elems(buf_t *b, int slot, const char *op)
{
    net__addrs_t a;
    char peer[16], host[16];
    net__addrs(slot, &a);
    net__ip_str(a.peer_ip, peer);
    net__ip_str(a.host_ip, host);
    buf_printf(b,
               "%s element " T " sbx_src { \"" NET__VETH_PREFIX "%d\" . %s }\n"
               "%s element " T " sbx_dst { \"" NET__VETH_PREFIX "%d\" . %s }\n"
               "%s element " T " sbx_nat { %s }\n",
               op, slot, peer, op, slot, host, op, peer);
}

char *net__nft_slot_text(int slot, bool add, int def_oif)
{
    buf_t b;
    buf_init(&b);
    /* Adding an element that exists is a no-op, so add-then-delete removes it whether or not it
     * was there: teardown and rollback never trip over a half-made slot. */
    slot_elems(&b, slot, "add");
    if (!add)
        slot_elems(&b, slot, "delete");
    if (def_oif >= 0)
        add_egress(&b, def_oif);
    return buf_steal(&b, NULL);
}

char *net__nft_reset_text(const int *slots, int n)
{
    buf_t b;
    buf_init(&b);
    add_set_defs(&b);
    buf_adds(&b, "flush set " T " sbx_src\n"
                 "flush set " T " sbx_dst\n"
                 "flush set " T " sbx_nat\n");
    for (int i = 0; i < n; i++)
        if (net__slot_valid(slots[i]))
            slot_elems(&b, slots[i], "add");
    return buf_steal(&b, NULL);
}

char *net__nft_ns_text(int slot)
{
    net__addrs_t a;
    char peer[16], host[16];
    net__addrs(slot, &a);
    net__ip_str(a.peer_ip, peer);
    net__ip_str(a.host_ip, host);
    buf_t b;
    buf_init(&b);
    buf_printf(
        &b,
        "add table " T "\n"
        "add chain " T " prerouting { type nat hook prerouting priority dstnat; policy accept; }\n"
        "add chain " T " postrouting { type nat hook postrouting priority srcnat; "
        "policy accept; }\n"
        "add chain " T " input { type filter hook input priority filter; policy drop; }\n"
        "add chain " T " forward { type filter hook forward priority filter; policy drop; }\n"
        "add rule " T " prerouting iifname \"eth0\" ip daddr %s tcp dport %d "
        "dnat ip to " NET_GUEST_IP "\n"
        "add rule " T " postrouting oifname \"eth0\" ip saddr " NET_GUEST_IP " snat ip to %s\n"
        /* Nothing may open a connection to the namespace itself; the guest is refused loudly so
         * its programs fail fast instead of hanging. */
        "add rule " T " input iifname \"lo\" accept\n"
        "add rule " T " input ct state established,related accept\n"
        "add rule " T " input iifname \"tap0\" meta l4proto tcp reject with tcp reset\n"
        "add rule " T " input iifname \"tap0\" reject with icmpx admin-prohibited\n"
        "add rule " T " forward ct state established,related accept\n"
        "add rule " T " forward iifname \"eth0\" oifname \"tap0\" ip daddr " NET_GUEST_IP
        " tcp dport %d ct status dnat accept\n"
        "add rule " T " forward iifname \"tap0\" oifname \"eth0\" ip daddr "
        "{ 10.11.0.0/16, 10.12.0.0/16, 169.254.0.0/16 } meta l4proto tcp reject with tcp reset\n"
        "add rule " T " forward iifname \"tap0\" oifname \"eth0\" ip daddr "
        "{ 10.11.0.0/16, 10.12.0.0/16, 169.254.0.0/16 } reject with icmpx admin-prohibited\n"
        "add rule " T " forward iifname \"tap0\" oifname \"eth0\" ip saddr " NET_GUEST_IP
        " accept\n",
        host, NET_ENVD_PORT, peer, NET_ENVD_PORT);
    return buf_steal(&b, NULL);
}
