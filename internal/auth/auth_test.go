package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"atelier/internal/config"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

const testJWTSecret = "test-jwt-secret-0123456789abcdef0123456789"

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type envOpts struct {
	baseDomain   string // default "localhost"
	mode         config.Mode
	allowedUsers []string
	allowedOrg   string
	admins       []string
	opts         []Option // extra service options
}

// env is one Atelier dashboard (the four auth handlers plus a protected
// endpoint) backed by a real store, talking to a GitHub stand-in.
type env struct {
	t       *testing.T
	cfg     *config.Config
	st      *store.Store
	svc     *Service
	gh      *githubStub
	app     *httptest.Server
	handler atomic.Pointer[http.Handler] // what app serves; restart swaps it
	dash    *url.URL                     // the configured dashboard URL; requests to it reach app
	clock   *testClock
	logs    *syncBuffer
	box     *secretbox.Box
	opts    []Option

	connMu    sync.Mutex
	connected []connectedToken // what the connect flow handed its saver
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.baseDomain == "" {
		o.baseDomain = "localhost"
	}
	if o.mode == "" {
		o.mode = config.ModeProduction
	}
	gh := newGitHubStub(t)
	cfg := config.Default()
	cfg.Domain.BaseDomain = o.baseDomain
	cfg.Domain.Dashboard = "sandbox." + o.baseDomain
	cfg.Auth.GitHub = config.GitHub{ClientID: gh.clientID, ClientSecret: gh.clientSecret, WebURL: gh.srv.URL, APIURL: gh.srv.URL}
	cfg.Auth.JWTSecret = testJWTSecret
	cfg.Auth.AllowedOrg = o.allowedOrg
	cfg.Auth.AllowedUsers = o.allowedUsers
	cfg.Auth.Admins = o.admins
	cfg.Auth.SessionTTLHours = 24
	cfg.Server.Mode = o.mode
	dir := t.TempDir()
	cfg.Server.DataDir = dir
	ctx := context.Background()
	st, err := store.Open(ctx, dir)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	box, err := secretbox.LoadOrCreate(filepath.Join(dir, secretbox.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, gh: gh, box: box, opts: o.opts,
		clock: &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}, logs: &syncBuffer{}}
	e.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*e.handler.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(e.app.Close)
	e.serve(cfg)
	e.dash, err = url.Parse(cfg.DashboardURL())
	if err != nil || e.dash.Host == "" {
		t.Fatalf("dashboard url %q: %v", cfg.DashboardURL(), err)
	}
	return e
}

// restart is a manager restart with a changed configuration: a new Service
// over the same store, secrets key, GitHub and clock.
func (e *env) restart(mutate func(*config.Config)) {
	cfg := *e.cfg
	cfg.Auth.AllowedUsers = slices.Clone(e.cfg.Auth.AllowedUsers)
	cfg.Auth.Admins = slices.Clone(e.cfg.Auth.Admins)
	mutate(&cfg)
	e.serve(&cfg)
}

func (e *env) serve(cfg *config.Config) {
	svc := New(cfg, e.st, append([]Option{
		WithHTTPClient(e.gh.Client()),
		WithClock(e.clock.Now),
		WithLogger(slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		WithSecrets(e.box),
	}, e.opts...)...)
	mux := http.NewServeMux()
	mux.Handle("/auth/github", svc.LoginHandler())
	mux.Handle("/auth/callback", svc.CallbackHandler())
	mux.Handle("/auth/logout", svc.LogoutHandler())
	mux.Handle("/auth/me", svc.MeHandler())
	mux.Handle(ConnectPath, authedForTest(svc, svc.ConnectHandler()))
	mux.Handle(ConnectCallbackPath, authedForTest(svc, svc.ConnectCallbackHandler(e.saveConnect)))
	mux.HandleFunc("/protected", func(w http.ResponseWriter, r *http.Request) {
		p, err := svc.Authenticate(r)
		switch {
		case errors.Is(err, ErrUnauthenticated):
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		case errors.Is(err, ErrForbidden):
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		case errors.Is(err, ErrUnavailable):
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if !p.Permits(r) {
			http.Error(w, "scope", http.StatusForbidden)
			return
		}
		// Round-trip through the context the way the API middleware will.
		p, _ = PrincipalFrom(WithPrincipal(r.Context(), p))
		_ = json.NewEncoder(w).Encode(p)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "dashboard "+r.URL.RequestURI())
	})
	var h http.Handler = mux
	e.handler.Store(&h)
	e.cfg, e.svc = cfg, svc
}

// dashTransport sends requests for the configured dashboard host to the test
// server, the way DNS and Caddy would, and records callback traffic.
type dashTransport struct {
	dashHost string
	app      *url.URL
	base     http.RoundTripper

	mu        sync.Mutex
	callbacks []recorded
}

type recorded struct {
	url       string
	cookie    string // Cookie header the browser sent
	setCookie []string
}

func (d *dashTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != d.dashHost {
		return d.base.RoundTrip(r)
	}
	orig := r.URL.String()
	r2 := r.Clone(r.Context())
	r2.URL.Scheme = d.app.Scheme
	r2.URL.Host = d.app.Host
	r2.Host = d.dashHost
	resp, err := d.base.RoundTrip(r2)
	if err == nil {
		resp.Request = r // the browser sees the URL it asked for
	}
	if err == nil && r.URL.Path == "/auth/callback" {
		d.mu.Lock()
		d.callbacks = append(d.callbacks, recorded{url: orig, cookie: r.Header.Get("Cookie"), setCookie: resp.Header.Values("Set-Cookie")})
		d.mu.Unlock()
	}
	return resp, err
}

func (d *dashTransport) lastCallback(t *testing.T) recorded {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.callbacks) == 0 {
		t.Fatal("no callback request was made")
	}
	return d.callbacks[len(d.callbacks)-1]
}

