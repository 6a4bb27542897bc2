/* envdc: the host agent's client of one sandbox's guest agent (wrenn-envd) over HTTP.
 *
 * Every call opens its own libcurl handle, so calls on one envdc_t may run on any thread at
 * once; the envdc_t itself is read-only after envdc_target(). The guest is untrusted: every
 * length and message it sends is bounded before use.
 */
#ifndef WRENN_AGENT_ENVDC_H
#define WRENN_AGENT_ENVDC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

/** Where one guest agent answers, and the access token it was given at /init. */
typedef struct envdc {
    char base[64];  /* "http://10.11.0.1:49983" */
    char token[96]; /* X-Access-Token; empty before /init */
} envdc_t;

/** Fill c for host_ip:port with token (may be NULL). */
void envdc_target(envdc_t *c, const char *host_ip, int port, const char *token);

/** Poll GET /health every 20 ms until it answers 2xx or timeout_ms passes (-ETIMEDOUT).
 * alive (may be NULL) is asked between tries; when it returns false the wait stops with
 * -ECHILD (the VM died). */
int envdc_wait_health(const envdc_t *c, long timeout_ms, int (*alive)(void *ud), void *ud,
                      err_t *e);

/** POST /init with the current wall-clock time, env_vars (object, may be NULL) and c->token as
 * the new access token. old_token (when non-NULL) is the token the guest already has (a guest
 * restored from a snapshot), shown to authorise the change to c->token; entropy adds 64 bytes
 * of host randomness to the guest's RNG and reseeds it. */
int envdc_reinit(const envdc_t *c, const char *old_token, const json_t *env_vars, bool entropy,
                 err_t *e);

/** envdc_reinit as the first call to a guest that is still starting: POST /init is tried every
 * 20 ms (short connects) until the guest answers, which saves a separate /health round trip.
 * timeout_ms and alive as for envdc_wait_health; a guest's error answer ends the wait. */
int envdc_wait_init(const envdc_t *c, long timeout_ms, int (*alive)(void *ud), void *ud,
                    const char *old_token, const json_t *env_vars, bool entropy, err_t *e);

/** Callbacks of one process run; any may be NULL. A callback returning < 0 stops the call
 * (envdc_exec then returns -ECANCELED; the guest process keeps running). */
typedef struct envdc_exec_cb {
    int (*on_start)(void *ud, uint32_t pid);
    /* stream: 1 stdout, 2 stderr. */
    int (*on_output)(void *ud, int stream, const char *data, size_t len);
    /* error: the guest's wait text ("exit status 1", "signal: killed"), "" on exit 0. */
    int (*on_end)(void *ud, int exit_code, const char *error);
    /* Called on the guest's keepalive (every ENVDC_KEEPALIVE_S while the process is quiet), so
     * a caller whose own client went away can stop waiting. */
    int (*on_idle)(void *ud);
} envdc_exec_cb_t;

/** How often a quiet process stream carries a keepalive, and how long the stream may then stay
 * silent before the guest counts as gone (-ETIMEDOUT). */
#define ENVDC_KEEPALIVE_S 10
#define ENVDC_SILENCE_MS  45000

typedef struct envdc_exec_req {
    const char *cmd;
    const char *const *args; /* nargs entries */
    size_t nargs;
    long timeout_ms;  /* 0: no deadline */
    const char *user; /* NULL: root */
} envdc_exec_req_t;

/** Run a process through process.Process/Start (stdin off) and report its events until it
 * ends. Returns 0 after the end event, or a negative errno: guest Connect errors keep their
 * code (-ENOENT, -EINVAL, ...), transport failures are -EIO/-ECONNREFUSED/-ETIMEDOUT (or another
 * connect errno such as -EHOSTUNREACH). */
int envdc_exec(const envdc_t *c, const envdc_exec_req_t *r, const envdc_exec_cb_t *cb, void *ud,
               err_t *e);

/** Upload a file as root through POST /files (application/octet-stream). The body is data[len]
 * or, when body_read is set, streamed from it (return count, 0 at the end, < 0 to abort).
 * A guest 4xx keeps its meaning (-EINVAL, -ENOENT, -ENOSPC...), others are -EIO. */
int envdc_upload(const envdc_t *c, const char *path, const void *data, size_t len,
                 long (*body_read)(void *ud, char *dst, size_t max), void *ud, err_t *e);

/** Download a file as root through GET /files. Each piece of the body goes to on_data (return
 * < 0 to stop: -ECANCELED), only once the guest answered 200. Errors as envdc_upload. */
int envdc_download(const envdc_t *c, const char *path,
                   int (*on_data)(void *ud, const char *data, size_t len), void *ud, err_t *e);

#endif
