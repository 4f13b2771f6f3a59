package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/config"
	"atelier/internal/store"
)

// rawDo sends a request with an explicit Host header (http.Header cannot
// carry Host) to the harness's listener.
func (h *harness) rawDo(t *testing.T, method, host, path, body string, hdr map[string]string) resp {
	t.Helper()
	req, err := http.NewRequest(method, h.ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

// TestGuardHost: a DNS-rebinding page reaches the manager under its own
// name, so the manager answers only to its names (and IP addresses).
func TestGuardHost(t *testing.T) {
	for _, mode := range []config.Mode{config.ModeMock, config.ModeProduction} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, mode, nil)
			dash := h.srv.Config.Domain.Dashboard
			for _, tc := range []struct {
				host string
				want int
			}{
				{"localhost:4000", 200},
				{"LOCALHOST:4000", 200},
				{"localhost.:4000", 200},
				{"127.0.0.1:4000", 200},
				{"[::1]:4000", 200},
				{"192.0.2.7:4000", 200},
				{dash, 200},
				{dash + ":8443", 200},
				{"evil.test:4000", http.StatusMisdirectedRequest},
				{"evil.test", http.StatusMisdirectedRequest},
				{"localhost.evil.test:4000", http.StatusMisdirectedRequest},
				{dash + ".evil.test", http.StatusMisdirectedRequest},
				{"x." + dash, http.StatusMisdirectedRequest},
			} {
				r := h.rawDo(t, "GET", tc.host, "/health", "", nil)
				if r.status != tc.want {
					t.Errorf("Host %q: %d %s, want %d", tc.host, r.status, r.body, tc.want)
				}
				if tc.want == http.StatusMisdirectedRequest {
					var p problem
					r.json(t, &p)
					if r.header.Get("Content-Type") != "application/problem+json" || p.Code != "misdirected" || !strings.Contains(p.Detail, "not a name of this manager") {
						t.Errorf("Host %q: %s %s", tc.host, r.header.Get("Content-Type"), r.body)
					}
				}
			}
			// Writes are refused before they act.
			r := h.rawDo(t, "POST", "evil.test:4000", "/api/sandboxes", `{}`, map[string]string{"Content-Type": "application/json"})
			if r.status != http.StatusMisdirectedRequest {
				t.Errorf("create under a foreign Host: %d %s", r.status, r.body)
			}
			if n := h.count(t); n != 0 {
				t.Errorf("%d sandboxes after refused writes", n)
			}
		})
	}
}

func (h *harness) count(t *testing.T) int {
	t.Helper()
	list, err := h.srv.Store.ListSandboxes(context.Background(), store.SandboxFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// TestGuardCrossOrigin: in mock mode every request is the local user, so a
// form or a no-cors fetch from any web page would create sandboxes and run
// commands. Unsafe methods and WebSocket handshakes must come from the
// manager's own origin; a client that is not a browser sends neither Origin
// nor Sec-Fetch-Site and passes (curl -d, the CLI).
func TestGuardCrossOrigin(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	self := h.ts.URL // http://127.0.0.1:port
	host := strings.TrimPrefix(self, "http://")
	created := 0
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"curl, no content type", nil, http.StatusCreated},
		{"curl, json", map[string]string{"Content-Type": "application/json"}, http.StatusCreated},
		{"same origin", map[string]string{"Origin": self}, http.StatusCreated},
		{"same origin, fetch metadata", map[string]string{"Origin": self, "Sec-Fetch-Site": "same-origin"}, http.StatusCreated},
		{"text/plain from another site", map[string]string{"Origin": "http://evil.test:8000", "Content-Type": "text/plain"}, http.StatusForbidden},
		{"form from another site", map[string]string{"Origin": "https://evil.test", "Content-Type": "application/x-www-form-urlencoded"}, http.StatusForbidden},
		{"another port of this host", map[string]string{"Origin": "http://" + strings.Split(host, ":")[0] + ":1"}, http.StatusForbidden},
		{"opaque origin", map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"cross-site by fetch metadata", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"same-site sandbox page", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://dev-x-abcdefabcdef.localhost:4080"}, http.StatusForbidden},
		{"fetch metadata wins over a matching Origin", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": self}, http.StatusForbidden},
	} {
		r := h.rawDo(t, "POST", "", "/api/sandboxes", `{}`, tc.hdr)
		if r.status != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.body, tc.want)
			continue
		}
		if r.status == http.StatusCreated {
			created++
			continue
		}
		var p problem
		r.json(t, &p)
		if p.Code != "forbidden" || !strings.Contains(p.Detail, "cross-origin request refused") {
			t.Errorf("%s: %s", tc.name, r.body)
		}
	}
	if n := h.count(t); n != created {
		t.Errorf("%d sandboxes, want %d: a refused request acted", n, created)
	}
	// Reads stay open to links and navigations from anywhere.
	if r := h.rawDo(t, "GET", "", "/api/sandboxes", "", map[string]string{"Origin": "http://evil.test", "Sec-Fetch-Site": "cross-site"}); r.status != 200 {
		t.Errorf("cross-site GET: %d %s", r.status, r.body)
	}
	// A WebSocket handshake is a GET that opens a terminal or an exec.
	for _, tc := range []struct {
		origin string
		want   int
	}{{"http://evil.test:8000", http.StatusForbidden}, {self, http.StatusNotFound}} {
		r := h.rawDo(t, "GET", "", "/api/sandboxes/abcdefabcdef/exec/stream", "", map[string]string{
			"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
			"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": tc.origin})
		if r.status != tc.want {
			t.Errorf("websocket from %s: %d %s, want %d", tc.origin, r.status, r.body, tc.want)
		}
	}
}

// TestGuardUnixSocket: the unix socket's clients are local processes, not
// browsers; whatever Host they send is not checked.
func TestGuardUnixSocket(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	path := filepath.Join(t.TempDir(), "g.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h.srv.API.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	res, err := c.Get("http://atelier/health")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Status string }
	json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if res.StatusCode != 200 || body.Status == "" {
		t.Fatalf("unix socket with Host atelier: %d %+v", res.StatusCode, body)
	}
}
