package api_test

import (
	"context"
	"io"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"atelier/internal/config"
	"atelier/internal/sandbox"
)

// BenchmarkListSandboxes1000 measures GET /api/sandboxes over real HTTP with
// 1000 sandboxes in the store. Target: p99 under 10 ms.
func BenchmarkListSandboxes1000(b *testing.B) {
	// A /16 bridge: a /24 holds only 245 guests.
	h := newHarness(b, config.ModeMock, func(c *config.Config) {
		c.Server.MaxSandboxes = 1000
		c.Network.BridgePrefix = 16
		c.Network.BridgeCIDR, c.Network.BridgeNetmask, c.Network.GuestSubnet = "172.16.0.0/16", "255.255.0.0", "172.16.0.0"
	})
	ctx := context.Background()
	for i := 0; i < 1000; i++ {
		if _, err := h.srv.Sandboxes.Create(ctx, sandbox.CreateRequest{OwnerID: "local"}); err != nil {
			b.Fatal(err)
		}
	}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		n, err := h.srv.Store.CountSandboxes(ctx, "running")
		if err != nil {
			b.Fatal(err)
		}
		if n == 1000 {
			break
		}
		if bad, _ := h.srv.Store.CountSandboxes(ctx, "error"); bad > 0 || time.Now().After(deadline) {
			b.Fatalf("%d running, %d in error after setup", n, bad)
		}
		time.Sleep(20 * time.Millisecond)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	get := func() time.Duration {
		start := time.Now()
		res, err := client.Get(h.ts.URL + "/api/sandboxes")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || n < 100_000 {
			b.Fatalf("list: %d, %d bytes", res.StatusCode, n)
		}
		return time.Since(start)
	}
	for i := 0; i < 20; i++ { // warm up connections and caches
		get()
	}
	const perIter = 200
	var lat []time.Duration
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for j := 0; j < perIter; j++ {
			lat = append(lat, get())
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
	b.ReportMetric(ms(percentile(lat, 0.99))/10, "x-target")
}

// BenchmarkCreateDestroyMock measures create (until running) and destroy over
// HTTP in mock mode, sequentially, and 20 concurrent creates.
func BenchmarkCreateDestroyMock(b *testing.B) {
	h := newHarness(b, config.ModeMock, nil)
	var create, destroy []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 100; j++ {
			t0 := time.Now()
			v := h.create(b, nil)
			t1 := time.Now()
			if r := h.do(b, "DELETE", "/api/sandboxes/"+v.ID, nil, nil); r.status != 204 {
				b.Fatalf("delete: %d", r.status)
			}
			create = append(create, t1.Sub(t0))
			destroy = append(destroy, time.Since(t1))
		}
	}
	// 20 concurrent creates: the default limit.
	var wg sync.WaitGroup
	t0 := time.Now()
	ids := make([]string, 20)
	for i := range ids {
		wg.Add(1)
		go func(i int) { defer wg.Done(); ids[i] = h.create(b, nil).ID }(i)
	}
	wg.Wait()
	burst := time.Since(t0)
	b.StopTimer()
	for _, id := range ids {
		h.do(b, "DELETE", "/api/sandboxes/"+id, nil, nil)
	}
	for _, d := range [][]time.Duration{create, destroy} {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	}
	b.ReportMetric(ms(percentile(create, 0.50)), "create-p50-ms")
	b.ReportMetric(ms(percentile(create, 0.99)), "create-p99-ms")
	b.ReportMetric(ms(percentile(destroy, 0.50)), "destroy-p50-ms")
	b.ReportMetric(ms(percentile(destroy, 0.99)), "destroy-p99-ms")
	b.ReportMetric(ms(burst), "20-concurrent-ms")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
