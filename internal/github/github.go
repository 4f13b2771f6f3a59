// Package github is the manager's client of the GitHub REST API for git
// sources: the repositories and branches a token can read, and a GitHub
// App's short-lived installation tokens. Login (package auth) has its own
// calls; both use the configured API base URL (auth.github.apiUrl), so
// GitHub Enterprise and the local stand-in in tests work alike.
package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

const (
	maxBody = 4 << 20
	perPage = 100
	// maxPages bounds one listing (10 000 entries): a token that reads more
	// repositories than that gets the first ones, not an unbounded walk.
	maxPages = 100
)

// ErrUnauthorized means GitHub refused the token (revoked or expired).
var ErrUnauthorized = errors.New("github refused the token")

// ErrForbidden means GitHub answered 403: the token lacks a permission, or
// an organization restricts the app.
var ErrForbidden = errors.New("github forbids this to the token")

// ErrNotFound means GitHub answered 404: no such repository, or one the
// token cannot read (GitHub does not tell them apart).
var ErrNotFound = errors.New("not found on github")

// Client calls one GitHub API base URL.
type Client struct {
	base *url.URL
	http *http.Client
}

// New returns a client of the API at apiURL (https://api.github.com).
func New(apiURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(apiURL, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("github api url %q: must be an http(s) URL", apiURL)
	}
	if hc == nil {
		hc = &http.Client{Timeout: 20 * time.Second}
	}
	return &Client{base: u, http: hc}, nil
}

// Repository is a repository as the workspace form shows it.
type Repository struct {
	FullName      string `json:"fullName" doc:"owner/name"`
	Private       bool   `json:"private"`
	DefaultBranch string `json:"defaultBranch"`
	CloneURL      string `json:"cloneUrl"`
}

// Branch is one branch and the commit it points at.
type Branch struct {
	Name   string `json:"name"`
	Commit string `json:"commit"`
}

type apiRepo struct {
	FullName      string `json:"full_name"`
	Private       bool   `json:"private"`
	DefaultBranch string `json:"default_branch"`
	CloneURL      string `json:"clone_url"`
}

func (r apiRepo) view() Repository {
	return Repository{FullName: r.FullName, Private: r.Private, DefaultBranch: r.DefaultBranch, CloneURL: r.CloneURL}
}

// UserRepos lists the repositories a user's token (OAuth or personal
// access token) can read: GET /user/repos, every page.
func (c *Client) UserRepos(ctx context.Context, token string) ([]Repository, error) {
	var out []Repository
	err := c.pages(ctx, token, "/user/repos?sort=full_name&per_page="+fmt.Sprint(perPage), func(body []byte) (int, error) {
		var page []apiRepo
		if err := json.Unmarshal(body, &page); err != nil {
			return 0, err
		}
		for _, r := range page {
			out = append(out, r.view())
		}
		return len(page), nil
	})
	return out, err
}

