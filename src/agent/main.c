/* wrenn-agent entry point: configuration, the secret, subcommands, serving, signals.
 *
 *   wrenn-agent [flags] [serve]             serve the host agent RPC (default)
 *   wrenn-agent [flags] image build NAME    build a guest image into <root> (images/build.sh)
 */
#include "fsutil.h"
#include "cfg.h"
#include "httpc.h"
#include "log.h"
#ifdef AGENT_HAVE_MEMFS
#include "memfs/memfs.h"
#endif
#include "rpc/rpc.h"
#include "sandbox/sandbox.h"
#include "xalloc.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AGENT_IMAGES_DIR
#define AGENT_IMAGES_DIR "/usr/share/wrenn/images"
#endif

extern char **environ;

#define USAGE "wrenn-agent [options] [serve | image build NAME]"

typedef struct agent_cfg {
    const char *root, *listen, *secret, *secret_file, *log_level, *images_dir, *port_file;
    long boot_timeout_ms;
    long max_layers;
    long pool_size;
    bool help, version;
} agent_cfg_t;

/* Read the secret from path (first line, trimmed). */
static int read_secret(const char *path, char **out, err_t *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return err_errno(e, path);
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0)
        return err_errno(e, path);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (strlen(buf) < 16)
        return err_set(e, -EINVAL, "secret in %s is shorter than 16 characters", path);
    *out = xstrdup(buf);
    return 0;
}

/* The secret: --secret, --secret-file, or <root>/agent.secret (made on first start, 0600). */
static int load_secret(const agent_cfg_t *c, char **out, err_t *e)
{
    if (c->secret) {
        if (strlen(c->secret) < 16)
            return err_set(e, -EINVAL, "--secret must be at least 16 characters");
        *out = xstrdup(c->secret);
        return 0;
    }
    if (c->secret_file)
        return read_secret(c->secret_file, out, e);
    char path[4096];
    snprintf(path, sizeof path, "%s/agent.secret", c->root);
    if (access(path, F_OK) == 0)
        return read_secret(path, out, e);
    unsigned char raw[32];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        return err_errno(e, "getrandom");
    char hex[65];
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    char line[80];
    int n = snprintf(line, sizeof line, "%s\n", hex);
    int rc = fsutil_write_atomic(path, line, (size_t)n, 0600, true, e);
    if (rc < 0)
        return err_wrap(e, "save secret");
    log_info("agent.secret_created", "path=%s", path);
    *out = xstrdup(hex);
    return 0;
}

