/* Unit tests of src/lib/cfg: flags in every accepted form, WRENN_<PREFIX>_* environment
 * variables, precedence, unknown names, integer bounds and booleans. */
#include "cfg.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The environment prefix is unique to this test so nothing inherited can interfere. */
#define PFX "UTCFG"

static const char *addr;
static long port;
static bool verbose;
static long level;
static const char *run_dir;

static const cfg_opt_t opts[] = {
    {"addr", CFG_STR, &addr, 0, 0, "listen address"},
    {"port", CFG_INT, &port, 0, 65535, "listen port"},
    {"verbose", CFG_BOOL, &verbose, 0, 0, "more logs"},
    {"level", CFG_INT, &level, 0, 0, "unbounded"},
    {"run-dir", CFG_STR, &run_dir, 0, 0, "state"},
    {0},
};

static int reset(void **state)
{
    (void)state;
    addr = "default";
    port = 49983;
    verbose = false;
    level = 0;
    run_dir = NULL;
    unsetenv("WRENN_" PFX "_ADDR");
    unsetenv("WRENN_" PFX "_PORT");
    unsetenv("WRENN_" PFX "_VERBOSE");
    unsetenv("WRENN_" PFX "_RUN_DIR");
    unsetenv("WRENN_" PFX "_BOGUS");
    unsetenv("WRENN_" PFX "X_PORT");
    unsetenv("WRENN_" PFX);
    return 0;
}

static int parse(int argc, char **argv, int *first_pos, err_t *e)
{
    return cfg_parse(opts, PFX, argc, argv, first_pos, e);
}

static void test_defaults(void **state)
{
    (void)state;
    char *argv[] = {"prog", NULL};
    int pos = -1;
    err_t e = {0};
    assert_int_equal(parse(1, argv, &pos, &e), 0);
    assert_int_equal(pos, 1);
    assert_string_equal(addr, "default");
    assert_int_equal(port, 49983);
    assert_false(verbose);
    assert_int_equal(parse(1, argv, NULL, &e), 0);
}

