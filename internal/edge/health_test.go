package edge

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"atelier/internal/config"
)

// eventually polls cond every 20 ms for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("after 5 s: %s", what)
}

// serveOn starts the header echo on 127.0.0.1:port and returns its stop.
func serveOn(t *testing.T, port int) func() {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(echoHeaders)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return func() { srv.Close() }
}

// countingHarness is a harness whose guest dials are counted.
func countingHarness(t *testing.T) (*harness, *atomic.Int64) {
	var dials atomic.Int64
	h := newHarness(t, func(_ *config.Config, o *Options) {
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	})
	return h, &dials
}

// A booting guest: its VS Code port is dialled when the sandbox starts and
// found closed. A visitor's request does not dial the guest; it waits for
// the probe, which finds the port the moment it opens, and gets the guest's
// answer.
func TestHealthActiveAtBoot(t *testing.T) {
	h := newHarness(t, func(_ *config.Config, o *Options) {
		// A retry window longer than the client's 10 s timeout: only the
		// probe can have let the request through.
		o.RetryWindow = time.Minute
	})
	port := freePort(t)
	h.cfg.Advanced.VM.VSCode.Port = port
	h.sandbox(sbA, "127.0.0.1")
	addr := dialAddr("127.0.0.1", port)
	eventually(t, "port marked down by the boot check", func() bool { return h.e.health.isDown(addr) })

	host := "sandbox-" + sbA + ".atelier.test"
	hdr := http.Header{"Cookie": {h.login(host)}}
	type answer struct {
		status int
		body   string
	}
	got := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("GET", h.url("/"), nil)
		req.Host, req.Header = host, hdr
		res, err := h.c.Do(req)
		if err != nil {
			got <- answer{0, err.Error()}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		got <- answer{res.StatusCode, string(b)}
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case a := <-got:
		t.Fatalf("answered while the port was closed: %d %q", a.status, a.body)
	default:
	}
	serveOn(t, port)
	if a := <-got; a.status != http.StatusOK || !strings.Contains(a.body, "host="+host) {
		t.Fatalf("once the port opened: %d %q", a.status, a.body)
	}
	if h.e.health.isDown(addr) {
		t.Fatal("port still marked down")
	}
}

// A guest port that stops answering is marked down by the request that
// found it closed; later requests wait out the retry window without
// dialling the guest and get the starting page.
func TestHealthPassive(t *testing.T) {
	h, dials := countingHarness(t)
	h.e.health.probeMin = time.Hour // no probe dials while the test counts
	port := freePort(t)
	stop := serveOn(t, port)
	h.cfg.Advanced.VM.VSCode.Port = port
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"
	hdr := http.Header{"Cookie": {h.login(host)}}
	if res := h.do("GET", host, "/", hdr); res.StatusCode != http.StatusOK {
		t.Fatalf("guest up: %d %q", res.StatusCode, body(t, res))
	}
	addr := dialAddr("127.0.0.1", port)
	if h.e.health.isDown(addr) {
		t.Fatal("an answering port is marked down")
	}

	stop()
	h.c.CloseIdleConnections()
	res := h.do("GET", host, "/", hdr)
	if b := body(t, res); res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(b, "Starting") {
		t.Fatalf("guest gone: %d %q", res.StatusCode, b)
	}
	if !h.e.health.isDown(addr) {
		t.Fatal("the failed request did not mark the port down")
	}
	before := dials.Load()
	for range 3 {
		res := h.do("GET", host, "/", hdr)
		if b := body(t, res); res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(b, "Starting") {
			t.Fatalf("port down: %d %q", res.StatusCode, b)
		}
	}
	if n := dials.Load() - before; n != 0 {
		t.Fatalf("requests for a down port dialled the guest %d times", n)
	}

	// Stopping the sandbox forgets its ports: the probe ends.
	if err := h.e.Hooks().OnStopped(context.Background(), sbA); err != nil {
		t.Fatal(err)
	}
	if h.e.health.isDown(addr) {
		t.Fatal("a stopped sandbox's port is still tracked")
	}
}

// Probing an address nobody asks for stops after probeIdle; its health is
// unknown again.
func TestHealthProbeGivesUp(t *testing.T) {
	h, dials := countingHarness(t)
	h.e.health.probeMin, h.e.health.probeMax = 5*time.Millisecond, 10*time.Millisecond
	addr := dialAddr("127.0.0.1", freePort(t))
	h.e.health.markDown(sbA, addr)
	eventually(t, "probes dialling the down port", func() bool { return dials.Load() >= 3 })
	if !h.e.health.isDown(addr) {
		t.Fatal("a refusing port was marked up")
	}
	h.clock.add(h.e.health.probeIdle + time.Second)
	eventually(t, "the probe giving up", func() bool { return !h.e.health.isDown(addr) })
	n := dials.Load()
	time.Sleep(50 * time.Millisecond)
	if d := dials.Load() - n; d != 0 {
		t.Fatalf("%d dials after the probe gave up", d)
	}

	// A stopped edge runs no probe and forgets everything.
	h.e.health.markDown(sbA, addr)
	if err := h.e.Stop(); err != nil {
		t.Fatal(err)
	}
	if h.e.health.isDown(addr) {
		t.Fatal("a stopped edge still tracks a port")
	}
	h.e.health.markDown(sbA, addr)
	if h.e.health.isDown(addr) {
		t.Fatal("a stopped edge marked a port down with no probe to bring it up")
	}
}

// Forgetting a sandbox cancels its checks in flight: a dial to a guest that
// never answers (a dropped SYN) ends at once and marks nothing down, so the
// address, which the next sandbox may lease, carries no stale state.
func TestHealthForgetCancelsChecks(t *testing.T) {
	dialing, ended := make(chan struct{}, 1), make(chan error, 1)
	h := newHarness(t, func(_ *config.Config, o *Options) {
		o.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			dialing <- struct{}{}
			<-ctx.Done()
			ended <- ctx.Err()
			return nil, ctx.Err()
		}
	})
	h.e.health.probeTimeout = time.Hour
	addr := dialAddr("127.0.0.1", freePort(t))
	h.e.health.check(sbA, []string{addr})
	<-dialing
	h.e.health.forget(sbA, []string{addr})
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("dial ended with %v, want canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the check's dial outlived the forgotten sandbox")
	}
	time.Sleep(50 * time.Millisecond)
	if h.e.health.isDown(addr) {
		t.Fatal("a forgotten sandbox's check marked its address down")
	}
}
