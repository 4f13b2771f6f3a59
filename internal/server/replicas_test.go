package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// replica starts a production manager on the shared database url with the
// shared drivers (the stand-in for a runtime every replica reaches, as a
// cluster is) and returns it with a stop func that shuts it down gracefully.
func replica(t *testing.T, url string, drv *sandbox.Drivers, ttl time.Duration) (*Server, *http.Client, func()) {
	t.Helper()
	return replicaWith(t, url, drv, ttl, nil)
}

// replicaWith is replica with its server options adjusted by tweak.
func replicaWith(t *testing.T, url string, drv *sandbox.Drivers, ttl time.Duration, tweak func(*Options)) (*Server, *http.Client, func()) {
	t.Helper()
	cfg := productionConfig(t)
	cfg.Advanced.Server.Database.URL = url
	cfg.Advanced.Server.SecretsKeyFile = sharedKey(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	opts := Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Drivers: drv,
		LeaderTTL: ttl, ReconcileEvery: 100 * time.Millisecond}
	if tweak != nil {
		tweak(&opts)
	}
	srv, err := New(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Listen(false); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return srv, unixClient(cfg.Server.SocketPath), stop
}

// replicaKeys holds the secrets key file of each test database: replicas
// of one store share it, as they must.
var replicaKeys sync.Map

func sharedKey(t *testing.T, url string) string {
	t.Helper()
	if p, ok := replicaKeys.Load(url); ok {
		return p.(string)
	}
	p := filepath.Join(t.TempDir(), "secrets.key")
	writeKey(t, p)
	replicaKeys.Store(url, p)
	t.Cleanup(func() { replicaKeys.Delete(url) })
	return p
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

type sseEvent struct {
	typ string
	id  string // the sandbox's
	st  string
}

// sse follows GET /api/events on c and sends every event on the channel.
func sse(t *testing.T, c *http.Client) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://atelier/api/events", nil)
	res, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("events: %d", res.StatusCode)
	}
	out := make(chan sseEvent, 64)
	t.Cleanup(func() { cancel(); res.Body.Close() })
	go func() {
		defer close(out)
		sc := bufio.NewScanner(res.Body)
		var typ string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var sb struct{ ID, Status string }
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &sb)
				out <- sseEvent{typ: typ, id: sb.ID, st: sb.Status}
			}
		}
	}()
	return out
}

func expectEvent(t *testing.T, ch <-chan sseEvent, within time.Duration, match func(sseEvent) bool, what string) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("%s: the event stream ended", what)
			}
			if match(ev) {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no such event within %s", what, within)
		}
	}
}

// Two managers on one Postgres: a sandbox created through A reaches an SSE
// client of B; only one of them leads; when the leader stops, the other
// takes over the reconciler within the lease time.
func TestReplicasShareEventsAndHandOverTheReconciler(t *testing.T) {
	url := testenv.PostgresDB(t)
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	const ttl = 1500 * time.Millisecond
	a, ca, stopA := replica(t, url, drv, ttl)
	waitFor(t, 5*time.Second, "A leads", a.Leading)
	b, cb, _ := replica(t, url, drv, ttl)
	if b.Store.Backend() != "postgres" {
		t.Fatalf("B's store is %s", b.Store.Backend())
	}
	time.Sleep(ttl / 2)
	if b.Leading() {
		t.Fatal("B leads while A holds a live lease")
	}

	events := sse(t, cb)
	res, err := ca.Post("http://atelier/api/sandboxes", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create on A: %d %s", res.StatusCode, body)
	}
	var sb struct{ ID string }
	_ = json.Unmarshal(body, &sb)
	expectEvent(t, events, 5*time.Second, func(e sseEvent) bool { return e.typ == "sandbox.created" && e.id == sb.ID },
		"B's SSE client sees the create made on A")
	expectEvent(t, events, 10*time.Second, func(e sseEvent) bool { return e.id == sb.ID && e.st == "running" },
		"B's SSE client sees A's sandbox running")

	// A create in flight on the follower B, longer than the lease: A's
	// reconciler (every 100 ms) must leave it alone, B keeps it fresh.
	rt := drv.Runtime.(*rtmock.Runtime)
	entered, release := rt.BlockNext(rtmock.OpBoot)
	t.Cleanup(release) // a failure below must not leave the create blocked
	res, err = cb.Post("http://atelier/api/sandboxes?wait=false", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("create on B: %d %s", res.StatusCode, body)
	}
	var sb2 struct{ ID string }
	_ = json.Unmarshal(body, &sb2)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("B's create never booted")
	}
	time.Sleep(2 * ttl)
	if got, err := a.Store.GetSandbox(context.Background(), sb2.ID); err != nil || got.Status != store.StatusCreating {
		t.Fatalf("B's in-flight create after %s of A's reconciler: %s %v, want still creating", 2*ttl, got.Status, err)
	}
	ops, err := a.Store.OpenOps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ops, func(o store.Op) bool { return o.SandboxID == sb2.ID }) {
		t.Fatalf("A closed the journal steps of B's in-flight create: open steps %+v", ops)
	}
	release()
	expectEvent(t, events, 10*time.Second, func(e sseEvent) bool { return e.id == sb2.ID && e.st == "running" },
		"B's create finishes")

	stopA()
	took := waitFor(t, ttl+time.Second, "B takes over after A stopped", b.Leading)
	t.Logf("B led %s after A stopped (lease %s)", took.Round(time.Millisecond), ttl)
	// B's reconciler passes keep A's running sandbox: the runtime is shared.
	time.Sleep(300 * time.Millisecond)
	got, err := b.Store.GetSandbox(context.Background(), sb.ID)
	if err != nil || got.Status != store.StatusRunning {
		t.Fatalf("after the handover: %+v %v, want running", got.Status, err)
	}
}

