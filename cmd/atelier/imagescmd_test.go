package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"atelier/internal/image/ext4img"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// smallLayout writes a one-layer OCI image layout: a file and a USER.
func smallLayout(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct{ name, body string }{{"etc/passwd", "root:x:0:0::/root:/bin/sh\n"}, {"etc/motd", "hi\n"}} {
		tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(e.body))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "oci")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestImagesCLI: import an OCI layout into a mock manager's state, then
// list, get and remove it over the API, with errors naming what to fix.
func TestImagesCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "requires root: atelier images import is root-only")
	}
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
	agent := "/usr/bin/busybox" // a static binary stands in for the agent
	if _, err := os.Stat(agent); err != nil {
		testenv.Missing(t, "requires busybox-static at %s", agent)
	}
	url, srv := startMockServer(t)
	ctx := context.Background()
	run := func(args ...string) cliRun { t.Helper(); return cli(t, ctx, url, "", args...) }
	// import works on the manager's host: its config, not its API.
	cfgFile := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfgFile, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ATELIER_CONFIG", cfgFile)
	t.Setenv("ATELIER_SERVER_MODE", "mock")
	t.Setenv("ATELIER_DATA_DIR", srv.Config.Server.DataDir)
	t.Setenv("ATELIER_STATE_DIR", srv.Config.Sandbox.StateDir)

	src := smallLayout(t)
	run("images", "import", src).fails(t, "import without --name", "--name")
	run("images", "import", src, "--name", "Bad Name").fails(t, "import with a bad name", "--name")
	run("images", "import", src, "--name", "dotted.name").fails(t, "import with a name that is no DNS label", "--name")
	run("images", "import", filepath.Join(t.TempDir(), "missing"), "--name", "x", "--agent", agent).fails(t, "import of nothing", "missing")
	r := run("images", "import", src, "--name", "mine", "--agent", agent).ok(t, "import")
	for _, w := range []string{"flatten 1 layers", "mkfs.ext4", "image mine:", "manifest written (user root)"} {
		if !strings.Contains(r.out, w) {
			t.Errorf("import output lacks %q:\n%s", w, r.out)
		}
	}
	run("images", "import", src, "--name", "mine", "--agent", agent).fails(t, "import twice", "already exists")

	r = run("images").ok(t, "images")
	if !strings.Contains(r.out, "mine") || !strings.Contains(r.out, "import") {
		t.Fatalf("images lists:\n%s", r.out)
	}
	if keys := jsonKeys(t, run("--json", "images", "ls").ok(t, "ls --json").out); !hasAll(keys, "id", "sizeBytes", "usedBy", "versions", "services") {
		t.Errorf("--json keys %v", keys)
	}
	r = run("images", "get", "mine").ok(t, "get")
	for _, w := range []string{"ID:", "mine", "User:", "root", "Source:", "import"} {
		if !strings.Contains(r.out, w) {
			t.Errorf("get output lacks %q:\n%s", w, r.out)
		}
	}
	run("images", "get", "nope").fails(t, "get unknown", "image nope not found")

	// Mock mode boots only its default image: a stopped sandbox row stands
	// in for one made from "mine".
	if err := srv.Store.InsertSandbox(ctx, store.Sandbox{ID: "cccccccccccc", OwnerID: "local", Image: "mine", Status: store.StatusStopped}, 0); err != nil {
		t.Fatal(err)
	}
	run("images", "rm", "mine").fails(t, "rm while used", "used by 1 sandbox(es) (cccccccccccc)")
	if err := srv.Store.DeleteSandbox(ctx, "cccccccccccc"); err != nil {
		t.Fatal(err)
	}
	run("images", "rm", "mine").ok(t, "rm")
	run("images", "rm", "mine").fails(t, "rm twice", "not found")
}
