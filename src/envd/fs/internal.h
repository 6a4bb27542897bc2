/* Cross-file internals of the filesystem service (prefix fs__). Not part of envd's interface. */
#ifndef WRENN_ENVD_FS_INTERNAL_H
#define WRENN_ENVD_FS_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "envd.h"
#include "err.h"

/* ---- The caller's identity for one request (fs.c) ---- */

/** One request's user, and whether the thread currently acts as that user. */
typedef struct fs__ctx {
    envd_user_t u;
    bool became;
} fs__ctx_t;

/** Look up the call's user (Basic auth, else the default user) and switch the calling thread to
 * it (envd_fs_become). Errors: -EKEYREJECTED for an unknown user, or what envd_fs_become says.
 * Always pair with fs__end(), also after a failure. */
int fs__begin(connect_call_t *c, fs__ctx_t *x, err_t *e);
/** Restore envd's identity on this thread and release the user. */
void fs__end(fs__ctx_t *x);

/** Set *e from errno after a failed filesystem call on path: "<what> <path>: <strerror>".
 * Codes without a useful wire status are folded into ones that have one (EROFS → EPERM, EXDEV,
 * EBUSY, ETXTBSY → EINVAL, EMLINK → ENOSPC, ENFILE → EMFILE). Returns the negative code. */
int fs__errno(err_t *e, const char *what, const char *path);

/* ---- EntryInfo (entry.c) ---- */

#define FS__IDCACHE_N 32

/** uid/gid → name, remembered for the duration of one request: envd_uid_name() reads
 * /etc/passwd on every call. Not thread-safe; keep one per request on the stack. */
typedef struct fs__idcache {
    size_t nu, ng, next_u, next_g;
    struct {
        unsigned id;
        char name[64];
    } u[FS__IDCACHE_N], g[FS__IDCACHE_N];
} fs__idcache_t;

/** Build an EntryInfo JSON object for `real`, which lstat reported as *st (NULL: lstat it now).
 * `reported` is the path to show (ListDir shows paths under the requested, unresolved root).
 * Symlinks get their target's type and mode and symlinkTarget = the fully resolved target (the
 * link's own path when it does not resolve). Defaults are omitted as proto3 JSON wants.
 * Errors: lstat's (-ENOENT, -EACCES, ...). *out is a new reference. */
int fs__entry(const char *real, const char *reported, const struct stat *st, fs__idcache_t *c,
              json_t **out, err_t *e);

/** Go's os.FileMode.String() of a st_mode, as E2B's envd reports it ("drwxr-xr-x",
 * "Lrwxrwxrwx", "dtrwxrwxrwx"); out must hold at least 24 bytes. */
void fs__mode_string(mode_t m, char *out);

/** Join dir and name with one '/' ("/" + "x" → "/x"). malloc'd. */
char *fs__join(const char *dir, const char *name);

/** Every name in directory path except "." and "..", sorted bytewise, with its d_type (DT_UNKNOWN
 * when the filesystem does not say). Errors: opendir's. Free with fs__names_free(). */
typedef struct fs__names {
    char **name;
    unsigned char *type;
    size_t n;
} fs__names_t;
int fs__names_read(int dirfd, const char *path, fs__names_t *out, err_t *e);
void fs__names_free(fs__names_t *n);

/* ---- Filesystem events (watch.c) ---- */

enum {
    FS__EV_CREATE = 1,
    FS__EV_WRITE = 2,
    FS__EV_REMOVE = 3,
    FS__EV_RENAME = 4,
    FS__EV_CHMOD = 5,
};

/** A FilesystemEvent: name relative to the watched directory, EventType value. */
typedef struct fs__event {
    char *name;
    int type;
} fs__event_t;

/** A FIFO of events holding at most `max`. Owned by one thread or guarded by its owner's lock. */
typedef struct fs__evq {
    fs__event_t *v;
    size_t head, n, cap, max;
} fs__evq_t;

void fs__evq_init(fs__evq_t *q, size_t max);
void fs__evq_fini(fs__evq_t *q);
/** Append a copy of name; false (and nothing added) when the queue is full. */
bool fs__evq_push(fs__evq_t *q, const char *name, int type);
/** Take the oldest event (the caller frees out->name); false when empty. */
bool fs__evq_pop(fs__evq_t *q, fs__event_t *out);
/** The FilesystemEvent JSON {"name":..,"type":"EVENT_TYPE_.."}. New reference. */
json_t *fs__event_json(const fs__event_t *ev);

/** An inotify watch of one directory, or of a whole tree (every subdirectory, including ones
 * created or moved in later). Owned by one thread at a time; the calls that touch the
 * filesystem must run with the user's identity in place (envd_fs_become). */
typedef struct fs__watch fs__watch_t;

/** Watch directory path (symlinks in it are followed, as stat does). Errors: -ENOENT missing,
 * -ENOTDIR not a directory, -EINVAL on NFS/CIFS/SMB/FUSE, -EACCES, -EMFILE when inotify's
 * instance or watch limits are reached. */
int fs__watch_open(const char *path, bool recursive, fs__watch_t **out, err_t *e);
/** The inotify descriptor: readable when fs__watch_read() has something to do. */
int fs__watch_fd(const fs__watch_t *w);
/** Read what the kernel has queued (never blocks) and append one event per operation bit to q.
 * Returns 0, or -EMFILE when events were lost (the kernel's queue or q overflowed, or the
 * watch limit was hit while following new subdirectories); the watch stays usable after that.
 * Other negative codes are fatal read errors. */
int fs__watch_read(fs__watch_t *w, fs__evq_t *q, err_t *e);
/** Close the inotify descriptor and free. NULL-safe. */
void fs__watch_close(fs__watch_t *w);

/* ---- Method handlers ---- */

int fs__stat(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__make_dir(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__move(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__remove(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__list_dir(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__watch_dir(connect_call_t *c, const json_t *req, connect_source_t *src, err_t *e);
int fs__create_watcher(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__get_watcher_events(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);
int fs__remove_watcher(connect_call_t *c, const json_t *req, json_t **resp, err_t *e);

#endif
