// Package sandbox is the sandbox lifecycle service: the state machine, the
// spawn queue and the journaled, reversible create, start, stop and destroy
// sequences over the Runtime, Network and Volumes drivers.
//
// Every multi-resource step records its intent in the store's journal
// before acting, then done (or failed); when a later step fails, completed
// steps are undone newest first (package revert) and marked undone, so the
// journal always says which host resources a sandbox may still hold.
package sandbox

import (
	"atelier/internal/keylock"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"atelier/internal/agent"
	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/ids"
	"atelier/internal/metrics"
	"atelier/internal/storage"
	"atelier/internal/store"
)

// Journal op names.
const (
	OpCreate  = "create"
	OpStart   = "start"
	OpStop    = "stop"
	OpRestart = "restart"
	OpDestroy = "destroy"
)

// Journal step names.
const (
	StepLease   = "lease"
	StepVolume  = "volume"
	StepLink    = "link"
	StepBoot    = "boot"
	StepAgent   = "agent"
	StepHooks   = "hooks"
	StepRuntime = "runtime"
	StepRow     = "row"
	// StepWorkspace loads a workspace's provisioning steps (provision.go),
	// which follow it in the journal under their own names.
	StepWorkspace = "workspace"
)

// maxErrorLen bounds the message stored on an errored sandbox.
const maxErrorLen = 240

// Service runs the sandbox lifecycle.
type Service struct {
	cfg      *config.Config
	st       *store.Store
	bus      *events.Bus
	m        *metrics.Metrics
	drv      Drivers
	log      *slog.Logger
	patterns map[string]string
	hooks    atomic.Pointer[Hooks]
	prov     atomic.Pointer[Provisioner]
	cfgPush  atomic.Pointer[ConfigPusher]
	admit    atomic.Pointer[Admission]

	q     *queue
	locks keylock.Mutex // one lifecycle operation per sandbox
	// evLocks orders each sandbox's transitions with their events.
	evLocks keylock.Mutex

	mu       sync.Mutex
	inflight map[string]*op
	agents   agentPool
	// svc caches the agents' service states (services.go); watchers
	// follow them for a while after a change, until stopWatch closes.
	svc       svcCache
	watchers  sync.WaitGroup
	stopWatch chan struct{}
	// inventory lists host resources for the reconciler.
	inventory atomic.Pointer[Inventory]
	// fixes remembers the reconciler's newest fixes (RecentFixes).
	fixes fixLog

	// afterInsert, set only by tests, runs right after Create inserted the
	// row, where a reconciler pass used to find a creating row with no job.
	afterInsert func(id string)
	// retention replaces JournalRetention in tests.
	retention *store.OpRetention
	// sharedFresh: see SetShared.
	sharedFresh atomic.Int64
	// poolKick wakes the pool keeper (pool.go).
	poolKick chan struct{}
	// poolHold: images the keeper boots nothing from until then (ReleasePool).
	poolHold map[string]time.Time
}

// New builds the service; Run starts its spawn workers.
func New(cfg *config.Config, st *store.Store, bus *events.Bus, m *metrics.Metrics, drv Drivers, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	if m == nil {
		m = metrics.New()
	}
	s := &Service{
		cfg: cfg, st: st, bus: bus, m: m, drv: drv, log: log,
		patterns:  cfg.URLPatterns(),
		inflight:  map[string]*op{},
		stopWatch: make(chan struct{}),
		poolKick:  make(chan struct{}, 1),
	}
	s.hooks.Store(&Hooks{})
	s.q = newQueue(func(n int) { m.SpawnQueue.Set(float64(n)) })
	m.SetStatusCounter(func(ctx context.Context) (map[string]int, error) {
		list, err := st.ListSandboxes(ctx, store.SandboxFilter{})
		if err != nil {
			return nil, fmt.Errorf("count sandboxes: %w", err)
		}
		counts := make(map[string]int, len(store.AllStatuses))
		for _, status := range store.AllStatuses {
			counts[string(status)] = 0
		}
		for _, sb := range list {
			counts[string(sb.Status)]++
		}
		return counts, nil
	})
	return s
}

