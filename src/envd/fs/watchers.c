/* WatchDir (a server stream of filesystem events) and its polling variant, the watcher table:
 * CreateWatcher / GetWatcherEvents / RemoveWatcher. */
#include "fs.h"
#include "internal.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <poll.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Events a stream holds between reads of the inotify descriptor. */
#define STREAM_QUEUE_MAX 100000
/* Events a watcher buffers between two GetWatcherEvents calls. */
#define WATCHER_MAX_EVENTS 10000
/* Watchers alive at once: each holds a thread and an inotify instance. */
#define MAX_WATCHERS  256
#define WATCHER_STACK (1024 * 1024)

/* ---- WatchDir ---- */

struct wstream {
    envd_user_t u;
    fs__watch_t *w;
    fs__evq_t q;
    bool started;
};

static void wstream_free(void *ud)
{
    struct wstream *s = ud;
    if (!s)
        return;
    fs__watch_close(s->w);
    fs__evq_fini(&s->q);
    envd_user_fini(&s->u);
    free(s);
}

static void event_message(const fs__event_t *ev, buf_t *out)
{
    json_t *m = json_object();
    json_object_set_new(m, "filesystem", fs__event_json(ev));
    pjson_dump(m, out);
    json_decref(m);
}

static int wstream_next(void *ud, buf_t *out, err_t *e)
{
    struct wstream *s = ud;
    if (!s->started) {
        s->started = true;
        buf_adds(out, "{\"start\":{}}");
        return CONNECT_MSG;
    }
    if (s->q.n == 0) {
        /* Following new subdirectories touches the filesystem: do it as the user. */
        int r = envd_fs_become(&s->u, e);
        if (r < 0)
            return r;
        r = fs__watch_read(s->w, &s->q, e);
        envd_fs_restore();
        if (r < 0)
            return r;
    }
    fs__event_t ev;
    if (!fs__evq_pop(&s->q, &ev))
        return CONNECT_IDLE;
    event_message(&ev, out);
    free(ev.name);
    return CONNECT_MSG;
}

/* Decode, find the user, resolve the path and open the watch as that user: what WatchDir and
 * CreateWatcher share. On success the user moves to *u. */
static int open_watch(connect_call_t *c, const json_t *req, envd_user_t *u, fs__watch_t **w,
                      err_t *e)
{
    fs_watch_req_t q;
    fs__ctx_t x = {0};
    char *path = NULL;
    int r;
    if ((r = fs_decode_watch(req, &q, e)) < 0 || (r = fs__begin(c, &x, e)) < 0 ||
        (r = envd_resolve_path(c->ud, &x.u, q.path, &path, e)) < 0 ||
        (r = fs__watch_open(path, q.recursive, w, e)) < 0)
        goto out;
    log_debug("fs.watch", "path=%s recursive=%d user=%s", path, (int)q.recursive, x.u.name);
    *u = x.u;
    memset(&x.u, 0, sizeof x.u);
out:
    fs__end(&x);
    free(path);
    return r;
}

int fs__watch_dir(connect_call_t *c, const json_t *req, connect_source_t *src, err_t *e)
{
    struct wstream *s = xcalloc(1, sizeof *s);
    int r = open_watch(c, req, &s->u, &s->w, e);
    if (r < 0) {
        wstream_free(s);
        return r;
    }
    fs__evq_init(&s->q, STREAM_QUEUE_MAX);
    src->fd = fs__watch_fd(s->w);
    src->next = wstream_next;
    src->free = wstream_free;
    src->keepalive = "{\"keepalive\":{}}";
    src->ud = s;
    return 0;
}

/* ---- Watchers ---- */

/* One watcher: a thread that moves events from its inotify watch into `events` until stopped.
 * The thread owns `w`; `lock` guards events, lost, lost_msg, fatal and fatal_err. */
struct watcher {
    struct watcher *next;
    char id[32];
    envd_user_t u;
    fs__watch_t *w;
    int stopfd;
    pthread_t thread;
    bool running;
    pthread_mutex_t lock;
    fs__evq_t events;
    bool lost;
    err_t lost_msg;
    int fatal;
    err_t fatal_err;
};

/* The table of watchers. `lock` guards list and n, and is never held across I/O; it may be
 * taken before a watcher's own lock, never after. */
