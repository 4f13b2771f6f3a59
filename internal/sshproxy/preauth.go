package sshproxy

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Pre-authentication limits. A connection costs a file descriptor and a
// goroutine from its first byte, and before authentication its peer is
// anyone: 20 000 connections that never finished their handshake exhausted
// the manager's descriptors. Past the handshake a connection belongs to a
// user whose key was accepted.
const (
	// DefaultMaxPreAuth bounds unauthenticated connections in all.
	DefaultMaxPreAuth = 256
	// DefaultMaxPreAuthPerAddr bounds them per client address (per /64 for
	// IPv6, where one client holds the whole prefix), so one peer cannot
	// take every slot (OpenSSH's MaxStartups is the same idea, globally).
	DefaultMaxPreAuthPerAddr = 16
	// DefaultHandshakeTimeout bounds the key exchange and authentication
	// (OpenSSH's LoginGraceTime).
	DefaultHandshakeTimeout = 20 * time.Second
)

// preAuth counts connections that have not finished authentication.
type preAuth struct {
	max, perAddr int

	mu     sync.Mutex
	total  int
	byAddr map[netip.Prefix]int

	// refused counts connections closed at once since the last log line.
	refused  int
	lastWarn time.Time
}

func newPreAuth(max, perAddr int) *preAuth {
	return &preAuth{max: max, perAddr: perAddr, byAddr: map[netip.Prefix]int{}}
}

// addrKey is the client address a limit applies to.
func addrKey(a net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.PrefixFrom(ip, 32)
}

// acquire takes a slot for a connection from key, or reports that a limit
// is reached (and whether it is time to say so in the log).
func (p *preAuth) acquire(key netip.Prefix) (ok bool, warn bool, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.total >= p.max || p.byAddr[key] >= p.perAddr {
		p.refused++
		if now := time.Now(); now.Sub(p.lastWarn) >= 10*time.Second {
			p.lastWarn = now
			refused, p.refused = p.refused, 0
			return false, true, refused
		}
		return false, false, 0
	}
	p.total++
	p.byAddr[key]++
	return true, false, 0
}

func (p *preAuth) release(key netip.Prefix) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total--
	if p.byAddr[key]--; p.byAddr[key] <= 0 {
		delete(p.byAddr, key)
	}
}

// counts returns the total and the count for key (tests).
func (p *preAuth) counts(key netip.Prefix) (int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total, p.byAddr[key]
}
