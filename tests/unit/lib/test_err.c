/* Unit tests of src/lib/err: setting, wrapping and truncating messages, and the one status table
 * from error codes to HTTP statuses and Connect codes. */
#include "err.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_set_and_clear(void **state)
{
    (void)state;
    err_t e = {0};
    assert_int_equal(err_set(&e, -ENOENT, "no file %s", "/x"), -ENOENT);
    assert_int_equal(e.code, -ENOENT);
    assert_string_equal(e.msg, "no file /x");
    err_clear(&e);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.msg, "");
    /* Every entry point accepts a NULL error and still returns the code. */
    assert_int_equal(err_set(NULL, -EINVAL, "x"), -EINVAL);
    assert_int_equal(err_wrap(NULL, "ctx"), -EIO);
    err_clear(NULL);
}

static void test_set_truncates(void **state)
{
    (void)state;
    err_t e = {0};
    char big[1000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    err_set(&e, -EINVAL, "%s", big);
    assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
}

static void test_wrap(void **state)
{
    (void)state;
    err_t e = {0};
    err_set(&e, -EACCES, "open: Permission denied");
    assert_int_equal(err_wrap(&e, "write %s", "/etc/x"), -EACCES);
    assert_string_equal(e.msg, "write /etc/x: open: Permission denied");
    assert_int_equal(err_wrap(&e, "upload"), -EACCES);
    assert_string_equal(e.msg, "upload: write /etc/x: open: Permission denied");
}

static void test_wrap_unset(void **state)
{
    (void)state;
    /* Wrapping an error nobody set turns it into an internal error with just the context. */
    err_t e = {0};
    assert_int_equal(err_wrap(&e, "ctx %d", 1), -EIO);
    assert_int_equal(e.code, -EIO);
    assert_string_equal(e.msg, "ctx 1");
}

static void test_wrap_truncates(void **state)
{
    (void)state;
    err_t e = {0};
    char big[ERR_MSG_MAX];
    memset(big, 'o', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    /* A full old message: the context stays in front and the old one is cut. */
    err_set(&e, -ENOENT, "%s", big);
    err_wrap(&e, "ctx");
    assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
    assert_memory_equal(e.msg, "ctx: ooo", 8);
    /* A context that fills the buffer by itself leaves no room for the old message. */
    char ctx[600];
    memset(ctx, 'c', sizeof ctx - 1);
    ctx[sizeof ctx - 1] = '\0';
    err_set(&e, -ENOENT, "old");
    err_wrap(&e, "%s", ctx);
    assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
    assert_null(strchr(e.msg, ':'));
    assert_int_equal(e.code, -ENOENT);
    /* Context of ERR_MSG_MAX - 3 bytes: ": " does not fit with anything after it. */
    char c2[ERR_MSG_MAX - 2];
    memset(c2, 'd', sizeof c2 - 1);
    c2[sizeof c2 - 1] = '\0';
    err_set(&e, -ENOENT, "old");
    err_wrap(&e, "%s", c2);
    assert_true(strlen(e.msg) <= ERR_MSG_MAX - 1);
    assert_memory_equal(e.msg, c2, sizeof c2 - 1);
}

static void test_errno(void **state)
{
    (void)state;
    err_t e = {0};
    errno = ENOENT;
    assert_int_equal(err_errno(&e, "open /nope"), -ENOENT);
    assert_string_equal(e.msg, "open /nope: No such file or directory");
    errno = 0;
    assert_int_equal(err_errno(&e, "weird"), -EIO);
    assert_int_equal(e.code, -EIO);
}

static void expect_status(int code, int http, const char *connect)
{
    err_status_t st = err_status(code);
    assert_int_equal(st.http, http);
    assert_string_equal(st.connect, connect);
    assert_non_null(st.fallback);
    assert_true(st.fallback[0] != '\0');
}

static void test_table(void **state)
{
    (void)state;
    expect_status(0, 200, "ok");
    expect_status(5, 200, "ok"); /* positive results are successes */
    expect_status(-EINVAL, 400, "invalid_argument");
    expect_status(-ENOENT, 404, "not_found");
    expect_status(-EEXIST, 409, "already_exists");
    expect_status(-EKEYREJECTED, 401, "unauthenticated");
    expect_status(-ENOKEY, 401, "unauthenticated");
    expect_status(-EACCES, 403, "permission_denied");
    expect_status(-ELOOP, 400, "failed_precondition");
    expect_status(-ENOSPC, 507, "resource_exhausted");
    expect_status(-EPROTO, 406, "invalid_argument");
    expect_status(-EMSGSIZE, 413, "resource_exhausted");
    expect_status(-ENOSYS, 501, "unimplemented");
    expect_status(-EIO, 500, "internal");
    expect_status(-ETIMEDOUT, 504, "deadline_exceeded");
    expect_status(-ECANCELED, 499, "canceled");
    expect_status(-EOPNOTSUPP, 405, "unimplemented");
    expect_status(-ENODEV, 404, "not_found");
    /* Anything the table does not know is an internal error. */
    expect_status(-EXDEV, 500, "internal");
    expect_status(-4095, 500, "internal");
}

static void test_public(void **state)
{
    (void)state;
    err_t e = {0};
    assert_string_equal(err_public(NULL, -ENOENT), "not found");
    assert_string_equal(err_public(&e, -ENOENT), "not found");
    err_set(&e, -ENOENT, "path /x does not exist");
    assert_string_equal(err_public(&e, -ENOENT), "path /x does not exist");
    /* Internal errors never show their own message: it may carry host detail. */
    err_set(&e, -EIO, "read /var/lib/secret: I/O error");
    assert_string_equal(err_public(&e, -EIO), "internal error");
    err_set(&e, -EXDEV, "cross-device link /a /b");
    assert_string_equal(err_public(&e, -EXDEV), "internal error");
}

static void test_from_connect(void **state)
{
    (void)state;
    assert_int_equal(err_from_connect("not_found"), -ENOENT);
    assert_int_equal(err_from_connect("invalid_argument"), -EINVAL);
    assert_int_equal(err_from_connect("already_exists"), -EEXIST);
    assert_int_equal(err_from_connect("deadline_exceeded"), -ETIMEDOUT);
    assert_int_equal(err_from_connect("unauthenticated"), -ENOKEY);
    assert_int_equal(err_from_connect("internal"), -EIO);
    assert_int_equal(err_from_connect("unknown"), -EIO);
    assert_int_equal(err_from_connect("bogus"), -EIO);
    assert_int_equal(err_from_connect(NULL), -EIO);
    /* "ok" is not an error code a client can receive. */
    assert_int_equal(err_from_connect("ok"), -EIO);
    /* Round trip: every Connect code maps back to an errno with the same Connect code. */
    static const char *codes[] = {"invalid_argument",   "failed_precondition",
                                  "out_of_range",       "unauthenticated",
                                  "permission_denied",  "not_found",
                                  "already_exists",     "aborted",
                                  "resource_exhausted", "canceled",
                                  "unimplemented",      "unavailable",
                                  "deadline_exceeded",  "internal"};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_string_equal(err_status(err_from_connect(codes[i])).connect, codes[i]);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_and_clear),  cmocka_unit_test(test_set_truncates),
        cmocka_unit_test(test_wrap),           cmocka_unit_test(test_wrap_unset),
        cmocka_unit_test(test_wrap_truncates), cmocka_unit_test(test_errno),
        cmocka_unit_test(test_table),          cmocka_unit_test(test_public),
        cmocka_unit_test(test_from_connect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
