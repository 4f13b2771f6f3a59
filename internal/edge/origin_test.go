package edge

import (
	"context"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"atelier/internal/browsertest"
	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
)

func TestCrossOriginWrite(t *testing.T) {
	const host = "dev-web-aaaaaaaaaaaa.atelier.test:8443"
	ws := http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}
	with := func(h http.Header, kv ...string) http.Header {
		out := h.Clone()
		if out == nil {
			out = http.Header{}
		}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	tests := []struct {
		name    string
		method  string
		hdr     http.Header
		secure  bool
		refused bool
	}{
		{"get from anywhere", "GET", with(nil, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"), true, false},
		{"head", "HEAD", with(nil, "Sec-Fetch-Site", "same-site"), true, false},
		{"options preflight", "OPTIONS", with(nil, "Origin", "https://dev-x-bbbbbbbbbbbb.atelier.test:8443"), true, false},
		{"post without origin (curl, CLI)", "POST", nil, true, false},
		{"post same origin", "POST", with(nil, "Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test:8443", "Sec-Fetch-Site", "same-origin"), true, false},
		{"post same origin, capitals and trailing dot", "POST", with(nil, "Origin", "https://DEV-web-aaaaaaaaaaaa.atelier.test.:8443"), true, false},
		{"post user-initiated", "POST", with(nil, "Sec-Fetch-Site", "none"), true, false},
		{"websocket same origin", "GET", with(ws, "Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test:8443"), true, false},
		{"websocket from the CLI", "GET", ws, true, false},
		{"post from a sibling host", "POST", with(nil, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443", "Sec-Fetch-Site", "same-site"), true, true},
		{"post from a dev host of the same sandbox", "POST", with(nil, "Origin", "https://dev-web-api-aaaaaaaaaaaa.atelier.test:8443", "Sec-Fetch-Site", "same-site"), true, false},
		{"websocket from a dev host of the same sandbox", "GET", with(ws, "Origin", "https://dev-aaaaaaaaaaaa.atelier.test:8443"), true, false},
		{"post from the same sandbox's tool host", "POST", with(nil, "Origin", "https://sandbox-aaaaaaaaaaaa.atelier.test:8443", "Sec-Fetch-Site", "same-site"), true, true},
		{"post from a same-sandbox dev host on another port", "POST", with(nil, "Origin", "https://dev-web-api-aaaaaaaaaaaa.atelier.test"), true, true},
		{"post from a same-sandbox dev host over http", "POST", with(nil, "Origin", "http://dev-web-api-aaaaaaaaaaaa.atelier.test:8443"), true, true},
		{"post same-site without origin", "POST", with(nil, "Sec-Fetch-Site", "same-site"), true, true},
		{"post cross-site", "POST", with(nil, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"), true, true},
		{"post origin of a sibling, no fetch metadata", "POST", with(nil, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443"), true, true},
		{"post origin null", "POST", with(nil, "Origin", "null"), true, true},
		{"post same host over http", "POST", with(nil, "Origin", "http://dev-web-aaaaaaaaaaaa.atelier.test:8443"), true, true},
		{"post same host other port", "POST", with(nil, "Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test"), true, true},
		{"post origin with a path", "POST", with(nil, "Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test:8443/x"), true, true},
		{"post two origins", "POST", with(nil, "Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test:8443", "Origin", "https://evil.example"), true, true},
		{"post garbage origin", "POST", with(nil, "Origin", "::"), true, true},
		{"put from a sibling", "PUT", with(nil, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443"), true, true},
		{"delete from a sibling", "DELETE", with(nil, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443"), true, true},
		{"patch from a sibling", "PATCH", with(nil, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443"), true, true},
		{"unknown method from a sibling", "PROPFIND", with(nil, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443"), true, true},
		{"websocket from a sibling", "GET", with(ws, "Origin", "https://dev-pub-bbbbbbbbbbbb.atelier.test:8443"), true, true},
		{"websocket same-site fetch metadata", "GET", with(ws, "Sec-Fetch-Site", "same-site"), true, true},
		{"websocket origin null", "GET", with(ws, "Origin", "null"), true, true},
		{"plain-HTTP edge, same origin", "POST", with(nil, "Origin", "http://dev-web-aaaaaaaaaaaa.atelier.test:8443"), false, false},
		{"plain-HTTP edge, https origin", "POST", with(nil, "Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test:8443"), false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(tt.method, "http://x/", nil)
			r.Host = host
			r.Header = tt.hdr
			if r.Header == nil {
				r.Header = http.Header{}
			}
			// The sandbox aaaaaaaaaaaa's dev hosts, as the table would answer.
			sibling := func(h string) bool {
				return strings.HasPrefix(h, "dev-") && strings.HasSuffix(h, "-aaaaaaaaaaaa.atelier.test")
			}
			if why := crossOriginWrite(r, tt.secure, sibling); (why != "") != tt.refused {
				t.Fatalf("reason %q, want refused=%v", why, tt.refused)
			}
		})
	}
	// Default ports are the same origin whether or not they are written.
	r, _ := http.NewRequest("POST", "https://x/", nil)
	r.Host = "dev-web-aaaaaaaaaaaa.atelier.test"
	r.Header.Set("Origin", "https://dev-web-aaaaaaaaaaaa.atelier.test:443")
	if why := crossOriginWrite(r, true, nil); why != "" {
		t.Fatalf("explicit default port refused: %s", why)
	}
}

// guestLog records what reached a guest.
type guestLog struct {
	mu   sync.Mutex
	reqs []string
}

func (g *guestLog) add(s string) { g.mu.Lock(); g.reqs = append(g.reqs, s); g.mu.Unlock() }

func (g *guestLog) all() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.reqs...)
}

// recordingGuest is a guest dev server that logs every request reaching it,
// serves a page at /, echoes WebSocket messages at /ws (without checking
// Origin, as many dev servers and websockify do) and answers "ok" to
// anything else. page, when set, replaces the page at /.
func recordingGuest(t testing.TB, page string) (int, *guestLog) {
	t.Helper()
	log := &guestLog{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/favicon.ico" {
			http.NotFound(w, r) // browsers ask by themselves
			return
		}
		entry := r.Method + " " + r.URL.Path
		if r.Header.Get("Upgrade") != "" {
			entry += " upgrade"
		}
		if len(b) > 0 {
			entry += " body=" + string(b)
		}
		log.add(entry)
		switch {
		case r.URL.Path == "/ws":
			c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, msg, err := c.Read(r.Context())
				if err != nil {
					return
				}
				if err := c.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
					return
				}
			}
		case r.URL.Path == "/" && r.Method == http.MethodGet:
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			if page == "" {
				page = `<!doctype html><meta charset="utf-8"><title>guest</title><p id="who">victim's app</p>`
			}
			io.WriteString(w, page)
		default:
			io.WriteString(w, "ok")
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port, log
}

// TestCrossOriginWritesRefused sends, with a valid host cookie, the requests
// a sibling host's page can make a browser send, and checks which reach the
// guest: none from another origin, all from the host itself or a non-browser
// client, and public hosts are left alone.
func TestCrossOriginWritesRefused(t *testing.T) {
	h := newHarness(t, nil)
	port, log := recordingGuest(t, "")
	h.sandbox(sbA, "127.0.0.1")
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "pub", Port: port, Public: true}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"
	pub := "dev-pub-" + sbA + ".atelier.test"
	self := "http://" + host + ":" + strconv.Itoa(h.cfg.Domain.HTTPPort)
	sibling := "http://dev-evil-" + sbB + ".atelier.test:" + strconv.Itoa(h.cfg.Domain.HTTPPort)
	cookie := h.login(host)
	hdr := func(kv ...string) http.Header {
		out := http.Header{"Cookie": {cookie}}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	tests := []struct {
		name, method, host, path string
		hdr                      http.Header
		status                   int
	}{
		{"sibling POST", "POST", host, "/a", hdr("Origin", sibling, "Sec-Fetch-Site", "same-site"), 403},
		{"sibling DELETE", "DELETE", host, "/b", hdr("Origin", sibling), 403},
		{"sibling WebSocket", "GET", host, "/ws", hdr("Origin", sibling, "Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), 403},
		{"null-origin POST", "POST", host, "/c", hdr("Origin", "null"), 403},
		{"sibling POST without a cookie", "POST", host, "/d", http.Header{"Origin": {sibling}}, 403},
		{"sibling GET passes", "GET", host, "/read", hdr("Origin", sibling, "Sec-Fetch-Site", "same-site"), 200},
		{"own POST passes", "POST", host + ":" + strconv.Itoa(h.cfg.Domain.HTTPPort), "/own", hdr("Origin", self, "Sec-Fetch-Site", "same-origin"), 200},
		{"CLI POST passes", "POST", host, "/cli", hdr(), 200},
		{"public host: sibling POST passes", "POST", pub, "/pub", http.Header{"Origin": {sibling}, "Sec-Fetch-Site": {"same-site"}}, 200},
		{"dev host of the same sandbox: POST passes", "POST", host + ":" + strconv.Itoa(h.cfg.Domain.HTTPPort), "/alias", hdr("Origin", "http://"+pub+":"+strconv.Itoa(h.cfg.Domain.HTTPPort), "Sec-Fetch-Site", "same-site"), 200},
		{"dev host to the same sandbox's VS Code: refused", "POST", "sandbox-" + sbA + ".atelier.test", "/tool", hdr("Origin", self, "Sec-Fetch-Site", "same-site"), 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := h.do(tt.method, tt.host, tt.path, tt.hdr)
			if res.StatusCode == http.StatusSwitchingProtocols {
				res.Body.Close() // the guest took the WebSocket
				t.Fatalf("101, want %d", tt.status)
			}
			b := body(t, res)
			if res.StatusCode != tt.status {
				t.Fatalf("%d %q, want %d", res.StatusCode, b, tt.status)
			}
			if tt.status == 403 && !strings.Contains(b, "Cross-site request refused") {
				t.Fatalf("403 without the edge's page: %q", b)
			}
		})
	}
	want := []string{"GET /read", "POST /own", "POST /cli", "POST /pub", "POST /alias"}
	if got := log.all(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("the guest received %q, want %q", got, want)
	}
}

// TestCrossSiteAttackInBrowser is the attack of issue 10 in Chromium: a
// victim signed in to their login-protected dev host visits a co-tenant's
// public dev host on the same parent domain, whose page sends a credentialed
// POST, a form POST and a WebSocket to the victim's host. The host's own
// pages (as code-server, OpenCode and noVNC do) still POST and open
// WebSockets; nothing from the attacker's page reaches the victim's guest.
func TestCrossSiteAttackInBrowser(t *testing.T) {
	browsertest.Require(t)
	cert, key, _ := edgetest.WildcardCert(t, "atelier.test")
	h := newHarness(t, func(c *config.Config, _ *Options) {
		c.Domain.TLS.CertPath, c.Domain.TLS.KeyPath = cert, key
	})
	https := strconv.Itoa(h.cfg.Domain.HTTPSPort)
	victimHost := "dev-web-" + sbA + ".atelier.test"
	attackerHost := "dev-pwn-" + sbB + ".atelier.test"
	victim := "https://" + victimHost + ":" + https
	victimWS := "wss://" + victimHost + ":" + https

	victimPort, victimLog := recordingGuest(t, "")
	attackPage := fmt.Sprintf(`<!doctype html><meta charset="utf-8"><title>attacker</title>
<form id="f" method="POST" action="%[1]s/form" target="sink"><input name="a" value="1"></form>
<iframe name="sink"></iframe>
<script>
const victim = %[2]q, victimWS = %[3]q;
window.attack = (async () => {
  const out = {};
  try {
    const r = await fetch(victim + '/steal', {method: 'POST', credentials: 'include', mode: 'no-cors', body: 'x=1'});
    out.post = r.type;
  } catch (e) { out.post = 'error: ' + e.message; }
  out.ws = await new Promise((resolve) => {
    const s = new WebSocket(victimWS + '/ws');
    s.onopen = () => s.send('ping');
    s.onmessage = (m) => { resolve('message: ' + m.data); s.close(); };
    s.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 5000);
  });
  out.form = await new Promise((resolve) => {
    document.querySelector('iframe').onload = () => resolve('loaded');
    setTimeout(() => resolve('timeout'), 5000);
    document.getElementById('f').submit();
  });
  return out;
})();
</script>`, html.EscapeString(victim), victim, victimWS)
	attackerPort, _ := recordingGuest(t, attackPage)

	ctx := context.Background()
	h.sandbox(sbA, "127.0.0.1") // the victim's sandbox
	h.sandbox(sbB, "127.0.0.1") // the co-tenant's
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: victimPort}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbB, DevExposure{Name: "pwn", Port: attackerPort, Public: true}); err != nil {
		t.Fatal(err)
	}

	var got struct {
		Who    string
		Own    struct{ Post, WS string }
		Attack struct{ Post, WS, Form string }
	}
	err := browsertest.Run(t, ctx, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]string{"victim": victim, "victimWS": victimWS, "attacker": "https://" + attackerHost + ":" + https},
		Script: `
// The victim signs in to their own host: redirect to the dashboard, one-time
// code, host cookie.
await page.goto(args.victim + '/');
const who = await page.textContent('#who');
// The host's own page writes and opens a WebSocket, as its tools do.
const own = await page.evaluate(async (wsURL) => {
  const r = await fetch('/own', {method: 'POST', body: 'y=1'});
  const post = r.status + ' ' + await r.text();
  const ws = await new Promise((resolve) => {
    const s = new WebSocket(wsURL);
    s.onopen = () => s.send('ping');
    s.onmessage = (m) => { resolve(String(m.data)); s.close(); };
    s.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 5000);
  });
  return {post, ws};
}, args.victimWS + '/ws');
const cookies = (await context.cookies(args.victim)).map((c) => c.name);
console.error('victim cookies: ' + cookies.join(','));
// Then they visit the co-tenant's public page.
await page.goto(args.attacker + '/');
const attack = await page.evaluate(() => window.attack);
return {who, own, attack};
`,
	}, &got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("browser: %+v", got)
	t.Logf("victim's guest received: %q", victimLog.all())
	if got.Who != "victim's app" || got.Own.Post != "200 ok" || got.Own.WS != "echo:ping" {
		t.Fatalf("the victim's own page did not work: %+v", got)
	}
	want := []string{"GET /", "POST /own body=y=1", "GET /ws upgrade"}
	if rec := victimLog.all(); strings.Join(rec, "|") != strings.Join(want, "|") {
		t.Fatalf("the victim's guest received %q, want only the victim's own %q", rec, want)
	}
	if got.Attack.WS == "message: echo:ping" {
		t.Fatal("the attacker's WebSocket was answered by the victim's guest")
	}
	// The attacks did reach the edge (so the browser sent them): the
	// fetch, the WebSocket and the form.
	if n := h.e.refusedCrossOrigin.Load(); n < 3 {
		t.Fatalf("the edge refused %d cross-origin requests, want the 3 attacks", n)
	}
}
