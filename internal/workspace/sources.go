package workspace

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"atelier/internal/sandbox"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

// Git source types. A github source is one for github.com whose token is a
// pasted personal access or installation token, the user's connected
// GitHub account (the repo-scoped connect flow) or minted for a GitHub App
// installation (see github.go).
const (
	SourceGeneric = "generic"
	SourceGitHub  = "github"
)

// Source is a git source as shown to its owner: never its token.
type Source struct {
	ID       string `json:"id"`
	Type     string `json:"type" enum:"generic,github"`
	Name     string `json:"name"`
	Host     string `json:"host" doc:"host[:port] whose repositories the token reads over https; http://host[:port] for a plain-HTTP server."`
	Username string `json:"username"`
	HasToken bool   `json:"hasToken"`
	Kind     string `json:"kind" enum:"token,oauth,app" doc:"token: a pasted token; oauth: your connected GitHub account; app: a GitHub App installation whose short-lived tokens the server mints."`
	// GitHubLogin is the connected account of an oauth source.
	GitHubLogin string `json:"githubLogin,omitempty"`
	// InstallationID is the GitHub App installation of an app source.
	InstallationID int64     `json:"installationId,omitempty"`
	CreatedAt      time.Time `json:"createdAt"`
}

// SourceInput creates a git source.
type SourceInput struct {
	Type     string `json:"type,omitempty" enum:"generic,github" doc:"generic (default) or github (host github.com)."`
	Name     string `json:"name" maxLength:"100"`
	URL      string `json:"url,omitempty" maxLength:"2048" doc:"Base URL of the git server, e.g. https://git.example.com; github: omitted."`
	Username string `json:"username,omitempty" maxLength:"200" doc:"Username sent with the token; default x-access-token."`
	Token    string `json:"token,omitempty" maxLength:"4096" doc:"Access token; write-only: never returned, sealed at rest. Empty for a GitHub App installation."`
	// InstallationID makes a github source use the server's GitHub App.
	InstallationID int64 `json:"installationId,omitempty" minimum:"0" doc:"github only: a GitHub App installation (on your account or an organization you belong to) whose tokens the server mints; no token then."`
}

// Branch is one branch of a repository.
type Branch struct {
	Name   string `json:"name"`
	Commit string `json:"commit"`
}

func sourceAAD(id string) []byte { return []byte("git-source\x00" + id) }

func sourceView(g store.GitSource) Source {
	v := Source{ID: g.ID, Type: g.Type, Name: g.Name, Host: g.Host, Username: g.Username, HasToken: len(g.Token) > 0, CreatedAt: g.CreatedAt}
	var detail string
	switch v.Kind, detail = sourceKind(g); v.Kind {
	case KindOAuth:
		v.GitHubLogin, v.Username = detail, detail
	case KindApp:
		v.InstallationID, _ = strconv.ParseInt(detail, 10, 64)
		v.Username, v.HasToken = appUsername, true
	}
	return v
}

// CreateSource validates and stores a git source of owner with its token sealed.
func (s *Service) CreateSource(ctx context.Context, owner string, in SourceInput) (Source, error) {
	name, err := checkName(in.Name)
	if err != nil {
		return Source{}, err
	}
	typ := in.Type
	if typ == "" {
		typ = SourceGeneric
	}
	var host string
	switch typ {
	case SourceGitHub:
		if in.URL != "" {
			return Source{}, fieldErr("url", "is github.com for a github source; use a generic source for another server")
		}
		host = "github.com"
		if in.InstallationID != 0 {
			return s.createAppSource(ctx, owner, name, in)
		}
	case SourceGeneric:
		if in.InstallationID != 0 {
			return Source{}, fieldErr("installationId", "is for github sources only")
		}
		u, err := url.Parse(in.URL)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil {
			return Source{}, fieldErr("url", "must be an https:// URL of the git server, without credentials")
		}
		host = sourceKey(u)
	default:
		return Source{}, fieldErr("type", "must be generic or github")
	}
	if strings.TrimSpace(in.Token) == "" || strings.ContainsAny(in.Token, "\x00\r\n") {
		return Source{}, fieldErr("token", "must be a token on one line")
	}
	user := in.Username
	if user == "" {
		user = "x-access-token"
	}
	if strings.ContainsAny(user, ":\x00\r\n") {
		return Source{}, fieldErr("username", "must be on one line, without a colon")
	}
	g, err := s.st.CreateGitSource(ctx, store.GitSource{OwnerID: owner, Type: typ, Name: name, Host: host, Username: user},
		func(id string) ([]byte, error) { return s.box.Seal([]byte(in.Token), sourceAAD(id)) })
	if err != nil {
		return Source{}, err
	}
	s.log.InfoContext(ctx, "git source created", "source_id", g.ID, "owner_id", owner, "host", host)
	return sourceView(g), nil
}

// Sources lists the owner's git sources.
func (s *Service) Sources(ctx context.Context, owner string) ([]Source, error) {
	list, err := s.st.ListGitSources(ctx, owner)
	if err != nil {
		return nil, err
	}
	out := make([]Source, 0, len(list))
	for _, g := range list {
		out = append(out, sourceView(g))
	}
	return out, nil
}

// DeleteSource removes the owner's git source.
func (s *Service) DeleteSource(ctx context.Context, owner, id string) error {
	return s.st.DeleteGitSource(ctx, owner, id)
}

