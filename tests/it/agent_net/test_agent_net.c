/* Integration tests of src/agent/net: real netlink, real namespaces, real nftables, no VM.
 *
 * A stand-in guest plays the VM: a network namespace of its own whose "eth0" is a tap with the
 * guest's address and MAC; a thread copies frames between that tap and the slot's tap0 (opened
 * with net_tap_open, as QEMU would get it), exactly what QEMU's virtio-net backend does. A TCP
 * server in the guest namespace listens on 169.254.0.21:49983. So host → host_ip:49983 goes
 * through the host route, the veth, the namespace's DNAT, tap0, the static neighbour entry and
 * the guest's own stack, and the guest's attempts to get out go through the namespace filter.
 *
 * Only addresses in 10.11/16, 10.12/16 and 169.254.0.20/30 inside namespaces made here are used,
 * and slots come from a high range (WRENN_TEST_NET_SLOT_BASE, default 16000) so that a real agent
 * on this host, which allocates from 1, is not disturbed. Requires root; skipped otherwise.
 * Everything made is removed by the group teardown even when an assertion fails.
 */
#include "buf.h"
#include "net.h"
#include "net_int.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/wait.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/neighbour.h>
#include <netlink/route/route.h>

#include "log.h"

#define MAX_TRACK 256

static int g_base = 16000;
static bool g_ok;              /* root, /dev/net/tun, host table set up */
static int g_slots[MAX_TRACK]; /* slots created here and not yet destroyed */
static int g_nslots;
static const char *g_foreign_links[] = {"wrv0", "wrv007", "wrvx1"};
static const char *g_foreign_ns[] = {"wrenn-ns-abc", "wrenn-ns-016"};

/* ---- small helpers ---- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void track(int slot)
{
    if (g_nslots < MAX_TRACK)
        g_slots[g_nslots++] = slot;
}

static void untrack(int slot)
{
    for (int i = 0; i < g_nslots; i++)
        if (g_slots[i] == slot) {
            g_slots[i] = g_slots[--g_nslots];
            return;
        }
}

static int create_slot(int slot)
{
    err_t e = {0};
    net_slot_t s;
    int rc = net_create(slot, &s, &e);
    if (rc < 0)
        print_message("# net_create(%d): %s\n", slot, e.msg);
    else
        track(slot);
    return rc;
}

static int destroy_slot(int slot)
{
    err_t e = {0};
    int rc = net_destroy(slot, &e);
    if (rc < 0)
        print_message("# net_destroy(%d): %s\n", slot, e.msg);
    untrack(slot);
    return rc;
}

static void ip_of(uint32_t ip, char out[16])
{
    net__ip_str(ip, out);
}

static bool ns_file_exists(int slot)
{
    char p[64];
    snprintf(p, sizeof p, "/run/netns/wrenn-ns-%d", slot);
    struct stat st;
    return stat(p, &st) == 0;
}

static bool link_exists(const char *name)
{
    return if_nametoindex(name) != 0;
}

/* A stray link named name: a veth pair whose peer ("wrtp<n>") is not named like ours either. */
static int add_stray_link(struct nl_sock *sk, const char *name)
{
    static int n;
    char peer[16];
    snprintf(peer, sizeof peer, "wrtp%d", n++);
    err_t e = {0};
    int rc = net__nl_veth_add(sk, name, 0, peer, -1, &e);
    if (rc < 0)
        print_message("# stray link %s: %s\n", name, e.msg);
    return rc;
}

static bool veth_exists(int slot)
{
    char n[16];
    snprintf(n, sizeof n, "wrv%d", slot);
    return link_exists(n);
}

