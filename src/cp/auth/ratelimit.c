#include "ratelimit.h"
#include "xalloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define RL_SLOTS 8192
#define RL_PROBE 8

struct slot {
    uint64_t h;    /* 0 = empty */
    int64_t start; /* window start, seconds */
    unsigned count;
};

struct rl {
    pthread_mutex_t lock;
    unsigned limit, window;
    uint64_t seed;
    struct slot slots[RL_SLOTS];
};

rl_t *rl_new(unsigned limit, unsigned window_s)
{
    rl_t *r = xcalloc(1, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    r->limit = limit;
    r->window = window_s ? window_s : 1;
    r->seed = (uint64_t)(uintptr_t)r ^ 0x9E3779B97F4A7C15ull;
    return r;
}

void rl_free(rl_t *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static uint64_t hash(const rl_t *r, const char *s)
{
    uint64_t h = 1469598103934665603ull ^ r->seed;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

/* The slot for key (existing, empty, expired or stalest). Called with the lock held. */
static struct slot *find(rl_t *r, uint64_t h, int64_t now, bool create)
{
    struct slot *victim = NULL;
    for (unsigned i = 0; i < RL_PROBE; i++) {
        struct slot *s = &r->slots[(h + i) % RL_SLOTS];
        if (s->h == h)
            return s;
        bool free_slot = !s->h || now - s->start >= (int64_t)r->window;
        if (!victim || (free_slot && victim->h) ||
            (!free_slot && victim->h && s->start < victim->start))
            victim = s;
    }
    if (!create)
        return NULL;
    victim->h = h;
    victim->start = now;
    victim->count = 0;
    return victim;
}

bool rl_blocked(rl_t *r, const char *key, int64_t now_s)
{
    if (!r->limit)
        return false;
    pthread_mutex_lock(&r->lock);
    struct slot *s = find(r, hash(r, key), now_s, false);
    bool b = s && now_s - s->start < (int64_t)r->window && s->count >= r->limit;
    pthread_mutex_unlock(&r->lock);
    return b;
}

void rl_fail(rl_t *r, const char *key, int64_t now_s)
{
    if (!r->limit)
        return;
    pthread_mutex_lock(&r->lock);
    struct slot *s = find(r, hash(r, key), now_s, true);
    if (now_s - s->start >= (int64_t)r->window) {
        s->start = now_s;
        s->count = 0;
    }
    s->count++;
    pthread_mutex_unlock(&r->lock);
}
