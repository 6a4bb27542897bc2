/* Growable byte buffers and per-request arenas. */
#ifndef WRENN_BUF_H
#define WRENN_BUF_H

#include <stdarg.h>
#include <stddef.h>

/** A growable byte buffer; always NUL-terminated past `len` once anything was added.
 * Embed it and use buf_init()/buf_fini(); allocation failure aborts. */
typedef struct buf {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_fini(buf_t *b);
/** Make room for `extra` more bytes (aborts on overflow or exhaustion). */
void buf_reserve(buf_t *b, size_t extra);
void buf_add(buf_t *b, const void *data, size_t len);
void buf_adds(buf_t *b, const char *s);
void buf_addc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(buf_t *b, const char *fmt, va_list ap);
/** Drop the first n bytes (n <= len). */
void buf_consume(buf_t *b, size_t n);
void buf_reset(buf_t *b);
/** Hand the bytes to the caller (who frees them) and leave b empty. */
char *buf_steal(buf_t *b, size_t *len);

/** A bump allocator whose memory is freed all at once; one per request. Not thread-safe. */
typedef struct arena arena_t;

arena_t *arena_new(void);
void arena_free(arena_t *a);
/** Allocate n bytes aligned for any type; aborts on exhaustion. */
void *arena_alloc(arena_t *a, size_t n);
char *arena_strdup(arena_t *a, const char *s);
char *arena_strndup(arena_t *a, const char *s, size_t n);
char *arena_printf(arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
