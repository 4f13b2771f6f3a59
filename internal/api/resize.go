package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/sandbox"
)

type resizeSandboxInput struct {
	ID   string `path:"id" pattern:"^[a-z0-9]{12}$" doc:"Sandbox id: 12 characters [a-z0-9]."`
	Body struct {
		_      struct{} `json:"-" additionalProperties:"false"`
		SizeGB int      `json:"sizeGb" required:"true" minimum:"1" maximum:"65536" doc:"The disk's new size in GiB: at least its current size (disks only grow), within quotas.diskGbPerUser with the owner's other disks."`
	}
}

// registerResize adds POST /api/sandboxes/{id}/storage/resize.
func (s *Server) registerResize() {
	huma.Register(s.api, huma.Operation{
		OperationID: "resize-sandbox-storage", Method: http.MethodPost, Path: "/api/sandboxes/{id}/storage/resize",
		Tags: []string{"sandboxes"}, Summary: "Grow a sandbox's disk", Security: securityAuthed,
		Description: "The volume driver grows the volume (a sparse file, or lvextend of the thin volume) and the guest's " +
			"filesystem grows into it: online for a running sandbox on a runtime that can (containers), else at its next " +
			"boot. For the owner or an admin. 400 naming body.sizeGb for a smaller size; 429 quota_exceeded past " +
			"quotas.diskGbPerUser; 409 when the sandbox is neither running nor stopped, is running on a runtime that " +
			"grows disks only while stopped, or when the volume grew but the running filesystem could not (it grows at " +
			"the next restart).",
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict, http.StatusTooManyRequests},
	}, func(ctx context.Context, in *resizeSandboxInput) (*sandboxOutput, error) {
		if _, err := s.managed(ctx, in.ID); err != nil {
			return nil, err
		}
		sb, err := s.d.Sandboxes.Resize(ctx, in.ID, int64(in.Body.SizeGB)<<30)
		switch {
		case errors.Is(err, sandbox.ErrGrowOffline):
			return nil, newProblem(http.StatusConflict, "conflict", sandbox.ErrGrowOffline.Error())
		case errors.Is(err, sandbox.ErrGrowAtRestart):
			return nil, newProblem(http.StatusConflict, "conflict", sandbox.ErrGrowAtRestart.Error()+
				fmt.Sprintf(" (its disk is now %d GiB): restart it to use the space", in.Body.SizeGB))
		case errors.Is(err, sandbox.ErrNoResize):
			return nil, newProblem(http.StatusConflict, "conflict", sandbox.ErrNoResize.Error())
		case err != nil:
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &sandboxOutput{Body: s.d.Sandboxes.View(sb)}, nil
	})
}
