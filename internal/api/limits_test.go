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
