package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"atelier/internal/events"
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
	// Upkeep, when set, runs at the end of every real pass: runtime chores
	// that must happen while sandboxes run for a long time (a cluster
	// runtime renews agent certificates before they expire).
	Upkeep func(ctx context.Context) error
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
	Adopted       int `json:"adopted" doc:"Creates a stopped replica was running, taken over and run again by this one (shared store only)."`
	Destroyed     int `json:"destroyed" doc:"Interrupted destroys finished."`
	Dead          int `json:"dead" doc:"Running sandboxes whose runtime had exited, marked error."`
	Runtimes      int `json:"runtimes" doc:"Guest processes or containers of no live sandbox, removed."`
	Links         int `json:"links" doc:"Network links of no live sandbox, removed."`
	Volumes       int `json:"volumes" doc:"Volumes of no sandbox, removed."`
	Leases        int `json:"leases" doc:"IP leases of no sandbox, or of errored ones, released."`
	JournalClosed int `json:"journalClosed" doc:"Journal steps left open by a crash, closed as failed."`
	// Fixes names each fix; the counts above are their tally by kind.
	Fixes []Fix `json:"fixes" doc:"Each fix, in the order made (a preview: what a pass would do now)."`
}

// Fix is one thing a reconciler pass fixed, or in a preview would fix.
type Fix struct {
	At        time.Time `json:"at"`
	SandboxID string    `json:"sandboxId" doc:"The sandbox the fixed row or resource belongs to (or, for an orphan, the id it names)."`
	Kind      string    `json:"kind" enum:"interrupted,adopted,destroyed,dead,runtime,link,volume,lease,journal" doc:"The metric label of atelier_reconciler_fixes_total."`
	Detail    string    `json:"detail" doc:"What was done, in words."`
}

// RecentFixesKept is how many fixes RecentFixes remembers.
const RecentFixesKept = 50

// fixLog remembers the newest fixes of real passes and when the last pass
// ran, for the System page; it lives in memory (the log and the metric are
// the durable record).
type fixLog struct {
	mu     sync.Mutex
	ring   []Fix // oldest first, at most RecentFixesKept
	last   time.Time
	passes int64
}

func (l *fixLog) add(at time.Time, fixes []Fix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = at
	l.passes++
	l.ring = append(l.ring, fixes...)
	if n := len(l.ring) - RecentFixesKept; n > 0 {
		l.ring = append([]Fix(nil), l.ring[n:]...)
	}
}

// ReconcilerState is what the reconciler has done lately.
type ReconcilerState struct {
	// Fixes are the newest fixes, newest first.
	Fixes []Fix `json:"fixes" doc:"The newest fixes of the reconciler's passes (at most 50), newest first."`
	// LastPass is zero before the first pass.
	LastPass time.Time `json:"lastPass" doc:"When the last pass ended (zero time before the first)."`
	Passes   int64     `json:"passes" doc:"Passes since the manager started."`
}

// RecentFixes reports the newest fixes of real passes (previews are not
// remembered), newest first, and when the last pass ran.
func (s *Service) RecentFixes() ReconcilerState {
	s.fixes.mu.Lock()
	defer s.fixes.mu.Unlock()
	out := ReconcilerState{Fixes: make([]Fix, 0, len(s.fixes.ring)), LastPass: s.fixes.last, Passes: s.fixes.passes}
	for i := len(s.fixes.ring) - 1; i >= 0; i-- {
		out.Fixes = append(out.Fixes, s.fixes.ring[i])
	}
	return out
}

// pass is one reconciler run; dry passes only record what they would fix.
type pass struct {
	rep Report
	dry bool
}

func (p *pass) fix(n *int, kind, id, detail string) {
	*n++
	p.rep.Fixes = append(p.rep.Fixes, Fix{At: time.Now().UTC(), SandboxID: id, Kind: kind, Detail: detail})
}

