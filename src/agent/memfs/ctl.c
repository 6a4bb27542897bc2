/* memfs control: starting a server process and stopping it (the agent's side). */
#include "memfs.h"
#include "memfs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "xalloc.h"

extern char **environ;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int left_ms(int64_t deadline)
{
    int64_t l = deadline - now_ms();
    return l < 0 ? 0 : l > INT_MAX ? INT_MAX : (int)l;
}

static int pidfd_open_(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Wait until the process behind pidfd exits or the deadline passes: 1 exited, 0 not yet. */
static int wait_exit(int pidfd, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = pidfd, .events = POLLIN};
        int n = poll(&p, 1, left_ms(deadline));
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return 0;
    }
}

/* Move *fd to a number >= min (keeping O_CLOEXEC), so the dup2s of the spawn cannot clobber
 * it before it is used. */
static int fd_at_least(int *fd, int min)
{
    if (*fd < 0 || *fd >= min)
        return 0;
    int n = fcntl(*fd, F_DUPFD_CLOEXEC, min);
    if (n < 0)
        return -errno;
    close(*fd);
    *fd = n;
    return 0;
}

/* What is mounted at path: 1 a FUSE mount (alive or dead), 0 something else, -errno. Does not
 * block on a hung server only if the caller knows it is dead or killed. */
static int is_fuse_mount(const char *path)
{
    struct statfs sf;
    if (statfs(path, &sf) < 0)
        return errno == ENOTCONN || errno == ECONNABORTED ? 1 : -errno;
    return sf.f_type == MEMFS_FUSE_MAGIC ? 1 : 0;
}

/* After a failed start: the server is dead; drop whatever it left mounted. */
static void drop_mount(const char *mount)
{
    if (is_fuse_mount(mount) == 1 && umount2(mount, MNT_DETACH) < 0)
        log_warn("memfs.umount_failed", "mount=%s err=\"%s\"", mount, strerror(errno));
}

int memfs_spawn(const memfs_opts_t *o, int timeout_ms, pid_t *pid, err_t *e)
{
    if (!o || !o->map || !o->layers || !o->mount || !pid || !o->upper != !o->bitmap)
        return err_set(e, -EINVAL,
                       "memfs: map, layers and mount are required, upper and bitmap go together");
    int fuse = is_fuse_mount(o->mount);
    if (fuse < 0)
        return err_set(e, fuse, "memfs mount point %s: %s", o->mount, strerror(-fuse));
    if (fuse == 1)
        return err_set(e, -EBUSY, "%s is already a FUSE mount", o->mount);

    int rd = -1, wr = -1, devnull = -1, logfd = -1, pidfd = -1, rc = 0;
    pid_t child = -1;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    bool fa_init = false, at_init = false;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return err_errno(e, "memfs: pipe");
    rd = pipefd[0];
    wr = pipefd[1];
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) {
        rc = err_errno(e, "memfs: /dev/null");
        goto out;
    }
    if (o->log) {
        logfd = open(o->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (logfd < 0) {
            rc = err_errno(e, "memfs: log");
            err_wrap(e, "%s", o->log);
            goto out;
        }
    }
    /* The child gets 0 and 1 = /dev/null, 2 = the log, 3 = the ready pipe, and nothing else. */
    if ((rc = fd_at_least(&devnull, 3)) < 0 || (rc = fd_at_least(&logfd, 3)) < 0 ||
        (rc = fd_at_least(&wr, 4)) < 0) {
        rc = err_set(e, rc, "memfs: dup: %s", strerror(-rc));
        goto out;
    }
    char uid[24], gid[24];
    snprintf(uid, sizeof uid, "%u", (unsigned)o->uid);
    snprintf(gid, sizeof gid, "%u", (unsigned)o->gid);
    char *argv[] = {"wrenn-agent", "memfs", "--map", (char *)o->map, "--layers", (char *)o->layers,
                    "--mount", (char *)o->mount, "--uid", uid, "--gid", gid, "--ready-fd", "3",
                    /* read-only when there is no upper */
                    o->upper ? "--upper" : NULL, (char *)o->upper, "--bitmap", (char *)o->bitmap,
                    NULL};
    posix_spawn_file_actions_init(&fa);
    fa_init = true;
    posix_spawn_file_actions_adddup2(&fa, devnull, 0);
    posix_spawn_file_actions_adddup2(&fa, devnull, 1);
    if (logfd >= 0)
        posix_spawn_file_actions_adddup2(&fa, logfd, 2);
    posix_spawn_file_actions_adddup2(&fa, wr, 3);
    posix_spawn_file_actions_addclosefrom_np(&fa, 4);
    posix_spawnattr_init(&at);
    at_init = true;
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    int dfl_sigs[] = {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof dfl_sigs / sizeof dfl_sigs[0]; i++)
        sigaddset(&dfl, dfl_sigs[i]);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dfl);
    /* Its own session: a signal to the agent's process group or terminal does not reach it. */
    posix_spawnattr_setflags(&at,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    /* wrenn-memfs beside this binary starts faster (memfs/main.c); else this binary. */
    char exe[PATH_MAX];
    const char *prog = "/proc/self/exe";
    char **pargv = argv;
    ssize_t xl = readlink("/proc/self/exe", exe, sizeof exe - 16);
    if (xl > 0) {
        exe[xl] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            strcpy(slash + 1, "wrenn-memfs");
            if (access(exe, X_OK) == 0) {
                prog = exe;
                pargv = argv + 1; /* argv[0] "memfs" */
            }
        }
    }
    int src = posix_spawn(&child, prog, &fa, &at, pargv, environ);
    if (src != 0) {
        child = -1;
        rc = err_set(e, -src, "memfs: spawn %s: %s", prog, strerror(src));
        goto out;
    }
    xclose(&wr);
    pidfd = pidfd_open_(child);

    /* Readiness: 'R', or 'E<errno> <message>' then EOF, or EOF when it died without a word. */
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    char msg[ERR_MSG_MAX + 32];
    size_t got = 0;
    bool ready = false, eof = false, timed_out = false;
    while (!ready && !eof) {
        struct pollfd p = {.fd = rd, .events = POLLIN};
        int n = poll(&p, 1, left_ms(deadline));
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0) {
            timed_out = true;
            break;
        }
        ssize_t r = read(rd, msg + got, sizeof msg - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || (got += (size_t)r) == sizeof msg - 1)
            eof = true;
        else if (msg[0] == MEMFS_READY)
            ready = true;
    }
    if (ready) {
        *pid = child;
        child = -1;
        goto out;
    }
    msg[got] = '\0';
    if (timed_out) {
        rc = err_set(e, -ETIMEDOUT, "memfs did not serve %s within %d ms", o->mount, timeout_ms);
    } else if (got > 1 && msg[0] == MEMFS_FAILED) {
        char *end = NULL;
        long code = strtol(msg + 1, &end, 10);
        if (code <= 0 || code > 4095)
            code = EIO;
        rc = err_set(e, (int)-code, "memfs: %s", end && *end == ' ' ? end + 1 : msg + 1);
    } else {
        rc = err_set(e, -EIO, "memfs exited before serving %s (see its log)", o->mount);
    }
