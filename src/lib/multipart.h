/* Streaming multipart/form-data parser (RFC 7578 / RFC 2046): feed the body in pieces of any
 * size; parts come out through callbacks without the body ever being held in memory.
 *
 * Limits: a part's header block is at most MULTIPART_MAX_HEADER bytes; the boundary at most 70
 * characters (RFC 2046). Anything malformed → -EINVAL with a message.
 *
 * Line endings: the delimiter must follow a CRLF (RFC 2046); inside a part's header block a bare
 * LF is accepted as well. Part bytes are handed to part_data() as slices of the caller's buffer
 * (no copy), so a delimiter split across two feeds costs only a few held-back bytes.
 *
 * Threading: a parser belongs to one thread at a time.
 */
#ifndef WRENN_MULTIPART_H
#define WRENN_MULTIPART_H

#include <stddef.h>

#include "err.h"

#define MULTIPART_MAX_HEADER   (16 * 1024)
#define MULTIPART_MAX_BOUNDARY 70

typedef struct multipart multipart_t;

typedef struct multipart_cb {
    /* A part starts. name/filename come from Content-Disposition (NULL when absent; filename*
     * is honoured and wins over filename; quoted strings are unescaped), content_type from the
     * part's Content-Type (NULL when absent). The strings live only during the call. Return < 0
     * (and set *e) to stop with that error. */
    int (*part_begin)(void *ud, const char *name, const char *filename, const char *content_type,
                      err_t *e);
    /* Some bytes of the current part's body. */
    int (*part_data)(void *ud, const char *data, size_t len, err_t *e);
    /* The current part is complete. */
    int (*part_end)(void *ud, err_t *e);
} multipart_cb_t;

/** Extract the boundary parameter of a multipart/form-data Content-Type header into out (size
 * n). Not multipart, or no usable boundary → -EINVAL. */
int multipart_boundary(const char *content_type, char *out, size_t n, err_t *e);

/** A parser for one body. cb must outlive it. */
multipart_t *multipart_new(const char *boundary, const multipart_cb_t *cb, void *ud);
/** Feed the next len bytes. Returns 0, or the first error (from parsing or a callback); after
 * an error every further call returns it again. */
int multipart_feed(multipart_t *m, const char *data, size_t len, err_t *e);
/** The body is complete: -EINVAL when the closing boundary never came. */
int multipart_finish(multipart_t *m, err_t *e);
void multipart_free(multipart_t *m);

#endif
