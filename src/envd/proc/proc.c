/* process.Process service (guest-agent.md §4, e2b-compat.md §2.5).
 *
 * Design. Each process has one reader thread with a small stack. It polls the process's output
 * fds (stdout and stderr pipes, or the PTY master) and its pidfd, reads output in pieces of at
 * most 32 KiB (16 KiB for a PTY) and fans each piece out to every subscriber: the Start stream
 * and any Connect streams. A thread per process was chosen over one epoll thread because
 * backpressure then is a plain condition wait of that process's own reader - a full subscriber
 * queue stops reading exactly one process, which in turn blocks that process in write(2) - with
 * no per-fd interest juggling in a shared loop; processes are few, threads cheap.
 *
 * Subscribers. A subscriber is a bounded queue of shared, refcounted output pieces plus an
 * eventfd that the Connect layer polls (readable while the queue is not empty). Its stream's
 * next() pops and formats one event without blocking. A stream that ends for any reason (end
 * of process, Connect-Timeout-Ms, a client that went away) frees its subscriber at once, which
 * wakes a reader waiting for space, so a vanished client never stalls the process.
 *
 * End. When the pidfd turns readable the reader reaps the child (waitid on the pidfd: no pid
 * recycling races), reads whatever output is still buffered without blocking - a background
 * grandchild that keeps the pipes open cannot delay the end - removes the process from the
 * table, and queues the end event for every subscriber.
 *
 * Locks. proc_table.lock guards the list of running processes; proc.lock guards a process's
 * subscribers, its input fds and its reaped/ended state. Order: table before process; neither
 * is held across blocking I/O (input is written through a dup of the fd, outside the lock).
 */
#include "proc.h"
#include "b64.h"
#include "envd.h"
#include "log.h"
#include "pjson.h"
#include "spawn.h"
#include "xalloc.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_MAX        64          /* events queued per subscriber before the reader waits */
#define PIPE_CHUNK       (32 * 1024) /* largest stdout/stderr piece */
#define PTY_CHUNK        (16 * 1024) /* largest PTY piece */
#define READ_BATCH       8           /* pieces read from one fd per wake-up */
#define DRAIN_READS      16          /* batches per fd after the exit (bounded: grandchildren) */
#define READER_STACK     (64 * 1024)
#define SHUTDOWN_WAIT_MS 5000

static const char keepalive_msg[] = "{\"event\":{\"keepalive\":{}}}";

enum chunk_kind { CH_STDOUT = 0, CH_STDERR = 1, CH_PTY = 2, CH_END = 3 };

/* One output piece or the end event, shared by all subscribers. */
typedef struct chunk {
    atomic_int refs;
    int kind;
    size_t len;
    char data[];
} chunk_t;

typedef struct proc proc_t;
typedef struct sub sub_t;

struct sub {
    proc_t *p;
    sub_t *next;
    int efd;
    bool signalled;            /* efd is readable; under p->lock */
    bool need_start;           /* the start event is still to be sent */
    bool done;                 /* the end event was handed out */
    chunk_t *q[QUEUE_MAX + 1]; /* ring; the spare slot is for the end event */
    size_t head, count;
};

struct proc {
    struct proc_table *t;
    atomic_int refs;
    proc_t *next; /* in t->list, under t->lock */

    /* Fixed at creation. */
    pid_t pid;
    int pidfd;
    bool is_pty;
    bool had_stdin;
    char *tag;
    json_t *config; /* ProcessConfig for List; never modified */

    /* The reader's own. */
    int out_fd, err_fd;

    pthread_mutex_t lock;
    pthread_cond_t space; /* a subscriber queue got room, or one went away */
    int stdin_fd;         /* pipe write end, -1 once closed */
    int pty_fd;           /* PTY master: read by the reader, written/resized under lock */
    bool reaped;
    bool ended;
    sub_t *subs;
};

struct proc_table {
    envd_t *d;
    pthread_mutex_t lock;
    pthread_cond_t idle; /* nreaders dropped */
    proc_t *list;
    int nreaders;
    atomic_bool closing;
};

/* ---- chunks ---- */

static chunk_t *chunk_new(int kind, size_t cap)
{
    chunk_t *c = xmalloc(sizeof *c + cap);
    atomic_init(&c->refs, 1);
    c->kind = kind;
    c->len = 0;
    return c;
}

