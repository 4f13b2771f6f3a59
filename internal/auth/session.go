package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"atelier/internal/config"
	"atelier/internal/store"
)

type sessionClaims struct {
	SessionID string `json:"sid"`
	jwt.RegisteredClaims
}

// Authenticate identifies the caller of r. It returns ErrUnauthenticated when
// no usable credential is present or its user is no longer eligible (whose
// sessions are then revoked), ErrForbidden when a cookie-authenticated write
// comes from another origin, ErrUnavailable when eligibility cannot be
// decided now, and a wrapped store error otherwise. The caller also checks
// Principal.Permits: a read-scoped token authenticates for every method.
func (s *Service) Authenticate(r *http.Request) (Principal, error) {
	ctx := r.Context()
	if isTrustedSocket(ctx) {
		u, err := s.ensureLocalUser(ctx)
		if err != nil {
			return Principal{}, err
		}
		return Principal{User: u, Method: MethodSocket, Scope: ScopeAdmin, Admin: true}, nil
	}
	// An Authorization header is an explicit choice of credential: a bad one
	// must not be rescued by an ambient cookie.
	if h := r.Header.Get("Authorization"); h != "" {
		return s.authenticateBearer(ctx, h)
	}
	if c, err := r.Cookie(s.SessionCookieName()); err == nil && c.Value != "" {
		p, err := s.authenticateCookie(ctx, c.Value)
		switch {
		case err == nil:
			if !safeMethod(r.Method) && !s.sameOrigin(r) {
				return Principal{}, ErrForbidden
			}
			return p, nil
		case errors.Is(err, ErrUnauthenticated) && s.mock():
			// A stale cookie (old secret, revoked session) must not lock a
			// developer out of mock mode, where anonymous access is allowed anyway.
		default:
			return Principal{}, err
		}
	}
	if s.mock() {
		u, err := s.ensureLocalUser(ctx)
		if err != nil {
			return Principal{}, err
		}
		// Mock mode is one developer on their own machine: the host's user.
		return Principal{User: u, Method: MethodMock, Scope: ScopeAdmin, Admin: true}, nil
	}
	return Principal{}, ErrUnauthenticated
}

// admit applies eligibility to an authenticated user: a refusal is
// ErrUnauthenticated (the credential no longer works), wrapping why.
func (s *Service) admit(ctx context.Context, u store.User) error {
	err := s.checkUser(ctx, u)
	if errors.Is(err, ErrIneligible) {
		return fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return err
}

func (s *Service) mock() bool { return s.cfg.Server.Mode == config.ModeMock }

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// sameOrigin is the CSRF defence for cookie-authenticated writes: browsers
// always send Origin on cross-origin and same-origin non-GET fetches.
func (s *Service) sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	return s.origin != "" && o != "" && strings.EqualFold(o, s.origin)
}

func (s *Service) authenticateCookie(ctx context.Context, raw string) (Principal, error) {
	claims, err := s.parseJWT(raw)
	if err != nil {
		return Principal{}, ErrUnauthenticated
	}
	sess, err := s.st.GetSession(ctx, claims.SessionID)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, fmt.Errorf("load session: %w", err)
	}
	if !sess.Valid(s.now()) || sess.UserID != claims.Subject {
		return Principal{}, ErrUnauthenticated
	}
	u, err := s.st.GetUser(ctx, sess.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, fmt.Errorf("load session user: %w", err)
	}
	if err := s.admit(ctx, u); err != nil {
		return Principal{}, err
	}
	p := Principal{User: u, Method: MethodCookie, Scope: ScopeFull, SessionID: sess.ID, Admin: s.IsAdmin(u)}
	if p.Admin {
		p.Scope = ScopeAdmin
	}
	return p, nil
}

func (s *Service) parseJWT(raw string) (*sessionClaims, error) {
	if len(s.jwtKey) == 0 {
		return nil, errors.New("jwt secret not configured")
	}
	claims := &sessionClaims{}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(jwtIssuer),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(s.now),
	)
	_, err := p.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		if t.Method != jwt.SigningMethodHS256 {
			return nil, fmt.Errorf("unexpected signing method %q", t.Header["alg"])
		}
		return s.jwtKey, nil
	})
	if err != nil {
		return nil, fmt.Errorf("parse session jwt: %w", err)
	}
	if claims.SessionID == "" || claims.Subject == "" {
		return nil, errors.New("session jwt lacks sid or sub")
	}
	return claims, nil
}

