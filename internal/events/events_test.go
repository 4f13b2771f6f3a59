package events

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"atelier/internal/store"
)

func newBus(t *testing.T) (*Bus, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return New(st, nil), st
}

func publishN(t *testing.T, b *Bus, n int) []store.Event {
	t.Helper()
	var out []store.Event
	for i := range n {
		ev, err := b.Publish(context.Background(), SandboxUpdated, "aaaaaaaaaaaa", map[string]int{"n": i})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestPublishPersistsAndDelivers(t *testing.T) {
	b, st := newBus(t)
	live, cancel := b.Subscribe()
	defer cancel()
	ev, err := b.Publish(context.Background(), SandboxCreated, "abcdefghijkl", map[string]string{"id": "abcdefghijkl"})
	if err != nil {
		t.Fatal(err)
	}
	got := <-live
	if got.ID != ev.ID || got.Type != SandboxCreated || got.SandboxID != "abcdefghijkl" {
		t.Fatalf("live event = %+v, want %+v", got, ev)
	}
	var data map[string]string
	if err := json.Unmarshal(got.Data, &data); err != nil || data["id"] != "abcdefghijkl" {
		t.Fatalf("data = %s (%v)", got.Data, err)
	}
	stored, err := st.EventsSince(context.Background(), 0, 0)
	if err != nil || len(stored) != 1 || stored[0].ID != ev.ID {
		t.Fatalf("stored = %+v, %v", stored, err)
	}
}

func TestPublishRejectsUnencodableData(t *testing.T) {
	b, _ := newBus(t)
	if _, err := b.Publish(context.Background(), SandboxUpdated, "x", func() {}); err == nil {
		t.Fatal("Publish accepted data that cannot be JSON")
	}
}

// A client that subscribes then replays, while publishers keep going, sees
// every event exactly once and in order.
func TestSubscribeReplayNoLossNoDuplicates(t *testing.T) {
	b, _ := newBus(t)
	before := publishN(t, b, 30)
	resumeAfter := before[9].ID // the client saw the first 10

	const during = 200
	var wg sync.WaitGroup
	start := make(chan struct{})
	wg.Go(func() {
		<-start
		for i := range during {
			if _, err := b.Publish(context.Background(), SandboxUpdated, "bbbbbbbbbbbb", i); err != nil {
				t.Error(err)
				return
			}
		}
	})

	close(start)
	live, cancel := b.Subscribe()
	defer cancel()
	seen := map[int64]int{}
	last := resumeAfter
	var order []int64
	for {
		page, gap, err := b.Replay(context.Background(), last, 7) // small pages exercise paging
		if err != nil {
			t.Fatal(err)
		}
		if gap {
			t.Fatal("gap reported without a trim")
		}
		for _, ev := range page {
			seen[ev.ID]++
			order = append(order, ev.ID)
			last = ev.ID
		}
		if len(page) < 7 {
			break
		}
	}
	wg.Wait()
	want := int64(len(before) + during)
	timeout := time.After(10 * time.Second)
	for last < want {
		select {
		case ev, ok := <-live:
			if !ok {
				t.Fatal("subscriber dropped")
			}
			if ev.ID <= last {
				continue
			}
			seen[ev.ID]++
			order = append(order, ev.ID)
			last = ev.ID
		case <-timeout:
			t.Fatalf("stuck at event %d of %d", last, want)
		}
	}
	for id := resumeAfter + 1; id <= want; id++ {
		if seen[id] != 1 {
			t.Fatalf("event %d seen %d times", id, seen[id])
		}
	}
	for i := 1; i < len(order); i++ {
		if order[i] <= order[i-1] {
			t.Fatalf("out of order: %d after %d", order[i], order[i-1])
		}
	}
	if len(seen) != int(want-resumeAfter) {
		t.Fatalf("saw %d events, want %d", len(seen), want-resumeAfter)
	}
}

func TestReplayGapAfterTrim(t *testing.T) {
	b, _ := newBus(t)
	evs := publishN(t, b, 10)
	b.keep = 4
	if err := b.Trim(context.Background()); err != nil {
		t.Fatal(err)
	}
	oldest := evs[6].ID // the newest 4 are evs[6:]
	tests := []struct {
		name    string
		after   int64
		gap     bool
		firstID int64
		n       int
	}{
		{"fresh client: no position, no gap", 0, false, oldest, 4},
		{"position trimmed away", evs[2].ID, true, oldest, 4},
		{"position just before the oldest", evs[5].ID, false, oldest, 4},
		{"position inside history", evs[7].ID, false, evs[8].ID, 2},
		{"up to date", evs[9].ID, false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, gap, err := b.Replay(context.Background(), tc.after, 100)
			if err != nil {
				t.Fatal(err)
			}
			if gap != tc.gap {
				t.Errorf("gap = %v, want %v", gap, tc.gap)
			}
			if len(got) != tc.n {
				t.Fatalf("got %d events, want %d", len(got), tc.n)
			}
			if tc.n > 0 && got[0].ID != tc.firstID {
				t.Errorf("first id = %d, want %d", got[0].ID, tc.firstID)
			}
		})
	}
}

func TestReplayGapOnEmptyHistory(t *testing.T) {
	b, _ := newBus(t)
	_, gap, err := b.Replay(context.Background(), 42, 10)
	if err != nil || !gap {
		t.Fatalf("position on an empty history: gap = %v, err = %v; want a gap", gap, err)
	}
}

func TestSlowSubscriberDroppedWithoutBlocking(t *testing.T) {
	b, _ := newBus(t)
	b.buf = 3
	slow, cancelSlow := b.Subscribe()
	b.buf = 10 // room for every event: this one never falls behind
	fast, cancelFast := b.Subscribe()
	defer cancelFast()

	done := make(chan struct{})
	go func() {
		defer close(done)
		publishN(t, b, 10) // would block forever on a blocking send
	}()
	received := 0
	for received < 10 {
		select {
		case _, ok := <-fast:
			if !ok {
				t.Fatal("keeping-up subscriber dropped")
			}
			received++
		case <-time.After(10 * time.Second):
			t.Fatal("Publish blocked on a slow subscriber")
		}
	}
	<-done
	n := 0
	for range slow { // buffered events drain, then the channel is closed
		n++
	}
	if n != 3 {
		t.Fatalf("slow subscriber got %d events before the drop, want its buffer of 3", n)
	}
	if got := b.Subscribers(); got != 1 {
		t.Fatalf("subscribers = %d, want 1 after the drop", got)
	}
	cancelSlow() // must not double-close
	cancelSlow()
}

func TestRunTrims(t *testing.T) {
	b, st := newBus(t)
	publishN(t, b, 6)
	b.keep = 2
	b.every = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	deadline := time.After(10 * time.Second)
	for {
		evs, err := st.EventsSince(context.Background(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 2 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("Run never trimmed: %d events left", len(evs))
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	<-done
}
