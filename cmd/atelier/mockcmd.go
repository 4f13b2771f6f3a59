package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"atelier/internal/runtime/process"
)

// newMockStopCmd stops every mock sandbox's agent under the configured
// state dir: mock sandboxes are local processes that outlive the manager
// by design, and `make clean` runs this before it deletes their files.
func newMockStopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "mock-stop",
		Short:  "Stop every mock sandbox's processes (make clean)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			// The same directories mock mode's runtime uses (internal/server).
			rt, err := process.New(process.Options{Command: []string{exe, "agent"},
				StateDir: filepath.Join(cfg.Sandbox.StateDir, "mock"), SocketDir: filepath.Join(cfg.Sandbox.StateDir, "sockets")})
			if err != nil {
				return err
			}
			ids, err := rt.List(cmd.Context())
			if err != nil {
				return err
			}
			n := 0
			for _, id := range ids {
				alive, _ := rt.Alive(cmd.Context(), id)
				if err := rt.Stop(cmd.Context(), id); err != nil {
					return fmt.Errorf("stop mock sandbox %s: %w", id, err)
				}
				if alive {
					n++
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stopped %d mock sandboxes under %s\n", n, cfg.Sandbox.StateDir)
			return nil
		},
	}
}
