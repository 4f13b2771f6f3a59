// Package firecracker is the production sandbox runtime: one Firecracker
// process per sandbox, driven over its API socket (spec v1.14.1).
//
// Host paths follow the seed: <SocketDir>/<id>.sock (API), <id>.vsock
// (hybrid vsock, guest CID 3), <id>.pid, <LogDir>/<id>.log and snapshots in
// <SnapshotDir>. Each process runs in its own session and outlives the
// manager; its pid file and command line let a restarted manager find it.
// With a jailer configured each runs chrooted as a uid of its own (see
// jail.go); the guest's command line is the boot contract's
// (internal/bootcontract).
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"atelier/internal/bootcontract"
	"atelier/internal/config"
	"atelier/internal/ids"
	"atelier/internal/logkeeper"
	"atelier/internal/revert"
	"atelier/internal/runtime/firecracker/fcapi"
	"atelier/internal/sandbox"
)

// DefaultAgentPort is the guest vsock port of atelier-agent.
const DefaultAgentPort = bootcontract.DefaultAgentPort

// Device ids inside the guest.
const (
	rootDriveID = "rootfs"
	ifaceID     = "eth0"
)

// maxSunPath is the longest unix socket path Linux accepts (sun_path
// holds 108 bytes including the terminating NUL).
const maxSunPath = 107

// restorePathExtra is what the longest socket path adds to SocketDir: a
// vsock bound inside a restore directory, "/<id>.restore/<id>.vsock".
const restorePathExtra = 1 + ids.SandboxIDLen + len(".restore/") + ids.SandboxIDLen + len(".vsock")

var (
	// ErrRunning is a boot or restore of a sandbox whose firecracker runs.
	ErrRunning = errors.New("firecracker already running")
	// ErrNotRunning is a pause, resume or snapshot of a sandbox without one.
	ErrNotRunning = errors.New("firecracker not running")
	// ErrNoSnapshot is a restore from a snapshot that does not exist.
	ErrNoSnapshot = errors.New("snapshot not found")
)

// Timing. Firecracker answers on its socket within tens of milliseconds,
// so the polls are short; the bounds only catch a wedged process.
const (
	pollInterval  = 5 * time.Millisecond
	apiTimeout    = 10 * time.Second
	callTimeout   = 10 * time.Second
	runTimeout    = 10 * time.Second
	killWait      = 5 * time.Second
	logTailBytes  = 2048
	snapshotPerms = 0o700
)

// Options configure the driver.
type Options struct {
	// Binary is the firecracker executable.
	Binary string
	// Kernel is the guest kernel image.
	Kernel string
	// SocketDir holds the API and vsock sockets and the pid files.
	SocketDir string
	// LogDir holds one Firecracker log per sandbox.
	LogDir string
	// SnapshotDir holds <name>.snap and <name>.mem.
	SnapshotDir string
	// AgentPort is the guest vsock port of the agent (default 9998); the
	// guest learns it from the kernel command line.
	AgentPort uint32
	// Jailer, when set, starts every Firecracker through Firecracker's
	// jailer (see jail.go); ChrootBase is its --chroot-base-dir, on the
	// filesystem of SocketDir.
	Jailer     string
	ChrootBase string
	// UIDBase: a jailed Firecracker runs as uid and gid UIDBase + the host
	// part of its sandbox's address.
	UIDBase uint32
	// CgroupParent is the jailer's --parent-cgroup (default
	// DefaultCgroupParent); CgroupVersion its --cgroup-version (0: the
	// host's, see cgroupVersion).
	CgroupParent  string
	CgroupVersion int
	// Logs starts the keeper that writes and rotates each sandbox's log
	// from Firecracker's output and log FIFO (default logkeeper.Default()).
	Logs *logkeeper.Keepers
	Log  *slog.Logger
}

// OptionsFromConfig derives the production options.
func OptionsFromConfig(cfg *config.Config) Options {
	fc := cfg.Advanced.Server.Firecracker
	port := uint32(DefaultAgentPort)
	if p := cfg.Advanced.VM.Agent.Port; p > 0 && p <= 0xffffffff {
		port = uint32(p)
	}
	return Options{
		Binary:      fc.BinaryPath,
		Kernel:      fc.KernelPath,
		SocketDir:   filepath.Join(cfg.Sandbox.StateDir, "sockets"),
		LogDir:      cfg.Sandbox.LogDir,
		SnapshotDir: filepath.Join(cfg.Sandbox.StateDir, "snapshots"),
		AgentPort:   port,
		Jailer:      fc.JailerPath,
		ChrootBase:  fc.ChrootBaseDir,
		UIDBase:     uint32(max(fc.JailerUIDBase, 0)),
	}
}

