#include "pjson.h"
#include "b64.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int pjson_parse(const char *data, size_t len, json_t **out, err_t *e)
{
    *out = NULL;
    if (len == 0) {
        *out = json_object();
        return 0;
    }
    json_error_t je;
    /* JSON_REJECT_DUPLICATES is deliberately off: proto3 parsers take the last value. */
    json_t *v = json_loadb(data, len, 0, &je);
    if (!v)
        return err_set(e, -EINVAL, "malformed JSON at line %d column %d: %s", je.line, je.column,
                       je.text);
    if (!json_is_object(v)) {
        json_decref(v);
        return err_set(e, -EINVAL, "request body must be a JSON object");
    }
    *out = v;
    return 0;
}

json_t *pjson_get(const json_t *obj, const char *camel)
{
    if (!json_is_object(obj))
        return NULL;
    json_t *v = json_object_get(obj, camel);
    if (!v) {
        char snake[128];
        size_t j = 0;
        for (const char *p = camel; *p && j + 2 < sizeof snake; p++) {
            if (*p >= 'A' && *p <= 'Z') {
                snake[j++] = '_';
                snake[j++] = (char)(*p - 'A' + 'a');
            } else {
                snake[j++] = *p;
            }
        }
        snake[j] = '\0';
        if (strcmp(snake, camel) != 0)
            v = json_object_get(obj, snake);
    }
    return json_is_null(v) ? NULL : v;
}

int pjson_str(const json_t *obj, const char *camel, const char **out, err_t *e)
{
    json_t *v = pjson_get(obj, camel);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return err_set(e, -EINVAL, "field %s must be a string", camel);
    *out = json_string_value(v);
    return 0;
}

int pjson_bool(const json_t *obj, const char *camel, bool *out, bool *present, err_t *e)
{
    json_t *v = pjson_get(obj, camel);
    if (present)
        *present = false;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return err_set(e, -EINVAL, "field %s must be a boolean", camel);
    *out = json_is_true(v);
    if (present)
        *present = true;
    return 0;
}

static int int_of(const json_t *v, const char *camel, int64_t *out, err_t *e)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        /* Range first: converting an out-of-range double to int64_t is undefined behaviour. */
        if (!(d < 9.2233720368547758e18 && d >= -9.2233720368547758e18) || d != (double)(int64_t)d)
            return err_set(e, -EINVAL, "field %s must be an integer", camel);
        *out = (int64_t)d;
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end = NULL;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (!*s || errno || *end)
            return err_set(e, -EINVAL, "field %s must be an integer", camel);
        *out = x;
        return 0;
    }
    return err_set(e, -EINVAL, "field %s must be an integer", camel);
}

int pjson_i64(const json_t *obj, const char *camel, int64_t *out, bool *present, err_t *e)
{
    json_t *v = pjson_get(obj, camel);
    if (present)
        *present = false;
    if (!v)
        return 0;
    int r = int_of(v, camel, out, e);
    if (r == 0 && present)
        *present = true;
    return r;
}

int pjson_u32(const json_t *obj, const char *camel, uint32_t *out, bool *present, err_t *e)
{
    int64_t x = 0;
    bool p = false;
    int r = pjson_i64(obj, camel, &x, &p, e);
    if (present)
        *present = false;
    if (r < 0 || !p)
        return r;
    if (x < 0 || x > UINT32_MAX)
        return err_set(e, -EINVAL, "field %s is out of range", camel);
    *out = (uint32_t)x;
    if (present)
        *present = true;
    return 0;
}

int pjson_obj(const json_t *obj, const char *camel, json_t **out, err_t *e)
{
    json_t *v = pjson_get(obj, camel);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return err_set(e, -EINVAL, "field %s must be an object", camel);
    *out = v;
    return 0;
}

int pjson_bytes(const json_t *obj, const char *camel, buf_t *out, bool *present, err_t *e)
{
    json_t *v = pjson_get(obj, camel);
    if (present)
        *present = false;
    buf_reset(out);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return err_set(e, -EINVAL, "field %s must be base64 bytes", camel);
    size_t n = json_string_length(v);
    buf_reserve(out, b64_decoded_max(n));
    long m = b64_decode(json_string_value(v), n, out->data);
    if (m < 0)
        return err_set(e, -EINVAL, "field %s is not valid base64", camel);
    out->len = (size_t)m;
    out->data[out->len] = '\0';
    if (present)
        *present = true;
    return 0;
}

int pjson_enum(const json_t *obj, const char *camel, const char *const *names, const int *values,
               size_t n, int *out, bool *present, err_t *e)
{
    json_t *v = pjson_get(obj, camel);
    if (present)
        *present = false;
    if (!v)
        return 0;
    if (json_is_string(v)) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(names[i], json_string_value(v)) == 0) {
                *out = values[i];
                if (present)
                    *present = true;
                return 0;
            }
        return err_set(e, -EINVAL, "field %s has an unknown value", camel);
    }
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        for (size_t i = 0; i < n; i++)
            if (values[i] == x) {
                *out = values[i];
                if (present)
                    *present = true;
                return 0;
            }
    }
    return err_set(e, -EINVAL, "field %s has an unknown value", camel);
}

static int dump_cb(const char *data, size_t size, void *ud)
{
    buf_add(ud, data, size);
    return 0;
}

int pjson_dump(const json_t *v, buf_t *b)
{
    json_dump_callback(v, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY);
    return 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one (overlong forms,
 * UTF-16 surrogates and code points past U+10FFFF are invalid, as RFC 3629 says). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

void pjson_quote(buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, len + 2);
    buf_addc(b, '"');
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            /* Valid UTF-8 passes through; each byte that is not part of a valid sequence
             * becomes U+FFFD, so the output is always valid JSON (as Go's encoding/json does). */
            size_t u = utf8_len((const unsigned char *)s + i, len - i);
            if (u) {
                i += u - 1;
                continue;
            }
            buf_add(b, s + start, i - start);
            start = i + 1;
            buf_adds(b, "\\ufffd");
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_add(b, s + start, i - start);
        start = i + 1;
        switch (c) {
        case '"':
            buf_adds(b, "\\\"");
            break;
        case '\\':
            buf_adds(b, "\\\\");
            break;
        case '\n':
            buf_adds(b, "\\n");
            break;
        case '\r':
            buf_adds(b, "\\r");
            break;
        case '\t':
            buf_adds(b, "\\t");
            break;
        default: {
            char u[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
            buf_adds(b, u);
        }
        }
    }
    buf_add(b, s + start, len - start);
    buf_addc(b, '"');
}

json_t *pjson_i64_value(int64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRId64, v);
    return json_string(s);
}

json_t *pjson_timestamp(int64_t sec, long nsec)
{
    struct tm tm;
    time_t t = (time_t)sec;
    gmtime_r(&t, &tm);
    char s[64];
    int n = (int)strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
    /* protobuf prints 0, 3, 6 or 9 fractional digits, whichever is shortest and exact. */
    if (nsec) {
        if (nsec % 1000000 == 0)
            n += snprintf(s + n, sizeof s - (size_t)n, ".%03ld", nsec / 1000000);
        else if (nsec % 1000 == 0)
            n += snprintf(s + n, sizeof s - (size_t)n, ".%06ld", nsec / 1000);
        else
            n += snprintf(s + n, sizeof s - (size_t)n, ".%09ld", nsec);
    }
    snprintf(s + n, sizeof s - (size_t)n, "Z");
    return json_string(s);
}
