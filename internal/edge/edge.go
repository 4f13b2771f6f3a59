// Package edge is Atelier's HTTP edge: Caddy embedded in the atelier
// process with a static JSON config, routing every sandbox host through
// Atelier's own Caddy modules to the guest's port.
//
// The store's routes table is the source of truth. The edge keeps an
// in-memory copy (a map keyed by host) that the modules read on every
// request; adding or removing a route is a map update, never a Caddy reload,
// and Start rebuilds the whole table from the store, so a manager restart
// loses no route (dev and browser routes included).
//
// Hosts follow the seed: the dashboard host serves the manager API
// in-process; sandbox-{id}, opencode-{id} and browser-{id} go to the ports of
// advanced.vm.*; dev-{name}-{id}, dev-{id} and dev-{name}-{alias}-{id} go to
// the ports declared by ExposeDev. Caddy is process-wide, so one Edge runs
// per process at a time.
package edge

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/certmagic"
	"golang.org/x/time/rate"

	"atelier/internal/agent"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/keylock"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// TLS modes of the edge.
const (
	TLSOff   = "off"   // plain HTTP (localhost base domains)
	TLSFiles = "files" // domain.tls.certPath/keyPath, e.g. a wildcard certificate
	TLSACME  = "acme"  // on-demand certificates for known hosts only
)

// DefaultRetryWindow is how long a request waits for a guest port that does
// not answer yet before the "starting" page.
const DefaultRetryWindow = 2 * time.Second

// HSTS is the Strict-Transport-Security of every HTTPS answer: a year, the
// common floor. Not includeSubDomains: it would reach nothing Atelier serves
// (its hosts are one label each under the base domain), and when the
// dashboard is the operator's apex or base domain it would force HTTPS for a
// year on the operator's other hosts there, which Atelier knows nothing of.
const HSTS = "max-age=31536000"

// shutdownGrace is how long Stop lets requests finish.
const shutdownGrace = 5 * time.Second

// Timeouts bound how long a client may hold a connection of the edge's
// servers without making progress (slowloris and its kin). None bounds a
// transfer that keeps moving: long downloads, long uploads and WebSockets
// (handed over to the proxy's tunnel once upgraded) are unaffected.
type Timeouts struct {
	// ReadHeader bounds the TLS handshake and the request's line and headers.
	ReadHeader time.Duration
	// ReadIdle bounds a pause in the arrival of a request body.
	ReadIdle time.Duration
	// WriteIdle bounds a pause of a client in reading an answer.
	WriteIdle time.Duration
	// Idle bounds a kept-alive connection waiting for its next request.
	Idle time.Duration
}

// DefaultTimeouts are the edge's Timeouts: a browser sends its headers in
// milliseconds, and a minute of silence mid-transfer is a dead client.
var DefaultTimeouts = Timeouts{ReadHeader: 10 * time.Second, ReadIdle: time.Minute, WriteIdle: time.Minute, Idle: 2 * time.Minute}

// Options configure an Edge.
type Options struct {
	Config *config.Config
	Store  *store.Store
	Log    *slog.Logger
	// Dial connects to guests; nil dials from the current network namespace
	// (production: the manager runs where the bridge is).
	Dial DialFunc
	// GuestHost, when set, replaces every guest address: mock mode runs its
	// guests as local processes on 127.0.0.1.
	GuestHost string
	// RetryWindow overrides DefaultRetryWindow.
	RetryWindow time.Duration
	// Timeouts override DefaultTimeouts field by field (tests).
	Timeouts Timeouts
	// Sessions decides whether a host cookie's dashboard session still
	// admits its user; nil builds an auth.Service over Config and Store.
	// The manager passes its own, so every credential asks one function.
	Sessions SessionChecker
	// Now replaces time.Now (tests).
	Now func() time.Time
	// Changed, when set, is called after every route change this edge
	// makes (with the store written): replicas sharing a store announce it
	// so the others' edges Refresh the sandbox.
	Changed func(ctx context.Context, sandboxID string)
}

