/* wrenn-cp: the control plane's process-wide state, read-only once serving starts (the rate
 * limiters and the database pool carry their own locks). */
#ifndef WRENN_CP_H
#define WRENN_CP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/ratelimit.h"
#include "store/db.h"

#define CP_MAX_BODY (64u * 1024u) /* JSON request bodies */

typedef struct cp {
    db_t *db;
    unsigned char jwt_key[256];
    size_t jwt_keylen;
    long jwt_ttl_s;
    const char *key_prefix; /* API key prefix, default "e2b_" */
    unsigned long pw_ops;   /* Argon2id cost */
    unsigned long pw_mem_kib;
    int64_t key_touch_us; /* minimum gap between last_used writes per key */
    rl_t *rl_email;       /* failed logins per email */
    rl_t *rl_addr;        /* failed logins per client address */
} cp_t;

#endif
