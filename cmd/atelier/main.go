// Command atelier is the whole server side of Atelier in one binary: the
// manager API, and the CLIs that set up the host and drive sandboxes.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/server"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(report(os.Stderr, err))
	}
}

type globals struct {
	configFile string
	url        string
	token      string
	json       bool
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "atelier",
		Short:         "Self-hosted sandboxes that start in milliseconds",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       server.Version,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.configFile, "config", "", "config file (default $ATELIER_CONFIG or /etc/atelier/sandbox.config.json)")
	pf.StringVar(&g.url, "url", os.Getenv("ATELIER_URL"), "manager URL: http(s)://host:port or unix:///path (env ATELIER_URL; default: the local socket, else http://127.0.0.1:<server.port>)")
	pf.StringVar(&g.token, "token", os.Getenv("ATELIER_TOKEN"), "API token (env ATELIER_TOKEN)")
	pf.BoolVar(&g.json, "json", false, "print the API's JSON objects instead of tables and messages (lists: an array)")
	root.AddCommand(newServeCmd(g), newConfigCmd(g), newSandboxCmd(g), newManagerCmd(g), newStorageCmd(g), newNetworkCmd(g), newDebugVMCmd(g), newAgentCmd(), newRegistryCmd(g), newImagesCmd(g))
	addOpsCommands(g, root)
	root.AddCommand(newSSHKeyCmd(g), newTokenCmd(g), newMockStopCmd(g), newLogKeeperCmd())
	root.AddCommand(newWorkspaceCmd(g), newGitSourceCmd(g))
	root.AddCommand(newConfigFilesCmd(g))
	return root
}

// loadConfig reads the config from the --config flag, ATELIER_CONFIG or the default path.
func (g *globals) loadConfig() (*config.Config, error) {
	return config.Load(config.Options{File: g.configFile})
}
