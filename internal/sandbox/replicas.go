package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// StepAdopt is the journal step of a replica taking over a create another
// replica was running when it died: the dead one's partial work is undone,
// and the create runs again here from the start.
const StepAdopt = "adopt"

// adoptable reports whether a creating row a dead replica left can be
// finished here, and how its workspace is provisioned. Only on a shared
// store: a single manager's start-up reconcile undoes an interrupted
// create (its caller is gone with it). Not adoptable: a create adopted once
// already (a create that kills its manager must not kill them all in
// turn), a pooled sandbox (the pool keeper refills), a prebuild's build
// sandbox (the leader settles the build, see
// workspace.Prebuilds.RecoverStale), and a workspace sandbox whose journal
// does not say whether it starts from the prebuild.
func (s *Service) adoptable(ctx context.Context, sb store.Sandbox) (ProvisionMode, bool, error) {
	if s.sharedFresh.Load() <= 0 || Pooled(sb) {
		// A pooled sandbox's fill is the pool keeper's: reverted, the
		// leader's keeper boots another.
		return 0, false, nil
	}
	ops, err := s.st.ListOps(ctx, sb.ID)
	if err != nil {
		return 0, false, err
	}
	mode, known := FromImage, sb.WorkspaceID == ""
	for _, o := range ops {
		if o.Op != OpCreate {
			continue
		}
		switch o.Step {
		case StepAdopt:
			return 0, false, nil
		case StepVolume:
			known = true
			if strings.HasPrefix(o.Detail, "prebuild-") {
				mode = FromPrebuild
			}
		}
	}
	if sb.WorkspaceID != "" {
		pb, err := s.st.GetPrebuild(ctx, sb.WorkspaceID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, false, err
		}
		if err == nil && pb.BuildID == sb.ID {
			return 0, false, nil
		}
	}
	return mode, known, nil
}

// adoptCreate takes over the create of sb, which a replica that died left
// in creating: it closes that replica's open journal steps, undoes what
// they did (every undo treats "already gone" as success, so whatever step
// it died at), and queues the create on this replica's spawn workers. The
// row stays creating throughout; the create ends running, or in error
// after its own undo as any failed create does. The caller holds the
// sandbox lock.
func (s *Service) adoptCreate(bg context.Context, sb store.Sandbox, mode ProvisionMode) error {
	id := sb.ID
	jctx, cancel := context.WithCancel(bg)
	j := &op{id: id, ctx: jctx, cancel: cancel, done: make(chan struct{}), enqueued: time.Now(), prov: mode}
	s.mu.Lock()
	if s.inflight[id] != nil {
		s.mu.Unlock()
		cancel()
		return nil
	}
	s.inflight[id] = j
	s.mu.Unlock()
	ops, err := s.st.ListOps(bg, id)
	if err != nil {
		s.finish(j)
		return fmt.Errorf("adopt the create of %s: %w", id, err)
	}
	for _, o := range ops {
		if o.State == store.OpIntent {
			if err := s.st.SetOpState(bg, o.ID, store.OpFailed, "interrupted: the replica running this step stopped; another replica adopted the create"); err != nil {
				s.finish(j)
				return fmt.Errorf("adopt the create of %s: %w", id, err)
			}
		}
	}
	p := s.newPlan(bg, id, OpCreate)
	hooks := s.hooks.Load()
	err = p.step(StepAdopt, "undo the dead replica's steps, create again", func(ctx context.Context) (string, error) {
		s.agents.drop(id)
		s.svc.drop(id)
		return "", errors.Join(s.drv.Runtime.Destroy(ctx, id), s.drv.Volumes.Delete(ctx, id), s.drv.Network.Detach(ctx, id),
			s.st.ReleaseLease(ctx, id), optional(hooks.OnDestroyed)(ctx, id))
	}, nil)
	if err != nil {
		s.finish(j)
		// The next pass sees the row again, adopted once: it reverts it.
		return fmt.Errorf("adopt the create of %s: %w", id, err)
	}
	if err := s.st.TouchSandboxes(bg, []string{id}); err != nil {
		s.log.Warn("mark an adopted create", "sandbox_id", id, "err", err)
	}
	s.q.push(j)
	return nil
}
