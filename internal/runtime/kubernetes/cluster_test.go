package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/agent"
	"atelier/internal/agentpki"
	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/kubetest"
	"atelier/internal/metrics"
	netmock "atelier/internal/network/mock"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const staticClass = "atelier-test-static"

// agentImage is an image holding only the static agent at the boot
// contract's path and the directories a sandbox's disk mounts.
func agentImage(t testing.TB, c *kubetest.Cluster) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "atelier-agent")
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/atelier-agent")
	cmd.Dir = filepath.Join(filepath.Dir(self), "..", "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	agentBin, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	files := []kubetest.ImageFile{
		{Name: "sbin/atelier-agent", Mode: 0o755, Data: agentBin},
		{Name: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/sbin/atelier-agent\n")},
		{Name: "etc/group", Data: []byte("root:x:0:\n")},
	}
	for _, d := range diskDirs {
		files = append(files, kubetest.ImageFile{Name: d + "/.keep"})
	}
	ref := "localhost/atelier-k8srt/agent:" + fmt.Sprint(time.Now().UnixNano())
	tar := filepath.Join(t.TempDir(), "agent.tar")
	if err := kubetest.WriteImage(tar, ref, []string{"/sbin/atelier-agent"}, files...); err != nil {
		t.Fatal(err)
	}
	c.ImportImage(t, tar)
	return ref
}

// staticVolume is the disk's PersistentVolume: the bed has no dynamic
// provisioner, so the test binds a hostPath volume to the claim's name.
func staticVolume(t testing.TB, c *kubetest.Cluster, ns, id string) {
	t.Helper()
	dir := t.TempDir()
	hp := corev1.HostPathDirectoryOrCreate
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + ns + "-" + id},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              staticClass,
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: ClaimName(id)},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hp}},
		},
	}
	ctx := context.Background()
	if _, err := c.Clientset().CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := c.Clientset().CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete %s: %v", pv.Name, err)
		}
	})
}

