package sandbox_test

import (
	"errors"
	"strings"
	"testing"

	"atelier/internal/config"
	"atelier/internal/sandbox"
)

func TestNormalize(t *testing.T) {
	cfg := config.Default()
	tests := []struct {
		name  string
		req   sandbox.CreateRequest
		field string // "" when valid
		want  sandbox.CreateRequest
	}{
		{name: "defaults", req: sandbox.CreateRequest{},
			want: sandbox.CreateRequest{Image: cfg.Sandbox.DefaultImage, Vcpus: cfg.Sandbox.DefaultVcpus, MemoryMB: cfg.Sandbox.DefaultMemoryMB}},
		{name: "explicit values kept", req: sandbox.CreateRequest{Name: "web-1", Image: "node22.v2", WorkspaceID: "abcdefghij12", Vcpus: 8, MemoryMB: 16384},
			want: sandbox.CreateRequest{Name: "web-1", Image: "node22.v2", WorkspaceID: "abcdefghij12", Vcpus: 8, MemoryMB: 16384}},
		{name: "minimums", req: sandbox.CreateRequest{Vcpus: 1, MemoryMB: 512},
			want: sandbox.CreateRequest{Image: cfg.Sandbox.DefaultImage, Vcpus: 1, MemoryMB: 512}},
		{name: "name of 63", req: sandbox.CreateRequest{Name: strings.Repeat("a", 63)},
			want: sandbox.CreateRequest{Name: strings.Repeat("a", 63), Image: cfg.Sandbox.DefaultImage, Vcpus: cfg.Sandbox.DefaultVcpus, MemoryMB: cfg.Sandbox.DefaultMemoryMB}},
		{name: "vcpus too many", req: sandbox.CreateRequest{Vcpus: 9}, field: "vcpus"},
		{name: "vcpus negative", req: sandbox.CreateRequest{Vcpus: -1}, field: "vcpus"},
		{name: "memory too small", req: sandbox.CreateRequest{MemoryMB: 511}, field: "memoryMb"},
		{name: "memory too large", req: sandbox.CreateRequest{MemoryMB: 16385}, field: "memoryMb"},
		{name: "name uppercase", req: sandbox.CreateRequest{Name: "Web"}, field: "name"},
		{name: "name leading hyphen", req: sandbox.CreateRequest{Name: "-web"}, field: "name"},
		{name: "name trailing hyphen", req: sandbox.CreateRequest{Name: "web-"}, field: "name"},
		{name: "name of 64", req: sandbox.CreateRequest{Name: strings.Repeat("a", 64)}, field: "name"},
		{name: "name with dot", req: sandbox.CreateRequest{Name: "a.b"}, field: "name"},
		{name: "image path traversal", req: sandbox.CreateRequest{Image: "../etc"}, field: "image"},
		{name: "image uppercase", req: sandbox.CreateRequest{Image: "Dev"}, field: "image"},
		{name: "image with slash", req: sandbox.CreateRequest{Image: "a/b"}, field: "image"},
		{name: "image too long", req: sandbox.CreateRequest{Image: strings.Repeat("a", 64)}, field: "image"},
		{name: "workspace short", req: sandbox.CreateRequest{WorkspaceID: "abc"}, field: "workspaceId"},
		{name: "workspace uppercase", req: sandbox.CreateRequest{WorkspaceID: "ABCDEFGHIJKL"}, field: "workspaceId"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			err := req.Normalize(cfg)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Normalize: %v", err)
				}
				if req != tc.want {
					t.Fatalf("normalized = %+v, want %+v", req, tc.want)
				}
				return
			}
			var fe *sandbox.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FieldError", err)
			}
			if fe.Field != tc.field || fe.Message == "" {
				t.Fatalf("field error = %+v, want field %q with a message", fe, tc.field)
			}
		})
	}
}

func TestNormalizeFallsBackWhenConfigDefaultsUnset(t *testing.T) {
	cfg := config.Default()
	cfg.Sandbox.DefaultVcpus, cfg.Sandbox.DefaultMemoryMB = 0, 0
	req := sandbox.CreateRequest{}
	if err := req.Normalize(cfg); err != nil {
		t.Fatal(err)
	}
	if req.Vcpus != 2 || req.MemoryMB != 2048 {
		t.Fatalf("fallbacks = %d vcpus, %d MiB; want 2, 2048", req.Vcpus, req.MemoryMB)
	}
}

// TestConfigDefaultsAndRequestsShareBounds walks the edges of every resource
// bound: a default the config accepts must be one a create accepts (a config
// that validated used to allow 32 vCPUs and 128 MiB, and then every default
// create failed), and an explicit request must follow the same bounds.
func TestConfigDefaultsAndRequestsShareBounds(t *testing.T) {
	edges := func(lo, hi int) []int { return []int{lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, 0, -1, 4 * hi} }
	cases := []struct {
		key      string
		field    string
		lo, hi   int
		setDef   func(*config.Config, int)
		setValue func(*sandbox.CreateRequest, int)
	}{
		{"sandbox.defaultVcpus", "vcpus", sandbox.MinVcpus, sandbox.MaxVcpus,
			func(c *config.Config, v int) { c.Sandbox.DefaultVcpus = v },
			func(r *sandbox.CreateRequest, v int) { r.Vcpus = v }},
		{"sandbox.defaultMemoryMb", "memoryMb", sandbox.MinMemoryMB, sandbox.MaxMemoryMB,
			func(c *config.Config, v int) { c.Sandbox.DefaultMemoryMB = v },
			func(r *sandbox.CreateRequest, v int) { r.MemoryMB = v }},
	}
	for _, tc := range cases {
		for _, v := range edges(tc.lo, tc.hi) {
			cfg := config.Default()
			cfg.Server.Mode = config.ModeMock
			tc.setDef(cfg, v)
			configOK := true
			var ve *config.ValidationError
			if err := cfg.Validate(); errors.As(err, &ve) {
				for _, p := range ve.Problems {
					if p.Key == tc.key {
						configOK = false
					}
				}
			} else if err != nil {
				t.Fatal(err)
			}
			inRange := v >= tc.lo && v <= tc.hi
			if configOK != inRange {
				t.Errorf("%s = %d: config valid %v, want %v (bounds %d..%d)", tc.key, v, configOK, inRange, tc.lo, tc.hi)
			}
			if configOK {
				// A config that validates never makes the default create fail.
				req := sandbox.CreateRequest{}
				if err := req.Normalize(cfg); err != nil {
					t.Errorf("%s = %d validates, but a create with the defaults fails: %v", tc.key, v, err)
				}
			}
			if v == 0 {
				continue // 0 in a request means "the default"
			}
			explicit := sandbox.CreateRequest{}
			tc.setValue(&explicit, v)
			var fe *sandbox.FieldError
			err := explicit.Normalize(config.Default())
			if inRange && err != nil {
				t.Errorf("%s %d refused: %v", tc.field, v, err)
			}
			if !inRange && (!errors.As(err, &fe) || fe.Field != tc.field) {
				t.Errorf("%s %d: err %v, want a field error on %s", tc.field, v, err, tc.field)
			}
		}
	}
}
