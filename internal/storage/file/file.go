// Package file is the volume driver on a plain filesystem: every volume is
// an ext4 image file, and a clone is a reflink (FICLONE) when the
// filesystem shares extents (XFS with reflink=1, btrfs), else a sparse copy.
//
// Layout under the state dir, the seed's overlay path included:
//
//	images/<imageId>.ext4        base images (templates, never written by guests)
//	prebuilds/<workspaceId>.ext4 per-workspace snapshots
//	overlays/<sandboxId>.ext4    sandbox disks
//
// Reflink needs the three on one filesystem. storage/pool mounts an XFS pool
// at <stateDir>/pool and points the three names at it with symlinks.
//
// Every volume is written under a temporary name in its final directory and
// renamed into place, so a crash never leaves a half-written disk under a
// name a runtime would boot.
package file

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"atelier/internal/revert"
	"atelier/internal/storage"
)

// Directory names under the state dir.
const (
	ImagesDir    = "images"
	PrebuildsDir = "prebuilds"
	OverlaysDir  = "overlays"
)

const (
	ext = ".ext4"
	// originXattr records what a volume was cloned from; reflinks keep no
	// such link themselves. Best effort: a filesystem without user xattrs
	// just leaves Volume.Origin empty.
	originXattr = "user.atelier.origin"
)

// Config tunes a Driver; zero fields take the defaults.
type Config struct {
	// StateDir is sandbox.stateDir, /var/lib/sandbox by default.
	StateDir string
	// MinFreePercent refuses new volumes once the filesystem has less free
	// space than this share (default 10): sparse disks are overcommitted
	// by nature, and a full filesystem fails every guest's writes.
	MinFreePercent float64
	Log            *slog.Logger
}

// Stats counts how clones were made since the driver started.
type Stats struct {
	Reflinks int64 `json:"reflinks"`
	Copies   int64 `json:"copies"`
}

// Driver manages the volume files under a state dir. It is safe for
// concurrent use; the caller serialises operations on one volume.
type Driver struct {
	root     string
	minFree  float64
	log      *slog.Logger
	reflinks atomic.Int64
	copies   atomic.Int64
}

// New returns a driver rooted at c.StateDir.
func New(c Config) *Driver {
	if c.StateDir == "" {
		c.StateDir = "/var/lib/sandbox"
	}
	if c.MinFreePercent <= 0 {
		c.MinFreePercent = 10
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return &Driver{root: c.StateDir, minFree: c.MinFreePercent, log: c.Log.With("driver", storage.DriverFile)}
}

// Stats returns the reflink and copy counts.
func (d *Driver) Stats() Stats {
	return Stats{Reflinks: d.reflinks.Load(), Copies: d.copies.Load()}
}

func dirOf(kind storage.Kind) string {
	switch kind {
	case storage.KindImage:
		return ImagesDir
	case storage.KindPrebuild:
		return PrebuildsDir
	default:
		return OverlaysDir
	}
}

// volPath is the file of a validated volume.
func (d *Driver) volPath(kind storage.Kind, id string) string {
	return filepath.Join(d.root, dirOf(kind), id+ext)
}

// Path is the sandbox's disk, <stateDir>/overlays/<id>.ext4; "" for an
// invalid id.
func (d *Driver) Path(id string) string {
	if storage.CheckID(storage.KindSandbox, id) != nil {
		return ""
	}
	return d.volPath(storage.KindSandbox, id)
}

// Clone makes the sandbox's disk from the image. An existing disk is
// returned untouched.
func (d *Driver) Clone(ctx context.Context, image, id string) (string, error) {
	return d.CloneFrom(ctx, storage.Image(image), id)
}

// CloneFrom makes the sandbox's disk from src, an image or a workspace's
// prebuild. An existing disk is returned untouched.
func (d *Driver) CloneFrom(ctx context.Context, src storage.Source, id string) (string, error) {
	if err := storage.CheckID(storage.KindSandbox, id); err != nil {
		return "", fmt.Errorf("clone volume: %w", err)
	}
	if err := src.Validate(); err != nil {
		return "", fmt.Errorf("clone volume %s: %w", id, err)
	}
	dst := d.volPath(storage.KindSandbox, id)
	if _, err := os.Lstat(dst); err == nil {
		return dst, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("clone volume %s: %w", id, err)
	}
	log := d.log.With("sandbox_id", id)
	err := d.cloneFile(ctx, log, d.volPath(src.Kind, src.ID), dst, false, 0, src.Name())
	if errors.Is(err, os.ErrExist) {
		// A concurrent clone of the same sandbox won the rename; its disk
		// is as good as ours would have been.
		return dst, nil
	}
	if err != nil {
		return "", fmt.Errorf("clone volume %s from %s: %w", id, src.Name(), err)
	}
	log.Info("volume cloned", "source", src.Name(), "path", dst)
	return dst, nil
}

// CreateImage imports the ext4 file srcPath as image imageID, grown to
// sizeBytes when that is larger. It reflinks when srcPath is on the same
// filesystem, else copies sparsely.
func (d *Driver) CreateImage(ctx context.Context, imageID, srcPath string, sizeBytes int64) error {
	if err := storage.CheckID(storage.KindImage, imageID); err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	dst := d.volPath(storage.KindImage, imageID)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("create image %s: %s: %w", imageID, dst, storage.ErrExists)
	}
	err := d.cloneFile(ctx, d.log.With("image", imageID), srcPath, dst, false, sizeBytes, "")
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create image %s: %s: %w", imageID, dst, storage.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create image %s: %w", imageID, err)
	}
	d.log.Info("image created", "image", imageID, "path", dst)
	return nil
}

