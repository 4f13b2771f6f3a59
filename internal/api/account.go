package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/store"
)

// The caller's own account: who they are (GET /api/me, with their quotas and
// what they use of them), their dashboard sessions (list, revoke), and, for
// admins, the users whose sandboxes they see.

type quotaUsage struct {
	Name  string  `json:"name" enum:"quotas.runningPerUser,quotas.sandboxesPerUser,quotas.diskGbPerUser" doc:"The quota's config key."`
	Limit float64 `json:"limit" doc:"The quota, in unit; 0 means unlimited."`
	Used  float64 `json:"used" doc:"What you hold now, in unit."`
	Unit  string  `json:"unit" enum:"sandboxes,GiB"`
}

type meBody struct {
	ID     string       `json:"id"`
	Login  string       `json:"login"`
	Name   string       `json:"name,omitempty"`
	Method string       `json:"method" enum:"cookie,token,socket,mock" doc:"How this request authenticated."`
	Scope  string       `json:"scope" enum:"read,full,admin" doc:"What this credential may do."`
	Admin  bool         `json:"admin" doc:"Host-wide operations allowed: see every user's sandboxes, system, npm cache, cleanup."`
	Quotas []quotaUsage `json:"quotas" doc:"Your per-user quotas and what you use of them."`
}

type sessionView struct {
	ID        string    `json:"id" doc:"A handle for this session (not the session's secret id)."`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt"`
	Current   bool      `json:"current" doc:"The session this request came with."`
}

type userView struct {
	ID    string `json:"id"`
	Login string `json:"login"`
	Name  string `json:"name,omitempty"`
}

// sessionHandle names a session without revealing its id, which (with the
// JWT secret) is what a session cookie carries.
func sessionHandle(id string) string {
	sum := sha256.Sum256([]byte("atelier session handle\x00" + id))
	return hex.EncodeToString(sum[:12])
}

func (s *Server) registerAccount() {
	tags := []string{"account"}
	huma.Register(s.api, huma.Operation{
		OperationID: "me", Method: http.MethodGet, Path: "/api/me", Tags: tags,
		Summary: "Who you are, your role and your quotas", Security: securityAuthed,
		Errors: []int{http.StatusUnauthorized},
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body meBody }, error) {
		p := principal(ctx)
		use, err := s.d.Store.OwnerUsage(ctx, p.User.ID)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		q := s.d.Config.Quotas
		b := meBody{
			ID: p.User.ID, Login: p.User.Login, Name: p.User.Name, Method: string(p.Method), Scope: string(p.Scope), Admin: p.Admin,
			Quotas: []quotaUsage{
				{Name: store.QuotaRunning, Limit: float64(q.RunningPerUser), Used: float64(use.Running), Unit: "sandboxes"},
				{Name: store.QuotaSandboxes, Limit: float64(q.SandboxesPerUser), Used: float64(use.Sandboxes), Unit: "sandboxes"},
				{Name: store.QuotaDisk, Limit: float64(q.DiskGBPerUser), Used: gib(use.DiskBytes), Unit: "GiB"},
			},
		}
		return &struct{ Body meBody }{b}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "list-sessions", Method: http.MethodGet, Path: "/api/sessions", Tags: tags,
		Summary: "Your signed-in dashboard sessions", Security: securityAuthed,
		Errors: []int{http.StatusUnauthorized},
	}, func(ctx context.Context, _ *struct{}) (*struct {
		Body struct {
			Sessions []sessionView `json:"sessions"`
		}
	}, error) {
		p := principal(ctx)
		list, err := s.d.Store.ListUserSessions(ctx, p.User.ID, time.Now())
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &struct {
			Body struct {
				Sessions []sessionView `json:"sessions"`
			}
		}{}
		out.Body.Sessions = make([]sessionView, 0, len(list))
		for _, sess := range list {
			out.Body.Sessions = append(out.Body.Sessions, sessionView{
				ID: sessionHandle(sess.ID), CreatedAt: sess.CreatedAt, ExpiresAt: sess.ExpiresAt,
				Current: p.SessionID != "" && sess.ID == p.SessionID,
			})
		}
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "revoke-session", Method: http.MethodDelete, Path: "/api/sessions/{id}", Tags: tags,
		Summary: "Sign out one of your sessions", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Description: "Revoked server-side: the browser holding it is signed out at its next request. Revoking the current session signs you out.",
		Errors:      []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound},
	}, func(ctx context.Context, in *struct {
		ID string `path:"id" pattern:"^[0-9a-f]{24}$" doc:"The handle GET /api/sessions lists."`
	}) (*struct{}, error) {
		p := principal(ctx)
		list, err := s.d.Store.ListUserSessions(ctx, p.User.ID, time.Now())
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		for _, sess := range list {
			if sessionHandle(sess.ID) != in.ID {
				continue
			}
			if err := s.d.Store.RevokeSession(ctx, sess.ID, time.Now()); err != nil {
				return nil, toProblem(ctx, s.d.Log, err)
			}
			s.d.Log.InfoContext(ctx, "session revoked by its user", "user_id", p.User.ID)
			return nil, nil
		}
		return nil, newProblem(http.StatusNotFound, "not_found", "session not found")
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "list-users", Method: http.MethodGet, Path: "/api/users", Tags: tags,
		Summary: "Every user (admin)", Security: securityAuthed,
		Description: "Ids and logins, so an admin's views of every sandbox can name their owners. Admin only.",
		Errors:      []int{http.StatusUnauthorized, http.StatusForbidden},
	}, func(ctx context.Context, _ *struct{}) (*struct {
		Body struct {
			Users []userView `json:"users"`
		}
	}, error) {
		if err := requireAdmin(ctx, "the user list"); err != nil {
			return nil, err
		}
		list, err := s.d.Store.ListUsers(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &struct {
			Body struct {
				Users []userView `json:"users"`
			}
		}{}
		out.Body.Users = make([]userView, 0, len(list))
		for _, u := range list {
			out.Body.Users = append(out.Body.Users, userView{ID: u.ID, Login: u.Login, Name: u.Name})
		}
		return out, nil
	})
}
