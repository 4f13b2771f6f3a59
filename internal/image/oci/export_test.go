package oci_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"atelier/internal/bootcontract"
	"atelier/internal/image/manifest"
	"atelier/internal/image/oci"
	"atelier/internal/testenv"
	"atelier/internal/testimage"
)

// node is what the round trip compares of one path.
type node struct {
	typ      uint32
	mode     uint32
	uid, gid uint32
	link     string
	data     string
	xattr    string
	linkedTo string // the first path of a hard-link group
}

// snapshot describes every path below dir (lost+found aside).
func snapshot(t *testing.T, dir string) map[string]node {
	t.Helper()
	out := map[string]node{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || rel == "lost+found" {
			if rel == "lost+found" {
				return filepath.SkipDir
			}
			return nil
		}
		var s unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			return err
		}
		n := node{typ: s.Mode & unix.S_IFMT, mode: s.Mode & 0o7777, uid: s.Uid, gid: s.Gid}
		switch n.typ {
		case unix.S_IFLNK:
			n.link, _ = os.Readlink(p)
		case unix.S_IFREG:
			b, _ := os.ReadFile(p)
			n.data = string(b)
			if s.Nlink > 1 {
				if first, ok := inodes[s.Ino]; ok {
					n.linkedTo = first
				} else {
					inodes[s.Ino] = rel
					n.linkedTo = rel
				}
			}
		}
		v := make([]byte, 256)
		if sz, err := unix.Lgetxattr(p, "user.atelier", v); err == nil {
			n.xattr = string(v[:sz])
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sampleTree makes a tree with what an image holds: owners, setuid,
// symbolic links (absolute and relative), a hard link, a FIFO (left out),
// an extended attribute and a manifest.
func sampleTree(t *testing.T) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	mk := func(rel, data string, mode os.FileMode, uid int) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // after chown, which clears setuid
			t.Fatal(err)
		}
	}
	m := &manifest.Manifest{Schema: manifest.Schema, ID: "sample", User: "dev", Workdir: "/home/dev",
		Built: "2026-11-30T12:00:00Z", Versions: map[string]string{"node": "24.1.0"}}
	mb, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mk("etc/atelier/image.json", string(mb), 0o644, 0)
	mk("bin/tool", "#!/bin/sh\necho tool\n", 0o755, 0)
	mk("bin/su", "setuid", 0o4755|os.ModeSetuid, 0)
	if err := os.Chmod(filepath.Join(dir, "bin/su"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	mk("home/dev/notes.txt", "mine", 0o600, 1000)
	if err := os.Chown(filepath.Join(dir, "home/dev"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "home/dev"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/bin/tool", filepath.Join(dir, "bin/abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(dir, "bin/rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "bin/tool"), filepath.Join(dir, "bin/tool2")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "tmp/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	xattr := unix.Lsetxattr(filepath.Join(dir, "bin/tool"), "user.atelier", []byte("kept"), 0) == nil
	return dir, xattr
}

func TestExportTreeRoundTrip(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	dir, xattr := sampleTree(t)
	exp, err := oci.ExportTree(ctx, dir, oci.ExportOptions{WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Close()
	if exp.ID != "sample" || exp.Stats.Skipped != 1 {
		t.Errorf("id %q, skipped %d (the FIFO), want sample, 1", exp.ID, exp.Stats.Skipped)
	}
	cfg, err := exp.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Config.Entrypoint, " ") != bootcontract.InitPath+" init --kernel-cmdline=false --" {
		t.Errorf("entrypoint %q", cfg.Config.Entrypoint)
	}
	var m manifest.Manifest
	if err := json.Unmarshal([]byte(cfg.Config.Labels[oci.LabelManifest]), &m); err != nil || m.ID != "sample" || m.User != "dev" {
		t.Errorf("manifest label %q: %v", cfg.Config.Labels[oci.LabelManifest], err)
	}
	if cfg.Config.Labels[oci.LabelVersionPrefix+"node"] != "24.1.0" || cfg.Created.UTC().Format(time.RFC3339) != "2026-11-30T12:00:00Z" {
		t.Errorf("labels %v, created %v", cfg.Config.Labels, cfg.Created)
	}

	want := snapshot(t, dir)
	delete(want, "tmp/fifo")
	if !xattr {
		t.Log("the temp dir's file system takes no user.* xattrs: not compared")
	}
	out := t.TempDir()
	tarPath := filepath.Join(out, "image.tar")
	if err := exp.WriteTar(tarPath, "localhost/atelier/sample:1"); err != nil {
		t.Fatal(err)
	}
	layoutDir := filepath.Join(out, "layout")
	if err := exp.WriteLayout(layoutDir, "localhost/atelier/sample:1"); err != nil {
		t.Fatal(err)
	}
	d0, _ := exp.Image.Digest()
	// The tar serves both readers: its manifest.json (docker load, the
	// importer) and its OCI layout (ctr import, checked in the bed test).
	for src, from := range map[string]string{"tar": tarPath, "layout": layoutDir} {
		t.Run(src, func(t *testing.T) {
			img, err := oci.Open(from)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := img.Digest(); src == "layout" && d != d0 {
				t.Errorf("layout digest %s, exported %s", d, d0)
			}
			back := t.TempDir()
			if _, err := oci.Flatten(ctx, img, back); err != nil {
				t.Fatal(err)
			}
			got := snapshot(t, back)
			compareTrees(t, want, got)
		})
	}
	if got := filesIn(t, exp); got != 1 {
		t.Errorf("work dir holds %d files, want the layer only", got)
	}
	work := workOf(t, exp)
	if err := exp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("Close left %s: %v", work, err)
	}
}

func compareTrees(t *testing.T, want, got map[string]node) {
	t.Helper()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s is missing", p)
			continue
		}
		if g != want[p] {
			t.Errorf("%s: got %+v, want %+v", p, g, want[p])
		}
	}
}

func workOf(t *testing.T, exp *oci.Exported) string {
	t.Helper()
	ls, err := exp.Image.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("layers: %v (%d)", err, len(ls))
	}
	return filepath.Dir(exp.LayerPath())
}

func filesIn(t *testing.T, exp *oci.Exported) int {
	ents, err := os.ReadDir(workOf(t, exp))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func sha(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// TestExportDeterministic: exporting the same tree twice gives the same
// digest and byte-identical tar files; a changed mtime changes nothing, a
// changed mode does.
func TestExportDeterministic(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	dir, _ := sampleTree(t)
	export := func() (string, string) {
		exp, err := oci.ExportTree(ctx, dir, oci.ExportOptions{WorkDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer exp.Close()
		d, err := exp.Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "i.tar")
		if err := exp.WriteTar(f, "localhost/atelier/sample:1"); err != nil {
			t.Fatal(err)
		}
		return d.String(), sha(t, f)
	}
	d1, f1 := export()
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "bin/tool"), later, later); err != nil {
		t.Fatal(err)
	}
	d2, f2 := export()
	if d1 != d2 || f1 != f2 {
		t.Fatalf("re-export differs: %s/%s vs %s/%s", d1, f1, d2, f2)
	}
	if err := os.Chmod(filepath.Join(dir, "bin/tool"), 0o700); err != nil {
		t.Fatal(err)
	}
	if d3, _ := export(); d3 == d1 {
		t.Fatal("a changed mode kept the digest: the test cannot tell")
	}
}

func buildTestImage(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs (%s)", tool)
		}
	}
	agent := "/usr/bin/busybox" // any static binary stands in for the agent here
	if _, err := os.Stat(agent); err != nil {
		testenv.Missing(t, "requires busybox-static at %s", agent)
	}
	img := filepath.Join(t.TempDir(), "test.ext4")
	if err := testimage.Build(context.Background(), img, agent, 0); err != nil {
		t.Fatal(err)
	}
	m := testimage.ServicesManifest()
	if err := testimage.InstallManifest(context.Background(), img, m); err != nil {
		t.Fatal(err)
	}
	return img
}