static void chunk_unref(chunk_t *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

/* ---- processes ---- */

static void proc_unref(proc_t *p)
{
    if (!p || atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    xclose(&p->pidfd);
    xclose(&p->out_fd);
    xclose(&p->err_fd);
    xclose(&p->stdin_fd);
    xclose(&p->pty_fd);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->space);
    json_decref(p->config);
    free(p->tag);
    free(p);
}

/* Signal the process group (the child is a session leader, so this reaches what it started)
 * and, through the pidfd, the child itself. Caller holds p->lock; a reaped child is skipped,
 * because only then could its pid (and so the group id) belong to someone else. */
static int signal_locked(proc_t *p, int sig, err_t *e)
{
    if (p->reaped)
        return err_set(e, -ESRCH, "process %d has already exited", (int)p->pid);
    int r = 0;
    if (pidfd_send_signal(p->pidfd, sig, NULL, 0) < 0 && errno != ESRCH)
        r = err_errno(e, "pidfd_send_signal");
    if (kill(-p->pid, sig) < 0 && errno != ESRCH && r == 0)
        r = err_errno(e, "kill");
    return r;
}

/* Find a running process and take a reference. */
static proc_t *table_find(struct proc_table *t, const proc_selector_t *sel)
{
    proc_t *found = NULL;
    pthread_mutex_lock(&t->lock);
    for (proc_t *p = t->list; p; p = p->next) {
        if (sel->has_pid ? p->pid == (pid_t)sel->pid
                         : (p->tag && sel->tag && strcmp(p->tag, sel->tag) == 0)) {
            atomic_fetch_add(&p->refs, 1);
            found = p;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return found;
}

static int not_found(const proc_selector_t *sel, err_t *e)
{
    if (sel->has_pid)
        return err_set(e, -ENOENT, "process with pid %u not found", sel->pid);
    return err_set(e, -ENOENT, "process with tag '%.64s' not found", sel->tag);
}

static int find(struct proc_table *t, const proc_selector_t *sel, proc_t **out, err_t *e)
{
    *out = table_find(t, sel);
    return *out ? 0 : not_found(sel, e);
}

/* Remove p from the list (if still there) and drop the list's reference. */
static void table_remove(struct proc_table *t, proc_t *p)
{
    bool was = false;
    pthread_mutex_lock(&t->lock);
    for (proc_t **pp = &t->list; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            was = true;
            break;
        }
    pthread_mutex_unlock(&t->lock);
    if (was)
        proc_unref(p);
}

/* ---- subscribers ---- */

static void sub_wake_locked(sub_t *s)
{
    if (s->signalled)
        return;
    uint64_t one = 1;
    ssize_t w = write(s->efd, &one, sizeof one);
    (void)w;
    s->signalled = true;
}

static bool sub_full_locked(const sub_t *s)
{
    return s->count >= QUEUE_MAX;
}

static void sub_push_locked(sub_t *s, chunk_t *c)
{
    atomic_fetch_add(&c->refs, 1);
    s->q[(s->head + s->count) % (QUEUE_MAX + 1)] = c;
    s->count++;
    sub_wake_locked(s);
}

/* A new subscriber whose first event is `start`. Caller holds p->lock. */
static sub_t *sub_attach_locked(proc_t *p, err_t *e)
{
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) {
        err_errno(e, "eventfd");
        return NULL;
    }
    sub_t *s = xcalloc(1, sizeof *s);
    s->p = p;
    s->efd = efd;
    s->need_start = true;
    sub_wake_locked(s);
    atomic_fetch_add(&p->refs, 1);
    s->next = p->subs;
    p->subs = s;
    return s;
}

static void format_data(buf_t *out, const chunk_t *c)
{
    static const char *const pre[] = {
        "{\"event\":{\"data\":{\"stdout\":\"",
        "{\"event\":{\"data\":{\"stderr\":\"",
        "{\"event\":{\"data\":{\"pty\":\"",
    };
    size_t pl = strlen(pre[c->kind]);
    buf_reserve(out, pl + b64_encoded_len(c->len) + 4);
    memcpy(out->data + out->len, pre[c->kind], pl);
    out->len += pl;
    out->len += b64_encode(c->data, c->len, out->data + out->len, true);
    memcpy(out->data + out->len, "\"}}}", 4);
    out->len += 4;
    out->data[out->len] = '\0';
}

static int sub_next(void *ud, buf_t *out, err_t *e)
{
    (void)e;
    sub_t *s = ud;
    proc_t *p = s->p;
    pthread_mutex_lock(&p->lock);
    if (s->need_start) {
        s->need_start = false;
        pthread_mutex_unlock(&p->lock);
        buf_printf(out, "{\"event\":{\"start\":{\"pid\":%d}}}", (int)p->pid);
        return CONNECT_MSG;
    }
    if (s->done) {
        pthread_mutex_unlock(&p->lock);
        return CONNECT_DONE;
    }
    if (s->count == 0) {
        if (s->signalled) {
            uint64_t v;
            ssize_t rd = read(s->efd, &v, sizeof v);
            (void)rd;
            s->signalled = false;
        }
        pthread_mutex_unlock(&p->lock);
        return CONNECT_IDLE;
    }
    chunk_t *c = s->q[s->head];
    s->head = (s->head + 1) % (QUEUE_MAX + 1);
    /* Wake a reader waiting for room only once the queue is half empty: waking it for every
     * freed slot would cost a context switch per piece. */
    if (--s->count == QUEUE_MAX / 2)
        pthread_cond_broadcast(&p->space);
    if (c->kind == CH_END)
        s->done = true;
    pthread_mutex_unlock(&p->lock);

    if (c->kind == CH_END)
        buf_add(out, c->data, c->len);
    else
        format_data(out, c);
    chunk_unref(c);
    return CONNECT_MSG;
}

static void sub_free(void *ud)
{
    sub_t *s = ud;
    proc_t *p = s->p;
    pthread_mutex_lock(&p->lock);
    for (sub_t **pp = &p->subs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    pthread_cond_broadcast(&p->space);
    pthread_mutex_unlock(&p->lock);
    while (s->count) {
        chunk_unref(s->q[s->head]);
        s->head = (s->head + 1) % (QUEUE_MAX + 1);
        s->count--;
    }
    close(s->efd);
    free(s);
    proc_unref(p);
}

static void source_fill(connect_source_t *src, sub_t *s)
{
    src->fd = s->efd;
    src->next = sub_next;
    src->free = sub_free;
    src->keepalive = keepalive_msg;
    src->ud = s;
}

/* ---- the reader thread ---- */

/* Hand the n pieces in cs to every subscriber, in order, waiting while any of them is full.
 * Takes the pieces. One lock round for a whole batch keeps the hot path cheap. */
static void publish(proc_t *p, chunk_t **cs, size_t n)
{
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < n; i++) {
        for (;;) {
            bool full = false;
            for (sub_t *s = p->subs; s && !full; s = s->next)
                full = sub_full_locked(s);
            if (!full || atomic_load(&p->t->closing))
                break;
            pthread_cond_wait(&p->space, &p->lock);
        }
        if (!atomic_load(&p->t->closing))
            for (sub_t *s = p->subs; s; s = s->next)
                sub_push_locked(s, cs[i]);
    }
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < n; i++)
        chunk_unref(cs[i]);
}

/* Read what fd has ready - up to READ_BATCH full pieces, stopping at the first short read -
 * and publish it. Returns false at end of file (or a PTY's EIO), true otherwise. */
static bool pump(proc_t *p, int fd, int kind)
{
    size_t cap = kind == CH_PTY ? PTY_CHUNK : PIPE_CHUNK;
    chunk_t *cs[READ_BATCH];
    size_t n = 0;
    bool open = true;
    while (n < READ_BATCH) {
        chunk_t *c = chunk_new(kind, cap);
        ssize_t got;
        while ((got = read(fd, c->data, cap)) < 0 && errno == EINTR)
            ;
        if (got <= 0) {
            chunk_unref(c);
            open = got < 0 && errno == EAGAIN;
            break;
        }
        c->len = (size_t)got;
        cs[n++] = c;
        if ((size_t)got < cap)
            break;
    }
    publish(p, cs, n);
    return open;
}

/* Go's syscall.Signal.String() wording, as ProcessState.String() prints it. */
static const char *signal_text(int sig, char *buf, size_t n)
{
    static const char *const names[] = {
        [SIGHUP] = "hangup",
        [SIGINT] = "interrupt",
        [SIGQUIT] = "quit",
        [SIGILL] = "illegal instruction",
        [SIGTRAP] = "trace/breakpoint trap",
        [SIGABRT] = "aborted",
        [SIGBUS] = "bus error",
        [SIGFPE] = "floating point exception",
        [SIGKILL] = "killed",
        [SIGUSR1] = "user defined signal 1",
        [SIGSEGV] = "segmentation fault",
        [SIGUSR2] = "user defined signal 2",
        [SIGPIPE] = "broken pipe",
        [SIGALRM] = "alarm clock",
        [SIGTERM] = "terminated",
        [SIGSTKFLT] = "stack fault",
        [SIGCHLD] = "child exited",
        [SIGCONT] = "continued",
        [SIGSTOP] = "stopped (signal)",
        [SIGTSTP] = "stopped",
        [SIGTTIN] = "stopped (tty input)",
        [SIGTTOU] = "stopped (tty output)",
        [SIGURG] = "urgent I/O condition",
        [SIGXCPU] = "CPU time limit exceeded",
        [SIGXFSZ] = "file size limit exceeded",
        [SIGVTALRM] = "virtual timer expired",
        [SIGPROF] = "profiling timer expired",
        [SIGWINCH] = "window changed",
        [SIGIO] = "I/O possible",
        [SIGPWR] = "power failure",
        [SIGSYS] = "bad system call",
    };
    if (sig > 0 && (size_t)sig < sizeof names / sizeof names[0] && names[sig])
        return names[sig];
    snprintf(buf, n, "signal %d", sig);
    return buf;
}

/* The end event, in proto3 JSON (exitCode 0 and exited false are defaults and left out). */
static chunk_t *end_event(const siginfo_t *si, int werr, char *status, size_t slen)
{
    char text[256], sb[32];
    int n;
    if (werr) {
        snprintf(status, slen, "wait failed");
        n = snprintf(text, sizeof text, "{\"event\":{\"end\":{\"exitCode\":-1,\"error\":\"%s\"}}}",
                     strerror(werr));
    } else if (si->si_code == CLD_EXITED) {
        snprintf(status, slen, "exit status %d", si->si_status);
        if (si->si_status == 0)
            n = snprintf(text, sizeof text,
                         "{\"event\":{\"end\":{\"exited\":true,\"status\":\"%s\"}}}", status);
        else
            n = snprintf(
                text, sizeof text,
                "{\"event\":{\"end\":{\"exitCode\":%d,\"exited\":true,\"status\":\"%s\"}}}",
                si->si_status, status);
    } else {
        snprintf(status, slen, "signal: %s%s", signal_text(si->si_status, sb, sizeof sb),
                 si->si_code == CLD_DUMPED ? " (core dumped)" : "");
        n = snprintf(text, sizeof text, "{\"event\":{\"end\":{\"exitCode\":-1,\"status\":\"%s\"}}}",
                     status);
    }
    if (n < 0 || (size_t)n >= sizeof text)
        n = (int)strlen(text);
    chunk_t *c = chunk_new(CH_END, (size_t)n);
    memcpy(c->data, text, (size_t)n);
    c->len = (size_t)n;
    return c;
}

static void *reader_main(void *arg)
{
    proc_t *p = arg;
    struct proc_table *t = p->t;
    int k0 = p->is_pty ? CH_PTY : CH_STDOUT;
    struct pollfd fds[3] = {
        {.fd = p->is_pty ? p->pty_fd : p->out_fd, .events = POLLIN},
        {.fd = p->is_pty ? -1 : p->err_fd, .events = POLLIN},
        {.fd = p->pidfd, .events = POLLIN},
    };
    const int kinds[2] = {k0, CH_STDERR};
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int werr = 0;
    int64_t t0 = connect_now_ms();
    pthread_setname_np(pthread_self(), "envd-proc");

    for (bool exited = false; !exited;) {
        if (poll(fds, 3, -1) < 0) {
            /* Only EINTR or a transient ENOMEM: the child must still be reaped, so retry. */
            if (errno != EINTR)
                usleep(10000);
            continue;
        }
        for (int i = 0; i < 2; i++)
            if (fds[i].fd >= 0 && fds[i].revents && !pump(p, fds[i].fd, kinds[i]))
                fds[i].fd = -1;
        if (fds[2].revents) {
            pthread_mutex_lock(&p->lock);
            memset(&si, 0, sizeof si);
            if (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) < 0) {
                werr = errno;
                exited = true;
            } else if (si.si_pid != 0) {
                exited = true;
            }
            /* After a wait error the child is gone or never ours: never signal its pid again. */
            p->reaped = exited;
            pthread_mutex_unlock(&p->lock);
        }
    }
    /* Drain what is already buffered; output still held by a background grandchild is not
     * waited for. */
    for (int i = 0; i < 2; i++) {
        for (int k = 0; fds[i].fd >= 0 && k < DRAIN_READS; k++) {
            struct pollfd one = {.fd = fds[i].fd, .events = POLLIN};
            if (poll(&one, 1, 0) <= 0 || !(one.revents & (POLLIN | POLLHUP)))
                break;
            if (!pump(p, fds[i].fd, kinds[i]))
                break;
        }
    }

    char status[96];
    chunk_t *end = end_event(&si, werr, status, sizeof status);
    table_remove(t, p);
    pthread_mutex_lock(&p->lock);
    p->ended = true;
    p->reaped = true;
    xclose(&p->stdin_fd);
    xclose(&p->pty_fd);
    for (sub_t *s = p->subs; s; s = s->next)
        sub_push_locked(s, end);
    pthread_mutex_unlock(&p->lock);
    chunk_unref(end);
    xclose(&p->out_fd);
    xclose(&p->err_fd);
    log_info("proc.ended", "pid=%d status=\"%s\" dur_ms=%lld", (int)p->pid, status,
             (long long)(connect_now_ms() - t0));
    proc_unref(p);

    pthread_mutex_lock(&t->lock);
    t->nreaders--;
    pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* Put p in the table and start its reader. On failure the process is killed and reaped. */
static int proc_launch(struct proc_table *t, proc_t *p, err_t *e)
{
    int r = 0;
    pthread_mutex_lock(&t->lock);
    if (atomic_load(&t->closing)) {
        r = err_set(e, -EAGAIN, "envd is shutting down");
    } else {
        proc_t **pp = &t->list;
        while (*pp)
            pp = &(*pp)->next;
        *pp = p;
        atomic_fetch_add(&p->refs, 1); /* the list's */
        t->nreaders++;
    }
    pthread_mutex_unlock(&t->lock);
    if (r == 0) {
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, READER_STACK);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_t th;
        atomic_fetch_add(&p->refs, 1); /* the reader's */
        int rc = pthread_create(&th, &a, reader_main, p);
        pthread_attr_destroy(&a);
        if (rc == 0)
            return 0;
        atomic_fetch_sub(&p->refs, 1);
        r = err_set(e, -EAGAIN, "cannot start the output reader: %s", strerror(rc));
        table_remove(t, p);
        pthread_mutex_lock(&t->lock);
        t->nreaders--;
        pthread_mutex_unlock(&t->lock);
    }
    pthread_mutex_lock(&p->lock);
    signal_locked(p, SIGKILL, NULL);
    siginfo_t si;
    while (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED) < 0 && errno == EINTR)
        ;
    p->reaped = p->ended = true;
    pthread_mutex_unlock(&p->lock);
    return r;
}

