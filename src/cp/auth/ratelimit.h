/* Fixed-window counters of failed attempts per key (an email, a client address), in memory.
 * Bounded: a fixed table; when it is full the stalest entry is evicted. Thread-safe. */
#ifndef WRENN_CP_RATELIMIT_H
#define WRENN_CP_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct rl rl_t;

/** A limiter allowing `limit` failures per `window_s` seconds per key. */
rl_t *rl_new(unsigned limit, unsigned window_s);
void rl_free(rl_t *r);
/** Whether key has used up its failures in the current window. */
bool rl_blocked(rl_t *r, const char *key, int64_t now_s);
/** Count one failure for key. */
void rl_fail(rl_t *r, const char *key, int64_t now_s);

#endif
