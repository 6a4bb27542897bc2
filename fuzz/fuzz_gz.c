/* libFuzzer target: the gzip push decoder used for `Content-Encoding: gzip` uploads. The input
 * is decoded in one piece and in input-dependent pieces; both runs must give the same bytes and
 * the same result. The input is also encoded with gz_deflate and decoded back, which must give
 * the input again. Output is hashed, not kept, and capped so that bombs stay cheap. */
#include "fuzz.h"
#include "gz.h"

#include <string.h>

#define OUT_CAP (8u << 20)

typedef struct sink {
    uint64_t hash;
    size_t n;
} sink_t;

static int to_sink(void *ud, const char *data, size_t len, err_t *e)
{
    sink_t *s = ud;
    FUZZ_CHECK(len > 0 && len <= GZ_CHUNK);
    for (size_t i = 0; i < len; i++)
        s->hash = (s->hash ^ (unsigned char)data[i]) * 1099511628211u;
    s->n += len;
    if (s->n > OUT_CAP)
        return err_set(e, -EFBIG, "output too large");
    return 0;
}

static int decode(const uint8_t *data, size_t size, size_t max_piece, uint32_t seed, sink_t *s)
{
    err_t e = {0};
    gz_inflate_t *g = gz_inflate_new(to_sink, s);
    fuzz_split_t sp = {.state = seed, .max = max_piece};
    size_t off = 0;
    int r = 0;
    while (off < size) {
        size_t n = max_piece ? fuzz_split_next(&sp) : size - off;
        if (n > size - off)
            n = size - off;
        r = gz_inflate_feed(g, data + off, n, &e);
        off += n;
        if (r < 0)
            break;
    }
    if (r == 0)
        r = gz_inflate_finish(g, &e);
    FUZZ_CHECK(r == 0 || r == -EINVAL || r == -EFBIG);
    if (r < 0)
        FUZZ_CHECK(e.code == r);
    gz_inflate_free(g);
    return r;
}

typedef struct src {
    const uint8_t *p;
    size_t left;
    fuzz_split_t sp;
} src_t;

static ssize_t from_input(void *ud, char *dst, size_t max)
{
    src_t *s = ud;
    size_t n = fuzz_split_next(&s->sp);
    if (n > max)
        n = max;
    if (n > s->left)
        n = s->left;
    if (n == 0)
        return 0;
    memcpy(dst, s->p, n);
    s->p += n;
    s->left -= n;
    return (ssize_t)n;
}

typedef struct collect {
    const uint8_t *want;
    size_t want_len, got;
} collect_t;

static int compare_sink(void *ud, const char *data, size_t len, err_t *e)
{
    (void)e;
    collect_t *c = ud;
    FUZZ_CHECK(c->got + len <= c->want_len);
    FUZZ_CHECK(memcmp(c->want + c->got, data, len) == 0);
    c->got += len;
    return 0;
}

static void roundtrip(const uint8_t *data, size_t size, uint32_t seed)
{
    src_t s = {.p = data, .left = size, .sp = {.state = seed, .max = 5000}};
    gz_deflate_t *d = gz_deflate_new(1 + (int)(seed % 9), from_input, &s);
    collect_t c = {.want = data, .want_len = size};
    gz_inflate_t *g = gz_inflate_new(compare_sink, &c);
    err_t e = {0};
    char out[3000];
    for (;;) {
        ssize_t n = gz_deflate_read(d, out, 1 + seed % sizeof out);
        FUZZ_CHECK(n >= 0);
        if (n == 0)
            break;
        FUZZ_CHECK(gz_inflate_feed(g, out, (size_t)n, &e) == 0);
    }
    FUZZ_CHECK(gz_inflate_finish(g, &e) == 0);
    FUZZ_CHECK(c.got == size);
    gz_inflate_free(g);
    gz_deflate_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        data = (const uint8_t *)""; /* libFuzzer may pass NULL for the empty input */
    uint32_t seed = 2166136261u;
    for (size_t i = 0; i < size && i < 32; i++)
        seed = (seed ^ data[i]) * 16777619u;
    sink_t one = {0}, split = {0};
    int r1 = decode(data, size, 0, seed, &one);
    int r2 = decode(data, size, 1 + seed % 300, seed, &split);
    FUZZ_CHECK(r1 == r2);
    if (r1 == 0)
        FUZZ_CHECK(one.n == split.n && one.hash == split.hash);
    if (size <= 16384)
        roundtrip(data, size, seed);
    return 0;
}
