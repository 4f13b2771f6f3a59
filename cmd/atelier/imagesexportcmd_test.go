package main

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"atelier/internal/testenv"
	"atelier/internal/testimage"
)

// Bad arguments to images export are refused before anything is read or
// written, naming the flag.
func TestImagesExportBadArgs(t *testing.T) {
	full := filepath.Join(t.TempDir(), "full")
	if err := os.MkdirAll(filepath.Join(full, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"images", "export", "dev-base"}, "one of --oci-layout, --oci-tar, --push or --containerd-import"},
		{[]string{"images", "export", "dev-base", "--oci-tar", dir + "/a.tar", "--tag", "Not A Ref"}, "--tag"},
		{[]string{"images", "export", "dev-base", "--push", "UPPER/case:1"}, "--push"},
		{[]string{"images", "export", "dev-base", "--oci-layout", full}, "--oci-layout " + full + ": the directory is not empty"},
		{[]string{"images", "export", "dev-base", "--oci-tar", dir}, "--oci-tar " + dir + ": is a directory"},
		{[]string{"images", "export", "dev-base", "--oci-tar", "/nonexistent-dir/a.tar"}, "--oci-tar /nonexistent-dir/a.tar"},
		{[]string{"images", "export", "dev-base", "--containerd-import", "--containerd-namespace", ""}, "--containerd-namespace"},
		{[]string{"images", "export", "dev-base", "extra", "--oci-tar", dir + "/a.tar"}, "accepts 1 arg"},
		{[]string{"images", "export", "../etc/passwd.ext4", "--oci-tar", dir + "/a.tar"}, "image ../etc/passwd.ext4"},
	} {
		_, err := run(t, nil, c.args...)
		if os.Geteuid() != 0 && err != nil && strings.Contains(err.Error(), "run it as root") {
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error with %q", c.args[2:], err, c.want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a refused export wrote %d files", len(ents))
	}
	out, err := run(t, nil, "images", "build", "--help")
	if err != nil || !strings.Contains(out, "--oci-tar") {
		t.Errorf("images build has no --oci-tar: %v", err)
	}
}

// An export of the test image's ext4 file to a layout, a tar and an
// in-process registry on loopback, in one run.
func TestImagesExportTestImage(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "images export needs root (it mounts the image)")
	}
	if _, err := os.Stat("/usr/bin/busybox"); err != nil {
		testenv.Missing(t, "requires busybox-static")
	}
	img := filepath.Join(t.TempDir(), "test.ext4")
	if err := testimage.Build(context.Background(), img, "/usr/bin/busybox", 0); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	dir := t.TempDir()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/atelier/test:1"
	out, err := run(t, nil, "images", "export", img, "--oci-layout", dir+"/layout", "--oci-tar", dir+"/t.tar",
		"--push", ref, "--tag", "localhost/atelier/test:1", "--work-dir", t.TempDir())
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"exported test", "wrote OCI layout", "wrote " + dir + "/t.tar", "pushed " + ref + "@sha256:"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, p := range []string{dir + "/layout/index.json", dir + "/t.tar"} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}
