/* Unit tests of src/lib/pjson: the proto3 JSON readers (camelCase and snake_case names, null as
 * absent, int64 as number or string, ranges, bytes, enums) and the writers (string quoting,
 * int64 as string, timestamps). */
#include "pjson.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static json_t *parse(const char *s)
{
    json_t *j = NULL;
    err_t e = {0};
    assert_int_equal(pjson_parse(s, strlen(s), &j, &e), 0);
    assert_non_null(j);
    return j;
}

static void test_parse(void **state)
{
    (void)state;
    json_t *j = NULL;
    err_t e = {0};
    assert_int_equal(pjson_parse("", 0, &j, &e), 0);
    assert_true(json_is_object(j));
    assert_int_equal(json_object_size(j), 0);
    json_decref(j);

    const char *bad[] = {"[]", "1", "\"s\"", "null", "{", "{\"a\":}", "{} {}", "{\"a\":1,}",
                         /* beyond int64 as a JSON number: jansson refuses the whole body */
                         "{\"a\":9223372036854775808}",
                         /* invalid UTF-8 in a string */
                         "{\"a\":\"\xff\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear(&e);
        j = (json_t *)1;
        assert_int_equal(pjson_parse(bad[i], strlen(bad[i]), &j, &e), -EINVAL);
        assert_null(j);
        assert_int_equal(e.code, -EINVAL);
        assert_true(e.msg[0] != '\0');
    }
    /* The length is honoured: trailing bytes past len are not looked at. */
    assert_int_equal(pjson_parse("{}garbage", 2, &j, &e), 0);
    json_decref(j);
}

static void test_names(void **state)
{
    (void)state;
    json_t *j = parse("{\"exitCode\":1,\"exit_status\":\"x\",\"plain\":true,\"aB\":3}");
    assert_non_null(pjson_get(j, "exitCode"));
    assert_non_null(pjson_get(j, "exitStatus")); /* found by its snake_case name */
    assert_non_null(pjson_get(j, "plain"));
    assert_non_null(pjson_get(j, "aB"));
    assert_null(pjson_get(j, "exit_code")); /* callers always ask by the camelCase name */
    assert_null(pjson_get(j, "missing"));
    assert_null(pjson_get(NULL, "x"));
    json_decref(j);
    /* When both spellings are present the camelCase one wins. */
    j = parse("{\"watcher_id\":\"snake\",\"watcherId\":\"camel\"}");
    const char *s = NULL;
    err_t e = {0};
    assert_int_equal(pjson_str(j, "watcherId", &s, &e), 0);
    assert_string_equal(s, "camel");
    json_decref(j);
    j = parse("{\"include_entry\":true,\"symlink_target\":\"t\"}");
    bool b = false, present = false;
    assert_int_equal(pjson_bool(j, "includeEntry", &b, &present, &e), 0);
    assert_true(present && b);
    assert_int_equal(pjson_str(j, "symlinkTarget", &s, &e), 0);
    assert_string_equal(s, "t");
    json_decref(j);
}

static void test_null_is_absent(void **state)
{
    (void)state;
    json_t *j = parse("{\"s\":null,\"b\":null,\"i\":null,\"u\":null,\"o\":null,\"y\":null,"
                      "\"e\":null}");
    err_t e = {0};
    const char *s = "keep";
    bool b = true, p = true;
    int64_t i = 5;
    uint32_t u = 6;
    json_t *o = (json_t *)1;
    int en = 7;
    buf_t y;
    buf_init(&y);
    assert_int_equal(pjson_str(j, "s", &s, &e), 0);
    assert_string_equal(s, "keep");
    assert_int_equal(pjson_bool(j, "b", &b, &p, &e), 0);
    assert_true(b);
    assert_false(p);
    p = true;
    assert_int_equal(pjson_i64(j, "i", &i, &p, &e), 0);
    assert_int_equal(i, 5);
    assert_false(p);
    p = true;
    assert_int_equal(pjson_u32(j, "u", &u, &p, &e), 0);
    assert_int_equal(u, 6);
    assert_false(p);
    assert_int_equal(pjson_obj(j, "o", &o, &e), 0);
    assert_null(o);
    p = true;
    assert_int_equal(pjson_bytes(j, "y", &y, &p, &e), 0);
    assert_false(p);
    assert_int_equal(y.len, 0);
    static const char *const names[] = {"A"};
    static const int values[] = {1};
    p = true;
    assert_int_equal(pjson_enum(j, "e", names, values, 1, &en, &p, &e), 0);
    assert_int_equal(en, 7);
    assert_false(p);
    /* present may be NULL. */
    assert_int_equal(pjson_bool(j, "b", &b, NULL, &e), 0);
    assert_int_equal(pjson_i64(j, "i", &i, NULL, &e), 0);
    buf_fini(&y);
    json_decref(j);
}

