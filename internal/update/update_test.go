package update

import (
	"atelier/internal/testenv"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/client"
	"atelier/internal/hostcmd"
)

func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Skip("no go toolchain to build the binaries under test")
	}
	return p
}

func build(t *testing.T, pkg, out, version string) {
	t.Helper()
	args := []string{"build", "-trimpath", "-o", out}
	if version != "" {
		args = append(args, "-ldflags", "-X atelier/internal/server.Version="+version)
	}
	cmd := exec.Command(goTool(t), append(args, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// procRestarter runs the installed binary's manager as a child process,
// as systemd would run the unit: its own session, stopped with SIGTERM.
type procRestarter struct {
	t        *testing.T
	bin, cfg string
	log      string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
}

func (p *procRestarter) Start(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(p.bin, "serve", "--config", p.cfg)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(p.done)
	return nil
}

func (p *procRestarter) Stop(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
	return nil
}

func freePort(t *testing.T) int { return testenv.FreePort(t) }

// TestUpdateEndToEnd installs v1, starts its manager (mock mode: each
// sandbox is the real agent as a process) with a sandbox, updates to v2,
// then "updates" to a binary whose migration bumps the schema and whose
// manager never becomes healthy. The second update must roll back both
// the binary and the database (v2 refuses the bumped schema), and the
// sandbox's agent must stay the same live process throughout.
func TestUpdateEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three binaries")
	}
	dir := t.TempDir()
	v1, v2, fake := filepath.Join(dir, "atelier-v1"), filepath.Join(dir, "atelier-v2"), filepath.Join(dir, "atelier-broken")
	build(t, "atelier/cmd/atelier", v1, "v1-test")
	build(t, "atelier/cmd/atelier", v2, "v2-test")
	build(t, "./testdata/fakeatelier", fake, "")

	installed := filepath.Join(dir, "bin", "atelier")
	if err := os.MkdirAll(filepath.Dir(installed), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(v1, installed, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	cfgFile := filepath.Join(dir, "sandbox.config.json")
	cfg := map[string]any{
		"server":  map[string]any{"mode": "mock", "host": "127.0.0.1", "port": freePort(t), "dataDir": data},
		"domain":  map[string]any{"httpPort": freePort(t), "httpsPort": freePort(t), "ssh": map[string]any{"port": freePort(t)}},
		"sandbox": map[string]any{"stateDir": filepath.Join(dir, "state"), "logDir": filepath.Join(dir, "log")},
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rs := &procRestarter{t: t, bin: installed, cfg: cfgFile, log: filepath.Join(dir, "manager.log")}
	t.Cleanup(func() {
		_ = rs.Stop(context.Background())
		if t.Failed() {
			lb, _ := os.ReadFile(rs.log)
			t.Logf("manager log:\n%s", lb)
		}
	})
	sock := filepath.Join(data, "atelier.sock")
	c, err := client.New("unix://"+sock, "")
	if err != nil {
		t.Fatal(err)
	}
	health := func(ctx context.Context) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		h, err := c.Health(ctx)
		if err != nil {
			return "", err
		}
		if h.Status != "ok" {
			return h.Version, fmt.Errorf("%s: %v", h.Status, h.Checks)
		}
		return h.Version, nil
	}
	ctx := context.Background()
	if err := rs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitHealthy(ctx, health, "v1-test", 30*time.Second); err != nil {
		t.Fatal(err)
	}

	sb, err := c.CreateSandbox(ctx, client.CreateRequest{Name: "keeps-running"}, true)
	if err != nil || sb.Status != "running" {
		t.Fatalf("create: %+v %v", sb, err)
	}
	var pid int
	// Last resort when the manager cannot destroy it: the agent is this
	// test's process and must not outlive it.
	t.Cleanup(func() {
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	t.Cleanup(func() { _ = c.DeleteSandbox(context.Background(), sb.ID) })
	agentPID := func() int {
		t.Helper()
		var res agent.ExecResult
		if err := c.Exec(ctx, sb.ID, agent.ExecRequest{Shell: "echo $PPID", TimeoutMs: 10000}, &res); err != nil {
			t.Fatalf("exec in the sandbox: %v", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
		if err != nil {
			t.Fatalf("exec printed %q", res.Stdout)
		}
		return pid
	}
	pid = agentPID()
	// The agent must be alive at every moment of both updates.
	stop := make(chan struct{})
	var gaps []string
	var mu sync.Mutex
	watch := sync.WaitGroup{}
	watch.Add(1)
	go func() {
		defer watch.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if err := syscall.Kill(pid, 0); err != nil {
				mu.Lock()
				gaps = append(gaps, time.Now().Format(time.StampMilli)+": "+err.Error())
				mu.Unlock()
			}
		}
	}()

	opts := Options{Binary: installed, ConfigFile: cfgFile, DataDir: data, Restart: rs, Health: health,
		Timeout: 30 * time.Second, Runner: hostcmd.Exec{}, Out: testWriter{t}}
	o := opts
	o.NewBinary = v2
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatalf("update to v2: %v", err)
	}
	if res.From != "v1-test" || res.To != "v2-test" || res.RolledBack || res.Backup == "" {
		t.Fatalf("update to v2: %+v", res)
	}
	if v, err := health(ctx); err != nil || v != "v2-test" {
		t.Fatalf("after the update: %q %v", v, err)
	}
	if got := agentPID(); got != pid {
		t.Fatalf("the sandbox's agent changed from %d to %d", pid, got)
	}

	o = opts
	o.NewBinary = fake
	o.Timeout = 4 * time.Second
	res, err = Run(ctx, o)
	if err == nil || !res.RolledBack || !strings.Contains(err.Error(), "rolled back to v2-test") {
		t.Fatalf("broken update: %+v %v", res, err)
	}
	if v, err := health(ctx); err != nil || v != "v2-test" {
		t.Fatalf("after the rollback: %q %v", v, err)
	}
	if same, _ := sameContent(installed, v2); !same {
		t.Fatal("the installed binary is not v2 after the rollback")
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(data, "atelier.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM schema_migrations WHERE version = 999`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the broken migration survived the rollback: %d %v", n, err)
	}
	db.Close()
	if got := agentPID(); got != pid {
		t.Fatalf("the sandbox's agent changed from %d to %d", pid, got)
	}
	close(stop)
	watch.Wait()
	if len(gaps) > 0 {
		t.Fatalf("the sandbox's agent was gone during the updates: %v", gaps)
	}
	if v, err := c.GetSandbox(ctx, sb.ID); err != nil || v.Status != "running" {
		t.Fatalf("sandbox after the updates: %+v %v", v, err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestDownloadChecksum: --version installs only a binary whose SHA-256 is
// the one published beside it; a network peer that swaps the binary (or
// the server serving a corrupt one) gets nothing installed.
func TestDownloadChecksum(t *testing.T) {
	good := []byte("#!/bin/sh\necho v9\n")
	sum := sha256.Sum256(good)
	body := good
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/releases/v9.0.0/" + ReleaseAsset():
			w.Write(body)
		case "/releases/v9.0.0/" + ReleaseAsset() + ".sha256":
			fmt.Fprintf(w, "%s  %s\n", hex.EncodeToString(sum[:]), ReleaseAsset())
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "atelier.new")
	if err := Download(context.Background(), srv.Client(), srv.URL+"/releases", "9.0.0", dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != string(good) {
		t.Fatal("downloaded content differs")
	}
	body = []byte("#!/bin/sh\nrm -rf /\n")
	os.Remove(dst)
	err := Download(context.Background(), srv.Client(), srv.URL+"/releases", "v9.0.0", dst)
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("tampered binary: %v", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a tampered binary was left in place")
	}
	if err := Download(context.Background(), srv.Client(), srv.URL+"/releases", "8.0.0", dst); err == nil {
		t.Fatal("missing release accepted")
	}
	if err := Download(context.Background(), srv.Client(), "", "9.0.0", dst); err == nil || !strings.Contains(err.Error(), "ATELIER_RELEASE_URL") {
		t.Fatalf("no release URL: %v", err)
	}
}

// TestUpdateRefusesABinaryThatDoesNotRun: nothing is stopped or replaced.
func TestUpdateRefusesABinaryThatDoesNotRun(t *testing.T) {
	dir := t.TempDir()
	installed := filepath.Join(dir, "atelier")
	os.WriteFile(installed, []byte("#!/bin/sh\necho v1\n"), 0o755)
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("#!/bin/sh\nexit 3\n"), 0o755)
	rs := &countingRestarter{}
	_, err := Run(context.Background(), Options{Binary: installed, NewBinary: bad, DataDir: dir, Restart: rs,
		Runner: hostcmd.Exec{}, Health: func(context.Context) (string, error) { return "", nil }})
	if err == nil || !strings.Contains(err.Error(), "does not run") || rs.stops != 0 {
		t.Fatalf("err %v, stops %d", err, rs.stops)
	}
	if b, _ := os.ReadFile(installed); !strings.Contains(string(b), "v1") {
		t.Fatal("installed binary replaced")
	}
}

type countingRestarter struct{ stops, starts int }

func (c *countingRestarter) Stop(context.Context) error  { c.stops++; return nil }
func (c *countingRestarter) Start(context.Context) error { c.starts++; return nil }

// TestUpdateRefusesAPostgresStore: a shared store is not this host's file
// to copy, nor this host's alone to migrate; nothing is staged, stopped or
// replaced, and the refusal names the key and the operator's procedure.
func TestUpdateRefusesAPostgresStore(t *testing.T) {
	dir := t.TempDir()
	installed := filepath.Join(dir, "atelier")
	os.WriteFile(installed, []byte("#!/bin/sh\necho v1\n"), 0o755)
	good := filepath.Join(dir, "new")
	os.WriteFile(good, []byte("#!/bin/sh\necho v2\n"), 0o755)
	rs := &countingRestarter{}
	_, err := Run(context.Background(), Options{Binary: installed, NewBinary: good, DataDir: dir, Restart: rs, SharedStore: true,
		Runner: hostcmd.Exec{}, Health: func(context.Context) (string, error) { return "v2", nil }})
	if err == nil || rs.stops != 0 || rs.starts != 0 {
		t.Fatalf("err %v, stops %d, starts %d: want a refusal that touches nothing", err, rs.stops, rs.starts)
	}
	for _, want := range []string{"advanced.server.database.url", "pg_dump", "atelier migrate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %s", err, want)
		}
	}
	if b, _ := os.ReadFile(installed); !strings.Contains(string(b), "v1") {
		t.Fatal("installed binary replaced")
	}
	if _, err := os.Stat(installed + ".new"); !os.IsNotExist(err) {
		t.Fatalf("staged a binary: %v", err)
	}
}
