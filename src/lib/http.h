/* HTTP/1.1 server on libmicrohttpd: routing, buffered and streamed request bodies, buffered,
 * file-backed and streamed (chunked) responses, CORS, and the REST error envelope.
 *
 * Threading: one thread per connection. Route callbacks for one request run on that request's
 * connection thread, one after the other; a stream's read callback runs there too and may block
 * (it must poll the client socket so a vanished client is noticed; see http_req_socket()).
 * Different requests run concurrently, so anything handlers share needs its own lock.
 */
#ifndef WRENN_HTTP_H
#define WRENN_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "err.h"

typedef struct http_server http_server_t;
typedef struct http_req http_req_t;

#define HTTP_DEFAULT_MAX_BODY (1u << 20)

/** A request's error writer: turns (code, message) into a response in the route's dialect. */
typedef void (*http_error_fn)(http_req_t *req, int code, const err_t *e);

typedef struct http_route {
    const char *method; /* "GET", "POST", ...; NULL matches any method. GET also serves HEAD. */
    const char *path;   /* exact path, or a prefix when it ends with '*' */
    /* Optional. Called once the headers are in, before any body byte. Return < 0 (with *e) to
     * answer with that error at once; the body is then never read. */
    int (*on_headers)(http_req_t *req, void *ud, err_t *e);
    /* Optional. When set, the body is handed over piece by piece as it arrives and is not
     * buffered. Return < 0 (with *e) to fail: the rest of the body is read and dropped and the
     * error becomes the response; handle() is not called. */
    int (*on_body)(http_req_t *req, const char *data, size_t len, void *ud, err_t *e);
    /* Called when the whole body is in (buffered when on_body is NULL). Must answer with one of
     * the http_respond_* calls; a handler that does not answers 500. */
    void (*handle)(http_req_t *req, void *ud);
    /* Optional cleanup of per-request state set with http_req_set_state(); always called. */
    void (*cleanup)(http_req_t *req, void *ud);
    size_t max_body;     /* buffered-body limit; 0 → HTTP_DEFAULT_MAX_BODY */
    http_error_fn error; /* NULL → REST envelope {"code":int,"message":str} */
    void *ud;
} http_route_t;

typedef struct http_server_cfg {
    const char *addr;         /* bind address; NULL → all addresses, IPv4 and IPv6 */
    int port;                 /* 0 → an ephemeral port (see http_server_port()) */
    bool cors;                /* answer CORS preflights and add CORS headers */
    unsigned idle_timeout_s;  /* 0 → 640 s */
    unsigned max_connections; /* 0 → 1024 */
} http_server_cfg_t;

/** Start serving. routes[] (terminated by a zero entry) must outlive the server. */
int http_server_start(const http_server_cfg_t *cfg, const http_route_t *routes, http_server_t **out,
                      err_t *e);
/** The bound port. */
int http_server_port(const http_server_t *s);
/** Stop accepting, close connections and free. NULL-safe. */
void http_server_free(http_server_t *s);

/* Request accessors. Strings are owned by the request and live until it completes. */
const char *http_req_method(const http_req_t *r);
/** The path, percent-decoded, without the query string. */
const char *http_req_path(const http_req_t *r);
/** A header value (case-insensitive name), or NULL. */
const char *http_req_header(const http_req_t *r, const char *name);
/** A query argument, percent-decoded, or NULL when absent ("" when present but empty). */
const char *http_req_query(const http_req_t *r, const char *name);
/** Call fn for every query argument in order (repeated names included), percent-decoded. */
void http_req_query_each(const http_req_t *r,
                         void (*fn)(void *ud, const char *name, const char *value), void *ud);
/** The buffered body (NUL-terminated) and its length; empty for streamed routes. */
const char *http_req_body(const http_req_t *r, size_t *len);
/** The client's socket, for a streaming response to poll for a vanished client. */
int http_req_socket(const http_req_t *r);
/** The client's IP address as text ("127.0.0.1", "::1") into out; "" when unknown. */
void http_req_peer(const http_req_t *r, char *out, size_t n);
/** A per-request arena, freed when the request completes. */
struct arena *http_req_arena(http_req_t *r);
void http_req_set_state(http_req_t *r, void *state);
void *http_req_state(const http_req_t *r);

/* Responses: exactly one per request. */
/** Add a response header (copied). Call before responding. */
void http_set_header(http_req_t *r, const char *name, const char *value);
void http_respond(http_req_t *r, int status, const char *content_type, const void *body,
                  size_t len);
/** Answer with the bytes of b, taking them (b is left empty). */
void http_respond_buf(http_req_t *r, int status, const char *content_type, buf_t *b);
void http_respond_json(http_req_t *r, int status, const json_t *body);
/** The REST error envelope {"code":<status>,"message":...} with status from err_status(code). */
void http_respond_error(http_req_t *r, int code, const err_t *e);
/** Serve size bytes of fd from offset (sendfile). Takes the fd. */
void http_respond_fd(http_req_t *r, int status, const char *content_type, int fd, uint64_t offset,
                     uint64_t size);

#define HTTP_STREAM_END   (-1) /* the body is complete */
#define HTTP_STREAM_ABORT (-2) /* drop the connection: the body is broken */

/** Produce up to max bytes into dst; may block. Returns the count (> 0), HTTP_STREAM_END or
 * HTTP_STREAM_ABORT. */
typedef ssize_t (*http_stream_read_fn)(void *ud, char *dst, size_t max);

/** A chunked response whose body comes from read(); free(ud) runs once the response is done
 * with (sent, or the client went away). */
void http_respond_stream(http_req_t *r, int status, const char *content_type,
                         http_stream_read_fn read, void (*free_fn)(void *ud), void *ud);

/** Whether the client hung up (non-blocking check on the socket). */
bool http_socket_gone(int sock);

#endif
