/* Spawning a process for process.Process: clone3 with a pidfd, stdio pipes or a PTY, user
 * switch, working directory. Internal to src/envd/proc/. */
#ifndef WRENN_ENVD_PROC_SPAWN_H
#define WRENN_ENVD_PROC_SPAWN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "envd.h"
#include "err.h"

/** What to run. Everything is prepared by the caller; the child only makes system calls. */
typedef struct proc__spawn_cfg {
    const char *cmd;         /* as requested: a path, or a name searched in envp's PATH */
    char *const *args;       /* the arguments after argv[0], NULL-terminated */
    char *const *envp;       /* NULL-terminated "K=V" */
    const char *cwd;         /* resolved absolute directory */
    const envd_user_t *user; /* credentials to take when envd runs as root */
    bool pty;
    uint16_t cols, rows;
    bool stdin_pipe; /* false: stdin is /dev/null */
    int nice;        /* the child's nice value (0 for commands; envd's own warm-up: 19) */
} proc__spawn_cfg_t;

/** A started child. Every fd is O_CLOEXEC and owned by the caller. */
typedef struct proc__child {
    pid_t pid;
    int pidfd;
    int stdin_fd;  /* write end of the stdin pipe (O_NONBLOCK), or -1 */
    int stdout_fd; /* read end (O_NONBLOCK), or -1 for a PTY */
    int stderr_fd; /* read end (O_NONBLOCK), or -1 for a PTY */
    int pty_fd;    /* PTY master (O_NONBLOCK), or -1 */
} proc__child_t;

/** Start the process described by cfg. The child becomes a session (and process-group) leader,
 * has oom_score_adj 100 and nice 0, takes the user's credentials (when envd is root) and cwd,
 * then execs cmd: exit status 127 when it is not found, 126 when it cannot be executed.
 * Failure to take the credentials or enter cwd is reported here (-EINVAL/-EACCES/-EPERM with a
 * message) and the child is reaped; pipe or clone failures return their errno. */
int proc__spawn(const proc__spawn_cfg_t *cfg, proc__child_t *out, err_t *e);

/** Close every fd of c that is open. */
void proc__child_close(proc__child_t *c);

#endif
