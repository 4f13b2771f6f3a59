package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/oauth2"

	"atelier/internal/store"
)

// The connect flow gives Atelier a repo-scoped GitHub token for a user who
// is already logged in, kept as their github git source. It is separate
// from login, whose token reads the profile and org membership only.
const (
	// ConnectPath starts it; ConnectCallbackPath is under the login
	// callback, so GitHub accepts it for the same OAuth app (a redirect_uri
	// may be a subdirectory of the registered callback URL).
	ConnectPath         = "/auth/github/connect"
	ConnectCallbackPath = "/auth/callback/connect"

	connectScopes = "repo read:user read:org"
	// connectStatePrefix marks a connect flow's saved state. Its return_to
	// holds "connect\n<user id>\n<session id>\n<next>": no login state
	// carries it (safeReturnPath refuses a newline), so a state of one flow
	// never completes the other.
	connectStatePrefix = "connect\n"

	connectCookieName       = "atelier_connect_state"
	secureConnectCookieName = "__Host-" + connectCookieName
)

// ConnectSaver keeps the token of a completed connect for userID: login is
// the GitHub account that granted it.
type ConnectSaver func(ctx context.Context, userID, login, token string) error

func (s *Service) connectCookieName() string {
	if s.secure {
		return secureConnectCookieName
	}
	return connectCookieName
}

func (s *Service) connectConfig() *oauth2.Config {
	c := s.oauth
	c.Scopes = strings.Fields(connectScopes)
	c.RedirectURL = s.cfg.DashboardURL() + ConnectCallbackPath
	return &c
}

// connectPrincipal is the logged-in browser user a connect belongs to: a
// dashboard session (or mock mode's local user), never an API token, whose
// holder could not follow GitHub's page anyway.
func connectPrincipal(w http.ResponseWriter, r *http.Request) (Principal, bool) {
	p, ok := PrincipalFrom(r.Context())
	if !ok || (p.Method != MethodCookie && p.Method != MethodMock) {
		writeProblem(w, http.StatusBadRequest, "invalid_input", "connect GitHub from the dashboard, logged in with a browser session")
		return Principal{}, false
	}
	return p, true
}

// ConnectHandler starts the connect flow: GET /auth/github/connect[?next=].
// It runs behind the API's authentication; the state it saves is bound to
// the user and the session, and to the browser by a __Host- cookie.
func (s *Service) ConnectHandler() http.Handler {
	return s.LimitLogin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p, ok := connectPrincipal(w, r)
		if !ok {
			return
		}
		if s.oauth.ClientID == "" || s.oauth.ClientSecret == "" {
			http.Error(w, "GitHub is not configured (auth.github.clientId)", http.StatusServiceUnavailable)
			return
		}
		prefix := connectStatePrefix + p.User.ID + "\n" + p.SessionID + "\n"
		s.startOAuth(w, r, "connect", s.connectConfig(), s.connectCookieName(), func(next string) string { return prefix + next })
	}))
}

