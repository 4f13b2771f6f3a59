package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/store"
	"atelier/internal/workspace"
)

type workspaceBody struct {
	_           struct{}               `json:"-" additionalProperties:"false"`
	Name        *string                `json:"name,omitempty" maxLength:"100" doc:"1-100 characters, unique among your workspaces."`
	Config      *workspace.Config      `json:"config,omitempty" doc:"On update, replaces the whole config."`
	SecretEnv   map[string]string      `json:"secretEnv,omitempty" doc:"Secret variables to set (write-only: only names are returned)."`
	SecretFiles []workspace.SecretFile `json:"secretFiles,omitempty" doc:"Secret files to set, by path (write-only: content is never returned)."`
	// DeleteSecrets is on update only.
	DeleteSecrets []string `json:"deleteSecrets,omitempty" doc:"Update only: secret variable names or file paths to remove."`
}

type workspaceIDInput struct {
	ID string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
}

// workspaceFor loads a workspace the caller may see: its owner, or an admin
// (who reads it but may not change it: a workspace's commands run in its
// owner's sandboxes). Anyone else is told it does not exist.
func (s *Server) workspaceFor(ctx context.Context, id string, write bool) (workspace.Workspace, error) {
	w, err := s.d.Workspaces.Get(ctx, id)
	if err != nil {
		return w, s.workspaceProblem(ctx, err)
	}
	p := principal(ctx)
	if w.OwnerID != p.User.ID && (write || !p.Admin) {
		return w, newProblem(http.StatusNotFound, "not_found", "workspace not found")
	}
	return w, nil
}

func (s *Server) workspaceProblem(ctx context.Context, err error) error {
	var inUse *store.InUseError
	switch {
	case errors.As(err, &inUse):
		return newProblem(http.StatusConflict, "conflict", "workspace has sandboxes "+strings.Join(inUse.SandboxIDs, ", ")+": destroy them first")
	case errors.Is(err, store.ErrNotFound):
		return newProblem(http.StatusNotFound, "not_found", "workspace not found")
	case errors.Is(err, store.ErrDuplicate):
		return newProblem(http.StatusConflict, "conflict", "you already have a workspace with this name",
			&huma.ErrorDetail{Location: "body.name", Message: "already used by another of your workspaces"})
	}
	return toProblem(ctx, s.d.Log, err)
}

func (s *Server) registerWorkspaces() {
	if s.d.Workspaces == nil {
		return
	}
	tags := []string{"workspaces"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}

	huma.Register(s.api, huma.Operation{
		OperationID: "list-workspaces", Method: http.MethodGet, Path: "/api/workspaces", Tags: tags,
		Summary: "List workspaces", Security: securityAuthed, Errors: errs,
		Description: "Your workspaces; an admin sees every user's. Secrets are listed by name only.",
	}, func(ctx context.Context, _ *struct{}) (*struct {
		Body struct {
			Workspaces []workspace.Workspace `json:"workspaces"`
		}
	}, error) {
		owner := principal(ctx).User.ID
		if principal(ctx).Admin {
			owner = ""
		}
		list, err := s.d.Workspaces.List(ctx, owner)
		if err != nil {
			return nil, s.workspaceProblem(ctx, err)
		}
		out := &struct {
			Body struct {
				Workspaces []workspace.Workspace `json:"workspaces"`
			}
		}{}
		out.Body.Workspaces = list
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "create-workspace", Method: http.MethodPost, Path: "/api/workspaces", Tags: tags,
		Summary: "Create a workspace", Security: securityAuthed, DefaultStatus: http.StatusCreated,
		Description: "A workspace says what a sandbox clones and how it is set up. Secrets are sealed at rest with the host's " +
			"secrets key and never returned; create a sandbox with its workspaceId to use it.",
		Errors: append(errs, http.StatusConflict),
	}, func(ctx context.Context, in *struct{ Body workspaceBody }) (*struct{ Body workspace.Workspace }, error) {
		b := in.Body
		if b.Name == nil {
			return nil, fieldProblem("name", "is required")
		}
		if len(b.DeleteSecrets) > 0 {
			return nil, fieldProblem("deleteSecrets", "is for updates only")
		}
		var cfg workspace.Config
		if b.Config != nil {
			cfg = *b.Config
		}
		w, err := s.d.Workspaces.Create(ctx, principal(ctx).User.ID, *b.Name, cfg, b.SecretEnv, b.SecretFiles)
		if err != nil {
			return nil, s.workspaceProblem(ctx, err)
		}
		return &struct{ Body workspace.Workspace }{w}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "get-workspace", Method: http.MethodGet, Path: "/api/workspaces/{id}", Tags: tags,
		Summary: "Get a workspace", Security: securityAuthed, Errors: errs,
	}, func(ctx context.Context, in *workspaceIDInput) (*struct{ Body workspace.Workspace }, error) {
		w, err := s.workspaceFor(ctx, in.ID, false)
		if err != nil {
			return nil, err
		}
		return &struct{ Body workspace.Workspace }{w}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "update-workspace", Method: http.MethodPut, Path: "/api/workspaces/{id}", Tags: tags,
		Summary: "Update a workspace", Security: securityAuthed, Errors: append(errs, http.StatusConflict),
		Description: "Fields left out are kept; config, when given, replaces the whole config. Secrets given are set, " +
			"deleteSecrets removed. Sandboxes already created keep what they were provisioned with.",
	}, func(ctx context.Context, in *struct {
		ID   string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
		Body workspaceBody
	}) (*struct{ Body workspace.Workspace }, error) {
		if _, err := s.workspaceFor(ctx, in.ID, true); err != nil {
			return nil, err
		}
		b := in.Body
		w, err := s.d.Workspaces.Update(ctx, in.ID, workspace.Change{Name: b.Name, Config: b.Config,
			SecretEnv: b.SecretEnv, SecretFiles: b.SecretFiles, DeleteSecrets: b.DeleteSecrets})
		if err != nil {
			return nil, s.workspaceProblem(ctx, err)
		}
		return &struct{ Body workspace.Workspace }{w}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "delete-workspace", Method: http.MethodDelete, Path: "/api/workspaces/{id}", Tags: tags,
		Summary: "Delete a workspace", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Description: "Refused (409) while sandboxes of the workspace exist: destroy them first, so none of their " +
			"resources is left behind.",
		Errors: append(errs, http.StatusConflict),
	}, func(ctx context.Context, in *workspaceIDInput) (*struct{}, error) {
		if _, err := s.workspaceFor(ctx, in.ID, true); err != nil {
			return nil, err
		}
		if err := s.d.Workspaces.Delete(ctx, in.ID); err != nil {
			return nil, s.workspaceProblem(ctx, err)
		}
		return nil, nil
	})
}
