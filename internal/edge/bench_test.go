package edge

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchBackend serves /small (a short body) and /big (size bytes).
func benchBackend(b *testing.B, size int) int {
	b.Helper()
	big := make([]byte, 1<<20)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", strconv.Itoa(size))
			for left := size; left > 0; left -= len(big) {
				if _, err := w.Write(big[:min(left, len(big))]); err != nil {
					return
				}
			}
			return
		}
		io.WriteString(w, "hello from the guest\n")
	})}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// benchClient sends every request to addr whatever the URL's host, so the
// Host header selects the route.
func benchClient(addr string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}}
}

// reqPerSec runs n GETs of url over workers connections.
func reqPerSec(b *testing.B, c *http.Client, url string, hdr http.Header, n, workers int) float64 {
	b.Helper()
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header = hdr
				res, err := c.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%s: %d of %d requests failed", url, f, n)
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkEdgeRequests compares small requests through the edge with the
// same guest server reached directly, side by side in one run.
func BenchmarkEdgeRequests(b *testing.B) {
	h := newHarness(b, nil)
	port := benchBackend(b, 0)
	h.sandbox(sbA, "127.0.0.1")
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: port}); err != nil {
		b.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "pub", Port: port, Public: true}); err != nil {
		b.Fatal(err)
	}
	login := http.Header{"Cookie": {h.login("dev-web-" + sbA + ".atelier.test")}}
	direct := benchClient("127.0.0.1:" + strconv.Itoa(port))
	edge := benchClient("127.0.0.1:" + strconv.Itoa(h.cfg.Domain.HTTPPort))
	defer direct.CloseIdleConnections()
	defer edge.CloseIdleConnections()
	const n, workers = 6000, 8
	// Warm both paths (connections, pools) before measuring.
	reqPerSec(b, direct, "http://guest/small", nil, 200, workers)
	reqPerSec(b, edge, "http://dev-web-"+sbA+".atelier.test/small", login, 200, workers)
	b.ResetTimer()
	// Rounds alternate the paths and each ratio is taken within its round,
	// so load from elsewhere on the machine affects both sides alike.
	var d, e, re, rp []float64
	for i := 0; i < b.N; i++ {
		for round := 0; round < 3; round++ {
			rd := reqPerSec(b, direct, "http://guest/small", nil, n, workers)
			r1 := reqPerSec(b, edge, "http://dev-web-"+sbA+".atelier.test/small", login, n, workers)
			r2 := reqPerSec(b, edge, "http://dev-pub-"+sbA+".atelier.test/small", nil, n, workers)
			d, e = append(d, rd), append(e, r1)
			re, rp = append(re, r1/rd), append(rp, r2/rd)
		}
	}
	b.StopTimer()
	b.ReportMetric(median(d), "direct-req/s")
	b.ReportMetric(median(e), "edge-req/s")
	b.ReportMetric(median(re), "x-direct")
	b.ReportMetric(median(rp), "public-x-direct")
	// Wall time the edge adds to each request at full load.
	b.ReportMetric((1/median(e)-1/median(d))*1e6, "added-us/req")
}

// BenchmarkEdgeLargeBody compares a 64 MiB download through the edge with
// the same server reached directly.
func BenchmarkEdgeLargeBody(b *testing.B) {
	const size = 64 << 20
	h := newHarness(b, nil)
	port := benchBackend(b, size)
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: port}); err != nil {
		b.Fatal(err)
	}
	login := http.Header{"Cookie": {h.login("dev-web-" + sbA + ".atelier.test")}}
	direct := benchClient("127.0.0.1:" + strconv.Itoa(port))
	edge := benchClient("127.0.0.1:" + strconv.Itoa(h.cfg.Domain.HTTPPort))
	defer direct.CloseIdleConnections()
	defer edge.CloseIdleConnections()
	get := func(c *http.Client, url string, hdr http.Header) float64 {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header = hdr
		start := time.Now()
		res, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err != nil || n != size || res.StatusCode != 200 {
			b.Fatalf("%s: %d bytes, status %d, %v", url, n, res.StatusCode, err)
		}
		return float64(size) / (1 << 20) / time.Since(start).Seconds()
	}
	get(direct, "http://guest/big", nil)
	get(edge, "http://dev-web-"+sbA+".atelier.test/big", login)
	b.ResetTimer()
	var d, e, r []float64
	for i := 0; i < b.N; i++ {
		for round := 0; round < 7; round++ {
			md := get(direct, "http://guest/big", nil)
			me := get(edge, "http://dev-web-"+sbA+".atelier.test/big", login)
			d, e, r = append(d, md), append(e, me), append(r, me/md)
		}
	}
	b.StopTimer()
	b.ReportMetric(median(d), "direct-MB/s")
	b.ReportMetric(median(e), "edge-MB/s")
	b.ReportMetric(median(r), "x-direct")
}

