// Package api is the manager's HTTP API: huma operations described by an
// OpenAPI 3.1 document, problem+json errors, and authentication on every route
// but the few public ones listed in publicRoutes.
package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/dashboard"
	"atelier/internal/edge"
	"atelier/internal/events"
	"atelier/internal/image/catalog"
	"atelier/internal/metrics"
	"atelier/internal/registry"
	"atelier/internal/sandbox"
	"atelier/internal/store"
	"atelier/internal/workspace"
)

// Deps are the services the API serves.
type Deps struct {
	Config    *config.Config
	Store     *store.Store
	Sandboxes *sandbox.Service
	Auth      *auth.Service
	Bus       *events.Bus
	Metrics   *metrics.Metrics
	Log       *slog.Logger
	Version   string
	Started   time.Time
	Edge      *edge.Edge
	// Ready reports extra readiness checks (name -> error); nil means none.
	Ready func(ctx context.Context) map[string]error
	// Registry is the shared npm cache; nil answers its routes with 503.
	Registry *registry.Service
	// Host reports the storage pools and the host network (System page);
	// nil reports none.
	Host HostReports
	// Images is the host's image catalog; nil answers its routes with 503.
	Images *catalog.Catalog
	// Workspaces serves /api/workspaces; nil leaves those routes out.
	Workspaces *workspace.Service
	// Prebuilds serves /api/workspaces/{id}/prebuild; nil leaves it out.
	Prebuilds *workspace.Prebuilds
}

// Server holds the mux and the huma API built on it.
type Server struct {
	d   Deps
	mux *http.ServeMux
	api huma.API
	// raw lists the routes served outside huma, for the OpenAPI document and the route audit.
	raw []Route
	// pages counts the web app's routes in raw (public, not API operations).
	pages int
	dash  *dashboard.Handler
	// closing ends long-lived answers (event streams) at shutdown: they
	// would otherwise hold the HTTP server's drain for its whole timeout.
	closing   chan struct{}
	closeOnce sync.Once
	streams   atomic.Int64
}

// Route is one registered method+path and whether it is reachable without credentials.
type Route struct {
	Method string
	Path   string
	Public bool
}

var securityAuthed = []map[string][]string{{"cookie": {}}, {"bearer": {}}}

// publicRoutes are the only routes reachable without credentials.
var publicRoutes = map[string]bool{
	"GET /health":        true,
	"GET /health/live":   true,
	"GET /health/ready":  true,
	"GET /config":        true,
	"GET /auth/github":   true,
	"GET /auth/callback": true,
	"GET /auth/edge":     true,
	"POST /auth/logout":  true,
	"GET /auth/me":       true,
	"GET /openapi.json":  true,
	"GET /openapi.yaml":  true,
	"GET /docs":          true,
	"GET /{$}":           true,
	// and the web app's pages and assets (dashboard.Pages, registerPage).
}