struct fs_watchers {
    envd_t *d;
    pthread_mutex_t lock;
    struct watcher *list;
    size_t n;
};

static void *watcher_main(void *arg)
{
    struct watcher *wt = arg;
    err_t e = {0};
    fs__evq_t local;
    fs__evq_init(&local, WATCHER_MAX_EVENTS);
    /* This thread acts for the user for its whole life: new subdirectories are followed with
     * the user's permissions. */
    int r = envd_fs_become(&wt->u, &e);
    while (r == 0) {
        struct pollfd p[2] = {{.fd = fs__watch_fd(wt->w), .events = POLLIN},
                              {.fd = wt->stopfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            r = err_errno(&e, "poll");
            break;
        }
        if (p[1].revents)
            break;
        if (!p[0].revents)
            continue;
        err_clear(&e);
        r = fs__watch_read(wt->w, &local, &e);
        pthread_mutex_lock(&wt->lock);
        fs__event_t ev;
        while (fs__evq_pop(&local, &ev)) {
            if (!wt->lost && !fs__evq_push(&wt->events, ev.name, ev.type)) {
                wt->lost = true;
                err_set(&wt->lost_msg, -EMFILE,
                        "more than %d events since the last GetWatcherEvents: some were lost",
                        WATCHER_MAX_EVENTS);
            }
            free(ev.name);
        }
        if (r == -EMFILE && !wt->lost) {
            wt->lost = true;
            wt->lost_msg = e;
        }
        pthread_mutex_unlock(&wt->lock);
        if (r == -EMFILE)
            r = 0; /* events were lost, the watch goes on */
    }
    if (r < 0) {
        log_warn("fs.watcher_failed", "id=%s err=\"%s\"", wt->id, e.msg);
        pthread_mutex_lock(&wt->lock);
        wt->fatal = r;
        wt->fatal_err = e;
        pthread_mutex_unlock(&wt->lock);
    }
    envd_fs_restore();
    fs__evq_fini(&local);
    return NULL;
}

static void watcher_free(struct watcher *wt)
{
    if (!wt)
        return;
    if (wt->running) {
        uint64_t one = 1;
        ssize_t n = write(wt->stopfd, &one, sizeof one);
        (void)n;
        pthread_join(wt->thread, NULL);
    }
    if (wt->stopfd >= 0)
        close(wt->stopfd);
    fs__watch_close(wt->w);
    fs__evq_fini(&wt->events);
    pthread_mutex_destroy(&wt->lock);
    envd_user_fini(&wt->u);
    free(wt);
}

static struct watcher **find(struct fs_watchers *t, const char *id)
{
    for (struct watcher **p = &t->list; *p; p = &(*p)->next)
        if (strcmp((*p)->id, id) == 0)
            return p;
    return NULL;
}

/* "w" and 20 random characters of [a-z0-9], unique in the table (caller holds t->lock). */
static void new_id(struct fs_watchers *t, char *out, size_t n)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    do {
        out[0] = 'w';
        size_t i = 1;
        for (; i < 21 && i + 1 < n; i++)
            out[i] = alphabet[randombytes_uniform(sizeof alphabet - 1)];
        out[i] = '\0';
    } while (find(t, out));
}

int fs__create_watcher(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    envd_t *d = c->ud;
    struct fs_watchers *t = d->watchers;
    struct watcher *wt = xcalloc(1, sizeof *wt);
    wt->stopfd = -1;
    pthread_mutex_init(&wt->lock, NULL);
    fs__evq_init(&wt->events, WATCHER_MAX_EVENTS);
    pthread_attr_t attr;
    bool attr_ok = false;
    int r;

    pthread_mutex_lock(&t->lock);
    bool full = t->n >= MAX_WATCHERS;
    pthread_mutex_unlock(&t->lock);
    if (full) {
        r = err_set(e, -EMFILE, "too many watchers (at most %d): remove some first", MAX_WATCHERS);
        goto fail;
    }
    if ((r = open_watch(c, req, &wt->u, &wt->w, e)) < 0)
        goto fail;
    wt->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wt->stopfd < 0) {
        r = err_errno(e, "eventfd");
        goto fail;
    }
    if (pthread_attr_init(&attr) != 0) {
        r = err_set(e, -EAGAIN, "cannot start watcher");
        goto fail;
    }
    attr_ok = true;
    pthread_attr_setstacksize(&attr, WATCHER_STACK);
    int pr = pthread_create(&wt->thread, &attr, watcher_main, wt);
    if (pr != 0) {
        r = err_set(e, -EAGAIN, "cannot start watcher: %s", strerror(pr));
        goto fail;
    }
    wt->running = true;
    pthread_attr_destroy(&attr);
    attr_ok = false;

    pthread_mutex_lock(&t->lock);
    if (t->n >= MAX_WATCHERS) {
        pthread_mutex_unlock(&t->lock);
        r = err_set(e, -EMFILE, "too many watchers (at most %d): remove some first", MAX_WATCHERS);
        goto fail;
    }
    new_id(t, wt->id, sizeof wt->id);
    wt->next = t->list;
    t->list = wt;
    t->n++;
    *resp = json_object();
    json_object_set_new(*resp, "watcherId", json_string(wt->id));
    pthread_mutex_unlock(&t->lock);
    return 0;
