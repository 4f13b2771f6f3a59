package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/vishvananda/netns"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/edge"
	"atelier/internal/network"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/store"
)

// newEdge builds the HTTP edge. Mock mode's guests are local processes, so
// their ports are on loopback; tests that put the bridge in a namespace of
// their own (Options.Network) get an edge that dials guests there.
func newEdge(cfg *config.Config, st *store.Store, au *auth.Service, opts Options, log *slog.Logger) (*edge.Edge, error) {
	eo := edge.Options{Config: cfg, Store: st, Log: log, Sessions: au}
	if cfg.Server.Mode == config.ModeMock {
		eo.GuestHost = "127.0.0.1"
	} else if cfg.Sandbox.Runtime == "kubernetes" && opts.Kubernetes != nil && opts.Drivers == nil {
		var ko kubernetes.Options
		opts.Kubernetes(&ko)
		eo.Dial = ko.Dial
	} else if opts.Network != nil && opts.Drivers == nil {
		no := network.Options{HostNS: netns.None()}
		opts.Network(&no)
		if no.HostNS.IsOpen() {
			eo.Dial = network.DialIn(no.HostNS, &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second})
		}
	}
	e, err := edge.New(eo)
	if err != nil {
		return nil, fmt.Errorf("http edge: %w", err)
	}
	return e, nil
}

// startEdge starts the edge after the start-up reconcile, before the spawn
// workers and the API listeners. In production a failure stops the manager
// (listeners and store closed); in mock mode it is a warning.
func (s *Server) startEdge(ctx context.Context) error {
	err := s.Edge.Start(ctx, s.API.Handler())
	s.health.setEdge(err)
	if err == nil {
		return nil
	}
	// Only one edge runs per process (tests may run two managers at once;
	// production runs one), and developers often cannot bind 80/443.
	if s.Config.Server.Mode == config.ModeMock || errors.Is(err, edge.ErrBusy) {
		s.Log.Warn("edge not started: sandbox hosts are unavailable; set ATELIER_HTTP_PORT and ATELIER_HTTPS_PORT to free ports",
			"http_port", s.Config.Domain.HTTPPort, "https_port", s.Config.Domain.HTTPSPort, "err", err)
		return nil
	}
	if s.tcp != nil {
		s.tcp.Close()
	}
	if s.unix != nil {
		s.unix.Close()
		_ = os.Remove(s.Config.Server.SocketPath)
	}
	s.shutdown()
	return fmt.Errorf("edge on ports %d/%d (domain.httpPort, domain.httpsPort): %w", s.Config.Domain.HTTPPort, s.Config.Domain.HTTPSPort, err)
}

// stopEdge drains the edge; sandboxes are not touched.
func (s *Server) stopEdge() {
	if s.Edge == nil {
		return
	}
	s.health.setEdge(errEdgeStopped)
	if err := s.Edge.Stop(); err != nil {
		s.Log.Warn("stop edge", "err", err)
	}
}
