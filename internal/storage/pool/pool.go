// Package pool prepares the host for Atelier's volumes (`atelier storage
// setup`), reports on them (`status`) and removes them (`teardown`).
//
// Methods (setup.storage.method):
//
//   - loop: a sparse file <stateDir>/thin-pool.img of loopSizeGb on a loop
//     device; device: a whole block device (refused when mounted or under
//     10 GiB). On either, when device-mapper has the thin-pool target, a
//     thin pool sandbox-vg/thin-pool (pvcreate, vgcreate, lvcreate -l 90%FREE
//     -T) for the lvm driver; otherwise an XFS filesystem with reflink=1
//     mounted at <stateDir>/pool for the file driver, with
//     <stateDir>/{images,prebuilds,overlays} as symlinks to
//     pool/{images,prebuilds,overlays}. The seed's sandbox disk path
//     /var/lib/sandbox/overlays/<id>.ext4 keeps working, and every volume is
//     on the one filesystem that reflinks need. When the pool is not mounted
//     the symlinks dangle, so a clone fails loudly instead of filling the
//     host's disk.
//   - lvm: an existing thin pool made by the operator; setup only checks it.
//   - file: no pool; the three directories are made on whatever holds the
//     state dir (clones are copies unless it reflinks).
//
// Setup is idempotent: it reuses the backing file, finds the loop device by
// that file (never a remembered /dev/loopN), reuses a filesystem or volume
// group already there, and only reports status when all is in place. That
// makes it the boot step too: after a reboot it re-attaches the loop file,
// activates the volume group or mounts the pool. A failed setup undoes the
// steps it took.
package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"atelier/internal/config"
	"atelier/internal/revert"
	"atelier/internal/storage"
	"atelier/internal/storage/file"
	"atelier/internal/storage/lvm"
)

// Runner runs a host command as argv; storage.Exec is the real one.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

const (
	losetupBin  = "/usr/sbin/losetup"
	blkidBin    = "/usr/sbin/blkid"
	mkfsXFSBin  = "/usr/sbin/mkfs.xfs"
	pvcreateBin = "/usr/sbin/pvcreate"
	pvremoveBin = "/usr/sbin/pvremove"
	vgcreateBin = "/usr/sbin/vgcreate"
	vgremoveBin = "/usr/sbin/vgremove"
	vgchangeBin = "/usr/sbin/vgchange"
	vgsBin      = "/usr/sbin/vgs"
	lvcreateBin = "/usr/sbin/lvcreate"
	lvremoveBin = "/usr/sbin/lvremove"
)

const (
	// BackingFile is the loop method's pool file under the state dir.
	BackingFile = "thin-pool.img"
	// PoolDir is where the file driver's XFS pool is mounted, under the state dir.
	PoolDir = "pool"
	// MinSizeBytes is the smallest pool setup accepts, as in the reference.
	MinSizeBytes = 10 << 30

	vg       = storage.VolumeGroup
	thinPool = vg + "/" + storage.ThinPool
)

// volumeDirs are the file driver's directories, linked into the pool.
var volumeDirs = []string{file.ImagesDir, file.PrebuildsDir, file.OverlaysDir}

// Report is what setup found or made, and the pool's state.
type Report struct {
	Method string `json:"method"`
	Driver string `json:"driver"`
	// Ready is true when the driver can make volumes.
	Ready bool `json:"ready"`
	// Changed is true when this run changed the host.
	Changed     bool          `json:"changed"`
	BackingFile string        `json:"backingFile,omitempty"`
	Device      string        `json:"device,omitempty"`
	MountPoint  string        `json:"mountPoint,omitempty"`
	VolumeDir   string        `json:"volumeDir,omitempty"`
	Reflink     bool          `json:"reflink"`
	Usage       storage.Usage `json:"usage"`
	Notes       []string      `json:"notes,omitempty"`
}

// host carries what one setup, status or teardown needs; tests replace the
// device-mapper probe.
type host struct {
	r        Runner
	stateDir string
	st       config.SetupStorage
	dmWorks  func(ctx context.Context) bool
	log      *slog.Logger
}