/* `nft list table inet wrenn` (empty string when there is none). Caller frees. */
static char *nft_list(void)
{
    extern char **environ;
    int p[2];
    buf_t b;
    buf_init(&b);
    buf_adds(&b, "");
    if (pipe2(p, O_CLOEXEC) < 0)
        return buf_steal(&b, NULL);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *const argv[] = {"nft", "list", "table", "inet", "wrenn", NULL};
    pid_t pid;
    int sr = posix_spawnp(&pid, "nft", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    char tmp[4096];
    ssize_t n;
    while (sr == 0 && (n = read(p[0], tmp, sizeof tmp)) > 0)
        buf_add(&b, tmp, (size_t)n);
    close(p[0]);
    if (sr == 0)
        waitpid(pid, NULL, 0);
    return buf_steal(&b, NULL);
}

/* Whether the host table mentions any per-slot element of slot. */
static bool nft_has_slot(const char *listing, int slot)
{
    char veth[24], host[20], peer[20];
    net__addrs_t a;
    net__addrs(slot, &a);
    snprintf(veth, sizeof veth, "\"wrv%d\"", slot);
    char ip[16];
    ip_of(a.host_ip, ip);
    snprintf(host, sizeof host, "%s,", ip);
    ip_of(a.peer_ip, ip);
    snprintf(peer, sizeof peer, "%s", ip);
    /* Elements are listed as `"wrv5" . 10.12.0.11` and `10.12.0.11`; match whole addresses. */
    for (const char *p = listing; (p = strstr(p, peer)); p++) {
        char next = p[strlen(peer)];
        if (next < '0' || next > '9')
            return true;
    }
    return strstr(listing, veth) != NULL;
}

/* Whether the host's main table has a route to ip/32. */
static bool host_route_exists(uint32_t ip)
{
    struct nl_sock *sk = NULL;
    if (net__nl_open(&sk, NULL) < 0)
        return false;
    struct nl_cache *cache = NULL;
    bool found = false;
    if (rtnl_route_alloc_cache(sk, AF_INET, 0, &cache) == 0) {
        uint32_t be = htonl(ip);
        for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
            struct nl_addr *d = rtnl_route_get_dst((struct rtnl_route *)o);
            if (d && nl_addr_get_prefixlen(d) == 32 && nl_addr_get_len(d) == 4 &&
                memcmp(nl_addr_get_binary_addr(d), &be, 4) == 0)
                found = true;
        }
        nl_cache_free(cache);
    }
    net__nl_close(sk);
    return found;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n++;
    closedir(d);
    return n;
}

/* Mounts of namespaces of slots first..first+n-1 (others may belong to an agent on this host). */
static int count_netns_mounts(int first, int n)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[1024];
    int count = 0;
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "/run/netns/wrenn-ns-");
        if (!p)
            continue;
        int s = atoi(p + strlen("/run/netns/wrenn-ns-"));
        count += s >= first && s < first + n;
    }
    if (f)
        fclose(f);
    return count;
}

/* ---- running code inside a namespace, on a thread of its own ---- */

typedef struct nscall {
    int nsfd;
    int (*fn)(void *);
    void *arg;
    int rc;
} nscall_t;

static void *nscall_thread(void *p)
{
    nscall_t *c = p;
    if (c->nsfd >= 0 && setns(c->nsfd, CLONE_NEWNET) < 0)
        c->rc = -errno;
    else
        c->rc = c->fn(c->arg);
    return NULL;
}

/* Run fn(arg) on a new thread, inside namespace nsfd (-1: where the thread starts). */
static int in_ns(int nsfd, int (*fn)(void *), void *arg)
{
    nscall_t c = {nsfd, fn, arg, -EIO};
    pthread_t t;
    if (pthread_create(&t, NULL, nscall_thread, &c) != 0)
        return -EAGAIN;
    pthread_join(t, NULL);
    return c.rc;
}

static int mk_socket(void *arg)
{
    (void)arg;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

static int slot_nsfd(int slot)
{
    char p[64];
    snprintf(p, sizeof p, "/run/netns/wrenn-ns-%d", slot);
    return open(p, O_RDONLY | O_CLOEXEC);
}

/* Connect fd to ip:port within ms: 0, or -ECONNREFUSED / -ETIMEDOUT / another -errno. */
static int try_connect(int fd, uint32_t ip, int port, int ms)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(ip);
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc < 0 && errno != EINPROGRESS)
        rc = -errno;
    else if (rc < 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, ms) == 0) {
            rc = -ETIMEDOUT;
        } else {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
            rc = -err;
        }
    }
    fcntl(fd, F_SETFL, fl);
    return rc;
}

/* Connect from namespace nsfd (-1: the host) to ip:port; on success read the first line into
 * line. Returns what try_connect returned. */
static int probe(int nsfd, uint32_t ip, int port, int ms, char *line, size_t cap)
{
    int fd = nsfd >= 0 ? in_ns(nsfd, mk_socket, NULL) : mk_socket(NULL);
    if (fd < 0)
        return fd;
    int rc = try_connect(fd, ip, port, ms);
    if (rc == 0 && line) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n = poll(&p, 1, 3000) == 1 ? read(fd, line, cap - 1) : -1;
        line[n > 0 ? n : 0] = '\0';
    }
    close(fd);
    return rc;
}

/* A listening TCP socket on ip:port (port 0: any) in namespace nsfd (-1: host); *port_out gets
 * the port. */
typedef struct listen_req {
    uint32_t ip;
    int port;
} listen_req_t;

static int mk_listener(void *arg)
{
    listen_req_t *r = arg;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->port)};
    sa.sin_addr.s_addr = htonl(r->ip);
    socklen_t l = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &l) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    r->port = ntohs(sa.sin_port);
    return fd;
}

/* ---- the stand-in guest ---- */

typedef struct guest {
    int slot;
    int gns;  /* the guest's own namespace (kept alive by this fd) */
    int gtap; /* its "eth0" tap: frames the guest sends and receives */
    int tap;  /* the slot's tap0, from net_tap_open */
    int lfd;  /* server on 169.254.0.21:49983 */
    int stop; /* eventfd */
    pthread_t fwd, srv;
    bool running;
} guest_t;