// ConnectCallbackHandler completes the connect flow: GET
// /auth/callback/connect, behind the API's authentication. The state must
// be bound to this browser (cookie), be a connect state, and have been
// started by this very user and session; the token must carry repo, and
// belong to the GitHub account the user logged in with.
func (s *Service) ConnectCallbackHandler(save ConnectSaver) http.Handler {
	return s.LimitLogin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		http.SetCookie(w, s.cookie(s.connectCookieName(), "", "/", -1))
		p, ok := connectPrincipal(w, r)
		if !ok {
			return
		}
		q := r.URL.Query()
		state := q.Get("state")
		c, err := r.Cookie(s.connectCookieName())
		if state == "" || err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(stateHash(state))) != 1 {
			s.log.Warn("connect: state missing or not bound to this browser", "user_id", p.User.ID)
			invalidConnectState(w)
			return
		}
		saved, err := s.st.TakeOAuthState(r.Context(), state, s.now())
		if errors.Is(err, store.ErrNotFound) {
			s.log.Warn("connect: unknown, expired or replayed state", "user_id", p.User.ID)
			invalidConnectState(w)
			return
		}
		if err != nil {
			s.log.Error("connect: take oauth state", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		rest, isConnect := strings.CutPrefix(saved.ReturnTo, connectStatePrefix)
		parts := strings.SplitN(rest, "\n", 3)
		if !isConnect || len(parts) != 3 {
			s.log.Warn("connect: a login state at the connect callback", "user_id", p.User.ID)
			invalidConnectState(w)
			return
		}
		if parts[0] != p.User.ID || parts[1] != p.SessionID {
			s.log.Warn("connect: state of another user or session", "user_id", p.User.ID)
			writeProblem(w, http.StatusForbidden, "forbidden", "this GitHub connection was started by another session; start it again")
			return
		}
		back := safeReturnPath(parts[2])
		if e := q.Get("error"); e != "" {
			http.Redirect(w, r, withQuery(back, "github_error", "denied"), http.StatusFound)
			return
		}
		code := q.Get("code")
		if code == "" {
			http.Error(w, "missing code", http.StatusBadRequest)
			return
		}
		login, token, err := s.completeConnect(r.Context(), p.User, code, saved.Verifier)
		if err != nil {
			s.log.Warn("connect: failed", "err", err, "user_id", p.User.ID)
			http.Redirect(w, r, withQuery(back, "github_error", connectErrorCode(err)), http.StatusFound)
			return
		}
		if err := save(r.Context(), p.User.ID, login, token); err != nil {
			s.log.Error("connect: keep token", "err", err, "user_id", p.User.ID)
			http.Redirect(w, r, withQuery(back, "github_error", "failed"), http.StatusFound)
			return
		}
		s.log.Info("connect: github connected", "user_id", p.User.ID, "github_login", login)
		http.Redirect(w, r, withQuery(back, "github", "connected"), http.StatusFound)
	}))
}

var (
	errConnectScope   = errors.New("github granted no repo scope")
	errConnectAccount = errors.New("github account is not the one logged in")
)

func connectErrorCode(err error) string {
	switch {
	case errors.Is(err, errConnectScope):
		return "scope"
	case errors.Is(err, errConnectAccount):
		return "account"
	}
	return "failed"
}

// completeConnect exchanges the code and checks what it bought.
func (s *Service) completeConnect(ctx context.Context, u store.User, code, verifier string) (login, token string, err error) {
	octx := context.WithValue(ctx, oauth2.HTTPClient, s.client)
	tok, err := s.connectConfig().Exchange(octx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		return "", "", fmt.Errorf("exchange code: %w", err)
	}
	scopes, _ := tok.Extra("scope").(string)
	if !slices.Contains(strings.FieldsFunc(scopes, func(r rune) bool { return r == ',' || r == ' ' }), "repo") {
		return "", "", fmt.Errorf("%w (granted %q)", errConnectScope, scopes)
	}
	var gu githubUser
	status, err := s.githubGet(ctx, tok.AccessToken, "/user", &gu)
	if err != nil {
		return "", "", fmt.Errorf("fetch github user: %w", err)
	}
	if status != http.StatusOK || gu.ID == 0 || gu.Login == "" {
		return "", "", fmt.Errorf("fetch github user: status %d", status)
	}
	// A user who logged in with GitHub connects that same account: a
	// second account signed in at GitHub in this browser is refused rather
	// than silently mixed in.
	if u.GitHubID != 0 && u.GitHubID != gu.ID {
		return "", "", fmt.Errorf("%w: logged in as github user %d, granted by %d (%s)", errConnectAccount, u.GitHubID, gu.ID, gu.Login)
	}
	return gu.Login, tok.AccessToken, nil
}

func invalidConnectState(w http.ResponseWriter) {
	http.Error(w, "invalid or expired GitHub connection state; start connecting again", http.StatusBadRequest)
}

// withQuery adds k=v to a local path.
func withQuery(p, k, v string) string {
	u, err := url.Parse(p)
	if err != nil {
		return "/"
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}