func newHost(cfg *config.Config, r Runner) *host {
	return &host{
		r:        r,
		stateDir: cfg.Sandbox.StateDir,
		st:       cfg.Setup.Storage,
		dmWorks: func(ctx context.Context) bool {
			return storage.DeviceMapperWorks(ctx, r, "/dev/mapper/control")
		},
		log: slog.Default().With("component", "storage-setup"),
	}
}

// Setup prepares the pool named by cfg.Setup.Storage. Root only.
func Setup(ctx context.Context, cfg *config.Config, r Runner) (Report, error) {
	return newHost(cfg, r).setup(ctx)
}

// Status reports the pool without changing anything.
func Status(ctx context.Context, cfg *config.Config, r Runner) (Report, error) {
	return newHost(cfg, r).status(ctx, false)
}

// Teardown removes what Setup made: the volume group or the XFS mount and
// its links, the loop device and the backing file. Every volume on the pool
// is lost. What is already gone is skipped.
func Teardown(ctx context.Context, cfg *config.Config, r Runner) error {
	return newHost(cfg, r).teardown(ctx)
}

func (h *host) path(name string) string { return filepath.Join(h.stateDir, name) }

func (h *host) setup(ctx context.Context) (rep Report, err error) {
	if h.stateDir == "" || !filepath.IsAbs(h.stateDir) {
		return Report{}, fmt.Errorf("storage setup: sandbox.stateDir %q must be an absolute path", h.stateDir)
	}
	switch h.st.Method {
	case "":
		return Report{}, errors.New(`storage setup: setup.storage.method is not set: choose "loop" (a pool file) or "device" (a block device)`)
	case storage.DriverLVM:
		rep, err = h.status(ctx, false)
		if err == nil && !rep.Ready {
			err = fmt.Errorf("storage setup: method lvm needs an existing thin pool %s; create it, or use method loop or device", thinPool)
		}
		return rep, err
	case storage.DriverFile:
		return h.setupFileDirs(ctx)
	case "loop", "device":
	default:
		return Report{}, fmt.Errorf("storage setup: unknown setup.storage.method %q", h.st.Method)
	}
	dm := h.dmWorks(ctx)
	if dm && storage.ThinPoolExists(ctx, h.r) {
		return h.status(ctx, false)
	}
	if err := os.MkdirAll(h.stateDir, 0o755); err != nil {
		return Report{}, fmt.Errorf("storage setup: %w", err)
	}
	rev := revert.New()
	defer func() {
		if uerr := rev.Fail(); uerr != nil {
			err = fmt.Errorf("%w (undo failed too, clean up by hand or run atelier storage teardown: %v)", err, uerr)
		}
	}()
	changed := false
	var dev string
	if h.st.Method == "loop" {
		if dev, changed, err = h.ensureLoop(ctx, rev); err != nil {
			return Report{}, fmt.Errorf("storage setup: %w", err)
		}
	} else {
		dev = h.st.Device
		// Mounted at our own pool dir is a previous setup, not a refusal.
		if err := checkDevice(dev, h.path(PoolDir)); err != nil {
			return Report{}, fmt.Errorf("storage setup: %w", err)
		}
	}
	var made bool
	if dm {
		made, err = h.ensureThinPool(ctx, rev, dev)
	} else {
		made, err = h.ensureXFSPool(ctx, rev, dev)
	}
	if err != nil {
		return Report{}, fmt.Errorf("storage setup: %w", err)
	}
	rev.Success()
	rep, err = h.status(ctx, changed || made)
	if err != nil {
		return rep, fmt.Errorf("storage setup: %w", err)
	}
	return rep, nil
}