#define GUEST_IP ((169u << 24) | (254u << 16) | 21u)
#define GW_IP    ((169u << 24) | (254u << 16) | 22u)

static int guest_setup(void *arg)
{
    guest_t *g = arg;
    err_t e = {0};
    struct nl_sock *sk = NULL;
    if (unshare(CLONE_NEWNET) < 0)
        return -errno;
    g->gns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int fd = open("/proc/sys/net/ipv6/conf/default/disable_ipv6", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!write(fd, "1", 1);
        close(fd);
    }
    int rc = net__nl_open(&sk, &e);
    if (rc < 0)
        goto out;
    if ((rc = net__nl_link_up(sk, 1, NULL, &e)) < 0)
        goto out;
    /* Attaching to a tap that does not exist creates it; it goes away with the fd. */
    g->gtap = net__tap_attach("eth0", true, &e);
    if (g->gtap < 0) {
        rc = g->gtap;
        goto out;
    }
    int idx = net__nl_link_index(sk, "eth0", &e);
    if ((rc = idx) < 0 || (rc = net__nl_link_up(sk, idx, NET_GUEST_MAC, &e)) < 0 ||
        (rc = net__nl_addr_add(sk, idx, GUEST_IP, 30, &e)) < 0 ||
        (rc = net__nl_route_add(sk, 0, 0, GW_IP, idx, &e)) < 0 ||
        (rc = net__nl_neigh_add(sk, idx, GW_IP, NET_GW_MAC, &e)) < 0)
        goto out;
    listen_req_t lr = {GUEST_IP, NET_ENVD_PORT};
    g->lfd = rc = mk_listener(&lr);
out:
    if (rc < 0)
        print_message("# guest setup: %d %s\n", rc, e.msg);
    net__nl_close(sk);
    return rc < 0 ? rc : 0;
}

/* QEMU's job: move frames between the slot's tap0 and the guest's NIC. */
static void *guest_fwd(void *arg)
{
    guest_t *g = arg;
    static __thread char frame[65536 + 64];
    struct pollfd p[3] = {{.fd = g->tap, .events = POLLIN},
                          {.fd = g->gtap, .events = POLLIN},
                          {.fd = g->stop, .events = POLLIN}};
    for (;;) {
        if (poll(p, 3, -1) < 0 && errno != EINTR)
            break;
        if (p[2].revents)
            break;
        for (int i = 0; i < 2; i++)
            if (p[i].revents & POLLIN) {
                ssize_t n = read(p[i].fd, frame, sizeof frame);
                if (n > 0)
                    (void)!write(p[1 - i].fd, frame, (size_t)n);
            }
    }
    return NULL;
}

/* envd's stand-in: answers each connection with "slot=<n>\n". */
static void *guest_srv(void *arg)
{
    guest_t *g = arg;
    struct pollfd p[2] = {{.fd = g->lfd, .events = POLLIN}, {.fd = g->stop, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (p[0].revents & POLLIN) {
            int c = accept4(g->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                char msg[32];
                int n = snprintf(msg, sizeof msg, "slot=%d\n", g->slot);
                (void)!write(c, msg, (size_t)n);
                close(c);
            }
        }
    }
    return NULL;
}

static void guest_stop(guest_t *g)
{
    if (g->running) {
        uint64_t one = 1;
        (void)!write(g->stop, &one, sizeof one);
        pthread_join(g->fwd, NULL);
        pthread_join(g->srv, NULL);
        g->running = false;
    }
    int *fds[] = {&g->lfd, &g->gtap, &g->tap, &g->gns, &g->stop};
    for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
}

static int guest_start(guest_t *g, int slot)
{
    *g = (guest_t){.slot = slot, .gns = -1, .gtap = -1, .tap = -1, .lfd = -1, .stop = -1};
    err_t e = {0};
    g->tap = net_tap_open(slot, &e);
    if (g->tap < 0) {
        print_message("# net_tap_open: %s\n", e.msg);
        return g->tap;
    }
    g->stop = eventfd(0, EFD_CLOEXEC);
    /* guest_setup unshares its thread into a new namespace. */
    int rc = in_ns(-1, guest_setup, g);
    if (rc < 0)
        return rc;
    if (pthread_create(&g->fwd, NULL, guest_fwd, g) != 0)
        return -EAGAIN;
    if (pthread_create(&g->srv, NULL, guest_srv, g) != 0) {
        uint64_t one = 1;
        (void)!write(g->stop, &one, sizeof one);
        pthread_join(g->fwd, NULL);
        return -EAGAIN;
    }
    g->running = true;
    return 0;
}

/* ---- fixtures ---- */

static void cleanup_foreign(void);
static void sweep_range(void);

static int group_setup(void **state)
{
    (void)state;
    const char *lv = getenv("WRENN_TEST_LOG");
    log_init("test_agent_net", lv && log_parse_level(lv) >= 0 ? log_parse_level(lv) : LOG_WARN);
    const char *b = getenv("WRENN_TEST_NET_SLOT_BASE");
    if (b && atoi(b) > 0 && atoi(b) <= NET_MAX_SLOTS - 300)
        g_base = atoi(b);
    if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
        print_message("# not root or no /dev/net/tun: network tests skipped\n");
        return 0;
    }
    err_t e = {0};
    if (net_host_init(&e) < 0) {
        print_message("# net_host_init: %s\n", e.msg);
        return 0;
    }
    /* A previous run that was killed may have left slots in our range and stray links. */
    cleanup_foreign();
    sweep_range();
    g_ok = true;
    return 0;
}

