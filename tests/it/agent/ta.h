/* Host-agent integration harness: builds (once, into a shared cache) the guest images, starts the
 * real wrenn-agent on an ephemeral port with a private root, calls its RPCs, and checks that
 * nothing a sandbox owns outlives it. */
#ifndef WRENN_TEST_TA_H
#define WRENN_TEST_TA_H

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "harness.h"

#define TA_SECRET "test-secret-0123456789abcdef"

typedef struct ta_agent {
    th_envd_t h;    /* url/port/pid, reused for th_unary/th_stream */
    char root[320]; /* --root (kept across restarts of the same agent) */
    char dir[256];  /* scratch: logs, port file */
    char log[320];
    bool own_secret; /* no --secret: the agent makes <root>/agent.secret (see ta_start_own) */
} ta_agent_t;

/** The shared image cache (WRENN_TEST_IMAGE_CACHE, default /var/cache/wrenn/test-images). */
const char *ta_cache(void);

/** Whether this build has a VMM driver, a network module and the image scripts. */
bool ta_have_vms(void);

/** Build image name (and the kernel) into the cache unless it is already there. 0 or -1. */
int ta_ensure_image(const char *name);

/** Start an agent on a fresh root whose images/ and kernels/ link to the cache. */
int ta_start(ta_agent_t *a);
/** Like ta_start, but without --secret, so the agent generates and saves its own. */
int ta_start_own(ta_agent_t *a);
/** Start (again) on a->root, e.g. after ta_kill9(). */
int ta_restart(ta_agent_t *a);
/** SIGKILL the agent (VMs keep running). */
void ta_kill9(ta_agent_t *a);
/** Destroy every sandbox it lists, SIGTERM it, remove root and scratch. */
void ta_stop(ta_agent_t *a);

/** Unary call of method with json; returns the HTTP status and the parsed body in *out. */
long ta_call(ta_agent_t *a, const char *method, const char *json, json_t **out);
/** Same with an explicit Authorization header value (NULL: none). */
long ta_call_auth(ta_agent_t *a, const char *method, const char *json, const char *auth,
                  json_t **out);

/** Create a sandbox from template; returns its id (malloc'd) or NULL. */
char *ta_create(ta_agent_t *a, const char *template_name, int timeout_sec);
/** Exec /bin/sh -c script; returns the exit code, stdout/stderr decoded into out/err (may be
 * NULL). -1000 when the call failed. */
int ta_sh(ta_agent_t *a, const char *id, const char *script, buf_t *out, buf_t *err);

/** Count what is left behind: QEMU processes in the per-VM uid range, wrenn namespaces, wrv*
 * veths, nft rules naming our veths, entries under root/sandboxes (when root is non-NULL).
 * Prints what it finds. */
int ta_leftovers(const char *root);

#endif
