package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func newSandbox(n int, owner string, status Status) Sandbox {
	return Sandbox{ID: sbID(n), OwnerID: owner, Image: "dev-base", Status: status, Vcpus: 2, MemoryMB: 2048}
}

func TestInsertGetRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	want := Sandbox{
		ID: sbID(1), Name: "web", OwnerID: "u1", WorkspaceID: "ws0000000001", Image: "dev-base",
		Status: StatusRunning, Vcpus: 4, MemoryMB: 4096, IP: "172.16.0.2", MAC: "AA:FC:00:00:00:02",
		Error:     "",
		Timings:   map[string]float64{"clone": 12.5, "boot": 431.25, "agent": 0.001},
		CreatedAt: odd, UpdatedAt: odd.Add(time.Second),
	}
	if err := s.InsertSandbox(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSandbox(ctx, want.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Errorf("times: got %v/%v, want %v/%v", got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt)
	}
	if got.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt zone = %v, want UTC", got.CreatedAt.Location())
	}
	got.CreatedAt, got.UpdatedAt = want.CreatedAt, want.UpdatedAt
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}

	// nil and empty timings stay distinguishable.
	for i, timings := range []map[string]float64{nil, {}} {
		sb := newSandbox(10+i, "u1", StatusCreating)
		sb.Timings = timings
		if err := s.InsertSandbox(ctx, sb, 0); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetSandbox(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if (got.Timings == nil) != (timings == nil) || len(got.Timings) != 0 {
			t.Errorf("timings %#v came back as %#v", timings, got.Timings)
		}
	}
}

func TestInsertSandboxDefaultsTimes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd)
	if err := s.InsertSandbox(ctx, newSandbox(1, "u1", StatusCreating), 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSandbox(ctx, sbID(1))
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(odd) || !got.UpdatedAt.Equal(odd) {
		t.Errorf("times = %v/%v, want %v", got.CreatedAt, got.UpdatedAt, odd)
	}
}

func TestInsertSandboxRejects(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	existing := newSandbox(1, "u1", StatusCreating)
	existing.Name = "web"
	if err := s.InsertSandbox(ctx, existing, 0); err != nil {
		t.Fatal(err)
	}
	unnamed := newSandbox(2, "u1", StatusCreating)
	if err := s.InsertSandbox(ctx, unnamed, 0); err != nil {
		t.Fatal(err)
	}

	named := func(n int, owner, name string) Sandbox {
		sb := newSandbox(n, owner, StatusCreating)
		sb.Name = name
		return sb
	}
	tests := []struct {
		name    string
		sb      Sandbox
		wantErr error // nil: must succeed; errAny: any error
	}{
		{"duplicate id", named(1, "u2", "other"), ErrDuplicate},
		{"duplicate owner and name", named(3, "u1", "web"), ErrDuplicate},
		{"same name other owner", named(4, "u2", "web"), nil},
		{"second unnamed sandbox of owner", named(5, "u1", ""), nil},
		{"short id", Sandbox{ID: "abc", OwnerID: "u1", Status: StatusCreating}, errAny},
		{"unknown status", Sandbox{ID: sbID(6), OwnerID: "u1", Status: "paused"}, errAny},
		{"empty status", Sandbox{ID: sbID(7), OwnerID: "u1"}, errAny},
	}
	// The message says which constraint was hit: it reaches the API caller.
	if err := s.InsertSandbox(ctx, named(8, "u1", "web"), 0); err == nil || !strings.Contains(err.Error(), `name "web"`) {
		t.Errorf("duplicate name error = %v, want it to name \"web\"", err)
	}
	if err := s.InsertSandbox(ctx, named(1, "u9", "x"), 0); err == nil || !strings.Contains(err.Error(), "id "+sbID(1)) {
		t.Errorf("duplicate id error = %v, want it to name the id", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.InsertSandbox(ctx, tt.sb, 0)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr == errAny && err == nil:
				t.Fatal("accepted")
			case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestInsertSandboxLimitIsAtomic(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	// Non-active rows must not count against the limit.
	for i, st := range []Status{StatusStopped, StatusError, StatusDestroying} {
		if err := s.InsertSandbox(ctx, newSandbox(900+i, "u0", st), 1); err != nil {
			t.Fatal(err)
		}
	}

	const n, limit = 50, 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = s.InsertSandbox(ctx, newSandbox(i, fmt.Sprintf("u%d", i%3), StatusCreating), limit)
		}()
	}
	close(start)
	wg.Wait()

	var ok, limited int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrLimit):
			limited++
		default:
			t.Errorf("insert %d: unexpected error %v", i, err)
		}
	}
	if ok != limit || limited != n-limit {
		t.Errorf("succeeded %d, limited %d; want %d and %d", ok, limited, limit, n-limit)
	}
	active, err := s.CountSandboxes(ctx, ActiveStatuses...)
	if err != nil || active != limit {
		t.Errorf("active = %d, %v; want %d", active, err, limit)
	}

	// A stopped sandbox may still be recorded when the host is full.
	if err := s.InsertSandbox(ctx, newSandbox(999, "u0", StatusStopped), limit); err != nil {
		t.Errorf("non-active insert at the limit: %v", err)
	}
	// limit <= 0 means no limit.
	if err := s.InsertSandbox(ctx, newSandbox(1000, "u0", StatusCreating), 0); err != nil {
		t.Errorf("insert with no limit: %v", err)
	}
}

