DROP TABLE audit_logs;
DROP TABLE templates;
DROP TABLE sandboxes;
DROP TABLE team_api_keys;
DROP TABLE users_teams;
DROP TABLE teams;
DROP TABLE users;
