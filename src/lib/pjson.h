/* Proto3 JSON helpers on jansson: what a Connect JSON peer must accept and emit.
 *
 * Readers accept a field by its lowerCamelCase name or its snake_case original, treat JSON null
 * as absent, take 64-bit integers as numbers or decimal strings, bytes as base64 (standard or
 * URL-safe, padded or not) and enums by name or number. Unknown fields are ignored. Every reader
 * returns 0 (absent fields leave *out untouched and *present false) or -EINVAL with a message
 * naming the field.
 */
#ifndef WRENN_PJSON_H
#define WRENN_PJSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

/** Parse len bytes as one JSON value that must be an object (an empty body is {}).
 * On success *out holds a new reference. Malformed input → -EINVAL. */
int pjson_parse(const char *data, size_t len, json_t **out, err_t *e);

/** The member named camel (e.g. "exitCode") or its snake_case form ("exit_code"); NULL when
 * absent or JSON null. Borrowed reference. */
json_t *pjson_get(const json_t *obj, const char *camel);

int pjson_str(const json_t *obj, const char *camel, const char **out, err_t *e);
int pjson_bool(const json_t *obj, const char *camel, bool *out, bool *present, err_t *e);
int pjson_i64(const json_t *obj, const char *camel, int64_t *out, bool *present, err_t *e);
int pjson_u32(const json_t *obj, const char *camel, uint32_t *out, bool *present, err_t *e);
/** A nested message; *out is NULL when absent. Non-object → -EINVAL. */
int pjson_obj(const json_t *obj, const char *camel, json_t **out, err_t *e);
/** Base64 bytes, decoded into out (reset first). *present tells whether the field was there. */
int pjson_bytes(const json_t *obj, const char *camel, buf_t *out, bool *present, err_t *e);

/** An enum given by name (names[i] ↔ values[i], n entries) or by number (which must be one of
 * values). */
int pjson_enum(const json_t *obj, const char *camel, const char *const *names, const int *values,
               size_t n, int *out, bool *present, err_t *e);

/** Serialise compactly into b (appended); returns 0. */
int pjson_dump(const json_t *v, buf_t *b);

/** Append s to b as a JSON string literal with quotes and escapes. The output is always valid
 * JSON: each byte that is not part of a valid UTF-8 sequence becomes \ufffd. */
void pjson_quote(buf_t *b, const char *s, size_t len);

/** Format an int64 the way proto3 JSON wants it: a decimal string. */
json_t *pjson_i64_value(int64_t v);

/** A google.protobuf.Timestamp in RFC 3339 UTC with nanoseconds trimmed as protobuf does. */
json_t *pjson_timestamp(int64_t sec, long nsec);

#endif
