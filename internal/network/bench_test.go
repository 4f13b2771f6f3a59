package network

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkAttachDetach measures creating and removing sandbox links inside
// a test namespace. Each iteration attaches a batch of sandboxes, then
// detaches them, so `-benchtime 1x` still averages over a batch.
func BenchmarkAttachDetach(b *testing.B) {
	const batch = 10
	for _, kind := range []LinkKind{LinkTAP, LinkVeth} {
		b.Run(string(kind), func(b *testing.B) {
			tp := newTopo(b, kind)
			ctx := context.Background()
			must(b, tp.m.Setup(ctx))
			var attach, detach time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				idsBatch := make([]string, batch)
				start := time.Now()
				for j := range idsBatch {
					idsBatch[j] = fmt.Sprintf("bench%03d%04d", i%1000, j)
					if _, err := tp.m.Attach(ctx, idsBatch[j], guestLease(idsBatch[j], byte(10+j))); err != nil {
						b.Fatal(err)
					}
				}
				mid := time.Now()
				for _, id := range idsBatch {
					if err := tp.m.Detach(ctx, id); err != nil {
						b.Fatal(err)
					}
				}
				attach += mid.Sub(start)
				detach += time.Since(mid)
			}
			b.StopTimer()
			n := float64(b.N * batch)
			b.ReportMetric(float64(attach.Microseconds())/1000/n, "attach-ms")
			b.ReportMetric(float64(detach.Microseconds())/1000/n, "detach-ms")
			b.ReportMetric(n/(attach+detach).Seconds(), "links/s")
		})
	}
}