// browser is one user agent: its own cookie jar.
type browser struct {
	e        *env
	jar      *cookiejar.Jar
	tr       *dashTransport
	client   *http.Client // follows redirects
	noFollow *http.Client // stops before leaving for GitHub
}

func (e *env) browser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	app, _ := url.Parse(e.app.URL)
	tr := &dashTransport{dashHost: e.dash.Host, app: app, base: http.DefaultTransport}
	ghHost := strings.TrimPrefix(e.gh.srv.URL, "http://")
	return &browser{
		e: e, jar: jar, tr: tr,
		client: &http.Client{Jar: jar, Transport: tr, Timeout: 10 * time.Second},
		noFollow: &http.Client{Jar: jar, Transport: tr, Timeout: 10 * time.Second,
			CheckRedirect: func(req *http.Request, _ []*http.Request) error {
				if req.URL.Host == ghHost {
					return http.ErrUseLastResponse
				}
				return nil
			}},
	}
}

func (e *env) url(path string) string { return e.dash.String() + path }

// get fetches url following redirects and returns the final response with its body.
func (b *browser) get(c *http.Client, u string) (*http.Response, string) {
	b.e.t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		b.e.t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// login runs the whole browser flow and returns the final response.
func (b *browser) login(next string) (*http.Response, string) {
	u := b.e.url("/auth/github")
	if next != "" {
		u += "?next=" + url.QueryEscape(next)
	}
	return b.get(b.client, u)
}

// startLogin stops at the redirect to GitHub and returns the authorize URL.
func (b *browser) startLogin() string {
	b.e.t.Helper()
	resp, _ := b.get(b.noFollow, b.e.url("/auth/github"))
	if resp.StatusCode != http.StatusFound {
		b.e.t.Fatalf("login start: status %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, b.e.gh.srv.URL+"/login/oauth/authorize?") {
		b.e.t.Fatalf("login start redirected to %q", loc)
	}
	return loc
}

func (b *browser) sessionCookie() *http.Cookie {
	for _, c := range b.jar.Cookies(b.e.dash) {
		if c.Name == b.e.svc.SessionCookieName() {
			return c
		}
	}
	return nil
}

// call makes one request as this browser (cookies from the jar).
func (b *browser) call(method, path string, hdr map[string]string) (int, Principal) {
	b.e.t.Helper()
	return doCall(b.e.t, b.client, method, b.e.url(path), hdr)
}

// raw makes a request with no jar: the caller supplies every header.
func (e *env) raw(method, path string, hdr map[string]string) (int, Principal) {
	e.t.Helper()
	return e.rawT(e.t, method, path, hdr)
}

// rawT is raw for subtests, which must fail their own t.
func (e *env) rawT(t *testing.T, method, path string, hdr map[string]string) (int, Principal) {
	t.Helper()
	app, _ := url.Parse(e.app.URL)
	c := &http.Client{Transport: &dashTransport{dashHost: e.dash.Host, app: app, base: http.DefaultTransport}, Timeout: 10 * time.Second}
	return doCall(t, c, method, e.url(path), hdr)
}

func doCall(t *testing.T, c *http.Client, method, u string, hdr map[string]string) (int, Principal) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	var p Principal
	if resp.StatusCode == http.StatusOK && method != http.MethodHead {
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatalf("decode principal: %v", err)
		}
	}
	return resp.StatusCode, p
}

// countSessions counts session rows: every row expires before the far future.
func (e *env) countSessions() int64 {
	e.t.Helper()
	n, err := e.st.DeleteExpiredSessions(context.Background(), e.clock.Now().AddDate(100, 0, 0))
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) origin() string { return e.dash.Scheme + "://" + e.dash.Host }

// loggedIn returns a browser with a session for login (which must be allowed).
func (e *env) loggedIn(login string) *browser {
	e.t.Helper()
	e.gh.actAs(login)
	b := e.browser()
	resp, body := b.login("")
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RequestURI() != "/" || b.sessionCookie() == nil {
		e.t.Fatalf("login as %s: status %d at %s: %s", login, resp.StatusCode, resp.Request.URL, body)
	}
	return b
}