// Driver runs sandboxes as Firecracker microVMs. It is safe for concurrent
// use; calls for one sandbox run one at a time.
type Driver struct {
	opts  Options
	log   *slog.Logger
	locks keyedLocks

	mu       sync.Mutex
	children map[int]chan struct{} // closed once the child is reaped

	// env is the firecracker process's whole environment (tests point it
	// at the fake).
	env []string
	// stopGrace bounds the wait for a guest shutdown before SIGKILL.
	stopGrace time.Duration
}

var _ sandbox.Runtime = (*Driver)(nil)

// New checks the options. It touches nothing on the host.
func New(opts Options) (*Driver, error) {
	for _, p := range []struct{ name, path string }{
		{"binary", opts.Binary}, {"kernel", opts.Kernel}, {"socket dir", opts.SocketDir},
		{"log dir", opts.LogDir}, {"snapshot dir", opts.SnapshotDir},
	} {
		if p.path == "" || !filepath.IsAbs(p.path) {
			return nil, fmt.Errorf("firecracker options: %s %q is not an absolute path", p.name, p.path)
		}
	}
	opts.SocketDir = filepath.Clean(opts.SocketDir)
	if len(opts.SocketDir)+restorePathExtra > maxSunPath {
		return nil, fmt.Errorf("firecracker options: socket dir %q is too long for unix socket paths", opts.SocketDir)
	}
	if opts.Jailer != "" {
		if !filepath.IsAbs(opts.Jailer) || opts.ChrootBase == "" || !filepath.IsAbs(opts.ChrootBase) {
			return nil, fmt.Errorf("firecracker options: jailer %q needs absolute paths for itself and its chroot base (%q)", opts.Jailer, opts.ChrootBase)
		}
		if opts.UIDBase == 0 || opts.UIDBase > 1<<32-1<<16 {
			return nil, fmt.Errorf("firecracker options: jailer uid base %d leaves no room for 65536 unprivileged ids", opts.UIDBase)
		}
		if opts.CgroupVersion != 0 && opts.CgroupVersion != 1 && opts.CgroupVersion != 2 {
			return nil, fmt.Errorf("firecracker options: cgroup version %d", opts.CgroupVersion)
		}
	}
	if opts.ChrootBase != "" {
		opts.ChrootBase = filepath.Clean(opts.ChrootBase)
	}
	if opts.CgroupParent == "" {
		opts.CgroupParent = DefaultCgroupParent
	}
	// The jailer refuses anything but a relative path without "." or "..".
	for _, c := range strings.Split(opts.CgroupParent, "/") {
		if c == "" || c == "." || c == ".." {
			return nil, fmt.Errorf("firecracker options: cgroup parent %q is not a relative path of plain names", opts.CgroupParent)
		}
	}
	if opts.AgentPort == 0 {
		opts.AgentPort = DefaultAgentPort
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Logs == nil {
		opts.Logs = logkeeper.Default()
	}
	return &Driver{
		opts:      opts,
		log:       opts.Log,
		children:  map[int]chan struct{}{},
		stopGrace: bootcontract.ShutdownGrace,
	}, nil
}

func (d *Driver) apiSock(id string) string   { return filepath.Join(d.opts.SocketDir, id+".sock") }
func (d *Driver) vsockPath(id string) string { return filepath.Join(d.opts.SocketDir, id+".vsock") }
func (d *Driver) pidPath(id string) string   { return filepath.Join(d.opts.SocketDir, id+".pid") }
func (d *Driver) logPath(id string) string   { return filepath.Join(d.opts.LogDir, id+".log") }

// restoreDir is the working directory of a restoring firecracker.
func (d *Driver) restoreDir(id string) string {
	return filepath.Join(d.opts.SocketDir, id+".restore")
}

// AgentSocket is the host end of the sandbox's hybrid vsock.
func (d *Driver) AgentSocket(id string) string { return d.vsockPath(id) }

// AgentPort is the guest vsock port the agent listens on.
func (d *Driver) AgentPort() uint32 { return d.opts.AgentPort }

func checkID(id string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("invalid sandbox id %q", id)
	}
	return nil
}

