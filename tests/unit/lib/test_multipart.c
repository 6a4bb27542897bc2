/* Unit tests of the streaming multipart/form-data parser (src/lib/multipart.c). */
#include "buf.h"
#include "multipart.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAX_PARTS 16

struct part {
    char *name, *filename, *ctype;
    buf_t data;
    bool ended;
};

struct coll {
    struct part parts[MAX_PARTS];
    int n;
    bool in_part;
    int fail_begin_at; /* part index whose part_begin fails, or -1 */
    int fail_data;     /* fail part_data once this many bytes were seen, or 0 */
    size_t seen;
};

static int on_begin(void *ud, const char *name, const char *filename, const char *ctype, err_t *e)
{
    struct coll *c = ud;
    assert_false(c->in_part);
    assert_true(c->n < MAX_PARTS);
    if (c->fail_begin_at == c->n)
        return err_set(e, -EEXIST, "refused part %d", c->n);
    struct part *p = &c->parts[c->n++];
    p->name = name ? strdup(name) : NULL;
    p->filename = filename ? strdup(filename) : NULL;
    p->ctype = ctype ? strdup(ctype) : NULL;
    buf_init(&p->data);
    c->in_part = true;
    return 0;
}

static int on_data(void *ud, const char *data, size_t len, err_t *e)
{
    struct coll *c = ud;
    assert_true(c->in_part);
    assert_true(len > 0);
    c->seen += len;
    if (c->fail_data && c->seen >= (size_t)c->fail_data)
        return err_set(e, -ENOSPC, "disk full");
    buf_add(&c->parts[c->n - 1].data, data, len);
    return 0;
}

static int on_end(void *ud, err_t *e)
{
    (void)e;
    struct coll *c = ud;
    assert_true(c->in_part);
    c->parts[c->n - 1].ended = true;
    c->in_part = false;
    return 0;
}

static const multipart_cb_t cbs = {on_begin, on_data, on_end};

static void coll_init(struct coll *c)
{
    memset(c, 0, sizeof *c);
    c->fail_begin_at = -1;
}

static void coll_fini(struct coll *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->parts[i].name);
        free(c->parts[i].filename);
        free(c->parts[i].ctype);
        buf_fini(&c->parts[i].data);
    }
    memset(c, 0, sizeof *c);
}

/* Parse body fed in pieces of `step` bytes (0: all at once). Returns the first error or 0. */
static int parse(struct coll *c, const char *boundary, const char *body, size_t len, size_t step,
                 err_t *e)
{
    multipart_t *m = multipart_new(boundary, &cbs, c);
    assert_non_null(m);
    int rc = 0;
    if (!step)
        step = len ? len : 1;
    for (size_t off = 0; off < len && rc == 0; off += step) {
        size_t n = len - off < step ? len - off : step;
        /* Feed from a private copy so the parser cannot rely on bytes past the piece. */
        char *piece = malloc(n);
        memcpy(piece, body + off, n);
        rc = multipart_feed(m, piece, n, e);
        free(piece);
    }
    if (rc == 0)
        rc = multipart_finish(m, e);
    multipart_free(m);
    return rc;
}

static const char simple[] =
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"file\"; filename=\"a/b.txt\"\r\n"
    "\r\n"
    "hello\r\n"
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"other\"\r\n"
    "\r\n"
    "\r\n--XyZnot-a-boundary\r\n"
    "--XyZ--\r\n";

static const char two_parts[] =
    "preamble text\r\n"
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"file\"; filename=\"a/b.txt\"\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "hello\r\n-\r\n--\r\n--X\r\n--XyY\r\nworld\r\r\n"
    "--XyZ  \t\r\n"
    "content-disposition: form-data;\r\n"
    "  name=other\r\n"
    "\r\n"
    "\r\n"
    "--XyZ--\r\n"
    "epilogue --XyZ garbage";

