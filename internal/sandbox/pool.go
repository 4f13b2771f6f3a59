package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"atelier/internal/agent"
	"atelier/internal/events"
	"atelier/internal/ids"
	"atelier/internal/image/manifest"
	"atelier/internal/metrics"
	"atelier/internal/store"
)

// The warm pool (sandbox.pool.size): the leader keeps that many sandboxes
// of the default image, vCPUs and memory booted, their services answering,
// owned by store.PoolOwner, which no user is. A create asking for that
// shape claims one instead of booting: one store transaction hands the row
// to the caller (one claimer wins), then the claim's journaled steps push
// what a normal create pushes once the agent answers (the owner's git
// identity, the workspace's steps, the config files) and the sandbox moves
// to running. A pooled sandbox has run nothing of any user's: everything
// per-user reaches it only at the claim.
const (
	// OpPoolFill boots a pooled sandbox: a create's steps without the
	// owner's (git, workspace, config files), then StepReady.
	OpPoolFill = "pool-fill"
	// OpClaim hands a pooled sandbox to its owner: StepGit, the workspace
	// steps, StepConfigFiles.
	OpClaim = "claim"
	// StepReady waits until the image's wanted services answer their
	// health checks, so a claimed sandbox's editor is up at once.
	StepReady = "ready"
)

// Pool timings; tests shorten them.
var (
	// PoolCheckEvery is how often the keeper looks at the pool when
	// nothing woke it (a claim wakes it at once).
	PoolCheckEvery = 5 * time.Second
	// poolReadyTimeout bounds StepReady.
	poolReadyTimeout = 2 * time.Minute
	// poolBackoff is the first wait after a failed fill; it doubles to
	// poolBackoffMax, so a broken image does not boot in a loop.
	poolBackoff    = 10 * time.Second
	poolBackoffMax = 5 * time.Minute
	// PoolHold is how long the keeper boots nothing from an image whose
	// pool ReleasePool gave up (its removal, then a rebuild's import).
	PoolHold = 2 * time.Minute
)

// Pooled reports whether sb is the pool's, not yet claimed.
func Pooled(sb store.Sandbox) bool { return sb.OwnerID == store.PoolOwner }

// poolShape is the create request a pooled sandbox stands for.
func (s *Service) poolShape() CreateRequest {
	r := CreateRequest{OwnerID: store.PoolOwner}
	_ = r.Normalize(s.cfg) // the config's defaults are valid (config.Validate)
	return r
}

func (s *Service) fitsPool(sb store.Sandbox, shape CreateRequest) bool {
	return sb.Image == shape.Image && sb.Vcpus == shape.Vcpus && sb.MemoryMB == shape.MemoryMB && sb.WorkspaceID == "" && sb.Name == ""
}

// claimable reports whether a normalized request may take a pooled
// sandbox: the pool's shape, booted from the image (a prebuild's disk or a
// prebuild's own build sandbox never comes from the pool).
func (s *Service) claimable(req CreateRequest) bool {
	if s.cfg.Sandbox.Pool.Size <= 0 || req.Mode != FromImage || req.OwnerID == store.PoolOwner {
		return false
	}
	shape := s.poolShape()
	return req.Image == shape.Image && req.Vcpus == shape.Vcpus && req.MemoryMB == shape.MemoryMB
}

