/* Integration-test harness: start the real wrenn-envd, talk HTTP, Connect unary and Connect
 * streams to it. Tests use cmocka and print TAP (see tests/README.md). */
#ifndef WRENN_TEST_HARNESS_H
#define WRENN_TEST_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "httpc.h"

typedef struct th_envd {
    pid_t pid;
    int port;
    char url[64];  /* "http://127.0.0.1:<port>" */
    char dir[256]; /* scratch directory owned by this instance (removed at stop) */
} th_envd_t;

/** Start build's wrenn-envd (WRENN_TEST_ENVD_BIN overrides the path) on an ephemeral port with a
 * private run dir, and wait until /health answers. extra: more flags, NULL-terminated (or NULL).
 * Returns 0 or a negative errno. */
int th_envd_start(th_envd_t *e, const char *const *extra);
/** SIGTERM, wait (SIGKILL after 5 s), remove the scratch dir. Returns the exit status. */
int th_envd_stop(th_envd_t *e);
/** Whether the process is still alive (not crashed). */
bool th_envd_alive(th_envd_t *e);

/** One HTTP request to e (path includes any query); headers "Name: value", NULL-terminated. */
int th_http(th_envd_t *e, const char *method, const char *path, const char *const *headers,
            const void *body, size_t len, httpc_resp_t *out);

/** Connect unary call: POST application/json. */
int th_unary(th_envd_t *e, const char *path, const char *json, const char *const *headers,
             httpc_resp_t *out);
/** Parse a response body as JSON (NULL when it is not JSON). New reference. */
json_t *th_json(const httpc_resp_t *r);

/** A finished server stream: every message and the end-of-stream payload. */
typedef struct th_stream {
    long status;
    char ctype[128];
    size_t n;
    json_t **msgs;  /* the messages in order (new references) */
    json_t *end;    /* end-of-stream JSON, NULL when none arrived */
    bool bad_frame; /* a malformed envelope was received */
} th_stream_t;

/** Connect server-stream call: sends json in one envelope, collects until the end (or until
 * on_msg returns non-zero, which drops the connection, like a client that goes away). */
int th_stream(th_envd_t *e, const char *path, const char *json, const char *const *headers,
              int (*on_msg)(void *ud, json_t *msg), void *ud, th_stream_t *out);
void th_stream_fini(th_stream_t *s);

/** Base64 of bytes (malloc'd). And decoding of a JSON string field into out. */
char *th_b64(const void *data, size_t n);
bool th_unb64(const char *s, buf_t *out);

/** Concatenate the decoded stdout (or "stderr"/"pty") data of process events in s. */
void th_collect_output(const th_stream_t *s, const char *which, buf_t *out);
/** The `end` event of a process stream, or NULL. */
json_t *th_end_event(const th_stream_t *s);

/** Run a shell command (via /bin/sh -c) and return its exit status; for test setup only. */
int th_sh(const char *cmd);

/** A fresh temporary directory under /tmp (malloc'd path); th_rmrf removes a tree. */
char *th_tmpdir(void);
void th_rmrf(const char *path);

/** cmocka TAP setup: call first in main(). */
void th_init(void);

#endif
