/* REST endpoints: /health, /init, /envs, /metrics. */
#include "envd.h"
#include "b64.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static void no_store(http_req_t *r)
{
    http_set_header(r, "Cache-Control", "no-store");
}

static void health(http_req_t *r, void *ud)
{
    (void)ud;
    no_store(r);
    http_respond(r, 204, NULL, "", 0);
}

/* Parse RFC 3339 ("2024-05-01T10:00:00.123456789Z", or with a ±hh:mm offset) into unix ns. */
static int parse_rfc3339(const char *s, int64_t *out)
{
    struct tm tm = {0};
    int y, mo, d, h, mi, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 ||
        n != 19)
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 || y < 1970)
        return -EINVAL;
    const char *p = s + n;
    int64_t ns = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            if (digits < 9) {
                ns = ns * 10 + (*p - '0');
                digits++;
            }
            p++;
        }
        if (!digits)
            return -EINVAL;
        while (digits++ < 9)
            ns *= 10;
    }
    int64_t off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2 || oh > 23 || om > 59)
            return -EINVAL;
        off = (int64_t)(oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *out = ((int64_t)t - off) * 1000000000LL + ns;
    return 0;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Set the guest clock when it is more than 50 ms behind or 5 s ahead of the host's. */
static void sync_clock(envd_t *d, int64_t host_ns)
{
    if (!d->in_vm)
        return;
    int64_t skew = host_ns - now_ns();
    if (skew > 50 * 1000000LL || skew < -5 * 1000000000LL) {
        struct timespec ts = {.tv_sec = host_ns / 1000000000LL, .tv_nsec = host_ns % 1000000000LL};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0)
            log_warn("init.clock_failed", "err=%d", errno);
        else
            log_info("init.clock_set", "skew_ms=%lld", (long long)(skew / 1000000));
    }
}

static void set_hosts_entry(const char *ip)
{
    /* Keep every other line of /etc/hosts and (re)write the events.wrenn.local one. */
    FILE *f = fopen("/etc/hosts", "re");
    buf_t b;
    buf_init(&b);
    if (f) {
        char line[1024];
        while (fgets(line, sizeof line, f))
            if (!strstr(line, "events.wrenn.local"))
                buf_adds(&b, line);
        fclose(f);
    }
    buf_printf(&b, "%s events.wrenn.local\n", ip);
    int fd = open("/etc/hosts.wrenn-tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, b.data, b.len);
        close(fd);
        if (w == (ssize_t)b.len)
            rename("/etc/hosts.wrenn-tmp", "/etc/hosts");
        else
            unlink("/etc/hosts.wrenn-tmp");
    }
    buf_fini(&b);
}

/* Mix bytes from the host into the kernel's entropy pool and reseed the CRNG: a VM restored
 * from a snapshot, or one of many clones of it, otherwise resumes with the RNG state it was
 * saved with. Needs CAP_SYS_ADMIN (envd runs as root in a VM); failures are logged only. */
static void add_entropy(const unsigned char *data, size_t len)
{
    /* struct rand_pool_info ends in a flexible array: lay it out by hand (two ints, bytes). */
    _Alignas(int) unsigned char req[2 * sizeof(int) + 512];
    if (len > 512)
        len = 512;
    int hdr[2] = {(int)(len * 8), (int)len}; /* entropy_count (bits), buf_size (bytes) */
    memcpy(req, hdr, sizeof hdr);
    memcpy(req + sizeof hdr, data, len);
    int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, RNDADDENTROPY, req) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0)
        log_warn("init.entropy_failed", "err=%d", errno);
    if (fd >= 0)
        close(fd);
    explicit_bzero(req, sizeof req);
}

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

