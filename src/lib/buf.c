#include "buf.h"
#include "xalloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void buf_fini(buf_t *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reserve(buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1)
        abort();
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_add(buf_t *b, const void *data, size_t len)
{
    buf_reserve(b, len);
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void buf_adds(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

void buf_addc(buf_t *b, char c)
{
    buf_add(b, &c, 1);
}

void buf_vprintf(buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        buf_add(b, small, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void buf_consume(buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void buf_reset(buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *buf_steal(buf_t *b, size_t *len)
{
    if (!b->data)
        buf_reserve(b, 0), b->data[0] = '\0';
    char *d = b->data;
    if (len)
        *len = b->len;
    buf_init(b);
    return d;
}

/* Arena: a list of chunks; big requests get a chunk of their own. */
struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(max_align_t) char mem[];
};

struct arena {
    struct arena_chunk *head;
};

#define ARENA_CHUNK 4096

arena_t *arena_new(void)
{
    return xcalloc(1, sizeof(arena_t));
}

void arena_free(arena_t *a)
{
    if (!a)
        return;
    struct arena_chunk *c = a->head;
    while (c) {
        struct arena_chunk *n = c->next;
        free(c);
        c = n;
    }
    free(a);
}

void *arena_alloc(arena_t *a, size_t n)
{
    const size_t align = _Alignof(max_align_t);
    if (n > SIZE_MAX - align - sizeof(struct arena_chunk))
        abort();
    n = (n + align - 1) & ~(align - 1);
    struct arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        struct arena_chunk *nc = xmalloc(sizeof *nc + cap);
        nc->used = 0;
        nc->cap = cap;
        if (c && n > ARENA_CHUNK) {
            /* Keep the current chunk in front: it still has room for small objects. */
            nc->next = c->next;
            c->next = nc;
        } else {
            nc->next = c;
            a->head = nc;
        }
        c = nc;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

char *arena_strndup(arena_t *a, const char *s, size_t n)
{
    char *d = arena_alloc(a, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *arena_strdup(arena_t *a, const char *s)
{
    return s ? arena_strndup(a, s, strlen(s)) : NULL;
}

char *arena_printf(arena_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap2);
    va_end(ap2);
    char *d = NULL;
    if (n >= 0) {
        d = arena_alloc(a, (size_t)n + 1);
        if ((size_t)n < sizeof tmp)
            memcpy(d, tmp, (size_t)n + 1);
        else
            vsnprintf(d, (size_t)n + 1, fmt, ap);
    }
    va_end(ap);
    return d;
}
