package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/config"
	"atelier/internal/store"
)

// tokenFor creates a token through the service as p and returns its bearer header.
func (e *env) tokenFor(p Principal, req TokenRequest) map[string]string {
	e.t.Helper()
	if req.Name == "" {
		req.Name = "t"
	}
	secret, _, err := e.svc.CreateToken(context.Background(), p, req)
	if err != nil {
		e.t.Fatalf("create token: %v", err)
	}
	return map[string]string{"Authorization": "Bearer " + secret}
}

// whoami authenticates as b's session and returns its principal.
func (b *browser) whoami() (int, Principal) {
	b.e.t.Helper()
	return b.call(http.MethodGet, "/protected", nil)
}

func (e *env) liveSessions(userID string) int {
	e.t.Helper()
	users, err := e.st.UsersWithSessions(context.Background(), e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, u := range users {
		if u.ID == userID {
			return 1
		}
	}
	return 0
}

// TestAllowListRemovalEndsAccess: removing a user from auth.allowedUsers and
// restarting ends every credential at its next use (it used to revoke only
// SSH): the session is refused and revoked server-side, the API token is
// refused, and putting the user back does not revive the session.
func TestAllowListRemovalEndsAccess(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice", "bob"}})
	e.gh.addUser(1, "alice")
	e.gh.addUser(2, "bob")
	alice, bob := e.loggedIn("alice"), e.loggedIn("bob")
	_, ap := alice.whoami()
	aliceToken := e.tokenFor(ap, TokenRequest{})
	cookie := map[string]string{"Cookie": CookieName + "=" + alice.sessionCookie().Value}

	e.restart(func(c *config.Config) { c.Auth.AllowedUsers = []string{"bob"} })

	if status, _ := alice.whoami(); status != http.StatusUnauthorized {
		t.Fatalf("removed user's session: %d, want 401", status)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", aliceToken); status != http.StatusUnauthorized {
		t.Fatalf("removed user's token: %d, want 401", status)
	}
	if err := e.svc.CheckSession(context.Background(), ap.SessionID, ap.User.ID); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("edge session check for a removed user: %v", err)
	}
	sess, err := e.st.GetSession(context.Background(), ap.SessionID)
	if err != nil || sess.RevokedAt == nil {
		t.Fatalf("removed user's session not revoked server-side: %+v, %v", sess, err)
	}
	if status, p := bob.whoami(); status != http.StatusOK || p.User.Login != "bob" {
		t.Fatalf("remaining user: %d %+v", status, p)
	}
	if !strings.Contains(e.logs.String(), "sessions revoked") {
		t.Fatalf("no log line for the revocation:\n%s", e.logs.String())
	}

	// Back on the list: the token works again (it was never revoked), the
	// session does not (a new login is needed).
	e.restart(func(c *config.Config) { c.Auth.AllowedUsers = []string{"alice", "bob"} })
	if status, _ := e.raw(http.MethodGet, "/protected", cookie); status != http.StatusUnauthorized {
		t.Fatalf("revoked session revived: %d", status)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", aliceToken); status != http.StatusOK {
		t.Fatalf("token of a re-added user: %d", status)
	}
}

// TestSweepEndsIdleSessionsOfRemovedUsers: the periodic sweep revokes the
// sessions of users who are no longer allowed, even if they never return.
func TestSweepEndsIdleSessionsOfRemovedUsers(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice", "bob"}})
	e.gh.addUser(1, "alice")
	e.gh.addUser(2, "bob")
	alice, bob := e.loggedIn("alice"), e.loggedIn("bob")
	_, ap := alice.whoami()
	_, bp := bob.whoami()
	e.restart(func(c *config.Config) { c.Auth.AllowedUsers = []string{"bob"} })
	if err := e.svc.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.liveSessions(ap.User.ID) != 0 || e.liveSessions(bp.User.ID) != 1 {
		t.Fatalf("after the sweep: alice %d, bob %d live sessions", e.liveSessions(ap.User.ID), e.liveSessions(bp.User.ID))
	}
}