// ErrUnavailable wraps an Admission's refusal: the host cannot run
// sandboxes safely right now (the API answers 503 with its text).
var ErrUnavailable = errors.New("sandboxes cannot run on this manager right now")

// Admission is asked before a create, a start, a restart or a pool fill
// boots anything; an error (wrapping ErrUnavailable) refuses it.
type Admission func(ctx context.Context) error

// SetAdmission installs the check every boot passes first.
func (s *Service) SetAdmission(a Admission) { s.admit.Store(&a) }

func (s *Service) admitted(ctx context.Context) error {
	if a := s.admit.Load(); a != nil && *a != nil {
		return (*a)(ctx)
	}
	return nil
}

// SetHooks installs the edge and SSH callbacks. Safe at any time; an
// operation uses the hooks installed when it began.
func (s *Service) SetHooks(h Hooks) { s.hooks.Store(&h) }

// AddHooks adds h after the hooks already installed, so the edge, the SSH
// proxy and the registry can each follow sandboxes. Each phase's hooks run
// in the order they were added; the first error stops that phase.
func (s *Service) AddHooks(h Hooks) {
	for {
		old := s.hooks.Load()
		merged := composeHooks(*old, h)
		if s.hooks.CompareAndSwap(old, &merged) {
			return
		}
	}
}

func composeHooks(a, b Hooks) Hooks {
	ids := func(x, y func(context.Context, string) error) func(context.Context, string) error {
		if x == nil {
			return y
		}
		if y == nil {
			return x
		}
		return func(ctx context.Context, id string) error {
			if err := x(ctx, id); err != nil {
				return err
			}
			return y(ctx, id)
		}
	}
	running := a.OnRunning
	if b.OnRunning != nil {
		running = func(ctx context.Context, v View, c *agent.Client) error {
			if a.OnRunning != nil {
				if err := a.OnRunning(ctx, v, c); err != nil {
					return err
				}
			}
			return b.OnRunning(ctx, v, c)
		}
	}
	return Hooks{OnRunning: running, OnStopped: ids(a.OnStopped, b.OnStopped), OnDestroyed: ids(a.OnDestroyed, b.OnDestroyed)}
}

// Run starts server.spawnConcurrency spawn workers and returns once ctx is
// done and the jobs they were running have finished. Jobs still queued stay
// creating in the store.
func (s *Service) Run(ctx context.Context) {
	n := s.cfg.Server.SpawnConcurrency
	if n <= 0 {
		n = 1
	}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				j, ok := s.q.pop(ctx)
				if !ok {
					return
				}
				s.runCreate(j)
			}
		})
	}
	wg.Wait()
	close(s.stopWatch)
	s.watchers.Wait()
}

// Get returns one sandbox; store.ErrNotFound when absent.
func (s *Service) Get(ctx context.Context, id string) (store.Sandbox, error) {
	return s.st.GetSandbox(ctx, id) // the store's error already names the sandbox
}

// List returns the sandboxes matching f, oldest first.
func (s *Service) List(ctx context.Context, f store.SandboxFilter) ([]store.Sandbox, error) {
	return s.st.ListSandboxes(ctx, f)
}

