/* libFuzzer target: proto3 JSON reading (pjson_parse and every pjson_* reader, on a set of field
 * names in both spellings, down nested objects) and writing (pjson_quote must always give a
 * valid JSON string that reads back as the input when the input is valid UTF-8; pjson_dump must
 * re-parse to an equal value). */
#include "b64.h"
#include "fuzz.h"
#include "pjson.h"

#include <string.h>

static const char *const fields[] = {
    "path",      "depth",     "process",      "cmd",      "args",  "envs",  "cwd", "pty",
    "size",      "cols",      "rows",         "tag",      "stdin", "input", "pid", "signal",
    "watcherId", "recursive", "includeEntry", "exitCode", "a",     "v",     "",
};

static const char *const enum_names[] = {"SIGNAL_UNSPECIFIED", "SIGNAL_SIGTERM", "SIGNAL_SIGKILL"};
static const int enum_values[] = {0, 15, 9};

static void read_all(const json_t *obj, int depth)
{
    buf_t bytes;
    buf_init(&bytes);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *f = fields[i];
        err_t e = {0};
        const char *s = NULL;
        bool b = false, present = false;
        int64_t i64 = 0;
        uint32_t u32 = 0;
        json_t *o = NULL;
        int en = -1;

        json_t *v = pjson_get(obj, f);
        FUZZ_CHECK(!v || !json_is_null(v));
        int r = pjson_str(obj, f, &s, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(r == 0 ? (s == NULL) == (v == NULL) : e.code == -EINVAL && e.msg[0]);
        if (s)
            (void)strlen(s);

        r = pjson_bool(obj, f, &b, &present, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(!present || (r == 0 && v));

        r = pjson_i64(obj, f, &i64, &present, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(!present || (r == 0 && v));

        r = pjson_u32(obj, f, &u32, &present, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(!present || r == 0);
        if (present) {
            /* What u32 accepts, i64 accepts with the same value. */
            int64_t x = -1;
            FUZZ_CHECK(pjson_i64(obj, f, &x, NULL, &e) == 0 && x == (int64_t)u32);
        }

        r = pjson_bytes(obj, f, &bytes, &present, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(present || bytes.len == 0);
        if (present)
            FUZZ_CHECK(bytes.len <= b64_decoded_max(json_string_length(v)));

        r = pjson_enum(obj, f, enum_names, enum_values, 3, &en, &present, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(!present || en == 0 || en == 9 || en == 15);

        r = pjson_obj(obj, f, &o, &e);
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        FUZZ_CHECK(!o || json_is_object(o));
        if (o && depth < 4)
            read_all(o, depth + 1);
    }
    buf_fini(&bytes);
}

static void check_quote(const uint8_t *data, size_t size)
{
    buf_t q;
    buf_init(&q);
    pjson_quote(&q, (const char *)data, size);
    json_error_t je;
    json_t *v = json_loadb(q.data, q.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    FUZZ_CHECK(v != NULL && json_is_string(v));
    /* Valid UTF-8 comes back unchanged (jansson's own check decides what is valid). */
    json_t *chk = json_stringn((const char *)data, size);
    bool valid = chk != NULL;
    json_decref(chk);
    if (valid) {
        FUZZ_CHECK(json_string_length(v) == size);
        FUZZ_CHECK(memcmp(json_string_value(v), data, size) == 0);
    }
    json_decref(v);
    buf_fini(&q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        data = (const uint8_t *)""; /* libFuzzer may pass NULL for the empty input */
    err_t e = {0};
    json_t *obj = NULL;
    int r = pjson_parse((const char *)data, size, &obj, &e);
    FUZZ_CHECK(r == 0 || r == -EINVAL);
    FUZZ_CHECK((r == 0) == (obj != NULL));
    if (obj) {
        FUZZ_CHECK(json_is_object(obj));
        read_all(obj, 0);
        buf_t d;
        buf_init(&d);
        pjson_dump(obj, &d);
        json_t *again = NULL;
        FUZZ_CHECK(pjson_parse(d.data, d.len, &again, &e) == 0);
        FUZZ_CHECK(json_equal(obj, again));
        json_decref(again);
        buf_fini(&d);
        json_decref(obj);
    }
    if (size <= 4096)
        check_quote(data, size);
    return 0;
}
