package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"atelier/internal/edge"
	"atelier/internal/registry"
)

var errEdgeStopped = errors.New("stopped")

// health is what the server knows of the components it runs, for
// /health/ready: the store answers for itself (internal/api), the rest is
// checked here.
type health struct {
	// serving is true while Serve runs; a manager that is not serving (its
	// API handler used on its own) has no components to check.
	serving atomic.Bool

	mu      sync.Mutex
	edgeErr error // nil once started; why not, otherwise
	edgeSet bool
	sshAddr string
	sshErr  error
	sshSet  bool

	runtime  func(context.Context) error
	registry *registry.Supervisor
}

func (h *health) setEdge(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.edgeErr, h.edgeSet = err, true
}

func (h *health) setSSH(addr string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sshAddr, h.sshErr, h.sshSet = addr, err, true
}

// readiness checks, concurrently, every component Serve runs: the edge, the
// SSH proxy, the runtime and, when the npm cache is enabled, Verdaccio.
// Each failure names what is wrong.
func (s *Server) readiness(ctx context.Context) map[string]error {
	if !s.health.serving.Load() {
		return nil
	}
	checks := map[string]func(context.Context) error{
		"edge": s.edgeReady,
		"ssh":  s.sshReady,
	}
	if s.health.runtime != nil {
		checks["runtime"] = s.health.runtime
	}
	if sup := s.health.registry; sup != nil && s.Registry.Settings().Enabled {
		checks["registry"] = func(ctx context.Context) error { return registryReady(ctx, sup) }
	}
	out := make(map[string]error, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range checks {
		wg.Go(func() {
			err := check(ctx)
			mu.Lock()
			out[name] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// edgeReady: the edge started and its ports accept connections.
func (s *Server) edgeReady(ctx context.Context) error {
	s.health.mu.Lock()
	err, set := s.health.edgeErr, s.health.edgeSet
	s.health.mu.Unlock()
	switch {
	case !set:
		return errors.New("not started yet")
	case err != nil:
		return fmt.Errorf("not running: %w", err)
	}
	ports := []int{s.Config.Domain.HTTPPort}
	if s.Edge.TLSMode() != edge.TLSOff {
		ports = append(ports, s.Config.Domain.HTTPSPort)
	}
	for _, p := range ports {
		if err := dialCheck(ctx, s.Config.Server.Host, p); err != nil {
			return err
		}
	}
	return nil
}

// sshReady: the proxy's port is bound and its accept loop is healthy.
func (s *Server) sshReady(context.Context) error {
	s.health.mu.Lock()
	addr, err, set := s.health.sshAddr, s.health.sshErr, s.health.sshSet
	s.health.mu.Unlock()
	switch {
	case !set:
		return errors.New("not started yet")
	case err != nil:
		return fmt.Errorf("not listening on %s: %w", addr, err)
	}
	return s.SSHProxy.Health()
}

func registryReady(ctx context.Context, sup *registry.Supervisor) error {
	if !sup.Running() {
		return errors.New("the npm cache is enabled but Verdaccio is not running (see {dataDir}/registry/verdaccio.log)")
	}
	if !sup.Online(ctx) {
		return fmt.Errorf("the npm cache is enabled but Verdaccio does not answer %s-/ping", sup.URL())
	}
	return nil
}

// dialCheck connects to a port the manager listens on; a wildcard bind is
// reached on loopback.
func dialCheck(ctx context.Context, host string, port int) error {
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if a.Is6() {
			host = "::1"
		}
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("not accepting connections on %s: %w", addr, err)
	}
	return c.Close()
}
