package workspace

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"atelier/internal/github"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// Kinds of github sources. A github source's row says which by its stored
// username: a plain name for a pasted token, "oauth:<login>" for the token
// of the connect flow, "app:<installation id>" for a GitHub App
// installation. A colon can never be in a git username (HTTP basic
// authentication splits on it), so user input cannot forge either.
const (
	KindToken = "token"
	KindOAuth = "oauth"
	KindApp   = "app"

	oauthPrefix = "oauth:"
	appPrefix   = "app:"
	// appUsername is what git sends with an installation token.
	appUsername = "x-access-token"
)

// SetGitHub gives the service the GitHub API (repositories and branches of
// github sources) and, when one is configured, the GitHub App that mints
// installation tokens.
func (s *Service) SetGitHub(api *github.Client, app *github.App) {
	s.gh, s.app = api, app
}

// sourceKind returns the kind of g and what its username encodes.
func sourceKind(g store.GitSource) (kind, detail string) {
	if g.Type != SourceGitHub {
		return KindToken, ""
	}
	if v, ok := strings.CutPrefix(g.Username, oauthPrefix); ok {
		return KindOAuth, v
	}
	if v, ok := strings.CutPrefix(g.Username, appPrefix); ok {
		return KindApp, v
	}
	return KindToken, ""
}

// createAppSource stores a github source that uses installation id: the
// installation must be the App's, on the user's own GitHub account or an
// organization the user is an active member of (checked with their
// connected GitHub token), so nobody borrows another account's install.
func (s *Service) createAppSource(ctx context.Context, owner, name string, in SourceInput) (Source, error) {
	if s.app == nil {
		return Source{}, fieldErr("installationId", "no GitHub App is configured on this server (auth.github.appId)")
	}
	if in.Token != "" || in.Username != "" {
		return Source{}, fieldErr("token", "must be empty for a GitHub App installation source: the server mints its tokens")
	}
	inst, err := s.app.Installation(ctx, in.InstallationID)
	if errors.Is(err, github.ErrNotFound) {
		return Source{}, fieldErr("installationId", "is not an installation of this server's GitHub App")
	}
	if err != nil {
		return Source{}, fmt.Errorf("look up installation %d: %w", in.InstallationID, err)
	}
	if err := s.mayUseInstallation(ctx, owner, inst); err != nil {
		return Source{}, err
	}
	g, err := s.st.CreateGitSource(ctx, store.GitSource{OwnerID: owner, Type: SourceGitHub, Name: name, Host: "github.com",
		Username: appPrefix + strconv.FormatInt(in.InstallationID, 10)}, nil)
	if err != nil {
		return Source{}, err
	}
	s.log.InfoContext(ctx, "git source created", "source_id", g.ID, "owner_id", owner, "installation_id", in.InstallationID)
	return sourceView(g), nil
}

func (s *Service) mayUseInstallation(ctx context.Context, owner string, inst github.Installation) error {
	u, err := s.st.GetUser(ctx, owner)
	if err != nil {
		return err
	}
	// The account's id, not its login: a login can be renamed and reused.
	if u.GitHubID != 0 && inst.AccountType == "User" && inst.AccountID == u.GitHubID {
		return nil
	}
	refuse := fieldErr("installationId", "is installed on %s, which is neither your GitHub account nor an organization you are a member of", inst.Account)
	if inst.AccountType != "Organization" {
		return refuse
	}
	tok, err := s.connectedToken(ctx, owner)
	if errors.Is(err, store.ErrNotFound) {
		return fieldErr("installationId", "is installed on the organization %s: connect GitHub first so your membership can be checked", inst.Account)
	}
	if err != nil {
		return err
	}
	active, err := s.gh.OrgMember(ctx, tok, inst.Account)
	if err != nil {
		return fmt.Errorf("check membership of %s: %w", inst.Account, err)
	}
	if !active {
		return refuse
	}
	return nil
}

// connectedToken opens the owner's connected GitHub token.
func (s *Service) connectedToken(ctx context.Context, owner string) (string, error) {
	list, err := s.st.ListGitSources(ctx, owner)
	if err != nil {
		return "", err
	}
	for _, g := range list {
		if k, _ := sourceKind(g); k == KindOAuth {
			c, err := s.Credential(ctx, owner, g.ID, g.Host)
			return c.Token, err
		}
	}
	return "", fmt.Errorf("connected github account: %w", store.ErrNotFound)
}

// ConnectGitHub keeps token, from the repo-scoped connect flow, as the
// owner's connected github source: the one there is gets the new token (a
// re-connect, maybe as another GitHub account), else one is created.
func (s *Service) ConnectGitHub(ctx context.Context, owner, login, token string) (Source, error) {
	if login == "" || strings.ContainsAny(login, ":\x00\r\n") || token == "" || strings.ContainsAny(token, "\x00\r\n") {
		return Source{}, errors.New("connect github: bad login or token from GitHub")
	}
	username := oauthPrefix + login
	seal := func(id string) ([]byte, error) { return s.box.Seal([]byte(token), sourceAAD(id)) }
	list, err := s.st.ListGitSources(ctx, owner)
	if err != nil {
		return Source{}, err
	}
	for _, g := range list {
		if k, _ := sourceKind(g); k == KindOAuth {
			if err := s.st.ReplaceGitSourceToken(ctx, owner, g.ID, username, seal); err != nil {
				return Source{}, err
			}
			s.log.InfoContext(ctx, "github reconnected", "source_id", g.ID, "owner_id", owner, "github_login", login)
			if g, err = s.st.GetGitSource(ctx, g.ID); err != nil {
				return Source{}, err
			}
			return sourceView(g), nil
		}
	}
	name := "github"
	for i := 2; ; i++ {
		g, err := s.st.CreateGitSource(ctx, store.GitSource{OwnerID: owner, Type: SourceGitHub, Name: name, Host: "github.com", Username: username}, seal)
		if errors.Is(err, store.ErrDuplicate) && i < 100 {
			name = fmt.Sprintf("github-%d", i)
			continue
		}
		if err != nil {
			return Source{}, err
		}
		s.log.InfoContext(ctx, "github connected", "source_id", g.ID, "owner_id", owner, "github_login", login)
		return sourceView(g), nil
	}
}