static void cleanup_foreign(void)
{
    struct nl_sock *sk = NULL;
    if (net__nl_open(&sk, NULL) == 0) {
        for (size_t i = 0; i < sizeof g_foreign_links / sizeof *g_foreign_links; i++)
            if (link_exists(g_foreign_links[i]))
                net__nl_link_del(sk, g_foreign_links[i], NULL);
        net__nl_close(sk);
    }
    for (size_t i = 0; i < sizeof g_foreign_ns / sizeof *g_foreign_ns; i++) {
        char p[64];
        snprintf(p, sizeof p, "/run/netns/%s", g_foreign_ns[i]);
        unlink(p);
    }
}

static int group_teardown(void **state)
{
    (void)state;
    while (g_nslots > 0)
        destroy_slot(g_slots[g_nslots - 1]);
    cleanup_foreign();
    return 0;
}

#define REQUIRE_NET()                                                                              \
    do {                                                                                           \
        if (!g_ok)                                                                                 \
            skip();                                                                                \
    } while (0)

static guest_t g_guests[4];
static int g_nguests;

static guest_t *start_guest(int slot)
{
    guest_t *g = &g_guests[g_nguests++];
    int rc = guest_start(g, slot);
    if (rc < 0)
        print_message("# guest for slot %d: %s\n", slot, strerror(-rc));
    assert_int_equal(rc, 0);
    return g;
}

static void stop_guests(void)
{
    for (int i = 0; i < g_nguests; i++)
        guest_stop(&g_guests[i]);
    g_nguests = 0;
}

/* Remove anything of ours in the test's slot range (a failed test's or a killed run's). */
static void sweep_range(void)
{
    for (int s = g_base; s < g_base + 300; s++)
        if (ns_file_exists(s) || veth_exists(s))
            net_destroy(s, NULL);
}

static int test_teardown(void **state)
{
    (void)state;
    stop_guests();
    while (g_nslots > 0)
        destroy_slot(g_slots[g_nslots - 1]);
    cleanup_foreign();
    sweep_range();
    net_destroy(g_base + 24, NULL); /* test_reap_leftovers' element-only leftover */
    return 0;
}

/* ---- tests ---- */

/* Names and addresses are pure arithmetic on the slot; out-of-range slots are refused before
 * anything is touched. */
static void test_names_and_ranges(void **state)
{
    (void)state;
    net_slot_t s;
    net_slot_names(1, &s);
    assert_string_equal(s.netns, "wrenn-ns-1");
    assert_string_equal(s.veth, "wrv1");
    assert_string_equal(s.tap, "tap0");
    assert_string_equal(s.host_ip, "10.11.0.1");
    net_slot_names(256, &s);
    assert_string_equal(s.host_ip, "10.11.1.0");
    net_slot_names(NET_MAX_SLOTS, &s);
    assert_string_equal(s.veth, "wrv16383");
    assert_string_equal(s.host_ip, "10.11.63.255");
    net__addrs_t a;
    char ip[16];
    net__addrs(NET_MAX_SLOTS, &a);
    net__ip_str(a.veth_ip, ip);
    assert_string_equal(ip, "10.12.127.254");
    net__ip_str(a.peer_ip, ip);
    assert_string_equal(ip, "10.12.127.255");
    net__addrs(1, &a);
    net__ip_str(a.veth_ip, ip);
    assert_string_equal(ip, "10.12.0.2");

    assert_int_equal(net__parse_slot("wrv12", "wrv"), 12);
    assert_int_equal(net__parse_slot("wrenn-ns-16383", "wrenn-ns-"), 16383);
    const char *bad[] = {"wrv0",  "wrv012",         "wrv", "wrv-1", "wrv16384", "wrv1x",
                         "wrvx1", "wrv99999999999", "eth0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(net__parse_slot(bad[i], "wrv"), -1);

    err_t e = {0};
    int bad_slots[] = {0, -1, NET_MAX_SLOTS + 1};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(net_create(bad_slots[i], &s, &e), -EINVAL);
        assert_int_equal(net_destroy(bad_slots[i], &e), -EINVAL);
        assert_int_equal(net_tap_open(bad_slots[i], &e), -EINVAL);
        assert_false(net_exists(bad_slots[i]));
    }

    /* The generated rules carry only the slot's own addresses. */
    char *t = net__nft_ns_text(7);
    assert_non_null(strstr(t, "ip daddr 10.11.0.7 tcp dport 49983 dnat ip to 169.254.0.21"));
    assert_non_null(strstr(t, "snat ip to 10.12.0.15"));
    free(t);
    t = net__nft_slot_text(7, false, -1);
    assert_non_null(strstr(t, "delete element inet wrenn sbx_src { \"wrv7\" . 10.12.0.15 }"));
    assert_null(strstr(t, "egress_oif"));
    free(t);
}

