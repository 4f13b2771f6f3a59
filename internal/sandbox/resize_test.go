package sandbox_test

import (
	"errors"
	"testing"

	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

// TestResize: a running sandbox's volume grows, its row records the size,
// and the runtime grows the filesystem once; a failed online grow leaves
// the volume and row grown and says the filesystem grows at restart; the
// same size again retries the grow; a failed volume grow changes nothing.
func TestResize(t *testing.T) {
	e := newEnv(t)
	e.run(t)
	sb := e.createRunning(t)
	ctx := ctxT(t)
	got, err := e.svc.Resize(ctx, sb.ID, 10<<30)
	if err != nil || got.DiskBytes != 10<<30 || e.vol.Volumes()[sb.ID].SizeBytes != 10<<30 || e.rt.Grown(sb.ID) != 1 {
		t.Fatalf("resize: %v, row %d, volume %d, grown %d", err, got.DiskBytes, e.vol.Volumes()[sb.ID].SizeBytes, e.rt.Grown(sb.ID))
	}
	e.rt.FailNext(rtmock.OpGrow, errors.New("no capability"))
	if _, err := e.svc.Resize(ctx, sb.ID, 12<<30); !errors.Is(err, sandbox.ErrGrowAtRestart) {
		t.Fatalf("failed online grow: %v, want ErrGrowAtRestart", err)
	}
	if got := e.status(t, sb.ID); got.DiskBytes != 12<<30 || e.vol.Volumes()[sb.ID].SizeBytes != 12<<30 || e.rt.Grown(sb.ID) != 1 {
		t.Fatalf("after a failed online grow: row %d, volume %d, grown %d", got.DiskBytes, e.vol.Volumes()[sb.ID].SizeBytes, e.rt.Grown(sb.ID))
	}
	if _, err := e.svc.Resize(ctx, sb.ID, 12<<30); err != nil || e.rt.Grown(sb.ID) != 2 {
		t.Fatalf("retry at the same size: %v, grown %d", err, e.rt.Grown(sb.ID))
	}
	e.vol.FailNext(stmock.OpResize, errors.New("pool full"))
	if _, err := e.svc.Resize(ctx, sb.ID, 14<<30); err == nil {
		t.Fatal("failed volume grow succeeded")
	}
	if got := e.status(t, sb.ID); got.DiskBytes != 12<<30 || e.rt.Grown(sb.ID) != 2 {
		t.Fatalf("after a failed volume grow: row %d, grown %d", got.DiskBytes, e.rt.Grown(sb.ID))
	}
	var fe *sandbox.FieldError
	if _, err := e.svc.Resize(ctx, sb.ID, 1<<30); !errors.As(err, &fe) || fe.Field != "sizeGb" {
		t.Fatalf("shrink: %v, want a FieldError on sizeGb", err)
	}
}
