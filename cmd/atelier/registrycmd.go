package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"atelier/internal/registry"
)

func newRegistryCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "The sandboxes' shared npm cache (Verdaccio)",
		Long: `The manager runs Verdaccio as the sandboxes' shared npm cache on the bridge address
(advanced.server.verdaccio.port, default 4873). Enable, disable, purge and inspect it through
the API: POST /api/registry/enable, POST /api/registry/disable, POST /api/registry/purge,
GET /api/registry.`,
	}
	var dir, version string
	install := &cobra.Command{
		Use:   "install",
		Short: "Install the pinned Verdaccio with npm (a no-op when already installed)",
		Long: `Install Verdaccio at advanced.server.verdaccio.version into {dataDir}/registry/app
(or --dir) with "npm install --omit=dev" from the npm registry the host's npm is configured
with. Needs Node.js 20+ and npm. Running it again does nothing once that version is there.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if dir == "" {
				dir = registry.AppDir(cfg.Server.DataDir)
			}
			if version == "" {
				version = cfg.Advanced.Server.Verdaccio.Version
			}
			if err := registry.Install(cmd.Context(), dir, version); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "verdaccio %s installed in %s\n", version, dir)
			return nil
		},
	}
	install.Flags().StringVar(&dir, "dir", "", "install directory (default {dataDir}/registry/app)")
	install.Flags().StringVar(&version, "version", "", "Verdaccio version (default advanced.server.verdaccio.version)")
	cmd.AddCommand(install)
	return cmd
}