// Boot starts a fresh microVM and returns once Firecracker reports it
// running. On any failure the process is killed and its files removed.
func (d *Driver) Boot(ctx context.Context, inst sandbox.Instance) error {
	plan, err := d.plan(inst)
	if err != nil {
		return fmt.Errorf("boot sandbox %s: %w", inst.ID, err)
	}
	id := inst.ID
	unlock := d.locks.lock(id)
	defer unlock()
	if pid, ok := d.find(id); ok {
		return fmt.Errorf("boot sandbox %s: %w (pid %d)", id, ErrRunning, pid)
	}
	log := d.log.With("sandbox_id", id)
	start := time.Now()

	r := revert.New()
	defer func() {
		if err := r.Fail(); err != nil {
			log.Error("undo failed boot", "err", err)
		}
	}()
	var js *jailSetup
	if d.jailed() {
		uid, err := d.jailID(inst)
		if err != nil {
			return fmt.Errorf("boot sandbox %s: %w", id, err)
		}
		js = &jailSetup{uid: uid, vcpus: inst.Vcpus, memMiB: inst.MemoryMB,
			files: []jailFile{{src: inst.Disk, dst: jailDisk, writable: true}}}
	}
	pid, err := d.launch(id, d.opts.SocketDir, js)
	if err != nil {
		_ = d.removeFiles(id, true)
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	}
	r.Add(func() error { return d.teardown(id, pid) })

	c := fcapi.New(d.apiSock(id))
	steps := []struct {
		what string
		call func(context.Context) error
	}{
		{"wait for API", func(ctx context.Context) error { return d.waitAPI(ctx, c, pid, id, js) }},
		{"machine config", func(ctx context.Context) error { return c.PutMachineConfiguration(ctx, plan.machine) }},
		{"boot source", func(ctx context.Context) error { return c.PutGuestBootSource(ctx, plan.boot) }},
		{"root drive", func(ctx context.Context) error { return c.PutGuestDriveByID(ctx, plan.rootfs) }},
		{"network interface", func(ctx context.Context) error { return c.PutGuestNetworkInterfaceByID(ctx, plan.eth0) }},
		{"vsock", func(ctx context.Context) error {
			if err := c.PutGuestVsock(ctx, plan.vsock); err != nil {
				return err
			}
			if js == nil {
				return nil
			}
			return d.adoptSocket(id, plan.vsock.UDSPath, js.uid, d.vsockPath(id))
		}},
		{"start instance", func(ctx context.Context) error {
			return c.CreateSyncAction(ctx, fcapi.InstanceActionInfo{ActionType: fcapi.ActionInstanceStart})
		}},
		{"wait until running", func(ctx context.Context) error { return d.waitState(ctx, c, pid, id, fcapi.StateRunning) }},
	}
	for _, s := range steps {
		if err := d.call(ctx, s.call); err != nil {
			return fmt.Errorf("boot sandbox %s: %s: %w", id, s.what, d.withLogTail(id, pid, err))
		}
	}
	r.Success()
	log.Info("firecracker booted", "pid", pid, "duration", time.Since(start))
	return nil
}

// call bounds one API step.
func (d *Driver) call(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return f(ctx)
}

// withLogTail adds the end of Firecracker's log to err when the process
// died: the log is removed by the revert, and it holds the reason.
func (d *Driver) withLogTail(id string, pid int, err error) error {
	if !d.exited(pid, id) {
		return err
	}
	// The keeper writes what Firecracker said last, then ends.
	_ = d.opts.Logs.Stop(context.Background(), d.logPath(id))
	if tail := logTail(d.logPath(id), logTailBytes); tail != "" {
		return fmt.Errorf("%w; firecracker log: %s", err, tail)
	}
	return err
}

