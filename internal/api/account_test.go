package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/config"
)

type meView struct {
	ID     string `json:"id"`
	Login  string `json:"login"`
	Admin  bool   `json:"admin"`
	Scope  string `json:"scope"`
	Method string `json:"method"`
	Quotas []struct {
		Name  string  `json:"name"`
		Limit float64 `json:"limit"`
		Used  float64 `json:"used"`
		Unit  string  `json:"unit"`
	} `json:"quotas"`
}

// TestMe: /api/me names the caller, their role as the credential carries it,
// and their own quota usage, never another user's.
func TestMe(t *testing.T) {
	h := newHarness(t, config.ModeProduction, func(c *config.Config) { c.Quotas.RunningPerUser = 3 })
	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	mallory := h.tokenOf(t, "mallory", 2, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	h.create2(t, alice)
	h.create2(t, alice)
	h.create2(t, mallory)

	me := func(hdr map[string]string) meView {
		t.Helper()
		r := h.do(t, "GET", "/api/me", nil, hdr)
		if r.status != http.StatusOK {
			t.Fatalf("GET /api/me: %d %s", r.status, r.body)
		}
		var v meView
		r.json(t, &v)
		return v
	}
	a := me(alice)
	if a.Login != "alice" || a.Admin || a.Scope != "full" || a.Method != "token" {
		t.Fatalf("alice: %+v", a)
	}
	used := map[string]float64{}
	for _, q := range a.Quotas {
		used[q.Name] = q.Used
		if q.Name == "quotas.runningPerUser" && q.Limit != 3 {
			t.Errorf("running quota limit %v, want 3", q.Limit)
		}
	}
	if used["quotas.runningPerUser"] != 2 || used["quotas.sandboxesPerUser"] != 2 || len(used) != 3 {
		t.Fatalf("alice's usage %v, want 2 running and 2 sandboxes, and disk", used)
	}
	if r := me(root); !r.Admin || r.Scope != "admin" {
		t.Fatalf("root: %+v", r)
	}
	if r := h.do(t, "GET", "/api/me", nil, nil); r.status != http.StatusUnauthorized {
		t.Fatalf("anonymous /api/me: %d", r.status)
	}
}

// TestSessions: a user lists and revokes only their own sessions; a revoked
// session no longer authenticates; handles are not the session ids.
func TestSessions(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	ctx := context.Background()
	alice, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("alice", 1))
	mallory, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("mallory", 2))
	ac, mc := sessionCookie(t, h, alice.ID), sessionCookie(t, h, mallory.ID)
	readToken := h.tokenOf(t, "alice", 1, auth.ScopeRead)

	type sess struct {
		ID      string `json:"id"`
		Current bool   `json:"current"`
	}
	list := func(hdr map[string]string) []sess {
		t.Helper()
		r := h.do(t, "GET", "/api/sessions", nil, hdr)
		if r.status != http.StatusOK {
			t.Fatalf("list sessions: %d %s", r.status, r.body)
		}
		var out struct{ Sessions []sess }
		r.json(t, &out)
		return out.Sessions
	}
	as := list(ac)
	if len(as) != 1 || !as[0].Current || as[0].ID == "sess-"+alice.ID {
		t.Fatalf("alice's sessions %+v", as)
	}
	if ts := list(readToken); len(ts) != 1 || ts[0].Current {
		t.Fatalf("alice's sessions seen through a token %+v", ts)
	}
	ms := list(mc)
	if len(ms) != 1 || ms[0].ID == as[0].ID {
		t.Fatalf("mallory's sessions %+v", ms)
	}
	// Mallory cannot revoke Alice's session, even knowing its handle.
	if r := h.do(t, "DELETE", "/api/sessions/"+as[0].ID, nil, mergeHdr(mc, map[string]string{"Origin": h.srv.Config.DashboardURL()})); r.status != http.StatusNotFound {
		t.Fatalf("mallory revoking alice's session: %d %s", r.status, r.body)
	}
	// A read token may look, not revoke.
	if r := h.do(t, "DELETE", "/api/sessions/"+as[0].ID, nil, readToken); r.status != http.StatusForbidden {
		t.Fatalf("revoke with a read token: %d %s", r.status, r.body)
	}
	if r := h.do(t, "DELETE", "/api/sessions/not-a-handle", nil, mergeHdr(ac, map[string]string{"Origin": h.srv.Config.DashboardURL()})); r.status != http.StatusBadRequest {
		t.Fatalf("bad handle: %d %s", r.status, r.body)
	}
	if r := h.do(t, "DELETE", "/api/sessions/"+as[0].ID, nil, mergeHdr(ac, map[string]string{"Origin": h.srv.Config.DashboardURL()})); r.status != http.StatusNoContent {
		t.Fatalf("alice revoking her session: %d %s", r.status, r.body)
	}
	if r := h.do(t, "GET", "/api/me", nil, ac); r.status != http.StatusUnauthorized {
		t.Fatalf("revoked session still authenticates: %d", r.status)
	}
	if r := h.do(t, "GET", "/api/me", nil, mc); r.status != http.StatusOK {
		t.Fatalf("mallory's session was touched: %d", r.status)
	}
}

// TestUsersAdminOnly: only an admin lists users.
func TestUsersAdminOnly(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	if r := h.do(t, "GET", "/api/users", nil, alice); r.status != http.StatusForbidden {
		t.Fatalf("alice lists users: %d %s", r.status, r.body)
	}
	r := h.do(t, "GET", "/api/users", nil, root)
	var out struct {
		Users []struct{ ID, Login string }
	}
	r.json(t, &out)
	if r.status != http.StatusOK || len(out.Users) != 2 {
		t.Fatalf("root lists users: %d %s", r.status, r.body)
	}
}

func mergeHdr(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// TestListThenResume: the list names the newest event, and a stream resumed
// after it carries exactly the changes made after the list: what the
// dashboard does on load instead of replaying the whole history.
func TestListThenResume(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	old := h.create(t, nil)
	r := h.do(t, "GET", "/api/sandboxes", nil, nil)
	since := r.header.Get("Last-Event-ID")
	if r.status != 200 || since == "" || since == "0" {
		t.Fatalf("list: %d, Last-Event-ID %q", r.status, since)
	}
	v := h.create(t, nil)
	res, err := http.Get(h.ts.URL + "/api/events?since=" + since)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	evs := readEvents(t, res.Body, 2, 10*time.Second)
	for _, ev := range evs {
		if strings.Contains(ev.data, old.ID) {
			t.Fatalf("event from before the list replayed: %+v", ev)
		}
		if !strings.Contains(ev.data, v.ID) || ev.event == "reset" {
			t.Fatalf("unexpected event after the list: %+v", ev)
		}
	}
}
