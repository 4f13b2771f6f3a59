package store

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// race runs n inserts (or transitions) at once and counts successes and
// quota refusals; any other error fails the test.
func race(t *testing.T, n int, op func(i int) error) (ok int, refused map[string]int) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = op(i)
		})
	}
	close(start)
	wg.Wait()
	refused = map[string]int{}
	for i, err := range errs {
		var qe *QuotaError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &qe) && errors.Is(err, ErrQuota):
			refused[qe.Quota]++
		default:
			t.Errorf("op %d: unexpected error %v", i, err)
		}
	}
	return ok, refused
}

func TestQuotasAreAtomicUnderConcurrentCreates(t *testing.T) {
	const gi = int64(1) << 30
	tests := []struct {
		name     string
		q        Quotas
		disk     int64
		existing []Status // the owner's rows before the race
		wantOK   int
		want     string
	}{
		{name: "running", q: Quotas{Running: 5}, wantOK: 5, want: QuotaRunning},
		{name: "running counts every active status",
			q: Quotas{Running: 5}, existing: []Status{StatusRunning, StatusStarting, StatusStopping, StatusStopped, StatusError},
			wantOK: 2, want: QuotaRunning},
		{name: "sandboxes count stopped and failed ones",
			q: Quotas{Sandboxes: 10}, existing: []Status{StatusStopped, StatusStopped, StatusError},
			wantOK: 7, want: QuotaSandboxes},
		{name: "disk", q: Quotas{DiskBytes: 50 * gi}, disk: 5 * gi, existing: []Status{StatusStopped},
			wantOK: 9, want: QuotaDisk},
		{name: "disk that does not divide", q: Quotas{DiskBytes: 20 * gi}, disk: 7 * gi, wantOK: 2, want: QuotaDisk},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openTest(t)
			for i, st := range tc.existing {
				sb := newSandbox(500+i, "alice", st)
				sb.DiskBytes = tc.disk
				if err := s.InsertSandbox(ctx, sb, 0); err != nil {
					t.Fatal(err)
				}
			}
			// Another user's sandboxes count for them, not for alice.
			for i := range 20 {
				sb := newSandbox(700+i, "bob", StatusRunning)
				sb.DiskBytes = 100 * gi
				if err := s.InsertSandbox(ctx, sb, 0); err != nil {
					t.Fatal(err)
				}
			}
			ok, refused := race(t, 40, func(i int) error {
				sb := newSandbox(i, "alice", StatusCreating)
				sb.DiskBytes = tc.disk
				return s.InsertSandboxWithin(ctx, sb, Limits{Quotas: tc.q})
			})
			if ok != tc.wantOK || refused[tc.want] != 40-tc.wantOK {
				t.Fatalf("%d created, refused %v; want %d created and %d refused by %s", ok, refused, tc.wantOK, 40-tc.wantOK, tc.want)
			}
			if err := s.InsertSandboxWithin(ctx, newSandbox(999, "carol", StatusCreating), Limits{Quotas: tc.q}); err != nil {
				t.Fatalf("another user is not held by alice's quota: %v", err)
			}
		})
	}
}

