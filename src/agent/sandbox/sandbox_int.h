/* Internals shared by the sandbox manager's files (sandbox.c, record.c, recover.c). */
#ifndef WRENN_AGENT_SANDBOX_INT_H
#define WRENN_AGENT_SANDBOX_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "mem/mem.h"
#include "net/net.h"
#include "sandbox.h"
#include "vmm/vmm.h"

enum sbx_state { SBX_CREATING, SBX_RUNNING, SBX_PAUSED, SBX_STOPPING, SBX_GONE, SBX_POOLED };

/** One sandbox. Fields below `lock` are guarded by it; refs by the table lock. */
typedef struct sbx {
    int refs;
    pthread_mutex_t lock;
    enum sbx_state state;
    char id[72];
    char name[72]; /* its directory's name, the VMM's name and cgroup: the id, except for a
                    * sandbox made for the warm pool (p-<hex>, kept when it is claimed) */
    char template_name[72];
    unsigned vcpus, memory_mb;
    int64_t created_at;
    _Atomic int64_t last_active_at;
    _Atomic int64_t timeout_sec;
    int slot;
    net_slot_t net;
    bool net_up;
    vmm_vm_t *vm;
    char token[72];
    char dir[512];
    uid_t uid;
    gid_t gid;
    char team[72];      /* owner of the snapshot templates it makes ("" = none given) */
    bool restored;      /* RAM is a private mapping of a memfs file over the snapshot in <dir>/snap
                         * (else the shared file <dir>/mem) */
    char memfs_key[33]; /* restored: the shared memfs instance it maps (memshare.c) */
    pid_t ms_pid;       /* ... and the server of it that its VM's mapping goes through */
    uint64_t ms_start;  /* (that server's start time: a later server of the key is not it) */
    pid_t memfs_pid;    /* an older agent's memfs of <dir>/memfs only (restored, no key) */
    uint64_t memfs_start; /* its start time, to detect pid reuse */
    char mem_path[560];   /* the RAM file when restored */
    bool auto_pause;      /* the TTL pauses it instead of destroying it */
} sbx_t;

struct sbx_mgr {
    char *root;
    char *sbx_root; /* <root>/sandboxes */
    long boot_timeout_ms;
    int guest_port;
    unsigned max_vcpus, max_memory_mb;
    unsigned tsc_khz;

    pthread_mutex_t lock; /* the table lock */
    sbx_t **tab;
    size_t ntab, captab;
    uint8_t *slots; /* NET_MAX_SLOTS + 1 entries, 1 = taken */

    char *tmpl_root;    /* <root>/templates: snapshot templates, <team>/<name>/ */
    char **auto_paused; /* ids the reaper paused, until ListSandboxes takes them (table lock) */
    size_t nauto_paused;
    unsigned max_layers; /* memory layers a snapshot may have before they are merged */

    struct sbx_pool *pool; /* warm pool (pool.c) */

    pthread_mutex_t ms_lock; /* shared memfs instances (memshare.c); never held across a spawn */
    pthread_cond_t ms_cond;  /* an instance finished starting or stopping */
    bool ms_recovering;      /* counts are being rebuilt: only sbx__mshare_prune stops */
    struct sbx_mshare *ms;
    size_t nms;

    pthread_t reaper;
    bool reaper_started;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    bool stopping;
};

/* record.c */
/** Write s's record atomically into s->dir/record.json (mode 0600). */
int sbx__record_save(const sbx_t *s, err_t *e);
/** Same, choosing whether to fsync it (a pause does not: on ext4 that fsync would wait for
 * the journal to take the snapshot's freshly written memory along; the snapshot's background
 * sync syncs the record after it). */
int sbx__record_write(const sbx_t *s, bool sync, err_t *e);
/** Load a record from dir/record.json into s (and the VMM state into st). */
int sbx__record_load(const char *dir, sbx_t *s, vmm_state_t *st, err_t *e);
/** Remove a directory tree (no symlinks followed). */
int sbx__rmrf(const char *path);

/* sandbox.c */
sbx_t *sbx__new(void);
void sbx__unref(sbx_mgr_t *m, sbx_t *s);
/** Insert s into the table (taking a reference); -EEXIST when its id is taken. */
int sbx__insert(sbx_mgr_t *m, sbx_t *s);
void sbx__remove(sbx_mgr_t *m, sbx_t *s);
/** Fill the VMM spec of s; strings point into s and bufs (which must live as long). */
void sbx__spec(sbx_mgr_t *m, sbx_t *s, vmm_spec_t *spec, char *kernel, char *initrd, char *rootfs,
               char *cmdline, char *cgroup, size_t n);

/** Allocate a free network slot (-ENOSPC) and give it back. */
int sbx__alloc_slot(sbx_mgr_t *m);
void sbx__release_slot(sbx_mgr_t *m, sbx_t *s);
/** A referenced sandbox by id, or NULL. */
sbx_t *sbx__lookup(sbx_mgr_t *m, const char *id);
void sbx__fill_info(const sbx_t *s, sbx_info_t *out);
/** Stop the VM, the memfs server and the network of s; remove its files when remove_files.
 * Called with s->lock held. */