// sourceKey is what a source's token is for: the host of an https URL, or
// "http://host" for a plain-HTTP server (a private network's), so a token
// given for https is never sent in the clear to the same host over http.
func sourceKey(u *url.URL) string {
	if u.Scheme == "https" {
		return u.Host
	}
	return u.Scheme + "://" + u.Host
}

// ErrSourceHost refuses a token for a host other than its source's.
var ErrSourceHost = errors.New("repository is not on the git source's host")

// Credential opens the token of owner's source id for a repository at key
// (sourceKey of its URL): another user's source is not found, another host
// or scheme is refused, so a token only ever goes to the server it was made
// for, as it was made for.
func (s *Service) Credential(ctx context.Context, owner, id, host string) (Credential, error) {
	g, err := s.st.GetGitSource(ctx, id)
	if err != nil {
		return Credential{}, err
	}
	if g.OwnerID != owner {
		return Credential{}, fmt.Errorf("git source %s: %w", id, store.ErrNotFound)
	}
	if !strings.EqualFold(g.Host, host) {
		return Credential{}, fmt.Errorf("git source %s is for %s, not %s: %w", id, g.Host, host, ErrSourceHost)
	}
	kind, detail := sourceKind(g)
	if kind == KindApp {
		return s.appCredential(ctx, g, detail)
	}
	if len(g.Token) == 0 {
		return Credential{Username: g.Username}, nil
	}
	tok, err := s.box.Open(g.Token, sourceAAD(g.ID))
	if err != nil {
		if errors.Is(err, secretbox.ErrOpen) {
			return Credential{}, fmt.Errorf("git source %s: %w (was %s replaced?)", id, err, secretbox.KeyFile)
		}
		return Credential{}, err
	}
	if kind == KindOAuth {
		return Credential{Username: detail, Token: string(tok)}, nil
	}
	return Credential{Username: g.Username, Token: string(tok)}, nil
}

// gitAuthArgs are git's global options that make a token in the
// environment (ATELIER_GIT_*) its only credential, for one host, with no
// redirect to another and no protocol but http(s).
func gitAuthArgs() []string {
	return []string{"-c", "credential.helper=", "-c", "credential.helper=" + credentialHelper,
		"-c", "http.followRedirects=false", "-c", "protocol.allow=never",
		"-c", "protocol.https.allow=always", "-c", "protocol.http.allow=always"}
}

func credentialEnv(host string, c Credential) map[string]string {
	env := map[string]string{"GIT_TERMINAL_PROMPT": "0", "ATELIER_GIT_HOST": host}
	if c.Token != "" {
		env["ATELIER_GIT_USERNAME"], env["ATELIER_GIT_TOKEN"] = c.Username, c.Token
	}
	return env
}

// Branches lists a repository's branches with git ls-remote on the host:
// argv only, the token in the command's environment alone.
func (s *Service) Branches(ctx context.Context, owner, sourceID, repoURL string) ([]Branch, error) {
	if err := checkRepoURL(repoURL); err != nil {
		return nil, &sandbox.FieldError{Field: "url", Message: err.Error()}
	}
	u, _ := url.Parse(repoURL)
	var cred Credential
	if sourceID != "" {
		var err error
		if cred, err = s.Credential(ctx, owner, sourceID, sourceKey(u)); err != nil {
			return nil, err
		}
	}
	heads, err := LsRemote(ctx, repoURL, "", cred)
	if err != nil {
		return nil, err
	}
	out := make([]Branch, 0, len(heads))
	for name, sha := range heads {
		out = append(out, Branch{Name: name, Commit: sha})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ErrGitServer is a git server that did not list a repository's branches:
// unreachable, or it refused the URL or the token. The caller's request was
// fine; the answer is a bad gateway, not an internal error.
var ErrGitServer = errors.New("the git server is unreachable or refused the request")

// trustEnvKeys are the manager's variables the host's git keeps: which
// certificate authorities it trusts. Without them a git server whose
// certificate comes from a private CA (the operator's GIT_SSL_CAINFO in the
// manager's environment) could be cloned by guests whose image trusts it but
// never checked for staleness or listed on the host. Nothing else of the
// manager's environment reaches git.
var trustEnvKeys = []string{"GIT_SSL_CAINFO", "GIT_SSL_CAPATH"}

func trustEnv() []string {
	var out []string
	for _, k := range trustEnvKeys {
		if v, ok := os.LookupEnv(k); ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// LsRemote returns branch -> commit of repoURL's heads (only branch when
// given), run on the host.
func LsRemote(ctx context.Context, repoURL, branch string, cred Credential) (map[string]string, error) {
	u, err := url.Parse(repoURL)
	if err != nil {
		return nil, fmt.Errorf("ls-remote: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	argv := append(gitAuthArgs(), "ls-remote", "--heads", "--", repoURL)
	if branch != "" {
		argv = append(argv, "refs/heads/"+branch)
	}
	cmd := exec.CommandContext(ctx, "git", argv...)
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=/nonexistent", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"}, trustEnv()...)
	for k, v := range credentialEnv(u.Host, cred) {
		env = append(env, k+"="+v)
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("git ls-remote %s: %w (%w): %s", repoURL, ErrGitServer, err, lastLine(stderr.String()))
	}
	out := map[string]string{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		sha, ref, ok := strings.Cut(sc.Text(), "\t")
		if name, isHead := strings.CutPrefix(ref, "refs/heads/"); ok && isHead {
			out[name] = sha
		}
	}
	return out, nil
}