typedef struct ns_facts {
    char tap_mac[24];
    bool tap_up;
    bool neigh_perm;
    char neigh_mac[24];
    char fwd[4];
} ns_facts_t;

static int read_ns_facts(void *arg)
{
    ns_facts_t *f = arg;
    struct nl_sock *sk = NULL;
    if (net__nl_open(&sk, NULL) < 0)
        return -EIO;
    struct rtnl_link *l = NULL;
    if (rtnl_link_get_kernel(sk, 0, "tap0", &l) == 0) {
        nl_addr2str(rtnl_link_get_addr(l), f->tap_mac, sizeof f->tap_mac);
        f->tap_up = (rtnl_link_get_flags(l) & IFF_UP) != 0;
        rtnl_link_put(l);
    }
    struct nl_cache *c = NULL;
    if (rtnl_neigh_alloc_cache(sk, &c) == 0) {
        for (struct nl_object *o = nl_cache_get_first(c); o; o = nl_cache_get_next(o)) {
            struct rtnl_neigh *n = (struct rtnl_neigh *)o;
            char dst[32];
            nl_addr2str(rtnl_neigh_get_dst(n), dst, sizeof dst);
            if (strcmp(dst, NET_GUEST_IP) == 0) {
                f->neigh_perm = (rtnl_neigh_get_state(n) & NUD_PERMANENT) != 0;
                nl_addr2str(rtnl_neigh_get_lladdr(n), f->neigh_mac, sizeof f->neigh_mac);
            }
        }
        nl_cache_free(c);
    }
    net__nl_close(sk);
    int fd = open("/proc/sys/net/ipv4/ip_forward", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, f->fwd, 1);
        f->fwd[n > 0 ? 1 : 0] = '\0';
        close(fd);
    }
    return 0;
}

/* Two slots with a guest each: the host reaches each guest's envd at its host_ip; neither the
 * guest nor its namespace reaches the other slot, the host's addresses or the gateway. */
