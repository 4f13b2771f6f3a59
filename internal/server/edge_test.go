package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"atelier/internal/auth"
	"atelier/internal/edge"
	"atelier/internal/edge/edgetest"
	"atelier/internal/store"
)

var (
	echoOnce sync.Once
	echoBin  []byte
	echoErr  error
)

// buildEcho builds the guest dev server of these tests (static, so it runs
// in the busybox image) once per test binary and returns the executable.
func buildEcho(t testing.TB) []byte {
	echoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "atlecho")
		if err != nil {
			echoErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "edgeecho")
		cmd := exec.Command("go", "build", "-ldflags", "-s -w", "-o", out, "./testdata/edgeecho")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			echoErr = fmt.Errorf("build edgeecho: %v\n%s", err, b)
			return
		}
		echoBin, echoErr = os.ReadFile(out)
	})
	if echoErr != nil {
		t.Fatal(echoErr)
	}
	return echoBin
}

// browser is a client of the edge's HTTPS port that verifies the test
// certificate and never follows redirects.
type browser struct {
	t    testing.TB
	c    *http.Client
	port string
}

func newBrowser(t testing.TB, httpsPort int, pool *x509.CertPool) *browser {
	addr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &browser{t: t, port: strconv.Itoa(httpsPort), c: &http.Client{
		Transport: tr, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (b *browser) get(rawURL string, hdr http.Header) (*http.Response, string) {
	b.t.Helper()
	req, err := http.NewRequest("GET", rawURL, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, string(body)
}

func (b *browser) url(host, path string) string { return "https://" + host + ":" + b.port + path }

// login follows the whole handshake for host, from the sandbox host through
// the dashboard's /auth/edge, and returns the host's cookie.
func (b *browser) login(host, session string) string {
	b.t.Helper()
	res, body := b.get(b.url(host, "/start?x=1"), nil)
	loc, _ := url.Parse(res.Header.Get("Location"))
	if res.StatusCode != http.StatusFound || body != "" || loc == nil || loc.Host != "sandbox.atelier.test:"+b.port || loc.Path != "/auth/edge" {
		b.t.Fatalf("%s without login: %d %q, body %q", host, res.StatusCode, res.Header.Get("Location"), body)
	}
	res, _ = b.get(loc.String(), http.Header{"Cookie": {auth.SecureCookieName + "=" + session}})
	grant, _ := url.Parse(res.Header.Get("Location"))
	if res.StatusCode != http.StatusFound || grant == nil || grant.Host != host+":"+b.port || grant.Path != edge.AuthPath {
		b.t.Fatalf("/auth/edge for %s: %d %q", host, res.StatusCode, res.Header.Get("Location"))
	}
	res, _ = b.get(grant.String(), nil)
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "/start?x=1" {
		b.t.Fatalf("code exchange on %s: %d %q", host, res.StatusCode, res.Header.Get("Location"))
	}
	for _, c := range res.Cookies() {
		if c.Name == "__Host-atelier_edge" && c.Secure && c.HttpOnly && c.Domain == "" {
			return c.Name + "=" + c.Value
		}
	}
	b.t.Fatalf("no host cookie for %s: %v", host, res.Cookies())
	return ""
}

// session starts a dashboard session for the local user (the owner of
// sandboxes created over the unix socket) and returns its cookie value.
func (f *fixture) session(t testing.TB, st *store.Store) string {
	t.Helper()
	now := time.Now()
	if err := st.CreateSession(context.Background(), store.Session{ID: "edge-e2e", UserID: auth.LocalUserID, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sid": "edge-e2e", "sub": auth.LocalUserID, "iss": "atelier", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	s, err := tok.SignedString([]byte(f.cfg.Auth.JWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestEdgeEndToEnd drives the edge against a dev server in a real container
// sandbox: per-host login, the three dev hosts, WebSocket, credential
// stripping, a manager restart, a stopped and a destroyed sandbox.
func TestEdgeEndToEnd(t *testing.T) {
	f := newFixture(t)
	certPath, keyPath, pool := edgetest.WildcardCert(t, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	echo := buildEcho(t)
	srv, stop := f.startWith(t, nil)
	b := newBrowser(t, f.cfg.Domain.HTTPSPort, pool)

	id, code, body := f.create(t)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	// The guest's dev server: two ports, the second for an alias.
	req, _ := http.NewRequest("PUT", "http://atelier/api/sandboxes/"+id+"/files?path=/tmp/edgeecho&mode=0755", bytes.NewReader(echo))
	res, err := f.client().Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("upload echo server: %v %v", err, res)
	}
	res.Body.Close()
	if code, body := f.call(t, "POST", "/api/sandboxes/"+id+"/dev/web/start", `{"argv":["/tmp/edgeecho","-addr",":3000,:3001"],"port":3000}`); code != 200 {
		t.Fatalf("start dev command: %d %s", code, body)
	}
	code, body = f.call(t, "POST", "/api/sandboxes/"+id+"/dev/web/expose", `{"default":true,"aliases":[{"alias":"api","port":3001}]}`)
	var exposed struct {
		Routes []struct{ Host, URL string }
	}
	if json.Unmarshal(body, &exposed); code != 200 || len(exposed.Routes) != 3 {
		t.Fatalf("expose: %d %s", code, body)
	}
	named, def, alias := "dev-web-"+id+".atelier.test", "dev-"+id+".atelier.test", "dev-web-api-"+id+".atelier.test"
	if exposed.Routes[0].URL != b.url(named, "") {
		t.Fatalf("route URL %q", exposed.Routes[0].URL)
	}

	// Unknown host: a clear 404 page, not an empty 200.
	if res, body := b.get(b.url("dev-nope-"+id+".atelier.test", "/"), nil); res.StatusCode != 404 || !strings.Contains(body, "No such sandbox") {
		t.Fatalf("unknown host: %d %q", res.StatusCode, body)
	}
	// Plain HTTP redirects to HTTPS.
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	hreq, _ := http.NewRequest("GET", "http://127.0.0.1:"+strconv.Itoa(f.cfg.Domain.HTTPPort)+"/p", nil)
	hreq.Host = named
	if res, err := hc.Do(hreq); err != nil || res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != b.url(named, "/p") {
		t.Fatalf("http redirect: %v %v", err, res)
	}
	// The dashboard host is the manager API.
	if res, body := b.get(b.url("sandbox.atelier.test", "/health/live"), nil); res.StatusCode != 200 {
		t.Fatalf("dashboard host: %d %s", res.StatusCode, body)
	}
	// Without a dashboard login, /auth/edge sends the browser to GitHub first.
	res, _ = b.get(b.url("sandbox.atelier.test", "/auth/edge?host="+named+"&next=/"), nil)
	if res.StatusCode != http.StatusFound || !strings.HasPrefix(res.Header.Get("Location"), "/auth/github?next=") {
		t.Fatalf("/auth/edge without session: %d %q", res.StatusCode, res.Header.Get("Location"))
	}

	session := f.session(t, srv.Store)
	cookies := map[string]string{}
	for _, h := range []string{named, def, alias} {
		cookies[h] = b.login(h, session)
	}
	for _, tt := range []struct{ host, want string }{
		{named, "port=3000 host=" + named + ":" + b.port},
		{def, "port=3000 host=" + def + ":" + b.port},
		{alias, "port=3001 host=" + alias + ":" + b.port},
	} {
		res, body := b.get(b.url(tt.host, "/hello"), http.Header{"Cookie": {cookies[tt.host]}})
		if res.StatusCode != 200 || !strings.HasPrefix(body, tt.want+" path=/hello") {
			t.Fatalf("%s: %d %q", tt.host, res.StatusCode, body)
		}
	}
	// A cookie opens only its own host.
	if res, _ := b.get(b.url(alias, "/"), http.Header{"Cookie": {cookies[named]}}); res.StatusCode != http.StatusFound {
		t.Fatalf("cookie of another host: %d", res.StatusCode)
	}

	// The guest never sees Atelier's cookies or tokens, even when a client
	// sends them.
	res, leak := b.get(b.url(named, "/leak"), http.Header{
		"Cookie":        {cookies[named] + "; " + auth.SecureCookieName + "=" + session + "; " + auth.CookieName + "=" + session + "; app=1"},
		"Authorization": {"Bearer atl_not_for_guests"},
	})
	if res.StatusCode != 200 {
		t.Fatalf("leak check: %d %s", res.StatusCode, leak)
	}
	edgeValue := strings.SplitN(cookies[named], "=", 2)[1]
	for _, secret := range []string{"atelier_", session, edgeValue, "atl_not_for_guests", "Authorization"} {
		if strings.Contains(leak, secret) {
			t.Fatalf("the guest received %q:\n%s", secret, leak)
		}
	}
	if !strings.Contains(leak, "Cookie: app=1") {
		t.Fatalf("the sandbox's own cookie was dropped:\n%s", leak)
	}

	// WebSocket through the edge to the guest.
	wsEcho := func(host string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "wss://"+host+":"+b.port+"/ws", &websocket.DialOptions{
			HTTPClient: b.c, HTTPHeader: http.Header{"Cookie": {cookies[host]}},
		})
		if err != nil {
			t.Fatalf("websocket dial %s: %v", host, err)
		}
		defer c.CloseNow()
		if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := c.Read(ctx); err != nil || string(msg) != "echo:ping" {
			t.Fatalf("websocket echo: %q %v", msg, err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	wsEcho(named)

	// A manager restart rebuilds every route from the store; the sandbox
	// and its dev server kept running, and the host cookies still work.
	stop()
	srv, _ = f.startWith(t, nil)
	for _, h := range []string{named, def, alias} {
		if res, body := b.get(b.url(h, "/again"), http.Header{"Cookie": {cookies[h]}}); res.StatusCode != 200 || !strings.Contains(body, "path=/again") {
			t.Fatalf("%s after restart: %d %q", h, res.StatusCode, body)
		}
	}
	wsEcho(alias)
	vscode := "sandbox-" + id + ".atelier.test"
	if _, ok := srv.Edge.HostSandbox(vscode); !ok {
		t.Fatal("service route lost in the restart")
	}

	// Stopped: 503. Destroyed: 404, and nothing leaked.
	if code, body := f.call(t, "POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, body)
	}
	if res, body := b.get(b.url(named, "/"), http.Header{"Cookie": {cookies[named]}}); res.StatusCode != 503 || !strings.Contains(body, "not running") {
		t.Fatalf("stopped sandbox: %d %q", res.StatusCode, body)
	}
	if code, body := f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != http.StatusNoContent {
		t.Fatalf("destroy: %d %s", code, body)
	}
	if res, _ := b.get(b.url(named, "/"), http.Header{"Cookie": {cookies[named]}}); res.StatusCode != 404 {
		t.Fatalf("destroyed sandbox: %d", res.StatusCode)
	}
	if rs, err := srv.Store.ListRoutes(context.Background(), id); err != nil || len(rs) != 0 {
		t.Fatalf("routes left in the store: %v %v", rs, err)
	}
	f.assertNoLeaks(t)
}

// TestEdgeMockMode runs the edge as `make run` does: mock mode, a localhost
// base domain (plain HTTP), the real agent as a local process and mock mode's
// anonymous local user. Needs no root.
func TestEdgeMockMode(t *testing.T) {
	echo := buildEcho(t)
	dir, err := os.MkdirTemp("", "atledge")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	echoPath := filepath.Join(dir, "edgeecho")
	if err := os.WriteFile(echoPath, echo, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, stop := startMockManager(t, dir, nil)
	cfg := srv.Config
	api := "http://" + srv.Addr()
	c := &http.Client{Timeout: 15 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	var id string
	t.Cleanup(func() {
		if id != "" {
			call("DELETE", "/api/sandboxes/"+id, "")
		}
		stop()
	})
	code, body := call("POST", "/api/sandboxes", `{}`)
	var v struct{ ID string }
	if json.Unmarshal([]byte(body), &v); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	id = v.ID
	port := freePort(t)
	start := fmt.Sprintf(`{"argv":[%q,"-addr","127.0.0.1:%d"],"port":%d}`, echoPath, port, port)
	if code, body := call("POST", "/api/sandboxes/"+id+"/dev/web/start", start); code != 200 {
		t.Fatalf("dev start: %d %s", code, body)
	}
	if code, body := call("POST", "/api/sandboxes/"+id+"/dev/web/expose", ""); code != 200 || !strings.Contains(body, "http://dev-web-"+id+".localhost:"+strconv.Itoa(cfg.Domain.HTTPPort)) {
		t.Fatalf("expose: %d %s", code, body)
	}

	// The edge's plain-HTTP port, whatever host the URL names.
	edgeAddr := "127.0.0.1:" + strconv.Itoa(cfg.Domain.HTTPPort)
	ec := &http.Client{Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			if strings.HasPrefix(addr, "localhost:") {
				return (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:"+strings.TrimPrefix(addr, "localhost:"))
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp", edgeAddr)
		}}}
	get := func(u string, hdr http.Header) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		res, err := ec.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		res.Body.Close()
		return res
	}
	host := "http://dev-web-" + id + ".localhost:" + strconv.Itoa(cfg.Domain.HTTPPort)
	// Locally the dashboard is the manager's own listener.
	res := get(host+"/x", nil)
	if res.StatusCode != http.StatusFound || !strings.HasPrefix(res.Header.Get("Location"), "http://localhost:"+strconv.Itoa(cfg.Server.Port)+"/auth/edge?") {
		t.Fatalf("no login: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	res = get(res.Header.Get("Location"), nil) // mock mode: the local user, no login
	if res.StatusCode != http.StatusFound || !strings.HasPrefix(res.Header.Get("Location"), host+edge.AuthPath) {
		t.Fatalf("/auth/edge: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	res = get(res.Header.Get("Location"), nil)
	var ck string
	for _, x := range res.Cookies() {
		if x.Name == "atelier_edge" && !x.Secure {
			ck = x.Name + "=" + x.Value
		}
	}
	if res.StatusCode != http.StatusFound || ck == "" {
		t.Fatalf("exchange: %d %v", res.StatusCode, res.Cookies())
	}
	req, _ := http.NewRequest("GET", host+"/x", nil)
	req.Header.Set("Cookie", ck)
	res, err = ec.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(b), fmt.Sprintf("port=%d host=dev-web-%s.localhost", port, id)) {
		t.Fatalf("dev server: %d %q", res.StatusCode, b)
	}
}
