package api

import (
	"errors"
	"net/http"
	"net/http/httputil"
	"strings"

	"atelier/internal/auth"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// agentRoutes are the guest agent's routes the manager exposes under
// /api/sandboxes/{id}. Each is authenticated and checked for ownership here,
// then proxied over the sandbox's pooled agent transport.
var agentRoutes = []struct{ method, path, summary string }{
	{"GET", "/health", "The sandbox agent's health."},
	{"GET", "/metrics", "CPU, memory and disk inside the sandbox."},
	{"POST", "/exec", "Run a command (argv or shell) with env, cwd, user, timeout and output caps."},
	{"GET", "/exec/stream", "Run a command and stream its output (WebSocket)."},
	{"GET", "/files", "Read a file."},
	{"PUT", "/files", "Write a file atomically."},
	{"DELETE", "/files", "Delete a file or directory."},
	{"GET", "/files/list", "List a directory."},
	{"GET", "/files/stat", "Stat a path."},
	{"POST", "/files/mkdir", "Create a directory."},
	{"POST", "/files/write-batch", "Write several files."},
	{"POST", "/files/delete-batch", "Delete several files."},
	{"POST", "/git/status", "Git status of repositories."},
	{"POST", "/git/diff", "Git diff statistics of repositories."},
	{"POST", "/git/commit", "Commit in a repository."},
	{"POST", "/git/push", "Push a repository."},
	{"GET", "/services", "List services."},
	{"GET", "/services/{name}", "One service's status."},
	{"POST", "/services/{name}/start", "Start a service."},
	{"POST", "/services/{name}/stop", "Stop a service (process group, with grace)."},
	{"POST", "/services/{name}/restart", "Restart a service."},
	{"GET", "/services/{name}/logs", "A service's logs by offset."},
	{"GET", "/dev", "List dev commands."},
	{"GET", "/dev/{name}", "One dev command's status and port."},
	{"POST", "/dev/{name}/start", "Start a dev command."},
	{"POST", "/dev/{name}/stop", "Stop a dev command."},
	{"POST", "/dev/{name}/restart", "Restart a dev command."},
	{"GET", "/dev/{name}/logs", "A dev command's logs by offset."},
	{"GET", "/terminals", "List terminal sessions."},
	{"POST", "/terminals", "Create a terminal session (PTY)."},
	{"DELETE", "/terminals/{tid}", "Close a terminal session."},
	{"POST", "/terminals/{tid}/resize", "Resize a terminal."},
	{"GET", "/terminals/{tid}/attach", "Attach to a terminal (WebSocket; replays recent output first)."},
}

// strippedHeaders never reach a sandbox: its code must not see a login.
var strippedHeaders = []string{"Cookie", "Authorization", "Origin", "Referer", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"}

func (s *Server) registerAgentProxy() {
	h := s.authRaw(http.HandlerFunc(s.proxyToAgent))
	for _, r := range agentRoutes {
		s.registerRaw(r.method, "/api/sandboxes/{id}"+r.path, false, r.summary, h)
	}
}

func (s *Server) proxyToAgent(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	if !ids.ValidSandboxID(id) {
		writeProblem(w, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: path.id: expected 12 characters [a-z0-9]"))
		return
	}
	for _, name := range []string{"name", "tid"} {
		if v := r.PathValue(name); v != "" && !ids.ValidDNSLabel(v) && !validTerminalID(v) {
			writeProblem(w, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: path."+name+": invalid"))
			return
		}
	}
	p, _ := auth.PrincipalFrom(ctx)
	// A WebSocket upgrade is a GET, so the cookie's Origin check for unsafe
	// methods does not cover it; a terminal must not open from another site.
	if p.Method == auth.MethodCookie && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		r.Header.Get("Origin") != s.d.Config.DashboardURL() {
		writeProblem(w, newProblem(http.StatusForbidden, "forbidden", "websocket origin not allowed"))
		return
	}
	if _, err := s.owned(ctx, id); err != nil {
		writeProblem(w, err.(*Problem))
		return
	}
	c, err := s.d.Sandboxes.Agent(ctx, id)
	if err != nil {
		if errors.Is(err, sandbox.ErrNoAgent) {
			writeProblem(w, newProblem(http.StatusServiceUnavailable, "unavailable", err.Error()))
			return
		}
		writeProblem(w, toProblem(ctx, s.d.Log, err).(*Problem))
		return
	}
	target := strings.TrimPrefix(r.URL.Path, "/api/sandboxes/"+id)
	rp := &httputil.ReverseProxy{
		Transport: c.HTTPClient().Transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "http", "agent", "agent"
			pr.Out.URL.Path, pr.Out.URL.RawPath = target, ""
			for _, h := range strippedHeaders {
				pr.Out.Header.Del(h)
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.d.Log.WarnContext(r.Context(), "agent request failed", "sandbox_id", id, "path", target, "err", err)
			writeProblem(w, newProblem(http.StatusBadGateway, "unavailable", "sandbox agent unreachable"))
		},
		FlushInterval: -1,
	}
	rp.ServeHTTP(w, r)
}

func validTerminalID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