// TestOrgRemovalEndsSession: with auth.allowedOrg, membership recorded at
// login is re-verified with the user's own GitHub token every
// orgRecheckMinutes. Removing the user from the org at GitHub ends their
// session at the next check; within the window nothing asks GitHub.
func TestOrgRemovalEndsSession(t *testing.T) {
	e := newEnv(t, envOpts{allowedOrg: "acme"})
	e.gh.addUser(7, "carol")
	e.gh.setMembership("acme", "carol", "active")
	carol := e.loggedIn("carol")
	_, cp := carol.whoami()
	token := e.tokenFor(cp, TokenRequest{})
	calls := e.gh.MembershipCalls() // the login's own check

	// The stored token is sealed: the database alone does not hold it.
	g, err := e.st.GetGitHubGrant(context.Background(), cp.User.ID)
	if err != nil || len(g.SealedToken) == 0 || g.Org != "acme" || g.OrgVerifiedAt == nil {
		t.Fatalf("grant after login: %+v, %v", g, err)
	}
	_, _, issued := e.gh.stats()
	for _, s := range issued {
		if strings.Contains(string(g.SealedToken), s) {
			t.Fatal("the GitHub token is stored in the clear")
		}
	}
	db, _ := os.ReadFile(filepath.Join(e.cfg.Server.DataDir, "atelier.db"))
	wal, _ := os.ReadFile(filepath.Join(e.cfg.Server.DataDir, "atelier.db-wal"))
	for _, s := range issued {
		if strings.Contains(string(db), s) || strings.Contains(string(wal), s) {
			t.Fatal("a GitHub token or code is in the database file")
		}
	}

	e.gh.RemoveMembership("acme", "carol")
	e.clock.Advance(9 * time.Minute)
	if status, _ := carol.whoami(); status != http.StatusOK {
		t.Fatalf("within the recheck window: %d", status)
	}
	if n := e.gh.MembershipCalls(); n != calls {
		t.Fatalf("%d membership calls within the window, want none", n-calls)
	}
	e.clock.Advance(2 * time.Minute)
	if status, _ := carol.whoami(); status != http.StatusUnauthorized {
		t.Fatalf("after leaving the org: %d, want 401", status)
	}
	if e.gh.MembershipCalls() != calls+1 {
		t.Fatalf("membership calls %d, want one re-check", e.gh.MembershipCalls()-calls)
	}
	if e.liveSessions(cp.User.ID) != 0 {
		t.Fatal("session not revoked after leaving the org")
	}
	if status, _ := e.raw(http.MethodGet, "/protected", token); status != http.StatusUnauthorized {
		t.Fatalf("token after leaving the org: %d", status)
	}
	if err := e.svc.CheckSession(context.Background(), cp.SessionID, cp.User.ID); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("edge session check after leaving the org: %v", err)
	}

	// Back in the org: a new login works, the old session stays dead.
	e.gh.setMembership("acme", "carol", "active")
	again := e.loggedIn("carol")
	if status, _ := again.whoami(); status != http.StatusOK {
		t.Fatalf("new login after re-joining: %d", status)
	}
	if status, _ := e.raw(http.MethodGet, "/protected", map[string]string{"Cookie": CookieName + "=" + carol.sessionCookie().Value}); status != http.StatusUnauthorized {
		t.Fatalf("old session after re-joining: %d", status)
	}
}

