-- 0004: what per-user quotas and a change of volume driver need to know of
-- each sandbox.
--   disk_bytes     virtual size of the sandbox's root volume (its image's
--                  size at create), counted against quotas.diskGbPerUser;
--                  0 for sandboxes made before this version until the
--                  reconciler reads the size from their volume.
--   volume_driver  'lvm' or 'file': the driver holding the volume; '' when
--                  unknown (the volume is then looked up on every driver).
ALTER TABLE sandboxes ADD COLUMN disk_bytes INTEGER NOT NULL DEFAULT 0 CHECK (disk_bytes >= 0);
ALTER TABLE sandboxes ADD COLUMN volume_driver TEXT NOT NULL DEFAULT ''
    CHECK (volume_driver IN ('', 'lvm', 'file'));

-- The journal's volume step recorded the path each clone returned: an LVM
-- device under /dev, or an .ext4 file.
UPDATE sandboxes SET volume_driver = CASE
    WHEN EXISTS (SELECT 1 FROM sandbox_ops o WHERE o.sandbox_id = sandboxes.id AND o.step = 'volume'
                 AND o.state = 'done' AND o.detail LIKE '/dev/%') THEN 'lvm'
    WHEN EXISTS (SELECT 1 FROM sandbox_ops o WHERE o.sandbox_id = sandboxes.id AND o.step = 'volume'
                 AND o.state = 'done' AND o.detail LIKE '%.ext4') THEN 'file'
    ELSE '' END;