// bedDriver is the runtime on the test bed: the agent image, the static
// storage class, a fresh CA, Pod IPs dialled in the bed's namespace; poll 0
// keeps the runtime's default. The CA is returned for tests that dial
// agents themselves.
func bedDriver(tb testing.TB, c *kubetest.Cluster, ns, ref string, poll time.Duration) (*Driver, *agentpki.CA) {
	tb.Helper()
	ca, err := agentpki.LoadOrCreate(filepath.Join(tb.TempDir(), "ca"))
	if err != nil {
		tb.Fatal(err)
	}
	d, err := New(c.Clientset(), Options{
		Namespace: ns, StorageClass: staticClass, DiskBytes: 1 << 30, AgentPort: 9998,
		Images: map[string]Image{"agent": {Ref: ref}}, CA: ca, Dial: c.DialContext,
		PodTimeout: 2 * time.Minute, Poll: poll, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	return d, ca
}

// TestOnCluster runs the driver against the real single-node cluster:
// fill, boot, the agent over mutual TLS at the Pod IP, a file kept across
// stop and start, a sandbox refused another's credential, destroy leaving
// nothing.
func TestOnCluster(t *testing.T) {
	c := kubetest.Shared(t)
	ns := c.Namespace(t)
	ref := agentImage(t, c)
	d, ca := bedDriver(t, c, ns, ref, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ids := []string{"k8sbeda00001", "k8sbedb00001"}
	for _, id := range ids {
		staticVolume(t, c, ns, id)
		t.Cleanup(func() {
			bg := context.Background()
			d.Destroy(bg, id)
			d.Delete(bg, id)
		})
		begin := time.Now()
		if _, err := d.Clone(ctx, "agent", id); err != nil {
			t.Fatalf("clone %s: %v", id, err)
		}
		filled := time.Since(begin)
		if err := d.Boot(ctx, sandbox.Instance{ID: id, Owner: "user-1", Vcpus: 1, MemoryMB: 256}); err != nil {
			t.Fatalf("boot %s: %v", id, err)
		}
		t.Logf("%s: disk filled in %v, pod running %v after", id, filled.Round(time.Millisecond), (time.Since(begin) - filled).Round(time.Millisecond))
	}
	cl := agent.New(d.AgentDialer(ids[0]))
	defer cl.Close()
	if err := cl.WaitReady(ctx, 20*time.Millisecond); err != nil {
		t.Fatalf("agent of %s: %v", ids[0], err)
	}
	h, err := cl.Health(ctx)
	if err != nil || h.SandboxID != ids[0] {
		t.Fatalf("health %+v %v", h, err)
	}
	if _, err := cl.WriteFile(ctx, "/home/kept.txt", strings.NewReader("survives a stop"), agent.WriteFileOptions{}); err != nil {
		t.Fatal(err)
	}

	// Pod A's credential at B's address: the manager expects B's name.
	// B's agent listens first (its Pod running does not mean it does), so
	// a refusal can only be the name's.
	clB := agent.New(d.AgentDialer(ids[1]))
	defer clB.Close()
	if err := clB.WaitReady(ctx, 20*time.Millisecond); err != nil {
		t.Fatalf("agent of %s: %v", ids[1], err)
	}
	ipB, err := d.Address(ctx, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	wrong := agent.New(agent.TLSDialer(func(context.Context) (string, error) { return ipB + ":9998", nil }, ca.ClientConfig(ids[0]), c.DialContext))
	defer wrong.Close()
	if _, err := wrong.Health(ctx); err == nil || !strings.Contains(err.Error(), "certificate is valid for "+agentpki.ServerName(ids[1])) {
		t.Fatalf("B's agent answered a dial meant for A: %v", err)
	}

	begin := time.Now()
	if err := d.Stop(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	// PID 1 handles SIGTERM: the Pod goes well before the grace period.
	t.Logf("stop took %v (grace %ds)", time.Since(begin).Round(time.Millisecond), stopGraceSecs)
	if err := d.Boot(ctx, sandbox.Instance{ID: ids[0], Vcpus: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	cl2 := agent.New(d.AgentDialer(ids[0]))
	defer cl2.Close()
	if err := cl2.WaitReady(ctx, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	b, err := cl2.ReadFileBytes(ctx, "/home/kept.txt")
	if err != nil || string(b) != "survives a stop" {
		t.Fatalf("after start: %q %v", b, err)
	}

	for _, id := range ids {
		if err := d.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := d.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	waitNoneLabelled(t, c, ns, "after destroy", ids...)
}

// BenchmarkClusterBoot is the Pod path phase by phase on the real
// cluster: the disk filled by a fill Pod, the sandbox Pod running, its
// agent answering over mutual TLS, and a stop (PID 1 handles SIGTERM).
func BenchmarkClusterBoot(b *testing.B) {
	c := kubetest.Shared(b)
	ns := c.Namespace(b)
	ref := agentImage(b, c)
	d, _ := bedDriver(b, c, ns, ref, 20*time.Millisecond)
	ctx := context.Background()
	var fill, run, ready, stop time.Duration
	for i := range b.N {
		id := fmt.Sprintf("k8sbench%04d", i)
		staticVolume(b, c, ns, id)
		t0 := time.Now()
		if _, err := d.Clone(ctx, "agent", id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.Boot(ctx, sandbox.Instance{ID: id, Vcpus: 1, MemoryMB: 256}); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		cl := agent.New(d.AgentDialer(id))
		if err := cl.WaitReady(ctx, 5*time.Millisecond); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		cl.Close()
		if err := d.Stop(ctx, id); err != nil {
			b.Fatal(err)
		}
		t4 := time.Now()
		fill, run, ready, stop = fill+t1.Sub(t0), run+t2.Sub(t1), ready+t3.Sub(t2), stop+t4.Sub(t3)
		if err := errors.Join(d.Destroy(ctx, id), d.Delete(ctx, id)); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	b.ReportMetric(ms(fill), "fill-ms")
	b.ReportMetric(ms(run), "pod-running-ms")
	b.ReportMetric(ms(ready), "agent-ready-ms")
	b.ReportMetric(ms(run+ready), "boot-to-agent-ms")
	b.ReportMetric(ms(stop), "stop-ms")
}

// poolVolume is a hostPath PersistentVolume of the static class that any
// claim may bind: the service names its sandboxes itself.
func poolVolume(t testing.TB, c *kubetest.Cluster, name string) {
	t.Helper()
	hp := corev1.HostPathDirectoryOrCreate
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              staticClass,
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: t.TempDir(), Type: &hp}},
		},
	}
	if _, err := c.Clientset().CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := c.Clientset().CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete %s: %v", pv.Name, err)
		}
	})
}

// TestServiceOnCluster drives the lifecycle service on the real cluster:
// create to running with the Pod's address on the row, the agent, stop and
// start keeping the disk, a Pod deleted behind the manager's back marked by
// the reconciler, destroy leaving nothing.
func TestServiceOnCluster(t *testing.T) {
	c := kubetest.Shared(t)
	ns := c.Namespace(t)
	ref := agentImage(t, c)
	poolVolume(t, c, "pv-"+ns+"-svc")
	d, _ := bedDriver(t, c, ns, ref, 0)
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = t.TempDir()
	cfg.Quotas = config.Quotas{}
	cfg.Sandbox.Git = config.Git{}
	st, err := store.Open(context.Background(), cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	svc := sandbox.New(cfg, st, events.New(st, slog.New(slog.DiscardHandler)), metrics.New(),
		sandbox.Drivers{Runtime: d, Network: netmock.New(), Volumes: d}, slog.New(slog.DiscardHandler))
	svc.SetInventory(sandbox.Inventory{Runtimes: d.List, Volumes: d.Volumes})
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); svc.Run(rctx) }()
	defer func() { stop(); <-done }()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sb, err := svc.Create(ctx, sandbox.CreateRequest{OwnerID: "user-1", Image: "agent", Vcpus: 1, MemoryMB: 512})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.Background()
		d.Destroy(bg, sb.ID)
		d.Delete(bg, sb.ID)
	})
	if sb, err = svc.Wait(ctx, sb.ID); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("create: %v %s %s", err, sb.Status, sb.Error)
	}
	if !strings.HasPrefix(sb.IP, "10.244.0.") {
		t.Fatalf("row address %q, want the Pod's on the bed's pod network", sb.IP)
	}
	t.Logf("create timings (ms): %v", sb.Timings)
	cl, err := svc.Agent(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WriteFile(ctx, "/root/kept.txt", strings.NewReader("kept"), agent.WriteFileOptions{}); err != nil {
		t.Fatal(err)
	}
	if sb, err = svc.Stop(ctx, sb.ID); err != nil || sb.Status != store.StatusStopped {
		t.Fatalf("stop: %v %s", err, sb.Status)
	}
	if sb, err = svc.Start(ctx, sb.ID); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("start: %v %s %s", err, sb.Status, sb.Error)
	}
	cl, _ = svc.Agent(ctx, sb.ID)
	if b, err := cl.ReadFileBytes(ctx, "/root/kept.txt"); err != nil || string(b) != "kept" {
		t.Fatalf("after start: %q %v", b, err)
	}
	// The Pod dies behind the manager's back.
	if err := d.deletePod(ctx, PodName(sb.ID)); err != nil {
		t.Fatal(err)
	}
	if rep, err := svc.Reconcile(ctx, false); err != nil || rep.Dead != 1 {
		t.Fatalf("reconcile: %+v %v", rep, err)
	}
	if got, _ := svc.Get(ctx, sb.ID); got.Status != store.StatusError {
		t.Fatalf("status after the pod died: %s", got.Status)
	}
	if err := svc.Destroy(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	waitNoneLabelled(t, c, ns, "after destroy", sb.ID)
}

// TestCrashOnCluster kills the manager (its worker exits on the spot, no
// undo) inside a create and a destroy on the real cluster, starts a new
// manager on the same store, and checks its start-up reconcile converges:
// the create undone to error with no object left, the destroy finished.
func TestCrashOnCluster(t *testing.T) {
	c := kubetest.Shared(t)
	ns := c.Namespace(t)
	ref := agentImage(t, c)
	for i := range 4 {
		poolVolume(t, c, fmt.Sprintf("pv-%s-crash%d", ns, i))
	}
	d, _ := bedDriver(t, c, ns, ref, 0)
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = t.TempDir()
	cfg.Quotas = config.Quotas{}
	cfg.Sandbox.Git = config.Git{}
	st, err := store.Open(context.Background(), cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	nw := netmock.New()
	manager := func() (*sandbox.Service, func()) {
		svc := sandbox.New(cfg, st, events.New(st, slog.New(slog.DiscardHandler)), metrics.New(),
			sandbox.Drivers{Runtime: d, Network: nw, Volumes: d}, slog.New(slog.DiscardHandler))
		svc.SetInventory(sandbox.Inventory{Runtimes: d.List, Volumes: d.Volumes})
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); svc.Run(ctx) }()
		return svc, func() { stop(); <-done }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	crashAt := func(op, step string) (crashed chan struct{}) {
		crashed = make(chan struct{})
		sandbox.CrashHook = func(o, s, w string) {
			if o == op && s == step && w == "after" {
				sandbox.CrashHook = nil
				close(crashed)
				runtime.Goexit()
			}
		}
		return crashed
	}
	t.Cleanup(func() { sandbox.CrashHook = nil })

	// A create killed after its Pod started.
	svc, stop := manager()
	crashed := crashAt(sandbox.OpCreate, "boot")
	sb, err := svc.Create(ctx, sandbox.CreateRequest{OwnerID: "user-1", Image: "agent", Vcpus: 1, MemoryMB: 512})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), sb.ID); d.Delete(context.Background(), sb.ID) })
	<-crashed
	stop()
	if alive, _ := d.Alive(ctx, sb.ID); !alive {
		t.Fatal("the crash point is after the boot: the Pod should run")
	}
	svc, stop = manager()
	defer func() { stop() }()
	if _, err := svc.Reconcile(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := svc.Get(ctx, sb.ID); got.Status != store.StatusError {
		t.Fatalf("interrupted create: %s", got.Status)
	}
	if n := labelledCount(ctx, c, ns, sb.ID); n != 0 {
		t.Fatalf("an undone create left %d objects", n)
	}
	if got, err := svc.Start(ctx, sb.ID); err != nil || got.Status != store.StatusRunning {
		t.Fatalf("start after the crash: %v %s", err, got.Status)
	}

	// A destroy killed after the Pod went, before the disk.
	stop()
	svc, stop = manager()
	crashed = crashAt(sandbox.OpDestroy, "runtime")
	go svc.Destroy(ctx, sb.ID)
	<-crashed
	stop()
	svc, stop = manager()
	if _, err := svc.Reconcile(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Get(ctx, sb.ID); err == nil {
		t.Fatal("the interrupted destroy's row is still there")
	}
	waitNoneLabelled(t, c, ns, "after the finished destroy", sb.ID)
}

// labelledCount counts the Pods, claims, Secrets and NetworkPolicies of ns
// labelled with sandbox id.
func labelledCount(ctx context.Context, c *kubetest.Cluster, ns, id string) int {
	cs := c.Clientset()
	sel := metav1.ListOptions{LabelSelector: Selector(id)}
	p, _ := cs.CoreV1().Pods(ns).List(ctx, sel)
	v, _ := cs.CoreV1().PersistentVolumeClaims(ns).List(ctx, sel)
	s, _ := cs.CoreV1().Secrets(ns).List(ctx, sel)
	n, _ := cs.NetworkingV1().NetworkPolicies(ns).List(ctx, sel)
	return len(p.Items) + len(v.Items) + len(s.Items) + len(n.Items)
}

// waitNoneLabelled waits up to a minute until nothing in ns is labelled
// with any of ids (deletions take the kubelet a moment).
func waitNoneLabelled(t *testing.T, c *kubetest.Cluster, ns, when string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	for {
		left := 0
		for _, id := range ids {
			left += labelledCount(ctx, c, ns, id)
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d objects left %s", left, when)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
