package sandbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"atelier/internal/events"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// counts is the report's tally without the list of fixes.
func counts(r sandbox.Report) sandbox.Report {
	r.Fixes = nil
	return r
}

func hasFix(r sandbox.Report, kind, id string) bool {
	return slices.ContainsFunc(r.Fixes, func(f sandbox.Fix) bool { return f.Kind == kind && f.SandboxID == id && f.Detail != "" })
}

// crashed leaves a sandbox row in status with every resource a crash at
// that point would leave behind, as a killed manager would.
func (e *env) crashed(t *testing.T, id string, status store.Status, resources bool) {
	t.Helper()
	ctx := context.Background()
	if err := e.st.InsertSandbox(ctx, store.Sandbox{ID: id, OwnerID: "u", Image: "dev-base", Status: status, Vcpus: 1, MemoryMB: 512}, 0); err != nil {
		t.Fatal(err)
	}
	if resources {
		e.leak(t, id)
	}
}

// leak makes host resources for id without any row.
func (e *env) leak(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	_, first, last, _ := e.cfg.GuestRange()
	l, err := e.st.AllocateLease(ctx, id, first, last, func(a netip.Addr) string { b := a.As4(); return "06:00:" + string(rune('a'+b[3]%26)) + a.String() })
	if err != nil {
		t.Fatal(err)
	}
	disk, err := e.vol.Clone(ctx, "dev-base", id)
	if err != nil {
		t.Fatal(err)
	}
	link, err := e.nw.Attach(ctx, id, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Boot(ctx, sandbox.Instance{ID: id, Disk: disk, Link: link, IP: l.IP, MAC: l.MAC}); err != nil {
		t.Fatal(err)
	}
}

func TestReconcileAfterCrash(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	healthy := e.createRunning(t)
	stopped := e.createRunning(t)
	if _, err := e.svc.Stop(context.Background(), stopped.ID); err != nil {
		t.Fatal(err)
	}

	const (
		creating   = "crashcreate1"
		starting   = "crashstart01"
		stopping   = "crashstop001"
		destroying = "crashdestroy"
		dead       = "crashdead001"
		orphan     = "orphan000001"
	)
	e.crashed(t, creating, store.StatusCreating, true)
	e.crashed(t, starting, store.StatusStarting, true)
	e.crashed(t, stopping, store.StatusStopping, true)
	e.crashed(t, destroying, store.StatusDestroying, true)
	e.crashed(t, dead, store.StatusRunning, true)
	if err := e.rt.Destroy(context.Background(), dead); err != nil { // its runtime died
		t.Fatal(err)
	}
	e.leak(t, orphan) // resources whose row never existed
	ctx := context.Background()
	if _, err := e.st.AppendOp(ctx, store.Op{SandboxID: creating, Op: sandbox.OpCreate, Step: sandbox.StepBoot, State: store.OpIntent}); err != nil {
		t.Fatal(err)
	}

	// A restarted manager: a new service over the same store and host.
	svc := sandbox.New(e.cfg, e.st, e.bus, e.m, sandbox.Drivers{Runtime: e.rt, Network: e.nw, Volumes: e.vol}, slog.New(slog.DiscardHandler))
	svc.SetInventory(sandbox.Inventory{
		Runtimes: func(context.Context) ([]string, error) { return e.rt.Instances(), nil },
		Links:    func(context.Context) ([]string, error) { return e.nw.LinkIDs(), nil },
		Volumes:  e.hostVolumes,
	})
	// The cleanup dialog's preview names what a pass would fix and changes nothing.
	preview, err := svc.PreviewReconcile(ctx)
	if err != nil {
		t.Fatalf("preview: %v", err)
	}
	if got, want := counts(preview), (sandbox.Report{Interrupted: 3, Destroyed: 1, Dead: 1, Runtimes: 1, Links: 1, Volumes: 1, Leases: 1}); !reflect.DeepEqual(got, want) {
		t.Fatalf("preview = %+v\nwant      %+v", got, want)
	}
	if !hasFix(preview, "dead", dead) || !hasFix(preview, "volume", orphan) || !hasFix(preview, "destroyed", destroying) {
		t.Errorf("preview fixes do not name the sandboxes: %+v", preview.Fixes)
	}
	if got := e.status(t, dead).Status; got != store.StatusRunning {
		t.Errorf("preview changed the dead sandbox to %s", got)
	}
	if got := e.vol.IDs(); !slices.Contains(got, orphan) {
		t.Errorf("preview removed the orphan volume: %v", got)
	}
	if st := svc.RecentFixes(); len(st.Fixes) != 0 || st.Passes != 0 {
		t.Errorf("a preview was remembered as a pass: %+v", st)
	}

	live, cancel := e.bus.Subscribe()
	defer cancel()
	rep, err := svc.Reconcile(ctx, true)
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	want := sandbox.Report{Interrupted: 3, Destroyed: 1, Dead: 1, Runtimes: 1, Links: 1, Volumes: 1, Leases: 1, JournalClosed: 1}
	if !reflect.DeepEqual(counts(rep), want) {
		t.Fatalf("report = %+v\nwant     %+v", counts(rep), want)
	}
	if len(rep.Fixes) != 10 || !hasFix(rep, "journal", creating) {
		t.Errorf("fixes = %+v, want 10 naming the closed journal step", rep.Fixes)
	}
	// The System page's ring holds them newest first, and admins' streams hear of the pass.
	recent := svc.RecentFixes()
	if len(recent.Fixes) != 10 || recent.Fixes[0] != rep.Fixes[9] || recent.Passes != 1 || recent.LastPass.IsZero() {
		t.Errorf("recent fixes = %+v", recent)
	}
	var reconciled *store.Event
	for reconciled == nil {
		select {
		case ev := <-live:
			if ev.Type == events.SystemReconciled {
				reconciled = &ev
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no system.reconciled event")
		}
	}
	var evRep sandbox.Report
	if err := json.Unmarshal(reconciled.Data, &evRep); err != nil || !reflect.DeepEqual(counts(evRep), want) || len(evRep.Fixes) != 10 {
		t.Errorf("system.reconciled data = %s (%v)", reconciled.Data, err)
	}

	states := map[string]store.Status{
		creating: store.StatusError, starting: store.StatusError, stopping: store.StatusStopped,
		dead: store.StatusError, healthy.ID: store.StatusRunning, stopped.ID: store.StatusStopped,
	}
	for id, st := range states {
		if got := e.status(t, id); got.Status != st {
			t.Errorf("%s: %s, want %s", id, got.Status, st)
		}
	}
	if _, err := e.st.GetSandbox(ctx, destroying); err == nil {
		t.Errorf("interrupted destroy left its row")
	}
	// Only live sandboxes keep a guest and a link; stopped ones keep volume and lease.
	if got := e.rt.Instances(); !slices.Equal(got, []string{healthy.ID}) {
		t.Errorf("runtimes left: %v", got)
	}
	if got := e.nw.LinkIDs(); !slices.Equal(got, []string{healthy.ID}) {
		t.Errorf("links left: %v", got)
	}
	wantVols := []string{creating, healthy.ID, stopped.ID, starting, stopping, dead}
	slices.Sort(wantVols)
	gotVols := e.vol.IDs()
	slices.Sort(gotVols)
	// The interrupted create is undone, volume included.
	wantVols = slices.DeleteFunc(wantVols, func(id string) bool { return id == creating })
	if !slices.Equal(gotVols, wantVols) {
		t.Errorf("volumes left: %v, want %v", gotVols, wantVols)
	}
	leases, _ := e.st.ListLeases(ctx)
	var held []string
	for _, l := range leases {
		held = append(held, l.SandboxID)
	}
	slices.Sort(held)
	wantLeases := []string{healthy.ID, stopped.ID, stopping}
	slices.Sort(wantLeases)
	if !slices.Equal(held, wantLeases) {
		t.Errorf("leases held by %v, want %v", held, wantLeases)
	}
	if open, _ := e.st.OpenOps(ctx); len(open) != 0 {
		t.Errorf("journal still has open steps: %+v", open)
	}

	// A second pass finds nothing more to do.
	if rep, err := svc.Reconcile(ctx, false); err != nil || !reflect.DeepEqual(counts(rep), sandbox.Report{}) || len(rep.Fixes) != 0 {
		t.Fatalf("second pass: %+v %v", rep, err)
	}
	// The settled sandboxes work again.
	if _, err := svc.Start(ctx, starting); err != nil {
		t.Fatalf("start after an interrupted start: %v", err)
	}
	if err := svc.Destroy(ctx, creating); err != nil {
		t.Fatalf("destroy after an interrupted create: %v", err)
	}
}

// TestReconcileSparesACreateInFlight runs a reconciler pass in the window
// between Create's insert and its job starting, as a periodic pass or POST
// /api/system/cleanup can: it must leave the create alone, not undo it as
// interrupted by a manager restart.
func TestReconcileSparesACreateInFlight(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	var (
		rep  sandbox.Report
		rerr error
		ran  bool
	)
	e.svc.SetAfterInsert(func(string) {
		ran = true
		rep, rerr = e.svc.Reconcile(context.Background(), false)
	})
	sb := e.create(t)
	if !ran {
		t.Fatal("the hook did not run")
	}
	if rerr != nil || rep.Interrupted != 0 {
		t.Fatalf("reconcile during create: %+v, %v; want nothing settled", rep, rerr)
	}
	got, err := e.svc.Wait(ctxT(t), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != store.StatusRunning {
		t.Fatalf("status %s (%s), want running", got.Status, got.Error)
	}
}

// hostVolumes is the mock volume store as the reconciler's inventory.
func (e *env) hostVolumes(context.Context) ([]sandbox.HostVolume, error) {
	var out []sandbox.HostVolume
	for _, id := range e.vol.IDs() {
		out = append(out, sandbox.HostVolume{ID: id})
	}
	return out, nil
}

// TestJournalStaysBounded: many create/destroy cycles, and stop/start
// cycles of long-lived sandboxes, leave a journal of bounded size that
// still holds every open step and each live sandbox's latest operation.
func TestJournalStaysBounded(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := store.OpRetention{PerSandbox: 16, Gone: time.Hour, GoneMax: 40}
	e.svc.SetJournalRetention(r)
	var live []store.Sandbox
	for range 3 {
		live = append(live, e.createRunning(t))
	}
	// A crash's open step, which recovery still needs, however old.
	if _, err := e.st.AppendOp(ctx, store.Op{SandboxID: "gonegonegone", Op: sandbox.OpDestroy, Step: sandbox.StepVolume}); err != nil {
		t.Fatal(err)
	}
	bound := len(live)*r.PerSandbox + r.GoneMax + 1
	for cycle := range 50 {
		sb := e.createRunning(t)
		if err := e.svc.Destroy(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		for _, l := range live {
			if _, err := e.svc.Restart(ctx, l.ID); err != nil {
				t.Fatal(err)
			}
		}
		if cycle%10 == 9 {
			e.svc.PruneJournal(ctx)
			if n, _ := e.st.CountOps(ctx); n > bound {
				t.Fatalf("cycle %d: %d journal steps, want at most %d", cycle, n, bound)
			}
		}
	}
	if open, _ := e.st.OpenOps(ctx); len(open) != 1 || open[0].SandboxID != "gonegonegone" {
		t.Fatalf("open steps %+v, want the crash's", open)
	}
	for _, l := range live {
		steps := e.journal(t, l.ID, sandbox.OpStart)
		for _, step := range []string{sandbox.StepLease, sandbox.StepVolume, sandbox.StepLink, sandbox.StepBoot, sandbox.StepHooks} {
			if steps[step] != store.OpDone {
				t.Fatalf("latest start of %s lost step %s: %v", l.ID, step, steps)
			}
		}
	}
}

// The inventory's upkeep runs at each real pass, not in a preview, and its
// failure is the pass's error.
func TestReconcileRunsUpkeep(t *testing.T) {
	e := newEnv(t)
	var runs int
	var fail error
	e.svc.SetInventory(sandbox.Inventory{Upkeep: func(context.Context) error { runs++; return fail }})
	ctx := context.Background()
	if _, err := e.svc.PreviewReconcile(ctx); err != nil || runs != 0 {
		t.Fatalf("preview: %v, upkeep ran %d times", err, runs)
	}
	if _, err := e.svc.Reconcile(ctx, false); err != nil || runs != 1 {
		t.Fatalf("pass: %v, upkeep ran %d times", err, runs)
	}
	fail = errors.New("cluster unreachable")
	if _, err := e.svc.Reconcile(ctx, false); err == nil || !strings.Contains(err.Error(), "cluster unreachable") || runs != 2 {
		t.Fatalf("failing upkeep: %v, ran %d times", err, runs)
	}
}