func TestLoginAllowedUser(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"someone", " ALICE "}})
	e.gh.addUser(1001, "alice")
	e.gh.actAs("alice")
	b := e.browser()

	resp, body := b.login("/sandboxes/abc?tab=logs")
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RequestURI() != "/sandboxes/abc?tab=logs" {
		t.Fatalf("landed on %s (%d): %s", resp.Request.URL, resp.StatusCode, body)
	}
	if resp.Request.URL.Host != e.dash.Host {
		t.Fatalf("landed on host %s, want the dashboard %s", resp.Request.URL.Host, e.dash.Host)
	}
	if b.sessionCookie() == nil {
		t.Fatal("no session cookie after login")
	}
	for _, c := range b.jar.Cookies(&url.URL{Scheme: e.dash.Scheme, Host: e.dash.Host, Path: "/auth/callback"}) {
		if c.Name == stateCookieName {
			t.Fatal("state cookie left behind after the callback")
		}
	}

	status, p := b.call(http.MethodGet, "/protected", nil)
	if status != http.StatusOK {
		t.Fatalf("protected: status %d", status)
	}
	if p.Method != MethodCookie || p.User.Login != "alice" || p.User.GitHubID != 1001 || p.SessionID == "" || p.Admin || p.Scope != ScopeFull {
		t.Fatalf("principal = %+v", p)
	}
	u, err := e.st.GetUser(context.Background(), p.User.ID)
	if err != nil || u.Login != "alice" || u.Name != "Name of alice" || u.AvatarURL != "https://avatars.example/alice" {
		t.Fatalf("stored user = %+v, %v", u, err)
	}

	req, _ := http.NewRequest(http.MethodGet, e.url("/auth/me"), nil)
	mresp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer mresp.Body.Close()
	var me map[string]any
	if err := json.NewDecoder(mresp.Body).Decode(&me); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"id": p.User.ID, "login": "alice", "name": "Name of alice", "avatarUrl": "https://avatars.example/alice", "method": "cookie",
		"scope": "full", "admin": false}
	if mresp.StatusCode != http.StatusOK || len(me) != len(want) {
		t.Fatalf("me = %d %v", mresp.StatusCode, me)
	}
	for k, v := range want {
		if me[k] != v {
			t.Fatalf("me[%s] = %v, want %v", k, me[k], v)
		}
	}

	// A second login keeps the same user row (keyed by GitHub id).
	b2 := e.loggedIn("alice")
	_, p2 := b2.call(http.MethodGet, "/protected", nil)
	if p2.User.ID != p.User.ID || p2.SessionID == p.SessionID {
		t.Fatalf("second login: user %s session %s, first: user %s session %s", p2.User.ID, p2.SessionID, p.User.ID, p.SessionID)
	}

	// Secrets from the flow never reach the logs.
	_, _, issued := e.gh.stats()
	logs := e.logs.String()
	secrets := append(issued, b.sessionCookie().Value, testJWTSecret, e.gh.clientSecret)
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Fatalf("log output contains a secret %q:\n%s", s, logs)
		}
	}
}

func TestLoginAuthorisation(t *testing.T) {
	cases := []struct {
		name       string
		users      []string
		org        string
		membership string // state in org "acme"; "" = none
		memberOrg  string // org the membership is in (default acme)
		wantOK     bool
	}{
		{name: "active org member", org: "acme", membership: "active", wantOK: true},
		{name: "pending invitation", org: "acme", membership: "pending"},
		{name: "not a member", org: "acme"},
		{name: "member of another org", org: "acme", membership: "active", memberOrg: "other"},
		{name: "allow-list miss without org", users: []string{"alice"}},
		{name: "allow-list miss, org refuses", users: []string{"alice"}, org: "acme", membership: "pending"},
		{name: "allow-list hit needs no org", users: []string{"BOB"}, org: "acme", wantOK: true},
		{name: "nothing configured allows nobody"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{allowedUsers: tc.users, allowedOrg: tc.org})
			e.gh.addUser(2002, "bob")
			if tc.membership != "" {
				org := tc.memberOrg
				if org == "" {
					org = "acme"
				}
				e.gh.setMembership(org, "bob", tc.membership)
			}
			e.gh.actAs("bob")
			b := e.browser()
			resp, body := b.login("/x")
			if tc.wantOK {
				if resp.Request.URL.RequestURI() != "/x" || b.sessionCookie() == nil {
					t.Fatalf("landed on %s: %s", resp.Request.URL, body)
				}
				if status, p := b.call(http.MethodGet, "/protected", nil); status != http.StatusOK || p.User.Login != "bob" {
					t.Fatalf("protected = %d %+v", status, p)
				}
				return
			}
			if got := resp.Request.URL.RequestURI(); got != "/?login_error=unauthorized" {
				t.Fatalf("landed on %s, want /?login_error=unauthorized", got)
			}
			if b.sessionCookie() != nil {
				t.Fatal("unauthorised user got a session cookie")
			}
			if n := e.countSessions(); n != 0 {
				t.Fatalf("%d sessions created for an unauthorised user", n)
			}
			if status, _ := b.call(http.MethodGet, "/protected", nil); status != http.StatusUnauthorized {
				t.Fatalf("protected = %d", status)
			}
		})
	}
}

