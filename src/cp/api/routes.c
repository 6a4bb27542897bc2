/* The route table: every route the control plane serves. The OpenAPI document
 * (src/cp/api/openapi.yaml) must list exactly these; tests/it/cp checks it both ways. */
#include "api.h"

const cp_route_t cp_routes[] = {
    {"POST", "/v1/auth/signup", CP_AUTH_NONE, cp_h_signup},
    {"POST", "/v1/auth/login", CP_AUTH_NONE, cp_h_login},
    {"POST", "/v1/auth/switch-team", CP_AUTH_JWT, cp_h_switch_team},
    {"POST", "/v1/api-keys", CP_AUTH_JWT, cp_h_keys_create},
    {"GET", "/v1/api-keys", CP_AUTH_JWT, cp_h_keys_list},
    {"DELETE", "/v1/api-keys/{id}", CP_AUTH_JWT, cp_h_keys_delete},
    {"GET", "/v1/teams", CP_AUTH_JWT, cp_h_teams_list},
    {"POST", "/v1/teams", CP_AUTH_JWT, cp_h_teams_create},
    {"GET", "/v1/teams/{id}", CP_AUTH_JWT, cp_h_team_get},
    {"PATCH", "/v1/teams/{id}", CP_AUTH_JWT, cp_h_team_rename},
    {"DELETE", "/v1/teams/{id}", CP_AUTH_JWT, cp_h_team_delete},
    {"GET", "/v1/teams/{id}/members", CP_AUTH_JWT, cp_h_members_list},
    {"POST", "/v1/teams/{id}/members", CP_AUTH_JWT, cp_h_members_add},
    {"PATCH", "/v1/teams/{id}/members/{uid}", CP_AUTH_JWT, cp_h_member_role},
    {"DELETE", "/v1/teams/{id}/members/{uid}", CP_AUTH_JWT, cp_h_member_remove},
    {"POST", "/v1/teams/{id}/leave", CP_AUTH_JWT, cp_h_team_leave},
    {"GET", "/v1/users/search", CP_AUTH_JWT, cp_h_users_search},
    {"GET", "/v1/audit-logs", CP_AUTH_JWT, cp_h_audit_list},
    {"GET", "/v1/sandboxes", CP_AUTH_KEY_OR_JWT, cp_h_sandboxes_list},
    {"GET", "/v1/sandboxes/{id}", CP_AUTH_KEY_OR_JWT, cp_h_sandbox_get},
    {"GET", "/openapi.yaml", CP_AUTH_NONE, cp_h_openapi},
    {"GET", "/docs", CP_AUTH_NONE, cp_h_docs},
    {0},
};
