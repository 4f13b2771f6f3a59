package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Image is one row of the image catalog: what the host read from an image
// volume. Manifest is the raw JSON of /etc/atelier/image.json (the catalog
// parses it); the volume itself belongs to the storage driver.
type Image struct {
	ID            string
	Driver        string
	SizeBytes     int64
	UsedBytes     int64
	CreatedAt     time.Time
	Manifest      string
	ManifestError string
	Source        string
	SyncedAt      time.Time
}

// Image sources.
const (
	ImageSourceBuild  = "build"
	ImageSourceImport = "import"
	ImageSourceDisk   = "disk"
)

const imageCols = `id, driver, size_bytes, used_bytes, created_at, manifest, manifest_error, source, synced_at`

func scanImage(r rowScanner) (Image, error) {
	var (
		im       Image
		cAt, sAt string
	)
	if err := r.Scan(&im.ID, &im.Driver, &im.SizeBytes, &im.UsedBytes, &cAt, &im.Manifest, &im.ManifestError, &im.Source, &sAt); err != nil {
		return Image{}, err
	}
	var err error
	if im.CreatedAt, err = parseTime(cAt); err != nil {
		return Image{}, err
	}
	if im.SyncedAt, err = parseTime(sAt); err != nil {
		return Image{}, err
	}
	return im, nil
}

// PutImage inserts or replaces the catalog row of im.ID. CreatedAt and
// Source of an existing row are kept unless keepCreated is false: a sync
// that finds the same image again must not make it look new.
func (s *Store) PutImage(ctx context.Context, im Image, keepCreated bool) (Image, error) {
	if im.ID == "" {
		return Image{}, errors.New("put image: empty id")
	}
	if im.Source == "" {
		im.Source = ImageSourceDisk
	}
	im.CreatedAt = s.orNow(im.CreatedAt)
	im.SyncedAt = s.orNow(im.SyncedAt)
	q := `INSERT INTO images (` + imageCols + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET driver = excluded.driver, size_bytes = excluded.size_bytes,
			used_bytes = excluded.used_bytes, manifest = excluded.manifest,
			manifest_error = excluded.manifest_error, synced_at = excluded.synced_at`
	if !keepCreated {
		q += `, created_at = excluded.created_at, source = excluded.source`
	}
	if _, err := s.w.ExecContext(ctx, q, im.ID, im.Driver, im.SizeBytes, im.UsedBytes, fmtTime(im.CreatedAt),
		im.Manifest, im.ManifestError, im.Source, fmtTime(im.SyncedAt)); err != nil {
		return Image{}, fmt.Errorf("put image %s: %w", im.ID, err)
	}
	return s.GetImage(ctx, im.ID)
}

// GetImage returns the catalog row of id; ErrNotFound when absent.
func (s *Store) GetImage(ctx context.Context, id string) (Image, error) {
	im, err := scanImage(s.r.QueryRowContext(ctx, `SELECT `+imageCols+` FROM images WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, fmt.Errorf("get image %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("get image %s: %w", id, err)
	}
	return im, nil
}

// ListImages returns the catalog, by id.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+imageCols+` FROM images ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	out := []Image{}
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		out = append(out, im)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

// DeleteImage removes the catalog row of id; an absent row is success.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete image %s: %w", id, err)
	}
	return nil
}

// ImageUsers maps each image to the sandboxes whose volume was cloned from
// it, ids sorted. Every row counts, stopped and failed sandboxes included:
// their volume still names the image as its origin, and on LVM a thin
// snapshot's origin cannot go while the snapshot exists.
func (s *Store) ImageUsers(ctx context.Context) (map[string][]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT image, id FROM sandboxes WHERE image <> '' ORDER BY image, id`)
	if err != nil {
		return nil, fmt.Errorf("image users: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var img, id string
		if err := rows.Scan(&img, &id); err != nil {
			return nil, fmt.Errorf("image users: %w", err)
		}
		out[img] = append(out[img], id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("image users: %w", err)
	}
	return out, nil
}