// New builds the API and registers every route.
func New(d Deps) *Server {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Started.IsZero() {
		d.Started = time.Now()
	}
	s := &Server{d: d, mux: http.NewServeMux(), closing: make(chan struct{})}

	cfg := huma.DefaultConfig("Atelier Manager API", d.Version)
	cfg.Components.Schemas = huma.NewMapRegistry("#/components/schemas/", schemaNamer)
	cfg.OpenAPIPath = "/openapi"
	// /docs is the dashboard's bundled Swagger UI (registerDashboard): huma's
	// renderers load their script from a CDN.
	cfg.DocsPath = ""
	// No $schema links in bodies: clients get plain JSON.
	cfg.CreateHooks = nil
	cfg.Info.Description = "Manage sandboxes: isolated Linux environments with VS Code, OpenCode, a browser, a terminal and SSH."
	cfg.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		"cookie": {Type: "apiKey", In: "cookie", Name: auth.CookieName, Description: "Dashboard session (GitHub login); named __Host-atelier_session over HTTPS."},
		"bearer": {Type: "http", Scheme: "bearer", Description: "API token created at /api/tokens."},
	}
	// Every operation that reads a JSON body may answer 415 (see
	// isJSONContentType); say so, as clients generated from the document
	// branch on the listed statuses.
	// Schema violations are 400, never huma's 422 (see huma.NewError in
	// problem.go): the document lists what is answered.
	cfg.OpenAPI.OnAddOperation = append(cfg.OpenAPI.OnAddOperation, func(oapi *huma.OpenAPI, op *huma.Operation) {
		problem := func(status int) *huma.Response {
			return &huma.Response{Description: http.StatusText(status), Content: map[string]*huma.MediaType{"application/problem+json": {
				Schema: oapi.Components.Schemas.Schema(reflect.TypeOf(&Problem{}), true, "")}}}
		}
		if r, ok := op.Responses["422"]; ok {
			delete(op.Responses, "422")
			if op.Responses["400"] == nil {
				r.Description = http.StatusText(http.StatusBadRequest)
				op.Responses["400"] = r
			}
		}
		if op.RequestBody != nil && op.Responses["415"] == nil {
			if op.Responses == nil {
				op.Responses = map[string]*huma.Response{}
			}
			op.Responses["415"] = problem(http.StatusUnsupportedMediaType)
		}
	})
	s.api = humago.New(s.mux, cfg)
	s.api.UseMiddleware(s.authMiddleware)

	s.registerHealth()
	s.registerAuth()
	s.registerSandboxes()
	s.registerEvents()
	s.registerSystem()
	s.registerTokens()
	s.registerCleanup()
	s.registerSystemConfig()
	s.registerSystemHost()
	s.registerAgentProxy()
	s.registerEdge()
	s.registerBrowser()
	s.registerRegistry()
	s.registerSSHKeys()
	s.registerAccount()
	s.registerImages()
	s.registerWorkspaces()
	s.registerConfigFiles()
	s.registerGitSources()
	s.registerRaw("GET", "/metrics", false, "Prometheus metrics.", s.authRaw(d.Metrics.Handler()))
	s.registerDashboard()
	s.mux.HandleFunc("/", s.notFound)
	return s
}

// Handler returns the root handler with request metrics and panic recovery,
// behind the Host and cross-origin guard (guard.go).
func (s *Server) Handler() http.Handler {
	return s.instrument(s.guard(s.mux))
}

// Dashboard is the web app the manager serves.
func (s *Server) Dashboard() *dashboard.Handler { return s.dash }

// PageRoutes is how many of Routes are the web app's pages and assets,
// which the OpenAPI document does not list.
func (s *Server) PageRoutes() int { return s.pages }

// CloseStreams ends every open event stream (clients reconnect and resume
// with Last-Event-ID) and returns how many there were. The manager calls it
// before draining its HTTP servers.
func (s *Server) CloseStreams() int {
	s.closeOnce.Do(func() { close(s.closing) })
	return int(s.streams.Load())
}

// API exposes the huma API (its OpenAPI document in particular).
func (s *Server) API() huma.API { return s.api }

// Routes lists every registered route, huma and raw alike.
func (s *Server) Routes() []Route {
	var out []Route
	for path, item := range s.api.OpenAPI().Paths {
		for method, op := range map[string]*huma.Operation{
			"GET": item.Get, "POST": item.Post, "PUT": item.Put, "PATCH": item.Patch, "DELETE": item.Delete,
		} {
			if op == nil || op.Hidden {
				continue
			}
			out = append(out, Route{Method: method, Path: path, Public: len(op.Security) == 0})
		}
	}
	seen := map[string]bool{}
	for _, r := range out {
		seen[r.Method+" "+r.Path] = true
	}
	for _, r := range s.raw {
		if !seen[r.Method+" "+r.Path] {
			out = append(out, r)
		}
	}
	for _, r := range []Route{{"GET", "/openapi.json", true}, {"GET", "/openapi.yaml", true}, {"GET", "/docs", true}} {
		out = append(out, r)
	}
	return out
}

// registerRaw serves a plain http.Handler and documents it in the OpenAPI document.
func (s *Server) registerRaw(method, path string, public bool, summary string, h http.Handler) {
	s.mux.Handle(method+" "+path, h)
	s.raw = append(s.raw, Route{Method: method, Path: path, Public: public})
	if path == "/{$}" {
		return
	}
	op := &huma.Operation{
		OperationID: "raw-" + method + "-" + path,
		Method:      method,
		Path:        path,
		Summary:     summary,
		Tags:        []string{tagFor(path)},
		Responses:   map[string]*huma.Response{"200": {Description: "OK"}},
	}
	if !public {
		op.Security = securityAuthed
	}
	s.api.OpenAPI().AddOperation(op)
}

