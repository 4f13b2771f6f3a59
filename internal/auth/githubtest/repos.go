package githubtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Repo is a repository of the stand-in. Readers are the logins besides
// the owner who may read it (collaborators).
type Repo struct {
	FullName string
	Private  bool
	Branches map[string]string // name -> commit
	Readers  []string
}

type stubApp struct {
	id            int64
	pub           *rsa.PublicKey
	installations map[int64]stubInstallation
	tokens        map[string]instToken
	ttl           time.Duration
	mints         int
	rejects       []string
}

type stubInstallation struct {
	account, accountType string
	repos                []string
}

type instToken struct {
	installation int64
	expires      time.Time
}

func knownScopes(s string) bool {
	f := strings.Fields(s)
	if len(f) == 0 {
		return false
	}
	for _, x := range f {
		if !slices.Contains([]string{"read:user", "read:org", "repo", "user:email"}, x) {
			return false
		}
	}
	return true
}

// AddRepo creates a repository (owner/name) with branches name -> commit.
func (g *Server) AddRepo(full string, private bool, branches map[string]string, readers ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.repos[full] = &Repo{FullName: full, Private: private, Branches: branches, Readers: readers}
}

// SetMaxPerPage caps per_page (GitHub's is 100), so a test paginates with
// a handful of entries.
func (g *Server) SetMaxPerPage(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.maxPerPage = n
}

// IssueToken hands login a token with scopes directly, as a personal
// access token pasted by the user would be.
func (g *Server) IssueToken(login string, scopes ...string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	tok := "ghp_" + random()
	g.tokens[tok] = login
	g.scopes[tok] = scopes
	g.issued = append(g.issued, tok)
	return tok
}

// Scopes returns the scopes granted to a token.
func (g *Server) Scopes(token string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.scopes[token]...)
}

// EnableApp registers the stand-in's GitHub App: a fresh RSA key whose
// private half is written, PEM, to a file in t's temporary directory.
// Installation tokens live ttl.
func (g *Server) EnableApp(t testing.TB, id int64, ttl time.Duration) (keyPath string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPath = filepath.Join(t.TempDir(), "app.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyPath, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.app = &stubApp{id: id, pub: &key.PublicKey, installations: map[int64]stubInstallation{}, tokens: map[string]instToken{}, ttl: ttl}
	return keyPath
}

// AddInstallation installs the App on account (a "User" or an
// "Organization") for repos.
func (g *Server) AddInstallation(id int64, account, accountType string, repos ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.app.installations[id] = stubInstallation{account: account, accountType: accountType, repos: repos}
}

// AppStats reports the installation tokens minted, every one issued, and
// why App JWTs were refused.
func (g *Server) AppStats() (mints int, tokens []string, rejects []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for tok := range g.app.tokens {
		tokens = append(tokens, tok)
	}
	return g.app.mints, tokens, append([]string(nil), g.app.rejects...)
}

// identity is who a bearer token speaks for: a user (login, scopes) or an
// installation.
type identity struct {
	login        string
	scopes       []string
	installation int64
}

func (g *Server) identify(w http.ResponseWriter, r *http.Request) (identity, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		tok, ok = strings.CutPrefix(r.Header.Get("Authorization"), "token ")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down {
		http.Error(w, `{"message":"Server Error"}`, http.StatusBadGateway)
		return identity{}, false
	}
	if login, known := g.tokens[tok]; ok && known {
		return identity{login: login, scopes: g.scopes[tok]}, true
	}
	if g.app != nil {
		if it, known := g.app.tokens[tok]; ok && known && time.Now().Before(it.expires) {
			if _, installed := g.app.installations[it.installation]; installed {
				return identity{installation: it.installation}, true
			}
		}
	}
	http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
	return identity{}, false
}

// canRead applies GitHub's rules; the caller holds g.mu. A private
// repository needs a user token with the repo scope, or an installation
// that includes it.
func (g *Server) canRead(id identity, r *Repo) bool {
	if id.installation != 0 {
		return slices.Contains(g.app.installations[id.installation].repos, r.FullName)
	}
	mine := strings.HasPrefix(r.FullName, id.login+"/") || slices.Contains(r.Readers, id.login)
	if !r.Private {
		return true
	}
	return mine && slices.Contains(id.scopes, "repo")
}

func (g *Server) apiRepo(r *Repo) map[string]any {
	def := "main"
	if _, ok := r.Branches[def]; !ok {
		for b := range r.Branches {
			def = b
			break
		}
	}
	return map[string]any{"full_name": r.FullName, "private": r.Private, "default_branch": def,
		"clone_url": "https://github.com/" + r.FullName + ".git"}
}

// paginate answers page `page` of items with GitHub's Link header.
func (g *Server) paginate(w http.ResponseWriter, r *http.Request, n int) (lo, hi int) {
	g.mu.Lock()
	limit := g.maxPerPage
	g.mu.Unlock()
	per, _ := strconv.Atoi(r.URL.Query().Get("per_page"))
	if per <= 0 || per > limit {
		per = min(30, limit)
	}
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	if page < 1 {
		page = 1
	}
	lo, hi = min((page-1)*per, n), min(page*per, n)
	if hi < n {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(page+1))
		q.Set("per_page", strconv.Itoa(per))
		w.Header().Set("Link", fmt.Sprintf(`<%s%s?%s>; rel="next"`, g.URL, r.URL.Path, q.Encode()))
	}
	return lo, hi
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (g *Server) userRepos(w http.ResponseWriter, r *http.Request) {
	id, ok := g.identify(w, r)
	if !ok {
		return
	}
	if id.installation != 0 {
		http.Error(w, `{"message":"Resource not accessible by integration"}`, http.StatusForbidden)
		return
	}
	g.mu.Lock()
	var list []map[string]any
	for _, rp := range g.sortedRepos() {
		// /user/repos lists the user's own and collaborator repositories.
		if (strings.HasPrefix(rp.FullName, id.login+"/") || slices.Contains(rp.Readers, id.login)) && g.canRead(id, rp) {
			list = append(list, g.apiRepo(rp))
		}
	}
	g.mu.Unlock()
	lo, hi := g.paginate(w, r, len(list))
	writeJSON(w, http.StatusOK, append([]map[string]any{}, list[lo:hi]...))
}

func (g *Server) sortedRepos() []*Repo {
	out := make([]*Repo, 0, len(g.repos))
	for _, r := range g.repos {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].FullName < out[j].FullName })
	return out
}

