/* Unit tests of src/lib/log: levels, the line format, truncation of long lines, errno kept, and
 * one line per event even when a value holds control characters. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

static int saved_stderr = -1;
static int capture_fd = -1;

/* Point stderr at a fresh memory file. */
static void capture_begin(void)
{
    capture_fd = memfd_create("log", MFD_CLOEXEC);
    assert_true(capture_fd >= 0);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_int_equal(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Restore stderr and return what was written (malloc'd, NUL-terminated). */
static char *capture_end(size_t *len)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    off_t n = lseek(capture_fd, 0, SEEK_END);
    char *out = malloc((size_t)n + 1);
    assert_int_equal(pread(capture_fd, out, (size_t)n, 0), n);
    out[n] = '\0';
    close(capture_fd);
    if (len)
        *len = (size_t)n;
    return out;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_levels(void **state)
{
    (void)state;
    assert_int_equal(log_parse_level("debug"), LOG_DEBUG);
    assert_int_equal(log_parse_level("info"), LOG_INFO);
    assert_int_equal(log_parse_level("warn"), LOG_WARN);
    assert_int_equal(log_parse_level("error"), LOG_ERROR);
    assert_int_equal(log_parse_level("off"), LOG_OFF);
    assert_int_equal(log_parse_level("INFO"), -EINVAL);
    assert_int_equal(log_parse_level(""), -EINVAL);

    log_init("unit", LOG_WARN);
    assert_false(log_enabled(LOG_INFO));
    assert_true(log_enabled(LOG_WARN));
    assert_true(log_enabled(LOG_ERROR));
    capture_begin();
    log_info("skipped", "a=%d", 1);
    log_warn("shown", "a=%d", 2);
    log_error("also", NULL);
    char *out = capture_end(NULL);
    assert_null(strstr(out, "skipped"));
    assert_non_null(strstr(out, "lvl=warn prog=unit msg=shown a=2\n"));
    assert_non_null(strstr(out, "lvl=error prog=unit msg=also\n"));
    assert_int_equal(count_lines(out), 2);
    free(out);

    log_init("unit", LOG_OFF);
    assert_false(log_enabled(LOG_ERROR));
    assert_false(log_enabled(LOG_OFF));
    capture_begin();
    log_error("nothing", NULL);
    out = capture_end(NULL);
    assert_string_equal(out, "");
    free(out);
}

static void test_format(void **state)
{
    (void)state;
    log_init("wrenn-test", LOG_DEBUG);
    capture_begin();
    log_debug("op.done", "dur_ms=%d err=%s", 12, "none");
    char *out = capture_end(NULL);
    /* ts=YYYY-MM-DDTHH:MM:SS.mmmZ first, then the fixed keys. */
    assert_memory_equal(out, "ts=", 3);
    assert_int_equal(out[13], 'T');
    assert_int_equal(out[26], 'Z');
    assert_non_null(strstr(out, " lvl=debug prog=wrenn-test msg=op.done dur_ms=12 err=none\n"));
    free(out);
}

static void test_errno_kept(void **state)
{
    (void)state;
    log_init("unit", LOG_INFO);
    capture_begin();
    errno = EXDEV;
    log_info("x", "y=%s", "z");
    assert_int_equal(errno, EXDEV);
    free(capture_end(NULL));
}

static void test_one_line_per_event(void **state)
{
    (void)state;
    log_init("unit", LOG_INFO);
    capture_begin();
    log_info("http.no_route", "path=%s", "/a\nts=forged lvl=error msg=evil\r\x1b[2J");
    char *out = capture_end(NULL);
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "path=/a?ts=forged lvl=error msg=evil??[2J\n"));
    free(out);
}

static void test_long_line(void **state)
{
    (void)state;
    log_init("unit", LOG_INFO);
    char big[4000];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    capture_begin();
    log_info("big", "k=%s", big);
    log_info("after", NULL);
    size_t len = 0;
    char *out = capture_end(&len);
    /* Cut to the line buffer, still ended by a newline, and the next event on its own line. */
    assert_int_equal(count_lines(out), 2);
    char *nl = strchr(out, '\n');
    assert_true(nl - out <= 1023);
    assert_int_equal(nl[-1], 'v');
    assert_non_null(strstr(nl + 1, "msg=after\n"));
    free(out);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_levels),     cmocka_unit_test(test_format),
        cmocka_unit_test(test_errno_kept), cmocka_unit_test(test_one_line_per_event),
        cmocka_unit_test(test_long_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
