package sandbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/metrics"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
)

const owner = "user-1"

type env struct {
	cfg *config.Config
	st  *store.Store
	bus *events.Bus
	m   *metrics.Metrics
	rt  *rtmock.Runtime
	nw  *netmock.Network
	vol *stmock.Volumes
	svc *sandbox.Service
}

func newEnv(t *testing.T, tweak ...func(*config.Config)) *env {
	t.Helper()
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = t.TempDir()
	cfg.Server.MaxSandboxes = 5
	cfg.Server.SpawnConcurrency = 4
	// The tests of quotas set them; the others create freely as one owner.
	cfg.Quotas = config.Quotas{}
	for _, f := range tweak {
		f(cfg)
	}
	st, err := store.Open(context.Background(), cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{cfg: cfg, st: st, bus: events.New(st, slog.New(slog.DiscardHandler)), m: metrics.New(),
		rt: rtmock.New(), nw: netmock.New(), vol: stmock.New("/var/lib/sandbox/overlays")}
	e.svc = sandbox.New(cfg, st, e.bus, e.m, sandbox.Drivers{Runtime: e.rt, Network: e.nw, Volumes: e.vol}, slog.New(slog.DiscardHandler))
	return e
}

// run starts the spawn workers until the test ends.
func (e *env) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) create(t *testing.T) store.Sandbox {
	t.Helper()
	sb, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return sb
}

func (e *env) createRunning(t *testing.T) store.Sandbox {
	t.Helper()
	sb := e.create(t)
	got, err := e.svc.Wait(ctxT(t), sb.ID)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if got.Status != store.StatusRunning {
		t.Fatalf("status = %s (%s), want running", got.Status, got.Error)
	}
	return got
}

func (e *env) status(t *testing.T, id string) store.Sandbox {
	t.Helper()
	sb, err := e.st.GetSandbox(context.Background(), id)
	if err != nil {
		t.Fatalf("GetSandbox: %v", err)
	}
	return sb
}

// assertGone checks that no driver and no lease holds anything of id.
func (e *env) assertGone(t *testing.T, id string) {
	t.Helper()
	if slices.Contains(e.rt.Instances(), id) {
		t.Errorf("runtime instance %s left behind", id)
	}
	if _, ok := e.nw.Links()[id]; ok {
		t.Errorf("link of %s left behind", id)
	}
	if _, ok := e.vol.Volumes()[id]; ok {
		t.Errorf("volume of %s left behind", id)
	}
	if l, err := e.st.GetLease(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("lease of %s left behind: %+v, %v", id, l, err)
	}
}

// journal returns step -> state for one op of a sandbox.
func (e *env) journal(t *testing.T, id, op string) map[string]string {
	t.Helper()
	ops, err := e.st.ListOps(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, o := range ops {
		if o.Op == op {
			out[o.Step] = o.State
		}
	}
	return out
}

func (e *env) scrape(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	e.m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

type seenEvent struct {
	Type   string
	Status store.Status
}

// collect reads events about id until n have arrived.
func collect(t *testing.T, live <-chan store.Event, id string, n int) []seenEvent {
	t.Helper()
	var out []seenEvent
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case ev, ok := <-live:
			if !ok {
				t.Fatal("subscription dropped")
			}
			if ev.SandboxID != id {
				continue
			}
			var v sandbox.View
			if err := json.Unmarshal(ev.Data, &v); err != nil {
				t.Fatalf("event data %s: %v", ev.Data, err)
			}
			if v.ID != id {
				t.Fatalf("event data names %q, want %q", v.ID, id)
			}
			out = append(out, seenEvent{ev.Type, v.Status})
		case <-timeout:
			t.Fatalf("got %v, waiting for %d events", out, n)
		}
	}
	return out
}

func isConflict(err error) bool {
	var ce *store.ConflictError
	return errors.As(err, &ce)
}