// claim tries the pooled sandboxes of req's shape, oldest first; false
// when none could be taken (the caller boots one). A quota or duplicate
// name error is the caller's, as a normal create's would be.
func (s *Service) claim(ctx context.Context, req CreateRequest) (store.Sandbox, bool, error) {
	list, err := s.st.ListSandboxes(ctx, store.SandboxFilter{OwnerID: store.PoolOwner, Status: store.StatusRunning, NoTimings: true})
	if err != nil {
		return store.Sandbox{}, false, fmt.Errorf("create sandbox: %w", err)
	}
	shape := s.poolShape()
	bg := context.WithoutCancel(ctx)
	for _, c := range list {
		if !s.fitsPool(c, shape) {
			continue
		}
		jctx, cancel := context.WithCancel(bg)
		j := &op{id: c.ID, ctx: jctx, cancel: cancel, done: make(chan struct{}), enqueued: time.Now(), prov: req.Mode, name: OpClaim}
		// In flight before the row moves, as a create's job is before its
		// insert: the reconciler must never take the claimed row, creating
		// with no job, for a crashed create. In this process, the first
		// claimer of an id keeps it; across replicas the store decides.
		if !s.takeInflight(ctx, c.ID, j) {
			cancel()
			continue
		}
		sb, err := s.claimRow(ctx, c.ID, req)
		if err != nil {
			s.finish(j)
			if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
				continue // claimed or retired by someone else meanwhile
			}
			s.m.ObserveOp(OpCreate, result(err))
			return store.Sandbox{}, false, fmt.Errorf("create sandbox: %w", err)
		}
		s.log.InfoContext(ctx, "sandbox claimed from the pool", "sandbox_id", sb.ID, "owner_id", sb.OwnerID, "image", sb.Image)
		go s.runClaim(j)
		s.KickPool()
		return sb, true, nil
	}
	return store.Sandbox{}, false, nil
}

// fillSettle bounds how long a claim waits for a fill whose row already
// says running to finish its op.
const fillSettle = 2 * time.Second