// Prebuild snapshots the sandbox's disk as the workspace's prebuild. The
// new prebuild replaces the old one by rename, so there is always one whole
// prebuild. The sandbox should be stopped (or paused and synced) first, as
// with any block-level snapshot.
func (d *Driver) Prebuild(ctx context.Context, workspaceID, sandboxID string) error {
	if err := storage.CheckID(storage.KindPrebuild, workspaceID); err != nil {
		return fmt.Errorf("create prebuild: %w", err)
	}
	if err := storage.CheckID(storage.KindSandbox, sandboxID); err != nil {
		return fmt.Errorf("create prebuild %s: %w", workspaceID, err)
	}
	log := d.log.With("workspace_id", workspaceID, "sandbox_id", sandboxID)
	src := d.volPath(storage.KindSandbox, sandboxID)
	dst := d.volPath(storage.KindPrebuild, workspaceID)
	if err := d.cloneFile(ctx, log, src, dst, true, 0, storage.VolumeName(storage.KindSandbox, sandboxID)); err != nil {
		return fmt.Errorf("create prebuild %s from sandbox %s: %w", workspaceID, sandboxID, err)
	}
	log.Info("prebuild created", "path", dst)
	return nil
}

// DeletePrebuild removes the workspace's prebuild; an absent one is success.
func (d *Driver) DeletePrebuild(ctx context.Context, workspaceID string) error {
	if err := storage.CheckID(storage.KindPrebuild, workspaceID); err != nil {
		return fmt.Errorf("delete prebuild: %w", err)
	}
	if err := d.remove(d.volPath(storage.KindPrebuild, workspaceID)); err != nil {
		return fmt.Errorf("delete prebuild %s: %w", workspaceID, err)
	}
	return nil
}

// DeleteImage removes images/<imageID>.ext4 and any temporary file a
// crashed import left for it; an absent image is success. Clones are
// reflinks or copies, so sandboxes keep their disks either way; the image
// catalog refuses while sandboxes use the image all the same.
func (d *Driver) DeleteImage(ctx context.Context, imageID string) error {
	if err := storage.CheckID(storage.KindImage, imageID); err != nil {
		return fmt.Errorf("delete image: %w", err)
	}
	if err := d.remove(d.volPath(storage.KindImage, imageID)); err != nil {
		return fmt.Errorf("delete image %s: %w", imageID, err)
	}
	d.log.Info("image deleted", "image", imageID)
	return nil
}

// Delete removes the sandbox's disk; an absent one is success.
func (d *Driver) Delete(ctx context.Context, id string) error {
	if err := storage.CheckID(storage.KindSandbox, id); err != nil {
		return fmt.Errorf("delete volume: %w", err)
	}
	if err := d.remove(d.volPath(storage.KindSandbox, id)); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	return nil
}

