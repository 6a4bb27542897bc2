/* clone3-based spawning (see spawn.h).
 *
 * Why clone3 and not posix_spawn: CLONE_PIDFD hands back a pidfd atomically with the child, so
 * waiting and signalling can never hit a recycled pid, and the child needs steps posix_spawn
 * cannot express (controlling terminal, oom_score_adj, credentials, exec candidates with
 * distinct 126/127 outcomes). The clone has no CLONE_VM: the child runs on a private copy of
 * the calling thread's memory, like fork(). Because envd has many threads, the child may only
 * make async-signal-safe calls and raw system calls (glibc's setuid family would try to
 * broadcast to the parent's other threads), and never allocate. Everything it needs - argv,
 * envp, the candidate paths from the PATH search, the credentials - is built before the clone.
 */
#include "spawn.h"
#include "xalloc.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define OUT_PIPE_SIZE (1 << 20)

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Steps of the child that report failure back to the parent before exec. */
enum { STEP_SESSION = 1, STEP_TTY, STEP_STDIO, STEP_CREDS, STEP_CWD };

struct report {
    int step;
    int err;
};

/* Everything the child uses, prepared by the parent. */
struct plan {
    const char *cmd;
    char **cands;   /* exec candidates, NULL-terminated */
    char **argv;    /* cmd, args..., NULL */
    char **sh_argv; /* "/bin/sh", <candidate>, args..., NULL: for scripts without #! */
    char *const *envp;
    const char *cwd;
    bool setcreds;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t ngroups;
    bool pty;
    int nice;
    int in_fd, out_fd, err_fd; /* the child's ends; all the PTY slave for a PTY */
    int report_fd;
};

static _Noreturn void child_report(const struct plan *p, int step, int err)
{
    struct report r = {step, err};
    ssize_t w = write(p->report_fd, &r, sizeof r);
    (void)w;
    _exit(126);
}

static void child_say(const char *cmd, const char *what)
{
    ssize_t w = write(2, cmd, strlen(cmd));
    w = write(2, what, strlen(what));
    (void)w;
}

static _Noreturn void child_main(struct plan *p)
{
    /* execve resets handlers but keeps ignored signals ignored (envd ignores SIGPIPE) and keeps
     * the mask (envd blocks SIGTERM/SIGINT for its signalfd): give the command a clean slate. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (setsid() < 0)
        child_report(p, STEP_SESSION, errno);
    if (p->pty && ioctl(p->out_fd, TIOCSCTTY, 0) < 0)
        child_report(p, STEP_TTY, errno);
    if (dup2(p->in_fd, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->err_fd, 2) < 0)
        child_report(p, STEP_STDIO, errno);

    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t w = write(fd, "100", 3);
        (void)w;
        close(fd);
    }
    setpriority(PRIO_PROCESS, 0, p->nice); /* best effort: only root may lower its nice value */

    if (p->setcreds && (syscall(SYS_setgroups, p->ngroups, p->groups) < 0 ||
                        syscall(SYS_setresgid, p->gid, p->gid, p->gid) < 0 ||
                        syscall(SYS_setresuid, p->uid, p->uid, p->uid) < 0))
        child_report(p, STEP_CREDS, errno);
    if (chdir(p->cwd) < 0)
        child_report(p, STEP_CWD, errno);

    /* Whatever fd some other part of envd opened without O_CLOEXEC must not reach the command. */
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);

    /* Like execvp: keep searching past ENOENT-like errors, remember EACCES, stop at others. */
    bool denied = false;
    int err = ENOENT;
    for (char **c = p->cands; *c; c++) {
        execve(*c, p->argv, p->envp);
        int x = errno;
        if (x == ENOEXEC) {
            p->sh_argv[1] = *c;
            execve("/bin/sh", p->sh_argv, p->envp);
            x = EACCES;
        }
        if (x == EACCES) {
            denied = true;
            continue;
        }
        if (x == ENOENT || x == ENOTDIR || x == ESTALE || x == ENODEV || x == ETIMEDOUT)
            continue;
        err = x;
        break;
    }
    if (!denied && err == ENOENT) {
        child_say(p->cmd, ": command not found\n");
        _exit(127);
    }
    child_say(p->cmd, denied ? ": permission denied\n" : ": cannot execute\n");
    _exit(126);
}

