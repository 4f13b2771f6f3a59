// Package githubtest is a local stand-in for GitHub's OAuth web flow and the
// API endpoints Atelier calls, shared by the auth package's tests and the
// manager's end-to-end tests. It enforces what GitHub enforces that matters
// to Atelier: the client credentials, single-use codes bound to a redirect
// URI, PKCE S256, the scopes a token was granted (a private repository
// needs repo), tokens that can be revoked, org membership that can change
// after login, a GitHub App's RS256 JWTs checked against its public key,
// installation tokens that expire and read only the installation's
// repositories, and Link-header pagination.
package githubtest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Client credentials of the stand-in's one OAuth app.
const (
	ClientID     = "Iv1.testclient"
	ClientSecret = "test-client-secret"
)

// User is a GitHub account as GET /user returns it.
type User struct {
	ID        int64  `json:"id"`
	Login     string `json:"login"`
	Name      string `json:"name"`
	AvatarURL string `json:"avatar_url"`
}

// Server is the stand-in. URL serves both the web flow and the API.
type Server struct {
	URL string
	srv *httptest.Server

	mu          sync.Mutex
	login       string // the GitHub user who approves at /login/oauth/authorize
	deny        bool   // the user clicks "Cancel" at GitHub
	down        bool   // the API answers 502 (an outage)
	users       map[string]User
	orgs        map[string]map[string]string // org -> login -> membership state
	codes       map[string]stubCode
	tokens      map[string]string   // access token -> login
	scopes      map[string][]string // access token -> granted scopes
	repos       map[string]*Repo    // full name -> repository
	maxPerPage  int
	app         *stubApp
	issued      []string // every code and access token handed out
	rejects     []string // why token exchanges were refused
	exchanges   int      // successful exchanges
	memberCalls int      // org membership requests answered
}

type stubCode struct {
	login       string
	scopes      []string
	challenge   string
	redirectURI string
}

// New starts a stand-in, closed when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	g := &Server{
		users:      map[string]User{},
		orgs:       map[string]map[string]string{},
		codes:      map[string]stubCode{},
		tokens:     map[string]string{},
		scopes:     map[string][]string{},
		repos:      map[string]*Repo{},
		maxPerPage: 100,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", g.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", g.accessToken)
	mux.HandleFunc("GET /user", g.user)
	mux.HandleFunc("GET /user/memberships/orgs/{org}", g.membership)
	mux.HandleFunc("GET /user/repos", g.userRepos)
	mux.HandleFunc("GET /repos/{owner}/{repo}/branches", g.branches)
	mux.HandleFunc("GET /installation/repositories", g.installationRepos)
	mux.HandleFunc("GET /app/installations/{id}", g.installation)
	mux.HandleFunc("POST /app/installations/{id}/access_tokens", g.installationToken)
	g.srv = httptest.NewServer(mux)
	g.URL = g.srv.URL
	t.Cleanup(g.srv.Close)
	return g
}

// Client is an HTTP client for the stand-in.
func (g *Server) Client() *http.Client { return g.srv.Client() }

// AddUser creates a GitHub account.
func (g *Server) AddUser(id int64, login string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.users[login] = User{ID: id, Login: login, Name: "Name of " + login, AvatarURL: "https://avatars.example/" + login}
}

// SetMembership sets login's membership state in org ("active", "pending").
func (g *Server) SetMembership(org, login, state string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.orgs[org] == nil {
		g.orgs[org] = map[string]string{}
	}
	g.orgs[org][login] = state
}

// RemoveMembership removes login from org: GitHub then answers 404.
func (g *Server) RemoveMembership(org, login string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.orgs[org], login)
}

// RevokeTokens revokes every access token of login (the user revoked the
// app): GitHub then answers 401 to them.
func (g *Server) RevokeTokens(login string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for tok, l := range g.tokens {
		if l == login {
			delete(g.tokens, tok)
			delete(g.scopes, tok)
		}
	}
}

// SetDown makes the API answer 502, as in a GitHub outage.
func (g *Server) SetDown(down bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down = down
}

// ActAs makes login the user who approves the next authorizations.
func (g *Server) ActAs(login string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.login = login
}

