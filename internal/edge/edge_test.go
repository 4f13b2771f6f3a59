package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/coder/websocket"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

const (
	sbA = "aaaaaaaaaaaa"
	sbB = "bbbbbbbbbbbb"
)

func viewOf(id, ip string) sandbox.View {
	return sandbox.View{ID: id, IPAddress: ip, Status: store.StatusRunning}
}

func TestRoutingAndPages(t *testing.T) {
	h := newHarness(t, nil)
	port := backend(t)
	closed := freePort(t) // nothing listens there
	h.cfg.Advanced.VM.VSCode.Port = port
	h.sandbox(sbA, "127.0.0.1")
	h.sandbox(sbB, "127.0.0.1")
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: port, Default: true, Aliases: []DevAlias{{"api", port}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "pub", Port: port, Public: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "down", Port: closed}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbB, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Hooks().OnStopped(ctx, sbB); err != nil {
		t.Fatal(err)
	}
	cookie := func(host string) http.Header { return http.Header{"Cookie": {h.login(host)}} }

	tests := []struct {
		name, method, host, path string
		hdr                      http.Header
		status                   int
		contains                 string
		location                 string
	}{
		{"dashboard", "GET", "sandbox.atelier.test", "/x", nil, 200, "dashboard", ""},
		{"dashboard with port and capitals", "GET", "Sandbox.Atelier.Test:443", "/", nil, 200, "dashboard", ""},
		{"unknown host", "GET", "dev-nope-" + sbA + ".atelier.test", "/", nil, 404, "No such sandbox", ""},
		{"bare base domain", "GET", "atelier.test", "/", nil, 404, "No such sandbox", ""},
		{"no login: page load redirects", "GET", "dev-web-" + sbA + ".atelier.test", "/p?q=1", nil, 302, "",
			"http://sandbox.atelier.test:{http}/auth/edge?host=dev-web-" + sbA + ".atelier.test&next=%2Fp%3Fq%3D1"},
		{"no login: write refused", "POST", "dev-web-" + sbA + ".atelier.test", "/", nil, 401, "Sign in required", ""},
		{"no login: websocket refused", "GET", "dev-web-" + sbA + ".atelier.test", "/", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, 401, "", ""},
		{"named", "GET", "dev-web-" + sbA + ".atelier.test", "/p", cookie("dev-web-" + sbA + ".atelier.test"), 200, "host=dev-web-" + sbA + ".atelier.test path=/p", ""},
		{"default", "GET", "dev-" + sbA + ".atelier.test", "/", cookie("dev-" + sbA + ".atelier.test"), 200, "host=dev-" + sbA, ""},
		{"alias", "GET", "dev-web-api-" + sbA + ".atelier.test", "/", cookie("dev-web-api-" + sbA + ".atelier.test"), 200, "host=dev-web-api-" + sbA, ""},
		{"vscode", "GET", "sandbox-" + sbA + ".atelier.test", "/", cookie("sandbox-" + sbA + ".atelier.test"), 200, "host=sandbox-" + sbA, ""},
		{"cookie of another host", "GET", "dev-web-" + sbA + ".atelier.test", "/", cookie("dev-" + sbA + ".atelier.test"), 302, "", ""},
		{"public without login", "GET", "dev-pub-" + sbA + ".atelier.test", "/", nil, 200, "host=dev-pub-" + sbA, ""},
		{"guest not answering", "GET", "dev-down-" + sbA + ".atelier.test", "/", cookie("dev-down-" + sbA + ".atelier.test"), 503, "Starting", ""},
		{"stopped sandbox", "GET", "dev-web-" + sbB + ".atelier.test", "/", cookie("dev-web-" + sbB + ".atelier.test"), 503, "not running", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := h.do(tt.method, tt.host, tt.path, tt.hdr)
			b := body(t, res)
			if res.StatusCode != tt.status || !strings.Contains(b, tt.contains) {
				t.Fatalf("%d %q, want %d containing %q", res.StatusCode, b, tt.status, tt.contains)
			}
			tt.location = strings.ReplaceAll(tt.location, "{http}", strconv.Itoa(h.cfg.Domain.HTTPPort))
			if tt.location != "" && res.Header.Get("Location") != tt.location {
				t.Fatalf("Location %q, want %q", res.Header.Get("Location"), tt.location)
			}
			if res.StatusCode == 302 && tt.method == "GET" && b != "" {
				t.Fatalf("redirect carries content: %q", b)
			}
			if tt.status == 503 && tt.contains == "Starting" && res.Header.Get("Retry-After") == "" {
				t.Fatal("starting page without Retry-After")
			}
		})
	}
}

