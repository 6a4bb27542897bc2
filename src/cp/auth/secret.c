#include "secret.h"
#include "cp_util.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

int secret_pw_hash(const char *pw, unsigned long ops, unsigned long mem_kib, char out[128])
{
    if (crypto_pwhash_str_alg(out, pw, strlen(pw), ops, (size_t)mem_kib * 1024,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        return -ENOMEM;
    return 0;
}

static char dummy[crypto_pwhash_STRBYTES];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void dummy_init(void)
{
    /* Default cost, so a miss costs what a hit costs with default settings. */
    if (crypto_pwhash_str_alg(dummy, "wrenn-dummy-password", 20, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                              crypto_pwhash_MEMLIMIT_INTERACTIVE,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        dummy[0] = '\0';
}

bool secret_pw_verify(const char *pw, const char *hash)
{
    if (!hash || !*hash) {
        pthread_once(&dummy_once, dummy_init);
        if (dummy[0] && crypto_pwhash_str_verify(dummy, pw, strlen(pw)) == 0)
            return false; /* the dummy matched: still no account */
        return false;
    }
    return crypto_pwhash_str_verify(hash, pw, strlen(pw)) == 0;
}

void secret_key_hash(const char *key, char hash[SECRET_HASH_HEX])
{
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, (const unsigned char *)key, strlen(key));
    cp_hex(d, sizeof d, hash);
}

void secret_key_new(const char *prefix, char *key, size_t keylen, char hash[SECRET_HASH_HEX],
                    char *shown, size_t n)
{
    unsigned char r[20];
    char hex[41];
    randombytes_buf(r, sizeof r);
    cp_hex(r, sizeof r, hex);
    snprintf(key, keylen, "%s%s", prefix, hex);
    snprintf(shown, n, "%s%.6s", prefix, hex);
    secret_key_hash(key, hash);
}
