package sandbox_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

func init() { sandbox.PoolCheckEvery = 20 * time.Millisecond }

// keep runs the spawn workers and the pool keeper until the test ends.
func (e *env) keep(t *testing.T) {
	t.Helper()
	e.run(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.svc.RunPool(ctx, nil) }()
	t.Cleanup(func() { cancel(); <-done })
}

// pool lists the pool's sandboxes in status (any when empty).
func (e *env) pool(t *testing.T, status store.Status) []store.Sandbox {
	t.Helper()
	list, err := e.st.ListSandboxes(context.Background(), store.SandboxFilter{OwnerID: store.PoolOwner, Status: status})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// awaitPool waits until exactly n pooled sandboxes exist, all running.
func (e *env) awaitPool(t *testing.T, n int) []store.Sandbox {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		all, running := e.pool(t, ""), e.pool(t, store.StatusRunning)
		if len(all) == n && len(running) == n {
			return running
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool: %d sandboxes, %d running; want %d running", len(all), len(running), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func poolIDs(list []store.Sandbox) []string {
	out := make([]string, 0, len(list))
	for _, sb := range list {
		out = append(out, sb.ID)
	}
	return out
}

func withPool(n int) func(*config.Config) {
	return func(c *config.Config) { c.Sandbox.Pool.Size = n }
}

// A create of the pool's shape takes a booted sandbox, emits what a normal
// create emits (created, then updated to running, as its owner's), and the
// keeper boots a replacement.
func TestPoolClaimAndRefill(t *testing.T) {
	e := newEnv(t, withPool(2))
	e.keep(t)
	pooled := poolIDs(e.awaitPool(t, 2))
	for _, id := range pooled {
		if v := e.svc.View(e.status(t, id)); !v.Pooled || v.OwnerID != store.PoolOwner {
			t.Fatalf("pooled view: %+v", v)
		}
		if j := e.journal(t, id, sandbox.OpPoolFill); j[sandbox.StepBoot] != store.OpDone || j[sandbox.StepGit] != "" {
			t.Fatalf("fill journal of %s: %v (no owner's step may run in a fill)", id, j)
		}
	}
	live, cancel := e.bus.Subscribe()
	defer cancel()
	sb, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner, Name: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pooled, sb.ID) || sb.OwnerID != owner || sb.Name != "mine" || sb.Status != store.StatusCreating {
		t.Fatalf("claimed %+v, want one of %v as %s, creating", sb, pooled, owner)
	}
	got := collect(t, live, sb.ID, 2)
	want := []seenEvent{{events.SandboxCreated, store.StatusCreating}, {events.SandboxUpdated, store.StatusRunning}}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v (a normal create's)", got, want)
	}
	if run, err := e.svc.Wait(ctxT(t), sb.ID); err != nil || run.Status != store.StatusRunning || run.OwnerID != owner {
		t.Fatalf("claimed sandbox: %+v %v", run, err)
	}
	if j := e.journal(t, sb.ID, sandbox.OpClaim); j[sandbox.StepConfigFiles] != store.OpDone {
		t.Fatalf("claim journal: %v", j)
	}
	refilled := poolIDs(e.awaitPool(t, 2))
	if slices.Contains(refilled, sb.ID) {
		t.Fatalf("the claimed sandbox is still pooled: %v", refilled)
	}
	// Another shape boots as before.
	other, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner, Vcpus: 1})
	if err != nil || slices.Contains(refilled, other.ID) {
		t.Fatalf("create of another shape: %+v %v", other, err)
	}
}

