// Package process is the mock-mode runtime: each sandbox is the real guest
// agent running as a local process of the invoking user, with its own home
// directory as file root. Nothing needs root and nothing on the host changes
// outside the state directory, yet exec, files, terminals and dev commands
// behave as they do in a VM.
package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"atelier/internal/agent"
	"atelier/internal/ids"
	"atelier/internal/logkeeper"
	"atelier/internal/sandbox"
)

// Options locate the agent binary and the per-sandbox state.
type Options struct {
	// Command runs the agent: the atelier binary with "agent" (its embedded
	// agent), or an atelier-agent binary with no extra arguments.
	Command []string
	// StateDir holds one directory per sandbox (home, logs, config).
	StateDir string
	// SocketDir holds <id>/agent.sock; keep it short, unix socket paths are limited to 107 bytes.
	SocketDir string
	// StopGrace is how long a stopping agent gets before SIGKILL.
	StopGrace time.Duration
	// Logs starts the keeper that writes and rotates each agent's output,
	// <state>/<id>/log/agent.log (default logkeeper.Default()).
	Logs *logkeeper.Keepers
	Log  *slog.Logger
}

// Runtime runs sandboxes as local agent processes.
type Runtime struct{ o Options }

var _ sandbox.Runtime = (*Runtime)(nil)

// New checks the options.
func New(o Options) (*Runtime, error) {
	if len(o.Command) == 0 {
		return nil, errors.New("process runtime: no agent command")
	}
	if o.StateDir == "" || o.SocketDir == "" {
		return nil, errors.New("process runtime: state and socket dirs are required")
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Logs == nil {
		o.Logs = logkeeper.Default()
	}
	return &Runtime{o: o}, nil
}

func (r *Runtime) dir(id string) string     { return filepath.Join(r.o.StateDir, id) }
func (r *Runtime) pidFile(id string) string { return filepath.Join(r.dir(id), "agent.pid") }

// LogPath is the agent's output, written by its log keeper.
func (r *Runtime) LogPath(id string) string { return filepath.Join(r.dir(id), "log", "agent.log") }

// AgentSocket is where the sandbox's agent listens.
func (r *Runtime) AgentSocket(id string) string {
	return filepath.Join(r.o.SocketDir, id, "agent.sock")
}

// AgentDialer reaches the sandbox's agent.
func (r *Runtime) AgentDialer(id string) agent.Dialer { return agent.UnixDialer(r.AgentSocket(id)) }

// Home is the sandbox's file root.
func (r *Runtime) Home(id string) string { return filepath.Join(r.dir(id), "home") }

// Boot starts the agent. It runs in its own session so that neither a
// manager restart nor the caller's context ends it.
func (r *Runtime) Boot(ctx context.Context, inst sandbox.Instance) error {
	id := inst.ID
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("boot: invalid sandbox id %q", id)
	}
	if alive, _ := r.Alive(ctx, id); alive {
		return fmt.Errorf("boot %s: already running", id)
	}
	home, logs, etc, tmp := r.Home(id), filepath.Join(r.dir(id), "log"), filepath.Join(r.dir(id), "etc"), filepath.Join(r.dir(id), "tmp")
	for _, d := range []string{home, logs, etc, tmp, filepath.Dir(r.AgentSocket(id))} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("boot %s: %w", id, err)
		}
	}
	sock := r.AgentSocket(id)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("boot %s: remove stale socket: %w", id, err)
	}
	// A keeper, not the agent, writes the log, and rotates it: the
	// agent's output is the guest's to fill.
	logf, err := r.o.Logs.Start(ctx, r.LogPath(id))
	if err != nil {
		return fmt.Errorf("boot %s: %w", id, err)
	}
	defer logf.Close()
	args := append(append([]string{}, r.o.Command[1:]...),
		"serve", "--vsock-port", "0", "--unix", sock, "--sandbox-id", id,
		"--file-root", home, "--workdir", home, "--log-dir", logs,
		"--config-path", filepath.Join(etc, "config.json"), "--etc-dir", etc,
		// The host's own /etc/atelier is not the guest's image: mock guests
		// have no image services, but keep the desired state of theirs.
		"--image-manifest=", "--state-dir", filepath.Join(r.dir(id), "state"))
	cmd := exec.Command(r.o.Command[0], args...)
	cmd.Dir = home
	cmd.Env = agentEnv(id, home, tmp)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("boot %s: start agent: %w", id, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while we are still around; after a manager restart
	// the process is no longer our child and init reaps it.
	go func() { _ = cmd.Wait() }()
	if err := os.WriteFile(r.pidFile(id), []byte(strconv.Itoa(pid)), 0o600); err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return fmt.Errorf("boot %s: write pid file: %w", id, err)
	}
	r.o.Log.Debug("agent process started", "sandbox_id", id, "pid", pid)
	return nil
}

