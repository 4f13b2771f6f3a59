-- 0006: workspaces (what to clone and how to set it up), their secrets, the
-- git sources whose tokens clone them, and their prebuilds.
--
-- Secrets and tokens are sealed with {dataDir}/secrets.key (package
-- secretbox), bound to their row: the database alone opens none of them.
-- A prebuild's state has its own row, so a build finishing never writes back
-- a workspace read before a user's edit (reference weak point 30).

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    config      TEXT NOT NULL,            -- JSON: repositories, image, resources, commands, variables
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE TABLE workspace_secrets (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL CHECK (kind IN ('env', 'file')),
    name         TEXT NOT NULL,           -- variable name, or absolute file path in the guest
    mode         INTEGER NOT NULL DEFAULT 0,
    sealed       BLOB NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, kind, name)
);

CREATE TABLE git_sources (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    type        TEXT NOT NULL CHECK (type IN ('generic', 'github')),
    name        TEXT NOT NULL,
    host        TEXT NOT NULL,            -- the host[:port] whose credentials it answers
    username    TEXT NOT NULL DEFAULT '',
    token       BLOB,                     -- sealed; NULL: github type using the user's OAuth token
    created_at  TEXT NOT NULL,
    UNIQUE (owner_id, name)
);
CREATE INDEX git_sources_owner_host ON git_sources(owner_id, host);

CREATE TABLE prebuilds (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    status       TEXT NOT NULL DEFAULT 'none' CHECK (status IN ('none', 'building', 'ready', 'failed')),
    ready        INTEGER NOT NULL DEFAULT 0,   -- 1: prebuild-{workspace_id} holds a finished build
    commits      TEXT NOT NULL DEFAULT '{}',   -- JSON: clone path -> commit of the ready build
    built_at     TEXT,
    checked_at   TEXT,
    stale        INTEGER NOT NULL DEFAULT 0,
    build_id     TEXT NOT NULL DEFAULT '',     -- sandbox doing the current build
    error        TEXT NOT NULL DEFAULT '',
    log          TEXT NOT NULL DEFAULT '',
    updated_at   TEXT NOT NULL
);
