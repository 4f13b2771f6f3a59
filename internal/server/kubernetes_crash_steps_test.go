package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The journaled steps the kubernetes runtime's create and destroy run for a
// sandbox of the test image (no workspace, so no workspace steps): link is
// the runtime's no-op host link and hooks the server's, both journaled all
// the same. The test fails if a manager passes a step not listed here.
var (
	kubeCrashCreateSteps  = []string{"lease", "volume", "link", "boot", "agent", "services", "git", "config-files", "hooks"}
	kubeCrashDestroySteps = []string{"runtime", "volume", "link", "lease", "hooks", "row"}
)

// kubeCrashStartAfter are the create points whose sandbox is started again
// after the restart (the others are destroyed): the disk was filled, the Pod
// ran, and every step was done.
var kubeCrashStartAfter = map[string]bool{
	"create:volume:after": true, "create:boot:after": true, "create:hooks:after": true,
}

// kubeCrashParallel is how many crash points run at once on the one bed,
// each with its own namespace, data dir and manager processes.
const kubeCrashParallel = 6

var crashReached = regexp.MustCompile(`(?m)^crash point passed: (\S+)$`)

// TestKubernetesCrashAtEveryStep kills a manager on the real cluster with
// SIGKILL before and after every journaled step of create and destroy,
// restarts it, and checks that its start-up reconcile leaves the sandbox
// truthful: an interrupted create is in error ("interrupted") with no Pod,
// claim, Secret or NetworkPolicy labelled with its id, and a start or a
// destroy then works; an interrupted destroy is finished (404, nothing
// left). The points run in parallel on one bed, each with a manager and
// namespace of its own.
func TestKubernetesCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection skipped in -short mode")
	}
	begin := time.Now()
	e := newKubeEnv(t)
	forward := e.forwarder(t)
	t.Logf("bed, image and forwarder ready in %v", time.Since(begin).Round(time.Millisecond))

	// Destroy points first: each runs a whole create before its crash.
	var points []string
	for _, step := range kubeCrashDestroySteps {
		points = append(points, "destroy:"+step+":before", "destroy:"+step+":after")
	}
	for _, step := range kubeCrashCreateSteps {
		points = append(points, "create:"+step+":before", "create:"+step+":after")
	}
	var (
		mu      sync.Mutex
		reached = map[string]bool{}
		took    = map[string]time.Duration{}
		wg      sync.WaitGroup
		sem     = make(chan struct{}, kubeCrashParallel)
	)
	record := func(logs string) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range crashReached.FindAllStringSubmatch(logs, -1) {
			reached[m[1]] = true
		}
	}
	runs := time.Now()
	for _, point := range points {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t.Run(point, func(t *testing.T) {
				pb := time.Now()
				pe := e.pointEnv(t)
				if strings.HasPrefix(point, "create:") {
					pe.crashCreate(t, forward, point, record)
				} else {
					pe.crashDestroy(t, forward, point, record)
				}
				d := time.Since(pb)
				mu.Lock()
				took[point] = d
				mu.Unlock()
				t.Logf("%s converged in %v", point, d.Round(time.Millisecond))
			})
		}()
	}
	wg.Wait()
	var lines []string
	for _, p := range points {
		lines = append(lines, fmt.Sprintf("%s %.1fs", p, took[p].Seconds()))
	}
	t.Logf("%d crash points in %v (%d at once); per point: %s", len(points), time.Since(runs).Round(time.Second),
		kubeCrashParallel, strings.Join(lines, ", "))
	if t.Failed() {
		return
	}
	// Every step a manager passed has its points: none was left out.
	var missed []string
	for p := range reached {
		if !slices.Contains(points, p) {
			missed = append(missed, p)
		}
	}
	if len(missed) > 0 {
		slices.Sort(missed)
		t.Fatalf("steps a manager passed that no crash point covers: %v", missed)
	}
}

// pointEnv is a manager environment of its own on e's bed: a namespace,
// a data dir, ports, and a storage class so its claims bind only the
// volumes it made.
func (e *kubeEnv) pointEnv(t *testing.T) *kubeEnv {
	t.Helper()
	pe := &kubeEnv{c: e.c, ns: e.c.Namespace(t)}
	// After the namespace: runs before its deletion (see newKubeEnv).
	t.Cleanup(func() {
		pe.mu.Lock()
		defer pe.mu.Unlock()
		for _, pv := range pe.pvs {
			err := e.c.Clientset().CoreV1().PersistentVolumes().Delete(context.Background(), pv, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete %s: %v", pv, err)
			}
		}
	})
	// Short: the manager's unix socket path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "atlk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := *e.f.cfg
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = filepath.Join(dir, "data")
	cfg.Advanced.Server.Verdaccio.Dir = filepath.Join(dir, "registry")
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "s")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	cfg.Sandbox.Kubernetes.Namespace = pe.ns
	cfg.Sandbox.Kubernetes.StorageClass = kubeStorageClass + "-" + pe.ns
	pe.f = &fixture{dir: dir, cfg: &cfg, uc: unixClient(cfg.Server.SocketPath)}
	return pe
}

