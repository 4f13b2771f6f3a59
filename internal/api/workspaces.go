package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/auth"
	"atelier/internal/github"
	"atelier/internal/sandbox"
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
	case errors.Is(err, store.ErrBusy):
		return newProblem(http.StatusConflict, "conflict", "a prebuild of this workspace is running: wait for it or cancel it")
	case errors.Is(err, store.ErrNotFound):
		return newProblem(http.StatusNotFound, "not_found", "workspace not found")
	case errors.Is(err, workspace.ErrGitServer):
		s.d.Log.InfoContext(ctx, "ls-remote failed", "err", err)
		return newProblem(http.StatusBadGateway, "git_failed", "the git server did not list the branches (unreachable, or a wrong URL or token); nothing was changed")
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
		del := s.d.Workspaces.Delete
		if s.d.Prebuilds != nil {
			del = s.d.Prebuilds.DeleteWorkspace
		}
		if err := del(ctx, in.ID); err != nil {
			return nil, s.workspaceProblem(ctx, err)
		}
		return nil, nil
	})
	s.registerPrebuilds()
}

func (s *Server) registerPrebuilds() {
	if s.d.Prebuilds == nil {
		return
	}
	tags := []string{"workspaces"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}
	type out struct{ Body store.Prebuild }
	reg := func(id, method, path, summary, desc string, status int, fn func(ctx context.Context, wsID string) (store.Prebuild, error), more ...int) {
		huma.Register(s.api, huma.Operation{
			OperationID: id, Method: method, Path: path, Tags: tags, Summary: summary, Description: desc,
			Security: securityAuthed, DefaultStatus: status, Errors: append(append(errs, http.StatusConflict), more...),
		}, func(ctx context.Context, in *workspaceIDInput) (*out, error) {
			if _, err := s.workspaceFor(ctx, in.ID, method != http.MethodGet); err != nil {
				return nil, err
			}
			pb, err := fn(ctx, in.ID)
			if errors.Is(err, store.ErrBusy) {
				return nil, newProblem(http.StatusConflict, "conflict", "a prebuild of this workspace is running: wait for it or cancel it")
			}
			if err != nil {
				return nil, s.workspaceProblem(ctx, err)
			}
			return &out{pb}, nil
		})
	}
	reg("get-prebuild", http.MethodGet, "/api/workspaces/{id}/prebuild", "Get a workspace's prebuild",
		"Status of the latest build (with its log) and whether a ready prebuild exists, with the commits it holds.", 0, s.d.Prebuilds.Status)
	reg("start-prebuild", http.MethodPost, "/api/workspaces/{id}/prebuild", "Build a workspace's prebuild",
		"A sandbox of the workspace clones its repositories and runs its init commands, without any secret, is "+
			"stopped, and its disk becomes the prebuild new sandboxes of the workspace start from. The previous "+
			"prebuild is used until the new one is saved, and kept if the build fails. 409 while a build runs.",
		http.StatusAccepted, s.d.Prebuilds.Start)
	reg("cancel-prebuild", http.MethodPost, "/api/workspaces/{id}/prebuild/cancel", "Cancel a running prebuild",
		"The build sandbox is destroyed; the ready prebuild, if any, stays.", 0, s.d.Prebuilds.Cancel)
	reg("check-prebuild", http.MethodPost, "/api/workspaces/{id}/prebuild/check", "Check whether the prebuild is stale",
		"git ls-remote of each tracked branch against the prebuild's commits (the manager also does this every "+
			"30 minutes); a moved branch starts a rebuild. 502 when a git server does not answer (the prebuild is unchanged).",
		0, func(ctx context.Context, id string) (store.Prebuild, error) {
			if _, err := s.d.Prebuilds.Check(ctx, id); err != nil {
				return store.Prebuild{}, err
			}
			return s.d.Prebuilds.Status(ctx, id)
		}, http.StatusBadGateway)
	huma.Register(s.api, huma.Operation{
		OperationID: "promote-sandbox", Method: http.MethodPost, Path: "/api/sandboxes/{id}/promote", Tags: []string{"sandboxes"},
		Summary: "Save a sandbox's disk as its workspace's prebuild", Security: securityAuthed,
		Description: "For a running sandbox of a workspace, by the owner of both. Its repositories' commits are read, it is stopped " +
			"(so its disk is consistent), its disk saved as prebuild-{workspaceId}, and it is started again. The previous " +
			"prebuild is replaced only once the new one is complete. 409 while a build runs or when the sandbox is not " +
			"running; 400 for a sandbox without a workspace.",
		Errors: append(errs, http.StatusConflict),
	}, func(ctx context.Context, in *sandboxIDInput) (*out, error) {
		sb, err := s.owned(ctx, in.ID)
		if err != nil {
			return nil, err
		}
		if sb.WorkspaceID == "" {
			return nil, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: path.id: sandbox "+sb.ID+" has no workspace; only a workspace's sandbox can become its prebuild",
				&huma.ErrorDetail{Location: "path.id", Message: "sandbox has no workspace", Value: sb.ID})
		}
		// The caller must own the workspace too: the prebuild is what every
		// sandbox of the workspace starts from.
		if _, err := s.workspaceFor(ctx, sb.WorkspaceID, true); err != nil {
			return nil, err
		}
		pb, err := s.d.Prebuilds.Promote(ctx, sb.WorkspaceID, sb.ID)
		if errors.Is(err, workspace.ErrNotRunning) {
			return nil, newProblem(http.StatusConflict, "conflict", workspace.ErrNotRunning.Error())
		}
		if errors.Is(err, store.ErrBusy) {
			return nil, newProblem(http.StatusConflict, "conflict", "a prebuild of this workspace is running: wait for it or cancel it")
		}
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &out{pb}, nil
	})
	huma.Register(s.api, huma.Operation{
		OperationID: "delete-prebuild", Method: http.MethodDelete, Path: "/api/workspaces/{id}/prebuild", Tags: tags,
		Summary: "Delete a workspace's prebuild", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Description: "New sandboxes then clone and set up from the image. Sandboxes made from it are unaffected.",
		Errors:      append(errs, http.StatusConflict),
	}, func(ctx context.Context, in *workspaceIDInput) (*struct{}, error) {
		if _, err := s.workspaceFor(ctx, in.ID, true); err != nil {
			return nil, err
		}
		if err := s.d.Prebuilds.Delete(ctx, in.ID); errors.Is(err, store.ErrBusy) {
			return nil, newProblem(http.StatusConflict, "conflict", "a prebuild of this workspace is running: cancel it first")
		} else if err != nil {
			return nil, s.workspaceProblem(ctx, err)
		}
		return nil, nil
	})
}

