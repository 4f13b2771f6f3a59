package oci_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"atelier/internal/bootcontract"
	"atelier/internal/image/catalog"
	"atelier/internal/image/ext4img"
	"atelier/internal/image/oci"
	"atelier/internal/storage/file"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// pingCap is a VFS_CAP_REVISION_2 security.capability value granting
// cap_net_raw (bit 13) permitted, as Debian's ping carries.
var pingCap = []byte{0x00, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid              int
	pax              map[string]string
}

func layerOf(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid, Linkname: e.link,
			ModTime: time.Unix(1700000000, 0), PAXRecords: e.pax, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func imageOf(t *testing.T, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
	cf.Created = v1.Time{Time: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes img as an OCI image layout directory.
func writeLayout(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return dir
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "requires root: extraction sets owners and file capabilities")
	}
}

// baseLayers are a small tree, then an upper layer that deletes from it.
func baseLayers(t *testing.T) []v1.Layer {
	return []v1.Layer{
		layerOf(t,
			entry{name: "bin/", typ: tar.TypeDir},
			entry{name: "bin/ping", body: "ping", mode: 0o755, pax: map[string]string{"SCHILY.xattr.security.capability": string(pingCap)}},
			entry{name: "bin/sudo", body: "sudo", mode: 0o4755},
			entry{name: "etc/", typ: tar.TypeDir},
			entry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"},
			entry{name: "home/alice/", typ: tar.TypeDir, uid: 1000},
			entry{name: "opt/", typ: tar.TypeDir},
			entry{name: "opt/old1", body: "old"},
			entry{name: "opt/old2", body: "old"},
			entry{name: "secret", body: "delete me"},
			entry{name: "sbin/", typ: tar.TypeDir},
			entry{name: "sbin/atelier-agent", body: "the image's own init, which must not survive", mode: 0o755},
			entry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
			entry{name: "usr/lib/", typ: tar.TypeDir},
			entry{name: "usr/lib/libx.so", body: "lib"},
			entry{name: "usr/lib/libx.so.1", typ: tar.TypeLink, link: "usr/lib/libx.so"},
		),
		layerOf(t,
			entry{name: "opt/.wh..wh..opq", body: ""},
			entry{name: "opt/new", body: "new"},
			entry{name: ".wh.secret", body: ""},
			entry{name: "dev/", typ: tar.TypeDir},
			entry{name: "dev/null", typ: tar.TypeChar},
		),
	}
}

func TestFlattenAppliesWhiteoutsAndKeepsCapabilities(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	st, err := oci.Flatten(context.Background(), imageOf(t, v1.Config{}, baseLayers(t)...), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"secret", "opt/old1", "opt/old2", "dev/null"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want it absent", gone, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "opt/new")); err != nil || string(b) != "new" {
		t.Errorf("opt/new: %q %v", b, err)
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(filepath.Join(dir, "bin/ping"), "security.capability", buf)
	if err != nil || !bytes.Equal(buf[:n], pingCap) {
		t.Errorf("bin/ping capability: %x %v", buf[:max(n, 0)], err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "bin/sudo")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("bin/sudo lost its setuid bit: %v %v", fi.Mode(), err)
	}
	var sys unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "home/alice"), &sys); err != nil || sys.Uid != 1000 {
		t.Errorf("home/alice owner %d: %v", sys.Uid, err)
	}
	if err := unix.Stat(filepath.Join(dir, "usr/lib/libx.so.1"), &sys); err != nil || sys.Nlink != 2 {
		t.Errorf("hard link: nlink %d %v", sys.Nlink, err)
	}
	if st.Layers != 2 || st.Whiteouts != 2 || st.Skipped != 1 || st.Xattrs != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestFlattenStaysInsideTheTree: a "../" name, a symbolic link out of the
// tree written through (absolute or relative, in a later layer or the same
// one) and a hard link out of the tree each fail the flatten, and nothing
// is written outside.
func TestFlattenStaysInsideTheTree(t *testing.T) {
	requireRoot(t)
	cases := map[string][]v1.Layer{
		"dotdot name": {layerOf(t, entry{name: "a/../../escaped", body: "x"})},
		"absolute symlink then write through it": {
			layerOf(t, entry{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"}),
			layerOf(t, entry{name: "evil/escaped", body: "x"}),
		},
		"relative symlink in the same layer": {
			layerOf(t, entry{name: "evil", typ: tar.TypeSymlink, link: "../../../../../../../../OUTSIDE"},
				entry{name: "evil/escaped", body: "x"}),
		},
		"hard link out of the tree": {layerOf(t, entry{name: "pw", typ: tar.TypeLink, link: "../../OUTSIDE/target"})},
		"whiteout through a symlink": {
			layerOf(t, entry{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"}),
			layerOf(t, entry{name: "evil/.wh.target", body: ""}),
		},
	}
	for name, layers := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(outside, "target"), []byte("host file"), 0o644); err != nil {
				t.Fatal(err)
			}
			tree := filepath.Join(base, "a", "b", "tree")
			if err := os.MkdirAll(tree, 0o755); err != nil {
				t.Fatal(err)
			}
			// Point the links at the real outside directory.
			for i, l := range layers {
				layers[i] = retarget(t, l, outside)
			}
			_, err := oci.Flatten(context.Background(), imageOf(t, v1.Config{}, layers...), tree)
			if err == nil {
				t.Fatal("flatten of a hostile image succeeded")
			}
			t.Logf("refused: %v", err)
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("outside dir now holds %d entries", len(ents))
			}
			if b, err := os.ReadFile(filepath.Join(outside, "target")); err != nil || string(b) != "host file" {
				t.Errorf("host file: %q %v", b, err)
			}
			for _, p := range []string{filepath.Join(base, "escaped"), filepath.Join(base, "a", "escaped")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written", p)
				}
			}
		})
	}
}