// loopsOf lists loop devices backed by file.
func loopsOf(t *testing.T, file string) []string {
	t.Helper()
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == file {
			out = append(out, f)
		}
	}
	return out
}

// TestExportExt4: the test image's ext4 file exports through a detached
// read-only mount that leaves no mount and no loop device; the layer holds
// its files (setuid su, the agent) and re-exports give the same digest.
func TestExportExt4(t *testing.T) {
	img := buildTestImage(t)
	ctx := context.Background()
	mountsBefore, _ := os.ReadFile("/proc/self/mountinfo")
	var digests []string
	for i := range 2 {
		start := time.Now()
		exp, err := oci.ExportExt4(ctx, img, oci.ExportOptions{WorkDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		d, _ := exp.Image.Digest()
		digests = append(digests, d.String())
		if i == 0 {
			t.Logf("test image: exported in %s, %d entries, %d bytes of files, layer %d bytes (gzip)",
				time.Since(start).Round(time.Millisecond), exp.Stats.Entries, exp.Stats.Bytes, exp.LayerBytes)
			back := t.TempDir()
			if _, err := oci.Flatten(ctx, exp.Image, back); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(filepath.Join(back, testimage.SuPath))
			if err != nil || fi.Mode()&os.ModeSetuid == 0 {
				t.Errorf("su after the round trip: %v %v", fi, err)
			}
			want, _ := os.ReadFile("/usr/bin/busybox")
			if got, _ := os.ReadFile(filepath.Join(back, bootcontract.InitPath)); !bytes.Equal(got, want) {
				t.Errorf("%s is not the image's agent", bootcontract.InitPath)
			}
			if exp.Manifest == nil || exp.ID != testimage.ServicesManifest().ID {
				t.Errorf("manifest %+v", exp.Manifest)
			}
		}
		exp.Close()
	}
	if digests[0] != digests[1] {
		t.Errorf("re-export digest %s, first %s", digests[1], digests[0])
	}
	if l := loopsOf(t, img); len(l) != 0 {
		// autoclear detaches once the superblock goes; give it a moment.
		time.Sleep(500 * time.Millisecond)
		if l = loopsOf(t, img); len(l) != 0 {
			t.Errorf("loop devices left on the image: %v", l)
		}
	}
	mountsAfter, _ := os.ReadFile("/proc/self/mountinfo")
	if !bytes.Equal(mountsBefore, mountsAfter) {
		t.Errorf("the mount table changed:\n%s\n---\n%s", mountsBefore, mountsAfter)
	}
}

// TestExportRefusesNonImages: a directory or a character device is no
// ext4 image.
func TestExportRefusesNonImages(t *testing.T) {
	for _, p := range []string{"/dev/null", t.TempDir(), filepath.Join(t.TempDir(), "missing.ext4")} {
		if exp, err := oci.ExportExt4(context.Background(), p, oci.ExportOptions{}); err == nil {
			exp.Close()
			t.Errorf("export of %s succeeded", p)
		}
	}
}

// TestPush writes the export to an in-process registry on loopback and
// reads it back by tag.
func TestPush(t *testing.T) {
	requireRoot(t)
	dir, _ := sampleTree(t)
	exp, err := oci.ExportTree(context.Background(), dir, oci.ExportOptions{WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Close()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/atelier/sample:1"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := exp.Push(ctx, ref); err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := pulled.Digest()
	want, _ := exp.Image.Digest()
	if got != want {
		t.Fatalf("pulled %s, pushed %s", got, want)
	}
	rc, err := func() (io.ReadCloser, error) {
		ls, err := pulled.Layers()
		if err != nil {
			return nil, err
		}
		return ls[0].Uncompressed()
	}()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, rc)
	rc.Close()
	if n == 0 {
		t.Fatal("empty layer pulled")
	}
	if err := exp.Push(ctx, "Not A Ref"); err == nil || !strings.Contains(err.Error(), "push") {
		t.Errorf("push to a bad ref: %v", err)
	}
}

func TestContainerdName(t *testing.T) {
	for in, want := range map[string]string{
		"localhost/atelier/dev-base:latest": "localhost/atelier/dev-base:latest",
		"atelier/dev-base":                  "docker.io/atelier/dev-base:latest",
		"busybox:1":                         "docker.io/library/busybox:1",
		"registry.test:5000/a/b:2":          "registry.test:5000/a/b:2",
	} {
		if got, err := oci.ContainerdName(in); err != nil || got != want {
			t.Errorf("ContainerdName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := oci.ContainerdName("UPPER/case"); err == nil {
		t.Error("an invalid reference was accepted")
	}
}

// TestExportManifestLinkStaysInside: an image whose manifest is a symbolic
// link to a host file (absolute, or climbing out) is refused; the host
// file never reaches a label.
func TestExportManifestLinkStaysInside(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret.json")
	if err := os.WriteFile(secret, []byte(`{"schema":1,"id":"host-secret","user":"root","workdir":"/"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{secret, "../../../../../../../../.." + secret} {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "etc/atelier"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, "etc/atelier/image.json")); err != nil {
			t.Fatal(err)
		}
		exp, err := oci.ExportTree(context.Background(), dir, oci.ExportOptions{ID: "x", WorkDir: t.TempDir()})
		if err == nil {
			cfg, _ := exp.Image.ConfigFile()
			exp.Close()
			if strings.Contains(cfg.Config.Labels[oci.LabelManifest], "host-secret") {
				t.Fatalf("link %s: the host's file is in the image's labels", target)
			}
			t.Fatalf("link %s: export succeeded", target)
		}
		if !strings.Contains(err.Error(), "escapes") {
			t.Errorf("link %s: %v", target, err)
		}
	}
}
