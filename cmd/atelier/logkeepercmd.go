package main

import (
	"os"

	"github.com/spf13/cobra"

	"atelier/internal/logkeeper"
)

// newLogKeeperCmd is the process that owns one sandbox's log (see
// internal/logkeeper): the runtimes start it beside each sandbox. Hidden:
// nobody runs it by hand.
func newLogKeeperCmd() *cobra.Command {
	return &cobra.Command{
		Use:                logkeeper.Subcommand,
		Short:              "Write a sandbox's output to its log, rotated by size (started by the runtime)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			os.Exit(logkeeper.Run(args))
			return nil
		},
	}
}
