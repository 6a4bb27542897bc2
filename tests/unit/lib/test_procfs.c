/* procfs: start time (gone, zombie, alive), command line, uid. */
#include "procfs.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static char state_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

static void test_start_time(void **state)
{
    (void)state;
    uint64_t me = procfs_start_time(getpid());
    assert_true(me > 0);
    assert_true(procfs_start_time(getpid()) == me); /* stable */
    assert_true(procfs_start_time(1) > 0);
    assert_true(procfs_start_time(0) == 0);
    assert_true(procfs_start_time(-5) == 0);
    /* A child that exited but is not reaped yet is gone, and so is one reaped. */
    pid_t c = fork();
    if (c == 0)
        _exit(0);
    assert_true(c > 0);
    for (int i = 0; i < 500 && state_of(c) != 'Z'; i++)
        usleep(2000);
    assert_int_equal(state_of(c), 'Z');
    assert_true(procfs_start_time(c) == 0);
    waitpid(c, NULL, 0);
    assert_true(procfs_start_time(c) == 0);
    /* A sleeping child is there, with a start time no earlier than ours. */
    c = fork();
    if (c == 0) {
        pause();
        _exit(0);
    }
    uint64_t st = procfs_start_time(c);
    assert_true(st >= me);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
}

static void test_cmdline_uid(void **state)
{
    (void)state;
    char buf[4096];
    ssize_t n = procfs_cmdline(getpid(), buf, sizeof buf);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "test_procfs"));
    assert_int_equal(procfs_uid(getpid()), (long)getuid());
    assert_int_equal(procfs_cmdline(-5, buf, sizeof buf), -1);
    assert_int_equal(procfs_uid(-5), -1);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_time),
        cmocka_unit_test(test_cmdline_uid),
    };
    return cmocka_run_group_tests_name("procfs", tests, NULL, NULL);
}
