/* wrenn-envd entry point: configuration, start-up side effects, routes, signals. */
#include "envd.h"
#include "cfg.h"
#include "fsutil.h"
#include "log.h"
#include "xalloc.h"

#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ROUTES 64

int main(int argc, char **argv)
{
    if (getpid() == 1)
        envd_init_main(argc, argv);
    return envd_main(argc, argv);
}

int envd_main(int argc, char **argv)
{

    long port = ENVD_DEFAULT_PORT;
    const char *addr = NULL, *port_file = NULL, *log_level = "info", *run_dir = "/run/wrenn";
    const char *cgroup_root = "/sys/fs/cgroup", *cmd = NULL;
    bool version = false, help = false, in_vm = false, isnotfc = false;
    const cfg_opt_t opts[] = {
        {"port", CFG_INT, &port, 0, 65535, "TCP port to serve on (0: any free port)"},
        {"addr", CFG_STR, &addr, 0, 0, "address to bind (default: all, IPv4 and IPv6)"},
        {"port-file", CFG_STR, &port_file, 0, 0, "write the bound port to this file when ready"},
        {"run-dir", CFG_STR, &run_dir, 0, 0, "directory for runtime markers (/run/wrenn)"},
        {"log-level", CFG_STR, &log_level, 0, 0, "debug, info, warn or error"},
        {"in-vm", CFG_BOOL, &in_vm, 0, 0, "running as a guest's agent: /init may set the clock"},
        {"isnotfc", CFG_BOOL, &isnotfc, 0, 0, "accepted for compatibility; no effect"},
        {"cgroup-root", CFG_STR, &cgroup_root, 0, 0, "accepted for compatibility; unused"},
        {"cmd", CFG_STR, &cmd, 0, 0, "accepted for compatibility; unused"},
        {"version", CFG_BOOL, &version, 0, 0, "print the version and exit"},
        {"help", CFG_BOOL, &help, 0, 0, "show this help"},
        {0},
    };
    err_t e = {0};
    int first = 0;
    if (cfg_parse(opts, "ENVD", argc, argv, &first, &e) < 0 || first != argc) {
        fprintf(stderr, "wrenn-envd: %s\n", e.msg[0] ? e.msg : "unexpected argument");
        cfg_usage(stderr, "wrenn-envd [options]", opts, "ENVD");
        return 2;
    }
    if (help) {
        cfg_usage(stdout, "wrenn-envd [options]", opts, "ENVD");
        return 0;
    }
    if (version) {
        printf("%s\n", ENVD_VERSION);
        return 0;
    }
    int lvl = log_parse_level(log_level);
    if (lvl < 0) {
        fprintf(stderr, "wrenn-envd: bad log level %s\n", log_level);
        return 2;
    }
    log_init("envd", (enum log_level)lvl);
    if (sodium_init() < 0) {
        log_error("envd.sodium_failed", NULL);
        return 1;
    }

    /* Signals arrive through a signalfd; SIGPIPE is ignored so a vanished client is an EPIPE. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    envd_t d = {0};
    pthread_mutex_init(&d.lock, NULL);
    d.env = json_object();
    json_object_set_new(d.env, "WRENN_SANDBOX", json_string("true"));
    d.in_vm = in_vm;
    d.run_dir = run_dir;
    char marker[4096];
    snprintf(marker, sizeof marker, "%s/.WRENN_SANDBOX", run_dir);
    if (fsutil_mkdir_p(run_dir, 0755, &e) < 0 ||
        fsutil_write_atomic(marker, "true", 4, 0444, false, &e) < 0)
        log_warn("envd.run_dir_failed", "path=%s err=\"%s\"", run_dir, e.msg);
    err_clear(&e);

    if (proc_table_new(&d, &d.procs, &e) < 0 || fs_watchers_new(&d, &d.watchers, &e) < 0) {
        log_error("envd.start_failed", "err=\"%s\"", e.msg);
        return 1;
    }

    static http_route_t routes[MAX_ROUTES + 1];
    static connect_binding_t bindings[MAX_ROUTES];
    size_t n = 0;
    n += rest_routes(&d, routes + n, MAX_ROUTES - n);
    n += files_routes(&d, routes + n, MAX_ROUTES - n);
    n += proc_routes(&d, routes + n, MAX_ROUTES - n);
    for (size_t i = 0; i < proc_nmethods && n < MAX_ROUTES; i++, n++)
        connect_route(&routes[n], &bindings[n], &proc_methods[i], envd_check_token, &d);
    for (size_t i = 0; i < fs_nmethods && n < MAX_ROUTES; i++, n++)
        connect_route(&routes[n], &bindings[n], &fs_methods[i], envd_check_token, &d);
    memset(&routes[n], 0, sizeof routes[n]);

    http_server_cfg_t hc = {.addr = addr, .port = (int)port, .cors = true};
    http_server_t *srv = NULL;
    if (http_server_start(&hc, routes, &srv, &e) < 0) {
        log_error("envd.listen_failed", "port=%ld err=\"%s\"", port, e.msg);
        return 1;
    }
    int bound = http_server_port(srv);
    /* uptime_ms: how long the guest took from its kernel's start to serving (boot diagnostics). */
    struct timespec up;
    clock_gettime(CLOCK_BOOTTIME, &up);
    log_info("envd.listening", "port=%d version=%s in_vm=%d uptime_ms=%lld", bound, ENVD_VERSION,
             (int)in_vm, (long long)up.tv_sec * 1000 + up.tv_nsec / 1000000);
    if (in_vm)
        proc_warm_up(&d);
    if (port_file && fsutil_write_port_file(port_file, bound, &e) < 0)
        log_warn("envd.port_file_failed", "path=%s err=\"%s\"", port_file, e.msg);

    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) < 0 && errno == EINTR)
        ;
    log_info("envd.stopping", "signal=%u", si.ssi_signo);
    http_server_free(srv);
    proc_table_free(d.procs);
    fs_watchers_free(d.watchers);
    json_decref(d.env);
    free(d.default_user);
    free(d.default_workdir);
    free(d.access_token);
    close(sfd);
    return 0;
}