// TestOrgRecheckOutcomes covers each answer GitHub can give at a re-check.
func TestOrgRecheckOutcomes(t *testing.T) {
	cases := []struct {
		name   string
		act    func(e *env)
		after  time.Duration // since login
		want   int
		killed bool // sessions revoked
	}{
		{name: "still active", act: func(e *env) {}, after: 11 * time.Minute, want: http.StatusOK},
		{name: "invitation pending", act: func(e *env) { e.gh.setMembership("acme", "dan", "pending") }, after: 11 * time.Minute, want: http.StatusUnauthorized, killed: true},
		{name: "app revoked at github", act: func(e *env) { e.gh.RevokeTokens("dan") }, after: 11 * time.Minute, want: http.StatusUnauthorized, killed: true},
		{name: "github down within the grace", act: func(e *env) { e.gh.SetDown(true) }, after: 11 * time.Minute, want: http.StatusOK},
		{name: "github down past the grace", act: func(e *env) { e.gh.SetDown(true) }, after: 71 * time.Minute, want: http.StatusServiceUnavailable},
		{name: "no stored token", act: func(e *env) {
			u, _ := e.st.UpsertGitHubUser(context.Background(), store.User{GitHubID: 9, Login: "dan"})
			g, _ := e.st.GetGitHubGrant(context.Background(), u.ID)
			g.SealedToken = nil
			_ = e.st.PutGitHubGrant(context.Background(), u.ID, g)
		}, after: 11 * time.Minute, want: http.StatusUnauthorized, killed: true},
		{name: "org changed in the config", act: func(e *env) {
			e.restart(func(c *config.Config) { c.Auth.AllowedOrg = "other" })
		}, after: time.Minute, want: http.StatusUnauthorized, killed: true},
		{name: "org dropped from the config", act: func(e *env) {
			e.restart(func(c *config.Config) { c.Auth.AllowedOrg, c.Auth.AllowedUsers = "", []string{"someone"} })
		}, after: time.Minute, want: http.StatusUnauthorized, killed: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{allowedOrg: "acme"})
			e.gh.addUser(9, "dan")
			e.gh.setMembership("acme", "dan", "active")
			b := e.loggedIn("dan")
			_, p := b.whoami()
			tc.act(e)
			e.clock.Advance(tc.after)
			if status, _ := b.whoami(); status != tc.want {
				t.Fatalf("status %d, want %d", status, tc.want)
			}
			if killed := e.liveSessions(p.User.ID) == 0; killed != tc.killed {
				t.Fatalf("sessions revoked = %v, want %v", killed, tc.killed)
			}
		})
	}
}

