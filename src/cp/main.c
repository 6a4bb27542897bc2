/* wrenn-cp entry point: configuration, subcommands (serve, migrate, routes), signals. */
#include "fsutil.h"
#include "api/api.h"
#include "cfg.h"
#include "cp.h"
#include "cp_util.h"
#include "http.h"
#include "log.h"
#include "store/migrate.h"
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

#define USAGE "wrenn-cp [options] [serve | migrate up|down|status | routes]"

/* The JWT secret: from config when given, else the data dir's jwt_secret file, created with
 * 256 random bits (mode 0600) on the first start of a single-node install. */
static int load_secret(cp_t *cp, const char *configured, const char *data_dir, err_t *e)
{
    if (configured && *configured) {
        size_t n = strlen(configured);
        if (n < 32)
            return err_set(e, -EINVAL, "jwt-secret must be at least 32 bytes");
        if (n > sizeof cp->jwt_key)
            return err_set(e, -EINVAL, "jwt-secret is longer than %zu bytes", sizeof cp->jwt_key);
        memcpy(cp->jwt_key, configured, n);
        cp->jwt_keylen = n;
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/jwt_secret", data_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        unsigned char r[32];
        char hex[65];
        randombytes_buf(r, sizeof r);
        cp_hex(r, sizeof r, hex);
        int wfd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (wfd >= 0) {
            ssize_t w = write(wfd, hex, 64);
            if (w != 64 || fsync(wfd) < 0) {
                close(wfd);
                unlink(path);
                return err_errno(e, "write jwt_secret");
            }
            close(wfd);
            log_info("cp.jwt_secret_created", "path=%s", path);
        } else if (errno != EEXIST) {
            return err_errno(e, "create jwt_secret");
        }
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return err_errno(e, "open jwt_secret");
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077))
        log_warn("cp.jwt_secret_mode", "path=%s mode=%o hint=\"chmod 600\"", path,
                 (unsigned)(st.st_mode & 0777));
    ssize_t n = read(fd, cp->jwt_key, sizeof cp->jwt_key);
    close(fd);
    while (n > 0 && (cp->jwt_key[n - 1] == '\n' || cp->jwt_key[n - 1] == '\r'))
        n--;
    if (n < 32)
        return err_set(e, -EINVAL, "%s holds fewer than 32 bytes", path);
    cp->jwt_keylen = (size_t)n;
    return 0;
}