func TestCallbackRejectsBadState(t *testing.T) {
	setStateCookie := func(b *browser, state string) {
		u := &url.URL{Scheme: b.e.dash.Scheme, Host: b.e.dash.Host, Path: "/auth/callback"}
		b.jar.SetCookies(u, []*http.Cookie{{Name: stateCookieName, Value: stateHash(state), Path: "/auth/callback"}})
	}
	expectInvalid := func(t *testing.T, e *env, resp *http.Response, body string) {
		t.Helper()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "invalid or expired login state") {
			t.Fatalf("callback = %d at %s: %q", resp.StatusCode, resp.Request.URL, body)
		}
		if n := e.countSessions(); n != 0 {
			t.Fatalf("%d sessions created", n)
		}
	}

	t.Run("unknown state", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		b := e.browser()
		setStateCookie(b, "forged-state")
		resp, body := b.get(b.client, e.url("/auth/callback?code=abc&state=forged-state"))
		expectInvalid(t, e, resp, body)
	})

	t.Run("missing state", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		b := e.browser()
		resp, body := b.get(b.client, e.url("/auth/callback?code=abc"))
		expectInvalid(t, e, resp, body)
	})

	t.Run("error param with unknown state is not trusted", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		b := e.browser()
		resp, body := b.get(b.client, e.url("/auth/callback?error=access_denied&state=nope"))
		expectInvalid(t, e, resp, body)
	})

	t.Run("state from another browser", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		e.gh.addUser(1, "alice")
		e.gh.actAs("alice")
		victim, attacker := e.browser(), e.browser()
		authorize := attacker.startLogin()
		// The attacker makes the victim's browser complete the attacker's login.
		resp, body := victim.get(victim.client, authorize)
		expectInvalid(t, e, resp, body)
		if victim.sessionCookie() != nil {
			t.Fatal("victim's browser got a session")
		}
		// The refused attempt did not burn the state for its own browser.
		resp, body = attacker.get(attacker.client, authorize)
		if resp.StatusCode != http.StatusOK || attacker.sessionCookie() == nil {
			t.Fatalf("original browser: %d at %s: %s", resp.StatusCode, resp.Request.URL, body)
		}
	})

	t.Run("state cookie of a different login", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		e.gh.addUser(1, "alice")
		e.gh.actAs("alice")
		b := e.browser()
		authorize := b.startLogin()
		setStateCookie(b, "some-other-state")
		resp, body := b.get(b.client, authorize)
		expectInvalid(t, e, resp, body)
	})

	t.Run("replayed state", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		e.gh.addUser(1, "alice")
		b := e.loggedIn("alice")
		cb := b.tr.lastCallback(t)
		// Replay the exact callback request, state cookie included.
		req, _ := http.NewRequest(http.MethodGet, cb.url, nil)
		req.Header.Set("Cookie", cb.cookie)
		if !strings.Contains(cb.cookie, stateCookieName+"=") {
			t.Fatalf("recorded callback carried no state cookie: %q", cb.cookie)
		}
		resp, err := (&http.Client{Transport: b.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid or expired login state") {
			t.Fatalf("replay = %d: %s", resp.StatusCode, body)
		}
		for _, sc := range resp.Header.Values("Set-Cookie") {
			if strings.HasPrefix(sc, CookieName+"=") {
				t.Fatalf("replay set a session cookie: %s", sc)
			}
		}
		if n := e.countSessions(); n != 1 {
			t.Fatalf("%d sessions, want only the original", n)
		}
	})

	t.Run("expired state", func(t *testing.T) {
		e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
		e.gh.addUser(1, "alice")
		e.gh.actAs("alice")
		b := e.browser()
		authorize := b.startLogin()
		e.clock.Advance(oauthStateTTL + time.Second)
		resp, body := b.get(b.client, authorize)
		expectInvalid(t, e, resp, body)
	})
}

func TestGitHubDenied(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	e.gh.addUser(1, "alice")
	e.gh.actAs("alice")
	e.gh.setDeny(true)
	b := e.browser()
	resp, _ := b.login("/x")
	if got := resp.Request.URL.RequestURI(); got != "/?login_error=denied" {
		t.Fatalf("landed on %s", got)
	}
	if b.sessionCookie() != nil || e.countSessions() != 0 {
		t.Fatal("denied login created a session")
	}
}

func TestPKCEMismatch(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	e.gh.addUser(1, "alice")
	e.gh.actAs("alice")
	b := e.browser()
	authorize, err := url.Parse(b.startLogin())
	if err != nil {
		t.Fatal(err)
	}
	q := authorize.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		t.Fatalf("authorize url lacks PKCE: %s", authorize)
	}
	// A code minted for someone else's verifier (an intercepted or injected
	// code) must not be redeemable with ours.
	q.Set("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
	authorize.RawQuery = q.Encode()
	resp, body := b.get(b.client, authorize.String())
	if got := resp.Request.URL.RequestURI(); got != "/?login_error=failed" {
		t.Fatalf("landed on %s: %s", got, body)
	}
	exchanges, rejects, _ := e.gh.stats()
	if exchanges != 0 || len(rejects) != 1 || rejects[0] != "code_verifier mismatch" {
		t.Fatalf("stand-in: %d exchanges, rejects %v", exchanges, rejects)
	}
	if b.sessionCookie() != nil || e.countSessions() != 0 {
		t.Fatal("PKCE mismatch created a session")
	}
	_, _, issued := e.gh.stats()
	for _, code := range issued {
		if strings.Contains(e.logs.String(), code) {
			t.Fatalf("the authorization code was logged:\n%s", e.logs.String())
		}
	}
}

func TestReturnPath(t *testing.T) {
	cases := map[string]string{
		"":                       "/",
		"/":                      "/",
		"/sandboxes/abc?x=1#top": "/sandboxes/abc?x=1#top",
		"//evil.example/":        "/",
		"/\\evil.example":        "/",
		"https://evil.example/":  "/",
		"evil":                   "/",
		"/a\r\nSet-Cookie: x":    "/",
		"/a\x00b":                "/",
	}
	for in, want := range cases {
		if got := safeReturnPath(in); got != want {
			t.Errorf("safeReturnPath(%q) = %q, want %q", in, got, want)
		}
	}

	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	e.gh.addUser(1, "alice")
	e.gh.actAs("alice")
	b := e.browser()
	resp, _ := b.login("//evil.example/path")
	if resp.Request.URL.Host != e.dash.Host || resp.Request.URL.RequestURI() != "/" {
		t.Fatalf("open redirect: landed on %s", resp.Request.URL)
	}
}