// Edge is the HTTP edge of one manager.
type Edge struct {
	cfg  *config.Config
	st   *store.Store
	log  *slog.Logger
	dial DialFunc
	now  func() time.Time

	id            string // names this Edge in the Caddy config
	base          string
	dashboardHost string
	dashboardURL  string
	guestHost     string
	tlsMode       string
	secure        bool // cookies need HTTPS
	mock          bool
	cookieName    string
	cookieKey     []byte
	retryWindow   time.Duration
	timeouts      Timeouts

	table  *table
	health *health
	drain  drain
	locks  keylock.Mutex // one route change per sandbox at a time
	// mockPorts serialises exposures in mock mode, where sandboxes share
	// one machine's ports.
	mockPorts sync.Mutex
	sessions  sync.Map // session id -> sessionCheck
	// refusedCerts counts on-demand certificates refused to unknown names.
	refusedCerts atomic.Int64
	// newCerts is domain.tls.maxNewCertsPerHour as a token bucket (nil: no
	// limit); throttledCerts counts the issuances it deferred.
	newCerts       *rate.Limiter
	throttledCerts atomic.Int64
	// refusedCrossOrigin counts writes and upgrades refused by the origin
	// check (crossOriginWrite).
	refusedCrossOrigin atomic.Int64

	sessionCheck SessionChecker
	onChange     func(context.Context, string)
	// services names the service a tool host waits for (SetServices).
	services atomic.Pointer[Services]

	dashboard http.Handler
	mu        sync.Mutex
	running   bool
	cancel    context.CancelFunc
	bg        sync.WaitGroup
}

// ErrBusy is returned by Start while another Edge runs in the process:
// Caddy runs one config per process.
var ErrBusy = errors.New("another edge runs in this process")

// caddyMu guards caddyOwner: Caddy runs one config per process.
var (
	caddyMu    sync.Mutex
	caddyOwner *Edge
)

