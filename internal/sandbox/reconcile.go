package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"atelier/internal/store"
)

// Inventory lists, by sandbox id, what exists on the host for each kind of
// resource; a nil function skips that kind. The server wires it from the
// drivers, so the reconciler compares the store with reality.
type Inventory struct {
	Runtimes func(ctx context.Context) ([]string, error)
	Links    func(ctx context.Context) ([]string, error)
	// Volumes lists the sandbox volumes of every volume driver present.
	Volumes func(ctx context.Context) ([]HostVolume, error)
}

// HostVolume is one sandbox volume found on the host.
type HostVolume struct {
	ID        string // the sandbox's
	Driver    string // "lvm" or "file"; "" when the store has one driver
	SizeBytes int64
}

// Report counts what one reconciler pass fixed.
type Report struct {
	Interrupted   int `json:"interrupted" doc:"Sandboxes left mid-operation (creating, starting, stopping) by a crash, settled."`
	Destroyed     int `json:"destroyed" doc:"Interrupted destroys finished."`
	Dead          int `json:"dead" doc:"Running sandboxes whose runtime had exited, marked error."`
	Runtimes      int `json:"runtimes" doc:"Guest processes or containers of no live sandbox, removed."`
	Links         int `json:"links" doc:"Network links of no live sandbox, removed."`
	Volumes       int `json:"volumes" doc:"Volumes of no sandbox, removed."`
	Leases        int `json:"leases" doc:"IP leases of no sandbox, or of errored ones, released."`
	JournalClosed int `json:"journalClosed" doc:"Journal steps left open by a crash, closed as failed."`
}

func (r Report) total() int {
	return r.Interrupted + r.Destroyed + r.Dead + r.Runtimes + r.Links + r.Volumes + r.Leases + r.JournalClosed
}

// SetInventory installs the host listings the reconciler uses for orphans.
func (s *Service) SetInventory(inv Inventory) { s.inventory.Store(&inv) }

// JournalRetention is what the journal keeps: every open step, the newest
// 64 closed steps of each sandbox (its last several operations), and a
// deleted sandbox's history for a week, at most 10 000 steps of them.
var JournalRetention = store.OpRetention{PerSandbox: 64, Gone: 7 * 24 * time.Hour, GoneMax: 10000}

// RunReconciler reconciles, and prunes the journal, every interval until
// ctx is done. The first reconcile at start-up is the server's job
// (Reconcile before serving).
func (s *Service) RunReconciler(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	s.PruneJournal(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.Reconcile(ctx, false); err != nil && ctx.Err() == nil {
				s.log.Warn("reconcile", "err", err)
			}
			s.PruneJournal(ctx)
		}
	}
}

// PruneJournal deletes the journal steps JournalRetention does not keep,
// so the journal stays bounded however many sandboxes come and go.
func (s *Service) PruneJournal(ctx context.Context) {
	r := JournalRetention
	if s.retention != nil {
		r = *s.retention
	}
	n, err := s.st.PruneOps(ctx, r)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("prune journal", "err", err)
		}
		return
	}
	if n > 0 {
		s.log.Debug("journal pruned", "steps", n)
	}
}

