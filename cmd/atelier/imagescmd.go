package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"atelier/internal/image/kernel"
)

// newImagesCmd is `atelier images`: what sandboxes boot from. Each kind of
// image is a subcommand (kernel here; root filesystem images join it).
func newImagesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List, import and remove sandbox images; build the guest kernel",
		Long: `Sandbox images: root filesystems that sandboxes are cloned from, held by the volume driver
(image-<id> on LVM, <stateDir>/images/<id>.ext4 on files). Alone, lists them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return g.listImages(cmd) },
	}
	cmd.AddCommand(newImagesKernelCmd(g))
	cmd.AddCommand(newImagesListCmd(g), newImagesGetCmd(g), newImagesRmCmd(g), newImagesImportCmd(g), newImagesExportCmd(g))
	cmd.AddCommand(newImagesBuildCmds(g)...)
	return cmd
}

func newImagesKernelCmd(g *globals) *cobra.Command {
	var out, configFile, check, workDir string
	var jobs int
	var force, verbose bool
	c := &cobra.Command{
		Use:   "kernel",
		Short: "Build the Firecracker guest kernel (vmlinux) from Debian's linux-source-6.1",
		Long: `Build an uncompressed vmlinux that Firecracker boots, from the kernel source of the Debian
package ` + kernel.SourcePackage + ` (` + kernel.SourceTarball + `) and the config fragment kept in
Atelier's source (internal/image/kernel/atelier-x86_64-6.1.config) applied to "make allnoconfig":
virtio-mmio block, net and vsock, ext4, the serial console, no modules, no initrd.

The kernel goes to advanced.server.firecracker.kernelPath (ATELIER_KERNEL_PATH; or --output),
with its full .config in <output>.config and what it was built from in <output>.json. A second
run with the same source package version and config does nothing.

--config builds from your own complete .config instead (through "make olddefconfig"); it must
still have every option the boot contract needs. The Atelier config file for this command comes
from ATELIER_CONFIG, since --config names the kernel config here.

--check PATH builds nothing: it checks an existing kernel (yours, say) for what the boot
contract needs, from PATH.config or the config the kernel embeds (CONFIG_IKCONFIG).

Needs the Debian packages: ` + kernel.Packages + `.
A build takes minutes and about 2 GB in the work directory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if check != "" {
				r, err := kernel.Check(check)
				if err != nil {
					return err
				}
				fmt.Fprintln(w, r)
				if !r.OK() {
					return fmt.Errorf("kernel %s cannot boot Atelier sandboxes", check)
				}
				return nil
			}
			if out == "" {
				cfg, err := g.loadConfig()
				if err != nil {
					return err
				}
				out = cfg.Advanced.Server.Firecracker.KernelPath
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			o := kernel.Options{Output: abs, WorkDir: workDir, Jobs: jobs, Force: force,
				Log: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))}
			if verbose {
				o.BuildLog = cmd.ErrOrStderr()
			} else {
				o.BuildLog = io.Discard
			}
			if configFile != "" {
				b, err := os.ReadFile(configFile)
				if err != nil {
					return fmt.Errorf("--config: %w", err)
				}
				o.Config = b
			}
			res, err := kernel.Build(cmd.Context(), o)
			if err != nil {
				return err
			}
			m := res.Manifest
			state := "built"
			if res.Cached {
				state = "up to date"
			}
			fmt.Fprintf(w, "%s: %s (Linux %s from %s %s, %s config sha256 %.12s)\n  config: %s\n  manifest: %s\n",
				abs, state, m.Release, m.SourcePackage, m.SourceVersion, m.ConfigKind, m.ConfigSHA256,
				kernel.ConfigPath(abs), kernel.ManifestPath(abs))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&out, "output", "", "where to write vmlinux (default advanced.server.firecracker.kernelPath)")
	f.StringVar(&configFile, "config", "", "build from this complete kernel .config instead of Atelier's fragment")
	f.StringVar(&check, "check", "", "check an existing kernel instead of building one")
	f.StringVar(&workDir, "work-dir", "", "directory for the unpacked source (default the system temp dir; needs ~2 GB)")
	f.IntVar(&jobs, "jobs", 0, "parallel make jobs (default the number of CPUs)")
	f.BoolVar(&force, "force", false, "rebuild even when the kernel is up to date")
	f.BoolVar(&verbose, "verbose", false, "show the kernel build's output")
	return c
}