static void test_isolation(void **state)
{
    (void)state;
    REQUIRE_NET();
    int s1 = g_base + 1, s2 = g_base + 2;
    assert_int_equal(create_slot(s1), 0);
    assert_int_equal(create_slot(s2), 0);
    assert_true(net_exists(s1));
    start_guest(s1);
    start_guest(s2);
    net__addrs_t a1, a2;
    net__addrs(s1, &a1);
    net__addrs(s2, &a2);
    char line[64], want[32];

    /* Namespace facts: tap MAC, the guest's permanent neighbour entry, forwarding on. */
    int ns1 = slot_nsfd(s1);
    assert_true(ns1 >= 0);
    ns_facts_t f = {0};
    assert_int_equal(in_ns(ns1, read_ns_facts, &f), 0);
    assert_string_equal(f.tap_mac, NET_GW_MAC);
    assert_true(f.tap_up);
    assert_true(f.neigh_perm);
    assert_string_equal(f.neigh_mac, NET_GUEST_MAC);
    assert_string_equal(f.fwd, "1");

    /* Host → each guest's envd through host_ip (route, veth, DNAT, tap, guest). */
    assert_int_equal(probe(-1, a1.host_ip, NET_ENVD_PORT, 3000, line, sizeof line), 0);
    snprintf(want, sizeof want, "slot=%d\n", s1);
    assert_string_equal(line, want);
    assert_int_equal(probe(-1, a2.host_ip, NET_ENVD_PORT, 3000, line, sizeof line), 0);
    snprintf(want, sizeof want, "slot=%d\n", s2);
    assert_string_equal(line, want);
    /* Running the host setup again (an agent restart) keeps the live slots working. */
    err_t e = {0};
    assert_int_equal(net_host_init(&e), 0);
    assert_int_equal(probe(-1, a1.host_ip, NET_ENVD_PORT, 3000, line, sizeof line), 0);
    /* ... and only to envd's port. */
    assert_int_not_equal(probe(-1, a1.host_ip, 22, 300, NULL, 0), 0);

    /* "The host's other services": a server on the host's end of slot 1's veth. The host itself
     * reaches it (so it is up). */
    listen_req_t lr = {a1.veth_ip, 0};
    int hsrv = mk_listener(&lr);
    assert_true(hsrv >= 0);
    assert_int_equal(probe(-1, a1.veth_ip, lr.port, 1000, NULL, 0), 0);

    /* The guest: refused at once by its namespace for the gateway, the other slot and the
     * host's 10.12 addresses. */
    int gns = g_guests[0].gns;
    assert_int_equal(probe(gns, GW_IP, NET_ENVD_PORT, 1000, NULL, 0), -ECONNREFUSED);
    assert_int_equal(probe(gns, GW_IP, 22, 1000, NULL, 0), -ECONNREFUSED);
    assert_int_equal(probe(gns, a2.host_ip, NET_ENVD_PORT, 1000, NULL, 0), -ECONNREFUSED);
    assert_int_equal(probe(gns, a1.veth_ip, lr.port, 1000, NULL, 0), -ECONNREFUSED);
    assert_int_equal(probe(gns, a2.veth_ip, lr.port, 1000, NULL, 0), -ECONNREFUSED);
    assert_int_equal(probe(gns, a1.host_ip, NET_ENVD_PORT, 1000, NULL, 0), -ECONNREFUSED);

    /* Slot 1's namespace itself (as if the guest had escaped into it): the host drops it all. */
    assert_int_equal(probe(ns1, a2.host_ip, NET_ENVD_PORT, 400, NULL, 0), -ETIMEDOUT);
    assert_int_equal(probe(ns1, a1.veth_ip, lr.port, 400, NULL, 0), -ETIMEDOUT);
    assert_int_equal(probe(ns1, a2.veth_ip, lr.port, 400, NULL, 0), -ETIMEDOUT);
    assert_int_equal(probe(ns1, a2.peer_ip, 22, 400, NULL, 0), -ETIMEDOUT);

    /* The guests still answer afterwards (nothing above broke the path). */
    assert_int_equal(probe(-1, a1.host_ip, NET_ENVD_PORT, 3000, line, sizeof line), 0);

    /* The host table routes egress only out of the default route's device, if there is one. */
    struct nl_sock *sk = NULL;
    assert_int_equal(net__nl_open(&sk, NULL), 0);
    int def = net__nl_default_oif(sk, NULL);
    net__nl_close(sk);
    char *l = nft_list();
    assert_true(nft_has_slot(l, s1));
    assert_true(nft_has_slot(l, s2));
    const char *eg = strstr(l, "set egress_oif {");
    assert_non_null(eg);
    const char *end = strchr(eg, '}');
    bool has_el = end && memmem(eg, (size_t)(end - eg), "elements", 8) != NULL;
    assert_int_equal(has_el, def > 0);
    free(l);

    close(hsrv);
    close(ns1);
}

/* Destroy removes the namespace, the veth, the host route and the set elements, and is
 * idempotent; nothing answers at host_ip any more. */
static void test_destroy_removes_everything(void **state)
{
    (void)state;
    REQUIRE_NET();
    int s = g_base + 5;
    net__addrs_t a;
    net__addrs(s, &a);
    assert_int_equal(create_slot(s), 0);
    start_guest(s);
    char line[64];
    assert_int_equal(probe(-1, a.host_ip, NET_ENVD_PORT, 3000, line, sizeof line), 0);
    assert_true(host_route_exists(a.host_ip));
    stop_guests(); /* the VM exits before its network goes */

    assert_int_equal(destroy_slot(s), 0);
    assert_false(ns_file_exists(s));
    assert_false(veth_exists(s));
    assert_false(host_route_exists(a.host_ip));
    assert_false(net_exists(s));
    char *l = nft_list();
    assert_false(nft_has_slot(l, s));
    free(l);
    assert_int_not_equal(probe(-1, a.host_ip, NET_ENVD_PORT, 300, NULL, 0), 0);
    /* Again: nothing left to remove is not an error. */
    err_t e = {0};
    assert_int_equal(net_destroy(s, &e), 0);
}

/* A slot in use is refused and left intact; a failed create leaves nothing behind and does not
 * remove what it did not make. */