// Reconcile converges the store and the host: rows left mid-operation by a
// crash are settled truthfully, sandboxes whose runtime died are marked,
// and resources that belong to no live sandbox are removed. At start-up
// (startup true) journal steps still open were interrupted and are closed.
func (s *Service) Reconcile(ctx context.Context, startup bool) (Report, error) {
	var rep Report
	var errs []error
	rows, err := s.st.ListSandboxes(ctx, store.SandboxFilter{NoTimings: true})
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	known := map[string]store.Sandbox{}
	for _, sb := range rows {
		known[sb.ID] = sb
		if err := s.reconcileRow(ctx, sb, &rep); err != nil {
			errs = append(errs, err)
		}
	}
	if startup {
		ops, err := s.st.OpenOps(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		for _, o := range ops {
			if err := s.st.SetOpState(ctx, o.ID, store.OpFailed, "interrupted: the manager stopped during this step"); err == nil {
				rep.JournalClosed++
			}
		}
	}
	if err := s.reapOrphans(ctx, known, &rep); err != nil {
		errs = append(errs, err)
	}
	s.count(rep)
	if rep.total() > 0 {
		s.log.Info("reconciled", "interrupted", rep.Interrupted, "destroyed", rep.Destroyed, "dead", rep.Dead,
			"runtimes", rep.Runtimes, "links", rep.Links, "volumes", rep.Volumes, "leases", rep.Leases, "journal", rep.JournalClosed)
	}
	return rep, errors.Join(errs...)
}

func (s *Service) count(rep Report) {
	for kind, n := range map[string]int{
		"interrupted": rep.Interrupted, "destroyed": rep.Destroyed, "dead": rep.Dead, "runtime": rep.Runtimes,
		"link": rep.Links, "volume": rep.Volumes, "lease": rep.Leases, "journal": rep.JournalClosed,
	} {
		if n > 0 {
			s.m.ReconcilerFixes.WithLabelValues(kind).Add(float64(n))
		}
	}
}

// busy reports whether this process is working on the sandbox right now.
func (s *Service) busy(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight[id] != nil
}

func (s *Service) reconcileRow(ctx context.Context, sb store.Sandbox, rep *Report) error {
	id := sb.ID
	if s.busy(id) {
		return nil
	}
	// Never wait behind a lifecycle operation: the next pass will see it.
	lctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	unlock, err := s.locks.Lock(lctx, id)
	cancel()
	if err != nil {
		return nil
	}
	defer unlock()
	if sb, err = s.st.GetSandbox(ctx, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}
	if s.busy(id) || s.workedOnElsewhere(sb) {
		return nil
	}
	bg := context.WithoutCancel(ctx)
	hooks := s.hooks.Load()
	log := s.log.With("sandbox_id", id)

	switch sb.Status {
	case store.StatusDestroying:
		rep.Destroyed++
		log.Info("finishing an interrupted destroy")
		return s.finishDestroy(bg, sb)

	case store.StatusCreating:
		// No job runs it in this process: the manager crashed mid-create.
		rep.Interrupted++
		log.Info("undoing an interrupted create")
		errs := []error{
			s.drv.Runtime.Destroy(bg, id), s.drv.Volumes.Delete(bg, id), s.drv.Network.Detach(bg, id),
			s.st.ReleaseLease(bg, id), optional(hooks.OnDestroyed)(bg, id),
		}
		return s.settle(bg, sb, store.StatusError, "create interrupted by a manager restart; destroy it or start it again", errs)

	case store.StatusStarting, store.StatusStopping:
		rep.Interrupted++
		log.Info("settling an interrupted operation", "status", sb.Status)
		errs := []error{s.drv.Runtime.Stop(bg, id), s.drv.Network.Detach(bg, id), optional(hooks.OnStopped)(bg, id)}
		if sb.Status == store.StatusStopping {
			return s.settle(bg, sb, store.StatusStopped, "", errs)
		}
		errs = append(errs, s.st.ReleaseLease(bg, id))
		return s.settle(bg, sb, store.StatusError, "start interrupted by a manager restart; start it again", errs)

	case store.StatusRunning:
		alive, err := s.drv.Runtime.Alive(bg, id)
		if err != nil || alive {
			return err
		}
		rep.Dead++
		log.Warn("runtime exited unexpectedly")
		s.agents.drop(id)
		s.svc.drop(id)
		errs := []error{s.drv.Runtime.Stop(bg, id), s.drv.Network.Detach(bg, id), optional(hooks.OnStopped)(bg, id),
			s.st.ReleaseLease(bg, id)}
		return s.settle(bg, sb, store.StatusError, "the sandbox's runtime exited unexpectedly; start it again", errs)

	case store.StatusError:
		// An errored sandbox may still hold its address when its guest could
		// not be confirmed down; once the runtime is gone, free it.
		if sb.IP == "" {
			if _, err := s.st.GetLease(bg, id); errors.Is(err, store.ErrNotFound) {
				return nil
			}
		}
		if alive, err := s.drv.Runtime.Alive(bg, id); err != nil || alive {
			if alive {
				return s.drv.Runtime.Stop(bg, id)
			}
			return err
		}
		if err := errors.Join(s.drv.Network.Detach(bg, id), s.st.ReleaseLease(bg, id)); err != nil {
			return err
		}
		rep.Leases++
		_, err := s.st.UpdateSandbox(bg, id, func(x *store.Sandbox) { x.IP, x.MAC = "", "" })
		return err
	}
	return nil
}

// settle moves a row to its truthful state after the cleanup errs; a failed
// cleanup leaves the row for the next pass.
func (s *Service) settle(ctx context.Context, sb store.Sandbox, to store.Status, msg string, errs []error) error {
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile %s: %w", sb.ID, err)
	}
	_, err := s.move(ctx, sb.ID, []store.Status{sb.Status}, to, noLimits, func(x *store.Sandbox) {
		x.Error = msg
		if to == store.StatusError {
			x.IP, x.MAC = "", ""
		}
	})
	return err
}