func (s *Server) registerGitSources() {
	if s.d.Workspaces == nil {
		return
	}
	tags := []string{"git sources"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}
	type sourceList struct {
		Body struct {
			Sources []workspace.Source `json:"sources"`
		}
	}

	huma.Register(s.api, huma.Operation{
		OperationID: "list-git-sources", Method: http.MethodGet, Path: "/api/git-sources", Tags: tags,
		Summary: "List your git sources", Security: securityAuthed, Errors: errs,
		Description: "Tokens are never returned: hasToken says whether one is kept.",
	}, func(ctx context.Context, _ *struct{}) (*sourceList, error) {
		list, err := s.d.Workspaces.Sources(ctx, principal(ctx).User.ID)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &sourceList{}
		out.Body.Sources = list
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "create-git-source", Method: http.MethodPost, Path: "/api/git-sources", Tags: tags,
		Summary: "Add a git source", Security: securityAuthed, DefaultStatus: http.StatusCreated,
		Description: "The token is sealed at rest and only ever sent to the source's host: by git on this host (branches) " +
			"and, through the clone's environment, by git in your own sandboxes. It is never written into a sandbox's " +
			"files, git config or remote URLs.",
		Errors: append(errs, http.StatusConflict),
	}, func(ctx context.Context, in *struct{ Body workspace.SourceInput }) (*struct{ Body workspace.Source }, error) {
		src, err := s.d.Workspaces.CreateSource(ctx, principal(ctx).User.ID, in.Body)
		if errors.Is(err, store.ErrDuplicate) {
			return nil, newProblem(http.StatusConflict, "conflict", "you already have a git source with this name",
				&huma.ErrorDetail{Location: "body.name", Message: "already used by another of your git sources"})
		}
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &struct{ Body workspace.Source }{src}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "delete-git-source", Method: http.MethodDelete, Path: "/api/git-sources/{id}", Tags: tags,
		Summary: "Delete a git source", Security: securityAuthed, DefaultStatus: http.StatusNoContent, Errors: errs,
	}, func(ctx context.Context, in *workspaceIDInput) (*struct{}, error) {
		if err := s.d.Workspaces.DeleteSource(ctx, principal(ctx).User.ID, in.ID); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, newProblem(http.StatusNotFound, "not_found", "git source not found")
			}
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return nil, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "list-git-repos", Method: http.MethodGet, Path: "/api/git-sources/{id}/repos", Tags: tags,
		Summary: "List the repositories a github source reads", Security: securityAuthed, Errors: append(errs, http.StatusBadGateway),
		Description: "Asks the GitHub API with the source's token (all pages): your repositories and those you collaborate " +
			"on for a pasted or connected token, the installation's for a GitHub App source. Generic sources have no listing.",
	}, func(ctx context.Context, in *struct {
		ID string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
	}) (*struct {
		Body struct {
			Repos []github.Repository `json:"repos"`
		}
	}, error) {
		list, err := s.d.Workspaces.Repos(ctx, principal(ctx).User.ID, in.ID)
		if err != nil {
			return nil, s.gitSourceProblem(ctx, err, "path.id")
		}
		out := &struct {
			Body struct {
				Repos []github.Repository `json:"repos"`
			}
		}{}
		out.Body.Repos = list
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "list-git-branches", Method: http.MethodGet, Path: "/api/git-sources/{id}/branches", Tags: tags,
		Summary: "List a repository's branches", Security: securityAuthed, Errors: append(errs, http.StatusBadGateway),
		Description: "With `repo` (owner/name, github sources): the GitHub API with the source's token. With `url`: git " +
			"ls-remote on the host with the source's token (in git's environment only); the repository must be on the " +
			"source's host. Use the id `public` with a `url` that needs no token.",
	}, func(ctx context.Context, in *struct {
		ID   string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
		URL  string `query:"url" maxLength:"2048" doc:"The repository's URL (git ls-remote)."`
		Repo string `query:"repo" maxLength:"201" doc:"owner/name of a repository on GitHub (github sources)."`
	}) (*struct {
		Body struct {
			Branches []workspace.Branch `json:"branches"`
		}
	}, error) {
		var (
			list  []workspace.Branch
			err   error
			field = "query.url"
			owner = principal(ctx).User.ID
		)
		switch {
		case (in.URL == "") == (in.Repo == ""):
			return nil, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: repo: give either repo (owner/name) or url",
				&huma.ErrorDetail{Location: "query.repo", Message: "give either repo (owner/name) or url"})
		case in.Repo != "":
			field = "query.repo"
			if in.ID == "public" {
				return nil, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: repo: needs a github source; use url with public",
					&huma.ErrorDetail{Location: "query.repo", Message: "needs a github source; use url with public"})
			}
			list, err = s.d.Workspaces.RepoBranches(ctx, owner, in.ID, in.Repo)
		default:
			src := in.ID
			if src == "public" {
				src = ""
			}
			list, err = s.d.Workspaces.Branches(ctx, owner, src, in.URL)
		}
		if err != nil {
			return nil, s.gitSourceProblem(ctx, err, field)
		}
		out := &struct {
			Body struct {
				Branches []workspace.Branch `json:"branches"`
			}
		}{}
		out.Body.Branches = list
		return out, nil
	})

	save := func(ctx context.Context, userID, login, token string) error {
		_, err := s.d.Workspaces.ConnectGitHub(ctx, userID, login, token)
		return err
	}
	s.registerRaw("GET", auth.ConnectPath, false, "Connect your GitHub account with the repo scope (redirects to GitHub); "+
		"the token becomes your github git source, sealed at rest and never returned.", s.authRaw(s.d.Auth.ConnectHandler()))
	s.registerRaw("GET", auth.ConnectCallbackPath, false, "GitHub's redirect back from connecting: checks the state against "+
		"this browser and session, keeps the token.", s.authRaw(s.d.Auth.ConnectCallbackHandler(save)))
}

