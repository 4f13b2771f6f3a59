package catalog_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"atelier/internal/agent"
	"atelier/internal/image/catalog"
	"atelier/internal/image/ext4img"
	"atelier/internal/image/manifest"
	"atelier/internal/storage"
	"atelier/internal/storage/file"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

func requireE2fsprogs(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
}

// makeImage writes a small ext4 file at path, with a manifest for id when
// id is not empty.
func makeImage(t *testing.T, path, id string) {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "hello"), []byte("hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if id != "" {
		m := manifest.Manifest{Schema: manifest.Schema, ID: id, User: "dev", Workdir: "/home/dev",
			Versions: map[string]string{"node": "24.11.0"},
			Services: []manifest.Service{{Name: "web", Autostart: true, Process: agent.ProcessSpec{Argv: []string{"/bin/hello"}, Port: 8080}}}}
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "etc", "atelier"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc", "atelier", "image.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ext4img.Make(context.Background(), root, path, 8<<20, ""); err != nil {
		t.Fatal(err)
	}
}

type fixture struct {
	st    *store.Store
	state string
	drv   *file.Driver
	vols  *flakyVolumes
	cat   *catalog.Catalog
}

// flakyVolumes fails List on demand, after CreateImage has made the volume:
// the moment a half-done import must be undone.
type flakyVolumes struct {
	*file.Driver
	failList error
}

func (f *flakyVolumes) List(ctx context.Context) ([]storage.Volume, error) {
	if f.failList != nil {
		return nil, f.failList
	}
	return f.Driver.List(ctx)
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	requireE2fsprogs(t)
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	state := t.TempDir()
	drv := file.New(file.Config{StateDir: state, MinFreePercent: 0.001})
	f := &fixture{st: st, state: state, drv: drv, vols: &flakyVolumes{Driver: drv}}
	f.cat = catalog.New(catalog.Options{Store: st, Volumes: f.vols})
	return f
}

func (f *fixture) imagePath(id string) string {
	return filepath.Join(f.state, file.ImagesDir, id+".ext4")
}

func (f *fixture) addSandbox(t *testing.T, id, image string) {
	t.Helper()
	if err := f.st.InsertSandbox(context.Background(), store.Sandbox{ID: id, OwnerID: "owner", Image: image, Status: store.StatusStopped}, 0); err != nil {
		t.Fatal(err)
	}
}

func TestSyncReadsImagesFromDisk(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	makeImage(t, f.imagePath("dev-base"), "dev-base")
	makeImage(t, f.imagePath("bare"), "")
	if err := f.cat.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.addSandbox(t, "aaaaaaaaaaaa", "dev-base")
	list, err := f.cat.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "bare" || list[1].ID != "dev-base" {
		t.Fatalf("listed %+v, want bare and dev-base", list)
	}
	bare, dev := list[0], list[1]
	if bare.Manifest != nil || !strings.Contains(bare.ManifestError, "no /etc/atelier/image.json") {
		t.Errorf("bare image: manifest %+v, error %q", bare.Manifest, bare.ManifestError)
	}
	if dev.Manifest == nil || dev.Manifest.Versions["node"] != "24.11.0" || len(dev.Manifest.Services) != 1 {
		t.Fatalf("dev-base manifest: %+v (%s)", dev.Manifest, dev.ManifestError)
	}
	if dev.SizeBytes != 8<<20 || dev.Driver != storage.DriverFile || dev.CreatedAt.IsZero() || dev.Source != store.ImageSourceDisk {
		t.Errorf("dev-base: %+v", dev)
	}
	if !slices.Equal(dev.Sandboxes, []string{"aaaaaaaaaaaa"}) || len(bare.Sandboxes) != 0 {
		t.Errorf("users: dev-base %v, bare %v", dev.Sandboxes, bare.Sandboxes)
	}

	// A second sync keeps the created time; a vanished volume leaves the catalog.
	created := dev.CreatedAt
	if err := os.Remove(f.imagePath("bare")); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	list, err = f.cat.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "dev-base" || !list[0].CreatedAt.Equal(created) {
		t.Fatalf("after the bare image went: %+v", list)
	}
	if _, err := f.cat.Get(ctx, "bare"); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("get vanished image: %v, want ErrNotFound", err)
	}
}

func TestSyncKeepsRowsWhenListingFails(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	makeImage(t, f.imagePath("dev-base"), "dev-base")
	if err := f.cat.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.vols.failList = errors.New("thin pool not active")
	if err := f.cat.Sync(ctx); err == nil {
		t.Fatal("sync with a failing driver reported success")
	}
	if _, err := f.st.GetImage(ctx, "dev-base"); err != nil {
		t.Fatalf("a failed listing dropped the image: %v", err)
	}
}