static bool prefix_ok(const char *p)
{
    size_t n = strlen(p);
    if (n < 1 || n > 16)
        return false;
    for (; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
            return false;
    return true;
}

int main(int argc, char **argv)
{
    long port = 8080, jwt_ttl = 6 * 3600, pw_ops = 2, pw_mem = 64 * 1024, fail_email = 10,
         fail_addr = 50, fail_window = 300, touch = 60, pool = 16, max_conn = 1024;
    const char *addr = NULL, *port_file = NULL, *data_dir = "/var/lib/wrenn/cp", *db_url = NULL,
               *jwt_secret = NULL, *key_prefix = "e2b_", *log_level = "info";
    bool help = false, version = false;
    const cfg_opt_t opts[] = {
        {"port", CFG_INT, &port, 0, 65535, "TCP port (0: any free port)"},
        {"addr", CFG_STR, &addr, 0, 0, "address to bind (default: all)"},
        {"port-file", CFG_STR, &port_file, 0, 0, "write the bound port here when ready"},
        {"data-dir", CFG_STR, &data_dir, 0, 0, "SQLite file and generated JWT secret"},
        {"database-url", CFG_STR, &db_url, 0, 0,
         "postgres://... or an SQLite path (also WRENN_DATABASE_URL)"},
        {"jwt-secret", CFG_STR, &jwt_secret, 0, 0, "HS256 secret, >= 32 bytes"},
        {"jwt-ttl", CFG_INT, &jwt_ttl, 60, 30L * 86400, "token lifetime, seconds"},
        {"api-key-prefix", CFG_STR, &key_prefix, 0, 0, "prefix of new API keys (e2b_)"},
        {"argon2-ops", CFG_INT, &pw_ops, 1, 16, "Argon2id passes"},
        {"argon2-mem-kib", CFG_INT, &pw_mem, 8, 4L * 1024 * 1024, "Argon2id memory, KiB"},
        {"login-failures-email", CFG_INT, &fail_email, 0, 1000000,
         "failed logins per email per window (0: unlimited)"},
        {"login-failures-addr", CFG_INT, &fail_addr, 0, 1000000,
         "failed logins per client address per window (0: unlimited)"},
        {"login-window", CFG_INT, &fail_window, 1, 86400, "login rate window, seconds"},
        {"key-touch-interval", CFG_INT, &touch, 0, 86400,
         "minimum seconds between last_used writes per API key"},
        {"db-pool", CFG_INT, &pool, 1, 256, "database connections"},
        {"max-connections", CFG_INT, &max_conn, 1, 65535, "HTTP connections"},
        {"log-level", CFG_STR, &log_level, 0, 0, "debug, info, warn or error"},
        {"version", CFG_BOOL, &version, 0, 0, "print the version and exit"},
        {"help", CFG_BOOL, &help, 0, 0, "show this help"},
        {0},
    };
    err_t e = {0};
    int first = 0;
    if (cfg_parse(opts, "CP", argc, argv, &first, &e) < 0) {
        fprintf(stderr, "wrenn-cp: %s\n", e.msg);
        cfg_usage(stderr, USAGE, opts, "CP");
        return 2;
    }
    if (help) {
        cfg_usage(stdout, USAGE, opts, "CP");
        return 0;
    }
    if (version) {
        printf("%s\n", WRENN_VERSION);
        return 0;
    }
    const char *cmd = first < argc ? argv[first] : "serve";
    const char *sub = first + 1 < argc ? argv[first + 1] : NULL;
    int extra = argc - first - (sub ? 2 : 1);
    bool migrate = !strcmp(cmd, "migrate");
    if ((strcmp(cmd, "serve") && !migrate && strcmp(cmd, "routes")) || (migrate && !sub) ||
        (!migrate && sub) || extra > 0 ||
        (migrate && strcmp(sub, "up") && strcmp(sub, "down") && strcmp(sub, "status"))) {
        cfg_usage(stderr, USAGE, opts, "CP");
        return 2;
    }
    if (!strcmp(cmd, "routes")) {
        for (const cp_route_t *rt = cp_routes; rt->pattern; rt++)
            printf("%s %s\n", rt->method, rt->pattern);
        return 0;
    }
    int lvl = log_parse_level(log_level);
    if (lvl < 0) {
        fprintf(stderr, "wrenn-cp: bad log level %s\n", log_level);
        return 2;
    }
    log_init("cp", (enum log_level)lvl);
    if (sodium_init() < 0) {
        log_error("cp.sodium_failed", NULL);
        return 1;
    }
    if (!prefix_ok(key_prefix)) {
        fprintf(stderr, "wrenn-cp: api-key-prefix must be 1-16 of [a-z0-9_-]\n");
        return 2;
    }
    if (!db_url) {
        const char *env = getenv("WRENN_DATABASE_URL");
        if (env && *env)
            db_url = env;
    }
    char *sqlite_path = NULL;
    if (!db_url) {
        err_t de = {0};
        if (fsutil_mkdir_p(data_dir, 0700, &de) < 0) {
            log_error("cp.data_dir_failed", "path=%s err=\"%s\"", data_dir, de.msg);
            return 1;
        }
        sqlite_path = xasprintf("%s/wrenn.db", data_dir);
        db_url = sqlite_path;
    }

    int status = 1;
    cp_t cp = {0};
    http_server_t *srv = NULL;
    int sfd = -1;
    if (db_open(db_url, (int)pool, &cp.db, &e) < 0) {
        log_error("cp.db_open_failed", "err=\"%s\"", e.msg);
        goto out;
    }
    if (migrate) {
        int rc = !strcmp(sub, "up")     ? migrate_up(cp.db, &e)
                 : !strcmp(sub, "down") ? migrate_down(cp.db, &e)
                                        : migrate_status(cp.db, stdout, &e);
        if (rc < 0) {
            log_error("cp.migrate_failed", "err=\"%s\"", e.msg);
            goto out;
        }
        status = 0;
        goto out;
    }
    if (migrate_up(cp.db, &e) < 0) {
        log_error("cp.migrate_failed", "err=\"%s\"", e.msg);
        goto out;
    }
    if (!sqlite_path && fsutil_mkdir_p(data_dir, 0700, NULL) < 0 && !jwt_secret)
        log_warn("cp.data_dir_failed", "path=%s", data_dir);
    if (load_secret(&cp, jwt_secret, data_dir, &e) < 0) {
        log_error("cp.jwt_secret_failed", "err=\"%s\"", e.msg);
        goto out;
    }
    cp.jwt_ttl_s = jwt_ttl;
    cp.key_prefix = key_prefix;
    cp.pw_ops = (unsigned long)pw_ops;
    cp.pw_mem_kib = (unsigned long)pw_mem;
    cp.key_touch_us = (int64_t)touch * 1000000;
    cp.rl_email = rl_new((unsigned)fail_email, (unsigned)fail_window);
    cp.rl_addr = rl_new((unsigned)fail_addr, (unsigned)fail_window);

    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    http_route_t routes[2];
    cp_api_routes(&cp, routes);
    http_server_cfg_t hc = {.addr = addr, .port = (int)port, .max_connections = (unsigned)max_conn};
    if (http_server_start(&hc, routes, &srv, &e) < 0) {
        log_error("cp.listen_failed", "err=\"%s\"", e.msg);
        goto out;
    }
    log_info("cp.ready", "port=%d engine=%s", http_server_port(srv),
             db_engine(cp.db) == DB_PG ? "postgres" : "sqlite");
    if (port_file && fsutil_write_port_file(port_file, http_server_port(srv), &e) < 0) {
        log_error("cp.port_file_failed", "path=%s err=\"%s\"", port_file, e.msg);
        goto out;
    }
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) < 0 && errno == EINTR)
        ;
    log_info("cp.stopping", "signal=%u", si.ssi_signo);
    status = 0;
out:
    http_server_free(srv);
    if (sfd >= 0)
        close(sfd);
    rl_free(cp.rl_email);
    rl_free(cp.rl_addr);
    db_close(cp.db);
    free(sqlite_path);
    return status;
}
