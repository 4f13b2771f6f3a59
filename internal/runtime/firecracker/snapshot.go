package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"atelier/internal/revert"
	"atelier/internal/runtime/firecracker/fcapi"
	"atelier/internal/sandbox"
)

// snapshotNameRe keeps snapshot names to plain file names.
var snapshotNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,127}$`)

func checkSnapshotName(name string) error {
	if !snapshotNameRe.MatchString(name) {
		return fmt.Errorf("invalid snapshot name %q", name)
	}
	return nil
}

// SnapshotPaths are the state and memory files of a snapshot.
func (d *Driver) SnapshotPaths(name string) (state, mem string) {
	base := filepath.Join(d.opts.SnapshotDir, name)
	return base + ".snap", base + ".mem"
}

// snapshotLock serialises the writers and readers of one snapshot's files.
func snapshotLock(name string) string { return "snapshot/" + name }

// Pause freezes the guest's vCPUs.
func (d *Driver) Pause(ctx context.Context, id string) error {
	return d.setVMState(ctx, id, fcapi.VMPaused)
}

// Resume unfreezes a paused guest.
func (d *Driver) Resume(ctx context.Context, id string) error {
	return d.setVMState(ctx, id, fcapi.VMResumed)
}

func (d *Driver) setVMState(ctx context.Context, id, state string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("set vm %s: %w", state, err)
	}
	unlock := d.locks.lock(id)
	defer unlock()
	c, err := d.running(id)
	if err != nil {
		return fmt.Errorf("set sandbox %s %s: %w", id, state, err)
	}
	if err := d.call(ctx, func(ctx context.Context) error { return c.PatchVM(ctx, fcapi.Vm{State: state}) }); err != nil {
		return fmt.Errorf("set sandbox %s %s: %w", id, state, err)
	}
	return nil
}

// running returns a client for the sandbox's live firecracker.
func (d *Driver) running(id string) (*fcapi.Client, error) {
	pid, ok := d.readPIDFile(id)
	if !ok || !d.owns(pid, id) {
		return nil, ErrNotRunning
	}
	return fcapi.New(d.apiSock(id)), nil
}

// Snapshot writes a full snapshot of a running sandbox to
// <SnapshotDir>/<name>.snap and .mem: pause, create, resume. The guest is
// resumed even when the snapshot fails. The files appear under their names
// only once complete, so a restore never reads half a snapshot.
func (d *Driver) Snapshot(ctx context.Context, id, name string) (err error) {
	if err := errors.Join(checkID(id), checkSnapshotName(name)); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	unlock := d.locks.lock(id)
	defer unlock()
	unlockSnap := d.locks.lock(snapshotLock(name))
	defer unlockSnap()
	c, err := d.running(id)
	if err != nil {
		return fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	if err := os.MkdirAll(d.opts.SnapshotDir, snapshotPerms); err != nil {
		return fmt.Errorf("snapshot sandbox %s: create snapshot dir: %w", id, err)
	}
	state, mem := d.SnapshotPaths(name)
	partState, partMem := state+".partial", mem+".partial"
	start := time.Now()

	if err := d.call(ctx, func(ctx context.Context) error { return c.PatchVM(ctx, fcapi.Vm{State: fcapi.VMPaused}) }); err != nil {
		return fmt.Errorf("snapshot sandbox %s: pause: %w", id, err)
	}
	defer func() {
		// The guest must not stay frozen, whatever happened.
		rerr := d.call(context.WithoutCancel(ctx), func(ctx context.Context) error {
			return c.PatchVM(ctx, fcapi.Vm{State: fcapi.VMResumed})
		})
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("snapshot sandbox %s: resume: %w", id, rerr))
		}
	}()
	// Writing guest memory takes time proportional to its size: no fixed
	// bound here, the caller's context decides. A jailed Firecracker
	// writes in its jail; the files are copied out, so that the jailed user
	// cannot change them afterwards.
	target := fcapi.SnapshotCreateParams{SnapshotPath: partState, MemFilePath: partMem, SnapshotType: fcapi.SnapshotFull}
	if d.jailed() {
		target.SnapshotPath, target.MemFilePath = jailState, jailMem
	}
	err = c.CreateSnapshot(ctx, target)
	if err == nil && d.jailed() {
		err = errors.Join(d.takeFromJail(id, jailMem, partMem), d.takeFromJail(id, jailState, partState))
		for _, p := range []string{jailMem, jailState} {
			_ = removeFile(filepath.Join(d.chrootDir(id), p))
		}
	}
	if err == nil {
		err = os.Rename(partMem, mem)
	}
	if err == nil {
		err = os.Rename(partState, state)
	}
	if err != nil {
		_ = removeFile(partState)
		_ = removeFile(partMem)
		return fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	d.log.Info("snapshot created", "sandbox_id", id, "snapshot", name, "duration", time.Since(start))
	return nil
}

// Restore starts inst from a snapshot in a fresh firecracker.
//
// Firecracker 1.14.1 restores devices at the paths the snapshot recorded
// and has no vsock override, so the vsock path is recorded relative to
// the process's working directory (see plan): each restore runs in its own
// empty directory, where the device binds without touching the source's
// socket or another restore's (weak point 17), and the socket is then
// renamed to <id>.vsock. The root drive is switched to inst.Disk before
// the guest runs an instruction; the snapshot's original disk path must
// still exist at load time, since Firecracker opens it. The guest's MAC
// and addresses are the snapshot's: the caller must reconfigure the guest.
func (d *Driver) Restore(ctx context.Context, inst sandbox.Instance, name string) error {
	id := inst.ID
	var errs []error
	errs = append(errs, checkID(id), checkSnapshotName(name), checkDisk(inst.Disk))
	if !linkNameRe.MatchString(inst.Link) {
		errs = append(errs, fmt.Errorf("link %q is not an interface name", inst.Link))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore sandbox %s: %w", id, err)
	}
	unlock := d.locks.lock(id)
	defer unlock()
	if pid, ok := d.find(id); ok {
		return fmt.Errorf("restore sandbox %s: %w (pid %d)", id, ErrRunning, pid)
	}
	state, mem := d.SnapshotPaths(name)
	for _, p := range []string{state, mem} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("restore sandbox %s from %s: %w: %w", id, name, ErrNoSnapshot, err)
		}
	}
	log := d.log.With("sandbox_id", id)
	start := time.Now()

	r := revert.New()
	defer func() {
		if err := r.Fail(); err != nil {
			log.Error("undo failed restore", "err", err)
		}
	}()
	// A jailed restore runs in a fresh jail, which is its own empty
	// working directory; the snapshot and the disk are put into it.
	var js *jailSetup
	dir := d.restoreDir(id)
	loadState, loadMem := state, mem
	if d.jailed() {
		uid, err := d.jailID(inst)
		if err != nil {
			return fmt.Errorf("restore sandbox %s: %w", id, err)
		}
		unlockSnap := d.locks.lock(snapshotLock(name))
		js = &jailSetup{uid: uid, vcpus: inst.Vcpus, memMiB: inst.MemoryMB, files: []jailFile{
			{src: inst.Disk, dst: jailDisk, writable: true}, {src: state, dst: jailState}, {src: mem, dst: jailMem},
		}}
		dir, loadState, loadMem = "", jailState, jailMem
		defer unlockSnap()
	} else {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("restore sandbox %s: clear restore dir: %w", id, err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("restore sandbox %s: create restore dir: %w", id, err)
		}
		r.Add(func() error { return os.RemoveAll(dir) })
	}
	pid, err := d.launch(id, dir, js)
	if err != nil {
		_ = d.removeFiles(id, true)
		return fmt.Errorf("restore sandbox %s: %w", id, err)
	}
	r.Add(func() error { return d.teardown(id, pid) })

	c := fcapi.New(d.apiSock(id))
	steps := []struct {
		what string
		call func(context.Context) error
	}{
		{"wait for API", func(ctx context.Context) error { return d.waitAPI(ctx, c, pid, id, js) }},
		{"load snapshot", func(ctx context.Context) error {
			if js == nil {
				unlock := d.locks.lock(snapshotLock(name))
				defer unlock()
			}
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
				SnapshotPath: loadState,
				MemBackend:   &fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: loadMem},
				// Paused until the disk is this sandbox's.
				ResumeVM:         false,
				NetworkOverrides: []fcapi.NetworkOverride{{IfaceID: ifaceID, HostDevName: inst.Link}},
			})
		}},
		{"adopt devices", func(ctx context.Context) error { return d.adoptDevices(ctx, c, inst, dir, js) }},
		{"resume", func(ctx context.Context) error { return c.PatchVM(ctx, fcapi.Vm{State: fcapi.VMResumed}) }},
		{"wait until running", func(ctx context.Context) error { return d.waitState(ctx, c, pid, id, fcapi.StateRunning) }},
	}
	for _, s := range steps {
		if err := d.call(ctx, s.call); err != nil {
			return fmt.Errorf("restore sandbox %s: %s: %w", id, s.what, d.withLogTail(id, pid, err))
		}
	}
	// The directory is empty once the vsock moved out; it only served as
	// the working directory for the load.
	if js == nil {
		if err := os.Remove(dir); err != nil {
			log.Warn("remove restore dir", "err", err)
		}
	}
	r.Success()
	log.Info("firecracker restored", "pid", pid, "snapshot", name, "duration", time.Since(start))
	return nil
}

// adoptDevices moves (jailed: links) the restored vsock socket to the
// sandbox's path and points the root drive at the sandbox's disk.
func (d *Driver) adoptDevices(ctx context.Context, c *fcapi.Client, inst sandbox.Instance, dir string, js *jailSetup) error {
	cfg, err := c.GetExportVMConfig(ctx)
	if err != nil {
		return err
	}
	if cfg.Vsock == nil {
		return errors.New("snapshot has no vsock device")
	}
	if filepath.IsAbs(cfg.Vsock.UDSPath) {
		return fmt.Errorf("snapshot binds its vsock at the absolute path %s, which every restore would share", cfg.Vsock.UDSPath)
	}
	disk := inst.Disk
	if js != nil {
		disk = jailDisk
		if err := d.adoptSocket(inst.ID, cfg.Vsock.UDSPath, js.uid, d.vsockPath(inst.ID)); err != nil {
			return fmt.Errorf("adopt vsock socket: %w", err)
		}
	} else if err := os.Rename(filepath.Join(dir, cfg.Vsock.UDSPath), d.vsockPath(inst.ID)); err != nil {
		return fmt.Errorf("move vsock socket: %w", err)
	}
	for _, drv := range cfg.Drives {
		if drv.DriveID != rootDriveID {
			continue
		}
		if drv.PathOnHost == disk {
			return nil
		}
		return c.PatchGuestDriveByID(ctx, fcapi.PartialDrive{DriveID: rootDriveID, PathOnHost: disk})
	}
	return fmt.Errorf("snapshot has no %s drive", rootDriveID)
}
