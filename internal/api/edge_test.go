package api_test

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/edge"
	"atelier/internal/store"
)

// sessionCookie starts a dashboard session for userID and returns the
// Cookie header of a browser holding it.
func sessionCookie(t *testing.T, h *harness, userID string) map[string]string {
	t.Helper()
	now := time.Now()
	sid := "sess-" + userID
	if err := h.srv.Store.CreateSession(context.Background(), store.Session{ID: sid, UserID: userID, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sid": sid, "sub": userID, "iss": "atelier", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).SignedString([]byte(h.srv.Config.Auth.JWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"Cookie": h.srv.Auth.SessionCookieName() + "=" + tok}
}

func TestEdgeLoginRoute(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	ctx := context.Background()
	alice, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("alice", 1))
	mallory, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("mallory", 2))
	secret, _, err := h.srv.Auth.CreateToken(ctx, auth.Principal{User: alice, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	token := map[string]string{"Authorization": "Bearer " + secret}
	v := h.create2(t, token)
	host := "sandbox-" + v.ID + ".atelier.test"
	ac, mc := sessionCookie(t, h, alice.ID), sessionCookie(t, h, mallory.ID)

	tests := []struct {
		name     string
		query    string
		hdr      map[string]string
		status   int
		location string // prefix
	}{
		{"no host", "", nil, 404, ""},
		{"unknown host", "?host=sandbox-zzzzzzzzzzzz.atelier.test", ac, 404, ""},
		{"not logged in", "?host=" + host + "&next=/x", nil, 302, "/auth/github?next=" + url.QueryEscape("/auth/edge?host="+host+"&next=/x")},
		{"owner", "?host=" + strings.ToUpper(host) + "&next=/x", ac, 302, "https://" + host + edge.AuthPath + "?code="},
		{"another user", "?host=" + host, mc, 404, ""},
		{"api token", "?host=" + host, token, 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do(t, "GET", "/auth/edge"+tt.query, nil, tt.hdr)
			if r.status != tt.status || !strings.HasPrefix(r.header.Get("Location"), tt.location) {
				t.Fatalf("%d %q %s", r.status, r.header.Get("Location"), r.body)
			}
			if r.header.Get("Cache-Control") != "no-store" {
				t.Fatalf("Cache-Control %q", r.header.Get("Cache-Control"))
			}
		})
	}
}

func TestExposeRoutes(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	ctx := context.Background()
	alice, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("alice", 1))
	mallory, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("mallory", 2))
	sa, _, _ := h.srv.Auth.CreateToken(ctx, auth.Principal{User: alice, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "ci"})
	sm, _, _ := h.srv.Auth.CreateToken(ctx, auth.Principal{User: mallory, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "ci"})
	a := map[string]string{"Authorization": "Bearer " + sa}
	m := map[string]string{"Authorization": "Bearer " + sm}
	v := h.create2(t, a)
	base := "/api/sandboxes/" + v.ID

	type routes struct {
		Routes []struct {
			Host, URL, Kind, Name, Alias string
			Port                         int
			Public                       bool
		}
	}
	tests := []struct {
		name   string
		method string
		path   string
		body   any
		hdr    map[string]string
		status int
		hosts  int
	}{
		{"expose", "POST", base + "/dev/web/expose", map[string]any{"port": 5173, "default": true, "public": true, "aliases": []any{map[string]any{"alias": "api", "port": 8000}}}, a, 200, 3},
		{"list", "GET", base + "/routes", nil, a, 200, 6},
		{"host of another command", "POST", base + "/dev/web-api/expose", map[string]any{"port": 1}, a, 409, 0},
		{"bad alias", "POST", base + "/dev/x/expose", map[string]any{"port": 1, "aliases": []any{map[string]any{"alias": "A_B", "port": 1}}}, a, 400, 0},
		{"bad name", "POST", base + "/dev/X_1/expose", map[string]any{"port": 1}, a, 400, 0},
		{"label too long", "POST", base + "/dev/" + strings.Repeat("a", 47) + "/expose", map[string]any{"port": 1}, a, 400, 0},
		{"unknown field", "POST", base + "/dev/x/expose", map[string]any{"port": 1, "host": "evil"}, a, 400, 0},
		{"no port and no agent", "POST", base + "/dev/x/expose", nil, a, 503, 0},
		{"another user's sandbox", "POST", base + "/dev/x/expose", map[string]any{"port": 1}, m, 404, 0},
		{"another user's routes", "GET", base + "/routes", nil, m, 404, 0},
		{"another user's unexpose", "DELETE", base + "/dev/web/expose", nil, m, 404, 0},
		{"unexpose", "DELETE", base + "/dev/web/expose", nil, a, 204, 0},
		{"list after", "GET", base + "/routes", nil, a, 200, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do(t, tt.method, tt.path, tt.body, tt.hdr)
			if r.status != tt.status {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if tt.status != 200 {
				return
			}
			var got routes
			r.json(t, &got)
			if len(got.Routes) != tt.hosts {
				t.Fatalf("%d routes: %s", len(got.Routes), r.body)
			}
			for _, rt := range got.Routes {
				if rt.URL != "https://"+rt.Host || !strings.HasSuffix(rt.Host, "-"+v.ID+".atelier.test") {
					t.Fatalf("route %+v", rt)
				}
				if rt.Kind == "dev" && (!rt.Public || rt.Name != "web") {
					t.Fatalf("dev route %+v", rt)
				}
			}
		})
	}
	if r := h.do(t, "POST", base+"/dev/web/expose", map[string]any{"port": 1}, nil); r.status != http.StatusUnauthorized {
		t.Fatalf("anonymous expose: %d", r.status)
	}
}