func TestLogoutRevokesServerSide(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	e.gh.addUser(1, "alice")
	b := e.loggedIn("alice")
	old := b.sessionCookie().Value
	cookieHdr := map[string]string{"Cookie": CookieName + "=" + old}

	resp, _ := b.get(b.client, e.url("/auth/logout"))
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET logout = %d", resp.StatusCode)
	}

	logout := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, e.url("/auth/logout"), nil)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := b.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := logout("https://evil.example"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site logout = %d", r.StatusCode)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", cookieHdr); status != http.StatusOK {
		t.Fatalf("session dead after a refused logout: %d", status)
	}

	r := logout(e.origin())
	if r.StatusCode != http.StatusNoContent {
		t.Fatalf("logout = %d", r.StatusCode)
	}
	var cleared *http.Cookie
	for _, c := range r.Cookies() {
		if c.Name == CookieName {
			cleared = c
		}
	}
	if cleared == nil || cleared.MaxAge >= 0 || cleared.Value != "" || !cleared.HttpOnly || cleared.Path != "/" || cleared.Domain != "" {
		t.Fatalf("logout cookie = %+v", cleared)
	}
	if b.sessionCookie() != nil {
		t.Fatal("browser still holds the session cookie")
	}

	// The old value, replayed, is refused: the session row is revoked.
	if status, _ := e.raw(http.MethodGet, "/protected", cookieHdr); status != http.StatusUnauthorized {
		t.Fatalf("old cookie after logout = %d", status)
	}
	req, _ := http.NewRequest(http.MethodGet, e.url("/auth/me"), nil)
	req.Header.Set("Cookie", CookieName+"="+old)
	mresp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer mresp.Body.Close()
	var prob map[string]any
	_ = json.NewDecoder(mresp.Body).Decode(&prob)
	if mresp.StatusCode != http.StatusUnauthorized || mresp.Header.Get("Content-Type") != "application/problem+json" ||
		prob["type"] != "about:blank" || prob["title"] != "Unauthorized" || prob["status"] != float64(401) || prob["code"] != "unauthenticated" || prob["detail"] == "" {
		t.Fatalf("me after logout = %d %s %v", mresp.StatusCode, mresp.Header.Get("Content-Type"), prob)
	}

	// Logging out without a session still answers 204 and clears the cookie.
	if r := logout(""); r.StatusCode != http.StatusNoContent {
		t.Fatalf("anonymous logout = %d", r.StatusCode)
	}
}

func TestForgedSessionCookies(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice", "mallory"}})
	e.gh.addUser(1, "alice")
	e.gh.addUser(2, "mallory")
	alice := e.loggedIn("alice")
	_, ap := alice.call(http.MethodGet, "/protected", nil)
	mallory := e.loggedIn("mallory")
	_, mp := mallory.call(http.MethodGet, "/protected", nil)
	real := mallory.sessionCookie().Value
	now := e.clock.Now()

	claims := func(sub, sid, iss string, exp time.Time) sessionClaims {
		c := sessionClaims{SessionID: sid}
		c.Subject, c.Issuer = sub, iss
		c.IssuedAt, c.ExpiresAt = jwt.NewNumericDate(now), jwt.NewNumericDate(exp)
		return c
	}
	sign := func(m jwt.SigningMethod, key any, c sessionClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	key := []byte(testJWTSecret)
	later := now.Add(time.Hour)
	parts := strings.Split(real, ".")
	forgedPayload, _ := json.Marshal(claims(ap.User.ID, ap.SessionID, jwtIssuer, later))

	cases := map[string]string{
		"payload swapped to alice": parts[0] + "." + b64(forgedPayload) + "." + parts[2],
		"signature flipped":        parts[0] + "." + parts[1] + "." + flip(parts[2]),
		"alg none":                 sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(mp.User.ID, mp.SessionID, jwtIssuer, later)),
		"alg none, no signature":   b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".",
		"HS512 with the secret":    sign(jwt.SigningMethodHS512, key, claims(mp.User.ID, mp.SessionID, jwtIssuer, later)),
		"wrong secret":             sign(jwt.SigningMethodHS256, []byte("not-the-secret"), claims(mp.User.ID, mp.SessionID, jwtIssuer, later)),
		"wrong issuer":             sign(jwt.SigningMethodHS256, key, claims(mp.User.ID, mp.SessionID, "someone-else", later)),
		"expired jwt":              sign(jwt.SigningMethodHS256, key, claims(mp.User.ID, mp.SessionID, jwtIssuer, now.Add(-time.Second))),
		"sub not the session user": sign(jwt.SigningMethodHS256, key, claims(ap.User.ID, mp.SessionID, jwtIssuer, later)),
		"unknown session":          sign(jwt.SigningMethodHS256, key, claims(mp.User.ID, "no-such-session", jwtIssuer, later)),
		"no session id":            sign(jwt.SigningMethodHS256, key, claims(mp.User.ID, "", jwtIssuer, later)),
		"garbage":                  "not.a.jwt",
	}
	for name, v := range cases {
		t.Run(name, func(t *testing.T) {
			if status, _ := e.rawT(t, http.MethodGet, "/protected", map[string]string{"Cookie": CookieName + "=" + v}); status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", status)
			}
		})
	}
	// Control: the genuine cookie, and a well-formed re-signing of it, work.
	resigned := sign(jwt.SigningMethodHS256, key, claims(mp.User.ID, mp.SessionID, jwtIssuer, later))
	for _, v := range []string{real, resigned} {
		if status, p := e.raw(http.MethodGet, "/protected", map[string]string{"Cookie": CookieName + "=" + v}); status != http.StatusOK || p.User.Login != "mallory" {
			t.Fatalf("genuine cookie: %d %+v", status, p)
		}
	}
}

