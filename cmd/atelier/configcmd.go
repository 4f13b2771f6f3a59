package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"atelier/internal/config"
)

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Show, validate or describe the configuration"}
	cmd.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the configuration this shell would load, as JSON, secrets redacted",
		Long: "Print the effective configuration as this shell would load it: defaults, then the config file\n" +
			"(--config, $ATELIER_CONFIG or /etc/atelier/sandbox.config.json), then ATELIER_* variables.\n" +
			"A running manager may have been started with others (make run passes its settings as variables):\n" +
			"atelier manager config prints what it uses.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "# the configuration this shell loads (file: %s); a running manager's: atelier manager config\n", configSource(g))
			b, err := cfg.Redacted().JSON()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			if err == nil && len(b) > 0 && b[len(b)-1] != '\n' {
				fmt.Fprintln(cmd.OutOrStdout())
			}
			return err
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "validate [FILE]",
		Short: "Check a config file (with the environment applied) and list every problem",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := config.Options{File: g.configFile}
			if len(args) == 1 {
				opts.File = args[0]
			}
			cfg, err := config.Load(opts)
			if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "configuration is valid (mode %s)\n", cfg.Server.Mode)
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "schema",
		Short: "Print the JSON Schema of the config file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := config.Schema()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(append(b, '\n'))
			return err
		},
	})
	return cmd
}

// configSource says which config file a command reads, and whether it exists.
func configSource(g *globals) string {
	path := g.configFile
	if path == "" {
		path = os.Getenv("ATELIER_CONFIG")
	}
	if path == "" {
		path = config.DefaultFile
	}
	if _, err := os.Stat(path); err != nil {
		return path + ", absent: defaults and ATELIER_* variables only"
	}
	return path
}
