package kubernetes

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"atelier/internal/agentpki"
	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/guest"
	"atelier/internal/metrics"
	netmock "atelier/internal/network/mock"
	"atelier/internal/sandbox"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// agentNode is a kubelet whose sandbox Pods run a real agent: on the Pod's
// create it reads the Pod's Secret as the node would mount it, and serves
// the agent with --listen-tls's config on loopback (the "pod IP"), until
// the Pod is deleted. So the service reaches it through the driver's
// dialer, with mutual TLS, exactly as it reaches a Pod.
type agentNode struct {
	t    *testing.T
	b    *bed
	port int

	mu     sync.Mutex
	agents map[string]func() // pod name → stop
}

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

func (n *agentNode) create(action k8stesting.Action) (bool, k8sruntime.Object, error) {
	p := action.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
	switch p.Labels[LabelRole] {
	case RoleFill:
		p.Status.Phase = corev1.PodSucceeded
		return false, nil, nil
	case RoleSandbox:
	default:
		return false, nil, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, running := n.agents[p.Name]; running {
		return false, nil, nil // the tracker refuses the duplicate
	}
	// The tracker, not the clientset: the fake holds its lock while
	// reactors run.
	obj, err := n.b.cs.Tracker().Get(secretsGVR, ns, p.Spec.Volumes[1].Secret.SecretName)
	if err != nil {
		p.Status.Phase = corev1.PodPending
		return false, nil, nil
	}
	dir := n.t.TempDir()
	for k, v := range obj.(*corev1.Secret).Data {
		if err := os.WriteFile(filepath.Join(dir, k), v, 0o400); err != nil {
			return true, nil, err
		}
	}
	cfg, err := agentpki.ServerConfig(dir)
	if err != nil {
		return true, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(n.port))
	if err != nil {
		return true, nil, err
	}
	id := p.Labels[LabelSandbox]
	srv := guest.NewServer(guest.Options{SandboxID: id, LogDir: n.t.TempDir(), ConfigPath: filepath.Join(dir, "config.json"),
		ManifestPath: "", StateDir: "", Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, tls.NewListener(ln, cfg)) }()
	n.agents[p.Name] = func() {
		cancel()
		<-done
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		srv.Shutdown(sctx)
	}
	p.Status.Phase, p.Status.PodIP = corev1.PodRunning, "127.0.0.1"
	return false, nil, nil
}

func (n *agentNode) delete(action k8stesting.Action) (bool, k8sruntime.Object, error) {
	n.stop(action.(k8stesting.DeleteAction).GetName())
	return false, nil, nil
}

func (n *agentNode) stop(name string) {
	n.mu.Lock()
	stop := n.agents[name]
	delete(n.agents, name)
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
}

type svcEnv struct {
	*bed
	node *agentNode
	cfg  *config.Config
	st   *store.Store
	nw   *netmock.Network
	svc  *sandbox.Service
	stop func()
}

func newSvcEnv(t *testing.T) *svcEnv {
	t.Helper()
	port := testenv.FreePort(t)
	b := newBed(t, func(o *Options) { o.AgentPort = port })
	node := &agentNode{t: t, b: b, port: port, agents: map[string]func(){}}
	b.k.external = true
	sandbox.AgentReadyTimeout = 5 * time.Second
	b.cs.PrependReactor("create", "pods", node.create)
	b.cs.PrependReactor("delete", "pods", node.delete)
	t.Cleanup(func() {
		for name := range node.agents {
			node.stop(name)
		}
	})
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = t.TempDir()
	cfg.Server.SpawnConcurrency = 1
	cfg.Quotas = config.Quotas{}
	// No identity: the agent runs on this machine, where git config
	// --global would write the tester's own file.
	cfg.Sandbox.Git = config.Git{}
	st, err := store.Open(context.Background(), cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &svcEnv{bed: b, node: node, cfg: cfg, st: st, nw: netmock.New()}
	e.restart(t)
	return e
}

// restart is a new manager process on the same store and cluster.
func (e *svcEnv) restart(t *testing.T) {
	t.Helper()
	if e.stop != nil {
		e.stop()
	}
	bus := events.New(e.st, slog.New(slog.DiscardHandler))
	e.svc = sandbox.New(e.cfg, e.st, bus, metrics.New(), sandbox.Drivers{Runtime: e.d, Network: e.nw, Volumes: e.d}, slog.New(slog.DiscardHandler))
	e.svc.SetInventory(sandbox.Inventory{Runtimes: e.d.List, Volumes: e.d.Volumes})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.svc.Run(ctx) }()
	e.stop = func() { cancel(); <-done }
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
			e.stop = nil
		}
	})
}