/* The candidates to exec, as execvp would try them: cmd itself when it has a '/', else every
 * PATH entry (from the child's own environment) joined with it. */
static char **candidates(const char *cmd, char *const *envp)
{
    if (strchr(cmd, '/')) {
        char **c = xcalloc(2, sizeof(char *));
        c[0] = xstrdup(cmd);
        return c;
    }
    const char *path = NULL;
    for (char *const *v = envp; *v; v++)
        if (strncmp(*v, "PATH=", 5) == 0)
            path = *v + 5;
    if (!path)
        path = DEFAULT_PATH;
    size_t n = 1;
    for (const char *s = path; *s; s++)
        n += *s == ':';
    char **c = xcalloc(n + 1, sizeof(char *));
    size_t i = 0;
    for (const char *s = path;; s++) {
        const char *end = strchrnul(s, ':');
        if (end == s)
            c[i++] = xstrdup(cmd); /* an empty entry means the working directory */
        else
            c[i++] = xasprintf("%.*s/%s", (int)(end - s), s, cmd);
        if (!*end)
            break;
        s = end;
    }
    return c;
}

static void strv_free(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

/* Keep the child's fds away from 0-2 so that its dup2()s onto stdio never collide. */
static int above_stdio(int *fd, err_t *e)
{
    if (*fd < 0 || *fd > 2)
        return 0;
    int n = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    if (n < 0)
        return err_errno(e, "fcntl");
    close(*fd);
    *fd = n;
    return 0;
}

static int set_nonblock(int fd, err_t *e)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return err_errno(e, "fcntl O_NONBLOCK");
    return 0;
}

/* A PTY pair without a window in which the fds lack O_CLOEXEC: openpty(3) opens both without
 * it, so a process spawned by another thread at that moment would inherit them. */
static int open_pty(uint16_t cols, uint16_t rows, int *master, int *slave, err_t *e)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        return err_errno(e, "posix_openpt");
    if (unlockpt(m) < 0) {
        int r = err_errno(e, "unlockpt");
        close(m);
        return r;
    }
    int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) {
        int r = err_errno(e, "open pty peer");
        close(m);
        return r;
    }
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    if (ioctl(m, TIOCSWINSZ, &ws) < 0) {
        int r = err_errno(e, "set pty size");
        close(m);
        close(s);
        return r;
    }
    *master = m;
    *slave = s;
    return 0;
}

void proc__child_close(proc__child_t *c)
{
    xclose(&c->pidfd);
    xclose(&c->stdin_fd);
    xclose(&c->stdout_fd);
    xclose(&c->stderr_fd);
    xclose(&c->pty_fd);
}

static const char *step_name(int step)
{
    switch (step) {
    case STEP_SESSION:
        return "setsid";
    case STEP_TTY:
        return "controlling terminal";
    case STEP_STDIO:
        return "stdio";
    case STEP_CREDS:
        return "switching user";
    default:
        return "cwd";
    }
}

