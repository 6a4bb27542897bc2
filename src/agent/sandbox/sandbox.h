/* The sandbox manager: every sandbox this agent runs, its lifecycle, persistence and reaping.
 *
 * Locking: one table lock guards the id → sandbox table and the slot bitmap and is never held
 * across I/O; each sandbox has its own mutex that orders lifecycle calls on it (create, destroy,
 * set-timeout, reaping). Guest calls (exec, files) only copy the sandbox's address and token
 * under that mutex and then talk to the guest without any lock, so a long exec never blocks a
 * destroy. All functions are thread-safe.
 *
 * Each sandbox's record is persisted to <root>/sandboxes/<id>/record.json (written to a
 * temporary file and renamed), so a restarted agent re-adopts VMs that are still running.
 */
#ifndef WRENN_AGENT_SANDBOX_H
#define WRENN_AGENT_SANDBOX_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envdc/envdc.h"
#include "err.h"

typedef struct sbx_mgr sbx_mgr_t;

/** Bounds on what one sandbox may ask for (CreateSandbox beyond them is invalid_argument). */
#define SBX_MAX_VCPUS     16
#define SBX_MIN_MEMORY_MB 128
#define SBX_MAX_MEMORY_MB 16384
#define SBX_MAX_TIMEOUT_S (30LL * 24 * 3600)
/** First uid/gid of the per-VM identities: slot i runs as SBX_UID_BASE + i. */
#define SBX_UID_BASE 200000

typedef struct sbx_mgr_cfg {
    const char *root;     /* agent root dir (kernels/, images/, templates/, sandboxes/) */
    unsigned max_layers;  /* memory layers before a merge; 0 → 10 */
    unsigned pool_size;   /* warm pool: sandboxes kept restored per snapshot template in use
                           * (pool.c); 0: none */
    long boot_timeout_ms; /* how long a new guest may take to answer /health; 0 → 30 s */
    int guest_port;       /* envd port in the guest; 0 → 49983 */
} sbx_mgr_cfg_t;

/** What callers see of one sandbox. */
typedef struct sbx_info {
    char id[72];
    char status[16]; /* "running" or "paused" (others are transient and not listed) */
    char template_name[72];
    unsigned vcpus;
    unsigned memory_mb;
    char host_ip[16];
    int64_t created_at;     /* unix seconds */
    int64_t last_active_at; /* unix seconds */
    int64_t timeout_sec;
} sbx_info_t;

typedef struct sbx_create_req {
    const char *id;            /* NULL/"": "sb-" + 8 hex digits */
    const char *template_name; /* NULL/"": "minimal" */
    int64_t vcpus;             /* <= 0: 1 */
    int64_t memory_mb;         /* <= 0: 512 */
    int64_t timeout_sec;       /* inactivity TTL; 0: none */
    const json_t *env_vars;    /* optional object of strings for the guest's /init */
    const char *team;          /* optional: whose snapshot templates template_name may name */
    bool auto_pause;           /* at TTL expiry pause instead of destroying */
} sbx_create_req_t;

/** Create the manager: host network setup, re-adoption of live sandboxes recorded under root,
 * removal of everything no record owns, and the TTL reaper thread. */
int sbx_mgr_new(const sbx_mgr_cfg_t *cfg, sbx_mgr_t **out, err_t *e);

/** Stop the reaper and free the manager. VMs keep running (a restarted agent re-adopts
 * them). NULL-safe. */
void sbx_mgr_free(sbx_mgr_t *m);

/** Whether name is a safe template/sandbox name: 1-64 of [A-Za-z0-9._-], not starting with a
 * dot. */
bool sbx_safe_name(const char *name);

/** Boot a sandbox and wait for its guest agent. -EINVAL for a bad name or size, -ENOENT for a
 * missing template, -EEXIST for a taken id, -ENOSPC when no slot is free, others for boot
 * failures (everything made so far is removed again). */
int sbx_create(sbx_mgr_t *m, const sbx_create_req_t *req, sbx_info_t *out, err_t *e);

/** Stop the VM and remove the sandbox's network and files. -ENOENT when unknown. */
int sbx_destroy(sbx_mgr_t *m, const char *id, err_t *e);

/** The sandbox's info; -ENOENT when unknown or not running. */
int sbx_get(sbx_mgr_t *m, const char *id, sbx_info_t *out, err_t *e);

/** All running sandboxes (malloc'd array, caller frees). */
int sbx_list(sbx_mgr_t *m, sbx_info_t **out, size_t *n);

/** Set the inactivity TTL (0: none) and mark the sandbox active. */
int sbx_set_timeout(sbx_mgr_t *m, const char *id, int64_t timeout_sec, err_t *e);

/** Mark the sandbox active (resets its TTL). -ENOENT when unknown. */
int sbx_touch(sbx_mgr_t *m, const char *id, err_t *e);

/** Where to reach a running sandbox's guest agent (address and access token), marking it
 * active. -ENOENT when unknown or not running. */
int sbx_target(sbx_mgr_t *m, const char *id, envdc_t *out, err_t *e);

/** Ids of sandboxes the TTL reaper paused (autoPause) since the last call (malloc'd array of
 * malloc'd strings; the caller frees both). */
int sbx_take_auto_paused(sbx_mgr_t *m, char ***ids, size_t *n);

/** Pause: save the VM (device state + memory as a new layer) into <dir>/snap, stop it and free
 * its network slot. The sandbox stays known as "paused". -ENOENT unknown, -EALREADY when not
 * running. */
int sbx_pause(sbx_mgr_t *m, const char *id, err_t *e);

/** Resume a paused sandbox in a new slot (memory served lazily from its layers); sets the TTL
 * (timeout_sec >= 0) and fills out. -EALREADY when not paused. On failure it stays paused. */
int sbx_resume(sbx_mgr_t *m, const char *id, int64_t timeout_sec, sbx_info_t *out, err_t *e);

/** Turn a sandbox (running: it is paused first; or paused) into the snapshot template name of
 * team (NULL/"": no team), replacing one of the same name of that team. *size gets the
 * template's bytes on disk. The sandbox stays paused. */
int sbx_snapshot_create(sbx_mgr_t *m, const char *id, const char *team, const char *name,
                        int64_t *size, err_t *e);

/** Delete a snapshot template. Sandboxes made from it keep the files they use (hard links).
 * -ENOENT when there is none. */
int sbx_snapshot_delete(sbx_mgr_t *m, const char *team, const char *name, err_t *e);

/** Fork a running sandbox into count new ones (1..16): it is checkpointed and goes on running
 * (same slot); each child restores from that checkpoint in a slot of its own, sharing its
 * memory layers. *out (malloc'd, *n entries) gets the children. */
int sbx_fork(sbx_mgr_t *m, const char *id, unsigned count, int64_t timeout_sec, sbx_info_t **out,
             size_t *n, err_t *e);

#endif