// Two managers on one store (replicas) race for one pooled sandbox: the
// store gives it to exactly one; the other create boots a new sandbox.
func TestPoolClaimRace(t *testing.T) {
	for range 5 {
		e := newEnv(t, withPool(1))
		ctx, cancel := context.WithCancel(context.Background())
		e.run(t)
		done := make(chan struct{})
		go func() { defer close(done); e.svc.RunPool(ctx, nil) }()
		pooled := e.awaitPool(t, 1)[0].ID
		cancel() // no refill: one pooled sandbox for two creates
		<-done
		other := sandbox.New(e.cfg, e.st, e.bus, e.m, sandbox.Drivers{Runtime: e.rt, Network: e.nw, Volumes: e.vol}, slog.New(slog.DiscardHandler))
		octx, ocancel := context.WithCancel(context.Background())
		odone := make(chan struct{})
		go func() { defer close(odone); other.Run(octx) }()

		var wg sync.WaitGroup
		got := make([]store.Sandbox, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, svc := range []*sandbox.Service{e.svc, other} {
			wg.Go(func() {
				<-start
				got[i], errs[i] = svc.Create(context.Background(), sandbox.CreateRequest{OwnerID: []string{"alice", "bob"}[i]})
			})
		}
		close(start)
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("creates: %v %v", errs[0], errs[1])
		}
		claimed := 0
		for i, sb := range got {
			if sb.ID == pooled {
				claimed++
			}
			run, err := e.svc.Wait(ctxT(t), sb.ID)
			if err != nil || run.Status != store.StatusRunning || run.OwnerID != []string{"alice", "bob"}[i] {
				t.Fatalf("create %d: %+v %v", i, run, err)
			}
		}
		if claimed != 1 || got[0].ID == got[1].ID {
			t.Fatalf("pooled %s went to %d creates (%s, %s), want exactly one", pooled, claimed, got[0].ID, got[1].ID)
		}
		ocancel()
		<-odone
	}
}

// Pooled sandboxes are no user's: they never count against a user's
// quotas, and a claim checks the claimer's quotas like an insert does.
func TestPoolQuotas(t *testing.T) {
	e := newEnv(t, withPool(2), func(c *config.Config) {
		c.Quotas = config.Quotas{SandboxesPerUser: 1, RunningPerUser: 1}
	})
	e.keep(t)
	pooled := poolIDs(e.awaitPool(t, 2))
	sb, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner})
	if err != nil || !slices.Contains(pooled, sb.ID) {
		t.Fatalf("first create (the pool must not count against the user): %+v %v", sb, err)
	}
	_, err = e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner})
	var qe *store.QuotaError
	if !errors.As(err, &qe) || qe.Quota != store.QuotaSandboxes {
		t.Fatalf("second create: %v, want the sandboxes quota", err)
	}
	for _, id := range pooled {
		if id != sb.ID && e.status(t, id).OwnerID != store.PoolOwner {
			t.Fatalf("a refused claim took %s from the pool", id)
		}
	}
}

// The keeper follows the config a manager starts with: a changed shape
// retires the old pool and boots the new one; size 0 retires everything,
// leaving nothing behind.
func TestPoolFollowsConfig(t *testing.T) {
	e := newEnv(t, withPool(1))
	e.run(t)
	restart := func(change func(*config.Config)) (stop func()) {
		cfg := *e.cfg
		change(&cfg)
		svc := sandbox.New(&cfg, e.st, e.bus, e.m, sandbox.Drivers{Runtime: e.rt, Network: e.nw, Volumes: e.vol}, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{}, 2)
		go func() { svc.Run(ctx); done <- struct{}{} }()
		go func() { svc.RunPool(ctx, nil); done <- struct{}{} }()
		return func() { cancel(); <-done; <-done }
	}
	stop := restart(func(*config.Config) {})
	old := e.awaitPool(t, 1)[0]
	stop()
	stop = restart(func(c *config.Config) { c.Sandbox.DefaultMemoryMB = old.MemoryMB * 2 })
	deadline := time.Now().Add(10 * time.Second)
	for {
		list := e.pool(t, store.StatusRunning)
		if len(list) == 1 && list[0].MemoryMB == old.MemoryMB*2 && len(e.pool(t, "")) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool after a shape change: %+v", e.pool(t, ""))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	e.assertGone(t, old.ID)
	last := e.pool(t, "")[0].ID
	stop = restart(func(c *config.Config) { c.Sandbox.DefaultMemoryMB = old.MemoryMB * 2; c.Sandbox.Pool.Size = 0 })
	defer stop()
	e.awaitPool(t, 0)
	e.assertGone(t, last)
}

// The pool counts against server.maxSandboxes but keeps a slot free, and
// gives a pooled sandbox up when a create of another shape finds the host
// full.
func TestPoolHostLimit(t *testing.T) {
	e := newEnv(t, withPool(3), func(c *config.Config) { c.Server.MaxSandboxes = 3 })
	e.keep(t)
	e.awaitPool(t, 2) // 2 of 3: one slot stays free
	time.Sleep(100 * time.Millisecond)
	if n := len(e.pool(t, "")); n != 2 {
		t.Fatalf("pool grew to %d with a limit of 3", n)
	}
	for i := range 2 {
		sb, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner, Vcpus: 1})
		if err != nil {
			t.Fatalf("create %d of another shape: %v", i, err)
		}
		if run, err := e.svc.Wait(ctxT(t), sb.ID); err != nil || run.Status != store.StatusRunning {
			t.Fatalf("create %d: %+v %v", i, run, err)
		}
	}
	if n := len(e.pool(t, "")); n > 1 {
		t.Fatalf("pool holds %d with the host full", n)
	}
}

