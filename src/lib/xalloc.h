/* Allocation helpers that abort on exhaustion, and ownership hand-off. */
#ifndef WRENN_XALLOC_H
#define WRENN_XALLOC_H

#include <stddef.h>

/** malloc that aborts the process when memory is exhausted; never returns NULL. */
void *xmalloc(size_t n) __attribute__((malloc, returns_nonnull));
/** calloc that aborts on exhaustion or on n*size overflow. */
void *xcalloc(size_t n, size_t size) __attribute__((malloc, returns_nonnull));
/** realloc that aborts on exhaustion. */
void *xrealloc(void *p, size_t n) __attribute__((returns_nonnull));
/** strdup that aborts on exhaustion; xstrdup(NULL) returns NULL. */
char *xstrdup(const char *s);
/** strndup that aborts on exhaustion. */
char *xstrndup(const char *s, size_t n) __attribute__((malloc, returns_nonnull));
/** asprintf that aborts on exhaustion; returns the new string (caller frees). */
char *xasprintf(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), malloc, returns_nonnull));

/** Take the pointer out of *pp and leave NULL behind: an explicit ownership transfer.
 * (__extension__ keeps -Wpedantic quiet about the GNU statement expression.) */
#define steal_ptr(pp)                                                                              \
    __extension__({                                                                                \
        __typeof__(*(pp)) steal_tmp_ = *(pp);                                                      \
        *(pp) = NULL;                                                                              \
        steal_tmp_;                                                                                \
    })

/** Take the fd out of *fdp and leave -1 behind. */
#define steal_fd(fdp)                                                                              \
    __extension__({                                                                                \
        int steal_fd_ = *(fdp);                                                                    \
        *(fdp) = -1;                                                                               \
        steal_fd_;                                                                                 \
    })

/** close(fd) when fd >= 0, keeping errno, and set it to -1. */
void xclose(int *fdp);

#endif