fail:
    if (attr_ok)
        pthread_attr_destroy(&attr);
    watcher_free(wt);
    return r;
}

int fs__get_watcher_events(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    envd_t *d = c->ud;
    struct fs_watchers *t = d->watchers;
    fs_watcher_req_t q;
    fs__evq_t got;
    fs__evq_init(&got, 0);
    int r;
    if ((r = fs_decode_watcher(req, &q, e)) < 0)
        return r;
    pthread_mutex_lock(&t->lock);
    struct watcher **p = find(t, q.watcher_id);
    if (!p) {
        pthread_mutex_unlock(&t->lock);
        return err_set(e, -ENOENT, "watcher with id %s not found", q.watcher_id);
    }
    struct watcher *wt = *p;
    pthread_mutex_lock(&wt->lock);
    if (wt->fatal) {
        /* A watcher that stopped says so on every call, as E2B's does. */
        r = wt->fatal;
        if (e)
            *e = wt->fatal_err;
    } else {
        /* Take the buffer as it is; on overflow the events are dropped and the loss reported
         * once, after which the watcher starts afresh. */
        got = wt->events;
        fs__evq_init(&wt->events, WATCHER_MAX_EVENTS);
        if (wt->lost) {
            r = wt->lost_msg.code ? wt->lost_msg.code : -EMFILE;
            if (e)
                *e = wt->lost_msg;
            wt->lost = false;
            err_clear(&wt->lost_msg);
        }
    }
    pthread_mutex_unlock(&wt->lock);
    pthread_mutex_unlock(&t->lock);
    if (r == 0) {
        json_t *arr = json_array();
        fs__event_t ev;
        while (fs__evq_pop(&got, &ev)) {
            json_array_append_new(arr, fs__event_json(&ev));
            free(ev.name);
        }
        *resp = json_object();
        if (json_array_size(arr))
            json_object_set_new(*resp, "events", arr);
        else
            json_decref(arr);
    }
    fs__evq_fini(&got);
    return r;
}

int fs__remove_watcher(connect_call_t *c, const json_t *req, json_t **resp, err_t *e)
{
    envd_t *d = c->ud;
    struct fs_watchers *t = d->watchers;
    fs_watcher_req_t q;
    (void)resp;
    int r;
    if ((r = fs_decode_watcher(req, &q, e)) < 0)
        return r;
    pthread_mutex_lock(&t->lock);
    struct watcher **p = find(t, q.watcher_id);
    struct watcher *wt = NULL;
    if (p) {
        wt = *p;
        *p = wt->next;
        t->n--;
    }
    pthread_mutex_unlock(&t->lock);
    if (!wt)
        return err_set(e, -ENOENT, "watcher with id %s not found", q.watcher_id);
    /* Joining the thread happens outside the table lock. */
    watcher_free(wt);
    return 0;
}

int fs_watchers_new(envd_t *d, struct fs_watchers **out, err_t *e)
{
    (void)e;
    struct fs_watchers *t = xcalloc(1, sizeof *t);
    t->d = d;
    pthread_mutex_init(&t->lock, NULL);
    *out = t;
    return 0;
}

void fs_watchers_free(struct fs_watchers *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->lock);
    struct watcher *list = t->list;
    t->list = NULL;
    t->n = 0;
    pthread_mutex_unlock(&t->lock);
    while (list) {
        struct watcher *next = list->next;
        watcher_free(list);
        list = next;
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
}
