-- 0003: tenancy. Every credential is re-checked against the allow-lists at
-- use: org membership is re-verified with the user's own GitHub OAuth token
-- (sealed with {dataDir}/secrets.key, never stored in the clear), and API
-- tokens carry a scope and, by default, an expiry.

ALTER TABLE users ADD COLUMN github_token BLOB;                 -- sealed OAuth token; NULL: none kept
ALTER TABLE users ADD COLUMN org_verified TEXT NOT NULL DEFAULT '';  -- org whose active membership was last confirmed
ALTER TABLE users ADD COLUMN org_verified_at TEXT;              -- when; NULL: never

ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'full'
    CHECK (scope IN ('read', 'full', 'admin'));

-- Tokens made before this version never expired by default: they now end
-- 90 days after the upgrade (auth.tokenTtlDays' default), like new ones.
-- dialect: sqlite
UPDATE api_tokens SET expires_at = strftime('%Y-%m-%dT%H:%M:%S', 'now', '+90 days') || '.000000000Z'
    WHERE expires_at IS NULL AND revoked_at IS NULL;
-- dialect: postgres
UPDATE api_tokens SET expires_at = to_char(now() AT TIME ZONE 'UTC' + interval '90 days', 'YYYY-MM-DD"T"HH24:MI:SS') || '.000000000Z'
    WHERE expires_at IS NULL AND revoked_at IS NULL;
-- dialect: all

CREATE INDEX oauth_states_expires_at ON oauth_states(expires_at);
CREATE INDEX api_tokens_expires_at ON api_tokens(expires_at);
