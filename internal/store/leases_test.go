package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// testMAC derives a MAC from the address, like the network package does.
func testMAC(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("aa:fc:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func allocateConcurrently(t *testing.T, s *Store, n int, prefix string, first, last netip.Addr) ([]Lease, []error) {
	t.Helper()
	leases, errs := make([]Lease, n), make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			leases[i], errs[i] = s.AllocateLease(context.Background(), fmt.Sprintf("%s%d", prefix, i), first, last, testMAC)
		}()
	}
	close(start)
	wg.Wait()
	return leases, errs
}

func TestAllocateLeaseConcurrent(t *testing.T) {
	s := openTest(t)
	first, last := addr("172.16.0.2"), addr("172.16.0.251") // 250 addresses
	leases, errs := allocateConcurrently(t, s, 200, "sb", first, last)

	seenIP, seenMAC := map[string]bool{}, map[string]bool{}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		a := addr(l.IP)
		if a.Less(first) || last.Less(a) {
			t.Errorf("lease %s outside the range", l.IP)
		}
		if seenIP[l.IP] || seenMAC[l.MAC] {
			t.Errorf("address %s / %s handed out twice", l.IP, l.MAC)
		}
		seenIP[l.IP], seenMAC[l.MAC] = true, true
		if l.MAC != testMAC(a) || l.SandboxID != fmt.Sprintf("sb%d", i) {
			t.Errorf("lease %d = %+v", i, l)
		}
	}
	// Lowest-first allocation means the 200 leases are exactly the first 200 addresses.
	all, err := s.ListLeases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 200 {
		t.Fatalf("ListLeases = %d leases, want 200", len(all))
	}
	want := first
	for _, l := range all {
		if l.IP != want.String() {
			t.Fatalf("ListLeases out of order or with a hole: got %s, want %s", l.IP, want)
		}
		want = want.Next()
	}
}

func TestAllocateLeaseExhaustion(t *testing.T) {
	s := openTest(t)
	first, last := addr("10.0.0.2"), addr("10.0.0.6") // 5 addresses
	_, errs := allocateConcurrently(t, s, 8, "sb", first, last)
	var ok, exhausted int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrExhausted):
			exhausted++
			if !strings.Contains(err.Error(), "10.0.0.2-10.0.0.6") {
				t.Errorf("exhaustion error %q does not name the range", err)
			}
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 5 || exhausted != 3 {
		t.Fatalf("ok %d, exhausted %d; want 5 and 3", ok, exhausted)
	}
}

func TestLeaseLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	first, last := addr("10.0.0.8"), addr("10.0.0.12")

	var got []Lease
	for _, id := range []string{"a", "b", "c"} {
		l, err := s.AllocateLease(ctx, id, first, last, testMAC)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	if got[0].IP != "10.0.0.8" || got[1].IP != "10.0.0.9" || got[2].IP != "10.0.0.10" {
		t.Fatalf("first leases = %+v", got)
	}

	// Idempotent per sandbox: a retried create step gets the same lease.
	again, err := s.AllocateLease(ctx, "b", first, last, testMAC)
	if err != nil || again != got[1] {
		t.Errorf("re-allocate b = %+v, %v; want %+v", again, err, got[1])
	}

	// Release frees the address; the next allocation reuses the lowest hole.
	if err := s.ReleaseLease(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, "a"); err != nil {
		t.Errorf("second release: %v", err)
	}
	if _, err := s.GetLease(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetLease after release = %v, want ErrNotFound", err)
	}
	d, err := s.AllocateLease(ctx, "d", first, last, testMAC)
	if err != nil || d.IP != "10.0.0.8" {
		t.Errorf("allocation after release = %+v, %v; want 10.0.0.8", d, err)
	}

	// Leases survive a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []Lease{got[1], got[2], d} {
		l, err := s.GetLease(ctx, want.SandboxID)
		if err != nil || l != want {
			t.Errorf("after reopen GetLease(%s) = %+v, %v; want %+v", want.SandboxID, l, err, want)
		}
	}
	e, err := s.AllocateLease(ctx, "e", first, last, testMAC)
	if err != nil || e.IP != "10.0.0.11" {
		t.Errorf("allocation after reopen = %+v, %v; want 10.0.0.11", e, err)
	}
}

func TestListLeasesNumericOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	first, last := addr("10.0.0.9"), addr("10.0.0.10")
	for _, id := range []string{"x", "y"} {
		if _, err := s.AllocateLease(ctx, id, first, last, testMAC); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].IP != "10.0.0.9" || all[1].IP != "10.0.0.10" {
		t.Errorf("ListLeases = %+v, want 10.0.0.9 before 10.0.0.10", all)
	}
}

func TestAllocateLeaseRejects(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	tests := []struct {
		name        string
		sandbox     string
		first, last netip.Addr
		mac         func(netip.Addr) string
	}{
		{"empty sandbox id", "", addr("10.0.0.2"), addr("10.0.0.3"), testMAC},
		{"nil mac", "sb", addr("10.0.0.2"), addr("10.0.0.3"), nil},
		{"ipv6", "sb", addr("fd00::2"), addr("fd00::3"), testMAC},
		{"reversed", "sb", addr("10.0.0.3"), addr("10.0.0.2"), testMAC},
		{"zero addr", "sb", netip.Addr{}, addr("10.0.0.2"), testMAC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.AllocateLease(ctx, tt.sandbox, tt.first, tt.last, tt.mac); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	// IPv4-mapped IPv6 is the same address space.
	l, err := s.AllocateLease(ctx, "mapped", addr("::ffff:10.0.0.2"), addr("::ffff:10.0.0.2"), testMAC)
	if err != nil || l.IP != "10.0.0.2" {
		t.Errorf("mapped range: %+v, %v", l, err)
	}
	// The top of the address space must not wrap around.
	l, err = s.AllocateLease(ctx, "top", addr("255.255.255.255"), addr("255.255.255.255"), testMAC)
	if err != nil || l.IP != "255.255.255.255" {
		t.Errorf("top address: %+v, %v", l, err)
	}
	if _, err := s.AllocateLease(ctx, "top2", addr("255.255.255.255"), addr("255.255.255.255"), testMAC); !errors.Is(err, ErrExhausted) {
		t.Errorf("full top range: err = %v, want ErrExhausted", err)
	}
}

// BenchmarkAllocateLease measures lease allocation and release throughput
// with 200 leases already held, the way a busy host allocates.
func BenchmarkAllocateLease(b *testing.B) {
	s := openTest(b)
	ctx := context.Background()
	first, last := netip.MustParseAddr("172.16.0.10"), netip.MustParseAddr("172.16.255.254")
	for i := 0; i < 200; i++ {
		if _, err := s.AllocateLease(ctx, sbID(100000+i), first, last, testMAC); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 500; j++ {
			id := sbID(j)
			if _, err := s.AllocateLease(ctx, id, first, last, testMAC); err != nil {
				b.Fatal(err)
			}
			if err := s.ReleaseLease(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(500*b.N)/time.Since(start).Seconds(), "alloc+release/s")
}
