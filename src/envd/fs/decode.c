/* Request decoders of the filesystem service: pure functions, see fs.h. */
#include "fs.h"
#include "pjson.h"

#include <string.h>

/* A string field that must be a valid path: no NUL bytes (jansson can carry them when built
 * with JSON_ALLOW_NUL, and a C path would silently end there) and at most max bytes. */
static int str_field(const json_t *in, const char *name, size_t max, const char **out, err_t *e)
{
    const char *s = "";
    int r = pjson_str(in, name, &s, e);
    if (r < 0)
        return r;
    json_t *v = pjson_get(in, name);
    size_t len = v ? json_string_length(v) : 0;
    if (strlen(s) != len)
        return err_set(e, -EINVAL, "field %s must not contain NUL bytes", name);
    if (len > max)
        return err_set(e, -ENAMETOOLONG, "field %s is too long (%zu bytes, at most %zu)", name, len,
                       max);
    *out = s;
    return 0;
}

static int check_object(const json_t *in, err_t *e)
{
    if (!json_is_object(in))
        return err_set(e, -EINVAL, "request must be a JSON object");
    return 0;
}

int fs_decode_path(const json_t *in, bool required, fs_path_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    out->path = "";
    int r;
    if ((r = check_object(in, e)) < 0 ||
        (r = str_field(in, "path", FS_PATH_MAX, &out->path, e)) < 0)
        return r;
    if (required && !*out->path)
        return err_set(e, -EINVAL, "field path is required");
    return 0;
}

int fs_decode_list_dir(const json_t *in, fs_list_dir_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    out->path = "";
    int r;
    if ((r = check_object(in, e)) < 0 ||
        (r = str_field(in, "path", FS_PATH_MAX, &out->path, e)) < 0 ||
        (r = pjson_u32(in, "depth", &out->depth, NULL, e)) < 0)
        return r;
    if (out->depth == 0)
        out->depth = 1;
    return 0;
}

int fs_decode_move(const json_t *in, fs_move_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    out->source = "";
    out->destination = "";
    int r;
    if ((r = check_object(in, e)) < 0 ||
        (r = str_field(in, "source", FS_PATH_MAX, &out->source, e)) < 0 ||
        (r = str_field(in, "destination", FS_PATH_MAX, &out->destination, e)) < 0)
        return r;
    if (!*out->source)
        return err_set(e, -EINVAL, "field source is required");
    if (!*out->destination)
        return err_set(e, -EINVAL, "field destination is required");
    return 0;
}

int fs_decode_watch(const json_t *in, fs_watch_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    out->path = "";
    int r;
    if ((r = check_object(in, e)) < 0 ||
        (r = str_field(in, "path", FS_PATH_MAX, &out->path, e)) < 0 ||
        (r = pjson_bool(in, "recursive", &out->recursive, NULL, e)) < 0)
        return r;
    return 0;
}

int fs_decode_watcher(const json_t *in, fs_watcher_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    out->watcher_id = "";
    int r;
    if ((r = check_object(in, e)) < 0 ||
        (r = str_field(in, "watcherId", FS_WATCHER_ID_MAX, &out->watcher_id, e)) < 0)
        return r == -ENAMETOOLONG ? err_set(e, -EINVAL, "field watcherId is too long") : r;
    if (!*out->watcher_id)
        return err_set(e, -EINVAL, "field watcherId is required");
    return 0;
}
