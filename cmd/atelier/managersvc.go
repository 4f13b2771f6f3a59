package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/hostcmd"
	"atelier/internal/systemd"
)

// newManagerServiceCmds are `atelier manager start|stop|restart|logs`:
// the manager's systemd unit. None of them stops a sandbox.
func newManagerServiceCmds(g *globals) []*cobra.Command {
	sysd := func(cmd *cobra.Command) systemd.Systemctl {
		return systemd.Systemctl{R: hostcmd.Exec{}, Out: cmd.OutOrStdout()}
	}
	var timeout time.Duration
	action := func(name, short string, do func(systemd.Systemctl, context.Context) error, wait bool) *cobra.Command {
		c := &cobra.Command{
			Use:   name,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if os.Geteuid() != 0 {
					return fmt.Errorf("atelier manager %s must run as root: it drives the %s unit (try sudo)", name, systemd.ManagerUnit)
				}
				if err := do(sysd(cmd), cmd.Context()); err != nil {
					return err
				}
				if !wait {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %sped (sandboxes keep running)\n", systemd.ManagerUnit, name)
					return nil
				}
				cfg, err := g.loadConfig()
				if err != nil {
					return err
				}
				health := managerHealth(cfg)
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				defer cancel()
				for {
					v, err := health(ctx)
					if err == nil {
						fmt.Fprintf(cmd.OutOrStdout(), "%s: manager %s is healthy\n", systemd.ManagerUnit, v)
						return nil
					}
					select {
					case <-ctx.Done():
						return fmt.Errorf("the manager is not healthy after %v: %w (atelier manager logs)", timeout, err)
					case <-time.After(300 * time.Millisecond):
					}
				}
			},
		}
		if wait {
			c.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for a healthy manager")
		}
		return c
	}
	start := action("start", "Start the manager's service and wait until it is healthy",
		func(s systemd.Systemctl, ctx context.Context) error { return s.Start(ctx, systemd.ManagerUnit) }, true)
	stop := action("stop", "Stop the manager's service (sandboxes keep running)",
		func(s systemd.Systemctl, ctx context.Context) error { return s.Stop(ctx, systemd.ManagerUnit) }, false)
	restart := action("restart", "Restart the manager's service and wait until it is healthy (sandboxes keep running)",
		func(s systemd.Systemctl, ctx context.Context) error { return s.Restart(ctx, systemd.ManagerUnit) }, true)
	var lines int
	var noFollow bool
	logs := &cobra.Command{
		Use:   "logs",
		Short: "Follow the manager's journal (JSON lines)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			argv := systemd.JournalArgv(systemd.ManagerUnit, lines, !noFollow)
			c := exec.CommandContext(cmd.Context(), argv[0], argv[1:]...)
			c.Stdout, c.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return c.Run()
		},
	}
	logs.Flags().IntVarP(&lines, "lines", "n", 50, "how many past lines to show")
	logs.Flags().BoolVar(&noFollow, "no-follow", false, "print and exit instead of following")
	return []*cobra.Command{start, stop, restart, logs}
}
