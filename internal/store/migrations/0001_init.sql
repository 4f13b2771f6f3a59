-- 0001: the initial schema. Times are fixed-width RFC 3339 UTC text with nine
-- fractional digits, so text comparison and ORDER BY follow time order.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    github_id   INTEGER UNIQUE,              -- NULL for local (mock-mode) users
    login       TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    avatar_url  TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX sessions_user_id ON sessions(user_id);
CREATE INDEX sessions_expires_at ON sessions(expires_at);

CREATE TABLE oauth_states (
    state       TEXT PRIMARY KEY,
    verifier    TEXT NOT NULL,
    return_to   TEXT NOT NULL DEFAULT '',
    expires_at  TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    hash          BLOB NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    expires_at    TEXT,
    revoked_at    TEXT
);
CREATE INDEX api_tokens_user_id ON api_tokens(user_id);

-- Used by a later issue (SSH access); created now so the schema has one origin.
CREATE TABLE ssh_keys (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    type         TEXT NOT NULL,
    expires_at   TEXT,
    created_at   TEXT NOT NULL,
    UNIQUE (user_id, fingerprint)
);

CREATE TABLE sandboxes (
    id            TEXT PRIMARY KEY CHECK (length(id) = 12),
    name          TEXT NOT NULL DEFAULT '',
    owner_id      TEXT NOT NULL,
    workspace_id  TEXT NOT NULL DEFAULT '',
    image         TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN
                  ('creating', 'running', 'stopping', 'stopped', 'starting', 'error', 'destroying')),
    vcpus         INTEGER NOT NULL DEFAULT 0,
    memory_mb     INTEGER NOT NULL DEFAULT 0,
    ip            TEXT NOT NULL DEFAULT '',
    mac           TEXT NOT NULL DEFAULT '',
    error         TEXT NOT NULL DEFAULT '',
    timings       TEXT,                        -- JSON object, phase -> milliseconds
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX sandboxes_status ON sandboxes(status);
CREATE INDEX sandboxes_owner_id ON sandboxes(owner_id);
CREATE INDEX sandboxes_created_at ON sandboxes(created_at, id);
-- Names are optional; only named sandboxes must be unique per owner.
CREATE UNIQUE INDEX sandboxes_owner_name ON sandboxes(owner_id, name) WHERE name <> '';

-- The journal deliberately has no foreign key to sandboxes: it must outlive
-- the row so recovery can still undo what a deleted sandbox left behind.
CREATE TABLE sandbox_ops (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id  TEXT NOT NULL,
    op          TEXT NOT NULL,
    step        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('intent', 'done', 'undone', 'failed')),
    detail      TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX sandbox_ops_sandbox_id ON sandbox_ops(sandbox_id);
CREATE INDEX sandbox_ops_state ON sandbox_ops(state);

-- Leases are their own rows (not a sandbox column) so an error-state or
-- deleted sandbox cannot keep an address implicitly.
CREATE TABLE ip_leases (
    ip          TEXT PRIMARY KEY,
    sandbox_id  TEXT NOT NULL UNIQUE,
    mac         TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused after a trim
    type        TEXT NOT NULL,
    sandbox_id  TEXT NOT NULL DEFAULT '',
    data        TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,                 -- JSON
    updated_at  TEXT NOT NULL
);
