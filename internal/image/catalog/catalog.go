// Package catalog is the host's list of images: every image volume the
// storage drivers hold (image-<id> LVs, {stateDir}/images/<id>.ext4
// files), what its manifest (/etc/atelier/image.json) says, its size, when
// it arrived, and which sandboxes use it. The volumes are the truth; the
// images table in the store is what the catalog last read from them, synced
// at startup, after every import or removal, and when a listing finds the
// last sync older than a minute (another process, `atelier images build`,
// may have added one).
//
// Imports and removals are whole-or-nothing: an image enters the driver
// under its final name only complete (the drivers write a temporary name
// and rename, or undo a half-made LV), a foreign image passes e2fsck first,
// and a failure after the volume exists deletes it again.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"atelier/internal/image/ext4img"
	"atelier/internal/image/manifest"
	"atelier/internal/storage"
	"atelier/internal/store"
)

// Volumes is what the catalog needs of the volume drivers (pool.Set, or a
// single driver).
type Volumes interface {
	List(ctx context.Context) ([]storage.Volume, error)
	CreateImage(ctx context.Context, imageID, srcPath string, sizeBytes int64) error
	DeleteImage(ctx context.Context, imageID string) error
}

// Errors callers branch on.
var (
	ErrNotFound = errors.New("image not found")
	ErrExists   = errors.New("image already exists")
	ErrInUse    = errors.New("image in use")
	ErrInvalid  = errors.New("invalid image")
)

// InUseError is a removal refused because sandboxes (or prebuilds) still
// use the image; errors.Is(err, ErrInUse) holds.
type InUseError struct {
	ID        string
	Sandboxes []string
	Prebuilds []string
}

func (e *InUseError) Error() string {
	var parts []string
	if len(e.Sandboxes) > 0 {
		parts = append(parts, fmt.Sprintf("%d sandbox(es) (%s)", len(e.Sandboxes), strings.Join(e.Sandboxes, ", ")))
	}
	if len(e.Prebuilds) > 0 {
		parts = append(parts, fmt.Sprintf("%d prebuild(s) (%s)", len(e.Prebuilds), strings.Join(e.Prebuilds, ", ")))
	}
	return fmt.Sprintf("image %s is used by %s: destroy them first", e.ID, strings.Join(parts, " and "))
}

func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// Image is one catalog entry.
type Image struct {
	ID        string
	Driver    string
	SizeBytes int64
	UsedBytes int64
	CreatedAt time.Time
	Source    string
	// Manifest is nil when the image has none (or it did not parse:
	// ManifestError says why).
	Manifest      *manifest.Manifest
	ManifestError string
	// Sandboxes using the image, sorted.
	Sandboxes []string
	// Prebuilds made from it, sorted (none until workspaces have them).
	Prebuilds []string
}

// Options configure a Catalog.
type Options struct {
	Store   *store.Store
	Volumes Volumes
	Log     *slog.Logger
	// Prebuilds maps image ids to the workspaces whose prebuild was made
	// from them; nil until prebuilds exist. A removal refuses while any.
	Prebuilds func(ctx context.Context) (map[string][]string, error)
	// MaxAge is how old a sync may be before a listing syncs again
	// (default one minute).
	MaxAge time.Duration
	// BuildsDir holds the records of builds in progress
	// ({stateDir}/images, see internal/image/progress); "" for none.
	BuildsDir string
	// Publish, when set, gets the image.build / image.built /
	// image.failed events WatchBuilds sees (events.Bus.Publish).
	Publish func(ctx context.Context, typ string, data any) error
	// Release, when set, is called by a removal before it checks who uses
	// the image: it gives up what the host alone holds of it (the warm
	// pool's sandboxes, which would otherwise keep every removal, and so
	// every rebuild, refused).
	Release func(ctx context.Context, id string) error
}

// Catalog is safe for concurrent use; imports, removals and syncs run one
// at a time.
type Catalog struct {
	o  Options
	mu sync.Mutex
	// synced is when the last successful sync finished.
	synced time.Time
}

// New returns a catalog; call Sync before serving.
func New(o Options) *Catalog {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxAge <= 0 {
		o.MaxAge = time.Minute
	}
	return &Catalog{o: o}
}

// maxManifest bounds what is read of an image's manifest.
const maxManifest = 1 << 20

// ReadManifest reads and validates the manifest inside the ext4 image at
// path without mounting it. A missing manifest is fs.ErrNotExist.
func ReadManifest(ctx context.Context, path string) (*manifest.Manifest, error) {
	b, err := ext4img.ReadFile(ctx, path, manifest.Path, maxManifest)
	if err != nil {
		return nil, err
	}
	return manifest.Parse(b)
}

// Sync reads the image volumes from the drivers into the store: new ones
// are added (their manifest read), changed ones updated, vanished ones
// dropped. A driver that fails to list drops nothing.
func (c *Catalog) Sync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncLocked(ctx)
}

