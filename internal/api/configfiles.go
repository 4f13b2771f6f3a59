package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/guestfiles"
	"atelier/internal/sandbox"
)

type configFilesBody struct {
	_     struct{}          `json:"-" additionalProperties:"false"`
	Files []guestfiles.File `json:"files" maxItems:"64" doc:"The whole set: files not listed are removed from it (never from sandboxes)."`
}

type configFilesOutput struct {
	Body struct {
		Files []guestfiles.File `json:"files"`
	}
}

type syncConfigFilesInput struct {
	ID   string `path:"id" pattern:"^[a-z0-9]{12}$" doc:"Sandbox id: 12 characters [a-z0-9]."`
	Body *struct {
		_     struct{} `json:"-" additionalProperties:"false"`
		Force bool     `json:"force,omitempty" doc:"Overwrite files the guest changed since the last push."`
	}
}

type syncConfigFilesOutput struct {
	Body struct {
		Files []sandbox.ConfigFileResult `json:"files"`
	}
}

func (s *Server) configFilesOut(ctx context.Context, workspaceID string) (*configFilesOutput, error) {
	rows, err := s.d.Store.ConfigFiles(ctx, workspaceID)
	if err != nil {
		return nil, toProblem(ctx, s.d.Log, err)
	}
	out := &configFilesOutput{}
	out.Body.Files = guestfiles.ToAPI(rows)
	return out, nil
}

func (s *Server) replaceConfigFiles(ctx context.Context, workspaceID string, files []guestfiles.File) (*configFilesOutput, error) {
	rows, err := guestfiles.Validate(files)
	var fe *guestfiles.FieldError
	if errors.As(err, &fe) {
		return nil, fieldProblem(fe.Field, fe.Message)
	}
	if err != nil {
		return nil, toProblem(ctx, s.d.Log, err)
	}
	if err := s.d.Store.ReplaceConfigFiles(ctx, workspaceID, rows); err != nil {
		if workspaceID != "" {
			return nil, s.workspaceProblem(ctx, err)
		}
		return nil, toProblem(ctx, s.d.Log, err)
	}
	return s.configFilesOut(ctx, workspaceID)
}

func (s *Server) registerConfigFiles() {
	tags := []string{"config-files"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}

	huma.Register(s.api, huma.Operation{
		OperationID: "list-config-files", Method: http.MethodGet, Path: "/api/config-files", Tags: tags,
		Summary: "List the global config files", Security: securityAuthed, Errors: errs,
		Description: "The host-wide config files every sandbox receives at start (a workspace's own are merged over them).",
	}, func(ctx context.Context, _ *struct{}) (*configFilesOutput, error) {
		return s.configFilesOut(ctx, "")
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "put-config-files", Method: http.MethodPut, Path: "/api/config-files", Tags: tags,
		Summary: "Replace the global config files", Security: securityAuthed, Errors: append(errs, http.StatusForbidden),
		Description: "Admins only. Paths are ~/... (the image user's home) or /etc/...; .json files are deep-merged with a " +
			"workspace's file of the same path. Sandboxes receive the change at their next start or sync.",
	}, func(ctx context.Context, in *struct{ Body configFilesBody }) (*configFilesOutput, error) {
		if err := requireAdmin(ctx, "the global config files"); err != nil {
			return nil, err
		}
		return s.replaceConfigFiles(ctx, "", in.Body.Files)
	})

	if s.d.Workspaces != nil {
		huma.Register(s.api, huma.Operation{
			OperationID: "list-workspace-config-files", Method: http.MethodGet, Path: "/api/workspaces/{id}/config-files", Tags: tags,
			Summary: "List a workspace's config files", Security: securityAuthed, Errors: errs,
		}, func(ctx context.Context, in *workspaceIDInput) (*configFilesOutput, error) {
			if _, err := s.workspaceFor(ctx, in.ID, false); err != nil {
				return nil, err
			}
			return s.configFilesOut(ctx, in.ID)
		})

		huma.Register(s.api, huma.Operation{
			OperationID: "put-workspace-config-files", Method: http.MethodPut, Path: "/api/workspaces/{id}/config-files", Tags: tags,
			Summary: "Replace a workspace's config files", Security: securityAuthed, Errors: errs,
			Description: "The workspace's owner only. Laid over the global files: .json objects deep-merged, any other file replaced.",
		}, func(ctx context.Context, in *struct {
			ID   string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
			Body configFilesBody
		}) (*configFilesOutput, error) {
			if _, err := s.workspaceFor(ctx, in.ID, true); err != nil {
				return nil, err
			}
			return s.replaceConfigFiles(ctx, in.ID, in.Body.Files)
		})
	}

	huma.Register(s.api, huma.Operation{
		OperationID: "sync-config-files", Method: http.MethodPost, Path: "/api/sandboxes/{id}/config-files/sync", Tags: tags,
		Summary: "Push config files into a running sandbox", Security: securityAuthed, Errors: append(errs, http.StatusConflict),
		Description: "Writes the merged global and workspace config files as the image user. A file the guest changed since " +
			"the last push is kept (action \"kept\") unless force is set. 409 when the sandbox is not running.",
	}, func(ctx context.Context, in *syncConfigFilesInput) (*syncConfigFilesOutput, error) {
		if _, err := s.managed(ctx, in.ID); err != nil {
			return nil, err
		}
		force := in.Body != nil && in.Body.Force
		res, err := s.d.Sandboxes.SyncConfigFiles(ctx, in.ID, force)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &syncConfigFilesOutput{}
		out.Body.Files = res
		return out, nil
	})
}
