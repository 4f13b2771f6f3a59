package registry

import (
	"atelier/internal/network"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// capNetBindService is CAP_NET_BIND_SERVICE (linux/capability.h).
const capNetBindService = 10

// ErrUnavailable wraps every reason the registry cannot run (not installed,
// no node, never became ready); the API answers 503 with the detail.
var ErrUnavailable = errors.New("npm registry unavailable")

// Options configure a Supervisor.
type Options struct {
	// AppDir holds the installed Verdaccio (see Install).
	AppDir string
	// Version is the Verdaccio version AppDir must hold ("" skips the check).
	Version string
	// StateDir holds config.yaml, storage/, htpasswd, verdaccio.log and
	// verdaccio.pid: advanced.server.verdaccio.dir in production, outside
	// the manager's private data dir.
	StateDir string
	// User is the system account Verdaccio runs as when the manager is
	// root, created when missing (EnsureUser). It is required then:
	// Verdaccio never runs as root.
	User string
	// FormerStateDir is where an older Atelier kept the state
	// ({dataDir}/registry); a Verdaccio it left running is reaped too.
	FormerStateDir string
	// Listen is the bridge address and port. An unspecified address
	// (0.0.0.0) is refused: the cache must not face the internet.
	Listen netip.AddrPort
	// Uplink is the upstream registry; "" asks the host's npm (HostRegistry).
	Uplink string
	// NetnsPath is the network namespace Verdaccio runs and is probed in;
	// "" is the manager's own (production).
	NetnsPath string
	// Node is the node binary; default "node" from PATH.
	Node string
	// Command replaces the argv before Verdaccio's own flags; default
	// [Node, AppDir/node_modules/verdaccio/bin/verdaccio].
	Command []string
	// MinBackoff and MaxBackoff bound the restart delay, which doubles after
	// every exit and resets once a run lasted StableAfter.
	MinBackoff, MaxBackoff, StableAfter time.Duration
	// ReadyTimeout bounds Start's wait for the first successful ping.
	ReadyTimeout time.Duration
	// StopGrace is the SIGTERM -> SIGKILL delay.
	StopGrace time.Duration
	// MaxLogBytes rotates verdaccio.log to verdaccio.log.1 beyond this size.
	MaxLogBytes int64
	Log         *slog.Logger
}

func (o *Options) defaults() {
	if o.Node == "" {
		o.Node = "node"
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 500 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.StableAfter <= 0 {
		o.StableAfter = time.Minute
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 30 * time.Second
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 5 * time.Second
	}
	if o.MaxLogBytes <= 0 {
		o.MaxLogBytes = 10 << 20
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Supervisor runs Verdaccio as a child process in its own process group:
// it restarts it with exponential backoff when it dies, captures its output
// to verdaccio.log, and kills the whole group on Stop. Its methods are safe
// for concurrent use.
type Supervisor struct {
	opts   Options
	log    *slog.Logger
	client *http.Client

	mu      sync.Mutex // held across Start and Stop
	cancel  context.CancelFunc
	done    chan struct{}
	running atomic.Bool
	uplink  atomic.Pointer[string]
	pid     atomic.Int64
	starts  atomic.Int64
	tailMu  sync.Mutex
	tailBuf []string
}

// NewSupervisor checks the options; it starts nothing.
func NewSupervisor(opts Options) (*Supervisor, error) {
	opts.defaults()
	if !opts.Listen.IsValid() || opts.Listen.Port() == 0 {
		return nil, fmt.Errorf("registry: listen address %q: want ip:port", opts.Listen)
	}
	if opts.Listen.Addr().IsUnspecified() {
		return nil, fmt.Errorf("registry: listen address %s: refusing to listen on every interface; use the bridge address", opts.Listen)
	}
	if opts.StateDir == "" || !filepath.IsAbs(opts.StateDir) {
		return nil, fmt.Errorf("registry: state dir %q: want an absolute path", opts.StateDir)
	}
	if len(opts.Command) == 0 && (opts.AppDir == "" || !filepath.IsAbs(opts.AppDir)) {
		return nil, fmt.Errorf("registry: install dir %q: want an absolute path", opts.AppDir)
	}
	if os.Geteuid() == 0 && (opts.User == "" || opts.User == "root") {
		return nil, fmt.Errorf("registry: user %q: refusing to run verdaccio as root; name an unprivileged system user (advanced.server.verdaccio.user)", opts.User)
	}
	s := &Supervisor{opts: opts, log: opts.Log.With("component", "registry")}
	// No Proxy: probes go straight to the registry and the uplink, as
	// Verdaccio's own requests do.
	s.client = &http.Client{Transport: &http.Transport{
		DialContext:       network.DialAt(opts.NetnsPath, nil),
		DisableKeepAlives: true,
	}}
	return s, nil
}

// URL is the registry's address, as guests use it.
func (s *Supervisor) URL() string { return "http://" + s.opts.Listen.String() + "/" }

// StorageDir is where Verdaccio keeps packages.
func (s *Supervisor) StorageDir() string { return filepath.Join(s.opts.StateDir, "storage") }

// LogPath is the captured output of Verdaccio.
func (s *Supervisor) LogPath() string { return filepath.Join(s.opts.StateDir, "verdaccio.log") }

func (s *Supervisor) configPath() string { return filepath.Join(s.opts.StateDir, "config.yaml") }
func (s *Supervisor) pidPath() string    { return filepath.Join(s.opts.StateDir, "verdaccio.pid") }

// PID is the current Verdaccio process (0 when none runs).
func (s *Supervisor) PID() int { return int(s.pid.Load()) }

// Starts counts processes started since NewSupervisor (restarts included).
func (s *Supervisor) Starts() int { return int(s.starts.Load()) }

// Uplink is the upstream registry: Options.Uplink, else the host's npm
// registry, looked up once.
func (s *Supervisor) Uplink(ctx context.Context) (string, error) {
	if u := s.uplink.Load(); u != nil {
		return *u, nil
	}
	var u string
	var err error
	if s.opts.Uplink != "" {
		u, err = normalizeUplink(s.opts.Uplink)
	} else {
		u, err = HostRegistry(ctx)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.uplink.Store(&u)
	return u, nil
}

// Running reports whether the supervisor is started (the process itself may
// be between restarts; Online says whether it answers).
func (s *Supervisor) Running() bool { return s.running.Load() }

// Start writes the config, starts Verdaccio and waits until it answers its
// ping. A Verdaccio that never answers is stopped again and the error says
// why, with the end of its log. Starting a started supervisor is a no-op.
func (s *Supervisor) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return nil
	}
	argv, err := s.argv()
	if err != nil {
		return err
	}
	uplink, err := s.Uplink(ctx)
	if err != nil {
		return err
	}
	acct, err := s.account(ctx)
	if err != nil {
		return err
	}
	env, err := s.prepare(ctx, acct, uplink)
	if err != nil {
		return err
	}
	s.reapLeftover()
	s.tailMu.Lock()
	s.tailBuf = nil // an error report speaks of this start only
	s.tailMu.Unlock()

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ready := make(chan struct{})
	done := make(chan struct{})
	s.cancel, s.done = cancel, done
	s.running.Store(true)
	go func() {
		defer close(done)
		s.loop(runCtx, argv, env, acct, ready)
	}()

	t := time.NewTimer(s.opts.ReadyTimeout)
	defer t.Stop()
	select {
	case <-ready:
		s.log.Info("npm registry ready", "url", s.URL(), "uplink", uplink, "pid", s.PID())
		return nil
	case <-t.C:
		err = fmt.Errorf("%w: verdaccio did not answer %s/-/ping within %s; last output:\n%s",
			ErrUnavailable, strings.TrimSuffix(s.URL(), "/"), s.opts.ReadyTimeout, strings.Join(s.tail(), "\n"))
	case <-ctx.Done():
		err = fmt.Errorf("registry: start: %w", ctx.Err())
	}
	s.stopLocked(context.WithoutCancel(ctx))
	return err
}

// Stop kills Verdaccio's process group (SIGTERM, then SIGKILL after
// StopGrace) and ends supervision. Stopping a stopped supervisor is a no-op.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked(ctx)
}

func (s *Supervisor) stopLocked(ctx context.Context) error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("registry: stop: %w", ctx.Err())
	}
	s.cancel, s.done = nil, nil
	s.running.Store(false)
	return nil
}

