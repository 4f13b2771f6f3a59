package main

import (
	"os"

	"github.com/spf13/cobra"

	"atelier/internal/guest"
	"atelier/internal/server"
)

// newAgentCmd embeds the guest agent, so mock mode can run the real agent
// per sandbox without a second binary. Hidden: users run atelier-agent.
func newAgentCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "agent",
		Short:              "Run the embedded guest agent (mock mode)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			// One build, one version: a binary linked with only the
			// manager's version reports it for its embedded agent too.
			if guest.Version == "dev" {
				guest.Version = server.Version
			}
			os.Exit(guest.Main(args))
			return nil
		},
	}
}
