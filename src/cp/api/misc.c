/* Sandbox reads (the list is served from the store; it stays empty until hosts exist) and the
 * API's own documentation. */
#include "api.h"
#include "embedded.h"

void cp_h_sandboxes_list(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *arr = NULL;
    int rc;
    if ((rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_sandbox_list(db, r->who.team_id, &arr, &e)) < 0) {
        cp_fail(r, rc, &e);
        return;
    }
    cp_json(r, 200, arr);
}

void cp_h_sandbox_get(cp_req_t *r)
{
    err_t e = {0};
    db_conn_t *db = NULL;
    json_t *sb = NULL;
    int rc;
    if ((rc = cp_db(r, &db, &e)) < 0 ||
        (rc = store_sandbox_get(db, r->who.team_id, r->param[0], &sb, &e)) < 0) {
        cp_fail(r, rc, &e);
        return;
    }
    cp_json(r, 200, sb);
}

void cp_h_openapi(cp_req_t *r)
{
    r->status = 200;
    http_respond(r->h, 200, "application/yaml", cp_openapi_yaml, cp_openapi_yaml_len);
}

void cp_h_docs(cp_req_t *r)
{
    r->status = 200;
    http_respond(r->h, 200, "text/html; charset=utf-8", cp_docs_html, cp_docs_html_len);
}