// remove deletes a volume file and any temporary file a crashed clone left
// for it. Absent files are success.
func (d *Driver) remove(path string) error {
	var errs []error
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// The pattern is built from a validated id, so it matches only this
	// volume's leftovers.
	left, _ := filepath.Glob(tempPattern(path))
	for _, p := range left {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// tempName is the CreateTemp pattern for a volume's temporary file: hidden,
// so List skips it, and tied to the volume so Delete can clear it.
func tempName(dst string) string { return "." + filepath.Base(dst) + ".*.tmp" }

func tempPattern(dst string) string { return filepath.Join(filepath.Dir(dst), tempName(dst)) }

// Resize grows the sandbox's disk file to sizeBytes; the same size is a
// no-op and a smaller one an error. The file grows sparsely; the guest
// grows its ext4 with resize2fs on next boot.
func (d *Driver) Resize(ctx context.Context, id string, sizeBytes int64) error {
	if err := storage.CheckID(storage.KindSandbox, id); err != nil {
		return fmt.Errorf("resize volume: %w", err)
	}
	path := d.volPath(storage.KindSandbox, id)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("resize volume %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("resize volume %s: %w", id, err)
	}
	switch {
	case sizeBytes < fi.Size():
		return fmt.Errorf("resize volume %s: shrinking from %d to %d bytes would destroy data; only growing is supported", id, fi.Size(), sizeBytes)
	case sizeBytes == fi.Size():
		return nil
	}
	if err := os.Truncate(path, sizeBytes); err != nil {
		return fmt.Errorf("resize volume %s: %w", id, err)
	}
	d.log.Info("volume resized", "sandbox_id", id, "size_bytes", sizeBytes)
	return nil
}

// cloneFile makes dst a copy-on-write copy of src: FICLONE into a temporary
// file beside dst, else a sparse copy, then a rename. Without replace the
// rename refuses an existing dst and cloneFile returns an error wrapping
// os.ErrExist. minSize grows the result.
func (d *Driver) cloneFile(ctx context.Context, log *slog.Logger, src, dst string, replace bool, minSize int64, origin string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	in, err := os.Open(src)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("source %s: %w", src, storage.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("stat source: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("source %s is not a regular file", src)
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", dir, err)
	}
	if err := d.guard(dir); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, tempName(dst))
	if err != nil {
		return fmt.Errorf("create temporary volume: %w", err)
	}
	rev := revert.New()
	defer rev.Fail()
	rev.Add(func() error {
		tmp.Close()
		return os.Remove(tmp.Name())
	})

	reflinked := true
	if err := unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())); err != nil {
		if !reflinkUnsupported(err) {
			return fmt.Errorf("reflink %s: %w", src, err)
		}
		reflinked = false
		log.Warn("filesystem cannot reflink; copying the volume instead (slower, uses space)",
			"source", src, "dir", dir, "err", err)
		if _, err := storage.CopySparse(ctx, tmp, in, true); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if minSize > fi.Size() {
		if err := tmp.Truncate(minSize); err != nil {
			return fmt.Errorf("grow volume: %w", err)
		}
	}
	if origin != "" {
		_ = unix.Fsetxattr(int(tmp.Fd()), originXattr, []byte(origin), 0)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync volume: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close volume: %w", err)
	}
	if err := rename(tmp.Name(), dst, replace); err != nil {
		return err
	}
	rev.Success()
	syncDir(dir)
	if reflinked {
		d.reflinks.Add(1)
	} else {
		d.copies.Add(1)
	}
	return nil
}

// reflinkUnsupported reports the errors of a filesystem (or a pair of
// them) that cannot share extents, as opposed to a failing one.
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

func rename(from, to string, replace bool) error {
	if replace {
		if err := os.Rename(from, to); err != nil {
			return fmt.Errorf("put volume in place: %w", err)
		}
		return nil
	}
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here: a hard link also refuses to replace.
		if err = os.Link(from, to); err == nil {
			return os.Remove(from)
		}
	}
	if errors.Is(err, unix.EEXIST) || errors.Is(err, os.ErrExist) {
		return fmt.Errorf("put volume in place: %s: %w", to, os.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("put volume in place: %w", err)
	}
	return nil
}

// syncDir makes a rename durable; failure only weakens crash safety.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}

// guard refuses a new volume when the filesystem holding dir is nearly full.
func (d *Driver) guard(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Blocks == 0 {
		return nil
	}
	free := float64(st.Bavail) / float64(st.Blocks) * 100
	if free < d.minFree {
		return fmt.Errorf("%w: %s has %.2f%% free (%d of %d MiB), limit: keep %g%% free",
			storage.ErrPoolFull, dir, free, st.Bavail*uint64(st.Bsize)>>20, st.Blocks*uint64(st.Bsize)>>20, d.minFree)
	}
	return nil
}

// List returns the volume files, by name. Temporary and foreign files are
// left out.
func (d *Driver) List(ctx context.Context) ([]storage.Volume, error) {
	var out []storage.Volume
	for _, kind := range []storage.Kind{storage.KindImage, storage.KindPrebuild, storage.KindSandbox} {
		dir := filepath.Join(d.root, dirOf(kind))
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list volumes: %w", err)
		}
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ext)
			if !ok || storage.CheckID(kind, id) != nil {
				continue
			}
			path := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // deleted while listing
				}
				return nil, fmt.Errorf("list volumes: stat %s: %w", path, err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				continue
			}
			out = append(out, volumeOf(kind, id, path, &st))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func volumeOf(kind storage.Kind, id, path string, st *unix.Stat_t) storage.Volume {
	return storage.Volume{
		Name:      storage.VolumeName(kind, id),
		Kind:      kind,
		ID:        id,
		Path:      path,
		SizeBytes: st.Size,
		UsedBytes: st.Blocks * 512,
		Origin:    readOrigin(path),
		Driver:    storage.DriverFile,
	}
}

