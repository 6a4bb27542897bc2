/* Small pure helpers of the control plane: times, random ids, slugs, hex. */
#ifndef WRENN_CP_UTIL_H
#define WRENN_CP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** "YYYY-MM-DDTHH:MM:SS.ffffffZ" plus NUL. */
#define CP_TIME_LEN 28

/** Microseconds since the epoch, from CLOCK_REALTIME. */
int64_t cp_now_us(void);
/** Format us as the canonical UTC form with six fractional digits (fixed width, sorts as text).
 * out needs CP_TIME_LEN bytes. */
void cp_time_fmt(int64_t us, char out[CP_TIME_LEN]);
/** Parse RFC 3339 ("T" or " " separator, 0–9 fractional digits, "Z" or ±HH[:MM] offset, as
 * also printed by PostgreSQL) into microseconds since the epoch (sub-microsecond digits are
 * truncated). Returns 0 or -EINVAL. */
int cp_time_parse(const char *s, int64_t *us);
/** Re-render a stored time (either engine's form) canonically; NULL in → false. */
bool cp_time_norm(const char *in, char out[CP_TIME_LEN]);

/** Lowercase hex of n bytes into out (2n+1 bytes). */
void cp_hex(const void *in, size_t n, char *out);

/** A new id: prefix (e.g. "usr_") + 32 lowercase hex digits of 128 random bits. out needs
 * strlen(prefix) + 33 bytes. */
void cp_id_new(const char *prefix, char *out, size_t outlen);
/** Whether s is prefix followed by exactly 32 lowercase hex digits. */
bool cp_id_valid(const char *prefix, const char *s);

/** A team slug: 12 random hex digits rendered "xxxxxx-yyyyyy" (out needs 14 bytes). */
void cp_slug_new(char out[14]);
/** Whether s has the slug shape. */
bool cp_slug_valid(const char *s);

/** Whether s is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
bool cp_utf8_valid(const char *s);

/** Trim ASCII whitespace in place and return s. */
char *cp_trim(char *s);
/** Lowercase ASCII in place and return s. */
char *cp_lower(char *s);

#endif
