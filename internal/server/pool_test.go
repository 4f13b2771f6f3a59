package server

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"atelier/internal/config"
)

type poolRow struct {
	ID, OwnerID, Status, Error string
	Pooled                     bool
	Services                   []svcState
}

// listAll is the admin's list (the unix socket is an admin).
func (f *fixture) listAll(t testing.TB) []poolRow {
	t.Helper()
	code, b := f.call(t, "GET", "/api/sandboxes", "")
	var l struct{ Sandboxes []poolRow }
	if code != 200 || json.Unmarshal(b, &l) != nil {
		t.Fatalf("list: %d %s", code, b)
	}
	return l.Sandboxes
}

// awaitPooled waits until the host holds exactly one pooled sandbox,
// running, and nothing else but keep.
func (f *fixture) awaitPooled(t testing.TB, keep ...string) string {
	t.Helper()
	var id string
	until(t, 60*time.Second, "one pooled sandbox running", func() bool {
		id = ""
		n := 0
		for _, r := range f.listAll(t) {
			switch {
			case r.Pooled && r.Status == "running":
				id = r.ID
				n++
			case !strings.Contains(strings.Join(keep, " "), r.ID) || r.ID == "":
				return false
			}
		}
		return n == 1
	})
	return id
}

// usePool makes the services image the default and keeps n pooled.
func (f *fixture) usePool(t testing.TB, n int) {
	t.Helper()
	f.cfg.Sandbox.DefaultImage = servicesImage
	f.cfg.Sandbox.DefaultVcpus, f.cfg.Sandbox.DefaultMemoryMB = 1, 512
	f.cfg.Sandbox.Pool.Size = n
}

// TestPoolContainer runs the warm pool on the container runtime: the
// keeper boots a sandbox for no one with its services ready; a create of
// the default shape gets that very sandbox, running as its owner's; the
// keeper boots a replacement; removing the image retires the pool; a
// manager restarted with the pool off retires what is left, leaving
// nothing on the host.
func TestPoolContainer(t *testing.T) {
	f := newFixture(t)
	f.buildServicesImage(t)
	f.usePool(t, 1)
	_, stop := f.startWith(t, nil)
	id := f.awaitPooled(t)
	if v := f.sandboxView(t, id); !serviceNamed(v, "vscode").Ready {
		t.Fatalf("pooled sandbox's editor not ready: %+v", v)
	}

	code, b := f.call(t, "POST", "/api/sandboxes", `{"name":"warm"}`)
	var v poolRow
	if json.Unmarshal(b, &v); code != http.StatusCreated || v.ID != id || v.Pooled || v.OwnerID != "local" {
		t.Fatalf("create: %d %s, want the pooled %s as local's", code, b, id)
	}
	until(t, 30*time.Second, "claimed sandbox running", func() bool { return f.sandboxView(t, id).Status == "running" })
	if code, out := f.exec(t, id, "id -un; cat /proc/1/comm"); code != 0 {
		t.Fatalf("exec in the claimed sandbox: %d %s", code, out)
	}
	next := f.awaitPooled(t, id)
	if next == id {
		t.Fatal("the claimed sandbox is pooled again")
	}
	// Another shape boots as before, beside the pool.
	code, b = f.call(t, "POST", "/api/sandboxes", `{"vcpus":2,"memoryMb":512}`)
	var o poolRow
	json.Unmarshal(b, &o)
	other := o.ID
	if code != http.StatusCreated || other == next {
		t.Fatalf("create of another shape: %d %s", code, b)
	}
	for _, x := range []string{id, other} {
		if code, b := f.call(t, "DELETE", "/api/sandboxes/"+x, ""); code != 204 {
			t.Fatalf("destroy %s: %d %s", x, code, b)
		}
	}
	// Removing the image gives up its pool (no user has those sandboxes),
	// and the keeper boots none from it meanwhile.
	if code, b := f.call(t, "DELETE", "/api/images/"+servicesImage, ""); code != 204 {
		t.Fatalf("remove the pool's image: %d %s", code, b)
	}
	time.Sleep(300 * time.Millisecond)
	if l := f.listAll(t); len(l) != 0 {
		t.Fatalf("sandboxes after the image's removal: %+v", l)
	}
	f.assertNoLeaks(t)
	stop()
	f.cfg.Sandbox.Pool.Size = 0
	f.start(t)
	until(t, 30*time.Second, "pool retired", func() bool { return len(f.listAll(t)) == 0 })
	f.assertNoLeaks(t)
}

