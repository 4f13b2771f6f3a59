package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/config"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/sandbox"
)

// Environment of a kubernetes-runtime manager subprocess: its config file
// and the address of the test's forwarder into the bed's network namespace
// (the subprocess cannot enter it the way the test process does).
const (
	envKubeManager = "ATELIER_TEST_KUBE_MANAGER"
	envKubeForward = "ATELIER_TEST_KUBE_FORWARD"
)

func init() {
	if path := os.Getenv(envKubeManager); path != "" {
		os.Exit(runKubeTestManager(path, os.Getenv(envKubeForward)))
	}
}

// runKubeTestManager serves until killed, killing itself with SIGKILL at
// the crash point envCrash names.
func runKubeTestManager(path, forward string) int {
	cfg, err := config.Load(config.Options{File: path, Env: []string{}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if cp := os.Getenv(envCrash); cp != "" {
		sandbox.CrashHook = func(op, step, when string) {
			if op+":"+step+":"+when == cp {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	ctx := context.Background()
	opts := Options{
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Kubernetes: func(o *kubernetes.Options) {
			o.Dial = forwardDialer(forward)
			o.PodTimeout = 2 * time.Minute
			o.Poll = 20 * time.Millisecond
		},
	}
	// A replica of a failover test: a short lease, frequent passes.
	if s := os.Getenv(envReplicaTTL); s != "" {
		if opts.LeaderTTL, err = time.ParseDuration(s); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		opts.ReconcileEvery = kubeReconcileEvery
	}
	srv, err := New(ctx, cfg, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Listen(false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// forwardDialer dials through the test's forwarder: it sends the address on
// a line and reads one byte, '1' once the forwarder's dial succeeded.
func forwardDialer(forward string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", forward)
		if err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		b := make([]byte, 1)
		if _, err := io.WriteString(c, addr+"\n"); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != '1' {
			c.Close()
			return nil, fmt.Errorf("dial %s through the forwarder: refused", addr)
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
}

// forwarder serves forwardDialer's requests from the test process, which
// dials inside the bed's namespace.
func (e *kubeEnv) forwarder(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				c.SetReadDeadline(time.Time{})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				up, err := e.c.DialContext(ctx, "tcp", strings.TrimSpace(line))
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				if _, err := c.Write([]byte{'1'}); err != nil {
					return
				}
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return l.Addr().String()
}

// spawn starts a manager subprocess that dies at crash, and returns once it
// serves.
func (e *kubeEnv) spawn(t *testing.T, forward, crash string) *manager {
	t.Helper()
	b, err := e.f.cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	path := e.f.dir + "/config.json"
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envKubeManager+"="+path, envKubeForward+"="+forward, envCrash+"="+crash)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &manager{cmd: cmd, done: make(chan error, 1), logs: logs}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); err := <-m.done; m.done <- err })
	for i := 0; i < 3000; i++ {
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("manager exited at start: %v\n%s", err, logs.String())
		default:
		}
		if code, _ := e.f.tryCall("GET", "/health/ready"); code == 200 {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("manager not ready:\n%s", logs.String())
	return nil
}

// TestKubernetesCrashConverges kills a manager on the real cluster with
// SIGKILL at steps of create and destroy where cluster objects exist
// half-made (a filled disk with no Pod, a running Pod whose agent was not
// yet reached, a Pod deleted with its disk kept), restarts it, and checks
// that the sandbox is truthful and destroy then leaves no object labelled
// with its id.
func TestKubernetesCrashConverges(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection skipped in -short mode")
	}
	e := newKubeEnv(t)
	forward := e.forwarder(t)
	gone := func(id string) {
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
	status := func(id string) (int, string) {
		t.Helper()
		code, b := e.f.call(t, "GET", "/api/sandboxes/"+id, "")
		var v struct{ Status string }
		json.Unmarshal(b, &v)
		return code, v.Status
	}
	for _, point := range []string{"create:volume:after", "create:boot:after"} {
		t.Run(point, func(t *testing.T) {
			e.addVolume(t)
			m := e.spawn(t, forward, point)
			// The create never answers: its manager dies under it.
			req, _ := http.NewRequest("POST", "http://atelier/api/sandboxes", strings.NewReader(`{"vcpus":1,"memoryMb":512}`))
			req.Header.Set("Content-Type", "application/json")
			go func() {
				if res, err := e.f.client().Do(req); err == nil {
					res.Body.Close()
				}
			}()
			m.killedAt(t, point)
			_, stop := e.start(t)
			defer stop()
			code, b := e.f.call(t, "GET", "/api/sandboxes", "")
			var list struct {
				Sandboxes []struct{ ID, Status, Error string }
			}
			if code != 200 || json.Unmarshal(b, &list) != nil || len(list.Sandboxes) != 1 {
				t.Fatalf("sandboxes after restart: %d %s", code, b)
			}
			sb := list.Sandboxes[0]
			id := sb.ID
			if sb.Status != "error" && sb.Status != "running" {
				t.Fatalf("%s after restart: %s", id, sb.Status)
			}
			t.Logf("%s after a crash at %s: %s (%s)", id, point, sb.Status, sb.Error)
			// The sandbox's next operation works: a start reaches its agent
			// on the disk the killed create left.
			if sb.Status == "error" {
				// The interrupted create's disk went with its undo; the bed
				// has no provisioner, so the new claim needs a new volume.
				e.addVolume(t)
				if code, b := e.f.call(t, "POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
					t.Fatalf("start after the crash: %d %s", code, b)
				}
			}
			if code, out := e.f.exec(t, id, "cat /etc/os-release"); code != 0 || !strings.Contains(out, "Atelier test image") {
				t.Fatalf("exec after the crash: %d %q", code, out)
			}
			if code, b := e.f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != http.StatusNoContent {
				t.Fatalf("destroy: %d %s", code, b)
			}
			gone(id)
		})
	}
	for _, point := range []string{"destroy:runtime:after", "destroy:volume:before"} {
		t.Run(point, func(t *testing.T) {
			e.addVolume(t)
			_, stop := e.start(t)
			code, b := e.f.call(t, "POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
			var v struct{ ID string }
			if json.Unmarshal(b, &v); code != http.StatusCreated {
				t.Fatalf("create: %d %s", code, b)
			}
			stop()
			m := e.spawn(t, forward, point)
			go e.f.tryCall("DELETE", "/api/sandboxes/"+v.ID)
			m.killedAt(t, point)
			_, stop = e.start(t)
			defer stop()
			if code, st := status(v.ID); code == 200 {
				t.Logf("%s after a crash at %s: %s", v.ID, point, st)
				if code, b := e.f.call(t, "DELETE", "/api/sandboxes/"+v.ID, ""); code != http.StatusNoContent {
					t.Fatalf("destroy again: %d %s", code, b)
				}
			} else if code != http.StatusNotFound {
				t.Fatalf("get after restart: %d", code)
			}
			gone(v.ID)
		})
	}
}
