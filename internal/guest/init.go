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
	// stopGrace is how long serve may take to exit after SIGTERM before
	// SIGKILL; default serveStopGrace.
	stopGrace time.Duration
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
	grace := cfg.stopGrace
	if grace <= 0 {
		grace = serveStopGrace
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
			case <-time.After(grace):
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