// Online reports whether Verdaccio answers its ping now.
func (s *Supervisor) Online(ctx context.Context) bool {
	return s.get(ctx, s.URL()+"-/ping", time.Second)
}

// UplinkHealthy reports whether the uplink answers its ping, probed from
// Verdaccio's namespace.
func (s *Supervisor) UplinkHealthy(ctx context.Context, uplink string) bool {
	if uplink == "" {
		return false
	}
	return s.get(ctx, uplink+"-/ping", 5*time.Second)
}

func (s *Supervisor) get(ctx context.Context, url string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	res, err := s.client.Do(req)
	if err != nil {
		return false
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
	return res.StatusCode/100 == 2
}

func (s *Supervisor) argv() ([]string, error) {
	if len(s.opts.Command) > 0 {
		return append([]string(nil), s.opts.Command...), nil
	}
	if s.opts.Version != "" && !Installed(s.opts.AppDir, s.opts.Version) {
		return nil, fmt.Errorf("%w: verdaccio %s is not installed in %s (run `atelier registry install`)", ErrUnavailable, s.opts.Version, s.opts.AppDir)
	}
	if _, err := os.Stat(binPath(s.opts.AppDir)); err != nil {
		return nil, fmt.Errorf("%w: verdaccio is not installed in %s (run `atelier registry install`): %w", ErrUnavailable, s.opts.AppDir, err)
	}
	node, err := exec.LookPath(s.opts.Node)
	if err != nil {
		return nil, fmt.Errorf("%w: node not found (install Node.js 20+): %w", ErrUnavailable, err)
	}
	return []string{node, binPath(s.opts.AppDir)}, nil
}

// account is the user Verdaccio runs as: nil when the manager is not root
// (it cannot switch users, and runs it as itself).
func (s *Supervisor) account(ctx context.Context) (*Account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	a, err := EnsureUser(ctx, s.opts.User)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return &a, nil
}

// prepare lays out the state dir for a Verdaccio running as acct, writes
// its config and returns its environment. Verdaccio may write only its
// storage; it reads the install, the config and the uplink's CA through
// its group; the log and the pid file are the manager's alone:
//
//	StateDir/            root:acct 0750
//	  app/               root, as installed (world-readable code)
//	  config.yaml        root:acct 0640
//	  uplink-ca.pem      root:acct 0640
//	  plugins/           root:acct 0750
//	  storage/           acct:acct 0750, everything below acct's
//	  verdaccio.log, verdaccio.pid   root 0600
//
// Modes are set explicitly, so neither the umask nor an older layout
// leaves them wider.
func (s *Supervisor) prepare(ctx context.Context, acct *Account, uplink string) ([]string, error) {
	gid := -1
	if acct != nil {
		gid = int(acct.GID)
	}
	for _, d := range []string{s.opts.StateDir, filepath.Join(s.opts.StateDir, "plugins"), s.StorageDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("registry: create %s: %w", d, err)
		}
		if acct != nil && d != s.StorageDir() {
			if err := os.Chown(d, 0, gid); err != nil {
				return nil, fmt.Errorf("registry: chown %s: %w", d, err)
			}
		}
		if err := os.Chmod(d, 0o750); err != nil {
			return nil, fmt.Errorf("registry: chmod %s: %w", d, err)
		}
	}
	if acct != nil {
		// The storage is Verdaccio's, including what a root-run one (an
		// older Atelier) filled.
		if err := chownTree(s.StorageDir(), acct.UID, acct.GID); err != nil {
			return nil, fmt.Errorf("registry: give %s to %s: %w", s.StorageDir(), acct.Name, err)
		}
		for _, d := range []string{s.opts.StateDir, s.opts.AppDir} {
			if d == "" {
				continue
			}
			if err := reachable(d, *acct); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
		}
	}
	// Files only the manager reads, from a layout where they were wider.
	for _, f := range []string{s.LogPath(), s.LogPath() + ".1", s.pidPath()} {
		if err := os.Chmod(f, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("registry: chmod %s: %w", f, err)
		}
	}
	cfg, err := verdaccioConfig(s.opts.StateDir, uplink)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(s.configPath(), cfg, 0o640, gid); err != nil {
		return nil, fmt.Errorf("registry: write config: %w", err)
	}
	ca, err := s.uplinkCA(ctx, uplink, gid)
	if err != nil {
		return nil, err
	}
	return verdaccioEnv(s.opts.StateDir, ca), nil
}

