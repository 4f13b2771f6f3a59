package edge

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/sandbox"
)

// fakeServices reports fixed states by role.
type fakeServices struct {
	mu     sync.Mutex
	known  bool
	states map[string]sandbox.ServiceState
}

func (f *fakeServices) ServiceByRole(_ context.Context, _, role string, _ bool) (sandbox.ServiceState, bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.states[role]
	return st, ok, f.known
}

func (f *fakeServices) set(known bool, states map[string]sandbox.ServiceState) {
	f.mu.Lock()
	f.known, f.states = known, states
	f.mu.Unlock()
}

// TestStartingPageNamesTheService: a tool host whose port is closed says
// which service it waits for and in what state; a browser that is off says
// so at once, with a link (not a form) to the dashboard.
func TestStartingPageNamesTheService(t *testing.T) {
	h := newHarness(t, nil)
	closed := freePort(t)
	h.cfg.Advanced.VM.VSCode.Port = closed
	h.cfg.Advanced.VM.OpenCode.Port = closed
	h.cfg.Advanced.VM.Browser.Port = closed
	h.sandbox(sbA, "127.0.0.1")
	fs := &fakeServices{}
	h.e.SetServices(fs)
	vscode, browser, opencode := "sandbox-"+sbA+".atelier.test", "browser-"+sbA+".atelier.test", "opencode-"+sbA+".atelier.test"
	cookie := func(host string) http.Header { return http.Header{"Cookie": {h.login(host)}} }
	vh, bh, oh := cookie(vscode), cookie(browser), cookie(opencode)
	get := func(host string, hdr http.Header) (int, string, time.Duration) {
		begin := time.Now()
		res := h.do("GET", host, "/", hdr)
		return res.StatusCode, body(t, res), time.Since(begin)
	}

	// Nothing known yet: the plain wait, then a page naming the tool.
	fs.set(false, nil)
	if code, b, _ := get(vscode, vh); code != 503 || !strings.Contains(b, "VS Code is starting") {
		t.Fatalf("vscode, nothing known: %d %q", code, b)
	}

	fs.set(true, map[string]sandbox.ServiceState{
		"vscode":   {Name: "code", Role: "vscode", State: "running", Wanted: true},
		"browser":  {Name: "browser", Role: "browser", State: "stopped"},
		"opencode": {Name: "opencode", Role: "opencode", State: "failed", Wanted: true, LastError: `start: <script>alert(1)</script>`},
	})
	if code, b, _ := get(vscode, vh); code != 503 || !strings.Contains(b, "VS Code is starting") || !strings.Contains(b, "(running, not answering yet)") {
		t.Fatalf("vscode starting: %d %q", code, b)
	}
	code, b, took := get(browser, bh)
	if code != 503 || !strings.Contains(b, "The browser is off") || !strings.Contains(b, `href="http://sandbox.atelier.test`) || !strings.Contains(b, "/sandboxes/"+sbA+"#browser") {
		t.Fatalf("browser off: %d %q", code, b)
	}
	if strings.Contains(b, "<form") || strings.Contains(b, "<script") {
		t.Fatalf("the page must act through a link to the dashboard only: %q", b)
	}
	if took >= h.e.retryWindow {
		t.Fatalf("an off browser waited %v for its port", took)
	}
	code, b, _ = get(opencode, oh)
	if code != 503 || !strings.Contains(b, "OpenCode failed") || strings.Contains(b, "<script>") || !strings.Contains(b, "&lt;script&gt;") {
		t.Fatalf("opencode failed (its error escaped): %d %q", code, b)
	}

	// An image without the service: said after the wait.
	fs.set(true, map[string]sandbox.ServiceState{})
	if code, b, _ := get(browser, bh); code != 503 || !strings.Contains(b, "image has no browser") {
		t.Fatalf("no browser in the image: %d %q", code, b)
	}
}
