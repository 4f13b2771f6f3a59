package api_test

import (
	"strings"
	"testing"

	"atelier/internal/config"
)

type registryStatus struct {
	Enabled      bool `json:"enabled"`
	Online       bool `json:"online"`
	EvictionDays int  `json:"evictionDays"`
}

// In mock mode the cache only records its setting (no bridge, and the mock
// guests live in the developer's home): the routes, the validation and the
// persisted state are what this covers. The real Verdaccio is driven by
// internal/server's TestRegistryEndToEnd.
func TestRegistryRoutes(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	var st registryStatus
	r := h.do(t, "GET", "/api/registry", nil, nil)
	r.json(t, &st)
	if r.status != 200 || st.Enabled || st.Online || st.EvictionDays != 14 {
		t.Fatalf("initial: %d %s", r.status, r.body)
	}

	for _, tc := range []struct{ name, body, field string }{
		{"zero days", `{"evictionDays":0}`, "evictionDays"},
		{"too many days", `{"evictionDays":366}`, "evictionDays"},
		{"not a number", `{"evictionDays":"7"}`, "evictionDays"},
		{"missing", `{}`, "evictionDays"},
		{"unknown field", `{"evictionDays":7,"days":7}`, "days"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(t, "PUT", "/api/registry/settings", tc.body, nil)
			var p problem
			r.json(t, &p)
			if r.status != 400 || p.Code != "invalid_input" || !strings.Contains(p.Detail, tc.field) {
				t.Fatalf("got %d %+v, want 400 naming %s", r.status, p, tc.field)
			}
		})
	}

	steps := []struct {
		method, path, body string
		enabled            bool
		days               int
	}{
		{"PUT", "/api/registry/settings", `{"evictionDays":7}`, false, 7},
		{"POST", "/api/registry/enable", "", true, 7},
		{"POST", "/api/registry/enable", "", true, 7},
		{"GET", "/api/registry", "", true, 7},
		{"POST", "/api/registry/disable", "", false, 7},
	}
	for _, s := range steps {
		var body any
		if s.body != "" {
			body = s.body
		}
		r := h.do(t, s.method, s.path, body, nil)
		var st registryStatus
		r.json(t, &st)
		if r.status != 200 || st.Enabled != s.enabled || st.EvictionDays != s.days {
			t.Fatalf("%s %s: %d %s", s.method, s.path, r.status, r.body)
		}
	}
	if r := h.do(t, "POST", "/api/registry/purge", nil, nil); r.status != 200 {
		t.Fatalf("purge: %d %s", r.status, r.body)
	}
}
