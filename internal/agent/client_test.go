package agent_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/guest"
)

// startGuest runs a real agent server on a unix socket.
func startGuest(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		tb.Fatal(err)
	}
	srv := guest.NewServer(guest.Options{
		SandboxID:  "sbx",
		FileRoots:  []string{root},
		WorkDir:    root,
		LogDir:     filepath.Join(dir, "logs"),
		ConfigPath: filepath.Join(dir, "config.json"),
	})
	sock := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, sock) }()
	tb.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		cancel()
		<-done
	})
	// Wait for the socket with a client of its own.
	c := agent.New(agent.UnixDialer(sock))
	defer c.Close()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx, 0); err != nil {
		tb.Fatal(err)
	}
	return sock
}

// fakeFirecracker plays the VMM side of hybrid vsock: it accepts on the
// VM's unix socket, reads "CONNECT <port>\n", and either drops the
// connection (guest not listening yet), holds it without answer, answers
// garbage, or answers "OK <n>\n" and proxies to the agent's socket.
type fakeFirecracker struct {
	ln       net.Listener
	target   string
	reject   atomic.Int32 // connections to drop after reading CONNECT
	hold     atomic.Int32 // connections to hold silently
	garbage  atomic.Bool
	accepted atomic.Int32 // connections that got OK
	mu       sync.Mutex
	lines    []string
	held     []net.Conn
}

func newFakeFirecracker(t *testing.T, udsPath, target string) *fakeFirecracker {
	t.Helper()
	ln, err := net.Listen("unix", udsPath)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFirecracker{ln: ln, target: target}
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.held {
			c.Close()
		}
		f.mu.Unlock()
	})
	return f
}

func (f *fakeFirecracker) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go f.handle(c)
	}
}

func (f *fakeFirecracker) handle(c net.Conn) {
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	f.lines = append(f.lines, line)
	f.mu.Unlock()
	switch {
	case f.reject.Add(-1) >= 0:
		c.Close()
		return
	case f.hold.Add(-1) >= 0:
		f.mu.Lock()
		f.held = append(f.held, c)
		f.mu.Unlock()
		return
	case f.garbage.Load():
		_, _ = io.WriteString(c, "FAILURE\n")
		c.Close()
		return
	}
	up, err := net.Dial("unix", f.target)
	if err != nil {
		c.Close()
		return
	}
	f.accepted.Add(1)
	if _, err := io.WriteString(c, "OK 1073741824\n"); err != nil {
		c.Close()
		up.Close()
		return
	}
	go func() {
		_, _ = io.Copy(up, br)
		up.Close()
	}()
	_, _ = io.Copy(c, up)
	c.Close()
}

func TestVsockDialerRetriesUntilGuestListens(t *testing.T) {
	sock := startGuest(t)
	uds := filepath.Join(t.TempDir(), "fc.vsock")
	fc := newFakeFirecracker(t, uds, sock)
	fc.reject.Store(3) // Firecracker drops CONNECTs while the guest is not up
	fc.hold.Store(1)   // and may hold one past the attempt deadline

	c := agent.New(agent.VsockDialer(uds, agent.DefaultVsockPort))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != "healthy" || h.SandboxID != "sbx" {
		t.Fatalf("health %+v", h)
	}
	fc.mu.Lock()
	lines := append([]string(nil), fc.lines...)
	fc.mu.Unlock()
	// 3 dropped, 1 held past the attempt deadline, 1 accepted (more only
	// if a loaded machine made an attempt time out on its own).
	if len(lines) < 5 || fc.reject.Load() >= 0 || fc.hold.Load() >= 0 {
		t.Fatalf("%d CONNECT attempts, want at least 5 consuming every reject and hold", len(lines))
	}
	for _, l := range lines {
		if l != "CONNECT 9998\n" {
			t.Fatalf("handshake line %q", l)
		}
	}

	// The pooled transport reuses the connection: no handshake per request.
	before := fc.accepted.Load()
	for range 20 {
		if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := fc.accepted.Load() - before; n != 0 {
		t.Fatalf("%d new vsock connections for 20 sequential requests, want 0", n)
	}
}

func TestVsockDialerWaitsForSocketFile(t *testing.T) {
	sock := startGuest(t)
	uds := filepath.Join(t.TempDir(), "fc.vsock")
	c := agent.New(agent.VsockDialer(uds, agent.DefaultVsockPort))
	defer c.Close()
	ready := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ready <- c.WaitReady(ctx, 0)
	}()
	// The VMM creates its socket a little later.
	time.Sleep(50 * time.Millisecond)
	newFakeFirecracker(t, uds, sock)
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
}

func TestVsockDialerRejectsForeignReply(t *testing.T) {
	sock := startGuest(t)
	uds := filepath.Join(t.TempDir(), "fc.vsock")
	fc := newFakeFirecracker(t, uds, sock)
	fc.garbage.Store(true)
	c := agent.New(agent.VsockDialer(uds, agent.DefaultVsockPort))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "unexpected vsock handshake reply") {
		t.Fatalf("got %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("a foreign reply was retried until the deadline")
	}
}

func TestWaitReadyGivesUpAtDeadline(t *testing.T) {
	c := agent.New(agent.VsockDialer(filepath.Join(t.TempDir(), "never.vsock"), agent.DefaultVsockPort))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	err := c.WaitReady(ctx, 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

func TestErrorsDecode(t *testing.T) {
	sock := startGuest(t)
	c := agent.New(agent.UnixDialer(sock))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Exec(ctx, agent.ExecRequest{})
	var ae *agent.Error
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != agent.CodeBadRequest || ae.Field != "argv" || ae.Detail == "" {
		t.Fatalf("got %#v", err)
	}
	_, err = c.Service(ctx, "missing")
	if !agent.IsNotFound(err) || !agent.IsCode(err, agent.CodeNotFound) {
		t.Fatalf("got %v", err)
	}
}

// BenchmarkExecRoundTrip measures exec of `true` through the client over
// a unix socket (target p50 <= 3 ms).
func BenchmarkExecRoundTrip(b *testing.B) {
	sock := startGuest(b)
	c := agent.New(agent.UnixDialer(sock))
	defer c.Close()
	ctx := context.Background()
	const inner = 50
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		for range inner {
			t0 := time.Now()
			res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}})
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("exec: %v %+v", err, res)
			}
			lat = append(lat, time.Since(t0))
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(q float64) float64 {
		return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}