int proc__spawn(const proc__spawn_cfg_t *cfg, proc__child_t *out, err_t *e)
{
    int in[2] = {-1, -1}, o[2] = {-1, -1}, er[2] = {-1, -1}, rep[2] = {-1, -1};
    int master = -1, slave = -1, pidfd = -1;
    struct plan p = {
        .cmd = cfg->cmd, .envp = cfg->envp, .cwd = cfg->cwd, .pty = cfg->pty, .nice = cfg->nice};
    int r = 0;
    *out = (proc__child_t){
        .pid = -1, .pidfd = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .pty_fd = -1};

    size_t nargs = 0;
    while (cfg->args[nargs])
        nargs++;
    p.argv = xcalloc(nargs + 2, sizeof(char *));
    p.sh_argv = xcalloc(nargs + 3, sizeof(char *));
    p.argv[0] = (char *)cfg->cmd;
    p.sh_argv[0] = (char *)"/bin/sh";
    for (size_t i = 0; i < nargs; i++)
        p.argv[i + 1] = p.sh_argv[i + 2] = cfg->args[i];
    p.cands = candidates(cfg->cmd, cfg->envp);
    if (geteuid() == 0) {
        p.setcreds = true;
        p.uid = cfg->user->uid;
        p.gid = cfg->user->gid;
        p.groups = cfg->user->groups;
        p.ngroups = (size_t)cfg->user->ngroups;
    }

    if (cfg->pty) {
        if ((r = open_pty(cfg->cols, cfg->rows, &master, &slave, e)) < 0 ||
            (r = above_stdio(&slave, e)) < 0 || (r = set_nonblock(master, e)) < 0)
            goto out;
        p.in_fd = p.out_fd = p.err_fd = slave;
    } else {
        if (pipe2(o, O_CLOEXEC) < 0 || pipe2(er, O_CLOEXEC) < 0) {
            r = err_errno(e, "pipe");
            goto out;
        }
        if ((r = set_nonblock(o[0], e)) < 0 || (r = set_nonblock(er[0], e)) < 0)
            goto out;
        /* A roomier stdout pipe means fewer context switches between a chatty command and the
         * reader; best effort (the size is capped by fs.pipe-max-size for non-root). */
        fcntl(o[1], F_SETPIPE_SZ, OUT_PIPE_SIZE);
        if (cfg->stdin_pipe) {
            if (pipe2(in, O_CLOEXEC) < 0) {
                r = err_errno(e, "pipe");
                goto out;
            }
            if ((r = set_nonblock(in[1], e)) < 0)
                goto out;
        } else if ((in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
            r = err_errno(e, "open /dev/null");
            goto out;
        }
        if ((r = above_stdio(&in[0], e)) < 0 || (r = above_stdio(&o[1], e)) < 0 ||
            (r = above_stdio(&er[1], e)) < 0)
            goto out;
        p.in_fd = in[0];
        p.out_fd = o[1];
        p.err_fd = er[1];
    }
    if (pipe2(rep, O_CLOEXEC) < 0) {
        r = err_errno(e, "pipe");
        goto out;
    }
    if ((r = above_stdio(&rep[1], e)) < 0)
        goto out;
    p.report_fd = rep[1];

    struct clone_args ca = {0};
    ca.flags = CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid < 0) {
        r = err_errno(e, "clone3");
        goto out;
    }
    if (pid == 0)
        child_main(&p);

    /* Parent: drop the child's ends, then learn whether it got as far as exec. */
    xclose(&rep[1]);
    xclose(&slave);
    xclose(&in[0]);
    xclose(&o[1]);
    xclose(&er[1]);
    struct report rp = {0};
    ssize_t n;
    while ((n = read(rep[0], &rp, sizeof rp)) < 0 && errno == EINTR)
        ;
    if (n == (ssize_t)sizeof rp) {
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        if (rp.step == STEP_CWD)
            r = err_set(e, -EINVAL, "cannot use cwd '%s': %s", cfg->cwd, strerror(rp.err));
        else
            r = err_set(e, -EINVAL, "cannot start process: %s: %s", step_name(rp.step),
                        strerror(rp.err));
        xclose(&pidfd);
        goto out;
    }
    out->pid = (pid_t)pid;
    out->pidfd = steal_fd(&pidfd);
    out->stdin_fd = steal_fd(&in[1]);
    out->stdout_fd = steal_fd(&o[0]);
    out->stderr_fd = steal_fd(&er[0]);
    out->pty_fd = steal_fd(&master);
out:
    xclose(&rep[0]);
    xclose(&rep[1]);
    xclose(&master);
    xclose(&slave);
    xclose(&in[0]);
    xclose(&in[1]);
    xclose(&o[0]);
    xclose(&o[1]);
    xclose(&er[0]);
    xclose(&er[1]);
    strv_free(p.cands);
    free(p.argv);
    free(p.sh_argv);
    return r;
}
