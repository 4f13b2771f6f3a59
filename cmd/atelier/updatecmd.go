package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/client"
	"atelier/internal/config"
	"atelier/internal/hostcmd"
	"atelier/internal/systemd"
	"atelier/internal/update"
)

func newUpdateCmd(g *globals) *cobra.Command {
	var bin, version, installed string
	var timeout time.Duration
	var rebuild bool
	cmd := &cobra.Command{
		Use:   "update (--binary PATH | --version V)",
		Short: "Replace the installed binary, migrate, restart the manager; roll back if it is not healthy",
		Long: `Update Atelier in place. The new binary comes from --binary PATH, or from --version V:
{advanced.server.releaseUrl}/vV/atelier-linux-<arch>, installed only when its SHA-256 matches
the .sha256 published beside it. Then: the manager is stopped (sandboxes keep running), the
database is copied to {dataDir}/update/, the old binary kept as <binary>.prev, the new one
installed, its migrations run and the manager started; if it is not healthy at the new version
within --timeout, the old binary and database are put back and the old manager started again.
--rebuild-images then rebuilds the default image with the new binary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("atelier update must run as root: it replaces " + installed + " and restarts the manager's service (try sudo)")
			}
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			runner := hostcmd.Exec{}
			o := update.Options{
				Binary: installed, NewBinary: bin, Version: version, ReleaseURL: cfg.Advanced.Server.ReleaseURL,
				ConfigFile: g.configPath(), DataDir: cfg.Server.DataDir, SharedStore: cfg.Advanced.Server.Database.URL != "",
				Restart: update.Systemd{S: systemd.Systemctl{R: runner, Out: out}},
				Health:  managerHealth(cfg), Timeout: timeout, Runner: runner, Out: out,
			}
			if rebuild {
				o.RebuildImages = []string{cfg.Sandbox.DefaultImage}
			}
			res, err := update.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if res.From != res.To {
				fmt.Fprintf(out, "updated from %s to %s\n", res.From, res.To)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&bin, "binary", "", "install this atelier binary")
	f.StringVar(&version, "version", "", "download and install release V (needs advanced.server.releaseUrl)")
	f.StringVar(&installed, "installed", "/usr/local/bin/atelier", "the installed binary the manager's unit runs")
	f.DurationVar(&timeout, "timeout", 60*time.Second, "how long the new manager has to become healthy")
	f.BoolVar(&rebuild, "rebuild-images", false, "rebuild the default image with the new binary after the update")
	return cmd
}

// managerHealth asks the local manager, over its socket, for its health;
// healthy means every check passes. It returns the manager's version.
func managerHealth(cfg *config.Config) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		c, err := client.New("unix://"+cfg.Server.SocketPath, "")
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		h, err := c.Health(ctx)
		if err != nil {
			return "", err
		}
		if h.Status != "ok" {
			return h.Version, fmt.Errorf("manager %s is %s: %s", h.Version, h.Status, failingChecks(h.Checks))
		}
		return h.Version, nil
	}
}

func failingChecks(checks map[string]string) string {
	var s string
	for k, v := range checks {
		if v != "ok" {
			if s != "" {
				s += "; "
			}
			s += k + ": " + v
		}
	}
	return s
}