static void test_flag_forms(void **state)
{
    (void)state;
    char *argv[] = {"prog",   "--addr", "127.0.0.1",      "--port=8080", "-verbose",
                    "-level", "-5",     "--run-dir=/x=y", NULL};
    int pos = 0;
    err_t e = {0};
    assert_int_equal(parse(8, argv, &pos, &e), 0);
    assert_string_equal(addr, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_true(verbose);
    assert_int_equal(level, -5);          /* a value may start with a dash */
    assert_string_equal(run_dir, "/x=y"); /* only the first '=' splits */
    assert_int_equal(pos, 8);
}

static void test_bools(void **state)
{
    (void)state;
    const char *yes[] = {"--verbose", "--verbose=true", "--verbose=1", "--verbose=yes"};
    const char *no[] = {"--verbose=false", "--verbose=0", "--verbose=no"};
    err_t e = {0};
    for (size_t i = 0; i < 4; i++) {
        char *argv[] = {"prog", (char *)yes[i], NULL};
        verbose = false;
        assert_int_equal(parse(2, argv, NULL, &e), 0);
        assert_true(verbose);
    }
    for (size_t i = 0; i < 3; i++) {
        char *argv[] = {"prog", (char *)no[i], NULL};
        verbose = true;
        assert_int_equal(parse(2, argv, NULL, &e), 0);
        assert_false(verbose);
    }
    char *bad[] = {"prog", "--verbose=maybe", NULL};
    assert_int_equal(parse(2, bad, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "verbose"));
    /* A bare boolean flag does not swallow the next argument. */
    char *argv[] = {"prog", "--verbose", "false", NULL};
    int pos = 0;
    verbose = false;
    assert_int_equal(parse(3, argv, &pos, &e), 0);
    assert_true(verbose);
    assert_int_equal(pos, 2);
}

static void test_positional(void **state)
{
    (void)state;
    err_t e = {0};
    int pos = 0;
    char *a1[] = {"prog", "--port", "1", "cmd", "--addr", "x", NULL};
    assert_int_equal(parse(6, a1, &pos, &e), 0);
    assert_int_equal(pos, 3); /* flags after the first positional are left alone */
    assert_string_equal(addr, "default");
    char *a2[] = {"prog", "--", "--port", NULL};
    port = 49983;
    assert_int_equal(parse(3, a2, &pos, &e), 0);
    assert_int_equal(pos, 2);
    assert_int_equal(port, 49983);
    char *a3[] = {"prog", "-", NULL}; /* a lone dash is positional (stdin by convention) */
    assert_int_equal(parse(2, a3, &pos, &e), 0);
    assert_int_equal(pos, 1);
}

static void test_errors(void **state)
{
    (void)state;
    err_t e = {0};
    char *a1[] = {"prog", "--nope", NULL};
    assert_int_equal(parse(2, a1, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "--nope"));
    char *a2[] = {"prog", "--port", NULL};
    assert_int_equal(parse(2, a2, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "port"));
    char *a3[] = {"prog", "--port=abc", NULL};
    assert_int_equal(parse(2, a3, NULL, &e), -EINVAL);
    char *a4[] = {"prog", "--port=", NULL};
    assert_int_equal(parse(2, a4, NULL, &e), -EINVAL);
    char *a5[] = {"prog", "--port=12x", NULL};
    assert_int_equal(parse(2, a5, NULL, &e), -EINVAL);
    char *a6[] = {"prog", "--port=99999999999999999999999", NULL};
    assert_int_equal(parse(2, a6, NULL, &e), -EINVAL);
    /* Prefixes of a known name are not that name. */
    char *a7[] = {"prog", "--por=1", NULL};
    assert_int_equal(parse(2, a7, NULL, &e), -EINVAL);
    char *a8[] = {"prog", "--portx=1", NULL};
    assert_int_equal(parse(2, a8, NULL, &e), -EINVAL);
    char *a9[] = {"prog", "--run_dir=/x", NULL};
    assert_int_equal(parse(2, a9, NULL, &e), -EINVAL);
}

static void test_bounds(void **state)
{
    (void)state;
    err_t e = {0};
    char *ok0[] = {"prog", "--port=0", NULL};
    assert_int_equal(parse(2, ok0, NULL, &e), 0);
    assert_int_equal(port, 0);
    char *okmax[] = {"prog", "--port=65535", NULL};
    assert_int_equal(parse(2, okmax, NULL, &e), 0);
    assert_int_equal(port, 65535);
    char *over[] = {"prog", "--port=65536", NULL};
    port = 1;
    assert_int_equal(parse(2, over, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "between 0 and 65535"));
    assert_int_equal(port, 1);
    char *under[] = {"prog", "--port=-1", NULL};
    assert_int_equal(parse(2, under, NULL, &e), -EINVAL);
    /* min == max == 0 means unbounded. */
    char *big[] = {"prog", "--level=-1000000", NULL};
    assert_int_equal(parse(2, big, NULL, &e), 0);
    assert_int_equal(level, -1000000);
}

static void test_env(void **state)
{
    (void)state;
    err_t e = {0};
    char *argv[] = {"prog", NULL};
    setenv("WRENN_" PFX "_ADDR", "10.0.0.1", 1);
    setenv("WRENN_" PFX "_PORT", "81", 1);
    setenv("WRENN_" PFX "_VERBOSE", "true", 1);
    setenv("WRENN_" PFX "_RUN_DIR", "/run/w", 1); /* dashes become underscores */
    assert_int_equal(parse(1, argv, NULL, &e), 0);
    assert_string_equal(addr, "10.0.0.1");
    assert_int_equal(port, 81);
    assert_true(verbose);
    assert_string_equal(run_dir, "/run/w");
    /* A flag wins over the environment. */
    char *argv2[] = {"prog", "--port", "82", "--verbose=false", NULL};
    assert_int_equal(parse(4, argv2, NULL, &e), 0);
    assert_int_equal(port, 82);
    assert_false(verbose);
    /* An empty boolean from the environment is not "true". */
    setenv("WRENN_" PFX "_VERBOSE", "", 1);
    assert_int_equal(parse(1, argv, NULL, &e), -EINVAL);
}

static void test_env_errors(void **state)
{
    (void)state;
    err_t e = {0};
    char *argv[] = {"prog", NULL};
    setenv("WRENN_" PFX "_BOGUS", "1", 1);
    assert_int_equal(parse(1, argv, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "WRENN_" PFX "_BOGUS"));
    unsetenv("WRENN_" PFX "_BOGUS");
    setenv("WRENN_" PFX "_PORT", "70000", 1);
    assert_int_equal(parse(1, argv, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "environment"));
    setenv("WRENN_" PFX "_PORT", "x", 1);
    assert_int_equal(parse(1, argv, NULL, &e), -EINVAL);
    unsetenv("WRENN_" PFX "_PORT");
    /* Variables of another program, or the bare prefix, are none of our business. */
    setenv("WRENN_" PFX "X_PORT", "1", 1);
    setenv("WRENN_" PFX, "1", 1);
    setenv("WRENN_OTHER_PORT", "1", 1);
    assert_int_equal(parse(1, argv, NULL, &e), 0);
    assert_int_equal(port, 49983);
    unsetenv("WRENN_OTHER_PORT");
}

static void test_usage(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cfg_usage(f, "prog [options]", opts, PFX);
    fclose(f);
    assert_non_null(strstr(text, "usage: prog [options]"));
    assert_non_null(strstr(text, "--run-dir"));
    assert_non_null(strstr(text, "WRENN_" PFX "_RUN_DIR"));
    free(text);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, reset),
        cmocka_unit_test_setup(test_flag_forms, reset),
        cmocka_unit_test_setup(test_bools, reset),
        cmocka_unit_test_setup(test_positional, reset),
        cmocka_unit_test_setup(test_errors, reset),
        cmocka_unit_test_setup(test_bounds, reset),
        cmocka_unit_test_setup(test_env, reset),
        cmocka_unit_test_setup(test_env_errors, reset),
        cmocka_unit_test_setup(test_usage, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
