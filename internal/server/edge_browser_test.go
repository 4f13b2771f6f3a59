package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"atelier/internal/browsertest"
	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
)

// TestCrossSiteAttackThroughManager runs issue 10's cross-sandbox attack
// against a whole manager in Chromium: the manager's edge on HTTPS with a
// wildcard certificate, the dashboard's real /auth/edge (mock mode's local
// user signs in), two sandboxes. The victim signs in to their
// login-protected dev host, then opens the public dev host of the other
// sandbox, whose page POSTs and opens a WebSocket to the victim's host with
// the browser's credentials. Nothing of it reaches the victim's dev server;
// the victim's own page still can.
func TestCrossSiteAttackThroughManager(t *testing.T) {
	browsertest.Require(t)
	cert, key, _ := edgetest.WildcardCert(t, "atelier.test")
	dir, err := os.MkdirTemp("", "atlxs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, func(c *config.Config) {
		c.Domain.BaseDomain, c.Domain.Dashboard, c.Domain.SSH.Hostname = "atelier.test", "sandbox.atelier.test", "ssh.atelier.test"
		c.Domain.TLS.CertPath, c.Domain.TLS.KeyPath = cert, key
	})
	api := "http://" + srv.Addr()
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	var ids []string
	t.Cleanup(func() {
		for _, id := range ids {
			call("DELETE", "/api/sandboxes/"+id, "")
		}
		stop()
	})
	for i := 0; i < 2; i++ {
		code, body := call("POST", "/api/sandboxes", `{}`)
		var v struct{ ID string }
		if json.Unmarshal([]byte(body), &v); code != http.StatusCreated || v.ID == "" {
			t.Fatalf("create: %d %s", code, body)
		}
		ids = append(ids, v.ID)
	}
	https := strconv.Itoa(srv.Config.Domain.HTTPSPort)
	victim := "https://dev-web-" + ids[0] + ".atelier.test:" + https
	victimWS := "wss://dev-web-" + ids[0] + ".atelier.test:" + https
	attacker := "https://dev-pwn-" + ids[1] + ".atelier.test:" + https

	// The dev servers: mock guests are local processes on loopback, so
	// servers of this test stand in for them.
	var mu sync.Mutex
	var reached []string
	victimPort := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/favicon.ico" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		reached = append(reached, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/ws" {
			c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
			if err != nil {
				return
			}
			defer c.CloseNow()
			typ, msg, err := c.Read(r.Context())
			if err == nil {
				c.Write(r.Context(), typ, append([]byte("echo:"), msg...))
			}
			return
		}
		io.WriteString(w, `<!doctype html><meta charset="utf-8"><p id="who">victim</p>`)
	}))
	attackerPort := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><meta charset="utf-8"><script>
window.attack = (async () => {
  const out = {};
  try { out.post = (await fetch(%[1]q + '/steal', {method: 'POST', credentials: 'include', mode: 'no-cors', body: 'x'})).type; }
  catch (e) { out.post = 'error'; }
  out.ws = await new Promise((resolve) => {
    const s = new WebSocket(%[2]q + '/ws');
    s.onopen = () => s.send('ping');
    s.onmessage = (m) => resolve('message: ' + m.data);
    s.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 5000);
  });
  return out;
})();
</script>`, victim, victimWS)
	}))
	if code, body := call("POST", "/api/sandboxes/"+ids[0]+"/dev/web/expose", fmt.Sprintf(`{"port":%d}`, victimPort)); code != 200 {
		t.Fatalf("expose victim: %d %s", code, body)
	}
	if code, body := call("POST", "/api/sandboxes/"+ids[1]+"/dev/pwn/expose", fmt.Sprintf(`{"port":%d,"public":true}`, attackerPort)); code != 200 {
		t.Fatalf("expose attacker: %d %s", code, body)
	}

	var got struct {
		Who, OwnWS string
		Attack     struct{ Post, WS string }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	err = browsertest.Run(t, ctx, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]string{"victim": victim, "victimWS": victimWS, "attacker": attacker},
		Script: `
await page.goto(args.victim + '/');
const who = await page.textContent('#who');
const ownWS = await page.evaluate((u) => new Promise((resolve) => {
  const s = new WebSocket(u);
  s.onopen = () => s.send('mine');
  s.onmessage = (m) => resolve(String(m.data));
  s.onerror = () => resolve('error');
}), args.victimWS + '/ws');
await page.goto(args.attacker + '/');
const attack = await page.evaluate(() => window.attack);
return {who, ownWS, attack};
`,
	}, &got)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("browser %+v; the victim's dev server received %q", got, reached)
	if got.Who != "victim" || got.OwnWS != "echo:mine" {
		t.Fatalf("the victim's own host did not work: %+v", got)
	}
	if want := []string{"GET /", "GET /ws"}; strings.Join(reached, "|") != strings.Join(want, "|") {
		t.Fatalf("the victim's dev server received %q, want only the victim's own %q", reached, want)
	}
}

// serveTest serves h on a loopback port until the test ends.
func serveTest(t *testing.T, h http.Handler) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: h}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return l.Addr().(*net.TCPAddr).Port
}