// uplinkCA gives Verdaccio the CA bundle the manager's node and npm trust
// for an https uplink (NODE_EXTRA_CA_CERTS, else npm's cafile): hosts that
// reach the registry through a TLS-intercepting proxy trust its CA that
// way, and Verdaccio no longer inherits the manager's environment. The
// bundle is copied into the state dir, so it need not be readable by the
// registry's user where it lies. "" when there is none.
func (s *Supervisor) uplinkCA(ctx context.Context, uplink string, gid int) (string, error) {
	if !strings.HasPrefix(uplink, "https:") {
		return "", nil
	}
	src := os.Getenv("NODE_EXTRA_CA_CERTS")
	if src == "" {
		src = hostCAFile(ctx)
	}
	dst := filepath.Join(s.opts.StateDir, "uplink-ca.pem")
	if src == "" {
		_ = os.Remove(dst)
		return "", nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		s.log.Warn("cannot read the uplink's CA bundle; verdaccio trusts node's built-in CAs only", "path", src, "err", err)
		_ = os.Remove(dst)
		return "", nil
	}
	if err := writeFileAtomic(dst, b, 0o640, gid); err != nil {
		return "", fmt.Errorf("registry: copy the uplink's CA bundle: %w", err)
	}
	return dst, nil
}

// passEnv are the manager's variables Verdaccio still gets: how to reach
// the uplink (Verdaccio reads the proxy variables itself) and the zone.
var passEnv = []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "TZ"}