static int do_init(envd_t *d, http_req_t *r, err_t *e)
{
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    json_t *in = NULL;
    int rc = pjson_parse(body, len, &in, e);
    if (rc < 0)
        return rc;
    const char *ts = NULL, *token = NULL, *user = NULL, *wd = NULL, *hyper = NULL, *ent = NULL;
    json_t *envs = NULL;
    unsigned char entropy[512];
    long nent = 0;
    if ((rc = pjson_str(in, "timestamp", &ts, e)) < 0 ||
        (rc = pjson_str(in, "accessToken", &token, e)) < 0 ||
        (rc = pjson_str(in, "defaultUser", &user, e)) < 0 ||
        (rc = pjson_str(in, "defaultWorkdir", &wd, e)) < 0 ||
        (rc = pjson_str(in, "hyperloopIP", &hyper, e)) < 0 ||
        (rc = pjson_str(in, "entropy", &ent, e)) < 0 ||
        (rc = pjson_obj(in, "envVars", &envs, e)) < 0)
        goto out;
    /* Wrenn extension: "entropy", base64 of up to 512 random bytes from the host agent. */
    if (ent && *ent) {
        size_t el = strlen(ent);
        if (b64_decoded_max(el) > sizeof entropy ||
            (nent = b64_decode(ent, el, entropy)) < 0) {
            rc = err_set(e, -EINVAL, "entropy must be base64 of at most 512 bytes");
            goto out;
        }
    }
    int64_t ts_ns = 0;
    if (ts && parse_rfc3339(ts, &ts_ns) < 0) {
        rc = err_set(e, -EINVAL, "timestamp must be RFC 3339");
        goto out;
    }
    if (envs) {
        const char *k;
        json_t *v;
        json_object_foreach(envs, k, v)
        {
            if (!json_is_string(v) || !*k || strchr(k, '=')) {
                rc = err_set(e, -EINVAL, "envVars must map names to strings");
                goto out;
            }
        }
    }
    if (user && *user) {
        envd_user_t u;
        if ((rc = envd_user_lookup(user, &u, e)) < 0) {
            rc = err_set(e, -EINVAL, "defaultUser %s does not exist", user);
            goto out;
        }
        envd_user_fini(&u);
    }
    if (hyper && *hyper && strspn(hyper, "0123456789abcdefABCDEF.:") != strlen(hyper)) {
        rc = err_set(e, -EINVAL, "hyperloopIP must be an IP address");
        goto out;
    }

    pthread_mutex_lock(&init_lock);
    /* Token rule: a token, once set, must be presented (in the body or the header) to change
     * anything; with none set, the first caller sets it. */
    char *cur = envd_token_copy(d);
    if (cur) {
        const char *hdr = http_req_header(r, "X-Access-Token");
        bool ok = (token && strcmp(token, cur) == 0) || (hdr && strcmp(hdr, cur) == 0);
        free(cur);
        if (!ok) {
            pthread_mutex_unlock(&init_lock);
            rc = err_set(e, -ENOKEY, "access token does not match");
            goto out;
        }
    }
    pthread_mutex_lock(&d->lock);
    bool apply = !ts || ts_ns > d->init_ts_ns;
    if (apply) {
        if (ts)
            d->init_ts_ns = ts_ns;
        if (envs)
            json_object_update(d->env, envs);
        free(d->access_token);
        d->access_token = token && *token ? xstrdup(token) : NULL;
        if (user && *user) {
            free(d->default_user);
            d->default_user = xstrdup(user);
        }
        if (wd && *wd) {
            free(d->default_workdir);
            d->default_workdir = xstrdup(wd);
        }
        if (hyper && *hyper) {
            char *addr = xasprintf("http://%s", hyper);
            json_object_set_new(d->env, "WRENN_EVENTS_ADDRESS", json_string(addr));
            free(addr);
        }
    }
    pthread_mutex_unlock(&d->lock);
    if (nent > 0 && d->in_vm)
        add_entropy(entropy, (size_t)nent);
    if (apply && ts)
        sync_clock(d, ts_ns);
    if (apply && hyper && *hyper && d->in_vm)
        set_hosts_entry(hyper);
    pthread_mutex_unlock(&init_lock);
    rc = 0;
out:
    explicit_bzero(entropy, sizeof entropy);
    json_decref(in);
    return rc;
}

