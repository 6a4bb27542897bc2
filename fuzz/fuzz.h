/* Shared bits of the libFuzzer targets: an invariant check that crashes loudly, and a
 * deterministic way to cut an input into pieces so that streaming parsers see every split. */
#ifndef WRENN_FUZZ_H
#define WRENN_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/** Abort (which libFuzzer reports as a crash, with the input saved) when cond is false. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/** Piece sizes derived from a seed: 1..max bytes, varying from piece to piece. */
typedef struct fuzz_split {
    uint32_t state;
    size_t max;
} fuzz_split_t;

static inline size_t fuzz_split_next(fuzz_split_t *s)
{
    /* xorshift32: cheap, deterministic, and never stuck at zero when seeded non-zero. */
    uint32_t x = s->state ? s->state : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->state = x;
    return 1 + (size_t)(x % (uint32_t)(s->max ? s->max : 1));
}

#endif