// New builds an Edge; Start binds its ports.
func New(opts Options) (*Edge, error) {
	cfg := opts.Config
	if cfg == nil || opts.Store == nil {
		return nil, errors.New("new edge: config and store are required")
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	idb := make([]byte, 8)
	if _, err := rand.Read(idb); err != nil {
		return nil, fmt.Errorf("new edge: read random: %w", err)
	}
	e := &Edge{
		cfg: cfg, st: opts.Store, log: log, dial: opts.Dial, now: now,
		id:            hex.EncodeToString(idb),
		base:          normalizeHost(cfg.Domain.BaseDomain),
		dashboardHost: normalizeHost(cfg.Domain.Dashboard),
		dashboardURL:  cfg.DashboardURL(),
		guestHost:     opts.GuestHost,
		mock:          cfg.Server.Mode == config.ModeMock,
		retryWindow:   opts.RetryWindow,
		table:         newTable(),
		health:        newHealth(opts.Dial, now),
		onChange:      opts.Changed,
	}
	if e.retryWindow <= 0 {
		e.retryWindow = DefaultRetryWindow
	}
	e.sessionCheck = opts.Sessions
	if e.sessionCheck == nil {
		e.sessionCheck = auth.New(cfg, opts.Store, auth.WithLogger(log))
	}
	if n := cfg.Domain.TLS.MaxNewCertsPerHour; n > 0 {
		// A full hour's worth at once, then one every hour/n.
		e.newCerts = rate.NewLimiter(rate.Every(time.Hour/time.Duration(n)), n)
	}
	d, o := DefaultTimeouts, opts.Timeouts
	e.timeouts = Timeouts{
		ReadHeader: cmp.Or(o.ReadHeader, d.ReadHeader), ReadIdle: cmp.Or(o.ReadIdle, d.ReadIdle),
		WriteIdle: cmp.Or(o.WriteIdle, d.WriteIdle), Idle: cmp.Or(o.Idle, d.Idle),
	}
	switch {
	case cfg.IsLocal():
		e.tlsMode = TLSOff
	case cfg.Domain.TLS.CertPath != "" && cfg.Domain.TLS.KeyPath != "":
		e.tlsMode = TLSFiles
	case cfg.Domain.TLS.Email != "":
		e.tlsMode = TLSACME
	default:
		// Production validation requires one of the above; mock mode on a
		// real domain without TLS settings serves plain HTTP.
		e.tlsMode = TLSOff
		log.Warn("edge serves plain HTTP: set ATELIER_TLS_EMAIL or ATELIER_TLS_CERT_PATH/KEY_PATH for HTTPS", "base_domain", cfg.Domain.BaseDomain)
	}
	e.secure = e.tlsMode != TLSOff
	if !e.secure && !cfg.IsLocal() {
		// The dashboard is behind this edge, on plain HTTP too.
		e.dashboardURL = "http://" + e.dashboardHost + portSuffix(cfg.Domain.HTTPPort, 80)
	}
	e.cookieName = "atelier_edge"
	if e.secure {
		// __Host- cookies cannot be set with a Domain attribute, so a sibling
		// sandbox cannot plant one on this host.
		e.cookieName = "__Host-atelier_edge"
	}
	if cfg.Auth.JWTSecret == "" {
		return nil, errors.New("new edge: auth.jwtSecret is empty")
	}
	// Derived from the JWT secret: rotating it signs every sandbox host out
	// too, and the key never equals the session key.
	m := hmac.New(sha256.New, []byte(cfg.Auth.JWTSecret))
	m.Write([]byte("atelier edge cookie v1"))
	e.cookieKey = m.Sum(nil)
	return e, nil
}

// TLSMode is off, files or acme.
func (e *Edge) TLSMode() string { return e.tlsMode }

// CookieName is the name of the sandbox hosts' cookie.
func (e *Edge) CookieName() string { return e.cookieName }

// Start rebuilds the routing table from the store and starts Caddy on
// domain.httpPort (and domain.httpsPort when TLS is on), listening on
// server.host. dashboard serves the dashboard host.
func (e *Edge) Start(ctx context.Context, dashboard http.Handler) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return errors.New("start edge: already running")
	}
	e.dashboard = dashboard
	if e.dashboard == nil {
		e.dashboard = http.NotFoundHandler()
	}
	if err := e.Rebuild(ctx); err != nil {
		return fmt.Errorf("start edge: %w", err)
	}
	cfgJSON, err := e.caddyConfig()
	if err != nil {
		return fmt.Errorf("start edge: %w", err)
	}
	if err := os.MkdirAll(e.caddyDir(), 0o700); err != nil {
		return fmt.Errorf("start edge: create caddy dir: %w", err)
	}

	caddyMu.Lock()
	defer caddyMu.Unlock()
	if caddyOwner != nil {
		return fmt.Errorf("start edge: %w", ErrBusy)
	}
	instances.Store(e.id, e)
	// Caddy's default logger writes JSON to stderr until the config's own
	// takes over, and announces the switch through the old one. Buffered,
	// that line and the rest reach the manager's log in its own format.
	_, orig, _ := caddy.BufferedLog()
	if err := caddy.Load(cfgJSON, true); err != nil {
		caddy.UnbufferDefaultLogger(orig)
		instances.Delete(e.id)
		return fmt.Errorf("start edge: load caddy config: %w", err)
	}
	caddyOwner = e
	e.running = true
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel = cancel
	e.health.start(bg, &e.bg)
	if e.tlsMode == TLSACME {
		e.bg.Add(1)
		go func() { defer e.bg.Done(); e.cleanStorage(bg) }()
	}
	e.bg.Add(1)
	go func() { defer e.bg.Done(); e.sweepSessions(bg) }()
	e.log.Info("edge listening", "http", e.listen(e.cfg.Domain.HTTPPort), "https", e.httpsListen(), "tls", e.tlsMode,
		"dashboard", e.dashboardHost, "routes", e.table.len())
	return nil
}

// Stop stops Caddy: it drains requests for up to five seconds, then closes
// what is left (WebSockets included). Sandboxes are not touched.
func (e *Edge) Stop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.running {
		return nil
	}
	e.health.halt()
	e.cancel()
	e.bg.Wait()
	e.health.forgetAll()
	caddyMu.Lock()
	defer caddyMu.Unlock()
	err := caddy.Stop()
	if !e.drain.wait(shutdownGrace + time.Second) {
		e.log.Warn("edge stop: listeners or requests still open after the grace period")
	}
	caddyOwner = nil
	instances.Delete(e.id)
	e.running = false
	if err != nil {
		return fmt.Errorf("stop edge: %w", err)
	}
	e.log.Info("edge stopped")
	return nil
}

