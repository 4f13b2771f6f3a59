package github_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth/githubtest"
	"atelier/internal/github"
)

func names(rs []github.Repository) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.FullName)
	}
	return out
}

func TestUserReposPaginatedAndScoped(t *testing.T) {
	gh := githubtest.New(t)
	gh.AddUser(1, "alice")
	gh.AddUser(2, "bob")
	for i := range 5 {
		gh.AddRepo(fmt.Sprintf("alice/r%d", i), i%2 == 0, map[string]string{"main": "c0"})
	}
	gh.AddRepo("bob/shared", true, map[string]string{"main": "c1"}, "alice")
	gh.AddRepo("bob/secret", true, map[string]string{"main": "c2"})
	gh.SetMaxPerPage(2) // 6 readable repositories: three pages
	c, err := github.New(gh.URL, gh.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	for _, tc := range []struct {
		name   string
		scopes []string
		want   []string
	}{
		{"repo scope", []string{"repo", "read:user"}, []string{"alice/r0", "alice/r1", "alice/r2", "alice/r3", "alice/r4", "bob/shared"}},
		{"login scopes only", []string{"read:user", "read:org"}, []string{"alice/r1", "alice/r3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.UserRepos(ctx, gh.IssueToken("alice", tc.scopes...))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(names(got), tc.want) {
				t.Errorf("repos = %v, want %v", names(got), tc.want)
			}
		})
	}
	if _, err := c.UserRepos(ctx, "ghp_not-a-token"); !errors.Is(err, github.ErrUnauthorized) {
		t.Errorf("bad token: %v, want ErrUnauthorized", err)
	}
}

func TestBranchesPaginated(t *testing.T) {
	gh := githubtest.New(t)
	gh.AddUser(1, "alice")
	br := map[string]string{}
	for i := range 7 {
		br[fmt.Sprintf("b%d", i)] = fmt.Sprintf("%040d", i)
	}
	gh.AddRepo("alice/app", true, br)
	gh.AddRepo("bob/private", true, map[string]string{"main": "x"})
	gh.SetMaxPerPage(3)
	c, _ := github.New(gh.URL, gh.Client())
	tok := gh.IssueToken("alice", "repo")
	got, err := c.Branches(context.Background(), tok, "alice/app")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 || got[6].Name != "b6" || got[6].Commit != fmt.Sprintf("%040d", 6) {
		t.Errorf("branches = %+v", got)
	}
	if _, err := c.Branches(context.Background(), tok, "bob/private"); !errors.Is(err, github.ErrNotFound) {
		t.Errorf("another's private repository: %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"../x", "a/b/c", "a", "a/..", "", "./x", "a/.", "a/b?c", "a/b#c", "a /b"} {
		if _, err := c.Branches(context.Background(), tok, bad); err == nil {
			t.Errorf("repo %q accepted", bad)
		}
	}
}

// A next link to another host is not followed: the token would go there.
func TestNextLinkStaysOnAPIHost(t *testing.T) {
	var leaked bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked = r.Header.Get("Authorization") != ""
		_, _ = w.Write([]byte("[]"))
	}))
	defer other.Close()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", `<`+other.URL+`/user/repos?page=2>; rel="next"`)
		_, _ = w.Write([]byte(`[{"full_name":"a/b"}]`))
	}))
	defer api.Close()
	c, _ := github.New(api.URL, nil)
	_, err := c.UserRepos(context.Background(), "tok")
	if err == nil || !strings.Contains(err.Error(), "is not on") {
		t.Errorf("err = %v, want a refusal of the next page", err)
	}
	if leaked {
		t.Error("the token was sent to the other host")
	}
}

func TestInstallationTokenMintedVerifiedAndCached(t *testing.T) {
	gh := githubtest.New(t)
	// Tokens live 10m30s: cached at first, within refreshBefore (10 min) of
	// expiry 45 s later. The stand-in checks JWTs against the real clock, so
	// the App's clock moves less than the minute it backdates iat by.
	keyPath := gh.EnableApp(t, 4242, 10*time.Minute+30*time.Second)
	gh.AddInstallation(7, "acme", "Organization", "acme/api", "acme/web")
	gh.AddRepo("acme/api", true, map[string]string{"main": "a1"})
	gh.AddRepo("acme/web", true, map[string]string{"main": "w1", "dev": "w2"})
	gh.AddRepo("acme/other", true, map[string]string{"main": "o1"})
	gh.SetMaxPerPage(1)
	key, err := github.LoadKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := github.New(gh.URL, gh.Client())
	app := github.NewApp(4242, key, c)
	now := time.Now()
	app.SetClock(func() time.Time { return now })
	ctx := context.Background()

	t1, err := app.Token(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := app.Token(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if t1.Token != t2.Token || app.Mints() != 1 {
		t.Errorf("second call minted again: %d mints", app.Mints())
	}
	if mints, _, _ := gh.AppStats(); mints != 1 {
		t.Errorf("GitHub saw %d mints, want 1", mints)
	}
	// Near expiry the cached token is replaced.
	now = now.Add(45 * time.Second)
	t3, err := app.Token(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if t3.Token == t1.Token || app.Mints() != 2 {
		t.Errorf("token near expiry reused (%d mints)", app.Mints())
	}

	repos, err := c.InstallationRepos(ctx, t3.Token)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(repos), []string{"acme/api", "acme/web"}) {
		t.Errorf("installation repos = %v", names(repos))
	}
	if _, err := c.Branches(ctx, t3.Token, "acme/other"); !errors.Is(err, github.ErrNotFound) {
		t.Errorf("repository outside the installation: %v", err)
	}
	in, err := app.Installation(ctx, 7)
	if err != nil || in.Account != "acme" || in.AccountType != "Organization" {
		t.Errorf("installation = %+v, %v", in, err)
	}
	if _, err := app.Token(ctx, 8); !errors.Is(err, github.ErrNotFound) {
		t.Errorf("unknown installation: %v", err)
	}

	// A JWT signed with another key, or claiming another App, is refused.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, a := range map[string]*github.App{
		"wrong key": github.NewApp(4242, other, c),
		"wrong app": github.NewApp(999, key, c),
	} {
		if _, err := a.Token(ctx, 7); !errors.Is(err, github.ErrUnauthorized) {
			t.Errorf("%s: %v, want ErrUnauthorized", name, err)
		}
	}
	if _, _, rejects := gh.AppStats(); len(rejects) != 2 {
		t.Errorf("stand-in rejects = %q, want 2", rejects)
	}
}

// BenchmarkInstallationToken: a clone's credential from the cache beside
// one minted (JWT signed, POST to the stand-in) every time.
func BenchmarkInstallationToken(b *testing.B) {
	gh := githubtest.New(b)
	keyPath := gh.EnableApp(b, 1, time.Hour)
	gh.AddInstallation(5, "acme", "Organization")
	key, err := github.LoadKey(keyPath)
	if err != nil {
		b.Fatal(err)
	}
	c, _ := github.New(gh.URL, gh.Client())
	ctx := context.Background()
	var per [2]float64
	for i, name := range []string{"cached", "minted"} {
		b.Run(name, func(b *testing.B) {
			app := github.NewApp(1, key, c)
			for b.Loop() {
				if name == "minted" {
					app = github.NewApp(1, key, c) // an empty cache: every call mints
				}
				if _, err := app.Token(ctx, 5); err != nil {
					b.Fatal(err)
				}
			}
			per[i] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
	}
	if per[0] > 0 {
		b.Logf("installation token: cached %.0f ns, minted %.0f ns (%.0fx)", per[0], per[1], per[1]/per[0])
	}
}