// ensureLoop creates the sparse backing file and attaches it, reusing
// either when present.
func (h *host) ensureLoop(ctx context.Context, rev *revert.Reverter) (dev string, changed bool, err error) {
	backing := h.path(BackingFile)
	if _, err := os.Stat(backing); errors.Is(err, os.ErrNotExist) {
		if h.st.LoopSizeGB < MinSizeBytes>>30 {
			return "", false, fmt.Errorf("set setup.storage.loopSizeGb (at least %d) for method loop (got %d)", MinSizeBytes>>30, h.st.LoopSizeGB)
		}
		f, err := os.OpenFile(backing, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return "", false, fmt.Errorf("create %s: %w", backing, err)
		}
		rev.Add(func() error { return os.Remove(backing) })
		// Sparse: the file costs only what the pool holds.
		err = f.Truncate(int64(h.st.LoopSizeGB) << 30)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", false, fmt.Errorf("size %s: %w", backing, err)
		}
		changed = true
		h.log.Info("pool file created", "path", backing, "size_gb", h.st.LoopSizeGB)
	} else if err != nil {
		return "", false, fmt.Errorf("stat %s: %w", backing, err)
	}
	devs, err := h.loopsOf(ctx, backing)
	if err != nil {
		return "", false, err
	}
	if len(devs) > 0 {
		return devs[0], changed, nil
	}
	out, err := h.r.Run(ctx, losetupBin, "--find", "--show", backing)
	if err != nil {
		return "", false, fmt.Errorf("attach %s: %w", backing, err)
	}
	dev = strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", false, fmt.Errorf("attach %s: losetup printed %q, not a loop device", backing, dev)
	}
	bg := context.WithoutCancel(ctx)
	rev.Add(func() error {
		_, err := h.r.Run(bg, losetupBin, "-d", dev)
		return err
	})
	h.log.Info("pool file attached", "path", backing, "device", dev)
	return dev, true, nil
}

// loopsOf lists the loop devices backed by file.
func (h *host) loopsOf(ctx context.Context, file string) ([]string, error) {
	out, err := h.r.Run(ctx, losetupBin, "-n", "-O", "NAME", "-j", file)
	if err != nil {
		return nil, fmt.Errorf("find loop device of %s: %w", file, err)
	}
	return strings.Fields(string(out)), nil
}

// checkDevice refuses what must not become a pool: not a block device,
// mounted anywhere but ours, or under 10 GiB.
func checkDevice(dev, ours string) error {
	if dev == "" || !filepath.IsAbs(dev) {
		return fmt.Errorf("setup.storage.device %q must be the absolute path of a block device", dev)
	}
	fi, err := os.Stat(dev)
	if err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return fmt.Errorf("device %s is not a block device", dev)
	}
	if m := slices.DeleteFunc(mountsOf(dev), func(p string) bool { return p == ours }); len(m) > 0 {
		return fmt.Errorf("device %s is mounted at %s; refusing to use it", dev, strings.Join(m, ", "))
	}
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	if size < MinSizeBytes {
		return fmt.Errorf("device %s has %d bytes, smaller than the %d GiB minimum", dev, size, MinSizeBytes>>30)
	}
	return nil
}

// mountsOf lists where dev is mounted, by /proc/self/mounts.
func mountsOf(dev string) []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	resolved, _ := filepath.EvalSymlinks(dev)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == dev || f[0] == resolved) {
			out = append(out, f[1])
		}
	}
	return out
}

// ensureThinPool makes (or activates) sandbox-vg and its thin pool on dev.
func (h *host) ensureThinPool(ctx context.Context, rev *revert.Reverter, dev string) (bool, error) {
	bg := context.WithoutCancel(ctx)
	if _, err := h.r.Run(ctx, vgsBin, "--noheadings", "-o", "vg_name", vg); err == nil {
		// Activation is what a reboot undoes; it is a no-op on an active group.
		if _, err := h.r.Run(ctx, vgchangeBin, "-ay", vg); err != nil {
			return false, fmt.Errorf("activate %s: %w", vg, err)
		}
		if storage.ThinPoolExists(ctx, h.r) {
			return false, nil
		}
	} else {
		if err := h.refuseSignature(ctx, dev); err != nil {
			return false, err
		}
		if _, err := h.r.Run(ctx, pvcreateBin, "-f", dev); err != nil {
			return false, fmt.Errorf("make physical volume on %s: %w", dev, err)
		}
		rev.Add(func() error {
			_, err := h.r.Run(bg, pvremoveBin, "-ff", "-y", dev)
			return err
		})
		if _, err := h.r.Run(ctx, vgcreateBin, vg, dev); err != nil {
			return false, fmt.Errorf("make volume group %s: %w", vg, err)
		}
		rev.Add(func() error {
			_, err := h.r.Run(bg, vgremoveBin, "-f", vg)
			return err
		})
	}
	rev.Add(func() error {
		_, err := h.r.Run(bg, lvremoveBin, "-f", thinPool)
		return err
	})
	if _, err := h.r.Run(ctx, lvcreateBin, "-l", "90%FREE", "-T", thinPool); err != nil {
		return false, fmt.Errorf("make thin pool %s: %w", thinPool, err)
	}
	h.log.Info("thin pool created", "device", dev, "pool", thinPool)
	return true, nil
}

