/* hostagent.v1.HostAgentService: request decoding, replies, and the unary methods. The
 * streaming methods live in stream.c. */
#include "rpc.h"
#include "rpc_int.h"
#include "b64.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

/* The largest unary WriteFile request (base64 content plus framing). */
#define RPC_MAX_UNARY_FILE (48u << 20)
/* The most output a unary Exec collects (stdout and stderr together). */
#define RPC_MAX_EXEC_OUTPUT (32u << 20)
/* The largest file a unary ReadFile returns; bigger files need ReadFileStream. */
#define RPC_MAX_READ (64u << 20)

int rpc_secret_equal(const char *got, const char *want)
{
    size_t gl = strlen(got), wl = strlen(want);
    unsigned char diff = (unsigned char)(gl != wl);
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return diff == 0;
}

int rpc__check(http_req_t *req, void *ud, err_t *e)
{
    rpc_t *r = ud;
    const char *h = http_req_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return err_set(e, -ENOKEY, "missing bearer token");
    const char *t = h + 7;
    while (*t == ' ')
        t++;
    if (!rpc_secret_equal(t, r->secret))
        return err_set(e, -EKEYREJECTED, "invalid bearer token");
    return 0;
}

int rpc__sandbox_id(const json_t *in, const char **id, err_t *e)
{
    int rc = pjson_str(in, "sandboxId", id, e);
    if (rc < 0)
        return rc;
    if (!*id || !**id)
        return err_set(e, -EINVAL, "sandboxId is required");
    if (!sbx_safe_name(*id))
        return err_set(e, -ENOENT, "sandbox %.64s not found", *id);
    return 0;
}

json_t *rpc__b64(const void *data, size_t len)
{
    char *enc = xmalloc(b64_encoded_len(len) + 1);
    size_t n = b64_encode(data, len, enc, true);
    json_t *v = json_stringn(enc, n);
    free(enc);
    return v;
}

static json_t *info_json(const sbx_info_t *i)
{
    json_t *j = json_object();
    json_object_set_new(j, "sandboxId", json_string(i->id));
    json_object_set_new(j, "status", json_string(i->status));
    json_object_set_new(j, "template", json_string(i->template_name));
    json_object_set_new(j, "vcpus", json_integer(i->vcpus));
    json_object_set_new(j, "memoryMb", json_integer(i->memory_mb));
    json_object_set_new(j, "hostIp", json_string(i->host_ip));
    json_object_set_new(j, "createdAtUnix", pjson_i64_value(i->created_at));
    json_object_set_new(j, "lastActiveAtUnix", pjson_i64_value(i->last_active_at));
    json_object_set_new(j, "timeoutSec", json_integer(i->timeout_sec));
    return j;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static int m_create(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    sbx_create_req_t q = {0};
    json_t *envs = NULL;
    int rc;
    if ((rc = pjson_str(in, "sandboxId", &q.id, e)) < 0 ||
        (rc = pjson_str(in, "template", &q.template_name, e)) < 0 ||
        (rc = pjson_i64(in, "vcpus", &q.vcpus, NULL, e)) < 0 ||
        (rc = pjson_i64(in, "memoryMb", &q.memory_mb, NULL, e)) < 0 ||
        (rc = pjson_i64(in, "timeoutSec", &q.timeout_sec, NULL, e)) < 0 ||
        (rc = pjson_str(in, "teamId", &q.team, e)) < 0 ||
        (rc = pjson_bool(in, "autoPause", &q.auto_pause, NULL, e)) < 0 ||
        (rc = pjson_obj(in, "envVars", &envs, e)) < 0)
        return rc;
    q.env_vars = envs;
    sbx_info_t info;
    if ((rc = sbx_create(r->mgr, &q, &info, e)) < 0)
        return rc;
    *out = json_object();
    json_object_set_new(*out, "sandboxId", json_string(info.id));
    json_object_set_new(*out, "status", json_string(info.status));
    json_object_set_new(*out, "hostIp", json_string(info.host_ip));
    return 0;
}

static int m_destroy(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = sbx_destroy(r->mgr, id, e)) < 0)
        return rc;
    *out = json_object();
    return 0;
}