// agentEnv is everything a mock agent, and so every command it runs,
// inherits. Nothing comes from the manager's environment but PATH, so the
// developer's tools are found: the manager's own variables hold its secrets
// (ATELIER_JWT_SECRET, ATELIER_GITHUB_CLIENT_SECRET, cloud credentials of the
// shell that started it), and a sandbox is code the developer did not
// necessarily write.
func agentEnv(id, home, tmp string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	return []string{
		"PATH=" + path,
		"HOME=" + home,
		"USER=" + name,
		"LOGNAME=" + name,
		"LANG=C.UTF-8",
		// Exec output is not a terminal; the agent's PTYs set their own TERM.
		"TERM=dumb",
		"TMPDIR=" + tmp,
		"ATELIER_SANDBOX_ID=" + id,
	}
}

// pid returns the agent's pid when it is alive and really ours: the pid file
// alone could name a recycled pid.
func (r *Runtime) pid(id string) (int, bool) {
	b, err := os.ReadFile(r.pidFile(id))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, false
	}
	if !bytes.Contains(cmdline, []byte("--sandbox-id\x00"+id+"\x00")) {
		return 0, false
	}
	// A zombie has exited; it only waits to be reaped.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
			return 0, false
		}
	}
	return pid, true
}

// Alive reports whether the sandbox's agent process runs.
func (r *Runtime) Alive(_ context.Context, id string) (bool, error) {
	if !ids.ValidSandboxID(id) {
		return false, fmt.Errorf("alive: invalid sandbox id %q", id)
	}
	_, ok := r.pid(id)
	return ok, nil
}

// GrowDisk has nothing to grow: the mock-mode guest's files live in a host
// directory, not on the volume. A sandbox that is not running is an error,
// as for the real runtimes.
func (r *Runtime) GrowDisk(_ context.Context, id string) error {
	if ok, err := r.Alive(context.Background(), id); err != nil || !ok {
		return fmt.Errorf("grow disk of %s: not running (%v)", id, err)
	}
	return nil
}

// Stop ends the agent and everything it started (its session), keeping the
// sandbox's files. An agent that is not running is already stopped.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("stop: invalid sandbox id %q", id)
	}
	pid, ok := r.pid(id)
	if ok {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		deadline := time.Now().Add(r.o.StopGrace)
		for time.Now().Before(deadline) {
			if _, alive := r.pid(id); !alive {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, alive := r.pid(id); alive {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			for i := 0; i < 200; i++ {
				if _, alive := r.pid(id); !alive {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		r.o.Log.Debug("agent process stopped", "sandbox_id", id, "pid", pid)
	}
	for _, p := range []string{r.pidFile(id), r.AgentSocket(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stop %s: %w", id, err)
		}
	}
	// The agent's session is gone, and with it the keeper's writers.
	if err := r.o.Logs.Stop(ctx, r.LogPath(id)); err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	return nil
}

// Destroy stops the agent and removes the sandbox's files.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	if err := r.Stop(ctx, id); err != nil {
		return err
	}
	for _, p := range []string{r.dir(id), filepath.Dir(r.AgentSocket(id))} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("destroy %s: %w", id, err)
		}
	}
	return nil
}

// List returns the ids that have state on disk, for leak checks.
func (r *Runtime) List(context.Context) ([]string, error) {
	ents, err := os.ReadDir(r.o.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ids.ValidSandboxID(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Check reports whether a sandbox could boot now: the agent command is an
// executable file (an upgrade that removed the binary the manager runs
// from leaves it unable to start any agent) and the state and socket
// directories are writable. It is the runtime's part of /health/ready.
func (r *Runtime) Check(context.Context) error {
	bin := r.o.Command[0]
	fi, err := os.Stat(bin)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("agent binary %s is not an executable file", bin)
	}
	for _, d := range []string{r.o.StateDir, r.o.SocketDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		if err := syscall.Access(d, 2 /* W_OK */); err != nil {
			return fmt.Errorf("state dir %s is not writable: %w", d, err)
		}
	}
	return nil
}