// serve is the auth handler's body, in front of reverse_proxy.
func (e *Edge) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.TLS != nil {
		// Every answer over HTTPS, the edge's pages and the dashboard's
		// included; guests' own values are dropped (see caddyConfig).
		w.Header().Set("Strict-Transport-Security", HSTS)
	}
	host := normalizeHost(r.Host)
	if host == e.dashboardHost {
		e.dashboard.ServeHTTP(w, r)
		return nil
	}
	t, ok := e.table.lookup(host)
	if !ok {
		e.page(w, http.StatusNotFound, pageUnknown, host)
		return nil
	}
	if e.guestHost != "" && t.kind != store.RouteDev {
		// Nothing behind it to protect: the page says why, login or not.
		e.page(w, http.StatusNotImplemented, pageMockTool, host)
		return nil
	}
	if r.URL.Path == AuthPath {
		e.exchange(w, r, host)
		return nil
	}
	if !t.public {
		var sibling func(string) bool
		if t.kind == "dev" {
			sibling = func(h string) bool { return e.table.devSibling(t.sandboxID, h) }
		}
		if why := crossOriginWrite(r, e.secure, sibling); why != "" {
			e.refusedCrossOrigin.Add(1)
			e.log.Debug("edge: cross-origin write refused", "sandbox_id", t.sandboxID, "host", host, "method", r.Method, "reason", why)
			e.page(w, http.StatusForbidden, pageCrossOrigin, host)
			return nil
		}
		if !e.authorized(r, host) {
			e.challenge(w, r, host)
			return nil
		}
	}
	if !t.up {
		e.page(w, http.StatusServiceUnavailable, pageStopped, host)
		return nil
	}
	stripCredentials(r.Header)
	ip := t.ip
	if e.guestHost != "" {
		ip = e.guestHost
		// Mock guests share the host's loopback: a route to the edge's own
		// port would proxy to itself forever.
		if t.port == e.cfg.Domain.HTTPPort || t.port == e.cfg.Domain.HTTPSPort {
			e.page(w, http.StatusLoopDetected, pageLoop, host)
			return nil
		}
	}
	addr := dialAddr(ip, t.port)
	if p := e.health.downProbe(addr); p != nil {
		// A service that is off or failed will not come up by waiting.
		if title, msg, refresh, link, text, ok := e.servicePage(r.Context(), t); ok {
			e.render(w, http.StatusServiceUnavailable, title, msg, refresh, link, text)
			return nil
		}
		if !p.await(r.Context(), e.retryWindow) {
			e.starting(w, r, t, host)
			return nil
		}
	}
	caddyhttp.SetVar(r.Context(), dialVar, addr)
	err := next.ServeHTTP(w, r)
	if err != nil && unreachable(err) {
		// Nothing was written: the guest never answered within the retry
		// window, so the browser gets a page that reloads itself, and the
		// next requests get it at once until a probe finds the port open.
		e.health.markDown(t.sandboxID, addr)
		e.starting(w, r, t, host)
		return nil
	}
	return err
}

// unreachable reports a proxy error raised before any byte reached the
// client: the guest refused or did not accept the connection.
func unreachable(err error) bool {
	var de reverseproxy.DialError
	return errors.As(err, &de)
}

// Hooks follow the sandbox lifecycle: a running sandbox gets its service
// routes, a stopped one answers 503, a destroyed one loses every route.
func (e *Edge) Hooks() sandbox.Hooks {
	return sandbox.Hooks{
		OnRunning: func(ctx context.Context, v sandbox.View, _ *agent.Client) error {
			return e.sandboxRunning(ctx, v.ID, v.IPAddress)
		},
		OnStopped: func(ctx context.Context, id string) error {
			e.health.forget(id, e.addrs(id))
			e.table.setSandbox(id, "", false)
			e.log.InfoContext(ctx, "edge routes down", "sandbox_id", id)
			e.changed(ctx, id)
			return nil
		},
		OnDestroyed: func(ctx context.Context, id string) error {
			unlock, err := e.locks.Lock(ctx, id)
			if err != nil {
				return fmt.Errorf("remove routes of %s: %w", id, err)
			}
			defer unlock()
			if err := e.st.DeleteRoutes(ctx, id); err != nil {
				return err
			}
			e.health.forget(id, e.addrs(id))
			e.table.removeSandbox(id)
			e.log.InfoContext(ctx, "edge routes removed", "sandbox_id", id)
			e.changed(ctx, id)
			return nil
		},
	}
}