// TestTokenScopesAndLifetime: tokens default to auth.tokenTtlDays, "never"
// is an explicit choice the config must allow, a token cannot mint one that
// outlives it or has more scope, read tokens cannot write, admin scope needs
// an admin.
func TestTokenScopesAndLifetime(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice", "root"}, admins: []string{"root"}})
	ctx := context.Background()
	alice, _ := e.st.UpsertGitHubUser(ctx, store.User{GitHubID: 1, Login: "alice"})
	root, _ := e.st.UpsertGitHubUser(ctx, store.User{GitHubID: 2, Login: "root"})
	now := e.clock.Now()
	day := 24 * time.Hour
	inTen := now.Add(10 * day)
	aliceCookie := Principal{User: alice, Method: MethodCookie, Scope: ScopeFull}
	aliceToken := Principal{User: alice, Method: MethodToken, Scope: ScopeFull, TokenExpiresAt: &inTen}
	aliceRead := Principal{User: alice, Method: MethodToken, Scope: ScopeRead, TokenExpiresAt: &inTen}
	rootCookie := Principal{User: root, Method: MethodCookie, Scope: ScopeAdmin, Admin: true}
	local, _ := e.svc.ensureLocalUser(ctx)
	socket := Principal{User: local, Method: MethodSocket, Scope: ScopeAdmin, Admin: true}

	cases := []struct {
		name    string
		p       Principal
		req     TokenRequest
		field   string        // a 400 naming this field
		forbid  bool          // a 403
		exp     time.Duration // expected expiry from now; -1 never
		scope   Scope
		allowNE bool // auth.tokenNoExpiry = allow
	}{
		{name: "default lifetime", p: aliceCookie, exp: 90 * day, scope: ScopeFull},
		{name: "shorter lifetime", p: aliceCookie, req: TokenRequest{TTL: time.Hour}, exp: time.Hour, scope: ScopeFull},
		{name: "longer than the configured lifetime", p: aliceCookie, req: TokenRequest{TTL: 91 * day}, field: "ttlHours"},
		{name: "never, refused by config", p: aliceCookie, req: TokenRequest{NoExpiry: true}, field: "noExpiry"},
		{name: "never, allowed by config", p: aliceCookie, req: TokenRequest{NoExpiry: true}, allowNE: true, exp: -1, scope: ScopeFull},
		{name: "never and a lifetime", p: aliceCookie, req: TokenRequest{NoExpiry: true, TTL: time.Hour}, allowNE: true, field: "noExpiry"},
		{name: "read scope", p: aliceCookie, req: TokenRequest{Scope: ScopeRead}, exp: 90 * day, scope: ScopeRead},
		{name: "unknown scope", p: aliceCookie, req: TokenRequest{Scope: "root"}, field: "scope"},
		{name: "admin scope for a user", p: aliceCookie, req: TokenRequest{Scope: ScopeAdmin}, forbid: true},
		{name: "admin scope for an admin", p: rootCookie, req: TokenRequest{Scope: ScopeAdmin}, exp: 90 * day, scope: ScopeAdmin},
		{name: "admin scope over the socket", p: socket, req: TokenRequest{Scope: ScopeAdmin}, exp: 90 * day, scope: ScopeAdmin},
		{name: "token: default cut to its maker", p: aliceToken, exp: 10 * day, scope: ScopeFull},
		{name: "token: shorter than its maker", p: aliceToken, req: TokenRequest{TTL: time.Hour}, exp: time.Hour, scope: ScopeFull},
		{name: "token: outliving its maker", p: aliceToken, req: TokenRequest{TTL: 11 * day}, forbid: true},
		{name: "token: never", p: aliceToken, req: TokenRequest{NoExpiry: true}, allowNE: true, forbid: true},
		{name: "read token: full scope", p: aliceRead, req: TokenRequest{Scope: ScopeFull}, forbid: true},
		{name: "read token: read scope", p: aliceRead, req: TokenRequest{Scope: ScopeRead}, exp: 10 * day, scope: ScopeRead},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.restart(func(c *config.Config) {
				c.Auth.TokenNoExpiry = map[bool]string{false: config.TokenNoExpiryRefuse, true: config.TokenNoExpiryAllow}[tc.allowNE]
			})
			tc.req.Name = "n"
			_, tok, err := e.svc.CreateToken(ctx, tc.p, tc.req)
			var fe *FieldError
			switch {
			case tc.field != "":
				if !errors.As(err, &fe) || fe.Field != tc.field {
					t.Fatalf("err %v, want a field error on %s", err, tc.field)
				}
				return
			case tc.forbid:
				if !errors.Is(err, ErrForbidden) {
					t.Fatalf("err %v, want ErrForbidden", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if Scope(tok.Scope) != tc.scope {
				t.Errorf("scope %q, want %q", tok.Scope, tc.scope)
			}
			switch {
			case tc.exp < 0 && tok.ExpiresAt != nil:
				t.Errorf("expires %v, want never", tok.ExpiresAt)
			case tc.exp >= 0 && (tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(now.Add(tc.exp))):
				t.Errorf("expires %v, want %v", tok.ExpiresAt, now.Add(tc.exp))
			}
		})
	}

	// What each scope may do, through Authenticate and Permits.
	e.restart(func(*config.Config) {})
	read := e.tokenFor(aliceCookie, TokenRequest{Scope: ScopeRead})
	full := e.tokenFor(aliceCookie, TokenRequest{})
	adminTok := e.tokenFor(rootCookie, TokenRequest{Scope: ScopeAdmin})
	rootFull := e.tokenFor(rootCookie, TokenRequest{})
	for _, c := range []struct {
		hdr    map[string]string
		method string
		extra  map[string]string
		want   int
	}{
		{read, http.MethodGet, nil, http.StatusOK},
		{read, http.MethodHead, nil, http.StatusOK},
		{read, http.MethodPost, nil, http.StatusForbidden},
		{read, http.MethodPut, nil, http.StatusForbidden},
		{read, http.MethodDelete, nil, http.StatusForbidden},
		{read, http.MethodGet, map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, http.StatusForbidden},
		{full, http.MethodPost, nil, http.StatusOK},
		{full, http.MethodGet, map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, http.StatusOK},
	} {
		hdr := map[string]string{}
		for k, v := range c.hdr {
			hdr[k] = v
		}
		for k, v := range c.extra {
			hdr[k] = v
		}
		if status, _ := e.raw(c.method, "/protected", hdr); status != c.want {
			t.Errorf("%s with %v: %d, want %d", c.method, c.extra, status, c.want)
		}
	}
	if _, p := e.raw(http.MethodGet, "/protected", adminTok); !p.Admin || p.Scope != ScopeAdmin {
		t.Errorf("admin token: %+v", p)
	}
	if _, p := e.raw(http.MethodGet, "/protected", rootFull); p.Admin {
		t.Errorf("an admin's full token acts as admin: %+v", p)
	}
	// Dropped from auth.admins: the admin token is an ordinary full one.
	e.restart(func(c *config.Config) { c.Auth.Admins = nil })
	if status, p := e.raw(http.MethodGet, "/protected", adminTok); status != http.StatusOK || p.Admin || p.Scope != ScopeFull {
		t.Errorf("admin token of a former admin: %d %+v", status, p)
	}
}

// TestAdminRole: auth.admins names admins among the allowed users; the
// socket and mock mode's local user are admins; nobody else is.
func TestAdminRole(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice", "root"}, admins: []string{" ROOT "}})
	e.gh.addUser(1, "alice")
	e.gh.addUser(2, "root")
	if _, p := e.loggedIn("root").whoami(); !p.Admin || p.Scope != ScopeAdmin {
		t.Fatalf("admin's session: %+v", p)
	}
	if _, p := e.loggedIn("alice").whoami(); p.Admin {
		t.Fatalf("user's session: %+v", p)
	}
	// The role never lets anyone in: an admin off the allow-list is refused.
	e.restart(func(c *config.Config) { c.Auth.AllowedUsers = []string{"alice"} })
	e.gh.actAs("root")
	b := e.browser()
	if resp, _ := b.login(""); resp.Request.URL.RequestURI() != "/?login_error=unauthorized" {
		t.Fatalf("admin outside the allow-list: landed on %s", resp.Request.URL)
	}
	if e.svc.IsAdmin(store.User{ID: "x", Login: "root"}) {
		t.Fatal("a user without a GitHub id is an admin by login")
	}
}

// TestLoginNextIsBounded: the unauthenticated login start used to store up
// to 1 MB per request forever (100 requests added 107 MB). Now an oversized
// next is a 400 that stores nothing, states expire and the sweep removes them.
func TestLoginNextIsBounded(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}, opts: []Option{WithLoginRate(time.Millisecond, 1000)}})
	dbSize := func() int64 {
		var n int64
		for _, f := range []string{"atelier.db", "atelier.db-wal"} {
			if fi, err := os.Stat(filepath.Join(e.cfg.Server.DataDir, f)); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
	before := dbSize()
	huge := "/" + strings.Repeat("a", 200<<10)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var refused []string
	for i := range 100 {
		resp, err := c.Get(e.app.URL + "/auth/github?next=" + url.QueryEscape(huge))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "next") ||
			resp.Header.Get("Content-Type") != "application/problem+json" {
			refused = append(refused, fmt.Sprintf("request %d: %d %s %.80q", i, resp.StatusCode, resp.Header.Get("Content-Type"), body))
		}
	}
	if grown := dbSize() - before; grown > 256<<10 {
		t.Fatalf("100 logins with a 200 KiB next grew the database by %d bytes", grown)
	}
	if len(refused) > 0 {
		t.Fatalf("an oversized next was not a 400 naming it: %v", refused[:1])
	}
	// A next at the cap is kept; each pending login stays small.
	atCap := "/" + strings.Repeat("b", MaxNextLen-1)
	for range 20 {
		resp, err := c.Get(e.app.URL + "/auth/github?next=" + url.QueryEscape(atCap))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("next at the cap: %d", resp.StatusCode)
		}
	}
	e.clock.Advance(oauthStateTTL - time.Second)
	if err := e.svc.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pending := e.pendingStates(); pending != 20 {
		t.Fatalf("%d states pending before the TTL, want 20", pending)
	}
	e.clock.Advance(2 * time.Second)
	if err := e.svc.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.pendingStates(); n != 0 {
		t.Fatalf("%d states left after the TTL and a sweep", n)
	}
}

