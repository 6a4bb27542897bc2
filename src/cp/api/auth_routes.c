/* Sign-up, login and team switching (api.md §1). */
#include "api.h"
#include "auth/jwt.h"
#include "auth/secret.h"
#include "cp_util.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EMAIL_MAX    254
#define NAME_MAX_LEN 100

/* Answer with a token scoped to team_id and the caller's identity. */
static void token_response(cp_req_t *r, int status, const char *user_id, const char *team_id,
                           const char *email, const char *name, const char *role, bool is_admin)
{
    jwt_claims_t c = {0};
    snprintf(c.sub, sizeof c.sub, "%s", user_id);
    snprintf(c.team_id, sizeof c.team_id, "%s", team_id);
    snprintf(c.email, sizeof c.email, "%s", email);
    snprintf(c.name, sizeof c.name, "%s", name);
    snprintf(c.role, sizeof c.role, "%s", role);
    c.is_admin = is_admin;
    c.iat = (int64_t)time(NULL);
    c.exp = c.iat + r->cp->jwt_ttl_s;
    char *tok = jwt_sign(r->cp->jwt_key, r->cp->jwt_keylen, &c);
    json_t *o = json_object();
    json_object_set_new(o, "token", json_string(tok));
    json_object_set_new(o, "user_id", json_string(user_id));
    json_object_set_new(o, "team_id", json_string(team_id));
    json_object_set_new(o, "email", json_string(email));
    json_object_set_new(o, "name", json_string(name));
    free(tok);
    cp_json(r, status, o);
}

static bool email_ok(const char *s)
{
    size_t n = strlen(s);
    const char *at = strchr(s, '@');
    if (n < 3 || n > EMAIL_MAX || !at || at == s || !at[1])
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

void cp_h_signup(cp_req_t *r)
{
    err_t e = {0};
    json_t *body = NULL;
    char *email = NULL, *pw = NULL, *name = NULL;
    int rc;
    if ((rc = cp_body(r, &body, &e)) < 0 ||
        (rc = cp_str(r, body, "email", EMAIL_MAX + 64, &email, &e)) < 0 ||
        (rc = cp_str(r, body, "password", SECRET_PW_MAX, &pw, &e)) < 0 ||
        (rc = cp_str(r, body, "name", NAME_MAX_LEN * 4, &name, &e)) < 0)
        goto fail;
    if (!email || !email_ok(cp_lower(cp_trim(email)))) {
        rc = err_set(&e, -EINVAL, "invalid email");
        goto fail;
    }
    if (!pw || strlen(pw) < 8) {
        rc = err_set(&e, -EINVAL, "password must be at least 8 characters");
        goto fail;
    }
    if (name && strlen(cp_trim(name)) > NAME_MAX_LEN) {
        rc = err_set(&e, -EINVAL, "name must be at most %d characters", NAME_MAX_LEN);
        goto fail;
    }
    if (!name)
        name = "";
    char hash[160];
    if (secret_pw_hash(pw, r->cp->pw_ops, r->cp->pw_mem_kib, hash) < 0) {
        rc = err_set(&e, -EIO, "failed to hash password");
        goto fail;
    }
    char *team_name = xasprintf("%s's Team", *name ? name : email);
    char user_id[STORE_ID_MAX], team_id[STORE_ID_MAX];
    db_conn_t *db = NULL;
    rc = cp_db(r, &db, &e);
    if (rc >= 0)
        rc = store_signup(db, email, hash, name, team_name, user_id, team_id, &e);
    free(team_name);
    if (rc == -EEXIST)
        rc = err_set(&e, CP_E_EMAIL_TAKEN, "email already registered");
    if (rc < 0)
        goto fail;
    log_info("cp.signup", "user=%s team=%s", user_id, team_id);
    token_response(r, 201, user_id, team_id, email, name, "owner", false);
    json_decref(body);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}

void cp_h_login(cp_req_t *r)
{
    err_t e = {0};
    json_t *body = NULL;
    char *email = NULL, *pw = NULL;
    int rc;
    if ((rc = cp_body(r, &body, &e)) < 0 ||
        (rc = cp_str(r, body, "email", EMAIL_MAX + 64, &email, &e)) < 0 ||
        (rc = cp_str(r, body, "password", SECRET_PW_MAX, &pw, &e)) < 0)
        goto fail;
    if (email)
        cp_lower(cp_trim(email));
    if (!email || !*email || !pw || !*pw) {
        rc = err_set(&e, -EINVAL, "email and password are required");
        goto fail;
    }
    char addr[64], addr_key[80], email_key[EMAIL_MAX + 80];
    http_req_peer(r->h, addr, sizeof addr);
    snprintf(addr_key, sizeof addr_key, "a:%s", addr);
    snprintf(email_key, sizeof email_key, "e:%s", email);
    int64_t now = (int64_t)time(NULL);
    if (rl_blocked(r->cp->rl_email, email_key, now) || rl_blocked(r->cp->rl_addr, addr_key, now)) {
        rc = err_set(&e, -EUSERS, "too many failed login attempts; try again later");
        goto fail;
    }
    db_conn_t *db = NULL;
    if ((rc = cp_db(r, &db, &e)) < 0)
        goto fail;
    store_user_t u;
    rc = store_user_by_email(db, email, &u, &e);
    if (rc < 0 && rc != -ENOENT)
        goto fail;
    bool found = rc == 0;
    /* Give the connection back while Argon2 runs: it takes tens of milliseconds. */
    db_release(r->db);
    r->db = NULL;
    bool ok = secret_pw_verify(pw, found ? u.pw_hash : NULL) && found;
    if (!ok) {
        rl_fail(r->cp->rl_email, email_key, now);
        rl_fail(r->cp->rl_addr, addr_key, now);
        log_info("cp.login_failed", "addr=%s", addr);
        rc = err_set(&e, -EKEYREJECTED, "invalid email or password");
        goto fail;
    }
    char team_id[STORE_ID_MAX], role[16];
    if ((rc = cp_db(r, &db, &e)) < 0)
        goto fail;
    rc = store_login_team(db, u.id, team_id, role, &e);
    if (rc == -ENOENT)
        rc = err_set(&e, CP_E_NO_TEAM, "user is not a member of any team");
    if (rc < 0)
        goto fail;
    token_response(r, 200, u.id, team_id, u.email, u.name, role, u.is_admin);
    json_decref(body);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}

void cp_h_switch_team(cp_req_t *r)
{
    err_t e = {0};
    json_t *body = NULL;
    char *team_id = NULL;
    int rc;
    db_conn_t *db = NULL;
    if ((rc = cp_body(r, &body, &e)) < 0 ||
        (rc = cp_str(r, body, "team_id", STORE_ID_MAX, &team_id, &e)) < 0)
        goto fail;
    if (!team_id || !*team_id) {
        rc = err_set(&e, -EINVAL, "team_id is required");
        goto fail;
    }
    if (!cp_id_valid("team_", team_id)) {
        rc = err_set(&e, -EINVAL, "invalid team ID");
        goto fail;
    }
    if ((rc = cp_db(r, &db, &e)) < 0)
        goto fail;
    if ((rc = store_team_alive(db, team_id, &e)) < 0)
        goto fail;
    store_member_ctx_t m;
    rc = store_member_ctx(db, r->who.user_id, team_id, &m, &e);
    if (rc == -ENOENT)
        rc = err_set(&e, -EACCES, "not a member of this team");
    if (rc < 0)
        goto fail;
    token_response(r, 200, r->who.user_id, team_id, m.email, m.name, m.role, m.is_admin);
    json_decref(body);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}
