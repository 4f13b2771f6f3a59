package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/oauth2"

	"atelier/internal/store"
)

const maxGitHubBody = 1 << 20

// LoginHandler starts the GitHub login: GET /auth/github[?next=/path]. It is
// reachable without credentials, so what it stores is bounded: next is at
// most MaxNextLen bytes, a state lives oauthStateTTL and at most
// maxPendingLogins are pending, and each address is rate-limited.
func (s *Service) LoginHandler() http.Handler {
	return s.LimitLogin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if s.oauth.ClientID == "" || s.oauth.ClientSecret == "" {
			http.Error(w, "GitHub login is not configured", http.StatusServiceUnavailable)
			return
		}
		s.startOAuth(w, r, "login", &s.oauth, s.stateCookieName(), func(next string) string { return next })
	}))
}

// startOAuth sends the browser to GitHub for a login or a connect (op):
// ?next= at most MaxNextLen bytes and made a local path, then handed to
// returnTo for the stored state; a state lives oauthStateTTL, at most
// maxPendingLogins are pending, and the browser is bound to it by the
// cookie named cookie. PKCE throughout.
func (s *Service) startOAuth(w http.ResponseWriter, r *http.Request, op string, cfg *oauth2.Config, cookie string, returnTo func(next string) string) {
	next := r.URL.Query().Get("next")
	if len(next) > MaxNextLen {
		writeProblem(w, http.StatusBadRequest, "invalid_input",
			fmt.Sprintf("validation failed: query.next: at most %d bytes (got %d)", MaxNextLen, len(next)))
		return
	}
	state, err := randomToken()
	if err != nil {
		s.log.Error(op+": generate state", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	verifier := oauth2.GenerateVerifier()
	now := s.now()
	err = s.st.PutOAuthState(r.Context(), store.OAuthState{
		State:     state,
		Verifier:  verifier,
		ReturnTo:  returnTo(safeReturnPath(next)),
		ExpiresAt: now.Add(oauthStateTTL),
	}, now, maxPendingLogins)
	if errors.Is(err, store.ErrLimit) {
		s.log.Warn(op+": too many logins pending", "err", err)
		w.Header().Set("Retry-After", "60")
		writeProblem(w, http.StatusServiceUnavailable, "unavailable", "too many logins in progress; try again in a minute")
		return
	}
	if err != nil {
		s.log.Error(op+": save oauth state", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, s.cookie(cookie, stateHash(state), "/", int(oauthStateTTL.Seconds())))
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)), http.StatusFound)
}

// stateCookieName is the OAuth state cookie's name: __Host- prefixed over
// HTTPS, so only the dashboard itself can set it, and the only one read.
func (s *Service) stateCookieName() string {
	if s.secure {
		return secureStateCookieName
	}
	return stateCookieName
}

// CallbackHandler completes the GitHub login: GET /auth/callback.
func (s *Service) CallbackHandler() http.Handler {
	return s.LimitLogin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		q := r.URL.Query()
		state := q.Get("state")
		// The state is single-use and browser-bound whatever the outcome.
		http.SetCookie(w, s.cookie(s.stateCookieName(), "", "/", -1))

		// Check the browser binding before touching the store, so a callback
		// replayed in another browser cannot burn the legitimate user's state.
		c, err := r.Cookie(s.stateCookieName())
		if state == "" || err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(stateHash(state))) != 1 {
			s.log.Warn("login: state missing or not bound to this browser")
			invalidState(w)
			return
		}
		saved, err := s.st.TakeOAuthState(r.Context(), state, s.now())
		if errors.Is(err, store.ErrNotFound) {
			s.log.Warn("login: unknown, expired or replayed state")
			invalidState(w)
			return
		}
		if err != nil {
			s.log.Error("login: take oauth state", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		if e := q.Get("error"); e != "" {
			s.log.Info("login: denied at GitHub", "error", e)
			http.Redirect(w, r, "/?login_error=denied", http.StatusFound)
			return
		}
		code := q.Get("code")
		if code == "" {
			http.Error(w, "missing code", http.StatusBadRequest)
			return
		}

		u, err := s.completeLogin(r.Context(), code, saved.Verifier)
		if errors.Is(err, errNotAllowed) {
			http.Redirect(w, r, "/?login_error=unauthorized", http.StatusFound)
			return
		}
		if err != nil {
			s.log.Error("login: failed", "err", err)
			http.Redirect(w, r, "/?login_error=failed", http.StatusFound)
			return
		}
		value, err := s.startSession(r.Context(), u.ID)
		if err != nil {
			s.log.Error("login: start session", "err", err, "user_id", u.ID)
			http.Redirect(w, r, "/?login_error=failed", http.StatusFound)
			return
		}
		http.SetCookie(w, s.sessionCookie(value))
		s.log.Info("login: session started", "user_id", u.ID, "login", u.Login)
		http.Redirect(w, r, safeReturnPath(saved.ReturnTo), http.StatusFound)
	}))
}

func invalidState(w http.ResponseWriter) {
	http.Error(w, "invalid or expired login state; start the login again", http.StatusBadRequest)
}

