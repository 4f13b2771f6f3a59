package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/guest"
	"atelier/internal/image/manifest"
	"atelier/internal/server"
)

// versions is what `atelier version` reports; "" fields are unknown.
type versions struct {
	Binary string `json:"binary"`
	Go     string `json:"go"`
	// Agent is the agent built into this binary (mock mode's guests);
	// AgentInImage is the one the default image carries.
	Agent        string            `json:"agent"`
	Image        string            `json:"image,omitempty"`
	ImageBuilt   string            `json:"imageBuilt,omitempty"`
	ImageRecipe  string            `json:"imageRecipe,omitempty"`
	ImageTools   map[string]string `json:"imageTools,omitempty"`
	Kernel       string            `json:"kernel,omitempty"`
	KernelSource string            `json:"kernelSource,omitempty"`
}

func newVersionCmd(g *globals) *cobra.Command {
	var short bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of this binary, its agent, the default image and the guest kernel",
		Long: `Print the version of this binary and of the agent built into it, then what the host has:
the default image's manifest ({stateDir}/images/<defaultImage>.json beside the image, when
the image build wrote one) and the guest kernel's record (<kernelPath>.json, written by
atelier images kernel). --short prints the binary's version alone (atelier update uses it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if short {
				fmt.Fprintln(w, server.Version)
				return nil
			}
			v := versions{Binary: server.Version, Go: runtime.Version(), Agent: guest.Version}
			if cfg, err := g.loadConfig(); err == nil {
				readHostVersions(cfg, &v)
			}
			if g.json {
				return printJSON(w, v)
			}
			fmt.Fprintf(w, "atelier %s (%s)\nagent   %s\n", v.Binary, v.Go, v.Agent)
			if v.Image != "" {
				fmt.Fprintf(w, "image   %s", v.Image)
				if v.ImageBuilt != "" {
					fmt.Fprintf(w, ", built %s", v.ImageBuilt)
				}
				fmt.Fprintln(w)
				for k, t := range v.ImageTools {
					fmt.Fprintf(w, "  %s %s\n", k, t)
				}
			} else {
				fmt.Fprintln(w, "image   unknown (no manifest beside the default image)")
			}
			if v.Kernel != "" {
				fmt.Fprintf(w, "kernel  Linux %s (%s)\n", v.Kernel, v.KernelSource)
			} else {
				fmt.Fprintln(w, "kernel  unknown (no record beside advanced.server.firecracker.kernelPath)")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&short, "short", false, "print only this binary's version")
	return cmd
}

func readHostVersions(cfg *config.Config, v *versions) {
	id := cfg.Sandbox.DefaultImage
	if m, err := manifest.Read(filepath.Join(cfg.Sandbox.StateDir, "images", id+".json")); err == nil {
		v.Image, v.ImageBuilt, v.ImageRecipe, v.ImageTools = m.ID, m.Built, m.Recipe, m.Versions
	}
	if b, err := os.ReadFile(cfg.Advanced.Server.Firecracker.KernelPath + ".json"); err == nil {
		var k struct {
			Release       string `json:"kernelRelease"`
			SourcePackage string `json:"sourcePackage"`
			SourceVersion string `json:"sourceVersion"`
		}
		if json.Unmarshal(b, &k) == nil {
			v.Kernel, v.KernelSource = k.Release, k.SourcePackage+" "+k.SourceVersion
		}
	}
}
