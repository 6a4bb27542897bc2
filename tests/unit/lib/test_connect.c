/* Unit tests of src/lib/connect: envelope framing (partial, exact, oversized, bad flags),
 * end-of-stream and error JSON, Connect-Timeout-Ms parsing. */
#include "connect.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_parse_partial(void **state)
{
    (void)state;
    const uint8_t env[] = {0, 0, 0, 0, 3, '{', '}', ' '};
    uint8_t flags = 0xee;
    uint32_t len = 0xeeee;
    for (size_t n = 0; n < 5; n++) {
        assert_int_equal(connect_envelope_parse(env, n, 100, &flags, &len), 0);
        assert_int_equal(flags, 0xee); /* untouched until the header is complete */
    }
    for (size_t n = 5; n < sizeof env; n++) {
        assert_int_equal(connect_envelope_parse(env, n, 100, &flags, &len), 0);
        assert_int_equal(flags, 0);
        assert_int_equal(len, 3);
    }
    assert_int_equal(connect_envelope_parse(env, sizeof env, 100, &flags, &len), 8);
    assert_int_equal(connect_envelope_parse(NULL, 0, 100, &flags, &len), 0);
}

static void test_parse_exact_and_trailing(void **state)
{
    (void)state;
    uint8_t flags;
    uint32_t len;
    const uint8_t empty[] = {0, 0, 0, 0, 0};
    assert_int_equal(connect_envelope_parse(empty, 5, 0, &flags, &len), 5);
    assert_int_equal(len, 0);
    /* Two envelopes back to back: the first parse reports only the first. */
    const uint8_t two[] = {0, 0, 0, 0, 1, 'a', 2, 0, 0, 0, 2, '{', '}'};
    long r = connect_envelope_parse(two, sizeof two, 100, &flags, &len);
    assert_int_equal(r, 6);
    assert_int_equal(flags, 0);
    r = connect_envelope_parse(two + 6, sizeof two - 6, 100, &flags, &len);
    assert_int_equal(r, 7);
    assert_int_equal(flags, CONNECT_FLAG_END_STREAM);
    assert_int_equal(len, 2);
}

