/* Passwords (Argon2id through libsodium) and API keys (random, stored as SHA-256). */
#ifndef WRENN_CP_SECRET_H
#define WRENN_CP_SECRET_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

#define SECRET_PW_MAX   1024 /* longest accepted password, bytes */
#define SECRET_HASH_HEX 65   /* SHA-256 hex + NUL */
#define SECRET_KEY_MAX  160  /* longest API key accepted on the wire */

/** Argon2id hash of pw into out (libsodium's encoded string, at most 128 bytes + NUL) with the
 * given cost; ops >= 1, mem_kib >= 8. Returns 0 or -ENOMEM (memory limit unobtainable). */
int secret_pw_hash(const char *pw, unsigned long ops, unsigned long mem_kib, char out[128]);
/** Whether pw matches the encoded hash. A NULL hash still spends the time of a verification
 * (against a dummy) so unknown accounts are not told apart by timing. */
bool secret_pw_verify(const char *pw, const char *hash);

/** A new API key: prefix + 40 lowercase hex (160 random bits) into key (size keylen), its
 * SHA-256 hex into hash, and the display prefix (prefix + first 6 hex) into shown (size n). */
void secret_key_new(const char *prefix, char *key, size_t keylen, char hash[SECRET_HASH_HEX],
                    char *shown, size_t n);
/** SHA-256 hex of a presented key. */
void secret_key_hash(const char *key, char hash[SECRET_HASH_HEX]);

#endif
