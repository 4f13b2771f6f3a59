package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

const idPattern = "^[a-z0-9]{12}$"

type sandboxIDInput struct {
	ID string `path:"id" pattern:"^[a-z0-9]{12}$" doc:"Sandbox id: 12 characters [a-z0-9]."`
}

type sandboxOutput struct {
	Body sandbox.View
}

type createSandboxInput struct {
	// A string, not a bool: huma would apply a bool default over an explicit false.
	Wait string `query:"wait" enum:"true,false" default:"true" doc:"Wait until the sandbox is running (201) or failed; false answers 202 at once."`
	// A pointer: the body is optional, every field has a default.
	Body *createSandboxBody
}

type createSandboxBody struct {
	_           struct{} `json:"-" additionalProperties:"false"`
	Image       string   `json:"image,omitempty" pattern:"^[a-z0-9][a-z0-9._-]{0,62}$" doc:"Image id; defaults to sandbox.defaultImage."`
	Vcpus       int      `json:"vcpus,omitempty" doc:"Virtual CPUs; defaults to sandbox.defaultVcpus."`
	MemoryMB    int      `json:"memoryMb,omitempty" doc:"Memory in MiB; defaults to sandbox.defaultMemoryMb."`
	Name        string   `json:"name,omitempty" pattern:"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" doc:"Optional DNS-label name, unique per owner."`
	WorkspaceID string   `json:"workspaceId,omitempty" pattern:"^[a-z0-9]{12}$" doc:"Optional workspace id."`
}

// TransformSchema sets the resource bounds from the config's constants, the
// ones config validation and the lifecycle service use too: struct tags
// cannot name a constant, and a second copy of the numbers would drift.
func (createSandboxBody) TransformSchema(_ huma.Registry, s *huma.Schema) *huma.Schema {
	bound := func(name string, lo, hi int) {
		p := s.Properties[name]
		if p == nil {
			return
		}
		p.Minimum, p.Maximum = new(float64(lo)), new(float64(hi))
		p.Description += fmt.Sprintf(" Between %d and %d.", lo, hi)
		p.PrecomputeMessages()
	}
	bound("vcpus", config.MinVcpus, config.MaxVcpus)
	bound("memoryMb", config.MinMemoryMB, config.MaxMemoryMB)
	return s
}

type createSandboxOutput struct {
	Status   int    `json:"-"`
	Location string `header:"Location"`
	Body     sandbox.View
}

type listSandboxesInput struct {
	Status string `query:"status" enum:"creating,running,stopping,stopped,starting,error,destroying" doc:"Only sandboxes in this status."`
	Name   string `query:"name" pattern:"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" doc:"Only sandboxes with this name: at most one of your own (names are unique per owner); an admin may see one per user. Clients resolve names to ids with it."`
}

type listSandboxesOutput struct {
	LastEventID string `header:"Last-Event-ID" doc:"The newest event at the time of this list: GET /api/events?since= it misses no later change."`
	Body        struct {
		Sandboxes []sandbox.View `json:"sandboxes"`
	}
}

// Who may do what with a sandbox:
//   - its owner: everything;
//   - an admin (auth.admins, mock mode's local user): see it (get, list,
//     events, routes) and manage its lifecycle (stop, start, restart,
//     destroy), as host-wide operations;
//   - inside it (exec, files, git, terminals, services, dev commands, the
//     dev hosts it exposes, its login-protected hosts): its owner only, or
//     root on the host through the unix socket. An admin role on the
//     dashboard is not a key to other users' code and data.
// Anyone else is told the sandbox does not exist, so ids cannot be probed.

// managed loads a sandbox the caller may see and manage: its owner or an admin.
func (s *Server) managed(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.d.Sandboxes.Get(ctx, id)
	if err != nil {
		return sb, toProblem(ctx, s.d.Log, err)
	}
	if p := principal(ctx); !p.Admin && sb.OwnerID != p.User.ID {
		return sb, toProblem(ctx, s.d.Log, store.ErrNotFound)
	}
	return sb, nil
}

// owned loads a sandbox the caller may act inside: its owner, or the unix socket.
func (s *Server) owned(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.d.Sandboxes.Get(ctx, id)
	if err != nil {
		return sb, toProblem(ctx, s.d.Log, err)
	}
	if p := principal(ctx); sb.OwnerID != p.User.ID && p.Method != auth.MethodSocket {
		return sb, toProblem(ctx, s.d.Log, store.ErrNotFound)
	}
	return sb, nil
}

