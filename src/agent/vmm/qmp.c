#include "qmp.h"

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"
#include "xalloc.h"

/* The longest message we accept from QEMU; replies we ask for are a few KiB. */
#define QMP_MSG_MAX (4u << 20)

struct qmp {
    int fd;
    buf_t in;       /* bytes read but not yet parsed */
    json_t *events; /* queued events, oldest first */
    uint64_t next_id;
    bool closed;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining(int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left < 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

static void queue_event(qmp_t *q, json_t *msg)
{
    const char *name = json_string_value(json_object_get(msg, "event"));
    log_debug("vmm.qmp_event", "event=%s", name ? name : "?");
    if (json_array_size(q->events) >= QMP_EVENTS_MAX)
        json_array_remove(q->events, 0);
    json_array_append(q->events, msg);
}

/* Read the next JSON message. pidfd >= 0 is watched too: its readiness while no data is pending
 * means the server process died. */
static int read_msg(qmp_t *q, int pidfd, int64_t deadline, json_t **out, err_t *e)
{
    for (;;) {
        char *nl = q->in.len ? memchr(q->in.data, '\n', q->in.len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - q->in.data);
            json_error_t jerr;
            json_t *msg = NULL;
            /* Skip blank lines (QEMU ends lines with "\r\n"). */
            bool blank = true;
            for (size_t i = 0; i < n; i++)
                if (q->in.data[i] != '\r' && q->in.data[i] != ' ')
                    blank = false;
            if (!blank)
                msg = json_loadb(q->in.data, n, JSON_REJECT_DUPLICATES, &jerr);
            buf_consume(&q->in, n + 1);
            if (blank)
                continue;
            if (!msg || !json_is_object(msg)) {
                json_decref(msg);
                return err_set(e, -EPROTO, "qmp: malformed message from the VMM");
            }
            *out = msg;
            return 0;
        }
        if (q->closed)
            return err_set(e, -ECONNRESET, "qmp: connection closed by the VMM");
        if (q->in.len > QMP_MSG_MAX)
            return err_set(e, -EMSGSIZE, "qmp: message too long");
        struct pollfd p[2] = {{.fd = q->fd, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
        int np = pidfd >= 0 ? 2 : 1;
        int left = remaining(deadline);
        int r = poll(p, (nfds_t)np, left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return err_errno(e, "qmp: poll");
        }
        if (r == 0)
            return err_set(e, -ETIMEDOUT, "qmp: no answer from the VMM");
        if (p[0].revents) {
            buf_reserve(&q->in, 16384);
            ssize_t got = recv(q->fd, q->in.data + q->in.len, q->in.cap - q->in.len - 1, 0);
            if (got < 0) {
                if (errno == EINTR || errno == EAGAIN)
                    continue;
                if (errno == ECONNRESET) {
                    q->closed = true;
                    continue;
                }
                return err_errno(e, "qmp: recv");
            }
            if (got == 0) {
                q->closed = true;
                continue;
            }
            q->in.len += (size_t)got;
            q->in.data[q->in.len] = '\0';
            continue;
        }
        if (np == 2 && p[1].revents)
            return err_set(e, -ESRCH, "qmp: the VMM process exited");
    }
}

/* Send msg; when fd >= 0 it rides along (SCM_RIGHTS) with the first bytes, which is how QEMU
 * receives fds for "getfd". */
static int send_json(qmp_t *q, json_t *msg, int fd, err_t *e)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    if (!s)
        return err_set(e, -ENOMEM, "qmp: cannot encode command");
    size_t len = strlen(s);
    size_t off = 0;
    int rc = 0;
    s = xrealloc(s, len + 2);
    s[len++] = '\n';
    while (off < len) {
        ssize_t w;
        if (fd >= 0 && off == 0) {
            union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
            } u;
            memset(&u, 0, sizeof u);
            struct iovec iov = {.iov_base = s, .iov_len = len};
            struct msghdr mh = {.msg_iov = &iov,
                                .msg_iovlen = 1,
                                .msg_control = u.buf,
                                .msg_controllen = sizeof u.buf};
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
            w = sendmsg(q->fd, &mh, MSG_NOSIGNAL);
        } else {
            w = send(q->fd, s + off, len - off, MSG_NOSIGNAL);
        }
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET) {
                q->closed = true;
                rc = err_set(e, -ECONNRESET, "qmp: connection closed by the VMM");
            } else {
                rc = err_errno(e, "qmp: send");
            }
            break;
        }
        off += (size_t)w;
    }
    free(s);
    return rc;
}

