/* Unit tests of src/lib/buf: growable buffers (growth, printf, consume, steal) and arenas
 * (alignment, chunk growth, allocations bigger than a chunk). */
#include "buf.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_empty(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    buf_consume(&b, 0);
    buf_consume(&b, 10);
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    buf_fini(&b);
    buf_fini(&b); /* fini leaves an empty buffer that can be finished again */
    assert_null(b.data);
}

static void test_add_and_grow(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    buf_adds(&b, "hello");
    buf_addc(&b, ' ');
    buf_add(&b, "world!!", 5);
    assert_int_equal(b.len, 11);
    assert_string_equal(b.data, "hello world");
    buf_add(&b, NULL, 0); /* adding nothing is fine, even from NULL */
    assert_int_equal(b.len, 11);
    /* Grow well past the first allocation, one byte at a time; contents stay intact and the
     * buffer stays NUL-terminated. */
    for (int i = 0; i < 100000; i++)
        buf_addc(&b, (char)('a' + i % 26));
    assert_int_equal(b.len, 100011);
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "hello world", 11);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(b.data[11 + i], 'a' + i % 26);
    buf_fini(&b);
}

static void test_binary(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    const char bin[] = {0, 1, 2, 0, (char)0xff};
    buf_add(&b, bin, sizeof bin);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, bin, 5);
    buf_fini(&b);
}

static void test_reserve(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    buf_reserve(&b, 1000);
    assert_true(b.cap >= 1001);
    assert_int_equal(b.len, 0);
    char *before = b.data;
    size_t cap = b.cap;
    buf_add(&b, "x", 1);
    for (int i = 0; i < 998; i++)
        buf_addc(&b, 'y');
    /* No reallocation while the reservation lasts. */
    assert_ptr_equal(b.data, before);
    assert_int_equal(b.cap, cap);
    buf_fini(&b);
}

static void test_printf(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%d-%s", 42, "x");
    assert_string_equal(b.data, "42-x");
    /* Longer than the small stack buffer inside buf_vprintf. */
    char big[5000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    buf_printf(&b, "[%s]", big);
    assert_int_equal(b.len, 4 + 2 + 4999);
    assert_int_equal(b.data[4], '[');
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(strlen(b.data), b.len);
    /* Exactly the stack buffer's size boundaries. */
    buf_reset(&b);
    memset(big, 'q', 255);
    big[255] = '\0';
    buf_printf(&b, "%s", big);
    assert_int_equal(b.len, 255);
    buf_reset(&b);
    big[255] = 'q';
    big[256] = '\0';
    buf_printf(&b, "%s", big);
    assert_int_equal(b.len, 256);
    assert_int_equal(strlen(b.data), 256);
    buf_fini(&b);
}

static void test_consume(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    buf_adds(&b, "abcdef");
    buf_consume(&b, 2);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "cdef");
    buf_consume(&b, 0);
    assert_string_equal(b.data, "cdef");
    buf_consume(&b, 4);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    buf_adds(&b, "xyz");
    buf_consume(&b, 100); /* more than there is: empties */
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    buf_fini(&b);
}

static void test_steal(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    buf_adds(&b, "mine");
    size_t len = 0;
    char *p = buf_steal(&b, &len);
    assert_int_equal(len, 4);
    assert_string_equal(p, "mine");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    free(p);
    /* Stealing an empty buffer still gives a valid empty string to free. */
    p = buf_steal(&b, &len);
    assert_non_null(p);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    free(p);
    p = buf_steal(&b, NULL);
    free(p);
    /* The buffer is usable again afterwards. */
    buf_adds(&b, "again");
    assert_string_equal(b.data, "again");
    buf_fini(&b);
}

static void test_arena_basic(void **state)
{
    (void)state;
    arena_t *a = arena_new();
    char *s = arena_strdup(a, "hello");
    assert_string_equal(s, "hello");
    assert_null(arena_strdup(a, NULL));
    char *t = arena_strndup(a, "abcdef", 3);
    assert_string_equal(t, "abc");
    char *u = arena_printf(a, "%s=%d", "x", 7);
    assert_string_equal(u, "x=7");
    /* Earlier allocations are not disturbed by later ones. */
    assert_string_equal(s, "hello");
    arena_free(a);
    arena_free(NULL);
}

static void test_arena_alignment(void **state)
{
    (void)state;
    arena_t *a = arena_new();
    for (size_t n = 0; n < 200; n++) {
        void *p = arena_alloc(a, n % 37 + 1);
        assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
    }
    arena_free(a);
}

static void test_arena_many(void **state)
{
    (void)state;
    /* Enough small allocations to need many chunks; each keeps its contents. */
    arena_t *a = arena_new();
    enum { N = 5000 };
    uint32_t *ptrs[N];
    for (uint32_t i = 0; i < N; i++) {
        ptrs[i] = arena_alloc(a, 24);
        memset(ptrs[i], 0xab, 24);
        ptrs[i][0] = i;
    }
    for (uint32_t i = 0; i < N; i++) {
        assert_int_equal(ptrs[i][0], i);
        assert_int_equal(((unsigned char *)ptrs[i])[23], 0xab);
    }
    arena_free(a);
}

static void test_arena_big(void **state)
{
    (void)state;
    arena_t *a = arena_new();
    char *small1 = arena_alloc(a, 16);
    memset(small1, 1, 16);
    /* Bigger than a chunk: gets its own, and small allocations keep using the current one. */
    size_t big = 1u << 20;
    char *p = arena_alloc(a, big);
    memset(p, 7, big);
    char *small2 = arena_alloc(a, 16);
    memset(small2, 2, 16);
    assert_true(small2 < p || small2 >= p + big);
    /* Nearby in the same chunk as small1 (a chunk is 4 KiB). */
    assert_true(small2 > small1 && small2 - small1 < 4096);
    char *p2 = arena_alloc(a, 3 * big);
    memset(p2, 9, 3 * big);
    for (size_t i = 0; i < big; i += 4093)
        assert_int_equal(p[i], 7);
    assert_int_equal(small1[15], 1);
    assert_int_equal(small2[0], 2);
    /* A string longer than arena_printf's stack buffer. */
    char s[3000];
    memset(s, 's', sizeof s - 1);
    s[sizeof s - 1] = '\0';
    char *q = arena_printf(a, "<%s>", s);
    assert_int_equal(strlen(q), sizeof s + 1);
    assert_int_equal(q[0], '<');
    assert_int_equal(q[sizeof s], '>');
    /* Zero-sized allocations are allowed. */
    assert_non_null(arena_alloc(a, 0));
    arena_free(a);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),           cmocka_unit_test(test_add_and_grow),
        cmocka_unit_test(test_binary),          cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_printf),          cmocka_unit_test(test_consume),
        cmocka_unit_test(test_steal),           cmocka_unit_test(test_arena_basic),
        cmocka_unit_test(test_arena_alignment), cmocka_unit_test(test_arena_many),
        cmocka_unit_test(test_arena_big),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
