package server

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/edge/edgetest"
	"atelier/internal/store"
)

// BenchmarkCreateToEditor measures what a user waits for: from the create
// request to the first 200 from the sandbox's VS Code host through the edge
// (TLS, the host login included), over 30 container sandboxes of the image
// with stand-in services. The stand-in is a busybox httpd, so this is the
// platform's share; the real code-server adds its own start-up. Beside it:
// the create alone, its services step, and the browser's start to
// answering through its host.
func BenchmarkCreateToEditor(b *testing.B) {
	f := newFixture(b)
	certPath, keyPath, pool := edgetest.WildcardCert(b, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	f.buildServicesImage(b)
	srv, _ := f.startWith(b, nil)
	br := newBrowser(b, f.cfg.Domain.HTTPSPort, pool)
	session := false

	const n = 30
	var editor, create, services, browser []time.Duration
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < n; i++ {
			t0 := time.Now()
			id, code, body := f.createFrom(b, servicesImage)
			if code != 201 {
				b.Fatalf("create: %d %s", code, body)
			}
			create = append(create, time.Since(t0))
			var v struct{ Timings map[string]float64 }
			json.Unmarshal(body, &v)
			services = append(services, time.Duration(v.Timings["services"]*float64(time.Millisecond)))
			if !session {
				// The local user exists once it made a sandbox.
				f.session(b, srv.Store)
				session = true
			}
			host := "sandbox-" + id + ".atelier.test"
			cookie := grant(b, srv, br, host)
			for {
				res, _ := br.get(br.url(host, "/"), cookie)
				if res.StatusCode == 200 {
					break
				}
				if time.Since(t0) > 30*time.Second {
					b.Fatalf("vscode host never answered: %d", res.StatusCode)
				}
				time.Sleep(10 * time.Millisecond)
			}
			editor = append(editor, time.Since(t0))

			if i%5 == 0 {
				bhost := "browser-" + id + ".atelier.test"
				bcookie := grant(b, srv, br, bhost)
				t1 := time.Now()
				if code, _ := f.browser(b, "POST", id, "start"); code != 200 {
					b.Fatal("browser start")
				}
				for {
					res, _ := br.get(br.url(bhost, "/"), bcookie)
					if res.StatusCode == 200 {
						break
					}
					if time.Since(t1) > 30*time.Second {
						b.Fatalf("browser host never answered: %d", res.StatusCode)
					}
					time.Sleep(10 * time.Millisecond)
				}
				browser = append(browser, time.Since(t1))
			}
			if code, body := f.call(b, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
				b.Fatalf("destroy: %d %s", code, body)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(msOf(pct(editor, 0.5)), "editor-p50-ms")
	b.ReportMetric(msOf(pct(editor, 0.99)), "editor-p99-ms")
	b.ReportMetric(msOf(pct(create, 0.5)), "create-p50-ms")
	b.ReportMetric(msOf(pct(services, 0.5)), "services-step-p50-ms")
	b.ReportMetric(msOf(pct(browser, 0.5)), "browser-p50-ms")
	f.assertNoLeaks(b)
}

// grant is the host login without /auth/edge (whose per-client rate limit
// a benchmark's hundred logins would hit): the code the dashboard would
// mint for the session f.session made, traded on the host for its cookie.
func grant(b testing.TB, srv *Server, br *browser, host string) http.Header {
	b.Helper()
	p := auth.Principal{User: store.User{ID: auth.LocalUserID}, Method: auth.MethodCookie, SessionID: "edge-e2e"}
	u, err := srv.Edge.Grant(context.Background(), host, "/", p)
	if err != nil {
		b.Fatal(err)
	}
	res, _ := br.get(u, nil) // the browser's transport dials the edge's port
	for _, c := range res.Cookies() {
		if c.Name == "__Host-atelier_edge" {
			return http.Header{"Cookie": {c.Name + "=" + c.Value}}
		}
	}
	b.Fatalf("no host cookie for %s: %d", host, res.StatusCode)
	return nil
}