// fsType is the filesystem or volume signature on dev, "" for none.
func (h *host) fsType(ctx context.Context, dev string) (string, error) {
	out, err := h.r.Run(ctx, blkidBin, "-p", "-o", "value", "-s", "TYPE", dev)
	var ee *storage.ExecError
	if errors.As(err, &ee) && ee.Code == 2 {
		return "", nil // blkid: nothing found
	}
	if err != nil {
		return "", fmt.Errorf("probe %s: %w", dev, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// refuseSignature stops setup from formatting a device that holds data.
func (h *host) refuseSignature(ctx context.Context, dev string) error {
	t, err := h.fsType(ctx, dev)
	if err != nil {
		return err
	}
	if t != "" {
		return fmt.Errorf("refusing to format %s: it holds a %s signature; if its data can go, clear it with wipefs -a %s", dev, t, dev)
	}
	return nil
}

// ensureXFSPool formats dev as XFS with reflink (unless it already is XFS),
// mounts it at <stateDir>/pool and links the volume directories into it.
func (h *host) ensureXFSPool(ctx context.Context, rev *revert.Reverter, dev string) (bool, error) {
	mnt := h.path(PoolDir)
	changed := false
	mounted, err := isMountpoint(mnt)
	if err != nil {
		return false, err
	}
	if !mounted {
		t, err := h.fsType(ctx, dev)
		if err != nil {
			return false, err
		}
		switch t {
		case "xfs":
		case "":
			if _, err := h.r.Run(ctx, mkfsXFSBin, "-q", "-m", "reflink=1", dev); err != nil {
				return false, fmt.Errorf("format %s: %w", dev, err)
			}
			h.log.Info("pool formatted", "device", dev, "fs", "xfs")
		default:
			return false, fmt.Errorf("refusing to format %s: it holds a %s signature; if its data can go, clear it with wipefs -a %s", dev, t, dev)
		}
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			return false, fmt.Errorf("make %s: %w", mnt, err)
		}
		if err := unix.Mount(dev, mnt, "xfs", 0, ""); err != nil {
			return false, fmt.Errorf("mount %s on %s: %w", dev, mnt, err)
		}
		rev.Add(func() error { return unix.Unmount(mnt, 0) })
		changed = true
		h.log.Info("pool mounted", "device", dev, "path", mnt)
	}
	made, err := h.ensureLinks(rev)
	return changed || made, err
}

// ensureLinks points <stateDir>/{images,prebuilds,overlays} at the pool.
// An empty directory in the way is replaced; one holding files is refused,
// since its volumes would vanish behind the link.
func (h *host) ensureLinks(rev *revert.Reverter) (bool, error) {
	changed := false
	for _, name := range volumeDirs {
		target := filepath.Join(PoolDir, name) // relative: survives a moved state dir
		if err := os.MkdirAll(h.path(target), 0o755); err != nil {
			return false, fmt.Errorf("make %s: %w", h.path(target), err)
		}
		link := h.path(name)
		fi, err := os.Lstat(link)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return false, fmt.Errorf("stat %s: %w", link, err)
		case fi.Mode()&os.ModeSymlink != 0:
			if cur, _ := os.Readlink(link); cur == target {
				continue
			}
			return false, fmt.Errorf("%s is a symlink to somewhere other than %s; remove it", link, target)
		case fi.IsDir():
			if err := os.Remove(link); err != nil {
				return false, fmt.Errorf("%s holds files; move them into %s first: %w", link, h.path(target), err)
			}
			rev.Add(func() error { return os.Mkdir(link, fi.Mode().Perm()) })
		default:
			return false, fmt.Errorf("%s is in the way of the pool link; remove it", link)
		}
		if err := os.Symlink(target, link); err != nil {
			return false, fmt.Errorf("link %s: %w", link, err)
		}
		rev.Add(func() error { return os.Remove(link) })
		changed = true
	}
	return changed, nil
}

// setupFileDirs is method file: the volume directories on the state dir's
// own filesystem.
func (h *host) setupFileDirs(ctx context.Context) (Report, error) {
	changed := false
	for _, name := range volumeDirs {
		p := h.path(name)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return Report{}, fmt.Errorf("storage setup: %w", err)
			}
			changed = true
		} else if err != nil {
			return Report{}, fmt.Errorf("storage setup: %w", err)
		}
	}
	return h.status(ctx, changed)
}

