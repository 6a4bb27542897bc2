/* wrenn-envd: the guest agent. Shared daemon state and the pieces every service uses. */
#ifndef WRENN_ENVD_H
#define WRENN_ENVD_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "connect.h"
#include "err.h"
#include "http.h"

#define ENVD_VERSION      "0.6.1"
#define ENVD_DEFAULT_PORT 49983

/* Uploads land in a temporary file with this name prefix beside their target and are renamed
 * into place when complete; watches hide such files and report the target as written. */
#define ENVD_UPLOAD_TMP_PREFIX ".wrenn-upload-"

struct proc_table;
struct fs_watchers;

/** Daemon state. Fields under `lock` change through POST /init; readers copy what they need
 * while holding it (never across I/O). */
typedef struct envd {
    pthread_mutex_t lock;
    char *default_user;    /* NULL → "root" */
    char *default_workdir; /* NULL → the user's home */
    json_t *env;           /* default environment: object of string → string */
    char *access_token;    /* NULL → no token required */
    int64_t init_ts_ns;    /* newest /init timestamp applied (unix ns); 0 → none yet */

    bool in_vm;          /* running as the guest's agent: may set the clock */
    const char *run_dir; /* /run/wrenn, or a scratch dir in development */
    struct proc_table *procs;
    struct fs_watchers *watchers;
} envd_t;

/** A resolved account, from /etc/passwd and /etc/group. */
typedef struct envd_user {
    char *name;
    uid_t uid;
    gid_t gid;
    char *home;
    char *shell;
    gid_t *groups; /* supplementary groups, including gid */
    int ngroups;
} envd_user_t;

/** Look up a user by name. Unknown → -EKEYREJECTED ("user not found"). */
int envd_user_lookup(const char *name, envd_user_t *out, err_t *e);
void envd_user_fini(envd_user_t *u);
/** Name of a uid / gid, or its number as text when unknown. Writes into out (size n). */
void envd_uid_name(uid_t uid, char *out, size_t n);
void envd_gid_name(gid_t gid, char *out, size_t n);

/** Act as u for filesystem access on the calling thread only: fsgid, supplementary groups and
 * fsuid are switched with raw system calls (glibc's wrappers would switch every thread), so the
 * kernel applies u's permissions to every path operation that follows, and files created are
 * owned by u. A no-op when envd does not run as root. Always pair with envd_fs_restore() before
 * the thread does anything else (connection threads serve further requests). */
int envd_fs_become(const envd_user_t *u, err_t *e);
/** Return the calling thread to envd's own identity. */
void envd_fs_restore(void);

/** Resolve a request path for user u (guest-agent.md §2.2): "" → default workdir or home,
 * "~" / "~/x" → home-relative, relative → under home, absolute → cleaned. "~other" → -EINVAL.
 * *out is malloc'd. The result is lexically cleaned (no "." or ".." components). */
int envd_resolve_path(envd_t *d, const envd_user_t *u, const char *path, char **out, err_t *e);

/** The user for a Connect call: HTTP Basic username, else the default user. Unknown user →
 * -EKEYREJECTED. */
int envd_rpc_user(envd_t *d, http_req_t *req, envd_user_t *out, err_t *e);
/** The user for /files: the `username` query argument, else the default user. */
int envd_files_user(envd_t *d, const char *username, envd_user_t *out, err_t *e);

/** X-Access-Token check for every route but /health, /files and /init (constant time). */
int envd_check_token(http_req_t *req, void *ud, err_t *e);
/** Copy of the current access token, or NULL (caller frees). */
char *envd_token_copy(envd_t *d);

/** Build the environment for a child process: PATH, HOME, USER, LOGNAME, SHELL, then the default
 * env vars, then extra (object of string → string, may be NULL); later wins. Returns a
 * NULL-terminated malloc'd array of malloc'd "K=V" strings (free with envd_env_free). */
char **envd_child_env(envd_t *d, const envd_user_t *u, const json_t *extra);
void envd_env_free(char **env);

/* The route tables each part contributes; main.c puts them together. */
extern const connect_method_t proc_methods[];
extern const size_t proc_nmethods;
extern const connect_method_t fs_methods[];
extern const size_t fs_nmethods;

/** REST routes: /health, /init, /envs, /metrics (rest.c) and /files (files/). Zero-terminated
 * arrays; ud is the envd_t. */
size_t rest_routes(envd_t *d, http_route_t *out, size_t max);
size_t files_routes(envd_t *d, http_route_t *out, size_t max);
/** Routes of process.Process that the Connect layer cannot express (the client-streaming
 * StreamInput), in the same form; ud is the envd_t. */
size_t proc_routes(envd_t *d, http_route_t *out, size_t max);
/** Run one throwaway command in the background so that a VM's first real command does not pay
 * for the first-use cost of the spawn path (in-VM mode only). */
void proc_warm_up(envd_t *d);

/** Process table and watcher table life cycle (proc/, fs/). */
int proc_table_new(envd_t *d, struct proc_table **out, err_t *e);
void proc_table_free(struct proc_table *t);
int fs_watchers_new(envd_t *d, struct fs_watchers **out, err_t *e);
void fs_watchers_free(struct fs_watchers *w);

/** The agent itself: parse options, serve until SIGTERM/SIGINT; returns the exit status. */
int envd_main(int argc, char **argv);

/** PID 1 duties inside a VM: mounts, hostname, then run envd (envd_main, in a forked child: no
 * second exec, which costs about 150 ms under TCG) and reap every zombie. Never returns. */
_Noreturn void envd_init_main(int argc, char **argv);

#endif