static json_t *config_json(const proc_start_req_t *rq)
{
    json_t *cfg = json_object();
    json_object_set_new(cfg, "cmd", json_string(rq->cmd));
    if (rq->nargs) {
        json_t *a = json_array();
        for (size_t i = 0; i < rq->nargs; i++)
            json_array_append_new(a, json_string(rq->args[i]));
        json_object_set_new(cfg, "args", a);
    }
    if (json_object_size(rq->envs))
        json_object_set_new(cfg, "envs", json_deep_copy(rq->envs));
    if (rq->cwd)
        json_object_set_new(cfg, "cwd", json_string(rq->cwd));
    return cfg;
}

/* ---- handlers ---- */

static int h_start(connect_call_t *c, const json_t *in, connect_source_t *src, err_t *e)
{
    envd_t *d = c->ud;
    struct proc_table *t = d->procs;
    proc_start_req_t rq;
    envd_user_t u = {0};
    char *cwd = NULL;
    char **envp = NULL;
    proc__child_t ch = {
        .pid = -1, .pidfd = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .pty_fd = -1};
    proc_t *p = NULL;
    int r;

    if ((r = proc_decode_start(in, &rq, e)) < 0)
        return r;
    if ((r = envd_rpc_user(d, c->req, &u, e)) < 0)
        goto out;
    if ((r = envd_resolve_path(d, &u, rq.cwd, &cwd, e)) < 0)
        goto out;
    struct stat st;
    if (stat(cwd, &st) < 0 || !S_ISDIR(st.st_mode)) {
        r = err_set(e, -EINVAL, "cwd '%.200s' does not exist or is not a directory", cwd);
        goto out;
    }
    envp = envd_child_env(d, &u, rq.envs);
    proc__spawn_cfg_t cfg = {.cmd = rq.cmd,
                             .args = rq.args,
                             .envp = envp,
                             .cwd = cwd,
                             .user = &u,
                             .pty = rq.has_pty,
                             .cols = rq.cols,
                             .rows = rq.rows,
                             .stdin_pipe = rq.stdin_open};
    if ((r = proc__spawn(&cfg, &ch, e)) < 0)
        goto out;

    p = xcalloc(1, sizeof *p);
    atomic_init(&p->refs, 1); /* this handler's, until the subscriber holds its own */
    p->t = t;
    p->pid = ch.pid;
    p->pidfd = steal_fd(&ch.pidfd);
    p->is_pty = rq.has_pty;
    p->had_stdin = rq.stdin_open && !rq.has_pty;
    p->tag = steal_ptr(&rq.tag);
    p->config = config_json(&rq);
    p->out_fd = steal_fd(&ch.stdout_fd);
    p->err_fd = steal_fd(&ch.stderr_fd);
    p->stdin_fd = steal_fd(&ch.stdin_fd);
    p->pty_fd = steal_fd(&ch.pty_fd);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->space, NULL);

    /* Subscribe before the reader starts so that not a byte of output is missed. */
    pthread_mutex_lock(&p->lock);
    sub_t *s = sub_attach_locked(p, e);
    pthread_mutex_unlock(&p->lock);
    if (!s) {
        r = e->code;
        proc_launch(t, p, NULL); /* a started process must be reaped; the reader does it */
        goto out;
    }
    if ((r = proc_launch(t, p, e)) < 0) {
        sub_free(s);
        goto out;
    }
    log_info("proc.started", "pid=%d user=%s pty=%d stdin=%d", (int)p->pid, u.name, (int)rq.has_pty,
             (int)p->had_stdin);
    source_fill(src, s);
