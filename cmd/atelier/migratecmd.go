package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"atelier/internal/store"
)

// newMigrateCmd is the hidden step of `atelier update`: the new binary
// applies its migrations before it is started, so a failing migration is
// seen (and rolled back) before the manager runs on a half-new schema.
func newMigrateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "migrate",
		Short:  "Apply this binary's database migrations (run by atelier update with the manager stopped)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			st, err := store.Open(cmd.Context(), cfg.Server.DataDir, store.WithLogger(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))),
				store.WithDatabaseURL(cfg.Advanced.Server.Database.URL))
			if err != nil {
				return err
			}
			if err := st.Close(); err != nil {
				return err
			}
			if st.Backend() == "postgres" {
				fmt.Fprintln(cmd.OutOrStdout(), "the postgres database (advanced.server.database.url) is up to date")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "database in %s is up to date\n", cfg.Server.DataDir)
			return nil
		},
	}
}
