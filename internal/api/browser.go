package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/agent"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// The browser stack (Xvnc, a window manager, Chromium, noVNC) costs memory,
// so it runs on demand: these routes start and stop it and say where it is.
// They act inside the sandbox, so they are its owner's only (an admin sees
// the services' states in the sandbox's view, not more).

// Browser states of browserView.
const (
	browserOff      = "off"
	browserStarting = "starting"
	browserRunning  = "running"
	browserStopping = "stopping"
	browserFailed   = "failed"
)

type browserView struct {
	State   string                `json:"state" enum:"off,starting,running,stopping,failed" doc:"off (not started, or stopped); starting (running, not answering yet); running (noVNC answers); stopping; failed (could not start, or kept dying: see service.lastError and the service's logs)."`
	URL     string                `json:"url" doc:"Where noVNC is served (browser-{id} host), behind the owner's login."`
	Service *sandbox.ServiceState `json:"service" doc:"The browser service as the sandbox's agent reports it."`
}

type browserOutput struct {
	Body browserView
}

func (s *Server) registerBrowser() {
	tags := []string{"browser"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict,
		http.StatusBadGateway, http.StatusServiceUnavailable}
	huma.Register(s.api, huma.Operation{
		OperationID: "get-browser", Method: http.MethodGet, Path: "/api/sandboxes/{id}/browser", Tags: tags,
		Summary: "The browser's state and URL", Security: securityAuthed, Errors: errs,
		Description: "The on-demand browser stack of a running sandbox (409 when it is not running, or when its image has no browser).",
	}, func(ctx context.Context, in *sandboxIDInput) (*browserOutput, error) {
		return s.browser(ctx, in.ID, s.d.Sandboxes.Browser)
	})
	huma.Register(s.api, huma.Operation{
		OperationID: "start-browser", Method: http.MethodPost, Path: "/api/sandboxes/{id}/browser/start", Tags: tags,
		Summary: "Start the browser", Security: securityAuthed, Errors: errs,
		Description: "Starts Chromium with noVNC on advanced.vm.browser.port and keeps it wanted: it comes back after an agent restart and a stop and start of the sandbox, until stopped. Answers once the stack is spawned (state starting); it is running when noVNC answers. Idempotent.",
	}, func(ctx context.Context, in *sandboxIDInput) (*browserOutput, error) {
		return s.browser(ctx, in.ID, s.d.Sandboxes.StartBrowser)
	})
	huma.Register(s.api, huma.Operation{
		OperationID: "stop-browser", Method: http.MethodPost, Path: "/api/sandboxes/{id}/browser/stop", Tags: tags,
		Summary: "Stop the browser", Security: securityAuthed, Errors: errs,
		Description: "Stops the whole browser stack (its process group) and frees its memory; the browser host then shows that the browser is off. Idempotent.",
	}, func(ctx context.Context, in *sandboxIDInput) (*browserOutput, error) {
		return s.browser(ctx, in.ID, s.d.Sandboxes.StopBrowser)
	})
}

func (s *Server) browser(ctx context.Context, id string, op func(context.Context, string) (sandbox.ServiceState, error)) (*browserOutput, error) {
	if _, err := s.owned(ctx, id); err != nil {
		return nil, err
	}
	st, err := op(ctx, id)
	if err != nil {
		return nil, s.serviceProblem(ctx, err)
	}
	out := &browserOutput{Body: browserView{State: browserState(st), Service: &st, URL: s.browserURL(ctx, id)}}
	return out, nil
}

// browserState sums the service up for a user.
func browserState(st sandbox.ServiceState) string {
	switch st.State {
	case agent.StateRunning:
		if st.Ready {
			return browserRunning
		}
		return browserStarting
	case agent.StateBackoff:
		return browserStarting
	case agent.StateStopping:
		return browserStopping
	case agent.StateFailed:
		return browserFailed
	case agent.StateExited:
		if st.Wanted {
			return browserFailed
		}
	}
	return browserOff
}

// browserURL is the browser host's URL as the edge serves it.
func (s *Server) browserURL(ctx context.Context, id string) string {
	if s.d.Edge != nil {
		if rs, err := s.d.Edge.Routes(ctx, id); err == nil {
			for _, r := range rs {
				if r.Kind == store.RouteBrowser {
					return s.d.Edge.URL(r.Host)
				}
			}
		}
	}
	if sb, err := s.d.Sandboxes.Get(ctx, id); err == nil {
		if v := s.d.Sandboxes.View(sb); v.URLs != nil {
			return v.URLs.Browser
		}
	}
	return ""
}

// serviceProblem maps the errors of service operations: the sandbox's
// own (not running, not found) as usual, the agent's as a bad gateway.
func (s *Server) serviceProblem(ctx context.Context, err error) error {
	var ae *agent.Error
	switch {
	case errors.Is(err, sandbox.ErrNoService):
		return newProblem(http.StatusConflict, "no_service", "the sandbox's image has no browser service")
	case errors.Is(err, sandbox.ErrNoAgent):
		return newProblem(http.StatusServiceUnavailable, "unavailable", err.Error())
	case errors.As(err, &ae):
		return newProblem(http.StatusBadGateway, "agent_error", "the sandbox's agent refused: "+ae.Detail)
	}
	var conflict *store.ConflictError
	if errors.As(err, &conflict) || errors.Is(err, store.ErrNotFound) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return toProblem(ctx, s.d.Log, err)
	}
	s.d.Log.WarnContext(ctx, "browser operation failed", "err", err)
	return newProblem(http.StatusBadGateway, "unavailable", "the sandbox's agent did not answer")
}
