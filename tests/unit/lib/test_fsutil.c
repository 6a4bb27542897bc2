/* fsutil: atomic replacement, mkdir -p, port files. */
#include "fsutil.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char dir[] = "/tmp/wrenn-fsutil-XXXXXX";

static char *slurp(const char *path)
{
    static char buf[256];
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static void test_write_atomic(void **state)
{
    (void)state;
    char p[300];
    snprintf(p, sizeof p, "%s/file", dir);
    err_t e = {0};
    assert_int_equal(fsutil_write_atomic(p, "one", 3, 0600, true, &e), 0);
    assert_string_equal(slurp(p), "one");
    assert_int_equal(fsutil_write_atomic(p, "second", 6, 0444, false, &e), 0);
    assert_string_equal(slurp(p), "second");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0444);
    /* No temporary file is left behind. */
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    assert_int_equal(access(tmp, F_OK), -1);
    /* A missing directory is a clear error. */
    snprintf(p, sizeof p, "%s/nope/file", dir);
    assert_int_equal(fsutil_write_atomic(p, "x", 1, 0600, false, &e), -ENOENT);
    assert_true(e.msg[0] != '\0');
}

static void test_fsync(void **state)
{
    (void)state;
    char p[300], l[320];
    snprintf(p, sizeof p, "%s/synced", dir);
    snprintf(l, sizeof l, "%s/synced-link", dir);
    err_t e = {0};
    assert_int_equal(fsutil_write_atomic(p, "x", 1, 0400, false, &e), 0);
    assert_int_equal(fsutil_fsync(p, &e), 0);   /* a read-only file */
    assert_int_equal(fsutil_fsync(dir, &e), 0); /* a directory */
    assert_int_equal(fsutil_fsync("/nonexistent/wrenn", &e), -ENOENT);
    assert_int_equal(e.code, -ENOENT);
    assert_int_equal(symlink(p, l), 0); /* symlinks are not followed */
    assert_int_equal(fsutil_fsync(l, &e), -ELOOP);
    unlink(l);
    unlink(p);
}

static void test_mkdir_p(void **state)
{
    (void)state;
    char p[300];
    snprintf(p, sizeof p, "%s/a/b/c", dir);
    err_t e = {0};
    assert_int_equal(fsutil_mkdir_p(p, 0755, &e), 0);
    assert_int_equal(fsutil_mkdir_p(p, 0755, &e), 0); /* existing is fine */
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    char f[320];
    snprintf(f, sizeof f, "%s/a/file", dir);
    assert_int_equal(fsutil_write_atomic(f, "", 0, 0600, false, &e), 0);
    snprintf(p, sizeof p, "%s/a/file/sub", dir);
    assert_true(fsutil_mkdir_p(p, 0755, &e) < 0);
    assert_int_equal(fsutil_mkdir_p(f, 0755, &e), -ENOTDIR);
}

static void test_port_file(void **state)
{
    (void)state;
    char p[300];
    snprintf(p, sizeof p, "%s/port", dir);
    assert_int_equal(fsutil_write_port_file(p, 49983, NULL), 0);
    assert_string_equal(slurp(p), "49983\n");
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "%s/a/b/c", dir);
    rmdir(cmd);
    snprintf(cmd, sizeof cmd, "%s/a/b", dir);
    rmdir(cmd);
    snprintf(cmd, sizeof cmd, "%s/a/file", dir);
    unlink(cmd);
    snprintf(cmd, sizeof cmd, "%s/a", dir);
    rmdir(cmd);
    snprintf(cmd, sizeof cmd, "%s/file", dir);
    unlink(cmd);
    snprintf(cmd, sizeof cmd, "%s/port", dir);
    unlink(cmd);
    rmdir(dir);
    return 0;
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_atomic),
        cmocka_unit_test(test_fsync),
        cmocka_unit_test(test_mkdir_p),
        cmocka_unit_test(test_port_file),
    };
    return cmocka_run_group_tests_name("fsutil", tests, setup, teardown);
}