static void test_wrong_types(void **state)
{
    (void)state;
    json_t *j = parse("{\"s\":1,\"b\":\"true\",\"i\":true,\"o\":[],\"y\":5,\"e\":true}");
    err_t e = {0};
    const char *s = NULL;
    bool b = false;
    int64_t i = 0;
    json_t *o = NULL;
    buf_t y;
    buf_init(&y);
    int en = 0;
    assert_int_equal(pjson_str(j, "s", &s, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "s"));
    assert_int_equal(pjson_bool(j, "b", &b, NULL, &e), -EINVAL);
    assert_int_equal(pjson_i64(j, "i", &i, NULL, &e), -EINVAL);
    assert_int_equal(pjson_obj(j, "o", &o, &e), -EINVAL);
    assert_null(o);
    assert_int_equal(pjson_bytes(j, "y", &y, NULL, &e), -EINVAL);
    static const char *const names[] = {"A"};
    static const int values[] = {1};
    assert_int_equal(pjson_enum(j, "e", names, values, 1, &en, NULL, &e), -EINVAL);
    buf_fini(&y);
    json_decref(j);
    /* The message names the field as the caller asked for it. */
    j = parse("{\"exit_code\":\"x\"}");
    err_clear(&e);
    assert_int_equal(pjson_i64(j, "exitCode", &i, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "exitCode"));
    json_decref(j);
}

static int64_t i64_ok(const char *json)
{
    json_t *j = parse(json);
    err_t e = {0};
    int64_t v = 0;
    bool p = false;
    assert_int_equal(pjson_i64(j, "v", &v, &p, &e), 0);
    assert_true(p);
    json_decref(j);
    return v;
}

static void i64_bad(const char *json)
{
    json_t *j = parse(json);
    err_t e = {0};
    int64_t v = 99;
    bool p = true;
    assert_int_equal(pjson_i64(j, "v", &v, &p, &e), -EINVAL);
    assert_false(p);
    json_decref(j);
}

static void test_i64(void **state)
{
    (void)state;
    assert_int_equal(i64_ok("{\"v\":11}"), 11);
    assert_int_equal(i64_ok("{\"v\":\"11\"}"), 11);
    assert_int_equal(i64_ok("{\"v\":-3}"), -3);
    assert_int_equal(i64_ok("{\"v\":\"-3\"}"), -3);
    assert_true(i64_ok("{\"v\":\"9223372036854775807\"}") == INT64_MAX);
    assert_true(i64_ok("{\"v\":\"-9223372036854775808\"}") == INT64_MIN);
    assert_true(i64_ok("{\"v\":9223372036854775807}") == INT64_MAX);
    assert_int_equal(i64_ok("{\"v\":1.0}"), 1); /* an integral real is an integer */
    assert_int_equal(i64_ok("{\"v\":1e3}"), 1000);
    assert_true(i64_ok("{\"v\":-9.223372036854775808e18}") == INT64_MIN);
    i64_bad("{\"v\":\"9223372036854775808\"}"); /* out of range as a string */
    i64_bad("{\"v\":\"-9223372036854775809\"}");
    i64_bad("{\"v\":9.3e18}"); /* out of range as a real */
    i64_bad("{\"v\":9.223372036854775808e18}");
    i64_bad("{\"v\":-1e30}");
    i64_bad("{\"v\":1e300}");
    i64_bad("{\"v\":1.5}");
    i64_bad("{\"v\":\"1.5\"}");
    i64_bad("{\"v\":\"\"}");
    i64_bad("{\"v\":\"12abc\"}");
    i64_bad("{\"v\":\"0x10\"}");
    i64_bad("{\"v\":[]}");
    i64_bad("{\"v\":{}}");
}

static void test_u32(void **state)
{
    (void)state;
    json_t *j = parse("{\"a\":0,\"b\":4294967295,\"c\":\"4294967295\",\"d\":4294967296,"
                      "\"e\":-1,\"f\":\"-1\",\"g\":\"x\"}");
    err_t e = {0};
    uint32_t u = 7;
    bool p = false;
    assert_int_equal(pjson_u32(j, "a", &u, &p, &e), 0);
    assert_true(p);
    assert_int_equal(u, 0);
    assert_int_equal(pjson_u32(j, "b", &u, &p, &e), 0);
    assert_int_equal(u, UINT32_MAX);
    u = 0;
    assert_int_equal(pjson_u32(j, "c", &u, &p, &e), 0);
    assert_int_equal(u, UINT32_MAX);
    const char *bad[] = {"d", "e", "f", "g"};
    for (size_t i = 0; i < 4; i++) {
        u = 9;
        p = true;
        assert_int_equal(pjson_u32(j, bad[i], &u, &p, &e), -EINVAL);
        assert_int_equal(u, 9);
        assert_false(p);
    }
    json_decref(j);
}

