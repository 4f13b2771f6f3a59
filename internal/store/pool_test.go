package store

import (
	"context"
	"errors"
	"testing"
)

// ClaimPooled gives one pooled sandbox to exactly one of many racing
// claimers, checks the claimer's quotas, and never claims a row that is no
// longer the pool's or not running; TransitionOwned never retires a row
// someone claimed.
func TestClaimPooled(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	sb := newSandbox(1, PoolOwner, StatusRunning)
	sb.DiskBytes = 5 << 30
	if err := s.InsertSandbox(ctx, sb, 0); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 20)
	done := make(chan int, 20)
	for i := range 20 {
		go func() {
			_, errs[i] = s.ClaimPooled(ctx, sb.ID, Quotas{}, []string{"alice", "bob"}[i%2], func(x *Sandbox) { x.Name = "warm" })
			done <- i
		}()
	}
	for range 20 {
		<-done
	}
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Fatalf("claim: %v, want a conflict for the losers", err)
		}
	}
	got, err := s.GetSandbox(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if won != 1 || got.Status != StatusCreating || got.Name != "warm" || got.OwnerID == PoolOwner {
		t.Fatalf("%d claims won; row %+v", won, got)
	}
	// The winner's row is no longer the pool's: not retired, not claimed again.
	if _, err := s.TransitionOwned(ctx, sb.ID, PoolOwner, []Status{StatusCreating, StatusRunning}, StatusDestroying); !errors.Is(err, ErrConflict) {
		t.Fatalf("retire a claimed row: %v, want a conflict", err)
	}
	if _, err := s.ClaimPooled(ctx, sb.ID, Quotas{}, "carol", nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("claim a claimed row: %v", err)
	}
	if _, err := s.ClaimPooled(ctx, sb.ID, Quotas{}, PoolOwner, nil); err == nil {
		t.Fatal("the pool claimed for itself")
	}

	// Quotas: carol at her sandboxes quota cannot claim, and the row stays pooled.
	other := newSandbox(2, PoolOwner, StatusRunning)
	other.DiskBytes = 5 << 30
	if err := s.InsertSandbox(ctx, other, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertSandbox(ctx, newSandbox(3, "carol", StatusStopped), 0); err != nil {
		t.Fatal(err)
	}
	var qe *QuotaError
	if _, err := s.ClaimPooled(ctx, other.ID, Quotas{Sandboxes: 1}, "carol", nil); !errors.As(err, &qe) || qe.Quota != QuotaSandboxes {
		t.Fatalf("claim past the sandboxes quota: %v", err)
	}
	if _, err := s.ClaimPooled(ctx, other.ID, Quotas{DiskBytes: 4 << 30}, "dave", nil); !errors.As(err, &qe) || qe.Quota != QuotaDisk {
		t.Fatalf("claim past the disk quota: %v", err)
	}
	if g, _ := s.GetSandbox(ctx, other.ID); g.OwnerID != PoolOwner || g.Status != StatusRunning {
		t.Fatalf("a refused claim changed the row: %+v", g)
	}
	// A pooled row that is not running (mid-fill) cannot be claimed; the
	// pool's own row can be retired.
	if _, err := s.Transition(ctx, other.ID, []Status{StatusRunning}, StatusError, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimPooled(ctx, other.ID, Quotas{}, "dave", nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("claim an errored pooled row: %v", err)
	}
	if r, err := s.TransitionOwned(ctx, other.ID, PoolOwner, []Status{StatusError}, StatusDestroying); err != nil || r.Status != StatusDestroying {
		t.Fatalf("retire the pool's row: %+v %v", r, err)
	}
}
