package workspace

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth/githubtest"
	"atelier/internal/github"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// ghFixture is the workspace service wired to the GitHub stand-in, its App
// enabled, with alice (GitHub 1) and bob (GitHub 2) as GitHub users.
type ghFixture struct {
	svc        *Service
	st         *store.Store
	dir        string
	gh         *githubtest.Server
	app        *github.App
	alice, bob string // user ids
}

func newGitHubFixture(t *testing.T) *ghFixture {
	t.Helper()
	svc, st, dir := newService(t)
	gh := githubtest.New(t)
	f := &ghFixture{svc: svc, st: st, dir: dir, gh: gh}
	for i, login := range []string{"alice", "bob"} {
		gh.AddUser(int64(i+1), login)
		u, err := st.UpsertGitHubUser(context.Background(), store.User{GitHubID: int64(i + 1), Login: login})
		if err != nil {
			t.Fatal(err)
		}
		if login == "alice" {
			f.alice = u.ID
		} else {
			f.bob = u.ID
		}
	}
	keyPath := gh.EnableApp(t, 31, time.Hour)
	key, err := github.LoadKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	api, err := github.New(gh.URL, gh.Client())
	if err != nil {
		t.Fatal(err)
	}
	f.app = github.NewApp(31, key, api)
	svc.SetGitHub(api, f.app)
	return f
}

// TestConnectedSourceSealed: the connect flow's token is kept sealed (the
// raw row and the database files never hold it), re-connecting replaces
// it in the same source, and only its owner's git gets it.
func TestConnectedSourceSealed(t *testing.T) {
	ctx := context.Background()
	f := newGitHubFixture(t)
	const tok1, tok2 = "gho_connected-token-one-4b1f", "gho_connected-token-two-9e3a"
	src, err := f.svc.ConnectGitHub(ctx, f.alice, "alice", tok1)
	if err != nil {
		t.Fatal(err)
	}
	if src.Kind != KindOAuth || src.GitHubLogin != "alice" || src.Type != SourceGitHub || !src.HasToken || src.Host != "github.com" {
		t.Fatalf("connected source = %+v", src)
	}
	again, err := f.svc.ConnectGitHub(ctx, f.alice, "alice", tok2)
	if err != nil {
		t.Fatal(err)
	}
	list, _ := f.svc.Sources(ctx, f.alice)
	if again.ID != src.ID || len(list) != 1 {
		t.Fatalf("re-connect made another source: %+v", list)
	}
	if c, err := f.svc.Credential(ctx, f.alice, src.ID, "github.com"); err != nil || c.Token != tok2 || c.Username != "alice" {
		t.Fatalf("alice's credential: %+v %v", c, err)
	}
	if _, err := f.svc.Credential(ctx, f.bob, src.ID, "github.com"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("bob got alice's connected token: %v", err)
	}
	if c, err := f.svc.CredentialForHost(ctx, f.bob, "https", "github.com"); err == nil || c.Token != "" {
		t.Fatalf("bob's guest got a github credential: %+v", c)
	}
	// A user cannot forge a connected (or App) source through the API input.
	var fe *sandbox.FieldError
	if _, err := f.svc.CreateSource(ctx, f.bob, SourceInput{Type: SourceGitHub, Name: "x", Username: "oauth:alice", Token: "t"}); !errors.As(err, &fe) || fe.Field != "username" {
		t.Fatalf("username with a colon: %v", err)
	}

	// The raw row holds sealed bytes, not the token.
	raw, err := f.st.GetGitSource(ctx, src.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw.Token) == 0 || bytes.Contains(raw.Token, []byte(tok2)) || bytes.Contains(raw.Token, []byte("connected-token")) {
		t.Fatalf("token column holds the token: %q", raw.Token)
	}
	f.st.Close()
	db, err := sql.Open("sqlite", filepath.Join(f.dir, store.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var col []byte
	if err := db.QueryRow(`SELECT token FROM git_sources WHERE id = ?`, src.ID).Scan(&col); err != nil {
		t.Fatal(err)
	}
	if len(col) < len(tok2) || bytes.Contains(col, []byte(tok2)) {
		t.Fatalf("raw token column: %q", col)
	}
	for _, file := range []string{store.DBFile, store.DBFile + "-wal"} {
		b, _ := readFile(filepath.Join(f.dir, file))
		if bytes.Contains(b, []byte("connected-token")) {
			t.Fatalf("%s holds a connected token in the clear", file)
		}
	}
}

func repoNames(rs []github.Repository) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.FullName)
	}
	return out
}

