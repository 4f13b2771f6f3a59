package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/edge"
	"atelier/internal/events"
	"atelier/internal/network"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/store"
)

// newEdge builds the HTTP edge. Mock mode's guests are local processes, so
// their ports are on loopback; tests that put the bridge in a namespace of
// their own (Options.Network) get an edge that dials guests there.
func newEdge(cfg *config.Config, st *store.Store, bus *events.Bus, au *auth.Service, opts Options, log *slog.Logger) (*edge.Edge, error) {
	eo := edge.Options{Config: cfg, Store: st, Log: log, Sessions: au}
	if st.Backend() == "postgres" {
		// Other replicas' edges learn of this one's route changes from the
		// shared event stream (followRoutes).
		eo.Changed = func(ctx context.Context, id string) {
			if _, err := bus.Publish(ctx, events.SystemRoutes, id, routesChanged{SandboxID: id}); err != nil {
				log.Warn("announce a route change to the other replicas", "sandbox_id", id, "err", err)
			}
		}
	}
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

type routesChanged struct {
	SandboxID string `json:"sandboxId"`
}

// followRoutes keeps this replica's edge table equal to the store's routes
// on a shared store: every sandbox event and every route change another
// replica announces re-reads that sandbox (edge.Refresh). A subscription
// the bus dropped (this loop fell behind) is renewed with a full rebuild,
// as is the first, which covers what changed before it.
func (s *Server) followRoutes(ctx context.Context) {
	for ctx.Err() == nil {
		live, cancel := s.Bus.Subscribe()
		if err := s.Edge.Rebuild(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("rebuild edge routes", "err", err)
		}
		s.followEvents(ctx, live)
		cancel()
		if ctx.Err() == nil {
			// Dropped: wait a little so a store that keeps failing is not hammered.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func (s *Server) followEvents(ctx context.Context, live <-chan store.Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-live:
			if !ok {
				return
			}
			if ev.SandboxID == "" || !(ev.Type == events.SystemRoutes || strings.HasPrefix(ev.Type, "sandbox.")) {
				continue
			}
			if err := s.Edge.Refresh(ctx, ev.SandboxID); err != nil && ctx.Err() == nil {
				s.Log.Warn("refresh edge routes", "sandbox_id", ev.SandboxID, "err", err)
			}
		}
	}
}
