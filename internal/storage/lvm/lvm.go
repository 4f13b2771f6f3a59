// Package lvm is the volume driver on an LVM thin pool: images, prebuilds
// and sandbox disks are thin volumes in sandbox-vg/thin-pool, and a clone is
// a thin snapshot (constant time, copy-on-write).
//
// Every command goes through a Runner as argv with absolute binaries. The
// driver keeps no state between calls: availability and pool fullness are
// read from lvs each time, so a pool set up after start is used at once and
// a filling pool is seen before it runs dry.
package lvm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"atelier/internal/revert"
	"atelier/internal/storage"
)

// Runner runs a host command as argv; storage.Exec is the real one.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

const (
	vg       = storage.VolumeGroup
	poolName = storage.ThinPool

	lvsBin      = "/usr/sbin/lvs"
	lvcreateBin = "/usr/sbin/lvcreate"
	lvremoveBin = "/usr/sbin/lvremove"
	lvextendBin = "/usr/sbin/lvextend"
	lvrenameBin = "/usr/sbin/lvrename"
)

// The lvs columns the driver reads; see report.go.
var lvsArgs = []string{"--reportformat", "json", "--units", "b", "--nosuffix",
	"-o", "lv_name,lv_size,data_percent,metadata_percent,origin,lv_attr", vg}

// Limits stop new volumes before the pool can run dry: a full thin pool
// I/O-errors every guest on it at once.
type Limits struct {
	// DataPercentMax refuses new volumes once the pool's data use reaches it.
	DataPercentMax float64
	// MetadataPercentMax does the same for the pool's metadata.
	MetadataPercentMax float64
	// OvercommitMax bounds the sum of the thin volumes' virtual sizes as a
	// multiple of the pool's size.
	OvercommitMax float64
}

// DefaultLimits are 90 % data, 80 % metadata and 10× overcommit.
func DefaultLimits() Limits {
	return Limits{DataPercentMax: 90, MetadataPercentMax: 80, OvercommitMax: 10}
}

// Config tunes a Driver; zero fields take the defaults.
type Config struct {
	Limits Limits
	// DevDir holds the LV device nodes, /dev; tests point it elsewhere.
	DevDir string
	Log    *slog.Logger
}

// Driver manages the volumes of sandbox-vg/thin-pool. It is safe for
// concurrent use on different volumes; the caller serialises operations on
// one volume.
type Driver struct {
	r      Runner
	limits Limits
	devDir string
	log    *slog.Logger
}

