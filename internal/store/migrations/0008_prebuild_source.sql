-- 0008: where the ready prebuild came from: 'build' (a prebuild build) or
-- 'promote' (a user's sandbox saved with "save as prebuild", whose id is
-- source_sandbox_id). '' while there is no ready prebuild. It describes
-- the ready prebuild, so a failed or running rebuild leaves it unchanged.

ALTER TABLE prebuilds ADD COLUMN source TEXT NOT NULL DEFAULT '' CHECK (source IN ('', 'build', 'promote'));
ALTER TABLE prebuilds ADD COLUMN source_sandbox_id TEXT NOT NULL DEFAULT '';

-- Prebuilds saved before this column: a promote's log starts with
-- "HH:MM:SS promoted from sandbox {12-character id}" until the next build
-- attempt resets the log; any other ready prebuild was built.
UPDATE prebuilds SET source = 'promote', source_sandbox_id = substr(log, 32, 12)
    WHERE ready = 1 AND log LIKE '________ promoted from sandbox %';
UPDATE prebuilds SET source = 'build' WHERE ready = 1 AND source = '';