func (e *Edge) sandboxRunning(ctx context.Context, id, ip string) error {
	unlock, err := e.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("add routes of %s: %w", id, err)
	}
	defer unlock()
	routes := e.serviceRoutes(id)
	if err := e.st.ReplaceRoutes(ctx, id, "", store.ServiceRouteKinds, routes); err != nil {
		return err
	}
	e.table.replace(id, isService, routes)
	e.table.setSandbox(id, ip, true)
	// A restarted guest starts its services afresh: what was known of its
	// ports is stale.
	addrs := e.addrs(id)
	e.health.forget(id, addrs)
	e.health.check(id, addrs)
	e.log.InfoContext(ctx, "edge routes up", "sandbox_id", id, "ip", ip)
	e.changed(ctx, id)
	return nil
}

// addrs are the guest addresses of a sandbox's routes, or of the given
// ports of it, as requests dial them.
func (e *Edge) addrs(id string, only ...int) []string {
	ip, ports := e.table.ports(id)
	if len(only) > 0 {
		ports = only
	}
	if e.guestHost != "" {
		ip = e.guestHost
	}
	if ip == "" {
		return nil
	}
	out := make([]string, 0, len(ports))
	for _, p := range ports {
		out = append(out, dialAddr(ip, p))
	}
	return out
}

func isService(r store.Route) bool { return r.Kind != store.RouteDev }

// ExposeDev routes the hosts of a dev command (replacing its previous
// ones) and returns them. Invalid names, aliases or ports are
// *sandbox.FieldError; a host held by another command is store.ErrDuplicate;
// more dev hosts than domain.maxDevHostsPerSandbox or
// domain.maxDevHostsPerUser allow is a *QuotaError.
func (e *Edge) ExposeDev(ctx context.Context, sandboxID string, d DevExposure) ([]store.Route, error) {
	routes, err := e.devRoutes(sandboxID, d)
	if err != nil {
		return nil, err
	}
	unlock, err := e.locks.Lock(ctx, sandboxID)
	if err != nil {
		return nil, fmt.Errorf("expose %s in %s: %w", d.Name, sandboxID, err)
	}
	defer unlock()
	if e.guestHost != "" {
		// One machine's ports for every mock sandbox: the check and the
		// change happen under one lock, so two exposures cannot both pass.
		e.mockPorts.Lock()
		defer e.mockPorts.Unlock()
		if err := e.mockPortFree(sandboxID, routes); err != nil {
			return nil, err
		}
	}
	lim := store.DevRouteLimits{PerSandbox: e.cfg.Domain.MaxDevHostsPerSandbox, PerUser: e.cfg.Domain.MaxDevHostsPerUser}
	if err := e.st.ReplaceDevRoutes(ctx, sandboxID, d.Name, routes, lim); err != nil {
		var qe *store.DevRouteQuotaError
		if errors.As(err, &qe) {
			return nil, quotaError(sandboxID, qe)
		}
		return nil, err
	}
	e.table.replace(sandboxID, devNamed(d.Name), routes)
	if e.table.isUp(sandboxID) {
		e.health.check(sandboxID, e.addrs(sandboxID, d.Port))
	}
	e.log.InfoContext(ctx, "dev command exposed", "sandbox_id", sandboxID, "name", d.Name, "port", d.Port, "hosts", len(routes), "public", d.Public)
	e.changed(ctx, sandboxID)
	return routes, nil
}

// ErrMockPort refuses, in mock mode, a dev port another sandbox already
// exposes or the manager itself listens on.
var ErrMockPort = errors.New("port not available in mock mode")

// MockPortError says which port is taken and by whom.
type MockPortError struct {
	Port int
	// Holder is the sandbox that exposes it; empty when it is the manager's.
	Holder string
}

func (m *MockPortError) Error() string {
	if m.Holder == "" {
		return fmt.Sprintf("port %d is the manager's own: mock sandboxes are local processes that share this machine's ports; use another port", m.Port)
	}
	return fmt.Sprintf("port %d is already exposed by sandbox %s: mock sandboxes are local processes that share this machine's ports; use another port, or unexpose it there", m.Port, m.Holder)
}