static int image_build(const agent_cfg_t *c, const char *name)
{
    if (!sbx_safe_name(name)) {
        fprintf(stderr, "wrenn-agent: image name %s is not valid\n", name);
        return 2;
    }
    if (mkdir(c->root, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "wrenn-agent: cannot create %s: %s\n", c->root, strerror(errno));
        return 1;
    }
    char script[4096];
    snprintf(script, sizeof script, "%s/build.sh", c->images_dir);
    char *const argv[] = {script, (char *)name, (char *)c->root, NULL};
    pid_t pid;
    int r = posix_spawn(&pid, script, NULL, NULL, argv, environ);
    if (r != 0) {
        fprintf(stderr, "wrenn-agent: cannot run %s: %s\n", script, strerror(r));
        return 1;
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

static int serve(const agent_cfg_t *c)
{
    err_t e = {0};
    char host[256] = "";
    const char *colon = strrchr(c->listen, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || !end || *end || port < 0 || port > 65535 ||
        (size_t)(colon - c->listen) >= sizeof host) {
        fprintf(stderr, "wrenn-agent: --listen must be HOST:PORT, got %s\n", c->listen);
        return 2;
    }
    memcpy(host, c->listen, (size_t)(colon - c->listen));
    host[colon - c->listen] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    if (geteuid() != 0) {
        log_error("agent.not_root", "uid=%d", (int)geteuid());
        return 1;
    }
    if (mkdir(c->root, 0755) < 0 && errno != EEXIST) {
        log_error("agent.root_failed", "path=%s err=%d", c->root, errno);
        return 1;
    }
    char *secret = NULL;
    if (load_secret(c, &secret, &e) < 0) {
        log_error("agent.secret_failed", "err=\"%s\"", e.msg);
        return 1;
    }

    /* Signals arrive through a signalfd; SIGPIPE is ignored so a vanished peer is an EPIPE. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    httpc_global_init();

    sbx_mgr_cfg_t mc = {.root = c->root,
                        .boot_timeout_ms = c->boot_timeout_ms,
                        .max_layers = (unsigned)c->max_layers,
                        .pool_size = (unsigned)c->pool_size};
    sbx_mgr_t *mgr = NULL;
    if (sbx_mgr_new(&mc, &mgr, &e) < 0) {
        log_error("agent.start_failed", "err=\"%s\"", e.msg);
        free(secret);
        return 1;
    }
    static rpc_t rpc;
    static http_route_t routes[RPC_MAX_ROUTES + 1];
    rpc.mgr = mgr;
    rpc.secret = secret;
    size_t n = rpc_routes(&rpc, routes, RPC_MAX_ROUTES);
    memset(&routes[n], 0, sizeof routes[n]);

    http_server_cfg_t hc = {.addr = host[0] ? host : NULL, .port = (int)port};
    http_server_t *srv = NULL;
    if (http_server_start(&hc, routes, &srv, &e) < 0) {
        log_error("agent.listen_failed", "listen=%s err=\"%s\"", c->listen, e.msg);
        sbx_mgr_free(mgr);
        free(secret);
        return 1;
    }
    int bound = http_server_port(srv);
    log_info("agent.listening", "addr=%s port=%d root=%s version=%s", host, bound, c->root,
             WRENN_VERSION);
    if (c->port_file && fsutil_write_port_file(c->port_file, bound, &e) < 0)
        log_warn("agent.port_file_failed", "path=%s err=\"%s\"", c->port_file, e.msg);

    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) < 0 && errno == EINTR)
        ;
    /* VMs keep running: the next agent re-adopts them from their records. */
    log_info("agent.stopping", "signal=%u", si.ssi_signo);
    http_server_free(srv);
    sbx_mgr_free(mgr);
    free(secret);
    close(sfd);
    return 0;
}

int main(int argc, char **argv)
{
#ifdef AGENT_HAVE_MEMFS
    if (argc > 1 && strcmp(argv[1], "memfs") == 0)
        return memfs_main(argc - 1, argv + 1);
#endif
    agent_cfg_t c = {
        .root = "/var/lib/wrenn",
        .listen = "127.0.0.1:50051",
        .log_level = "info",
        .images_dir = AGENT_IMAGES_DIR,
        .pool_size = 2,
    };
    const cfg_opt_t opts[] = {
        {"root", CFG_STR, &c.root, 0, 0, "agent state directory (/var/lib/wrenn)"},
        {"listen", CFG_STR, &c.listen, 0, 0, "HOST:PORT to serve RPC on (127.0.0.1:50051)"},
        {"secret", CFG_STR, &c.secret, 0, 0, "bearer secret callers must present"},
        {"secret-file", CFG_STR, &c.secret_file, 0, 0,
         "file holding the secret (default <root>/agent.secret, created when absent)"},
        {"log-level", CFG_STR, &c.log_level, 0, 0, "debug, info, warn or error"},
        {"images-dir", CFG_STR, &c.images_dir, 0, 0, "directory of the image build scripts"},
        {"port-file", CFG_STR, &c.port_file, 0, 0, "write the bound port here once serving"},
        {"boot-timeout-ms", CFG_INT, &c.boot_timeout_ms, 1000, 600000,
         "how long a new guest may take to answer (30000)"},
        {"max-layers", CFG_INT, &c.max_layers, 1, 64,
         "memory layers a snapshot may have before they are merged into one (10)"},
        {"pool-size", CFG_INT, &c.pool_size, 0, 16,
         "sandboxes kept restored ahead of time per snapshot template in use (2; 0: none)"},
        {"help", CFG_BOOL, &c.help, 0, 0, "show this help"},
        {"version", CFG_BOOL, &c.version, 0, 0, "print the version and exit"},
        {0},
    };
    err_t e = {0};
    int first = 0;
    if (cfg_parse(opts, "AGENT", argc, argv, &first, &e) < 0) {
        fprintf(stderr, "wrenn-agent: %s\n", e.msg);
        cfg_usage(stderr, USAGE, opts, "AGENT");
        return 2;
    }
    /* Positional words, then (optionally) more flags after them. */
    const char *pos[4] = {0};
    int npos = 0;
    while (first < argc && argv[first][0] != '-' && npos < 4)
        pos[npos++] = argv[first++];
    if (first < argc) {
        int k = 0;
        if (cfg_parse(opts, "AGENT", argc - first + 1, argv + first - 1, &k, &e) < 0 ||
            k != argc - first + 1) {
            fprintf(stderr, "wrenn-agent: %s\n", e.msg[0] ? e.msg : "unexpected argument");
            cfg_usage(stderr, USAGE, opts, "AGENT");
            return 2;
        }
    }
    if (c.help) {
        cfg_usage(stdout, USAGE, opts, "AGENT");
        return 0;
    }
    if (c.version) {
        printf("%s\n", WRENN_VERSION);
        return 0;
    }
    int lvl = log_parse_level(c.log_level);
    if (lvl < 0) {
        fprintf(stderr, "wrenn-agent: bad log level %s\n", c.log_level);
        return 2;
    }
    log_init("agent", (enum log_level)lvl);
    if (c.boot_timeout_ms == 0)
        c.boot_timeout_ms = 30000;

    if (npos == 0 || (npos == 1 && strcmp(pos[0], "serve") == 0))
        return serve(&c);
    if (npos == 3 && strcmp(pos[0], "image") == 0 && strcmp(pos[1], "build") == 0)
        return image_build(&c, pos[2]);
    fprintf(stderr, "wrenn-agent: unknown command\n");
    cfg_usage(stderr, USAGE, opts, "AGENT");
    return 2;
}