// Create validates req, reserves a slot under server.maxSandboxes and the
// owner's quotas by inserting the row as creating (store.ErrLimit or a
// *store.QuotaError past them), and queues the boot.
// It returns at once; Wait follows the sandbox to a settled status.
func (s *Service) Create(ctx context.Context, req CreateRequest) (store.Sandbox, error) {
	if err := s.admitted(ctx); err != nil {
		s.m.ObserveOp(OpCreate, result(err))
		return store.Sandbox{}, err
	}
	if prov := s.provisioner(); prov != nil && req.WorkspaceID != "" {
		if err := prov.Prepare(ctx, &req); err != nil {
			return store.Sandbox{}, err
		}
	}
	if err := req.Normalize(s.cfg); err != nil {
		return store.Sandbox{}, err
	}
	if req.OwnerID == "" || req.OwnerID == store.PoolOwner {
		return store.Sandbox{}, errors.New("create sandbox: owner id missing")
	}
	if s.claimable(req) {
		if sb, ok, err := s.claim(ctx, req); ok || err != nil {
			return sb, err
		}
	}
	disk, err := s.imageSize(ctx, req.Image)
	if err != nil {
		s.m.ObserveOp(OpCreate, result(err))
		return store.Sandbox{}, err
	}
	var driver string
	if vs, ok := s.drv.Volumes.(VolumeSet); ok {
		driver = vs.Driver()
	}
	now := time.Now().UTC()
	sb := store.Sandbox{
		ID: ids.NewSandboxID(), Name: req.Name, OwnerID: req.OwnerID, WorkspaceID: req.WorkspaceID,
		Image: req.Image, Status: store.StatusCreating, Vcpus: req.Vcpus, MemoryMB: req.MemoryMB,
		DiskBytes: disk, VolumeDriver: driver, CreatedAt: now, UpdatedAt: now,
	}
	// The job is in flight before its row exists: a reconciler pass (periodic
	// or POST /api/system/cleanup) that saw a creating row without a job
	// would undo it as a create interrupted by a crash.
	bg := context.WithoutCancel(ctx)
	jctx, cancel := context.WithCancel(bg)
	j := &op{id: sb.ID, ctx: jctx, cancel: cancel, done: make(chan struct{}), enqueued: time.Now(), prov: req.Mode}
	s.mu.Lock()
	s.inflight[sb.ID] = j
	s.mu.Unlock()
	err = s.st.InsertSandboxWithin(ctx, sb, s.limits())
	if errors.Is(err, store.ErrLimit) && s.evictPooled(ctx) {
		// The pool gives way to a user: it counts against the host limit
		// but is only ever a head start.
		err = s.st.InsertSandboxWithin(ctx, sb, s.limits())
	}
	if err != nil {
		s.finish(j)
		s.m.ObserveOp(OpCreate, result(err))
		return store.Sandbox{}, fmt.Errorf("create sandbox: %w", err)
	}
	if s.afterInsert != nil {
		s.afterInsert(sb.ID)
	}
	// The row exists: from here on a cancelled request must not strand it
	// in creating without a job.
	if got, err := s.st.GetSandbox(bg, sb.ID); err == nil {
		sb = got
	}
	s.publish(bg, events.SandboxCreated, sb)
	s.q.push(j)
	s.log.InfoContext(ctx, "sandbox queued", "sandbox_id", sb.ID, "owner_id", sb.OwnerID, "image", sb.Image)
	return sb, nil
}

// imageSize is the disk a sandbox of image will hold, counted against the
// owner's disk quota: 0 when the volume driver cannot tell (mock mode).
func (s *Service) imageSize(ctx context.Context, image string) (int64, error) {
	sizer, ok := s.drv.Volumes.(ImageSizer)
	if !ok {
		return 0, nil
	}
	n, err := sizer.ImageSize(ctx, image)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, &FieldError{"image", fmt.Sprintf("no image %q on this host", image)}
	}
	if err != nil {
		return 0, fmt.Errorf("create sandbox: size of image %s: %w", image, err)
	}
	return n, nil
}

// Wait blocks until the sandbox is running, stopped or error, and returns it;
// store.ErrNotFound once it is deleted.
func (s *Service) Wait(ctx context.Context, id string) (store.Sandbox, error) {
	for {
		// Subscribe before reading the row: a change between the read and
		// the subscription would otherwise be missed.
		live, cancel := s.bus.Subscribe()
		sb, done, err := s.checkSettled(ctx, id)
		if done {
			cancel()
			return sb, err
		}
	recv:
		for {
			select {
			case <-ctx.Done():
				cancel()
				return store.Sandbox{}, fmt.Errorf("wait for sandbox %s: %w", id, ctx.Err())
			case ev, ok := <-live:
				if !ok {
					break recv // dropped as a slow subscriber: subscribe again and re-read
				}
				if ev.SandboxID != id {
					continue
				}
				if sb, done, err = s.checkSettled(ctx, id); done {
					cancel()
					return sb, err
				}
			}
		}
		cancel()
	}
}

func (s *Service) checkSettled(ctx context.Context, id string) (store.Sandbox, bool, error) {
	// Under the event lock, a status is seen only once its event is out, so
	// whoever Wait unblocks never receives that event late.
	unlock, err := s.evLocks.Lock(ctx, id)
	if err != nil {
		return store.Sandbox{}, true, fmt.Errorf("wait for sandbox %s: %w", id, err)
	}
	defer unlock()
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		return sb, true, fmt.Errorf("wait for sandbox %s: %w", id, err)
	}
	return sb, settled(sb.Status), nil
}