out:
    if (child > 0) {
        /* A server that reported failure exits by itself; one that is stuck does not. */
        if (pidfd < 0 || !wait_exit(pidfd, now_ms() + (rc == -ETIMEDOUT ? 0 : 2000)))
            kill(child, SIGKILL);
        int st;
        while (waitpid(child, &st, 0) < 0 && errno == EINTR)
            ;
        drop_mount(o->mount);
    }
    if (at_init)
        posix_spawnattr_destroy(&at);
    if (fa_init)
        posix_spawn_file_actions_destroy(&fa);
    xclose(&pidfd);
    xclose(&logfd);
    xclose(&devnull);
    xclose(&wr);
    xclose(&rd);
    return rc;
}

/* ---- stop ------------------------------------------------------------------------------ */

/* Whether pid is (still) a memfs serving mount: its name is "memfs" (set at start, and kept by a
 * zombie) and, while it has a command line, that names mount. Guards against a reused pid. */
static bool is_memfs(pid_t pid, const char *mount)
{
    char path[64], comm[32] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, comm, sizeof comm - 1);
    close(fd);
    if (n <= 0 || strncmp(comm, MEMFS_COMM "\n", sizeof MEMFS_COMM) != 0)
        return false;
    char cmd[8192];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, cmd, sizeof cmd - 1);
    close(fd);
    if (n <= 0)
        return true; /* a zombie: it was ours by name */
    cmd[n] = '\0';
    const char *args[64];
    size_t na = 0;
    for (const char *p = cmd; p < cmd + n && na < 64; p += strlen(p) + 1)
        args[na++] = p;
    /* "wrenn-agent memfs ..." or wrenn-memfs, started as "memfs ...". */
    size_t first = na >= 1 && strcmp(args[0], "memfs") == 0   ? 1
                   : na >= 2 && strcmp(args[1], "memfs") == 0 ? 2
                                                              : 0;
    if (first == 0)
        return false;
    for (size_t i = first; i < na; i++) {
        if (strcmp(args[i], "--mount") == 0 && i + 1 < na)
            return strcmp(args[i + 1], mount) == 0;
        if (strncmp(args[i], "--mount=", 8) == 0)
            return strcmp(args[i] + 8, mount) == 0;
    }
    return false;
}

/* The flush runs on its own thread so a server that never answers cannot hang the caller past
 * the deadline. The job is shared by both sides; the last one out frees it. */
typedef struct flush_job {
    atomic_int refs;
    atomic_int rc;
    int efd;
    char path[PATH_MAX];
} flush_job_t;

static void job_put(flush_job_t *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        close(j->efd);
        free(j);
    }
}

