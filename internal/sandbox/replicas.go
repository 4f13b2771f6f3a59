package sandbox

import (
	"context"
	"errors"
	"slices"
	"time"

	"atelier/internal/store"
)

// SetShared tells the service that other managers work on the same store
// (replicas on Postgres). Their in-flight operations are not in this
// process's busy set, so the reconciler leaves a sandbox mid-operation
// (creating, starting, stopping, destroying) alone while its row changed
// less than fresh ago: the replica working on it keeps it fresh with
// TouchInFlight, more often than fresh. A replica that died stops touching,
// and its rows are settled once they are older. 0 turns this off.
func (s *Service) SetShared(fresh time.Duration) { s.sharedFresh.Store(int64(fresh)) }

// InFlight lists the sandboxes this process is working on, sorted.
func (s *Service) InFlight() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.inflight))
	for id := range s.inflight {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// TouchInFlight marks this process's in-flight sandboxes as worked on now,
// for the other replicas' reconcilers (see SetShared).
func (s *Service) TouchInFlight(ctx context.Context) error {
	ids := s.InFlight()
	if len(ids) == 0 {
		return nil
	}
	return s.st.TouchSandboxes(ctx, ids)
}

// workedOnElsewhere reports whether sb, mid-operation, may be another
// replica's job right now.
func (s *Service) workedOnElsewhere(sb store.Sandbox) bool {
	fresh := time.Duration(s.sharedFresh.Load())
	if fresh <= 0 {
		return false
	}
	switch sb.Status {
	case store.StatusCreating, store.StatusStarting, store.StatusStopping, store.StatusDestroying:
		return time.Since(sb.UpdatedAt) < fresh
	}
	return false
}

// CloseAbandonedOps closes, as failed, the journal steps a dead replica
// left open: steps older than the SetShared window of sandboxes no
// replica is working on (gone, or not mid-operation, or stale). A single
// manager does this for every open step at start-up; replicas cannot, as
// the others' steps are open too. It returns how many it closed.
func (s *Service) CloseAbandonedOps(ctx context.Context) (int, error) {
	fresh := time.Duration(s.sharedFresh.Load())
	if fresh <= 0 {
		return 0, nil
	}
	ops, err := s.st.OpenOps(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, o := range ops {
		if s.busy(o.SandboxID) || time.Since(o.UpdatedAt) < fresh {
			continue
		}
		sb, err := s.st.GetSandbox(ctx, o.SandboxID)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			errs = append(errs, err)
			continue
		case s.workedOnElsewhere(sb):
			continue
		}
		if err := s.st.SetOpState(ctx, o.ID, store.OpFailed, "interrupted: the manager running this step stopped"); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if n > 0 {
		s.log.Info("closed journal steps a stopped replica left open", "steps", n)
	}
	return n, errors.Join(errs...)
}
