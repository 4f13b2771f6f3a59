package dashboard_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"atelier/internal/browsertest"
)

// TestPreludeCatchesLeaks shows the browser tests' guard can fail: a page
// that loads an image from another origin, opens a WebSocket to it and
// trips its own Content-Security-Policy is reported on all three counts.
func TestPreludeCatchesLeaks(t *testing.T) {
	browsertest.Require(t)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer other.Close()
	_, otherPort, _ := net.SplitHostPort(other.Listener.Addr().String())
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "script-src 'self'")
		fmt.Fprintf(w, `<!doctype html><title>leaky</title><img src="http://127.0.0.2:%s/pixel.png" alt="">
<script>alert('inline');</script>
<script src="/ws.js"></script>`, otherPort)
	}))
	defer page.Close()
	var got string
	run(t, browsertest.Options{
		Args: map[string]any{"url": page.URL, "port": otherPort, "allowed": []string{"^" + page.URL + "/"}},
		Script: `
await page.goto(args.url + '/');
await page.evaluate((port) => { try { new WebSocket('ws://127.0.0.3:' + port + '/'); } catch (e) {} }, args.port);
await page.waitForTimeout(500);
try { check(); return 'nothing caught'; } catch (e) { return e.message; }
`,
	}, &got)
	for _, want := range []string{"request to another origin: http://127.0.0.2:" + otherPort, "websocket to another origin: ws://127.0.0.3:" + otherPort, "CSP:"} {
		if !strings.Contains(got, want) {
			t.Errorf("guard missed %q; it reported:\n%s", want, got)
		}
	}
}