static void *flush_main(void *arg)
{
    flush_job_t *j = arg;
    int rc = 0;
    int fd = open(j->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        rc = -errno;
    } else {
        if (fsync(fd) < 0)
            rc = -errno;
        if (close(fd) < 0 && rc == 0 && errno != EINTR)
            rc = -errno;
    }
    atomic_store(&j->rc, rc);
    uint64_t one = 1;
    if (write(j->efd, &one, sizeof one) < 0) {
        /* cannot happen with an eventfd counter this small; the waiter times out */
    }
    job_put(j);
    return NULL;
}

/* fsync <mount>/mem: 0 or -errno, or 1 when it did not finish by the deadline (still running). */
static int flush_file(const char *mount, int64_t deadline)
{
    flush_job_t *j = xcalloc(1, sizeof *j);
    atomic_init(&j->refs, 2);
    snprintf(j->path, sizeof j->path, "%s/mem", mount);
    j->efd = eventfd(0, EFD_CLOEXEC);
    if (j->efd < 0) {
        int rc = -errno;
        free(j);
        return rc;
    }
    pthread_attr_t pa;
    pthread_attr_init(&pa);
    pthread_attr_setdetachstate(&pa, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int prc = pthread_create(&t, &pa, flush_main, j);
    pthread_attr_destroy(&pa);
    if (prc != 0) {
        flush_main(j); /* no thread: flush inline (it drops its own reference) */
        int rc = atomic_load(&j->rc);
        job_put(j);
        return rc;
    }
    int rc = 1;
    for (;;) {
        struct pollfd p = {.fd = j->efd, .events = POLLIN};
        int n = poll(&p, 1, left_ms(deadline));
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0)
            rc = atomic_load(&j->rc);
        break;
    }
    job_put(j);
    return rc;
}

/* Unmount a FUSE mount at mount: retry while busy until the deadline, then detach. *detached
 * tells which happened. Nothing mounted (or something else mounted) is success. */
static int unmount(const char *mount, int64_t deadline, bool force_detach, bool *detached, err_t *e)
{
    *detached = false;
    if (!force_detach) {
        int fuse = is_fuse_mount(mount);
        if (fuse == 0)
            return 0;
        if (fuse < 0)
            return err_set(e, fuse, "memfs mount point %s: %s", mount, strerror(-fuse));
        for (;;) {
            if (umount2(mount, 0) == 0 || errno == EINVAL)
                return 0;
            if (errno != EBUSY)
                return err_set(e, -errno, "unmount %s: %s", mount, strerror(errno));
            if (left_ms(deadline) == 0)
                break;
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    if (umount2(mount, MNT_DETACH) < 0 && errno != EINVAL)
        return err_set(e, -errno, "detach %s: %s", mount, strerror(errno));
    *detached = true;
    return 0;
}

int memfs_stop(const char *mount, pid_t pid, int timeout_ms, err_t *e)
{
    if (!mount)
        return err_set(e, -EINVAL, "memfs_stop: no mount");
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int pidfd = -1, rc = 0;
    if (pid > 0) {
        pidfd = pidfd_open_(pid);
        /* Checked after pinning it: a pid that is not our memfs is treated as gone. */
        if (pidfd >= 0 && !is_memfs(pid, mount)) {
            log_warn("memfs.stop_foreign_pid", "pid=%d mount=%s", (int)pid, mount);
            xclose(&pidfd);
        }
    }
    bool hung = false;
    if (pidfd >= 0) {
        int frc = flush_file(mount, deadline);
        if (frc == 1) {
            hung = true;
            rc = err_set(e, -ETIMEDOUT, "flushing %s/mem did not finish within %d ms", mount,
                         timeout_ms);
        } else if (frc < 0 && frc != -ENOTCONN && frc != -ECONNABORTED && frc != -ENOENT) {
            /* The server could not store everything: the memory is incomplete. (Not connected:
             * the server died; no such file: nothing is mounted any more, e.g. the mount was
             * detached by an earlier call; both leave only the unmount to do.) */
            rc = err_set(e, frc, "flushing %s/mem: %s", mount, strerror(-frc));
        }
    }
    bool detached = false;
    err_t ue = {0};
    int urc = unmount(mount, deadline, hung, &detached, &ue);
    if (urc < 0 && rc == 0)
        rc = err_set(e, urc, "%s", ue.msg);
    if (pidfd >= 0) {
        if (!wait_exit(pidfd, deadline)) {
            if (rc == 0 && detached)
                rc = err_set(e, -EBUSY,
                             "%s/mem is still in use: detached; memfs pid %d keeps serving it",
                             mount, (int)pid);
            else if (rc == 0)
                rc = err_set(e, -ETIMEDOUT, "memfs pid %d did not exit within %d ms", (int)pid,
                             timeout_ms);
        } else {
            int st;
            waitpid(pid, &st, WNOHANG); /* reap it when it is our child */
        }
        xclose(&pidfd);
    }
    return rc;
}