// isMountpoint reports whether path is the root of a mount: its device
// differs from its parent's.
func isMountpoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return false, fmt.Errorf("stat %s: %w", filepath.Dir(path), err)
	}
	return st.Dev != parent.Dev, nil
}

func (h *host) status(ctx context.Context, changed bool) (Report, error) {
	choice, err := storage.Detect(ctx, h.st.Method, storage.Probe{
		ThinPool:     func(ctx context.Context) bool { return storage.ThinPoolExists(ctx, h.r) },
		DeviceMapper: h.dmWorks,
	})
	if err != nil {
		return Report{}, err
	}
	rep := Report{Method: h.st.Method, Driver: choice.Driver, Changed: changed}
	if rep.Method == "" {
		rep.Notes = append(rep.Notes, "setup.storage.method is not set; "+choice.Reason)
	}
	switch h.st.Method {
	case "loop":
		backing := h.path(BackingFile)
		if _, err := os.Stat(backing); err == nil {
			rep.BackingFile = backing
			if devs, err := h.loopsOf(ctx, backing); err != nil {
				rep.Notes = append(rep.Notes, err.Error())
			} else if len(devs) > 0 {
				rep.Device = devs[0]
			} else {
				rep.Notes = append(rep.Notes, backing+" is not attached to a loop device; run atelier storage setup")
			}
		} else {
			rep.Notes = append(rep.Notes, "no pool file "+backing+"; run atelier storage setup")
		}
	case "device":
		rep.Device = h.st.Device
	}
	if choice.Driver == storage.DriverLVM {
		u, err := lvm.New(h.r, lvm.Config{}).Usage(ctx)
		if err != nil {
			rep.Notes = append(rep.Notes, err.Error())
			return rep, nil
		}
		rep.Usage, rep.Ready = u, true
		rep.VolumeDir = "/dev/" + vg
		return rep, nil
	}
	rep.VolumeDir = h.path(file.OverlaysDir)
	if h.st.Method == "loop" || h.st.Method == "device" {
		mnt := h.path(PoolDir)
		if ok, _ := isMountpoint(mnt); ok {
			rep.MountPoint = mnt
		} else {
			rep.Notes = append(rep.Notes, "pool "+mnt+" is not mounted; run atelier storage setup")
			return rep, nil
		}
	}
	if fi, err := os.Stat(rep.VolumeDir); err != nil || !fi.IsDir() {
		rep.Notes = append(rep.Notes, rep.VolumeDir+" does not exist; run atelier storage setup")
		return rep, nil
	}
	u, err := file.New(file.Config{StateDir: h.stateDir}).Usage(ctx)
	if err != nil {
		rep.Notes = append(rep.Notes, err.Error())
		return rep, nil
	}
	rep.Usage, rep.Ready = u, true
	if rep.Reflink, err = file.ReflinkSupported(rep.VolumeDir); err != nil {
		rep.Notes = append(rep.Notes, err.Error())
	} else if !rep.Reflink {
		rep.Notes = append(rep.Notes, rep.VolumeDir+" cannot reflink: every clone is a full (sparse) copy")
	}
	return rep, nil
}