static int execute(qmp_t *q, int pidfd, const char *cmd, json_t *args, int fd, json_t **ret,
                   int64_t deadline, err_t *e)
{
    uint64_t id = ++q->next_id;
    json_t *msg = json_pack("{s:s, s:I}", "execute", cmd, "id", (json_int_t)id);
    if (args)
        json_object_set_new(msg, "arguments", args);
    int rc = send_json(q, msg, fd, e);
    json_decref(msg);
    if (rc < 0)
        return rc;
    for (;;) {
        json_t *m = NULL;
        rc = read_msg(q, pidfd, deadline, &m, e);
        if (rc < 0)
            return rc;
        if (json_object_get(m, "event")) {
            queue_event(q, m);
            json_decref(m);
            continue;
        }
        json_t *jid = json_object_get(m, "id");
        if (!json_is_integer(jid) || (uint64_t)json_integer_value(jid) != id) {
            json_decref(m);
            continue; /* a stray reply (e.g. to a command whose wait timed out) */
        }
        json_t *err = json_object_get(m, "error");
        if (err) {
            const char *cls = json_string_value(json_object_get(err, "class"));
            const char *desc = json_string_value(json_object_get(err, "desc"));
            int code = cls && strcmp(cls, "CommandNotFound") == 0 ? -ENOSYS : -EIO;
            rc = err_set(e, code, "qmp %s: %s", cmd, desc ? desc : (cls ? cls : "error"));
        } else if (ret) {
            json_t *r = json_object_get(m, "return");
            *ret = r ? json_incref(r) : json_object();
        }
        json_decref(m);
        return rc;
    }
}

int qmp_connect(const char *path, int pidfd, int timeout_ms, qmp_t **out, err_t *e)
{
    int64_t deadline = now_ms() + timeout_ms;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof sa.sun_path)
        return err_set(e, -ENAMETOOLONG, "qmp: socket path too long");
    strcpy(sa.sun_path, path);

    qmp_t *q = xcalloc(1, sizeof *q);
    q->fd = -1;
    buf_init(&q->in);
    q->events = json_array();
    int rc = 0;
    json_t *greeting = NULL;

    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (q->fd < 0) {
        rc = err_errno(e, "qmp: socket");
        goto fail;
    }
    if (connect(q->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        rc = err_errno(e, "qmp: connect");
        goto fail;
    }
    rc = read_msg(q, pidfd, deadline, &greeting, e);
    if (rc < 0)
        goto fail;
    if (!json_object_get(greeting, "QMP")) {
        rc = err_set(e, -EPROTO, "qmp: no greeting from the VMM");
        goto fail;
    }
    rc = execute(q, pidfd, "qmp_capabilities", NULL, -1, NULL, deadline, e);
    if (rc < 0)
        goto fail;
    json_decref(greeting);
    *out = q;
    return 0;
fail:
    json_decref(greeting);
    qmp_free(q);
    return rc;
}

int qmp_execute(qmp_t *q, const char *cmd, json_t *args, json_t **ret, int timeout_ms, err_t *e)
{
    if (ret)
        *ret = NULL;
    if (!q || !cmd) {
        json_decref(args);
        return err_set(e, -EINVAL, "qmp: no connection");
    }
    return execute(q, -1, cmd, args, -1, ret, now_ms() + timeout_ms, e);
}

int qmp_execute_fd(qmp_t *q, const char *cmd, json_t *args, int fd, json_t **ret, int timeout_ms,
                   err_t *e)
{
    if (ret)
        *ret = NULL;
    if (!q || !cmd) {
        json_decref(args);
        return err_set(e, -EINVAL, "qmp: no connection");
    }
    return execute(q, -1, cmd, args, fd, ret, now_ms() + timeout_ms, e);
}

json_t *qmp_take_event(qmp_t *q)
{
    if (!q || json_array_size(q->events) == 0)
        return NULL;
    json_t *ev = json_incref(json_array_get(q->events, 0));
    json_array_remove(q->events, 0);
    return ev;
}

int qmp_wait_event(qmp_t *q, const char *name, int timeout_ms, json_t **ev, err_t *e)
{
    int64_t deadline = now_ms() + timeout_ms;
    if (ev)
        *ev = NULL;
    if (!q || !name)
        return err_set(e, -EINVAL, "qmp: no connection");
    size_t i;
    json_t *m;
    json_array_foreach(q->events, i, m)
    {
        const char *n = json_string_value(json_object_get(m, "event"));
        if (n && strcmp(n, name) == 0) {
            if (ev)
                *ev = json_incref(m);
            json_array_remove(q->events, i);
            return 0;
        }
    }
    for (;;) {
        int rc = read_msg(q, -1, deadline, &m, e);
        if (rc < 0)
            return rc;
        const char *n = json_string_value(json_object_get(m, "event"));
        if (n && strcmp(n, name) == 0) {
            if (ev)
                *ev = m;
            else
                json_decref(m);
            return 0;
        }
        if (n)
            queue_event(q, m);
        json_decref(m);
    }
}

int qmp_fd(const qmp_t *q)
{
    return q ? q->fd : -1;
}

void qmp_free(qmp_t *q)
{
    if (!q)
        return;
    xclose(&q->fd);
    buf_fini(&q->in);
    json_decref(q->events);
    free(q);
}