// TestExposeQuota: a user cannot register dev hosts without end (one sandbox
// registered 1 024 in 0.6 s); past a cap the answer is a 429 problem naming
// the config key.
func TestExposeQuota(t *testing.T) {
	h := newHarness(t, config.ModeProduction, func(c *config.Config) {
		c.Domain.MaxDevHostsPerSandbox, c.Domain.MaxDevHostsPerUser = 3, 5
	})
	ctx := context.Background()
	alice, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("alice", 1))
	bob, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("bob", 2))
	sa, _, _ := h.srv.Auth.CreateToken(ctx, auth.Principal{User: alice, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "ci"})
	sb, _, _ := h.srv.Auth.CreateToken(ctx, auth.Principal{User: bob, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "ci"})
	a := map[string]string{"Authorization": "Bearer " + sa}
	b := map[string]string{"Authorization": "Bearer " + sb}
	a1, a2, b1 := h.create2(t, a), h.create2(t, a), h.create2(t, b)
	expose := func(id, name string, aliases int, hdr map[string]string) resp {
		t.Helper()
		var al []any
		for i := 0; i < aliases; i++ {
			al = append(al, map[string]any{"alias": "a" + strconv.Itoa(i), "port": 4000 + i})
		}
		return h.do(t, "POST", "/api/sandboxes/"+id+"/dev/"+name+"/expose", map[string]any{"port": 3000, "aliases": al}, hdr)
	}
	tests := []struct {
		name    string
		id      string
		dev     string
		aliases int
		hdr     map[string]string
		status  int
		key     string
	}{
		{"three hosts in a sandbox", a1.ID, "web", 2, a, 200, ""},
		{"a fourth in the same sandbox", a1.ID, "api", 0, a, 429, "domain.maxDevHostsPerSandbox"},
		{"re-exposing the same command", a1.ID, "web", 2, a, 200, ""},
		{"two in another sandbox", a2.ID, "web", 1, a, 200, ""},
		{"a sixth for the user", a2.ID, "api", 0, a, 429, "domain.maxDevHostsPerUser"},
		{"another user has their own", b1.ID, "web", 2, b, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := expose(tt.id, tt.dev, tt.aliases, tt.hdr)
			if r.status != tt.status {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if tt.status != 429 {
				return
			}
			var p struct {
				Code, Detail string
				Errors       []struct {
					Location string
					Value    int
				}
				Quota *struct {
					Name string
					Unit string
				}
			}
			r.json(t, &p)
			if r.header.Get("Content-Type") != "application/problem+json" || p.Code != "quota_exceeded" ||
				!strings.Contains(p.Detail, tt.key) || len(p.Errors) != 1 || p.Errors[0].Location != tt.key ||
				p.Quota == nil || p.Quota.Name != tt.key || p.Quota.Unit != "hosts" {
				t.Fatalf("problem %s %s", r.header.Get("Content-Type"), r.body)
			}
		})
	}
	if r := h.do(t, "GET", "/api/sandboxes/"+a2.ID+"/routes", nil, a); !strings.Contains(string(r.body), "dev-web-a0-") || strings.Contains(string(r.body), "dev-api-") {
		t.Fatalf("routes after a refused expose: %s", r.body)
	}
}
