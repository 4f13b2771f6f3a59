package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/config"
)

// tokenOf creates a token of scope for login (who must be on the harness's
// allow-list) as their dashboard session would.
func (h *harness) tokenOf(t testing.TB, login string, gh int64, scope auth.Scope) map[string]string {
	t.Helper()
	ctx := context.Background()
	u, err := h.srv.Store.UpsertGitHubUser(ctx, storeUser(login, gh))
	if err != nil {
		t.Fatal(err)
	}
	p := auth.Principal{User: u, Method: auth.MethodCookie, Scope: auth.ScopeFull, Admin: h.srv.Auth.IsAdmin(u)}
	if p.Admin {
		p.Scope = auth.ScopeAdmin
	}
	secret, _, err := h.srv.Auth.CreateToken(ctx, p, auth.TokenRequest{Name: string(scope), Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"Authorization": "Bearer " + secret}
}

// adminOnly are the host-wide operations: only an admin may run them.
var adminOnly = map[string]bool{
	"POST /api/registry/enable":  true,
	"POST /api/registry/disable": true,
	"POST /api/registry/purge":   true,
	"PUT /api/registry/settings": true,
	"POST /api/system/cleanup":   true,
	"GET /api/users":             true,
	"GET /api/system/config":     true,
	"GET /api/system/storage":    true,
	"GET /api/system/network":    true,
	"GET /api/system/reconciler": true,
	"GET /api/system/cleanup":    true,
	"DELETE /api/images/{id}":    true,
}

var validBody = map[string]any{"PUT /api/registry/settings": map[string]any{"evictionDays": 7}}

// TestRouteAuditScopes extends TestRouteAudit to scopes and roles, for every
// registered route (huma, raw and the proxied agent routes alike): a
// read-scoped token is refused every method but GET and HEAD and every
// WebSocket upgrade; a user who is not an admin is refused exactly the
// host-wide operations; an admin's token is refused none.
func TestRouteAuditScopes(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	read := h.tokenOf(t, "octocat", 1, auth.ScopeRead)
	full := h.tokenOf(t, "octocat", 1, auth.ScopeFull)
	admin := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	upgrade := func(hdr map[string]string) map[string]string {
		out := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
		for k, v := range hdr {
			out[k] = v
		}
		return out
	}
	seenAdmin := 0
	for _, r := range h.srv.API.Routes() {
		if r.Public {
			continue
		}
		key := r.Method + " " + r.Path
		path := strings.NewReplacer("{id}", "abcdefghijkl", "{name}", "web", "{tid}", "t1", "{$}", "").Replace(r.Path)
		if key == "GET /api/events" {
			path += "?since=999999999" // answers at once: nothing to replay
		}
		forbidden := func(got resp) bool {
			var p problem
			_ = jsonUnmarshal(got.body, &p)
			return got.status == http.StatusForbidden && p.Code == "forbidden"
		}

		if r.Method != http.MethodGet {
			got := h.probe(t, r.Method, path, nil, read)
			if !forbidden(got) || !strings.Contains(string(got.body), "read-only") {
				t.Errorf("%s with a read token: %d %s, want 403", key, got.status, got.body)
			}
		} else {
			got := h.probe(t, r.Method, path, nil, read)
			switch {
			case adminOnly[key]:
				// A host-wide read (the configuration): a user's token is
				// refused for the role, not the scope.
				if !forbidden(got) || !strings.Contains(string(got.body), "admins only") {
					t.Errorf("%s with a user's read token: %d %s, want 403 admins only", key, got.status, got.body)
				}
			case got.status == http.StatusForbidden || got.status == http.StatusUnauthorized:
				t.Errorf("%s with a read token: %d %s, want it served", key, got.status, got.body)
			}
			if got := h.probe(t, r.Method, path, nil, upgrade(read)); !forbidden(got) {
				t.Errorf("%s upgraded with a read token: %d %s, want 403", key, got.status, got.body)
			}
		}

		got := h.probe(t, r.Method, path, nil, full)
		if adminOnly[key] {
			seenAdmin++
			// A valid body, so that schema validation does not answer first.
			got = h.probe(t, r.Method, path, validBody[key], full)
			if !forbidden(got) || !strings.Contains(string(got.body), "admins only") {
				t.Errorf("%s by a user: %d %s, want 403", key, got.status, got.body)
			}
			if got := h.probe(t, r.Method, path, validBody[key], admin); got.status == http.StatusForbidden || got.status == http.StatusUnauthorized {
				t.Errorf("%s by an admin: %d %s", key, got.status, got.body)
			}
		} else if got.status == http.StatusForbidden || got.status == http.StatusUnauthorized {
			t.Errorf("%s by a user: %d %s, want it served", key, got.status, got.body)
		}
	}
	if seenAdmin != len(adminOnly) {
		t.Fatalf("%d admin-only routes registered, want %d", seenAdmin, len(adminOnly))
	}
}

// probe is do for an audit that must not hang when a check is missing: a
// 2xx answer (an event stream, an upgraded connection) is not read, and
// nothing takes more than 10 s.
func (h *harness) probe(t testing.TB, method, path string, body any, hdr map[string]string) resp {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, h.ts.URL+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirect.CheckRedirect}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	out := resp{status: res.StatusCode, header: res.Header}
	if res.StatusCode >= 300 {
		out.body, _ = io.ReadAll(io.LimitReader(res.Body, 1<<16))
	}
	return out
}