// SetDeny makes the user refuse the authorization.
func (g *Server) SetDeny(d bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deny = d
}

// Stats reports successful exchanges, refused exchanges and every code and
// token issued (tests check none of them reaches a log).
func (g *Server) Stats() (exchanges int, rejects []string, issued []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.exchanges, append([]string(nil), g.rejects...), append([]string(nil), g.issued...)
}

// MembershipCalls counts the org membership requests answered.
func (g *Server) MembershipCalls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.memberCalls
}

func random() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (g *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch {
	case q.Get("client_id") != ClientID:
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code":
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	case !knownScopes(q.Get("scope")):
		http.Error(w, "unexpected scope "+q.Get("scope"), http.StatusBadRequest)
		return
	case q.Get("state") == "":
		http.Error(w, "missing state", http.StatusBadRequest)
		return
	case q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "":
		http.Error(w, "PKCE S256 required", http.StatusBadRequest)
		return
	}
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || redirect.Scheme == "" || redirect.Host == "" {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	back := url.Values{"state": {q.Get("state")}}
	g.mu.Lock()
	if g.deny {
		back.Set("error", "access_denied")
		back.Set("error_description", "The user has denied your application access.")
	} else {
		code := random()
		g.codes[code] = stubCode{login: g.login, scopes: strings.Fields(q.Get("scope")), challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri")}
		g.issued = append(g.issued, code)
		back.Set("code", code)
	}
	g.mu.Unlock()
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (g *Server) reject(w http.ResponseWriter, status int, reason, code string) {
	g.rejects = append(g.rejects, reason)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": reason})
}

func (g *Server) accessToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if u, p, ok := r.BasicAuth(); ok {
		id, secret = u, p
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if id != ClientID || subtle.ConstantTimeCompare([]byte(secret), []byte(ClientSecret)) != 1 {
		g.reject(w, http.StatusUnauthorized, "client credentials", "incorrect_client_credentials")
		return
	}
	if r.PostForm.Get("grant_type") != "authorization_code" {
		g.reject(w, http.StatusBadRequest, "grant_type", "unsupported_grant_type")
		return
	}
	code := r.PostForm.Get("code")
	c, ok := g.codes[code]
	if !ok {
		g.reject(w, http.StatusBadRequest, "unknown code", "bad_verification_code")
		return
	}
	delete(g.codes, code) // single use, like GitHub
	if ru := r.PostForm.Get("redirect_uri"); ru != "" && ru != c.redirectURI {
		g.reject(w, http.StatusBadRequest, "redirect_uri mismatch", "redirect_uri_mismatch")
		return
	}
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if r.PostForm.Get("code_verifier") == "" || base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
		g.reject(w, http.StatusBadRequest, "code_verifier mismatch", "invalid_grant")
		return
	}
	tok := "gho_" + random()
	g.tokens[tok] = c.login
	g.scopes[tok] = c.scopes
	g.issued = append(g.issued, tok)
	g.exchanges++
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "token_type": "bearer", "scope": strings.Join(c.scopes, ",")})
}

// caller authenticates an API request; false has already answered.
func (g *Server) caller(w http.ResponseWriter, r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		tok, ok = strings.CutPrefix(h, "token ")
	}
	g.mu.Lock()
	login, known := g.tokens[tok]
	down := g.down
	g.mu.Unlock()
	switch {
	case down:
		http.Error(w, `{"message":"Server Error"}`, http.StatusBadGateway)
		return "", false
	case !ok || !known:
		http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return "", false
	}
	return login, true
}

func (g *Server) user(w http.ResponseWriter, r *http.Request) {
	login, ok := g.caller(w, r)
	if !ok {
		return
	}
	g.mu.Lock()
	u, ok := g.users[login]
	g.mu.Unlock()
	if !ok {
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(u)
}

func (g *Server) membership(w http.ResponseWriter, r *http.Request) {
	login, ok := g.caller(w, r)
	if !ok {
		return
	}
	org := r.PathValue("org")
	g.mu.Lock()
	g.memberCalls++
	state, ok := g.orgs[org][login]
	g.mu.Unlock()
	if !ok {
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"state": state, "role": "member",
		"organization": map[string]string{"login": org},
		"user":         map[string]string{"login": login},
	})
}
