-- 0003: reserved for another branch's migration; this file only keeps the
-- versions contiguous until the two branches are merged, and is dropped then.
SELECT 1;
