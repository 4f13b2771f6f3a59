package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"atelier/internal/hostcmd"
	"atelier/internal/systemd"
)

func newUninstallCmd(g *globals) *cobra.Command {
	var purge bool
	var root string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and remove Atelier's services; keeps all data unless --purge-data",
		Long: `Stop and disable atelier-manager, atelier-network and atelier-storage and remove their unit
files. Sandboxes are not stopped by this (stop or destroy them first if they should go), the
network and storage pool stay as they are (atelier network teardown, atelier storage teardown),
and the data dir, config, images and sandbox disks are kept: run atelier init to come back.
--purge-data also deletes the data dir ({dataDir}: database, keys, certificates) after the
services are stopped; take an atelier backup first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("atelier uninstall must run as root (try sudo)")
			}
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			s := systemd.Systemctl{R: hostcmd.Exec{}, Out: out}
			have := systemd.Installed(root)
			if len(have) > 0 {
				if err := s.Stop(cmd.Context(), systemd.ManagerUnit); err != nil {
					return err
				}
				if err := s.Disable(cmd.Context(), have...); err != nil {
					return err
				}
			}
			removed, err := systemd.Remove(root, systemd.AllUnits)
			if err != nil {
				return err
			}
			if len(removed) > 0 {
				if err := s.DaemonReload(cmd.Context()); err != nil {
					return err
				}
				fmt.Fprintf(out, "removed %v\n", removed)
			} else {
				fmt.Fprintln(out, "no Atelier units installed")
			}
			if purge {
				if err := os.RemoveAll(cfg.Server.DataDir); err != nil {
					return err
				}
				fmt.Fprintf(out, "deleted the data dir %s\n", cfg.Server.DataDir)
			} else {
				fmt.Fprintf(out, "kept: the data dir %s, %s, the images and sandbox disks under %s, the network and the storage pool\n",
					cfg.Server.DataDir, g.configPath(), cfg.Sandbox.StateDir)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge-data", false, "also delete the data dir (database, keys, certificates)")
	cmd.Flags().StringVar(&root, "root", "/", "the root init installed under")
	return cmd
}