// New returns a driver that runs its commands through r.
func New(r Runner, c Config) *Driver {
	def := DefaultLimits()
	if c.Limits.DataPercentMax <= 0 {
		c.Limits.DataPercentMax = def.DataPercentMax
	}
	if c.Limits.MetadataPercentMax <= 0 {
		c.Limits.MetadataPercentMax = def.MetadataPercentMax
	}
	if c.Limits.OvercommitMax <= 0 {
		c.Limits.OvercommitMax = def.OvercommitMax
	}
	if c.DevDir == "" {
		c.DevDir = "/dev"
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return &Driver{r: r, limits: c.Limits, devDir: c.DevDir, log: c.Log.With("driver", storage.DriverLVM)}
}

func lvName(kind storage.Kind, id string) string { return storage.VolumeName(kind, id) }

func (d *Driver) devPath(name string) string { return filepath.Join(d.devDir, vg, name) }

// Path is the sandbox's block device, /dev/sandbox-vg/sandbox-{id}; "" for
// an invalid id.
func (d *Driver) Path(id string) string {
	if storage.CheckID(storage.KindSandbox, id) != nil {
		return ""
	}
	return d.devPath(lvName(storage.KindSandbox, id))
}

func (d *Driver) state(ctx context.Context) (state, error) {
	out, err := d.r.Run(ctx, lvsBin, lvsArgs...)
	if err != nil {
		if storage.StderrContains(err, "not found") {
			return state{}, fmt.Errorf("list volume group %s: %w: %v", vg, storage.ErrNotFound, err)
		}
		return state{}, fmt.Errorf("list volume group %s: %w", vg, err)
	}
	return parseReport(out)
}

// absent reports whether an lvremove failed only because there was nothing
// to remove.
func absent(err error) bool {
	return storage.StderrContains(err, "Failed to find logical volume") ||
		storage.StderrContains(err, fmt.Sprintf("Volume group %q not found", vg))
}

// remove deletes an LV; an absent one is success.
func (d *Driver) remove(ctx context.Context, name string) error {
	if _, err := d.r.Run(ctx, lvremoveBin, "-f", vg+"/"+name); err != nil && !absent(err) {
		return fmt.Errorf("remove %s/%s: %w", vg, name, err)
	}
	return nil
}

// undo reverts a failed operation and reports both errors. The undo steps
// use context.WithoutCancel: a cancelled caller must not leave half a volume.
func undo(r *revert.Reverter, err error) error {
	if uerr := r.Fail(); uerr != nil {
		return fmt.Errorf("%w (undo failed too: %v)", err, uerr)
	}
	return err
}

func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// guard refuses an operation that adds addVirtual bytes of thin volumes when
// the pool is past a limit, with the numbers in the message.
func (d *Driver) guard(st state, addVirtual int64) error {
	p := st.pool()
	if p == nil {
		return fmt.Errorf("thin pool %s/%s: %w", vg, poolName, storage.ErrNotFound)
	}
	if float64(p.DataPct) >= d.limits.DataPercentMax {
		return fmt.Errorf("%w: thin pool %s/%s data is %.2f%% used (limit %g%%); delete sandboxes or grow the pool",
			storage.ErrPoolFull, vg, poolName, float64(p.DataPct), d.limits.DataPercentMax)
	}
	if float64(p.MetaPct) >= d.limits.MetadataPercentMax {
		return fmt.Errorf("%w: thin pool %s/%s metadata is %.2f%% used (limit %g%%); delete sandboxes or grow the pool metadata",
			storage.ErrPoolFull, vg, poolName, float64(p.MetaPct), d.limits.MetadataPercentMax)
	}
	if p.sizeByte > 0 {
		virtual := st.virtual() + addVirtual
		if ratio := float64(virtual) / float64(p.sizeByte); ratio > d.limits.OvercommitMax {
			return fmt.Errorf("%w: thin volumes would total %s, %.2fx the %s pool (limit %gx)",
				storage.ErrPoolFull, gib(virtual), ratio, gib(p.sizeByte), d.limits.OvercommitMax)
		}
	}
	return nil
}

// Clone makes the sandbox's volume as a thin snapshot of the image. An
// existing volume is returned untouched.
func (d *Driver) Clone(ctx context.Context, image, id string) (string, error) {
	return d.CloneFrom(ctx, storage.Image(image), id)
}

// CloneFrom makes the sandbox's volume as a thin snapshot of src, an image
// or a workspace's prebuild. An existing volume is returned untouched.
func (d *Driver) CloneFrom(ctx context.Context, src storage.Source, id string) (string, error) {
	if err := storage.CheckID(storage.KindSandbox, id); err != nil {
		return "", fmt.Errorf("clone volume: %w", err)
	}
	if err := src.Validate(); err != nil {
		return "", fmt.Errorf("clone volume %s: %w", id, err)
	}
	name := lvName(storage.KindSandbox, id)
	st, err := d.state(ctx)
	if err != nil {
		return "", fmt.Errorf("clone volume %s: %w", id, err)
	}
	if st.find(name) != nil {
		return d.Path(id), nil
	}
	origin := st.find(src.Name())
	if origin == nil {
		return "", fmt.Errorf("clone volume %s: source %s/%s: %w", id, vg, src.Name(), storage.ErrNotFound)
	}
	if err := d.guard(st, origin.sizeByte); err != nil {
		return "", fmt.Errorf("clone volume %s: %w", id, err)
	}
	rev := revert.New()
	// lvcreate can fail after making the LV (activation, udev); nothing by
	// this name existed a moment ago, so whatever is there now is ours.
	rev.Add(func() error { return d.remove(context.WithoutCancel(ctx), name) })
	// -kn: thin snapshots are created with activation skip set, and a
	// skipped LV has no device node for the runtime to open.
	if _, err := d.r.Run(ctx, lvcreateBin, "-s", "-kn", "-n", name, vg+"/"+src.Name()); err != nil {
		return "", undo(rev, fmt.Errorf("clone volume %s from %s: %w", id, src.Name(), err))
	}
	rev.Success()
	d.log.Info("volume cloned", "sandbox_id", id, "source", src.Name())
	return d.Path(id), nil
}

// CreateImage makes image-{imageID}, a thin volume of at least sizeBytes
// (and of at least the source's size), and writes the ext4 file srcPath
// into it, skipping zero blocks so the image costs only its data.
func (d *Driver) CreateImage(ctx context.Context, imageID, srcPath string, sizeBytes int64) error {
	if err := storage.CheckID(storage.KindImage, imageID); err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	src, err := os.Open(srcPath)
	if err != nil {
		return fmt.Errorf("create image %s: %w", imageID, err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return fmt.Errorf("create image %s: %w", imageID, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("create image %s: %s is not a regular file", imageID, srcPath)
	}
	size := roundUp(max(sizeBytes, fi.Size()), 1<<20)
	name := lvName(storage.KindImage, imageID)
	st, err := d.state(ctx)
	if err != nil {
		return fmt.Errorf("create image %s: %w", imageID, err)
	}
	if st.find(name) != nil {
		return fmt.Errorf("create image %s: %s/%s: %w", imageID, vg, name, storage.ErrExists)
	}
	if err := d.guard(st, size); err != nil {
		return fmt.Errorf("create image %s: %w", imageID, err)
	}
	rev := revert.New()
	rev.Add(func() error { return d.remove(context.WithoutCancel(ctx), name) })
	if _, err := d.r.Run(ctx, lvcreateBin, "-V", fmt.Sprintf("%db", size), "-T", vg+"/"+poolName, "-n", name); err != nil {
		return undo(rev, fmt.Errorf("create image %s: %w", imageID, err))
	}
	if err := d.writeImage(ctx, d.devPath(name), src); err != nil {
		return undo(rev, fmt.Errorf("create image %s: %w", imageID, err))
	}
	rev.Success()
	d.log.Info("image created", "image", imageID, "size_bytes", size)
	return nil
}

// writeImage copies src onto the new thin volume. Unwritten blocks of a new
// thin volume read as zeros, so zero blocks are skipped rather than
// allocated.
func (d *Driver) writeImage(ctx context.Context, dev string, src *os.File) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	if _, err := storage.CopySparse(ctx, f, src, false); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", dev, err)
	}
	return nil
}

// Prebuild snapshots the sandbox's volume as the workspace's prebuild,
// replacing an older one only once the new one exists: the old one is
// renamed aside, and renamed back if the snapshot fails.
func (d *Driver) Prebuild(ctx context.Context, workspaceID, sandboxID string) error {
	if err := storage.CheckID(storage.KindPrebuild, workspaceID); err != nil {
		return fmt.Errorf("create prebuild: %w", err)
	}
	if err := storage.CheckID(storage.KindSandbox, sandboxID); err != nil {
		return fmt.Errorf("create prebuild %s: %w", workspaceID, err)
	}
	name := lvName(storage.KindPrebuild, workspaceID)
	aside := name + "-old"
	from := lvName(storage.KindSandbox, sandboxID)
	st, err := d.state(ctx)
	if err != nil {
		return fmt.Errorf("create prebuild %s: %w", workspaceID, err)
	}
	origin := st.find(from)
	if origin == nil {
		return fmt.Errorf("create prebuild %s: source %s/%s: %w", workspaceID, vg, from, storage.ErrNotFound)
	}
	if err := d.guard(st, origin.sizeByte); err != nil {
		return fmt.Errorf("create prebuild %s: %w", workspaceID, err)
	}
	bg := context.WithoutCancel(ctx)
	rev := revert.New()
	if st.find(aside) != nil {
		// Left by a run that died between rename and remove.
		if err := d.remove(ctx, aside); err != nil {
			return fmt.Errorf("create prebuild %s: %w", workspaceID, err)
		}
	}
	old := st.find(name) != nil
	if old {
		if _, err := d.r.Run(ctx, lvrenameBin, vg, name, aside); err != nil {
			return fmt.Errorf("create prebuild %s: set old prebuild aside: %w", workspaceID, err)
		}
		rev.Add(func() error {
			if _, err := d.r.Run(bg, lvrenameBin, vg, aside, name); err != nil {
				return fmt.Errorf("restore old prebuild: %w", err)
			}
			return nil
		})
	}
	rev.Add(func() error { return d.remove(bg, name) })
	if _, err := d.r.Run(ctx, lvcreateBin, "-s", "-kn", "-n", name, vg+"/"+from); err != nil {
		return undo(rev, fmt.Errorf("create prebuild %s from sandbox %s: %w", workspaceID, sandboxID, err))
	}
	rev.Success()
	if old {
		// The new prebuild is in place; a leftover is cleared by the next run.
		if err := d.remove(bg, aside); err != nil {
			d.log.Warn("old prebuild not removed", "workspace_id", workspaceID, "err", err)
		}
	}
	d.log.Info("prebuild created", "workspace_id", workspaceID, "sandbox_id", sandboxID)
	return nil
}

// DeletePrebuild removes the workspace's prebuild; an absent one is success.
func (d *Driver) DeletePrebuild(ctx context.Context, workspaceID string) error {
	if err := storage.CheckID(storage.KindPrebuild, workspaceID); err != nil {
		return fmt.Errorf("delete prebuild: %w", err)
	}
	if err := d.remove(ctx, lvName(storage.KindPrebuild, workspaceID)); err != nil {
		return fmt.Errorf("delete prebuild %s: %w", workspaceID, err)
	}
	return nil
}

// Resize grows the sandbox's volume to sizeBytes (rounded up to a 512-byte
// sector); the same size is a no-op and a smaller one an error. The guest's
// filesystem is grown by resize2fs inside the guest.
func (d *Driver) Resize(ctx context.Context, id string, sizeBytes int64) error {
	if err := storage.CheckID(storage.KindSandbox, id); err != nil {
		return fmt.Errorf("resize volume: %w", err)
	}
	if sizeBytes <= 0 {
		return fmt.Errorf("resize volume %s: size %d must be positive", id, sizeBytes)
	}
	size := roundUp(sizeBytes, 512)
	name := lvName(storage.KindSandbox, id)
	st, err := d.state(ctx)
	if err != nil {
		return fmt.Errorf("resize volume %s: %w", id, err)
	}
	cur := st.find(name)
	if cur == nil {
		return fmt.Errorf("resize volume %s: %w", id, storage.ErrNotFound)
	}
	switch {
	case size < cur.sizeByte:
		return fmt.Errorf("resize volume %s: shrinking from %d to %d bytes would destroy data; only growing is supported", id, cur.sizeByte, size)
	case size == cur.sizeByte:
		return nil
	}
	if err := d.guard(st, size-cur.sizeByte); err != nil {
		return fmt.Errorf("resize volume %s: %w", id, err)
	}
	if _, err := d.r.Run(ctx, lvextendBin, "-L", fmt.Sprintf("%db", size), vg+"/"+name); err != nil {
		return fmt.Errorf("resize volume %s: %w", id, err)
	}
	d.log.Info("volume resized", "sandbox_id", id, "size_bytes", size)
	return nil
}

// DeleteImage removes image-{imageID}; an absent one is success. The
// caller (the image catalog) refuses while sandboxes use the image: thin
// snapshots survive their origin, but the catalog would lose track of them.
func (d *Driver) DeleteImage(ctx context.Context, imageID string) error {
	if err := storage.CheckID(storage.KindImage, imageID); err != nil {
		return fmt.Errorf("delete image: %w", err)
	}
	if err := d.remove(ctx, lvName(storage.KindImage, imageID)); err != nil {
		return fmt.Errorf("delete image %s: %w", imageID, err)
	}
	d.log.Info("image deleted", "image", imageID)
	return nil
}

// Delete removes the sandbox's volume; an absent one is success.
func (d *Driver) Delete(ctx context.Context, id string) error {
	if err := storage.CheckID(storage.KindSandbox, id); err != nil {
		return fmt.Errorf("delete volume: %w", err)
	}
	if err := d.remove(ctx, lvName(storage.KindSandbox, id)); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	return nil
}

// List returns Atelier's volumes in the group, by name. LVs with other
// names (the pool, anything an operator made) are left out.
func (d *Driver) List(ctx context.Context) ([]storage.Volume, error) {
	st, err := d.state(ctx)
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	return d.volumes(st), nil
}

func (d *Driver) volumes(st state) []storage.Volume {
	var out []storage.Volume
	for _, r := range st.rows {
		kind, id, ok := storage.ParseName(r.Name)
		if !ok {
			continue
		}
		out = append(out, d.volumeOf(kind, id, r))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (d *Driver) volumeOf(kind storage.Kind, id string, r row) storage.Volume {
	return storage.Volume{
		Name:      r.Name,
		Kind:      kind,
		ID:        id,
		Path:      d.devPath(r.Name),
		SizeBytes: r.sizeByte,
		UsedBytes: int64(float64(r.DataPct) / 100 * float64(r.sizeByte)),
		Origin:    r.Origin,
		Driver:    storage.DriverLVM,
	}
}

// Stat returns one volume; storage.ErrNotFound when it does not exist.
func (d *Driver) Stat(ctx context.Context, kind storage.Kind, id string) (storage.Volume, error) {
	if err := storage.CheckID(kind, id); err != nil {
		return storage.Volume{}, fmt.Errorf("stat volume: %w", err)
	}
	name := lvName(kind, id)
	st, err := d.state(ctx)
	if err != nil {
		return storage.Volume{}, fmt.Errorf("stat volume %s: %w", name, err)
	}
	r := st.find(name)
	if r == nil {
		return storage.Volume{}, fmt.Errorf("stat volume %s/%s: %w", vg, name, storage.ErrNotFound)
	}
	return d.volumeOf(kind, id, *r), nil
}

// Usage reports the thin pool's fill and the number of Atelier volumes.
func (d *Driver) Usage(ctx context.Context) (storage.Usage, error) {
	st, err := d.state(ctx)
	if err != nil {
		return storage.Usage{}, fmt.Errorf("pool usage: %w", err)
	}
	p := st.pool()
	if p == nil {
		return storage.Usage{}, fmt.Errorf("pool usage: thin pool %s/%s: %w", vg, poolName, storage.ErrNotFound)
	}
	return storage.Usage{
		Driver:          storage.DriverLVM,
		TotalBytes:      p.sizeByte,
		UsedBytes:       int64(float64(p.DataPct) / 100 * float64(p.sizeByte)),
		VirtualBytes:    st.virtual(),
		DataPercent:     float64(p.DataPct),
		MetadataPercent: float64(p.MetaPct),
		Volumes:         len(d.volumes(st)),
	}, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
