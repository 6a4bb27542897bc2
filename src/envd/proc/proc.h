/* process.Process request decoding (guest-agent.md §4, e2b-compat.md §2.5).
 *
 * Pure functions from a parsed request message to plain C structs: no I/O, no daemon state, so
 * the handlers and a libFuzzer target share them. Every decoder accepts proto3 JSON as pjson.h
 * does (lowerCamelCase or snake_case names, null as absent, unknown fields ignored) and returns 0,
 * or -EINVAL with a message naming the field (signals other than SIGTERM/SIGKILL: -ENOSYS). On
 * failure the output is left empty; the matching _fini is NULL-safe and may always be called.
 */
#ifndef WRENN_ENVD_PROC_H
#define WRENN_ENVD_PROC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

/** ProcessSelector: a pid or a tag (exactly one). */
typedef struct proc_selector {
    bool has_pid;
    uint32_t pid;
    char *tag; /* malloc'd; set when selecting by tag */
} proc_selector_t;

/** StartRequest. */
typedef struct proc_start_req {
    char *cmd;   /* never empty */
    char **args; /* nargs strings, NULL-terminated; never NULL after success */
    size_t nargs;
    json_t *envs; /* object of string → string (new reference; empty when absent) */
    char *cwd;    /* NULL when absent */
    bool has_pty;
    uint16_t cols, rows;
    char *tag;       /* NULL when absent */
    bool stdin_open; /* `stdin`; absent means true */
} proc_start_req_t;

/** ProcessInput kinds. */
typedef enum proc_input_kind { PROC_INPUT_STDIN = 1, PROC_INPUT_PTY = 2 } proc_input_kind_t;

/** SendInputRequest. */
typedef struct proc_input_req {
    proc_selector_t sel;
    proc_input_kind_t kind;
    buf_t data; /* the decoded bytes (may be empty) */
} proc_input_req_t;

/** SendSignalRequest; signo is SIGTERM or SIGKILL. */
typedef struct proc_signal_req {
    proc_selector_t sel;
    int signo;
} proc_signal_req_t;

/** StreamInputRequest message kinds. */
typedef enum proc_sin_kind {
    PROC_SIN_START = 1,     /* selects the process; must come first */
    PROC_SIN_DATA = 2,      /* input bytes */
    PROC_SIN_KEEPALIVE = 3, /* nothing to do */
} proc_sin_kind_t;

/** One StreamInputRequest message. */
typedef struct proc_sin_msg {
    proc_sin_kind_t kind;
    proc_selector_t sel;     /* PROC_SIN_START */
    proc_input_kind_t input; /* PROC_SIN_DATA */
    buf_t data;              /* PROC_SIN_DATA */
} proc_sin_msg_t;

/** UpdateRequest; without `pty` the update changes nothing. */
typedef struct proc_update_req {
    proc_selector_t sel;
    bool has_pty;
    uint16_t cols, rows;
} proc_update_req_t;

/** StartRequest → *out. Requires process.cmd; args must be strings, envs a map of strings with
 * names that are non-empty and have no '='; pty sizes must fit 16 bits. */
int proc_decode_start(const json_t *in, proc_start_req_t *out, err_t *e);
void proc_start_req_fini(proc_start_req_t *r);

/** The selector in field `process` of in (ConnectRequest, CloseStdinRequest, and the others). */
int proc_decode_selector(const json_t *in, proc_selector_t *out, err_t *e);
void proc_selector_fini(proc_selector_t *s);

/** SendInputRequest: input.stdin or input.pty (base64) is required. */
int proc_decode_input(const json_t *in, proc_input_req_t *out, err_t *e);
void proc_input_req_fini(proc_input_req_t *r);

/** SendSignalRequest: SIGNAL_SIGTERM / SIGNAL_SIGKILL by name or number (15 / 9); any other
 * value, SIGNAL_UNSPECIFIED or an absent signal → -ENOSYS. */
int proc_decode_signal(const json_t *in, proc_signal_req_t *out, err_t *e);
void proc_signal_req_fini(proc_signal_req_t *r);

/** One StreamInputRequest message: exactly one of start {process}, data {input}, keepalive. */
int proc_decode_stream_input(const json_t *in, proc_sin_msg_t *out, err_t *e);
void proc_sin_msg_fini(proc_sin_msg_t *m);

/** UpdateRequest. */
int proc_decode_update(const json_t *in, proc_update_req_t *out, err_t *e);
void proc_update_req_fini(proc_update_req_t *r);

#endif
