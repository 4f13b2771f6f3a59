package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"atelier/internal/auth"
	"atelier/internal/config"
)

// TestResizeSandboxStorage: the owner or an admin grows a sandbox's disk
// (running: the runtime grows the filesystem online, a journaled step;
// stopped: no grow step, the next boot does it); a smaller or missing size
// is a 400 naming body.sizeGb; past quotas.diskGbPerUser a 429; another
// user is told the sandbox does not exist.
func TestResizeSandboxStorage(t *testing.T) {
	h := newHarness(t, config.ModeProduction, func(c *config.Config) { c.Quotas.DiskGBPerUser = 50 })
	alice := h.tokenOf(t, "alice", 2, auth.ScopeFull)
	bob := h.tokenOf(t, "bob", 3, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	sb := h.create2(t, alice)
	path := "/api/sandboxes/" + sb.ID + "/storage/resize"
	type disk struct {
		Status    string `json:"status"`
		DiskBytes int64  `json:"diskBytes"`
	}
	resize := func(gb any, who map[string]string) resp {
		t.Helper()
		var body any = map[string]any{"sizeGb": gb}
		if gb == nil {
			body = map[string]any{}
		}
		return h.do(t, "POST", path, body, who)
	}

	if r := resize(10, bob); r.status != http.StatusNotFound {
		t.Fatalf("resize by another user: %d %s", r.status, r.body)
	}
	r := resize(10, alice)
	var d disk
	r.json(t, &d)
	if r.status != http.StatusOK || d.DiskBytes != 10<<30 || d.Status != "running" {
		t.Fatalf("grow: %d %s", r.status, r.body)
	}
	for _, gb := range []any{nil, 0, 5, -3, "ten", 1 << 20} {
		if r := resize(gb, alice); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "sizeGb") {
			t.Errorf("sizeGb %v: %d %s, want 400 naming sizeGb", gb, r.status, r.body)
		}
	}
	if r := resize(51, alice); r.status != http.StatusTooManyRequests || !strings.Contains(string(r.body), "quotas.diskGbPerUser") {
		t.Fatalf("past the disk quota: %d %s", r.status, r.body)
	}
	if r := resize(20, root); r.status != http.StatusOK {
		t.Fatalf("grow by an admin: %d %s", r.status, r.body)
	}
	if r := h.do(t, "POST", "/api/sandboxes/"+sb.ID+"/stop", nil, alice); r.status != http.StatusOK {
		t.Fatalf("stop: %d %s", r.status, r.body)
	}
	if r := resize(30, alice); r.status != http.StatusOK {
		t.Fatalf("grow stopped: %d %s", r.status, r.body)
	}
	h.do(t, "GET", "/api/sandboxes/"+sb.ID, nil, alice).json(t, &d)
	if d.DiskBytes != 30<<30 || d.Status != "stopped" {
		t.Fatalf("after grows: %+v", d)
	}
	ops, err := h.srv.Store.ListOps(context.Background(), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, o := range ops {
		if o.Op == "resize" {
			steps = append(steps, o.Step+":"+o.State)
		}
	}
	want := "volume:done row:done grow:done volume:done row:done grow:done volume:done row:done"
	if got := strings.Join(steps, " "); got != want {
		t.Fatalf("resize journal %q, want %q", got, want)
	}
}

// TestPromoteAccess: only the sandbox's owner may promote it (an admin and
// another user are told it does not exist), and a sandbox without a
// workspace is a 400 naming path.id.
func TestPromoteAccess(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	alice := h.tokenOf(t, "alice", 2, auth.ScopeFull)
	bob := h.tokenOf(t, "bob", 3, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	sb := h.create2(t, alice)
	path := "/api/sandboxes/" + sb.ID + "/promote"
	for name, who := range map[string]map[string]string{"another user": bob, "an admin": root} {
		if r := h.do(t, "POST", path, nil, who); r.status != http.StatusNotFound {
			t.Errorf("promote by %s: %d %s", name, r.status, r.body)
		}
	}
	if r := h.do(t, "POST", path, nil, alice); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), `"path.id"`) {
		t.Fatalf("promote without a workspace: %d %s", r.status, r.body)
	}
}
