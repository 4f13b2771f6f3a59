// Package mock is the mock-mode volume store: it computes the seed's
// overlay paths and tracks clones in memory, writing nothing.
package mock

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"sync"

	"atelier/internal/ids"
	"atelier/internal/storage"
)

// Operation names for FailNext.
const (
	OpClone    = "clone"
	OpDelete   = "delete"
	OpPrebuild = "prebuild"
	OpResize   = "resize"
)

var imageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Volume is one tracked clone.
type Volume struct {
	Image string
	Path  string
	// SizeBytes is the size the last Resize gave it; 0 until then.
	SizeBytes int64
}

// Volumes is an in-memory sandbox.Volumes, safe for concurrent use.
type Volumes struct {
	dir    string
	mu     sync.Mutex
	vols   map[string]Volume
	fail   map[string]error
	images map[string]int64
	// prebuilds maps a workspace to the sandbox its prebuild came from.
	prebuilds map[string]string
}

// New returns a volume store whose clones would live in dir (the seed's
// /var/lib/sandbox/overlays).
func New(dir string) *Volumes {
	return &Volumes{dir: dir, vols: map[string]Volume{}, fail: map[string]error{}}
}

// FailNext makes the next call of op return err.
func (v *Volumes) FailNext(op string, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.fail[op] = err
}

func (v *Volumes) takeFailure(op string) error {
	if err, ok := v.fail[op]; ok {
		delete(v.fail, op)
		return err
	}
	return nil
}

// SetImageSize declares an image and its size. Until an image is declared
// every image exists with an unknown size (0); after, only declared ones do.
func (v *Volumes) SetImageSize(image string, size int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.images == nil {
		v.images = map[string]int64{}
	}
	v.images[image] = size
}

// ImageSize returns the declared size of image; storage.ErrNotFound when
// images were declared and this one was not.
func (v *Volumes) ImageSize(_ context.Context, image string) (int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.images == nil {
		return 0, nil
	}
	n, ok := v.images[image]
	if !ok {
		return 0, fmt.Errorf("image %s: %w", image, storage.ErrNotFound)
	}
	return n, nil
}

// Path is where the sandbox's volume lives: <dir>/<id>.ext4.
func (v *Volumes) Path(id string) string { return filepath.Join(v.dir, id+".ext4") }

// Clone records the sandbox's volume; an existing one is returned as is.
func (v *Volumes) Clone(ctx context.Context, image, id string) (string, error) {
	// Both end up in a path: check them here, as a real driver must.
	if !ids.ValidSandboxID(id) {
		return "", fmt.Errorf("clone: invalid sandbox id %q", id)
	}
	if !imageRe.MatchString(image) {
		return "", fmt.Errorf("clone %s: invalid image %q", id, image)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("clone %s: %w", id, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.takeFailure(OpClone); err != nil {
		return "", fmt.Errorf("clone %s: %w", id, err)
	}
	if vol, ok := v.vols[id]; ok {
		return vol.Path, nil
	}
	vol := Volume{Image: image, Path: v.Path(id)}
	v.vols[id] = vol
	return vol.Path, nil
}

// Delete forgets the volume; an absent one is already gone.
func (v *Volumes) Delete(ctx context.Context, id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.takeFailure(OpDelete); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	delete(v.vols, id)
	return nil
}

// Volumes returns the tracked volumes by sandbox id.
func (v *Volumes) Volumes() map[string]Volume {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]Volume, len(v.vols))
	for id, vol := range v.vols {
		out[id] = vol
	}
	return out
}

// IDs lists the sandbox ids with a volume, sorted.
func (v *Volumes) IDs() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]string, 0, len(v.vols))
	for id := range v.vols {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Resize records the volume's new size; shrinking is refused, the same
// size is success, as for the real drivers.
func (v *Volumes) Resize(ctx context.Context, id string, sizeBytes int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.takeFailure(OpResize); err != nil {
		return fmt.Errorf("resize volume %s: %w", id, err)
	}
	vol, ok := v.vols[id]
	if !ok {
		return fmt.Errorf("resize volume %s: %w", id, storage.ErrNotFound)
	}
	if sizeBytes < vol.SizeBytes {
		return fmt.Errorf("resize volume %s: shrinking from %d to %d bytes would destroy data; only growing is supported", id, vol.SizeBytes, sizeBytes)
	}
	vol.SizeBytes = sizeBytes
	v.vols[id] = vol
	return nil
}

// Prebuild records the sandbox's volume as the workspace's prebuild.
func (v *Volumes) Prebuild(ctx context.Context, workspaceID, sandboxID string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.takeFailure(OpPrebuild); err != nil {
		return fmt.Errorf("prebuild %s: %w", workspaceID, err)
	}
	if _, ok := v.vols[sandboxID]; !ok {
		return fmt.Errorf("prebuild %s: volume of %s: %w", workspaceID, sandboxID, storage.ErrNotFound)
	}
	if v.prebuilds == nil {
		v.prebuilds = map[string]string{}
	}
	v.prebuilds[workspaceID] = sandboxID
	return nil
}

// DeletePrebuild forgets the workspace's prebuild.
func (v *Volumes) DeletePrebuild(ctx context.Context, workspaceID string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.prebuilds, workspaceID)
	return nil
}

// CloneFromPrebuild records a volume cloned from the workspace's prebuild
// (Image "prebuild-{workspaceId}").
func (v *Volumes) CloneFromPrebuild(ctx context.Context, workspaceID, id string) (string, string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.prebuilds[workspaceID]; !ok {
		return "", "", fmt.Errorf("clone %s: prebuild of %s: %w", id, workspaceID, storage.ErrNotFound)
	}
	if vol, ok := v.vols[id]; ok {
		return vol.Path, "", nil
	}
	vol := Volume{Image: storage.VolumeName(storage.KindPrebuild, workspaceID), Path: v.Path(id)}
	v.vols[id] = vol
	return vol.Path, "", nil
}

// Prebuilds returns workspace id -> the sandbox its prebuild was saved from.
func (v *Volumes) Prebuilds() map[string]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string]string{}
	for k, s := range v.prebuilds {
		out[k] = s
	}
	return out
}
