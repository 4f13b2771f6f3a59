// Package logkeeper owns the sandboxes' console logs under {logDir}: a
// keeper is a small process (the atelier binary re-executed as the hidden
// `atelier log-keeper`) that reads a sandbox's output from a pipe and writes
// it to <id>.log, rotating it by size into <id>.log.1 … <id>.log.<keep>.
//
// A guest that floods its console can then hold at most
// maxBytes × (keep+1) of the host's disk. The keeper is its own process, in
// its own session, for the same reason the sandboxes are: a manager
// restart must neither stop a sandbox nor cut its log. It ends when every
// writer of its pipe is gone (the sandbox stopped), after writing what they
// wrote. Nothing the guest writes is parsed; it is only counted and copied.
package logkeeper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Subcommand is the hidden atelier subcommand that runs a keeper.
const Subcommand = "log-keeper"

// Defaults of sandbox.logMaxBytes and sandbox.logKeep.
const (
	DefaultMaxBytes = 10 << 20
	DefaultKeep     = 3
)

// stopWait bounds the wait for a keeper whose writers are gone to finish
// writing and exit; after it the keeper is killed.
const stopWait = 3 * time.Second

// Options configure the keepers a runtime starts.
type Options struct {
	// Command runs a keeper: argv before the keeper's own flags. Empty:
	// this executable with Subcommand (test binaries serve it through
	// MainIfKeeper).
	Command []string
	// MaxBytes is the most one log file holds (default DefaultMaxBytes).
	MaxBytes int64
	// Keep is how many rotated files are kept besides the live one; 0
	// keeps none (DefaultKeep when negative).
	Keep int
	Log  *slog.Logger
}

// Keepers starts and stops the keepers of one runtime's logs. It holds no
// state of its own: a keeper is found through its pid file, so a restarted
// manager stops the keepers an earlier one started.
type Keepers struct{ o Options }

// New fills in the defaults.
func New(o Options) (*Keepers, error) {
	if len(o.Command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("log keeper: find own executable: %w", err)
		}
		o.Command = []string{exe, Subcommand}
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Keep < 0 {
		o.Keep = DefaultKeep
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Keepers{o: o}, nil
}

// Default is New with the defaults; for runtimes constructed without
// keepers (tests, tools).
func Default() *Keepers {
	k, err := New(Options{Keep: -1})
	if err != nil {
		// os.Executable fails only without /proc; a keeper could not run.
		return &Keepers{o: Options{Command: []string{os.Args[0], Subcommand}, MaxBytes: DefaultMaxBytes, Keep: DefaultKeep, Log: slog.Default()}}
	}
	return k
}

// MaxBytes and Keep are the limits the keepers apply.
func (k *Keepers) MaxBytes() int64 { return k.o.MaxBytes }
func (k *Keepers) Keep() int       { return k.o.Keep }

// PIDFile is where the keeper of path is recorded.
func PIDFile(path string) string { return path + ".keeper" }

// Files are path and its rotations, newest first (they may not exist).
func (k *Keepers) Files(path string) []string {
	out := []string{path}
	for i := 1; i <= k.o.Keep; i++ {
		out = append(out, path+"."+strconv.Itoa(i))
	}
	return out
}

// Start stops whatever keeper still owns path and starts a new one. It
// returns the write end of the keeper's pipe: make it the sandbox process's
// stdout and stderr, then close it. extra are more inputs the keeper reads
// until the pipe ends: FIFOs, opened read-write so that no writer coming
// and going ends them (a Firecracker's --log-path). The caller closes them.
func (k *Keepers) Start(ctx context.Context, path string, extra ...*os.File) (*os.File, error) {
	if err := k.Stop(ctx, path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("log keeper: create log dir: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("log keeper: pipe: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("log keeper: %w", err)
	}
	defer devnull.Close()
	args := append(append([]string{}, k.o.Command[1:]...),
		"--file", path,
		"--max-bytes", strconv.FormatInt(k.o.MaxBytes, 10),
		"--keep", strconv.Itoa(k.o.Keep),
		"--extra", strconv.Itoa(len(extra)))
	cmd := exec.Command(k.o.Command[0], args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, devnull, devnull
	cmd.ExtraFiles = extra
	// Nothing from the manager's environment (its secrets among it).
	cmd.Env = []string{}
	cmd.Dir = "/"
	// Its own session: neither the manager's exit nor a signal to its
	// process group ends the keeper, so the sandbox's log outlives both.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("log keeper: start: %w", err)
	}
	pid := cmd.Process.Pid
	// Reaped while this manager lives; init reaps it after a restart.
	go func() { _ = cmd.Wait() }()
	if err := writePID(PIDFile(path), pid); err != nil {
		_ = cmd.Process.Kill()
		w.Close()
		return nil, err
	}
	return w, nil
}

// Running reports whether a keeper owns path.
func (k *Keepers) Running(path string) bool {
	_, ok := k.find(path)
	return ok
}

// Stop waits for the keeper of path to finish (its writers must be gone:
// the sandbox stopped) and kills it when it does not within a few seconds.
// No keeper is success.
func (k *Keepers) Stop(ctx context.Context, path string) error {
	pid, ok := k.find(path)
	if !ok {
		return nil
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil
	}
	defer p.Release()
	deadline := time.Now().Add(stopWait)
	for owns(pid, path) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if !owns(pid, path) {
		return nil
	}
	// p holds a pidfd, so the signal cannot reach a process that took the
	// pid over after the check.
	k.o.Log.Warn("log keeper did not end with its sandbox; killing it", "path", path, "pid", pid)
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("log keeper: kill %d: %w", pid, err)
	}
	for i := 0; i < 400 && owns(pid, path); i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if owns(pid, path) {
		return fmt.Errorf("log keeper %d of %s still running after SIGKILL", pid, path)
	}
	return nil
}

// Remove stops the keeper of path and removes path, its rotations and the
// keeper's pid file. Absent files are success.
func (k *Keepers) Remove(ctx context.Context, path string) error {
	if err := k.Stop(ctx, path); err != nil {
		return err
	}
	var errs []error
	// Rotations from a larger keep than today's go too.
	files, _ := filepath.Glob(globEscape(path) + ".[0-9]*")
	for _, p := range append(append(k.Files(path), files...), PIDFile(path)) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}

func (k *Keepers) find(path string) (int, bool) {
	b, err := os.ReadFile(PIDFile(path))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	return pid, owns(pid, path)
}

// owns reports whether pid is a live keeper of path: the pid file can
// outlive its process and the pid be reused, so its command line and state
// are the proof.
func owns(pid int, path string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !bytes.Contains(b, []byte("\x00--file\x00"+path+"\x00")) {
		return false
	}
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
			return false
		}
	}
	return true
}

func writePID(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("log keeper: write pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("log keeper: write pid file: %w", err)
	}
	return nil
}