// A leader that dies (stops renewing, releases nothing) mid-create: the
// other replica waits out its lease, takes over, finishes the create the
// dead one left and closes its journal step, and its SSE clients see the
// outcome.
func TestReplicaTakesOverFromADeadLeader(t *testing.T) {
	url := testenv.PostgresDB(t)
	ctx := context.Background()
	ghost, err := store.Open(ctx, t.TempDir(), store.WithDatabaseURL(url))
	if err != nil {
		t.Fatal(err)
	}
	defer ghost.Close()
	const ttl = 2 * time.Second
	// The dead manager's last acts: it renewed its lease and inserted a
	// sandbox it was creating.
	if won, _, err := ghost.AcquireLeader(ctx, leaderName, "dead-manager", ttl); err != nil || !won {
		t.Fatalf("ghost lease: %v %v", won, err)
	}
	now := time.Now()
	const id = "deadbeef0001"
	if err := ghost.InsertSandbox(ctx, store.Sandbox{ID: id, OwnerID: "u1", Status: store.StatusCreating,
		Image: "default", CreatedAt: now, UpdatedAt: now}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ghost.AppendOp(ctx, store.Op{SandboxID: id, Op: "create", Step: "boot"}); err != nil {
		t.Fatal(err)
	}
	leaseEnd := now.Add(ttl)
	openSteps := func() int {
		ops, err := ghost.OpenOps(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(ops)
	}

	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	b, cb, _ := replica(t, url, drv, ttl)
	events := sse(t, cb)
	if b.Leading() {
		t.Fatal("B leads while the dead manager's lease runs")
	}
	if sb, _ := b.Store.GetSandbox(ctx, id); sb.Status != store.StatusCreating {
		t.Fatalf("B settled the create before taking over: %s", sb.Status)
	}
	if openSteps() != 1 {
		t.Fatal("B closed the dead manager's journal step before taking over")
	}
	waitFor(t, 2*ttl, "B takes over", b.Leading)
	if late := time.Since(leaseEnd); late > ttl {
		t.Errorf("B took over %s after the lease ended, want within %s", late, ttl)
	}
	// The runtime every replica reaches still can bring it up: B adopts
	// the create and finishes it.
	expectEvent(t, events, 3*ttl, func(e sseEvent) bool { return e.id == id && e.st == "running" },
		"B's SSE client sees the interrupted create finished")
	waitFor(t, 2*ttl, "the dead manager's open journal step closed", func() bool { return openSteps() == 0 })
}

// A leader whose lease another manager holds now (its own lapsed while it
// could not reach the store, say) stops leading at its next renewal.
func TestLeaderStepsDownWhenItsLeaseIsTaken(t *testing.T) {
	url := testenv.PostgresDB(t)
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	const ttl = 1500 * time.Millisecond
	a, _, _ := replica(t, url, drv, ttl)
	waitFor(t, 5*time.Second, "A leads", a.Leading)
	ctx := context.Background()
	other, err := store.Open(ctx, t.TempDir(), store.WithDatabaseURL(url))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.PutSetting(ctx, "leader:"+leaderName, store.Leadership{Holder: "other", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, ttl, "A steps down", func() bool { return !a.Leading() })
	t.Logf("A stepped down %s after its lease was taken", took.Round(time.Millisecond))
	time.Sleep(ttl)
	if a.Leading() {
		t.Fatal("A leads again while another manager's lease runs")
	}
}
