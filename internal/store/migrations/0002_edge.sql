-- 0002: the HTTP edge. routes is the source of truth for the edge's in-memory
-- routing table: a manager restart rebuilds every route from it (dev and
-- browser routes included). edge_codes are the one-time codes of the
-- dashboard -> sandbox host login handshake; only their SHA-256 is stored.

CREATE TABLE routes (
    host        TEXT PRIMARY KEY,                 -- full host name, lower case, no port
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('vscode', 'opencode', 'browser', 'dev')),
    name        TEXT NOT NULL DEFAULT '',         -- dev command name
    alias       TEXT NOT NULL DEFAULT '',         -- dev alias, '' for the command's own hosts
    port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    public      INTEGER NOT NULL DEFAULT 0 CHECK (public IN (0, 1)),
    created_at  TEXT NOT NULL
);
CREATE INDEX routes_sandbox_id ON routes(sandbox_id);

CREATE TABLE edge_codes (
    hash        BLOB PRIMARY KEY,                 -- SHA-256 of the code
    host        TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    session_id  TEXT NOT NULL DEFAULT '',
    next        TEXT NOT NULL DEFAULT '/',
    expires_at  TEXT NOT NULL
);
CREATE INDEX edge_codes_expires_at ON edge_codes(expires_at);