func (c *Catalog) syncLocked(ctx context.Context) error {
	vols, listErr := c.o.Volumes.List(ctx)
	have, err := c.o.Store.ListImages(ctx)
	if err != nil {
		return fmt.Errorf("sync images: %w", err)
	}
	rows := map[string]store.Image{}
	for _, r := range have {
		rows[r.ID] = r
	}
	seen := map[string]bool{}
	var errs []error
	for _, v := range vols {
		if v.Kind != storage.KindImage || seen[v.ID] {
			continue
		}
		seen[v.ID] = true
		row, known := rows[v.ID]
		if known && row.Driver == v.Driver && row.SizeBytes == v.SizeBytes && row.UsedBytes == v.UsedBytes {
			continue
		}
		im := store.Image{ID: v.ID, Driver: v.Driver, SizeBytes: v.SizeBytes, UsedBytes: v.UsedBytes,
			Source: store.ImageSourceDisk, Manifest: row.Manifest, ManifestError: row.ManifestError}
		if !known || row.Driver != v.Driver || row.SizeBytes != v.SizeBytes {
			im.Manifest, im.ManifestError = c.readManifest(ctx, v.Path)
		}
		if _, err := c.o.Store.PutImage(ctx, im, true); err != nil {
			errs = append(errs, err)
			continue
		}
		if !known {
			c.o.Log.Info("image found on disk", "image", v.ID, "driver", v.Driver, "size_bytes", v.SizeBytes)
		}
	}
	if listErr == nil {
		for id := range rows {
			if !seen[id] {
				if err := c.o.Store.DeleteImage(ctx, id); err != nil {
					errs = append(errs, err)
					continue
				}
				c.o.Log.Info("image gone from disk: dropped from the catalog", "image", id)
			}
		}
	} else {
		errs = append(errs, listErr)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sync images: %w", err)
	}
	c.synced = time.Now()
	return nil
}

// readManifest returns the manifest's JSON, or why there is none.
func (c *Catalog) readManifest(ctx context.Context, path string) (string, string) {
	m, err := ReadManifest(ctx, path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", "the image has no " + manifest.Path
	case err != nil:
		c.o.Log.Warn("image manifest unreadable", "path", path, "err", err)
		return "", err.Error()
	}
	b, err := m.Marshal()
	if err != nil {
		return "", err.Error()
	}
	return string(b), ""
}

// fresh syncs when the last sync is older than MaxAge. A failed sync is
// logged and the stored catalog served: listing must not fail because one
// driver's pool is missing.
func (c *Catalog) fresh(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.synced) < c.o.MaxAge {
		return
	}
	if err := c.syncLocked(ctx); err != nil {
		c.o.Log.Warn("image catalog sync failed; serving the last known list", "err", err)
		c.synced = time.Now() // retry after MaxAge, not on every request
	}
}

// List returns every image with its users, by id.
func (c *Catalog) List(ctx context.Context) ([]Image, error) {
	c.fresh(ctx)
	rows, err := c.o.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	users, pre, err := c.users(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, len(rows))
	for _, r := range rows {
		out = append(out, toImage(r, users[r.ID], pre[r.ID]))
	}
	return out, nil
}

// Get returns one image; ErrNotFound when the catalog has none by that id.
func (c *Catalog) Get(ctx context.Context, id string) (Image, error) {
	c.fresh(ctx)
	r, err := c.o.Store.GetImage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Image{}, fmt.Errorf("image %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Image{}, err
	}
	users, pre, err := c.users(ctx)
	if err != nil {
		return Image{}, err
	}
	return toImage(r, users[id], pre[id]), nil
}

func (c *Catalog) users(ctx context.Context) (map[string][]string, map[string][]string, error) {
	users, err := c.o.Store.ImageUsers(ctx)
	if err != nil {
		return nil, nil, err
	}
	pre := map[string][]string{}
	if c.o.Prebuilds != nil {
		if pre, err = c.o.Prebuilds(ctx); err != nil {
			return nil, nil, fmt.Errorf("image prebuilds: %w", err)
		}
	}
	return users, pre, nil
}

func toImage(r store.Image, sandboxes, prebuilds []string) Image {
	im := Image{ID: r.ID, Driver: r.Driver, SizeBytes: r.SizeBytes, UsedBytes: r.UsedBytes, CreatedAt: r.CreatedAt,
		Source: r.Source, ManifestError: r.ManifestError,
		Sandboxes: append([]string{}, sandboxes...), Prebuilds: append([]string{}, prebuilds...)}
	sort.Strings(im.Sandboxes)
	sort.Strings(im.Prebuilds)
	if r.Manifest != "" {
		m, err := manifest.Parse([]byte(r.Manifest))
		if err != nil {
			im.ManifestError = err.Error()
		} else {
			im.Manifest = m
		}
	}
	return im
}