func TestLoginHandshake(t *testing.T) {
	h := newHarness(t, nil)
	port := backend(t)
	h.sandbox(sbA, "127.0.0.1")
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"

	u, err := h.e.Grant(ctx, strings.ToUpper(host), "//evil.example/x", h.p)
	if err != nil {
		t.Fatal(err)
	}
	pu, err := url.Parse(u)
	if err != nil || pu.Scheme != "http" || pu.Host != host+":"+strconv.Itoa(h.cfg.Domain.HTTPPort) || pu.Path != AuthPath {
		t.Fatalf("grant URL %q", u)
	}
	res := h.do("GET", host, pu.RequestURI(), nil)
	body(t, res)
	// A scheme-relative next was replaced: the user lands on this host.
	if res.StatusCode != 302 || res.Header.Get("Location") != "/" {
		t.Fatalf("exchange: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	var c *http.Cookie
	for _, x := range res.Cookies() {
		if x.Name == h.e.CookieName() {
			c = x
		}
	}
	if c == nil || c.Domain != "" || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.MaxAge != int(CookieTTL/time.Second) || c.Path != "/" {
		t.Fatalf("cookie %+v", c)
	}
	if c.Secure {
		t.Fatal("plain-HTTP edge set a Secure cookie")
	}
	withCookie := http.Header{"Cookie": {c.Name + "=" + c.Value}}
	if res := h.do("GET", host, "/", withCookie); res.StatusCode != 200 {
		t.Fatalf("with cookie: %d", res.StatusCode)
	}
	// The code works once.
	res = h.do("GET", host, pu.RequestURI(), nil)
	if b := body(t, res); res.StatusCode != 403 || len(res.Cookies()) != 0 || !strings.Contains(b, "expired") {
		t.Fatalf("replayed code: %d %v", res.StatusCode, res.Cookies())
	}
	// A code minted for one host is refused on another (and burnt).
	u2, _ := h.e.Grant(ctx, host, "/", h.p)
	p2, _ := url.Parse(u2)
	if res := h.do("GET", "sandbox-"+sbA+".atelier.test", p2.RequestURI(), nil); res.StatusCode != 403 || len(res.Cookies()) != 0 {
		t.Fatalf("code on another host: %d", res.StatusCode)
	}
	// Expired codes are refused.
	u3, _ := h.e.Grant(ctx, host, "/", h.p)
	p3, _ := url.Parse(u3)
	h.clock.add(CodeTTL + time.Second)
	if res := h.do("GET", host, p3.RequestURI(), nil); res.StatusCode != 403 {
		t.Fatalf("expired code: %d", res.StatusCode)
	}
	// A forged or tampered cookie is refused.
	forged := http.Header{"Cookie": {c.Name + "=" + c.Value[:len(c.Value)-2] + "xx"}}
	if res := h.do("GET", host, "/", forged); res.StatusCode != 302 {
		t.Fatalf("tampered cookie: %d", res.StatusCode)
	}
	// Logout reaches the edge once the cached check is stale.
	if err := h.st.RevokeSession(ctx, "sess1", time.Now()); err != nil {
		t.Fatal(err)
	}
	h.clock.add(sessionRecheck + time.Second)
	if res := h.do("GET", host, "/", withCookie); res.StatusCode != 302 {
		t.Fatalf("cookie of a revoked session: %d", res.StatusCode)
	}

	tests := []struct {
		name string
		host string
		p    auth.Principal
		want error
	}{
		{"unknown host", "dev-x-" + sbA + ".atelier.test", h.p, ErrUnknownHost},
		{"api token", host, auth.Principal{User: h.user, Method: auth.MethodToken}, ErrNotBrowser},
		{"unix socket", host, auth.Principal{User: h.user, Method: auth.MethodSocket, Admin: true}, ErrNotBrowser},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := h.e.Grant(ctx, tt.host, "/", tt.p); !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCookieExpires(t *testing.T) {
	h := newHarness(t, nil)
	port := backend(t)
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"
	ck := http.Header{"Cookie": {h.login(host)}}
	if res := h.do("GET", host, "/", ck); res.StatusCode != 200 {
		t.Fatalf("fresh cookie: %d", res.StatusCode)
	}
	h.clock.add(CookieTTL)
	if res := h.do("GET", host, "/", ck); res.StatusCode != 302 {
		t.Fatalf("expired cookie: %d", res.StatusCode)
	}
}

func TestGuestNeverSeesCredentials(t *testing.T) {
	h := newHarness(t, nil)
	port := backend(t)
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"
	edgeCookie := h.login(host)
	hdr := http.Header{
		"Cookie":              {"theme=dark; atelier_session=stolen; " + edgeCookie, "__Host-atelier_edge=x; lang=fr"},
		"Authorization":       {"Bearer atl_secret"},
		"Proxy-Authorization": {"Basic c2VjcmV0"},
	}
	res := h.do("GET", host, "/", hdr)
	b := body(t, res)
	if res.StatusCode != 200 {
		t.Fatalf("%d %s", res.StatusCode, b)
	}
	for _, leak := range []string{"atelier_", "stolen", "atl_secret", "Authorization", "c2VjcmV0", strings.SplitN(edgeCookie, "=", 2)[1]} {
		if strings.Contains(b, leak) {
			t.Errorf("guest saw %q:\n%s", leak, b)
		}
	}
	if !strings.Contains(b, "Cookie: theme=dark; lang=fr") {
		t.Errorf("the sandbox's own cookies were not kept:\n%s", b)
	}
}

func TestStripCredentials(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"none", nil, nil},
		{"only others", []string{"a=1; b=2"}, []string{"a=1; b=2"}},
		{"only atelier", []string{"atelier_session=x; __Host-atelier_edge=y"}, nil},
		{"mixed", []string{"a=1; atelier_session=x", "__Secure-atelier_x=1; b=2"}, []string{"a=1; b=2"}},
		{"lookalike value kept", []string{"a=atelier_session"}, []string{"a=atelier_session"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Authorization": {"x"}}
			if tt.in != nil {
				h["Cookie"] = tt.in
			}
			stripCredentials(h)
			if h.Get("Authorization") != "" || strings.Join(h["Cookie"], "|") != strings.Join(tt.want, "|") {
				t.Fatalf("got %v", h)
			}
		})
	}
}

func TestWebSocketThroughEdge(t *testing.T) {
	h := newHarness(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "ws", Port: l.Addr().(*net.TCPAddr).Port}); err != nil {
		t.Fatal(err)
	}
	host := "dev-ws-" + sbA + ".atelier.test"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(h.cfg.Domain.HTTPPort))
	}}}
	c, _, err := websocket.Dial(ctx, "ws://"+host+"/socket", &websocket.DialOptions{HTTPClient: hc, HTTPHeader: http.Header{"Cookie": {h.login(host)}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for _, m := range []string{"one", strings.Repeat("x", 100<<10)} {
		if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != "echo:"+m {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(m), len(got), err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestLifecycleHooksAndRestart(t *testing.T) {
	h := newHarness(t, nil)
	port := backend(t)
	h.cfg.Advanced.VM.VSCode.Port = port
	h.cfg.Advanced.VM.Browser.Port = port
	ctx := context.Background()
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: port, Default: true, Public: true, Aliases: []DevAlias{{"api", port}}}); err != nil {
		t.Fatal(err)
	}
	hosts := []string{"dev-web-" + sbA, "dev-" + sbA, "dev-web-api-" + sbA}
	for _, x := range hosts {
		if res := h.do("GET", x+".atelier.test", "/", nil); res.StatusCode != 200 {
			t.Fatalf("%s before restart: %d", x, res.StatusCode)
		}
	}
	browser := "browser-" + sbA + ".atelier.test"
	ck := http.Header{"Cookie": {h.login(browser)}}

	// A manager restart: a new Edge over the same store.
	if err := h.e.Stop(); err != nil {
		t.Fatal(err)
	}
	e2, err := New(Options{Config: h.cfg, Store: h.st, Log: h.e.log, RetryWindow: 300 * time.Millisecond, Now: h.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	h.e = e2
	h.start()
	for _, x := range hosts {
		if res := h.do("GET", x+".atelier.test", "/", nil); res.StatusCode != 200 {
			t.Fatalf("%s after restart: %d", x, res.StatusCode)
		}
	}
	// The browser route came back, and the host cookie still opens it.
	if res := h.do("GET", browser, "/", ck); res.StatusCode != 200 {
		t.Fatalf("browser after restart: %d", res.StatusCode)
	}

	if err := h.e.Hooks().OnStopped(ctx, sbA); err != nil {
		t.Fatal(err)
	}
	if res := h.do("GET", hosts[0]+".atelier.test", "/", nil); res.StatusCode != 503 {
		t.Fatalf("stopped: %d", res.StatusCode)
	}
	if err := h.e.Hooks().OnRunning(ctx, viewOf(sbA, "127.0.0.1"), nil); err != nil {
		t.Fatal(err)
	}
	if res := h.do("GET", hosts[0]+".atelier.test", "/", nil); res.StatusCode != 200 {
		t.Fatalf("started again: %d", res.StatusCode)
	}
	if err := h.e.UnexposeDev(ctx, sbA, "web"); err != nil {
		t.Fatal(err)
	}
	if res := h.do("GET", hosts[2]+".atelier.test", "/", nil); res.StatusCode != 404 {
		t.Fatalf("unexposed alias: %d", res.StatusCode)
	}
	if err := h.e.Hooks().OnDestroyed(ctx, sbA); err != nil {
		t.Fatal(err)
	}
	if res := h.do("GET", browser, "/", ck); res.StatusCode != 404 {
		t.Fatalf("destroyed: %d", res.StatusCode)
	}
	if rs, err := h.st.ListRoutes(ctx, sbA); err != nil || len(rs) != 0 || h.e.table.len() != 0 {
		t.Fatalf("routes left: %v %v, table %d", rs, err, h.e.table.len())
	}
}

func TestRebuildAddsMissingServiceRoutes(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	// Sandboxes that ran before the edge existed have no routes yet.
	for _, sb := range []store.Sandbox{
		{ID: sbA, OwnerID: "u1", Status: store.StatusRunning, IP: "172.16.0.10"},
		{ID: sbB, OwnerID: "u1", Status: store.StatusStopped, IP: "172.16.0.11"},
		{ID: "cccccccccccc", OwnerID: "u1", Status: store.StatusError},
	} {
		if err := h.st.InsertSandbox(ctx, sb, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.e.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	rs, _ := h.st.ListRoutes(ctx, "")
	if len(rs) != 6 || h.e.table.len() != 6 {
		t.Fatalf("routes %d, table %d, want 6", len(rs), h.e.table.len())
	}
	if ta, _ := h.e.table.lookup("opencode-" + sbA + ".atelier.test"); !ta.up || ta.port != 3000 || ta.ip != "172.16.0.10" {
		t.Fatalf("running sandbox: %+v", ta)
	}
	if tb, _ := h.e.table.lookup("sandbox-" + sbB + ".atelier.test"); tb.up || tb.port != 8080 {
		t.Fatalf("stopped sandbox: %+v", tb)
	}
}

func TestExposeValidation(t *testing.T) {
	h := newHarness(t, nil)
	h.sandbox(sbA, "127.0.0.1")
	long := strings.Repeat("a", 47) // dev-{47}-{12}: 64 characters
	tests := []struct {
		name  string
		d     DevExposure
		field string
		hosts []string
	}{
		{"named only", DevExposure{Name: "web", Port: 3000}, "", []string{"dev-web-" + sbA}},
		{"default and alias", DevExposure{Name: "web", Port: 3000, Default: true, Aliases: []DevAlias{{"api", 8000}}}, "",
			[]string{"dev-web-" + sbA, "dev-" + sbA, "dev-web-api-" + sbA}},
		{"longest name", DevExposure{Name: long[:46], Port: 1}, "", []string{"dev-" + long[:46] + "-" + sbA}},
		{"name too long for the label", DevExposure{Name: long, Port: 1}, "name", nil},
		{"name not a label", DevExposure{Name: "Web_1", Port: 1}, "name", nil},
		{"empty name", DevExposure{Port: 1}, "name", nil},
		{"port zero", DevExposure{Name: "web"}, "port", nil},
		{"port too big", DevExposure{Name: "web", Port: 70000}, "port", nil},
		{"alias not a label", DevExposure{Name: "web", Port: 1, Aliases: []DevAlias{{"-x", 2}}}, "aliases[0].alias", nil},
		{"duplicate alias", DevExposure{Name: "web", Port: 1, Aliases: []DevAlias{{"a", 2}, {"a", 3}}}, "aliases[1].alias", nil},
		{"alias too long", DevExposure{Name: long[:40], Port: 1, Aliases: []DevAlias{{"abcdef", 2}}}, "aliases[0].alias", nil},
		{"alias port", DevExposure{Name: "web", Port: 1, Aliases: []DevAlias{{"a", 0}}}, "aliases[0].port", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := h.e.ExposeDev(context.Background(), sbA, tt.d)
			var fe *sandbox.FieldError
			if tt.field != "" {
				if !errors.As(err, &fe) || fe.Field != tt.field {
					t.Fatalf("err %v, want field %s", err, tt.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rs {
				got = append(got, strings.TrimSuffix(r.Host, ".atelier.test"))
			}
			if strings.Join(got, " ") != strings.Join(tt.hosts, " ") {
				t.Fatalf("hosts %v, want %v", got, tt.hosts)
			}
		})
	}
	// A host held by another command is a conflict, and changes nothing.
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: 1, Aliases: []DevAlias{{"api", 2}}}); err != nil {
		t.Fatal(err)
	}
	_, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web-api", Port: 1})
	if !errors.Is(err, store.ErrDuplicate) {
		t.Fatalf("taken host: %v", err)
	}
	if sb, ok := h.e.HostSandbox("DEV-WEB-API-" + sbA + ".atelier.test"); !ok || sb != sbA {
		t.Fatalf("alias host lost: %q %v", sb, ok)
	}
}

func TestCertificateAllowed(t *testing.T) {
	h := newHarness(t, nil)
	h.sandbox(sbA, "127.0.0.1")
	tests := []struct {
		name string
		ok   bool
	}{
		{"sandbox.atelier.test", true},
		{"sandbox-" + sbA + ".atelier.test", true},
		{"OPENCODE-" + sbA + ".atelier.test.", true},
		{"dev-web-" + sbA + ".atelier.test", false},
		{"sandbox-" + sbB + ".atelier.test", false},
		{"atelier.test", false},
		{"example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := (&permission{e: h.e}).CertificateAllowed(context.Background(), tt.name)
			if (err == nil) != tt.ok || (!tt.ok && !errors.Is(err, caddytls.ErrPermissionDenied)) {
				t.Fatalf("err %v, want allowed=%v", err, tt.ok)
			}
		})
	}
}

func TestTLSWithCertificateFiles(t *testing.T) {
	cert, key, _ := edgetest.WildcardCert(t, "atelier.test")
	h := newHarness(t, func(c *config.Config, _ *Options) {
		c.Domain.TLS.CertPath, c.Domain.TLS.KeyPath = cert, key
	})
	if h.e.TLSMode() != TLSFiles || h.e.CookieName() != "__Host-atelier_edge" {
		t.Fatalf("mode %s cookie %s", h.e.TLSMode(), h.e.CookieName())
	}
	port := backend(t)
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: port, Public: true}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"
	https := strconv.Itoa(h.cfg.Domain.HTTPSPort)

	// Plain HTTP redirects to HTTPS, keeping the port and the path.
	res := h.do("GET", host, "/a?b=1", nil)
	body(t, res)
	if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != "https://"+host+":"+https+"/a?b=1" {
		t.Fatalf("http: %d %q", res.StatusCode, res.Header.Get("Location"))
	}

	for _, tt := range []struct {
		sni    string
		status int
	}{{host, 200}, {"sandbox.atelier.test", 200}} {
		c := &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: tt.sni},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:"+https)
			},
		}}
		res, err := c.Get("https://" + tt.sni + "/")
		if err != nil {
			t.Fatalf("%s: %v", tt.sni, err)
		}
		b := body(t, res)
		if res.StatusCode != tt.status || res.TLS == nil || res.TLS.PeerCertificates[0].Subject.CommonName != "*.atelier.test" {
			t.Fatalf("%s: %d %q", tt.sni, res.StatusCode, b)
		}
		c.CloseIdleConnections()
	}

	// The login cookie is Secure over HTTPS, and grant URLs are https.
	u, err := h.e.Grant(context.Background(), host, "/", h.p)
	if err != nil || !strings.HasPrefix(u, "https://"+host+":"+https+AuthPath) {
		t.Fatalf("grant %q %v", u, err)
	}
}

func TestOneEdgePerProcess(t *testing.T) {
	h := newHarness(t, nil)
	e2, err := New(Options{Config: testConfig(t), Store: h.st, Log: h.e.log})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Start(context.Background(), nil); !errors.Is(err, ErrBusy) {
		e2.Stop()
		t.Fatalf("a second edge in the process: %v", err)
	}
	// The first edge still serves.
	if res := h.do("GET", "sandbox.atelier.test", "/", nil); res.StatusCode != 200 {
		t.Fatalf("first edge after refused start: %d", res.StatusCode)
	}
	if err := h.e.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if _, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(h.cfg.Domain.HTTPPort), time.Second); err == nil {
		t.Fatal("port still open after stop")
	}
}