func (e *svcEnv) create(t *testing.T) store.Sandbox {
	t.Helper()
	sb, err := e.svc.Create(e.ctx, sandbox.CreateRequest{OwnerID: "user-1", Image: "dev-base", Vcpus: 1, MemoryMB: 512})
	if err != nil {
		t.Fatal(err)
	}
	sb, err = e.svc.Wait(e.ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestServiceLifecycle(t *testing.T) {
	e := newSvcEnv(t)
	sb := e.create(t)
	if sb.Status != store.StatusRunning {
		t.Fatalf("create: %s %s", sb.Status, sb.Error)
	}
	// The row holds the Pod's address, which the edge and SSH proxy dial.
	if sb.IP != "127.0.0.1" {
		t.Fatalf("row ip %q, want the pod's", sb.IP)
	}
	c, err := e.svc.Agent(e.ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	h, err := c.Health(e.ctx)
	if err != nil || h.SandboxID != sb.ID {
		t.Fatalf("agent over mutual TLS: %+v %v", h, err)
	}
	first := e.agentCert(t, sb.ID)

	if sb, err = e.svc.Stop(e.ctx, sb.ID); err != nil || sb.Status != store.StatusStopped {
		t.Fatalf("stop: %v %v", sb.Status, err)
	}
	if got := e.labelled(t, sb.ID); !slices.Equal(got, []string{"networkpolicy/" + PolicyName(sb.ID), "pvc/" + ClaimName(sb.ID)}) {
		t.Fatalf("stopped: %v", got)
	}
	if sb, err = e.svc.Start(e.ctx, sb.ID); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("start: %v %v", sb.Status, err)
	}
	if e.agentCert(t, sb.ID).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("start did not re-issue the agent credential")
	}
	if e.k.created[RoleFill] != 1 {
		t.Fatalf("fills: %d (a start must reuse the disk)", e.k.created[RoleFill])
	}
	c, _ = e.svc.Agent(e.ctx, sb.ID)
	if _, err := c.Health(e.ctx); err != nil {
		t.Fatalf("agent after start: %v", err)
	}

	// The Pod dies behind the manager's back: the reconciler marks it.
	e.node.stop(PodName(sb.ID))
	if err := e.cs.CoreV1().Pods(ns).Delete(e.ctx, PodName(sb.ID), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.svc.Reconcile(e.ctx, false)
	if err != nil || rep.Dead != 1 {
		t.Fatalf("reconcile: %+v %v", rep, err)
	}
	if got, _ := e.svc.Get(e.ctx, sb.ID); got.Status != store.StatusError {
		t.Fatalf("dead pod's sandbox is %s", got.Status)
	}
	if sb, err = e.svc.Start(e.ctx, sb.ID); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("start after death: %v %v", sb.Status, err)
	}

	if err := e.svc.Destroy(e.ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if got := e.labelled(t, sb.ID); len(got) != 0 {
		t.Fatalf("destroyed sandbox left %v", got)
	}
}

func TestReconcileOrphans(t *testing.T) {
	e := newSvcEnv(t)
	keep := e.create(t)
	// A sandbox the store never heard of (another install's leftovers, a
	// create whose row a restore dropped): Pod, disk, Secret, policy.
	const orphan = "k8sorphan001"
	if _, err := e.d.Clone(e.ctx, "dev-base", orphan); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Boot(e.ctx, sandbox.Instance{ID: orphan, Vcpus: 1, MemoryMB: 512}); err != nil {
		// The loopback port is the kept sandbox's: the orphan's Pod stays
		// pending, which is as much an orphan.
		t.Logf("orphan boot: %v", err)
	}
	rep, err := e.svc.Reconcile(e.ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Runtimes != 1 || rep.Volumes != 1 {
		t.Fatalf("report %+v", rep)
	}
	if got := e.labelled(t, orphan); len(got) != 0 {
		t.Fatalf("orphan left %v", got)
	}
	if got := e.labelled(t, keep.ID); len(got) != 4 {
		t.Fatalf("the live sandbox lost %v", got)
	}
}

// TestCrashAtEveryStep kills the manager (the worker's goroutine exits on
// the spot, running no undo) before and after each journaled step of
// create, stop, start and destroy, starts a new manager on the same store
// and cluster, and checks that its start-up reconcile leaves the sandbox
// truthful and the cluster holding exactly what that state needs.
func TestCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("many lifecycles")
	}
	// The steps each operation journals, from one run without crashes.
	steps := map[string][]string{}
	var mu sync.Mutex
	sandbox.CrashHook = func(op, step, when string) {
		mu.Lock()
		defer mu.Unlock()
		if when == "before" && !slices.Contains(steps[op], step) {
			steps[op] = append(steps[op], step)
		}
	}
	t.Cleanup(func() { sandbox.CrashHook = nil })
	{
		e := newSvcEnv(t)
		sb := e.create(t)
		if _, err := e.svc.Stop(e.ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Start(e.ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		if err := e.svc.Destroy(e.ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, op := range []string{sandbox.OpCreate, sandbox.OpStop, sandbox.OpStart, sandbox.OpDestroy} {
		if len(steps[op]) == 0 {
			t.Fatalf("no steps recorded for %s", op)
		}
		for _, step := range steps[op] {
			for _, when := range []string{"before", "after"} {
				t.Run(fmt.Sprintf("%s/%s/%s", op, step, when), func(t *testing.T) {
					crashAt(t, op, step, when)
				})
			}
		}
	}
}

func crashAt(t *testing.T, op, step, when string) {
	e := newSvcEnv(t)
	var sb store.Sandbox
	if op != sandbox.OpCreate {
		sb = e.create(t)
		if op == sandbox.OpStart {
			if _, err := e.svc.Stop(e.ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	crashed := make(chan struct{})
	sandbox.CrashHook = func(o, s, w string) {
		if o == op && s == step && w == when {
			close(crashed)
			runtime.Goexit() // the manager dies here: no undo, no journal
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		switch op {
		case sandbox.OpCreate:
			if x, err := e.svc.Create(e.ctx, sandbox.CreateRequest{OwnerID: "user-1", Image: "dev-base", Vcpus: 1, MemoryMB: 512}); err == nil {
				sb = x
			}
		case sandbox.OpStop:
			e.svc.Stop(e.ctx, sb.ID)
		case sandbox.OpStart:
			e.svc.Start(e.ctx, sb.ID)
		case sandbox.OpDestroy:
			e.svc.Destroy(e.ctx, sb.ID)
		}
	}()
	select {
	case <-crashed:
	case <-time.After(15 * time.Second):
		t.Fatal("the crash point was never reached")
	}
	<-done
	sandbox.CrashHook = nil
	// The dead manager's agent servers stay as its Pods are; a new one starts.
	e.restart(t)
	if _, err := e.svc.Reconcile(e.ctx, true); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	got, err := e.svc.Get(e.ctx, sb.ID)
	left := e.labelled(t, sb.ID)
	switch {
	case op == sandbox.OpDestroy:
		if err == nil || len(left) != 0 {
			t.Fatalf("interrupted destroy: row %v (%v), left %v", got.Status, err, left)
		}
		return
	case err != nil:
		t.Fatal(err)
	case op == sandbox.OpStop && got.Status != store.StatusStopped,
		op == sandbox.OpCreate && got.Status != store.StatusError && got.Status != store.StatusRunning,
		op == sandbox.OpStart && got.Status != store.StatusError && got.Status != store.StatusRunning:
		t.Fatalf("after the crash: %s (%s)", got.Status, got.Error)
	}
	if got.Status != store.StatusRunning && slices.Contains(left, "pod/"+PodName(sb.ID)) {
		t.Fatalf("a %s sandbox kept its pod: %v", got.Status, left)
	}
	if slices.Contains(left, "pod/"+FillName(sb.ID)) {
		t.Fatalf("fill pod left: %v", left)
	}
	if op == sandbox.OpCreate && got.Status == store.StatusError && len(left) != 0 {
		t.Fatalf("an undone create left %v", left)
	}
	// The next operation works, and destroy leaves nothing.
	if got.Status != store.StatusRunning {
		if got, err = e.svc.Start(e.ctx, sb.ID); err != nil || got.Status != store.StatusRunning {
			t.Fatalf("start after the crash: %v %v %s", got.Status, err, got.Error)
		}
	}
	if err := e.svc.Destroy(e.ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if left := e.labelled(t, sb.ID); len(left) != 0 {
		t.Fatalf("left after destroy: %v", left)
	}
}
