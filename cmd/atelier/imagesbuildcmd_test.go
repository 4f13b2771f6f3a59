package main

import (
	"os"
	"strings"
	"testing"
)

// `atelier images build` and the seed's `atelier images dev-base` exist;
// an unknown recipe is refused before anything is built, naming the known
// ones.
func TestImagesBuildCommand(t *testing.T) {
	for _, args := range [][]string{{"images", "build", "--help"}, {"images", "dev-base", "--help"}} {
		out, err := run(t, nil, args...)
		if err != nil || !strings.Contains(out, "--no-cache") || !strings.Contains(out, "mmdebstrap") {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("the rest needs root: the command refuses to run without it")
	}
	cfg := t.TempDir() + "/c.json"
	os.WriteFile(cfg, []byte("{}"), 0o600)
	_, err := run(t, nil, "images", "build", "nope", "--config", cfg, "--output", t.TempDir()+"/x.ext4", "--cache-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), `no recipe for image "nope"`) || !strings.Contains(err.Error(), "dev-base") {
		t.Fatalf("unknown recipe: %v", err)
	}
	_, err = run(t, nil, "images", "build", "dev-base", "extra")
	if err == nil {
		t.Fatal("two arguments must be refused")
	}
}
