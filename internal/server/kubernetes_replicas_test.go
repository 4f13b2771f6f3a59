package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/config"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// kubeReconcileEvery is the reconciler period of the failover test's
// replicas: a survivor's pass finds the dead leader's row soon after it
// went stale, while each pass (a list of the namespace's objects) stays
// cheap for the bed's API server.
const kubeReconcileEvery = 250 * time.Millisecond

// replicaConfig is one replica's config on the bed: the kubeEnv's,
// sharing its Postgres store, secrets key, JWT secret and agent CA, with
// its own ports, socket and directories.
func (e *kubeEnv) replicaConfig(t *testing.T, name string) *config.Config {
	t.Helper()
	c := *e.f.cfg
	dir := filepath.Join(e.f.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c.Server.Port = freePort(t)
	c.Domain.HTTPPort, c.Domain.HTTPSPort = freePort(t), freePort(t)
	c.Domain.SSH.Port = freePort(t)
	c.Server.DataDir = filepath.Join(dir, "data")
	c.Server.SocketPath = filepath.Join(dir, "s.sock")
	c.Sandbox.StateDir = filepath.Join(dir, "state")
	c.Sandbox.LogDir = filepath.Join(dir, "log")
	c.Advanced.Server.Verdaccio.Dir = filepath.Join(dir, "registry")
	return &c
}

// spawnReplica starts a replica subprocess (it reaches Pod IPs through
// forward) that SIGKILLs itself at crash, leads with a lease of ttl, and
// returns once it serves.
func (e *kubeEnv) spawnReplica(t *testing.T, cfg *config.Config, forward, crash string, ttl time.Duration) *manager {
	t.Helper()
	b, err := cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(cfg.Server.DataDir), "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envKubeManager+"="+path, envKubeForward+"="+forward, envCrash+"="+crash,
		envReplicaTTL+"="+ttl.String())
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &manager{cmd: cmd, done: make(chan error, 1), logs: logs}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		err := <-m.done
		m.done <- err
		if t.Failed() {
			t.Logf("replica (crash at %s) log:\n%s", crash, logs.String())
		}
	})
	c := unixClient(cfg.Server.SocketPath)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("replica exited at start: %v\n%s", err, logs.String())
		default:
		}
		if code, _ := callC(c, "GET", "/health/ready", ""); code == 200 {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica not ready:\n%s", logs.String())
		}
	}
}

// startReplica runs a replica in this process (it dials Pod IPs in the
// bed's namespace) until stop or the test's end; stop releases its Lease.
func (e *kubeEnv) startReplica(t *testing.T, cfg *config.Config, ttl time.Duration, log io.Writer) (*Server, *http.Client, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, Options{
		Log:            slog.New(slog.NewTextHandler(log, nil)),
		LeaderTTL:      ttl,
		ReconcileEvery: kubeReconcileEvery,
		Kubernetes:     e.dialInBed,
	})
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
	stopped := false
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
		case <-time.After(time.Minute):
			t.Error("in-process replica did not stop")
		}
	}
	t.Cleanup(stop)
	c := unixClient(cfg.Server.SocketPath)
	waitFor(t, time.Minute, "in-process replica ready", func() bool {
		code, _ := callC(c, "GET", "/health/ready", "")
		return code == 200
	})
	return srv, c, stop
}

// execOS runs cat /etc/os-release in sandbox id through the replica behind
// c and checks it ran in the test image.
func execOS(t *testing.T, c *http.Client, id string) {
	t.Helper()
	code, b := callC(c, "POST", "/api/sandboxes/"+id+"/exec", `{"argv":["cat","/etc/os-release"],"timeoutMs":20000}`)
	var r struct {
		ExitCode int
		Stdout   string
	}
	if json.Unmarshal(b, &r); code != 200 || r.ExitCode != 0 || !strings.Contains(r.Stdout, "Atelier test image") {
		t.Fatalf("exec in %s: %d %s", id, code, b)
	}
}

