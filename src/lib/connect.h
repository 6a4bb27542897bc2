/* The Connect protocol (connectrpc.com) over the HTTP layer, JSON codec only.
 *
 * Unary: POST application/json, the body is the request message; 200 with the response message,
 * or an error status from err_status() with {"code":"not_found","message":...}.
 * Server streaming: POST application/connect+json, the body is one envelope (1 flag byte, 4-byte
 * big-endian length, message); the answer is 200 application/connect+json and a sequence of
 * envelopes ending with an end-of-stream envelope (flag 0x02) holding {} or {"error":{...}}.
 * Connect-Timeout-Ms bounds a call: a stream still running at the deadline ends with
 * deadline_exceeded. Keepalive-Ping-Interval (seconds) makes idle streams send the method's
 * keepalive message.
 */
#ifndef WRENN_CONNECT_H
#define WRENN_CONNECT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"
#include "http.h"

#define CONNECT_FLAG_COMPRESSED 0x01
#define CONNECT_FLAG_END_STREAM 0x02
#define CONNECT_MAX_MESSAGE     (4u << 20) /* largest request message accepted */

/** Parse one envelope header from data[0..len). Returns the total envelope size (5 + message)
 * when the whole envelope is present, 0 when more bytes are needed, or -EMSGSIZE when the
 * message would exceed max, -EINVAL for unknown flag bits. *flags and *msg_len are filled
 * whenever the 5-byte header is present. */
long connect_envelope_parse(const void *data, size_t len, size_t max, uint8_t *flags,
                            uint32_t *msg_len);

/** Append an envelope holding msg to out. */
void connect_envelope_add(buf_t *out, uint8_t flags, const void *msg, size_t len);

/** Append an end-of-stream envelope: {} for code 0, else {"error":{"code":..,"message":..}}. */
void connect_end_stream_add(buf_t *out, int code, const err_t *e);

/** Append the JSON error body {"code":"...","message":"..."} for code. */
void connect_error_json(buf_t *out, int code, const err_t *e);

/** Parse a Connect-Timeout-Ms value (1-10 digits). Returns ms (>= 0), or -EINVAL. */
long connect_parse_timeout(const char *v);

/** A call in progress, given to method handlers. */
typedef struct connect_call {
    http_req_t *req;
    void *ud;            /* the service's ud from connect_route() */
    int64_t deadline_ms; /* CLOCK_MONOTONIC ms when Connect-Timeout-Ms ends the call, 0: none */
    int64_t keepalive_ms;
} connect_call_t;

#define CONNECT_IDLE 0 /* nothing to send now: wait for the source's fd */
#define CONNECT_MSG  1 /* one message was appended */
#define CONNECT_DONE 2 /* the stream ended successfully */

/** Where a server stream's messages come from. next() never blocks: the layer waits on fd
 * (readable when next() may have something) and on the client socket. next() returns
 * CONNECT_MSG, CONNECT_IDLE, CONNECT_DONE, or a negative errno (with *e) to end the stream with
 * that error. free() runs exactly once, when the stream is over for any reason. */
typedef struct connect_source {
    int fd;
    int (*next)(void *ud, buf_t *out, err_t *e);
    void (*free)(void *ud);
    const char *keepalive; /* message sent after keepalive_ms of silence; NULL: never */
    void *ud;
} connect_source_t;

typedef int (*connect_unary_fn)(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
typedef int (*connect_stream_fn)(connect_call_t *c, const json_t *req, connect_source_t *src,
                                 err_t *e);

typedef struct connect_method {
    const char *path;       /* "/process.Process/Start" */
    connect_unary_fn unary; /* exactly one of unary and stream */
    connect_stream_fn stream;
} connect_method_t;

/** What a Connect route needs at run time; owned by the caller, must outlive the server. */
typedef struct connect_binding {
    const connect_method_t *m;
    int (*check)(http_req_t *req, void *ud, err_t *e);
    void *ud;
} connect_binding_t;

/** Fill route (and its binding b) for method: POST only, JSON request bodies up to
 * CONNECT_MAX_MESSAGE. `check` (may be NULL) runs when headers arrive, e.g. for
 * authentication; its errors are answered in Connect form. ud reaches handlers as call->ud. */
void connect_route(http_route_t *route, connect_binding_t *b, const connect_method_t *method,
                   int (*check)(http_req_t *req, void *ud, err_t *e), void *ud);

/** Current CLOCK_MONOTONIC time in milliseconds. */
int64_t connect_now_ms(void);

#endif
