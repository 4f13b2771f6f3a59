-- 0007: config files pushed into sandboxes (editor and OpenCode settings,
-- say): a host-wide set an admin manages (workspace_id ''), and each
-- workspace's own set, merged over it. config_file_pushes keeps the hash
-- of what was last written per sandbox and path, so a later push can tell
-- a file the guest changed (kept unless forced) from one it left alone.

CREATE TABLE config_files (
    workspace_id TEXT NOT NULL DEFAULT '',     -- '': global
    path         TEXT NOT NULL,                -- ~/... or /etc/...
    content      TEXT NOT NULL,
    mode         INTEGER NOT NULL DEFAULT 420, -- 0644
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, path)
);

CREATE TABLE config_file_pushes (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    path       TEXT NOT NULL,                  -- as configured (~/ unexpanded)
    hash       TEXT NOT NULL,                  -- sha256 hex of the content written
    pushed_at  TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, path)
);
