package server

import (
	"context"
	"encoding/json"
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
	"atelier/internal/registry"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
)

type readyBody struct {
	Status any               `json:"status"`
	Detail string            `json:"detail"`
	Checks map[string]string `json:"checks"`
}

func getReady(t *testing.T, addr string) (int, readyBody) {
	t.Helper()
	res, err := http.Get("http://" + addr + "/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var b readyBody
	json.NewDecoder(res.Body).Decode(&b)
	return res.StatusCode, b
}

// checksOf is GET /health's checks (the 503 of /health/ready is a problem
// document naming only what failed).
func checksOf(t *testing.T, addr string) map[string]string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var b readyBody
	json.NewDecoder(res.Body).Decode(&b)
	return b.Checks
}

// waitReady polls until /health/ready answers want, and returns its body.
func waitReady(t *testing.T, addr string, want int) readyBody {
	t.Helper()
	var code int
	var b readyBody
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, b = getReady(t, addr); code == want {
			return b
		}
	}
	t.Fatalf("/health/ready: %d %+v, want %d", code, b, want)
	return b
}

func occupy(t *testing.T, port int) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// TestReadyNamesEachFailingComponent: /health/ready checked only SQLite, so
// a manager whose edge, SSH proxy or runtime was down still said ready.
// Each is taken down in turn and must turn it 503, named.
func TestReadyNamesEachFailingComponent(t *testing.T) {
	agent := buildAgent(t)
	mock := func(t *testing.T, mutate func(*config.Config)) (*Server, string, func() error) {
		t.Helper()
		dir, err := os.MkdirTemp("", "atlrdy")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		// The runtime runs its own copy of the agent, which the test may remove.
		bin := filepath.Join(dir, "agent")
		data, err := os.ReadFile(agent)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		rt, err := process.New(process.Options{Command: []string{bin}, StateDir: filepath.Join(dir, "s", "mock"),
			SocketDir: filepath.Join(dir, "k"), StopGrace: 2 * time.Second, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		drv := &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: stmock.New(filepath.Join(dir, "s", "overlays"))}
		srv, stop := startMockManagerWith(t, dir, mutate, Options{Drivers: drv})
		return srv, bin, stop
	}

	t.Run("all up", func(t *testing.T) {
		srv, _, stop := mock(t, nil)
		defer stop()
		b := waitReady(t, srv.Addr(), 200)
		for _, c := range []string{"store", "edge", "ssh", "runtime"} {
			if b.Checks[c] != "ok" {
				t.Errorf("check %s = %q", c, b.Checks[c])
			}
		}
	})
	t.Run("edge stopped", func(t *testing.T) {
		srv, _, stop := mock(t, nil)
		defer stop()
		waitReady(t, srv.Addr(), 200)
		if err := srv.Edge.Stop(); err != nil {
			t.Fatal(err)
		}
		b := waitReady(t, srv.Addr(), 503)
		if !strings.Contains(b.Detail, "edge: not accepting connections") {
			t.Errorf("detail %q", b.Detail)
		}
	})
	t.Run("edge port taken", func(t *testing.T) {
		srv, _, stop := mock(t, func(c *config.Config) { occupy(t, c.Domain.HTTPPort) })
		defer stop()
		b := waitReady(t, srv.Addr(), 503)
		if c := checksOf(t, srv.Addr()); !strings.Contains(b.Detail, "edge: not running") || c["ssh"] != "ok" || c["runtime"] != "ok" {
			t.Errorf("detail %q checks %v", b.Detail, c)
		}
	})
	t.Run("ssh port taken", func(t *testing.T) {
		srv, _, stop := mock(t, func(c *config.Config) { occupy(t, c.Domain.SSH.Port) })
		defer stop()
		b := waitReady(t, srv.Addr(), 503)
		if c := checksOf(t, srv.Addr()); !strings.Contains(b.Detail, "ssh: not listening") || c["edge"] != "ok" || c["runtime"] != "ok" {
			t.Errorf("detail %q checks %v", b.Detail, c)
		}
	})
	t.Run("runtime cannot start agents", func(t *testing.T) {
		srv, bin, stop := mock(t, nil)
		defer stop()
		waitReady(t, srv.Addr(), 200)
		if err := os.Remove(bin); err != nil {
			t.Fatal(err)
		}
		b := waitReady(t, srv.Addr(), 503)
		if !strings.Contains(b.Detail, "runtime: agent binary") {
			t.Errorf("detail %q", b.Detail)
		}
	})
}

// TestReadyRegistryDown: an enabled npm cache whose Verdaccio is not
// running makes the manager not ready; a disabled one is not checked.
func TestReadyRegistryDown(t *testing.T) {
	cfg := productionConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := store.Open(ctx, cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutSetting(ctx, registry.SettingsKey, registry.Settings{Enabled: true, EvictionDays: 7, EverEnabled: true}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	srv, err := New(ctx, cfg, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Drivers: drv, NoUnixSock: true,
		// No Verdaccio is installed there: it cannot start.
		Registry: func(o *registry.Options) { o.AppDir = t.TempDir() }})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(true); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	b := waitReady(t, srv.Addr(), 503)
	if c := checksOf(t, srv.Addr()); !strings.Contains(b.Detail, "registry: the npm cache is enabled but Verdaccio is not running") || c["edge"] != "ok" || c["ssh"] != "ok" {
		t.Fatalf("detail %q checks %v", b.Detail, c)
	}
	if _, err := srv.Registry.Disable(ctx); err != nil {
		t.Fatal(err)
	}
	b = waitReady(t, srv.Addr(), 200)
	if _, ok := b.Checks["registry"]; ok {
		t.Errorf("a disabled cache is checked: %v", b.Checks)
	}
}
