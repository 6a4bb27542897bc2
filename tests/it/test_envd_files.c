/* envd GET /files and POST /files against the running binary: multipart, raw and gzip uploads,
 * identity, ranged, conditional and gzip downloads, errors, users and permissions, URL
 * signing. Runs as root for the user tests (skipped otherwise). */
#include "b64.h"
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

static th_envd_t envd;
static char *tmp; /* scratch directory for this run */

/* ---- small helpers ---- */

static char *enc(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1);
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~/", *p)) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return out;
}

static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *pathf(const char *fmt, ...)
{
    char rel[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    char *p = malloc(strlen(tmp) + strlen(rel) + 2);
    sprintf(p, "%s/%s", tmp, rel);
    return p;
}

static void write_file(const char *path, const void *data, size_t n, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    fchmod(fd, mode);
    close(fd);
}

static bool read_file(const char *path, buf_t *out)
{
    buf_reset(out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char b[65536];
    ssize_t n;
    while ((n = read(fd, b, sizeof b)) > 0)
        buf_add(out, b, (size_t)n);
    close(fd);
    if (!out->data)
        buf_add(out, "", 0);
    return true;
}

static void assert_file(const char *path, const void *data, size_t n)
{
    buf_t b;
    buf_init(&b);
    if (!read_file(path, &b))
        fail_msg("cannot read %s", path);
    assert_int_equal(b.len, n);
    assert_memory_equal(b.data, data, n);
    buf_fini(&b);
}

static char *random_bytes(size_t n)
{
    char *d = malloc(n ? n : 1);
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d[i] = (char)x;
    }
    return d;
}

static void mkdirf(const char *rel, mode_t mode)
{
    char *p = pathf("%s", rel);
    mkdir(p, mode);
    free(p);
}

/* Upload temporaries left in tmp/<rel>. */
static int count_tmp(const char *rel);

/* Files in dir whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

static int count_tmp(const char *rel)
{
    char *p = pathf("%s", rel);
    int n = count_prefixed(p, ".wrenn-upload");
    free(p);
    return n;
}

typedef struct part {
    const char *name;
    const char *filename; /* NULL: no filename parameter */
    const char *data;
    size_t len;
} part_t;

static void build_multipart(const part_t *parts, size_t n, buf_t *body)
{
    for (size_t i = 0; i < n; i++) {
        buf_printf(body, "--TestBoundary42\r\nContent-Disposition: form-data; name=\"%s\"",
                   parts[i].name);
        if (parts[i].filename)
            buf_printf(body, "; filename=\"%s\"", parts[i].filename);
        buf_adds(body, "\r\nContent-Type: application/octet-stream\r\n\r\n");
        buf_add(body, parts[i].data, parts[i].len);
        buf_adds(body, "\r\n");
    }
    buf_adds(body, "--TestBoundary42--\r\n");
}

static const char *const mp_headers[] = {
    "Content-Type: multipart/form-data; boundary=TestBoundary42", NULL};

/* POST /files?<query> with the given parts. */
static void upload(th_envd_t *e, const char *query, const part_t *parts, size_t n, httpc_resp_t *r)
{
    buf_t body;
    buf_init(&body);
    build_multipart(parts, n, &body);
    char url[4096];
    snprintf(url, sizeof url, "/files%s%s", query && *query ? "?" : "", query ? query : "");
    assert_int_equal(th_http(e, "POST", url, mp_headers, body.data, body.len, r), 0);
    buf_fini(&body);
}

static void download(th_envd_t *e, const char *path, const char *extra_query,
                     const char *const *headers, httpc_resp_t *r)
{
    char *p = enc(path);
    char url[4096];
    snprintf(url, sizeof url, "/files?path=%s%s", p, extra_query ? extra_query : "");
    free(p);
    assert_int_equal(th_http(e, "GET", url, headers, NULL, 0, r), 0);
}

static void assert_status(const httpc_resp_t *r, long status)
{
    if (r->status != status)
        fail_msg("status %ld, want %ld: %.300s", r->status, status,
                 r->body.data ? r->body.data : "");
    if (status >= 400) {
        json_t *j = th_json(r);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "code")), status);
        assert_true(json_is_string(json_object_get(j, "message")));
        json_decref(j);
    }
}

static void gunzip(const char *in, size_t n, buf_t *out)
{
    z_stream z = {0};
    assert_int_equal(inflateInit2(&z, 31), Z_OK);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    int zr;
    do {
        buf_reserve(out, 65536);
        z.next_out = (Bytef *)out->data + out->len;
        z.avail_out = 65536;
        zr = inflate(&z, Z_NO_FLUSH);
        out->len += 65536 - z.avail_out;
        if (zr != Z_OK && zr != Z_STREAM_END)
            fail_msg("inflate: %d", zr);
    } while (zr != Z_STREAM_END);
    assert_int_equal(z.avail_in, 0);
    inflateEnd(&z);
}