func TestACMEOnDemandOnlyForKnownHosts(t *testing.T) {
	h := newHarness(t, func(c *config.Config, _ *Options) { c.Domain.TLS.Email = "ops@atelier.test" })
	if h.e.TLSMode() != TLSACME {
		t.Fatalf("mode %s", h.e.TLSMode())
	}
	h.sandbox(sbA, "127.0.0.1")
	// An unknown name is refused by the permission module before any ACME
	// exchange: the handshake fails and nothing is stored for it. (A known
	// name would go to the CA, which tests cannot reach.)
	for _, name := range []string{"unknown.atelier.test", "dev-x-" + sbA + ".atelier.test", "example.com"} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
			"127.0.0.1:"+strconv.Itoa(h.cfg.Domain.HTTPSPort), &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			t.Fatalf("TLS handshake for %s succeeded", name)
		}
	}
	if n := h.e.refusedCerts.Load(); n != 3 {
		t.Fatalf("permission module refused %d names, want 3", n)
	}
	if m, _ := filepath.Glob(filepath.Join(h.cfg.Server.DataDir, "caddy", "certificates", "*", "*")); len(m) != 0 {
		t.Fatalf("certificates stored for refused names: %v", m)
	}
	// Port 80 still redirects to HTTPS.
	res := h.do("GET", "sandbox-"+sbA+".atelier.test", "/", nil)
	body(t, res)
	if res.StatusCode != http.StatusPermanentRedirect {
		t.Fatalf("http: %d", res.StatusCode)
	}
}