// verdaccioEnv is Verdaccio's whole environment: none of the manager's
// secrets (ATELIER_*, credentials, tokens) reach it.
func verdaccioEnv(stateDir, caFile string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	env := []string{"PATH=" + path, "HOME=" + stateDir, "NODE_ENV=production"}
	if caFile != "" {
		env = append(env, "NODE_EXTRA_CA_CERTS="+caFile)
	}
	for _, k := range passEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// loop keeps one Verdaccio running until ctx ends.
func (s *Supervisor) loop(ctx context.Context, argv, env []string, acct *Account, ready chan struct{}) {
	var readyOnce sync.Once
	backoff := s.opts.MinBackoff
	for {
		started := time.Now()
		err := s.runOnce(ctx, argv, env, acct, func() { readyOnce.Do(func() { close(ready) }) })
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) >= s.opts.StableAfter {
			backoff = s.opts.MinBackoff
		}
		s.log.Warn("verdaccio exited; restarting", "err", err, "after", backoff, "tail", strings.Join(s.tail(), " | "))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.opts.MaxBackoff)
	}
}

// runOnce starts one Verdaccio process, waits for it to end (or kills its
// group when ctx ends) and returns why it ended.
func (s *Supervisor) runOnce(ctx context.Context, argv, env []string, acct *Account, onReady func()) error {
	args := append(append([]string(nil), argv...), "--config", s.configPath(), "--listen", s.opts.Listen.String())
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = s.opts.StateDir
	// Its own process group: Stop takes out anything it spawned too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if acct != nil {
		// No supplementary groups: root's would otherwise stay.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: acct.UID, Gid: acct.GID, Groups: []uint32{}}
		if s.opts.Listen.Port() < 1024 {
			// The one privilege a low port needs, and nothing else.
			cmd.SysProcAttr.AmbientCaps = []uintptr{capNetBindService}
		}
	}
	cmd.Env = env
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("create output pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	// Forked from a thread inside NetnsPath, the child lives there.
	err = network.DoAt(s.opts.NetnsPath, cmd.Start)
	w.Close()
	if err != nil {
		r.Close()
		return fmt.Errorf("start verdaccio: %w", err)
	}
	pid := cmd.Process.Pid
	s.pid.Store(int64(pid))
	s.starts.Add(1)
	_ = writeFileAtomic(s.pidPath(), []byte(strconv.Itoa(pid)+"\n"), 0o600, -1)
	s.log.Info("verdaccio started", "pid", pid, "listen", s.opts.Listen.String())

	outDone := make(chan struct{})
	go func() { defer close(outDone); s.capture(r) }()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	go s.probe(probeCtx, onReady)

	var werr error
	select {
	case werr = <-exited:
	case <-ctx.Done():
		werr = s.killGroup(pid, exited)
	}
	// Whatever the leader left behind in its group goes with it.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	s.pid.Store(0)
	if ctx.Err() != nil {
		_ = os.Remove(s.pidPath())
	}
	select {
	case <-outDone:
	case <-time.After(2 * time.Second):
		r.Close() // a descendant outside the group still holds the pipe
	}
	return werr
}

