package api_test

import (
	"strings"
	"testing"

	"atelier/internal/auth"
	"atelier/internal/config"
)

// TestBrowserRoutesOwnerOnly: the browser is inside the sandbox, so only
// its owner may start, stop or look at it; an admin, who may stop the
// sandbox, may not (the same answer as for an unknown sandbox), and a
// read-scoped token may only look. The in-memory runtime has no agent:
// past the checks the owner gets 503.
func TestBrowserRoutesOwnerOnly(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	aliceRead := h.tokenOf(t, "alice", 1, auth.ScopeRead)
	mallory := h.tokenOf(t, "mallory", 2, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	a := h.create2(t, alice)
	base := "/api/sandboxes/" + a.ID + "/browser"
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
		code         string
	}{
		{"GET", base, mallory, 404, "not_found"},
		{"POST", base + "/start", mallory, 404, "not_found"},
		{"GET", base, root, 404, "not_found"},
		{"POST", base + "/start", root, 404, "not_found"},
		{"POST", base + "/stop", root, 404, "not_found"},
		{"POST", base + "/start", aliceRead, 403, "forbidden"},
		{"POST", base + "/stop", aliceRead, 403, "forbidden"},
		{"GET", base, aliceRead, 503, "unavailable"},
		{"POST", base + "/start", alice, 503, "unavailable"},
		{"POST", base + "/stop", alice, 503, "unavailable"},
		{"GET", "/api/sandboxes/nope/browser", alice, 400, "invalid_input"},
	} {
		r := h.do(t, c.method, c.path, nil, c.hdr)
		var p problem
		r.json(t, &p)
		if r.status != c.want || (c.code != "" && p.Code != c.code) {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, r.status, r.body, c.want, c.code)
		}
	}
	// The OpenAPI document describes the routes and their answer.
	doc := string(h.do(t, "GET", "/openapi.json", nil, nil).body)
	for _, want := range []string{`"/api/sandboxes/{id}/browser/start"`, `"start-browser"`, `"BrowserView"`, `"off","starting","running","stopping","failed"`} {
		if !strings.Contains(doc, want) {
			t.Errorf("openapi lacks %s", want)
		}
	}
}
