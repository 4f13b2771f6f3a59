package store

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLeaderLeaseExpiryAndTakeover(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	t0 := time.Date(2026, 12, 3, 5, 0, 0, 0, time.UTC)
	fixedClock(s, t0)
	const ttl = 10 * time.Second

	if won, cur, err := s.AcquireLeader(ctx, "reconciler", "a", ttl); err != nil || !won || cur.Holder != "a" || !cur.ExpiresAt.Equal(t0.Add(ttl)) {
		t.Fatalf("a's first acquire = %v %+v %v, want a leading until t0+ttl", won, cur, err)
	}
	if won, cur, err := s.AcquireLeader(ctx, "reconciler", "b", ttl); err != nil || won || cur.Holder != "a" {
		t.Fatalf("b while a leads = %v %+v %v, want refused, a named", won, cur, err)
	}
	// Another job is another lease.
	if won, _, err := s.AcquireLeader(ctx, "other", "b", ttl); err != nil || !won {
		t.Fatalf("b on another name = %v %v, want won", won, err)
	}
	fixedClock(s, t0.Add(ttl-time.Second))
	if won, cur, err := s.AcquireLeader(ctx, "reconciler", "a", ttl); err != nil || !won || !cur.ExpiresAt.Equal(t0.Add(2*ttl-time.Second)) {
		t.Fatalf("a's renewal = %v %+v %v, want renewed", won, cur, err)
	}
	fixedClock(s, t0.Add(2*ttl-2*time.Second))
	if won, _, _ := s.AcquireLeader(ctx, "reconciler", "b", ttl); won {
		t.Fatal("b took over a renewed lease")
	}
	// a stops renewing (crashed): b takes over once the lease has run out.
	fixedClock(s, t0.Add(2*ttl))
	if won, cur, err := s.AcquireLeader(ctx, "reconciler", "b", ttl); err != nil || !won || cur.Holder != "b" {
		t.Fatalf("b after expiry = %v %+v %v, want takeover", won, cur, err)
	}
	if won, _, _ := s.AcquireLeader(ctx, "reconciler", "a", ttl); won {
		t.Fatal("a came back and took the lease from a live b")
	}
	// Release by a non-holder is a no-op; by the holder, a hands-over at once.
	if err := s.ReleaseLeader(ctx, "reconciler", "a"); err != nil {
		t.Fatal(err)
	}
	if won, _, _ := s.AcquireLeader(ctx, "reconciler", "a", ttl); won {
		t.Fatal("a's release of b's lease freed it")
	}
	if err := s.ReleaseLeader(ctx, "reconciler", "b"); err != nil {
		t.Fatal(err)
	}
	if won, _, err := s.AcquireLeader(ctx, "reconciler", "a", ttl); err != nil || !won {
		t.Fatalf("a after b's release = %v %v, want won", won, err)
	}
	if _, _, err := s.AcquireLeader(ctx, "", "a", ttl); err == nil {
		t.Error("empty name accepted")
	}
}

// However many managers race for a free lease, exactly one wins it.
func TestLeaderLeaseOneWinner(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			won, _, err := s.AcquireLeader(ctx, "reconciler", sbID(i), time.Minute)
			if err != nil {
				t.Error(err)
			}
			if won {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Fatalf("%d winners, want 1", n)
	}
}

// Of managers racing to write a setting first (the secrets key check),
// exactly one wins, and the value is the winner's.
func TestPutSettingIfAbsentHasOneWinner(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	var wins atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			won, err := s.PutSettingIfAbsent(ctx, "race", i)
			if err != nil {
				t.Error(err)
				return
			}
			if won {
				wins.Add(1)
				winner.Store(i)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d winners, want 1", wins.Load())
	}
	var got int
	if ok, err := s.GetSetting(ctx, "race", &got); err != nil || !ok || got != winner.Load().(int) {
		t.Fatalf("setting = %d %v %v, want the winner's %v", got, ok, err, winner.Load())
	}
	if won, err := s.PutSettingIfAbsent(ctx, "race", 99); err != nil || won {
		t.Fatalf("a later put = %v %v, want refused", won, err)
	}
}