// A manager that dies mid-claim leaves the row creating with no job; the
// start-up reconcile of the next one undoes it to error holding nothing,
// as for a create, and the keeper, seeing no pooled sandbox, boots one.
func TestPoolCrashMidClaim(t *testing.T) {
	e := newEnv(t, withPool(1))
	ctx, cancel := context.WithCancel(context.Background())
	e.run(t)
	done := make(chan struct{})
	go func() { defer close(done); e.svc.RunPool(ctx, nil) }()
	id := e.awaitPool(t, 1)[0].ID
	cancel()
	<-done
	// The claim's transaction committed; the manager died before its steps.
	if _, err := e.st.ClaimPooled(context.Background(), id, store.Quotas{}, owner, nil); err != nil {
		t.Fatal(err)
	}
	next := sandbox.New(e.cfg, e.st, e.bus, e.m, sandbox.Drivers{Runtime: e.rt, Network: e.nw, Volumes: e.vol}, slog.New(slog.DiscardHandler))
	if _, err := next.Reconcile(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	sb := e.status(t, id)
	if sb.Status != store.StatusError || sb.OwnerID != owner {
		t.Fatalf("after the restart: %+v, want its owner's, in error", sb)
	}
	e.assertGone(t, id)
	// A crash mid-fill: a pooled row left creating is undone by the
	// reconciler and retired by the keeper.
	e2 := newEnv(t, withPool(1))
	e2.run(t)
	fctx, fcancel := context.WithCancel(context.Background())
	fdone := make(chan struct{})
	go func() { defer close(fdone); e2.svc.RunPool(fctx, nil) }()
	first := e2.awaitPool(t, 1)[0].ID
	fcancel()
	<-fdone
	if _, err := e2.st.Transition(context.Background(), first, []store.Status{store.StatusRunning}, store.StatusCreating, 0, nil); err != nil {
		t.Fatal(err)
	}
	next2 := sandbox.New(e2.cfg, e2.st, e2.bus, e2.m, sandbox.Drivers{Runtime: e2.rt, Network: e2.nw, Volumes: e2.vol}, slog.New(slog.DiscardHandler))
	if _, err := next2.Reconcile(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	kdone := make(chan struct{})
	go func() { defer close(kdone); next2.RunPool(kctx, nil) }()
	defer func() { kcancel(); <-kdone }()
	ctxRun, cancelRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); next2.Run(ctxRun) }()
	defer func() { cancelRun(); <-runDone }()
	again := e2.awaitPool(t, 1)[0].ID
	if again == first {
		t.Fatalf("the interrupted fill %s is still pooled", first)
	}
	e2.assertGone(t, first)
	if _, err := e2.st.GetSandbox(context.Background(), first); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("interrupted fill's row: %v, want it retired", err)
	}
}

// ReleasePool (an image removal) retires the image's pooled sandboxes and
// holds the keeper off the image for PoolHold; then it refills.
func TestPoolRelease(t *testing.T) {
	defer func(d time.Duration) { sandbox.PoolHold = d }(sandbox.PoolHold)
	sandbox.PoolHold = 500 * time.Millisecond
	e := newEnv(t, withPool(2))
	e.keep(t)
	old := poolIDs(e.awaitPool(t, 2))
	if err := e.svc.ReleasePool(ctxT(t), e.cfg.Sandbox.DefaultImage); err != nil {
		t.Fatal(err)
	}
	if n := len(e.pool(t, "")); n != 0 {
		t.Fatalf("%d pooled sandboxes after the release", n)
	}
	for _, id := range old {
		e.assertGone(t, id)
	}
	time.Sleep(200 * time.Millisecond) // ten keeper passes
	if n := len(e.pool(t, "")); n != 0 {
		t.Fatalf("the keeper booted %d during the hold", n)
	}
	e.awaitPool(t, 2)
}
