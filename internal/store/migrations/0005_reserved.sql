-- 0005: reserved for another branch's migration, which replaces this file
-- when both are merged. The runner refuses gaps in the numbering, so until
-- then this no-op holds the place of 0006_workspaces.sql's predecessor.
SELECT 1;
