/* process.Process request decoders (see proc.h). */
#include "proc.h"
#include "pjson.h"
#include "xalloc.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

void proc_selector_fini(proc_selector_t *s)
{
    if (!s)
        return;
    free(s->tag);
    memset(s, 0, sizeof *s);
}

int proc_decode_selector(const json_t *in, proc_selector_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    json_t *sel = NULL;
    int r;
    if ((r = pjson_obj(in, "process", &sel, e)) < 0)
        return r;
    if (!sel)
        return err_set(e, -EINVAL, "process selector is required");
    uint32_t pid = 0;
    bool has_pid = false;
    const char *tag = NULL;
    if ((r = pjson_u32(sel, "pid", &pid, &has_pid, e)) < 0 ||
        (r = pjson_str(sel, "tag", &tag, e)) < 0)
        return err_wrap(e, "process");
    if (has_pid && tag)
        return err_set(e, -EINVAL, "process selector must have either pid or tag, not both");
    if (!has_pid && !tag)
        return err_set(e, -EINVAL, "process selector needs a pid or a tag");
    out->has_pid = has_pid;
    out->pid = pid;
    out->tag = xstrdup(tag);
    return 0;
}

/* A PTY size message {"size":{"cols":N,"rows":N}}; absent fields are 0. */
static int decode_size(const json_t *pty, uint16_t *cols, uint16_t *rows, err_t *e)
{
    json_t *size = NULL;
    uint32_t c = 0, r = 0;
    int rc;
    if ((rc = pjson_obj(pty, "size", &size, e)) < 0)
        return err_wrap(e, "pty");
    if (size && ((rc = pjson_u32(size, "cols", &c, NULL, e)) < 0 ||
                 (rc = pjson_u32(size, "rows", &r, NULL, e)) < 0))
        return err_wrap(e, "pty.size");
    if (c > UINT16_MAX || r > UINT16_MAX)
        return err_set(e, -EINVAL, "pty.size: cols and rows must be at most 65535");
    *cols = (uint16_t)c;
    *rows = (uint16_t)r;
    return 0;
}

void proc_start_req_fini(proc_start_req_t *r)
{
    if (!r)
        return;
    free(r->cmd);
    for (size_t i = 0; r->args && i < r->nargs; i++)
        free(r->args[i]);
    free(r->args);
    json_decref(r->envs);
    free(r->cwd);
    free(r->tag);
    memset(r, 0, sizeof *r);
}

static int decode_config(const json_t *cfg, proc_start_req_t *out, err_t *e)
{
    const char *cmd = NULL, *cwd = NULL;
    int r;
    if ((r = pjson_str(cfg, "cmd", &cmd, e)) < 0 || (r = pjson_str(cfg, "cwd", &cwd, e)) < 0)
        return err_wrap(e, "process");
    if (!cmd || !*cmd)
        return err_set(e, -EINVAL, "process.cmd is required");
    out->cmd = xstrdup(cmd);
    out->cwd = xstrdup(cwd);

    json_t *args = pjson_get(cfg, "args");
    if (args && !json_is_array(args))
        return err_set(e, -EINVAL, "process.args must be an array of strings");
    size_t n = json_array_size(args);
    out->args = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(args, i);
        if (!json_is_string(a))
            return err_set(e, -EINVAL, "process.args[%zu] must be a string", i);
        out->args[i] = xstrdup(json_string_value(a));
        out->nargs = i + 1;
    }

    json_t *envs = pjson_get(cfg, "envs");
    if (envs && !json_is_object(envs))
        return err_set(e, -EINVAL, "process.envs must be a map of strings");
    out->envs = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(envs, k, v)
    {
        if (!json_is_string(v))
            return err_set(e, -EINVAL, "process.envs: value of %.64s must be a string", k);
        if (!*k || strchr(k, '='))
            return err_set(e, -EINVAL, "process.envs: invalid variable name '%.64s'", k);
        json_object_set(out->envs, k, v);
    }
    return 0;
}

int proc_decode_start(const json_t *in, proc_start_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    json_t *cfg = NULL, *pty = NULL;
    const char *tag = NULL;
    bool stdin_open = true;
    int r;
    if ((r = pjson_obj(in, "process", &cfg, e)) < 0)
        goto fail;
    if (!cfg) {
        r = err_set(e, -EINVAL, "process is required");
        goto fail;
    }
    if ((r = decode_config(cfg, out, e)) < 0)
        goto fail;
    if ((r = pjson_obj(in, "pty", &pty, e)) < 0 || (r = pjson_str(in, "tag", &tag, e)) < 0 ||
        (r = pjson_bool(in, "stdin", &stdin_open, NULL, e)) < 0)
        goto fail;
    if (pty) {
        if ((r = decode_size(pty, &out->cols, &out->rows, e)) < 0)
            goto fail;
        out->has_pty = true;
    }
    out->tag = xstrdup(tag);
    out->stdin_open = stdin_open;
    return 0;
fail:
    proc_start_req_fini(out);
    return r;
}

