package network

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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

// BenchmarkGuestEgress measures what the egress rules cost a guest: a bulk
// download from the wan and a run of short connections (each a new
// conntrack entry and masquerade), with Atelier's firewall as built and with
// the set lookups (blocked destinations, allow-list, DNS servers) taken out,
// which is the forward chain as it was before them. Both run in every
// iteration, so machine noise hits them alike; x-without is with/without
// throughput (1.0 = free).
func BenchmarkGuestEgress(b *testing.B) {
	const (
		bulk  = 32 << 20
		conns = 100
	)
	tp := newTopo(b, LinkVeth)
	ctx := context.Background()
	must(b, tp.m.Setup(ctx))
	tp.attach(b, "benchguest01", 10)
	g := tp.guestNS(b, "benchguest01")
	l := listenIn(b, tp.wan, wanIP.String()+":80")
	zeros := make([]byte, 1<<20)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "ok")
			return
		}
		for i := 0; i < bulk/len(zeros); i++ {
			w.Write(zeros)
		}
	})}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialIn(g, network, addr, 5*time.Second)
		},
	}}
	get := func(path string) int64 {
		resp, err := client.Get("http://" + wanIP.String() + path)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	run := func() (bulkTime, connTime time.Duration) {
		start := time.Now()
		if n := get("/bulk"); n != bulk {
			b.Fatalf("downloaded %d bytes", n)
		}
		mid := time.Now()
		for range conns {
			get("/small")
		}
		return mid.Sub(start), time.Since(mid)
	}
	withoutLookups := func() {
		c, err := tp.m.nft()
		must(b, err)
		inet, _ := ourTables()
		ch := &nftables.Chain{Name: "forward", Table: inet}
		rules, err := c.GetRules(inet, ch)
		must(b, err)
		for _, r := range rules {
			if slices.ContainsFunc(r.Exprs, func(e expr.Any) bool { _, ok := e.(*expr.Lookup); return ok }) {
				must(b, c.DelRule(&nftables.Rule{Table: inet, Chain: ch, Handle: r.Handle}))
			}
		}
		must(b, c.Flush())
	}
	run() // warm up: ARP, routes, the server
	var withBulk, withConn, withoutBulk, withoutConn time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Alternate which goes first, so that neither always follows the
		// rebuild of the table.
		var wb, wc, ob, oc time.Duration
		if i%2 == 0 {
			wb, wc = run()
		}
		b.StopTimer()
		withoutLookups()
		b.StartTimer()
		ob, oc = run()
		b.StopTimer()
		must(b, tp.m.Setup(ctx))
		b.StartTimer()
		if i%2 == 1 {
			wb, wc = run()
		}
		withBulk, withConn, withoutBulk, withoutConn = withBulk+wb, withConn+wc, withoutBulk+ob, withoutConn+oc
	}
	b.StopTimer()
	mb := float64(b.N) * bulk / (1 << 20)
	b.ReportMetric(mb/withBulk.Seconds(), "MB/s")
	b.ReportMetric(mb/withoutBulk.Seconds(), "MB/s-without")
	b.ReportMetric(withoutBulk.Seconds()/withBulk.Seconds(), "bulk-x-without")
	n := float64(b.N * conns)
	b.ReportMetric(n/withConn.Seconds(), "conns/s")
	b.ReportMetric(n/withoutConn.Seconds(), "conns/s-without")
	b.ReportMetric(withoutConn.Seconds()/withConn.Seconds(), "conns-x-without")
}