static void test_conflicts_and_rollback(void **state)
{
    (void)state;
    REQUIRE_NET();
    int s = g_base + 10, s2 = g_base + 11;
    err_t e = {0};
    net_slot_t out;
    assert_int_equal(create_slot(s), 0);
    assert_int_equal(net_create(s, &out, &e), -EEXIST);
    assert_true(ns_file_exists(s));
    assert_true(veth_exists(s));
    char *l = nft_list();
    assert_true(nft_has_slot(l, s));
    free(l);

    /* A stray link with the slot's veth name makes create fail part-way (after the namespace
     * was made): the namespace is rolled back, the stray link is not ours to delete. */
    char name[16];
    snprintf(name, sizeof name, "wrv%d", s2);
    struct nl_sock *sk = NULL;
    assert_int_equal(net__nl_open(&sk, NULL), 0);
    assert_int_equal(add_stray_link(sk, name), 0);
    err_clear(&e);
    assert_int_equal(net_create(s2, &out, &e), -EEXIST);
    print_message("# expected failure: %s\n", e.msg);
    assert_false(ns_file_exists(s2));
    assert_true(link_exists(name));
    l = nft_list();
    assert_false(nft_has_slot(l, s2));
    free(l);
    net__nl_link_del(sk, name, NULL);
    net__nl_close(sk);
    assert_int_equal(destroy_slot(s), 0);
}

static void add_unique(int *v, int *n, int cap, int s)
{
    for (int i = 0; i < *n; i++)
        if (v[i] == s)
            return;
    if (*n < cap)
        v[(*n)++] = s;
}

static void collect_link(const char *name, void *arg)
{
    int *ctx = arg; /* ctx[0] = count, ctx[1..] = slots */
    int s = net__parse_slot(name, "wrv");
    if (s > 0)
        add_unique(ctx + 1, &ctx[0], 4000, s);
}

/* Leftovers of a crashed agent — a namespace whose veth is gone, a veth whose namespace is
 * gone, set elements alone, a whole slot — are removed; kept slots keep working; look-alike
 * names that are not exactly ours are not touched. */
static void test_reap_leftovers(void **state)
{
    (void)state;
    REQUIRE_NET();
    int A = g_base + 20, B = g_base + 21, C = g_base + 22, D = g_base + 23, E = g_base + 24;
    assert_int_equal(create_slot(A), 0);
    assert_int_equal(create_slot(B), 0);
    start_guest(A);
    char p[64], name[16];
    snprintf(p, sizeof p, "/run/netns/wrenn-ns-%d", C);
    int fd = open(p, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
    assert_true(fd >= 0);
    close(fd);
    struct nl_sock *sk = NULL;
    assert_int_equal(net__nl_open(&sk, NULL), 0);
    snprintf(name, sizeof name, "wrv%d", D);
    assert_int_equal(add_stray_link(sk, name), 0);
    for (size_t i = 0; i < sizeof g_foreign_links / sizeof *g_foreign_links; i++)
        assert_int_equal(add_stray_link(sk, g_foreign_links[i]), 0);
    for (size_t i = 0; i < sizeof g_foreign_ns / sizeof *g_foreign_ns; i++) {
        snprintf(p, sizeof p, "/run/netns/%s", g_foreign_ns[i]);
        fd = open(p, O_RDONLY | O_CREAT | O_CLOEXEC, 0);
        assert_true(fd >= 0);
        close(fd);
    }
    char *t = net__nft_slot_text(E, true, -1);
    assert_int_equal(net__nft_run(t, NULL), 0);
    free(t);

    /* Keep everything of ours that exists now (another agent on this host may have slots)
     * except the leftovers planted above. */
    static int found[4001];
    found[0] = 0;
    assert_int_equal(net__nl_links_foreach(sk, collect_link, found, NULL), 0);
    DIR *d = opendir("/run/netns");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        int s = net__parse_slot(de->d_name, "wrenn-ns-");
        if (s > 0)
            add_unique(found + 1, &found[0], 4000, s);
    }
    if (d)
        closedir(d);
    int keep[4000], nkeep = 0;
    for (int i = 1; i <= found[0]; i++)
        if (found[i] != B && found[i] != C && found[i] != D && found[i] != E)
            keep[nkeep++] = found[i];

    err_t e = {0};
    double t0 = now_ms();
    assert_int_equal(net_reap_leftovers(keep, nkeep, &e), 0);
    print_message("# reap with %d kept slots: %.1f ms\n", nkeep, now_ms() - t0);
    untrack(B);

    assert_false(ns_file_exists(B));
    assert_false(veth_exists(B));
    assert_false(ns_file_exists(C));
    assert_false(veth_exists(D));
    char *l = nft_list();
    assert_false(nft_has_slot(l, B));
    assert_false(nft_has_slot(l, E));
    assert_true(nft_has_slot(l, A));
    free(l);
    for (size_t i = 0; i < sizeof g_foreign_links / sizeof *g_foreign_links; i++)
        assert_true(link_exists(g_foreign_links[i]));
    for (size_t i = 0; i < sizeof g_foreign_ns / sizeof *g_foreign_ns; i++) {
        snprintf(p, sizeof p, "/run/netns/%s", g_foreign_ns[i]);
        assert_int_equal(access(p, F_OK), 0);
    }
    /* The kept slot still works end to end. */
    net__addrs_t a;
    net__addrs(A, &a);
    char line[64], want[32];
    assert_int_equal(probe(-1, a.host_ip, NET_ENVD_PORT, 3000, line, sizeof line), 0);
    snprintf(want, sizeof want, "slot=%d\n", A);
    assert_string_equal(line, want);
    net__nl_close(sk);
    cleanup_foreign();
}

