package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/guest"
	"atelier/internal/image/manifest"
	"atelier/internal/server"
	"atelier/internal/storage"
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
	// Images are every image the host holds, with its manifest.
	Images []imageVersion `json:"images,omitempty"`
}

// imageVersion is one image's manifest as `atelier version` shows it.
type imageVersion struct {
	ID string `json:"id"`
	// From says where the manifest was read: the sidecar beside the image
	// file, or /etc/atelier/image.json inside the image (file or volume).
	From   string            `json:"from"`
	Built  string            `json:"built,omitempty"`
	Recipe string            `json:"recipe,omitempty"`
	Tools  map[string]string `json:"tools,omitempty"`
	// Error is why the manifest could not be read.
	Error string `json:"error,omitempty"`
}

func newVersionCmd(g *globals) *cobra.Command {
	var short bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of this binary, its agent, the default image and the guest kernel",
		Long: `Print the version of this binary and of the agent built into it, then what the host has:
every image's manifest (for {stateDir}/images/<id>.ext4 the <id>.json beside it, else
/etc/atelier/image.json read from inside the image with debugfs, as for the LVM volumes
sandbox-vg/image-<id>) and the guest kernel's record (<kernelPath>.json, written by atelier
images kernel). --short prints the binary's version alone (atelier update uses it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if short {
				fmt.Fprintln(w, server.Version)
				return nil
			}
			v := versions{Binary: server.Version, Go: runtime.Version(), Agent: guest.Version}
			defaultImage := ""
			if cfg, err := g.loadConfig(); err == nil {
				readHostVersions(cmd.Context(), cfg, &v)
				defaultImage = cfg.Sandbox.DefaultImage
			}
			if g.json {
				return printJSON(w, v)
			}
			fmt.Fprintf(w, "atelier %s (%s)\nagent   %s\n", v.Binary, v.Go, v.Agent)
			if len(v.Images) == 0 {
				fmt.Fprintln(w, "image   none found ({stateDir}/images/*.ext4, sandbox-vg/image-*)")
			}
			for _, im := range v.Images {
				def := ""
				if im.ID == defaultImage {
					def = " (default)"
				}
				if im.Error != "" {
					fmt.Fprintf(w, "image   %s%s: no manifest (%s)\n", im.ID, def, im.Error)
					continue
				}
				fmt.Fprintf(w, "image   %s%s", im.ID, def)
				if im.Built != "" {
					fmt.Fprintf(w, ", built %s", im.Built)
				}
				fmt.Fprintf(w, ", from %s\n", im.From)
				for _, k := range slices.Sorted(maps.Keys(im.Tools)) {
					fmt.Fprintf(w, "  %s %s\n", k, im.Tools[k])
				}
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

func readHostVersions(ctx context.Context, cfg *config.Config, v *versions) {
	id := cfg.Sandbox.DefaultImage
	v.Images = imageVersions(ctx, cfg)
	for _, im := range v.Images {
		if im.ID == id && im.Error == "" {
			v.Image, v.ImageBuilt, v.ImageRecipe, v.ImageTools = im.ID, im.Built, im.Recipe, im.Tools
		}
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

// imageVersions reads the manifest of every image the host holds: the
// files {stateDir}/images/<id>.ext4 (their <id>.json sidecar, else
// /etc/atelier/image.json inside), and the LVM volumes image-<id> of
// sandbox-vg. The image is read with debugfs, never mounted.
func imageVersions(ctx context.Context, cfg *config.Config) []imageVersion {
	seen := map[string]bool{}
	var out []imageVersion
	dir := filepath.Join(cfg.Sandbox.StateDir, "images")
	files, _ := filepath.Glob(filepath.Join(dir, "*.ext4"))
	for _, f := range files {
		id := strings.TrimSuffix(filepath.Base(f), ".ext4")
		seen[id] = true
		if m, err := manifest.Read(filepath.Join(dir, id+".json")); err == nil {
			out = append(out, fromManifest(id, "sidecar "+id+".json", m))
			continue
		}
		out = append(out, inImage(ctx, id, f))
	}
	vols, _ := filepath.Glob(filepath.Join("/dev", storage.VolumeGroup, "image-*"))
	for _, dev := range vols {
		id := strings.TrimPrefix(filepath.Base(dev), "image-")
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, inImage(ctx, id, dev))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func fromManifest(id, from string, m *manifest.Manifest) imageVersion {
	return imageVersion{ID: id, From: from, Built: m.Built, Recipe: m.Recipe, Tools: m.Versions}
}

// inImage reads manifest.Path from the ext4 filesystem at src.
func inImage(ctx context.Context, id, src string) imageVersion {
	iv := imageVersion{ID: id, From: manifest.Path + " in " + src}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat "+manifest.Path, src)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		iv.Error = "debugfs: " + err.Error()
		return iv
	}
	m, err := manifest.Parse(stdout.Bytes())
	if err != nil {
		// debugfs exits 0 whatever cat found; its message says why.
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		if stdout.Len() > 0 || msg == "" {
			msg = err.Error()
		}
		iv.Error = msg
		return iv
	}
	return fromManifest(id, iv.From, m)
}
