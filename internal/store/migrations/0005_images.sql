-- 0005: the host's image catalog (internal/image/catalog). The volume
-- driver holds the images themselves (image-<id> LVs, images/<id>.ext4
-- files); this table is what the host read from them, so listing images
-- needs no volume scan and no look inside each filesystem. The catalog
-- re-syncs it from the drivers at startup and after every import or removal.
--   driver          'lvm' or 'file': where the volume is
--   size_bytes      the image's virtual size (every clone's disk size)
--   used_bytes      what the volume has allocated
--   created_at      when the image entered the catalog (import, build, or
--                   the first sync that found it)
--   manifest        /etc/atelier/image.json as read from the image; '' when
--                   the image has none or it did not parse
--   manifest_error  why manifest is empty ('' when it is not)
--   source          how it got here: 'build', 'import', 'disk' (found by a sync)
CREATE TABLE images (
    id             TEXT PRIMARY KEY,
    driver         TEXT NOT NULL DEFAULT '' CHECK (driver IN ('', 'lvm', 'file')),
    size_bytes     INTEGER NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    used_bytes     INTEGER NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    created_at     TEXT NOT NULL,
    manifest       TEXT NOT NULL DEFAULT '',
    manifest_error TEXT NOT NULL DEFAULT '',
    source         TEXT NOT NULL DEFAULT 'disk' CHECK (source IN ('build', 'import', 'disk')),
    synced_at      TEXT NOT NULL
);

-- Which sandboxes use an image is asked of every listing and every removal.
CREATE INDEX sandboxes_image ON sandboxes(image);
