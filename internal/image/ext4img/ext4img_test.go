package ext4img_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/image/ext4img"
	"atelier/internal/testenv"
)

// TestReadFile reads a file out of an ext4 image without mounting it, and
// refuses what is not a small regular file: a hostile image's manifest
// may be a directory, a symbolic link or huge.
func TestReadFile(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
	ctx := context.Background()
	tree := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(tree, "etc", "dir"), 0o755))
	must(os.WriteFile(filepath.Join(tree, "etc", "small"), []byte("hello"), 0o644))
	must(os.WriteFile(filepath.Join(tree, "etc", "big"), make([]byte, 5000), 0o644))
	must(os.Symlink("/etc/small", filepath.Join(tree, "etc", "link")))
	img := filepath.Join(t.TempDir(), "x.ext4")
	must(ext4img.Make(ctx, tree, img, 8<<20, "test"))
	must(ext4img.Check(ctx, img))

	if b, err := ext4img.ReadFile(ctx, img, "/etc/small", 4096); err != nil || string(b) != "hello" {
		t.Fatalf("read /etc/small: %q %v", b, err)
	}
	if _, err := ext4img.ReadFile(ctx, img, "/etc/missing", 4096); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	for path, want := range map[string]string{
		"/etc/dir":       "not a regular file",
		"/etc/link":      "not a regular file",
		"/etc/big":       "more than the 4096 allowed",
		"/etc/a b":       "without spaces",
		"relative/path":  "must be absolute",
		"/etc/x\"quoted": "without spaces or quotes",
	} {
		if _, err := ext4img.ReadFile(ctx, img, path, 4096); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("read %s: %v, want an error saying %q", path, err, want)
		}
	}
}
