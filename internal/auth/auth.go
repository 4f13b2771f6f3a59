// Package auth decides who is making a request: a dashboard user with a
// session cookie (GitHub OAuth login), a CLI or script with an API token, the
// root-only unix socket, or, in mock mode, the anonymous local user.
//
// Sessions are server-side rows referenced by a signed JWT so logout and
// expiry take effect at once; the cookie is host-only on the dashboard so
// sandbox subdomains never receive it.
package auth

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"atelier/internal/config"
	"atelier/internal/store"
)

// CookieName is the dashboard session cookie on plain HTTP (localhost).
const CookieName = "atelier_session"

// SecureCookieName is the session cookie's name over HTTPS. Browsers refuse
// a __Host- cookie from any response that gives it a Domain, so a page on a
// sandbox host can neither plant a session of its own on the dashboard
// (login fixation) nor shadow the real one with a parent-domain cookie.
const SecureCookieName = "__Host-" + CookieName

// stateCookieName binds an OAuth login to the browser that started it.
const stateCookieName = "atelier_oauth_state"

// LocalUserID is the user behind the unix socket and mock mode's anonymous access.
const LocalUserID = "local"

// Method says how a principal authenticated.
type Method string

const (
	MethodCookie Method = "cookie"
	MethodToken  Method = "token"
	MethodSocket Method = "socket"
	MethodMock   Method = "mock"
)

// Principal is the authenticated caller of one request.
type Principal struct {
	User      store.User
	Method    Method
	SessionID string // set for MethodCookie
	TokenID   string // set for MethodToken
	// Admin is only granted to the root-only unix socket; GitHub users are
	// ordinary users whose access the API layer scopes to what they own.
	Admin bool
}

var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
	// ErrInvalid is matched by *FieldError for bad caller input.
	ErrInvalid = errors.New("invalid input")
)

// FieldError reports an invalid input field; errors.Is(err, ErrInvalid) holds.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string        { return e.Field + ": " + e.Message }
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

const (
	githubScopes      = "read:user read:org"
	oauthStateTTL     = 10 * time.Minute
	defaultSessionTTL = 7 * 24 * time.Hour
	touchInterval     = time.Minute
	jwtIssuer         = "atelier"
)

// Service authenticates requests and serves the login flow.
type Service struct {
	cfg    *config.Config
	st     *store.Store
	client *http.Client
	now    func() time.Time
	log    *slog.Logger

	oauth      oauth2.Config
	apiURL     string
	origin     string // scheme://host[:port] of the dashboard; "" refuses every unsafe cookie request
	secure     bool
	jwtKey     []byte
	sessionTTL time.Duration

	localMu   sync.Mutex
	localUser *store.User
}

// Option customises a Service.
type Option func(*Service)

// WithHTTPClient sets the client used to talk to GitHub.
func WithHTTPClient(c *http.Client) Option { return func(s *Service) { s.client = c } }

// WithClock replaces time.Now (tests move time forward to expire sessions).
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.log = l } }

// New builds the service from the effective configuration.
func New(cfg *config.Config, st *store.Store, opts ...Option) *Service {
	s := &Service{
		cfg:    cfg,
		st:     st,
		client: &http.Client{Timeout: 15 * time.Second},
		now:    time.Now,
		log:    slog.Default(),
		secure: !cfg.IsLocal(),
		jwtKey: []byte(cfg.Auth.JWTSecret),
	}
	for _, o := range opts {
		o(s)
	}
	s.sessionTTL = time.Duration(cfg.Auth.SessionTTLHours) * time.Hour
	if s.sessionTTL <= 0 {
		s.sessionTTL = defaultSessionTTL
	}
	dash := cfg.DashboardURL()
	if u, err := url.Parse(dash); err == nil && u.Scheme != "" && u.Host != "" {
		s.origin = strings.ToLower(u.Scheme + "://" + u.Host)
	} else {
		s.log.Warn("dashboard url unusable as an origin: cookie-authenticated writes will be refused", "dashboard_url", dash)
	}
	web := strings.TrimRight(cfg.Auth.GitHub.WebURL, "/")
	s.apiURL = strings.TrimRight(cfg.Auth.GitHub.APIURL, "/")
	s.oauth = oauth2.Config{
		ClientID:     cfg.Auth.GitHub.ClientID,
		ClientSecret: cfg.Auth.GitHub.ClientSecret,
		Endpoint: oauth2.Endpoint{
			AuthURL:  web + "/login/oauth/authorize",
			TokenURL: web + "/login/oauth/access_token",
			// Fixed style: auto-detection would retry a failed exchange, and
			// a GitHub code is single-use.
			AuthStyle: oauth2.AuthStyleInParams,
		},
		RedirectURL: cfg.OAuthCallbackURL(),
		Scopes:      strings.Fields(githubScopes),
	}
	return s
}

type principalKey struct{}
type trustedSocketKey struct{}

// WithPrincipal stores p in ctx for handlers downstream of the auth middleware.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal stored by WithPrincipal.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// ContextWithTrustedSocket marks a connection accepted on the root-only unix
// socket; only the server's ConnContext for that listener may call it.
func ContextWithTrustedSocket(ctx context.Context) context.Context {
	return context.WithValue(ctx, trustedSocketKey{}, true)
}

func isTrustedSocket(ctx context.Context) bool {
	v, _ := ctx.Value(trustedSocketKey{}).(bool)
	return v
}