out:
    proc_unref(p);
    proc__child_close(&ch);
    envd_env_free(envp);
    free(cwd);
    envd_user_fini(&u);
    proc_start_req_fini(&rq);
    return r;
}

static int h_connect(connect_call_t *c, const json_t *in, connect_source_t *src, err_t *e)
{
    envd_t *d = c->ud;
    proc_selector_t sel;
    proc_t *p = NULL;
    int r;
    if ((r = proc_decode_selector(in, &sel, e)) < 0)
        return r;
    if ((r = find(d->procs, &sel, &p, e)) < 0)
        goto out;
    pthread_mutex_lock(&p->lock);
    sub_t *s = NULL;
    if (p->ended)
        r = not_found(&sel, e);
    else if (!(s = sub_attach_locked(p, e)))
        r = e->code;
    pthread_mutex_unlock(&p->lock);
    if (s)
        source_fill(src, s);
out:
    proc_unref(p);
    proc_selector_fini(&sel);
    return r;
}

static int h_list(connect_call_t *c, const json_t *in, json_t **resp, err_t *e)
{
    (void)in;
    (void)e;
    envd_t *d = c->ud;
    struct proc_table *t = d->procs;
    json_t *arr = json_array();
    pthread_mutex_lock(&t->lock);
    for (proc_t *p = t->list; p; p = p->next) {
        json_t *info = json_object();
        json_object_set_new(info, "config", json_deep_copy(p->config));
        json_object_set_new(info, "pid", json_integer(p->pid));
        if (p->tag)
            json_object_set_new(info, "tag", json_string(p->tag));
        json_array_append_new(arr, info);
    }
    pthread_mutex_unlock(&t->lock);
    *resp = json_object();
    if (json_array_size(arr))
        json_object_set(*resp, "processes", arr);
    json_decref(arr);
    return 0;
}