func TestRunningQuotaIsAtomicUnderConcurrentStarts(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	const n, quota = 12, 5
	for i := range n {
		if err := s.InsertSandbox(ctx, newSandbox(i, "alice", StatusStopped), 0); err != nil {
			t.Fatal(err)
		}
	}
	running := newSandbox(100, "alice", StatusRunning)
	if err := s.InsertSandbox(ctx, running, 0); err != nil {
		t.Fatal(err)
	}
	lim := Limits{Host: 100, Quotas: Quotas{Running: quota, Sandboxes: 1}}
	ok, refused := race(t, n, func(i int) error {
		_, err := s.TransitionWithin(ctx, sbID(i), []Status{StatusStopped}, StatusStarting, lim, nil)
		return err
	})
	// The sandboxes quota (already exceeded) does not stop a start: starting
	// adds no row and no disk.
	if ok != quota-1 || refused[QuotaRunning] != n-quota+1 {
		t.Fatalf("%d started, refused %v; want %d and %d by %s", ok, refused, quota-1, n-quota+1, QuotaRunning)
	}
	// Moves between active states, or out of them, are never refused.
	if _, err := s.TransitionWithin(ctx, running.ID, []Status{StatusRunning}, StatusStopping, lim, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TransitionWithin(ctx, running.ID, []Status{StatusStopping}, StatusStopped, lim, nil); err != nil {
		t.Fatal(err)
	}
	// That freed a slot, for one of the refused.
	stopped, err := s.ListSandboxes(ctx, SandboxFilter{OwnerID: "alice", Status: StatusStopped})
	if err != nil || len(stopped) != n-quota+2 {
		t.Fatalf("stopped: %d, %v", len(stopped), err)
	}
	if _, err := s.TransitionWithin(ctx, stopped[0].ID, []Status{StatusStopped}, StatusStarting, lim, nil); err != nil {
		t.Fatalf("start after a stop freed a slot: %v", err)
	}
	if _, err := s.TransitionWithin(ctx, stopped[1].ID, []Status{StatusStopped}, StatusStarting, lim, nil); !errors.Is(err, ErrQuota) {
		t.Fatalf("second start: %v, want ErrQuota", err)
	}
}

func TestQuotaBeforeHostLimitAndMessages(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.InsertSandbox(ctx, newSandbox(1, "alice", StatusRunning), 0); err != nil {
		t.Fatal(err)
	}
	err := s.InsertSandboxWithin(ctx, newSandbox(2, "alice", StatusCreating), Limits{Host: 1, Quotas: Quotas{Running: 1}})
	var qe *QuotaError
	if !errors.As(err, &qe) || qe.Quota != QuotaRunning || qe.Limit != 1 || qe.Used != 1 {
		t.Fatalf("err = %v, want the running quota", err)
	}
	if !errors.Is(err, ErrQuota) || errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v: want ErrQuota only", err)
	}
	if got := qe.Error(); got != "quota quotas.runningPerUser exceeded: 1 of 1 running sandboxes in use" {
		t.Errorf("message %q", got)
	}
	d := &QuotaError{Quota: QuotaDisk, Limit: 50 << 30, Used: 48 << 30, Requested: 5 << 29}
	if got := d.Error(); got != "quota quotas.diskGbPerUser exceeded: 48 GiB of 50 GiB in use, and this sandbox's disk needs 2.5 GiB more" {
		t.Errorf("message %q", got)
	}
	// Bob is under his quota; the host is full.
	err = s.InsertSandboxWithin(ctx, newSandbox(3, "bob", StatusCreating), Limits{Host: 1, Quotas: Quotas{Running: 1}})
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
	// Zero quotas are unlimited.
	for i := range 5 {
		if err := s.InsertSandboxWithin(ctx, newSandbox(10+i, "alice", StatusCreating), Limits{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.InsertSandboxWithin(ctx, Sandbox{ID: sbID(30), OwnerID: "a", Status: StatusCreating, DiskBytes: -1}, Limits{}); err == nil {
		t.Fatal("negative disk accepted")
	}
}

func TestDiskAndDriverRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	sb := newSandbox(1, "alice", StatusCreating)
	sb.DiskBytes, sb.VolumeDriver = 5<<30, "file"
	if err := s.InsertSandbox(ctx, sb, 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSandbox(ctx, sb.ID)
	if err != nil || got.DiskBytes != 5<<30 || got.VolumeDriver != "file" {
		t.Fatalf("got %+v, %v", got, err)
	}
	got, err = s.UpdateSandbox(ctx, sb.ID, func(x *Sandbox) { x.VolumeDriver, x.DiskBytes = "lvm", 10<<30 })
	if err != nil || got.DiskBytes != 10<<30 || got.VolumeDriver != "lvm" {
		t.Fatalf("update: %+v, %v", got, err)
	}
	if _, err := s.UpdateSandbox(ctx, sb.ID, func(x *Sandbox) { x.VolumeDriver = "zfs" }); err == nil {
		t.Fatal("unknown volume driver stored")
	}
}