func TestRemoveRefusedWhileSandboxesUseIt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	makeImage(t, f.imagePath("dev-base"), "dev-base")
	if err := f.cat.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.addSandbox(t, "bbbbbbbbbbbb", "dev-base")
	err := f.cat.Remove(ctx, "dev-base")
	var inUse *catalog.InUseError
	if !errors.As(err, &inUse) || !errors.Is(err, catalog.ErrInUse) || !slices.Equal(inUse.Sandboxes, []string{"bbbbbbbbbbbb"}) {
		t.Fatalf("remove of a used image: %v", err)
	}
	if _, err := os.Stat(f.imagePath("dev-base")); err != nil {
		t.Fatalf("refused removal touched the volume: %v", err)
	}

	// Prebuilds hold an image too.
	f.cat = catalog.New(catalog.Options{Store: f.st, Volumes: f.vols, Prebuilds: func(context.Context) (map[string][]string, error) {
		return map[string][]string{"dev-base": {"wwwwwwwwwwww"}}, nil
	}})
	if err := f.st.DeleteSandbox(ctx, "bbbbbbbbbbbb"); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Remove(ctx, "dev-base"); !errors.As(err, &inUse) || !slices.Equal(inUse.Prebuilds, []string{"wwwwwwwwwwww"}) {
		t.Fatalf("remove of an image a prebuild uses: %v", err)
	}

	f.cat = catalog.New(catalog.Options{Store: f.st, Volumes: f.vols})
	if err := f.cat.Remove(ctx, "dev-base"); err != nil {
		t.Fatalf("remove of an unused image: %v", err)
	}
	if _, err := os.Stat(f.imagePath("dev-base")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed image's volume is still there: %v", err)
	}
	if _, err := f.st.GetImage(ctx, "dev-base"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("removed image's row is still there: %v", err)
	}
	if err := f.cat.Remove(ctx, "dev-base"); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("second removal: %v, want ErrNotFound", err)
	}
	if err := f.cat.Remove(ctx, "../etc"); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("removal of a path: %v, want ErrInvalid", err)
	}
}

func TestImportWholeOrNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "in.ext4")
	makeImage(t, src, "imported")

	// A corrupt foreign image fails e2fsck and leaves nothing.
	bad := filepath.Join(t.TempDir(), "bad.ext4")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// Clear the root directory's inode: the image still has a valid
	// superblock, and debugfs would still read it.
	debugfs, _ := ext4img.Tool("debugfs")
	if out, err := exec.Command(debugfs, "-w", "-R", "clri <2>", bad).CombinedOutput(); err != nil {
		t.Fatalf("corrupt the image: %v\n%s", err, out)
	}
	if _, err := f.cat.Import(ctx, catalog.ImportRequest{ID: "imported", Path: bad, Foreign: true}); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("import of a corrupt image: %v, want ErrInvalid", err)
	}
	f.assertAbsent(t, "imported")

	// A failure after the volume exists removes it again.
	f.vols.failList = errors.New("lvs failed")
	if _, err := f.cat.Import(ctx, catalog.ImportRequest{ID: "imported", Path: src, Foreign: true}); err == nil {
		t.Fatal("import with a failing driver listing succeeded")
	}
	f.vols.failList = nil
	f.assertAbsent(t, "imported")

	// A manifest naming another image is refused.
	if _, err := f.cat.Import(ctx, catalog.ImportRequest{ID: "other", Path: src, Foreign: true}); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("import under another name than the manifest's: %v", err)
	}
	f.assertAbsent(t, "other")

	im, err := f.cat.Import(ctx, catalog.ImportRequest{ID: "imported", Path: src, Foreign: true, RequireManifest: true, SizeBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if im.SizeBytes != 32<<20 || im.Source != store.ImageSourceImport || im.Manifest == nil || im.Manifest.User != "dev" {
		t.Fatalf("imported: %+v", im)
	}
	if _, err := f.cat.Import(ctx, catalog.ImportRequest{ID: "imported", Path: src}); !errors.Is(err, catalog.ErrExists) {
		t.Fatalf("second import under the same name: %v, want ErrExists", err)
	}
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("import consumed its source: %v", err)
	}

	noManifest := filepath.Join(t.TempDir(), "bare.ext4")
	makeImage(t, noManifest, "")
	if _, err := f.cat.Import(ctx, catalog.ImportRequest{ID: "bare", Path: noManifest, RequireManifest: true}); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("import without a required manifest: %v", err)
	}
	f.assertAbsent(t, "bare")
}

func (f *fixture) assertAbsent(t *testing.T, id string) {
	t.Helper()
	if _, err := os.Stat(f.imagePath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image %s volume exists after a failed import: %v", id, err)
	}
	left, _ := filepath.Glob(filepath.Join(f.state, file.ImagesDir, "."+id+"*"))
	if len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if _, err := f.st.GetImage(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("image %s row exists after a failed import: %v", id, err)
	}
}
