package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"time"

	"atelier/internal/config"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/store"
)

// leaseName is the Kubernetes Lease of the leader on a cluster.
const leaseName = "atelier-leader-reconciler"

// newLeaderLock chooses where the leader lease lives: with the kubernetes
// runtime, a Lease in sandbox.kubernetes.namespace (the API server orders
// the replicas' claims; the manager's Role grants get, create and update
// on leases); otherwise the store's settings row.
func newLeaderLock(cfg *config.Config, st *store.Store) (LeaderLock, error) {
	if cfg.Sandbox.Runtime != "kubernetes" || cfg.Server.Mode == config.ModeMock {
		return storeLock{st: st, name: leaderName}, nil
	}
	k := cfg.Sandbox.Kubernetes
	rc, err := kubernetes.RestConfig(k.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewClient(rc)
	if err != nil {
		return nil, err
	}
	return &kubernetes.LeaseLock{Client: cs, Namespace: k.Namespace, Name: leaseName}, nil
}

// Several managers may share one Postgres store (replicas). Each serves the
// API and its own creates; one, the leader, runs the work that must happen
// once: the reconciler, journal pruning and event trimming. The leader holds
// a lease in the store (store.AcquireLeader) that it renews every third of
// LeaderTTL; if it dies, another replica takes over within LeaderTTL.

// DefaultLeaderTTL is how long a leader's lease lasts without renewal.
const DefaultLeaderTTL = 15 * time.Second

const leaderName = "reconciler"

// replicated reports whether other managers may share this store.
func (s *Server) replicated() bool { return s.Store.Backend() == "postgres" }

// Leading reports whether this manager runs the once-per-store work: always
// on SQLite, only while holding the leader lease on Postgres.
func (s *Server) Leading() bool { return !s.replicated() || s.leading.Load() }

// ReplicaID names this manager in the leader lease: host name and a
// random suffix, distinct for two managers on one host.
func (s *Server) ReplicaID() string { return s.replicaID }

func newReplicaID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// lead runs the lease (renew or take it every ttl/3, keep this replica's
// in-flight sandboxes fresh for the leader's reconciler, release the lease
// at shutdown so another replica takes over at once) and, apart from it so
// that a slow pass never delays a renewal, the leader's work: a reconcile
// on taking over (which settles what a dead leader left mid-operation once
// it is older than ttl), then one every reconcileEvery.
func (s *Server) lead(ctx context.Context) {
	took := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() { defer close(done); s.holdLease(ctx, took) }()
	defer func() { <-done }()
	tick := time.NewTicker(s.reconcileEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-took:
		case <-tick.C:
		}
		if !s.leading.Load() {
			continue
		}
		// Losing the lease cancels the pass: the rows not reached yet are
		// left to the new leader.
		pctx, cancel := context.WithCancel(ctx)
		s.passCancel.Store(&cancel)
		if !s.leading.Load() {
			cancel()
		}
		if _, err := s.Sandboxes.Reconcile(pctx, false); err != nil && pctx.Err() == nil {
			s.Log.Warn("reconcile", "err", err)
		}
		if _, err := s.Sandboxes.CloseAbandonedOps(pctx); err != nil && pctx.Err() == nil {
			s.Log.Warn("close abandoned journal steps", "err", err)
		}
		if err := s.Prebuilds.RecoverStale(pctx, s.leaderTTL); err != nil && pctx.Err() == nil {
			s.Log.Warn("settle the prebuilds of stopped replicas", "err", err)
		}
		s.Sandboxes.PruneJournal(pctx)
		s.passCancel.Store(nil)
		cancel()
	}
}

// LeaderLock is where the leader lease lives: by default a row in the
// store (storeLock); on a cluster, a Kubernetes Lease
// (kubernetes.LeaseLock). Acquire takes or renews it for ttl and reports
// whether holder holds it and who does; Release hands it over at once.
type LeaderLock interface {
	Acquire(ctx context.Context, holder string, ttl time.Duration) (bool, string, time.Time, error)
	Release(ctx context.Context, holder string) error
}

// storeLock is the lease as the store's leader:reconciler setting.
type storeLock struct {
	st   *store.Store
	name string
}

func (l storeLock) Acquire(ctx context.Context, holder string, ttl time.Duration) (bool, string, time.Time, error) {
	won, cur, err := l.st.AcquireLeader(ctx, l.name, holder, ttl)
	return won, cur.Holder, cur.ExpiresAt, err
}

func (l storeLock) Release(ctx context.Context, holder string) error {
	return l.st.ReleaseLeader(ctx, l.name, holder)
}

func (s *Server) holdLease(ctx context.Context, took chan<- struct{}) {
	ttl := s.leaderTTL
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	log := s.Log.With("replica", s.replicaID)
	for {
		won, cur, _, err := s.leaderLock.Acquire(ctx, s.replicaID, ttl)
		if err != nil && ctx.Err() == nil {
			// Unable to renew: act as a follower rather than risk two leaders.
			log.Warn("leader lease", "err", err)
		}
		was := s.leading.Swap(won)
		switch {
		case won && !was:
			log.Info("leading: this manager runs the reconciler", "lease_ttl", ttl)
			select {
			case took <- struct{}{}:
			default:
			}
		case !won && was:
			log.Warn("no longer leading", "leader", cur)
			if c := s.passCancel.Load(); c != nil {
				(*c)()
			}
		}
		if err := s.Sandboxes.TouchInFlight(ctx); err != nil && ctx.Err() == nil {
			log.Warn("mark in-flight sandboxes", "err", err)
		}
		if err := s.Prebuilds.Touch(ctx); err != nil && ctx.Err() == nil {
			log.Warn("mark running prebuilds", "err", err)
		}
		select {
		case <-ctx.Done():
			if s.leading.Swap(false) {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				if err := s.leaderLock.Release(rctx, s.replicaID); err != nil {
					log.Warn("release the leader lease", "err", err)
				}
				cancel()
			}
			return
		case <-tick.C:
		}
	}
}
