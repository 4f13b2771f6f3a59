package server

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestContainerSandboxesEndToEnd drives the production manager with real
// runc sandboxes: 20 concurrent creates, exec and files through the agent,
// stop/start keeping the network, and destroy leaving nothing behind.
func TestContainerSandboxesEndToEnd(t *testing.T) {
	f := newFixture(t)
	srv := f.start(t)

	ids := make([]string, 20)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id, code, b := f.create(t)
			var v struct{ Status string }
			json.Unmarshal(b, &v)
			if code != 201 || v.Status != "running" {
				t.Errorf("create %d: %d %s", i, code, b)
			}
			ids[i] = id
		}(i)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("20 concurrent creates ready in %v", time.Since(start))
	if _, code, b := f.create(t); code != 429 {
		t.Fatalf("21st create: %d %s, want 429", code, b)
	}

	id := ids[0]
	if code, out := f.exec(t, id, "hostname; id -u; exit 7"); code != 7 || !strings.Contains(out, "sandbox-"+id) {
		t.Fatalf("exec: %d %q", code, out)
	}
	// ICMP over a datagram socket: guests have no raw sockets in a
	// network namespace the host owns (busybox's ping needs one).
	f.installProbe(t, id)
	if code, out := f.exec(t, id, "probe ping 172.16.0.1"); code != 0 {
		t.Fatalf("ping gateway before restart: %d %s", code, out)
	}
	if code, b := f.call(t, "PUT", "/api/sandboxes/"+id+"/files?path=/root/keep.txt&parents=true", "kept across restart"); code >= 300 {
		t.Fatalf("write file: %d %s", code, b)
	}
	code, b := f.call(t, "GET", "/api/sandboxes/"+ids[1], "")
	var other struct{ IPAddress string }
	json.Unmarshal(b, &other)
	if code != 200 || other.IPAddress == "" {
		t.Fatalf("get other: %d %s", code, b)
	}
	if code, out := f.exec(t, id, "probe ping "+other.IPAddress); code == 0 || !strings.Contains(out, "timeout") {
		t.Fatalf("ping of another sandbox at %s: %d %s; want a timeout", other.IPAddress, code, out)
	}

	// A terminal over WebSocket through the manager's agent proxy.
	code, b = f.call(t, "POST", "/api/sandboxes/"+id+"/terminals", `{"cmd":["sh"],"cols":80,"rows":24}`)
	var term struct{ ID string }
	json.Unmarshal(b, &term)
	if code >= 300 || term.ID == "" {
		t.Fatalf("create terminal: %d %s", code, b)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	ws, _, err := websocket.Dial(wctx, "ws://atelier/api/sandboxes/"+id+"/terminals/"+term.ID+"/attach",
		&websocket.DialOptions{HTTPClient: f.client()})
	if err != nil {
		t.Fatalf("attach terminal: %v", err)
	}
	if err := ws.Write(wctx, websocket.MessageBinary, []byte("echo in-the-con''tainer\n")); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	for !strings.Contains(seen.String(), "in-the-container") {
		typ, data, err := ws.Read(wctx)
		if err != nil {
			t.Fatalf("read terminal (saw %q): %v", seen.String(), err)
		}
		if typ == websocket.MessageBinary {
			seen.Write(data)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")

	if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
		t.Fatalf("start: %d %s", code, b)
	}
	if code, out := f.exec(t, id, "probe ping 172.16.0.1 && cat /root/keep.txt"); code != 0 || !strings.Contains(out, "kept across restart") {
		t.Fatalf("after restart: %d %s", code, out)
	}
	if code, b := f.call(t, "POST", "/api/system/cleanup", ""); code != 200 || strings.Contains(string(b), ":1") {
		t.Fatalf("cleanup on a healthy host: %d %s", code, b)
	}

	for _, id := range ids {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			if code, b := f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
				t.Errorf("destroy %s: %d %s", id, code, b)
			}
		}(id)
	}
	wg.Wait()
	if leases, err := srv.Store.ListLeases(context.Background()); err != nil || len(leases) != 0 {
		t.Errorf("leases left: %v %v", leases, err)
	}
	if n, _ := srv.Store.CountSandboxes(context.Background()); n != 0 {
		t.Errorf("%d sandbox rows left", n)
	}
	f.assertNoLeaks(t)
}

