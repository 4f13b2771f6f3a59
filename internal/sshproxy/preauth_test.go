package sshproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// silent opens a TCP connection from local address from (a loopback
// address: all of 127/8 is this machine) that never speaks.
func (e *env) silent(t *testing.T, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// greeted reports whether the proxy started a handshake on c (it sends its
// version line first), or closed it at once.
func greeted(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		return strings.HasPrefix(line, "SSH-2.0-atelier")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection neither greeted nor closed")
	}
	return false
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestPreAuthLimits: connections that never authenticate are capped per
// address and in all; the one past a cap is closed at once, a client from
// another address still logs in, slots come back when connections close or
// their handshake time runs out, and descriptors stay bounded however many
// connections arrive.
func TestPreAuthLimits(t *testing.T) {
	const perAddr, total, grace = 3, 6, 1500 * time.Millisecond
	e := newEnvWith(t, nil, func(o *Options) {
		o.MaxPreAuth, o.MaxPreAuthPerAddr, o.HandshakeTimeout = total, perAddr, grace
	})
	id, signer, _ := e.loggedIn(t) // an authenticated session holds no pre-auth slot

	// A flood from one address costs at most its slots: the client's own
	// descriptors, plus perAddr on the proxy's side.
	before := openFDs(t)
	const flood = 300
	var flooding []net.Conn
	for i := 0; i < flood; i++ {
		flooding = append(flooding, e.silent(t, "127.0.0.5"))
	}
	time.Sleep(200 * time.Millisecond) // let the accept loop catch up
	if grown := openFDs(t) - before; grown > flood+perAddr+10 {
		t.Errorf("%d connections from one address grew descriptors by %d (the proxy kept them)", flood, grown)
	}
	if tot, one := e.proxy.pre.counts(addrKey(&net.TCPAddr{IP: net.ParseIP("127.0.0.5")})); one > perAddr || tot > total {
		t.Errorf("pre-auth counts %d in all, %d for the flooding address", tot, one)
	}
	for _, c := range flooding {
		c.Close()
	}
	waitCounts(t, e, "127.0.0.5", 0)

	// Per address: three silent connections from 127.0.0.2, the fourth closed at once.
	var held []net.Conn
	opened := time.Now()
	for i := 0; i < perAddr; i++ {
		c := e.silent(t, "127.0.0.2")
		if !greeted(t, c) {
			t.Fatalf("connection %d from 127.0.0.2 refused below the limit", i+1)
		}
		held = append(held, c)
	}
	start := time.Now()
	if greeted(t, e.silent(t, "127.0.0.2")) {
		t.Fatalf("connection %d from one address was served", perAddr+1)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("excess connection closed after %v, not at once", d)
	}

	// Another address is served, and a real client logs in.
	cl, err := e.dial(id, signer, nil)
	if err != nil {
		t.Fatalf("legit client while 127.0.0.2 is at its limit: %v", err)
	}
	if out, _, code := run(t, cl, "echo in", nil); out != "in\n" || code != 0 {
		t.Fatalf("legit session: %q %d", out, code)
	}
	cl.Close()

	// In all: fill the rest from other addresses; the next from a fresh one is refused.
	for i := perAddr; i < total; i++ {
		if !greeted(t, e.silent(t, "127.0.0.3")) {
			t.Fatalf("connection %d in all refused below the limit", i+1)
		}
	}
	if greeted(t, e.silent(t, "127.0.0.4")) {
		t.Fatalf("connection %d in all was served", total+1)
	}

	// Closing one frees its slot.
	held[0].Close()
	waitCounts(t, e, "127.0.0.2", perAddr-1)
	if !greeted(t, e.silent(t, "127.0.0.4")) {
		t.Fatal("slot not freed by a closed connection")
	}

	// Silent connections are dropped when their handshake time runs out.
	closedAfter(t, held[1], 3*grace)
	if d := time.Since(opened); d < grace-100*time.Millisecond {
		t.Errorf("silent connection closed %v after it opened, before the handshake timeout %v", d, grace)
	}
	waitCounts(t, e, "127.0.0.2", 0)
}

func waitCounts(t *testing.T, e *env, addr string, want int) {
	t.Helper()
	key := netip.PrefixFrom(netip.MustParseAddr(addr), 32)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, n := e.proxy.pre.counts(key); n == want {
			return
		}
	}
	_, n := e.proxy.pre.counts(key)
	t.Fatalf("%s holds %d pre-auth slots, want %d", addr, n, want)
}

// closedAfter waits up to limit for the server to close c.
func closedAfter(t *testing.T, c net.Conn, limit time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("silent connection still open after %v", limit)
	}
}

func TestAddrKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.1:22", "192.0.2.1/32"},
		{"[::ffff:192.0.2.1]:22", "192.0.2.1/32"},
		{"[2001:db8:1:2:3:4:5:6]:22", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:22", "2001:db8:1:2::/64"},
	} {
		ap := netip.MustParseAddrPort(tc.addr)
		if got := addrKey(net.TCPAddrFromAddrPort(ap)); got.String() != tc.want {
			t.Errorf("%s: %s, want %s", tc.addr, got, tc.want)
		}
	}
}

// failingListener fails Accept while fail is set, like a process out of
// file descriptors.
type failingListener struct {
	net.Listener
	fail chan bool
	on   bool
}

func (l *failingListener) Accept() (net.Conn, error) {
	select {
	case l.on = <-l.fail:
	default:
	}
	if l.on {
		time.Sleep(5 * time.Millisecond)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errTooManyFiles)}
	}
	return l.Listener.Accept()
}

var errTooManyFiles = errors.New("too many open files")

// TestHealth: the proxy's readiness fails while accepting fails and once it
// has stopped.
func TestHealth(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.proxy.Health(); err != nil {
		t.Fatalf("serving proxy: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Config: e.cfg, Store: e.st, Sandboxes: e.sbx, HostKey: nil})
	if err != nil {
		t.Fatal(err)
	}
	fl := &failingListener{Listener: ln, fail: make(chan bool, 1)}
	fl.fail <- true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, fl) }()
	waitHealth := func(want string) {
		t.Helper()
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			err = p.Health()
			if (want == "" && err == nil) || (want != "" && err != nil && strings.Contains(err.Error(), want)) {
				return
			}
		}
		t.Fatalf("health %v, want %q", err, want)
	}
	waitHealth("too many open files")
	fl.fail <- false
	c, err := net.Dial("tcp", ln.Addr().String()) // an accept that succeeds clears it
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitHealth("")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitHealth("stopped")
}
