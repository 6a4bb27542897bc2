/* Unit tests of the gzip stream helpers (src/lib/gz.c), checked against zlib's own one-shot
 * gzip framing. */
#include "buf.h"
#include "gz.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <cmocka.h>

static int sink(void *ud, const char *data, size_t len, err_t *e)
{
    (void)e;
    assert_true(len > 0 && len <= GZ_CHUNK);
    buf_add(ud, data, len);
    return 0;
}

static int sink_fail(void *ud, const char *data, size_t len, err_t *e)
{
    (void)ud;
    (void)data;
    (void)len;
    return err_set(e, -ENOSPC, "full");
}

/* gzip-compress with zlib directly (the reference). */
static void ref_gzip(const void *in, size_t n, buf_t *out)
{
    z_stream z = {0};
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
    buf_reserve(out, deflateBound(&z, n) + 32);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out->data + out->len;
    z.avail_out = (uInt)(out->cap - out->len - 1);
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    out->len += z.total_out;
    deflateEnd(&z);
}

static void ref_gunzip(const void *in, size_t n, buf_t *out)
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
        assert_true(zr == Z_OK || zr == Z_STREAM_END);
    } while (zr != Z_STREAM_END);
    inflateEnd(&z);
}

static char *sample(size_t n)
{
    char *d = malloc(n ? n : 1);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        /* Half compressible text, half noise. */
        d[i] = (i / 4096) % 2 ? (char)(x >> 16) : (char)('a' + (i % 26));
    }
    return d;
}

static void test_inflate_pieces(void **state)
{
    (void)state;
    size_t n = 3u << 20;
    char *plain = sample(n);
    buf_t gz;
    buf_init(&gz);
    ref_gzip(plain, n, &gz);
    size_t steps[] = {1, 7, 4096, 100000, 1u << 30};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        if (steps[s] == 1 && gz.len > 200000)
            continue; /* byte-by-byte is covered by the small case below */
        buf_t out;
        buf_init(&out);
        gz_inflate_t *g = gz_inflate_new(sink, &out);
        err_t e = {0};
        for (size_t off = 0; off < gz.len; off += steps[s]) {
            size_t k = gz.len - off < steps[s] ? gz.len - off : steps[s];
            assert_int_equal(gz_inflate_feed(g, gz.data + off, k, &e), 0);
        }
        assert_int_equal(gz_inflate_finish(g, &e), 0);
        gz_inflate_free(g);
        assert_int_equal(out.len, n);
        assert_memory_equal(out.data, plain, n);
        buf_fini(&out);
    }
    buf_fini(&gz);
    free(plain);

    /* Small input byte by byte. */
    plain = sample(5000);
    buf_init(&gz);
    ref_gzip(plain, 5000, &gz);
    buf_t out;
    buf_init(&out);
    gz_inflate_t *g = gz_inflate_new(sink, &out);
    for (size_t i = 0; i < gz.len; i++)
        assert_int_equal(gz_inflate_feed(g, gz.data + i, 1, NULL), 0);
    assert_int_equal(gz_inflate_finish(g, NULL), 0);
    gz_inflate_free(g);
    assert_int_equal(out.len, 5000);
    assert_memory_equal(out.data, plain, 5000);
    buf_fini(&out);
    buf_fini(&gz);
    free(plain);
}