static void test_obj(void **state)
{
    (void)state;
    json_t *j = parse("{\"process\":{\"cmd\":\"true\"},\"pty\":{\"size\":{\"cols\":80}}}");
    err_t e = {0};
    json_t *o = NULL;
    assert_int_equal(pjson_obj(j, "process", &o, &e), 0);
    const char *cmd = NULL;
    assert_int_equal(pjson_str(o, "cmd", &cmd, &e), 0);
    assert_string_equal(cmd, "true");
    json_t *pty = NULL, *size = NULL;
    assert_int_equal(pjson_obj(j, "pty", &pty, &e), 0);
    assert_int_equal(pjson_obj(pty, "size", &size, &e), 0);
    uint32_t cols = 0;
    assert_int_equal(pjson_u32(size, "cols", &cols, NULL, &e), 0);
    assert_int_equal(cols, 80);
    assert_int_equal(pjson_obj(j, "absent", &o, &e), 0);
    assert_null(o);
    json_decref(j);
}

static void test_bytes(void **state)
{
    (void)state;
    json_t *j = parse("{\"std\":\"aGk/Pz8=\",\"url\":\"aGk_Pz8\",\"empty\":\"\","
                      "\"bad\":\"a!==\",\"short\":\"a\"}");
    err_t e = {0};
    buf_t b;
    buf_init(&b);
    bool p = false;
    assert_int_equal(pjson_bytes(j, "std", &b, &p, &e), 0);
    assert_true(p);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "hi???", 5);
    assert_int_equal(pjson_bytes(j, "url", &b, &p, &e), 0); /* reset first, not appended */
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "hi???", 5);
    assert_int_equal(pjson_bytes(j, "empty", &b, &p, &e), 0);
    assert_true(p);
    assert_int_equal(b.len, 0);
    assert_int_equal(pjson_bytes(j, "bad", &b, &p, &e), -EINVAL);
    assert_false(p);
    assert_non_null(strstr(e.msg, "bad"));
    assert_int_equal(pjson_bytes(j, "short", &b, &p, &e), -EINVAL);
    /* Binary content including NUL bytes. */
    json_decref(j);
    j = parse("{\"stdin\":\"AAEC/w==\"}");
    assert_int_equal(pjson_bytes(j, "stdin", &b, &p, &e), 0);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "\x00\x01\x02\xff", 4);
    json_decref(j);
    buf_fini(&b);
}

static void test_enum(void **state)
{
    (void)state;
    static const char *const names[] = {"SIGNAL_UNSPECIFIED", "SIGNAL_SIGTERM", "SIGNAL_SIGKILL"};
    static const int values[] = {0, 15, 9};
    json_t *j = parse("{\"a\":\"SIGNAL_SIGKILL\",\"b\":15,\"c\":\"SIGNAL_NOPE\",\"d\":3,"
                      "\"e\":\"9\",\"f\":9.5,\"g\":0,\"h\":\"signal_sigkill\"}");
    err_t e = {0};
    int v = -1;
    bool p = false;
    assert_int_equal(pjson_enum(j, "a", names, values, 3, &v, &p, &e), 0);
    assert_true(p);
    assert_int_equal(v, 9);
    assert_int_equal(pjson_enum(j, "b", names, values, 3, &v, &p, &e), 0);
    assert_int_equal(v, 15);
    assert_int_equal(pjson_enum(j, "g", names, values, 3, &v, &p, &e), 0);
    assert_int_equal(v, 0);
    const char *bad[] = {"c", "d", "e", "f", "h"};
    for (size_t i = 0; i < 5; i++) {
        v = -1;
        p = true;
        assert_int_equal(pjson_enum(j, bad[i], names, values, 3, &v, &p, &e), -EINVAL);
        assert_int_equal(v, -1);
        assert_false(p);
    }
    json_decref(j);
}

static char *quote(const char *s, size_t n)
{
    buf_t b;
    buf_init(&b);
    pjson_quote(&b, s, n);
    return buf_steal(&b, NULL);
}

/* pjson_quote's output must be a JSON string that a strict parser accepts and reads back. */
static void quote_parses_to(const char *s, size_t n, const char *want, size_t want_len)
{
    char *q = quote(s, n);
    json_error_t je;
    json_t *v = json_loads(q, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v)
        fail_msg("quote output %s is not JSON: %s", q, je.text);
    assert_true(json_is_string(v));
    assert_int_equal(json_string_length(v), want_len);
    assert_memory_equal(json_string_value(v), want, want_len);
    json_decref(v);
    free(q);
}

