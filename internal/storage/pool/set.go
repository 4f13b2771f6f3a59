package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"atelier/internal/config"
	"atelier/internal/storage"
	"atelier/internal/storage/file"
	"atelier/internal/storage/lvm"
)

// ErrUnavailable is returned for a volume on a driver whose pool is not
// present on the host now (a thin pool not activated, an XFS pool not
// mounted).
var ErrUnavailable = errors.New("volume driver not available")

// Set is the volume store the manager runs on. New sandbox volumes go to one
// driver, chosen once when the manager starts (Open's choice); a sandbox's
// existing volume stays on the driver that made it, which the lifecycle
// records in the sandbox's row. Every driver whose pool is present belongs
// to the set, so a change of setup.storage.method, or of what the host
// offers, between restarts leaves no volume invisible: listing and deleting
// cover both drivers.
type Set struct {
	primary string
	log     *slog.Logger
	// probes open a driver when its pool is present on the host.
	probes map[string]func(ctx context.Context) (Volumes, bool)

	mu   sync.Mutex
	open map[string]Volumes
	// missed is when a probe last found a driver's pool absent: listing and
	// deleting probe again only after reprobeEvery (a probe may run lvs).
	missed map[string]time.Time
}

// reprobeEvery bounds how often listing and deleting look for a pool that
// was absent; a start of a sandbox whose volume is there always looks.
const reprobeEvery = time.Minute

// OpenSet opens the driver storage.Detect picks for new volumes, and every
// other driver whose pool is present. Drivers whose pool appears later are
// opened when a call needs them.
func OpenSet(ctx context.Context, cfg *config.Config, r Runner, log *slog.Logger) (*Set, storage.Choice, error) {
	if log == nil {
		log = slog.Default()
	}
	primary, choice, err := Open(ctx, cfg, r, log)
	if err != nil {
		return nil, choice, err
	}
	stateDir := cfg.Sandbox.StateDir
	s := &Set{
		primary: choice.Driver,
		log:     log,
		open:    map[string]Volumes{choice.Driver: primary},
		missed:  map[string]time.Time{},
		probes: map[string]func(context.Context) (Volumes, bool){
			storage.DriverLVM: func(ctx context.Context) (Volumes, bool) {
				if !storage.ThinPoolExists(ctx, r) {
					return nil, false
				}
				return lvm.New(r, lvm.Config{Log: log}), true
			},
			// A file pool is its overlays directory; when the XFS pool is not
			// mounted, its link dangles and Stat fails.
			storage.DriverFile: func(context.Context) (Volumes, bool) {
				fi, err := os.Stat(filepath.Join(stateDir, file.OverlaysDir))
				if err != nil || !fi.IsDir() {
					return nil, false
				}
				return file.New(file.Config{StateDir: stateDir, Log: log}), true
			},
		},
	}
	s.probeAll(ctx)
	return s, choice, nil
}

// Driver is the driver new volumes go to.
func (s *Set) Driver() string { return s.primary }

// Drivers lists the drivers open now, the one for new volumes first.
func (s *Set) Drivers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.namesLocked()
}

func (s *Set) namesLocked() []string {
	out := []string{s.primary}
	for _, name := range []string{storage.DriverLVM, storage.DriverFile} {
		if _, ok := s.open[name]; ok && name != s.primary {
			out = append(out, name)
		}
	}
	return out
}

