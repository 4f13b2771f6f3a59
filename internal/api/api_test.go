package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/api"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/dashboard"
	"atelier/internal/server"
)

// harness runs a full manager (real store, mock drivers) behind httptest.
type harness struct {
	t   *testing.T
	srv *server.Server
	ts  *httptest.Server
}

func newHarness(t testing.TB, mode config.Mode, mutate func(*config.Config)) *harness {
	t.Helper()
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = mode
	cfg.Server.DataDir = dir
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	if mode == config.ModeProduction {
		cfg.Domain.BaseDomain = "atelier.test"
		cfg.Domain.Dashboard = "sandbox.atelier.test"
		cfg.Domain.SSH.Hostname = "ssh.atelier.test"
		cfg.Domain.TLS.Email = "ops@atelier.test"
		cfg.Auth.JWTSecret = strings.Repeat("s", 40)
		cfg.Auth.GitHub.ClientID = "client"
		cfg.Auth.GitHub.ClientSecret = "secret"
		cfg.Auth.AllowedUsers = []string{"octocat", "alice", "mallory", "bob", "root"}
		cfg.Auth.Admins = []string{"root"}
	}
	if mutate != nil {
		mutate(cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, server.Options{Log: log, Drivers: mockDrivers(cfg)})
	if err != nil {
		cancel()
		t.Fatalf("new server: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Sandboxes.Run(ctx) }()
	ts := httptest.NewServer(srv.API.Handler())
	t.Cleanup(func() {
		ts.Close()
		cancel()
		<-done
		_ = srv.Store.Close()
	})
	tt, _ := t.(*testing.T)
	return &harness{t: tt, srv: srv, ts: ts}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (h *harness) do(t testing.TB, method, path string, body any, hdr map[string]string) resp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		buf, _ := json.Marshal(b)
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, h.ts.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
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

// noRedirect shows redirects (the OAuth login) instead of following them off-host.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

type problem struct {
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

type view struct {
	ID        string             `json:"id"`
	Status    string             `json:"status"`
	Vcpus     int                `json:"vcpus"`
	MemoryMB  int                `json:"memoryMb"`
	IPAddress string             `json:"ipAddress"`
	Timings   map[string]float64 `json:"timings"`
}

func (h *harness) create(t testing.TB, body any) view {
	t.Helper()
	r := h.do(t, "POST", "/api/sandboxes", body, nil)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var v view
	r.json(t, &v)
	return v
}

func TestRouteAudit(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	routes := h.srv.API.Routes()
	if len(routes) < 15 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	publicWant := map[string]bool{
		"GET /health": true, "GET /health/live": true, "GET /health/ready": true, "GET /config": true,
		"GET /auth/github": true, "GET /auth/callback": true, "POST /auth/logout": true, "GET /auth/me": true,
		"GET /openapi.json": true, "GET /openapi.yaml": true, "GET /docs": true, "GET /{$}": true,
		"GET /auth/edge": true, "GET /assets/{path...}": true,
	}
	for _, p := range dashboard.Pages {
		publicWant["GET "+p] = true
	}
	for _, r := range routes {
		key := r.Method + " " + r.Path
		if r.Public != publicWant[key] {
			t.Errorf("%s: public=%v, want %v", key, r.Public, publicWant[key])
		}
		path := strings.NewReplacer("{id}", "abcdefghijkl", "{name}", "web", "{tid}", "t1", "{$}", "", "{path...}", "x.js").Replace(r.Path)
		got := h.do(t, r.Method, path, nil, nil)
		if r.Public {
			// /auth/me is public by design and reports "not logged in" as 401.
			if got.status == http.StatusUnauthorized && key != "GET /auth/me" {
				t.Errorf("public route %s answered 401", key)
			}
			continue
		}
		if got.status != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401 (%s)", key, got.status, got.body)
			continue
		}
		var p problem
		got.json(t, &p)
		if p.Code != "unauthenticated" || !strings.HasPrefix(got.header.Get("Content-Type"), "application/problem+json") {
			t.Errorf("%s: problem %+v content-type %q", key, p, got.header.Get("Content-Type"))
		}
	}
	// Every route in the OpenAPI document is in the audit list, and vice versa.
	r := h.do(t, "GET", "/openapi.json", nil, nil)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	r.json(t, &doc)
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	n := 0
	for _, item := range doc.Paths {
		n += len(item)
	}
	if n+3+h.srv.API.PageRoutes() != len(routes) { // +openapi.json, openapi.yaml, docs, and the web app's pages
		t.Fatalf("openapi lists %d operations, audit saw %d routes", n, len(routes))
	}
}

func TestUnknownPathIsProblem404(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	r := h.do(t, "GET", "/nope", nil, nil)
	var p problem
	r.json(t, &p)
	if r.status != 404 || p.Code != "not_found" {
		t.Fatalf("got %d %+v", r.status, p)
	}
}

func TestSandboxLifecycleOverHTTP(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	v := h.create(t, map[string]any{"vcpus": 2, "memoryMb": 1024, "name": "web"})
	if v.Status != "running" || v.Vcpus != 2 || v.MemoryMB != 1024 || v.IPAddress == "" {
		t.Fatalf("created %+v", v)
	}
	if len(v.Timings) == 0 {
		t.Fatalf("no phase timings in %+v", v)
	}
	r := h.do(t, "GET", "/api/sandboxes/"+v.ID, nil, nil)
	if r.status != 200 {
		t.Fatalf("get: %d", r.status)
	}
	r = h.do(t, "GET", "/api/sandboxes?status=running", nil, nil)
	var list struct{ Sandboxes []view }
	r.json(t, &list)
	if len(list.Sandboxes) != 1 || list.Sandboxes[0].ID != v.ID {
		t.Fatalf("list: %s", r.body)
	}
	steps := []struct {
		method, path string
		status       int
		want         string
	}{
		{"POST", "/stop", 200, "stopped"},
		{"POST", "/stop", 409, ""},
		{"POST", "/restart", 409, ""},
		{"POST", "/start", 200, "running"},
		{"POST", "/start", 409, ""},
		{"POST", "/restart", 200, "running"},
		{"DELETE", "", 204, ""},
		{"GET", "", 404, ""},
		{"POST", "/stop", 404, ""},
	}
	for _, s := range steps {
		r := h.do(t, s.method, "/api/sandboxes/"+v.ID+s.path, nil, nil)
		if r.status != s.status {
			t.Fatalf("%s %s: %d %s, want %d", s.method, s.path, r.status, r.body, s.status)
		}
		if s.want != "" {
			var got view
			r.json(t, &got)
			if got.Status != s.want {
				t.Fatalf("%s %s: status %s, want %s", s.method, s.path, got.Status, s.want)
			}
		}
		if r.status >= 400 {
			var p problem
			r.json(t, &p)
			want := map[int]string{404: "not_found", 409: "conflict"}[r.status]
			if p.Code != want {
				t.Fatalf("%s %s: code %q, want %q", s.method, s.path, p.Code, want)
			}
		}
	}
}

func TestBadInputNamesTheField(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	tests := []struct {
		name, body, field string
	}{
		{"vcpus too high", `{"vcpus": 9}`, "vcpus"},
		{"vcpus zero", `{"vcpus": 0}`, "vcpus"},
		{"vcpus string", `{"vcpus": "two"}`, "vcpus"},
		{"memory too low", `{"memoryMb": 256}`, "memoryMb"},
		{"memory too high", `{"memoryMb": 32768}`, "memoryMb"},
		{"bad name", `{"name": "Web_App"}`, "name"},
		{"bad image", `{"image": "../etc"}`, "image"},
		{"bad workspace", `{"workspaceId": "short"}`, "workspaceId"},
		{"unknown field", `{"vcpu": 2}`, "vcpu"},
		{"malformed json", `{"vcpus": `, ""},
		{"not an object", `[1,2]`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do(t, "POST", "/api/sandboxes", tt.body, nil)
			var p problem
			r.json(t, &p)
			if r.status != 400 || p.Code != "invalid_input" {
				t.Fatalf("got %d %+v, want 400 invalid_input", r.status, p)
			}
			if !strings.Contains(p.Detail, tt.field) {
				t.Fatalf("detail %q does not name %q", p.Detail, tt.field)
			}
		})
	}
	// Nothing was half-created.
	r := h.do(t, "GET", "/api/sandboxes", nil, nil)
	var list struct{ Sandboxes []view }
	r.json(t, &list)
	if len(list.Sandboxes) != 0 {
		t.Fatalf("bad input left sandboxes behind: %s", r.body)
	}
	for _, path := range []string{"/api/sandboxes/UPPERCASE123", "/api/sandboxes/abc", "/api/sandboxes/abcdefghijk%2F"} {
		r := h.do(t, "GET", path, nil, nil)
		if r.status != 400 {
			t.Fatalf("GET %s: %d, want 400", path, r.status)
		}
	}
	if r := h.do(t, "GET", "/api/sandboxes/abcdefghijkl", nil, nil); r.status != 404 {
		t.Fatalf("unknown id: %d, want 404", r.status)
	}
	if r := h.do(t, "GET", "/api/sandboxes?status=bogus", nil, nil); r.status != 400 {
		t.Fatalf("bad status filter: %d, want 400", r.status)
	}
}

func TestSandboxLimit429(t *testing.T) {
	h := newHarness(t, config.ModeMock, func(c *config.Config) { c.Server.MaxSandboxes = 2 })
	a := h.create(t, nil)
	h.create(t, nil)
	r := h.do(t, "POST", "/api/sandboxes", nil, nil)
	var p problem
	r.json(t, &p)
	if r.status != 429 || p.Code != "sandbox_limit" {
		t.Fatalf("third create: %d %+v", r.status, p)
	}
	// A stopped sandbox frees its slot, and cannot start again while the host is full.
	if r := h.do(t, "POST", "/api/sandboxes/"+a.ID+"/stop", nil, nil); r.status != 200 {
		t.Fatalf("stop: %d", r.status)
	}
	h.create(t, nil)
	if r := h.do(t, "POST", "/api/sandboxes/"+a.ID+"/start", nil, nil); r.status != 429 {
		t.Fatalf("start while full: %d %s", r.status, r.body)
	}
}

func TestAsyncCreateReturns202(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	r := h.do(t, "POST", "/api/sandboxes?wait=false", nil, nil)
	if r.status != 202 || !strings.HasPrefix(r.header.Get("Location"), "/api/sandboxes/") {
		t.Fatalf("async create: %d %v", r.status, r.header)
	}
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct{ id, event, data string }

func readEvents(t *testing.T, body io.Reader, n int, timeout time.Duration) []sseEvent {
	t.Helper()
	out := make(chan []sseEvent, 1)
	go func() {
		var evs []sseEvent
		var cur sseEvent
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.event != "" {
					evs = append(evs, cur)
					if len(evs) == n {
						out <- evs
						return
					}
				}
				cur = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			}
		}
		out <- evs
	}()
	select {
	case evs := <-out:
		return evs
	case <-time.After(timeout):
		t.Fatalf("timed out waiting for %d events", n)
		return nil
	}
}

func TestEventsResume(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	v := h.create(t, nil) // created + updated(running) at least

	get := func(lastID string) *http.Response {
		req, _ := http.NewRequest("GET", h.ts.URL+"/api/events", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("events: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
		}
		return res
	}
	res := get("0")
	first := readEvents(t, res.Body, 2, 5*time.Second)
	res.Body.Close()
	if first[0].event != "sandbox.created" || !strings.Contains(first[0].data, v.ID) {
		t.Fatalf("first event %+v", first[0])
	}
	// Resume after the first event: the second arrives again, then live ones follow.
	res = get(first[0].id)
	defer res.Body.Close()
	go func() {
		time.Sleep(50 * time.Millisecond)
		h.do(t, "POST", "/api/sandboxes/"+v.ID+"/stop", nil, nil)
	}()
	// Replayed: updated(running). Live: updated(stopping), updated(stopped).
	evs := readEvents(t, res.Body, 3, 5*time.Second)
	if evs[0].id != first[1].id {
		t.Fatalf("resume replayed %+v first, want id %s", evs[0], first[1].id)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.id] {
			t.Fatalf("duplicate event id %s", e.id)
		}
		seen[e.id] = true
	}
	if !strings.Contains(evs[1].data, `"stopping"`) || !strings.Contains(evs[2].data, `"stopped"`) {
		t.Fatalf("live stop events missing: %+v", evs)
	}
	if r := h.do(t, "GET", "/api/events", nil, map[string]string{"Last-Event-ID": "x"}); r.status != 400 {
		t.Fatalf("bad Last-Event-ID: %d", r.status)
	}
}

func TestEventsHeartbeat(t *testing.T) {
	old := api.HeartbeatInterval
	api.HeartbeatInterval = 20 * time.Millisecond
	t.Cleanup(func() { api.HeartbeatInterval = old })
	h := newHarness(t, config.ModeMock, nil)
	res, err := http.Get(h.ts.URL + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	deadline := time.After(5 * time.Second)
	got := make(chan bool, 1)
	go func() {
		for sc.Scan() {
			if sc.Text() == ": heartbeat" {
				got <- true
				return
			}
		}
	}()
	select {
	case <-got:
	case <-deadline:
		t.Fatal("no heartbeat")
	}
}

func TestSystemStatsAndConfig(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	h.create(t, nil)
	r := h.do(t, "GET", "/api/system/stats", nil, nil)
	var st struct {
		ActiveSandboxes int     `json:"activeSandboxes"`
		MaxSandboxes    int     `json:"maxSandboxes"`
		MemoryTotal     uint64  `json:"memoryTotalBytes"`
		DiskTotal       uint64  `json:"diskTotalBytes"`
		CPUPercent      float64 `json:"cpuPercent"`
	}
	r.json(t, &st)
	if r.status != 200 || st.ActiveSandboxes != 1 || st.MaxSandboxes != 20 || st.MemoryTotal == 0 || st.DiskTotal == 0 {
		t.Fatalf("stats: %d %s", r.status, r.body)
	}
	r = h.do(t, "GET", "/config", nil, nil)
	var c struct {
		AuthMode    string            `json:"authMode"`
		SSHPort     int               `json:"sshPort"`
		URLPatterns map[string]string `json:"urlPatterns"`
	}
	r.json(t, &c)
	if c.AuthMode != "none" || c.SSHPort != 2222 || !strings.Contains(c.URLPatterns["vscode"], "sandbox-{id}") {
		t.Fatalf("config: %s", r.body)
	}
	r = h.do(t, "GET", "/health/ready", nil, nil)
	if r.status != 200 {
		t.Fatalf("ready: %d %s", r.status, r.body)
	}
	r = h.do(t, "GET", "/metrics", nil, nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte("go_goroutines")) {
		t.Fatalf("metrics: %d", r.status)
	}
}

func TestAPITokensInProduction(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	ctx := context.Background()
	u, err := h.srv.Store.UpsertGitHubUser(ctx, storeUser("octocat", 1))
	if err != nil {
		t.Fatal(err)
	}
	secret, _, err := h.srv.Auth.CreateToken(ctx, auth.Principal{User: u, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	bearer := map[string]string{"Authorization": "Bearer " + secret}
	if r := h.do(t, "GET", "/api/sandboxes", nil, nil); r.status != 401 {
		t.Fatalf("anonymous list: %d", r.status)
	}
	if r := h.do(t, "GET", "/api/sandboxes", nil, bearer); r.status != 200 {
		t.Fatalf("token list: %d %s", r.status, r.body)
	}
	// A second token made through the API, then revoked through the API.
	r := h.do(t, "POST", "/api/tokens", map[string]any{"name": "laptop"}, bearer)
	var created struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	r.json(t, &created)
	if r.status != 201 || !strings.HasPrefix(created.Token, "atl_") {
		t.Fatalf("create token: %d %s", r.status, r.body)
	}
	r = h.do(t, "GET", "/api/tokens", nil, bearer)
	if r.status != 200 || bytes.Contains(r.body, []byte(created.Token)) || !bytes.Contains(r.body, []byte(created.ID)) {
		t.Fatalf("list tokens leaks or misses: %s", r.body)
	}
	second := map[string]string{"Authorization": "Bearer " + created.Token}
	if r := h.do(t, "DELETE", "/api/tokens/"+created.ID, nil, bearer); r.status != 204 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	if r := h.do(t, "GET", "/api/sandboxes", nil, second); r.status != 401 {
		t.Fatalf("revoked token still works: %d", r.status)
	}
	if r := h.do(t, "POST", "/api/tokens", map[string]any{"name": ""}, bearer); r.status != 400 {
		t.Fatalf("empty token name: %d", r.status)
	}
	// Sandboxes are private to their owner.
	v := h.create2(t, bearer)
	other, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("mallory", 2))
	s2, _, _ := h.srv.Auth.CreateToken(ctx, auth.Principal{User: other, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "x"})
	if r := h.do(t, "GET", "/api/sandboxes/"+v.ID, nil, map[string]string{"Authorization": "Bearer " + s2}); r.status != 404 {
		t.Fatalf("other user's sandbox: %d", r.status)
	}
	if r := h.do(t, "DELETE", "/api/sandboxes/"+v.ID, nil, map[string]string{"Authorization": "Bearer " + s2}); r.status != 404 {
		t.Fatalf("other user's delete: %d", r.status)
	}
}

func (h *harness) create2(t *testing.T, hdr map[string]string) view {
	r := h.do(t, "POST", "/api/sandboxes", map[string]any{}, hdr)
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var v view
	r.json(t, &v)
	return v
}

func FuzzCreateSandboxBody(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"vcpus":2,"memoryMb":1024}`, `{"vcpus":9}`, `{"name":"a"}`, `{"image":"dev-base"}`,
		`{"workspaceId":"abcdefghijkl"}`, `null`, `[]`, `"x"`, `{"vcpus":1e309}`, `{"vcpus":-1}`,
		`{"name":"` + strings.Repeat("a", 100) + `"}`, "\x00", `{"vcpus":2,"vcpus":3}`, `{"memoryMb":1.5}`,
	} {
		f.Add([]byte(s))
	}
	h := newHarness(f, config.ModeMock, func(c *config.Config) { c.Server.MaxSandboxes = 1000 })
	f.Fuzz(func(t *testing.T, body []byte) {
		r := h.do(t, "POST", "/api/sandboxes?wait=false", body, nil)
		switch r.status {
		case 202:
			var v view
			r.json(t, &v)
			if v.Vcpus < 1 || v.Vcpus > 8 || v.MemoryMB < 512 || v.MemoryMB > 16384 {
				t.Fatalf("accepted out-of-range sandbox %+v from %q", v, body)
			}
		case 400, 429:
			var p problem
			r.json(t, &p)
			if p.Code == "" || p.Detail == "" {
				t.Fatalf("problem without code or detail: %s", r.body)
			}
		default:
			t.Fatalf("body %q: status %d %s", body, r.status, r.body)
		}
	})
}

// percentile returns the q-quantile of sorted durations.
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(float64(len(d)-1) * q)
	return d[i]
}

var _ = fmt.Sprintf