// TestAdminScope: admins see and manage every user's sandboxes; users see
// only theirs; nobody but the owner gets inside one (exec, files, hosts).
func TestAdminScope(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	mallory := h.tokenOf(t, "mallory", 2, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	rootFull := h.tokenOf(t, "root", 9, auth.ScopeFull)
	a := h.create2(t, alice)
	m := h.create2(t, mallory)

	list := func(hdr map[string]string) map[string]bool {
		r := h.do(t, "GET", "/api/sandboxes", nil, hdr)
		var l struct{ Sandboxes []view }
		r.json(t, &l)
		out := map[string]bool{}
		for _, v := range l.Sandboxes {
			out[v.ID] = true
		}
		return out
	}
	if got := list(alice); len(got) != 1 || !got[a.ID] {
		t.Fatalf("alice lists %v", got)
	}
	if got := list(root); len(got) != 2 || !got[a.ID] || !got[m.ID] {
		t.Fatalf("admin lists %v", got)
	}
	if got := list(rootFull); len(got) != 0 {
		t.Fatalf("an admin's full-scope token lists %v, want only their own", got)
	}
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"GET", "/api/sandboxes/" + m.ID, alice, 404},
		{"GET", "/api/sandboxes/" + m.ID, root, 200},
		{"GET", "/api/sandboxes/" + m.ID + "/routes", root, 200},
		{"POST", "/api/sandboxes/" + m.ID + "/exec", root, 404},
		{"GET", "/api/sandboxes/" + m.ID + "/files?path=/etc/passwd", root, 404},
		{"POST", "/api/sandboxes/" + m.ID + "/dev/web/expose", root, 404},
		{"POST", "/api/sandboxes/" + m.ID + "/stop", alice, 404},
		{"POST", "/api/sandboxes/" + m.ID + "/stop", root, 200},
		{"DELETE", "/api/sandboxes/" + m.ID, alice, 404},
		{"DELETE", "/api/sandboxes/" + m.ID, root, 204},
	} {
		if r := h.do(t, c.method, c.path, nil, c.hdr); r.status != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, r.status, r.body, c.want)
		}
	}
}

// TestTokenAPI: the create request's lifetime and scope rules over HTTP.
func TestTokenAPI(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	full := h.tokenOf(t, "octocat", 1, auth.ScopeFull)
	read := h.tokenOf(t, "octocat", 1, auth.ScopeRead)
	type created struct {
		Token     string  `json:"token"`
		Scope     string  `json:"scope"`
		ExpiresAt *string `json:"expiresAt"`
	}
	for _, c := range []struct {
		name  string
		body  any
		hdr   map[string]string
		want  int
		field string
	}{
		{"default", map[string]any{"name": "a"}, full, 201, ""},
		{"read scope", map[string]any{"name": "a", "scope": "read"}, full, 201, ""},
		{"unknown scope", map[string]any{"name": "a", "scope": "root"}, full, 400, "scope"},
		{"admin scope by a user", map[string]any{"name": "a", "scope": "admin"}, full, 403, ""},
		{"never from a token", map[string]any{"name": "a", "noExpiry": true}, full, 403, ""},
		{"longer than the host allows", map[string]any{"name": "a", "ttlHours": 24*90 + 1}, full, 400, "ttlHours"},
		{"a read token mints nothing", map[string]any{"name": "a", "scope": "read"}, read, 403, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(t, "POST", "/api/tokens", c.body, c.hdr)
			if r.status != c.want {
				t.Fatalf("%d %s, want %d", r.status, r.body, c.want)
			}
			if c.field != "" && !strings.Contains(string(r.body), c.field) {
				t.Fatalf("problem does not name %s: %s", c.field, r.body)
			}
			if r.status == 201 {
				var tok created
				r.json(t, &tok)
				if tok.ExpiresAt == nil || tok.Scope == "" {
					t.Fatalf("created token %s", r.body)
				}
			}
		})
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