// waitAPI waits for the API socket to answer. A jailed Firecracker makes
// it in its jail; it is linked to the seed's path first.
func (d *Driver) waitAPI(ctx context.Context, c *fcapi.Client, pid int, id string, js *jailSetup) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	var last error
	for {
		if d.exited(pid, id) {
			return errExited
		}
		if _, err := os.Stat(c.Socket()); err != nil && js != nil {
			if err := d.adoptSocket(id, jailAPISock, js.uid, c.Socket()); err != nil && !errors.Is(err, errNotYet) {
				return err
			}
		}
		if _, err := os.Stat(c.Socket()); err == nil {
			_, last = c.DescribeInstance(ctx)
			if last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("API socket not ready: %w (last error: %v)", ctx.Err(), last)
			}
			return fmt.Errorf("API socket not ready: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// waitState polls GET / until Firecracker reports want.
func (d *Driver) waitState(ctx context.Context, c *fcapi.Client, pid int, id, want string) error {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	for {
		info, err := c.DescribeInstance(ctx)
		if err == nil && info.State == want {
			return nil
		}
		if d.exited(pid, id) {
			return errExited
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("instance not %s (state %q, err %v): %w", want, info.State, err, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// Stop asks the guest to shut down (Ctrl+Alt+Del, which the guest kernel
// turns into a clean reboot=k exit), waits for Firecracker to exit, then
// kills it. It removes the sockets and the pid file and keeps the log, so
// the last run can still be read (weak point 36). A sandbox that is not
// running is already stopped.
func (d *Driver) Stop(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("stop sandbox: %w", err)
	}
	ctx = context.WithoutCancel(ctx)
	unlock := d.locks.lock(id)
	defer unlock()
	log := d.log.With("sandbox_id", id)
	if pid, ok := d.find(id); ok {
		if err := d.shutdown(ctx, log, id, pid); err != nil {
			return fmt.Errorf("stop sandbox %s: %w", id, err)
		}
		log.Info("firecracker stopped", "pid", pid)
	}
	if err := d.removeFiles(id, false); err != nil {
		return fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	return nil
}

func (d *Driver) shutdown(ctx context.Context, log *slog.Logger, id string, pid int) error {
	sock := d.apiSock(id)
	c := fcapi.New(sock)
	err := d.call(ctx, func(ctx context.Context) error {
		info, err := c.DescribeInstance(ctx)
		if err != nil {
			return err
		}
		switch info.State {
		case fcapi.StateNotStarted:
			return errors.New("guest not started")
		case fcapi.StatePaused:
			// A frozen guest cannot see the key press.
			if err := c.PatchVM(ctx, fcapi.Vm{State: fcapi.VMResumed}); err != nil {
				return err
			}
		}
		return c.CreateSyncAction(ctx, fcapi.InstanceActionInfo{ActionType: fcapi.ActionSendCtrlAltDel})
	})
	if err == nil && d.waitGone(pid, id, d.stopGrace) {
		return nil
	}
	if err != nil {
		log.Warn("no clean guest shutdown; killing firecracker", "pid", pid, "err", err)
	} else {
		log.Warn("guest did not shut down in time; killing firecracker", "pid", pid, "grace", d.stopGrace)
	}
	return d.terminate(id, pid)
}

// terminate kills pid if it is still our firecracker and waits for it.
func (d *Driver) terminate(id string, pid int) error {
	if err := d.kill(pid, id); err != nil {
		return err
	}
	if !d.waitGone(pid, id, killWait) {
		return fmt.Errorf("firecracker %d still running after SIGKILL", pid)
	}
	return nil
}

// teardown undoes a launch: the process and every file, log included.
func (d *Driver) teardown(id string, pid int) error {
	return errors.Join(d.terminate(id, pid), d.removeFiles(id, true))
}

// removeFiles removes the sandbox's runtime files in the seed's order
// (socket, vsock, pid, log: the log keeper is waited for, and its files
// removed with the log only when withLog), then the log FIFO, a leftover
// restore directory and the jail. Absent files are success.
func (d *Driver) removeFiles(id string, withLog bool) error {
	var errs []error
	for _, p := range []string{d.apiSock(id), d.vsockPath(id), d.pidPath(id)} {
		if err := removeFile(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	// Firecracker is gone, so are the keeper's writers: it ends once it
	// has written their last words.
	ctx := context.Background()
	if withLog {
		errs = append(errs, d.opts.Logs.Remove(ctx, d.logPath(id)))
	} else {
		errs = append(errs, d.opts.Logs.Stop(ctx, d.logPath(id)))
	}
	if err := removeFile(d.logFIFO(id)); err != nil {
		errs = append(errs, fmt.Errorf("remove log fifo: %w", err))
	}
	if err := os.RemoveAll(d.restoreDir(id)); err != nil {
		errs = append(errs, fmt.Errorf("remove restore dir: %w", err))
	}
	if err := d.removeJail(id); err != nil {
		errs = append(errs, fmt.Errorf("remove jail: %w", err))
	}
	return errors.Join(errs...)
}

// Destroy kills the sandbox's firecracker and removes its sockets, pid
// file and log. A sandbox that is already gone is success.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("destroy sandbox: %w", err)
	}
	unlock := d.locks.lock(id)
	defer unlock()
	if pid, ok := d.find(id); ok {
		if err := d.terminate(id, pid); err != nil {
			return fmt.Errorf("destroy sandbox %s: %w", id, err)
		}
		d.log.Info("firecracker killed", "sandbox_id", id, "pid", pid)
	}
	if err := d.removeFiles(id, true); err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	return nil
}

// Alive reports whether the sandbox's pid file names a live firecracker
// serving the sandbox's API socket.
func (d *Driver) Alive(ctx context.Context, id string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, fmt.Errorf("alive: %w", err)
	}
	pid, ok := d.readPIDFile(id)
	if !ok {
		return false, nil
	}
	return d.owns(pid, id), nil
}

// List returns the ids that have a pid file or a jail, for
// reconciliation: each is either running (Alive) or left over from a
// crash (Destroy or Stop it).
func (d *Driver) List(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(d.opts.SocketDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		id, found := strings.CutSuffix(e.Name(), ".pid")
		if found && ids.ValidSandboxID(id) {
			seen[id] = true
		}
	}
	for _, id := range d.jails() {
		seen[id] = true
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	sort.Strings(out)
	return out, nil
}

// keyedLocks serialises work per key.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