// Stop shuts a running sandbox down. Its volume and IP lease are kept, so
// Start brings it back with the same address.
func (s *Service) Stop(ctx context.Context, id string) (sb store.Sandbox, err error) {
	defer func() { s.m.ObserveOp(OpStop, result(err)) }()
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return sb, fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	defer unlock()
	return s.stop(ctx, id)
}

// Start boots a stopped or errored sandbox. Starting counts against
// server.maxSandboxes: store.ErrLimit when the host is full.
func (s *Service) Start(ctx context.Context, id string) (sb store.Sandbox, err error) {
	defer func() { s.m.ObserveOp(OpStart, result(err)) }()
	if err := s.admitted(ctx); err != nil {
		return sb, err
	}
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return sb, fmt.Errorf("start sandbox %s: %w", id, err)
	}
	defer unlock()
	return s.start(ctx, id)
}

// Restart stops then starts a running sandbox, holding it for the whole time.
func (s *Service) Restart(ctx context.Context, id string) (sb store.Sandbox, err error) {
	defer func() { s.m.ObserveOp(OpRestart, result(err)) }()
	// Refused before the stop: a restart must not leave it stopped.
	if err := s.admitted(ctx); err != nil {
		return sb, err
	}
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return sb, fmt.Errorf("restart sandbox %s: %w", id, err)
	}
	defer unlock()
	if sb, err = s.stop(ctx, id); err != nil {
		return sb, err
	}
	return s.start(ctx, id)
}