/* Write all of data to fd (non-blocking), waiting for room while the client is still there. */
static int write_all(int fd, const char *data, size_t len, int sock, err_t *e)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf[2] = {{.fd = fd, .events = POLLOUT},
                                   {.fd = sock, .events = POLLRDHUP}};
            int n = poll(pf, sock >= 0 ? 2 : 1, 1000);
            if (n > 0 && sock >= 0 && (pf[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
                return err_set(e, -ECANCELED, "client went away while writing input");
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == EIO))
            return err_set(e, -EALREADY, "the process no longer reads its input");
        return err_errno(e, "write input");
    }
    return 0;
}

/* Write input of the given kind to p; sock is the client's socket (a vanished client ends a
 * write that waits for the process to read). */
static int input_write(proc_t *p, proc_input_kind_t kind, const buf_t *data, int sock, err_t *e)
{
    int fd = -1, src = -1, r = 0;
    pthread_mutex_lock(&p->lock);
    if (p->ended)
        r = err_set(e, -ESRCH, "process %d has exited", (int)p->pid);
    else if (kind == PROC_INPUT_STDIN && p->is_pty)
        r = err_set(e, -EIO, "process %d has a PTY: send its input as pty", (int)p->pid);
    else if (kind == PROC_INPUT_PTY && !p->is_pty)
        r = err_set(e, -EIO, "process %d has no PTY: send its input as stdin", (int)p->pid);
    else if (kind == PROC_INPUT_STDIN && !p->had_stdin)
        r = err_set(e, -EALREADY, "process %d was started without stdin", (int)p->pid);
    else if (kind == PROC_INPUT_STDIN && p->stdin_fd < 0)
        r = err_set(e, -EALREADY, "stdin of process %d is closed", (int)p->pid);
    else
        src = p->is_pty ? p->pty_fd : p->stdin_fd;
    /* A duplicate lets the write run outside the lock; closing stdin meanwhile only takes
     * effect once this write is done. */
    if (r == 0 && (fd = fcntl(src, F_DUPFD_CLOEXEC, 3)) < 0)
        r = err_errno(e, "dup");
    pthread_mutex_unlock(&p->lock);
    if (r == 0)
        r = write_all(fd, data->data, data->len, sock, e);
    if (r == -EIO)
        log_warn("proc.input_failed", "pid=%d err=\"%s\"", (int)p->pid, e->msg);
    xclose(&fd);
    return r;
}