// gitSourceProblem maps a listing's error: field names the input a
// validation error is about when it names none of its own.
func (s *Server) gitSourceProblem(ctx context.Context, err error, field string) error {
	var fe *sandbox.FieldError
	switch {
	case errors.As(err, &fe):
		loc := field
		switch fe.Field {
		case "id":
			loc = "path.id"
		case "repo":
			loc = "query.repo"
		case "url":
			loc = "query.url"
		}
		return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: "+fe.Field+": "+fe.Message,
			&huma.ErrorDetail{Location: loc, Message: fe.Message})
	case errors.Is(err, store.ErrNotFound):
		return newProblem(http.StatusNotFound, "not_found", "git source not found")
	case errors.Is(err, workspace.ErrSourceHost):
		return newProblem(http.StatusBadRequest, "invalid_input", err.Error(),
			&huma.ErrorDetail{Location: "query.url", Message: "not on the git source's host"})
	case errors.Is(err, workspace.ErrInstallationNotYours):
		return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: id: "+workspace.ErrInstallationNotYours.Error(),
			&huma.ErrorDetail{Location: "path.id", Message: workspace.ErrInstallationNotYours.Error()})
	case errors.Is(err, github.ErrNotFound):
		return newProblem(http.StatusNotFound, "not_found", "repository not found on GitHub, or the source cannot read it")
	case errors.Is(err, github.ErrUnauthorized):
		return newProblem(http.StatusBadGateway, "github_refused", "GitHub refused the source's token: connect GitHub again or replace the token")
	}
	s.d.Log.InfoContext(ctx, "git listing failed", "err", err)
	return newProblem(http.StatusBadGateway, "git_failed", "the git server or GitHub did not answer the listing (wrong URL or token?)")
}
