/* Sandbox records on disk: <root>/sandboxes/<id>/record.json, written atomically. */
#include "fsutil.h"
#include "sandbox_int.h"
#include "pjson.h"
#include "xalloc.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sbx__record_save(const sbx_t *s, err_t *e)
{
    return sbx__record_write(s, true, e);
}

int sbx__record_write(const sbx_t *s, bool sync, err_t *e)
{
    vmm_state_t st = {0};
    if (s->vm)
        vmm_get_state(s->vm, &st);
    json_t *j = json_object();
    json_object_set_new(j, "version", json_integer(1));
    json_object_set_new(j, "sandboxId", json_string(s->id));
    json_object_set_new(j, "template", json_string(s->template_name));
    json_object_set_new(j, "vcpus", json_integer(s->vcpus));
    json_object_set_new(j, "memoryMb", json_integer(s->memory_mb));
    json_object_set_new(j, "timeoutSec", json_integer(atomic_load(&s->timeout_sec)));
    json_object_set_new(j, "createdAt", json_integer(s->created_at));
    json_object_set_new(j, "lastActiveAt", json_integer(atomic_load(&s->last_active_at)));
    json_object_set_new(j, "slot", json_integer(s->slot));
    json_object_set_new(j, "uid", json_integer(s->uid));
    json_object_set_new(j, "gid", json_integer(s->gid));
    json_object_set_new(j, "accessToken", json_string(s->token));
    json_object_set_new(j, "pid", json_integer(st.pid));
    json_object_set_new(j, "startTime", json_integer((json_int_t)st.start_time));
    json_object_set_new(j, "state",
                        json_string(s->state == SBX_PAUSED   ? "paused"
                                    : s->state == SBX_POOLED ? "pooled"
                                                             : "running"));
    json_object_set_new(j, "team", json_string(s->team));
    json_object_set_new(j, "restored", json_boolean(s->restored));
    json_object_set_new(j, "autoPause", json_boolean(s->auto_pause));
    json_object_set_new(j, "memfsKey", json_string(s->memfs_key));
    json_object_set_new(j, "memfsPid", json_integer(s->memfs_pid));
    json_object_set_new(j, "memfsStart", json_integer((json_int_t)s->memfs_start));
    buf_t b;
    buf_init(&b);
    pjson_dump(j, &b);
    json_decref(j);

    char path[600];
    snprintf(path, sizeof path, "%s/record.json", s->dir);
    /* Root-only: the record holds the guest's access token. Synced: it must survive a crash. */
    int rc = fsutil_write_atomic(path, b.data, b.len, 0600, sync, e);
    if (rc < 0)
        err_wrap(e, "save record");
    buf_fini(&b);
    return rc;
}

int sbx__record_load(const char *dir, sbx_t *s, vmm_state_t *st, err_t *e)
{
    char path[600];
    snprintf(path, sizeof path, "%s/record.json", dir);
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return err_set(e, -EINVAL, "unreadable record %s", path);
    }
    int rc = 0;
    const char *id = json_string_value(json_object_get(j, "sandboxId"));
    const char *tmpl = json_string_value(json_object_get(j, "template"));
    const char *tok = json_string_value(json_object_get(j, "accessToken"));
    json_int_t slot = json_integer_value(json_object_get(j, "slot"));
    const char *state = json_string_value(json_object_get(j, "state"));
    const char *team = json_string_value(json_object_get(j, "team"));
    bool paused = state && strcmp(state, "paused") == 0;
    if (!id || !sbx_safe_name(id) || !tmpl || !tok || strlen(tok) >= sizeof s->token ||
        (paused ? slot != 0 : (slot < 1 || slot > NET_MAX_SLOTS)) ||
        (team && *team && !sbx_safe_name(team))) {
        rc = err_set(e, -EINVAL, "malformed record %s", path);
        goto out;
    }
    snprintf(s->id, sizeof s->id, "%s", id);
    snprintf(s->template_name, sizeof s->template_name, "%s", tmpl);
    snprintf(s->token, sizeof s->token, "%s", tok);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    s->slot = (int)slot;
    s->vcpus = (unsigned)json_integer_value(json_object_get(j, "vcpus"));
    s->memory_mb = (unsigned)json_integer_value(json_object_get(j, "memoryMb"));
    atomic_store(&s->timeout_sec, json_integer_value(json_object_get(j, "timeoutSec")));
    s->created_at = json_integer_value(json_object_get(j, "createdAt"));
    atomic_store(&s->last_active_at, json_integer_value(json_object_get(j, "lastActiveAt")));
    s->uid = (uid_t)json_integer_value(json_object_get(j, "uid"));
    s->gid = (gid_t)json_integer_value(json_object_get(j, "gid"));
    st->pid = (pid_t)json_integer_value(json_object_get(j, "pid"));
    st->start_time = (uint64_t)json_integer_value(json_object_get(j, "startTime"));
    s->state = paused                                  ? SBX_PAUSED
               : state && strcmp(state, "pooled") == 0 ? SBX_POOLED
                                                       : SBX_RUNNING;
    snprintf(s->team, sizeof s->team, "%s", team ? team : "");
    s->restored = json_is_true(json_object_get(j, "restored"));
    s->auto_pause = json_is_true(json_object_get(j, "autoPause"));
    const char *key = json_string_value(json_object_get(j, "memfsKey"));
    mem_id_t kid;
    if (key && *key && strlen(key) == 32 && mem_id_parse(key, &kid) == 0)
        snprintf(s->memfs_key, sizeof s->memfs_key, "%s", key);
    s->memfs_pid = (pid_t)json_integer_value(json_object_get(j, "memfsPid"));
    s->memfs_start = (uint64_t)json_integer_value(json_object_get(j, "memfsStart"));
    if (!paused)
        net_slot_names(s->slot, &s->net);
out:
    json_decref(j);
    return rc;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) < 0 && errno != ENOENT ? -1 : 0;
}

int sbx__rmrf(const char *path)
{
    if (nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}
