/* gzip streams on zlib: a push decoder for request bodies and a pull encoder for responses.
 *
 * Neither ever holds a whole body: the decoder hands out what each input piece inflates to, in
 * pieces of at most GZ_CHUNK bytes; the encoder reads its plain input GZ_CHUNK bytes at a time.
 * Each object belongs to one thread at a time.
 */
#ifndef WRENN_GZ_H
#define WRENN_GZ_H

#include <stddef.h>
#include <sys/types.h>

#include "err.h"

#define GZ_CHUNK (256 * 1024)

/** Receives decoded bytes; return < 0 (and set *e) to stop decoding with that error. */
typedef int (*gz_sink_fn)(void *ud, const char *data, size_t len, err_t *e);

typedef struct gz_inflate gz_inflate_t;

/** A gzip decoder (RFC 1952) that passes what it decodes to sink. Several gzip members one after
 * the other decode as one stream (like `gzip -d` and Go's gzip.Reader). */
gz_inflate_t *gz_inflate_new(gz_sink_fn sink, void *ud);
/** Decode the next len compressed bytes. Returns 0, -EINVAL for data that is not gzip (or junk
 * after the last member), or the sink's error. After an error every call returns -EINVAL. */
int gz_inflate_feed(gz_inflate_t *g, const void *data, size_t len, err_t *e);
/** The compressed input is complete: -EINVAL when it stopped inside a member (or was empty). */
int gz_inflate_finish(gz_inflate_t *g, err_t *e);
/** NULL-safe. */
void gz_inflate_free(gz_inflate_t *g);

/** Produces plain input for the encoder: up to max bytes into dst; the count, 0 at the end, or
 * a negative errno. */
typedef ssize_t (*gz_source_fn)(void *ud, char *dst, size_t max);

typedef struct gz_deflate gz_deflate_t;

/** A gzip encoder at level (1 fastest … 9 smallest) that pulls its input from source. */
gz_deflate_t *gz_deflate_new(int level, gz_source_fn source, void *ud);
/** Produce the next compressed bytes into dst (max > 0): the count (> 0), 0 once the gzip
 * stream is complete, or the source's negative errno (-EIO for an encoder failure). */
ssize_t gz_deflate_read(gz_deflate_t *g, char *dst, size_t max);
/** NULL-safe. */
void gz_deflate_free(gz_deflate_t *g);

#endif
