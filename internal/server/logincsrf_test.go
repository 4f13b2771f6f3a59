package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth/githubtest"
	"atelier/internal/browsertest"
	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

// edgeClient reaches *.atelier.test on the edge's HTTPS port (and anything
// else, the GitHub stand-in, directly), trusting the test certificate and
// never following redirects.
func edgeClient(t *testing.T, httpsPort int, pool *x509.CertPool) *http.Client {
	edgeAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, _ := net.SplitHostPort(addr); strings.HasSuffix(host, ".atelier.test") {
				addr = edgeAddr
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// TestLoginCSRFFromSandboxHost is the login CSRF of issue 10 in Chromium,
// against a production manager whose edge serves the dashboard over HTTPS,
// with the GitHub stand-in. Mallory, a user of the same Atelier, starts her
// own login and stops at GitHub's redirect back, holding a callback URL and
// the state cookie's value. Her page on another host of the parent domain
// (a public dev host would do; here a plain page the test serves at
// evil.atelier.test) plants that state cookie on atelier.test, both with
// the plain name and the __Host- one, and links its visitor to her
// callback. The visitor, logged in as themselves, must stay themselves:
// browsers refuse a __Host- cookie with a Domain, and over HTTPS the
// manager reads only the __Host- state cookie.
func TestLoginCSRFFromSandboxHost(t *testing.T) {
	browsertest.Require(t)
	gh := githubtest.New(t)
	gh.AddUser(1, "victim")
	gh.AddUser(2, "mallory")

	cfg := productionConfig(t)
	certPath, keyPath, pool := edgetest.WildcardCert(t, "atelier.test")
	cfg.Domain.TLS.CertPath, cfg.Domain.TLS.KeyPath = certPath, keyPath
	cfg.Auth.GitHub = config.GitHub{ClientID: githubtest.ClientID, ClientSecret: githubtest.ClientSecret, WebURL: gh.URL, APIURL: gh.URL}
	cfg.Auth.AllowedOrg, cfg.Auth.AllowedUsers = "", []string{"victim", "mallory"}
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Drivers: drv, NoUnixSock: true})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Listen(true); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	c := edgeClient(t, cfg.Domain.HTTPSPort, pool)
	dash := cfg.DashboardURL()
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := c.Get(dash + "/health/live")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard not served by the edge: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Mallory's half-finished login, from her own machine.
	gh.ActAs("mallory")
	res, err := c.Get(dash + "/auth/github")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	var stateValue string
	for _, ck := range res.Cookies() {
		if strings.HasSuffix(ck.Name, "atelier_oauth_state") {
			stateValue = ck.Value
		}
	}
	res, err = c.Get(res.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	callback := res.Header.Get("Location")
	if stateValue == "" || !strings.HasPrefix(callback, dash+"/auth/callback?") {
		t.Fatalf("mallory's login: state cookie %q, callback %q", stateValue, callback)
	}

	// Her page on a sibling host of the parent domain.
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	evil := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><meta charset="utf-8"><title>cute cats</title><script>
for (const name of ["atelier_oauth_state", "__Host-atelier_oauth_state"]) {
  document.cookie = name + "=%s; Domain=atelier.test; Path=/; Secure; SameSite=Lax";
}
window.planted = document.cookie;
</script><a id="go" href="%s">more cats</a>`, stateValue, html.EscapeString(callback))
	}))
	evil.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	evil.StartTLS()
	t.Cleanup(evil.Close)
	evilURL := "https://evil.atelier.test:" + strconv.Itoa(evil.Listener.Addr().(*net.TCPAddr).Port) + "/"

	// The victim's browser: logged in as themselves, then visits the page.
	gh.ActAs("victim")
	var got struct {
		Before, After, Planted, Landed string
		CallbackStatus                 int
	}
	err = browsertest.Run(t, ctx, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]string{"dash": dash, "evil": evilURL},
		Script: `
const me = async () => {
  await page.goto(args.dash + '/auth/me');
  try { return JSON.parse(await page.textContent('body')).login || ''; } catch (e) { return 'none'; }
};
await page.goto(args.dash + '/auth/github');
await page.waitForURL(u => u.hostname === 'sandbox.atelier.test' && u.pathname === '/');
const before = await me();
let callbackStatus = 0;
page.on('response', (r) => { if (new URL(r.url()).pathname === '/auth/callback') callbackStatus = r.status(); });
await page.goto(args.evil);
const planted = await page.evaluate(() => window.planted);
await Promise.all([
  page.waitForURL(u => u.hostname === 'sandbox.atelier.test', {waitUntil: 'load'}),
  page.click('#go'),
]);
const landed = new URL(page.url()).pathname;
const after = await me();
return {before, after, planted, landed, callbackStatus};
`,
	}, &got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("browser: %+v", got)
	if got.Before != "victim" {
		t.Fatalf("the victim's own login did not work: /auth/me says %q", got.Before)
	}
	if strings.Contains(got.Planted, "__Host-") {
		t.Errorf("Chromium accepted a __Host- cookie with a Domain: %q", got.Planted)
	}
	if got.After != "victim" {
		t.Fatalf("login CSRF: after visiting mallory's page the victim's browser is logged in as %q (callback %d at %s)", got.After, got.CallbackStatus, got.Landed)
	}
	if got.CallbackStatus != http.StatusBadRequest {
		t.Errorf("the planted callback answered %d, want 400", got.CallbackStatus)
	}
}