static int h_send_input(connect_call_t *c, const json_t *in, json_t **resp, err_t *e)
{
    (void)resp;
    envd_t *d = c->ud;
    proc_input_req_t rq;
    proc_t *p = NULL;
    int r;
    if ((r = proc_decode_input(in, &rq, e)) < 0)
        return r;
    if ((r = find(d->procs, &rq.sel, &p, e)) == 0)
        r = input_write(p, rq.kind, &rq.data, http_req_socket(c->req), e);
    proc_unref(p);
    proc_input_req_fini(&rq);
    return r;
}

static int h_close_stdin(connect_call_t *c, const json_t *in, json_t **resp, err_t *e)
{
    (void)resp;
    envd_t *d = c->ud;
    proc_selector_t sel;
    proc_t *p = NULL;
    int r;
    if ((r = proc_decode_selector(in, &sel, e)) < 0)
        return r;
    if ((r = find(d->procs, &sel, &p, e)) < 0)
        goto out;
    pthread_mutex_lock(&p->lock);
    if (p->is_pty)
        r = err_set(e, -EALREADY,
                    "cannot close stdin of a PTY process: send 0x04 (Ctrl-D) as pty input");
    else if (!p->had_stdin)
        r = err_set(e, -EALREADY, "process %d was started without stdin", (int)p->pid);
    else
        xclose(&p->stdin_fd); /* closing twice is not an error */
    pthread_mutex_unlock(&p->lock);
out:
    proc_unref(p);
    proc_selector_fini(&sel);
    return r;
}

static int h_send_signal(connect_call_t *c, const json_t *in, json_t **resp, err_t *e)
{
    (void)resp;
    envd_t *d = c->ud;
    proc_signal_req_t rq;
    proc_t *p = NULL;
    int r;
    if ((r = proc_decode_signal(in, &rq, e)) < 0)
        return r;
    if ((r = find(d->procs, &rq.sel, &p, e)) < 0)
        goto out;
    pthread_mutex_lock(&p->lock);
    r = signal_locked(p, rq.signo, e);
    pthread_mutex_unlock(&p->lock);
    if (r == 0)
        log_info("proc.signalled", "pid=%d signal=%d", (int)p->pid, rq.signo);
out:
    if (r == -EIO)
        log_warn("proc.signal_failed", "err=\"%s\"", e->msg);
    proc_unref(p);
    proc_signal_req_fini(&rq);
    return r;
}

