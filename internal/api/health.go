package api

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"
)

type healthBody struct {
	Status    string            `json:"status" enum:"ok,degraded" doc:"ok when every check passes."`
	Mode      string            `json:"mode"`
	Version   string            `json:"version"`
	UptimeSec int64             `json:"uptimeSeconds"`
	Checks    map[string]string `json:"checks" doc:"Component name to \"ok\" or the error."`
}

type healthOutput struct {
	Body healthBody
}

type configBody struct {
	DashboardURL string            `json:"dashboardUrl"`
	BaseDomain   string            `json:"baseDomain"`
	SSHHost      string            `json:"sshHost"`
	SSHPort      int               `json:"sshPort"`
	AuthMode     string            `json:"authMode" enum:"github,none" doc:"github: log in with GitHub; none: mock mode's single local user."`
	LoginURL     string            `json:"loginUrl,omitempty"`
	AllowedOrg   string            `json:"allowedOrg,omitempty" doc:"With authMode github: members of this GitHub organization may sign in (besides the accounts listed by the operator), so the login page can say who may."`
	URLPatterns  map[string]string `json:"urlPatterns" doc:"The seed's domain table with {id}, {name} and {alias} placeholders."`
	Ports        map[string]int    `json:"ports" doc:"In-guest service ports."`
	MaxSandboxes int               `json:"maxSandboxes"`
}

func (s *Server) checks(ctx context.Context) map[string]string {
	out := map[string]string{}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.d.Store.Ping(ctx); err != nil {
		out["store"] = err.Error()
	} else {
		out["store"] = "ok"
	}
	if s.d.Ready != nil {
		for name, err := range s.d.Ready(ctx) {
			if err != nil {
				out[name] = err.Error()
			} else {
				out[name] = "ok"
			}
		}
	}
	return out
}

// failing lists the checks that did not pass, in name order.
func failing(checks map[string]string) string {
	var names []string
	for name, v := range checks {
		if v != "ok" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + ": " + checks[n]
	}
	return strings.Join(parts, "; ")
}

func (s *Server) registerHealth() {
	huma.Register(s.api, huma.Operation{
		OperationID: "health", Method: http.MethodGet, Path: "/health", Tags: []string{"health"},
		Summary: "Component health", Description: "Always 200; status is degraded when a check fails.",
	}, func(ctx context.Context, _ *struct{}) (*healthOutput, error) {
		checks := s.checks(ctx)
		status := "ok"
		for _, v := range checks {
			if v != "ok" {
				status = "degraded"
			}
		}
		return &healthOutput{Body: healthBody{
			Status: status, Mode: string(s.d.Config.Server.Mode), Version: s.d.Version,
			UptimeSec: int64(time.Since(s.d.Started).Seconds()), Checks: checks,
		}}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "health-live", Method: http.MethodGet, Path: "/health/live", Tags: []string{"health"},
		Summary: "Liveness: the process serves HTTP",
	}, func(ctx context.Context, _ *struct{}) (*struct {
		Body struct {
			Status string `json:"status"`
		}
	}, error) {
		out := &struct {
			Body struct {
				Status string `json:"status"`
			}
		}{}
		out.Body.Status = "ok"
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "health-ready", Method: http.MethodGet, Path: "/health/ready", Tags: []string{"health"},
		Summary:     "Readiness: every component check passes",
		Description: "Checks the store, and in a serving manager the edge, the SSH proxy, the runtime and, when enabled, the npm cache. 503 naming every failing component otherwise.",
		Errors:      []int{http.StatusServiceUnavailable},
	}, func(ctx context.Context, _ *struct{}) (*healthOutput, error) {
		checks := s.checks(ctx)
		if bad := failing(checks); bad != "" {
			return nil, newProblem(http.StatusServiceUnavailable, "unavailable", "not ready: "+bad)
		}
		return &healthOutput{Body: healthBody{
			Status: "ok", Mode: string(s.d.Config.Server.Mode), Version: s.d.Version,
			UptimeSec: int64(time.Since(s.d.Started).Seconds()), Checks: checks,
		}}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "dashboard-config", Method: http.MethodGet, Path: "/config", Tags: []string{"health"},
		Summary: "Dashboard runtime configuration", Description: "What the dashboard needs at run time; no secrets.",
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body configBody }, error) {
		c := s.d.Config
		b := configBody{
			DashboardURL: c.DashboardURL(), BaseDomain: c.Domain.BaseDomain,
			SSHHost: c.Domain.SSH.Hostname, SSHPort: c.Domain.SSH.Port,
			AuthMode: "github", LoginURL: "/auth/github", AllowedOrg: c.Auth.AllowedOrg,
			URLPatterns: c.URLPatterns(), MaxSandboxes: c.Server.MaxSandboxes,
			Ports: map[string]int{
				"vscode": c.Advanced.VM.VSCode.Port, "opencode": c.Advanced.VM.OpenCode.Port,
				"browser": c.Advanced.VM.Browser.Port,
			},
		}
		if c.Server.Mode == "mock" {
			b.AuthMode, b.LoginURL, b.AllowedOrg = "none", "", ""
		}
		return &struct{ Body configBody }{b}, nil
	})
}

func (s *Server) registerAuth() {
	a := s.d.Auth
	s.registerRaw("GET", "/auth/github", true, "Start GitHub login (redirects to GitHub).", a.LoginHandler())
	s.registerRaw("GET", "/auth/callback", true, "GitHub OAuth callback: checks state, sets the session cookie.", a.CallbackHandler())
	s.registerRaw("POST", "/auth/logout", true, "Revoke the session server-side and clear the cookie.", a.LogoutHandler())
	s.registerRaw("GET", "/auth/me", true, "The logged-in user, or 401.", a.MeHandler())
}