// retarget rewrites OUTSIDE in link names to the test's outside directory
// (absolute links get the absolute path, relative ones keep their climb).
func retarget(t *testing.T, l v1.Layer, outside string) v1.Layer {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []entry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		link := h.Linkname
		if link == "OUTSIDE" {
			link = outside
		} else {
			link = strings.ReplaceAll(link, "OUTSIDE", strings.TrimPrefix(outside, "/"))
		}
		out = append(out, entry{name: h.Name, body: string(body), link: link, typ: h.Typeflag, mode: h.Mode})
	}
	return layerOf(t, out...)
}

func debugfs(t *testing.T, image, req string) string {
	t.Helper()
	bin, err := ext4img.Tool("debugfs")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-R", req, image).Output()
	if err != nil {
		t.Fatalf("debugfs %s: %v", req, err)
	}
	return string(out)
}

// TestImportIntoCatalog: an OCI layout and a docker save tarball of the
// same image become catalog images with the agent as init, a manifest for
// the image's USER, the capability kept, and the whiteouts applied.
func TestImportIntoCatalog(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
	ctx := context.Background()
	agent := "/usr/bin/busybox" // any static binary stands in for the agent here
	if _, err := os.Stat(agent); err != nil {
		testenv.Missing(t, "requires busybox-static at %s", agent)
	}
	img := imageOf(t, v1.Config{User: "alice", WorkingDir: "/home/alice/src"}, baseLayers(t)...)
	tarPath := filepath.Join(t.TempDir(), "image.tar")
	if err := tarball.WriteToFile(tarPath, name.MustParseReference("example.test/alice:1"), img); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	state := t.TempDir()
	cat := catalog.New(catalog.Options{Store: st, Volumes: file.New(file.Config{StateDir: state, MinFreePercent: 0.001})})

	for id, src := range map[string]string{"from-layout": writeLayout(t, img), "from-docker-save": tarPath} {
		t.Run(id, func(t *testing.T) {
			opened, err := oci.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			var progress bytes.Buffer
			res, err := oci.Build(ctx, opened, oci.Options{ID: id, Agent: agent, WorkDir: t.TempDir(), Progress: &progress})
			if err != nil {
				t.Fatal(err)
			}
			defer res.Cleanup()
			if !strings.Contains(progress.String(), "flatten 2 layers") || !strings.Contains(progress.String(), "mkfs.ext4") {
				t.Errorf("progress: %q", progress.String())
			}
			im, err := cat.Import(ctx, catalog.ImportRequest{ID: id, Path: res.Path, Source: store.ImageSourceImport, Foreign: true, RequireManifest: true})
			if err != nil {
				t.Fatal(err)
			}
			if im.Manifest == nil || im.Manifest.User != "alice" || im.Manifest.Workdir != "/home/alice/src" || im.Manifest.Built != "2026-11-30T12:00:00Z" {
				t.Fatalf("manifest %+v", im.Manifest)
			}
			vol := filepath.Join(state, "images", id+".ext4")
			want, _ := os.ReadFile(agent)
			if got := debugfs(t, vol, "cat "+bootcontract.InitPath); got != string(want) {
				t.Errorf("%s is not the agent (%d bytes, want %d)", bootcontract.InitPath, len(got), len(want))
			}
			if got := debugfs(t, vol, "ea_list /bin/ping"); !strings.Contains(got, "security.capability") {
				t.Errorf("capability lost in the ext4 image: %q", got)
			}
			if got := debugfs(t, vol, "ls /opt"); strings.Contains(got, "old1") || !strings.Contains(got, "new") {
				t.Errorf("/opt after the opaque whiteout: %q", got)
			}
			if _, err := os.Stat(filepath.Dir(res.Path) + "/root"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the flattened tree was left behind: %v", err)
			}
		})
	}
}

// TestBuildRefusesADynamicAgent: an agent that needs a loader would fail
// only at boot, inside the sandbox; the import refuses it up front.
func TestBuildRefusesADynamicAgent(t *testing.T) {
	dyn, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls")
	}
	work := t.TempDir()
	_, err = oci.Build(context.Background(), imageOf(t, v1.Config{}, layerOf(t, entry{name: "a", body: "a"})), oci.Options{ID: "x", Agent: dyn, WorkDir: work})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("build with a dynamic agent: %v", err)
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("work dir left %d entries", len(ents))
	}
}