static void test_parse_oversized(void **state)
{
    (void)state;
    uint8_t flags;
    uint32_t len;
    const uint8_t at_max[] = {0, 0, 0, 0, 10};
    assert_int_equal(connect_envelope_parse(at_max, 5, 10, &flags, &len), 0); /* waits */
    const uint8_t over[] = {0, 0, 0, 0, 11};
    assert_int_equal(connect_envelope_parse(over, 5, 10, &flags, &len), -EMSGSIZE);
    assert_int_equal(len, 11);
    /* The largest length the header can carry, against the real limit. */
    const uint8_t huge[] = {0, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(connect_envelope_parse(huge, 5, CONNECT_MAX_MESSAGE, &flags, &len), -EMSGSIZE);
    assert_int_equal(len, 0xffffffffu);
    const uint8_t limit[] = {0, 0x00, 0x40, 0x00, 0x00};
    assert_int_equal(connect_envelope_parse(limit, 5, CONNECT_MAX_MESSAGE, &flags, &len), 0);
    const uint8_t limit1[] = {0, 0x00, 0x40, 0x00, 0x01};
    assert_int_equal(connect_envelope_parse(limit1, 5, CONNECT_MAX_MESSAGE, &flags, &len),
                     -EMSGSIZE);
}

static void test_parse_flags(void **state)
{
    (void)state;
    uint8_t flags;
    uint32_t len;
    for (unsigned f = 0; f < 256; f++) {
        const uint8_t env[] = {(uint8_t)f, 0, 0, 0, 0};
        long r = connect_envelope_parse(env, 5, 100, &flags, &len);
        if (f <= 3) {
            assert_int_equal(r, 5);
            assert_int_equal(flags, f);
        } else {
            assert_int_equal(r, -EINVAL);
        }
    }
}

static void test_add(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    connect_envelope_add(&b, 0, "{\"a\":1}", 7);
    connect_envelope_add(&b, 0, "", 0);
    assert_int_equal(b.len, 12 + 5);
    assert_memory_equal(b.data, "\x00\x00\x00\x00\x07{\"a\":1}", 12);
    uint8_t flags;
    uint32_t len;
    assert_int_equal(connect_envelope_parse(b.data, b.len, 100, &flags, &len), 12);
    assert_int_equal(connect_envelope_parse(b.data + 12, b.len - 12, 100, &flags, &len), 5);
    /* A length that needs all four header bytes. */
    buf_reset(&b);
    size_t big = 0x01020304;
    char *msg = calloc(1, big);
    assert_non_null(msg);
    connect_envelope_add(&b, 0, msg, big);
    free(msg);
    assert_memory_equal(b.data, "\x00\x01\x02\x03\x04", 5);
    assert_int_equal(connect_envelope_parse(b.data, b.len, big, &flags, &len), (long)big + 5);
    buf_fini(&b);
}

static json_t *end_payload(const buf_t *b)
{
    uint8_t flags;
    uint32_t len;
    long r = connect_envelope_parse(b->data, b->len, 1u << 20, &flags, &len);
    assert_int_equal(r, (long)b->len);
    assert_int_equal(flags, CONNECT_FLAG_END_STREAM);
    json_error_t je;
    json_t *j = json_loadb(b->data + 5, len, 0, &je);
    assert_non_null(j);
    return j;
}

static void test_end_stream(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    connect_end_stream_add(&b, 0, NULL);
    assert_int_equal(b.len, 7);
    assert_memory_equal(b.data, "\x02\x00\x00\x00\x02{}", 7);

    buf_reset(&b);
    err_t e = {0};
    err_set(&e, -ENOENT, "process \"x\"\n not found");
    connect_end_stream_add(&b, -ENOENT, &e);
    json_t *j = end_payload(&b);
    json_t *err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "not_found");
    assert_string_equal(json_string_value(json_object_get(err, "message")),
                        "process \"x\"\n not found");
    json_decref(j);

    /* Internal errors carry the public fallback, not the internal detail. */
    buf_reset(&b);
    err_set(&e, -EIO, "read /secret/path failed");
    connect_end_stream_add(&b, -EIO, &e);
    j = end_payload(&b);
    err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "internal");
    assert_string_equal(json_string_value(json_object_get(err, "message")), "internal error");
    json_decref(j);

    buf_reset(&b);
    connect_end_stream_add(&b, -ETIMEDOUT, NULL);
    j = end_payload(&b);
    err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "deadline_exceeded");
    assert_true(json_is_string(json_object_get(err, "message")));
    json_decref(j);
    buf_fini(&b);
}

static void test_error_json(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    err_t e = {0};
    err_set(&e, -EINVAL, "bad \\ \x01");
    connect_error_json(&b, -EINVAL, &e);
    json_error_t je;
    json_t *j = json_loadb(b.data, b.len, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "invalid_argument");
    assert_string_equal(json_string_value(json_object_get(j, "message")), "bad \\ \x01");
    json_decref(j);
    buf_fini(&b);
}

static void test_timeout(void **state)
{
    (void)state;
    assert_int_equal(connect_parse_timeout("0"), 0);
    assert_int_equal(connect_parse_timeout("1"), 1);
    assert_int_equal(connect_parse_timeout("60000"), 60000);
    assert_int_equal(connect_parse_timeout("0000000001"), 1);
    assert_true(connect_parse_timeout("9999999999") == 9999999999L);
    const char *bad[] = {"", "10000000000", "-1", "+1", " 1", "1 ", "1a", "0x10", "1.5", "１"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(connect_parse_timeout(bad[i]), -EINVAL);
}

static void test_now(void **state)
{
    (void)state;
    int64_t a = connect_now_ms();
    int64_t b = connect_now_ms();
    assert_true(a > 0);
    assert_true(b >= a);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_partial),
        cmocka_unit_test(test_parse_exact_and_trailing),
        cmocka_unit_test(test_parse_oversized),
        cmocka_unit_test(test_parse_flags),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_end_stream),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_now),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
