package auth

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

// githubStub is a local stand-in for GitHub's OAuth web flow and the two API
// endpoints Atelier calls. It enforces what GitHub enforces that matters to
// us: the client credentials, single-use codes bound to a redirect URI, and
// PKCE S256.
type githubStub struct {
	srv          *httptest.Server
	clientID     string
	clientSecret string

	mu        sync.Mutex
	login     string // the GitHub user who approves at /login/oauth/authorize
	deny      bool   // the user clicks "Cancel" at GitHub
	users     map[string]githubUser
	orgs      map[string]map[string]string // org -> login -> membership state
	codes     map[string]stubCode
	tokens    map[string]string // access token -> login
	issued    []string          // every code and access token handed out
	rejects   []string          // why token exchanges were refused
	exchanges int               // successful exchanges
}

type stubCode struct {
	login       string
	challenge   string
	redirectURI string
}

func newGitHubStub(t *testing.T) *githubStub {
	t.Helper()
	g := &githubStub{
		clientID:     "Iv1.testclient",
		clientSecret: "test-client-secret",
		users:        map[string]githubUser{},
		orgs:         map[string]map[string]string{},
		codes:        map[string]stubCode{},
		tokens:       map[string]string{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", g.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", g.accessToken)
	mux.HandleFunc("GET /user", g.user)
	mux.HandleFunc("GET /user/memberships/orgs/{org}", g.membership)
	g.srv = httptest.NewServer(mux)
	t.Cleanup(g.srv.Close)
	return g
}

func (g *githubStub) addUser(id int64, login string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.users[login] = githubUser{ID: id, Login: login, Name: "Name of " + login, AvatarURL: "https://avatars.example/" + login}
}

func (g *githubStub) setMembership(org, login, state string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.orgs[org] == nil {
		g.orgs[org] = map[string]string{}
	}
	g.orgs[org][login] = state
}

func (g *githubStub) actAs(login string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.login = login
}

func (g *githubStub) setDeny(d bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deny = d
}

func (g *githubStub) stats() (exchanges int, rejects []string, issued []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.exchanges, append([]string(nil), g.rejects...), append([]string(nil), g.issued...)
}

func stubRandom() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (g *githubStub) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch {
	case q.Get("client_id") != g.clientID:
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code":
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	case q.Get("scope") != "read:user read:org":
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
		code := stubRandom()
		g.codes[code] = stubCode{login: g.login, challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri")}
		g.issued = append(g.issued, code)
		back.Set("code", code)
	}
	g.mu.Unlock()
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (g *githubStub) reject(w http.ResponseWriter, status int, reason, code string) {
	g.rejects = append(g.rejects, reason)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": reason})
}

func (g *githubStub) accessToken(w http.ResponseWriter, r *http.Request) {
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
	if id != g.clientID || subtle.ConstantTimeCompare([]byte(secret), []byte(g.clientSecret)) != 1 {
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
	tok := "gho_" + stubRandom()
	g.tokens[tok] = c.login
	g.issued = append(g.issued, tok)
	g.exchanges++
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "token_type": "bearer", "scope": "read:org,read:user"})
}

func (g *githubStub) caller(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		tok, ok = strings.CutPrefix(h, "token ")
	}
	if !ok {
		return "", false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	login, ok := g.tokens[tok]
	return login, ok
}

func (g *githubStub) user(w http.ResponseWriter, r *http.Request) {
	login, ok := g.caller(r)
	if !ok {
		http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
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

func (g *githubStub) membership(w http.ResponseWriter, r *http.Request) {
	login, ok := g.caller(r)
	if !ok {
		http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return
	}
	org := r.PathValue("org")
	g.mu.Lock()
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
