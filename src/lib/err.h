/* Errors: negative errno codes plus an optional context-carrying message, no allocation.
 *
 * Fallible functions return >= 0 on success and a negative errno on failure. They may also fill
 * an err_t with a human-readable message; callers higher up add context with err_wrap(). The
 * message is for logs and, where err_public() says so, for clients; detail that must not leak is
 * kept out of it by the code that sets it.
 *
 * err_status() is the single table that turns an error code into an HTTP status and a Connect
 * code; handlers never invent status codes of their own.
 */
#ifndef WRENN_ERR_H
#define WRENN_ERR_H

#include <errno.h>
#include <stdbool.h>

#define ERR_MSG_MAX 256

typedef struct err {
    int code;              /* negative errno, 0 when unset */
    char msg[ERR_MSG_MAX]; /* NUL-terminated; empty when unset */
} err_t;

/** Set *e (if non-NULL) to code (a negative errno) and a formatted message; returns code. */
int err_set(err_t *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/** Prefix e->msg with formatted context ("context: old message"); returns e->code (or -EIO when
 * e is NULL or unset). Truncates rather than allocating. */
int err_wrap(err_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Set *e from errno as left by a failed system call: "what: strerror"; returns -errno. */
int err_errno(err_t *e, const char *what);

/** Clear *e. */
void err_clear(err_t *e);

/** Where one error code lands on the wire. */
typedef struct err_status {
    int http;             /* HTTP status for REST and Connect unary errors */
    const char *connect;  /* Connect code string, e.g. "not_found" */
    const char *fallback; /* public message when the error has no message of its own */
} err_status_t;

/** Map a negative errno (or 0) to its wire status; unknown codes map to 500 "internal". */
err_status_t err_status(int code);

/** The message to show a client: e->msg when set, else the table's fallback. Internal errors
 * (status 500) always show the fallback so no host detail leaks. */
const char *err_public(const err_t *e, int code);

/** Map a Connect code string back to a negative errno (for clients); unknown → -EIO. */
int err_from_connect(const char *code);

#endif