func (s *Service) stop(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.move(ctx, id, []store.Status{store.StatusRunning}, store.StatusStopping, noLimits, nil)
	if err != nil {
		return sb, fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	bg := context.WithoutCancel(ctx)
	s.agents.drop(id)
	s.svc.drop(id)
	p := s.newPlan(bg, id, OpStop)
	hooks := s.hooks.Load()
	steps := []struct {
		name string
		fn   func(context.Context, string) error
	}{
		{StepRuntime, s.drv.Runtime.Stop},
		{StepLink, s.drv.Network.Detach},
		{StepHooks, optional(hooks.OnStopped)},
	}
	for _, st := range steps {
		if err := p.step(st.name, "", func(ctx context.Context) (string, error) { return "", st.fn(ctx, id) }, nil); err != nil {
			// A guest that may not have stopped keeps its address, so the
			// IP cannot be handed to another sandbox while still in use.
			guestDown := st.name != StepRuntime
			s.settleError(p, store.StatusStopping, fmt.Errorf("stop: %w", err), guestDown)
			return sb, fmt.Errorf("stop sandbox %s: %w", id, err)
		}
	}
	sb, err = s.move(bg, id, []store.Status{store.StatusStopping}, store.StatusStopped, noLimits, nil)
	if err != nil {
		return sb, fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	s.log.InfoContext(ctx, "sandbox stopped", "sandbox_id", id)
	return sb, nil
}

func (s *Service) start(ctx context.Context, id string) (store.Sandbox, error) {
	prev, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		return prev, fmt.Errorf("start sandbox %s: %w", id, err)
	}
	sb, err := s.move(ctx, id, []store.Status{store.StatusStopped, store.StatusError},
		store.StatusStarting, s.limits(), func(x *store.Sandbox) { x.Error = "" })
	if err != nil {
		return sb, fmt.Errorf("start sandbox %s: %w", id, err)
	}
	// Destroy may cancel a start; a client going away may not.
	octx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	o := &op{id: id, ctx: octx, cancel: cancel, done: make(chan struct{}), locked: true}
	s.mu.Lock()
	s.inflight[id] = o
	s.mu.Unlock()
	defer s.finish(o)

	bg := context.WithoutCancel(ctx)
	p := s.newPlan(octx, id, OpStart)
	begin := time.Now()
	if prev.Status == store.StatusError {
		// A failed stop may have left the guest up; a fresh boot needs it down.
		err = p.step(StepRuntime, "reset", func(ctx context.Context) (string, error) {
			return "", s.drv.Runtime.Stop(ctx, id)
		}, nil)
	}
	var up brought
	if err == nil {
		up, err = s.bringUp(p, sb, false)
	}
	if err == nil {
		p.timings["total"] = ms(time.Since(begin))
		sb, err = s.move(bg, id, []store.Status{store.StatusStarting}, store.StatusRunning, noLimits, up.apply(p.timings))
	}
	if err != nil {
		s.undo(p)
		s.settleError(p, store.StatusStarting, fmt.Errorf("start: %w", err), !p.addressInUse)
		return sb, fmt.Errorf("start sandbox %s: %w", id, err)
	}
	s.log.InfoContext(ctx, "sandbox started", timingAttrs(id, p.timings)...)
	return sb, nil
}

// Destroy releases every resource of a sandbox in the seed's cleanup order
// and deletes its row. A creating sandbox's boot is cancelled and undone
// first. A failing step leaves the sandbox in error with the message, never
// half-deleted; Destroy may be called again.
func (s *Service) Destroy(ctx context.Context, id string) (err error) {
	defer func() { s.m.ObserveOp(OpDestroy, result(err)) }()
	// A start holds the sandbox lock: cancel it before queueing for the
	// lock, or a hung boot would hold the destroy back.
	s.cancelInflight(id, true)
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	defer unlock()
	sb, err := s.move(ctx, id, sources(store.StatusDestroying), store.StatusDestroying, noLimits, nil)
	if err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	// A create job holds no lock: cancel it only once the row is in
	// destroying, so its undo finds the row taken over and never publishes
	// an error for a create the user cancelled.
	s.cancelInflight(id, false)
	bg := context.WithoutCancel(ctx)
	s.awaitInflight(id)
	return s.finishDestroy(bg, sb)
}

// finishDestroy runs destroy's steps for a sandbox already in destroying;
// the reconciler calls it for a destroy a crash interrupted.
func (s *Service) finishDestroy(bg context.Context, sb store.Sandbox) error {
	id := sb.ID
	s.agents.drop(id)
	s.svc.drop(id)
	p := s.newPlan(bg, id, OpDestroy)
	hooks := s.hooks.Load()
	steps := []struct {
		name string
		fn   func(context.Context, string) error
	}{
		{StepRuntime, s.drv.Runtime.Destroy},
		{StepVolume, s.drv.Volumes.Delete},
		{StepLink, s.drv.Network.Detach},
		{StepLease, s.st.ReleaseLease},
		{StepHooks, optional(hooks.OnDestroyed)},
		{StepRow, func(ctx context.Context, id string) error {
			if err := s.st.DeleteSandbox(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		}},
	}
	for _, st := range steps {
		if err := p.step(st.name, "", func(ctx context.Context) (string, error) { return "", st.fn(ctx, id) }, nil); err != nil {
			s.settleError(p, store.StatusDestroying, fmt.Errorf("destroy: %w", err), false)
			return fmt.Errorf("destroy sandbox %s: %w", id, err)
		}
		p.released = p.released || st.name == StepLease
	}
	if _, err := s.bus.Publish(bg, events.SandboxDeleted, id, deleted{ID: id, OwnerID: sb.OwnerID, WorkspaceID: sb.WorkspaceID}); err != nil {
		s.log.WarnContext(bg, "publish sandbox event", "sandbox_id", id, "type", events.SandboxDeleted, "err", err)
	}
	s.log.InfoContext(bg, "sandbox destroyed", "sandbox_id", id)
	return nil
}

// deleted is the data of sandbox.deleted; the owner lets the event stream
// show it only to those who saw the sandbox.
type deleted struct {
	ID          string `json:"id"`
	OwnerID     string `json:"ownerId"`
	WorkspaceID string `json:"workspaceId,omitempty"`
}

// runCreate is a spawn worker's job: boot a creating sandbox to running, or
// undo everything and leave it in error.
func (s *Service) runCreate(j *op) {
	defer s.finish(j)
	bg := context.WithoutCancel(j.ctx)
	queued := time.Since(j.enqueued)
	sb, err := s.st.GetSandbox(bg, j.id)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("sandbox create not started: row unreadable", "sandbox_id", j.id, "err", err)
		}
		return
	}
	if sb.Status != store.StatusCreating {
		return // destroyed while queued
	}
	opName := OpCreate
	if j.name != "" {
		opName = j.name
	}
	p := s.newPlan(j.ctx, j.id, opName)
	p.timings["queue"] = ms(queued)
	begin := time.Now()
	p.prov = j.prov
	up, err := s.bringUp(p, sb, true)
	if err == nil {
		p.timings["total"] = ms(time.Since(begin))
		sb, err = s.move(bg, j.id, []store.Status{store.StatusCreating}, store.StatusRunning, noLimits, up.apply(p.timings))
	}
	if err != nil {
		s.undo(p)
		s.settleError(p, store.StatusCreating, fmt.Errorf("create: %w", err), !p.addressInUse)
		if opName == OpCreate {
			s.m.ObserveOp(OpCreate, metrics.ResultError)
		}
		s.log.Warn("sandbox create failed", "sandbox_id", j.id, "op", opName, "err", err)
		return
	}
	if opName != OpCreate {
		s.log.Info("pool sandbox ready", timingAttrs(j.id, p.timings)...)
		return
	}
	s.m.ObservePhase("queue", queued)
	for phase, v := range p.timings {
		if phase != "queue" {
			s.m.ObservePhase(phase, time.Duration(v*float64(time.Millisecond)))
		}
	}
	s.m.ObserveOp(OpCreate, metrics.ResultOK)
	s.log.Info("sandbox running", timingAttrs(j.id, p.timings)...)
}

