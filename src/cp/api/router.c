/* Dispatch, authentication middleware, the error envelope and request helpers. */
#include "api.h"
#include "auth/jwt.h"
#include "auth/secret.h"
#include "cp_util.h"
#include "log.h"
#include "pjson.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the error table ---- */

/* The one table from error codes to the control plane's wire codes. The HTTP status comes from
 * the foundation's table (err_status()) except for the two codes that exist only here. */
static const struct {
    int code;
    int http; /* 0: err_status(code).http */
    const char *name;
} cp_errors[] = {
    {-EINVAL, 0, "invalid_request"},
    {-EBADMSG, 0, "invalid_request"},
    {-EILSEQ, 0, "invalid_request"},
    {-ERANGE, 0, "invalid_request"},
    {-ENAMETOOLONG, 0, "invalid_request"},
    {-ENOKEY, 0, "unauthorized"},
    {-EKEYREJECTED, 0, "unauthorized"},
    {-EACCES, 0, "forbidden"},
    {-EPERM, 0, "forbidden"},
    {CP_E_NO_TEAM, 403, "no_team"},
    {-ENOENT, 0, "not_found"},
    {-ENODEV, 0, "not_found"},
    {-EOPNOTSUPP, 0, "method_not_allowed"},
    {-EEXIST, 0, "already_exists"},
    {CP_E_EMAIL_TAKEN, 409, "email_taken"},
    {-EALREADY, 409, "invalid_state"},
    {-EMSGSIZE, 0, "too_large"},
    {-EFBIG, 0, "too_large"},
    {-EPROTONOSUPPORT, 0, "unsupported_media_type"},
    {-EUSERS, 0, "rate_limited"},
    {-EAGAIN, 0, "unavailable"},
    {-EIO, 0, "internal_error"},
};

cp_err_row_t cp_err_lookup(int code)
{
    for (size_t i = 0; i < sizeof cp_errors / sizeof cp_errors[0]; i++)
        if (cp_errors[i].code == code) {
            int http = cp_errors[i].http ? cp_errors[i].http : err_status(code).http;
            return (cp_err_row_t){code, http, cp_errors[i].name};
        }
    return (cp_err_row_t){-EIO, 500, "internal_error"};
}

static const char *public_message(const err_t *e, cp_err_row_t row)
{
    if (row.http >= 500 || !e || !e->msg[0]) {
        if (row.http == 409 && row.code == CP_E_EMAIL_TAKEN)
            return "email already registered";
        if (row.http == 403 && row.code == CP_E_NO_TEAM)
            return "user is not a member of any team";
        return row.http >= 500 ? (row.http == 503 ? "service busy, retry" : "internal error")
                               : err_status(row.code).fallback;
    }
    return e->msg;
}

static void send_body(cp_req_t *r, int status, buf_t *b)
{
    r->status = status;
    http_set_header(r->h, "X-Content-Type-Options", "nosniff");
    http_set_header(r->h, "Cache-Control", "no-store");
    http_respond_buf(r->h, status, "application/json", b);
}

static void envelope(http_req_t *h, cp_req_t *r, int code, const err_t *e)
{
    cp_err_row_t row = cp_err_lookup(code);
    if (row.http >= 500 && e && e->msg[0])
        log_error("cp.error", "path=%s code=%d err=\"%s\"", http_req_path(h), code, e->msg);
    const char *msg = public_message(e, row);
    buf_t b;
    buf_init(&b);
    buf_adds(&b, "{\"error\":{\"code\":");
    pjson_quote(&b, row.name, strlen(row.name));
    buf_adds(&b, ",\"message\":");
    pjson_quote(&b, msg, strlen(msg));
    buf_adds(&b, "}}\n");
    if (r) {
        send_body(r, row.http, &b);
    } else {
        http_set_header(h, "X-Content-Type-Options", "nosniff");
        http_respond_buf(h, row.http, "application/json", &b);
    }
}

void cp_fail(cp_req_t *r, int code, const err_t *e)
{
    envelope(r->h, r, code, e);
}

void cp_failf(cp_req_t *r, int code, const char *fmt, ...)
{
    err_t e = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    cp_fail(r, code, &e);
}

/* Errors the foundation answers before the dispatcher runs (body too large, ...). */
static void early_error(http_req_t *h, int code, const err_t *e)
{
    envelope(h, NULL, code, e);
}

void cp_json(cp_req_t *r, int status, json_t *body)
{
    buf_t b;
    buf_init(&b);
    pjson_dump(body, &b);
    buf_addc(&b, '\n');
    json_decref(body);
    send_body(r, status, &b);
}

void cp_no_content(cp_req_t *r)
{
    r->status = 204;
    http_respond(r->h, 204, NULL, "", 0);
}