func tagFor(path string) string {
	switch {
	case len(path) >= 5 && path[:5] == "/auth":
		return "auth"
	case strings.HasPrefix(path, "/api/sandboxes/"):
		return "sandbox agent"
	case path == "/metrics":
		return "system"
	}
	return "misc"
}

// authMiddleware authenticates every huma operation that declares security.
func (s *Server) authMiddleware(ctx huma.Context, next func(huma.Context)) {
	op := ctx.Operation()
	if op == nil || len(op.Security) == 0 {
		next(ctx)
		return
	}
	r, _ := humago.Unwrap(ctx)
	p, err := s.authenticate(r)
	if err != nil {
		perr := toProblem(r.Context(), s.d.Log, err)
		_ = huma.WriteErr(s.api, ctx, perr.(*Problem).Status, perr.(*Problem).Detail)
		return
	}
	next(huma.WithValue(ctx, principalKey{}, p))
}

// authenticate is the one check in front of every authenticated route, huma
// and raw alike: who the caller is (auth.Authenticate, which also re-checks
// that the user is still allowed in), then whether the credential's scope
// allows this request (a read-scoped token: GET and HEAD only, never an
// upgrade such as a WebSocket terminal).
func (s *Server) authenticate(r *http.Request) (auth.Principal, error) {
	p, err := s.d.Auth.Authenticate(r)
	if err != nil {
		return auth.Principal{}, err
	}
	if !p.Permits(r) {
		return auth.Principal{}, newProblem(http.StatusForbidden, "forbidden",
			"this token is read-only (scope read): it may only GET, HEAD and never open a WebSocket")
	}
	return p, nil
}

// requireAdmin refuses host-wide operations to anyone but an admin: the
// unix socket, mock mode's local user, a user in auth.admins (session or
// admin-scoped token).
func requireAdmin(ctx context.Context, what string) error {
	if principal(ctx).Admin {
		return nil
	}
	return newProblem(http.StatusForbidden, "forbidden",
		what+" acts on the whole host: admins only (auth.admins, or the manager's unix socket)")
}

type principalKey struct{}

func principal(ctx context.Context) auth.Principal {
	if p, ok := ctx.Value(principalKey{}).(auth.Principal); ok {
		return p
	}
	p, _ := auth.PrincipalFrom(ctx)
	return p
}

// authRaw guards a plain handler with the same authentication as huma operations.
func (s *Server) authRaw(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if err != nil {
			writeProblem(w, toProblem(r.Context(), s.d.Log, err).(*Problem))
			return
		}
		h.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	})
}

func writeProblem(w http.ResponseWriter, p *Problem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	writeProblem(w, newProblem(http.StatusNotFound, "not_found", "no route for "+r.Method+" "+r.URL.Path))
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{
		"name":    "Atelier Manager",
		"version": s.d.Version,
		"mode":    string(s.d.Config.Server.Mode),
		"docs":    "/docs",
		"openapi": "/openapi.json",
	})
}

// statusRecorder captures the status code for metrics and logs.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush reaches the connection through writers that only unwrap (Caddy's,
// when the edge serves the dashboard host): event streams must not stall
// behind them.
func (r *statusRecorder) Flush() {
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() {
			if v := recover(); v != nil {
				s.d.Log.ErrorContext(r.Context(), "panic serving request", "panic", v, "path", r.URL.Path)
				if rec.status == 0 {
					writeProblem(rec, newProblem(http.StatusInternalServerError, "internal", "internal error"))
				}
			}
			_, pattern := s.mux.Handler(r)
			if pattern == "" || pattern == "/" {
				pattern = "unmatched"
			}
			s.d.Metrics.ObserveHTTP(pattern, r.Method, strconv.Itoa(rec.status), time.Since(start))
		}()
		next.ServeHTTP(rec, r)
	})
}
