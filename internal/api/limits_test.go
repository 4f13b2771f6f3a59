package api_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"atelier/internal/config"
)

// TestCreateSchemaUsesConfigBounds checks the published schema and the
// request validation against the one set of resource bounds the config
// validates its defaults with: the edges are accepted, one past them is a
// 400 naming the field.
func TestCreateSchemaUsesConfigBounds(t *testing.T) {
	h := newHarness(t, config.ModeMock, func(c *config.Config) { c.Server.MaxSandboxes = 50 })
	r := h.do(t, "GET", "/openapi.json", nil, nil)
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Minimum *float64 `json:"minimum"`
					Maximum *float64 `json:"maximum"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatal(err)
	}
	body, ok := doc.Components.Schemas["CreateSandboxBody"]
	if !ok {
		t.Fatalf("no CreateSandboxBody schema in %d schemas", len(doc.Components.Schemas))
	}
	cases := []struct {
		field  string
		lo, hi int
	}{
		{"vcpus", config.MinVcpus, config.MaxVcpus},
		{"memoryMb", config.MinMemoryMB, config.MaxMemoryMB},
	}
	for _, tc := range cases {
		p := body.Properties[tc.field]
		if p.Minimum == nil || p.Maximum == nil || int(*p.Minimum) != tc.lo || int(*p.Maximum) != tc.hi {
			t.Errorf("schema of %s: min %v max %v, want %d..%d", tc.field, p.Minimum, p.Maximum, tc.lo, tc.hi)
		}
		for _, v := range []int{tc.lo - 1, tc.lo, tc.hi, tc.hi + 1} {
			ok := v >= tc.lo && v <= tc.hi
			r := h.do(t, "POST", "/api/sandboxes?wait=false", fmt.Sprintf(`{%q: %d}`, tc.field, v), nil)
			switch {
			case ok && r.status != 202:
				t.Errorf("%s %d: %d %s, want 202", tc.field, v, r.status, r.body)
			case !ok && r.status != 400:
				t.Errorf("%s %d: %d %s, want 400", tc.field, v, r.status, r.body)
			}
		}
	}
}

// TestQuotaExceededIs429NamingTheQuota: a user at a quota gets a problem
// naming the quota, its limit and their use, for a create and for a start.
func TestQuotaExceededIs429NamingTheQuota(t *testing.T) {
	h := newHarness(t, config.ModeMock, func(c *config.Config) {
		c.Quotas = config.Quotas{RunningPerUser: 1, SandboxesPerUser: 2, DiskGBPerUser: 50}
	})
	type quotaProblem struct {
		Status int    `json:"status"`
		Code   string `json:"code"`
		Detail string `json:"detail"`
		Quota  struct {
			Name                   string
			Limit, Used, Requested float64
			Unit                   string
		} `json:"quota"`
	}
	check := func(r resp, name string, limit, used float64) {
		t.Helper()
		var p quotaProblem
		r.json(t, &p)
		if r.status != 429 || p.Code != "quota_exceeded" || p.Quota.Name != name || p.Quota.Limit != limit ||
			p.Quota.Used != used || p.Quota.Unit != "sandboxes" || p.Quota.Requested != 1 {
			t.Fatalf("got %d %s, want 429 quota_exceeded %s %v/%v", r.status, r.body, name, used, limit)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("content type %q", ct)
		}
	}
	a := h.create(t, nil)
	check(h.do(t, "POST", "/api/sandboxes", nil, nil), "quotas.runningPerUser", 1, 1)
	if r := h.do(t, "POST", "/api/sandboxes/"+a.ID+"/stop", nil, nil); r.status != 200 {
		t.Fatalf("stop: %d", r.status)
	}
	h.create(t, nil)
	check(h.do(t, "POST", "/api/sandboxes/"+a.ID+"/start", nil, nil), "quotas.runningPerUser", 1, 1)
	check(h.do(t, "POST", "/api/sandboxes", nil, nil), "quotas.sandboxesPerUser", 2, 2)
}