static void test_two_parts_every_split(void **state)
{
    (void)state;
    for (size_t step = 0; step <= sizeof two_parts; step++) {
        struct coll c;
        coll_init(&c);
        err_t e = {0};
        int rc = parse(&c, "XyZ", two_parts, sizeof two_parts - 1, step, &e);
        assert_int_equal(rc, 0);
        assert_int_equal(c.n, 2);
        assert_string_equal(c.parts[0].name, "file");
        assert_string_equal(c.parts[0].filename, "a/b.txt");
        assert_string_equal(c.parts[0].ctype, "text/plain");
        const char want[] = "hello\r\n-\r\n--\r\n--X\r\n--XyY\r\nworld\r";
        assert_int_equal(c.parts[0].data.len, sizeof want - 1);
        assert_memory_equal(c.parts[0].data.data, want, sizeof want - 1);
        assert_true(c.parts[0].ended);
        assert_string_equal(c.parts[1].name, "other");
        assert_null(c.parts[1].filename);
        assert_null(c.parts[1].ctype);
        assert_int_equal(c.parts[1].data.len, 0);
        assert_true(c.parts[1].ended);
        coll_fini(&c);
    }
}

static void test_delimiter_followed_by_junk(void **state)
{
    (void)state;
    for (size_t step = 0; step <= sizeof simple; step += 3) {
        struct coll c;
        coll_init(&c);
        err_t e = {0};
        assert_int_equal(parse(&c, "XyZ", simple, sizeof simple - 1, step, &e), -EINVAL);
        assert_non_null(strstr(e.msg, "boundary"));
        coll_fini(&c);
    }
}

static void test_binary_and_large(void **state)
{
    (void)state;
    /* 1 MiB of every byte value, with CRs and partial delimiters sprinkled in. */
    size_t n = 1u << 20;
    char *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (char)(i * 7919u >> 3);
    for (size_t i = 0; i + 8 < n; i += 4099)
        memcpy(data + i, "\r\n--bou", 7);
    buf_t body;
    buf_init(&body);
    buf_adds(&body, "--boundary\r\nContent-Disposition: form-data; name=\"file\"; "
                    "filename=\"x.bin\"\r\n\r\n");
    buf_add(&body, data, n);
    buf_adds(&body, "\r\n--boundary--");
    size_t steps[] = {0, 1000, 4096, 65536, 262144, 7};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        struct coll c;
        coll_init(&c);
        err_t e = {0};
        assert_int_equal(parse(&c, "boundary", body.data, body.len, steps[s], &e), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.parts[0].data.len, n);
        assert_memory_equal(c.parts[0].data.data, data, n);
        coll_fini(&c);
    }
    buf_fini(&body);
    free(data);
}

static void test_header_forms(void **state)
{
    (void)state;
    const char body[] =
        "--b\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"C:\\dir\\q\\\"x\\\".txt\"\r\n"
        "\r\n1\n--b\r" /* without a CR in front, "--b" is content */
        "\r\n--b\r\n"
        "Content-Disposition: form-data; name=file; filename=plain.txt; "
        "filename*=UTF-8''%e2%82%ac%20rates.txt\r\n"
        "\r\n2\r\n"
        "--b\r\n"
        "X-Other: x\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"\"\n"
        "\n3\r\n"
        "--b\r\n"
        "\r\n4\r\n"
        "--b--";
    struct coll c;
    coll_init(&c);
    err_t e = {0};
    assert_int_equal(parse(&c, "b", body, sizeof body - 1, 0, &e), 0);
    assert_int_equal(c.n, 4);
    /* Backslash escapes only a tspecial; other backslashes stay (Windows paths). */
    assert_string_equal(c.parts[0].filename, "C:\\dir\\q\"x\".txt");
    assert_int_equal(c.parts[0].data.len, 6);
    assert_memory_equal(c.parts[0].data.data, "1\n--b\r", 6);
    assert_string_equal(c.parts[1].name, "file");
    assert_string_equal(c.parts[1].filename, "\xe2\x82\xac rates.txt");
    assert_string_equal(c.parts[2].filename, "");
    assert_memory_equal(c.parts[2].data.data, "3", 1);
    assert_null(c.parts[3].name);
    assert_memory_equal(c.parts[3].data.data, "4", 1);
    coll_fini(&c);
}

static void expect_einval(const char *boundary, const char *body, const char *msg_part)
{
    for (size_t step = 0; step < 5; step++) {
        struct coll c;
        coll_init(&c);
        err_t e = {0};
        assert_int_equal(parse(&c, boundary, body, strlen(body), step, &e), -EINVAL);
        if (msg_part && !strstr(e.msg, msg_part))
            fail_msg("message '%s' lacks '%s'", e.msg, msg_part);
        coll_fini(&c);
    }
}

