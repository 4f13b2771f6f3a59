package server

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"atelier/internal/runtime/kubernetes"
)

// podPhases records when the watch first saw each step of a sandbox's Pod
// path: its claim bound, its fill Pod done, its Pod scheduled and running.
type podPhases struct {
	mu   sync.Mutex
	seen map[string]map[string]time.Time // sandbox id -> phase -> first seen
}

func (p *podPhases) mark(id, phase string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen[id] == nil {
		p.seen[id] = map[string]time.Time{}
	}
	if _, ok := p.seen[id][phase]; !ok {
		p.seen[id][phase] = time.Now()
	}
}

func (p *podPhases) of(id string) map[string]time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[id]
}

// watchPhases follows the namespace's Pods and claims until ctx ends.
func (e *kubeEnv) watchPhases(tb testing.TB, ctx context.Context) *podPhases {
	tb.Helper()
	p := &podPhases{seen: map[string]map[string]time.Time{}}
	sel := metav1.ListOptions{LabelSelector: kubernetes.LabelManaged + "=" + kubernetes.ManagedBy}
	cs := e.c.Clientset().CoreV1()
	pw, err := cs.Pods(e.ns).Watch(ctx, sel)
	if err != nil {
		tb.Fatal(err)
	}
	cw, err := cs.PersistentVolumeClaims(e.ns).Watch(ctx, sel)
	if err != nil {
		pw.Stop()
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	tb.Cleanup(func() { pw.Stop(); cw.Stop(); wg.Wait() })
	go func() {
		defer wg.Done()
		for ev := range pw.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			id := pod.Labels[kubernetes.LabelSandbox]
			if pod.Labels[kubernetes.LabelRole] == kubernetes.RoleFill {
				if pod.Status.Phase == corev1.PodSucceeded {
					p.mark(id, "fill")
				}
				continue
			}
			if pod.Spec.NodeName != "" {
				p.mark(id, "scheduled")
			}
			if pod.Status.Phase == corev1.PodRunning {
				p.mark(id, "running")
			}
		}
	}()
	go func() {
		defer wg.Done()
		for ev := range cw.ResultChan() {
			if c, ok := ev.Object.(*corev1.PersistentVolumeClaim); ok && c.Status.Phase == corev1.ClaimBound {
				p.mark(c.Labels[kubernetes.LabelSandbox], "bound")
			}
		}
	}()
	return p
}

// BenchmarkKubernetesCreate: create -> agent ready (the API's create
// returns once the sandbox runs and its agent answers) on the test bed's
// cluster next to the container runtime on the same machine, one after
// the other in one run (x-container = cluster p50 / container p50), and the
// Pod path phase by phase as a watch on the cluster saw it: the claim bound,
// the disk filled by the fill Pod, the sandbox Pod scheduled, running, and
// its agent answering over mutual TLS.
func BenchmarkKubernetesCreate(b *testing.B) {
	const nContainer, nKube = 10, 5
	var cont, kube []time.Duration
	phases := map[string][]time.Duration{}

	f := newFixture(b)
	_, stop := f.startWith(b, nil)
	e := newKubeEnv(b)
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < nContainer; i++ {
			t0 := time.Now()
			id, code, body := f.create(b)
			if code != http.StatusCreated {
				b.Fatalf("container create: %d %s", code, body)
			}
			cont = append(cont, time.Since(t0))
			if code, body := f.call(b, "DELETE", "/api/sandboxes/"+id, ""); code != http.StatusNoContent {
				b.Fatalf("container destroy: %d %s", code, body)
			}
		}
	}
	b.StopTimer()
	stop()
	f.assertNoLeaks(b)

	_, kstop := e.start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watched := e.watchPhases(b, ctx)
	b.StartTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < nKube; i++ {
			b.StopTimer()
			e.addVolume(b)
			b.StartTimer()
			t0 := time.Now()
			code, body := e.f.call(b, "POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
			done := time.Now()
			var v struct {
				ID, Status string
				Timings    map[string]float64
			}
			if json.Unmarshal(body, &v); code != http.StatusCreated || v.Status != "running" {
				b.Fatalf("cluster create: %d %s", code, body)
			}
			kube = append(kube, done.Sub(t0))
			for _, step := range []string{"volume", "boot", "agent"} {
				phases["step-"+step] = append(phases["step-"+step], time.Duration(v.Timings[step]*float64(time.Millisecond)))
			}
			// The Pod path between the watch's marks, each from the one before.
			seen := watched.of(v.ID)
			prev := t0
			for _, ph := range []string{"bound", "fill", "scheduled", "running"} {
				at, ok := seen[ph]
				if !ok {
					b.Fatalf("sandbox %s: the watch never saw %s (saw %v)", v.ID, ph, seen)
				}
				phases[ph] = append(phases[ph], at.Sub(prev))
				prev = at
			}
			phases["agent-tls"] = append(phases["agent-tls"], done.Sub(prev))
			if code, body := e.f.call(b, "DELETE", "/api/sandboxes/"+v.ID, ""); code != http.StatusNoContent {
				b.Fatalf("cluster destroy: %d %s", code, body)
			}
			if pods, claims, secrets, policies := e.objects(b, v.ID); pods+claims+secrets+policies != 0 {
				// Deletion is asynchronous on the cluster; the test checks it converges.
				b.Logf("%s: %d objects still going after destroy", v.ID, pods+claims+secrets+policies)
			}
		}
	}
	b.StopTimer()
	kstop()

	cp50, kp50 := pct(cont, 0.5), pct(kube, 0.5)
	b.ReportMetric(msOf(cp50), "container-p50-ms")
	b.ReportMetric(msOf(kp50), "kube-p50-ms")
	if cp50 > 0 {
		b.ReportMetric(float64(kp50)/float64(cp50), "x-container")
	}
	for _, ph := range []string{"bound", "fill", "scheduled", "running", "agent-tls", "step-volume", "step-boot", "step-agent"} {
		b.ReportMetric(msOf(pct(phases[ph], 0.5)), "kube-"+ph+"-p50-ms")
	}
	b.Logf("create -> agent ready p50: container %v (n=%d), cluster %v (n=%d): %.1fx", cp50, len(cont), kp50, len(kube), float64(kp50)/float64(cp50))
}
