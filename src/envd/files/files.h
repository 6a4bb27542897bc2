/* GET /files and POST /files: internals shared by the files/ sources. */
#ifndef WRENN_ENVD_FILES_H
#define WRENN_ENVD_FILES_H

#include "envd.h"

/** The /files signing rule (guest-agent.md §2.1). With no access token set, everything passes.
 * Otherwise an X-Access-Token header decides on its own (it must equal the token), and without
 * one the query must carry `signature` = "v1_" + unpadded base64 of SHA-256 of
 * "<path>:<op>:<username>:<token>[:<signature_expiration>]", where an expiration must not be in
 * the past. op is "read" or "write". → -ENOKEY / -EKEYREJECTED (401), -EINVAL for a malformed
 * expiration. */
int files__check_signing(envd_t *d, http_req_t *r, const char *op, err_t *e);

/** Turn errno from a file operation on path into an error code with a client message:
 * ENOENT/ENOTDIR → -ENOENT, EACCES/EPERM/EROFS → -EACCES, ENOSPC/EDQUOT → 507, EISDIR, ELOOP,
 * ENAMETOOLONG, EFBIG keep their meaning; anything else → -EIO (logged by the caller). */
int files__errno(int err, const char *what, const char *path, err_t *e);

/** Last component of a cleaned absolute path ("/" for "/"). Points into path. */
const char *files__base(const char *path);

/** The GET /files handler. */
void files__download(http_req_t *r, void *ud);

/** The POST /files route callbacks. */
int files__upload_headers(http_req_t *r, void *ud, err_t *e);
int files__upload_body(http_req_t *r, const char *data, size_t len, void *ud, err_t *e);
void files__upload_handle(http_req_t *r, void *ud);
void files__upload_cleanup(http_req_t *r, void *ud);

#endif