func TestCreateReachesRunning(t *testing.T) {
	e := newEnv(t)
	var onRunning []sandbox.View
	var clients []*agent.Client
	var mu sync.Mutex
	e.svc.SetHooks(sandbox.Hooks{OnRunning: func(_ context.Context, v sandbox.View, c *agent.Client) error {
		mu.Lock()
		defer mu.Unlock()
		onRunning = append(onRunning, v)
		clients = append(clients, c)
		return nil
	}})
	e.run(t)
	live, cancel := e.bus.Subscribe()
	defer cancel()

	created := e.create(t)
	if created.Status != store.StatusCreating || created.Vcpus != 2 || created.MemoryMB != 2048 || created.Image != "dev-base" {
		t.Fatalf("Create returned %+v", created)
	}
	sb, err := e.svc.Wait(ctxT(t), created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Status != store.StatusRunning || sb.IP != "172.16.0.10" || sb.MAC != "06:00:ac:10:00:0a" || sb.Error != "" {
		t.Fatalf("running sandbox = %+v", sb)
	}
	for _, phase := range []string{"queue", "lease", "volume", "link", "boot", "hooks", "total"} {
		if _, ok := sb.Timings[phase]; !ok {
			t.Errorf("timings lack %q: %v", phase, sb.Timings)
		}
	}
	got := collect(t, live, sb.ID, 2)
	want := []seenEvent{{events.SandboxCreated, store.StatusCreating}, {events.SandboxUpdated, store.StatusRunning}}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}

	inst, ok := e.rt.Instance(sb.ID)
	if !ok {
		t.Fatal("no runtime instance")
	}
	wantInst := sandbox.Instance{ID: sb.ID, Owner: owner, Vcpus: 2, MemoryMB: 2048, IP: "172.16.0.10", MAC: "06:00:ac:10:00:0a",
		Gateway: "172.16.0.1", PrefixLen: 24, DNS: []string{"8.8.8.8", "8.8.4.4"},
		Disk: "/var/lib/sandbox/overlays/" + sb.ID + ".ext4", Link: "tap-" + sb.ID[:8]}
	if fmt.Sprint(inst) != fmt.Sprint(wantInst) {
		t.Fatalf("booted %+v\nwant   %+v", inst, wantInst)
	}
	if l := e.nw.Links()[sb.ID]; l.Name != "tap-"+sb.ID[:8] || l.IP != sb.IP || l.MAC != sb.MAC {
		t.Fatalf("link = %+v", l)
	}
	j := e.journal(t, sb.ID, sandbox.OpCreate)
	for _, step := range []string{"lease", "volume", "link", "boot", "hooks"} {
		if j[step] != store.OpDone {
			t.Errorf("journal %s = %q, want done", step, j[step])
		}
	}
	mu.Lock()
	if len(onRunning) != 1 || onRunning[0].Status != store.StatusRunning || onRunning[0].IPAddress != sb.IP || onRunning[0].URLs == nil {
		t.Errorf("OnRunning got %+v", onRunning)
	}
	// The mock runtime has no agent to hand over.
	if len(clients) != 1 || clients[0] != nil {
		t.Errorf("OnRunning got agent clients %v, want one nil", clients)
	}
	mu.Unlock()

	// The operation is counted right after its final transition, which Wait
	// may see first: give the worker a moment to record it.
	wantMetrics := []string{`atelier_sandboxes{status="running"} 1`, `atelier_sandboxes{status="creating"} 0`,
		`atelier_sandbox_operations_total{op="create",result="ok"} 1`, `atelier_sandbox_create_phase_seconds_count{phase="boot"} 1`}
	var out string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		out = e.scrape(t)
		missing := false
		for _, w := range wantMetrics {
			missing = missing || !strings.Contains(out, w)
		}
		if !missing || time.Now().After(deadline) {
			break
		}
	}
	for _, w := range wantMetrics {
		if !strings.Contains(out, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
}

func TestView(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	created := e.create(t)
	v := e.svc.View(created)
	if v.URLs != nil || v.IPAddress != "" {
		t.Fatalf("creating sandbox shows URLs or IP: %+v", v)
	}
	sb, err := e.svc.Wait(ctxT(t), created.ID)
	if err != nil {
		t.Fatal(err)
	}
	v = e.svc.View(sb)
	want := sandbox.URLs{
		VSCode:   "http://sandbox-" + sb.ID + ".localhost",
		OpenCode: "http://opencode-" + sb.ID + ".localhost",
		Browser:  "http://browser-" + sb.ID + ".localhost",
		SSH:      "ssh " + sb.ID + "@" + e.cfg.Domain.SSH.Hostname + " -p 2222",
	}
	if v.URLs == nil || *v.URLs != want {
		t.Fatalf("urls = %+v, want %+v", v.URLs, want)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	for _, k := range []string{"id", "ownerId", "image", "status", "vcpus", "memoryMb", "ipAddress", "macAddress", "urls", "timings", "createdAt", "updatedAt"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, raw)
		}
	}
	for _, k := range []string{"error", "name", "workspaceId"} {
		if _, ok := m[k]; ok {
			t.Errorf("JSON has empty optional %q: %s", k, raw)
		}
	}
	stopped, err := e.svc.Stop(ctxT(t), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if v := e.svc.View(stopped); v.URLs == nil || v.IPAddress != sb.IP {
		t.Fatalf("stopped sandbox lost its URLs or IP: %+v", v)
	}
}

func TestStopStartRestart(t *testing.T) {
	e := newEnv(t)
	var stopped []string
	var mu sync.Mutex
	e.svc.SetHooks(sandbox.Hooks{OnStopped: func(_ context.Context, id string) error {
		mu.Lock()
		defer mu.Unlock()
		stopped = append(stopped, id)
		return nil
	}})
	e.run(t)
	sb := e.createRunning(t)
	live, cancel := e.bus.Subscribe()
	defer cancel()
	ctx := ctxT(t)

	got, err := e.svc.Stop(ctx, sb.ID)
	if err != nil || got.Status != store.StatusStopped {
		t.Fatalf("Stop = %+v, %v", got, err)
	}
	if len(e.rt.Instances()) != 0 || len(e.nw.Links()) != 0 {
		t.Fatalf("stopped sandbox still has instance %v or link %v", e.rt.Instances(), e.nw.Links())
	}
	if _, ok := e.vol.Volumes()[sb.ID]; !ok {
		t.Fatal("stop deleted the volume")
	}
	if l, err := e.st.GetLease(ctx, sb.ID); err != nil || l.IP != sb.IP {
		t.Fatalf("stop released the lease: %+v, %v", l, err)
	}
	mu.Lock()
	if !slices.Equal(stopped, []string{sb.ID}) {
		t.Errorf("OnStopped calls = %v", stopped)
	}
	mu.Unlock()

	got, err = e.svc.Start(ctx, sb.ID)
	if err != nil || got.Status != store.StatusRunning || got.IP != sb.IP || got.MAC != sb.MAC {
		t.Fatalf("Start = %+v, %v; want running at %s", got, err, sb.IP)
	}
	if !slices.Equal(e.rt.Instances(), []string{sb.ID}) || e.nw.Links()[sb.ID].IP != sb.IP {
		t.Fatal("started sandbox has no instance or link")
	}

	got, err = e.svc.Restart(ctx, sb.ID)
	if err != nil || got.Status != store.StatusRunning || got.IP != sb.IP {
		t.Fatalf("Restart = %+v, %v", got, err)
	}
	evs := collect(t, live, sb.ID, 8)
	var statuses []store.Status
	for _, ev := range evs {
		if ev.Type != events.SandboxUpdated {
			t.Fatalf("unexpected event %v", ev)
		}
		statuses = append(statuses, ev.Status)
	}
	cycle := []store.Status{store.StatusStopping, store.StatusStopped, store.StatusStarting, store.StatusRunning}
	wantStatuses := append(slices.Clone(cycle), cycle...) // stop+start, then restart
	if !slices.Equal(statuses, wantStatuses) {
		t.Fatalf("statuses = %v, want %v", statuses, wantStatuses)
	}
	if j := e.journal(t, sb.ID, sandbox.OpStart); j["boot"] != store.OpDone || j["link"] != store.OpDone {
		t.Fatalf("start journal = %v", j)
	}
}

func TestIllegalMovesConflict(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	ctx := ctxT(t)
	running := e.createRunning(t)
	stopped := e.createRunning(t)
	if _, err := e.svc.Stop(ctx, stopped.ID); err != nil {
		t.Fatal(err)
	}
	destroying := e.createRunning(t)
	// As a manager killed mid-destroy would leave it.
	if _, err := e.st.Transition(ctx, destroying.ID, []store.Status{store.StatusRunning}, store.StatusDestroying, 0, nil); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		do   func() error
	}{
		{"stop a stopped sandbox", func() error { _, err := e.svc.Stop(ctx, stopped.ID); return err }},
		{"start a running sandbox", func() error { _, err := e.svc.Start(ctx, running.ID); return err }},
		{"restart a stopped sandbox", func() error { _, err := e.svc.Restart(ctx, stopped.ID); return err }},
		{"start while destroying", func() error { _, err := e.svc.Start(ctx, destroying.ID); return err }},
		{"stop while destroying", func() error { _, err := e.svc.Stop(ctx, destroying.ID); return err }},
		{"destroy while destroying", func() error { return e.svc.Destroy(ctx, destroying.ID) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !isConflict(err) {
				t.Fatalf("err = %v, want a *store.ConflictError", err)
			}
		})
	}
	if got := e.status(t, running.ID).Status; got != store.StatusRunning {
		t.Errorf("refused start changed status to %s", got)
	}
	if got := e.status(t, stopped.ID).Status; got != store.StatusStopped {
		t.Errorf("refused stop changed status to %s", got)
	}
	if _, err := e.svc.Stop(ctx, "nosuchsandbx"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stop of an unknown id = %v, want ErrNotFound", err)
	}
	if !strings.Contains(e.scrape(t), `atelier_sandbox_operations_total{op="stop",result="conflict"} 2`) {
		t.Error("conflicts not counted")
	}
}