static void init(http_req_t *r, void *ud)
{
    err_t e = {0};
    int rc = do_init(ud, r, &e);
    if (rc < 0) {
        http_respond_error(r, rc, &e);
        return;
    }
    no_store(r);
    http_respond(r, 204, NULL, "", 0);
}

static void envs(http_req_t *r, void *ud)
{
    envd_t *d = ud;
    pthread_mutex_lock(&d->lock);
    json_t *copy = json_deep_copy(d->env);
    pthread_mutex_unlock(&d->lock);
    http_respond_json(r, 200, copy);
    json_decref(copy);
}

struct cpu_sample {
    unsigned long long busy, total;
};

static int read_cpu(struct cpu_sample *s)
{
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return -errno;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 4)
        return -EIO;
    unsigned long long idle = v[3] + v[4];
    s->total = 0;
    for (int i = 0; i < 8; i++)
        s->total += v[i];
    s->busy = s->total - idle;
    return 0;
}

static void metrics(http_req_t *r, void *ud)
{
    (void)ud;
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static struct cpu_sample last;
    static int64_t last_ns;
    struct cpu_sample cur = {0};
    double pct = 0;

    pthread_mutex_lock(&lock);
    int64_t now = now_ns();
    if (!last_ns || now - last_ns > 60 * 1000000000LL) {
        /* No recent sample: take one over 100 ms. */
        read_cpu(&last);
        pthread_mutex_unlock(&lock);
        usleep(100000);
        pthread_mutex_lock(&lock);
    }
    if (read_cpu(&cur) == 0 && cur.total > last.total)
        pct = 100.0 * (double)(cur.busy - last.busy) / (double)(cur.total - last.total);
    last = cur;
    last_ns = now_ns();
    pthread_mutex_unlock(&lock);

    unsigned long long mt = 0, ma = 0, mc = 0, mbuf = 0;
    FILE *f = fopen("/proc/meminfo", "re");
    if (f) {
        char line[256];
        unsigned long long v;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "MemTotal: %llu kB", &v) == 1)
                mt = v * 1024;
            else if (sscanf(line, "MemAvailable: %llu kB", &v) == 1)
                ma = v * 1024;
            else if (sscanf(line, "Cached: %llu kB", &v) == 1)
                mc = v * 1024;
            else if (sscanf(line, "Buffers: %llu kB", &v) == 1)
                mbuf = v * 1024;
        }
        fclose(f);
    }
    struct statvfs sv = {0};
    statvfs("/", &sv);
    unsigned long long dt = (unsigned long long)sv.f_blocks * sv.f_frsize;
    unsigned long long du = dt - (unsigned long long)sv.f_bfree * sv.f_frsize;
    unsigned long long mu = mt > ma ? mt - ma : 0;

    json_t *o = json_pack(
        "{s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "ts", (json_int_t)(now_ns() / 1000000000LL),
        "cpu_count", (json_int_t)sysconf(_SC_NPROCESSORS_ONLN), "cpu_used_pct",
        (double)((long long)(pct * 100 + 0.5)) / 100.0, "mem_total_mib", (json_int_t)(mt >> 20),
        "mem_used_mib", (json_int_t)(mu >> 20), "mem_total", (json_int_t)mt, "mem_used",
        (json_int_t)mu, "mem_cache", (json_int_t)(mc + mbuf), "disk_used", (json_int_t)du,
        "disk_total", (json_int_t)dt);
    http_respond_json(r, 200, o);
    json_decref(o);
}

size_t rest_routes(envd_t *d, http_route_t *out, size_t max)
{
    const http_route_t routes[] = {
        {.method = "GET", .path = "/health", .handle = health, .ud = d},
        {.method = "POST", .path = "/init", .handle = init, .max_body = 1u << 20, .ud = d},
        {.method = "GET", .path = "/envs", .on_headers = envd_check_token, .handle = envs, .ud = d},
        {.method = "GET",
         .path = "/metrics",
         .on_headers = envd_check_token,
         .handle = metrics,
         .ud = d},
    };
    size_t n = sizeof routes / sizeof routes[0];
    if (n > max)
        n = max;
    memcpy(out, routes, n * sizeof *out);
    return n;
}