// brought is what bringUp acquired, recorded on the row at running.
type brought struct {
	lease store.Lease
	// driver holds the volume; "" when the volume store has one driver.
	driver string
}

func (b brought) apply(timings map[string]float64) func(*store.Sandbox) {
	return func(x *store.Sandbox) {
		x.IP, x.MAC, x.Timings, x.Error = b.lease.IP, b.lease.MAC, timings, ""
		if b.driver != "" {
			x.VolumeDriver = b.driver
		}
	}
}

// bringUp runs lease, volume, link, boot and hooks as journaled steps. A
// create undoes all of them on failure; a start keeps the volume (it holds
// the user's work) and only stops the guest.
func (s *Service) bringUp(p *plan, sb store.Sandbox, create bool) (brought, error) {
	var (
		up    brought
		disk  string
		link  string
		id    = sb.ID
		hooks = s.hooks.Load()
	)
	gw, first, last, err := s.cfg.GuestRange()
	if err != nil {
		return up, fmt.Errorf("guest address range: %w", err)
	}
	if !first.Is4() || !last.Is4() {
		return up, fmt.Errorf("guest address range %s-%s: not IPv4", first, last)
	}

	err = p.step(StepLease, "", func(ctx context.Context) (string, error) {
		l, err := s.st.AllocateLease(ctx, id, first, last, MACFor)
		up.lease = l
		return l.IP + " " + l.MAC, err
	}, func(ctx context.Context) error {
		if p.addressInUse {
			return errors.New("kept: the guest or its link may still use the address")
		}
		if err := s.st.ReleaseLease(ctx, id); err != nil {
			return err
		}
		p.released = true
		return nil
	})
	if err != nil {
		return up, err
	}

	var undoVolume func(context.Context) error
	if create {
		undoVolume = func(ctx context.Context) error { return s.drv.Volumes.Delete(ctx, id) }
	}
	volDetail := sb.Image
	if create && p.prov == FromPrebuild {
		volDetail = "prebuild-" + sb.WorkspaceID
	}
	err = p.step(StepVolume, volDetail, func(ctx context.Context) (string, error) {
		var err error
		if pb, ok := s.drv.Volumes.(Prebuilder); ok && create && p.prov == FromPrebuild {
			disk, up.driver, err = pb.CloneFromPrebuild(ctx, sb.WorkspaceID, id)
			return disk, err
		}
		if vs, ok := s.drv.Volumes.(VolumeSet); ok {
			// The driver that holds the volume, or will: never a fresh
			// volume on another driver in place of the user's disk.
			disk, up.driver, err = vs.CloneOn(ctx, sb.VolumeDriver, sb.Image, id)
		} else {
			disk, err = s.drv.Volumes.Clone(ctx, sb.Image, id)
		}
		return disk, err
	}, undoVolume)
	if err != nil {
		return up, err
	}

	err = p.step(StepLink, "", func(ctx context.Context) (string, error) {
		var err error
		link, err = s.drv.Network.Attach(ctx, id, up.lease)
		return link, err
	}, p.guarded(func(ctx context.Context) error { return s.drv.Network.Detach(ctx, id) }))
	if err != nil {
		return up, err
	}

	undoBoot := s.drv.Runtime.Stop
	if create {
		undoBoot = s.drv.Runtime.Destroy
	}
	err = p.step(StepBoot, "", func(ctx context.Context) (string, error) {
		err := s.drv.Runtime.Boot(ctx, Instance{
			ID: id, Owner: sb.OwnerID, Vcpus: sb.Vcpus, MemoryMB: sb.MemoryMB, IP: up.lease.IP, MAC: up.lease.MAC,
			Gateway: gw.String(), PrefixLen: s.cfg.Network.BridgePrefix, DNS: s.cfg.Network.DNSServers,
			Disk: disk, Link: link,
		})
		if ar, ok := s.drv.Runtime.(AddressedRuntime); ok && err == nil {
			var ip string
			if ip, err = ar.Address(ctx, id); err == nil {
				up.lease.IP = ip
				return ip, nil
			}
		}
		return "", err
	}, p.guarded(func(ctx context.Context) error { return undoBoot(ctx, id) }))
	if err != nil {
		return up, err
	}

	if _, ok := s.drv.Runtime.(AgentRuntime); ok {
		if err = p.step(StepAgent, "", func(ctx context.Context) (string, error) {
			return "", s.waitAgent(ctx, id)
		}, nil); err != nil {
			return up, err
		}
		// The agent has started the wanted services itself; this tells it
		// the host's ports (a changed one restarts its service) and reads
		// their states for the view. Nothing to undo: stopping the guest
		// stops them, and what is wanted stays on the guest's disk.
		if err = p.step(StepServices, "", func(ctx context.Context) (string, error) {
			return s.applyServices(ctx, id)
		}, nil); err != nil {
			return up, err
		}
		if Pooled(sb) {
			// Nothing of any user's goes into a pooled sandbox: its
			// claim pushes the owner's (pool.go). The editor is warmed
			// up instead, so the claim finds it answering.
			if err = p.step(StepReady, "", func(ctx context.Context) (string, error) {
				return s.awaitReady(ctx, id)
			}, nil); err != nil {
				return up, err
			}
		} else if err = s.ownerSteps(p, sb, create); err != nil {
			// Once, at create: a start must not overwrite what the user set.
			return up, err
		}
	}

	undoHooks := optional(hooks.OnStopped)
	if create {
		undoHooks = optional(hooks.OnDestroyed)
	}
	err = p.step(StepHooks, "", func(ctx context.Context) (string, error) {
		if hooks.OnRunning == nil {
			return "", nil
		}
		running := sb
		running.Status, running.IP, running.MAC = store.StatusRunning, up.lease.IP, up.lease.MAC
		return "", hooks.OnRunning(ctx, s.View(running), s.pooledAgent(id))
	}, func(ctx context.Context) error { return undoHooks(ctx, id) })
	return up, err
}

