package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// The init (atelier-agent init) is PID 1 of a VM guest. It must reap
// orphans, and it must never steal an exit status the agent is waiting
// for: the reference ran a wait(-1) reaper inside the agent itself, which
// raced the agent's own waits and turned ~30% of exec exit codes into 1.
//
// The fix is structural. Init's only child is the serve process; serve is
// the parent of every command it runs and waits for each one itself. A
// process becomes init's only when its parent died (an orphan), and by
// then nobody else can wait for it. So init's wait4(-1) only ever sees
// the serve process and true orphans, and every exec exit code reaches
// serve intact.

// Init tuning.
const (
	serveBackoffMin = 100 * time.Millisecond
	serveBackoffMax = 5 * time.Second
	serveStableRun  = 30 * time.Second
	serveStopGrace  = 10 * time.Second
	resizeTimeout   = 5 * time.Minute
)

// reaper is init's single waiting mechanism: one wait4(-1) loop that
// hands the statuses of processes init started to their waiters and
// discards (reaps) everything else.
type reaper struct {
	log     *slog.Logger
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	orphans atomic.Int64
}

func newReaper(log *slog.Logger) *reaper {
	return &reaper{log: log, waiters: map[int]chan unix.WaitStatus{}}
}

// start launches argv and registers its pid before the reap loop can
// observe its exit: the loop takes mu after wait4 returns, and start holds
// mu from fork to registration.
func (r *reaper) start(argv, env []string, files []*os.File) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	path := argv[0]
	if !strings.Contains(path, "/") {
		p, err := lookPath(path, os.Getenv("PATH"))
		if err != nil {
			return 0, nil, fmt.Errorf("start %s: %w", path, err)
		}
		path = p
	}
	if files == nil {
		files = []*os.File{os.Stdin, os.Stdout, os.Stderr}
	}
	p, err := os.StartProcess(path, argv, &os.ProcAttr{Env: env, Files: files})
	if err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[p.Pid] = ch
	pid := p.Pid
	// The reap loop waits for it; Go must not hold a handle to it.
	_ = p.Release()
	return pid, ch, nil
}

// run starts argv and waits for it through the reap loop.
func (r *reaper) run(ctx context.Context, argv []string) error {
	pid, ch, err := r.start(argv, os.Environ(), nil)
	if err != nil {
		return err
	}
	select {
	case ws := <-ch:
		if ws.Exited() && ws.ExitStatus() == 0 {
			return nil
		}
		return fmt.Errorf("%s: %s", strings.Join(argv, " "), describeStatus(ws))
	case <-ctx.Done():
		_ = unix.Kill(pid, unix.SIGKILL)
		<-ch
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), ctx.Err())
	}
}

func describeStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// loop reaps until ctx is done.
func (r *reaper) loop(ctx context.Context) {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigchld)
	for ctx.Err() == nil {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			// Nothing to wait for yet; a child's exit raises SIGCHLD.
			select {
			case <-sigchld:
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		case err != nil:
			r.log.Error("wait4 failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		r.mu.Lock()
		ch := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
			continue
		}
		r.orphans.Add(1)
		r.log.Debug("reaped orphan", "pid", pid, "status", describeStatus(ws))
	}
}

// initConfig drives supervise.
type initConfig struct {
	serveArgv []string
	serveEnv  []string
	log       *slog.Logger
	// onServeExit decides whether to restart serve after it exited with
	// code (tests stop the loop this way); nil restarts forever.
	onServeExit func(code int) bool
	// started, when set, receives the reaper once it runs (tests, and the
	// boot steps that run commands through it).
	started func(*reaper)
}

// supervise runs serve as init's child with restart and backoff, reaping
// orphans all along, until ctx is done (serve then gets SIGTERM and a
// grace) or onServeExit says stop. It returns the reaper's orphan count.
func supervise(ctx context.Context, cfg initConfig) (int64, error) {
	r := newReaper(cfg.log)
	lctx, stopLoop := context.WithCancel(context.WithoutCancel(ctx))
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		r.loop(lctx)
	}()
	defer func() {
		stopLoop()
		<-loopDone
	}()
	if cfg.started != nil {
		cfg.started(r)
	}
	backoff := serveBackoffMin
	for {
		began := time.Now()
		pid, ch, err := r.start(cfg.serveArgv, cfg.serveEnv, nil)
		if err != nil {
			return r.orphans.Load(), fmt.Errorf("start agent: %w", err)
		}
		cfg.log.Info("agent started", "pid", pid)
		var ws unix.WaitStatus
		select {
		case ws = <-ch:
		case <-ctx.Done():
			_ = unix.Kill(pid, unix.SIGTERM)
			select {
			case <-ch:
			case <-time.After(serveStopGrace):
				_ = unix.Kill(pid, unix.SIGKILL)
				<-ch
			}
			return r.orphans.Load(), nil
		}
		code := ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		cfg.log.Warn("agent exited", "pid", pid, "status", describeStatus(ws))
		if cfg.onServeExit != nil && !cfg.onServeExit(code) {
			return r.orphans.Load(), nil
		}
		if time.Since(began) >= serveStableRun {
			backoff = serveBackoffMin
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return r.orphans.Load(), nil
		}
		backoff = min(backoff*2, serveBackoffMax)
	}
}

// bootParams are the kernel command line settings init understands.
type bootParams struct {
	ip        string // the kernel's ip= value
	sandboxID string // atelier.sandbox_id
	hostname  string // atelier.hostname
	vsockPort string // atelier.vsock_port
	resizeDev string // atelier.resize_dev; "none" disables
	extra     map[string]string
}