static void test_inflate_members_and_errors(void **state)
{
    (void)state;
    buf_t gz, out;
    buf_init(&gz);
    buf_init(&out);
    ref_gzip("hello ", 6, &gz);
    ref_gzip("", 0, &gz);
    ref_gzip("world", 5, &gz);
    gz_inflate_t *g = gz_inflate_new(sink, &out);
    err_t e = {0};
    assert_int_equal(gz_inflate_feed(g, gz.data, gz.len, &e), 0);
    assert_int_equal(gz_inflate_finish(g, &e), 0);
    gz_inflate_free(g);
    assert_int_equal(out.len, 11);
    assert_memory_equal(out.data, "hello world", 11);

    /* Truncated. */
    buf_reset(&out);
    g = gz_inflate_new(sink, &out);
    assert_int_equal(gz_inflate_feed(g, gz.data, 10, &e), 0);
    assert_int_equal(gz_inflate_finish(g, &e), -EINVAL);
    gz_inflate_free(g);

    /* Empty input. */
    g = gz_inflate_new(sink, &out);
    assert_int_equal(gz_inflate_finish(g, &e), -EINVAL);
    gz_inflate_free(g);

    /* Not gzip at all, and junk after a good member. */
    g = gz_inflate_new(sink, &out);
    assert_int_equal(gz_inflate_feed(g, "plain text, not gzip", 20, &e), -EINVAL);
    assert_int_equal(gz_inflate_feed(g, gz.data, gz.len, &e), -EINVAL);
    assert_int_equal(gz_inflate_finish(g, &e), -EINVAL);
    gz_inflate_free(g);
    buf_t bad;
    buf_init(&bad);
    ref_gzip("ok", 2, &bad);
    buf_add(&bad, "junk-after", 10);
    g = gz_inflate_new(sink, &out);
    assert_int_equal(gz_inflate_feed(g, bad.data, bad.len, &e), -EINVAL);
    gz_inflate_free(g);
    buf_fini(&bad);

    /* The sink's error comes back with its message. */
    g = gz_inflate_new(sink_fail, NULL);
    assert_int_equal(gz_inflate_feed(g, gz.data, gz.len, &e), -ENOSPC);
    assert_string_equal(e.msg, "full");
    assert_int_equal(gz_inflate_finish(g, &e), -ENOSPC);
    gz_inflate_free(g);
    gz_inflate_free(NULL);
    buf_fini(&gz);
    buf_fini(&out);
}

struct src {
    const char *data;
    size_t len, off, max_piece;
    int fail_at; /* return -EIO on this call (1-based), 0: never */
    int calls;
};

static ssize_t source(void *ud, char *dst, size_t max)
{
    struct src *s = ud;
    if (++s->calls == s->fail_at)
        return -EIO;
    size_t n = s->len - s->off;
    if (n > max)
        n = max;
    if (s->max_piece && n > s->max_piece)
        n = s->max_piece;
    memcpy(dst, s->data + s->off, n);
    s->off += n;
    return (ssize_t)n;
}

static void test_deflate_roundtrip(void **state)
{
    (void)state;
    size_t sizes[] = {0, 1, 100, 300000, 2u << 20};
    size_t outs[] = {1, 13, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (size_t j = 0; j < sizeof outs / sizeof outs[0]; j++) {
            if (outs[j] == 1 && sizes[i] > 300000)
                continue;
            char *plain = sample(sizes[i]);
            struct src s = {.data = plain, .len = sizes[i], .max_piece = 70000};
            gz_deflate_t *g = gz_deflate_new(1, source, &s);
            buf_t gz;
            buf_init(&gz);
            char *piece = malloc(outs[j]);
            ssize_t n;
            while ((n = gz_deflate_read(g, piece, outs[j])) > 0) {
                assert_true((size_t)n <= outs[j]);
                buf_add(&gz, piece, (size_t)n);
            }
            assert_int_equal(n, 0);
            assert_int_equal(gz_deflate_read(g, piece, outs[j]), 0);
            gz_deflate_free(g);
            free(piece);
            buf_t back;
            buf_init(&back);
            ref_gunzip(gz.data, gz.len, &back);
            assert_int_equal(back.len, sizes[i]);
            if (sizes[i])
                assert_memory_equal(back.data, plain, sizes[i]);
            buf_fini(&back);
            buf_fini(&gz);
            free(plain);
        }
    }
}

static void test_deflate_source_error(void **state)
{
    (void)state;
    char *plain = sample(1u << 20);
    struct src s = {.data = plain, .len = 1u << 20, .max_piece = 1000, .fail_at = 3};
    gz_deflate_t *g = gz_deflate_new(9, source, &s);
    char out[256];
    ssize_t n;
    while ((n = gz_deflate_read(g, out, sizeof out)) > 0)
        ;
    assert_int_equal(n, -EIO);
    gz_deflate_free(g);
    gz_deflate_free(NULL);
    free(plain);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inflate_pieces),
        cmocka_unit_test(test_inflate_members_and_errors),
        cmocka_unit_test(test_deflate_roundtrip),
        cmocka_unit_test(test_deflate_source_error),
    };
    return cmocka_run_group_tests_name("gz", tests, NULL, NULL);
}