func TestConflictWhileCreating(t *testing.T) {
	e := newEnv(t) // no workers: the sandbox stays creating
	sb := e.create(t)
	ctx := ctxT(t)
	if _, err := e.svc.Stop(ctx, sb.ID); !isConflict(err) {
		t.Fatalf("stop while creating = %v, want conflict", err)
	}
	if _, err := e.svc.Start(ctx, sb.ID); !isConflict(err) {
		t.Fatalf("start while creating = %v, want conflict", err)
	}
}

func TestSandboxLimit(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Server.MaxSandboxes = 3 })
	ctx := ctxT(t)
	// No workers yet: creating sandboxes must count against the limit.
	var ids []string
	for range 3 {
		ids = append(ids, e.create(t).ID)
	}
	if _, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: owner}); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("4th create while 3 are creating = %v, want ErrLimit", err)
	}
	e.run(t)
	for _, id := range ids {
		if sb, err := e.svc.Wait(ctx, id); err != nil || sb.Status != store.StatusRunning {
			t.Fatalf("Wait(%s) = %+v, %v", id, sb, err)
		}
	}
	if _, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: owner}); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("4th create while 3 run = %v, want ErrLimit", err)
	}
	// A stopped sandbox frees its slot...
	if _, err := e.svc.Stop(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	fourth := e.createRunning(t)
	// ...but cannot take it back while the host is full.
	if _, err := e.svc.Start(ctx, ids[0]); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("start of a stopped sandbox on a full host = %v, want ErrLimit", err)
	}
	if got := e.status(t, ids[0]).Status; got != store.StatusStopped {
		t.Fatalf("refused start left status %s, want stopped", got)
	}
	if err := e.svc.Destroy(ctx, fourth.ID); err != nil {
		t.Fatal(err)
	}
	if sb, err := e.svc.Start(ctx, ids[0]); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("start after a slot freed = %+v, %v", sb, err)
	}
	if !strings.Contains(e.scrape(t), `atelier_sandbox_operations_total{op="start",result="limit"} 1`) {
		t.Error("limit refusal not counted")
	}
}