func (s *Server) registerSandboxes() {
	tags := []string{"sandboxes"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}

	huma.Register(s.api, huma.Operation{
		OperationID: "list-sandboxes", Method: http.MethodGet, Path: "/api/sandboxes", Tags: tags,
		Summary: "List sandboxes", Security: securityAuthed, Errors: errs,
		Description: "Your sandboxes; an admin sees every user's. Phase timings are left out of the list; get one sandbox for them.",
	}, func(ctx context.Context, in *listSandboxesInput) (*listSandboxesOutput, error) {
		f := store.SandboxFilter{Status: store.Status(in.Status), Name: in.Name, NoTimings: true}
		if p := principal(ctx); !p.Admin {
			f.OwnerID = p.User.ID
		}
		// Read before the list: a change after it has a later event.
		last, err := s.d.Store.LatestEventID(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		list, err := s.d.Sandboxes.List(ctx, f)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &listSandboxesOutput{LastEventID: strconv.FormatInt(last, 10)}
		out.Body.Sandboxes = make([]sandbox.View, 0, len(list))
		for _, sb := range list {
			out.Body.Sandboxes = append(out.Body.Sandboxes, s.d.Sandboxes.View(sb))
		}
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "create-sandbox", Method: http.MethodPost, Path: "/api/sandboxes", Tags: tags,
		Summary: "Create a sandbox", Security: securityAuthed, DefaultStatus: http.StatusCreated,
		Description: "Reserves a slot under server.maxSandboxes and the caller's quotas atomically (429 sandbox_limit or quota_exceeded past them), then boots through the spawn queue. 503 when this manager may not boot sandboxes now (a cluster found not to enforce NetworkPolicies).",
		Errors:      append(errs, http.StatusConflict, http.StatusTooManyRequests, http.StatusServiceUnavailable),
	}, func(ctx context.Context, in *createSandboxInput) (*createSandboxOutput, error) {
		body := in.Body
		if body == nil {
			body = &createSandboxBody{}
		}
		req := sandbox.CreateRequest{
			OwnerID: principal(ctx).User.ID, Name: body.Name, Image: body.Image,
			WorkspaceID: body.WorkspaceID, Vcpus: body.Vcpus, MemoryMB: body.MemoryMB,
		}
		sb, err := s.d.Sandboxes.Create(ctx, req)
		if errors.Is(err, store.ErrDuplicate) && body.Name != "" {
			return nil, newProblem(http.StatusConflict, "conflict", "you already have a sandbox named "+strconv.Quote(body.Name),
				&huma.ErrorDetail{Location: "body.name", Message: "already used by another of your sandboxes", Value: body.Name})
		}
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		status := http.StatusAccepted
		if in.Wait != "false" {
			if sb, err = s.d.Sandboxes.Wait(ctx, sb.ID); err != nil {
				return nil, toProblem(ctx, s.d.Log, err)
			}
			status = http.StatusCreated
		}
		return &createSandboxOutput{Status: status, Location: "/api/sandboxes/" + sb.ID, Body: s.d.Sandboxes.View(sb)}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "get-sandbox", Method: http.MethodGet, Path: "/api/sandboxes/{id}", Tags: tags,
		Summary: "Get a sandbox", Security: securityAuthed, Errors: errs,
	}, func(ctx context.Context, in *sandboxIDInput) (*sandboxOutput, error) {
		sb, err := s.managed(ctx, in.ID)
		if err != nil {
			return nil, err
		}
		return &sandboxOutput{Body: s.d.Sandboxes.ViewFresh(ctx, sb)}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "delete-sandbox", Method: http.MethodDelete, Path: "/api/sandboxes/{id}", Tags: tags,
		Summary: "Destroy a sandbox", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Description: "Releases every resource in the seed's cleanup order; each step is journaled and idempotent.",
		Errors:      append(errs, http.StatusConflict),
	}, func(ctx context.Context, in *sandboxIDInput) (*struct{}, error) {
		if _, err := s.managed(ctx, in.ID); err != nil {
			return nil, err
		}
		if err := s.d.Sandboxes.Destroy(ctx, in.ID); err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return nil, nil
	})

	actions := []struct {
		name, summary string
		fn            func(context.Context, string) (store.Sandbox, error)
	}{
		{"stop", "Stop a running sandbox", s.d.Sandboxes.Stop},
		{"start", "Start a stopped sandbox", s.d.Sandboxes.Start},
		{"restart", "Stop then start a running sandbox", s.d.Sandboxes.Restart},
	}
	for _, a := range actions {
		huma.Register(s.api, huma.Operation{
			OperationID: a.name + "-sandbox", Method: http.MethodPost, Path: "/api/sandboxes/{id}/" + a.name, Tags: tags,
			Summary: a.summary, Security: securityAuthed,
			Description: "409 when the sandbox's status does not allow it; 429 when starting would exceed server.maxSandboxes or the owner's running quota; 503 when this manager may not boot sandboxes now (a cluster found not to enforce NetworkPolicies).",
			Errors:      append(errs, http.StatusConflict, http.StatusTooManyRequests, http.StatusServiceUnavailable),
		}, func(ctx context.Context, in *sandboxIDInput) (*sandboxOutput, error) {
			if _, err := s.managed(ctx, in.ID); err != nil {
				return nil, err
			}
			sb, err := a.fn(ctx, in.ID)
			if err != nil {
				return nil, toProblem(ctx, s.d.Log, err)
			}
			return &sandboxOutput{Body: s.d.Sandboxes.View(sb)}, nil
		})
	}
	s.registerResize()
}
