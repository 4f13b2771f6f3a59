package store

import (
	"context"
	"testing"
	"time"
)

func TestPruneOpsKeepsWhatRecoveryNeedsAndABoundedHistory(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	live, gone := sbID(1), sbID(2)
	if err := s.InsertSandbox(ctx, newSandbox(1, "u", StatusRunning), 0); err != nil {
		t.Fatal(err)
	}
	appendOps := func(id string, n int, state string) (ids []int64) {
		for i := range n {
			opID, err := s.AppendOp(ctx, Op{SandboxID: id, Op: "start", Step: "boot", State: state, Detail: string(rune('a' + i%26))})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, opID)
		}
		return ids
	}
	openLive := appendOps(live, 1, OpIntent) // an open step, oldest of all
	appendOps(live, 30, OpDone)              // history
	openGone := appendOps(gone, 1, OpIntent) // a crash's open step of a deleted sandbox
	appendOps(gone, 10, OpDone)              // its history
	newest := appendOps(live, 5, OpDone)     // the latest operation
	r := OpRetention{PerSandbox: 8, Gone: 24 * time.Hour, GoneMax: 100}

	n, err := s.PruneOps(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if n != 29 { // 35 closed live steps keep 8, 10 closed gone ones keep 8
		t.Fatalf("pruned %d, want 29", n)
	}
	ops, _ := s.ListOps(ctx, live)
	if len(ops) != 9 || ops[0].ID != openLive[0] || ops[len(ops)-1].ID != newest[len(newest)-1] {
		t.Fatalf("live sandbox kept %d steps: %+v", len(ops), ops)
	}
	if got, _ := s.ListOps(ctx, gone); len(got) != 9 {
		t.Fatalf("a deleted sandbox's recent journal pruned early: %d left", len(got))
	}

	// A day later the deleted sandbox's history goes; its open step stays.
	clock = clock.Add(25 * time.Hour)
	if n, err := s.PruneOps(ctx, r); err != nil || n != 8 {
		t.Fatalf("pruned %d, %v; want 8", n, err)
	}
	got, _ := s.ListOps(ctx, gone)
	if len(got) != 1 || got[0].ID != openGone[0] {
		t.Fatalf("deleted sandbox kept %+v, want only its open step", got)
	}
	open, _ := s.OpenOps(ctx)
	if len(open) != 2 {
		t.Fatalf("open steps %+v, want both kept", open)
	}

	// GoneMax bounds deleted sandboxes' history whatever its age.
	for i := range 40 {
		appendOps(sbID(100+i), 5, OpDone)
	}
	if n, err := s.PruneOps(ctx, OpRetention{PerSandbox: 8, Gone: 24 * time.Hour, GoneMax: 50}); err != nil || n != 150 {
		t.Fatalf("pruned %d, %v; want 150", n, err)
	}
	if total, _ := s.CountOps(ctx); total != 9+1+50 {
		t.Fatalf("%d steps left, want 60", total)
	}
	if _, err := s.PruneOps(ctx, OpRetention{}); err == nil {
		t.Fatal("a retention keeping nothing was accepted")
	}
}

// TestPruneOpsInBatches prunes a backlog larger than one batch.
func TestPruneOpsInBatches(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	const n = pruneBatch*2 + 17
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := fmtTime(time.Now())
	for i := range n {
		if _, err := tx.ExecContext(ctx, `INSERT INTO sandbox_ops (sandbox_id, op, step, state, detail, created_at, updated_at)
			VALUES (?, 'create', 'boot', 'done', '', ?, ?)`, sbID(i%7), now, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := s.PruneOps(ctx, OpRetention{PerSandbox: 1, Gone: time.Hour, GoneMax: 3})
	if err != nil || got != n-3 {
		t.Fatalf("pruned %d, %v; want %d", got, err, n-3)
	}
}