// Stat returns one volume; storage.ErrNotFound when it does not exist.
func (d *Driver) Stat(ctx context.Context, kind storage.Kind, id string) (storage.Volume, error) {
	if err := storage.CheckID(kind, id); err != nil {
		return storage.Volume{}, fmt.Errorf("stat volume: %w", err)
	}
	path := d.volPath(kind, id)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return storage.Volume{}, fmt.Errorf("stat volume %s: %w", storage.VolumeName(kind, id), storage.ErrNotFound)
		}
		return storage.Volume{}, fmt.Errorf("stat volume %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return storage.Volume{}, fmt.Errorf("stat volume %s: not a regular file", path)
	}
	return volumeOf(kind, id, path, &st), nil
}

func readOrigin(path string) string {
	buf := make([]byte, 128)
	n, err := unix.Getxattr(path, originXattr, buf)
	if err != nil || n <= 0 {
		return ""
	}
	return string(buf[:n])
}

// Usage reports the filesystem holding the sandbox disks: bytes from
// statfs, metadata as the share of inodes used.
func (d *Driver) Usage(ctx context.Context) (storage.Usage, error) {
	vols, err := d.List(ctx)
	if err != nil {
		return storage.Usage{}, fmt.Errorf("pool usage: %w", err)
	}
	dir := filepath.Join(d.root, OverlaysDir)
	if _, err := os.Stat(dir); err != nil {
		dir = d.root
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return storage.Usage{}, fmt.Errorf("pool usage: statfs %s: %w", dir, err)
	}
	u := storage.Usage{
		Driver:     storage.DriverFile,
		TotalBytes: int64(st.Blocks) * st.Bsize,
		UsedBytes:  int64(st.Blocks-st.Bfree) * st.Bsize,
		Volumes:    len(vols),
	}
	for _, v := range vols {
		u.VirtualBytes += v.SizeBytes
	}
	if u.TotalBytes > 0 {
		u.DataPercent = float64(u.UsedBytes) / float64(u.TotalBytes) * 100
	}
	if st.Files > 0 {
		u.MetadataPercent = float64(st.Files-st.Ffree) / float64(st.Files) * 100
	}
	return u, nil
}

// ReflinkSupported reports whether files in dir can be reflinked, by
// cloning a small temporary file.
func ReflinkSupported(dir string) (bool, error) {
	a, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	b, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	if _, err := a.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	err = unix.IoctlFileClone(int(b.Fd()), int(a.Fd()))
	if err == nil {
		return true, nil
	}
	if reflinkUnsupported(err) {
		return false, nil
	}
	return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
}