// TestReposAndBranchesOwnerOnly: a github source lists its repositories
// and branches through the GitHub API, every page; another user's source
// id is not found; a generic source has no repository listing.
func TestReposAndBranchesOwnerOnly(t *testing.T) {
	ctx := context.Background()
	f := newGitHubFixture(t)
	f.gh.SetMaxPerPage(2)
	for _, r := range []string{"alice/a", "alice/b", "alice/c", "alice/d", "alice/e"} {
		f.gh.AddRepo(r, true, map[string]string{"main": "m1", "dev": "d1", "feature/x": "f1"})
	}
	f.gh.AddRepo("bob/private", true, map[string]string{"main": "b1"})
	src, err := f.svc.ConnectGitHub(ctx, f.alice, "alice", f.gh.IssueToken("alice", "repo", "read:user", "read:org"))
	if err != nil {
		t.Fatal(err)
	}
	repos, err := f.svc.Repos(ctx, f.alice, src.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"alice/a", "alice/b", "alice/c", "alice/d", "alice/e"}; !slices.Equal(repoNames(repos), want) {
		t.Fatalf("repos = %v, want %v", repoNames(repos), want)
	}
	if repos[0].CloneURL != "https://github.com/alice/a.git" || !repos[0].Private {
		t.Errorf("repo view = %+v", repos[0])
	}
	br, err := f.svc.RepoBranches(ctx, f.alice, src.ID, "alice/c")
	if err != nil {
		t.Fatal(err)
	}
	if len(br) != 3 || br[0].Name != "dev" || br[2].Name != "main" || br[2].Commit != "m1" {
		t.Fatalf("branches = %+v", br)
	}
	if _, err := f.svc.RepoBranches(ctx, f.alice, src.ID, "bob/private"); !errors.Is(err, github.ErrNotFound) {
		t.Errorf("bob's private repository through alice's token: %v", err)
	}

	// Co-tenant: bob names alice's source.
	if _, err := f.svc.Repos(ctx, f.bob, src.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("bob listed alice's repositories: %v", err)
	}
	if _, err := f.svc.RepoBranches(ctx, f.bob, src.ID, "alice/a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("bob listed alice's branches: %v", err)
	}

	gen, err := f.svc.CreateSource(ctx, f.alice, SourceInput{Name: "gen", URL: "https://git.example.test", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"id":   func() error { _, err := f.svc.Repos(ctx, f.alice, gen.ID); return err },
		"repo": func() error { _, err := f.svc.RepoBranches(ctx, f.alice, src.ID, "../etc"); return err },
	} {
		var fe *sandbox.FieldError
		if err := call(); !errors.As(err, &fe) || fe.Field != name {
			t.Errorf("want a field error on %s: %v", name, err)
		}
	}

	// A revoked token is reported as such.
	f.gh.RevokeTokens("alice")
	if _, err := f.svc.Repos(ctx, f.alice, src.ID); !errors.Is(err, github.ErrUnauthorized) {
		t.Errorf("revoked token: %v", err)
	}
}

// TestAppSource: an installation source is allowed only for the user's own
// account or an org they are an active member of; its credential is an
// installation token the server mints, reused until near expiry, for
// clones and the guest's credential helper alike.
func TestAppSource(t *testing.T) {
	ctx := context.Background()
	f := newGitHubFixture(t)
	f.gh.AddInstallation(7, "alice", "User", "alice/app")
	f.gh.AddInstallation(8, "acme", "Organization", "acme/api")
	f.gh.AddRepo("alice/app", true, map[string]string{"main": "a"})
	f.gh.AddRepo("acme/api", true, map[string]string{"main": "b", "release": "c"})
	f.gh.SetMembership("acme", "alice", "active")
	f.gh.SetMembership("acme", "bob", "pending")

	fieldErr := func(t *testing.T, err error, field, contains string) {
		t.Helper()
		var fe *sandbox.FieldError
		if !errors.As(err, &fe) || fe.Field != field || !strings.Contains(fe.Message, contains) {
			t.Errorf("want a field error on %s (%q): %v", field, contains, err)
		}
	}
	own, err := f.svc.CreateSource(ctx, f.alice, SourceInput{Type: SourceGitHub, Name: "mine", InstallationID: 7})
	if err != nil {
		t.Fatal(err)
	}
	if own.Kind != KindApp || own.InstallationID != 7 || own.Username != "x-access-token" {
		t.Fatalf("app source = %+v", own)
	}
	// The guest's credential helper gets an installation token too; bob's
	// guest (no source of his yet) gets nothing.
	if c, err := f.svc.CredentialForHost(ctx, f.alice, "https", "github.com"); err != nil || !strings.HasPrefix(c.Token, "ghs_") || c.Username != "x-access-token" {
		t.Fatalf("alice's guest: %+v %v", c, err)
	}
	if c, err := f.svc.CredentialForHost(ctx, f.bob, "https", "github.com"); !errors.Is(err, ErrSourceHost) || c.Token != "" {
		t.Fatalf("bob's guest got %+v %v", c, err)
	}
	_, err = f.svc.CreateSource(ctx, f.bob, SourceInput{Type: SourceGitHub, Name: "alices", InstallationID: 7})
	fieldErr(t, err, "installationId", "neither your GitHub account")
	_, err = f.svc.CreateSource(ctx, f.alice, SourceInput{Type: SourceGitHub, Name: "org", InstallationID: 8})
	fieldErr(t, err, "installationId", "connect GitHub first")
	_, err = f.svc.CreateSource(ctx, f.alice, SourceInput{Type: SourceGitHub, Name: "nope", InstallationID: 99})
	fieldErr(t, err, "installationId", "not an installation")
	_, err = f.svc.CreateSource(ctx, f.alice, SourceInput{Type: SourceGitHub, Name: "tok", InstallationID: 7, Token: "x"})
	fieldErr(t, err, "token", "must be empty")
	_, err = f.svc.CreateSource(ctx, f.alice, SourceInput{Name: "gen", URL: "https://h.test", Token: "x", InstallationID: 7})
	fieldErr(t, err, "installationId", "github sources only")

	if _, err := f.svc.ConnectGitHub(ctx, f.alice, "alice", f.gh.IssueToken("alice", "repo", "read:org")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.ConnectGitHub(ctx, f.bob, "bob", f.gh.IssueToken("bob", "repo", "read:org")); err != nil {
		t.Fatal(err)
	}
	org, err := f.svc.CreateSource(ctx, f.alice, SourceInput{Type: SourceGitHub, Name: "org", InstallationID: 8})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.CreateSource(ctx, f.bob, SourceInput{Type: SourceGitHub, Name: "org", InstallationID: 8})
	fieldErr(t, err, "installationId", "neither")

	// Minted on first use, then reused; bob never gets it.
	c1, err := f.svc.Credential(ctx, f.alice, org.ID, "github.com")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := f.svc.Credential(ctx, f.alice, org.ID, "github.com")
	if err != nil {
		t.Fatal(err)
	}
	// Installation 7 minted once above; 8 mints once here.
	if !strings.HasPrefix(c1.Token, "ghs_") || c1 != c2 || c1.Username != "x-access-token" || f.app.Mints() != 2 {
		t.Fatalf("credentials %+v %+v after %d mints", c1, c2, f.app.Mints())
	}
	if _, err := f.svc.Credential(ctx, f.bob, org.ID, "github.com"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("bob: %v", err)
	}

	repos, err := f.svc.Repos(ctx, f.alice, org.ID)
	if err != nil || !slices.Equal(repoNames(repos), []string{"acme/api"}) {
		t.Fatalf("installation repos %v: %v", repoNames(repos), err)
	}
	br, err := f.svc.RepoBranches(ctx, f.alice, org.ID, "acme/api")
	if err != nil || len(br) != 2 {
		t.Fatalf("installation branches %+v: %v", br, err)
	}
	list, _ := f.svc.Sources(ctx, f.alice)
	for _, s := range list {
		if s.Kind == KindApp && s.ID == org.ID && s.InstallationID != 8 {
			t.Errorf("listed %+v", s)
		}
	}

	// Alice leaves acme: trusted for the rest of appRecheck, then refused.
	f.gh.RemoveMembership("acme", "alice")
	now := time.Now()
	f.svc.now = func() time.Time { return now }
	if _, err := f.svc.Credential(ctx, f.alice, org.ID, "github.com"); err != nil {
		t.Fatalf("within the recheck window: %v", err)
	}
	now = now.Add(appRecheck + time.Second)
	if c, err := f.svc.Credential(ctx, f.alice, org.ID, "github.com"); !errors.Is(err, ErrInstallationNotYours) || c.Token != "" {
		t.Fatalf("after leaving the org: %+v %v", c, err)
	}
	if _, err := f.svc.Repos(ctx, f.alice, org.ID); !errors.Is(err, ErrInstallationNotYours) {
		t.Fatalf("listing after leaving the org: %v", err)
	}
}
