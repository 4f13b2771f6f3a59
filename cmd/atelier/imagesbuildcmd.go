package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"atelier/images"
	"atelier/internal/image/build"
	"atelier/internal/storage"
	"atelier/internal/storage/pool"
)

// defaultBuildCache holds the image builds' stage trees and downloads.
const defaultBuildCache = "/var/cache/atelier/image-build"

// newImagesBuildCmds are `atelier images build <id>` and the seed's
// `atelier images dev-base`, the same build.
func newImagesBuildCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{newImagesBuildCmd(g, "build <image>", ""), newImagesBuildCmd(g, "dev-base", "dev-base")}
}

func newImagesBuildCmd(g *globals, use, fixed string) *cobra.Command {
	var out, cacheDir, agent, recipesDir string
	var oo ociOut
	var noCache, verbose bool
	short := "Build a root filesystem image from its recipe (images/<id>/), without Docker"
	args := cobra.ExactArgs(1)
	if fixed != "" {
		short = "Build the dev-base image (the same as atelier images build dev-base)"
		args = cobra.NoArgs
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Long: `Build an image from its recipe: a Debian root filesystem bootstrapped with mmdebstrap from the
host's configured apt mirror (/etc/apt/sources.list*), its Debian packages, Node.js, npm and npm
packages at the versions pinned in images/versions.json (advanced.vm.vscode.version and
advanced.vm.opencode.version override code-server's and OpenCode's), its users and files, the
guest agent as init and the image manifest (/etc/atelier/image.json).

The image goes to the volume driver: {stateDir}/images/<id>.ext4 with the file driver, the
image-<id> volume with LVM; or to --output. Each stage prints its duration and is cached under
--cache-dir, keyed by its inputs; while it runs, {stateDir}/images/<id>.building.json says which
stage runs (the dashboard's Images page shows it live); <output>.build.json records the inputs of the whole image, so
a second run with nothing changed does nothing. --no-cache rebuilds everything.

The build runs as root, trusts the host's Debian mirror and npm registry, and uses the host's
CA bundle for its downloads (copied into the build root, never left in the image). A failed
build leaves no image behind and names the failing step with its output.

Known recipes: ` + fmt.Sprint(build.Known(images.FS)) + `. Needs the Debian packages ` + build.Packages + `
and npm on the host; a cold dev-base build takes about 15 minutes and 6 GB of cache.`,
		Args: args,
		RunE: func(cmd *cobra.Command, a []string) error {
			id := fixed
			if id == "" {
				id = a[0]
			}
			if os.Geteuid() != 0 {
				return errors.New("atelier images build: must run as root (mmdebstrap and chroot)")
			}
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			var recipes fs.FS = images.FS
			if recipesDir != "" {
				recipes = os.DirFS(recipesDir)
			}
			if _, err := build.LoadRecipe(recipes, id); err != nil {
				return err
			}
			if agent == "" {
				if agent, err = findAgent(); err != nil {
					return err
				}
			}
			var vols pool.Volumes
			dst := out
			if dst == "" {
				var choice storage.Choice
				vols, choice, err = pool.Open(cmd.Context(), cfg, storage.Exec{}, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
				if err != nil {
					return err
				}
				if choice.Driver == storage.DriverLVM {
					// LVM imports from a file: build it in the cache, then
					// create the volume from it.
					dst = filepath.Join(cacheDir, "out", id+".ext4")
				} else {
					dst = filepath.Join(cfg.Sandbox.StateDir, "images", id+".ext4")
					vols = nil
				}
			}
			if dst, err = filepath.Abs(dst); err != nil {
				return err
			}
			o := build.Options{
				Recipes: recipes, ID: id, Output: dst, CacheDir: cacheDir, Agent: agent, NoCache: noCache,
				Versions: map[string]string{
					"code-server": cfg.Advanced.VM.VSCode.Version,
					"opencode-ai": cfg.Advanced.VM.OpenCode.Version,
				},
				Progress: cmd.OutOrStdout(),
				// The manager watches this dir for builds in progress,
				// wherever the image goes.
				ProgressDir: filepath.Join(cfg.Sandbox.StateDir, "images"),
			}
			if verbose {
				o.Verbose = cmd.ErrOrStderr()
			}
			createVolume := func(ctx context.Context) error {
				if err := vols.CreateImage(ctx, id, dst, 0); err != nil {
					if errors.Is(err, storage.ErrExists) {
						return fmt.Errorf("volume image-%s exists from an older build: remove it first (atelier images rm %s), then build again: %w", id, id, err)
					}
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "image-%s: created from %s\n", id, dst)
				return nil
			}
			if vols != nil {
				o.Then = createVolume
			}
			// Interrupted, the build still unmounts its chroot and removes
			// its half-made stage before exiting.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := oo.check(); err != nil {
				return err
			}
			res, err := build.Build(ctx, o)
			if err != nil {
				return err
			}
			if oo.any() {
				// The finished ext4 file, not the build tree: what sandboxes
				// boot is what the cluster gets.
				if err := oo.run(ctx, cmd.OutOrStdout(), dst); err != nil {
					return err
				}
			}
			if vols != nil && res.UpToDate {
				if _, serr := vols.Stat(cmd.Context(), storage.KindImage, id); serr == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "image-%s: up to date\n", id)
					return nil
				}
				return createVolume(cmd.Context())
			}
			return nil
		},
	}
	oo.flags(c, true)
	f := c.Flags()
	f.StringVar(&out, "output", "", "write the ext4 image here instead of the volume driver")
	f.StringVar(&cacheDir, "cache-dir", defaultBuildCache, "stage cache and downloads")
	f.StringVar(&agent, "agent", "", "the static guest agent binary to install as init (default: atelier-agent beside this binary, else on PATH)")
	f.StringVar(&recipesDir, "recipes", "", "a directory of recipes to use instead of the built-in ones")
	f.BoolVar(&noCache, "no-cache", false, "rebuild every stage and the image")
	f.BoolVar(&verbose, "verbose", false, "show every command's output")
	return c
}

// findAgent looks for atelier-agent beside the running binary, then on
// PATH.
func findAgent() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "atelier-agent")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("atelier-agent"); err == nil {
		return p, nil
	}
	return "", errors.New("--agent: no atelier-agent beside atelier or on PATH (make agent builds bin/atelier-agent)")
}