// settleError moves a failed sandbox to error with a short message. Unless
// the guest may still be up, its lease is released first: an errored
// sandbox holds no address (the reference leaked them, weak point 32).
func (s *Service) settleError(p *plan, from store.Status, cause error, releaseLease bool) {
	p.ctx = p.bg
	if releaseLease && !p.released {
		err := p.step(StepLease, "release", func(ctx context.Context) (string, error) {
			return "", s.st.ReleaseLease(ctx, p.id)
		}, nil)
		p.released = err == nil
	}
	msg := cause.Error()
	if len(msg) > maxErrorLen {
		msg = msg[:maxErrorLen]
	}
	_, err := s.move(p.bg, p.id, []store.Status{from}, store.StatusError, noLimits, func(x *store.Sandbox) {
		x.Error = msg
		if p.released {
			x.IP, x.MAC = "", ""
		}
	})
	if err != nil {
		// Destroy took over a cancelled create, or the row is gone.
		p.log.Info("sandbox not marked error", "from", from, "err", err)
	}
}

// move changes a sandbox's status by compare-and-set in the store and
// publishes sandbox.updated. The per-sandbox event lock keeps one sandbox's
// events in the order of its transitions even when a create job and a
// destroy race; it is held only for the store write and the publish.
func (s *Service) move(ctx context.Context, id string, from []store.Status, to store.Status, lim store.Limits, mutate func(*store.Sandbox)) (store.Sandbox, error) {
	unlock, err := s.evLocks.Lock(context.Background(), id)
	if err != nil {
		return store.Sandbox{}, err
	}
	defer unlock()
	sb, err := s.st.TransitionWithin(ctx, id, from, to, lim, mutate)
	if err != nil {
		return sb, err
	}
	s.publish(context.WithoutCancel(ctx), events.SandboxUpdated, sb)
	return sb, nil
}