static void gzip(const char *in, size_t n, buf_t *out)
{
    z_stream z = {0};
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
    buf_reserve(out, deflateBound(&z, n) + 64);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out->data + out->len;
    z.avail_out = (uInt)(out->cap - out->len - 1);
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    out->len += z.total_out;
    deflateEnd(&z);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- SHA-256 (FIPS 180-4), so the signing test checks envd against an independent
 * implementation. ---- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

static void sha256(const void *data, size_t n, unsigned char out[32])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = data;
    size_t left = n;
    while (left >= 64) {
        sha256_block(h, p);
        p += 64;
        left -= 64;
    }
    unsigned char last[128] = {0};
    memcpy(last, p, left);
    last[left] = 0x80;
    size_t blocks = left + 9 > 64 ? 2 : 1;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        last[blocks * 64 - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t i = 0; i < blocks; i++)
        sha256_block(h, last + 64 * i);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

/* "v1_" + unpadded base64 of SHA-256(msg), URL-encoded for a query. */
static char *signature(const char *msg)
{
    unsigned char d[32];
    sha256(msg, strlen(msg), d);
    char b[64] = "v1_";
    size_t n = b64_encode(d, 32, b + 3, false);
    b[3 + n] = '\0';
    return enc(b);
}

/* ---- fixtures ---- */

static int setup(void **state)
{
    (void)state;
    tmp = th_tmpdir();
    if (!tmp)
        return -1;
    return th_envd_start(&envd, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    bool alive = th_envd_alive(&envd);
    th_envd_stop(&envd);
    th_rmrf(tmp);
    free(tmp);
    return alive ? 0 : -1;
}

/* ---- tests ---- */

static void test_sha256_self_check(void **state)
{
    (void)state;
    unsigned char d[32];
    sha256("abc", 3, d);
    assert_int_equal(d[0], 0xba);
    assert_int_equal(d[31], 0xad);
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256(m, strlen(m), d);
    assert_int_equal(d[0], 0x24);
    assert_int_equal(d[31], 0xc1);
}

static void test_upload_one_part(void **state)
{
    (void)state;
    char *target = pathf("one/a.txt");
    part_t p = {"file", target, "hello, files\n", 13};
    httpc_resp_t r;
    httpc_resp_init(&r);
    upload(&envd, "username=root", &p, 1, &r);
    assert_status(&r, 200);
    json_t *j = th_json(&r);
    assert_true(json_is_array(j));
    assert_int_equal(json_array_size(j), 1);
    json_t *e0 = json_array_get(j, 0);
    assert_string_equal(json_string_value(json_object_get(e0, "path")), target);
    assert_string_equal(json_string_value(json_object_get(e0, "name")), "a.txt");
    assert_string_equal(json_string_value(json_object_get(e0, "type")), "file");
    json_decref(j);
    assert_file(target, "hello, files\n", 13);

    download(&envd, target, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 13);
    assert_memory_equal(r.body.data, "hello, files\n", 13);
    char v[256];
    assert_true(httpc_resp_header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "text/plain; charset=utf-8");
    assert_true(httpc_resp_header(&r, "Content-Disposition", v, sizeof v));
    assert_string_equal(v, "inline; filename=\"a.txt\"");
    assert_true(httpc_resp_header(&r, "Vary", v, sizeof v));
    assert_string_equal(v, "Accept-Encoding");
    assert_false(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    /* No temporary file is left beside the target. */
    assert_int_equal(count_tmp("one"), 0);
    httpc_resp_fini(&r);
    free(target);
}

static void test_upload_many_parts(void **state)
{
    (void)state;
    char *t1 = pathf("many/1.bin"), *t2 = pathf("many/deep/er/2.bin"), *t3 = pathf("many/3.txt");
    size_t n2 = 300000;
    char *big = random_bytes(n2);
    part_t parts[] = {
        {"file", t1, "first", 5}, {"note", NULL, "not a file, skipped", 19},
        {"file", t2, big, n2},    {"other", "/should/not/be/written", "x", 1},
        {"file", t3, "", 0},
    };
    httpc_resp_t r;
    httpc_resp_init(&r);
    upload(&envd, NULL, parts, 5, &r);
    assert_status(&r, 200);
    json_t *j = th_json(&r);
    assert_int_equal(json_array_size(j), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 1), "path")), t2);
    json_decref(j);
    assert_file(t1, "first", 5);
    assert_file(t2, big, n2);
    assert_file(t3, "", 0);
    struct stat st;
    assert_int_not_equal(stat("/should/not/be/written", &st), 0);

    download(&envd, t2, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, n2);
    assert_memory_equal(r.body.data, big, n2);
    char v[128];
    assert_true(httpc_resp_header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/octet-stream");
    download(&envd, t3, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 0);
    httpc_resp_fini(&r);
    free(big);
    free(t1);
    free(t2);
    free(t3);
}

static void test_upload_raw(void **state)
{
    (void)state;
    char *target = pathf("raw/data.json");
    char *q = enc(target);
    char url[4096];
    snprintf(url, sizeof url, "/files?path=%s", q);
    const char *h[] = {"Content-Type: application/octet-stream", NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&envd, "POST", url, h, "{\"a\":1}", 7, &r), 0);
    assert_status(&r, 200);
    json_t *j = th_json(&r);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "name")),
                        "data.json");
    json_decref(j);
    assert_file(target, "{\"a\":1}", 7);
    /* Overwrite with a shorter body: truncated, not merged. */
    assert_int_equal(th_http(&envd, "POST", url, h, "[]", 2, &r), 0);
    assert_status(&r, 200);
    assert_file(target, "[]", 2);
    download(&envd, target, NULL, NULL, &r);
    char v[128];
    assert_true(httpc_resp_header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/json");
    httpc_resp_fini(&r);
    free(q);
    free(target);
}