// ownSource returns owner's source id; another user's is not found.
func (s *Service) ownSource(ctx context.Context, owner, id string) (store.GitSource, error) {
	g, err := s.st.GetGitSource(ctx, id)
	if err != nil {
		return store.GitSource{}, err
	}
	if g.OwnerID != owner {
		return store.GitSource{}, fmt.Errorf("git source %s: %w", id, store.ErrNotFound)
	}
	return g, nil
}

// githubSource checks that id is owner's github source and opens its token.
func (s *Service) githubSource(ctx context.Context, owner, id, field string) (store.GitSource, Credential, error) {
	g, err := s.ownSource(ctx, owner, id)
	if err != nil {
		return g, Credential{}, err
	}
	if g.Type != SourceGitHub {
		return g, Credential{}, fieldErr(field, "is listed through the GitHub API for github sources only; list a generic source's branches by repository url")
	}
	if s.gh == nil {
		return g, Credential{}, errors.New("github api not configured")
	}
	c, err := s.Credential(ctx, owner, id, g.Host)
	return g, c, err
}

// Repos lists the repositories owner's github source id reads.
func (s *Service) Repos(ctx context.Context, owner, id string) ([]github.Repository, error) {
	g, c, err := s.githubSource(ctx, owner, id, "id")
	if err != nil {
		return nil, err
	}
	var list []github.Repository
	if k, _ := sourceKind(g); k == KindApp {
		list, err = s.gh.InstallationRepos(ctx, c.Token)
	} else {
		list, err = s.gh.UserRepos(ctx, c.Token)
	}
	if list == nil {
		list = []github.Repository{}
	}
	return list, err
}

// RepoBranches lists repo's (owner/name) branches through the GitHub API
// with owner's github source id.
func (s *Service) RepoBranches(ctx context.Context, owner, id, repo string) ([]Branch, error) {
	if !github.ValidRepo(repo) {
		return nil, &sandbox.FieldError{Field: "repo", Message: "must be owner/name"}
	}
	_, c, err := s.githubSource(ctx, owner, id, "repo")
	if err != nil {
		return nil, err
	}
	list, err := s.gh.Branches(ctx, c.Token, repo)
	if err != nil {
		return nil, err
	}
	out := make([]Branch, 0, len(list))
	for _, b := range list {
		out = append(out, Branch{Name: b.Name, Commit: b.Commit})
	}
	return out, nil
}

// appCredential mints (or reuses) an installation token for source g.
func (s *Service) appCredential(ctx context.Context, g store.GitSource, installation string) (Credential, error) {
	if s.app == nil {
		return Credential{}, fmt.Errorf("git source %s uses a GitHub App installation, but no App is configured (auth.github.appId)", g.ID)
	}
	id, err := strconv.ParseInt(installation, 10, 64)
	if err != nil {
		return Credential{}, fmt.Errorf("git source %s: bad installation id %q", g.ID, installation)
	}
	if err := s.recheckInstallation(ctx, g.OwnerID, id); err != nil {
		return Credential{}, fmt.Errorf("git source %s: %w", g.ID, err)
	}
	t, err := s.app.Token(ctx, id)
	if err != nil {
		return Credential{}, fmt.Errorf("git source %s: %w", g.ID, err)
	}
	return Credential{Username: appUsername, Token: t.Token}, nil
}

// appRecheck is how long an installation found to be the owner's (their
// account, or an org they are an active member of) is trusted before it
// is asked again: leaving the org ends the source's use within it.
const appRecheck = 10 * time.Minute

// ErrInstallationNotYours refuses an App source whose installation is no
// longer on the owner's account or one of their organizations.
var ErrInstallationNotYours = errors.New("the GitHub App installation is no longer on your account or an organization you belong to")

func (s *Service) recheckInstallation(ctx context.Context, owner string, id int64) error {
	key := owner + "/" + strconv.FormatInt(id, 10)
	s.appMu.Lock()
	at, ok := s.appChecked[key]
	s.appMu.Unlock()
	if ok && s.now().Sub(at) < appRecheck {
		return nil
	}
	inst, err := s.app.Installation(ctx, id)
	if errors.Is(err, github.ErrNotFound) {
		return fmt.Errorf("installation %d: %w", id, ErrInstallationNotYours)
	}
	if err != nil {
		return fmt.Errorf("look up installation %d: %w", id, err)
	}
	err = s.mayUseInstallation(ctx, owner, inst)
	var fe *sandbox.FieldError
	if errors.As(err, &fe) {
		s.log.WarnContext(ctx, "git source: installation no longer the owner's", "owner_id", owner, "installation_id", id, "account", inst.Account)
		s.appMu.Lock()
		delete(s.appChecked, key)
		s.appMu.Unlock()
		return fmt.Errorf("installation %d on %s: %w", id, inst.Account, ErrInstallationNotYours)
	}
	if err != nil {
		return err
	}
	s.appMu.Lock()
	s.appChecked[key] = s.now()
	s.appMu.Unlock()
	return nil
}
