/* User JWTs: HS256 only (the algorithm is pinned, never read from the token), `exp` required
 * and checked, host tokens (`typ` = "host") refused. */
#ifndef WRENN_CP_JWT_H
#define WRENN_CP_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define JWT_MAX_LEN    4096
#define JWT_MIN_SECRET 32

typedef struct jwt_claims {
    char sub[64]; /* user id */
    char team_id[64];
    char email[256];
    char name[256];
    char role[16];
    bool is_admin;
    int64_t iat, exp; /* seconds since the epoch */
} jwt_claims_t;

/** Sign c with key (at least JWT_MIN_SECRET bytes). Returns a malloc'd token. */
char *jwt_sign(const unsigned char *key, size_t keylen, const jwt_claims_t *c);

/** Verify token against key at time now (seconds) and fill *out. Any defect (shape, encoding,
 * algorithm other than HS256, signature, missing or past exp, host token) → -EKEYREJECTED. */
int jwt_verify(const unsigned char *key, size_t keylen, const char *token, int64_t now,
               jwt_claims_t *out, err_t *e);

#endif
