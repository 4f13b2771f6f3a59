package main

import (
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/configfile"
)

func newConfigSetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Set one key in the config file (validated first), and say whether a restart is needed",
		Long: `Set KEY (dotted, e.g. domain.tls.email) to VALUE in the config file: an integer, true/false,
a string, or for lists a JSON array or comma-separated items. The whole configuration is
loaded and validated with the change (the environment applied) before the file is written,
atomically and with its mode kept (0600 for a new file); every other key stays as it was.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := args[0]
			v, err := configfile.ParseValue(key, args[1])
			if err != nil {
				return err
			}
			path := g.configPath()
			changed, err := configfile.Apply(path, os.Environ(), configfile.Change{Key: key, Value: v})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if !changed {
				fmt.Fprintf(w, "%s is already %s in %s\n", key, args[1], path)
				return nil
			}
			fmt.Fprintf(w, "set %s in %s\n", key, path)
			if !configfile.RestartNeeded(key) {
				fmt.Fprintln(w, "no restart needed: only the CLI reads this key")
				return nil
			}
			cfg, err := g.loadConfig()
			if err == nil {
				if c, err := net.DialTimeout("unix", cfg.Server.SocketPath, time.Second); err == nil {
					c.Close()
					fmt.Fprintln(w, "restart needed: the running manager read the old value at start (atelier manager restart; sandboxes keep running)")
					return nil
				}
			}
			fmt.Fprintln(w, "takes effect when the manager next starts")
			return nil
		},
	}
}
