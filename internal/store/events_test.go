package store

import (
	"context"
	"encoding/json"
	"reflect"
	"strconv"
	"sync"
	"testing"
)

func appendN(t *testing.T, s *Store, n int) []Event {
	t.Helper()
	var out []Event
	for i := range n {
		ev, err := s.AppendEvent(context.Background(), Event{
			Type: "sandbox.status", SandboxID: sbID(i), Data: json.RawMessage(`{"i":` + strconv.Itoa(i) + `}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func eventIDs(evs []Event) []int64 {
	ids := make([]int64, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	return ids
}

func TestAppendEventRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd)
	tests := []struct {
		name string
		in   Event
	}{
		{"object", Event{Type: "sandbox.created", SandboxID: sbID(1), Data: json.RawMessage(`{"status":"creating","n":[1,2]}`)}},
		{"no data", Event{Type: "system.ping"}},
		{"explicit time", Event{Type: "x", Data: json.RawMessage(`"s"`), CreatedAt: odd.Add(-1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.AppendEvent(ctx, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			wantAt := tt.in.CreatedAt
			if wantAt.IsZero() {
				wantAt = odd
			}
			if got.ID == 0 || !got.CreatedAt.Equal(wantAt) {
				t.Errorf("AppendEvent = %+v", got)
			}
			stored, err := s.EventsSince(ctx, got.ID-1, 1)
			if err != nil || len(stored) != 1 {
				t.Fatalf("EventsSince = %+v, %v", stored, err)
			}
			if !reflect.DeepEqual(stored[0], got) {
				t.Errorf("stored %+v, returned %+v", stored[0], got)
			}
		})
	}
	if _, err := s.AppendEvent(ctx, Event{Type: "bad", Data: json.RawMessage(`{`)}); err == nil {
		t.Error("invalid JSON data accepted")
	}
	if _, err := s.AppendEvent(ctx, Event{}); err == nil {
		t.Error("event without type accepted")
	}
}

func TestEventsSinceAndTrim(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if id, err := s.OldestEventID(ctx); err != nil || id != 0 {
		t.Fatalf("OldestEventID on empty = %d, %v; want 0", id, err)
	}
	evs := appendN(t, s, 10)
	ids := eventIDs(evs)
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("ids not increasing: %v", ids)
		}
	}

	since := []struct {
		name  string
		after int64
		limit int
		want  []int64
	}{
		{"all", 0, 0, ids},
		{"limited", 0, 3, ids[:3]},
		{"after middle", ids[4], 0, ids[5:]},
		{"after middle limited", ids[4], 2, ids[5:7]},
		{"after last", ids[9], 10, []int64{}},
		{"negative limit is no limit", ids[7], -5, ids[8:]},
	}
	for _, tt := range since {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.EventsSince(ctx, tt.after, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(eventIDs(got), tt.want) {
				t.Errorf("got %v, want %v", eventIDs(got), tt.want)
			}
		})
	}

	if err := s.TrimEvents(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if id, err := s.OldestEventID(ctx); err != nil || id != ids[6] {
		t.Errorf("OldestEventID after trim = %d, %v; want %d", id, err, ids[6])
	}
	left, err := s.EventsSince(ctx, 0, 0)
	if err != nil || !reflect.DeepEqual(eventIDs(left), ids[6:]) {
		t.Errorf("after TrimEvents(4): %v, %v; want %v", eventIDs(left), err, ids[6:])
	}
	if err := s.TrimEvents(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.EventsSince(ctx, 0, 0); len(n) != 4 {
		t.Errorf("TrimEvents(more than stored) removed events: %d left", len(n))
	}
	if err := s.TrimEvents(ctx, -1); err == nil {
		t.Error("negative keep accepted")
	}

	// Trimming everything must not let ids restart: resuming clients rely on it.
	if err := s.TrimEvents(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if id, _ := s.OldestEventID(ctx); id != 0 {
		t.Errorf("OldestEventID after trimming all = %d", id)
	}
	next := appendN(t, s, 1)[0]
	if next.ID <= ids[9] {
		t.Errorf("id after trim-all = %d, not above %d", next.ID, ids[9])
	}
}

func TestAppendEventConcurrentIDsUnique(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	const n = 40
	var (
		mu   sync.Mutex
		seen = map[int64]bool{}
		wg   sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, err := s.AppendEvent(ctx, Event{Type: "t"})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[ev.ID] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("%d distinct ids for %d events", len(seen), n)
	}
}

func TestSettings(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	type limits struct {
		MaxSandboxes int               `json:"maxSandboxes"`
		Images       []string          `json:"images"`
		Labels       map[string]string `json:"labels"`
	}
	want := limits{MaxSandboxes: 20, Images: []string{"dev-base", "node"}, Labels: map[string]string{"a": "b"}}

	var missing limits
	ok, err := s.GetSetting(ctx, "limits", &missing)
	if err != nil || ok {
		t.Fatalf("GetSetting(unset) = %v, %v; want false", ok, err)
	}
	if err := s.PutSetting(ctx, "limits", want); err != nil {
		t.Fatal(err)
	}
	var got limits
	if ok, err := s.GetSetting(ctx, "limits", &got); err != nil || !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("GetSetting = %+v, %v, %v; want %+v", got, ok, err, want)
	}

	// Overwrite, with a different JSON type.
	if err := s.PutSetting(ctx, "limits", 7); err != nil {
		t.Fatal(err)
	}
	var n int
	if ok, err := s.GetSetting(ctx, "limits", &n); err != nil || !ok || n != 7 {
		t.Errorf("after overwrite = %d, %v, %v", n, ok, err)
	}
	var wrongType limits
	if _, err := s.GetSetting(ctx, "limits", &wrongType); err == nil {
		t.Error("decoding into the wrong type succeeded")
	}
	if err := s.PutSetting(ctx, "bad", make(chan int)); err == nil {
		t.Error("unencodable value accepted")
	}
	if err := s.PutSetting(ctx, "", 1); err == nil {
		t.Error("empty key accepted")
	}
}