static int h_update(connect_call_t *c, const json_t *in, json_t **resp, err_t *e)
{
    (void)resp;
    envd_t *d = c->ud;
    proc_update_req_t rq;
    proc_t *p = NULL;
    int r;
    if ((r = proc_decode_update(in, &rq, e)) < 0)
        return r;
    if ((r = find(d->procs, &rq.sel, &p, e)) < 0)
        goto out;
    if (!rq.has_pty)
        goto out;
    pthread_mutex_lock(&p->lock);
    struct winsize ws = {.ws_row = rq.rows, .ws_col = rq.cols};
    if (!p->is_pty)
        r = err_set(e, -EIO, "process %d has no PTY to resize", (int)p->pid);
    else if (p->pty_fd < 0)
        r = err_set(e, -ESRCH, "process %d has exited", (int)p->pid);
    else if (ioctl(p->pty_fd, TIOCSWINSZ, &ws) < 0)
        r = err_errno(e, "resize pty");
    pthread_mutex_unlock(&p->lock);
out:
    if (r == -EIO)
        log_warn("proc.update_failed", "err=\"%s\"", e->msg);
    proc_unref(p);
    proc_update_req_fini(&rq);
    return r;
}

const connect_method_t proc_methods[] = {
    {"/process.Process/Start", NULL, h_start},
    {"/process.Process/Connect", NULL, h_connect},
    {"/process.Process/List", h_list, NULL},
    {"/process.Process/SendInput", h_send_input, NULL},
    {"/process.Process/CloseStdin", h_close_stdin, NULL},
    {"/process.Process/SendSignal", h_send_signal, NULL},
    {"/process.Process/Update", h_update, NULL},
};
const size_t proc_nmethods = sizeof proc_methods / sizeof proc_methods[0];

/* ---- StreamInput: a client stream, served as a plain HTTP route ----
 *
 * The Connect layer only knows unary calls and server streams, so this route parses the request
 * envelopes itself as the body arrives and writes each input as soon as its envelope is
 * complete. The answer (one {} message and the end of stream) goes out when the client ends
 * the request body. */

struct sin {
    envd_t *d;
    buf_t pending; /* an incomplete envelope */
    proc_t *p;     /* selected by the first message */
};

static bool is_connect_json(const char *ct)
{
    static const char want[] = "application/connect+json";
    return ct && strncasecmp(ct, want, sizeof want - 1) == 0 &&
           (ct[sizeof want - 1] == '\0' || ct[sizeof want - 1] == ';');
}

/* Errors in the stream's dialect: an end-of-stream envelope in a 200 answer, except for a
 * request that is not a Connect stream at all, which gets the unary error body and status. */
static void sin_error(http_req_t *req, int code, const err_t *e)
{
    buf_t b;
    buf_init(&b);
    if (!is_connect_json(http_req_header(req, "Content-Type"))) {
        connect_error_json(&b, code, e);
        http_respond_buf(req, err_status(code).http, "application/json", &b);
        return;
    }
    connect_end_stream_add(&b, code, e);
    http_respond_buf(req, 200, "application/connect+json", &b);
}

static int sin_headers(http_req_t *req, void *ud, err_t *e)
{
    const char *ct = http_req_header(req, "Content-Type");
    if (!is_connect_json(ct))
        return err_set(e, -EPROTONOSUPPORT,
                       "unsupported content type %.64s (use application/connect+json)",
                       ct ? ct : "(none)");
    const char *pv = http_req_header(req, "Connect-Protocol-Version");
    if (pv && strcmp(pv, "1") != 0)
        return err_set(e, -EINVAL, "connect-protocol-version must be 1");
    const char *enc = http_req_header(req, "Connect-Content-Encoding");
    if (enc && strcmp(enc, "identity") != 0)
        return err_set(e, -ENOSYS, "compression %.32s is not supported", enc);
    int r = envd_check_token(req, ud, e);
    if (r < 0)
        return r;
    struct sin *s = xcalloc(1, sizeof *s);
    s->d = ud;
    buf_init(&s->pending);
    http_req_set_state(req, s);
    return 0;
}

static int sin_message(http_req_t *req, struct sin *s, const char *msg, size_t len, err_t *e)
{
    json_t *in = NULL;
    proc_sin_msg_t m;
    int r = pjson_parse(msg, len, &in, e);
    if (r < 0)
        return r;
    r = proc_decode_stream_input(in, &m, e);
    json_decref(in);
    if (r < 0)
        return r;
    if (m.kind == PROC_SIN_START) {
        if (s->p)
            r = err_set(e, -EINVAL, "the process was already selected");
        else
            r = find(s->d->procs, &m.sel, &s->p, e);
    } else if (!s->p) {
        r = err_set(e, -EINVAL, "the first message must be start, selecting the process");
    } else if (m.kind == PROC_SIN_DATA) {
        r = input_write(s->p, m.input, &m.data, http_req_socket(req), e);
    }
    proc_sin_msg_fini(&m);
    return r;
}

