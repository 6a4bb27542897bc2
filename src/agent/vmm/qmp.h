/* A small QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * QMP is newline-delimited JSON: the server greets, the client negotiates capabilities, then
 * sends {"execute": ..., "id": N} and reads until the reply with that id; asynchronous events
 * ({"event": ...}) may arrive at any time in between and are queued (the newest QMP_EVENTS_MAX)
 * for qmp_take_event()/qmp_wait_event(). QEMU serves one QMP client at a time on a socket, so a
 * second qmp_connect() to the same VM gets no greeting until the first one is closed.
 *
 * Thread-safety: a qmp_t is used by one thread at a time.
 */
#ifndef WRENN_AGENT_QMP_H
#define WRENN_AGENT_QMP_H

#include <jansson.h>

#include "err.h"

#define QMP_EVENTS_MAX 64

typedef struct qmp qmp_t;

/** Connect to the QMP socket at path, read the greeting and negotiate capabilities, all within
 * timeout_ms. While waiting, a readable pidfd (>= 0) means the VMM died: -ESRCH. Errors:
 * -ETIMEDOUT, -ECONNREFUSED/-ENOENT (no listener), -EPROTO (not QMP), -ESRCH. */
int qmp_connect(const char *path, int pidfd, int timeout_ms, qmp_t **out, err_t *e);

/** Execute cmd with args (a JSON object, stolen; NULL for none) and wait up to timeout_ms for
 * its reply. On success *ret (if ret is non-NULL) gets a new reference to the "return" value.
 * A QMP error reply is -EIO with QEMU's description in e ("CommandNotFound" → -ENOSYS).
 * When the connection closes before the reply: -ECONNRESET (for "quit", success). */
int qmp_execute(qmp_t *q, const char *cmd, json_t *args, json_t **ret, int timeout_ms, err_t *e);

/** qmp_execute, with fd passed to QEMU alongside the command (SCM_RIGHTS), as "getfd" and
 * "add-fd" expect. fd stays the caller's. */
int qmp_execute_fd(qmp_t *q, const char *cmd, json_t *args, int fd, json_t **ret, int timeout_ms,
                   err_t *e);

/** Pop the oldest queued event (new reference), or NULL when none is queued. Does not read. */
json_t *qmp_take_event(qmp_t *q);

/** Wait up to timeout_ms for an event named name (queued ones count, oldest first); events of
 * other names stay queued. *ev (if non-NULL) gets a new reference. -ETIMEDOUT, -ECONNRESET. */
int qmp_wait_event(qmp_t *q, const char *name, int timeout_ms, json_t **ev, err_t *e);

/** The connected socket (for polling; owned by q). */
int qmp_fd(const qmp_t *q);

/** Close the connection and free; NULL-safe. */
void qmp_free(qmp_t *q);

#endif
