package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/auth"
	"atelier/internal/hoststats"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

type statsBody struct {
	hoststats.Stats
	ActiveSandboxes int            `json:"activeSandboxes" doc:"Sandboxes counted against maxSandboxes (creating, starting, running, stopping)."`
	MaxSandboxes    int            `json:"maxSandboxes"`
	ByStatus        map[string]int `json:"byStatus"`
	UptimeSec       int64          `json:"uptimeSeconds" doc:"Manager uptime."`
}

type tokenView struct {
	store.APIToken
}

type createTokenInput struct {
	Body struct {
		_        struct{} `json:"-" additionalProperties:"false"`
		Name     string   `json:"name" minLength:"1" maxLength:"100" doc:"What the token is for."`
		TTLHours int      `json:"ttlHours,omitempty" minimum:"0" maximum:"87600" doc:"Lifetime in hours; 0 or absent: auth.tokenTtlDays (90 days by default), which is also the longest allowed."`
		NoExpiry bool     `json:"noExpiry,omitempty" doc:"A token that never expires: only when auth.tokenNoExpiry is allow, and never from a token."`
		Scope    string   `json:"scope,omitempty" enum:"read,full,admin" doc:"read: GET and HEAD only, no WebSocket; full (default): everything you may do; admin: also host-wide operations, for admins only."`
	}
}

type createTokenOutput struct {
	Body struct {
		tokenView
		Token string `json:"token" doc:"The secret, shown only in this response."`
	}
}

func (s *Server) registerSystem() {
	var sampler hoststats.Sampler
	huma.Register(s.api, huma.Operation{
		OperationID: "system-stats", Method: http.MethodGet, Path: "/api/system/stats", Tags: []string{"system"},
		Summary: "Host CPU, memory, disk and sandbox counts", Security: securityAuthed,
		Errors: []int{http.StatusUnauthorized},
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body statsBody }, error) {
		st, err := sampler.Read(s.d.Config.Server.DataDir)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		b := statsBody{Stats: st, MaxSandboxes: s.d.Config.Server.MaxSandboxes, ByStatus: map[string]int{},
			UptimeSec: int64(time.Since(s.d.Started).Seconds())}
		for _, status := range store.AllStatuses {
			n, err := s.d.Store.CountSandboxes(ctx, status)
			if err != nil {
				return nil, toProblem(ctx, s.d.Log, err)
			}
			b.ByStatus[string(status)] = n
			if status.IsActive() {
				b.ActiveSandboxes += n
			}
		}
		return &struct{ Body statsBody }{b}, nil
	})
}

func (s *Server) registerSystemConfig() {
	huma.Register(s.api, huma.Operation{
		OperationID: "system-config", Method: http.MethodGet, Path: "/api/system/config", Tags: []string{"system"},
		Summary: "The running manager's effective configuration, secrets redacted (admin)", Security: securityAuthed,
		Description: "What this manager runs with: defaults, then its config file, then its ATELIER_* environment. " +
			"`atelier config show` prints what a shell would load, which differs when the manager was started with other variables (make run). Admin only.",
		Errors: []int{http.StatusUnauthorized, http.StatusForbidden},
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body map[string]any }, error) {
		if err := requireAdmin(ctx, "the configuration"); err != nil {
			return nil, err
		}
		b, err := s.d.Config.Redacted().JSON()
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		var out map[string]any
		if err := json.Unmarshal(b, &out); err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &struct{ Body map[string]any }{out}, nil
	})
}

func (s *Server) registerCleanup() {
	huma.Register(s.api, huma.Operation{
		OperationID: "system-cleanup", Method: http.MethodPost, Path: "/api/system/cleanup", Tags: []string{"system"},
		Summary: "Run the reconciler now (admin)", Security: securityAuthed,
		Description: "Settles sandboxes left mid-operation, marks sandboxes whose runtime died, and removes " +
			"runtimes, links, volumes and leases that belong to no sandbox. Returns what it fixed. Admin only.",
		Errors: []int{http.StatusUnauthorized, http.StatusForbidden},
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body sandbox.Report }, error) {
		if err := requireAdmin(ctx, "cleanup"); err != nil {
			return nil, err
		}
		rep, err := s.d.Sandboxes.Reconcile(ctx, false)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &struct{ Body sandbox.Report }{rep}, nil
	})
}

func (s *Server) registerTokens() {
	tags := []string{"tokens"}
	huma.Register(s.api, huma.Operation{
		OperationID: "list-tokens", Method: http.MethodGet, Path: "/api/tokens", Tags: tags,
		Summary: "List your API tokens (never their secrets)", Security: securityAuthed,
		Errors: []int{http.StatusUnauthorized},
	}, func(ctx context.Context, _ *struct{}) (*struct {
		Body struct {
			Tokens []tokenView `json:"tokens"`
		}
	}, error) {
		list, err := s.d.Auth.ListTokens(ctx, principal(ctx).User.ID)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &struct {
			Body struct {
				Tokens []tokenView `json:"tokens"`
			}
		}{}
		out.Body.Tokens = make([]tokenView, 0, len(list))
		for _, t := range list {
			out.Body.Tokens = append(out.Body.Tokens, tokenView{t})
		}
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "create-token", Method: http.MethodPost, Path: "/api/tokens", Tags: tags,
		Summary: "Create an API token", Security: securityAuthed, DefaultStatus: http.StatusCreated,
		Description: "The secret is returned once; only its SHA-256 is stored. Use it as `Authorization: Bearer <token>`. " +
			"A token never grants more than the credential that creates it: its scope is at most the caller's, and a " +
			"token-made token expires no later than its maker (403 otherwise).",
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden},
	}, func(ctx context.Context, in *createTokenInput) (*createTokenOutput, error) {
		secret, tok, err := s.d.Auth.CreateToken(ctx, principal(ctx), auth.TokenRequest{
			Name: in.Body.Name, TTL: time.Duration(in.Body.TTLHours) * time.Hour,
			NoExpiry: in.Body.NoExpiry, Scope: auth.Scope(in.Body.Scope),
		})
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &createTokenOutput{}
		out.Body.tokenView = tokenView{tok}
		out.Body.Token = secret
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "revoke-token", Method: http.MethodDelete, Path: "/api/tokens/{id}", Tags: tags,
		Summary: "Revoke one of your API tokens", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound},
	}, func(ctx context.Context, in *struct {
		ID string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
	}) (*struct{}, error) {
		if err := s.d.Auth.RevokeToken(ctx, principal(ctx).User.ID, in.ID); err != nil {
			if p, ok := toProblem(ctx, s.d.Log, err).(*Problem); ok && p.Status == http.StatusNotFound {
				p.Detail = "token not found"
				return nil, p
			}
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return nil, nil
	})
}
