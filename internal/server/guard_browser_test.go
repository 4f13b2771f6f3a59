package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/browsertest"
)

// TestBrowserCannotDriveMockManager attacks a mock-mode manager (no login:
// every request is the local user, and exec runs on this machine) from a
// web page in headless Chromium, three ways, each trying to create a marker
// file through a sandbox's exec:
//   - cross-origin write: a page on http://evil.test:<port> sends a no-cors
//     text/plain POST (no CORS preflight) to http://localhost:<api>/…/exec;
//   - cross-origin WebSocket: the same page opens …/exec/stream;
//   - DNS rebinding: the browser reaches the manager under the attacker's
//     name (evil.test mapped to 127.0.0.1, as a rebound record would), so
//     the page is same-origin with the manager and reads what it answers.
func TestBrowserCannotDriveMockManager(t *testing.T) {
	browsertest.Require(t)
	dir, err := os.MkdirTemp("", "atlbr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, nil)
	api := "http://" + srv.Addr()
	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	code, b := call("POST", "/api/sandboxes", `{}`)
	var v struct{ ID string }
	if json.Unmarshal(b, &v); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	t.Cleanup(func() {
		if code, b := call("DELETE", "/api/sandboxes/"+v.ID, ""); code != http.StatusNoContent {
			t.Errorf("destroy: %d %s", code, b)
		}
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if _, err := srv.Sandboxes.Wait(ctxFor(t, 30*time.Second), v.ID); err != nil {
		t.Fatal(err)
	}
	// The control: the same exec from curl works, so a missing marker
	// below means the request was refused, not that exec is broken.
	control := filepath.Join(dir, "control")
	if code, b := call("POST", "/api/sandboxes/"+v.ID+"/exec", fmt.Sprintf(`{"argv":["touch",%q]}`, control)); code != 200 {
		t.Fatalf("exec from curl: %d %s", code, b)
	}
	if _, err := os.Stat(control); err != nil {
		t.Fatalf("exec from curl did not run: %v", err)
	}

	// The attacker's site.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evil := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><meta charset="utf-8"><title>cute cats</title>`)
	})}
	go evil.Serve(ln)
	t.Cleanup(func() { evil.Close() })
	apiPort := strconv.Itoa(srv.Config.Server.Port)
	markers := map[string]string{}
	for _, k := range []string{"csrf", "ws", "rebind"} {
		markers[k] = filepath.Join(dir, "pwned-"+k)
	}
	var got struct {
		CSRF        string `json:"csrf"`
		WS          string `json:"ws"`
		RebindLoad  int    `json:"rebindLoad"`
		RebindExec  int    `json:"rebindExec"`
		RebindBody  string `json:"rebindBody"`
		RebindError string `json:"rebindError"`
	}
	err = browsertest.Run(t, context.Background(), browsertest.Options{
		MapHosts: []string{"evil.test"},
		Args: map[string]any{
			"evil":    fmt.Sprintf("http://evil.test:%d/", ln.Addr().(*net.TCPAddr).Port),
			"manager": "http://localhost:" + apiPort,
			"rebound": "http://evil.test:" + apiPort + "/",
			"id":      v.ID,
			"markers": markers,
		},
		Script: `
const out = {};
await page.goto(args.evil);
out.csrf = await page.evaluate(async (a) => {
  try {
    await fetch(a.manager + '/api/sandboxes/' + a.id + '/exec', {method: 'POST', mode: 'no-cors',
      headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({argv: ['touch', a.markers.csrf]})});
    return 'sent';
  } catch (e) { return 'error: ' + e; }
}, args);
out.ws = await page.evaluate((a) => new Promise((resolve) => {
  const ws = new WebSocket(a.manager.replace('http', 'ws') + '/api/sandboxes/' + a.id + '/exec/stream');
  ws.onopen = () => ws.send(JSON.stringify({argv: ['touch', a.markers.ws]}));
  ws.onmessage = (m) => { if (String(m.data).includes('exit')) { resolve('ran'); } };
  ws.onerror = () => resolve('refused');
  ws.onclose = () => resolve('closed');
  setTimeout(() => resolve('timeout'), 10000);
}), args);
// DNS rebinding: the page now lives at the manager's address under the attacker's name.
const res = await page.goto(args.rebound);
out.rebindLoad = res.status();
const r = await page.evaluate(async (a) => {
  try {
    const res = await fetch('/api/sandboxes/' + a.id + '/exec', {method: 'POST',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify({argv: ['sh', '-c', 'touch ' + a.markers.rebind + '; id']})});
    return {status: res.status, body: await res.text()};
  } catch (e) { return {status: 0, error: String(e)}; }
}, args);
out.rebindExec = r.status; out.rebindBody = r.body || ''; out.rebindError = r.error || '';
return out;
`,
	}, &got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("browser: %+v", got)
	for k, m := range markers {
		if _, err := os.Stat(m); err == nil {
			t.Errorf("%s: the page ran a command on this machine (%s exists)", k, m)
		}
	}
	if got.WS == "ran" {
		t.Errorf("cross-origin WebSocket ran a command")
	}
	if got.RebindLoad != http.StatusMisdirectedRequest || got.RebindExec != http.StatusMisdirectedRequest {
		t.Errorf("rebound name answered: load %d, exec %d %s", got.RebindLoad, got.RebindExec, got.RebindBody)
	}
}