func (s *Supervisor) killGroup(pid int, exited <-chan error) error {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	t := time.NewTimer(s.opts.StopGrace)
	defer t.Stop()
	select {
	case err := <-exited:
		return err
	case <-t.C:
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	return <-exited
}

// probe pings until the registry answers once, then reports it ready.
func (s *Supervisor) probe(ctx context.Context, onReady func()) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if s.Online(ctx) {
			onReady()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reapLeftover kills the Verdaccio a crashed manager left running (it
// would hold the port). The pid file alone is not trusted: the process must
// still run with our config file on its command line.
func (s *Supervisor) reapLeftover() {
	b, err := os.ReadFile(s.pidPath())
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	ours := err == nil && strings.Contains(string(cmdline), s.configPath())
	if s.opts.FormerStateDir != "" && err == nil {
		ours = ours || strings.Contains(string(cmdline), filepath.Join(s.opts.FormerStateDir, "config.yaml"))
	}
	if !ours {
		_ = os.Remove(s.pidPath())
		return
	}
	s.log.Warn("killing a verdaccio left by a previous manager", "pid", pid)
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = os.Remove(s.pidPath())
}

// logLine is the part of Verdaccio's JSON (pino) log lines we read.
type logLine struct {
	Level   int    `json:"level"`
	Msg     string `json:"msg"`
	Sub     string `json:"sub"`
	Status  int    `json:"status"`
	Request struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
}

// capture copies Verdaccio's output to its log file, keeps the last lines
// that are not request logs for error reports, raises warnings and errors to the manager's log, and
// records tarball downloads as the tarballs' last use.
func (s *Supervisor) capture(r io.ReadCloser) {
	defer r.Close()
	lw := &rotatingLog{path: s.LogPath(), max: s.opts.MaxLogBytes}
	defer lw.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		lw.Write(append(append(make([]byte, 0, len(line)+1), line...), '\n'))
		var l logLine
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &l) != nil {
			// Node's own warnings and crash traces.
			s.remember(string(line))
			s.log.Debug("verdaccio output", "line", string(line))
			continue
		}
		if l.Sub != "" || l.Request.URL != "" {
			// The request log: kept in the file only.
			if l.Sub == "in" && l.Request.Method == http.MethodGet && l.Status == http.StatusOK {
				touchTarball(s.StorageDir(), l.Request.URL, time.Now())
			}
			continue
		}
		s.remember(l.Msg)
		switch {
		case l.Level >= 50:
			s.log.Error("verdaccio: " + l.Msg)
		case l.Level >= 40 && !strings.HasPrefix(l.Msg, "http address"):
			s.log.Warn("verdaccio: " + l.Msg)
		default:
			s.log.Debug("verdaccio: " + l.Msg)
		}
	}
}

func (s *Supervisor) remember(line string) {
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	if len(line) > 500 {
		line = line[:500] + "…"
	}
	s.tailBuf = append(s.tailBuf, line)
	if len(s.tailBuf) > 10 {
		s.tailBuf = s.tailBuf[len(s.tailBuf)-10:]
	}
}

func (s *Supervisor) tail() []string {
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	return append([]string(nil), s.tailBuf...)
}

// rotatingLog appends to path and moves it to path.1 beyond max bytes, so
// Verdaccio's request log cannot fill the disk.
type rotatingLog struct {
	path string
	max  int64
	f    *os.File
	size int64
}

func (l *rotatingLog) Write(p []byte) {
	if l.f != nil && l.size+int64(len(p)) > l.max {
		l.f.Close()
		l.f = nil
		_ = os.Rename(l.path, l.path+".1")
	}
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return
		}
		l.f, l.size = f, fi.Size()
	}
	n, _ := l.f.Write(p)
	l.size += int64(n)
}

func (l *rotatingLog) Close() {
	if l.f != nil {
		l.f.Close()
	}
}

// writeFileAtomic replaces path with data, mode (and group gid unless -1)
// set on the temp file before it takes the name.
func writeFileAtomic(path string, data []byte, mode os.FileMode, gid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if gid >= 0 {
		if err := tmp.Chown(-1, gid); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