static void test_quote(void **state)
{
    (void)state;
    char *q = quote("plain", 5);
    assert_string_equal(q, "\"plain\"");
    free(q);
    q = quote("a\"b\\c\n\r\t", 8);
    assert_string_equal(q, "\"a\\\"b\\\\c\\n\\r\\t\"");
    free(q);
    q = quote("\x01\x1f", 2);
    assert_string_equal(q, "\"\\u0001\\u001f\"");
    free(q);
    q = quote("a\0b", 3); /* an embedded NUL is escaped, not a terminator */
    assert_string_equal(q, "\"a\\u0000b\"");
    free(q);
    q = quote("", 0);
    assert_string_equal(q, "\"\"");
    free(q);
    quote_parses_to("x\x7f\x1b[0m", 6, "x\x7f\x1b[0m", 6);
    /* Valid UTF-8 passes through as it is. */
    const char *utf8 = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
    q = quote(utf8, strlen(utf8));
    assert_int_equal(strlen(q), strlen(utf8) + 2);
    assert_memory_equal(q + 1, utf8, strlen(utf8));
    free(q);
    quote_parses_to(utf8, strlen(utf8), utf8, strlen(utf8));
}

static void test_quote_invalid_utf8(void **state)
{
    (void)state;
    /* Bytes that are not UTF-8 (a file name, a message with a client's path in it) must still
     * give valid JSON: each bad byte becomes U+FFFD, as Go's encoding/json does. */
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        {"\xff", "\xef\xbf\xbd"},
        {"a\x80z", "a\xef\xbf\xbdz"},
        {"\xc3", "\xef\xbf\xbd"}, /* truncated two-byte sequence */
        {"\xc3(", "\xef\xbf\xbd("},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong '/' */
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* overlong */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"\xf0\x9f\x98", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* truncated emoji */
        {"ok\xe2\x82", "ok\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *q = quote(cases[i].in, strlen(cases[i].in));
        json_error_t je;
        json_t *v = json_loads(q, JSON_DECODE_ANY, &je);
        if (!v)
            fail_msg("case %zu: quote output is not valid JSON: %s", i, je.text);
        assert_string_equal(json_string_value(v), cases[i].want);
        json_decref(v);
        free(q);
    }
}

static void test_writers(void **state)
{
    (void)state;
    json_t *v = pjson_i64_value(INT64_MAX);
    assert_string_equal(json_string_value(v), "9223372036854775807");
    json_decref(v);
    v = pjson_i64_value(INT64_MIN);
    assert_string_equal(json_string_value(v), "-9223372036854775808");
    json_decref(v);
    v = pjson_i64_value(0);
    assert_string_equal(json_string_value(v), "0");
    json_decref(v);

    struct {
        int64_t sec;
        long nsec;
        const char *want;
    } ts[] = {
        {0, 0, "1970-01-01T00:00:00Z"},
        {1700000000, 0, "2023-11-14T22:13:20Z"},
        {1700000000, 500000000, "2023-11-14T22:13:20.500Z"},
        {1700000000, 1000, "2023-11-14T22:13:20.000001Z"},
        {1700000000, 120000, "2023-11-14T22:13:20.000120Z"},
        {1700000000, 1, "2023-11-14T22:13:20.000000001Z"},
        {1700000000, 999999999, "2023-11-14T22:13:20.999999999Z"},
        {-1, 0, "1969-12-31T23:59:59Z"},
        {253402300799, 0, "9999-12-31T23:59:59Z"},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        v = pjson_timestamp(ts[i].sec, ts[i].nsec);
        assert_non_null(v);
        assert_string_equal(json_string_value(v), ts[i].want);
        json_decref(v);
    }

    buf_t b;
    buf_init(&b);
    buf_adds(&b, "x");
    json_t *o = json_pack("{s:i,s:[s,b]}", "a", 1, "b", "c", 1);
    assert_int_equal(pjson_dump(o, &b), 0);
    assert_string_equal(b.data, "x{\"a\":1,\"b\":[\"c\",true]}");
    json_decref(o);
    buf_reset(&b);
    o = json_string("s");
    pjson_dump(o, &b); /* any value, not only objects */
    assert_string_equal(b.data, "\"s\"");
    json_decref(o);
    buf_fini(&b);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_null_is_absent),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_i64),
        cmocka_unit_test(test_u32),
        cmocka_unit_test(test_obj),
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_enum),
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_quote_invalid_utf8),
        cmocka_unit_test(test_writers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