static int m_list(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    (void)in;
    (void)e;
    rpc_t *r = c->ud;
    sbx_info_t *arr = NULL;
    size_t n = 0;
    sbx_list(r->mgr, &arr, &n);
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, info_json(&arr[i]));
    free(arr);
    *out = json_object();
    json_object_set_new(*out, "sandboxes", list);
    char **ids = NULL;
    size_t nids = 0;
    sbx_take_auto_paused(r->mgr, &ids, &nids);
    json_t *ap = json_array();
    for (size_t i = 0; i < nids; i++) {
        json_array_append_new(ap, json_string(ids[i]));
        free(ids[i]);
    }
    free(ids);
    json_object_set_new(*out, "autoPausedSandboxIds", ap);
    return 0;
}

static int m_get(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    sbx_info_t info;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = sbx_get(r->mgr, id, &info, e)) < 0)
        return rc;
    *out = info_json(&info);
    return 0;
}

static int m_set_timeout(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    int64_t t = 0;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 ||
        (rc = pjson_i64(in, "timeoutSec", &t, NULL, e)) < 0 ||
        (rc = sbx_set_timeout(r->mgr, id, t, e)) < 0)
        return rc;
    *out = json_object();
    return 0;
}

static int m_ping(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    int rc;
    /* A ping without a sandbox checks that the agent is up (and the secret right). */
    if (!pjson_get(in, "sandboxId")) {
        *out = json_object();
        return 0;
    }
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = sbx_touch(r->mgr, id, e)) < 0)
        return rc;
    *out = json_object();
    return 0;
}

/* ---- snapshots ------------------------------------------------------------------------------- */

static int m_pause(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = sbx_pause(r->mgr, id, e)) < 0)
        return rc;
    *out = json_object();
    return 0;
}

static int m_resume(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    int64_t t = 0;
    sbx_info_t info;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 ||
        (rc = pjson_i64(in, "timeoutSec", &t, NULL, e)) < 0 ||
        (rc = sbx_resume(r->mgr, id, t, &info, e)) < 0)
        return rc;
    *out = json_object();
    json_object_set_new(*out, "sandboxId", json_string(info.id));
    json_object_set_new(*out, "status", json_string(info.status));
    json_object_set_new(*out, "hostIp", json_string(info.host_ip));
    return 0;
}

/* A template name: required, and a safe name. */
static int tmpl_name(const json_t *in, const char **name, const char **team, err_t *e)
{
    int rc;
    if ((rc = pjson_str(in, "name", name, e)) < 0 || (rc = pjson_str(in, "teamId", team, e)) < 0)
        return rc;
    if (!*name || !**name)
        return err_set(e, -EINVAL, "name is required");
    return 0;
}

static int m_snapshot_create(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL, *name = NULL, *team = NULL;
    int64_t size = 0;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = tmpl_name(in, &name, &team, e)) < 0 ||
        (rc = sbx_snapshot_create(r->mgr, id, team, name, &size, e)) < 0)
        return rc;
    *out = json_object();
    json_object_set_new(*out, "name", json_string(name));
    json_object_set_new(*out, "sizeBytes", pjson_i64_value(size));
    return 0;
}

static int m_snapshot_delete(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *name = NULL, *team = NULL;
    int rc;
    if ((rc = tmpl_name(in, &name, &team, e)) < 0 ||
        (rc = sbx_snapshot_delete(r->mgr, team, name, e)) < 0)
        return rc;
    *out = json_object();
    return 0;
}

static int m_fork(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL;
    int64_t count = 1, t = 0;
    sbx_info_t *arr = NULL;
    size_t n = 0;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 ||
        (rc = pjson_i64(in, "count", &count, NULL, e)) < 0 ||
        (rc = pjson_i64(in, "timeoutSec", &t, NULL, e)) < 0)
        return rc;
    if (!pjson_get(in, "count"))
        count = 1;
    if (count < 1 || count > 16)
        return err_set(e, -EINVAL, "count must be between 1 and 16");
    if ((rc = sbx_fork(r->mgr, id, (unsigned)count, t, &arr, &n, e)) < 0)
        return rc;
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, info_json(&arr[i]));
    free(arr);
    *out = json_object();
    json_object_set_new(*out, "sandboxes", list);
    return 0;
}

/* ---- exec ------------------------------------------------------------------------------------ */

