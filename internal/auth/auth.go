// Package auth decides who is making a request: a dashboard user with a
// session cookie (GitHub OAuth login), a CLI or script with an API token, the
// root-only unix socket, or, in mock mode, the anonymous local user.
//
// Every credential resolves to one Principal (user, method, scope, admin),
// and every authentication, whatever the credential (session cookie, API
// token, the edge's host cookie, an SSH key), asks the one eligibility
// function, Eligible, whether the user may still use Atelier: removing a user
// from the allow-list or the org ends their access at the next request.
//
// Sessions are server-side rows referenced by a signed JWT so logout and
// expiry take effect at once; the cookie is host-only on the dashboard so
// sandbox subdomains never receive it.
package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"atelier/internal/config"
	"atelier/internal/keylock"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

// CookieName is the dashboard session cookie on plain HTTP (localhost).
const CookieName = "atelier_session"

// SecureCookieName is the session cookie's name over HTTPS. Browsers refuse
// a __Host- cookie from any response that gives it a Domain, so a page on a
// sandbox host can neither plant a session of its own on the dashboard
// (login fixation) nor shadow the real one with a parent-domain cookie.
const SecureCookieName = "__Host-" + CookieName

// stateCookieName binds an OAuth login to the browser that started it, on
// plain HTTP (localhost). Over HTTPS the name is secureStateCookieName: a
// page on any sandbox host could set an unprefixed cookie on the parent
// domain and so complete its own login in the victim's browser (login CSRF).
const stateCookieName = "atelier_oauth_state"

// secureStateCookieName is the state cookie's name over HTTPS: browsers only
// accept it from the dashboard itself (host-only, Secure, Path=/).
const secureStateCookieName = "__Host-" + stateCookieName

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

// Scope bounds what a credential may do. Sessions are full (admin for an
// admin); tokens carry the scope they were created with.
type Scope string

const (
	// ScopeRead allows GET and HEAD only, and no upgrade (WebSocket terminal,
	// exec stream): it can look, never change or run anything.
	ScopeRead Scope = "read"
	// ScopeFull allows everything the user may do.
	ScopeFull Scope = "full"
	// ScopeAdmin is full plus host-wide operations, for an admin's token.
	ScopeAdmin Scope = "admin"
)

func (s Scope) rank() int {
	switch s {
	case ScopeRead:
		return 1
	case ScopeFull:
		return 2
	case ScopeAdmin:
		return 3
	}
	return 0
}

// ParseScope validates a scope name; "" is ScopeFull.
func ParseScope(v string) (Scope, bool) {
	if v == "" {
		return ScopeFull, true
	}
	s := Scope(v)
	return s, s.rank() > 0
}

// Principal is the authenticated caller of one request.
type Principal struct {
	User      store.User
	Method    Method
	Scope     Scope
	SessionID string // set for MethodCookie
	TokenID   string // set for MethodToken
	// TokenExpiresAt is the token's expiry (nil: never); a token cannot mint
	// one that outlives it.
	TokenExpiresAt *time.Time `json:",omitempty"`
	// Admin grants host-wide operations: the unix socket, mock mode's local
	// user, and users named in auth.admins (through a session, or a token
	// of scope admin).
	Admin bool
}

// Permits reports whether the principal's scope allows request r: a read
// scope allows only GET and HEAD without an upgrade. The API checks it for
// every route.
func (p Principal) Permits(r *http.Request) bool {
	if p.Scope.rank() >= ScopeFull.rank() {
		return true
	}
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.Header.Get("Upgrade") == "" && !headerHasToken(r.Header, "Connection", "upgrade")
}

// grantable is the broadest scope this principal may give a new token.
func (p Principal) grantable() Scope {
	if p.Admin {
		return ScopeAdmin
	}
	if p.Scope == ScopeRead {
		return ScopeRead
	}
	return ScopeFull
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
	// ErrIneligible is wrapped by Eligible when the user may no longer use
	// Atelier (left the allow-list or the org): their sessions are ended.
	ErrIneligible = errors.New("not allowed to use atelier")
	// ErrUnavailable means eligibility could not be decided (GitHub
	// unreachable past the grace period): the request is refused, nothing
	// is revoked.
	ErrUnavailable = errors.New("cannot verify access now")
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

	// MaxNextLen caps the return path an unauthenticated login stores.
	MaxNextLen = 2048
	// maxPendingLogins caps the OAuth states pending at once, whoever
	// started them: at most about 25 MB, whatever a botnet does.
	maxPendingLogins = 10000
	// The login endpoints (/auth/github, /auth/callback, /auth/edge) share
	// one bucket per client address: 20 at once, then one every 3 s.
	loginEvery      = 3 * time.Second
	loginBurst      = 20
	maxLimiterAddrs = 10000
	// orgGrace is how long past auth.orgRecheckMinutes a confirmed
	// membership is still trusted while GitHub cannot be reached.
	orgGrace = time.Hour
	// deadTokenRetention keeps expired and revoked tokens listed this long
	// before the sweep deletes them.
	deadTokenRetention = 7 * 24 * time.Hour
	// SweepEvery is how often the server runs Sweep.
	SweepEvery = 5 * time.Minute
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

	box      *secretbox.Box // given by WithSecrets
	boxOnce  sync.Once
	lazyBox  *secretbox.Box // else loaded once from {dataDir}
	boxErr   error
	orgLocks keylock.Mutex // one membership check per user at a time
	limiter  *limiter      // login endpoints, per client address
}

// Option customises a Service.
type Option func(*Service)

// WithHTTPClient sets the client used to talk to GitHub.
func WithHTTPClient(c *http.Client) Option { return func(s *Service) { s.client = c } }

// WithClock replaces time.Now (tests move time forward to expire sessions).
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.log = l } }

// WithSecrets sets the box that seals stored GitHub tokens; without it the
// service opens {dataDir}/secrets.key when it first needs it.
func WithSecrets(b *secretbox.Box) Option { return func(s *Service) { s.box = b } }

// WithLoginRate replaces the login endpoints' per-address rate: every is the
// refill interval, burst the bucket size.
func WithLoginRate(every time.Duration, burst int) Option {
	return func(s *Service) { s.limiter = newLimiter(every, burst, maxLimiterAddrs) }
}

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
	s.limiter = newLimiter(loginEvery, loginBurst, maxLimiterAddrs)
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

// secrets returns the box sealing stored GitHub tokens.
func (s *Service) secrets() (*secretbox.Box, error) {
	if s.box != nil {
		return s.box, nil
	}
	s.boxOnce.Do(func() {
		s.lazyBox, s.boxErr = secretbox.LoadOrCreate(filepath.Join(s.cfg.Server.DataDir, secretbox.KeyFile))
	})
	if s.boxErr != nil {
		return nil, fmt.Errorf("secrets key: %w", s.boxErr)
	}
	return s.lazyBox, nil
}