func (r Report) total() int {
	return r.Interrupted + r.Adopted + r.Destroyed + r.Dead + r.Runtimes + r.Links + r.Volumes + r.Leases + r.JournalClosed
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
	rep, err := s.reconcile(ctx, startup, false)
	s.count(rep)
	s.fixes.add(time.Now().UTC(), rep.Fixes)
	if rep.total() > 0 {
		s.log.Info("reconciled", "interrupted", rep.Interrupted, "adopted", rep.Adopted, "destroyed", rep.Destroyed, "dead", rep.Dead,
			"runtimes", rep.Runtimes, "links", rep.Links, "volumes", rep.Volumes, "leases", rep.Leases, "journal", rep.JournalClosed)
		s.publishFixes(ctx, rep)
	}
	return rep, err
}

// PreviewReconcile reports what a pass would fix now, changing nothing: the
// cleanup dialog shows it before an admin confirms. A sandbox this process
// is working on is skipped, as a real pass skips it.
func (s *Service) PreviewReconcile(ctx context.Context) (Report, error) {
	return s.reconcile(ctx, false, true)
}

// publishFixes tells admins' event streams (GET /api/events shows system.*
// events to admins only) what a pass fixed, so the System page follows the
// reconciler without polling.
func (s *Service) publishFixes(ctx context.Context, rep Report) {
	if s.bus == nil {
		return
	}
	if n := len(rep.Fixes) - RecentFixesKept; n > 0 {
		rep.Fixes = rep.Fixes[n:]
	}
	if _, err := s.bus.Publish(context.WithoutCancel(ctx), events.SystemReconciled, "", rep); err != nil {
		s.log.Warn("publish reconciler fixes", "err", err)
	}
}