void proc_input_req_fini(proc_input_req_t *r)
{
    if (!r)
        return;
    proc_selector_fini(&r->sel);
    buf_fini(&r->data);
    memset(r, 0, sizeof *r);
}

/* A ProcessInput in field `input` of obj: stdin or pty bytes. */
static int decode_input(const json_t *obj, proc_input_kind_t *kind, buf_t *data, err_t *e)
{
    json_t *input = NULL;
    bool has_stdin = false, has_pty = false;
    int r;
    if ((r = pjson_obj(obj, "input", &input, e)) < 0)
        return r;
    if (!input)
        return err_set(e, -EINVAL, "input is required");
    if ((r = pjson_bytes(input, "stdin", data, &has_stdin, e)) < 0)
        return r;
    if (!has_stdin && (r = pjson_bytes(input, "pty", data, &has_pty, e)) < 0)
        return r;
    if (!has_stdin && !has_pty)
        return err_set(e, -EINVAL, "input needs stdin or pty bytes");
    *kind = has_stdin ? PROC_INPUT_STDIN : PROC_INPUT_PTY;
    return 0;
}

int proc_decode_input(const json_t *in, proc_input_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    buf_init(&out->data);
    int r;
    if ((r = proc_decode_selector(in, &out->sel, e)) < 0 ||
        (r = decode_input(in, &out->kind, &out->data, e)) < 0) {
        proc_input_req_fini(out);
        return r;
    }
    return 0;
}

void proc_sin_msg_fini(proc_sin_msg_t *m)
{
    if (!m)
        return;
    proc_selector_fini(&m->sel);
    buf_fini(&m->data);
    memset(m, 0, sizeof *m);
}

int proc_decode_stream_input(const json_t *in, proc_sin_msg_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    buf_init(&out->data);
    json_t *start = NULL, *data = NULL, *ka = NULL;
    int r;
    if ((r = pjson_obj(in, "start", &start, e)) < 0 || (r = pjson_obj(in, "data", &data, e)) < 0 ||
        (r = pjson_obj(in, "keepalive", &ka, e)) < 0)
        goto fail;
    if (!!start + !!data + !!ka != 1) {
        r = err_set(e, -EINVAL, "a message needs exactly one of start, data and keepalive");
        goto fail;
    }
    if (start) {
        out->kind = PROC_SIN_START;
        if ((r = proc_decode_selector(start, &out->sel, e)) < 0) {
            err_wrap(e, "start");
            goto fail;
        }
    } else if (data) {
        out->kind = PROC_SIN_DATA;
        if ((r = decode_input(data, &out->input, &out->data, e)) < 0) {
            err_wrap(e, "data");
            goto fail;
        }
    } else {
        out->kind = PROC_SIN_KEEPALIVE;
    }
    return 0;
fail:
    proc_sin_msg_fini(out);
    return r;
}

void proc_signal_req_fini(proc_signal_req_t *r)
{
    if (!r)
        return;
    proc_selector_fini(&r->sel);
    memset(r, 0, sizeof *r);
}

int proc_decode_signal(const json_t *in, proc_signal_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    int r;
    if ((r = proc_decode_selector(in, &out->sel, e)) < 0)
        goto fail;
    /* Parsed by hand rather than with pjson_enum: a well-formed but unsupported signal is
     * "unimplemented", not "invalid argument". */
    json_t *v = pjson_get(in, "signal");
    int signo = 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "SIGNAL_SIGTERM") == 0 || strcmp(s, "15") == 0)
            signo = SIGTERM;
        else if (strcmp(s, "SIGNAL_SIGKILL") == 0 || strcmp(s, "9") == 0)
            signo = SIGKILL;
    } else if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n == SIGTERM || n == SIGKILL)
            signo = (int)n;
    } else if (v) {
        r = err_set(e, -EINVAL, "signal must be an enum name or number");
        goto fail;
    }
    if (!signo) {
        r = err_set(e, -ENOSYS, "only SIGNAL_SIGTERM and SIGNAL_SIGKILL are supported");
        goto fail;
    }
    out->signo = signo;
    return 0;
fail:
    proc_signal_req_fini(out);
    return r;
}

void proc_update_req_fini(proc_update_req_t *r)
{
    if (!r)
        return;
    proc_selector_fini(&r->sel);
    memset(r, 0, sizeof *r);
}

int proc_decode_update(const json_t *in, proc_update_req_t *out, err_t *e)
{
    memset(out, 0, sizeof *out);
    json_t *pty = NULL;
    int r;
    if ((r = proc_decode_selector(in, &out->sel, e)) < 0)
        goto fail;
    if ((r = pjson_obj(in, "pty", &pty, e)) < 0)
        goto fail;
    if (pty) {
        if ((r = decode_size(pty, &out->cols, &out->rows, e)) < 0)
            goto fail;
        out->has_pty = true;
    }
    return 0;
fail:
    proc_update_req_fini(out);
    return r;
}