func (m *MockPortError) Is(target error) bool { return target == ErrMockPort }

// MockPortHolder reports, in mock mode, what holds port on this machine for
// sandbox id: the manager (API, edge, SSH proxy ports) or another sandbox's
// exposed dev host. nil when the port is free of both, or not in mock mode.
func (e *Edge) MockPortHolder(id string, port int) error {
	if e.guestHost == "" || port == 0 {
		return nil
	}
	switch port {
	case e.cfg.Server.Port, e.cfg.Domain.HTTPPort, e.cfg.Domain.HTTPSPort, e.cfg.Domain.SSH.Port:
		return &MockPortError{Port: port}
	}
	if holder, ok := e.table.portHolder(port, id); ok {
		return &MockPortError{Port: port, Holder: holder}
	}
	return nil
}

func (e *Edge) mockPortFree(id string, routes []store.Route) error {
	for _, r := range routes {
		if err := e.MockPortHolder(id, r.Port); err != nil {
			return err
		}
	}
	return nil
}

// UnexposeDev removes every host of a dev command; none is success.
func (e *Edge) UnexposeDev(ctx context.Context, sandboxID, name string) error {
	unlock, err := e.locks.Lock(ctx, sandboxID)
	if err != nil {
		return fmt.Errorf("unexpose %s in %s: %w", name, sandboxID, err)
	}
	defer unlock()
	if err := e.st.ReplaceRoutes(ctx, sandboxID, name, []string{store.RouteDev}, nil); err != nil {
		return err
	}
	e.table.replace(sandboxID, devNamed(name), nil)
	e.log.InfoContext(ctx, "dev command unexposed", "sandbox_id", sandboxID, "name", name)
	e.changed(ctx, sandboxID)
	return nil
}

// QuotaError is an exposure refused by a dev host cap: every host is a
// route and, with ACME, a certificate against the CA's quota for the whole
// domain.
type QuotaError struct {
	// Key is the config key of the cap.
	Key string
	// Limit is the cap; Held what the sandbox or user holds; Wanted what
	// the exposure would make.
	Limit, Held, Wanted int
	what                string
}

func (q *QuotaError) Error() string {
	return fmt.Sprintf("too many dev hosts for %s: %d held, this exposure would make %d, the limit is %d (%s); unexpose a dev command first",
		q.what, q.Held, q.Wanted, q.Limit, q.Key)
}

func quotaError(sandboxID string, qe *store.DevRouteQuotaError) *QuotaError {
	q := &QuotaError{Key: "domain.maxDevHostsPerSandbox", Limit: qe.Limit, Held: qe.Held, Wanted: qe.Wanted, what: "sandbox " + sandboxID}
	if qe.Scope == store.QuotaUser {
		q.Key, q.what = "domain.maxDevHostsPerUser", "its owner's sandboxes"
	}
	return q
}

func devNamed(name string) func(store.Route) bool {
	return func(r store.Route) bool { return r.Kind == store.RouteDev && r.Name == name }
}

// Routes lists a sandbox's routes from the store.
func (e *Edge) Routes(ctx context.Context, sandboxID string) ([]store.Route, error) {
	return e.st.ListRoutes(ctx, sandboxID)
}

// URL is the public URL of a host.
func (e *Edge) URL(host string) string { return e.hostURL(host) }

func (e *Edge) hostURL(host string) string {
	if e.secure {
		return "https://" + host + portSuffix(e.cfg.Domain.HTTPSPort, 443)
	}
	return "http://" + host + portSuffix(e.cfg.Domain.HTTPPort, 80)
}

func portSuffix(port, standard int) string {
	if port == standard || port == 0 {
		return ""
	}
	return ":" + strconv.Itoa(port)
}

// hasRun is the statuses in which a sandbox owns its service routes.
var hasRun = []store.Status{store.StatusRunning, store.StatusStopping, store.StatusStopped, store.StatusStarting}

// up is the statuses in which the guest is, or is about to be, reachable.
var up = []store.Status{store.StatusCreating, store.StatusStarting, store.StatusRunning}

