package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"atelier/internal/server"
)

func newServeCmd(g *globals) *cobra.Command {
	var noSocket bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the manager API (and, later, the edge and SSH proxies)",
		Long: "Run the manager. Configuration comes from defaults, then the config file, then ATELIER_* variables.\n" +
			"For local development: ATELIER_SERVER_MODE=mock ATELIER_DATA_DIR=./.atelier atelier serve",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			level := new(slog.LevelVar)
			_ = level.UnmarshalText([]byte(cfg.Server.LogLevel))
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			slog.SetDefault(log)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			srv, err := server.New(ctx, cfg, server.Options{Log: log})
			if err != nil {
				return err
			}
			if err := srv.Listen(noSocket); err != nil {
				_ = srv.Store.Close()
				return err
			}
			return srv.Serve(ctx)
		},
	}
	cmd.Flags().BoolVar(&noSocket, "no-socket", false, "do not open the root-only unix socket")
	cmd.SetContext(context.Background())
	return cmd
}