static int sin_body(http_req_t *req, const char *data, size_t len, void *ud, err_t *e)
{
    (void)ud;
    struct sin *s = http_req_state(req);
    buf_add(&s->pending, data, len);
    for (;;) {
        uint8_t flags = 0;
        uint32_t mlen = 0;
        long n = connect_envelope_parse(s->pending.data, s->pending.len, CONNECT_MAX_MESSAGE,
                                        &flags, &mlen);
        if (n < 0)
            return err_set(e, (int)n, n == -EMSGSIZE ? "message too large" : "malformed envelope");
        if (n == 0)
            return 0;
        if (flags != 0)
            return err_set(e, -EINVAL, "request envelopes must be uncompressed messages");
        int r = sin_message(req, s, s->pending.data + 5, mlen, e);
        if (r < 0)
            return r;
        buf_consume(&s->pending, (size_t)n);
    }
}

static void sin_handle(http_req_t *req, void *ud)
{
    (void)ud;
    struct sin *s = http_req_state(req);
    err_t e = {0};
    if (s->pending.len) {
        err_set(&e, -EINVAL, "the request ends inside an envelope");
        sin_error(req, e.code, &e);
        return;
    }
    if (!s->p) {
        err_set(&e, -EINVAL, "the first message must be start, selecting the process");
        sin_error(req, e.code, &e);
        return;
    }
    buf_t b;
    buf_init(&b);
    connect_envelope_add(&b, 0, "{}", 2);
    connect_end_stream_add(&b, 0, NULL);
    http_respond_buf(req, 200, "application/connect+json", &b);
}

static void sin_cleanup(http_req_t *req, void *ud)
{
    (void)ud;
    struct sin *s = http_req_state(req);
    if (!s)
        return;
    proc_unref(s->p);
    buf_fini(&s->pending);
    free(s);
    http_req_set_state(req, NULL);
}

size_t proc_routes(envd_t *d, http_route_t *out, size_t max)
{
    if (max < 1)
        return 0;
    memset(out, 0, sizeof *out);
    out->method = "POST";
    out->path = "/process.Process/StreamInput";
    out->on_headers = sin_headers;
    out->on_body = sin_body;
    out->handle = sin_handle;
    out->cleanup = sin_cleanup;
    out->error = sin_error;
    out->ud = d;
    return 1;
}

/* ---- table life cycle ---- */

int proc_table_new(envd_t *d, struct proc_table **out, err_t *e)
{
    (void)e;
    struct proc_table *t = xcalloc(1, sizeof *t);
    t->d = d;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->idle, NULL);
    atomic_init(&t->closing, false);
    *out = t;
    return 0;
}

void proc_table_free(struct proc_table *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->lock);
    atomic_store(&t->closing, true);
    for (proc_t *p = t->list; p; p = p->next) {
        pthread_mutex_lock(&p->lock);
        signal_locked(p, SIGKILL, NULL);
        pthread_cond_broadcast(&p->space);
        pthread_mutex_unlock(&p->lock);
    }
    /* The readers reap their processes and leave; wait for them, within reason. */
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += SHUTDOWN_WAIT_MS / 1000;
    while (t->nreaders > 0)
        if (pthread_cond_timedwait(&t->idle, &t->lock, &dl) == ETIMEDOUT)
            break;
    int left = t->nreaders;
    pthread_mutex_unlock(&t->lock);
    if (left > 0) {
        /* A reader still runs and uses the table: leak it rather than free it under it. */
        log_warn("proc.shutdown_incomplete", "readers=%d", left);
        return;
    }
    pthread_cond_destroy(&t->idle);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* Under TCG a guest's first command pays for translating the spawn path (clone3, exec, pidfd
 * wait) once: about 150 ms, which the first real command of a new sandbox would otherwise wait
 * for. Run one throwaway `true` in the background as soon as envd serves, so the first real
 * command finds that work done. */
static void *warm_up(void *arg)
{
    envd_t *d = arg;
    /* Lowest priority (this thread and the `true` it starts): the guest's first requests
     * (/init, the first command) must not queue behind the warm-up on a one-vCPU guest; it
     * uses the time in between. */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), 19) < 0)
        log_debug("proc.warm_up_nice_failed", "err=%d", errno);
    envd_user_t u;
    err_t e = {0};
    if (envd_user_lookup("root", &u, &e) < 0)
        return NULL;
    char **env = envd_child_env(d, &u, NULL);
    char *const args[] = {NULL};
    proc__spawn_cfg_t cfg = {
        .cmd = "true", .args = args, .envp = env, .cwd = "/", .user = &u, .nice = 19};
    proc__child_t c = {
        .pid = -1, .pidfd = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .pty_fd = -1};
    if (proc__spawn(&cfg, &c, &e) == 0) {
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)c.pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        proc__child_close(&c);
    } else {
        log_debug("proc.warm_up_failed", "err=\"%s\"", e.msg);
    }
    envd_env_free(env);
    envd_user_fini(&u);
    return NULL;
}

void proc_warm_up(envd_t *d)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 256 * 1024);
    if (pthread_create(&t, &a, warm_up, d) != 0)
        log_debug("proc.warm_up_failed", "err=thread");
    pthread_attr_destroy(&a);
}
