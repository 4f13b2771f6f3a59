package mock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

const id = "abcdefghijkl"

func TestCloneDelete(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "overlays")
	v := New(dir)
	path, err := v.Clone(ctx, "dev-base", id)
	if err != nil || path != filepath.Join(dir, id+".ext4") {
		t.Fatalf("Clone = %q, %v", path, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the mock wrote to disk")
	}
	// An existing clone is returned untouched.
	if again, err := v.Clone(ctx, "other-image", id); err != nil || again != path {
		t.Fatalf("second Clone = %q, %v", again, err)
	}
	if got := v.Volumes()[id]; got.Image != "dev-base" {
		t.Fatalf("second clone replaced the volume: %+v", got)
	}
	if err := v.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if len(v.Volumes()) != 0 || len(v.IDs()) != 0 {
		t.Fatal("volume left after delete")
	}
	if err := v.Delete(ctx, id); err != nil {
		t.Fatalf("delete of an absent volume = %v, want success", err)
	}
}

func TestCloneRejectsUnsafeNames(t *testing.T) {
	v := New("/var/lib/sandbox/overlays")
	for _, tc := range []struct{ image, id string }{
		{"dev-base", "../../etc/pa"},
		{"dev-base", "short"},
		{"../base", id},
		{"Dev", id},
		{"", id},
	} {
		if _, err := v.Clone(context.Background(), tc.image, tc.id); err == nil {
			t.Errorf("Clone(%q, %q) accepted", tc.image, tc.id)
		}
	}
	if len(v.Volumes()) != 0 {
		t.Fatal("a refused clone was recorded")
	}
}

func TestFailNext(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	v := New("/x")
	v.FailNext(OpClone, boom)
	if _, err := v.Clone(ctx, "dev-base", id); !errors.Is(err, boom) {
		t.Fatalf("Clone = %v", err)
	}
	if len(v.Volumes()) != 0 {
		t.Fatal("failed clone recorded a volume")
	}
	if _, err := v.Clone(ctx, "dev-base", id); err != nil {
		t.Fatal(err)
	}
	v.FailNext(OpDelete, boom)
	if err := v.Delete(ctx, id); !errors.Is(err, boom) {
		t.Fatalf("Delete = %v", err)
	}
	if len(v.Volumes()) != 1 {
		t.Fatal("failed delete removed the volume")
	}
}

func TestConcurrentUse(t *testing.T) {
	v := New("/x")
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			sid := fmt.Sprintf("sandbox%05d", i)
			if _, err := v.Clone(context.Background(), "dev-base", sid); err != nil {
				t.Error(err)
			}
			if i%2 == 0 {
				_ = v.Delete(context.Background(), sid)
			}
		})
	}
	wg.Wait()
	if got := len(v.IDs()); got != 20 {
		t.Fatalf("%d volumes, want 20", got)
	}
}

func TestResize(t *testing.T) {
	ctx := context.Background()
	v := New(t.TempDir())
	if err := v.Resize(ctx, id, 1<<30); err == nil {
		t.Fatal("resize of a missing volume succeeded")
	}
	if _, err := v.Clone(ctx, "dev-base", id); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		size int64
		ok   bool
	}{{2 << 30, true}, {2 << 30, true}, {1 << 30, false}, {3 << 30, true}} {
		if err := v.Resize(ctx, id, step.size); (err == nil) != step.ok {
			t.Fatalf("resize to %d: %v, want ok=%v", step.size, err, step.ok)
		}
	}
	if got := v.Volumes()[id].SizeBytes; got != 3<<30 {
		t.Fatalf("size %d, want 3 GiB", got)
	}
	v.FailNext(OpResize, errors.New("boom"))
	if err := v.Resize(ctx, id, 4<<30); err == nil || v.Volumes()[id].SizeBytes != 3<<30 {
		t.Fatalf("injected failure: %v, size %d", err, v.Volumes()[id].SizeBytes)
	}
}