func (e *env) pendingStates() int {
	e.t.Helper()
	n, err := e.st.CountOAuthStates(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// clientFrom is an HTTP client whose connections come from source address ip.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{
		Transport:     &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
}

// TestLoginRateLimit: the login endpoints share one bucket per client
// address; the request past the burst gets 429 problem+json with
// Retry-After, and another address is unaffected.
func TestLoginRateLimit(t *testing.T) {
	e := newEnv(t, envOpts{allowedUsers: []string{"alice"}})
	a, b := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	get := func(c *http.Client, path string) *http.Response {
		t.Helper()
		resp, err := c.Get(e.app.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i := range loginBurst {
		path := "/auth/github"
		if i%2 == 1 {
			path = "/auth/callback?state=x&code=y" // the same bucket
		}
		if resp := get(a, path); resp.StatusCode == http.StatusTooManyRequests {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	resp := get(a, "/auth/github")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Content-Type") != "application/problem+json" ||
		resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("request %d: %d %s Retry-After %q", loginBurst+1, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Retry-After"))
	}
	if resp := get(a, "/auth/callback?state=x&code=y"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("callback past the burst: %d", resp.StatusCode)
	}
	if resp := get(b, "/auth/github"); resp.StatusCode != http.StatusFound {
		t.Fatalf("another address: %d, want 302", resp.StatusCode)
	}
	// Authenticated routes are not behind the login limit.
	if resp := get(a, "/auth/me"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/auth/me from the limited address: %d", resp.StatusCode)
	}
	e.clock.Advance(loginEvery)
	if resp := get(a, "/auth/github"); resp.StatusCode != http.StatusFound {
		t.Fatalf("after the refill interval: %d", resp.StatusCode)
	}
	if resp := get(a, "/auth/github"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a second request in the same interval: %d", resp.StatusCode)
	}
}

// TestLimiterMemoryIsBounded: a flood of addresses keeps at most max
// buckets; the least recently seen is forgotten first.
func TestLimiterMemoryIsBounded(t *testing.T) {
	l := newLimiter(time.Minute, 1, 3)
	now := time.Now()
	for i := range 1000 {
		l.allow(fmt.Sprint("10.0.", i/256, ".", i%256), now)
	}
	if n := l.size(); n != 3 {
		t.Fatalf("%d buckets, want 3", n)
	}
	if ok, _ := l.allow("10.0.3.231", now); ok {
		t.Fatal("a remembered, spent address was allowed again")
	}
	keys := map[string]string{
		"192.0.2.1:5000":       "192.0.2.1",
		"[2001:db8::1]:5000":   "2001:db8::/64",
		"[2001:db8::ffff:1]:1": "2001:db8::/64",
		"[::ffff:192.0.2.9]:1": "192.0.2.9",
		"[2001:db8:0:1::1]:1":  "2001:db8:0:1::/64",
		"not-an-address":       "not-an-address",
		"[fe80::1%eth0]:80":    "fe80::/64",
	}
	for addr, want := range keys {
		if got := clientKey(&http.Request{RemoteAddr: addr}); got != want {
			t.Errorf("clientKey(%s) = %s, want %s", addr, got, want)
		}
	}
}

// TestPlantedStateCookieIsIgnored is login CSRF at the HTTP level (the
// Chromium version is internal/server's TestLoginCSRFFromSandboxHost): a
// page on a sandbox host sets the state cookie of the attacker's own login
// on the parent domain, then sends the victim to the attacker's callback.
// Over HTTPS only the __Host- cookie counts, which no other host can set.
func TestPlantedStateCookieIsIgnored(t *testing.T) {
	e := newEnv(t, envOpts{baseDomain: "example.com", allowedUsers: []string{"mallory", "victim"}})
	e.gh.addUser(66, "mallory")
	e.gh.actAs("mallory")
	attacker, victim := e.browser(), e.browser()

	resp, _ := attacker.get(attacker.noFollow, e.url("/auth/github"))
	var stateValue string
	for _, c := range resp.Cookies() {
		if strings.HasSuffix(c.Name, stateCookieName) {
			stateValue = c.Value
		}
	}
	stop := &http.Client{Transport: attacker.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	gh, err := stop.Get(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	gh.Body.Close()
	callback := gh.Header.Get("Location")
	if stateValue == "" || !strings.Contains(callback, "/auth/callback?") {
		t.Fatalf("attacker's flow: state %q, callback %q", stateValue, callback)
	}

	parent := &url.URL{Scheme: "https", Host: "dev-evil-abc123def456.example.com", Path: "/"}
	victim.jar.SetCookies(parent, []*http.Cookie{{Name: stateCookieName, Value: stateValue, Domain: "example.com", Path: "/", Secure: true}})
	resp, body := victim.get(victim.client, callback)
	if resp.StatusCode != http.StatusBadRequest || victim.sessionCookie() != nil {
		t.Fatalf("victim completed the attacker's login: %d at %s: %s", resp.StatusCode, resp.Request.URL, body)
	}
	if n := e.countSessions(); n != 0 {
		t.Fatalf("%d sessions created", n)
	}
}