int cp_db(cp_req_t *r, db_conn_t **out, err_t *e)
{
    if (!r->db) {
        int rc = db_acquire(r->cp->db, &r->db, e);
        if (rc < 0)
            return rc;
    }
    *out = r->db;
    return 0;
}

int cp_body(cp_req_t *r, json_t **out, err_t *e)
{
    size_t len = 0;
    const char *b = http_req_body(r->h, &len);
    int rc = pjson_parse(b, len, out, e);
    if (rc < 0)
        return err_set(e, -EINVAL, "invalid JSON body");
    return 0;
}

int cp_str(cp_req_t *r, json_t *obj, const char *key, size_t maxlen, char **out, err_t *e)
{
    *out = NULL;
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return err_set(e, -EINVAL, "%s must be a string", key);
    size_t n = json_string_length(v);
    if (n > maxlen)
        return err_set(e, -EINVAL, "%s is too long (at most %zu bytes)", key, maxlen);
    if (memchr(json_string_value(v), '\0', n))
        return err_set(e, -EINVAL, "%s contains a NUL character", key);
    *out = arena_strndup(http_req_arena(r->h), json_string_value(v), n);
    return 0;
}

/* ---- query lists ---- */

#define CP_QLIST_MAX 32

struct qlist {
    arena_t *a;
    const char *name;
    const char **v;
    int n;
    bool too_many;
};

static void qlist_cb(void *ud, const char *name, const char *value)
{
    struct qlist *q = ud;
    if (strcmp(name, q->name) != 0)
        return;
    const char *p = value;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len) {
            if (q->n >= CP_QLIST_MAX) {
                q->too_many = true;
                return;
            }
            char *s = cp_trim(arena_strndup(q->a, p, len));
            if (*s)
                q->v[q->n++] = s;
        }
        p += len;
        if (*p == ',')
            p++;
    }
}

int cp_query_list(cp_req_t *r, const char *name, const char ***out, int *n, err_t *e)
{
    arena_t *a = http_req_arena(r->h);
    struct qlist q = {a, name, arena_alloc(a, CP_QLIST_MAX * sizeof(char *)), 0, false};
    http_req_query_each(r->h, qlist_cb, &q);
    if (q.too_many)
        return err_set(e, -EINVAL, "too many %s values (at most %d)", name, CP_QLIST_MAX);
    *out = q.v;
    *n = q.n;
    return 0;
}

/* ---- routing ---- */

static bool seg_eq(const char *a, size_t an, const char *b, size_t bn)
{
    return an == bn && memcmp(a, b, an) == 0;
}

/* Match path against a "/a/{x}/b" pattern; parameters go to params. */
static bool match(const char *pattern, const char *path, arena_t *a, const char **params)
{
    int np = 0;
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (*p != '/' || *s != '/')
            return false;
        p++;
        s++;
        size_t pl = strcspn(p, "/"), sl = strcspn(s, "/");
        if (p[0] == '{') {
            if (sl == 0 || sl > 128 || np >= CP_MAX_PARAMS)
                return false;
            params[np++] = arena_strndup(a, s, sl);
        } else if (!seg_eq(p, pl, s, sl)) {
            return false;
        }
        p += pl;
        s += sl;
    }
    return !*p && !*s;
}

/* ---- authentication ---- */

static int auth_jwt(cp_req_t *r, const char *authz, err_t *e)
{
    if (!authz || strncasecmp(authz, "Bearer ", 7) != 0 || !authz[7])
        return err_set(e, -ENOKEY, "Authorization: Bearer <token> required");
    jwt_claims_t c;
    int rc = jwt_verify(r->cp->jwt_key, r->cp->jwt_keylen, authz + 7, (int64_t)time(NULL), &c, e);
    if (rc < 0)
        return rc;
    db_conn_t *db = NULL;
    if ((rc = cp_db(r, &db, e)) < 0)
        return rc;
    /* The token says who and which team; the database says whether that still holds. Removing
     * a member or deleting a team therefore ends access at the next request. */
    store_member_ctx_t m;
    rc = store_member_ctx(db, c.sub, c.team_id, &m, e);
    if (rc == -ENOENT)
        return err_set(e, -EKEYREJECTED, "token no longer valid: not a member of a live team");
    if (rc < 0)
        return rc;
    cp_actor_t *w = &r->who;
    w->kind = CP_ACTOR_USER;
    snprintf(w->user_id, sizeof w->user_id, "%s", c.sub);
    snprintf(w->team_id, sizeof w->team_id, "%s", c.team_id);
    snprintf(w->role, sizeof w->role, "%s", m.role);
    snprintf(w->name, sizeof w->name, "%s", m.name);
    snprintf(w->email, sizeof w->email, "%s", m.email);
    w->is_admin = m.is_admin;
    return 0;
}

