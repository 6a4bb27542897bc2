/* Overlay creation: through the disk module (a qcow2 header written directly) when the tree
 * has it, else with qemu-img. */
#include "disk_glue.h"
#ifdef AGENT_HAVE_DISK
#include "disk/disk.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int give(const char *overlay, uid_t uid, gid_t gid, err_t *e)
{
    if (chown(overlay, uid, gid) < 0 || chmod(overlay, 0600) < 0) {
        int rc = err_errno(e, "chown overlay");
        unlink(overlay);
        return rc;
    }
    return 0;
}

#ifdef AGENT_HAVE_DISK
int sbx_disk_overlay(const char *base, const char *overlay, uid_t uid, gid_t gid, err_t *e)
{
    int rc = disk_overlay_create(base, "raw", overlay, e);
    return rc < 0 ? rc : give(overlay, uid, gid, e);
}
#else
extern char **environ;

int sbx_disk_overlay(const char *base, const char *overlay, uid_t uid, gid_t gid, err_t *e)
{
    char *const argv[] = {"qemu-img", "create",     "-q", "-f",  "qcow2",
                          "-b",       (char *)base, "-F", "raw", (char *)overlay,
                          NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int r = posix_spawnp(&pid, "qemu-img", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return err_set(e, -r, "spawn qemu-img: %s", strerror(r));
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        unlink(overlay);
        return err_set(e, -EIO, "qemu-img create failed (status %d)", st);
    }
    return give(overlay, uid, gid, e);
}
#endif
