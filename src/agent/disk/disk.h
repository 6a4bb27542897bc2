/* Sandbox root disks: a copy-on-write qcow2 overlay over a template's read-only base image.
 *
 * The overlay is written directly (a fresh qcow2 v3 image with no allocated data clusters and a
 * backing-file reference), so creating one costs a few small writes and no process. The base is
 * never opened for writing here or by QEMU (it is the overlay's backing file, which QEMU opens
 * read-only). An overlay records the base by absolute path and does not notice when the base
 * changes, so callers must recreate overlays whenever a template is rebuilt.
 *
 * All functions are thread-safe (no shared state).
 */
#ifndef WRENN_AGENT_DISK_H
#define WRENN_AGENT_DISK_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/** Create a qcow2 overlay at overlay_path whose backing file is base (format "raw" or "qcow2";
 * the overlay's virtual size is the base's). base is resolved to an absolute path, which is what
 * the overlay records. The overlay is created mode 0600 and never replaces an existing file.
 * Errors: -EEXIST (overlay_path exists), -ENOENT (no base), -EINVAL (bad format, base size not a
 * multiple of 512, path too long), or the errno of a failed write (the partial file is removed). */
int disk_overlay_create(const char *base, const char *format, const char *overlay_path, err_t *e);

/** Remove a disk file; a missing file is not an error. */
int disk_remove(const char *path, err_t *e);

/** Read the backing file name recorded in a qcow2 image into buf (made absolute against the
 * image's directory when it is relative). Returns the length, 0 when the image has no backing
 * file, -EINVAL when path is not a qcow2 image, -ENAMETOOLONG when buf is too small. */
int disk_qcow2_backing(const char *path, char *buf, size_t len, err_t *e);

/** The virtual size in bytes of an image of the given format ("raw": the file size). */
int disk_virtual_size(const char *path, const char *format, uint64_t *out, err_t *e);

#endif
