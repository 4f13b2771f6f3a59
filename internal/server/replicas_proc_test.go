package server

import (
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
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
)

// Environment of a mock replica subprocess (the test binary re-executed):
// a manager on a shared Postgres store whose sandboxes are agent processes
// in a state dir every replica of the test shares, the stand-in for a
// runtime every replica reaches (a cluster).
const (
	envReplica       = "ATELIER_TEST_REPLICA"        // config file path
	envReplicaShared = "ATELIER_TEST_REPLICA_SHARED" // shared state dir
	envReplicaAgent  = "ATELIER_TEST_REPLICA_AGENT"  // agent binary
	envReplicaTTL    = "ATELIER_TEST_REPLICA_TTL"    // leader lease
)

// sharedHost is what the replicas of one test share: the state dir of the
// agent processes, their volumes, the secrets key and the JWT secret.
type sharedHost struct {
	dir   string
	agent string
	key   string
	jwt   string
	url   string
	ttl   time.Duration
}

func newSharedHost(t *testing.T, url string, ttl time.Duration) *sharedHost {
	t.Helper()
	// Short paths: agent sockets live under it (107-byte limit).
	dir, err := os.MkdirTemp("", "atlr")
	if err != nil {
		t.Fatal(err)
	}
	h := &sharedHost{dir: dir, agent: buildAgent(t), url: url, ttl: ttl, jwt: strings.Repeat("j", 40)}
	h.key = filepath.Join(dir, "secrets.key")
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(h.key, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: no agent process outlives the test.
	t.Cleanup(func() {
		rt, err := h.runtime(slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil {
			ids, _ := rt.List(context.Background())
			for _, id := range ids {
				_ = rt.Destroy(context.Background(), id)
			}
		}
		os.RemoveAll(dir)
	})
	return h
}

func (h *sharedHost) runtime(log *slog.Logger) (*process.Runtime, error) {
	return process.New(process.Options{Command: []string{h.agent}, StateDir: filepath.Join(h.dir, "mock"),
		SocketDir: filepath.Join(h.dir, "k"), StopGrace: 2 * time.Second, Log: log})
}

func sharedDrivers(dir, agent string, log *slog.Logger) (*sandbox.Drivers, error) {
	h := &sharedHost{dir: dir, agent: agent}
	rt, err := h.runtime(log)
	if err != nil {
		return nil, err
	}
	return &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: stmock.New(filepath.Join(dir, "overlays"))}, nil
}

// config is one replica's: its own ports and data dir, the shared store,
// key and JWT secret.
func (h *sharedHost) config(t *testing.T) *config.Config {
	t.Helper()
	own, err := os.MkdirTemp(h.dir, "r")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = filepath.Join(own, "data")
	cfg.Server.SocketPath = filepath.Join(own, "s.sock")
	cfg.Sandbox.StateDir = filepath.Join(own, "state")
	cfg.Sandbox.LogDir = filepath.Join(own, "log")
	cfg.Advanced.Server.Database.URL = h.url
	cfg.Advanced.Server.SecretsKeyFile = h.key
	cfg.Auth.JWTSecret = h.jwt
	return cfg
}

// inProcess starts a replica in this process (its edge is this process's
// one Caddy) and returns it with a client of its unix socket.
func (h *sharedHost) inProcess(t *testing.T) (*Server, *http.Client, *config.Config) {
	t.Helper()
	cfg := h.config(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	drv, err := sharedDrivers(h.dir, h.agent, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, Options{Log: log, Drivers: drv, LeaderTTL: h.ttl, ReconcileEvery: 100 * time.Millisecond})
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
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("in-process replica did not stop")
		}
	})
	c := unixClient(cfg.Server.SocketPath)
	waitFor(t, 10*time.Second, "in-process replica ready", func() bool {
		code, _ := callC(c, "GET", "/health/ready", "")
		return code == 200
	})
	return srv, c, cfg
}

// replicaProc is a replica subprocess.
type replicaProc struct {
	*manager
	cfg  *config.Config
	c    *http.Client
	logs *syncBuffer
}

// spawn starts a replica subprocess that SIGKILLs itself at crash
// (op:step:when; "" never).
func (h *sharedHost) spawn(t *testing.T, crash string) *replicaProc {
	t.Helper()
	cfg := h.config(t)
	b, err := cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(cfg.Server.DataDir), "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envReplica+"="+path, envReplicaShared+"="+h.dir, envReplicaAgent+"="+h.agent,
		envReplicaTTL+"="+h.ttl.String(), envCrash+"="+crash)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &manager{cmd: cmd, done: make(chan error, 1)}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		err := <-m.done
		m.done <- err
		if t.Failed() {
			t.Logf("replica %s log:\n%s", crash, logs.String())
		}
	})
	p := &replicaProc{manager: m, cfg: cfg, c: unixClient(cfg.Server.SocketPath), logs: logs}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("replica exited at start: %v\n%s", err, logs.String())
		default:
		}
		if code, _ := callC(p.c, "GET", "/health/ready", ""); code == 200 {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica not ready:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runTestReplica is a replica subprocess's main.
func runTestReplica(path string) int {
	cfg, err := loadTestManager(path, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ttl, err := time.ParseDuration(os.Getenv(envReplicaTTL))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	drv, err := sharedDrivers(os.Getenv(envReplicaShared), os.Getenv(envReplicaAgent), log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return serveTestManager(cfg, Options{Log: log, Drivers: drv, LeaderTTL: ttl, ReconcileEvery: 100 * time.Millisecond})
}

// callC calls the manager behind c; code 0 when it cannot be reached.
func callC(c *http.Client, method, path, body string) (int, []byte) {
	req, _ := http.NewRequest(method, "http://atelier"+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func mustCall(t *testing.T, c *http.Client, method, path, body string, want int) []byte {
	t.Helper()
	code, b := callC(c, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
	}
	return b
}

// leaderHolder reads who holds the leader lease.
func leaderHolder(t *testing.T, st *store.Store) string {
	t.Helper()
	var l store.Leadership
	if _, err := st.GetSetting(context.Background(), "leader:"+leaderName, &l); err != nil {
		t.Fatal(err)
	}
	if time.Now().After(l.ExpiresAt) {
		return ""
	}
	return l.Holder
}

// edgeGet asks the edge listening on port for host's root.
func edgeGet(port int, host string) (int, string) {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+strconv.Itoa(port)+"/", nil)
	req.Host = host
	c := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func sandboxID(t *testing.T, b []byte) string {
	t.Helper()
	var sb struct{ ID string }
	if err := json.Unmarshal(b, &sb); err != nil || sb.ID == "" {
		t.Fatalf("no sandbox id in %s", b)
	}
	return sb.ID
}
