/* API keys (api.md §2): create (plaintext shown once), list, revoke. */
#include "api.h"
#include "auth/secret.h"
#include "cp_util.h"

#include <stdio.h>
#include <string.h>

#define KEY_NAME_MAX 200

void cp_h_keys_create(cp_req_t *r)
{
    err_t e = {0};
    json_t *body = NULL;
    char *name = NULL;
    int rc;
    db_conn_t *db = NULL;
    if ((rc = cp_body(r, &body, &e)) < 0 ||
        (rc = cp_str(r, body, "name", KEY_NAME_MAX, &name, &e)) < 0)
        goto fail;
    const char *nm = name && *cp_trim(name) ? name : "Unnamed API Key";
    char id[STORE_ID_MAX], key[SECRET_KEY_MAX], hash[SECRET_HASH_HEX], shown[64], now[CP_TIME_LEN];
    cp_id_new("key_", id, sizeof id);
    secret_key_new(r->cp->key_prefix, key, sizeof key, hash, shown, sizeof shown);
    cp_time_fmt(cp_now_us(), now);
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = store_key_create(db, id, r->who.team_id, nm, hash,
                                                               shown, r->who.user_id, now, &e)) < 0)
        goto fail;
    json_t *meta = json_pack("{s:s}", "name", nm);
    cp_audit(r, "api_key", id, "create", "team", "success", meta);
    json_decref(meta);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "team_id", json_string(r->who.team_id));
    json_object_set_new(o, "name", json_string(nm));
    json_object_set_new(o, "key_prefix", json_string(shown));
    json_object_set_new(o, "created_by", json_string(r->who.user_id));
    json_object_set_new(o, "created_at", json_string(now));
    json_object_set_new(o, "key", json_string(key));
    json_decref(body);
    cp_json(r, 201, o);
    return;
fail:
    json_decref(body);
    cp_fail(r, rc, &e);
}

void cp_h_keys_list(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *arr = NULL;
    int rc;
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = store_key_list(db, r->who.team_id, &arr, &e)) < 0) {
        cp_fail(r, rc, &e);
        return;
    }
    cp_json(r, 200, arr);
}

void cp_h_keys_delete(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    const char *id = r->param[0];
    int rc;
    if (!cp_id_valid("key_", id)) {
        cp_failf(r, -EINVAL, "invalid API key ID");
        return;
    }
    if ((rc = cp_db(r, &db, &e)) < 0 || (rc = store_key_delete(db, r->who.team_id, id, &e)) < 0) {
        cp_fail(r, rc, &e);
        return;
    }
    /* A key of another team is indistinguishable from a missing one. */
    if (rc == 0) {
        cp_failf(r, -ENOENT, "API key not found");
        return;
    }
    cp_audit(r, "api_key", id, "revoke", "team", "warning", NULL);
    cp_no_content(r);
}