func (h *host) teardown(ctx context.Context) error {
	if h.stateDir == "" || !filepath.IsAbs(h.stateDir) {
		return fmt.Errorf("storage teardown: sandbox.stateDir %q must be an absolute path", h.stateDir)
	}
	var errs []error
	for _, name := range volumeDirs {
		link := h.path(name)
		if cur, err := os.Readlink(link); err == nil && cur == filepath.Join(PoolDir, name) {
			if err := os.Remove(link); err != nil {
				errs = append(errs, err)
			}
		}
	}
	mnt := h.path(PoolDir)
	if ok, err := isMountpoint(mnt); err != nil {
		errs = append(errs, err)
	} else if ok {
		if err := unix.Unmount(mnt, 0); err != nil {
			return errors.Join(append(errs, fmt.Errorf("unmount %s (volumes in use?): %w", mnt, err))...)
		}
	}
	if err := os.Remove(mnt); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", mnt, err))
	}
	var devs []string
	backing := h.path(BackingFile)
	if h.st.Method == "loop" {
		if _, err := os.Stat(backing); err == nil {
			d, err := h.loopsOf(ctx, backing)
			if err != nil {
				errs = append(errs, err)
			}
			devs = d
		}
	} else if h.st.Method == "device" {
		devs = []string{h.st.Device}
	}
	if (h.st.Method == "loop" || h.st.Method == "device") && h.dmWorks(ctx) {
		if _, err := h.r.Run(ctx, vgremoveBin, "-f", vg); err != nil && !storage.StderrContains(err, "not found") {
			errs = append(errs, fmt.Errorf("remove volume group %s: %w", vg, err))
		}
		for _, dev := range devs {
			if _, err := h.r.Run(ctx, pvremoveBin, "-ff", "-y", dev); err != nil && !storage.StderrContains(err, "No PV") {
				errs = append(errs, fmt.Errorf("remove physical volume %s: %w", dev, err))
			}
		}
	}
	if h.st.Method == "loop" {
		for _, dev := range devs {
			if _, err := h.r.Run(ctx, losetupBin, "-d", dev); err != nil {
				errs = append(errs, fmt.Errorf("detach %s: %w", dev, err))
			}
		}
		if err := os.Remove(backing); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", backing, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage teardown: %w", err)
	}
	return nil
}

// Volumes is the driver API the manager uses; *lvm.Driver and *file.Driver
// both provide it.
type Volumes interface {
	Clone(ctx context.Context, image, id string) (string, error)
	CloneFrom(ctx context.Context, src storage.Source, id string) (string, error)
	CreateImage(ctx context.Context, imageID, srcPath string, sizeBytes int64) error
	DeleteImage(ctx context.Context, imageID string) error
	Prebuild(ctx context.Context, workspaceID, sandboxID string) error
	DeletePrebuild(ctx context.Context, workspaceID string) error
	Resize(ctx context.Context, id string, sizeBytes int64) error
	Delete(ctx context.Context, id string) error
	List(ctx context.Context) ([]storage.Volume, error)
	Stat(ctx context.Context, kind storage.Kind, id string) (storage.Volume, error)
	Usage(ctx context.Context) (storage.Usage, error)
	Path(id string) string
}

var (
	_ Volumes = (*lvm.Driver)(nil)
	_ Volumes = (*file.Driver)(nil)
)

// Open returns the driver storage.Detect picks for cfg, asking the host now.
// The manager calls it once, at start-up (OpenSet): that driver receives
// every new volume until the next start, whatever appears on the host
// meanwhile.
func Open(ctx context.Context, cfg *config.Config, r Runner, log *slog.Logger) (Volumes, storage.Choice, error) {
	h := newHost(cfg, r)
	choice, err := storage.Detect(ctx, cfg.Setup.Storage.Method, storage.Probe{
		ThinPool:     func(ctx context.Context) bool { return storage.ThinPoolExists(ctx, r) },
		DeviceMapper: h.dmWorks,
	})
	if err != nil {
		return nil, storage.Choice{}, fmt.Errorf("open storage: %w", err)
	}
	if choice.Driver == storage.DriverLVM {
		return lvm.New(r, lvm.Config{Log: log}), choice, nil
	}
	return file.New(file.Config{StateDir: cfg.Sandbox.StateDir, Log: log}), choice, nil
}