var errNotAllowed = errors.New("github user not allowed")

type githubUser struct {
	ID        int64  `json:"id"`
	Login     string `json:"login"`
	Name      string `json:"name"`
	AvatarURL string `json:"avatar_url"`
}

// completeLogin exchanges the code, identifies the GitHub user, applies the
// allow-lists and records the user. errNotAllowed means the user is known but
// refused.
func (s *Service) completeLogin(ctx context.Context, code, verifier string) (store.User, error) {
	octx := context.WithValue(ctx, oauth2.HTTPClient, s.client)
	tok, err := s.oauth.Exchange(octx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		return store.User{}, fmt.Errorf("exchange code: %w", err)
	}
	var gu githubUser
	status, err := s.githubGet(ctx, tok.AccessToken, "/user", &gu)
	if err != nil {
		return store.User{}, fmt.Errorf("fetch github user: %w", err)
	}
	if status != http.StatusOK || gu.ID == 0 || gu.Login == "" {
		return store.User{}, fmt.Errorf("fetch github user: status %d", status)
	}
	ok, viaOrg, err := s.allowed(ctx, tok.AccessToken, gu.Login)
	if err != nil {
		return store.User{}, err
	}
	if !ok {
		s.log.Warn("login: github user not allowed", "login", gu.Login)
		return store.User{}, errNotAllowed
	}
	u, err := s.st.UpsertGitHubUser(ctx, store.User{GitHubID: gu.ID, Login: gu.Login, Name: gu.Name, AvatarURL: gu.AvatarURL})
	if err != nil {
		return store.User{}, fmt.Errorf("record github user: %w", err)
	}
	if err := s.recordGrant(ctx, u, tok.AccessToken, viaOrg); err != nil {
		return store.User{}, err
	}
	return u, nil
}

// recordGrant keeps what re-verifying org membership needs: with
// auth.allowedOrg, the user's OAuth token (sealed, bound to the user's id)
// and, when the org admitted them, the time it did. Without an org nothing
// is kept and an older token is forgotten.
func (s *Service) recordGrant(ctx context.Context, u store.User, accessToken string, viaOrg bool) error {
	org := strings.TrimSpace(s.cfg.Auth.AllowedOrg)
	g := store.GitHubGrant{}
	if org != "" {
		box, err := s.secrets()
		if err != nil {
			return fmt.Errorf("keep github token: %w", err)
		}
		if g.SealedToken, err = box.Seal([]byte(accessToken), []byte(u.ID)); err != nil {
			return fmt.Errorf("keep github token: %w", err)
		}
		if viaOrg {
			now := s.now()
			g.Org, g.OrgVerifiedAt = org, &now
		}
	}
	if err := s.st.PutGitHubGrant(ctx, u.ID, g); err != nil {
		return fmt.Errorf("keep github token: %w", err)
	}
	return nil
}

// allowed applies auth.allowedUsers then auth.allowedOrg at login (the same
// rules as Eligible, with the fresh token). Neither set means nobody: an
// empty allow-list must never mean "every GitHub account". viaOrg says the
// org admitted the user.
func (s *Service) allowed(ctx context.Context, accessToken, login string) (ok, viaOrg bool, err error) {
	if s.inAllowList(login) {
		return true, false, nil
	}
	org := strings.TrimSpace(s.cfg.Auth.AllowedOrg)
	if org == "" {
		return false, false, nil
	}
	// 404/403 mean not a member (or the org restricts this app); a pending
	// invitation is not membership either.
	active, err := s.membership(ctx, accessToken, org)
	if errors.Is(err, errTokenRevoked) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	return active, active, nil
}

// githubGet calls the GitHub API; dst is decoded only on 200.
func (s *Service) githubGet(ctx context.Context, accessToken, path string, dst any) (int, error) {
	status, _, err := s.githubGetHeader(ctx, accessToken, path, dst)
	return status, err
}

// githubGetHeader is githubGet that also returns the response headers.
func (s *Service) githubGetHeader(ctx context.Context, accessToken, path string, dst any) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.apiURL+path, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+accessToken)
	req.Header.Set("Accept", "application/vnd.github+json")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxGitHubBody))
		return resp.StatusCode, resp.Header, nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxGitHubBody)).Decode(dst); err != nil {
		return resp.StatusCode, resp.Header, fmt.Errorf("decode %s: %w", path, err)
	}
	return resp.StatusCode, resp.Header, nil
}

// safeReturnPath keeps post-login redirects on the dashboard: a local absolute
// path of at most MaxNextLen bytes only, never "//host" or "/\host"
// (browsers read both as another host). A sandbox host is reached through a
// dashboard path too (/auth/edge?host=...), which checks the host itself.
func safeReturnPath(p string) string {
	if p == "" || len(p) > MaxNextLen || p[0] != '/' || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n\t") {
		return "/"
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "/"
	}
	return p
}

func stateHash(state string) string {
	h := sha256.Sum256([]byte(state))
	return base64.RawURLEncoding.EncodeToString(h[:])
}
