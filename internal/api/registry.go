package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/registry"
)

type registryStatusOutput struct {
	Body registry.Status
}

type registrySettingsInput struct {
	Body struct {
		_            struct{} `json:"-" additionalProperties:"false"`
		EvictionDays int      `json:"evictionDays" minimum:"1" maximum:"365" doc:"Delete cached tarballs unused for this many days."`
	}
}

// registryProblem maps the cache's errors: a Verdaccio that cannot run is a
// 503 whose detail says why (not installed, no node, never ready).
func (s *Server) registryProblem(ctx context.Context, err error) error {
	if errors.Is(err, registry.ErrUnavailable) {
		return newProblem(http.StatusServiceUnavailable, "unavailable", err.Error())
	}
	return toProblem(ctx, s.d.Log, err)
}

func (s *Server) registerRegistry() {
	tags := []string{"registry"}
	unavailable := func() error {
		return newProblem(http.StatusServiceUnavailable, "unavailable", "the npm cache is not configured in this manager")
	}
	status := func(ctx context.Context, _ *struct{}) (*registryStatusOutput, error) {
		if s.d.Registry == nil {
			return nil, unavailable()
		}
		return &registryStatusOutput{s.d.Registry.Status(ctx)}, nil
	}
	huma.Register(s.api, huma.Operation{
		OperationID: "registry-status", Method: http.MethodGet, Path: "/api/registry", Tags: tags,
		Summary: "Shared npm cache: state, usage and uplink health", Security: securityAuthed,
		Description: "The cache is Verdaccio on the bridge address; guests reach it and nothing else on the host. " +
			"online says it answers now; uplink is the npm registry configured on the host.",
		Errors: []int{http.StatusUnauthorized, http.StatusServiceUnavailable},
	}, status)

	huma.Register(s.api, huma.Operation{
		OperationID: "registry-enable", Method: http.MethodPost, Path: "/api/registry/enable", Tags: tags,
		Summary: "Enable the shared npm cache (admin)", Security: securityAuthed,
		Description: "Starts Verdaccio, records the cache as enabled (it starts with the manager from now on) and writes " +
			"/etc/npmrc, ~/.npmrc, ~/.bunfig.toml and ~/.yarnrc.yml pointing at it into every running sandbox; " +
			"sandboxes started later get them too. Files a sandbox already had that Atelier did not write are left alone. " +
			"503 when Verdaccio cannot run (the detail says why); the cache then stays disabled.",
		Errors: []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, func(ctx context.Context, _ *struct{}) (*registryStatusOutput, error) {
		if err := requireAdmin(ctx, "the npm cache"); err != nil {
			return nil, err
		}
		if s.d.Registry == nil {
			return nil, unavailable()
		}
		st, err := s.d.Registry.Enable(ctx)
		if err != nil {
			return nil, s.registryProblem(ctx, err)
		}
		return &registryStatusOutput{st}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "registry-disable", Method: http.MethodPost, Path: "/api/registry/disable", Tags: tags,
		Summary: "Disable the shared npm cache (admin)", Security: securityAuthed,
		Description: "Removes the configs Atelier wrote from every running sandbox (stopped ones lose them when they " +
			"next start), then stops Verdaccio. Cached packages stay on disk.",
		Errors: []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, func(ctx context.Context, _ *struct{}) (*registryStatusOutput, error) {
		if err := requireAdmin(ctx, "the npm cache"); err != nil {
			return nil, err
		}
		if s.d.Registry == nil {
			return nil, unavailable()
		}
		st, err := s.d.Registry.Disable(ctx)
		if err != nil {
			return nil, s.registryProblem(ctx, err)
		}
		return &registryStatusOutput{st}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "registry-purge", Method: http.MethodPost, Path: "/api/registry/purge", Tags: tags,
		Summary: "Delete every cached package (admin)", Security: securityAuthed,
		Description: "Deletes all cached tarballs and package metadata; the next install fetches them from the uplink again.",
		Errors:      []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, func(ctx context.Context, _ *struct{}) (*struct{ Body registry.Removed }, error) {
		if err := requireAdmin(ctx, "the npm cache"); err != nil {
			return nil, err
		}
		if s.d.Registry == nil {
			return nil, unavailable()
		}
		r, err := s.d.Registry.Purge(ctx)
		if err != nil {
			return nil, s.registryProblem(ctx, err)
		}
		return &struct{ Body registry.Removed }{r}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "registry-settings", Method: http.MethodPut, Path: "/api/registry/settings", Tags: tags,
		Summary: "Change the cache's eviction period (admin)", Security: securityAuthed,
		Description: "Tarballs not downloaded for evictionDays days (1 to 365) are deleted by the hourly eviction job.",
		Errors:      []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, func(ctx context.Context, in *registrySettingsInput) (*registryStatusOutput, error) {
		if err := requireAdmin(ctx, "the npm cache"); err != nil {
			return nil, err
		}
		if s.d.Registry == nil {
			return nil, unavailable()
		}
		st, err := s.d.Registry.SetEvictionDays(ctx, in.Body.EvictionDays)
		if err != nil {
			return nil, s.registryProblem(ctx, err)
		}
		return &registryStatusOutput{st}, nil
	})
}
