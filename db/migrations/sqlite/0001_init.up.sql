-- Control-plane schema for SQLite. Times are TEXT in the canonical form
-- YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC, microseconds, fixed width) so they sort as text.
-- Booleans are INTEGER 0/1.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    name          TEXT NOT NULL DEFAULT '',
    is_admin      INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);

CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    is_byoc    INTEGER NOT NULL DEFAULT 0 CHECK (is_byoc IN (0, 1)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    deleted_at TEXT
);

CREATE TABLE users_teams (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    role       TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX users_teams_user_idx ON users_teams (user_id);
-- Exactly one owner per team is an invariant the database enforces too.
CREATE UNIQUE INDEX users_teams_one_owner ON users_teams (team_id) WHERE role = 'owner';

CREATE TABLE team_api_keys (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name       TEXT NOT NULL DEFAULT '',
    key_hash   TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    last_used  TEXT
);
CREATE INDEX team_api_keys_team_idx ON team_api_keys (team_id);

CREATE TABLE sandboxes (
    id             TEXT PRIMARY KEY,
    team_id        TEXT NOT NULL REFERENCES teams (id),
    host_id        TEXT NOT NULL DEFAULT 'default',
    template       TEXT NOT NULL DEFAULT 'minimal',
    status         TEXT NOT NULL DEFAULT 'pending',
    vcpus          INTEGER NOT NULL DEFAULT 1,
    memory_mb      INTEGER NOT NULL DEFAULT 512,
    timeout_sec    INTEGER NOT NULL DEFAULT 0,
    guest_ip       TEXT NOT NULL DEFAULT '',
    host_ip        TEXT NOT NULL DEFAULT '',
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    started_at     TEXT,
    last_active_at TEXT,
    last_updated   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);
CREATE INDEX sandboxes_status_idx ON sandboxes (status);
CREATE INDEX sandboxes_host_status_idx ON sandboxes (host_id, status);
CREATE INDEX sandboxes_team_idx ON sandboxes (team_id, created_at);

-- Templates are keyed by (team, name): two teams may use the same name (data-model.md §1.3).
CREATE TABLE templates (
    team_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    type       TEXT NOT NULL DEFAULT 'base' CHECK (type IN ('base', 'snapshot')),
    vcpus      INTEGER,
    memory_mb  INTEGER,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    PRIMARY KEY (team_id, name)
);

CREATE TABLE audit_logs (
    id            TEXT PRIMARY KEY,
    team_id       TEXT NOT NULL,
    actor_type    TEXT NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system')),
    actor_id      TEXT,
    actor_name    TEXT NOT NULL DEFAULT '',
    resource_type TEXT NOT NULL,
    resource_id   TEXT,
    action        TEXT NOT NULL,
    scope         TEXT NOT NULL DEFAULT 'team' CHECK (scope IN ('team', 'admin')),
    status        TEXT NOT NULL DEFAULT 'success',
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);
CREATE INDEX audit_logs_team_created_idx ON audit_logs (team_id, created_at DESC, id DESC);
CREATE INDEX audit_logs_team_resource_idx ON audit_logs (team_id, resource_type, created_at DESC);
