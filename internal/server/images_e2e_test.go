package server

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"atelier/internal/image/catalog"
	"atelier/internal/image/oci"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// busyboxLayers are a busybox-static root filesystem as an OCI image's
// layers: the base with its own (failing) init where the agent goes, and
// an upper layer that adds a file and deletes one.
func busyboxLayers(t *testing.T) []v1.Layer {
	t.Helper()
	bb, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		testenv.Missing(t, "requires busybox-static at /usr/bin/busybox: %v", err)
	}
	type ent struct {
		name, body, link string
		typ              byte
		mode             int64
		uid              int
	}
	layer := func(ents ...ent) v1.Layer {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range ents {
			h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid, Linkname: e.link, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
			if h.Typeflag == 0 {
				h.Typeflag = tar.TypeReg
			}
			if h.Mode == 0 {
				h.Mode = 0o644
			}
			if h.Typeflag != tar.TypeReg {
				h.Size = 0
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				tw.Write([]byte(e.body))
			}
		}
		tw.Close()
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	base := []ent{}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "etc", "home", "var", "var/log", "run", "proc", "sys", "dev"} {
		base = append(base, ent{name: d + "/", typ: tar.TypeDir, mode: 0o755})
	}
	base = append(base,
		ent{name: "root/", typ: tar.TypeDir, mode: 0o700},
		ent{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		ent{name: "home/dev/", typ: tar.TypeDir, mode: 0o755, uid: 1000},
		ent{name: "bin/busybox", body: string(bb), mode: 0o755},
		ent{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\n"},
		ent{name: "etc/group", body: "root:x:0:\ndev:x:1000:\n"},
		ent{name: "etc/hosts", body: "127.0.0.1\tlocalhost\n"},
		ent{name: "etc/resolv.conf", body: "\n"},
		ent{name: "etc/junk", body: "deleted by the upper layer"},
		// The image's own init: the import must replace it with the agent.
		ent{name: "sbin/atelier-agent", body: "#!/bin/sh\nexit 1\n", mode: 0o755},
	)
	for _, a := range []string{"sh", "cat", "echo", "id", "ls", "test", "sleep", "mkdir", "touch", "env"} {
		base = append(base, ent{name: "bin/" + a, typ: tar.TypeSymlink, link: "busybox"})
	}
	return []v1.Layer{
		layer(base...),
		layer(ent{name: "etc/greeting", body: "hello from an OCI image\n"}, ent{name: "etc/.wh.junk"}),
	}
}

// TestImportOCIImageBootsInRunc: an OCI image layout made in the test is
// imported through the catalog of a production manager (file driver), and
// a container-runtime sandbox made from it runs commands; the image cannot
// be removed while the sandbox exists.
func TestImportOCIImageBootsInRunc(t *testing.T) {
	f := newFixture(t)
	img, err := mutate.AppendLayers(empty.Image, busyboxLayers(t)...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.User, cf.Config.WorkingDir = "dev", "/home/dev"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	srv := f.start(t)
	ctx := context.Background()

	const id = "busy-oci"
	t0 := time.Now()
	opened, err := oci.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	res, err := oci.Build(ctx, opened, oci.Options{ID: id, Agent: buildAgent(t), WorkDir: t.TempDir(), SizeBytes: 64 << 20, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Cleanup()
	if _, err := srv.Images.Import(ctx, catalog.ImportRequest{ID: id, Path: res.Path, Source: store.ImageSourceImport, Foreign: true, RequireManifest: true}); err != nil {
		t.Fatal(err)
	}
	importTime := time.Since(t0)
	t.Logf("import %s: %v\n%s", id, importTime.Round(time.Millisecond), progress.String())

	t1 := time.Now()
	sb, code, b := f.createFrom(t, id)
	if code != 201 {
		t.Fatalf("create from %s: %d %s", id, code, b)
	}
	createToRunning := time.Since(t1)
	t.Logf("METRIC import_ms=%d create_to_running_ms=%d", importTime.Milliseconds(), createToRunning.Milliseconds())
	if v := f.sandboxView(t, sb); v.Status != "running" {
		t.Fatalf("sandbox %s is %s", sb, v.Status)
	}
	exit, out := f.exec(t, sb, "cat /etc/greeting; if test -e /etc/junk; then echo junk-still-there; fi")
	if exit != 0 || !strings.Contains(out, "hello from an OCI image") || strings.Contains(out, "junk-still-there") {
		t.Fatalf("exec in %s: exit %d: %s", sb, exit, out)
	}
	// The agent answered this exec, so it, not the image's failing script,
	// is the init; check its bytes too.
	if exit, out := f.exec(t, sb, "cat /sbin/atelier-agent | head -c 4"); exit != 0 || !strings.HasPrefix(out, "\x7fELF") {
		t.Fatalf("/sbin/atelier-agent in the sandbox is not the agent: %q", out)
	}

	code, b = f.call(t, "GET", "/api/images/"+id, "")
	var iv struct {
		User   string
		UsedBy []string
	}
	if code != 200 || json.Unmarshal(b, &iv) != nil || iv.User != "dev" || len(iv.UsedBy) != 1 || iv.UsedBy[0] != sb {
		t.Fatalf("get image: %d %s", code, b)
	}
	if code, b := f.call(t, "DELETE", "/api/images/"+id, ""); code != 409 {
		t.Fatalf("remove an image in use: %d %s", code, b)
	}
	if code, b := f.call(t, "DELETE", "/api/sandboxes/"+sb, ""); code != 204 {
		t.Fatalf("destroy: %d %s", code, b)
	}
	if code, b := f.call(t, "DELETE", "/api/images/"+id, ""); code != 204 {
		t.Fatalf("remove the unused image: %d %s", code, b)
	}
	if _, err := os.Stat(f.cfg.Sandbox.StateDir + "/images/" + id + ".ext4"); !os.IsNotExist(err) {
		t.Fatalf("image file after removal: %v", err)
	}
	f.assertNoLeaks(t)
}
