package testenv

import (
	"net"
	"sync"
	"testing"
)

var (
	portsMu sync.Mutex
	// handed remembers every port given out in this process: the kernel
	// may hand a just-closed ephemeral port straight back, and a test that
	// asks for three ports in a row (API, HTTPS, SSH) must get three.
	handed = map[int]bool{}
)

// FreePort returns a loopback TCP port nothing listens on and that no
// earlier call in this test binary returned.
func FreePort(tb testing.TB) int {
	tb.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handed[port] {
			handed[port] = true
			return port
		}
	}
	tb.Fatal("find a free port: the kernel keeps returning ports already handed out")
	return 0
}
