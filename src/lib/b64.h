/* Base64 (RFC 4648) encoding and tolerant decoding. */
#ifndef WRENN_B64_H
#define WRENN_B64_H

#include <stdbool.h>
#include <stddef.h>

/** Bytes needed to encode n input bytes with padding (no NUL). */
size_t b64_encoded_len(size_t n);

/** Encode n bytes into out (which needs b64_encoded_len(n) bytes); standard alphabet. With
 * pad=false the trailing '=' are left off. Returns the number of characters written. */
size_t b64_encode(const void *in, size_t n, char *out, bool pad);

/** Upper bound of decoded bytes for n characters. */
size_t b64_decoded_max(size_t n);

/** Decode n characters of standard or URL-safe base64, with or without padding, into out (which
 * needs b64_decoded_max(n) bytes). Returns the decoded length, or -EINVAL on bad input. */
long b64_decode(const char *in, size_t n, void *out);

#endif