func TestMockGuestsOnLoopback(t *testing.T) {
	h := newHarness(t, func(_ *config.Config, o *Options) { o.GuestHost = "127.0.0.1" })
	port := backend(t)
	// The lease says 172.16.0.10, but a mock guest is a local process.
	h.sandbox(sbA, "172.16.0.10")
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: port, Public: true}); err != nil {
		t.Fatal(err)
	}
	if res := h.do("GET", "dev-web-"+sbA+".atelier.test", "/", nil); res.StatusCode != 200 {
		t.Fatalf("mock guest: %d", res.StatusCode)
	}
	// Every mock sandbox shares this machine's ports: the manager's own and
	// another sandbox's exposed one are refused, naming the holder.
	var mp *MockPortError
	_, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "loop", Port: h.cfg.Domain.HTTPPort, Public: true})
	if !errors.As(err, &mp) || mp.Holder != "" || !strings.Contains(err.Error(), "manager's own") {
		t.Fatalf("expose the edge's own port: %v", err)
	}
	h.sandbox(sbB, "172.16.0.11")
	_, err = h.e.ExposeDev(ctx, sbB, DevExposure{Name: "web", Port: port, Public: true})
	if !errors.Is(err, ErrMockPort) || !strings.Contains(err.Error(), "exposed by sandbox "+sbA) {
		t.Fatalf("expose another mock sandbox's port: %v", err)
	}
	// The same sandbox may expose it again (and under another name).
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web2", Port: port, Public: true}); err != nil {
		t.Fatal(err)
	}
	// A route to the edge itself (one stored before the check) still never proxies to itself.
	if err := h.st.ReplaceRoutes(ctx, sbA, "loop", []string{store.RouteDev}, []store.Route{{Host: "dev-loop-" + sbA + ".atelier.test",
		SandboxID: sbA, Kind: store.RouteDev, Name: "loop", Port: h.cfg.Domain.HTTPPort, Public: true}}); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if res := h.do("GET", "dev-loop-"+sbA+".atelier.test", "/", nil); res.StatusCode != http.StatusLoopDetected {
		t.Fatalf("route to the edge itself: %d", res.StatusCode)
	}
	// The tool hosts would be the developer's own 8080, 3000, 6080: a page says why not.
	res := h.do("GET", "sandbox-"+sbA+".atelier.test", "/", nil)
	if b := body(t, res); res.StatusCode != http.StatusNotImplemented || !strings.Contains(b, "mock mode") {
		t.Fatalf("tool host in mock mode: %d %s", res.StatusCode, b)
	}
}

// Stop returns only once in-flight requests have finished (within the
// grace period) and the ports are closed: Caddy's own stop returns while
// its servers are still shutting down.
func TestStopDrainsRequests(t *testing.T) {
	h := newHarness(t, nil)
	started, finished := make(chan struct{}), atomic.Bool{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		finished.Store(true)
		io.WriteString(w, "slow")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "slow", Port: l.Addr().(*net.TCPAddr).Port, Public: true}); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", h.url("/"), nil)
		req.Host = "dev-slow-" + sbA + ".atelier.test"
		res, err := h.c.Do(req)
		if err != nil {
			got <- err.Error()
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		got <- fmt.Sprint(res.StatusCode, " ", string(b))
	}()
	<-started
	if err := h.e.Stop(); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("Stop returned while a request was still running")
	}
	if a := <-got; a != "200 slow" {
		t.Fatalf("in-flight request: %q", a)
	}
	if _, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(h.cfg.Domain.HTTPPort), time.Second); err == nil {
		t.Fatal("port still open after stop")
	}
}
