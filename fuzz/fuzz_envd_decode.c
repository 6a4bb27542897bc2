/* libFuzzer target: the pure request decoders of wrenn-envd's Connect services, process.Process
 * (proc_decode_*) and filesystem.Filesystem (fs_decode_*), fed any JSON object. Each decoder must
 * return 0 or its documented errors with a message, leave a well-formed result on success and
 * an empty one on failure, and never leak (the _fini functions must release everything). */
#include "fs.h"
#include "fuzz.h"
#include "pjson.h"
#include "proc.h"

#include <signal.h>
#include <string.h>

static void check_err(int r, const err_t *e)
{
    FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ENOSYS || r == -ENAMETOOLONG);
    if (r < 0)
        FUZZ_CHECK(e->code == r && e->msg[0] != '\0');
}

static void check_selector(const proc_selector_t *s)
{
    FUZZ_CHECK(s->has_pid != (s->tag != NULL));
}

static void proc_all(const json_t *in)
{
    err_t e = {0};
    proc_start_req_t st;
    int r = proc_decode_start(in, &st, &e);
    check_err(r, &e);
    FUZZ_CHECK(r != -ENOSYS && r != -ENAMETOOLONG);
    if (r == 0) {
        FUZZ_CHECK(st.cmd && st.cmd[0]);
        FUZZ_CHECK(st.args && st.args[st.nargs] == NULL);
        for (size_t i = 0; i < st.nargs; i++)
            FUZZ_CHECK(st.args[i] != NULL);
        FUZZ_CHECK(json_is_object(st.envs));
        const char *k;
        json_t *v;
        json_object_foreach(st.envs, k, v)
        {
            FUZZ_CHECK(k[0] && !strchr(k, '='));
            FUZZ_CHECK(json_is_string(v));
        }
        FUZZ_CHECK(st.has_pty || (st.cols == 0 && st.rows == 0));
    } else {
        FUZZ_CHECK(st.cmd == NULL && st.args == NULL && st.envs == NULL);
    }
    proc_start_req_fini(&st);
    proc_start_req_fini(&st); /* fini leaves an empty request behind */

    proc_selector_t sel;
    err_clear(&e);
    r = proc_decode_selector(in, &sel, &e);
    check_err(r, &e);
    if (r == 0)
        check_selector(&sel);
    else
        FUZZ_CHECK(sel.tag == NULL);
    proc_selector_fini(&sel);

    proc_input_req_t inp;
    err_clear(&e);
    r = proc_decode_input(in, &inp, &e);
    check_err(r, &e);
    if (r == 0) {
        check_selector(&inp.sel);
        FUZZ_CHECK(inp.kind == PROC_INPUT_STDIN || inp.kind == PROC_INPUT_PTY);
    } else {
        FUZZ_CHECK(inp.sel.tag == NULL && inp.data.data == NULL);
    }
    proc_input_req_fini(&inp);

    proc_signal_req_t sig;
    err_clear(&e);
    r = proc_decode_signal(in, &sig, &e);
    check_err(r, &e);
    if (r == 0) {
        check_selector(&sig.sel);
        FUZZ_CHECK(sig.signo == SIGTERM || sig.signo == SIGKILL);
    }
    proc_signal_req_fini(&sig);

    proc_update_req_t up;
    err_clear(&e);
    r = proc_decode_update(in, &up, &e);
    check_err(r, &e);
    if (r == 0)
        check_selector(&up.sel);
    proc_update_req_fini(&up);
}

static void check_path(const char *p)
{
    FUZZ_CHECK(p != NULL);
    FUZZ_CHECK(strlen(p) <= FS_PATH_MAX);
}

static void fs_all(const json_t *in)
{
    err_t e = {0};
    for (int req = 0; req < 2; req++) {
        fs_path_req_t p;
        err_clear(&e);
        int r = fs_decode_path(in, req, &p, &e);
        check_err(r, &e);
        if (r == 0) {
            check_path(p.path);
            if (req)
                FUZZ_CHECK(p.path[0] != '\0');
        }
    }
    fs_list_dir_req_t ld;
    err_clear(&e);
    int r = fs_decode_list_dir(in, &ld, &e);
    check_err(r, &e);
    if (r == 0) {
        check_path(ld.path);
        FUZZ_CHECK(ld.depth >= 1);
    }
    fs_move_req_t mv;
    err_clear(&e);
    r = fs_decode_move(in, &mv, &e);
    check_err(r, &e);
    if (r == 0) {
        check_path(mv.source);
        check_path(mv.destination);
        FUZZ_CHECK(mv.source[0] && mv.destination[0]);
    }
    fs_watch_req_t w;
    err_clear(&e);
    r = fs_decode_watch(in, &w, &e);
    check_err(r, &e);
    if (r == 0)
        check_path(w.path);
    fs_watcher_req_t wr;
    err_clear(&e);
    r = fs_decode_watcher(in, &wr, &e);
    check_err(r, &e);
    if (r == 0) {
        FUZZ_CHECK(wr.watcher_id && wr.watcher_id[0]);
        FUZZ_CHECK(strlen(wr.watcher_id) <= FS_WATCHER_ID_MAX);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        data = (const uint8_t *)""; /* libFuzzer may pass NULL for the empty input */
    err_t e = {0};
    json_t *in = NULL;
    if (pjson_parse((const char *)data, size, &in, &e) < 0)
        return 0;
    proc_all(in);
    fs_all(in);
    /* Requests usually nest: also decode every member object as a request of its own, so
     * that the decoders see well-formed outer layers more often. */
    const char *k;
    json_t *v;
    json_object_foreach(in, k, v)
    {
        if (json_is_object(v)) {
            proc_all(v);
            fs_all(v);
        }
    }
    json_decref(in);
    return 0;
}