// Rebuild replaces the routing table with the store's routes. Sandboxes that
// have run but have no service routes (created before the edge existed, or
// whose ports changed in the config) get them first. Hooks write the store
// before the table and the table lock is held from the routes' read on, so
// a hook racing the rebuild is either read from the store or applied after.
func (e *Edge) Rebuild(ctx context.Context) error {
	sbs, err := e.st.ListSandboxes(ctx, store.SandboxFilter{NoTimings: true})
	if err != nil {
		return fmt.Errorf("rebuild routes: %w", err)
	}
	e.table.mu.Lock()
	defer e.table.mu.Unlock()
	routes, err := e.st.ListRoutes(ctx, "")
	if err != nil {
		return fmt.Errorf("rebuild routes: %w", err)
	}
	have := map[string]bool{}
	for _, r := range routes {
		have[r.Host+"|"+strconv.Itoa(r.Port)] = true
	}
	hosts := map[string]*tableRoute{}
	sandboxes := map[string]*tableSandbox{}
	for _, sb := range sbs {
		ts := &tableSandbox{ip: sb.IP, up: sb.IP != "" && slices.Contains(up, sb.Status), hosts: map[string]struct{}{}}
		if old, ok := e.table.sandboxes[sb.ID]; ok {
			// A lifecycle hook already ran in this process: it is newer than
			// the row (OnRunning runs before the row says running).
			ts.up = old.up
			if old.ip != "" {
				ts.ip = old.ip
			}
		}
		sandboxes[sb.ID] = ts
		if sb.IP == "" || !slices.Contains(hasRun, sb.Status) {
			continue
		}
		svc := e.serviceRoutes(sb.ID)
		missing := false
		for _, r := range svc {
			missing = missing || !have[r.Host+"|"+strconv.Itoa(r.Port)]
		}
		if missing {
			if err := e.st.ReplaceRoutes(ctx, sb.ID, "", store.ServiceRouteKinds, svc); err != nil {
				return fmt.Errorf("rebuild routes: %w", err)
			}
			routes = slices.DeleteFunc(routes, func(r store.Route) bool { return r.SandboxID == sb.ID && isService(r) })
			routes = append(routes, svc...)
		}
	}
	for _, r := range routes {
		ts, ok := sandboxes[r.SandboxID]
		if !ok {
			continue // the foreign key makes this impossible; never route to a missing sandbox
		}
		hosts[r.Host] = &tableRoute{route: r, sb: ts}
		ts.hosts[r.Host] = struct{}{}
	}
	e.table.hosts, e.table.sandboxes = hosts, sandboxes
	return nil
}

// caddyDir holds Caddy's storage (certificates, ACME account, locks).
func (e *Edge) caddyDir() string { return filepath.Join(e.cfg.Server.DataDir, "caddy") }

func (e *Edge) listen(port int) string {
	h := e.cfg.Server.Host
	if h == "0.0.0.0" || h == "::" {
		h = ""
	}
	return net.JoinHostPort(h, strconv.Itoa(port))
}

func (e *Edge) httpsListen() string {
	if e.tlsMode == TLSOff {
		return ""
	}
	return e.listen(e.cfg.Domain.HTTPSPort)
}

