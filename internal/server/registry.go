package server

import (
	"context"
	"log/slog"

	"atelier/internal/config"
	"atelier/internal/registry"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// newRegistry builds the shared npm cache. In mock mode it only records its
// setting: there is no bridge to listen on, and the mock "guests" are
// processes in the developer's own home, whose npm configs must not be
// rewritten.
// The supervisor (nil in mock mode) is returned for the readiness check.
func newRegistry(ctx context.Context, cfg *config.Config, opts Options, st *store.Store, sbx *sandbox.Service, drv sandbox.Drivers, log *slog.Logger) (*registry.Service, *registry.Supervisor, error) {
	so := registry.ServiceOptions{Store: st, Log: log}
	if cfg.Server.Mode != config.ModeMock {
		if err := registry.MigrateLegacyDir(cfg, log); err != nil {
			return nil, nil, err
		}
		ro, err := registry.OptionsFromConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		ro.Log = log
		if opts.Registry != nil {
			opts.Registry(&ro)
		}
		sup, err := registry.NewSupervisor(ro)
		if err != nil {
			return nil, nil, err
		}
		so.Supervisor = sup
		if _, ok := drv.Runtime.(sandbox.AgentRuntime); ok {
			so.Sandboxes = sbx
		}
	}
	svc, err := registry.NewService(ctx, so)
	return svc, so.Supervisor, err
}
