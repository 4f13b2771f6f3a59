package main

import (
	"atelier/internal/logkeeper"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/config"
	"atelier/internal/guest"
	"atelier/internal/server"
	"atelier/internal/store"
)

// run executes the CLI in-process and returns stdout and the error.
func run(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func startMock(t *testing.T) string {
	t.Helper()
	url, _ := startMockServer(t)
	return url
}

func startMockServer(t *testing.T) (string, *server.Server) {
	t.Helper()
	return startMockServerWith(t, nil)
}

// startMockServerWith is startMockServer with mutate applied to the config.
func startMockServerWith(t *testing.T, mutate func(*config.Config)) (string, *server.Server) {
	t.Helper()
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = dir
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	if mutate != nil {
		mutate(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, server.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Sandboxes.Run(ctx) }()
	ts := httptest.NewServer(srv.API.Handler())
	t.Cleanup(func() {
		// No agent process outlives the test.
		if list, err := srv.Sandboxes.List(context.Background(), store.SandboxFilter{}); err == nil {
			for _, sb := range list {
				_ = srv.Sandboxes.Destroy(context.Background(), sb.ID)
			}
		}
		ts.Close()
		cancel()
		<-done
		srv.Store.Close()
	})
	return ts.URL, srv
}

func TestSandboxCommands(t *testing.T) {
	url := startMock(t)
	out, err := run(t, nil, "--url", url, "--json", "sandbox", "create", "--name", "demo", "--vcpus", "2")
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	var v struct{ ID, Status, Name string }
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("create output %q: %v", out, err)
	}
	if v.Status != "running" || v.Name != "demo" {
		t.Fatalf("created %+v", v)
	}
	out, err = run(t, nil, "--url", url, "sandbox", "list")
	if err != nil || !strings.Contains(out, v.ID) || !strings.Contains(out, "STATUS") || !strings.Contains(out, "running") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = run(t, nil, "--url", url, "sandbox", "stop", v.ID)
	if err != nil || !strings.Contains(out, "stopped") {
		t.Fatalf("stop: %v %s", err, out)
	}
	if _, err = run(t, nil, "--url", url, "sandbox", "stop", v.ID); err == nil || !strings.Contains(err.Error(), "is already stopped") {
		t.Fatalf("second stop: %v", err)
	}
	out, err = run(t, nil, "--url", url, "sandbox", "get", v.ID)
	if err != nil || !strings.Contains(out, "Status:") || !strings.Contains(out, "stopped") {
		t.Fatalf("get: %v %s", err, out)
	}
	// Every id is checked before any is acted on: no half-done change.
	if _, err = run(t, nil, "--url", url, "sandbox", "rm", v.ID, "../x"); err == nil || !strings.Contains(err.Error(), "neither a sandbox id") {
		t.Fatalf("rm with a bad id: %v", err)
	}
	if _, err = run(t, nil, "--url", url, "sandbox", "get", v.ID); err != nil {
		t.Fatalf("rm with a bad id removed the good one: %v", err)
	}
	if _, err = run(t, nil, "--url", url, "sandbox", "rm", v.ID); err != nil {
		t.Fatalf("rm: %v", err)
	}
	if _, err = run(t, nil, "--url", url, "sandbox", "get", v.ID); err == nil || !strings.Contains(err.Error(), "no sandbox") {
		t.Fatalf("get after rm: %v", err)
	}
	if _, err = run(t, nil, "--url", url, "sandbox", "get", "../etc/pass"); err == nil || !strings.Contains(err.Error(), "neither a sandbox id") {
		t.Fatalf("bad id: %v", err)
	}
	if _, err = run(t, nil, "--url", url, "sandbox", "create", "--vcpus", "99"); err == nil || !strings.Contains(err.Error(), "--vcpus 99") {
		t.Fatalf("bad vcpus: %v", err)
	}
	out, err = run(t, nil, "--url", url, "manager", "status")
	if err != nil || !strings.Contains(out, "status:  ok") {
		t.Fatalf("manager status: %v %s", err, out)
	}
}

func TestConfigCommands(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.json")
	if err := os.WriteFile(file, []byte(`{"server":{"mode":"mock"},"auth":{"jwtSecret":"super-secret-value"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, map[string]string{"ATELIER_CONFIG": file, "ATELIER_SERVER_PORT": "4100"}, "config", "show")
	if err != nil {
		t.Fatalf("show: %v", err)
	}
	if strings.Contains(out, "super-secret-value") || !strings.Contains(out, `"port": 4100`) || !strings.Contains(out, `"mode": "mock"`) {
		t.Fatalf("show leaked a secret or missed env: %s", out)
	}
	if out, err = run(t, nil, "config", "validate", file); err != nil || !strings.Contains(out, "valid") {
		t.Fatalf("validate good: %v %s", err, out)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"server":{"mode":"production","port":70000}}`), 0o600)
	_, err = run(t, map[string]string{"ATELIER_SERVER_PORT": ""}, "config", "validate", bad)
	if err == nil || !strings.Contains(err.Error(), "server.port") || !strings.Contains(err.Error(), "ATELIER_JWT_SECRET") {
		t.Fatalf("validate bad: %v", err)
	}
	typo := filepath.Join(dir, "typo.json")
	os.WriteFile(typo, []byte(`{"server":{"mode":"mock","prot":1}}`), 0o600)
	if _, err = run(t, nil, "config", "validate", typo); err == nil || !strings.Contains(err.Error(), "server.prot") {
		t.Fatalf("unknown key: %v", err)
	}
	out, err = run(t, nil, "config", "schema")
	var schema map[string]any
	if err != nil || json.Unmarshal([]byte(out), &schema) != nil || !strings.Contains(out, "ATELIER_BRIDGE_IP") {
		t.Fatalf("schema: %v", err)
	}
}

// TestMain lets the test binary stand in for the atelier binary when mock
// mode starts "<exe> agent serve ...".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(guest.Main(os.Args[2:]))
	}
	logkeeper.MainIfKeeper()
	os.Exit(m.Run())
}

func TestDebugVMStart(t *testing.T) {
	url := startMock(t)
	out, err := run(t, nil, "--url", url, "debug-vm", "start", "--command", "echo from-the-agent; exit 0")
	if err != nil {
		t.Fatalf("debug-vm start: %v\n%s", err, out)
	}
	for _, want := range []string{"running in", "phases (ms):", "agent", "from-the-agent", "destroyed in"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, nil, "--url", url, "--json", "sandbox", "list")
	if err != nil || strings.Contains(out, "debug-vm") {
		t.Fatalf("debug-vm left its sandbox: %v %s", err, out)
	}
	if _, err := run(t, nil, "--url", url, "debug-vm", "start", "--command", "exit 4"); err == nil || !strings.Contains(err.Error(), "exited 4") {
		t.Fatalf("failing command: %v", err)
	}
}