// caddyConfig is the whole, static Caddy config: nothing in it depends on
// sandboxes, so it is loaded once.
func (e *Edge) caddyConfig() ([]byte, error) {
	inst := func(extra map[string]any) map[string]any {
		extra["instance"] = e.id
		return extra
	}
	proxy := []map[string]any{
		inst(map[string]any{"handler": "atelier_auth"}),
		{
			"handler":           "reverse_proxy",
			"dynamic_upstreams": inst(map[string]any{"source": "atelier"}),
			"transport":         inst(map[string]any{"protocol": "atelier"}),
			"load_balancing": map[string]any{
				"try_duration": int64(e.retryWindow),
				"try_interval": int64(100 * time.Millisecond),
			},
			// HSTS is the edge's, set before proxying: a guest's own would
			// be a second, conflicting header.
			"headers": map[string]any{"response": map[string]any{"delete": []string{"Strict-Transport-Security"}}},
		},
	}
	noAuto := map[string]any{"disable": true}
	servers := map[string]any{}
	apps := map[string]any{}
	grace := int64(shutdownGrace)
	if e.tlsMode == TLSOff {
		servers["edge_http"] = map[string]any{
			"listen": []string{e.listen(e.cfg.Domain.HTTPPort)}, "routes": []any{map[string]any{"handle": proxy}},
			"automatic_https": noAuto, "protocols": []string{"h1"},
		}
	} else {
		servers["edge_https"] = map[string]any{
			"listen": []string{e.listen(e.cfg.Domain.HTTPSPort)}, "routes": []any{map[string]any{"handle": proxy}},
			"tls_connection_policies": []any{map[string]any{}},
			"automatic_https":         noAuto, "protocols": []string{"h1", "h2"},
		}
		// Port 80 answers ACME HTTP challenges (Caddy does that before any
		// route) and redirects everything else to HTTPS.
		servers["edge_http"] = map[string]any{
			"listen": []string{e.listen(e.cfg.Domain.HTTPPort)},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler": "static_response", "status_code": http.StatusPermanentRedirect,
				"headers": map[string]any{"Location": []string{"https://{http.request.host}" + portSuffix(e.cfg.Domain.HTTPSPort, 443) + "{http.request.uri}"}},
			}}}},
			"automatic_https": noAuto, "protocols": []string{"h1"},
		}
	}
	for _, srv := range servers {
		m := srv.(map[string]any)
		m["listener_wrappers"] = []any{inst(map[string]any{"wrapper": "atelier"})}
		// Stated rather than left to Caddy's defaults (a minute for headers,
		// five for idle connections), which are looser and may change.
		m["read_header_timeout"] = int64(e.timeouts.ReadHeader)
		m["read_idle_timeout"] = int64(e.timeouts.ReadIdle)
		m["write_idle_timeout"] = int64(e.timeouts.WriteIdle)
		m["idle_timeout"] = int64(e.timeouts.Idle)
	}
	apps["http"] = map[string]any{
		"http_port": e.cfg.Domain.HTTPPort, "https_port": e.cfg.Domain.HTTPSPort,
		"grace_period": grace, "servers": servers,
	}
	// Storage cleaning is Atelier's own (cleanStorage): Caddy's would write an
	// instance id under $HOME.
	tlsApp := map[string]any{"disable_storage_clean": true}
	switch e.tlsMode {
	case TLSFiles:
		tlsApp["certificates"] = map[string]any{"load_files": []any{map[string]any{
			"certificate": e.cfg.Domain.TLS.CertPath, "key": e.cfg.Domain.TLS.KeyPath,
		}}}
	case TLSACME:
		tlsApp["automation"] = map[string]any{
			"policies": []any{map[string]any{
				"issuers":   []any{map[string]any{"module": "acme", "email": e.cfg.Domain.TLS.Email}},
				"on_demand": true,
			}},
			"on_demand": map[string]any{"permission": inst(map[string]any{"module": "atelier"})},
		}
	}
	apps["tls"] = tlsApp
	root := map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": e.caddyDir()},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"writer": inst(map[string]any{"output": "atelier"}), "level": "INFO",
		}}},
		"apps": apps,
	}
	b, err := json.Marshal(root)
	if err != nil {
		return nil, fmt.Errorf("caddy config: %w", err)
	}
	return b, nil
}

// cleanStorage removes expired certificates and OCSP staples daily.
func (e *Edge) cleanStorage(ctx context.Context) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		err := certmagic.CleanStorage(ctx, &certmagic.FileStorage{Path: e.caddyDir()}, certmagic.CleanStorageOptions{
			Logger: caddy.Log().Named("clean_storage"), InstanceID: "atelier", Interval: 12 * time.Hour, OCSPStaples: true,
			ExpiredCerts: true, ExpiredCertGracePeriod: 14 * 24 * time.Hour,
		})
		if err != nil && ctx.Err() == nil {
			e.log.Warn("edge: clean certificate storage", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweepSessions forgets session checks that are stale, so the cache holds
// only sessions seen in the last minutes.
func (e *Edge) sweepSessions(ctx context.Context) {
	t := time.NewTicker(10 * sessionRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := e.now()
		e.sessions.Range(func(k, v any) bool {
			if now.Sub(v.(sessionCheck).at) >= sessionRecheck {
				e.sessions.Delete(k)
			}
			return true
		})
	}
}
