package main

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"atelier/internal/testenv"
)

func TestNetcheck(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	go func() { done <- netcheckListen(ctx, listen, ready) }()
	<-ready
	closed := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	for _, c := range []struct {
		name string
		args []string
		want int
	}{
		{"listener", []string{"dial", listen, "--timeout", "2s", "--attempts", "2", "--interval", "10ms"}, netcheckConnected},
		{"nothing listens", []string{"dial", closed, "--timeout", "2s", "--attempts", "3", "--interval", "10ms"}, netcheckBlocked},
		{"no address", []string{"dial"}, 2},
		{"unknown mode", []string{"ping", listen}, 2},
		{"stray argument", []string{"dial", listen, "extra"}, 2},
		{"no attempts", []string{"dial", listen, "--attempts", "0"}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := netcheckMain(c.args); got != c.want {
				t.Fatalf("netcheck %v: exit %d, want %d", c.args, got, c.want)
			}
		})
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("listener did not end with its context")
	}
}

// A listener that comes up after the first attempts is still found: the
// dialer keeps trying (a probe Pod's listener may start late).
func TestNetcheckDialRetries(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		time.Sleep(150 * time.Millisecond)
		_ = netcheckListen(ctx, addr, nil)
	}()
	if err := netcheckDial(ctx, addr, 20, time.Second, 50*time.Millisecond); err != nil {
		t.Fatalf("dial a late listener: %v", err)
	}
}