// BenchmarkRouteUpdate measures adding and removing a dev route while the
// edge holds 10 or 10 000 routes: the in-memory table update that replaces
// a Caddy reload, and the whole persisted ExposeDev / UnexposeDev.
func BenchmarkRouteUpdate(b *testing.B) {
	for _, total := range []int{10, 10000} {
		b.Run(fmt.Sprintf("routes=%d", total), func(b *testing.B) {
			h := newHarness(b, nil)
			port := benchBackend(b, 0)
			ctx := context.Background()
			ids := 0
			for h.e.table.len()+3 <= total {
				ids++
				h.sandbox(fmt.Sprintf("s%011d", ids), "127.0.0.1")
			}
			for i := 0; h.e.table.len() < total; i++ {
				if _, err := h.e.ExposeDev(ctx, "s00000000001", DevExposure{Name: fmt.Sprintf("fill%d", i), Port: port, Public: true}); err != nil {
					b.Fatal(err)
				}
			}
			if n, _ := h.st.ListRoutes(ctx, ""); len(n) != total || h.e.table.len() != total {
				b.Fatalf("store %d, table %d, want %d", len(n), h.e.table.len(), total)
			}
			host := "dev-bench-s00000000001.atelier.test"
			d := DevExposure{Name: "bench", Port: port, Public: true}
			routes, err := h.e.devRoutes("s00000000001", d)
			if err != nil {
				b.Fatal(err)
			}
			const rounds = 300
			var tAdd, tDel, pAdd, pDel []float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for r := 0; r < rounds; r++ {
					t0 := time.Now()
					h.e.table.replace("s00000000001", devNamed("bench"), routes)
					t1 := time.Now()
					h.e.table.replace("s00000000001", devNamed("bench"), nil)
					t2 := time.Now()
					tAdd, tDel = append(tAdd, us(t1.Sub(t0))), append(tDel, us(t2.Sub(t1)))
				}
				for r := 0; r < rounds/3; r++ {
					t0 := time.Now()
					if _, err := h.e.ExposeDev(ctx, "s00000000001", d); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if err := h.e.UnexposeDev(ctx, "s00000000001", "bench"); err != nil {
						b.Fatal(err)
					}
					t2 := time.Now()
					pAdd, pDel = append(pAdd, us(t1.Sub(t0))), append(pDel, us(t2.Sub(t1)))
				}
			}
			b.StopTimer()
			// The route is live on the very next request: no reload.
			if _, err := h.e.ExposeDev(ctx, "s00000000001", d); err != nil {
				b.Fatal(err)
			}
			if res := h.do("GET", host, "/", nil); res.StatusCode != 200 {
				b.Fatalf("new route: %d", res.StatusCode)
			}
			b.ReportMetric(median(tAdd), "add-us")
			b.ReportMetric(median(tDel), "remove-us")
			b.ReportMetric(pct(tAdd, 0.99), "add-p99-us")
			b.ReportMetric(median(pAdd), "persisted-add-us")
			b.ReportMetric(median(pDel), "persisted-remove-us")
			b.ReportMetric(pct(pAdd, 0.99), "persisted-add-p99-us")
		})
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func median(xs []float64) float64 { return pct(xs, 0.5) }

func pct(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
