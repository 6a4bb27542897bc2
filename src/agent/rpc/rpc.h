/* The host agent's Connect RPC service, hostagent.v1.HostAgentService, over src/lib/connect.
 *
 * Every call must carry `Authorization: Bearer <secret>` (compared in constant time); anything
 * else is unauthenticated. Handlers run on the HTTP layer's connection threads and reach the
 * sandboxes only through the sandbox manager, which does its own locking.
 */
#ifndef WRENN_AGENT_RPC_H
#define WRENN_AGENT_RPC_H

#include <stddef.h>

#include "connect.h"
#include "http.h"
#include "sandbox/sandbox.h"

#define RPC_SERVICE "/hostagent.v1.HostAgentService/"
/** How many routes rpc_routes() fills at most. */
#define RPC_MAX_ROUTES 32

/** Service state; must outlive the server. */
typedef struct rpc {
    sbx_mgr_t *mgr;
    const char *secret; /* the bearer secret */
    connect_binding_t bindings[RPC_MAX_ROUTES];
} rpc_t;

/** Fill routes[0..) with every method (at most RPC_MAX_ROUTES, max given) and return the count.
 * rpc must outlive the server. */
size_t rpc_routes(rpc_t *rpc, http_route_t *routes, size_t max);

/** Whether got equals want, in time that depends only on their lengths. */
int rpc_secret_equal(const char *got, const char *want);

#endif
