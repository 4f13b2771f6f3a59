package pool_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"atelier/internal/config"
	"atelier/internal/storage"
	"atelier/internal/storage/pool"
)

// TestSetResize: the set grows a volume on the driver holding it (the
// file driver's sparse file takes the new size); a sandbox with no volume
// anywhere is storage.ErrNotFound; shrinking is refused by the driver.
func TestSetResize(t *testing.T) {
	ctx := context.Background()
	cfg := config.Default()
	cfg.Sandbox.StateDir = t.TempDir()
	cfg.Setup.Storage.Method = "file"
	set, _, err := pool.OpenSet(ctx, cfg, &fakeLVM{t: t, lvs: map[string]int64{}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "img.ext4")
	if err := os.WriteFile(src, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(src, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := set.CreateImage(ctx, "dev-base", src, 0); err != nil {
		t.Fatal(err)
	}
	const id = "abcdefghijkl"
	path, err := set.Clone(ctx, "dev-base", id)
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Resize(ctx, id, 8<<20); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 8<<20 {
		t.Fatalf("volume after resize: %v %v", fi, err)
	}
	if err := set.Resize(ctx, id, 2<<20); err == nil {
		t.Fatal("shrink succeeded")
	}
	if err := set.Resize(ctx, "mnopqrstuvwx", 8<<20); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("resize of a missing volume: %v, want ErrNotFound", err)
	}
}
