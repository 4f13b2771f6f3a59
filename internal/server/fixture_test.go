package server

import (
	"atelier/internal/logkeeper"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"atelier/internal/config"
	"atelier/internal/network"
	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/container"
	"atelier/internal/runtime/container/containertest"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/testenv"
	"atelier/internal/testimage"
)

// Environment of a manager subprocess started by the fault-injection test.
const (
	envManager = "ATELIER_TEST_MANAGER" // config file path
	envPrefix  = "ATELIER_TEST_PREFIX"  // namespace prefix
	envCrash   = "ATELIER_TEST_CRASH"   // op:step:when to die at, SIGKILL
)

func TestMain(m *testing.M) {
	logkeeper.MainIfKeeper()
	if path := os.Getenv(envManager); path != "" {
		os.Exit(runTestManager(path))
	}
	if path := os.Getenv(envReplica); path != "" {
		os.Exit(runTestReplica(path))
	}
	code := m.Run()
	testenv.StopPostgres()
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

// runTestManager is a real manager process for the fault-injection test: it
// serves until it is killed, optionally killing itself at a crash point.
func runTestManager(path string) int {
	cfg, err := loadTestManager(path, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prefix := os.Getenv(envPrefix)
	host, err := netns.GetFromName(prefix + "host")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return serveTestManager(cfg, prodOptions(prefix, host, slog.New(slog.NewTextHandler(os.Stderr, nil))))
}

// loadTestManager reads a manager subprocess's config and arms the crash
// point envCrash names: the process SIGKILLs itself on reaching it. With
// trace every point it passes is written to stderr, for a test that looks
// for steps no crash point covers.
func loadTestManager(path string, trace bool) (*config.Config, error) {
	cfg, err := config.Load(config.Options{File: path, Env: []string{}})
	if err != nil {
		return nil, err
	}
	if cp := os.Getenv(envCrash); cp != "" {
		sandbox.CrashHook = func(op, step, when string) {
			if trace {
				fmt.Fprintf(os.Stderr, "crash point passed: %s:%s:%s\n", op, step, when)
			}
			if op+":"+step+":"+when == cp {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	return cfg, nil
}

// serveTestManager runs a manager subprocess until it is killed; its exit
// code is 1 when the manager cannot start or serve.
func serveTestManager(cfg *config.Config, opts Options) int {
	ctx := context.Background()
	srv, err := New(ctx, cfg, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Listen(false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func prodOptions(prefix string, host netns.NsHandle, log *slog.Logger) Options {
	return Options{
		Log:       log,
		Network:   func(o *network.Options) { o.HostNS, o.NetnsPrefix = host, prefix+"sb-" },
		Container: func(o *container.Options) { o.CgroupParent = "/" + prefix + "cg" },
	}
}

var (
	agentOnce sync.Once
	agentDir  string
	agentBin  string
	agentErr  error
)

// buildAgent builds the static agent once per test binary.
func buildAgent(t testing.TB) string {
	agentOnce.Do(func() {
		agentDir, agentErr = os.MkdirTemp("", "atlagent")
		if agentErr != nil {
			return
		}
		agentBin = filepath.Join(agentDir, "atelier-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "../../cmd/atelier-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("build agent: %v\n%s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentBin
}

func sh(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fixture is a production host in miniature: a "host" namespace with the
// bridge and an egress route to a "wan" namespace, a state dir with the
// test image as dev-base, and a production config using runc.
type fixture struct {
	prefix string
	host   netns.NsHandle
	dir    string
	cfg    *config.Config
	uc     *http.Client // one client: a transport per call would pile up idle connections
	// afterSweep runs once the sweep is done: what holds the state dir (the
	// dev-base test's XFS pool) must outlive the sweep, or a sandbox a failed
	// test left running is out of the sweep's reach and stays on the host.
	afterSweep []func()
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: runs runc containers, loop mounts and network namespaces")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("requires runc (apt-get install runc)")
	}
	rb := make([]byte, 3)
	rand.Read(rb)
	f := &fixture{prefix: "atlt-" + hex.EncodeToString(rb) + "-"}
	host, wan := f.prefix+"host", f.prefix+"wan"
	sh(t, "ip", "netns", "add", host)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", host).Run() })
	sh(t, "ip", "netns", "add", wan)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", wan).Run() })
	sh(t, "ip", "-n", host, "link", "set", "lo", "up")
	sh(t, "ip", "-n", host, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns", wan)
	sh(t, "ip", "-n", host, "addr", "add", "198.51.100.1/24", "dev", "wan0")
	sh(t, "ip", "-n", host, "link", "set", "wan0", "up")
	sh(t, "ip", "-n", wan, "addr", "add", "198.51.100.2/24", "dev", "wan1")
	sh(t, "ip", "-n", wan, "link", "set", "wan1", "up")
	sh(t, "ip", "-n", host, "route", "add", "default", "via", "198.51.100.2")
	h, err := netns.GetFromName(host)
	if err != nil {
		t.Fatal(err)
	}
	f.host = h
	t.Cleanup(func() { h.Close() })
	// runc leaves the (empty) cgroup parent it was given; remove ours.
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + f.prefix + "cg")
		for _, d := range dirs {
			subs, _ := filepath.Glob(d + "/*/")
			for _, sub := range subs {
				os.Remove(sub)
			}
			os.Remove(d)
		}
	})

	// Short paths: unix socket paths are limited to 107 bytes.
	if f.dir, err = os.MkdirTemp("", "atl"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(f.dir) })
	// Runs after the manager stopped (registered before it starts): a test
	// that failed half-way must not leave sandboxes running on the host.
	t.Cleanup(func() {
		f.sweep(t)
		for _, fn := range f.afterSweep {
			fn()
		}
	})
	cfg := config.Default()
	cfg.Server.Mode = config.ModeProduction
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	// The edge and the SSH proxy start with every manager; loopback ports of their own.
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = filepath.Join(f.dir, "data")
	cfg.Advanced.Server.Verdaccio.Dir = filepath.Join(f.dir, "registry")
	cfg.Server.SocketPath = filepath.Join(f.dir, "atelier.sock")
	cfg.Sandbox.Runtime = "container"
	cfg.Sandbox.StateDir = filepath.Join(f.dir, "s")
	cfg.Sandbox.LogDir = filepath.Join(f.dir, "log")
	cfg.Setup.Storage.Method = "file"
	cfg.Domain.BaseDomain = "atelier.test"
	cfg.Domain.Dashboard = "sandbox.atelier.test"
	cfg.Domain.SSH.Hostname = "ssh.atelier.test"
	cfg.Domain.TLS.Email = "ops@atelier.test"
	cfg.Auth.JWTSecret = strings.Repeat("k", 40)
	cfg.Auth.GitHub.ClientID, cfg.Auth.GitHub.ClientSecret = "id", "secret"
	cfg.Auth.AllowedOrg = "acme"
	// One owner (the unix socket's) fills the host here; the quotas are
	// tested in the sandbox and api packages.
	cfg.Quotas = config.Quotas{}
	// Sandboxes run in user namespaces: required where CI says every
	// prerequisite is installed, else wherever the host allows.
	cfg.Sandbox.Container.UserNamespace = "auto"
	if testenv.Strict() {
		cfg.Sandbox.Container.UserNamespace = "on"
	}
	f.cfg = cfg
	f.uc = unixClient(cfg.Server.SocketPath)
	if err := os.MkdirAll(filepath.Join(cfg.Sandbox.StateDir, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The guest's root, an unprivileged host uid, must reach its bundle
	// (as under /var/lib/sandbox, 0755): search only.
	for _, d := range []string{f.dir, cfg.Sandbox.StateDir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := testimage.Build(context.Background(), filepath.Join(cfg.Sandbox.StateDir, "images", "dev-base.ext4"), buildAgent(t), 64); err != nil {
		t.Fatal(err)
	}
	return f
}

// start runs an in-process manager until the test ends.
func (f *fixture) start(t testing.TB) *Server {
	t.Helper()
	srv, _ := f.startWith(t, nil)
	return srv
}

// startWith runs an in-process manager, its options changed by tune (when
// not nil), until the test ends or the returned function stops it.
func (f *fixture) startWith(t testing.TB, tune func(*Options)) (*Server, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts := prodOptions(f.prefix, f.host, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if tune != nil {
		tune(&opts)
	}
	srv, err := New(ctx, f.cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Listen(false); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	// The API answers once the start-up reconcile ran and the edge listens.
	if code, body := f.call(t, "GET", "/health/live", ""); code != 200 {
		t.Fatalf("manager not serving: %d %s", code, body)
	}
	return srv, stop
}

var (
	probeOnce sync.Once
	probeBin  []byte
	probeErr  error
)

// installProbe uploads containertest's probe to /usr/bin/probe in sandbox id.
func (f *fixture) installProbe(t testing.TB, id string) {
	t.Helper()
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "atlprobe")
		if err != nil {
			probeErr = err
			return
		}
		defer os.RemoveAll(dir)
		path, err := containertest.BuildProbe(dir)
		if err != nil {
			probeErr = err
			return
		}
		probeBin, probeErr = os.ReadFile(path)
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	req, _ := http.NewRequest("PUT", "http://atelier/api/sandboxes/"+id+"/files?path=/usr/bin/probe&mode=0755", bytes.NewReader(probeBin))
	res, err := f.client().Do(req)
	if err != nil {
		t.Fatalf("upload probe: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("upload probe: %s", res.Status)
	}
}

// call talks to the manager over its root-only socket (admin, no token).
func (f *fixture) call(t testing.TB, method, path, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://atelier"+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := f.client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func (f *fixture) create(t testing.TB) (string, int, []byte) {
	t.Helper()
	code, b := f.call(t, "POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
	var v struct{ ID string }
	json.Unmarshal(b, &v)
	return v.ID, code, b
}

func (f *fixture) exec(t testing.TB, id, cmd string) (int, string) {
	t.Helper()
	code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/exec", fmt.Sprintf(`{"argv":["sh","-c",%q],"timeoutMs":10000}`, cmd))
	var r struct {
		ExitCode       int
		Stdout, Stderr string
	}
	if code != 200 || json.Unmarshal(b, &r) != nil {
		t.Fatalf("exec %q in %s: %d %s", cmd, id, code, b)
	}
	return r.ExitCode, r.Stdout + r.Stderr
}

// leaks lists every host resource a sandbox could leave behind.
func (f *fixture) leaks(t testing.TB) []string {
	var out []string
	s := f.cfg.Sandbox.StateDir
	if b, _ := exec.Command("runc", "--root", filepath.Join(s, "runc"), "list", "-q").Output(); strings.TrimSpace(string(b)) != "" {
		out = append(out, "runc containers: "+strings.TrimSpace(string(b)))
	}
	if b, _ := os.ReadFile("/proc/mounts"); strings.Contains(string(b), s) {
		out = append(out, "mounts under "+s)
	}
	if b, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(b), s) {
		out = append(out, "loop devices: "+string(b))
	}
	if b, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(b), f.prefix+"sb-") {
		out = append(out, "sandbox namespaces: "+string(b))
	}
	b, _ := exec.Command("ip", "-n", f.prefix+"host", "-br", "link").Output()
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "veth") || strings.HasPrefix(l, "tap-") {
			out = append(out, "link: "+l)
		}
	}
	for _, sub := range []string{"overlays", "sockets", "bundles"} {
		if ents, _ := os.ReadDir(filepath.Join(s, sub)); len(ents) != 0 {
			out = append(out, fmt.Sprintf("%d entries in %s", len(ents), sub))
		}
	}
	if cg, _ := filepath.Glob("/sys/fs/cgroup/*/" + f.prefix + "cg/atelier-*"); len(cg) > 0 {
		out = append(out, "cgroups: "+strings.Join(cg, " "))
	}
	// A container's processes live in its cgroup, so the check above also
	// catches guest processes left running.
	return out
}

// sweep removes whatever sandboxes the test left (containers with their
// processes, mounts, loop devices, namespaces). Tests that pass assert
// there is nothing; this is for the ones that failed before cleaning up.
func (f *fixture) sweep(t testing.TB) {
	left := f.leaks(t)
	if len(left) == 0 {
		return
	}
	t.Logf("sweeping what the test left: %s", strings.Join(left, "; "))
	s := f.cfg.Sandbox.StateDir
	root := filepath.Join(s, "runc")
	b, _ := exec.Command("runc", "--root", root, "list", "-q").Output()
	for _, id := range strings.Fields(string(b)) {
		if out, err := exec.Command("runc", "--root", root, "delete", "--force", id).CombinedOutput(); err != nil {
			t.Logf("runc delete %s: %v %s", id, err, out)
		}
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	var under []string
	for _, l := range strings.Split(string(mounts), "\n") {
		if fs := strings.Fields(l); len(fs) > 1 && strings.HasPrefix(fs[1], f.dir+"/") {
			under = append(under, fs[1])
		}
	}
	for i := len(under) - 1; i >= 0; i-- { // innermost first
		exec.Command("umount", "-l", under[i]).Run()
	}
	disks, _ := filepath.Glob(filepath.Join(s, "overlays", "*"))
	for _, disk := range disks {
		if devs, _ := container.LoopsBacking(disk); len(devs) > 0 {
			exec.Command("losetup", append([]string{"-d"}, devs...)...).Run()
		}
	}
	ns, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(ns), "\n") {
		if fs := strings.Fields(l); len(fs) > 0 && strings.HasPrefix(fs[0], f.prefix+"sb-") {
			exec.Command("ip", "netns", "del", fs[0]).Run()
		}
	}
}

func (f *fixture) assertNoLeaks(t testing.TB) {
	t.Helper()
	// A runc container's last process may take a moment to be reaped.
	var l []string
	for i := 0; i < 50; i++ {
		if l = f.leaks(t); len(l) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("leaked: %s", strings.Join(l, "; "))
}

func (f *fixture) client() *http.Client { return f.uc }

func httpRequest(method, url string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(""))
}

// startMockManager runs a mock-mode manager on free loopback ports whose
// sandboxes are real agent processes (no root needed), with its state under
// dir. mutate adjusts the config first. stop ends Serve and returns its error;
// callers destroy their sandboxes before calling it.
func startMockManager(t testing.TB, dir string, mutate func(*config.Config)) (*Server, func() error) {
	t.Helper()
	return startMockManagerWith(t, dir, mutate, Options{})
}

// startMockManagerWith is startMockManager with server options (Log and
// NoUnixSock are set here; Drivers default to the agent as a process).
func startMockManagerWith(t testing.TB, dir string, mutate func(*config.Config), opts Options) (*Server, func() error) {
	t.Helper()
	agentBin := buildAgent(t)
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = filepath.Join(dir, "data")
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "s")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	if mutate != nil {
		mutate(cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if opts.Drivers == nil {
		rt, err := process.New(process.Options{Command: []string{agentBin}, StateDir: filepath.Join(cfg.Sandbox.StateDir, "mock"),
			SocketDir: filepath.Join(dir, "k"), StopGrace: 2 * time.Second, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		opts.Drivers = &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: stmock.New(filepath.Join(cfg.Sandbox.StateDir, "overlays"))}
	}
	ctx, cancel := context.WithCancel(context.Background())
	opts.Log, opts.NoUnixSock = log, true
	srv, err := New(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Listen(true); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	return srv, func() error { cancel(); return <-done }
}