int rpc__exec_req(const json_t *in, rpc_exec_t *x, bool unary, err_t *e)
{
    memset(x, 0, sizeof *x);
    int rc;
    int64_t t = 0;
    json_t *args = pjson_get(in, "args");
    if ((rc = rpc__sandbox_id(in, &x->id, e)) < 0 || (rc = pjson_str(in, "cmd", &x->cmd, e)) < 0 ||
        (rc = pjson_i64(in, "timeoutSec", &t, NULL, e)) < 0)
        return rc;
    if (!x->cmd || !*x->cmd)
        return err_set(e, -EINVAL, "cmd is required");
    if (args && !json_is_array(args))
        return err_set(e, -EINVAL, "args must be a list of strings");
    x->nargs = args ? json_array_size(args) : 0;
    if (x->nargs > 4096)
        return err_set(e, -EINVAL, "too many args");
    x->args = xcalloc(x->nargs + 1, sizeof *x->args);
    for (size_t i = 0; i < x->nargs; i++) {
        x->args[i] = json_string_value(json_array_get(args, i));
        if (!x->args[i]) {
            free(x->args);
            x->args = NULL;
            return err_set(e, -EINVAL, "args must be a list of strings");
        }
    }
    if (t < 0 || t > 24 * 3600) {
        free(x->args);
        x->args = NULL;
        return err_set(e, -EINVAL, "timeoutSec must be between 0 and 86400");
    }
    x->timeout_ms = t > 0 ? t * 1000 : (unary ? 30000 : 0);
    return 0;
}

struct collect {
    buf_t out, err;
    int exit_code;
    char error[256];
};

static int col_output(void *ud, int stream, const char *data, size_t len)
{
    struct collect *k = ud;
    if (k->out.len + k->err.len + len > RPC_MAX_EXEC_OUTPUT)
        return -1;
    buf_add(stream == 1 ? &k->out : &k->err, data, len);
    return 0;
}

static int col_end(void *ud, int code, const char *err)
{
    struct collect *k = ud;
    k->exit_code = code;
    snprintf(k->error, sizeof k->error, "%s", err);
    return 0;
}

static int m_exec(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    rpc_exec_t x;
    int rc = rpc__exec_req(in, &x, true, e);
    if (rc < 0)
        return rc;
    envdc_t t;
    struct collect k = {0};
    buf_init(&k.out);
    buf_init(&k.err);
    if ((rc = sbx_target(r->mgr, x.id, &t, e)) < 0)
        goto out;
    envdc_exec_req_t q = {
        .cmd = x.cmd, .args = x.args, .nargs = x.nargs, .timeout_ms = x.timeout_ms};
    envdc_exec_cb_t cb = {.on_output = col_output, .on_end = col_end};
    rc = envdc_exec(&t, &q, &cb, &k, e);
    sbx_touch(r->mgr, x.id, NULL);
    if (rc == -ECANCELED)
        rc = err_set(e, -EMSGSIZE, "exec output exceeds %u bytes", RPC_MAX_EXEC_OUTPUT);
    if (rc < 0)
        goto out;
    *out = json_object();
    json_object_set_new(*out, "stdout", rpc__b64(k.out.data, k.out.len));
    json_object_set_new(*out, "stderr", rpc__b64(k.err.data, k.err.len));
    json_object_set_new(*out, "exitCode", json_integer(k.exit_code));
    if (k.error[0])
        json_object_set_new(*out, "error", json_string(k.error));
out:
    free(x.args);
    buf_fini(&k.out);
    buf_fini(&k.err);
    return rc;
}

/* ---- files ----------------------------------------------------------------------------------- */

int rpc__path(const json_t *in, const char **path, err_t *e)
{
    int rc = pjson_str(in, "path", path, e);
    if (rc < 0)
        return rc;
    if (!*path || !**path)
        return err_set(e, -EINVAL, "path is required");
    if (strlen(*path) > 4096)
        return err_set(e, -EINVAL, "path is too long");
    return 0;
}

static int m_write_file(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL, *path = NULL;
    buf_t content;
    buf_init(&content);
    envdc_t t;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = rpc__path(in, &path, e)) < 0 ||
        (rc = pjson_bytes(in, "content", &content, NULL, e)) < 0 ||
        (rc = sbx_target(r->mgr, id, &t, e)) < 0)
        goto out;
    rc = envdc_upload(&t, path, content.data, content.len, NULL, NULL, e);
    sbx_touch(r->mgr, id, NULL);
    if (rc < 0)
        goto out;
    *out = json_object();
out:
    buf_fini(&content);
    return rc;
}

static int read_collect(void *ud, const char *data, size_t len)
{
    buf_t *b = ud;
    if (b->len + len > RPC_MAX_READ)
        return -1;
    buf_add(b, data, len);
    return 0;
}