func (g *Server) installationRepos(w http.ResponseWriter, r *http.Request) {
	id, ok := g.identify(w, r)
	if !ok {
		return
	}
	if id.installation == 0 {
		http.Error(w, `{"message":"This endpoint requires an installation token"}`, http.StatusForbidden)
		return
	}
	g.mu.Lock()
	var list []map[string]any
	for _, rp := range g.sortedRepos() {
		if g.canRead(id, rp) {
			list = append(list, g.apiRepo(rp))
		}
	}
	g.mu.Unlock()
	lo, hi := g.paginate(w, r, len(list))
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(list), "repositories": append([]map[string]any{}, list[lo:hi]...)})
}

func (g *Server) branches(w http.ResponseWriter, r *http.Request) {
	id, ok := g.identify(w, r)
	if !ok {
		return
	}
	g.mu.Lock()
	rp, exists := g.repos[r.PathValue("owner")+"/"+r.PathValue("repo")]
	if !exists || !g.canRead(id, rp) {
		g.mu.Unlock()
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
		return
	}
	names := make([]string, 0, len(rp.Branches))
	for b := range rp.Branches {
		names = append(names, b)
	}
	sort.Strings(names)
	list := make([]map[string]any, 0, len(names))
	for _, b := range names {
		list = append(list, map[string]any{"name": b, "commit": map[string]string{"sha": rp.Branches[b]}})
	}
	g.mu.Unlock()
	lo, hi := g.paginate(w, r, len(list))
	writeJSON(w, http.StatusOK, list[lo:hi])
}

// appCaller verifies the App JWT as GitHub does: RS256 signed by the App's
// key, issued by its id, at most ten minutes long, not expired.
func (g *Server) appCaller(w http.ResponseWriter, r *http.Request) (int64, bool) {
	raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.app == nil {
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
		return 0, false
	}
	claims := &jwt.RegisteredClaims{}
	_, perr := jwt.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) { return g.app.pub, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(strconv.FormatInt(g.app.id, 10)),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	switch {
	case perr != nil:
		g.app.rejects = append(g.app.rejects, perr.Error())
		http.Error(w, `{"message":"A JSON web token could not be decoded"}`, http.StatusUnauthorized)
		return 0, false
	case claims.IssuedAt == nil || claims.ExpiresAt.Sub(claims.IssuedAt.Time) > 10*time.Minute:
		g.app.rejects = append(g.app.rejects, "jwt lives over ten minutes")
		http.Error(w, `{"message":"'Expiration time' claim ('exp') is too far in the future"}`, http.StatusUnauthorized)
		return 0, false
	}
	if _, ok := g.app.installations[id]; err != nil || !ok {
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
		return 0, false
	}
	return id, true
}

func (g *Server) installation(w http.ResponseWriter, r *http.Request) {
	id, ok := g.appCaller(w, r)
	if !ok {
		return
	}
	g.mu.Lock()
	in := g.app.installations[id]
	accountID := g.users[in.account].ID // 0 for an organization
	if in.accountType == "Organization" {
		accountID = 1000 + id
	}
	g.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "account": map[string]any{"id": accountID, "login": in.account, "type": in.accountType}})
}

func (g *Server) installationToken(w http.ResponseWriter, r *http.Request) {
	id, ok := g.appCaller(w, r)
	if !ok {
		return
	}
	g.mu.Lock()
	tok := "ghs_" + random()
	exp := time.Now().Add(g.app.ttl).UTC().Truncate(time.Second)
	g.app.tokens[tok] = instToken{installation: id, expires: exp}
	g.app.mints++
	g.issued = append(g.issued, tok)
	g.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok, "expires_at": exp.Format(time.RFC3339)})
}