func TestSessionExpiry(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	e.gh.addUser(1, "alice")
	b := e.loggedIn("alice")
	_, p := b.call(http.MethodGet, "/protected", nil)
	ttl := 24 * time.Hour
	if c := b.sessionCookie(); c == nil {
		t.Fatal("no cookie")
	}

	e.clock.Advance(ttl - time.Minute)
	if status, _ := b.call(http.MethodGet, "/protected", nil); status != http.StatusOK {
		t.Fatalf("before expiry: %d", status)
	}

	// A JWT that outlives its row is still refused: the row is authoritative.
	longJWT, err := jwt.NewWithClaims(jwt.SigningMethodHS256, sessionClaims{
		SessionID: p.SessionID,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject: p.User.ID, Issuer: jwtIssuer,
			ExpiresAt: jwt.NewNumericDate(e.clock.Now().Add(30 * 24 * time.Hour)),
		},
	}).SignedString([]byte(testJWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Minute)
	if status, _ := b.call(http.MethodGet, "/protected", nil); status != http.StatusUnauthorized {
		t.Fatalf("after expiry: %d", status)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", map[string]string{"Cookie": CookieName + "=" + longJWT}); status != http.StatusUnauthorized {
		t.Fatalf("long-lived jwt for an expired row: %d", status)
	}

	if err := e.svc.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.GetSession(context.Background(), p.SessionID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired session after sweep: %v", err)
	}
}

func TestOriginCheck(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	e.gh.addUser(1, "alice")
	b := e.loggedIn("alice")
	other := "http"
	if e.dash.Scheme == "http" {
		other = "https"
	}
	cases := []struct {
		method, origin string
		want           int
	}{
		{http.MethodGet, "", http.StatusOK},
		{http.MethodGet, "https://evil.example", http.StatusOK},
		{http.MethodHead, "", http.StatusOK},
		{http.MethodOptions, "", http.StatusOK},
		{http.MethodPost, "", http.StatusForbidden},
		{http.MethodPost, "null", http.StatusForbidden},
		{http.MethodPost, "https://evil.example", http.StatusForbidden},
		{http.MethodPost, e.origin() + ".evil.example", http.StatusForbidden},
		{http.MethodPost, other + "://" + e.dash.Host, http.StatusForbidden},
		{http.MethodPost, e.dash.Scheme + "://sandbox-abc123def456." + e.cfg.Domain.BaseDomain, http.StatusForbidden},
		{http.MethodPost, e.origin(), http.StatusOK},
		{http.MethodPut, "", http.StatusForbidden},
		{http.MethodPut, e.origin(), http.StatusOK},
		{http.MethodPatch, "https://evil.example", http.StatusForbidden},
		{http.MethodPatch, e.origin(), http.StatusOK},
		{http.MethodDelete, "", http.StatusForbidden},
		{http.MethodDelete, e.origin(), http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.origin, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.origin != "" {
				hdr["Origin"] = tc.origin
			}
			if status, _ := doCall(t, b.client, tc.method, e.url("/protected"), hdr); status != tc.want {
				t.Fatalf("status %d, want %d", status, tc.want)
			}
		})
	}
	// Without a cookie an unsafe request is simply unauthenticated.
	if status, _ := e.raw(http.MethodPost, "/protected", map[string]string{"Origin": e.origin()}); status != http.StatusUnauthorized {
		t.Fatalf("anonymous POST = %d", status)
	}
}

