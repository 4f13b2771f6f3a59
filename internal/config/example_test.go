package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite sandbox.config.full-example.json from FullExample()")

// examplePath is the committed full example at the repository root.
var examplePath = filepath.Join("..", "..", "sandbox.config.full-example.json")

func TestFullExample(t *testing.T) {
	want, err := FullExample()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(examplePath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatalf("%v\nrun: go test ./internal/config -run TestFullExample -update", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with FullExample(); regenerate it with:\n"+
			"  go test ./internal/config -run TestFullExample -update", examplePath)
	}
}

func TestFullExampleLoads(t *testing.T) {
	t.Parallel()
	c, err := Load(Options{File: examplePath, Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Mode != ModeProduction {
		t.Errorf("mode = %q, want production", c.Server.Mode)
	}
	// Only the site-specific production values are missing.
	if got := problemKeys(c.Validate()); !slices.Equal(got, productionDefaultProblems) {
		t.Errorf("problems %q, want %q", got, productionDefaultProblems)
	}
	// With them supplied, the example is a working production config.
	c, err = Load(Options{File: examplePath, Env: []string{
		"ATELIER_BASE_DOMAIN=example.com", "ATELIER_TLS_EMAIL=admin@example.com",
		"ATELIER_JWT_SECRET=0123456789abcdef0123456789abcdef", "ATELIER_GITHUB_CLIENT_ID=id",
		"ATELIER_GITHUB_CLIENT_SECRET=secret", "ATELIER_AUTH_ALLOWED_USERS=alice",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("example plus production values: %v", err)
	}
	if c.Domain.Dashboard != "sandbox.example.com" {
		t.Errorf("a copy of the example must still derive the dashboard, got %q", c.Domain.Dashboard)
	}
	// Every key appears in the example.
	raw, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for _, l := range leaves() {
		var v any = doc
		for part := range strings.SplitSeq(l.key, ".") {
			m, _ := v.(map[string]any)
			v = m[part]
		}
		if v == nil {
			t.Errorf("full example lacks %s", l.key)
		}
	}
}
