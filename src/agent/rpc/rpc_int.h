/* Internals shared by rpc.c and stream.c. */
#ifndef WRENN_AGENT_RPC_INT_H
#define WRENN_AGENT_RPC_INT_H

#include <stdbool.h>

#include "rpc.h"

typedef struct rpc_exec {
    const char *id, *cmd;
    const char **args; /* nargs entries (malloc'd array; strings borrowed from the request) */
    size_t nargs;
    long timeout_ms;
} rpc_exec_t;

int rpc__check(http_req_t *req, void *ud, err_t *e);
int rpc__sandbox_id(const json_t *in, const char **id, err_t *e);
int rpc__path(const json_t *in, const char **path, err_t *e);
int rpc__exec_req(const json_t *in, rpc_exec_t *x, bool unary, err_t *e);
json_t *rpc__b64(const void *data, size_t len);
/** Log a failed call (warn for 5xx, debug for 4xx) and return rc. */
int rpc__log_fail(const char *method, const char *id, int rc, const err_t *e);

int rpc__exec_stream(connect_call_t *c, const json_t *in, connect_source_t *src, err_t *e);
int rpc__read_stream(connect_call_t *c, const json_t *in, connect_source_t *src, err_t *e);
void rpc__write_stream_route(rpc_t *rpc, http_route_t *route);

#endif