func TestTransition(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		start     Status
		active    int // other active sandboxes present
		from      []Status
		to        Status
		limit     int
		wantErr   error
		wantState Status // status stored afterwards
	}{
		{"allowed", StatusCreating, 0, []Status{StatusCreating}, StatusRunning, 0, nil, StatusRunning},
		{"one of several", StatusStopped, 0, []Status{StatusRunning, StatusStopped}, StatusDestroying, 0, nil, StatusDestroying},
		{"conflict", StatusRunning, 0, []Status{StatusStopped}, StatusStarting, 0, ErrConflict, StatusRunning},
		{"empty from", StatusRunning, 0, nil, StatusStopping, 0, ErrConflict, StatusRunning},
		{"start at limit", StatusStopped, 2, []Status{StatusStopped}, StatusStarting, 2, ErrLimit, StatusStopped},
		{"start under limit", StatusStopped, 1, []Status{StatusStopped}, StatusStarting, 2, nil, StatusStarting},
		{"start with no limit", StatusStopped, 5, []Status{StatusStopped}, StatusStarting, 0, nil, StatusStarting},
		{"negative limit means none", StatusStopped, 5, []Status{StatusStopped}, StatusStarting, -1, nil, StatusStarting},
		// Already active: the sandbox is counted in the limit, moving it does not add load.
		{"active to active over limit", StatusStarting, 5, []Status{StatusStarting}, StatusRunning, 1, nil, StatusRunning},
		{"active to inactive over limit", StatusRunning, 5, []Status{StatusRunning}, StatusStopped, 1, nil, StatusStopped},
		{"error to destroying at limit", StatusError, 3, []Status{StatusError}, StatusDestroying, 3, nil, StatusDestroying},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t)
			fixedClock(s, odd)
			if err := s.InsertSandbox(ctx, newSandbox(1, "u1", tt.start), 0); err != nil {
				t.Fatal(err)
			}
			for i := range tt.active {
				if err := s.InsertSandbox(ctx, newSandbox(100+i, "u2", StatusRunning), 0); err != nil {
					t.Fatal(err)
				}
			}
			later := odd.Add(time.Minute)
			fixedClock(s, later)
			got, err := s.Transition(ctx, sbID(1), tt.from, tt.to, tt.limit, func(sb *Sandbox) {
				sb.Error = "mutated"
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			stored, gerr := s.GetSandbox(ctx, sbID(1))
			if gerr != nil {
				t.Fatal(gerr)
			}
			if stored.Status != tt.wantState {
				t.Errorf("stored status = %s, want %s", stored.Status, tt.wantState)
			}
			if err != nil {
				if stored.Error != "" || !stored.UpdatedAt.Equal(odd) {
					t.Errorf("refused transition still wrote: %+v", stored)
				}
				return
			}
			if got.Status != tt.to || got.Error != "mutated" || !got.UpdatedAt.Equal(later) || !got.CreatedAt.Equal(odd) {
				t.Errorf("returned %+v", got)
			}
			if !reflect.DeepEqual(got, stored) {
				t.Errorf("returned %+v, stored %+v", got, stored)
			}
		})
	}
}