// noLimits is for moves that cannot take a sandbox into an active status
// from a non-active one, the only moves limits apply to.
var noLimits store.Limits

// limits are server.maxSandboxes and the owner's quotas, checked by the
// store in the transaction that inserts a sandbox or starts one.
func (s *Service) limits() store.Limits {
	q := s.cfg.Quotas
	return store.Limits{Host: s.cfg.Server.MaxSandboxes, Quotas: store.Quotas{
		Running: q.RunningPerUser, Sandboxes: q.SandboxesPerUser, DiskBytes: int64(q.DiskGBPerUser) << 30,
	}}
}

// undo reverts the plan's completed steps.
func (s *Service) undo(p *plan) {
	p.ctx = p.bg
	if err := p.rev.Fail(); err != nil {
		p.log.Error("undo incomplete: resources may remain", "op", p.op, "err", err)
	}
}

// cancelInflight cancels the sandbox's in-flight op if it is a start
// (locked) or a create job (!locked).
func (s *Service) cancelInflight(id string, locked bool) {
	s.mu.Lock()
	o := s.inflight[id]
	s.mu.Unlock()
	if o != nil && o.locked == locked {
		o.cancel()
	}
}

// awaitInflight waits for a cancelled create job to finish its undo; a job
// still queued is dropped without running.
func (s *Service) awaitInflight(id string) {
	s.mu.Lock()
	o := s.inflight[id]
	s.mu.Unlock()
	if o == nil {
		return
	}
	if s.q.remove(o) {
		s.finish(o)
		return
	}
	<-o.done
}

func (s *Service) finish(o *op) {
	s.mu.Lock()
	if s.inflight[o.id] == o {
		delete(s.inflight, o.id)
	}
	s.mu.Unlock()
	o.cancel()
	close(o.done)
}

func (s *Service) publish(ctx context.Context, typ string, sb store.Sandbox) {
	if _, err := s.bus.Publish(ctx, typ, sb.ID, s.View(sb)); err != nil {
		s.log.WarnContext(ctx, "publish sandbox event", "sandbox_id", sb.ID, "type", typ, "err", err)
	}
}

// MACFor derives a locally administered MAC from an IPv4 address, so each
// leased address has its own MAC and the two never disagree.
func MACFor(ip netip.Addr) string {
	ip = ip.Unmap()
	if !ip.Is4() {
		return ""
	}
	b := ip.As4()
	return fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

func optional(f func(context.Context, string) error) func(context.Context, string) error {
	if f == nil {
		return func(context.Context, string) error { return nil }
	}
	return f
}

func result(err error) string {
	var conflict *store.ConflictError
	switch {
	case err == nil:
		return metrics.ResultOK
	case errors.As(err, &conflict):
		return metrics.ResultConflict
	case errors.Is(err, store.ErrLimit), errors.Is(err, store.ErrQuota):
		return metrics.ResultLimit
	case errors.Is(err, store.ErrNotFound):
		return metrics.ResultNotFound
	}
	return metrics.ResultError
}

func ms(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

func timingAttrs(id string, timings map[string]float64) []any {
	attrs := []any{"sandbox_id", id}
	for k, v := range timings {
		attrs = append(attrs, k+"_ms", v)
	}
	return attrs
}