// Remove deletes the image's volume and its catalog entry. It refuses
// (*InUseError) while sandboxes or prebuilds use the image, and is
// ErrNotFound when neither the catalog nor a driver has it.
//
// A create racing the removal either lands its row before the check (and
// the removal is refused) or finds no image to clone from and fails.
func (c *Catalog) Remove(ctx context.Context, id string) error {
	if !storage.ValidImageID(id) {
		return fmt.Errorf("%w: image id %q", ErrInvalid, id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.syncLocked(ctx); err != nil {
		c.o.Log.Warn("image catalog sync before removal failed", "image", id, "err", err)
	}
	if _, err := c.o.Store.GetImage(ctx, id); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("remove image %s: %w", id, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	if c.o.Release != nil {
		if err := c.o.Release(ctx, id); err != nil {
			return fmt.Errorf("remove image %s: %w", id, err)
		}
	}
	users, pre, err := c.users(ctx)
	if err != nil {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	if len(users[id]) > 0 || len(pre[id]) > 0 {
		return &InUseError{ID: id, Sandboxes: users[id], Prebuilds: pre[id]}
	}
	if err := c.o.Volumes.DeleteImage(ctx, id); err != nil {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := c.o.Store.DeleteImage(ctx, id); err != nil {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	c.o.Log.Info("image removed", "image", id)
	return nil
}

// ImportRequest is an ext4 file to make into an image.
type ImportRequest struct {
	ID string
	// Path is the ext4 file; it is left in place (the driver reflinks or
	// copies it).
	Path string
	// Source is store.ImageSourceBuild or store.ImageSourceImport.
	Source string
	// Foreign images (anything not built by this host from its own
	// recipes) must pass e2fsck -fn before the host accepts them.
	Foreign bool
	// RequireManifest refuses an image without a valid manifest.
	RequireManifest bool
	// SizeBytes grows the volume (every clone's disk) to at least this.
	SizeBytes int64
}

// Import makes req.Path the image req.ID, whole or not at all.
func (c *Catalog) Import(ctx context.Context, req ImportRequest) (Image, error) {
	if !storage.ValidImageID(req.ID) {
		return Image{}, fmt.Errorf("%w: image id %q must match [a-z0-9][a-z0-9._-]{0,62}", ErrInvalid, req.ID)
	}
	if req.Source == "" {
		req.Source = store.ImageSourceImport
	}
	if req.Foreign {
		if err := ext4img.Check(ctx, req.Path); err != nil {
			return Image{}, fmt.Errorf("import image %s: %w: %w", req.ID, ErrInvalid, err)
		}
	}
	mjson, merr := c.readManifest(ctx, req.Path)
	if req.RequireManifest && mjson == "" {
		return Image{}, fmt.Errorf("import image %s: %w: %s", req.ID, ErrInvalid, merr)
	}
	if mjson != "" {
		if m, err := manifest.Parse([]byte(mjson)); err == nil && m.ID != req.ID {
			return Image{}, fmt.Errorf("import image %s: %w: its manifest names image %q", req.ID, ErrInvalid, m.ID)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.o.Volumes.CreateImage(ctx, req.ID, req.Path, req.SizeBytes); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return Image{}, fmt.Errorf("import image %s: %w (remove it first: atelier images rm %s)", req.ID, ErrExists, req.ID)
		}
		return Image{}, fmt.Errorf("import image %s: %w", req.ID, err)
	}
	vol, err := c.findVolume(ctx, req.ID)
	if err == nil {
		_, err = c.o.Store.PutImage(ctx, store.Image{ID: req.ID, Driver: vol.Driver, SizeBytes: vol.SizeBytes,
			UsedBytes: vol.UsedBytes, Manifest: mjson, ManifestError: merr, Source: req.Source}, false)
	}
	if err != nil {
		// The volume is ours (CreateImage refused an existing one): undo it,
		// even if the caller has given up.
		uctx := context.WithoutCancel(ctx)
		if derr := c.o.Volumes.DeleteImage(uctx, req.ID); derr != nil {
			err = fmt.Errorf("%w (removing the new volume failed too: %v)", err, derr)
		}
		_ = c.o.Store.DeleteImage(uctx, req.ID)
		return Image{}, fmt.Errorf("import image %s: %w", req.ID, err)
	}
	c.o.Log.Info("image imported", "image", req.ID, "driver", vol.Driver, "size_bytes", vol.SizeBytes, "source", req.Source)
	r, err := c.o.Store.GetImage(ctx, req.ID)
	if err != nil {
		return Image{}, err
	}
	users, pre, err := c.users(ctx)
	if err != nil {
		return Image{}, err
	}
	return toImage(r, users[req.ID], pre[req.ID]), nil
}

func (c *Catalog) findVolume(ctx context.Context, id string) (storage.Volume, error) {
	vols, err := c.o.Volumes.List(ctx)
	for _, v := range vols {
		if v.Kind == storage.KindImage && v.ID == id {
			return v, nil
		}
	}
	if err != nil {
		return storage.Volume{}, err
	}
	return storage.Volume{}, fmt.Errorf("image %s: not listed by the driver after its creation", id)
}