func TestTransitionErrors(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.InsertSandbox(ctx, newSandbox(1, "u1", StatusRunning), 0); err != nil {
		t.Fatal(err)
	}

	_, err := s.Transition(ctx, sbID(1), []Status{StatusStopped}, StatusStarting, 0, nil)
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v (%T), want *ConflictError matching ErrConflict", err, err)
	}
	if *ce != (ConflictError{ID: sbID(1), Current: StatusRunning, To: StatusStarting}) {
		t.Errorf("ConflictError = %+v", *ce)
	}

	if _, err := s.Transition(ctx, sbID(2), []Status{StatusRunning}, StatusStopping, 0, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing sandbox: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Transition(ctx, sbID(1), []Status{StatusRunning}, "paused", 0, nil); err == nil {
		t.Error("transition to an unknown status accepted")
	}

	// mutate cannot change identity or status behind the caller's back.
	got, err := s.Transition(ctx, sbID(1), []Status{StatusRunning}, StatusStopping, 0, func(sb *Sandbox) {
		sb.ID, sb.Status, sb.CreatedAt = "hijacked0000", StatusRunning, time.Time{}
		sb.IP = "10.0.0.9"
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != sbID(1) || got.Status != StatusStopping || got.CreatedAt.IsZero() || got.IP != "10.0.0.9" {
		t.Errorf("Transition returned %+v", got)
	}

	// A panicking mutate must not wedge the single write connection.
	func() {
		defer func() { _ = recover() }()
		_, _ = s.Transition(ctx, sbID(1), []Status{StatusStopping}, StatusStopped, 0, func(*Sandbox) { panic("boom") })
	}()
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.Transition(ctx2, sbID(1), []Status{StatusStopping}, StatusStopped, 0, nil); err != nil {
		t.Errorf("store unusable after a panicking mutate: %v", err)
	}
}

func TestTransitionLimitIsAtomic(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	const n, limit = 30, 10
	for i := range n {
		if err := s.InsertSandbox(ctx, newSandbox(i, "u1", StatusStopped), 0); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Transition(ctx, sbID(i), []Status{StatusStopped}, StatusStarting, limit, nil)
		}()
	}
	wg.Wait()
	var ok int
	for _, err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, ErrLimit) {
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != limit {
		t.Errorf("%d starts succeeded, want %d", ok, limit)
	}
}

func TestUpdateSandbox(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd)
	a, b := newSandbox(1, "u1", StatusCreating), newSandbox(2, "u1", StatusCreating)
	a.Name, b.Name = "a", "b"
	for _, sb := range []Sandbox{a, b} {
		if err := s.InsertSandbox(ctx, sb, 0); err != nil {
			t.Fatal(err)
		}
	}
	later := odd.Add(time.Hour)
	fixedClock(s, later)
	got, err := s.UpdateSandbox(ctx, a.ID, func(sb *Sandbox) {
		sb.Status = StatusRunning // ignored: status moves only through Transition
		sb.IP, sb.MAC = "10.0.0.2", "aa:bb"
		sb.Timings = map[string]float64{"boot": 1.5}
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := s.GetSandbox(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, stored) {
		t.Errorf("returned %+v, stored %+v", got, stored)
	}
	if stored.Status != StatusCreating || stored.IP != "10.0.0.2" || stored.Timings["boot"] != 1.5 ||
		!stored.UpdatedAt.Equal(later) || !stored.CreatedAt.Equal(odd) {
		t.Errorf("stored %+v", stored)
	}

	if _, err := s.UpdateSandbox(ctx, a.ID, func(sb *Sandbox) { sb.Name = "b" }); !errors.Is(err, ErrDuplicate) {
		t.Errorf("rename onto a sibling: err = %v, want ErrDuplicate", err)
	}
	if _, err := s.UpdateSandbox(ctx, sbID(3), nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("update missing: err = %v, want ErrNotFound", err)
	}
}

func TestDeleteSandbox(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.InsertSandbox(ctx, newSandbox(1, "u1", StatusError), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox(ctx, sbID(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSandbox(ctx, sbID(1)); !errors.Is(err, ErrNotFound) {
		t.Errorf("get after delete: %v", err)
	}
	if err := s.DeleteSandbox(ctx, sbID(1)); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: err = %v, want ErrNotFound", err)
	}
}

func TestListAndCountSandboxes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	base := time.Date(2025, 1, 1, 0, 0, 5, 0, time.UTC)
	rows := []struct {
		n      int
		owner  string
		status Status
		at     time.Time
	}{
		// Fractions .1 and .12 sort wrongly as RFC3339Nano text.
		{1, "u1", StatusRunning, base.Add(120 * time.Millisecond)},
		{2, "u2", StatusRunning, base.Add(100 * time.Millisecond)},
		{3, "u1", StatusStopped, base},
		{5, "u1", StatusRunning, base.Add(time.Second)},
		{4, "u2", StatusError, base.Add(time.Second)}, // same time as 5: id breaks the tie
	}
	for _, r := range rows {
		sb := newSandbox(r.n, r.owner, r.status)
		sb.CreatedAt = r.at
		if err := s.InsertSandbox(ctx, sb, 0); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		filter SandboxFilter
		want   []int
	}{
		{"all", SandboxFilter{}, []int{3, 2, 1, 4, 5}},
		{"owner", SandboxFilter{OwnerID: "u1"}, []int{3, 1, 5}},
		{"status", SandboxFilter{Status: StatusRunning}, []int{2, 1, 5}},
		{"owner and status", SandboxFilter{OwnerID: "u2", Status: StatusRunning}, []int{2}},
		{"no match", SandboxFilter{OwnerID: "nobody"}, []int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ListSandboxes(ctx, tt.filter)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("nil slice")
			}
			ids := make([]string, len(got))
			want := make([]string, len(tt.want))
			for i, sb := range got {
				ids[i] = sb.ID
			}
			for i, n := range tt.want {
				want[i] = sbID(n)
			}
			if !reflect.DeepEqual(ids, want) {
				t.Errorf("got %v, want %v", ids, want)
			}
		})
	}

	counts := []struct {
		statuses []Status
		want     int
	}{
		{nil, 5},
		{[]Status{StatusRunning}, 3},
		{[]Status{StatusStopped, StatusError}, 2},
		{ActiveStatuses, 3},
		{[]Status{StatusDestroying}, 0},
	}
	for _, c := range counts {
		if got, err := s.CountSandboxes(ctx, c.statuses...); err != nil || got != c.want {
			t.Errorf("CountSandboxes(%v) = %d, %v; want %d", c.statuses, got, err, c.want)
		}
	}
}

func TestOpsJournal(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd)
	steps := []Op{
		{SandboxID: sbID(1), Op: "create", Step: "lease"},
		{SandboxID: sbID(1), Op: "create", Step: "volume", Detail: "lv sandbox-1"},
		{SandboxID: sbID(2), Op: "destroy", Step: "link", State: OpIntent},
		{SandboxID: sbID(1), Op: "create", Step: "boot"},
	}
	ids := make([]int64, len(steps))
	for i, op := range steps {
		id, err := s.AppendOp(ctx, op)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && id <= ids[i-1] {
			t.Fatalf("op ids not increasing: %v then %d", ids[:i], id)
		}
		ids[i] = id
	}
	later := odd.Add(time.Second)
	fixedClock(s, later)
	if err := s.SetOpState(ctx, ids[0], OpDone, "10.0.0.2"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOpState(ctx, ids[1], OpUndone, "rolled back"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOpState(ctx, ids[3], OpFailed, "agent timeout"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOpState(ctx, 99999, OpDone, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetOpState(missing) = %v, want ErrNotFound", err)
	}
	if err := s.SetOpState(ctx, ids[2], "maybe", ""); err == nil {
		t.Error("SetOpState accepted an unknown state")
	}
	if _, err := s.AppendOp(ctx, Op{SandboxID: sbID(1), Op: "create", Step: "x", State: "bogus"}); err == nil {
		t.Error("AppendOp accepted an unknown state")
	}

	list, err := s.ListOps(ctx, sbID(1))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ step, state, detail string }{
		{"lease", OpDone, "10.0.0.2"},
		{"volume", OpUndone, "rolled back"},
		{"boot", OpFailed, "agent timeout"},
	}
	if len(list) != len(want) {
		t.Fatalf("ListOps = %+v", list)
	}
	for i, w := range want {
		op := list[i]
		if op.Step != w.step || op.State != w.state || op.Detail != w.detail || op.Op != "create" ||
			!op.CreatedAt.Equal(odd) || !op.UpdatedAt.Equal(later) {
			t.Errorf("op %d = %+v, want %+v", i, op, w)
		}
	}

	open, err := s.OpenOps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 1 || open[0].ID != ids[2] || open[0].SandboxID != sbID(2) || open[0].State != OpIntent {
		t.Errorf("OpenOps = %+v, want only op %d", open, ids[2])
	}

	// The journal outlives the sandbox row: no foreign key.
	if err := s.InsertSandbox(ctx, newSandbox(2, "u1", StatusRunning), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox(ctx, sbID(2)); err != nil {
		t.Fatal(err)
	}
	if open, err := s.OpenOps(ctx); err != nil || len(open) != 1 {
		t.Errorf("journal lost with the sandbox row: %v, %v", open, err)
	}
}

func BenchmarkListSandboxes1000(b *testing.B) {
	ctx := context.Background()
	s := openTest(b)
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 1000 {
		sb := newSandbox(i, fmt.Sprintf("u%d", i%10), AllStatuses[i%len(AllStatuses)])
		sb.Name = fmt.Sprintf("sb-%d", i)
		sb.Timings = map[string]float64{"clone": 10, "boot": 300, "agent": 50}
		sb.CreatedAt = base.Add(time.Duration(i) * time.Millisecond)
		if err := s.InsertSandbox(ctx, sb, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		list, err := s.ListSandboxes(ctx, SandboxFilter{})
		if err != nil || len(list) != 1000 {
			b.Fatalf("ListSandboxes = %d, %v", len(list), err)
		}
	}
}

func TestListSandboxesNoTimings(t *testing.T) {
	st := openTest(t)
	ctx := context.Background()
	sb := newSandbox(1, "u1", StatusRunning)
	sb.Timings = map[string]float64{"boot": 1.5}
	if err := st.InsertSandbox(ctx, sb, 0); err != nil {
		t.Fatal(err)
	}
	full, err := st.ListSandboxes(ctx, SandboxFilter{})
	if err != nil || len(full) != 1 || full[0].Timings["boot"] != 1.5 {
		t.Fatalf("full list: %v %+v", err, full)
	}
	lean, err := st.ListSandboxes(ctx, SandboxFilter{NoTimings: true})
	if err != nil || len(lean) != 1 || lean[0].Timings != nil || lean[0].ID != sb.ID {
		t.Fatalf("lean list: %v %+v", err, lean)
	}
}