// TestSoakCreateDestroy runs 200 create/destroy cycles with zero errors and
// checks the manager's heap, goroutines and open files stay flat.
func TestSoakCreateDestroy(t *testing.T) {
	if testing.Short() {
		t.Skip("soak skipped in -short mode")
	}
	f := newFixture(t)
	f.start(t)
	fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	cycles, warm := 200, 20
	if n, err := strconv.Atoi(os.Getenv("ATELIER_SOAK_CYCLES")); err == nil && n > warm {
		cycles = n
	}
	var heap0 uint64
	var gor0, fd0 int
	start := time.Now()
	for i := 0; i < cycles; i++ {
		if i == warm {
			heap0, gor0, fd0 = heap(), runtime.NumGoroutine(), fds()
		}
		id, code, b := f.create(t)
		if code != 201 {
			t.Fatalf("cycle %d: create: %d %s", i, code, b)
		}
		if code, b := f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
			t.Fatalf("cycle %d: destroy: %d %s", i, code, b)
		}
	}
	elapsed := time.Since(start)
	heap1, gor1, fd1 := heap(), runtime.NumGoroutine(), fds()
	t.Logf("%d cycles in %v (%.1f/s); heap %d -> %d KiB, goroutines %d -> %d, fds %d -> %d",
		cycles, elapsed, float64(cycles)/elapsed.Seconds(), heap0>>10, heap1>>10, gor0, gor1, fd0, fd1)
	// Flat: what cycles 20..200 added must not grow with the cycle count.
	if heap1 > heap0+8<<20 {
		t.Errorf("heap grew from %d to %d KiB over %d cycles", heap0>>10, heap1>>10, cycles-warm)
	}
	if gor1 > gor0+10 {
		t.Errorf("goroutines grew from %d to %d", gor0, gor1)
		if os.Getenv("ATELIER_SOAK_DUMP") != "" {
			pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		}
	}
	if fd1 > fd0+10 {
		t.Errorf("open files grew from %d to %d", fd0, fd1)
	}
	f.assertNoLeaks(t)
}

// manager is a manager subprocess (the test binary re-executed).
type manager struct {
	cmd  *exec.Cmd
	done chan error
	// logs is the manager's stderr, for a failure's message.
	logs *syncBuffer
}

func (f *fixture) spawn(t *testing.T, crash string) *manager {
	t.Helper()
	return f.spawnWith(t, nil, envCrash+"="+crash)
}

// spawnWith starts the manager subprocess under the wrap command (e.g.
// nsenter into a namespace; nil: none) with env added to the test's own,
// and waits until it is ready.
func (f *fixture) spawnWith(t *testing.T, wrap []string, env ...string) *manager {
	t.Helper()
	m := f.startProc(t, wrap, env...)
	for i := 0; i < 3000; i++ {
		select {
		case err := <-m.done:
			m.done <- err // for the cleanup's wait
			t.Fatalf("manager exited at start: %v\n%s", err, m.logs.String())
		default:
		}
		if code, _ := f.tryCall("GET", "/health/ready"); code == 200 {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("manager not ready:\n%s", m.logs.String())
	return nil
}

// spawnProc starts a manager process and returns at once: one whose crash
// point comes at start (the pool keeper's first fill) may die before it
// ever answers.
func (f *fixture) spawnProc(t *testing.T, crash string) (*manager, *syncBuffer) {
	t.Helper()
	m := f.startProc(t, nil, envCrash+"="+crash)
	return m, m.logs
}

func (f *fixture) startProc(t *testing.T, wrap []string, env ...string) *manager {
	t.Helper()
	b, err := f.cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	path := f.dir + "/config.json"
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string{}, wrap...), os.Args[0], "-test.run=^$")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), envManager+"="+path, envPrefix+"="+f.prefix), env...)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &manager{cmd: cmd, done: make(chan error, 1), logs: logs}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); err := <-m.done; m.done <- err })
	return m
}

