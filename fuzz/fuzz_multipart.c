/* libFuzzer target: the streaming multipart/form-data parser (multipart_boundary, multipart_new,
 * multipart_feed, multipart_finish). The first input line is a Content-Type value (its boundary
 * is used when it has one, else a fixed boundary); the rest is the body. The body is parsed twice,
 * once in one piece and once cut at input-dependent split points, and both runs must report the
 * same parts, the same bytes and the same result: where the pieces end must never matter. The
 * callbacks also check the begin/data/end order, and a part named "fail" makes part_begin fail,
 * which every later call must report again. */
#include "buf.h"
#include "fuzz.h"
#include "multipart.h"

#include <string.h>

typedef struct rec {
    buf_t log; /* B<name>\0<filename>\0<type>\0 ... D<bytes> ... E */
    bool in_part;
    bool last_data; /* consecutive data events are merged: only the bytes matter */
    int parts;
} rec_t;

static int on_begin(void *ud, const char *name, const char *filename, const char *ctype, err_t *e)
{
    rec_t *r = ud;
    FUZZ_CHECK(!r->in_part);
    r->in_part = true;
    r->last_data = false;
    r->parts++;
    buf_addc(&r->log, 'B');
    /* Absent strings are NULL; logged as "\x01" to tell them from empty ones. */
    buf_add(&r->log, name ? name : "\x01", (name ? strlen(name) : 1) + 1);
    buf_add(&r->log, filename ? filename : "\x01", (filename ? strlen(filename) : 1) + 1);
    buf_add(&r->log, ctype ? ctype : "\x01", (ctype ? strlen(ctype) : 1) + 1);
    if (name && strcmp(name, "fail") == 0)
        return err_set(e, -ENOSPC, "refused part %s", name);
    return 0;
}

static int on_data(void *ud, const char *data, size_t len, err_t *e)
{
    (void)e;
    rec_t *r = ud;
    FUZZ_CHECK(r->in_part);
    if (len == 0)
        return 0;
    if (!r->last_data)
        buf_addc(&r->log, 'D');
    buf_add(&r->log, data, len);
    r->last_data = true;
    return 0;
}

static int on_end(void *ud, err_t *e)
{
    (void)e;
    rec_t *r = ud;
    FUZZ_CHECK(r->in_part);
    r->in_part = false;
    r->last_data = false;
    buf_addc(&r->log, 'E');
    return 0;
}

static const multipart_cb_t cbs = {on_begin, on_data, on_end};

static bool same_log(const rec_t *a, const rec_t *b)
{
    return a->log.len == b->log.len &&
           (a->log.len == 0 || memcmp(a->log.data, b->log.data, a->log.len) == 0);
}

/* Parse body in pieces (max_piece 0: one piece). Returns the result; the events land in r. */
static int run(const char *boundary, const char *body, size_t len, size_t max_piece, uint32_t seed,
               rec_t *r)
{
    err_t e = {0};
    multipart_t *m = multipart_new(boundary, &cbs, r);
    FUZZ_CHECK(m != NULL);
    fuzz_split_t sp = {.state = seed, .max = max_piece};
    size_t off = 0;
    int rc = 0;
    while (off < len) {
        size_t n = max_piece ? fuzz_split_next(&sp) : len;
        if (n > len - off)
            n = len - off;
        rc = multipart_feed(m, body + off, n, &e);
        off += n;
        if (rc < 0)
            break;
    }
    if (rc == 0)
        rc = multipart_finish(m, &e);
    if (rc < 0) {
        FUZZ_CHECK(rc == -EINVAL || rc == -ENOSPC);
        FUZZ_CHECK(e.code == rc && e.msg[0]);
        /* Sticky errors: feed and finish report the first error again. */
        err_t e2 = {0};
        FUZZ_CHECK(multipart_feed(m, "x", 1, &e2) == rc);
        FUZZ_CHECK(multipart_finish(m, &e2) == rc);
    } else {
        FUZZ_CHECK(!r->in_part); /* a complete body closed every part */
    }
    multipart_free(m);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *nl = memchr(data, '\n', size < 512 ? size : 512);
    char ctype[513];
    size_t cl = nl ? (size_t)(nl - (const char *)data) : 0;
    memcpy(ctype, data, cl);
    ctype[cl] = '\0';
    const char *body = nl ? nl + 1 : (const char *)data;
    size_t blen = size - (size_t)(body - (const char *)data);

    char boundary[MULTIPART_MAX_BOUNDARY + 8];
    err_t e = {0};
    int r = multipart_boundary(ctype, boundary, sizeof boundary, &e);
    FUZZ_CHECK(r == 0 || r == -EINVAL);
    if (r == 0) {
        size_t bl = strlen(boundary);
        FUZZ_CHECK(bl >= 1 && bl <= MULTIPART_MAX_BOUNDARY);
    } else {
        strcpy(boundary, "b0undary");
    }
    /* A too small output buffer is refused, never overrun. */
    char tiny[4];
    int rt = multipart_boundary(ctype, tiny, sizeof tiny, &e);
    FUZZ_CHECK(rt == 0 || rt == -EINVAL);
    if (rt == 0)
        FUZZ_CHECK(strlen(tiny) < sizeof tiny);

    uint32_t seed = 2166136261u;
    for (size_t i = 0; i < size && i < 64; i++)
        seed = (seed ^ data[i]) * 16777619u;

    rec_t one = {0}, split = {0}, bytes = {0};
    buf_init(&one.log);
    buf_init(&split.log);
    buf_init(&bytes.log);
    int r1 = run(boundary, body, blen, 0, seed, &one);
    int r2 = run(boundary, body, blen, 1 + seed % 97, seed, &split);
    /* And byte by byte, for bodies small enough to afford it. */
    int r3 = blen <= 4096 ? run(boundary, body, blen, 1, seed, &bytes) : r1;
    FUZZ_CHECK(r1 == r2);
    FUZZ_CHECK(same_log(&one, &split));
    if (blen <= 4096) {
        FUZZ_CHECK(r1 == r3);
        FUZZ_CHECK(same_log(&one, &bytes));
    }
    buf_fini(&one.log);
    buf_fini(&split.log);
    buf_fini(&bytes.log);
    return 0;
}
