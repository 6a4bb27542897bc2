/* Per-VM cgroups for memory, CPU and process-count limits, on cgroup v1, v2 or a hybrid of both.
 *
 * A VM's group is a child named `name` of the agent's own cgroup in every hierarchy that carries
 * one of the controllers (memory, cpu, pids): a v1 hierarchy where the controller is mounted
 * there, else the v2 (unified) hierarchy when the controller is available in it. Nesting under
 * the agent's own group keeps VMs inside whatever limits the agent itself was given. On pure v2
 * the agent's group must be able to delegate controllers: if it holds processes (the "no internal
 * processes" rule), the agent moves itself into a child group "agent" first.
 *
 * A controller that no hierarchy offers is skipped with a warning (cg_missing() names them).
 * Thread-safety: a cg_t belongs to one thread; creating groups from several threads is fine.
 */
#ifndef WRENN_AGENT_CG_H
#define WRENN_AGENT_CG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

#define CG_MAX_DIRS 4

typedef struct cg_limits {
    uint64_t memory_bytes; /* hard memory limit; 0: none */
    unsigned cpu_pct;      /* CPU quota in percent of one CPU (200 = two CPUs); 0: none */
    unsigned pids;         /* maximum tasks (threads count); 0: none */
} cg_limits_t;

typedef struct cg {
    int ndirs;
    char dirs[CG_MAX_DIRS][512]; /* absolute group directories, one per hierarchy */
    bool v2[CG_MAX_DIRS];
    char missing[64]; /* controllers without a hierarchy, space separated */
} cg_t;

/** Create (or reuse) the group `name` under the caller's own cgroups and write lim. name must
 * be a single path component. On failure the directories created here are removed again. */
int cg_create(const char *name, const cg_limits_t *lim, cg_t *out, err_t *e);

/** Fill out with the groups `name` would have (no side effects), for cleanup or adoption. */
int cg_lookup(const char *name, cg_t *out, err_t *e);

/** Fill out with the groups of process pid that are direct children of the caller's own groups
 * (the ones an agent created for it). */
int cg_of_pid(pid_t pid, cg_t *out, err_t *e);

/** Open cgroup.procs of every group (O_WRONLY|O_CLOEXEC) into fds[0..ndirs); a process joins
 * all of them by writing "0" to each. Returns the number opened; on failure none stay open. */
int cg_open_procs(const cg_t *cg, int fds[CG_MAX_DIRS], err_t *e);

/** Whether pid is a member of every group of cg. */
bool cg_has_pid(const cg_t *cg, pid_t pid);

/** Remove the groups (their processes must have exited; EBUSY is retried for up to 2 s). A
 * group that does not exist is not an error. */
int cg_destroy(const cg_t *cg, err_t *e);

/** Remove every empty child group of the caller's own groups whose name starts with prefix
 * (leftovers of VMs that died while nobody watched); groups with processes stay. Returns the
 * number removed. */
int cg_reap_empty(const char *prefix, err_t *e);

#endif
