package server

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

// syncBuffer is a log sink the test reads while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestShutdownWithOpenEventStream: an open event stream (a dashboard tab,
// `curl -N /api/events`) does not hold the shutdown for the drain's whole
// timeout; the log says where to open the manager, and in mock mode that
// its sandboxes keep running.
func TestShutdownWithOpenEventStream(t *testing.T) {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort, cfg.Domain.SSH.Port = freePort(t), freePort(t), freePort(t)
	cfg.Server.DataDir = dir
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	var logs syncBuffer
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := New(ctx, cfg, Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), Drivers: drv, NoUnixSock: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(true); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	base := "http://127.0.0.1:" + strconv.Itoa(cfg.Server.Port)
	waitReady(t, srv.Addr(), 200)
	res, err := http.Post(base+"/api/sandboxes", "application/json", strings.NewReader(`{}`))
	if err != nil || res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %v %v", err, res)
	}
	res.Body.Close()

	res, err = http.Get(base + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if _, err := bufio.NewReader(res.Body).ReadString('\n'); err != nil {
		t.Fatalf("event stream: %v", err)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown with an open event stream took %s; the stream held the drain", d)
	}
	out := logs.String()
	for _, want := range []string{"url=http://localhost:" + strconv.Itoa(cfg.Server.Port) + "/", "closed event streams",
		"mock sandboxes keep running", "make clean"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
