package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/image/manifest"
	"atelier/internal/testimage"
)

// TestVersionImagesAndKernel: `atelier version` reports every image under
// {stateDir}/images, its manifest read from the sidecar or from inside the
// image (debugfs, no mount), says which has none, and the kernel's record.
func TestVersionImagesAndKernel(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("ATELIER_TEST_STRICT") == "1" {
				t.Fatalf("%s missing (e2fsprogs)", tool)
			}
			t.Skipf("requires %s (e2fsprogs)", tool)
		}
	}
	dir := t.TempDir()
	images := filepath.Join(dir, "state", "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		t.Fatal(err)
	}
	// A root with /etc, as an image has.
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	mkfs := func(id string) string {
		p := filepath.Join(images, id+".ext4")
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, p, "4M").CombinedOutput(); err != nil {
			t.Fatalf("mkfs: %v %s", err, out)
		}
		return p
	}
	inside := &manifest.Manifest{Schema: manifest.Schema, ID: "dev-base", User: "dev", Workdir: "/home/dev",
		Built: "2026-12-01T10:00:00Z", Versions: map[string]string{"node": "22.12.0", "code-server": "4.108.2"}}
	if err := testimage.InstallManifest(context.Background(), mkfs("dev-base"), inside); err != nil {
		t.Fatal(err)
	}
	mkfs("plain")
	mkfs("side")
	side := &manifest.Manifest{Schema: manifest.Schema, ID: "side", User: "dev", Workdir: "/home/dev", Versions: map[string]string{"python": "3.12"}}
	b, _ := side.Marshal()
	if err := os.WriteFile(filepath.Join(images, "side.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel+".json", []byte(`{"kernelRelease":"6.1.119-atelier","sourcePackage":"linux-source-6.1","sourceVersion":"6.1.119-1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "c.json")
	body := `{"server":{"mode":"mock"},"sandbox":{"stateDir":"` + filepath.Join(dir, "state") + `"},` +
		`"advanced":{"server":{"firecracker":{"kernelPath":"` + kernel + `"}}}}`
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ATELIER_CONFIG": cfg}
	out, err := run(t, env, "--json", "version")
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	var v versions
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if v.Image != "dev-base" || v.ImageTools["node"] != "22.12.0" || v.Kernel != "6.1.119-atelier" || v.Agent == "" || v.Binary == "" {
		t.Errorf("versions %+v", v)
	}
	if len(v.Images) != 3 {
		t.Fatalf("images %+v, want 3", v.Images)
	}
	byID := map[string]imageVersion{}
	for _, im := range v.Images {
		byID[im.ID] = im
	}
	if im := byID["dev-base"]; im.Built != inside.Built || !strings.HasPrefix(im.From, manifest.Path+" in ") || im.Tools["code-server"] != "4.108.2" {
		t.Errorf("dev-base %+v", im)
	}
	if im := byID["side"]; im.From != "sidecar side.json" || im.Tools["python"] != "3.12" {
		t.Errorf("side %+v", im)
	}
	if im := byID["plain"]; im.Error == "" || im.Tools != nil {
		t.Errorf("plain has no manifest, got %+v", im)
	}
	out, err = run(t, env, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"image   dev-base (default), built 2026-12-01T10:00:00Z", "  node 22.12.0", "image   plain: no manifest", "kernel  Linux 6.1.119-atelier (linux-source-6.1 6.1.119-1)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