func TestAPITokens(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	ctx := context.Background()
	e.gh.addUser(1, "alice")
	browserAlice := e.loggedIn("alice")
	_, ap := browserAlice.call(http.MethodGet, "/protected", nil)
	alice := ap.User
	bob, err := e.st.UpsertGitHubUser(ctx, store.User{GitHubID: 2, Login: "bob"})
	if err != nil {
		t.Fatal(err)
	}

	asAlice := Principal{User: alice, Method: MethodCookie, Scope: ScopeFull}
	for _, name := range []string{"", "   ", strings.Repeat("x", 101)} {
		_, _, err := e.svc.CreateToken(ctx, asAlice, TokenRequest{Name: name})
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "name" || !errors.Is(err, ErrInvalid) {
			t.Fatalf("CreateToken(name %q) err = %v", name, err)
		}
	}
	if _, _, err := e.svc.CreateToken(ctx, asAlice, TokenRequest{Name: "x", TTL: -time.Hour}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative ttl err = %v", err)
	}

	secret, tok, err := e.svc.CreateToken(ctx, asAlice, TokenRequest{Name: strings.Repeat("é", 100)})
	if err != nil {
		t.Fatal(err)
	}
	// No lifetime asked: auth.tokenTtlDays (90 days), full scope.
	if !tokenSecretRe.MatchString(secret) || len(secret) != 56 || tok.Prefix != secret[:8] || tok.UserID != alice.ID ||
		tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(e.clock.Now().Add(90*24*time.Hour)) || tok.Scope != "full" {
		t.Fatalf("secret %q token %+v", secret, tok)
	}
	if js, _ := json.Marshal(tok); strings.Contains(string(js), secret[8:]) || strings.Contains(string(js), "hash") {
		t.Fatalf("token JSON leaks the secret: %s", js)
	}
	list, err := e.svc.ListTokens(ctx, alice.ID)
	if err != nil || len(list) != 1 || list[0].ID != tok.ID || list[0].Prefix != tok.Prefix {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if l, _ := e.svc.ListTokens(ctx, bob.ID); len(l) != 0 {
		t.Fatalf("bob sees alice's tokens: %+v", l)
	}

	bearer := map[string]string{"Authorization": "Bearer " + secret}
	status, p := e.raw(http.MethodGet, "/protected", bearer)
	if status != http.StatusOK || p.Method != MethodToken || p.TokenID != tok.ID || p.User.ID != alice.ID || p.Admin || p.Scope != ScopeFull {
		t.Fatalf("bearer = %d %+v", status, p)
	}
	// Tokens are not cookies: no Origin needed for writes.
	if status, _ := e.raw(http.MethodDelete, "/protected", bearer); status != http.StatusOK {
		t.Fatalf("bearer DELETE = %d", status)
	}
	list, _ = e.svc.ListTokens(ctx, alice.ID)
	if list[0].LastUsedAt == nil || !list[0].LastUsedAt.Equal(e.clock.Now()) {
		t.Fatalf("last used = %v, want %v", list[0].LastUsedAt, e.clock.Now())
	}

	t.Run("malformed bearer never falls back to the cookie", func(t *testing.T) {
		cookie := browserAlice.sessionCookie().Value
		for _, h := range []string{
			"Bearer", "Bearer ", "Bearer nope", "Basic YWxpY2U6cHc=", "bearer" + secret,
			"Bearer " + secret[:len(secret)-1], "Bearer " + strings.ToUpper(secret),
			"Bearer atl_" + strings.Repeat("a", 52), // well-formed, unknown
		} {
			hdr := map[string]string{"Authorization": h, "Cookie": CookieName + "=" + cookie}
			if status, _ := e.rawT(t, http.MethodGet, "/protected", hdr); status != http.StatusUnauthorized {
				t.Fatalf("Authorization %q with a valid cookie = %d", h, status)
			}
		}
	})

	if err := e.svc.RevokeToken(ctx, bob.ID, tok.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("bob revoking alice's token: %v", err)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", bearer); status != http.StatusOK {
		t.Fatalf("token dead after a refused revoke: %d", status)
	}
	if err := e.svc.RevokeToken(ctx, alice.ID, tok.ID); err != nil {
		t.Fatal(err)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", bearer); status != http.StatusUnauthorized {
		t.Fatalf("revoked token = %d", status)
	}

	short, stok, err := e.svc.CreateToken(ctx, asAlice, TokenRequest{Name: "ci", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if stok.ExpiresAt == nil || !stok.ExpiresAt.Equal(e.clock.Now().Add(time.Hour)) {
		t.Fatalf("expiry = %v", stok.ExpiresAt)
	}
	sh := map[string]string{"Authorization": "Bearer " + short}
	if status, _ := e.raw(http.MethodGet, "/protected", sh); status != http.StatusOK {
		t.Fatalf("fresh token = %d", status)
	}
	e.clock.Advance(time.Hour + time.Second)
	if status, _ := e.raw(http.MethodGet, "/protected", sh); status != http.StatusUnauthorized {
		t.Fatalf("expired token = %d", status)
	}
}

func TestAnonymousAccess(t *testing.T) {
	for _, tc := range []struct {
		mode config.Mode
		want int
	}{{config.ModeMock, http.StatusOK}, {config.ModeProduction, http.StatusUnauthorized}} {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := newEnv(t, envOpts{mode: tc.mode})
			status, p := e.raw(http.MethodGet, "/protected", nil)
			if status != tc.want {
				t.Fatalf("anonymous = %d, want %d", status, tc.want)
			}
			req, _ := http.NewRequest(http.MethodGet, e.app.URL+"/auth/me", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("me = %d", resp.StatusCode)
			}
			// A bad bearer is refused even where anonymous access is allowed.
			if status, _ := e.raw(http.MethodGet, "/protected", map[string]string{"Authorization": "Bearer bogus"}); status != http.StatusUnauthorized {
				t.Fatalf("bad bearer = %d", status)
			}
			if tc.mode != config.ModeMock {
				return
			}
			if p.Method != MethodMock || p.User.ID != LocalUserID || p.User.Login != "local" || !p.Admin || p.Scope != ScopeAdmin {
				t.Fatalf("principal = %+v", p)
			}
			var me meResponse
			if err := json.NewDecoder(resp.Body).Decode(&me); err != nil || me.ID != LocalUserID || me.Method != MethodMock {
				t.Fatalf("me = %+v, %v", me, err)
			}
			// A stale cookie does not lock a developer out of mock mode.
			if status, p := e.raw(http.MethodGet, "/protected", map[string]string{"Cookie": CookieName + "=stale"}); status != http.StatusOK || p.Method != MethodMock {
				t.Fatalf("stale cookie in mock mode = %d %+v", status, p)
			}
		})
	}
}

func TestTrustedSocket(t *testing.T) {
	e := newEnv(t, envOpts{})
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:     e.app.Config.Handler,
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context { return ContextWithTrustedSocket(ctx) },
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		status, p := doCall(t, c, m, "http://atelier/protected", nil)
		if status != http.StatusOK || p.Method != MethodSocket || !p.Admin || p.User.ID != LocalUserID {
			t.Fatalf("%s over the socket = %d %+v", m, status, p)
		}
	}
	if u, err := e.st.GetUser(context.Background(), LocalUserID); err != nil || u.Login != "local" {
		t.Fatalf("local user = %+v, %v", u, err)
	}
	// The same handler over TCP grants nothing.
	if status, _ := e.raw(http.MethodGet, "/protected", nil); status != http.StatusUnauthorized {
		t.Fatalf("TCP = %d", status)
	}
}

