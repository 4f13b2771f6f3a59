package edge

import (
	"atelier/internal/testenv"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/store"
)

func freePort(t testing.TB) int { return testenv.FreePort(t) }

func testConfig(t testing.TB) *config.Config {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeProduction
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.DataDir = dir
	cfg.Domain.BaseDomain = "atelier.test"
	cfg.Domain.Dashboard = "sandbox.atelier.test"
	cfg.Domain.HTTPPort = freePort(t)
	cfg.Domain.HTTPSPort = freePort(t)
	cfg.Auth.JWTSecret = strings.Repeat("k", 40)
	cfg.Auth.AllowedUsers = []string{"octocat"} // the harness's user
	return cfg
}

// clock is a settable time source shared by the edge and the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type harness struct {
	t     testing.TB
	cfg   *config.Config
	st    *store.Store
	e     *Edge
	clock *clock
	user  store.User
	p     auth.Principal // a dashboard login of user
	c     *http.Client
}

// newHarness starts an edge on loopback ports over a fresh store. The
// dashboard host answers "dashboard".
func newHarness(t testing.TB, mutate func(*config.Config, *Options)) *harness {
	t.Helper()
	cfg := testConfig(t)
	st, err := store.Open(context.Background(), filepath.Join(cfg.Server.DataDir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{t: t, cfg: cfg, st: st, clock: &clock{t: time.Now()}}
	opts := Options{Config: cfg, Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), RetryWindow: 300 * time.Millisecond, Now: h.clock.now}
	if mutate != nil {
		mutate(cfg, &opts)
	}
	h.e, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h.user, err = st.EnsureUser(ctx, store.User{ID: "u1", GitHubID: 1, Login: "octocat"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateSession(ctx, store.Session{ID: "sess1", UserID: "u1", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	h.p = auth.Principal{User: h.user, Method: auth.MethodCookie, SessionID: "sess1"}
	h.start()
	h.c = &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
			MaxIdleConnsPerHost: 64,
		},
	}
	t.Cleanup(h.c.CloseIdleConnections)
	return h
}

func (h *harness) start() {
	h.t.Helper()
	dash := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/auth/edge" {
			// The dashboard's half of the login handshake (internal/api's
			// edgeLogin) for the harness's logged-in user.
			u, err := h.e.Grant(r.Context(), r.URL.Query().Get("host"), r.URL.Query().Get("next"), h.p)
			if err != nil {
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			}
			http.Redirect(w, r, u, http.StatusFound)
			return
		}
		io.WriteString(w, "dashboard")
	})
	if err := h.e.Start(context.Background(), dash); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { h.e.Stop() })
}

// sandbox inserts a running sandbox whose guest is at ip and runs the
// edge's OnRunning hook, as the lifecycle does.
func (h *harness) sandbox(id, ip string) {
	h.t.Helper()
	ctx := context.Background()
	err := h.st.InsertSandbox(ctx, store.Sandbox{ID: id, OwnerID: "u1", Image: "dev-base", Status: store.StatusRunning, IP: ip}, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.e.Hooks().OnRunning(ctx, viewOf(id, ip), nil); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) url(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(h.cfg.Domain.HTTPPort) + path
}

// get sends a request for host through the edge's HTTP port.
func (h *harness) do(method, host, path string, hdr http.Header) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.url(path), nil)
	req.Host = host
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := h.c.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	return res
}

func body(t testing.TB, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// login runs the handshake for host and returns the cookie header value.
func (h *harness) login(host string) string {
	h.t.Helper()
	u, err := h.e.Grant(context.Background(), host, "/", h.p)
	if err != nil {
		h.t.Fatal(err)
	}
	path := u[strings.Index(u, AuthPath):]
	res := h.do("GET", host, path, nil)
	body(h.t, res)
	for _, c := range res.Cookies() {
		if c.Name == h.e.CookieName() {
			return c.Name + "=" + c.Value
		}
	}
	h.t.Fatalf("login to %s: %d, no cookie", host, res.StatusCode)
	return ""
}

// backend is a guest stand-in: it echoes the request's headers as
// "Name: value" lines after "host=<Host>".
func backend(t testing.TB) (port int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(echoHeaders)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func echoHeaders(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	b.WriteString("host=" + r.Host + " path=" + r.URL.RequestURI() + "\n")
	for k, vs := range r.Header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	io.WriteString(w, b.String())
}
