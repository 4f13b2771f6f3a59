package server

import (
	"context"
	"log/slog"

	"atelier/internal/edge"
	"atelier/internal/sandbox"
	"atelier/internal/store"
	"atelier/internal/workspace"
)

// newProvisioner sets up sandboxes created from a workspace: variables and
// secrets through the agent, clones, init and dev commands exposed on the
// edge, SANDBOX.md.
func newProvisioner(wss *workspace.Service, st *store.Store, sbx *sandbox.Service, ed *edge.Edge, user string, log *slog.Logger) *workspace.Provisioner {
	p := &workspace.Provisioner{Workspaces: wss, Store: st, User: user, View: sbx.View, Log: log}
	if ed != nil {
		p.Expose = func(ctx context.Context, id string, d edge.DevExposure) ([]string, error) {
			routes, err := ed.ExposeDev(ctx, id, d)
			if err != nil {
				return nil, err
			}
			urls := make([]string, 0, len(routes))
			for _, r := range routes {
				urls = append(urls, ed.URL(r.Host))
			}
			return urls, nil
		}
		p.Unexpose = ed.UnexposeDev
	}
	return p
}