func (f *fixture) tryCall(method, path string) (int, error) {
	req, _ := httpRequest(method, "http://atelier"+path)
	res, err := f.client().Do(req)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

// killedAt waits for the manager to die of its crash point.
func (m *manager) killedAt(t *testing.T, point string) {
	t.Helper()
	select {
	case err := <-m.done:
		m.done <- err
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("manager did not die at %s: %v", point, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("manager never reached crash point %s", point)
	}
}

func (m *manager) stop() {
	m.cmd.Process.Signal(os.Interrupt)
	err := <-m.done
	m.done <- err
}

// TestCrashAtEveryStep kills the manager with SIGKILL at every step of
// create, destroy, stop, start and the browser's start and stop, before and
// after the step acts, restarts it, and checks that one reconciler pass
// leaves nothing leaked and every sandbox in a truthful state from which
// the next operation works. Sandboxes run the image with services.
func TestCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection skipped in -short mode")
	}
	f := newFixture(t)
	f.buildServicesImage(t)
	createSteps := []string{"lease", "volume", "link", "boot", "agent", "services", "git"}
	destroySteps := []string{"runtime", "volume", "link", "lease", "row"}
	for _, step := range createSteps {
		for _, when := range []string{"before", "after"} {
			point := "create:" + step + ":" + when
			t.Run(point, func(t *testing.T) {
				m := f.spawn(t, point)
				// The request dies with the manager.
				go f.tryCreate()
				m.killedAt(t, point)
				m = f.spawn(t, "") // start-up reconcile runs before it serves
				code, b := f.call(t, "GET", "/api/sandboxes", "")
				var list struct {
					Sandboxes []struct{ ID, Status, Error string }
				}
				json.Unmarshal(b, &list)
				if code != 200 || len(list.Sandboxes) != 1 {
					t.Fatalf("after restart: %d %s", code, b)
				}
				sb := list.Sandboxes[0]
				if sb.Status != "error" || !strings.Contains(sb.Error, "interrupted") {
					t.Fatalf("sandbox after a crash in create: %s %q, want error (interrupted)", sb.Status, sb.Error)
				}
				// Nothing of it remains on the host but its row.
				f.assertNoLeaks(t)
				if code, b := f.call(t, "DELETE", "/api/sandboxes/"+sb.ID, ""); code != 204 {
					t.Fatalf("destroy: %d %s", code, b)
				}
				m.stop()
			})
		}
	}
	for _, step := range destroySteps {
		for _, when := range []string{"before", "after"} {
			point := "destroy:" + step + ":" + when
			t.Run(point, func(t *testing.T) {
				m := f.spawn(t, point)
				id, code, b := f.create(t)
				if code != 201 {
					t.Fatalf("create: %d %s", code, b)
				}
				go f.tryCall("DELETE", "/api/sandboxes/"+id)
				m.killedAt(t, point)
				m = f.spawn(t, "")
				code, b = f.call(t, "GET", "/api/sandboxes/"+id, "")
				if code != 404 {
					t.Fatalf("sandbox after a crash in destroy: %d %s, want it gone", code, b)
				}
				f.assertNoLeaks(t)
				m.stop()
			})
		}
	}
	crashServiceSteps(t, f)
	crashPoolSteps(t, f)
	if l := f.leaks(t); len(l) != 0 {
		t.Fatalf("leaked: %v", l)
	}
}

func (f *fixture) tryCreate() {
	req, _ := http.NewRequest("POST", "http://atelier/api/sandboxes", strings.NewReader(`{"image":"`+servicesImage+`"}`))
	req.Header.Set("Content-Type", "application/json")
	res, err := f.client().Do(req)
	if err == nil {
		res.Body.Close()
	}
}