// reapOrphans removes host resources and leases whose sandbox is gone. A
// resource whose id the store does not know is never Atelier's to keep.
func (s *Service) reapOrphans(ctx context.Context, known map[string]store.Sandbox, rep *Report) error {
	bg := context.WithoutCancel(ctx)
	var errs []error
	invp := s.inventory.Load()
	var inv Inventory
	if invp != nil {
		inv = *invp
	}
	// Re-read a candidate before removing it: a create may have inserted it
	// after the listing.
	orphan := func(id string) bool {
		if _, ok := known[id]; ok || s.busy(id) {
			return false
		}
		_, err := s.st.GetSandbox(bg, id)
		return errors.Is(err, store.ErrNotFound)
	}
	var volumes func(context.Context) ([]string, error)
	if inv.Volumes != nil {
		volumes = func(ctx context.Context) ([]string, error) {
			vs, err := inv.Volumes(ctx)
			s.recordVolumes(ctx, known, vs)
			ids := make([]string, 0, len(vs))
			for _, v := range vs {
				ids = append(ids, v.ID)
			}
			return ids, err
		}
	}
	kinds := []struct {
		list   func(context.Context) ([]string, error)
		remove func(context.Context, string) error
		n      *int
		name   string
	}{
		{inv.Runtimes, s.drv.Runtime.Destroy, &rep.Runtimes, "runtime"},
		{inv.Links, s.drv.Network.Detach, &rep.Links, "link"},
		// Delete removes the volume from every driver present.
		{volumes, s.drv.Volumes.Delete, &rep.Volumes, "volume"},
	}
	for _, k := range kinds {
		if k.list == nil {
			continue
		}
		found, err := k.list(bg)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %ss: %w", k.name, err))
			continue
		}
		seen := map[string]bool{}
		for _, id := range found {
			if seen[id] || !orphan(id) {
				continue
			}
			seen[id] = true
			if err := k.remove(bg, id); err != nil {
				errs = append(errs, fmt.Errorf("remove orphan %s %s: %w", k.name, id, err))
				continue
			}
			*k.n++
			s.log.Info("removed orphan "+k.name, "sandbox_id", id)
		}
	}
	leases, err := s.st.ListLeases(bg)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, l := range leases {
		if !orphan(l.SandboxID) {
			continue
		}
		if err := s.st.ReleaseLease(bg, l.SandboxID); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Leases++
		s.log.Info("released orphan lease", "sandbox_id", l.SandboxID, "ip", l.IP)
	}
	return errors.Join(errs...)
}

// recordVolumes fills in the disk size and volume driver of sandboxes made
// before the store recorded them, from their volumes on the host, so they
// count against their owner's disk quota.
func (s *Service) recordVolumes(ctx context.Context, known map[string]store.Sandbox, vs []HostVolume) {
	for _, v := range vs {
		sb, ok := known[v.ID]
		needDisk := sb.DiskBytes == 0 && v.SizeBytes > 0
		needDriver := sb.VolumeDriver == "" && v.Driver != ""
		if !ok || (!needDisk && !needDriver) {
			continue
		}
		_, err := s.st.UpdateSandbox(context.WithoutCancel(ctx), v.ID, func(x *store.Sandbox) {
			if x.DiskBytes == 0 {
				x.DiskBytes = v.SizeBytes
			}
			if x.VolumeDriver == "" {
				x.VolumeDriver = v.Driver
			}
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("record volume size", "sandbox_id", v.ID, "err", err)
		}
	}
}