// takeInflight puts j in flight for id unless another op holds it. A fill
// holds its sandbox until its op returns, a moment after the row says
// running; a claim arriving then waits for it (up to fillSettle) rather
// than pass over a ready sandbox and boot a new one.
func (s *Service) takeInflight(ctx context.Context, id string, j *op) bool {
	for {
		s.mu.Lock()
		o := s.inflight[id]
		if o == nil {
			s.inflight[id] = j
			s.mu.Unlock()
			return true
		}
		s.mu.Unlock()
		if o.name != OpPoolFill {
			return false
		}
		select {
		case <-o.done:
		case <-time.After(fillSettle):
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// claimRow takes the row in the store and publishes sandbox.created, as a
// create's insert does, under the event lock so no later event of it can
// overtake this one.
func (s *Service) claimRow(ctx context.Context, id string, req CreateRequest) (store.Sandbox, error) {
	unlock, err := s.evLocks.Lock(context.Background(), id)
	if err != nil {
		return store.Sandbox{}, err
	}
	defer unlock()
	sb, err := s.st.ClaimPooled(ctx, id, s.limits().Quotas, req.OwnerID, func(x *store.Sandbox) {
		x.Name, x.WorkspaceID, x.Error = req.Name, req.WorkspaceID, ""
	})
	if err != nil {
		return sb, err
	}
	s.publish(context.WithoutCancel(ctx), events.SandboxCreated, sb)
	return sb, nil
}

// runClaim runs the claim's steps and moves the sandbox to running; on
// failure the sandbox is taken down and left in error holding nothing, as
// a failed create is (it may hold some of its owner's data by then, so it
// never returns to the pool).
func (s *Service) runClaim(j *op) {
	defer s.finish(j)
	bg := context.WithoutCancel(j.ctx)
	sb, err := s.st.GetSandbox(bg, j.id)
	if err != nil || sb.Status != store.StatusCreating {
		return // destroyed meanwhile
	}
	p := s.newPlan(j.ctx, j.id, OpClaim)
	p.prov = j.prov
	begin := time.Now()
	err = s.ownerSteps(p, sb, true)
	if err == nil {
		p.timings["total"] = ms(time.Since(begin))
		p.timings["claim"] = p.timings["total"]
		sb, err = s.move(bg, j.id, []store.Status{store.StatusCreating}, store.StatusRunning, noLimits, func(x *store.Sandbox) {
			x.Timings, x.Error = p.timings, ""
		})
	}
	if err != nil {
		s.undo(p)
		if cur, gerr := s.st.GetSandbox(bg, j.id); gerr == nil && cur.Status == store.StatusCreating {
			s.takeDown(p)
		}
		s.settleError(p, store.StatusCreating, fmt.Errorf("create: %w", err), !p.addressInUse)
		s.m.ObserveOp(OpCreate, metrics.ResultError)
		s.log.Warn("sandbox claim failed", "sandbox_id", j.id, "err", err)
		return
	}
	s.m.ObserveOp(OpCreate, metrics.ResultOK)
	s.m.ObservePhase("claim", time.Since(begin))
	s.log.Info("sandbox running", timingAttrs(j.id, p.timings)...)
}

// takeDown removes a failed claim's guest, volume, link and routes, each a
// journaled step; the lease goes with settleError.
func (s *Service) takeDown(p *plan) {
	p.ctx = p.bg
	s.agents.drop(p.id)
	s.svc.drop(p.id)
	hooks := s.hooks.Load()
	steps := []struct {
		name string
		fn   func(context.Context, string) error
	}{
		{StepRuntime, s.drv.Runtime.Destroy},
		{StepVolume, s.drv.Volumes.Delete},
		{StepLink, s.drv.Network.Detach},
		{StepHooks, optional(hooks.OnDestroyed)},
	}
	for _, st := range steps {
		if err := p.step(st.name, "undo claim", func(ctx context.Context) (string, error) { return "", st.fn(ctx, p.id) }, nil); err != nil {
			if st.name == StepRuntime || st.name == StepLink {
				p.addressInUse = true
			}
			p.log.Warn("undo claim", "step", st.name, "err", err)
		}
	}
}

// ownerSteps are what a create does for its owner once the agent answers:
// the git identity and the workspace's steps (create only), then the
// config files. A pooled sandbox's fill skips them; its claim runs them.
func (s *Service) ownerSteps(p *plan, sb store.Sandbox, create bool) error {
	if create {
		// The identity comes before provisioning, whose git work may use it.
		if err := p.step(StepGit, "", func(ctx context.Context) (string, error) {
			return s.applyGitIdentity(ctx, sb)
		}, nil); err != nil {
			return err
		}
		if err := s.provision(p, sb); err != nil {
			return err
		}
	}
	return p.step(StepConfigFiles, "", func(ctx context.Context) (string, error) {
		return s.pushConfigFiles(ctx, sb, create)
	}, nil)
}

// awaitReady is StepReady's action: every wanted image service answers.
func (s *Service) awaitReady(ctx context.Context, id string) (string, error) {
	c := s.pooledAgent(id)
	if c == nil {
		return "no agent", nil
	}
	ctx, cancel := context.WithTimeout(ctx, poolReadyTimeout)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		list, err := c.Services(ctx)
		if err == nil {
			states := serviceStates(list)
			s.svc.put(id, states)
			ready := true
			for _, st := range states {
				if st.Wanted && !st.Ready {
					ready = false
				}
			}
			if ready {
				return describeStates(states) + s.warmEditor(ctx, c, states), nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return "", fmt.Errorf("services not ready: %w", err)
			}
			return "", fmt.Errorf("services not ready: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// warmEditor loads the editor's page once inside the guest: code-server
// answers its health check long before it has loaded the VS Code server,
// which it does at the first page request (seconds on a busy host), so the
// pool pays that instead of the claimer. curl in the guest, as the image's
// user; an image without curl is noted, not failed.
func (s *Service) warmEditor(ctx context.Context, c *agent.Client, states []ServiceState) string {
	port := 0
	for _, st := range states {
		if st.Role == manifest.RoleVSCode && st.Ready {
			port = st.Port
		}
	}
	if port == 0 {
		return ""
	}
	user, err := c.ImageUser(ctx)
	if err != nil {
		return "; editor not warmed: " + truncateDetail(err.Error())
	}
	begin := time.Now()
	r, err := c.Exec(ctx, agent.ExecRequest{
		Argv: []string{"curl", "-sSfL", "-o", "/dev/null", "--max-time", "60", fmt.Sprintf("http://127.0.0.1:%d/", port)},
		User: user, TimeoutMs: 65000,
	})
	if err == nil && r.ExitCode != 0 {
		err = fmt.Errorf("curl: exit %d: %s", r.ExitCode, r.Stderr)
	}
	if err != nil {
		return "; editor not warmed: " + truncateDetail(err.Error())
	}
	return fmt.Sprintf("; editor warmed in %d ms", time.Since(begin).Milliseconds())
}

// ReleasePool retires the pooled sandboxes of image, a fill in progress
// included, and holds the keeper off it for PoolHold: an image removal
// (and a rebuild, which removes first) must not be refused for sandboxes
// no user has, nor find one booted again from the image in the meantime.
// A pooled sandbox claimed meanwhile is its owner's and stays.
func (s *Service) ReleasePool(ctx context.Context, image string) error {
	s.mu.Lock()
	if s.poolHold == nil {
		s.poolHold = map[string]time.Time{}
	}
	s.poolHold[image] = time.Now().Add(PoolHold)
	s.mu.Unlock()
	list, err := s.st.ListSandboxes(ctx, store.SandboxFilter{OwnerID: store.PoolOwner, NoTimings: true})
	if err != nil {
		return fmt.Errorf("release the pool of %s: %w", image, err)
	}
	var errs []error
	for _, sb := range list {
		if sb.Image != image {
			continue
		}
		s.mu.Lock()
		o := s.inflight[sb.ID]
		s.mu.Unlock()
		if o != nil && o.name == OpPoolFill {
			// A fill: cancel it and wait for its undo, which leaves the
			// row in error for the retirement below.
			o.cancel()
			<-o.done
		}
		if err := s.retirePooled(ctx, sb.ID); err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release the pool of %s: %w", image, err)
	}
	return nil
}

// poolHeld reports whether ReleasePool holds the keeper off image.
func (s *Service) poolHeld(image string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.poolHold[image]
	if ok && time.Now().After(until) {
		delete(s.poolHold, image)
		return false
	}
	return ok
}

// KickPool wakes the keeper (after a claim, or a config the tests changed).
func (s *Service) KickPool() {
	select {
	case s.poolKick <- struct{}{}:
	default:
	}
}

// RunPool keeps the pool until ctx is done: while leading() (nil: always)
// it retires pooled sandboxes that are not running, no longer fit the
// config's shape or exceed sandbox.pool.size, and boots new ones, one at a
// time, while the host keeps a slot free for creates of any shape. At
// shutdown the pool is left running, like every sandbox: the next start
// adopts what still fits.
func (s *Service) RunPool(ctx context.Context, leading func() bool) {
	t := time.NewTicker(PoolCheckEvery)
	defer t.Stop()
	var next time.Time
	backoff := poolBackoff
	for {
		if (leading == nil || leading()) && time.Now().After(next) {
			if err := s.keepPool(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("pool fill failed", "err", err, "retry_in", backoff)
				next = time.Now().Add(backoff)
				backoff = min(2*backoff, poolBackoffMax)
			} else {
				backoff = poolBackoff
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.poolKick:
		}
	}
}

// keepPool is one pass of the keeper.
func (s *Service) keepPool(ctx context.Context) error {
	want := s.cfg.Sandbox.Pool.Size
	for ctx.Err() == nil {
		list, err := s.st.ListSandboxes(ctx, store.SandboxFilter{OwnerID: store.PoolOwner, NoTimings: true})
		if err != nil {
			return err
		}
		shape := s.poolShape()
		have := 0
		for _, sb := range list {
			if s.busy(sb.ID) {
				continue // a fill or claim in this process
			}
			fits := s.fitsPool(sb, shape) && sb.Status == store.StatusRunning
			if fits && have < want {
				have++
				continue
			}
			if sb.Status == store.StatusCreating || sb.Status == store.StatusStarting || sb.Status == store.StatusStopping {
				continue // mid-operation elsewhere, or the reconciler's to settle
			}
			if err := s.retirePooled(ctx, sb.ID); err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
				s.log.Warn("retire pooled sandbox", "sandbox_id", sb.ID, "err", err)
			}
		}
		if have >= want || s.poolHeld(shape.Image) {
			return nil
		}
		// Keep one slot of server.maxSandboxes for creates of other shapes.
		active, err := s.st.CountSandboxes(ctx, store.ActiveStatuses...)
		if err != nil {
			return err
		}
		if s.cfg.Server.MaxSandboxes > 0 && active+1 >= s.cfg.Server.MaxSandboxes {
			return nil
		}
		if err := s.fillOne(ctx); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// fillOne boots one pooled sandbox and waits for it to be running with its
// services ready.
func (s *Service) fillOne(ctx context.Context) error {
	if err := s.admitted(ctx); err != nil {
		return fmt.Errorf("pool fill: %w", err)
	}
	shape := s.poolShape()
	disk, err := s.imageSize(ctx, shape.Image)
	if err != nil {
		return err
	}
	var driver string
	if vs, ok := s.drv.Volumes.(VolumeSet); ok {
		driver = vs.Driver()
	}
	now := time.Now().UTC()
	sb := store.Sandbox{
		ID: ids.NewSandboxID(), OwnerID: store.PoolOwner, Image: shape.Image, Status: store.StatusCreating,
		Vcpus: shape.Vcpus, MemoryMB: shape.MemoryMB, DiskBytes: disk, VolumeDriver: driver, CreatedAt: now, UpdatedAt: now,
	}
	bg := context.WithoutCancel(ctx)
	jctx, cancel := context.WithCancel(bg)
	j := &op{id: sb.ID, ctx: jctx, cancel: cancel, done: make(chan struct{}), enqueued: time.Now(), name: OpPoolFill}
	s.mu.Lock()
	s.inflight[sb.ID] = j
	s.mu.Unlock()
	// No quotas: the pool is no user's. The host limit applies.
	if err := s.st.InsertSandboxWithin(ctx, sb, store.Limits{Host: s.cfg.Server.MaxSandboxes}); err != nil {
		s.finish(j)
		return fmt.Errorf("pool fill: %w", err)
	}
	s.publish(bg, events.SandboxCreated, sb)
	s.log.InfoContext(ctx, "pool sandbox booting", "sandbox_id", sb.ID, "image", sb.Image)
	// A shutdown mid-fill cancels it; the sandbox is undone to error and
	// retired by the next keeper.
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	s.runCreate(j)
	got, err := s.st.GetSandbox(bg, sb.ID)
	if err != nil {
		return fmt.Errorf("pool fill: %w", err)
	}
	if got.Status != store.StatusRunning {
		return fmt.Errorf("pool fill of %s: %s: %s", sb.ID, got.Status, got.Error)
	}
	return nil
}

// retirePooled destroys a sandbox only while it is still the pool's: the
// owner check and the move to destroying are one store transaction, so a
// create that claimed it first keeps it.
func (s *Service) retirePooled(ctx context.Context, id string) error {
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if s.busy(id) {
		return nil
	}
	evUnlock, err := s.evLocks.Lock(context.Background(), id)
	if err != nil {
		return err
	}
	sb, err := s.st.TransitionOwned(ctx, id, store.PoolOwner, sources(store.StatusDestroying), store.StatusDestroying)
	if err == nil {
		s.publish(context.WithoutCancel(ctx), events.SandboxUpdated, sb)
	}
	evUnlock()
	if err != nil {
		return err
	}
	s.log.InfoContext(ctx, "pool sandbox retired", "sandbox_id", id)
	return s.finishDestroy(context.WithoutCancel(ctx), sb)
}

// evictPooled retires one pooled sandbox to make room for a create the
// host limit refused; false when there was none to retire.
func (s *Service) evictPooled(ctx context.Context) bool {
	list, err := s.st.ListSandboxes(ctx, store.SandboxFilter{OwnerID: store.PoolOwner, NoTimings: true})
	if err != nil {
		return false
	}
	for i := len(list) - 1; i >= 0; i-- {
		sb := list[i]
		if s.busy(sb.ID) || sb.Status == store.StatusDestroying {
			continue
		}
		if s.retirePooled(ctx, sb.ID) == nil {
			return true
		}
	}
	return false
}
