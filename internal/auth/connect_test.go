package auth

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

type connectedToken struct{ userID, login, token string }

func (e *env) saveConnect(_ context.Context, userID, login, token string) error {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	e.connected = append(e.connected, connectedToken{userID, login, token})
	return nil
}

func (e *env) connects() []connectedToken {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	return slices.Clone(e.connected)
}

// authedForTest is the API's authRaw: the principal, or 401/403.
func authedForTest(svc *Service, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := svc.Authenticate(r)
		switch {
		case errors.Is(err, ErrForbidden):
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		case err != nil:
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

// startConnect runs the connect flow up to GitHub's redirect back and
// returns the callback URL (on the dashboard) the browser would follow.
func (b *browser) startConnect(t *testing.T, next string) string {
	t.Helper()
	resp, body := b.get(b.noFollow, b.e.url(ConnectPath+"?next="+url.QueryEscape(next)))
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("connect start: status %d: %s", resp.StatusCode, body)
	}
	authz, _ := url.Parse(resp.Header.Get("Location"))
	if got := authz.Query().Get("scope"); got != "repo read:user read:org" {
		t.Fatalf("connect asks for scope %q", got)
	}
	if got := authz.Query().Get("redirect_uri"); got != b.e.url(ConnectCallbackPath) {
		t.Fatalf("connect redirect_uri %q", got)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r2, err := noRedirect.Get(authz.String())
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	cb := r2.Header.Get("Location")
	if !strings.HasPrefix(cb, b.e.url(ConnectCallbackPath)+"?") {
		t.Fatalf("GitHub sent the browser to %q", cb)
	}
	return cb
}

// stopAtRedirect is this browser (cookies) not following any redirect.
func (b *browser) stopAtRedirect() *http.Client {
	return &http.Client{Jar: b.jar, Transport: b.tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (b *browser) cookie(name string) *http.Cookie {
	for _, c := range b.jar.Cookies(b.e.dash) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func TestConnectGitHub(t *testing.T) {
	// The login rate limit is tested elsewhere; this test makes many flows.
	e := newEnv(t, envOpts{allowedUsers: []string{"alice", "bob"}, opts: []Option{WithLoginRate(time.Millisecond, 1000)}})
	e.gh.addUser(1, "alice")
	e.gh.addUser(2, "bob")
	e.gh.addUser(3, "mallory")
	alice := e.loggedIn("alice")
	aliceID := e.connectUserID(t, alice)

	t.Run("completes for the user who started it", func(t *testing.T) {
		resp, body := alice.get(alice.client, e.url(ConnectPath+"?next=/workspaces"))
		if resp.StatusCode != http.StatusOK || resp.Request.URL.RequestURI() != "/workspaces?github=connected" {
			t.Fatalf("landed on %s (%d): %s", resp.Request.URL, resp.StatusCode, body)
		}
		got := e.connects()
		if len(got) != 1 || got[0].userID != aliceID || got[0].login != "alice" {
			t.Fatalf("saved %+v", got)
		}
		if sc := e.gh.Scopes(got[0].token); !slices.Contains(sc, "repo") {
			t.Errorf("connected token scopes %q lack repo", sc)
		}
		if c := alice.cookie(e.svc.connectCookieName()); c != nil {
			t.Errorf("connect state cookie left behind: %v", c)
		}
	})

	before := len(e.connects())
	refused := func(t *testing.T, b *browser, u string, status int) {
		t.Helper()
		resp, body := b.get(b.stopAtRedirect(), u)
		if resp.StatusCode != status {
			t.Errorf("status %d, want %d: %s", resp.StatusCode, status, body)
		}
		if n := len(e.connects()); n != before {
			t.Errorf("a refused callback kept a token (%d saved)", n-before)
		}
	}

	t.Run("wrong state refused", func(t *testing.T) {
		cb := alice.startConnect(t, "/")
		u, _ := url.Parse(cb)
		q := u.Query()
		q.Set("state", flip(q.Get("state")))
		u.RawQuery = q.Encode()
		refused(t, alice, u.String(), http.StatusBadRequest)
		// The cookie was cleared: even the right state is refused now.
		refused(t, alice, cb, http.StatusBadRequest)
	})

	t.Run("replayed callback refused", func(t *testing.T) {
		cb := alice.startConnect(t, "/")
		c := alice.cookie(e.svc.connectCookieName())
		resp, _ := alice.get(alice.stopAtRedirect(), cb)
		if resp.StatusCode != http.StatusFound || !strings.Contains(resp.Header.Get("Location"), "github=connected") {
			t.Fatalf("first callback: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
		before = len(e.connects())
		alice.jar.SetCookies(e.dash, []*http.Cookie{c})
		refused(t, alice, cb, http.StatusBadRequest)
	})

	t.Run("another user's session cannot complete it", func(t *testing.T) {
		cb := alice.startConnect(t, "/")
		stolen := alice.cookie(e.svc.connectCookieName())
		bob := e.loggedIn("bob")
		// Without alice's state cookie: not bound to this browser.
		refused(t, bob, cb, http.StatusBadRequest)
		// Even holding it, bob's session is not the one that started it.
		bob.jar.SetCookies(e.dash, []*http.Cookie{stolen})
		refused(t, bob, cb, http.StatusForbidden)
		// And a fresh session of alice (another browser) is not either.
		alice2 := e.loggedIn("alice")
		cb = alice.startConnect(t, "/")
		alice2.jar.SetCookies(e.dash, []*http.Cookie{alice.cookie(e.svc.connectCookieName())})
		refused(t, alice2, cb, http.StatusForbidden)
	})

	t.Run("a login state does not complete a connect", func(t *testing.T) {
		b := e.browser()
		authz := b.startLogin()
		noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		r, err := noRedirect.Get(authz)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		login, _ := url.Parse(r.Header.Get("Location"))
		stateCookie := b.cookie(e.svc.stateCookieName())
		alice.jar.SetCookies(e.dash, []*http.Cookie{{Name: e.svc.connectCookieName(), Value: stateCookie.Value, Path: "/"}})
		refused(t, alice, e.url(ConnectCallbackPath)+"?"+login.RawQuery, http.StatusBadRequest)
	})

	t.Run("another GitHub account is refused", func(t *testing.T) {
		e.gh.actAs("mallory")
		defer e.gh.actAs("alice")
		resp, _ := alice.get(alice.client, e.url(ConnectPath))
		if got := resp.Request.URL.RequestURI(); got != "/?github_error=account" {
			t.Errorf("landed on %s", got)
		}
		if n := len(e.connects()); n != before {
			t.Errorf("mallory's token was kept")
		}
	})

	t.Run("denied at GitHub", func(t *testing.T) {
		e.gh.setDeny(true)
		defer e.gh.setDeny(false)
		resp, _ := alice.get(alice.client, e.url(ConnectPath+"?next=/settings"))
		if got := resp.Request.URL.RequestURI(); got != "/settings?github_error=denied" {
			t.Errorf("landed on %s", got)
		}
	})

	t.Run("needs a session", func(t *testing.T) {
		if code, _ := e.raw("GET", ConnectPath, nil); code != http.StatusUnauthorized {
			t.Errorf("anonymous connect: %d", code)
		}
	})

	_, _, issued := e.gh.stats()
	for _, secret := range issued {
		if strings.Contains(e.logs.String(), secret) {
			t.Fatalf("a code or token reached the log")
		}
	}
}

func (e *env) connectUserID(t *testing.T, b *browser) string {
	t.Helper()
	code, p := b.call("GET", "/protected", nil)
	if code != http.StatusOK {
		t.Fatalf("protected: %d", code)
	}
	return p.User.ID
}
