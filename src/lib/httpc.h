/* HTTP/1.1 client on libcurl, for programs that call other Wrenn programs (and for tests).
 *
 * One call = one request. Thread-safe as long as each thread uses its own httpc_t (connections
 * are reused within one httpc_t). Call httpc_global_init() once at start-up.
 */
#ifndef WRENN_HTTPC_H
#define WRENN_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

typedef struct httpc httpc_t;

/** Initialise libcurl; call once before threads start. */
int httpc_global_init(void);

httpc_t *httpc_new(void);
void httpc_free(httpc_t *c);

typedef struct httpc_resp {
    long status;
    buf_t body;    /* the whole body, unless a body callback took it */
    buf_t headers; /* raw response header lines of the final response */
} httpc_resp_t;

void httpc_resp_init(httpc_resp_t *r);
void httpc_resp_fini(httpc_resp_t *r);
/** A response header's value (case-insensitive name), copied into out; false when absent. */
bool httpc_resp_header(const httpc_resp_t *r, const char *name, char *out, size_t n);

typedef struct httpc_req {
    const char *method; /* "GET", "POST", ... */
    const char *url;
    const char *const *headers; /* "Name: value" strings, NULL-terminated; may be NULL */
    const void *body;           /* request body, or NULL */
    size_t body_len;
    /* Optional streamed request body: fill dst with up to max bytes, return the count, 0 at the
     * end, or < 0 to abort. When set, the body goes out chunked. */
    long (*body_read)(void *ud, char *dst, size_t max);
    /* Optional: receive the response body as it arrives instead of buffering it; return < 0
     * to abort the transfer (then httpc_do returns -ECANCELED). */
    int (*on_data)(void *ud, const char *data, size_t len);
    void *ud;
    long timeout_ms;         /* 0: none */
    long connect_timeout_ms; /* for the TCP connect alone; 0: libcurl's default */
    long idle_timeout_ms;    /* abort when no byte moves for this long (>= 1 s); 0: none */
    bool accept_gzip;        /* let libcurl ask for and decode gzip */
} httpc_req_t;

/** Perform the request. Returns 0 when a response arrived (any status), or a negative errno:
 * -ECONNREFUSED, -ETIMEDOUT, -ECANCELED, -EIO, or the connect's own errno when it failed
 * otherwise (-EHOSTUNREACH, -ENETUNREACH, ...). */
int httpc_do(httpc_t *c, const httpc_req_t *req, httpc_resp_t *resp, err_t *e);

#endif
