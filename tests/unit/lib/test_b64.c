/* Unit tests of src/lib/b64: the RFC 4648 §10 vectors, URL-safe input, missing padding, and
 * rejection of malformed input. */
#include "b64.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const struct {
    const char *plain, *padded, *bare;
} rfc[] = {
    {"", "", ""},
    {"f", "Zg==", "Zg"},
    {"fo", "Zm8=", "Zm8"},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg==", "Zm9vYg"},
    {"fooba", "Zm9vYmE=", "Zm9vYmE"},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};

static void test_encode_rfc(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        size_t n = strlen(rfc[i].plain);
        char out[32];
        assert_int_equal(b64_encoded_len(n), strlen(rfc[i].padded));
        size_t w = b64_encode(rfc[i].plain, n, out, true);
        assert_int_equal(w, strlen(rfc[i].padded));
        assert_memory_equal(out, rfc[i].padded, w);
        w = b64_encode(rfc[i].plain, n, out, false);
        assert_int_equal(w, strlen(rfc[i].bare));
        assert_memory_equal(out, rfc[i].bare, w);
    }
}

static void expect_decode(const char *in, const void *want, size_t want_len)
{
    size_t n = strlen(in);
    unsigned char *out = malloc(b64_decoded_max(n) + 1);
    long r = b64_decode(in, n, out);
    assert_int_equal(r, (long)want_len);
    assert_memory_equal(out, want, want_len);
    free(out);
}

static void expect_bad(const char *in)
{
    unsigned char out[64];
    size_t n = strlen(in);
    assert_true(b64_decoded_max(n) <= sizeof out);
    assert_int_equal(b64_decode(in, n, out), -EINVAL);
}

static void test_decode_rfc(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        expect_decode(rfc[i].padded, rfc[i].plain, strlen(rfc[i].plain));
        expect_decode(rfc[i].bare, rfc[i].plain, strlen(rfc[i].plain));
    }
}

static void test_url_safe(void **state)
{
    (void)state;
    /* 0xfb 0xff 0xbf is "+/+/" in the standard alphabet and "-_-_" in the URL-safe one. */
    const unsigned char bytes[] = {0xfb, 0xef, 0xbe, 0xfb, 0xff, 0xbf};
    char out[16];
    size_t w = b64_encode(bytes, sizeof bytes, out, true);
    out[w] = '\0';
    assert_string_equal(out, "+++++/+/");
    expect_decode("+++++/+/", bytes, sizeof bytes);
    expect_decode("-----_-_", bytes, sizeof bytes);
    const unsigned char ff[] = {0xff, 0xff};
    expect_decode("__8", ff, 2);
    expect_decode("//8=", ff, 2);
}

static void test_roundtrip_all_bytes(void **state)
{
    (void)state;
    unsigned char in[256];
    for (int i = 0; i < 256; i++)
        in[i] = (unsigned char)i;
    for (size_t n = 0; n <= sizeof in; n++) {
        char enc[400];
        unsigned char dec[300];
        size_t w = b64_encode(in, n, enc, n % 2 == 0);
        assert_true(w <= b64_encoded_len(n));
        long r = b64_decode(enc, w, dec);
        assert_int_equal(r, (long)n);
        assert_true(b64_decoded_max(w) >= n);
        assert_memory_equal(dec, in, n);
    }
}

static void test_garbage(void **state)
{
    (void)state;
    expect_bad("Z");     /* one character cannot hold a byte */
    expect_bad("Zm9vY"); /* 4n+1 characters */
    expect_bad("Zm9v!");
    expect_bad("Zm 9v"); /* whitespace is not base64 */
    expect_bad("Zm9v\n");
    expect_bad("Zg==="); /* too much padding */
    expect_bad("Z===");
    expect_bad("====");
    expect_bad("Zg=a"); /* padding in the middle */
    expect_bad("Zg==Zg==");
    expect_bad("Zm8=="); /* padding that does not complete a quantum */
    expect_bad("Zg=");
    expect_bad("Zm9v\x80");
    expect_bad("Zm9.");
    const char nul[] = {'Z', 'g', '\0', '='};
    unsigned char out[8];
    assert_int_equal(b64_decode(nul, sizeof nul, out), -EINVAL);
}

static void test_decode_len_zero(void **state)
{
    (void)state;
    unsigned char out[1];
    assert_int_equal(b64_decode("", 0, out), 0);
    assert_int_equal(b64_decode("Zm9v", 0, out), 0);
    assert_int_equal(b64_decoded_max(0), 0);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_rfc), cmocka_unit_test(test_decode_rfc),
        cmocka_unit_test(test_url_safe),   cmocka_unit_test(test_roundtrip_all_bytes),
        cmocka_unit_test(test_garbage),    cmocka_unit_test(test_decode_len_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