static void test_malformed(void **state)
{
    (void)state;
    expect_einval("b", "", "without any boundary");
    expect_einval("b", "no boundary here at all", "without any boundary");
    expect_einval("b", "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                  "closing boundary");
    expect_einval("b", "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n", "closing");
    expect_einval("b", "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--b",
                  "closing boundary");
    expect_einval("b", "--b\r\nno colon here\r\n\r\nx\r\n--b--", "malformed");
    expect_einval("b", "--b\r\nContent-Disposition: form-data; name=\"unterminated\r\n\r\n--b--",
                  "Content-Disposition");
    expect_einval("b", "--b\r\nContent-Disposition: form-data; filename*=latin1''x\r\n\r\n--b--",
                  "filename*");
    expect_einval("b", "--b\r\nContent-Disposition: form-data; filename*=UTF-8''a%00b\r\n\r\n--b--",
                  "filename*");
    expect_einval("b", "--bx\r\n\r\n--b--", "boundary");
    expect_einval("b", "--b-x\r\n", "closing boundary");
    expect_einval("b", "--b\rx", "boundary");

    /* A NUL byte in a header block. */
    char nul[] = "--b\r\nA: x\0y\r\n\r\n--b--";
    struct coll c;
    coll_init(&c);
    err_t e = {0};
    assert_int_equal(parse(&c, "b", nul, sizeof nul - 1, 0, &e), -EINVAL);
    coll_fini(&c);

    /* A header block larger than the limit, with and without line breaks. */
    buf_t big;
    buf_init(&big);
    buf_adds(&big, "--b\r\n");
    for (int i = 0; i < MULTIPART_MAX_HEADER / 10 + 10; i++)
        buf_adds(&big, "X-A: 1234\r\n");
    buf_adds(&big, "\r\n--b--");
    expect_einval("b", big.data, "too large");
    buf_reset(&big);
    buf_adds(&big, "--b\r\nX: ");
    for (int i = 0; i < MULTIPART_MAX_HEADER + 10; i++)
        buf_addc(&big, 'a');
    expect_einval("b", big.data, "too large");
    buf_fini(&big);
}

static void test_error_replayed_and_callback_errors(void **state)
{
    (void)state;
    struct coll c;
    coll_init(&c);
    c.fail_begin_at = 1;
    err_t e = {0};
    assert_int_equal(parse(&c, "XyZ", two_parts, sizeof two_parts - 1, 0, &e), -EEXIST);
    assert_string_equal(e.msg, "refused part 1");
    assert_int_equal(c.n, 1);
    coll_fini(&c);

    coll_init(&c);
    c.fail_data = 10;
    multipart_t *m = multipart_new("boundary", &cbs, &c);
    const char head[] = "--boundary\r\nContent-Disposition: form-data; name=file\r\n\r\n";
    assert_int_equal(multipart_feed(m, head, sizeof head - 1, &e), 0);
    assert_int_equal(multipart_feed(m, "0123456789abcdef", 16, &e), -ENOSPC);
    assert_string_equal(e.msg, "disk full");
    err_clear(&e);
    assert_int_equal(multipart_feed(m, "more", 4, &e), -ENOSPC);
    assert_string_equal(e.msg, "disk full");
    assert_int_equal(multipart_finish(m, &e), -ENOSPC);
    /* A NULL err_t is fine too. */
    assert_int_equal(multipart_feed(m, "more", 4, NULL), -ENOSPC);
    multipart_free(m);
    coll_fini(&c);
}

static void test_empty_body_and_no_parts(void **state)
{
    (void)state;
    struct coll c;
    coll_init(&c);
    err_t e = {0};
    assert_int_equal(parse(&c, "b", "--b--", 5, 1, &e), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(parse(&c, "b", "--b--\r\n", 7, 0, &e), 0);
    /* Part with an empty body and no headers at all. */
    const char *nohdr = "--b\r\n\r\n\r\n--b--";
    assert_int_equal(parse(&c, "b", nohdr, strlen(nohdr), 1, &e), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.parts[0].data.len, 0);
    assert_true(c.parts[0].ended);
    coll_fini(&c);
}

static void test_boundary_header(void **state)
{
    (void)state;
    char b[MULTIPART_MAX_BOUNDARY + 1];
    err_t e = {0};
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=abc", b, sizeof b, &e), 0);
    assert_string_equal(b, "abc");
    assert_int_equal(multipart_boundary("Multipart/Form-Data;charset=utf-8;  BOUNDARY=\"a b:c\"", b,
                                        sizeof b, &e),
                     0);
    assert_string_equal(b, "a b:c");
    assert_int_equal(
        multipart_boundary("multipart/form-data ; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                           b, sizeof b, &e),
        0);
    assert_string_equal(b, "----WebKitFormBoundary7MA4YWxkTrZu0gW");

    assert_int_equal(multipart_boundary(NULL, b, sizeof b, &e), -EINVAL);
    assert_int_equal(multipart_boundary("application/json", b, sizeof b, &e), -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-dataX; boundary=a", b, sizeof b, &e),
                     -EINVAL);
    assert_int_equal(multipart_boundary("multipart/mixed; boundary=a", b, sizeof b, &e), -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-data", b, sizeof b, &e), -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=", b, sizeof b, &e),
                     -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=\"\"", b, sizeof b, &e),
                     -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=\"abc", b, sizeof b, &e),
                     -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=\"ab \"", b, sizeof b, &e),
                     -EINVAL);
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=\"a\x01\"", b, sizeof b, &e),
                     -EINVAL);
    char lng[200];
    snprintf(lng, sizeof lng, "multipart/form-data; boundary=%071d", 0);
    assert_int_equal(multipart_boundary(lng, b, sizeof b, &e), -EINVAL);
    snprintf(lng, sizeof lng, "multipart/form-data; boundary=%070d", 0);
    assert_int_equal(multipart_boundary(lng, b, sizeof b, &e), 0);
    assert_int_equal(strlen(b), 70);
    /* Too small an output buffer. */
    assert_int_equal(multipart_boundary("multipart/form-data; boundary=abcdef", b, 4, &e), -EINVAL);
    /* multipart_new refuses what multipart_boundary would. */
    assert_null(multipart_new("", &cbs, NULL));
    char l71[72];
    memset(l71, 'a', 71);
    l71[71] = '\0';
    assert_null(multipart_new(l71, &cbs, NULL));
}