// crashPoolSteps kills the manager at every step of a pool fill and of a
// claim, before and after it acts. After a crash in a fill the next
// manager settles the row and its keeper retires it and boots another; a
// crash in a claim leaves the owner's sandbox in error (interrupted),
// holding nothing, as a crashed create does; nothing leaks.
func crashPoolSteps(t *testing.T, f *fixture) {
	defer func(img string, cpu, mem, n int) {
		f.cfg.Sandbox.DefaultImage, f.cfg.Sandbox.DefaultVcpus, f.cfg.Sandbox.DefaultMemoryMB, f.cfg.Sandbox.Pool.Size = img, cpu, mem, n
	}(f.cfg.Sandbox.DefaultImage, f.cfg.Sandbox.DefaultVcpus, f.cfg.Sandbox.DefaultMemoryMB, f.cfg.Sandbox.Pool.Size)
	retire := func(t *testing.T) {
		t.Helper()
		f.cfg.Sandbox.Pool.Size = 0
		m := f.spawn(t, "")
		until(t, 30*time.Second, "pool retired", func() bool {
			for _, r := range f.listAll(t) {
				if r.Pooled {
					return false
				}
			}
			return true
		})
		for _, r := range f.listAll(t) {
			if code, b := f.call(t, "DELETE", "/api/sandboxes/"+r.ID, ""); code != 204 {
				t.Fatalf("destroy %s: %d %s\n%s", r.ID, code, b, m.logs.String())
			}
		}
		f.assertNoLeaks(t)
		m.stop()
	}
	for _, step := range []string{"lease", "volume", "link", "boot", "agent", "services", "ready"} {
		for _, when := range []string{"before", "after"} {
			point := "pool-fill:" + step + ":" + when
			t.Run(point, func(t *testing.T) {
				// Retired even when the subtest fails, after its managers
				// are killed (cleanups run last-registered first), so one
				// failure cannot leave a pool that the next points inherit.
				t.Cleanup(func() { retire(t) })
				f.usePool(t, 1)
				m, _ := f.spawnProc(t, point)
				m.killedAt(t, point)
				m = f.spawn(t, "")
				// The interrupted fill is retired, a new one is ready,
				// and a create claims it.
				id := f.awaitPooled(t)
				code, b := f.call(t, "POST", "/api/sandboxes", `{}`)
				var v poolRow
				if json.Unmarshal(b, &v); code != http.StatusCreated || v.ID != id {
					t.Fatalf("create after the restart: %d %s, want the pooled %s\n%s", code, b, id, m.logs.String())
				}
				until(t, 30*time.Second, "claimed sandbox running", func() bool { return f.sandboxView(t, id).Status == "running" })
				m.stop()
			})
		}
	}
	for _, step := range []string{"git", "config-files"} {
		for _, when := range []string{"before", "after"} {
			point := "claim:" + step + ":" + when
			t.Run(point, func(t *testing.T) {
				t.Cleanup(func() { retire(t) })
				f.usePool(t, 1)
				m := f.spawn(t, point)
				id := f.awaitPooled(t)
				go f.tryCreate()
				m.killedAt(t, point)
				f.cfg.Sandbox.Pool.Size = 0
				m = f.spawn(t, "")
				code, b := f.call(t, "GET", "/api/sandboxes/"+id, "")
				var v poolRow
				json.Unmarshal(b, &v)
				if code != 200 || v.Status != "error" || v.Pooled || v.OwnerID != "local" || !strings.Contains(v.Error, "interrupted") {
					t.Fatalf("claimed sandbox after a crash in its claim: %d %s, want its owner's, error (interrupted)", code, b)
				}
				m.stop()
			})
		}
	}
}

