package main

import (
	"fmt"
	"log/slog"
	"os"

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
		Long: `Install Verdaccio at advanced.server.verdaccio.version into
{advanced.server.verdaccio.dir}/app (default {dataDir}-registry/app), or --dir, with
"npm install --omit=dev" from the npm registry the host's npm is configured with. Needs
Node.js 20+ and npm. Running it again does nothing once that version is there.

Without --dir, run as root, it also creates the system user Verdaccio runs as
(advanced.server.verdaccio.user, default atelier-registry: no login, no home) and moves an
npm cache an older Atelier kept in {dataDir}/registry to the registry dir. The manager's
data dir is never created or touched by this command.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if version == "" {
				version = cfg.Advanced.Server.Verdaccio.Version
			}
			out := cmd.OutOrStdout()
			if dir == "" {
				log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
				if err := registry.MigrateLegacyDir(cfg, log); err != nil {
					return err
				}
				if os.Geteuid() == 0 {
					a, err := registry.EnsureUser(cmd.Context(), cfg.Advanced.Server.Verdaccio.User)
					if err != nil {
						return err
					}
					fmt.Fprintf(out, "verdaccio runs as system user %s (uid %d)\n", a.Name, a.UID)
				}
				dir = registry.AppDir(cfg.Advanced.Server.Verdaccio.Dir)
			}
			if err := registry.Install(cmd.Context(), dir, version); err != nil {
				return err
			}
			fmt.Fprintf(out, "verdaccio %s installed in %s\n", version, dir)
			return nil
		},
	}
	install.Flags().StringVar(&dir, "dir", "", "install directory (default {advanced.server.verdaccio.dir}/app)")
	install.Flags().StringVar(&version, "version", "", "Verdaccio version (default advanced.server.verdaccio.version)")
	cmd.AddCommand(install)
	return cmd
}