// startSession records a session row and returns the signed cookie value.
func (s *Service) startSession(ctx context.Context, userID string) (string, error) {
	if len(s.jwtKey) == 0 {
		return "", errors.New("start session: jwt secret not configured")
	}
	id, err := randomToken()
	if err != nil {
		return "", fmt.Errorf("start session: %w", err)
	}
	now := s.now()
	exp := now.Add(s.sessionTTL)
	if err := s.st.CreateSession(ctx, store.Session{ID: id, UserID: userID, CreatedAt: now, ExpiresAt: exp}); err != nil {
		return "", fmt.Errorf("start session: %w", err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, sessionClaims{
		SessionID: id,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   userID,
			Issuer:    jwtIssuer,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
	})
	signed, err := tok.SignedString(s.jwtKey)
	if err != nil {
		return "", fmt.Errorf("sign session jwt: %w", err)
	}
	return signed, nil
}

// cookie builds an Atelier cookie. No Domain: host-only on the dashboard, so
// sandbox subdomains (which run untrusted code) never receive it.
func (s *Service) cookie(name, value, path string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     path,
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   s.secure,
		SameSite: http.SameSiteLaxMode,
	}
}

// SessionCookieName is the dashboard session cookie's name: the only one
// read, so an unprefixed cookie planted on the parent domain is ignored.
func (s *Service) SessionCookieName() string {
	if s.secure {
		return SecureCookieName
	}
	return CookieName
}

func (s *Service) sessionCookie(value string) *http.Cookie {
	return s.cookie(s.SessionCookieName(), value, "/", int(s.sessionTTL/time.Second))
}

func (s *Service) clearSessionCookie() *http.Cookie {
	return s.cookie(s.SessionCookieName(), "", "/", -1)
}

func (s *Service) ensureLocalUser(ctx context.Context) (store.User, error) {
	s.localMu.Lock()
	defer s.localMu.Unlock()
	if s.localUser != nil {
		return *s.localUser, nil
	}
	u, err := s.st.EnsureUser(ctx, store.User{ID: LocalUserID, Login: LocalUserID, Name: "Local user"})
	if err != nil {
		return store.User{}, fmt.Errorf("ensure local user: %w", err)
	}
	s.localUser = &u
	return u, nil
}

// Sweep is the periodic housekeeping the server runs every SweepEvery: it
// deletes expired sessions, OAuth states and edge codes and tokens dead for
// deadTokenRetention, and ends the sessions of users no longer eligible (so
// a restart with a shorter allow-list ends idle sessions too, not only the
// ones that come back).
func (s *Service) Sweep(ctx context.Context) error {
	now := s.now()
	var errs []error
	for _, step := range []struct {
		what string
		do   func() (int64, error)
	}{
		{"expired sessions", func() (int64, error) { return s.st.DeleteExpiredSessions(ctx, now) }},
		{"expired oauth states", func() (int64, error) { return s.st.DeleteExpiredOAuthStates(ctx, now) }},
		{"expired edge codes", func() (int64, error) { return s.st.DeleteExpiredEdgeCodes(ctx, now) }},
		{"dead api tokens", func() (int64, error) { return s.st.DeleteDeadAPITokens(ctx, now.Add(-deadTokenRetention)) }},
	} {
		n, err := step.do()
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", step.what, err))
			continue
		}
		if n > 0 {
			s.log.Debug("swept", "what", step.what, "count", n)
		}
	}
	users, err := s.st.UsersWithSessions(ctx, now)
	if err != nil {
		errs = append(errs, fmt.Errorf("sweep sessions of refused users: %w", err))
	}
	for _, u := range users {
		if err := s.checkUser(ctx, u); err != nil && !errors.Is(err, ErrIneligible) {
			s.log.Warn("sweep: eligibility undecided", "user_id", u.ID, "err", err)
		}
	}
	return errors.Join(errs...)
}

// randomToken returns 32 random bytes, base64url without padding.
func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
