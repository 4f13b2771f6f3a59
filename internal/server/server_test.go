package server

import (
	"atelier/internal/testenv"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

func freePort(t testing.TB) int { return testenv.FreePort(t) }

func productionConfig(t *testing.T) *config.Config {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeProduction
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	// The edge and the SSH proxy start with every manager; loopback ports of their own.
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = dir
	cfg.Advanced.Server.Verdaccio.Dir = dir + "-registry"
	cfg.Server.SocketPath = filepath.Join(dir, "run", "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	cfg.Domain.BaseDomain = "atelier.test"
	cfg.Domain.Dashboard = "sandbox.atelier.test"
	cfg.Domain.SSH.Hostname = "ssh.atelier.test"
	cfg.Domain.TLS.Email = "ops@atelier.test"
	cfg.Auth.JWTSecret = strings.Repeat("k", 40)
	cfg.Auth.GitHub.ClientID = "id"
	cfg.Auth.GitHub.ClientSecret = "secret"
	cfg.Auth.AllowedOrg = "acme"
	return cfg
}

func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

func TestUnixSocketAdminAndTCPAuth(t *testing.T) {
	cfg := productionConfig(t)
	rt := rtmock.New()
	drv := &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A stale socket from a crashed manager must not block start-up.
	if err := os.MkdirAll(filepath.Dir(cfg.Server.SocketPath), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Server.SocketPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	srv, err := New(ctx, cfg, Options{Log: log, Drivers: drv})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	fi, err := os.Stat(cfg.Server.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want a 0600 socket", fi.Mode())
	}

	uc := unixClient(cfg.Server.SocketPath)
	res, err := uc.Post("http://atelier/api/sandboxes", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create over the socket: %d %s", res.StatusCode, body)
	}

	tcpURL := "http://127.0.0.1:" + strconv.Itoa(cfg.Server.Port)
	res, err = http.Get(tcpURL + "/api/sandboxes")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous TCP list: %d, want 401", res.StatusCode)
	}
	res, err = http.Get(tcpURL + "/health/live")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("live: %d", res.StatusCode)
	}

	// Shutdown drains and leaves the sandbox running.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	if n := len(rt.Instances()); n != 1 {
		t.Fatalf("shutdown touched sandboxes: %d instances left, want 1", n)
	}
	if _, err := os.Stat(cfg.Server.SocketPath); !os.IsNotExist(err) {
		t.Fatalf("socket not removed on shutdown: %v", err)
	}
}

func TestProductionRefusesUnsafeConfig(t *testing.T) {
	cfg := productionConfig(t)
	cfg.Auth.JWTSecret = "dev-secret-change-in-production"
	cfg.Auth.AllowedOrg = ""
	_, err := New(context.Background(), cfg, Options{Drivers: &sandbox.Drivers{}})
	if err == nil {
		t.Fatal("production accepted the default JWT secret and no allow-list")
	}
	for _, want := range []string{"ATELIER_JWT_SECRET", "ATELIER_AUTH_ALLOWED_ORG"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestUnsetModeRefused(t *testing.T) {
	cfg := config.Default()
	cfg.Server.DataDir = t.TempDir()
	_, err := New(context.Background(), cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "ATELIER_SERVER_MODE") {
		t.Fatalf("unset mode: %v", err)
	}
}
