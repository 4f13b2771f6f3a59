package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/storage"
	"atelier/internal/storage/pool"
)

// storageRequireRoot refuses privileged storage work early, with the reason,
// rather than failing half-way on a permission error.
func storageRequireRoot(what, why string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("atelier %s must run as root: %s (try sudo)", what, why)
	}
	return nil
}

func newStorageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "storage",
		Short: "Set up and inspect the volume pool (root required)",
		Long: `Set up and inspect the pool that holds images, prebuilds and sandbox volumes.

setup.storage.method chooses the pool: "loop" (a sparse file <stateDir>/thin-pool.img on a
loop device) or "device" (a whole block device). Where the kernel has device-mapper's
thin-pool target they become the LVM thin pool sandbox-vg/thin-pool; elsewhere an XFS
filesystem with reflink mounted at <stateDir>/pool, with <stateDir>/{images,prebuilds,overlays}
linked into it. "lvm" checks an existing thin pool, "file" uses the state dir as it is.
Setup is idempotent: run it again (at boot, for instance) to re-attach and mount.
Every subcommand needs root.`,
	}

	var method, device string
	var sizeGB int
	apply := func(cmd *cobra.Command, cfg *config.Config) {
		f := cmd.Flags()
		if f.Changed("method") {
			cfg.Setup.Storage.Method = method
		}
		if f.Changed("size-gb") {
			cfg.Setup.Storage.LoopSizeGB = sizeGB
		}
		if f.Changed("device") {
			cfg.Setup.Storage.Device = device
		}
	}
	load := func(cmd *cobra.Command) (*config.Config, error) {
		cfg, err := g.loadConfig()
		if err != nil {
			return nil, err
		}
		apply(cmd, cfg)
		return cfg, nil
	}

	setup := &cobra.Command{
		Use:   "setup",
		Short: "Create (or re-attach and mount) the pool; reports status when it is in place",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := storageRequireRoot("storage setup", "it attaches loop devices, formats and mounts the pool"); err != nil {
				return err
			}
			cfg, err := load(cmd)
			if err != nil {
				return err
			}
			rep, err := pool.Setup(cmd.Context(), cfg, storage.Exec{})
			if err != nil {
				return err
			}
			return g.printStorage(cmd.OutOrStdout(), rep)
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the pool: driver, device, size, use and volume count",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := storageRequireRoot("storage status", "reading LVM and the pool's devices needs it"); err != nil {
				return err
			}
			cfg, err := load(cmd)
			if err != nil {
				return err
			}
			rep, err := pool.Status(cmd.Context(), cfg, storage.Exec{})
			if err != nil {
				return err
			}
			return g.printStorage(cmd.OutOrStdout(), rep)
		},
	}
	var force bool
	teardown := &cobra.Command{
		Use:   "teardown",
		Short: "Remove the pool and EVERY volume on it (needs --force)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				return errors.New("teardown destroys every image, prebuild and sandbox volume in the pool; pass --force to go ahead")
			}
			if err := storageRequireRoot("storage teardown", "it unmounts the pool and detaches loop devices"); err != nil {
				return err
			}
			cfg, err := load(cmd)
			if err != nil {
				return err
			}
			if err := pool.Teardown(cmd.Context(), cfg, storage.Exec{}); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "storage pool removed")
			return nil
		},
	}
	teardown.Flags().BoolVar(&force, "force", false, "really destroy the pool and its volumes")

	for _, c := range []*cobra.Command{setup, status, teardown} {
		f := c.Flags()
		f.StringVar(&method, "method", "", "override setup.storage.method: loop, device, lvm or file")
		f.IntVar(&sizeGB, "size-gb", 0, "override setup.storage.loopSizeGb (pool file size in GiB, at least 10)")
		f.StringVar(&device, "device", "", "override setup.storage.device (block device for method device)")
	}
	cmd.AddCommand(setup, status, teardown)
	return cmd
}

func (g *globals) printStorage(w io.Writer, r pool.Report) error {
	if g.json {
		return printJSON(w, r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	method := r.Method
	if method == "" {
		method = "unset"
	}
	row("Driver", fmt.Sprintf("%s (method %s)", r.Driver, method))
	row("Ready", yes(r.Ready))
	row("Changed", yes(r.Changed))
	row("Pool file", r.BackingFile)
	row("Device", r.Device)
	row("Mounted at", r.MountPoint)
	row("Volumes in", r.VolumeDir)
	if r.Driver == storage.DriverFile && r.Ready {
		row("Reflink", yes(r.Reflink))
	}
	if u := r.Usage; u.TotalBytes > 0 {
		row("Size", storageGiB(u.TotalBytes))
		row("Used", fmt.Sprintf("%s (%.1f%% data, %.1f%% metadata)", storageGiB(u.UsedBytes), u.DataPercent, u.MetadataPercent))
		row("Virtual", fmt.Sprintf("%s (%.2fx the pool)", storageGiB(u.VirtualBytes), float64(u.VirtualBytes)/float64(u.TotalBytes)))
		row("Volumes", fmt.Sprint(u.Volumes))
	}
	for _, n := range r.Notes {
		row("Note", n)
	}
	return tw.Flush()
}

func storageGiB(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
