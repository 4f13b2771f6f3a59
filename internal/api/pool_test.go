package api_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// TestPoolTenancy: a pooled sandbox is no user's. A user cannot list, get,
// act inside, open the hosts of, or follow the events of one (nor destroy
// it), even knowing its id; an admin sees it, marked pooled. A user's
// create claims it, and from then on it is that user's alone.
func TestPoolTenancy(t *testing.T) {
	sandbox.PoolCheckEvery = 20 * time.Millisecond
	h := newHarness(t, config.ModeProduction, func(c *config.Config) { c.Sandbox.Pool.Size = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.srv.Sandboxes.RunPool(ctx, nil) }()
	t.Cleanup(func() { cancel(); <-done })

	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	mallory := h.tokenOf(t, "mallory", 2, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	malloryUser, _ := h.srv.Store.UpsertGitHubUser(context.Background(), storeUser("mallory", 2))
	mcookie := sessionCookie(t, h, malloryUser.ID)

	pooled := func() string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l, err := h.srv.Store.ListSandboxes(context.Background(), store.SandboxFilter{OwnerID: store.PoolOwner, Status: store.StatusRunning})
			if err != nil {
				t.Fatal(err)
			}
			if len(l) == 1 {
				return l[0].ID
			}
			if time.Now().After(deadline) {
				t.Fatalf("no pooled sandbox: %+v", l)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	list := func(hdr map[string]string) map[string]bool {
		t.Helper()
		r := h.do(t, "GET", "/api/sandboxes", nil, hdr)
		var l struct {
			Sandboxes []struct {
				ID     string
				Pooled bool
			}
		}
		r.json(t, &l)
		out := map[string]bool{}
		for _, v := range l.Sandboxes {
			out[v.ID] = v.Pooled
		}
		return out
	}
	id := pooled()
	if got := list(mallory); len(got) != 0 {
		t.Fatalf("a user lists %v with only a pooled sandbox on the host", got)
	}
	if got := list(root); len(got) != 1 || !got[id] {
		t.Fatalf("an admin lists %v, want the pooled %s marked pooled", got, id)
	}
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"GET", "/api/sandboxes/" + id, mallory, 404},
		{"POST", "/api/sandboxes/" + id + "/exec", mallory, 404},
		{"GET", "/api/sandboxes/" + id + "/files?path=/etc/passwd", mallory, 404},
		{"POST", "/api/sandboxes/" + id + "/start", mallory, 404},
		{"DELETE", "/api/sandboxes/" + id, mallory, 404},
		{"GET", "/auth/edge?host=sandbox-" + id + ".atelier.test", mcookie, 404},
		// Not even an admin opens it: a host cookie is its owner's only.
		{"POST", "/api/sandboxes/" + id + "/exec", root, 404},
		{"GET", "/api/sandboxes/" + id, root, 200},
	} {
		if r := h.do(t, c.method, c.path, map[string]any{"argv": []string{"true"}}, c.hdr); r.status != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, r.status, r.body, c.want)
		}
	}
	if ev := events(t, h, mallory); strings.Contains(ev, id) {
		t.Fatalf("a user's event stream names the pooled sandbox %s:\n%s", id, ev)
	}
	if ev := events(t, h, root); !strings.Contains(ev, id) {
		t.Fatalf("an admin's event stream does not show the pool's sandbox %s:\n%s", id, ev)
	}

	// Alice's create of the default shape claims it; it is hers alone now.
	a := h.create2(t, alice)
	if a.ID != id {
		t.Fatalf("alice got %s, want the pooled %s", a.ID, id)
	}
	if got := list(alice); len(got) != 1 || got[id] {
		t.Fatalf("alice lists %v", got)
	}
	if r := h.do(t, "GET", "/api/sandboxes/"+id, nil, mallory); r.status != 404 {
		t.Fatalf("mallory gets alice's claimed sandbox: %d", r.status)
	}
	if _, ok := list(alice)[id]; !ok {
		t.Fatalf("alice does not list her claimed sandbox %s", id)
	}
	if ev := events(t, h, alice); !strings.Contains(ev, "event: sandbox.created\ndata: {\"id\":\""+id) {
		t.Fatalf("alice's stream lacks the claimed sandbox's sandbox.created:\n%s", ev)
	}
	if ev := events(t, h, mallory); strings.Contains(ev, id) {
		t.Fatalf("mallory's stream names alice's sandbox:\n%s", ev)
	}
	// The pool refills with another sandbox.
	if next := pooled(); next == id {
		t.Fatal("the claimed sandbox is pooled again")
	}
}

// events reads what GET /api/events replays to hdr within half a second.
func events(t *testing.T, h *harness, hdr map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.ts.URL+"/api/events?since=0", nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("events: %d", res.StatusCode)
	}
	b, _ := io.ReadAll(res.Body) // ends with the context
	return string(b)
}