static void test_upload_gzip(void **state)
{
    (void)state;
    size_t n = 2u << 20;
    char *data = random_bytes(n);
    memset(data, 'z', n / 2); /* half compressible */
    char *t1 = pathf("gz/multi.bin"), *t2 = pathf("gz/raw.bin");
    part_t p = {"file", t1, data, n};
    buf_t body, gz;
    buf_init(&body);
    buf_init(&gz);
    build_multipart(&p, 1, &body);
    gzip(body.data, body.len, &gz);
    const char *h[] = {"Content-Type: multipart/form-data; boundary=TestBoundary42",
                       "Content-Encoding: gzip", NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&envd, "POST", "/files", h, gz.data, gz.len, &r), 0);
    assert_status(&r, 200);
    assert_file(t1, data, n);

    buf_reset(&gz);
    gzip(data, n, &gz);
    char url[4096];
    char *q = enc(t2);
    snprintf(url, sizeof url, "/files?path=%s", q);
    const char *hr[] = {"Content-Type: application/octet-stream", "Content-Encoding: gzip", NULL};
    assert_int_equal(th_http(&envd, "POST", url, hr, gz.data, gz.len, &r), 0);
    assert_status(&r, 200);
    assert_file(t2, data, n);

    /* A body that is not gzip at all, and an encoding we do not speak. */
    assert_int_equal(th_http(&envd, "POST", url, hr, "plain", 5, &r), 0);
    assert_status(&r, 400);
    assert_file(t2, data, n); /* old content intact */
    const char *hb[] = {"Content-Type: application/octet-stream", "Content-Encoding: br", NULL};
    assert_int_equal(th_http(&envd, "POST", url, hb, "x", 1, &r), 0);
    assert_status(&r, 400);
    /* A truncated gzip body. */
    assert_int_equal(th_http(&envd, "POST", url, hr, gz.data, gz.len / 2, &r), 0);
    assert_status(&r, 400);
    assert_file(t2, data, n);
    assert_int_equal(count_tmp("gz"), 0);
    httpc_resp_fini(&r);
    buf_fini(&body);
    buf_fini(&gz);
    free(q);
    free(t1);
    free(t2);
    free(data);
}