// probeAll opens every driver whose pool has appeared, and returns the open
// drivers in Drivers order.
func (s *Set) probeAll(ctx context.Context) []Volumes {
	for _, name := range []string{storage.DriverLVM, storage.DriverFile} {
		s.mu.Lock()
		recent := time.Since(s.missed[name]) < reprobeEvery
		s.mu.Unlock()
		if !recent {
			s.driver(ctx, name)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Volumes
	for _, name := range s.namesLocked() {
		out = append(out, s.open[name])
	}
	return out
}

// driver returns the named driver, opening it when its pool is present.
func (s *Set) driver(ctx context.Context, name string) (Volumes, bool) {
	s.mu.Lock()
	d, ok := s.open[name]
	s.mu.Unlock()
	if ok {
		return d, true
	}
	probe := s.probes[name]
	if probe == nil {
		return nil, false
	}
	d, ok = probe(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		s.missed[name] = time.Now()
		return nil, false
	}
	if have, ok := s.open[name]; ok {
		return have, true
	}
	s.open[name] = d
	s.log.Info("storage driver opened for existing volumes", "driver", name, "new_volumes", s.primary)
	return d, true
}

// Clone returns the sandbox's volume wherever it is, or makes it on the
// driver for new volumes.
func (s *Set) Clone(ctx context.Context, image, id string) (string, error) {
	path, _, err := s.CloneOn(ctx, "", image, id)
	return path, err
}

// CloneOn returns the sandbox's volume on driver, making it from image when
// it does not exist yet, and says which driver holds it. An empty driver (a
// sandbox recorded before drivers were) means wherever the volume is, else
// the driver for new volumes. A named driver whose pool is absent is
// ErrUnavailable: making a fresh volume elsewhere would hide the user's
// disk behind an empty one.
func (s *Set) CloneOn(ctx context.Context, driver, image, id string) (path, used string, err error) {
	if driver == "" {
		for _, d := range s.probeAll(ctx) {
			v, err := d.Stat(ctx, storage.KindSandbox, id)
			if err == nil {
				return v.Path, v.Driver, nil
			}
			if !errors.Is(err, storage.ErrNotFound) {
				return "", "", fmt.Errorf("clone volume %s: %w", id, err)
			}
		}
		driver = s.primary
	}
	d, ok := s.driver(ctx, driver)
	if !ok {
		return "", "", fmt.Errorf("clone volume %s: its volume is on the %s driver, whose pool is not present on this host (run atelier storage setup): %w",
			id, driver, ErrUnavailable)
	}
	path, err = d.Clone(ctx, image, id)
	if err != nil {
		return "", "", err
	}
	return path, driver, nil
}

// Delete removes the sandbox's volume from every driver present; an absent
// volume is success. A volume on a driver whose pool is absent now is left
// for the reconciler, which lists every driver once its pool is back.
func (s *Set) Delete(ctx context.Context, id string) error {
	var errs []error
	for _, d := range s.probeAll(ctx) {
		errs = append(errs, d.Delete(ctx, id))
	}
	return errors.Join(errs...)
}

// ImageSize is the virtual size of the image on the driver for new
// volumes: the size of every sandbox volume cloned from it.
// storage.ErrNotFound when the image does not exist.
func (s *Set) ImageSize(ctx context.Context, image string) (int64, error) {
	d, _ := s.driver(ctx, s.primary)
	v, err := d.Stat(ctx, storage.KindImage, image)
	if err != nil {
		return 0, err
	}
	return v.SizeBytes, nil
}

// List returns the volumes of every driver present, each naming its
// driver. A driver that fails to list is reported, and the others' volumes
// are still returned.
func (s *Set) List(ctx context.Context) ([]storage.Volume, error) {
	var (
		out  []storage.Volume
		errs []error
	)
	for _, d := range s.probeAll(ctx) {
		vs, err := d.List(ctx)
		errs = append(errs, err)
		out = append(out, vs...)
	}
	slices.SortFunc(out, func(a, b storage.Volume) int {
		if a.Name != b.Name {
			if a.Name < b.Name {
				return -1
			}
			return 1
		}
		if a.Driver < b.Driver {
			return -1
		}
		if a.Driver > b.Driver {
			return 1
		}
		return 0
	})
	return out, errors.Join(errs...)
}

// Prebuild saves the sandbox's disk as the workspace's prebuild on the
// driver holding the disk (a thin snapshot or a reflink there).
func (s *Set) Prebuild(ctx context.Context, workspaceID, sandboxID string) error {
	for _, d := range s.probeAll(ctx) {
		if _, err := d.Stat(ctx, storage.KindSandbox, sandboxID); err == nil {
			return d.Prebuild(ctx, workspaceID, sandboxID)
		}
	}
	return fmt.Errorf("prebuild %s: volume of sandbox %s: %w", workspaceID, sandboxID, storage.ErrNotFound)
}

// Resize grows the sandbox's volume on the driver holding it.
func (s *Set) Resize(ctx context.Context, id string, sizeBytes int64) error {
	for _, d := range s.probeAll(ctx) {
		if _, err := d.Stat(ctx, storage.KindSandbox, id); err == nil {
			return d.Resize(ctx, id, sizeBytes)
		}
	}
	return fmt.Errorf("resize volume %s: %w", id, storage.ErrNotFound)
}

// DeletePrebuild removes the workspace's prebuild from every driver present.
func (s *Set) DeletePrebuild(ctx context.Context, workspaceID string) error {
	var errs []error
	for _, d := range s.probeAll(ctx) {
		errs = append(errs, d.DeletePrebuild(ctx, workspaceID))
	}
	return errors.Join(errs...)
}

// CloneFromPrebuild makes the sandbox's volume from the workspace's
// prebuild, on the driver that holds the prebuild.
func (s *Set) CloneFromPrebuild(ctx context.Context, workspaceID, id string) (path, used string, err error) {
	for _, d := range s.probeAll(ctx) {
		v, err := d.Stat(ctx, storage.KindPrebuild, workspaceID)
		if err != nil {
			continue
		}
		path, err := d.CloneFrom(ctx, storage.Prebuild(workspaceID), id)
		return path, v.Driver, err
	}
	return "", "", fmt.Errorf("clone volume %s: prebuild of workspace %s: %w", id, workspaceID, storage.ErrNotFound)
}

// Usage reports the pool of every driver present, the one for new volumes
// first (the System page's storage card). A driver that fails to report is
// named in the error, and the others' pools are still returned.
func (s *Set) Usage(ctx context.Context) ([]storage.Usage, error) {
	var (
		out  []storage.Usage
		errs []error
	)
	for _, d := range s.probeAll(ctx) {
		u, err := d.Usage(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, u)
	}
	return out, errors.Join(errs...)
}

// CreateImage makes the image on the driver for new volumes, where new
// sandboxes clone from.
func (s *Set) CreateImage(ctx context.Context, imageID, srcPath string, sizeBytes int64) error {
	d, ok := s.driver(ctx, s.primary)
	if !ok {
		return fmt.Errorf("create image %s: the %s driver's pool is not present: %w", imageID, s.primary, ErrUnavailable)
	}
	return d.CreateImage(ctx, imageID, srcPath, sizeBytes)
}

// DeleteImage removes the image from every driver present; an absent image
// is success.
func (s *Set) DeleteImage(ctx context.Context, imageID string) error {
	var errs []error
	for _, d := range s.probeAll(ctx) {
		errs = append(errs, d.DeleteImage(ctx, imageID))
	}
	return errors.Join(errs...)
}
