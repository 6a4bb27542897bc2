/* Stand-in for memfs/ while that folder has no meson.build: restoring a snapshot fails with
 * ENOSYS, everything else of the agent builds and works. */
#include "memfs/memfs.h"

#include <errno.h>

int memfs_spawn(const memfs_opts_t *opts, int timeout_ms, pid_t *pid, err_t *e)
{
    (void)opts;
    (void)timeout_ms;
    *pid = 0;
    return err_set(e, -ENOSYS, "memfs is not built");
}

int memfs_stop(const char *mount, pid_t pid, int timeout_ms, err_t *e)
{
    (void)mount;
    (void)pid;
    (void)timeout_ms;
    (void)e;
    return 0;
}
