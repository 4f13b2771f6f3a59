package guest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
)

// testAgent is a real agent server on a unix socket and a client to it.
type testAgent struct {
	c    *agent.Client
	srv  *Server
	root string // the only file root, also the default cwd
	dir  string // scratch space outside the root
	sock string
}

func startAgent(t *testing.T, mod func(*Options)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := Options{
		SandboxID:    "sbx123",
		FileRoots:    []string{root},
		WorkDir:      root,
		LogDir:       filepath.Join(dir, "logs"),
		ConfigPath:   filepath.Join(dir, "etc", "config.json"),
		EtcDir:       filepath.Join(dir, "etc"),
		TerminalIdle: time.Minute,
		StopGrace:    2 * time.Second,
	}
	if mod != nil {
		mod(&opts)
	}
	srv := NewServer(opts)
	sock := filepath.Join(dir, "a.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, sock) }()
	c := agent.New(agent.UnixDialer(sock))
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx, 0); err != nil {
		cancel()
		t.Fatalf("agent not ready: %v", err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		c.Close()
	})
	return &testAgent{c: c, srv: srv, root: root, dir: dir, sock: sock}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 10 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processGone is true when pid no longer exists or is a zombie waiting
// for a reaper that is not us.
func processGone(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// wantAgentError asserts err is an *agent.Error with status and code, and
// (when field is not "") naming field.
func wantAgentError(t *testing.T, err error, status int, code, field string) *agent.Error {
	t.Helper()
	var ae *agent.Error
	if !errors.As(err, &ae) {
		t.Fatalf("want *agent.Error %d %s, got %v", status, code, err)
	}
	if ae.Status != status || (code != "" && ae.Code != code) || (field != "" && ae.Field != field) {
		t.Fatalf("want %d %s field %q, got %d %s field %q (%s)", status, code, field, ae.Status, ae.Code, ae.Field, ae.Detail)
	}
	return ae
}