enum { NPAR = 8 };
typedef struct par {
    int slot;
    int rc_create, rc_destroy;
    pthread_barrier_t *bar;
} par_t;

static void *par_thread(void *arg)
{
    par_t *p = arg;
    pthread_barrier_wait(p->bar);
    p->rc_create = net_create(p->slot, NULL, NULL);
    pthread_barrier_wait(p->bar); /* main checks the state here */
    pthread_barrier_wait(p->bar);
    p->rc_destroy = net_destroy(p->slot, NULL);
    return NULL;
}

/* Slots created and destroyed from several threads at once (as the agent does for concurrent
 * requests) all succeed and leave nothing behind. */
static void test_concurrent(void **state)
{
    (void)state;
    REQUIRE_NET();
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, NPAR + 1);
    par_t p[NPAR];
    pthread_t t[NPAR];
    for (int i = 0; i < NPAR; i++) {
        p[i] = (par_t){.slot = g_base + 60 + i, .bar = &bar};
        track(p[i].slot);
        pthread_create(&t[i], NULL, par_thread, &p[i]);
    }
    double t0 = now_ms();
    pthread_barrier_wait(&bar);
    pthread_barrier_wait(&bar);
    double t1 = now_ms();
    char *l = nft_list();
    int ok = 0;
    for (int i = 0; i < NPAR; i++)
        ok += p[i].rc_create == 0 && ns_file_exists(p[i].slot) && veth_exists(p[i].slot) &&
              nft_has_slot(l, p[i].slot);
    free(l);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < NPAR; i++)
        pthread_join(t[i], NULL);
    double t2 = now_ms();
    pthread_barrier_destroy(&bar);
    print_message("# %d slots in parallel: create %.1f ms, destroy %.1f ms (wall)\n", NPAR, t1 - t0,
                  t2 - t1);
    assert_int_equal(ok, NPAR);
    l = nft_list();
    for (int i = 0; i < NPAR; i++) {
        assert_int_equal(p[i].rc_destroy, 0);
        assert_false(ns_file_exists(p[i].slot));
        assert_false(veth_exists(p[i].slot));
        assert_false(nft_has_slot(l, p[i].slot));
        untrack(p[i].slot);
    }
    free(l);
}

static int cmp_dbl(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static void report(const char *what, double *v, int n)
{
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    print_message("# %s per slot: mean %.2f ms, p50 %.2f ms, p95 %.2f ms, max %.2f ms (n=%d)\n",
                  what, sum / n, v[n / 2], v[(n * 95) / 100], v[n - 1], n);
}

/* 50 slots created and destroyed, twice: nothing is left behind (namespaces, mounts, veths,
 * set elements, file descriptors), and the time per slot is reported. */
static void test_loop_50(void **state)
{
    (void)state;
    REQUIRE_NET();
    enum { N = 50, ROUNDS = 2 };
    int first = g_base + 100;
    int fds0 = count_fds();
    assert_int_equal(count_netns_mounts(first, N), 0);
    static double tc[N * ROUNDS], td[N * ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) {
            double t0 = now_ms();
            assert_int_equal(create_slot(first + i), 0);
            tc[r * N + i] = now_ms() - t0;
        }
        assert_int_equal(count_netns_mounts(first, N), N);
        char *l = nft_list();
        for (int i = 0; i < N; i++)
            assert_true(nft_has_slot(l, first + i));
        free(l);
        for (int i = 0; i < N; i++) {
            double t0 = now_ms();
            assert_int_equal(destroy_slot(first + i), 0);
            td[r * N + i] = now_ms() - t0;
        }
        for (int i = 0; i < N; i++) {
            assert_false(ns_file_exists(first + i));
            assert_false(veth_exists(first + i));
        }
        l = nft_list();
        for (int i = 0; i < N; i++)
            assert_false(nft_has_slot(l, first + i));
        free(l);
        assert_int_equal(count_netns_mounts(first, N), 0);
        assert_int_equal(count_fds(), fds0);
    }
    report("create", tc, N * ROUNDS);
    report("destroy", td, N * ROUNDS);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_ranges),
        cmocka_unit_test_teardown(test_isolation, test_teardown),
        cmocka_unit_test_teardown(test_destroy_removes_everything, test_teardown),
        cmocka_unit_test_teardown(test_conflicts_and_rollback, test_teardown),
        cmocka_unit_test_teardown(test_reap_leftovers, test_teardown),
        cmocka_unit_test_teardown(test_concurrent, test_teardown),
        cmocka_unit_test_teardown(test_loop_50, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