// TestPoolMock runs the warm pool in mock mode (the agent as a local
// process): a plain create and a workspace's create each claim the pooled
// sandbox, and the claim pushes their owner's state (the global and the
// workspace's config files) exactly as a booted create would.
func TestPoolMock(t *testing.T) {
	dir, err := os.MkdirTemp("", "atlpool")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, func(c *config.Config) { c.Sandbox.Pool.Size = 1 })
	call := jsonCaller(t, "http://"+srv.Addr(), 60*time.Second)
	var made []string
	t.Cleanup(func() {
		for _, id := range made {
			call("DELETE", "/api/sandboxes/"+id, nil)
		}
		stop()
		// A shutdown leaves the pool's sandboxes running for the next start
		// to adopt: restart with the pool off, which retires them, so no
		// agent outlives the test.
		srv, stop := startMockManager(t, dir, nil)
		defer stop()
		call := jsonCaller(t, "http://"+srv.Addr(), 60*time.Second)
		until(t, 30*time.Second, "pool retired", func() bool {
			code, b := call("GET", "/api/sandboxes", nil)
			var l struct{ Sandboxes []poolRow }
			return code == 200 && json.Unmarshal(b, &l) == nil && len(l.Sandboxes) == 0
		})
	})
	must := func(want int, method, path string, body any) []byte {
		t.Helper()
		code, b := call(method, path, body)
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
		}
		return b
	}
	pooled := func() string {
		t.Helper()
		var id string
		until(t, 30*time.Second, "a pooled sandbox", func() bool {
			var l struct{ Sandboxes []poolRow }
			json.Unmarshal(must(200, "GET", "/api/sandboxes", nil), &l)
			for _, r := range l.Sandboxes {
				if r.Pooled && r.Status == "running" {
					id = r.ID
					return true
				}
			}
			return false
		})
		return id
	}
	must(200, "PUT", "/api/config-files", map[string]any{"files": []any{map[string]any{"path": "~/.motd", "content": "global\n"}}})
	var ws struct{ ID string }
	json.Unmarshal(must(201, "POST", "/api/workspaces", map[string]any{"name": "warm"}), &ws)
	must(200, "PUT", "/api/workspaces/"+ws.ID+"/config-files", map[string]any{"files": []any{map[string]any{"path": "~/.motd", "content": "workspace\n"}}})

	for _, c := range []struct {
		body map[string]any
		want string
	}{
		{map[string]any{}, "global\n"},
		{map[string]any{"workspaceId": ws.ID}, "workspace\n"},
	} {
		id := pooled()
		var sb poolRow
		json.Unmarshal(must(201, "POST", "/api/sandboxes", c.body), &sb)
		made = append(made, sb.ID)
		if sb.ID != id {
			t.Fatalf("create %v got %s, want the pooled %s", c.body, sb.ID, id)
		}
		until(t, 30*time.Second, "claimed sandbox running", func() bool {
			var v poolRow
			json.Unmarshal(must(200, "GET", "/api/sandboxes/"+id, nil), &v)
			return v.Status == "running"
		})
		b := must(200, "POST", "/api/sandboxes/"+id+"/exec", map[string]any{"argv": []string{"cat", ".motd"}, "timeoutMs": 10000})
		var r struct{ Stdout string }
		if json.Unmarshal(b, &r); r.Stdout != c.want {
			t.Fatalf("~/.motd after the claim of %v: %s, want %q", c.body, b, c.want)
		}
	}
}