func parseCmdline(s string) bootParams {
	bp := bootParams{resizeDev: "/dev/vda", extra: map[string]string{}}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"`)
		switch k {
		case "ip":
			bp.ip = v
		case "atelier.sandbox_id":
			bp.sandboxID = v
		case "atelier.hostname":
			bp.hostname = v
		case "atelier.vsock_port":
			bp.vsockPort = v
		case "atelier.resize_dev":
			bp.resizeDev = v
		default:
			if strings.HasPrefix(k, "atelier.") {
				bp.extra[strings.TrimPrefix(k, "atelier.")] = v
			}
		}
	}
	return bp
}

type mountSpec struct {
	target, fstype, source string
	flags                  uintptr
	data                   string
	// scratch file systems only go on an empty directory: mounting over
	// content (say a runtime's bind mount under /run) would hide it.
	scratch bool
}

var initMounts = []mountSpec{
	{"/proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"/sys", "sysfs", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"/dev", "devtmpfs", "devtmpfs", unix.MS_NOSUID, "mode=0755", false},
	{"/dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", false},
	{"/dev/shm", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", true},
	{"/run", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", true},
	{"/tmp", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", true},
}

// isMountpoint compares the device of a directory with its parent's.
func isMountpoint(p string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(p, &st) != nil || unix.Stat(filepath.Dir(p), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev || p == "/"
}

func emptyDir(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

func mountMissing(log *slog.Logger) {
	for _, m := range initMounts {
		if isMountpoint(m.target) || (m.scratch && !emptyDir(m.target)) {
			continue
		}
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			log.Warn("create mount point", "target", m.target, "err", err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			log.Warn("mount", "target", m.target, "fstype", m.fstype, "err", err)
		}
	}
	// With a private devpts instance, /dev/ptmx must point into it.
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	}
}

// InitOptions configures RunInit.
type InitOptions struct {
	// ServeArgv is the agent command init supervises (args appended from
	// the kernel command line).
	ServeArgv []string
	// KernelCmdline means a VM guest: read /proc/cmdline for ip=, host
	// name and atelier.* settings, and power off by reboot at the end. Off
	// in containers, where the command line is the host's.
	KernelCmdline bool
	Logger        *slog.Logger
}

// RunInit is the PID 1 path: mounts, host name, agent start (first, so
// the host can talk to the guest as early as possible), then network and
// root filesystem growth, then supervision until SIGTERM.
func RunInit(ctx context.Context, o InitOptions) error {
	log := o.Logger
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	// Mounting is PID 1's job; anywhere else it would shadow the host's
	// directories.
	if os.Getpid() == 1 {
		mountMissing(log)
	}
	var bp bootParams
	if o.KernelCmdline {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			log.Warn("read kernel command line", "err", err)
		}
		bp = parseCmdline(string(b))
	} else {
		bp = parseCmdline("")
		bp.resizeDev = "none"
	}
	argv := append([]string(nil), o.ServeArgv...)
	if bp.vsockPort != "" {
		argv = append(argv, "--vsock-port", bp.vsockPort)
	}
	if bp.sandboxID != "" {
		argv = append(argv, "--sandbox-id", bp.sandboxID)
	}
	hostname := bp.hostname
	netc, dev, netErr := parseKernelIPIfAny(bp.ip)
	if netErr != nil {
		log.Warn("ignore kernel ip= setting", "err", netErr)
	}
	if hostname == "" && netc != nil {
		hostname = netc.Hostname
	}
	if hostname == "" && bp.sandboxID != "" {
		hostname = "sandbox-" + bp.sandboxID
	}
	if hostname != "" {
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			log.Warn("set hostname", "hostname", hostname, "err", err)
		}
	}
	if netc != nil {
		argv = append(argv, "--manage-network")
	}

	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	boot := func(r *reaper) {
		go func() {
			if netc != nil {
				if hasAddress(dev, netc.IP) {
					log.Info("network already configured by the kernel", "device", dev, "ip", netc.IP)
				} else {
					nc := *netc
					nc.Hostname = hostname
					if d, err := applyNetwork(sctx, nc, dev, "/etc", r.run); err != nil {
						log.Error("configure network", "device", d, "err", err)
					} else {
						log.Info("network configured", "device", d, "ip", nc.IP)
					}
				}
			}
			if bp.resizeDev != "" && bp.resizeDev != "none" {
				if _, err := os.Stat(bp.resizeDev); err == nil {
					rctx, cancel := context.WithTimeout(sctx, resizeTimeout)
					err := r.run(rctx, []string{"resize2fs", bp.resizeDev})
					cancel()
					if err != nil {
						log.Warn("grow root filesystem", "device", bp.resizeDev, "err", err)
					} else {
						log.Info("root filesystem grown", "device", bp.resizeDev)
					}
				}
			}
		}()
	}
	_, err := supervise(sctx, initConfig{serveArgv: argv, serveEnv: os.Environ(), log: log, started: boot})
	unix.Sync()
	if os.Getpid() == 1 && o.KernelCmdline {
		// In a VM guest a reboot makes Firecracker exit: the cleanest
		// power-off. A container's init just returns.
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	return err
}

func parseKernelIPIfAny(v string) (*agent.NetworkConfig, string, error) {
	if v == "" || v == "off" || v == "none" || v == "dhcp" {
		return nil, "", nil
	}
	cfg, dev, err := parseKernelIP(v)
	if err != nil {
		return nil, "", err
	}
	return &cfg, dev, nil
}