void sbx__teardown(sbx_mgr_t *m, sbx_t *s, bool remove_files);
/** s->id = id, or a new "sb-<8 hex>" when id is NULL or empty. */
void sbx__set_id(sbx_t *s, const char *id);
/** Random lowercase hex of nbytes bytes into out (2 * nbytes + 1 chars). */
void sbx__random_hex(char *out, size_t nbytes);
int64_t sbx__now_s(void);
int64_t sbx__mono_ms(void);
/** Initialise c to time its waits on CLOCK_MONOTONIC (deadlines from sbx__mono_ms-like clocks). */
void sbx__cond_init_mono(pthread_cond_t *c);
int sbx__vm_alive_cb(void *ud);

/* snapshot.c */
/** Where the snapshot template (team, name) lives: <root>/templates/<team or "_">/<name>. */
void sbx__template_dir(const sbx_mgr_t *m, const char *team, const char *name, char *buf, size_t n);
/** Create a sandbox from the snapshot template in tdir (restore, not boot). */
int sbx__create_from_template(sbx_mgr_t *m, const sbx_create_req_t *req, const char *tdir,
                              sbx_info_t *out, err_t *e);
/** A paused sandbox's snapshot in dir is trustworthy: -EUCLEAN when its data was still being
 * written to disk when the host went down; a sync interrupted by an agent restart alone is
 * finished here. */
int sbx__snapshot_check(const char *dir, err_t *e);
/** Let go of s's RAM file (after its VM is gone): its shared instance loses a user, or an
 * older agent's memfs of s is stopped and its files removed. s is no longer restored. */
void sbx__memfs_down(sbx_mgr_t *m, sbx_t *s);

/** Pause s (locked, running); *gone when it was lost and torn down (the caller removes it). */
int sbx__pause_locked(sbx_mgr_t *m, sbx_t *s, bool *gone, err_t *e);

/* memshare.c: one read-only memfs per snapshot map, shared by the VMs restored from it */
/** Make s a user of the instance for map (whose layers are in snap), starting it when there is
 * none: sets s->memfs_key and s->mem_path. */
int sbx__mshare_acquire(sbx_mgr_t *m, sbx_t *s, const char *snap, const mem_map_t *map, err_t *e);
/** s no longer maps its instance (NULL-key safe); the last user stops it. */
void sbx__mshare_release(sbx_mgr_t *m, sbx_t *s);
/** Whether the server s's VM maps its RAM through still runs (false when it died, even if a
 * new server of the same instance runs now: s's mapping still goes to the dead one). */
bool sbx__mshare_serves(sbx_mgr_t *m, const sbx_t *s);
/** The RAM file of instance key. */
void sbx__mshare_mem_path(const sbx_mgr_t *m, const char *key, char *buf, size_t n);
/** Recovery: read the instances on disk (before adopting), count an adopted sandbox as a user
 * of its instance (-ESRCH when its server is gone), then stop what has no user. */
void sbx__mshare_load(sbx_mgr_t *m);
int sbx__mshare_adopt(sbx_mgr_t *m, sbx_t *s, err_t *e);
void sbx__mshare_prune(sbx_mgr_t *m);
/** Forget every instance at manager teardown (servers keep running for the next agent). */
void sbx__mshare_fini(sbx_mgr_t *m);

/* pool.c: sandboxes restored ahead of time from snapshot templates in use */
/** Start the pool's filler (size 0: no pool). */
int sbx__pool_init(sbx_mgr_t *m, unsigned size);
/** Stop it and destroy what is pooled. */
void sbx__pool_fini(sbx_mgr_t *m);
/** A pooled sandbox of the template in tdir (referenced, state SBX_POOLED, not in the table),
 * or NULL. */
sbx_t *sbx__pool_take(sbx_mgr_t *m, const char *tdir);
/** A create from tdir happened: fill its pool (a moment later). */
void sbx__pool_want(sbx_mgr_t *m, const char *tdir);
/** Empty tdir's pool now (waits for an entry being made of it). */
void sbx__pool_drop_template(sbx_mgr_t *m, const char *tdir);
/** Empty the pools of templates not used lately, deleted or replaced (the reaper's tick). */
void sbx__pool_reap(sbx_mgr_t *m);
/* snapshot.c */
/** Make a pooled sandbox of the template in tdir (restored, warmed, stopped). */
int sbx__pool_make(sbx_mgr_t *m, const char *tdir, sbx_t **out, err_t *e);
/** Give the pooled s to the caller of req: it runs again, gets req's id, token, environment,
 * the clock and entropy, and enters the table. On failure s is destroyed. */
int sbx__pool_claim(sbx_mgr_t *m, sbx_t *s, const sbx_create_req_t *req, sbx_info_t *out, err_t *e);

/* recover.c */
/** Re-adopt or clean up recorded sandboxes, then reap leftovers nobody owns. */
int sbx__recover(sbx_mgr_t *m, err_t *e);

#endif
