/* filesystem.Filesystem (guest-agent.md §5, e2b-compat.md §2.6): request decoders.
 *
 * The decoders are pure functions of a parsed JSON request: no I/O, no daemon state, no
 * allocation. Strings they hand back are borrowed from `in` and live as long as it does. They
 * accept proto3 JSON as pjson.h does (lowerCamelCase or snake_case names, null as absent,
 * unknown fields ignored) and return 0, or -EINVAL (or -ENAMETOOLONG for over-long strings)
 * with a message naming the field. A libFuzzer target can link decode.c with src/lib alone.
 */
#ifndef WRENN_ENVD_FS_H
#define WRENN_ENVD_FS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"

/** Longest path accepted from a request, in bytes (the kernel's PATH_MAX). */
#define FS_PATH_MAX 4096
/** Longest watcher id accepted from a request. */
#define FS_WATCHER_ID_MAX 64

/** StatRequest, MakeDirRequest, RemoveRequest: {path [1]}. */
typedef struct fs_path_req {
    const char *path; /* "" when absent */
} fs_path_req_t;

/** ListDirRequest: {path [1], depth [2] uint32}. */
typedef struct fs_list_dir_req {
    const char *path;
    uint32_t depth; /* already defaulted: 0 on the wire becomes 1 */
} fs_list_dir_req_t;

/** MoveRequest: {source [1], destination [2]}. */
typedef struct fs_move_req {
    const char *source;
    const char *destination;
} fs_move_req_t;

/** WatchDirRequest and CreateWatcherRequest: {path [1], recursive [2]}. The newer
 * include_entry / allow_network_mounts fields are not part of Wrenn's proto and are ignored. */
typedef struct fs_watch_req {
    const char *path;
    bool recursive;
} fs_watch_req_t;

/** GetWatcherEventsRequest and RemoveWatcherRequest: {watcher_id [1]}. */
typedef struct fs_watcher_req {
    const char *watcher_id;
} fs_watcher_req_t;

/** Decode {path}. required: an absent or empty path is -EINVAL (Remove, where "" would mean the
 * user's home directory). */
int fs_decode_path(const json_t *in, bool required, fs_path_req_t *out, err_t *e);
/** Decode a ListDirRequest; depth must fit uint32 (number or decimal string). */
int fs_decode_list_dir(const json_t *in, fs_list_dir_req_t *out, err_t *e);
/** Decode a MoveRequest; both paths are required and non-empty. */
int fs_decode_move(const json_t *in, fs_move_req_t *out, err_t *e);
/** Decode a WatchDirRequest / CreateWatcherRequest. */
int fs_decode_watch(const json_t *in, fs_watch_req_t *out, err_t *e);
/** Decode a request naming a watcher; the id is required and at most FS_WATCHER_ID_MAX bytes. */
int fs_decode_watcher(const json_t *in, fs_watcher_req_t *out, err_t *e);

#endif
