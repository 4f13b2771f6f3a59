package api_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"atelier/internal/config"
	"atelier/internal/sandbox"
)

// A manager that may not boot sandboxes (a cluster found not to enforce
// NetworkPolicies) refuses creates, starts and restarts with 503 naming
// why, boots nothing, and leaves a running sandbox running.
func TestAdmissionRefusesBoots(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	running := h.create(t, map[string]any{"name": "up"})
	stopped := h.create(t, map[string]any{"name": "down"})
	if r := h.do(t, "POST", "/api/sandboxes/"+stopped.ID+"/stop", nil, nil); r.status != 200 {
		t.Fatalf("stop: %d %s", r.status, r.body)
	}
	var refuse atomic.Bool
	refuse.Store(true)
	h.srv.Sandboxes.SetAdmission(func(context.Context) error {
		if refuse.Load() {
			return fmt.Errorf("%w: policies not enforced; set sandbox.kubernetes.allowUnenforcedPolicies", sandbox.ErrUnavailable)
		}
		return nil
	})
	for _, c := range []struct{ method, path, id string }{
		{"POST", "/api/sandboxes", ""},
		{"POST", "/api/sandboxes/" + stopped.ID + "/start", stopped.ID},
		{"POST", "/api/sandboxes/" + running.ID + "/restart", running.ID},
	} {
		var body any
		if c.id == "" {
			body = map[string]any{"name": "refused"}
		}
		r := h.do(t, c.method, c.path, body, nil)
		var p problem
		r.json(t, &p)
		if r.status != 503 || p.Code != "unavailable" || !strings.Contains(p.Detail, "sandbox.kubernetes.allowUnenforcedPolicies") {
			t.Fatalf("%s %s: %d %s, want 503 naming the key", c.method, c.path, r.status, r.body)
		}
	}
	var list struct{ Sandboxes []view }
	h.do(t, "GET", "/api/sandboxes", nil, nil).json(t, &list)
	got := map[string]string{}
	for _, v := range list.Sandboxes {
		got[v.ID] = v.Status
	}
	if len(got) != 2 || got[running.ID] != "running" || got[stopped.ID] != "stopped" {
		t.Fatalf("after refusals: %v", got)
	}
	// Once admitted again, the same start goes through.
	refuse.Store(false)
	if r := h.do(t, "POST", "/api/sandboxes/"+stopped.ID+"/start", nil, nil); r.status != 200 {
		t.Fatalf("start once admitted: %d %s", r.status, r.body)
	}
}