static void test_big_roundtrip(void **state)
{
    (void)state;
    size_t n = 50u << 20;
    char *data = random_bytes(n);
    uLong crc = crc32(0, (const Bytef *)data, (uInt)n);
    char *target = pathf("big/50MiB.bin");
    char *q = enc(target);
    char url[4096];
    snprintf(url, sizeof url, "/files?path=%s", q);
    const char *h[] = {"Content-Type: application/octet-stream", NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    assert_int_equal(th_http(&envd, "POST", url, h, data, n, &r), 0);
    assert_status(&r, 200);
    download(&envd, target, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, n);
    assert_int_equal(crc32(0, (const Bytef *)r.body.data, (uInt)r.body.len), crc);

    /* The same through multipart. */
    part_t p = {"file", target, data, n};
    upload(&envd, NULL, &p, 1, &r);
    assert_status(&r, 200);
    buf_t back;
    buf_init(&back);
    assert_true(read_file(target, &back));
    assert_int_equal(back.len, n);
    assert_int_equal(crc32(0, (const Bytef *)back.data, (uInt)back.len), crc);
    buf_fini(&back);
    unlink(target);
    httpc_resp_fini(&r);
    free(q);
    free(target);
    free(data);
}

struct crc_sink {
    uLong crc;
    size_t n;
};

static int crc_on_data(void *ud, const char *data, size_t len)
{
    struct crc_sink *c = ud;
    c->crc = crc32(c->crc, (const Bytef *)data, (uInt)len);
    c->n += len;
    return 0;
}

/* 100 MiB each way on loopback. The download is consumed as it streams (a client that first
 * grows one 100 MiB buffer measures its own realloc, not envd). The floor asserted here is far
 * below what envd does (several hundred MB/s) so that a busy CI machine does not fail it, but
 * per-byte work or small writes on the data path would. */
static void test_speed_100mib(void **state)
{
    (void)state;
    size_t n = 100u << 20;
    char *data = random_bytes(n);
    uLong crc = crc32(0, (const Bytef *)data, (uInt)n);
    char *target = pathf("speed.bin");
    char *q = enc(target);
    char url[4096];
    snprintf(url, sizeof url, "%s/files?path=%s", envd.url, q);
    const char *h[] = {"Content-Type: application/octet-stream", NULL};
    httpc_t *c = httpc_new();
    httpc_resp_t r;
    httpc_resp_init(&r);
    err_t e = {0};
    httpc_req_t up = {.method = "POST",
                      .url = url,
                      .headers = h,
                      .body = data,
                      .body_len = n,
                      .timeout_ms = 120000};
    double t0 = now_s();
    assert_int_equal(httpc_do(c, &up, &r, &e), 0);
    double t1 = now_s();
    assert_status(&r, 200);
    struct crc_sink sink = {crc32(0, NULL, 0), 0};
    httpc_req_t down = {
        .method = "GET", .url = url, .on_data = crc_on_data, .ud = &sink, .timeout_ms = 120000};
    assert_int_equal(httpc_do(c, &down, &r, &e), 0);
    double t2 = now_s();
    assert_int_equal(r.status, 200);
    assert_int_equal(sink.n, n);
    assert_int_equal(sink.crc, crc);
    double up_mbs = (double)n / (t1 - t0) / 1e6, down_mbs = (double)n / (t2 - t1) / 1e6;
    printf("# 100 MiB upload %.0f MB/s, download %.0f MB/s\n", up_mbs, down_mbs);
    assert_true(up_mbs > 100);
    assert_true(down_mbs > 100);
    unlink(target);
    httpc_resp_fini(&r);
    httpc_free(c);
    free(q);
    free(target);
    free(data);
}

static void test_download_gzip(void **state)
{
    (void)state;
    char *target = pathf("dl/text.txt");
    buf_t text;
    buf_init(&text);
    for (int i = 0; i < 50000; i++)
        buf_printf(&text, "line %d of a compressible file\n", i);
    mkdirf("dl", 0755);
    write_file(target, text.data, text.len, 0644);
    const char *h[] = {"Accept-Encoding: gzip", NULL};
    httpc_resp_t r;
    httpc_resp_init(&r);
    download(&envd, target, NULL, h, &r);
    assert_status(&r, 200);
    char v[128];
    assert_true(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    assert_string_equal(v, "gzip");
    assert_true(httpc_resp_header(&r, "Vary", v, sizeof v));
    assert_true(r.body.len < text.len / 4);
    buf_t plain;
    buf_init(&plain);
    gunzip(r.body.data, r.body.len, &plain);
    assert_int_equal(plain.len, text.len);
    assert_memory_equal(plain.data, text.data, text.len);

    /* Preference and wildcard forms. */
    const char *h2[] = {"Accept-Encoding: deflate, *;q=0.5", NULL};
    download(&envd, target, NULL, h2, &r);
    assert_true(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    const char *h3[] = {"Accept-Encoding: gzip;q=0.2, identity;q=0.9", NULL};
    download(&envd, target, NULL, h3, &r);
    assert_status(&r, 200);
    assert_false(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    assert_int_equal(r.body.len, text.len);
    const char *h4[] = {"Accept-Encoding: identity;q=0, gzip", NULL};
    download(&envd, target, NULL, h4, &r);
    assert_true(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    /* Without the header, identity. */
    download(&envd, target, NULL, NULL, &r);
    assert_false(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    assert_int_equal(r.body.len, text.len);
    httpc_resp_fini(&r);
    buf_fini(&plain);
    buf_fini(&text);
    free(target);
}

static void test_download_range_and_conditional(void **state)
{
    (void)state;
    char *target = pathf("dl/range.bin");
    char *data = random_bytes(10000);
    write_file(target, data, 10000, 0644);
    httpc_resp_t r;
    httpc_resp_init(&r);
    char v[256];

    /* Range forces identity even when gzip is accepted. */
    const char *h1[] = {"Range: bytes=100-199", "Accept-Encoding: gzip", NULL};
    download(&envd, target, NULL, h1, &r);
    assert_status(&r, 206);
    assert_false(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    assert_int_equal(r.body.len, 100);
    assert_memory_equal(r.body.data, data + 100, 100);
    assert_true(httpc_resp_header(&r, "Content-Range", v, sizeof v));
    assert_string_equal(v, "bytes 100-199/10000");

    const char *h2[] = {"Range: bytes=-10", NULL};
    download(&envd, target, NULL, h2, &r);
    assert_status(&r, 206);
    assert_int_equal(r.body.len, 10);
    assert_memory_equal(r.body.data, data + 9990, 10);
    const char *h3[] = {"Range: bytes=9000-", NULL};
    download(&envd, target, NULL, h3, &r);
    assert_status(&r, 206);
    assert_int_equal(r.body.len, 1000);
    assert_memory_equal(r.body.data, data + 9000, 1000);
    const char *h4[] = {"Range: bytes=9990-20000", NULL};
    download(&envd, target, NULL, h4, &r);
    assert_status(&r, 206);
    assert_int_equal(r.body.len, 10);
    const char *h5[] = {"Range: bytes=10000-", NULL};
    download(&envd, target, NULL, h5, &r);
    assert_status(&r, 416);
    assert_true(httpc_resp_header(&r, "Content-Range", v, sizeof v));
    assert_string_equal(v, "bytes */10000");
    /* Malformed and multiple ranges: the whole file. */
    const char *h6[] = {"Range: bytes=5-1", NULL};
    download(&envd, target, NULL, h6, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 10000);
    const char *h7[] = {"Range: bytes=0-1,5-6", NULL};
    download(&envd, target, NULL, h7, &r);
    assert_status(&r, 200);

    /* Validators. */
    download(&envd, target, NULL, NULL, &r);
    char etag[128], lm[128];
    assert_true(httpc_resp_header(&r, "ETag", etag, sizeof etag));
    assert_true(httpc_resp_header(&r, "Last-Modified", lm, sizeof lm));
    char inm[200], ims[200], ifr[200];
    snprintf(inm, sizeof inm, "If-None-Match: \"other\", %s", etag);
    const char *h8[] = {inm, "Accept-Encoding: gzip", NULL};
    download(&envd, target, NULL, h8, &r);
    assert_status(&r, 304);
    assert_int_equal(r.body.len, 0);
    const char *h9[] = {"If-None-Match: \"nope\"", "Accept-Encoding: gzip", NULL};
    download(&envd, target, NULL, h9, &r);
    assert_status(&r, 200);
    assert_false(httpc_resp_header(&r, "Content-Encoding", v, sizeof v));
    assert_int_equal(r.body.len, 10000);
    snprintf(ims, sizeof ims, "If-Modified-Since: %s", lm);
    const char *h10[] = {ims, NULL};
    download(&envd, target, NULL, h10, &r);
    assert_status(&r, 304);
    const char *h11[] = {"If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT", NULL};
    download(&envd, target, NULL, h11, &r);
    assert_status(&r, 200);
    /* If-Range: the range only applies while the validator matches. */
    snprintf(ifr, sizeof ifr, "If-Range: %s", etag);
    const char *h12[] = {"Range: bytes=0-9", ifr, NULL};
    download(&envd, target, NULL, h12, &r);
    assert_status(&r, 206);
    const char *h13[] = {"Range: bytes=0-9", "If-Range: \"stale\"", NULL};
    download(&envd, target, NULL, h13, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 10000);
    /* Conditionals with identity refused: 406. */
    const char *h14[] = {"Range: bytes=0-9", "Accept-Encoding: gzip, identity;q=0", NULL};
    download(&envd, target, NULL, h14, &r);
    assert_status(&r, 406);
    httpc_resp_fini(&r);
    free(data);
    free(target);
}

static void test_download_errors(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    char *missing = pathf("no/such/file");
    download(&envd, missing, NULL, NULL, &r);
    assert_status(&r, 404);
    download(&envd, tmp, NULL, NULL, &r);
    assert_status(&r, 400);
    char *f = pathf("dl/errs.txt");
    write_file(f, "x", 1, 0644);
    download(&envd, f, "&username=no-such-user-xyz", NULL, &r);
    assert_status(&r, 401);
    const char *h1[] = {"Accept-Encoding: *;q=0", NULL};
    download(&envd, f, NULL, h1, &r);
    assert_status(&r, 406);
    const char *h2[] = {"Accept-Encoding: gzip;q=0, identity;q=0", NULL};
    download(&envd, f, NULL, h2, &r);
    assert_status(&r, 406);
    const char *h3[] = {"Accept-Encoding: br, identity;q=0", NULL};
    download(&envd, f, NULL, h3, &r);
    assert_status(&r, 406);
    /* A path under a file, a FIFO, "~other". */
    char *under = pathf("dl/errs.txt/below");
    download(&envd, under, NULL, NULL, &r);
    assert_status(&r, 404);
    char *fifo = pathf("dl/fifo");
    assert_int_equal(mkfifo(fifo, 0644), 0);
    download(&envd, fifo, NULL, NULL, &r);
    assert_status(&r, 400);
    assert_int_equal(th_http(&envd, "GET", "/files?path=~nobody/x", NULL, NULL, 0, &r), 0);
    assert_status(&r, 400);
    /* A name that needs escaping in Content-Disposition. */
    char *odd = pathf("dl/we\"ird \\name.txt");
    write_file(odd, "o", 1, 0644);
    download(&envd, odd, NULL, NULL, &r);
    assert_status(&r, 200);
    char v[256];
    assert_true(httpc_resp_header(&r, "Content-Disposition", v, sizeof v));
    assert_string_equal(v, "inline; filename=\"we\\\"ird \\\\name.txt\"");
    /* A non-ASCII name: an ASCII fallback plus the exact bytes in filename*. */
    char *utf = pathf("dl/caf\xc3\xa9 menu.txt");
    write_file(utf, "u", 1, 0644);
    download(&envd, utf, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_true(httpc_resp_header(&r, "Content-Disposition", v, sizeof v));
    assert_string_equal(
        v, "inline; filename=\"caf__ menu.txt\"; filename*=UTF-8''caf%C3%A9%20menu.txt");
    free(utf);
    httpc_resp_fini(&r);
    free(odd);
    free(fifo);
    free(under);
    free(f);
    free(missing);
}

static void test_upload_errors(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    /* The same target twice: 400, the first part stays written. */
    char *t = pathf("twice/x.txt");
    part_t twice[] = {{"file", t, "first", 5}, {"file", t, "second", 6}};
    upload(&envd, NULL, twice, 2, &r);
    assert_status(&r, 400);
    assert_file(t, "first", 5);
    /* path= with two file parts is the same thing. */
    char *q = enc(t), query[4096];
    snprintf(query, sizeof query, "path=%s", q);
    part_t two[] = {{"file", "a", "1", 1}, {"file", "b", "2", 1}};
    upload(&envd, query, two, 2, &r);
    assert_status(&r, 400);
    assert_file(t, "1", 1);
    /* A directory at the target. */
    char *dir = pathf("twice");
    part_t atdir = {"file", dir, "x", 1};
    upload(&envd, NULL, &atdir, 1, &r);
    assert_status(&r, 400);
    /* A file where a parent directory should be. */
    char *under = pathf("twice/x.txt/below");
    part_t atfile = {"file", under, "x", 1};
    upload(&envd, NULL, &atfile, 1, &r);
    assert_status(&r, 400);
    /* No filename and no path. */
    part_t nofn = {"file", NULL, "x", 1};
    upload(&envd, NULL, &nofn, 1, &r);
    assert_status(&r, 400);
    /* octet-stream without path; other content types. */
    const char *hr[] = {"Content-Type: application/octet-stream", NULL};
    assert_int_equal(th_http(&envd, "POST", "/files", hr, "x", 1, &r), 0);
    assert_status(&r, 400);
    assert_non_null(strstr(r.body.data, "path"));
    const char *ht[] = {"Content-Type: text/plain", NULL};
    assert_int_equal(th_http(&envd, "POST", "/files", ht, "x", 1, &r), 0);
    assert_status(&r, 400);
    assert_non_null(strstr(r.body.data, "multipart/form-data"));
    const char *hn[] = {"Content-Type: multipart/form-data", NULL};
    assert_int_equal(th_http(&envd, "POST", "/files", hn, "x", 1, &r), 0);
    assert_status(&r, 400);
    /* Unknown user. */
    part_t ok = {"file", t, "x", 1};
    upload(&envd, "username=no-such-user-xyz", &ok, 1, &r);
    assert_status(&r, 401);
    assert_file(t, "1", 1);
    httpc_resp_fini(&r);
    free(under);
    free(dir);
    free(q);
    free(t);
}

static void test_truncated_multipart(void **state)
{
    (void)state;
    char *t = pathf("trunc/keep.txt");
    mkdirf("trunc", 0755);
    write_file(t, "old content", 11, 0644);
    size_t n = 1u << 20;
    char *data = random_bytes(n);
    part_t p = {"file", t, data, n};
    buf_t body;
    buf_init(&body);
    build_multipart(&p, 1, &body);
    httpc_resp_t r;
    httpc_resp_init(&r);
    /* Cut inside the part's data, and just before the closing boundary. */
    size_t cuts[] = {body.len / 2, body.len - 10, 30};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(th_http(&envd, "POST", "/files", mp_headers, body.data, cuts[i], &r), 0);
        assert_status(&r, 400);
        assert_file(t, "old content", 11);
    }
    /* A hostile header block: larger than the limit. */
    buf_t hostile;
    buf_init(&hostile);
    buf_adds(&hostile, "--TestBoundary42\r\nContent-Disposition: form-data; name=\"file\"; ");
    for (int i = 0; i < 40000; i++)
        buf_addc(&hostile, 'a');
    buf_adds(&hostile, "\r\n\r\nx\r\n--TestBoundary42--\r\n");
    assert_int_equal(th_http(&envd, "POST", "/files", mp_headers, hostile.data, hostile.len, &r),
                     0);
    assert_status(&r, 400);
    buf_fini(&hostile);
    assert_int_equal(count_tmp("trunc"), 0);
    /* envd still serves. */
    assert_true(th_envd_alive(&envd));
    download(&envd, t, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 11);
    httpc_resp_fini(&r);
    buf_fini(&body);
    free(data);
    free(t);
}

static void test_client_disconnect(void **state)
{
    (void)state;
    char *t = pathf("gone/keep.txt");
    mkdirf("gone", 0755);
    write_file(t, "old", 3, 0644);
    for (int pass = 0; pass < 2; pass++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)envd.port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof sa), 0);
        char *q = enc(t);
        char head[4096];
        int hl;
        if (pass == 0)
            hl = snprintf(
                head, sizeof head,
                "POST /files?path=%s HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n",
                q);
        else
            hl = snprintf(
                head, sizeof head,
                "POST /files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                "boundary=B\r\nContent-Length: 10000000\r\n\r\n--B\r\nContent-Disposition: "
                "form-data; name=file; filename=\"%s\"\r\n\r\n",
                t);
        free(q);
        assert_int_equal(write(s, head, (size_t)hl), hl);
        char chunk[65536];
        memset(chunk, 'n', sizeof chunk);
        for (int i = 0; i < 8; i++)
            assert_int_equal(write(s, chunk, sizeof chunk), (ssize_t)sizeof chunk);
        usleep(200000);
        /* Mid-upload the temporary file exists and the old content is still there. */
        assert_int_equal(count_tmp("gone"), 1);
        assert_file(t, "old", 3);
        close(s);
        for (int i = 0; i < 100 && count_tmp("gone"); i++)
            usleep(20000);
        assert_int_equal(count_tmp("gone"), 0);
        assert_file(t, "old", 3);
    }
    assert_true(th_envd_alive(&envd));
    free(t);
}

static void test_paths_resolve(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    /* Relative paths land in the user's home (root: /root). */
    struct passwd *pw = getpwnam("root");
    assert_non_null(pw);
    char rel[128], abs[512];
    snprintf(rel, sizeof rel, "wrenn-files-test-%d/sub/rel.txt", (int)getpid());
    snprintf(abs, sizeof abs, "%s/%s", pw->pw_dir, rel);
    part_t p = {"file", rel, "relative", 8};
    upload(&envd, NULL, &p, 1, &r);
    assert_status(&r, 200);
    json_t *j = th_json(&r);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "path")), abs);
    json_decref(j);
    assert_file(abs, "relative", 8);
    download(&envd, rel, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 8);
    char top[512];
    snprintf(top, sizeof top, "%s/wrenn-files-test-%d", pw->pw_dir, (int)getpid());
    th_rmrf(top);

    /* "..": cleaned lexically, never above "/". */
    char *dotted = pathf("paths/a/../b/./c.txt");
    char *clean = pathf("paths/b/c.txt");
    part_t p2 = {"file", dotted, "dots", 4};
    upload(&envd, NULL, &p2, 1, &r);
    assert_status(&r, 200);
    j = th_json(&r);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "path")), clean);
    json_decref(j);
    assert_file(clean, "dots", 4);
    char up[1024];
    snprintf(up, sizeof up, "/../../..%s", clean);
    download(&envd, up, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 4);
    /* Relative "../" from home reaches the same absolute file. */
    snprintf(up, sizeof up, "../../../../../../..%s", clean);
    download(&envd, up, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 4);

    /* The path query wins over the part's filename. */
    char *q = enc(clean), query[4096];
    snprintf(query, sizeof query, "path=%s", q);
    part_t p3 = {"file", "/ignored/name.txt", "override", 8};
    upload(&envd, query, &p3, 1, &r);
    assert_status(&r, 200);
    assert_file(clean, "override", 8);
    struct stat st;
    assert_int_not_equal(stat("/ignored/name.txt", &st), 0);
    httpc_resp_fini(&r);
    free(q);
    free(dotted);
    free(clean);
}

