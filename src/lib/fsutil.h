/* Small file-system helpers every program needs: atomic replacement and mkdir -p. */
#ifndef WRENN_FSUTIL_H
#define WRENN_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "err.h"

/** Replace path with data atomically: write "<path>.tmp" (O_NOFOLLOW, created with mode, then
 * chmod'ed to it whatever the umask), optionally fsync it, and rename it over path. Readers see
 * either the old file or the whole new one. On failure the temporary file is removed. */
int fsutil_write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool sync,
                        err_t *e);

/** fsync the file or directory at path (opened read-only, symlinks not followed). */
int fsutil_fsync(const char *path, err_t *e);

/** Create path and any missing parents with mode; an existing directory is success. */
int fsutil_mkdir_p(const char *path, mode_t mode, err_t *e);

/** Write "<port>\n" atomically to path: how a program started on port 0 tells its parent where
 * it listens. */
int fsutil_write_port_file(const char *path, int port, err_t *e);

/** Copy the regular file from to `to` (created or truncated, mode 0600, O_NOFOLLOW), in the
 * kernel (copy_file_range), keeping holes: only from's data extents are copied. On failure
 * `to` is removed. */
int fsutil_copy_file(const char *from, const char *to, err_t *e);

#endif