// InstallationRepos lists the repositories an installation token reads:
// GET /installation/repositories, every page.
func (c *Client) InstallationRepos(ctx context.Context, token string) ([]Repository, error) {
	var out []Repository
	err := c.pages(ctx, token, "/installation/repositories?per_page="+fmt.Sprint(perPage), func(body []byte) (int, error) {
		var page struct {
			Repositories []apiRepo `json:"repositories"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return 0, err
		}
		for _, r := range page.Repositories {
			out = append(out, r.view())
		}
		return len(page.Repositories), nil
	})
	return out, err
}

var orgName = regexp.MustCompile(`^[A-Za-z0-9-]{1,100}$`)

var repoName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$`)

// ValidRepo reports whether full is an owner/name GitHub accepts.
func ValidRepo(full string) bool {
	owner, name, _ := strings.Cut(full, "/")
	return repoName.MatchString(full) && !strings.Contains(full, "..") && owner != "." && name != "."
}

// Branches lists repo's (owner/name) branches: GET /repos/{o}/{r}/branches.
func (c *Client) Branches(ctx context.Context, token, repo string) ([]Branch, error) {
	if !ValidRepo(repo) {
		return nil, fmt.Errorf("repository %q: must be owner/name", repo)
	}
	var out []Branch
	err := c.pages(ctx, token, "/repos/"+repo+"/branches?per_page="+fmt.Sprint(perPage), func(body []byte) (int, error) {
		var page []struct {
			Name   string `json:"name"`
			Commit struct {
				SHA string `json:"sha"`
			} `json:"commit"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return 0, err
		}
		for _, b := range page {
			out = append(out, Branch{Name: b.Name, Commit: b.Commit.SHA})
		}
		return len(page), nil
	})
	return out, err
}

// pages GETs path and then each Link rel="next", handing every body to
// each. A next link is followed only on the API's own scheme and host, so a
// token never goes anywhere else whatever the answer says.
func (c *Client) pages(ctx context.Context, token, path string, each func([]byte) (int, error)) error {
	next := c.base.String() + path
	for page := 0; next != "" && page < maxPages; page++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, next, nil)
		if err != nil {
			return fmt.Errorf("github: %w", err)
		}
		body, h, err := c.do(req, "Bearer "+token, http.StatusOK)
		if err != nil {
			return err
		}
		if _, err := each(body); err != nil {
			return fmt.Errorf("github: decode %s: %w", req.URL.Path, err)
		}
		next = ""
		if l := nextLink(h.Get("Link")); l != "" {
			u, err := url.Parse(l)
			if err != nil || u.Scheme != c.base.Scheme || !strings.EqualFold(u.Host, c.base.Host) {
				return fmt.Errorf("github: next page %q is not on %s", l, c.base.Host)
			}
			next = u.String()
		}
	}
	return nil
}

// do sends req with the Authorization given and returns the body of a
// want answer; 401 is ErrUnauthorized, 404 ErrNotFound.
func (c *Client) do(req *http.Request, authorization string, want int) ([]byte, http.Header, error) {
	req.Header.Set("Authorization", authorization)
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("github: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, nil, fmt.Errorf("github: read %s: %w", req.URL.Path, err)
	}
	switch resp.StatusCode {
	case want:
		return body, resp.Header, nil
	case http.StatusUnauthorized:
		return nil, nil, fmt.Errorf("github: %s %s: %w", req.Method, req.URL.Path, ErrUnauthorized)
	case http.StatusNotFound:
		return nil, nil, fmt.Errorf("github: %s %s: %w", req.Method, req.URL.Path, ErrNotFound)
	case http.StatusForbidden:
		return nil, nil, fmt.Errorf("github: %s %s: %w", req.Method, req.URL.Path, ErrForbidden)
	}
	return nil, nil, fmt.Errorf("github: %s %s: status %d", req.Method, req.URL.Path, resp.StatusCode)
}

// nextLink returns the rel="next" target of a Link header.
func nextLink(h string) string {
	for part := range strings.SplitSeq(h, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
		if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
			continue
		}
		for p := range strings.SplitSeq(params, ";") {
			if k, v, _ := strings.Cut(strings.TrimSpace(p), "="); k == "rel" && strings.Trim(v, `"`) == "next" {
				return target[1 : len(target)-1]
			}
		}
	}
	return ""
}

// OrgMember reports whether the token's user is an active member of org:
// GET /user/memberships/orgs/{org} (404 and 403: not a member, or the
// org restricts this app; a pending invitation is not membership).
func (c *Client) OrgMember(ctx context.Context, token, org string) (bool, error) {
	if !orgName.MatchString(org) {
		return false, fmt.Errorf("organization %q: not a GitHub login", org)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+"/user/memberships/orgs/"+org, nil)
	if err != nil {
		return false, fmt.Errorf("github: %w", err)
	}
	body, _, err := c.do(req, "Bearer "+token, http.StatusOK)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrForbidden) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var m struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return false, fmt.Errorf("github: decode membership: %w", err)
	}
	return m.State == "active", nil
}