static void test_overwrite_keeps_mode_and_links(void **state)
{
    (void)state;
    httpc_resp_t r;
    httpc_resp_init(&r);
    mkdirf("keep", 0755);
    char *t = pathf("keep/mode.txt");
    write_file(t, "old", 3, 0640);
    part_t p = {"file", t, "new content", 11};
    upload(&envd, NULL, &p, 1, &r);
    assert_status(&r, 200);
    struct stat st;
    assert_int_equal(stat(t, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_file(t, "new content", 11);
    /* A new file: 0666 less the umask (022 in the test). */
    char *n = pathf("keep/new.txt");
    part_t pn = {"file", n, "n", 1};
    upload(&envd, NULL, &pn, 1, &r);
    assert_status(&r, 200);
    assert_int_equal(stat(n, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    /* Parent directories are created 0755. */
    char *deep = pathf("keep/d1/d2/f.txt");
    part_t pd = {"file", deep, "d", 1};
    upload(&envd, NULL, &pd, 1, &r);
    assert_status(&r, 200);
    char *d1 = pathf("keep/d1");
    assert_int_equal(stat(d1, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0755);
    /* Through a symlink: the file it names is replaced, the link stays. */
    char *lnk = pathf("keep/link.txt");
    assert_int_equal(symlink(t, lnk), 0);
    part_t pl = {"file", lnk, "via link", 8};
    upload(&envd, NULL, &pl, 1, &r);
    assert_status(&r, 200);
    assert_int_equal(lstat(lnk, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_file(t, "via link", 8);
    /* A hard-linked file is written in place, so both names see the new bytes. */
    char *hard = pathf("keep/hard.txt");
    assert_int_equal(link(t, hard), 0);
    part_t ph = {"file", hard, "shared", 6};
    upload(&envd, NULL, &ph, 1, &r);
    assert_status(&r, 200);
    assert_file(t, "shared", 6);
    httpc_resp_fini(&r);
    free(hard);
    free(lnk);
    free(d1);
    free(deep);
    free(n);
    free(t);
}

static void test_as_nobody(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    struct passwd *pw = getpwnam("nobody");
    if (!pw)
        skip();
    uid_t nuid = pw->pw_uid;
    /* The scratch dir is 0700: let nobody through so that file modes decide. */
    chmod(tmp, 0755);
    httpc_resp_t r;
    httpc_resp_init(&r);
    mkdirf("nb", 0755);
    char *secret = pathf("nb/secret.txt");
    write_file(secret, "root only", 9, 0600);
    download(&envd, secret, "&username=nobody", NULL, &r);
    assert_status(&r, 403);
    download(&envd, secret, "&username=root", NULL, &r);
    assert_status(&r, 200);
    /* nobody cannot write into a root-owned 0755 directory... */
    char *denied = pathf("nb/denied.txt");
    part_t pd = {"file", denied, "x", 1};
    upload(&envd, "username=nobody", &pd, 1, &r);
    assert_status(&r, 403);
    /* ...nor overwrite a root file it may read but not write. */
    char *ro = pathf("nb/readonly.txt");
    write_file(ro, "keep", 4, 0644);
    char *wdir = pathf("nb/open");
    mkdir(wdir, 0777);
    chmod(wdir, 0777);
    char *ro2 = pathf("nb/open/ro.txt");
    write_file(ro2, "keep", 4, 0644);
    part_t pro = {"file", ro2, "overwritten", 11};
    upload(&envd, "username=nobody", &pro, 1, &r);
    assert_status(&r, 403);
    assert_file(ro2, "keep", 4);
    /* An upload into a world-writable directory makes a file owned by nobody. */
    char *mine = pathf("nb/open/sub/mine.txt");
    part_t pm = {"file", mine, "nobody's", 8};
    upload(&envd, "username=nobody", &pm, 1, &r);
    assert_status(&r, 200);
    struct stat st;
    assert_int_equal(stat(mine, &st), 0);
    assert_int_equal(st.st_uid, nuid);
    char *sub = pathf("nb/open/sub");
    assert_int_equal(stat(sub, &st), 0);
    assert_int_equal(st.st_uid, nuid);
    /* And nobody reads it back. */
    download(&envd, mine, "&username=nobody", NULL, &r);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 8);
    httpc_resp_fini(&r);
    chmod(tmp, 0700);
    free(sub);
    free(mine);
    free(ro2);
    free(wdir);
    free(ro);
    free(denied);
    free(secret);
}

/* The token tests get an instance of their own, stopped by the teardown even when an assertion
 * fails half-way (a leaked envd would hold the test's stdout open). */
static th_envd_t token_envd;

static int token_setup(void **state)
{
    (void)state;
    return th_envd_start(&token_envd, NULL) == 0 ? 0 : -1;
}

static int token_teardown(void **state)
{
    (void)state;
    bool alive = th_envd_alive(&token_envd);
    th_envd_stop(&token_envd);
    return alive ? 0 : -1;
}

static void test_token_and_signing(void **state)
{
    (void)state;
    th_envd_t *e = &token_envd;
    httpc_resp_t r;
    httpc_resp_init(&r);
    const char *init = "{\"accessToken\":\"t\"}";
    assert_int_equal(th_http(e, "POST", "/init", NULL, init, strlen(init), &r), 0);
    assert_int_equal(r.status, 204);

    char *f = pathf("sig/file.txt");
    mkdirf("sig", 0755);
    write_file(f, "signed", 6, 0644);
    char *qf = enc(f);
    char url[4096], msg[4096];

    /* No header, no signature. */
    download(e, f, NULL, NULL, &r);
    assert_status(&r, 401);
    const char *bad[] = {"X-Access-Token: wrong", NULL};
    download(e, f, NULL, bad, &r);
    assert_status(&r, 401);
    const char *good[] = {"X-Access-Token: t", NULL};
    download(e, f, NULL, good, &r);
    assert_status(&r, 200);

    /* A read signature without expiration, and with the username. */
    snprintf(msg, sizeof msg, "%s:read::t", f);
    char *sig = signature(msg);
    snprintf(url, sizeof url, "/files?path=%s&signature=%s", qf, sig);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 200);
    assert_int_equal(r.body.len, 6);
    /* The same signature with a username it was not made for. */
    snprintf(url, sizeof url, "/files?path=%s&username=root&signature=%s", qf, sig);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 401);
    /* A wrong header is not rescued by a good signature. */
    snprintf(url, sizeof url, "/files?path=%s&signature=%s", qf, sig);
    assert_int_equal(th_http(e, "GET", url, bad, NULL, 0, &r), 0);
    assert_status(&r, 401);
    free(sig);
    snprintf(msg, sizeof msg, "%s:read:root:t", f);
    sig = signature(msg);
    snprintf(url, sizeof url, "/files?path=%s&username=root&signature=%s", qf, sig);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 200);
    /* A read signature does not allow writing. */
    part_t p = {"file", "ignored", "w", 1};
    char query[4096];
    snprintf(query, sizeof query, "path=%s&username=root&signature=%s", qf, sig);
    upload(e, query, &p, 1, &r);
    assert_status(&r, 401);
    free(sig);
    assert_file(f, "signed", 6);

    /* Expiration: in the future OK, in the past 401, tampered 401. */
    long long future = (long long)time(NULL) + 3600, past = (long long)time(NULL) - 10;
    snprintf(msg, sizeof msg, "%s:read::t:%lld", f, future);
    sig = signature(msg);
    snprintf(url, sizeof url, "/files?path=%s&signature=%s&signature_expiration=%lld", qf, sig,
             future);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 200);
    snprintf(url, sizeof url, "/files?path=%s&signature=%s&signature_expiration=%lld", qf, sig,
             future + 1);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 401);
    snprintf(url, sizeof url, "/files?path=%s&signature=%s", qf, sig);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 401);
    free(sig);
    snprintf(msg, sizeof msg, "%s:read::t:%lld", f, past);
    sig = signature(msg);
    snprintf(url, sizeof url, "/files?path=%s&signature=%s&signature_expiration=%lld", qf, sig,
             past);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 401);
    free(sig);
    snprintf(url, sizeof url, "/files?path=%s&signature=v1_AAAA", qf);
    assert_int_equal(th_http(e, "GET", url, NULL, NULL, 0, &r), 0);
    assert_status(&r, 401);

    /* Uploads: header, write signature. */
    part_t pw = {"file", f, "by header", 9};
    upload(e, NULL, &pw, 1, &r);
    assert_status(&r, 401);
    buf_t body;
    buf_init(&body);
    build_multipart(&pw, 1, &body);
    const char *hh[] = {mp_headers[0], "X-Access-Token: t", NULL};
    assert_int_equal(th_http(e, "POST", "/files", hh, body.data, body.len, &r), 0);
    assert_status(&r, 200);
    assert_file(f, "by header", 9);
    snprintf(msg, sizeof msg, "%s:write::t", f);
    sig = signature(msg);
    snprintf(query, sizeof query, "path=%s&signature=%s", qf, sig);
    part_t ps = {"file", "x", "by signature", 12};
    upload(e, query, &ps, 1, &r);
    assert_status(&r, 200);
    assert_file(f, "by signature", 12);
    free(sig);
    buf_fini(&body);

    /* /health and /init rules are unchanged; the main instance (no token) is unaffected. */
    download(&envd, f, NULL, NULL, &r);
    assert_status(&r, 200);
    assert_true(th_envd_alive(e));
    httpc_resp_fini(&r);
    free(qf);
    free(f);
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_self_check),
        cmocka_unit_test(test_upload_one_part),
        cmocka_unit_test(test_upload_many_parts),
        cmocka_unit_test(test_upload_raw),
        cmocka_unit_test(test_upload_gzip),
        cmocka_unit_test(test_big_roundtrip),
        cmocka_unit_test(test_speed_100mib),
        cmocka_unit_test(test_download_gzip),
        cmocka_unit_test(test_download_range_and_conditional),
        cmocka_unit_test(test_download_errors),
        cmocka_unit_test(test_upload_errors),
        cmocka_unit_test(test_truncated_multipart),
        cmocka_unit_test(test_client_disconnect),
        cmocka_unit_test(test_paths_resolve),
        cmocka_unit_test(test_overwrite_keeps_mode_and_links),
        cmocka_unit_test(test_as_nobody),
        cmocka_unit_test_setup_teardown(test_token_and_signing, token_setup, token_teardown),
    };
    return cmocka_run_group_tests_name("envd_files", tests, setup, teardown);
}