static void test_longest_boundary_split(void **state)
{
    (void)state;
    char bnd[MULTIPART_MAX_BOUNDARY + 1];
    memset(bnd, 'q', MULTIPART_MAX_BOUNDARY);
    bnd[MULTIPART_MAX_BOUNDARY] = '\0';
    buf_t body;
    buf_init(&body);
    buf_printf(&body, "--%s\r\nContent-Disposition: form-data; name=file\r\n\r\n", bnd);
    /* Content holding almost-delimiters of every length. */
    buf_t want;
    buf_init(&want);
    for (size_t k = 0; k < MULTIPART_MAX_BOUNDARY; k++) {
        buf_printf(&want, "\r\n--%.*sX", (int)k, bnd);
    }
    buf_add(&body, want.data, want.len);
    buf_printf(&body, "\r\n--%s--\r\n", bnd);
    for (size_t step = 1; step < 160; step++) {
        struct coll c;
        coll_init(&c);
        err_t e = {0};
        assert_int_equal(parse(&c, bnd, body.data, body.len, step, &e), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.parts[0].data.len, want.len);
        assert_memory_equal(c.parts[0].data.data, want.data, want.len);
        coll_fini(&c);
    }
    buf_fini(&want);
    buf_fini(&body);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_parts_every_split),
        cmocka_unit_test(test_delimiter_followed_by_junk),
        cmocka_unit_test(test_binary_and_large),
        cmocka_unit_test(test_header_forms),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_error_replayed_and_callback_errors),
        cmocka_unit_test(test_empty_body_and_no_parts),
        cmocka_unit_test(test_boundary_header),
        cmocka_unit_test(test_longest_boundary_split),
    };
    return cmocka_run_group_tests_name("multipart", tests, NULL, NULL);
}