func TestCookieAttributes(t *testing.T) {
	for _, tc := range []struct {
		base       string
		wantSecure bool
	}{{"localhost", false}, {"example.com", true}} {
		t.Run(tc.base, func(t *testing.T) {
			e := newEnv(t, envOpts{baseDomain: tc.base, allowedUsers: []string{"alice"}})
			if e.cfg.IsLocal() == tc.wantSecure {
				t.Fatalf("IsLocal() = %v for %s", e.cfg.IsLocal(), tc.base)
			}
			e.gh.addUser(1, "alice")
			e.gh.actAs("alice")
			b := e.browser()

			resp, _ := b.get(b.noFollow, e.url("/auth/github"))
			// Over HTTPS the state cookie is __Host- prefixed too: a sandbox
			// page cannot plant one from the parent domain (login CSRF).
			if want := map[bool]string{false: stateCookieName, true: "__Host-" + stateCookieName}[tc.wantSecure]; e.svc.stateCookieName() != want {
				t.Fatalf("state cookie name %q, want %q", e.svc.stateCookieName(), want)
			}
			state := findSetCookie(t, resp.Header.Values("Set-Cookie"), e.svc.stateCookieName())
			checkAttrs(t, state, tc.wantSecure, "/", int(oauthStateTTL.Seconds()))

			resp, _ = b.get(b.client, resp.Header.Get("Location"))
			if resp.StatusCode != http.StatusOK || b.sessionCookie() == nil {
				t.Fatalf("login: %d at %s", resp.StatusCode, resp.Request.URL)
			}
			cb := b.tr.lastCallback(t)
			name := e.svc.SessionCookieName()
			if want := map[bool]string{false: CookieName, true: SecureCookieName}[tc.wantSecure]; name != want {
				t.Fatalf("session cookie name %q, want %q", name, want)
			}
			sess := findSetCookie(t, cb.setCookie, name)
			checkAttrs(t, sess, tc.wantSecure, "/", 24*3600)
			value := b.sessionCookie().Value
			if status, _ := e.raw(http.MethodGet, "/protected", map[string]string{"Cookie": name + "=" + value}); status != http.StatusOK {
				t.Fatalf("session under %s: %d", name, status)
			}
			if tc.wantSecure {
				// An unprefixed cookie, as a sandbox page could plant on the
				// parent domain, is not a session.
				if status, _ := e.raw(http.MethodGet, "/protected", map[string]string{"Cookie": CookieName + "=" + value}); status != http.StatusUnauthorized {
					t.Fatalf("unprefixed session cookie over HTTPS: %d", status)
				}
			}

			// Host-only: sandbox subdomains of the same base never receive it.
			for _, host := range []string{"sandbox-abc123def456." + tc.base, "dev-web-abc123def456." + tc.base, "other." + e.dash.Hostname(), tc.base} {
				if host == e.dash.Hostname() {
					continue // locally the dashboard is the base domain itself
				}
				for _, c := range b.jar.Cookies(&url.URL{Scheme: e.dash.Scheme, Host: host, Path: "/"}) {
					if c.Name == name {
						t.Fatalf("session cookie sent to %s", host)
					}
				}
			}
		})
	}
}

func findSetCookie(t *testing.T, headers []string, name string) string {
	t.Helper()
	for _, h := range headers {
		if strings.HasPrefix(h, name+"=") {
			return h
		}
	}
	t.Fatalf("no Set-Cookie for %s in %q", name, headers)
	return ""
}

func checkAttrs(t *testing.T, setCookie string, secure bool, path string, maxAge int) {
	t.Helper()
	attrs := map[string]string{}
	for i, part := range strings.Split(setCookie, ";") {
		if i == 0 {
			continue
		}
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		attrs[strings.ToLower(k)] = v
	}
	_, hasSecure := attrs["secure"]
	_, httpOnly := attrs["httponly"]
	_, hasDomain := attrs["domain"]
	if hasDomain || !httpOnly || attrs["samesite"] != "Lax" || hasSecure != secure || attrs["path"] != path || attrs["max-age"] != itoa(maxAge) {
		t.Fatalf("Set-Cookie %q: want HttpOnly, SameSite=Lax, no Domain, Secure=%v, Path=%s, Max-Age=%d", setCookie, secure, path, maxAge)
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// flip changes the first character of a base64url segment.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

func itoa(i int) string { return strconv.Itoa(i) }
