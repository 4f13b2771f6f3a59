package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"atelier/internal/testenv"
)

// BenchmarkBackendsSideBySide times the same store work on SQLite and on
// Postgres (a local server on loopback, fsync off: the network and
// protocol cost, not the disk's) and prints the ratio. Each iteration
// inserts benchCreates sandboxes one by one, then lists them (one
// owner's, benchCreates rows) benchLists times.
func BenchmarkBackendsSideBySide(b *testing.B) {
	if onPostgres() {
		b.Skip("measured once, in the first pass: it opens both backends itself")
	}
	const benchCreates, benchLists = 200, 50
	ctx := context.Background()
	type result struct{ create, list time.Duration }
	// One owner per iteration: every listing returns benchCreates rows
	// (through the owner index) however many iterations ran before.
	owner := func(i int) string { return fmt.Sprintf("u%d", i) }
	run := func(s *Store) result {
		var r result
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			for j := range benchCreates {
				now := time.Now()
				sb := Sandbox{ID: sbID(i*benchCreates + j), OwnerID: owner(i), Status: StatusRunning, Image: "default",
					CreatedAt: now, UpdatedAt: now}
				if err := s.InsertSandbox(ctx, sb, 0); err != nil {
					b.Fatal(err)
				}
			}
			t1 := time.Now()
			for range benchLists {
				list, err := s.ListSandboxes(ctx, SandboxFilter{OwnerID: owner(i)})
				if err != nil || len(list) != benchCreates {
					b.Fatalf("list: %d rows, %v", len(list), err)
				}
			}
			r.create += t1.Sub(t0)
			r.list += time.Since(t1)
		}
		r.create /= time.Duration(b.N * benchCreates)
		r.list /= time.Duration(b.N * benchLists)
		return r
	}
	lite, err := Open(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer lite.Close()
	pgs, err := Open(ctx, b.TempDir(), WithDatabaseURL(testenv.PostgresDB(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer pgs.Close()

	b.ResetTimer()
	l, p := run(lite), run(pgs)
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(l.create), "sqlite-create-µs")
	b.ReportMetric(us(p.create), "pg-create-µs")
	b.ReportMetric(us(l.list), "sqlite-list200-µs")
	b.ReportMetric(us(p.list), "pg-list200-µs")
	fmt.Printf("store backends (per op): create sqlite %.0f µs, postgres %.0f µs (x%.2f); list of %d rows sqlite %.0f µs, postgres %.0f µs (x%.2f)\n",
		us(l.create), us(p.create), float64(p.create)/float64(l.create), benchCreates, us(l.list), us(p.list), float64(p.list)/float64(l.list))
}
