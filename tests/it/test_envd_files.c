/* envd files integration tests (being written). */
#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_starts(void **state)
{
    (void)state;
    th_envd_t e;
    assert_int_equal(th_envd_start(&e, NULL), 0);
    assert_true(th_envd_alive(&e));
    th_envd_stop(&e);
}

int main(void)
{
    th_init();
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_starts)};
    return cmocka_run_group_tests_name("envd_files", tests, NULL, NULL);
}
