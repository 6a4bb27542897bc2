/* libFuzzer target: Connect envelope framing (connect_envelope_parse) over a byte stream, as a
 * server reads a request body or a client reads a response: parse envelope after envelope,
 * re-frame each with connect_envelope_add and check that the copy parses to the same thing, and
 * that every shorter prefix asks for more bytes instead of failing or claiming success. Also runs
 * Connect-Timeout-Ms parsing and the end-of-stream / error JSON writers on slices of the input. */
#include "connect.h"
#include "fuzz.h"

#include <string.h>

static void check_timeout(const uint8_t *data, size_t size)
{
    char s[16];
    size_t n = size < sizeof s - 1 ? size : sizeof s - 1;
    memcpy(s, data, n);
    s[n] = '\0';
    long ms = connect_parse_timeout(s);
    FUZZ_CHECK(ms >= 0 || ms == -EINVAL);
    if (ms >= 0) {
        FUZZ_CHECK(strlen(s) >= 1 && strlen(s) <= 10);
        FUZZ_CHECK(ms <= 9999999999L);
    }
}

static void check_end_stream(const uint8_t *data, size_t size)
{
    /* The message comes from the input: the writer must still produce one valid envelope with
     * valid JSON in it, whatever bytes the message holds. */
    err_t e = {0};
    size_t n = size < ERR_MSG_MAX - 1 ? size : ERR_MSG_MAX - 1;
    memcpy(e.msg, data, n);
    e.msg[n] = '\0';
    int codes[] = {-ENOENT, -EINVAL, -EIO, -ETIMEDOUT, -EXDEV};
    int code = codes[size % 5];
    e.code = code;
    buf_t b;
    buf_init(&b);
    connect_end_stream_add(&b, code, &e);
    uint8_t flags = 0;
    uint32_t len = 0;
    long r = connect_envelope_parse(b.data, b.len, 1u << 20, &flags, &len);
    FUZZ_CHECK(r == (long)b.len);
    FUZZ_CHECK(flags == CONNECT_FLAG_END_STREAM);
    json_error_t je;
    json_t *j = json_loadb(b.data + 5, len, 0, &je);
    FUZZ_CHECK(j != NULL);
    json_t *err = json_object_get(j, "error");
    FUZZ_CHECK(json_is_string(json_object_get(err, "code")));
    FUZZ_CHECK(json_is_string(json_object_get(err, "message")));
    json_decref(j);
    buf_fini(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* The first byte picks the message limit, so that both small limits (hit often) and the
     * real one are exercised. */
    size_t max = data[0] & 0x80 ? CONNECT_MAX_MESSAGE : (size_t)(data[0] & 0x7f) * 3;
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    buf_t copy;
    buf_init(&copy);
    while (left > 0) {
        uint8_t flags = 0;
        uint32_t mlen = 0;
        long r = connect_envelope_parse(p, left, max, &flags, &mlen);
        FUZZ_CHECK(r == 0 || r == -EINVAL || r == -EMSGSIZE || r >= 5);
        if (left >= 5 && r != -EINVAL) {
            /* The header is always decoded when present. */
            uint32_t want =
                (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
            FUZZ_CHECK(mlen == want && flags == p[0]);
        }
        if (r == -EINVAL) {
            FUZZ_CHECK(left >= 5 && (p[0] & ~3) != 0);
            break;
        }
        if (r == -EMSGSIZE) {
            FUZZ_CHECK(mlen > max);
            break;
        }
        if (r == 0) {
            FUZZ_CHECK(left < 5 || left - 5 < mlen);
            break;
        }
        FUZZ_CHECK((size_t)r <= left && (size_t)r == 5 + (size_t)mlen && mlen <= max);
        /* Every strict prefix of a complete envelope needs more bytes. */
        size_t probes[] = {0, 1, 4, 5, (size_t)r / 2, (size_t)r - 1};
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            if (probes[i] >= (size_t)r)
                continue;
            uint8_t f2;
            uint32_t l2;
            FUZZ_CHECK(connect_envelope_parse(p, probes[i], max, &f2, &l2) == 0);
        }
        /* Re-frame and parse the copy. */
        buf_reset(&copy);
        connect_envelope_add(&copy, flags, p + 5, mlen);
        FUZZ_CHECK(copy.len == (size_t)r);
        FUZZ_CHECK(memcmp(copy.data, p, (size_t)r) == 0);
        uint8_t f3;
        uint32_t l3;
        FUZZ_CHECK(connect_envelope_parse(copy.data, copy.len, max, &f3, &l3) == r);
        FUZZ_CHECK(f3 == flags && l3 == mlen);
        p += r;
        left -= (size_t)r;
    }
    buf_fini(&copy);
    check_timeout(data, size);
    check_end_stream(data, size);
    return 0;
}