// leaseHolder is who holds the leader's Kubernetes Lease on the bed ("" for
// nobody).
func (e *kubeEnv) leaseHolder(t *testing.T) string {
	t.Helper()
	l, err := e.c.Clientset().CoordinationV1().Leases(e.ns).Get(context.Background(), leaseName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// TestKubernetesReplicasFailover runs manager replicas with
// sandbox.runtime kubernetes on one Postgres store, sharing the agent CA
// and the secrets key, leading through the real Kubernetes Lease on the
// bed. The leader, a subprocess, is SIGKILLed mid-create (after the volume
// step: a filled disk and no Pod; after the boot step: a running Pod whose
// agent was never reached) and mid-destroy (the Pod gone, the disk kept).
// The survivor, in process, takes the Lease once it expired, adopts the
// create (the sandbox ends running and exec works through the survivor) or
// finishes the destroy, and an SSE client connected to the survivor before
// the kill sees the outcome. A create whose adopter, a second subprocess,
// died too is reverted per its journal (adopted once already). Nothing
// labelled with the id remains and no journal step stays open.
func TestKubernetesReplicasFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection skipped in -short mode")
	}
	// Whole seconds (a Lease's duration); short for a quick takeover, long
	// enough that a renewal on the loaded bed does not lapse.
	const ttl = 3 * time.Second
	url := testenv.PostgresDB(t)
	e := newKubeEnv(t)
	e.f.cfg.Advanced.Server.Database.URL = url
	e.f.cfg.Advanced.Server.SecretsKeyFile = filepath.Join(e.f.dir, "secrets.key")
	writeKey(t, e.f.cfg.Advanced.Server.SecretsKeyFile)
	// The CA the victim issued its Pod's certificate from is the one the
	// survivor must trust: the replicas share it (a mounted Secret in the
	// manifests).
	e.f.cfg.Sandbox.Kubernetes.CADir = filepath.Join(e.f.dir, "agent-ca")
	forward := e.forwarder(t)
	ctx := context.Background()

	gone := func(t *testing.T, id string) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			pods, claims, secrets, policies := e.objects(t, id)
			if pods+claims+secrets+policies == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d pods, %d claims, %d secrets, %d policies left", id, pods, claims, secrets, policies)
			}
		}
	}
	cases := []struct {
		point string
		// adopter, when set, is a second subprocess that takes the Lease
		// first and dies at this point too.
		adopter string
		want    string // running, error or deleted
	}{
		{point: "create:volume:after", want: "running"},
		{point: "create:boot:after", want: "running"},
		{point: "create:boot:after", adopter: "create:adopt:after", want: "error"},
		{point: "destroy:runtime:after", want: "deleted"},
	}
	last := "" // the last case's survivor, which released the Lease as it stopped
	for i, tc := range cases {
		name := tc.point
		if tc.adopter != "" {
			name += "+" + tc.adopter
		}
		t.Run(name, func(t *testing.T) {
			create := strings.HasPrefix(tc.point, "create:")
			// The victim's disk, and the adopter's: the adopt step deletes
			// the victim's claim, whose volume is then Released (Retain).
			e.addVolume(t)
			if create {
				e.addVolume(t)
			}
			vcfg := e.replicaConfig(t, fmt.Sprintf("v%d", i))
			v := e.spawnReplica(t, vcfg, forward, tc.point, ttl)
			vc := unixClient(vcfg.Server.SocketPath)
			waitFor(t, time.Minute, "the victim leads", func() bool { h := e.leaseHolder(t); return h != "" && h != last })
			victim := e.leaseHolder(t)
			var w *manager
			if tc.adopter != "" {
				w = e.spawnReplica(t, e.replicaConfig(t, fmt.Sprintf("a%d", i)), forward, tc.adopter, ttl)
			}

			var (
				s      *Server
				sc     *http.Client
				events <-chan sseEvent
			)
			logs := &syncBuffer{}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("survivor log:\n%s", logs.String())
				}
			})
			survivor := func() {
				var stop func()
				s, sc, stop = e.startReplica(t, e.replicaConfig(t, fmt.Sprintf("s%d", i)), ttl, logs)
				t.Cleanup(stop)
				last = s.ReplicaID()
				events = sse(t, sc)
			}
			// The adopter, alone beside the victim, is the one to take
			// over; the survivor starts once the adopter is dead too.
			if w == nil {
				survivor()
				if s.Leading() || e.leaseHolder(t) != victim {
					t.Fatalf("the survivor leads (Lease held by %q) while the victim %s holds the Lease", e.leaseHolder(t), victim)
				}
			}

			var id string
			if create {
				id = sandboxID(t, mustCall(t, vc, "POST", "/api/sandboxes?wait=false", `{"vcpus":1,"memoryMb":512}`, http.StatusAccepted))
			} else {
				id = sandboxID(t, mustCall(t, vc, "POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`, http.StatusCreated))
				// Every replica serves every sandbox: the survivor reaches
				// the Pod the victim booted, its certificate from the
				// shared CA.
				execOS(t, sc, id)
				go callC(vc, "DELETE", "/api/sandboxes/"+id, "")
			}
			v.killedAt(t, tc.point)
			died := time.Now()
			if w != nil {
				w.killedAt(t, tc.adopter)
				died = time.Now()
				survivor()
			}
			// When the Lease names the survivor, read beside the wait for
			// the outcome.
			leased := make(chan time.Duration, 1)
			lctx, lcancel := context.WithCancel(ctx)
			defer lcancel()
			go func() {
				for lctx.Err() == nil {
					if e.leaseHolder(t) == s.ReplicaID() {
						leased <- time.Since(died)
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}()
			match := func(ev sseEvent) bool { return ev.id == id && ev.st == tc.want }
			if tc.want == "deleted" {
				match = func(ev sseEvent) bool { return ev.id == id && ev.typ == "sandbox.deleted" }
			}
			expectEvent(t, events, 3*time.Minute, match, "the survivor's SSE client sees "+tc.want)
			took := time.Since(died)
			if !s.Leading() {
				t.Error("the survivor does not lead")
			}
			if h := e.leaseHolder(t); h != s.ReplicaID() {
				t.Errorf("the Lease names %q, want the survivor %s", h, s.ReplicaID())
			}
			var lease time.Duration
			select {
			case lease = <-leased:
			case <-time.After(time.Second):
			}
			kill := "the kill"
			if w != nil {
				kill = "the adopter's kill"
			}
			t.Logf("leader %s killed at %s: the survivor %s took the Lease %s after %s, its SSE client saw %s %s after it (lease %s)",
				victim, name, s.ReplicaID(), lease.Round(time.Millisecond), kill, tc.want, took.Round(time.Millisecond), ttl)

			switch tc.want {
			case "running":
				// The Pod the survivor booted answers it, over mutual TLS
				// with a certificate of the shared CA.
				execOS(t, sc, id)
				ops, err := s.Store.ListOps(ctx, id)
				if err != nil || !hasStep(ops, "adopt", store.OpDone) {
					t.Errorf("no adopt step in the journal (%v): %+v", err, ops)
				}
			case "error":
				// Reverted, not adopted again: the create's undo left no
				// object of it.
				sb, err := s.Store.GetSandbox(ctx, id)
				if err != nil || !strings.Contains(sb.Error, "interrupted") {
					t.Fatalf("reverted create: %+v %v", sb, err)
				}
				gone(t, id)
			}
			if create {
				mustCall(t, sc, "DELETE", "/api/sandboxes/"+id, "", http.StatusNoContent)
			}
			gone(t, id)
			if _, err := s.Store.GetSandbox(ctx, id); err == nil {
				t.Error("the row remains")
			}
			waitFor(t, 5*ttl, "no open journal step", func() bool {
				ops, _ := s.Store.OpenOps(ctx)
				for _, o := range ops {
					if o.SandboxID == id {
						return false
					}
				}
				return true
			})
		})
	}
}
