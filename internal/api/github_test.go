package api_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"atelier/internal/auth"
	"atelier/internal/auth/githubtest"
	"atelier/internal/config"
)

// TestGitHubConnectAndListing runs the connect flow through the manager's
// routes against the GitHub stand-in, then lists repositories and
// branches with the resulting source: its owner sees them, a co-tenant
// naming the source id gets 404, bad input is a 400 naming the field, and
// no response ever carries the token.
func TestGitHubConnectAndListing(t *testing.T) {
	gh := githubtest.New(t)
	gh.AddUser(1, "alice")
	gh.AddUser(2, "bob")
	gh.SetMaxPerPage(2)
	for _, r := range []string{"alice/one", "alice/two", "alice/three"} {
		gh.AddRepo(r, true, map[string]string{"main": "c1", "next": "c2"})
	}
	h := newHarness(t, config.ModeProduction, func(c *config.Config) {
		c.Auth.GitHub = config.GitHub{ClientID: githubtest.ClientID, ClientSecret: githubtest.ClientSecret, WebURL: gh.URL, APIURL: gh.URL}
	})
	ctx := context.Background()
	alice, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("alice", 1))
	bob, _ := h.srv.Store.UpsertGitHubUser(ctx, storeUser("bob", 2))
	ac, bc := sessionCookie(t, h, alice.ID), sessionCookie(t, h, bob.ID)
	gh.ActAs("alice")

	start := h.do(t, "GET", auth.ConnectPath+"?next=/workspaces", nil, ac)
	if start.status != http.StatusFound {
		t.Fatalf("connect start: %d %s", start.status, start.body)
	}
	var state *http.Cookie
	for _, c := range (&http.Response{Header: start.header}).Cookies() {
		if c.Name == "__Host-atelier_connect_state" {
			state = c
		}
	}
	if state == nil || !state.Secure || !state.HttpOnly || state.Path != "/" || state.Domain != "" {
		t.Fatalf("connect state cookie %+v", state)
	}
	res, err := noRedirect.Get(start.header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	back, _ := url.Parse(res.Header.Get("Location"))
	if back.Path != auth.ConnectCallbackPath {
		t.Fatalf("GitHub sent the browser to %s", back)
	}
	withState := func(session map[string]string) map[string]string {
		return map[string]string{"Cookie": session["Cookie"] + "; " + state.Name + "=" + state.Value}
	}
	// Bob's browser holding alice's state cookie still cannot finish it.
	if r := h.do(t, "GET", back.RequestURI(), nil, withState(bc)); r.status != http.StatusForbidden {
		t.Fatalf("bob completing alice's connect: %d %s", r.status, r.body)
	}
	start = h.do(t, "GET", auth.ConnectPath+"?next=/workspaces", nil, ac)
	for _, c := range (&http.Response{Header: start.header}).Cookies() {
		if c.Name == state.Name {
			state = c
		}
	}
	res, err = noRedirect.Get(start.header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	back, _ = url.Parse(res.Header.Get("Location"))
	done := h.do(t, "GET", back.RequestURI(), nil, withState(ac))
	if done.status != http.StatusFound || done.header.Get("Location") != "/workspaces?github=connected" {
		t.Fatalf("connect callback: %d %q %s", done.status, done.header.Get("Location"), done.body)
	}

	var list struct {
		Sources []struct {
			ID, Kind, GitHubLogin string
			HasToken              bool
		}
	}
	lr := h.do(t, "GET", "/api/git-sources", nil, ac)
	lr.json(t, &list)
	if len(list.Sources) != 1 || list.Sources[0].Kind != "oauth" || list.Sources[0].GitHubLogin != "alice" || !list.Sources[0].HasToken {
		t.Fatalf("sources: %s", lr.body)
	}
	id := list.Sources[0].ID
	bodies := []string{string(lr.body)}

	r := h.do(t, "GET", "/api/git-sources/"+id+"/repos", nil, ac)
	var repos struct{ Repos []struct{ FullName string } }
	r.json(t, &repos)
	if r.status != http.StatusOK || len(repos.Repos) != 3 {
		t.Fatalf("repos: %d %s", r.status, r.body)
	}
	bodies = append(bodies, string(r.body))
	r = h.do(t, "GET", "/api/git-sources/"+id+"/branches?repo=alice/two", nil, ac)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), `"name":"next"`) {
		t.Fatalf("branches: %d %s", r.status, r.body)
	}
	bodies = append(bodies, string(r.body))

	for _, tc := range []struct {
		name, path string
		hdr        map[string]string
		status     int
		location   string
	}{
		{"co-tenant repos", "/api/git-sources/" + id + "/repos", bc, http.StatusNotFound, ""},
		{"co-tenant branches", "/api/git-sources/" + id + "/branches?repo=alice/two", bc, http.StatusNotFound, ""},
		{"neither repo nor url", "/api/git-sources/" + id + "/branches", ac, http.StatusBadRequest, "query.repo"},
		{"both repo and url", "/api/git-sources/" + id + "/branches?repo=a/b&url=https://github.com/a/b", ac, http.StatusBadRequest, "query.repo"},
		{"bad repo", "/api/git-sources/" + id + "/branches?repo=..%2Fx", ac, http.StatusBadRequest, "query.repo"},
		{"repo not readable", "/api/git-sources/" + id + "/branches?repo=bob/none", ac, http.StatusNotFound, ""},
		{"repo with public", "/api/git-sources/public/branches?repo=a/b", ac, http.StatusBadRequest, "query.repo"},
		{"anonymous", "/api/git-sources/" + id + "/repos", nil, http.StatusUnauthorized, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(t, "GET", tc.path, nil, tc.hdr)
			if r.status != tc.status || !strings.Contains(string(r.body), tc.location) {
				t.Errorf("%d %s; want %d naming %q", r.status, r.body, tc.status, tc.location)
			}
			bodies = append(bodies, string(r.body))
		})
	}
	_, _, issued := gh.Stats()
	for _, b := range bodies {
		for _, secret := range issued {
			if strings.Contains(b, secret) {
				t.Fatalf("a response carries a GitHub code or token: %s", b)
			}
		}
	}
}