static int m_read_file(connect_call_t *c, const json_t *in, json_t **out, err_t *e)
{
    rpc_t *r = c->ud;
    const char *id = NULL, *path = NULL;
    buf_t content;
    buf_init(&content);
    envdc_t t;
    int rc;
    if ((rc = rpc__sandbox_id(in, &id, e)) < 0 || (rc = rpc__path(in, &path, e)) < 0 ||
        (rc = sbx_target(r->mgr, id, &t, e)) < 0)
        goto out;
    rc = envdc_download(&t, path, read_collect, &content, e);
    sbx_touch(r->mgr, id, NULL);
    if (rc == -ECANCELED)
        rc = err_set(e, -EMSGSIZE, "file exceeds %u bytes: use ReadFileStream", RPC_MAX_READ);
    if (rc < 0)
        goto out;
    *out = json_object();
    json_object_set_new(*out, "content", rpc__b64(content.data, content.len));
out:
    buf_fini(&content);
    return rc;
}

/* Log a failed call once, here where it is answered (clients see only the public message of
 * internal errors). */
int rpc__log_fail(const char *method, const char *id, int rc, const err_t *e)
{
    err_status_t st = err_status(rc);
    if (st.http >= 500)
        log_warn("rpc.failed", "method=%s sandbox=%s code=%s err=\"%s\"", method, id ? id : "",
                 st.connect, e && e->msg[0] ? e->msg : st.fallback);
    else
        log_debug("rpc.rejected", "method=%s sandbox=%s code=%s err=\"%s\"", method, id ? id : "",
                  st.connect, e && e->msg[0] ? e->msg : st.fallback);
    return rc;
}

#define LOGGED(name, fn)                                                                           \
    static int fn##_logged(connect_call_t *c, const json_t *in, json_t **out, err_t *e)            \
    {                                                                                              \
        int rc = fn(c, in, out, e);                                                                \
        return rc < 0 ? rpc__log_fail(name, json_string_value(pjson_get(in, "sandboxId")), rc, e)  \
                      : rc;                                                                        \
    }
LOGGED("CreateSandbox", m_create)
LOGGED("DestroySandbox", m_destroy)
LOGGED("ListSandboxes", m_list)
LOGGED("GetSandbox", m_get)
LOGGED("SetTimeout", m_set_timeout)
LOGGED("Ping", m_ping)
LOGGED("Exec", m_exec)
LOGGED("ReadFile", m_read_file)
LOGGED("WriteFile", m_write_file)
LOGGED("PauseSandbox", m_pause)
LOGGED("ResumeSandbox", m_resume)
LOGGED("CreateSnapshot", m_snapshot_create)
LOGGED("DeleteSnapshot", m_snapshot_delete)
LOGGED("ForkSandbox", m_fork)

static const connect_method_t methods[] = {
    {RPC_SERVICE "CreateSandbox", m_create_logged, NULL},
    {RPC_SERVICE "DestroySandbox", m_destroy_logged, NULL},
    {RPC_SERVICE "ListSandboxes", m_list_logged, NULL},
    {RPC_SERVICE "GetSandbox", m_get_logged, NULL},
    {RPC_SERVICE "SetTimeout", m_set_timeout_logged, NULL},
    {RPC_SERVICE "Ping", m_ping_logged, NULL},
    {RPC_SERVICE "PingSandbox", m_ping_logged, NULL},
    {RPC_SERVICE "Exec", m_exec_logged, NULL},
    {RPC_SERVICE "ExecStream", NULL, rpc__exec_stream},
    {RPC_SERVICE "ReadFile", m_read_file_logged, NULL},
    {RPC_SERVICE "WriteFile", m_write_file_logged, NULL},
    {RPC_SERVICE "ReadFileStream", NULL, rpc__read_stream},
    {RPC_SERVICE "PauseSandbox", m_pause_logged, NULL},
    {RPC_SERVICE "ResumeSandbox", m_resume_logged, NULL},
    {RPC_SERVICE "CreateSnapshot", m_snapshot_create_logged, NULL},
    {RPC_SERVICE "DeleteSnapshot", m_snapshot_delete_logged, NULL},
    {RPC_SERVICE "ForkSandbox", m_fork_logged, NULL},
};

size_t rpc_routes(rpc_t *rpc, http_route_t *routes, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0] && n < max; i++, n++) {
        connect_route(&routes[n], &rpc->bindings[n], &methods[i], rpc__check, rpc);
        if (methods[i].unary == m_write_file_logged)
            routes[n].max_body = RPC_MAX_UNARY_FILE;
    }
    if (n < max)
        rpc__write_stream_route(rpc, &routes[n++]);
    return n;
}
