package events

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"atelier/internal/store"
	"atelier/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopPostgres()
	os.Exit(code)
}

// Two managers on one Postgres: a subscriber of either replica sees every
// event, whichever replica published it, once each, in id order, woken by
// LISTEN/NOTIFY.
func TestReplicasSeeEachOthersEvents(t *testing.T) {
	url := testenv.PostgresDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *Bus {
		st, err := store.Open(ctx, t.TempDir(), store.WithDatabaseURL(url))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		b := New(st, nil)
		// No polling within the test: only LISTEN/NOTIFY (and a replica's
		// own Publish) can deliver.
		b.tailEvery = time.Hour
		return b
	}
	a, b := open(), open()
	ran := make(chan struct{}, 2)
	for _, bus := range []*Bus{a, b} {
		go func() { bus.Run(ctx); ran <- struct{}{} }()
	}
	t.Cleanup(func() { cancel(); <-ran; <-ran })

	liveA, cancelA := a.Subscribe()
	defer cancelA()
	liveB, cancelB := b.Subscribe()
	defer cancelB()

	var want []int64
	for i := range 10 {
		pub := a
		if i%3 == 0 {
			pub = b
		}
		ev, err := pub.Publish(ctx, SandboxUpdated, "aaaaaaaaaaaa", map[string]int{"n": i})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, ev.ID)
	}
	for name, live := range map[string]<-chan store.Event{"a": liveA, "b": liveB} {
		for _, id := range want {
			select {
			case ev := <-live:
				if ev.ID != id {
					t.Fatalf("replica %s: got event %d, want %d (order %v)", name, ev.ID, id, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("replica %s: event %d never arrived", name, id)
			}
		}
		select {
		case ev := <-live:
			t.Fatalf("replica %s: extra event %d", name, ev.ID)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Only the leader trims the shared table.
func TestOnlyTheLeaderTrims(t *testing.T) {
	b, st := newBus(t)
	b.keep = 2
	var leading atomic.Bool
	b.SetLeader(leading.Load)
	publishN(t, b, 5)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	if evs, _ := st.EventsSince(context.Background(), 0, 0); len(evs) != 5 {
		t.Fatalf("a follower trimmed: %d events left, want 5", len(evs))
	}
	leading.Store(true)
	ctx, cancel = context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	if evs, _ := st.EventsSince(context.Background(), 0, 0); len(evs) != 2 {
		t.Fatalf("the leader did not trim: %d events left, want 2", len(evs))
	}
}
