/* Internals shared by the sandbox manager's files (sandbox.c, record.c, recover.c). */
#ifndef WRENN_AGENT_SANDBOX_INT_H
#define WRENN_AGENT_SANDBOX_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "net/net.h"
#include "sandbox.h"
#include "vmm/vmm.h"

enum sbx_state { SBX_CREATING, SBX_RUNNING, SBX_STOPPING, SBX_GONE };

/** One sandbox. Fields below `lock` are guarded by it; refs by the table lock. */
typedef struct sbx {
    int refs;
    pthread_mutex_t lock;
    enum sbx_state state;
    char id[72];
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

    pthread_t reaper;
    bool reaper_started;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    bool stopping;
};

/* record.c */
/** Write s's record atomically into s->dir/record.json (mode 0600). */
int sbx__record_save(const sbx_t *s, err_t *e);
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

/* recover.c */
/** Re-adopt or clean up recorded sandboxes, then reap leftovers nobody owns. */
int sbx__recover(sbx_mgr_t *m, err_t *e);

#endif