func TestConcurrentCreates(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Server.MaxSandboxes = 20 })
	e.run(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	results := make([]store.Sandbox, 20)
	errs := make([]error, 20)
	for i := range 20 {
		wg.Go(func() {
			sb, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: owner})
			if err == nil {
				sb, err = e.svc.Wait(ctx, sb.ID)
			}
			results[i], errs[i] = sb, err
		})
	}
	wg.Wait()
	ips := map[string]bool{}
	macs := map[string]bool{}
	for i, sb := range results {
		if errs[i] != nil || sb.Status != store.StatusRunning {
			t.Fatalf("create %d: %+v, %v", i, sb, errs[i])
		}
		ips[sb.IP], macs[sb.MAC] = true, true
	}
	if len(ips) != 20 || len(macs) != 20 {
		t.Fatalf("%d distinct IPs and %d MACs for 20 sandboxes", len(ips), len(macs))
	}
	if len(e.rt.Instances()) != 20 {
		t.Fatalf("%d instances, want 20", len(e.rt.Instances()))
	}
	if _, err := e.svc.Create(ctx, sandbox.CreateRequest{OwnerID: owner}); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("21st create = %v, want ErrLimit", err)
	}
}

func TestCreateNeverBlocksOnTheQueue(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Server.SpawnConcurrency = 1 })
	entered, release := e.rt.BlockNext(rtmock.OpBoot)
	defer release()
	e.run(t)
	first := e.create(t)
	<-entered // the only worker is busy
	var queued []string
	for range 3 {
		queued = append(queued, e.create(t).ID) // returns although no worker is free
	}
	if out := e.scrape(t); !strings.Contains(out, "atelier_spawn_queue_depth 3") {
		t.Fatalf("queue depth not 3:\n%s", grep(out, "queue_depth"))
	}
	release()
	for _, id := range append([]string{first.ID}, queued...) {
		if sb, err := e.svc.Wait(ctxT(t), id); err != nil || sb.Status != store.StatusRunning {
			t.Fatalf("Wait(%s) = %+v, %v", id, sb, err)
		}
	}
	if out := e.scrape(t); !strings.Contains(out, "atelier_spawn_queue_depth 0") {
		t.Fatalf("queue depth not back to 0:\n%s", grep(out, "queue_depth"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestCreateFailureRollsBack(t *testing.T) {
	boom := errors.New("injected failure")
	tests := []struct {
		step   string
		inject func(e *env)
		done   []string // steps undone
	}{
		{"volume", func(e *env) { e.vol.FailNext(stmock.OpClone, boom) }, []string{"lease"}},
		{"link", func(e *env) { e.nw.FailNext(netmock.OpAttach, boom) }, []string{"lease", "volume"}},
		{"boot", func(e *env) { e.rt.FailNext(rtmock.OpBoot, boom) }, []string{"lease", "volume", "link"}},
		{"hooks", func(e *env) {
			var failed atomic.Bool
			e.svc.SetHooks(sandbox.Hooks{OnRunning: func(context.Context, sandbox.View, *agent.Client) error {
				if failed.CompareAndSwap(false, true) {
					return boom
				}
				return nil
			}})
		}, []string{"lease", "volume", "link", "boot"}},
	}
	for _, tc := range tests {
		t.Run(tc.step, func(t *testing.T) {
			e := newEnv(t)
			tc.inject(e)
			e.run(t)
			live, cancel := e.bus.Subscribe()
			defer cancel()
			created := e.create(t)
			sb, err := e.svc.Wait(ctxT(t), created.ID)
			if err != nil {
				t.Fatal(err)
			}
			if sb.Status != store.StatusError || !strings.Contains(sb.Error, tc.step) || !strings.Contains(sb.Error, "injected failure") {
				t.Fatalf("sandbox = %s %q; want error naming %s", sb.Status, sb.Error, tc.step)
			}
			if sb.IP != "" || sb.MAC != "" {
				t.Fatalf("errored sandbox shows address %s %s", sb.IP, sb.MAC)
			}
			e.assertGone(t, sb.ID)
			j := e.journal(t, sb.ID, sandbox.OpCreate)
			for _, step := range tc.done {
				if j[step] != store.OpUndone {
					t.Errorf("journal %s = %q, want undone", step, j[step])
				}
			}
			if j[tc.step] != store.OpFailed {
				t.Errorf("journal %s = %q, want failed", tc.step, j[tc.step])
			}
			if len(j) != len(tc.done)+1 {
				t.Errorf("journal has steps after the failure: %v", j)
			}
			got := collect(t, live, sb.ID, 2)
			if want := []seenEvent{{events.SandboxCreated, store.StatusCreating}, {events.SandboxUpdated, store.StatusError}}; !slices.Equal(got, want) {
				t.Errorf("events = %v, want %v", got, want)
			}
			// The failed sandbox holds no address, so another create can use it.
			next := e.createRunning(t)
			if next.IP != "172.16.0.10" {
				t.Errorf("next sandbox got %s, want the released 172.16.0.10", next.IP)
			}
		})
	}
}

func TestCreateFailsWhenSubnetExhausted(t *testing.T) {
	// 172.16.0.254 is the only guest address.
	e := newEnv(t, func(c *config.Config) { c.Network.GuestIPStart = 254 })
	e.run(t)
	first := e.createRunning(t)
	sb, err := e.svc.Wait(ctxT(t), e.create(t).ID)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Status != store.StatusError || !strings.Contains(sb.Error, "lease") {
		t.Fatalf("second sandbox = %s %q; want error naming lease", sb.Status, sb.Error)
	}
	if j := e.journal(t, sb.ID, sandbox.OpCreate); j["lease"] != store.OpFailed || len(j) != 1 {
		t.Fatalf("journal = %v", j)
	}
	if l, err := e.st.GetLease(context.Background(), first.ID); err != nil || l.IP != "172.16.0.254" {
		t.Fatalf("first sandbox lost its lease: %+v, %v", l, err)
	}
}

func TestHooksUndoneOnDestroyAndFailure(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var calls []string
	record := func(name string) func(context.Context, string) error {
		return func(_ context.Context, id string) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, name+":"+id)
			return nil
		}
	}
	e.svc.SetHooks(sandbox.Hooks{OnStopped: record("stopped"), OnDestroyed: record("destroyed")})
	e.rt.FailNext(rtmock.OpBoot, errors.New("no kvm"))
	e.run(t)
	failed, err := e.svc.Wait(ctxT(t), e.create(t).ID)
	if err != nil || failed.Status != store.StatusError {
		t.Fatalf("%+v, %v", failed, err)
	}
	ok := e.createRunning(t)
	if err := e.svc.Destroy(ctxT(t), ok.ID); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// The failed create never reached the hooks step, so nothing to undo there.
	if want := []string{"destroyed:" + ok.ID}; !slices.Equal(calls, want) {
		t.Fatalf("hook calls = %v, want %v", calls, want)
	}
}

func TestDestroy(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, e *env) string
	}{
		{"running", func(t *testing.T, e *env) string { return e.createRunning(t).ID }},
		{"stopped", func(t *testing.T, e *env) string {
			sb := e.createRunning(t)
			if _, err := e.svc.Stop(ctxT(t), sb.ID); err != nil {
				t.Fatal(err)
			}
			return sb.ID
		}},
		{"error after a failed create", func(t *testing.T, e *env) string {
			e.rt.FailNext(rtmock.OpBoot, errors.New("boom"))
			sb, err := e.svc.Wait(ctxT(t), e.create(t).ID)
			if err != nil || sb.Status != store.StatusError {
				t.Fatalf("%+v %v", sb, err)
			}
			return sb.ID
		}},
		{"error after a failed stop", func(t *testing.T, e *env) string {
			sb := e.createRunning(t)
			e.nw.FailNext(netmock.OpDetach, errors.New("busy"))
			if _, err := e.svc.Stop(ctxT(t), sb.ID); err == nil {
				t.Fatal("stop succeeded despite the injected failure")
			}
			return sb.ID
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var destroyed []string
			e.svc.SetHooks(sandbox.Hooks{OnDestroyed: func(_ context.Context, id string) error {
				destroyed = append(destroyed, id)
				return nil
			}})
			e.run(t)
			id := tc.setup(t, e)
			live, cancel := e.bus.Subscribe()
			defer cancel()
			if err := e.svc.Destroy(ctxT(t), id); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			if _, err := e.svc.Get(ctxT(t), id); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("row still there: %v", err)
			}
			e.assertGone(t, id)
			if !slices.Contains(destroyed, id) {
				t.Errorf("OnDestroyed not called")
			}
			j := e.journal(t, id, sandbox.OpDestroy)
			for _, step := range []string{"runtime", "volume", "link", "lease", "hooks", "row"} {
				if j[step] != store.OpDone {
					t.Errorf("destroy journal %s = %q", step, j[step])
				}
			}
			first := collect(t, live, id, 1)
			if first[0] != (seenEvent{events.SandboxUpdated, store.StatusDestroying}) {
				t.Errorf("first event = %v", first)
			}
			select {
			case ev := <-live:
				var d map[string]string
				_ = json.Unmarshal(ev.Data, &d)
				if ev.Type != events.SandboxDeleted || d["id"] != id || d["ownerId"] != owner {
					t.Errorf("last event = %s %s", ev.Type, ev.Data)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no sandbox.deleted event")
			}
			if _, err := e.svc.Wait(ctxT(t), id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Wait on a destroyed sandbox = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestDestroyInFlightCreate(t *testing.T) {
	e := newEnv(t)
	entered, release := e.rt.BlockNext(rtmock.OpBoot)
	defer release()
	e.run(t)
	live, cancel := e.bus.Subscribe()
	defer cancel()
	sb := e.create(t)
	<-entered // the boot is in progress: lease, volume and link exist
	if _, ok := e.vol.Volumes()[sb.ID]; !ok {
		t.Fatal("volume not cloned before boot")
	}
	waited := make(chan error, 1)
	go func() { _, err := e.svc.Wait(ctxT(t), sb.ID); waited <- err }()

	if err := e.svc.Destroy(ctxT(t), sb.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := e.svc.Get(ctxT(t), sb.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("row still there: %v", err)
	}
	e.assertGone(t, sb.ID)
	if err := <-waited; !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Wait = %v, want ErrNotFound", err)
	}
	j := e.journal(t, sb.ID, sandbox.OpCreate)
	if j["lease"] != store.OpUndone || j["volume"] != store.OpUndone || j["link"] != store.OpUndone || j["boot"] != store.OpFailed {
		t.Fatalf("create journal = %v", j)
	}
	got := collect(t, live, sb.ID, 2)
	if want := []seenEvent{{events.SandboxCreated, store.StatusCreating}, {events.SandboxUpdated, store.StatusDestroying}}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v (no error event from the cancelled create)", got, want)
	}
}

func TestDestroyQueuedCreate(t *testing.T) {
	e := newEnv(t) // no workers: the job stays queued
	sb := e.create(t)
	if err := e.svc.Destroy(ctxT(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Get(ctxT(t), sb.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("row still there: %v", err)
	}
	e.run(t) // the dropped job must not run now
	next := e.createRunning(t)
	if next.IP != "172.16.0.10" {
		t.Fatalf("next sandbox got %s", next.IP)
	}
	if j := e.journal(t, sb.ID, sandbox.OpCreate); len(j) != 0 {
		t.Fatalf("the dropped job ran: %v", j)
	}
	if out := e.scrape(t); !strings.Contains(out, "atelier_spawn_queue_depth 0") {
		t.Fatalf("queue depth:\n%s", grep(out, "queue_depth"))
	}
}

func TestDestroyStepFailureLeavesError(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	sb := e.createRunning(t)
	e.vol.FailNext(stmock.OpDelete, errors.New("device busy"))
	err := e.svc.Destroy(ctxT(t), sb.ID)
	if err == nil {
		t.Fatal("Destroy succeeded despite the injected failure")
	}
	got := e.status(t, sb.ID)
	if got.Status != store.StatusError || !strings.Contains(got.Error, "volume") || !strings.Contains(got.Error, "device busy") {
		t.Fatalf("sandbox = %s %q; want error naming the volume step", got.Status, got.Error)
	}
	if len(e.rt.Instances()) != 0 {
		t.Fatal("runtime step ran before the failure but instance remains")
	}
	if _, ok := e.vol.Volumes()[sb.ID]; !ok {
		t.Fatal("volume gone although its delete failed")
	}
	if j := e.journal(t, sb.ID, sandbox.OpDestroy); j["runtime"] != store.OpDone || j["volume"] != store.OpFailed || j["link"] != "" {
		t.Fatalf("destroy journal = %v", j)
	}
	// Retrying finishes the job.
	if err := e.svc.Destroy(ctxT(t), sb.ID); err != nil {
		t.Fatalf("retry: %v", err)
	}
	e.assertGone(t, sb.ID)
	if _, err := e.svc.Get(ctxT(t), sb.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("row still there: %v", err)
	}
}

func TestStopFailure(t *testing.T) {
	tests := []struct {
		name      string
		inject    func(e *env)
		keepLease bool
	}{
		// The guest may still be up and using its address.
		{"runtime", func(e *env) { e.rt.FailNext(rtmock.OpStop, errors.New("no answer")) }, true},
		{"link", func(e *env) { e.nw.FailNext(netmock.OpDetach, errors.New("busy")) }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.run(t)
			sb := e.createRunning(t)
			tc.inject(e)
			if _, err := e.svc.Stop(ctxT(t), sb.ID); err == nil {
				t.Fatal("Stop succeeded")
			}
			got := e.status(t, sb.ID)
			if got.Status != store.StatusError || !strings.Contains(got.Error, tc.name) {
				t.Fatalf("sandbox = %s %q", got.Status, got.Error)
			}
			_, err := e.st.GetLease(context.Background(), sb.ID)
			if held := err == nil; held != tc.keepLease {
				t.Fatalf("lease held = %v, want %v (err %v)", held, tc.keepLease, err)
			}
			if held := got.IP != ""; held != tc.keepLease {
				t.Fatalf("row IP %q, want held = %v", got.IP, tc.keepLease)
			}
			if e.svc.View(got).URLs != nil {
				t.Fatal("errored sandbox shows URLs")
			}
		})
	}
}

func TestStartFailureReleasesLeaseAndRecovers(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	sb := e.createRunning(t)
	ctx := ctxT(t)
	if _, err := e.svc.Stop(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	e.rt.FailNext(rtmock.OpBoot, errors.New("kernel panic"))
	if _, err := e.svc.Start(ctx, sb.ID); err == nil || !strings.Contains(err.Error(), "kernel panic") {
		t.Fatalf("Start = %v, want the boot error", err)
	}
	got := e.status(t, sb.ID)
	if got.Status != store.StatusError || got.IP != "" {
		t.Fatalf("sandbox = %s ip %q", got.Status, got.IP)
	}
	if _, err := e.st.GetLease(ctx, sb.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("errored sandbox holds a lease: %v", err)
	}
	if len(e.rt.Instances()) != 0 || len(e.nw.Links()) != 0 {
		t.Fatal("failed start left an instance or a link")
	}
	if _, ok := e.vol.Volumes()[sb.ID]; !ok {
		t.Fatal("failed start deleted the user's volume")
	}
	if j := e.journal(t, sb.ID, sandbox.OpStart); j["link"] != store.OpUndone || j["boot"] != store.OpFailed {
		t.Fatalf("start journal = %v", j)
	}
	again, err := e.svc.Start(ctx, sb.ID)
	if err != nil || again.Status != store.StatusRunning || again.IP == "" || again.Error != "" {
		t.Fatalf("start from error = %+v, %v", again, err)
	}
}

func TestStartAfterFailedCreate(t *testing.T) {
	e := newEnv(t)
	e.vol.FailNext(stmock.OpClone, errors.New("pool full"))
	e.run(t)
	sb, err := e.svc.Wait(ctxT(t), e.create(t).ID)
	if err != nil || sb.Status != store.StatusError {
		t.Fatalf("%+v, %v", sb, err)
	}
	got, err := e.svc.Start(ctxT(t), sb.ID)
	if err != nil || got.Status != store.StatusRunning {
		t.Fatalf("Start = %+v, %v", got, err)
	}
	if _, ok := e.vol.Volumes()[sb.ID]; !ok {
		t.Fatal("start did not clone the missing volume")
	}
}

func TestConcurrentOperationsSerialize(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	sb := e.createRunning(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	ops := []func() error{
		func() error { _, err := e.svc.Stop(ctx, sb.ID); return err },
		func() error { _, err := e.svc.Start(ctx, sb.ID); return err },
		func() error { _, err := e.svc.Restart(ctx, sb.ID); return err },
	}
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() { errs <- ops[i%3]() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil && !isConflict(err) {
			t.Fatalf("unexpected error: %v", err)
		}
	}
	got := e.status(t, sb.ID)
	switch got.Status {
	case store.StatusRunning:
		if !slices.Equal(e.rt.Instances(), []string{sb.ID}) {
			t.Fatalf("running without an instance: %v", e.rt.Instances())
		}
	case store.StatusStopped:
		if len(e.rt.Instances()) != 0 {
			t.Fatalf("stopped with an instance: %v", e.rt.Instances())
		}
	default:
		t.Fatalf("status after the storm = %s (%s)", got.Status, got.Error)
	}
	if got.IP != sb.IP {
		t.Fatalf("address changed from %s to %s", sb.IP, got.IP)
	}
	if err := e.svc.Destroy(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, sb.ID)
}

func TestWaitRespectsContext(t *testing.T) {
	e := newEnv(t) // no workers: never settles
	sb := e.create(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := e.svc.Wait(ctx, sb.ID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want deadline exceeded", err)
	}
	if _, err := e.svc.Wait(ctxT(t), "nosuchsandbx"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Wait on unknown = %v", err)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	var fe *sandbox.FieldError
	if _, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: owner, Vcpus: 99}); !errors.As(err, &fe) || fe.Field != "vcpus" {
		t.Fatalf("err = %v", err)
	}
	if _, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{}); err == nil {
		t.Fatal("create without an owner accepted")
	}
	if n, _ := e.st.CountSandboxes(context.Background()); n != 0 {
		t.Fatalf("%d rows after refused creates", n)
	}
}

func TestStartAfterFailedStopResetsRuntime(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	sb := e.createRunning(t)
	e.rt.FailNext(rtmock.OpStop, errors.New("no answer"))
	if _, err := e.svc.Stop(ctxT(t), sb.ID); err == nil {
		t.Fatal("Stop succeeded")
	}
	if !slices.Equal(e.rt.Instances(), []string{sb.ID}) {
		t.Fatal("the failed stop should have left the instance up")
	}
	got, err := e.svc.Start(ctxT(t), sb.ID)
	if err != nil || got.Status != store.StatusRunning || got.IP != sb.IP {
		t.Fatalf("Start from error = %+v, %v", got, err)
	}
	if j := e.journal(t, sb.ID, sandbox.OpStart); j["runtime"] != store.OpDone || j["boot"] != store.OpDone {
		t.Fatalf("start journal = %v", j)
	}
}

func TestDestroyDuringStart(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	sb := e.createRunning(t)
	if _, err := e.svc.Stop(ctxT(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	entered, release := e.rt.BlockNext(rtmock.OpBoot)
	defer release()
	started := make(chan error, 1)
	go func() { _, err := e.svc.Start(ctxT(t), sb.ID); started <- err }()
	<-entered // a boot that would hang
	if err := e.svc.Destroy(ctxT(t), sb.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if err := <-started; !errors.Is(err, context.Canceled) {
		t.Fatalf("Start = %v, want cancelled", err)
	}
	if _, err := e.svc.Get(ctxT(t), sb.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("row still there: %v", err)
	}
	e.assertGone(t, sb.ID)
}

func TestAddHooksComposeInOrder(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var calls []string
	rec := func(s string) {
		mu.Lock()
		calls = append(calls, s)
		mu.Unlock()
	}
	for _, name := range []string{"edge", "ssh"} {
		e.svc.AddHooks(sandbox.Hooks{
			OnRunning:   func(context.Context, sandbox.View, *agent.Client) error { rec(name + ":running"); return nil },
			OnDestroyed: func(_ context.Context, id string) error { rec(name + ":destroyed"); return nil },
		})
	}
	e.run(t)
	sb := e.createRunning(t)
	if err := e.svc.Destroy(ctxT(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	want := []string{"edge:running", "ssh:running", "edge:destroyed", "ssh:destroyed"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(calls, want) {
		t.Fatalf("hook calls = %v, want %v", calls, want)
	}
}