static int auth_key(cp_req_t *r, const char *key, err_t *e)
{
    size_t n = strnlen(key, SECRET_KEY_MAX + 1);
    if (n == 0 || n > SECRET_KEY_MAX)
        return err_set(e, -EKEYREJECTED, "invalid API key");
    char hash[SECRET_HASH_HEX];
    secret_key_hash(key, hash);
    db_conn_t *db = NULL;
    int rc = cp_db(r, &db, e);
    if (rc < 0)
        return rc;
    /* One indexed lookup by the key's SHA-256: the time taken does not depend on how much of
     * a guess matches a real key. */
    store_key_auth_t k;
    rc = store_key_auth(db, hash, &k, e);
    if (rc < 0)
        return rc;
    int64_t now = cp_now_us();
    if (now - k.last_used_us >= r->cp->key_touch_us) {
        err_t te = {0};
        if (store_key_touch(db, k.id, now, r->cp->key_touch_us, &te) < 0)
            log_warn("cp.key_touch_failed", "key=%s err=\"%s\"", k.id, te.msg);
    }
    cp_actor_t *w = &r->who;
    w->kind = CP_ACTOR_KEY;
    snprintf(w->team_id, sizeof w->team_id, "%s", k.team_id);
    snprintf(w->user_id, sizeof w->user_id, "%s", k.creator);
    snprintf(w->key_id, sizeof w->key_id, "%s", k.id);
    snprintf(w->key_name, sizeof w->key_name, "%s", k.name);
    return 0;
}

static int authenticate(cp_req_t *r, cp_auth_t kind, err_t *e)
{
    if (kind == CP_AUTH_NONE)
        return 0;
    const char *authz = http_req_header(r->h, "Authorization");
    if (kind == CP_AUTH_KEY_OR_JWT) {
        const char *key = http_req_header(r->h, "X-API-Key");
        if (key)
            return auth_key(r, key, e);
        if (!authz)
            return err_set(e, -ENOKEY, "X-API-Key or Authorization: Bearer <token> required");
    }
    return auth_jwt(r, authz, e);
}

/* ---- the dispatcher ---- */

static void utf8_cb(void *ud, const char *name, const char *value)
{
    bool *ok = ud;
    if (!cp_utf8_valid(name) || !cp_utf8_valid(value))
        *ok = false;
}

/* Paths and query values reach SQL as text; both engines must see the same valid UTF-8. */
static bool request_utf8_ok(http_req_t *h)
{
    bool ok = cp_utf8_valid(http_req_path(h));
    if (ok)
        http_req_query_each(h, utf8_cb, &ok);
    return ok;
}

static void dispatch(http_req_t *h, void *ud)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cp_req_t r = {.cp = ud, .h = h};
    const char *method = http_req_method(h), *path = http_req_path(h);
    arena_t *a = http_req_arena(h);
    const cp_route_t *hit = NULL;
    bool path_known = false;
    char allow[128] = "";
    for (const cp_route_t *rt = cp_routes; rt->pattern; rt++) {
        const char *params[CP_MAX_PARAMS] = {0};
        if (!match(rt->pattern, path, a, params))
            continue;
        path_known = true;
        size_t al = strlen(allow);
        snprintf(allow + al, sizeof allow - al, "%s%s", al ? ", " : "", rt->method);
        if (strcmp(rt->method, method) == 0 ||
            (strcmp(rt->method, "GET") == 0 && strcmp(method, "HEAD") == 0)) {
            if (!hit) {
                hit = rt;
                memcpy(r.param, params, sizeof params);
            }
        }
    }
    err_t e = {0};
    if (hit && !request_utf8_ok(h)) {
        cp_failf(&r, -EINVAL, "path or query is not valid UTF-8");
        goto out;
    }
    if (!hit) {
        if (path_known) {
            http_set_header(h, "Allow", allow);
            cp_failf(&r, -EOPNOTSUPP, "method %s not allowed", method);
        } else {
            cp_failf(&r, -ENODEV, "no route for %s %s", method, path);
        }
        goto out;
    }
    int rc = authenticate(&r, hit->auth, &e);
    if (rc < 0) {
        cp_fail(&r, rc, &e);
        goto out;
    }
    hit->fn(&r);
out:
    db_release(r.db);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (log_enabled(LOG_INFO)) {
        long us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
        log_info("cp.request", "method=%s path=\"%s\" status=%d dur_us=%ld", method,
                 hit ? hit->pattern : "-", r.status, us);
    }
}

void cp_api_routes(cp_t *cp, http_route_t out[2])
{
    memset(out, 0, 2 * sizeof *out);
    out[0].method = NULL;
    out[0].path = "*";
    out[0].handle = dispatch;
    out[0].max_body = CP_MAX_BODY;
    out[0].error = early_error;
    out[0].ud = cp;
}
