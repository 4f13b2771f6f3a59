package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/server"
)

func newServeCmd(g *globals) *cobra.Command {
	var noSocket, listenAny bool
	var logFormat string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the manager: API, edge and SSH proxy",
		Long: "Run the manager. Configuration comes from defaults, then the config file, then ATELIER_* variables.\n" +
			"For local development, make run does this (mock mode: sandboxes are local processes; all state in ./.atelier):\n" +
			"  ATELIER_SERVER_MODE=mock ATELIER_DATA_DIR=$PWD/.atelier ATELIER_STATE_DIR=$PWD/.atelier/state \\\n" +
			"  ATELIER_LOG_DIR=$PWD/.atelier/log ATELIER_HTTP_PORT=4080 atelier serve\n" +
			"Mock mode listens on 127.0.0.1 only; --insecure-mock-listen-any opens it to the network.\n" +
			"Stopping the manager leaves sandboxes running (mock ones too: make clean stops them).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if listenAny {
				if cfg.Server.Mode != config.ModeMock {
					return errors.New("--insecure-mock-listen-any applies to mock mode only (server.mode is " + string(cfg.Server.Mode) + "); production listens on server.host (ATELIER_SERVER_HOST)")
				}
				cfg.Server.AllowRemoteMock = true
			}
			if logFormat != "" {
				cfg.Server.LogFormat = logFormat
			}
			log, err := newLogger(os.Stderr, cfg.Server.LogLevel, cfg.Server.LogFormat)
			if err != nil {
				return err
			}
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
	cmd.Flags().StringVar(&logFormat, "log-format", "", "text or json (default server.logFormat); the systemd unit uses json for the journal")
	cmd.Flags().BoolVar(&noSocket, "no-socket", false, "do not open the root-only unix socket")
	cmd.Flags().BoolVar(&listenAny, "insecure-mock-listen-any", false,
		"mock mode: listen on server.host even beyond loopback (same as server.allowRemoteMock / ATELIER_ALLOW_REMOTE_MOCK=true). "+
			"Mock mode has no login: anyone who reaches the ports can run commands as you")
	cmd.SetContext(context.Background())
	return cmd
}

// newLogger is the manager's slog: text for a terminal, or one JSON object
// per line for the journal.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	lv := new(slog.LevelVar)
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: must be text or json", format)
}
