package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/agent"
	"atelier/internal/client"
)

func newDebugVMCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "debug-vm", Short: "Check that sandboxes boot on this host"}
	var image, command string
	var keep bool
	start := &cobra.Command{
		Use:   "start",
		Short: "Boot a throwaway sandbox, run a command through its agent, print timings, destroy it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			t0 := time.Now()
			v, err := c.CreateSandbox(ctx, client.CreateRequest{Image: image, Vcpus: 1, MemoryMB: 512, Name: "debug-vm"}, true)
			if err != nil {
				return fmt.Errorf("boot test sandbox: %w", err)
			}
			fmt.Fprintf(w, "sandbox %s: %s in %v (ip %s)\n", v.ID, v.Status, time.Since(t0).Round(time.Millisecond), v.IPAddress)
			if !keep {
				defer func() {
					t1 := time.Now()
					if err := c.DeleteSandbox(context.WithoutCancel(ctx), v.ID); err != nil {
						fmt.Fprintf(w, "destroy %s: %v\n", v.ID, err)
						return
					}
					fmt.Fprintf(w, "destroyed in %v\n", time.Since(t1).Round(time.Millisecond))
				}()
			}
			if v.Status != "running" {
				return fmt.Errorf("sandbox %s is %s: %s", v.ID, v.Status, v.Error)
			}
			phases := make([]string, 0, len(v.Timings))
			for k := range v.Timings {
				phases = append(phases, k)
			}
			sort.Strings(phases)
			fmt.Fprintln(w, "phases (ms):")
			for _, k := range phases {
				fmt.Fprintf(w, "  %-8s %8.1f\n", k, v.Timings[k])
			}
			var res agent.ExecResult
			t2 := time.Now()
			if err := c.Exec(ctx, v.ID, agent.ExecRequest{Shell: command, TimeoutMs: 30000}, &res); err != nil {
				return fmt.Errorf("run %q through the agent: %w", command, err)
			}
			fmt.Fprintf(w, "$ %s   (exit %d, %v)\n%s", command, res.ExitCode, time.Since(t2).Round(time.Microsecond), res.Stdout)
			if res.Stderr != "" {
				fmt.Fprint(w, res.Stderr)
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("command exited %d", res.ExitCode)
			}
			return nil
		},
	}
	start.Flags().StringVar(&image, "image", "", "image id (default sandbox.defaultImage)")
	start.Flags().StringVar(&command, "command", "uname -a; id; hostname; ip -4 addr show eth0 2>/dev/null || true", "shell command to run in the sandbox")
	start.Flags().BoolVar(&keep, "keep", false, "keep the sandbox instead of destroying it")
	cmd.AddCommand(start)
	return cmd
}