func (s *Service) reconcile(ctx context.Context, startup, dry bool) (Report, error) {
	p := &pass{dry: dry, rep: Report{Fixes: []Fix{}}}
	var errs []error
	rows, err := s.st.ListSandboxes(ctx, store.SandboxFilter{NoTimings: true})
	if err != nil {
		return p.rep, fmt.Errorf("reconcile: %w", err)
	}
	known := map[string]store.Sandbox{}
	for _, sb := range rows {
		known[sb.ID] = sb
		if err := s.reconcileRow(ctx, sb, p); err != nil {
			errs = append(errs, err)
		}
	}
	if startup && !dry {
		ops, err := s.st.OpenOps(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		for _, o := range ops {
			if err := s.st.SetOpState(ctx, o.ID, store.OpFailed, "interrupted: the manager stopped during this step"); err == nil {
				p.fix(&p.rep.JournalClosed, "journal", o.SandboxID, fmt.Sprintf("the %s step %s was left open by a stop: close it as failed", o.Op, o.Step))
			}
		}
	}
	if err := s.reapOrphans(ctx, known, p); err != nil {
		errs = append(errs, err)
	}
	if inv := s.inventory.Load(); !dry && inv != nil && inv.Upkeep != nil {
		if err := inv.Upkeep(ctx); err != nil {
			errs = append(errs, fmt.Errorf("reconcile: upkeep: %w", err))
		}
	}
	return p.rep, errors.Join(errs...)
}

func (s *Service) count(rep Report) {
	for kind, n := range map[string]int{
		"interrupted": rep.Interrupted, "adopted": rep.Adopted, "destroyed": rep.Destroyed, "dead": rep.Dead, "runtime": rep.Runtimes,
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

func (s *Service) reconcileRow(ctx context.Context, sb store.Sandbox, p *pass) error {
	id := sb.ID
	if s.busy(id) {
		return nil
	}
	// A preview changes nothing, so it needs no lock and reads the listed row.
	if !p.dry {
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
		if s.busy(id) {
			return nil
		}
	}
	// Another replica may be working on it (a shared store, see SetShared).
	if s.workedOnElsewhere(sb) {
		return nil
	}
	rep := &p.rep
	bg := context.WithoutCancel(ctx)
	hooks := s.hooks.Load()
	log := s.log.With("sandbox_id", id)

	switch sb.Status {
	case store.StatusDestroying:
		p.fix(&rep.Destroyed, "destroyed", id, "a destroy the manager was interrupted in: finish it")
		if p.dry {
			return nil
		}
		log.Info("finishing an interrupted destroy")
		return s.finishDestroy(bg, sb)

	case store.StatusCreating:
		// No job runs it here. On a shared store another replica ran it and
		// died (its row went stale): this one finishes it when it can.
		mode, adopt, err := s.adoptable(bg, sb)
		if err != nil {
			return err
		}
		if adopt {
			p.fix(&rep.Adopted, "adopted", id, "a create a stopped replica was running: undo its steps, run the create here")
			if p.dry {
				return nil
			}
			log.Info("adopting the create of a stopped replica")
			return s.adoptCreate(bg, sb, mode)
		}
		// The manager crashed mid-create.
		p.fix(&rep.Interrupted, "interrupted", id, "a create the manager was interrupted in: undo it, mark the sandbox error")
		if p.dry {
			return nil
		}
		log.Info("undoing an interrupted create")
		errs := []error{
			s.drv.Runtime.Destroy(bg, id), s.drv.Volumes.Delete(bg, id), s.drv.Network.Detach(bg, id),
			s.st.ReleaseLease(bg, id), optional(hooks.OnDestroyed)(bg, id),
		}
		return s.settle(bg, sb, store.StatusError, "create interrupted by a manager restart; destroy it or start it again", errs)

	case store.StatusStarting, store.StatusStopping:
		to := store.StatusError
		if sb.Status == store.StatusStopping {
			to = store.StatusStopped
		}
		p.fix(&rep.Interrupted, "interrupted", id, fmt.Sprintf("a %s the manager was interrupted in: mark the sandbox %s", map[store.Status]string{
			store.StatusStarting: "start", store.StatusStopping: "stop"}[sb.Status], to))
		if p.dry {
			return nil
		}
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
		p.fix(&rep.Dead, "dead", id, "its runtime exited: mark the sandbox error, release its address")
		if p.dry {
			return nil
		}
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
			if alive && !p.dry {
				return s.drv.Runtime.Stop(bg, id)
			}
			return err
		}
		if p.dry {
			p.fix(&rep.Leases, "lease", id, "an errored sandbox holds an address: release it")
			return nil
		}
		if err := errors.Join(s.drv.Network.Detach(bg, id), s.st.ReleaseLease(bg, id)); err != nil {
			return err
		}
		p.fix(&rep.Leases, "lease", id, "an errored sandbox holds an address: release it")
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
func (s *Service) reapOrphans(ctx context.Context, known map[string]store.Sandbox, p *pass) error {
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
			if !p.dry {
				s.recordVolumes(ctx, known, vs)
			}
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
		what   string
	}{
		{inv.Runtimes, s.drv.Runtime.Destroy, &p.rep.Runtimes, "runtime", "a runtime (guest process or container) of no sandbox: remove it"},
		{inv.Links, s.drv.Network.Detach, &p.rep.Links, "link", "a network link of no sandbox: remove it"},
		// Delete removes the volume from every driver present.
		{volumes, s.drv.Volumes.Delete, &p.rep.Volumes, "volume", "a volume of no sandbox: remove it"},
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
			if p.dry {
				p.fix(k.n, k.name, id, k.what)
				continue
			}
			if err := k.remove(bg, id); err != nil {
				errs = append(errs, fmt.Errorf("remove orphan %s %s: %w", k.name, id, err))
				continue
			}
			p.fix(k.n, k.name, id, k.what)
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
		what := "the address " + l.IP + " is leased to no sandbox: release it"
		if p.dry {
			p.fix(&p.rep.Leases, "lease", l.SandboxID, what)
			continue
		}
		if err := s.st.ReleaseLease(bg, l.SandboxID); err != nil {
			errs = append(errs, err)
			continue
		}
		p.fix(&p.rep.Leases, "lease", l.SandboxID, what)
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