// diedAt waits for the manager to die of SIGKILL at its crash point, and
// checks in its log that the point was the last it reached; the crash
// managers' logs go to record.
func (m *manager) diedAt(t *testing.T, point string, record func(string)) {
	t.Helper()
	select {
	case err := <-m.done:
		m.done <- err
		logs := m.logs.String()
		record(logs)
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("manager did not die at %s: %v\n%s", point, err, logs)
		}
		all := crashReached.FindAllStringSubmatch(logs, -1)
		if len(all) == 0 || all[len(all)-1][1] != point {
			t.Fatalf("manager killed, but not at %s:\n%s", point, logs)
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("manager never reached crash point %s:\n%s", point, m.logs.String())
	}
}

// crashCreate kills a manager at a create point, restarts it, and checks
// that the create was undone and the sandbox's next operation works.
func (e *kubeEnv) crashCreate(t *testing.T, forward, point string, record func(string)) {
	e.addVolume(t)
	m := e.spawn(t, forward, point)
	// The create never answers: its manager dies under it.
	go func() {
		req, _ := http.NewRequest("POST", "http://atelier/api/sandboxes", strings.NewReader(`{"vcpus":1,"memoryMb":512}`))
		req.Header.Set("Content-Type", "application/json")
		if res, err := e.f.client().Do(req); err == nil {
			res.Body.Close()
		}
	}()
	m.diedAt(t, point, record)
	e.spawn(t, forward, "") // its start-up reconcile runs before it serves
	code, b := e.f.call(t, "GET", "/api/sandboxes", "")
	var list struct {
		Sandboxes []struct{ ID, Status, Error string }
	}
	if code != 200 || json.Unmarshal(b, &list) != nil || len(list.Sandboxes) != 1 {
		t.Fatalf("sandboxes after restart: %d %s", code, b)
	}
	sb := list.Sandboxes[0]
	// A single manager's reconcile undoes a create whose caller died with
	// it (only a replica on a shared store adopts one).
	if sb.Status != "error" || !strings.Contains(sb.Error, "interrupted") {
		t.Fatalf("%s after a crash at %s: %s %q, want error (interrupted)", sb.ID, point, sb.Status, sb.Error)
	}
	e.noObjects(t, sb.ID, "after the restart")
	if kubeCrashStartAfter[point] {
		// The undo deleted the claim; its volume is Released (Retain) and
		// the bed has no provisioner, so the new claim needs a new volume.
		e.addVolume(t)
		if code, b := e.f.call(t, "POST", "/api/sandboxes/"+sb.ID+"/start", ""); code != 200 {
			t.Fatalf("start after the crash: %d %s", code, b)
		}
		if code, out := e.f.exec(t, sb.ID, "cat /etc/os-release"); code != 0 || !strings.Contains(out, "Atelier test image") {
			t.Fatalf("exec after the crash: %d %q", code, out)
		}
	}
	if code, b := e.f.call(t, "DELETE", "/api/sandboxes/"+sb.ID, ""); code != http.StatusNoContent {
		t.Fatalf("destroy after the crash: %d %s", code, b)
	}
	if code, b := e.f.call(t, "GET", "/api/sandboxes/"+sb.ID, ""); code != http.StatusNotFound {
		t.Fatalf("after destroy: %d %s", code, b)
	}
	e.noObjects(t, sb.ID, "after destroy")
}

// crashDestroy creates a sandbox, kills its manager at a destroy point,
// and checks that the restarted manager finished the destroy.
func (e *kubeEnv) crashDestroy(t *testing.T, forward, point string, record func(string)) {
	e.addVolume(t)
	m := e.spawn(t, forward, point)
	code, b := e.f.call(t, "POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
	var v struct{ ID, Status string }
	if json.Unmarshal(b, &v); code != http.StatusCreated || v.Status != "running" {
		t.Fatalf("create: %d %s", code, b)
	}
	go e.f.tryCall("DELETE", "/api/sandboxes/"+v.ID)
	m.diedAt(t, point, record)
	e.spawn(t, forward, "")
	if code, b := e.f.call(t, "GET", "/api/sandboxes/"+v.ID, ""); code != http.StatusNotFound {
		t.Fatalf("%s after a crash at %s: %d %s, want it gone", v.ID, point, code, b)
	}
	e.noObjects(t, v.ID, "after the restart")
}

// noObjects waits until no object labelled with id is left: a deleted
// claim goes once no Pod holds it.
func (e *kubeEnv) noObjects(t *testing.T, id, when string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		pods, claims, secrets, policies := e.objects(t, id)
		if pods+claims+secrets+policies == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: %d pods, %d claims, %d secrets, %d policies left", id, when, pods, claims, secrets, policies)
		}
	}
}
